//! Scheduler tests of what the site is heard to hold: word passed on by
//! neighbours keeps a chunk off the WAN while this device still gains
//! chunks, and only then.

use std::time::{Duration, Instant};

use meshota_protocol::Bitfield;

use super::tests::{add_peer, cfg, drain, manifest, one, positions, requests};
use super::*;

/// Device 0, the home of every chunk (no local peer named), with a far
/// peer (2) holding everything and a neighbour (1) holding nothing that
/// says, when `word`, that the site holds every chunk.
fn beside(word: bool, t0: Instant) -> Scheduler<u32> {
    let m = manifest(6);
    let n = m.chunks.len();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(31), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    if word {
        s.handle_peer_site_holds(1, Some(&Bitfield::full(n)), None, t0);
    }
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    s
}

#[test]
fn a_chunk_the_site_is_heard_to_hold_is_not_pulled_over_the_wan() {
    let t0 = Instant::now();
    // Without the word every chunk is pulled from the far peer at once.
    assert!(!requests(&drain(&mut beside(false, t0), t0)).is_empty());
    let mut s = beside(true, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    assert!(!s.wan_turn(), "would dial and poll far peers for nothing");
    let later = t0 + SchedulerConfig::default().site_hold_patience - Duration::from_secs(1);
    s.handle_timeout(later);
    assert_eq!(requests(&drain(&mut s, later)), vec![]);
}

#[test]
fn a_device_that_gains_nothing_for_the_patience_pulls_what_its_site_is_heard_to_hold() {
    let t0 = Instant::now();
    let mut s = beside(true, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    let starving = t0 + SchedulerConfig::default().site_hold_patience;
    assert!(
        s.poll_timeout().is_some_and(|t| t <= starving),
        "no wake-up by the time it starves: {:?}",
        s.poll_timeout()
    );
    s.handle_timeout(starving);
    let asked = requests(&drain(&mut s, starving));
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|&(p, _)| p == 2));
}

#[test]
fn a_chunk_gained_from_the_site_restarts_the_patience() {
    let m = manifest(6);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = beside(true, t0);
    let patience = SchedulerConfig::default().site_hold_patience;
    // Just before it would starve, the neighbour gains and passes on a
    // chunk: the site's word holds for another patience.
    let t1 = t0 + patience - Duration::from_secs(1);
    s.handle_peer_have(1, &one(n, 0), t1);
    assert_eq!(requests(&drain(&mut s, t1)), vec![(1, 0)]);
    s.handle_chunk_arrived(1, 0, 10, t1);
    let t2 = t0 + patience + Duration::from_secs(1);
    s.handle_timeout(t2);
    assert_eq!(requests(&drain(&mut s, t2)), vec![]);
    let t3 = t1 + patience;
    s.handle_timeout(t3);
    assert!(!requests(&drain(&mut s, t3)).is_empty());
}

#[test]
fn first_hand_word_is_what_neighbours_hold_and_relayed_word_is_theirs() {
    let m = manifest(6);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(32), t0);
    let one = |i: usize| one(n, i);
    assert_eq!(positions(&s.site_holds()), Vec::<usize>::new());
    add_peer(&mut s, 1, PeerClass::SameSite, &one(0), t0);
    s.handle_peer_site_holds(1, Some(&one(1)), Some(&one(5)), t0);
    add_peer(&mut s, 4, PeerClass::SameSite, &Bitfield::new(n), t0);
    // A far peer's word and bitfield say nothing of this site.
    add_peer(&mut s, 2, PeerClass::OtherSite, &one(2), t0);
    s.handle_peer_site_holds(2, Some(&one(3)), None, t0);
    // Word with a field of the wrong length is dropped whole.
    s.handle_peer_site_holds(1, Some(&Bitfield::full(n + 1)), None, t0);
    s.handle_peer_site_holds(1, Some(&one(1)), Some(&Bitfield::full(n + 1)), t0);
    add_peer(&mut s, 3, PeerClass::Origin, &one(4), t0);
    assert!(requests(&drain(&mut s, t0)).contains(&(1, 0)));
    s.handle_chunk_arrived(1, 0, 10, t0);
    // First-hand: what it holds and its neighbours hold; never what it
    // heard (1 and 5), which would go round circles of neighbours.
    assert_eq!(positions(&s.site_holds()), vec![0]);
    // Relayed: neighbour 1's first-hand word, to anyone but 1; never its
    // relayed word (5).
    assert_eq!(positions(&s.site_holds_relayed_for(&4)), vec![1]);
    assert_eq!(
        positions(&s.site_holds_relayed_for(&1)),
        Vec::<usize>::new()
    );
    // Both layers keep chunks off the WAN: only the origin's chunk 4 and
    // the far peer's 2 are asked for beyond the site.
    let far: Vec<usize> = requests(&drain(&mut s, t0))
        .into_iter()
        .filter(|&(p, _)| p == 2 || p == 3)
        .map(|(_, i)| i)
        .collect();
    assert!(far.iter().all(|i| *i == 2 || *i == 4), "{far:?}");
}

