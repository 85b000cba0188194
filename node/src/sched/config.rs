//! The scheduler's tuning knobs, apart from the state machine they tune.

use std::time::Duration;

#[cfg(doc)]
use super::{OriginDedup, SchedEvent};

/// Tuning knobs. The defaults suit devices on real networks.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Requests in flight per peer.
    pub window_per_peer: usize,
    /// Requests in flight to an origin.
    pub origin_window: usize,
    /// Chunk bytes in flight across all peers at once (`u64::MAX`: no
    /// limit); one request always may go. Requests share the downlink, so
    /// past what it carries in a few seconds more of them only make each
    /// answer later: on a 0.5 Mbit/s downlink, four requests to each of
    /// eight neighbours were 8 MiB, over two minutes, and every one ran
    /// past `request_timeout`. [`Self::in_flight_for_rate`] sizes it for
    /// a download cap. Under a budget a device whose turn it is to pull
    /// a chunk its site lacks asks for that first: the site's own chunks
    /// will still be there, and its neighbours wait for the import.
    pub max_in_flight_bytes: u64,
    /// A request not answered within this is late: the peer gets a
    /// strike, and a same-site peer may be asked for the chunk too.
    pub request_timeout: Duration,
    /// The transport's own limit on one request (request-response gives
    /// up after it). Until then a late answer may still come, so no WAN
    /// peer is asked for the chunk: a second WAN request would most
    /// likely pay for it twice.
    pub answer_timeout: Duration,
    /// How often to re-ask a peer which chunks it holds.
    pub have_refresh: Duration,
    /// Longest a same-site peer goes un-asked while it gains nothing. The
    /// next `Have` to a peer is due after half the time since it last
    /// gained a chunk, between `have_refresh` and this: a neighbour
    /// taking in a chunk a second is asked every second, one that has
    /// gained nothing for 8 s every 4 s. On 0.5 Mbit/s uplinks, where a
    /// neighbour gains a chunk every few seconds, the 1 s polls were
    /// three quarters of all requests, and each is a stream to open,
    /// answer and close at both ends. At or below `have_refresh`: no
    /// back-off.
    pub have_refresh_max: Duration,
    /// How often to re-ask the origin, when it withholds chunks it has
    /// just served to someone else (see [`OriginDedup`]).
    pub origin_have_refresh: Duration,
    /// Longest the origin goes un-asked while it offers nothing new: as
    /// for same-site peers, the next `Have` is due after half the time
    /// since its answer last grew, between `origin_have_refresh` and
    /// this. The whole fleet asks the one origin: 1,000 devices asking
    /// every 5 s is 200 answers a second, at a few hundred bytes each
    /// (an estimate, not counted) most of a 0.5 Mbit/s uplink. What a
    /// late answer costs is a `NotFound` to a request for a chunk it has
    /// just withheld.
    pub origin_have_refresh_max: Duration,
    /// How often to re-ask a peer of another site. Each round trip
    /// crosses two WAN links, and a device that provided a release early
    /// is asked by much of the fleet: at 1,000 devices, asking every
    /// second made wave 1's devices read about 0.5 MB each of such
    /// answers and questions. Far peers only serve chunks the site lacks,
    /// so hearing of them a little later costs little.
    pub far_have_refresh: Duration,
    /// A peer delivering slower than this (while busy serving us) is dropped.
    pub min_rate_bps: u64,
    /// Endgame starts when this few chunks are missing.
    pub endgame_chunks: usize,
    /// In the endgame, a request is duplicated to an idle neighbour only
    /// once it has waited this long: the endgame rescues the tail from a
    /// slow peer, and a duplicate of a request about to be answered only
    /// burns a neighbour's upload slot (at 1,000 devices, immediate
    /// duplicates were most of the 1.7 GB of chunk bytes received for
    /// nothing).
    pub endgame_after: Duration,
    /// How long to wait for a chunk's site or fleet home to pull it before
    /// pulling it ourselves over the WAN.
    pub site_patience: Duration,
    /// How long a neighbour's claim to be importing a chunk (see
    /// `Scheduler::importing`), heard without a break, holds this device
    /// back from pulling it over the WAN too; then the line steps in one
    /// `site_patience` apart. A claim lasts only while its claimant has
    /// a request out or was refused moments ago. On `cellular-1000`,
    /// 180 s instead of 60 s all but ended step-ins on a claim, but as
    /// many second copies came from devices that heard no claim, and the
    /// run was no better (one run each; BENCHMARKS.md, 2026-12-06, late).
    pub claim_patience: Duration,
    /// How long a device that is about to step in on a chunk's home and
    /// pull the chunk from another site first says so to its site
    /// neighbours (in `Have` requests it sends them at once) and listens
    /// for theirs (`sched::check`); zero (the default) pulls at once.
    /// On `throttled-1000`, 1 s cut a site's second copies by four fifths
    /// and the busiest site's WAN bytes from 1.43 to 1.31 bundles, but the
    /// run took 465 s instead of 402 s (BENCHMARKS.md, "2026-12-07,
    /// second stop"): a choice between WAN bytes and time, so it is off
    /// unless a fleet asks for it.
    pub claim_check: Duration,
    /// A chunk the site is heard to hold (see `Scheduler::site_holds`) is
    /// pulled over the WAN only after this long without gaining any
    /// chunk: the site's copies are then out of this device's reach.
    pub site_hold_patience: Duration,
    /// First back-off after a `Busy`; doubles per consecutive `Busy`, up
    /// to `busy_backoff_max`.
    pub busy_backoff: Duration,
    /// Longest back-off after `Busy` answers in a row. Near the end of a
    /// download every neighbour holds the missing chunks and most of them
    /// are busy: with the doubling capped at 4 s, a device that met
    /// five refusals sat idle for seconds while slots came free, and
    /// those devices were the run's tail. 1,000 devices in one wave
    /// (virtual time, 18 seeds): time to 100 % 1.55–1.76 × the bound
    /// with a 4 s cap, 1.38–1.53 × with 1 s, for 1.6 × the refusals.
    pub busy_backoff_max: Duration,
    /// How long a dropped (not banned) peer is ignored.
    pub drop_cooloff: Duration,
    /// With no chunk arriving for this long, emit [`SchedEvent::Stalled`].
    pub stall_timeout: Duration,
    /// Seed for tie-breaks; give each device a different one.
    pub seed: u64,
}

