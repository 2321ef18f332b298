//! One run: the request ([`RunRequest`]), the [`Sandbox`] that runs it, and the guard that removes
//! the container whatever happens.
//!
//! A run takes a container (from the warm pool, or created for it), attaches to its stdin, stdout
//! and stderr, starts it, and streams a tar archive of the request's files plus a script holding
//! the command into its stdin; the container's shell unpacks it into the tmpfs `/work` and execs
//! the script. Output is read from the attach stream, each stream capped; the wall-clock timeout
//! covers everything from start to exit. Then the container's state gives the exit code and
//! whether the kernel OOM-killed it, and the container is removed.
//!
//! Removal, always: when a run ends, or the caller drops its future mid-run, the guard's `Drop`
//! removes the container on a background task that shutdown waits for (and a
//! container still being created for a dropped run is removed once created); on
//! [`Sandbox::shutdown`] every run stops with [`Error::ShutDown`] and every container with this
//! sandbox's owner label (runs and pool alike) is removed.

use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    AttachContainerOptions, InspectContainerOptions, ListContainersOptionsBuilder,
    StartContainerOptions, StatsOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::docker::{self, NONCE_FILE, RESERVED_PREFIX, RUN_SCRIPT};
use crate::pool::Pool;
use crate::{Config, EndedBy, Error, OWNER_LABEL, Report};

/// How long to wait for a killed container to report its exit.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long the pids reading after a timeout may take.
const STATS_WAIT: Duration = Duration::from_secs(2);
/// How long a run killed by nobody here (exit 137) waits for the daemon to record an OOM kill
/// that it learns of after the exit.
const OOM_EVENT_WAIT: Duration = Duration::from_secs(2);

/// Whether a run may use the network. Network access is a policy decision, never a caller's
/// switch: only the validation stage (a Rego policy, or a human approval) may grant it, and the
/// caller passes that decision along so the report and the audit log can show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Network {
    /// No network at all (Docker network mode `none`; only loopback). The default.
    #[default]
    None,
    /// Network through Docker's default bridge, granted by the named policy decision (e.g. the
    /// approving decision's id). Such a run never uses the warm pool.
    PolicyApproved {
        /// Which decision allowed it (kept for the audit trail; must not be empty).
        decision: String,
    },
}

/// A file given to the run, written into `/work` before the command starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Path relative to `/work` (`main.py`, `tests/test_main.py`); no `..`, not absolute.
    pub path: String,
    /// The file's bytes.
    pub contents: Vec<u8>,
}

/// What to run: a language (which picks the image), files, and a command run in `/work`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// Key of `[sandbox] images` (e.g. `python`, `shell`).
    pub language: String,
    /// Files written into `/work` (the code and its tests).
    pub files: Vec<File>,
    /// The program and its arguments, run in `/work` (e.g. `["python3", "main.py"]`).
    pub command: Vec<String>,
    /// A shorter wall-clock limit than the configured `timeout` (longer is refused).
    pub timeout: Option<Duration>,
    /// Network access; [`Network::None`] unless a policy granted it.
    pub network: Network,
}

impl RunRequest {
    /// A request to run `command` with the image of `language`, no files, no network.
    pub fn new(language: impl Into<String>, command: &[&str]) -> RunRequest {
        RunRequest {
            language: language.into(),
            files: Vec::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: None,
            network: Network::None,
        }
    }

    /// Adds a file (path relative to `/work`).
    pub fn file(mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>) -> RunRequest {
        self.files.push(File {
            path: path.into(),
            contents: contents.into(),
        });
        self
    }

    /// Sets a shorter timeout than the configured one.
    pub fn timeout(mut self, timeout: Duration) -> RunRequest {
        self.timeout = Some(timeout);
        self
    }
}

/// What the sandbox and its pool tasks share.
pub(crate) struct Shared {
    /// The connected Docker client (version negotiated).
    pub(crate) docker: Docker,
    /// The validated `[sandbox]` section.
    pub(crate) config: Config,
    /// This sandbox's id, the value of [`OWNER_LABEL`] on its containers.
    pub(crate) owner: String,
    /// Cancelled by [`Sandbox::shutdown`] (or drop): runs stop, pool tasks end.
    pub(crate) shutdown: CancellationToken,
    /// Pool refill tasks and background removals, awaited by shutdown.
    pub(crate) tasks: TaskTracker,
}

