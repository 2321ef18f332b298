//! How agents are registered: [`AgentFactory`] is the agent runner's plug-in type.
//!
//! The built-in agents are factories like any other ([`builtin_factories`]: `drift-runbook`
//! for role `drift`, `noop` for no role until configured). A program that embeds Baton adds its
//! own through the process's plug-in registry (`baton_runtime::plugins::Plugins`):
//!
//! ```ignore
//! plugins.register(AgentFactory::new("cost-report", &["cost"], |_setup| {
//!     Ok(Arc::new(CostReport::default()) as Arc<dyn Agent>)
//! }));
//! ```
//!
//! At start the runner takes the built-ins, then every registered factory (a later one with
//! the same name replaces an earlier one), assigns each factory's default roles, then applies
//! `agents.assign` (role → factory name) and `agents.noop_roles` from the configuration, and
//! builds one agent per factory in use. No service code changes to add an agent.

use crate::llm_agent::{LlmAgent, ModelProvider, Shared};
use crate::spec::{self, AgentSpec, Engine};
use crate::tool_policy::ToolPolicy;
use crate::tools::{ToolFactory, ToolRegistry};
use crate::{Agent, Config, DriftRunbook, Error, NoopAgent};
use baton_llm::ProviderRegistry;
use baton_runtime::Context;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a factory may read while building its agent.
pub struct AgentSetup<'a> {
    /// The `[agents]` section as the runner will use it (defaults and derived paths applied).
    pub config: &'a Config,
    /// The process's shared handles (bus, catalog, metrics, plug-ins).
    pub ctx: &'a Context,
}

