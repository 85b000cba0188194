//! Driving a live run: start the fleet, open the release wave by wave,
//! inject the scenario's faults, and collect the [`Outcome`].
//!
//! Device states come from in-process hooks (the install backend's
//! commits and rollbacks, the fetcher's bytes) and from the broker's
//! registry (failures), polled every [`POLL`]. Wall-clock time is the
//! run's clock here: this is the I/O shell around the real agents, not a
//! sans-IO core.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meshota_protocol::release::bucket;
use meshota_protocol::{
    codec, Action, Announcement, Channel, Compatible, DeviceId, FleetId, RolloutGate, Signed,
    Topic, UpdateState,
};

use super::fleet::{Fleet, Rng, CHANNEL, COMPATIBLE};
use super::track::add;
use super::{LiveError, LiveEvent, LiveRun};
use crate::scenario::Scenario;
use crate::virt::Outcome;

/// How often the run looks at the fleet.
const POLL: Duration = Duration::from_millis(200);
/// A crashing device crashes once it holds this share of the payload.
const CRASH_AT: f64 = 0.4;
/// A crashed device restarts after this long.
const CRASH_DOWN: Duration = Duration::from_secs(1);
/// Churned devices leave within this long of their wave's start.
const CHURN_SPREAD_MS: u64 = 10_000;

/// Checks the scenario fits live mode (loopback addressing, sockets).
///
/// # Errors
/// [`LiveError::Scenario`] naming the limit.
pub fn check(s: &Scenario) -> Result<(), LiveError> {
    s.validate()
        .map_err(|e| LiveError::Scenario(e.to_string()))?;
    if s.sites > 253 {
        return Err(LiveError::Scenario(
            "at most 253 sites (each site is a 127.<site+1>.0.0/16 loopback range)".into(),
        ));
    }
    if s.devices / s.sites >= 65_000 {
        return Err(LiveError::Scenario(
            "at most 65,000 devices per site".into(),
        ));
    }
    Ok(())
}

/// Runs scenario `s` live on the current tokio runtime.
///
/// # Errors
/// [`LiveError`] when the fleet cannot be set up.
pub async fn run(
    s: &Scenario,
    mut progress: impl FnMut(LiveEvent) + Send,
) -> Result<LiveRun, LiveError> {
    check(s)?;
    let wall = Instant::now();
    progress(LiveEvent::Setup(format!(
        "keys, a {} MiB bundle, broker and origin",
        s.bundle_bytes >> 20
    )));
    let mut fleet = Fleet::new(s).await?;
    let r = drive(&mut fleet, &mut progress, wall).await;
    progress(LiveEvent::Setup("stopping the fleet".into()));
    fleet.shutdown().await;
    r
}

/// Per-device fault plan.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    crash: bool,
    crashed: bool,
    /// Leave this long after the wave opens.
    churn_after: Option<Duration>,
    churned: bool,
    restart_at: Option<Instant>,
}

fn plan_faults(s: &Scenario) -> Vec<Faults> {
    let mut rng = Rng::new(s.seed ^ 0xFA17);
    let share = |rate: f64| (rate * f64::from(s.devices)).round() as u32;
    let mut f = vec![Faults::default(); s.devices as usize];
    for i in rng.pick(s.devices, share(s.crash_rate)) {
        f[i as usize].crash = true;
    }
    for i in rng.pick(s.devices, share(s.churn_rate)) {
        f[i as usize].churn_after = Some(Duration::from_millis(rng.below(CHURN_SPREAD_MS)));
    }
    f
}

/// Where each device is, as far as the run is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Committed,
    RolledBack,
    Failed,
}

