//! One test per way an announcement or command can fail verification.

use super::*;
use crate::ids::{Compatible, DeviceId, FleetId, ReleaseId};
use crate::release::{Command, CommandAction};
use crate::trust::SecretKey;
use crate::verify::{verify_announcement, verify_command, DeviceContext, VerifyError};

fn ctx<'a>(w: &'a World, compatible: &'a Compatible) -> DeviceContext<'a> {
    DeviceContext {
        root: &w.root,
        compatible,
        installed: None,
        last_release_sequence: 0,
        last_release: None,
        last_gate_sequence: 0,
        now: NOW,
    }
}

fn rpi4() -> Compatible {
    Compatible::new("rpi4").unwrap()
}

#[test]
fn a_valid_announcement_verifies() {
    let w = world();
    let c = rpi4();
    let v = verify_announcement(&w.announcement(), &ctx(&w, &c)).unwrap();
    assert_eq!(v.release, w.release);
    assert_eq!(v.gate.sequence, 7);
}

#[test]
fn a_release_signed_by_a_stranger_is_an_unknown_key() {
    let w = world();
    let c = rpi4();
    let mut ann = w.announcement();
    ann.release = Signed::sign(&w.release, &[&SecretKey::from_seed([77; 32])]).unwrap();
    let err = verify_announcement(&ann, &ctx(&w, &c)).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
    assert_eq!(err.code(), "E_UNKNOWN_KEY");
}

#[test]
fn a_release_below_threshold_is_refused() {
    let w = world();
    let c = rpi4();
    let mut ann = w.announcement();
    ann.release = Signed::sign(&w.release, &[&w.keys.release[0]]).unwrap();
    let err = verify_announcement(&ann, &ctx(&w, &c)).unwrap_err();
    assert!(matches!(err, VerifyError::BelowThreshold { .. }), "{err}");
}

#[test]
fn a_forged_release_body_is_a_bad_signature() {
    let w = world();
    let c = rpi4();
    let mut ann = w.announcement();
    let mut forged = w.release.clone();
    forged.version = semver::Version::new(9, 9, 9);
    let body = crate::codec::encode(&forged).unwrap();
    ann.release = ann.release.with_body(body);
    let err = verify_announcement(&ann, &ctx(&w, &c)).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
}

#[test]
fn a_gate_signed_with_the_release_key_instead_of_rollout_is_refused() {
    let w = world();
    let c = rpi4();
    let mut ann = w.announcement();
    let gate = w.gate_for(&ann.release, 9);
    ann.gate = Signed::sign(&gate, &[&w.keys.release[0]]).unwrap();
    let err = verify_announcement(&ann, &ctx(&w, &c)).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
}

#[test]
fn an_expired_gate_is_refused() {
    let w = world();
    let c = rpi4();
    let ann = w.announcement();
    let mut cx = ctx(&w, &c);
    cx.now = NOW + 86_400;
    let err = verify_announcement(&ann, &cx).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Expired {
                document: crate::verify::DocKind::RolloutGate,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), "E_EXPIRED");
}

#[test]
fn an_expired_release_is_refused() {
    let w = world();
    let c = rpi4();
    let mut r = w.release.clone();
    r.expires_at = NOW - 1;
    let release = w.sign_release(&r);
    let gate = w.sign_gate(&w.gate_for(&release, 1));
    let ann = Announcement {
        release,
        gate,
        bootstrap: vec![],
        http_origin: None,
    };
    let err = verify_announcement(&ann, &ctx(&w, &c)).unwrap_err();
    assert!(matches!(err, VerifyError::Expired { .. }), "{err}");
}

#[test]
fn an_expired_trust_root_is_refused() {
    let mut w = world();
    let c = rpi4();
    w.root.expires_at = NOW;
    let err = verify_announcement(&w.announcement(), &ctx(&w, &c)).unwrap_err();
    assert!(matches!(err, VerifyError::Expired { .. }), "{err}");
}

#[test]
fn a_replayed_gate_is_refused() {
    let w = world();
    let c = rpi4();
    let mut cx = ctx(&w, &c);
    cx.last_gate_sequence = 7;
    let err = verify_announcement(&w.announcement(), &cx).unwrap_err();
    assert!(matches!(err, VerifyError::Replayed { .. }), "{err}");
    assert_eq!(err.code(), "E_REPLAYED");
}

