//! The fetch loop: resolves a manifest, then drives one [`Scheduler`] per
//! manifest being fetched, verifying every chunk before it is stored.
//!
//! The event loop owns a [`Fetches`] and feeds it network events; it
//! answers through the [`Net`] trait, so this file holds no swarm code.
//! Chunk verification (BLAKE3, capped zstd) and the durable `put_chunk`
//! run on the blocking pool and come back as [`Verified`].
//!
//! Split by concern: this file holds the per-fetch state and the
//! handlers for network events; `manifest` resolves the manifest;
//! `drive` runs the schedulers, timers and completion; `verify` checks
//! and stores arriving chunks; `report` holds the public option,
//! progress, report and error types. Which providers to look up and dial,
//! and when, is decided by each fetch's [`Discovery`], a sans-IO core;
//! this module only carries out its actions.

mod drive;
mod manifest;
mod report;
#[cfg(test)]
mod tests;
mod verify;

pub use report::{DownloadReport, FetchError, FetchOptions, FetchProgress};
pub(crate) use verify::Verified;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::request_response::OutboundRequestId;
use libp2p::{Multiaddr, PeerId};
use meshota_protocol::{
    Bitfield, ChunkId, Manifest, ManifestId, PeerRequest, PeerResponse, SiteId,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::serve::{of_other_site, Counters, TokenBucket};
use super::NodeEvent;
use crate::sched::{
    Discovery, DiscoveryAction, Failure, PeerClass, Scheduler, SchedulerConfig, Stage,
};
use crate::store::Store;
use manifest::ManifestSearch;

/// What the fetch loop asks of the network. Implemented by the event loop.
pub(crate) trait Net {
    /// Sends a request, returning its id.
    fn send(&mut self, peer: PeerId, request: PeerRequest) -> OutboundRequestId;
    /// Bans a peer node-wide (block list, disconnect, event).
    fn ban(&mut self, peer: PeerId, reason: String);
    /// Looks up providers of a manifest on Kademlia, under its site's key
    /// (left out when `far` and not `site`: the fetch's site dials are
    /// all up), and under the release's too when `far` (peers of other
    /// sites are wanted; see [`Fetches::far_wanted`]) or with no site.
    /// False when there is nobody to ask, now or later (no DHT peer and no
    /// bootstrap).
    fn find_providers(&mut self, id: ManifestId, far: bool, site: bool) -> bool;
    /// Connects to a peer whose addresses are known.
    fn dial(&mut self, peer: PeerId);
    /// Connects to a peer at these addresses.
    fn dial_at(&mut self, peer: PeerId, addrs: Vec<Multiaddr>);
    /// Announces on Kademlia that this node holds a manifest. True when a
    /// lookup of the site will follow once the announcement is stored
    /// (see [`Fetches::lookup_finished`]).
    fn provide(&mut self, id: ManifestId) -> bool;
    /// Hands a decoded manifest to the server's cache.
    fn remember(&mut self, id: ManifestId, manifest: Arc<Manifest>);
    /// Publishes a node event.
    fn event(&mut self, event: NodeEvent);
}

/// What an outbound request was for.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Manifest,
    Have,
    Chunk {
        index: usize,
        chunk: ChunkId,
        len: u32,
    },
}

type Reply = oneshot::Sender<Result<DownloadReport, FetchError>>;

/// Longest wait for the site's peers to be found and heard before peers
/// of other sites and origins are used (see [`Download::grace`]). It
/// only delays WAN sources: same-site fetching starts at once. At 5 s,
/// every wave-2 device of a 1,000-device simulation (2 loaded cores,
/// `Have` answers taking seconds) ran out of it and pulled from the WAN;
/// 15 s cut the origin's share from 4.1–5.2 to 2.65 bundles.
const DISCOVERY_GRACE: Duration = Duration::from_secs(15);

