//! # meshota-node
//!
//! The device side of meshota, as a library the device agent, the broker's
//! origin and the simulator all reuse.
//!
//! # Layout
//!
//! - [`agent`]: the sans-IO device agent (announcements, commands, the
//!   install state machine, persistence) and a synchronous driver.
//! - [`install`]: A/B install backends (`dir`, `command`, `rauc`).
//! - [`config`]: the device's TOML configuration, validated.
//! - [`store`]: the content-addressed [`store::Store`] trait with a
//!   `MemStore` (simulator) and a `SledStore` (devices).
//! - [`sched`]: the sans-IO chunk scheduler. It decides which chunk to ask
//!   of which peer, when to give up on a peer, and when to fall back to
//!   the origin. Time comes in as `now`; it never touches a socket.
//!   Beside it, [`sched::discovery`]: which providers a fetch looks up
//!   and dials, and when, in the same sans-IO style.
//! - [`p2p`]: the libp2p driver: the swarm (TCP + noise + yamux, identify,
//!   Kademlia, mDNS, limits), the `/meshota/chunks/1`
//!   request-response protocol, serving with upload limits, and the fetch
//!   loop that feeds the scheduler and the store.
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod install;
pub mod p2p;
pub mod sched;
pub mod store;
