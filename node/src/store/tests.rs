//! Every scenario runs against both stores from one generic body, so the
//! simulator's `MemStore` cannot drift from what devices do. Sled-only
//! tests cover what only a disk has: reopening, corrupt records, locks and
//! `kill -9`.

use std::collections::{BTreeMap, HashSet};

use meshota_protocol::chunking::{decode_chunk, encode_chunk};
use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::{
    ChunkId, ChunkerParams, Compatible, Encoding, InstallKind, Manifest, ManifestId,
};

use super::{MemStore, SledStore, Store, StoreError, StoredChunk};

/// Runs each named `fn(&dyn Store)` as `<name>::mem` and `<name>::sled`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn mem() {
                super::$name(&super::MemStore::new());
            }

            #[test]
            fn sled() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(&super::SledStore::open(dir.path()).unwrap());
            }
        }
    )*};
}

on_both_stores!(
    a_chunk_comes_back_identical_in_either_encoding,
    held_marks_exactly_the_manifest_chunks_the_store_has,
    a_manifest_comes_back_byte_identical,
    roots_are_replaced_not_merged,
    gc_keeps_the_active_and_previous_release_and_removes_the_rest,
    gc_removes_no_chunk_while_a_root_manifest_is_missing,
    gc_refuses_a_corrupt_root_manifest_and_removes_nothing,
    pruning_to_releases_it_lacks_still_removes_the_rest,
    usage_counts_each_chunk_once_with_its_stored_bytes,
    chunks_put_from_many_threads_all_land,
);

/// Deterministic pseudo-random bytes (xorshift), so tests need no rand.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Alternating random and compressible stretches, so a payload yields
/// chunks of both encodings.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut part = 0u64;
    while out.len() < len {
        let n = (len - out.len()).min(20_000 + (seed as usize + part as usize * 7_919) % 30_000);
        if part.is_multiple_of(2) {
            out.extend(noise(n, seed * 1000 + part));
        } else {
            out.extend((0..n).map(|i| b"meshota text "[(i + part as usize) % 13]));
        }
        part += 1;
    }
    out
}

fn stored(raw: &[u8]) -> StoredChunk {
    let (encoding, data) = encode_chunk(raw);
    StoredChunk {
        encoding,
        raw_len: raw.len() as u32,
        data: data.into(),
    }
}

/// A payload cut into a manifest, with the raw bytes of each chunk.
struct Release {
    id: ManifestId,
    encoded: Vec<u8>,
    manifest: Manifest,
    raw: BTreeMap<ChunkId, Vec<u8>>,
}

impl Release {
    fn new(data: &[u8], minor: u64) -> Self {
        let template = ManifestTemplate {
            name: "rootfs".into(),
            version: semver::Version::new(1, minor, 0),
            compatible: Compatible::new("test-board").unwrap(),
            // Small chunks keep payloads small while giving many chunks.
            chunker: ChunkerParams {
                min: 2 * 1024,
                avg: 8 * 1024,
                max: 32 * 1024,
            },
            kind: InstallKind::Image,
            created_at: 1_700_000_000 + minor,
            meta: BTreeMap::new(),
        };
        let mut raw = BTreeMap::new();
        let manifest = build_manifest::<_, ManifestError>(data, template, |c| {
            raw.insert(c.id, c.data.clone());
            Ok(())
        })
        .unwrap();
        let encoded = manifest.encode().unwrap();
        Self {
            id: ManifestId::digest(&encoded),
            encoded,
            manifest,
            raw,
        }
    }

    fn put(&self, store: &dyn Store) {
        for (id, raw) in &self.raw {
            store.put_chunk(id, &stored(raw)).unwrap();
        }
        store.put_manifest(&self.id, &self.encoded).unwrap();
    }

    fn ids(&self) -> HashSet<ChunkId> {
        self.raw.keys().copied().collect()
    }
}

