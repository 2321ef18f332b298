//! Agents declared in files: one `agents/<role>.toml` per role, read at start.
//!
//! ```toml
//! role = "cost"                       # must equal the file's stem
//! description = "Explains cloud spend from billing data"
//! output = "report"                   # plan | report | code (code: the codegen workflow)
//! models = ["local"]                  # model providers by name, in failover order
//! tools = ["query_assets", "read_file"]
//! tool_choice = "required"            # required (default): every model turn must call a tool,
//!                                     # the answer itself is the `final_answer` tool;
//!                                     # auto: the model may answer in text;
//!                                     # schema: tools listed in the prompt, one call per
//!                                     # turn forced by a JSON schema (small local models)
//! prompt = """
//! You are Baton's {{role}} agent. Environment: {{environment}}. Tools: {{tools}}.
//! """
//! [budget]
//! steps = 12                          # model calls and tool calls together
//! tokens = 60000                      # input + output tokens over all model calls
//! wall_time = "5m"
//! max_cost_usd = 0.0                  # 0 = no money limit (prices come from the model config)
//!
//! [output_schema]                     # optional: the JSON schema of the final answer,
//! type = "object"                     # defaults to the output kind's schema
//! ```
//!
//! Instead of `models`, a file can name a `runbook` (the factory of deterministic code, e.g.
//! `runbook = "drift-runbook"`): the role is then served by that runbook and `prompt`, `tools`
//! and `budget` do not apply.
//!
//! Placeholders of the prompt template: `{{role}}`, `{{description}}`, `{{task_id}}`,
//! `{{task_type}}`, `{{environment}}`, `{{target}}`, `{{intent}}`, `{{parameters}}`
//! (`key=value` lines), `{{tools}}` (the tool names, comma-separated). An unknown placeholder
//! is a file error.
//!
//! Every error names the file, the line and what is wrong ([`FileError`]); the agent runner
//! refuses to start on one.

use crate::schema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The placeholders a prompt template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "role",
    "description",
    "task_id",
    "task_type",
    "environment",
    "target",
    "intent",
    "parameters",
    "tools",
];

/// What an agent's final answer becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A change plan: phases of steps with actions (the spine's shape).
    Plan,
    /// A report (answer, findings, recommendations) carried as the plan's `report` artifact.
    Report,
    /// Code and its tests, run in the sandbox before the answer is accepted; the plan carries
    /// the code, the tests and the sandbox report as artifacts (the codegen workflow).
    Code,
}

impl OutputKind {
    /// `plan`, `report` or `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Plan => "plan",
            OutputKind::Report => "report",
            OutputKind::Code => "code",
        }
    }

    /// The default JSON schema of a final answer of this kind.
    pub fn default_schema(self) -> Value {
        match self {
            OutputKind::Report => json!({
                "type": "object",
                "required": ["answer", "findings", "recommendations"],
                "properties": {
                    "answer": {"type": "string", "minLength": 1},
                    "findings": {"type": "array", "items": {"type": "string"}},
                    "recommendations": {"type": "array", "items": {"type": "string"}}
                }
            }),
            OutputKind::Plan => json!({
                "type": "object",
                "required": ["summary", "phases"],
                "properties": {
                    "summary": {"type": "string", "minLength": 1},
                    "phases": {"type": "array", "items": {
                        "type": "object",
                        "required": ["name", "steps"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "steps": {"type": "array", "minItems": 1, "items": {
                                "type": "object",
                                "required": ["asset", "description", "action"],
                                "properties": {
                                    "asset": {"type": "string", "minLength": 1},
                                    "description": {"type": "string"},
                                    "action": {
                                        "type": "object",
                                        "required": ["kind"],
                                        "properties": {
                                            "kind": {"enum": ["http", "noop"]},
                                            "method": {"enum": ["GET", "PUT", "POST", "PATCH", "DELETE"]},
                                            "url": {"type": "string"},
                                            "body": {"type": "string"}
                                        }
                                    }
                                }
                            }}
                        }
                    }}
                }
            }),
            OutputKind::Code => json!({
                "type": "object",
                "required": ["language", "code", "tests"],
                "properties": {
                    "language": {"enum": ["python"]},
                    "code": {"type": "string", "minLength": 1},
                    "tests": {"type": "string", "minLength": 1},
                    "explanation": {"type": "string"}
                }
            }),
        }
    }
}

