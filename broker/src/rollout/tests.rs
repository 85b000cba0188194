//! Planner tests under virtual time: no clock, no sleeps. Devices are
//! judged from their side, with the protocol's own `eligible`, so the
//! tests check what a device would do with the gates, not the planner's
//! bookkeeping.

use std::collections::BTreeMap;

use meshota_protocol::release::{eligible, FULL_SHARE};
use meshota_protocol::{Compatible, Group};

use super::*;

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

#[test]
fn nothing_is_published_before_not_before() {
    let mut h = Harness::plain(spec(), 100);
    h.drain();
    assert!(h.outputs.is_empty());
    assert_eq!(h.p.state(), RolloutState::Scheduled);
    assert_eq!(h.p.poll_timeout(), Some(T0));
    h.at(T0 - 1);
    assert!(h.p.current_gate().is_none());
    h.at(T0);
    assert_eq!(h.p.state(), RolloutState::Running);
    assert_eq!(h.gate().not_before, T0);
}

#[test]
fn each_wave_targets_the_ceiling_of_its_percent_of_the_eligible_fleet() {
    let mut h = Harness::plain(spec(), 1000);
    h.at(T0);
    let mut sizes = Vec::new();
    for k in 0..4 {
        sizes.push(h.targeted().len());
        assert_eq!(h.status().current_wave, Some(k));
        h.commit_targeted();
        h.run_until(h.now + SOAK);
    }
    assert_eq!(sizes, vec![10, 100, 500, 1000]);
    assert_eq!(h.p.state(), RolloutState::Completed);
    assert_eq!(h.gate().share_bp, FULL_SHARE);
    assert_eq!(h.wave_started(), vec![0, 1, 2, 3]);
    assert!(h.outputs.contains(&PlannerOutput::Completed));
}

#[test]
fn groups_go_first_with_a_zero_share_then_the_percent_waves() {
    let mut s = spec();
    s.groups = vec![group("canary"), group("lab")];
    s.waves = vec![10, 100];
    let mut h = Harness::new(s, 100, |i| match i {
        0..=2 => vec![group("canary")],
        3 => vec![group("lab"), group("other")],
        _ => vec![group("other")],
    });
    h.at(T0);
    let g = h.gate();
    assert_eq!(g.share_bp, 0);
    assert_eq!(g.groups, vec![group("canary"), group("lab")]);
    assert_eq!(h.targeted(), vec![dev(0), dev(1), dev(2), dev(3)]);
    assert_eq!(h.status().waves[0].kind, WaveKind::Groups);
    assert_eq!(h.status().waves[0].counts.targeted, 4);
    h.commit_targeted();
    h.run_until(T0 + SOAK);
    // 10 % of the 96 devices outside the groups, rounded up, plus the groups.
    assert_eq!(h.targeted().len(), 4 + 10);
    assert_eq!(h.status().waves[1].counts.targeted, 10);
}

#[test]
fn waves_advance_when_success_reaches_the_threshold_and_the_soak_has_passed() {
    let mut s = spec();
    s.waves = vec![50, 100];
    s.success_threshold_pct = 90;
    let mut h = Harness::plain(s, 40);
    h.at(T0);
    let first = h.targeted();
    assert_eq!(first.len(), 20);
    // 17 of 20 is 85 %: below the threshold, whatever the time.
    h.commit(&first[..17]);
    h.run_until(T0 + 10 * SOAK);
    assert_eq!(h.status().current_wave, Some(0));
    // The 18th makes 90 %; the soak is long over, so it advances at once.
    h.commit(&first[17..18]);
    assert_eq!(h.status().current_wave, Some(1));
    assert_eq!(h.targeted().len(), 40);
}

