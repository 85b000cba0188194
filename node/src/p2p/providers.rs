//! The Kademlia record store: libp2p-kad's `MemoryStore`, except that it
//! keeps many providers per key and names a different random handful in
//! each answer.
//!
//! `MemoryStore` keeps a key's first k = 20 providers and ignores the
//! rest, so every lookup of a release names the same 20 devices: the
//! first to start, whichever site they are in. Every far dial of a fleet
//! then went to them; they sat at their connection limit and refused
//! most (BENCHMARKS.md, "2026-12-05 (late night)"). And a site's lookups
//! named the same 20 of its devices to all the others. Here a key keeps
//! up to [`MAX_PROVIDERS_PER_KEY`] providers and each answer is a random
//! [`ANSWER`] of them, so a fleet's far dials and a site's neighbours
//! spread over everyone who provides.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::kad::store::{MemoryStore, RecordStore, Result as StoreResult};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

/// Providers named in one answer: half Kademlia's usual k of 20. A fetch
/// dials at most 8 providers of its site and 4 of other sites
/// (`sched::discovery`), and each answer crosses the asking site's WAN at
/// about 55 bytes a name. On `throttled-1000` (seven lookups a device)
/// what a device read from the origin besides chunks fell from 19 KB to
/// 13.4-13.6 KB with ten, and the mean site from 1.16-1.18 to 1.13-1.16
/// bundles (BENCHMARKS.md, 2026-12-07, seventh stop).
pub const ANSWER: usize = 10;

/// Providers kept per key. Past this, later providers are ignored (as
/// `MemoryStore` ignores all past 20), which bounds what a flood of fake
/// provider records can take: about 100 bytes each.
pub(crate) const MAX_PROVIDERS_PER_KEY: usize = 4096;

/// Keys with providers kept (`MemoryStore`'s default).
const MAX_KEYS: usize = 1024;

pub(crate) struct SampledStore {
    local: PeerId,
    /// Value records and this node's own provider records.
    inner: MemoryStore,
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// xorshift state: `providers` takes `&self`.
    rng: AtomicU64,
}

impl SampledStore {
    pub(crate) fn new(local: PeerId) -> Self {
        SampledStore {
            local,
            inner: MemoryStore::new(local),
            providers: HashMap::new(),
            // xorshift's state must not be zero.
            rng: AtomicU64::new(super::peer_seed(&local) | 1),
        }
    }

    fn next_random(&self) -> u64 {
        let step = |mut x: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prev = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or_else(|x| x);
        step(prev)
    }
}

impl RecordStore for SampledStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.inner.get(k)
    }

    fn put(&mut self, r: Record) -> StoreResult<()> {
        self.inner.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.inner.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.inner.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> StoreResult<()> {
        if record.provider == self.local {
            // `provided()` (republishing) reads the inner store's.
            self.inner.add_provider(record.clone())?;
        }
        let num_keys = self.providers.len();
        let list = match self.providers.get_mut(&record.key) {
            Some(list) => list,
            None if num_keys >= MAX_KEYS => return Err(libp2p::kad::store::Error::MaxProvidedKeys),
            None => self.providers.entry(record.key.clone()).or_default(),
        };
        if let Some(p) = list.iter_mut().find(|p| p.provider == record.provider) {
            *p = record;
        } else if list.len() < MAX_PROVIDERS_PER_KEY {
            list.push(record);
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let Some(list) = self.providers.get(key) else {
            return Vec::new();
        };
        if list.len() <= ANSWER {
            return list.clone();
        }
        // A partial Fisher-Yates over indices: only the chosen records
        // are cloned.
        let mut idx: Vec<usize> = (0..list.len()).collect();
        for i in 0..ANSWER {
            let j = i + (self.next_random() % (idx.len() - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx[..ANSWER].iter().map(|&i| list[i].clone()).collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.inner.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if *p == self.local {
            self.inner.remove_provider(k, p);
        }
        if let Some(list) = self.providers.get_mut(k) {
            list.retain(|r| r.provider != *p);
            if list.is_empty() {
                self.providers.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn record(key: &RecordKey, provider: PeerId) -> ProviderRecord {
        ProviderRecord::new(key.clone(), provider, Vec::new())
    }

    /// A store holding `n` providers of one key.
    fn store_with(n: usize) -> (SampledStore, RecordKey, Vec<PeerId>) {
        let mut store = SampledStore::new(PeerId::random());
        let key = RecordKey::new(b"release");
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        for p in &peers {
            store.add_provider(record(&key, *p)).unwrap();
        }
        (store, key, peers)
    }

    #[test]
    fn a_key_with_a_few_providers_names_them_all() {
        let (store, key, peers) = store_with(5);
        let named: HashSet<PeerId> = store.providers(&key).iter().map(|r| r.provider).collect();
        assert_eq!(named, peers.into_iter().collect());
    }

    #[test]
    fn lookups_of_a_crowded_key_name_an_answers_worth_each_and_everyone_in_turn() {
        let (store, key, peers) = store_with(1000);
        let mut seen = HashSet::new();
        for _ in 0..400 {
            let answer = store.providers(&key);
            assert_eq!(answer.len(), ANSWER);
            let distinct: HashSet<PeerId> = answer.iter().map(|r| r.provider).collect();
            assert_eq!(distinct.len(), ANSWER, "no provider twice in one answer");
            seen.extend(distinct);
        }
        // MemoryStore would have kept and named the first 20 only.
        assert!(seen.len() > 900, "{} of 1000 named", seen.len());
        assert!(!seen.is_subset(&peers[..ANSWER].iter().copied().collect()));
    }

    #[test]
    fn a_removed_provider_is_not_named_and_the_node_s_own_records_are_provided() {
        let me = PeerId::random();
        let mut store = SampledStore::new(me);
        let key = RecordKey::new(b"release");
        let other = PeerId::random();
        store.add_provider(record(&key, me)).unwrap();
        store.add_provider(record(&key, other)).unwrap();
        assert_eq!(store.provided().count(), 1);
        store.remove_provider(&key, &other);
        let named: Vec<PeerId> = store.providers(&key).iter().map(|r| r.provider).collect();
        assert_eq!(named, vec![me]);
        store.remove_provider(&key, &me);
        assert!(store.providers(&key).is_empty());
        assert_eq!(store.provided().count(), 0);
    }

    #[test]
    fn a_key_keeps_at_most_its_cap_of_providers() {
        let (store, key, _) = store_with(MAX_PROVIDERS_PER_KEY + 10);
        assert_eq!(
            store.providers.get(&key).map(Vec::len),
            Some(MAX_PROVIDERS_PER_KEY)
        );
    }
}
