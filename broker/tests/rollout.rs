//! Staged rollouts end to end: the real broker deployment (embedded MQTT,
//! control plane, rollout driver, libp2p origin seeder) and real device
//! agents, each with its own libp2p node fetching from the seeder and its
//! neighbours, installing into A/B slot directories and health-checking.
// Test scaffolding outside #[test] functions may unwrap, as in `common`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use meshota_broker::rollout::{PlannerCommand, RolloutState};
use meshota_broker::rollouts::{CreateRollout, RolloutView};
use meshota_broker::server::Server;
use meshota_protocol::{ReleaseId, UpdateState};

/// Generous bound for a rollout over a handful of devices.
const ROLLOUT_WAIT: Duration = Duration::from_secs(90);

/// Runs a device agent (`meshota-node`'s daemon and a libp2p node) for
/// `id`. Canary devices fail the health check of any 2.x release, so a
/// bad release is caught in the canary wave.
fn start_p2p_device(dir: &Path, id: &str, server: &Server, trust: &Path, canary: bool) -> Device {
    let opts = AgentOptions {
        p2p: true,
        groups: if canary {
            vec!["canary".into()]
        } else {
            vec![]
        },
        health_script: Some(if canary {
            r#"! grep -q '^2\.' "$1/release""#.into()
        } else {
            "true".into()
        }),
        ..AgentOptions::default()
    };
    start_device_with(dir, id, server.mqtt_addr().unwrap(), trust, opts)
}

