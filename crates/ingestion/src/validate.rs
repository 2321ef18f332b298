//! Trigger validation and normalisation, shared by the NATS consumer and the gRPC front: the
//! same trigger is accepted or refused with the same reason whichever way it came in.

use crate::Config;
use baton_proto::Trigger;
use baton_runtime::catalog::Catalog;

/// Longest accepted idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Checks `trigger` against `config`'s limits and the `catalog`'s roles and environments, and
/// normalises it in place: surrounding whitespace is trimmed from the text, environment, role
/// and key, and environment and role are lowercased.
///
/// Errors: a lowercase message saying what was wrong and what to do, e.g.
/// `unknown environment "prod": use development, staging or production`.
pub fn normalise(trigger: &mut Trigger, config: &Config, catalog: &Catalog) -> Result<(), String> {
    let text = trigger.text.trim();
    if text.is_empty() {
        return Err(
            "text is empty: say what you want done, e.g. \"Fix drift on production web servers\""
                .into(),
        );
    }
    if text.len() > config.max_text_bytes {
        return Err(format!(
            "text is {} bytes, more than the limit of {} bytes: shorten it",
            text.len(),
            config.max_text_bytes
        ));
    }
    trigger.text = text.to_string();

    let environment = trigger.environment.trim().to_ascii_lowercase();
    if !environment.is_empty() && !catalog.has_environment(&environment) {
        return Err(format!(
            "unknown environment {:?}: use {}, or leave it empty to let the rules decide",
            trigger.environment,
            or_list(&catalog.environments)
        ));
    }
    trigger.environment = environment;

    let role = trigger.role.trim().to_ascii_lowercase();
    if !role.is_empty() && !catalog.has_role(&role) {
        return Err(format!(
            "unknown role {:?}: use one of {}, or leave it empty to let the rules decide",
            trigger.role,
            catalog.roles_text()
        ));
    }
    trigger.role = role;

    let key = trigger.idempotency_key.trim();
    if key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(format!(
            "idempotency_key is {} characters, more than the limit of {MAX_IDEMPOTENCY_KEY_CHARS}: use a shorter key (a UUID or a hash)",
            key.chars().count()
        ));
    }
    trigger.idempotency_key = key.to_string();

    if trigger.labels.len() > config.max_labels {
        return Err(format!(
            "{} labels, more than the limit of {}: drop some",
            trigger.labels.len(),
            config.max_labels
        ));
    }
    for (k, v) in &trigger.labels {
        if k.trim().is_empty() {
            return Err("a label has an empty key: give every label a name".into());
        }
        if k.len() > config.max_label_key_bytes {
            return Err(format!(
                "label key {:?} is {} bytes, more than the limit of {}: shorten it",
                truncate(k, 40),
                k.len(),
                config.max_label_key_bytes
            ));
        }
        if v.len() > config.max_label_value_bytes {
            return Err(format!(
                "label {k:?} has a value of {} bytes, more than the limit of {}: shorten it",
                v.len(),
                config.max_label_value_bytes
            ));
        }
    }
    Ok(())
}

/// Checks a tenant name: non-empty, at most [`crate::MAX_TENANT_BYTES`] bytes, no control
/// characters (so `tenant + "\0" + key` is unambiguous in [`crate::task_id_for_key`]).
pub fn tenant(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() {
        return Err(
            "the tenant is empty: publish triggers on baton.trigger.<tenant>.<source>".into(),
        );
    }
    if tenant.len() > crate::MAX_TENANT_BYTES {
        return Err(format!(
            "tenant is {} bytes, more than the limit of {}: use a shorter tenant name",
            tenant.len(),
            crate::MAX_TENANT_BYTES
        ));
    }
    if tenant.chars().any(char::is_control) {
        return Err(format!(
            "tenant {tenant:?} contains control characters: use letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

/// `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// At most `max` characters of `s`, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(text: &str) -> Trigger {
        Trigger {
            text: text.into(),
            ..Default::default()
        }
    }

    fn check(t: Trigger) -> Result<Trigger, String> {
        let mut t = t;
        normalise(&mut t, &Config::default(), &Catalog::default()).map(|()| t)
    }

    #[test]
    fn a_plain_trigger_is_trimmed_and_accepted() {
        let t = check(Trigger {
            environment: " Production ".into(),
            role: "Drift".into(),
            ..trigger("  Fix drift on production web servers\n")
        })
        .unwrap();
        assert_eq!(t.text, "Fix drift on production web servers");
        assert_eq!(t.environment, "production");
        assert_eq!(t.role, "drift");
    }

    #[test]
    fn empty_text_is_refused() {
        let err = check(trigger("   ")).unwrap_err();
        assert!(err.starts_with("text is empty"), "{err}");
    }

    #[test]
    fn text_over_the_limit_is_refused_with_both_sizes() {
        let err = check(trigger(&"a".repeat(16 * 1024 + 1))).unwrap_err();
        assert!(
            err.contains("16385 bytes") && err.contains("16384 bytes"),
            "{err}"
        );
    }

    #[test]
    fn unknown_environment_names_the_known_ones() {
        let err = check(Trigger {
            environment: "prod".into(),
            ..trigger("x")
        })
        .unwrap_err();
        assert!(
            err.starts_with("unknown environment \"prod\": use development, staging or production"),
            "{err}"
        );
    }

    #[test]
    fn unknown_role_lists_the_known_roles() {
        let err = check(Trigger {
            role: "wizard".into(),
            ..trigger("x")
        })
        .unwrap_err();
        assert!(err.contains("unknown role \"wizard\""), "{err}");
        assert!(err.contains("drift, patch, compliance"), "{err}");
        assert!(err.contains("assistant"), "{err}");
    }

    #[test]
    fn label_limits_are_enforced() {
        let config = Config::default();
        let mut many = trigger("x");
        for i in 0..=config.max_labels {
            many.labels.insert(format!("k{i}"), "v".into());
        }
        assert!(
            check(many)
                .unwrap_err()
                .contains("labels, more than the limit")
        );
        let mut long = trigger("x");
        long.labels
            .insert("team".into(), "v".repeat(config.max_label_value_bytes + 1));
        assert!(
            check(long)
                .unwrap_err()
                .contains("label \"team\" has a value")
        );
        let mut empty = trigger("x");
        empty.labels.insert(" ".into(), "v".into());
        assert!(check(empty).unwrap_err().contains("empty key"));
    }

    #[test]
    fn tenants_must_be_short_and_printable() {
        assert!(tenant("acme").is_ok());
        assert!(tenant("").unwrap_err().contains("empty"));
        assert!(tenant("a\0b").unwrap_err().contains("control characters"));
        assert!(tenant(&"t".repeat(129)).unwrap_err().contains("129 bytes"));
    }

    #[test]
    fn long_idempotency_key_is_refused() {
        let err = check(Trigger {
            idempotency_key: "k".repeat(201),
            ..trigger("x")
        })
        .unwrap_err();
        assert!(err.contains("idempotency_key is 201 characters"), "{err}");
        assert!(
            check(Trigger {
                idempotency_key: "k".repeat(200),
                ..trigger("x")
            })
            .is_ok()
        );
    }
}
