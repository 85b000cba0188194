//! # meshota-broker
//!
//! # Layout
//!
//! The server side and the operator CLI `meshota`.
