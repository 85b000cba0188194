//! Scheduler tests of what a site imports: the chunks this device claims
//! to its neighbours, and waiting for a neighbour's claim.

use std::time::{Duration, Instant};

use meshota_protocol::Bitfield;

use super::tests::{add_peer, cfg, drain, manifest, requests};
use super::*;

fn positions(b: &Bitfield) -> Vec<usize> {
    (0..b.len()).filter(|&i| b.get(i)).collect()
}

/// Device 0 with a far peer (2) holding everything, and a neighbour (1)
/// holding nothing yet that claims to import every chunk; without its
/// claim device 0 would be the home of some and pull them at once.
fn behind_an_importer(seed: u64, t0: Instant) -> Scheduler<u32> {
    let m = manifest(6);
    let n = m.chunks.len();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(seed), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    s.handle_peer_fetching(1, true);
    s.handle_peer_importing(1, Some(&Bitfield::full(n)), t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    // What a far peer says it imports means nothing to our site.
    s.handle_peer_importing(2, Some(&Bitfield::full(n)), t0);
    s
}

#[test]
fn no_chunk_a_neighbour_imports_is_pulled_over_the_wan_until_the_transport_would_give_up() {
    let t0 = Instant::now();
    let mut s = behind_an_importer(21, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    let patience = SchedulerConfig::default().site_patience;
    let later = t0 + patience * 3;
    s.handle_timeout(later);
    assert_eq!(
        requests(&drain(&mut s, later)),
        vec![],
        "stepped in on a neighbour still importing"
    );
    // Its transport would have given up by now: the chunks are pulled.
    let lost = t0 + SchedulerConfig::default().answer_timeout;
    s.handle_timeout(lost);
    assert!(!requests(&drain(&mut s, lost)).is_empty());
}

#[test]
fn a_neighbours_claim_ends_with_its_next_answer_or_when_it_leaves() {
    let t0 = Instant::now();
    let mut s = behind_an_importer(22, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    // Its next answer claims nothing: the line decides again. The
    // neighbour holds nothing and gained nothing within the patience, so
    // it is not waited for.
    let t1 = t0 + SchedulerConfig::default().site_patience;
    let n = manifest(6).chunks.len();
    s.handle_peer_have(1, &Bitfield::new(n), t1);
    s.handle_peer_importing(1, None, t1);
    assert!(!requests(&drain(&mut s, t1)).is_empty());

    let mut s = behind_an_importer(22, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    s.handle_peer_lost(1, t0);
    assert!(!requests(&drain(&mut s, t0)).is_empty());
}

#[test]
fn what_this_device_awaits_from_the_wan_is_claimed_and_nothing_else() {
    let m = manifest(6);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(23);
    c.window_per_peer = 2;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    s.set_local_peer(0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    let asked = requests(&drain(&mut s, t0));
    assert_eq!(asked.len(), 2);
    let mut claimed: Vec<usize> = asked.iter().map(|&(_, i)| i).collect();
    claimed.sort_unstable();
    assert_eq!(positions(&s.importing()), claimed);
    // Delivered or refused: no longer awaited.
    let (_, got) = asked[0];
    let (_, busy) = asked[1];
    s.handle_chunk_arrived(2, got, 10, t0);
    s.handle_chunk_failed(2, busy, Failure::Busy, t0);
    assert_eq!(positions(&s.importing()), Vec::<usize>::new());
    // What a neighbour sends is no import.
    let t1 = t0 + Duration::from_secs(1);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t1);
    assert!(!requests(&drain(&mut s, t1)).is_empty());
    assert_eq!(positions(&s.importing()), Vec::<usize>::new());
}
