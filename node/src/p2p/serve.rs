//! Serving chunks, manifests and bitfields to peers, with an upload
//! bandwidth limit and a cap on concurrent uploads.
//!
//! The event loop owns a [`Server`]. A request is answered at once when
//! no bandwidth limit applies; otherwise the limiter paces chunk answers
//! one after another ([`TokenBucket::pace`]): a task waits out each
//! one's turn and hands it back to the loop through a channel, so the
//! loop itself never sleeps, and the codec writes it at the capped rate
//! ([`super::codec::write_paced`]). A request whose turn would come too late
//! (`upload_queue_max`) is answered `Busy` instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::request_response::{InboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId};
use meshota_protocol::{
    Bitfield, ChunkId, Manifest, ManifestId, PeerHint, PeerRequest, PeerResponse, SiteId,
    MAX_HINT_ADDRS,
};
use tokio::sync::mpsc;

use super::addr_book::AddrBook;
use crate::sched::OriginDedup;
use crate::store::Store;

/// A token bucket measured in bytes, driven by the caller's clock.
///
/// Reservations may drive the balance negative ("debt"); the caller then
/// waits the returned delay before using the bytes. That keeps the long
/// run rate exact whatever the reservation sizes, with at most
/// `capacity` bytes of burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilling at `rate_bps` bytes per second, starting full
    /// with a burst of a tenth of a second (at least 16 KiB).
    pub fn new(rate_bps: u64, now: Instant) -> Self {
        let rate = rate_bps.max(1) as f64;
        let capacity = (rate / 10.0).max(16.0 * 1024.0);
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
    }

    /// Reserves `bytes` and returns how long to wait before sending them.
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Reserves `bytes` to be sent as soon as the debt of earlier
    /// reservations is paid, and returns how long that is: the bytes
    /// are sent first and paid for after.
    ///
    /// This is what uploads use. Paying first would hold each response
    /// back for its own size before the link even starts on it, so a
    /// chunk would land about one chunk time later than it must; paying
    /// after starts each answer right when the one before it should have
    /// drained (the codec then writes it at the capped rate,
    /// [`super::codec::write_paced`]). At a cap near the uplink rate,
    /// uploads then go out one after another at the full rate instead of
    /// side by side at a share of it, and each chunk reaches its peer
    /// (and can be served on from there) as early as it can.
    pub fn pace(&mut self, bytes: u64, now: Instant) -> Duration {
        self.refill(now);
        let wait = if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        };
        self.tokens -= bytes as f64;
        wait
    }

    /// How long bytes reserved now would wait: the debt still to pay.
    pub fn backlog(&mut self, now: Instant) -> Duration {
        self.ready_at(now)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// When the balance will be non-negative again (`None`: it is now).
    pub fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        if self.tokens >= 0.0 {
            None
        } else {
            Some(now + Duration::from_secs_f64(-self.tokens / self.rate))
        }
    }
}

/// Transfer counters of one node, readable without the event loop.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) uploaded_bytes: AtomicU64,
    pub(crate) uploaded_chunks: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) not_found: AtomicU64,
    pub(crate) downloaded_bytes: AtomicU64,
    pub(crate) downloaded_chunks: AtomicU64,
    pub(crate) chunk_requests_sent: AtomicU64,
    pub(crate) unused_chunk_bytes: AtomicU64,
    pub(crate) manifests_served: AtomicU64,
    pub(crate) provider_lookups: AtomicU64,
    pub(crate) release_lookups: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) far_have_received: AtomicU64,
    pub(crate) far_have_answered: AtomicU64,
    pub(crate) hints: AtomicU64,
    pub(crate) hints_followed: AtomicU64,
}

