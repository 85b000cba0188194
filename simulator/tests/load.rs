//! `meshota-sim load` against an in-process meshota broker on loopback:
//! every virtual device logs in with its token, its signed reports reach
//! the monitor and the control plane, and the latencies are sane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meshota_broker::config::Config;
use meshota_broker::server::Server;
use meshota_protocol::DeviceId;
use meshota_sim::load::{self, LoadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_token_devices_connect_and_their_statuses_are_delivered_and_timed() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        auto_accept: true,
        ..Config::for_tests(dir.path())
    };
    let server = tokio::time::timeout(Duration::from_secs(10), Server::spawn(config))
        .await
        .expect("server starts in time")
        .expect("server starts");
    let addr = server.mqtt_addr().expect("embedded broker");
    let mut cfg = LoadConfig::new(&format!("mqtt://{addr}"), 20).unwrap();
    cfg.rate = 100.0;
    cfg.duration = Duration::from_secs(3);
    cfg.status_every = Duration::from_millis(250);
    cfg.event_every = Some(Duration::from_millis(500));
    cfg.drain = Duration::from_millis(500);
    let mut snapshots = 0;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        load::run(&cfg, &mut |_| snapshots += 1),
    )
    .await
    .expect("the run ends in time")
    .unwrap();

    assert_eq!(r.connected, 20, "{r:#?}");
    assert_eq!(r.connect_failures, 0, "{r:#?}");
    assert!(snapshots >= 2, "{snapshots} progress snapshots");
    assert!(r.published >= 20 * 4, "{r:#?}");
    assert!(r.delivered > 0 && r.latency_samples > 0, "{r:#?}");
    // QoS 1 on loopback: every status sent while the monitor listened
    // arrives, give or take the ones in flight at the stop.
    assert!(r.delivered + 40 >= r.published, "{r:#?}");
    let (p50, p99, max) = (
        r.latency_ms_p50.unwrap(),
        r.latency_ms_p99.unwrap(),
        r.latency_ms_max.unwrap(),
    );
    assert!(p50.is_finite() && max.is_finite(), "{r:#?}");
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{r:#?}");
    assert!(r.connect_rate > 0.0 && r.connect_ms_p50.is_some(), "{r:#?}");

    // The reports are real, signed meshota reports: the control plane
    // verified and ingested them into the registry.
    let rec = server
        .registry()
        .device(&DeviceId::new("load-7").unwrap())
        .unwrap()
        .expect("device enrolled");
    assert!(rec.tags.iter().any(|t| t == "load"), "{rec:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_an_error_not_a_hang() {
    // Bind then drop: a loopback port with nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = LoadConfig::new(&format!("mqtt://127.0.0.1:{port}"), 2).unwrap();
    cfg.connect_timeout = Duration::from_secs(2);
    let r = tokio::time::timeout(Duration::from_secs(10), load::run(&cfg, &mut |_| {}))
        .await
        .expect("fails in time");
    assert!(matches!(r, Err(load::LoadError::Monitor(_))), "{r:?}");
    assert!(
        load::run(&LoadConfig::new("http://x", 1).unwrap(), &mut |_| {})
            .await
            .is_err()
    );
}
