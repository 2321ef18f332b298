//! The tool policy: every tool call is evaluated by Rego (regorus, in-process) before it runs.
//!
//! The policy is `policies/tools.rego` (built in at compile time) or the file
//! `agents.tool_policy` names. It declares package `baton.tools` with three rules, evaluated
//! against one call ([`CallInput`]):
//! - `allow` (boolean, default false): the call may run;
//! - `deny_call` (set of strings): reasons to refuse it, whatever `allow` says;
//! - `call_requires_approval` (set of strings): the call needs a human.
//!
//! Deny by default: a call runs only when `allow` is true and no reason fires. An evaluation
//! error denies the call (an unevaluable policy must not let a call through).

use regorus::{Engine, Value};
use serde::Serialize;
use std::path::Path;

/// The built-in tool policy: the repository's `policies/tools.rego`.
pub const BUILTIN: &str = include_str!("../../../policies/tools.rego");

/// What the policy sees about one call.
#[derive(Debug, Clone, Serialize)]
pub struct CallInput<'a> {
    /// Tool name.
    pub tool: &'a str,
    /// Whether the tool has side effects.
    pub side_effects: bool,
    /// The call's arguments.
    pub arguments: &'a serde_json::Value,
    /// The agent's role.
    pub role: &'a str,
    /// The task's environment.
    pub environment: &'a str,
    /// The task's type.
    pub task_type: &'a str,
    /// The task's tenant.
    pub tenant: &'a str,
}

/// The policy's answer about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The call may run.
    Allow,
    /// The call is refused; the reason goes back to the model.
    Deny(String),
    /// A human must approve the call first.
    RequireApproval(String),
}

impl Verdict {
    /// `allowed`, `denied` or `require_approval` (as recorded in `ToolCall.decision`).
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Allow => "allowed",
            Verdict::Deny(_) => "denied",
            Verdict::RequireApproval(_) => "require_approval",
        }
    }
}

/// A prepared tool policy, cloned per call.
#[derive(Clone)]
pub struct ToolPolicy {
    engine: Engine,
    origin: String,
    /// The rules (`allow`, `deny_call`, `call_requires_approval`) the file declares; an
    /// undeclared rule is false or empty.
    declared: Vec<&'static str>,
}

impl std::fmt::Debug for ToolPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolPolicy")
            .field("origin", &self.origin)
            .finish()
    }
}

impl ToolPolicy {
    /// The built-in `policies/tools.rego`.
    pub fn builtin() -> Result<ToolPolicy, String> {
        ToolPolicy::from_source("builtin/tools.rego", BUILTIN)
    }