#[test]
fn an_older_release_sequence_is_refused_even_with_a_fresh_gate() {
    let w = world();
    let c = rpi4();
    let mut cx = ctx(&w, &c);
    cx.last_release_sequence = 6;
    let err = verify_announcement(&w.announcement(), &cx).unwrap_err();
    assert!(matches!(err, VerifyError::Replayed { .. }), "{err}");
}

#[test]
fn the_same_release_under_a_newer_gate_is_not_a_replay() {
    let w = world();
    let c = rpi4();
    let ann = w.announcement();
    let mut cx = ctx(&w, &c);
    cx.last_release_sequence = 5;
    cx.last_release = Some(ann.release.id());
    cx.last_gate_sequence = 6;
    verify_announcement(&ann, &cx).unwrap();
}

#[test]
fn a_downgrade_is_refused_even_when_the_rollout_key_signs_it() {
    let w = world();
    let c = rpi4();
    let installed = semver::Version::new(2, 0, 0);
    let mut cx = ctx(&w, &c);
    cx.installed = Some(&installed);
    let err = verify_announcement(&w.announcement(), &cx).unwrap_err();
    assert!(matches!(err, VerifyError::Downgrade { .. }), "{err}");
    let same = w.release.version.clone();
    cx.installed = Some(&same);
    assert!(matches!(
        verify_announcement(&w.announcement(), &cx),
        Err(VerifyError::Downgrade { .. })
    ));
}

#[test]
fn a_release_for_another_device_class_is_refused() {
    let w = world();
    let jetson = Compatible::new("jetson").unwrap();
    let err = verify_announcement(&w.announcement(), &ctx(&w, &jetson)).unwrap_err();
    assert!(matches!(err, VerifyError::Incompatible { .. }), "{err}");
}

#[test]
fn a_gate_from_another_release_is_mix_and_match() {
    let w = world();
    let c = rpi4();
    let mut ann = w.announcement();
    let mut gate = w.gate_for(&ann.release, 8);
    gate.release_id = ReleaseId::digest(b"another release");
    ann.gate = w.sign_gate(&gate);
    let err = verify_announcement(&ann, &ctx(&w, &c)).unwrap_err();
    assert!(matches!(err, VerifyError::GateMismatch { .. }), "{err}");
}

#[test]
fn an_oversize_announcement_is_too_large_before_decoding() {
    let big = vec![0u8; crate::Kind::Announcement.max_size() + 1000];
    let err: VerifyError = crate::codec::decode::<Announcement>(&big)
        .unwrap_err()
        .into();
    assert!(matches!(err, VerifyError::TooLarge(_)), "{err}");
    assert_eq!(err.code(), "E_TOO_LARGE");
}

#[test]
fn garbage_is_malformed() {
    let err: VerifyError = crate::codec::decode::<Announcement>(b"\x83\x01\x06\x41\x00")
        .unwrap_err()
        .into();
    assert!(matches!(err, VerifyError::Malformed(_)), "{err}");
}

fn command(w: &World, target: Option<&str>, sequence: u64, expires_at: u64) -> Signed<Command> {
    let cmd = Command {
        fleet: FleetId::new("acme").unwrap(),
        target: target.map(|t| DeviceId::new(t).unwrap()),
        action: CommandAction::Rollback { to: None },
        sequence,
        expires_at,
    };
    Signed::sign(&cmd, &[&w.keys.rollout[0]]).unwrap()
}

#[test]
fn commands_are_checked_for_address_expiry_and_replay() {
    let w = world();
    let fleet = FleetId::new("acme").unwrap();
    let me = DeviceId::new("d1").unwrap();
    let check = |s: &Signed<Command>, last| verify_command(s, &w.root, &fleet, &me, last, NOW);
    assert!(check(&command(&w, Some("d1"), 3, NOW + 10), 2).is_ok());
    assert!(check(&command(&w, None, 3, NOW + 10), 2).is_ok());
    assert!(matches!(
        check(&command(&w, Some("d2"), 3, NOW + 10), 2),
        Err(VerifyError::NotForThisDevice(_))
    ));
    assert!(matches!(
        check(&command(&w, Some("d1"), 3, NOW), 2),
        Err(VerifyError::Expired { .. })
    ));
    assert!(matches!(
        check(&command(&w, Some("d1"), 2, NOW + 10), 2),
        Err(VerifyError::Replayed { .. })
    ));
    let forged = Signed::sign(
        &command(&w, Some("d1"), 3, NOW + 10)
            .decode_unverified()
            .unwrap(),
        &[&SecretKey::from_seed([1; 32])],
    )
    .unwrap();
    assert!(check(&forged, 2).is_err());
}