/// Runs programs in Docker containers with the configured limits. Create one per process with
/// [`Sandbox::connect`], share it (`Arc`), and call [`Sandbox::shutdown`] when stopping.
pub struct Sandbox {
    shared: Arc<Shared>,
    pool: Pool,
}

impl Sandbox {
    /// Validates `config`, connects to Docker at `config.docker_socket`, checks that every
    /// configured image exists, and starts filling the warm pool. Errors:
    /// [`Error::DockerUnavailable`] (no socket, no daemon, no permission) and
    /// [`Error::ImageMissing`], each with the command that fixes it; [`Error::Config`].
    pub async fn connect(config: Config) -> Result<Sandbox, Error> {
        config.validate()?;
        let docker = docker::connect(&config).await?;
        let shared = Arc::new(Shared {
            docker,
            config,
            owner: uuid::Uuid::new_v4().to_string(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let pool = Pool::start(&shared);
        Ok(Sandbox { shared, pool })
    }

    /// This sandbox's id: the [`OWNER_LABEL`] value on every container it creates.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// The Docker client it uses (for inspection, e.g. tests listing containers).
    pub fn docker(&self) -> &Docker {
        &self.shared.docker
    }

    /// Containers of `language`'s image ready in the warm pool now.
    pub fn warm(&self, language: &str) -> usize {
        self.shared
            .config
            .image(language)
            .map_or(0, |image| self.pool.ready(image))
    }

    /// Runs `request` in a fresh container and reports what happened. A limit that ends the run
    /// is in the report ([`Report::ended_by`]), not an error. Errors: a bad request
    /// ([`Error::InvalidRequest`], [`Error::UnknownLanguage`]), [`Error::ShutDown`], and a failed
    /// Docker call. The container is removed in every case (see the module doc).
    pub async fn run(&self, request: RunRequest) -> Result<Report, Error> {
        let shared = &self.shared;
        let timeout = match request.timeout {
            None => shared.config.timeout,
            Some(t) if t.is_zero() || t > shared.config.timeout => {
                return Err(Error::InvalidRequest(format!(
                    "timeout must be more than 0 and at most the configured {:?} (got {t:?})",
                    shared.config.timeout
                )));
            }
            Some(t) => t,
        };
        let network = match &request.network {
            Network::None => false,
            Network::PolicyApproved { decision } if decision.trim().is_empty() => {
                return Err(Error::InvalidRequest(
                    "network access needs the approving policy decision; it is empty".into(),
                ));
            }
            Network::PolicyApproved { .. } => true,
        };
        let image = shared.config.image(&request.language)?.to_string();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let archive = archive(&request, &nonce)?;
        if shared.shutdown.is_cancelled() {
            return Err(Error::ShutDown);
        }

        let pooled = if network {
            None
        } else {
            self.pool.take(&image)
        };
        let warm = pooled.is_some();
        let id = match pooled {
            Some(id) => id,
            None => create_owned(shared, &image, network).await?,
        };
        let guard = Guard {
            shared: shared.clone(),
            id: Some(id.clone()),
        };
        let outcome = tokio::select! {
            _ = shared.shutdown.cancelled() => Err(Error::ShutDown),
            r = execute(shared, &id, archive, &nonce, timeout) => r,
        };
        // Removal goes on in the background (tracked: shutdown waits for it), off the caller's
        // latency; the report is complete without it.
        drop(guard);
        let outcome = outcome?;
        Ok(Report {
            image,
            ended_by: outcome.ended_by,
            exit_code: outcome.exit_code,
            stdout: String::from_utf8_lossy(&outcome.stdout.bytes).into_owned(),
            stderr: String::from_utf8_lossy(&outcome.stderr.bytes).into_owned(),
            stdout_truncated: outcome.stdout.truncated,
            stderr_truncated: outcome.stderr.truncated,
            duration: outcome.duration,
            network,
            warm,
        })
    }

    /// Stops the sandbox: runs in progress end with [`Error::ShutDown`], the pool stops
    /// refilling, and every container this sandbox created (runs and pool) is removed before
    /// this returns. Later runs fail with [`Error::ShutDown`].
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        remove_owned(&self.shared).await;
    }
}

impl Drop for Sandbox {
    /// Dropped without [`Sandbox::shutdown`]: stop the pool and remove the containers in the
    /// background (best effort; it needs a running Tokio runtime).
    fn drop(&mut self) {
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        self.shared.shutdown.cancel();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            handle.spawn(async move {
                shared.tasks.close();
                shared.tasks.wait().await;
                remove_owned(&shared).await;
            });
        }
    }
}

/// Creates a container for a run on a tracked task that hands it over, or removes it when the run
/// was dropped meanwhile (nobody left to receive it): a container is never created for nobody.
async fn create_owned(shared: &Arc<Shared>, image: &str, network: bool) -> Result<String, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_shared = shared.clone();
    let image = image.to_string();
    shared.tasks.spawn(async move {
        let s = &task_shared;
        let created = docker::create(&s.docker, &s.config, &s.owner, &image, network).await;
        if let Err(Ok(id)) = tx.send(created) {
            let _ = docker::remove(&s.docker, &id).await;
        }
    });
    rx.await.unwrap_or(Err(Error::ShutDown))
}