/// Two honest devices (0 and 1) of one site, each with a far peer (2)
/// holding everything; device 0 also knows a same-site holder (9) of
/// every chunk. One round of `Have` answers between 0 and 1 each way.
fn exchange(a: &mut Scheduler<u32>, b: &mut Scheduler<u32>, now: Instant) {
    let (ha, ra) = (a.site_holds(), a.site_holds_relayed_for(&1));
    let (hb, rb) = (b.site_holds(), b.site_holds_relayed_for(&0));
    b.handle_peer_site_holds(0, Some(&ha), Some(&ra), now);
    a.handle_peer_site_holds(1, Some(&hb), Some(&rb), now);
}

#[test]
fn word_of_a_banned_holder_does_not_live_on_between_two_neighbours() {
    let m = manifest(6);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut a = Scheduler::new(&m, &Bitfield::new(n), cfg(33), t0);
    let mut b = Scheduler::new(&m, &Bitfield::new(n), cfg(34), t0);
    add_peer(&mut a, 9, PeerClass::SameSite, &Bitfield::full(n), t0);
    add_peer(&mut a, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    add_peer(&mut b, 0, PeerClass::SameSite, &Bitfield::new(n), t0);
    for s in [&mut a, &mut b] {
        add_peer(s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    }
    // Word of 9 reaches b, and comes back to a, for some rounds.
    for _ in 0..3 {
        exchange(&mut a, &mut b, t0);
    }
    assert_eq!(requests(&drain(&mut b, t0)), vec![], "b heard 9 holds all");
    // a meets 9's bad data and bans it; b never knew 9.
    let asked = requests(&drain(&mut a, t0));
    assert!(asked.iter().all(|&(p, _)| p == 9), "{asked:?}");
    let (_, first) = asked[0];
    let bad = Failure::Misbehaved("chunk failed BLAKE3 verification".into());
    a.handle_chunk_failed(9, first, bad, t0);
    // Two rounds later neither hears of 9's chunks: both go beyond the
    // site now, not after `site_hold_patience`.
    let t1 = t0 + Duration::from_secs(2);
    for _ in 0..2 {
        exchange(&mut a, &mut b, t1);
    }
    a.handle_timeout(t1);
    b.handle_timeout(t1);
    for (who, s) in [("a", &mut a), ("b", &mut b)] {
        let asked = requests(&drain(s, t1));
        assert!(
            !asked.is_empty() && asked.iter().all(|&(p, _)| p == 2),
            "{who} asked {asked:?}"
        );
    }
}

#[test]
fn word_ends_with_the_neighbours_next_answer_or_when_it_is_banned() {
    let t0 = Instant::now();
    let n = manifest(6).chunks.len();
    // Its next answer says nothing beyond its bitfield: the far peer is
    // asked at once.
    let mut s = beside(true, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    s.handle_peer_site_holds(1, None, None, t0);
    assert!(!requests(&drain(&mut s, t0)).is_empty());
    // A neighbour banned for bad data takes its word with it.
    let mut s = beside(true, t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![]);
    s.handle_peer_have(1, &one(n, 0), t0);
    assert_eq!(requests(&drain(&mut s, t0)), vec![(1, 0)]);
    let bad = Failure::Misbehaved("chunk failed BLAKE3 verification".into());
    s.handle_chunk_failed(1, 0, bad, t0);
    let asked = requests(&drain(&mut s, t0));
    assert!(
        !asked.is_empty() && asked.iter().all(|&(p, _)| p == 2),
        "{asked:?}"
    );
}
