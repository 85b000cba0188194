//! The MQTT driver end to end: an in-process rumqttd broker, a seed-only
//! origin on libp2p, the daemon with the `dir` backend, a retained
//! announcement, and signed reports read back off the broker until the
//! device reports `committed`.

use std::time::{Duration, Instant};

use meshota_protocol::{
    codec, Action, ReportBody, SignedReport, Status, Topic, TrustRoot, UpdateState,
};
use rumqttc::{Client, Event as MqttEvent, MqttOptions, Packet, QoS};

use super::super::mqtt;
use super::super::outbox::Outbox;
use super::*;
use crate::config::Config;
use crate::p2p::{Node, P2pConfig, P2pFetcher};
use crate::store::{MemStore, Store};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start_broker(port: u16) {
    let cfg: rumqttd::Config = toml::from_str(&format!(
        r#"
id = 0
[router]
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 100
dynamic_filters = true
"#
    ))
    .unwrap();
    // rumqttd's start() blocks for the life of the broker; the thread ends
    // with the test process.
    std::thread::spawn(move || {
        let mut b = rumqttd::Broker::new(cfg);
        let _ = b.start();
    });
    // Ready once it accepts connections (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A device data dir and config in `tmp`, talking to a broker on `port`.
pub(super) fn device_config(tmp: &Path, port: u16, w: &World) -> (Config, PathBuf) {
    let root_key = SecretKey::from_seed([1; 32]);
    let root: &TrustRoot = &w.root;
    std::fs::write(
        tmp.join("root.cbor"),
        codec::encode(&Signed::sign(root, &[&root_key]).unwrap()).unwrap(),
    )
    .unwrap();
    let data_dir = tmp.join("data");
    let cfg = Config::parse(&format!(
        r#"
data_dir = "{data}"
[device]
id = "dev-1"
fleet = "fleet"
site = "site-1"
compatible = "rpi4"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[trust]
root = "{root}"
[install.dir]
root = "{slots}"
"#,
        data = data_dir.display(),
        root = tmp.join("root.cbor").display(),
        slots = tmp.join("slots").display(),
    ))
    .unwrap();
    (cfg, data_dir)
}

pub(super) fn preloaded() -> Box<dyn super::super::driver::Fetcher> {
    Box::new(super::super::driver::PreloadedFetcher)
}

/// Runs the daemon on its own thread until the returned sender fires.
pub(super) fn spawn_daemon(
    cfg: Config,
    store: MemStore,
    fetcher: Box<dyn super::super::driver::Fetcher>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), mqtt::DaemonError>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(mqtt::run_until(
            cfg,
            std::sync::Arc::new(store),
            fetcher,
            async {
                let _ = stop_rx.await;
            },
        ))
    });
    (stop_tx, daemon)
}

