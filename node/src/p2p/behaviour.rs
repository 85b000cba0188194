//! The composed libp2p behaviour and swarm construction.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, connection_limits, identify, kad, mdns, memory_connection_limits, noise,
    ping, request_response, tcp, yamux, StreamProtocol, Swarm, SwarmBuilder,
};

use super::codec::{ChunkCodec, PROTOCOL};
use super::config::P2pConfig;
use super::P2pError;

/// Kademlia protocol name: a meshota-only DHT, never mixed with IPFS.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshota/kad/1.0.0");

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/meshota/id/1";

/// Everything a meshota node speaks, composed.
#[derive(NetworkBehaviour)]
pub(crate) struct MeshBehaviour {
    /// Connection counts, in total and per peer.
    pub(crate) limits: connection_limits::Behaviour,
    /// Refuse connections under memory pressure.
    pub(crate) memory: Toggle<memory_connection_limits::Behaviour>,
    /// Banned peers: their connections are closed and refused.
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Addresses and agent versions.
    pub(crate) identify: identify::Behaviour,
    /// Liveness.
    pub(crate) ping: ping::Behaviour,
    /// Provider records keyed by manifest id.
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    /// LAN discovery, switchable off.
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// `/meshota/chunks/1`.
    pub(crate) chunks: request_response::Behaviour<ChunkCodec>,
}

/// Builds the swarm: TCP + noise + yamux and the behaviours above.
///
/// # Errors
/// [`P2pError::Transport`] / [`P2pError::Behaviour`] when libp2p refuses.
pub(crate) fn build_swarm(
    config: &P2pConfig,
    keypair: Keypair,
) -> Result<Swarm<MeshBehaviour>, P2pError> {
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_established_per_peer(Some(config.max_connections_per_peer))
                .with_max_pending_incoming(Some(config.max_connections))
                .with_max_pending_outgoing(Some(config.max_connections));
            let memory = config
                .max_memory_fraction
                .map(memory_connection_limits::Behaviour::with_max_percentage);
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("meshota-node/{}", env!("CARGO_PKG_VERSION"))),
            );
            let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
            kad_cfg.set_query_timeout(Duration::from_secs(30));
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_cfg,
            );
            // Devices sit on private LANs without confirmed external
            // addresses; answer DHT queries anyway.
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if config.mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            let chunks = request_response::Behaviour::with_codec(
                ChunkCodec,
                [(PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(config.request_timeout)
                    .with_max_concurrent_streams(config.max_concurrent_uploads.max(1) * 4 + 64),
            );
            Ok(MeshBehaviour {
                limits: connection_limits::Behaviour::new(limits),
                memory: Toggle::from(memory),
                blocked: allow_block_list::Behaviour::default(),
                identify,
                ping: ping::Behaviour::new(ping::Config::new()),
                kad,
                mdns: Toggle::from(mdns),
                chunks,
            })
        })
        .map_err(|e| P2pError::Behaviour(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}
