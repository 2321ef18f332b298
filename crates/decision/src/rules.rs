//! The rules tier: a TOML file of keyword and regex rules, checked once at load, that turns a
//! task's words into a [`Decision`]. The file format is documented in the built-in
//! `rules.toml` ([`DEFAULT_RULES`]).

use crate::Error;
use baton_proto::{Decision, DecisionTier, Risk, Task, TaskSpec};
use baton_runtime::catalog::Catalog;
use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// The built-in rules (`crates/decision/rules.toml`), used when no `rules_path` is configured.
pub const DEFAULT_RULES: &str = include_str!("../rules.toml");
/// Name under which the built-in rules appear in error messages.
pub const DEFAULT_RULES_NAME: &str = "<built-in rules.toml>";
/// Confidence of a single hit when neither the rule nor `[defaults]` sets one.
pub const DEFAULT_HIT_CONFIDENCE: f64 = 0.9;
/// Confidence added per hit after the first.
pub const EXTRA_HIT_CONFIDENCE: f64 = 0.03;
/// Highest confidence the rules tier gives.
pub const MAX_CONFIDENCE: f64 = 0.99;
/// Confidence of a fallback decision.
pub const FALLBACK_CONFIDENCE: f64 = 0.1;
/// `matched_by` of a fallback decision.
pub const FALLBACK_MATCHED_BY: &str = "fallback";

// ---- the file, as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    defaults: DefaultsFile,
    #[serde(default)]
    environments: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    targets: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    environment: String,
    #[serde(default = "default_min_confidence")]
    min_confidence: f64,
    #[serde(default = "default_hit_confidence")]
    confidence: f64,
    fallback: String,
    #[serde(default)]
    model_hints: Vec<String>,
}

fn default_hit_confidence() -> f64 {
    DEFAULT_HIT_CONFIDENCE
}

fn default_min_confidence() -> f64 {
    0.5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    role: String,
    task_type: String,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    risk: String,
    #[serde(default)]
    risk_by_environment: BTreeMap<String, String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    model_hints: Vec<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    confidence: Option<f64>,
}

// ---- compiled ----

/// A phrase or pattern and its compiled matcher.
#[derive(Debug, Clone)]
struct Matcher {
    /// As written in the file.
    source: String,
    regex: Regex,
}

impl Matcher {
    /// A case-insensitive phrase match on word boundaries; whitespace matches any whitespace.
    fn phrase(phrase: &str) -> Result<Matcher, String> {
        let words: Vec<&str> = phrase.split_whitespace().collect();
        if words.is_empty() {
            return Err("has an empty phrase: remove it".into());
        }
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let mut pattern = String::new();
        if is_word(phrase.trim().chars().next()) {
            pattern.push_str(r"\b");
        }
        pattern.push_str(
            &words
                .iter()
                .map(|w| regex::escape(w))
                .collect::<Vec<_>>()
                .join(r"\s+"),
        );
        if is_word(phrase.trim().chars().last()) {
            pattern.push_str(r"\b");
        }
        let regex = RegexBuilder::new(&pattern)
            .case_insensitive(true)
            .build()
            .map_err(|e| format!("phrase {phrase:?} does not compile: {e}"))?;
        Ok(Matcher {
            source: phrase.trim().to_string(),
            regex,
        })
    }

    /// A user regex, matched case-insensitively.
    fn pattern(pattern: &str) -> Result<Matcher, String> {
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("pattern {pattern:?} does not compile: {e}"))?;
        Ok(Matcher {
            source: pattern.to_string(),
            regex,
        })
    }
}

/// One routing rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name; becomes `Decision.matched_by`.
    pub name: String,
    /// Agent role it routes to (one of the catalog's roles).
    pub role: String,
    /// `TaskSpec.task_type`.
    pub task_type: String,
    /// Risk in any environment without an override.
    pub risk: Risk,
    /// Risk overrides by environment.
    pub risk_by_environment: BTreeMap<String, Risk>,
    /// Tools the agent may use.
    pub tools: Vec<String>,
    /// Asset group when the text names none.
    pub target: Option<String>,
    /// Preferred models (empty: the defaults').
    pub model_hints: Vec<String>,
    /// Parameters copied to the TaskSpec.
    pub parameters: BTreeMap<String, String>,
    /// Confidence of a single hit.
    pub confidence: f64,
    keywords: Vec<Matcher>,
    patterns: Vec<Matcher>,
}

impl Rule {
    /// The risk of this rule's work in `environment`.
    pub fn risk_for(&self, environment: &str) -> Risk {
        self.risk_by_environment
            .get(environment)
            .copied()
            .unwrap_or(self.risk)
    }
}

