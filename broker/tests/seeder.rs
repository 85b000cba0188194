//! The origin seeder: a release published over HTTP is served over libp2p,
//! and ten devices fetching it at once cost the origin about one copy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshota_node::p2p::{FetchOptions, Node, P2pConfig};
use meshota_node::store::{MemStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_fetch_a_published_release_with_the_origin_serving_about_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    let mut cfg = config(&dir.path().join("broker"));
    cfg.trust = Some(write_trust(dir.path(), &k));
    cfg.p2p_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    let server = spawn(cfg).await;

    let data = payload(3 * 1024 * 1024, 7);
    let (m, bytes) = bundle(&k, &data, &k.release);
    let path = dir.path().join("release.bundle");
    std::fs::write(&path, bytes).unwrap();
    let client = http(&server, true);
    blocking(move || client.publish_release(&path).unwrap()).await;

    let seeder = server.seeder().expect("--p2p-listen starts the seeder");
    let origin = seeder.addrs().await;
    assert!(!origin.is_empty(), "the seeder listens");
    let manifest = m.id().unwrap();

    let mut devices = Vec::new();
    for _ in 0..10 {
        let store = MemStore::new();
        let node = Node::spawn(
            P2pConfig::loopback(),
            Arc::new(store.clone()),
            libp2p::identity::Keypair::generate_ed25519(),
        )
        .unwrap();
        node.dial(origin[0].clone()).await.unwrap();
        devices.push((node, store));
    }
    // Each device also knows the others, as mDNS would tell it on a LAN.
    for (i, (node, _)) in devices.iter().enumerate() {
        for (other, _) in devices.iter().skip(i + 1) {
            let addr = other.listen_addrs().await.unwrap()[0]
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(other.peer_id()));
            let _ = node.dial(addr).await;
        }
    }
    let fetches = devices.iter().map(|(node, _)| {
        node.fetch(
            manifest,
            FetchOptions {
                timeout: Some(Duration::from_secs(90)),
                progress: None,
            },
        )
    });
    for r in futures::future::join_all(fetches).await {
        r.expect("every device completes");
    }
    for (_, store) in &devices {
        assert_eq!(store.held(&m).unwrap().count(), m.chunks.len());
    }
    let uploaded = seeder.node().stats().uploaded_bytes;
    assert!(
        uploaded <= 2 * m.payload_size,
        "the origin uploaded {uploaded} bytes for a {}-byte release",
        m.payload_size
    );
    for (node, _) in &devices {
        node.shutdown().await;
    }
    server.shutdown().await.unwrap();
}
