//! The `[sandbox]` configuration: where Docker is, which image runs which language, the limits of
//! every run and the warm pool's size. Not wired into `baton up` yet; a service that runs code
//! (the `run_code` tool, a sandbox action kind) takes this section and calls [`Config::validate`].
//!
//! ```toml
//! [sandbox]
//! docker_socket = "/var/run/docker.sock"
//! images = { python = "baton-sandbox-python:1", shell = "baton-sandbox-shell:1" }
//! memory_mb = 256
//! cpus = 1.0
//! pids = 64
//! timeout = "10s"
//! max_output_bytes = 65536
//! work_dir_mb = 64
//! warm_pool = 2
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The `[sandbox]` section. Limits apply to every run; a request may only shorten the timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Docker daemon's unix socket. Only a local socket: the sandbox never talks to a daemon
    /// over the network.
    pub docker_socket: PathBuf,
    /// Language name → image reference. The request's `language` picks one; an image must exist
    /// locally (build them with `deploy/sandbox-images.sh`). Each image needs `/bin/sh` and `tar`.
    pub images: BTreeMap<String, String>,
    /// Memory limit of one run, in MiB (swap is not allowed on top). Past it the kernel kills the
    /// program and the report says `Memory`.
    pub memory_mb: u64,
    /// CPU limit of one run, in cores (fractions allowed, e.g. 0.5).
    pub cpus: f64,
    /// Most processes and threads alive at once in one run; contains fork bombs.
    pub pids: i64,
    /// Wall-clock limit of one run (from start to exit); past it the container is killed and the
    /// report says `Timeout`. Also the most a request may ask for.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr; a run that writes more is killed, its output cut
    /// here, and the report says `Output` with the stream's truncated flag set.
    pub max_output_bytes: usize,
    /// Size of the tmpfs `/work` (the run's files and everything it writes), in MiB. It counts
    /// against the memory limit.
    pub work_dir_mb: u64,
    /// Containers created ahead per image, so a run does not wait for container creation. 0
    /// turns the pool off (every run creates its own container).
    pub warm_pool: usize,
    /// The user the program runs as, `uid:gid`; never root.
    pub user: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            images: BTreeMap::from([
                ("python".to_string(), "baton-sandbox-python:1".to_string()),
                ("shell".to_string(), "baton-sandbox-shell:1".to_string()),
            ]),
            memory_mb: 256,
            cpus: 1.0,
            pids: 64,
            timeout: Duration::from_secs(10),
            max_output_bytes: 64 * 1024,
            work_dir_mb: 64,
            warm_pool: 2,
            user: "65534:65534".to_string(),
        }
    }
}

impl Config {
    /// Checks the values; the message names the key and what to set.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if !self.docker_socket.is_absolute() {
            return bad(format!(
                "sandbox.docker_socket must be an absolute path (got {:?})",
                self.docker_socket
            ));
        }
        if self.images.is_empty() {
            return bad("sandbox.images must name at least one image (e.g. python = \"baton-sandbox-python:1\")".into());
        }
        for (lang, image) in &self.images {
            if lang.is_empty() || image.trim().is_empty() {
                return bad(format!(
                    "sandbox.images.{lang} must be a non-empty image reference"
                ));
            }
        }
        if self.memory_mb < 6 {
            return bad("sandbox.memory_mb must be at least 6 (docker's minimum)".into());
        }
        if !(self.cpus > 0.0 && self.cpus <= 1024.0) {
            return bad(format!(
                "sandbox.cpus must be more than 0 (got {})",
                self.cpus
            ));
        }
        if self.pids < 2 {
            return bad("sandbox.pids must be at least 2 (the shell and the program)".into());
        }
        if self.timeout < Duration::from_millis(100) {
            return bad("sandbox.timeout must be at least 100ms (e.g. \"10s\")".into());
        }
        if self.max_output_bytes == 0 {
            return bad("sandbox.max_output_bytes must be at least 1".into());
        }
        if self.work_dir_mb == 0 {
            return bad("sandbox.work_dir_mb must be at least 1".into());
        }
        match self.user.split_once(':') {
            Some((u, g)) if u.parse::<u32>().is_ok_and(|u| u != 0) && g.parse::<u32>().is_ok() => {}
            _ => {
                return bad(format!(
                    "sandbox.user must be numeric uid:gid and not root (e.g. \"65534:65534\"; got {:?})",
                    self.user
                ));
            }
        }
        Ok(())
    }

    /// The image configured for `language`.
    pub fn image(&self, language: &str) -> Result<&str, Error> {
        self.images
            .get(language)
            .map(String::as_str)
            .ok_or_else(|| Error::UnknownLanguage(language.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    /// A change to the defaults, and the key the error must name.
    type Case = (fn(&mut Config), &'static str);

    #[test]
    fn validate_names_the_bad_key() {
        let cases: Vec<Case> = vec![
            (
                |c| c.docker_socket = "docker.sock".into(),
                "sandbox.docker_socket",
            ),
            (|c| c.images.clear(), "sandbox.images"),
            (|c| c.memory_mb = 1, "sandbox.memory_mb"),
            (|c| c.cpus = 0.0, "sandbox.cpus"),
            (|c| c.pids = 1, "sandbox.pids"),
            (|c| c.timeout = Duration::ZERO, "sandbox.timeout"),
            (|c| c.max_output_bytes = 0, "sandbox.max_output_bytes"),
            (|c| c.work_dir_mb = 0, "sandbox.work_dir_mb"),
            (|c| c.user = "0:0".into(), "sandbox.user"),
            (|c| c.user = "nobody".into(), "sandbox.user"),
        ];
        for (change, key) in cases {
            let mut c = Config::default();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn parses_from_toml() {
        let c: Config = toml::from_str(
            "images = { python = \"p:1\", shell = \"s:1\" }\ntimeout = \"2s\"\nwarm_pool = 0\n",
        )
        .unwrap();
        assert_eq!(c.image("python").unwrap(), "p:1");
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.warm_pool, 0);
        assert!(matches!(c.image("ruby"), Err(Error::UnknownLanguage(_))));
    }
}