/// How well one rule matched a text.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleMatch {
    /// Index of the rule in [`RuleSet::rules`].
    pub rule: usize,
    /// The keywords and patterns that matched, as written in the file.
    pub hits: Vec<String>,
    /// `confidence + 0.03 × (hits − 1)`, at most 0.99.
    pub confidence: f64,
    /// Length in bytes of the longest matched text (breaks ties in favour of specific phrases).
    pub longest: usize,
}

/// Where a detected value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Set on the trigger.
    Trigger,
    /// This phrase of the text.
    Text(String),
    /// The rule's or the file's default.
    Default,
}

/// The checked rules file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// Where the rules came from (a path, or [`DEFAULT_RULES_NAME`]).
    pub source: String,
    /// Environment when none is named.
    pub default_environment: String,
    /// Matches below this fall back.
    pub min_confidence: f64,
    /// Index of the fallback rule in `rules`.
    fallback: usize,
    /// Model hints of rules that give none.
    pub default_model_hints: Vec<String>,
    environments: Vec<(String, Vec<Matcher>)>,
    targets: Vec<(String, Vec<Matcher>)>,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// The roles and environments the rules were checked against; explicit roles and
    /// environments on triggers are checked against it too.
    catalog: Catalog,
}

impl RuleSet {
    /// The built-in rules, checked against the default catalog.
    pub fn builtin() -> RuleSet {
        RuleSet::parse(DEFAULT_RULES, DEFAULT_RULES_NAME, &Catalog::default())
            .expect("the built-in rules.toml is valid")
    }

