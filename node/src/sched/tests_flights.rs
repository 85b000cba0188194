//! Scheduler tests of requests that outlive their timeout and of far
//! peers: what is awaited, what is asked again, and what crosses the WAN.

use std::time::{Duration, Instant};

use meshota_protocol::Bitfield;

use super::tests::{add_peer, assert_dropped, cfg, drain, manifest, requests};
use super::*;

#[test]
fn a_late_answer_is_awaited_and_no_wan_peer_is_asked_for_it_until_the_transport_gives_up() {
    let m = manifest(3);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(13);
    c.window_per_peer = 1;
    // In good standing: not judged by its rate (one late answer is no
    // proof of a slow peer).
    c.min_rate_bps = 0;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    add_peer(&mut s, 1, PeerClass::OtherSite, &Bitfield::full(n), t0);
    let first = requests(&drain(&mut s, t0));
    assert_eq!(first.len(), 1);
    let (_, index) = first[0];
    let late = t0 + Duration::from_secs(10);
    s.handle_timeout(late);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), late);
    let meanwhile = requests(&drain(&mut s, late));
    assert!(
        meanwhile.iter().all(|&(_, i)| i != index),
        "asked the WAN again for a chunk whose answer may still come: {meanwhile:?}"
    );
    for (p, i) in meanwhile {
        s.handle_chunk_arrived(p, i, 10, late);
    }
    // The transport gives up at `answer_timeout`: then it is lost.
    let lost = t0 + SchedulerConfig::default().answer_timeout;
    let mut now = late;
    let mut asked = false;
    while now < lost {
        now = s
            .poll_timeout()
            .expect("a wake-up at the transport's limit");
        s.handle_timeout(now);
        for (p, i) in requests(&drain(&mut s, now)) {
            assert!(
                i != index || now >= lost,
                "asked {p} for it at {:?}",
                now - t0
            );
            asked |= i == index;
            if i != index {
                s.handle_chunk_arrived(p, i, 10, now);
            }
        }
    }
    assert_eq!(now, lost);
    assert!(
        asked,
        "the chunk stayed hostage to an answer that cannot come"
    );
}

#[test]
fn a_neighbour_may_step_in_for_a_late_answer_and_the_late_answer_still_counts() {
    let m = manifest(3);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(14);
    c.window_per_peer = 1;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    add_peer(&mut s, 1, PeerClass::OtherSite, &Bitfield::full(n), t0);
    let (_, index) = requests(&drain(&mut s, t0))[0];
    let late = t0 + Duration::from_secs(10);
    s.handle_timeout(late);
    add_peer(&mut s, 2, PeerClass::SameSite, &Bitfield::full(n), late);
    assert!(requests(&drain(&mut s, late)).contains(&(2, index)));
    // The far answer lands first: it is used, and the neighbour's is waste.
    let len = u64::from(m.chunks[index].len);
    s.handle_chunk_arrived(1, index, len, late);
    s.handle_chunk_arrived(2, index, len, late);
    assert_eq!(s.stats().bytes.other_peers, len);
    assert_eq!(s.stats().duplicate_bytes, len);
}

#[test]
fn a_peer_dropped_for_slowness_is_awaited_for_what_it_owes_until_the_request_timeout() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(15), t0);
    s.set_local_peer(0);
    // A far peer: no cool-off rule keeps its chunks off the WAN.
    add_peer(&mut s, 1, PeerClass::OtherSite, &Bitfield::full(n), t0);
    let owed = requests(&drain(&mut s, t0));
    assert!(owed.len() >= 3 && owed.iter().all(|(p, _)| *p == 1));
    // One 100-byte chunk in 5 s of being busy: dropped as too slow, with
    // its other requests not yet late.
    let (_, first) = owed[0];
    s.handle_chunk_arrived(1, first, 100, t0 + Duration::from_secs(1));
    let t1 = t0 + Duration::from_secs(5);
    s.handle_timeout(t1);
    assert_dropped(&mut s, 1);
    let owed = &owed[1..];
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t1);
    let far = requests(&drain(&mut s, t1));
    assert!(
        far.iter().all(|(_, i)| owed.iter().all(|(_, j)| i != j)),
        "asked another peer for chunks the dropped one is still sending: {far:?}"
    );
    for &(p, j) in &far {
        s.handle_chunk_arrived(p, j, 100, t1);
    }
    // One of its answers lands: used, not waste.
    let (_, i) = owed[0];
    s.handle_chunk_arrived(1, i, 100, t1);
    assert_eq!(s.stats().bytes.other_peers, 100 * (far.len() as u64 + 2));
    assert_eq!(s.stats().duplicate_bytes, 0);
    // The rest are given up at the request timeout.
    let t2 = t0 + SchedulerConfig::default().request_timeout;
    s.handle_timeout(t2);
    for &(_, j) in &owed[1..] {
        assert!(
            s.could_request(Some(&2), j, t2),
            "chunk {j} still waits on a dropped peer"
        );
    }
}