async fn start_all(fleet: &mut Fleet, progress: &mut dyn FnMut(LiveEvent)) -> Result<(), LiveError> {
    let n = fleet.devices.len();
    progress(LiveEvent::Setup(format!("starting {n} devices")));
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(fleet.start_node(i).await?);
    }
    // Every address is known now, so each device finds its neighbours.
    for (i, node) in nodes.iter().enumerate() {
        fleet.dial_neighbours(i, node);
    }
    for (i, node) in nodes.into_iter().enumerate() {
        fleet.start_agent(i, node)?;
    }
    let waited = Duration::from_secs(30) + POLL * (n as u32 / 4);
    let deadline = Instant::now() + waited;
    loop {
        let online = fleet
            .server
            .registry()
            .devices()
            .map(|d| d.iter().filter(|r| r.online && r.state.is_some()).count())
            .unwrap_or(0);
        if online >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LiveError::NotOnline {
                online,
                devices: n as u32,
                waited,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Opens the release to `share_bp` basis points of the fleet: signs a
/// gate with the rollout key and publishes the announcement retained.
///
/// TODO(issue 6): once the broker's rollout driver is on main, replace
/// this and the wave loop in [`drive`] with
/// `fleet.server.rollouts().create(RolloutSpec { .. })` and follow
/// `status(&id)` for the wave times.
async fn open_gate(fleet: &Fleet, share_bp: u16, sequence: u64) -> Result<(), LiveError> {
    let bad = |e: &dyn std::fmt::Display| LiveError::Rollout(e.to_string());
    let now = meshota_broker::now();
    let gate = RolloutGate {
        release_id: fleet.release.id,
        share_bp,
        groups: Vec::new(),
        action: Action::InstallAndActivate,
        not_before: 0,
        expires_at: now + 86_400,
        sequence,
    };
    let gate = Signed::sign(&gate, &[fleet.rollout_key.as_ref()]).map_err(|e| bad(&e))?;
    let ann = Announcement {
        release: fleet.release.signed.clone(),
        gate,
        bootstrap: fleet.origin.iter().map(ToString::to_string).collect(),
        http_origin: None,
    };
    let topic = Topic::Announce {
        fleet: FleetId::new("default").map_err(|e| bad(&e))?,
        compatible: Compatible::new(COMPATIBLE).map_err(|e| bad(&e))?,
        channel: Channel::new(CHANNEL).map_err(|e| bad(&e))?,
    };
    let bytes = codec::encode(&ann).map_err(|e| bad(&e))?;
    fleet
        .server
        .control()
        .announce(&topic, bytes)
        .await
        .map_err(|e| bad(&e))
}

/// Devices whose rollout bucket for the release is in `from..to`.
fn wave_members(fleet: &Fleet, from: u16, to: u16) -> Result<Vec<usize>, LiveError> {
    let mut out = Vec::new();
    for d in &fleet.devices {
        let id = DeviceId::new(d.id.clone()).map_err(|e| LiveError::Rollout(e.to_string()))?;
        let b = bucket(&id, &fleet.release.id);
        if (from..to).contains(&b) {
            out.push(d.index as usize);
        }
    }
    Ok(out)
}

/// The state of the run, looked at every [`POLL`].
struct Watch {
    t0: Instant,
    deadline: Instant,
    faults: Vec<Faults>,
    /// When each device's wave opened.
    opened: Vec<Option<Instant>>,
    ends: Vec<Option<End>>,
    restarts: u32,
}

impl Watch {
    /// Updates every device's end state and injects due faults.
    async fn poll(
        &mut self,
        fleet: &mut Fleet,
        progress: &mut dyn FnMut(LiveEvent),
    ) -> Result<(), LiveError> {
        let failed: HashMap<String, bool> = fleet
            .server
            .registry()
            .devices()
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.id.to_string(), r.state == Some(UpdateState::Failed)))
            .collect();
        let now = Instant::now();
        let payload = fleet.s.bundle_bytes as f64;
        let mut fetched = 0;
        for i in 0..fleet.devices.len() {
            let t = fleet.tracker.get(i);
            let b = t.bytes();
            fetched += b.same_site + b.other_peers + b.origin;
            self.ends[i] = if t.committed_at.is_some() {
                Some(End::Committed)
            } else if t.rolled_back_at.is_some() {
                Some(End::RolledBack)
            } else if failed.get(&fleet.devices[i].id) == Some(&true) {
                Some(End::Failed)
            } else {
                None
            };
            let f = &mut self.faults[i];
            if let Some(at) = f.restart_at {
                if now >= at {
                    f.restart_at = None;
                    self.restarts += 1;
                    fleet.start(i).await?;
                }
                continue;
            }
            let Some(opened) = self.opened[i] else {
                continue;
            };
            let cur = t.current;
            let held = (cur.same_site + cur.other_peers + cur.origin + cur.local) as f64;
            let crash = f.crash && !f.crashed && t.committed_at.is_none() && held >= CRASH_AT * payload && held < payload;
            let churn = !f.churned && f.churn_after.is_some_and(|a| now >= opened + a);
            if (crash || churn) && fleet.is_running(i) {
                let (what, down) = if crash {
                    f.crashed = true;
                    ("crashes mid-download", CRASH_DOWN)
                } else {
                    f.churned = true;
                    (
                        "goes offline",
                        Duration::from_secs(fleet.s.churn_offline_s),
                    )
                };
                f.restart_at = Some(now + down);
                progress(LiveEvent::Fault(format!(
                    "{} {what} at {:.1} s ({:.0}% held), back in {:?}",
                    fleet.devices[i].id,
                    now.saturating_duration_since(self.t0).as_secs_f64(),
                    100.0 * held / payload,
                    down
                )));
                fleet.stop(i).await;
            }
        }
        let count = |e| self.ends.iter().filter(|x| **x == Some(e)).count() as u32;
        progress(LiveEvent::Progress {
            committed: count(End::Committed),
            rolled_back: count(End::RolledBack),
            failed: count(End::Failed),
            fetched,
            at_s: self.secs(now),
        });
        Ok(())
    }

    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64()
    }

    fn done(&self, members: &[usize]) -> bool {
        members
            .iter()
            .all(|&i| self.ends[i].is_some() && self.faults[i].restart_at.is_none())
    }
}

