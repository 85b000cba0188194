//! The staged-rollout planner: a sans-IO state machine that opens a
//! release to a fleet wave by wave, and stops on its own when a wave goes
//! wrong.
//!
//! It never touches a socket, a clock or a key. The driver feeds it the
//! fleet ([`Planner::handle_device`]), device reports
//! ([`Planner::handle_report`]), operator commands
//! ([`Planner::handle_command`]) and wake-ups ([`Planner::handle_timeout`]
//! at [`Planner::poll_timeout`]); it drains [`Planner::poll_output`],
//! signs each [`PlannerOutput::PublishGate`] with the online `rollout` key
//! and publishes it retained. The same code runs in the broker and in
//! virtual-time tests.
//!
//! # Time
//!
//! Every `now` is **seconds since the Unix epoch**, wall-clock time: gates
//! carry absolute expiries and a planner restored after a restart must
//! agree with the gates it issued before. A `now` lower than one already
//! seen is treated as the one already seen, so a clock stepping back
//! cannot reopen a soak or un-expire a report timeout.
//!
//! # Policy
//!
//! - **Who is eligible.** Devices the registry reports whose `compatible`
//!   matches the release. Devices decide for themselves from the gate
//!   (`eligible`: in a target group, or bucket below the share), so the
//!   planner only ever chooses a share and the groups.
//! - **Start.** The first [`Planner::handle_timeout`] at or after
//!   `not_before` starts the first wave; registering devices never does,
//!   so the first wave is sized on the whole fleet the driver fed in.
//! - **Waves.** The explicit groups go first as wave 0 (share 0, groups
//!   listed in the gate). Then each percent wave `k` opens the share to
//!   the bucket of the `ceil(pct_k × M)`-th eligible device outside the
//!   groups, plus one, where `M` is the number of such devices; every wave
//!   but the last adds at least one device, and 100 % is the full share so
//!   late-joining devices are included. While a wave runs, its goal grows
//!   with the fleet.
//! - **Advancing.** A wave hands over when its whole share is issued, its
//!   succeeded devices reach `success_threshold_pct` of its targeted
//!   devices, and `soak_secs` have passed since it started. A wave with no
//!   devices at all is skipped at once if the fleet is not empty, and
//!   holds while it is (an empty registry must not open the whole fleet).
//! - **Success is a commit.** For install-and-activate only a
//!   health-confirmed [`UpdateState::Committed`] for this release counts
//!   as success; `Activated` is "awaiting health". A download-only or
//!   install-only rollout succeeds at `Downloaded` / `Installed`.
//! - **Halting.** When the failures (failed or rolled back) of any started
//!   wave reach `error_threshold_pct` of its targeted devices, the rollout
//!   halts: the share is frozen (the gate stays as it is and is still
//!   re-signed) and nothing advances. `resume` after a halt accepts the
//!   failures seen so far; only further ones count toward a new halt. A
//!   completed rollout no longer halts; its status still shows late
//!   failures.
//! - **Every site in the first wave.** When the first percent wave
//!   starts, each site (as devices' statuses name it) whose eligible
//!   devices all lie above the wave's share gets its lowest-bucket device
//!   named in the gate and targeted by that wave, up to [`MAX_NAMED`]
//!   sites. A site with no device in the first wave had all its devices
//!   start together later, with nothing on their LAN, and pulled 2-3
//!   copies over its uplink. Named devices count toward that wave and are
//!   not throttled by `max_parallel`.
//! - **Prefetch** (`prefetch`, off by default). Once a running wave has
//!   its whole share and `success_threshold_pct` of its devices got past
//!   downloading, the gate's `prefetch_bp` opens the next percent wave's
//!   share to downloads only, so that wave's devices hold the bundle
//!   when it opens and only install. Prefetching devices are
//!   not targeted: they hold no `max_parallel` slot and count toward no
//!   wave until their own opens (their reports are kept, so a device that
//!   already downloaded counts as downloading, not silent). A halted,
//!   paused or aborted rollout prefetches nobody new.
//! - **Operator commands.** `pause` freezes the share; `resume` continues;
//!   `abort` issues a gate with action `Stop`, so devices that have not
//!   installed yet stop, and is final. `rollback` aborts and also lists the
//!   devices that activated or committed this release, for the driver to
//!   send each a signed rollback command.
//! - **`max_parallel`.** Targeted devices that have not finished (not
//!   succeeded, failed or rolled back, and not silent past the report
//!   timeout) never exceed it: a wave's share grows in steps as devices
//!   finish. Groups are listed whole in the gate, so it cannot throttle
//!   the group wave.
//! - **Not reporting.** A targeted device with no report for this release
//!   `report_timeout_secs` after it was targeted. It counts toward the
//!   wave's targeted devices (so a silent fleet does not pass the success
//!   threshold) but no longer holds a `max_parallel` slot. A device gone
//!   for good leaves every count through
//!   [`Planner::handle_device_removed`].
//! - **Reports.** Each device counts once, by its latest report for this
//!   release, ordered by the report counter (which survives reboots;
//!   device clocks may not). Reports about other releases, older and
//!   repeated reports are ignored.
//! - **Gate freshness.** Each gate expires `gate_lifetime_secs` after it is
//!   issued and is re-issued with a higher sequence at half its lifetime,
//!   in every state but aborted.
//! - **Sequences.** Strictly increasing from `first_sequence`, for every
//!   gate, and continued across a snapshot and restore. Devices keep one
//!   high-water mark per `rollout` key, so the driver must give a new
//!   rollout a `first_sequence` above every gate that key already signed.
//!
//! # Persistence
//!
//! [`Planner::snapshot`] encodes the whole state through the protocol
//! codec (undelivered outputs included); [`Planner::restore`] rebuilds a
//! planner that takes the same decisions. Drain the outputs, persist a
//! snapshot, and only then sign and publish; on start-up, restore and
//! re-publish [`Planner::current_gate`] (the embedded MQTT broker keeps no
//! retained messages across restarts anyway). A crash can then only make
//! the driver publish the same gate again, never a different gate under a
//! sequence already used.

