//! The control plane of a virtual run: the broker's rollout planner, the
//! signing of its gates, their delivery to every device's agent, the
//! agents' reports back, and the install backend's modelled answers.
//!
//! Keys come from fixed seeds (one release key, one rollout key, each a
//! 1-of-1 role), so runs replay exactly. Each announcement's two
//! signatures are checked once for real per run
//! ([`check_announcement_signatures`]); every agent then runs all its
//! device-specific checks on the proof
//! ([`Agent::handle_announcement_checked`]). Checking them 100,000 times
//! would prove nothing more and cost about 85 µs a device and gate. The agents and the planner use
//! seconds since the epoch; virtual time starts at [`EPOCH`].

use meshota_broker::rollout::{DeviceInfo, DeviceReport, Planner, PlannerOutput, RolloutSpec};
use meshota_node::agent::{Agent, AgentAction, AgentConfig, AgentState};
use meshota_node::install::{Activation, SlotStatus};
use meshota_protocol::semver::Version;
use meshota_protocol::verify::check_announcement_signatures;
use meshota_protocol::{
    Announcement, Channel, Compatible, DeviceId, FleetId, Release, ReleaseId, ReportBody, RoleKeys,
    RolloutGate, RolloutId, SecretKey, Signed, SiteId, TrustRoot, UpdateState,
};

use crate::progress::Progress;

use super::net::Micros;
use super::{Ev, Sim, Step, VirtError};
use crate::scenario::Scenario;

/// Virtual time zero, in seconds since the Unix epoch (late 2027).
pub(super) const EPOCH: u64 = 1_800_000_000;

/// Virtual microseconds as the agents' and planner's clock.
pub(super) fn secs(t: Micros) -> u64 {
    EPOCH + t / 1_000_000
}

/// The agents' and planner's clock back to virtual microseconds.
fn micros(t: u64) -> Micros {
    t.saturating_sub(EPOCH).saturating_mul(1_000_000)
}

/// Keys, the signed release, and the fleet's identity.
pub(super) struct Control {
    rollout_key: SecretKey,
    pub root: TrustRoot,
    compatible: Compatible,
    fleet: FleetId,
    release: Signed<Release>,
    release_id: ReleaseId,
    /// Announcements handed to agents.
    pub delivered: u64,
    /// ed25519 signature checks run.
    pub signature_checks: u64,
}

impl Control {
    pub fn new(s: &Scenario, manifest: &meshota_protocol::Manifest) -> Result<Self, VirtError> {
        let root_key = SecretKey::from_seed([1; 32]);
        let release_key = SecretKey::from_seed([2; 32]);
        let rollout_key = SecretKey::from_seed([4; 32]);
        let role = |k: &SecretKey| RoleKeys {
            keys: vec![k.public()],
            threshold: 1,
        };
        let root = TrustRoot {
            version: 1,
            expires_at: EPOCH + 10 * 365 * 86_400,
            root: role(&root_key),
            release: role(&release_key),
            rollout: role(&rollout_key),
        };
        let release = Release {
            manifest_id: manifest.id()?,
            name: manifest.name.clone(),
            version: Version::new(1, 0, 0),
            compatible: manifest.compatible.clone(),
            channel: Channel::new("stable")?,
            payload_size: s.bundle_bytes,
            sequence: 1,
            expires_at: EPOCH + 365 * 86_400,
        };
        let release = Signed::sign(&release, &[&release_key])?;
        Ok(Self {
            rollout_key,
            root,
            compatible: manifest.compatible.clone(),
            fleet: FleetId::new("sim")?,
            release_id: release.id(),
            release,
            delivered: 0,
            signature_checks: 0,
        })
    }

    /// Device `d`'s id and its agent, booted on slot `a` with nothing
    /// installed.
    pub fn agent(&self, d: u32, site: u32) -> Result<(DeviceId, Agent), VirtError> {
        let id = DeviceId::new(format!("dev-{d}"))?;
        let mut cfg = AgentConfig::new(
            id.clone(),
            self.fleet.clone(),
            SiteId::new(format!("site-{site}"))?,
            self.compatible.clone(),
            self.root.clone(),
        );
        // Progress events only feed dashboards; the model accounts bytes.
        cfg.progress_interval = u64::MAX;
        let mut agent = Agent::new(cfg, AgentState::default());
        let slot = SlotStatus {
            active_slot: Some("a".into()),
            ..SlotStatus::default()
        };
        agent.handle_boot(slot, EPOCH);
        // Boot reports go to the registry, which the planner is fed from
        // directly; drop them.
        while agent.poll_action().is_some() {}
        Ok((id, agent))
    }

