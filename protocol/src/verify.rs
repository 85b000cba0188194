//! Full verification of what a device receives, with one typed error per
//! way to fail and a stable code per error for telemetry.
//!
//! The checks follow TUF/Uptane: trust root first, then signatures and
//! thresholds per role, then freshness (expiry, sequence), then the
//! device-specific checks (compatible, no downgrade), then the binding
//! between the online gate and the offline release (mix-and-match).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::CodecError;
use crate::ids::{Compatible, DeviceId, FleetId, KeyId, ReleaseId};
use crate::release::{Announcement, Command, Release, RolloutGate};
use crate::trust::{Role, Signed, TrustRoot};

/// Which signed document a freshness error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocKind {
    /// The trust root.
    TrustRoot,
    /// A release.
    Release,
    /// A rollout gate.
    RolloutGate,
    /// A command.
    Command,
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocKind::TrustRoot => "trust root",
            DocKind::Release => "release",
            DocKind::RolloutGate => "rollout gate",
            DocKind::Command => "command",
        })
    }
}

/// Every way verification can fail.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A key of the role signed, but the signature does not verify.
    #[error("bad {role} signature by key {key}")]
    BadSignature {
        /// The role checked.
        role: Role,
        /// The key whose signature failed.
        key: KeyId,
    },
    /// Fewer distinct valid signatures than the role's threshold.
    #[error("{role} signatures below threshold: {valid} valid, {needed} needed")]
    BelowThreshold {
        /// The role checked.
        role: Role,
        /// Distinct valid signatures found.
        valid: usize,
        /// The threshold.
        needed: u32,
    },
    /// No signature came from any key of the role.
    #[error("signed by key {key}, which is not a {role} key in the trust root")]
    UnknownKey {
        /// The role checked.
        role: Role,
        /// The first foreign key seen.
        key: KeyId,
    },
    /// The document has expired.
    #[error("{document} expired at {expires_at} (now {now})")]
    Expired {
        /// Which document.
        document: DocKind,
        /// Its expiry.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// Sequence not above the last one accepted: a replay or a rollback.
    #[error(
        "{document} sequence {sequence} is not above the last accepted {last} (replay or rollback)"
    )]
    Replayed {
        /// Which document.
        document: DocKind,
        /// Its sequence (or version, for a trust root).
        sequence: u64,
        /// The last accepted.
        last: u64,
    },
    /// The release's version is not above the installed one.
    #[error("release version {offered} is not above the installed {installed} (downgrade)")]
    Downgrade {
        /// Offered version.
        offered: semver::Version,
        /// Installed version.
        installed: semver::Version,
    },
    /// The release is for another device class.
    #[error("release is for {offered:?}, this device is {device:?}")]
    Incompatible {
        /// The release's class.
        offered: Compatible,
        /// The device's class.
        device: Compatible,
    },
    /// The gate opens another release than the one it came with.
    #[error("rollout gate is for release {gate_release}, not {release} (mix-and-match)")]
    GateMismatch {
        /// What the gate names.
        gate_release: ReleaseId,
        /// The accompanying release.
        release: ReleaseId,
    },
    /// A manifest or payload does not match what the release pins.
    #[error("manifest does not match the release: {0}")]
    ManifestMismatch(String),
    /// A command is for another fleet or device.
    #[error("command is addressed to {0}, not this device")]
    NotForThisDevice(String),
    /// Larger than the size limit of its kind.
    #[error("too large: {0}")]
    TooLarge(CodecError),
    /// Not decodable.
    #[error("malformed: {0}")]
    Malformed(CodecError),
    /// The trust root itself is unusable.
    #[error("invalid trust root: {0}")]
    InvalidRoot(String),
}

impl From<CodecError> for VerifyError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLarge { .. } => VerifyError::TooLarge(e),
            other => VerifyError::Malformed(other),
        }
    }
}