/// Polls the rollout until `done` holds, for at most [`ROLLOUT_WAIT`].
async fn wait_rollout(
    server: &Server,
    id: &str,
    what: &str,
    done: impl Fn(&RolloutView) -> bool,
) -> RolloutView {
    let deadline = tokio::time::Instant::now() + ROLLOUT_WAIT;
    loop {
        let v = server.rollouts().get(id, meshota_broker::now()).unwrap();
        if done(&v) {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            // What each device said, so a CI failure can be diagnosed.
            let reg = server.registry();
            let mut history = String::new();
            for d in reg.devices().unwrap() {
                for e in reg.events(&d.id).unwrap() {
                    history += &format!("{} {} {:?}\n", e.received_at, d.id, e.event);
                }
            }
            panic!(
                "timed out waiting for {what}; rollout is:\n{}\ndevice events:\n{history}",
                v.status
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn publish(server: &Server, dir: &Path, k: &Keys, version: &str, seq: u64, seed: u64) -> ReleaseId {
    let data = payload(256 * 1024, seed);
    let (_, bytes) = bundle_version(k, &data, &k.release, version, seq);
    let path = dir.join(format!("release-{version}.bundle"));
    std::fs::write(&path, bytes).unwrap();
    http(server, true).publish_release(&path).unwrap().id
}

fn request(release: ReleaseId) -> CreateRollout {
    CreateRollout {
        soak_secs: Some(0),
        ..CreateRollout::new(release)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_wave_rollout_completes_a_canary_health_failure_halts_at_the_first_wave_and_a_rollback_returns_the_fleet(
) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys();
    let trust = write_trust(tmp.path(), &k);
    let rollout_key = tmp.path().join("rollout.key");
    std::fs::write(&rollout_key, k.rollout.to_file("rollout")).unwrap();
    let mut cfg = config(&tmp.path().join("broker"));
    cfg.auto_accept = true;
    cfg.trust = Some(trust.clone());
    cfg.rollout_key = Some(rollout_key);
    cfg.p2p_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    let server = spawn(cfg).await;

    let ids: Vec<String> = (0..5).map(|i| format!("dev-{i}")).collect();
    let _devices: Vec<Device> = ids
        .iter()
        .map(|id| start_p2p_device(tmp.path(), id, &server, &trust, id == "dev-0"))
        .collect();
    let reg = server.registry().clone();
    eventually("every device's first status", || {
        let known = reg
            .devices()
            .unwrap()
            .iter()
            .filter(|d| d.compatible.is_some())
            .count();
        (known == ids.len()).then_some(())
    })
    .await;

    // Release 1: three waves over the fleet.
    let (dir, srv) = (tmp.path().to_path_buf(), &server);
    let v1 = publish(srv, &dir, &k, "1.2.3", 1, 1);
    let mut req = request(v1);
    req.waves = Some(vec![20, 60, 100]);
    let created = server
        .rollouts()
        .create(req, meshota_broker::now())
        .unwrap();
    let id = created.status.rollout.to_string();
    let done = wait_rollout(&server, &id, "release 1 to complete", |v| {
        v.status.state == RolloutState::Completed
    })
    .await;
    assert_eq!(done.status.waves.len(), 3);
    let succeeded: u32 = done.status.waves.iter().map(|w| w.counts.succeeded).sum();
    assert_eq!(succeeded as usize, ids.len(), "{}", done.status);
    assert!(
        done.status.waves.iter().all(|w| w.counts.targeted > 0),
        "each wave opened to more devices:\n{}",
        done.status
    );
    for d in reg.devices().unwrap() {
        assert_eq!(d.state, Some(UpdateState::Committed), "{}", d.id);
        assert_eq!(d.release, Some(v1), "{}", d.id);
    }
    assert!(
        done.status.bytes_from_peers + done.status.bytes_from_origin > 0,
        "the rollout counts download bytes"
    );

    // Release 2 fails its health check on the canary: the canary wave
    // halts the rollout and nobody else is ever opened to it.
    let v2 = publish(srv, &dir, &k, "2.0.0", 2, 2);
    let mut req = request(v2);
    req.groups = vec![meshota_protocol::Group::new("canary").unwrap()];
    req.waves = Some(vec![50, 100]);
    let created = server
        .rollouts()
        .create(req, meshota_broker::now())
        .unwrap();
    let id2 = created.status.rollout.to_string();
    let halted = wait_rollout(&server, &id2, "release 2 to halt", |v| {
        v.status.state == RolloutState::Halted
    })
    .await;
    assert_eq!(halted.status.current_wave, Some(0), "{}", halted.status);
    assert_eq!(halted.status.share_bp, 0, "no bucket share was opened");
    assert_eq!(halted.status.waves[0].counts.rolled_back, 1);
    assert!(halted.status.halt_reason.is_some());
    // Give any wrongly opened device time to start, then check nobody
    // outside the canary group went near release 2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for d in reg.devices().unwrap() {
        if d.id.as_str() == "dev-0" {
            assert_eq!(d.release, Some(v1), "the canary rolled back to release 1");
            continue;
        }
        assert_eq!(d.release, Some(v1), "{} stays on release 1", d.id);
        assert_ne!(d.target, Some(v2), "{} never started release 2", d.id);
    }
    let metrics = http(&server, true).get_raw("/metrics").unwrap().1;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("meshota_rollouts{state=\"halted\"} 1"),
        "the halt shows in /metrics"
    );
    // An operator who accepts the failure can abort: the gate becomes
    // `stop`, and the API refuses to resume an aborted rollout.
    server
        .rollouts()
        .command(&id2, PlannerCommand::Abort, meshota_broker::now())
        .unwrap();
    assert!(server
        .rollouts()
        .command(&id2, PlannerCommand::Resume, meshota_broker::now())
        .is_err());

    // Release 3 reaches everyone, then the operator rolls it back: each
    // device that committed it gets a signed command and returns to its
    // previous slot, release 1.
    let v3 = publish(srv, &dir, &k, "3.0.0", 3, 3);
    let mut req = request(v3);
    req.waves = Some(vec![100]);
    let id3 = server
        .rollouts()
        .create(req, meshota_broker::now())
        .unwrap()
        .status
        .rollout
        .to_string();
    wait_rollout(&server, &id3, "release 3 to complete", |v| {
        v.status.state == RolloutState::Completed
    })
    .await;
    server
        .rollouts()
        .command(&id3, PlannerCommand::Rollback, meshota_broker::now())
        .unwrap();
    let deadline = tokio::time::Instant::now() + ROLLOUT_WAIT;
    loop {
        let devices = reg.devices().unwrap();
        if devices.iter().all(|d| d.release == Some(v1)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "devices did not roll back to release 1: {:?}",
            devices
                .iter()
                .map(|d| (d.id.as_str(), d.release, d.state))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = server.rollouts().get(&id3, meshota_broker::now()).unwrap();
    assert_eq!(after.status.state, RolloutState::Aborted);
    drop(_devices);
    server.shutdown().await.unwrap();
}

/// Reads the retained announcement on `topic` as a freshly enrolled device.
async fn retained_announcement(server: &Server, topic: &str) -> meshota_protocol::Announcement {
    let key = meshota_protocol::SecretKey::from_seed([77; 32]);
    let (c, mut el) = device_connect(server.mqtt_addr().unwrap(), "observer", &key)
        .await
        .unwrap();
    c.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.unwrap();
    let bytes = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = el.poll().await {
                return p.payload.to_vec();
            }
        }
    })
    .await
    .expect("a retained announcement");
    meshota_protocol::codec::decode(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_after_a_broker_restart_and_its_gate_is_republished_with_fresh_origin_hints(
) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys();
    let trust = write_trust(tmp.path(), &k);
    let rollout_key = tmp.path().join("rollout.key");
    std::fs::write(&rollout_key, k.rollout.to_file("rollout")).unwrap();
    let mut cfg = config(&tmp.path().join("broker"));
    cfg.auto_accept = true;
    cfg.trust = Some(trust.clone());
    cfg.rollout_key = Some(rollout_key);
    cfg.p2p_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    let server = spawn(cfg.clone()).await;
    let device = start_p2p_device(tmp.path(), "dev-0", &server, &trust, false);
    let reg = server.registry().clone();
    eventually("the device's first status", || {
        reg.device(&dev("dev-0"))
            .unwrap()
            .and_then(|d| d.compatible)
    })
    .await;
    let v1 = publish(&server, tmp.path(), &k, "1.2.3", 1, 1);
    let mut req = request(v1);
    req.waves = Some(vec![50, 100]);
    // The first wave succeeds, then soaks for an hour: the restart
    // happens mid-rollout.
    req.soak_secs = Some(3600);
    let id = server
        .rollouts()
        .create(req, meshota_broker::now())
        .unwrap()
        .status
        .rollout
        .to_string();
    let before = wait_rollout(&server, &id, "the first wave to succeed", |v| {
        v.status.waves[0].counts.succeeded == 1
    })
    .await;
    assert_eq!(before.status.state, RolloutState::Running);
    let topic = before.topic.clone();
    let ann = retained_announcement(&server, &topic).await;
    assert_eq!(
        Some(ann.gate.decode_unverified().unwrap().sequence),
        before.status.gate_sequence
    );
    drop(device);
    // The registry's sled lock goes with its last handle.
    drop(reg);
    server.shutdown().await.unwrap();

    let server = spawn(cfg).await;
    let after = server.rollouts().get(&id, meshota_broker::now()).unwrap();
    assert_eq!(after.status.state, RolloutState::Running);
    assert_eq!(after.status.current_wave, Some(0));
    assert_eq!(after.status.gate_sequence, before.status.gate_sequence);
    assert_eq!(
        after.status.waves[0].counts.succeeded, 1,
        "{}",
        after.status
    );
    let seeder: Vec<String> = server
        .seeder()
        .unwrap()
        .addrs()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ann = retained_announcement(&server, &topic).await;
        let gate = ann.gate.verify(
            meshota_protocol::trust::Role::Rollout,
            &meshota_protocol::RoleKeys {
                keys: vec![k.rollout.public()],
                threshold: 1,
            },
        );
        let gate = gate.expect("the republished gate verifies under the rollout key");
        assert_eq!(Some(gate.sequence), before.status.gate_sequence);
        assert_eq!(
            ann.release.decode_unverified().unwrap().version.to_string(),
            "1.2.3"
        );
        if ann.bootstrap == seeder {
            assert!(ann.bootstrap.iter().all(|a| a.contains("/p2p/")));
            assert_eq!(ann.http_origin, Some(server.http_url()));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "announcement hints {:?} are not the restarted seeder's {seeder:?}",
            ann.bootstrap
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await.unwrap();
}

/// Writes root v2 of `k`'s fleet, which replaces the rollout key with
/// `new_rollout`, and the chain v1 → v2; returns (trust v2, chain) paths.
fn rotate_rollout_key(
    dir: &Path,
    shipped: &Path,
    k: &Keys,
    new_rollout: &meshota_protocol::SecretKey,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use meshota_protocol::{codec, RoleKeys, Signed, TrustChain, TrustRoot};
    let v1: Signed<TrustRoot> = codec::decode(&std::fs::read(shipped).unwrap()).unwrap();
    let mut next = v1.decode_unverified().unwrap();
    next.version = 2;
    next.rollout = RoleKeys {
        keys: vec![new_rollout.public()],
        threshold: 1,
    };
    let v2 = Signed::sign(&next, &[&k.root]).unwrap();
    let trust = dir.join("trust-v2.cbor");
    std::fs::write(&trust, codec::encode(&v2).unwrap()).unwrap();
    let chain = dir.join("trust-chain.cbor");
    let roots = vec![v1, v2];
    std::fs::write(&chain, codec::encode(&TrustChain { roots }).unwrap()).unwrap();
    (trust, chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_shipped_with_the_first_root_rotates_over_the_air_and_takes_a_release_gated_by_the_new_rollout_key(
) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys();
    let shipped = write_trust(tmp.path(), &k);
    let new_rollout = meshota_protocol::SecretKey::from_seed([31; 32]);
    let (trust_v2, chain) = rotate_rollout_key(tmp.path(), &shipped, &k, &new_rollout);
    let rollout_key = tmp.path().join("rollout-v2.key");
    std::fs::write(&rollout_key, new_rollout.to_file("rollout")).unwrap();
    let mut cfg = config(&tmp.path().join("broker"));
    cfg.auto_accept = true;
    cfg.trust = Some(trust_v2);
    cfg.trust_chain = Some(chain);
    cfg.rollout_key = Some(rollout_key);
    cfg.p2p_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    let server = spawn(cfg).await;

    // The device only knows root v1, whose rollout key the control plane
    // no longer holds: it can take the release only by rotating first.
    let _device = start_p2p_device(tmp.path(), "dev-0", &server, &shipped, false);
    let reg = server.registry().clone();
    eventually("dev-0 reporting trust root v2", || {
        reg.device(&dev("dev-0"))
            .unwrap()
            .filter(|d| d.trust_version == Some(2))
    })
    .await;

    let v1 = publish(&server, tmp.path(), &k, "1.2.3", 1, 7);
    let mut req = request(v1);
    req.waves = Some(vec![100]);
    let created = server
        .rollouts()
        .create(req, meshota_broker::now())
        .unwrap();
    let id = created.status.rollout.to_string();
    wait_rollout(
        &server,
        &id,
        "the release to reach the rotated device",
        |v| v.status.state == RolloutState::Completed,
    )
    .await;
    let d = reg.device(&dev("dev-0")).unwrap().unwrap();
    assert_eq!(d.state, Some(UpdateState::Committed));
    assert_eq!(d.release, Some(v1));
    let client = http(&server, true);
    let fleet = blocking(move || client.fleet().unwrap()).await;
    assert_eq!(fleet["by_trust_version"]["v2"], 1, "{fleet}");
    server.shutdown().await.unwrap();
}
