//! Finding peers over real libp2p on 127.0.0.1, port 0, mDNS off:
//! Kademlia provider records, the site's rendezvous key, and which peers
//! a device talks to at all.
//!
//! Discovery, not storage: every test runs on `MemStore` only.

// Helpers outside `#[test]` functions count as non-test code for clippy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_connected_only_to_a_neighbour_finds_the_origin_through_kademlia() {
    bounded(async {
        let b = Bundle::new(&payload(1 << 20, 8));
        let origin = spawn(P2pConfig::loopback().origin(), b.in_memory());
        let mut cfg = P2pConfig::loopback();
        cfg.bootstrap = vec![addr(&origin).await];
        let neighbour = spawn(cfg, Arc::new(MemStore::new()));
        until_connected(&neighbour, &origin).await;
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let mut cfg = P2pConfig::loopback();
        cfg.bootstrap = vec![addr(&neighbour).await];
        let device = spawn(cfg, sd.clone());
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        assert_eq!(report.bytes.origin, fetched(&report), "{report:?}");
        for n in [&origin, &neighbour, &device] {
            n.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_clients_find_each_other_through_the_origins_provider_records() {
    bounded(async {
        // The origin does not hold this bundle; only the holder does, and
        // neither client is in any routing table (clients never are), so
        // the holder's provider record must carry its address.
        let b = Bundle::new(&payload(1 << 20, 10));
        let origin = spawn(P2pConfig::loopback().origin(), Arc::new(MemStore::new()));
        let oa = addr(&origin).await;
        let holder = spawn(dht_client(&oa, None), b.in_memory());
        provide_via(&holder, &origin, b.id).await;
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let device = spawn(dht_client(&oa, None), sd.clone());
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        assert_eq!(report.bytes.origin, 0, "{report:?}");
        assert!(device
            .connected_peers()
            .await
            .unwrap()
            .contains(&holder.peer_id()));
        for n in [&origin, &holder, &device] {
            n.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finds_its_site_neighbour_though_the_release_key_lists_only_other_sites() {
    bounded(async {
        // The origin lists at most k = 20 providers per key, the first to
        // come. Far-site nodes fill the release key's list before the
        // near-site holder provides, so only the site rendezvous key can
        // lead the device to its neighbour, the one node holding the
        // bundle: the fetch completes only if it does.
        let b = Bundle::new(&payload(1 << 20, 11));
        let origin = spawn(P2pConfig::loopback().origin(), Arc::new(MemStore::new()));
        let oa = addr(&origin).await;
        let client = |site: &str| dht_client(&oa, Some(site));
        let empty: Arc<dyn Store> = Arc::new(MemStore::new());
        let mut far = Vec::new();
        // A few more than 20, in case the last AddProvider messages
        // overtake each other.
        for _ in 0..24 {
            let n = spawn(client("far"), empty.clone());
            provide_via(&n, &origin, b.id).await;
            far.push(n);
        }
        let neighbour = spawn(client("near"), b.in_memory());
        provide_via(&neighbour, &origin, b.id).await;
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let device = spawn(client("near"), sd.clone());
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        assert!(report.bytes.same_site > 0, "{report:?}");
        assert_eq!(
            report.bytes.other_peers + report.bytes.origin,
            0,
            "{report:?}"
        );
        for n in far.iter().chain([&origin, &neighbour, &device]) {
            n.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_pulls_nothing_over_the_wan_while_its_site_neighbour_is_still_being_found() {
    bounded(async {
        // The device is connected to the origin and to a far-site holder
        // from the start; its same-site neighbour, which holds the whole
        // bundle too, it can only find through the site key. Both WAN
        // sources answer first, so a device that used them as soon as
        // they answered took itself for the site's importer of every
        // chunk and pulled some over the WAN before its neighbour was
        // found (the start race that cost each site about one bundle per
        // wave at 1,000 devices).
        let b = Bundle::new(&payload(1 << 20, 12));
        let origin = spawn(P2pConfig::loopback().origin(), b.in_memory());
        let oa = addr(&origin).await;
        let client = |site: &str| dht_client(&oa, Some(site));
        let mut holders = Vec::new();
        for site in ["far", "near"] {
            let n = spawn(client(site), b.in_memory());
            provide_via(&n, &origin, b.id).await;
            holders.push(n);
        }
        // The device must be able to find its neighbour.
        listed(&oa, "near", holders[1].peer_id(), b.id).await;
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let device = spawn(client("near"), sd.clone());
        connect(&device, &holders[0]).await;
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        assert_eq!(
            report.bytes.other_peers + report.bytes.origin,
            0,
            "{report:?}"
        );
        assert_eq!(report.bytes.same_site, fetched(&report), "{report:?}");
        for n in holders.iter().chain([&origin, &device]) {
            n.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_dials_at_most_eight_providers_of_its_site() {
    bounded(async {
        // Twelve holders in the device's site, all listed under the site
        // key. Dialling every provider a lookup named connected each
        // device of a 50-device site to most of it, a handshake and a
        // `Have` poll every few seconds apiece (`cellular-1000`: about 52
        // connections a device, a quarter of the CPU in handshakes).
        let b = Bundle::new(&payload(1 << 20, 14));
        let origin = spawn(P2pConfig::loopback().origin(), Arc::new(MemStore::new()));
        let oa = addr(&origin).await;
        let mut holders = Vec::new();
        for _ in 0..12 {
            let n = spawn(dht_client(&oa, Some("near")), b.in_memory());
            provide_via(&n, &origin, b.id).await;
            holders.push(n);
        }
        for h in &holders {
            listed(&oa, "near", h.peer_id(), b.id).await;
        }
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let device = spawn(dht_client(&oa, Some("near")), sd.clone());
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        assert_eq!(report.bytes.same_site, fetched(&report), "{report:?}");
        let connected = device.connected_peers().await.unwrap();
        let site = holders
            .iter()
            .filter(|h| connected.contains(&h.peer_id()))
            .count();
        // `MAX_SITE_DIALS`; the holders never dial the device.
        assert!((1..=8).contains(&site), "connected to {site} of 12");
        for n in holders.iter().chain([&origin, &device]) {
            n.shutdown().await;
        }
    })
    .await
}

/// Waits until the origin lists `holder` as a provider of `id` for a
/// client of `site` (a node's own lookup would list itself at once).
async fn listed(oa: &Multiaddr, site: &str, holder: PeerId, id: ManifestId) {
    let probe = spawn(dht_client(oa, Some(site)), Arc::new(MemStore::new()));
    while !probe.providers(id).await.unwrap().contains(&holder) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_takes_the_manifest_from_its_site_and_never_looks_up_far_providers_its_site_can_replace(
) {
    bounded(async {
        // The release's key lists three far holders (and the origin holds
        // everything too); the device's own site has a holder. Dialling
        // the far ones made the whole fleet connect to the first providers
        // of a release, and asking whoever was connected for the manifest
        // fetched it over the WAN on most devices.
        let b = Bundle::new(&payload(1 << 20, 13));
        let origin = spawn(P2pConfig::loopback().origin(), b.in_memory());
        let oa = addr(&origin).await;
        let client = |site: &str| dht_client(&oa, Some(site));
        let mut far = Vec::new();
        for _ in 0..3 {
            let n = spawn(client("far"), b.in_memory());
            provide_via(&n, &origin, b.id).await;
            far.push(n);
        }
        let near = spawn(client("near"), b.in_memory());
        provide_via(&near, &origin, b.id).await;
        listed(&oa, "near", near.peer_id(), b.id).await;
        for f in &far {
            listed(&oa, "near", f.peer_id(), b.id).await;
        }
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let device = spawn(client("near"), sd.clone());
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        assert_eq!(report.bytes.same_site, fetched(&report), "{report:?}");
        assert_eq!(near.stats().manifests_served, 1);
        assert_eq!(origin.stats().manifests_served, 0);
        // Its site held everything, so the release's key (which names the
        // far holders) was never even asked.
        let stats = device.stats();
        assert!(stats.provider_lookups > 0, "{stats:?}");
        assert_eq!(stats.release_lookups, 0, "{stats:?}");
        let connected = device.connected_peers().await.unwrap();
        for f in &far {
            assert_eq!(f.stats().manifests_served, 0);
            assert!(!connected.contains(&f.peer_id()), "dialled a far provider");
        }
        for n in far.iter().chain([&origin, &near, &device]) {
            n.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_site_has_nothing_gets_the_manifest_from_a_far_provider() {
    bounded(async {
        // Only a far device holds the release (the origin does not): once
        // its site and everyone connected have been asked in vain, the
        // device dials the far provider it held back.
        let b = Bundle::new(&payload(1 << 20, 14));
        let origin = spawn(P2pConfig::loopback().origin(), Arc::new(MemStore::new()));
        let oa = addr(&origin).await;
        let far = spawn(dht_client(&oa, Some("far")), b.in_memory());
        provide_via(&far, &origin, b.id).await;
        listed(&oa, "near", far.peer_id(), b.id).await;
        let sd: Arc<dyn Store> = Arc::new(MemStore::new());
        let device = spawn(dht_client(&oa, Some("near")), sd.clone());
        let report = device.fetch(b.id, FetchOptions::default()).await.unwrap();
        assert_byte_identical(&*sd, &b);
        assert_eq!(report.bytes.other_peers, fetched(&report), "{report:?}");
        assert_eq!(far.stats().manifests_served, 1);
        assert!(device.stats().release_lookups > 0);
        for n in [&origin, &far, &device] {
            n.shutdown().await;
        }
    })
    .await
}
