//! Snapshots and restore.

use super::*;

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
        devices: Vec::new(),
        prefetch_bp: 0,
    })
    .unwrap();
    assert!(matches!(
        Planner::restore(&gate),
        Err(RestoreError::Codec(_))
    ));
}

#[test]
fn a_snapshot_of_ten_thousand_devices_mid_rollout_fits_the_codec_limit() {
    let mut s = spec();
    s.waves = vec![50, 100];
    let mut h = Harness::plain(s, 10_000);
    h.at(T0);
    h.commit_targeted();
    let bytes = h.p.snapshot().unwrap();
    assert!(bytes.len() < 600 * 1024, "{}", bytes.len());
    let r = Planner::restore(&bytes).unwrap();
    assert_eq!(r.status(h.now), h.status());
}

#[test]
fn a_restart_in_the_middle_of_a_soak_keeps_its_end() {
    let mut h = Harness::plain(spec(), 300);
    h.at(T0);
    h.commit_targeted();
    h.at(T0 + 100);
    let saved = h.p.snapshot().unwrap();
    // The broker is down for a while; the restored planner still ends the
    // soak at the original time, not 600 s after the restart.
    let mut r = Planner::restore(&saved).unwrap();
    assert_eq!(r.poll_timeout(), Some(T0 + SOAK));
    r.handle_timeout(T0 + SOAK - 1);
    assert_eq!(r.status(T0 + SOAK - 1).current_wave, Some(0));
    r.handle_timeout(T0 + SOAK);
    assert_eq!(r.status(T0 + SOAK).current_wave, Some(1));
    let g = r.current_gate().unwrap();
    assert_eq!(g.sequence, h.gate().sequence + 1);
}
