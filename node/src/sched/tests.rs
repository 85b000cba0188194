//! Scheduler tests under virtual time: no sockets, no sleeps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::{Bitfield, ChunkerParams, Compatible, InstallKind, Manifest};

use super::*;

const ORIGIN: u32 = u32::MAX;

pub(crate) fn manifest(chunks: usize) -> Manifest {
    // Distinct pseudo-random content so every chunk is unique.
    let mut x = 0x1234_5678_u64;
    let data: Vec<u8> = (0..chunks * 4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let t = ManifestTemplate {
        name: "t".into(),
        version: meshota_protocol::semver::Version::new(1, 0, 0),
        compatible: Compatible::new("c").unwrap(),
        chunker: ChunkerParams {
            min: 1024,
            avg: 2048,
            max: 4096,
        },
        kind: InstallKind::Image,
        created_at: 0,
        meta: Default::default(),
    };
    build_manifest::<_, ManifestError>(data.as_slice(), t, |_| Ok(())).unwrap()
}

pub(super) fn cfg(seed: u64) -> SchedulerConfig {
    SchedulerConfig {
        seed,
        ..SchedulerConfig::default()
    }
}

pub(super) fn drain<P: Copy + Eq + std::hash::Hash + Ord + std::fmt::Debug>(
    s: &mut Scheduler<P>,
    now: Instant,
) -> Vec<Action<P>> {
    std::iter::from_fn(|| s.poll_action(now)).collect()
}

pub(super) fn requests(actions: &[Action<u32>]) -> Vec<(u32, usize)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { peer, index, .. } => Some((*peer, *index)),
            _ => None,
        })
        .collect()
}

/// Asserts that the scheduler reported dropping `peer`.
pub(super) fn assert_dropped(s: &mut Scheduler<u32>, peer: u32) {
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SchedEvent::Dropped { peer: p, .. } if *p == peer)),
        "{events:?}"
    );
}

/// The manifest positions set in `b`.
pub(super) fn positions(b: &Bitfield) -> Vec<usize> {
    (0..b.len()).filter(|&i| b.get(i)).collect()
}

/// A bitfield of `n` chunks holding only the one at position `i`.
pub(super) fn one(n: usize, i: usize) -> Bitfield {
    let mut b = Bitfield::new(n);
    b.set(i);
    b
}

/// Finds a peer and gives it a bitfield in one step.
pub(super) fn add_peer(
    s: &mut Scheduler<u32>,
    p: u32,
    class: PeerClass,
    have: &Bitfield,
    now: Instant,
) {
    s.handle_peer_found(p, class, now);
    s.handle_peer_have(p, have, now);
}

#[test]
fn fetches_every_missing_chunk_from_a_single_peer_within_its_window() {
    let m = manifest(40);
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(m.chunks.len()), cfg(1), t0);
    add_peer(
        &mut s,
        7,
        PeerClass::SameSite,
        &Bitfield::full(m.chunks.len()),
        t0,
    );
    let mut now = t0;
    let mut fetched = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let reqs = requests(&drain(&mut s, now));
        assert!(reqs.len() <= 4, "window exceeded: {}", reqs.len());
        now += Duration::from_millis(10);
        for (p, i) in reqs {
            assert!(fetched.insert(i), "chunk {i} requested twice");
            s.handle_chunk_arrived(p, i, u64::from(m.chunks[i].len), now);
        }
        if s.is_complete() {
            break;
        }
    }
    assert!(s.is_complete());
    assert_eq!(fetched.len(), m.unique_chunks().len());
    assert_eq!(s.stats().bytes.same_site, m.payload_size);
    assert_eq!(s.poll_event(), Some(SchedEvent::Complete));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn never_requests_chunks_already_held() {
    let m = manifest(30);
    let mut held = Bitfield::new(m.chunks.len());
    for i in (0..m.chunks.len()).step_by(2) {
        held.set(i);
    }
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &held, cfg(2), t0);
    add_peer(
        &mut s,
        1,
        PeerClass::SameSite,
        &Bitfield::full(m.chunks.len()),
        t0,
    );
    let mut now = t0;
    while !s.is_complete() {
        for (p, i) in requests(&drain(&mut s, now)) {
            assert!(!held.get(i), "held chunk {i} requested");
            now += Duration::from_millis(1);
            s.handle_chunk_arrived(p, i, 1, now);
        }
    }
    let local: u64 = (0..m.chunks.len())
        .filter(|i| held.get(*i))
        .map(|i| u64::from(m.chunks[i].len))
        .sum();
    assert_eq!(s.stats().bytes.local, local);
}

