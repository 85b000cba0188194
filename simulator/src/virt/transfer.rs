//! The data plane of a virtual run: each device's real chunk scheduler,
//! driven over the link model, with availability pushed to neighbours.
//!
//! A real node re-asks each neighbour for its bitfield every
//! `have_refresh`; modelled literally that is O(devices × neighbours)
//! events per second and dominated every large run. Here a device asks
//! each neighbour once, when it finds it, and from then on hears about
//! every chunk the neighbour stores through
//! [`Scheduler::handle_peer_has`]. That is at least as fresh as polling,
//! and a device acts on news that can start a request
//! ([`Scheduler::could_request`]) within a quarter of `have_refresh` (at
//! once when it has nothing in flight), as the node re-asks busy peers at
//! that cadence; other news within `have_refresh`, when a node's next
//! `Have` answers would make it poll anyway. A same-site `Busy` answer
//! reaches the scheduler within the poll that asked (its LAN round trip
//! is a small part of the back-off it causes), and the device polls
//! again at once; a far one after its round trip, and leads to a poll
//! only when another peer could serve the chunk now. The origin is still
//! polled as on a device, because it withholds chunks for a while
//! ([`OriginDedup`]) and only a poll notices they are back.
//!
//! A node asks a neighbour that has gained nothing for a while less often
//! (up to [`SchedulerConfig::have_refresh_max`]); this model does not
//! slow down, so its news from quiet neighbours is a little fresher than
//! a live node's.
//!
//! Not modelled: the site news a node's `Have` answer carries to a
//! same-site asker, namely the chunks it imports, those its neighbours
//! import, and its fetching neighbours' rendezvous keys
//! ([`Scheduler::handle_peer_importing`], [`Scheduler::handle_peer_relayed`],
//! [`Scheduler::handle_peer_roster`]). Here a device ranks itself for a
//! chunk's WAN pull against the neighbours it knows directly, about 14 of
//! a 50-device site, and never waits on a neighbour's import. Modelled,
//! each device would refresh every same-site neighbour's lists every few
//! seconds; by my estimate (not measured) that is tens of seconds of
//! wall time at 100,000 devices, a run already at 55.6 of its 60 s.
//! Site WAN bytes therefore differ between the modes: `cellular-1000`
//! imported 2.82 bundles into its busiest site here, 4.1-6.4 live,
//! before word of what the site holds (below).
//!
//! Modelled coarsely: word of what the site holds
//! ([`Scheduler::site_holds`]), which a node passes on in its `Have`
//! answers, three hops from a holder. Here the first copy a site stores reaches every device
//! of the site `SITE_WORD_HOPS` × `have_refresh` later, in one event per
//! site and chunk; devices that start later hear it at once.
//!
//! [`OriginDedup`]: meshota_node::sched::OriginDedup

use std::time::Duration;

use meshota_node::sched::{
    Action, Discovery, DiscoveryAction, Failure, PeerClass, SchedEvent, Scheduler, SchedulerConfig,
    Stage,
};

use super::net::{reserve, Micros};
use super::{Ev, Sim, MAX_VIRTUAL, ORIGIN};

/// Providers a lookup under the release's key names, at random among
/// all: as the node's provider store answers.
const LOOKUP_NAMES: u64 = meshota_node::p2p::PROVIDERS_PER_ANSWER as u64;

/// How many `Have` polls word that the site holds a chunk takes to
/// cross it ([`Scheduler::site_holds`]): a live node dials eight of its
/// site, so most of a 50-device site is within two hops, and the poll
/// interval grows to `have_refresh_max` for quiet neighbours.
const SITE_WORD_HOPS: u64 = 3;

