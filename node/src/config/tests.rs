//! Config parsing and validation.

use std::os::unix::fs::PermissionsExt;

use super::*;

const EXAMPLE: &str = include_str!("../../examples/node.toml");

const MINIMAL: &str = r#"
data_dir = "/tmp/x"
[device]
id = "d1"
fleet = "f"
site = "s"
compatible = "c"
[mqtt]
url = "mqtt://localhost:1883"
[trust]
root = "/etc/meshota/root.cbor"
"#;

#[test]
fn the_example_config_parses_and_validates() {
    let c = Config::parse(EXAMPLE).unwrap();
    assert_eq!(c.device.id, "dev-0001");
    assert_eq!(c.install.backend, BackendKind::Dir);
    assert_eq!(c.maintenance.windows.len(), 2);
    assert_eq!(c.health.max_trial_boots, 3);
    assert!(matches!(c.inhibitor(), Some(InhibitorSource::File(_))));
}

/// A trust root for building agent configs (nothing is verified here).
fn any_root() -> TrustRoot {
    let k = meshota_protocol::SecretKey::from_seed([5; 32]);
    let role = || meshota_protocol::RoleKeys {
        keys: vec![k.public()],
        threshold: 1,
    };
    TrustRoot {
        version: 1,
        expires_at: u64::MAX,
        root: role(),
        release: role(),
        rollout: role(),
    }
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert!(c.p2p.seed);
    assert_eq!(c.health.timeout_secs, 300);
    assert_eq!(c.inhibitor.on_timeout, InhibitTimeout::Fail);
    assert!(c.inhibitor().is_none());
    assert!(c.maintenance.windows.is_empty());
    let a = c.agent_config(any_root()).unwrap();
    assert_eq!(
        (
            a.max_fetch_attempts,
            a.fetch_backoff_min,
            a.fetch_backoff_max
        ),
        (8, 10, 600)
    );
    let c = Config::parse(&format!("{MINIMAL}\n[fetch]\nretry_min_secs = 2\n")).unwrap();
    let a = c.agent_config(any_root()).unwrap();
    assert_eq!((a.fetch_backoff_min, a.fetch_backoff_max), (2, 600));
}

#[test]
fn the_upload_cap_and_its_queue_come_from_the_file() {
    use crate::p2p::P2pConfig;
    use std::time::Duration;
    let p = P2pConfig::from_device_config(&Config::parse(MINIMAL).unwrap()).unwrap();
    assert_eq!(p.upload_limit_bps, None);
    assert_eq!(p.upload_queue_max, Duration::from_millis(1500));
    let c = Config::parse(&format!(
        "{MINIMAL}\n[p2p]\nmax_upload_bps = 237_500\nupload_queue_ms = 800\n"
    ))
    .unwrap();
    let p = P2pConfig::from_device_config(&c).unwrap();
    assert_eq!(p.upload_limit_bps, Some(237_500));
    assert_eq!(p.upload_queue_max, Duration::from_millis(800));
}

#[test]
fn the_have_poll_intervals_come_from_the_file_with_the_schedulers_defaults() {
    use crate::p2p::P2pConfig;
    use crate::sched::SchedulerConfig;
    use std::time::Duration;
    let p = P2pConfig::from_device_config(&Config::parse(MINIMAL).unwrap()).unwrap();
    let d = SchedulerConfig::default();
    assert_eq!(
        (
            p.scheduler.have_refresh,
            p.scheduler.have_refresh_max,
            p.scheduler.far_have_refresh
        ),
        (d.have_refresh, d.have_refresh_max, d.far_have_refresh)
    );
    let c = Config::parse(&format!(
        "{MINIMAL}\n[p2p]\nhave_refresh_ms = 4000\nhave_refresh_max_ms = 16000\nfar_have_refresh_ms = 15000\n"
    ))
    .unwrap();
    let p = P2pConfig::from_device_config(&c).unwrap();
    assert_eq!(
        (
            p.scheduler.have_refresh,
            p.scheduler.have_refresh_max,
            p.scheduler.far_have_refresh
        ),
        (
            Duration::from_secs(4),
            Duration::from_secs(16),
            Duration::from_secs(15)
        )
    );
}

