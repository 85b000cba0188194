//! The planner's inputs, decisions and timers.

use std::collections::{BTreeMap, BTreeSet};

use meshota_protocol::release::{bucket, FULL_SHARE};
use meshota_protocol::{Action, ByteSplit, DeviceId, RolloutGate, SiteId, UpdateState};

use super::wave::{reaches, Phase, Tally, WaveKind};
use super::{
    CommandError, Derived, DeviceInfo, DeviceRec, DeviceReport, HaltReason, Planner,
    PlannerCommand, PlannerOutput, ReportOutcome, RolloutState, MAX_NAMED,
};

fn add_bytes(a: ByteSplit, b: ByteSplit) -> ByteSplit {
    ByteSplit {
        same_site: a.same_site.saturating_add(b.same_site),
        other_peers: a.other_peers.saturating_add(b.other_peers),
        origin: a.origin.saturating_add(b.origin),
        local: a.local.saturating_add(b.local),
    }
}

fn sub_bytes(a: ByteSplit, b: ByteSplit) -> ByteSplit {
    ByteSplit {
        same_site: a.same_site.saturating_sub(b.same_site),
        other_peers: a.other_peers.saturating_sub(b.other_peers),
        origin: a.origin.saturating_sub(b.origin),
        local: a.local.saturating_sub(b.local),
    }
}

impl Planner {
    /// The registry added or updated a device. Devices of another class
    /// are ignored, and one that changed class is removed. A device
    /// already targeted keeps its wave whatever its groups become, so
    /// counts never move between waves.
    pub fn handle_device(&mut self, info: DeviceInfo, now: u64) {
        let now = self.tick(now);
        if info.compatible != self.core.spec.compatible {
            if self.core.devices.contains_key(&info.id) {
                self.handle_device_removed(&info.id, now);
            }
            return;
        }
        let in_group = info
            .groups
            .iter()
            .any(|g| self.core.spec.groups.contains(g));
        if let Some(rec) = self.core.devices.get_mut(&info.id) {
            rec.site.clone_from(&info.site);
            if rec.wave.is_some() || rec.in_group == in_group {
                return;
            }
            self.unindex_bucket(&info.id);
        }
        let b = bucket(&info.id, &self.core.spec.release_id);
        let prev = self.core.devices.get(&info.id);
        let rec = DeviceRec {
            in_group,
            bucket: b,
            wave: None,
            targeted_at: None,
            last: prev.and_then(|r| r.last),
            bytes: prev.and_then(|r| r.bytes),
            site: info.site.clone(),
        };
        self.core.devices.insert(info.id.clone(), rec);
        if !in_group {
            self.derived.hist.add(b);
            self.derived.untargeted.insert((b, info.id.clone()));
        }
        // A device inside what is already open is targeted from now on;
        // after an abort the gate tells it to stop, so it is not.
        if self.core.state != RolloutState::Aborted {
            if let Some(wave) = self.wave_covering(in_group, b) {
                self.target(&info.id, wave, now);
            }
        }
        self.grow_goal();
        self.evaluate(now);
    }

    /// The registry removed a device (decommissioned, or moved to another
    /// class). It leaves every count, so a device that is gone for good
    /// cannot hold a wave below its success threshold forever.
    pub fn handle_device_removed(&mut self, id: &DeviceId, now: u64) {
        let now = self.tick(now);
        self.unindex_bucket(id);
        let Some(r) = self.core.devices.remove(id) else {
            return;
        };
        if let Some(bytes) = r.bytes {
            self.derived.bytes = sub_bytes(self.derived.bytes, bytes);
        }
        if let (Some(w), Some(at)) = (r.wave, r.targeted_at) {
            let phase = Phase::of(r.last.map(|(_, s)| s), self.core.spec.action);
            if phase == Phase::Unreported {
                let deadline = at.saturating_add(self.core.spec.report_timeout_secs);
                self.derived.silent.remove(&(deadline, id.clone()));
            }
            if let Some(t) = self.derived.tallies.get_mut(w) {
                t.remove(phase);
            }
        }
        self.evaluate(now);
    }

