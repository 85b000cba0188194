//! The control plane and real device agents against a real Mosquitto,
//! configured with the shipped ACL (`dist/mosquitto/acl`).
//!
//! Authentication choice for the test: Mosquitto cannot verify meshota's
//! signed device tokens, so it runs with `allow_anonymous true` and no
//! password file. It then accepts any username and password, and the ACL
//! confines each client by the username it *claims* (`%u`). That is the
//! weakest setting an operator could pick, and so the one where the two
//! remaining defences must hold: Mosquitto's ACL refuses a device
//! publishing on another device's topic, and where a broker does deliver
//! such a message (here: a client with control-plane rights), ingest
//! rejects it by its signature. Production settings are in
//! `dist/mosquitto/mosquitto.conf`.
// Test scaffolding outside #[test] functions may unwrap, as in `common`.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use meshota_broker::origin::publish_bundle;
use meshota_broker::registry::{DeviceRecord, Registry};
use meshota_broker::server::Server;
use meshota_node::store::MemStore;
use meshota_protocol::bundle::BundleReader;
use meshota_protocol::{ReportBody, SecretKey, UpdateState};
use rumqttc::{Event, Packet, QoS};

/// The control plane's username in the shipped ACL.
const CONTROL: &str = "meshota-control";

/// A Mosquitto process, killed when dropped.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The shipped ACL, for fleet `default` instead of the example's `acme`.
fn test_acl() -> String {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/mosquitto/acl");
    let acl = std::fs::read_to_string(&shipped).unwrap();
    assert!(acl.contains("meshota/v1/acme/"), "the shipped ACL changed");
    acl.replace("meshota/v1/acme/", "meshota/v1/default/")
}

fn mosquitto_tool(name: &str) -> PathBuf {
    let Some(bin) = on_path(name).or_else(|| {
        let sbin = Path::new("/usr/sbin").join(name);
        sbin.is_file().then_some(sbin)
    }) else {
        panic!("`{name}` is not installed: apt-get install -y mosquitto mosquitto-clients");
    };
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `name` into `dir`, readable by Mosquitto: run as root, it drops
/// to the `mosquitto` user (test files only, no real secrets).
fn write_readable(dir: &Path, name: &str, text: &str) -> PathBuf {
    set_mode(dir, 0o755);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    set_mode(&path, 0o644);
    path
}

/// Starts Mosquitto with the config `conf(port)` makes, whose plaintext
/// listener must be `127.0.0.1:port`. Mosquitto cannot listen on port 0,
/// so we pick a port by binding and releasing it, and try again with
/// another if Mosquitto loses the race for it.
fn start_mosquitto(dir: &Path, conf: impl Fn(u16) -> String) -> Mosquitto {
    let bin = mosquitto_tool("mosquitto");
    for attempt in 0..5 {
        let port = free_port();
        let path = write_readable(dir, "mosquitto.conf", &conf(port));
        let log = dir.join(format!("mosquitto-{attempt}.log"));
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut m = Mosquitto { child, addr, log };
        // Up to 5 s for it to listen, or to exit (a port was taken).
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return m;
            }
            if m.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("mosquitto did not start on {port}: {}", m.log());
    }
    panic!("mosquitto did not start in 5 attempts");
}

