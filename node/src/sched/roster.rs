//! The site's roster: same-site members fetching the release that this
//! device does not know directly, heard of from its neighbours.
//!
//! The rendezvous decides which member of a site pulls a chunk over the
//! WAN: the one that ranks first for it among the members still fetching.
//! A device knows directly only the neighbours it is connected to,
//! about half of a 50-device site. When a site's devices start together,
//! each one that ranks first among the members *it* knows takes itself
//! for the home, and several pull every chunk: with 50 devices a site in
//! one wave, sites imported two to five copies. Each `Have` answer to a
//! same-site asker therefore lists the answerer's fetching neighbours by
//! their rendezvous key ([`Scheduler::fetching_neighbours`]); the asker
//! ranks itself against them too ([`Scheduler::handle_peer_roster`]).
//! Lists are never passed on further, and an entry not heard again within
//! `site_patience` is forgotten, so a member that stops fetching or
//! leaves drops out of the line within a patience.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use super::pick::Scope;
use super::state::mix;
use super::{PeerClass, Scheduler};

/// Most keys one answer carries or one device remembers. A site larger
/// than this is ranked against part of it, as before the roster.
pub const MAX_ROSTER: usize = 256;

/// Most places in line that members heard of can put this device back.
/// Whether any of them ranks ahead is what keeps a device from taking
/// itself for a chunk's home; how many only spaces out the line behind a
/// home that fails. Capped, a same-site peer listing made-up keys delays
/// each chunk by at most this many patiences, not by hundreds.
pub const MAX_ROSTER_RANK: usize = 3;

/// Rendezvous keys heard of, with when each was last heard.
pub(super) type Roster = BTreeMap<u64, Instant>;

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The rendezvous keys of the same-site neighbours in line (fetching
    /// this release, not stalled) but `asker`: what a `Have` answer to a
    /// same-site asker lists.
    pub fn fetching_neighbours(&self, asker: &P, now: Instant) -> Vec<u64> {
        self.peers
            .iter()
            .filter(|(p, q)| *p != asker && self.in_line(q, Scope::Site, now))
            .map(|(_, q)| q.hash)
            .take(MAX_ROSTER)
            .collect()
    }

    /// A same-site `peer` listed its fetching neighbours. Ignored from a
    /// peer of another class or unknown.
    pub fn handle_peer_roster(&mut self, peer: P, keys: &[u64], now: Instant) {
        self.touch(now);
        if self.peers.get(&peer).map(|p| p.class) != Some(PeerClass::SameSite) {
            return;
        }
        let patience = self.cfg.site_patience;
        self.roster.retain(|_, heard| now < *heard + patience);
        // Peers known directly are ranked as such (see `home_rank`).
        let mut direct: Vec<u64> = self.peers.values().map(|q| q.hash).collect();
        direct.sort_unstable();
        for &k in keys.iter().take(MAX_ROSTER) {
            let known = direct.binary_search(&k).is_ok();
            let full = self.roster.len() >= MAX_ROSTER && !self.roster.contains_key(&k);
            if Some(k) == self.me || known || full {
                continue;
            }
            self.roster.insert(k, now);
        }
    }

    /// A peer now known directly leaves the roster, so it is not
    /// counted twice.
    pub(super) fn known_directly(&mut self, hash: u64) {
        self.roster.remove(&hash);
    }

    /// How many members heard of only through neighbours rank ahead of
    /// this device (weight `mine`) for the chunk of hash `chunk`, up to
    /// [`MAX_ROSTER_RANK`].
    pub(super) fn roster_ahead(&self, chunk: u64, mine: u64, now: Instant) -> usize {
        if self.roster.is_empty() {
            return 0;
        }
        let patience = self.cfg.site_patience;
        self.roster
            .iter()
            .filter(|(k, heard)| now < **heard + patience && mix(**k ^ chunk) < mine)
            .take(MAX_ROSTER_RANK)
            .count()
    }
}
