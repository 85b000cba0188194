//! Test fixtures shared by the install and agent tests: an in-memory
//! store (until the `store` branch's `MemStore` lands) and payload helpers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use meshota_protocol::chunking::encode_chunk;
use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::semver::Version;
use meshota_protocol::{ChunkId, ChunkerParams, Compatible, InstallKind, Manifest, ManifestId};

use crate::store::{GcStats, Store, StoreError, StoredChunk};

/// A minimal in-memory store.
#[derive(Default)]
pub(crate) struct TestStore {
    chunks: Mutex<HashMap<ChunkId, StoredChunk>>,
    manifests: Mutex<HashMap<ManifestId, Vec<u8>>>,
}

fn poisoned() -> StoreError {
    StoreError::Corrupt {
        key: "test store".into(),
        reason: "lock poisoned".into(),
    }
}

impl Store for TestStore {
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.chunks.lock().map_err(|_| poisoned())?.contains_key(id))
    }
    fn get_chunk(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError> {
        Ok(self.chunks.lock().map_err(|_| poisoned())?.get(id).cloned())
    }
    fn put_chunk(&self, id: &ChunkId, chunk: &StoredChunk) -> Result<(), StoreError> {
        self.chunks
            .lock()
            .map_err(|_| poisoned())?
            .insert(*id, chunk.clone());
        Ok(())
    }
    fn put_manifest(&self, id: &ManifestId, encoded: &[u8]) -> Result<(), StoreError> {
        self.manifests
            .lock()
            .map_err(|_| poisoned())?
            .insert(*id, encoded.to_vec());
        Ok(())
    }
    fn get_manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .manifests
            .lock()
            .map_err(|_| poisoned())?
            .get(id)
            .cloned())
    }
    fn set_roots(&self, _roots: &[ManifestId]) -> Result<(), StoreError> {
        Ok(())
    }
    fn roots(&self) -> Result<Vec<ManifestId>, StoreError> {
        Ok(Vec::new())
    }
    fn gc(&self) -> Result<GcStats, StoreError> {
        Ok(GcStats::default())
    }
    fn usage(&self) -> Result<(u64, u64), StoreError> {
        let c = self.chunks.lock().map_err(|_| poisoned())?;
        Ok((
            c.len() as u64,
            c.values().map(|s| s.data.len() as u64).sum(),
        ))
    }
}

impl TestStore {
    /// Drops one chunk, to simulate an incomplete download.
    pub(crate) fn remove_chunk(&self, id: &ChunkId) {
        if let Ok(mut c) = self.chunks.lock() {
            c.remove(id);
        }
    }
}

/// Deterministic pseudo-random bytes.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
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

/// Chunks `payload` into `store` and returns its manifest (also stored).
pub(crate) fn put_payload(
    store: &dyn Store,
    payload: &[u8],
    version: Version,
    kind: InstallKind,
) -> Manifest {
    let template = ManifestTemplate {
        name: "rootfs".into(),
        version,
        compatible: Compatible::new("rpi4").unwrap(),
        chunker: ChunkerParams::default(),
        kind,
        created_at: 1_700_000_000,
        meta: BTreeMap::new(),
    };
    let m = build_manifest::<_, ManifestError>(payload, template, |c| {
        let (encoding, data) = encode_chunk(&c.data);
        store
            .put_chunk(
                &c.id,
                &StoredChunk {
                    encoding,
                    raw_len: c.data.len() as u32,
                    data,
                },
            )
            .unwrap();
        Ok(())
    })
    .unwrap();
    store
        .put_manifest(&m.id().unwrap(), &m.encode().unwrap())
        .unwrap();
    m
}