#[test]
fn a_fully_held_manifest_is_complete_at_once() {
    let m = manifest(5);
    let s = Scheduler::<u32>::new(&m, &Bitfield::full(m.chunks.len()), cfg(0), Instant::now());
    assert!(s.is_complete());
}

#[test]
fn prefers_same_site_peers_then_other_sites_then_the_origin() {
    let m = manifest(12);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(3), t0);
    let mut first_half = Bitfield::new(n);
    for i in 0..n / 2 {
        first_half.set(i);
    }
    add_peer(&mut s, 1, PeerClass::Origin, &Bitfield::full(n), t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    add_peer(&mut s, 3, PeerClass::SameSite, &first_half, t0);
    let reqs = requests(&drain(&mut s, t0));
    // The same-site peer gets its full window first, and the chunks it
    // holds are never asked of anyone else.
    assert_eq!(reqs.iter().filter(|(p, _)| *p == 3).count(), 4);
    for (p, i) in &reqs {
        if *p != 3 {
            assert!(
                !first_half.get(*i),
                "chunk {i} held locally went to peer {p}"
            );
        }
    }
    // No reachable peer lacks anything the other-site peer holds, so the
    // origin is not used at all.
    assert!(reqs.iter().all(|(p, _)| *p != 1), "{reqs:?}");
}

#[test]
fn uses_the_origin_only_for_chunks_no_peer_holds() {
    let m = manifest(12);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(4), t0);
    let mut some = Bitfield::new(n);
    some.set(0);
    some.set(1);
    add_peer(&mut s, 2, PeerClass::OtherSite, &some, t0);
    add_peer(&mut s, 1, PeerClass::Origin, &Bitfield::full(n), t0);
    for (p, i) in requests(&drain(&mut s, t0)) {
        if p == 1 {
            assert!(i > 1, "origin asked for chunk {i} that a peer holds");
        }
    }
}

#[test]
fn rarest_chunks_go_first() {
    let m = manifest(20);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(5), t0);
    let full = Bitfield::full(n);
    add_peer(&mut s, 1, PeerClass::SameSite, &full, t0);
    // Peers 2 and 3 hold everything but chunk 5, so 5 is the rarest.
    let mut most = Bitfield::full(n);
    most = {
        let mut b = Bitfield::new(n);
        for i in (0..n).filter(|i| *i != 5) {
            b.set(i);
        }
        let _ = most;
        b
    };
    add_peer(&mut s, 2, PeerClass::SameSite, &most, t0);
    add_peer(&mut s, 3, PeerClass::SameSite, &most, t0);
    let reqs = requests(&drain(&mut s, t0));
    // Peers are walked in this device's own order, so peer 1 need not be
    // asked first; when it is asked, the chunk only it holds comes first.
    let from_1: Vec<usize> = reqs.iter().filter(|r| r.0 == 1).map(|r| r.1).collect();
    assert_eq!(from_1.first(), Some(&5), "{reqs:?}");
}

#[test]
fn a_timed_out_request_is_retried_elsewhere_and_two_timeouts_drop_the_peer() {
    let m = manifest(3);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(6);
    c.window_per_peer = 2;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    let reqs = requests(&drain(&mut s, t0));
    assert_eq!(reqs.len(), 2);
    // The peer already holds everything, so no Have refresh is due: the
    // wake-ups are the endgame's moment to duplicate (with nobody idle to
    // take it), then the request's deadline.
    let t1 = t0 + Duration::from_secs(10);
    let mut wake = s.poll_timeout().unwrap();
    while wake < t1 {
        s.handle_timeout(wake);
        assert_eq!(requests(&drain(&mut s, wake)), vec![]);
        wake = s.poll_timeout().unwrap();
    }
    assert_eq!(wake, t1);
    // Both requests time out: two in a row drop the peer.
    s.handle_timeout(t1);
    assert_eq!(s.stats().retries, 2);
    assert_dropped(&mut s, 1);
    add_peer(&mut s, 2, PeerClass::SameSite, &Bitfield::full(n), t1);
    let again = requests(&drain(&mut s, t1));
    for (_, i) in &reqs {
        assert!(
            again.contains(&(2, *i)),
            "{i} not asked of peer 2: {again:?}"
        );
    }
    // A dropped peer found again during its cool-off is ignored.
    let t2 = t1 + Duration::from_secs(10);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t2);
    assert!(requests(&drain(&mut s, t2)).iter().all(|(p, _)| *p != 1));
}

