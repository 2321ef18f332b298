//! A `nats-server -js` child process on loopback with its store in a given directory: what
//! `baton up` starts when no NATS URL is configured, and what the tests start on a free port.
//! The child is killed when the [`NatsServer`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary is not installed.
    #[error(
        "nats-server not found ({binary}): install it (Debian/Ubuntu: `sudo apt-get install \
         nats-server`, or run deploy/setup.sh), or point nats.url at a running server"
    )]
    NotInstalled {
        /// The binary looked for.
        binary: String,
    },
    /// It started but did not come up.
    #[error("nats-server did not start: {0}")]
    Start(String),
    /// Filesystem trouble with the store or ports directory.
    #[error("nats-server store {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The file system's error (permissions, missing directory, full disk).
        source: std::io::Error,
    },
}

/// A running `nats-server -js` child.
pub struct NatsServer {
    child: Child,
    url: String,
    store_dir: PathBuf,
    port: u16,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url)
            .finish()
    }
}

impl NatsServer {
    /// Starts `binary` (usually `nats-server`) with JetStream, listening on 127.0.0.1:`port`
    /// (0 = a free port the server picks), storing streams under `store_dir`.
    pub async fn start(
        binary: &str,
        store_dir: &Path,
        port: u16,
    ) -> Result<NatsServer, ServerError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServerError::Io { path, source }
        };
        // nats-server writes `<exe>_<pid>.ports` here once it listens. The directory is inside
        // the store (nothing is created elsewhere); files of earlier servers killed before
        // removing theirs are cleared first, and only the file of this child's pid is read.
        let ports_dir = store_dir.join("ports");
        std::fs::create_dir_all(&ports_dir).map_err(io(&ports_dir))?;
        for stale in std::fs::read_dir(&ports_dir)
            .map_err(io(&ports_dir))?
            .flatten()
        {
            if stale.file_name().to_string_lossy().ends_with(".ports") {
                let _ = std::fs::remove_file(stale.path());
            }
        }
        let port_arg = if port == 0 {
            "-1".to_string()
        } else {
            port.to_string()
        };
        let resolved = resolve(binary);
        let mut child = Command::new(&resolved)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ServerError::NotInstalled {
                    binary: binary.into(),
                },
                _ => ServerError::Start(e.to_string()),
            })?;
        let pid = child.id().unwrap_or_default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(port) = read_ports_file(&ports_dir, pid) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut stderr).await;
                }
                return Err(ServerError::Start(format!(
                    "exited with {status}: {}",
                    stderr.trim()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ServerError::Start("no ports file within 10s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        if let Some(mut stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            });
        }
        Ok(NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            store_dir: store_dir.to_path_buf(),
            port,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it stores streams.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `binary` as given when it is a path or on `PATH`; otherwise the first of `/usr/sbin` and
/// `/usr/local/sbin` that has it (Debian installs nats-server in `/usr/sbin`, which is not on a
/// normal user's `PATH`).
fn resolve(binary: &str) -> PathBuf {
    if binary.contains('/') {
        return PathBuf::from(binary);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false);
    if !on_path {
        for dir in ["/usr/sbin", "/usr/local/sbin"] {
            let candidate = Path::new(dir).join(binary);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(binary)
}

/// Reads the port from the `<exe>_<pid>.ports` JSON file the server with process id `pid`
/// writes.
fn read_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
    }
    let suffix = format!("_{pid}.ports");
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: Ports = serde_json::from_str(&text).ok()?;
    ports.nats.first()?.rsplit(':').next()?.parse().ok()
}
