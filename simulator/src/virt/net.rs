//! The network model of virtual time: links as FIFO servers.
//!
//! A transfer reserves every link on its path (sender uplink, receiver
//! downlink, and both sites' WAN links when it crosses sites). It starts
//! when all of them are free and each stays busy for the transfer's size
//! over its own rate, so no link ever carries more than its capacity and a
//! shared site uplink is shared. It is coarser than TCP fair sharing but
//! conserves capacity exactly, which is what completion times and byte
//! splits depend on.

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

    fn busy_for(&self, bytes: u64) -> Micros {
        bytes.saturating_mul(1_000_000) / self.rate
    }
}

/// Reserves `links` for a transfer of `bytes` requested at `now`; returns
/// when the last byte has crossed the slowest link.
pub fn reserve(links: &mut [&mut Link], bytes: u64, now: Micros) -> Micros {
    let start = links.iter().map(|l| l.free_at).fold(now, Micros::max);
    let mut end = start;
    for l in links.iter_mut() {
        let done = start + l.busy_for(bytes);
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
    fn upload_slots_free_up_when_uploads_end() {
        let mut s = UploadSlots::default();
        assert!(s.try_take(0, 1));
        s.hold(10);
        assert!(!s.try_take(5, 1));
        assert!(s.try_take(10, 1));
    }
}