#[test]
fn a_peer_sending_bad_data_is_banned_for_good_and_the_chunk_refetched() {
    let m = manifest(4);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(7), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    let (p, i) = requests(&drain(&mut s, t0))[0];
    s.handle_chunk_failed(p, i, Failure::Misbehaved("hash mismatch".into()), t0);
    assert!(matches!(
        s.poll_event(),
        Some(SchedEvent::Banned { peer: 1, .. })
    ));
    assert_eq!(s.stats().bans, 1);
    let later = t0 + Duration::from_secs(3600);
    s.handle_peer_found(1, PeerClass::SameSite, later);
    assert_eq!(
        s.peer_count(PeerClass::SameSite),
        0,
        "banned peer came back"
    );
    add_peer(&mut s, 2, PeerClass::SameSite, &Bitfield::full(n), later);
    assert!(requests(&drain(&mut s, later)).contains(&(2, i)));
}

#[test]
fn a_trickling_peer_is_dropped_but_not_banned() {
    let m = manifest(50);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(8), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    let mut now = t0;
    let mut dropped = false;
    for _ in 0..20 {
        let reqs = requests(&drain(&mut s, now));
        // 100 bytes every 2 s: far below the 4 KiB/s minimum.
        now += Duration::from_secs(2);
        if let Some((p, i)) = reqs.first() {
            s.handle_chunk_arrived(*p, *i, 100, now);
        }
        s.handle_timeout(now);
        if std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, SchedEvent::Dropped { .. })) {
            dropped = true;
            break;
        }
    }
    assert!(dropped);
    assert_eq!(s.stats().bans, 0);
}

#[test]
fn a_peer_is_not_judged_slow_before_its_first_chunk_lands() {
    // A slow uplink serving a full window at once: nothing lands for 8 s
    // (past the 5 s rate window, inside the 10 s request timeout), then
    // the whole window does.
    let m = manifest(20);
    let n = m.chunks.len();
    let t0 = Instant::now();
    // The test's chunks are a few KiB: a minimum they clear in 8 s.
    let mut c = cfg(8);
    c.min_rate_bps = 1024;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c.clone(), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    let reqs = requests(&drain(&mut s, t0));
    assert!(reqs.len() > 1, "a window of requests: {reqs:?}");
    let quiet = t0 + Duration::from_secs(8);
    assert!(quiet < t0 + c.request_timeout);
    let bytes: u64 = reqs.iter().map(|&(_, i)| u64::from(m.chunks[i].len)).sum();
    assert!(bytes > 8 * c.min_rate_bps, "{bytes} B in 8 s");
    s.handle_timeout(quiet);
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SchedEvent::Dropped { .. })),
        "{events:?}"
    );
    for (p, i) in reqs {
        s.handle_chunk_arrived(p, i, u64::from(m.chunks[i].len), quiet);
    }
    s.handle_timeout(quiet + Duration::from_millis(1));
    assert!(!std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, SchedEvent::Dropped { .. })));
    assert_eq!(s.peer_count(PeerClass::SameSite), 1);
}

#[test]
fn a_chunk_landing_after_its_sender_was_dropped_counts_under_the_senders_class() {
    let m = manifest(20);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(9), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    let reqs = requests(&drain(&mut s, t0));
    let &(p, i) = reqs.first().expect("a request to the only peer");
    s.handle_peer_lost(p, t0);
    s.handle_chunk_arrived(p, i, u64::from(m.chunks[i].len), t0);
    assert_eq!(s.stats().bytes.same_site, u64::from(m.chunks[i].len));
    assert_eq!(s.stats().bytes.other_peers, 0);
}

