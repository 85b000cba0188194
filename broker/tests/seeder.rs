//! The origin seeder: a release published over HTTP is served over libp2p,
//! ten devices fetching it at once cost the origin about one copy, and an
//! upload limit keeps its queue short.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshota_broker::server::Server;
use meshota_node::p2p::{FetchOptions, Node, P2pConfig};
use meshota_node::store::{MemStore, Store};
use meshota_protocol::manifest::Manifest;

/// A broker whose origin seeder (uploading at most `limit` bytes a
/// second, 0 for no limit) serves a published release of `size` bytes.
#[allow(clippy::unwrap_used)] // a test fixture: failing is the test failing
async fn seeding(dir: &Path, limit: u64, size: usize, seed: u64) -> (Server, Manifest) {
    let k = keys();
    let mut cfg = config(&dir.join("broker"));
    cfg.trust = Some(write_trust(dir, &k));
    cfg.p2p_listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    cfg.p2p_max_upload_bps = limit;
    let server = spawn(cfg).await;
    let (m, bytes) = bundle(&k, &payload(size, seed), &k.release);
    let path = dir.join("release.bundle");
    std::fs::write(&path, bytes).unwrap();
    let client = http(&server, true);
    blocking(move || client.publish_release(&path).unwrap()).await;
    (server, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_fetch_a_published_release_with_the_origin_serving_about_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (server, m) = seeding(dir.path(), 0, 3 * 1024 * 1024, 7).await;
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

/// A device asking a capped seeder for many chunks at once hears `Busy`
/// for those that would wait past the queue limit, and still completes
/// (from the same seeder, later); without the cap the slots take all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_with_an_upload_limit_answers_busy_rather_than_queue_for_long() {
    for (limit, busy) in [(128 << 10, true), (0, false)] {
        let dir = tempfile::tempdir().unwrap();
        // About 32 chunks of 16 KiB: at 128 KiB/s the 1.5 s queue holds
        // about twelve.
        let (server, m) = seeding(dir.path(), limit, 512 * 1024, 9).await;
        let seeder = server.seeder().expect("--p2p-listen starts the seeder");
        let origin = seeder.addrs().await;

        let store = MemStore::new();
        let mut p2p = P2pConfig::loopback();
        p2p.scheduler.origin_window = 32;
        let node = Node::spawn(
            p2p,
            Arc::new(store.clone()),
            libp2p::identity::Keypair::generate_ed25519(),
        )
        .unwrap();
        node.dial(origin[0].clone()).await.unwrap();
        let opts = FetchOptions {
            timeout: Some(Duration::from_secs(60)),
            progress: None,
        };
        node.fetch(m.id().unwrap(), opts)
            .await
            .expect("the device completes");
        assert_eq!(store.held(&m).unwrap().count(), m.chunks.len());
        let stats = seeder.node().stats();
        assert_eq!(stats.busy > 0, busy, "limit {limit}: {stats:?}");
        node.shutdown().await;
        server.shutdown().await.unwrap();
    }
}
