//! Resolving a manifest before its download: whom to ask, and when to
//! look beyond the site.
//!
//! A device with a site asks its own site's providers first, and the
//! origin or far peers only once the site lookup has found none that has
//! it (or after [`SITE_WAIT`]). Far providers are not even dialled until
//! everyone connected has been asked in vain. At 1,000 devices, dialling
//! every provider the release's key named made the whole fleet connect
//! to the same ~20 early devices (1,300 connections each, 1.3-1.6 MB of
//! handshakes and questions read over their site's WAN), and asking three
//! peers at once for the manifest fetched it over the WAN from the origin
//! or a far neighbour on most devices whose site already held it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use meshota_protocol::{Manifest, ManifestId, PeerRequest, PeerResponse};

use super::{Fetch, Fetches, Net, Phase, Tag};

/// How long to wait before asking peers for a manifest again.
const RETRY: Duration = Duration::from_millis(500);
/// Pause before asking every peer again for a manifest while an earlier
/// request is still unanswered.
const STALL: Duration = Duration::from_secs(10);
/// Same-site peers asked for a manifest at once (LAN bytes only).
const PARALLEL: usize = 3;
/// Longest a device with a site waits for its site's providers before it
/// asks the origin or far peers (lookups that no DHT peer answers never
/// finish, and a found neighbour may never connect).
const SITE_WAIT: Duration = Duration::from_secs(3);
/// Beyond the site, one peer is asked at a time (each answer is a WAN
/// copy of the manifest); one more may be asked per this much waiting.
const WIDE_STEP: Duration = Duration::from_secs(3);

/// The search for a manifest's bytes.
#[derive(Default)]
pub(super) struct ManifestSearch {
    asked: HashSet<PeerId>,
    outstanding: usize,
    retry_at: Option<Instant>,
    /// Since when peers outside the site may be asked.
    wide_since: Option<Instant>,
}

impl ManifestSearch {
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.asked.remove(peer);
    }

    /// When the search next needs a look: woken now and then even while
    /// waiting on answers, so a search with every peer asked gets its
    /// pause and a widening one asks one more peer per [`WIDE_STEP`].
    /// `started`: when the fetch began.
    pub(super) fn wake_at(&self, started: Instant, now: Instant) -> Instant {
        let wide = match self.wide_since {
            None => started + SITE_WAIT,
            Some(_) => now + WIDE_STEP,
        };
        self.retry_at.unwrap_or(now + RETRY).min(wide)
    }
}

impl std::fmt::Display for ManifestSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} asked, {} outstanding, {}",
            self.asked.len(),
            self.outstanding,
            if self.wide_since.is_some() {
                "beyond the site"
            } else {
                "within the site"
            }
        )
    }
}

impl Fetches {
    /// Asks more connected peers for the manifest: same-site providers
    /// first, then (once the site has none to offer) others, one at a
    /// time.
    pub(super) fn ask_manifest(&mut self, id: ManifestId, now: Instant, net: &mut dyn Net) {
        let Some(Fetch {
            phase: Phase::Manifest(search),
            disc,
            started,
            ..
        }) = self.fetches.get_mut(&id)
        else {
            return;
        };
        let unasked = |p: &&PeerId| !search.asked.contains(p);
        let site: Vec<PeerId> = self
            .connected
            .iter()
            .filter(|p| disc.is_site_provider(p))
            .filter(unasked)
            .copied()
            .collect();
        if search.wide_since.is_none() {
            let site_done = disc.site_lookup_done()
                && site.is_empty()
                && search.outstanding == 0
                && disc.site_providers().all(|p| search.asked.contains(p));
            if self.site.is_none() || site_done || now >= *started + SITE_WAIT {
                search.wide_since = Some(now);
            }
        }
        let (ask, cap) = match search.wide_since {
            _ if !site.is_empty() => (site, PARALLEL),
            None => return,
            Some(since) => {
                let others = self
                    .connected
                    .iter()
                    .filter(|p| !disc.is_site_provider(p))
                    .filter(unasked)
                    .copied()
                    .collect();
                let waited = now.saturating_duration_since(since).as_secs();
                let cap = match self.site {
                    None => PARALLEL,
                    Some(_) => (1 + (waited / WIDE_STEP.as_secs()) as usize).min(PARALLEL),
                };
                (others, cap)
            }
        };
        for peer in ask {
            if search.outstanding >= cap {
                break;
            }
            search.asked.insert(peer);
            search.outstanding += 1;
            let rid = net.send(peer, PeerRequest::Manifest { id });
            self.pending.insert(rid, (id, peer, Tag::Manifest));
        }
    }

    /// A manifest request failed in transport.
    pub(super) fn manifest_failed(&mut self, id: ManifestId, now: Instant, net: &mut dyn Net) {
        if let Some(Fetch {
            phase: Phase::Manifest(search),
            ..
        }) = self.fetches.get_mut(&id)
        {
            search.outstanding = search.outstanding.saturating_sub(1);
        }
        self.ask_manifest(id, now, net);
    }

    /// Timers of a manifest search: more peers as the search widens, and
    /// starting over (with far providers dialled) once everyone connected
    /// was asked.
    pub(super) fn drive_manifest(&mut self, id: ManifestId, now: Instant, net: &mut dyn Net) {
        self.ask_manifest(id, now, net);
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let Phase::Manifest(search) = &mut fetch.phase else {
            return;
        };
        let Some(since) = search.wide_since else {
            return;
        };
        // Every peer asked: start over after a pause. A request still
        // outstanding then only lengthens the pause; an answer that never
        // comes once stopped a device's search for good (300-device live
        // run, seed 11).
        let exhausted = self.connected.iter().all(|p| search.asked.contains(p));
        let in_vain = exhausted && (search.outstanding == 0 || now >= since + WIDE_STEP);
        if in_vain {
            // Nobody connected has it (or says so in time).
            fetch.disc.handle_manifest_unfound(now);
        }
        if search.outstanding == 0 || exhausted {
            let pause = if search.outstanding == 0 {
                RETRY
            } else {
                STALL
            };
            match search.retry_at {
                None => search.retry_at = Some(now + pause),
                Some(at) if now >= at => {
                    search.retry_at = None;
                    search.asked.clear();
                    search.outstanding = 0;
                    self.ask_manifest(id, now, net);
                }
                Some(at) => search.retry_at = Some(at.min(now + pause)),
            }
        }
    }

    pub(super) fn on_manifest(
        &mut self,
        id: ManifestId,
        peer: PeerId,
        response: PeerResponse,
        now: Instant,
        net: &mut dyn Net,
    ) {
        let Some(Fetch {
            phase: Phase::Manifest(search),
            ..
        }) = self.fetches.get_mut(&id)
        else {
            return; // Already resolved by another peer.
        };
        search.outstanding = search.outstanding.saturating_sub(1);
        match response {
            PeerResponse::Manifest { data } => match Manifest::decode(&data) {
                Ok((got, m)) if got == id => {
                    if let Err(e) = self.store.put_manifest(&id, &data) {
                        self.finish(id, Err(e.into()), net);
                        return;
                    }
                    self.begin_download(id, std::sync::Arc::new(m), now, net);
                }
                Ok((got, _)) => net.ban(
                    peer,
                    format!("sent manifest {} for requested {}", got.short(), id.short()),
                ),
                Err(e) => net.ban(peer, format!("sent an invalid manifest: {e}")),
            },
            PeerResponse::NotFound | PeerResponse::Busy => self.ask_manifest(id, now, net),
            other => net.ban(peer, format!("answered a manifest request with {other:?}")),
        }
    }
}
