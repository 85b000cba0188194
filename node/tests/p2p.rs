//! Peer-to-peer transfer over real libp2p on 127.0.0.1, port 0, mDNS off.
//!
//! Every storage + transfer scenario is one generic body run against both
//! `MemStore` and `SledStore` (in a tempdir).

// Helpers outside `#[test]` functions count as non-test code for clippy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

macro_rules! both_stores {
    ($($name:ident => $body:ident;)*) => {
        mod mem_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::bounded(super::$body::<super::Mem>()).await
                }
            )*
        }
        mod sled_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::bounded(super::$body::<super::Sled>()).await
                }
            )*
        }
    };
}

both_stores! {
    two_peers_transfer_a_multi_mib_bundle_byte_identical => two_peers;
    ten_peers_all_fetch_a_bundle_byte_identical => ten_peers;
    every_node_completes_and_the_origin_uploads_at_most_twice_the_bundle => origin_bound;
    a_peer_serving_corrupted_chunks_is_banned_and_the_download_still_completes => malicious;
    a_restarted_node_resumes_without_refetching_verified_chunks => resume;
    a_second_release_transfers_only_the_changed_chunks => delta;
    the_upload_limit_caps_the_achieved_rate => upload_limit;
}

// ------------------------------------------------------------- scenarios

async fn two_peers<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bundle::new(&payload(3 << 20, 1));
    let sa = B::open(dir.path(), "a");
    b.seed(&*sa);
    let a = spawn(P2pConfig::loopback(), sa);
    let sb = B::open(dir.path(), "b");
    let n = spawn(P2pConfig::loopback(), sb.clone());
    connect(&n, &a).await;
    let report = n.fetch(b.id, FetchOptions::default()).await.unwrap();
    assert_byte_identical(&*sb, &b);
    assert_eq!(report.bytes.local, 0);
    assert!(fetched(&report) > 0);
    assert_eq!(report.bans, 0);
    assert_eq!(a.stats().uploaded_bytes, n.stats().downloaded_bytes);
    a.shutdown().await;
    n.shutdown().await;
}

async fn ten_peers<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bundle::new(&payload(2 << 20, 2));
    let s0 = B::open(dir.path(), "seed");
    b.seed(&*s0);
    let mut nodes = vec![spawn(P2pConfig::loopback(), s0)];
    let mut stores = Vec::new();
    for i in 1..10 {
        let s = B::open(dir.path(), &format!("n{i}"));
        let n = spawn(P2pConfig::loopback(), s.clone());
        // Each node dials the seed and up to three earlier nodes.
        for prev in nodes.iter().rev().take(3) {
            connect(&n, prev).await;
        }
        if i > 3 {
            connect(&n, &nodes[0]).await;
        }
        nodes.push(n);
        stores.push(s);
    }
    let fetches = nodes[1..]
        .iter()
        .map(|n| n.fetch(b.id, FetchOptions::default()));
    for r in futures::future::join_all(fetches).await {
        r.unwrap();
    }
    for s in &stores {
        assert_byte_identical(&**s, &b);
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

async fn origin_bound<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bundle::new(&payload(2 << 20, 3));
    let so = B::open(dir.path(), "origin");
    b.seed(&*so);
    let origin = spawn(P2pConfig::loopback().origin(), so);
    let mut nodes: Vec<NodeHandle> = Vec::new();
    let mut stores = Vec::new();
    for i in 0..12 {
        let s = B::open(dir.path(), &format!("n{i}"));
        let mut cfg = P2pConfig::loopback();
        cfg.bootstrap = vec![addr(&origin).await];
        let n = spawn(cfg, s.clone());
        connect(&n, &origin).await;
        for prev in nodes.iter().rev().take(4) {
            connect(&n, prev).await;
        }
        nodes.push(n);
        stores.push(s);
    }
    let fetches = nodes.iter().map(|n| n.fetch(b.id, FetchOptions::default()));
    for r in futures::future::join_all(fetches).await {
        r.unwrap();
    }
    for s in &stores {
        assert_byte_identical(&**s, &b);
    }
    let up = origin.stats().uploaded_bytes;
    eprintln!(
        "origin uploaded {up} bytes for a {}-byte bundle ({:.2}x)",
        b.stored_size(),
        up as f64 / b.stored_size() as f64
    );
    assert!(
        up <= 2 * b.stored_size(),
        "origin uploaded {up} bytes for a {}-byte bundle",
        b.stored_size()
    );
    // The origin never fetches.
    assert!(origin.fetch(b.id, FetchOptions::default()).await.is_err());
    origin.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}

