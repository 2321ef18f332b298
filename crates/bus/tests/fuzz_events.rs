//! Property tests over event decoding, what every consumer does first with a message from
//! the bus: whatever bytes arrive, [`decode_event`] answers an event with a known body or a
//! [`DecodeError`] with a reason, and never panics; the body then checks out as one kind or is
//! handed back whole ([`EventBody::from_body`]).
//!
//! Inputs are random bytes and valid events mutated as a broken or hostile publisher would:
//! truncated, bytes flipped or inserted, chunks duplicated, two events spliced, unknown fields
//! appended, varints overlong. The case count is bounded (`PROPTEST_CASES` overrides it) so CI
//! stays quick.

use baton_bus::{DecodeError, decode_event};
use baton_proto::event::Body;
use baton_proto::{
    DeadLetter, Decision, Event, EventBody, Task, TaskApproved, TaskFailed, TaskReceived,
    TaskRouted, TaskSpec, Trigger, TriggerRejected,
};
use proptest::prelude::*;
use prost::Message;

/// Cases per property.
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

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => ".{0,24}",
        1 => Just(String::new()),
        1 => (100usize..3_000).prop_map(|n| "e".repeat(n)),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

fn task() -> impl Strategy<Value = Task> {
    (text(), text(), text(), text()).prop_map(|(task_id, tenant, submitted_by, words)| Task {
        task_id,
        tenant,
        submitted_by,
        trigger: Some(Trigger {
            text: words,
            ..Default::default()
        }),
        received_at: None,
    })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        task().prop_map(|t| Body::TaskReceived(TaskReceived { task: Some(t) })),
        (task(), text(), text()).prop_map(|(t, role, why)| Body::TaskRouted(TaskRouted {
            task: Some(t),
            decision: Some(Decision {
                spec: Some(TaskSpec {
                    role,
                    ..Default::default()
                }),
                explanation: why,
                ..Default::default()
            }),
        })),
        (text(), text(), text(), any::<i32>()).prop_map(|(stage, code, reason, failure)| {
            Body::TaskFailed(TaskFailed {
                stage,
                code,
                reason,
                execution: None,
                failure,
            })
        }),
        (text(), text(), bytes(), any::<u64>()).prop_map(|(subject, reason, prefix, size)| {
            Body::TriggerRejected(TriggerRejected {
                subject,
                reason,
                payload: Vec::new(),
                payload_sha256: hex_of(&prefix),
                payload_size: size,
                payload_prefix: prefix,
            })
        }),
        (
            text(),
            text(),
            bytes(),
            proptest::collection::btree_map(text(), text(), 0..4),
            any::<u64>()
        )
            .prop_map(|(service, reason, payload, headers, deliveries)| {
                Body::DeadLetter(DeadLetter {
                    service,
                    subject: "baton.task.received".into(),
                    reason,
                    payload,
                    headers,
                    stream_sequence: deliveries / 2,
                    deliveries,
                })
            }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (text(), text(), text(), text(), body()).prop_map(
        |(event_id, task_id, tenant, producer, body)| Event {
            event_id,
            task_id,
            causation_id: String::new(),
            tenant,
            producer,
            time: Some(baton_proto::now()),
            body: Some(body),
        },
    )
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Duplicate(usize, usize),
    /// An unknown field (number, wire type, bytes) appended: what a newer build would send.
    UnknownField(u32, u8, Vec<u8>),
    /// A varint made needlessly long (or past 10 bytes).
    Overlong(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (1u32..600, 0u8..8, bytes()).prop_map(|(n, w, b)| Mutation::UnknownField(n, w, b)),
        (any::<usize>(), 1usize..12).prop_map(|(i, n)| Mutation::Overlong(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Truncate(i) => bytes.truncate(at(*i)),
            Mutation::Flip(i, b) if len > 0 => bytes[i % len] ^= b | 1,
            Mutation::Insert(i, b) => bytes.insert(at(*i), *b),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Flip(..) | Mutation::Remove(_) => {}
            Mutation::Duplicate(i, n) => {
                let start = at(*i);
                let end = (start + n % 64).min(len);
                let chunk = bytes[start..end].to_vec();
                bytes.splice(start..start, chunk);
            }
            Mutation::UnknownField(number, wire, payload) => {
                prost::encoding::encode_varint(
                    u64::from(number << 3 | u32::from(*wire)),
                    &mut bytes,
                );
                if *wire == 2 {
                    prost::encoding::encode_varint(payload.len() as u64, &mut bytes);
                }
                bytes.extend(payload);
            }
            Mutation::Overlong(i, n) => {
                let at = at(*i);
                let pad = std::iter::repeat_n(0x80u8, *n).chain([0x00]);
                bytes.splice(at..at, pad);
            }
        }
    }
    bytes
}

/// Decodes as a consumer does and checks the answer is usable: a known body whose kind is
/// named and which converts to its own type and to no other, or an error with a reason.
fn answer(payload: &[u8]) -> Result<Event, DecodeError> {
    let result = decode_event(payload);
    match &result {
        Ok(event) => {
            let body = event
                .body
                .clone()
                .expect("decode_event returns known bodies only");
            assert!(!body.kind().is_empty());
            let kind = body.kind();
            assert_eq!(
                TaskReceived::from_body(body.clone()).is_ok(),
                kind == TaskReceived::KIND
            );
            assert_eq!(
                TaskApproved::from_body(body.clone()).is_ok(),
                kind == TaskApproved::KIND
            );
            if let Body::TaskFailed(f) = body {
                let _ = f.failure_code();
            }
        }
        Err(e) => assert!(
            !e.to_string().trim().is_empty(),
            "an error without a reason"
        ),
    }
    result
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_are_answered(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = answer(&payload);
    }

    #[test]
    fn valid_events_round_trip(e in event()) {
        prop_assert_eq!(answer(&e.encode_to_vec()).unwrap(), e);
    }

    #[test]
    fn an_event_without_a_body_is_its_own_error(e in event()) {
        let bodiless = Event { body: None, ..e };
        let err = answer(&bodiless.encode_to_vec()).unwrap_err();
        let is_unknown_body = matches!(err, DecodeError::UnknownBody { .. });
        prop_assert!(is_unknown_body, "{:?}", err);
    }

    #[test]
    fn mutated_events_are_answered(
        e in event(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let _ = answer(&apply(e.encode_to_vec(), &mutations));
    }

    #[test]
    fn spliced_events_are_answered(a in event(), b in event(), cut_a: usize, cut_b: usize) {
        let (a, b) = (a.encode_to_vec(), b.encode_to_vec());
        let mut spliced = a[..cut_a % (a.len() + 1)].to_vec();
        spliced.extend(&b[cut_b % (b.len() + 1)..]);
        let _ = answer(&spliced);
        // Two whole events back to back decode (protobuf merges them) or are refused.
        let _ = answer(&[a, b].concat());
    }
}

/// Lowercase hex of `bytes` (a stand-in digest: decoding must not care what it holds).
fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
