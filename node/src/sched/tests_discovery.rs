//! Discovery's rules, peers as numbers and time as an argument: how many
//! providers are dialled and which, when lookups are made and how they
//! back off, and which far peers are polled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::discovery::{
    lookup_pause, Discovery, DiscoveryAction, Stage, FAR_REDIAL, MAX_FAR_DIALS, MAX_SITE_DIALS,
    PROVIDER_REFRESH,
};

const ME: u32 = 0;

const fn downloading(sources: bool, grace: bool, wan_turn: bool) -> Stage {
    Stage::Downloading {
        sources,
        grace,
        wan_turn,
    }
}

/// Downloading, past the grace, with sources, and far peers wanted.
const WAN: Stage = downloading(true, false, true);
/// Downloading, past the grace, with sources, and the site holds it all.
const SETTLED: Stage = downloading(true, false, false);

fn actions(d: &mut Discovery<u32>) -> Vec<DiscoveryAction<u32>> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn dials(d: &mut Discovery<u32>) -> Vec<u32> {
    actions(d)
        .into_iter()
        .filter_map(|a| match a {
            DiscoveryAction::Dial(p) => Some(p),
            DiscoveryAction::Lookup { .. } => None,
        })
        .collect()
}

fn lookups(d: &mut Discovery<u32>) -> Vec<bool> {
    actions(d)
        .into_iter()
        .filter_map(|a| match a {
            DiscoveryAction::Lookup { far, .. } => Some(far),
            DiscoveryAction::Dial(_) => None,
        })
        .collect()
}

/// A device of a site, its first lookup taken.
fn device(me: u32, now: Instant) -> Discovery<u32> {
    let mut d = Discovery::new(me, true, now);
    assert_eq!(
        lookups(&mut d),
        vec![false],
        "the first lookup is of the site"
    );
    d
}

fn none(_: &u32) -> bool {
    false
}

#[test]
fn lookups_that_lead_to_no_dial_are_repeated_ever_less_often() {
    let r = PROVIDER_REFRESH;
    let pauses: Vec<Duration> = (0..7).map(|n| lookup_pause(r, n)).collect();
    assert_eq!(pauses[0], r);
    assert_eq!(pauses[1], r * 2);
    assert_eq!(pauses[4], r * 16);
    assert_eq!(pauses[6], r * 16, "capped");
    assert_eq!(lookup_pause(r, u32::MAX), r * 16);
}

#[test]
fn a_lookup_counts_as_in_vain_when_it_leads_to_no_dial() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    // Three lookups with nothing found while the manifest is sought.
    let mut t = t0;
    for _ in 0..3 {
        t += Duration::from_secs(200);
        d.handle_timeout(Stage::Resolving, none, t);
        assert_eq!(lookups(&mut d), vec![false]);
    }
    assert_eq!(d.lookups_in_vain(), 3);
    // Providers of the site not seen before, some dialled: not in vain.
    let site: Vec<u32> = (1..=MAX_SITE_DIALS as u32 + 4).collect();
    d.handle_providers(site, true, Stage::Resolving, none, t);
    let dialled = dials(&mut d);
    assert_eq!(dialled.len(), MAX_SITE_DIALS);
    assert_eq!(d.lookups_in_vain(), 0);
    // Once those are up, and far peers are wanted, lookups go on; those
    // that name only new providers of the site count as in vain, though
    // each provider was never seen before.
    let up: BTreeSet<u32> = dialled.into_iter().collect();
    let connected = |p: &u32| up.contains(p);
    d.handle_timeout(Stage::Resolving, connected, t + Duration::from_secs(200));
    assert!(lookups(&mut d).is_empty(), "a site provider is up");
    d.handle_timeout(WAN, connected, t);
    assert_eq!(lookups(&mut d), vec![true], "the first far lookup");
    for _ in 0..2 {
        t = d.poll_timeout(WAN, connected).unwrap();
        d.handle_timeout(WAN, connected, t);
        assert_eq!(lookups(&mut d), vec![true]);
    }
    assert_eq!(d.lookups_in_vain(), 2);
    d.handle_providers(100..106, true, WAN, connected, t);
    assert!(dials(&mut d).is_empty(), "dialled past the cap");
    assert_eq!(d.lookups_in_vain(), 2);
}

