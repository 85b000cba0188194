//! Which providers a fetch dials: few, each device its own, and not the
//! same far refuser again and again; and how often it looks them up.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Most providers of other sites a fetch with a site keeps dialled at
/// once. A lookup under the release's key names up to 20, and each
/// connection costs a handshake and `Have` polls over both sites' WAN
/// links; a device pulls only the chunks it is the site's home for, which
/// a few far peers serve as well as twenty. Which ones is a hash of both
/// peer ids, so the fleet does not crowd the same few. With eight (and
/// as many dialled in by other sites), `Have` polls and set-up with far
/// peers were 0.55-0.60 bundles of each site's WAN bytes on
/// `cellular-1000`; with four, 0.36, and the site took no more chunks
/// from far peers (1.40 bundles against 1.50-1.56), in about the same
/// time (`BENCHMARKS.md`, 2026-12-06, evening, second stop).
pub(super) const MAX_FAR_DIALS: usize = 4;

/// Most providers of its own site a fetch dials itself, counting those
/// already connected. Site lookups (repeated every 10 s while the device
/// would pull over the WAN) name 20 providers each, at random, and
/// dialling them all connected every device to most of its site: in
/// `cellular-1000` (50 devices a site) the devices opened 26,000
/// connections among themselves in the first minute, each a handshake (a
/// quarter of the ramp's CPU went to X25519 and Ed25519) and each
/// neighbour polled for `Have` every 1-4 s.
/// Eight neighbours dialled, plus those that dial in, keep a site's mesh
/// connected in a few hops: the run took 361-366 s instead of 423-430 s.
/// Four took as long (359 s) and sixteen longer (389 s).
pub(super) const MAX_SITE_DIALS: usize = 8;

/// Least time before a fetch dials the same far provider again. A
/// provider at its connection limit refuses, but only after a full
/// handshake. When every far lookup named a release's first 20 providers
/// (libp2p-kad's `MemoryStore`, before [`super::super::providers`]),
/// those sat at their limit, and re-dialled at every lookup one took
/// 7,000-7,900 connections in the eight minutes of `cellular-1000`. Not
/// re-dialled for a minute, the dialler tries the lookup's other
/// providers instead.
pub(super) const FAR_REDIAL: Duration = Duration::from_secs(60);

/// Least time between provider lookups for one fetch.
pub(super) const PROVIDER_REFRESH: Duration = Duration::from_secs(5);
/// Repeated lookups that name no new provider double the pause, this
/// many times at most (16 × the refresh: 80-160 s).
const LOOKUP_BACKOFF: u32 = 4;

/// The pause before repeating a lookup, `refresh` after `in_vain`
/// lookups that led to no dial (see `Fetches::providers_found`). Every
/// answer comes from the DHT's servers: in the simulator the origin
/// alone, and in a fleet the few peers nearest the release's key, who
/// are asked by the whole fleet. Behind a 0.5 Mbit/s origin, 1,000 devices asking every
/// 5-10 s made 22,000 lookups in 150 s, each answered over its uplink;
/// 6,200-6,800 with the back-off.
pub(super) fn lookup_pause(refresh: Duration, in_vain: u32) -> Duration {
    crate::sched::doubled(refresh, in_vain, refresh * (1 << LOOKUP_BACKOFF))
}
/// Which of `candidates` (far providers not connected) to dial, given
/// those this fetch `dialled` before: up to [`MAX_FAR_DIALS`] connected
/// in all, none dialled within [`FAR_REDIAL`], in an order of this
/// device's own (BLAKE3 of both peer ids), so devices spread over the
/// providers rather than crowd the first few a lookup names. Records
/// the dials in `dialled`.
pub(super) fn far_dials(
    local: &PeerId,
    mut candidates: Vec<PeerId>,
    dialled: &mut HashMap<PeerId, Instant>,
    connected: &HashSet<PeerId>,
    now: Instant,
) -> Vec<PeerId> {
    dialled.retain(|q, at| connected.contains(q) || now < *at + FAR_REDIAL);
    let up = dialled.keys().filter(|q| connected.contains(q)).count();
    candidates.retain(|p| !dialled.contains_key(p) && !connected.contains(p));
    spread(local, &mut candidates);
    candidates.truncate(MAX_FAR_DIALS.saturating_sub(up));
    for p in &candidates {
        dialled.insert(*p, now);
    }
    candidates
}

/// Which of `candidates` (providers of this device's site) to dial, with
/// `up` of the site's providers connected already: up to
/// [`MAX_SITE_DIALS`] in all, in this device's own order, so that a
/// site's devices do not all dial the same few.
pub(super) fn site_dials(
    local: &PeerId,
    mut candidates: Vec<PeerId>,
    up: usize,
    connected: &HashSet<PeerId>,
) -> Vec<PeerId> {
    candidates.retain(|p| !connected.contains(p));
    spread(local, &mut candidates);
    candidates.truncate(MAX_SITE_DIALS.saturating_sub(up));
    candidates
}