#[test]
fn busy_backs_off_the_peer_without_dropping_it() {
    let m = manifest(6);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(9), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    for (p, i) in requests(&drain(&mut s, t0)) {
        s.handle_chunk_failed(p, i, Failure::Busy, t0);
    }
    assert!(requests(&drain(&mut s, t0)).is_empty());
    let wake = s.poll_timeout().unwrap();
    assert!(wake > t0 && wake <= t0 + Duration::from_secs(5));
    let later = t0 + Duration::from_secs(5);
    assert!(!requests(&drain(&mut s, later)).is_empty());
    assert_eq!(s.peer_count(PeerClass::SameSite), 1);
}

#[test]
fn busy_answers_in_a_row_double_the_back_off_up_to_its_cap() {
    // One chunk, so each round is one request and one refusal.
    let m = manifest(1);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(9), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    let (base, max) = (cfg(9).busy_backoff, cfg(9).busy_backoff_max);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let reqs = requests(&drain(&mut s, now));
        let &[(p, i)] = reqs.as_slice() else {
            panic!("one request once the back-off ends: {reqs:?}");
        };
        s.handle_chunk_failed(p, i, Failure::Busy, now);
        let until = s.busy_until(&1).expect("the peer is still known");
        waits.push(until - now);
        now = until;
    }
    assert_eq!(waits[0], base);
    assert_eq!(waits[1], base * 2);
    assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
    assert_eq!(*waits.last().unwrap(), max, "{waits:?}");
    assert!(waits.iter().all(|w| *w <= max), "{waits:?}");
}

#[test]
fn endgame_duplicates_a_waiting_last_request_and_cancels_the_loser() {
    let m = manifest(2);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut held = Bitfield::new(n);
    for i in 0..n - 1 {
        held.set(i);
    }
    let mut s = Scheduler::new(&m, &held, cfg(10), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    add_peer(&mut s, 2, PeerClass::SameSite, &Bitfield::full(n), t0);
    let mut reqs = requests(&drain(&mut s, t0));
    assert_eq!(
        reqs.len(),
        1,
        "duplicated before the request could be answered: {reqs:?}"
    );
    let hedge = s.poll_timeout().expect("a wake-up to duplicate it");
    assert_eq!(hedge, t0 + SchedulerConfig::default().endgame_after);
    s.handle_timeout(hedge);
    reqs.extend(requests(&drain(&mut s, hedge)));
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].1, reqs[1].1);
    s.handle_chunk_arrived(reqs[1].0, reqs[1].1, 10, hedge);
    let acts = drain(&mut s, hedge);
    assert!(acts.contains(&Action::Cancel {
        peer: reqs[0].0,
        index: reqs[0].1
    }));
    s.handle_chunk_arrived(reqs[0].0, reqs[0].1, 10, t0);
    assert_eq!(s.stats().duplicate_bytes, 10);
    assert_eq!(s.stats().chunks_fetched, 1);
}

#[test]
fn a_download_without_progress_reports_a_stall() {
    let m = manifest(3);
    let t0 = Instant::now();
    let mut s = Scheduler::<u32>::new(&m, &Bitfield::new(m.chunks.len()), cfg(11), t0);
    let wake = s.poll_timeout().unwrap();
    assert_eq!(wake, t0 + Duration::from_secs(120));
    s.handle_timeout(wake);
    assert_eq!(s.poll_event(), Some(SchedEvent::Stalled));
    assert_eq!(s.poll_event(), None);
}