    /// The text of the built-in rules file (to derive variants from in tests and tools).
    pub fn builtin_text() -> &'static str {
        DEFAULT_RULES
    }

    /// The rules at `path`, or the built-in ones when `None`, checked against `catalog`.
    ///
    /// Errors: [`Error::ReadRules`] when the file cannot be read, [`Error::Rules`] naming the
    /// file, the rule and the problem when it does not check (the built-in rules too, when
    /// the catalog lacks a role or environment they name).
    pub fn load(path: Option<&Path>, catalog: &Catalog) -> Result<RuleSet, Error> {
        match path {
            None => RuleSet::parse(DEFAULT_RULES, DEFAULT_RULES_NAME, catalog),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::ReadRules {
                    path: path.to_path_buf(),
                    source,
                })?;
                RuleSet::parse(&text, &path.display().to_string(), catalog)
            }
        }
    }

    /// Parses and checks rules from TOML text against `catalog`; `source` names it in errors.
    ///
    /// Errors: [`Error::Rules`] with `source`, the rule's name and what is wrong.
    pub fn parse(text: &str, source: &str, catalog: &Catalog) -> Result<RuleSet, Error> {
        let fail = |problem: String| Error::Rules {
            file: source.to_string(),
            problem,
        };
        let file: RulesFile =
            toml::from_str(text).map_err(|e| fail(e.to_string().trim_end().to_string()))?;
        let d = &file.defaults;
        check_defaults(d, catalog).map_err(&fail)?;
        let environments = phrase_table("environments", &file.environments, |env| {
            if catalog.has_environment(env) {
                Ok(())
            } else {
                Err(format!(
                    "names {env:?}, which is not one of {}",
                    catalog.environments_text()
                ))
            }
        })
        .map_err(&fail)?;
        let targets = phrase_table("targets", &file.targets, |target| {
            if target.trim().is_empty() {
                Err("has an empty group name".into())
            } else {
                Ok(())
            }
        })
        .map_err(&fail)?;

        if file.rules.is_empty() {
            return Err(fail(
                "has no [[rules]]: add at least the fallback rule".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let name = r.name.trim().to_string();
            if name.is_empty() {
                return Err(fail(format!(
                    "rule #{} has an empty name: give it one",
                    i + 1
                )));
            }
            if !names.insert(name.clone()) {
                return Err(fail(format!(
                    "rule {name:?}: the name is used twice: rule names must be unique"
                )));
            }
            let rule = compile_rule(name.clone(), r, d.confidence, catalog)
                .map_err(|problem| fail(format!("rule {name:?}: {problem}")))?;
            rules.push(rule);
        }
        let fallback = rules
            .iter()
            .position(|r| r.name == d.fallback)
            .ok_or_else(|| {
                fail(format!(
                    "defaults.fallback names rule {:?}, which does not exist",
                    d.fallback
                ))
            })?;

        Ok(RuleSet {
            source: source.to_string(),
            default_environment: d.environment.clone(),
            min_confidence: d.min_confidence,
            fallback,
            default_model_hints: d.model_hints.clone(),
            environments,
            targets,
            rules,
            catalog: catalog.clone(),
        })
    }

    /// The rule used when nothing matches.
    pub fn fallback_rule(&self) -> &Rule {
        &self.rules[self.fallback]
    }

    /// The first rule routing to `role`.
    pub fn rule_for_role(&self, role: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.role == role)
    }

    /// Scores every rule against `text`; the best match, if any rule hit (whatever its
    /// confidence).
    pub fn best_match(&self, text: &str) -> Option<RuleMatch> {
        let mut best: Option<RuleMatch> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            let mut hits = Vec::new();
            let mut longest = 0;
            for m in rule.keywords.iter().chain(&rule.patterns) {
                if let Some(found) = m.regex.find(text) {
                    hits.push(m.source.clone());
                    longest = longest.max(found.len());
                }
            }
            if hits.is_empty() {
                continue;
            }
            let confidence = (rule.confidence + EXTRA_HIT_CONFIDENCE * (hits.len() - 1) as f64)
                .min(MAX_CONFIDENCE);
            let candidate = RuleMatch {
                rule: i,
                hits,
                confidence,
                longest,
            };
            let better = match &best {
                None => true,
                Some(b) => {
                    (
                        candidate.confidence,
                        candidate.hits.len(),
                        candidate.longest,
                    )
                        .partial_cmp(&(b.confidence, b.hits.len(), b.longest))
                        == Some(std::cmp::Ordering::Greater)
                }
            };
            if better {
                best = Some(candidate);
            }
        }
        best
    }

    /// The environment a text mentions first, with the phrase that named it.
    pub fn detect_environment(&self, text: &str) -> Option<(String, String)> {
        first_mention(&self.environments, text)
    }

    /// The asset group a text mentions first, with the phrase that named it.
    pub fn detect_target(&self, text: &str) -> Option<(String, String)> {
        first_mention(&self.targets, text)
    }

    /// The decision for an explicit role on the trigger (tier EXPLICIT, confidence 1.0), or
    /// `None` when the trigger names no role.
    ///
    /// Errors: [`Error::UnknownRole`].
    pub fn explicit(&self, task: &Task) -> Result<Option<Decision>, Error> {
        let trigger = trigger_of(task)?;
        let role = trigger.role.trim().to_ascii_lowercase();
        if role.is_empty() {
            return Ok(None);
        }
        if !self.catalog.has_role(&role) {
            return Err(Error::UnknownRole {
                role: trigger.role.clone(),
                known: self.catalog.roles_text(),
            });
        }
        let (spec, context) = self.spec_for_role(task, &role)?;
        let matched_by = self
            .rule_for_role(&role)
            .map(|r| r.name.clone())
            .unwrap_or_else(|| role.clone());
        Ok(Some(Decision {
            spec: Some(TaskSpec {
                role: role.clone(),
                ..spec
            }),
            confidence: 1.0,
            tier: DecisionTier::Explicit.into(),
            matched_by,
            explanation: format!("role {role:?} requested by the trigger; {context}"),
        }))
    }

    /// The TaskSpec for routing `task` to `role` (a catalog role), and a description of where
    /// its values came from: the role's first rule supplies task type, tools and risk; a role
    /// no rule names gets no tools and medium risk. Used by the tiers that choose a role
    /// without a rule (the embedding classifier, a model, an operator).
    ///
    /// Errors: [`Error::UnknownEnvironment`], [`Error::InvalidRequest`].
    pub fn spec_for_role(&self, task: &Task, role: &str) -> Result<(TaskSpec, String), Error> {
        let trigger = trigger_of(task)?;
        let role = role.to_string();
        let (spec, context) = match self.rule_for_role(&role) {
            Some(rule) => {
                let (spec, context) = self.spec(rule, task)?;
                (
                    spec,
                    format!(
                        "rule {:?} supplies task type and tools; {context}",
                        rule.name
                    ),
                )
            }
            None => {
                // A valid role with no rule: route it with what the trigger says.
                let (environment, env_from) = self.environment(task)?;
                let (target, target_from) = self.target(None, &trigger.text);
                let spec = TaskSpec {
                    task_id: task.task_id.clone(),
                    task_type: role.clone(),
                    role: role.clone(),
                    tools: Vec::new(),
                    risk: Risk::Medium.into(),
                    environment: environment.clone(),
                    target: target.clone(),
                    intent: trigger.text.clone(),
                    model_hints: self.default_model_hints.clone(),
                    parameters: trigger.labels.clone(),
                };
                let context = format!(
                    "no rule for this role, so no tools; {}",
                    describe(&environment, &env_from, &target, &target_from, Risk::Medium)
                );
                (spec, context)
            }
        };
        Ok((
            TaskSpec {
                role: role.clone(),
                ..spec
            },
            context,
        ))
    }

    /// The best rule match as a decision (tier RULES), whatever its confidence; `None` when no
    /// rule hit.
    ///
    /// Errors: [`Error::UnknownEnvironment`], [`Error::InvalidRequest`].
    pub fn matched(&self, task: &Task) -> Result<Option<Decision>, Error> {
        let trigger = trigger_of(task)?;
        let Some(m) = self.best_match(&trigger.text) else {
            return Ok(None);
        };
        let rule = &self.rules[m.rule];
        let (spec, context) = self.spec(rule, task)?;
        let hits = m
            .hits
            .iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Some(Decision {
            spec: Some(spec),
            confidence: m.confidence,
            tier: DecisionTier::Rules as i32,
            matched_by: rule.name.clone(),
            explanation: format!(
                "rule {:?} matched {hits} (confidence {:.2}); {context}",
                rule.name, m.confidence
            ),
        }))
    }

    /// The fallback decision (tier RULES, matched_by `fallback`, low confidence). `best` is the
    /// most confident decision that was not confident enough, if any, for the explanation.
    ///
    /// Errors: [`Error::UnknownEnvironment`], [`Error::InvalidRequest`].
    pub fn fallback(&self, task: &Task, best: Option<&Decision>) -> Result<Decision, Error> {
        let rule = self.fallback_rule();
        let (spec, context) = self.spec(rule, task)?;
        let mut explanation = format!("no rule matched; routed to the {}", rule.role);
        if let Some(b) = best {
            explanation.push_str(&format!(
                " (best candidate {:?} scored {:.2}, below the minimum {:.2})",
                b.matched_by, b.confidence, self.min_confidence
            ));
        }
        Ok(Decision {
            spec: Some(spec),
            confidence: FALLBACK_CONFIDENCE,
            tier: DecisionTier::Rules as i32,
            matched_by: FALLBACK_MATCHED_BY.to_string(),
            explanation: format!("{explanation}; {context}"),
        })
    }

    /// The rules tier on its own: explicit role, else the best confident match, else the
    /// fallback.
    ///
    /// Errors: [`Error::UnknownRole`], [`Error::UnknownEnvironment`], [`Error::InvalidRequest`].
    pub fn decide(&self, task: &Task) -> Result<Decision, Error> {
        check_task(task)?;
        if let Some(d) = self.explicit(task)? {
            return Ok(d);
        }
        match self.matched(task)? {
            Some(d) if d.confidence >= self.min_confidence => Ok(d),
            best => self.fallback(task, best.as_ref()),
        }
    }

    /// The TaskSpec `rule` makes of `task`, and a description of where its values came from.
    fn spec(&self, rule: &Rule, task: &Task) -> Result<(TaskSpec, String), Error> {
        let trigger = trigger_of(task)?;
        let (environment, env_from) = self.environment(task)?;
        let (target, target_from) = self.target(rule.target.as_deref(), &trigger.text);
        let risk = rule.risk_for(&environment);
        let mut parameters: std::collections::BTreeMap<String, String> = rule
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        parameters.extend(trigger.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let model_hints = if rule.model_hints.is_empty() {
            self.default_model_hints.clone()
        } else {
            rule.model_hints.clone()
        };
        let spec = TaskSpec {
            task_id: task.task_id.clone(),
            task_type: rule.task_type.clone(),
            role: rule.role.clone(),
            tools: rule.tools.clone(),
            risk: risk as i32,
            environment: environment.clone(),
            target: target.clone(),
            intent: trigger.text.clone(),
            model_hints,
            parameters,
        };
        Ok((
            spec,
            describe(&environment, &env_from, &target, &target_from, risk),
        ))
    }

    /// The trigger's environment, else the first one the text mentions, else the default.
    fn environment(&self, task: &Task) -> Result<(String, Found), Error> {
        let trigger = trigger_of(task)?;
        let explicit = trigger.environment.trim().to_ascii_lowercase();
        if !explicit.is_empty() {
            if !self.catalog.has_environment(&explicit) {
                return Err(Error::UnknownEnvironment {
                    environment: trigger.environment.clone(),
                    known: self.catalog.environments_text(),
                });
            }
            return Ok((explicit, Found::Trigger));
        }
        Ok(match self.detect_environment(&trigger.text) {
            Some((env, phrase)) => (env, Found::Text(phrase)),
            None => (self.default_environment.clone(), Found::Default),
        })
    }

    /// The asset group the text names first, else the rule's, else none.
    fn target(&self, rule_target: Option<&str>, text: &str) -> (String, Found) {
        match self.detect_target(text) {
            Some((target, phrase)) => (target, Found::Text(phrase)),
            None => (rule_target.unwrap_or_default().to_string(), Found::Default),
        }
    }
}

