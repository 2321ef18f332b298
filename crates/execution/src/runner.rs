//! What carries out a step: an [`ActionRunner`] runs an [`Action`] (apply or roll back) and
//! probes a [`HealthCheck`] once, for the kinds it declares.
//!
//! Both kinds are open. An action's kind name is `http`, `noop`, `sandbox` or a [`PluginAction`]'s
//! `kind`; a health check's is `http`, `tcp` or a [`PluginProbe`]'s `kind` (see
//! [`action_kind`], [`probe_kind`]). The service runs every action and probe through one
//! [`Dispatcher`], which picks the runner registered for the kind name and answers
//! [`ActionError::Unsupported`] / [`ProbeError::Unsupported`] naming the kind and the kinds it
//! has when none is.
//!
//! Runners are registered as [`RunnerFactory`] values, built-ins and plug-ins alike:
//! [`builtin_runners`] (HTTP, no-op, TCP) first, then every `RunnerFactory` in
//! [`Context::plugins`](baton_runtime::Context::plugins), in registration order; a later
//! factory serving a kind replaces the earlier one for that kind. So a Docker or SSH kind is
//! one plug-in (a runner and its factory) and no change to this crate or any other service.
//!
//! [`PluginAction`]: baton_proto::PluginAction
//! [`PluginProbe`]: baton_proto::PluginProbe

use crate::{Config, Error};
use baton_proto::{Action, HealthCheck, action, health_check};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Kind name of [`baton_proto::HttpAction`] and [`baton_proto::HttpProbe`].
pub const HTTP: &str = "http";
/// Kind name of [`baton_proto::NoopAction`].
pub const NOOP: &str = "noop";
/// Kind name of [`baton_proto::SandboxAction`]. No built-in runner serves it: baton-sandbox's
/// `execution` feature provides the runner (`baton_sandbox::action`), so this crate does not
/// depend on Docker.
pub const SANDBOX: &str = "sandbox";
/// Kind name of [`baton_proto::TcpProbe`].
pub const TCP: &str = "tcp";

/// Extra time the [`Dispatcher`] allows a runner beyond `execution.action_timeout` before it
/// gives up on the call, so a runner's own timeout (with its clearer message) fires first.
const BACKSTOP_GRACE: Duration = Duration::from_secs(1);

/// What a successful action reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutcome {
    /// One line for humans (`PUT http://…/config: 200`), stored as the asset's detail.
    pub detail: String,
}

/// Why an action did not succeed. The message is stored as the asset's detail and quoted in
/// the task's failure reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No runner serves this kind of action (or the action has no kind).
    #[error("unsupported action: {0}")]
    Unsupported(String),
    /// The action is malformed (bad method, URL, header or plug-in spec).
    #[error("invalid action: {0}")]
    Invalid(String),
    /// The request could not be made or timed out; it may or may not have reached the asset.
    #[error("{0}")]
    Transport(String),
    /// The action ran and did not succeed: what it reported (a sandbox script's exit code, the
    /// limit that ended it).
    #[error("{0}")]
    Failed(String),
    /// The asset answered with a status the action does not accept.
    #[error("{method} {url}: expected {expected}, got {status}{body}")]
    Status {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// Accepted statuses, as text (`2xx`, `200 or 204`).
        expected: String,
        /// The status received.
        status: u16,
        /// `: <excerpt of the body>` or empty.
        body: String,
    },
}

/// Why a health probe did not pass. The message is stored as the asset's detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No runner serves this kind of health check (or the check has no kind); probing it
    /// again cannot help.
    #[error("unsupported health check: {0}")]
    Unsupported(String),
    /// The asset was probed and is not healthy: what was seen (`expected 200, got 503`,
    /// `connect 127.0.0.1:5432: connection refused`).
    #[error("{0}")]
    Unhealthy(String),
}

/// Result of one health probe: `Ok` when healthy.
pub type ProbeResult = Result<(), ProbeError>;

/// Runs actions and health probes of the kinds it is registered for (see [`RunnerFactory`]).
///
/// Implementations must be safe to call again with the same action after a crash: pass the
/// action's idempotency key to the receiver where it supports one. They should bound their own
/// time by `execution.action_timeout` (the [`Dispatcher`] gives up a second later). A runner
/// serving only actions (or only probes) leaves the other method to its default, which answers
/// `Unsupported`.
pub trait ActionRunner: Send + Sync + 'static {
    /// Runs `action` once.
    fn run<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            Err(ActionError::Unsupported(format!(
                "this runner runs no actions (kind {})",
                action_kind(action).unwrap_or("none")
            )))
        })
    }

    /// Probes `check` once (one attempt; the caller retries up to the check's attempts).
    fn probe<'a>(&'a self, check: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async move {
            Err(ProbeError::Unsupported(format!(
                "this runner probes nothing (kind {})",
                probe_kind(check).unwrap_or("none")
            )))
        })
    }
}

