//! Read-only views of a scheduler, for diagnosing a stall and for tests.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use super::{PeerClass, Scheduler};

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// One line on where the download stands, for diagnosing a stall:
    /// chunks missing, and per class the peers known, those holding
    /// something still open, and those backing off.
    pub fn describe(&self, now: Instant) -> String {
        let mut out = format!(
            "{}/{} chunks missing",
            self.missing.len(),
            self.chunks.len()
        );
        for class in [PeerClass::SameSite, PeerClass::OtherSite, PeerClass::Origin] {
            let peers = self.peers.values().filter(|p| p.class == class);
            let (mut n, mut useful, mut backing_off, mut in_flight) = (0, 0, 0, 0);
            for p in peers {
                n += 1;
                useful += usize::from(p.has_any(&self.open));
                backing_off += usize::from(p.busy_until > now);
                in_flight += p.in_flight as usize;
            }
            out.push_str(&format!(
                "; {class:?}: {n} known, {useful} hold open chunks, \
                 {backing_off} backing off, {in_flight} requests in flight"
            ));
        }
        let cooling = self.site_cooling.values().filter(|(t, _)| *t > now).count();
        if cooling > 0 {
            out.push_str(&format!(
                "; {cooling} same-site peers in cool-off keep their chunks off the WAN"
            ));
        }
        out
    }

    /// Peers currently considered, by class.
    pub fn peer_count(&self, class: PeerClass) -> usize {
        self.peers.values().filter(|p| p.class == class).count()
    }

    /// The class `peer` is known under, if it is known.
    pub fn peer_class(&self, peer: &P) -> Option<PeerClass> {
        self.peers.get(peer).map(|p| p.class)
    }
}