/// Starts the fleet, runs the waves, and measures.
async fn drive(
    fleet: &mut Fleet,
    progress: &mut (dyn FnMut(LiveEvent) + Send),
    wall: Instant,
) -> Result<LiveRun, LiveError> {
    start_all(fleet, progress).await?;
    let s = fleet.s.clone();
    let n = fleet.devices.len();
    let t0 = Instant::now();
    let setup_s = t0.saturating_duration_since(wall).as_secs_f64();
    let mut w = Watch {
        t0,
        deadline: t0 + Duration::from_secs(s.live_timeout_s),
        faults: plan_faults(&s),
        opened: vec![None; n],
        ends: vec![None; n],
        restarts: 0,
    };
    let mut waves = Vec::new();
    let mut from = 0u16;
    for (k, pct) in s.waves.iter().enumerate() {
        let to = u16::from(*pct) * 100;
        let members = wave_members(fleet, from, to)?;
        from = to;
        open_gate(fleet, to, k as u64 + 1).await?;
        let start = Instant::now();
        for &i in &members {
            w.opened[i] = Some(start);
        }
        progress(LiveEvent::WaveStarted {
            wave: k,
            at_s: w.secs(start),
            devices: members.len(),
        });
        while !w.done(&members) && Instant::now() < w.deadline {
            tokio::time::sleep(POLL).await;
            w.poll(fleet, progress).await?;
        }
        let end = Instant::now();
        progress(LiveEvent::WaveFinished {
            wave: k,
            at_s: w.secs(end),
        });
        waves.push((w.secs(start), w.secs(end)));
        // The next wave waits out this one's soak, as the virtual mode does.
        let soak_end = start + Duration::from_secs(s.soak_s);
        while k + 1 < s.waves.len() && Instant::now() < soak_end.min(w.deadline) {
            tokio::time::sleep(POLL).await;
            w.poll(fleet, progress).await?;
        }
    }
    let recs = fleet.tracker.all();
    let mut commit_times_s: Vec<f64> = recs
        .iter()
        .filter_map(|r| r.committed_at.map(|t| w.secs(t)))
        .collect();
    commit_times_s.sort_by(f64::total_cmp);
    let committed = commit_times_s.len() as u32;
    let rolled_back = recs
        .iter()
        .filter(|r| r.committed_at.is_none() && r.rolled_back_at.is_some())
        .count() as u32;
    let bytes = recs.iter().fold(Default::default(), |acc, r| add(acc, r.bytes()));
    let outcome = Outcome {
        commit_times_s,
        rolled_back,
        failed: s.devices - committed - rolled_back,
        origin_bytes: fleet.origin_bytes(),
        site_wan_in: fleet.net.site_wan_in(),
        bytes,
        waves,
        bans: fleet.bans.load(std::sync::atomic::Ordering::Relaxed),
        drops: fleet.drops.load(std::sync::atomic::Ordering::Relaxed),
        retries: 0,
        events: 0,
    };
    Ok(LiveRun {
        outcome,
        bundle_file_bytes: fleet.release.file_bytes,
        release_stored_bytes: fleet.release.stored_bytes,
        origin_wire_bytes: fleet.net.from_origin(),
        site_wan_out: fleet.net.site_wan_out(),
        restarts: w.restarts,
        wall_s: wall.elapsed().as_secs_f64(),
        setup_s,
    })
}
