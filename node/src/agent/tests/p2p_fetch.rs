//! The agent fetching a release peer-to-peer: real libp2p on loopback, a
//! seed-only origin, and the `dir` backend.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use meshota_protocol::{Action, Event, UpdateState};

use super::*;
use crate::p2p::{Node, P2pConfig, P2pFetcher};
use crate::store::Store;

#[test]
fn an_announced_release_is_fetched_from_the_origin_over_libp2p_and_committed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rig = Rig::new();
    // The origin holds the release; the device's store starts empty.
    let origin_store = Arc::new(TestStore::default());
    let payload = noise(900_000, 17);
    let m = put_payload(origin_store.as_ref(), &payload, v(1), InstallKind::Image);
    origin_store.set_roots(&[m.id().unwrap()]).unwrap();
    let keypair = libp2p::identity::Keypair::generate_ed25519;
    let origin = rt
        .block_on(async {
            Node::spawn(
                P2pConfig::loopback().origin(),
                origin_store.clone(),
                keypair(),
            )
        })
        .unwrap();
    let device = rt
        .block_on(async { Node::spawn(P2pConfig::loopback(), rig.store.clone(), keypair()) })
        .unwrap();
    let seeder = rt.block_on(origin.listen_addrs()).unwrap()[0]
        .clone()
        .with(Protocol::P2p(origin.peer_id()));

    let parts = DriverParts {
        backend: Box::new(rig.backend()),
        store: rig.store.clone(),
        data_dir: rig.tmp.path().join("data"),
        fetcher: Box::new(P2pFetcher::new(
            device.clone(),
            rt.handle().clone(),
            Some(Duration::from_secs(60)),
        )),
        inhibitor: None,
        reporter: Box::new(rig.reports.clone()),
    };
    let mut d = LocalDriver::start(rig.cfg.clone(), parts, NOW).unwrap();
    let mut ann = rig.world.announce(&m, 1, 1, Action::InstallAndActivate);
    ann.bootstrap = vec![seeder.to_string()];
    d.agent.handle_announcement(ann, NOW);
    let outcome = d.run(NOW, None).unwrap();
    assert!(
        matches!(outcome, RunOutcome::Idle),
        "the dir backend switches live, without a reboot: {outcome:?}"
    );
    assert_eq!(d.agent.phase(), UpdateState::Committed);
    assert_eq!(
        d.agent.status().peer_id,
        Some(device.peer_id().to_string()),
        "the status names the device's peer id"
    );
    assert_eq!(rig.active_payload().unwrap(), payload);
    let from_origin = rig.reports.take_events().iter().any(|e| {
        matches!(e, Event::Progress { bytes, total, .. } if bytes.origin > 0 && *total == m.payload_size)
    });
    assert!(from_origin, "no progress event counted origin bytes");
    rt.block_on(device.shutdown());
    rt.block_on(origin.shutdown());
}
