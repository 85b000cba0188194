//! The sans-IO core of peer discovery: which providers a fetch looks up
//! and dials, when, and which far peers it polls.
//!
//! A [`Discovery`] per fetch takes what the DHT said
//! ([`Discovery::handle_providers`], [`Discovery::handle_lookup_finished`])
//! and where the fetch stands ([`Stage`]), and answers with
//! [`DiscoveryAction`]s: a lookup, or a dial. Like the [`super::Scheduler`]
//! it never touches a socket or a clock: every input carries `now`, and
//! the driver wakes at [`Discovery::poll_timeout`]. Which peers are
//! connected is the driver's to know; it is passed in as a predicate.
//!
//! # Policy
//!
//! - **Few dials, each device its own.** A fetch dials at most
//!   [`MAX_SITE_DIALS`] providers of its site and [`MAX_FAR_DIALS`] of
//!   other sites, counting those already up, in an order that is a hash of
//!   both ids, so a site's devices do not all crowd the same few.
//! - **Far providers only when wanted.** Providers found under the
//!   release's key only are kept, not dialled, until the fetch wants peers
//!   of other sites ([`Discovery::far_wanted`]); then they are looked up
//!   again (only a lookup knows their addresses) and dialled at once.
//! - **Not the same far refuser again.** A far provider is not redialled
//!   within [`FAR_REDIAL`].
//! - **Lookups back off.** A lookup that leads to no dial doubles the
//!   pause before the next, up to 16 × ([`lookup_pause`]); none is made
//!   while a provider of the site is connected and far peers are not
//!   wanted.
//! - **No site key when the site's dials are up.** A lookup for far
//!   peers asks the site's key too only while fewer than
//!   [`MAX_SITE_DIALS`] providers of the site are connected. On
//!   `throttled-1000` that took a device's provider queries from 10.5
//!   to 6.3 and what it read from the origin besides chunks from 26 to
//!   17 KB.
//! - **Far peers that dialled in are not polled back**
//!   ([`Discovery::polls`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Most providers of other sites a fetch with a site keeps dialled at
/// once. A lookup under the release's key names up to ten
/// (`p2p::providers::ANSWER`), and each connection costs a handshake and
/// `Have` polls over both sites' WAN links; a device pulls only the
/// chunks it is the site's home for, which a few far peers serve as well
/// as twenty. Which ones is a hash of both peer ids, so the fleet does
/// not crowd the same few. With eight (and
/// as many dialled in by other sites), `Have` polls and set-up with far
/// peers were 0.55-0.60 bundles of each site's WAN bytes on
/// `cellular-1000`; with four, 0.36, and the site took no more chunks
/// from far peers (1.40 bundles against 1.50-1.56), in about the same
/// time (`BENCHMARKS.md`, 2026-12-06, evening, second stop).
pub const MAX_FAR_DIALS: usize = 4;

/// Most providers of its own site a fetch dials itself, counting those
/// already connected. Site lookups (repeated every 10 s while the device
/// would pull over the WAN) named 20 providers each then (ten now), at
/// random, and dialling them all connected every device to most of its
/// site: in `cellular-1000` (50 devices a site) the devices opened 26,000
/// connections among themselves in the first minute, each a handshake (a
/// quarter of the ramp's CPU went to X25519 and Ed25519) and each
/// neighbour polled for `Have` every 1-4 s.
/// Eight neighbours dialled, plus those that dial in, keep a site's mesh
/// connected in a few hops: the run took 361-366 s instead of 423-430 s.
/// Four took as long (359 s) and sixteen longer (389 s).
pub const MAX_SITE_DIALS: usize = 8;

/// Least time before a fetch dials the same far provider again. A
/// provider at its connection limit refuses, but only after a full
/// handshake. When every far lookup named a release's first 20 providers
/// (libp2p-kad's `MemoryStore`, before the node's own provider store),
/// those sat at their limit, and re-dialled at every lookup one took
/// 7,000-7,900 connections in the eight minutes of `cellular-1000`. Not
/// re-dialled for a minute, the dialler tries the lookup's other
/// providers instead.
pub const FAR_REDIAL: Duration = Duration::from_secs(60);

/// Least time between provider lookups for one fetch.
pub const PROVIDER_REFRESH: Duration = Duration::from_secs(5);

