//! # meshota-tests
//!
//! # Layout
//!
//! End-to-end tests that run the shipped binaries as separate processes
//! (issue 8). Nothing here yet.
