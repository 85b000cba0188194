//! What the HTTP API, the metrics and `meshota rollout status` show.

use std::fmt;

use meshota_protocol::{ByteSplit, DeviceId, ReleaseId, RolloutId};
use serde::{Deserialize, Serialize};

use super::wave::{Phase, WaveKind};
use super::Planner;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Created, waiting for `not_before`.
    Scheduled,
    /// Opening waves.
    Running,
    /// Frozen by the operator.
    Paused,
    /// Frozen on its own: a wave reached the error threshold.
    Halted,
    /// Stopped by the operator; final.
    Aborted,
    /// Every wave met its thresholds and soak.
    Completed,
}

impl RolloutState {
    /// Stable lowercase name, as in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Scheduled => "scheduled",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        }
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Devices of one wave by where they are. Every targeted device is in
/// exactly one of the other fields, so they sum to `targeted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Devices the wave opened the release to.
    pub targeted: u32,
    /// Not started: no report yet (within the report timeout), or idle.
    pub pending: u32,
    /// Fetching, or fetched and not yet writing.
    pub downloading: u32,
    /// Writing the inactive slot, or written and not yet activated.
    pub installing: u32,
    /// Activated, waiting for the health check.
    pub awaiting_health: u32,
    /// Reached the goal; for install-and-activate, committed after a
    /// passed health check, and nothing less.
    pub succeeded: u32,
    /// Gave up; the previous slot is still active.
    pub failed: u32,
    /// Went back to the previous slot.
    pub rolled_back: u32,
    /// No report for this release within the report timeout.
    pub not_reporting: u32,
}

/// One wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// Position in the rollout, from 0.
    pub index: usize,
    /// Groups or a cumulative percent.
    pub kind: WaveKind,
    /// The share this wave grows to, in basis points.
    pub goal_bp: u16,
    /// The share issued so far, in basis points.
    pub share_bp: u16,
    /// When it started.
    pub started_at: Option<u64>,
    /// When it handed over to the next wave (or completed the rollout).
    pub done_at: Option<u64>,
    /// Earliest time it may hand over.
    pub soak_until: Option<u64>,
    /// Its devices.
    pub counts: WaveCounts,
}

/// A rollout's state, as JSON for the API and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The rollout.
    pub rollout: RolloutId,
    /// The release.
    pub release: ReleaseId,
    /// Where it is.
    pub state: RolloutState,
    /// Why it halted, while halted.
    pub halt_reason: Option<String>,
    /// The wave running or frozen.
    pub current_wave: Option<usize>,
    /// The share of the live gate, in basis points.
    pub share_bp: u16,
    /// Whether the next wave downloads ahead (`RolloutSpec::prefetch`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
    /// The live gate's prefetch share: devices below it and outside
    /// `share_bp` download and wait (see `RolloutGate::prefetch_bp`).
    #[serde(default, skip_serializing_if = "meshota_protocol::release::no_share")]
    pub prefetch_bp: u16,
    /// The sequence of the last gate issued.
    pub gate_sequence: Option<u64>,
    /// When the last gate issued expires.
    pub gate_expires_at: Option<u64>,
    /// Devices of the release's class the registry knows.
    pub eligible_devices: usize,
    /// Devices the first wave took by name, one for each site its share
    /// left out (see `RolloutGate::devices`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_devices: Vec<DeviceId>,
    /// Per wave.
    pub waves: Vec<WaveStatus>,
    /// All devices' latest download byte counts for this release, summed.
    pub bytes: ByteSplit,
    /// Of those, from peers (same site and other sites).
    pub bytes_from_peers: u64,
    /// Of those, from the origin.
    pub bytes_from_origin: u64,
}

