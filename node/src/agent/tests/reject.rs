//! Bad input: each is refused with its stable code, installs nothing, and
//! leaves the held valid announcement in place.

use meshota_protocol::{codec, Action, Command, CommandAction, Compatible, Signed, UpdateState};

use super::*;

/// An agent on v1.1 holding a valid download-only announcement of v1.2.
fn holding() -> (World, Agent, Manifest) {
    let w = world();
    let rig = Rig::new();
    let (_, m2) = rig.payload(2);
    let a = a_copy(&w, &m2);
    assert_eq!(a.phase(), UpdateState::Downloaded);
    (w, a, m2)
}

fn assert_refused(a: &mut Agent, held: &AgentState, code: &str) {
    let acts = drain(a);
    assert_eq!(error_codes(&acts), vec![code.to_string()]);
    assert!(
        !acts.iter().any(|x| matches!(
            x,
            AgentAction::Fetch { .. } | AgentAction::Install { .. } | AgentAction::Activate { .. }
        )),
        "{code}: {acts:?}"
    );
    assert_eq!(
        a.state().held,
        held.held,
        "{code}: held announcement changed"
    );
    assert_eq!(a.phase(), UpdateState::Downloaded);
}

#[test]
fn bad_announcements_are_each_refused_with_their_code_and_the_held_one_is_kept() {
    let (w, mut a, m2) = holding();
    let before = a.state().clone();
    let rig = Rig::new();
    let (_, m3) = rig.payload(3);
    let (_, m0) = rig.payload(0);

    // Expired release.
    let mut r = w.release(&m3, 11);
    r.expires_at = NOW - 1;
    let release = w.sign_release(&r);
    let gate = w.sign_gate(&w.gate(&release, 11, Action::InstallAndActivate));
    let ann = Announcement {
        release,
        gate,
        bootstrap: vec![],
        http_origin: None,
    };
    a.handle_announcement(ann, NOW);
    assert_refused(&mut a, &before, "E_EXPIRED");

    // Replayed: a release sequence below the one held.
    a.handle_announcement(w.announce(&m3, 9, 11, Action::InstallAndActivate), NOW);
    assert_refused(&mut a, &before, "E_REPLAYED");

    // Replayed gate for the held release.
    let release = w.sign_release(&w.release(&m2, 10));
    let gate = w.sign_gate(&w.gate(&release, 10, Action::InstallAndActivate));
    a.handle_announcement(
        Announcement {
            release,
            gate,
            bootstrap: vec![],
            http_origin: None,
        },
        NOW,
    );
    assert_refused(&mut a, &before, "E_REPLAYED");

    // Forged: the release body changed after signing.
    let good = w.announce(&m3, 11, 11, Action::InstallAndActivate);
    let mut forged_rel = w.release(&m3, 11);
    forged_rel.payload_size += 1;
    let body = Signed::sign(&forged_rel, &[&w.release_keys[0]])
        .unwrap()
        .body()
        .to_vec();
    let forged = Announcement {
        release: good.release.clone().with_body(body),
        ..good.clone()
    };
    a.handle_announcement(forged, NOW);
    assert_refused(&mut a, &before, "E_BAD_SIGNATURE");

    // Below threshold: one of the two release keys.
    let release = Signed::sign(&w.release(&m3, 11), &[&w.release_keys[0]]).unwrap();
    let gate = w.sign_gate(&w.gate(&release, 11, Action::InstallAndActivate));
    a.handle_announcement(
        Announcement {
            release,
            gate,
            bootstrap: vec![],
            http_origin: None,
        },
        NOW,
    );
    assert_refused(&mut a, &before, "E_BELOW_THRESHOLD");

    // Unknown key: a stranger signs the gate.
    let stranger = SecretKey::from_seed([77; 32]);
    let release = w.sign_release(&w.release(&m3, 11));
    let gate = Signed::sign(
        &w.gate(&release, 11, Action::InstallAndActivate),
        &[&stranger],
    )
    .unwrap();
    a.handle_announcement(
        Announcement {
            release,
            gate,
            bootstrap: vec![],
            http_origin: None,
        },
        NOW,
    );
    assert_refused(&mut a, &before, "E_UNKNOWN_KEY");

    // Downgrade: version 1.0 below the installed 1.1.
    a.handle_announcement(w.announce(&m0, 12, 12, Action::InstallAndActivate), NOW);
    assert_refused(&mut a, &before, "E_DOWNGRADE");

    // Incompatible device class.
    let mut r = w.release(&m3, 12);
    r.compatible = Compatible::new("x86-box").unwrap();
    let release = w.sign_release(&r);
    let gate = w.sign_gate(&w.gate(&release, 12, Action::InstallAndActivate));
    a.handle_announcement(
        Announcement {
            release,
            gate,
            bootstrap: vec![],
            http_origin: None,
        },
        NOW,
    );
    assert_refused(&mut a, &before, "E_INCOMPATIBLE");

    // A valid gate, but for another release (mix-and-match).
    let other = w.sign_release(&w.release(&m2, 10));
    let release = w.sign_release(&w.release(&m3, 12));
    let gate = w.sign_gate(&w.gate(&other, 12, Action::InstallAndActivate));
    a.handle_announcement(
        Announcement {
            release,
            gate,
            bootstrap: vec![],
            http_origin: None,
        },
        NOW,
    );
    assert_refused(&mut a, &before, "E_GATE_MISMATCH");

    // Bytes that are not an announcement at all.
    a.handle_announcement_bytes(b"\x83\x01\x06garbage", NOW);
    assert_refused(&mut a, &before, "E_MALFORMED");
    a.handle_announcement_bytes(&vec![0u8; 300 * 1024], NOW);
    assert_refused(&mut a, &before, "E_TOO_LARGE");

    // The held announcement still works once a valid gate opens it.
    a.handle_announcement(w.announce(&m2, 10, 13, Action::Install), NOW);
    assert!(drain(&mut a)
        .iter()
        .any(|x| matches!(x, AgentAction::Install { .. })));
}