/// The kind name of `action`: `http`, `noop`, a plug-in action's `kind`, or `None` when the
/// action has no kind.
pub fn action_kind(action: &Action) -> Option<&str> {
    match action.kind.as_ref()? {
        action::Kind::Http(_) => Some(HTTP),
        action::Kind::Noop(_) => Some(NOOP),
        action::Kind::Sandbox(_) => Some(SANDBOX),
        action::Kind::Plugin(p) => Some(p.kind.as_str()),
    }
}

/// The kind name of `check`: `http`, `tcp`, a plug-in probe's `kind`, or `None` when the
/// check has no kind (as a check stored before the kinds were opened decodes).
pub fn probe_kind(check: &HealthCheck) -> Option<&str> {
    match check.kind.as_ref()? {
        health_check::Kind::Http(_) => Some(HTTP),
        health_check::Kind::Tcp(_) => Some(TCP),
        health_check::Kind::Plugin(p) => Some(p.kind.as_str()),
    }
}

/// Builds a runner from the `[execution]` settings; an `Err` is why it cannot be built.
type Build = dyn Fn(&Config) -> Result<Arc<dyn ActionRunner>, String> + Send + Sync;

/// The execution service's plug-in type: a runner and the action and probe kinds it serves.
/// Register one in [`Plugins`](baton_runtime::plugins::Plugins) and hand them to the service
/// through [`Context::with_plugins`](baton_runtime::Context::with_plugins); the built-in
/// runners are values of this type too ([`builtin_runners`]).
///
/// ```ignore
/// plugins.register(RunnerFactory::of(EchoRunner::default()).actions(["echo"]));
/// ```
#[derive(Clone)]
pub struct RunnerFactory {
    /// Action kind names it runs (`http`, or a plug-in kind).
    action_kinds: Vec<String>,
    /// Health-check kind names it probes.
    probe_kinds: Vec<String>,
    /// Builds the runner when the service starts, from its settings.
    build: Arc<Build>,
}

impl std::fmt::Debug for RunnerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerFactory")
            .field("action_kinds", &self.action_kinds)
            .field("probe_kinds", &self.probe_kinds)
            .finish_non_exhaustive()
    }
}

impl RunnerFactory {
    /// A factory building its runner from the `[execution]` settings when the service starts
    /// (timeouts, defaults); it serves no kind until [`actions`](Self::actions) or
    /// [`probes`](Self::probes) name some. `build`'s `Err` stops the service from starting
    /// ([`Error::Runner`]).
    pub fn new<R, F>(build: F) -> RunnerFactory
    where
        R: ActionRunner,
        F: Fn(&Config) -> Result<R, String> + Send + Sync + 'static,
    {
        RunnerFactory {
            action_kinds: Vec::new(),
            probe_kinds: Vec::new(),
            build: Arc::new(move |config| {
                build(config).map(|r| Arc::new(r) as Arc<dyn ActionRunner>)
            }),
        }
    }

    /// A factory for a runner built already (shared by every service it is handed to).
    pub fn of(runner: impl ActionRunner) -> RunnerFactory {
        let runner: Arc<dyn ActionRunner> = Arc::new(runner);
        RunnerFactory {
            action_kinds: Vec::new(),
            probe_kinds: Vec::new(),
            build: Arc::new(move |_| Ok(runner.clone())),
        }
    }

    /// Adds action kind names the runner serves.
    pub fn actions<S: Into<String>>(mut self, kinds: impl IntoIterator<Item = S>) -> Self {
        self.action_kinds.extend(kinds.into_iter().map(Into::into));
        self
    }

    /// Adds health-check kind names the runner serves.
    pub fn probes<S: Into<String>>(mut self, kinds: impl IntoIterator<Item = S>) -> Self {
        self.probe_kinds.extend(kinds.into_iter().map(Into::into));
        self
    }

    /// The action kind names it serves.
    pub fn action_kinds(&self) -> &[String] {
        &self.action_kinds
    }

    /// The health-check kind names it serves.
    pub fn probe_kinds(&self) -> &[String] {
        &self.probe_kinds
    }
}

/// The built-in runners, registered like plug-ins: `http` actions and probes
/// ([`HttpRunner`](crate::HttpRunner), with `action_timeout` and
/// `health_check_expect_status`), `noop` actions ([`NoopRunner`]) and `tcp` probes
/// ([`TcpRunner`](crate::TcpRunner), with `action_timeout`).
pub fn builtin_runners() -> Vec<RunnerFactory> {
    vec![
        RunnerFactory::new(|c: &Config| {
            crate::HttpRunner::new(c.action_timeout)
                .map(|r| r.with_expect_status(c.health_check_expect_status))
                .map_err(|e| e.to_string())
        })
        .actions([HTTP])
        .probes([HTTP]),
        RunnerFactory::of(NoopRunner).actions([NOOP]),
        RunnerFactory::new(|c: &Config| Ok(crate::TcpRunner::new(c.action_timeout))).probes([TCP]),
    ]
}

