//! The [`Net`] the fetch loop talks to: disjoint borrows of the event
//! loop's fields, built by the `net!` macro wherever the loop hands
//! control to [`Fetches`](super::fetch::Fetches).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use libp2p::kad;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm};
use meshota_protocol::{Manifest, ManifestId, PeerRequest, SiteId};
use tokio::sync::broadcast;

use super::behaviour::MeshBehaviour;
use super::dht::{lookup_keys, no_dht_peer, start_providing, LookupOf};
use super::fetch::Net;
use super::serve::Server;
use super::NodeEvent;

/// A lookup asked for while the routing table was empty, made once a
/// DHT peer turns up (the flags of every such ask, or-ed).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Unsearched {
    pub(super) after_provide: bool,
    pub(super) release: bool,
}

/// The [`Net`] the fetch loop talks to: disjoint borrows of the loop.
pub(super) struct LoopNet<'a> {
    pub(super) swarm: &'a mut Swarm<MeshBehaviour>,
    pub(super) server: &'a mut Server,
    pub(super) events: &'a broadcast::Sender<NodeEvent>,
    pub(super) provider_queries: &'a mut HashMap<kad::QueryId, LookupOf>,
    pub(super) provide_queries: &'a mut HashMap<kad::QueryId, ManifestId>,
    pub(super) banned: &'a mut HashSet<PeerId>,
    pub(super) seed: bool,
    pub(super) site: Option<&'a SiteId>,
    pub(super) unprovided: &'a mut HashSet<ManifestId>,
    pub(super) unsearched: &'a mut HashMap<ManifestId, Unsearched>,
    /// No bootstrap peer configured: with an empty routing table, no
    /// lookup will ever have anyone to ask.
    pub(super) no_bootstrap: bool,
}

impl Net for LoopNet<'_> {
    fn send(&mut self, peer: PeerId, request: PeerRequest) -> OutboundRequestId {
        self.swarm
            .behaviour_mut()
            .chunks
            .send_request(&peer, request)
    }

    fn ban(&mut self, peer: PeerId, reason: String) {
        if !self.banned.insert(peer) {
            return;
        }
        tracing::warn!(%peer, %reason, "banning peer");
        // Blocking closes its connections and refuses new ones.
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        let _ = self.events.send(NodeEvent::PeerBanned { peer, reason });
    }

    fn find_providers(&mut self, id: ManifestId, far: bool, site: bool) -> bool {
        self.look_up_keys(id, false, far, site)
    }

    fn dial(&mut self, peer: PeerId) {
        self.dial_unbanned(peer, DialOpts::peer_id(peer).build(), "a provider");
    }

    fn dial_at(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer).addresses(addrs).build();
        self.dial_unbanned(peer, opts, "a named holder");
    }

    fn provide(&mut self, id: ManifestId) -> bool {
        if !self.seed {
            return false;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        // With nobody to ask, the records are only stored locally and no
        // lookup will follow.
        let nobody = self.no_bootstrap && no_dht_peer(kad);
        match start_providing(kad, self.unprovided, id, self.site) {
            Ok(Some(q)) if !nobody => {
                self.provide_queries.insert(q, id);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(manifest = %id.short(), error = %e, "could not provide manifest");
                false
            }
        }
    }

    fn remember(&mut self, id: ManifestId, manifest: Arc<Manifest>) {
        self.server.remember(id, manifest);
    }

    fn event(&mut self, event: NodeEvent) {
        let _ = self.events.send(event);
    }
}

/// A [`LoopNet`] over the event loop's fields.
macro_rules! net {
    ($s:expr) => {
        &mut LoopNet {
            swarm: &mut $s.swarm,
            server: &mut $s.server,
            events: &$s.events,
            provider_queries: &mut $s.provider_queries,
            provide_queries: &mut $s.provide_queries,
            banned: &mut $s.banned,
            seed: $s.seed,
            site: $s.site.as_ref(),
            unprovided: &mut $s.unprovided,
            unsearched: &mut $s.unsearched,
            no_bootstrap: $s.bootstrap.is_empty(),
        }
    };
}

impl LoopNet<'_> {
    /// Dials unless `peer` is banned: a ban outlives its connections,
    /// and every way of dialling must honour it.
    fn dial_unbanned(&mut self, peer: PeerId, opts: DialOpts, what: &str) {
        if self.banned.contains(&peer) {
            return;
        }
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dialing {what} failed");
        }
    }

    /// Looks up the providers of `id` under the site's key, and the
    /// release's too when `release` (see [`lookup_keys`]); false when there
    /// is nobody to ask, now or later.
    pub(super) fn look_up(&mut self, id: ManifestId, after_provide: bool, release: bool) -> bool {
        self.look_up_keys(id, after_provide, release, true)
    }

    /// [`Self::look_up`], leaving out the site's key when not `site_key`
    /// and the release's is asked (see [`lookup_keys`]).
    fn look_up_keys(
        &mut self,
        id: ManifestId,
        after_provide: bool,
        release: bool,
        site_key: bool,
    ) -> bool {
        let kad = &mut self.swarm.behaviour_mut().kad;
        if no_dht_peer(kad) {
            // A lookup now would end at once, having asked nobody, and a
            // fetch would take that for "no site neighbours": asked again
            // when the first DHT peer turns up.
            if self.no_bootstrap {
                return false;
            }
            let u = self.unsearched.entry(id).or_default();
            u.after_provide |= after_provide;
            u.release |= release;
            return true;
        }
        for (key, site) in lookup_keys(&id, self.site, release, site_key) {
            let of = LookupOf {
                manifest: id,
                site,
                after_provide,
            };
            self.provider_queries.insert(kad.get_providers(key), of);
            self.server.count_lookup(!site);
        }
        true
    }
}