    /// A verified report from `device`.
    ///
    /// # Returns
    /// Whether it was counted, and if not, why.
    pub fn handle_report(
        &mut self,
        device: &DeviceId,
        report: DeviceReport,
        now: u64,
    ) -> ReportOutcome {
        let now = self.tick(now);
        if report.release != Some(self.core.spec.release_id) {
            return ReportOutcome::OtherRelease;
        }
        let action = self.core.spec.action;
        let Some(rec) = self.core.devices.get_mut(device) else {
            return ReportOutcome::UnknownDevice;
        };
        if let Some((counter, _)) = rec.last {
            if report.counter < counter {
                return ReportOutcome::Stale;
            }
            if report.counter == counter {
                return ReportOutcome::Duplicate;
            }
        }
        let old = Phase::of(rec.last.map(|(_, s)| s), action);
        let new = Phase::of(Some(report.state), action);
        rec.last = Some((report.counter, report.state));
        if let Some(bytes) = report.bytes {
            let before = rec.bytes.replace(bytes).unwrap_or_default();
            self.derived.bytes = add_bytes(sub_bytes(self.derived.bytes, before), bytes);
        }
        if let (Some(wave), Some(at)) = (rec.wave, rec.targeted_at) {
            if old == Phase::Unreported {
                let deadline = at.saturating_add(self.core.spec.report_timeout_secs);
                self.derived.silent.remove(&(deadline, device.clone()));
            }
            if let Some(t) = self.derived.tallies.get_mut(wave) {
                t.remove(old);
                t.add(new);
            }
        }
        self.evaluate(now);
        ReportOutcome::Accepted
    }