#[test]
fn a_bitfield_of_the_wrong_length_bans_the_peer() {
    let m = manifest(3);
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(m.chunks.len()), cfg(12), t0);
    add_peer(&mut s, 4, PeerClass::OtherSite, &Bitfield::full(1), t0);
    assert!(matches!(
        s.poll_event(),
        Some(SchedEvent::Banned { peer: 4, .. })
    ));
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let m = manifest(30);
    let n = m.chunks.len();
    let run = |seed| {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(seed), t0);
        add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
        requests(&drain(&mut s, t0))
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// A small fleet under virtual time: every device runs a real scheduler,
/// answers `Have` with its store, and transfers take a fixed time per
/// link class. Returns origin bytes and WAN bytes per site.
fn fleet(devices: u32, sites: u32, chunks: usize) -> (u64, BTreeMap<u32, u64>, u64) {
    let m = manifest(chunks);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let site = |d: u32| d % sites;
    let mut held: Vec<Bitfield> = (0..devices).map(|_| Bitfield::new(n)).collect();
    let mut scheds: Vec<Scheduler<u32>> = (0..devices)
        .map(|d| {
            let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(u64::from(d)), t0);
            s.set_local_peer(d);
            s
        })
        .collect();
    for d in 0..devices {
        let s = &mut scheds[d as usize];
        s.handle_peer_found(ORIGIN, PeerClass::Origin, t0);
        for o in (0..devices).filter(|o| *o != d) {
            let class = if site(o) == site(d) {
                PeerClass::SameSite
            } else {
                PeerClass::OtherSite
            };
            s.handle_peer_found(o, class, t0);
        }
    }
    // (arrival time, device, peer, index)
    let mut flying: Vec<(Instant, u32, u32, usize)> = Vec::new();
    let mut origin_bytes = 0;
    let mut wan: BTreeMap<u32, u64> = BTreeMap::new();
    let mut now = t0;
    for _ in 0..200_000 {
        for d in 0..devices {
            let s = &mut scheds[d as usize];
            while let Some(a) = s.poll_action(now) {
                match a {
                    Action::QueryHave { peer } if peer == ORIGIN => {
                        s.handle_peer_have(peer, &Bitfield::full(n), now)
                    }
                    Action::QueryHave { peer } => {
                        s.handle_peer_have(peer, &held[peer as usize], now);
                        let fetching = held[peer as usize].count() < n;
                        s.handle_peer_fetching(peer, fetching);
                    }
                    Action::Request { peer, index, .. } => {
                        let lan = peer != ORIGIN && site(peer) == site(d);
                        let delay = if lan { 5 } else { 50 };
                        flying.push((now + Duration::from_millis(delay), d, peer, index));
                    }
                    Action::Cancel { .. } => {}
                }
            }
            while s.poll_event().is_some() {}
        }
        if scheds.iter().all(|s| s.is_complete()) {
            return (origin_bytes, wan, m.payload_size);
        }
        let next_timer = scheds.iter().filter_map(|s| s.poll_timeout()).min();
        let next_arrival = flying.iter().map(|f| f.0).min();
        now = match (next_timer, next_arrival) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).expect("nothing left to happen"),
        };
        let (due, rest): (Vec<_>, Vec<_>) = flying.into_iter().partition(|f| f.0 <= now);
        flying = rest;
        for (_, d, peer, index) in due {
            let len = u64::from(m.chunks[index].len);
            if peer == ORIGIN {
                origin_bytes += len;
            }
            if peer == ORIGIN || site(peer) != site(d) {
                *wan.entry(site(d)).or_default() += len;
            }
            held[d as usize].set(index);
            scheds[d as usize].handle_chunk_arrived(peer, index, len, now);
        }
        for s in &mut scheds {
            s.handle_timeout(now);
        }
    }
    panic!("fleet did not finish");
}

#[test]
fn a_fleet_pulls_about_one_copy_from_the_origin_and_one_per_site_over_the_wan() {
    let (origin, wan, size) = fleet(24, 3, 60);
    assert!(
        origin <= size * 13 / 10,
        "origin served {origin} bytes for a {size}-byte bundle"
    );
    for (site, bytes) in wan {
        assert!(
            bytes <= size * 15 / 10,
            "site {site} pulled {bytes} WAN bytes for a {size}-byte bundle"
        );
    }
}

#[test]
fn poll_timeout_never_names_a_time_already_past() {
    let m = manifest(10);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(13), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    let _ = drain(&mut s, t0);
    let t1 = t0 + Duration::from_secs(3);
    s.handle_timeout(t1);
    let _ = drain(&mut s, t1);
    if let Some(t) = s.poll_timeout() {
        assert!(t > t1);
    }
}