impl VerifyError {
    /// A stable code for telemetry, dashboards and alerts. Never renamed.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::BadSignature { .. } => "E_BAD_SIGNATURE",
            VerifyError::BelowThreshold { .. } => "E_BELOW_THRESHOLD",
            VerifyError::UnknownKey { .. } => "E_UNKNOWN_KEY",
            VerifyError::Expired { .. } => "E_EXPIRED",
            VerifyError::Replayed { .. } => "E_REPLAYED",
            VerifyError::Downgrade { .. } => "E_DOWNGRADE",
            VerifyError::Incompatible { .. } => "E_INCOMPATIBLE",
            VerifyError::GateMismatch { .. } => "E_GATE_MISMATCH",
            VerifyError::ManifestMismatch(_) => "E_MANIFEST_MISMATCH",
            VerifyError::NotForThisDevice(_) => "E_NOT_FOR_DEVICE",
            VerifyError::TooLarge(_) => "E_TOO_LARGE",
            VerifyError::Malformed(_) => "E_MALFORMED",
            VerifyError::InvalidRoot(_) => "E_INVALID_ROOT",
        }
    }
}

/// What a device knows when it checks an announcement. The caller
/// persists `last_*` after acting, so replays survive a reboot.
#[derive(Debug, Clone)]
pub struct DeviceContext<'a> {
    /// The device's current trust root.
    pub root: &'a TrustRoot,
    /// The device's class.
    pub compatible: &'a Compatible,
    /// The installed version, if any.
    pub installed: Option<&'a semver::Version>,
    /// Highest release sequence accepted so far.
    pub last_release_sequence: u64,
    /// The release accepted with that sequence: re-accepting the same
    /// release under a newer gate is not a replay.
    pub last_release: Option<ReleaseId>,
    /// Highest gate sequence accepted so far.
    pub last_gate_sequence: u64,
    /// Trusted current time, seconds since the epoch; fixed at the start
    /// of an update so a long download cannot outlive an expiry check.
    pub now: u64,
}

/// An announcement that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedAnnouncement {
    /// The release id.
    pub release_id: ReleaseId,
    /// The release.
    pub release: Release,
    /// The gate.
    pub gate: RolloutGate,
}

/// Verifies the release half of an announcement on its own.
///
/// # Errors
/// The first failing check, as a [`VerifyError`].
pub fn verify_release(
    signed: &Signed<Release>,
    ctx: &DeviceContext<'_>,
) -> Result<(ReleaseId, Release), VerifyError> {
    ctx.root.check_expiry(ctx.now)?;
    let release = signed.verify(Role::Release, &ctx.root.release)?;
    release_checks(signed.id(), release, ctx)
}

/// Everything about a release after its signatures: freshness, class,
/// downgrade and replay.
fn release_checks(
    id: ReleaseId,
    release: Release,
    ctx: &DeviceContext<'_>,
) -> Result<(ReleaseId, Release), VerifyError> {
    if ctx.now >= release.expires_at {
        return Err(VerifyError::Expired {
            document: DocKind::Release,
            expires_at: release.expires_at,
            now: ctx.now,
        });
    }
    if &release.compatible != ctx.compatible {
        return Err(VerifyError::Incompatible {
            offered: release.compatible,
            device: ctx.compatible.clone(),
        });
    }
    if let Some(installed) = ctx.installed {
        if &release.version <= installed {
            return Err(VerifyError::Downgrade {
                offered: release.version,
                installed: installed.clone(),
            });
        }
    }
    let same_as_last = ctx.last_release == Some(id);
    if release.sequence < ctx.last_release_sequence
        || (release.sequence == ctx.last_release_sequence && !same_as_last)
    {
        return Err(VerifyError::Replayed {
            document: DocKind::Release,
            sequence: release.sequence,
            last: ctx.last_release_sequence,
        });
    }
    Ok((id, release))
}

/// Proof that an announcement's two signed documents passed the
/// signature checks of a trust root's `release` and `rollout` roles.
///
/// Signatures are the only part of [`verify_announcement`] that is the
/// same for every device holding the same root, and the only costly
/// part. A fleet simulator that hands one announcement to 100,000
/// devices checks them once with [`check_announcement_signatures`] and
/// passes the proof to [`verify_announcement_checked`], which still runs
/// every device-specific check. A proof can only be made by checking, and
/// it is used only for the exact documents and keys it was made for.
#[derive(Debug, Clone)]
pub struct CheckedSignatures {
    release: Signed<Release>,
    gate: Signed<RolloutGate>,
    release_keys: crate::trust::RoleKeys,
    rollout_keys: crate::trust::RoleKeys,
    release_doc: Release,
    gate_doc: RolloutGate,
}

