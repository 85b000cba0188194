//! [`Agent`]: inputs, the decision step, and outputs.

use std::collections::VecDeque;

use meshota_protocol::release::action_for;
use meshota_protocol::verify::verify_announcement_checked;
use meshota_protocol::{
    codec, Action, Announcement, CheckedSignatures, DeviceContext, Event, ReleaseId, ReportBody,
    Status, UpdateState, VerifyError,
};

use super::state::{AgentState, Held};
use super::{AgentAction, AgentConfig, FetchProgress, InhibitTimeout, StepResult};
use crate::install::Activation;

/// The step the agent is waiting on; nothing else starts meanwhile.
/// Not persisted: whatever was in flight died with a restart, and
/// [`Agent::handle_boot`] re-drives from the persisted phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Await {
    Fetch,
    Inhibitor,
    Install,
    Activate,
    Health,
    Commit,
    Rollback,
    Reboot,
}

/// The sans-IO device agent. See the [module docs](super).
#[derive(Debug)]
pub struct Agent {
    pub(super) cfg: AgentConfig,
    pub(super) state: AgentState,
    pub(super) actions: VecDeque<AgentAction>,
    pub(super) awaiting: Option<Await>,
    /// Earliest time the decision step has something to re-check.
    pub(super) wake: Option<u64>,
    pub(super) fetch_attempts: u32,
    pub(super) fetch_retry_at: Option<u64>,
    pub(super) inhibit_attempts: u32,
    pub(super) inhibit_retry_at: Option<u64>,
    /// One-shot permission from the inhibitor for the next disruptive step.
    pub(super) inhibit_clear: bool,
    pub(super) progress_at: Option<(u64, u64)>,
    pub(super) reboot_retry_at: Option<u64>,
}

fn backoff(min: u64, max: u64, attempt: u32) -> u64 {
    min.saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(max)
        .max(1)
}

impl Agent {
    /// An agent resuming from `state` (default on first start). Call
    /// [`Agent::handle_boot`] next.
    pub fn new(cfg: AgentConfig, state: AgentState) -> Self {
        let mut agent = Self {
            cfg,
            state,
            actions: VecDeque::new(),
            awaiting: None,
            wake: None,
            fetch_attempts: 0,
            fetch_retry_at: None,
            inhibit_attempts: 0,
            inhibit_retry_at: None,
            inhibit_clear: false,
            progress_at: None,
            reboot_retry_at: None,
        };
        agent.restore_trust();
        agent
    }

    /// The current state.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The current phase.
    pub fn phase(&self) -> UpdateState {
        self.state.phase
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The next piece of work, in order.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        self.actions.pop_front()
    }