/// The build function of an [`AgentFactory`]: returns the agent, or why it cannot be built
/// (reported at start as `cannot set up agent <name>: <reason>`).
pub type BuildAgent =
    dyn Fn(&AgentSetup<'_>) -> Result<Arc<dyn Agent>, String> + Send + Sync + 'static;

/// A named way to build an agent, and the roles it serves unless the configuration says
/// otherwise. Register one with `Plugins::register` to add an agent without editing the
/// agent runner.
#[derive(Clone)]
pub struct AgentFactory {
    /// The name `agents.assign` refers to (`drift-runbook`, `noop`, `cost-report`).
    pub name: String,
    /// Roles it serves by default (may be empty: then only `agents.assign` uses it).
    pub roles: Vec<String>,
    /// Builds the agent once, at start.
    pub build: Arc<BuildAgent>,
}

impl AgentFactory {
    /// A factory named `name` serving `roles` by default.
    pub fn new(
        name: &str,
        roles: &[&str],
        build: impl Fn(&AgentSetup<'_>) -> Result<Arc<dyn Agent>, String> + Send + Sync + 'static,
    ) -> AgentFactory {
        AgentFactory {
            name: name.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            build: Arc::new(build),
        }
    }
}

impl std::fmt::Debug for AgentFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentFactory")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// Name of the built-in no-op factory (`agents.noop_roles` assigns roles to it).
pub const NOOP_FACTORY: &str = "noop";
/// Name of the built-in drift runbook's factory.
pub const DRIFT_FACTORY: &str = "drift-runbook";

/// The agents that ship with Baton, as factories: the drift runbook for role `drift`, and the
/// no-op agent (for roles named in `agents.noop_roles` or `agents.assign`).
pub fn builtin_factories() -> Vec<AgentFactory> {
    vec![
        AgentFactory::new(DRIFT_FACTORY, &["drift"], |setup| {
            let c = setup.config;
            let path = c.effective_inventory_path();
            if !path.exists() {
                tracing::warn!(path = %path.display(), "inventory does not exist yet; drift tasks fail until it is written");
            }
            let agent = DriftRunbook::new(
                path,
                c.http_timeout,
                c.max_phase_fraction,
                c.fetch_concurrency,
            )?;
            Ok(Arc::new(agent) as Arc<dyn Agent>)
        }),
        AgentFactory::new(NOOP_FACTORY, &[], |_| {
            Ok(Arc::new(NoopAgent) as Arc<dyn Agent>)
        }),
    ]
}

/// What [`assemble`] built: the agent of each role, the tools, and the agent files read.
pub struct Assembly {
    /// Role → agent.
    pub agents: BTreeMap<String, Arc<dyn Agent>>,
    /// The tool registry (built-ins and [`ToolFactory`] plug-ins).
    pub tools: ToolRegistry,
    /// The agent files of `agents.dir`, sorted by file name.
    pub files: Vec<AgentSpec>,
}

/// Name of the factory an agent file of `role` becomes: `<role>-llm`.
pub fn file_factory_name(role: &str) -> String {
    format!("{role}-llm")
}

/// The agent of each role: built-ins, then `ctx.plugins`' factories, then the agent files of
/// `agents.dir` (a model agent file becomes the factory `<role>-llm`, its models looked up among
/// the [`ModelProvider`] plug-ins and the last registered [`ProviderRegistry`] plug-in, which
/// `baton up` builds from `[llm]`; a runbook file assigns
/// its role to the named factory), then the configuration's assignments, each factory built
/// once.
///
/// Errors: [`Error::AgentFile`] naming the file and line of a bad agent file;
/// [`Error::Tool`] when a tool or the tool policy cannot be set up; [`Error::Config`] when
/// `agents.assign` names a factory nobody registered (the message lists the registered ones);
/// [`Error::Agent`] when a factory fails.
pub fn assemble(ctx: &Context, config: &Config) -> Result<Assembly, Error> {
    let mut factories: BTreeMap<String, AgentFactory> = BTreeMap::new();
    let mut assignment: BTreeMap<String, String> = BTreeMap::new();
    for f in builtin_factories()
        .into_iter()
        .chain(ctx.plugins.all::<AgentFactory>().iter().cloned())
    {
        for role in &f.roles {
            assignment.insert(role.clone(), f.name.clone());
        }
        factories.insert(f.name.clone(), f);
    }
    let tools = ToolRegistry::build(config, ctx.plugins.all::<ToolFactory>())?;
    let mut files = Vec::new();
    if !config.dir.as_os_str().is_empty() {
        let runbooks: Vec<String> = factories.keys().cloned().collect();
        files = spec::load_dir(&config.dir, &tools.names(), &runbooks)?;
        let policy = if config.tool_policy.as_os_str().is_empty() {
            ToolPolicy::builtin()
        } else {
            ToolPolicy::load(&config.tool_policy)
        }
        .map_err(|reason| Error::Tool {
            tool: "policy".into(),
            reason,
        })?;
        let shared = Shared {
            tools: tools.clone(),
            policy,
            bus: Some(ctx.bus.clone()),
            work_dir: config.effective_work_dir(),
            tool_output_limit: config.tool_output_limit,
            max_output_tokens: config.max_output_tokens,
            progress: crate::progress::ProgressPublisher::new(&ctx.bus),
            tool_approval_timeout: config.tool_approval_timeout,
            daily_budget: config.daily_budget.clone(),
        };
        let providers: Vec<ModelProvider> = ctx.plugins.all::<ModelProvider>().to_vec();
        let llm = ctx.plugins.all::<ProviderRegistry>().last().cloned();
        for file in &files {
            match &file.engine {
                Engine::Runbook(name) => {
                    assignment.insert(file.role.clone(), name.clone());
                }
                Engine::Model(model) => {
                    let name = file_factory_name(&file.role);
                    let role = file.role.clone();
                    let (file, model, providers, shared, llm) = (
                        file.clone(),
                        model.clone(),
                        providers.clone(),
                        shared.clone(),
                        llm.clone(),
                    );
                    let factory = AgentFactory::new(&name, &[role.as_str()], move |_| {
                        let agent = LlmAgent::new(
                            &file,
                            model.clone(),
                            &providers,
                            llm.as_ref(),
                            shared.clone(),
                        );
                        Ok(Arc::new(agent) as Arc<dyn Agent>)
                    });
                    assignment.insert(factory.roles[0].clone(), name.clone());
                    factories.insert(name, factory);
                }
            }
        }
    }
    for (role, name) in &config.assign {
        assignment.insert(role.clone(), name.clone());
    }
    for role in &config.noop_roles {
        assignment.insert(role.clone(), NOOP_FACTORY.to_string());
    }
    let setup = AgentSetup { config, ctx };
    let mut built: BTreeMap<String, Arc<dyn Agent>> = BTreeMap::new();
    let mut agents = BTreeMap::new();
    for (role, name) in assignment {
        let agent = match built.get(&name) {
            Some(a) => a.clone(),
            None => {
                let factory = factories.get(&name).ok_or_else(|| {
                    Error::Config(format!(
                        "agents.assign gives role {role:?} to agent {name:?}, which is not registered; registered: {}",
                        factories.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?;
                let agent = (factory.build)(&setup).map_err(|reason| Error::Agent {
                    agent: name.clone(),
                    reason,
                })?;
                built.insert(name.clone(), agent.clone());
                agent
            }
        };
        agents.insert(role, agent);
    }
    Ok(Assembly {
        agents,
        tools,
        files,
    })
}
