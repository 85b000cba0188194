//! `meshota bundle create`: payload file in, signed bundle file out.
//!
//! Two streaming passes, so memory stays bounded for any payload size:
//!
//! 1. [`build_manifest`] chunks and hashes the file (FastCDC + BLAKE3).
//!    The header holds the manifest, so it must be complete before the
//!    first chunk record is written.
//! 2. The file is read again by the manifest's chunk lengths; workers on
//!    every core re-check each chunk's BLAKE3 (a payload that changed
//!    between passes is an error, not a bad bundle) and compress it; a
//!    writer puts the records back in manifest order.
//!
//! Buffers circulate through a fixed pool, which bounds the chunks in
//! flight (and with them the reorder buffer) to a few per core.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use indicatif::ProgressBar;
use meshota_protocol::bundle::{release_matches_manifest, BundleHeader, BundleWriter};
use meshota_protocol::chunking::{encode_chunk, verify_chunk, Encoding};
use meshota_protocol::ids::{check_name, ManifestId, ReleaseId};
use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::{
    Channel, ChunkerParams, Compatible, InstallKind, Manifest, Release, Role, SecretKey, Signed,
};
use serde::Serialize;

use super::{joined, BundleToolError};
use crate::cli::keys::{load_role_keys, load_trust, TRUST_FILE};
use crate::cli::DAY_SECS;

/// Read and write buffer size: large enough that syscalls are not the
/// bottleneck, small next to the memory budget.
const IO_BUF: usize = 1024 * 1024;

/// Chunks in flight per worker thread.
const IN_FLIGHT_PER_WORKER: usize = 4;

/// What to build.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The payload file.
    pub payload: PathBuf,
    /// The bundle to write.
    pub out: PathBuf,
    /// Directory with `release*.key` (and optionally `trust.cbor`).
    pub keys_dir: PathBuf,
    /// Product or image name.
    pub name: String,
    /// Semantic version, unparsed.
    pub version: String,
    /// Device class.
    pub compatible: String,
    /// Release channel.
    pub channel: String,
    /// How devices install it.
    pub kind: InstallKind,
    /// Release sequence; defaults to `now`, which keeps it monotonic
    /// across builds on a machine with a sane clock.
    pub sequence: Option<u64>,
    /// Days until devices refuse the release.
    pub expires_days: u64,
    /// `key=value` metadata entries.
    pub meta: Vec<String>,
    /// Compression threads; `None` means every core.
    pub threads: Option<usize>,
    /// The current time, seconds since the Unix epoch.
    pub now: u64,
}

/// What `create` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// The bundle file.
    pub path: PathBuf,
    /// The signed release's id.
    pub release_id: ReleaseId,
    /// The manifest's id.
    pub manifest_id: ManifestId,
    /// Payload bytes.
    pub payload_size: u64,
    /// Chunks in the manifest.
    pub chunks: usize,
    /// Bytes of the bundle file.
    pub bundle_size: u64,
    /// The release sequence used.
    pub sequence: u64,
    /// Release expiry, seconds since the epoch.
    pub expires_at: u64,
}

/// Checked inputs, ready to build from.
struct Plan {
    template: ManifestTemplate,
    compatible: Compatible,
    channel: Channel,
    sequence: u64,
    expires_at: u64,
}

fn plan(opts: &CreateOptions) -> Result<Plan, BundleToolError> {
    let version =
        semver::Version::parse(&opts.version).map_err(|source| BundleToolError::BadVersion {
            got: opts.version.clone(),
            source,
        })?;
    let bad = |flag| move |source| BundleToolError::BadId { flag, source };
    check_name("name", &opts.name).map_err(bad("name"))?;
    let compatible = Compatible::new(opts.compatible.clone()).map_err(bad("compatible"))?;
    let channel = Channel::new(opts.channel.clone()).map_err(bad("channel"))?;
    let mut meta = BTreeMap::new();
    for entry in &opts.meta {
        match entry.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                meta.insert(k.to_string(), v.to_string());
            }
            _ => return Err(BundleToolError::BadMeta(entry.clone())),
        }
    }
    Ok(Plan {
        template: ManifestTemplate {
            name: opts.name.clone(),
            version,
            compatible: compatible.clone(),
            chunker: ChunkerParams::default(),
            kind: opts.kind,
            created_at: opts.now,
            meta,
        },
        compatible,
        channel,
        sequence: opts.sequence.unwrap_or(opts.now),
        expires_at: opts
            .now
            .saturating_add(opts.expires_days.saturating_mul(DAY_SECS)),
    })
}

