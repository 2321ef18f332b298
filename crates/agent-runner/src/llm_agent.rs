//! [`LlmAgent`]: an agent declared in a file ([`crate::spec`]) that plans with a language model
//! and tools.
//!
//! # The loop
//!
//! 1. The system prompt is the file's template with the task's placeholders filled, followed by
//!    the loop's rules; the user message gives the request (the trigger's words) and the task's
//!    context (type, environment, target, parameters).
//! 2. The model is offered the file's tools plus `final_answer`, whose arguments are the
//!    agent's output schema. With `tool_choice = "required"` (the default) every turn must be a
//!    tool call (`tool_choice: required` on the wire: small local models such as
//!    Qwen2.5-Coder-0.5B follow a forced choice reliably and `auto` poorly); with `auto` a text
//!    answer is read as the final answer's JSON. With `schema` no tools go on the wire: the
//!    system prompt lists them (name, description, a sketch of the arguments) and
//!    `response_format` json_schema constrains each turn to one call `{"name", "arguments"}`
//!    (on llama.cpp the schema's grammar ends the turn after that one call; a forced tool
//!    choice there lets the 0.5B model write call after call until `max_tokens`).
//! 3. Each tool call is checked, in order: the tool exists and is offered to this agent; the
//!    arguments match the tool's schema; the call is not a repeat (same tool, same arguments)
//!    of an earlier one; the tool policy ([`crate::tool_policy`]) allows it. A refused call goes
//!    back to the model as a tool error with the reason, and counts as a step. A call the
//!    policy sends to a human pauses the loop durably until an approver decides it
//!    ([`crate::tool_approval`]): approved, exactly that call runs; denied or timed out, the
//!    model reads the denial.
//! 4. `final_answer`'s arguments are checked against the output schema; a mismatch goes back to
//!    the model once with the error (one repair), a second mismatch fails the task naming both.
//!    For output `code` the answer's code and tests then run in the sandbox (`run_code`, policy
//!    checked like any call, offered to the model or not); failing tests go back to the model,
//!    which tries again within the budget.
//!
//! # Budgets and failures
//!
//! Steps (model and tool calls together), tokens (input + output), money (the model
//! providers' cost estimates) and wall time, from the agent file. A budget that runs out fails
//! the task at once ([`AgentError::Permanent`]) with a reason naming the budget and its limit. A
//! third identical tool call trips the loop breaker (also permanent). A model call that fails
//! retryably (timeout, 429, 5xx, unreachable) is [`AgentError::Transient`]: the message is
//! redelivered and the loop resumes from the journal. Before each model call it makes (not
//! one replayed), the tenant's daily budget ([`crate::tenant_budget`]) is checked; a tenant
//! over it fails the task naming the budget and the tenant.
//!
//! # Exactly once
//!
//! Every model call and tool call outcome is journaled ([`crate::journal`]) before the loop
//! goes on, and read back on a redelivery instead of calling again. Tools with side effects get
//! the idempotency key `<task_id>:tool:<step>`.
//!
//! # Output
//!
//! - `report`: a plan without phases whose artifact `report` (application/json) holds the
//!   answer, findings and recommendations; the summary is the answer's start.
//! - `plan`: phases of steps with `http` or `noop` actions (idempotency keys
//!   `<task_id>:<phase>:<asset>:apply`).
//! - `code`: artifacts `solution.py` and `test_solution.py` (text/x-python) carrying the sandbox
//!   run that tested them, and `sandbox-report` (application/json).
//!
//! Tool output above `agents.tool_output_limit` bytes reaches the model cut, with a note; the
//! whole output is kept as the artifact `tool-output-<step>` (text/plain).

use crate::journal::{Entry, Journal};
use crate::progress::{Progress, ProgressPublisher};
use crate::spec::{AgentSpec, ModelSpec, OutputKind, ToolMode};
use crate::tenant_budget::TenantBudgets;
use crate::tool_approval::{self, Gate};
use crate::tool_policy::{CallInput, ToolPolicy, Verdict};
use crate::tools::{ToolContext, ToolOutput, ToolRegistry};
use crate::{Agent, AgentError, schema};
use baton_llm::chain::GuardedProvider;
use baton_llm::{
    ChatModel, ChatRequest, ChatResponse, FailoverChain, Message, ProviderLimits, ProviderRegistry,
    ResponseSchema, Role, ToolCallRequest, ToolChoice, ToolDefinition,
};
use baton_proto::redact::{self, Redact};
use baton_proto::{
    Action, AgentKind, AgentRun, Artifact, Asset, HttpAction, NoopAction, Phase, PhaseKind, Plan,
    SandboxRun, Step, Task, TaskSpec, ToolCall, action,
};
use baton_runtime::tool_approvals::ToolApprovals;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// The name an agent file of `role` is registered under: `<role>-llm@1`.
pub fn agent_name(role: &str) -> String {
    format!("{role}-llm@1")
}

/// Name of the tool the model calls with its final answer.
pub const FINAL_ANSWER: &str = "final_answer";

