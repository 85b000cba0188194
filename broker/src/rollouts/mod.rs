//! The rollout driver: the I/O around the sans-IO [`crate::rollout`]
//! planner.
//!
//! [`Rollouts`] owns one [`Planner`] per rollout. It feeds them the fleet
//! from the registry and every report the control plane accepted, wakes
//! them at their `poll_timeout`, persists each planner's snapshot, and
//! only then signs what they decided with the online `rollout` key and
//! publishes it: gates as retained announcements (with the stored signed
//! release and the origin's libp2p and HTTP addresses as unsigned hints),
//! rollbacks as signed commands on each device's cmd topic.
//!
//! # Policy
//!
//! - **One live rollout per announce topic.** A topic holds one retained
//!   announcement, so a new rollout of the same fleet, device class and
//!   channel is refused while another is scheduled, running, paused or
//!   halted; after one completed or was aborted, the new one takes over
//!   (the old one is *retired*: it keeps its status and publishes no more).
//! - **Gate sequences.** Devices keep one high-water mark per `rollout`
//!   key, so a new rollout starts above every gate this server remembers
//!   issuing, and above `now × 1000`: a data directory restored from an
//!   old backup (or lost) still issues gates the fleet accepts.
//! - **Command sequences** follow the same rule, in their own counter.
//! - **Crash safety.** A round is: feed inputs, drain outputs, write the
//!   snapshots and flush, then publish. A crash between flush and publish
//!   re-publishes the same gate on the next start (the planner's
//!   `current_gate`); it never issues a different gate under a used
//!   sequence.

mod driver;
mod run;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use meshota_protocol::{Action, Group, ReleaseId, RolloutId};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::registry::{Registry, RegistryError};
use crate::rollout::{CommandError, PlanError, PlannerCommand, RolloutState, RolloutStatus};

pub use run::{run, Hints};

use driver::Inner;

/// What `POST /v1/rollouts` and `meshota rollout create` ask for. Omitted
/// fields take the defaults of [`crate::rollout::RolloutSpec::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// The published release to roll out.
    pub release: ReleaseId,
    /// Cumulative percents of the eligible fleet.
    #[serde(default)]
    pub waves: Option<Vec<u8>>,
    /// Groups rolled out first, as their own wave.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Percent of a wave that must succeed before the next starts.
    #[serde(default)]
    pub success_threshold: Option<u8>,
    /// Percent of a wave whose failure halts the rollout.
    #[serde(default)]
    pub error_threshold: Option<u8>,
    /// Minimum seconds each wave runs.
    #[serde(default)]
    pub soak_secs: Option<u64>,
    /// What eligible devices do.
    #[serde(default)]
    pub action: Option<Action>,
    /// Nothing starts before this time (seconds since the epoch).
    #[serde(default)]
    pub not_before: Option<u64>,
    /// At most this many targeted devices unfinished at once.
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Seconds a gate lives (re-signed at half of it).
    #[serde(default)]
    pub gate_lifetime_secs: Option<u64>,
    /// Seconds after which a silent targeted device is not reporting.
    #[serde(default)]
    pub report_timeout_secs: Option<u64>,
    /// The next wave downloads while the current one runs.
    #[serde(default)]
    pub prefetch: bool,
}

impl CreateRollout {
    /// A request for `release` with every optional field left to the
    /// planner's defaults; set the fields you need with struct update
    /// syntax (`CreateRollout { soak_secs: Some(0), ..CreateRollout::new(id) }`).
    pub fn new(release: ReleaseId) -> Self {
        Self {
            release,
            waves: None,
            groups: Vec::new(),
            success_threshold: None,
            error_threshold: None,
            soak_secs: None,
            action: None,
            not_before: None,
            max_parallel: None,
            gate_lifetime_secs: None,
            report_timeout_secs: None,
            prefetch: false,
        }
    }
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    /// The planner's status.
    #[serde(flatten)]
    pub status: RolloutStatus,
    /// The announce topic it publishes on.
    pub topic: String,
    /// Superseded by a later rollout on the same topic.
    pub retired: bool,
}

