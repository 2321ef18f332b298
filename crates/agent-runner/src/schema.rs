//! A JSON Schema checker for the subset Baton's agent files and tools use: tool arguments are
//! checked before a call, and an agent's final answer before it becomes a plan or a report.
//!
//! Supported keywords: `type` (a name or a list of names: `object`, `array`, `string`,
//! `integer`, `number`, `boolean`, `null`), `properties`, `required`, `additionalProperties`
//! (`false` or a schema), `items`, `enum`, `const`, `minLength`/`maxLength`,
//! `minimum`/`maximum`, `minItems`/`maxItems` and `anyOf`. Other keywords are ignored (they
//! still reach the model, which may use them as hints). The first error found is reported as
//! `<path>: <what is wrong>`, where the path is a JSON pointer into the checked value (`/` for
//! the root), so the model (or a person) can fix exactly that place.

use serde_json::Value;

/// Checks `value` against `schema`; `Err` names the first place that does not fit.
pub fn check(schema: &Value, value: &Value) -> Result<(), String> {
    check_at(schema, value, "")
}

fn at(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, name: &str) -> bool {
    let actual = type_name(v);
    actual == name || (name == "number" && actual == "integer")
}

fn check_at(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(()); // `true` or `{}`: anything goes
    };
    if let Some(t) = schema.get("type") {
        let names: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !names.is_empty() && !names.iter().any(|n| has_type(value, n)) {
            return Err(format!(
                "{}: expected {}, got {}",
                at(path),
                names.join(" or "),
                type_name(value)
            ));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        return Err(format!(
            "{}: {} is not one of {}",
            at(path),
            value,
            list.join(", ")
        ));
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        return Err(format!("{}: expected {c}, got {value}", at(path)));
    }
    if let Some(Value::Array(options)) = schema.get("anyOf") {
        let mut errors = Vec::new();
        for option in options {
            match check_at(option, value, path) {
                Ok(()) => {
                    errors.clear();
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(format!(
                "{}: matches none of the allowed shapes ({})",
                at(path),
                errors.join("; ")
            ));
        }
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                return Err(format!("{}: shorter than {min} characters", at(path)));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                return Err(format!("{}: longer than {max} characters", at(path)));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                return Err(format!("{}: {x} is below the minimum {min}", at(path)));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                return Err(format!("{}: {x} is above the maximum {max}", at(path)));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                return Err(format!("{}: fewer than {min} items", at(path)));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                return Err(format!("{}: more than {max} items", at(path)));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_at(item_schema, item, &format!("{path}/{i}"))?;
                }
            }
        }
        Value::Object(map) => {
            if let Some(Value::Array(required)) = schema.get("required") {
                for key in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(key) {
                        return Err(format!("{}: missing required field {key:?}", at(path)));
                    }
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (key, v) in map {
                let child = format!("{path}/{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(s) => check_at(s, v, &child)?,
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            let known: Vec<&str> = properties
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            return Err(format!(
                                "{}: unknown field {key:?} (allowed: {})",
                                at(path),
                                known.join(", ")
                            ));
                        }
                        Some(s @ Value::Object(_)) => check_at(s, v, &child)?,
                        _ => {}
                    },
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;
    use serde_json::json;

    #[test]
    fn checks_types_required_fields_enums_and_nesting() {
        let schema = json!({
            "type": "object",
            "required": ["path"],
            "additionalProperties": false,
            "properties": {
                "path": {"type": "string", "minLength": 1},
                "mode": {"enum": ["r", "w"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "n": {"type": "integer", "minimum": 1}
            }
        });
        assert_eq!(check(&schema, &json!({"path": "a"})), Ok(()));
        assert_eq!(
            check(&schema, &json!({})).unwrap_err(),
            "/: missing required field \"path\""
        );
        assert_eq!(
            check(&schema, &json!({"path": 3})).unwrap_err(),
            "/path: expected string, got integer"
        );
        assert!(check(&schema, &json!({"path": "a", "mode": "x"})).is_err());
        assert_eq!(
            check(&schema, &json!({"path": "a", "tags": ["x", 1]})).unwrap_err(),
            "/tags/1: expected string, got integer"
        );
        assert!(check(&schema, &json!({"path": "a", "tags": ["x", "y", "z"]})).is_err());
        assert!(check(&schema, &json!({"path": "a", "n": 0})).is_err());
        assert!(check(&schema, &json!({"path": "a", "extra": 1})).is_err());
        assert!(check(&schema, &json!({"path": ""})).is_err());
    }

    #[test]
    fn any_of_accepts_one_matching_shape() {
        let schema = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert_eq!(check(&schema, &json!("x")), Ok(()));
        assert_eq!(check(&schema, &json!(1)), Ok(()));
        assert!(check(&schema, &json!(true)).is_err());
    }
}