#[test]
fn duplicates_are_silent_and_the_installed_release_is_a_no_op() {
    let (w, mut a, m2) = holding();
    let held = a.state().held.clone().unwrap();
    let bytes = codec::encode(&held.announcement).unwrap();
    a.handle_announcement_bytes(&bytes, NOW + 1);
    assert!(drain(&mut a).is_empty());
    // The same documents with other hints are still duplicates.
    let mut again = held.announcement.clone();
    again.http_origin = Some("https://origin.example".into());
    a.handle_announcement(again, NOW + 1);
    assert!(drain(&mut a).is_empty());

    // After committing, the same release (even under a newer gate) is a no-op.
    a.handle_announcement(w.announce(&m2, 10, 11, Action::InstallAndActivate), NOW + 2);
    a.handle_install_done(Ok("b".into()), NOW + 2);
    a.handle_activate_done(Ok(crate::install::Activation::Live), NOW + 2);
    a.handle_health_result(true, "ok".into(), NOW + 2);
    a.handle_commit_done(Ok(()), NOW + 2);
    assert_eq!(a.phase(), UpdateState::Committed);
    drain(&mut a);
    a.handle_announcement(w.announce(&m2, 10, 12, Action::InstallAndActivate), NOW + 3);
    assert!(drain(&mut a).is_empty());
}

fn command(w: &World, action: CommandAction, sequence: u64) -> Vec<u8> {
    let cmd = Command {
        fleet: meshota_protocol::FleetId::new("fleet").unwrap(),
        target: Some(DeviceId::new("dev-1").unwrap()),
        action,
        sequence,
        expires_at: NOW + 3600,
    };
    codec::encode(&Signed::sign(&cmd, &[&w.rollout_key]).unwrap()).unwrap()
}