/// A model provider registered under a name that agent files list in `models`: the agent
/// runner's plug-in type for models (until the `[llm]` configuration names them).
#[derive(Clone)]
pub struct ModelProvider {
    /// The name agent files use (`local`, `openai`).
    pub name: String,
    /// The model (one provider, or a failover chain).
    pub model: Arc<dyn ChatModel>,
}

impl ModelProvider {
    /// A provider named `name`.
    pub fn new(name: &str, model: Arc<dyn ChatModel>) -> ModelProvider {
        ModelProvider {
            name: name.to_string(),
            model,
        }
    }
}

impl std::fmt::Debug for ModelProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelProvider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What every LLM agent of a runner shares.
#[derive(Clone)]
pub struct Shared {
    /// The tools.
    pub tools: ToolRegistry,
    /// The tool policy.
    pub policy: ToolPolicy,
    /// The bus the journal lives on (`None`: no journal, e.g. in unit tests).
    pub bus: Option<baton_bus::Bus>,
    /// Parent of the tasks' work directories.
    pub work_dir: PathBuf,
    /// Bytes of one tool output the model sees.
    pub tool_output_limit: usize,
    /// Cap on output tokens of one model call.
    pub max_output_tokens: u32,
    /// Where each model and tool call is announced as it happens (`baton watch`).
    pub progress: ProgressPublisher,
    /// How long a tool call waits for a human before it is denied (`agents.tool_approval_timeout`).
    pub tool_approval_timeout: Duration,
    /// The tenants' daily budgets (`agents.daily_budget`); counted only with a bus.
    pub daily_budget: crate::tenant_budget::Config,
}

/// An agent from a file, planning with a model and tools.
pub struct LlmAgent {
    name: String,
    role: String,
    description: String,
    spec: ModelSpec,
    /// The model, or why there is none (each task then fails with this reason).
    model: Result<Arc<dyn ChatModel>, String>,
    shared: Shared,
    journal: OnceCell<Option<Journal>>,
    approvals: OnceCell<Option<ToolApprovals>>,
    budgets: OnceCell<Option<TenantBudgets>>,
}

impl LlmAgent {
    /// The agent of `file` (which must be a model agent). Each of its `models` is looked up
    /// first among the [`ModelProvider`] plug-ins, then in `registry` (the `[llm]` providers);
    /// the ones found serve in the file's order as a [`FailoverChain`] (a single plug-in model
    /// serves directly). `[llm]` providers keep their configured retries, limits and circuit,
    /// shared with every other agent. Names found nowhere are skipped; when none is left, every
    /// task of the agent fails with a reason listing the configured providers.
    pub fn new(
        file: &AgentSpec,
        spec: ModelSpec,
        providers: &[ModelProvider],
        registry: Option<&ProviderRegistry>,
        shared: Shared,
    ) -> LlmAgent {
        enum Found {
            Plugin(String, Arc<dyn ChatModel>),
            Guarded(Arc<GuardedProvider>),
        }
        let found: Vec<Found> = spec
            .models
            .iter()
            .filter_map(|m| {
                if let Some(p) = providers.iter().rev().find(|p| &p.name == m) {
                    return Some(Found::Plugin(p.name.clone(), p.model.clone()));
                }
                registry.and_then(|r| r.get(m)).cloned().map(Found::Guarded)
            })
            .collect();
        let model: Result<Arc<dyn ChatModel>, String> = match found.as_slice() {
            [] => {
                let mut configured: Vec<String> =
                    providers.iter().map(|p| p.name.clone()).collect();
                if let Some(r) = registry {
                    configured.extend(r.names().into_iter().map(String::from));
                }
                Err(format!(
                    "agent {} ({}) lists models {:?}, but no model provider of those names is configured ([llm.providers.<name>]); configured: {}",
                    file.role,
                    file.file.display(),
                    spec.models,
                    if configured.is_empty() {
                        "none".to_string()
                    } else {
                        configured.join(", ")
                    }
                ))
            }
            [Found::Plugin(_, model)] => Ok(model.clone()),
            several => {
                let mut chain = FailoverChain::new();
                for f in several {
                    match f {
                        Found::Plugin(name, model) => {
                            chain.push(name.clone(), model.clone(), ProviderLimits::default())
                        }
                        Found::Guarded(g) => chain.push_shared(g.clone()),
                    }
                }
                Ok(Arc::new(chain))
            }
        };
        LlmAgent {
            name: agent_name(&file.role),
            role: file.role.clone(),
            description: file.description.clone(),
            spec,
            model,
            shared,
            journal: OnceCell::new(),
            approvals: OnceCell::new(),
            budgets: OnceCell::new(),
        }
    }

    /// The store of tool calls waiting for a human (`None` without a bus).
    async fn approvals(&self) -> Result<Option<&ToolApprovals>, AgentError> {
        let a = self
            .approvals
            .get_or_try_init(|| async {
                match &self.shared.bus {
                    None => Ok(None),
                    Some(bus) => ToolApprovals::open(bus).await.map(Some).map_err(|e| {
                        AgentError::transient(format!("cannot open the tool approvals: {e}"))
                    }),
                }
            })
            .await?;
        Ok(a.as_ref())
    }