#[test]
fn the_soak_is_respected_even_when_every_device_committed_at_once() {
    let mut h = Harness::plain(spec(), 200);
    h.at(T0);
    h.commit_targeted();
    assert_eq!(h.status().current_wave, Some(0));
    assert_eq!(h.p.poll_timeout(), Some(T0 + SOAK));
    h.at(T0 + SOAK - 1);
    assert_eq!(h.status().current_wave, Some(0));
    assert_eq!(h.targeted().len(), 2);
    h.at(T0 + SOAK);
    assert_eq!(h.status().current_wave, Some(1));
    assert_eq!(h.targeted().len(), 20);
    assert_eq!(h.status().waves[1].started_at, Some(T0 + SOAK));
}

#[test]
fn activated_devices_do_not_count_as_success_until_they_commit() {
    let mut s = spec();
    s.waves = vec![10, 100];
    let mut h = Harness::plain(s, 50);
    h.at(T0);
    let t = h.targeted();
    assert_eq!(t.len(), 5);
    for d in &t {
        h.report(d, UpdateState::Activated);
    }
    h.run_until(T0 + 5 * SOAK);
    let w = &h.status().waves[0];
    assert_eq!(w.counts.awaiting_health, 5);
    assert_eq!(w.counts.succeeded, 0);
    assert_eq!(h.status().current_wave, Some(0));
    for d in &t {
        h.report(d, UpdateState::Committed);
    }
    assert_eq!(h.status().current_wave, Some(1));
}

#[test]
fn halts_when_failures_reach_the_error_threshold() {
    let mut s = spec();
    s.waves = vec![50, 100];
    s.error_threshold_pct = 10;
    let mut h = Harness::plain(s, 40);
    h.at(T0);
    let t = h.targeted();
    assert_eq!(t.len(), 20);
    h.report(&t[0], UpdateState::Failed);
    assert_eq!(h.p.state(), RolloutState::Running);
    let seq = h.gate().sequence;
    // A health failure shows up as a rollback; 2 of 20 is 10 %.
    h.report(&t[1], UpdateState::RolledBack);
    assert_eq!(h.p.state(), RolloutState::Halted);
    let reason = HaltReason::ErrorThreshold {
        wave: 0,
        failures: 2,
        targeted: 20,
        threshold_pct: 10,
    };
    assert!(h.outputs.contains(&PlannerOutput::Halted {
        reason: reason.clone()
    }));
    assert_eq!(h.p.halt_reason(), Some(&reason));
    let st = h.status();
    assert_eq!(st.state, RolloutState::Halted);
    assert!(st.halt_reason.unwrap().contains("error threshold"));
    assert_eq!(
        (st.waves[0].counts.failed, st.waves[0].counts.rolled_back),
        (1, 1)
    );
    // Frozen: however well the rest goes, the share does not grow.
    h.commit(&t[2..]);
    h.run_until(T0 + 86_400);
    assert_eq!(h.status().current_wave, Some(0));
    assert_eq!(h.targeted().len(), 20);
    assert!(h
        .gates()
        .iter()
        .all(|g| g.share_bp == h.gates()[0].share_bp));
    assert!(h.gate().sequence > seq, "re-signed while halted");
}

#[test]
fn a_late_failure_in_an_earlier_wave_still_halts() {
    let mut s = spec();
    s.waves = vec![10, 50, 100];
    s.success_threshold_pct = 80;
    s.error_threshold_pct = 20;
    let mut h = Harness::plain(s, 100);
    h.at(T0);
    let first = h.targeted();
    assert_eq!(first.len(), 10);
    h.commit(&first[..8]);
    h.run_until(T0 + SOAK);
    assert_eq!(h.status().current_wave, Some(1));
    h.report(&first[8], UpdateState::Failed);
    assert_eq!(h.p.state(), RolloutState::Running);
    h.report(&first[9], UpdateState::Failed);
    assert_eq!(h.p.state(), RolloutState::Halted);
    assert!(matches!(
        h.p.halt_reason(),
        Some(HaltReason::ErrorThreshold { wave: 0, .. })
    ));
}

