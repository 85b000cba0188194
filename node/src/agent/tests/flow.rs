//! Whole updates through every state.

use meshota_protocol::{Action, Event, UpdateState::*};

use super::*;
use crate::install::Activation;

#[test]
fn an_update_goes_through_every_state_and_the_slot_is_byte_identical_to_the_payload() {
    let rig = Rig::new();
    let (d, p1, m1) = rig.on_v1();
    assert_eq!(d.agent.phase(), Committed);
    let statuses: Vec<_> = rig
        .reports
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|b| match b {
            ReportBody::Status(s) => Some(s.state),
            _ => None,
        })
        .collect();
    for s in [
        Downloading,
        Downloaded,
        Installing,
        Installed,
        Activated,
        Committed,
    ] {
        assert!(statuses.contains(&s), "no status for {s:?}");
    }
    let evs = rig.reports.take_events();
    assert_eq!(
        transitions(&evs),
        vec![
            (Idle, Downloading),
            (Downloading, Downloaded),
            (Downloaded, Installing),
            (Installing, Installed),
            (Installed, Activated),
            (Activated, Committed),
        ]
    );
    assert_eq!(rig.active_payload().unwrap(), p1);
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::HealthResult { ok: true, .. })));
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::Progress { total, .. } if *total == m1.payload_size)));
    assert_eq!(d.agent.state().installed_version, Some(v(1)));

    // A second release lands in the other slot.
    let (p2, m2) = rig.payload(2);
    let mut d = d;
    d.agent.handle_announcement(
        rig.world.announce(&m2, 2, 2, Action::InstallAndActivate),
        NOW + 10,
    );
    let d = settle(&rig, d, NOW + 10);
    assert_eq!(d.agent.phase(), Committed);
    assert_eq!(rig.active_payload().unwrap(), p2);
    let st = rig.slot_status();
    assert_eq!(st.active_slot.as_deref(), Some("b"));
    assert!(!st.trial);
    assert_eq!(st.active_version, Some(v(2)));
}

#[test]
fn every_transition_publishes_a_status_after_its_state_change_event() {
    let w = world();
    let mut a = Agent::new(agent_config(&w), Default::default());
    a.handle_boot(SlotStatus::default(), NOW);
    drain(&mut a);
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    a.handle_announcement(w.announce(&m1, 1, 1, Action::Download), NOW);
    let acts = drain(&mut a);
    let pos_persist = acts
        .iter()
        .position(|x| matches!(x, AgentAction::Persist(_)))
        .unwrap();
    let pos_change = acts
        .iter()
        .position(|x| {
            matches!(
                x,
                AgentAction::Publish(ReportBody::Event(Event::StateChanged { .. }))
            )
        })
        .unwrap();
    let pos_status = acts
        .iter()
        .position(
            |x| matches!(x, AgentAction::Publish(ReportBody::Status(s)) if s.state == Downloading),
        )
        .unwrap();
    let pos_fetch = acts
        .iter()
        .position(|x| matches!(x, AgentAction::Fetch { .. }))
        .unwrap();
    assert!(pos_persist < pos_change && pos_change < pos_status && pos_status < pos_fetch);
}

#[test]
fn a_failing_health_check_rolls_back_reports_it_and_keeps_the_old_slot_active() {
    let rig = Rig::new();
    let (mut d, p1, _) = rig.on_v1();
    rig.reports.take_events();
    let (_, m2) = rig.payload(2);

    rig.set_healthy(false);
    d.agent.handle_announcement(
        rig.world.announce(&m2, 2, 2, Action::InstallAndActivate),
        NOW + 5,
    );
    let d = settle(&rig, d, NOW + 5);
    assert_eq!(d.agent.phase(), RolledBack);
    let evs = rig.reports.take_events();
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::HealthResult { ok: false, .. })));
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::Error { code, .. } if code == "E_HEALTH_FAILED")));
    assert_eq!(transitions(&evs).last(), Some(&(Activated, RolledBack)));
    assert!(!evs
        .iter()
        .any(|e| matches!(e, Event::StateChanged { to: Committed, .. })));
    assert_eq!(rig.active_payload().unwrap(), p1);
    assert_eq!(d.agent.state().installed_version, Some(v(1)));
    assert!(!rig.slot_status().trial);
    assert_eq!(d.agent.status().version, Some(v(1)));

    // The retained announcement of the bad release does not make it retry.
    let mut d = rig.start(NOW + 100);
    d.agent.handle_announcement(
        rig.world.announce(&m2, 2, 3, Action::InstallAndActivate),
        NOW + 100,
    );
    let d = settle(&rig, d, NOW + 100);
    assert_eq!(d.agent.phase(), RolledBack);
    assert_eq!(rig.active_payload().unwrap(), p1);
}