fn assert_verifies(store: &dyn Store, id: &ChunkId, raw: &[u8]) {
    let got = store.get_chunk(id).unwrap().expect("chunk is held");
    assert_eq!(got.raw_len as usize, raw.len());
    let back = decode_chunk(got.encoding, &got.data, id, got.raw_len).unwrap();
    assert_eq!(back, raw);
}

fn a_chunk_comes_back_identical_in_either_encoding(store: &dyn Store) {
    let compressible = vec![7u8; 100_000];
    let random = noise(50_000, 1);
    let edge_sizes = [noise(1, 2), noise(256 * 1024, 3), b"x".repeat(1000)];
    let mut seen = Vec::new();
    for raw in [&compressible, &random].into_iter().chain(&edge_sizes) {
        let id = ChunkId::digest(raw);
        assert!(!store.has_chunk(&id).unwrap());
        assert_eq!(store.get_chunk(&id).unwrap(), None);
        let chunk = stored(raw);
        seen.push(chunk.encoding);
        store.put_chunk(&id, &chunk).unwrap();
        assert!(store.has_chunk(&id).unwrap());
        assert_eq!(store.get_chunk(&id).unwrap(), Some(chunk.clone()));
        assert_verifies(store, &id, raw);
        // Putting again (a peer sent it twice) changes nothing.
        store.put_chunk(&id, &chunk).unwrap();
        assert_eq!(store.get_chunk(&id).unwrap(), Some(chunk));
    }
    assert!(seen.contains(&Encoding::Raw) && seen.contains(&Encoding::Zstd));
}

fn held_marks_exactly_the_manifest_chunks_the_store_has(store: &dyn Store) {
    let mut data = payload(300_000, 4);
    // A repeated stretch makes the manifest list one id at two places.
    data.extend_from_within(..40_000);
    let r = Release::new(&data, 0);
    assert!(
        r.manifest.chunks.len() > r.raw.len(),
        "expected a repeated chunk"
    );
    assert_eq!(store.held(&r.manifest).unwrap().count(), 0);

    let half: Vec<ChunkId> = r.raw.keys().step_by(2).copied().collect();
    for id in &half {
        store.put_chunk(id, &stored(&r.raw[id])).unwrap();
    }
    let bits = store.held(&r.manifest).unwrap();
    assert_eq!(bits.len(), r.manifest.chunks.len());
    for (i, c) in r.manifest.chunks.iter().enumerate() {
        assert_eq!(bits.get(i), half.contains(&c.id), "chunk {i}");
    }

    r.put(store);
    let bits = store.held(&r.manifest).unwrap();
    assert_eq!(bits.count(), r.manifest.chunks.len());
}

fn a_manifest_comes_back_byte_identical(store: &dyn Store) {
    let r = Release::new(&payload(100_000, 5), 1);
    assert_eq!(store.get_manifest(&r.id).unwrap(), None);
    store.put_manifest(&r.id, &r.encoded).unwrap();
    let back = store
        .get_manifest(&r.id)
        .unwrap()
        .expect("manifest is held");
    assert_eq!(back, r.encoded);
    let (id, manifest) = Manifest::decode(&back).unwrap();
    assert_eq!(id, r.id);
    assert_eq!(manifest, r.manifest);
}

fn roots_are_replaced_not_merged(store: &dyn Store) {
    let [a, b, c] = [1u8, 2, 3].map(|n| ManifestId::digest(&[n]));
    assert_eq!(store.roots().unwrap(), vec![]);
    store.set_roots(&[a, b]).unwrap();
    assert_eq!(store.roots().unwrap(), vec![a, b]);
    store.set_roots(&[c]).unwrap();
    assert_eq!(store.roots().unwrap(), vec![c]);
    store.set_roots(&[]).unwrap();
    assert_eq!(store.roots().unwrap(), vec![]);
}

/// Three releases where each edits the one before, as real updates do.
fn three_releases() -> [Release; 3] {
    let v1 = payload(500_000, 6);
    let mut v2 = v1.clone();
    v2.splice(200_000..230_000, noise(45_000, 60));
    let mut v3 = v2.clone();
    v3.splice(400_000..401_000, noise(3_000, 61));
    v3.extend(noise(50_000, 62));
    [
        Release::new(&v1, 1),
        Release::new(&v2, 2),
        Release::new(&v3, 3),
    ]
}