#[test]
fn a_far_peer_is_not_polled_while_the_site_has_every_missing_chunk() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(16), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::new(n), t0);
    let polls_of_far = |acts: &[Action<u32>]| {
        acts.iter()
            .filter(|a| matches!(a, Action::QueryHave { peer: 2 }))
            .count()
    };
    drain(&mut s, t0);
    let later = t0 + Duration::from_secs(5);
    s.handle_timeout(later);
    assert_eq!(polls_of_far(&drain(&mut s, later)), 0);
    // The neighbour leaves: the far peer's news matters again.
    s.handle_peer_lost(1, later);
    assert_eq!(polls_of_far(&drain(&mut s, later)), 1);
}

#[test]
fn a_far_peer_is_polled_at_the_far_refresh_while_the_site_lacks_chunks() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(17), t0);
    s.set_local_peer(0);
    let mut half = Bitfield::new(n);
    for i in 0..n / 2 {
        half.set(i);
    }
    add_peer(&mut s, 2, PeerClass::OtherSite, &half, t0);
    let c = SchedulerConfig::default();
    assert!(c.far_have_refresh > c.have_refresh);
    let mut now = t0;
    // It answers every request at once, so it is never judged slow.
    let answer = |s: &mut Scheduler<u32>, now: Instant| {
        let acts = drain(s, now);
        for (p, i) in requests(&acts) {
            s.handle_chunk_arrived(p, i, 100_000, now);
        }
        acts.iter()
            .any(|a| matches!(a, Action::QueryHave { peer: 2 }))
    };
    assert!(!answer(&mut s, now));
    let polled_at = loop {
        now = s.poll_timeout().expect("a wake-up");
        assert!(
            now <= t0 + c.far_have_refresh,
            "never polled; woke at {:?}",
            now - t0
        );
        s.handle_timeout(now);
        if answer(&mut s, now) {
            break now;
        }
    };
    assert_eq!(polled_at, t0 + c.far_have_refresh);
}

#[test]
fn peers_beyond_the_site_are_wanted_only_when_this_device_would_pull_over_the_wan() {
    let m = manifest(1);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let patience = SchedulerConfig::default().site_patience;
    let fresh = || {
        let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(18), t0);
        s.set_local_peer(0);
        s
    };
    // Alone in its site, it is the home of the chunk the site lacks.
    assert!(fresh().wan_turn());
    // A fetching neighbour ahead of it in line: its turn comes one
    // patience later.
    let ahead = (1..100)
        .find(|&p| {
            let mut s = fresh();
            add_peer(&mut s, p, PeerClass::SameSite, &Bitfield::new(n), t0);
            s.handle_peer_fetching(p, true);
            s.site_standing(0, t0) == Some((1, false))
        })
        .expect("some peer ranks ahead");
    let mut s = fresh();
    add_peer(&mut s, ahead, PeerClass::SameSite, &Bitfield::new(n), t0);
    s.handle_peer_fetching(ahead, true);
    assert!(!s.wan_turn());
    s.handle_timeout(t0 + patience);
    assert!(s.wan_turn());
    // A neighbour's claim is waited for longer than the line.
    s.handle_peer_importing(ahead, Some(&Bitfield::full(n)), t0 + patience);
    assert!(!s.wan_turn());
    // The site holds it: nothing to pull over the WAN.
    s.handle_peer_importing(ahead, None, t0 + patience);
    assert!(s.wan_turn());
    s.handle_peer_have(ahead, &Bitfield::full(n), t0 + patience);
    assert!(!s.wan_turn());
}

/// A bitfield of `n` chunks holding the first `k`: a peer that gains one
/// more at each answer.
fn first(n: usize, k: usize) -> Bitfield {
    let mut b = Bitfield::new(n);
    for i in 0..k.min(n) {
        b.set(i);
    }
    b
}

/// Times at which peer 1 is asked for its bitfield over `span`, each
/// answered at once with the bitfield `answer` gives for the poll count.
fn have_polls(
    s: &mut Scheduler<u32>,
    t0: Instant,
    span: Duration,
    mut answer: impl FnMut(usize) -> Bitfield,
) -> Vec<Duration> {
    let mut polls = Vec::new();
    let mut now = t0;
    while let Some(next) = s.poll_timeout() {
        if next > t0 + span {
            break;
        }
        now = now.max(next);
        s.handle_timeout(now);
        for a in drain(s, now) {
            if matches!(a, Action::QueryHave { peer: 1 }) {
                polls.push(now - t0);
                s.handle_peer_have(1, &answer(polls.len()), now);
            }
        }
    }
    polls
}

