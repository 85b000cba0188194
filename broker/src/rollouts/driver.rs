//! The driver's state behind the [`super::Rollouts`] lock: planners, the
//! mapping from accepted reports to planner inputs, and one round of
//! deciding (no I/O but the registry; publishing happens in `run`).

use std::collections::BTreeMap;
use std::sync::Arc;

use meshota_protocol::topics::Topic;
use meshota_protocol::{DeviceId, Signed};
use meshota_protocol::{
    Event, FleetId, ReleaseId, ReportBody, RolloutGate, RolloutId, Status, UpdateState,
};

use super::{CreateRollout, RolloutView, RolloutsError};
use crate::registry::{DeviceRecord, Registry, RolloutRecord};
use crate::rollout::{
    DeviceInfo, DeviceReport, Planner, PlannerCommand, PlannerOutput, RolloutSpec, RolloutState,
};

/// One rollout the driver owns.
pub(super) struct Entry {
    pub(super) planner: Planner,
    pub(super) retired: bool,
    pub(super) topic: Topic,
}

/// Something a round decided, to be done outside the lock.
#[derive(Debug)]
pub(super) enum Work {
    /// Sign `gate` and publish it retained with the release on `topic`.
    Gate {
        /// The announce topic.
        topic: Topic,
        /// The signed release document (codec bytes).
        release: Vec<u8>,
        /// The gate to sign.
        gate: RolloutGate,
    },
    /// Send a signed rollback command to each device.
    Rollback {
        /// The release rolled out.
        release: ReleaseId,
        /// The devices.
        devices: Vec<DeviceId>,
    },
}

pub(super) struct Inner {
    registry: Arc<Registry>,
    fleet: FleetId,
    entries: BTreeMap<RolloutId, Entry>,
    /// Outputs drained from planners but not yet handed to `run`, so a
    /// round triggered by an API call is not lost.
    work: Vec<Work>,
    dirty: bool,
}

/// A report as the planner sees it, or `None` when it says nothing about
/// the progress of a release.
pub(super) fn planner_report(body: &ReportBody, counter: u64) -> Option<DeviceReport> {
    let (release, state, bytes) = match body {
        ReportBody::Status(s) => (status_release(s), s.state, None),
        ReportBody::Event(Event::StateChanged { release, to, .. }) => (*release, *to, None),
        ReportBody::Event(Event::Progress { release, bytes, .. }) => {
            (Some(*release), UpdateState::Downloading, Some(*bytes))
        }
        ReportBody::Event(_) => return None,
    };
    Some(DeviceReport {
        release,
        state,
        bytes,
        counter,
    })
}

/// The release a status's state is about: the one in progress, or the one
/// just committed (the agent clears its target once the update settles).
fn status_release(s: &Status) -> Option<ReleaseId> {
    s.target.or(match s.state {
        UpdateState::Committed => s.release,
        _ => None,
    })
}

fn device_info(rec: &DeviceRecord) -> Option<DeviceInfo> {
    Some(DeviceInfo {
        id: rec.id.clone(),
        groups: rec.groups.clone(),
        compatible: rec.compatible.clone()?,
        site: rec.site.clone(),
    })
}

fn corrupt(id: impl ToString, e: impl ToString) -> RolloutsError {
    RolloutsError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    }
}

/// Whether a rollout still holds its announce topic.
fn live(state: RolloutState) -> bool {
    !matches!(state, RolloutState::Aborted | RolloutState::Completed)
}

impl Inner {
    pub(super) fn open(
        registry: Arc<Registry>,
        fleet: FleetId,
        now: u64,
    ) -> Result<Self, RolloutsError> {
        let mut entries = BTreeMap::new();
        for rec in registry.rollouts()? {
            let planner = Planner::restore(&rec.snapshot).map_err(|e| corrupt(rec.id, e))?;
            let release = registry
                .releases()?
                .into_iter()
                .find(|r| r.id == planner.spec().release_id)
                .ok_or_else(|| corrupt(rec.id, "its release is no longer published"))?;
            let topic = Topic::Announce {
                fleet: fleet.clone(),
                compatible: release.compatible,
                channel: release.channel,
            };
            entries.insert(
                rec.id,
                Entry {
                    planner,
                    retired: rec.retired,
                    topic,
                },
            );
        }
        let mut inner = Self {
            registry,
            fleet,
            entries,
            work: Vec::new(),
            dirty: false,
        };
        // Devices enrolled or changed while we were down.
        for rec in inner.registry.devices()? {
            if let Some(info) = device_info(&rec) {
                for e in inner.entries.values_mut().filter(|e| !e.retired) {
                    e.planner.handle_device(info.clone(), now);
                }
            }
        }
        // Publish each live gate again: the same gate and sequence (ed25519
        // is deterministic), but with this run's hints, since the seeder's
        // addresses may have changed with the restart.
        let mut work = Vec::new();
        for e in inner.entries.values().filter(|e| !e.retired) {
            if let Some(gate) = e.planner.current_gate() {
                let release_id = e.planner.spec().release_id;
                let release = inner
                    .registry
                    .signed_release(&release_id)?
                    .ok_or(RolloutsError::NoSignedRelease(release_id))?;
                work.push(Work::Gate {
                    topic: e.topic.clone(),
                    release,
                    gate: gate.clone(),
                });
            }
        }
        inner.work = work;
        inner.dirty = true;
        Ok(inner)
    }