    /// The planner for the scenario's waves, fed the whole fleet.
    pub fn planner(
        &self,
        s: &Scenario,
        ids: impl Iterator<Item = DeviceId>,
    ) -> Result<Planner, VirtError> {
        let mut spec = RolloutSpec::new(self.release_id, self.compatible.clone(), 1);
        spec.waves.clone_from(&s.waves);
        spec.soak_secs = s.soak_s;
        spec.prefetch = s.prefetch;
        spec.success_threshold_pct = s.success_threshold_pct;
        spec.error_threshold_pct = s.error_threshold_pct;
        let mut p = Planner::new(RolloutId::digest(b"sim"), spec, EPOCH)?;
        for id in ids {
            let info = DeviceInfo {
                id,
                groups: Vec::new(),
                compatible: self.compatible.clone(),
                // Virtual devices report no site to the planner, so it
                // names none (see `RolloutGate::devices`): virtual runs
                // keep their figures until that is modelled.
                site: None,
            };
            p.handle_device(info, EPOCH);
        }
        Ok(p)
    }

    /// Signs `gate` with the rollout key, as the broker does before it
    /// publishes the announcement retained.
    fn announce(&self, gate: &RolloutGate) -> Result<Announcement, VirtError> {
        Ok(Announcement {
            release: self.release.clone(),
            gate: Signed::sign(gate, &[&self.rollout_key])?,
            bootstrap: Vec::new(),
            http_origin: None,
        })
    }
}