#[test]
fn commands_are_verified_and_replays_refused() {
    let (w, mut a, _) = holding();
    a.handle_command(&command(&w, CommandAction::CheckNow, 1), NOW);
    let acts = drain(&mut a);
    assert!(acts.iter().any(|x| matches!(x, AgentAction::Resync)));
    assert!(error_codes(&acts).is_empty());
    a.handle_command(&command(&w, CommandAction::CheckNow, 1), NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_REPLAYED"]);
    let forged = {
        let cmd = Command {
            fleet: meshota_protocol::FleetId::new("fleet").unwrap(),
            target: None,
            action: CommandAction::Cancel,
            sequence: 5,
            expires_at: NOW + 3600,
        };
        codec::encode(&Signed::sign(&cmd, &[&w.release_keys[0]]).unwrap()).unwrap()
    };
    a.handle_command(&forged, NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_UNKNOWN_KEY"]);
    assert_eq!(a.phase(), UpdateState::Downloaded);
    a.handle_command(b"nonsense", NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_MALFORMED"]);
}

#[test]
fn cancel_gives_up_an_update_that_is_not_activated() {
    let (w, mut a, _) = holding();
    a.handle_command(&command(&w, CommandAction::Cancel, 1), NOW);
    let acts = drain(&mut a);
    assert_eq!(a.phase(), UpdateState::Failed);
    assert_eq!(error_codes(&acts), vec!["E_CANCELLED"]);
}

#[test]
fn an_operator_rollback_after_commit_returns_to_the_previous_release() {
    let rig = Rig::new();
    let (mut d, p1, _) = rig.on_v1();
    let (_, m2) = rig.payload(2);
    d.agent.handle_announcement(
        rig.world.announce(&m2, 2, 2, Action::InstallAndActivate),
        NOW,
    );
    let mut d = settle(&rig, d, NOW);
    assert_eq!(d.agent.state().installed_version, Some(v(2)));
    d.agent.handle_command(
        &command(&rig.world, CommandAction::Rollback { to: None }, 1),
        NOW + 1,
    );
    let d = settle(&rig, d, NOW + 1);
    assert_eq!(d.agent.phase(), UpdateState::RolledBack);
    assert_eq!(d.agent.state().installed_version, Some(v(1)));
    assert_eq!(rig.active_payload().unwrap(), p1);
    // And it stays there after a restart.
    let d = settle(&rig, rig.start(NOW + 2), NOW + 2);
    assert_eq!(d.agent.state().installed_version, Some(v(1)));
}

#[test]
fn a_signature_proof_for_other_documents_is_ignored_and_a_tampered_gate_still_refused() {
    use meshota_protocol::verify::check_announcement_signatures;
    let (w, mut a, m2) = holding();
    let before = a.state().clone();
    let rig = Rig::new();
    let (_, m3) = rig.payload(3);
    let good = w.announce(&m3, 11, 11, Action::InstallAndActivate);
    let proof = check_announcement_signatures(&good, &w.root).unwrap();
    // The same release under a gate signed by an unknown key: the proof
    // covers the good gate only, so the bad one is checked and refused.
    let release = good.release.clone();
    let stranger = SecretKey::from_seed([9; 32]);
    let gate = Signed::sign(
        &w.gate(&release, 12, Action::InstallAndActivate),
        &[&stranger],
    )
    .unwrap();
    let forged = Announcement {
        gate,
        ..good.clone()
    };
    a.handle_announcement_checked(forged, Some(&proof), NOW);
    assert_refused(&mut a, &before, "E_UNKNOWN_KEY");
    // The proven announcement itself is taken, exactly as without a proof.
    let mut plain = a_copy(&w, &m2);
    a.handle_announcement_checked(good.clone(), Some(&proof), NOW);
    plain.handle_announcement(good, NOW);
    assert_eq!(a.state().held, plain.state().held);
    assert_eq!(drain(&mut a), drain(&mut plain));
}

/// An agent on v1.1 holding `m2` downloaded, as in [`holding`].
fn a_copy(w: &World, m2: &Manifest) -> Agent {
    let mut a = booted_on_v1_1(w, AgentState::default());
    a.handle_announcement(w.announce(m2, 10, 10, Action::Download), NOW);
    a.handle_fetch_done(Ok(()), NOW);
    drain(&mut a);
    a
}
