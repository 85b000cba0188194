//! Configuration of a peer-to-peer node.

use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use meshota_protocol::SiteId;

use super::shape::ConnectionShaper;
use crate::sched::SchedulerConfig;

/// How a node takes part in the mesh.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Addresses to listen on. Default `/ip4/0.0.0.0/tcp/0`; tests use
    /// `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// This node's site (its LAN). Peers on the same site are preferred.
    pub site: Option<SiteId>,
    /// Discover peers on the LAN with mDNS. On by default; tests turn it
    /// off and dial explicitly so parallel tests do not see each other.
    pub mdns: bool,
    /// Peers to dial at start (for example the origin's announced
    /// addresses); they also seed the Kademlia routing table.
    pub bootstrap: Vec<Multiaddr>,
    /// Serve held chunks to others. `false` (metered links) answers every
    /// request with `NotFound`.
    pub seed: bool,
    /// Seed-only origin: answers `Have` with `origin: true`, never
    /// fetches, and provides every store root on Kademlia at start.
    pub seed_only: bool,
    /// Upload limit in bytes per second (`None`: unlimited). Chunk
    /// responses are paced one after another at this rate, each started
    /// once the one before it has had its time, so just under the
    /// uplink rate each goes out at the full rate rather than a share;
    /// and each is written at this rate a slice at a time (but over 6 s
    /// at most; [`super::codec::write_paced`]), so the uplink's queue
    /// stays short.
    pub upload_limit_bps: Option<u64>,
    /// Download limit in bytes per second (`None`: unlimited). Enforced by
    /// holding back requests, so at most one request window overshoots.
    pub download_limit_bps: Option<u64>,
    /// Chunk uploads in flight at once; more are answered `Busy`.
    pub max_concurrent_uploads: usize,
    /// With an upload limit, a chunk request is answered `Busy` when the
    /// uploads already accepted would hold its answer back longer than
    /// this: the requester does better asking an idle neighbour than
    /// queueing here. On a slow uplink that leaves one or two uploads
    /// queued where the slots would allow many, each waiting seconds.
    /// No effect without a limit.
    pub upload_queue_max: Duration,
    /// Established connections in total.
    pub max_connections: u32,
    /// Established connections per peer.
    pub max_connections_per_peer: u32,
    /// Refuse new connections when the process uses more than this
    /// fraction of physical memory (`None`: no memory limit).
    pub max_memory_fraction: Option<f64>,
    /// Transport-level timeout for one request-response exchange. Must
    /// cover upload-limiter delays on the serving side; the scheduler's
    /// own, tighter `request_timeout` decides when a peer is slow.
    pub request_timeout: Duration,
    /// Close connections idle for this long.
    pub idle_connection_timeout: Duration,
    /// Answer Kademlia queries (server mode, the default) or only ask
    /// them (client mode). A server is added to every routing table that
    /// learns of it, so each lookup and each automatic bootstrap of its
    /// peers may connect to it; with hundreds of nodes in one process
    /// (the simulator) those connections ran it out of descriptors.
    pub kad_server: bool,
    /// Peers per Kademlia routing-table bucket (the usual k is 20). The
    /// table preallocates all 256 buckets, about 1.6 MB a node at 20, so
    /// the simulator's clients, which only ever list the origin, use fewer.
    pub kad_bucket_size: usize,
    /// Seed-only origin: after serving a chunk, withhold it (from `Have`
    /// answers, and `NotFound` to `Get`) for this long, so the fleet takes
    /// it from that first copy ([`crate::sched::OriginDedup`]). Zero turns
    /// it off. The peer a chunk was last served to is served it again (it
    /// evidently lost it); a device that restarts under a new identity
    /// may wait up to this long for chunks lost in flight.
    pub origin_dedup_window: Duration,
    /// Chunk scheduler tuning.
    pub scheduler: SchedulerConfig,
    /// **Test and simulator only.** Flip a byte in every chunk served, to
    /// play a malicious peer. Never set this on a real device.
    pub corrupt_uploads: bool,
    /// **Simulator only.** Wraps every TCP connection (token buckets,
    /// latency); `None` (the default) uses the stock transport untouched.
    pub shaper: Option<Arc<dyn ConnectionShaper>>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            listen: vec![Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED)
                .with(libp2p::multiaddr::Protocol::Tcp(0))],
            site: None,
            mdns: true,
            bootstrap: Vec::new(),
            seed: true,
            seed_only: false,
            upload_limit_bps: None,
            download_limit_bps: None,
            max_concurrent_uploads: 32,
            upload_queue_max: Duration::from_millis(1500),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_memory_fraction: Some(0.9),
            request_timeout: Duration::from_secs(60),
            idle_connection_timeout: Duration::from_secs(120),
            kad_server: true,
            kad_bucket_size: 20,
            origin_dedup_window: Duration::from_secs(30),
            scheduler: SchedulerConfig::default(),
            corrupt_uploads: false,
            shaper: None,
        }
    }
}

impl P2pConfig {
    /// A configuration for tests and the simulator: loopback, port 0,
    /// mDNS off.
    pub fn loopback() -> Self {
        Self {
            listen: vec![Multiaddr::from(std::net::Ipv4Addr::LOCALHOST)
                .with(libp2p::multiaddr::Protocol::Tcp(0))],
            mdns: false,
            ..Self::default()
        }
    }

    /// The same node as a seed-only origin.
    pub fn origin(mut self) -> Self {
        self.seed_only = true;
        self.seed = true;
        self
    }
}

impl P2pConfig {
    /// The data-plane settings of a device configuration file.
    ///
    /// # Errors
    /// [`crate::config::ConfigError::Invalid`] naming the bad address or site.
    pub fn from_device_config(
        cfg: &crate::config::Config,
    ) -> Result<Self, crate::config::ConfigError> {
        let addr = |field: &'static str, s: &String| {
            s.parse::<Multiaddr>()
                .map_err(|e| crate::config::ConfigError::Invalid {
                    field,
                    problem: format!("{s:?} is not a multiaddr: {e}"),
                    fix: "use a libp2p multiaddr such as /ip4/0.0.0.0/tcp/4001",
                })
        };
        let listen = cfg
            .p2p
            .listen
            .iter()
            .map(|s| addr("p2p.listen", s))
            .collect::<Result<_, _>>()?;
        let bootstrap = cfg
            .p2p
            .bootstrap
            .iter()
            .map(|s| addr("p2p.bootstrap", s))
            .collect::<Result<_, _>>()?;
        let site =
            SiteId::new(&cfg.device.site).map_err(|e| crate::config::ConfigError::Invalid {
                field: "device.site",
                problem: e.to_string(),
                fix: "use a short name without '/', '+', '#' or spaces",
            })?;
        let limit = |bps: u64| (bps > 0).then_some(bps);
        Ok(Self {
            listen,
            bootstrap,
            site: Some(site),
            mdns: cfg.p2p.mdns,
            seed: cfg.p2p.seed,
            upload_limit_bps: limit(cfg.p2p.max_upload_bps),
            download_limit_bps: limit(cfg.p2p.max_download_bps),
            upload_queue_max: Duration::from_millis(cfg.p2p.upload_queue_ms),
            scheduler: SchedulerConfig {
                have_refresh: Duration::from_millis(cfg.p2p.have_refresh_ms),
                have_refresh_max: Duration::from_millis(cfg.p2p.have_refresh_max_ms),
                far_have_refresh: Duration::from_millis(cfg.p2p.far_have_refresh_ms),
                claim_check: Duration::from_millis(cfg.p2p.claim_check_ms),
                ..SchedulerConfig::default()
            },
            ..Self::default()
        })
    }
}