fn stored_size(raw: &[u8]) -> u64 {
    stored(raw).data.len() as u64
}

fn gc_keeps_the_active_and_previous_release_and_removes_the_rest(store: &dyn Store) {
    let [v1, v2, v3] = three_releases();
    for r in [&v1, &v2, &v3] {
        r.put(store);
    }
    let stray = noise(5_000, 7);
    store
        .put_chunk(&ChunkId::digest(&stray), &stored(&stray))
        .unwrap();
    // v3 is active, v2 the fallback slot.
    store.set_roots(&[v3.id, v2.id]).unwrap();

    let keep: HashSet<ChunkId> = v2.ids().union(&v3.ids()).copied().collect();
    let mut removed: BTreeMap<ChunkId, &[u8]> = v1.raw.iter().map(|(k, v)| (*k, &v[..])).collect();
    removed.retain(|id, _| !keep.contains(id));
    assert!(removed.len() >= 2, "v1 should own chunks of its own");
    removed.insert(ChunkId::digest(&stray), &stray);

    let stats = store.gc().unwrap();
    assert_eq!(stats.kept_chunks, keep.len() as u64);
    assert_eq!(stats.removed_chunks, removed.len() as u64);
    let removed_bytes: u64 = removed.values().map(|raw| stored_size(raw)).sum();
    assert_eq!(stats.removed_bytes, removed_bytes);
    assert_eq!(stats.removed_manifests, 1);

    assert_eq!(store.get_manifest(&v1.id).unwrap(), None);
    assert_eq!(
        store.get_manifest(&v2.id).unwrap(),
        Some(v2.encoded.clone())
    );
    assert_eq!(
        store.get_manifest(&v3.id).unwrap(),
        Some(v3.encoded.clone())
    );
    for r in [&v2, &v3] {
        assert_eq!(
            store.held(&r.manifest).unwrap().count(),
            r.manifest.chunks.len()
        );
        for (id, raw) in &r.raw {
            assert_verifies(store, id, raw);
        }
    }
    for id in removed.keys() {
        assert!(!store.has_chunk(id).unwrap());
    }
    let kept_bytes: u64 = keep
        .iter()
        .map(|id| stored_size(v2.raw.get(id).or(v3.raw.get(id)).unwrap()))
        .sum();
    assert_eq!(store.usage().unwrap(), (keep.len() as u64, kept_bytes));

    let again = store.gc().unwrap();
    assert_eq!(
        (
            again.kept_chunks,
            again.removed_chunks,
            again.removed_manifests
        ),
        (keep.len() as u64, 0, 0)
    );
}

fn pruning_to_releases_it_lacks_still_removes_the_rest(store: &dyn Store) {
    let [v1, v2, v3] = three_releases();
    v1.put(store);
    v2.put(store);
    // v3 was committed before this store existed (or its manifest was
    // lost): as a root it would make the collection keep everything.
    let stats = super::prune_to(store, &[v2.id, v3.id, v2.id]).unwrap();
    assert!(stats.removed_chunks > 0, "{stats:?}");
    assert_eq!(store.roots().unwrap(), vec![v2.id]);
    assert_eq!(store.get_manifest(&v1.id).unwrap(), None);
    assert_eq!(
        store.held(&v2.manifest).unwrap().count(),
        v2.manifest.chunks.len()
    );
    for id in v1.ids().difference(&v2.ids()) {
        assert!(!store.has_chunk(id).unwrap());
    }
}