#[test]
fn the_claim_check_comes_from_the_file_with_the_schedulers_default() {
    use crate::p2p::P2pConfig;
    use crate::sched::SchedulerConfig;
    use std::time::Duration;
    let p = P2pConfig::from_device_config(&Config::parse(MINIMAL).unwrap()).unwrap();
    assert_eq!(
        p.scheduler.claim_check,
        SchedulerConfig::default().claim_check
    );
    let c = Config::parse(&format!("{MINIMAL}\n[p2p]\nclaim_check_ms = 1500\n")).unwrap();
    let p = P2pConfig::from_device_config(&c).unwrap();
    assert_eq!(p.scheduler.claim_check, Duration::from_millis(1500));
}

#[test]
fn errors_name_the_field_and_the_fix() {
    let cases = [
        (MINIMAL.replace("id = \"d1\"", "id = \"d 1\""), "device.id"),
        (MINIMAL.replace("mqtt://", "http://"), "mqtt.url"),
        (
            format!("{MINIMAL}\n[health]\ntimeout_secs = 0\n"),
            "health.timeout_secs",
        ),
        (
            format!("{MINIMAL}\n[install]\nbackend = \"command\"\n"),
            "install.command",
        ),
        (
            format!("{MINIMAL}\n[inhibitor]\nfile = \"/a\"\ncommand = \"/b\"\n"),
            "inhibitor",
        ),
        (
            format!("{MINIMAL}\n[p2p]\nfar_have_refresh_ms = 0\n"),
            "p2p.far_have_refresh_ms",
        ),
        (
            format!("{MINIMAL}\n[fetch]\nmax_attempts = 0\n"),
            "fetch.max_attempts",
        ),
        (
            format!("{MINIMAL}\n[fetch]\nretry_min_secs = 900\n"),
            "fetch.retry_min_secs",
        ),
    ];
    for (text, field) in cases {
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
    }
    // serde's own errors name the key: unknown fields and bad windows.
    let e = Config::parse(&format!("{MINIMAL}\n[health]\ntimeout = 5\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("timeout"), "{e}");
    let e = Config::parse(&format!("{MINIMAL}\n[maintenance]\nwindows = [\"2-4\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("HH:MM-HH:MM"), "{e}");
}

#[test]
fn the_device_key_is_created_once_with_mode_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let (k1, created) = ensure_device_key(tmp.path()).unwrap();
    assert!(created);
    let mode = std::fs::metadata(tmp.path().join(DEVICE_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (k2, created) = ensure_device_key(tmp.path()).unwrap();
    assert!(!created);
    assert_eq!(k1.public(), k2.public());
    std::fs::write(tmp.path().join(DEVICE_KEY_FILE), "junk").unwrap();
    assert!(ensure_device_key(tmp.path()).is_err());
}

#[test]
fn the_agent_config_and_backend_come_from_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("/tmp/x", &tmp.path().display().to_string())
        + "\n[maintenance]\nwindows = [\"01:00-02:00\"]\n[inhibitor]\ncommand = \"/bin/true\"\non_timeout = \"proceed\"\n";
    let c = Config::parse(&text).unwrap();
    let (k, _) = ensure_device_key(tmp.path()).unwrap();
    let root = TrustRoot {
        version: 1,
        expires_at: u64::MAX,
        root: meshota_protocol::RoleKeys {
            keys: vec![k.public()],
            threshold: 1,
        },
        release: meshota_protocol::RoleKeys {
            keys: vec![k.public()],
            threshold: 1,
        },
        rollout: meshota_protocol::RoleKeys {
            keys: vec![k.public()],
            threshold: 1,
        },
    };
    let signed = Signed::sign(&root, &[&k]).unwrap();
    let root_path = tmp.path().join("root.cbor");
    std::fs::write(&root_path, codec::encode(&signed).unwrap()).unwrap();
    let mut c = c;
    c.trust.root = root_path;
    let root = c.trust_root(1).unwrap();
    let a = c.agent_config(root).unwrap();
    assert!(a.inhibitor);
    assert_eq!(a.on_inhibit_timeout, InhibitTimeout::Proceed);
    assert_eq!(a.windows.0.len(), 1);
    assert_eq!(c.backend().unwrap().name(), "dir");
    assert!(tmp.path().join("root/slots/a").is_dir());
}
