//! Planner tests under virtual time: no clock, no sleeps. Devices are
//! judged from their side, with the protocol's own `eligible`, so the
//! tests check what a device would do with the gates, not the planner's
//! bookkeeping.

use std::collections::BTreeMap;

use meshota_protocol::release::{eligible, FULL_SHARE};
use meshota_protocol::{Compatible, Group};

use super::*;

mod control;
mod gates;
mod persist;
mod prefetch;
mod random;
mod reports;
mod sites;
mod waves;

const T0: u64 = 1_800_000_000;
const SOAK: u64 = 600;

fn rel() -> ReleaseId {
    ReleaseId::digest(b"release-1")
}

fn dev(i: usize) -> DeviceId {
    DeviceId::new(format!("dev-{i:04}")).unwrap()
}

fn compat() -> Compatible {
    Compatible::new("rpi4").unwrap()
}

fn group(name: &str) -> Group {
    Group::new(name).unwrap()
}

fn spec() -> RolloutSpec {
    let mut s = RolloutSpec::new(rel(), compat(), 100);
    s.soak_secs = SOAK;
    s.not_before = T0;
    s
}

/// A planner, a fleet, a virtual clock and every output so far.
struct Harness {
    p: Planner,
    now: u64,
    fleet: BTreeMap<DeviceId, Vec<Group>>,
    counters: BTreeMap<DeviceId, u64>,
    outputs: Vec<PlannerOutput>,
}

impl Harness {
    /// `n` devices, device `i` in the groups `groups(i)`; not started.
    fn new(spec: RolloutSpec, n: usize, groups: impl Fn(usize) -> Vec<Group>) -> Self {
        let mut p = Planner::new(RolloutId::digest(b"rollout-1"), spec, T0 - 100).unwrap();
        let mut fleet = BTreeMap::new();
        for i in 0..n {
            let info = DeviceInfo {
                id: dev(i),
                groups: groups(i),
                compatible: compat(),
                site: None,
            };
            fleet.insert(info.id.clone(), info.groups.clone());
            p.handle_device(info, T0 - 100);
        }
        Self {
            p,
            now: T0 - 100,
            fleet,
            counters: BTreeMap::new(),
            outputs: Vec::new(),
        }
    }

    fn plain(spec: RolloutSpec, n: usize) -> Self {
        Self::new(spec, n, |_| Vec::new())
    }

    /// Outputs since the last call (also kept in `outputs`).
    fn drain(&mut self) -> Vec<PlannerOutput> {
        let new: Vec<_> = std::iter::from_fn(|| self.p.poll_output()).collect();
        self.outputs.extend(new.iter().cloned());
        new
    }

    fn at(&mut self, t: u64) {
        self.now = t;
        self.p.handle_timeout(t);
        self.drain();
    }

    /// Fires every timer up to `t`, as a driver would, then stands at `t`.
    fn run_until(&mut self, t: u64) {
        while let Some(next) = self.p.poll_timeout() {
            if next > t {
                break;
            }
            self.at(next);
        }
        self.at(t);
    }

    fn gate(&self) -> RolloutGate {
        self.p.current_gate().cloned().unwrap()
    }

    fn gates(&self) -> Vec<RolloutGate> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                PlannerOutput::PublishGate(g) => Some(g.clone()),
                _ => None,
            })
            .collect()
    }

    /// Devices the live gate lets act, judged as a device would.
    fn targeted(&self) -> Vec<DeviceId> {
        let g = self.gate();
        self.fleet
            .iter()
            .filter(|(id, groups)| eligible(id, groups, &g))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn report(&mut self, d: &DeviceId, state: UpdateState) -> ReportOutcome {
        let c = self.counters.entry(d.clone()).or_insert(0);
        *c += 1;
        let r = DeviceReport {
            release: Some(rel()),
            state,
            bytes: None,
            counter: *c,
        };
        let out = self.p.handle_report(d, r, self.now);
        self.drain();
        out
    }

    /// Takes each device through a healthy install to a commit.
    fn commit(&mut self, devices: &[DeviceId]) {
        for d in devices {
            for s in [
                UpdateState::Downloading,
                UpdateState::Installing,
                UpdateState::Activated,
                UpdateState::Committed,
            ] {
                self.report(d, s);
            }
        }
    }

    fn commit_targeted(&mut self) {
        let t = self.targeted();
        let fresh: Vec<_> = t
            .into_iter()
            .filter(|d| !self.counters.contains_key(d))
            .collect();
        self.commit(&fresh);
    }

    fn status(&self) -> RolloutStatus {
        self.p.status(self.now)
    }

    fn wave_started(&self) -> Vec<usize> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                PlannerOutput::WaveStarted { wave } => Some(*wave),
                _ => None,
            })
            .collect()
    }
}