/// A snapshot of a node's transfer counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Chunk bytes (stored form) whose responses were flushed to peers.
    pub uploaded_bytes: u64,
    /// Chunks uploaded.
    pub uploaded_chunks: u64,
    /// `Busy` answers given (upload slots full).
    pub busy: u64,
    /// `NotFound` answers given.
    pub not_found: u64,
    /// Verified chunk bytes (wire form) received.
    pub downloaded_bytes: u64,
    /// Verified chunks received and stored.
    pub downloaded_chunks: u64,
    /// `Get` requests sent.
    pub chunk_requests_sent: u64,
    /// Chunk bytes (wire form) received that brought nothing: the chunk
    /// was already held (an answer that came after its request was
    /// given up and sent elsewhere, or an endgame duplicate), or its
    /// download had ended. Request-response cannot cancel an answer in
    /// flight, so every give-up can cost a whole chunk on the link.
    pub unused_chunk_bytes: u64,
    /// Manifests sent to peers.
    pub manifests_served: u64,
    /// Kademlia provider queries started, one per key asked. Each answer
    /// lists up to ten providers with their addresses (over half a
    /// kilobyte), so on a metered uplink this is what finding peers
    /// costs.
    pub provider_lookups: u64,
    /// Of those, queries under the release's key, which name providers
    /// of any site: made only while peers beyond the site are wanted (or
    /// with no site configured).
    pub release_lookups: u64,
    /// Origin only: chunk uploads that failed, after which the chunk was
    /// offered again rather than withheld ([`crate::sched::OriginDedup`]).
    pub released: u64,
    /// `Have` answers received from peers of another site (both sites
    /// known). Each is a stream opened, negotiated, answered and closed
    /// across two sites' WAN links: with the answers given, most of what
    /// a slow site's WAN carries besides chunks.
    pub far_have_received: u64,
    /// `Have` requests answered for askers of another site.
    pub far_have_answered: u64,
    /// Origin only: refusals of a withheld chunk that named who got it
    /// ([`PeerResponse::Elsewhere`]).
    pub hints: u64,
    /// Such answers received that led to a dial of the holder.
    pub hints_followed: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> NodeStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NodeStats {
            uploaded_bytes: l(&self.uploaded_bytes),
            uploaded_chunks: l(&self.uploaded_chunks),
            busy: l(&self.busy),
            not_found: l(&self.not_found),
            downloaded_bytes: l(&self.downloaded_bytes),
            downloaded_chunks: l(&self.downloaded_chunks),
            chunk_requests_sent: l(&self.chunk_requests_sent),
            unused_chunk_bytes: l(&self.unused_chunk_bytes),
            manifests_served: l(&self.manifests_served),
            provider_lookups: l(&self.provider_lookups),
            release_lookups: l(&self.release_lookups),
            released: l(&self.released),
            far_have_received: l(&self.far_have_received),
            far_have_answered: l(&self.far_have_answered),
            hints: l(&self.hints),
            hints_followed: l(&self.hints_followed),
        }
    }
}

/// Whether a peer of site `theirs` is of another site than `ours`, both
/// known: what the far `Have` counters count.
pub(crate) fn of_other_site(ours: Option<&SiteId>, theirs: Option<&SiteId>) -> bool {
    matches!((ours, theirs), (Some(a), Some(b)) if a != b)
}

/// A response whose upload-limiter delay has passed.
pub(crate) struct DelayedResponse {
    pub(crate) channel: ResponseChannel<PeerResponse>,
    pub(crate) response: PeerResponse,
}

/// How a chunk request is met before the store is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// The origin withholds the chunk: refused, naming its holder.
    Withheld,
    /// No slot, or the upload queue is too long.
    Busy,
    /// Served if held (and, on the origin, recorded as served).
    Weigh,
}

/// Settings the server needs from the node configuration.
pub(crate) struct ServeConfig {
    pub(crate) site: Option<SiteId>,
    pub(crate) seed: bool,
    pub(crate) origin: bool,
    pub(crate) corrupt_uploads: bool,
    pub(crate) max_concurrent_uploads: usize,
    pub(crate) upload_limit_bps: Option<u64>,
    /// See `P2pConfig::upload_queue_max`.
    pub(crate) upload_queue_max: Duration,
    /// Origin only: how long a served chunk is withheld (zero: never).
    pub(crate) origin_dedup_window: Duration,
}

/// Most peers whose addresses an origin keeps; past it the one noted
/// longest ago is forgotten.
const MAX_ADDR_BOOK: usize = 1 << 16;

/// Most decoded manifests (and held bitfields) kept for answering `Have`.
const MANIFEST_CACHE: usize = 16;
/// How long a computed bitfield answers `Have` before it is recomputed,
/// so a flood of `Have` requests costs one store scan per interval.
const HELD_TTL: Duration = Duration::from_millis(200);

