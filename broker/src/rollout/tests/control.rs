//! Halts and operator commands.

use super::*;

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
        (
            |s| {
                s.groups = (0..200)
                    .map(|i| Group::new(format!("{i:0>100}")).unwrap())
                    .collect()
            },
            PlanError::TooManyGroups(200),
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
fn pausing_before_the_start_holds_it_until_resumed() {
    let mut h = Harness::plain(spec(), 10);
    h.p.handle_command(PlannerCommand::Pause, h.now).unwrap();
    h.run_until(T0 + SOAK);
    assert_eq!(h.p.state(), RolloutState::Paused);
    assert!(h.p.current_gate().is_none());
    h.p.handle_command(PlannerCommand::Resume, h.now).unwrap();
    assert_eq!(h.p.state(), RolloutState::Scheduled);
    assert_eq!(h.p.poll_timeout(), Some(h.now), "due at once");
    h.at(h.now);
    assert_eq!(h.p.state(), RolloutState::Running);
    assert_eq!(h.targeted().len(), 1);
}

#[test]
fn aborting_a_completed_rollout_stops_devices_that_have_not_installed() {
    let mut s = spec();
    s.waves = vec![100];
    let mut h = Harness::plain(s, 5);
    h.at(T0);
    h.commit_targeted();
    h.run_until(T0 + SOAK);
    assert_eq!(h.p.state(), RolloutState::Completed);
    let seq = h.gate().sequence;
    h.p.handle_command(PlannerCommand::Abort, h.now).unwrap();
    h.drain();
    assert_eq!(h.p.state(), RolloutState::Aborted);
    assert_eq!(h.gate().action, Action::Stop);
    assert_eq!(h.gate().sequence, seq + 1);
}

#[test]
fn devices_that_register_after_an_abort_are_not_targeted() {
    let mut s = spec();
    s.waves = vec![100];
    let mut h = Harness::plain(s, 5);
    h.at(T0);
    h.p.handle_command(PlannerCommand::Abort, h.now).unwrap();
    h.p.handle_device(
        DeviceInfo {
            id: dev(77),
            groups: Vec::new(),
            compatible: compat(),
            site: None,
        },
        h.now,
    );
    let st = h.status();
    assert_eq!(st.eligible_devices, 6);
    assert_eq!(st.waves[0].counts.targeted, 5);
}
