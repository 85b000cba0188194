//! The node handle and its event loop (the file-sharing example's shape:
//! a cloneable handle sends commands with oneshot replies to a loop that
//! `select!`s over the swarm and the commands).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, GetProvidersOk, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, mdns, Multiaddr, PeerId, Swarm};
use meshota_protocol::{Bitfield, ManifestId, PeerRequest, PeerResponse, SiteId};
use tokio::sync::{broadcast, mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use super::behaviour::{build_swarm, MeshBehaviour, MeshBehaviourEvent};
use super::config::P2pConfig;
use super::dht::{end_at_first_listing, no_dht_peer, start_providing, LookupOf, Lookups};
use super::fetch::{DownloadReport, FetchError, FetchOptions, Fetches, Net, Verified};
use super::net::{LoopNet, Unsearched};
use super::serve::{Counters, DelayedResponse, NodeStats, ServeConfig, Server};
use super::{NodeEvent, P2pError};
use crate::store::Store;

/// Capacity of the event broadcast; slow subscribers miss old events.
const EVENT_CAPACITY: usize = 1024;
/// Longest the loop sleeps without anything due.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// While isolated, bootstrap peers are dialed again this often, and
/// twice as long after each failed dial in a row, up to
/// [`BOOTSTRAP_RETRY_MAX`] (see [`bootstrap_retry`]).
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(10);
/// Longest pause between bootstrap dials.
const BOOTSTRAP_RETRY_MAX: Duration = Duration::from_secs(160);
/// How often the loop asks whether it is isolated. Asking walks the
/// routing table's 256 buckets; asked on every wake-up, that was 2 % of
/// the simulator's CPU.
const BOOTSTRAP_CHECK: Duration = Duration::from_secs(1);

enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, P2pError>>),
    Fetch(
        ManifestId,
        FetchOptions,
        oneshot::Sender<Result<DownloadReport, FetchError>>,
    ),
    Provide(ManifestId, oneshot::Sender<Result<(), P2pError>>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Providers(ManifestId, oneshot::Sender<Vec<PeerId>>),
    Describe(oneshot::Sender<Vec<String>>),
    Shutdown(oneshot::Sender<()>),
}

/// Starts nodes. See [`Node::spawn`].
#[derive(Debug)]
pub struct Node;

