//! The task catalog: which agent roles and which environments this deployment knows.
//!
//! Configuration (`[catalog]`), not constants: the defaults are the twelve roles and three
//! environments of [`baton_proto::DEFAULT_ROLES`] and [`baton_proto::DEFAULT_ENVIRONMENTS`],
//! and a deployment may add its own (a role served by a plug-in agent, an environment such as
//! `qa`). It is checked once when the process starts ([`Catalog::validate`]); ingestion checks
//! triggers against it, decision routes only to its roles, the agent runner consumes one
//! subject per role, and `DecisionService.ListRoles` reports it.

use serde::{Deserialize, Serialize};

/// `[catalog]`: the roles tasks may be routed to and the environments they may target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Catalog {
    /// Agent roles, each one token of the subject `baton.agent.<role>` (lowercase letters,
    /// digits, `-` and `_`). Every role a decision rule names, including the rules' fallback
    /// role, must be listed here: decision refuses to start otherwise.
    pub roles: Vec<String>,
    /// Environments a task may target (`development`, `staging`, `production` by default);
    /// policies decide what each one allows.
    pub environments: Vec<String>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            roles: baton_proto::DEFAULT_ROLES
                .iter()
                .map(|r| r.to_string())
                .collect(),
            environments: baton_proto::DEFAULT_ENVIRONMENTS
                .iter()
                .map(|e| e.to_string())
                .collect(),
        }
    }
}

/// A catalog that cannot be used; the message names the key and the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid [catalog]: {0}")]
pub struct CatalogError(pub String);

impl Catalog {
    /// Checks that both lists are non-empty, without duplicates, and that every name is a
    /// single subject token of at most 64 bytes (`[a-z0-9_-]+`).
    pub fn validate(&self) -> Result<(), CatalogError> {
        for (key, names) in [
            ("catalog.roles", &self.roles),
            ("catalog.environments", &self.environments),
        ] {
            if names.is_empty() {
                return Err(CatalogError(format!(
                    "{key} is empty: list at least one name (or remove the key for the defaults)"
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for name in names {
                if !is_token(name) {
                    return Err(CatalogError(format!(
                        "{key} has {name:?}: use 1 to 64 lowercase letters, digits, '-' or '_'"
                    )));
                }
                if !seen.insert(name) {
                    return Err(CatalogError(format!("{key} lists {name:?} twice")));
                }
            }
        }
        Ok(())
    }

    /// True when `role` is one of [`Catalog::roles`].
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// True when `environment` is one of [`Catalog::environments`].
    pub fn has_environment(&self, environment: &str) -> bool {
        self.environments.iter().any(|e| e == environment)
    }

    /// The roles as one comma-separated line, for error messages.
    pub fn roles_text(&self) -> String {
        self.roles.join(", ")
    }

    /// The environments as one comma-separated line, for error messages.
    pub fn environments_text(&self) -> String {
        self.environments.join(", ")
    }
}

/// True for `[a-z0-9_-]{1,64}`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_twelve_roles_and_three_environments() {
        let c = Catalog::default();
        assert_eq!(c.roles.len(), 12);
        assert_eq!(c.environments, ["development", "staging", "production"]);
        c.validate().unwrap();
        assert!(c.has_role("drift") && !c.has_role("Drift"));
    }

    #[test]
    fn bad_catalogs_name_the_key_and_value() {
        let mut c = Catalog::default();
        c.roles.push("bad.role".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("catalog.roles") && e.contains("bad.role"), "{e}");
        let mut c = Catalog::default();
        c.environments.push("staging".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("twice") && e.contains("staging"), "{e}");
        let c = Catalog {
            roles: vec![],
            ..Catalog::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("empty"));
    }
}
