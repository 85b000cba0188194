//! # meshota-sim
//!
//! # Layout
//!
//! Empty for now: the live and virtual-time fleet simulator lands with
//! issue 7 and will drive `meshota-node`'s sans-IO cores.
