//! What a log row holds: an event to append ([`NewRecord`], built from a NATS message), the
//! same with its place in the chain ([`StoredRecord`]), and the chain's end ([`ChainHead`]).
//!
//! A record's payload is stored with its secrets redacted ([`NewRecord::redacted`], applied by
//! [`Store::append`](super::Store::append) before the record is hashed): the chain covers what
//! is kept, and nothing kept holds a credential (see [`baton_proto::redact`]).

use crate::chain::{HashInput, record_hash};
use crate::projection::{micros_to_timestamp, timestamp_to_micros};
use baton_proto::redact::{self, Redact as _};
use baton_proto::{AuditRecord, Event};
use prost::Message as _;
use sqlx::query_builder::Separated;

/// Kind stored for a payload that is not a protobuf `Event`.
pub const UNDECODABLE: &str = "undecodable";

/// Columns of `audit_log`, in the order [`push_record`] binds them ([`StoredRecord`] is read
/// with its derived `sqlx::FromRow`).
pub(super) const LOG_COLUMNS: &str = "sequence, event_id, task_id, tenant, subject, kind, producer, \
                                      event_time, recorded_at, payload, prev_hash, hash";

/// Binds `r`'s values in the order of [`LOG_COLUMNS`] (one `VALUES` tuple).
pub(super) fn push_record<DB>(b: &mut Separated<'_, DB, &'static str>, r: &StoredRecord)
where
    DB: sqlx::Database,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    Vec<u8>: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    b.push_bind(r.sequence)
        .push_bind(r.record.event_id.clone())
        .push_bind(r.record.task_id.clone())
        .push_bind(r.record.tenant.clone())
        .push_bind(r.record.subject.clone())
        .push_bind(r.record.kind.clone())
        .push_bind(r.record.producer.clone())
        .push_bind(r.record.event_time)
        .push_bind(r.recorded_at)
        .push_bind(r.record.payload.clone())
        .push_bind(r.prev_hash.clone())
        .push_bind(r.hash.clone());
}

/// The last record of the chain: what the next record links to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence of the last record (0 for an empty log).
    pub sequence: u64,
    /// Its hash (`""` for an empty log).
    pub hash: String,
}

/// An event to append, before it has a place in the chain (what a [`StoredRecord`] holds
/// besides its place).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NewRecord {
    /// Unique id; a second record with the same id is dropped.
    pub event_id: String,
    /// Task id (empty when unknown).
    pub task_id: String,
    /// Tenant (empty when unknown).
    pub tenant: String,
    /// NATS subject it arrived on.
    pub subject: String,
    /// `baton_proto::event_kind` of the event, or [`UNDECODABLE`].
    pub kind: String,
    /// Producing service (empty when unknown).
    pub producer: String,
    /// Event time, microseconds since the Unix epoch (0 when unknown).
    pub event_time: i64,
    /// The bytes as received; once [`NewRecord::redacted`] (as stored), the same bytes, or the
    /// re-encoded event when it carried secrets.
    pub payload: Vec<u8>,
    /// `payload` decoded, when this record was built from it, so the writer decodes each event
    /// once (to read its ids, to redact it, to project it). Not stored, not part of the
    /// record's value: equality ignores it.
    #[sqlx(skip)]
    pub(crate) decoded: Decoded,
}

/// The event a [`NewRecord`]'s payload decodes to, kept from when it was first decoded (its
/// field `decoded`); `None` when not kept, then the payload is decoded again.
#[derive(Clone, Default)]
pub(crate) struct Decoded(pub(crate) Option<Box<Event>>);

impl PartialEq for Decoded {
    /// A cache of the payload: always equal, the payload is what is compared.
    fn eq(&self, _: &Decoded) -> bool {
        true
    }
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Decoded(..)"
        } else {
            "Decoded(None)"
        })
    }
}

/// What a message carried besides its payload, for records that cannot be decoded.
#[derive(Debug, Clone, Default)]
pub struct MessageMeta<'a> {
    /// `Nats-Msg-Id`.
    pub msg_id: Option<&'a str>,
    /// `Baton-Task-Id`.
    pub task_id: Option<&'a str>,
    /// `Baton-Tenant`.
    pub tenant: Option<&'a str>,
    /// Unique id to use when neither the event nor the message has one
    /// (`<stream>.<stream sequence>`).
    pub fallback_id: String,
}

impl NewRecord {
    /// A record of a decoded event.
    pub fn from_event(subject: &str, event: &Event) -> NewRecord {
        NewRecord::decoded_from(subject, event.clone(), event.encode_to_vec())
    }

    /// A record of `event`, whose encoding is `payload` (kept as it is: fields this build does
    /// not know survive), keeping the decoded event for the writer.
    fn decoded_from(subject: &str, event: Event, payload: Vec<u8>) -> NewRecord {
        NewRecord {
            event_id: event.event_id.clone(),
            task_id: event.task_id.clone(),
            tenant: event.tenant.clone(),
            subject: subject.to_string(),
            kind: baton_proto::event_kind(&event).to_string(),
            producer: event.producer.clone(),
            event_time: event.time.as_ref().map(timestamp_to_micros).unwrap_or(0),
            payload,
            decoded: Decoded(Some(Box::new(event))),
        }
    }

