//! Reconciliation on start, and operator commands.

use meshota_protocol::verify::verify_command;
use meshota_protocol::{codec, CommandAction, ReleaseId, Signed, UpdateState, VerifyError};

use super::core::{Agent, Await};
use super::AgentAction;
use crate::install::SlotStatus;

impl Agent {
    /// Whether the device runs the slot of the release under way:
    /// by release id when the backend knows it, else by slot name against
    /// the slot active before activation; `None` when it cannot tell.
    fn on_new_slot(&self, st: &SlotStatus) -> Option<bool> {
        let target = self.state.target()?;
        if let Some(active) = st.active_release {
            return Some(active == target);
        }
        match (&st.active_slot, &self.state.slot_before) {
            (Some(a), Some(b)) => Some(a != b),
            _ => None,
        }
    }

    /// The device (re)started and the backend reports the real slot state.
    /// Whatever was in flight is gone; the slots decide what happened.
    pub fn handle_boot(&mut self, st: SlotStatus, now: u64) {
        self.awaiting = None;
        self.inhibit_clear = false;
        self.state.reboot_pending = false;
        if st.active_slot.is_some() {
            self.state.slot.clone_from(&st.active_slot);
        }
        let on_new = self.on_new_slot(&st);
        let rel = self.state.target();
        match self.state.phase {
            UpdateState::Activated => {
                if on_new == Some(false) {
                    self.fell_back(&st);
                } else {
                    self.state.trial_boots += 1;
                    if self.state.trial_boots > self.cfg.max_trial_boots {
                        let n = self.state.trial_boots - 1;
                        self.rollback_trial(
                            "E_TRIAL_BOOTS",
                            format!("{n} trial boots without a passing health check"),
                        );
                    } else {
                        self.persist();
                        self.start_health(now);
                    }
                }
            }
            UpdateState::Downloading
            | UpdateState::Downloaded
            | UpdateState::Installing
            | UpdateState::Installed
                if on_new == Some(true) =>
            {
                // Switched before the agent could note it: a trial boot.
                self.state.trial_boots = 1;
                self.go(UpdateState::Activated);
                self.start_health(now);
            }
            UpdateState::Committed if on_new == Some(false) && st.active_release.is_some() => {
                self.fell_back(&st);
            }
            UpdateState::Committed if st.trial => {
                // Crashed between deciding to commit and committing.
                if let Some(release) = rel {
                    self.actions.push_back(AgentAction::Commit { release });
                    self.awaiting = Some(Await::Commit);
                }
            }
            UpdateState::Idle | UpdateState::RolledBack | UpdateState::Failed if st.trial => {
                // On a slot never confirmed healthy: leave it.
                self.actions
                    .push_back(AgentAction::Rollback { release: rel });
                self.awaiting = Some(Await::Rollback);
            }
            _ => {}
        }
        if self.state.at_rest() && st.active_release.is_some() && self.awaiting.is_none() {
            self.state.installed_release = st.active_release;
            self.state.installed_version.clone_from(&st.active_version);
        }
        self.persist();
        self.publish_status();
        self.step(now);
    }

    /// The device runs the previous slot although an update was on trial
    /// or committed: the bootloader fell back.
    fn fell_back(&mut self, st: &SlotStatus) {
        let rel = self.state.target();
        self.error(
            "E_FELL_BACK",
            "the device is running the previous slot: the bootloader fell back",
            rel,
        );
        if let Some(r) = rel {
            self.state.give_up(r);
        }
        if st.active_release.is_some() {
            self.state.installed_release = st.active_release;
            self.state.installed_version.clone_from(&st.active_version);
        } else if self.state.installed_release == rel {
            if let Some((r, v)) = self.state.previous.take() {
                self.state.installed_release = r;
                self.state.installed_version = v;
            }
        }
        self.state.trial_boots = 0;
        self.state.health_deadline = None;
        self.go(UpdateState::RolledBack);
    }

    /// An operator command (`Signed<Command>` bytes from the cmd topic).
    /// Invalid ones are reported with their error code and ignored.
    pub fn handle_command(&mut self, bytes: &[u8], now: u64) {
        let signed = match codec::decode::<Signed<meshota_protocol::Command>>(bytes) {
            Ok(s) => s,
            Err(e) => {
                let e = VerifyError::from(e);
                self.error(e.code(), e.to_string(), None);
                return;
            }
        };
        let cmd = match verify_command(
            &signed,
            &self.cfg.root,
            &self.cfg.fleet,
            &self.cfg.device,
            self.state.last_command_sequence,
            now,
        ) {
            Ok(c) => c,
            Err(e) => {
                self.error(e.code(), e.to_string(), None);
                return;
            }
        };
        self.state.last_command_sequence = cmd.sequence;
        self.persist();
        match cmd.action {
            CommandAction::CheckNow => {
                self.fetch_retry_at = None;
                self.inhibit_retry_at = None;
                self.actions.push_back(AgentAction::Resync);
                self.publish_status();
            }
            CommandAction::Cancel => self.cancel(),
            CommandAction::Rollback { to } => self.operator_rollback(to),
        }
        self.step(now);
    }

    fn cancel(&mut self) {
        self.state.next = None;
        match self.state.phase {
            UpdateState::Downloading => {
                if let Some(release) = self.state.target() {
                    self.actions.push_back(AgentAction::CancelFetch { release });
                }
                self.fail("E_CANCELLED", "cancelled by operator".into());
            }
            UpdateState::Downloaded | UpdateState::Installed => {
                self.fail("E_CANCELLED", "cancelled by operator".into());
            }
            UpdateState::Installing => {
                self.state.cancel_requested = true;
                self.persist();
            }
            UpdateState::Activated => self.error(
                "E_CANNOT_CANCEL",
                "the update is already activated; send rollback instead",
                self.state.target(),
            ),
            _ => self.persist(),
        }
    }

    fn operator_rollback(&mut self, to: Option<ReleaseId>) {
        if self.state.phase == UpdateState::Activated {
            self.awaiting = None;
            self.rollback_trial(
                "E_OPERATOR_ROLLBACK",
                "rollback requested by operator".into(),
            );
            return;
        }
        if !self.state.at_rest() || self.awaiting.is_some() {
            self.error(
                "E_BUSY",
                "an update step is under way; retry rollback when it ends",
                self.state.target(),
            );
            return;
        }
        let Some((prev_rel, prev_ver)) = self.state.previous.clone() else {
            self.error(
                "E_NOTHING_TO_ROLL_BACK",
                "no previous release is recorded",
                None,
            );
            return;
        };
        if to.is_some_and(|t| Some(t) != prev_rel) {
            self.error(
                "E_ROLLBACK_TARGET",
                "only the previous release (the other slot) can be returned to",
                to,
            );
            return;
        }
        let leaving = self.state.installed_release;
        if let Some(r) = leaving {
            self.state.give_up(r);
        }
        self.state.installed_release = prev_rel;
        self.state.installed_version = prev_ver;
        self.state.previous = None;
        self.go(UpdateState::RolledBack);
        self.actions
            .push_back(AgentAction::Rollback { release: leaving });
        self.awaiting = Some(Await::Rollback);
    }
}