#[test]
fn a_health_check_that_misses_its_deadline_rolls_back() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut a = Agent::new(agent_config(&w), Default::default());
    a.handle_boot(SlotStatus::default(), NOW);
    a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), NOW);
    a.handle_fetch_done(Ok(()), NOW);
    a.handle_install_done(Ok("a".into()), NOW);
    a.handle_activate_done(Ok(Activation::Live), NOW);
    let acts = drain(&mut a);
    let deadline = acts
        .iter()
        .find_map(|x| match x {
            AgentAction::RunHealth { deadline, .. } => Some(*deadline),
            _ => None,
        })
        .unwrap();
    assert_eq!(a.poll_timeout(), Some(deadline));
    a.handle_timeout(deadline - 1);
    assert_eq!(a.phase(), Activated);
    a.handle_timeout(deadline);
    let acts = drain(&mut a);
    assert_eq!(a.phase(), RolledBack);
    assert!(acts
        .iter()
        .any(|x| matches!(x, AgentAction::Rollback { .. })));
    assert_eq!(error_codes(&acts), vec!["E_HEALTH_TIMEOUT"]);
    // A late answer changes nothing.
    a.handle_health_result(true, "late".into(), deadline + 1);
    assert_eq!(a.phase(), RolledBack);
}

#[test]
fn the_trial_boot_limit_triggers_a_rollback() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut a = Agent::new(agent_config(&w), Default::default());
    a.handle_boot(SlotStatus::default(), NOW);
    a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), NOW);
    a.handle_fetch_done(Ok(()), NOW);
    a.handle_install_done(Ok("b".into()), NOW);
    a.handle_activate_done(Ok(Activation::RebootRequired), NOW);
    let acts = drain(&mut a);
    assert!(acts.iter().any(|x| matches!(x, AgentAction::Reboot)));
    let state = a.state().clone();
    let rel = state.target().unwrap();
    let on_new = SlotStatus {
        active_slot: Some("b".into()),
        active_release: Some(rel),
        active_version: Some(v(1)),
        trial: true,
    };
    // The new slot hangs before its health check answers, three boots running.
    let mut state = state;
    for boot in 1..=3 {
        let mut a = Agent::new(agent_config(&w), state.clone());
        a.handle_boot(on_new.clone(), NOW + boot);
        let acts = drain(&mut a);
        assert!(
            acts.iter()
                .any(|x| matches!(x, AgentAction::RunHealth { .. })),
            "boot {boot}"
        );
        assert_eq!(a.state().trial_boots, boot as u32);
        state = a.state().clone();
    }
    let mut a = Agent::new(agent_config(&w), state);
    a.handle_boot(on_new, NOW + 4);
    let acts = drain(&mut a);
    assert_eq!(a.phase(), RolledBack);
    assert!(acts
        .iter()
        .any(|x| matches!(x, AgentAction::Rollback { .. })));
    assert!(!acts
        .iter()
        .any(|x| matches!(x, AgentAction::RunHealth { .. })));
    assert_eq!(error_codes(&acts), vec!["E_TRIAL_BOOTS"]);
}

#[test]
fn a_bootloader_fallback_during_the_trial_is_reported_as_a_rollback() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut a = Agent::new(agent_config(&w), Default::default());
    a.handle_boot(
        SlotStatus {
            active_slot: Some("A".into()),
            ..Default::default()
        },
        NOW,
    );
    a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), NOW);
    a.handle_fetch_done(Ok(()), NOW);
    a.handle_install_done(Ok("other".into()), NOW);
    a.handle_activate_done(Ok(Activation::RebootRequired), NOW);
    let state = a.state().clone();
    // RAUC-like: no release ids, only slot names; booted the old one again.
    let mut a = Agent::new(agent_config(&w), state);
    a.handle_boot(
        SlotStatus {
            active_slot: Some("A".into()),
            ..Default::default()
        },
        NOW + 1,
    );
    let acts = drain(&mut a);
    assert_eq!(a.phase(), RolledBack);
    assert_eq!(error_codes(&acts), vec!["E_FELL_BACK"]);
}