impl SchedulerConfig {
    /// The in-flight budget for a downlink of `bps` bytes per second
    /// (`None`: no limit): what it carries in [`IN_FLIGHT_SECS`] seconds,
    /// so an answer queued behind the others still comes within the
    /// default `request_timeout`.
    pub fn in_flight_for_rate(bps: Option<u64>) -> u64 {
        bps.map_or(u64::MAX, |r| r.saturating_mul(IN_FLIGHT_SECS))
    }
}

/// Seconds of download the in-flight budget covers.
pub const IN_FLIGHT_SECS: u64 = 6;

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            window_per_peer: 4,
            origin_window: 4,
            max_in_flight_bytes: u64::MAX,
            request_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(60),
            have_refresh: Duration::from_secs(1),
            have_refresh_max: Duration::from_secs(4),
            origin_have_refresh: Duration::from_secs(5),
            origin_have_refresh_max: Duration::from_secs(60),
            far_have_refresh: Duration::from_secs(5),
            min_rate_bps: 4 * 1024,
            endgame_chunks: 8,
            endgame_after: Duration::from_millis(2500),
            site_patience: Duration::from_secs(8),
            site_hold_patience: Duration::from_secs(30),
            claim_patience: Duration::from_secs(60),
            claim_check: Duration::ZERO,
            busy_backoff: Duration::from_millis(250),
            busy_backoff_max: Duration::from_secs(1),
            drop_cooloff: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(120),
            seed: 0,
        }
    }
}
