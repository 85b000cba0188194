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
//!
//! The `meshota` binary (`src/bin/meshota.rs`) only parses arguments and
//! calls into these modules; everything it prints comes from their
//! report types.
#![warn(missing_docs)]

pub mod bundle_tool;
pub mod cli;
pub mod rollout;