#[test]
fn download_only_stops_at_downloaded_and_a_later_gate_continues() {
    let rig = Rig::new();
    let (p1, m1) = rig.payload(1);
    let mut d = rig.start(NOW);
    d.agent
        .handle_announcement(rig.world.announce(&m1, 1, 1, Action::Download), NOW);
    let mut d = settle(&rig, d, NOW);
    assert_eq!(d.agent.phase(), Downloaded);
    assert!(rig.active_payload().is_none());
    d.agent
        .handle_announcement(rig.world.announce(&m1, 1, 2, Action::Install), NOW + 1);
    let mut d = settle(&rig, d, NOW + 1);
    assert_eq!(d.agent.phase(), Installed);
    assert!(
        rig.active_payload().is_none(),
        "install must not switch slots"
    );
    d.agent.handle_announcement(
        rig.world.announce(&m1, 1, 3, Action::InstallAndActivate),
        NOW + 2,
    );
    let d = settle(&rig, d, NOW + 2);
    assert_eq!(d.agent.phase(), Committed);
    assert_eq!(rig.active_payload().unwrap(), p1);
}

#[test]
fn after_each_commit_the_store_keeps_only_the_committed_and_the_previous_release() {
    use crate::store::Store as _;
    let rig = Rig::new();
    let mut d = rig.start(NOW);
    let mut manifests = Vec::new();
    for minor in 1..=3 {
        // Each payload reaches the store just before its announcement,
        // as a fetch would bring it.
        let (_, m) = rig.payload(minor);
        d.agent.handle_announcement(
            rig.world
                .announce(&m, minor, minor, Action::InstallAndActivate),
            NOW + minor,
        );
        d = settle(&rig, d, NOW + minor);
        assert_eq!(d.agent.phase(), Committed);
        manifests.push(m);
    }
    let id = |m: &Manifest| m.id().unwrap();
    let store = rig.store.as_ref();
    assert_eq!(store.get_manifest(&id(&manifests[0])).unwrap(), None);
    for m in &manifests[1..] {
        assert!(store.get_manifest(&id(m)).unwrap().is_some());
        assert_eq!(store.held(m).unwrap().count(), m.chunks.len());
    }
    let kept: std::collections::HashSet<_> = manifests[1..]
        .iter()
        .flat_map(|m| m.chunks.iter().map(|c| c.id))
        .collect();
    let gone: Vec<_> = manifests[0]
        .chunks
        .iter()
        .filter(|c| !kept.contains(&c.id))
        .collect();
    assert!(!gone.is_empty());
    assert!(gone.iter().all(|c| !store.has_chunk(&c.id).unwrap()));
    // The store's own count agrees: two releases' chunks and no more.
    assert_eq!(store.usage().unwrap().0, kept.len() as u64);
}

#[test]
fn a_rolled_back_release_is_pruned_before_the_next_download_starts() {
    let rig = Rig::new();
    let (mut d, _, m1) = rig.on_v1();
    rig.set_healthy(false);
    let (_, m2) = rig.payload(2);
    d.agent.handle_announcement(
        rig.world.announce(&m2, 2, 2, Action::InstallAndActivate),
        NOW + 1,
    );
    let mut d = settle(&rig, d, NOW + 1);
    assert_eq!(d.agent.phase(), RolledBack);
    // The next release: the store is pruned to the committed one and the
    // newcomer before its download starts, so v2 does not wait for v3's
    // commit to leave.
    let (_, m3) = rig.payload(3);
    d.agent.handle_announcement(
        rig.world.announce(&m3, 3, 3, Action::InstallAndActivate),
        NOW + 2,
    );
    let acts = std::iter::from_fn(|| d.agent.poll_action()).collect::<Vec<_>>();
    let prune = acts
        .iter()
        .position(|x| matches!(x, AgentAction::PruneStore { .. }))
        .expect("a prune before the fetch");
    let fetch = acts
        .iter()
        .position(|x| matches!(x, AgentAction::Fetch { .. }))
        .unwrap();
    assert!(prune < fetch);
    let AgentAction::PruneStore { keep } = &acts[prune] else {
        unreachable!()
    };
    assert_eq!(keep, &vec![m1.id().unwrap(), m3.id().unwrap()]);
}

