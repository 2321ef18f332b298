//! The sandbox against the real Docker engine (start it with `bash deploy/docker.sh`; the images
//! come from `bash deploy/sandbox-images.sh`; `deploy/test.sh` does both). Each isolation
//! property is its own test, and every test checks that no container of its sandbox is left.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_sandbox::{Config, EndedBy, Error, Network, OWNER_LABEL, RunRequest, Sandbox};
use bollard::query_parameters::{InspectNetworkOptions, ListContainersOptionsBuilder};

/// Small limits so each run takes about a second.
fn config() -> Config {
    Config {
        memory_mb: 64,
        cpus: 1.0,
        pids: 32,
        timeout: Duration::from_secs(5),
        max_output_bytes: 4096,
        work_dir_mb: 16,
        warm_pool: 0,
        ..Config::default()
    }
}

async fn sandbox(config: Config) -> Sandbox {
    match Sandbox::connect(config).await {
        Ok(s) => s,
        Err(e) => panic!("these tests need docker and the sandbox images: {e}"),
    }
}

/// Ids of the containers that carry this sandbox's owner label (running or not).
async fn containers(sb: &Sandbox) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{OWNER_LABEL}={}", sb.owner())],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    sb.docker()
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Waits (up to 10 s) until none of this sandbox's containers remain; fails naming them.
async fn assert_gone(sb: &Sandbox) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = containers(sb).await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containers left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn python(code: &str) -> RunRequest {
    RunRequest::new("python", &["python3", "main.py"]).file("main.py", code)
}

