//! The report an agent delivers as an artifact of its plan: an answer, findings and
//! recommendations (the cost agent's "why did the bill jump", a compliance check's result).
//!
//! A report is the [`Artifact`] named [`REPORT_ARTIFACT`] (`report`) with media type
//! [`REPORT_MEDIA_TYPE`] (`application/json`) whose content is a JSON object:
//!
//! ```json
//! {"answer": "storage egress tripled on 12 May",
//!  "findings": ["bucket logs-eu is public", {"title": "egress 3x", "severity": "high"}],
//!  "recommendations": ["make logs-eu private"]}
//! ```
//!
//! `answer` is required and not blank; `findings` and `recommendations` are lists (missing
//! means empty) of strings or objects (an object's `title`, `summary`, `text` or
//! `description` is what [`item_text`] shows); other fields are kept and ignored. A plan whose
//! report does not parse is refused by validation, naming what is wrong ([`ReportError`]).
//!
//! A plan with no steps and a report is *report-only*: validation checks it like any plan
//! (policies see the parsed report), and execution completes it at once, without a rollout.

use crate::{Artifact, Plan};
use serde::{Deserialize, Serialize};

/// Name of the artifact that holds a plan's report.
pub const REPORT_ARTIFACT: &str = "report";

/// Media type of a report's content.
pub const REPORT_MEDIA_TYPE: &str = "application/json";

/// An agent's report (see the module doc for the JSON shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The answer to the task's question, in a few sentences. Required, not blank.
    pub answer: String,
    /// What the agent found: strings or objects, in the agent's order.
    #[serde(default)]
    pub findings: Vec<serde_json::Value>,
    /// What the agent recommends doing: strings or objects, in the agent's order.
    #[serde(default)]
    pub recommendations: Vec<serde_json::Value>,
}

/// Why an artifact named `report` is not a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The media type is not `application/json`.
    #[error("the report artifact has media type {0:?}; a report is application/json")]
    MediaType(String),
    /// The content is not a JSON document of the report's shape.
    #[error("the report artifact is not a report: {0}")]
    Shape(String),
}

impl Report {
    /// The report in `artifact` (which should be named [`REPORT_ARTIFACT`]).
    ///
    /// Errors: [`ReportError::MediaType`] unless the media type is `application/json`
    /// (parameters such as `; charset=utf-8` allowed); [`ReportError::Shape`] when the content
    /// is not JSON, not an object, has no string `answer` (or a blank one), or `findings` /
    /// `recommendations` are not lists.
    pub fn parse(artifact: &Artifact) -> Result<Report, ReportError> {
        let essence = artifact
            .media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != REPORT_MEDIA_TYPE {
            return Err(ReportError::MediaType(artifact.media_type.clone()));
        }
        Self::from_json(&artifact.content)
    }

    /// The report in a JSON document (see [`Report::parse`] for the errors).
    pub fn from_json(content: &[u8]) -> Result<Report, ReportError> {
        let value: serde_json::Value = serde_json::from_slice(content)
            .map_err(|e| ReportError::Shape(format!("its content is not JSON ({e})")))?;
        if !value.is_object() {
            return Err(ReportError::Shape(
                "its content is not a JSON object with an answer".into(),
            ));
        }
        let report: Report = serde_json::from_value(value).map_err(|e| {
            ReportError::Shape(format!(
                "{e}; expected {{\"answer\": string, \"findings\": [..], \"recommendations\": [..]}}"
            ))
        })?;
        if report.answer.trim().is_empty() {
            return Err(ReportError::Shape("its answer is empty".into()));
        }
        Ok(report)
    }

    /// The artifact carrying this report: name [`REPORT_ARTIFACT`], media type
    /// [`REPORT_MEDIA_TYPE`], the report as JSON.
    pub fn to_artifact(&self) -> Artifact {
        Artifact {
            name: REPORT_ARTIFACT.into(),
            media_type: REPORT_MEDIA_TYPE.into(),
            content: serde_json::to_vec_pretty(self).expect("a report serializes"),
            sandbox_run: None,
        }
    }
}