mod parse;
mod persist;
mod plan;
mod status;
#[cfg(test)]
mod tests;
mod wave;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use meshota_protocol::{
    Action, ByteSplit, Compatible, DeviceId, Group, ReleaseId, RolloutGate, RolloutId, SiteId,
    UpdateState,
};
use serde::{Deserialize, Serialize};

pub use parse::{parse_duration, parse_groups, parse_percent, parse_time, parse_waves, ParseError};
pub use persist::RestoreError;
pub use status::{RolloutState, RolloutStatus, WaveCounts, WaveStatus};
pub use wave::WaveKind;

use wave::{Histogram, Tally, Wave};

/// Most devices a first wave names (see `RolloutGate::devices`); fewer
/// when their names would not fit in a gate.
pub const MAX_NAMED: usize = 64;

/// Default gate lifetime: a day, re-signed every twelve hours.
pub const DEFAULT_GATE_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// Default time after which a silent targeted device is "not reporting".
pub const DEFAULT_REPORT_TIMEOUT_SECS: u64 = 10 * 60;

/// What an operator asked for, checked by [`RolloutSpec::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// The release to roll out.
    pub release_id: ReleaseId,
    /// The device class of the release; other devices are not eligible.
    pub compatible: Compatible,
    /// Cumulative percents of the eligible fleet, strictly increasing,
    /// each in `1..=100` (`--waves 1,10,50,100`).
    pub waves: Vec<u8>,
    /// Explicit target groups, rolled out first as their own wave.
    pub groups: Vec<Group>,
    /// Percent of a wave that must have succeeded before the next starts.
    pub success_threshold_pct: u8,
    /// Percent of a wave whose failure halts the rollout.
    pub error_threshold_pct: u8,
    /// Minimum seconds a wave runs before the next starts.
    pub soak_secs: u64,
    /// What eligible devices do; never `Stop`.
    pub action: Action,
    /// Nothing starts before this time (seconds since the epoch).
    pub not_before: u64,
    /// At most this many targeted devices unfinished at once.
    pub max_parallel: Option<u32>,
    /// Seconds from issuing a gate to its expiry.
    pub gate_lifetime_secs: u64,
    /// Seconds after targeting a silent device counts as not reporting.
    pub report_timeout_secs: u64,
    /// The sequence of the first gate; above all this key signed before.
    pub first_sequence: u64,
    /// Once a wave has fetched, the devices of the next one download the
    /// release (and only download it) while it installs and soaks, so
    /// that wave installs at once when it opens. A halt or pause
    /// withdraws it; downloads under way finish. Absent from older
    /// snapshots, where it is off.
    #[serde(default)]
    pub prefetch: bool,
}

