//! Per-chunk and per-peer bookkeeping of the scheduler.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use meshota_protocol::ChunkId;
use smallvec::SmallVec;

use super::PeerClass;

/// One request in flight for a chunk.
pub(super) struct Flight<P> {
    pub peer: P,
    /// When it turns late (at `request_timeout`), or, once late, when the
    /// transport has given up on it (at `answer_timeout`).
    pub deadline: Instant,
    /// Past `request_timeout`. Request-response cannot cancel an answer
    /// in flight, so a late request is still awaited: only a same-site
    /// peer may be asked for the chunk meanwhile, never the WAN.
    pub late: bool,
    /// When it was sent.
    pub sent: Instant,
}

/// One distinct chunk of the manifest.
pub(super) struct ChunkState<P> {
    pub len: u32,
    /// First manifest position holding this chunk.
    pub pos: usize,
    /// Mixed from the chunk id, so every device ranks homes the same way.
    pub hash: u64,
    /// Seeded random rank: the tie-break among equally rare chunks.
    pub rank: u64,
    pub held: bool,
    /// Known non-origin peers holding it.
    pub avail: u32,
    /// Known same-site peers holding it.
    pub site_avail: u32,
    /// A member of the site holds it, by word of a neighbour (see
    /// `site_holds`), though maybe no peer known directly does.
    pub site_heard: bool,
    /// The driver said first-hand that the site holds it (see
    /// `Scheduler::handle_site_heard`); kept when words change.
    pub site_told: bool,
    /// Requests in flight: peer and deadline.
    pub in_flight: Vec<Flight<P>>,
    /// When we first held back from pulling it from a peer beyond the
    /// site (`[0]`) or from the origin (`[1]`) because another device is
    /// its home. Apart, because the origin offers every chunk from the
    /// start: with one clock, a chunk deferred for the origin in the
    /// first seconds had long waited out its place in the site's line
    /// when, minutes later, peers of other sites came to hold it, and
    /// every device of the site whose place was not far back pulled it
    /// over the WAN at once (on `cellular-1000`, five devices of one site
    /// within 14 s, three of them taking it).
    pub deferred: [Option<Instant>; 2],
    /// Since when a neighbour has said, without a break, that it awaits
    /// the chunk from the WAN (see `importing`).
    pub claimed_since: Option<Instant>,
    /// When a peer beyond the site last answered `Busy` to a request for
    /// it: this device is still importing it (see `importing`).
    pub refused_at: Option<Instant>,
    /// This device's claim check before a WAN pull (`claim_check`): when
    /// it may pull, and when the claim it announced lapses unless a
    /// request keeps it up.
    pub intent: Option<(Instant, Instant)>,
    pub id: ChunkId,
}

impl<P> ChunkState<P> {
    pub fn new(id: ChunkId, len: u32, pos: usize, rank: u64) -> Self {
        let mut first = [0u8; 8];
        first.copy_from_slice(&id.as_bytes()[..8]);
        Self {
            len,
            pos,
            hash: u64::from_le_bytes(first),
            rank,
            held: false,
            avail: 0,
            site_avail: 0,
            site_heard: false,
            site_told: false,
            in_flight: Vec::new(),
            deferred: [None; 2],
            claimed_since: None,
            refused_at: None,
            intent: None,
            id,
        }
    }

    /// The class rules of a pick: a chunk a neighbour holds is fetched
    /// locally, not over the WAN, nor is one whose late answer may still
    /// come; the origin only serves what no reachable peer holds. A chunk
    /// the site is heard to hold comes over the WAN only to a device that
    /// is `starving` (see `site_holds`).
    pub fn may_come_from(&self, class: PeerClass, starving: bool) -> bool {
        let heard = self.site_heard && !starving;
        match class {
            PeerClass::SameSite => true,
            PeerClass::OtherSite => self.site_avail == 0 && !heard && self.in_flight.is_empty(),
            PeerClass::Origin => self.avail == 0 && !heard && self.in_flight.is_empty(),
        }
    }

    pub fn adjust(&mut self, same_site: bool, add: bool) {
        let step = |v: &mut u32| {
            *v = if add { *v + 1 } else { v.saturating_sub(1) };
        };
        step(&mut self.avail);
        if same_site {
            step(&mut self.site_avail);
        }
    }
}

