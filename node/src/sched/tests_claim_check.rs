//! Scheduler tests of the claim check (`sched::check`): a device that
//! steps in on a chunk's home tells its site it is about to pull the
//! chunk over the WAN, and listens for `claim_check` before it does.

use std::time::{Duration, Instant};

use meshota_protocol::Bitfield;

use super::tests::{add_peer, cfg, drain, manifest, positions, requests};
use super::*;

const CHECK: Duration = Duration::from_secs(1);
/// Manifest size: enough chunks (about 50) that each device is first or
/// second in line for several.
const M: usize = 24;

fn n() -> usize {
    manifest(M).chunks.len()
}

/// Device 0 with a far peer (2) holding everything and same-site
/// neighbours `site` that hold nothing and fetch too.
fn device(seed: u64, site: &[u32], t0: Instant) -> Scheduler<u32> {
    let mut c = cfg(seed);
    c.claim_check = CHECK;
    // No poll falls due by itself: a `Have` request is the check's.
    c.have_refresh = Duration::from_secs(3600);
    c.have_refresh_max = Duration::from_secs(3600);
    let mut s = Scheduler::new(&manifest(M), &Bitfield::new(n()), c, t0);
    s.set_local_peer(0);
    for &p in site {
        add_peer(&mut s, p, PeerClass::SameSite, &Bitfield::new(n()), t0);
        s.handle_peer_fetching(p, true);
    }
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n()), t0);
    s
}

/// Every position device 0 asks for at `now`, a window at a time, each
/// answered at once by the peer asked; sorted.
fn pull_all(s: &mut Scheduler<u32>, now: Instant) -> Vec<usize> {
    let mut all = Vec::new();
    loop {
        let got = requests(&drain(s, now));
        if got.is_empty() {
            all.sort_unstable();
            return all;
        }
        for (peer, i) in got {
            assert_eq!(peer, 2, "asked a neighbour that holds nothing");
            s.handle_chunk_arrived(peer, i, 10, now);
            all.push(i);
        }
    }
}

/// Pulls device 0's home chunks at `t0` (unchecked) and lands them; then,
/// one patience later, lets its place in line come for the rest, which it
/// checks. Returns the time of that step and the chunks it checks.
fn step_in(s: &mut Scheduler<u32>, t0: Instant) -> (Instant, Vec<usize>) {
    assert!(!pull_all(s, t0).is_empty(), "the home waited for a check");
    let t1 = t0 + SchedulerConfig::default().site_patience;
    s.handle_timeout(t1);
    let first = drain(s, t1);
    assert_eq!(
        requests(&first),
        vec![],
        "stepped in before telling the site"
    );
    assert!(
        first
            .iter()
            .any(|a| matches!(a, Action::QueryHave { peer: 1 })),
        "the neighbour was not asked at once: {first:?}"
    );
    let checked = positions(&s.importing());
    assert!(!checked.is_empty(), "the check claims nothing");
    (t1, checked)
}

#[test]
fn a_device_stepping_in_tells_its_site_at_once_and_pulls_one_check_later() {
    let t0 = Instant::now();
    let mut s = device(31, &[1], t0);
    let (t1, checked) = step_in(&mut s, t0);
    assert_eq!(s.poll_timeout(), Some(t1 + CHECK));
    let t2 = t1 + CHECK;
    s.handle_timeout(t2);
    assert_eq!(pull_all(&mut s, t2), checked);
}

#[test]
fn without_a_check_a_device_steps_in_at_once() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(&manifest(M), &Bitfield::new(n()), cfg(31), t0);
    s.set_local_peer(0);
    add_peer(&mut s, 1, PeerClass::SameSite, &Bitfield::new(n()), t0);
    s.handle_peer_fetching(1, true);
    add_peer(&mut s, 2, PeerClass::OtherSite, &Bitfield::full(n()), t0);
    pull_all(&mut s, t0);
    let t1 = t0 + SchedulerConfig::default().site_patience;
    s.handle_timeout(t1);
    assert!(!requests(&drain(&mut s, t1)).is_empty());
}

#[test]
fn a_relayed_claim_heard_during_the_check_keeps_the_pull_back_and_ends_this_devices_claim() {
    let t0 = Instant::now();
    let mut s = device(32, &[1], t0);
    let (t1, _) = step_in(&mut s, t0);
    // A device two hops away claims every chunk: who it is, and so
    // whether it ranks first, is unknown.
    s.handle_peer_relayed(1, Some(&Bitfield::full(n())), t1 + CHECK / 2);
    let t2 = t1 + CHECK;
    s.handle_timeout(t2);
    assert_eq!(
        requests(&drain(&mut s, t2)),
        vec![],
        "pulled a claimed chunk"
    );
    assert_eq!(positions(&s.importing()), Vec::<usize>::new());
}

#[test]
fn of_two_neighbours_that_check_at_once_the_one_first_in_line_goes_on() {
    let t0 = Instant::now();
    // Neighbour 3 is the home of the chunks device 0 steps in on; of
    // those, neighbour 1 ranks ahead of device 0 for some and behind it
    // for the rest.
    let mut s = device(35, &[1, 3], t0);
    let (t1, checked) = step_in(&mut s, t0);
    // Which of the checked chunks neighbour 1 ranks behind device 0 for:
    // device 0's place without neighbour 3 in line.
    let mut pair = device(35, &[1], t0);
    let _ = drain(&mut pair, t0);
    let behind: Vec<usize> = checked
        .iter()
        .copied()
        .filter(|&i| pair.site_standing(i, t0).is_some_and(|(rank, _)| rank == 0))
        .collect();
    assert!(
        !behind.is_empty() && behind.len() < checked.len(),
        "this seed should give both kinds: {behind:?} of {checked:?}"
    );
    // Neighbour 1 checks every chunk at the same moment.
    s.handle_peer_importing(1, Some(&Bitfield::full(n())), t1 + CHECK / 2);
    let t2 = t1 + CHECK;
    s.handle_timeout(t2);
    assert_eq!(pull_all(&mut s, t2), behind);
}

#[test]
fn a_checks_claim_lapses_a_few_checks_later_when_no_request_follows() {
    let t0 = Instant::now();
    let mut s = device(34, &[1], t0);
    let (t1, checked) = step_in(&mut s, t0);
    // The far peer leaves: nothing can be pulled.
    s.handle_peer_lost(2, t1);
    let t2 = t1 + CHECK * 2;
    s.handle_timeout(t2);
    let _ = drain(&mut s, t2);
    assert_eq!(positions(&s.importing()), checked, "lapsed too soon");
    let t3 = t1 + CHECK * 4;
    s.handle_timeout(t3);
    let _ = drain(&mut s, t3);
    assert_eq!(positions(&s.importing()), Vec::<usize>::new());
}