/// Repeated lookups that lead to no dial double the pause, this many
/// times at most (16 × the refresh: 80-160 s).
const LOOKUP_BACKOFF: u32 = 4;

/// The pause before repeating a lookup, `refresh` after `in_vain`
/// lookups that led to no dial. Every answer comes from the DHT's
/// servers: in the simulator the origin alone, and in a fleet the few
/// peers nearest the release's key, who are asked by the whole fleet.
/// Behind a 0.5 Mbit/s origin, 1,000 devices asking every 5-10 s made
/// 22,000 lookups in 150 s, each answered over its uplink; 6,200-6,800
/// with the back-off.
pub fn lookup_pause(refresh: Duration, in_vain: u32) -> Duration {
    super::doubled(refresh, in_vain, refresh * (1 << LOOKUP_BACKOFF))
}

/// What discovery asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryAction<P> {
    /// Look up the release's providers under the site's key when `site`,
    /// and under the release's own key too when `far` (or when there is
    /// no site). If nobody can be asked, now or later, tell
    /// [`Discovery::handle_lookup_unanswerable`].
    Lookup {
        /// Peers of other sites are wanted.
        far: bool,
        /// The site's key is asked too. Always when not `far`; with `far`,
        /// only while fewer than [`MAX_SITE_DIALS`] providers of the site
        /// are connected (see [`Discovery::handle_timeout`]).
        site: bool,
    },
    /// Connect to this provider.
    Dial(P),
}

/// Where a fetch stands, as far as discovery cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The manifest is sought.
    Resolving,
    /// The chunks are fetched.
    Downloading {
        /// Some peer is known to serve the release.
        sources: bool,
        /// The discovery grace is still on: the site's peers are not all
        /// heard yet, so nothing is pulled over the WAN.
        grace: bool,
        /// It is this device's turn to pull a chunk its site lacks
        /// ([`super::Scheduler::wan_turn`]).
        wan_turn: bool,
    },
}

/// The discovery state of one fetch.
#[derive(Debug)]
pub struct Discovery<P> {
    local: P,
    has_site: bool,
    /// A lookup of the site's providers (or, with no site, of the
    /// release's) has finished: once downloading and providing, one
    /// issued after the provide was stored.
    site_lookup_done: bool,
    /// Waiting for the lookup that follows this node's own provide.
    wait_provide: bool,
    /// Providers the site lookups found.
    site_found: BTreeSet<P>,
    /// Of those, the ones connected when found or dialled: the grace
    /// waits to hear these ([`Discovery::site_heard`]).
    site_waited: BTreeSet<P>,
    /// Providers found under the release's key only (so most likely of
    /// other sites), not dialled while far peers are not wanted: each WAN
    /// connection costs kilobytes of handshakes and `Have` polls, per
    /// device, for peers nobody would fetch from. Only a lookup knows
    /// their addresses (Kademlia keeps a provider's addresses with the
    /// query that found it), so when they are wanted they are looked up
    /// again, not dialled from here.
    far: BTreeSet<P>,
    /// Far providers are wanted while the manifest is sought: nobody
    /// connected had it.
    want_far: bool,
    /// A lookup under the release's key has been made.
    far_looked: bool,
    /// Providers of other sites this fetch dialled, and when.
    far_dialled: BTreeMap<P, Instant>,
    /// Last lookup.
    lookup_at: Instant,
    /// Lookups repeated since one last led to a dial.
    in_vain: u32,
    /// Every provider the lookups named.
    seen: BTreeSet<P>,
    actions: VecDeque<DiscoveryAction<P>>,
}

