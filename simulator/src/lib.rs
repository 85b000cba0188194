//! # meshota-sim
//!
//! The fleet simulator, for load testing and capacity planning.
//!
//! # Layout
//!
//! - [`scenario`]: what to simulate (fleet, sites, link rates, waves,
//!   faults, seed), from flags or TOML, and the Kumar–Ross lower bound.
//! - [`virt`]: virtual-time mode. A discrete-event model of the network
//!   and the broker around the production cores (device agent, chunk
//!   scheduler, rollout planner), fast enough for 100,000 devices.
//! - [`payload`]: the simulated release's payload and its chunks, the
//!   same bytes in both modes.
//! - [`summary`]: the figures every run reports, against the origin-only
//!   baseline and the theoretical bound.
//! - [`progress`]: what a run reports while it goes, and the progress bar.
//! - [`report`]: `--report DIR`: `report.json` and a self-contained
//!   `report.html` with SVG charts.
//! - [`load`]: `meshota-sim load`, MQTT-only virtual devices against a
//!   broker, for connect rate, throughput and delivery latency.
//!
//! - [`live`]: live mode. The real broker and real device agents in one
//!   process, over a shaped loopback network.
#![warn(missing_docs)]

pub mod live;
pub mod load;
pub mod payload;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod summary;
pub mod virt;
