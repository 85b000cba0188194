//! The in-memory store: the simulator runs thousands of nodes in one
//! process, so a store must be cheap to create and to clone.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use meshota_protocol::{ChunkId, ManifestId};

use super::{reachable, GcStats, Store, StoreError, StoredChunk};

/// A [`Store`] held in memory. Clones share the same contents, so a
/// simulated node and its test harness can both look at one store.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    chunks: HashMap<ChunkId, StoredChunk>,
    manifests: HashMap<ManifestId, Vec<u8>>,
    roots: Vec<ManifestId>,
    /// Sum of `data.len()` over `chunks`, kept so `usage` is O(1) like
    /// the sled store's.
    bytes: u64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock leaves the maps consistent (every
    // mutation is a single insert or remove), so poisoning is ignored
    // rather than turned into a panic in every later caller.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemStore {
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.read().chunks.contains_key(id))
    }

    fn get_chunk(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError> {
        Ok(self.read().chunks.get(id).cloned())
    }

    fn put_chunk(&self, id: &ChunkId, chunk: &StoredChunk) -> Result<(), StoreError> {
        let mut inner = self.write();
        let added = chunk.data.len() as u64;
        if let Some(old) = inner.chunks.insert(*id, chunk.clone()) {
            inner.bytes -= old.data.len() as u64;
        }
        inner.bytes += added;
        Ok(())
    }

    fn put_manifest(&self, id: &ManifestId, encoded: &[u8]) -> Result<(), StoreError> {
        self.write().manifests.insert(*id, encoded.to_vec());
        Ok(())
    }

    fn get_manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().manifests.get(id).cloned())
    }

    fn set_roots(&self, roots: &[ManifestId]) -> Result<(), StoreError> {
        self.write().roots = roots.to_vec();
        Ok(())
    }

    fn roots(&self) -> Result<Vec<ManifestId>, StoreError> {
        Ok(self.read().roots.clone())
    }

    fn gc(&self) -> Result<GcStats, StoreError> {
        // One write lock for the whole collection: roots cannot change
        // between deciding what to keep and removing the rest.
        let mut inner = self.write();
        let inner = &mut *inner;
        let keep = reachable(&inner.roots, |id| Ok(inner.manifests.get(id).cloned()))?;
        let mut stats = GcStats::default();
        if let Some(keep) = keep {
            let before = inner.chunks.len() as u64;
            let mut removed_bytes = 0;
            inner.chunks.retain(|id, c| {
                let kept = keep.contains(id);
                if !kept {
                    removed_bytes += c.data.len() as u64;
                }
                kept
            });
            stats.removed_chunks = before - inner.chunks.len() as u64;
            stats.removed_bytes = removed_bytes;
            inner.bytes -= removed_bytes;
        }
        stats.kept_chunks = inner.chunks.len() as u64;
        let roots = &inner.roots;
        let before = inner.manifests.len();
        inner.manifests.retain(|id, _| roots.contains(id));
        stats.removed_manifests = (before - inner.manifests.len()) as u64;
        Ok(stats)
    }

    fn usage(&self) -> Result<(u64, u64), StoreError> {
        let inner = self.read();
        Ok((inner.chunks.len() as u64, inner.bytes))
    }
}
