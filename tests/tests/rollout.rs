//! Staged rollouts across real processes: `meshota-broker`, five
//! `meshota-node`s with the `dir` backend, and the operator CLI. A
//! rollout takes every device to committed with a byte-identical active
//! slot, and survives the broker being SIGKILLed half-way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use serde_json::Value;

const NODES: usize = 5;

/// A lab with a broker, the release published, and `NODES` nodes online
/// whose downloads are capped at `download_bps` (0: none).
fn fleet(seed: u64, download_bps: u64) -> (Lab, String) {
    let mut lab = Lab::new(512 * 1024, seed);
    lab.download_bps = download_bps;
    lab.start_broker();
    let release = lab.publish();
    let ids: Vec<String> = (1..=NODES).map(|i| format!("node-{i}")).collect();
    for id in &ids {
        lab.add_node(id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    lab.wait_online(&ids);
    (lab, release)
}

/// Waits until every device reports committed, then checks each active
/// slot against the payload.
fn assert_all_committed(lab: &Lab, release: &str) {
    eventually("every device committed", WAIT, || {
        let devs = lab.devices();
        (devs.len() == NODES && devs.iter().all(|d| d["state"] == "committed")).then_some(())
    });
    for d in lab.devices() {
        assert_eq!(d["version"], "1.0.0", "{d}");
        assert_eq!(d["release"], release, "{d}");
    }
    for n in &lab.nodes {
        let active = n
            .active_payload()
            .unwrap_or_else(|| panic!("{}: no active slot", n.id));
        assert!(
            active == lab.payload,
            "{}: the active slot differs from the payload",
            n.id
        );
        let record = n.active_release().unwrap();
        assert!(record.starts_with(release), "{}: {record}", n.id);
        assert_eq!(n.status()["state"], "committed", "{}", n.id);
    }
}

fn rollout_state(lab: &Lab, id: &str) -> Value {
    lab.meshota(&["rollout", "status", id, "--json"])
        .success()
        .json()
}

#[test]
fn a_two_wave_rollout_takes_five_nodes_to_committed_with_byte_identical_slots() {
    let (lab, release) = fleet(21, 0);
    let rollout = lab.create_rollout(&release);
    assert_all_committed(&lab, &release);
    let status = eventually("the rollout completes", WAIT, || {
        let s = rollout_state(&lab, &rollout);
        (s["state"] == "completed").then_some(s)
    });
    assert_eq!(status["release"], release.as_str());
    assert_eq!(status["waves"].as_array().unwrap().len(), 2, "{status}");
}

#[test]
fn with_prefetch_the_next_wave_downloads_during_the_soak_and_installs_nothing() {
    let (lab, release) = fleet(23, 0);
    // The first wave's soak outlasts the test, so the second wave never
    // opens here.
    let rollout = lab.create_rollout_with(
        &release,
        &["--waves", "20,100", "--soak", "1h", "--prefetch"],
    );
    let status = eventually("the first wave commits and the rest fetch", WAIT, || {
        let status = rollout_state(&lab, &rollout);
        // 20 %, plus a device of each site that share leaves out.
        let first = status["waves"][0]["counts"]["targeted"].as_u64()? as usize;
        let devs = lab.devices();
        let committed = devs.iter().filter(|d| d["state"] == "committed").count();
        let fetched = devs.iter().filter(|d| d["state"] == "downloaded").count();
        (first > 0 && committed == first && fetched == NODES - first).then_some(status)
    });
    assert_eq!(status["current_wave"], 0, "{status}");
    assert_eq!(status["prefetch"], true, "{status}");
    assert!(
        status["prefetch_bp"].as_u64().unwrap() > status["share_bp"].as_u64().unwrap(),
        "{status}"
    );
    // They hold the bundle and wait, as each device itself says, and
    // none has switched slots.
    let waiting: Vec<_> = lab
        .nodes
        .iter()
        .filter(|n| n.status()["state"] == "downloaded")
        .collect();
    assert!(!waiting.is_empty());
    assert_eq!(
        waiting.len(),
        NODES - status["waves"][0]["counts"]["targeted"].as_u64().unwrap() as usize
    );
    for n in waiting {
        assert!(
            n.active_payload().is_none_or(|p| p != lab.payload),
            "{}",
            n.id
        );
    }
}

#[test]
fn a_rollout_and_the_registry_resume_after_the_broker_is_sigkilled_mid_rollout() {
    // Capped downloads (about four seconds each) keep the rollout in
    // flight when the broker dies.
    let (mut lab, release) = fleet(22, 128 * 1024);
    let rollout = lab.create_rollout(&release);
    let registry = eventually("a device starts downloading", WAIT, || {
        let devs = lab.devices();
        devs.iter()
            .any(|d| d["state"] == "downloading")
            .then_some(devs)
    });
    assert!(
        registry.iter().all(|d| d["state"] != "committed"),
        "not mid-rollout: {registry:?}"
    );
    lab.kill_broker();
    lab.start_broker();
    // The registry survived: the same devices with the same keys and
    // first sightings (nobody re-enrolled as new).
    let key = |d: &Value| {
        (
            d["id"].clone(),
            d["public_key"].clone(),
            d["first_seen"].clone(),
        )
    };
    let after: Vec<_> = lab.devices().iter().map(key).collect();
    assert_eq!(after, registry.iter().map(key).collect::<Vec<_>>());
    // The rollout resumed, not restarted: same id, still running.
    let status = rollout_state(&lab, &rollout);
    assert_eq!(status["release"], release.as_str());
    assert_ne!(status["state"], "scheduled", "{status}");
    assert_all_committed(&lab, &release);
    eventually("the rollout completes after the restart", WAIT, || {
        (rollout_state(&lab, &rollout)["state"] == "completed").then_some(())
    });
}
