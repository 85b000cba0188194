//! Releases, rollout gates, announcements and commands: the documents a
//! device acts on, and the rollout bucketing that decides who goes first.

use serde::{Deserialize, Serialize};

use crate::codec::{Kind, Message};
use crate::ids::{Channel, Compatible, DeviceId, FleetId, Group, ManifestId, ReleaseId};
use crate::trust::Signed;

/// A release, signed offline by the `release` role on the build machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The manifest this release pins.
    pub manifest_id: ManifestId,
    /// Product name (same as the manifest's).
    pub name: String,
    /// Version (same as the manifest's).
    pub version: semver::Version,
    /// Device class (same as the manifest's).
    pub compatible: Compatible,
    /// Channel it is published on.
    pub channel: Channel,
    /// Payload size, so a device can refuse before fetching anything.
    pub payload_size: u64,
    /// Monotonic per signer; devices refuse anything not above the last seen.
    pub sequence: u64,
    /// Seconds since the Unix epoch after which devices refuse it.
    pub expires_at: u64,
}

impl Message for Release {
    const KIND: Kind = Kind::Release;
}

impl Signed<Release> {
    /// The release id: BLAKE3 of the signed bytes.
    pub fn id(&self) -> ReleaseId {
        ReleaseId::from_bytes(self.digest())
    }
}

/// What a device may do with a release once eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Fetch the chunks only.
    Download,
    /// Fetch and write the inactive slot, but do not switch to it.
    Install,
    /// Fetch, write, switch, health-check, then commit or roll back.
    InstallAndActivate,
    /// Do nothing further: a halted or aborted rollout.
    Stop,
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "download" => Ok(Self::Download),
            "install" => Ok(Self::Install),
            "install-and-activate" => Ok(Self::InstallAndActivate),
            "stop" => Ok(Self::Stop),
            o => Err(format!(
                "unknown action {o:?}: expected download, install, install-and-activate or stop"
            )),
        }
    }
}

/// Basis points in a whole fleet.
pub const FULL_SHARE: u16 = 10_000;

/// Which part of the fleet may act on a release, signed online by the
/// `rollout` role. Short-lived, and re-signed by the planner before expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutGate {
    /// The release it opens; must equal the id of the accompanying release.
    pub release_id: ReleaseId,
    /// Share of the fleet, in basis points (0..=10000).
    pub share_bp: u16,
    /// Groups that are eligible whatever their bucket.
    pub groups: Vec<Group>,
    /// What eligible devices do.
    pub action: Action,
    /// Do not act before this time (seconds since the epoch).
    pub not_before: u64,
    /// Refuse after this time.
    pub expires_at: u64,
    /// Monotonic; devices refuse a gate not above the last seen.
    pub sequence: u64,
    /// Devices eligible whatever their bucket. The planner names here one
    /// device of each site that the first wave's share leaves out, so that
    /// every site has a device that fetches the release before the rest of
    /// the site, which then fetches it over the LAN: a site with none
    /// pulled 2-3 copies over its uplink at 1,000 simulated devices. Absent
    /// from the encoding when empty, so gates that name nobody encode as
    /// before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceId>,
    /// Devices not eligible whose bucket lies below this share download
    /// the release, and only download it: the planner opens the next
    /// wave's share here, so by the time that wave opens its devices hold
    /// the bundle and only install. Signed like the rest, and it can only
    /// ever start a download. Absent from the encoding when zero, so
    /// gates without it encode as before; devices of builds before it
    /// ignore it and simply fetch when their wave opens.
    #[serde(default, skip_serializing_if = "no_share")]
    pub prefetch_bp: u16,
}

/// Whether a share in basis points is zero: for `skip_serializing_if`
/// on optional shares (which passes a reference), here and in documents
/// that show them.
#[allow(clippy::trivially_copy_pass_by_ref)]
pub fn no_share(bp: &u16) -> bool {
    *bp == 0
}

impl Message for RolloutGate {
    const KIND: Kind = Kind::RolloutGate;
}

