//! The hash chain over `audit_log` rows.
//!
//! `hash = hex(SHA-256(encoding))` where `encoding` is the concatenation, in this order, of the
//! eleven fields below, each written as an 8-byte big-endian unsigned length `n` followed by `n`
//! bytes:
//!
//! | # | field         | bytes                                                          |
//! |---|---------------|----------------------------------------------------------------|
//! | 1 | `sequence`    | 8 bytes, big-endian `u64`                                      |
//! | 2 | `event_id`    | UTF-8                                                          |
//! | 3 | `task_id`     | UTF-8                                                          |
//! | 4 | `tenant`      | UTF-8                                                          |
//! | 5 | `subject`     | UTF-8                                                          |
//! | 6 | `kind`        | UTF-8                                                          |
//! | 7 | `producer`    | UTF-8                                                          |
//! | 8 | `event_time`  | 8 bytes, big-endian `i64` (microseconds since the Unix epoch)  |
//! | 9 | `recorded_at` | 8 bytes, big-endian `i64` (microseconds since the Unix epoch)  |
//! | 10| `payload`     | the stored bytes (the protobuf-encoded `Event`, secrets redacted, or raw bytes) |
//! | 11| `prev_hash`   | ASCII of the previous row's lowercase hex hash (`""` for row 1) |
//!
//! So the length prefix of fields 1, 8 and 9 is always 8. The hex digest is lowercase, 64
//! characters. Changing any field of a row changes its hash; removing or reordering rows breaks
//! the `prev_hash` link of the next row (or leaves a gap in `sequence`).

use sha2::{Digest, Sha256};

/// The fields of one row that its hash covers, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// Position in the log, from 1.
    pub sequence: u64,
    /// Event id (unique).
    pub event_id: &'a str,
    /// Task id (may be empty).
    pub task_id: &'a str,
    /// Tenant (may be empty).
    pub tenant: &'a str,
    /// NATS subject the event arrived on.
    pub subject: &'a str,
    /// `baton_proto::event_kind`, or `undecodable`.
    pub kind: &'a str,
    /// Producing service.
    pub producer: &'a str,
    /// Event time, microseconds since the Unix epoch (0 when the event had none).
    pub event_time: i64,
    /// When audit stored it, microseconds since the Unix epoch.
    pub recorded_at: i64,
    /// Stored payload bytes.
    pub payload: &'a [u8],
    /// Hex hash of the previous row, `""` for the first.
    pub prev_hash: &'a str,
}

/// Computes the lowercase hex SHA-256 of a row (layout in the module doc).
pub fn record_hash(r: &HashInput<'_>) -> String {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    field(&mut h, &r.sequence.to_be_bytes());
    field(&mut h, r.event_id.as_bytes());
    field(&mut h, r.task_id.as_bytes());
    field(&mut h, r.tenant.as_bytes());
    field(&mut h, r.subject.as_bytes());
    field(&mut h, r.kind.as_bytes());
    field(&mut h, r.producer.as_bytes());
    field(&mut h, &r.event_time.to_be_bytes());
    field(&mut h, &r.recorded_at.to_be_bytes());
    field(&mut h, r.payload);
    field(&mut h, r.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>() -> HashInput<'a> {
        HashInput {
            sequence: 1,
            event_id: "t1.received",
            task_id: "t1",
            tenant: "acme",
            subject: "baton.task.received",
            kind: "task_received",
            producer: "ingestion",
            event_time: 1_700_000_000_000_000,
            recorded_at: 1_700_000_000_000_001,
            payload: b"abc",
            prev_hash: "",
        }
    }

    #[test]
    fn hash_is_hex_sha256_and_deterministic() {
        let h = record_hash(&input());
        assert_eq!(h.len(), 64);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, record_hash(&input()));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = record_hash(&input());
        let variants = [
            HashInput {
                sequence: 2,
                ..input()
            },
            HashInput {
                event_id: "t1.routed",
                ..input()
            },
            HashInput {
                task_id: "t2",
                ..input()
            },
            HashInput {
                tenant: "other",
                ..input()
            },
            HashInput {
                subject: "baton.task.failed",
                ..input()
            },
            HashInput {
                kind: "task_failed",
                ..input()
            },
            HashInput {
                producer: "decision",
                ..input()
            },
            HashInput {
                event_time: 0,
                ..input()
            },
            HashInput {
                recorded_at: 0,
                ..input()
            },
            HashInput {
                payload: b"abd",
                ..input()
            },
            HashInput {
                prev_hash: "00",
                ..input()
            },
        ];
        for v in variants {
            assert_ne!(record_hash(&v), base, "{v:?}");
        }
    }

    #[test]
    fn length_prefixes_keep_field_boundaries() {
        // Moving a character from one field to the next must change the hash.
        let a = HashInput {
            task_id: "ab",
            tenant: "c",
            ..input()
        };
        let b = HashInput {
            task_id: "a",
            tenant: "bc",
            ..input()
        };
        assert_ne!(record_hash(&a), record_hash(&b));
    }
}
