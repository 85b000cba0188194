//! Backend tests in temp directories: the `dir` backend's slot handling,
//! the `command` backend's scripts, and process deadlines.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use meshota_protocol::semver::Version;
use meshota_protocol::{InstallKind, ReleaseId};

use super::command::{CommandBackend, Scripts};
use super::dir::DirBackend;
use super::testutil::{noise, put_payload, put_payload_except, TestStore};
use super::*;

fn rel(n: u8) -> ReleaseId {
    ReleaseId::digest(&[n])
}

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn the_dir_backend_unpacks_an_archive_release_and_a_later_release_of_another_kind_clears_the_tree()
{
    let tmp = tempfile::tempdir().unwrap();
    let store = TestStore::default();
    let mut tar = ::tar::Builder::new(Vec::new());
    let conf = noise(200_000, 9);
    let mut h = ::tar::Header::new_gnu();
    h.set_size(conf.len() as u64);
    h.set_mode(0o640);
    h.set_cksum();
    tar.append_data(&mut h, "opt/app/data.bin", &conf[..])
        .unwrap();
    let archive = tar.into_inner().unwrap();
    let m = put_payload(
        &store,
        &archive,
        Version::new(2, 0, 0),
        InstallKind::Archive,
    );
    let mut b = DirBackend::new(tmp.path(), None).unwrap();
    let req = |release, manifest| InstallRequest {
        release,
        manifest,
        store: &store,
    };
    assert_eq!(b.install(&req(rel(1), &m)).unwrap(), "a");
    let tree = b.slot_path("a").join("root");
    assert_eq!(std::fs::read(tree.join("opt/app/data.bin")).unwrap(), conf);
    let mode = std::fs::metadata(tree.join("opt/app/data.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "modes are kept");
    b.activate(&rel(1)).unwrap();
    b.commit().unwrap();

    // Two releases later slot a is rewritten with a plain file release.
    let f = put_payload(&store, b"plain", Version::new(3, 0, 0), InstallKind::File);
    assert_eq!(b.install(&req(rel(2), &f)).unwrap(), "b");
    b.activate(&rel(2)).unwrap();
    b.commit().unwrap();
    assert_eq!(b.install(&req(rel(3), &f)).unwrap(), "a");
    assert!(!tree.exists(), "a stale tree must not outlive its release");
}

#[test]
fn the_dir_backend_writes_the_inactive_slot_and_switches_only_on_activation() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TestStore::default();
    let data = noise(700_000, 1);
    let m = put_payload(&store, &data, Version::new(2, 0, 0), InstallKind::File);
    let mut b = DirBackend::new(tmp.path(), None).unwrap();
    assert_eq!(b.status().unwrap(), SlotStatus::default());

    let slot = b
        .install(&InstallRequest {
            release: rel(1),
            manifest: &m,
            store: &store,
        })
        .unwrap();
    assert_eq!(slot, "a");
    assert_eq!(
        std::fs::read(b.slot_path("a").join("payload")).unwrap(),
        data
    );
    assert_eq!(b.active().unwrap(), None, "install must not switch");

    assert_eq!(b.activate(&rel(1)).unwrap(), Activation::Live);
    let st = b.status().unwrap();
    assert_eq!(st.active_slot.as_deref(), Some("a"));
    assert_eq!(st.active_release, Some(rel(1)));
    assert_eq!(st.active_version, Some(Version::new(2, 0, 0)));
    assert!(st.trial);
    b.commit().unwrap();
    assert!(!b.status().unwrap().trial);

    // The next release goes to b; a rollback from its trial returns to a.
    let data2 = noise(500_000, 2);
    let m2 = put_payload(&store, &data2, Version::new(3, 0, 0), InstallKind::Image);
    let req = InstallRequest {
        release: rel(2),
        manifest: &m2,
        store: &store,
    };
    assert_eq!(b.install(&req).unwrap(), "b");
    b.activate(&rel(2)).unwrap();
    assert_eq!(b.active().unwrap(), Some("b"));
    assert_eq!(b.rollback().unwrap(), Activation::Live);
    let st = b.status().unwrap();
    assert_eq!(st.active_slot.as_deref(), Some("a"));
    assert!(!st.trial);
    assert_eq!(
        std::fs::read(tmp.path().join("current/payload")).unwrap(),
        data
    );
}

#[test]
fn an_incomplete_or_corrupt_download_never_produces_a_slot_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TestStore::default();
    let data = noise(400_000, 3);
    let m = put_payload_except(
        &store,
        &data,
        Version::new(1, 0, 0),
        InstallKind::Image,
        Some(1),
    );
    let mut b = DirBackend::new(tmp.path(), None).unwrap();
    let err = b
        .install(&InstallRequest {
            release: rel(1),
            manifest: &m,
            store: &store,
        })
        .unwrap_err();
    assert!(
        matches!(err, InstallError::MissingChunk { index: 1, .. }),
        "{err}"
    );
    assert_eq!(b.record("a").unwrap(), None);

    // A chunk whose stored bytes do not hash to its id.
    let data = noise(400_000, 4);
    let m = put_payload(&store, &data, Version::new(1, 0, 0), InstallKind::Image);
    let c = &m.chunks[0];
    let bad = crate::store::StoredChunk {
        encoding: meshota_protocol::Encoding::Raw,
        raw_len: c.len,
        data: vec![0u8; c.len as usize].into(),
    };
    crate::store::Store::put_chunk(&store, &c.id, &bad).unwrap();
    let err = b
        .install(&InstallRequest {
            release: rel(1),
            manifest: &m,
            store: &store,
        })
        .unwrap_err();
    assert!(matches!(err, InstallError::Verify(_)), "{err}");
    assert_eq!(b.record("a").unwrap(), None);
    assert!(b.activate(&rel(1)).is_err(), "nothing to activate");
}

