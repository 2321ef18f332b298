//! baton-sandbox: runs a program (generated code and its tests) in a Docker container, never on
//! the host.
//!
//! Every run gets a fresh container that is removed afterwards, whatever happens: the program
//! exits, a limit ends it, the Docker API fails, the caller drops the future, or the sandbox shuts
//! down ([`Sandbox::shutdown`]). Per run (see [`run`] for how): network `none` (network access
//! only with a policy decision, [`Network::PolicyApproved`]), a read-only root filesystem, a tmpfs
//! `/work` that is the only writable place and receives the run's files, a non-root user, all
//! capabilities dropped, `no-new-privileges`, memory / CPU / pids limits, a wall-clock timeout
//! that kills, and a cap on captured output. The [`Report`] says what ended the run.
//!
//! A warm pool ([`pool`]) keeps containers created ahead per image, so a run pays only for start
//! and exit; a pooled container serves one run and is then removed.
//!
//! With the `execution` feature, [`action`] runs the execution service's `sandbox` action kind
//! (a rollout step that runs a script in a container).
//!
//! Where Docker is not available, [`Sandbox::connect`] fails with [`Error::DockerUnavailable`] or
//! [`Error::ImageMissing`], naming what is missing and the command that fixes it. There is no
//! fallback that runs code on the host.

#[cfg(feature = "execution")]
pub mod action;
pub mod config;
mod docker;
pub mod pool;
pub mod report;
pub mod run;

pub use config::Config;
pub use report::{EndedBy, Report};
pub use run::{File, Network, RunRequest, Sandbox};

/// Label set on every container the sandbox creates (`baton.sandbox=1`), so an operator can list
/// or remove leftovers of a killed process: `docker rm -f $(docker ps -aq --filter label=baton.sandbox=1)`.
pub const LABEL: &str = "baton.sandbox";
/// Label naming the [`Sandbox`] instance (a UUID) that created a container; tests and shutdown
/// list a sandbox's own containers by it.
pub const OWNER_LABEL: &str = "baton.sandbox.owner";

/// What can go wrong using the sandbox. A limit that ends a run is not an error: it is in the
/// [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `[sandbox]` setting is invalid; the message names the key.
    #[error("invalid sandbox config: {0}")]
    Config(String),
    /// The Docker daemon cannot be reached: `what` says what is missing (no socket, no daemon
    /// answering, no permission) and `fix` the command that fixes it.
    #[error("docker is not available: {what}; {fix}")]
    DockerUnavailable {
        /// What is missing, e.g. "no docker socket at /var/run/docker.sock".
        what: String,
        /// The command that fixes it.
        fix: String,
    },
    /// A configured sandbox image is not in the local Docker image store.
    #[error(
        "sandbox image {image} is missing; build it with `bash deploy/sandbox-images.sh` (no registry needed) or `docker build -t {image} deploy/sandbox`"
    )]
    ImageMissing {
        /// The image reference, e.g. `baton-sandbox-python:1`.
        image: String,
    },
    /// The request names a language that has no configured image.
    #[error("no sandbox image for language {0:?}; configure [sandbox] images.{0}")]
    UnknownLanguage(String),
    /// The request is malformed (a file path, an empty command, a timeout above the maximum).
    #[error("invalid sandbox request: {0}")]
    InvalidRequest(String),
    /// The sandbox is shutting down: the run was stopped and its container removed.
    #[error("the sandbox is shutting down; the run was stopped and its container removed")]
    ShutDown,
    /// A Docker API call failed (after the daemon was found); `op` names the call.
    #[error("docker {op} failed: {source}")]
    Docker {
        /// The API call, e.g. "create container".
        op: &'static str,
        /// What the Docker client reported.
        #[source]
        source: bollard::errors::Error,
    },
}

impl Error {
    /// The gRPC code a service returns for this error: `Unavailable` when Docker or the sandbox
    /// is not there (retrying later may work), `FailedPrecondition` for a missing image (an
    /// operator must build it), `InvalidArgument` for a bad request or config, `Internal` for a
    /// failed Docker call.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Config(_) | Error::UnknownLanguage(_) | Error::InvalidRequest(_) => {
                tonic::Code::InvalidArgument
            }
            Error::DockerUnavailable { .. } | Error::ShutDown => tonic::Code::Unavailable,
            Error::ImageMissing { .. } => tonic::Code::FailedPrecondition,
            Error::Docker { .. } => tonic::Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_grpc_codes() {
        let unavailable = Error::DockerUnavailable {
            what: "x".into(),
            fix: "y".into(),
        };
        assert_eq!(
            tonic::Status::from(unavailable).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(Error::ShutDown.code(), tonic::Code::Unavailable);
        assert_eq!(
            Error::ImageMissing { image: "i".into() }.code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            Error::UnknownLanguage("r".into()).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Error::InvalidRequest("r".into()).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Error::Config("r".into()).code(),
            tonic::Code::InvalidArgument
        );
    }
}
