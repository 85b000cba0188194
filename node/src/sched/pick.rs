//! Choosing the next request: which peer, which chunk, and whether this
//! device is the one that should pull a chunk over the WAN.

use std::cell::OnceCell;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::check::Check;
use super::state::{mix, Flight, PeerState};
use super::{Action, PeerClass, Scheduler};

/// Whose rendezvous decides a WAN pull.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Same-site members still fetching: one WAN pull per site.
    Site,
    /// Every known fetching peer: one origin pull per fleet.
    Fleet,
}

/// A member of the line that gained no chunk for this many patiences is
/// stalled and no longer waited for. Not one patience: when a site's
/// devices start together, nobody gains anything while the first imports
/// cross the site's busy link, and with every member stalled after one
/// patience each device took itself for every chunk's home. At 300
/// devices in one wave most of the 2–5 copies a site imported were asked
/// that way. A member that is stuck for good holds each chunk it ranks
/// first for back by a few patiences more.
pub(super) const STALL_PATIENCES: u32 = 4;

impl Scope {
    /// Its slot in per-scope arrays.
    pub(super) fn index(self) -> usize {
        usize::from(self == Scope::Fleet)
    }
}

/// A device's place in line to pull a chunk over the WAN.
#[derive(Clone, Copy)]
pub(super) struct Line {
    /// 0: this device is the chunk's home.
    pub rank: u32,
    /// How long after `since` the place lets it pull.
    pub wait: Duration,
    /// When a neighbour's claim on the chunk was first heard; `None`:
    /// the wait counts from the chunk's deferral.
    pub since: Option<Instant>,
}

impl Line {
    /// Whether this place lets the device pull now, given when it first
    /// held the chunk back for this line (`None`: not yet, so not now
    /// unless it is the home or a claim's clock has run out).
    pub(super) fn lets_pull(&self, deferred: Option<Instant>, now: Instant) -> bool {
        self.rank == 0
            || self
                .since
                .or(deferred)
                .is_some_and(|since| now >= since + self.wait)
    }
}

/// How long an answer of [`Scheduler::wan_turn`] is reused.
const WAN_TURN_CACHE: Duration = Duration::from_millis(250);