    /// The policy in the file at `path`. Errors name the file (and regorus's line and column).
    pub fn load(path: &Path) -> Result<ToolPolicy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tool policy {}: {e}", path.display()))?;
        ToolPolicy::from_source(&path.display().to_string(), &text)
    }

    /// Prepares `text` (named `origin` in messages): it must declare package `baton.tools`.
    pub fn from_source(origin: &str, text: &str) -> Result<ToolPolicy, String> {
        let mut engine = Engine::new();
        let package = engine
            .add_policy(origin.to_string(), text.to_string())
            .map_err(|e| format!("tool policy {origin}: {e}"))?;
        if package != "data.baton.tools" {
            return Err(format!(
                "tool policy {origin} declares {package}; it must declare `package baton.tools`"
            ));
        }
        let mut declared = Vec::new();
        for rule in ["allow", "deny_call", "call_requires_approval"] {
            if engine
                .has_declared_rule_rooted_at(origin, rule)
                .map_err(|e| format!("tool policy {origin}: {e}"))?
            {
                declared.push(rule);
            }
        }
        let policy = ToolPolicy {
            engine,
            origin: origin.to_string(),
            declared,
        };
        // Evaluate once: surfaces compile errors at start, not on the first call.
        let probe = serde_json::json!({});
        let input = CallInput {
            tool: "",
            side_effects: false,
            arguments: &probe,
            role: "",
            environment: "",
            task_type: "",
            tenant: "",
        };
        if let Verdict::Deny(reason) = policy.evaluate(&input)
            && reason.contains("failed to evaluate")
        {
            return Err(reason);
        }
        Ok(policy)
    }

    /// Evaluates one call.
    pub fn evaluate(&self, input: &CallInput<'_>) -> Verdict {
        let mut engine = self.engine.clone();
        let json = match serde_json::to_value(input) {
            Ok(v) => v,
            Err(e) => return Verdict::Deny(format!("tool call input is not JSON: {e}")),
        };
        engine.set_input(Value::from(json));
        let declared = &self.declared;
        let eval = |engine: &mut Engine, rule: &str| {
            if !declared.contains(&rule) {
                return Ok(Value::Undefined);
            }
            engine
                .eval_rule(format!("data.baton.tools.{rule}"))
                .map_err(|e| {
                    format!("tool policy rule {rule} failed to evaluate ({e}); the call is denied")
                })
        };
        let reasons = |v: &Value| -> Vec<String> {
            match v {
                Value::Set(s) => s
                    .iter()
                    .map(|x| x.as_string().map(|s| s.to_string()).unwrap_or_default())
                    .collect(),
                _ => Vec::new(),
            }
        };
        let deny = match eval(&mut engine, "deny_call") {
            Ok(v) => reasons(&v),
            Err(e) => return Verdict::Deny(e),
        };
        if !deny.is_empty() {
            return Verdict::Deny(deny.join("; "));
        }
        let approval = match eval(&mut engine, "call_requires_approval") {
            Ok(v) => reasons(&v),
            Err(e) => return Verdict::Deny(e),
        };
        if !approval.is_empty() {
            return Verdict::RequireApproval(approval.join("; "));
        }
        match eval(&mut engine, "allow") {
            Ok(Value::Bool(true)) => Verdict::Allow,
            Ok(_) => Verdict::Deny(format!(
                "no rule of the tool policy allows role {} to call {} in environment {:?} (deny by default)",
                input.role, input.tool, input.environment
            )),
            Err(e) => Verdict::Deny(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call<'a>(
        tool: &'a str,
        role: &'a str,
        env: &'a str,
        args: &'a serde_json::Value,
    ) -> CallInput<'a> {
        CallInput {
            tool,
            side_effects: false,
            arguments: args,
            role,
            environment: env,
            task_type: "",
            tenant: "default",
        }
    }

    #[test]
    fn the_shipped_policy_allows_denies_and_asks() {
        let p = ToolPolicy::builtin().unwrap();
        let none = json!({});
        assert_eq!(
            p.evaluate(&call("query_assets", "cost", "production", &none)),
            Verdict::Allow
        );
        let Verdict::Deny(reason) = p.evaluate(&call(
            "run_code",
            "cost",
            "staging",
            &json!({"command": ["x"]}),
        )) else {
            panic!("cost may not run code")
        };
        assert!(reason.contains("may not call tool run_code"), "{reason}");
        assert!(matches!(
            p.evaluate(&call("read_file", "stranger", "", &none)),
            Verdict::Deny(_)
        ));
        let post = json!({"method": "POST", "url": "http://x"});
        assert!(matches!(
            p.evaluate(&call("http_request", "incident", "production", &post)),
            Verdict::RequireApproval(_)
        ));
        assert_eq!(
            p.evaluate(&call("http_request", "incident", "staging", &post)),
            Verdict::Allow
        );
    }

    #[test]
    fn a_policy_without_an_allow_rule_denies_everything() {
        let p = ToolPolicy::from_source("t.rego", "package baton.tools\n").unwrap();
        let none = json!({});
        let Verdict::Deny(reason) = p.evaluate(&call("read_file", "cost", "", &none)) else {
            panic!("deny by default")
        };
        assert!(reason.contains("deny by default"), "{reason}");
        assert!(ToolPolicy::from_source("t.rego", "package other\n").is_err());
        assert!(ToolPolicy::from_source("t.rego", "package baton.tools\nallow if {").is_err());
    }
}