fn gc_removes_no_chunk_while_a_root_manifest_is_missing(store: &dyn Store) {
    let [v1, v2, _] = three_releases();
    v1.put(store);
    v2.put(store);
    let unknown = ManifestId::digest(b"announced, manifest not fetched yet");
    store.set_roots(&[v1.id, unknown]).unwrap();
    let before = store.usage().unwrap();

    let stats = store.gc().unwrap();
    assert_eq!((stats.removed_chunks, stats.removed_bytes), (0, 0));
    assert_eq!(stats.kept_chunks, before.0);
    assert_eq!(store.usage().unwrap(), before);
    // Manifests outside the roots go regardless.
    assert_eq!(stats.removed_manifests, 1);
    assert_eq!(store.get_manifest(&v2.id).unwrap(), None);
    assert!(store.get_manifest(&v1.id).unwrap().is_some());
}

fn gc_refuses_a_corrupt_root_manifest_and_removes_nothing(store: &dyn Store) {
    let [v1, v2, _] = three_releases();
    v1.put(store);
    v2.put(store);
    let mut damaged = v2.encoded.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    store.put_manifest(&v2.id, &damaged).unwrap();
    store.set_roots(&[v2.id]).unwrap();
    let before = store.usage().unwrap();

    let err = store.gc().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { key, .. } if key.contains(&v2.id.to_string())),
        "{err}"
    );
    assert_eq!(store.usage().unwrap(), before);
    assert!(store.get_manifest(&v1.id).unwrap().is_some());
}

fn usage_counts_each_chunk_once_with_its_stored_bytes(store: &dyn Store) {
    assert_eq!(store.usage().unwrap(), (0, 0));
    let raws: Vec<Vec<u8>> = (0..10)
        .map(|i| payload(1_000 + i * 3_000, i as u64))
        .collect();
    let mut bytes = 0;
    for raw in &raws {
        let chunk = stored(raw);
        bytes += chunk.data.len() as u64;
        store.put_chunk(&ChunkId::digest(raw), &chunk).unwrap();
    }
    assert_eq!(store.usage().unwrap(), (10, bytes));
    store
        .put_chunk(&ChunkId::digest(&raws[3]), &stored(&raws[3]))
        .unwrap();
    assert_eq!(store.usage().unwrap(), (10, bytes));
    // Manifests are metadata, not chunks.
    store.put_manifest(&ManifestId::digest(b"m"), b"m").unwrap();
    assert_eq!(store.usage().unwrap(), (10, bytes));
}

fn chunks_put_from_many_threads_all_land(store: &dyn Store) {
    let raws: Vec<Vec<u8>> = (0..40)
        .map(|i| payload(2_000 + i * 500, 100 + i as u64))
        .collect();
    std::thread::scope(|s| {
        for part in raws.chunks(10) {
            s.spawn(move || {
                for raw in part {
                    store
                        .put_chunk(&ChunkId::digest(raw), &stored(raw))
                        .unwrap();
                }
            });
        }
    });
    let bytes: u64 = raws.iter().map(|r| stored_size(r)).sum();
    assert_eq!(store.usage().unwrap(), (40, bytes));
    for raw in &raws {
        assert_verifies(store, &ChunkId::digest(raw), raw);
    }
}

#[test]
fn mem_store_clones_share_one_store() {
    let a = MemStore::new();
    let b = a.clone();
    let raw = noise(100, 8);
    a.put_chunk(&ChunkId::digest(&raw), &stored(&raw)).unwrap();
    assert!(b.has_chunk(&ChunkId::digest(&raw)).unwrap());
}

#[test]
fn reading_a_chunk_from_memory_shares_its_bytes_instead_of_copying() {
    let store = MemStore::new();
    let raw = noise(300_000, 9);
    let id = ChunkId::digest(&raw);
    store.put_chunk(&id, &stored(&raw)).unwrap();
    let a = store.get_chunk(&id).unwrap().unwrap();
    let b = store.get_chunk(&id).unwrap().unwrap();
    // Serving and installing read every chunk again: one buffer for all.
    assert_eq!(a.data.as_ptr(), b.data.as_ptr());
}

