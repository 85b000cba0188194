//! End-to-end tests of the broker deployment: a real server in process on
//! loopback port 0, real rumqttc clients, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use meshota_broker::client::ClientError;
use meshota_broker::registry::Admission;
use meshota_protocol::topics::Topic;
use meshota_protocol::{ChunkId, DeviceToken, Event, Manifest, ReportBody, SecretKey};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_authenticate_with_signed_tokens_and_unknown_keys_wait_as_pending() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(config(dir.path())).await;
    let mqtt = server.mqtt_addr().unwrap();
    let key = SecretKey::from_seed([1; 32]);

    // An unknown key cannot connect, but is recorded as pending.
    assert!(device_connect(mqtt, "d1", &key).await.is_err());
    let rec = server.registry().device(&dev("d1")).unwrap().unwrap();
    assert_eq!(rec.admission, Admission::Pending);
    assert_eq!(rec.public_key, key.public());

    // The operator accepts it over HTTP; now it connects.
    let client = http(&server, true);
    blocking(move || client.accept_device("d1").unwrap()).await;
    let (c, _el) = device_connect(mqtt, "d1", &key)
        .await
        .expect("accepted device connects");
    drop(c);

    // A garbage token, a token signed by another key, and a token for
    // another username are all refused.
    assert!(mqtt_connect(mqtt, "d1", "d1", "not-a-token").await.is_err());
    let other = SecretKey::from_seed([2; 32]);
    assert!(device_connect(mqtt, "d1", &other).await.is_err());
    let pw = DeviceToken::issue(&dev("d1"), &key, meshota_broker::now(), 300).unwrap();
    assert!(mqtt_connect(mqtt, "d2", "d2", &pw).await.is_err());
    // The accepted key was not replaced by the stranger's.
    let rec = server.registry().device(&dev("d1")).unwrap().unwrap();
    assert_eq!(rec.public_key, key.public());
    assert_eq!(rec.admission, Admission::Accepted);
    // Nobody gets in as the control plane without its password.
    assert!(
        mqtt_connect(mqtt, "x", meshota_broker::config::CONTROL_USER, "guess")
            .await
            .is_err()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_unenrolled_telemetry_is_rejected_and_the_registry_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auto_accept = true;
    let server = spawn(cfg).await;
    let mqtt = server.mqtt_addr().unwrap();
    let key = SecretKey::from_seed([1; 32]);
    let (c, el) = device_connect(mqtt, "d1", &key).await.unwrap();
    let _drive = drive(el);
    let reg = server.registry().clone();
    control_connected(&server).await;

    let body = ReportBody::Status(status(true));
    c.publish(
        status_topic("d1"),
        QoS::AtLeastOnce,
        true,
        report("d1", 5, body, &key),
    )
    .await
    .unwrap();
    let accepted = eventually("first status accepted", || {
        reg.device(&dev("d1"))
            .unwrap()
            .filter(|d| d.last_counter == 5)
    })
    .await;

    // Forged: signed by another key, on d1's topic, with a higher counter.
    let mallory = SecretKey::from_seed([9; 32]);
    let mut evil = status(true);
    evil.version = Some(meshota_protocol::semver::Version::new(0, 0, 1));
    c.publish(
        status_topic("d1"),
        QoS::AtLeastOnce,
        false,
        report("d1", 50, ReportBody::Status(evil.clone()), &mallory),
    )
    .await
    .unwrap();
    // Replayed: the genuinely signed status again, as a captured copy
    // (not retained, so it is not mistaken for a redelivery).
    c.publish(
        status_topic("d1"),
        QoS::AtLeastOnce,
        false,
        report("d1", 5, ReportBody::Status(status(true)), &key),
    )
    .await
    .unwrap();
    let ev = ReportBody::Event(Event::Error {
        code: "E_X".into(),
        message: "replay".into(),
        release: None,
    });
    // Unenrolled: a device nobody accepted, correctly self-signed.
    let ghost = SecretKey::from_seed([7; 32]);
    c.publish(
        events_topic("ghost"),
        QoS::AtLeastOnce,
        false,
        report("ghost", 1, ev.clone(), &ghost),
    )
    .await
    .unwrap();
    // Speaking for another device: d1's key, but the report names d2.
    c.publish(
        status_topic("d1"),
        QoS::AtLeastOnce,
        false,
        report("d2", 60, ReportBody::Status(evil), &key),
    )
    .await
    .unwrap();
    // Garbage.
    c.publish(
        events_topic("d1"),
        QoS::AtLeastOnce,
        false,
        b"garbage".to_vec(),
    )
    .await
    .unwrap();

    for reason in [
        "forged",
        "replayed",
        "unenrolled",
        "device-mismatch",
        "malformed",
    ] {
        eventually(reason, || (rejected(&server, reason) >= 1).then_some(())).await;
    }
    let after = reg.device(&dev("d1")).unwrap().unwrap();
    assert_eq!(after, accepted, "rejected reports changed the registry");
    assert!(reg.events(&dev("d1")).unwrap().is_empty());
    assert!(reg.device(&dev("ghost")).unwrap().is_none());

    // A fresh report still goes through, and an old offline will only
    // marks the device offline.
    c.publish(
        events_topic("d1"),
        QoS::AtLeastOnce,
        false,
        report("d1", 6, ev, &key),
    )
    .await
    .unwrap();
    eventually("fresh event", || {
        (reg.events(&dev("d1")).unwrap().len() == 1).then_some(())
    })
    .await;
    c.publish(
        status_topic("d1"),
        QoS::AtLeastOnce,
        false,
        report("d1", 2, ReportBody::Status(status(false)), &key),
    )
    .await
    .unwrap();
    let off = eventually("offline will applied", || {
        reg.device(&dev("d1")).unwrap().filter(|d| !d.online)
    })
    .await;
    // The event moved the events counter; the will moved neither.
    assert_eq!((off.last_counter, off.last_event_counter), (5, 6));
    assert_eq!(off.version, accepted.version);

    // The metrics show it.
    let client = http(&server, true);
    let (status_code, body) = blocking(move || client.get_raw("/metrics").unwrap()).await;
    assert_eq!(status_code, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("meshota_reports_rejected_total{reason=\"forged\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("meshota_telemetry_messages_per_second 0.000"),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

async fn publish_fixture_bundle(
    server: &meshota_broker::server::Server,
    dir: &std::path::Path,
) -> Manifest {
    let k = keys();
    let (m, bytes) = bundle(&k, &payload(300_000, 1), &k.release);
    let path = dir.join("good.bundle");
    std::fs::write(&path, bytes).unwrap();
    let client = http(server, true);
    let rec = blocking(move || client.publish_release(&path).unwrap()).await;
    assert_eq!(rec.manifest_id, m.id().unwrap());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_broker_keeps_the_registry_the_releases_and_the_retained_announcements() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let trust = write_trust(dir.path(), &keys());
    let mut cfg = config(&data);
    cfg.trust = Some(trust);
    let server = spawn(cfg.clone()).await;
    let m = publish_fixture_bundle(&server, dir.path()).await;
    let key = SecretKey::from_seed([1; 32]);
    assert!(device_connect(server.mqtt_addr().unwrap(), "d1", &key)
        .await
        .is_err());
    server.registry().accept(&dev("d1")).unwrap();
    let token = server.operator_token().to_string();
    let topic = Topic::Announce {
        fleet: fleet(),
        compatible: meshota_protocol::Compatible::new("rpi4").unwrap(),
        channel: meshota_protocol::Channel::new("stable").unwrap(),
    }
    .to_string();
    server
        .control()
        .announce(&Topic::parse(&topic).unwrap(), b"announcement v1".to_vec())
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let server = spawn(cfg).await;
    assert_eq!(server.operator_token(), token);
    let rec = server.registry().device(&dev("d1")).unwrap().unwrap();
    assert_eq!(rec.admission, Admission::Accepted);
    device_connect(server.mqtt_addr().unwrap(), "d1", &key)
        .await
        .expect("still enrolled after restart");
    // The new embedded broker starts empty; the control plane re-publishes
    // the stored announcement as retained.
    expect_retained(
        server.mqtt_addr().unwrap(),
        "d1",
        &key,
        &topic,
        b"announcement v1",
    )
    .await;
    let client = http(&server, true);
    let first = m.chunks[0].id;
    let (releases, (code, _)) = blocking(move || {
        (
            client.releases().unwrap(),
            client.get_raw(&format!("/v1/chunks/{first}")).unwrap(),
        )
    })
    .await;
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].manifest_id, m.id().unwrap());
    assert_eq!(code, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_served_over_http_verify_and_a_missing_chunk_returns_404() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.trust = Some(write_trust(dir.path(), &keys()));
    let server = spawn(cfg).await;
    let m = publish_fixture_bundle(&server, dir.path()).await;
    assert!(m.chunks.len() > 3);
    let anon = http(&server, false);
    let mid = m.id().unwrap();
    let chunks = m.chunks.clone();
    blocking(move || {
        let (code, body) = anon.get_raw(&format!("/v1/manifests/{mid}")).unwrap();
        assert_eq!(code, 200);
        let (id, served) = Manifest::decode(&body).unwrap();
        assert_eq!(id, mid);
        assert_eq!(served.chunks, chunks);
        for c in &chunks {
            let (code, body) = anon.get_raw(&format!("/v1/chunks/{}", c.id)).unwrap();
            assert_eq!(code, 200);
            assert_eq!(ChunkId::digest(&body), c.id);
            assert_eq!(body.len() as u32, c.len);
        }
        let missing = ChunkId::digest(b"nobody has this");
        let (code, body) = anon.get_raw(&format!("/v1/chunks/{missing}")).unwrap();
        assert_eq!(code, 404);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("no chunk"));
        let (code, _) = anon.get_raw("/v1/chunks/not-hex").unwrap();
        assert_eq!(code, 400);
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_write_is_refused_with_401_and_a_tampered_bundle_with_422() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.trust = Some(write_trust(dir.path(), &keys()));
    let server = spawn(cfg).await;
    let k = keys();
    let (_, mut bytes) = bundle(&k, &payload(100_000, 2), &k.release);
    let good = dir.path().join("good.bundle");
    std::fs::write(&good, &bytes).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x55;
    let bad = dir.path().join("bad.bundle");
    std::fs::write(&bad, &bytes).unwrap();
    // Signed by a key the trust root does not know.
    let (_, rogue) = bundle(&k, &payload(10_000, 3), &SecretKey::from_seed([66; 32]));
    let rogue_path = dir.path().join("rogue.bundle");
    std::fs::write(&rogue_path, rogue).unwrap();

    let anon = http(&server, false);
    let wrong = meshota_broker::client::Client::new(
        &format!("http://{}", server.http_addr()),
        Some("wrong".into()),
    );
    let op = http(&server, true);
    blocking(move || {
        for c in [&anon, &wrong] {
            match c.publish_release(&good) {
                Err(ClientError::Status { status: 401, .. }) => {}
                other => panic!("expected 401, got {other:?}"),
            }
            assert!(matches!(
                c.devices(&Default::default()),
                Err(ClientError::Status { status: 401, .. })
            ));
        }
        match op.publish_release(&bad) {
            Err(ClientError::Status {
                status: 422,
                message,
            }) => {
                assert!(
                    message.contains("tampered") || message.contains("corrupt"),
                    "{message}"
                )
            }
            other => panic!("expected 422, got {other:?}"),
        }
        match op.publish_release(&rogue_path) {
            Err(ClientError::Status {
                status: 422,
                message,
            }) => {
                assert!(
                    message.contains("signature") || message.contains("key"),
                    "{message}"
                )
            }
            other => panic!("expected 422, got {other:?}"),
        }
        assert!(op.releases().unwrap().is_empty());
        // Accepting a device that never tried to log in is a clear 404.
        match op.accept_device("nobody") {
            Err(ClientError::Status {
                status: 404,
                message,
            }) => {
                assert!(message.contains("nobody"), "{message}")
            }
            other => panic!("expected 404, got {other:?}"),
        }
        assert_eq!(op.get_raw("/v1/devices/nobody").unwrap().0, 404);
        assert_eq!(op.get_raw("/v1/no-such-endpoint").unwrap().0, 404);
        // Health is open.
        assert_eq!(anon.get_raw("/v1/health").unwrap().0, 200);
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_clients_overwrite_of_a_retained_announcement_is_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auto_accept = true;
    let server = spawn(cfg).await;
    let mqtt = server.mqtt_addr().unwrap();
    let topic = Topic::Announce {
        fleet: fleet(),
        compatible: meshota_protocol::Compatible::new("rpi4").unwrap(),
        channel: meshota_protocol::Channel::new("stable").unwrap(),
    };
    let ours = b"the signed announcement".to_vec();
    control_connected(&server).await;
    server
        .control()
        .announce(&topic, ours.clone())
        .await
        .unwrap();

    // A rogue (but admitted) device overwrites the retained message.
    let rogue = SecretKey::from_seed([5; 32]);
    let (c, el) = device_connect(mqtt, "rogue", &rogue).await.unwrap();
    let _d = drive(el);
    c.publish(
        topic.to_string(),
        QoS::AtLeastOnce,
        true,
        b"garbage".to_vec(),
    )
    .await
    .unwrap();
    eventually("re-assertion", || {
        (server
            .control()
            .stats()
            .reasserted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1)
            .then_some(())
    })
    .await;

    // A newcomer subscribing now gets ours as the retained message.
    let key = SecretKey::from_seed([6; 32]);
    expect_retained(mqtt, "viewer", &key, &topic.to_string(), &ours).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt5_listener_admits_enrolled_devices_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mqtt5_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = spawn(cfg).await;
    let v5 = server.mqtt5_addr().unwrap();
    assert_ne!(v5.port(), 0);
    assert!(server.listening_line().contains(&format!("mqtt5={v5}")));
    let key = SecretKey::from_seed([1; 32]);
    let token = || DeviceToken::issue(&dev("d5"), &key, meshota_broker::now(), 60).unwrap();
    assert!(v5_connect(v5, "d5", "d5", &token()).await.is_err());
    server.registry().accept(&dev("d5")).unwrap();
    v5_connect(v5, "d5", "d5", &token())
        .await
        .expect("enrolled device over MQTT 5");
    assert!(v5_connect(v5, "d5", "d5", "garbage").await.is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_external_broker_the_control_plane_ingests_through_it() {
    // Deployment A embeds the broker; deployment B uses A's broker as an
    // external one, logging in with A's control credentials.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg_a = config(&dir.path().join("a"));
    cfg_a.auto_accept = true;
    let a = spawn(cfg_a).await;
    let mqtt = a.mqtt_addr().unwrap();
    let mut cfg_b = config(&dir.path().join("b"));
    cfg_b.mqtt_url = Some(format!(
        "mqtt://{}:{}@{mqtt}",
        meshota_broker::config::CONTROL_USER,
        a.control_password()
    ));
    let b = spawn(cfg_b).await;
    assert_eq!(b.mqtt_addr(), None);
    assert!(b.listening_line().contains("mqtt=external"));
    let key = SecretKey::from_seed([1; 32]);
    let (c, el) = device_connect(mqtt, "d1", &key).await.unwrap();
    let _d = drive(el);
    // B has its own registry: it learns d1's key only when enrolled there.
    b.registry()
        .admit(&dev("d1"), key.public(), true, meshota_broker::now())
        .unwrap();
    eventually("B connected", || {
        b.control()
            .stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(())
    })
    .await;
    c.publish(
        status_topic("d1"),
        QoS::AtLeastOnce,
        true,
        report("d1", 3, ReportBody::Status(status(true)), &key),
    )
    .await
    .unwrap();
    eventually("B ingested", || {
        b.registry()
            .device(&dev("d1"))
            .unwrap()
            .filter(|d| d.last_counter == 3)
    })
    .await;
    // The JSON API filters and summarises what was ingested.
    let client = http(&b, true);
    let (lab, other, fleet) = blocking(move || {
        let q = |site: &str| meshota_broker::client::DeviceQuery {
            site: Some(site.into()),
            ..Default::default()
        };
        (
            client.devices(&q("lab")).unwrap(),
            client.devices(&q("elsewhere")).unwrap(),
            client.fleet().unwrap(),
        )
    })
    .await;
    assert_eq!(lab.len(), 1);
    assert!(other.is_empty());
    assert_eq!(fleet["online"], 1);
    assert_eq!(fleet["by_version"]["1.0.0"], 1);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_enrols_a_device_by_its_key_before_it_ever_logs_in_and_cannot_rekey_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(config(dir.path())).await;
    let key = SecretKey::from_seed([41; 32]);
    let other = SecretKey::from_seed([42; 32]);
    let client = http(&server, true);
    let public = key.public().to_string();
    let rec = blocking(move || client.enroll_device("gw-7", &public).unwrap()).await;
    assert_eq!(rec.admission, meshota_broker::registry::Admission::Accepted);
    device_connect(server.mqtt_addr().unwrap(), "gw-7", &key)
        .await
        .expect("an enrolled device logs in at once");
    let client = http(&server, true);
    let public = other.public().to_string();
    let err = blocking(move || client.enroll_device("gw-7", &public).unwrap_err()).await;
    assert!(
        matches!(
            err,
            meshota_broker::client::ClientError::Status { status: 409, .. }
        ),
        "{err}"
    );
    assert!(
        device_connect(server.mqtt_addr().unwrap(), "gw-7", &other)
            .await
            .is_err(),
        "the other key is not enrolled"
    );
    let client = http(&server, false);
    let public = other.public().to_string();
    let err = blocking(move || client.enroll_device("gw-8", &public).unwrap_err()).await;
    assert!(
        matches!(
            err,
            meshota_broker::client::ClientError::Status { status: 401, .. }
        ),
        "{err}"
    );
    server.shutdown().await.unwrap();
}