#[test]
fn resume_after_a_halt_accepts_the_failures_seen_and_halts_again_on_new_ones() {
    let mut s = spec();
    s.waves = vec![50, 100];
    s.error_threshold_pct = 10;
    s.success_threshold_pct = 80;
    let mut h = Harness::plain(s, 40);
    h.at(T0);
    let t = h.targeted();
    h.report(&t[0], UpdateState::Failed);
    h.report(&t[1], UpdateState::Failed);
    assert_eq!(h.p.state(), RolloutState::Halted);
    h.p.handle_command(PlannerCommand::Resume, h.now).unwrap();
    h.drain();
    assert_eq!(h.p.state(), RolloutState::Running);
    assert_eq!(h.p.halt_reason(), None);
    h.report(&t[2], UpdateState::Failed);
    assert_eq!(h.p.state(), RolloutState::Running, "1 new failure of 20");
    h.report(&t[3], UpdateState::RolledBack);
    assert_eq!(h.p.state(), RolloutState::Halted);
}

#[test]
fn pause_freezes_the_share_and_resume_continues() {
    let mut h = Harness::plain(spec(), 100);
    h.at(T0);
    let gates_before = h.gates().len();
    h.p.handle_command(PlannerCommand::Pause, h.now).unwrap();
    h.drain();
    assert_eq!(h.p.state(), RolloutState::Paused);
    assert_eq!(h.gates().len(), gates_before, "pausing needs no new gate");
    h.commit_targeted();
    h.run_until(T0 + 3 * SOAK);
    assert_eq!(h.status().current_wave, Some(0));
    assert_eq!(h.targeted().len(), 1);
    assert_eq!(
        h.p.handle_command(PlannerCommand::Pause, h.now),
        Err(CommandError::NotAllowed {
            command: PlannerCommand::Pause,
            state: RolloutState::Paused
        })
    );
    h.p.handle_command(PlannerCommand::Resume, h.now).unwrap();
    h.drain();
    assert_eq!(h.p.state(), RolloutState::Running);
    assert_eq!(h.status().current_wave, Some(1));
    assert_eq!(h.targeted().len(), 10);
}

#[test]
fn abort_publishes_a_stop_gate_with_a_higher_sequence_and_is_final() {
    let mut h = Harness::plain(spec(), 100);
    h.at(T0);
    let before = h.gate();
    h.p.handle_command(PlannerCommand::Abort, h.now).unwrap();
    h.drain();
    let g = h.gate();
    assert_eq!(g.action, Action::Stop);
    assert!(g.sequence > before.sequence);
    assert_eq!(g.share_bp, before.share_bp);
    assert_eq!(h.p.state(), RolloutState::Aborted);
    for c in [
        PlannerCommand::Abort,
        PlannerCommand::Pause,
        PlannerCommand::Resume,
    ] {
        assert!(h.p.handle_command(c, h.now).is_err(), "{c}");
    }
    // Final: no re-signing, no more waves, nothing to wake up for.
    h.commit_targeted();
    h.run_until(T0 + 30 * 86_400);
    assert_eq!(h.gate(), g);
    assert_eq!(h.p.poll_timeout(), None);
}

#[test]
fn rollback_aborts_and_lists_the_devices_that_activated_or_committed() {
    let mut s = spec();
    s.waves = vec![10, 100];
    let mut h = Harness::plain(s, 50);
    h.at(T0);
    let t = h.targeted();
    h.commit(&t[..2]);
    h.report(&t[2], UpdateState::Activated);
    h.report(&t[3], UpdateState::Installing);
    h.p.handle_command(PlannerCommand::Rollback, h.now).unwrap();
    let out = h.drain();
    assert_eq!(h.p.state(), RolloutState::Aborted);
    assert_eq!(h.gate().action, Action::Stop);
    let mut expected = t[..3].to_vec();
    expected.sort();
    assert!(out.contains(&PlannerOutput::Rollback { devices: expected }));
}

