//! Scheduler tests of what a site imports: the chunks this device claims
//! to its neighbours, and waiting for a neighbour's claim or one it
//! relays.

use std::time::{Duration, Instant};

use meshota_protocol::Bitfield;

use super::tests::{add_peer, cfg, drain, manifest, one, positions, requests};
use super::*;

/// How neighbour 1 tells device 0 of imports: its own claim, or a relay
/// of its own neighbours' claims.
#[derive(Clone, Copy)]
enum Claim {
    None,
    Own,
    Relayed,
}

fn claim(s: &mut Scheduler<u32>, peer: u32, how: Claim, n: usize, t: Instant) {
    let all = Bitfield::full(n);
    match how {
        Claim::None => {}
        Claim::Own => s.handle_peer_importing(peer, Some(&all), t),
        Claim::Relayed => s.handle_peer_relayed(peer, Some(&all), t),
    }
}

/// Device 0 with a far peer (2) holding everything, and a neighbour (1)
/// holding nothing yet that claims, as `how` says, that every chunk is
/// imported; without the claim device 0 would be the home of some and
/// pull them at once.
fn behind(how: Claim, seed: u64, t0: Instant) -> Scheduler<u32> {
    let m = manifest(6);
    let n = m.chunks.len();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(seed), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    s.handle_peer_fetching(1, true);
    claim(&mut s, 1, how, n, t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    // What a far peer says means nothing to our site.
    claim(&mut s, 2, Claim::Own, n, t0);
    claim(&mut s, 2, Claim::Relayed, n, t0);
    s
}

/// Lets device 0 pull all it will at `now`, a window at a time, each
/// request answered at once by the peer asked; what it pulled.
fn pull_all(s: &mut Scheduler<u32>, now: Instant) -> Bitfield {
    let mut pulled = Bitfield::new(manifest(6).chunks.len());
    loop {
        let got = requests(&drain(s, now));
        if got.is_empty() {
            return pulled;
        }
        for (peer, i) in got {
            s.handle_chunk_arrived(peer, i, 10, now);
            pulled.set(i);
        }
    }
}

fn behind_an_importer(seed: u64, t0: Instant) -> Scheduler<u32> {
    behind(Claim::Own, seed, t0)
}

#[test]
fn no_chunk_a_neighbour_imports_is_pulled_over_the_wan_until_its_claim_has_been_waited_out() {
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
    // Claimed for longer than `claim_patience`: the chunks are pulled.
    let lost = t0 + SchedulerConfig::default().claim_patience;
    s.handle_timeout(lost);
    assert!(!requests(&drain(&mut s, lost)).is_empty());
}

#[test]
fn a_neighbours_claim_ends_with_its_next_answer_or_when_it_leaves() {
    let t0 = Instant::now();
    let mut s = behind_an_importer(22, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    // Its next answer claims nothing: the line decides again, and a
    // patience in line has passed for the chunks it ranks first for.
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
fn what_this_device_awaits_or_was_just_refused_from_the_wan_is_claimed_and_nothing_else() {
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
    // Delivered: no longer awaited. Refused: retried, so still claimed
    // for a while, and no longer once that has passed unretried.
    assert_eq!(positions(&s.importing()), vec![busy]);
    let t1 = t0 + importing::REFUSED_CLAIM;
    s.handle_timeout(t1);
    assert_eq!(positions(&s.importing()), Vec::<usize>::new());
    // What a neighbour sends is no import.
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t1);
    assert!(!requests(&drain(&mut s, t1)).is_empty());
    assert_eq!(positions(&s.importing()), Vec::<usize>::new());
}

#[test]
fn a_claim_relayed_from_two_hops_away_is_waited_for_like_a_neighbours_own() {
    let t0 = Instant::now();
    // Without the relay this device is the home of some chunks.
    assert!(!requests(&drain(&mut behind(Claim::None, 24, t0), t0)).is_empty());
    let mut s = behind(Claim::Relayed, 24, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    let later = t0 + SchedulerConfig::default().site_patience * 3;
    s.handle_timeout(later);
    assert_eq!(requests(&drain(&mut s, later)), vec![]);
    // The relay's next answer relays nothing: the line decides again.
    s.handle_peer_relayed(1, None, later);
    assert!(!requests(&drain(&mut s, later)).is_empty());
}

#[test]
fn a_relay_carries_the_other_neighbours_own_claims_only() {
    let m = manifest(6);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(25), t0);
    s.set_local_peer(0);
    let one = |i: usize| one(n, i);
    for p in [1, 3] {
        add_peer(&mut s, p, PeerClass::SameSite, &Bitfield::new(n), t0);
    }
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    s.handle_peer_importing(1, Some(&one(0)), t0);
    s.handle_peer_importing(3, Some(&one(1)), t0);
    // Relays and far claims are not relayed again.
    s.handle_peer_relayed(1, Some(&one(2)), t0);
    s.handle_peer_importing(2, Some(&one(3)), t0);
    assert_eq!(
        positions(&s.relayed_for(&1)),
        vec![1],
        "the asker's own left out"
    );
    assert_eq!(positions(&s.relayed_for(&3)), vec![0]);
    assert_eq!(positions(&s.relayed_for(&9)), vec![0, 1]);
    // A neighbour that leaves takes its claims and relays with it.
    s.handle_peer_lost(1, t0);
    assert_eq!(positions(&s.relayed_for(&9)), vec![1]);
}

#[test]
fn a_claim_is_waited_for_from_when_it_is_first_heard_not_from_the_deferral() {
    let t0 = Instant::now();
    let mut s = behind(Claim::None, 26, t0);
    // Device 0 pulls the chunks it is the home of and defers the rest.
    let pulled = pull_all(&mut s, t0).count();
    assert!(pulled > 0);
    assert!(pulled < manifest(6).chunks.len(), "nothing deferred");
    // Long after the deferral, the neighbour claims every chunk.
    let cfg = SchedulerConfig::default();
    let heard = t0 + cfg.site_patience * 3;
    claim(&mut s, 1, Claim::Own, manifest(6).chunks.len(), heard);
    let past_deferral = t0 + cfg.claim_patience + Duration::from_secs(1);
    s.handle_timeout(past_deferral);
    assert_eq!(
        requests(&drain(&mut s, past_deferral)),
        vec![],
        "a claim heard later was waited for from the deferral"
    );
    let past_claim = heard + cfg.claim_patience;
    s.handle_timeout(past_claim);
    assert!(!requests(&drain(&mut s, past_claim)).is_empty());
}

#[test]
fn a_claim_heard_again_after_a_break_is_waited_for_afresh() {
    let t0 = Instant::now();
    let mut s = behind_an_importer(27, t0);
    let cfg = SchedulerConfig::default();
    let n = manifest(6).chunks.len();
    // The claimant's answer without the claim, then with it again: a
    // claimant that finished one request and asked again.
    let t1 = t0 + cfg.claim_patience / 2;
    s.handle_peer_importing(1, None, t1);
    claim(&mut s, 1, Claim::Own, n, t1);
    let t2 = t0 + cfg.claim_patience + Duration::from_secs(1);
    s.handle_timeout(t2);
    assert_eq!(requests(&drain(&mut s, t2)), vec![]);
    let t3 = t1 + cfg.claim_patience;
    s.handle_timeout(t3);
    assert!(!requests(&drain(&mut s, t3)).is_empty());
}

#[test]
fn a_chunk_held_back_for_the_origin_waits_its_place_in_the_sites_line_afresh() {
    let m = manifest(6);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(29), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    s.handle_peer_fetching(1, true);
    add_peer(&mut s, 9, PeerClass::Origin, &Bitfield::full(n), t0);
    // The origin offers everything from the start: device 0 pulls what
    // it is the fleet's home of and holds back the rest.
    let pulled = pull_all(&mut s, t0);
    assert!(
        pulled.count() > 0 && pulled.count() < n,
        "nothing held back"
    );
    // Long after, the origin withholds the rest and a peer of another
    // site comes to hold it all: the site's line starts now, not at the
    // hold-back for the origin. The neighbour still stands in line (it
    // has just gained what device 0 pulled).
    let later = t0 + Duration::from_secs(100);
    s.handle_peer_have(1, &pulled, later);
    s.handle_peer_have(9, &Bitfield::new(n), later);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), later);
    assert_eq!(requests(&drain(&mut s, later)), vec![]);
    let turn = later + SchedulerConfig::default().site_patience;
    s.handle_timeout(turn);
    assert!(!requests(&drain(&mut s, turn)).is_empty());
}