#[tokio::test]
async fn python_program_reports_stdout_stderr_and_exit_code() {
    let sb = sandbox(config()).await;
    let r = sb
        .run(python(
            "import sys\nprint('hello from', 'python')\nprint('oops', file=sys.stderr)\nsys.exit(3)\n",
        ))
        .await
        .unwrap();
    assert_eq!(r.ended_by, EndedBy::Exited, "{r:?}");
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.stdout, "hello from python\n");
    assert_eq!(r.stderr, "oops\n");
    assert!(!r.stdout_truncated && !r.stderr_truncated && !r.network && !r.warm);
    assert!(r.duration < Duration::from_secs(5));
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn shell_image_runs_a_script_with_files_in_subdirectories() {
    let sb = sandbox(config()).await;
    let r = sb
        .run(
            RunRequest::new("shell", &["sh", "run.sh", "it's"])
                .file("run.sh", "cat data/in.txt; echo \"arg=$1\"; pwd\n")
                .file("data/in.txt", "line\n"),
        )
        .await
        .unwrap();
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(r.stdout, "line\narg=it's\n/work\n");
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn runs_as_non_root_without_capabilities_or_new_privileges() {
    let sb = sandbox(config()).await;
    let code = "import os\n\
        print(os.getuid(), os.getgid())\n\
        st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n\
        print(st['CapEff'].strip(), st['CapBnd'].strip(), st['NoNewPrivs'].strip())\n";
    let r = sb.run(python(code)).await.unwrap();
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(
        r.stdout,
        "65534 65534\n0000000000000000 0000000000000000 1\n"
    );
    assert_gone(&sb).await;
    sb.shutdown().await;
}

/// The bridge network's gateway: the host as a container on the default bridge sees it.
async fn bridge_gateway(sb: &Sandbox) -> String {
    let net = sb
        .docker()
        .inspect_network("bridge", None::<InspectNetworkOptions>)
        .await
        .unwrap();
    let config = net.ipam.unwrap().config.unwrap().remove(0);
    match config.gateway.filter(|g| !g.is_empty()) {
        Some(g) => g,
        // The daemon may leave the gateway out: it is the subnet's first address.
        None => {
            let subnet = config.subnet.unwrap();
            let base = subnet.split('/').next().unwrap();
            let mut octets: Vec<u8> = base.split('.').map(|o| o.parse().unwrap()).collect();
            octets[3] += 1;
            octets
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(".")
        }
    }
}

#[tokio::test]
async fn no_network_by_default_and_a_connection_attempt_fails() {
    let sb = sandbox(config()).await;
    // A listener on every host address: reachable from a container with a network.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let gateway = bridge_gateway(&sb).await;
    let code = format!(
        "import os, socket\n\
         print(sorted(os.listdir('/sys/class/net')))\n\
         try:\n    socket.create_connection(('{gateway}', {port}), timeout=2)\n    print('connected')\n\
         except OSError as e:\n    print('failed', e.errno)\n"
    );
    let r = sb.run(python(&code)).await.unwrap();
    assert!(r.succeeded(), "{r:?}");
    assert!(r.stdout.starts_with("['lo']\nfailed"), "{r:?}");
    assert!(!r.network);

    // The same program with network granted by a policy decision connects: the test can fail.
    let mut allowed = python(&code);
    allowed.network = Network::PolicyApproved {
        decision: "test-approval".into(),
    };
    let r = sb.run(allowed).await.unwrap();
    assert!(r.stdout.ends_with("connected\n"), "{r:?}");
    assert!(r.network && !r.warm);

    // And an approval without a decision is refused before anything runs.
    let mut unnamed = python(&code);
    unnamed.network = Network::PolicyApproved {
        decision: " ".into(),
    };
    assert!(matches!(
        sb.run(unnamed).await,
        Err(Error::InvalidRequest(_))
    ));
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn memory_past_the_limit_ends_in_an_oom_report() {
    let sb = sandbox(config()).await;
    let code = "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n";
    let r = sb.run(python(code)).await.unwrap();
    assert_eq!(r.ended_by, EndedBy::Memory, "{r:?}");
    assert_eq!(r.exit_code, 137);
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_pids_limit() {
    let sb = sandbox(config()).await;
    let r = sb
        .run(
            RunRequest::new("shell", &["sh", "bomb.sh"])
                .file("bomb.sh", "b() { b | b & }\nb\nwait\n")
                .timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(r.ended_by, EndedBy::Pids, "{r:?}");
    assert!(r.duration < Duration::from_secs(8), "{r:?}");
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn an_infinite_loop_is_killed_at_the_timeout() {
    let sb = sandbox(config()).await;
    let r = sb
        .run(python("while True:\n    pass\n").timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(r.ended_by, EndedBy::Timeout, "{r:?}");
    assert_eq!(r.exit_code, 137);
    assert!(r.duration >= Duration::from_secs(1), "{r:?}");
    // Killed at the timeout, not left to run (bounds loose for a loaded CI machine).
    assert!(r.duration < Duration::from_secs(6), "{r:?}");
    // A timeout above the configured one is refused.
    let long = python("pass").timeout(Duration::from_secs(60));
    assert!(matches!(sb.run(long).await, Err(Error::InvalidRequest(_))));
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn writing_outside_the_work_directory_fails() {
    let sb = sandbox(config()).await;
    let code = "import errno\n\
        for path in ['/etc/baton', '/tmp/baton', '/baton', '/usr/lib/baton', '/work/ok']:\n\
        \x20   try:\n\
        \x20       open(path, 'w').write('x')\n\
        \x20       print(path, 'written')\n\
        \x20   except OSError as e:\n\
        \x20       print(path, errno.errorcode[e.errno])\n";
    let r = sb.run(python(code)).await.unwrap();
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(
        r.stdout,
        "/etc/baton EROFS\n/tmp/baton EROFS\n/baton EROFS\n/usr/lib/baton EROFS\n/work/ok written\n"
    );
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn output_past_the_cap_is_truncated_and_says_so() {
    let sb = sandbox(config()).await;
    let r = sb
        .run(python(
            "import sys\nwhile True:\n    sys.stdout.write('y' * 1000)\n",
        ))
        .await
        .unwrap();
    assert_eq!(r.ended_by, EndedBy::Output, "{r:?}");
    assert!(r.stdout_truncated && !r.stderr_truncated);
    assert_eq!(r.stdout.len(), 4096);
    assert!(r.stdout.bytes().all(|b| b == b'y'));
    // Killed at the cap, long before the 5 s timeout.
    assert!(r.duration < Duration::from_secs(4), "{r:?}");
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn a_dropped_run_has_its_container_removed() {
    let sb = sandbox(config()).await;
    let run = sb.run(RunRequest::new("shell", &["sleep", "30"]));
    // The caller gives up mid-run: the future is dropped while the container runs.
    let started = Instant::now();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), run)
            .await
            .is_err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_gone(&sb).await;
    // Dropped while its container is still being created: removed once created.
    let run = sb.run(RunRequest::new("shell", &["sleep", "30"]));
    assert!(
        tokio::time::timeout(Duration::from_millis(5), run)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_gone(&sb).await;
    sb.shutdown().await;
}

#[tokio::test]
async fn shutdown_mid_run_stops_the_run_and_removes_every_container() {
    let sb = Arc::new(
        sandbox(Config {
            warm_pool: 2,
            ..config()
        })
        .await,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sb.warm("python") < 2 || sb.warm("shell") < 2 {
        assert!(Instant::now() < deadline, "the warm pool did not fill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running = tokio::spawn({
        let sb = sb.clone();
        async move { sb.run(RunRequest::new("shell", &["sleep", "30"])).await }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!containers(&sb).await.is_empty());
    let started = Instant::now();
    sb.shutdown().await;
    let result = running.await.unwrap();
    assert!(matches!(result, Err(Error::ShutDown)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(containers(&sb).await.is_empty(), "shutdown left containers");
    assert!(matches!(sb.run(python("pass")).await, Err(Error::ShutDown)));
}

#[tokio::test]
async fn the_warm_pool_serves_each_container_to_one_run_and_refills() {
    let sb = sandbox(Config {
        warm_pool: 1,
        ..config()
    })
    .await;
    let wait_warm = || async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while sb.warm("python") < 1 || sb.warm("shell") < 1 {
            assert!(Instant::now() < deadline, "the warm pool did not fill");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_warm().await;
    let before = containers(&sb).await;
    // Each run writes a marker; a reused container would still have the first one.
    let code = "import os\nprint(os.path.exists('marker'))\nopen('marker', 'w').write('x')\n";
    let first = sb.run(python(code)).await.unwrap();
    assert!(first.warm && first.succeeded(), "{first:?}");
    assert_eq!(first.stdout, "False\n");
    wait_warm().await;
    let second = sb.run(python(code)).await.unwrap();
    assert!(second.warm, "{second:?}");
    assert_eq!(second.stdout, "False\n");
    // The containers the runs used are gone; what is left is the refilled pool only.
    wait_warm().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = containers(&sb).await;
        if after.len() == 2 || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        after.len(),
        2,
        "one python and one shell container ready: {after:?}"
    );
    // Of the pool before the runs, only the untouched shell container is still there.
    let kept: Vec<_> = after.iter().filter(|id| before.contains(id)).collect();
    assert_eq!(kept.len(), 1, "before {before:?}, after {after:?}");
    sb.shutdown().await;
    assert!(containers(&sb).await.is_empty());
}

#[tokio::test]
async fn docker_unavailable_is_a_clear_error() {
    let config = Config {
        docker_socket: "/nonexistent/baton/docker.sock".into(),
        ..config()
    };
    let err = Sandbox::connect(config)
        .await
        .err()
        .expect("no docker there");
    assert!(matches!(err, Error::DockerUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no docker socket at /nonexistent/baton/docker.sock"),
        "{msg}"
    );
    assert!(msg.contains("bash deploy/docker.sh"), "{msg}");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_missing_image_is_a_clear_error() {
    let mut config = config();
    config
        .images
        .insert("python".into(), "baton-sandbox-missing:0".into());
    let err = Sandbox::connect(config).await.err().expect("no such image");
    assert!(matches!(err, Error::ImageMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("baton-sandbox-missing:0") && msg.contains("deploy/sandbox-images.sh"),
        "{msg}"
    );
}
