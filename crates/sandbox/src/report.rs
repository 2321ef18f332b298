//! The report of one sandbox run ([`Report`]), what ended it ([`EndedBy`]), and their conversion
//! to the wire type `baton.v1.SandboxRun` that artifacts and the audit log carry.

use std::time::Duration;

use baton_proto as v1;

/// What ended a run: the program itself, or which limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The program exited by itself (any exit code; a failing test exits non-zero).
    Exited,
    /// Killed at the wall-clock timeout.
    Timeout,
    /// Killed by the kernel for going past the memory limit (Docker's `OOMKilled`).
    Memory,
    /// The pids limit refused a fork (a fork bomb, or a runaway spawner, contained): either the
    /// program exited after forks failed (the container's cgroup counts refusals), or it hit the
    /// timeout with its process table full.
    Pids,
    /// Killed for writing more than the output cap to stdout or stderr.
    Output,
}

impl EndedBy {
    /// True when a limit (not the program) ended the run.
    pub fn is_limit(self) -> bool {
        self != EndedBy::Exited
    }
}

/// What one run did. `stdout` and `stderr` are decoded as UTF-8 with invalid bytes replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The image the run used (e.g. `baton-sandbox-python:1`).
    pub image: String,
    /// What ended the run.
    pub ended_by: EndedBy,
    /// The program's exit code as Docker reports it (137 = killed: timeout, output cap, OOM).
    pub exit_code: i64,
    /// Captured stdout, at most the output cap.
    pub stdout: String,
    /// Captured stderr, at most the output cap.
    pub stderr: String,
    /// True when stdout went past the cap and was cut there.
    pub stdout_truncated: bool,
    /// True when stderr went past the cap and was cut there.
    pub stderr_truncated: bool,
    /// Wall-clock time from the container's start to its exit (or kill).
    pub duration: Duration,
    /// True when the run had network access (a policy-approved request).
    pub network: bool,
    /// True when the run used a container from the warm pool (false: created for it).
    pub warm: bool,
}

impl Report {
    /// True when the program exited by itself with code 0 and no limit was hit.
    pub fn succeeded(&self) -> bool {
        self.ended_by == EndedBy::Exited && self.exit_code == 0
    }
}

impl From<EndedBy> for v1::SandboxEnd {
    fn from(e: EndedBy) -> Self {
        match e {
            EndedBy::Exited => v1::SandboxEnd::Exited,
            EndedBy::Timeout => v1::SandboxEnd::Timeout,
            EndedBy::Memory => v1::SandboxEnd::Memory,
            EndedBy::Pids => v1::SandboxEnd::Pids,
            EndedBy::Output => v1::SandboxEnd::Output,
        }
    }
}

impl From<Report> for v1::SandboxRun {
    fn from(r: Report) -> Self {
        v1::SandboxRun {
            image: r.image,
            exit_code: i32::try_from(r.exit_code).unwrap_or(-1),
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            stdout: r.stdout,
            stderr: r.stderr,
            ended_by: v1::SandboxEnd::from(r.ended_by) as i32,
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            network: r.network,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_the_wire_type() {
        let r = Report {
            image: "baton-sandbox-python:1".into(),
            ended_by: EndedBy::Output,
            exit_code: 137,
            stdout: "abc".into(),
            stderr: String::new(),
            stdout_truncated: true,
            stderr_truncated: false,
            duration: Duration::from_millis(1234),
            network: false,
            warm: true,
        };
        assert!(!r.succeeded());
        let w = v1::SandboxRun::from(r);
        assert_eq!(w.exit_code, 137);
        assert_eq!(w.duration_ms, 1234);
        assert_eq!(w.ended_by(), v1::SandboxEnd::Output);
        assert!(w.stdout_truncated && !w.stderr_truncated);
        assert_eq!(w.stdout, "abc");
    }
}