impl RolloutSpec {
    /// A spec with the defaults of `meshota rollout create`: waves
    /// 1, 10, 50, 100 %, success 95 %, errors 5 %, soak 10 min,
    /// install-and-activate, gates of 24 h, report timeout 10 min.
    pub fn new(release_id: ReleaseId, compatible: Compatible, first_sequence: u64) -> Self {
        Self {
            release_id,
            compatible,
            waves: vec![1, 10, 50, 100],
            groups: Vec::new(),
            success_threshold_pct: 95,
            error_threshold_pct: 5,
            soak_secs: 10 * 60,
            action: Action::InstallAndActivate,
            not_before: 0,
            max_parallel: None,
            gate_lifetime_secs: DEFAULT_GATE_LIFETIME_SECS,
            report_timeout_secs: DEFAULT_REPORT_TIMEOUT_SECS,
            first_sequence,
            prefetch: false,
        }
    }

    /// Checks the spec.
    ///
    /// # Errors
    /// The first [`PlanError`] found.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.waves.is_empty() {
            return Err(PlanError::NoWaves);
        }
        let mut prev = 0u8;
        for &w in &self.waves {
            if !(1..=100).contains(&w) {
                return Err(PlanError::WaveOutOfRange(w));
            }
            if w <= prev {
                return Err(PlanError::WavesNotIncreasing { prev, next: w });
            }
            prev = w;
        }
        if !(1..=100).contains(&self.success_threshold_pct) {
            return Err(PlanError::SuccessThresholdOutOfRange(
                self.success_threshold_pct,
            ));
        }
        if !(1..=100).contains(&self.error_threshold_pct) {
            return Err(PlanError::ErrorThresholdOutOfRange(
                self.error_threshold_pct,
            ));
        }
        if self.action == Action::Stop {
            return Err(PlanError::StopAction);
        }
        if self.max_parallel == Some(0) {
            return Err(PlanError::ZeroMaxParallel);
        }
        if self.gate_lifetime_secs < 2 {
            return Err(PlanError::GateLifetimeTooShort(self.gate_lifetime_secs));
        }
        if self.first_sequence == 0 {
            return Err(PlanError::ZeroSequence);
        }
        let mut seen = BTreeSet::new();
        for g in &self.groups {
            if !seen.insert(g) {
                return Err(PlanError::DuplicateGroup(g.clone()));
            }
        }
        // Every gate lists all the groups; a gate too large to encode
        // could never be signed, so refuse the spec now, not mid-rollout.
        let widest = RolloutGate {
            release_id: self.release_id,
            share_bp: meshota_protocol::release::FULL_SHARE,
            groups: self.groups.clone(),
            action: self.action,
            not_before: u64::MAX,
            expires_at: u64::MAX,
            sequence: u64::MAX,
            devices: Vec::new(),
            prefetch_bp: meshota_protocol::release::FULL_SHARE,
        };
        if meshota_protocol::codec::encode(&widest).is_err() {
            return Err(PlanError::TooManyGroups(self.groups.len()));
        }
        Ok(())
    }
}

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `--waves` was empty.
    #[error("a rollout needs at least one wave")]
    NoWaves,
    /// A wave percent outside `1..=100`.
    #[error("wave {0}% is out of range: each wave is a cumulative percent in 1..=100")]
    WaveOutOfRange(u8),
    /// Waves are cumulative, so each must be above the one before.
    #[error("waves must be strictly increasing cumulative percents, but {next}% follows {prev}%")]
    WavesNotIncreasing {
        /// The wave before.
        prev: u8,
        /// The offending wave.
        next: u8,
    },
    /// `--success-threshold` outside `1..=100`.
    #[error("success threshold {0}% is out of range 1..=100")]
    SuccessThresholdOutOfRange(u8),
    /// `--error-threshold` outside `1..=100`.
    #[error("error threshold {0}% is out of range 1..=100")]
    ErrorThresholdOutOfRange(u8),
    /// `stop` is what abort publishes, not something to roll out.
    #[error("action `stop` cannot be rolled out; use `abort` to stop a rollout")]
    StopAction,
    /// `--max-parallel 0` would never target anyone.
    #[error("max-parallel must be at least 1")]
    ZeroMaxParallel,
    /// A gate must outlive its re-signing at half its lifetime.
    #[error("gate lifetime of {0} s is too short (at least 2 s)")]
    GateLifetimeTooShort(u64),
    /// Devices refuse a gate sequence not above the last seen, which
    /// starts at 0.
    #[error("the first gate sequence must be at least 1")]
    ZeroSequence,
    /// A group listed twice.
    #[error("group {0} is listed twice")]
    DuplicateGroup(Group),
    /// The groups would not fit in a gate.
    #[error("{0} groups do not fit in a rollout gate; use fewer or shorter group names")]
    TooManyGroups(usize),
}

