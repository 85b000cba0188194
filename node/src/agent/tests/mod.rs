//! Agent tests: the sans-IO core under virtual time, and the core driven
//! through [`LocalDriver`] against the `dir` backend in temp directories.
//! Keys come from fixed seeds, so every run is identical.

mod crash;
mod flow;
mod mqtt_connect;
mod mqtt_e2e;
mod p2p_fetch;
mod policy;
mod reject;
mod trust;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use meshota_protocol::semver::Version;
use meshota_protocol::RoleKeys;
use meshota_protocol::{
    Action, Announcement, Channel, Compatible, DeviceId, Event, FleetId, InstallKind, Manifest,
    Release, ReportBody, RolloutGate, SecretKey, Signed, SiteId, TrustRoot, UpdateState,
};

use super::driver::{DriverParts, LocalDriver, PreloadedFetcher, Reporter, RunOutcome};
use super::{Agent, AgentAction, AgentConfig, AgentState};
use crate::install::dir::{DirBackend, HealthCommand};
use crate::install::testutil::{noise, put_payload, TestStore};
use crate::install::SlotStatus;

pub(crate) const NOW: u64 = 1_800_000_000;

pub(crate) struct World {
    pub release_keys: Vec<SecretKey>,
    pub rollout_key: SecretKey,
    pub root: TrustRoot,
}

fn role(keys: &[&SecretKey], threshold: u32) -> RoleKeys {
    RoleKeys {
        keys: keys.iter().map(|k| k.public()).collect(),
        threshold,
    }
}

pub(crate) fn world() -> World {
    let root_key = SecretKey::from_seed([1; 32]);
    let release_keys = vec![SecretKey::from_seed([2; 32]), SecretKey::from_seed([3; 32])];
    let rollout_key = SecretKey::from_seed([4; 32]);
    let root = TrustRoot {
        version: 1,
        expires_at: NOW + 10 * 365 * 86_400,
        root: role(&[&root_key], 1),
        release: role(&[&release_keys[0], &release_keys[1]], 2),
        rollout: role(&[&rollout_key], 1),
    };
    World {
        release_keys,
        rollout_key,
        root,
    }
}

pub(crate) fn rpi4() -> Compatible {
    Compatible::new("rpi4").unwrap()
}

impl World {
    pub fn release(&self, m: &Manifest, sequence: u64) -> Release {
        Release {
            manifest_id: m.id().unwrap(),
            name: m.name.clone(),
            version: m.version.clone(),
            compatible: m.compatible.clone(),
            channel: Channel::new("stable").unwrap(),
            payload_size: m.payload_size,
            sequence,
            expires_at: NOW + 365 * 86_400,
        }
    }
    pub fn sign_release(&self, r: &Release) -> Signed<Release> {
        Signed::sign(r, &[&self.release_keys[0], &self.release_keys[1]]).unwrap()
    }
    pub fn gate(&self, release: &Signed<Release>, sequence: u64, action: Action) -> RolloutGate {
        RolloutGate {
            release_id: release.id(),
            share_bp: 10_000,
            groups: vec![],
            action,
            not_before: 0,
            expires_at: NOW + 30 * 86_400,
            sequence,
            devices: Vec::new(),
            prefetch_bp: 0,
        }
    }
    pub fn sign_gate(&self, g: &RolloutGate) -> Signed<RolloutGate> {
        Signed::sign(g, &[&self.rollout_key]).unwrap()
    }
    /// `release` under gate `g`, signed by the rollout key, with no hints.
    pub fn announce_with(&self, release: Signed<Release>, g: &RolloutGate) -> Announcement {
        Announcement {
            release,
            gate: self.sign_gate(g),
            bootstrap: vec![],
            http_origin: None,
        }
    }
    /// A valid announcement of `m` with release sequence `seq` and gate
    /// sequence `gate_seq`.
    pub fn announce(&self, m: &Manifest, seq: u64, gate_seq: u64, action: Action) -> Announcement {
        let release = self.sign_release(&self.release(m, seq));
        let gate = self.sign_gate(&self.gate(&release, gate_seq, action));
        Announcement {
            release,
            gate,
            bootstrap: vec!["/ip4/10.0.0.1/tcp/4001".into()],
            http_origin: None,
        }
    }
}

pub(crate) fn agent_config(w: &World) -> AgentConfig {
    let mut c = AgentConfig::new(
        DeviceId::new("dev-1").unwrap(),
        FleetId::new("fleet").unwrap(),
        SiteId::new("site-1").unwrap(),
        rpi4(),
        w.root.clone(),
    );
    c.health_timeout = 60;
    c
}

/// An agent resuming from `state`, booted on slot a with v1.1 active,
/// its boot actions drained.
pub(crate) fn booted_on_v1_1(w: &World, state: AgentState) -> Agent {
    let mut a = Agent::new(agent_config(w), state);
    a.handle_boot(
        SlotStatus {
            active_slot: Some("a".into()),
            active_release: Some(meshota_protocol::ReleaseId::digest(b"v1.1")),
            active_version: Some(v(1)),
            trial: false,
        },
        NOW,
    );
    drain(&mut a);
    a
}

