//! What a refused trigger leaves behind: [`TriggerRejected`] carries the payload's SHA-256,
//! its size and a bounded prefix, never the payload itself, and a bounded reason.
//!
//! Why: the audit log stores every `TriggerRejected`, and anyone allowed to publish triggers
//! can send malformed ones as large as NATS accepts (`max_payload`, 1 MiB by default). Storing
//! the payload would let a flood of them grow the database by their full size; with these
//! bounds each rejection costs the log a few hundred bytes whatever was sent, while the hash
//! still identifies the exact payload (compare it with the trigger kept in the stream, or with
//! what the publisher sent) and the prefix shows what it looked like.

use crate::TriggerRejected;
use sha2::{Digest, Sha256};

/// Most payload bytes a [`TriggerRejected`] keeps (`payload_prefix`): enough to show a
/// trigger's text or the start of whatever was sent (the audit view shows at most 200
/// characters of it), small enough that a flood of large malformed triggers grows the audit log
/// by at most this much payload per trigger.
pub const TRIGGER_REJECTED_PREFIX_MAX: usize = 512;

/// Longest reason a [`TriggerRejected`] keeps, in bytes. Reasons can quote the payload (a JSON
/// parser names the value of the wrong type, an unknown environment is echoed), so they are
/// bounded like the prefix; a longer one is cut at a character boundary and ends with `…`.
pub const TRIGGER_REJECTED_REASON_MAX: usize = 1024;

impl TriggerRejected {
    /// The rejection of `payload`, received on `subject`, for `reason`: its SHA-256 (hex), its
    /// size and its first [`TRIGGER_REJECTED_PREFIX_MAX`] bytes; the reason cut to
    /// [`TRIGGER_REJECTED_REASON_MAX`] bytes. The legacy `payload` field stays empty.
    pub fn for_payload(subject: &str, reason: &str, payload: &[u8]) -> TriggerRejected {
        TriggerRejected {
            subject: subject.to_string(),
            reason: cut(reason, TRIGGER_REJECTED_REASON_MAX),
            payload: Vec::new(),
            payload_sha256: hex::encode(Sha256::digest(payload)),
            payload_size: payload.len() as u64,
            payload_prefix: payload[..payload.len().min(TRIGGER_REJECTED_PREFIX_MAX)].to_vec(),
        }
    }

    /// The start of the payload this rejection shows and the payload's whole size in bytes:
    /// `payload_prefix` and `payload_size`, or, for an event stored by a build that carried the
    /// payload itself (only `payload` set), that payload and its length.
    pub fn shown_payload(&self) -> (&[u8], u64) {
        if self.payload_prefix.is_empty() && self.payload_size == 0 && !self.payload.is_empty() {
            (&self.payload, self.payload.len() as u64)
        } else {
            (&self.payload_prefix, self.payload_size)
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` (3 bytes, within `max`)
/// when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_payload_leaves_its_hash_size_and_a_bounded_prefix() {
        let payload = vec![b'x'; 1 << 20];
        let r = TriggerRejected::for_payload("baton.trigger.cli", "bad", &payload);
        assert_eq!(r.payload_size, 1 << 20);
        assert_eq!(r.payload_prefix.len(), TRIGGER_REJECTED_PREFIX_MAX);
        assert_eq!(r.payload_sha256, hex::encode(Sha256::digest(&payload)));
        assert_eq!(r.payload_sha256.len(), 64);
        assert!(r.payload.is_empty(), "the legacy field is not written");
        assert_eq!(r.shown_payload(), (&payload[..512], 1 << 20));
        // A small payload is kept whole.
        let r = TriggerRejected::for_payload("s", "bad", b"{}");
        assert_eq!(
            (r.payload_prefix.as_slice(), r.payload_size),
            (&b"{}"[..], 2)
        );
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(TRIGGER_REJECTED_REASON_MAX);
        let r = TriggerRejected::for_payload("s", &long, b"");
        assert!(
            r.reason.len() <= TRIGGER_REJECTED_REASON_MAX,
            "{}",
            r.reason.len()
        );
        assert!(r.reason.ends_with('…'));
        assert_eq!(
            TriggerRejected::for_payload("s", "short", b"").reason,
            "short"
        );
    }

    #[test]
    fn events_stored_by_older_builds_show_their_payload() {
        let old = TriggerRejected {
            payload: b"{\"text\":1}".to_vec(),
            ..Default::default()
        };
        assert_eq!(old.shown_payload(), (&b"{\"text\":1}"[..], 10));
    }
}