async fn malicious<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bundle::new(&payload(2 << 20, 4));
    let so = B::open(dir.path(), "origin");
    b.seed(&*so);
    let origin = spawn(P2pConfig::loopback().origin(), so);
    let sm = B::open(dir.path(), "evil");
    b.seed(&*sm);
    let mut evil_cfg = P2pConfig::loopback();
    evil_cfg.corrupt_uploads = true;
    let evil = spawn(evil_cfg, sm);
    let sf = B::open(dir.path(), "victim");
    let victim = spawn(P2pConfig::loopback(), sf.clone());
    let mut events = victim.events();
    connect(&victim, &evil).await;
    connect(&victim, &origin).await;
    let report = victim.fetch(b.id, FetchOptions::default()).await.unwrap();
    assert_byte_identical(&*sf, &b);
    let mut banned = false;
    while let Ok(ev) = events.try_recv() {
        if let NodeEvent::PeerBanned { peer, .. } = ev {
            assert_eq!(peer, evil.peer_id(), "only the corrupting peer is banned");
            banned = true;
        }
    }
    assert!(banned, "the corrupting peer was not banned");
    assert!(report.bans >= 1, "{report:?}");
    // It stays out.
    assert!(!victim
        .connected_peers()
        .await
        .unwrap()
        .contains(&evil.peer_id()));
    for n in [&origin, &evil, &victim] {
        n.shutdown().await;
    }
}

async fn resume<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bundle::new(&payload(3 << 20, 5));
    let so = B::open(dir.path(), "origin");
    b.seed(&*so);
    // A chunk served just before the stop never reached the store; the
    // origin withholds it for its dedup window, so keep that short here.
    let mut origin_cfg = P2pConfig::loopback().origin();
    origin_cfg.origin_dedup_window = Duration::from_secs(1);
    let origin = spawn(origin_cfg, so);
    let origin_addr = addr(&origin).await;

    // First run: slowed down, stopped part-way.
    let mut slow = P2pConfig::loopback();
    slow.download_limit_bps = Some(1 << 20);
    let s1 = B::open(dir.path(), "device");
    let n1 = spawn(slow, s1.clone());
    n1.dial(origin_addr.clone()).await.unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(FetchProgress::default());
    let opts = FetchOptions {
        timeout: None,
        progress: Some(tx),
    };
    let h = n1.clone();
    let id = b.id;
    let first = tokio::spawn(async move { h.fetch(id, opts).await });
    let total = b.manifest.chunks.len();
    rx.wait_for(|p| p.held >= total / 3).await.unwrap();
    n1.shutdown().await;
    assert!(first.await.unwrap().is_err(), "the first run was stopped");
    let held_before = s1.held(&b.manifest).unwrap();
    let before = held_before.count();
    assert!(before >= total / 3 && before < total, "{before} of {total}");
    let held_raw: u64 = b
        .manifest
        .unique_chunks()
        .iter()
        .filter(|(id, _)| s1.has_chunk(id).unwrap())
        .map(|(_, len)| u64::from(*len))
        .sum();
    drop(n1);

    // Second run: same store, reopened.
    let s2 = B::reopen(dir.path(), "device", s1);
    let n2 = spawn(P2pConfig::loopback(), s2.clone());
    n2.dial(origin_addr).await.unwrap();
    let report = n2.fetch(b.id, FetchOptions::default()).await.unwrap();
    assert_byte_identical(&*s2, &b);
    assert_eq!(report.bytes.local, held_raw, "{report:?}");
    let requests = n2.stats().chunk_requests_sent as usize;
    assert!(
        requests <= total - before + report.retries,
        "{requests} requests for {} missing chunks",
        total - before
    );
    origin.shutdown().await;
    n2.shutdown().await;
}

