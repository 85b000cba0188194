//! Power loss at every point: the driver is dropped after each possible
//! number of executed actions and the device restarts from the same data
//! directory (Mender's `Killed_in_<State>` pattern). It must always end
//! committed or rolled back, with the slots consistent with the report.

use meshota_protocol::{Action, UpdateState};

use super::*;

/// Runs one update with a crash after `k` actions; returns the final
/// phase, or `None` when `k` is past the end of an uninterrupted run.
fn crash_after(k: usize, healthy: bool) -> Option<(UpdateState, Rig, Vec<u8>, Vec<u8>)> {
    let rig = Rig::new();
    let (d, p1, _) = rig.on_v1();
    assert_eq!(d.agent.phase(), UpdateState::Committed);
    drop(d);
    // After the commit, as a fetch would bring it (a commit prunes the
    // store to the committed releases).
    let (p2, m2) = rig.payload(2);

    rig.set_healthy(healthy);
    let ann = rig.world.announce(&m2, 2, 2, Action::InstallAndActivate);
    let mut d = rig.start(NOW + 10);
    d.agent.handle_announcement(ann.clone(), NOW + 10);
    let crashed = match d.run(NOW + 10, Some(k)).unwrap() {
        RunOutcome::Stopped => true,
        RunOutcome::Reboot => true,
        RunOutcome::Idle => false,
    };
    if !crashed {
        return None;
    }
    drop(d); // power loss
             // Restart; the broker re-delivers the retained announcement.
    let mut d = rig.start(NOW + 20);
    d.agent.handle_announcement(ann, NOW + 20);
    let d = settle(&rig, d, NOW + 20);
    Some((d.agent.phase(), rig, p1, p2))
}

fn check_every_crash_point(healthy: bool) {
    let mut k = 0;
    while let Some((phase, rig, p1, p2)) = crash_after(k, healthy) {
        let st = rig.slot_status();
        assert!(!st.trial, "crash after {k}: left on trial");
        match phase {
            UpdateState::Committed => {
                assert!(healthy, "crash after {k}: committed an unhealthy release");
                assert_eq!(rig.active_payload().unwrap(), p2, "crash after {k}");
                assert_eq!(st.active_version, Some(v(2)));
            }
            UpdateState::RolledBack => {
                assert_eq!(rig.active_payload().unwrap(), p1, "crash after {k}");
                assert_eq!(st.active_version, Some(v(1)));
            }
            other => panic!("crash after {k} actions ended in {other:?}"),
        }
        k += 1;
    }
    assert!(k > 10, "only {k} crash points exercised");
}

#[test]
fn a_crash_at_any_point_of_a_healthy_update_ends_committed() {
    check_every_crash_point(true);
}

#[test]
fn a_crash_at_any_point_of_an_unhealthy_update_ends_rolled_back() {
    check_every_crash_point(false);
}

#[test]
fn a_crash_between_the_slot_switch_and_the_state_write_is_a_trial_boot() {
    let rig = Rig::new();
    let (mut d, _, _) = rig.on_v1();
    let (p2, m2) = rig.payload(2);
    d.agent
        .handle_announcement(rig.world.announce(&m2, 2, 2, Action::Install), NOW);
    let d = settle(&rig, d, NOW);
    assert_eq!(d.agent.phase(), UpdateState::Installed);
    drop(d);
    // Switch behind the agent's back, as a crash right after the switch would leave it.
    use crate::install::InstallBackend;
    let rel = rig.world.announce(&m2, 2, 2, Action::Install).release.id();
    rig.backend().activate(&rel).unwrap();
    let d = settle(&rig, rig.start(NOW + 1), NOW + 1);
    assert_eq!(d.agent.phase(), UpdateState::Committed);
    assert_eq!(rig.active_payload().unwrap(), p2);
}

#[test]
fn the_persisted_state_survives_a_restart_and_keeps_replay_protection() {
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let (_, m2) = rig.payload(2);
    let mut d = rig.start(NOW);
    d.agent
        .handle_announcement(rig.world.announce(&m2, 5, 9, Action::Download), NOW);
    let d = settle(&rig, d, NOW);
    let before = d.agent.state().clone();
    drop(d);
    let mut d = rig.start(NOW + 1);
    assert_eq!(d.agent.state().last_release_sequence, 5);
    assert_eq!(d.agent.state().last_gate_sequence, 9);
    assert_eq!(d.agent.state().held, before.held);
    rig.reports.take_events();
    // An older release signed long ago is a replay even after the reboot.
    d.agent
        .handle_announcement(rig.world.announce(&m1, 4, 10, Action::Download), NOW + 1);
    let _ = settle(&rig, d, NOW + 1);
    let codes: Vec<_> = rig
        .reports
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            meshota_protocol::Event::Error { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec!["E_REPLAYED"]);
}

#[test]
fn a_corrupt_state_file_is_set_aside_and_the_slots_decide() {
    let rig = Rig::new();
    let (d, p1, _) = rig.on_v1();
    drop(d);
    let file = rig
        .tmp
        .path()
        .join("data")
        .join(super::super::persist::STATE_FILE);
    std::fs::write(&file, b"\xff garbage").unwrap();
    rig.reports.take_events();
    let d = rig.start(NOW + 1);
    assert_eq!(d.agent.state().installed_version, Some(v(1)));
    assert!(exists(&file.with_extension("cbor.corrupt")));
    drop(settle(&rig, d, NOW + 1));
    assert!(rig.reports.take_events().iter().any(
        |e| matches!(e, meshota_protocol::Event::Error { code, .. } if code == "E_STATE_CORRUPT")
    ));
    assert_eq!(rig.active_payload().unwrap(), p1);
}
