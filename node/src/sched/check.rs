//! The claim check: before a device steps in on a chunk's home and
//! pulls the chunk from another site, it tells its site neighbours it is
//! about to ([`Scheduler::importing`], sent in `Have` requests it makes
//! at once) and listens for `claim_check` for theirs, which its
//! neighbours' answers carry first-hand and relayed. The home itself,
//! and pulls from the origin (which refuses a chunk it served moments
//! ago), go unchecked.
//!
//! Claims used to travel only on answers to polls every 4-16 s, while
//! the devices whose place in line had come asked the WAN seconds apart.
//! In a logged run of `throttled-1000` (one wave, 59 chunks of about
//! 280 KiB), a site's second request for a chunk came a median of 2.6 s
//! after its first (p25 0.7 s, p75 6.0 s); most second copies were asked
//! by a device that had heard no claim, and most (site, chunk) pairs
//! were asked over the WAN by two to four devices. With the check, 47
//! second copies instead of 245, and the busiest site's 11 instead of 32.
//! But the copies it saves are what brought chunks in soonest: the run
//! took about a sixth longer, so the check is off by default.
//!
//! Of two neighbours that check at the same moment, the one that ranks
//! first for the chunk goes on ([`Scheduler::wins_check`]). While a check
//! runs under a request budget, no other request takes the budget's room
//! ([`Scheduler::check_holds_room`]).

use std::cell::OnceCell;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use super::importing::Bits;
use super::state::mix;
use super::{PeerClass, Scheduler};

/// A check's claim lasts this many `claim_check`s from when the check
/// began, or from the last request out for the chunk; long enough for a
/// device whose request budget was full when the check ended to still
/// hold its claim when room comes.
const INTENT_LIFE: u32 = 4;

/// Where a chunk stands in its claim check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// No check needed, or it has passed: the chunk may be pulled.
    Clear,
    /// Announced; not yet `claim_check` ago.
    Waiting,
    /// Not announced (or its claim lapsed): to be announced now.
    Due,
}

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The claims a `Have` request to `peer` carries: this device's
    /// [`Self::importing`] for a same-site peer while it checks claims
    /// before WAN pulls; `None` otherwise (without the check, claims
    /// travel only in answers, as before it).
    pub fn claims_for(&self, peer: &P) -> Option<meshota_protocol::Bitfield> {
        let ours = self.peers.get(peer).map(|p| p.class) == Some(PeerClass::SameSite);
        (ours && !self.cfg.claim_check.is_zero()).then(|| self.importing())
    }

    /// Where chunk `u` stands in its claim check at `now`. `alone`
    /// caches whether no same-site peer is known, when there is nobody to
    /// tell.
    pub(super) fn check_state(&self, u: u32, now: Instant, alone: &OnceCell<bool>) -> Check {
        if self.cfg.claim_check.is_zero() {
            return Check::Clear;
        }
        match self.chunks[u as usize].intent {
            Some((ready, lapses)) if now < lapses => {
                if now >= ready {
                    Check::Clear
                } else {
                    Check::Waiting
                }
            }
            _ if *alone
                .get_or_init(|| !self.peers.values().any(|p| p.class == PeerClass::SameSite)) =>
            {
                Check::Clear
            }
            _ => Check::Due,
        }
    }

    /// Announces the claim checks of chunks `us`: every same-site peer is
    /// asked for its `Have` at once, with this device's claims in the
    /// request.
    pub(super) fn begin_checks(&mut self, us: &[u32], now: Instant) {
        if us.is_empty() {
            return;
        }
        let cc = self.cfg.claim_check;
        for &u in us {
            self.chunks[u as usize].intent = Some((now + cc, now + cc * INTENT_LIFE));
        }
        for p in self.peers.values_mut() {
            if p.class == PeerClass::SameSite {
                p.claim_push = true;
            }
        }
    }

    /// Keeps the claim on chunk `u` (after a passed check) from lapsing
    /// while a request for it is out or was just refused.
    pub(super) fn keep_intent(&mut self, u: u32, now: Instant) {
        let life = self.cfg.claim_check * INTENT_LIFE;
        if let Some((ready, lapses)) = &mut self.chunks[u as usize].intent {
            if *ready <= now {
                *lapses = (*lapses).max(now + life);
            }
        }
    }

    /// Whether this device keeps its claim on chunk `u` against the
    /// neighbours' claims heard since its check began: they are all
    /// first-hand, from neighbours that rank behind it for the chunk.
    /// Those neighbours heard this device's claim at once (it asked them)
    /// and stand back for it, so one of two devices that check at the same
    /// moment goes on. When both stood back, the chunk waited for both
    /// claims to be forgotten: in a logged run with that rule a site's
    /// first copy of a chunk landed a median of 111 s into the run, 86 s
    /// without the check. A relayed claim, whose maker is unknown, or one
    /// heard before the check, is stood back for.
    pub(super) fn wins_check(&self, u: u32, now: Instant) -> bool {
        let (Some(me), Some((ready, lapses))) = (self.me, self.chunks[u as usize].intent) else {
            return false;
        };
        let c = &self.chunks[u as usize];
        let began = ready.checked_sub(self.cfg.claim_check).unwrap_or(ready);
        if now >= lapses || c.claimed_since.is_none_or(|since| since < began) {
            return false;
        }
        let (word, bit) = (u as usize / 64, 1u64 << (u % 64));
        let claims = |b: &Bits| b.get(word).is_some_and(|w| w & bit != 0);
        if self.relays.values().any(claims) {
            return false;
        }
        let mine = mix(me ^ c.hash);
        self.importers
            .iter()
            .filter(|(_, b)| claims(b))
            .all(|(p, _)| {
                self.peers
                    .get(p)
                    .is_some_and(|q| mix(q.hash ^ c.hash) > mine)
            })
    }

    /// Whether chunk `u` is claimed by a check (under way or passed) at
    /// `now`.
    pub(super) fn intends(&self, u: u32, now: Instant) -> bool {
        self.chunks[u as usize]
            .intent
            .is_some_and(|(_, lapses)| now < lapses)
    }

    /// Whether, under a request budget, a check under way holds the
    /// budget's room for its pull: otherwise requests to neighbours took
    /// the room while the check ran, the pull waited seconds for one to
    /// land, and its claim lapsed and was checked again, claiming without
    /// pulling while the neighbours waited for it.
    pub(super) fn check_holds_room(&self, now: Instant) -> bool {
        self.cfg.max_in_flight_bytes != u64::MAX
            && !self.cfg.claim_check.is_zero()
            && self.missing.iter().any(|&u| {
                self.chunks[u as usize]
                    .intent
                    .is_some_and(|(ready, _)| now < ready)
            })
    }

    /// When a check under way ends, if one does after `after`.
    pub(super) fn next_check_end(&self, after: Instant) -> Option<Instant> {
        if self.cfg.claim_check.is_zero() {
            return None;
        }
        self.missing
            .iter()
            .filter_map(|&u| self.chunks[u as usize].intent.map(|(ready, _)| ready))
            .filter(|&ready| ready > after)
            .min()
    }
}
