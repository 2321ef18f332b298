//! The built-in runner of the `tcp` health-check kind: [`TcpRunner`] counts an asset healthy
//! when its [`TcpProbe`] address accepts a connection (databases, caches, anything without an
//! HTTP health endpoint). It runs no actions.

use crate::runner::{ActionRunner, ProbeError, ProbeResult, probe_kind};
use baton_proto::{HealthCheck, TcpProbe, health_check};
use futures::future::BoxFuture;
use std::time::Duration;

/// Probes `tcp` health checks: one connection attempt (name resolution included) within a
/// timeout, closed at once.
#[derive(Debug, Clone, Copy)]
pub struct TcpRunner {
    /// Longest one attempt may take (`execution.action_timeout`).
    timeout: Duration,
}

impl TcpRunner {
    /// A runner whose connection attempts give up after `timeout`.
    pub fn new(timeout: Duration) -> TcpRunner {
        TcpRunner { timeout }
    }

    async fn connect(&self, probe: &TcpProbe) -> ProbeResult {
        let address = probe.address.trim();
        if address.is_empty() {
            return Err(ProbeError::Unhealthy(
                "the tcp health check has no address; set it to host:port".into(),
            ));
        }
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(ProbeError::Unhealthy(format!("connect {address}: {e}"))),
            Err(_) => Err(ProbeError::Unhealthy(format!(
                "connect {address}: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

impl ActionRunner for TcpRunner {
    fn probe<'a>(&'a self, check: &'a HealthCheck) -> BoxFuture<'a, ProbeResult> {
        Box::pin(async move {
            match &check.kind {
                Some(health_check::Kind::Tcp(tcp)) => self.connect(tcp).await,
                _ => Err(ProbeError::Unsupported(format!(
                    "the tcp runner probes tcp health checks, not {}",
                    probe_kind(check).unwrap_or("a check without a kind")
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ActionError;
    use baton_proto::Action;

    fn tcp(address: &str) -> HealthCheck {
        HealthCheck {
            kind: Some(health_check::Kind::Tcp(TcpProbe {
                address: address.into(),
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_listening_port_is_healthy_and_a_closed_one_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let runner = TcpRunner::new(Duration::from_secs(2));
        assert_eq!(runner.probe(&tcp(&address)).await, Ok(()));

        // The same port once nothing listens on it: refused.
        drop(listener);
        let err = runner.probe(&tcp(&address)).await.unwrap_err();
        let ProbeError::Unhealthy(detail) = &err else {
            panic!("{err:?}")
        };
        assert!(
            detail.starts_with(&format!("connect {address}: ")) && detail.contains("refused"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn bad_addresses_and_other_kinds_are_reported() {
        let runner = TcpRunner::new(Duration::from_secs(2));
        assert!(
            matches!(runner.probe(&tcp(" ")).await, Err(ProbeError::Unhealthy(m)) if m.contains("no address"))
        );
        assert!(
            matches!(runner.probe(&tcp("no-port")).await, Err(ProbeError::Unhealthy(m)) if m.starts_with("connect no-port: "))
        );
        assert!(matches!(
            runner.probe(&HealthCheck::default()).await,
            Err(ProbeError::Unsupported(_))
        ));
        assert!(matches!(
            runner.run(&Action::default()).await,
            Err(ActionError::Unsupported(_))
        ));
    }
}