/// A release plus the gate that opens it, published retained on the
/// announce topic. The hints are unsigned: they only say where to look,
/// and everything fetched from there is verified against the signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The offline-signed release.
    pub release: Signed<Release>,
    /// The online-signed gate.
    pub gate: Signed<RolloutGate>,
    /// libp2p multiaddrs of seeders (the origin) to bootstrap from.
    pub bootstrap: Vec<String>,
    /// Base URL of the origin's HTTP chunk endpoint, if any.
    pub http_origin: Option<String>,
}

impl Message for Announcement {
    const KIND: Kind = Kind::Announcement;
}

/// What a signed command asks of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandAction {
    /// Re-read retained announcements and report status now.
    CheckNow,
    /// Stop any update that has not been activated yet.
    Cancel,
    /// Switch back to the previous slot (or reinstall the named release).
    Rollback {
        /// The release to return to, if not simply the other slot.
        to: Option<ReleaseId>,
    },
}

/// An operator command, signed by the `rollout` role, sent on a device's
/// cmd topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Fleet it is meant for.
    pub fleet: FleetId,
    /// Device it is meant for; `None` means every device that receives it.
    pub target: Option<DeviceId>,
    /// What to do.
    pub action: CommandAction,
    /// Monotonic; a device refuses a command not above the last seen.
    pub sequence: u64,
    /// Refuse after this time.
    pub expires_at: u64,
}

impl Message for Command {
    const KIND: Kind = Kind::Command;
}

/// A device's rollout bucket for a release, in `0..10000`.
///
/// Derived from BLAKE3 so that it is uniform, stable across restarts, and
/// different per release: the same devices are not always the canaries.
pub fn bucket(device: &DeviceId, release: &ReleaseId) -> u16 {
    let mut h = blake3::Hasher::new();
    h.update(b"meshota-bucket-v1\0");
    h.update(release.as_bytes());
    h.update(device.as_str().as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_bytes()[..8]);
    (u64::from_le_bytes(first) % u64::from(FULL_SHARE)) as u16
}

/// Whether a device is inside a gate: in one of its groups, or its bucket
/// falls below the gate's share.
pub fn eligible(device: &DeviceId, device_groups: &[Group], gate: &RolloutGate) -> bool {
    gate.groups.iter().any(|g| device_groups.contains(g))
        || bucket(device, &gate.release_id) < gate.share_bp.min(FULL_SHARE)
        || gate.devices.contains(device)
}