#[test]
fn a_device_whose_site_holds_everything_and_is_connected_does_not_look_up() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    d.handle_providers([7], true, SETTLED, none, t0);
    assert_eq!(dials(&mut d), vec![7]);
    let up = |p: &u32| *p == 7;
    assert_eq!(d.poll_timeout(SETTLED, up), None);
    assert_eq!(
        d.poll_timeout(SETTLED, none),
        None,
        "nor when it lacks nothing"
    );
    d.handle_timeout(SETTLED, up, t0 + Duration::from_secs(3600));
    assert!(actions(&mut d).is_empty());
    // Once it is this device's turn to pull over the WAN, it looks far.
    assert_eq!(
        d.poll_timeout(WAN, up),
        Some(t0),
        "first far lookup at once"
    );
    d.handle_timeout(WAN, up, t0 + Duration::from_secs(1));
    assert_eq!(lookups(&mut d), vec![true]);
}

#[test]
fn repeated_lookups_back_off_until_one_leads_to_a_dial() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    // No source known: every refresh, doubled per lookup in vain.
    let unsourced = downloading(false, true, false);
    let mut t = t0;
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let due = d.poll_timeout(unsourced, none).unwrap();
        d.handle_timeout(unsourced, none, due - Duration::from_millis(1));
        assert!(actions(&mut d).is_empty(), "not before it is due");
        d.handle_timeout(unsourced, none, due);
        assert_eq!(lookups(&mut d), vec![false]);
        gaps.push(due - t);
        t = due;
    }
    let r = PROVIDER_REFRESH;
    assert_eq!(gaps, vec![r, r * 2, r * 4, r * 8, r * 16, r * 16]);
    // A lookup that leads to a dial resets the pause.
    d.handle_providers([9], true, unsourced, none, t);
    assert_eq!(dials(&mut d), vec![9]);
    assert_eq!(d.poll_timeout(unsourced, none), Some(t + r));
}

#[test]
fn far_providers_found_before_they_are_wanted_are_kept_and_looked_up_again_later() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    let grace = downloading(true, true, true);
    d.handle_providers(20..30, false, grace, none, t0);
    assert!(dials(&mut d).is_empty(), "far peers wait out the grace");
    d.handle_timeout(WAN, none, t0 + Duration::from_millis(10));
    assert_eq!(lookups(&mut d), vec![true], "looked up again to be dialled");
    d.handle_providers(20..30, false, WAN, none, t0 + Duration::from_secs(1));
    assert_eq!(dials(&mut d).len(), MAX_FAR_DIALS);
}

#[test]
fn a_far_peer_that_dialled_in_is_not_polled_but_one_this_device_dialled_is() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    d.handle_providers([40], false, WAN, none, t0);
    assert_eq!(dials(&mut d), vec![40]);
    assert!(d.polls(&40, true), "dialled by this device");
    assert!(!d.polls(&41, true), "dialled in");
    assert!(d.polls(&41, false), "a peer of the site is always polled");
    let siteless = Discovery::new(ME, false, t0);
    assert!(
        siteless.polls(&41, true),
        "without a site every peer is used"
    );
}

#[test]
fn the_site_is_heard_once_its_lookup_is_done_and_every_dialled_provider_answered() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    d.handle_providing();
    d.handle_providers([3, 4], true, Stage::Resolving, none, t0);
    assert_eq!(dials(&mut d).len(), 2);
    d.handle_lookup_finished(true, false);
    assert!(
        !d.site_heard(|_| true),
        "the lookup after the provide is awaited"
    );
    d.handle_lookup_finished(true, true);
    assert!(!d.site_heard(|p| *p == 3), "4 has not answered");
    assert!(d.site_heard(|p| *p == 3 || *p == 4));
}