/// Removes every container labelled with this sandbox's owner id.
async fn remove_owned(shared: &Shared) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{OWNER_LABEL}={}", shared.owner)],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    match shared.docker.list_containers(Some(options)).await {
        Ok(list) => {
            let removals = list.into_iter().filter_map(|c| c.id).map(|id| async move {
                if let Err(e) = docker::remove(&shared.docker, &id).await {
                    tracing::error!(container = %id, error = %e, "sandbox: could not remove a container at shutdown");
                }
            });
            futures::future::join_all(removals).await;
        }
        Err(e) => {
            tracing::error!(owner = %shared.owner, error = %e, "sandbox: could not list containers to remove at shutdown")
        }
    }
}

/// Removes its container when dropped: at the end of a run, or when the run's future is dropped.
struct Guard {
    shared: Arc<Shared>,
    id: Option<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(container = %id, "sandbox: run ended outside a tokio runtime; its container is left to shutdown");
            return;
        };
        let shared = self.shared.clone();
        // Tracked, so shutdown waits for it; spawned even after close (the tracker only counts).
        handle.spawn(self.shared.tasks.track_future(async move {
            if let Err(e) = docker::remove(&shared.docker, &id).await {
                tracing::error!(container = %id, error = %e, "sandbox: could not remove a run's container");
            }
        }));
    }
}

/// One stream's captured bytes.
#[derive(Default)]
struct Captured {
    /// At most the cap.
    bytes: Vec<u8>,
    /// More was written than the cap.
    truncated: bool,
}

impl Captured {
    fn push(&mut self, message: &Bytes, cap: usize) {
        let room = cap.saturating_sub(self.bytes.len());
        if message.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&message[..message.len().min(room)]);
    }
}

/// What `execute` found out.
struct Outcome {
    ended_by: EndedBy,
    exit_code: i64,
    stdout: Captured,
    stderr: Captured,
    duration: Duration,
}