/// Builds a bundle. `progress` is advanced by payload bytes over both
/// passes (its length is set here); pass [`ProgressBar::hidden`] for none.
///
/// # Errors
/// [`BundleToolError`] for bad flags, unreadable keys or payload, a
/// payload that changes while being read, or a failed write. No bundle
/// file is left behind on error.
pub fn create(
    opts: &CreateOptions,
    progress: &ProgressBar,
) -> Result<CreateReport, BundleToolError> {
    let plan = plan(opts)?;
    let keys = load_role_keys(&opts.keys_dir, Role::Release)?;
    let trust_path = opts.keys_dir.join(TRUST_FILE);
    let trust = if trust_path.exists() {
        Some(load_trust(&trust_path, opts.now)?)
    } else {
        None
    };

    let payload_len = std::fs::metadata(&opts.payload)
        .map_err(BundleToolError::io(&opts.payload))?
        .len();
    progress.set_length(payload_len.saturating_mul(2));
    let file = File::open(&opts.payload).map_err(BundleToolError::io(&opts.payload))?;
    let reader = progress.wrap_read(BufReader::with_capacity(IO_BUF, file));
    let manifest = build_manifest::<_, ManifestError>(reader, plan.template, |_| Ok(()))?;
    // Keep the bar honest if the file grew or shrank since `metadata`.
    progress.set_length(manifest.payload_size.saturating_mul(2));
    progress.set_position(manifest.payload_size);

    let manifest_bytes = manifest.encode()?;
    let manifest_id = ManifestId::digest(&manifest_bytes);
    let release = Release {
        manifest_id,
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        compatible: plan.compatible,
        channel: plan.channel,
        payload_size: manifest.payload_size,
        sequence: plan.sequence,
        expires_at: plan.expires_at,
    };
    let signers: Vec<&SecretKey> = keys.iter().collect();
    let signed = Signed::sign(&release, &signers)?;
    if let Some(root) = &trust {
        // Catch a key directory whose keys and trust root disagree now,
        // rather than on every device in the fleet.
        signed
            .verify(Role::Release, &root.release)
            .map_err(|source| BundleToolError::Untrusted {
                dir: opts.keys_dir.clone(),
                source,
            })?;
        release_matches_manifest(&release, manifest_id, &manifest).map_err(|source| {
            BundleToolError::Bundle {
                path: opts.out.clone(),
                source,
            }
        })?;
    }
    let release_id = signed.id();
    let header = BundleHeader {
        manifest: manifest_bytes,
        release: signed,
    };

    let out = crate::cli::atomic::AtomicFile::create(&opts.out)
        .map_err(BundleToolError::io(&opts.out))?;
    let bundle_err = |source| BundleToolError::Bundle {
        path: opts.out.clone(),
        source,
    };
    let mut writer =
        BundleWriter::new(BufWriter::with_capacity(IO_BUF, out), &header).map_err(bundle_err)?;
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    write_chunks(
        &opts.payload,
        &manifest,
        &mut writer,
        threads,
        progress,
        &opts.out,
    )?;
    let out = writer
        .finish()
        .map_err(bundle_err)?
        .into_inner()
        .map_err(|e| BundleToolError::Io {
            path: opts.out.clone(),
            source: e.into_error(),
        })?;
    out.commit().map_err(BundleToolError::io(&opts.out))?;
    progress.finish_and_clear();
    let bundle_size = std::fs::metadata(&opts.out)
        .map_err(BundleToolError::io(&opts.out))?
        .len();
    Ok(CreateReport {
        path: opts.out.clone(),
        release_id,
        manifest_id,
        payload_size: manifest.payload_size,
        chunks: manifest.chunks.len(),
        bundle_size,
        sequence: release.sequence,
        expires_at: release.expires_at,
    })
}