/// How the loop asks the model for its next move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// Every turn must be a tool call (`tool_choice: required`); the final answer is the
    /// `final_answer` tool, whose arguments are checked against the output schema. Works with
    /// small local models, whose `auto` tool choice is unreliable.
    #[default]
    Required,
    /// The model may answer in text; a text answer is parsed as the final answer's JSON.
    Auto,
    /// No tools on the wire: the tools (with `final_answer`) are listed in the system prompt,
    /// and each turn's answer is constrained by a JSON schema (`response_format` json_schema)
    /// to exactly one call `{"name": <tool>, "arguments": {…}}`. For local servers whose
    /// forced tool choice does not stop after one call (llama.cpp with Qwen2.5-Coder-0.5B
    /// writes call after call until `max_tokens`): the schema's grammar ends the turn after
    /// one call, and the prompt is shorter than the template's tool preamble.
    Schema,
}

/// Limits of one task's loop. A limit that runs out fails the task with a reason naming it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Model calls and tool calls together (a denied or repeated tool call counts too).
    pub steps: u32,
    /// Input plus output tokens over all model calls.
    pub tokens: u64,
    /// Wall time of the loop (model and tool calls included).
    #[serde(with = "humantime_serde")]
    pub wall_time: Duration,
    /// Money over all model calls, in US dollars, at the configured prices; 0 = no limit.
    pub max_cost_usd: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            steps: 12,
            tokens: 60_000,
            wall_time: Duration::from_secs(300),
            max_cost_usd: 0.0,
        }
    }
}

impl Budget {
    /// The money limit in micro-dollars (0 = none).
    pub fn max_cost_micros(&self) -> u64 {
        (self.max_cost_usd * 1_000_000.0).round() as u64
    }
}

/// A checked agent file.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// The file it came from.
    pub file: PathBuf,
    /// The role it serves (the file's stem).
    pub role: String,
    /// What it does, for `baton agents`.
    pub description: String,
    /// How the agent is served: by a model loop, or by a registered runbook factory.
    pub engine: Engine,
}

/// How an [`AgentSpec`] is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    /// Deterministic code: the [`crate::AgentFactory`] of this name (`drift-runbook`).
    Runbook(String),
    /// A model with tools.
    Model(ModelSpec),
}

/// The model side of an agent file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The prompt template (placeholders: [`PLACEHOLDERS`]).
    pub prompt: String,
    /// Model providers by name, in failover order.
    pub models: Vec<String>,
    /// Tool names the agent is offered (the tool policy still decides every call).
    pub tools: Vec<String>,
    /// How the loop asks for the next move.
    pub tool_choice: ToolMode,
    /// Plan, report or code.
    pub output: OutputKind,
    /// JSON schema of the final answer.
    pub output_schema: Value,
    /// The loop's limits.
    pub budget: Budget,
}

/// An agent file that cannot be used: `<file>:<line>: <what is wrong>`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the problem (1 when the whole file is concerned).
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    role: Spanned<String>,
    description: String,
    #[serde(default)]
    runbook: Option<Spanned<String>>,
    #[serde(default)]
    models: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    tools: Vec<Spanned<String>>,
    #[serde(default)]
    tool_choice: ToolMode,
    #[serde(default)]
    prompt: Option<Spanned<String>>,
    #[serde(default)]
    output: Option<Spanned<OutputKind>>,
    #[serde(default)]
    output_schema: Option<Spanned<toml::Table>>,
    #[serde(default)]
    budget: Option<Spanned<Budget>>,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Parses and checks one agent file. `known_tools` are the tool names the registry has;