#[test]
fn the_daemon_takes_a_retained_announcement_to_a_signed_committed_status() {
    let port = free_port();
    start_broker(port);
    let tmp = tempfile::tempdir().unwrap();
    let w = world();
    let (cfg, data_dir) = device_config(tmp.path(), port, &w);

    // The release lives on a seed-only origin; the device starts empty and
    // fetches it over libp2p on loopback.
    let nodes = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let origin_store = MemStore::new();
    let payload = noise(200_000, 42);
    let m = put_payload(
        &origin_store,
        &payload,
        v(1),
        meshota_protocol::InstallKind::Image,
    );
    origin_store.set_roots(&[m.id().unwrap()]).unwrap();
    let keypair = libp2p::identity::Keypair::generate_ed25519;
    let origin = nodes
        .block_on(async {
            Node::spawn(
                P2pConfig::loopback().origin(),
                std::sync::Arc::new(origin_store),
                keypair(),
            )
        })
        .unwrap();
    let seeder = nodes.block_on(origin.listen_addrs()).unwrap()[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(origin.peer_id()));
    let store = MemStore::new();
    let device_node = nodes
        .block_on(async {
            Node::spawn(
                P2pConfig::loopback(),
                std::sync::Arc::new(store.clone()),
                keypair(),
            )
        })
        .unwrap();
    let fetcher = Box::new(P2pFetcher::new(
        device_node,
        nodes.handle().clone(),
        Some(Duration::from_secs(60)),
    ));
    let mut ann = w.announce(&m, 1, 1, Action::InstallAndActivate);
    ann.bootstrap = vec![seeder.to_string()];

    // The operator side: publish the announcement retained, watch the device.
    let mut o = MqttOptions::new("operator", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 64);
    let fleet = meshota_protocol::FleetId::new("fleet").unwrap();
    let device = DeviceId::new("dev-1").unwrap();
    let status_topic = Topic::Status {
        fleet: fleet.clone(),
        device: device.clone(),
    }
    .to_string();
    let announce_topic = Topic::Announce {
        fleet,
        compatible: rpi4(),
        channel: meshota_protocol::Channel::new("stable").unwrap(),
    }
    .to_string();
    let ann_bytes = codec::encode(&ann).unwrap();

    let (stop_tx, daemon) = spawn_daemon(cfg, store, fetcher);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<Status> = None;
    let mut last_counter = 0;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(Ok(ev)) = conn.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let p = match ev {
            // (Re)connected: subscribe and (re)publish the retained announcement.
            MqttEvent::Incoming(Packet::ConnAck(_)) => {
                client
                    .subscribe(status_topic.clone(), QoS::AtLeastOnce)
                    .unwrap();
                client
                    .publish(
                        announce_topic.clone(),
                        QoS::AtLeastOnce,
                        true,
                        ann_bytes.clone(),
                    )
                    .unwrap();
                continue;
            }
            MqttEvent::Incoming(Packet::Publish(p)) => p,
            _ => continue,
        };
        let signed: SignedReport = codec::decode(&p.payload).unwrap();
        let key_file = std::fs::read_to_string(data_dir.join("device.key")).unwrap();
        let (_, key) = SecretKey::from_file(&key_file).unwrap();
        let report = signed
            .verify(&key.public())
            .expect("signed by the device key");
        seen.push((
            report.counter,
            p.retain,
            p.dup,
            format!("{:?}", report.body)
                .chars()
                .take(80)
                .collect::<String>(),
        ));
        // QoS 1 may deliver twice; the control plane drops what is not above
        // the last accepted, and so does this check.
        if report.counter <= last_counter {
            continue;
        }
        last_counter = report.counter;
        if let ReportBody::Status(s) = report.body {
            let done = s.state == UpdateState::Committed;
            last = Some(s);
            if done {
                break;
            }
        }
    }
    let _ = stop_tx.send(());
    daemon.join().unwrap().unwrap();
    let last = last.unwrap_or_else(|| panic!("no status arrived: {seen:?}"));
    assert_eq!(last.state, UpdateState::Committed, "{seen:?}");
    assert_eq!(last.version, Some(v(1)));
    assert!(last.online);
    assert!(
        last.peer_id.is_some(),
        "the status names the device's peer id"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("slots/current/payload")).unwrap(),
        payload
    );
}

#[test]
fn reports_made_while_the_broker_is_down_are_kept_and_delivered_after_it_returns() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let w = world();
    let (cfg, data_dir) = device_config(tmp.path(), port, &w);

    // First run with no broker: the boot status can only be queued.
    let (stop_tx, daemon) = spawn_daemon(cfg.clone(), MemStore::new(), preloaded());
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued = loop {
        let pending = Outbox::open(&data_dir.join("outbox"))
            .and_then(|o| o.pending())
            .unwrap_or_default();
        if !pending.is_empty() {
            break pending;
        }
        assert!(Instant::now() < deadline, "nothing was queued offline");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = stop_tx.send(());
    daemon.join().unwrap().unwrap();
    let key_file = std::fs::read_to_string(data_dir.join("device.key")).unwrap();
    let (_, key) = SecretKey::from_file(&key_file).unwrap();
    let queued_counters: Vec<u64> = queued
        .iter()
        .map(|q| {
            let signed: SignedReport = codec::decode(&q.bytes).unwrap();
            signed.verify(&key.public()).unwrap().counter
        })
        .collect();

    // The broker comes back; an operator listens; the device restarts.
    start_broker(port);
    let (_client, mut conn) = status_listener(port);
    let (stop_tx, daemon) = spawn_daemon(cfg, MemStore::new(), preloaded());
    let mut delivered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !queued_counters.iter().all(|c| delivered.contains(c)) {
        if let Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) =
            conn.recv_timeout(Duration::from_millis(200))
        {
            let signed: SignedReport = codec::decode(&p.payload).unwrap();
            delivered.push(signed.verify(&key.public()).unwrap().counter);
        }
    }
    let _ = stop_tx.send(());
    daemon.join().unwrap().unwrap();
    for c in &queued_counters {
        assert!(
            delivered.contains(c),
            "report {c} queued offline never arrived: {delivered:?}"
        );
    }
}