#[test]
fn the_command_backend_calls_each_script_with_the_payload_and_reads_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path();
    let log = s.join("log");
    let l = log.display();
    let scripts = Scripts {
        install: script(
            s,
            "install",
            &format!(
                "echo \"$1 $MESHOTA_VERSION\" >> {l}; cp \"$2\" {}/slot; echo slot=B",
                s.display()
            ),
        ),
        activate: Some(script(s, "activate", &format!("echo \"$1\" >> {l}"))),
        health: Some(script(s, "health", "echo fine")),
        commit: Some(script(
            s,
            "commit",
            &format!("echo \"$MESHOTA_STEP\" >> {l}"),
        )),
        rollback: None,
        status: Some(script(
            s,
            "status",
            "echo slot=B; echo version=4.0.0; echo trial=0",
        )),
    };
    let mut b =
        CommandBackend::new(scripts, s.join("work"), Duration::from_secs(20), false).unwrap();
    let store = TestStore::default();
    let data = noise(200_000, 5);
    let m = put_payload(&store, &data, Version::new(4, 0, 0), InstallKind::File);
    let slot = b
        .install(&InstallRequest {
            release: rel(4),
            manifest: &m,
            store: &store,
        })
        .unwrap();
    assert_eq!(slot, "B");
    assert_eq!(std::fs::read(s.join("slot")).unwrap(), data);
    assert_eq!(b.activate(&rel(4)).unwrap(), Activation::Live);
    assert_eq!(b.health(Duration::from_secs(5)).unwrap(), "fine");
    b.commit().unwrap();
    b.rollback().unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "install 4.0.0\nactivate\ncommit\n"
    );
    let st = b.status().unwrap();
    assert_eq!(st.active_slot.as_deref(), Some("B"));
    assert_eq!(st.active_version, Some(Version::new(4, 0, 0)));
}

#[test]
fn a_script_past_its_deadline_is_killed_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "hang", "exec sleep 30");
    let t0 = std::time::Instant::now();
    let err = proc::run(std::process::Command::new(&p), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, proc::ProcError::Timeout { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let p = script(tmp.path(), "fail", "echo broken >&2; exit 3");
    let err = proc::run(std::process::Command::new(&p), Duration::from_secs(10)).unwrap_err();
    assert!(err.to_string().contains("broken"), "{err}");
    let err = proc::run(
        std::process::Command::new(tmp.path().join("missing")),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(err, proc::ProcError::Spawn { .. }));
}

#[test]
fn a_failing_health_command_fails_the_dir_health_check() {
    let tmp = tempfile::tempdir().unwrap();
    let h = script(tmp.path(), "health", "echo \"unhealthy $1\"; exit 1");
    let store = TestStore::default();
    let m = put_payload(&store, b"tiny", Version::new(1, 0, 0), InstallKind::File);
    let mut b = DirBackend::new(
        tmp.path().join("root"),
        Some(dir::HealthCommand {
            program: h,
            args: vec![],
        }),
    )
    .unwrap();
    b.install(&InstallRequest {
        release: rel(1),
        manifest: &m,
        store: &store,
    })
    .unwrap();
    b.activate(&rel(1)).unwrap();
    let err = b.health(Duration::from_secs(10)).unwrap_err();
    assert!(err.contains("unhealthy"), "{err}");
}