pub(crate) fn v(minor: u64) -> Version {
    Version::new(1, minor, 0)
}

/// All actions queued so far.
pub(crate) fn drain(a: &mut Agent) -> Vec<AgentAction> {
    std::iter::from_fn(|| a.poll_action()).collect()
}

pub(crate) fn events(actions: &[AgentAction]) -> Vec<Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            AgentAction::Publish(ReportBody::Event(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

pub(crate) fn error_codes(actions: &[AgentAction]) -> Vec<String> {
    events(actions)
        .into_iter()
        .filter_map(|e| match e {
            Event::Error { code, .. } => Some(code),
            _ => None,
        })
        .collect()
}

pub(crate) fn transitions(evs: &[Event]) -> Vec<(UpdateState, UpdateState)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::StateChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// Reports shared between a driver and the test reading them.
#[derive(Clone, Default)]
pub(crate) struct Shared(pub Arc<Mutex<Vec<ReportBody>>>);

impl Reporter for Shared {
    fn publish(&mut self, body: ReportBody) {
        self.0.lock().unwrap().push(body);
    }
}

impl Shared {
    pub fn take_events(&self) -> Vec<Event> {
        let mut g = self.0.lock().unwrap();
        let out = g
            .iter()
            .filter_map(|b| match b {
                ReportBody::Event(e) => Some(e.clone()),
                ReportBody::Status(_) => None,
            })
            .collect();
        g.clear();
        out
    }
}

/// A device in a temp directory: data dir, `dir` backend, store, and a
/// health script that passes while `<tmp>/healthy` exists.
pub(crate) struct Rig {
    pub tmp: tempfile::TempDir,
    pub store: Arc<TestStore>,
    pub reports: Shared,
    pub world: World,
    pub cfg: AgentConfig,
}

impl Rig {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("health.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ntest -e {}/healthy\n", tmp.path().display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let world = world();
        let cfg = agent_config(&world);
        let rig = Self {
            tmp,
            store: Arc::new(TestStore::default()),
            reports: Shared::default(),
            world,
            cfg,
        };
        rig.set_healthy(true);
        rig
    }

    pub fn set_healthy(&self, ok: bool) {
        let p = self.tmp.path().join("healthy");
        if ok {
            std::fs::write(p, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
    }

    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    pub fn backend(&self) -> DirBackend {
        DirBackend::new(
            self.root(),
            Some(HealthCommand {
                program: self.tmp.path().join("health.sh"),
                args: vec![],
            }),
        )
        .unwrap()
    }

    /// Starts (or restarts, after a "crash") the device from its data dir.
    pub fn start(&self, now: u64) -> LocalDriver {
        let parts = DriverParts {
            backend: Box::new(self.backend()),
            store: self.store.clone(),
            data_dir: self.tmp.path().join("data"),
            fetcher: Box::new(PreloadedFetcher),
            inhibitor: None,
            reporter: Box::new(self.reports.clone()),
        };
        LocalDriver::start(self.cfg.clone(), parts, now).unwrap()
    }

    /// A driver that took v1 (install and activate) at `NOW` and settled:
    /// committed while the rig is healthy. Returns v1's payload and
    /// manifest too. Later payloads go into the store after this, as a
    /// fetch would bring them: the commit prunes the store.
    pub fn on_v1(&self) -> (LocalDriver, Vec<u8>, Manifest) {
        let (p1, m1) = self.payload(1);
        let mut d = self.start(NOW);
        d.agent.handle_announcement(
            self.world
                .announce(&m1, 1, 1, meshota_protocol::Action::InstallAndActivate),
            NOW,
        );
        (settle(self, d, NOW), p1, m1)
    }

    pub fn payload(&self, minor: u64) -> (Vec<u8>, Manifest) {
        let data = noise(300_000 + minor as usize * 1000, minor);
        let m = put_payload(self.store.as_ref(), &data, v(minor), InstallKind::Image);
        (data, m)
    }

    /// The payload in the active slot.
    pub fn active_payload(&self) -> Option<Vec<u8>> {
        std::fs::read(self.root().join("current").join("payload")).ok()
    }

    pub fn slot_status(&self) -> SlotStatus {
        use crate::install::InstallBackend;
        self.backend().status().unwrap()
    }
}

/// Runs the driver until idle, rebooting (restarting from the data dir)
/// whenever asked; returns the final driver.
pub(crate) fn settle(rig: &Rig, mut d: LocalDriver, now: u64) -> LocalDriver {
    for _ in 0..10 {
        match d.run(now, None).unwrap() {
            RunOutcome::Idle => return d,
            RunOutcome::Reboot | RunOutcome::Stopped => d = rig.start(now),
        }
    }
    panic!("driver did not settle");
}

pub(crate) fn exists(p: &Path) -> bool {
    p.exists()
}