/// A device as the fleet registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its id.
    pub id: DeviceId,
    /// The groups it belongs to.
    pub groups: Vec<Group>,
    /// Its device class.
    pub compatible: Compatible,
    /// Its site, as its latest status said.
    pub site: Option<SiteId>,
}

/// A verified report from a device, reduced to what the planner uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// The release the state refers to (`Status::target`, or the release
    /// of an event).
    pub release: Option<ReleaseId>,
    /// The device's update state.
    pub state: UpdateState,
    /// Cumulative bytes of this release's download by source, if the
    /// report carries them (`Event::Progress`).
    pub bytes: Option<ByteSplit>,
    /// The report's counter (`Report::counter`): orders one device's
    /// reports. Device clocks jump across reboots; the counter does not.
    pub counter: u64,
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// It is the device's latest report for this release and is counted.
    Accepted,
    /// About another release (or none); ignored.
    OtherRelease,
    /// Not an eligible device the registry told us about; ignored.
    UnknownDevice,
    /// Older than a report already counted; ignored.
    Stale,
    /// The same counter as the report already counted; ignored.
    Duplicate,
}

/// An operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlannerCommand {
    /// Freeze the share.
    Pause,
    /// Continue after a pause or a halt.
    Resume,
    /// Stop every device that has not installed yet; final.
    Abort,
    /// Abort, and list the devices to send a rollback command to.
    Rollback,
}

impl fmt::Display for PlannerCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlannerCommand::Pause => "pause",
            PlannerCommand::Resume => "resume",
            PlannerCommand::Abort => "abort",
            PlannerCommand::Rollback => "rollback",
        })
    }
}

/// Why a command was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command makes no sense in the rollout's state.
    #[error("cannot {command} a rollout that is {state}")]
    NotAllowed {
        /// The command.
        command: PlannerCommand,
        /// The state it was refused in.
        state: RolloutState,
    },
}

