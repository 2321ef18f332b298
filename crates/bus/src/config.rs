//! Configuration of the NATS connection and streams (`[nats]` in baton.toml, `BATON_NATS__*`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Subject families stored in the main stream. Dead letters (`baton.dead.>`) live in their own
/// stream, since two streams may not share subjects.
pub(crate) const MAIN_SUBJECTS: &[&str] = &[
    "baton.trigger.>",
    "baton.ingestion.>",
    "baton.task.>",
    "baton.agent.>",
    "baton.execution.>",
];

/// How to reach NATS and how the streams and consumers are set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Server URL(s), comma-separated (`nats://127.0.0.1:4222`). Empty in `baton up` means
    /// "start a nats-server child".
    pub url: String,
    /// Client name shown by the server's monitoring.
    pub client_name: String,
    /// NATS credentials file (`.creds`, a user JWT and its seed), for a server with
    /// decentralized (operator/account) auth.
    pub credentials_file: Option<PathBuf>,
    /// File holding this process's nkey user seed (`SU…`), for a server whose
    /// `authorization` block lists nkey users (what `baton up` and `baton nats-config` set up;
    /// see `baton_bus::identity`). The seed itself never appears in the configuration.
    pub nkey_seed_file: Option<PathBuf>,
    /// Prefix of this client's reply subjects. A Baton identity may receive replies only under
    /// `_INBOX_<user>` (so no user reads another's), so set it with `nkey_seed_file`.
    pub inbox_prefix: String,
    /// CA certificate (PEM) to verify the server's TLS certificate; setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), for a server that verifies clients (`tls { verify:
    /// true }`, mutual TLS); needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Main stream name.
    pub stream: String,
    /// Dead-letter stream name.
    pub dead_stream: String,
    /// Copies JetStream keeps of each stream (`BATON` and `BATON_DEAD`) and of each KV bucket
    /// the services create: 1 for a single server (`baton up`), 3 in a cluster of three
    /// servers (docker-compose, Kubernetes: `BATON_NATS__REPLICAS=3`), so losing one server
    /// loses nothing. At most 5 (JetStream's limit) and at most the cluster's size.
    pub replicas: usize,
    /// How long the stream remembers message ids for deduplication (also the horizon of
    /// trigger idempotency keys).
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long events stay in the main stream (the audit log keeps them for good); 0 = forever.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliver: i64,
    /// How long the server waits for an ack before redelivering.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Delays before redelivery, by attempt (the last one repeats): `["250ms", "1s", "5s"]`.
    #[serde(with = "durations")]
    pub backoff: Vec<Duration>,
    /// Unacked messages a consumer may hold (bounds in-flight work per consumer).
    pub max_ack_pending: i64,
    /// Publishes awaiting their stream ack, per connection.
    pub max_ack_inflight: usize,
    /// Timeout of the first connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of JetStream API requests and publish acks.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: String::new(),
            client_name: "baton".into(),
            credentials_file: None,
            nkey_seed_file: None,
            inbox_prefix: "_INBOX".into(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            stream: "BATON".into(),
            dead_stream: "BATON_DEAD".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            backoff: vec![
                Duration::from_millis(250),
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(15),
            ],
            max_ack_pending: 1024,
            max_ack_inflight: 4096,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl BusConfig {
    /// Checks values that the server would reject with a less helpful message.
    pub fn validate(&self) -> Result<(), crate::BusError> {
        let bad = |m: &str| Err(crate::BusError::Config(m.to_string()));
        if self.url.trim().is_empty() {
            return bad("nats.url is empty: set it to the server URL (nats://host:4222)");
        }
        if self.credentials_file.is_some() && self.nkey_seed_file.is_some() {
            return bad(
                "nats.credentials_file and nats.nkey_seed_file are both set: use one way to authenticate",
            );
        }
        if self.inbox_prefix.is_empty() || self.inbox_prefix.contains(['.', '*', '>', ' ']) {
            return bad(
                "nats.inbox_prefix must be one subject token without wildcards (_INBOX_ingestion)",
            );
        }
        if !(1..=5).contains(&self.replicas) {
            return bad(
                "nats.replicas must be 1 to 5: 1 for a single nats-server, 3 for a cluster of three",
            );
        }
        if self.max_deliver < 1 {
            return bad("nats.max_deliver must be at least 1");
        }
        if self.backoff.is_empty() {
            return bad("nats.backoff needs at least one delay");
        }
        if self.stream.is_empty() || self.stream.contains('.') || self.dead_stream.contains('.') {
            return bad("stream names must be non-empty and contain no '.'");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad(
                "set both nats.tls_cert_file and nats.tls_key_file (PEM files), or neither",
            );
        }
        Ok(())
    }

    /// The servers of `url`, split at commas (`nats://nats-1:4222,nats://nats-2:4222`): the
    /// client connects to one and fails over to the others (and to those the cluster
    /// announces). Errors: [`crate::BusError::Config`] naming the URL that does not parse.
    pub fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, crate::BusError> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    crate::BusError::Config(format!(
                        "nats.url {u:?} is not a NATS URL ({e}): use nats://host:4222, several separated by commas"
                    ))
                })
            })
            .collect()
    }

    /// Redelivery delay before attempt `delivered + 1`.
    pub fn backoff_for(&self, delivered: i64) -> Duration {
        let i = (delivered.max(1) as usize - 1).min(self.backoff.len() - 1);
        self.backoff[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_is_several_servers() {
        let c = BusConfig {
            url: "nats://nats-1:4222, nats://nats-2:4222,nats://nats-3:4223".into(),
            ..BusConfig::default()
        };
        let servers = c.server_addrs().unwrap();
        let hosts: Vec<(String, u16)> = servers
            .iter()
            .map(|s| (s.host().to_string(), s.port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("nats-1".to_string(), 4222),
                ("nats-2".to_string(), 4222),
                ("nats-3".to_string(), 4223)
            ]
        );
        let bad = BusConfig {
            url: "nats://a:4222,nats://b:notaport".into(),
            ..BusConfig::default()
        };
        let err = bad.server_addrs().unwrap_err().to_string();
        assert!(err.contains("nats://b:notaport"), "{err}");
    }

    #[test]
    fn replicas_outside_one_to_five_are_refused_with_the_key() {
        let with = |replicas| BusConfig {
            url: "nats://127.0.0.1:4222".into(),
            replicas,
            ..BusConfig::default()
        };
        assert_eq!(BusConfig::default().replicas, 1, "baton up runs one server");
        for ok in [1, 3, 5] {
            assert!(with(ok).validate().is_ok(), "replicas {ok}");
        }
        for bad in [0, 6] {
            let err = with(bad).validate().unwrap_err().to_string();
            assert!(err.contains("nats.replicas must be 1 to 5"), "{bad}: {err}");
        }
    }
}

/// Serde for `Vec<Duration>` as human-readable strings (`"250ms"`).
mod durations {
    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| Serde::from(*d))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<Serde<Duration>>::deserialize(d)?
            .into_iter()
            .map(Serde::into_inner)
            .collect())
    }
}