impl CheckedSignatures {
    fn covers(&self, ann: &Announcement, root: &TrustRoot) -> bool {
        self.release == ann.release
            && self.gate == ann.gate
            && self.release_keys == root.release
            && self.rollout_keys == root.rollout
    }
}

/// Checks only the signatures of an announcement against `root`'s
/// `release` and `rollout` roles; see [`CheckedSignatures`].
///
/// # Errors
/// The signature or decode error, as a [`VerifyError`].
pub fn check_announcement_signatures(
    ann: &Announcement,
    root: &TrustRoot,
) -> Result<CheckedSignatures, VerifyError> {
    Ok(CheckedSignatures {
        release_doc: ann.release.verify(Role::Release, &root.release)?,
        gate_doc: ann.gate.verify(Role::Rollout, &root.rollout)?,
        release: ann.release.clone(),
        gate: ann.gate.clone(),
        release_keys: root.release.clone(),
        rollout_keys: root.rollout.clone(),
    })
}

/// Verifies a whole announcement: the release, then the gate and its
/// binding to the release.
///
/// # Errors
/// The first failing check, as a [`VerifyError`].
pub fn verify_announcement(
    ann: &Announcement,
    ctx: &DeviceContext<'_>,
) -> Result<VerifiedAnnouncement, VerifyError> {
    verify_announcement_checked(ann, None, ctx)
}

/// [`verify_announcement`], skipping the signature checks that `checked`
/// proves were passed for these exact documents under the device's own
/// keys. A proof for other documents or keys is ignored and the
/// signatures are checked as usual, so the result never depends on it.
///
/// # Errors
/// The first failing check, as a [`VerifyError`].
pub fn verify_announcement_checked(
    ann: &Announcement,
    checked: Option<&CheckedSignatures>,
    ctx: &DeviceContext<'_>,
) -> Result<VerifiedAnnouncement, VerifyError> {
    let checked = checked.filter(|c| c.covers(ann, ctx.root));
    ctx.root.check_expiry(ctx.now)?;
    let release = match checked {
        Some(c) => c.release_doc.clone(),
        None => ann.release.verify(Role::Release, &ctx.root.release)?,
    };
    let (release_id, release) = release_checks(ann.release.id(), release, ctx)?;
    let gate = match checked {
        Some(c) => c.gate_doc.clone(),
        None => ann.gate.verify(Role::Rollout, &ctx.root.rollout)?,
    };
    if gate.release_id != release_id {
        return Err(VerifyError::GateMismatch {
            gate_release: gate.release_id,
            release: release_id,
        });
    }
    if ctx.now >= gate.expires_at {
        return Err(VerifyError::Expired {
            document: DocKind::RolloutGate,
            expires_at: gate.expires_at,
            now: ctx.now,
        });
    }
    if gate.sequence <= ctx.last_gate_sequence {
        return Err(VerifyError::Replayed {
            document: DocKind::RolloutGate,
            sequence: gate.sequence,
            last: ctx.last_gate_sequence,
        });
    }
    Ok(VerifiedAnnouncement {
        release_id,
        release,
        gate,
    })
}

/// Verifies a command for this device.
///
/// # Errors
/// Signature, expiry, replay or addressing errors.
pub fn verify_command(
    signed: &Signed<Command>,
    root: &TrustRoot,
    fleet: &FleetId,
    device: &DeviceId,
    last_sequence: u64,
    now: u64,
) -> Result<Command, VerifyError> {
    root.check_expiry(now)?;
    let cmd = signed.verify(Role::Rollout, &root.rollout)?;
    if &cmd.fleet != fleet || cmd.target.as_ref().is_some_and(|t| t != device) {
        return Err(VerifyError::NotForThisDevice(format!(
            "{}/{}",
            cmd.fleet,
            cmd.target.as_ref().map_or("*", |d| d.as_str())
        )));
    }
    if now >= cmd.expires_at {
        return Err(VerifyError::Expired {
            document: DocKind::Command,
            expires_at: cmd.expires_at,
            now,
        });
    }
    if cmd.sequence <= last_sequence {
        return Err(VerifyError::Replayed {
            document: DocKind::Command,
            sequence: cmd.sequence,
            last: last_sequence,
        });
    }
    Ok(cmd)
}
