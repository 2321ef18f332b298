//! Property tests over trigger decoding, the part of ingestion that reads bytes anyone with
//! NATS credentials can publish: whatever arrives, [`parse_trigger`] and
//! [`validate::normalise`] answer (a trigger or a reason) and never panic.
//!
//! Inputs are random bytes and, more usefully, valid triggers (JSON and protobuf) mutated the
//! way broken or hostile publishers mutate them: truncated, bytes flipped or inserted, spliced,
//! fields of the wrong type, unknown fields, deep nesting, huge values. The case count is
//! bounded (`PROPTEST_CASES` overrides it) so CI stays quick.

use baton_ingestion::{Config, parse_trigger, validate};
use baton_proto::Trigger;
use baton_runtime::catalog::Catalog;
use proptest::prelude::*;
use prost::Message;

/// Cases per property: enough to find shallow panics in a few seconds of a debug build.
const CASES: u32 = 2_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any string, biased towards the characters that matter: whitespace, quotes, escapes,
/// control characters and multi-byte UTF-8.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => ".{0,40}",
        10 => "[ \t\n\"\\\\{}\\[\\]:,a-zA-Z0-9é日\u{0}\u{7f}]{0,40}",
        // 123 bytes: the length byte of a protobuf string is then `{`.
        2 => Just("y".repeat(123)),
        2 => Just(String::new()),
        1 => (1usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn trigger() -> impl Strategy<Value = Trigger> {
    (
        text(),
        prop_oneof![
            Just(String::new()),
            Just("production".to_string()),
            Just(" Staging ".to_string()),
            text()
        ],
        text(),
        proptest::collection::btree_map(text(), text(), 0..6),
        text(),
        prop_oneof![Just(String::new()), Just("sre".to_string()), text()],
    )
        .prop_map(
            |(text, environment, idempotency_key, labels, source, role)| Trigger {
                text,
                environment,
                idempotency_key,
                labels: labels.into_iter().collect(),
                source,
                role,
            },
        )
}

/// One way a payload gets damaged on its way in.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Duplicate(usize, usize),
    Splice(Vec<u8>, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (
            proptest::collection::vec(any::<u8>(), 0..32),
            any::<usize>()
        )
            .prop_map(|(b, i)| Mutation::Splice(b, i)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Truncate(i) => bytes.truncate(at(*i)),
            Mutation::Flip(i, b) if len > 0 => bytes[i % len] ^= b | 1,
            Mutation::Flip(..) => {}
            Mutation::Insert(i, b) => bytes.insert(at(*i), *b),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Remove(_) => {}
            Mutation::Duplicate(i, n) => {
                let start = at(*i);
                let end = (start + n % 64).min(len);
                let chunk = bytes[start..end].to_vec();
                bytes.splice(start..start, chunk);
            }
            Mutation::Splice(b, i) => {
                let at = at(*i);
                bytes.splice(at..at, b.iter().copied());
            }
        }
    }
    bytes
}

/// A JSON value in a trigger's place that is wrong in some way a parser must survive.
fn hostile_json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        text().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(text(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "text",
    "environment",
    "idempotency_key",
    "labels",
    "source",
    "role",
    "tenant",
    "",
];

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_string())),
        Just(Some("application/json; charset=utf-8".to_string())),
        Just(Some("application/protobuf".to_string())),
        text().prop_map(Some),
    ]
}

/// Decodes and, when that succeeds, validates: the whole of what ingestion does to a payload
/// before it publishes `task.received` or `ingestion.rejected`. Every outcome is an answer: a
/// trigger, or a non-empty reason.
fn answer(payload: &[u8], content_type: Option<&str>) -> Result<Trigger, String> {
    let result = parse_trigger(payload, content_type).and_then(|mut t| {
        validate::normalise(&mut t, &Config::default(), &Catalog::default()).map(|()| t)
    });
    if let Err(reason) = &result {
        assert!(!reason.trim().is_empty(), "a refusal without a reason");
    }
    result
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_are_answered(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        ct in content_type(),
    ) {
        let _ = answer(&payload, ct.as_deref());
        // The same bytes led by `{` take the JSON path.
        let mut json = b"{".to_vec();
        json.extend(&payload);
        let _ = answer(&json, ct.as_deref());
    }

    #[test]
    fn valid_triggers_round_trip_in_json_and_protobuf(t in trigger()) {
        let json = serde_json::to_vec(&t).unwrap();
        prop_assert_eq!(&parse_trigger(&json, Some("application/json")).unwrap(), &t);
        prop_assert_eq!(&parse_trigger(&json, None).unwrap(), &t);
        let proto = t.encode_to_vec();
        prop_assert_eq!(&parse_trigger(&proto, Some("application/protobuf")).unwrap(), &t);
        prop_assert_eq!(&parse_trigger(&proto, None).unwrap(), &t);
    }

    #[test]
    fn mutated_triggers_are_answered(
        t in trigger(),
        mutations in proptest::collection::vec(mutation(), 1..6),
        ct in content_type(),
    ) {
        let _ = answer(&apply(serde_json::to_vec(&t).unwrap(), &mutations), ct.as_deref());
        let _ = answer(&apply(t.encode_to_vec(), &mutations), ct.as_deref());
    }

    #[test]
    fn json_with_wrong_types_unknown_fields_and_deep_nesting_is_answered(
        t in trigger(),
        field in proptest::sample::select(FIELDS),
        value in hostile_json_value(),
        depth in 0usize..200,
    ) {
        let mut v = serde_json::to_value(&t).unwrap();
        v[field] = value;
        let _ = answer(&serde_json::to_vec(&v).unwrap(), None);
        // Nesting past serde_json's recursion limit (128) is an error, not a stack overflow.
        let deep = format!("{{\"text\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
        prop_assert!(answer(deep.as_bytes(), None).is_err());
    }

    #[test]
    fn tenant_names_are_answered(tenant in text()) {
        let _ = validate::tenant(&tenant);
    }
}