/// A cloneable handle to a running node. The node stops on
/// [`NodeHandle::shutdown`] or when every handle is dropped.
#[derive(Clone)]
pub struct NodeHandle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Builds the swarm, starts listening and dialing the bootstrap
    /// peers, and spawns the event loop on the current tokio runtime.
    /// A seed-only origin provides every store root it holds.
    ///
    /// # Errors
    /// [`P2pError`] when called outside a tokio runtime, or when the
    /// transport, a behaviour or a listener cannot be set up.
    pub fn spawn(
        config: P2pConfig,
        store: Arc<dyn Store>,
        keypair: Keypair,
    ) -> Result<NodeHandle, P2pError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| P2pError::NoRuntime)?;
        let now = Instant::now();
        let mut swarm = build_swarm(&config, keypair)?;
        let peer_id = *swarm.local_peer_id();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| P2pError::Listen {
                    addr: addr.to_string(),
                    // Some transport errors display as nothing (out of file
                    // descriptors showed as "listening on …: "); their
                    // debug form names the cause.
                    reason: match e.to_string() {
                        r if r.trim().is_empty() => format!("{e:?}"),
                        r => r,
                    },
                })?;
        }
        let mut bootstrap_pending = HashSet::new();
        for addr in &config.bootstrap {
            let opts = DialOpts::from(addr.clone());
            let cid = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => {
                    bootstrap_pending.insert(cid);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "bootstrap dial failed"),
            }
        }
        let counters = Arc::new(Counters::default());
        let (delayed_tx, delayed_rx) = mpsc::unbounded_channel();
        let (verified_tx, verified_rx) = mpsc::unbounded_channel();
        let server = Server::new(
            store.clone(),
            ServeConfig {
                site: config.site.clone(),
                seed: config.seed || config.seed_only,
                origin: config.seed_only,
                corrupt_uploads: config.corrupt_uploads,
                max_concurrent_uploads: config.max_concurrent_uploads,
                upload_limit_bps: config.upload_limit_bps,
                upload_queue_max: config.upload_queue_max,
                origin_dedup_window: config.origin_dedup_window,
            },
            counters.clone(),
            delayed_tx,
            now,
        );
        let fetches = Fetches::new(
            peer_id,
            store.clone(),
            config.site.clone(),
            // Answers are awaited as long as the transport waits for them.
            crate::sched::SchedulerConfig {
                answer_timeout: config.request_timeout,
                ..config.scheduler.clone()
            },
            config.download_limit_bps,
            counters.clone(),
            verified_tx,
            now,
        );
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let mut lp = EventLoop {
            swarm,
            store,
            seed: config.seed || config.seed_only,
            seed_only: config.seed_only,
            kad_client: !config.kad_server,
            site: config.site.clone(),
            unprovided: HashSet::new(),
            unsearched: HashMap::new(),
            provide_queries: HashMap::new(),
            server,
            fetches,
            commands: cmd_rx,
            delayed: delayed_rx,
            verified: verified_rx,
            events: events.clone(),
            listen_addrs: Vec::new(),
            listen_waiters: Vec::new(),
            pending_dials: HashMap::new(),
            provider_queries: HashMap::new(),
            lookups: Lookups::default(),
            banned: HashSet::new(),
            bootstrap: config.bootstrap.clone(),
            bootstrap_at: now,
            bootstrap_checked: now,
            bootstrap_pending,
            bootstrap_failures: 0,
            retry_spread: retry_spread(&peer_id),
        };
        if config.seed_only {
            lp.provide_roots();
        }
        let task = runtime.spawn(lp.run());
        Ok(NodeHandle {
            peer_id,
            commands: cmd_tx,
            events,
            counters,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| P2pError::Shutdown)?;
        rx.await.map_err(|_| P2pError::Shutdown)
    }

    /// The addresses the node listens on, waiting for the first one.
    ///
    /// # Errors
    /// [`P2pError::Shutdown`].
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, P2pError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Connects to a peer at `addr` and returns its id once connected.
    ///
    /// # Errors
    /// [`P2pError::Dial`] or [`P2pError::Shutdown`].
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, P2pError> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Fetches every missing chunk of a manifest (and the manifest itself
    /// if the store lacks it) from peers. Chunks already held are never
    /// fetched, so a restarted or delta fetch transfers only what is
    /// missing. On success a seeding node provides the manifest.
    ///
    /// # Errors
    /// [`FetchError`]: seed-only node, store failure, timeout, shutdown.
    pub async fn fetch(
        &self,
        manifest: ManifestId,
        opts: FetchOptions,
    ) -> Result<DownloadReport, FetchError> {
        self.ask(|tx| Command::Fetch(manifest, opts, tx))
            .await
            .map_err(|_| FetchError::Shutdown)?
    }

    /// Announces on Kademlia that this node holds `manifest`.
    ///
    /// # Errors
    /// [`P2pError::Provide`] or [`P2pError::Shutdown`].
    pub async fn provide(&self, manifest: ManifestId) -> Result<(), P2pError> {
        self.ask(|tx| Command::Provide(manifest, tx)).await?
    }

    /// Peers with an open connection.
    ///
    /// # Errors
    /// [`P2pError::Shutdown`].
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, P2pError> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Who provides `manifest`, by a DHT lookup of the release key and
    /// of this node's site key; nobody while the node has no DHT peer.
    ///
    /// # Errors
    /// [`P2pError::Shutdown`].
    pub async fn providers(&self, manifest: ManifestId) -> Result<Vec<PeerId>, P2pError> {
        self.ask(|tx| Command::Providers(manifest, tx)).await
    }

    /// One line per fetch under way on where it stands: the manifest
    /// search, or chunks missing and the peers that could serve them. For
    /// diagnosing a download that makes no progress.
    ///
    /// # Errors
    /// [`P2pError::Shutdown`].
    pub async fn describe_fetches(&self) -> Result<Vec<String>, P2pError> {
        self.ask(Command::Describe).await
    }

    /// Subscribes to node events (bans, drops, finished fetches …).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Transfer counters so far.
    pub fn stats(&self) -> NodeStats {
        self.counters.snapshot()
    }

    /// Stops the node and waits until its event loop (and with it the
    /// swarm and the loop's hold on the store) is gone. Fetches in
    /// progress fail with [`FetchError::Shutdown`].
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

struct EventLoop {
    swarm: Swarm<MeshBehaviour>,
    store: Arc<dyn Store>,
    seed: bool,
    seed_only: bool,
    /// A Kademlia client: announces its listen addresses as external.
    kad_client: bool,
    /// This node's site, for the site rendezvous key.
    site: Option<SiteId>,
    /// Manifests to provide once the routing table has a peer.
    unprovided: HashSet<ManifestId>,
    /// Manifests to look up once the routing table has a peer, and how.
    unsearched: HashMap<ManifestId, Unsearched>,
    /// Provides of a fetch in flight, each followed by a site lookup.
    provide_queries: HashMap<kad::QueryId, ManifestId>,
    server: Server,
    fetches: Fetches,
    commands: mpsc::Receiver<Command>,
    /// Responses whose upload-limiter delay has passed.
    delayed: mpsc::UnboundedReceiver<DelayedResponse>,
    /// Chunks back from verification.
    verified: mpsc::UnboundedReceiver<Verified>,
    events: broadcast::Sender<NodeEvent>,
    listen_addrs: Vec<Multiaddr>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    pending_dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, P2pError>>)>,
    /// Provider lookups of the fetch loop in flight.
    provider_queries: HashMap<kad::QueryId, LookupOf>,
    /// Provider lookups asked for through the handle.
    lookups: Lookups,
    banned: HashSet<PeerId>,
    /// Configured bootstrap addresses, re-dialed while isolated.
    bootstrap: Vec<Multiaddr>,
    bootstrap_at: Instant,
    bootstrap_checked: Instant,
    /// Bootstrap dials not yet connected or failed: no other is started
    /// meanwhile.
    bootstrap_pending: HashSet<ConnectionId>,
    /// Bootstrap dials failed in a row, for the back-off.
    bootstrap_failures: u32,
    /// See [`retry_spread`]: computed once, not on every wake-up.
    retry_spread: f64,
}

