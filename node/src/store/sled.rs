//! The on-device store, on sled 0.34.
//!
//! # Layout
//!
//! Three trees in one database:
//! - `chunks`: chunk id (32 bytes) → `[encoding u8][raw_len u32 BE][data]`;
//! - `manifests`: manifest id (32 bytes) → the encoded manifest;
//! - `meta`: `roots` → the concatenated 32-byte root manifest ids.
//!
//! Fixed binary layouts rather than CBOR: a chunk record is read on every
//! upload to a peer, and these formats have nothing to version that the
//! header byte cannot.
//!
//! # Durability
//!
//! sled's background flusher is off and every commit point (`put_chunk`,
//! `put_manifest`, `set_roots`, the end of `gc`) calls `flush` before it
//! returns, so a `kill -9` loses at most the write in flight. With the
//! default 500 ms flusher a crash could lose half a second of chunks that
//! callers were told were stored.
//!
//! # Usage accounting
//!
//! The first `usage` call scans the chunk tree once (it reads every value,
//! so it costs about one pass over the stored bytes); after that every put
//! and removal adjusts the totals, so later calls are O(1). Opening stays
//! cheap, which matters at boot on a slow SD card.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use meshota_protocol::{ChunkId, Encoding, ManifestId, MAX_CHUNK_LEN};

use super::{reachable, GcStats, Store, StoreError, StoredChunk};

const HEADER_LEN: usize = 5;
const ROOTS_KEY: &[u8] = b"roots";

/// A [`Store`] on disk. Cheap to clone: clones share one database.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: ::sled::Db,
    chunks: ::sled::Tree,
    manifests: ::sled::Tree,
    meta: ::sled::Tree,
    /// For error messages.
    path: String,
    /// `(chunks, stored bytes)` once counted. Puts and removals hold this
    /// lock around their tree update so the first count cannot race them.
    usage: std::sync::Arc<Mutex<Option<(u64, u64)>>>,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// # Errors
    /// [`StoreError::Open`] naming the path and what to do, for instance
    /// when another process already has the store open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let db = open_sled(&::sled::Config::new().path(path).flush_every_ms(None)).map_err(
            |source| StoreError::Open {
                path: shown.clone(),
                hint: open_hint(&source),
                source,
            },
        )?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Open {
                path: shown.clone(),
                hint: open_hint(&source),
                source,
            })
        };
        Ok(Self {
            chunks: tree("chunks")?,
            manifests: tree("manifests")?,
            meta: tree("meta")?,
            db,
            path: shown,
            usage: Default::default(),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn err(&self, source: ::sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|e| self.err(e))
    }

    fn lock_usage(&self) -> MutexGuard<'_, Option<(u64, u64)>> {
        // The guarded value is a pair of counters updated after the tree
        // write succeeded; a panic elsewhere cannot leave it half-written.
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_usage(&self) -> Result<(u64, u64), StoreError> {
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in self.chunks.iter() {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            count += 1;
            bytes += stored_len(&value);
        }
        Ok((count, bytes))
    }
}

/// Opens a sled database, waiting up to 3 s for a lock that a handle
/// dropped just before in this process still holds: sled lets go of its
/// file lock from a trailing thread, so an in-process restart (a broker
/// restart in tests, a node reopening its store) would otherwise fail at
/// random. A lock another process holds still fails, after the wait.
///
/// # Errors
/// Whatever sled's open returns last.
pub fn open_sled(config: &::sled::Config) -> ::sled::Result<::sled::Db> {
    let mut tries = 0;
    loop {
        match config.open() {
            Err(e) if tries < 30 && is_lock_error(&e) => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

fn is_lock_error(e: &::sled::Error) -> bool {
    matches!(e, ::sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn open_hint(e: &::sled::Error) -> &'static str {
    match e {
        e if is_lock_error(e) => {
            "another process (or another handle in this one) has it open: stop it, or give this one its own store directory"
        }
        ::sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            "the directory is not writable by this user: fix its ownership or choose another store directory"
        }
        ::sled::Error::Corruption { .. } => {
            "the database is damaged: move the directory aside and restart; chunks are fetched again from peers"
        }
        ::sled::Error::Unsupported(_) => {
            "the directory holds a database of another sled version or configuration: move it aside"
        }
        _ => "check that the path is a writable directory on a healthy filesystem",
    }
}

/// Bytes a record accounts for in `usage`: its data, or everything past
/// a short header for a corrupt one, so totals never underflow.
fn stored_len(record: &[u8]) -> u64 {
    record.len().saturating_sub(HEADER_LEN) as u64
}

fn encode_record(chunk: &StoredChunk) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + chunk.data.len());
    out.push(chunk.encoding as u8);
    out.extend_from_slice(&chunk.raw_len.to_be_bytes());
    out.extend_from_slice(&chunk.data);
    out
}

/// Checks a record's shape only: the BLAKE3 check is `decode_chunk`'s,
/// which every consumer of a chunk runs anyway (a peer on receipt, the
/// installer before writing), so hashing here would do it twice.
fn decode_record(id: &ChunkId, record: &[u8]) -> Result<StoredChunk, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("chunk {id}"),
        reason,
    };
    let Some((&tag, rest)) = record.split_first() else {
        return Err(corrupt("empty record".into()));
    };
    let encoding = Encoding::from_tag(tag).map_err(|e| corrupt(e.to_string()))?;
    let Some((len, data)) = rest.split_first_chunk::<4>() else {
        return Err(corrupt(format!(
            "record of {} bytes is shorter than its {HEADER_LEN}-byte header",
            record.len()
        )));
    };
    let raw_len = u32::from_be_bytes(*len);
    if raw_len == 0 || raw_len > MAX_CHUNK_LEN {
        return Err(corrupt(format!(
            "raw length {raw_len} outside 1..={MAX_CHUNK_LEN}"
        )));
    }
    // A raw chunk's data is its raw bytes; a zstd frame is never empty.
    // Anything else is truncation or overwrite.
    let data_ok = match encoding {
        Encoding::Raw => data.len() == raw_len as usize,
        Encoding::Zstd => !data.is_empty(),
    };
    if !data_ok {
        return Err(corrupt(format!(
            "{encoding:?} record holds {} data bytes for raw length {raw_len}",
            data.len()
        )));
    }
    Ok(StoredChunk {
        encoding,
        raw_len,
        data: Bytes::copy_from_slice(data),
    })
}

