//! The `baton` command, as a library so the demo, the end-to-end tests and the benchmark start
//! Baton exactly as `baton up` does.
//!
//! - [`config`]: the whole `baton.toml` ([`config::BatonConfig`]), layered with `BATON_*` env.
//! - [`up`]: runs any set of services in one process ([`up::Baton`]), starting a `nats-server`
//!   child when no NATS URL is configured.
//! - [`nats_auth`]: the NATS identities (admin, one per service, trigger publishers), their
//!   seed files and the server's authorization block, for `baton up` and `baton nats-config`.
//! - [`client`]: gRPC clients with bearer tokens, and [`client::describe`], the one-line
//!   rendering of an event that `baton watch` and the demo print.
//! - [`inspect`]: what `baton task` (a task, its report and artifacts, `--artifact`) and
//!   `baton watch` (events and the agent's live progress) print.
//! - [`routing`]: `baton eval-routing`, `baton classify`, `baton route` and `baton shadow`.

pub mod client;
pub mod config;
pub mod inspect;
pub mod nats_auth;
pub mod routing;
pub mod up;