/// The trigger of `task`.
fn trigger_of(task: &Task) -> Result<&baton_proto::Trigger, Error> {
    task.trigger
        .as_ref()
        .ok_or_else(|| Error::InvalidRequest("the task has no trigger".into()))
}

/// Checks `[defaults]`: a catalog environment, a `min_confidence` in 0..=1 and a `confidence`
/// in (0, 0.99].
fn check_defaults(d: &DefaultsFile, catalog: &Catalog) -> Result<(), String> {
    if !catalog.has_environment(&d.environment) {
        return Err(format!(
            "defaults.environment {:?} is not one of {}",
            d.environment,
            catalog.environments_text()
        ));
    }
    if !(0.0..=1.0).contains(&d.min_confidence) {
        return Err(format!(
            "defaults.min_confidence {} must be between 0 and 1",
            d.min_confidence
        ));
    }
    check_hit_confidence("defaults.confidence", d.confidence)
}

/// Checks a single hit's score (`confidence` of a rule or of `[defaults]`, named `key`): above 0
/// and at most [`MAX_CONFIDENCE`].
fn check_hit_confidence(key: &str, confidence: f64) -> Result<(), String> {
    if !(confidence > 0.0 && confidence <= MAX_CONFIDENCE) {
        return Err(format!(
            "{key} {confidence} must be above 0 and at most {MAX_CONFIDENCE}"
        ));
    }
    Ok(())
}

