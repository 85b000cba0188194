//! The node's use of the Kademlia DHT: the release and site keys,
//! providing, and provider lookups asked for through the handle.

use std::collections::{HashMap, HashSet};

use libp2p::kad::{self, GetProvidersError, GetProvidersOk, RecordKey};
use libp2p::PeerId;
use meshota_protocol::{ManifestId, SiteId};
use tokio::sync::oneshot;

use super::providers::SampledStore;

/// True while the routing table is empty: a node that just started, or
/// one whose DHT peers all went away.
pub(super) fn no_dht_peer(kad: &mut kad::Behaviour<SampledStore>) -> bool {
    kad.kbuckets().all(|b| b.num_entries() == 0)
}

/// The Kademlia key under which a release's providers on one site meet.
/// A lookup of the release key alone gives a device ten providers from
/// any site ([`SampledStore`]: a random ten of those kept); the site key
/// gives each device peers from its own LAN, so the site shares one download
/// over its uplink even where mDNS does not reach (routed VLANs, the
/// simulator).
fn site_key(id: &ManifestId, site: &SiteId) -> RecordKey {
    let mut h = blake3::Hasher::new_derive_key("meshota 2025 site rendezvous v1");
    h.update(id.as_bytes());
    h.update(site.as_str().as_bytes());
    RecordKey::new(h.finalize().as_bytes())
}

/// The keys `id` is provided and looked up under: the release key, then,
/// with a site, the site's (each paired with whether it is the site's).
pub(super) fn keys(id: &ManifestId, site: Option<&SiteId>) -> Vec<(RecordKey, bool)> {
    std::iter::once((RecordKey::new(id.as_bytes()), false))
        .chain(site.map(|site| (site_key(id, site), true)))
        .collect()
}

/// The keys a lookup of `id` asks: its site's, and the release's only
/// when `release` (or with no site). A release-key answer lists up to ten
/// providers with their addresses, from any site, across the WAN: about
/// 1.2 KB when it listed 20 (before `providers::ANSWER` was halved),
/// which a device whose site holds the release has no use for. At
/// 1,000 simulated devices, asking it only when wanted (and reusing the
/// connection to the seeder) cut what a later-wave device read from the
/// origin besides chunks from 17-26 KB to 8-14 KB.
///
/// Without `site_key`, a lookup that asks the release's key leaves out
/// the site's: the fetch has all the site neighbours it dials (see
/// `Discovery::handle_timeout`), and the site's answer is another
/// kilobyte over the WAN for nothing.
pub(super) fn lookup_keys(
    id: &ManifestId,
    site: Option<&SiteId>,
    release: bool,
    site_key: bool,
) -> Vec<(RecordKey, bool)> {
    let mut k = keys(id, site);
    if site.is_some() {
        k.retain(|(_, of_site)| {
            if *of_site {
                site_key || !release
            } else {
                release
            }
        });
    }
    k
}

/// Provides `id` under the release key and, with a site, its site's key.
/// With no DHT peer yet, the records are stored locally (which is all a
/// lone DHT server such as the origin needs), but the query finds nobody
/// else to store them, and Kademlia republishes only every 12 hours: `id`
/// goes into `unprovided`, to be published again when a peer turns up.
/// Returns the query of the last key provided: the site's, if any (never
/// `None` in fact, as there is always the release key).
pub(super) fn start_providing(
    kad: &mut kad::Behaviour<SampledStore>,
    unprovided: &mut HashSet<ManifestId>,
    id: ManifestId,
    site: Option<&SiteId>,
) -> Result<Option<kad::QueryId>, kad::store::Error> {
    if no_dht_peer(kad) {
        unprovided.insert(id);
    }
    let mut last = None;
    for (key, _) in keys(&id, site) {
        last = Some(kad.start_providing(key)?);
    }
    Ok(last)
}

