//! What a fetch takes and gives back.

use std::time::Duration;

use meshota_protocol::{ByteSplit, ManifestId};
use tokio::sync::watch;

use crate::store::StoreError;

/// Options of one [`crate::p2p::NodeHandle::fetch`].
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Give up after this long (`None`: keep trying until shutdown).
    pub timeout: Option<Duration>,
    /// Receives progress after every verified chunk.
    pub progress: Option<watch::Sender<FetchProgress>>,
}

/// Progress of a fetch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchProgress {
    /// Manifest chunks held (verified and stored, including those held
    /// before the fetch began).
    pub held: usize,
    /// Manifest chunks in total.
    pub total: usize,
    /// Bytes so far, by source.
    pub bytes: ByteSplit,
}

/// What a finished download cost and where its bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadReport {
    /// Bytes by source; `local` is what was already held (delta reuse).
    pub bytes: ByteSplit,
    /// From the start of the fetch (manifest resolution included).
    pub duration: Duration,
    /// Peers that delivered at least one chunk.
    pub peers_used: usize,
    /// Peers banned for bad data.
    pub bans: usize,
    /// Chunk requests retried.
    pub retries: usize,
    /// Peers dropped as slow or silent.
    pub drops: usize,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A seed-only origin never fetches.
    #[error("this node is a seed-only origin and does not fetch")]
    SeedOnly,
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The fetch did not finish in time.
    #[error("fetch of manifest {manifest} timed out after {after:?} with {held} of {total} chunks held (manifest resolved: {resolved})")]
    Timeout {
        /// The manifest.
        manifest: ManifestId,
        /// The timeout.
        after: Duration,
        /// Chunks held.
        held: usize,
        /// Chunks in the manifest (0 while unresolved).
        total: usize,
        /// Whether the manifest itself was found.
        resolved: bool,
    },
    /// The node shut down first.
    #[error("the node shut down before the fetch finished")]
    Shutdown,
    /// This call joined a fetch of the same manifest already running,
    /// and that fetch failed.
    #[error("the fetch this call joined failed: {0}")]
    Joined(String),
}