#[test]
fn a_neighbour_that_gains_nothing_is_asked_less_often_down_to_the_longest_refresh() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let c = SchedulerConfig::default();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(18), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    let polls = have_polls(&mut s, t0, Duration::from_secs(30), |_| Bitfield::new(n));
    let secs: Vec<f64> = polls.iter().map(Duration::as_secs_f64).collect();
    // Due after half its quiet time, between 1 s and 4 s: 1, 2, 3, then
    // 4.5, 6.75, 10.125, and every 4 s from there.
    let expected = [
        1.0, 2.0, 3.0, 4.5, 6.75, 10.125, 14.125, 18.125, 22.125, 26.125,
    ];
    assert_eq!(secs.len(), expected.len(), "polled at {secs:?}");
    for (got, want) in secs.iter().zip(expected) {
        assert!((got - want).abs() < 1e-3, "polled at {secs:?}");
    }
    assert!(polls.windows(2).all(|w| w[1] - w[0] <= c.have_refresh_max));
}

#[test]
fn the_origin_is_asked_less_often_while_it_offers_nothing_new() {
    let m = manifest(40);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let c = SchedulerConfig::default();
    let span = Duration::from_secs(300);
    let quiet = {
        let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(20), t0);
        s.set_local_peer(0);
        add_peer(&mut s, 1, PeerClass::Origin, &Bitfield::new(n), t0);
        have_polls(&mut s, t0, span, |_| Bitfield::new(n))
    };
    let gaps: Vec<Duration> = quiet.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.first(), Some(&c.origin_have_refresh), "{quiet:?}");
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{quiet:?}");
    assert_eq!(gaps.last(), Some(&c.origin_have_refresh_max), "{quiet:?}");
    // Every 5 s would have been 60 polls.
    assert!(quiet.len() <= 12, "{} polls: {quiet:?}", quiet.len());
    // An origin offering one more chunk at each answer (a withheld one
    // offered again) is asked at the refresh.
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(21), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::Origin, &Bitfield::new(n), t0);
    let growing = have_polls(&mut s, t0, Duration::from_secs(30), |k| first(n, k));
    assert!(growing.len() >= 5, "{growing:?}");
    assert!(
        growing
            .windows(2)
            .all(|w| w[1] - w[0] == c.origin_have_refresh),
        "{growing:?}"
    );
}

#[test]
fn a_neighbour_that_gains_a_chunk_between_polls_is_asked_every_refresh() {
    let m = manifest(40);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let c = SchedulerConfig::default();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(19), t0);
    s.set_local_peer(0);
    // It holds nothing we could take at first, then one more chunk at
    // each answer; requests for them are never answered, which is
    // irrelevant here (they time out after the span).
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    let polls = have_polls(&mut s, t0, Duration::from_secs(8), |k| first(n, k));
    assert!(polls.len() >= 8, "polled at {polls:?}");
    assert!(
        polls.windows(2).all(|w| w[1] - w[0] == c.have_refresh),
        "polled at {polls:?}"
    );
}

#[test]
fn no_back_off_when_the_longest_refresh_is_the_refresh() {
    let mut c = SchedulerConfig::default();
    c.have_refresh_max = c.have_refresh;
    let long_quiet = Duration::from_secs(60);
    assert_eq!(
        have_interval(&c, PeerClass::SameSite, long_quiet),
        c.have_refresh
    );
    // Other sites keep their fixed cadence either way; an origin whose
    // answer has just grown is asked again after its refresh.
    let d = SchedulerConfig::default();
    assert_eq!(
        have_interval(&d, PeerClass::OtherSite, long_quiet),
        d.far_have_refresh
    );
    assert_eq!(
        have_interval(&d, PeerClass::Origin, Duration::ZERO),
        d.origin_have_refresh
    );
}

#[test]
fn devices_with_different_seeds_ask_the_same_neighbours_in_different_orders() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut firsts = std::collections::BTreeSet::new();
    for seed in 0..16 {
        let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(seed), t0);
        for p in 1..=8 {
            add_peer(&mut s, p, PeerClass::SameSite, &Bitfield::full(n), t0);
        }
        let reqs = requests(&drain(&mut s, t0));
        firsts.insert(reqs[0].0);
    }
    // In key order every device would ask peer 1 first.
    assert!(
        firsts.len() >= 4,
        "first asked across 16 devices: {firsts:?}"
    );
}