/// Why a rollout request failed; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutsError {
    /// No such release was published here.
    #[error("release {0} is not published here; publish it first with `meshota release publish`")]
    UnknownRelease(ReleaseId),
    /// The release record has no signed document (published by an older
    /// server version).
    #[error("release {0} has no stored signed release; publish its bundle again")]
    NoSignedRelease(ReleaseId),
    /// No such rollout.
    #[error("no rollout {0}")]
    UnknownRollout(String),
    /// Another rollout is live on the same announce topic.
    #[error("rollout {other} of release {release} is {state} on {topic}; abort it (or wait for it to complete) first")]
    Conflict {
        /// The live rollout.
        other: RolloutId,
        /// Its release.
        release: ReleaseId,
        /// Its state.
        state: RolloutState,
        /// The shared topic.
        topic: String,
    },
    /// The server has no `rollout` key, so it cannot sign gates.
    #[error("this server has no rollout key; start meshota-broker with --rollout-key")]
    NoRolloutKey,
    /// The spec is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The command makes no sense now.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A stored rollout could not be restored.
    #[error("stored rollout {id}: {reason}")]
    Corrupt {
        /// Which rollout.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl RolloutsError {
    /// Whether the caller is at fault (a 4xx), rather than the server.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            RolloutsError::Registry(_) | RolloutsError::Corrupt { .. }
        )
    }
}

/// The rollout service. Cheap to clone; every clone drives the same
/// planners.
#[derive(Clone)]
pub struct Rollouts {
    inner: Arc<Mutex<Inner>>,
    wake: Arc<Notify>,
    signing: bool,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts").finish_non_exhaustive()
    }
}

impl Rollouts {
    /// Restores every stored rollout and feeds them the registry's fleet.
    /// `signing` says whether a `rollout` key is configured (without one,
    /// rollouts cannot be created).
    ///
    /// # Errors
    /// [`RolloutsError::Corrupt`] or [`RolloutsError::Registry`].
    pub fn open(
        registry: Arc<Registry>,
        fleet: meshota_protocol::FleetId,
        signing: bool,
        now: u64,
    ) -> Result<Self, RolloutsError> {
        let inner = Inner::open(registry, fleet, now)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            wake: Arc::new(Notify::new()),
            signing,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves planners that are still
        // consistent (each handle_* completes or unwinds before mutating
        // shared indexes), so keep serving rather than poison every call.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a rollout; it starts at the driver's next round.
    ///
    /// # Errors
    /// [`RolloutsError`].
    pub fn create(&self, req: CreateRollout, now: u64) -> Result<RolloutView, RolloutsError> {
        if !self.signing {
            return Err(RolloutsError::NoRolloutKey);
        }
        let view = self.lock().create(req, now)?;
        self.wake.notify_one();
        Ok(view)
    }

    /// Applies an operator command.
    ///
    /// # Errors
    /// [`RolloutsError::UnknownRollout`] or [`RolloutsError::Command`].
    pub fn command(
        &self,
        id: &str,
        cmd: PlannerCommand,
        now: u64,
    ) -> Result<RolloutView, RolloutsError> {
        let view = self.lock().command(id, cmd, now)?;
        self.wake.notify_one();
        Ok(view)
    }

    /// One rollout, by id or unique id prefix.
    ///
    /// # Errors
    /// [`RolloutsError::UnknownRollout`].
    pub fn get(&self, id: &str, now: u64) -> Result<RolloutView, RolloutsError> {
        self.lock().view_of(id, now)
    }

    /// Every rollout, newest first.
    pub fn list(&self, now: u64) -> Vec<RolloutView> {
        self.lock().views(now)
    }

    /// Counts of rollouts by state, for `/metrics`.
    pub fn states(&self) -> BTreeMap<&'static str, u64> {
        let views = self.lock().views_light();
        let mut out = BTreeMap::new();
        for s in [
            RolloutState::Scheduled,
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::Halted,
            RolloutState::Aborted,
            RolloutState::Completed,
        ] {
            out.insert(s.as_str(), 0);
        }
        for s in views {
            *out.entry(s.as_str()).or_insert(0) += 1;
        }
        out
    }
}
