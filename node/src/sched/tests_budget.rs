//! Scheduler tests of a download budget: how many chunk bytes are asked
//! for at once, and what goes first when only a few may be.

use std::time::{Duration, Instant};

use meshota_protocol::Bitfield;

use super::tests::{add_peer, cfg, drain, manifest, one, requests};
use super::*;

fn all_but_last(n: usize) -> Bitfield {
    let mut b = Bitfield::new(n);
    for i in 0..n - 1 {
        b.set(i);
    }
    b
}

fn len_of(m: &meshota_protocol::Manifest, i: usize) -> u64 {
    u64::from(m.chunks[i].len)
}

#[test]
fn keeps_no_more_chunk_bytes_in_flight_than_its_budget_and_asks_for_more_as_answers_land() {
    let m = manifest(16);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(21);
    // Room for about two of these chunks (1-4 KiB each).
    c.max_in_flight_bytes = 5000;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    for p in 1..=4 {
        add_peer(&mut s, p, PeerClass::SameSite, &Bitfield::full(n), t0);
    }
    let mut out = requests(&drain(&mut s, t0));
    let mut got = 0;
    let mut now = t0;
    while !out.is_empty() {
        let bytes: u64 = out.iter().map(|&(_, i)| len_of(&m, i)).sum();
        let all_but_last = bytes - len_of(&m, out[out.len() - 1].1);
        assert!(
            all_but_last < 5000,
            "{} requests, {bytes} bytes out, against a budget of 5000",
            out.len()
        );
        // Sixteen peers' windows would have allowed sixteen requests.
        assert!(out.len() < 5, "{out:?}");
        // One answer lands: room for at least one more request.
        let (p, i) = out.remove(0);
        now += Duration::from_millis(100);
        s.handle_chunk_arrived(p, i, len_of(&m, i), now);
        got += 1;
        out.extend(requests(&drain(&mut s, now)));
    }
    assert_eq!(got, n, "every chunk came, a few at a time");
    assert!(s.is_complete());
}

#[test]
fn without_a_budget_every_window_fills_at_once() {
    let m = manifest(16);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(22), t0);
    for p in 1..=4 {
        add_peer(&mut s, p, PeerClass::SameSite, &Bitfield::full(n), t0);
    }
    let out = requests(&drain(&mut s, t0));
    assert_eq!(out.len(), 16.min(n), "four windows of four");
}

/// Device 0, first in its site's line for every chunk (its one neighbour
/// is not fetching), holds nothing; the neighbour holds every chunk but
/// the last, and a far peer holds all. What does it ask for first?
fn first_request(budget: u64) -> (u32, usize, usize) {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(23);
    c.max_in_flight_bytes = budget;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    s.set_local_peer(0);
    let site = all_but_last(n);
    add_peer(&mut s, 1, PeerClass::SameSite, &site, t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    let out = requests(&drain(&mut s, t0));
    if budget == 1 {
        assert_eq!(out.len(), 1, "room for one: {out:?}");
    }
    (out[0].0, out[0].1, n)
}

#[test]
fn a_home_with_room_for_one_request_first_pulls_what_its_site_lacks() {
    let (peer, index, n) = first_request(1);
    assert_eq!(
        (peer, index),
        (2, n - 1),
        "the site lacks only the last chunk and this device is its home: \
         the import goes first, since the site's chunks come anyway"
    );
    // Without a budget every window fills, its neighbour's first.
    let (peer, _, _) = first_request(u64::MAX);
    assert_eq!(peer, 1);
}

#[test]
fn with_room_for_one_request_a_device_not_in_line_to_import_takes_a_site_chunk() {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(24);
    c.max_in_flight_bytes = 1;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    s.set_local_peer(0);
    let site = all_but_last(n);
    add_peer(&mut s, 1, PeerClass::SameSite, &site, t0);
    // A neighbour that claims the missing chunk: device 0 waits for it.
    s.handle_peer_fetching(1, true);
    s.handle_peer_importing(1, Some(&one(n, n - 1)), t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    let out = requests(&drain(&mut s, t0));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, 1, "took a site chunk: {out:?}");
}