#[test]
fn a_reopened_sled_store_keeps_chunks_manifests_roots_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let [v1, v2, _] = three_releases();
    let usage = {
        let store = SledStore::open(dir.path()).unwrap();
        v1.put(&store);
        v2.put(&store);
        store.set_roots(&[v2.id, v1.id]).unwrap();
        store.usage().unwrap()
    };
    let store = reopen(dir.path());
    assert_eq!(store.roots().unwrap(), vec![v2.id, v1.id]);
    assert_eq!(store.usage().unwrap(), usage);
    for r in [&v1, &v2] {
        assert_eq!(store.get_manifest(&r.id).unwrap(), Some(r.encoded.clone()));
        for (id, raw) in &r.raw {
            assert_verifies(&store, id, raw);
        }
    }
}

#[test]
fn opening_a_sled_store_that_is_already_open_names_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let _held = SledStore::open(dir.path()).unwrap();
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("another process"), "{msg}");
}

/// Writes raw records into the chunk tree behind the store's back.
fn write_raw_records(dir: &std::path::Path, records: &[(ChunkId, Vec<u8>)]) {
    // The store this test just dropped may still hold sled's file lock
    // for a moment: open with the store's own wait for it.
    let config = ::sled::Config::new().path(dir).flush_every_ms(None);
    let db = crate::store::open_sled(&config).unwrap();
    let chunks = db.open_tree("chunks").unwrap();
    for (id, record) in records {
        chunks.insert(id.as_bytes(), record.clone()).unwrap();
    }
    db.insert(b"unrelated", b"x".to_vec()).unwrap();
    db.flush().unwrap();
}

#[test]
fn corrupt_sled_chunk_records_are_reported_as_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = noise(3_000, 9);
    let good_id = ChunkId::digest(&good);
    SledStore::open(dir.path())
        .unwrap()
        .put_chunk(&good_id, &stored(&good))
        .unwrap();

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short header", vec![0, 0, 0]),
        ("unknown encoding", vec![9, 0, 0, 0, 1, 0xaa]),
        ("raw length zero", vec![0, 0, 0, 0, 0]),
        (
            "raw length past the cap",
            [&[1u8][..], &u32::MAX.to_be_bytes(), b"zz"].concat(),
        ),
        (
            "truncated raw",
            [&[0u8][..], &10u32.to_be_bytes(), b"abc"].concat(),
        ),
        (
            "raw too long",
            [&[0u8][..], &2u32.to_be_bytes(), b"abc"].concat(),
        ),
        ("empty zstd", [&[1u8][..], &10u32.to_be_bytes()].concat()),
    ];
    let records: Vec<(ChunkId, Vec<u8>)> = bad
        .iter()
        .map(|(name, record)| (ChunkId::digest(name.as_bytes()), record.clone()))
        .collect();
    write_raw_records(dir.path(), &records);

    let store = reopen(dir.path());
    for ((name, _), (id, _)) in bad.iter().zip(&records) {
        assert!(store.has_chunk(id).unwrap(), "{name}");
        match store.get_chunk(id) {
            Err(StoreError::Corrupt { key, reason }) => {
                assert!(key.contains(&id.to_string()), "{name}: {key}");
                assert!(!reason.is_empty(), "{name}");
            }
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
    }
    assert_verifies(&store, &good_id, &good);
    assert_eq!(store.usage().unwrap().0, 1 + bad.len() as u64);

    // A fresh put of the same id (a refetch) repairs the record.
    let (id, _) = &records[0];
    let fixed = StoredChunk {
        encoding: Encoding::Raw,
        raw_len: 5,
        data: b"empty".to_vec().into(),
    };
    store.put_chunk(id, &fixed).unwrap();
    assert_verifies(&store, id, b"empty");

    // gc with no roots removes corrupt records like any other.
    let stats = store.gc().unwrap();
    assert_eq!(stats.removed_chunks, 1 + bad.len() as u64);
    assert_eq!(store.usage().unwrap(), (0, 0));
}

