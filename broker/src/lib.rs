//! # meshota-broker
//!
//! # Layout
//!
//! The server side and the operator CLI `meshota`.
//!
//! - [`rollout`]: the sans-IO staged-rollout planner: waves, thresholds,
//!   soak, halt, pause/resume/abort, gate re-signing, status, snapshots.

pub mod rollout;