/// Dials of `far` by a device with `connected` up and nothing dialled
/// before.
fn far_dials(me: u32, far: &[u32], connected: &[u32]) -> Vec<u32> {
    let t0 = Instant::now();
    let mut d = device(me, t0);
    let up: BTreeSet<u32> = connected.iter().copied().collect();
    let is_up = |p: &u32| up.contains(p);
    // The connected ones are this device's own earlier dials.
    d.handle_providers(connected.iter().copied(), false, WAN, none, t0);
    actions(&mut d);
    d.handle_providers(far.iter().copied(), false, WAN, is_up, t0);
    dials(&mut d)
}

#[test]
fn a_device_dials_at_most_four_far_providers_counting_those_already_up() {
    let far: Vec<u32> = (100..120).collect();
    assert_eq!(far_dials(ME, &far, &[]).len(), MAX_FAR_DIALS);
    assert_eq!(far_dials(ME, &far, &far[..1]).len(), MAX_FAR_DIALS - 1);
    assert!(far_dials(ME, &far, &far[..MAX_FAR_DIALS]).is_empty());
}

/// `pick` (a device's choice among twenty providers, none connected)
/// does not depend on the order the lookup gave them, and twenty
/// devices choosing `max` of twenty do not all crowd the same `max`.
fn assert_each_device_picks_its_own(pick: impl Fn(u32, &[u32]) -> Vec<u32>, max: usize) {
    let found: Vec<u32> = (100..120).collect();
    let mut reversed = found.clone();
    reversed.reverse();
    assert_eq!(pick(1, &found), pick(1, &reversed));
    let chosen: BTreeSet<u32> = (1..=20).flat_map(|me| pick(me, &found)).collect();
    assert!(chosen.len() > max, "{}", chosen.len());
}

#[test]
fn each_device_picks_its_own_far_providers_whatever_order_the_lookup_gave() {
    assert_each_device_picks_its_own(|me, far| far_dials(me, far, &[]), MAX_FAR_DIALS);
}

/// Dials of site providers `site` by a device with `up` of them up.
fn site_dials(me: u32, site: &[u32], up: &[u32]) -> Vec<u32> {
    let t0 = Instant::now();
    let mut d = device(me, t0);
    let up: BTreeSet<u32> = up.iter().copied().collect();
    d.handle_providers(site.iter().copied(), true, WAN, |p| up.contains(p), t0);
    dials(&mut d)
}

#[test]
fn a_device_dials_at_most_eight_site_providers_counting_those_already_up() {
    let site: Vec<u32> = (100..120).collect();
    let all = site_dials(ME, &site, &[]);
    assert_eq!(all.len(), MAX_SITE_DIALS);
    let again = site_dials(ME, &site, &all[..3]);
    assert_eq!(again.len(), MAX_SITE_DIALS - 3);
    assert!(again.iter().all(|p| !all[..3].contains(p)));
    assert_eq!(again, all[3..], "the same order, the connected skipped");
    assert!(site_dials(ME, &site, &all).is_empty());
    // Repeats count once, and a small site is dialled whole.
    let mut twice = site[..4].to_vec();
    twice.extend_from_slice(&site[..4]);
    assert_eq!(site_dials(ME, &twice, &[]).len(), 4);
}

#[test]
fn each_device_picks_its_own_site_providers() {
    assert_each_device_picks_its_own(|me, site| site_dials(me, site, &[]), MAX_SITE_DIALS);
}

#[test]
fn a_far_provider_that_dropped_the_connection_is_not_dialled_again_for_a_minute() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    let far: Vec<u32> = (100..120).collect();
    d.handle_providers(far.clone(), false, WAN, none, t0);
    let first = dials(&mut d);
    assert_eq!(first.len(), MAX_FAR_DIALS);
    // The first one refuses (its connection closes at once), the rest
    // stay up; the next lookup names the same twenty.
    let up: BTreeSet<u32> = first[1..].iter().copied().collect();
    let is_up = |p: &u32| up.contains(p);
    let t1 = t0 + Duration::from_secs(10);
    d.handle_providers(far.clone(), false, WAN, is_up, t1);
    let second = dials(&mut d);
    assert_eq!(second.len(), 1, "one slot is free");
    assert!(!second.contains(&first[0]), "the refuser is left alone");
    assert!(
        !first.contains(&second[0]),
        "another provider takes its place"
    );
    // That one refuses too; a minute after the first refusal, the first
    // refuser may be tried again (and is this device's first choice),
    // the second not yet.
    d.handle_providers(far, false, WAN, is_up, t0 + FAR_REDIAL);
    assert_eq!(dials(&mut d), vec![first[0]]);
}

