//! The operator's round trip with the real `meshota` binary against a
//! running broker deployment: keys, bundle, publish, list, accept, status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use meshota_protocol::SecretKey;

fn meshota(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshota"));
    c.args(args)
        .env_remove("MESHOTA_SERVER")
        .env_remove("MESHOTA_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_publishes_lists_accepts_and_inspects_the_fleet_with_the_meshota_cli() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let payload_file = dir.path().join("rootfs.img");
    std::fs::write(&payload_file, payload(200_000, 4)).unwrap();
    let bundle_file = dir.path().join("rootfs.bundle");
    let (kd, pf, bf) = (keys_dir.clone(), payload_file.clone(), bundle_file.clone());
    blocking(move || {
        ok(&meshota(&[], &["keys", "init", "--dir", p(&kd)]));
        ok(&meshota(
            &[],
            &[
                "bundle",
                "create",
                p(&pf),
                "--name",
                "rootfs",
                "--version",
                "2.0.0",
                "--compatible",
                "rpi4",
                "--keys",
                p(&kd),
                "--out",
                p(&bf),
            ],
        ));
    })
    .await;

    let mut cfg = config(&dir.path().join("data"));
    cfg.trust = Some(keys_dir.join("trust.cbor"));
    cfg.rollout_key = Some(keys_dir.join("rollout.key"));
    let server = spawn(cfg).await;
    let url = format!("http://{}", server.http_addr());
    let token = server.operator_token().to_string();
    // A device waits as pending.
    let key = SecretKey::from_seed([3; 32]);
    assert!(device_connect(server.mqtt_addr().unwrap(), "rpi-1", &key)
        .await
        .is_err());

    blocking(move || {
        let env = [
            ("MESHOTA_SERVER", url.as_str()),
            ("MESHOTA_TOKEN", token.as_str()),
        ];
        // Without a token the write is refused, with a hint.
        let denied = meshota(
            &[("MESHOTA_SERVER", url.as_str())],
            &["release", "publish", p(&bundle_file)],
        );
        assert_eq!(denied.status.code(), Some(1));
        let err = String::from_utf8_lossy(&denied.stderr);
        assert!(
            err.contains("401") && err.contains("MESHOTA_TOKEN"),
            "{err}"
        );

        let out = ok(&meshota(&env, &["release", "publish", p(&bundle_file)]));
        assert!(out.contains("published rootfs 2.0.0"), "{out}");
        let out = ok(&meshota(&env, &["release", "list", "--json"]));
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(list[0]["version"], "2.0.0");
        let table = ok(&meshota(&env, &["release", "list"]));
        assert!(table.starts_with("RELEASE"), "{table}");

        let out = ok(&meshota(
            &env,
            &["devices", "list", "--admission", "pending"],
        ));
        assert!(out.contains("rpi-1") && out.contains("pending"), "{out}");
        let out = ok(&meshota(&env, &["devices", "accept", "rpi-1"]));
        assert!(out.contains("accepted rpi-1"), "{out}");
        let out = ok(&meshota(&env, &["devices", "list", "--json"]));
        let devs: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(devs[0]["admission"], "accepted");
        let out = ok(&meshota(&env, &["fleet", "status"]));
        assert!(
            out.contains("accepted 1") && out.contains("releases 1"),
            "{out}"
        );
        let out = ok(&meshota(&env, &["fleet", "status", "--json"]));
        let fleet: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(fleet["accepted"], 1);
        rollout_round_trip(&env, list[0]["id"].as_str().unwrap());
    })
    .await;
    device_connect(server.mqtt_addr().unwrap(), "rpi-1", &key)
        .await
        .expect("accepted by the CLI");
    server.shutdown().await.unwrap();
}

/// `meshota rollout …` against the server: bad input is refused before
/// anything is sent, then create, conflict, status, pause, resume, list,
/// abort, and a refused resume after the abort.
fn rollout_round_trip(env: &[(&str, &str)], release: &str) {
    let bad = meshota(
        env,
        &["rollout", "create", "--release", release, "--waves", "0,50"],
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("wave 0% is out of range") && !err.contains("bundle"),
        "{err}"
    );

    let create = [
        "rollout",
        "create",
        "--release",
        release,
        "--waves",
        "10,50,100",
        "--soak",
        "0s",
    ];
    let id = ok(&meshota(env, &create)).trim().to_string();
    assert_eq!(id.len(), 64, "prints the rollout id: {id}");
    let again = meshota(env, &create);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("409") && err.contains("abort"), "{err}");

    let out = ok(&meshota(env, &["rollout", "status", &id, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["release"], release);
    assert_eq!(v["waves"].as_array().unwrap().len(), 3);
    let out = ok(&meshota(env, &["rollout", "pause", &id[..12]]));
    assert!(out.contains("paused"), "{out}");
    let out = ok(&meshota(env, &["rollout", "resume", &id]));
    assert!(!out.contains("paused"), "{out}");
    let out = ok(&meshota(env, &["rollout", "list"]));
    assert!(
        out.starts_with("ROLLOUT") && out.contains(&id[..12]),
        "{out}"
    );
    let out = ok(&meshota(env, &["rollout", "abort", &id]));
    assert!(out.contains("aborted"), "{out}");
    let refused = meshota(env, &["rollout", "resume", &id]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("cannot resume"), "{err}");
}
