//! A `nats-server -js` child process on loopback with its store in a given directory: what
//! `baton up` starts when no NATS URL is configured, and what the tests start on a free port.
//! The child is killed when the [`NatsServer`] is dropped.
//!
//! A crash of the parent leaves nothing behind:
//! - on Linux the child asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`,
//!   set between fork and exec), so `kill -9` of `baton up` takes its nats-server along;
//! - the store directory is guarded: the parent holds an OS lock on `<store>/baton.lock` while
//!   its server runs (a second Baton on the same store is refused), and writes the child's pid
//!   to `<store>/nats-server.pid`. A start finds a leftover server of its own (the pid file's
//!   process, still a `nats-server` on this store) and stops it before starting a new one; any
//!   other `nats-server` serving this store is refused with its pid, rather than have two
//!   servers write one JetStream store.

pub use guard::die_with_parent;
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
    /// Another process uses the store directory.
    #[error(
        "nats-server store {store} is in use by {holder}: stop it, or give this Baton its own \
         data_dir"
    )]
    StoreInUse {
        /// The store directory.
        store: PathBuf,
        /// Who holds it: another Baton (the lock) or a foreign nats-server (its pid).
        holder: String,
    },
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
    /// The open `<store>/baton.lock`, locked while this server runs (closing it unlocks).
    _lock: std::fs::File,
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
    ///
    /// Errors: [`ServerError::NotInstalled`], [`ServerError::Start`] (it exited or did not
    /// listen within 10 s, with its stderr), [`ServerError::StoreInUse`] (another Baton or a
    /// foreign nats-server on this store), [`ServerError::Io`].
    pub async fn start(
        binary: &str,
        store_dir: &Path,
        port: u16,
    ) -> Result<NatsServer, ServerError> {
        NatsServer::start_with_config(binary, store_dir, port, None).await
    }

    /// [`NatsServer::start`] with a server configuration file (`-c`), e.g. the authorization
    /// block `baton up` writes; the command-line flags (JetStream, address, port, store) win
    /// over the file's.
    ///
    /// Errors: as [`NatsServer::start`].
    pub async fn start_with_config(
        binary: &str,
        store_dir: &Path,
        port: u16,
        config_file: Option<&Path>,
    ) -> Result<NatsServer, ServerError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServerError::Io { path, source }
        };
        std::fs::create_dir_all(store_dir).map_err(io(store_dir))?;
        // One spelling of the store for the child's command line, so a leftover is recognised.
        let store_dir = &std::fs::canonicalize(store_dir).map_err(io(store_dir))?;
        let lock = guard::lock(store_dir)?;
        guard::stop_leftover(store_dir).await?;
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
        let mut command = Command::new(&resolved);
        if let Some(file) = config_file {
            command.arg("-c").arg(file);
        }
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir);
        guard::die_with_parent(&mut command);
        let mut child = command
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
        let pid_file = store_dir.join(guard::PID_FILE);
        std::fs::write(&pid_file, format!("{pid}\n")).map_err(io(&pid_file))?;
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
        // Keep draining stderr so the child never blocks on a full pipe; its errors and
        // warnings (a permission violation, a refused connection) go to our log.
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt as _;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("[ERR]") || line.contains("[WRN]") {
                        tracing::warn!(target: "nats_server", "{line}");
                    } else {
                        tracing::debug!(target: "nats_server", "{line}");
                    }
                }
            });
        }
        Ok(NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            store_dir: store_dir.to_path_buf(),
            port,
            _lock: lock,
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
        let _ = std::fs::remove_file(self.store_dir.join(guard::PID_FILE));
    }

    /// The child's process id (`None` once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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

/// The store guard and the parent-death signal (see the module doc).
mod guard {
    use super::ServerError;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// The lock file a running Baton holds in its store directory.
    pub(super) const LOCK_FILE: &str = "baton.lock";
    /// The file holding the pid of the store's nats-server child.
    pub(super) const PID_FILE: &str = "nats-server.pid";

    /// Takes the exclusive OS lock on `<store>/baton.lock`, or says another Baton has it.
    pub(super) fn lock(store: &Path) -> Result<std::fs::File, ServerError> {
        let path = store.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ServerError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::StoreInUse {
                store: store.to_path_buf(),
                holder: format!("another baton (it holds {})", path.display()),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(ServerError::Io { path, source }),
        }
    }

    /// Stops a nats-server of ours left running on `store` (its parent was killed before it
    /// could stop it), waiting for it to exit; refuses when a nats-server that is not ours
    /// serves the store. Called with the store's lock held, so no Baton owns that server.
    pub(super) async fn stop_leftover(store: &Path) -> Result<(), ServerError> {
        let ours = std::fs::read_to_string(store.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        for pid in servers_on(store) {
            if Some(pid) != ours {
                return Err(ServerError::StoreInUse {
                    store: store.to_path_buf(),
                    holder: format!("a nats-server Baton did not start (pid {pid})"),
                });
            }
            tracing::warn!(pid, store = %store.display(), "stopping a leftover nats-server of an earlier baton");
            stop(pid).await;
        }
        Ok(())
    }

    /// Pids of running `nats-server` processes whose store (`-sd`) is `store` (Linux `/proc`;
    /// elsewhere none are found).
    fn servers_on(store: &Path) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let store = store.as_os_str().as_encoded_bytes();
        entries
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let is_nats = PathBuf::from(String::from_utf8_lossy(args.first()?).as_ref())
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("nats-server"));
                let on_store = args.windows(2).any(|w| {
                    matches!(w[0], b"-sd" | b"--store_dir" | b"-store_dir") && w[1] == store
                });
                (is_nats && on_store).then_some(pid)
            })
            .collect()
    }

    /// SIGTERM, then SIGKILL after 10 s; returns once the process is gone.
    async fn stop(pid: i32) {
        use rustix::process::{Pid, Signal, kill_process, test_kill_process};
        let Some(p) = Pid::from_raw(pid) else { return };
        let _ = kill_process(p, Signal::TERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while test_kill_process(p).is_ok() && alive(pid) {
            if tokio::time::Instant::now() > deadline {
                let _ = kill_process(p, Signal::KILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `pid` is running (a zombie awaiting its reaper counts as gone).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(true),
            Err(_) => false,
        }
    }

    /// On Linux, makes the kernel send the child SIGTERM when the thread that spawned it
    /// ends: `PR_SET_PDEATHSIG`, set in the child between fork and exec. Baton spawns the
    /// server from its main task, whose thread lives as long as the process.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub fn die_with_parent(command: &mut tokio::process::Command) {
        use rustix::process::{Signal, getppid, set_parent_process_death_signal};
        let parent = getppid_of_self();
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe operations are allowed: it makes two raw syscalls through rustix
        // (prctl, getppid) and allocates nothing, takes no lock and touches no shared state.
        // If the parent died before prctl took effect, getppid no longer names it and the
        // child refuses to exec.
        unsafe {
            command.pre_exec(move || {
                set_parent_process_death_signal(Some(Signal::TERM))?;
                if getppid() != parent {
                    return Err(std::io::Error::other("parent exited before exec"));
                }
                Ok(())
            });
        }
    }

    /// This process's pid, which the child sees as its parent.
    #[cfg(target_os = "linux")]
    fn getppid_of_self() -> Option<rustix::process::Pid> {
        Some(rustix::process::getpid())
    }

    /// Elsewhere the child outlives a killed parent; the store guard stops it at the next
    /// start.
    #[cfg(not(target_os = "linux"))]
    pub fn die_with_parent(_command: &mut tokio::process::Command) {}
}