#[test]
fn a_holder_an_origin_names_is_dialled_once_and_its_answers_are_used() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    assert!(
        !d.polls(&500, true),
        "a far peer nobody named is not polled"
    );
    assert!(
        !d.handle_hint(500, false, none, t0),
        "taken from a peer that is no origin"
    );
    assert!(!d.polls(&500, true));
    assert!(d.handle_hint(500, true, none, t0));
    assert!(d.polls(&500, true), "its Have answers are used");
    // Named again (another withheld chunk), it is not dialled again.
    let up = |p: &u32| *p == 500;
    assert!(!d.handle_hint(500, true, up, t0 + Duration::from_secs(1)));
    assert!(!d.handle_hint(500, true, none, t0 + Duration::from_secs(30)));
    // Its dial failed a minute ago: it may be tried again.
    assert!(d.handle_hint(500, true, none, t0 + FAR_REDIAL + Duration::from_secs(1)));
    assert!(!d.handle_hint(ME, true, none, t0), "never itself");
}

#[test]
fn names_from_an_origin_make_a_device_dial_a_bounded_number_of_holders() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    let followed = (600..700u32)
        .filter(|&p| d.handle_hint(p, true, none, t0))
        .count();
    assert_eq!(followed, 2 * MAX_FAR_DIALS);
    // Once those dials are a minute old and none connected, others may be.
    let later = t0 + FAR_REDIAL;
    assert!(d.handle_hint(700, true, none, later));
    // Hints dial of themselves: no lookup or dial is queued for them.
    assert!(actions(&mut d).is_empty());
}

/// The lookups' `(far, site)` pairs.
fn lookup_keys(d: &mut Discovery<u32>) -> Vec<(bool, bool)> {
    actions(d)
        .into_iter()
        .filter_map(|a| match a {
            DiscoveryAction::Lookup { far, site } => Some((far, site)),
            DiscoveryAction::Dial(_) => None,
        })
        .collect()
}

#[test]
fn a_far_lookup_leaves_out_the_site_key_once_the_site_dials_are_all_up() {
    let t0 = Instant::now();
    let mut d = device(ME, t0);
    let site: Vec<u32> = (1..=MAX_SITE_DIALS as u32 + 4).collect();
    d.handle_providers(site, true, WAN, none, t0);
    let dialled = dials(&mut d);
    assert_eq!(dialled.len(), MAX_SITE_DIALS);
    // One short of the cap: the site's answer could still add a dial.
    let short: BTreeSet<u32> = dialled[1..].iter().copied().collect();
    let short_up = |p: &u32| short.contains(p);
    let t = t0 + Duration::from_secs(1);
    d.handle_timeout(WAN, short_up, t);
    assert_eq!(lookup_keys(&mut d), vec![(true, true)]);
    // All up: the repeated far lookup asks the release's key alone.
    let up: BTreeSet<u32> = dialled.iter().copied().collect();
    let all_up = |p: &u32| up.contains(p);
    let t = d.poll_timeout(WAN, all_up).unwrap();
    d.handle_timeout(WAN, all_up, t);
    assert_eq!(lookup_keys(&mut d), vec![(true, false)]);
    // A stalled download looks everywhere, whatever is up.
    d.handle_stalled();
    assert_eq!(lookup_keys(&mut d), vec![(true, true)]);
}

#[test]
fn a_lookup_of_the_site_alone_always_asks_the_site_key() {
    let t0 = Instant::now();
    let mut d = Discovery::new(ME, true, t0);
    assert_eq!(lookup_keys(&mut d), vec![(false, true)]);
    // Resolving, with nothing up: repeated site lookups.
    d.handle_timeout(Stage::Resolving, none, t0 + Duration::from_secs(200));
    assert_eq!(lookup_keys(&mut d), vec![(false, true)]);
}