    /// The event of the payload (kept from when it was decoded, else decoded now), or `None`
    /// for an [`UNDECODABLE`] record or a payload that does not decode.
    fn event(&self) -> Option<std::borrow::Cow<'_, Event>> {
        if self.kind == UNDECODABLE {
            return None;
        }
        match &self.decoded.0 {
            Some(event) => Some(std::borrow::Cow::Borrowed(&**event)),
            None => Event::decode(self.payload.as_slice())
                .ok()
                .map(std::borrow::Cow::Owned),
        }
    }

    /// A record of a message as received. A payload that is not a protobuf `Event` is kept as
    /// kind [`UNDECODABLE`] (its ids come from the headers), so nothing is lost; an event whose
    /// body this build does not know is kept as kind `unknown`. The payload is the received
    /// bytes (until [`NewRecord::redacted`]).
    pub fn from_message(subject: &str, payload: &[u8], meta: MessageMeta<'_>) -> NewRecord {
        let or = |a: &str, b: Option<&str>| {
            if a.is_empty() {
                b.unwrap_or("").to_string()
            } else {
                a.to_string()
            }
        };
        let mut record = match Event::decode(payload) {
            Ok(event) => {
                let mut r = NewRecord::decoded_from(subject, event, payload.to_vec());
                r.task_id = or(&r.task_id, meta.task_id);
                r.tenant = or(&r.tenant, meta.tenant);
                r.event_id = or(&r.event_id, meta.msg_id);
                r
            }
            Err(_) => NewRecord {
                event_id: meta.msg_id.unwrap_or("").to_string(),
                task_id: meta.task_id.unwrap_or("").to_string(),
                tenant: meta.tenant.unwrap_or("").to_string(),
                subject: subject.to_string(),
                kind: UNDECODABLE.to_string(),
                producer: String::new(),
                event_time: 0,
                payload: payload.to_vec(),
                decoded: Decoded(None),
            },
        };
        if record.event_id.is_empty() {
            record.event_id = meta.fallback_id;
        }
        record
    }
}

impl NewRecord {
    /// This record as it may be stored: secrets in its payload replaced by
    /// [`redact::REDACTED`]. An event that carries none keeps its received bytes (so fields
    /// this build does not know survive); one that does is re-encoded after
    /// [`Redact::redact`](baton_proto::redact::Redact::redact). An undecodable payload is
    /// redacted as bytes (JSON or text; binary is left as it is).
    pub fn redacted(mut self) -> NewRecord {
        if self.kind == UNDECODABLE {
            redact::bytes(&mut self.payload);
            return self;
        }
        let event = match self.decoded.0.take() {
            Some(event) => Some(*event),
            None => Event::decode(self.payload.as_slice()).ok(),
        };
        if let Some(mut event) = event {
            if event.redact() {
                self.payload = event.encode_to_vec();
            }
            self.decoded = Decoded(Some(Box::new(event)));
        }
        self
    }

    /// A dead letter that audit itself produced (it could not store a message before the
    /// stream gave up redelivering it) stands for the message it carries: returns the record
    /// of that message (unwrapping nested dead letters), so the original event is stored under
    /// its own id and the task is not marked failed by audit's own outage. A carried payload
    /// that was truncated or is not an event leaves the dead letter as it is.
    pub fn unwrap_own_dead_letter(self, service: &str) -> NewRecord {
        let mut record = self;
        while record.kind == "dead_letter" {
            let Some(event) = record.event() else {
                break;
            };
            let Some(baton_proto::event::Body::DeadLetter(dl)) = &event.body else {
                break;
            };
            if dl.service != service {
                break;
            }
            match baton_bus::decode_event(&dl.payload) {
                // Keep the bytes as they were published.
                Ok(inner) => {
                    let (subject, payload) = (dl.subject.clone(), dl.payload.clone());
                    record = NewRecord::decoded_from(&subject, inner, payload);
                }
                Err(_) => break,
            }
        }
        record
    }
}

/// A record as stored: a place in the chain.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredRecord {
    /// Position in the log, from 1.
    pub sequence: i64,
    /// The event and where it came from.
    #[sqlx(flatten)]
    pub record: NewRecord,
    /// When it was stored, microseconds since the Unix epoch.
    pub recorded_at: i64,
    /// Hash of the previous record (`""` for the first).
    pub prev_hash: String,
    /// Hash of this record (see [`crate::chain`]).
    pub hash: String,
}