    /// The tenants' daily budgets (`None` without a bus or without any limit).
    async fn budgets(&self) -> Result<Option<&TenantBudgets>, AgentError> {
        let b = self
            .budgets
            .get_or_try_init(|| async {
                match &self.shared.bus {
                    Some(bus) if !self.shared.daily_budget.is_unlimited() => {
                        TenantBudgets::open(bus, self.shared.daily_budget.clone())
                            .await
                            .map(Some)
                            .map_err(|e| {
                                AgentError::transient(format!(
                                    "cannot open the tenants' daily usage: {e}"
                                ))
                            })
                    }
                    _ => Ok(None),
                }
            })
            .await?;
        Ok(b.as_ref())
    }

    async fn journal(&self) -> Result<Option<&Journal>, AgentError> {
        let j = self
            .journal
            .get_or_try_init(|| async {
                match &self.shared.bus {
                    None => Ok(None),
                    Some(bus) => Journal::open(bus).await.map(Some).map_err(|e| {
                        AgentError::transient(format!("cannot open the agent journal: {e}"))
                    }),
                }
            })
            .await?;
        Ok(j.as_ref())
    }

    fn tool_definitions(&self) -> Vec<ToolDefinition> {
        let mut defs: Vec<ToolDefinition> = self
            .spec
            .tools
            .iter()
            .filter_map(|n| self.shared.tools.get(n))
            .map(|t| {
                let i = t.info();
                ToolDefinition {
                    name: i.name.clone(),
                    description: i.description.clone(),
                    parameters: i.parameters.clone(),
                }
            })
            .collect();
        defs.push(ToolDefinition {
            name: FINAL_ANSWER.into(),
            description: format!(
                "Give your final {} (ends the task). The arguments are the answer itself.",
                self.spec.output.as_str()
            ),
            parameters: self.spec.output_schema.clone(),
        });
        defs
    }

    /// The schema of one turn in `schema` mode: exactly one call of one of `tools`.
    fn call_schema(tools: &[ToolDefinition]) -> ResponseSchema {
        let calls: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "required": ["name", "arguments"],
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "additionalProperties": false
                })
            })
            .collect();
        ResponseSchema {
            name: "tool_call".into(),
            schema: json!({ "anyOf": calls }),
        }
    }

    fn first_messages(&self, task: &Task, spec: &TaskSpec) -> Vec<Message> {
        let text = task.trigger.as_ref().map(|t| t.text.as_str()).unwrap_or("");
        let intent = if spec.intent.is_empty() {
            text
        } else {
            spec.intent.as_str()
        };
        let parameters: String = spec
            .parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        let values = [
            ("role", self.role.clone()),
            ("description", self.description.clone()),
            ("task_id", task.task_id.clone()),
            ("task_type", spec.task_type.clone()),
            ("environment", spec.environment.clone()),
            ("target", spec.target.clone()),
            ("intent", intent.to_string()),
            ("parameters", parameters.clone()),
            ("tools", self.spec.tools.join(", ")),
        ];
        let mut system = crate::spec::render(&self.spec.prompt, &values);
        if self.spec.tool_choice == ToolMode::Schema {
            // The tools are not on the wire: the prompt lists them, one short line each.
            system.push_str("\n\nEach turn, answer with one JSON object {\"name\": <tool>, \"arguments\": {...}} that calls one of these tools:");
            for t in self.tool_definitions() {
                system.push_str(&format!(
                    "\n- {}: {} Arguments: {}",
                    t.name,
                    t.description,
                    sketch(&t.parameters)
                ));
            }
        }
        system.push_str(&format!(
            "\n\nWork step by step: call one tool per turn and read its result. When you know the answer, call {FINAL_ANSWER} with it (its arguments must match its schema). Do not repeat a call with the same arguments."
        ));
        let mut user = format!("Request: {intent}\n");
        for (k, v) in [
            ("Task type", &spec.task_type),
            ("Environment", &spec.environment),
            ("Target", &spec.target),
        ] {
            if !v.is_empty() {
                user.push_str(&format!("{k}: {v}\n"));
            }
        }
        if !parameters.is_empty() {
            user.push_str(&format!("Parameters:\n{parameters}"));
        }
        vec![
            Message::text(Role::System, system),
            Message::text(Role::User, user),
        ]
    }

    /// Runs the loop for `task`.
    async fn run(&self, task: &Task, spec: &TaskSpec) -> Result<Plan, AgentError> {
        let model = self
            .model
            .as_ref()
            .map_err(|r| AgentError::permanent(r.clone()))?;
        let journal = self.journal().await?;
        let mut lp = Loop {
            agent: self,
            task,
            spec,
            journal,
            started: Instant::now(),
            step: 0,
            tokens: 0,
            cost_micros: 0,
            run: AgentRun::default(),
            artifacts: Vec::new(),
            seen: HashMap::new(),
            schema_errors: Vec::new(),
            last_output: None,
            last_response: None,
            messages: self.first_messages(task, spec),
            progress: self.shared.progress.start(task, &self.name),
            testing_code: false,
        };
        let tools = self.tool_definitions();
        let call_schema = Self::call_schema(&tools);
        loop {
            lp.check_budget()?;
            lp.step += 1;
            let schema_mode = self.spec.tool_choice == ToolMode::Schema;
            let request = ChatRequest {
                messages: lp.messages.clone(),
                tools: if schema_mode {
                    Vec::new()
                } else {
                    tools.clone()
                },
                tool_choice: match self.spec.tool_choice {
                    ToolMode::Required => ToolChoice::Required,
                    ToolMode::Auto => ToolChoice::Auto,
                    ToolMode::Schema => ToolChoice::None,
                },
                response_schema: schema_mode.then(|| call_schema.clone()),
                max_tokens: Some(self.shared.max_output_tokens),
                temperature: Some(0.0),
            };
            let response = lp.model_call(model.as_ref(), &request).await?;
            let mut message = response.message.clone();
            if message.tool_calls.is_empty()
                && let Some(call) = bare_tool_call(&message.content, lp.step)
            {
                // A server quirk (llama.cpp with Qwen): the call as bare JSON in the content.
                message.tool_calls.push(call);
                message.content.clear();
            }
            lp.messages.push(message.clone());
            if message.tool_calls.is_empty() {
                if self.spec.tool_choice == ToolMode::Auto
                    && let Ok(answer) = serde_json::from_str::<Value>(message.content.trim())
                {
                    match lp.finish(answer, None).await? {
                        Some(plan) => return Ok(plan),
                        None => continue,
                    }
                }
                lp.messages.push(Message::text(
                    Role::User,
                    format!("Answer by calling a tool, or {FINAL_ANSWER} with your answer."),
                ));
                continue;
            }
            for call in &message.tool_calls {
                if call.name == FINAL_ANSWER {
                    match lp.finish(call.arguments.clone(), Some(&call.id)).await? {
                        Some(plan) => return Ok(plan),
                        None => break,
                    }
                }
                let text = lp.tool_call(call).await?;
                lp.messages
                    .push(Message::tool_result(call.id.clone(), text));
            }
        }
    }
}

