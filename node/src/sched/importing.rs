//! What the site is importing: chunks this device has asked of the WAN
//! and awaits, told to neighbours in `Have` answers, and what each
//! neighbour told us of its own.
//!
//! The rendezvous line ([`Scheduler::home_rank`]) has the k-th device in
//! line for a chunk step in after k × `site_patience`, for a home that
//! cannot get it. On a loaded site link a home's WAN answer often takes
//! longer than that, and then the line stepped in on a home that was
//! about to succeed. With 20 devices a site starting together (200
//! devices, one wave), site WAN bytes were 1.75–2.43 × the bundle, and
//! 1.18–1.46 × with a patience of 30 s instead of 8 s. A neighbour that
//! says it awaits the chunk from the WAN is worth waiting for. At 1,000
//! devices, wave 1 (five devices a site) then imported 1.00–1.17
//! bundles a site in chunks kept in all but one site, where it had
//! imported 1.0–1.5.
//!
//! A claim is waited for `claim_patience` from when it was first heard,
//! and lasts through `Busy` refusals (`REFUSED_CLAIM`). It used to be
//! waited for `answer_timeout` from this device's own deferral of the
//! chunk, by then mostly minutes old, and to vanish with each refusal:
//! on `cellular-1000` a median of 12 of a site's 50 devices asked the WAN
//! for one chunk, and the busiest site imported 3.6-4.6 bundles; with
//! both changes and a separate clock for the origin's line (`pick`), 2.7
//! (BENCHMARKS.md, 2026-12-06, late).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use meshota_protocol::Bitfield;
use smallvec::SmallVec;

use super::{PeerClass, Scheduler};

/// How long a chunk refused `Busy` by a peer beyond the site stays
/// claimed ([`Scheduler::importing`]). On slow uplinks most WAN requests
/// are refused several times before one is taken; claiming only the
/// requests in flight, the claim was there for the few milliseconds of
/// each refusal, neighbours polling in between heard none, and those
/// whose turn had come asked the WAN too. Longer than the longest
/// back-off after `Busy` (1 s), so a claimant retrying keeps its claim.
pub(super) const REFUSED_CLAIM: Duration = Duration::from_secs(5);

