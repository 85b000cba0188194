//! `meshota bundle …`: build, inspect, verify and extract bundle files.
//!
//! The bundle format itself (and its streaming reader and writer) lives
//! in [`meshota_protocol::bundle`]; this module adds the file handling,
//! the parallel compression pipeline, and operator-facing errors.

pub mod check;
pub mod create;
pub mod inspect;

use std::path::PathBuf;

use meshota_protocol::bundle::BundleError;
use meshota_protocol::manifest::ManifestError;
use meshota_protocol::{CodecError, IdError, VerifyError};

use crate::cli::keys::KeysError;
use crate::cli::Hint;

/// Everything that can go wrong in a `bundle` command.
#[derive(Debug, thiserror::Error)]
pub enum BundleToolError {
    /// `--version` is not a semantic version.
    #[error("invalid --version {got:?}: {source}")]
    BadVersion {
        /// What was given.
        got: String,
        /// The parser's complaint.
        #[source]
        source: semver::Error,
    },
    /// `--name`, `--compatible` or `--channel` is not a valid id.
    #[error("invalid --{flag}: {source}")]
    BadId {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        #[source]
        source: IdError,
    },
    /// A `--meta` entry is not `key=value`.
    #[error("invalid --meta {0:?}: expected key=value")]
    BadMeta(String),
    /// Loading keys or the trust file failed.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Chunking the payload or building its manifest failed.
    #[error("building the manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The signed release could not be encoded.
    #[error("signing the release: {0}")]
    Sign(#[from] CodecError),
    /// The payload changed between the two passes of `create`.
    #[error("{path} changed while the bundle was being built (chunk {index} at payload offset {offset} no longer matches); no bundle was written")]
    PayloadChanged {
        /// The payload.
        path: PathBuf,
        /// Chunk position.
        index: usize,
        /// Payload offset of the chunk.
        offset: u64,
    },
    /// The release just signed is not accepted by the key directory's own
    /// trust root.
    #[error("the release keys in {dir} are not trusted by {dir}/trust.cbor: {source}")]
    Untrusted {
        /// The key directory.
        dir: PathBuf,
        /// Why the trust root refused the release.
        #[source]
        source: VerifyError,
    },
    /// The bundle is invalid, tampered, truncated or untrusted.
    #[error("{path}: {source}")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong, with offsets.
        #[source]
        source: BundleError,
    },
    /// The release inside the bundle has expired.
    #[error("{path}: the release expired at {expires_at} (now {now}); devices will refuse it")]
    ReleaseExpired {
        /// The bundle file.
        path: PathBuf,
        /// Its expiry, seconds since the epoch.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// A worker thread panicked (a bug, not bad input).
    #[error("internal error: a {0} thread panicked")]
    ThreadPanicked(&'static str),
}

impl BundleToolError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Hint for BundleToolError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::BadVersion { .. } => {
                Some("use a semantic version such as 1.4.0 or 2.0.0-rc.1".into())
            }
            Self::BadId { .. } => Some(
                "use a non-empty name of at most 128 bytes without '/', '+', '#' or whitespace"
                    .into(),
            ),
            Self::Keys(e) => e.hint(),
            Self::PayloadChanged { .. } => {
                Some("wait until whatever writes the payload has finished, then run again".into())
            }
            Self::Untrusted { dir, .. } => Some(format!(
                "the release*.key files and trust.cbor in {} do not belong together; rerun `meshota keys init` or restore the matching files",
                dir.display()
            )),
            Self::Bundle { source, .. } => bundle_hint(source),
            Self::ReleaseExpired { .. } => {
                Some("rebuild the bundle (a later --expires-days) and publish that one".into())
            }
            _ => None,
        }
    }
}

fn bundle_hint(e: &BundleError) -> Option<String> {
    let damaged = "the file was modified or damaged after it was built: copy it again from its source, or rebuild it";
    Some(
        match e {
            BundleError::BadMagic => return None,
            BundleError::Truncated { .. } => {
                "the file is incomplete (an interrupted copy or download?): copy it again"
            }
            BundleError::TrailingData { .. } => {
                "something was appended to the file: copy it again from its source"
            }
            BundleError::Release(VerifyError::UnknownKey { .. }) => {
                "the bundle was signed by keys this trust file does not list: pass the trust.cbor from the key directory that built it"
            }
            BundleError::Release(VerifyError::BelowThreshold { .. }) => {
                "sign with more release keys (put them all in the --keys directory), or check --trust is the right trust file"
            }
            BundleError::Release(VerifyError::BadSignature { .. }) => {
                "the signed release was altered after signing: do not use this file; rebuild it"
            }
            BundleError::Io(_) => return None,
            _ => damaged,
        }
        .to_string(),
    )
}

/// Asks a `std::thread` join result for its value, turning a panic into
/// an error instead of propagating it.
pub(crate) fn joined<T>(
    r: std::thread::Result<Result<T, BundleToolError>>,
    what: &'static str,
) -> Result<T, BundleToolError> {
    r.map_err(|_| BundleToolError::ThreadPanicked(what))?
}
