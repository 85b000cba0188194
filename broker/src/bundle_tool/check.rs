//! `meshota bundle verify` and `meshota bundle extract`: one streaming
//! pass that checks signatures, manifest and every chunk, optionally
//! writing the payload out as it goes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use meshota_protocol::bundle::{BundleError, BundleReader};
use meshota_protocol::ids::{ManifestId, ReleaseId};
use meshota_protocol::TrustRoot;
use serde::Serialize;

use super::BundleToolError;
use crate::cli::atomic::AtomicFile;

const IO_BUF: usize = 1024 * 1024;

/// What a verification established.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The bundle file.
    pub path: PathBuf,
    /// The release's id.
    pub release_id: ReleaseId,
    /// The manifest's id.
    pub manifest_id: ManifestId,
    /// Payload bytes checked.
    pub payload_size: u64,
    /// Chunks checked.
    pub chunks: usize,
    /// Whether the release signatures were checked against a trust root.
    pub signatures_checked: bool,
}

/// Streams a whole bundle through every check, handing each verified
/// chunk's raw bytes to `sink`.
fn stream(
    path: &Path,
    trust: Option<&TrustRoot>,
    now: u64,
    sink: &mut impl Write,
    sink_path: &Path,
    progress: &ProgressBar,
) -> Result<CheckReport, BundleToolError> {
    let bundle_err = |source| BundleToolError::Bundle {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(BundleToolError::io(path))?;
    let mut reader =
        BundleReader::open(BufReader::with_capacity(IO_BUF, file)).map_err(bundle_err)?;
    if let Some(root) = trust {
        let release = reader.verify_release(root).map_err(bundle_err)?;
        if now >= release.expires_at {
            return Err(BundleToolError::ReleaseExpired {
                path: path.to_path_buf(),
                expires_at: release.expires_at,
                now,
            });
        }
    }
    progress.set_length(reader.manifest().payload_size);
    while let Some(chunk) = reader.next_chunk().map_err(bundle_err)? {
        sink.write_all(&chunk.raw)
            .map_err(BundleToolError::io(sink_path))?;
        progress.inc(chunk.raw.len() as u64);
    }
    progress.finish_and_clear();
    Ok(CheckReport {
        path: path.to_path_buf(),
        release_id: reader.release_id(),
        manifest_id: reader.manifest_id(),
        payload_size: reader.manifest().payload_size,
        chunks: reader.manifest().chunks.len(),
        signatures_checked: trust.is_some(),
    })
}

/// Checks a bundle end to end: release signatures against `trust`, the
/// release against the manifest, every chunk, the payload hash, and that
/// nothing follows the last chunk.
///
/// # Errors
/// [`BundleToolError::Bundle`] naming what failed and where.
pub fn verify(
    path: &Path,
    trust: &TrustRoot,
    now: u64,
    progress: &ProgressBar,
) -> Result<CheckReport, BundleToolError> {
    stream(
        path,
        Some(trust),
        now,
        &mut std::io::sink(),
        Path::new("-"),
        progress,
    )
}

/// Writes a bundle's payload to `out`, which appears only once every
/// check passed. Without `trust`, signatures are not checked (integrity
/// only), and the report says so.
///
/// # Errors
/// As [`verify`], plus I/O errors on `out`; nothing is left at `out`.
pub fn extract(
    path: &Path,
    out: &Path,
    trust: Option<&TrustRoot>,
    now: u64,
    progress: &ProgressBar,
) -> Result<CheckReport, BundleToolError> {
    let file = AtomicFile::create(out).map_err(BundleToolError::io(out))?;
    let mut sink = BufWriter::with_capacity(IO_BUF, file);
    let report = stream(path, trust, now, &mut sink, out, progress)?;
    let file = sink.into_inner().map_err(|e| BundleToolError::Io {
        path: out.to_path_buf(),
        source: e.into_error(),
    })?;
    file.commit().map_err(BundleToolError::io(out))?;
    Ok(report)
}

/// Whether an error means the bundle itself is bad (as opposed to the
/// command failing for another reason), for exit codes.
pub fn is_bad_bundle(e: &BundleToolError) -> bool {
    matches!(
        e,
        BundleToolError::Bundle { source, .. } if !matches!(source, BundleError::Io(_))
    ) || matches!(e, BundleToolError::ReleaseExpired { .. })
}