impl Agent for LlmAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Llm
    }

    fn plan<'a>(
        &'a self,
        task: &'a Task,
        spec: &'a TaskSpec,
    ) -> BoxFuture<'a, Result<Plan, AgentError>> {
        Box::pin(self.run(task, spec))
    }
}

/// The shape of a JSON schema as a model copies it best: an example-like sketch such as
/// `{"method": "GET"|"POST", "url": "...", "body"?: "..."}` (`?`: optional) rather than the
/// schema itself, which the 0.5B model tends to echo back as the arguments.
fn sketch(schema: &Value) -> String {
    if let Some(Value::Array(options)) = schema.get("enum") {
        let options: Vec<String> = options.iter().map(Value::to_string).collect();
        return options.join("|");
    }
    if let Some(c) = schema.get("const") {
        return c.to_string();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => format!(
            "[{}, ...]",
            sketch(schema.get("items").unwrap_or(&Value::Null))
        ),
        Some("string") => "\"...\"".into(),
        Some("number") | Some("integer") => "0".into(),
        Some("boolean") => "true".into(),
        _ => match (schema.get("properties"), schema.get("additionalProperties")) {
            (Some(Value::Object(props)), _) => {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let fields: Vec<String> = props
                    .iter()
                    .map(|(k, v)| {
                        let optional = if required.contains(&k.as_str()) {
                            ""
                        } else {
                            "?"
                        };
                        format!("{}{optional}: {}", Value::from(k.as_str()), sketch(v))
                    })
                    .collect();
                format!("{{{}}}", fields.join(", "))
            }
            (_, Some(v @ Value::Object(_))) => format!("{{\"<name>\": {}}}", sketch(v)),
            _ => "...".into(),
        },
    }
}

/// A tool call sent as bare JSON `{"name": …, "arguments": …}` in the content, if it is one
/// (the first JSON value of the content: a model may go on writing after it).
fn bare_tool_call(content: &str, step: u32) -> Option<ToolCallRequest> {
    let v: Value = serde_json::Deserializer::from_str(content.trim())
        .into_iter::<Value>()
        .next()?
        .ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments")? {
        Value::String(s) => serde_json::from_str(s).ok()?,
        other => other.clone(),
    };
    Some(ToolCallRequest {
        id: format!("call-{step}"),
        name,
        arguments,
    })
}

/// Canonical text of a call (sorted keys, the canonical JSON an approval is bound to), for the
/// loop breaker.
fn call_key(name: &str, args: &Value) -> String {
    format!(
        "{name} {}",
        baton_runtime::tool_approvals::canonical_json(args)
    )
}

/// The state of one task's loop.
struct Loop<'a> {
    agent: &'a LlmAgent,
    task: &'a Task,
    spec: &'a TaskSpec,
    journal: Option<&'a Journal>,
    started: Instant,
    /// Model and tool calls so far (the journal's step numbers).
    step: u32,
    tokens: u64,
    cost_micros: u64,
    run: AgentRun,
    artifacts: Vec<Artifact>,
    /// Call key → times asked.
    seen: HashMap<String, u32>,
    /// Schema errors of final answers so far.
    schema_errors: Vec<String>,
    /// The output of the last tool call (for the codegen workflow's sandbox run).
    last_output: Option<ToolOutput>,
    /// The last model answer (its record is marked invalid when its final answer is).
    last_response: Option<ChatResponse>,
    /// Announces each call as it happens.
    progress: Progress,
    /// The loop itself is running a code answer's tests (`run_code` needs no offer then).
    testing_code: bool,
    messages: Vec<Message>,
}