struct Download {
    manifest: Arc<Manifest>,
    sched: Scheduler<PeerId>,
    /// Manifest positions held, for progress.
    held: Bitfield,
    held_count: usize,
    /// Peers told to the scheduler.
    known: HashSet<PeerId>,
    /// Peers sent a `Have` (or waiting to be re-asked).
    queried: HashSet<PeerId>,
    /// Peers that lacked the manifest, to ask again later.
    have_retry: Vec<(Instant, PeerId)>,
    /// Peers that answered a `Have` at least once (any answer).
    answered: HashSet<PeerId>,
    /// Origins, and with a site configured peers of other sites, are
    /// introduced to the scheduler only once this node has looked up its
    /// site's providers, and every queried peer and every site provider
    /// it connected to or dialled has answered (or at this instant). Until
    /// the scheduler knows which neighbours hold the release or are
    /// fetching it too, a chunk no neighbour is known to hold looks like
    /// one the site lacks: every device would take itself for its
    /// rendezvous home and pull it over the WAN.
    grace: Option<Instant>,
    /// Answers from other sites and origins held back during the grace:
    /// peer, class, whether it is fetching, and its bitfield.
    held_back: Vec<(PeerId, PeerClass, bool, Bitfield)>,
}

enum Phase {
    Manifest(ManifestSearch),
    Download(Box<Download>),
}

struct Fetch {
    started: Instant,
    /// Which providers to look up and dial, and when.
    disc: Discovery<PeerId>,
    deadline: Option<(Instant, Duration)>,
    progress: Option<watch::Sender<FetchProgress>>,
    replies: Vec<Reply>,
    phase: Phase,
}

/// Where a fetch in `phase` stands, for its [`Discovery`].
fn stage_of(phase: &Phase) -> Stage {
    match phase {
        Phase::Manifest(_) => Stage::Resolving,
        Phase::Download(dl) => Stage::Downloading {
            sources: !dl.known.is_empty(),
            grace: dl.grace.is_some(),
            wan_turn: dl.sched.wan_turn(),
        },
    }
}

impl Fetch {
    fn far_wanted(&self) -> bool {
        self.disc.far_wanted(stage_of(&self.phase))
    }
}

/// What each request out is for.
type Pending = HashMap<OutboundRequestId, (ManifestId, PeerId, Tag)>;

/// A chunk request the scheduler made, sent at once or held back by the
/// download limiter.
#[derive(Debug, Clone, Copy)]
struct ChunkAsk {
    id: ManifestId,
    peer: PeerId,
    index: usize,
    chunk: ChunkId,
    len: u32,
    /// The peer is an origin: only an origin withholds chunks and names
    /// who got them, so only it is asked for hints.
    hints: bool,
}

/// Every fetch in progress on one node.
pub(crate) struct Fetches {
    /// This node, for the scheduler's site and origin rendezvous.
    local: PeerId,
    store: Arc<dyn Store>,
    site: Option<SiteId>,
    sched_config: SchedulerConfig,
    counters: Arc<Counters>,
    fetches: HashMap<ManifestId, Fetch>,
    pending: Pending,
    connected: HashSet<PeerId>,
    /// Download limiter; requests wait in `queued` while it is in debt.
    limiter: Option<TokenBucket>,
    queued: VecDeque<ChunkAsk>,
    verified_tx: mpsc::UnboundedSender<Verified>,
}

/// What a `Have` answer tells a same-site asker about this site's
/// download (see [`Fetches::site_news_for`]).
#[derive(Debug, Default)]
pub(crate) struct SiteNews {
    pub importing: Option<Bitfield>,
    pub relayed: Option<Bitfield>,
    pub roster: Vec<u64>,
    pub site_holds: Option<Bitfield>,
    pub site_holds_relayed: Option<Bitfield>,
}

/// A `Have` request, which carries our site so that a neighbour's answer
/// can tell us what it imports, and, to a neighbour of our site, what we
/// import (`importing`; see `sched::check`).
fn have_request(
    manifest: ManifestId,
    site: &Option<SiteId>,
    importing: Option<Bitfield>,
) -> PeerRequest {
    PeerRequest::Have {
        manifest,
        site: site.clone(),
        importing,
    }
}

fn class_of(ours: &Option<SiteId>, theirs: &Option<SiteId>, origin: bool) -> PeerClass {
    if origin {
        PeerClass::Origin
    } else if ours.is_some() && ours == theirs {
        PeerClass::SameSite
    } else {
        PeerClass::OtherSite
    }
}

