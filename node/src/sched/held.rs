//! What the site holds: chunks some member of this device's site holds,
//! heard through neighbours, though no peer this device knows directly
//! may hold them yet.
//!
//! A device knows directly about eight of a 50-device site. On slow
//! uplinks a chunk the site imported takes minutes to reach every member
//! (50 uplinks of 0.5 Mbit/s pass 49 copies of 16 MiB in no less than
//! about 268 s), and a device whose neighbours all lacked it took it for
//! missing from the site: once its turn in the line came, or a
//! neighbour's claim had been waited for `answer_timeout`, it pulled the
//! chunk over the WAN again. On `cellular-1000` a median of 25 devices of
//! each site's 50 asked the WAN for the same chunk, three in four of them
//! while a neighbour claimed it, and the busiest site imported 6-8
//! bundles.
//!
//! So each `Have` answer to a same-site asker carries what the answerer's
//! neighbours hold ([`Scheduler::site_holds`]) and what their neighbours
//! told it they hold ([`Scheduler::site_holds_relayed_for`]). A device that
//! has heard either does not pull the chunk over the WAN while it spreads.
//! The exception is a device that is starving, having gained no chunk for
//! `site_hold_patience`: its part of the site may have no way to the
//! holder (a member that left, a same-site peer that lied), and then the
//! line and claims decide as before. A lie costs the site that patience,
//! not the update. On `cellular-1000` the busiest site imported 3.6-3.9
//! bundles live (7.5 before) and 1.9 in virtual time (2.8), in no more
//! time (`BENCHMARKS.md`, 2026-12-06, night).
//!
//! Word travels three hops from a holder and no further, and every layer
//! rests on the layer below as it is now: first-hand word on bitfields
//! neighbours gave, relayed word on first-hand word. Word used to be
//! passed on as heard, hop by hop, and then two devices that had both
//! banned the only holder (it served bad data) kept its chunks alive in
//! each other's word: each waited out `site_hold_patience` (30 s) with
//! the chunks nowhere to be had, and a six-device test fleet with two
//! malicious peers missed its 45 s deadline. Now the word is gone two
//! answers after the holder is. Each neighbour's latest word replaces its
//! last, and leaves with it.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use meshota_protocol::Bitfield;

use super::Scheduler;

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The manifest positions of the chunks this device holds or a
    /// same-site peer it knows says it holds (or the driver said first-hand
    /// the site holds): what a `Have` answer to a same-site asker carries
    /// as first-hand word. Never what it heard second-hand, so no word
    /// outlives its holder by going round a circle of neighbours.
    pub fn site_holds(&self) -> Bitfield {
        let mut b = Bitfield::new(self.pos_to_unique.len());
        for c in &self.chunks {
            if c.held || c.site_avail != 0 || c.site_told {
                b.set(c.pos);
            }
        }
        b
    }

    /// What to relay to same-site neighbour `asker`: the first-hand word
    /// of the other neighbours ([`Self::site_holds`] as they last said it),
    /// never relayed again.
    pub fn site_holds_relayed_for(&self, asker: &P) -> Bitfield {
        self.relay_of(&self.words, asker)
    }

    /// A same-site `peer` said which chunks its neighbours hold (`holds`,
    /// first-hand) and which their neighbours told it they hold
    /// (`relayed`); `None`: nothing beyond its bitfield. Its latest word
    /// replaces the one before, and a peer that leaves or is banned takes
    /// its word with it: a holder banned for bad data kept its chunks "in
    /// the site" while nobody could get them, and with two malicious
    /// devices in six every honest one waited out `site_hold_patience`
    /// before it fetched them elsewhere. Ignored from a peer of another
    /// class or unknown, and with a field of the wrong length.
    pub fn handle_peer_site_holds(
        &mut self,
        peer: P,
        holds: Option<&Bitfield>,
        relayed: Option<&Bitfield>,
        now: Instant,
    ) {
        self.touch(now);
        let n = self.pos_to_unique.len();
        if [holds, relayed].iter().flatten().any(|b| b.len() != n) {
            return;
        }
        let Some(first) = self.site_bits(&peer, holds) else {
            return;
        };
        let Some(second) = self.site_bits(&peer, relayed) else {
            return;
        };
        let a = Self::replace(&mut self.words, peer, first);
        let b = Self::replace(&mut self.far_words, peer, second);
        if a || b {
            self.recount_heard();
        }
    }

    /// Word that the site holds the chunk at manifest position `index`,
    /// from a driver that knows it first-hand (the simulator's model of
    /// the word spreading). It stays. Out of range: ignored.
    pub fn handle_site_heard(&mut self, index: usize) {
        if let Some(&u) = self.pos_to_unique.get(index) {
            self.chunks[u as usize].site_told = true;
            self.chunks[u as usize].site_heard = true;
        }
    }

    /// Sets each chunk's `site_heard` from the words of the peers known
    /// now and what the driver said first-hand.
    pub(super) fn recount_heard(&mut self) {
        let all = self.union(self.words.values().chain(self.far_words.values()));
        for (u, c) in self.chunks.iter_mut().enumerate() {
            let said = all.get(u / 64).is_some_and(|w| w & (1 << (u % 64)) != 0);
            c.site_heard = c.site_told || said;
        }
    }

    /// For the WAN log: whether the site is heard to hold the chunk at
    /// manifest position `index`, and whether this device is starving.
    pub fn site_word(&self, index: usize, now: Instant) -> Option<(bool, bool)> {
        let &u = self.pos_to_unique.get(index)?;
        Some((self.chunks[u as usize].site_heard, self.starving(now)))
    }

    /// Whether this device has gained no chunk for `site_hold_patience`:
    /// then a chunk its site is heard to hold may come over the WAN.
    pub(super) fn starving(&self, now: Instant) -> bool {
        now >= self.last_progress + self.cfg.site_hold_patience
    }

    /// When [`Self::starving`] turns true, if a missing chunk waits on
    /// it: a deadline for [`Self::poll_timeout`].
    pub(super) fn starving_at(&self) -> Option<Instant> {
        self.missing
            .iter()
            .any(|&u| self.chunks[u as usize].site_heard)
            .then(|| self.last_progress + self.cfg.site_hold_patience)
    }
}