/// Runs `noop` actions: succeeds at once, without side effects (benchmarks, dry runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopRunner;

impl ActionRunner for NoopRunner {
    fn run<'a>(&'a self, _: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async {
            Ok(ActionOutcome {
                detail: NOOP.into(),
            })
        })
    }
}

/// The runner the service uses: runs each action and probe with the runner registered for its
/// kind name, within `action_timeout` plus a second.
pub struct Dispatcher {
    /// Runner per action kind name.
    actions: BTreeMap<String, Arc<dyn ActionRunner>>,
    /// Runner per health-check kind name.
    probes: BTreeMap<String, Arc<dyn ActionRunner>>,
    /// Longest a runner may take for one call (`action_timeout` + [`BACKSTOP_GRACE`]).
    backstop: Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("actions", &self.action_kinds())
            .field("probes", &self.probe_kinds())
            .finish()
    }
}

impl Dispatcher {
    /// Builds every factory's runner with `config` and maps its kinds to it; for a kind served
    /// by several factories the last one wins (plug-ins come after the built-ins, so they can
    /// replace them).
    ///
    /// Errors: [`Error::Runner`] when a factory cannot build its runner.
    pub fn build<'a>(
        config: &Config,
        factories: impl IntoIterator<Item = &'a RunnerFactory>,
    ) -> Result<Dispatcher, Error> {
        let mut actions = BTreeMap::new();
        let mut probes = BTreeMap::new();
        for factory in factories {
            let runner = (factory.build)(config).map_err(|reason| Error::Runner {
                kinds: factory
                    .action_kinds
                    .iter()
                    .chain(&factory.probe_kinds)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                reason,
            })?;
            for kind in &factory.action_kinds {
                actions.insert(kind.clone(), runner.clone());
            }
            for kind in &factory.probe_kinds {
                probes.insert(kind.clone(), runner.clone());
            }
        }
        Ok(Dispatcher {
            actions,
            probes,
            backstop: config.action_timeout + BACKSTOP_GRACE,
        })
    }

    /// The action kind names it runs, sorted.
    pub fn action_kinds(&self) -> Vec<&str> {
        self.actions.keys().map(String::as_str).collect()
    }

    /// The health-check kind names it probes, sorted.
    pub fn probe_kinds(&self) -> Vec<&str> {
        self.probes.keys().map(String::as_str).collect()
    }
}

