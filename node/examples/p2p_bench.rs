//! Peer-to-peer transfer benchmark on loopback.
//!
//! ```text
//! cargo run --release -p meshota-node --example p2p_bench -- all
//! cargo run --release -p meshota-node --example p2p_bench -- throughput 256
//! cargo run --release -p meshota-node --example p2p_bench -- upload-limit 4 32
//! cargo run --release -p meshota-node --example p2p_bench -- origin-ratio 50 16 6
//! ```
//!
//! - `throughput MIB`: one seed, one fetcher, an incompressible payload
//!   of MIB MiB (default chunker: 16/64/256 KiB); MiB/s of payload.
//! - `upload-limit RATE_MIB_S MIB`: a seed limited to RATE MiB/s serves
//!   MIB MiB; achieved rate against the configured one.
//! - `origin-ratio PEERS MIB DEGREE`: a seed-only origin and PEERS peers,
//!   each connected to the origin and up to DEGREE (default 6) earlier
//!   peers, all fetching at once; origin upload bytes / bundle bytes.
//!   An optional fifth argument overrides the devices' scheduler
//!   `site_patience` (seconds; default: the scheduler's default).
//!
//! Stores are `MemStore`, so the numbers are the network path and
//! verification, not disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use meshota_node::p2p::{FetchOptions, Node, NodeHandle, P2pConfig};
use meshota_node::store::{MemStore, Store, StoredChunk};
use meshota_protocol::chunking::encode_chunk;
use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::{ChunkerParams, Compatible, InstallKind, ManifestId};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: u64 = 1 << 20;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// User + system CPU seconds of this process so far (Linux
/// `/proc/self/stat`, in clock ticks of 10 ms): what moving the bytes
/// costs, which bounds how many devices one host can simulate.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct Bundle {
    id: ManifestId,
    encoded: Vec<u8>,
    chunks: Vec<(meshota_protocol::ChunkId, StoredChunk)>,
    payload: u64,
}

impl Bundle {
    fn new(data: &[u8]) -> BenchResult<Self> {
        let template = ManifestTemplate {
            name: "bench".into(),
            version: semver::Version::new(1, 0, 0),
            compatible: Compatible::new("bench")?,
            chunker: ChunkerParams::default(),
            kind: InstallKind::Image,
            created_at: 0,
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
        })?;
        let encoded = manifest.encode()?;
        Ok(Self {
            id: ManifestId::digest(&encoded),
            encoded,
            chunks,
            payload: manifest.payload_size,
        })
    }

    fn seed(&self, store: &dyn Store) -> BenchResult<()> {
        store.put_manifest(&self.id, &self.encoded)?;
        for (id, c) in &self.chunks {
            store.put_chunk(id, c)?;
        }
        store.set_roots(&[self.id])?;
        Ok(())
    }

    fn stored(&self) -> u64 {
        self.chunks.iter().map(|(_, c)| c.data.len() as u64).sum()
    }
}

fn spawn(config: P2pConfig, store: Arc<dyn Store>) -> BenchResult<NodeHandle> {
    Ok(Node::spawn(config, store, Keypair::generate_ed25519())?)
}

async fn connect(from: &NodeHandle, to: &NodeHandle) -> BenchResult<()> {
    let addr = to
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .ok_or("no listen address")?;
    from.dial(addr).await?;
    Ok(())
}

async fn throughput(mib: usize) -> BenchResult<()> {
    let b = Bundle::new(&noise(mib << 20, 11))?;
    let sa: Arc<dyn Store> = Arc::new(MemStore::new());
    b.seed(&*sa)?;
    let a = spawn(P2pConfig::loopback(), sa)?;
    let n = spawn(P2pConfig::loopback(), Arc::new(MemStore::new()))?;
    connect(&n, &a).await?;
    let cpu0 = process_cpu_s();
    let t0 = Instant::now();
    let r = n.fetch(b.id, FetchOptions::default()).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_s().zip(cpu0).map(|(b, a)| b - a);
    println!(
        "throughput: {mib} MiB payload ({} chunks) in {secs:.2} s = {:.1} MiB/s, {} (report {:?})",
        b.chunks.len(),
        b.payload as f64 / MIB as f64 / secs,
        cpu.map_or("cpu unknown".into(), |c| format!(
            "{c:.2} s cpu = {:.2} ms cpu per MiB (both ends)",
            c * 1000.0 / mib as f64
        )),
        r.bytes
    );
    a.shutdown().await;
    n.shutdown().await;
    Ok(())
}

