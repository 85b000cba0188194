//! Driving the schedulers: timers, actions, events, the download
//! limiter's queue, completion and deadlines.

use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::{Multiaddr, PeerId};
use meshota_protocol::{ManifestId, PeerHint, PeerRequest};

use super::{
    have_request, stage_of, ChunkAsk, DownloadReport, FetchError, Fetches, Net, Pending, Phase, Tag,
};
use crate::p2p::serve::Counters;
use crate::p2p::NodeEvent;
use crate::sched::{Action, PeerClass, SchedEvent, Stage};

impl Fetches {
    /// Runs every scheduler until it has nothing more to do right now.
    pub(crate) fn drive(&mut self, now: Instant, net: &mut dyn Net) {
        self.flush_queue(now, net);
        let ids: Vec<ManifestId> = self.fetches.keys().copied().collect();
        for id in ids {
            self.drive_one(id, now, net);
        }
    }

    fn drive_one(&mut self, id: ManifestId, now: Instant, net: &mut dyn Net) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        if let Some((at, after)) = fetch.deadline {
            if now >= at {
                let (held, total, resolved) = match &fetch.phase {
                    Phase::Manifest(_) => (0, 0, false),
                    Phase::Download(dl) => (dl.held_count, dl.manifest.chunks.len(), true),
                };
                self.finish(
                    id,
                    Err(FetchError::Timeout {
                        manifest: id,
                        after,
                        held,
                        total,
                        resolved,
                    }),
                    net,
                );
                return;
            }
        }
        let dl = match &mut fetch.phase {
            Phase::Manifest(_) => {
                let connected = |p: &PeerId| self.connected.contains(p);
                fetch.disc.handle_timeout(Stage::Resolving, connected, now);
                self.drive_manifest(id, now, net);
                self.discover(id, net);
                return;
            }
            Phase::Download(dl) => dl,
        };
        // Re-ask peers that lacked the manifest.
        let due: Vec<PeerId> = dl
            .have_retry
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, p)| *p)
            .collect();
        dl.have_retry.retain(|(at, _)| *at > now);
        for peer in due {
            if self.connected.contains(&peer) {
                let rid = net.send(peer, have_request(id, &self.site, None));
                self.pending.insert(rid, (id, peer, Tag::Have));
            }
        }
        if let Some(grace) = dl.grace {
            let heard = |p: &PeerId| dl.answered.contains(p);
            let site_heard = dl.queried.iter().all(heard) && fetch.disc.site_heard(heard);
            if now >= grace || site_heard {
                dl.grace = None;
                for (peer, class, fetching, bitfield) in std::mem::take(&mut dl.held_back) {
                    dl.sched.handle_peer_found(peer, class, now);
                    dl.known.insert(peer);
                    dl.sched.handle_peer_fetching(peer, fetching);
                    dl.sched.handle_peer_have(peer, &bitfield, now);
                }
            }
        }
        if dl.sched.poll_timeout().is_some_and(|t| t <= now) {
            dl.sched.handle_timeout(now);
        }
        let connected = |p: &PeerId| self.connected.contains(p);
        fetch
            .disc
            .handle_timeout(stage_of(&fetch.phase), connected, now);
        let Phase::Download(dl) = &mut fetch.phase else {
            return;
        };
        while let Some(action) = dl.sched.poll_action(now) {
            match action {
                Action::Request {
                    peer,
                    index,
                    chunk,
                    len,
                } => {
                    let class = dl.sched.peer_class(&peer);
                    if class.is_some_and(|c| c != PeerClass::SameSite) {
                        // Why a device spends WAN bytes is what tuning a
                        // fleet asks first (`RUST_LOG=meshota::wan=debug`).
                        tracing::debug!(
                            target: "meshota::wan",
                            site = ?self.site,
                            me = %self.local,
                            %peer,
                            ?class,
                            index,
                            since_start_ms = now.saturating_duration_since(fetch.started).as_millis() as u64,
                            site_peers = dl.sched.peer_count(PeerClass::SameSite),
                            site_found = fetch.disc.site_providers().count(),
                            site_heard = fetch.disc.site_providers().filter(|p| dl.answered.contains(p)).count(),
                            standing = ?dl.sched.site_standing(index, now),
                            heard_starving = ?dl.sched.site_word(index, now),
                            "chunk requested over the WAN: {}",
                            dl.sched.describe(now),
                        );
                    }
                    let ask = ChunkAsk {
                        id,
                        peer,
                        index,
                        chunk,
                        len,
                        hints: class == Some(PeerClass::Origin),
                    };
                    if self.limiter.is_some() || !self.queued.is_empty() {
                        self.queued.push_back(ask);
                    } else {
                        send_get(&self.counters, &mut self.pending, ask, net);
                    }
                }
                Action::QueryHave { peer } => {
                    let claims = dl.sched.claims_for(&peer);
                    let rid = net.send(peer, have_request(id, &self.site, claims));
                    self.pending.insert(rid, (id, peer, Tag::Have));
                }
                // Request-response cannot cancel; a late answer is a
                // duplicate the scheduler ignores.
                Action::Cancel { .. } => {}
            }
        }
        let mut complete = false;
        while let Some(ev) = dl.sched.poll_event() {
            match ev {
                SchedEvent::Banned { peer, reason } => net.ban(peer, reason),
                SchedEvent::Dropped { peer, reason } => {
                    tracing::info!(%peer, %reason, "dropped a slow peer");
                    net.event(NodeEvent::PeerDropped { peer, reason });
                    // Re-asked once its cool-off is over: nothing else
                    // would, since its connection may well have survived
                    // (a link that went down and came back), and if it was
                    // the only source the download would sit until the
                    // stall timeout.
                    dl.have_retry
                        .push((now + self.sched_config.drop_cooloff, peer));
                }
                SchedEvent::Stalled => {
                    tracing::warn!(manifest = %id.short(), "download stalled");
                    fetch.disc.handle_stalled();
                    net.event(NodeEvent::FetchStalled { manifest: id });
                }
                SchedEvent::Complete => complete = true,
            }
        }
        if complete || dl.sched.is_complete() {
            let stats = dl.sched.stats();
            let report = DownloadReport {
                bytes: stats.bytes,
                duration: now.saturating_duration_since(fetch.started),
                peers_used: stats.peers_used,
                bans: stats.bans as usize,
                retries: stats.retries as usize,
                drops: stats.drops as usize,
            };
            self.finish(id, Ok(report), net);
        }
        if !self.queued.is_empty() {
            self.flush_queue(now, net);
        }
        self.discover(id, net);
    }

    /// Sends held-back requests while the download limiter allows.
    fn flush_queue(&mut self, now: Instant, net: &mut dyn Net) {
        while let Some(&ask) = self.queued.front() {
            if let Some(l) = self.limiter.as_mut() {
                if l.ready_at(now).is_some() {
                    return;
                }
                l.reserve(u64::from(ask.len), now);
            }
            self.queued.pop_front();
            if self.fetches.contains_key(&ask.id) {
                send_get(&self.counters, &mut self.pending, ask, net);
            }
        }
    }

    pub(super) fn finish(
        &mut self,
        id: ManifestId,
        result: Result<DownloadReport, FetchError>,
        net: &mut dyn Net,
    ) {
        let Some(fetch) = self.fetches.remove(&id) else {
            return;
        };
        self.pending.retain(|_, (m, ..)| *m != id);
        self.queued.retain(|ask| ask.id != id);
        net.event(NodeEvent::FetchFinished {
            manifest: id,
            ok: result.is_ok(),
        });
        let mut replies = fetch.replies.into_iter();
        // FetchError is not Clone: the first caller gets the error, those
        // that joined later its text.
        match result {
            Ok(report) => {
                for r in replies {
                    let _ = r.send(Ok(report));
                }
            }
            Err(e) => {
                let text = e.to_string();
                if let Some(first) = replies.next() {
                    let _ = first.send(Err(e));
                }
                for r in replies {
                    let _ = r.send(Err(FetchError::Joined(text.clone())));
                }
            }
        }
    }

    /// The node is stopping: every fetch fails with `Shutdown`.
    pub(crate) fn shutdown(&mut self) {
        for (_, fetch) in self.fetches.drain() {
            for r in fetch.replies {
                let _ = r.send(Err(FetchError::Shutdown));
            }
        }
    }

    /// Whether any fetch is running.
    pub(crate) fn is_busy(&self) -> bool {
        !self.fetches.is_empty()
    }

    /// Whether this node is fetching `id` (for `Have` answers).
    pub(crate) fn is_fetching(&self, id: &ManifestId) -> bool {
        self.fetches.contains_key(id)
    }

    /// The earliest instant something is due.
    pub(crate) fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        if !self.queued.is_empty() {
            if let Some(l) = self.limiter.as_mut() {
                at(l.ready_at(now).unwrap_or(now));
            }
        }
        for f in self.fetches.values() {
            if let Some((d, _)) = f.deadline {
                at(d);
            }
            let connected = |p: &PeerId| self.connected.contains(p);
            if let Some(t) = f.disc.poll_timeout(stage_of(&f.phase), connected) {
                at(t);
            }
            match &f.phase {
                Phase::Manifest(s) => at(s.wake_at(f.started, now)),
                Phase::Download(dl) => {
                    if let Some(t) = dl.grace {
                        at(t);
                    }
                    if let Some(t) = dl.sched.poll_timeout() {
                        at(t);
                    }
                    for (t, _) in &dl.have_retry {
                        at(*t);
                    }
                }
            }
        }
        next
    }

    /// A peer (an origin if `from_origin`) named `hint` as holding a
    /// chunk of `id` it refused: dial it, or ask it again if connected,
    /// if discovery takes the name
    /// ([`crate::sched::discovery::Discovery::handle_hint`]). A hint
    /// that does not parse is dropped.
    pub(super) fn follow_hint(
        &mut self,
        id: ManifestId,
        hint: &PeerHint,
        from_origin: bool,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let Ok(peer) = PeerId::from_bytes(&hint.peer) else {
            return;
        };
        let addrs: Vec<Multiaddr> = hint
            .addrs()
            .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
            .collect();
        let connected = self.connected.contains(&peer);
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let up = |p: &PeerId| self.connected.contains(p);
        if (addrs.is_empty() && !connected) || !fetch.disc.handle_hint(peer, from_origin, up, now) {
            return;
        }
        self.counters.hints_followed.fetch_add(1, Ordering::Relaxed);
        match &mut fetch.phase {
            Phase::Download(dl) if connected => dl.have_retry.push((now, peer)),
            _ if connected => {}
            _ => net.dial_at(peer, addrs),
        }
    }
}

/// Sends a chunk request and notes what it was for. Not a method: the
/// scheduler that made it is borrowed from the same `Fetches`.
fn send_get(counters: &Counters, pending: &mut Pending, ask: ChunkAsk, net: &mut dyn Net) {
    let ChunkAsk {
        id,
        peer,
        index,
        chunk,
        len,
        hints,
    } = ask;
    counters.chunk_requests_sent.fetch_add(1, Ordering::Relaxed);
    let rid = net.send(peer, PeerRequest::Get { chunk, hints });
    pending.insert(rid, (id, peer, Tag::Chunk { index, chunk, len }));
}