/// Why the rollout halted on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HaltReason {
    /// A wave's failures reached the error threshold.
    ErrorThreshold {
        /// The wave.
        wave: usize,
        /// Failed or rolled-back devices counted (beyond acknowledged ones).
        failures: u32,
        /// Devices the wave targets.
        targeted: u32,
        /// The threshold, in percent.
        threshold_pct: u8,
    },
}

impl fmt::Display for HaltReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaltReason::ErrorThreshold {
                wave,
                failures,
                targeted,
                threshold_pct,
            } => write!(
                f,
                "wave {wave}: {failures} of {targeted} devices failed or rolled back, \
                 reaching the {threshold_pct}% error threshold"
            ),
        }
    }
}

/// Something the driver acts on or reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlannerOutput {
    /// Sign with the `rollout` key and publish retained with the release.
    PublishGate(RolloutGate),
    /// A wave started.
    WaveStarted {
        /// Its index in [`RolloutStatus::waves`].
        wave: usize,
    },
    /// The rollout halted on its own.
    Halted {
        /// Why.
        reason: HaltReason,
    },
    /// The last wave met its thresholds and soak.
    Completed,
    /// Send each of these devices a signed `CommandAction::Rollback`.
    Rollback {
        /// Devices whose latest state is activated or committed.
        devices: Vec<DeviceId>,
    },
}

/// A device the planner knows; persisted.
///
/// One of these per device dominates a snapshot, and snapshots must fit
/// the codec's `LocalState` limit, hence the one-letter field names on
/// the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeviceRec {
    /// In one of the spec's groups (decided when registered).
    #[serde(rename = "g")]
    in_group: bool,
    #[serde(rename = "b")]
    bucket: u16,
    /// The wave that targeted it, once targeted; never changes after.
    #[serde(rename = "w")]
    wave: Option<usize>,
    #[serde(rename = "t")]
    targeted_at: Option<u64>,
    /// Counter and state of its latest report for this release.
    #[serde(rename = "l")]
    last: Option<(u64, UpdateState)>,
    /// Latest cumulative bytes for this release.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    bytes: Option<ByteSplit>,
    /// Its site, for [`Core::named`]. Not in snapshots, which are capped
    /// at 1 MiB (about 42 bytes a device); statuses tell it again.
    #[serde(skip)]
    site: Option<SiteId>,
}

/// Everything a restart must keep; the snapshot is exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Core {
    id: RolloutId,
    spec: RolloutSpec,
    state: RolloutState,
    created_at: u64,
    /// The latest `now` seen.
    now: u64,
    waves: Vec<Wave>,
    /// The wave running (or frozen) now.
    current: Option<usize>,
    /// The last gate issued.
    gate: Option<RolloutGate>,
    next_sequence: u64,
    /// When the live gate is re-issued.
    resign_at: u64,
    halt: Option<HaltReason>,
    devices: BTreeMap<DeviceId, DeviceRec>,
    outputs: VecDeque<PlannerOutput>,
    /// Devices the first percent wave took by name, one for each site its
    /// share left out, listed in every gate (see `RolloutGate::devices`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    named: Vec<DeviceId>,
}

/// Indexes over [`Core`], rebuilt on restore and never persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Derived {
    /// Eligible devices outside the groups, by bucket.
    hist: Histogram,
    /// Those of them not targeted yet, in bucket order.
    untargeted: BTreeSet<(u16, DeviceId)>,
    /// Targeted devices with no report yet, by the time they turn silent.
    silent: BTreeSet<(u64, DeviceId)>,
    /// Per wave, targeted devices by phase.
    tallies: Vec<Tally>,
    /// Sum of the devices' latest byte splits.
    bytes: ByteSplit,
}