async fn delta<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = payload(3 << 20, 6);
    let mut v2 = v1.clone();
    v2.splice(1 << 20..1 << 20, *b"a change in the middle of release two");
    v2[2 << 20] ^= 0xff;
    let b1 = Bundle::new(&v1);
    let b2 = Bundle::new(&v2);
    let so = B::open(dir.path(), "origin");
    b1.seed(&*so);
    b2.seed(&*so);
    let origin = spawn(P2pConfig::loopback().origin(), so);
    let sd = B::open(dir.path(), "device");
    let dev = spawn(P2pConfig::loopback(), sd.clone());
    connect(&dev, &origin).await;
    let r1 = dev.fetch(b1.id, FetchOptions::default()).await.unwrap();
    assert_eq!(r1.bytes.local, 0);
    let r2 = dev.fetch(b2.id, FetchOptions::default()).await.unwrap();
    assert_byte_identical(&*sd, &b2);
    let old: std::collections::HashSet<_> = b1.manifest.chunks.iter().map(|c| c.id).collect();
    let changed_raw: u64 = b2
        .manifest
        .unique_chunks()
        .iter()
        .filter(|(id, _)| !old.contains(id))
        .map(|(_, len)| u64::from(*len))
        .sum();
    let unique_raw: u64 = b2
        .manifest
        .unique_chunks()
        .values()
        .map(|l| u64::from(*l))
        .sum();
    assert!(changed_raw < b2.raw_size() / 5, "too many changed chunks");
    assert_eq!(r2.bytes.local, unique_raw - changed_raw, "{r2:?}");
    assert!(
        fetched(&r2) <= changed_raw + 1024,
        "fetched {} for {changed_raw} changed bytes",
        fetched(&r2)
    );
    origin.shutdown().await;
    dev.shutdown().await;
}

async fn upload_limit<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let b = Bundle::new(&payload(2 << 20, 7));
    let limit = 1u64 << 20;
    let sa = B::open(dir.path(), "seed");
    b.seed(&*sa);
    let mut cfg = P2pConfig::loopback();
    cfg.upload_limit_bps = Some(limit);
    let a = spawn(cfg, sa);
    let n = spawn(P2pConfig::loopback(), B::open(dir.path(), "fetcher"));
    connect(&n, &a).await;
    let t0 = Instant::now();
    n.fetch(b.id, FetchOptions::default()).await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let rate = b.stored_size() as f64 / secs;
    assert!(
        rate <= 2.0 * limit as f64,
        "achieved {rate:.0} B/s against a {limit} B/s limit"
    );
    a.shutdown().await;
    n.shutdown().await;
}

/// Slowness, not storage: runs on `MemStore` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_peer_is_dropped_and_the_download_completes() {
    bounded(async {
        let b = Bundle::new(&payload(1 << 20, 9));
        let origin = spawn(P2pConfig::loopback().origin(), b.in_memory());
        let st = b.in_memory();
        let mut slow = P2pConfig::loopback();
        slow.upload_limit_bps = Some(1024);
        // It takes every request and trickles, as a hostile peer or an
        // old build would, instead of answering `Busy` past a short queue.
        slow.upload_queue_max = Duration::MAX;
        let trickler = spawn(slow, st);
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let mut cfg = P2pConfig::loopback();
        cfg.scheduler.request_timeout = Duration::from_secs(2);
        let device = spawn(cfg, sd.clone());
        let mut events = device.events();
        connect(&device, &trickler).await;
        connect(&device, &origin).await;
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        let mut dropped = false;
        while let Ok(ev) = events.try_recv() {
            match ev {
                NodeEvent::PeerDropped { peer, .. } => {
                    assert_eq!(peer, trickler.peer_id());
                    dropped = true;
                }
                NodeEvent::PeerBanned { peer, .. } => panic!("{peer} banned for being slow"),
                _ => {}
            }
        }
        assert!(dropped, "the trickling peer was not dropped: {report:?}");
        assert!(report.drops >= 1);
        for n in [&origin, &trickler, &device] {
            n.shutdown().await;
        }
    })
    .await
}