/// Attach, start, feed the archive, read output under the cap and the timeout, then the exit.
async fn execute(
    shared: &Shared,
    id: &str,
    archive: Vec<u8>,
    nonce: &str,
    timeout: Duration,
) -> Result<Outcome, Error> {
    let docker = &shared.docker;
    let cap = shared.config.max_output_bytes;
    let attach = AttachContainerOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        stream: true,
        logs: false,
        detach_keys: None,
    };
    let bollard::container::AttachContainerResults {
        mut output,
        mut input,
    } = docker
        .attach_container(id, Some(attach))
        .await
        .map_err(|source| Error::Docker {
            op: "attach container",
            source,
        })?;
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
        .map_err(|source| Error::Docker {
            op: "start container",
            source,
        })?;
    let started = Instant::now();

    let mut stdout = Captured::default();
    let mut stderr = Captured::default();
    let feed = async {
        // The shell reads the archive, then the program gets end-of-file on stdin. A program
        // that ends early makes these writes fail; that is its business, not an error here.
        if input.write_all(&archive).await.is_ok() {
            let _ = input.shutdown().await;
        }
    };
    let read = async {
        while let Some(item) = output.next().await {
            match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    stdout.push(&message, cap)
                }
                Ok(LogOutput::StdErr { message }) => stderr.push(&message, cap),
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "sandbox: output stream broke");
                    break;
                }
            }
            if stdout.truncated || stderr.truncated {
                return true;
            }
        }
        false
    };
    let finished = tokio::time::timeout(timeout, async { tokio::join!(feed, read).1 }).await;
    // Close the attach connection before anything else: a daemon still copying output nobody
    // reads holds up the container's kill and exit (and every call on it) until the client's
    // timeout.
    drop(output);
    drop(input);
    let ended_by = match finished {
        Ok(false) => None,
        Ok(true) => {
            docker::kill(docker, id).await;
            Some(EndedBy::Output)
        }
        Err(_) => {
            let pids_full = pids_full(shared, id).await;
            docker::kill(docker, id).await;
            Some(if pids_full {
                EndedBy::Pids
            } else {
                EndedBy::Timeout
            })
        }
    };

    // The exit (after a kill, the kill's). Waiting answers with an error for a non-zero exit;
    // the code is read from the container's state below either way.
    let mut wait = docker.wait_container(id, None::<WaitContainerOptions>);
    let _ = tokio::time::timeout(EXIT_WAIT, wait.next()).await;
    let duration = started.elapsed();
    let state = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(|source| Error::Docker {
            op: "inspect container",
            source,
        })?
        .state
        .unwrap_or_default();
    let exit_code = state.exit_code.unwrap_or(-1);
    // A program killed (137) by nobody here: the daemon may record the kernel's OOM kill after
    // the exit (containerd's OOM event and exit event race), so look again for a moment.
    let oom_killed = state.oom_killed == Some(true)
        || (ended_by.is_none() && exit_code == 137 && oom_recorded_late(docker, id).await);
    let refused_forks = take_trailer(&mut stderr.bytes, nonce);
    let ended_by = ended_by.unwrap_or(if oom_killed {
        EndedBy::Memory
    } else if refused_forks > 0 {
        EndedBy::Pids
    } else {
        EndedBy::Exited
    });
    Ok(Outcome {
        ended_by,
        exit_code,
        stdout,
        stderr,
        duration,
    })
}

/// Re-reads the container's state for up to [`OOM_EVENT_WAIT`] and answers whether the daemon
/// has recorded an OOM kill by then (`State.OOMKilled`). Errors count as "no".
async fn oom_recorded_late(docker: &Docker, id: &str) -> bool {
    let deadline = tokio::time::Instant::now() + OOM_EVENT_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(c) = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            && c.state.and_then(|s| s.oom_killed) == Some(true)
        {
            return true;
        }
    }
    false
}

/// True when the container's process count is at its pids limit (read once, before a kill).
async fn pids_full(shared: &Shared, id: &str) -> bool {
    let options = StatsOptions {
        stream: false,
        one_shot: true,
    };
    let mut stats = shared.docker.stats(id, Some(options));
    match tokio::time::timeout(STATS_WAIT, stats.next()).await {
        Ok(Some(Ok(s))) => {
            let current = s.pids_stats.and_then(|p| p.current).unwrap_or(0);
            tracing::debug!(container = %id, current, limit = shared.config.pids, "sandbox: pids at timeout");
            // A fork bomb keeps the table full but for the moment between a child's exit and
            // the next fork; a slot or two free still counts as full.
            current as i64 >= shared.config.pids - 2
        }
        _ => false,
    }
}

