//! The store guard of the nats-server child: one Baton per store, a leftover server of ours
//! is stopped before a new one starts, a foreign server on the store is refused.

use baton_bus::server::{NatsServer, ServerError};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `nats-server` on `store` by hand (not through [`NatsServer`]), as a leftover or a
/// foreign server would be running.
fn plain_server(store: &std::path::Path) -> std::process::Child {
    let binary = ["/usr/sbin/nats-server", "/usr/local/sbin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
    Command::new(binary)
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is installed")
}

/// Gives a server started by hand time to open its store.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_second_baton_on_one_store_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let first = NatsServer::start("nats-server", store.path(), 0)
        .await
        .unwrap();
    let second = NatsServer::start("nats-server", store.path(), 0).await;
    match second {
        Err(ServerError::StoreInUse { holder, .. }) => {
            assert!(holder.contains("another baton"), "{holder}")
        }
        other => panic!("expected StoreInUse, got {other:?}"),
    }
    first.stop().await;
    // Once the first stopped, the store is free again.
    NatsServer::start("nats-server", store.path(), 0)
        .await
        .unwrap()
        .stop()
        .await;
}

#[tokio::test]
async fn a_foreign_server_on_the_store_is_refused_with_its_pid() {
    let store = tempfile::tempdir().unwrap();
    let canonical = std::fs::canonicalize(store.path()).unwrap();
    let mut foreign = plain_server(&canonical);
    settle().await;
    let started = NatsServer::start("nats-server", store.path(), 0).await;
    let _ = foreign.kill();
    let _ = foreign.wait();
    match started {
        Err(e @ ServerError::StoreInUse { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&foreign.id().to_string()), "{text}");
            assert!(text.contains("did not start"), "{text}");
        }
        other => panic!("expected StoreInUse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_leftover_server_of_ours_is_stopped_before_a_new_one_starts() {
    let store = tempfile::tempdir().unwrap();
    let canonical = std::fs::canonicalize(store.path()).unwrap();
    // What a killed `baton up` leaves where PR_SET_PDEATHSIG is not available: its server
    // running, its pid in the pid file, and no lock held.
    let mut leftover = plain_server(&canonical);
    std::fs::write(
        canonical.join("nats-server.pid"),
        format!("{}\n", leftover.id()),
    )
    .unwrap();
    settle().await;
    let server = NatsServer::start("nats-server", store.path(), 0)
        .await
        .unwrap();
    // The leftover was stopped (it exited; reap it here).
    // NatsServer::start returned only once the leftover was gone: it is a zombie by now.
    let exited = leftover.try_wait().unwrap();
    assert!(exited.is_some(), "the leftover server was not stopped");
    assert_ne!(server.pid(), Some(leftover.id()));
    server.stop().await;
}
