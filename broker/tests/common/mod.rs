//! Fixtures for the broker's end-to-end tests: a trust root and signed
//! bundles, servers on loopback port 0, and device MQTT clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meshota_broker::client::Client;
use meshota_broker::config::Config;
use meshota_broker::server::Server;
use meshota_protocol::bundle::{BundleHeader, BundleWriter};
use meshota_protocol::chunking::encode_chunk;
use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::{
    codec, Channel, ChunkerParams, Compatible, DeviceId, DeviceToken, InstallKind, Manifest,
    Release, RoleKeys, SecretKey, Signed, TrustRoot,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};

mod agent;
// Not every test binary runs agents (as with `dead_code` above).
#[allow(unused_imports)]
pub use agent::*;

/// Generous bound on anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Keys {
    pub root: SecretKey,
    pub release: SecretKey,
    pub rollout: SecretKey,
}

pub fn keys() -> Keys {
    Keys {
        root: SecretKey::from_seed([10; 32]),
        release: SecretKey::from_seed([20; 32]),
        rollout: SecretKey::from_seed([30; 32]),
    }
}

fn role(k: &SecretKey) -> RoleKeys {
    RoleKeys {
        keys: vec![k.public()],
        threshold: 1,
    }
}

/// Writes the self-signed trust root into `dir/trust.root` and returns
/// its path.
pub fn write_trust(dir: &Path, k: &Keys) -> std::path::PathBuf {
    let root = TrustRoot {
        version: 1,
        expires_at: meshota_broker::now() + 86_400 * 365,
        root: role(&k.root),
        release: role(&k.release),
        rollout: role(&k.rollout),
    };
    let signed = Signed::sign(&root, &[&k.root]).unwrap();
    let path = dir.join("trust.root");
    std::fs::write(&path, codec::encode(&signed).unwrap()).unwrap();
    path
}

/// A signed bundle of `payload`, small chunks so there are many.
pub fn bundle(k: &Keys, payload: &[u8], release_key: &SecretKey) -> (Manifest, Vec<u8>) {
    bundle_version(k, payload, release_key, "1.2.3", 1)
}

/// As [`bundle`], for release `version` with release `sequence`.
pub fn bundle_version(
    k: &Keys,
    payload: &[u8],
    release_key: &SecretKey,
    version: &str,
    sequence: u64,
) -> (Manifest, Vec<u8>) {
    let template = ManifestTemplate {
        name: "rootfs".into(),
        version: meshota_protocol::semver::Version::parse(version).unwrap(),
        compatible: Compatible::new("rpi4").unwrap(),
        chunker: ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        },
        kind: InstallKind::Image,
        created_at: 1_700_000_000,
        meta: BTreeMap::new(),
    };
    let _ = k;
    let m = build_manifest::<_, ManifestError>(payload, template, |_| Ok(())).unwrap();
    let release = Release {
        manifest_id: m.id().unwrap(),
        name: m.name.clone(),
        version: m.version.clone(),
        compatible: m.compatible.clone(),
        channel: Channel::new("stable").unwrap(),
        payload_size: m.payload_size,
        sequence,
        expires_at: meshota_broker::now() + 86_400,
    };
    let header = BundleHeader {
        manifest: m.encode().unwrap(),
        release: Signed::sign(&release, &[release_key]).unwrap(),
    };
    let mut out = BundleWriter::new(Vec::new(), &header).unwrap();
    for (off, c) in m.offsets() {
        let raw = &payload[off as usize..off as usize + c.len as usize];
        let (enc, stored) = encode_chunk(raw);
        out.write_chunk(enc, &stored).unwrap();
    }
    (m, out.finish().unwrap())
}

/// Pseudo-random, partly compressible payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if i % 3 == 0 {
                0
            } else {
                (x >> 33) as u8
            }
        })
        .collect()
}

pub fn config(dir: &Path) -> Config {
    Config::for_tests(dir)
}

pub async fn spawn(config: Config) -> Server {
    tokio::time::timeout(WAIT, Server::spawn(config))
        .await
        .expect("server starts in time")
        .expect("server starts")
}

pub fn http(server: &Server, with_token: bool) -> Client {
    Client::new(
        &format!("http://{}", server.http_addr()),
        with_token.then(|| server.operator_token().to_string()),
    )
}