#[test]
fn an_incomplete_download_is_retried_with_backoff_and_then_fails() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut cfg = agent_config(&w);
    cfg.max_fetch_attempts = 3;
    let mut a = Agent::new(cfg, Default::default());
    a.handle_boot(SlotStatus::default(), NOW);
    a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), NOW);
    drain(&mut a);
    a.handle_fetch_done(Err("peer went away".into()), NOW);
    assert_eq!(a.phase(), Downloading);
    let t = a.poll_timeout().unwrap();
    assert_eq!(t, NOW + 10);
    a.handle_timeout(t);
    assert!(drain(&mut a)
        .iter()
        .any(|x| matches!(x, AgentAction::Fetch { .. })));
    a.handle_fetch_done(Err("again".into()), t);
    let t2 = a.poll_timeout().unwrap();
    assert_eq!(t2, t + 20, "the delay doubles");
    a.handle_timeout(t2);
    a.handle_fetch_done(Err("and again".into()), t2);
    let acts = drain(&mut a);
    assert_eq!(a.phase(), Failed);
    assert!(error_codes(&acts).contains(&"E_FETCH_FAILED".to_string()));
}

#[test]
fn a_release_announced_during_a_trial_is_taken_up_after_the_commit() {
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let mut d = rig.start(NOW);
    d.agent.handle_announcement(
        rig.world.announce(&m1, 1, 1, Action::InstallAndActivate),
        NOW,
    );
    // Stop just before the health check runs.
    loop {
        match d.agent.poll_action() {
            Some(AgentAction::RunHealth { .. }) => break,
            Some(a) => d.execute_for_test(a, NOW),
            None => panic!("no health check"),
        }
    }
    assert_eq!(d.agent.phase(), Activated);
    assert_eq!(d.agent.status().slot.as_deref(), Some("a"));
    let (p2, m2) = rig.payload(2);
    d.agent.handle_announcement(
        rig.world.announce(&m2, 2, 2, Action::InstallAndActivate),
        NOW,
    );
    assert!(d.agent.state().next.is_some());
    assert_eq!(d.agent.phase(), Activated, "the trial is not abandoned");
    d.agent.handle_health_result(true, "ok".into(), NOW);
    let d = settle(&rig, d, NOW);
    assert_eq!(d.agent.phase(), Committed);
    assert_eq!(d.agent.state().installed_version, Some(v(2)));
    assert_eq!(rig.active_payload().unwrap(), p2);
    assert_eq!(d.agent.status().slot.as_deref(), Some("b"));
}

#[test]
fn a_failed_reboot_is_retried_and_nothing_else_starts_meanwhile() {
    let w = world();
    let rig = Rig::new();
    let (_, m1) = rig.payload(1);
    let (_, m2) = rig.payload(2);
    let mut a = Agent::new(agent_config(&w), Default::default());
    a.handle_boot(SlotStatus::default(), NOW);
    a.handle_announcement(w.announce(&m1, 1, 1, Action::InstallAndActivate), NOW);
    a.handle_fetch_done(Ok(()), NOW);
    a.handle_install_done(Ok("b".into()), NOW);
    a.handle_activate_done(Ok(Activation::RebootRequired), NOW);
    assert!(a.state().reboot_pending);
    drain(&mut a);
    a.handle_reboot_failed("systemctl: not found".into(), NOW);
    let acts = drain(&mut a);
    assert_eq!(error_codes(&acts), vec!["E_REBOOT_FAILED"]);
    assert!(!acts
        .iter()
        .any(|x| matches!(x, AgentAction::RunHealth { .. })));
    // A new release waits too.
    a.handle_announcement(w.announce(&m2, 2, 2, Action::InstallAndActivate), NOW + 1);
    assert!(!drain(&mut a)
        .iter()
        .any(|x| matches!(x, AgentAction::Fetch { .. })));
    assert_eq!(a.poll_timeout(), Some(NOW + 60));
    a.handle_timeout(NOW + 60);
    assert!(drain(&mut a)
        .iter()
        .any(|x| matches!(x, AgentAction::Reboot)));
}
