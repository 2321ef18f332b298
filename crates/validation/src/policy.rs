//! Rego policies, evaluated in-process by `regorus`.
//!
//! [`PolicySet::builtin`] prepares the policies embedded at compile time ([`BUILTIN`]: the
//! repository's `policies/*.rego` except `*_test.rego`, listed by the crate's build script);
//! [`PolicySet::load`] reads every `*.rego` file of a directory except `*_test.rego`. Both go
//! through [`PolicySet::from_sources`], which checks that each file declares a `baton.<name>`
//! package and prepares one engine; the same files give the same [`PolicySet::version`] either
//! way. [`PolicySet::evaluate`]
//! clones that prepared engine (cheap: modules and the compiled schedule are shared), sets the
//! input document and collects the `deny` and `require_approval` sets of every package.
//! [`run_policy_tests`] runs the `test_*` rules of the `*_test.rego` files against the live
//! policies, like `opa test`.

use crate::Error;
use baton_proto::report::{REPORT_ARTIFACT, Report};
use baton_proto::{PhaseKind, PlanProposed, PolicyDecision, SandboxEnd, action};
use regorus::{Engine, Value};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Suffix of Rego test files: loaded only by [`run_policy_tests`], never as live policies.
pub const TEST_SUFFIX: &str = "_test.rego";

/// The built-in live policies as `(file name, contents)`, sorted by file name: the
/// repository's `policies/*.rego` except `*_test.rego`, embedded at compile time by the
/// crate's build script (adding a file there embeds it on the next build).
pub const BUILTIN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_policies.rs"));

/// Where the built-in policies come from in messages and logs (`builtin/<file>`).
pub const BUILTIN_ORIGIN: &str = "builtin";

/// The rule whose set of strings rejects a plan.
pub const DENY_RULE: &str = "deny";
/// The rule whose set of strings sends a plan to a human.
pub const APPROVAL_RULE: &str = "require_approval";

/// The loaded policies: a prepared engine to clone per plan, and what was loaded.
#[derive(Clone)]
pub struct PolicySet {
    /// Prepared (analysed once) engine holding every live policy; cloned per evaluation.
    engine: Engine,
    /// `(package path, rule)` pairs to evaluate, e.g. `("data.baton.production_safety", "deny")`.
    rules: Vec<(String, &'static str)>,
    /// File names of the policies, sorted.
    files: Vec<String>,
    /// SHA-256 (hex) over the sorted file names and contents.
    version: String,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("files", &self.files)
            .field("version", &self.version)
            .finish()
    }
}

/// What the policies said, before the quality score and verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOutcome {
    /// Reasons to reject, sorted and deduplicated.
    pub deny: Vec<String>,
    /// Reasons to ask a human, sorted and deduplicated.
    pub require_approval: Vec<String>,
}

/// A policy file, read from disk or built in.
struct PolicyFile {
    /// File name (`production_safety.rego`).
    name: String,
    /// `<origin>/<name>`, as given to regorus, so its messages name the file.
    path: PathBuf,
    /// The Rego source text.
    text: String,
}