#[test]
fn a_corrupt_sled_roots_record_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = ::sled::Config::new()
            .path(dir.path())
            // No background flusher: it would keep the database (and its
            // file lock) alive after this handle drops, racing the reopen.
            .flush_every_ms(None)
            .open()
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"roots", vec![1u8; 33])
            .unwrap();
        db.flush().unwrap();
    }
    let store = reopen(dir.path());
    assert!(matches!(store.roots(), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.gc(), Err(StoreError::Corrupt { .. })));
    store.set_roots(&[]).unwrap();
    assert_eq!(store.roots().unwrap(), vec![]);
}

/// Set to a store directory, makes [`writer_for_the_kill_9_test`] write.
const KILL_WRITER_DIR: &str = "MESHOTA_TEST_KILL_WRITER_DIR";
/// The first chunk number the writer puts.
const KILL_WRITER_START: &str = "MESHOTA_TEST_KILL_WRITER_START";

/// The `n`th chunk the writer puts: sizes and encodings vary so records
/// of every shape are in flight when the kill lands.
fn kill_chunk(n: u64) -> Vec<u8> {
    let len = 1 + (n as usize * 7_919) % 40_000;
    if n.is_multiple_of(2) {
        noise(len, n)
    } else {
        (0..len).map(|i| (i as u64 / 50 + n) as u8).collect()
    }
}

/// Not a test of its own: the child process of the kill test. Puts
/// chunks until killed and reports each one on stdout only after
/// `put_chunk` returned.
#[test]
fn writer_for_the_kill_9_test() {
    use std::io::Write;

    let Some(dir) = std::env::var_os(KILL_WRITER_DIR) else {
        return;
    };
    let start: u64 = std::env::var(KILL_WRITER_START).unwrap().parse().unwrap();
    let store = SledStore::open(dir).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut out = std::io::stdout().lock();
    for n in start..start + 100_000 {
        if std::time::Instant::now() > deadline {
            break;
        }
        let raw = kill_chunk(n);
        let id = ChunkId::digest(&raw);
        store.put_chunk(&id, &stored(&raw)).unwrap();
        writeln!(out, "PUT {n} {id}").unwrap();
        out.flush().unwrap();
    }
}

/// Runs the writer child until it has acknowledged `want` chunks, kills
/// it with SIGKILL, and returns every acknowledged chunk number.
fn write_until_killed(dir: &std::path::Path, start: u64, want: usize) -> Vec<u64> {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::writer_for_the_kill_9_test",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_WRITER_DIR, dir)
        .env(KILL_WRITER_START, start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread reads so the parent can wait with a deadline.
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("PUT ") {
                let (n, id) = rest.split_once(' ').unwrap();
                let n: u64 = n.parse().unwrap();
                assert_eq!(id, ChunkId::digest(&kill_chunk(n)).to_string());
                if tx.send(n).is_err() {
                    break;
                }
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = Vec::new();
    while acked.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(n) => acked.push(n),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("writer acknowledged {} of {want} chunks: {e}", acked.len());
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "writer was not killed: {status}");
    reader.join().unwrap();
    // Lines printed between the last read and the kill count too.
    acked.extend(rx.try_iter());
    acked
}

#[test]
fn a_sled_store_keeps_every_acknowledged_chunk_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0;
    let mut all = Vec::new();
    // Several rounds on one directory: each recovery must also survive
    // the next crash.
    for want in [40, 97, 151] {
        let acked = write_until_killed(dir.path(), next, want);
        assert!(acked.len() >= want);
        all.extend(&acked);
        next = acked.iter().max().unwrap() + 1;

        let store = SledStore::open(dir.path()).unwrap();
        for &n in &all {
            let raw = kill_chunk(n);
            assert_verifies(&store, &ChunkId::digest(&raw), &raw);
        }
        assert!(store.usage().unwrap().0 >= all.len() as u64);
    }
}

/// Opens a store another handle in this test just closed; `open` itself
/// waits for sled's trailing lock release.
fn reopen(path: &std::path::Path) -> SledStore {
    SledStore::open(path).unwrap()
}
