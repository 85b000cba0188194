//! The sans-IO chunk scheduler.
//!
//! It decides which chunk to ask of which peer, when a request has taken
//! too long, which peers to ban or drop, and when to give up. It never
//! touches a socket or a clock: every input carries `now`, and the driver
//! sleeps until [`Scheduler::poll_timeout`]. The same code runs on devices
//! over libp2p and in the simulator under virtual time.
//!
//! # Policy
//!
//! - **Local first.** A chunk a same-site peer holds is fetched from that
//!   peer, never over the WAN.
//! - **One WAN pull per site.** A chunk no same-site peer holds is pulled
//!   over the WAN by one member of the site: the rendezvous-hash "home" of
//!   that chunk among the site's members still fetching. The others line
//!   up behind it by the same hash: the k-th waits k × `site_patience`
//!   before pulling the chunk itself, so if the home cannot get it one
//!   device steps in, not all. The wait counts from when this device
//!   first held back for a peer of another site that has the chunk (the
//!   origin has its own clock). Members that gained nothing for a few
//!   patiences are stalled and do not hold up the line.
//!   A device ranks itself against the neighbours it knows and the
//!   members they list (`roster`), so devices that know different parts
//!   of the site agree on the home.
//! - **A neighbour's import is waited for.** `Have` answers between
//!   neighbours carry the chunks the answerer is importing
//!   ([`Scheduler::importing`]), and those its other neighbours said they
//!   import ([`Scheduler::relayed_for`]). A claim lasts while its
//!   claimant has a request out or was refused `Busy` moments ago; no
//!   one else in the site pulls the chunk over the WAN while it is heard,
//!   for up to `claim_patience` from when it was first heard
//!   (`importing`).
//! - **What the site holds stays in the site.** `Have` answers between
//!   neighbours also carry what the answerer's neighbours hold
//!   ([`Scheduler::site_holds`]) and what theirs told it they hold
//!   ([`Scheduler::site_holds_relayed_for`]), three hops in all; such a
//!   chunk is not pulled over the WAN unless this device has gained
//!   nothing for `site_hold_patience` (`held`).
//! - **Origin last, and about once.** The origin serves only chunks no
//!   reachable peer holds, and then only to the chunk's rendezvous home
//!   among all known fetching peers. Devices rarely know the whole fleet,
//!   so the origin also withholds, for a while, each chunk it has just
//!   served ([`OriginDedup`]): the fleet gets it from that first copy.
//!   Together they keep the origin near one copy whatever the fleet size.
//! - **Rarest first** among eligible chunks, with a seeded random
//!   tie-break, so neighbours pull different chunks and then trade them.
//! - **Windows and timeouts.** Each peer has a window of in-flight
//!   requests; a request past `request_timeout` is retried elsewhere.
//! - **Endgame.** When few chunks remain and all are in flight, idle peers
//!   duplicate the outstanding requests; the first answer wins.
//! - **Two failure kinds.** Bad data ([`Failure::Misbehaved`]) bans a peer
//!   for good; slowness or silence ([`Failure::Unresponsive`], a rate under
//!   `min_rate_bps`) drops it for a cool-off period.
//! - **A slow neighbour still counts.** During its cool-off, what a dropped
//!   same-site peer held is still in the site: no chunk it holds is pulled
//!   over the WAN until the cool-off ends and it has been asked again
//!   (and has had a request timeout to answer). An overloaded LAN peer is
//!   the common case of a drop, and treating its chunks as missing from
//!   the site made every device that dropped it an importer (at 1,000
//!   devices, three in four WAN requests).
//! - **Late, not lost.** Request-response cannot cancel an answer in
//!   flight, so a request is not re-asked of others the moment its peer is
//!   dropped for slowness: it is awaited until `request_timeout`. Past
//!   that it is late: from a peer still in good standing it is awaited
//!   until the transport gives up (`answer_timeout`), and meanwhile only a
//!   same-site peer may be asked for the chunk, never a WAN peer; from a
//!   dropped peer it is given up. Re-asking at once paid for each such
//!   chunk twice: at 1,000 devices 31 % of all chunk bytes received were
//!   of no use.