impl Sim<'_> {
    /// Closes the running wave's record at `t`, if one is open.
    fn end_wave(&mut self, t: f64, progress: &mut dyn FnMut(Progress)) {
        let n = self.out.waves.len();
        if let Some(last) = self.out.waves.last_mut() {
            if last.1 == last.0 {
                last.1 = t;
                progress(Progress::WaveFinished {
                    wave: n - 1,
                    at_s: t,
                });
            }
        }
    }

    /// Acts on everything the planner has to say.
    pub(super) fn drain_planner(&mut self, now: Micros, progress: &mut dyn FnMut(Progress)) {
        let t = now as f64 / 1e6;
        while let Some(out) = self.planner.poll_output() {
            match out {
                PlannerOutput::PublishGate(gate) => {
                    // A gate that cannot be encoded cannot be signed; the
                    // broker would not publish it either.
                    if let Ok(ann) = self.ctl.announce(&gate) {
                        self.out.gates += 1;
                        self.announcements.push(ann);
                        let k = (self.announcements.len() - 1) as u32;
                        let lat = 1000 * self.s.wan_latency_ms;
                        self.push(now + lat, Ev::Broadcast(k));
                    }
                }
                PlannerOutput::WaveStarted { wave } => {
                    self.end_wave(t, progress);
                    self.out.waves.push((t, t));
                    let devices = self
                        .planner
                        .status(secs(now))
                        .waves
                        .get(wave)
                        .map_or(0, |w| w.counts.targeted as usize);
                    progress(Progress::WaveStarted {
                        wave,
                        at_s: t,
                        devices,
                    });
                }
                PlannerOutput::Halted { .. } => {
                    self.out.halted = true;
                    self.end_wave(t, progress);
                }
                PlannerOutput::Completed => {
                    self.out.completed = true;
                    self.end_wave(t, progress);
                }
                PlannerOutput::Rollback { .. } => {}
            }
        }
        // Once the rollout completed or halted, the planner only re-signs
        // its gate every half lifetime, forever; nothing the run measures
        // depends on that, so the run ends when the devices settle.
        let settled = self.out.completed || self.out.halted;
        if let Some(w) = self.planner.poll_timeout().filter(|_| !settled) {
            let w = micros(w).max(now + 1);
            if self.planner_wake.is_none_or(|cur| w < cur || cur <= now) {
                self.planner_wake = Some(w);
                self.push(w, Ev::PlannerWake);
            }
        }
    }

    /// Announcement `k` reaches every device: each agent verifies it and
    /// decides for itself whether the gate covers it.
    pub(super) fn broadcast(&mut self, k: usize, now: Micros) {
        let Some(ann) = self.announcements.get(k).cloned() else {
            return;
        };
        let t = secs(now);
        // Every device holds the same trust root, so the signatures are
        // checked once for real here; each agent still runs every
        // device-specific check (expiry, replay, class, eligibility). A
        // failed check leaves each agent to check, and refuse, itself.
        let proof = check_announcement_signatures(&ann, &self.ctl.root).ok();
        self.ctl.signature_checks += 2;
        for d in 0..self.devices.len() {
            self.ctl.delivered += 1;
            self.devices[d]
                .agent
                .handle_announcement_checked(ann.clone(), proof.as_ref(), t);
            self.step_agent(d as u32, now);
        }
    }

    /// A device's report reaches the planner.
    pub(super) fn report(&mut self, d: u32, counter: u64, state: UpdateState, now: Micros) {
        let rep = DeviceReport {
            release: Some(self.ctl.release_id),
            state,
            bytes: None,
            counter,
        };
        let id = self.devices[d as usize].id.clone();
        self.planner.handle_report(&id, rep, secs(now));
    }

    /// Executes everything device `d`'s agent asks for, answering the
    /// backend steps that take no modelled time at once.
    pub(super) fn step_agent(&mut self, d: u32, now: Micros) {
        let t = secs(now);
        let lat = 1000 * self.s.wan_latency_ms;
        loop {
            let Some(a) = self.devices[d as usize].agent.poll_action() else {
                break;
            };
            let dev = &mut self.devices[d as usize];
            match a {
                // The model has no disk and no crashes: nothing to write.
                AgentAction::Persist(_) => {}
                AgentAction::Publish(body) => {
                    dev.counter += 1;
                    // The status that follows every transition carries
                    // the state; that is what the planner counts.
                    if let ReportBody::Status(st) = body {
                        if st.target == Some(self.ctl.release_id) {
                            let counter = dev.counter;
                            self.push(
                                now + lat,
                                Ev::Report {
                                    dev: d,
                                    counter,
                                    state: st.state,
                                },
                            );
                        }
                    }
                }
                AgentAction::Fetch { .. } => self.start_fetch(d, now),
                AgentAction::CancelFetch { .. } => self.stop_fetch(d),
                AgentAction::CheckInhibitor => dev.agent.handle_inhibitor(None, t),
                AgentAction::Install { .. } => {
                    let done = now + self.s.install_s * 1_000_000;
                    self.push(done, Ev::StepDone(d, Step::Install));
                }
                AgentAction::Activate { .. } => {
                    dev.agent.handle_activate_done(Ok(Activation::Live), t);
                }
                AgentAction::RunHealth { .. } => {
                    let done = now + self.s.health_s * 1_000_000;
                    self.push(done, Ev::StepDone(d, Step::Health));
                }
                AgentAction::Commit { .. } => {
                    self.out.commit_times_s.push(now as f64 / 1e6);
                    dev.agent.handle_commit_done(Ok(()), t);
                }
                AgentAction::Rollback { .. } => {
                    self.out.rolled_back += 1;
                    dev.agent.handle_rollback_done(Ok(Activation::Live), t);
                }
                // Live activation never asks for a reboot; answer as a
                // restarted device would, on the slot it is on.
                AgentAction::Reboot => {
                    let slot = SlotStatus {
                        active_slot: dev.agent.state().slot.clone(),
                        ..SlotStatus::default()
                    };
                    dev.agent.handle_boot(slot, t);
                }
                AgentAction::Resync | AgentAction::PruneStore { .. } => {}
            }
        }
        if let Some(w) = self.devices[d as usize].agent.poll_timeout() {
            // The agent counts whole seconds: a deadline in the current
            // second is due at the next one.
            let w = micros(w).max(now - now % 1_000_000 + 1_000_000);
            let dev = &mut self.devices[d as usize];
            if dev.agent_wake.is_none_or(|cur| w < cur || cur <= now) {
                dev.agent_wake = Some(w);
                self.push(w, Ev::AgentWake(d));
            }
        }
    }

    /// The install backend answers a step that took modelled time.
    pub(super) fn step_done(&mut self, d: u32, step: Step, now: Micros) {
        let t = secs(now);
        let dev = &mut self.devices[d as usize];
        match step {
            Step::Install => dev.agent.handle_install_done(Ok("b".into()), t),
            Step::Health => {
                let ok = !dev.health_fails;
                let detail = if ok { "healthy" } else { "modelled failure" };
                dev.agent.handle_health_result(ok, detail.into(), t);
            }
        }
        self.step_agent(d, now);
    }

    /// The download finished (or gave up): tell the agent.
    pub(super) fn fetch_done(&mut self, d: u32, result: Result<(), String>, now: Micros) {
        self.devices[d as usize]
            .agent
            .handle_fetch_done(result, secs(now));
        self.step_agent(d, now);
    }
}
