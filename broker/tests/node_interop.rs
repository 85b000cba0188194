//! The real device agent against the real broker deployment: the device
//! logs in with a token signed by its own key, is admitted, and its
//! signed status lands in the registry. Then a device the operator has
//! not accepted stays out.
// Test scaffolding outside #[test] functions may unwrap, as in `common`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use meshota_broker::registry::Admission;
use meshota_protocol::UpdateState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_agent_logs_in_with_its_key_and_its_signed_status_reaches_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let trust = write_trust(tmp.path(), &keys());
    let mut cfg = config(&tmp.path().join("broker"));
    cfg.auto_accept = true;
    cfg.trust = Some(trust.clone());
    let server = spawn(cfg).await;
    let addr = server.mqtt_addr().unwrap();

    let device = start_device(tmp.path(), "dev-1", addr, &trust);
    let rec = eventually("dev-1's status in the registry", || {
        server
            .registry()
            .device(&dev("dev-1"))
            .ok()
            .flatten()
            .filter(|r| r.state.is_some() && r.online)
    })
    .await;
    assert_eq!(rec.admission, Admission::Accepted);
    assert_eq!(rec.state, Some(UpdateState::Idle));
    assert_eq!(rec.site.as_ref().map(|s| s.as_str()), Some("site-1"));
    assert!(rec.last_counter > 0, "the report's counter was recorded");
    blocking(move || device.stop()).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_operator_has_not_accepted_is_held_pending_and_reports_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let trust = write_trust(tmp.path(), &keys());
    let mut cfg = config(&tmp.path().join("broker"));
    cfg.trust = Some(trust.clone());
    let server = spawn(cfg).await;
    let addr = server.mqtt_addr().unwrap();

    let device = start_device(tmp.path(), "dev-2", addr, &trust);
    let rec = eventually("dev-2 recorded as pending", || {
        server.registry().device(&dev("dev-2")).ok().flatten()
    })
    .await;
    assert_eq!(rec.admission, Admission::Pending);
    assert_eq!(rec.state, None, "a pending device's reports must not land");
    blocking(move || device.stop()).await.unwrap();
    server.shutdown().await.unwrap();
}
