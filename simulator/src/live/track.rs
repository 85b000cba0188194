//! What each device did, recorded in-process as it happens: commits and
//! rollbacks from the install backend, bytes by source from the fetcher.
//! The broker's registry says the same through telemetry, later; these
//! hooks give exact times.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use meshota_node::agent::driver::{FetchRequest, Fetcher};
use meshota_node::agent::FetchProgress;
use meshota_node::store::Store;
use meshota_protocol::{ByteSplit, ReleaseId};

use super::backend::SlotEvent;

/// One device's record.
#[derive(Debug, Default, Clone)]
pub struct DeviceTrack {
    /// When its first fetch began.
    pub started_at: Option<Instant>,
    /// When its backend committed.
    pub committed_at: Option<Instant>,
    /// When its backend rolled back.
    pub rolled_back_at: Option<Instant>,
    /// Bytes of fetch attempts that ended.
    pub done: ByteSplit,
    /// Bytes of the attempt under way.
    pub current: ByteSplit,
    /// Fetch attempts started.
    pub fetches: u32,
}

impl DeviceTrack {
    /// Bytes over all attempts.
    pub fn bytes(&self) -> ByteSplit {
        add(self.done, self.current)
    }
}

/// Adds two splits field by field.
pub fn add(a: ByteSplit, b: ByteSplit) -> ByteSplit {
    ByteSplit {
        same_site: a.same_site + b.same_site,
        other_peers: a.other_peers + b.other_peers,
        origin: a.origin + b.origin,
        local: a.local + b.local,
    }
}

/// Every device's record.
#[derive(Debug)]
pub struct Tracker {
    devices: Vec<Mutex<DeviceTrack>>,
}

impl Tracker {
    /// Records for `n` devices.
    pub fn new(n: usize) -> Self {
        Self {
            devices: (0..n).map(|_| Mutex::default()).collect(),
        }
    }

    fn with<T>(&self, i: usize, f: impl FnOnce(&mut DeviceTrack) -> T) -> Option<T> {
        let m = self.devices.get(i)?;
        // Records are plain values: consistent after a panic.
        Some(f(&mut m.lock().unwrap_or_else(PoisonError::into_inner)))
    }

    /// A device's backend reported `ev`.
    pub fn slot_event(&self, i: usize, ev: SlotEvent) {
        let now = Instant::now();
        self.with(i, |d| match ev {
            SlotEvent::Installed => {}
            SlotEvent::Committed => d.committed_at = d.committed_at.or(Some(now)),
            SlotEvent::RolledBack => d.rolled_back_at = d.rolled_back_at.or(Some(now)),
        });
    }

    /// A copy of device `i`'s record.
    pub fn get(&self, i: usize) -> DeviceTrack {
        self.with(i, |d| d.clone()).unwrap_or_default()
    }

    /// Every record.
    pub fn all(&self) -> Vec<DeviceTrack> {
        (0..self.devices.len()).map(|i| self.get(i)).collect()
    }
}

/// A fetcher that records the bytes by source of the one it wraps.
pub struct TrackingFetcher<F> {
    inner: F,
    tracker: std::sync::Arc<Tracker>,
    index: usize,
}

impl<F> TrackingFetcher<F> {
    /// Wraps `inner` for device `index`.
    pub fn new(inner: F, tracker: std::sync::Arc<Tracker>, index: usize) -> Self {
        Self {
            inner,
            tracker,
            index,
        }
    }
}

impl<F: Fetcher> Fetcher for TrackingFetcher<F> {
    fn fetch(
        &mut self,
        req: FetchRequest<'_>,
        store: &dyn Store,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<(), String> {
        self.tracker.with(self.index, |d| {
            d.fetches += 1;
            d.started_at = d.started_at.or_else(|| Some(Instant::now()));
            d.done = add(d.done, d.current);
            d.current = ByteSplit::default();
        });
        let (tracker, index) = (self.tracker.clone(), self.index);
        self.inner.fetch(req, store, &mut |p| {
            tracker.with(index, |d| d.current = p.bytes);
            progress(p);
        })
    }

    fn cancel(&mut self, release: &ReleaseId) {
        self.inner.cancel(release);
    }

    fn peer_id(&self) -> Option<String> {
        self.inner.peer_id()
    }
}