/// An operator on the broker at `port`, subscribed (acknowledged) to
/// `dev-1`'s status topic. Keep the client: dropping it ends the session.
fn status_listener(port: u16) -> (Client, rumqttc::Connection) {
    let mut o = MqttOptions::new("operator", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 64);
    let fleet = meshota_protocol::FleetId::new("fleet").unwrap();
    let device = DeviceId::new("dev-1").unwrap();
    let status_topic = Topic::Status { fleet, device }.to_string();
    client.subscribe(status_topic, QoS::AtLeastOnce).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut subscribed = false;
    while !subscribed && Instant::now() < deadline {
        subscribed = matches!(
            conn.recv_timeout(Duration::from_millis(200)),
            Ok(Ok(MqttEvent::Incoming(Packet::SubAck(_))))
        );
    }
    assert!(subscribed, "operator could not subscribe");
    (client, conn)
}

/// A TCP relay to the broker whose connections the test can cut, as a
/// flaky link would; new connections still pass.
struct Relay {
    port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(broker: u16) -> Self {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>> = Default::default();
        let seen = conns.clone();
        // Lives as long as the test process, like the broker's thread.
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", broker)) else {
                    continue;
                };
                seen.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let ends = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ];
                for (mut from, mut to) in ends {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, conns }
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn after_a_dropped_connection_the_device_says_it_is_back_above_its_published_will() {
    let broker = free_port();
    start_broker(broker);
    let relay = Relay::start(broker);
    let tmp = tempfile::tempdir().unwrap();
    let w = world();
    let (cfg, _) = device_config(tmp.path(), relay.port, &w);

    // The operator listens on the broker itself, not through the relay.
    let (_client, mut conn) = status_listener(broker);
    // Statuses as (counter, online), unverified: the counters are the point.
    let mut next_status = |deadline: Instant| -> Option<(u64, bool)> {
        while Instant::now() < deadline {
            if let Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) =
                conn.recv_timeout(Duration::from_millis(200))
            {
                let signed: SignedReport = codec::decode(&p.payload).unwrap();
                let r = signed.claimed().unwrap();
                if let ReportBody::Status(s) = r.body {
                    return Some((r.counter, s.online));
                }
            }
        }
        None
    };

    let (stop_tx, daemon) = spawn_daemon(cfg, MemStore::new(), preloaded());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match next_status(deadline) {
            Some((_, true)) => break,
            Some(_) => continue,
            None => panic!("the device never said it was online"),
        }
    }

    // The link drops: the broker publishes the device's will.
    relay.cut();
    let deadline = Instant::now() + Duration::from_secs(60);
    let will = loop {
        match next_status(deadline) {
            Some((c, false)) => break c,
            Some(_) => continue,
            None => panic!("the broker published no will"),
        }
    };
    // The device comes back through the relay and says so, signed above
    // the will, so the control plane does not take it for a replay.
    let deadline = Instant::now() + Duration::from_secs(60);
    let back = loop {
        match next_status(deadline) {
            Some((c, true)) => break c,
            Some(_) => continue,
            None => panic!("the device never said it was back"),
        }
    };
    assert!(back > will, "back at {back}, will at {will}");
    let _ = stop_tx.send(());
    daemon.join().unwrap().unwrap();
}