impl<P: Copy + Ord + Hash + Debug + PeerBytes> Discovery<P> {
    /// Discovery for a fetch that starts `now` on `local`, a device with
    /// a site if `has_site`. Its first action is a lookup of the site.
    pub fn new(local: P, has_site: bool, now: Instant) -> Self {
        Self {
            local,
            has_site,
            site_lookup_done: false,
            wait_provide: false,
            site_found: BTreeSet::new(),
            site_waited: BTreeSet::new(),
            far: BTreeSet::new(),
            want_far: false,
            far_looked: false,
            far_dialled: BTreeMap::new(),
            lookup_at: now,
            in_vain: 0,
            seen: BTreeSet::new(),
            actions: VecDeque::from([DiscoveryAction::Lookup {
                far: false,
                site: true,
            }]),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<DiscoveryAction<P>> {
        self.actions.pop_front()
    }

    /// Whether the fetch wants peers of other sites, so its lookups ask
    /// the release's key too: while the manifest is sought, once nobody
    /// connected had it; while downloading, once the grace is over and
    /// it is this device's turn to pull a chunk its site lacks. A device
    /// whose site holds the release asks only its site's key.
    pub fn far_wanted(&self, stage: Stage) -> bool {
        match stage {
            Stage::Resolving => self.want_far,
            Stage::Downloading {
                grace, wan_turn, ..
            } => !grace && wan_turn,
        }
    }

    /// Nobody can be asked for providers, now or later (no DHT peer and no
    /// bootstrap): the site's lookup counts as done.
    pub fn handle_lookup_unanswerable(&mut self) {
        self.site_lookup_done = true;
    }

    /// This node announced itself as a provider, and a lookup of the site
    /// will follow once the announcement is stored: devices of a wave
    /// start together, and a lookup from before the announcement missed
    /// those that started with this one.
    pub fn handle_providing(&mut self) {
        self.wait_provide = true;
        self.site_lookup_done = false;
    }

    /// A lookup (under the site's key if `site`; issued after this node's
    /// provide was stored if `after_provide`) ended, having reached a DHT
    /// peer.
    pub fn handle_lookup_finished(&mut self, site: bool, after_provide: bool) {
        if (site || !self.has_site) && (after_provide || !self.wait_provide) {
            self.site_lookup_done = true;
        }
    }

    /// A lookup (under the site's key if `site`) named `providers`:
    /// dial a few of those not connected.
    pub fn handle_providers(
        &mut self,
        providers: impl IntoIterator<Item = P>,
        site: bool,
        stage: Stage,
        connected: impl Fn(&P) -> bool,
        now: Instant,
    ) {
        // Until the grace has decided whether the site lacks anything, and
        // while it lacks nothing, far providers wait (see `far`).
        let wait = self.has_site && !self.far_wanted(stage);
        let mut far_candidates = Vec::new();
        let mut site_candidates = Vec::new();
        // Whether the lookup led anywhere: a dial, or a far provider kept
        // for later. Naming providers not seen before was the test, and in
        // a fleet of 1,000 nearly every lookup names one (20 of hundreds,
        // at random), so devices with all their dials up looked up every
        // 10 s: 42 lookups a device on `cellular-1000`, each answered with
        // kilobytes of records over the site's WAN and the origin's.
        let mut led = false;
        for p in providers {
            if p == self.local {
                continue;
            }
            let fresh = self.seen.insert(p);
            if site {
                self.site_found.insert(p);
                self.far.remove(&p);
            }
            if connected(&p) {
                if self.site_found.contains(&p) {
                    self.site_waited.insert(p);
                }
                continue;
            }
            let far = !site && !self.site_found.contains(&p);
            if far && wait {
                led |= self.far.insert(p) && fresh;
            } else if far && self.has_site {
                far_candidates.push(p);
            } else if self.has_site {
                site_candidates.push(p);
            } else {
                if site {
                    self.site_waited.insert(p);
                }
                led = true;
                self.actions.push_back(DiscoveryAction::Dial(p));
            }
        }
        let up = self.site_found.iter().filter(|p| connected(p)).count();
        for p in site_dials(&self.local, site_candidates, up, &connected) {
            self.site_waited.insert(p);
            led = true;
            self.actions.push_back(DiscoveryAction::Dial(p));
        }
        let far = far_dials(
            &self.local,
            far_candidates,
            &mut self.far_dialled,
            &connected,
            now,
        );
        for p in far {
            led = true;
            self.actions.push_back(DiscoveryAction::Dial(p));
        }
        if led {
            self.in_vain = 0;
        }
    }

    /// Every connected peer was asked for the manifest in vain: the
    /// release's other providers are all that is left, looked up (again)
    /// to be dialled at once.
    pub fn handle_manifest_unfound(&mut self, now: Instant) {
        if self.want_far {
            return;
        }
        self.want_far = true;
        self.far_looked = true;
        self.far.clear();
        self.lookup_at = now;
        self.actions.push_back(DiscoveryAction::Lookup {
            far: true,
            site: true,
        });
    }

    /// The download made no progress for long: look everywhere once.
    pub fn handle_stalled(&mut self) {
        self.actions.push_back(DiscoveryAction::Lookup {
            far: true,
            site: true,
        });
    }

    /// Timers: a first far lookup once far peers are wanted (or found while
    /// unwanted), and lookups repeated while sources are lacking.
    /// `connected` says which peers are connected now.
    ///
    /// A lookup for far peers asks the site's key only while fewer than
    /// [`MAX_SITE_DIALS`] providers of the site are connected: at that
    /// many the fetch dials no more of its site, so the site's answer
    /// (ten provider records, over half a kilobyte from the DHT's
    /// servers across the WAN) could change nothing.
    pub fn handle_timeout(&mut self, stage: Stage, connected: impl Fn(&P) -> bool, now: Instant) {
        if self.first_far_due(stage) {
            self.far.clear();
            self.far_looked = true;
            self.lookup_at = now;
            let site = self.site_dials_open(&connected);
            self.actions
                .push_back(DiscoveryAction::Lookup { far: true, site });
        }
        if self
            .next_lookup(stage, &connected)
            .is_some_and(|t| now >= t)
        {
            self.lookup_at = now;
            self.in_vain = self.in_vain.saturating_add(1);
            let far = self.far_wanted(stage);
            self.far_looked |= far;
            let site = !far || self.site_dials_open(&connected);
            self.actions
                .push_back(DiscoveryAction::Lookup { far, site });
        }
    }

    /// Whether a site lookup could still lead to a dial: fewer than
    /// [`MAX_SITE_DIALS`] providers of the site are connected.
    fn site_dials_open(&self, connected: &impl Fn(&P) -> bool) -> bool {
        self.site_found.iter().filter(|p| connected(p)).count() < MAX_SITE_DIALS
    }

    /// When [`Discovery::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self, stage: Stage, connected: impl Fn(&P) -> bool) -> Option<Instant> {
        if self.first_far_due(stage) {
            return Some(self.lookup_at);
        }
        self.next_lookup(stage, &connected)
    }

    /// Far peers wanted for the first time, or found while unwanted:
    /// looked up (again), this time to be dialled at once. Later lookups
    /// come with the refresh.
    fn first_far_due(&self, stage: Stage) -> bool {
        let downloading = matches!(stage, Stage::Downloading { .. });
        downloading && (!self.far_looked || !self.far.is_empty()) && self.far_wanted(stage)
    }

    /// When the next repeated lookup is due, if one is. With no manifest
    /// yet, or no source known, soon. While downloading, now and then:
    /// peers that started on the same release after this one are found
    /// only this way (clients are in no routing table), and without them
    /// a device waits out the origin's withholding for every chunk. Not
    /// while the site holds all this device misses: a lookup could then
    /// only add site peers, which find it anyway (it provides, they look
    /// up the site's key), and each one cost kilobytes of WAN (provider
    /// records with addresses): most of the 50-80 KB a device that
    /// imported nothing read over the WAN at 1,000 devices.
    ///
    /// Nor while a site provider is connected and far peers are not
    /// wanted: newcomers of the site find this device, and wave-3 devices
    /// of a 1,000-device run, slowed by the loaded host, made four to six
    /// lookups each.
    fn next_lookup(&self, stage: Stage, connected: &impl Fn(&P) -> bool) -> Option<Instant> {
        let site_near = self.site_found.iter().any(connected);
        let refresh = match stage {
            _ if site_near && !self.far_wanted(stage) => return None,
            Stage::Resolving => PROVIDER_REFRESH,
            Stage::Downloading { sources: false, .. } => PROVIDER_REFRESH,
            Stage::Downloading {
                grace: false,
                wan_turn: false,
                ..
            } => return None,
            Stage::Downloading { .. } => PROVIDER_REFRESH * 2,
        };
        Some(self.lookup_at + lookup_pause(refresh, self.in_vain))
    }

    /// A peer refused a chunk and named `peer` as the one that got it
    /// (`from_origin`: the refuser said it is an origin, which withholds
    /// chunks it served moments ago; no one else's word is taken): true
    /// if the driver should dial it (or, if
    /// connected, ask it for its `Have` again) as one of this fetch's far
    /// peers, whose answers are used ([`Discovery::polls`]). Without the
    /// name, a site found the one holder of a new chunk by provider
    /// lookups of random devices, a median of 67 s after it first asked
    /// (`throttled-1000`). Not a peer dialled within [`FAR_REDIAL`], and
    /// not past twice [`MAX_FAR_DIALS`] such peers at once: names come
    /// from whoever says it is an origin, so they must not make a device
    /// dial without end.
    pub fn handle_hint(
        &mut self,
        peer: P,
        from_origin: bool,
        connected: impl Fn(&P) -> bool,
        now: Instant,
    ) -> bool {
        if !from_origin {
            return false;
        }
        self.far_dialled
            .retain(|q, at| connected(q) || now < *at + FAR_REDIAL);
        if peer == self.local
            || self.far_dialled.contains_key(&peer)
            || self.far_dialled.len() >= 2 * MAX_FAR_DIALS
        {
            return false;
        }
        self.far_dialled.insert(peer, now);
        true
    }

    /// Whether a `Have` answer from `peer` (of another site if `far`) is
    /// used. A peer of another site that dialled this one polls it;
    /// polling it back doubled each far connection's `Have` traffic over
    /// both sites' WANs, and this device pulls from its own far dials.
    /// Without a site every peer is "another site", and all are used.
    pub fn polls(&self, peer: &P, far: bool) -> bool {
        !(far && self.has_site) || self.far_dialled.contains_key(peer)
    }

    /// The site's lookup is done and every site provider connected when
    /// found, or dialled, has been `heard` from.
    pub fn site_heard(&self, heard: impl Fn(&P) -> bool) -> bool {
        self.site_lookup_done && self.site_waited.iter().all(heard)
    }

    /// Whether a lookup of the site has finished (see `site_lookup_done`).
    pub fn site_lookup_done(&self) -> bool {
        self.site_lookup_done
    }

    /// Whether a site lookup named `peer`.
    pub fn is_site_provider(&self, peer: &P) -> bool {
        self.site_found.contains(peer)
    }

    /// Every provider a site lookup named.
    pub fn site_providers(&self) -> impl Iterator<Item = &P> {
        self.site_found.iter()
    }

    /// Lookups repeated since one last led to a dial.
    pub fn lookups_in_vain(&self) -> u32 {
        self.in_vain
    }
}

/// Which of `candidates` (far providers not connected) to dial, given
/// those this fetch `dialled` before: up to [`MAX_FAR_DIALS`] connected
/// in all, none dialled within [`FAR_REDIAL`], in an order of this
/// device's own, so devices spread over the providers rather than crowd
/// the first few a lookup names. Records the dials in `dialled`.
fn far_dials<P: Copy + Ord + PeerBytes>(
    local: &P,
    mut candidates: Vec<P>,
    dialled: &mut BTreeMap<P, Instant>,
    connected: &impl Fn(&P) -> bool,
    now: Instant,
) -> Vec<P> {
    dialled.retain(|q, at| connected(q) || now < *at + FAR_REDIAL);
    let up = dialled.keys().filter(|q| connected(q)).count();
    candidates.retain(|p| !dialled.contains_key(p) && !connected(p));
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
fn site_dials<P: Copy + Ord + PeerBytes>(
    local: &P,
    mut candidates: Vec<P>,
    up: usize,
    connected: &impl Fn(&P) -> bool,
) -> Vec<P> {
    candidates.retain(|p| !connected(p));
    spread(local, &mut candidates);
    candidates.truncate(MAX_SITE_DIALS.saturating_sub(up));
    candidates
}

/// A peer's id as bytes: the order in which a device dials providers is
/// the BLAKE3 of its own id's and theirs.
pub trait PeerBytes {
    /// The id's bytes (a libp2p peer id's multihash).
    fn peer_bytes(&self) -> Vec<u8>;
}

impl PeerBytes for u32 {
    fn peer_bytes(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

/// Sorts `peers` in an order of `local`'s own (BLAKE3 of both ids) and
/// drops repeats.
fn spread<P: Copy + Ord + PeerBytes>(local: &P, peers: &mut Vec<P>) {
    let me = local.peer_bytes();
    peers.sort_by_cached_key(|p| {
        let mut h = blake3::Hasher::new();
        h.update(&me);
        h.update(&p.peer_bytes());
        (*h.finalize().as_bytes(), *p)
    });
    peers.dedup();
}
