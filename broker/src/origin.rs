//! The origin: releases verified on upload, their chunks and manifests
//! kept in a content-addressed [`Store`], and served to devices (over HTTP
//! here; over libp2p by the node crate's seeder).

use std::io::BufReader;
use std::path::Path;

use meshota_node::store::{Store, StoreError, StoredChunk};
use meshota_protocol::bundle::{BundleError, BundleReader};
use meshota_protocol::TrustRoot;

use crate::registry::{Registry, RegistryError, ReleaseRecord};

/// Serialises the end of publications (see [`publish_bundle`]).
static PUBLISH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Why a bundle was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The bundle is malformed, tampered, or not signed per the trust root.
    #[error("bundle rejected: {0}")]
    Bundle(#[from] BundleError),
    /// The release has expired.
    #[error("release expired at {expires_at} (now {now})")]
    Expired {
        /// Release expiry.
        expires_at: u64,
        /// Time of the upload.
        now: u64,
    },
    /// The chunk store failed.
    #[error("origin store: {0}")]
    Store(#[from] StoreError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl PublishError {
    /// Whether the uploader is at fault (a 4xx) rather than the server.
    pub fn is_client_error(&self) -> bool {
        matches!(self, PublishError::Bundle(_) | PublishError::Expired { .. })
    }
}

/// Verifies the bundle at `path` against `trust` in one streaming pass,
/// stores its chunks (stored form) and manifest, adds the manifest to the
/// GC roots and records the release.
///
/// Chunks are stored as they verify, before the final payload-hash check;
/// a bundle that fails late leaves only unrooted, individually verified
/// chunks, which the next GC removes. Publishing the same release again
/// is harmless and returns its record.
///
/// # Errors
/// [`PublishError`].
pub fn publish_bundle(
    path: &Path,
    trust: &TrustRoot,
    store: &dyn Store,
    registry: &Registry,
    now: u64,
) -> Result<ReleaseRecord, PublishError> {
    let file = std::fs::File::open(path).map_err(BundleError::Io)?;
    let mut reader = BundleReader::open(BufReader::with_capacity(1 << 20, file))?;
    let release = reader.verify_release(trust)?;
    if now >= release.expires_at {
        return Err(PublishError::Expired {
            expires_at: release.expires_at,
            now,
        });
    }
    let manifest_id = reader.manifest_id();
    let manifest_bytes = reader.manifest_bytes().to_vec();
    let id = reader.release_id();
    let signed_release = meshota_protocol::codec::encode(reader.signed_release())
        .map_err(|e| BundleError::Io(std::io::Error::other(e)))?;
    let chunks = reader.manifest().unique_chunks().len() as u64;
    while let Some(c) = reader.next_chunk()? {
        if !store.has_chunk(&c.chunk.id)? {
            store.put_chunk(
                &c.chunk.id,
                &StoredChunk {
                    encoding: c.encoding,
                    raw_len: c.chunk.len,
                    data: c.stored.into(),
                },
            )?;
        }
    }
    store.put_manifest(&manifest_id, &manifest_bytes)?;
    // Root-set and release-list updates are read-modify-write: two
    // uploads finishing together must not drop each other's root.
    let _serial = PUBLISH.lock().unwrap_or_else(|p| p.into_inner());
    let mut roots = store.roots()?;
    if !roots.contains(&manifest_id) {
        roots.push(manifest_id);
        store.set_roots(&roots)?;
    }
    registry.put_signed_release(&id, &signed_release)?;
    if let Some(existing) = registry.releases()?.into_iter().find(|r| r.id == id) {
        return Ok(existing);
    }
    let rec = ReleaseRecord {
        id,
        manifest_id,
        name: release.name,
        version: release.version,
        compatible: release.compatible,
        channel: release.channel,
        payload_size: release.payload_size,
        sequence: release.sequence,
        expires_at: release.expires_at,
        chunks,
        published_at: now,
    };
    registry.put_release(&rec)?;
    Ok(rec)
}