/// The pick order of peer classes.
const CLASSES: [PeerClass; 3] = [PeerClass::SameSite, PeerClass::OtherSite, PeerClass::Origin];
/// The pick order under a budget while this device is in line to import.
const FAR_FIRST: [PeerClass; 3] = [PeerClass::OtherSite, PeerClass::SameSite, PeerClass::Origin];

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// Whether news about the chunk at manifest position `index` could
    /// let [`Self::poll_action`] start a request now: the chunk is
    /// missing, open (or the download is in its endgame), and `peer` (or,
    /// with `None`, any peer) holds it and has a free window. False means
    /// polling now would find nothing new through this chunk, so a driver
    /// that learns of many chunks may skip the poll; any other change
    /// that makes a request possible (a back-off ending, a window
    /// freeing) comes with its own input or [`Self::poll_timeout`].
    pub fn could_request(&self, peer: Option<&P>, index: usize, now: Instant) -> bool {
        let Some(&u) = self.pos_to_unique.get(index) else {
            return false;
        };
        let u = u as usize;
        if self.completed || self.missing_at[u] == u32::MAX {
            return false;
        }
        let open = self
            .open
            .get(u / 64)
            .is_some_and(|w| w & (1 << (u % 64)) != 0);
        if !open && self.missing.len() > self.cfg.endgame_chunks {
            return false;
        }
        if !self.may_add_flight() {
            return false;
        }
        let c = &self.chunks[u];
        let starving = self.starving(now);
        // The class rules of the pick: WAN peers only for chunks no site
        // peer holds, the origin only for chunks no peer holds.
        let ready = |p: &PeerState| {
            let eligible = c.may_come_from(p.class, starving);
            p.known
                && p.has(u)
                && (eligible || !open)
                && p.busy_until <= now
                && p.in_flight < p.window(self.cfg.window_per_peer, self.cfg.origin_window)
        };
        match peer {
            Some(peer) => self.peers.get(peer).is_some_and(ready),
            None => self.peers.values().any(ready),
        }
    }

    /// Until when `peer` is backed off after `Busy` answers, if known.
    /// After a `Busy`, that is the only deadline the answer adds to
    /// [`Self::poll_timeout`].
    pub fn busy_until(&self, peer: &P) -> Option<Instant> {
        self.peers.get(peer).map(|p| p.busy_until)
    }

    /// Worth re-asking: unknown yet, or lacking something we miss (it may
    /// have it by now; the origin may have stopped withholding it). A
    /// peer of another site (or the origin) only while the site lacks
    /// something: its news could not be used otherwise, and each `Have`
    /// round trip crosses the WAN. Beyond the site, only while this device
    /// would pull over the WAN ([`Self::wan_turn`], cached in `wan_turn`
    /// over one walk of the peers).
    pub(super) fn wants_refresh(&self, p: &PeerState, wan_turn: &OnceCell<bool>) -> bool {
        if !p.known {
            return true;
        }
        (p.useful as usize) < self.missing.len()
            && (p.class == PeerClass::SameSite || *wan_turn.get_or_init(|| self.wan_turn()))
    }

    pub(super) fn due_have_query(&mut self, now: Instant) -> Option<P> {
        let timeout = self.cfg.request_timeout;
        let lacks = OnceCell::new();
        let due = self
            .peers
            .iter()
            .find(|(_, p)| {
                p.have_pending.is_none()
                    && (p.claim_push || (p.have_due <= now && self.wants_refresh(p, &lacks)))
            })
            .map(|(k, _)| *k)?;
        if let Some(p) = self.peers.get_mut(&due) {
            p.have_pending = Some(now + timeout);
            p.claim_push = false;
        }
        Some(due)
    }

    pub(super) fn next_request(&mut self, now: Instant) -> Option<Action<P>> {
        // One pass over the peers sorts the ready ones by class (same
        // site, other sites, origin), and within a class in an order of
        // this device's own (its seed mixed with the peer's hash). A
        // peer holding no open chunk is left out: `pick_for` could find
        // nothing with it and would change nothing. In key order, every
        // device of a site filled the windows of the same few neighbours
        // first (`PeerId` order is the same everywhere): on 0.5 Mbit/s
        // uplinks the lowest fifth of ids served four times what the
        // highest did, half the site's uplinks sat mostly idle, and 100
        // devices took 1.7 x as long as virtual time.
        if !self.may_add_flight() || self.check_holds_room(now) {
            return None;
        }
        let mut ready = std::mem::take(&mut self.ready);
        let salt = mix(self.cfg.seed);
        ready.clear();
        // Under a budget, the import this device is in line for goes
        // before its site's chunks (see `max_in_flight_bytes`); without
        // one every window fills anyway.
        let order = if self.cfg.max_in_flight_bytes != u64::MAX && self.wan_turn() {
            FAR_FIRST
        } else {
            CLASSES
        };
        for (k, p) in self.peers.iter() {
            if p.known
                // A peer with nothing we miss has nothing to pick.
                && p.useful > 0
                && p.busy_until <= now
                && p.in_flight < p.window(self.cfg.window_per_peer, self.cfg.origin_window)
                && p.has_any(&self.open)
            {
                let c = order.iter().position(|&o| o == p.class).unwrap_or(2);
                ready.push((c, mix(p.hash ^ salt), *k));
            }
        }
        ready.sort_unstable_by_key(|&(c, order, _)| (c, order));
        // A chunk's place in line is the same for every far peer of one
        // pick, and working it out walks every peer: worked out once a
        // pick, not once per far peer.
        self.lines_fresh = false;
        let mut found = None;
        for &(c, _, peer) in &ready {
            if let Some(u) = self.pick_for(&peer, order[c], now) {
                found = Some((peer, u));
                break;
            }
        }
        self.ready = ready;
        if let Some((peer, u)) = found {
            return Some(self.start_request(peer, u, now));
        }
        if self.missing.len() <= self.cfg.endgame_chunks {
            return self.endgame(now);
        }
        None
    }

    /// Whether the chunk bytes in flight leave room for one more request
    /// ([`SchedulerConfig::max_in_flight_bytes`]); with none in flight,
    /// always.
    pub(super) fn may_add_flight(&self) -> bool {
        let budget = self.cfg.max_in_flight_bytes;
        if budget == u64::MAX {
            return true;
        }
        let mut bytes = 0u64;
        for u in self.in_flight.iter() {
            let c = &self.chunks[u as usize];
            bytes += u64::from(c.len) * c.in_flight.len() as u64;
            if bytes >= budget {
                return false;
            }
        }
        true
    }

    fn start_request(&mut self, peer: P, u: u32, now: Instant) -> Action<P> {
        let deadline = now + self.cfg.request_timeout;
        let c = &mut self.chunks[u as usize];
        c.in_flight.push(Flight {
            peer,
            deadline,
            late: false,
            sent: now,
        });
        c.deferred = [None; 2];
        let far = self
            .peers
            .get(&peer)
            .is_some_and(|p| p.class != PeerClass::SameSite);
        if far {
            self.keep_intent(u, now);
        }
        let c = &mut self.chunks[u as usize];
        let action = Action::Request {
            peer,
            index: c.pos,
            chunk: c.id,
            len: c.len,
        };
        self.in_flight.insert(u);
        self.refresh_open(u);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.begin_request(now);
        }
        action
    }

    /// The rarest eligible chunk `peer` can give us, if any.
    fn pick_for(&mut self, peer: &P, class: PeerClass, now: Instant) -> Option<u32> {
        let p = self.peers.get(peer)?;
        let mut best: Option<(u32, (u32, u64))> = None;
        let mut deferred = Vec::new();
        let mut checks = Vec::new();
        let mut withdrawn = Vec::new();
        let alone = OnceCell::new();
        let starving = self.starving(now);
        for &u in &self.missing {
            // Every class needs the peer to hold the chunk; testing its
            // bit first skips the chunk's state (a cache miss) for most.
            let (word, bit) = (u as usize / 64, 1u64 << (u % 64));
            if !p.has(u as usize) || self.open.get(word).is_none_or(|w| w & bit == 0) {
                continue;
            }
            let c = &self.chunks[u as usize];
            if !c.may_come_from(class, starving) {
                continue;
            }
            let key = (c.avail, c.rank);
            if best.as_ref().is_some_and(|(_, k)| *k <= key) {
                continue;
            }
            if class != PeerClass::SameSite && self.cooling_site_holds(u, now) {
                continue;
            }
            if class != PeerClass::SameSite {
                let scope = if class == PeerClass::Origin {
                    Scope::Fleet
                } else {
                    Scope::Site
                };
                let slot = u as usize * 2 + scope.index();
                if !self.lines_fresh {
                    self.lines.clear();
                    self.lines.resize(self.chunks.len() * 2, None);
                    self.lines_fresh = true;
                }
                let line = match self.lines.get(slot).copied().flatten() {
                    Some(line) => line,
                    None => {
                        let line = self.place_in_line(u, scope, now);
                        if let Some(s) = self.lines.get_mut(slot) {
                            *s = Some(line);
                        }
                        line
                    }
                };
                let own = c.deferred[scope.index()];
                let pulls =
                    line.lets_pull(own, now) || (line.since.is_some() && self.wins_check(u, now));
                if !pulls {
                    // Held back from now on, unless it already was.
                    if own.is_none() {
                        deferred.push((u, scope.index()));
                    }
                    // A neighbour's claim came during this device's
                    // check: it stands back, and stops claiming.
                    if line.since.is_some() && self.intends(u, now) && c.in_flight.is_empty() {
                        withdrawn.push(u);
                    }
                    continue;
                }
                // The origin refuses a chunk it served moments ago
                // (`OriginDedup`): two of a site asking it cost a
                // `NotFound`, not a copy, so its pulls go unchecked; so do
                // the chunk's home's (see `sched::check`).
                let state = if class == PeerClass::Origin || line.rank == 0 {
                    Check::Clear
                } else {
                    self.check_state(u, now, &alone)
                };
                match state {
                    Check::Clear => {}
                    Check::Waiting => continue,
                    Check::Due => {
                        checks.push(u);
                        continue;
                    }
                }
            }
            best = Some((u, key));
        }
        for (u, scope) in deferred {
            self.chunks[u as usize].deferred[scope] = Some(now);
        }
        self.begin_checks(&checks, now);
        for u in withdrawn {
            self.chunks[u as usize].intent = None;
        }
        best.map(|(u, _)| u)
    }

    /// Takes in the time of an input, which may change what
    /// [`Self::wan_turn`] answers.
    pub(super) fn touch(&mut self, now: Instant) {
        self.now_hint = now;
        self.wan_turn_cache.set(None);
    }

    /// Whether this device would pull a chunk over the WAN now, given a
    /// peer beyond its site that holds it: one the site lacks, for which
    /// it is the site's home, or its turn in line has come (counted from
    /// the chunk's deferral, or from the start while nothing deferred it),
    /// that no neighbour imports, and that the site is not heard to hold
    /// (unless this device is starving; see `held`). Only then are peers
    /// of other sites of use to it, so a driver may leave them undialled,
    /// unpolled and unsearched until it is true. Wanting them whenever the site lacked
    /// a chunk made every device of a site that started together dial
    /// some 20 far providers and poll them: 0.3–0.6 bundles a site of WAN
    /// bytes that were not chunks (300 devices, one wave).
    pub fn wan_turn(&self) -> bool {
        let now = self.now_hint;
        // Drivers ask on every wake-up, and each answer ranks this device
        // for every missing chunk: at 1,000 devices that was a tenth of
        // the run's CPU. A quarter-second-old answer serves as well.
        if let Some((at, turn)) = self.wan_turn_cache.get() {
            if now >= at && now < at + WAN_TURN_CACHE {
                return turn;
            }
        }
        let starving = self.starving(now);
        let turn = self.missing.iter().any(|&u| {
            let c = &self.chunks[u as usize];
            if c.site_avail != 0 || (c.site_heard && !starving) || self.cooling_site_holds(u, now) {
                return false;
            }
            // Never held back yet: counted from the start.
            let own = c.deferred[Scope::Site.index()].or(Some(self.started));
            self.place_in_line(u, Scope::Site, now).lets_pull(own, now)
        });
        self.wan_turn_cache.set(Some((now, turn)));
        turn
    }

    /// Whether a same-site peer in cool-off held chunk `u` when it was
    /// dropped: the site has it, so it is not pulled over the WAN.
    fn cooling_site_holds(&self, u: u32, now: Instant) -> bool {
        self.site_cooling
            .values()
            .any(|(until, p)| *until > now && p.has(u as usize))
    }

    /// This device's place in line to pull chunk `u` over the WAN, and
    /// when that place lets it pull.
    fn place_in_line(&self, u: u32, scope: Scope, now: Instant) -> Line {
        let rank = self.home_rank(u, scope, now);
        let c = &self.chunks[u as usize];
        // A neighbour awaiting it from the WAN is waited for
        // `claim_patience`, counted from when the claim was first heard:
        // counted from this device's own deferral, which is most often
        // minutes old, a claim held nobody back, and on `cellular-1000` a
        // median of 12 of a site's 50 devices asked the WAN for one chunk.
        // A claim still heard then lets the line step in one patience
        // apart, not all at once.
        if let Some(since) = c.claimed_since.filter(|_| self.site_imports(u)) {
            let behind = rank.max(1);
            return Line {
                rank: behind,
                wait: self.cfg.claim_patience + self.cfg.site_patience * (behind - 1),
                since: Some(since),
            };
        }
        // The k-th in line waits k patiences, so when the home cannot get
        // the chunk, one device (not all) steps in.
        Line {
            rank,
            wait: self.cfg.site_patience * rank,
            since: None,
        }
    }

    /// Whether a directly known peer stands in `scope`'s line: a member,
    /// fetching, and not stalled ([`STALL_PATIENCES`]).
    pub(super) fn in_line(&self, q: &PeerState, scope: Scope, now: Instant) -> bool {
        let member = match scope {
            Scope::Site => q.class == PeerClass::SameSite,
            Scope::Fleet => q.class != PeerClass::Origin,
        };
        member && q.fetching && now < q.last_gain + self.cfg.site_patience * STALL_PATIENCES
    }

    /// This device's place in line to pull chunk `u` over the WAN: how
    /// many peers in `scope` that are fetching, still lack it, and are not
    /// stalled ([`STALL_PATIENCES`]) weigh less for it, with, for the
    /// site, the members heard of through neighbours (`roster`). Zero
    /// means this device is the chunk's home.
    pub(super) fn home_rank(&self, u: u32, scope: Scope, now: Instant) -> u32 {
        let Some(me) = self.me else {
            return 0;
        };
        let c = &self.chunks[u as usize];
        let mine = mix(me ^ c.hash);
        let mut ahead = self
            .peers
            .values()
            .filter(|q| {
                self.in_line(q, scope, now) && !q.has(u as usize) && mix(q.hash ^ c.hash) < mine
            })
            .count();
        if scope == Scope::Site {
            ahead += self.roster_ahead(c.hash, mine, now);
        }
        u32::try_from(ahead).unwrap_or(u32::MAX)
    }

    /// Duplicates an outstanding request that has waited `endgame_after`
    /// to an idle same-site peer that holds it.
    fn endgame(&mut self, now: Instant) -> Option<Action<P>> {
        let window = self.cfg.window_per_peer;
        let origin_window = self.cfg.origin_window;
        let after = self.cfg.endgame_after;
        for &u in &self.missing {
            let c = &self.chunks[u as usize];
            if c.in_flight.len() != 1 || c.in_flight.iter().any(|f| now < f.sent + after) {
                continue;
            }
            let found = self.peers.iter().find(|(k, p)| {
                p.known
                    && p.busy_until <= now
                    && p.in_flight < p.window(window, origin_window)
                    && !c.in_flight.iter().any(|f| f.peer == **k)
                    // Duplicates only cross the LAN: a WAN duplicate costs
                    // the site uplink and the origin serves each chunk
                    // about once.
                    && p.class == PeerClass::SameSite
                    && p.has(u as usize)
            });
            if let Some((peer, _)) = found {
                let peer = *peer;
                return Some(self.start_request(peer, u, now));
            }
        }
        None
    }
}