/// One peer serving this manifest.
///
/// Every poll walks all peers and reads only the first fields (the
/// request filter), so they come first and fill one cache line; at
/// 100,000 virtual devices the walk is memory-bound.
#[repr(C, align(64))]
pub(super) struct PeerState {
    pub busy_until: Instant,
    /// Which distinct chunks it holds, one bit each. Inline up to 128
    /// chunks: a heap pointer per peer would cost a cache miss each.
    have: SmallVec<[u64; 2]>,
    /// How many of the chunks we still miss it holds: zero means it has
    /// nothing for us, below our missing count means it may gain some.
    /// Kept up to date so neither needs a scan of the missing chunks.
    pub useful: u32,
    pub class: PeerClass,
    /// Whether its bitfield has arrived at least once.
    pub known: bool,
    /// Whether it is itself fetching the manifest.
    pub fetching: bool,
    /// A same-site peer to be asked at once, so that it hears a claim
    /// this device is about to make (`claim_check`).
    pub claim_push: bool,
    /// Requests outstanding to it; `u32` so that `hash`, which every
    /// pick reads, still fits the first cache line.
    pub in_flight: u32,
    pub hash: u64,
    pub have_due: Instant,
    pub have_pending: Option<Instant>,
    pub busy_in_row: u32,
    pub timeouts_in_row: u32,
    /// Chunks it held at its last `Have`, and when that number last grew:
    /// a rendezvous home that keeps gaining chunks is worth waiting for.
    pub held_count: usize,
    pub last_gain: Instant,
    /// Bytes delivered, and time spent with at least one request
    /// outstanding: their ratio is the rate it actually serves us at.
    pub bytes: u64,
    pub busy_time: Duration,
    pub busy_since: Option<Instant>,
}

/// Below this much busy time a rate estimate is noise.
const RATE_WINDOW: Duration = Duration::from_secs(5);

impl PeerState {
    pub fn new(class: PeerClass, hash: u64, chunks: usize, now: Instant) -> Self {
        Self {
            class,
            hash,
            have: smallvec::smallvec![0; chunks.div_ceil(64)],
            known: false,
            fetching: false,
            claim_push: false,
            in_flight: 0,
            have_due: now,
            have_pending: None,
            busy_until: now,
            busy_in_row: 0,
            timeouts_in_row: 0,
            bytes: 0,
            busy_time: Duration::ZERO,
            busy_since: None,
            held_count: 0,
            last_gain: now,
            useful: 0,
        }
    }

    pub fn has(&self, u: usize) -> bool {
        self.have
            .get(u / 64)
            .is_some_and(|w| w & (1 << (u % 64)) != 0)
    }

    /// Whether it holds any chunk of `mask` (same layout as its bits).
    pub fn has_any(&self, mask: &[u64]) -> bool {
        self.have.iter().zip(mask).any(|(a, b)| a & b != 0)
    }

    /// Sets or clears chunk `u`; returns whether the bit changed.
    pub fn set_has(&mut self, u: usize, v: bool) -> bool {
        let Some(w) = self.have.get_mut(u / 64) else {
            return false;
        };
        let before = *w;
        if v {
            *w |= 1 << (u % 64);
        } else {
            *w &= !(1 << (u % 64));
        }
        *w != before
    }

    pub fn begin_request(&mut self, now: Instant) {
        if self.in_flight == 0 {
            self.busy_since = Some(now);
        }
        self.in_flight += 1;
    }

    pub fn end_request(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            if let Some(since) = self.busy_since.take() {
                self.busy_time += now.saturating_duration_since(since);
            }
        }
    }

    /// `Some(rate)` when it has been busy for us long enough and serves
    /// slower than `min_rate`. Not before its first chunk has landed:
    /// chunks come whole, so until then the rate reads zero whatever the
    /// link's speed. A peer serving four 256 KiB chunks at once over a
    /// 1 Mbit/s uplink was dropped at 5 s, before any could arrive; and
    /// on the simulator's loaded host most of the 14 drops per device at
    /// 1,000 devices were of this kind. A peer that never answers is
    /// what the request timeout is for.
    pub fn slow_rate(&self, now: Instant, min_rate: u64) -> Option<u64> {
        if self.bytes == 0 {
            return None;
        }
        let busy = self.busy_time
            + self
                .busy_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        if busy < RATE_WINDOW || min_rate == 0 {
            return None;
        }
        let rate = (self.bytes as f64 / busy.as_secs_f64()) as u64;
        (rate < min_rate).then_some(rate)
    }

    pub fn window(&self, peer_window: usize, origin_window: usize) -> u32 {
        let w = match self.class {
            PeerClass::Origin => origin_window,
            _ => peer_window,
        };
        u32::try_from(w).unwrap_or(u32::MAX)
    }
}

/// A set of unique chunk indices as bits: iterates in ascending order,
/// as the `BTreeSet` it replaced did, without walking tree nodes.
pub(super) struct ChunkSet(Vec<u64>);

impl ChunkSet {
    pub fn new(chunks: usize) -> Self {
        Self(vec![0; chunks.div_ceil(64)])
    }

    pub fn insert(&mut self, u: u32) {
        if let Some(w) = self.0.get_mut(u as usize / 64) {
            *w |= 1 << (u % 64);
        }
    }

    pub fn remove(&mut self, u: u32) {
        if let Some(w) = self.0.get_mut(u as usize / 64) {
            *w &= !(1 << (u % 64));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            let mut rest = w;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }
}

/// SplitMix64: a tiny seeded generator, so runs replay exactly.
pub(super) struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
}

/// The SplitMix64 finaliser: a good 64-bit mixer.
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over a value's `Hash` bytes: stable across processes and
/// machines (unlike `std`'s randomly keyed hasher), so every device
/// computes the same rendezvous weights for the same peer ids.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub(super) fn peer_hash<P: Hash>(p: &P) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    p.hash(&mut h);
    mix(h.finish())
}