    fn find(&self, id: &str) -> Result<RolloutId, RolloutsError> {
        let id = id.trim();
        let mut hits = self
            .entries
            .keys()
            .filter(|k| !id.is_empty() && k.to_string().starts_with(id));
        match (hits.next(), hits.next()) {
            (Some(k), None) => Ok(*k),
            _ => Err(RolloutsError::UnknownRollout(id.to_string())),
        }
    }

    fn view(e: &Entry, now: u64) -> RolloutView {
        RolloutView {
            status: e.planner.status(now),
            topic: e.topic.to_string(),
            retired: e.retired,
        }
    }

    pub(super) fn view_of(&self, id: &str, now: u64) -> Result<RolloutView, RolloutsError> {
        let id = self.find(id)?;
        let e = self
            .entries
            .get(&id)
            .ok_or_else(|| RolloutsError::UnknownRollout(id.to_string()))?;
        Ok(Self::view(e, now))
    }

    pub(super) fn views(&self, now: u64) -> Vec<RolloutView> {
        let mut out: Vec<_> = self.entries.values().map(|e| Self::view(e, now)).collect();
        out.sort_by_key(|v| std::cmp::Reverse(v.status.gate_sequence));
        out
    }

    pub(super) fn views_light(&self) -> Vec<RolloutState> {
        self.entries.values().map(|e| e.planner.state()).collect()
    }

    pub(super) fn create(
        &mut self,
        req: CreateRollout,
        now: u64,
    ) -> Result<RolloutView, RolloutsError> {
        let release = self
            .registry
            .releases()?
            .into_iter()
            .find(|r| r.id == req.release)
            .ok_or(RolloutsError::UnknownRelease(req.release))?;
        if self.registry.signed_release(&release.id)?.is_none() {
            return Err(RolloutsError::NoSignedRelease(release.id));
        }
        let topic = Topic::Announce {
            fleet: self.fleet.clone(),
            compatible: release.compatible.clone(),
            channel: release.channel.clone(),
        };
        for (id, e) in &self.entries {
            if !e.retired && e.topic == topic && live(e.planner.state()) {
                return Err(RolloutsError::Conflict {
                    other: *id,
                    release: e.planner.spec().release_id,
                    state: e.planner.state(),
                    topic: topic.to_string(),
                });
            }
        }
        let above_all = self
            .entries
            .values()
            .map(|e| e.planner.next_sequence())
            .max()
            .unwrap_or(1);
        let first_sequence = above_all.max(now.saturating_mul(1000)).max(1);
        let mut spec = RolloutSpec::new(release.id, release.compatible.clone(), first_sequence);
        if let Some(w) = req.waves {
            spec.waves = w;
        }
        spec.groups = req.groups;
        if let Some(v) = req.success_threshold {
            spec.success_threshold_pct = v;
        }
        if let Some(v) = req.error_threshold {
            spec.error_threshold_pct = v;
        }
        if let Some(v) = req.soak_secs {
            spec.soak_secs = v;
        }
        if let Some(v) = req.action {
            spec.action = v;
        }
        spec.not_before = req.not_before.unwrap_or(now);
        spec.max_parallel = req.max_parallel;
        spec.prefetch = req.prefetch;
        if let Some(v) = req.gate_lifetime_secs {
            spec.gate_lifetime_secs = v;
        }
        if let Some(v) = req.report_timeout_secs {
            spec.report_timeout_secs = v;
        }
        let id = RolloutId::digest(
            format!("meshota-rollout-v1\0{}\0{first_sequence}", release.id).as_bytes(),
        );
        let mut planner = Planner::new(id, spec, now)?;
        for rec in self.registry.devices()? {
            if let Some(info) = device_info(&rec) {
                planner.handle_device(info, now);
            }
        }
        // Only now that the new rollout is certain: the old one on this
        // topic stops publishing, so its re-signed gates cannot overwrite
        // the new announcement.
        for (old, e) in self.entries.iter_mut() {
            if e.topic == topic && !e.retired {
                e.retired = true;
                let snapshot = e.planner.snapshot().map_err(|err| corrupt(old, err))?;
                self.registry.put_rollout(&RolloutRecord {
                    id: *old,
                    snapshot,
                    retired: true,
                })?;
            }
        }
        self.dirty = true;
        let entry = Entry {
            planner,
            retired: false,
            topic,
        };
        let view = Self::view(&entry, now);
        self.entries.insert(id, entry);
        self.persist()?;
        Ok(view)
    }

