//! Scheduler tests of the site's roster: members heard of through
//! neighbours take their place in the site's line.

use std::time::Instant;

use meshota_protocol::Bitfield;

use super::state::peer_hash;
use super::tests::{add_peer, cfg, manifest};
use super::*;

const CHUNKS: usize = 16;

/// Device `me` knowing `neighbours` directly, all of the site and
/// fetching, nobody holding anything.
fn device(me: u32, neighbours: &[u32], t0: Instant) -> Scheduler<u32> {
    let m = manifest(CHUNKS);
    let n = m.chunks.len();
    let mut s = Scheduler::new(&m, &Bitfield::new(n), cfg(u64::from(me)), t0);
    s.set_local_peer(me);
    for &p in neighbours {
        add_peer(&mut s, p, PeerClass::SameSite, &Bitfield::new(n), t0);
        s.handle_peer_fetching(p, true);
    }
    s
}

/// How many devices of `site` take themselves for the home of each chunk.
fn homes(site: &[Scheduler<u32>], t0: Instant) -> Vec<usize> {
    let n = manifest(CHUNKS).chunks.len();
    (0..n)
        .map(|i| {
            site.iter()
                .filter(|s| s.site_standing(i, t0) == Some((0, false)))
                .count()
        })
        .collect()
}

#[test]
fn a_site_whose_members_each_know_only_some_of_it_agrees_on_one_home_per_chunk() {
    // Five devices in a ring: each knows two of the other four.
    let t0 = Instant::now();
    let ring = |i: u32| [(i + 1) % 5, (i + 4) % 5];
    let mut site: Vec<Scheduler<u32>> = (0..5).map(|i| device(i, &ring(i), t0)).collect();
    let before = homes(&site, t0);
    assert!(before.iter().any(|&h| h > 1), "{before:?}");
    // One round of `Have` answers: each lists its fetching neighbours.
    let lists: Vec<Vec<(u32, Vec<u64>)>> = (0..5u32)
        .map(|i| {
            ring(i)
                .iter()
                .map(|&p| (p, site[p as usize].fetching_neighbours(&i, t0)))
                .collect()
        })
        .collect();
    for (s, heard) in site.iter_mut().zip(lists) {
        for (p, keys) in heard {
            s.handle_peer_roster(p, &keys, t0);
        }
    }
    assert!(
        homes(&site, t0).iter().all(|&h| h == 1),
        "{:?}",
        homes(&site, t0)
    );
}

#[test]
fn a_member_heard_of_is_forgotten_a_patience_after_it_was_last_listed() {
    let t0 = Instant::now();
    let mut s = device(0, &[1], t0);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(CHUNKS), t0);
    let n = manifest(CHUNKS).chunks.len();
    let rank = |s: &Scheduler<u32>, t: Instant| -> u32 {
        (0..n)
            .map(|i| s.site_standing(i, t).map_or(0, |r| r.0))
            .sum()
    };
    let alone = rank(&s, t0);
    // A far peer's list, or one naming a member already known (1) or
    // this device itself, changes nothing.
    let far: Vec<u64> = (10..20).map(|p| peer_hash(&p)).collect();
    s.handle_peer_roster(2, &far, t0);
    s.handle_peer_roster(1, &[peer_hash(&1), peer_hash(&0)], t0);
    assert_eq!(rank(&s, t0), alone);
    // Ten members heard of through neighbour 1 rank ahead for some chunks.
    s.handle_peer_roster(1, &far, t0);
    assert!(rank(&s, t0) > alone);
    // Unheard of for a patience, they are out of the line again (as is
    // neighbour 1, which gained nothing in that time).
    let patience = SchedulerConfig::default().site_patience;
    let plain = device(0, &[1], t0);
    assert!(rank(&s, t0 + patience / 2) > rank(&plain, t0 + patience / 2));
    assert_eq!(rank(&s, t0 + patience), rank(&plain, t0 + patience));
}

#[test]
fn the_roster_lists_fetching_neighbours_of_the_site_but_not_the_asker() {
    let t0 = Instant::now();
    let mut s = device(0, &[1, 3], t0);
    let n = manifest(CHUNKS).chunks.len();
    add_peer(&mut s, 4, PeerClass::SameSite, &Bitfield::full(n), t0);
    s.handle_peer_fetching(4, false);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::new(n), t0);
    s.handle_peer_fetching(2, true);
    assert_eq!(s.fetching_neighbours(&1, t0), vec![peer_hash(&3)]);
    let mut all = s.fetching_neighbours(&9, t0);
    all.sort_unstable();
    let mut want = vec![peer_hash(&1), peer_hash(&3)];
    want.sort_unstable();
    assert_eq!(all, want);
}

#[test]
fn made_up_members_put_a_device_back_by_a_few_places_at_most() {
    let t0 = Instant::now();
    let mut s = device(0, &[1], t0);
    let n = manifest(CHUNKS).chunks.len();
    let before: Vec<u32> = (0..n).map(|i| s.site_standing(i, t0).unwrap().0).collect();
    let fake: Vec<u64> = (1000..1000 + MAX_ROSTER as u32)
        .map(|p| peer_hash(&p))
        .collect();
    s.handle_peer_roster(1, &fake, t0);
    let after: Vec<u32> = (0..n).map(|i| s.site_standing(i, t0).unwrap().0).collect();
    assert!(after.iter().sum::<u32>() > before.iter().sum::<u32>());
    for (was, now) in before.iter().zip(&after) {
        assert!(
            now <= &(was + MAX_ROSTER_RANK as u32),
            "{before:?} -> {after:?}"
        );
    }
}
