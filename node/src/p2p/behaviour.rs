//! The composed libp2p behaviour and swarm construction.

use std::time::Duration;

use futures::future::Either;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade;
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, connection_limits, identify, kad, mdns, memory_connection_limits, noise,
    request_response, tcp, yamux, StreamProtocol, Swarm, SwarmBuilder, Transport,
};

use super::codec::{ChunkCodec, PROTOCOL};
use super::config::P2pConfig;
use super::providers::SampledStore;
use super::shape::{ConnInfo, ConnectionShaper, ShapedIo};
use super::P2pError;

/// Kademlia protocol name: a meshota-only DHT, never mixed with IPFS.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshota/kad/1.0.0");

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/meshota/id/1";

/// How often identify asks again on a connection already identified.
/// libp2p's default is every 5 minutes, each time both ends sending
/// their full record (keys, addresses, protocols: a few hundred bytes).
/// Nothing here needs it twice: what is read from it (a peer's listen
/// addresses, whether it serves the DHT) is fixed while a node runs, and
/// a node whose addresses change is identified afresh on its next
/// connection. On a device, every connection to another site that
/// outlived five minutes paid for it again over both sites' WAN links.
pub const IDENTIFY_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Everything a meshota node speaks, composed.
///
/// No libp2p ping: since libp2p-ping 0.43 a failed ping closes nothing,
/// and nothing here used the round trips it measured. It held a stream
/// open on every connection and was polled at each of the connection's
/// wake-ups: 4.6 % of the CPU of 1,000 simulated devices as they started
/// (BENCHMARKS.md, "2026-12-05 (late night)"). Dead peers are found by the
/// scheduler's request timeouts; idle connections close after
/// [`P2pConfig::idle_connection_timeout`](super::P2pConfig).
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
    /// Provider records keyed by manifest id.
    pub(crate) kad: kad::Behaviour<SampledStore>,
    /// LAN discovery, switchable off.
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// `/meshota/chunks/1`.
    pub(crate) chunks: request_response::Behaviour<ChunkCodec>,
}

/// Longest a connection may take from dial (or accept) to a running
/// multiplexer. Without it a peer that stalls its handshake holds a dial,
/// and every request queued behind that dial, forever: libp2p sets no
/// such limit itself.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds the swarm: TCP + noise + yamux, bounded by
/// [`HANDSHAKE_TIMEOUT`], and the behaviours above. With
/// [`P2pConfig::shaper`] set, the in-process memory transport is added
/// and every raw connection, TCP or memory, goes through the shaper
/// before noise.
///
/// # Errors
/// [`P2pError::Transport`] / [`P2pError::Behaviour`] when libp2p refuses.
pub(crate) fn build_swarm(
    config: &P2pConfig,
    keypair: Keypair,
) -> Result<Swarm<MeshBehaviour>, P2pError> {
    let tcp_config = tcp::Config::default().nodelay(true);
    let idle = config.idle_connection_timeout;
    let behaviour = |key: &Keypair| make_behaviour(config, key);
    let swarm = match config.shaper.clone() {
        None => SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp::tokio::Transport::new(tcp_config)
                        .upgrade(upgrade::Version::V1Lazy)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default())
                        .timeout(HANDSHAKE_TIMEOUT),
                )
            })
            .map_err(|e| P2pError::Transport(e.to_string()))?
            .with_behaviour(behaviour)
            .map_err(|e| P2pError::Behaviour(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
        Some(shaper) => SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                let memory_shaper = shaper.clone();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    MemoryTransport::new()
                        .map(move |chan, endpoint| {
                            let io: Box<dyn ShapedIo> = Box::new(chan);
                            match memory_info(&endpoint) {
                                Some(info) => memory_shaper.shape(io, info),
                                None => io,
                            }
                        })
                        .or_transport(
                            tcp::tokio::Transport::new(tcp_config)
                                .map(move |stream, endpoint| shaped(&*shaper, stream, endpoint)),
                        )
                        .map(|either, _| match either {
                            Either::Left(io) | Either::Right(io) => io,
                        })
                        .upgrade(upgrade::Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .timeout(HANDSHAKE_TIMEOUT),
                )
            })
            .map_err(|e| P2pError::Transport(e.to_string()))?
            .with_behaviour(behaviour)
            .map_err(|e| P2pError::Behaviour(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
    };
    Ok(swarm)
}

/// Hands a raw TCP connection to the shaper. A connection whose addresses
/// the kernel cannot report is already failing; it goes through unshaped.
fn shaped(
    shaper: &dyn ConnectionShaper,
    stream: tcp::tokio::TcpStream,
    endpoint: ConnectedPoint,
) -> Box<dyn ShapedIo> {
    match (stream.0.local_addr(), stream.0.peer_addr()) {
        (Ok(local), Ok(remote)) => shaper.shape(
            Box::new(stream),
            ConnInfo::Tcp {
                local,
                remote,
                dialer: endpoint.is_dialer(),
            },
        ),
        _ => Box::new(stream),
    }
}

/// The listener's port of a memory connection, which both ends know (the
/// dialer dialed it; the listener listens on it).
fn memory_info(endpoint: &ConnectedPoint) -> Option<ConnInfo> {
    let (addr, dialer) = match endpoint {
        ConnectedPoint::Dialer { address, .. } => (address, true),
        ConnectedPoint::Listener { local_addr, .. } => (local_addr, false),
    };
    addr.iter().find_map(|p| match p {
        Protocol::Memory(listener_port) => Some(ConnInfo::Memory {
            listener_port,
            dialer,
        }),
        _ => None,
    })
}

/// The composed behaviour, the same whichever transport carries it.
fn make_behaviour(
    config: &P2pConfig,
    key: &Keypair,
) -> Result<MeshBehaviour, Box<dyn std::error::Error + Send + Sync>> {
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
            .with_agent_version(format!("meshota-node/{}", env!("CARGO_PKG_VERSION")))
            .with_interval(IDENTIFY_INTERVAL),
    );
    let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
    kad_cfg.set_query_timeout(Duration::from_secs(30));
    if let Some(k) = std::num::NonZeroUsize::new(config.kad_bucket_size) {
        kad_cfg.set_kbucket_size(k);
    }
    let mut kad = kad::Behaviour::with_config(peer_id, SampledStore::new(peer_id), kad_cfg);
    // Devices sit on private LANs without confirmed external
    // addresses; answer DHT queries anyway.
    kad.set_mode(Some(if config.kad_server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));
    let mdns = if config.mdns {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    let chunks = request_response::Behaviour::with_codec(
        ChunkCodec {
            pace_bps: config.upload_limit_bps,
        },
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
        kad,
        mdns: Toggle::from(mdns),
        chunks,
    })
}