/// A chunk's raw bytes on their way to a worker.
struct Job {
    index: usize,
    offset: u64,
    raw: Vec<u8>,
}

/// A compressed chunk on its way to the writer; `raw` goes back to the pool.
struct Done {
    index: usize,
    encoding: Encoding,
    stored: Vec<u8>,
    raw: Vec<u8>,
}

/// Pass 2: read, verify, compress in parallel, write in order.
fn write_chunks<W: Write + Send>(
    payload: &Path,
    manifest: &Manifest,
    writer: &mut BundleWriter<W>,
    threads: usize,
    progress: &ProgressBar,
    out_path: &Path,
) -> Result<(), BundleToolError> {
    let in_flight = threads * IN_FLIGHT_PER_WORKER;
    // Every channel holds at most `in_flight` items, because each item
    // owns one of the `in_flight` pool buffers; so no send below can block
    // on a peer that has stopped.
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(in_flight);
    for _ in 0..in_flight {
        if pool_tx.send(Vec::new()).is_err() {
            break;
        }
    }
    let (job_tx, job_rx) = sync_channel::<Job>(in_flight);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = sync_channel::<Result<Done, BundleToolError>>(in_flight);

    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let done_tx = done_tx.clone();
                let job_rx = &job_rx;
                s.spawn(move || compress_worker(job_rx, &done_tx, manifest, payload))
            })
            .collect();
        drop(done_tx);
        let write = s.spawn(move || write_in_order(done_rx, pool_tx, writer, progress, out_path));
        let read = read_chunks(payload, manifest, &pool_rx, job_tx);
        let write = joined(write.join(), "writer");
        for w in workers {
            joined(w.join().map(Ok), "compression")?;
        }
        // The writer's error comes first: a reader that stopped because the
        // writer did has nothing useful to add.
        write?;
        read
    })
}

fn read_chunks(
    payload: &Path,
    manifest: &Manifest,
    pool: &Receiver<Vec<u8>>,
    jobs: SyncSender<Job>,
) -> Result<(), BundleToolError> {
    let file = File::open(payload).map_err(BundleToolError::io(payload))?;
    let mut reader = BufReader::with_capacity(IO_BUF, file);
    for (index, (offset, chunk)) in manifest.offsets().enumerate() {
        let Ok(mut raw) = pool.recv() else {
            // The writer stopped; its error explains why.
            return Ok(());
        };
        raw.resize(chunk.len as usize, 0);
        reader.read_exact(&mut raw).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                BundleToolError::PayloadChanged {
                    path: payload.to_path_buf(),
                    index,
                    offset,
                }
            } else {
                BundleToolError::Io {
                    path: payload.to_path_buf(),
                    source: e,
                }
            }
        })?;
        if jobs.send(Job { index, offset, raw }).is_err() {
            return Ok(());
        }
    }
    let mut probe = [0u8; 1];
    let extra = reader
        .read(&mut probe)
        .map_err(BundleToolError::io(payload))?;
    if extra > 0 {
        return Err(BundleToolError::PayloadChanged {
            path: payload.to_path_buf(),
            index: manifest.chunks.len(),
            offset: manifest.payload_size,
        });
    }
    Ok(())
}

fn compress_worker(
    jobs: &Mutex<Receiver<Job>>,
    done: &SyncSender<Result<Done, BundleToolError>>,
    manifest: &Manifest,
    payload: &Path,
) {
    loop {
        // A poisoned lock only means another worker panicked while
        // waiting; the receiver itself is still sound.
        let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(Job { index, offset, raw }) = next else {
            return;
        };
        let result = match manifest.chunks.get(index) {
            Some(c) if verify_chunk(&raw, &c.id, c.len).is_ok() => {
                let (encoding, stored) = encode_chunk(&raw);
                Ok(Done {
                    index,
                    encoding,
                    stored,
                    raw,
                })
            }
            _ => Err(BundleToolError::PayloadChanged {
                path: payload.to_path_buf(),
                index,
                offset,
            }),
        };
        if done.send(result).is_err() {
            return;
        }
    }
}

