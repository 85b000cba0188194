//! The origin's side of "about one copy": it withholds, for a window, each
//! chunk it has just served, so the fleet takes it from that first copy.
//!
//! Devices know only part of the fleet, so two sites can both elect
//! themselves to pull the same chunk from the origin. The origin sees
//! every request, so it breaks the tie: a chunk served less than `window`
//! ago is left out of its `Have` answers and refused with `NotFound`.
//! After the window the chunk is offered again, so a device no peer can
//! serve is never stranded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meshota_protocol::{Bitfield, ChunkId, Manifest};

/// Per-chunk memory of recent origin uploads. Sans-IO: time comes in.
#[derive(Debug, Clone)]
pub struct OriginDedup {
    window: Duration,
    served: HashMap<ChunkId, Instant>,
}

impl OriginDedup {
    /// Withholds each chunk for `window` after serving it. A zero window
    /// turns deduplication off.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            served: HashMap::new(),
        }
    }

    /// Whether `id` is withheld now: served less than the window ago.
    pub fn withheld(&self, id: &ChunkId, now: Instant) -> bool {
        self.served
            .get(id)
            .is_some_and(|at| now < *at + self.window)
    }

    /// The bitfield to answer a `Have` with: every chunk not withheld.
    pub fn advertise(&self, manifest: &Manifest, now: Instant) -> Bitfield {
        let mut b = Bitfield::new(manifest.chunks.len());
        for (i, c) in manifest.chunks.iter().enumerate() {
            if !self.withheld(&c.id, now) {
                b.set(i);
            }
        }
        b
    }

    /// Whether to serve `id` now; records the upload when it does.
    pub fn admit(&mut self, id: &ChunkId, now: Instant) -> bool {
        if self.withheld(id, now) {
            return false;
        }
        self.served.insert(*id, now);
        if self.served.len() > 1 << 20 {
            let window = self.window;
            self.served.retain(|_, at| now < *at + window);
        }
        true
    }

    /// Forgets that `id` was served: its upload failed, so no one holds
    /// that copy and the chunk is offered again at once.
    pub fn release(&mut self, id: &ChunkId) {
        self.served.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_withheld_for_the_window_after_it_is_served() {
        let mut d = OriginDedup::new(Duration::from_secs(10));
        let id = ChunkId::digest(b"x");
        let t0 = Instant::now();
        assert!(d.admit(&id, t0));
        assert!(!d.admit(&id, t0 + Duration::from_secs(9)));
        assert!(d.admit(&id, t0 + Duration::from_secs(10)));
        assert!(OriginDedup::new(Duration::ZERO).admit(&id, t0));
    }

    #[test]
    fn a_chunk_whose_upload_failed_is_offered_again_at_once() {
        let mut d = OriginDedup::new(Duration::from_secs(300));
        let id = ChunkId::digest(b"x");
        let t0 = Instant::now();
        assert!(d.admit(&id, t0));
        d.release(&id);
        assert!(d.admit(&id, t0 + Duration::from_secs(1)));
    }
}
