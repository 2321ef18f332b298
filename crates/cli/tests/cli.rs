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

/// `baton --config FILE config` where FILE (`baton.toml` in a fresh temporary directory) holds
/// `toml`.
fn config_from_file(toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("baton.toml");
    std::fs::write(&file, toml).unwrap();
    baton()
        .args(["--config"])
        .arg(&file)
        .arg("config")
        .output()
        .unwrap()
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
    let out = config_from_file("[nats]\nurll = \"nats://x\"\n");
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

#[test]
fn config_prints_the_derived_values_a_service_runs_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = baton()
        .arg("--data-dir")
        .arg(dir.path())
        .arg("config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = format!(
        "database_url = \"sqlite://{}/audit.db?mode=rwc\"",
        dir.path().display()
    );
    assert!(stdout.contains(&db), "{db} in {stdout}");
    let inventory = format!(
        "inventory_path = \"{}/inventory.toml\"",
        dir.path().display()
    );
    assert!(stdout.contains(&inventory), "{inventory} in {stdout}");
    assert!(!stdout.contains("database_url = \"\""), "{stdout}");
}

#[test]
fn flags_are_the_last_layer() {
    let out = baton()
        .args([
            "--grpc-addr",
            "127.0.0.1:7",
            "--nats-url",
            "nats://flag:4222",
        ])
        .arg("config")
        .env("BATON_GRPC_ADDR", "127.0.0.1:6")
        .env("BATON_NATS__URL", "nats://env:4222")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("grpc_addr = \"127.0.0.1:7\""), "{stdout}");
    assert!(stdout.contains("url = \"nats://flag:4222\""), "{stdout}");
}

#[test]
fn unknown_top_level_key_in_a_file_is_named() {
    let out = config_from_file("[audti]\nbatch_size = 5\n");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing printed on error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key `audti`"), "{stderr}");
    assert!(stderr.contains("baton.toml"), "names the file: {stderr}");
}

#[test]
fn unknown_section_key_in_the_environment_is_named() {
    let out = baton()
        .args(["config"])
        .env("BATON_AUDIT__BATCH_SIZEE", "5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BATON_AUDIT__BATCH_SIZEE"), "{stderr}");
}

#[test]
fn invalid_value_is_refused_naming_the_key() {
    let out = baton()
        .args(["config"])
        .env("BATON_AGENTS__MAX_PHASE_FRACTION", "1.5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agents.max_phase_fraction"), "{stderr}");
}

#[test]
fn an_unknown_encoder_precision_is_refused_naming_the_choices() {
    let out = config_from_file("[decision.embedding]\nprecision = \"fp16\"\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in ["precision", "fp16", "f32", "int8"] {
        assert!(stderr.contains(part), "should name {part:?}: {stderr}");
    }
    // And a good one is taken.
    let out = config_from_file("[decision.embedding]\nprecision = \"f32\"\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("precision = \"f32\""), "{stdout}");
}

#[test]
fn config_redacts_the_secret() {
    let secret = "s3cr3t-0123456789abcdef0123456789abcdef";
    let out = baton()
        .args(["config"])
        .env("BATON_AUTH__HS256_SECRET", secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("hs256_secret = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains(secret), "{stdout}");
}

#[test]
fn logs_written_to_a_pipe_have_no_colour_codes() {
    // `baton up` logs while it starts its nats-server and services, then fails to bind the
    // gRPC address this test holds, and exits.
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = baton()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr"])
        .arg(taken.local_addr().unwrap().to_string())
        .arg("up")
        .env("BATON_NATS_SERVER__PORT", "0")
        .env("BATON_LOG__FILTER", "info")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot serve"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("started nats-server"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'),
        "ANSI escape in output to a pipe: {stdout:?}"
    );
}