/// Reads the `*.rego` files of `dir` that `keep` accepts, sorted by name.
fn read_rego_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PolicyFile>, Error> {
    let io = |e: std::io::Error| Error::PolicyDir {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !name.ends_with(".rego") || !keep(&name) || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Policy {
            file: path.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        files.push(PolicyFile { name, path, text });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn is_live(name: &str) -> bool {
    !name.ends_with(TEST_SUFFIX)
}

/// Adds `file` to `engine`; returns its package path (`data.baton.x`).
fn add_file(engine: &mut Engine, file: &PolicyFile) -> Result<String, Error> {
    engine
        .add_policy(file.path.display().to_string(), file.text.clone())
        .map_err(|e| Error::Policy {
            file: file.path.clone(),
            reason: one_line(&format!("{e:#}")),
        })
}

/// regorus's multi-line diagnostic (`--> file:line:col`, a source excerpt, `error: …`) as one
/// line: `expecting `}` while parsing set (at file:4:7)`.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).collect();
    let location = lines.iter().find_map(|l| l.strip_prefix("--> "));
    let error = lines.iter().find_map(|l| l.strip_prefix("error: "));
    match (error, location) {
        (Some(error), Some(location)) => format!("{error} (at {location})"),
        _ => lines
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl PolicySet {
    /// Loads and prepares every live policy (`*.rego` but not `*_test.rego`) of `dir`.
    ///
    /// Errors ([`Error::Policy`] naming the file, or [`Error::PolicyDir`]): the directory is
    /// unreadable or holds no policy (running without policies is refused); a file does not
    /// parse (regorus's message gives line and column); a file's package is not `baton.<name>`;
    /// the policies do not compile together (unsafe variables, conflicting rules).
    pub fn load(dir: &Path) -> Result<PolicySet, Error> {
        let files = read_rego_files(dir, is_live)?;
        Self::prepare(dir, files)
    }

    /// Prepares the built-in policies ([`BUILTIN`]); errors as [`PolicySet::from_sources`]
    /// (the crate's tests make sure the shipped policies load).
    pub fn builtin() -> Result<PolicySet, Error> {
        Self::from_sources(Path::new(BUILTIN_ORIGIN), BUILTIN.iter().copied())
    }

    /// Prepares live policies given as `(file name, contents)` pairs, in any order. `origin`
    /// (a directory, or [`BUILTIN_ORIGIN`]) only names the files in messages:
    /// `<origin>/<name>`. The version depends on names and contents only, so the same files
    /// give the same version whether built in or loaded from a directory.
    ///
    /// Errors as [`PolicySet::load`]; also [`Error::PolicyDir`] when two sources share a name.
    pub fn from_sources<N, T>(
        origin: &Path,
        sources: impl IntoIterator<Item = (N, T)>,
    ) -> Result<PolicySet, Error>
    where
        N: Into<String>,
        T: Into<String>,
    {
        let mut files: Vec<PolicyFile> = sources
            .into_iter()
            .map(|(name, text)| {
                let name = name.into();
                PolicyFile {
                    path: origin.join(&name),
                    name,
                    text: text.into(),
                }
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = files.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::PolicyDir {
                dir: origin.to_path_buf(),
                reason: format!(
                    "two policies are named {}; give each file its own name",
                    pair[0].name
                ),
            });
        }
        Self::prepare(origin, files)
    }

    /// Prepares `files` (sorted by name) loaded from `origin`.
    fn prepare(origin: &Path, files: Vec<PolicyFile>) -> Result<PolicySet, Error> {
        if files.is_empty() {
            return Err(Error::PolicyDir {
                dir: origin.to_path_buf(),
                reason: "it holds no *.rego policy; validation refuses to run without policies \
                         (copy the repository's policies/ directory there, or unset \
                         validation.policy_dir to use the built-in policies)"
                    .into(),
            });
        }
        let mut engine = Engine::new();
        let mut rules = BTreeSet::new();
        let mut hasher = Sha256::new();
        for file in &files {
            let package = add_file(&mut engine, file)?;
            if !package.starts_with("data.baton.") {
                return Err(Error::Policy {
                    file: file.path.clone(),
                    reason: format!(
                        "it declares package {}; baton policies must declare `package baton.<name>`",
                        package.trim_start_matches("data.")
                    ),
                });
            }
            let source = file.path.display().to_string();
            for rule in [DENY_RULE, APPROVAL_RULE] {
                let declared = engine
                    .has_declared_rule_rooted_at(&source, rule)
                    .map_err(|e| Error::Policy {
                        file: file.path.clone(),
                        reason: format!("{e:#}"),
                    })?;
                if declared {
                    rules.insert((package.clone(), rule));
                }
            }
            // Name and contents, each length-prefixed so no two file sets hash alike.
            for part in [file.name.as_bytes(), file.text.as_bytes()] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
        }
        let mut set = PolicySet {
            engine,
            rules: rules.into_iter().collect(),
            files: files.iter().map(|f| f.name.clone()).collect(),
            version: hex::encode(hasher.finalize()),
        };
        // Evaluate once now: this analyses and schedules the policies (so compile errors
        // surface at startup, not on the first plan) and leaves a prepared engine to clone.
        set.engine.set_input(Value::new_object());
        for (package, rule) in set.rules.clone() {
            set.engine
                .eval_rule(format!("{package}.{rule}"))
                .map_err(|e| Error::Policy {
                    file: origin.to_path_buf(),
                    reason: format!("evaluating {package}.{rule} on an empty input failed: {e:#}"),
                })?;
        }
        Ok(set)
    }

    /// File names of the live policies, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// SHA-256 (hex) over the sorted file names and contents: names the policy version in
    /// every decision.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Evaluates every `deny` and `require_approval` rule against `input` (see
    /// [`input_document`]). A rule that fails to evaluate is itself a deny reason: an
    /// unevaluable policy must not let a plan through.
    ///
    /// Cost: cloning the prepared engine shares its modules and schedule, so a plan pays only
    /// for evaluation — measured at about 0.8 ms per plan with the shipped policies in a debug
    /// build, against 3.6 ms when parsing and preparing the policies per plan.
    pub fn evaluate(&self, input: &serde_json::Value) -> PolicyOutcome {
        let mut engine = self.engine.clone();
        engine.set_input(Value::from(input.clone()));
        let mut deny = BTreeSet::new();
        let mut approval = BTreeSet::new();
        for (package, rule) in &self.rules {
            let path = format!("{package}.{rule}");
            let out = if *rule == DENY_RULE {
                &mut deny
            } else {
                &mut approval
            };
            match engine.eval_rule(path.clone()) {
                Ok(value) => collect_reasons(&value, out),
                Err(e) => {
                    deny.insert(format!(
                        "policy {path} failed to evaluate ({e:#}); fix the policy, then resubmit the task"
                    ));
                }
            }
        }
        PolicyOutcome {
            deny: deny.into_iter().collect(),
            require_approval: approval.into_iter().collect(),
        }
    }

    /// A [`PolicyDecision`] record of `outcome` under this policy set.
    pub fn decision(&self, outcome: &PolicyOutcome) -> PolicyDecision {
        PolicyDecision {
            allowed: outcome.deny.is_empty(),
            deny_reasons: outcome.deny.clone(),
            approval_reasons: outcome.require_approval.clone(),
            policy_version: self.version.clone(),
            policies: self.files.clone(),
        }
    }
}

/// Adds the members of a rule's value to `out`: strings as they are, anything else as JSON.
/// An undefined rule (no member) adds nothing.
fn collect_reasons(value: &Value, out: &mut BTreeSet<String>) {
    let text = |v: &Value| match v {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
    };
    match value {
        Value::Undefined | Value::Null => {}
        Value::Set(set) => out.extend(set.iter().map(text)),
        Value::Array(items) => out.extend(items.iter().map(text)),
        Value::Bool(false) => {}
        other => {
            out.insert(text(other));
        }
    }
}

/// The input document policies see. Policies depend on this shape; see the crate docs.
pub fn input_document(proposed: &PlanProposed) -> serde_json::Value {
    let task = proposed.task.clone().unwrap_or_default();
    let spec = proposed.spec.clone().unwrap_or_default();
    let plan = proposed.plan.clone().unwrap_or_default();
    let phases: Vec<_> = plan
        .phases
        .iter()
        .enumerate()
        .map(|(index, phase)| {
            let mut assets: Vec<&str> = Vec::new();
            let steps: Vec<_> = phase
                .steps
                .iter()
                .map(|step| {
                    let asset = step.asset.as_ref().map(|a| a.id.as_str()).unwrap_or("");
                    if !asset.is_empty() && !assets.contains(&asset) {
                        assets.push(asset);
                    }
                    json!({
                        "asset": asset,
                        "action": action_kind(step.action.as_ref()),
                        "has_rollback": step.rollback.as_ref().is_some_and(|r| r.kind.is_some()),
                        "has_health_check": step.health_check.is_some(),
                    })
                })
                .collect();
            json!({
                "index": index,
                "name": phase.name,
                "kind": phase_kind(phase.kind()),
                "assets": assets,
                "steps": steps,
            })
        })
        .collect();
    let artifacts: Vec<_> = plan
        .artifacts
        .iter()
        .map(|a| {
            // The report, parsed, for policies to read; null for other artifacts and for a
            // report that does not parse (which validation refuses anyway).
            let report = (a.name == REPORT_ARTIFACT)
                .then(|| Report::parse(a).ok())
                .flatten()
                .and_then(|r| serde_json::to_value(r).ok());
            json!({
                "name": a.name,
                "media_type": a.media_type,
                "size": a.content.len(),
                "report": report,
                "sandbox_exit_code": a.sandbox_run.as_ref().map(|r| r.exit_code),
                "sandbox_ended_by": a.sandbox_run.as_ref().map(|r| sandbox_end(r.ended_by())),
                "sandbox_network": a.sandbox_run.as_ref().map(|r| r.network),
            })
        })
        .collect();
    let agent = plan.agent_run.clone().unwrap_or_default();
    json!({
        "task": {
            "task_id": task.task_id,
            "tenant": task.tenant,
            "text": task.trigger.as_ref().map(|t| t.text.as_str()).unwrap_or(""),
            "submitted_by": task.submitted_by,
        },
        "spec": {
            "role": spec.role,
            "task_type": spec.task_type,
            "environment": spec.environment,
            "risk": spec.risk().label(),
            "tools": spec.tools,
            "target": spec.target,
        },
        "plan": {
            "summary": plan.summary,
            "total_assets": plan.total_assets,
            "step_count": plan.step_count(),
            "report_only": plan.is_report_only(),
            "phases": phases,
            "artifacts": artifacts,
            "agent": {"kind": agent.kind().label(), "name": agent.agent},
        },
    })
}

/// `http`, `noop`, `sandbox`, a plug-in action's kind, or `none` for a step without an action.
pub(crate) fn action_kind(action: Option<&baton_proto::Action>) -> &str {
    match action.and_then(|a| a.kind.as_ref()) {
        Some(action::Kind::Http(_)) => "http",
        Some(action::Kind::Noop(_)) => "noop",
        Some(action::Kind::Sandbox(_)) => "sandbox",
        // A plug-in kind is named as its runner registered it (`echo`, `docker`).
        Some(action::Kind::Plugin(p)) => p.kind.as_str(),
        None => "none",
    }
}

/// What ended a sandbox run: `exited`, or the limit (`timeout`, `memory`, `pids`, `output`);
/// `unspecified` when the report does not say.
fn sandbox_end(end: SandboxEnd) -> &'static str {
    match end {
        SandboxEnd::Exited => "exited",
        SandboxEnd::Timeout => "timeout",
        SandboxEnd::Memory => "memory",
        SandboxEnd::Pids => "pids",
        SandboxEnd::Output => "output",
        SandboxEnd::Unspecified => "unspecified",
    }
}

fn phase_kind(kind: PhaseKind) -> &'static str {
    match kind {
        PhaseKind::Canary => "canary",
        PhaseKind::Wave => "wave",
        PhaseKind::Unspecified => "unspecified",
    }
}

/// The result of one `test_*` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTest {
    /// Test file name (`production_safety_test.rego`).
    pub file: String,
    /// Rule name (`test_unknown_environment_is_denied`).
    pub name: String,
    /// Why it failed; `None` when it passed (evaluated to `true`).
    pub failure: Option<String>,
}

/// Runs every `test_*` rule of every `*_test.rego` in `dir` against the live policies of
/// `dir`, like `opa test`. A test passes when its rule evaluates to `true`; undefined, false
/// or an evaluation error fails it.
///
/// Errors: the live policies do not load (see [`PolicySet::load`]) or a test file does not
/// parse ([`Error::Policy`] naming it).
pub fn run_policy_tests(dir: &Path) -> Result<Vec<PolicyTest>, Error> {
    let live = PolicySet::load(dir)?;
    let tests = read_rego_files(dir, |n| !is_live(n))?;
    let mut engine = live.engine.clone();
    let mut found = Vec::new();
    for file in &tests {
        let package = add_file(&mut engine, file)?;
        let source = file.path.display().to_string();
        for name in test_rule_candidates(&file.text) {
            // The text scan only proposes names; regorus confirms they are rules of the file.
            if engine
                .has_declared_rule_rooted_at(&source, &name)
                .unwrap_or(false)
            {
                found.push((file.name.clone(), package.clone(), name));
            }
        }
    }
    let mut results = Vec::new();
    for (file, package, name) in found {
        let mut engine = engine.clone();
        engine.set_input(Value::new_object());
        let failure = match engine.eval_rule(format!("{package}.{name}")) {
            Ok(Value::Bool(true)) => None,
            Ok(Value::Undefined) => {
                Some("undefined (a condition in its body was false)".to_string())
            }
            Ok(other) => Some(format!(
                "evaluated to {}",
                other.to_json_str().unwrap_or_default()
            )),
            Err(e) => Some(format!("error: {e:#}")),
        };
        results.push(PolicyTest {
            file,
            name,
            failure,
        });
    }
    Ok(results)
}

/// Names of rules that start a line with `test_` (rule heads are not indented by `opa fmt`).
fn test_rule_candidates(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("test_"))
        .map(|l| {
            l.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{
        Action, AgentRun, Artifact, Asset, HealthCheck, NoopAction, Phase, Plan, Risk, SandboxRun,
        Step, TaskSpec,
    };

    fn step(asset: &str, rollback: bool) -> Step {
        let noop = || Action {
            kind: Some(action::Kind::Noop(NoopAction {})),
            ..Default::default()
        };
        Step {
            asset: Some(Asset {
                id: asset.into(),
                ..Default::default()
            }),
            action: Some(noop()),
            rollback: rollback.then(noop),
            health_check: (!rollback).then(HealthCheck::default),
            reason: String::new(),
        }
    }

    #[test]
    fn input_document_has_the_documented_shape() {
        let proposed = PlanProposed {
            task: None,
            spec: Some(TaskSpec {
                environment: "staging".into(),
                risk: Risk::High as i32,
                ..Default::default()
            }),
            plan: Some(Plan {
                total_assets: 4,
                phases: vec![Phase {
                    name: "canary".into(),
                    kind: PhaseKind::Canary as i32,
                    steps: vec![step("a", true), step("a", false), step("b", false)],
                }],
                artifacts: vec![
                    Artifact {
                        name: "x.py".into(),
                        sandbox_run: Some(SandboxRun {
                            exit_code: 2,
                            ended_by: baton_proto::SandboxEnd::Exited as i32,
                            network: true,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Artifact {
                        name: "r.md".into(),
                        ..Default::default()
                    },
                ],
                agent_run: Some(AgentRun {
                    kind: baton_proto::AgentKind::Llm as i32,
                    agent: "gpt@1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let doc = input_document(&proposed);
        assert_eq!(doc["spec"]["risk"], "high");
        assert_eq!(doc["spec"]["environment"], "staging");
        assert_eq!(doc["task"]["task_id"], "");
        assert_eq!(doc["plan"]["step_count"], 3);
        assert_eq!(doc["plan"]["total_assets"], 4);
        let phase = &doc["plan"]["phases"][0];
        assert_eq!(phase["kind"], "canary");
        assert_eq!(phase["index"], 0);
        assert_eq!(phase["assets"], json!(["a", "b"]), "distinct, in order");
        assert_eq!(
            phase["steps"][0],
            json!({"asset": "a", "action": "noop", "has_rollback": true, "has_health_check": false})
        );
        assert_eq!(phase["steps"][1]["has_rollback"], false);
        assert_eq!(doc["plan"]["artifacts"][0]["sandbox_exit_code"], 2);
        assert!(doc["plan"]["artifacts"][1]["sandbox_exit_code"].is_null());
        assert_eq!(doc["plan"]["artifacts"][0]["sandbox_ended_by"], "exited");
        assert_eq!(doc["plan"]["artifacts"][0]["sandbox_network"], true);
        assert!(doc["plan"]["artifacts"][1]["sandbox_ended_by"].is_null());
        assert!(doc["plan"]["artifacts"][1]["sandbox_network"].is_null());
        assert_eq!(
            doc["plan"]["agent"],
            json!({"kind": "llm", "name": "gpt@1"})
        );
    }

    #[test]
    fn a_report_is_parsed_for_policies() {
        let report = baton_proto::report::Report {
            answer: "egress tripled".into(),
            findings: vec![json!({"title": "logs-eu is public", "severity": "high"})],
            recommendations: vec![json!("make logs-eu private")],
        };
        let broken = Artifact {
            name: "notes".into(),
            media_type: "application/json".into(),
            content: b"{\"answer\": \"not a report by name\"}".to_vec(),
            sandbox_run: None,
        };
        let proposed = PlanProposed {
            plan: Some(Plan {
                artifacts: vec![report.to_artifact(), broken],
                ..Default::default()
            }),
            ..Default::default()
        };
        let doc = input_document(&proposed);
        let a = &doc["plan"]["artifacts"];
        assert_eq!(a[0]["report"]["answer"], "egress tripled");
        assert_eq!(a[0]["report"]["findings"][0]["severity"], "high");
        assert_eq!(
            a[0]["report"]["recommendations"],
            json!(["make logs-eu private"])
        );
        assert_eq!(a[0]["size"], report.to_artifact().content.len());
        assert!(
            a[1]["report"].is_null(),
            "only the artifact named report is a report"
        );
        assert_eq!(doc["plan"]["report_only"], true);
        assert_eq!(doc["plan"]["step_count"], 0);
    }

    #[test]
    fn a_plugin_action_is_named_by_its_kind() {
        let echo = Action {
            kind: Some(action::Kind::Plugin(baton_proto::PluginAction {
                kind: "echo".into(),
                spec_json: "{}".into(),
            })),
            ..Default::default()
        };
        assert_eq!(action_kind(Some(&echo)), "echo");
        assert_eq!(action_kind(Some(&Action::default())), "none");
        assert_eq!(action_kind(None), "none");
    }

    #[test]
    fn regorus_diagnostics_become_one_line() {
        let text = "\n--> p.rego:4:7\n  |\n4 |   msg := \n  |       ^\nerror: expecting `}`";
        assert_eq!(one_line(text), "expecting `}` (at p.rego:4:7)");
        assert_eq!(one_line("something\nelse"), "something else");
    }
}
