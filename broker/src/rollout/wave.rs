//! Waves, device phases, and the arithmetic that turns a wave's percent
//! into a bucket share.

use meshota_protocol::release::FULL_SHARE;
use meshota_protocol::{Action, UpdateState};
use serde::{Deserialize, Serialize};

/// What a wave targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveKind {
    /// The explicit target groups, whatever their buckets (always first).
    Groups,
    /// This cumulative percent of the eligible devices outside the groups.
    Percent(u8),
}

/// A wave's progress; persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Wave {
    pub kind: WaveKind,
    /// When its first gate was issued.
    pub started_at: Option<u64>,
    /// When it met its thresholds and soak and handed over.
    pub done_at: Option<u64>,
    /// The share this wave grows to. Grows further while the wave runs if
    /// the fleet grows, so the percent stays a percent of the real fleet.
    pub goal_bp: u16,
    /// The share issued so far; below `goal_bp` only under `max_parallel`.
    pub share_bp: u16,
    /// Failures an operator accepted by resuming after a halt; the error
    /// threshold counts only failures beyond these.
    pub acked_failures: u32,
}

impl Wave {
    pub fn new(kind: WaveKind) -> Self {
        Self {
            kind,
            started_at: None,
            done_at: None,
            goal_bp: 0,
            share_bp: 0,
            acked_failures: 0,
        }
    }
}

/// Where a targeted device is, as counted per wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Nothing heard about this release yet.
    Unreported,
    /// Heard, but not started (waiting for `not_before`, a window …).
    Idle,
    Downloading,
    Installing,
    /// Activated, on trial until its health check.
    AwaitingHealth,
    /// Reached the rollout's goal; for install-and-activate only a commit.
    Succeeded,
    Failed,
    RolledBack,
}

impl Phase {
    pub const COUNT: usize = 8;

    pub fn index(self) -> usize {
        self as usize
    }

    /// Classifies a device's latest state for this release.
    ///
    /// The goal depends on the action: a download-only rollout can never
    /// see a commit, so it succeeds at `Downloaded`. For
    /// install-and-activate nothing short of a health-confirmed commit
    /// counts, because a device that activated may still roll back.
    pub fn of(state: Option<UpdateState>, action: Action) -> Phase {
        let Some(state) = state else {
            return Phase::Unreported;
        };
        let goal = match action {
            Action::Download => UpdateState::Downloaded,
            Action::Install => UpdateState::Installed,
            Action::InstallAndActivate | Action::Stop => UpdateState::Committed,
        };
        match state {
            UpdateState::Failed => Phase::Failed,
            UpdateState::RolledBack => Phase::RolledBack,
            UpdateState::Idle => Phase::Idle,
            // The progress states are declared in order, so `>=` is "got
            // at least as far as the goal".
            s if s >= goal => Phase::Succeeded,
            UpdateState::Downloading | UpdateState::Downloaded => Phase::Downloading,
            UpdateState::Installing | UpdateState::Installed => Phase::Installing,
            UpdateState::Activated | UpdateState::Committed => Phase::AwaitingHealth,
        }
    }
}

/// Devices of one wave by phase; derived, never persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally([u32; Phase::COUNT]);

impl Tally {
    pub fn add(&mut self, p: Phase) {
        self.0[p.index()] = self.0[p.index()].saturating_add(1);
    }
    pub fn remove(&mut self, p: Phase) {
        self.0[p.index()] = self.0[p.index()].saturating_sub(1);
    }
    pub fn get(&self, p: Phase) -> u32 {
        self.0[p.index()]
    }
    pub fn targeted(&self) -> u32 {
        self.0.iter().sum()
    }
    pub fn failures(&self) -> u32 {
        self.get(Phase::Failed) + self.get(Phase::RolledBack)
    }
    pub fn unfinished(&self) -> u32 {
        self.targeted() - self.get(Phase::Succeeded) - self.failures()
    }
}

/// Whether `part` is at least `pct` percent of `whole`, in integers so no
/// rounding decides a halt.
pub(crate) fn reaches(part: u32, whole: u32, pct: u8) -> bool {
    u64::from(part) * 100 >= u64::from(pct) * u64::from(whole)
}

/// How many of `m` devices a cumulative `pct` covers: the ceiling, so 1 %
/// of a 50-device fleet is one device and not none.
pub(crate) fn devices_for(pct: u8, m: u32) -> u32 {
    let m64 = u64::from(m);
    let n = (u64::from(pct) * m64).div_ceil(100);
    n.min(m64) as u32
}

/// Bucket histogram of the eligible devices outside the groups; derived.
///
/// A fixed 10 000 counters make "the share covering n devices" a scan
/// whose cost does not grow with the fleet.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Histogram(Vec<u32>);

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("devices", &self.total())
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self(vec![0; usize::from(FULL_SHARE)])
    }
}

impl Histogram {
    pub fn add(&mut self, bucket: u16) {
        if let Some(c) = self.0.get_mut(usize::from(bucket)) {
            *c = c.saturating_add(1);
        }
    }
    pub fn remove(&mut self, bucket: u16) {
        if let Some(c) = self.0.get_mut(usize::from(bucket)) {
            *c = c.saturating_sub(1);
        }
    }
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }
    /// Devices with a bucket below `share`.
    pub fn below(&self, share: u16) -> u32 {
        self.0.iter().take(usize::from(share)).sum()
    }

    /// The smallest share that covers at least `n` devices (bucket of the
    /// n-th device + 1); ties in a bucket all come along.
    pub fn share_covering(&self, n: u32) -> u16 {
        if n == 0 {
            return 0;
        }
        let mut seen = 0u32;
        for (b, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= n {
                return (b + 1) as u16;
            }
        }
        FULL_SHARE
    }

    /// The goal share of a percent wave, given the share the waves before
    /// it reached.
    ///
    /// Every wave but the last takes at least one device more than the one
    /// before, so a small fleet does not stall on an empty wave; 100 % is
    /// always the full share, so devices that join later are included.
    pub fn goal_for(&self, pct: u8, prev_share: u16) -> u16 {
        if pct >= 100 {
            return FULL_SHARE;
        }
        let m = self.total();
        let before = self.below(prev_share);
        let n = devices_for(pct, m).max(before.saturating_add(1)).min(m);
        self.share_covering(n).max(prev_share)
    }

    /// How far the share may grow from `from` toward `goal` while adding
    /// at most `slots` devices (but at least one bucket, if any slot is
    /// free, so a tie in a bucket cannot wedge the rollout).
    pub fn step(&self, from: u16, goal: u16, slots: u32) -> u16 {
        if slots == 0 {
            return from;
        }
        let mut taken = 0u32;
        for b in from..goal {
            let c = self.0.get(usize::from(b)).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            if taken > 0 && taken.saturating_add(c) > slots {
                return b;
            }
            taken = taken.saturating_add(c);
        }
        goal
    }
}
