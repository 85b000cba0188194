//! The simulator's install backend: verifies the payload, takes the
//! scenario's install time, and keeps A/B slot state in memory.
//!
//! The payload is streamed out of the store through the same verifier a
//! real backend uses ([`write_payload`] into a sink), so a device never
//! commits bytes it did not verify, and nothing is written anywhere. The
//! slot state lives in a [`Slots`] the fleet runner keeps across agent
//! restarts, as a real device keeps its disk across a crash.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshota_node::install::{
    write_payload, Activation, HealthOutcome, InstallBackend, InstallError, InstallRequest,
    SlotStatus,
};
use meshota_protocol::semver::Version;
use meshota_protocol::ReleaseId;

const NAMES: [&str; 2] = ["a", "b"];

/// What happened to a device's slots, for the run's tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotEvent {
    /// The payload verified and the inactive slot was "written".
    Installed,
    /// The trial slot was made permanent.
    Committed,
    /// The device went back to its previous slot.
    RolledBack,
}

/// The A/B state of one device, surviving restarts of its agent.
#[derive(Debug, Default, Clone)]
pub struct Slots {
    active: Option<usize>,
    records: [Option<(ReleaseId, Version)>; 2],
    /// While on trial: the slot to fall back to (`None`: none was active).
    trial: Option<Option<usize>>,
}

/// Shared slot state of one device.
pub type SharedSlots = Arc<Mutex<Slots>>;

/// The simulator's [`InstallBackend`].
pub struct SimBackend {
    slots: SharedSlots,
    install_time: Duration,
    health_time: Duration,
    healthy: bool,
    events: Box<dyn FnMut(SlotEvent) + Send>,
}

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend")
            .field("slots", &self.slots)
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

impl SimBackend {
    /// A backend over `slots` whose installs take `install_time`, health
    /// checks `health_time`, failing when `healthy` is false; `events`
    /// hears about installs, commits and rollbacks.
    pub fn new(
        slots: SharedSlots,
        install_time: Duration,
        health_time: Duration,
        healthy: bool,
        events: Box<dyn FnMut(SlotEvent) + Send>,
    ) -> Self {
        Self {
            slots,
            install_time,
            health_time,
            healthy,
            events,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Updates are single assignments: consistent after a panic.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl InstallBackend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn status(&mut self) -> Result<SlotStatus, InstallError> {
        let s = self.slots();
        let rec = s.active.and_then(|a| s.records[a].clone());
        Ok(SlotStatus {
            active_slot: s.active.map(|a| NAMES[a].to_string()),
            active_release: rec.as_ref().map(|r| r.0),
            active_version: rec.map(|r| r.1),
            trial: s.trial.is_some(),
        })
    }

    fn install(&mut self, req: &InstallRequest<'_>) -> Result<String, InstallError> {
        let slot = match self.slots().active {
            Some(0) => 1,
            _ => 0,
        };
        self.slots().records[slot] = None;
        write_payload(
            req.manifest,
            req.store,
            &mut std::io::sink(),
            Path::new("<sim>"),
        )?;
        // The agent thread is the device's own: blocking it is the point.
        std::thread::sleep(self.install_time);
        self.slots().records[slot] = Some((req.release, req.manifest.version.clone()));
        (self.events)(SlotEvent::Installed);
        Ok(NAMES[slot].to_string())
    }

    fn activate(&mut self, release: &ReleaseId) -> Result<Activation, InstallError> {
        let mut s = self.slots();
        let target = (0..2)
            .find(|&i| s.records[i].as_ref().is_some_and(|r| &r.0 == release))
            .ok_or_else(|| InstallError::State(format!("no slot holds release {release}")))?;
        if s.active != Some(target) {
            s.trial = Some(s.active);
            s.active = Some(target);
        }
        Ok(Activation::Live)
    }

    fn health(&mut self, _timeout: Duration) -> HealthOutcome {
        std::thread::sleep(self.health_time);
        if self.healthy {
            Ok("simulated health check passed".into())
        } else {
            Err("simulated health check failure (scenario health_fail_rate)".into())
        }
    }

    fn commit(&mut self) -> Result<(), InstallError> {
        self.slots().trial = None;
        (self.events)(SlotEvent::Committed);
        Ok(())
    }

    fn rollback(&mut self) -> Result<Activation, InstallError> {
        {
            let mut s = self.slots();
            match s.trial.take() {
                Some(back) => s.active = back,
                None => {
                    let other = s.active.map_or(0, |a| 1 - a);
                    if s.records[other].is_none() {
                        return Err(InstallError::State(format!(
                            "slot {} holds no release to roll back to",
                            NAMES[other]
                        )));
                    }
                    s.active = Some(other);
                }
            }
        }
        (self.events)(SlotEvent::RolledBack);
        Ok(Activation::Live)
    }
}