/// `known_runbooks` the agent factory names a `runbook` may name.
pub fn parse(
    file: &Path,
    text: &str,
    known_tools: &[String],
    known_runbooks: &[String],
) -> Result<AgentSpec, FileError> {
    let err = |at: usize, message: String| FileError {
        file: file.to_path_buf(),
        line: line_of(text, at),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        err(
            e.span().map(|s| s.start).unwrap_or(0),
            e.message().trim().to_string(),
        )
    })?;
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let role = raw.role.get_ref().clone();
    if role != stem {
        return Err(err(
            raw.role.span().start,
            format!(
                "role is {role:?} but the file is named {stem:?}.toml; name the file after its role"
            ),
        ));
    }
    let engine = match (raw.runbook, raw.models) {
        (Some(_), Some(m)) => {
            return Err(err(
                m.span().start,
                "a file names either a runbook or models, not both".into(),
            ));
        }
        (None, None) => {
            return Err(err(
                0,
                "no `models` and no `runbook`: list model providers (models = [\"local\"]) or name a runbook".into(),
            ));
        }
        (Some(runbook), None) => {
            let name = runbook.get_ref();
            if !known_runbooks.iter().any(|r| r == name) {
                return Err(err(
                    runbook.span().start,
                    format!(
                        "runbook {name:?} is not registered; registered agents: {}",
                        known_runbooks.join(", ")
                    ),
                ));
            }
            Engine::Runbook(name.clone())
        }
        (None, Some(models)) => {
            if models.get_ref().is_empty() || models.get_ref().iter().any(|m| m.trim().is_empty()) {
                return Err(err(
                    models.span().start,
                    "models must list at least one provider name, none empty".into(),
                ));
            }
            let mut tools = Vec::new();
            for t in &raw.tools {
                if !known_tools.iter().any(|k| k == t.get_ref()) {
                    return Err(err(
                        t.span().start,
                        format!(
                            "unknown tool {:?}; known tools: {}",
                            t.get_ref(),
                            known_tools.join(", ")
                        ),
                    ));
                }
                tools.push(t.get_ref().clone());
            }
            let Some(prompt) = raw.prompt else {
                return Err(err(0, "a model agent needs a `prompt` template".into()));
            };
            check_placeholders(prompt.get_ref()).map_err(|(needle, m)| {
                // The value has escapes and a trimmed first newline: find the placeholder's
                // own text in the file, from where the string starts.
                let start = prompt.span().start;
                let at = text[start..].find(&needle).map_or(start, |o| start + o);
                err(at, m)
            })?;
            let Some(output) = raw.output else {
                return Err(err(
                    0,
                    "a model agent needs `output = \"plan\"`, `\"report\"` or `\"code\"`".into(),
                ));
            };
            let output_schema = match raw.output_schema {
                None => output.get_ref().default_schema(),
                Some(table) => {
                    let value = serde_json::to_value(table.get_ref()).map_err(|e| {
                        err(
                            table.span().start,
                            format!("output_schema is not JSON: {e}"),
                        )
                    })?;
                    if value.get("type").and_then(Value::as_str) != Some("object") {
                        return Err(err(
                            table.span().start,
                            "output_schema must be an object schema (type = \"object\")".into(),
                        ));
                    }
                    // A schema the checker can apply to an empty object without panicking
                    // is all we can verify here.
                    let _ = schema::check(&value, &json!({}));
                    value
                }
            };
            let budget = match raw.budget {
                None => Budget::default(),
                Some(b) => {
                    let v = b.get_ref();
                    if v.steps == 0 || v.tokens == 0 || v.wall_time.is_zero() {
                        return Err(err(
                            b.span().start,
                            "budget.steps, budget.tokens and budget.wall_time must be above 0"
                                .into(),
                        ));
                    }
                    if !(v.max_cost_usd >= 0.0 && v.max_cost_usd.is_finite()) {
                        return Err(err(
                            b.span().start,
                            "budget.max_cost_usd must be 0 (no limit) or a positive amount".into(),
                        ));
                    }
                    v.clone()
                }
            };
            Engine::Model(ModelSpec {
                prompt: prompt.into_inner(),
                models: models.into_inner(),
                tools,
                tool_choice: raw.tool_choice,
                output: output.into_inner(),
                output_schema,
                budget,
            })
        }
    };
    Ok(AgentSpec {
        file: file.to_path_buf(),
        role,
        description: raw.description,
        engine,
    })
}

/// Finds `{{name}}` placeholders; `Err((its text, message))` for the first unknown one.
fn check_placeholders(template: &str) -> Result<(), (String, String)> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(("{{".into(), "unclosed `{{` in the prompt".into()));
        };
        let name = after[..end].trim();
        if !PLACEHOLDERS.contains(&name) {
            return Err((
                format!("{{{{{}}}}}", &after[..end]),
                format!(
                    "unknown placeholder {{{{{name}}}}} in the prompt; known: {}",
                    PLACEHOLDERS.join(", ")
                ),
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// Fills the placeholders of `template` from `values` (`(name, value)` pairs).
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{{{name}}}}}", name = name), value);
        out = out.replace(&format!("{{{{ {name} }}}}", name = name), value);
    }
    out
}

