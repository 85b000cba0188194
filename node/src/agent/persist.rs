//! The agent's state file: [`AgentState`] through the one codec
//! (`Kind::LocalState`), replaced atomically (write a temporary file,
//! fsync, rename, fsync the directory), so after power loss the file holds
//! either the old state or the new one.

use std::path::{Path, PathBuf};

use meshota_protocol::{codec, CodecError};

use super::state::AgentState;
use crate::install::{write_atomic, InstallError};

/// File name of the state inside the data directory.
pub const STATE_FILE: &str = "agent-state.cbor";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("agent state file: {0}")]
    Io(#[from] InstallError),
    /// The file exists but does not decode.
    #[error("agent state file {path} is unreadable: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// The state could not be encoded (larger than its limit).
    #[error("agent state cannot be encoded: {0}")]
    Encode(CodecError),
}

/// The state file of one data directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file inside `data_dir` (created if missing).
    ///
    /// # Errors
    /// [`PersistError::Io`] when the directory cannot be created.
    pub fn new(data_dir: &Path) -> Result<Self, PersistError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| InstallError::io("create dir", data_dir, e))?;
        Ok(Self {
            path: data_dir.join(STATE_FILE),
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` on first start.
    ///
    /// # Errors
    /// [`PersistError`] for an unreadable or undecodable file.
    pub fn load(&self) -> Result<Option<AgentState>, PersistError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(InstallError::io("read", &self.path, e).into()),
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(|source| PersistError::Corrupt {
                path: self.path.clone(),
                source,
            })
    }

    /// Loads the state; a corrupt file is moved aside to `<file>.corrupt`
    /// and a fresh state returned with the reason, because the real slot
    /// state (read on boot) is the source of truth anyway.
    ///
    /// # Errors
    /// [`PersistError::Io`] when the file cannot be read or moved.
    pub fn load_or_recover(&self) -> Result<(AgentState, Option<String>), PersistError> {
        match self.load() {
            Ok(s) => Ok((s.unwrap_or_default(), None)),
            Err(PersistError::Corrupt { source, .. }) => {
                let aside = self.path.with_extension("cbor.corrupt");
                std::fs::rename(&self.path, &aside)
                    .map_err(|e| InstallError::io("rename", &aside, e))?;
                Ok((AgentState::default(), Some(source.to_string())))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the state durably; returns only once it is on disk.
    ///
    /// # Errors
    /// [`PersistError`].
    pub fn save(&self, state: &AgentState) -> Result<(), PersistError> {
        let bytes = codec::encode(state).map_err(PersistError::Encode)?;
        write_atomic(&self.path, &bytes)?;
        Ok(())
    }
}