/// Compiles a `[table]` of name → phrases (`[environments]`, `[targets]`), after `check_name`
/// accepts each name; errors start with `[table]`.
fn phrase_table(
    table: &str,
    entries: &BTreeMap<String, Vec<String>>,
    check_name: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<(String, Vec<Matcher>)>, String> {
    let mut compiled = Vec::with_capacity(entries.len());
    for (name, phrases) in entries {
        check_name(name).map_err(|e| format!("[{table}] {e}"))?;
        let matchers = phrases
            .iter()
            .map(|p| Matcher::phrase(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("[{table}] {name} {e}"))?;
        compiled.push((name.clone(), matchers));
    }
    Ok(compiled)
}

/// Checks and compiles one `[[rules]]` entry named `name` (already trimmed and unique); the
/// error says what is wrong with it, without the rule's name.
fn compile_rule(
    name: String,
    r: RuleFile,
    default_confidence: f64,
    catalog: &Catalog,
) -> Result<Rule, String> {
    if !catalog.has_role(&r.role) {
        return Err(format!(
            "role {:?} is not in [catalog] roles (use one of {}, or add it there)",
            r.role,
            catalog.roles_text()
        ));
    }
    if r.task_type.trim().is_empty() {
        return Err("task_type is empty: name the kind of work".into());
    }
    let risk = parse_risk(&r.risk).map_err(|e| format!("risk {e}"))?;
    let mut risk_by_environment = BTreeMap::new();
    for (env, risk) in &r.risk_by_environment {
        if !catalog.has_environment(env) {
            return Err(format!(
                "risk_by_environment names {env:?}, which is not one of {}",
                catalog.environments_text()
            ));
        }
        let risk = parse_risk(risk).map_err(|e| format!("risk_by_environment.{env} {e}"))?;
        risk_by_environment.insert(env.clone(), risk);
    }
    let confidence = r.confidence.unwrap_or(default_confidence);
    check_hit_confidence("confidence", confidence)?;
    let keywords = r
        .keywords
        .iter()
        .map(|k| Matcher::phrase(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("keywords {e}"))?;
    let patterns = r
        .patterns
        .iter()
        .map(|p| Matcher::pattern(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(t) = &r.target
        && t.trim().is_empty()
    {
        return Err("target is empty: name an asset group or leave it out".into());
    }
    Ok(Rule {
        name,
        role: r.role,
        task_type: r.task_type.trim().to_string(),
        risk,
        risk_by_environment,
        tools: r.tools,
        target: r.target,
        model_hints: r.model_hints,
        parameters: r.parameters,
        confidence,
        keywords,
        patterns,
    })
}

/// Checks what every tier needs: a trigger with text.
pub(crate) fn check_task(task: &Task) -> Result<(), Error> {
    if trigger_of(task)?.text.trim().is_empty() {
        return Err(Error::InvalidRequest(
            "text is empty: say what you want done, e.g. \"Fix drift on production web servers\""
                .into(),
        ));
    }
    Ok(())
}

fn parse_risk(s: &str) -> Result<Risk, String> {
    Risk::parse(s.trim()).ok_or_else(|| format!("{s:?} is not one of low, medium, high, critical"))
}

/// The group whose phrase occurs earliest in `text` (the longer phrase on a tie).
fn first_mention(groups: &[(String, Vec<Matcher>)], text: &str) -> Option<(String, String)> {
    let mut best: Option<(usize, usize, &str, &str)> = None; // (start, -len via cmp, group, phrase)
    for (group, matchers) in groups {
        for m in matchers {
            if let Some(found) = m.regex.find(text) {
                let better = match best {
                    None => true,
                    Some((start, len, _, _)) => {
                        found.start() < start || (found.start() == start && found.len() > len)
                    }
                };
                if better {
                    best = Some((found.start(), found.len(), group, &m.source));
                }
            }
        }
    }
    best.map(|(_, _, group, phrase)| (group.to_string(), phrase.to_string()))
}

fn describe(
    environment: &str,
    env_from: &Found,
    target: &str,
    target_from: &Found,
    risk: Risk,
) -> String {
    let env = match env_from {
        Found::Trigger => format!("environment {environment} (from the trigger)"),
        Found::Text(p) => format!("environment {environment} (from {p:?} in the text)"),
        Found::Default => format!("environment {environment} (default)"),
    };
    let target = match (target, target_from) {
        ("", _) => "no target named".to_string(),
        (t, Found::Text(p)) => format!("target {t} (from {p:?})"),
        (t, _) => format!("target {t} (the rule's default)"),
    };
    format!("{env}; {target}; risk {}", risk.label())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::Trigger;

    fn task(text: &str) -> Task {
        Task {
            task_id: "t-1".into(),
            tenant: "acme".into(),
            trigger: Some(Trigger {
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with(text: &str, f: impl FnOnce(&mut Trigger)) -> Task {
        let mut t = task(text);
        f(t.trigger.as_mut().unwrap());
        t
    }

    fn spec(d: &Decision) -> &TaskSpec {
        d.spec.as_ref().unwrap()
    }

    #[test]
    fn fix_drift_on_production_web_servers() {
        let d = RuleSet::builtin()
            .decide(&task("Fix drift on production web servers"))
            .unwrap();
        let s = spec(&d);
        assert_eq!(s.role, "drift");
        assert_eq!(s.task_type, "drift_remediation");
        assert_eq!(s.environment, "production");
        assert_eq!(s.risk(), Risk::High);
        assert_eq!(s.target, "web");
        assert_eq!(s.intent, "Fix drift on production web servers");
        assert_eq!(s.task_id, "t-1");
        assert!(s.tools.contains(&"asset.put_config".to_string()));
        assert_eq!(d.tier(), DecisionTier::Rules);
        assert_eq!(d.matched_by, "drift");
        // The shipped rules score a single hit at `defaults.confidence`, 0.6.
        assert!((d.confidence - 0.6).abs() < 1e-9, "{}", d.confidence);
        assert!(
            d.explanation.contains("rule \"drift\" matched \"drift\""),
            "{}",
            d.explanation
        );
        assert!(
            d.explanation.contains("\"production\" in the text"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn every_role_has_an_example_that_routes_to_it() {
        let rules = RuleSet::builtin();
        let examples = [
            ("drift", "Fix drift on production web servers"),
            ("patch", "Patch the kernel on staging web servers"),
            (
                "compliance",
                "Run a CIS benchmark compliance audit on the databases",
            ),
            ("incident", "The checkout site is down with 500 errors"),
            ("dr", "Run a DR drill with failover to the replica"),
            ("cost", "Reduce cloud spend by rightsizing idle resources"),
            ("security", "Harden the firewall and close open ports"),
            ("image", "Rebuild the golden image with the new base image"),
            ("sop", "Follow the runbook to rotate logs on the web tier"),
            ("adapter", "Build a connector to sync with ServiceNow"),
            (
                "codegen",
                "Write a script that generates terraform for the web tier",
            ),
            ("assistant", "Proofread this paragraph for me"),
        ];
        let mut covered: Vec<&str> = examples.iter().map(|(r, _)| *r).collect();
        covered.sort();
        let mut all = baton_proto::DEFAULT_ROLES.to_vec();
        all.sort();
        assert_eq!(covered, all, "one example per role");
        for (role, text) in examples {
            let d = rules.decide(&task(text)).unwrap();
            assert_eq!(spec(&d).role, role, "{text:?}: {}", d.explanation);
            assert_ne!(
                d.matched_by, FALLBACK_MATCHED_BY,
                "{text:?} must match a rule, not fall back"
            );
        }
    }

    #[test]
    fn more_hits_more_confidence_capped() {
        let rules = RuleSet::builtin();
        let one = rules.best_match("fix the drift").unwrap();
        let three = rules
            .best_match("drift: the config is out of sync, a config mismatch")
            .unwrap();
        assert!(three.confidence > one.confidence);
        assert_eq!(three.hits.len(), 3);
        assert!((three.confidence - (one.confidence + 2.0 * EXTRA_HIT_CONFIDENCE)).abs() < 1e-9);
        // Rules scoring a hit at 0.95: four hits would be 1.04, capped at 0.99.
        let sure = RuleSet::parse(
            &DEFAULT_RULES.replace("\nconfidence = 0.6\n", "\nconfidence = 0.95\n"),
            "sure.toml",
            &Catalog::default(),
        )
        .unwrap();
        let many = sure
            .best_match("drift drifted drifting out of sync config mismatch configuration mismatch desired state reconcile")
            .unwrap();
        assert!((many.confidence - MAX_CONFIDENCE).abs() < 1e-9);
    }

    #[test]
    fn keywords_match_whole_words_only() {
        let rules = RuleSet::builtin();
        // "db" must not match inside "dbadmin"; "dev" not inside "devices".
        assert_eq!(rules.detect_target("ask the dbadmin"), None);
        assert_eq!(rules.detect_environment("list devices"), None);
        assert_eq!(
            rules.detect_target("restart the DB now"),
            Some(("db".into(), "db".into()))
        );
        // Whitespace in a phrase matches any whitespace, case-insensitively.
        assert_eq!(
            rules.detect_target("the Web\n  Servers"),
            Some(("web".into(), "web servers".into()))
        );
    }

    #[test]
    fn environment_comes_from_trigger_then_text_then_default() {
        let rules = RuleSet::builtin();
        let explicit = with("Fix drift in prod", |t| t.environment = "staging".into());
        assert_eq!(
            spec(&rules.decide(&explicit).unwrap()).environment,
            "staging"
        );
        let d = rules.decide(&task("Fix drift in prod")).unwrap();
        assert_eq!(spec(&d).environment, "production");
        assert_eq!(spec(&d).risk(), Risk::High);
        let d = rules.decide(&task("Fix drift on stage")).unwrap();
        assert_eq!(spec(&d).environment, "staging");
        assert_eq!(spec(&d).risk(), Risk::Medium);
        let d = rules.decide(&task("Fix drift")).unwrap();
        assert_eq!(spec(&d).environment, "development");
        assert_eq!(spec(&d).risk(), Risk::Low, "development override");
        let bad = with("Fix drift", |t| t.environment = "prod".into());
        assert!(
            matches!(rules.decide(&bad), Err(Error::UnknownEnvironment { environment: e, .. }) if e == "prod")
        );
    }

    #[test]
    fn explicit_role_wins_with_full_confidence() {
        let rules = RuleSet::builtin();
        let t = with("Fix drift on production web servers", |t| {
            t.role = "patch".into()
        });
        let d = rules.decide(&t).unwrap();
        assert_eq!(d.tier(), DecisionTier::Explicit);
        assert_eq!(d.confidence, 1.0);
        assert_eq!(spec(&d).role, "patch");
        assert_eq!(spec(&d).task_type, "patching");
        assert_eq!(spec(&d).environment, "production");
        assert!(
            d.explanation
                .starts_with("role \"patch\" requested by the trigger"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn unknown_explicit_role_is_an_error_naming_the_roles() {
        let err = RuleSet::builtin()
            .decide(&with("x", |t| t.role = "wizard".into()))
            .unwrap_err();
        assert!(matches!(err, Error::UnknownRole { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("unknown role \"wizard\"") && msg.contains("drift, patch"),
            "{msg}"
        );
    }

    #[test]
    fn nothing_matching_falls_back_to_the_assistant() {
        let d = RuleSet::builtin()
            .decide(&task("Bananas are yellow"))
            .unwrap();
        assert_eq!(spec(&d).role, "assistant");
        assert_eq!(d.tier(), DecisionTier::Rules);
        assert_eq!(d.matched_by, FALLBACK_MATCHED_BY);
        assert!(d.confidence < 0.5);
        assert!(
            d.explanation
                .starts_with("no rule matched; routed to the assistant"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn weak_matches_below_min_confidence_fall_back_and_say_so() {
        let text = DEFAULT_RULES.replace("min_confidence = 0.5", "min_confidence = 0.95");
        let rules = RuleSet::parse(&text, "strict.toml", &Catalog::default()).unwrap();
        let d = rules.decide(&task("Fix drift")).unwrap();
        assert_eq!(d.matched_by, FALLBACK_MATCHED_BY);
        assert!(
            d.explanation
                .contains("best candidate \"drift\" scored 0.60"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn labels_become_parameters() {
        let t = with("Fix drift", |t| {
            t.labels.insert("team".into(), "web".into());
        });
        let d = RuleSet::builtin().decide(&t).unwrap();
        assert_eq!(
            spec(&d).parameters.get("team").map(String::as_str),
            Some("web")
        );
    }

    #[test]
    fn empty_text_is_invalid() {
        assert!(matches!(
            RuleSet::builtin().decide(&task("  ")),
            Err(Error::InvalidRequest(_))
        ));
    }

    fn bad(rules: &str) -> String {
        let text = format!(
            "[defaults]\nenvironment = \"development\"\nfallback = \"assistant\"\n\
             [[rules]]\nname = \"assistant\"\nrole = \"assistant\"\ntask_type = \"assistance\"\nrisk = \"low\"\n{rules}"
        );
        RuleSet::parse(&text, "custom.toml", &Catalog::default())
            .unwrap_err()
            .to_string()
    }

    fn rule(body: &str) -> String {
        format!("[[rules]]\nname = \"broken\"\ntask_type = \"t\"\n{body}\n")
    }

    #[test]
    fn bad_rules_files_give_named_errors() {
        let e = bad(&rule("role = \"wizard\"\nrisk = \"low\""));
        assert!(
            e.starts_with(
                "rules file custom.toml: rule \"broken\": role \"wizard\" is not in [catalog] roles"
            ),
            "{e}"
        );

        let e = bad(&rule(
            "role = \"drift\"\nrisk = \"low\"\npatterns = [\"(unclosed\"]",
        ));
        assert!(
            e.starts_with(
                "rules file custom.toml: rule \"broken\": pattern \"(unclosed\" does not compile"
            ),
            "{e}"
        );

        let e = bad(&rule("role = \"drift\"\nrisk = \"huge\""));
        assert!(
            e.contains("rule \"broken\": risk \"huge\" is not one of low, medium, high, critical"),
            "{e}"
        );

        let e = bad(&rule(
            "role = \"drift\"\nrisk = \"low\"\nrisk_by_environment = { prod = \"high\" }",
        ));
        assert!(
            e.contains("rule \"broken\": risk_by_environment names \"prod\""),
            "{e}"
        );

        let e = bad(&rule(
            "role = \"drift\"\nrisk = \"low\"\nkeywords = [\"  \"]",
        ));
        assert!(
            e.contains("rule \"broken\": keywords has an empty phrase"),
            "{e}"
        );

        let e = bad(
            "[[rules]]\nname = \"assistant\"\nrole = \"assistant\"\ntask_type = \"x\"\nrisk = \"low\"\n",
        );
        assert!(
            e.contains("rule \"assistant\": the name is used twice"),
            "{e}"
        );

        let e = bad(&rule(
            "role = \"drift\"\nrisk = \"low\"\nkeyword = [\"typo\"]",
        ));
        assert!(
            e.starts_with("rules file custom.toml: ") && e.contains("unknown field `keyword`"),
            "{e}"
        );

        let e = RuleSet::parse("[defaults]\nenvironment = \"development\"\nfallback = \"nobody\"\n[[rules]]\nname = \"a\"\nrole = \"assistant\"\ntask_type = \"a\"\nrisk = \"low\"\n", "f.toml", &Catalog::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("defaults.fallback names rule \"nobody\", which does not exist"),
            "{e}"
        );

        let e = RuleSet::parse(
            "[defaults]\nenvironment = \"prod\"\nfallback = \"a\"\n",
            "f.toml",
            &Catalog::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("defaults.environment \"prod\" is not one of"),
            "{e}"
        );

        let e = RuleSet::parse(
            "[defaults]\nenvironment = \"development\"\nconfidence = 1.5\nfallback = \"a\"\n",
            "f.toml",
            &Catalog::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("defaults.confidence 1.5 must be above 0 and at most 0.99"),
            "{e}"
        );
    }

    #[test]
    fn missing_rules_file_names_the_path() {
        let err = RuleSet::load(
            Some(Path::new("/nonexistent/rules.toml")),
            &Catalog::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/rules.toml"), "{err}");
    }
}