#[test]
fn ignores_reports_about_other_releases_older_reports_and_repeats() {
    let mut s = spec();
    s.waves = vec![10, 100];
    let mut h = Harness::plain(s, 50);
    h.at(T0);
    let d = h.targeted()[0].clone();
    let report = |release, state, counter| DeviceReport {
        release,
        state,
        bytes: None,
        counter,
    };
    let other = Some(ReleaseId::digest(b"another release"));
    let p = &mut h.p;
    assert_eq!(
        p.handle_report(&d, report(other, UpdateState::Committed, 1), T0),
        ReportOutcome::OtherRelease
    );
    assert_eq!(
        p.handle_report(&d, report(None, UpdateState::Idle, 2), T0),
        ReportOutcome::OtherRelease
    );
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Failed, 5), T0),
        ReportOutcome::Accepted
    );
    // Arrives late: an older state after a newer one.
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Downloading, 4), T0),
        ReportOutcome::Stale
    );
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Failed, 5), T0),
        ReportOutcome::Duplicate
    );
    assert_eq!(
        p.handle_report(&dev(9999), report(Some(rel()), UpdateState::Failed, 1), T0),
        ReportOutcome::UnknownDevice
    );
    let c = p.status(T0).waves[0].counts;
    assert_eq!((c.targeted, c.failed, c.downloading), (5, 1, 0));
    // A retry after the failure moves the device, never counts it twice.
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Downloading, 6), T0),
        ReportOutcome::Accepted
    );
    let c = p.status(T0).waves[0].counts;
    assert_eq!((c.targeted, c.failed, c.downloading), (5, 0, 1));
}

#[test]
fn re_signs_the_live_gate_at_half_its_lifetime_with_a_higher_sequence() {
    let mut s = spec();
    s.gate_lifetime_secs = 86_400;
    let mut h = Harness::plain(s, 100);
    h.at(T0);
    let g = h.gate();
    assert_eq!(g.expires_at, T0 + 86_400);
    assert_eq!(h.p.poll_timeout(), Some(T0 + 43_200));
    h.run_until(T0 + 43_199);
    assert_eq!(h.gate(), g);
    h.run_until(T0 + 43_200);
    let r = h.gate();
    assert_eq!(r.sequence, g.sequence + 1);
    assert_eq!(r.expires_at, T0 + 43_200 + 86_400);
    assert_eq!((r.share_bp, r.action), (g.share_bp, g.action));
    // Paused, the gate is frozen but still kept fresh.
    h.p.handle_command(PlannerCommand::Pause, h.now).unwrap();
    h.run_until(T0 + 5 * 86_400);
    let last = h.gate();
    assert!(last.expires_at > h.now + 86_400 / 2 - 1);
    assert_eq!(last.share_bp, g.share_bp);
}

#[test]
fn gate_sequences_strictly_increase_across_every_gate() {
    let mut s = spec();
    s.groups = vec![group("canary")];
    s.max_parallel = Some(7);
    s.gate_lifetime_secs = 3_600;
    let mut h = Harness::new(s, 300, |i| {
        if i < 3 {
            vec![group("canary")]
        } else {
            Vec::new()
        }
    });
    h.at(T0);
    for round in 0..200 {
        h.commit_targeted();
        h.run_until(h.now + 300);
        if h.p.state() == RolloutState::Completed || round == 150 {
            break;
        }
    }
    h.p.handle_command(PlannerCommand::Abort, h.now).unwrap();
    h.drain();
    let seqs: Vec<u64> = h.gates().iter().map(|g| g.sequence).collect();
    assert!(seqs.len() > 10);
    assert_eq!(seqs[0], 100);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let shares: Vec<u16> = h.gates().iter().map(|g| g.share_bp).collect();
    assert!(
        shares.windows(2).all(|w| w[1] >= w[0]),
        "shares never shrink"
    );
}