/// Policy, not storage: runs on `MemStore` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_uploader_answers_busy_rather_than_queue_requests_for_long() {
    bounded(async {
        let b = Bundle::new(&payload(512 << 10, 12));
        let origin = spawn(P2pConfig::loopback().origin(), b.in_memory());
        // About 0.25 s a (16 KiB) chunk: the default 1.5 s queue holds
        // about six, and a device asking for sixteen at once hears `Busy`
        // for the rest. Without the queue limit the slots (32) take all.
        let capped = |queue: Duration| {
            let st = b.in_memory();
            let mut cfg = P2pConfig::loopback();
            cfg.upload_limit_bps = Some(64 << 10);
            cfg.upload_queue_max = queue;
            spawn(cfg, st)
        };
        for (queue, busy) in [
            (P2pConfig::default().upload_queue_max, true),
            (Duration::MAX, false),
        ] {
            let seed = capped(queue);
            let sd: Arc<dyn Store> = Arc::new(MemStore::new());
            let mut cfg = P2pConfig::loopback();
            cfg.scheduler.window_per_peer = 16;
            let device = spawn(cfg, sd.clone());
            connect(&device, &seed).await;
            connect(&device, &origin).await;
            device.fetch(b.id, FetchOptions::default()).await.unwrap();
            assert_byte_identical(&*sd, &b);
            let stats = seed.stats();
            assert_eq!(stats.busy > 0, busy, "queue {queue:?}: {stats:?}");
            assert!(stats.uploaded_chunks > 0, "queue {queue:?}: {stats:?}");
            seed.shutdown().await;
            device.shutdown().await;
        }
        origin.shutdown().await;
    })
    .await
}

/// Policy, not storage: runs on `MemStore` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_seed_serves_nothing() {
    bounded(async {
        let b = Bundle::new(&payload(256 << 10, 10));
        let sa = b.in_memory();
        let mut metered = P2pConfig::loopback();
        metered.seed = false;
        let a = spawn(metered, sa);
        let n = spawn(P2pConfig::loopback(), Arc::new(MemStore::new()));
        connect(&n, &a).await;
        let opts = FetchOptions {
            timeout: Some(Duration::from_millis(1500)),
            progress: None,
        };
        let err = n.fetch(b.id, opts).await.unwrap_err();
        assert!(
            matches!(err, meshota_node::p2p::FetchError::Timeout { .. }),
            "{err}"
        );
        assert_eq!(a.stats().uploaded_bytes, 0);
        assert!(a.stats().not_found > 0);
        a.shutdown().await;
        n.shutdown().await;
    })
    .await
}

#[test]
fn spawning_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let r = Node::spawn(
        P2pConfig::loopback(),
        Arc::new(MemStore::new()),
        Keypair::generate_ed25519(),
    );
    assert!(matches!(r, Err(meshota_node::p2p::P2pError::NoRuntime)));
}

/// Policy, not storage: runs on `MemStore` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_offers_again_at_once_a_chunk_whose_upload_failed() {
    bounded(async {
        let b = Bundle::new(&payload(256 << 10, 13));
        // A slow origin that withholds each chunk it serves for longer
        // than the test runs: its answers queue up half a second apart.
        let mut ocfg = P2pConfig::loopback().origin();
        ocfg.origin_dedup_window = Duration::from_secs(3600);
        ocfg.upload_limit_bps = Some(32 << 10);
        ocfg.upload_queue_max = Duration::MAX;
        let origin = spawn(ocfg, b.in_memory());
        // A device goes away once its first chunk is in, with the
        // origin's answers to its other requests still queued there.
        let sa: Arc<dyn Store> = Arc::new(MemStore::new());
        let a = spawn(P2pConfig::loopback(), sa.clone());
        connect(&a, &origin).await;
        let (tx, mut rx) = tokio::sync::watch::channel(FetchProgress::default());
        let opts = FetchOptions {
            timeout: None,
            progress: Some(tx),
        };
        let (h, id) = (a.clone(), b.id);
        let first = tokio::spawn(async move { h.fetch(id, opts).await });
        rx.wait_for(|p| p.held >= 1).await.unwrap();
        a.shutdown().await;
        assert!(
            first.await.unwrap().is_err(),
            "the first device was stopped"
        );
        let held = sa.held(&b.manifest).unwrap().count();
        assert!(held < b.manifest.chunks.len(), "{held} held");
        // Another device gets every chunk: those the first one stored
        // from its store (served by a new node), the rest from the
        // origin, which no longer withholds those whose upload failed.
        let a2 = spawn(P2pConfig::loopback(), sa);
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let d = spawn(P2pConfig::loopback(), sd.clone());
        connect(&d, &origin).await;
        connect(&d, &a2).await;
        let patient = FetchOptions {
            timeout: Some(Duration::from_secs(30)),
            progress: None,
        };
        let report = d.fetch(b.id, patient).await;
        let stats = origin.stats();
        assert!(report.is_ok(), "{report:?}, origin {stats:?}");
        assert_byte_identical(&*sd, &b);
        assert!(stats.released > 0, "{stats:?}");
        for n in [&origin, &a2, &d] {
            n.shutdown().await;
        }
    })
    .await
}
