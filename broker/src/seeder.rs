//! The origin seeder: the node library's peer code in seed-only mode,
//! serving every published release over libp2p from the origin store.
//!
//! Devices reach it through the bootstrap addresses announcements carry,
//! and through Kademlia provider records for each published manifest. Its
//! `OriginDedup` keeps it near one copy per release whatever the fleet
//! size; HTTP (`GET /v1/chunks/{id}`) stays as the fallback.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use meshota_node::p2p::{load_or_create_identity, Node, NodeHandle, P2pConfig};
use meshota_node::store::Store;
use meshota_protocol::ManifestId;

use crate::http::HttpStats;

/// Why the seeder could not start.
#[derive(Debug, thiserror::Error)]
pub enum SeederError {
    /// A `--p2p-listen` value is not a multiaddr.
    #[error("--p2p-listen {addr:?} is not a libp2p multiaddr ({reason}); use e.g. /ip4/0.0.0.0/tcp/4001")]
    Addr {
        /// The value.
        addr: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The identity file is unusable.
    #[error("origin p2p identity: {0}")]
    Identity(String),
    /// The node did not start or listen.
    #[error("origin p2p node: {0}")]
    Node(String),
}

/// A running seeder.
#[derive(Clone)]
pub struct Seeder {
    node: NodeHandle,
}

impl Seeder {
    /// Starts a seed-only node on `listen` over `store`, with its identity
    /// in `identity_file`, and provides every manifest already published.
    /// Each chunk served is withheld for `dedup_window` after (see
    /// `P2pConfig::origin_dedup_window`). It accepts `max_connections`
    /// peers at once, and uploads at most `max_upload_bps` (`None`: no
    /// limit; see `P2pConfig::upload_limit_bps`).
    ///
    /// # Errors
    /// [`SeederError`] naming what failed.
    pub async fn start(
        listen: &[String],
        store: Arc<dyn Store>,
        identity_file: &std::path::Path,
        published: &[ManifestId],
        dedup_window: Duration,
        max_connections: u32,
        max_upload_bps: Option<u64>,
    ) -> Result<Self, SeederError> {
        let listen = listen
            .iter()
            .map(|a| {
                a.parse::<Multiaddr>().map_err(|e| SeederError::Addr {
                    addr: a.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let identity = load_or_create_identity(identity_file).map_err(SeederError::Identity)?;
        let config = P2pConfig {
            listen,
            mdns: false,
            origin_dedup_window: dedup_window,
            // The node default (256) suits a device; with it, devices
            // past the 256th of a 1,000-device live run were refused
            // and never found a provider.
            max_connections,
            upload_limit_bps: max_upload_bps,
            ..P2pConfig::default()
        }
        .origin();
        let node =
            Node::spawn(config, store, identity).map_err(|e| SeederError::Node(e.to_string()))?;
        let seeder = Self { node };
        for id in published {
            seeder.provide(*id).await;
        }
        Ok(seeder)
    }

    /// Announces on Kademlia that the origin serves `manifest`. Failures
    /// are logged, not fatal: devices also dial the origin directly.
    pub async fn provide(&self, manifest: ManifestId) {
        if let Err(e) = self.node.provide(manifest).await {
            tracing::warn!(%manifest, "providing on Kademlia: {e}");
        }
    }

    /// The seeder's dialable addresses, each ending in `/p2p/<peer id>`:
    /// what announcements carry as bootstrap peers.
    pub async fn addrs(&self) -> Vec<Multiaddr> {
        let id = self.node.peer_id();
        self.node
            .listen_addrs()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.with(Protocol::P2p(id)))
            .collect()
    }

    /// The node, for tests and metrics.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// Copies the node's upload counter into the HTTP stats every second,
    /// so `/metrics` shows origin bytes served over p2p next to HTTP.
    pub async fn report_into(self, stats: Arc<HttpStats>) -> Result<(), String> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let uploaded = self.node.stats().uploaded_bytes;
            stats.origin_p2p_bytes.store(uploaded, Ordering::Relaxed);
        }
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}
