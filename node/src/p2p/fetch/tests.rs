//! The fetch driver against a recording [`Net`]: that it carries out
//! what discovery decides (dials, and which far peers are polled).
//! The rules themselves are tested in `sched::tests_discovery`.
// Test scaffolding may unwrap.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use meshota_protocol::{Bitfield, Manifest, ManifestId, PeerResponse, SiteId};
use tokio::sync::{mpsc, oneshot};

use super::{Fetches, Net, Phase};
use crate::sched::discovery::MAX_SITE_DIALS;
use crate::sched::{SchedulerConfig, Stage};
use crate::store::{MemStore, Store};

/// A [`Net`] that records dials (and the addresses of those given
/// some); nothing else is used.
#[derive(Default)]
struct Dials(Vec<PeerId>, Vec<Vec<libp2p::Multiaddr>>);

impl Net for Dials {
    fn send(
        &mut self,
        _: PeerId,
        _: meshota_protocol::PeerRequest,
    ) -> libp2p::request_response::OutboundRequestId {
        unreachable!("no peer is connected in these tests, so none is asked")
    }
    fn ban(&mut self, _: PeerId, _: String) {}
    fn find_providers(&mut self, _: ManifestId, _: bool, _: bool) -> bool {
        true
    }
    fn dial(&mut self, peer: PeerId) {
        self.0.push(peer);
    }
    fn dial_at(&mut self, peer: PeerId, addrs: Vec<libp2p::Multiaddr>) {
        self.0.push(peer);
        self.1.push(addrs);
    }
    fn provide(&mut self, _: ManifestId) -> bool {
        false
    }
    fn remember(&mut self, _: ManifestId, _: Arc<meshota_protocol::Manifest>) {}
    fn event(&mut self, _: crate::p2p::NodeEvent) {}
}

/// The fetches of a device of site "home" over `store`.
fn fetches(local: PeerId, store: Arc<dyn Store>, now: Instant) -> Fetches {
    Fetches::new(
        local,
        store,
        Some(SiteId::new("home").unwrap()),
        SchedulerConfig::default(),
        None,
        Arc::default(),
        mpsc::unbounded_channel().0,
        now,
    )
}

fn peers(n: usize) -> Vec<PeerId> {
    (0..n).map(|_| PeerId::random()).collect()
}

/// A device of site "home" downloading a stored six-chunk manifest.
fn downloading(now: Instant) -> (Fetches, Manifest, ManifestId, Dials) {
    let store = Arc::new(MemStore::new());
    let m = crate::sched::tests::manifest(6);
    let encoded = m.encode().unwrap();
    let id = ManifestId::digest(&encoded);
    store.put_manifest(&id, &encoded).unwrap();
    let mut f = fetches(PeerId::random(), store, now);
    let mut net = Dials::default();
    f.start(id, Default::default(), oneshot::channel().0, now, &mut net);
    (f, m, id, net)
}

/// A `Have` answer holding all of `m`, from an origin or a fetching
/// device of `site`.
fn have_all(m: &Manifest, origin: bool, site: Option<&str>) -> PeerResponse {
    PeerResponse::Have {
        bitfield: Bitfield::full(m.chunks.len()),
        site: site.map(|s| SiteId::new(s).unwrap()),
        origin,
        fetching: !origin,
        importing: None,
        relayed: None,
        roster: Vec::new(),
        site_holds: None,
        site_holds_relayed: None,
    }
}

#[test]
fn the_driver_dials_what_discovery_chooses_and_no_more() {
    let now = Instant::now();
    let local = PeerId::random();
    let mut f = fetches(local, Arc::new(MemStore::new()), now);
    let id = ManifestId::digest(b"release");
    let mut net = Dials::default();
    f.start(id, Default::default(), oneshot::channel().0, now, &mut net);
    f.providers_found(id, peers(MAX_SITE_DIALS + 4), true, now, &mut net);
    assert_eq!(net.0.len(), MAX_SITE_DIALS);
    // Once those are up, more providers of the site lead to no dial.
    f.connected.extend(net.0.iter().copied());
    f.providers_found(id, peers(6), true, now, &mut net);
    assert_eq!(net.0.len(), MAX_SITE_DIALS, "dialled past the cap");
}

#[test]
fn the_driver_ignores_have_answers_of_far_peers_that_dialled_in() {
    let now = Instant::now();
    let (mut f, m, id, mut net) = downloading(now);
    let have = |site: &str| have_all(&m, false, Some(site));
    let [far_in, far_out, near_in] = [(); 3].map(|_| PeerId::random());
    let fetch = f.fetches.get_mut(&id).unwrap();
    let wan = Stage::Downloading {
        sources: true,
        grace: false,
        wan_turn: true,
    };
    fetch
        .disc
        .handle_providers([far_out], false, wan, |_| false, now);
    let Phase::Download(dl) = &mut fetch.phase else {
        panic!("the stored manifest starts the download")
    };
    dl.grace = None;
    f.on_have(id, far_in, have("far"), now, &mut net);
    f.on_have(id, far_out, have("far"), now, &mut net);
    f.on_have(id, near_in, have("home"), now, &mut net);
    let Phase::Download(dl) = &f.fetches[&id].phase else {
        panic!("still downloading")
    };
    assert!(dl.known.contains(&far_out) && dl.known.contains(&near_in));
    assert!(
        !dl.known.contains(&far_in),
        "polled a far peer that dialled in"
    );
}

#[test]
fn a_holder_the_origin_names_is_dialled_at_its_addresses_once_and_only_on_the_origin_s_word() {
    let now = Instant::now();
    let (mut f, m, id, mut net) = downloading(now);
    let have = |origin: bool, site: Option<&str>| have_all(&m, origin, site);
    let [origin, liar, holder, other] = [(); 4].map(|_| PeerId::random());
    let Phase::Download(dl) = &mut f.fetches.get_mut(&id).unwrap().phase else {
        panic!("the stored manifest starts the download")
    };
    dl.grace = None;
    f.on_have(id, origin, have(true, None), now, &mut net);
    // A device of another site that says it is no origin.
    f.on_have(id, liar, have(false, Some("far")), now, &mut net);
    let addr: libp2p::Multiaddr = "/ip4/10.1.2.3/tcp/4001".parse().unwrap();
    let named = |p: PeerId| PeerResponse::Elsewhere {
        holder: meshota_protocol::PeerHint::new(p.to_bytes(), [addr.to_vec()]),
    };
    let c = &m.chunks[0];
    f.on_chunk(id, liar, 0, c.id, c.len, named(other), now, &mut net);
    assert!(
        net.0.is_empty(),
        "followed a name from a peer that is no origin"
    );
    f.on_chunk(id, origin, 0, c.id, c.len, named(holder), now, &mut net);
    assert_eq!(net.0, vec![holder]);
    assert_eq!(net.1, vec![vec![addr.clone()]]);
    // Named again for another chunk: already dialled.
    let c = &m.chunks[1];
    f.on_chunk(id, origin, 1, c.id, c.len, named(holder), now, &mut net);
    assert_eq!(net.0, vec![holder], "dialled the same holder twice");
    assert_eq!(f.counters.snapshot().hints_followed, 1);
}
