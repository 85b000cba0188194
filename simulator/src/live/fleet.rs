//! Setting up a live fleet: keys, a signed bundle of random bytes, the
//! embedded broker with its origin seeder, and N devices, each with its
//! own MQTT session, libp2p node, store and simulated slots. Devices can
//! be stopped (a crash: the node dies first, so a download in flight
//! breaks off) and started again on the same store and data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use meshota_broker::server::Server;
use meshota_node::agent::mqtt::{self, DaemonError};
use meshota_node::p2p::{Node, NodeEvent, NodeHandle, NodeStats, P2pConfig, P2pFetcher};
use meshota_node::store::Store;
use meshota_protocol::{Bitfield, Manifest, ManifestId, ReleaseId, SecretKey, Signed, SiteId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::backend::{SharedSlots, SimBackend};
use super::shaper::{device_ip, NetModel};
use super::store::{ChunkPool, PoolStore};
use super::track::{Tracker, TrackingFetcher};
use super::LiveError;
use crate::scenario::Scenario;

/// Device class of the simulated fleet.
pub const COMPATIBLE: &str = "sim";
/// Channel the release is published on.
pub const CHANNEL: &str = "stable";
/// Longest a device's fetch may run before the agent retries it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest a stop waits for a device's agent to wind down.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The release under test.
#[derive(Debug, Clone)]
pub struct ReleaseInfo {
    /// The offline-signed release.
    pub signed: Signed<meshota_protocol::Release>,
    /// Its id.
    pub id: ReleaseId,
    /// Its manifest's id.
    pub manifest_id: ManifestId,
    /// Its manifest, as the bundle carries it.
    pub manifest: Arc<Manifest>,
    /// Chunk bytes in stored form (one full copy off the origin).
    pub stored_bytes: u64,
    /// Bytes of the bundle file.
    pub file_bytes: u64,
}

/// A running device: its node, and its agent task.
struct Running {
    node: NodeHandle,
    stop: oneshot::Sender<()>,
    agent: JoinHandle<Result<(), DaemonError>>,
}

/// One simulated device.
pub struct Device {
    /// Fleet-wide index.
    pub index: u32,
    /// Device id (`dev-00042`).
    pub id: String,
    /// Site.
    pub site: u32,
    /// Serves corrupted chunks.
    pub malicious: bool,
    /// Passes its health check.
    pub healthy: bool,
    /// Devices it dials on every start (its LAN and WAN neighbours).
    pub neighbours: Vec<u32>,
    keypair: libp2p::identity::Keypair,
    store: Arc<PoolStore>,
    slots: SharedSlots,
    data_dir: PathBuf,
    addr: Option<Multiaddr>,
    running: Option<Running>,
}

/// Everything of a live run.
pub struct Fleet {
    /// The scenario.
    pub s: Scenario,
    /// The broker deployment.
    pub server: Server,
    /// The devices.
    pub devices: Vec<Device>,
    /// The network model.
    pub net: Arc<NetModel>,
    /// Per-device records.
    pub tracker: Arc<Tracker>,
    /// The release.
    pub release: ReleaseInfo,
    /// The online rollout key.
    pub rollout_key: Arc<SecretKey>,
    /// The origin seeder's addresses, for announcements.
    pub origin: Vec<Multiaddr>,
    /// Peers banned for bad data, over the fleet.
    pub bans: Arc<AtomicU64>,
    /// Peers dropped as slow, over the fleet.
    pub drops: Arc<AtomicU64>,
    trust: PathBuf,
    mqtt: std::net::SocketAddr,
    /// Where the devices' MQTT sessions run (see [`SideRuntime`]).
    agents_rt: SideRuntime,
    // Before the files, after the server: the broker's tasks stop with it.
    _broker_rt: SideRuntime,
    // Last, so the broker and devices are gone before the files are.
    _tmp: tempfile::TempDir,
}

/// A one-thread runtime beside the devices' data plane.
///
/// - **The broker deployment** runs on one: a real broker has a machine
///   of its own. On the devices' runtime its MQTT client waited behind a
///   thousand devices' tasks, and while a wave prefetched, reports reached
///   the control plane at about 40 a second: the planner saw a wave's
///   last commit 22-29 s late (BENCHMARKS.md, "prefetch").
/// - **The devices' MQTT sessions** run on another: a real device's
///   telemetry waits for its own CPU, not behind 999 other devices'
///   transfers. Their fetches still run on the fleet's runtime.
struct SideRuntime {
    // `None` only once dropped.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl SideRuntime {
    fn new(name: &str) -> Result<Self, LiveError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(io(format!("starting the {name} runtime")))?;
        Ok(Self {
            handle: rt.handle().clone(),
            rt: Some(rt),
        })
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        // Dropping a runtime may block, which inside the fleet's own
        // runtime would panic; its tasks have stopped with the server
        // and the devices.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LiveError {
    let what = what.into();
    move |source| LiveError::Io { what, source }
}

fn rel(e: impl std::fmt::Display) -> LiveError {
    LiveError::Release(e.to_string())
}

/// A seeded generator (splitmix64): the same seed gives the same fleet.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x11FE_5EED)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// `k` distinct values of `0..n`, in random order.
    pub fn pick(&mut self, n: u32, k: u32) -> Vec<u32> {
        let mut all: Vec<u32> = (0..n).collect();
        let k = k.min(n) as usize;
        for i in 0..k {
            let j = i + self.below((all.len() - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// Writes `bytes` of the seeded payload ([`crate::payload`]) to `path`.
fn write_payload(path: &Path, bytes: u64, seed: u64) -> Result<(), LiveError> {
    let f = std::fs::File::create(path).map_err(io(format!("create {}", path.display())))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    std::io::copy(&mut crate::payload::Payload::new(bytes, seed), &mut w)
        .map_err(io(format!("write {}", path.display())))?;
    w.flush().map_err(io(format!("write {}", path.display())))
}

/// Keys, a bundle, and a published release on a running broker.
async fn setup_release(
    s: &Scenario,
    dir: &Path,
    broker_rt: &SideRuntime,
) -> Result<(Server, ReleaseInfo, Arc<SecretKey>, PathBuf), LiveError> {
    use meshota_broker::bundle_tool::create::{create, CreateOptions};
    use meshota_broker::cli::keys::{init, InitOptions, RoleSpec};
    let now = meshota_broker::now();
    let keys = dir.join("keys");
    let report = init(&InitOptions {
        dir: keys.clone(),
        root: RoleSpec::default(),
        release: RoleSpec::default(),
        rollout: RoleSpec::default(),
        expires_days: 30,
        force: false,
        now,
    })
    .map_err(rel)?;
    let payload = dir.join("payload.img");
    write_payload(&payload, s.bundle_bytes, s.seed)?;
    let bundle = dir.join("release.mota");
    let created = create(
        &CreateOptions {
            payload: payload.clone(),
            out: bundle.clone(),
            keys_dir: keys.clone(),
            name: "sim-rootfs".into(),
            version: "1.0.0".into(),
            compatible: COMPATIBLE.into(),
            channel: CHANNEL.into(),
            kind: meshota_protocol::InstallKind::Image,
            sequence: None,
            expires_days: 7,
            meta: Vec::new(),
            threads: Some(2),
            chunk_avg_kib: Some((s.chunk_avg / 1024).max(1)),
            now,
        },
        &indicatif::ProgressBar::hidden(),
    )
    .map_err(rel)?;
    // The payload is in the bundle now; free the disk.
    let _ = std::fs::remove_file(&payload);

    let mut cfg = meshota_broker::config::Config::for_tests(&dir.join("broker"));
    cfg.trust = Some(report.trust_file.clone());
    cfg.rollout_key = Some(keys.join("rollout.key"));
    cfg.auto_accept = true;
    cfg.p2p_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    cfg.p2p_origin_dedup_secs = s.origin_dedup_s;
    cfg.p2p_max_upload_bps = s.origin_upload_cap_bps().unwrap_or(0);
    cfg.max_connections = (s.devices as usize) * 2 + 100;
    // Spawned from the broker's runtime, its tasks stay there.
    let server = broker_rt
        .handle
        .spawn(Server::spawn(cfg))
        .await
        .map_err(|e| rel(format!("starting the broker: {e}")))??;
    let trust = server
        .trust()
        .cloned()
        .ok_or_else(|| rel("the broker loaded no trust root"))?;
    let rollout_key = server
        .rollout_key()
        .cloned()
        .ok_or_else(|| rel("the broker loaded no rollout key"))?;
    let (store, registry) = (server.store().clone(), server.registry().clone());
    let path = bundle.clone();
    let record = tokio::task::spawn_blocking(move || {
        meshota_broker::origin::publish_bundle(&path, &trust, store.as_ref(), &registry, now)
    })
    .await
    .map_err(rel)?
    .map_err(rel)?;
    if let Some(seeder) = server.seeder() {
        seeder.provide(record.manifest_id).await;
    }
    let file = std::fs::File::open(&bundle).map_err(io("open the bundle"))?;
    let reader =
        meshota_protocol::bundle::BundleReader::open(std::io::BufReader::new(file)).map_err(rel)?;
    let stored_bytes = stored_size(server.store().as_ref(), reader.manifest())?;
    let info = ReleaseInfo {
        signed: reader.signed_release().clone(),
        id: reader.release_id(),
        manifest_id: record.manifest_id,
        manifest: Arc::new(reader.manifest().clone()),
        stored_bytes,
        file_bytes: created.bundle_size,
    };
    Ok((server, info, rollout_key, report.trust_file))
}

/// Stored bytes of every distinct chunk of `m`.
fn stored_size(
    store: &dyn meshota_node::store::Store,
    m: &meshota_protocol::Manifest,
) -> Result<u64, LiveError> {
    let mut total = 0;
    for (id, _) in m.unique_chunks() {
        if let Some(c) = store.get_chunk(&id).map_err(rel)? {
            total += c.data.len() as u64;
        }
    }
    Ok(total)
}

/// Where the run's files go (the broker's stores, each device's state
/// and telemetry queue): memory-backed `/dev/shm` when it has room
/// ([`SHM_MIN_FREE`]), unless `TMPDIR` names a place.
///
/// Each device fsyncs its state and each report it queues, as it must on
/// real flash, and on a real fleet each has its own. A thousand of them
/// on the host's one disk made a 1,000-device run's commit phase
/// (several fsynced writes a device within a minute) take the host's
/// CPU from every other device's transfers: the fleet's downloads fell
/// from about 50 to 8-15 MiB/s once the first devices committed, and
/// answers between devices from about 50 to 9 KB/s (BENCHMARKS.md,
/// "2026-12-07, ninth stop"). Those writes cost the host, not the
/// fleet.
fn work_dir_parent() -> Option<PathBuf> {
    memory_dir(
        std::env::var_os("TMPDIR").is_some(),
        Path::new("/dev/shm"),
        SHM_MIN_FREE,
    )
}

/// `shm` if nothing else was asked for (`tmpdir_set`) and it has
/// `min_free` bytes free.
fn memory_dir(tmpdir_set: bool, shm: &Path, min_free: u64) -> Option<PathBuf> {
    if tmpdir_set {
        return None;
    }
    let free = rustix::fs::statvfs(shm)
        .ok()
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize));
    free.is_some_and(|f| f >= min_free)
        .then(|| shm.to_path_buf())
}

/// Free space `/dev/shm` needs to hold a run's files: a container's
/// default of 64 MiB would not hold the origin's copy of a large bundle.
const SHM_MIN_FREE: u64 = 1 << 30;

impl Fleet {
    /// Sets up the release, the broker and every device (not started).
    ///
    /// # Errors
    /// [`LiveError`] naming the step that failed.
    pub async fn new(s: &Scenario) -> Result<Self, LiveError> {
        let mut tmp = tempfile::Builder::new();
        tmp.prefix("meshota-sim-");
        let tmp = match work_dir_parent() {
            Some(parent) => tmp.tempdir_in(parent),
            None => tmp.tempdir(),
        }
        .map_err(io("create a temporary directory"))?;
        let broker_rt = SideRuntime::new("meshota-broker")?;
        let agents_rt = SideRuntime::new("meshota-agents")?;
        let (server, release, rollout_key, trust) =
            setup_release(s, tmp.path(), &broker_rt).await?;
        let mqtt = server
            .mqtt_addr()
            .ok_or_else(|| rel("the broker has no MQTT listener"))?;
        let origin = match server.seeder() {
            Some(seeder) => seeder.addrs().await,
            None => Vec::new(),
        };
        let net = NetModel::new(s);
        let pool = ChunkPool::new();
        let mut rng = Rng::new(s.seed);
        let share = |rate: f64| (rate * f64::from(s.devices)).round() as u32;
        let malicious = rng.pick(s.devices, share(s.malicious_rate));
        let unhealthy = rng.pick(s.devices, share(s.health_fail_rate));
        let mut devices = Vec::with_capacity(s.devices as usize);
        for index in 0..s.devices {
            let site = s.site_of(index);
            let id = format!("dev-{index:05}");
            let data_dir = tmp.path().join(&id);
            std::fs::create_dir_all(&data_dir).map_err(io(format!("create {id}'s data dir")))?;
            devices.push(Device {
                index,
                site,
                malicious: malicious.contains(&index),
                healthy: !unhealthy.contains(&index),
                neighbours: neighbours(s, index, &mut rng),
                keypair: libp2p::identity::Keypair::generate_ed25519(),
                store: Arc::new(PoolStore::new(pool.clone())),
                slots: SharedSlots::default(),
                data_dir,
                addr: None,
                running: None,
                id,
            });
        }
        Ok(Self {
            s: s.clone(),
            server,
            tracker: Arc::new(Tracker::new(devices.len())),
            devices,
            net,
            release,
            rollout_key,
            origin,
            bans: Arc::default(),
            drops: Arc::default(),
            trust,
            mqtt,
            agents_rt,
            _broker_rt: broker_rt,
            _tmp: tmp,
        })
    }

    fn device_err(&self, i: usize, reason: impl std::fmt::Display) -> LiveError {
        LiveError::Device {
            device: self
                .devices
                .get(i)
                .map_or_else(String::new, |d| d.id.clone()),
            reason: reason.to_string(),
        }
    }

    /// Starts device `i`'s libp2p node and learns its address.
    ///
    /// # Errors
    /// [`LiveError::Device`].
    pub async fn start_node(&mut self, i: usize) -> Result<NodeHandle, LiveError> {
        let s = &self.s;
        let d = &self.devices[i];
        let ip = device_ip(d.index, s.sites);
        let site = SiteId::new(format!("site-{}", d.site)).map_err(|e| self.device_err(i, e))?;
        let listen = if s.live_tcp {
            Multiaddr::from(ip).with(Protocol::Tcp(0))
        } else {
            Multiaddr::empty().with(Protocol::Memory(0))
        };
        let cfg = P2pConfig {
            listen: vec![listen],
            site: Some(site),
            mdns: false,
            bootstrap: self.origin.clone(),
            max_concurrent_uploads: s.max_uploads as usize,
            upload_limit_bps: s.device_upload_cap_bps(),
            download_limit_bps: s.device_download_cap_bps(),
            corrupt_uploads: d.malicious,
            shaper: Some(self.net.shaper(d.index)),
            // The simulated device is small; the host is not the device.
            max_memory_fraction: None,
            // As Kademlia servers, every device ended up in every routing
            // table, and lookups and automatic bootstraps kept about 50
            // connections a device: 270 in-process devices ran out of
            // descriptors. As clients they ask the origin (a server, which
            // holds the provider records) and dial the providers it names.
            kad_server: false,
            // 256 buckets of 20 preallocated were 1.6 MB a device.
            kad_bucket_size: 2,
            // Devices of later waves sit idle for minutes; at 30 s their
            // connections closed, and at 300 devices some fetches then
            // found no peer at all until a provider lookup came round.
            idle_connection_timeout: Duration::from_secs(600),
            scheduler: s.scheduler_config(d.index),
            ..P2pConfig::default()
        };
        let node = Node::spawn(cfg, d.store.clone(), d.keypair.clone()).map_err(|e| {
            let reason = e.to_string();
            if reason.contains("Too many open files") {
                // Every in-process loopback connection costs two
                // descriptors, and each device holds a few dozen.
                self.device_err(
                    i,
                    format!(
                        "{reason}; the process ran out of file descriptors: \
                         run fewer devices, or raise `ulimit -n`"
                    ),
                )
            } else {
                self.device_err(i, reason)
            }
        })?;
        let addrs = node
            .listen_addrs()
            .await
            .map_err(|e| self.device_err(i, e))?;
        let peer = node.peer_id();
        for a in &addrs {
            if let Some(Protocol::Memory(port)) = a.iter().next() {
                self.net.listening(port, self.devices[i].index);
            }
        }
        self.devices[i].addr = addrs
            .into_iter()
            .next()
            .map(|a| a.with(Protocol::P2p(peer)));
        let (bans, drops) = (self.bans.clone(), self.drops.clone());
        let mut events = node.events();
        tokio::spawn(async move {
            // Ends when the node shuts down and the channel closes.
            loop {
                match events.recv().await {
                    Ok(NodeEvent::PeerBanned { .. }) => {
                        bans.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(NodeEvent::PeerDropped { .. }) => {
                        drops.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(node)
    }

    /// Dials device `i`'s neighbours that are up, in the background: what
    /// mDNS and the DHT would find on a real network.
    pub fn dial_neighbours(&self, i: usize, node: &NodeHandle) {
        for &n in &self.devices[i].neighbours {
            let Some(addr) = self.devices[n as usize].addr.clone() else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                // A neighbour that is down is simply not found.
                let _ = tokio::time::timeout(Duration::from_secs(20), node.dial(addr)).await;
            });
        }
    }

    /// Starts device `i`'s agent over its running node.
    ///
    /// # Errors
    /// [`LiveError::Device`] when its configuration does not parse.
    pub fn start_agent(&mut self, i: usize, node: NodeHandle) -> Result<(), LiveError> {
        let d = &self.devices[i];
        let cfg = meshota_node::config::Config::parse(&format!(
            r#"
data_dir = "{data}"
[device]
id = "{id}"
fleet = "default"
site = "site-{site}"
compatible = "{COMPATIBLE}"
channels = ["{CHANNEL}"]
[mqtt]
url = "mqtt://{mqtt}"
[trust]
root = "{trust}"
"#,
            data = d.data_dir.display(),
            id = d.id,
            site = d.site,
            mqtt = self.mqtt,
            trust = self.trust.display(),
        ))
        .map_err(|e| self.device_err(i, e))?;
        let tracker = self.tracker.clone();
        let index = i;
        let backend = SimBackend::new(
            d.slots.clone(),
            Duration::from_secs(self.s.install_s),
            Duration::from_secs(self.s.health_s),
            d.healthy,
            Box::new(move |ev| tracker.slot_event(index, ev)),
        );
        let fetcher = TrackingFetcher::new(
            P2pFetcher::new(
                node.clone(),
                tokio::runtime::Handle::current(),
                Some(FETCH_TIMEOUT),
            ),
            self.tracker.clone(),
            i,
        );
        let (stop, stop_rx) = oneshot::channel::<()>();
        let store: Arc<dyn meshota_node::store::Store> = d.store.clone();
        let session =
            mqtt::run_with_backend(cfg, store, Box::new(fetcher), Box::new(backend), async {
                let _ = stop_rx.await;
            });
        let agent = self.agents_rt.handle.spawn(session);
        self.devices[i].running = Some(Running { node, stop, agent });
        Ok(())
    }

    /// Starts device `i` (node, neighbours, agent).
    ///
    /// # Errors
    /// As [`Fleet::start_node`] and [`Fleet::start_agent`].
    pub async fn start(&mut self, i: usize) -> Result<(), LiveError> {
        let node = self.start_node(i).await?;
        self.dial_neighbours(i, &node);
        self.start_agent(i, node)
    }

    /// Device `i`'s p2p node, while it runs.
    pub fn node(&self, i: usize) -> Option<NodeHandle> {
        Some(self.devices.get(i)?.running.as_ref()?.node.clone())
    }

    /// Whether device `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.devices[i].running.is_some()
    }

    /// Stops device `i` as a crash would: the node goes first, so a fetch
    /// in flight breaks off; then the agent, whose MQTT session ends and
    /// whose last will marks it offline. Store, slots and data directory
    /// stay for the next start.
    pub async fn stop(&mut self, i: usize) {
        let Some(r) = self.devices[i].running.take() else {
            return;
        };
        r.node.shutdown().await;
        let _ = r.stop.send(());
        match tokio::time::timeout(STOP_TIMEOUT, r.agent).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(device = i, "agent ended with: {e}"),
            Ok(Err(e)) => tracing::warn!(device = i, "agent task: {e}"),
            Err(_) => tracing::warn!(device = i, "agent did not stop in time"),
        }
    }

    /// Devices whose agent ended on its own (not stopped by the run),
    /// with why; they stay down.
    pub async fn reap(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for i in 0..self.devices.len() {
            let ended = self.devices[i]
                .running
                .as_ref()
                .is_some_and(|r| r.agent.is_finished());
            if !ended {
                continue;
            }
            let Some(r) = self.devices[i].running.take() else {
                continue;
            };
            r.node.shutdown().await;
            let why = match r.agent.await {
                Ok(Ok(())) => "the agent stopped".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            out.push((i, why));
        }
        out
    }

    /// Stops every device and the broker.
    pub async fn shutdown(mut self) {
        let stops: Vec<_> = (0..self.devices.len())
            .filter_map(|i| self.devices[i].running.take())
            .collect();
        for r in &stops {
            r.node.shutdown().await;
        }
        for r in stops {
            let _ = r.stop.send(());
            let _ = tokio::time::timeout(STOP_TIMEOUT, r.agent).await;
        }
        if let Err(e) = self.server.shutdown().await {
            tracing::warn!("broker shutdown: {e}");
        }
    }

    /// Each running device's node counters, since its node last started
    /// (zero for a device that is down).
    pub fn node_stats(&self) -> Vec<NodeStats> {
        self.devices
            .iter()
            .map(|d| {
                d.running
                    .as_ref()
                    .map_or_else(NodeStats::default, |r| r.node.stats())
            })
            .collect()
    }

    /// Which chunks of `manifest` each device holds (nothing for a
    /// device whose store cannot say).
    pub fn held(&self, manifest: &Manifest) -> Vec<Bitfield> {
        self.devices
            .iter()
            .map(|d| {
                d.store
                    .held(manifest)
                    .unwrap_or_else(|_| Bitfield::new(manifest.chunks.len()))
            })
            .collect()
    }

    /// Bytes the origin seeder uploaded (chunk bytes, stored form).
    pub fn origin_bytes(&self) -> u64 {
        self.origin_stats().uploaded_bytes
    }

    /// The origin seeder's transfer counters (zero without a seeder).
    pub fn origin_stats(&self) -> NodeStats {
        self.server
            .seeder()
            .map_or_else(NodeStats::default, |s| s.node().stats())
    }
}

/// `lan_peers` same-site and `wan_peers` other-site devices, at random.
fn neighbours(s: &Scenario, index: u32, rng: &mut Rng) -> Vec<u32> {
    let site = s.site_of(index);
    let same: Vec<u32> = (0..s.devices)
        .filter(|&d| d != index && s.site_of(d) == site)
        .collect();
    let other: Vec<u32> = (0..s.devices).filter(|&d| s.site_of(d) != site).collect();
    let mut out: Vec<u32> = rng
        .pick(same.len() as u32, s.lan_peers)
        .into_iter()
        .map(|k| same[k as usize])
        .collect();
    out.extend(
        rng.pick(other.len() as u32, s.wan_peers)
            .into_iter()
            .map(|k| other[k as usize]),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_its_files_in_memory_only_when_it_has_room_and_no_tmpdir_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(memory_dir(false, d, 0), Some(d.to_path_buf()));
        assert_eq!(memory_dir(true, d, 0), None, "TMPDIR wins");
        assert_eq!(memory_dir(false, d, u64::MAX), None, "too small");
        assert_eq!(memory_dir(false, &d.join("absent"), 0), None);
    }
}
