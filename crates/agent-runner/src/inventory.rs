//! The asset inventory the drift runbook reads (TOML; format in the crate docs).

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Default path of an asset's configuration endpoint.
pub const DEFAULT_CONFIG_PATH: &str = "/config";
/// Default path of an asset's health endpoint.
pub const DEFAULT_HEALTH_PATH: &str = "/health";

/// A parsed and checked inventory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Asset groups by name (`web`).
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// The assets, each in one group.
    #[serde(default)]
    pub assets: Vec<InventoryAsset>,
}

/// An asset group: what its members are and how they should be configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Kind of the member assets (`web_server`), copied to `Asset.kind`.
    #[serde(default)]
    pub kind: String,
    /// The desired configuration. Strings; integers, floats and booleans are accepted and
    /// turned into their text (`8` → `"8"`).
    #[serde(deserialize_with = "string_map")]
    pub golden: BTreeMap<String, String>,
    /// Path of the configuration endpoint, appended to the asset's address.
    #[serde(default = "default_config_path")]
    pub config_path: String,
    /// Path of the health endpoint, appended to the asset's address.
    #[serde(default = "default_health_path")]
    pub health_path: String,
}

/// One asset.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryAsset {
    /// Unique id (`web-01`).
    pub id: String,
    /// Display name; the id when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Group name; must be a key of `groups`.
    pub group: String,
    /// `development`, `staging` or `production`.
    pub environment: String,
    /// Base URL (`http://127.0.0.1:38211`), without a trailing slash.
    pub address: String,
    /// Free-form labels, copied to `Asset.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_config_path() -> String {
    DEFAULT_CONFIG_PATH.into()
}

fn default_health_path() -> String {
    DEFAULT_HEALTH_PATH.into()
}

fn string_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

impl Inventory {
    /// Reads and checks the inventory at `path`. Errors are messages naming the file.
    pub async fn load(path: &Path) -> Result<Inventory, String> {
        let text = tokio::fs::read_to_string(path).await.map_err(|e| {
            format!(
                "cannot read inventory {}: {e}; write it (agents.inventory_path) before submitting tasks",
                path.display()
            )
        })?;
        Inventory::parse(&text).map_err(|e| format!("invalid inventory {}: {e}", path.display()))
    }

    /// Parses and checks an inventory document.
    pub fn parse(text: &str) -> Result<Inventory, String> {
        let inv: Inventory = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {}", e.message())
            }
            None => e.message().to_string(),
        })?;
        inv.check()?;
        Ok(inv)
    }

    fn check(&self) -> Result<(), String> {
        for (name, g) in &self.groups {
            if g.golden.is_empty() {
                return Err(format!("group {name:?} has an empty golden configuration"));
            }
            for (field, p) in [
                ("config_path", &g.config_path),
                ("health_path", &g.health_path),
            ] {
                if !p.starts_with('/') {
                    return Err(format!("group {name:?}: {field} {p:?} must start with '/'"));
                }
            }
        }
        let mut ids = BTreeSet::new();
        for a in &self.assets {
            if a.id.trim().is_empty() {
                return Err("an asset has an empty id".into());
            }
            if !ids.insert(a.id.as_str()) {
                return Err(format!("asset id {:?} appears twice", a.id));
            }
            if !self.groups.contains_key(&a.group) {
                return Err(format!(
                    "asset {:?} names unknown group {:?}",
                    a.id, a.group
                ));
            }
            if !(a.address.starts_with("http://") || a.address.starts_with("https://")) {
                return Err(format!(
                    "asset {:?}: address {:?} must be an http:// or https:// URL",
                    a.id, a.address
                ));
            }
        }
        Ok(())
    }

    /// Group names, comma-separated (for messages).
    pub fn group_names(&self) -> String {
        self.groups.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"
[groups.web]
kind = "web_server"
golden = { nginx_version = "1.24.0", tls_min_version = "1.2", worker_processes = 8 }

[[assets]]
id = "web-01"
group = "web"
environment = "production"
address = "http://127.0.0.1:38211"
labels = { rack = "a" }
"#;

    #[test]
    fn parses_the_fleet_format_with_defaults() {
        let inv = Inventory::parse(FLEET).unwrap();
        let g = &inv.groups["web"];
        assert_eq!(g.golden["worker_processes"], "8");
        assert_eq!(g.config_path, "/config");
        assert_eq!(g.health_path, "/health");
        assert_eq!(inv.assets[0].labels["rack"], "a");
    }

    #[test]
    fn rejects_unknown_groups_duplicates_and_bad_addresses() {
        let unknown = FLEET.replace("group = \"web\"", "group = \"db\"");
        assert!(
            Inventory::parse(&unknown)
                .unwrap_err()
                .contains("unknown group \"db\"")
        );
        let dup = format!(
            "{FLEET}\n[[assets]]\nid = \"web-01\"\ngroup = \"web\"\nenvironment = \"production\"\naddress = \"http://x\"\n"
        );
        assert!(
            Inventory::parse(&dup)
                .unwrap_err()
                .contains("appears twice")
        );
        let bad = FLEET.replace("http://127.0.0.1:38211", "127.0.0.1:38211");
        assert!(Inventory::parse(&bad).unwrap_err().contains("http://"));
        assert!(Inventory::parse("groups = 3").is_err());
    }
}
