//! The `baton` command, as a library so the demo, the end-to-end tests and the benchmark start
//! Baton exactly as `baton up` does.
//!
//! - [`config`]: the whole `baton.toml` ([`config::BatonConfig`]), layered with `BATON_*` env.
//! - [`up`]: runs any set of services in one process ([`up::Baton`]), starting a `nats-server`
//!   child when no NATS URL is configured.
//! - [`client`]: gRPC clients with bearer tokens, and [`client::describe`], the one-line
//!   rendering of an event that `baton watch` and the demo print.

pub mod client;
pub mod config;
pub mod up;