    /// When [`Agent::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let health = match self.awaiting {
            Some(Await::Health) => self.state.health_deadline,
            _ => None,
        };
        [self.wake, health].into_iter().flatten().min()
    }

    /// The status report for the current state.
    pub fn status(&self) -> Status {
        Status {
            version: self.state.installed_version.clone(),
            release: self.state.installed_release,
            slot: self.state.slot.clone(),
            state: self.state.phase,
            target: self.state.target(),
            peer_id: self.cfg.peer_id.clone(),
            site: self.cfg.site.clone(),
            tags: self.cfg.tags.clone(),
            online: true,
            groups: self.cfg.groups.clone(),
            compatible: Some(self.cfg.compatible.clone()),
            trust_version: Some(self.cfg.root.version),
        }
    }

    // ---- outputs -------------------------------------------------------

    pub(super) fn persist(&mut self) {
        self.actions
            .push_back(AgentAction::Persist(Box::new(self.state.clone())));
    }

    pub(super) fn publish(&mut self, ev: Event) {
        self.actions
            .push_back(AgentAction::Publish(ReportBody::Event(ev)));
    }

    pub(super) fn publish_status(&mut self) {
        let st = self.status();
        self.actions
            .push_back(AgentAction::Publish(ReportBody::Status(st)));
    }

    pub(super) fn error(
        &mut self,
        code: &str,
        message: impl Into<String>,
        release: Option<ReleaseId>,
    ) {
        self.publish(Event::Error {
            code: code.into(),
            message: message.into(),
            release,
        });
    }

    /// Moves to `to`: persist first, then report. Side effects the caller
    /// queues afterwards therefore run only once the new phase is durable.
    pub(super) fn go(&mut self, to: UpdateState) {
        let from = self.state.phase;
        self.state.phase = to;
        if to != UpdateState::Failed {
            self.state.failure = None;
        }
        self.persist();
        if from != to {
            let release = self.state.target();
            self.publish(Event::StateChanged { release, from, to });
            self.publish_status();
        }
    }

    fn wake_at(&mut self, t: u64) {
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    /// Gives up on the current release: the previous slot stays active.
    pub(super) fn fail(&mut self, code: &str, reason: String) {
        let rel = self.state.target();
        self.error(code, reason.clone(), rel);
        if let Some(r) = rel {
            self.state.give_up(r);
        }
        self.state.failure = Some(format!("{code}: {reason}"));
        self.state.cancel_requested = false;
        self.state.inhibited_since = None;
        self.awaiting = None;
        self.go(UpdateState::Failed);
    }

    // ---- announcements --------------------------------------------------

    /// An announcement as received from the broker. Undecodable input is
    /// reported as an `Event::Error` and changes nothing.
    pub fn handle_announcement_bytes(&mut self, bytes: &[u8], now: u64) {
        match codec::decode::<Announcement>(bytes) {
            Ok(ann) => self.handle_announcement(ann, now),
            Err(e) => {
                let e = VerifyError::from(e);
                self.error(e.code(), e.to_string(), None);
            }
        }
    }

    /// A decoded announcement. Invalid ones are reported with their
    /// [`VerifyError::code`] and change nothing; duplicates of the held
    /// one are ignored; one for the installed release is a no-op.
    pub fn handle_announcement(&mut self, ann: Announcement, now: u64) {
        self.handle_announcement_checked(ann, None, now);
    }

    /// [`Agent::handle_announcement`] with a proof that the signatures
    /// were already checked ([`check_announcement_signatures`]), for a
    /// driver handing one announcement to many devices, as the fleet
    /// simulator does. Every device-specific check still runs; a proof for
    /// other documents or another trust root is ignored.
    ///
    /// [`check_announcement_signatures`]: meshota_protocol::verify::check_announcement_signatures
    pub fn handle_announcement_checked(
        &mut self,
        ann: Announcement,
        checked: Option<&CheckedSignatures>,
        now: u64,
    ) {
        let dup = |h: &Option<Held>| h.as_ref().is_some_and(|h| h.same_documents(&ann));
        if dup(&self.state.held) || dup(&self.state.next) {
            // The unsigned hints (seeders, origin) may have moved: keep the newest.
            for h in [&mut self.state.held, &mut self.state.next]
                .into_iter()
                .flatten()
            {
                if h.same_documents(&ann) && h.announcement != ann {
                    h.announcement = ann.clone();
                }
            }
            return;
        }
        let id = ann.release.id();
        if self.state.installed_release == Some(id) {
            return;
        }
        let verified = {
            let ctx = DeviceContext {
                root: &self.cfg.root,
                compatible: &self.cfg.compatible,
                installed: self.state.installed_version.as_ref(),
                last_release_sequence: self.state.last_release_sequence,
                last_release: self.state.last_release,
                last_gate_sequence: self.state.last_gate_sequence,
                now,
            };
            verify_announcement_checked(&ann, checked, &ctx)
        };
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                self.error(e.code(), e.to_string(), None);
                return;
            }
        };
        self.state.last_release_sequence = v.release.sequence;
        self.state.last_release = Some(v.release_id);
        self.state.last_gate_sequence = v.gate.sequence;
        let new = Held {
            announcement: ann,
            release_id: v.release_id,
            release: v.release,
            gate: v.gate,
        };
        if self.state.target() == Some(new.release_id) {
            // A re-signed or changed gate for the release under way.
            self.state.held = Some(new);
        } else if self.state.next.as_ref().map(|n| n.release_id) == Some(new.release_id)
            || self.busy()
        {
            self.state.next = Some(new);
        } else {
            self.replace_held(new);
        }
        self.persist();
        self.step(now);
    }

    /// Whether a step that must not be abandoned is under way.
    fn busy(&self) -> bool {
        matches!(
            self.state.phase,
            UpdateState::Installing | UpdateState::Activated
        ) || matches!(
            self.awaiting,
            Some(Await::Commit | Await::Rollback | Await::Reboot | Await::Activate)
        )
    }

    /// Abandons an update that has not reached the slots and takes `new`.
    fn replace_held(&mut self, new: Held) {
        if self.state.phase == UpdateState::Downloading {
            if let Some(release) = self.state.target() {
                self.actions.push_back(AgentAction::CancelFetch { release });
            }
        }
        if matches!(self.awaiting, Some(Await::Fetch | Await::Inhibitor)) {
            self.awaiting = None;
        }
        if !self.state.at_rest() {
            self.go(UpdateState::Idle);
        }
        self.state.held = Some(new);
        self.state.inhibited_since = None;
    }

    // ---- the decision step ----------------------------------------------

    /// Decides what to do next from the current state; idempotent.
    pub(super) fn step(&mut self, now: u64) {
        self.wake = None;
        let stopped = self
            .state
            .held
            .as_ref()
            .is_some_and(|h| h.gate.action == Action::Stop);
        if stopped && self.state.phase == UpdateState::Downloading {
            if let Some(release) = self.state.target() {
                self.actions.push_back(AgentAction::CancelFetch { release });
            }
            self.awaiting = None;
            self.go(UpdateState::Idle);
        }
        if self.awaiting.is_some() {
            return;
        }
        if self.state.reboot_pending {
            match self.reboot_retry_at {
                Some(at) if now < at => self.wake_at(at),
                _ => self.reboot(),
            }
            return;
        }
        if self.state.at_rest() {
            if let Some(next) = self.state.next.take() {
                let newer = self
                    .state
                    .installed_version
                    .as_ref()
                    .is_none_or(|v| &next.release.version > v);
                if newer {
                    self.state.held = Some(next);
                }
                self.persist();
            }
        }
        let Some(held) = self.state.held.clone() else {
            return;
        };
        let rel = held.release_id;
        if self.state.given_up.contains(&rel) || self.state.installed_release == Some(rel) {
            return;
        }
        let gate = &held.gate;
        if gate.action == Action::Stop {
            return;
        }
        if now < gate.not_before {
            self.wake_at(gate.not_before);
            return;
        }
        // A prefetching device downloads and stops at `Downloaded`; the
        // gate of its own wave then finds the bundle held.
        let Some(action) = action_for(&self.cfg.device, &self.cfg.groups, gate) else {
            return;
        };
        match self.state.phase {
            UpdateState::Idle
            | UpdateState::Committed
            | UpdateState::RolledBack
            | UpdateState::Failed => {
                self.fetch_attempts = 0;
                self.fetch_retry_at = None;
                self.state.slot_before = None;
                self.state.target_slot = None;
                self.state.trial_boots = 0;
                self.go(UpdateState::Downloading);
                // A release rolled back, cancelled or prefetched and never
                // opened goes before the next one comes in.
                let keep = self.state.keep_manifests();
                self.actions.push_back(AgentAction::PruneStore { keep });
                self.fetch(&held);
            }
            UpdateState::Downloading => match self.fetch_retry_at {
                Some(at) if now < at => self.wake_at(at),
                _ => self.fetch(&held),
            },
            UpdateState::Downloaded => {
                if matches!(action, Action::Install | Action::InstallAndActivate)
                    && self.may_disrupt(now)
                {
                    self.go(UpdateState::Installing);
                    self.install(&held);
                }
            }
            UpdateState::Installing => self.install(&held),
            UpdateState::Installed => {
                if action == Action::InstallAndActivate && self.may_disrupt(now) {
                    self.state.slot_before = self.state.slot.clone();
                    self.persist();
                    self.actions
                        .push_back(AgentAction::Activate { release: rel });
                    self.awaiting = Some(Await::Activate);
                }
            }
            UpdateState::Activated => self.start_health(now),
        }
    }

    fn fetch(&mut self, held: &Held) {
        self.fetch_retry_at = None;
        self.progress_at = None;
        self.actions.push_back(AgentAction::Fetch {
            release: held.release_id,
            manifest_id: held.release.manifest_id,
            bootstrap: held.announcement.bootstrap.clone(),
            http_origin: held.announcement.http_origin.clone(),
        });
        self.awaiting = Some(Await::Fetch);
    }

    fn install(&mut self, held: &Held) {
        self.actions.push_back(AgentAction::Install {
            release: held.release_id,
            manifest_id: held.release.manifest_id,
        });
        self.awaiting = Some(Await::Install);
    }

    /// Whether a disruptive step may start now: inside a maintenance
    /// window, and not held back by the inhibitor.
    fn may_disrupt(&mut self, now: u64) -> bool {
        if let Some(open) = self.cfg.windows.next_open(now) {
            self.wake_at(open);
            return false;
        }
        if !self.cfg.inhibitor || std::mem::take(&mut self.inhibit_clear) {
            return true;
        }
        if let Some(at) = self.inhibit_retry_at {
            if now < at {
                self.wake_at(at);
                return false;
            }
        }
        self.actions.push_back(AgentAction::CheckInhibitor);
        self.awaiting = Some(Await::Inhibitor);
        false
    }

    pub(super) fn start_health(&mut self, now: u64) {
        let Some(release) = self.state.target() else {
            return;
        };
        let deadline = now.saturating_add(self.cfg.health_timeout);
        self.state.health_deadline = Some(deadline);
        self.persist();
        self.actions
            .push_back(AgentAction::RunHealth { release, deadline });
        self.awaiting = Some(Await::Health);
    }

    /// Health confirmed: the only way to success.
    fn commit(&mut self) {
        let Some(held) = self.state.held.clone() else {
            return;
        };
        self.state.previous = Some((
            self.state.installed_release,
            self.state.installed_version.clone(),
        ));
        self.state.installed_release = Some(held.release_id);
        self.state.installed_version = Some(held.release.version.clone());
        self.state.trial_boots = 0;
        self.state.health_deadline = None;
        self.go(UpdateState::Committed);
        self.actions.push_back(AgentAction::Commit {
            release: held.release_id,
        });
        self.awaiting = Some(Await::Commit);
    }

    /// Leaves the trial slot for the previous one.
    pub(super) fn rollback_trial(&mut self, code: &str, reason: String) {
        let rel = self.state.target();
        self.error(code, reason, rel);
        if let Some(r) = rel {
            self.state.give_up(r);
        }
        self.state.trial_boots = 0;
        self.state.health_deadline = None;
        self.go(UpdateState::RolledBack);
        self.actions
            .push_back(AgentAction::Rollback { release: rel });
        self.awaiting = Some(Await::Rollback);
    }

    // ---- results of the driver's work -----------------------------------

    /// Download progress; published at most every `progress_interval`.
    pub fn handle_fetch_progress(&mut self, p: FetchProgress, now: u64) {
        if self.state.phase != UpdateState::Downloading {
            return;
        }
        let Some(release) = self.state.target() else {
            return;
        };
        let sum = p.bytes.same_site + p.bytes.other_peers + p.bytes.origin + p.bytes.local;
        let rate_bps = match self.progress_at {
            Some((at, _))
                if now < at.saturating_add(self.cfg.progress_interval) && sum < p.total =>
            {
                return;
            }
            Some((at, before)) if now > at => sum.saturating_sub(before) / (now - at),
            _ => 0,
        };
        self.progress_at = Some((now, sum));
        self.publish(Event::Progress {
            release,
            bytes: p.bytes,
            total: p.total,
            rate_bps,
        });
    }

    /// The fetch finished: every chunk held and verified, or why not.
    pub fn handle_fetch_done(&mut self, result: StepResult<()>, now: u64) {
        if self.awaiting != Some(Await::Fetch) || self.state.phase != UpdateState::Downloading {
            return;
        }
        self.awaiting = None;
        match result {
            Ok(()) => self.go(UpdateState::Downloaded),
            Err(e) => {
                self.fetch_attempts += 1;
                if self.fetch_attempts >= self.cfg.max_fetch_attempts {
                    let n = self.fetch_attempts;
                    self.fail(
                        "E_FETCH_FAILED",
                        format!("fetch failed {n} times, last: {e}"),
                    );
                } else {
                    let delay = backoff(
                        self.cfg.fetch_backoff_min,
                        self.cfg.fetch_backoff_max,
                        self.fetch_attempts,
                    );
                    self.fetch_retry_at = Some(now.saturating_add(delay));
                }
            }
        }
        self.step(now);
    }

    /// The inhibitor's answer: `None` to go ahead, or why not now.
    pub fn handle_inhibitor(&mut self, inhibited: Option<String>, now: u64) {
        if self.awaiting != Some(Await::Inhibitor) {
            return;
        }
        self.awaiting = None;
        match inhibited {
            None => {
                self.inhibit_attempts = 0;
                self.inhibit_retry_at = None;
                self.inhibit_clear = true;
                if self.state.inhibited_since.take().is_some() {
                    self.persist();
                }
            }
            Some(reason) => {
                let since = match self.state.inhibited_since {
                    Some(s) => s,
                    None => {
                        self.state.inhibited_since = Some(now);
                        self.persist();
                        self.error(
                            "E_INHIBITED",
                            format!("held back by the inhibitor: {reason}"),
                            self.state.target(),
                        );
                        now
                    }
                };
                if now.saturating_sub(since) >= self.cfg.max_inhibit {
                    let msg = format!(
                        "inhibited for {}s (limit {}s): {reason}",
                        now - since,
                        self.cfg.max_inhibit
                    );
                    self.inhibit_attempts = 0;
                    self.inhibit_retry_at = None;
                    match self.cfg.on_inhibit_timeout {
                        InhibitTimeout::Fail => self.fail("E_INHIBIT_TIMEOUT", msg),
                        InhibitTimeout::Proceed => {
                            self.error(
                                "E_INHIBIT_TIMEOUT",
                                format!("{msg}; proceeding"),
                                self.state.target(),
                            );
                            self.state.inhibited_since = None;
                            self.persist();
                            self.inhibit_clear = true;
                        }
                    }
                } else {
                    self.inhibit_attempts += 1;
                    let delay = backoff(
                        self.cfg.inhibit_backoff_min,
                        self.cfg.inhibit_backoff_max,
                        self.inhibit_attempts,
                    );
                    self.inhibit_retry_at = Some(now.saturating_add(delay));
                }
            }
        }
        self.step(now);
    }

    /// The inactive slot was written (naming the slot), or why not.
    pub fn handle_install_done(&mut self, result: StepResult<String>, now: u64) {
        if self.awaiting != Some(Await::Install) || self.state.phase != UpdateState::Installing {
            return;
        }
        self.awaiting = None;
        let Some(release) = self.state.target() else {
            return;
        };
        match result {
            Ok(slot) => {
                self.publish(Event::InstallResult {
                    release,
                    ok: true,
                    detail: format!("written to slot {slot}"),
                });
                self.state.target_slot = Some(slot);
                if self.state.cancel_requested {
                    self.fail("E_CANCELLED", "cancelled by operator".into());
                } else {
                    self.go(UpdateState::Installed);
                }
            }
            Err(e) => {
                self.publish(Event::InstallResult {
                    release,
                    ok: false,
                    detail: e.clone(),
                });
                self.fail("E_INSTALL_FAILED", e);
            }
        }
        self.step(now);
    }

    /// The switch to the new slot happened (live or at the next boot), or why not.
    pub fn handle_activate_done(&mut self, result: StepResult<Activation>, now: u64) {
        if self.awaiting != Some(Await::Activate) {
            return;
        }
        self.awaiting = None;
        match result {
            Ok(Activation::Live) => {
                if self.state.target_slot.is_some() {
                    self.state.slot.clone_from(&self.state.target_slot);
                }
                self.state.trial_boots = 1;
                self.go(UpdateState::Activated);
                self.start_health(now);
            }
            Ok(Activation::RebootRequired) => {
                self.state.trial_boots = 0;
                self.state.reboot_pending = true;
                self.go(UpdateState::Activated);
                self.reboot();
            }
            Err(e) => {
                // The backend records the fallback before switching, so
                // the boot reconciliation undoes a half-done switch.
                self.fail("E_ACTIVATE_FAILED", e);
                self.step(now);
            }
        }
    }

    /// The health check's verdict.
    pub fn handle_health_result(&mut self, ok: bool, detail: String, now: u64) {
        if self.awaiting != Some(Await::Health) || self.state.phase != UpdateState::Activated {
            return;
        }
        self.awaiting = None;
        if let Some(release) = self.state.target() {
            self.publish(Event::HealthResult {
                release,
                ok,
                detail: detail.clone(),
            });
        }
        if ok {
            self.commit();
        } else {
            self.rollback_trial("E_HEALTH_FAILED", format!("health check failed: {detail}"));
        }
        self.step(now);
    }

    /// The commit was executed, or why not (retried at the next boot).
    pub fn handle_commit_done(&mut self, result: StepResult<()>, now: u64) {
        if self.awaiting != Some(Await::Commit) {
            return;
        }
        self.awaiting = None;
        match result {
            Err(e) => self.error("E_COMMIT_FAILED", e, self.state.installed_release),
            Ok(()) => {
                if let Some(m) = self.state.held.as_ref().map(|h| h.release.manifest_id) {
                    self.state.committed_manifest(m);
                    self.persist();
                }
                let keep = self.state.keep_manifests();
                self.actions.push_back(AgentAction::PruneStore { keep });
            }
        }
        self.step(now);
    }

    /// The rollback was executed (live or at the next boot), or why not.
    pub fn handle_rollback_done(&mut self, result: StepResult<Activation>, now: u64) {
        if self.awaiting != Some(Await::Rollback) {
            return;
        }
        self.awaiting = None;
        match result {
            Ok(Activation::Live) => {
                // The slot that ran before activation runs again.
                if let Some(before) = self.state.slot_before.take() {
                    self.state.slot = Some(before);
                    self.persist();
                }
            }
            Ok(Activation::RebootRequired) => {
                self.state.reboot_pending = true;
                self.persist();
                self.reboot();
                return;
            }
            Err(e) => self.error("E_ROLLBACK_FAILED", e, self.state.target()),
        }
        self.step(now);
    }

    /// Asks for the reboot that switches slots; `reboot_pending` is
    /// persisted before this, and cleared by [`Agent::handle_boot`].
    fn reboot(&mut self) {
        self.reboot_retry_at = None;
        self.actions.push_back(AgentAction::Reboot);
        self.awaiting = Some(Await::Reboot);
    }

    /// The reboot could not be started; it is retried every minute and
    /// nothing else starts meanwhile, because the slots are mid-switch.
    pub fn handle_reboot_failed(&mut self, reason: String, now: u64) {
        if self.awaiting != Some(Await::Reboot) {
            return;
        }
        self.awaiting = None;
        self.error("E_REBOOT_FAILED", reason, self.state.target());
        self.reboot_retry_at = Some(now.saturating_add(60));
        self.step(now);
    }

    /// Time passed: health deadlines, retries, windows, `not_before`.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.awaiting == Some(Await::Health)
            && self.state.health_deadline.is_some_and(|d| now >= d)
        {
            self.awaiting = None;
            let detail = "no answer before the health deadline".to_string();
            if let Some(release) = self.state.target() {
                self.publish(Event::HealthResult {
                    release,
                    ok: false,
                    detail: detail.clone(),
                });
            }
            self.rollback_trial("E_HEALTH_TIMEOUT", detail);
        }
        self.step(now);
    }
}