impl ActionRunner for Dispatcher {
    fn run<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
        Box::pin(async move {
            let Some(kind) = action_kind(action) else {
                return Err(ActionError::Unsupported(format!(
                    "the action has no kind; give it one of: {}",
                    self.action_kinds().join(", ")
                )));
            };
            let Some(runner) = self.actions.get(kind) else {
                return Err(ActionError::Unsupported(format!(
                    "no runner for action kind {kind:?}; this service runs {} (register a \
                     RunnerFactory for {kind:?} to add it)",
                    self.action_kinds().join(", ")
                )));
            };
            match tokio::time::timeout(self.backstop, runner.run(action)).await {
                Ok(result) => result,
                Err(_) => Err(ActionError::Transport(format!(
                    "{kind} action did not finish within {:?}",
                    self.backstop
                ))),
            }
        })
    }

    fn probe<'a>(&'a self, check: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async move {
            let Some(kind) = probe_kind(check) else {
                return Err(ProbeError::Unsupported(format!(
                    "the health check has no kind; give it one of: {}",
                    self.probe_kinds().join(", ")
                )));
            };
            let Some(runner) = self.probes.get(kind) else {
                return Err(ProbeError::Unsupported(format!(
                    "no runner for health-check kind {kind:?}; this service probes {} \
                     (register a RunnerFactory for {kind:?} to add it)",
                    self.probe_kinds().join(", ")
                )));
            };
            match tokio::time::timeout(self.backstop, runner.probe(check)).await {
                Ok(result) => result,
                Err(_) => Err(ProbeError::Unhealthy(format!(
                    "{kind} probe did not finish within {:?}",
                    self.backstop
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{NoopAction, PluginAction, PluginProbe, TcpProbe};

    /// Answers with its name, so a test sees which runner a kind reached.
    struct Named(&'static str);

    impl ActionRunner for Named {
        fn run<'a>(&'a self, _: &'a Action) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
            Box::pin(async move {
                Ok(ActionOutcome {
                    detail: self.0.into(),
                })
            })
        }
        fn probe<'a>(&'a self, _: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
            Box::pin(async move { Err(ProbeError::Unhealthy(self.0.into())) })
        }
    }

    fn plugin_action(kind: &str) -> Action {
        Action {
            kind: Some(action::Kind::Plugin(PluginAction {
                kind: kind.into(),
                spec_json: "{}".into(),
            })),
            ..Default::default()
        }
    }

    fn plugin_probe(kind: &str) -> HealthCheck {
        HealthCheck {
            kind: Some(health_check::Kind::Plugin(PluginProbe {
                kind: kind.into(),
                spec_json: "{}".into(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn kind_names_come_from_the_oneof_or_the_plugin() {
        let noop = Action {
            kind: Some(action::Kind::Noop(NoopAction {})),
            ..Default::default()
        };
        assert_eq!(action_kind(&noop), Some("noop"));
        assert_eq!(action_kind(&plugin_action("echo")), Some("echo"));
        assert_eq!(action_kind(&Action::default()), None);
        let tcp = HealthCheck {
            kind: Some(health_check::Kind::Tcp(TcpProbe {
                address: "127.0.0.1:1".into(),
            })),
            ..Default::default()
        };
        assert_eq!(probe_kind(&tcp), Some("tcp"));
        assert_eq!(probe_kind(&plugin_probe("port-open")), Some("port-open"));
        assert_eq!(probe_kind(&HealthCheck::default()), None);
    }

    #[tokio::test]
    async fn builtins_serve_http_noop_and_tcp_and_name_what_is_missing() {
        let d = Dispatcher::build(&Config::default(), &builtin_runners()).unwrap();
        assert_eq!(d.action_kinds(), ["http", "noop"]);
        assert_eq!(d.probe_kinds(), ["http", "tcp"]);
        let noop = Action {
            kind: Some(action::Kind::Noop(NoopAction {})),
            ..Default::default()
        };
        assert_eq!(d.run(&noop).await.unwrap().detail, "noop");
        let err = d.run(&plugin_action("docker")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported action: no runner for action kind \"docker\"; this service runs http, \
             noop (register a RunnerFactory for \"docker\" to add it)"
        );
        assert!(
            matches!(d.run(&Action::default()).await, Err(ActionError::Unsupported(m)) if m.contains("no kind")),
        );
        let err = d.probe(&plugin_probe("grpc")).await.unwrap_err();
        assert!(
            matches!(&err, ProbeError::Unsupported(m) if m.contains("\"grpc\"") && m.contains("http, tcp")),
            "{err}"
        );
        assert!(matches!(
            d.probe(&HealthCheck::default()).await,
            Err(ProbeError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn a_later_factory_replaces_the_earlier_one_for_its_kinds_only() {
        let mut factories = builtin_runners();
        factories.push(
            RunnerFactory::of(Named("first"))
                .actions(["echo"])
                .probes(["echo"]),
        );
        factories.push(RunnerFactory::of(Named("mine")).actions(["noop", "echo"]));
        let d = Dispatcher::build(&Config::default(), &factories).unwrap();
        let noop = Action {
            kind: Some(action::Kind::Noop(NoopAction {})),
            ..Default::default()
        };
        assert_eq!(d.run(&noop).await.unwrap().detail, "mine");
        assert_eq!(d.run(&plugin_action("echo")).await.unwrap().detail, "mine");
        // The probe kind "echo" stays with the factory that last declared it.
        assert_eq!(
            d.probe(&plugin_probe("echo")).await,
            Err(ProbeError::Unhealthy("first".into()))
        );
    }

    #[test]
    fn a_factory_that_cannot_build_names_its_kinds() {
        let bad = RunnerFactory::new(|_: &Config| -> Result<NoopRunner, String> {
            Err("no docker socket at /var/run/docker.sock".into())
        })
        .actions(["docker"]);
        let err = Dispatcher::build(&Config::default(), [&bad]).unwrap_err();
        assert!(
            matches!(&err, Error::Runner { kinds, reason } if kinds == "docker" && reason.contains("docker.sock")),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_that_hangs_is_cut_off_after_the_backstop() {
        struct Hang;
        impl ActionRunner for Hang {
            fn run<'a>(
                &'a self,
                _: &'a Action,
            ) -> BoxFuture<'a, Result<ActionOutcome, ActionError>> {
                Box::pin(futures::future::pending())
            }
        }
        let config = Config {
            action_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let d = Dispatcher::build(&config, [&RunnerFactory::of(Hang).actions(["hang"])]).unwrap();
        let err = d.run(&plugin_action("hang")).await.unwrap_err();
        assert_eq!(
            err,
            ActionError::Transport("hang action did not finish within 3s".into())
        );
    }
}