/// Reads every `*.toml` of `dir`, sorted by name. Errors: the directory cannot be read, or
/// the first file error; two files for one role cannot happen (the role is the file's stem).
pub fn load_dir(
    dir: &Path,
    known_tools: &[String],
    known_runbooks: &[String],
) -> Result<Vec<AgentSpec>, FileError> {
    let dir_err = |e: std::io::Error| FileError {
        file: dir.to_path_buf(),
        line: 1,
        message: format!(
            "cannot read the agents directory: {e}; set agents.dir to a directory of <role>.toml files"
        ),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(dir_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    let mut specs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| FileError {
            file: path.clone(),
            line: 1,
            message: format!("cannot read it: {e}"),
        })?;
        specs.push(parse(&path, &text, known_tools, known_runbooks)?);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<String> {
        vec!["query_assets".into(), "read_file".into()]
    }

    fn parse_text(name: &str, text: &str) -> Result<AgentSpec, FileError> {
        parse(
            Path::new(name),
            text,
            &tools(),
            &["drift-runbook".to_string()],
        )
    }

    #[test]
    fn a_model_agent_file_parses_with_defaults() {
        let spec = parse_text(
            "agents/cost.toml",
            "role = \"cost\"\ndescription = \"d\"\nmodels = [\"local\"]\ntools = [\"query_assets\"]\noutput = \"report\"\nprompt = \"You are {{role}} in {{environment}}\"\n",
        )
        .unwrap();
        let Engine::Model(m) = spec.engine else {
            panic!("a model agent")
        };
        assert_eq!(m.models, ["local"]);
        assert_eq!(m.output, OutputKind::Report);
        assert_eq!(m.budget, Budget::default());
        assert_eq!(m.tool_choice, ToolMode::Required);
    }

    #[test]
    fn errors_name_the_line_and_what_is_wrong() {
        let e = parse_text(
            "agents/cost.toml",
            "role = \"cost\"\ndescription = \"d\"\nmodels = [\"local\"]\ntools = [\"query_assets\", \"rm_rf\"]\noutput = \"report\"\nprompt = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("unknown tool \"rm_rf\""), "{e}");
        assert!(e.to_string().starts_with("agents/cost.toml:4: "), "{e}");

        let e = parse_text(
            "agents/cost.toml",
            "role = \"cost\"\ndescription = \"d\"\nmodels = [\"local\"]\noutput = \"summary\"\nprompt = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("summary"), "{e}");

        let e = parse_text(
            "agents/cost.toml",
            "role = \"cost\"\ndescription = \"d\"\nmodels = [\"local\"]\noutput = \"report\"\nprompt = \"\"\"\nhello\n{{nope}}\n\"\"\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("unknown placeholder {{nope}}"), "{e}");

        let e = parse_text(
            "agents/patch.toml",
            "role = \"cost\"\ndescription = \"d\"\nrunbook = \"drift-runbook\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 1, "{e}");

        let e = parse_text(
            "agents/drift.toml",
            "role = \"drift\"\ndescription = \"d\"\n\nrunbook = \"nope\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("drift-runbook"), "{e}");

        let e = parse_text(
            "agents/cost.toml",
            "role = \"cost\"\ndescription = \"d\"\nmodels = [\"local\"]\noutput = \"report\"\nprompt = \"x\"\n[budget]\nsteps = 0\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 6, "{e}");
    }

    #[test]
    fn the_shipped_agent_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../agents");
        let tools: Vec<String> = crate::tools::builtin_factories()
            .into_iter()
            .map(|f| f.name)
            .collect();
        let specs = load_dir(&dir, &tools, &["drift-runbook".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let roles: Vec<&str> = specs.iter().map(|s| s.role.as_str()).collect();
        assert_eq!(
            roles,
            [
                "adapter",
                "assistant",
                "codegen",
                "compliance",
                "cost",
                "dr",
                "drift",
                "image",
                "incident",
                "patch",
                "security",
                "sop"
            ]
        );
        let drift = specs.iter().find(|s| s.role == "drift").unwrap();
        assert_eq!(drift.engine, Engine::Runbook("drift-runbook".into()));
        let Engine::Model(codegen) = &specs.iter().find(|s| s.role == "codegen").unwrap().engine
        else {
            panic!("codegen is a model agent")
        };
        assert_eq!(codegen.output, OutputKind::Code);
    }

    #[test]
    fn render_fills_placeholders() {
        let out = render(
            "{{role}} / {{ environment }}",
            &[("role", "cost".into()), ("environment", "prod".into())],
        );
        assert_eq!(out, "cost / prod");
    }
}