fn decode_roots(record: &[u8]) -> Result<Vec<ManifestId>, StoreError> {
    let (ids, rest) = record.as_chunks::<32>();
    if !rest.is_empty() {
        return Err(StoreError::Corrupt {
            key: "roots".into(),
            reason: format!(
                "{} bytes is not a whole number of 32-byte ids",
                record.len()
            ),
        });
    }
    Ok(ids.iter().map(|b| ManifestId::from_bytes(*b)).collect())
}

impl Store for SledStore {
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.chunks
            .contains_key(id.as_bytes())
            .map_err(|e| self.err(e))
    }

    fn get_chunk(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError> {
        match self.chunks.get(id.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(record) => decode_record(id, &record).map(Some),
        }
    }

    fn put_chunk(&self, id: &ChunkId, chunk: &StoredChunk) -> Result<(), StoreError> {
        let record = encode_record(chunk);
        {
            let mut usage = self.lock_usage();
            let old = self
                .chunks
                .insert(id.as_bytes(), record)
                .map_err(|e| self.err(e))?;
            if let Some((count, bytes)) = usage.as_mut() {
                match old {
                    Some(old) => *bytes = bytes.saturating_sub(stored_len(&old)),
                    None => *count += 1,
                }
                *bytes += chunk.data.len() as u64;
            }
        }
        self.flush()
    }

    fn put_manifest(&self, id: &ManifestId, encoded: &[u8]) -> Result<(), StoreError> {
        self.manifests
            .insert(id.as_bytes(), encoded)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    fn get_manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .manifests
            .get(id.as_bytes())
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn set_roots(&self, roots: &[ManifestId]) -> Result<(), StoreError> {
        let record: Vec<u8> = roots.iter().flat_map(|r| *r.as_bytes()).collect();
        self.meta
            .insert(ROOTS_KEY, record)
            .map_err(|e| self.err(e))?;
        self.flush()
    }

    fn roots(&self) -> Result<Vec<ManifestId>, StoreError> {
        match self.meta.get(ROOTS_KEY).map_err(|e| self.err(e))? {
            None => Ok(Vec::new()),
            Some(record) => decode_roots(&record),
        }
    }

    fn gc(&self) -> Result<GcStats, StoreError> {
        let roots = self.roots()?;
        let keep = reachable(&roots, |id| self.get_manifest(id))?;
        let mut stats = GcStats::default();
        for entry in self.chunks.iter() {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let kept = match (&keep, <[u8; 32]>::try_from(key.as_ref())) {
                (None, _) => true,
                (Some(keep), Ok(id)) => keep.contains(&ChunkId::from_bytes(id)),
                // A key that is no chunk id is unreachable by definition.
                (Some(_), Err(_)) => false,
            };
            if kept {
                stats.kept_chunks += 1;
                continue;
            }
            let mut usage = self.lock_usage();
            // Removed only if unchanged since the scan read it; a
            // concurrent put of the same id wins.
            let swapped = self
                .chunks
                .compare_and_swap(&key, Some(&value), None as Option<&[u8]>)
                .map_err(|e| self.err(e))?;
            if swapped.is_ok() {
                stats.removed_chunks += 1;
                stats.removed_bytes += stored_len(&value);
                if let Some((count, bytes)) = usage.as_mut() {
                    *count = count.saturating_sub(1);
                    *bytes = bytes.saturating_sub(stored_len(&value));
                }
            } else {
                stats.kept_chunks += 1;
            }
        }
        for entry in self.manifests.iter() {
            let (key, _) = entry.map_err(|e| self.err(e))?;
            let is_root = <[u8; 32]>::try_from(key.as_ref())
                .is_ok_and(|id| roots.contains(&ManifestId::from_bytes(id)));
            if !is_root {
                self.manifests.remove(&key).map_err(|e| self.err(e))?;
                stats.removed_manifests += 1;
            }
        }
        self.flush()?;
        Ok(stats)
    }

    fn usage(&self) -> Result<(u64, u64), StoreError> {
        let mut usage = self.lock_usage();
        if let Some(known) = *usage {
            return Ok(known);
        }
        let counted = self.count_usage()?;
        *usage = Some(counted);
        Ok(counted)
    }
}