/// What a device does about a gate: the gate's action when it is
/// [`eligible`], a download alone when its bucket lies below the gate's
/// prefetch share, and nothing otherwise. A `Stop` gate prefetches nobody.
pub fn action_for(
    device: &DeviceId,
    device_groups: &[Group],
    gate: &RolloutGate,
) -> Option<Action> {
    if eligible(device, device_groups, gate) {
        return Some(gate.action);
    }
    let prefetch = gate.action != Action::Stop
        && bucket(device, &gate.release_id) < gate.prefetch_bp.min(FULL_SHARE);
    prefetch.then_some(Action::Download)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(release_id: ReleaseId, share_bp: u16, groups: Vec<Group>) -> RolloutGate {
        RolloutGate {
            release_id,
            share_bp,
            groups,
            action: Action::InstallAndActivate,
            not_before: 0,
            expires_at: 10,
            sequence: 1,
            devices: Vec::new(),
            prefetch_bp: 0,
        }
    }

    fn dev(i: usize) -> DeviceId {
        DeviceId::new(format!("dev-{i}")).unwrap()
    }

    #[test]
    fn buckets_are_uniform_enough_that_a_share_selects_about_that_share() {
        let rel = ReleaseId::digest(b"r1");
        let n = 20_000;
        let below = (0..n).filter(|i| bucket(&dev(*i), &rel) < 1_000).count();
        // 10% of 20k = 2000; a binomial sd is ~42, so 1800..2200 is > 4 sd.
        assert!((1_800..2_200).contains(&below), "{below}");
    }

    #[test]
    fn buckets_differ_between_releases() {
        let a = ReleaseId::digest(b"a");
        let b = ReleaseId::digest(b"b");
        let same = (0..1000)
            .filter(|i| bucket(&dev(*i), &a) == bucket(&dev(*i), &b))
            .count();
        assert!(same < 10);
    }

    #[test]
    fn groups_are_eligible_at_zero_share_and_full_share_takes_everyone() {
        let mut gate = gate(
            ReleaseId::digest(b"x"),
            0,
            vec![Group::new("canary").unwrap()],
        );
        let canary = [Group::new("canary").unwrap()];
        assert!(eligible(&dev(1), &canary, &gate));
        assert!(!(0..200).any(|i| eligible(&dev(i), &[], &gate)));
        gate.share_bp = FULL_SHARE;
        assert!((0..200).all(|i| eligible(&dev(i), &[], &gate)));
    }

    #[test]
    fn a_device_the_gate_names_is_eligible_whatever_its_bucket() {
        let rel = ReleaseId::digest(b"x");
        let far = (0..1000).map(dev).max_by_key(|d| bucket(d, &rel)).unwrap();
        let mut gate = gate(rel, 100, vec![]);
        assert!(!eligible(&far, &[], &gate));
        gate.devices.push(far.clone());
        assert!(eligible(&far, &[], &gate));
        // Naming one device opens nobody else.
        assert_eq!(
            (0..1000).filter(|i| eligible(&dev(*i), &[], &gate)).count(),
            (0..1000).filter(|i| bucket(&dev(*i), &rel) < 100).count() + 1
        );
    }

    #[test]
    fn a_gate_that_names_nobody_encodes_as_before() {
        // Devices and brokers of the build before `devices` existed read
        // and sign the same bytes.
        let gate = gate(ReleaseId::digest(b"x"), 100, vec![]);
        let bytes = crate::codec::encode(&gate).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"devices"));
        assert!(!bytes.windows(11).any(|w| w == b"prefetch_bp"));
        let back: RolloutGate = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, gate);
    }

    #[test]
    fn devices_below_the_prefetch_share_only_download_and_the_rest_do_nothing() {
        let rel = ReleaseId::digest(b"x");
        let mut gate = gate(rel, 1_000, vec![]);
        gate.prefetch_bp = 5_000;
        let mut counts = [0usize; 3];
        for i in 0..2_000 {
            let d = dev(i);
            let b = bucket(&d, &rel);
            let a = action_for(&d, &[], &gate);
            if b < 1_000 {
                assert_eq!(a, Some(Action::InstallAndActivate), "bucket {b}");
                counts[0] += 1;
            } else if b < 5_000 {
                assert_eq!(a, Some(Action::Download), "bucket {b}");
                counts[1] += 1;
            } else {
                assert_eq!(a, None, "bucket {b}");
                counts[2] += 1;
            }
        }
        assert!(counts.iter().all(|c| *c > 100), "{counts:?}");
        // A stopped rollout starts no download.
        gate.action = Action::Stop;
        assert!((0..2_000).all(|i| {
            let d = dev(i);
            bucket(&d, &rel) < 1_000 || action_for(&d, &[], &gate).is_none()
        }));
    }

    #[test]
    fn a_gate_with_a_prefetch_share_survives_the_codec_and_old_readers_skip_it() {
        let mut gate = gate(ReleaseId::digest(b"x"), 100, vec![]);
        gate.prefetch_bp = 2_500;
        let bytes = crate::codec::encode(&gate).unwrap();
        let back: RolloutGate = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, gate);
        // A build before the field reads the same bytes without it.
        #[derive(Debug, Serialize, Deserialize)]
        struct OldGate {
            release_id: ReleaseId,
            share_bp: u16,
            groups: Vec<Group>,
            action: Action,
            not_before: u64,
            expires_at: u64,
            sequence: u64,
        }
        impl Message for OldGate {
            const KIND: Kind = Kind::RolloutGate;
        }
        let old: OldGate = crate::codec::decode(&bytes).unwrap();
        assert_eq!(old.share_bp, 100);
    }
}