/// Ends provider lookup `q` once a DHT node has listed providers.
///
/// libp2p-kad goes on to query every provider it was told of as if it
/// were a DHT node: it dials each. When the release key listed the same
/// first ~20 devices to the whole fleet, at 1,000 devices each of those
/// took ~1,400 connections (1.3-1.6 MB of handshakes read over its site's
/// WAN) and then answered `Have` polls from all of them. One DHT node's
/// answer (20 of the providers it keeps, [`SampledStore`]) is enough, so
/// the lookup ends there; later lookups name others and catch
/// newcomers. Kademlia's first step lists the local store's
/// records, with no DHT node asked yet: that one does not count.
pub(super) fn end_at_first_listing(
    kad: &mut kad::Behaviour<SampledStore>,
    q: kad::QueryId,
    r: &Result<GetProvidersOk, GetProvidersError>,
    stats: &kad::QueryStats,
) {
    let listed = matches!(r, Ok(GetProvidersOk::FoundProviders { providers, .. })
        if !providers.is_empty());
    if listed && stats.num_successes() > 0 {
        if let Some(mut query) = kad.query_mut(&q) {
            query.finish();
        }
    }
}

/// What a provider lookup of the fetch loop is for.
#[derive(Debug, Clone, Copy)]
pub(super) struct LookupOf {
    pub manifest: ManifestId,
    /// Under the site's key (else the release's).
    pub site: bool,
    /// Issued once this node's own provide was stored: with one DHT
    /// server, of two devices that start together at least one finds the
    /// other this way.
    pub after_provide: bool,
}

/// Provider lookups asked for through the handle, each waiting for the
/// queries of the release key and of this node's site key to end.
#[derive(Default)]
pub(super) struct Lookups {
    next: u64,
    queries: HashMap<kad::QueryId, u64>,
    waiting: HashMap<u64, Waiting>,
}

/// One lookup: queries still running, providers found so far, the reply.
type Waiting = (usize, HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>);

impl Lookups {
    /// Looks up who provides `id`; replies at once, with nobody, when the
    /// routing table is empty.
    pub(super) fn start(
        &mut self,
        kad: &mut kad::Behaviour<SampledStore>,
        id: ManifestId,
        site: Option<&SiteId>,
        reply: oneshot::Sender<Vec<PeerId>>,
    ) {
        if no_dht_peer(kad) {
            let _ = reply.send(Vec::new());
            return;
        }
        let n = self.next;
        self.next += 1;
        let keys = keys(&id, site);
        self.waiting.insert(n, (keys.len(), HashSet::new(), reply));
        for (key, _) in keys {
            self.queries.insert(kad.get_providers(key), n);
        }
    }

    /// Takes a step of a provider query; false if `q` is not one of these.
    pub(super) fn on_result(
        &mut self,
        q: kad::QueryId,
        r: &Result<GetProvidersOk, GetProvidersError>,
    ) -> bool {
        let Some(&n) = self.queries.get(&q) else {
            return false;
        };
        let Some((running, found, _)) = self.waiting.get_mut(&n) else {
            self.queries.remove(&q);
            return true;
        };
        if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r {
            found.extend(providers.iter().copied());
            return true;
        }
        self.queries.remove(&q);
        *running -= 1;
        if *running == 0 {
            if let Some((_, found, reply)) = self.waiting.remove(&n) {
                let _ = reply.send(found.into_iter().collect());
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site_flags(
        id: &ManifestId,
        site: Option<&SiteId>,
        release: bool,
        site_key: bool,
    ) -> Vec<bool> {
        lookup_keys(id, site, release, site_key)
            .into_iter()
            .map(|(_, of_site)| of_site)
            .collect()
    }

    #[test]
    fn a_lookup_asks_the_keys_its_caller_wants_and_never_none() {
        let id = ManifestId::from_bytes([7; 32]);
        let site = SiteId::new("hall-3").unwrap();
        let s = Some(&site);
        assert_eq!(site_flags(&id, s, false, true), vec![true], "site only");
        assert_eq!(site_flags(&id, s, true, true), vec![false, true], "both");
        assert_eq!(site_flags(&id, s, true, false), vec![false], "release only");
        assert_eq!(
            site_flags(&id, s, false, false),
            vec![true],
            "a site lookup keeps its key"
        );
        // Without a site there is only the release's key to ask.
        for (release, site_key) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(site_flags(&id, None, release, site_key), vec![false]);
        }
    }
}
