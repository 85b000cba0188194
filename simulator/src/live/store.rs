//! A per-device chunk store whose bytes are shared fleet-wide.
//!
//! A thousand devices each holding a 16 MiB release in a `MemStore`
//! would need 16 GiB on a machine that has a fraction of that. Chunks are
//! content-addressed and only stored after verification, so every device
//! that holds chunk `id` holds the same bytes: [`PoolStore`] keeps, per
//! device, only *which* chunks it holds, and the bytes once in a shared
//! [`ChunkPool`]. Everything observable through [`Store`] (what a device
//! has, serves, verifies and installs) is per device as in `MemStore`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use meshota_node::store::{GcStats, Store, StoreError, StoredChunk};
use meshota_protocol::{ChunkId, ManifestId};

/// Chunk bytes shared by every device of a run.
#[derive(Debug, Default)]
pub struct ChunkPool {
    chunks: RwLock<HashMap<ChunkId, Arc<StoredChunk>>>,
}

impl ChunkPool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn get(&self, id: &ChunkId) -> Option<Arc<StoredChunk>> {
        self.chunks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn put(&self, id: &ChunkId, chunk: &StoredChunk) {
        let mut map = self.chunks.write().unwrap_or_else(PoisonError::into_inner);
        // First copy wins: any verified copy decodes to the same bytes.
        map.entry(*id).or_insert_with(|| Arc::new(chunk.clone()));
    }
}

#[derive(Debug, Default)]
struct Inner {
    held: HashSet<ChunkId>,
    manifests: HashMap<ManifestId, Vec<u8>>,
    roots: Vec<ManifestId>,
    bytes: u64,
}

/// One device's store over a shared [`ChunkPool`].
#[derive(Debug)]
pub struct PoolStore {
    pool: Arc<ChunkPool>,
    inner: Mutex<Inner>,
}

impl PoolStore {
    /// An empty store for one device.
    pub fn new(pool: Arc<ChunkPool>) -> Self {
        Self {
            pool,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation is a single insert or remove: consistent after a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for PoolStore {
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.inner().held.contains(id))
    }

    fn get_chunk(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError> {
        if !self.inner().held.contains(id) {
            return Ok(None);
        }
        Ok(self.pool.get(id).map(|c| (*c).clone()))
    }

    fn put_chunk(&self, id: &ChunkId, chunk: &StoredChunk) -> Result<(), StoreError> {
        self.pool.put(id, chunk);
        let mut inner = self.inner();
        if inner.held.insert(*id) {
            inner.bytes += chunk.data.len() as u64;
        }
        Ok(())
    }

    fn put_manifest(&self, id: &ManifestId, encoded: &[u8]) -> Result<(), StoreError> {
        self.inner().manifests.insert(*id, encoded.to_vec());
        Ok(())
    }

    fn get_manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner().manifests.get(id).cloned())
    }

    fn set_roots(&self, roots: &[ManifestId]) -> Result<(), StoreError> {
        self.inner().roots = roots.to_vec();
        Ok(())
    }

    fn roots(&self) -> Result<Vec<ManifestId>, StoreError> {
        Ok(self.inner().roots.clone())
    }

    fn gc(&self) -> Result<GcStats, StoreError> {
        // A simulated run never collects: releases are never retired.
        let inner = self.inner();
        Ok(GcStats {
            kept_chunks: inner.held.len() as u64,
            ..GcStats::default()
        })
    }

    fn usage(&self) -> Result<(u64, u64), StoreError> {
        let inner = self.inner();
        Ok((inner.held.len() as u64, inner.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshota_protocol::Encoding;

    #[test]
    fn two_devices_share_bytes_but_not_what_they_hold() {
        let pool = ChunkPool::new();
        let a = PoolStore::new(pool.clone());
        let b = PoolStore::new(pool);
        let id = ChunkId::digest(b"x");
        let c = StoredChunk {
            encoding: Encoding::Raw,
            raw_len: 1,
            data: b"x".to_vec().into(),
        };
        a.put_chunk(&id, &c).unwrap();
        assert_eq!(a.get_chunk(&id).unwrap(), Some(c.clone()));
        assert!(!b.has_chunk(&id).unwrap());
        assert_eq!(b.get_chunk(&id).unwrap(), None);
        assert_eq!(a.usage().unwrap(), (1, 1));

        // Once both hold it, both read the one pooled buffer.
        b.put_chunk(&id, &c).unwrap();
        let (x, y) = (a.get_chunk(&id).unwrap(), b.get_chunk(&id).unwrap());
        assert_eq!(x.map(|x| x.data.as_ptr()), y.map(|y| y.data.as_ptr()));
    }
}
