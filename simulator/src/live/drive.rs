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

use meshota_broker::rollout::RolloutState;
use meshota_broker::rollouts::CreateRollout;
use meshota_protocol::release::bucket;
use meshota_protocol::{Action, DeviceId, UpdateState};

use super::fleet::{Fleet, Rng};
use super::track::add;
use super::uploads::UploadLog;
use super::{DeviceFigures, LiveError, LiveEvent, LiveRun};
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

async fn start_all(
    fleet: &mut Fleet,
    progress: &mut dyn FnMut(LiveEvent),
) -> Result<(), LiveError> {
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
    let waited = Duration::from_secs(60) + POLL * n as u32;
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

/// Starts the staged rollout on the broker's own rollout driver (the
/// production planner), with the scenario's waves and soak.
///
/// The thresholds suit measuring rather than guarding: a wave hands over
/// once the devices not failed on purpose could have succeeded (so a
/// scenario with health failures is not held up forever), and the
/// rollout never halts on its own.
fn start_rollout(fleet: &Fleet) -> Result<String, LiveError> {
    let s = &fleet.s;
    let success = (100.0 * (1.0 - 2.0 * s.health_fail_rate))
        .floor()
        .clamp(1.0, 100.0) as u8;
    let req = CreateRollout {
        waves: Some(s.waves.clone()),
        success_threshold: Some(success),
        error_threshold: Some(100),
        soak_secs: Some(s.soak_s),
        action: Some(Action::InstallAndActivate),
        prefetch: s.prefetch,
        ..CreateRollout::new(fleet.release.id)
    };
    let view = fleet
        .server
        .rollouts()
        .create(req, meshota_broker::now())
        .map_err(|e| LiveError::Rollout(e.to_string()))?;
    Ok(view.status.rollout.to_string())
}

/// Every device's rollout bucket for the release.
fn buckets(fleet: &Fleet) -> Result<Vec<u16>, LiveError> {
    fleet
        .devices
        .iter()
        .map(|d| {
            DeviceId::new(d.id.clone())
                .map(|id| bucket(&id, &fleet.release.id))
                .map_err(|e| LiveError::Rollout(e.to_string()))
        })
        .collect()
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
    uploads: UploadLog,
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
            let crash = f.crash
                && !f.crashed
                && t.committed_at.is_none()
                && held >= CRASH_AT * payload
                && held < payload;
            let churn = !f.churned && f.churn_after.is_some_and(|a| now >= opened + a);
            if (crash || churn) && fleet.is_running(i) {
                let (what, down) = if crash {
                    f.crashed = true;
                    ("crashes mid-download", CRASH_DOWN)
                } else {
                    f.churned = true;
                    ("goes offline", Duration::from_secs(fleet.s.churn_offline_s))
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
        for (i, why) in fleet.reap().await {
            progress(LiveEvent::Fault(format!(
                "{}'s agent died: {why}",
                fleet.devices[i].id
            )));
        }
        self.uploads.sample(fleet, now);
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

/// Where the unfinished devices stand, so a stalled run says which stage
/// stuck: no fetch started (announcement or planner), nothing received
/// (discovery), part received (transfer), or all received (install); and
/// for the first few, what their fetch engine sees.
async fn stall_breakdown(fleet: &Fleet, w: &Watch) -> String {
    const DESCRIBED: usize = 3;
    let payload = fleet.s.bundle_bytes;
    let (mut idle, mut empty, mut partial, mut full) = (0, 0, 0, 0);
    let mut details = Vec::new();
    for (i, end) in w.ends.iter().enumerate() {
        if end.is_some() || w.opened[i].is_none() {
            continue;
        }
        let t = fleet.tracker.get(i);
        let b = t.current;
        let got = b.same_site + b.other_peers + b.origin + b.local;
        match (t.fetches, got) {
            (0, _) => idle += 1,
            (_, 0) => empty += 1,
            (_, g) if g < payload => partial += 1,
            _ => full += 1,
        }
        if details.len() < DESCRIBED {
            let lines = match fleet.node(i) {
                Some(n) => n.describe_fetches().await.unwrap_or_default().join(" | "),
                None => "not running".into(),
            };
            details.push(format!(
                "{} (site {}): {lines}",
                fleet.devices[i].id, fleet.devices[i].site
            ));
        }
    }
    let mut out = format!(
        "unfinished devices in open waves: {idle} never started a fetch, \
         {empty} received nothing, {partial} part of the bundle, {full} all of it"
    );
    for d in details {
        out.push_str("\n  ");
        out.push_str(&d);
    }
    out
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
        uploads: UploadLog::default(),
    };
    let buckets = buckets(fleet)?;
    let id = start_rollout(fleet)?;
    // Wave starts and ends as this run sees them (the planner's own times
    // are whole seconds); `None` until seen.
    let mut seen: Vec<(Option<f64>, Option<f64>)> = vec![(None, None); s.waves.len()];
    let mut last_state;
    loop {
        tokio::time::sleep(POLL).await;
        let now = Instant::now();
        let view = fleet
            .server
            .rollouts()
            .get(&id, meshota_broker::now())
            .map_err(|e| LiveError::Rollout(e.to_string()))?;
        let st = &view.status;
        last_state = st.state;
        // Devices the planner named into the first wave, one for each
        // site its share left out, act whatever their bucket.
        let named: Vec<bool> = fleet
            .devices
            .iter()
            .map(|d| st.named_devices.iter().any(|n| n.as_str() == d.id))
            .collect();
        for (i, b) in buckets.iter().enumerate() {
            if (*b < st.share_bp || named[i]) && w.opened[i].is_none() {
                w.opened[i] = Some(now);
            }
        }
        for (k, wave) in st.waves.iter().enumerate().take(seen.len()) {
            if wave.started_at.is_some() && seen[k].0.is_none() {
                seen[k].0 = Some(w.secs(now));
                let within = |i: usize, goal: u16| buckets[i] < goal || named[i];
                let opened = (0..n).filter(|&i| within(i, wave.goal_bp)).count();
                let before = match k {
                    0 => 0,
                    _ => (0..n)
                        .filter(|&i| within(i, st.waves[k - 1].goal_bp))
                        .count(),
                };
                progress(LiveEvent::WaveStarted {
                    wave: k,
                    at_s: w.secs(now),
                    devices: opened.saturating_sub(before),
                });
            }
            if wave.done_at.is_some() && seen[k].1.is_none() {
                seen[k].1 = Some(w.secs(now));
                let wan = fleet.net.site_wan_in();
                progress(LiveEvent::WaveFinished {
                    wave: k,
                    at_s: w.secs(now),
                    wan_in: wan.iter().sum(),
                    max_site_wan_in: wan.iter().copied().max().unwrap_or(0),
                    origin_bytes: fleet.origin_bytes(),
                });
            }
        }
        w.poll(fleet, progress).await?;
        let all: Vec<usize> = (0..n).collect();
        let stopped = matches!(
            st.state,
            RolloutState::Completed | RolloutState::Halted | RolloutState::Aborted
        );
        if (stopped && w.done(&all)) || now >= w.deadline {
            if !stopped {
                progress(LiveEvent::Fault(format!(
                    "rollout still {} after live_timeout_s = {} s; giving up ({})",
                    st.state,
                    s.live_timeout_s,
                    stall_breakdown(fleet, &w).await
                )));
            }
            break;
        }
    }
    let end = w.secs(Instant::now());
    let waves = seen
        .iter()
        .filter_map(|(a, b)| a.map(|a| (a, b.unwrap_or(end))))
        .collect();
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
    let bytes = recs
        .iter()
        .fold(Default::default(), |acc, r| add(acc, r.bytes()));
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
        completed: last_state == RolloutState::Completed,
        halted: last_state == RolloutState::Halted,
        ..Outcome::default()
    };
    let dev_wan_in = fleet.net.device_wan_in();
    let stats = fleet.node_stats();
    let origin_in = fleet.net.device_origin_in();
    let far_conns = fleet.net.device_far_conns();
    let origin_conns = fleet.net.device_origin_conns();
    let devices = recs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let b = r.bytes();
            DeviceFigures {
                site: s.site_of(i as u32),
                started_s: r.started_at.map(|t| w.secs(t)),
                committed_s: r.committed_at.map(|t| w.secs(t)),
                fetches: r.fetches,
                same_site: b.same_site,
                other_peers: b.other_peers,
                origin: b.origin,
                wan_in: dev_wan_in.get(i).copied().unwrap_or(0),
                unused: stats.get(i).map_or(0, |s| s.unused_chunk_bytes),
                uploaded: stats.get(i).map_or(0, |s| s.uploaded_bytes),
                busy: stats.get(i).map_or(0, |s| s.busy),
                far_have_received: stats.get(i).map_or(0, |s| s.far_have_received),
                far_have_answered: stats.get(i).map_or(0, |s| s.far_have_answered),
                hints_followed: stats.get(i).map_or(0, |s| s.hints_followed),
                lookups: stats.get(i).map_or(0, |s| s.provider_lookups),
                release_lookups: stats.get(i).map_or(0, |s| s.release_lookups),
                origin_wan_in: origin_in.get(i).copied().unwrap_or(0),
                origin_conns: origin_conns.get(i).copied().unwrap_or(0),
                far_conns: far_conns.get(i).copied().unwrap_or(0),
            }
        })
        .collect();
    Ok(LiveRun {
        outcome,
        bundle_file_bytes: fleet.release.file_bytes,
        release_stored_bytes: fleet.release.stored_bytes,
        origin_wire_bytes: fleet.net.from_origin(),
        site_wan_out: fleet.net.site_wan_out(),
        restarts: w.restarts,
        wall_s: wall.elapsed().as_secs_f64(),
        setup_s,
        devices,
        origin: {
            let o = fleet.origin_stats();
            super::OriginFigures {
                chunks: o.uploaded_chunks,
                chunk_bytes: o.uploaded_bytes,
                manifests: o.manifests_served,
                busy: o.busy,
                not_found: o.not_found,
                released: o.released,
                hints: o.hints,
            }
        },
    })
}
