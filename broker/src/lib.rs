//! # meshota-broker
//!
//! The server side of meshota and the operator CLI `meshota`.
//!
//! # Layout
//!
//! - [`cli`]: pieces every operator command shares: key directories and
//!   trust files ([`cli::keys`]), crash-safe output files
//!   ([`cli::atomic`]), the clock, and fix hints for errors.
//! - [`bundle_tool`]: `meshota bundle create | inspect | verify | extract`.
//!   Creation is two streaming passes (chunk and hash, then compress on
//!   every core), so memory stays bounded whatever the payload size.
//! - [`rollout`]: the sans-IO staged-rollout planner: waves, thresholds,
//!   soak, halt, pause/resume/abort, gate re-signing, status, snapshots.
//! - [`rollouts`]: the rollout driver around those planners: creation,
//!   feeding reports, persistence, signing gates and rollback commands,
//!   publishing them.
//! - [`server`]: [`server::Server::spawn`] starts the broker deployment
//!   `meshota-broker` (embedded MQTT broker, control plane, HTTP API and
//!   origin) under one supervisor; address accessors; `shutdown`.
//! - [`config`]: the deployment's TOML/flag configuration and the secrets
//!   created in the data directory at first start.
//! - [`mqtt`]: the embedded rumqttd behind our own listeners
//!   ([`mqtt::embedded`]) and the control plane's rumqttc client that
//!   ingests telemetry and owns retained announcements ([`mqtt::control`]).
//! - [`auth`]: MQTT admission: signed device tokens, enrolment, the
//!   control-plane login.
//! - [`registry`]: devices, events, counters, releases and announcements
//!   in sled.
//! - [`ingest`]: verification of device reports (signature, topic,
//!   replay counter) before they touch the registry.
//! - [`origin`]: bundle verification on upload into the chunk store.
//! - [`seeder`]: the libp2p origin seeder over that store (seed-only).
//! - [`http`]: the axum JSON API, origin endpoints and `/metrics`.
//! - [`client`]: the operator's HTTP client for that API.
//! - [`operator`]: `meshota release | devices | fleet` as clap types that
//!   return what to print.
//!
//! The binaries (`src/bin/meshota.rs`, `src/bin/meshota-broker.rs`) only
//! parse arguments and call into these modules.
#![warn(missing_docs)]

pub mod auth;
pub mod bundle_tool;
pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod ingest;
pub mod mqtt;
pub mod operator;
pub mod origin;
pub mod registry;
pub mod rollout;
pub mod rollouts;
pub mod seeder;
pub mod server;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
