//! Waves: sizes, thresholds, soak, max-parallel, fleet changes.

use super::*;

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
        site: None,
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
            site: None,
        },
        h.now,
    );
    h.p.handle_device(
        DeviceInfo {
            id: dev(51),
            groups: Vec::new(),
            compatible: Compatible::new("x86").unwrap(),
            site: None,
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
fn a_rollout_whose_not_before_has_passed_is_due_at_once() {
    let mut s = spec();
    s.not_before = 0;
    let mut p = Planner::new(RolloutId::digest(b"r"), s, T0).unwrap();
    p.handle_device(
        DeviceInfo {
            id: dev(1),
            groups: Vec::new(),
            compatible: compat(),
            site: None,
        },
        T0,
    );
    assert_eq!(
        p.state(),
        RolloutState::Scheduled,
        "registering starts nothing"
    );
    assert_eq!(p.poll_timeout(), Some(T0));
    p.handle_timeout(T0);
    assert_eq!(p.state(), RolloutState::Running);
    assert!(p.current_gate().is_some());
}

#[test]
fn a_device_that_reported_before_it_was_targeted_counts_once_targeted() {
    let mut s = spec();
    s.waves = vec![10, 100];
    let mut h = Harness::plain(s, 20);
    h.at(T0);
    let outside: Vec<_> = h
        .fleet
        .keys()
        .filter(|d| !h.targeted().contains(d))
        .cloned()
        .collect();
    // Installed by hand, or by an earlier rollout of the same release.
    h.commit(&outside[..1]);
    assert_eq!(h.status().waves[1].counts.succeeded, 0);
    h.commit_targeted();
    h.run_until(T0 + SOAK);
    let c = h.status().waves[1].counts;
    assert_eq!((c.targeted, c.succeeded), (18, 1));
}

#[test]
fn a_removed_device_no_longer_holds_its_wave_below_the_threshold() {
    let mut s = spec();
    s.waves = vec![50, 100];
    s.success_threshold_pct = 100;
    let mut h = Harness::plain(s, 20);
    h.at(T0);
    let t = h.targeted();
    assert_eq!(t.len(), 10);
    h.commit(&t[1..]);
    h.run_until(T0 + SOAK);
    assert_eq!(h.status().current_wave, Some(0));
    // Decommissioned: the registry now files it under another class.
    h.p.handle_device(
        DeviceInfo {
            id: t[0].clone(),
            groups: Vec::new(),
            compatible: Compatible::new("retired").unwrap(),
            site: None,
        },
        h.now,
    );
    h.drain();
    let st = h.status();
    assert_eq!(st.eligible_devices, 19);
    assert_eq!(st.waves[0].counts.targeted, 9);
    assert_eq!(st.current_wave, Some(1));
    h.p.handle_device_removed(&t[1], h.now);
    assert_eq!(h.status().waves[0].counts.targeted, 8);
    assert_eq!(h.status().waves[0].counts.succeeded, 8);
}