/// Removes the container shell's report line (`\n<nonce> max <N>\n`, the last one: only the
/// shell knows the nonce) from `stderr` and returns N, the forks the pids limit refused (0 when
/// the line is missing: the run was killed, or its output cut).
fn take_trailer(stderr: &mut Vec<u8>, nonce: &str) -> u64 {
    let mark = format!("\n{nonce} ");
    let Some(at) = stderr
        .windows(mark.len())
        .rposition(|w| w == mark.as_bytes())
    else {
        return 0;
    };
    let rest = &stderr[at + mark.len()..];
    let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let refused = std::str::from_utf8(&rest[..line_end])
        .ok()
        .and_then(|l| l.trim().strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let end = (at + mark.len() + line_end + 1).min(stderr.len());
    stderr.drain(at..end);
    refused
}

/// The tar archive streamed to the container: the request's files, then the nonce and the run
/// script.
fn archive(request: &RunRequest, nonce: &str) -> Result<Vec<u8>, Error> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
    if request.command.is_empty() || request.command[0].is_empty() {
        return bad("command must name a program (e.g. [\"python3\", \"main.py\"])".into());
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, contents: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, contents)
            .map_err(|e| Error::InvalidRequest(format!("file {path:?} cannot be archived: {e}")))
    };
    for file in &request.files {
        let path = Path::new(&file.path);
        let plain =
            !file.path.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return bad(format!(
                "file path {:?} must be relative to /work without `..` (e.g. \"tests/test_main.py\")",
                file.path
            ));
        }
        if file.path.starts_with(RESERVED_PREFIX) {
            return bad(format!(
                "file path {:?} is reserved: names starting with {RESERVED_PREFIX:?} are the sandbox's",
                file.path
            ));
        }
        add(&file.path, &file.contents)?;
    }
    let quoted: Vec<String> = request
        .command
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    add(NONCE_FILE, format!("{nonce}\n").as_bytes())?;
    add(
        RUN_SCRIPT,
        format!("exec {}\n", quoted.join(" ")).as_bytes(),
    )?;
    tar.into_inner()
        .map_err(|e| Error::InvalidRequest(format!("the archive cannot be built: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, String)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                (path, s)
            })
            .collect()
    }

    #[test]
    fn archive_holds_files_then_the_quoted_command() {
        let req = RunRequest::new("python", &["python3", "-c", "print('it''s')"])
            .file("main.py", "x = 1\n")
            .file("tests/test_main.py", "");
        let got = entries(&archive(&req, "n0nce").unwrap());
        assert_eq!(got[0], ("main.py".into(), "x = 1\n".into()));
        assert_eq!(got[1].0, "tests/test_main.py");
        assert_eq!(got[2], (NONCE_FILE.into(), "n0nce\n".into()));
        assert_eq!(
            got[3],
            (
                RUN_SCRIPT.into(),
                "exec 'python3' '-c' 'print('\\''it'\\'''\\''s'\\'')'\n".into()
            )
        );
    }

    #[test]
    fn archive_refuses_paths_outside_work_and_the_reserved_name() {
        for path in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "",
            RUN_SCRIPT,
            NONCE_FILE,
        ] {
            let req = RunRequest::new("python", &["true"]).file(path, "");
            assert!(
                matches!(archive(&req, "n"), Err(Error::InvalidRequest(_))),
                "{path}"
            );
        }
        let empty = RunRequest::new("python", &[]);
        assert!(matches!(
            archive(&empty, "n"),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn the_trailer_is_stripped_and_read() {
        let mut err = b"boom\nfake 9\nn1 max 0\nlate\n\nn1 max 7\n".to_vec();
        assert_eq!(take_trailer(&mut err, "n1"), 7);
        assert_eq!(err, b"boom\nfake 9\nn1 max 0\nlate\n");
        let mut none = b"no trailer\n".to_vec();
        assert_eq!(take_trailer(&mut none, "n1"), 0);
        assert_eq!(none, b"no trailer\n");
        let mut only = b"\nn1 max 0\n".to_vec();
        assert_eq!(take_trailer(&mut only, "n1"), 0);
        assert!(only.is_empty());
    }

    #[test]
    fn capture_cuts_at_the_cap_and_says_so() {
        let mut c = Captured::default();
        c.push(&Bytes::from_static(b"abcd"), 6);
        assert!(!c.truncated);
        c.push(&Bytes::from_static(b"efgh"), 6);
        assert_eq!(c.bytes, b"abcdef");
        assert!(c.truncated);
    }
}