impl Fetches {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        local: PeerId,
        store: Arc<dyn Store>,
        site: Option<SiteId>,
        sched_config: SchedulerConfig,
        download_limit_bps: Option<u64>,
        counters: Arc<Counters>,
        verified_tx: mpsc::UnboundedSender<Verified>,
        now: Instant,
    ) -> Self {
        let mut sched_config = sched_config;
        // Tie-breaks and the order peers are walked in (see
        // `Scheduler::next_request`) must differ between devices, even in
        // a fleet configured with one seed, so that neighbours pull
        // different chunks first and do not all ask the same neighbours.
        sched_config.seed ^= super::peer_seed(&local);
        // Under a download cap, requests beyond what it lets in within a
        // few seconds would only queue here or at the uploaders.
        if sched_config.max_in_flight_bytes == u64::MAX {
            sched_config.max_in_flight_bytes =
                SchedulerConfig::in_flight_for_rate(download_limit_bps);
        }
        Self {
            local,
            store,
            site,
            sched_config,
            counters,
            fetches: HashMap::new(),
            pending: HashMap::new(),
            connected: HashSet::new(),
            limiter: download_limit_bps.map(|r| TokenBucket::new(r, now)),
            queued: VecDeque::new(),
            verified_tx,
        }
    }

    /// Starts fetching `id`, or joins a fetch of it already running.
    pub(crate) fn start(
        &mut self,
        id: ManifestId,
        opts: FetchOptions,
        reply: Reply,
        now: Instant,
        net: &mut dyn Net,
    ) {
        if let Some(f) = self.fetches.get_mut(&id) {
            f.replies.push(reply);
            return;
        }
        let stored = match self.store.get_manifest(&id) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        let manifest = stored.and_then(|bytes| match Manifest::decode(&bytes) {
            Ok((got, m)) if got == id => Some(m),
            _ => {
                tracing::warn!(manifest = %id.short(), "stored manifest is unusable; fetching it again");
                None
            }
        });
        let fetch = Fetch {
            started: now,
            disc: Discovery::new(self.local, self.site.is_some(), now),
            deadline: opts.timeout.map(|t| (now + t, t)),
            progress: opts.progress,
            replies: vec![reply],
            phase: Phase::Manifest(ManifestSearch::default()),
        };
        self.fetches.insert(id, fetch);
        self.discover(id, net);
        match manifest {
            Some(m) => self.begin_download(id, Arc::new(m), now, net),
            None => self.ask_manifest(id, now, net),
        }
    }

    fn begin_download(
        &mut self,
        id: ManifestId,
        manifest: Arc<Manifest>,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let held = match self.store.held(&manifest) {
            Ok(h) => h,
            Err(e) => {
                self.finish(id, Err(e.into()), net);
                return;
            }
        };
        net.remember(id, manifest.clone());
        // Announced now, not when complete: a node serves what it holds
        // while it downloads, and without this the first devices of a
        // rollout in different sites never learn of each other (Kademlia
        // clients are in no routing table) and all wait on the origin.
        let wait_provide = net.provide(id);
        let mut sched = Scheduler::new(&manifest, &held, self.sched_config.clone(), now);
        sched.set_local_peer(self.local);
        let held_count = held.count();
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        if wait_provide {
            fetch.disc.handle_providing();
        }
        let mut dl = Download {
            manifest,
            sched,
            held,
            held_count,
            known: HashSet::new(),
            queried: HashSet::new(),
            have_retry: Vec::new(),
            answered: HashSet::new(),
            grace: Some(now + DISCOVERY_GRACE),
            held_back: Vec::new(),
        };
        for &peer in &self.connected {
            dl.queried.insert(peer);
            let rid = net.send(peer, have_request(id, &self.site, None));
            self.pending.insert(rid, (id, peer, Tag::Have));
        }
        fetch.phase = Phase::Download(Box::new(dl));
    }

    /// Whether the fetch of `id` wants peers of other sites, so its
    /// lookups ask the release's key too: while the manifest is sought,
    /// once nobody connected had it; while downloading, once the grace is
    /// over and it is this device's turn to pull a chunk its site lacks
    /// ([`Scheduler::wan_turn`]). A device whose site holds the release
    /// asks only its site's key.
    pub(crate) fn far_wanted(&self, id: &ManifestId) -> bool {
        self.fetches.get(id).is_some_and(Fetch::far_wanted)
    }

    /// One line per fetch on where it stands (see [`Scheduler::describe`]).
    pub(crate) fn describe(&self, now: Instant) -> Vec<String> {
        self.fetches
            .iter()
            .map(|(id, f)| {
                let age = now.saturating_duration_since(f.started).as_secs();
                match &f.phase {
                    Phase::Manifest(s) => format!(
                        "{}: {age} s, seeking the manifest from {} connected peers ({s})",
                        id.short(),
                        self.connected.len(),
                    ),
                    Phase::Download(dl) => format!(
                        "{}: {age} s, {} connected, {} queried, {} answered, \
                         {} answers from other sites held back; {}",
                        id.short(),
                        self.connected.len(),
                        dl.queried.len(),
                        dl.answered.len(),
                        dl.held_back.len(),
                        dl.sched.describe(now)
                    ),
                }
            })
            .collect()
    }

    /// What a `Have` answer to a same-site `asker` carries of the
    /// download of `id`: what it awaits from the WAN
    /// ([`Scheduler::importing`]), what its other site neighbours said
    /// they await ([`Scheduler::relayed_for`]), those of them that
    /// fetch it too ([`Scheduler::fetching_neighbours`]), and what its
    /// neighbours hold ([`Scheduler::site_holds`]) and said theirs hold
    /// ([`Scheduler::site_holds_relayed_for`]). Nothing for an asker of
    /// another site.
    pub(crate) fn site_news_for(
        &self,
        id: &ManifestId,
        asker_site: Option<&SiteId>,
        asker: &PeerId,
        now: Instant,
    ) -> SiteNews {
        if asker_site.is_none() || asker_site != self.site.as_ref() {
            return SiteNews::default();
        }
        let Some(Fetch {
            phase: Phase::Download(dl),
            ..
        }) = self.fetches.get(id)
        else {
            return SiteNews::default();
        };
        let own = dl.sched.importing();
        let relayed = dl.sched.relayed_for(asker);
        SiteNews {
            importing: (own.count() > 0).then_some(own),
            relayed: (relayed.count() > 0).then_some(relayed),
            roster: dl.sched.fetching_neighbours(asker, now),
            site_holds: Some(dl.sched.site_holds()),
            site_holds_relayed: Some(dl.sched.site_holds_relayed_for(asker)),
        }
    }

    /// A same-site neighbour's `Have` request for `id` said what it
    /// imports (`sched::check`): heard at once rather than at our next
    /// poll of it. A field of the wrong length is ignored.
    pub(crate) fn take_asker_claims(
        &mut self,
        id: &ManifestId,
        asker_site: Option<&SiteId>,
        asker: PeerId,
        importing: &Bitfield,
        now: Instant,
    ) {
        if asker_site.is_none() || asker_site != self.site.as_ref() {
            return;
        }
        let Some(Fetch {
            phase: Phase::Download(dl),
            ..
        }) = self.fetches.get_mut(id)
        else {
            return;
        };
        // As for the bitfields of a `Have` answer (`on_have`).
        if importing.check(dl.manifest.chunks.len()).is_ok() {
            dl.sched.handle_peer_importing(asker, Some(importing), now);
        }
    }

    /// A connection to a new peer is up: include it in every fetch.
    pub(crate) fn peer_connected(&mut self, peer: PeerId, now: Instant, net: &mut dyn Net) {
        self.connected.insert(peer);
        let ids: Vec<ManifestId> = self.fetches.keys().copied().collect();
        for id in ids {
            let Some(fetch) = self.fetches.get_mut(&id) else {
                continue;
            };
            match &mut fetch.phase {
                Phase::Manifest(_) => self.ask_manifest(id, now, net),
                Phase::Download(dl) => {
                    if dl.queried.insert(peer) {
                        let rid = net.send(peer, have_request(id, &self.site, None));
                        self.pending.insert(rid, (id, peer, Tag::Have));
                    }
                }
            }
        }
    }

    /// The last connection to a peer closed.
    pub(crate) fn peer_disconnected(&mut self, peer: PeerId, now: Instant) {
        self.connected.remove(&peer);
        for fetch in self.fetches.values_mut() {
            match &mut fetch.phase {
                Phase::Manifest(search) => search.forget(&peer),
                Phase::Download(dl) => {
                    dl.queried.remove(&peer);
                    dl.held_back.retain(|(p, ..)| *p != peer);
                    dl.have_retry.retain(|(_, p)| *p != peer);
                    if dl.known.remove(&peer) {
                        dl.sched.handle_peer_lost(peer, now);
                    }
                }
            }
        }
        self.queued.retain(|ask| ask.peer != peer);
    }

    /// Kademlia found providers (under the site's key if `site`): connect
    /// to a few of those not yet connected (see [`Discovery`]).
    pub(crate) fn providers_found(
        &mut self,
        id: ManifestId,
        providers: impl IntoIterator<Item = PeerId>,
        site: bool,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let stage = stage_of(&fetch.phase);
        let connected = |p: &PeerId| self.connected.contains(p);
        fetch
            .disc
            .handle_providers(providers, site, stage, connected, now);
        self.discover(id, net);
    }

    /// A provider lookup for `id` (under the site's key if `site`;
    /// issued after this node's provide was stored if `after_provide`)
    /// ended, having reached a DHT peer.
    pub(crate) fn lookup_finished(&mut self, id: ManifestId, site: bool, after_provide: bool) {
        if let Some(fetch) = self.fetches.get_mut(&id) {
            fetch.disc.handle_lookup_finished(site, after_provide);
        }
    }

    /// Carries out what the discovery of `id` asks: lookups and dials.
    fn discover(&mut self, id: ManifestId, net: &mut dyn Net) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        while let Some(action) = fetch.disc.poll_action() {
            match action {
                DiscoveryAction::Lookup { far, site } => {
                    if !net.find_providers(id, far, site) {
                        fetch.disc.handle_lookup_unanswerable();
                    }
                }
                DiscoveryAction::Dial(peer) => net.dial(peer),
            }
        }
    }

    /// A response to one of our requests arrived.
    pub(crate) fn on_response(
        &mut self,
        peer: PeerId,
        rid: OutboundRequestId,
        response: PeerResponse,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let Some((id, _, tag)) = self.pending.remove(&rid) else {
            // Its download ended (a finished fetch forgets its requests).
            self.count_unused(&response);
            return;
        };
        match tag {
            Tag::Manifest => self.on_manifest(id, peer, response, now, net),
            Tag::Have => self.on_have(id, peer, response, now, net),
            Tag::Chunk { index, chunk, len } => {
                self.on_chunk(id, peer, index, chunk, len, response, now, net)
            }
        }
    }

    /// One of our requests failed in transport (timeout, connection gone).
    pub(crate) fn on_failure(
        &mut self,
        peer: PeerId,
        rid: OutboundRequestId,
        reason: String,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let Some((id, _, tag)) = self.pending.remove(&rid) else {
            return;
        };
        // `RUST_LOG=meshota::request_failed=debug`: on slow uplinks
        // thousands of requests failed at exactly 10 s, libp2p's limit on
        // opening a stream, and each failure cost the peer a cool-off.
        tracing::debug!(target: "meshota::request_failed", %peer, ?tag, %reason, "request failed");
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        match (&mut fetch.phase, tag) {
            (Phase::Manifest(_), Tag::Manifest) => self.manifest_failed(id, now, net),
            (Phase::Download(dl), Tag::Have) => {
                dl.answered.insert(peer);
                if dl.known.contains(&peer) {
                    dl.sched
                        .handle_query_failed(peer, Failure::Unresponsive(reason), now);
                }
                dl.have_retry
                    .push((now + self.sched_config.have_refresh, peer));
            }
            (Phase::Download(dl), Tag::Chunk { index, .. }) => {
                dl.sched
                    .handle_chunk_failed(peer, index, Failure::Unresponsive(reason), now);
            }
            _ => {}
        }
    }

    fn on_have(
        &mut self,
        id: ManifestId,
        peer: PeerId,
        response: PeerResponse,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let Some(Fetch {
            phase: Phase::Download(dl),
            disc,
            ..
        }) = self.fetches.get_mut(&id)
        else {
            return;
        };
        match response {
            PeerResponse::Have {
                bitfield,
                site,
                origin,
                fetching,
                importing,
                relayed,
                roster,
                site_holds,
                site_holds_relayed,
            } => {
                let chunks = dl.manifest.chunks.len();
                if let Err(e) = bitfield.check(chunks) {
                    net.ban(peer, format!("sent an unusable bitfield: {e}"));
                    return;
                }
                for (what, b) in [
                    ("importing", &importing),
                    ("relayed", &relayed),
                    ("site-holds", &site_holds),
                    ("site-holds-relayed", &site_holds_relayed),
                ] {
                    if let Some(Err(e)) = b.as_ref().map(|b| b.check(chunks)) {
                        net.ban(peer, format!("sent an unusable {what} bitfield: {e}"));
                        return;
                    }
                }
                // Found again on every answer: a peer dropped for a while
                // comes back once its cool-off is over.
                dl.answered.insert(peer);
                let class = class_of(&self.site, &site, origin);
                if !origin && of_other_site(self.site.as_ref(), site.as_ref()) {
                    self.counters
                        .far_have_received
                        .fetch_add(1, Ordering::Relaxed);
                }
                if !disc.polls(&peer, class == PeerClass::OtherSite) {
                    if dl.known.remove(&peer) {
                        dl.sched.handle_peer_lost(peer, now);
                    }
                    dl.held_back.retain(|(p, ..)| *p != peer);
                    return;
                }
                // Without a site every peer is "another site" and nothing
                // is saved by waiting: only origins are held back then.
                let hold = match class {
                    PeerClass::SameSite => false,
                    PeerClass::OtherSite => self.site.is_some(),
                    PeerClass::Origin => true,
                };
                if hold && dl.grace.is_some() {
                    dl.held_back.retain(|(p, ..)| *p != peer);
                    dl.held_back.push((peer, class, fetching, bitfield));
                    return;
                }
                dl.sched.handle_peer_found(peer, class, now);
                dl.known.insert(peer);
                dl.sched.handle_peer_fetching(peer, fetching);
                dl.sched.handle_peer_have(peer, &bitfield, now);
                dl.sched
                    .handle_peer_importing(peer, importing.as_ref(), now);
                dl.sched.handle_peer_relayed(peer, relayed.as_ref(), now);
                dl.sched.handle_peer_roster(peer, &roster, now);
                dl.sched.handle_peer_site_holds(
                    peer,
                    site_holds.as_ref(),
                    site_holds_relayed.as_ref(),
                    now,
                );
            }
            PeerResponse::NotFound | PeerResponse::Busy => {
                // It lacks the manifest for now (or stopped seeding); ask
                // again soon: it is probably resolving the same release.
                dl.answered.insert(peer);
                if dl.known.remove(&peer) {
                    dl.sched.handle_query_failed(peer, Failure::NotFound, now);
                }
                dl.have_retry
                    .push((now + self.sched_config.have_refresh / 4, peer));
            }
            other => net.ban(peer, format!("answered a Have request with {other:?}")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_chunk(
        &mut self,
        id: ManifestId,
        peer: PeerId,
        index: usize,
        chunk: ChunkId,
        len: u32,
        response: PeerResponse,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let Some(Fetch {
            phase: Phase::Download(dl),
            started,
            ..
        }) = self.fetches.get_mut(&id)
        else {
            self.count_unused(&response);
            return;
        };
        if dl
            .sched
            .peer_class(&peer)
            .is_some_and(|c| c != PeerClass::SameSite)
        {
            // With the requests logged in `drive`, how many of a site's
            // WAN requests for one chunk were taken.
            tracing::debug!(
                target: "meshota::wan",
                site = ?self.site,
                me = %self.local,
                %peer,
                index,
                since_start_ms = now.saturating_duration_since(*started).as_millis() as u64,
                answer = match &response {
                    PeerResponse::Chunk { .. } => "chunk",
                    PeerResponse::Busy => "busy",
                    PeerResponse::NotFound => "not-found",
                    PeerResponse::Elsewhere { .. } => "elsewhere",
                    _ => "other",
                },
                "WAN answer",
            );
        }
        match response {
            // Held already (a late answer, an endgame loser): nothing to
            // verify or store.
            PeerResponse::Chunk { data, .. } if dl.held.get(index) => {
                let bytes = data.len() as u64;
                self.counters
                    .unused_chunk_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                dl.sched.handle_chunk_arrived(peer, index, bytes, now);
            }
            PeerResponse::Chunk { encoding, data } => {
                self.spawn_verify(id, peer, index, chunk, len, encoding, data)
            }
            PeerResponse::NotFound => {
                dl.sched
                    .handle_chunk_failed(peer, index, Failure::NotFound, now)
            }
            PeerResponse::Elsewhere { holder } => {
                let from_origin = dl.sched.peer_class(&peer) == Some(PeerClass::Origin);
                dl.sched
                    .handle_chunk_failed(peer, index, Failure::NotFound, now);
                self.follow_hint(id, &holder, from_origin, now, net);
            }
            PeerResponse::Busy => dl
                .sched
                .handle_chunk_failed(peer, index, Failure::Busy, now),
            other => {
                let reason = format!("answered a chunk request with {other:?}");
                dl.sched
                    .handle_chunk_failed(peer, index, Failure::Misbehaved(reason.clone()), now);
                net.ban(peer, reason);
            }
        }
    }
}