/// Mosquitto with the shipped ACL and, for authentication, none: every
/// client is let in under the username it claims (see the module doc).
fn start_open_mosquitto(dir: &Path) -> Mosquitto {
    let acl = write_readable(dir, "acl", &test_acl());
    start_mosquitto(dir, |port| {
        format!(
            "per_listener_settings false\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             acl_file {acl}\n\
             max_packet_size 327680\n\
             persistence false\n\
             log_dest stderr\n\
             log_type all\n",
            acl = acl.display()
        )
    })
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// With an external broker the registry learns no keys from logins:
/// creates each agent's device key where `start_device` will find it and
/// enrols it directly, as an operator's provisioning would.
fn enrol_agents(server: &Server, dir: &Path, ids: &[&str]) -> Vec<SecretKey> {
    ids.iter()
        .map(|id| {
            let data = device_data_dir(dir, id);
            let (key, _) = meshota_node::config::ensure_device_key(&data).unwrap();
            server
                .registry()
                .admit(&dev(id), key.public(), true, meshota_broker::now())
                .unwrap();
            key
        })
        .collect()
}

/// Waits for device `id`'s record to say committed; on timeout, fails
/// with its record and event history (what the device reported).
async fn committed(server: &Server, id: &str) -> DeviceRecord {
    let reg = server.registry();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rec = reg.device(&dev(id)).unwrap();
        // The `StateChanged` event sets the state and may land before
        // the status that names the release and version (a CI run saw
        // `Committed` with no release yet): wait for both.
        if let Some(r) = rec
            .as_ref()
            .filter(|r| r.state == Some(UpdateState::Committed) && r.release.is_some())
        {
            return r.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{id} did not commit: {rec:?}\nevents: {:?}",
                reg.events(&dev(id)).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A status for `claimed`, signed by `key` (another device's), with a
/// version no device runs, so it would show if it landed.
fn forged_status(claimed: &str, key: &SecretKey) -> Vec<u8> {
    let mut st = status(true);
    st.version = Some(meshota_protocol::semver::Version::new(9, 9, 9));
    report(claimed, u64::MAX / 2, ReportBody::Status(st), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_report_through_mosquitto_and_a_device_cannot_speak_for_another() {
    let tmp = tempfile::tempdir().unwrap();
    let mosq = start_open_mosquitto(tmp.path());
    let trust = write_trust(tmp.path(), &keys());
    let mut cfg = config(&tmp.path().join("broker"));
    cfg.trust = Some(trust.clone());
    cfg.mqtt_url = Some(format!("mqtt://{CONTROL}:unused@{}", mosq.addr));
    let server = spawn(cfg).await;

    let ids = ["dev-1", "dev-2", "dev-3"];
    let device_keys = enrol_agents(&server, tmp.path(), &ids);
    let devices: Vec<_> = ids
        .iter()
        .map(|id| start_device(tmp.path(), id, mosq.addr, &trust))
        .collect();
    for id in ids {
        eventually(
            &format!("{id}'s status in the registry via Mosquitto"),
            || {
                server
                    .registry()
                    .device(&dev(id))
                    .ok()
                    .flatten()
                    .filter(|r| r.state == Some(UpdateState::Idle) && r.online)
            },
        )
        .await;
    }

    // A watcher with the control plane's rights sees everything on both
    // topics the rogue will publish to.
    let (watch, mut watch_el) = mqtt_connect(mosq.addr, "watcher", CONTROL, "x")
        .await
        .unwrap();
    watch
        .subscribe("meshota/v1/default/devices/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    watch
        .subscribe("meshota/v1/default/devices/dev-1/events", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut acked = 0;
    tokio::time::timeout(WAIT, async {
        while acked < 2 {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = watch_el.poll().await {
                acked += 1;
            }
        }
    })
    .await
    .expect("the watcher's subscriptions are acknowledged");

    // dev-1's key (or anyone logged in as dev-1) publishes dev-2's status,
    // then a marker on its own events topic. Mosquitto keeps one client's
    // messages in order, so once the watcher has the marker, the forged
    // status would already have arrived had Mosquitto let it through.
    let forged = forged_status("dev-2", &device_keys[0]);
    let (rogue, rogue_el) = mqtt_connect(mosq.addr, "rogue", "dev-1", "any")
        .await
        .unwrap();
    let _rogue_loop = drive(rogue_el);
    let marker = b"marker: not a report".to_vec();
    rogue
        .publish(
            status_topic("dev-2"),
            QoS::AtLeastOnce,
            false,
            forged.clone(),
        )
        .await
        .unwrap();
    rogue
        .publish(
            "meshota/v1/default/devices/dev-1/events",
            QoS::AtLeastOnce,
            false,
            marker.clone(),
        )
        .await
        .unwrap();
    let saw_forged = tokio::time::timeout(WAIT, async {
        let mut saw_forged = false;
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = watch_el.poll().await {
                saw_forged |= p.payload.as_ref() == forged.as_slice();
                if p.payload.as_ref() == marker.as_slice() {
                    return saw_forged;
                }
            }
        }
    })
    .await
    .expect("the rogue's marker on its own topic arrives");
    assert!(!saw_forged, "Mosquitto delivered dev-2's status from dev-1");
    eventually("Mosquitto to log the denial", || {
        mosq.log()
            .contains("Denied PUBLISH from rogue")
            .then_some(())
    })
    .await;

    // Where a broker lets it through (here: a client with the control
    // plane's rights), ingest refuses it by signature.
    let forged_before = rejected(&server, "forged");
    watch
        .publish(status_topic("dev-2"), QoS::AtLeastOnce, false, forged)
        .await
        .unwrap();
    let _watch_loop = drive(watch_el);
    eventually("ingest to reject the forged status", || {
        (rejected(&server, "forged") > forged_before).then_some(())
    })
    .await;
    let dev2 = server.registry().device(&dev("dev-2")).unwrap().unwrap();
    assert_ne!(
        dev2.version,
        Some(meshota_protocol::semver::Version::new(9, 9, 9)),
        "the forged status reached the registry"
    );
    assert_ne!(dev2.last_counter, u64::MAX / 2);

    for device in devices {
        blocking(move || device.stop()).await.unwrap();
    }
    server.shutdown().await.unwrap();
}

/// The shipped `mosquitto.conf`, adapted only where a test must: file
/// paths, ports (loopback, free), no persistence file, log to stderr.
fn shipped_conf(dir: &Path, tls_port: u16, port: u16) -> String {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/mosquitto/mosquitto.conf");
    let mut conf = std::fs::read_to_string(shipped).unwrap();
    let d = dir.display();
    for (from, to) in [
        (
            "/etc/mosquitto/ca_certificates/meshota-ca.pem".to_string(),
            format!("{d}/cert.pem"),
        ),
        (
            "/etc/mosquitto/certs/broker.crt.pem".into(),
            format!("{d}/cert.pem"),
        ),
        (
            "/etc/mosquitto/certs/broker.key.pem".into(),
            format!("{d}/key.pem"),
        ),
        (
            "/etc/mosquitto/meshota.passwd".into(),
            format!("{d}/passwd"),
        ),
        ("/etc/mosquitto/meshota.acl".into(), format!("{d}/acl")),
        (
            "\nlistener 8883\n".into(),
            format!("\nlistener {tls_port} 127.0.0.1\n"),
        ),
        (
            "\nlistener 1883 127.0.0.1\n".into(),
            format!("\nlistener {port} 127.0.0.1\n"),
        ),
        (
            "\npersistence true\n".into(),
            "\npersistence false\n".into(),
        ),
    ] {
        assert!(
            conf.contains(&from),
            "the shipped mosquitto.conf lost {from:?}"
        );
        conf = conf.replace(&from, &to);
    }
    conf + "log_dest stderr\nlog_type all\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_mosquitto_config_admits_only_its_password_file_users() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    write_readable(dir, "cert.pem", &ck.cert.pem());
    write_readable(dir, "key.pem", &ck.key_pair.serialize_pem());
    write_readable(dir, "acl", &test_acl());
    let passwd = write_readable(dir, "passwd", "");
    for (user, pw) in [(CONTROL, "control-pw"), ("dev-1", "dev-1-pw")] {
        let out = Command::new(mosquitto_tool("mosquitto_passwd"))
            .arg("-b")
            .arg(&passwd)
            .args([user, pw])
            .output()
            .unwrap();
        succeeded("mosquitto_passwd", out);
    }
    set_mode(&passwd, 0o644);
    let mosq = start_mosquitto(dir, |port| shipped_conf(dir, free_port(), port));

    let trust = write_trust(dir, &keys());
    let mut cfg = config(&dir.join("broker"));
    cfg.trust = Some(trust);
    cfg.mqtt_url = Some(format!("mqtt://{CONTROL}:control-pw@{}", mosq.addr));
    let server = spawn(cfg).await;
    control_connected(&server).await;

    // A device with its password-file entry (node.toml: [mqtt] username +
    // password_file) gets in and its signed status reaches the registry.
    let key = SecretKey::from_seed([41; 32]);
    server
        .registry()
        .admit(&dev("dev-1"), key.public(), true, meshota_broker::now())
        .unwrap();
    let (c, el) = mqtt_connect(mosq.addr, "dev-1", "dev-1", "dev-1-pw")
        .await
        .unwrap();
    let _loop = drive(el);
    let signed = report("dev-1", 7, ReportBody::Status(status(true)), &key);
    c.publish(status_topic("dev-1"), QoS::AtLeastOnce, true, signed)
        .await
        .unwrap();
    eventually("dev-1's status in the registry", || {
        server
            .registry()
            .device(&dev("dev-1"))
            .unwrap()
            .filter(|r| r.last_counter == 7)
    })
    .await;

    // Wrong passwords and unlisted users (a device token, say) are refused.
    assert!(mqtt_connect(mosq.addr, "dev-1", "dev-1", "wrong")
        .await
        .is_err());
    assert!(mqtt_connect(mosq.addr, "dev-2", "dev-2", "token")
        .await
        .is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_through_mosquitto_takes_three_agents_to_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mosq = start_open_mosquitto(dir);
    let k = keys();
    let trust = write_trust(dir, &k);
    let mut cfg = config(&dir.join("broker"));
    cfg.trust = Some(trust.clone());
    let rollout_key = dir.join("rollout.key");
    std::fs::write(&rollout_key, k.rollout.to_file("rollout")).unwrap();
    cfg.rollout_key = Some(rollout_key);
    cfg.mqtt_url = Some(format!("mqtt://{CONTROL}:unused@{}", mosq.addr));
    let server = spawn(cfg).await;
    control_connected(&server).await;
    let ids = ["dev-1", "dev-2", "dev-3"];
    enrol_agents(&server, dir, &ids);

    // The release, and each device's store preloaded with its chunks
    // (this test is about the MQTT path; libp2p has its own tests).
    let data = payload(300_000, 11);
    let (_, bundle_bytes) = bundle(&k, &data, &k.release);
    let bundle_path = dir.join("release.mota");
    std::fs::write(&bundle_path, &bundle_bytes).unwrap();
    let root = server.trust().unwrap().clone();
    let scratch = Registry::open(&dir.join("scratch")).unwrap();
    let stores: Vec<MemStore> = ids
        .iter()
        .map(|_| {
            let store = MemStore::new();
            publish_bundle(&bundle_path, &root, &store, &scratch, meshota_broker::now()).unwrap();
            store
        })
        .collect();
    let reader = BundleReader::open(&bundle_bytes[..]).unwrap();
    let release = reader.signed_release().clone();
    let release_id = reader.release_id();

    let devices: Vec<_> = ids
        .iter()
        .zip(stores)
        .map(|(id, store)| {
            let opts = AgentOptions {
                store,
                ..AgentOptions::default()
            };
            start_device_with(dir, id, mosq.addr, &trust, opts)
        })
        .collect();

    // A real staged rollout through the external broker: the control
    // plane's driver signs each wave's gate and publishes it on Mosquitto.
    let client = http(&server, true);
    let published = blocking(move || client.publish_release(&bundle_path).unwrap()).await;
    assert_eq!(published.id, release_id);
    let _ = release;
    let created = server
        .rollouts()
        .create(
            meshota_broker::rollouts::CreateRollout {
                waves: Some(vec![34, 100]),
                soak_secs: Some(0),
                ..meshota_broker::rollouts::CreateRollout::new(release_id)
            },
            meshota_broker::now(),
        )
        .unwrap();

    for id in ids {
        let rec = committed(&server, id).await;
        assert_eq!(rec.release, Some(release_id));
        assert_eq!(
            rec.version,
            Some(meshota_protocol::semver::Version::new(1, 2, 3))
        );
        let active = device_slots(dir, id).join("current").join("payload");
        assert!(
            std::fs::read(&active).unwrap() == data,
            "{id}'s active slot is not byte-identical to the payload"
        );
    }
    let id = created.status.rollout.to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = server.rollouts().get(&id, meshota_broker::now()).unwrap();
        if v.status.state == meshota_broker::rollout::RolloutState::Completed {
            assert_eq!(v.status.waves.len(), 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not complete:\n{}",
            v.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let id = created.status.rollout.to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = server.rollouts().get(&id, meshota_broker::now()).unwrap();
        if v.status.state == meshota_broker::rollout::RolloutState::Completed {
            assert_eq!(v.status.waves.len(), 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not complete:\n{}",
            v.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for device in devices {
        blocking(move || device.stop()).await.unwrap();
    }
    server.shutdown().await.unwrap();
}

/// A CA, then a certificate it signs for each `(subject alt names, CN)`:
/// `(ca pem, [(cert pem, key pem)])`.
fn pki(leaves: &[(Vec<String>, &str)]) -> (String, Vec<(String, String)>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "meshota test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issued = leaves
        .iter()
        .map(|(names, cn)| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names.clone()).unwrap();
            p.distinguished_name.push(DnType::CommonName, *cn);
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        })
        .collect();
    (ca.pem(), issued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_presents_its_client_certificate_to_a_mosquitto_that_requires_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, issued) = pki(&[(vec!["localhost".into()], "localhost"), (vec![], "dev-1")]);
    let ca_file = write_readable(dir, "ca.pem", &ca);
    let server_cert = write_readable(dir, "server.pem", &issued[0].0);
    let server_key = write_readable(dir, "server-key.pem", &issued[0].1);
    let client_cert = write_readable(dir, "dev-1.pem", &issued[1].0);
    let client_key = write_readable(dir, "dev-1-key.pem", &issued[1].1);
    // Plain listener for the control plane, TLS with a required client
    // certificate for devices.
    let tls_port = free_port();
    let mosq = start_mosquitto(dir, |port| {
        format!(
            "per_listener_settings false\n\
             allow_anonymous true\n\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             persistence false\n\
             log_dest stderr\n\
             log_type all\n",
            ca = ca_file.display(),
            cert = server_cert.display(),
            key = server_key.display(),
        )
    });

    let trust = write_trust(dir, &keys());
    let mut cfg = config(&dir.join("broker"));
    cfg.trust = Some(trust.clone());
    cfg.mqtt_url = Some(format!("mqtt://{CONTROL}:unused@{}", mosq.addr));
    let server = spawn(cfg).await;
    control_connected(&server).await;
    enrol_agents(&server, dir, &["dev-1"]);

    // Without a client certificate the TLS listener refuses the session.
    let mut o = rumqttc::MqttOptions::new("no-cert", "localhost", tls_port);
    o.set_transport(rumqttc::Transport::tls(ca.clone().into_bytes(), None, None));
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    })
    .await
    .unwrap();
    assert!(refused, "a session without a client certificate was let in");

    let section = format!(
        "url = \"mqtts://localhost:{tls_port}\"\nca = {ca:?}\nclient_cert = {cert:?}\nclient_key = {key:?}\n",
        ca = ca_file.display().to_string(),
        cert = client_cert.display().to_string(),
        key = client_key.display().to_string(),
    );
    let opts = AgentOptions {
        mqtt: Some(section),
        ..AgentOptions::default()
    };
    let device = start_device_with(dir, "dev-1", mosq.addr, &trust, opts);
    eventually("dev-1's status via the certificate-only listener", || {
        server
            .registry()
            .device(&dev("dev-1"))
            .unwrap()
            .filter(|r| r.state == Some(UpdateState::Idle) && r.online)
    })
    .await;
    blocking(move || device.stop()).await.unwrap();
    server.shutdown().await.unwrap();
}