#[test]
fn max_parallel_grows_the_share_in_steps_as_devices_finish() {
    let mut s = spec();
    s.waves = vec![100];
    s.max_parallel = Some(5);
    let mut h = Harness::plain(s, 40);
    h.at(T0);
    assert_eq!(h.targeted().len(), 5);
    let mut seen = 5;
    while h.targeted().len() < 40 {
        let t = h.targeted();
        // Two of the in-flight devices finish: exactly two more may start.
        let fresh: Vec<_> = t
            .iter()
            .filter(|d| !h.counters.contains_key(*d))
            .take(2)
            .cloned()
            .collect();
        h.commit(&fresh);
        let n = h.targeted().len();
        assert!(n <= seen + 2 && n > seen, "{seen} -> {n}");
        let st = h.status().waves[0].counts;
        assert!(st.targeted - st.succeeded - st.failed - st.rolled_back <= 5);
        seen = n;
    }
    assert_eq!(h.gate().share_bp, FULL_SHARE);
}

#[test]
fn silent_devices_turn_not_reporting_and_free_their_max_parallel_slot() {
    let mut s = spec();
    s.waves = vec![100];
    s.max_parallel = Some(3);
    s.report_timeout_secs = 600;
    let mut h = Harness::plain(s, 20);
    h.at(T0);
    let t = h.targeted();
    assert_eq!(t.len(), 3);
    h.report(&t[0], UpdateState::Downloading);
    assert_eq!(h.status().waves[0].counts.pending, 2);
    assert_eq!(h.p.poll_timeout(), Some(T0 + 600));
    h.run_until(T0 + 599);
    assert_eq!(h.status().waves[0].counts.not_reporting, 0);
    h.run_until(T0 + 600);
    let c = h.status().waves[0].counts;
    // The two silent ones are not reporting; the reporting one still
    // holds its slot, so two new devices are targeted.
    assert_eq!(c.not_reporting, 2);
    assert_eq!(c.targeted, 5);
    assert_eq!(c.pending, 2);
    assert_eq!(c.downloading, 1);
}

#[test]
fn an_empty_registry_does_not_open_the_whole_fleet() {
    let mut h = Harness::plain(spec(), 0);
    h.run_until(T0 + 10 * SOAK);
    assert_eq!(h.status().current_wave, Some(0));
    assert_eq!(h.gate().share_bp, 0);
    // The first device arrives: 1 % of one device is that device.
    let info = DeviceInfo {
        id: dev(1),
        groups: Vec::new(),
        compatible: compat(),
    };
    h.fleet.insert(dev(1), Vec::new());
    h.p.handle_device(info, h.now);
    h.drain();
    assert_eq!(h.targeted(), vec![dev(1)]);
    assert_eq!(h.status().waves[0].counts.targeted, 1);
    assert_eq!(h.status().current_wave, Some(0));
}

#[test]
fn a_small_fleet_does_not_stall_on_waves_with_no_new_device() {
    let mut h = Harness::plain(spec(), 3);
    h.at(T0);
    let mut sizes = Vec::new();
    for _ in 0..10 {
        if h.p.state() == RolloutState::Completed {
            break;
        }
        sizes.push(h.targeted().len());
        h.commit_targeted();
        h.run_until(h.now + SOAK);
    }
    assert_eq!(sizes, vec![1, 2, 3]);
    assert_eq!(h.p.state(), RolloutState::Completed);
}

#[test]
fn devices_that_join_an_open_share_are_targeted_and_others_are_ignored() {
    let mut s = spec();
    s.waves = vec![100];
    let mut h = Harness::plain(s, 10);
    h.at(T0);
    h.p.handle_device(
        DeviceInfo {
            id: dev(50),
            groups: Vec::new(),
            compatible: compat(),
        },
        h.now,
    );
    h.p.handle_device(
        DeviceInfo {
            id: dev(51),
            groups: Vec::new(),
            compatible: Compatible::new("x86").unwrap(),
        },
        h.now,
    );
    let st = h.status();
    assert_eq!(st.eligible_devices, 11);
    assert_eq!(st.waves[0].counts.targeted, 11);
    assert_eq!(
        h.report(&dev(51), UpdateState::Committed),
        ReportOutcome::UnknownDevice
    );
}

