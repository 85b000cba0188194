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
        let before_last = bytes - len_of(&m, out[out.len() - 1].1);
        assert!(
            before_last < 5000,
            "{} requests, {bytes} bytes out, against a budget of 5000",
            out.len()
        );
        // Four peers' windows of four would allow sixteen.
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

/// Device 0 holds nothing; its neighbour 1 holds every chunk but the
/// last, and a far peer 2 holds all. Unless `claimed`, the neighbour is
/// not fetching, so device 0 is first in its site's line for every chunk;
/// `claimed`, the neighbour fetches and claims to import the last chunk,
/// which device 0 then waits for. Its first requests under `budget`.
fn first_requests(budget: u64, claimed: bool) -> (Vec<(u32, usize)>, usize) {
    let m = manifest(8);
    let n = m.chunks.len();
    let t0 = Instant::now();
    let mut c = cfg(23);
    c.max_in_flight_bytes = budget;
    let mut s = Scheduler::new(&m, &Bitfield::new(n), c, t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &all_but_last(n), t0);
    if claimed {
        s.handle_peer_fetching(1, true);
        s.handle_peer_importing(1, Some(&one(n, n - 1)), t0);
    }
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n), t0);
    (requests(&drain(&mut s, t0)), n)
}

#[test]
fn a_home_with_room_for_one_request_first_pulls_what_its_site_lacks() {
    let (out, n) = first_requests(1, false);
    assert_eq!(
        out,
        vec![(2, n - 1)],
        "the site lacks only the last chunk and this device is its home: \
         the import goes first, since the site's chunks come anyway"
    );
    // Without a budget every window fills, its neighbour's first.
    let (out, _) = first_requests(u64::MAX, false);
    assert_eq!(out[0].0, 1, "{out:?}");
}

#[test]
fn with_room_for_one_request_a_device_not_in_line_to_import_takes_a_site_chunk() {
    let (out, _) = first_requests(1, true);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, 1, "took a site chunk: {out:?}");
}
