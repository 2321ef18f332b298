//! The `baton` binary as a user runs it: configuration layering and its errors.

use std::process::Command;

fn baton() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_baton"));
    // Start from a clean slate: no BATON_* from the environment running the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("BATON_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn variables_that_are_not_config_keys_do_not_break_the_config() {
    let out = baton()
        .args(["config"])
        .env("BATON_TOKEN", "not-a-config-key")
        .env("BATON_URL", "http://127.0.0.1:1")
        .env("BATON_TEST_POSTGRES_URL", "postgres://x")
        .env("BATON_NATS__URL", "nats://10.1.2.3:4222")
        .env("BATON_AUDIT__BATCH_SIZE", "77")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("url = \"nats://10.1.2.3:4222\""),
        "{stdout}"
    );
    assert!(stdout.contains("batch_size = 77"), "{stdout}");
}

#[test]
fn unknown_config_key_in_a_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, "[nats]\nurll = \"nats://x\"\n").unwrap();
    let out = baton()
        .args(["--config"])
        .arg(&file)
        .arg("config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("urll"),
        "the message should name the bad key: {stderr}"
    );
}

#[test]
fn client_command_without_a_server_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = baton()
        .args(["--url", "http://127.0.0.1:1", "--token", "t", "tasks"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to baton at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("baton up"), "{stderr}");
}

#[test]
fn missing_token_and_secret_explains_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = baton()
        .args(["tasks"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no development secret"), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
}

#[test]
fn up_without_nats_server_installed_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = baton()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("BATON_NATS_SERVER__BINARY", "/nonexistent/nats-server")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install nats-server"), "{stderr}");
}