/// Sorts `peers` in an order of `local`'s own (BLAKE3 of both peer ids)
/// and drops repeats.
fn spread(local: &PeerId, peers: &mut Vec<PeerId>) {
    let me = local.to_bytes();
    peers.sort_by_cached_key(|p| {
        let mut h = blake3::Hasher::new();
        h.update(&me);
        h.update(&p.to_bytes());
        *h.finalize().as_bytes()
    });
    peers.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_that_lead_to_no_dial_are_repeated_ever_less_often() {
        let r = PROVIDER_REFRESH;
        let pauses: Vec<Duration> = (0..7).map(|n| lookup_pause(r, n)).collect();
        assert_eq!(pauses[0], r);
        assert_eq!(pauses[1], r * 2);
        assert_eq!(pauses[LOOKUP_BACKOFF as usize], r * 16);
        assert_eq!(pauses[6], r * 16, "capped");
        assert_eq!(lookup_pause(r, u32::MAX), r * 16);
    }

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    /// Dials of `far` by a device with `connected` up and nothing
    /// dialled before.
    fn dials(me: &PeerId, far: &[PeerId], connected: &[PeerId]) -> Vec<PeerId> {
        let connected: HashSet<PeerId> = connected.iter().copied().collect();
        let mut dialled: HashMap<PeerId, Instant> =
            connected.iter().map(|p| (*p, Instant::now())).collect();
        far_dials(me, far.to_vec(), &mut dialled, &connected, Instant::now())
    }

    #[test]
    fn a_device_dials_at_most_four_far_providers_counting_those_already_up() {
        let (me, far) = (PeerId::random(), peers(20));
        assert_eq!(dials(&me, &far, &[]).len(), MAX_FAR_DIALS);
        assert_eq!(dials(&me, &far, &far[..1]).len(), MAX_FAR_DIALS - 1);
        assert!(dials(&me, &far, &far[..MAX_FAR_DIALS]).is_empty());
        assert!(dials(&me, &far, &far[..MAX_FAR_DIALS + 3]).is_empty());
    }

    /// `pick` (a device's choice among twenty providers, none connected)
    /// does not depend on the order the lookup gave them, and twenty
    /// devices choosing `max` of twenty do not all crowd the same `max`
    /// (whose union would be `max`).
    fn assert_each_device_picks_its_own(
        pick: impl Fn(&PeerId, &[PeerId]) -> Vec<PeerId>,
        max: usize,
    ) {
        let found = peers(20);
        let me = PeerId::random();
        let mut reversed = found.clone();
        reversed.reverse();
        assert_eq!(pick(&me, &reversed), pick(&me, &found));
        let chosen: HashSet<PeerId> = (0..20)
            .flat_map(|_| pick(&PeerId::random(), &found))
            .collect();
        assert!(chosen.len() > max, "{}", chosen.len());
    }

    #[test]
    fn each_device_picks_its_own_far_providers_whatever_order_the_lookup_gave() {
        assert_each_device_picks_its_own(|me, far| dials(me, far, &[]), MAX_FAR_DIALS);
    }

    #[test]
    fn a_device_dials_at_most_eight_site_providers_counting_those_already_up() {
        let (me, site) = (PeerId::random(), peers(20));
        let none = HashSet::new();
        let all = site_dials(&me, site.clone(), 0, &none);
        assert_eq!(all.len(), MAX_SITE_DIALS);
        assert_eq!(
            site_dials(&me, site.clone(), 5, &none).len(),
            MAX_SITE_DIALS - 5
        );
        assert!(site_dials(&me, site.clone(), MAX_SITE_DIALS, &none).is_empty());
        // Connected ones are not dialled again, and repeats count once.
        let connected: HashSet<PeerId> = all[..3].iter().copied().collect();
        let mut twice = site.clone();
        twice.extend(site.iter().copied());
        let again = site_dials(&me, twice, 3, &connected);
        assert_eq!(again.len(), MAX_SITE_DIALS - 3);
        assert!(again.iter().all(|p| !connected.contains(p)));
        assert_eq!(again, all[3..]);
        // A site with fewer providers than the limit is dialled whole.
        assert_eq!(site_dials(&me, site[..4].to_vec(), 0, &none).len(), 4);
    }

    #[test]
    fn each_device_picks_its_own_site_providers() {
        let none = HashSet::new();
        assert_each_device_picks_its_own(
            |me, site| site_dials(me, site.to_vec(), 0, &none),
            MAX_SITE_DIALS,
        );
    }

    #[test]
    fn a_far_provider_that_dropped_the_connection_is_not_dialled_again_for_a_minute() {
        let (me, far) = (PeerId::random(), peers(20));
        let (t0, mut dialled, mut connected) = (Instant::now(), HashMap::new(), HashSet::new());
        let first = far_dials(&me, far.clone(), &mut dialled, &connected, t0);
        assert_eq!(first.len(), MAX_FAR_DIALS);
        // The first one refuses (its connection closes at once), the rest
        // stay up; the next lookup names the same twenty.
        connected.extend(first[1..].iter().copied());
        let t1 = t0 + Duration::from_secs(10);
        let second = far_dials(&me, far.clone(), &mut dialled, &connected, t1);
        assert_eq!(second.len(), 1, "one slot is free");
        assert!(!second.contains(&first[0]), "the refuser is left alone");
        assert!(
            !first.contains(&second[0]),
            "another provider takes its place"
        );
        // That one refuses too; a minute after the first refusal, the
        // first refuser may be tried again (and is this device's first
        // choice), the second not yet.
        let t2 = t0 + FAR_REDIAL;
        let third = far_dials(&me, far, &mut dialled, &connected, t2);
        assert_eq!(third, vec![first[0]]);
    }
}