#[test]
fn a_pushed_chunk_counts_like_the_same_bit_in_a_bitfield() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut pushed = Scheduler::new(&m, &Bitfield::new(n), cfg(5), t0);
    let mut polled = Scheduler::new(&m, &Bitfield::new(n), cfg(5), t0);
    add_peer(&mut pushed, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    add_peer(&mut polled, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    drain(&mut pushed, t0);
    drain(&mut polled, t0);
    let mut have = Bitfield::new(n);
    for i in [2, 5] {
        pushed.handle_peer_has(1, i, t0);
        have.set(i);
    }
    pushed.handle_peer_has(1, 5, t0);
    polled.handle_peer_have(1, &have, t0);
    assert_eq!(
        requests(&drain(&mut pushed, t0)),
        requests(&drain(&mut polled, t0))
    );
    pushed.handle_peer_has(1, n + 1, t0);
    assert!(matches!(
        pushed.poll_event(),
        Some(SchedEvent::Banned { peer: 1, .. })
    ));
}

#[test]
fn news_of_a_chunk_is_actionable_only_while_a_ready_peer_could_serve_it() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(3), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    add_peer(&mut s, 2, PeerClass::SameSite, &Bitfield::new(n), t0);
    assert!(!s.could_request(Some(&1), 3, t0), "peer 1 does not hold it");
    s.handle_peer_has(1, 3, t0);
    assert!(s.could_request(Some(&1), 3, t0));
    assert!(!s.could_request(Some(&2), 3, t0));
    assert!(s.could_request(None, 3, t0));
    let reqs = requests(&drain(&mut s, t0));
    assert_eq!(reqs, vec![(1, 3)]);
    assert!(
        !s.could_request(None, 3, t0),
        "a chunk in flight is not open (outside the endgame)"
    );
    // Refused: the chunk is open again but its only holder backs off.
    s.handle_chunk_failed(1, 3, Failure::Busy, t0);
    assert!(!s.could_request(None, 3, t0));
    assert!(
        requests(&drain(&mut s, t0)).is_empty(),
        "nothing to do, as it said"
    );
    s.handle_peer_has(2, 3, t0);
    assert!(s.could_request(None, 3, t0));
    assert_eq!(requests(&drain(&mut s, t0)), vec![(2, 3)]);
}

#[test]
fn a_wan_peer_or_the_origin_is_no_reason_to_poll_for_a_chunk_a_site_peer_holds() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(4), t0);
    add_peer(&mut s, ORIGIN, PeerClass::Origin, &Bitfield::full(n), t0);
    add_peer(&mut s, 5, PeerClass::OtherSite, &Bitfield::full(n), t0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n), t0);
    assert!(s.could_request(Some(&5), 0, t0));
    s.handle_peer_has(1, 0, t0);
    assert!(!s.could_request(Some(&5), 0, t0));
    assert!(!s.could_request(Some(&ORIGIN), 0, t0));
    assert!(s.could_request(Some(&1), 0, t0));
}

/// A neighbour with everything, a far peer with everything, and the
/// origin; the neighbour times out twice and is dropped at the returned
/// instant.
fn drop_the_only_neighbour(n: usize) -> (Scheduler<u32>, Instant) {
    let m = manifest(n);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(12), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::full(n), t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    add_peer(&mut s, ORIGIN, PeerClass::Origin, &Bitfield::full(n), t0);
    let first = requests(&drain(&mut s, t0));
    assert!(!first.is_empty() && first.iter().all(|(p, _)| *p == 1));
    let t1 = t0 + Duration::from_secs(10);
    s.handle_timeout(t1);
    assert_dropped(&mut s, 1);
    (s, t1)
}

#[test]
fn a_dropped_neighbours_chunks_stay_off_the_wan_until_its_cool_off_ends_and_it_had_time_to_answer()
{
    let (mut s, t1) = drop_the_only_neighbour(8);
    assert_eq!(requests(&drain(&mut s, t1)), vec![]);
    // The driver asks it again at the cool-off's end; the answer may take
    // a request timeout.
    let c = SchedulerConfig::default();
    let end = t1 + c.drop_cooloff + c.request_timeout;
    loop {
        let now = s.poll_timeout().expect("a wake-up at the cool-off's end");
        assert!(now <= end, "slept past the cool-off");
        s.handle_timeout(now);
        if now == end {
            break;
        }
        assert_eq!(requests(&drain(&mut s, now)), vec![], "at {:?}", now - t1);
    }
    // Not found again by then: it may be gone for good, so the far peer
    // serves.
    let late = requests(&drain(&mut s, end));
    assert!(
        !late.is_empty() && late.iter().all(|(p, _)| *p == 2),
        "{late:?}"
    );
}

#[test]
fn a_neighbour_that_disconnects_frees_its_chunks_for_the_wan_at_once() {
    let (mut s, t1) = drop_the_only_neighbour(8);
    s.handle_peer_lost(1, t1);
    let reqs = requests(&drain(&mut s, t1));
    assert!(
        !reqs.is_empty() && reqs.iter().all(|(p, _)| *p == 2),
        "{reqs:?}"
    );
}
