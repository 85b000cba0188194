//! Content-addressed storage of chunks and manifests.
//!
//! Chunks are kept in their stored form (raw or zstd, whichever is
//! smaller) under the BLAKE3 of their raw bytes. Only verified chunks are
//! ever put: a store trusts its callers, and callers verify with
//! [`meshota_protocol::chunking::decode_chunk`] first.
//!
//! Download progress is not written separately: it is exactly the set of
//! manifest chunks the store holds ([`Store::held`]), so there is no
//! metadata write on the hot path and nothing to get out of step after a
//! crash.
//!
//! Garbage collection keeps the chunks of the manifests named as roots.
//! A download in progress must have its manifest among the roots while it
//! runs, or a concurrent [`Store::gc`] may remove its fresh chunks.

use std::collections::HashSet;

use bytes::Bytes;
use meshota_protocol::{Bitfield, ChunkId, Encoding, Manifest, ManifestId};

mod mem;
mod sled;
#[cfg(test)]
mod tests;

pub use self::mem::MemStore;
pub use self::sled::{open_sled, SledStore};

/// A chunk as stored and as sent between peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// How `data` is encoded.
    pub encoding: Encoding,
    /// Raw length, needed to cap decompression.
    pub raw_len: u32,
    /// The stored bytes, shared rather than copied by reads: a device
    /// serving a chunk or verifying its payload reads every chunk it holds
    /// at least once more.
    pub data: Bytes,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The sled database failed.
    #[error("sled store at {path}: {source}")]
    Sled {
        /// Database directory.
        path: String,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// The sled database could not be opened.
    #[error("cannot open sled store at {path}: {source}; {hint}")]
    Open {
        /// Database directory.
        path: String,
        /// What to do about it.
        hint: &'static str,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// A record on disk is not in the expected format.
    #[error("corrupt store record for {key}: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Counts from a garbage collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Chunks kept.
    pub kept_chunks: u64,
    /// Chunks removed.
    pub removed_chunks: u64,
    /// Stored bytes removed.
    pub removed_bytes: u64,
    /// Manifests removed.
    pub removed_manifests: u64,
}

/// A content-addressed chunk and manifest store.
///
/// Implementations: [`MemStore`] (simulator, tests) and [`SledStore`]
/// (devices). Every method is synchronous and fast; drivers may call them
/// from async code directly.
pub trait Store: Send + Sync + 'static {
    /// Whether the chunk is held.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError>;

    /// The stored chunk, if held.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure or a corrupt record.
    fn get_chunk(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError>;

    /// Stores a chunk the caller has verified. Durable when it returns:
    /// a `kill -9` right after loses nothing.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn put_chunk(&self, id: &ChunkId, chunk: &StoredChunk) -> Result<(), StoreError>;

    /// Stores an encoded manifest under its id. Durable when it returns.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn put_manifest(&self, id: &ManifestId, encoded: &[u8]) -> Result<(), StoreError>;

    /// The encoded manifest, if held.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn get_manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets the manifests whose chunks garbage collection must keep (the
    /// active and previous release on a device; every published release on
    /// an origin). Durable when it returns.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn set_roots(&self, roots: &[ManifestId]) -> Result<(), StoreError>;

    /// The current GC roots.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn roots(&self) -> Result<Vec<ManifestId>, StoreError>;

    /// Removes every chunk and manifest not reachable from the roots.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn gc(&self) -> Result<GcStats, StoreError>;

    /// Number of chunks and their total stored bytes.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn usage(&self) -> Result<(u64, u64), StoreError>;

    /// Which of the manifest's chunks are held: the download progress.
    ///
    /// # Errors
    /// [`StoreError`] on backend failure.
    fn held(&self, manifest: &Manifest) -> Result<Bitfield, StoreError> {
        let mut bits = Bitfield::new(manifest.chunks.len());
        for (i, c) in manifest.chunks.iter().enumerate() {
            if self.has_chunk(&c.id)? {
                bits.set(i);
            }
        }
        Ok(bits)
    }
}

/// The chunks garbage collection must keep, or `None` when a root's
/// manifest is not held: its chunks are unknown, so nothing may go.
///
/// A root manifest that does not decode is an error rather than `None`,
/// because keeping everything forever would hide the corruption.
fn reachable(
    roots: &[ManifestId],
    mut get_manifest: impl FnMut(&ManifestId) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Option<HashSet<ChunkId>>, StoreError> {
    let mut keep = HashSet::new();
    for root in roots {
        let Some(bytes) = get_manifest(root)? else {
            tracing::warn!(manifest = %root, "gc root manifest is not held; keeping every chunk");
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            key: format!("manifest {root}"),
            reason,
        };
        let (id, manifest) = Manifest::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if id != *root {
            return Err(corrupt(format!("bytes hash to {id}")));
        }
        keep.extend(manifest.chunks.iter().map(|c| c.id));
    }
    Ok(Some(keep))
}

/// Keeps only `keep`'s manifests and their chunks: sets them as the
/// roots and collects the rest. Manifests the store does not hold are
/// left out of the roots, since one unknown root makes a collection keep
/// everything; their chunks are not known here anyway.
///
/// # Errors
/// [`StoreError`] from the backend; the store is then unchanged or only
/// partly collected, never missing a kept chunk.
pub fn prune_to(store: &dyn Store, keep: &[ManifestId]) -> Result<GcStats, StoreError> {
    let mut roots = Vec::with_capacity(keep.len());
    for m in keep {
        if store.get_manifest(m)?.is_some() && !roots.contains(m) {
            roots.push(*m);
        }
    }
    store.set_roots(&roots)?;
    store.gc()
}
