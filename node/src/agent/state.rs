//! The agent's persisted state: everything it must remember across a
//! power loss to finish or undo an update and to refuse replays.

use meshota_protocol::semver::Version;
use meshota_protocol::{
    Announcement, Kind, ManifestId, Message, Release, ReleaseId, RolloutGate, TrustChain,
    UpdateState,
};
use serde::{Deserialize, Serialize};

/// Releases remembered as given up (rolled back, failed, cancelled), so a
/// re-signed gate does not make a device retry a bad release forever.
pub(crate) const MAX_GIVEN_UP: usize = 16;

/// A verified announcement the agent acts on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The announcement as received (hints included).
    pub announcement: Announcement,
    /// Its release id.
    pub release_id: ReleaseId,
    /// The verified release.
    pub release: Release,
    /// The verified gate.
    pub gate: RolloutGate,
}

impl Held {
    /// Whether `ann` carries exactly the same signed documents.
    pub fn same_documents(&self, ann: &Announcement) -> bool {
        self.announcement.release == ann.release && self.announcement.gate == ann.gate
    }
}

/// Everything persisted. Written (and flushed) before every side effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Where the current update is.
    pub phase: UpdateState,
    /// Why the last update failed, when `phase` is `Failed`.
    pub failure: Option<String>,
    /// The announcement being acted on (or last acted on).
    pub held: Option<Held>,
    /// A newer announcement received while a slot was being written or on
    /// trial; it is taken up when that finishes.
    pub next: Option<Held>,
    /// The active slot as last reported by the backend.
    pub slot: Option<String>,
    /// The slot that was active before activation: where a rollback returns.
    pub slot_before: Option<String>,
    /// The slot the install wrote.
    pub target_slot: Option<String>,
    /// Version of the committed, active release.
    pub installed_version: Option<Version>,
    /// The committed, active release.
    pub installed_release: Option<ReleaseId>,
    /// What was installed before the last commit, for operator rollbacks.
    pub previous: Option<(Option<ReleaseId>, Option<Version>)>,
    /// Highest release sequence accepted.
    pub last_release_sequence: u64,
    /// The release accepted with that sequence.
    pub last_release: Option<ReleaseId>,
    /// Highest gate sequence accepted.
    pub last_gate_sequence: u64,
    /// Highest command sequence accepted.
    pub last_command_sequence: u64,
    /// Boots into the trial slot so far.
    pub trial_boots: u32,
    /// When the running health check must have answered.
    pub health_deadline: Option<u64>,
    /// Releases not to retry automatically.
    pub given_up: Vec<ReleaseId>,
    /// Since when the inhibitor has held back the current step.
    pub inhibited_since: Option<u64>,
    /// Cancel as soon as the running install finishes.
    pub cancel_requested: bool,
    /// A reboot was requested to switch slots and has not happened yet:
    /// nothing else may start, since the slots are mid-switch.
    #[serde(default)]
    pub reboot_pending: bool,
    /// The trust chain the device last rotated along, re-verified from
    /// the shipped root at every start (see [`super::Agent::new`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_chain: Option<TrustChain>,
    /// Manifests of the committed release and of the one committed
    /// before it: what the chunk store keeps after a commit (see
    /// [`AgentState::keep_manifests`]). Absent from states written
    /// before they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed_manifests: Vec<ManifestId>,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            phase: UpdateState::Idle,
            failure: None,
            held: None,
            next: None,
            slot: None,
            slot_before: None,
            target_slot: None,
            installed_version: None,
            installed_release: None,
            previous: None,
            last_release_sequence: 0,
            last_release: None,
            last_gate_sequence: 0,
            last_command_sequence: 0,
            trial_boots: 0,
            health_deadline: None,
            given_up: Vec::new(),
            inhibited_since: None,
            cancel_requested: false,
            reboot_pending: false,
            trust_chain: None,
            installed_manifests: Vec::new(),
        }
    }
}

impl Message for AgentState {
    const KIND: Kind = Kind::LocalState;
}

impl AgentState {
    /// The release the current phase refers to.
    pub fn target(&self) -> Option<ReleaseId> {
        self.held.as_ref().map(|h| h.release_id)
    }

    /// Records `manifest` as committed, keeping the one before it.
    pub(crate) fn committed_manifest(&mut self, manifest: ManifestId) {
        self.installed_manifests.retain(|m| *m != manifest);
        self.installed_manifests.insert(0, manifest);
        self.installed_manifests.truncate(2);
    }

    /// What the chunk store must keep: the committed release (peers fetch
    /// it from this device, and the next release's unchanged chunks come
    /// from it), the one before it (a delta back to it is free too), and
    /// any release waiting to be taken up. Everything else, such as a
    /// release rolled back or prefetched and never opened, may go.
    pub fn keep_manifests(&self) -> Vec<ManifestId> {
        let mut keep = self.installed_manifests.clone();
        for h in [&self.held, &self.next].into_iter().flatten() {
            if !keep.contains(&h.release.manifest_id) {
                keep.push(h.release.manifest_id);
            }
        }
        keep
    }

    /// Remembers a release as given up, keeping the list bounded.
    pub(crate) fn give_up(&mut self, id: ReleaseId) {
        if !self.given_up.contains(&id) {
            self.given_up.push(id);
        }
        if self.given_up.len() > MAX_GIVEN_UP {
            let excess = self.given_up.len() - MAX_GIVEN_UP;
            self.given_up.drain(..excess);
        }
    }

    /// Whether the phase is a resting one: no step of an update under way.
    pub fn at_rest(&self) -> bool {
        matches!(
            self.phase,
            UpdateState::Idle
                | UpdateState::Committed
                | UpdateState::RolledBack
                | UpdateState::Failed
        )
    }
}
