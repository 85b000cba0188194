//! The network model of virtual time: links as FIFO servers.
//!
//! A transfer takes a turn on every link on its path (sender uplink,
//! receiver downlink, and both sites' WAN links when it crosses sites),
//! each link serving its turns in order and staying busy for the
//! transfer's size over its own rate; the transfer ends when its last turn
//! does. No link ever carries more than its capacity and a shared site
//! uplink is shared. It is coarser than TCP fair sharing (a transfer is
//! served on its links as in a store-and-forward tandem, not at one
//! bottleneck rate throughout) but conserves every link's capacity and,
//! like TCP, never leaves a link idle while work for it is queued, which
//! is what completion times and byte splits depend on.

/// Microseconds of virtual time.
pub type Micros = u64;

/// One direction of one link.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Bytes per second.
    rate: u64,
    /// When the link is next free.
    free_at: Micros,
}

impl Link {
    /// A link of `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            free_at: 0,
        }
    }

    /// Whether a transfer starting at `at` would wait longer than `max`
    /// for its turn (never, without a `max`): a capped uploader's reason
    /// to answer `Busy` (`P2pConfig::upload_queue_max`).
    pub fn waits_past(&self, max: Option<Micros>, at: Micros) -> bool {
        max.is_some_and(|max| self.free_at.saturating_sub(at) > max)
    }

    fn busy_for(&self, bytes: u64) -> Micros {
        bytes.saturating_mul(1_000_000) / self.rate
    }
}

/// Reserves `links` for a transfer of `bytes` requested at `now`; returns
/// when the last byte has crossed the slowest link.
///
/// Each link serves its own queue in order: the transfer takes its turn
/// on every link independently, and ends when its turn on the last one
/// ends. Waiting for every link on the path to be free at once instead
/// left fast links idle behind one slow link (a shared origin stood
/// still while one site's WAN was busy), which TCP does not do.
pub fn reserve(links: &mut [&mut Link], bytes: u64, now: Micros) -> Micros {
    let mut end = now;
    for l in links.iter_mut() {
        let done = l.free_at.max(now) + l.busy_for(bytes);
        l.free_at = done;
        end = end.max(done);
    }
    end
}

/// Outstanding uploads of one sender, to answer `Busy` like a real node.
#[derive(Debug, Clone, Default)]
pub struct UploadSlots {
    ends: Vec<Micros>,
}

impl UploadSlots {
    /// Takes a slot until `until` if fewer than `max` are busy at `now`.
    pub fn try_take(&mut self, now: Micros, max: u32) -> bool {
        self.ends.retain(|e| *e > now);
        self.ends.len() < max as usize
    }

    /// Records an upload ending at `end`.
    pub fn hold(&mut self, end: Micros) {
        self.ends.push(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_link_serialises_transfers_at_its_rate() {
        let mut wan = Link::new(1_000_000);
        let mut a = Link::new(10_000_000);
        let mut b = Link::new(10_000_000);
        let t1 = reserve(&mut [&mut a, &mut wan], 1_000_000, 0);
        let t2 = reserve(&mut [&mut b, &mut wan], 1_000_000, 0);
        assert_eq!(t1, 1_000_000);
        assert_eq!(
            t2, 2_000_000,
            "the second transfer waits for the shared link"
        );
    }

    #[test]
    fn a_shared_origin_does_not_stand_still_while_one_site_link_is_busy() {
        // 10 MB/s origin, two 1 MB/s site links: the second site's
        // transfer takes its turn on the origin at once and is limited
        // only by its own site link, not by the first site's.
        let mut origin = Link::new(10_000_000);
        let mut site_a = Link::new(1_000_000);
        let mut site_b = Link::new(1_000_000);
        let a1 = reserve(&mut [&mut origin, &mut site_a], 1_000_000, 0);
        let a2 = reserve(&mut [&mut origin, &mut site_a], 1_000_000, 0);
        let b1 = reserve(&mut [&mut origin, &mut site_b], 1_000_000, 0);
        assert_eq!((a1, a2), (1_000_000, 2_000_000));
        assert_eq!(
            b1, 1_000_000,
            "site B's transfer does not queue behind site A's"
        );
        assert_eq!(
            origin.free_at, 300_000,
            "the origin carried three transfers at its rate"
        );
    }

    #[test]
    fn upload_slots_free_up_when_uploads_end() {
        let mut s = UploadSlots::default();
        assert!(s.try_take(0, 1));
        s.hold(10);
        assert!(!s.try_take(5, 1));
        assert!(s.try_take(10, 1));
    }
}
