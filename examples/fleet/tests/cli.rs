//! The `baton-fleet` binary's command line.

use std::process::Command;

#[test]
fn help_prints_usage_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton-fleet"))
        .arg("--help")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Usage: baton-fleet"), "{stdout}");
    assert!(stdout.contains("[INVENTORY]"), "{stdout}");
    assert!(
        !dir.path().join("--help").exists(),
        "--help must not be taken as the inventory path"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing is written"
    );
}

#[test]
fn an_unknown_flag_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton-fleet"))
        .arg("--inventroy")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--inventroy"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