impl Planner {
    /// The rollout's status at `now` (which decides who is not reporting).
    pub fn status(&self, now: u64) -> RolloutStatus {
        let c = &self.core;
        let now = now.max(c.now);
        let mut waves: Vec<WaveStatus> = c
            .waves
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let t = self.derived.tallies.get(index);
                let get = |p| t.map_or(0, |t| t.get(p));
                WaveStatus {
                    index,
                    kind: w.kind,
                    goal_bp: w.goal_bp,
                    share_bp: w.share_bp,
                    started_at: w.started_at,
                    done_at: w.done_at,
                    soak_until: w.started_at.map(|s| s.saturating_add(c.spec.soak_secs)),
                    counts: WaveCounts {
                        targeted: t.map_or(0, |t| t.targeted()),
                        pending: get(Phase::Unreported) + get(Phase::Idle),
                        downloading: get(Phase::Downloading),
                        installing: get(Phase::Installing),
                        awaiting_health: get(Phase::AwaitingHealth),
                        succeeded: get(Phase::Succeeded),
                        failed: get(Phase::Failed),
                        rolled_back: get(Phase::RolledBack),
                        not_reporting: 0,
                    },
                }
            })
            .collect();
        for (_, id) in self.derived.silent.iter().take_while(|(d, _)| *d <= now) {
            let wave = c.devices.get(id).and_then(|r| r.wave);
            if let Some(counts) = wave.and_then(|k| waves.get_mut(k)).map(|w| &mut w.counts) {
                counts.not_reporting += 1;
                counts.pending = counts.pending.saturating_sub(1);
            }
        }
        let bytes = self.derived.bytes;
        RolloutStatus {
            rollout: c.id,
            release: c.spec.release_id,
            state: c.state,
            halt_reason: c.halt.as_ref().map(ToString::to_string),
            current_wave: c.current,
            share_bp: c.gate.as_ref().map_or(0, |g| g.share_bp),
            prefetch: c.spec.prefetch,
            prefetch_bp: c.gate.as_ref().map_or(0, |g| g.prefetch_bp),
            gate_sequence: c.gate.as_ref().map(|g| g.sequence),
            gate_expires_at: c.gate.as_ref().map(|g| g.expires_at),
            eligible_devices: c.devices.len(),
            named_devices: c.named.clone(),
            waves,
            bytes,
            bytes_from_peers: bytes.same_site.saturating_add(bytes.other_peers),
            bytes_from_origin: bytes.origin,
        }
    }
}

fn pct(bp: u16) -> String {
    format!("{}.{:02}%", bp / 100, bp % 100)
}

/// A table for `meshota rollout status` (JSON goes through serde).
impl fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rollout {} (release {}): {}",
            self.rollout.short(),
            self.release.short(),
            self.state
        )?;
        if let Some(w) = self.current_wave {
            write!(f, ", wave {w}")?;
        }
        write!(f, ", share {}", pct(self.share_bp))?;
        if self.prefetch_bp > 0 {
            write!(f, ", downloading ahead to {}", pct(self.prefetch_bp))?;
        } else if self.prefetch {
            write!(f, ", prefetch on")?;
        }
        if let (Some(seq), Some(exp)) = (self.gate_sequence, self.gate_expires_at) {
            write!(f, ", gate #{seq} expires at {exp}")?;
        }
        writeln!(f, ", {} eligible devices", self.eligible_devices)?;
        if let Some(r) = &self.halt_reason {
            writeln!(f, "halted: {r}")?;
        }
        if !self.named_devices.is_empty() {
            writeln!(
                f,
                "{} devices named into the first wave, one for each site its share left out",
                self.named_devices.len()
            )?;
        }
        writeln!(
            f,
            "{:<5} {:<7} {:>7} {:>8} {:>7} {:>11} {:>10} {:>9} {:>9} {:>6} {:>11} {:>13}",
            "wave",
            "target",
            "share",
            "targeted",
            "pending",
            "downloading",
            "installing",
            "awaiting",
            "succeeded",
            "failed",
            "rolled-back",
            "not-reporting"
        )?;
        for w in &self.waves {
            let target = match w.kind {
                WaveKind::Groups => "groups".to_owned(),
                WaveKind::Percent(p) => format!("{p}%"),
            };
            let c = &w.counts;
            writeln!(
                f,
                "{:<5} {:<7} {:>7} {:>8} {:>7} {:>11} {:>10} {:>9} {:>9} {:>6} {:>11} {:>13}",
                w.index,
                target,
                pct(w.share_bp),
                c.targeted,
                c.pending,
                c.downloading,
                c.installing,
                c.awaiting_health,
                c.succeeded,
                c.failed,
                c.rolled_back,
                c.not_reporting
            )?;
        }
        let fetched = self.bytes_from_peers.saturating_add(self.bytes_from_origin);
        let peer_pct = if fetched == 0 {
            0
        } else {
            u128::from(self.bytes_from_peers) * 100 / u128::from(fetched)
        };
        write!(
            f,
            "bytes: {} from peers, {} from the origin ({peer_pct}% from peers), {} reused locally",
            self.bytes_from_peers, self.bytes_from_origin, self.bytes.local
        )
    }
}
