//! Trust-root rotation over the air: a device adopts a newer root only
//! through a chain signed by the root it holds, keeps it across restarts,
//! and verifies with the rotated-in keys from then on.

use meshota_protocol::{Action, Announcement, Signed, TrustChain, TrustRoot, UpdateState};

use super::*;

/// The world's root key (see [`world`]).
fn root_key() -> SecretKey {
    SecretKey::from_seed([1; 32])
}

/// Root v2 of `w`: the same keys but a new rollout key.
fn rotated(w: &World, new_rollout: &SecretKey) -> TrustRoot {
    let mut next = w.root.clone();
    next.version = 2;
    next.rollout = role(&[new_rollout], 1);
    next
}

fn chain(w: &World, next: &TrustRoot, signer: &SecretKey) -> TrustChain {
    TrustChain {
        roots: vec![
            Signed::sign(&w.root, &[&root_key()]).unwrap(),
            Signed::sign(next, &[signer]).unwrap(),
        ],
    }
}

/// An announcement of `m` whose gate the given rollout key signed.
fn gated_by(w: &World, m: &Manifest, seq: u64, rollout: &SecretKey) -> Announcement {
    let release = w.sign_release(&w.release(m, seq));
    let gate = Signed::sign(&w.gate(&release, seq, Action::Download), &[rollout]).unwrap();
    Announcement {
        release,
        gate,
        bootstrap: vec![],
        http_origin: None,
    }
}

#[test]
fn a_rotated_rollout_key_is_adopted_from_the_chain_and_survives_a_restart() {
    let w = world();
    let rig = Rig::new();
    let (_, m2) = rig.payload(2);
    let new_rollout = SecretKey::from_seed([9; 32]);
    let next = rotated(&w, &new_rollout);
    let mut a = booted_on_v1_1(&w, AgentState::default());

    // Before the rotation the new key is a stranger.
    a.handle_announcement(gated_by(&w, &m2, 10, &new_rollout), NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_UNKNOWN_KEY"]);

    a.handle_trust_chain(chain(&w, &next, &root_key()), NOW);
    let acts = drain(&mut a);
    let persisted = acts.iter().position(|x| match x {
        AgentAction::Persist(s) => s.trust_chain.is_some(),
        _ => false,
    });
    let resync = acts.iter().position(|x| *x == AgentAction::Resync);
    assert!(
        persisted.is_some() && resync.is_some() && persisted < resync,
        "the chain is persisted before anything is re-read: {acts:?}"
    );
    assert!(events(&acts).contains(&Event::TrustRotated { from: 1, to: 2 }));
    assert_eq!(a.trust_root(), &next);
    assert_eq!(a.status().trust_version, Some(2));

    // Now the rotated-in key opens the release and the retired one does not.
    a.handle_announcement(gated_by(&w, &m2, 10, &w.rollout_key), NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_UNKNOWN_KEY"]);
    a.handle_announcement(gated_by(&w, &m2, 10, &new_rollout), NOW);
    assert!(drain(&mut a)
        .iter()
        .any(|x| matches!(x, AgentAction::Fetch { .. })));

    // A restart from the persisted state with the shipped (v1) root file.
    let again = booted_on_v1_1(&w, a.state().clone());
    assert_eq!(again.trust_root(), &next);
    assert_eq!(again.phase(), UpdateState::Downloading);
}

#[test]
fn a_forged_expired_or_stale_chain_changes_nothing() {
    let w = world();
    let new_rollout = SecretKey::from_seed([9; 32]);
    let mut a = booted_on_v1_1(&w, AgentState::default());

    // Signed by a key that is not the device's root key: what a control
    // plane holding only the online key could produce.
    let forged = chain(&w, &rotated(&w, &new_rollout), &w.rollout_key);
    a.handle_trust_chain(forged, NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_UNKNOWN_KEY"]);
    assert_eq!(a.trust_root(), &w.root);

    let mut lapsed = rotated(&w, &new_rollout);
    lapsed.expires_at = NOW - 1;
    a.handle_trust_chain(chain(&w, &lapsed, &root_key()), NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_EXPIRED"]);
    assert_eq!(a.trust_root(), &w.root);
    assert_eq!(a.state().trust_chain, None);

    // Garbage on the topic is a typed error, not a panic.
    a.handle_trust_chain_bytes(b"\xff\x00garbage", NOW);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_MALFORMED"]);

    // The current chain delivered again (every reconnect) is silent.
    let good = chain(&w, &rotated(&w, &new_rollout), &root_key());
    a.handle_trust_chain(good.clone(), NOW);
    assert!(!drain(&mut a).is_empty());
    a.handle_trust_chain(good, NOW);
    assert_eq!(drain(&mut a), vec![]);
}

#[test]
fn a_persisted_chain_that_does_not_verify_from_a_newly_shipped_root_is_dropped() {
    let w = world();
    let new_rollout = SecretKey::from_seed([9; 32]);
    let state = AgentState {
        trust_chain: Some(chain(&w, &rotated(&w, &new_rollout), &root_key())),
        ..AgentState::default()
    };
    // A new image ships a root with other root keys and version 1.
    let mut other = world();
    other.root.root = role(&[&SecretKey::from_seed([77; 32])], 1);
    let mut a = Agent::new(agent_config(&other), state);
    assert_eq!(a.trust_root(), &other.root);
    assert_eq!(a.state().trust_chain, None);
    assert_eq!(error_codes(&drain(&mut a)), vec!["E_UNKNOWN_KEY"]);
}
