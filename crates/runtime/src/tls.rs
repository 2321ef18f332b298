//! TLS plumbing shared by Baton's clients and servers: one rustls crypto provider (ring, the
//! one async-nats and tonic already use) for the whole process, and the HTTP client builder
//! every crate uses so HTTPS works without each one choosing a provider.

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