/// Runs blocking client code off the runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

pub fn dev(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

/// Connects an MQTT client with the given credentials; `Ok` once the
/// broker's ConnAck arrives, `Err` on the first connection error.
pub async fn mqtt_connect(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<(AsyncClient, EventLoop), String> {
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_credentials(username, password);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(512 * 1024, 512 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_string())?;
    r.map(|()| (client, eventloop))
}

/// Logs in over MQTT 5; `Ok` on a successful CONNACK, `Err` with the
/// reason code or connection error.
pub async fn v5_connect(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<(), String> {
    use rumqttc::v5::{mqttbytes::v5::Packet, AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_credentials(username, password);
    let (_c, mut el) = AsyncClient::new(opts, 8);
    tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return match ack.code {
                        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success => Ok(()),
                        code => Err(format!("{code:?}")),
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

/// Connects as device `id` with a fresh token signed by `key`.
pub async fn device_connect(
    addr: SocketAddr,
    id: &str,
    key: &SecretKey,
) -> Result<(AsyncClient, EventLoop), String> {
    let pw = DeviceToken::issue(&dev(id), key, meshota_broker::now(), 300).unwrap();
    mqtt_connect(addr, id, id, &pw).await
}

/// Keeps an event loop running in the background (sending what the
/// client queues).
pub fn drive(mut eventloop: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} })
}

/// Polls `f` every 50 ms until it is `Some`, for at most [`WAIT`].
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a fresh subscriber (device `id`) gets `want` as the
/// retained message on `topic`; panics after [`WAIT`].
pub async fn expect_retained(
    addr: SocketAddr,
    id: &str,
    key: &SecretKey,
    topic: &str,
    want: &[u8],
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (c, mut el) = device_connect(addr, id, key).await.unwrap();
        c.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
                    return p.payload.to_vec();
                }
            }
        })
        .await;
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained message on {topic} is {got:?}, not the expected one"
        );
        drop(el);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finds a program on `PATH`.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// How many reports the server has rejected for `reason`.
pub fn rejected(server: &Server, reason: &str) -> u64 {
    let name = format!("{}{reason}", meshota_broker::ingest::REJECTED_PREFIX);
    server
        .registry()
        .counters()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == &name)
        .map_or(0, |(_, v)| v)
}

/// The fleet test servers serve.
pub fn fleet() -> meshota_protocol::FleetId {
    meshota_protocol::FleetId::new("default").unwrap()
}

/// Device `d`'s status topic.
pub fn status_topic(d: &str) -> String {
    meshota_protocol::topics::Topic::Status {
        fleet: fleet(),
        device: dev(d),
    }
    .to_string()
}

/// Device `d`'s events topic.
pub fn events_topic(d: &str) -> String {
    meshota_protocol::topics::Topic::Events {
        fleet: fleet(),
        device: dev(d),
    }
    .to_string()
}

/// An idle v1.0.0 status at site `lab`.
pub fn status(online: bool) -> meshota_protocol::Status {
    meshota_protocol::Status {
        version: Some(meshota_protocol::semver::Version::new(1, 0, 0)),
        release: None,
        slot: Some("a".into()),
        state: meshota_protocol::UpdateState::Idle,
        target: None,
        peer_id: None,
        site: meshota_protocol::SiteId::new("lab").unwrap(),
        tags: vec![],
        online,
        groups: vec![],
        compatible: None,
        trust_version: None,
    }
}

/// `body` as device `device`'s report number `counter`, signed by `key`,
/// encoded for the wire.
pub fn report(
    device: &str,
    counter: u64,
    body: meshota_protocol::ReportBody,
    key: &SecretKey,
) -> Vec<u8> {
    let r = meshota_protocol::Report {
        device: dev(device),
        counter,
        time: 1,
        body,
    };
    codec::encode(&meshota_protocol::SignedReport::sign(&r, key).unwrap()).unwrap()
}

/// Waits until the server's control plane is connected to its broker.
pub async fn control_connected(server: &Server) {
    eventually("the control plane connected to its broker", || {
        server
            .control()
            .stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(())
    })
    .await;
}

/// `out`, after checking that `what` exited successfully (its stderr in
/// the failure message).
pub fn succeeded(what: &str, out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