    /// An operator command.
    ///
    /// # Errors
    /// [`CommandError::NotAllowed`] when the command makes no sense in the
    /// current state (pausing a paused rollout, resuming a running one,
    /// anything but rollback after an abort); nothing changes then.
    pub fn handle_command(
        &mut self,
        command: PlannerCommand,
        now: u64,
    ) -> Result<(), CommandError> {
        let now = self.tick(now);
        let state = self.core.state;
        let refuse = Err(CommandError::NotAllowed { command, state });
        match command {
            PlannerCommand::Pause => match state {
                RolloutState::Scheduled | RolloutState::Running => {
                    self.core.state = RolloutState::Paused;
                }
                _ => return refuse,
            },
            PlannerCommand::Resume => match state {
                RolloutState::Paused => self.core.state = self.unpaused_state(),
                RolloutState::Halted => {
                    for (w, t) in self.core.waves.iter_mut().zip(&self.derived.tallies) {
                        w.acked_failures = t.failures();
                    }
                    self.core.halt = None;
                    self.core.state = self.unpaused_state();
                }
                _ => return refuse,
            },
            PlannerCommand::Abort => {
                if state == RolloutState::Aborted {
                    return refuse;
                }
                self.abort(now);
            }
            PlannerCommand::Rollback => {
                if state != RolloutState::Aborted {
                    self.abort(now);
                }
                // Only a switched slot has anything to roll back to.
                let devices = self
                    .core
                    .devices
                    .iter()
                    .filter(|(_, r)| {
                        matches!(
                            r.last,
                            Some((_, UpdateState::Activated | UpdateState::Committed))
                        )
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                self.core
                    .outputs
                    .push_back(PlannerOutput::Rollback { devices });
            }
        }
        self.evaluate(now);
        Ok(())
    }

    /// The driver's wake-up: at or after [`Planner::poll_timeout`], or any
    /// time it likes (waking early is harmless).
    pub fn handle_timeout(&mut self, now: u64) {
        let now = self.tick(now);
        // Only a wake-up starts the rollout, never a registry update: the
        // driver feeds the whole fleet first, and the first wave is sized
        // on all of it rather than on whoever registered first.
        if self.core.state == RolloutState::Scheduled && now >= self.core.spec.not_before {
            self.core.state = RolloutState::Running;
            self.start_wave(0, now);
        }
        self.evaluate(now);
    }

    /// When the planner next needs [`Planner::handle_timeout`], in seconds
    /// since the epoch (possibly already due); `None` when nothing is
    /// pending on time alone.
    pub fn poll_timeout(&self) -> Option<u64> {
        let c = &self.core;
        let now = c.now;
        let mut next: Option<u64> = None;
        let mut at = |t: u64| {
            if t > now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if c.state == RolloutState::Scheduled {
            // Due at once when `not_before` has passed: the rollout starts
            // at the driver's next wake-up, not at an arbitrary later one.
            return Some(c.spec.not_before.max(now));
        }
        if c.gate.is_some() && c.state != RolloutState::Aborted {
            at(c.resign_at);
        }
        if c.state == RolloutState::Running {
            if let Some(k) = c.current {
                if let (Some(w), Some(t)) = (c.waves.get(k), self.derived.tallies.get(k)) {
                    if w.share_bp >= w.goal_bp
                        && t.targeted() > 0
                        && reaches(
                            t.get(Phase::Succeeded),
                            t.targeted(),
                            c.spec.success_threshold_pct,
                        )
                    {
                        at(w.started_at.unwrap_or(now).saturating_add(c.spec.soak_secs));
                    }
                    // Under max_parallel a silent device frees its slot
                    // when it turns "not reporting".
                    if w.share_bp < w.goal_bp && c.spec.max_parallel.is_some() {
                        if let Some((d, _)) = self.derived.silent.iter().find(|(d, _)| *d > now) {
                            at(*d);
                        }
                    }
                }
            }
        }
        next
    }

    /// Keeps time monotonic: a clock stepping back is treated as standing.
    fn tick(&mut self, now: u64) -> u64 {
        self.core.now = self.core.now.max(now);
        self.core.now
    }

    fn unpaused_state(&self) -> RolloutState {
        if self.core.current.is_none() {
            RolloutState::Scheduled
        } else if self.core.waves.iter().all(|w| w.done_at.is_some()) {
            RolloutState::Completed
        } else {
            RolloutState::Running
        }
    }

    fn abort(&mut self, now: u64) {
        self.core.state = RolloutState::Aborted;
        self.core.halt = None;
        if self.core.gate.is_some() {
            self.issue_gate(now);
        }
    }

    /// Rebuilds [`Derived`] from the core.
    pub(super) fn rebuild(&mut self) {
        let c = &self.core;
        let mut d = Derived {
            tallies: vec![Tally::default(); c.waves.len()],
            ..Derived::default()
        };
        for (id, r) in &c.devices {
            if !r.in_group {
                d.hist.add(r.bucket);
                if r.wave.is_none() {
                    d.untargeted.insert((r.bucket, id.clone()));
                }
            }
            if let Some(bytes) = r.bytes {
                d.bytes = add_bytes(d.bytes, bytes);
            }
            if let Some(w) = r.wave {
                let phase = Phase::of(r.last.map(|(_, s)| s), c.spec.action);
                if let Some(t) = d.tallies.get_mut(w) {
                    t.add(phase);
                }
                if let (Phase::Unreported, Some(at)) = (phase, r.targeted_at) {
                    d.silent
                        .insert((at.saturating_add(c.spec.report_timeout_secs), id.clone()));
                }
            }
        }
        self.derived = d;
    }

    /// Takes a device out of the bucket indexes (no-op for group members,
    /// which are never in them).
    fn unindex_bucket(&mut self, id: &DeviceId) {
        if let Some(r) = self.core.devices.get(id) {
            if !r.in_group {
                self.derived.hist.remove(r.bucket);
                self.derived.untargeted.remove(&(r.bucket, id.clone()));
            }
        }
    }

    /// The started wave a device with this bucket falls in, if any.
    fn wave_covering(&self, in_group: bool, b: u16) -> Option<usize> {
        self.core
            .waves
            .iter()
            .enumerate()
            .filter(|(_, w)| w.started_at.is_some())
            .find(|(_, w)| match w.kind {
                WaveKind::Groups => in_group,
                WaveKind::Percent(_) => !in_group && b < w.share_bp,
            })
            .map(|(k, _)| k)
    }

    /// Marks a device targeted by `wave`.
    fn target(&mut self, id: &DeviceId, wave: usize, now: u64) {
        let action = self.core.spec.action;
        let timeout = self.core.spec.report_timeout_secs;
        let Some(r) = self.core.devices.get_mut(id) else {
            return;
        };
        if r.wave.is_some() {
            return;
        }
        r.wave = Some(wave);
        r.targeted_at = Some(now);
        let phase = Phase::of(r.last.map(|(_, s)| s), action);
        if !r.in_group {
            self.derived.untargeted.remove(&(r.bucket, id.clone()));
        }
        if phase == Phase::Unreported {
            self.derived
                .silent
                .insert((now.saturating_add(timeout), id.clone()));
        }
        if let Some(t) = self.derived.tallies.get_mut(wave) {
            t.add(phase);
        }
    }

    /// Share reached by the percent waves before `k`.
    fn share_before(&self, k: usize) -> u16 {
        self.core.waves[..k.min(self.core.waves.len())]
            .iter()
            .map(|w| w.share_bp)
            .max()
            .unwrap_or(0)
    }

    /// The current percent wave's goal follows the fleet as it grows.
    fn grow_goal(&mut self) {
        let Some(k) = self.core.current else {
            return;
        };
        let prev = self.share_before(k);
        if let Some(w) = self.core.waves.get_mut(k) {
            if let (WaveKind::Percent(p), None) = (w.kind, w.done_at) {
                w.goal_bp = w.goal_bp.max(self.derived.hist.goal_for(p, prev));
            }
        }
    }

    /// Targeted devices still to finish, not counting silent ones.
    fn in_flight(&self, now: u64) -> u32 {
        let unfinished: u32 = self.derived.tallies.iter().map(Tally::unfinished).sum();
        let silent = self
            .derived
            .silent
            .iter()
            .take_while(|(d, _)| *d <= now)
            .count();
        unfinished.saturating_sub(u32::try_from(silent).unwrap_or(u32::MAX))
    }

    /// Applies every decision `now` allows, until none applies.
    pub(super) fn evaluate(&mut self, now: u64) {
        if matches!(
            self.core.state,
            RolloutState::Running | RolloutState::Paused
        ) {
            self.check_halt();
        }
        // Each pass either advances a wave or stops; waves are finite.
        for _ in 0..=self.core.waves.len() {
            if self.core.state != RolloutState::Running || !self.advance(now) {
                break;
            }
        }
        // The share itself is a scan of the histogram, so only when the
        // gate's prefetch looks out of step with the wave's progress.
        let prefetch_changed = self.core.gate.as_ref().is_some_and(|g| {
            self.prefetch_next().is_some() != (g.prefetch_bp > 0)
                && g.prefetch_bp != self.prefetch_share(g.share_bp)
        });
        if self.core.gate.is_some()
            && self.core.state != RolloutState::Aborted
            && (now >= self.core.resign_at || prefetch_changed)
        {
            self.issue_gate(now);
        }
    }

    fn check_halt(&mut self) {
        let pct = self.core.spec.error_threshold_pct;
        for (k, (w, t)) in self
            .core
            .waves
            .iter()
            .zip(&self.derived.tallies)
            .enumerate()
        {
            let failures = t.failures().saturating_sub(w.acked_failures);
            if w.started_at.is_some() && failures > 0 && reaches(failures, t.targeted(), pct) {
                let reason = HaltReason::ErrorThreshold {
                    wave: k,
                    failures,
                    targeted: t.targeted(),
                    threshold_pct: pct,
                };
                self.core.state = RolloutState::Halted;
                self.core.halt = Some(reason.clone());
                self.core
                    .outputs
                    .push_back(PlannerOutput::Halted { reason });
                return;
            }
        }
    }

    /// Grows the current wave's share within `max_parallel`, and hands
    /// over to the next wave when this one is done. Returns whether a new
    /// wave started (so the caller looks again).
    fn advance(&mut self, now: u64) -> bool {
        let Some(k) = self.core.current else {
            return false;
        };
        self.step_share(k, now);
        let spec = &self.core.spec;
        let (Some(w), Some(t)) = (self.core.waves.get(k), self.derived.tallies.get(k)) else {
            return false;
        };
        if w.share_bp < w.goal_bp {
            return false;
        }
        let done = if t.targeted() == 0 {
            !self.core.devices.is_empty()
        } else {
            let soaked = now >= w.started_at.unwrap_or(now).saturating_add(spec.soak_secs);
            soaked
                && reaches(
                    t.get(Phase::Succeeded),
                    t.targeted(),
                    spec.success_threshold_pct,
                )
        };
        if !done {
            return false;
        }
        if let Some(w) = self.core.waves.get_mut(k) {
            w.done_at = Some(now);
        }
        if k + 1 >= self.core.waves.len() {
            self.core.state = RolloutState::Completed;
            self.core.outputs.push_back(PlannerOutput::Completed);
            return false;
        }
        self.start_wave(k + 1, now);
        true
    }

    fn start_wave(&mut self, k: usize, now: u64) {
        let prev = self.share_before(k);
        let goal = match self.core.waves.get(k).map(|w| w.kind) {
            Some(WaveKind::Percent(p)) => self.derived.hist.goal_for(p, prev),
            Some(WaveKind::Groups) => prev,
            None => return,
        };
        if let Some(w) = self.core.waves.get_mut(k) {
            w.started_at = Some(now);
            w.goal_bp = goal;
            w.share_bp = prev;
        }
        self.core.current = Some(k);
        self.core
            .outputs
            .push_back(PlannerOutput::WaveStarted { wave: k });
        let first_percent = prev == 0
            && matches!(
                self.core.waves.get(k).map(|w| w.kind),
                Some(WaveKind::Percent(_))
            );
        let named = first_percent && self.name_left_out_sites(k, goal, now);
        if self.core.waves.get(k).map(|w| w.kind) == Some(WaveKind::Groups) {
            let members: Vec<DeviceId> = self
                .core
                .devices
                .iter()
                .filter(|(_, r)| r.in_group && r.wave.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            for id in members {
                self.target(&id, k, now);
            }
            self.issue_gate(now);
        } else if !self.step_share(k, now) && (self.core.gate.is_none() || named) {
            // The first wave publishes a gate even before it can target
            // anyone, so the release is announced and re-signed from the
            // start; and at once when it named devices, which would
            // otherwise wait for the next re-signing.
            self.issue_gate(now);
        }
    }

    /// Names, and targets in wave `k`, the lowest-bucket device of each
    /// site none of whose devices the share `goal` (nor the group wave)
    /// takes: at most [`MAX_NAMED`], and no more than fit in a gate.
    /// Returns whether it named any.
    fn name_left_out_sites(&mut self, k: usize, goal: u16, now: u64) -> bool {
        let mut covered: BTreeSet<&SiteId> = BTreeSet::new();
        let mut lowest: BTreeMap<&SiteId, (u16, &DeviceId)> = BTreeMap::new();
        for (id, r) in &self.core.devices {
            let Some(site) = &r.site else {
                continue;
            };
            if r.in_group || r.wave.is_some() || r.bucket < goal {
                covered.insert(site);
            } else if lowest.get(site).is_none_or(|(b, _)| r.bucket < *b) {
                lowest.insert(site, (r.bucket, id));
            }
        }
        let mut named: Vec<DeviceId> = lowest
            .into_iter()
            .filter(|(site, _)| !covered.contains(site))
            .map(|(_, (_, id))| id.clone())
            .take(MAX_NAMED)
            .collect();
        // Every gate lists them all; one that could not be encoded could
        // never be signed.
        while !named.is_empty() && !self.gate_fits(&named) {
            named.pop();
        }
        for id in &named {
            self.target(id, k, now);
        }
        self.core.named = named;
        !self.core.named.is_empty()
    }

    /// Whether a gate naming `devices` (and the spec's groups) encodes.
    fn gate_fits(&self, devices: &[DeviceId]) -> bool {
        let widest = RolloutGate {
            release_id: self.core.spec.release_id,
            share_bp: FULL_SHARE,
            groups: self.core.spec.groups.clone(),
            action: self.core.spec.action,
            not_before: u64::MAX,
            expires_at: u64::MAX,
            sequence: u64::MAX,
            devices: devices.to_vec(),
            prefetch_bp: FULL_SHARE,
        };
        meshota_protocol::codec::encode(&widest).is_ok()
    }

    /// Grows wave `k`'s share toward its goal as far as `max_parallel`
    /// allows, targeting the devices it takes in. Returns whether a gate
    /// was issued.
    fn step_share(&mut self, k: usize, now: u64) -> bool {
        let Some(w) = self.core.waves.get(k) else {
            return false;
        };
        if w.share_bp >= w.goal_bp || self.core.state != RolloutState::Running {
            return false;
        }
        let (from, goal) = (w.share_bp, w.goal_bp);
        let slots = match self.core.spec.max_parallel {
            Some(n) => n.saturating_sub(self.in_flight(now)),
            None => u32::MAX,
        };
        let to = self.derived.hist.step(from, goal, slots);
        if to <= from {
            return false;
        }
        let taken: Vec<DeviceId> = self
            .derived
            .untargeted
            .iter()
            .skip_while(|(b, _)| *b < from)
            .take_while(|(b, _)| *b < to)
            .map(|(_, id)| id.clone())
            .collect();
        if let Some(w) = self.core.waves.get_mut(k) {
            w.share_bp = to;
        }
        for id in taken {
            self.target(&id, k, now);
        }
        self.issue_gate(now);
        true
    }

    /// Issues the gate for the current state under a fresh sequence.
    fn issue_gate(&mut self, now: u64) {
        let c = &mut self.core;
        let share_bp = c
            .waves
            .iter()
            .map(|w| w.share_bp)
            .max()
            .unwrap_or(0)
            .min(FULL_SHARE);
        let action = if c.state == RolloutState::Aborted {
            Action::Stop
        } else {
            c.spec.action
        };
        let prefetch_bp = self.prefetch_share(share_bp);
        let c = &mut self.core;
        let lifetime = c.spec.gate_lifetime_secs;
        let gate = RolloutGate {
            release_id: c.spec.release_id,
            share_bp,
            groups: c.spec.groups.clone(),
            action,
            not_before: c.spec.not_before,
            expires_at: now.saturating_add(lifetime),
            sequence: c.next_sequence,
            devices: c.named.clone(),
            prefetch_bp,
        };
        c.next_sequence = c.next_sequence.saturating_add(1);
        c.resign_at = now.saturating_add(lifetime / 2);
        c.gate = Some(gate.clone());
        c.outputs.push_back(PlannerOutput::PublishGate(gate));
    }

    /// The share the next percent wave will open, to download only; zero
    /// when nothing beyond `share_bp` is to be prefetched.
    ///
    /// Only once the current wave has its whole share and has fetched:
    /// `success_threshold_pct` of its devices got past downloading. The
    /// prefetch then fills the wave's install, health check and soak,
    /// when the network is idle. Prefetching from the wave's start made
    /// two waves fetch at once: 1,000 live devices took 152.7 s against
    /// 115-123 s, and the origin served 2.1 copies, because the first
    /// wave no longer seeded each site alone.
    fn prefetch_share(&self, share_bp: u16) -> u16 {
        let Some((goal, pct)) = self.prefetch_next() else {
            return 0;
        };
        let next = self.derived.hist.goal_for(pct, goal.max(share_bp));
        if next > share_bp {
            next
        } else {
            0
        }
    }

    /// When the running wave is ready for the next one to prefetch (see
    /// [`Self::prefetch_share`]): that wave's goal and the next wave's
    /// percent. Cheap, unlike the share.
    fn prefetch_next(&self) -> Option<(u16, u8)> {
        let c = &self.core;
        if !c.spec.prefetch || c.state != RolloutState::Running {
            return None;
        }
        let k = c.current?;
        let WaveKind::Percent(pct) = c.waves.get(k + 1)?.kind else {
            return None;
        };
        let (w, t) = (c.waves.get(k)?, self.derived.tallies.get(k)?);
        let fetched = t.targeted()
            - t.get(Phase::Unreported)
            - t.get(Phase::Idle)
            - t.get(Phase::Downloading);
        let ready =
            w.share_bp >= w.goal_bp && reaches(fetched, t.targeted(), c.spec.success_threshold_pct);
        ready.then_some((w.goal_bp, pct))
    }
}
