//! Helpers shared by the libp2p test binaries: store backends, bundles,
//! nodes on loopback.

// Each test binary uses a subset of the helpers and re-exports.
#![allow(dead_code, unused_imports)]

pub use std::collections::BTreeMap;
pub use std::path::Path;
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};
pub use meshota_node::p2p::{
    DownloadReport, FetchOptions, FetchProgress, Node, NodeEvent, NodeHandle, P2pConfig,
};
pub use meshota_node::store::{MemStore, SledStore, Store, StoredChunk};
pub use meshota_protocol::chunking::{decode_chunk, encode_chunk};
pub use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
pub use meshota_protocol::{
    ChunkerParams, Compatible, InstallKind, Manifest, ManifestId, PayloadHash, SiteId,
};

/// Whole-test bound; every scenario finishes far inside it.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(45);

pub const PARAMS: ChunkerParams = ChunkerParams {
    min: 4096,
    avg: 16384,
    max: 65536,
};

// ---------------------------------------------------------------- stores

/// A store backend the scenarios run against.
pub trait Backend {
    /// Opens a new store `name` under `dir`.
    fn open(dir: &Path, name: &str) -> Arc<dyn Store>;
    /// Reopens it after a restart (`old` is the last handle to it).
    fn reopen(dir: &Path, name: &str, old: Arc<dyn Store>) -> Arc<dyn Store>;
}

pub struct Mem;
impl Backend for Mem {
    fn open(_: &Path, _: &str) -> Arc<dyn Store> {
        Arc::new(MemStore::new())
    }
    fn reopen(_: &Path, _: &str, old: Arc<dyn Store>) -> Arc<dyn Store> {
        old
    }
}

pub struct Sled;
impl Backend for Sled {
    fn open(dir: &Path, name: &str) -> Arc<dyn Store> {
        Arc::new(SledStore::open(dir.join(name)).expect("open sled store"))
    }
    fn reopen(dir: &Path, name: &str, old: Arc<dyn Store>) -> Arc<dyn Store> {
        drop(old);
        // A verification task may hold the database a moment longer.
        for _ in 0..50 {
            if let Ok(s) = SledStore::open(dir.join(name)) {
                return Arc::new(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Arc::new(SledStore::open(dir.join(name)).expect("reopen sled store"))
    }
}

// --------------------------------------------------------------- bundles

/// Deterministic bytes: pseudo-random runs mixed with compressible ones,
/// so both raw and zstd chunks travel.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x >> 48) == 0 {
            let run = ((x >> 8) % 20_000) as usize;
            out.extend(std::iter::repeat_n((x >> 3) as u8, run));
        } else {
            out.push((x >> 24) as u8);
        }
    }
    out.truncate(len);
    out
}

pub struct Bundle {
    pub id: ManifestId,
    pub manifest: Manifest,
    pub encoded: Vec<u8>,
    pub chunks: Vec<(meshota_protocol::ChunkId, StoredChunk)>,
}

impl Bundle {
    pub fn new(data: &[u8]) -> Self {
        let template = ManifestTemplate {
            name: "rootfs".into(),
            version: semver::Version::new(1, 0, 0),
            compatible: Compatible::new("test-board").unwrap(),
            chunker: PARAMS,
            kind: InstallKind::Image,
            created_at: 1_700_000_000,
            meta: BTreeMap::new(),
        };
        let mut chunks = Vec::new();
        let manifest = build_manifest::<_, ManifestError>(data, template, |c| {
            let (encoding, stored) = encode_chunk(&c.data);
            chunks.push((
                c.id,
                StoredChunk {
                    encoding,
                    raw_len: c.data.len() as u32,
                    data: stored.into(),
                },
            ));
            Ok(())
        })
        .unwrap();
        let encoded = manifest.encode().unwrap();
        Self {
            id: ManifestId::digest(&encoded),
            manifest,
            encoded,
            chunks,
        }
    }

    /// Puts the manifest and every chunk, and pins it as a root.
    pub fn seed(&self, store: &dyn Store) {
        store.put_manifest(&self.id, &self.encoded).unwrap();
        for (id, c) in &self.chunks {
            store.put_chunk(id, c).unwrap();
        }
        let mut roots = store.roots().unwrap();
        roots.push(self.id);
        store.set_roots(&roots).unwrap();
    }

    /// A memory store holding this bundle, as a seed or origin would.
    pub fn in_memory(&self) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        self.seed(&*store);
        store
    }

    pub fn raw_size(&self) -> u64 {
        self.manifest.payload_size
    }

    pub fn stored_size(&self) -> u64 {
        self.chunks.iter().map(|(_, c)| c.data.len() as u64).sum()
    }
}

/// Reassembles the payload from a store and checks it against the
/// manifest's payload hash.
pub fn assert_byte_identical(store: &dyn Store, b: &Bundle) {
    let mut hasher = blake3::Hasher::new();
    for c in &b.manifest.chunks {
        let stored = store
            .get_chunk(&c.id)
            .unwrap()
            .unwrap_or_else(|| panic!("chunk {} missing", c.id.short()));
        let raw = decode_chunk(stored.encoding, &stored.data, &c.id, c.len).unwrap();
        hasher.update(&raw);
    }
    assert_eq!(
        PayloadHash::from(hasher.finalize()),
        b.manifest.payload_hash,
        "reassembled payload differs"
    );
}

// ----------------------------------------------------------------- nodes

pub fn spawn(config: P2pConfig, store: Arc<dyn Store>) -> NodeHandle {
    Node::spawn(config, store, Keypair::generate_ed25519()).unwrap()
}

pub async fn addr(n: &NodeHandle) -> Multiaddr {
    n.listen_addrs().await.unwrap()[0].clone()
}

pub async fn connect(from: &NodeHandle, to: &NodeHandle) -> PeerId {
    from.dial(addr(to).await).await.unwrap()
}

pub fn fetched(r: &DownloadReport) -> u64 {
    r.bytes.same_site + r.bytes.other_peers + r.bytes.origin
}

/// A Kademlia client bootstrapping from `origin`, in `site` if given.
pub fn dht_client(origin: &Multiaddr, site: Option<&str>) -> P2pConfig {
    let mut cfg = P2pConfig::loopback();
    cfg.kad_server = false;
    cfg.site = site.map(|s| SiteId::new(s).unwrap());
    cfg.bootstrap = vec![origin.clone()];
    cfg
}

/// Waits until `n` is connected to `to`.
pub async fn until_connected(n: &NodeHandle, to: &NodeHandle) {
    while !n.connected_peers().await.unwrap().contains(&to.peer_id()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Provides `id` from `n` once it is connected to `origin`, the DHT
/// server: provided earlier, the record would only be stored locally.
pub async fn provide_via(n: &NodeHandle, origin: &NodeHandle, id: ManifestId) {
    until_connected(n, origin).await;
    n.provide(id).await.unwrap();
}

pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound")
}
