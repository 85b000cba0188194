//! Gate freshness and sequences.

use super::*;

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
