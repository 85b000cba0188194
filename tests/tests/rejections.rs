//! What the system refuses, across real processes: a tampered bundle
//! upload, and an announcement forged straight onto the broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use meshota_protocol::bundle::BundleReader;
use meshota_protocol::{
    codec, Action, Announcement, Channel, Compatible, FleetId, RolloutGate, SecretKey, Signed,
    Topic,
};
use rumqttc::{Event, MqttOptions, Packet, QoS};
use serde_json::Value;

#[test]
fn a_tampered_bundle_upload_is_rejected_and_never_listed() {
    let mut lab = Lab::new(300 * 1024, 11);
    lab.start_broker();
    let mut bytes = std::fs::read(&lab.bundle).unwrap();
    // A byte in the middle lands in chunk data, well past the signed header.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let tampered = lab.path("tampered.mota");
    std::fs::write(&tampered, &bytes).unwrap();

    let out = lab.meshota(&["release", "publish", &tampered.display().to_string()]);
    assert!(!out.ok, "a tampered bundle was accepted: {}", out.stdout);
    assert!(out.stderr.contains("422"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hint: check the bundle with `meshota bundle verify"),
        "{}",
        out.stderr
    );
    let list = lab.meshota(&["release", "list", "--json"]).success().json();
    assert_eq!(list, Value::Array(vec![]), "nothing is listed");

    // The genuine bundle goes through, so the refusal was about the byte.
    let out = lab
        .meshota(&[
            "release",
            "publish",
            &lab.bundle.display().to_string(),
            "--json",
        ])
        .success()
        .json();
    let list = lab.meshota(&["release", "list", "--json"]).success().json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], out["id"]);
}

/// Publishes `payload` retained on `topic` as the control plane would,
/// with its credentials from the broker's data directory, and waits for
/// the broker's PUBACK.
fn rogue_publish(lab: &Lab, topic: &str, payload: Vec<u8>) {
    let b = lab.broker();
    let password = std::fs::read_to_string(b.data.join("control-password")).unwrap();
    let mut opts = MqttOptions::new("rogue", b.mqtt.ip().to_string(), b.mqtt.port());
    opts.set_credentials("$meshota-control", password.trim())
        .set_max_packet_size(512 * 1024, 512 * 1024);
    let (client, mut conn) = rumqttc::Client::new(opts, 8);
    client
        .publish(topic, QoS::AtLeastOnce, true, payload)
        .unwrap();
    for _ in 0..200 {
        match conn.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                let _ = client.disconnect();
                return;
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => panic!("rogue client: {e}"),
        }
    }
    panic!("the broker never acknowledged the rogue publish");
}

fn error_codes(lab: &Lab, id: &str) -> Vec<String> {
    let detail = lab.device_detail(id);
    detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"]["error"]["code"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_node_given_a_forged_announcement_on_the_broker_installs_nothing_and_reports_why() {
    let mut lab = Lab::new(200 * 1024, 12);
    lab.start_broker();
    let i = lab.add_node("forge-target");
    lab.wait_online(&["forge-target"]);
    let topic = Topic::Announce {
        fleet: FleetId::new(FLEET).unwrap(),
        compatible: Compatible::new(COMPATIBLE).unwrap(),
        channel: Channel::new("stable").unwrap(),
    }
    .to_string();
    // The genuine, properly release-signed release from the bundle …
    let reader = BundleReader::open(std::fs::File::open(&lab.bundle).unwrap()).unwrap();
    let release = reader.signed_release().clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wrong = SecretKey::from_seed([0x66; 32]);
    // … opened for the whole fleet by a gate an attacker signed.
    let gate = RolloutGate {
        release_id: release.id(),
        share_bp: 10_000,
        groups: vec![],
        action: Action::InstallAndActivate,
        not_before: 0,
        expires_at: now + 3600,
        sequence: now,
        devices: Vec::new(),
        prefetch_bp: 0,
    };
    let forged_gate = Announcement {
        release: release.clone(),
        gate: Signed::sign(&gate, &[&wrong]).unwrap(),
        bootstrap: vec![],
        http_origin: None,
    };
    rogue_publish(&lab, &topic, codec::encode(&forged_gate).unwrap());
    let codes = eventually("the device reports the forged gate", WAIT, || {
        let c = error_codes(&lab, "forge-target");
        (!c.is_empty()).then_some(c)
    });
    assert_eq!(codes, vec!["E_UNKNOWN_KEY".to_string()]);

    // A release signed by a key that is not the release role's.
    let mut doc = release.decode_unverified().unwrap();
    doc.sequence += 1;
    let forged_release = Signed::sign(&doc, &[&wrong]).unwrap();
    let gate = RolloutGate {
        release_id: forged_release.id(),
        ..gate
    };
    let forged = Announcement {
        release: forged_release,
        gate: Signed::sign(&gate, &[&wrong]).unwrap(),
        bootstrap: vec![],
        http_origin: None,
    };
    rogue_publish(&lab, &topic, codec::encode(&forged).unwrap());
    eventually("the device reports the forged release", WAIT, || {
        (error_codes(&lab, "forge-target").len() >= 2).then_some(())
    });
    assert_eq!(
        error_codes(&lab, "forge-target"),
        vec!["E_UNKNOWN_KEY".to_string(), "E_UNKNOWN_KEY".to_string()]
    );

    // Nothing was installed: no active slot, no slot written, still idle.
    let node = &lab.nodes[i];
    assert!(node.active_payload().is_none());
    let written: Vec<_> = std::fs::read_dir(&node.slots)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        written.iter().all(|n| n != "current"),
        "slot dir: {written:?}"
    );
    let dev = lab.device("forge-target").unwrap();
    assert_eq!(dev["state"], "idle", "{dev}");
    assert_eq!(node.status()["state"], "idle");
}