mod check;
mod config;
mod describe;
pub mod discovery;
mod held;
mod importing;
mod origin;
mod peers;
mod pick;
mod roster;
mod state;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_budget;
#[cfg(test)]
mod tests_claim_check;
#[cfg(test)]
mod tests_discovery;
#[cfg(test)]
mod tests_flights;
#[cfg(test)]
mod tests_held;
#[cfg(test)]
mod tests_importing;
#[cfg(test)]
mod tests_roster;
mod timers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use meshota_protocol::{Bitfield, ByteSplit, ChunkId, Manifest};

pub use config::{SchedulerConfig, IN_FLIGHT_SECS};
pub use discovery::{Discovery, DiscoveryAction, PeerBytes, Stage};
pub use origin::OriginDedup;
use peers::PeerTable;
pub use roster::{MAX_ROSTER, MAX_ROSTER_RANK};
use state::{ChunkSet, ChunkState, Flight, PeerState};

/// Where a peer sits relative to us; decides preference and accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerClass {
    /// Same site: LAN bytes, preferred.
    SameSite,
    /// Another site: WAN bytes.
    OtherSite,
    /// The origin seeder: WAN bytes, used last.
    Origin,
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for the chunk at manifest position `index`.
    Request {
        /// The peer.
        peer: P,
        /// Manifest position.
        index: usize,
        /// The chunk id.
        chunk: ChunkId,
        /// Its raw length.
        len: u32,
    },
    /// Ask `peer` which chunks of the manifest it holds (send `Have`).
    QueryHave {
        /// The peer.
        peer: P,
    },
    /// A duplicate request is no longer needed (endgame); drivers that
    /// cannot cancel may ignore this.
    Cancel {
        /// The peer.
        peer: P,
        /// Manifest position.
        index: usize,
    },
}

/// Why a request failed. Bad data and slowness are different kinds on
/// purpose: one is an attack, the other is a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The peer does not have it (any more).
    NotFound,
    /// The peer has it but its upload slots are full.
    Busy,
    /// The peer sent bad data (hash or length mismatch, protocol
    /// violation): ban it.
    Misbehaved(String),
    /// Timeout or transport error: drop it for a while.
    Unresponsive(String),
}

/// Something the driver should act on or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedEvent<P> {
    /// The peer sent bad data; disconnect and block it.
    Banned {
        /// The peer.
        peer: P,
        /// Why.
        reason: String,
    },
    /// The peer was too slow or silent; it is ignored for a cool-off.
    Dropped {
        /// The peer.
        peer: P,
        /// Why.
        reason: String,
    },
    /// No progress for `stall_timeout`; the driver may give up or wait.
    Stalled,
    /// Every chunk is held.
    Complete,
}

/// Figures for telemetry and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadStats {
    /// Bytes by source, on the wire.
    pub bytes: ByteSplit,
    /// Bytes received for chunks already held (endgame duplicates).
    pub duplicate_bytes: u64,
    /// Requests that failed and were retried.
    pub retries: u64,
    /// Peers banned for bad data.
    pub bans: u64,
    /// Peers dropped for slowness or silence.
    pub drops: u64,
    /// Distinct peers that delivered at least one chunk.
    pub peers_used: usize,
    /// Chunks fetched over the network.
    pub chunks_fetched: u64,
    /// Time from creation to completion.
    pub duration: Option<Duration>,
}

