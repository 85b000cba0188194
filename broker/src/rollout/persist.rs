//! Snapshots: the planner's whole state through the one protocol codec.

use meshota_protocol::codec::{self, CodecError, Kind, Message};
use serde::{Deserialize, Serialize};

use super::{Core, Derived, PlanError, Planner};

/// Bumped when [`Core`] changes shape; older snapshots are refused rather
/// than misread.
const SNAPSHOT_FORMAT: u16 = 1;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u16,
    core: Core,
}

// Broker-local state, like the node's: `LocalState` is the kind for state
// that never leaves the machine that wrote it.
impl Message for Snapshot {
    const KIND: Kind = Kind::LocalState;
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Not a planner snapshot, or damaged.
    #[error("cannot decode the rollout snapshot: {0}")]
    Codec(#[from] CodecError),
    /// Written by another version of the planner.
    #[error(
        "rollout snapshot format {found} is not supported (this build reads {SNAPSHOT_FORMAT})"
    )]
    UnsupportedFormat {
        /// The format found.
        found: u16,
    },
    /// The spec inside does not validate.
    #[error("the rollout snapshot holds an invalid spec: {0}")]
    Spec(#[from] PlanError),
    /// The state inside contradicts itself.
    #[error("the rollout snapshot is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl Planner {
    /// Encodes the whole state, undelivered outputs included.
    ///
    /// # Errors
    /// [`CodecError::TooLarge`] when the state exceeds the `LocalState`
    /// limit (1 MiB: some 25 000 devices, at about 42 bytes each).
    pub fn snapshot(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(&Snapshot {
            format: SNAPSHOT_FORMAT,
            core: self.core.clone(),
        })
    }

    /// Rebuilds a planner from [`Planner::snapshot`] bytes; it continues
    /// the gate sequence and takes the same decisions as the original.
    ///
    /// # Errors
    /// [`RestoreError`] for anything that is not a valid snapshot.
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let snap: Snapshot = codec::decode(bytes)?;
        if snap.format != SNAPSHOT_FORMAT {
            return Err(RestoreError::UnsupportedFormat { found: snap.format });
        }
        let core = snap.core;
        core.spec.validate()?;
        let expected = core.spec.waves.len() + usize::from(!core.spec.groups.is_empty());
        if core.waves.len() != expected {
            return Err(RestoreError::Inconsistent(
                "wave count does not match the spec",
            ));
        }
        if core.current.is_some_and(|k| k >= core.waves.len())
            || core
                .devices
                .values()
                .any(|r| r.wave.is_some_and(|k| k >= core.waves.len()))
        {
            return Err(RestoreError::Inconsistent("a wave index is out of range"));
        }
        if core
            .gate
            .as_ref()
            .is_some_and(|g| g.sequence >= core.next_sequence)
        {
            return Err(RestoreError::Inconsistent(
                "the next gate sequence is not above the last gate's",
            ));
        }
        let mut p = Planner {
            core,
            derived: Derived::default(),
        };
        p.rebuild();
        Ok(p)
    }
}