impl Sim<'_> {
    fn sched_config(&self, d: u32) -> SchedulerConfig {
        let chunk_time = u64::from(self.s.chunk_avg) * 1_000_000 / self.s.device_up_bps.max(1);
        if !self.p2p {
            // The baseline's origin is a plain HTTP server: it takes every
            // request and shares its uplink (FIFO here), and a download
            // that is queued behind thousands of others is slow, not dead.
            // Refusing, timing out or dropping it would leave the origin
            // idle and flatter the comparison.
            let forever = Duration::from_micros(MAX_VIRTUAL);
            return SchedulerConfig {
                request_timeout: forever,
                stall_timeout: forever,
                min_rate_bps: 0,
                seed: self.s.seed ^ u64::from(d).wrapping_mul(0x9E37_79B9),
                ..SchedulerConfig::default()
            };
        }
        let request_timeout =
            Duration::from_micros((chunk_time * u64::from(self.s.max_uploads) * 8).max(30_000_000));
        SchedulerConfig {
            // Neighbours push their news, so their bitfields are asked for
            // once; see the module docs. The origin keeps its refresh.
            have_refresh: Duration::from_secs(24 * 3600),
            far_have_refresh: Duration::from_secs(24 * 3600),
            request_timeout,
            // Virtual devices hear no claims (see the module docs): a
            // check before each WAN pull would only delay it.
            claim_check: Duration::ZERO,
            // As in live runs (`Scenario::scheduler_config`).
            endgame_after: request_timeout / 4,
            min_rate_bps: 1024,
            max_in_flight_bytes: SchedulerConfig::in_flight_for_rate(
                self.s.device_download_cap_bps(),
            ),
            site_patience: Duration::from_secs(self.s.patience_s),
            site_hold_patience: Duration::from_secs(self.s.site_hold_patience_s),
            busy_backoff: Duration::from_millis(self.s.busy_backoff_ms),
            stall_timeout: Duration::from_secs(3600),
            seed: self.s.seed ^ u64::from(d).wrapping_mul(0x9E37_79B9),
            ..SchedulerConfig::default()
        }
    }

    fn class_of(&self, d: u32, peer: u32) -> PeerClass {
        if peer == ORIGIN {
            PeerClass::Origin
        } else if self.devices[peer as usize].site == self.devices[d as usize].site {
            PeerClass::SameSite
        } else {
            PeerClass::OtherSite
        }
    }

    /// The agent asked for the release: start (or restart) the download
    /// from what the store already holds.
    pub(super) fn start_fetch(&mut self, d: u32, now: Micros) {
        let t = self.at(now);
        if self.p2p && !self.devices[d as usize].started {
            self.discover(d, now);
        }
        let cfg = self.sched_config(d);
        let mut s = Scheduler::new(&self.manifest, &self.devices[d as usize].held, cfg, t);
        if self.p2p {
            s.set_local_peer(d);
        }
        s.handle_peer_found(ORIGIN, PeerClass::Origin, t);
        let site = &self.site_heard[self.devices[d as usize].site as usize];
        for i in (0..site.len()).filter(|&i| site.get(i)) {
            s.handle_site_heard(i);
        }
        for i in 0..self.topo.peers[d as usize].len() {
            let p = self.topo.peers[d as usize][i];
            s.handle_peer_found(p, self.class_of(d, p), t);
        }
        let dev = &mut self.devices[d as usize];
        dev.started = true;
        dev.sched = Some(s);
        dev.disc = self.p2p.then(|| Box::new(Discovery::new(d, true, t)));
        // Neighbours that already know us learn we are fetching now.
        self.tell_fetching(d, true);
        self.drive(d, now);
    }

    /// The agent cancelled the download.
    pub(super) fn stop_fetch(&mut self, d: u32) {
        let dev = &mut self.devices[d as usize];
        dev.disc = None;
        if dev.sched.take().is_some() {
            dev.wake = None;
            self.tell_fetching(d, false);
        }
    }

    fn tell_fetching(&mut self, d: u32, fetching: bool) {
        for i in 0..self.topo.subs[d as usize].len() {
            let sub = self.topo.subs[d as usize][i];
            if let Some(s) = self.devices[sub as usize].sched.as_mut() {
                s.handle_peer_fetching(d, fetching);
            }
        }
    }

    /// Adds providers of the manifest to `d`'s neighbours, as a real node
    /// finds them: up to `lan_peers` providers of its own site from
    /// mDNS. mDNS is mutual, so those site providers learn of `d` too;
    /// without that, a device would not know the site members it should
    /// leave a WAN pull to, and every site would pull each chunk many
    /// times. Providers beyond the site come from lookups its
    /// [`Discovery`] asks for ([`Sim::discovery`]).
    fn discover(&mut self, d: u32, now: Micros) {
        let site = self.devices[d as usize].site as usize;
        let local = self.site_providers[site].len() as u64;
        let t = self.at(now);
        for _ in 0..self.s.lan_peers.min(local as u32) {
            let pick = self.site_providers[site][self.rng.below(local) as usize];
            self.topo.link(d, pick);
            if self.topo.link(pick, d) {
                if let Some(s) = self.devices[pick as usize].sched.as_mut() {
                    s.handle_peer_found(d, PeerClass::SameSite, t);
                }
            }
        }
        self.providers.push(d);
        self.site_providers[site].push(d);
    }

    /// Runs `d`'s [`Discovery`]: its timers, then its lookups and dials.
    /// The site's mesh is modelled (the static ring and mDNS picks), so a
    /// lookup of the site's key finds nothing more. One under the
    /// release's key names [`LOOKUP_NAMES`] random providers of other
    /// sites, and the dials Discovery chooses among them become
    /// neighbours: at most `MAX_FAR_DIALS` up at once, lookups backing
    /// off when they lead to no dial, as on a live node.
    fn discovery(&mut self, d: u32, now: Micros) {
        let Some(mut disc) = self.devices[d as usize].disc.take() else {
            return;
        };
        let t = self.at(now);
        let stage = self.stage(d);
        let connected = |peers: &[u32], p: &u32| peers.contains(p);
        disc.handle_timeout(stage, |p| connected(&self.topo.peers[d as usize], p), t);
        while let Some(action) = disc.poll_action() {
            match action {
                DiscoveryAction::Lookup { far: false, .. } => {
                    disc.handle_lookup_finished(true, false)
                }
                DiscoveryAction::Lookup { far: true, .. } => {
                    let named = self.far_providers(d);
                    let peers = &self.topo.peers[d as usize];
                    disc.handle_providers(named, false, stage, |p| connected(peers, p), t);
                }
                DiscoveryAction::Dial(p) => {
                    if self.topo.link(d, p) {
                        let class = self.class_of(d, p);
                        if let Some(s) = self.devices[d as usize].sched.as_mut() {
                            s.handle_peer_found(p, class, t);
                        }
                    }
                }
            }
        }
        self.devices[d as usize].disc = Some(disc);
    }

    /// Where `d`'s download stands for its discovery. The model has no
    /// discovery grace: a device knows its site's neighbours at once.
    fn stage(&self, d: u32) -> Stage {
        Stage::Downloading {
            sources: true,
            grace: false,
            wan_turn: self.devices[d as usize]
                .sched
                .as_ref()
                .is_some_and(|s| s.wan_turn()),
        }
    }

    /// What a lookup under the release's key names for `d`: random
    /// providers, of which those of other sites (a live node knows its
    /// site's from its site lookups).
    fn far_providers(&mut self, d: u32) -> Vec<u32> {
        let n = self.providers.len() as u64;
        let site = self.devices[d as usize].site;
        (0..LOOKUP_NAMES.min(n))
            .map(|_| self.providers[self.rng.below(n) as usize])
            .filter(|&p| p != d && self.devices[p as usize].site != site)
            .collect()
    }

    pub(super) fn rediscover(&mut self, dst: u32, peer: u32, now: Micros) {
        let t = self.at(now);
        let class = self.class_of(dst, peer);
        if let Some(s) = self.devices[dst as usize].sched.as_mut() {
            s.handle_peer_found(peer, class, t);
        }
        self.drive(dst, now);
    }

    /// A `Have` answer: the full bitfield as it is now. The device polls
    /// after every answer due at this instant is in (a `Poke` queued now
    /// pops after them), as a node's event loop takes what is ready.
    pub(super) fn have(&mut self, dst: u32, src: u32, now: Micros) {
        let t = self.at(now);
        let (bits, fetching) = if src == ORIGIN {
            (self.origin_dedup.advertise(&self.manifest, t), false)
        } else {
            let p = &self.devices[src as usize];
            (p.held.clone(), p.sched.is_some())
        };
        if let Some(s) = self.devices[dst as usize].sched.as_mut() {
            s.handle_peer_have(src, &bits, t);
            s.handle_peer_fetching(src, fetching);
        }
        let dev = &mut self.devices[dst as usize];
        if dev.poke != Some(now) {
            dev.poke = Some(now);
            self.push(now, Ev::Poke(dst));
        }
    }

    pub(super) fn refused(&mut self, dst: u32, src: u32, index: u32, busy: bool, now: Micros) {
        let t = self.at(now);
        let failure = if busy {
            Failure::Busy
        } else {
            Failure::NotFound
        };
        let dev = &mut self.devices[dst as usize];
        dev.inflight = dev.inflight.saturating_sub(1);
        let mut act = true;
        let mut backoff = None;
        if let Some(s) = dev.sched.as_mut() {
            s.handle_chunk_failed(src, index as usize, failure, t);
            // A `Busy` only reopens this chunk and backs the peer off (the
            // back-off's end is a deadline); when no other peer could take
            // the chunk now, a poll would find nothing, and a storm of
            // refusals would cost a full poll each.
            act = !busy || s.could_request(None, index as usize, t);
            backoff = s.busy_until(&src);
        }
        if act {
            self.drive(dst, now);
            return;
        }
        // With a wake-up pending, the back-off's end is the only deadline
        // that can come before it; otherwise ask for the next deadline.
        let backoff = backoff.map(|b| self.micros_at(b));
        let dev = &mut self.devices[dst as usize];
        match (dev.wake, backoff) {
            (Some(cur), Some(w)) if cur > now => {
                if w > now && w < cur {
                    dev.wake = Some(w);
                    self.push(w, Ev::Wake(dst));
                }
            }
            _ => self.rearm(dst, now),
        }
    }

    pub(super) fn arrive(&mut self, dst: u32, src: u32, index: u32, corrupt: bool, now: Micros) {
        let t = self.at(now);
        let len = u64::from(self.manifest.chunks[index as usize].len);
        let site = self.devices[dst as usize].site;
        if src == ORIGIN {
            self.out.origin_bytes += len;
        }
        if src == ORIGIN || self.devices[src as usize].site != site {
            self.out.site_wan_in[site as usize] += len;
        }
        let dev = &mut self.devices[dst as usize];
        dev.inflight = dev.inflight.saturating_sub(1);
        let mut stored = false;
        if let Some(s) = dev.sched.as_mut() {
            if corrupt {
                s.handle_chunk_failed(
                    src,
                    index as usize,
                    Failure::Misbehaved("chunk failed BLAKE3 verification".into()),
                    t,
                );
            } else {
                stored = !dev.held.get(index as usize);
                dev.held.set(index as usize);
                s.handle_chunk_arrived(src, index as usize, len, t);
            }
        }
        if stored {
            self.announce_chunk(dst, index, now);
            let site = site as usize;
            if !self.site_seen[site].get(index as usize) {
                self.site_seen[site].set(index as usize);
                let due = now + SITE_WORD_HOPS * self.s.have_refresh_ms * 1000;
                let site = site as u32;
                self.push(due, Ev::SiteHeard { site, index });
            }
        }
        self.drive(dst, now);
    }

    /// Word that site `site` holds chunk `index` has crossed it: every
    /// device of the site fetching hears it, and those that start later
    /// hear it at once (from their first `Have` answers).
    pub(super) fn site_heard(&mut self, site: u32, index: u32) {
        let site = site as usize;
        self.site_heard[site].set(index as usize);
        for i in 0..self.site_providers[site].len() {
            let d = self.site_providers[site][i];
            if let Some(s) = self.devices[d as usize].sched.as_mut() {
                s.handle_site_heard(index as usize);
            }
        }
    }

    /// `d` stored chunk `index`: every fetching device that knows `d`
    /// hears of it, and acts on it soon (see the module docs).
    fn announce_chunk(&mut self, d: u32, index: u32, now: Micros) {
        let t = self.at(now);
        let refresh = self.s.have_refresh_ms * 1000;
        let busy_delay = refresh / 4;
        for i in 0..self.topo.subs[d as usize].len() {
            let sub = self.topo.subs[d as usize][i];
            let lat = self.latency(d, sub);
            let dev = &mut self.devices[sub as usize];
            let Some(s) = dev.sched.as_mut() else {
                continue;
            };
            s.handle_peer_has(d, index as usize, t);
            self.out.have_pushes += 1;
            // News that can start a request is acted on soon; other news
            // only by the next poll a real node would make anyway, when
            // its next `Have` answers arrive (`have_refresh`). Its own
            // deadlines (back-offs, patience) wake it in between.
            let soon = s.could_request(Some(&d), index as usize, t);
            let delay = match (soon, dev.inflight) {
                (true, 0) => lat,
                (true, _) => lat.max(busy_delay),
                (false, _) => lat.max(refresh),
            };
            let due = now + delay;
            if dev.poke.is_none_or(|p| due < p) {
                dev.poke = Some(due);
                self.push(due, Ev::Poke(sub));
            }
        }
    }

    /// Executes everything device `d`'s scheduler wants now.
    pub(super) fn drive(&mut self, d: u32, now: Micros) {
        self.discovery(d, now);
        let t = self.at(now);
        let mut actions = std::mem::take(&mut self.actions);
        let mut complete = false;
        let mut stalled = false;
        loop {
            let mut dropped = Vec::new();
            {
                let Some(s) = self.devices[d as usize].sched.as_mut() else {
                    self.actions = actions;
                    return;
                };
                while let Some(a) = s.poll_action(t) {
                    actions.push(a);
                }
                while let Some(e) = s.poll_event() {
                    match e {
                        SchedEvent::Complete => complete = true,
                        SchedEvent::Dropped { peer, .. } => dropped.push(peer),
                        SchedEvent::Banned { .. } => {}
                        SchedEvent::Stalled => stalled = true,
                    }
                }
            }
            for peer in dropped {
                // Read per drop, not on every poll of every device.
                let cooloff = SchedulerConfig::default().drop_cooloff.as_micros() as Micros;
                self.push(now + cooloff + 1, Ev::Rediscover { dst: d, peer });
            }
            for a in actions.drain(..) {
                match a {
                    Action::QueryHave { peer } => {
                        let rtt = 2 * self.latency(d, peer);
                        self.push(now + rtt, Ev::Have { dst: d, src: peer });
                    }
                    Action::Request { peer, index, .. } => self.request(d, peer, index as u32, now),
                    Action::Cancel { .. } => {}
                }
            }
            // Same-site `Busy` answers to this poll's requests go to the
            // scheduler now, and it is polled again: each backs its peer
            // off (the back-off is never zero here, see `lan_bounce`), so
            // this ends within a round per peer.
            if self.bounced.is_empty() {
                break;
            }
            let dev = &mut self.devices[d as usize];
            for (src, index) in self.bounced.drain(..) {
                dev.inflight = dev.inflight.saturating_sub(1);
                self.kinds[Ev::BUSY] += 1;
                if let Some(s) = dev.sched.as_mut() {
                    s.handle_chunk_failed(src, index as usize, Failure::Busy, t);
                }
            }
            if complete || stalled {
                break;
            }
        }
        self.actions = actions;
        if complete || stalled {
            let dev = &mut self.devices[d as usize];
            dev.disc = None;
            if let Some(s) = dev.sched.take() {
                let st = s.stats();
                self.out.bytes.same_site += st.bytes.same_site;
                self.out.bytes.other_peers += st.bytes.other_peers;
                self.out.bytes.origin += st.bytes.origin;
                self.out.bytes.local += st.bytes.local;
                self.out.bans += st.bans;
                self.out.drops += st.drops;
                self.out.retries += st.retries;
            }
            dev.wake = None;
            self.tell_fetching(d, false);
            let result = if complete {
                Ok(())
            } else {
                Err("no chunk arrived for the stall timeout".to_string())
            };
            self.fetch_done(d, result, now);
            return;
        }
        self.rearm(d, now);
    }

    /// Sets `d`'s scheduler wake-up to its next deadline, if earlier than
    /// the pending one.
    fn rearm(&mut self, d: u32, now: Micros) {
        let dev = &self.devices[d as usize];
        let peers = &self.topo.peers[d as usize];
        let lookup = dev
            .disc
            .as_ref()
            .and_then(|disc| disc.poll_timeout(self.stage(d), |p| peers.contains(p)));
        let next = dev
            .sched
            .as_ref()
            .and_then(|s| s.poll_timeout())
            .into_iter()
            .chain(lookup)
            .min()
            .map(|i| self.micros_at(i));
        if let Some(w) = next {
            let dev = &mut self.devices[d as usize];
            if dev.wake.is_none_or(|cur| w < cur || cur <= now) {
                dev.wake = Some(w);
                self.push(w, Ev::Wake(d));
            }
        }
    }

    fn request(&mut self, dst: u32, src: u32, index: u32, now: Micros) {
        self.devices[dst as usize].inflight += 1;
        let len = u64::from(self.manifest.chunks[index as usize].len);
        let lat = self.latency(dst, src);
        let dst_site = self.devices[dst as usize].site as usize;
        if src == ORIGIN {
            let queued_too_long = self.origin_up.waits_past(self.origin_queue_max, now + lat);
            let busy = self.p2p
                && (queued_too_long || !self.origin_slots.try_take(now, self.s.origin_max_uploads));
            let id = self.manifest.chunks[index as usize].id;
            if busy || !self.origin_dedup.admit(&id, self.at(now)) {
                let ev = Ev::Refused {
                    dst,
                    src,
                    index,
                    busy,
                };
                self.push(now + 2 * lat, ev);
                return;
            }
            let a = dst as usize;
            let mut down = self.devices[a].down;
            let end = reserve(
                &mut [
                    &mut self.origin_up,
                    &mut self.site_down[dst_site],
                    &mut down,
                ],
                len,
                now + lat,
            );
            self.devices[a].down = down;
            if self.p2p {
                self.origin_slots.hold(end);
            }
            let ev = Ev::Arrive {
                dst,
                src,
                index,
                corrupt: false,
            };
            self.push(end + lat, ev);
            return;
        }
        let (si, di) = (src as usize, dst as usize);
        let has = self.devices[si].held.get(index as usize);
        let queued_too_long = self.devices[si]
            .up
            .waits_past(self.upload_queue_max, now + lat);
        let free =
            has && !queued_too_long && self.devices[si].uploads.try_take(now, self.s.max_uploads);
        if !free && has && self.devices[si].site == self.devices[di].site && self.lan_bounce {
            // Handed back within this poll (see the module docs of `virt`).
            self.bounced.push((src, index));
            return;
        }
        if !free {
            let ev = Ev::Refused {
                dst,
                src,
                index,
                busy: has,
            };
            self.push(now + 2 * lat, ev);
            return;
        }
        let src_site = self.devices[si].site as usize;
        let mut up = self.devices[si].up;
        let mut down = self.devices[di].down;
        let end = if src_site == dst_site {
            reserve(&mut [&mut up, &mut down], len, now + lat)
        } else {
            let mut wan_up = self.site_up[src_site];
            let mut wan_down = self.site_down[dst_site];
            let end = reserve(
                &mut [&mut up, &mut wan_up, &mut wan_down, &mut down],
                len,
                now + lat,
            );
            self.site_up[src_site] = wan_up;
            self.site_down[dst_site] = wan_down;
            end
        };
        self.devices[si].up = up;
        self.devices[di].down = down;
        self.devices[si].uploads.hold(end);
        let corrupt = self.devices[si].malicious;
        let ev = Ev::Arrive {
            dst,
            src,
            index,
            corrupt,
        };
        self.push(end + lat, ev);
    }
}
