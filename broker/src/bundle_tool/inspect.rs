//! `meshota bundle inspect`: what a bundle claims to be, read from its
//! header only (signatures are not checked; `bundle verify` does that).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use meshota_protocol::bundle::BundleReader;
use meshota_protocol::ids::{KeyId, ManifestId, PayloadHash, ReleaseId};
use meshota_protocol::{Channel, ChunkRef, ChunkerParams, Compatible, InstallKind};
use serde::Serialize;

use super::BundleToolError;

/// A bundle's header, as `inspect --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    /// Product or image name.
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// Device class.
    pub compatible: Compatible,
    /// Release channel.
    pub channel: Channel,
    /// The signed release's id.
    pub release_id: ReleaseId,
    /// The manifest's id.
    pub manifest_id: ManifestId,
    /// Payload bytes.
    pub payload_size: u64,
    /// BLAKE3 of the payload.
    pub payload_hash: PayloadHash,
    /// Release sequence.
    pub sequence: u64,
    /// Release expiry, seconds since the epoch.
    pub expires_at: u64,
    /// Manifest creation time, seconds since the epoch.
    pub created_at: u64,
    /// How devices install it.
    pub kind: InstallKind,
    /// How the payload was cut.
    pub chunker: ChunkerParams,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Keys whose signatures the release carries (unchecked).
    pub signed_by: Vec<KeyId>,
    /// The chunks, in payload order.
    pub chunks: Vec<ChunkRef>,
}

impl BundleSummary {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let unique = self
            .chunks
            .iter()
            .map(|c| c.id)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        format!(
            "{} {} for {} on channel {}\n\
             release   {}\n\
             manifest  {}\n\
             payload   {} bytes ({:?}), {} chunks ({} distinct)\n\
             sequence  {}, expires at {} (unix)\n\
             signed by {} key(s); signatures not checked, run `meshota bundle verify`",
            self.name,
            self.version,
            self.compatible,
            self.channel,
            self.release_id,
            self.manifest_id,
            self.payload_size,
            self.kind,
            self.chunks.len(),
            unique,
            self.sequence,
            self.expires_at,
            self.signed_by.len(),
        )
    }
}

/// Reads a bundle's header.
///
/// # Errors
/// [`BundleToolError::Io`] or [`BundleToolError::Bundle`] when the file is
/// not a bundle or its header is damaged.
pub fn inspect(path: &Path) -> Result<BundleSummary, BundleToolError> {
    let file = File::open(path).map_err(BundleToolError::io(path))?;
    let bundle_err = |source| BundleToolError::Bundle {
        path: PathBuf::from(path),
        source,
    };
    let reader = BundleReader::open(BufReader::new(file)).map_err(bundle_err)?;
    let signed = reader.signed_release();
    let release = signed
        .decode_unverified()
        .map_err(|e| bundle_err(e.into()))?;
    let m = reader.manifest();
    Ok(BundleSummary {
        name: release.name,
        version: release.version,
        compatible: release.compatible,
        channel: release.channel,
        release_id: reader.release_id(),
        manifest_id: reader.manifest_id(),
        payload_size: m.payload_size,
        payload_hash: m.payload_hash,
        sequence: release.sequence,
        expires_at: release.expires_at,
        created_at: m.created_at,
        kind: m.kind,
        chunker: m.chunker,
        meta: m.meta.clone(),
        signed_by: signed.signatures().iter().map(|s| s.key).collect(),
        chunks: m.chunks.clone(),
    })
}