/// Answers inbound requests. Owned by the event loop.
pub(crate) struct Server {
    store: Arc<dyn Store>,
    config: ServeConfig,
    /// Chunk uploads accepted and not yet flushed: their sizes, and for
    /// the origin the chunk, so a failed one is no longer withheld.
    in_flight: HashMap<InboundRequestId, (u64, ChunkId)>,
    limiter: Option<TokenBucket>,
    /// Decoded manifests, so a `Have` does not re-decode.
    manifests: HashMap<ManifestId, Arc<Manifest>>,
    /// Recently computed bitfields, by manifest.
    held: HashMap<ManifestId, (Instant, Bitfield)>,
    /// Origin only: chunks recently served, withheld from others.
    dedup: Option<OriginDedup>,
    /// Origin only: who got each chunk last. The same peer asking again
    /// never received it (timeout, broken connection) and is served.
    served_to: HashMap<ChunkId, PeerId>,
    /// Origin only: the listen addresses peers gave in identify, so a
    /// refusal can say where the chunk went ([`PeerResponse::Elsewhere`]).
    addrs: AddrBook,
    counters: Arc<Counters>,
    delayed: mpsc::UnboundedSender<DelayedResponse>,
}

impl Server {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        config: ServeConfig,
        counters: Arc<Counters>,
        delayed: mpsc::UnboundedSender<DelayedResponse>,
        now: Instant,
    ) -> Self {
        let limiter = config.upload_limit_bps.map(|r| TokenBucket::new(r, now));
        let dedup = (config.origin && !config.origin_dedup_window.is_zero())
            .then(|| OriginDedup::new(config.origin_dedup_window));
        Self {
            store,
            config,
            in_flight: HashMap::new(),
            limiter,
            manifests: HashMap::new(),
            held: HashMap::new(),
            dedup,
            served_to: HashMap::new(),
            addrs: AddrBook::new(MAX_ADDR_BOOK),
            counters,
            delayed,
        }
    }

    /// A peer said where it listens. Kept by an origin only, for as many
    /// peers as [`MAX_ADDR_BOOK`].
    pub(crate) fn note_addrs(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if self.dedup.is_none() || addrs.is_empty() {
            return;
        }
        let kept = addrs.iter().take(MAX_HINT_ADDRS).cloned().collect();
        self.addrs.note(peer, kept);
    }

    /// The answer to a `Get` of `chunk`, which this origin withholds: it
    /// served it moments ago, so the fleet has that copy, and an asker
    /// that takes hints is told whose.
    fn refusal(&self, chunk: &ChunkId, hints: bool) -> PeerResponse {
        match hints.then(|| self.holder_hint(chunk)).flatten() {
            Some(holder) => {
                self.counters.hints.fetch_add(1, Ordering::Relaxed);
                PeerResponse::Elsewhere { holder }
            }
            None => self.not_found(),
        }
    }

    /// Who got `chunk` from this origin last, and where to dial it.
    fn holder_hint(&self, chunk: &ChunkId) -> Option<PeerHint> {
        let holder = self.served_to.get(chunk)?;
        let addrs = self.addrs.get(holder).filter(|a| !a.is_empty())?;
        Some(PeerHint::new(
            holder.to_bytes(),
            addrs.iter().map(|a| a.to_vec()),
        ))
    }

    /// Counts a provider query started (see `NodeStats::provider_lookups`).
    pub(crate) fn count_lookup(&self, release: bool) {
        let c = &self.counters;
        c.provider_lookups.fetch_add(1, Ordering::Relaxed);
        if release {
            c.release_lookups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remembers a decoded manifest (the fetch loop already has it).
    pub(crate) fn remember(&mut self, id: ManifestId, manifest: Arc<Manifest>) {
        if self.manifests.len() >= MANIFEST_CACHE {
            self.manifests.clear();
        }
        self.manifests.insert(id, manifest);
    }

    /// A held manifest, decoded, if the store has it.
    pub(crate) fn manifest(&mut self, id: &ManifestId) -> Option<Arc<Manifest>> {
        if let Some(m) = self.manifests.get(id) {
            return Some(m.clone());
        }
        let bytes = match self.store.get_manifest(id) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(manifest = %id.short(), error = %e, "store failed reading manifest");
                return None;
            }
        };
        match Manifest::decode(&bytes) {
            Ok((got, m)) if got == *id => {
                let m = Arc::new(m);
                self.remember(*id, m.clone());
                Some(m)
            }
            Ok(_) | Err(_) => {
                tracing::warn!(manifest = %id.short(), "stored manifest does not decode to its id");
                None
            }
        }
    }

    fn not_found(&self) -> PeerResponse {
        self.counters.not_found.fetch_add(1, Ordering::Relaxed);
        PeerResponse::NotFound
    }

    /// Answers one request. Returns the response to send now, or `None`
    /// when it was handed to a delay task (or the channel was consumed).
    pub(crate) fn handle(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: PeerRequest,
        channel: ResponseChannel<PeerResponse>,
        fetching: bool,
        now: Instant,
    ) -> Option<(ResponseChannel<PeerResponse>, PeerResponse)> {
        if !self.config.seed {
            let r = self.not_found();
            return Some((channel, r));
        }
        let response = match request {
            PeerRequest::Have { manifest, site, .. } => {
                if of_other_site(self.config.site.as_ref(), site.as_ref()) {
                    self.counters
                        .far_have_answered
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.have(&manifest, fetching, now)
            }
            PeerRequest::Manifest { id } => match self.store.get_manifest(&id) {
                Ok(Some(data)) => {
                    self.counters
                        .manifests_served
                        .fetch_add(1, Ordering::Relaxed);
                    PeerResponse::Manifest { data }
                }
                Ok(None) => self.not_found(),
                Err(e) => {
                    tracing::warn!(error = %e, "store failed serving a manifest");
                    self.not_found()
                }
            },
            PeerRequest::Get { chunk, hints } => {
                match self.admission(peer, &chunk, now) {
                    Admission::Withheld => {
                        return Some((channel, self.refusal(&chunk, hints)));
                    }
                    Admission::Busy => {
                        self.counters.busy.fetch_add(1, Ordering::Relaxed);
                        return Some((channel, PeerResponse::Busy));
                    }
                    Admission::Weigh => {}
                }
                match self.store.get_chunk(&chunk) {
                    Ok(Some(_)) if !self.origin_admits(peer, &chunk, now) => {
                        self.refusal(&chunk, hints)
                    }
                    Ok(Some(stored)) => {
                        let mut data = stored.data;
                        if self.config.corrupt_uploads {
                            // A test-only fault: the copy costs nothing real.
                            let mut bad = data.to_vec();
                            let mid = bad.len() / 2;
                            if let Some(b) = bad.get_mut(mid) {
                                *b ^= 0xa5;
                            }
                            data = bad.into();
                        }
                        let size = data.len() as u64;
                        self.in_flight.insert(request_id, (size, chunk));
                        tracing::trace!(%peer, chunk = %chunk.short(), size, "serving chunk");
                        let response = PeerResponse::Chunk {
                            encoding: stored.encoding,
                            data,
                        };
                        let delay = self
                            .limiter
                            .as_mut()
                            .map(|l| l.pace(size, now))
                            .unwrap_or(Duration::ZERO);
                        if delay.is_zero() {
                            response
                        } else {
                            let tx = self.delayed.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                // The loop is gone on shutdown: nothing to send then.
                                let _ = tx.send(DelayedResponse { channel, response });
                            });
                            return None;
                        }
                    }
                    Ok(None) => self.not_found(),
                    Err(e) => {
                        tracing::warn!(error = %e, "store failed serving a chunk");
                        self.not_found()
                    }
                }
            }
        };
        Some((channel, response))
    }

    fn have(&mut self, id: &ManifestId, fetching: bool, now: Instant) -> PeerResponse {
        let cached = self
            .held
            .get(id)
            .filter(|(at, _)| now.saturating_duration_since(*at) < HELD_TTL)
            .map(|(_, b)| b.clone());
        let Some(manifest) = self.manifest(id) else {
            return self.not_found();
        };
        let held = match cached {
            Some(b) => b,
            None => match self.store.held(&manifest) {
                Ok(b) => {
                    if self.held.len() >= MANIFEST_CACHE {
                        self.held.clear();
                    }
                    self.held.insert(*id, (now, b.clone()));
                    b
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store failed computing held chunks");
                    return self.not_found();
                }
            },
        };
        let bitfield = match &self.dedup {
            None => held,
            Some(d) => {
                let offered = d.advertise(&manifest, now);
                let mut b = Bitfield::new(held.len());
                for i in 0..held.len() {
                    if held.get(i) && offered.get(i) {
                        b.set(i);
                    }
                }
                b
            }
        };
        PeerResponse::Have {
            bitfield,
            importing: None,
            relayed: None,
            roster: Vec::new(),
            site_holds: None,
            site_holds_relayed: None,
            site: self.config.site.clone(),
            origin: self.config.origin,
            fetching,
        }
    }

    /// How a `Get` of `chunk` from `peer` is met before the store is read.
    ///
    /// A withheld chunk is refused before the load is weighed: the
    /// refusal uploads nothing, and a `Busy` in its place (a capped
    /// origin's queue is full for much of a rollout's first minute)
    /// would send the asker back here after its back-off instead of to
    /// the copy the refusal names.
    fn admission(&mut self, peer: PeerId, chunk: &ChunkId, now: Instant) -> Admission {
        if self.origin_withholds(peer, chunk, now) {
            return Admission::Withheld;
        }
        let queued_too_long = self
            .limiter
            .as_mut()
            .is_some_and(|l| l.backlog(now) > self.config.upload_queue_max);
        if queued_too_long || self.in_flight.len() >= self.config.max_concurrent_uploads {
            Admission::Busy
        } else {
            Admission::Weigh
        }
    }

    /// Whether the origin withholds `chunk` from `peer` now (see
    /// [`Self::origin_admits`], which also records an upload).
    fn origin_withholds(&self, peer: PeerId, chunk: &ChunkId, now: Instant) -> bool {
        self.dedup.as_ref().is_some_and(|d| d.withheld(chunk, now))
            && self.served_to.get(chunk) != Some(&peer)
    }

    /// Whether the origin's dedup lets `peer` have `chunk` now.
    fn origin_admits(&mut self, peer: PeerId, chunk: &ChunkId, now: Instant) -> bool {
        let Some(dedup) = self.dedup.as_mut() else {
            return true;
        };
        if self.served_to.get(chunk) == Some(&peer) {
            return true;
        }
        if !dedup.admit(chunk, now) {
            return false;
        }
        if self.served_to.len() >= 1 << 20 {
            self.served_to.clear();
        }
        self.served_to.insert(*chunk, peer);
        true
    }

    /// A response was flushed: count an upload and free its slot.
    pub(crate) fn response_sent(&mut self, request_id: InboundRequestId) {
        if let Some((size, _)) = self.in_flight.remove(&request_id) {
            self.counters
                .uploaded_bytes
                .fetch_add(size, Ordering::Relaxed);
            self.counters
                .uploaded_chunks
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A response failed (peer gone, timeout): free its slot. On the
    /// origin the chunk is no longer withheld, unless another upload of it
    /// is under way: no one got that copy, and withholding it left the
    /// fleet without the chunk for the whole window (behind a 0.5 Mbit/s
    /// origin, 1,000 devices saw some 45 such failures in a run). Only
    /// failures libp2p reports count: an answer written after its
    /// requester stopped waiting, on a connection still open, is reported
    /// as sent.
    pub(crate) fn response_failed(&mut self, request_id: InboundRequestId) {
        let Some((_, chunk)) = self.in_flight.remove(&request_id) else {
            return;
        };
        let Some(dedup) = self.dedup.as_mut() else {
            return;
        };
        if self.in_flight.values().all(|(_, c)| *c != chunk) {
            dedup.release(&chunk);
            self.served_to.remove(&chunk);
            self.counters.released.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(now: Instant) -> Server {
        let config = ServeConfig {
            site: None,
            seed: true,
            origin: true,
            corrupt_uploads: false,
            max_concurrent_uploads: 4,
            upload_limit_bps: None,
            upload_queue_max: Duration::from_secs(1),
            origin_dedup_window: Duration::from_secs(300),
        };
        let store = Arc::new(crate::store::MemStore::new());
        Server::new(
            store,
            config,
            Arc::default(),
            mpsc::unbounded_channel().0,
            now,
        )
    }

    #[test]
    fn an_origin_names_who_got_a_withheld_chunk_to_an_asker_that_takes_hints() {
        let t0 = Instant::now();
        let mut s = origin(t0);
        let chunk = ChunkId::digest(b"c");
        let (first, second) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/10.0.0.7/tcp/4001".parse().unwrap();
        s.note_addrs(first, std::slice::from_ref(&addr));
        assert!(s.origin_admits(first, &chunk, t0));
        assert!(!s.origin_admits(second, &chunk, t0));
        match s.refusal(&chunk, true) {
            PeerResponse::Elsewhere { holder } => {
                assert_eq!(PeerId::from_bytes(&holder.peer).unwrap(), first);
                let addrs: Vec<&[u8]> = holder.addrs().collect();
                assert_eq!(addrs, vec![addr.to_vec().as_slice()]);
            }
            other => panic!("answered {other:?}"),
        }
        // An older node, which does not ask for hints, is told `NotFound`.
        assert_eq!(s.refusal(&chunk, false), PeerResponse::NotFound);
        let stats = s.counters.snapshot();
        assert_eq!((stats.hints, stats.not_found), (1, 1));
    }

    #[test]
    fn an_origin_that_does_not_know_where_the_holder_listens_says_not_found() {
        let t0 = Instant::now();
        let mut s = origin(t0);
        let chunk = ChunkId::digest(b"c");
        assert!(s.origin_admits(PeerId::random(), &chunk, t0));
        assert_eq!(s.refusal(&chunk, true), PeerResponse::NotFound);
        // Nor does a device that is no origin keep anyone's addresses.
        let mut device = origin(t0);
        device.dedup = None;
        device.note_addrs(PeerId::random(), &["/ip4/10.0.0.7/tcp/1".parse().unwrap()]);
        assert_eq!(device.addrs.len(), 0);
    }

    #[test]
    fn a_capped_origin_with_a_full_queue_still_names_who_got_a_withheld_chunk() {
        let t0 = Instant::now();
        let mut s = origin(t0);
        s.limiter = Some(TokenBucket::new(100_000, t0));
        let (first, second) = (PeerId::random(), PeerId::random());
        let (served, fresh) = (ChunkId::digest(b"c"), ChunkId::digest(b"d"));
        assert_eq!(s.admission(second, &fresh, t0), Admission::Weigh);
        assert!(s.origin_admits(first, &served, t0));
        // Two seconds of uploads queued: past the one-second limit.
        if let Some(l) = s.limiter.as_mut() {
            l.pace(216_384, t0);
        }
        assert_eq!(s.admission(second, &served, t0), Admission::Withheld);
        assert_eq!(s.admission(second, &fresh, t0), Admission::Busy);
        // The peer that got it is served again, so its load counts.
        assert_eq!(s.admission(first, &served, t0), Admission::Busy);
        // Once the window is over the chunk is weighed like any other.
        let later = t0 + Duration::from_secs(301);
        assert_eq!(s.admission(second, &served, later), Admission::Weigh);
    }

    #[test]
    fn a_token_bucket_delays_in_proportion_to_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, t0);
        // The initial burst (16 KiB floor) passes at once.
        assert_eq!(b.reserve(10_000, t0), Duration::ZERO);
        let d = b.reserve(106_384, t0);
        assert!((d.as_secs_f64() - 1.0).abs() < 0.01, "{d:?}");
        assert!(b.ready_at(t0).is_some());
        assert!(b.ready_at(t0 + Duration::from_secs(2)).is_none());
    }

    #[test]
    fn paced_uploads_go_out_one_after_another_at_the_capped_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, t0);
        // Four 100 kB chunks asked at once: the first goes at once, and
        // each next one a second after the one before it (less the
        // 16 KiB burst the bucket starts with).
        let waits: Vec<f64> = (0..4).map(|_| b.pace(100_000, t0).as_secs_f64()).collect();
        let want = [0.0, 0.836, 1.836, 2.836];
        for (got, want) in waits.iter().zip(want) {
            assert!((got - want).abs() < 0.01, "{waits:?}");
        }
        assert!((b.backlog(t0).as_secs_f64() - 3.836).abs() < 0.01);
        // Once the backlog is paid and the link idle a while, a chunk
        // goes at once again.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.backlog(later), Duration::ZERO);
        assert_eq!(b.pace(100_000, later), Duration::ZERO);
    }

    #[test]
    fn a_token_bucket_keeps_the_long_run_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, t0);
        let mut t = t0;
        for _ in 0..100 {
            t += b.reserve(100_000, t);
        }
        let secs = (t - t0).as_secs_f64();
        assert!((secs - 9.9).abs() < 0.2, "{secs}");
    }
}