#[test]
fn bytes_by_source_sum_each_devices_latest_split() {
    let mut s = spec();
    s.waves = vec![100];
    let mut h = Harness::plain(s, 4);
    h.at(T0);
    let split = |peers, origin| ByteSplit {
        same_site: peers,
        other_peers: 0,
        origin,
        local: 0,
    };
    let mut send = |d: usize, counter, bytes| {
        h.p.handle_report(
            &dev(d),
            DeviceReport {
                release: Some(rel()),
                state: UpdateState::Downloading,
                bytes: Some(bytes),
                counter,
            },
            T0,
        )
    };
    send(0, 1, split(100, 10));
    send(0, 2, split(300, 10));
    send(0, 2, split(999, 999));
    send(1, 1, split(50, 40));
    let st = h.p.status(T0);
    assert_eq!(st.bytes_from_peers, 350);
    assert_eq!(st.bytes_from_origin, 50);
}

#[test]
fn a_restored_planner_resumes_exactly_where_it_was() {
    let mut s = spec();
    s.groups = vec![group("canary")];
    s.max_parallel = Some(4);
    s.gate_lifetime_secs = 7_200;
    let groups = |i: usize| {
        if i.is_multiple_of(17) {
            vec![group("canary")]
        } else {
            Vec::new()
        }
    };
    let mut a = Harness::new(s, 120, groups);
    a.at(T0);
    a.commit_targeted();
    a.run_until(T0 + SOAK + 10);
    a.commit_targeted();
    let t = a.targeted();
    let last = t.last().unwrap().clone();
    a.report(&last, UpdateState::Downloading);
    // Undelivered outputs travel in the snapshot too.
    a.p.handle_timeout(a.now + 5_000);
    a.now += 5_000;
    let bytes = a.p.snapshot().unwrap();
    let waves_at_snapshot = a.wave_started().len();
    let mut b = Harness {
        p: Planner::restore(&bytes).unwrap(),
        now: a.now,
        fleet: a.fleet.clone(),
        counters: a.counters.clone(),
        outputs: a.outputs.clone(),
    };
    assert_eq!(b.p.core, a.p.core);
    assert_eq!(b.p.derived, a.p.derived);
    assert_eq!(b.p.status(b.now), a.p.status(a.now));
    assert_eq!(b.p.poll_timeout(), a.p.poll_timeout());
    // The same inputs from here on give the same outputs.
    for h in [&mut a, &mut b] {
        h.drain();
        for _ in 0..30 {
            h.commit_targeted();
            h.run_until(h.now + 400);
        }
        h.report(&last, UpdateState::Failed);
    }
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.p.status(a.now), b.p.status(b.now));
    // It went on past the restore: more waves, then the halt the silent
    // device's failure causes.
    assert!(b.wave_started().len() > waves_at_snapshot);
    assert_eq!(b.p.state(), RolloutState::Halted);
}

#[test]
fn a_restored_planner_continues_the_gate_sequence() {
    let mut h = Harness::plain(spec(), 100);
    h.at(T0);
    let seq = h.gate().sequence;
    let mut r = Planner::restore(&h.p.snapshot().unwrap()).unwrap();
    r.handle_command(PlannerCommand::Abort, T0 + 1).unwrap();
    let gates: Vec<_> = std::iter::from_fn(|| r.poll_output())
        .filter_map(|o| match o {
            PlannerOutput::PublishGate(g) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0].sequence, seq + 1);
    assert_eq!(r.next_sequence(), seq + 2);
}

#[test]
fn restore_refuses_garbage_and_other_kinds() {
    assert!(matches!(
        Planner::restore(b"\x00\x01"),
        Err(RestoreError::Codec(_))
    ));
    let gate = meshota_protocol::codec::encode(&RolloutGate {
        release_id: rel(),
        share_bp: 0,
        groups: Vec::new(),
        action: Action::Stop,
        not_before: 0,
        expires_at: 0,
        sequence: 1,
    })
    .unwrap();
    assert!(matches!(
        Planner::restore(&gate),
        Err(RestoreError::Codec(_))
    ));
}