impl StoredRecord {
    /// The event as the writer decoded it (kept in the record), else decoded now; `None` when
    /// the payload is not one.
    pub(crate) fn decoded_event(&self) -> Option<std::borrow::Cow<'_, Event>> {
        self.record.event()
    }

    /// The decoded event, when the payload is one.
    pub fn event(&self) -> Option<Event> {
        Event::decode(self.record.payload.as_slice())
            .ok()
            .filter(|_| self.record.kind != UNDECODABLE)
    }

    /// The hash this record should have.
    pub fn compute_hash(&self) -> String {
        record_hash(&HashInput {
            sequence: self.sequence as u64,
            event_id: &self.record.event_id,
            task_id: &self.record.task_id,
            tenant: &self.record.tenant,
            subject: &self.record.subject,
            kind: &self.record.kind,
            producer: &self.record.producer,
            event_time: self.record.event_time,
            recorded_at: self.recorded_at,
            payload: &self.record.payload,
            prev_hash: &self.prev_hash,
        })
    }

    /// Time for projections: the event's, else when it was recorded.
    pub fn effective_time(&self) -> i64 {
        if self.record.event_time != 0 {
            self.record.event_time
        } else {
            self.recorded_at
        }
    }

    /// The protobuf record (`event` is unset for undecodable payloads).
    pub fn to_proto(&self) -> AuditRecord {
        AuditRecord {
            sequence: self.sequence as u64,
            subject: self.record.subject.clone(),
            event: self.event(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
            recorded_at: Some(micros_to_timestamp(self.recorded_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_messages_keep_their_bytes_and_header_ids() {
        let r = NewRecord::from_message(
            "baton.task.received",
            b"\xff\xffjunk",
            MessageMeta {
                msg_id: None,
                task_id: Some("t9"),
                tenant: Some("acme"),
                fallback_id: "BATON.7".into(),
            },
        );
        assert_eq!(
            (r.kind.as_str(), r.event_id.as_str(), r.task_id.as_str()),
            (UNDECODABLE, "BATON.7", "t9")
        );
        assert_eq!(r.payload, b"\xff\xffjunk");
    }

    #[test]
    fn secrets_are_redacted_and_an_event_without_any_keeps_its_bytes() {
        use baton_proto::{Task, TaskReceived, Trigger, event::Body};
        let event = |text: &str| {
            Event::first(
                "t1",
                "acme",
                "received",
                "ingestion",
                Body::TaskReceived(TaskReceived {
                    task: Some(Task {
                        trigger: Some(Trigger {
                            text: text.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }),
            )
        };
        let meta = || MessageMeta::default();
        let secret = event("deploy with password=hunter2");
        let r = NewRecord::from_message("baton.task.received", &secret.encode_to_vec(), meta())
            .redacted();
        let stored = format!("{:?}", Event::decode(r.payload.as_slice()).unwrap());
        assert!(!stored.contains("hunter2"), "{stored}");
        assert!(stored.contains("password=<redacted>"), "{stored}");
        // The event kept for the projection is the redacted one the payload holds.
        let kept = r.event().expect("kept");
        assert_eq!(*kept, Event::decode(r.payload.as_slice()).unwrap());
        assert!(r.decoded.0.is_some(), "decoded once, kept");
        // Nothing to redact: the received bytes, even ones this build would encode differently
        // (an unknown field 99 here).
        let mut bytes = event("fix drift").encode_to_vec();
        bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
        let r = NewRecord::from_message("baton.task.received", &bytes, meta()).redacted();
        assert_eq!(r.payload, bytes);
        // Undecodable text is redacted as text.
        let r = NewRecord::from_message("baton.task.received", b"\xffjunk token=abc", meta())
            .redacted();
        assert_eq!(r.kind, UNDECODABLE);
        assert_eq!(r.payload, b"\xffjunk token=abc", "binary is left alone");
        let r = NewRecord::from_message("baton.task.received", b"{\"token\":1}", meta()).redacted();
        assert_eq!(r.payload, br#"{"token":"<redacted>"}"#);
    }

    #[test]
    fn own_dead_letters_unwrap_to_the_original_event() {
        use baton_proto::{DeadLetter, TaskCompleted, event::Body};
        let original = Event::first(
            "t1",
            "acme",
            "completed",
            "execution",
            Body::TaskCompleted(TaskCompleted::default()),
        );
        let wrap = |service: &str, subject: &str, inner: &Event| Event {
            event_id: format!("dead.{service}.{}", inner.event_id),
            task_id: "t1".into(),
            body: Some(Body::DeadLetter(DeadLetter {
                service: service.into(),
                subject: subject.into(),
                payload: inner.encode_to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let once = wrap("audit", "baton.task.completed", &original);
        let twice = wrap("audit", "baton.dead.audit", &once);
        let r = NewRecord::from_event("baton.dead.audit", &twice).unwrap_own_dead_letter("audit");
        assert_eq!(
            (r.event_id.as_str(), r.subject.as_str(), r.kind.as_str()),
            ("t1.completed", "baton.task.completed", "task_completed")
        );
        assert_eq!(r.payload, original.encode_to_vec());
        let other = wrap("decision", "baton.task.received", &original);
        let r =
            NewRecord::from_event("baton.dead.decision", &other).unwrap_own_dead_letter("audit");
        assert_eq!(r.kind, "dead_letter", "other services' dead letters stay");
    }
}