impl Loop<'_> {
    fn budget(&self) -> &crate::spec::Budget {
        &self.agent.spec.budget
    }

    /// Fails when a budget is used up (checked before every step).
    fn check_budget(&self) -> Result<(), AgentError> {
        let b = self.budget();
        let fail = |what: String| {
            Err(AgentError::permanent(format!(
                "agent {} ran out of its {what} before a final answer",
                self.agent.name
            )))
        };
        if self.step >= b.steps {
            return fail(format!("step budget ({} model and tool calls)", b.steps));
        }
        if self.tokens >= b.tokens {
            return fail(format!(
                "token budget ({} tokens; used {})",
                b.tokens, self.tokens
            ));
        }
        let max_cost = b.max_cost_micros();
        if max_cost > 0 && self.cost_micros >= max_cost {
            return fail(format!(
                "money budget (${:.4}; used ${:.4})",
                b.max_cost_usd,
                self.cost_micros as f64 / 1e6
            ));
        }
        if self.started.elapsed() >= b.wall_time {
            return fail(format!(
                "wall-time budget ({})",
                format_args!("{:?}", b.wall_time)
            ));
        }
        Ok(())
    }

    fn remaining_time(&self) -> Duration {
        self.budget()
            .wall_time
            .saturating_sub(self.started.elapsed())
    }

    async fn replay(&self) -> Result<Option<Entry>, AgentError> {
        match self.journal {
            None => Ok(None),
            Some(j) => j
                .get(&self.task.task_id, self.step)
                .await
                .map_err(|e| AgentError::transient(format!("cannot read the agent journal: {e}"))),
        }
    }

    async fn record(&self, entry: Entry) -> Result<Entry, AgentError> {
        match self.journal {
            None => Ok(entry),
            Some(j) => j
                .record(&self.task.task_id, self.step, entry)
                .await
                .map_err(|e| AgentError::transient(format!("cannot write the agent journal: {e}"))),
        }
    }

    /// One model call (or its journaled answer).
    async fn model_call(
        &mut self,
        model: &dyn ChatModel,
        request: &ChatRequest,
    ) -> Result<ChatResponse, AgentError> {
        let response = match self.replay().await? {
            Some(Entry::Model { response }) => response,
            Some(Entry::Tool { .. }) => {
                return Err(AgentError::permanent(format!(
                    "the agent journal of task {} has a tool call at step {} where the loop makes a model call; the agent file changed since the first run",
                    self.task.task_id, self.step
                )));
            }
            None => {
                let budgets = self.agent.budgets().await?;
                if let Some(b) = budgets {
                    b.check(&self.task.tenant)
                        .await
                        .map_err(|e| {
                            AgentError::transient(format!("cannot read the tenant's usage: {e}"))
                        })?
                        .map_err(AgentError::permanent)?;
                }
                let answer = tokio::time::timeout(self.remaining_time(), model.chat(request)).await;
                let response = match answer {
                    Err(_) => {
                        return Err(AgentError::permanent(format!(
                            "agent {} ran out of its wall-time budget ({}) waiting for the model",
                            self.agent.name,
                            format_args!("{:?}", self.budget().wall_time)
                        )));
                    }
                    Ok(Err(e)) if e.is_retryable() => {
                        return Err(AgentError::transient(format!("model call failed: {e}")));
                    }
                    Ok(Err(e)) => {
                        return Err(AgentError::permanent(format!("model call failed: {e}")));
                    }
                    Ok(Ok(r)) => r,
                };
                if let Some(b) = budgets {
                    let tokens = u64::from(response.usage.input_tokens)
                        + u64::from(response.usage.output_tokens);
                    if let Err(e) = b.add(&self.task.tenant, tokens, response.cost_micros).await {
                        tracing::warn!(task_id = %self.task.task_id, tenant = %self.task.tenant, error = %e, "model call not counted in the tenant's daily usage");
                    }
                }
                match self.record(Entry::Model { response }).await? {
                    Entry::Model { response } => response,
                    Entry::Tool { .. } => {
                        return Err(AgentError::permanent(
                            "the agent journal holds a tool call where a model call was written"
                                .to_string(),
                        ));
                    }
                }
            }
        };
        self.tokens +=
            u64::from(response.usage.input_tokens) + u64::from(response.usage.output_tokens);
        self.cost_micros += response.cost_micros;
        let record = baton_llm::accounting::model_call(&response, false);
        tracing::debug!(
            task_id = %self.task.task_id,
            step = self.step,
            provider = %record.provider,
            input_tokens = record.input_tokens,
            output_tokens = record.output_tokens,
            latency_ms = record.latency_ms,
            tool_calls = response.message.tool_calls.len(),
            "model call"
        );
        self.progress.model_call(&record).await;
        self.run.model_calls.push(record);
        self.last_response = Some(response.clone());
        Ok(response)
    }

    /// Checks and runs one tool call (or takes its journaled outcome); returns what the model
    /// reads.
    async fn tool_call(&mut self, call: &ToolCallRequest) -> Result<String, AgentError> {
        self.check_budget()?;
        self.step += 1;
        let key = call_key(&call.name, &call.arguments);
        let times = {
            let n = self.seen.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        if times >= 3 {
            return Err(AgentError::permanent(format!(
                "loop breaker: the model asked for {} with the same arguments {times} times; agent {} stopped",
                call.name, self.agent.name
            )));
        }
        let (decision, output, latency_ms) = match self.replay().await? {
            Some(Entry::Tool {
                tool,
                output,
                latency_ms,
                decision,
            }) if tool == call.name => (decision, output, latency_ms),
            Some(_) => {
                return Err(AgentError::permanent(format!(
                    "the agent journal of task {} does not match step {} (a {} call); the agent file changed since the first run",
                    self.task.task_id, self.step, call.name
                )));
            }
            None => {
                let started = Instant::now();
                let (decision, output) = if times > 1 {
                    (
                        "denied".to_string(),
                        Err(format!(
                            "repeated call: {} was already called with these arguments; use its result above, or call {FINAL_ANSWER}",
                            call.name
                        )),
                    )
                } else {
                    self.check_and_run(&call.name, &call.arguments).await?
                };
                let entry = Entry::Tool {
                    tool: call.name.clone(),
                    output,
                    latency_ms: started.elapsed().as_millis() as u64,
                    decision,
                };
                match self.record(entry).await? {
                    Entry::Tool {
                        output,
                        latency_ms,
                        decision,
                        ..
                    } => (decision, output, latency_ms),
                    Entry::Model { .. } => {
                        return Err(AgentError::permanent(
                            "the agent journal holds a model call where a tool call was written"
                                .to_string(),
                        ));
                    }
                }
            }
        };
        let shown = self.note_tool_call(call, decision, output, latency_ms);
        let record = self.run.tool_calls.last().cloned().unwrap_or_default();
        tracing::debug!(
            task_id = %self.task.task_id,
            step = self.step,
            tool = %record.tool,
            decision = %record.decision,
            ok = record.ok,
            "tool call"
        );
        match record.decision.as_str() {
            "allowed" | "approved" => self.progress.tool_call(&record).await,
            "require_approval" => {
                self.progress
                    .tool_awaiting_approval(&record, &record.reason)
                    .await
            }
            _ => self.progress.tool_denied(&record, &record.reason).await,
        }
        Ok(shown)
    }

    /// Existence, offer, schema and policy checks (and a human's decision when the policy asks
    /// for one), then the call. `Err` only when the call waits for a human
    /// ([`AgentError::AwaitingApproval`]) or the approvals cannot be reached.
    async fn check_and_run(
        &self,
        name: &str,
        args: &Value,
    ) -> Result<(String, Result<ToolOutput, String>), AgentError> {
        let agent = self.agent;
        let denied = |reason: String| Ok(("denied".to_string(), Err(reason)));
        let Some(tool) = agent.shared.tools.get(name) else {
            return denied(format!(
                "unknown tool {name:?}; your tools: {}, {FINAL_ANSWER}",
                agent.spec.tools.join(", ")
            ));
        };
        // The loop's own test run of a code answer is part of the codegen workflow: it needs
        // no offer of run_code to the model (the policy still decides it).
        let own_test = self.testing_code && name == "run_code";
        if !own_test && !agent.spec.tools.iter().any(|t| t == name) {
            return denied(format!(
                "tool {name:?} is not offered to the {} agent; your tools: {}",
                agent.role,
                agent.spec.tools.join(", ")
            ));
        }
        let info = tool.info();
        if let Err(e) = schema::check(&info.parameters, args) {
            return denied(format!("invalid arguments for {name}: {e}"));
        }
        let verdict = agent.shared.policy.evaluate(&CallInput {
            tool: name,
            side_effects: info.side_effects,
            arguments: args,
            role: &agent.role,
            environment: &self.spec.environment,
            task_type: &self.spec.task_type,
            tenant: &self.task.tenant,
        });
        let decision = match verdict {
            Verdict::Allow => "allowed",
            Verdict::Deny(reason) => return denied(format!("denied by the tool policy: {reason}")),
            Verdict::RequireApproval(reason) => {
                let (Some(store), Some(bus)) = (agent.approvals().await?, &agent.shared.bus) else {
                    return Ok((
                        "require_approval".to_string(),
                        Err(format!(
                            "this call needs a human's approval ({reason}); approvals need the bus, so it was not made"
                        )),
                    ));
                };
                let call = tool_approval::Call {
                    task: self.task,
                    spec: self.spec,
                    role: &agent.role,
                    agent: &agent.name,
                    step: self.step,
                    tool: name,
                    arguments: args,
                    reason: &reason,
                };
                match tool_approval::gate(store, bus, &call, agent.shared.tool_approval_timeout)
                    .await
                {
                    Ok(Gate::Run { approver }) => {
                        tracing::info!(task_id = %self.task.task_id, step = self.step, tool = name, %approver, "approved tool call runs");
                        "approved"
                    }
                    Ok(Gate::Deny(why)) => return Ok(("rejected".to_string(), Err(why))),
                    Err(e) => {
                        if matches!(e, AgentError::AwaitingApproval(_)) {
                            let mut record = ToolCall {
                                tool: name.to_string(),
                                arguments: args.to_string(),
                                decision: "require_approval".into(),
                                reason: reason.clone(),
                                step: self.step,
                                ..Default::default()
                            };
                            record.redact();
                            self.progress
                                .tool_awaiting_approval(&record, &record.reason)
                                .await;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let cx = ToolContext {
            task_id: self.task.task_id.clone(),
            role: agent.role.clone(),
            environment: self.spec.environment.clone(),
            work_dir: agent
                .shared
                .work_dir
                .join(crate::journal::safe_id(&self.task.task_id)),
            idempotency_key: format!("{}:tool:{}", self.task.task_id, self.step),
        };
        let out = match tokio::time::timeout(self.remaining_time(), tool.call(&cx, args)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{name} did not finish within the agent's wall-time budget"
            )),
        };
        Ok((decision.to_string(), out))
    }

    /// Records a tool call in `agent_run` (redacted) and returns the text the model reads.
    fn note_tool_call(
        &mut self,
        call: &ToolCallRequest,
        decision: String,
        output: Result<ToolOutput, String>,
        latency_ms: u64,
    ) -> String {
        let limit = self.agent.shared.tool_output_limit;
        self.last_output = output.as_ref().ok().cloned();
        let (ok, reason, full) = match &output {
            Ok(o) => (true, String::new(), o.content.clone()),
            Err(e) => (false, e.clone(), format!("error: {e}")),
        };
        let (shown, truncated) = if full.len() > limit {
            let mut cut = limit;
            while !full.is_char_boundary(cut) {
                cut -= 1;
            }
            let name = format!("tool-output-{}", self.step);
            self.artifacts.push(Artifact {
                name: name.clone(),
                media_type: "text/plain".into(),
                content: full.clone().into_bytes(),
                sandbox_run: None,
            });
            (
                format!(
                    "{}\n[output truncated: {cut} of {} bytes shown; the whole output is kept as artifact {name}]",
                    &full[..cut],
                    full.len()
                ),
                true,
            )
        } else {
            (full.clone(), false)
        };
        let mut record = ToolCall {
            tool: call.name.clone(),
            arguments: call.arguments.to_string(),
            result: shown.clone(),
            ok,
            latency_ms,
            decision,
            reason,
            truncated,
            step: self.step,
        };
        record.redact();
        self.run.tool_calls.push(record);
        shown
    }

    /// Handles a final answer: `Some(plan)` when accepted, `None` when the model must try again
    /// (the reason is in the conversation), `Err` when the task fails.
    async fn finish(
        &mut self,
        answer: Value,
        call_id: Option<&str>,
    ) -> Result<Option<Plan>, AgentError> {
        let spec = &self.agent.spec;
        let checked = schema::check(&spec.output_schema, &answer).and_then(|()| {
            if spec.output == OutputKind::Plan {
                plan_phases(&self.task.task_id, &answer).map(|_| ())
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            self.schema_errors.push(e.clone());
            if let (Some(resp), Some(last)) = (&self.last_response, self.run.model_calls.last_mut())
            {
                *last = baton_llm::accounting::invalid_model_call(resp, false, &e);
            }
            if self.schema_errors.len() >= 2 {
                return Err(AgentError::permanent(format!(
                    "agent {}'s final answer did not match its schema twice: first {}; then {}",
                    self.agent.name, self.schema_errors[0], self.schema_errors[1]
                )));
            }
            self.reply(
                call_id,
                format!("error: your answer does not match the schema: {e}. Call {FINAL_ANSWER} again with a corrected answer."),
            );
            return Ok(None);
        }
        let mut plan = Plan {
            task_id: self.task.task_id.clone(),
            ..Default::default()
        };
        match spec.output {
            OutputKind::Report => {
                let text = answer.get("answer").and_then(Value::as_str).unwrap_or("");
                plan.summary = summary(text);
                let mut report = answer.clone();
                redact::json(&mut report);
                plan.artifacts.push(Artifact {
                    name: "report".into(),
                    media_type: "application/json".into(),
                    content: serde_json::to_vec_pretty(&report).unwrap_or_default(),
                    sandbox_run: None,
                });
            }
            OutputKind::Plan => {
                let (phases, total) =
                    plan_phases(&self.task.task_id, &answer).map_err(AgentError::permanent)?;
                plan.summary = summary(answer.get("summary").and_then(Value::as_str).unwrap_or(""));
                plan.phases = phases;
                plan.total_assets = total;
            }
            OutputKind::Code => {
                let code = answer.get("code").and_then(Value::as_str).unwrap_or("");
                let tests = answer.get("tests").and_then(Value::as_str).unwrap_or("");
                let run_args = json!({
                    "language": "python",
                    "files": {"solution.py": code, "test_solution.py": tests},
                    "command": ["python3", "test_solution.py"],
                });
                self.reply(
                    call_id,
                    "Running your code and tests in the sandbox.".into(),
                );
                let call = ToolCallRequest {
                    id: format!("sandbox-{}", self.step + 1),
                    name: "run_code".into(),
                    arguments: run_args,
                };
                let before = self.run.tool_calls.len();
                self.testing_code = true;
                let text = self.tool_call(&call).await;
                self.testing_code = false;
                let text = text?;
                let record = &self.run.tool_calls[before];
                if !record.ok {
                    // The sandbox is missing or the policy refused: no retry can help.
                    return Err(AgentError::permanent(format!(
                        "agent {} cannot test its code: {}",
                        self.agent.name, record.reason
                    )));
                }
                let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if parsed.get("passed") != Some(&Value::Bool(true)) {
                    self.messages.push(Message::text(
                        Role::User,
                        format!("The tests failed in the sandbox: {text}\nFix the code or the tests and call {FINAL_ANSWER} again."),
                    ));
                    return Ok(None);
                }
                let run = self.last_sandbox_run();
                plan.summary = summary(
                    answer
                        .get("explanation")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .unwrap_or("generated code whose tests passed in the sandbox"),
                );
                for (name, body) in [("solution.py", code), ("test_solution.py", tests)] {
                    plan.artifacts.push(Artifact {
                        name: name.into(),
                        media_type: "text/x-python".into(),
                        content: body.as_bytes().to_vec(),
                        sandbox_run: run.clone(),
                    });
                }
                let ran = run.clone().unwrap_or_default();
                // What the task delivers: a report naming the code, with the code artifacts.
                let report = baton_proto::report::Report {
                    answer: plan.summary.clone(),
                    findings: vec![json!(format!(
                        "solution.py and test_solution.py ran in the sandbox ({}): exit code {} in {} ms",
                        ran.image, ran.exit_code, ran.duration_ms
                    ))],
                    recommendations: vec![json!(
                        "read solution.py (artifact) before using it; its tests are in test_solution.py"
                    )],
                };
                plan.artifacts.push(report.to_artifact());
                plan.artifacts.push(Artifact {
                    name: "sandbox-report".into(),
                    media_type: "application/json".into(),
                    content: text.into_bytes(),
                    sandbox_run: run,
                });
            }
        }
        plan.artifacts.append(&mut self.artifacts);
        plan.agent_run = Some(std::mem::take(&mut self.run));
        Ok(Some(plan))
    }

    /// The sandbox run of the last tool call (a `run_code` call).
    fn last_sandbox_run(&self) -> Option<SandboxRun> {
        self.last_output.as_ref().and_then(ToolOutput::sandbox_run)
    }

    /// Answers the model's call `call_id` (or adds a user message when the answer was text).
    fn reply(&mut self, call_id: Option<&str>, text: String) {
        match call_id {
            Some(id) => self.messages.push(Message::tool_result(id, text)),
            None => self.messages.push(Message::text(Role::User, text)),
        }
    }
}

/// The first 300 characters of `text`.
fn summary(text: &str) -> String {
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// Phases of a `plan` answer (already checked against the plan schema) and the number of
/// distinct assets. Errors: an `http` action without a URL.
fn plan_phases(task_id: &str, answer: &Value) -> Result<(Vec<Phase>, u32), String> {
    let mut assets = std::collections::BTreeSet::new();
    let mut phases = Vec::new();
    let empty = Vec::new();
    for (i, p) in answer
        .get("phases")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut steps = Vec::new();
        for s in p.get("steps").and_then(Value::as_array).unwrap_or(&empty) {
            let asset = s.get("asset").and_then(Value::as_str).unwrap_or("");
            assets.insert(asset.to_string());
            let a = s.get("action").cloned().unwrap_or(Value::Null);
            let kind = match a.get("kind").and_then(Value::as_str) {
                Some("http") => {
                    let url = a.get("url").and_then(Value::as_str).unwrap_or("");
                    if url.is_empty() {
                        return Err(format!(
                            "/phases/{i}: the http action of asset {asset} has no url"
                        ));
                    }
                    action::Kind::Http(HttpAction {
                        method: a
                            .get("method")
                            .and_then(Value::as_str)
                            .unwrap_or("PUT")
                            .into(),
                        url: url.into(),
                        body: a
                            .get("body")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .as_bytes()
                            .to_vec(),
                        ..Default::default()
                    })
                }
                _ => action::Kind::Noop(NoopAction {}),
            };
            steps.push(Step {
                asset: Some(Asset {
                    id: asset.into(),
                    name: asset.into(),
                    ..Default::default()
                }),
                action: Some(Action {
                    idempotency_key: format!("{task_id}:{name}:{asset}:apply"),
                    description: s
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    kind: Some(kind),
                }),
                rollback: None,
                health_check: None,
                reason: s
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
            });
        }
        phases.push(Phase {
            kind: if i == 0 && name == "canary" {
                PhaseKind::Canary as i32
            } else {
                PhaseKind::Wave as i32
            },
            name,
            steps,
        });
    }
    Ok((phases, assets.len() as u32))
}
