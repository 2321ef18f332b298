//! The Docker side: connecting with a clear diagnosis when Docker is not there, the container
//! specification every run shares (the isolation settings live here, in one place), and the calls
//! that kill and remove a container whatever state it is in.

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, RemoveContainerOptionsBuilder,
};

use crate::{Config, Error, LABEL, OWNER_LABEL};

/// Where the run's files go and the program runs: a tmpfs, the only writable path.
pub(crate) const WORK_DIR: &str = "/work";
/// The script (inside [`WORK_DIR`]) that holds the run's command; written last into the archive.
pub(crate) const RUN_SCRIPT: &str = ".baton-run";
/// The file (inside [`WORK_DIR`]) with the run's nonce, which marks the sandbox's own report
/// line on stderr; the container's shell reads and deletes it before the program starts.
pub(crate) const NONCE_FILE: &str = ".baton-nonce";
/// File names starting with this are the sandbox's own; a request may not use them.
pub(crate) const RESERVED_PREFIX: &str = ".baton-";
/// Seconds a Docker API request may take before the client gives up (attach streams excepted:
/// the run's own timeout bounds them).
const API_TIMEOUT_SECS: u64 = 60;

/// The command's fix for a missing or silent daemon.
const START_FIX: &str = "start the daemon with `bash deploy/docker.sh` (install it first with `bash deploy/setup.sh --docker`)";

/// Connects to the daemon at `config.docker_socket`, agrees on an API version and checks that
/// every configured image exists. Each failure names what is missing and how to fix it.
pub(crate) async fn connect(config: &Config) -> Result<Docker, Error> {
    let socket = config.docker_socket.display().to_string();
    if !Path::new(&config.docker_socket).exists() {
        return Err(Error::DockerUnavailable {
            what: format!(
                "no docker socket at {socket} (docker is not installed or dockerd is not running)"
            ),
            fix: START_FIX.to_string(),
        });
    }
    let docker = Docker::connect_with_unix(&socket, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        .map_err(|e| unavailable(&socket, e))?;
    docker.ping().await.map_err(|e| unavailable(&socket, e))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| unavailable(&socket, e))?;
    for image in config.images.values() {
        match docker.inspect_image(image).await {
            Ok(_) => {}
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(Error::ImageMissing {
                    image: image.clone(),
                });
            }
            Err(source) => {
                return Err(Error::Docker {
                    op: "inspect image",
                    source,
                });
            }
        }
    }
    Ok(docker)
}

/// Says why the socket at `socket` does not answer.
fn unavailable(socket: &str, e: DockerError) -> Error {
    let text = format!("{e:?}").to_lowercase();
    let (what, fix) = if text.contains("permission denied") {
        (
            format!("no permission to use the docker socket {socket}"),
            "run as root or add the user to the `docker` group (`sudo usermod -aG docker $USER`)"
                .to_string(),
        )
    } else if text.contains("connection refused") || text.contains("no such file") {
        (
            format!(
                "the docker socket {socket} exists but no daemon answers (dockerd is not running)"
            ),
            START_FIX.to_string(),
        )
    } else {
        (
            format!("the docker daemon at {socket} did not answer: {e}"),
            START_FIX.to_string(),
        )
    };
    Error::DockerUnavailable { what, fix }
}

/// Creates a container for one run of `image`, not started: the isolation settings of every run.
/// `network` false = network mode `none`. The container runs `sh -c`, which unpacks the archive
/// it reads on stdin into [`WORK_DIR`] and then runs [`RUN_SCRIPT`] from it, so the same created
/// container serves any request (the warm pool relies on that). After the program, it writes one
/// line to stderr: the nonce from [`NONCE_FILE`] and the cgroup's `pids.events` (`max N`: forks
/// refused by the pids limit); `run` strips that line from the output.
pub(crate) async fn create(
    docker: &Docker,
    config: &Config,
    owner: &str,
    image: &str,
    network: bool,
) -> Result<String, Error> {
    let (uid, gid) = config.user.split_once(':').unwrap_or(("65534", "65534"));
    let tmpfs = HashMap::from([(
        WORK_DIR.to_string(),
        format!(
            "rw,exec,nosuid,nodev,size={}m,uid={uid},gid={gid},mode=0700",
            config.work_dir_mb
        ),
    )]);
    let memory = i64::try_from(config.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let host = HostConfig {
        network_mode: Some(if network { "bridge" } else { "none" }.to_string()),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        memory: Some(memory),
        // No swap on top of the memory limit: past it the kernel kills.
        memory_swap: Some(memory),
        nano_cpus: Some((config.cpus * 1e9) as i64),
        pids_limit: Some(config.pids),
        // Output comes over the attach stream, capped there; the daemon keeps no log of it.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        ..Default::default()
    };
    let script = format!(
        // Unpack the archive, take the nonce out of reach of the program, run the program as a
        // child, then report on stderr (builtins only: a fork bomb may have left no pids) how
        // often the pids limit refused a fork: `pids.events` is the container's own cgroup
        // (cgroup v1 under pids/, v2 at the root).
        "tar -x -f - -C {WORK_DIR} --no-same-permissions || exit 125; cd {WORK_DIR} || exit 125; \
         read -r n < {NONCE_FILE} && rm -f {NONCE_FILE} || exit 125; \
         /bin/sh {WORK_DIR}/{RUN_SCRIPT}; rc=$?; e=; \
         for f in /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events; do \
         if [ -r $f ]; then read -r e < $f; break; fi; done; \
         printf '\\n%s %s\\n' \"$n\" \"$e\" >&2; exit $rc"
    );
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["/bin/sh".to_string(), "-c".to_string(), script]),
        entrypoint: Some(vec![]),
        user: Some(config.user.clone()),
        working_dir: Some(WORK_DIR.to_string()),
        env: Some(vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            format!("HOME={WORK_DIR}"),
            format!("TMPDIR={WORK_DIR}"),
            "PYTHONDONTWRITEBYTECODE=1".to_string(),
            "PYTHONUNBUFFERED=1".to_string(),
        ]),
        labels: Some(HashMap::from([
            (LABEL.to_string(), "1".to_string()),
            (OWNER_LABEL.to_string(), owner.to_string()),
        ])),
        network_disabled: Some(!network),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        host_config: Some(host),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|source| Error::Docker {
            op: "create container",
            source,
        })?;
    Ok(created.id)
}

/// Kills the container (SIGKILL). A container that is no longer running (or gone) is fine.
pub(crate) async fn kill(docker: &Docker, id: &str) {
    match docker
        .kill_container(id, None::<KillContainerOptions>)
        .await
    {
        Ok(()) => {}
        Err(DockerError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => {}
        Err(e) => tracing::warn!(container = %id, error = %e, "sandbox: kill failed"),
    }
}

/// Removes the container, killing it first if it runs. Gone already, or being removed by another
/// call, counts as removed.
pub(crate) async fn remove(docker: &Docker, id: &str) -> Result<(), Error> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        }) if message.contains("already in progress") => Ok(()),
        Err(source) => Err(Error::Docker {
            op: "remove container",
            source,
        }),
    }
}
