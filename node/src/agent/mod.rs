//! The device agent's decision core, sans-IO.
//!
//! [`Agent`] decides what a device does with announcements, commands and
//! the results of the work it asked for; it never touches a disk, socket,
//! process or clock. Inputs are `handle_*(…, now)` with `now` in seconds
//! since the Unix epoch; work comes out of [`Agent::poll_action`] in order,
//! and the driver calls [`Agent::handle_timeout`] at [`Agent::poll_timeout`].
//!
//! # The update state machine
//!
//! ```text
//! Idle → Downloading → Downloaded → Installing → Installed → Activated → Committed
//!            │              │            │            │           └──→ RolledBack
//!            └──────────────┴────────────┴────────────┴──→ Failed (old slot still active)
//! ```
//!
//! # Durability
//!
//! Every change of persisted state is followed by [`AgentAction::Persist`];
//! the driver writes and flushes it before executing anything queued after
//! it. On start the driver reads the real slot state from the install
//! backend and passes it to [`Agent::handle_boot`]: **the slots are the
//! source of truth**, the persisted state only says what was intended.
//! A crash at any point therefore ends committed or rolled back:
//! - before activation the old slot is untouched, and the step is re-run;
//! - on trial, each boot counts, and past `max_trial_boots` or a missed
//!   health deadline the agent rolls back;
//! - success ([`meshota_protocol::UpdateState::Committed`]) is only reached after a health
//!   check passed on the new slot.

mod boot;
mod core;
pub mod driver;
pub mod mqtt;
pub mod outbox;
pub mod persist;
pub mod state;
mod trust;
pub mod window;

#[cfg(test)]
mod tests;

use meshota_protocol::{
    ByteSplit, Compatible, DeviceId, FleetId, Group, ManifestId, ReleaseId, ReportBody, SiteId,
    TrustRoot,
};
use serde::{Deserialize, Serialize};

pub use self::core::Agent;
pub use state::{AgentState, Held};
pub use window::{Window, Windows};

/// What the device is, and the policy knobs of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This device.
    pub device: DeviceId,
    /// Its fleet (commands for other fleets are refused).
    pub fleet: FleetId,
    /// Its site, reported in status.
    pub site: SiteId,
    /// Rollout groups it belongs to.
    pub groups: Vec<Group>,
    /// Free-form tags reported in status.
    pub tags: Vec<String>,
    /// Its device class.
    pub compatible: Compatible,
    /// The trust root announcements and commands are checked against.
    pub root: TrustRoot,
    /// Seconds the health check may take before the update is rolled back.
    pub health_timeout: u64,
    /// Boots into a trial slot allowed before an automatic rollback.
    pub max_trial_boots: u32,
    /// When disruptive steps (install, activate) may start.
    pub windows: Windows,
    /// Whether an inhibitor is configured (the driver answers
    /// [`AgentAction::CheckInhibitor`]).
    pub inhibitor: bool,
    /// First re-check delay after an inhibited answer; doubles each time.
    pub inhibit_backoff_min: u64,
    /// Largest re-check delay.
    pub inhibit_backoff_max: u64,
    /// How long an inhibitor may hold back one step before the agent stops
    /// waiting; see [`InhibitTimeout`].
    pub max_inhibit: u64,
    /// What happens when `max_inhibit` is exceeded.
    pub on_inhibit_timeout: InhibitTimeout,
    /// Fetch attempts before giving up on a release.
    pub max_fetch_attempts: u32,
    /// First delay before retrying a failed fetch; doubles each time.
    pub fetch_backoff_min: u64,
    /// Largest fetch retry delay.
    pub fetch_backoff_max: u64,
    /// Minimum seconds between progress events.
    pub progress_interval: u64,
    /// This device's libp2p peer id, reported in its status so the
    /// registry can map devices onto the mesh.
    pub peer_id: Option<String>,
}

impl AgentConfig {
    /// A configuration with the default policy.
    pub fn new(
        device: DeviceId,
        fleet: FleetId,
        site: SiteId,
        compatible: Compatible,
        root: TrustRoot,
    ) -> Self {
        Self {
            device,
            fleet,
            site,
            groups: Vec::new(),
            tags: Vec::new(),
            compatible,
            root,
            health_timeout: 300,
            max_trial_boots: 3,
            windows: Windows::default(),
            inhibitor: false,
            inhibit_backoff_min: 30,
            inhibit_backoff_max: 900,
            max_inhibit: 86_400,
            on_inhibit_timeout: InhibitTimeout::Fail,
            max_fetch_attempts: 8,
            fetch_backoff_min: 10,
            fetch_backoff_max: 600,
            progress_interval: 5,
            peer_id: None,
        }
    }
}

/// What the agent does when an inhibitor has held a step back for longer
/// than `max_inhibit`. Either way an `E_INHIBIT_TIMEOUT` error is reported,
/// so a stuck inhibitor is visible and never wedges the device silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InhibitTimeout {
    /// Give up on the release (state `Failed`); the device stays on its
    /// current slot and takes the next release.
    #[default]
    Fail,
    /// Ignore the inhibitor and go ahead.
    Proceed,
}

/// Work for the driver, in the order it must be done.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    /// Write and flush this state before executing any later action.
    Persist(Box<AgentState>),
    /// Fetch the release's manifest and chunks into the store; answer
    /// with [`Agent::handle_fetch_progress`] and [`Agent::handle_fetch_done`].
    Fetch {
        /// The release.
        release: ReleaseId,
        /// Its manifest.
        manifest_id: ManifestId,
        /// Seeders to bootstrap from.
        bootstrap: Vec<String>,
        /// HTTP origin, if any.
        http_origin: Option<String>,
    },
    /// Stop fetching this release.
    CancelFetch {
        /// The release.
        release: ReleaseId,
    },
    /// Ask the inhibitor; answer with [`Agent::handle_inhibitor`].
    CheckInhibitor,
    /// Write the inactive slot; answer with [`Agent::handle_install_done`].
    Install {
        /// The release.
        release: ReleaseId,
        /// Its manifest.
        manifest_id: ManifestId,
    },
    /// Switch to the installed slot; answer with [`Agent::handle_activate_done`].
    Activate {
        /// The release.
        release: ReleaseId,
    },
    /// Run the health check; answer with [`Agent::handle_health_result`]
    /// before `deadline` (seconds since the epoch), or the update rolls back.
    RunHealth {
        /// The release on trial.
        release: ReleaseId,
        /// When the answer is due.
        deadline: u64,
    },
    /// Make the trial slot permanent; answer with [`Agent::handle_commit_done`].
    Commit {
        /// The release.
        release: ReleaseId,
    },
    /// Return to the previous slot; answer with [`Agent::handle_rollback_done`].
    Rollback {
        /// The release being left, if known.
        release: Option<ReleaseId>,
    },
    /// Keep only these manifests' chunks in the store (and their
    /// manifests); the rest may be removed. Failing changes nothing but
    /// disk use, so there is no answer.
    PruneStore {
        /// The manifests to keep.
        keep: Vec<ManifestId>,
    },
    /// Reboot the device (the backend needs it to switch slots).
    Reboot,
    /// Re-read retained announcements (resubscribe), for `check-now`.
    Resync,
    /// Sign with the device key and the next report counter, and publish.
    Publish(ReportBody),
}

/// Why an action did not complete, as the driver reports it.
pub type StepResult<T> = Result<T, String>;

/// Download progress as the fetcher reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProgress {
    /// Bytes so far, by source.
    pub bytes: ByteSplit,
    /// Total payload bytes.
    pub total: u64,
}