async fn upload_limit(rate_mib: f64, mib: usize) -> BenchResult<()> {
    let b = Bundle::new(&noise(mib << 20, 12))?;
    let limit = (rate_mib * MIB as f64) as u64;
    let sa: Arc<dyn Store> = Arc::new(MemStore::new());
    b.seed(&*sa)?;
    let mut cfg = P2pConfig::loopback();
    cfg.upload_limit_bps = Some(limit);
    let a = spawn(cfg, sa)?;
    let n = spawn(P2pConfig::loopback(), Arc::new(MemStore::new()))?;
    connect(&n, &a).await?;
    let t0 = Instant::now();
    n.fetch(b.id, FetchOptions::default()).await?;
    let secs = t0.elapsed().as_secs_f64();
    let achieved = b.stored() as f64 / secs;
    println!(
        "upload-limit: configured {:.2} MiB/s, {} MiB in {secs:.2} s, achieved {:.3} MiB/s ({:+.1}%)",
        rate_mib,
        mib,
        achieved / MIB as f64,
        (achieved / limit as f64 - 1.0) * 100.0
    );
    a.shutdown().await;
    n.shutdown().await;
    Ok(())
}

async fn origin_ratio(
    peers: usize,
    mib: usize,
    degree: usize,
    patience: Option<u64>,
) -> BenchResult<()> {
    let b = Bundle::new(&noise(mib << 20, 13))?;
    let so: Arc<dyn Store> = Arc::new(MemStore::new());
    b.seed(&*so)?;
    let origin = spawn(P2pConfig::loopback().origin(), so)?;
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for _ in 0..peers {
        let mut cfg = P2pConfig::loopback();
        if let Some(secs) = patience {
            cfg.scheduler.site_patience = Duration::from_secs(secs);
        }
        let n = spawn(cfg, Arc::new(MemStore::new()))?;
        connect(&n, &origin).await?;
        for prev in nodes.iter().rev().take(degree) {
            connect(&n, prev).await?;
        }
        nodes.push(n);
    }
    let t0 = Instant::now();
    let results =
        futures::future::join_all(nodes.iter().map(|n| n.fetch(b.id, FetchOptions::default())))
            .await;
    let secs = t0.elapsed().as_secs_f64();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let up = origin.stats().uploaded_bytes;
    println!(
        "origin-ratio: {peers} peers (each dialing the origin and up to {degree} earlier peers, site_patience {patience:?} s), {mib} MiB bundle: {ok}/{peers} complete in {secs:.2} s; origin uploaded {:.2} MiB = {:.2}x the bundle",
        up as f64 / MIB as f64,
        up as f64 / b.stored() as f64
    );
    origin.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    let bound = Duration::from_secs(600);
    let run = async {
        match mode {
            "throughput" => throughput(arg(&args, 1, 256)).await,
            "upload-limit" => upload_limit(arg(&args, 1, 4.0), arg(&args, 2, 32)).await,
            "origin-ratio" => {
                let patience = args.get(4).and_then(|s| s.parse().ok());
                origin_ratio(
                    arg(&args, 1, 10),
                    arg(&args, 2, 16),
                    arg(&args, 3, 6),
                    patience,
                )
                .await
            }
            "all" => {
                throughput(256).await?;
                upload_limit(1.0, 8).await?;
                upload_limit(4.0, 32).await?;
                origin_ratio(10, 16, 6, None).await?;
                origin_ratio(50, 16, 6, None).await
            }
            other => Err(format!("unknown mode {other:?}").into()),
        }
    };
    tokio::time::timeout(bound, run).await??;
    Ok(())
}
