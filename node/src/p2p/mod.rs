//! The libp2p data plane: peers fetch chunks of a manifest from each
//! other over `/meshota/chunks/1`, verify them and store them.
//!
//! # Layout
//!
//! - [`config`]: [`P2pConfig`], with [`P2pConfig::loopback`] for tests.
//! - [`codec`]: length-prefixed frames over the one meshota codec, with
//!   per-kind size caps checked before allocating.
//! - `behaviour`: the composed swarm (TCP + noise + yamux, identify,
//!   Kademlia, mDNS, connection and memory limits, block list,
//!   request-response).
//! - `dht`: the release and site rendezvous keys, providing them, and
//!   the provider lookups of [`NodeHandle::providers`].
//! - `providers`: the Kademlia record store, which keeps many providers
//!   per key and names a random 20 in each answer.
//! - `serve`: answers `Have`, `Get` and `Manifest`, with an upload
//!   token bucket and a cap on concurrent uploads; `addr_book`, an
//!   origin's bounded book of where peers listen, for its hints.
//! - `fetch`: resolves a manifest and drives one
//!   [`crate::sched::Scheduler`] per fetch, verifying every chunk before
//!   the store sees it.
//! - `fetcher`: [`P2pFetcher`], the device agent's fetcher over a node.
//! - `net`: the fetch loop's view of the swarm (dials, requests, bans,
//!   provides, lookups).
//! - [`shape`]: the [`ConnectionShaper`] hook the simulator uses to put
//!   every TCP connection through its network model.
//! - `node`: [`Node::spawn`] returns a [`NodeHandle`]; an event loop
//!   `select!`s over the swarm, handle commands, delayed responses and
//!   verified chunks, and never blocks.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(id: meshota_protocol::ManifestId) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use meshota_node::p2p::{FetchOptions, Node, P2pConfig};
//! use meshota_node::store::MemStore;
//!
//! let node = Node::spawn(
//!     P2pConfig::loopback(),
//!     Arc::new(MemStore::new()),
//!     libp2p::identity::Keypair::generate_ed25519(),
//! )?;
//! node.dial("/ip4/127.0.0.1/tcp/4001".parse()?).await?;
//! let report = node.fetch(id, FetchOptions::default()).await?;
//! println!("{:?} from peers, {} bytes already held", report.bytes, report.bytes.local);
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod addr_book;
mod behaviour;
pub mod codec;
pub mod config;
mod dht;
mod fetch;
mod fetcher;
#[macro_use]
mod net;
mod node;
mod providers;
mod serve;
pub mod shape;

use libp2p::PeerId;
use meshota_protocol::ManifestId;

pub use config::P2pConfig;
pub use fetch::{DownloadReport, FetchError, FetchOptions, FetchProgress};
pub use fetcher::{load_or_create_identity, P2pFetcher};
pub use node::{Node, NodeHandle};
/// Providers a DHT answer names, for models of the node (the simulator).
pub use providers::ANSWER as PROVIDERS_PER_ANSWER;
pub use serve::{NodeStats, TokenBucket};
pub use shape::{ConnInfo, ConnectionShaper, ShapedIo};

impl crate::sched::PeerBytes for PeerId {
    fn peer_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
}

/// 64 bits that differ from peer to peer and stay the same across runs:
/// the first 8 bytes of the BLAKE3 of its id.
pub(crate) fn peer_seed(peer: &PeerId) -> u64 {
    let h = blake3::hash(&peer.to_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Why the node could not start or carry out a command.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The transport could not be built.
    #[error("building the transport: {0}")]
    Transport(String),
    /// A behaviour could not be built (for example mDNS without a socket).
    #[error("building the network behaviour: {0}")]
    Behaviour(String),
    /// Listening failed.
    #[error("listening on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Dialing failed.
    #[error("dialing {addr}: {reason}")]
    Dial {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Kademlia refused to provide a record.
    #[error("providing manifest {manifest}: {reason}")]
    Provide {
        /// The manifest.
        manifest: ManifestId,
        /// Why.
        reason: String,
    },
    /// [`Node::spawn`] was called outside a tokio runtime.
    #[error("Node::spawn needs a tokio runtime")]
    NoRuntime,
    /// The node's event loop has stopped.
    #[error("the node has shut down")]
    Shutdown,
}

/// Something that happened on a node, for the agent, the simulator and
/// tests ([`NodeHandle::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A first connection to a peer.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A peer sent bad data and is banned (disconnected and blocked).
    PeerBanned {
        /// The peer.
        peer: PeerId,
        /// What it did.
        reason: String,
    },
    /// The scheduler stopped using a slow or silent peer.
    PeerDropped {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A fetch made no progress for the scheduler's `stall_timeout`; it
    /// keeps trying until its own timeout, if any.
    FetchStalled {
        /// The manifest.
        manifest: ManifestId,
    },
    /// A fetch ended.
    FetchFinished {
        /// The manifest.
        manifest: ManifestId,
        /// Whether it completed.
        ok: bool,
    },
}
