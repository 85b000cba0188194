//! The RAUC backend against real RAUC 1.8, following
//! `shared/reference/rauc-test-recipe.md`, but on a private D-Bus (its own
//! `dbus-daemon` on a socket in the temp dir) so it needs no root and does
//! not touch a system bus. Skips, saying why, when the tools are missing:
//! CI needs `apt-get install -y rauc rauc-service squashfs-tools dbus openssl`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshota_protocol::semver::Version;
use meshota_protocol::{InstallKind, ReleaseId};

use super::*;
use crate::install::testutil::{noise, put_payload, TestStore};

fn tool_missing() -> Option<&'static str> {
    ["rauc", "dbus-daemon", "openssl", "mksquashfs"]
        .into_iter()
        .find(|t| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
}

/// Kills and reaps the processes it owns when the test ends, pass or fail.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rauc_backend_installs_a_bundle_into_the_other_slot_and_marks_it() {
    if let Some(t) = tool_missing() {
        // In CI `.ci/run` installs RAUC, so a missing tool is a broken CI
        // set-up, not a reason to pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "`{t}` is missing in CI; .ci/run should have installed it"
        );
        eprintln!(
            "SKIPPED: `{t}` is not installed; \
             apt-get install -y rauc rauc-service squashfs-tools dbus openssl"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let rootfs = noise(1 << 20, 9);
    std::fs::create_dir_all(d.join("content")).unwrap();
    std::fs::write(d.join("content/rootfs.img"), &rootfs).unwrap();
    std::fs::write(
        d.join("content/manifest.raucm"),
        "[update]\ncompatible=meshota-test\nversion=1.0.1\n[bundle]\nformat=plain\n\
         [image.rootfs]\nfilename=rootfs.img\n",
    )
    .unwrap();
    sh(
        d,
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem \
         -days 365 -subj /CN=test 2>/dev/null
         rauc bundle --cert=cert.pem --key=key.pem content test.raucb >/dev/null 2>&1
         truncate -s 2M slotA.img slotB.img
         mkdir -p mnt data",
    );
    let p = d.display();
    std::fs::write(
        d.join("system.conf"),
        format!(
            "[system]\ncompatible=meshota-test\nbootloader=noop\nbundle-formats=plain verity\n\
             mountprefix={p}/mnt\ndata-directory={p}/data\n[keyring]\npath={p}/cert.pem\n\
             [slot.rootfs.0]\ndevice={p}/slotA.img\ntype=raw\nbootname=A\n\
             [slot.rootfs.1]\ndevice={p}/slotB.img\ntype=raw\nbootname=B\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("bus.conf"),
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\
             <type>system</type><listen>unix:path={p}/bus.sock</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
             <allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>"
        ),
    )
    .unwrap();

    let mut procs = Procs(Vec::new());
    let mut bus = Command::new("dbus-daemon")
        .arg(format!("--config-file={p}/bus.conf"))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bus.stdout.take().unwrap();
    procs.0.push(bus);
    // The address is printed once the bus listens.
    let mut addr = String::new();
    BufReader::new(out).read_line(&mut addr).unwrap();
    let addr = addr.trim().to_string();
    assert!(!addr.is_empty(), "dbus-daemon printed no address");
    let service = Command::new("rauc")
        .arg(format!("--conf={p}/system.conf"))
        .args(["service", "--override-boot-slot=A"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    procs.0.push(service);

    let mut b = RaucBackend::new("rauc", d.join("work"), Duration::from_secs(120), None)
        .unwrap()
        .with_env("DBUS_SYSTEM_BUS_ADDRESS", &addr);
    // Wait (bounded) for the service to own its bus name.
    let deadline = Instant::now() + Duration::from_secs(30);
    // Ready means: answering, and knowing the booted slot.
    let status = loop {
        match b.status() {
            Ok(s) if s.active_slot.is_some() => break s,
            r if Instant::now() > deadline => panic!("rauc service never came up: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(status.active_slot.as_deref(), Some("A"));

    // The meshota payload is the .raucb itself.
    let bundle = std::fs::read(d.join("test.raucb")).unwrap();
    let store = TestStore::default();
    let m = put_payload(&store, &bundle, Version::new(1, 0, 1), InstallKind::File);
    let slot = b
        .install(&InstallRequest {
            release: ReleaseId::digest(b"r"),
            manifest: &m,
            store: &store,
        })
        .unwrap();
    assert_eq!(slot, "other");
    let written = std::fs::read(d.join("slotB.img")).unwrap();
    assert_eq!(
        &written[..rootfs.len()],
        &rootfs[..],
        "slot B holds the image"
    );
    assert_eq!(
        b.activate(&ReleaseId::digest(b"r")).unwrap(),
        Activation::RebootRequired
    );
    b.commit().unwrap();
    assert_eq!(b.rollback().unwrap(), Activation::RebootRequired);
    drop(procs);
}