impl EventLoop {
    fn provide_roots(&mut self) {
        let roots = match self.store.roots() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "origin could not read store roots");
                return;
            }
        };
        for id in roots {
            if matches!(self.store.get_manifest(&id), Ok(Some(_))) {
                net!(self).provide(id);
            }
        }
    }

    async fn run(mut self) {
        loop {
            let now = Instant::now();
            let deadline = self
                .fetches
                .next_deadline(now)
                .unwrap_or(now + IDLE_TICK)
                .min(now + IDLE_TICK);
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = self.commands.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown(reply)) => {
                        self.fetches.shutdown();
                        let _ = reply.send(());
                        break;
                    }
                    Some(cmd) => self.on_command(cmd),
                },
                Some(d) = self.delayed.recv() => {
                    // Err: the requester went away meanwhile.
                    let _ = self.swarm.behaviour_mut().chunks.send_response(d.channel, d.response);
                }
                Some(v) = self.verified.recv() => {
                    self.fetches.on_verified(v, Instant::now(), net!(self));
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
            }
            let now = Instant::now();
            self.fetches.drive(now, net!(self));
            self.redial_bootstrap(now);
        }
        self.fetches.shutdown();
    }

    /// Dials the bootstrap peers again while the node has no DHT peer
    /// (neighbours alone cannot name providers), or has no connection at
    /// all while it fetches. Not while an idle node's connections have
    /// timed out: the routing table still holds the DHT peers and
    /// Kademlia dials them when asked, and a fetch dials its seeders. An
    /// idle device redialled every idle timeout plus 10 s, a handshake
    /// each time over its site's WAN, and for the origin a steady stream
    /// of them from the whole fleet.
    ///
    /// A dial still under way is waited for, and each failed one doubles
    /// the pause. Redialling every 10 s whatever happened started a new
    /// handshake while the last one (up to 20 s) was still under way:
    /// behind a slow origin (1,000 devices, 0.5 Mbit/s) 3,988 handshakes
    /// with it timed out in 150 s, and the fleet opened 6,000 connections
    /// to it; 2,845 with the back-off.
    fn redial_bootstrap(&mut self, now: Instant) {
        let pause = bootstrap_retry(self.bootstrap_failures, self.retry_spread);
        if self.bootstrap.is_empty()
            || !self.bootstrap_pending.is_empty()
            || now < self.bootstrap_at + pause
            || now < self.bootstrap_checked + BOOTSTRAP_CHECK
        {
            return;
        }
        self.bootstrap_checked = now;
        let isolated = self.fetches.is_busy() && self.swarm.connected_peers().next().is_none();
        if !isolated && !no_dht_peer(&mut self.swarm.behaviour_mut().kad) {
            return;
        }
        self.bootstrap_at = now;
        for addr in &self.bootstrap {
            let opts = DialOpts::from(addr.clone());
            let cid = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.bootstrap_pending.insert(cid);
                }
                Err(e) => tracing::debug!(%addr, error = %e, "bootstrap re-dial failed"),
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs(reply) => {
                if self.listen_addrs.is_empty() {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Command::Dial(addr, reply) => {
                // Every fetch dials the seeders its announcement names; a
                // second connection to one already connected cost each
                // simulated device a handshake and identify over
                // its site's WAN.
                let named = addr.iter().last().and_then(|p| match p {
                    Protocol::P2p(peer) => Some(peer),
                    _ => None,
                });
                if let Some(peer) = named.filter(|p| self.swarm.is_connected(p)) {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                let cid = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(cid, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(P2pError::Dial {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::Fetch(id, opts, reply) => {
                if self.seed_only {
                    let _ = reply.send(Err(FetchError::SeedOnly));
                    return;
                }
                self.fetches
                    .start(id, opts, reply, Instant::now(), net!(self));
            }
            Command::Provide(id, reply) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let r = start_providing(kad, &mut self.unprovided, id, self.site.as_ref())
                    .map(|_| ())
                    .map_err(|e| P2pError::Provide {
                        manifest: id,
                        reason: e.to_string(),
                    });
                let _ = reply.send(r);
            }
            Command::Providers(id, reply) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                self.lookups.start(kad, id, self.site.as_ref(), reply);
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Describe(reply) => {
                let _ = reply.send(self.fetches.describe(Instant::now()));
            }
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<MeshBehaviourEvent>) {
        let now = Instant::now();
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                if self.kad_client {
                    // A client is in no routing table, so its provider
                    // records must carry its addresses, and Kademlia
                    // puts only external addresses in them.
                    self.swarm.add_external_address(address.clone());
                }
                self.listen_addrs.push(address);
                for w in self.listen_waiters.drain(..) {
                    let _ = w.send(self.listen_addrs.clone());
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if self.kad_client {
                    self.swarm.remove_external_address(&address);
                }
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some((_, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                if self.bootstrap_pending.remove(&connection_id) {
                    self.bootstrap_failures = 0;
                }
                if num_established.get() == 1 {
                    let _ = self.events.send(NodeEvent::PeerConnected(peer_id));
                    self.fetches.peer_connected(peer_id, now, net!(self));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                let _ = self.events.send(NodeEvent::PeerDisconnected(peer_id));
                self.fetches.peer_disconnected(peer_id, now);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if self.bootstrap_pending.remove(&connection_id) {
                    self.bootstrap_failures = self.bootstrap_failures.saturating_add(1);
                }
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(P2pError::Dial {
                        addr: addr.to_string(),
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev, now),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: MeshBehaviourEvent, now: Instant) {
        match ev {
            MeshBehaviourEvent::Chunks(ev) => self.on_chunks(ev, now),
            MeshBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.server.note_addrs(peer_id, &info.listen_addrs);
                // Only DHT servers go into the routing table (Kademlia
                // adds those it talks to by itself, too). A client answers
                // no queries, and a server that listed clients would hand
                // them to every lookup, which then dials them all: each of
                // 200 in-process devices ended up connected to 107-138
                // others.
                if !info.protocols.contains(&super::behaviour::KAD_PROTOCOL) {
                    return;
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            MeshBehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if self.banned.contains(&peer) {
                        continue;
                    }
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    if !self.swarm.is_connected(&peer) {
                        net!(self).dial(peer);
                    }
                }
            }
            MeshBehaviourEvent::Kad(kad::Event::RoutingUpdated { .. }) => {
                for id in std::mem::take(&mut self.unprovided) {
                    net!(self).provide(id);
                }
                for (id, u) in std::mem::take(&mut self.unsearched) {
                    net!(self).look_up(id, u.after_provide, u.release);
                }
            }
            MeshBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::StartProviding(_),
                ..
            }) => {
                // Stored (or failed for good): whoever provided before us
                // is listed now, and whoever provides after us finds us.
                if let Some(manifest) = self.provide_queries.remove(&id) {
                    let far = self.fetches.far_wanted(&manifest);
                    net!(self).look_up(manifest, true, far);
                }
            }
            MeshBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(r),
                stats,
                ..
            }) => {
                end_at_first_listing(&mut self.swarm.behaviour_mut().kad, id, &r, &stats);
                if self.lookups.on_result(id, &r) {
                    return;
                }
                let Some(&of) = self.provider_queries.get(&id) else {
                    return;
                };
                let (manifest, site) = (of.manifest, of.site);
                match r {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        self.fetches
                            .providers_found(manifest, providers, site, now, net!(self));
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => {
                        self.provider_queries.remove(&id);
                        // A lookup no DHT peer answered found out nothing.
                        if stats.num_successes() > 0 {
                            self.fetches
                                .lookup_finished(manifest, site, of.after_provide);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_chunks(
        &mut self,
        ev: request_response::Event<PeerRequest, meshota_protocol::PeerResponse>,
        now: Instant,
    ) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                let fetching = matches!(&request, PeerRequest::Have { manifest, .. }
                    if self.fetches.is_fetching(manifest));
                let news = match &request {
                    PeerRequest::Have {
                        manifest,
                        site,
                        importing,
                    } => {
                        if let Some(claims) = importing {
                            self.fetches.take_asker_claims(
                                manifest,
                                site.as_ref(),
                                peer,
                                claims,
                                now,
                            );
                        }
                        self.fetches
                            .site_news_for(manifest, site.as_ref(), &peer, now)
                    }
                    _ => Default::default(),
                };
                if let Some((channel, mut response)) = self
                    .server
                    .handle(peer, request_id, request, channel, fetching, now)
                {
                    if let PeerResponse::Have {
                        importing,
                        relayed,
                        roster,
                        site_holds,
                        site_holds_relayed,
                        bitfield,
                        ..
                    } = &mut response
                    {
                        *importing = news.importing;
                        *relayed = news.relayed;
                        *roster = news.roster;
                        // Only what the fields before do not already say.
                        let adds = |h: &Bitfield, known: &[Option<&Bitfield>]| {
                            (0..h.len())
                                .any(|i| h.get(i) && !known.iter().flatten().any(|k| k.get(i)))
                        };
                        *site_holds = news.site_holds.filter(|h| adds(h, &[Some(bitfield)]));
                        *site_holds_relayed = news
                            .site_holds_relayed
                            .filter(|h| adds(h, &[Some(bitfield), site_holds.as_ref()]));
                    }
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .chunks
                        .send_response(channel, response);
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self
                .fetches
                .on_response(peer, request_id, response, now, net!(self)),
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self
                .fetches
                .on_failure(peer, request_id, error.to_string(), now, net!(self)),
            Event::InboundFailure { request_id, .. } => self.server.response_failed(request_id),
            Event::ResponseSent { request_id, .. } => self.server.response_sent(request_id),
        }
    }
}

/// The pause before dialling the bootstrap peers again after `failures`
/// failed dials in a row: [`BOOTSTRAP_RETRY`] doubled per failure, up to
/// [`BOOTSTRAP_RETRY_MAX`], and spread over ±25 % by the node's id, so a
/// fleet that lost its origin at once does not come back at once.
fn bootstrap_retry(failures: u32, spread: f64) -> Duration {
    crate::sched::doubled(BOOTSTRAP_RETRY, failures, BOOTSTRAP_RETRY_MAX).mul_f64(spread)
}

/// This node's factor for [`bootstrap_retry`], 0.75-1.25, from its id.
fn retry_spread(me: &PeerId) -> f64 {
    let sum = me.to_bytes().iter().fold(0u8, |a, b| a.wrapping_add(*b));
    0.75 + f64::from(sum) / 510.0
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn bootstrap_redials_back_off_after_each_failure_up_to_a_cap() {
        let spread = retry_spread(&PeerId::random());
        let pauses: Vec<Duration> = (0..8).map(|f| bootstrap_retry(f, spread)).collect();
        let ratio = pauses[0].as_secs_f64() / BOOTSTRAP_RETRY.as_secs_f64();
        assert!((0.75..=1.25).contains(&ratio), "{pauses:?}");
        for w in pauses.windows(2) {
            assert!(w[1] >= w[0], "{pauses:?}");
        }
        assert!(pauses[2] >= pauses[0] * 3, "{pauses:?}");
        assert!(pauses[7] <= BOOTSTRAP_RETRY_MAX.mul_f64(1.25), "{pauses:?}");
        assert_eq!(bootstrap_retry(u32::MAX, spread), pauses[7]);
    }
}
