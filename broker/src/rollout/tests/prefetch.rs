//! Prefetch: the next wave downloads while the current one installs,
//! health-checks and soaks.

use meshota_protocol::release::action_for;

use super::*;

fn prefetching(s: RolloutSpec) -> RolloutSpec {
    RolloutSpec {
        prefetch: true,
        ..s
    }
}

/// Devices the live gate has download and nothing more, judged as a
/// device would.
fn downloading_only(h: &Harness) -> Vec<DeviceId> {
    let g = h.gate();
    h.fleet
        .iter()
        .filter(|(id, groups)| action_for(id, groups, &g) == Some(Action::Download))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Has each device report a download and then the start of its install.
fn fetch(h: &mut Harness, devices: &[DeviceId]) {
    for d in devices {
        h.report(d, UpdateState::Downloading);
        h.report(d, UpdateState::Installing);
    }
}

/// Starts the rollout and has the whole first wave fetch; returns it.
fn start_and_fetch(h: &mut Harness) -> Vec<DeviceId> {
    h.at(T0);
    let wave0 = h.targeted();
    fetch(h, &wave0);
    wave0
}

#[test]
fn the_next_wave_downloads_once_the_current_one_has_fetched() {
    let mut s = prefetching(spec());
    s.waves = vec![10, 50, 100];
    let mut h = Harness::plain(s, 100);
    h.at(T0);
    let wave0 = h.targeted();
    assert_eq!(wave0.len(), 10);
    // Two waves fetching at once would compete for the same uplinks.
    assert!(downloading_only(&h).is_empty());
    // 9 of 10 is below the 95 % success threshold; the 10th opens it.
    fetch(&mut h, &wave0[..9]);
    assert!(downloading_only(&h).is_empty());
    let seq = h.gate().sequence;
    fetch(&mut h, &wave0[9..]);
    assert!(h.gate().sequence > seq, "a new gate at once");
    let next = downloading_only(&h);
    assert_eq!(next.len(), 40);
    assert!(next.iter().all(|d| !wave0.contains(d)));
    let st = h.status();
    assert!(st.prefetch);
    assert_eq!(st.prefetch_bp, h.gate().prefetch_bp);
    assert!(st.to_string().contains("downloading ahead to"), "{st}");
    h.commit(&wave0);
    h.run_until(T0 + SOAK);
    assert_eq!(h.status().current_wave, Some(1));
    // The devices that prefetched are now the wave.
    let wave1 = h.targeted();
    assert_eq!(wave1.len(), 50);
    assert!(next.iter().all(|d| wave1.contains(d)));
    assert!(downloading_only(&h).is_empty());
    h.commit_targeted();
    assert_eq!(downloading_only(&h).len(), 50);
    h.run_until(T0 + 2 * SOAK);
    // The last wave has no next one.
    assert_eq!(h.status().current_wave, Some(2));
    assert_eq!(h.gate().prefetch_bp, 0);
}

#[test]
fn without_prefetch_no_gate_opens_downloads_beyond_its_share() {
    let mut h = Harness::plain(spec(), 100);
    h.at(T0);
    for _ in 0..4 {
        h.commit_targeted();
        h.run_until(h.now + SOAK);
    }
    assert_eq!(h.p.state(), RolloutState::Completed);
    assert!(h.gates().iter().all(|g| g.prefetch_bp == 0));
}

#[test]
fn prefetching_devices_count_toward_no_wave_until_theirs_opens() {
    let mut s = prefetching(spec());
    s.waves = vec![10, 100];
    s.max_parallel = Some(10);
    let mut h = Harness::plain(s, 100);
    let wave0 = start_and_fetch(&mut h);
    let next = downloading_only(&h);
    assert_eq!(next.len(), 90);
    for d in &next {
        h.report(d, UpdateState::Downloading);
        h.report(d, UpdateState::Downloaded);
    }
    let w0 = h.status().waves[0].counts;
    assert_eq!((w0.targeted, w0.downloading, w0.installing), (10, 0, 10));
    h.commit(&wave0);
    h.run_until(T0 + SOAK);
    // Their wave opens, 10 at a time: they count as downloading, not as
    // pending, since they said where they are.
    let w1 = h.status().waves[1].counts;
    assert_eq!((w1.targeted, w1.downloading, w1.pending), (10, 10, 0));
}

#[test]
fn a_halt_withdraws_the_prefetch_share_at_once() {
    let mut s = prefetching(spec());
    s.waves = vec![50, 100];
    s.error_threshold_pct = 10;
    let mut h = Harness::plain(s, 40);
    let t = start_and_fetch(&mut h);
    assert!(h.gate().prefetch_bp > h.gate().share_bp);
    let seq = h.gate().sequence;
    h.report(&t[0], UpdateState::Failed);
    h.report(&t[1], UpdateState::RolledBack);
    assert_eq!(h.p.state(), RolloutState::Halted);
    assert!(h.gate().sequence > seq);
    assert_eq!(h.gate().prefetch_bp, 0);
    assert!(downloading_only(&h).is_empty());
    // Frozen: re-signings keep it withdrawn.
    h.run_until(T0 + 86_400);
    assert!(h.gates().iter().rev().take(2).all(|g| g.prefetch_bp == 0));
}

#[test]
fn a_stopped_rollout_prefetches_nobody() {
    let mut h = Harness::plain(prefetching(spec()), 100);
    start_and_fetch(&mut h);
    assert!(!downloading_only(&h).is_empty());
    h.p.handle_command(PlannerCommand::Abort, h.now).unwrap();
    h.drain();
    assert_eq!(h.gate().action, Action::Stop);
    assert_eq!(h.gate().prefetch_bp, 0);
    assert!(downloading_only(&h).is_empty());
}

#[test]
fn a_pause_withdraws_the_prefetch_share_and_a_resume_restores_it() {
    let mut h = Harness::plain(prefetching(spec()), 100);
    start_and_fetch(&mut h);
    let open = h.gate().prefetch_bp;
    assert!(open > h.gate().share_bp);
    h.p.handle_command(PlannerCommand::Pause, h.now).unwrap();
    h.drain();
    assert_eq!(h.gate().prefetch_bp, 0);
    assert!(downloading_only(&h).is_empty());
    h.p.handle_command(PlannerCommand::Resume, h.now).unwrap();
    h.drain();
    assert_eq!(h.gate().prefetch_bp, open);
}