fn write_in_order<W: Write>(
    done: Receiver<Result<Done, BundleToolError>>,
    pool: SyncSender<Vec<u8>>,
    writer: &mut BundleWriter<W>,
    progress: &ProgressBar,
    out_path: &Path,
) -> Result<(), BundleToolError> {
    let mut pending: BTreeMap<usize, Done> = BTreeMap::new();
    let mut next = 0usize;
    for result in done {
        let d = result?;
        pending.insert(d.index, d);
        while let Some(d) = pending.remove(&next) {
            writer
                .write_chunk(d.encoding, &d.stored)
                .map_err(|source| BundleToolError::Bundle {
                    path: out_path.to_path_buf(),
                    source,
                })?;
            progress.inc(d.raw.len() as u64);
            // The reader may already be done and gone; the buffer is then
            // simply freed.
            let _ = pool.send(d.raw);
            next += 1;
        }
    }
    // Fewer records than chunks only happens when the reader stopped with
    // an error of its own, which the caller reports.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::keys::{init, InitOptions, RoleSpec};

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

    fn options(dir: &Path, threads: usize, out: &str) -> CreateOptions {
        CreateOptions {
            payload: dir.join("p.bin"),
            out: dir.join(out),
            keys_dir: dir.join("k"),
            name: "rootfs".into(),
            version: "1.0.0".into(),
            compatible: "rpi4".into(),
            channel: "stable".into(),
            kind: InstallKind::Image,
            sequence: None,
            expires_days: 1,
            meta: vec![],
            threads: Some(threads),
            now: 1_700_000_000,
        }
    }

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        init(&InitOptions {
            dir: dir.path().join("k"),
            root: RoleSpec::default(),
            release: RoleSpec::default(),
            rollout: RoleSpec::default(),
            expires_days: 1,
            force: false,
            now: 1_700_000_000,
        })
        .unwrap();
        let mut data = noise(1_500_000, 3);
        data.extend(vec![0u8; 700_000]);
        std::fs::write(dir.path().join("p.bin"), data).unwrap();
        dir
    }

    #[test]
    fn any_thread_count_writes_the_same_bytes() {
        let dir = setup();
        let hidden = ProgressBar::hidden();
        create(&options(dir.path(), 1, "one.mota"), &hidden).unwrap();
        create(&options(dir.path(), 7, "many.mota"), &hidden).unwrap();
        let one = std::fs::read(dir.path().join("one.mota")).unwrap();
        let many = std::fs::read(dir.path().join("many.mota")).unwrap();
        assert!(one == many);
    }

    #[test]
    fn a_payload_that_changes_between_passes_is_an_error_not_a_bad_bundle() {
        let dir = setup();
        let opts = options(dir.path(), 3, "x.mota");
        let data = std::fs::read(&opts.payload).unwrap();
        let template = plan(&opts).unwrap().template;
        let manifest = build_manifest::<_, ManifestError>(&data[..], template, |_| Ok(())).unwrap();
        for change in ["flip", "shorter", "longer"] {
            let mut other = data.clone();
            match change {
                "flip" => other[1_000_000] ^= 1,
                "shorter" => other.truncate(data.len() - 10),
                _ => other.push(1),
            }
            std::fs::write(&opts.payload, &other).unwrap();
            let mut writer = BundleWriter::new(
                Vec::new(),
                &BundleHeader {
                    manifest: manifest.encode().unwrap(),
                    release: Signed::sign(
                        &Release {
                            manifest_id: manifest.id().unwrap(),
                            name: "rootfs".into(),
                            version: manifest.version.clone(),
                            compatible: manifest.compatible.clone(),
                            channel: Channel::new("stable").unwrap(),
                            payload_size: manifest.payload_size,
                            sequence: 1,
                            expires_at: 2,
                        },
                        &[&SecretKey::from_seed([1; 32])],
                    )
                    .unwrap(),
                },
            )
            .unwrap();
            let hidden = ProgressBar::hidden();
            let err = write_chunks(&opts.payload, &manifest, &mut writer, 3, &hidden, &opts.out)
                .unwrap_err();
            assert!(
                matches!(err, BundleToolError::PayloadChanged { .. }),
                "{change}: {err}"
            );
        }
    }
}
