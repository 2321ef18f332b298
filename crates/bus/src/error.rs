//! Errors of the bus.

use std::path::PathBuf;

/// What went wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The server could not be reached.
    #[error(
        "cannot connect to NATS at {url}: {reason}; start one with `nats-server -js` or let \
         `baton up` start it (leave nats.url unset), or set BATON_NATS__URL"
    )]
    Connect {
        /// The URL tried.
        url: String,
        /// The client's reason.
        reason: String,
    },
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        /// The credentials file as configured (`nats.credentials_file`).
        path: PathBuf,
        /// The file system's error (missing file, permissions).
        source: std::io::Error,
    },
    /// A stream could not be created or updated.
    #[error(
        "cannot set up JetStream stream {stream}: {reason}; is JetStream enabled (`nats-server -js`)?"
    )]
    Stream {
        /// Stream name.
        stream: String,
        /// The server's reason.
        reason: String,
    },
    /// A stored message could not be read back from its stream.
    #[error("cannot read message {sequence} of stream {stream}: {reason}")]
    Read {
        /// Stream name.
        stream: String,
        /// The message's sequence number in that stream.
        sequence: u64,
        /// Why (the server's reason, or why its payload is not an event).
        reason: String,
    },
    /// A consumer could not be created or read from.
    #[error("consumer {consumer} on stream {stream}: {reason}")]
    Consumer {
        /// Stream name.
        stream: String,
        /// Durable name.
        consumer: String,
        /// The server's reason.
        reason: String,
    },
    /// A publish was not acknowledged by the stream.
    #[error("publish to {subject} failed: {reason}")]
    Publish {
        /// The subject the event was published on.
        subject: String,
        /// The client's or server's reason.
        reason: String,
    },
    /// A key-value bucket operation failed.
    #[error("key-value bucket {bucket}: {reason}")]
    KeyValue {
        /// Bucket name.
        bucket: String,
        /// The server's or client's reason (timeout, wrong revision, missing bucket).
        reason: String,
    },
    /// The configuration is unusable.
    #[error("invalid nats configuration: {0}")]
    Config(String),
}

/// Why a payload is not a usable event.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    /// Not valid protobuf for `baton.v1.Event`.
    #[error("payload is not a valid baton.v1.Event protobuf: {0}")]
    Protobuf(String),
    /// Valid protobuf, but the body is missing or of a kind this build does not know (a newer
    /// producer?).
    #[error("event {event_id:?} has no body this build knows (missing, or from a newer producer)")]
    UnknownBody {
        /// The event's id.
        event_id: String,
    },
    /// A known body, but not the one the consumer's subject carries (a producer published on
    /// the wrong subject).
    #[error("expected a {expected} event on {subject}, got a {got} (event {event_id:?})")]
    UnexpectedBody {
        /// The subject it arrived on.
        subject: String,
        /// The kind the consumer handles (`task_routed`).
        expected: &'static str,
        /// The kind it got (`plan_proposed`).
        got: &'static str,
        /// The event's id.
        event_id: String,
    },
}