/// The scheduler for one download. `P` is the driver's peer key
/// (`libp2p::PeerId` on devices, an integer in the simulator).
pub struct Scheduler<P> {
    cfg: SchedulerConfig,
    chunks: Vec<ChunkState<P>>,
    /// Manifest position to unique chunk index.
    pos_to_unique: Vec<u32>,
    /// Unique indices not yet held, with `missing_at` locating each.
    missing: Vec<u32>,
    missing_at: Vec<u32>,
    in_flight: ChunkSet,
    /// One bit per unique chunk that is missing and has no request in
    /// flight: what a normal (non-endgame) pick can choose. Lets a poll
    /// skip, with a word-wise AND, every peer that holds nothing open.
    open: Vec<u64>,
    peers: PeerTable<P>,
    /// Class of every peer removed, so a chunk that lands after its
    /// sender was dropped still counts under the right source.
    former: BTreeMap<P, PeerClass>,
    banned: BTreeSet<P>,
    cooloff: BTreeMap<P, Instant>,
    /// Same-site peers in cool-off, as they were when dropped: their
    /// chunks stay out of WAN picks until they are heard again, or the
    /// cool-off and one request timeout have passed.
    site_cooling: BTreeMap<P, (Instant, PeerState)>,
    used: BTreeSet<P>,
    /// Reused buffer of the peers ready for a request, so polling does
    /// not allocate.
    ready: Vec<(usize, u64, P)>,
    /// Each chunk's place in the site's and the fleet's line, as worked
    /// out once per pick of [`Self::poll_action`] (`None`: not yet).
    lines: Vec<Option<pick::Line>>,
    /// Whether `lines` has been reset for the current pick: only a pick
    /// that weighs a far peer reads it, and resetting it on every poll
    /// was about a sixth of `poll_action`'s own time in a 100,000-device
    /// virtual run.
    lines_fresh: bool,
    /// What each same-site peer last said it imports (see `importing`).
    importers: BTreeMap<P, importing::Bits>,
    /// What each same-site peer last relayed of its own neighbours' claims.
    relays: BTreeMap<P, importing::Bits>,
    /// What each same-site peer last said its neighbours hold (see `held`).
    words: BTreeMap<P, importing::Bits>,
    /// What each same-site peer last relayed of its neighbours' `words`.
    far_words: BTreeMap<P, importing::Bits>,
    /// Same-site members heard of from neighbours (see `roster`).
    roster: roster::Roster,
    /// The last answer of `wan_turn`, and when it was given.
    wan_turn_cache: std::cell::Cell<Option<(Instant, bool)>>,
    /// The union of `importers` and `relays`, one bit per distinct chunk.
    site_importing: importing::Bits,
    me: Option<u64>,
    actions: VecDeque<Action<P>>,
    events: VecDeque<SchedEvent<P>>,
    stats: DownloadStats,
    started: Instant,
    last_progress: Instant,
    stalled_reported: bool,
    now_hint: Instant,
    completed: bool,
}

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// A scheduler for `manifest`, given which positions are already held.
    pub fn new(manifest: &Manifest, held: &Bitfield, cfg: SchedulerConfig, now: Instant) -> Self {
        let mut index_of: std::collections::HashMap<ChunkId, u32> = Default::default();
        let mut chunks: Vec<ChunkState<P>> = Vec::new();
        let mut pos_to_unique = Vec::with_capacity(manifest.chunks.len());
        let mut rng = state::SplitMix(cfg.seed ^ 0x006d_6573_686f_7461);
        let mut local = 0u64;
        for (pos, c) in manifest.chunks.iter().enumerate() {
            let u = *index_of.entry(c.id).or_insert_with(|| {
                chunks.push(ChunkState::new(c.id, c.len, pos, rng.next()));
                (chunks.len() - 1) as u32
            });
            let st = &mut chunks[u as usize];
            if held.get(pos) && !st.held {
                st.held = true;
                local += u64::from(c.len);
            }
            pos_to_unique.push(u);
        }
        let mut missing = Vec::new();
        let mut missing_at = vec![u32::MAX; chunks.len()];
        let mut open = vec![0u64; chunks.len().div_ceil(64)];
        for (u, c) in chunks.iter().enumerate() {
            if !c.held {
                missing_at[u] = missing.len() as u32;
                missing.push(u as u32);
                open[u / 64] |= 1 << (u % 64);
            }
        }
        let n_unique = chunks.len();
        let mut s = Self {
            cfg,
            chunks,
            pos_to_unique,
            missing,
            missing_at,
            in_flight: ChunkSet::new(n_unique),
            open,
            peers: PeerTable::new(),
            former: BTreeMap::new(),
            banned: BTreeSet::new(),
            cooloff: BTreeMap::new(),
            site_cooling: BTreeMap::new(),
            used: BTreeSet::new(),
            ready: Vec::new(),
            lines: Vec::new(),
            lines_fresh: false,
            importers: BTreeMap::new(),
            relays: BTreeMap::new(),
            words: BTreeMap::new(),
            far_words: BTreeMap::new(),
            roster: BTreeMap::new(),
            wan_turn_cache: std::cell::Cell::new(None),
            site_importing: importing::Bits::new(),
            me: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: DownloadStats::default(),
            started: now,
            last_progress: now,
            stalled_reported: false,
            now_hint: now,
            completed: false,
        };
        s.stats.bytes.local = local;
        s.check_complete(now);
        s
    }

    /// Names the local peer, which enables the site and origin rendezvous.
    /// Without it every chunk is pulled as if this device were its home.
    pub fn set_local_peer(&mut self, me: P) {
        self.me = Some(state::peer_hash(&me));
        self.wan_turn_cache.set(None);
    }

    /// A peer that serves this manifest was found, or its class changed.
    /// Banned peers and dropped peers in cool-off are ignored.
    pub fn handle_peer_found(&mut self, peer: P, class: PeerClass, now: Instant) {
        self.touch(now);
        if self.banned.contains(&peer) {
            return;
        }
        if let Some(until) = self.cooloff.get(&peer) {
            if now < *until {
                return;
            }
            self.cooloff.remove(&peer);
        }
        // Back from cool-off: its own `Have` says what it holds now.
        self.site_cooling.remove(&peer);
        let n = self.chunks.len();
        let mut class_changed = None;
        // Answers it still owes from before a drop fill its window.
        let owed = if self.peers.contains_key(&peer) {
            0
        } else {
            self.in_flight
                .iter()
                .filter(|&u| {
                    self.chunks[u as usize]
                        .in_flight
                        .iter()
                        .any(|f| f.peer == peer)
                })
                .count()
        };
        let hash = state::peer_hash(&peer);
        self.known_directly(hash);
        let p = self.peers.get_or_insert_with(peer, || {
            let mut p = PeerState::new(class, hash, n, now);
            for _ in 0..owed {
                p.begin_request(now);
            }
            p
        });
        if p.class != class {
            class_changed = Some(p.class);
        }
        if let Some(old) = class_changed {
            self.recount_peer(&peer, Some(old), false);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.class = class;
            }
            self.recount_peer(&peer, None, true);
        }
    }

    /// Whether `peer` is itself fetching this manifest (from its `Have`
    /// answer). Only fetching peers take part in the rendezvous.
    pub fn handle_peer_fetching(&mut self, peer: P, fetching: bool) {
        self.wan_turn_cache.set(None);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.fetching = fetching;
        }
    }

    /// A peer's full bitfield, by manifest position. A field of the wrong
    /// length is a protocol violation and bans the peer.
    pub fn handle_peer_have(&mut self, peer: P, have: &Bitfield, now: Instant) {
        self.touch(now);
        if !self.peers.contains_key(&peer) {
            return;
        }
        if have.len() != self.pos_to_unique.len() {
            self.ban(peer, "bitfield length does not match the manifest".into());
            return;
        }
        self.recount_peer(&peer, None, false);
        let cfg = &self.cfg;
        if let Some(p) = self.peers.get_mut(&peer) {
            let mut count = 0;
            let mut useful = 0;
            for (u, c) in self.chunks.iter().enumerate() {
                let has = have.get(c.pos);
                count += usize::from(has);
                useful += u32::from(has && self.missing_at[u] != u32::MAX);
                p.set_has(u, has);
            }
            p.useful = useful;
            if count > p.held_count {
                p.last_gain = now;
            }
            p.held_count = count;
            p.have_pending = None;
            p.have_due =
                now + have_interval(cfg, p.class, now.saturating_duration_since(p.last_gain));
            p.known = true;
            p.timeouts_in_row = 0;
        }
        self.recount_peer(&peer, None, true);
    }

    /// `peer` announced that it now holds the chunk at manifest position
    /// `index`: the incremental form of [`Self::handle_peer_have`], for
    /// drivers that push availability (a BitTorrent-style `HAVE`) instead
    /// of re-asking for whole bitfields. It costs O(1) where a bitfield
    /// costs O(chunks). An index outside the manifest is a protocol
    /// violation and bans the peer, as a bitfield of the wrong length does.
    pub fn handle_peer_has(&mut self, peer: P, index: usize, now: Instant) {
        self.touch(now);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(&u) = self.pos_to_unique.get(index) else {
            self.ban(peer, "announced a chunk outside the manifest".into());
            return;
        };
        if !p.set_has(u as usize, true) {
            return;
        }
        if self.missing_at[u as usize] != u32::MAX {
            p.useful += 1;
        }
        p.held_count += 1;
        p.last_gain = now;
        if p.class != PeerClass::Origin {
            let same_site = p.class == PeerClass::SameSite;
            self.chunks[u as usize].adjust(same_site, true);
        }
    }

    /// A peer went away (disconnected, or does not serve this manifest).
    pub fn handle_peer_lost(&mut self, peer: P, now: Instant) {
        self.touch(now);
        self.site_cooling.remove(&peer);
        self.remove_peer(&peer, now, false);
    }

    /// The chunk at `index` arrived from `peer`, and the driver verified
    /// and stored it. Late duplicates are counted as waste, not progress.
    pub fn handle_chunk_arrived(&mut self, peer: P, index: usize, wire_bytes: u64, now: Instant) {
        self.touch(now);
        let Some(&u) = self.pos_to_unique.get(index) else {
            return;
        };
        let class =
            (self.peers.get(&peer).map(|p| p.class)).or_else(|| self.former.get(&peer).copied());
        self.finish_request(&peer, u, now, true, wire_bytes);
        let c = &mut self.chunks[u as usize];
        if c.held {
            self.stats.duplicate_bytes += wire_bytes;
            return;
        }
        c.held = true;
        c.deferred = [None; 2];
        for Flight { peer: other, .. } in std::mem::take(&mut c.in_flight) {
            if let Some(p) = self.peers.get_mut(&other) {
                p.end_request(now);
            }
            self.actions
                .push_back(Action::Cancel { peer: other, index });
        }
        self.in_flight.remove(u);
        self.remove_missing(u);
        self.refresh_open(u);
        match class {
            Some(PeerClass::SameSite) => self.stats.bytes.same_site += wire_bytes,
            Some(PeerClass::Origin) => self.stats.bytes.origin += wire_bytes,
            Some(PeerClass::OtherSite) | None => self.stats.bytes.other_peers += wire_bytes,
        }
        self.stats.chunks_fetched += 1;
        if self.used.insert(peer) {
            self.stats.peers_used = self.used.len();
        }
        self.last_progress = now;
        self.stalled_reported = false;
        self.check_complete(now);
    }

    /// A request for the chunk at `index` failed.
    pub fn handle_chunk_failed(&mut self, peer: P, index: usize, failure: Failure, now: Instant) {
        self.touch(now);
        let Some(&u) = self.pos_to_unique.get(index) else {
            return;
        };
        self.finish_request(&peer, u, now, false, 0);
        self.stats.retries += 1;
        self.apply_failure(peer, Some(u), failure, now);
    }

    /// A `Have` query to `peer` failed.
    pub fn handle_query_failed(&mut self, peer: P, failure: Failure, now: Instant) {
        self.touch(now);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.have_pending = None;
            p.have_due = now + self.cfg.have_refresh;
        }
        match failure {
            // A peer that does not serve this manifest is simply not a source.
            Failure::NotFound => {
                self.remove_peer(&peer, now, false);
            }
            other => self.apply_failure(peer, None, other, now),
        }
    }

    /// The next thing to do, if any. Call until `None` after every input.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action<P>> {
        // Not an input: a `wan_turn` answer stays good while polling.
        self.now_hint = now;
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if self.completed {
            return None;
        }
        if let Some(peer) = self.due_have_query(now) {
            return Some(Action::QueryHave { peer });
        }
        if let Some(a) = self.next_request(now) {
            return Some(a);
        }
        // A claim check begun by this very pick asks its neighbours now.
        if self.cfg.claim_check.is_zero() {
            return None;
        }
        self.due_have_query(now)
            .map(|peer| Action::QueryHave { peer })
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SchedEvent<P>> {
        self.events.pop_front()
    }

    /// True once every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.completed
    }

    /// Figures so far.
    pub fn stats(&self) -> &DownloadStats {
        &self.stats
    }

    /// Chunks still missing.
    pub fn missing_chunks(&self) -> usize {
        self.missing.len()
    }

    /// Distinct chunks in the manifest.
    pub fn total_chunks(&self) -> usize {
        self.chunks.len()
    }

    fn check_complete(&mut self, now: Instant) {
        if !self.completed && self.missing.is_empty() {
            self.completed = true;
            self.stats.duration = Some(now.saturating_duration_since(self.started));
            self.events.push_back(SchedEvent::Complete);
        }
    }

    /// Recomputes chunk `u`'s bit in [`Self::open`].
    fn refresh_open(&mut self, u: u32) {
        let u = u as usize;
        // A chunk whose requests are all late is open again, though only
        // to same-site peers (see `pick_for`).
        let open =
            self.missing_at[u] != u32::MAX && self.chunks[u].in_flight.iter().all(|f| f.late);
        if let Some(w) = self.open.get_mut(u / 64) {
            if open {
                *w |= 1 << (u % 64);
            } else {
                *w &= !(1 << (u % 64));
            }
        }
    }

    fn remove_missing(&mut self, u: u32) {
        let at = self.missing_at[u as usize];
        if at == u32::MAX {
            return;
        }
        let last = self.missing.len() - 1;
        self.missing.swap(at as usize, last);
        let moved = self.missing[at as usize];
        self.missing_at[moved as usize] = at;
        self.missing.pop();
        self.missing_at[u as usize] = u32::MAX;
        for p in self.peers.values_mut() {
            if p.has(u as usize) {
                p.useful = p.useful.saturating_sub(1);
            }
        }
    }

    fn apply_failure(&mut self, peer: P, u: Option<u32>, failure: Failure, now: Instant) {
        match failure {
            Failure::NotFound => {
                if let Some(u) = u {
                    self.recount_peer(&peer, None, false);
                    let missing = self.missing_at[u as usize] != u32::MAX;
                    if let Some(p) = self.peers.get_mut(&peer) {
                        if p.set_has(u as usize, false) && missing {
                            p.useful = p.useful.saturating_sub(1);
                        }
                    }
                    self.recount_peer(&peer, None, true);
                }
            }
            Failure::Busy => {
                let (base, max) = (self.cfg.busy_backoff, self.cfg.busy_backoff_max);
                let far = self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.class != PeerClass::SameSite);
                if let (Some(u), true) = (u, far) {
                    self.chunks[u as usize].refused_at = Some(now);
                    self.keep_intent(u, now);
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.busy_in_row = (p.busy_in_row + 1).min(16);
                    p.busy_until = now + doubled(base, p.busy_in_row - 1, max);
                }
            }
            Failure::Misbehaved(reason) => self.ban(peer, reason),
            Failure::Unresponsive(reason) => self.drop_peer(peer, reason, now),
        }
    }

    fn ban(&mut self, peer: P, reason: String) {
        let now = self.now_hint;
        self.site_cooling.remove(&peer);
        self.remove_peer(&peer, now, false);
        if self.banned.insert(peer) {
            self.stats.bans += 1;
            self.events.push_back(SchedEvent::Banned { peer, reason });
        }
    }

    fn drop_peer(&mut self, peer: P, reason: String, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        let until = now + self.cfg.drop_cooloff;
        // Its answers in flight may still come: those not yet late are
        // awaited until `request_timeout` (see `Flight::late`); those
        // already late are given up now.
        self.end_flights(&peer, now, true);
        if let Some(p) = self.remove_peer(&peer, now, true) {
            if p.class == PeerClass::SameSite && p.known {
                // The driver asks it again when the cool-off ends, and the
                // answer can take up to a request timeout: until then its
                // chunks are still in the site. Expiring with the cool-off
                // sent loaded devices to the WAN in that gap (1,000-device
                // runs: most WAN picks of waves 2 and 3).
                let heard_by = until + self.cfg.request_timeout;
                self.site_cooling.insert(peer, (heard_by, p));
            }
        }
        self.cooloff.insert(peer, until);
        self.stats.drops += 1;
        self.events.push_back(SchedEvent::Dropped { peer, reason });
    }

    /// Removes `peer` and returns its state, if it was known. Its requests
    /// in flight end too, unless `keep_flights`.
    fn remove_peer(&mut self, peer: &P, now: Instant, keep_flights: bool) -> Option<PeerState> {
        if !self.peers.contains_key(peer) {
            return None;
        }
        self.recount_peer(peer, None, false);
        if !keep_flights {
            self.end_flights(peer, now, false);
        }
        self.forget_site_news(peer);
        let p = self.peers.remove(peer)?;
        self.former.insert(*peer, p.class);
        Some(p)
    }

    /// Ends `peer`'s requests in flight (only the late ones if
    /// `only_late`), unanswered.
    fn end_flights(&mut self, peer: &P, now: Instant, only_late: bool) {
        let ending: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|&u| {
                self.chunks[u as usize]
                    .in_flight
                    .iter()
                    .any(|f| f.peer == *peer && (f.late || !only_late))
            })
            .collect();
        for u in ending {
            self.finish_request(peer, u, now, false, 0);
        }
    }

    /// Removes `peer`'s request for chunk `u`, if any, and updates the
    /// peer's accounting.
    fn finish_request(&mut self, peer: &P, u: u32, now: Instant, delivered: bool, bytes: u64) {
        let c = &mut self.chunks[u as usize];
        let before = c.in_flight.len();
        c.in_flight.retain(|f| f.peer != *peer);
        let was_pending = c.in_flight.len() != before;
        if c.in_flight.is_empty() {
            self.in_flight.remove(u);
        }
        self.refresh_open(u);
        if let Some(p) = self.peers.get_mut(peer) {
            if was_pending {
                p.end_request(now);
            }
            if delivered {
                p.bytes += bytes;
                p.timeouts_in_row = 0;
                p.busy_in_row = 0;
            }
        }
    }

    /// Adds (`add`) or removes this peer's contribution to availability
    /// counts, using `class_override` instead of its class if given.
    fn recount_peer(&mut self, peer: &P, class_override: Option<PeerClass>, add: bool) {
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        let class = class_override.unwrap_or(p.class);
        if class == PeerClass::Origin {
            return;
        }
        for (u, c) in self.chunks.iter_mut().enumerate() {
            if p.has(u) {
                c.adjust(class == PeerClass::SameSite, add);
            }
        }
    }
}

/// `base` doubled `times` times, at most `max`: every back-off here and
/// in the drivers (`Busy` answers, repeated lookups, bootstrap redials).
pub(crate) fn doubled(base: Duration, times: u32, max: Duration) -> Duration {
    base.saturating_mul(1 << times.min(31)).min(max)
}

/// How long until a peer of `class` that last gained a chunk `quiet` ago
/// is asked again (see [`SchedulerConfig::have_refresh_max`] and
/// [`SchedulerConfig::origin_have_refresh_max`]). Peers of other sites
/// keep their own fixed, slower cadence.
pub(crate) fn have_interval(cfg: &SchedulerConfig, class: PeerClass, quiet: Duration) -> Duration {
    match class {
        PeerClass::Origin => (quiet / 2)
            .min(cfg.origin_have_refresh_max)
            .max(cfg.origin_have_refresh),
        PeerClass::OtherSite => cfg.far_have_refresh,
        PeerClass::SameSite => (quiet / 2).min(cfg.have_refresh_max).max(cfg.have_refresh),
    }
}