    pub(super) fn command(
        &mut self,
        id: &str,
        cmd: PlannerCommand,
        now: u64,
    ) -> Result<RolloutView, RolloutsError> {
        let id = self.find(id)?;
        let e = self
            .entries
            .get_mut(&id)
            .ok_or_else(|| RolloutsError::UnknownRollout(id.to_string()))?;
        if e.retired {
            return Err(RolloutsError::Command(
                crate::rollout::CommandError::NotAllowed {
                    command: cmd,
                    state: e.planner.state(),
                },
            ));
        }
        e.planner.handle_command(cmd, now)?;
        self.dirty = true;
        // Drain now so the decision is persisted before the caller hears
        // it was taken.
        self.drain()?;
        self.view_of(&id.to_string(), now)
    }

    /// Feeds one accepted report to every live planner.
    pub(super) fn handle_report(
        &mut self,
        device: &DeviceId,
        body: &ReportBody,
        counter: u64,
        now: u64,
    ) {
        if let ReportBody::Status(s) = body {
            if let Some(compatible) = &s.compatible {
                let info = DeviceInfo {
                    id: device.clone(),
                    groups: s.groups.clone(),
                    compatible: compatible.clone(),
                    site: Some(s.site.clone()),
                };
                for e in self.entries.values_mut().filter(|e| !e.retired) {
                    e.planner.handle_device(info.clone(), now);
                }
            }
        }
        if let Some(report) = planner_report(body, counter) {
            for e in self.entries.values_mut().filter(|e| !e.retired) {
                e.planner.handle_report(device, report.clone(), now);
            }
        }
        self.dirty = true;
    }

    /// Wakes planners that are due, drains every planner's outputs into
    /// work, and persists if anything changed. Returns the work and the
    /// next wake-up.
    pub(super) fn round(&mut self, now: u64) -> Result<(Vec<Work>, Option<u64>), RolloutsError> {
        for e in self.entries.values_mut().filter(|e| !e.retired) {
            if e.planner.poll_timeout().is_some_and(|t| t <= now) {
                e.planner.handle_timeout(now);
                self.dirty = true;
            }
        }
        self.drain()?;
        let next = self
            .entries
            .values()
            .filter(|e| !e.retired)
            .filter_map(|e| e.planner.poll_timeout())
            .min();
        Ok((std::mem::take(&mut self.work), next))
    }

    /// Moves planner outputs into `work`, then persists: nothing decided
    /// is published before it is durable.
    fn drain(&mut self) -> Result<(), RolloutsError> {
        for (id, e) in self.entries.iter_mut() {
            while let Some(out) = e.planner.poll_output() {
                self.dirty = true;
                let release_id = e.planner.spec().release_id;
                match out {
                    PlannerOutput::PublishGate(gate) if !e.retired => {
                        let release = self
                            .registry
                            .signed_release(&release_id)?
                            .ok_or(RolloutsError::NoSignedRelease(release_id))?;
                        self.work.push(Work::Gate {
                            topic: e.topic.clone(),
                            release,
                            gate,
                        });
                    }
                    PlannerOutput::PublishGate(_) => {}
                    PlannerOutput::WaveStarted { wave } => {
                        tracing::info!(rollout = %id.short(), wave, "wave started");
                    }
                    PlannerOutput::Halted { reason } => {
                        tracing::warn!(rollout = %id.short(), %reason, "rollout halted");
                    }
                    PlannerOutput::Completed => {
                        tracing::info!(rollout = %id.short(), "rollout completed");
                    }
                    PlannerOutput::Rollback { devices } => {
                        tracing::warn!(rollout = %id.short(), devices = devices.len(), "rolling back");
                        self.work.push(Work::Rollback {
                            release: release_id,
                            devices,
                        });
                    }
                }
            }
        }
        self.persist()
    }

    fn persist(&mut self) -> Result<(), RolloutsError> {
        if !self.dirty {
            return Ok(());
        }
        // Retired rollouts were written when they retired and never change.
        for (id, e) in self.entries.iter().filter(|(_, e)| !e.retired) {
            let snapshot = e.planner.snapshot().map_err(|err| corrupt(id, err))?;
            self.registry.put_rollout(&RolloutRecord {
                id: *id,
                snapshot,
                retired: e.retired,
            })?;
        }
        self.registry.flush()?;
        self.dirty = false;
        Ok(())
    }

    /// The fleet, for command topics.
    pub(super) fn fleet(&self) -> &FleetId {
        &self.fleet
    }

    /// The decoded signed release, for building an announcement.
    pub(super) fn decode_release(bytes: &[u8]) -> Option<Signed<meshota_protocol::Release>> {
        meshota_protocol::codec::decode(bytes).ok()
    }
}
