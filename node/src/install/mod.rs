//! Install backends: how a verified payload reaches the inactive slot, how
//! the device switches to it, and how it commits or falls back.
//!
//! The trait is synchronous and small on purpose: the agent driver calls
//! it from a blocking thread, and the simulator implements it with a
//! backend that only verifies the payload and charges an install time.
//!
//! Backends:
//! - [`dir::DirBackend`] (default): A/B slot directories and an atomically
//!   switched `current` symlink.
//! - [`command::CommandBackend`]: user scripts, like Mender update modules
//!   or RAUC hooks.
//! - [`rauc::RaucBackend`]: the `rauc` CLI.

pub mod archive;
pub mod command;
pub mod dir;
mod fsutil;
pub mod proc;
pub mod rauc;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use meshota_protocol::chunking::inflate_chunk;
use meshota_protocol::manifest::PayloadVerifier;
use meshota_protocol::{Manifest, ReleaseId};

use crate::store::Store;

pub use fsutil::{fsync_dir, write_atomic};

/// Why a backend operation failed. Every variant names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store lacks a chunk the manifest lists: the download is incomplete.
    #[error("chunk {index} ({id}) of the manifest is not in the store")]
    MissingChunk {
        /// Manifest position.
        index: usize,
        /// The chunk id.
        id: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A stored chunk or the reassembled payload does not match the manifest.
    #[error("payload verification failed: {0}")]
    Verify(String),
    /// An external command failed, timed out or could not start.
    #[error("{0}")]
    Command(#[from] proc::ProcError),
    /// The backend's on-disk state is not what it expects.
    #[error("backend state: {0}")]
    State(String),
}

impl InstallError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InstallError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// The real state of the slots, as the backend sees it. It is the source
/// of truth the agent reconciles its persisted state against on start.
/// `None` fields mean the backend cannot tell; the agent then keeps its own view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotStatus {
    /// Name of the active (booted) slot.
    pub active_slot: Option<String>,
    /// Release held by the active slot.
    pub active_release: Option<ReleaseId>,
    /// Version held by the active slot.
    pub active_version: Option<meshota_protocol::semver::Version>,
    /// Whether the active slot is on trial (switched to, not yet committed).
    pub trial: bool,
}

/// What activation needs before the new slot runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The new slot is live now; run the health check.
    Live,
    /// The bootloader will start the new slot on the next boot; reboot.
    RebootRequired,
}

/// What to install.
pub struct InstallRequest<'a> {
    /// The release being installed.
    pub release: ReleaseId,
    /// Its validated manifest.
    pub manifest: &'a Manifest,
    /// Where its chunks are.
    pub store: &'a dyn Store,
}

/// A result of a health check: `Ok(output)` or `Err(reason)`.
pub type HealthOutcome = Result<String, String>;

/// An A/B install mechanism.
pub trait InstallBackend: Send {
    /// Short name for logs and status (`dir`, `command`, `rauc`).
    fn name(&self) -> &'static str;

    /// The real slot state.
    ///
    /// # Errors
    /// [`InstallError`] when the state cannot be read.
    fn status(&mut self) -> Result<SlotStatus, InstallError>;

    /// Writes the payload to the inactive slot without switching to it.
    /// Idempotent: after a crash it is simply run again.
    ///
    /// # Returns
    /// The name of the slot written.
    ///
    /// # Errors
    /// [`InstallError`]; the active slot is untouched whatever happens.
    fn install(&mut self, req: &InstallRequest<'_>) -> Result<String, InstallError>;

    /// Makes the installed slot the one that runs, on trial.
    ///
    /// # Errors
    /// [`InstallError`].
    fn activate(&mut self, release: &ReleaseId) -> Result<Activation, InstallError>;

    /// Runs the post-activation health check within `timeout`.
    fn health(&mut self, timeout: Duration) -> HealthOutcome;

    /// Makes the trial slot permanent.
    ///
    /// # Errors
    /// [`InstallError`].
    fn commit(&mut self) -> Result<(), InstallError>;

    /// Returns to the previous slot.
    ///
    /// # Returns
    /// Whether the previous slot runs now or after a reboot.
    ///
    /// # Errors
    /// [`InstallError`].
    fn rollback(&mut self) -> Result<Activation, InstallError>;
}

/// Streams the payload out of the store in manifest order into `out`,
/// verifying every chunk and the whole payload on the way, so nothing
/// unverified is ever reported as written.
///
/// # Errors
/// [`InstallError::MissingChunk`], [`InstallError::Verify`], or an I/O
/// error from `out` (reported against `path`).
pub fn write_payload(
    manifest: &Manifest,
    store: &dyn Store,
    out: &mut dyn Write,
    path: &std::path::Path,
) -> Result<u64, InstallError> {
    let mut verifier = PayloadVerifier::new(manifest);
    let mut written = 0u64;
    for (index, c) in manifest.chunks.iter().enumerate() {
        let stored = store
            .get_chunk(&c.id)?
            .ok_or_else(|| InstallError::MissingChunk {
                index,
                id: c.id.to_string(),
            })?;
        // The verifier checks the chunk's id; hashing it here as well
        // was a second pass over the payload for nothing.
        let raw = inflate_chunk(stored.encoding, &stored.data, c.len)
            .map_err(|e| InstallError::Verify(format!("chunk {index}: {e}")))?;
        verifier
            .update(&raw)
            .map_err(|e| InstallError::Verify(e.to_string()))?;
        out.write_all(&raw)
            .map_err(|e| InstallError::io("write", path, e))?;
        written += raw.len() as u64;
    }
    verifier
        .finish()
        .map_err(|e| InstallError::Verify(e.to_string()))?;
    Ok(written)
}

/// Reassembles the payload into a file (write to `<path>.tmp`, fsync,
/// rename, fsync the directory), for backends that hand a file to a tool.
///
/// # Errors
/// As [`write_payload`], plus I/O errors.
pub fn payload_to_file(
    manifest: &Manifest,
    store: &dyn Store,
    path: &std::path::Path,
) -> Result<u64, InstallError> {
    let dir = path
        .parent()
        .ok_or_else(|| InstallError::State(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| InstallError::io("create dir", dir, e))?;
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| InstallError::io("create", &tmp, e))?;
    let mut w = std::io::BufWriter::new(file);
    let n = write_payload(manifest, store, &mut w, &tmp)?;
    let file = w
        .into_inner()
        .map_err(|e| InstallError::io("flush", &tmp, e.into_error()))?;
    file.sync_all()
        .map_err(|e| InstallError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| InstallError::io("rename", path, e))?;
    fsync_dir(dir)?;
    Ok(n)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
