//! TLS plumbing shared by Baton's clients and servers: one rustls crypto provider (ring, the
//! one async-nats and tonic already use) for the whole process, the HTTP client builder
//! every crate uses so HTTPS works without each one choosing a provider, and `[grpc_tls]`,
//! the gRPC server's certificate and, for mutual TLS, the CA its clients' certificates must
//! chain to.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[grpc_tls]`: TLS for the gRPC server. Without `cert` and `key` the server speaks plain
/// HTTP/2 (fine on loopback, not across a network).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// The server's certificate chain, PEM (leaf first).
    pub cert: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// A CA certificate, PEM: when set, every client must present a certificate it issued
    /// (mutual TLS), in addition to its bearer token.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The settings contradict each other.
    #[error("{0}")]
    Config(String),
    /// A certificate or key file cannot be read.
    #[error("cannot read {key} file {path}: {source}")]
    Read {
        /// The setting naming the file (`grpc_tls.cert`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
}

impl GrpcTlsConfig {
    /// True when the server is to speak TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Checks that `cert` and `key` come together and that `client_ca` has a server
    /// certificate to go with.
    pub fn validate(&self) -> Result<(), TlsError> {
        match (&self.cert, &self.key, &self.client_ca) {
            (Some(_), Some(_), _) | (None, None, None) => Ok(()),
            (None, None, Some(_)) => Err(TlsError::Config(
                "grpc_tls.client_ca needs grpc_tls.cert and grpc_tls.key: mutual TLS is TLS first"
                    .into(),
            )),
            _ => Err(TlsError::Config(
                "set both grpc_tls.cert and grpc_tls.key (PEM files), or neither for plain gRPC"
                    .into(),
            )),
        }
    }

    /// The tonic server settings, the files read; `None` when TLS is off.
    ///
    /// Errors: [`TlsError::Config`] for contradictory settings, [`TlsError::Read`] for a file
    /// that cannot be read.
    pub fn server_config(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, TlsError> {
        self.validate()?;
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        install_crypto_provider();
        let identity = tonic::transport::Identity::from_pem(
            read("grpc_tls.cert", cert)?,
            read("grpc_tls.key", key)?,
        );
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
                "grpc_tls.client_ca",
                ca,
            )?));
        }
        Ok(Some(tls))
    }
}

/// The bytes of the file `path` named by setting `key`.
pub fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// Installs ring as the process's default rustls crypto provider, once; later calls (or a
/// provider installed by someone else first) leave it as it is.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `reqwest` client builder with HTTPS (rustls, the platform's trusted roots) ready: use it
/// instead of `reqwest::Client::builder()`, which panics when no crypto provider is installed.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}