/// One finding or recommendation as a line of text: a string as it is; for an object, its
/// `title`, `summary`, `text`, `description`, `finding` or `recommendation` (the first that is
/// a string), prefixed by `[<severity>] ` when it has a string `severity`; else the item as
/// compact JSON.
pub fn item_text(item: &serde_json::Value) -> String {
    const TEXT_FIELDS: &[&str] = &[
        "title",
        "summary",
        "text",
        "description",
        "finding",
        "recommendation",
    ];
    match item {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(fields) => {
            let text = TEXT_FIELDS
                .iter()
                .find_map(|f| fields.get(*f).and_then(|v| v.as_str()));
            match text {
                Some(text) => match fields.get("severity").and_then(|v| v.as_str()) {
                    Some(severity) => format!("[{severity}] {text}"),
                    None => text.to_string(),
                },
                None => item.to_string(),
            }
        }
        other => other.to_string(),
    }
}

impl Plan {
    /// Number of steps over all phases: 0 means the plan changes nothing.
    pub fn step_count(&self) -> usize {
        self.phases.iter().map(|p| p.steps.len()).sum()
    }

    /// The artifact named [`REPORT_ARTIFACT`], if the plan has one (the first, if several).
    pub fn report_artifact(&self) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == REPORT_ARTIFACT)
    }

    /// True for a report-only plan: no steps, and a report artifact (parsed or not).
    pub fn is_report_only(&self) -> bool {
        self.step_count() == 0 && self.report_artifact().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn artifact(media_type: &str, content: &str) -> Artifact {
        Artifact {
            name: REPORT_ARTIFACT.into(),
            media_type: media_type.into(),
            content: content.as_bytes().to_vec(),
            sandbox_run: None,
        }
    }

    #[test]
    fn a_report_round_trips_through_its_artifact() {
        let report = Report {
            answer: "egress tripled".into(),
            findings: vec![
                json!("bucket public"),
                json!({"title": "3x", "severity": "high"}),
            ],
            recommendations: vec![json!("make it private")],
        };
        let a = report.to_artifact();
        assert_eq!(a.name, "report");
        assert_eq!(Report::parse(&a).unwrap(), report);
        let lenient = artifact(
            "application/json; charset=utf-8",
            r#"{"answer":"a","extra":1}"#,
        );
        let parsed = Report::parse(&lenient).unwrap();
        assert!(parsed.findings.is_empty() && parsed.recommendations.is_empty());
    }

    #[test]
    fn malformed_reports_say_what_is_wrong() {
        let cases = [
            ("text/plain", "{}", "media type \"text/plain\""),
            ("application/json", "not json", "not JSON"),
            ("application/json", "[1]", "not a JSON object"),
            (
                "application/json",
                r#"{"findings": []}"#,
                "missing field `answer`",
            ),
            ("application/json", r#"{"answer": "  "}"#, "answer is empty"),
            (
                "application/json",
                r#"{"answer": "a", "findings": "x"}"#,
                "expected a sequence",
            ),
        ];
        for (media_type, content, expected) in cases {
            let e = Report::parse(&artifact(media_type, content)).unwrap_err();
            assert!(e.to_string().contains(expected), "{content}: {e}");
        }
    }

    #[test]
    fn items_show_their_text() {
        assert_eq!(item_text(&json!("plain")), "plain");
        assert_eq!(
            item_text(&json!({"title": "egress", "severity": "high"})),
            "[high] egress"
        );
        assert_eq!(item_text(&json!({"description": "d"})), "d");
        assert_eq!(item_text(&json!({"cost": 3})), r#"{"cost":3}"#);
        assert_eq!(item_text(&json!(7)), "7");
    }

    #[test]
    fn report_only_means_no_steps_and_a_report() {
        let mut plan = Plan::default();
        assert!(!plan.is_report_only());
        plan.artifacts.push(artifact("application/json", "{}"));
        assert!(plan.is_report_only());
        plan.phases.push(crate::Phase {
            steps: vec![crate::Step::default()],
            ..Default::default()
        });
        assert_eq!(plan.step_count(), 1);
        assert!(!plan.is_report_only());
    }
}