#[test]
fn invalid_specs_are_refused() {
    type Edit = fn(&mut RolloutSpec);
    let cases: Vec<(Edit, PlanError)> = vec![
        (|s| s.waves.clear(), PlanError::NoWaves),
        (|s| s.waves = vec![0, 10], PlanError::WaveOutOfRange(0)),
        (|s| s.waves = vec![10, 101], PlanError::WaveOutOfRange(101)),
        (
            |s| s.waves = vec![10, 10],
            PlanError::WavesNotIncreasing { prev: 10, next: 10 },
        ),
        (
            |s| s.waves = vec![50, 10],
            PlanError::WavesNotIncreasing { prev: 50, next: 10 },
        ),
        (
            |s| s.success_threshold_pct = 0,
            PlanError::SuccessThresholdOutOfRange(0),
        ),
        (
            |s| s.error_threshold_pct = 101,
            PlanError::ErrorThresholdOutOfRange(101),
        ),
        (|s| s.action = Action::Stop, PlanError::StopAction),
        (|s| s.max_parallel = Some(0), PlanError::ZeroMaxParallel),
        (
            |s| s.gate_lifetime_secs = 1,
            PlanError::GateLifetimeTooShort(1),
        ),
        (|s| s.first_sequence = 0, PlanError::ZeroSequence),
        (
            |s| s.groups = vec![Group::new("a").unwrap(), Group::new("a").unwrap()],
            PlanError::DuplicateGroup(Group::new("a").unwrap()),
        ),
    ];
    for (edit, err) in cases {
        let mut s = spec();
        edit(&mut s);
        assert_eq!(
            Planner::new(RolloutId::digest(b"r"), s, T0).err(),
            Some(err)
        );
    }
    assert!(Planner::new(RolloutId::digest(b"r"), spec(), T0).is_ok());
}

#[test]
fn a_download_only_rollout_succeeds_at_downloaded() {
    let mut s = spec();
    s.waves = vec![10, 100];
    s.action = Action::Download;
    let mut h = Harness::plain(s, 20);
    h.at(T0);
    assert_eq!(h.gate().action, Action::Download);
    for d in h.targeted() {
        h.report(&d, UpdateState::Downloaded);
    }
    assert_eq!(h.status().waves[0].counts.succeeded, 2);
    h.run_until(T0 + SOAK);
    assert_eq!(h.status().current_wave, Some(1));
}

#[test]
fn a_completed_rollout_keeps_its_gate_fresh_for_late_devices() {
    let mut s = spec();
    s.waves = vec![100];
    let mut h = Harness::plain(s, 5);
    h.at(T0);
    h.commit_targeted();
    h.run_until(T0 + SOAK);
    assert_eq!(h.p.state(), RolloutState::Completed);
    h.run_until(T0 + 3 * 86_400);
    assert!(h.gate().expires_at > h.now);
    assert_eq!(h.gate().share_bp, FULL_SHARE);
    assert!(h.p.handle_command(PlannerCommand::Pause, h.now).is_err());
}

#[test]
fn a_clock_stepping_back_does_not_reopen_the_soak() {
    let mut h = Harness::plain(spec(), 200);
    h.at(T0 + 100);
    h.commit_targeted();
    h.at(T0 + SOAK + 100);
    assert_eq!(h.status().current_wave, Some(1));
    h.at(T0);
    assert_eq!(h.status().current_wave, Some(1));
    assert!(h.gate().expires_at > T0 + SOAK + 100);
}

#[test]
fn status_serializes_to_json_for_the_api_and_the_cli() {
    let mut s = spec();
    s.groups = vec![group("canary")];
    let mut h = Harness::new(s, 10, |i| {
        if i == 0 {
            vec![group("canary")]
        } else {
            Vec::new()
        }
    });
    h.at(T0);
    let v = serde_json::to_value(h.status()).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["release"], rel().to_string());
    assert_eq!(v["waves"][0]["kind"], "groups");
    assert_eq!(v["waves"][1]["kind"]["percent"], 1);
    assert_eq!(v["waves"][0]["counts"]["targeted"], 1);
    assert_eq!(v["gate_sequence"], 100);
}
