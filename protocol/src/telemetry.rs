//! Device telemetry: status and events, each signed by the device's own
//! key and numbered by a per-device counter, so the control plane can
//! reject forged or replayed reports whatever broker carried them.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Kind, Message};
use crate::ids::{Compatible, DeviceId, Group, ReleaseId, SiteId};
use crate::trust::{PublicKey, SecretKey};

/// Where a device is in an update. Shared by the node's install state
/// machine and the broker's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    /// Nothing in progress.
    Idle,
    /// Fetching chunks.
    Downloading,
    /// All chunks held and verified.
    Downloaded,
    /// Writing the inactive slot.
    Installing,
    /// Inactive slot written and verified.
    Installed,
    /// Switched to the new slot, on trial until the health check passes.
    Activated,
    /// Health confirmed; the new slot is permanent. The only success.
    Committed,
    /// Returned to the previous slot.
    RolledBack,
    /// Gave up; the previous slot is still active.
    Failed,
}

impl UpdateState {
    /// Stable lowercase name, as in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Downloading => "downloading",
            UpdateState::Downloaded => "downloaded",
            UpdateState::Installing => "installing",
            UpdateState::Installed => "installed",
            UpdateState::Activated => "activated",
            UpdateState::Committed => "committed",
            UpdateState::RolledBack => "rolled-back",
            UpdateState::Failed => "failed",
        }
    }
}

/// A device's retained status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Installed and active version, if known.
    pub version: Option<semver::Version>,
    /// Release the active slot holds, if known.
    pub release: Option<ReleaseId>,
    /// Active slot name (`a`, `b`, or a backend's own name).
    pub slot: Option<String>,
    /// Update state.
    pub state: UpdateState,
    /// The release the state refers to, when one is in progress.
    pub target: Option<ReleaseId>,
    /// libp2p peer id, for the registry and for debugging the mesh.
    pub peer_id: Option<String>,
    /// The device's site.
    pub site: SiteId,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// False in the last will: the device went away.
    pub online: bool,
    /// Rollout groups it belongs to, so the control plane can count a
    /// group wave (devices still decide eligibility themselves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Its device class, so the control plane knows which rollouts it is
    /// eligible for. Absent in reports of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible: Option<Compatible>,
    /// Version of the trust root the device verifies with, so the
    /// operator can follow a key rotation across the fleet. Absent in
    /// reports of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_version: Option<u64>,
}

/// Bytes of one download, by where they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteSplit {
    /// From peers on the same site.
    pub same_site: u64,
    /// From peers on other sites.
    pub other_peers: u64,
    /// From the origin (seed-only peer or HTTP).
    pub origin: u64,
    /// Already held locally (delta reuse): never fetched.
    pub local: u64,
}

/// Something that happened on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The update state changed.
    StateChanged {
        /// The release concerned.
        release: Option<ReleaseId>,
        /// Previous state.
        from: UpdateState,
        /// New state.
        to: UpdateState,
    },
    /// Download progress.
    Progress {
        /// The release being fetched.
        release: ReleaseId,
        /// Bytes so far, by source.
        bytes: ByteSplit,
        /// Total payload bytes.
        total: u64,
        /// Recent rate, bytes per second.
        rate_bps: u64,
    },
    /// The result of writing the inactive slot.
    InstallResult {
        /// The release.
        release: ReleaseId,
        /// Whether it succeeded.
        ok: bool,
        /// Why not, or a note.
        detail: String,
    },
    /// The result of the post-activation health check.
    HealthResult {
        /// The release.
        release: ReleaseId,
        /// Whether it passed.
        ok: bool,
        /// Output or reason.
        detail: String,
    },
    /// An error, with a stable code (for example `E_EXPIRED`).
    Error {
        /// Stable error code.
        code: String,
        /// Human-readable message.
        message: String,
        /// The release concerned, if any.
        release: Option<ReleaseId>,
    },
    /// The device adopted a newer trust root from the fleet's chain.
    TrustRotated {
        /// The root version it verified with before.
        from: u64,
        /// The one it verifies with now.
        to: u64,
    },
}

/// What a report carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportBody {
    /// A status (published retained).
    Status(Status),
    /// An event.
    Event(Event),
}

/// A report before signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The reporting device.
    pub device: DeviceId,
    /// Strictly increasing per device; the control plane drops anything
    /// not above the last accepted.
    pub counter: u64,
    /// Device time, seconds since the epoch (informational).
    pub time: u64,
    /// The content.
    pub body: ReportBody,
}

impl Message for Report {
    const KIND: Kind = Kind::Report;
}

/// A report as sent: the encoded [`Report`] and the device's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReport {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

impl Message for SignedReport {
    const KIND: Kind = Kind::SignedReport;
}

/// Why a report was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Not signed by the device's enrolled key.
    #[error("report signature does not verify against the device's enrolled key")]
    BadSignature,
    /// Not decodable.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl SignedReport {
    /// Encodes and signs a report with the device key.
    ///
    /// # Errors
    /// [`CodecError`] when the report exceeds its size limit.
    pub fn sign(report: &Report, key: &SecretKey) -> Result<Self, CodecError> {
        let body = codec::encode(report)?;
        let sig = key.sign(&body).to_vec();
        Ok(Self { body, sig })
    }

    /// Reads the device id without verifying, to look up its key.
    ///
    /// # Errors
    /// [`CodecError`].
    pub fn claimed(&self) -> Result<Report, CodecError> {
        codec::decode(&self.body)
    }

    /// Verifies against the device's enrolled key and decodes.
    ///
    /// # Errors
    /// [`ReportError`].
    pub fn verify(&self, key: &PublicKey) -> Result<Report, ReportError> {
        if !key.verify(&self.body, &self.sig) {
            return Err(ReportError::BadSignature);
        }
        Ok(codec::decode(&self.body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(counter: u64) -> Report {
        Report {
            device: DeviceId::new("d1").unwrap(),
            counter,
            time: 5,
            body: ReportBody::Event(Event::Error {
                code: "E_EXPIRED".into(),
                message: "x".into(),
                release: None,
            }),
        }
    }

    #[test]
    fn a_report_verifies_only_with_its_device_key() {
        let k = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let s = SignedReport::sign(&report(3), &k).unwrap();
        assert_eq!(s.verify(&k.public()).unwrap(), report(3));
        assert!(matches!(
            s.verify(&other.public()),
            Err(ReportError::BadSignature)
        ));
        let forged = SignedReport::sign(&report(3), &other).unwrap();
        assert!(forged.verify(&k.public()).is_err());
    }
}