/// Chunk bits, one per distinct chunk.
pub(super) type Bits = SmallVec<[u64; 2]>;

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The manifest positions this device is importing: missing chunks it
    /// has asked of peers of other sites or the origin and awaits, was
    /// refused `Busy` by one within `REFUSED_CLAIM`, or claims for a check
    /// (`sched::check`). What a `Have`
    /// answer to a same-site neighbour carries, so that the neighbour
    /// does not pull them too. Claiming also the chunks a home had asked
    /// for long before and would retry held the rest of the site back
    /// while the home worked through its queue, and doubled wave 1's time
    /// at 1,000 devices (30 to 70 s).
    pub fn importing(&self) -> Bitfield {
        let mut b = Bitfield::new(self.pos_to_unique.len());
        for u in self.in_flight.iter() {
            let c = &self.chunks[u as usize];
            let wan = c.in_flight.iter().any(|f| {
                self.peers
                    .get(&f.peer)
                    .is_some_and(|p| p.class != PeerClass::SameSite)
            });
            if wan {
                b.set(c.pos);
            }
        }
        let now = self.now_hint;
        for &u in &self.missing {
            let c = &self.chunks[u as usize];
            if c.refused_at.is_some_and(|t| now < t + REFUSED_CLAIM) || self.intends(u, now) {
                b.set(c.pos);
            }
        }
        b
    }

    /// A same-site `peer` said which chunks it awaits from the WAN (its
    /// latest word replaces the one before; `None`: nothing). Ignored for
    /// a peer of another class or unknown.
    pub fn handle_peer_importing(&mut self, peer: P, importing: Option<&Bitfield>, now: Instant) {
        self.take_claim(peer, importing, false, now);
    }

    /// A same-site `peer` relayed what its other neighbours import (see
    /// [`Self::relayed_for`]); waited for like its own claims. Two hops
    /// matter when a site's devices start together: each knows only
    /// some of the site, so several take themselves for a chunk's home,
    /// and a claim one hop away reached too few of them. With 50 devices a
    /// site starting together (300 devices, one wave), sites imported up
    /// to 4.7 copies.
    pub fn handle_peer_relayed(&mut self, peer: P, relayed: Option<&Bitfield>, now: Instant) {
        self.take_claim(peer, relayed, true, now);
    }

    fn take_claim(&mut self, peer: P, positions: Option<&Bitfield>, relayed: bool, now: Instant) {
        self.touch(now);
        let Some(bits) = self.site_bits(&peer, positions) else {
            return;
        };
        let map = if relayed {
            &mut self.relays
        } else {
            &mut self.importers
        };
        if Self::replace(map, peer, bits) {
            self.recount_importing(now);
        }
    }

    /// What to relay to same-site neighbour `asker`: the chunks the other
    /// neighbours said they import themselves. Relays are never relayed
    /// again, and the asker's own claims are left out, so no claim comes
    /// back to its maker or outlives its maker's next answer by more than
    /// one refresh. Relaying relays as well, so that a claim crossed the
    /// site hop by hop, held whole sites back: on `cellular-1000` the
    /// fleet had fetched 2.3 GB at 200 s instead of 6.5 GB (my reading,
    /// not traced: a claim, or one kept alive by relays in a circle,
    /// stopped all 50 devices while far uplinks refused the claimant).
    pub fn relayed_for(&self, asker: &P) -> Bitfield {
        self.relay_of(&self.importers, asker)
    }

    /// The union of what every same-site peer but `asker` said in `map`,
    /// by manifest position: what a relay to `asker` carries.
    pub(super) fn relay_of(&self, map: &BTreeMap<P, Bits>, asker: &P) -> Bitfield {
        let mut b = Bitfield::new(self.pos_to_unique.len());
        let all = self.union(
            map.iter()
                .filter(|(p, _)| *p != asker)
                .map(|(_, bits)| bits),
        );
        for (u, c) in self.chunks.iter().enumerate() {
            if all.get(u / 64).is_some_and(|w| w & (1 << (u % 64)) != 0) {
                b.set(c.pos);
            }
        }
        b
    }

    /// The distinct-chunk bits of a same-site peer's claim (`Some` of
    /// nothing for `None`), or `None` when the peer is not of our site.
    pub(super) fn site_bits(&self, peer: &P, positions: Option<&Bitfield>) -> Option<Option<Bits>> {
        if self.peers.get(peer).map(|p| p.class) != Some(PeerClass::SameSite) {
            return None;
        }
        let mut bits: Bits = smallvec::smallvec![0; self.chunks.len().div_ceil(64)];
        let mut any = false;
        if let Some(b) = positions {
            for (i, &u) in self.pos_to_unique.iter().enumerate() {
                if b.get(i) {
                    bits[u as usize / 64] |= 1 << (u % 64);
                    any = true;
                }
            }
        }
        Some(any.then_some(bits))
    }

    /// Sets or clears `peer`'s entry; whether anything changed.
    pub(super) fn replace(map: &mut BTreeMap<P, Bits>, peer: P, bits: Option<Bits>) -> bool {
        match bits {
            Some(bits) => map.insert(peer, bits.clone()) != Some(bits),
            None => map.remove(&peer).is_some(),
        }
    }

    /// Forgets what a peer that left said it imports, relayed, or said
    /// its site holds.
    pub(super) fn forget_site_news(&mut self, peer: &P) {
        let a = self.words.remove(peer).is_some();
        let b = self.far_words.remove(peer).is_some();
        if a || b {
            self.recount_heard();
        }
        let a = self.importers.remove(peer).is_some();
        let b = self.relays.remove(peer).is_some();
        if a || b {
            self.recount_importing(self.now_hint);
        }
    }

    fn recount_importing(&mut self, now: Instant) {
        self.site_importing = self.union(self.importers.values().chain(self.relays.values()));
        for u in 0..self.chunks.len() {
            let claimed = self.site_imports(u as u32);
            let c = &mut self.chunks[u];
            match (claimed, c.claimed_since) {
                (true, None) => c.claimed_since = Some(now),
                (false, Some(_)) => c.claimed_since = None,
                _ => {}
            }
        }
    }

    /// The union of claims, one bit per distinct chunk.
    pub(super) fn union<'a>(&self, claims: impl Iterator<Item = &'a Bits>) -> Bits {
        let mut all: Bits = smallvec::smallvec![0; self.chunks.len().div_ceil(64)];
        for bits in claims {
            for (a, b) in all.iter_mut().zip(bits) {
                *a |= b;
            }
        }
        all
    }

    /// For the WAN log: this device's place in its site's line for the
    /// chunk at manifest position `index` (0: its home), and whether a
    /// neighbour said it imports the chunk.
    pub fn site_standing(&self, index: usize, now: Instant) -> Option<(u32, bool)> {
        let &u = self.pos_to_unique.get(index)?;
        Some((
            self.home_rank(u, super::pick::Scope::Site, now),
            self.site_imports(u),
        ))
    }

    /// Whether a neighbour awaits chunk `u` from the WAN.
    pub(super) fn site_imports(&self, u: u32) -> bool {
        self.site_importing
            .get(u as usize / 64)
            .is_some_and(|w| w & (1 << (u % 64)) != 0)
    }
}