/// The staged-rollout planner for one release. See the module docs for
/// the policy.
///
/// Methods come in four groups, as in quinn-proto: getters (`status`,
/// `state`, `current_gate` …); inputs, each taking `now` (`handle_device`,
/// `handle_device_removed`, `handle_report`, `handle_command`,
/// `handle_timeout`); outputs (`poll_output`, `poll_timeout`); and
/// persistence (`snapshot`, `restore`). After any input, drain
/// `poll_output`, persist a snapshot, act on the outputs, then sleep until
/// `poll_timeout`.
///
/// ```
/// use meshota_broker::rollout::{DeviceInfo, Planner, PlannerOutput, RolloutSpec};
/// use meshota_protocol::{Compatible, DeviceId, ReleaseId, RolloutId};
///
/// let compatible = Compatible::new("rpi4")?;
/// let spec = RolloutSpec::new(ReleaseId::digest(b"release"), compatible.clone(), 1);
/// let now = 1_800_000_000;
/// let mut planner = Planner::new(RolloutId::digest(b"rollout"), spec, now)?;
/// for i in 0..100 {
///     let id = DeviceId::new(format!("dev-{i}"))?;
///     planner.handle_device(DeviceInfo { id, groups: vec![], compatible: compatible.clone(), site: None }, now);
/// }
/// let wake = planner.poll_timeout().unwrap_or(now);
/// planner.handle_timeout(wake);
/// while let Some(out) = planner.poll_output() {
///     if let PlannerOutput::PublishGate(gate) = out {
///         // Sign with the rollout key, publish retained with the release.
///         assert_eq!(gate.sequence, 1);
///     }
/// }
/// let saved = planner.snapshot()?;
/// let restored = Planner::restore(&saved)?;
/// assert_eq!(restored.status(wake), planner.status(wake));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Planner {
    core: Core,
    derived: Derived,
}

impl Planner {
    /// A rollout of `spec`, created at `now`. It starts at the first
    /// [`Planner::handle_timeout`] at or after `spec.not_before`, so the
    /// driver can feed the fleet first.
    ///
    /// # Errors
    /// [`PlanError`] when the spec is invalid.
    pub fn new(id: RolloutId, spec: RolloutSpec, now: u64) -> Result<Self, PlanError> {
        spec.validate()?;
        let mut waves = Vec::with_capacity(spec.waves.len() + 1);
        if !spec.groups.is_empty() {
            waves.push(Wave::new(WaveKind::Groups));
        }
        waves.extend(spec.waves.iter().map(|&p| Wave::new(WaveKind::Percent(p))));
        let core = Core {
            id,
            next_sequence: spec.first_sequence,
            spec,
            state: RolloutState::Scheduled,
            created_at: now,
            now,
            waves,
            current: None,
            gate: None,
            resign_at: 0,
            halt: None,
            devices: BTreeMap::new(),
            outputs: VecDeque::new(),
            named: Vec::new(),
        };
        let mut p = Self {
            core,
            derived: Derived::default(),
        };
        p.rebuild();
        Ok(p)
    }

    /// The rollout id.
    pub fn id(&self) -> RolloutId {
        self.core.id
    }

    /// The spec it runs.
    pub fn spec(&self) -> &RolloutSpec {
        &self.core.spec
    }

    /// Its state.
    pub fn state(&self) -> RolloutState {
        self.core.state
    }

    /// The last gate issued, for re-publishing after the MQTT broker lost
    /// its retained messages (ed25519 is deterministic, so re-signing it
    /// gives the same bytes).
    pub fn current_gate(&self) -> Option<&RolloutGate> {
        self.core.gate.as_ref()
    }

    /// The sequence the next gate will carry; the driver's high-water
    /// mark for the `rollout` key must stay at or above this minus one.
    pub fn next_sequence(&self) -> u64 {
        self.core.next_sequence
    }

    /// Why the rollout halted, while halted.
    pub fn halt_reason(&self) -> Option<&HaltReason> {
        self.core.halt.as_ref()
    }

    /// The next output, if any. Drain after every `handle_*`.
    pub fn poll_output(&mut self) -> Option<PlannerOutput> {
        self.core.outputs.pop_front()
    }
}
