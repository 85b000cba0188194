//! Virtual-time mode: a discrete-event model of the network and the
//! broker around the production sans-IO cores.
//!
//! What runs is production code: every device is a real
//! [`meshota_node::agent::Agent`] (announcement verification, the update
//! state machine) with a real [`meshota_node::sched::Scheduler`] for its
//! download and a real [`meshota_node::sched::Discovery`] for which
//! providers beyond its site it looks up and dials; the broker side is the real rollout
//! [`meshota_broker::rollout::Planner`], whose gates are really signed and
//! then verified by every device, and the origin's real
//! [`meshota_node::sched::OriginDedup`]. What is modelled: the network
//! ([`net`]: FIFO links), MQTT delivery (a fixed WAN latency), and the
//! time install and health take (the agent decides what happens; the
//! model only says when the backend answers, and whether health passes).
//! Time jumps from event to event and every choice comes from the seed,
//! so the same scenario replays the same run exactly.
//!
//! # Model choices that keep 100,000 devices cheap
//!
//! - **Bounded neighbour sets** ([`fleet`]): a device knows a few dozen
//!   peers, never the whole fleet or site.
//! - **Pushed availability** ([`transfer`]): a device tells the devices
//!   that know it about each chunk it stores
//!   ([`Scheduler::handle_peer_has`](meshota_node::sched::Scheduler::handle_peer_has)),
//!   instead of every device re-asking every neighbour for its bitfield
//!   each second. Only the first `Have` per peer and the origin's (which
//!   withholds chunks for a while) are still queried. A device acts on
//!   pushed news that can start a request at once when idle, otherwise
//!   within a quarter of `have_refresh_ms`; news that cannot (the chunk
//!   is in flight, its holder backed off or out of window) waits for the
//!   poll a node makes anyway within `have_refresh_ms`
//!   ([`Scheduler::could_request`](meshota_node::sched::Scheduler::could_request)).
//! - **A same-site `Busy` answer within the asking poll**: a refusal is
//!   the most common answer (several per chunk delivered), and a device's
//!   record is a cache miss each time an event comes back to it. A
//!   same-site answer takes a LAN round trip, a small fraction of the
//!   back-off it causes, so it is handed to the scheduler at once and the
//!   device polls again in the same step. A far `Busy` answer is still an
//!   event, after its round trip, and is polled on only if another peer
//!   could serve the reopened chunk now; the back-off's end is a deadline
//!   like any other.
//! - **One poll for answers that arrive together**: the `Have` answers
//!   of a device's first round (a dozen or more, from its site at one
//!   LAN round trip) are all handed to its scheduler before it polls,
//!   not one poll per answer.
//! - **Batched fan-out, one signature check per announcement**
//!   ([`control`]): one event delivers a gate to every device (as the
//!   MQTT broker's retained publish does). Its signatures are checked
//!   once for real and every agent runs its device-specific checks on
//!   that proof.

mod control;
pub mod fleet;
pub mod net;
mod queue;
mod transfer;

use std::time::{Duration, Instant};

use meshota_broker::rollout::Planner;
use meshota_node::agent::Agent;
use meshota_node::sched::{Discovery, OriginDedup, Scheduler};
use meshota_protocol::{Announcement, Bitfield, ByteSplit, DeviceId, Manifest};
use serde::Serialize;

use crate::progress::Progress;
use crate::scenario::Scenario;
use fleet::{Rng, Topology};
use net::{Link, Micros, UploadSlots};

/// The origin's peer key.
const ORIGIN: u32 = u32::MAX;
/// Give up on a run that has not finished after this much virtual time.
const MAX_VIRTUAL: Micros = 7 * 24 * 3600 * 1_000_000;

/// Why a run could not be set up. Only the synthetic release can fail,
/// and it does not; kept typed rather than panicking.
#[derive(Debug, thiserror::Error)]
pub enum VirtError {
    /// An id of the synthetic release was invalid.
    #[error("synthetic release: {0}")]
    Id(#[from] meshota_protocol::IdError),
    /// The scenario's payload could not be cut into chunks.
    #[error("cutting the payload into chunks: {0}")]
    Chunking(#[from] meshota_protocol::chunking::ChunkError),
    /// The synthetic manifest could not be encoded.
    #[error("synthetic manifest: {0}")]
    Manifest(#[from] meshota_protocol::manifest::ManifestError),
    /// A document could not be encoded for signing.
    #[error("signing: {0}")]
    Codec(#[from] meshota_protocol::CodecError),
    /// The planner refused the scenario's waves or thresholds.
    #[error("rollout spec: {0}")]
    Plan(#[from] meshota_broker::rollout::PlanError),
    /// Virtual time stopped moving: a bug in the model or a scheduler
    /// (a wake-up that does not advance), not in the scenario.
    #[error(
        "virtual time stopped at {at_s:.6} s: {events} events in a row at that instant \
         (a deadline that never comes due; please report it with the scenario)"
    )]
    Stuck {
        /// The virtual time, seconds.
        at_s: f64,
        /// Events processed at it.
        events: u64,
    },
}

/// Most events one virtual instant may take: far more than a whole site
/// acting at once, far fewer than a loop that never advances the clock.
const MAX_EVENTS_AT_ONE_INSTANT: u64 = 5_000_000;

/// What happened, for the summary and the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Devices that committed, with their commit times in seconds.
    pub commit_times_s: Vec<f64>,
    /// Devices that rolled back after a failed health check.
    pub rolled_back: u32,
    /// Devices that started and never ended committed or rolled back
    /// (stalled downloads, failed updates).
    pub failed: u32,
    /// Devices the rollout never reached (it halted first).
    pub not_started: u32,
    /// Bytes served by the origin.
    pub origin_bytes: u64,
    /// Bytes entering each site over its WAN link.
    pub site_wan_in: Vec<u64>,
    /// Bytes by source, over all devices.
    pub bytes: ByteSplit,
    /// Start and end of each wave as the planner saw them, seconds: from
    /// its `WaveStarted` to the next one (or `Completed`, or the halt).
    pub waves: Vec<(f64, f64)>,
    /// Whether the planner completed the rollout.
    pub completed: bool,
    /// Whether the planner halted it (error threshold reached).
    pub halted: bool,
    /// Gates the planner issued (each signed once, delivered to all).
    pub gates: u32,
    /// Peers banned for bad data, over all devices.
    pub bans: u64,
    /// Peers dropped for slowness, over all devices.
    pub drops: u64,
    /// Requests retried, over all devices.
    pub retries: u64,
    /// Events processed (a cost measure of the run itself).
    pub events: u64,
    /// The same, by kind: where a run's cost goes. `refused_busy` counts
    /// every `Busy` answer, also the same-site ones handled within the
    /// asking device's poll (see [`transfer`]), which are not in `events`.
    pub events_by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Chunk announcements pushed to neighbours' schedulers.
    pub have_pushes: u64,
    /// Announcements handed to device agents; each agent verified it
    /// (expiry, replay, class, gate binding, eligibility).
    pub announcements_delivered: u64,
    /// ed25519 signature checks actually run: two per distinct
    /// announcement, shared by every device (see [`control`]).
    pub signature_checks: u64,
}

/// One simulated device: its agent, its download, its links.
struct Device {
    site: u32,
    id: DeviceId,
    /// Boxed: most events touch only the download side of a device, and
    /// an inline agent would triple the stride of the device table.
    agent: Box<Agent>,
    /// Report counter, as the device's MQTT session keeps it.
    counter: u64,
    held: Bitfield,
    sched: Option<Scheduler<u32>>,
    /// Pending scheduler wake-up (stale `Wake` events are ignored).
    wake: Option<Micros>,
    /// Pending agent wake-up.
    agent_wake: Option<Micros>,
    /// When the earliest queued `Poke` is due: pushed news is acted on
    /// then (later ones are stale).
    poke: Option<Micros>,
    /// Requests this device has outstanding.
    inflight: u32,
    /// Which providers its download looks up and dials, and when: the
    /// node's own [`Discovery`] core, for its peers beyond the site.
    /// Boxed, as the agent is: most events do not touch it.
    disc: Option<Box<Discovery<u32>>>,
    started: bool,
    malicious: bool,
    health_fails: bool,
    up: Link,
    down: Link,
    uploads: UploadSlots,
}

/// A step of the install backend the model answers after a while.
#[derive(Debug, Clone, Copy)]
enum Step {
    Install,
    Health,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    /// The scheduler's timer.
    Wake(u32),
    /// The agent's timer.
    AgentWake(u32),
    /// The planner's timer.
    PlannerWake,
    /// Poll the device's scheduler: on pushed availability, or once the
    /// `Have` answers due at one instant are all in.
    Poke(u32),
    /// Announcement `k` reaches every device (MQTT fan-out, retained).
    Broadcast(u32),
    /// A device's report reaches the planner.
    Report {
        dev: u32,
        counter: u64,
        state: meshota_protocol::UpdateState,
    },
    /// The install backend finished a step.
    StepDone(u32, Step),
    Arrive {
        dst: u32,
        src: u32,
        index: u32,
        corrupt: bool,
    },
    Refused {
        dst: u32,
        src: u32,
        index: u32,
        busy: bool,
    },
    /// A `Have` answer (a full bitfield) reaches `dst`.
    Have { dst: u32, src: u32 },
    /// A dropped peer is found again after its cool-off, as a real node
    /// would on its next discovery round.
    Rediscover { dst: u32, peer: u32 },
    /// Word that the site holds chunk `index` has reached all of it.
    SiteHeard { site: u32, index: u32 },
}

impl Ev {
    const KINDS: [&'static str; 14] = [
        "wake",
        "agent_wake",
        "planner_wake",
        "poke",
        "broadcast",
        "report",
        "step_done",
        "arrive",
        "refused_busy",
        "refused_not_found",
        "have",
        "rediscover",
        "site_heard",
        "stale",
    ];

    /// The slot of timers that had been superseded when they fired.
    const STALE: usize = Self::KINDS.len() - 1;
    /// The slot of `Busy` answers, also those handled without an event.
    const BUSY: usize = 8;

    fn kind(&self) -> usize {
        match self {
            Ev::Wake(_) => 0,
            Ev::AgentWake(_) => 1,
            Ev::PlannerWake => 2,
            Ev::Poke(_) => 3,
            Ev::Broadcast(_) => 4,
            Ev::Report { .. } => 5,
            Ev::StepDone(..) => 6,
            Ev::Arrive { .. } => 7,
            Ev::Refused { busy: true, .. } => Self::BUSY,
            Ev::Refused { busy: false, .. } => 9,
            Ev::Have { .. } => 10,
            Ev::Rediscover { .. } => 11,
            Ev::SiteHeard { .. } => 12,
        }
    }
}

/// Runs a scenario in virtual time. With `p2p` off every device fetches
/// from the origin alone: the baseline of Mender, hawkBit or RAUC over
/// HTTP. `progress` hears of every wave start and end and every device
/// that finishes (committed or rolled back), in virtual seconds.
///
/// # Errors
/// [`VirtError`] only if the synthetic release could not be built or the
/// scenario's waves are refused by the planner.
pub fn run(
    s: &Scenario,
    p2p: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, VirtError> {
    Sim::new(s, p2p)?.run(progress)
}

/// How long a capped uploader lets a request wait for its turn before
/// answering `Busy` (`P2pConfig::upload_queue_max`).
fn queue_max() -> Micros {
    meshota_node::p2p::P2pConfig::default()
        .upload_queue_max
        .as_micros() as Micros
}

struct Sim<'a> {
    s: &'a Scenario,
    p2p: bool,
    manifest: Manifest,
    devices: Vec<Device>,
    topo: Topology,
    origin_up: Link,
    origin_slots: UploadSlots,
    origin_dedup: OriginDedup,
    /// With an upload cap, how long a request may wait for its turn on a
    /// device's uplink before the device answers `Busy`, as a capped
    /// node does (`P2pConfig::upload_queue_max`).
    upload_queue_max: Option<Micros>,
    /// The same for the origin, when the seeder caps its uploads.
    origin_queue_max: Option<Micros>,
    /// Devices that have started fetching (or finished): what a Kademlia
    /// provider lookup would return.
    providers: Vec<u32>,
    /// The same, per site: what mDNS finds on the site's LAN.
    site_providers: Vec<Vec<u32>>,
    /// Chunks some device of the site has stored, per site.
    site_seen: Vec<Bitfield>,
    /// Of those, the ones word of which has crossed the site
    /// ([`Ev::SiteHeard`]).
    site_heard: Vec<Bitfield>,
    rng: Rng,
    site_up: Vec<Link>,
    site_down: Vec<Link>,
    queue: queue::EventQueue<Ev>,
    base: Instant,
    ctl: control::Control,
    planner: Planner,
    planner_wake: Option<Micros>,
    /// Every announcement published, in order.
    announcements: Vec<Announcement>,
    /// Events by [`Ev::kind`], and superseded timers at [`Ev::STALE`].
    kinds: [u64; Ev::KINDS.len()],
    out: Outcome,
    /// A poll's actions, reused so that polling does not allocate.
    actions: Vec<meshota_node::sched::Action<u32>>,
    /// Same-site `Busy` answers to the poll under way: (peer, chunk).
    bounced: Vec<(u32, u32)>,
    /// Whether same-site `Busy` answers are handed back within the poll:
    /// when the LAN round trip is at most a tenth of the `Busy` back-off,
    /// and that back-off is not zero (the poll would pick the same peer
    /// again, for ever).
    lan_bounce: bool,
}

impl<'a> Sim<'a> {
    fn new(s: &'a Scenario, p2p: bool) -> Result<Self, VirtError> {
        let manifest = fleet::manifest(s)?;
        let mut rng = Rng::new(s.seed ^ 0x5EED);
        let topo = Topology::build(s, p2p, &mut rng);
        let ctl = control::Control::new(s, &manifest)?;
        let n = manifest.chunks.len();
        let mut devices = Vec::with_capacity(s.devices as usize);
        for d in 0..s.devices {
            let site = s.site_of(d);
            let (id, agent) = ctl.agent(d, site)?;
            devices.push(Device {
                site,
                id,
                agent: Box::new(agent),
                counter: 0,
                held: Bitfield::new(n),
                sched: None,
                wake: None,
                agent_wake: None,
                poke: None,
                inflight: 0,
                disc: None,
                started: false,
                malicious: rng.unit() < s.malicious_rate,
                health_fails: rng.unit() < s.health_fail_rate,
                // Virtual links already serve in order, so a cap only
                // lowers the rate.
                up: Link::new(s.device_upload_bps()),
                down: Link::new(s.device_download_bps()),
                uploads: UploadSlots::default(),
            });
        }
        let planner = ctl.planner(s, devices.iter().map(|d| d.id.clone()))?;
        Ok(Self {
            s,
            p2p,
            manifest,
            devices,
            topo,
            // A capped seeder sends at its cap; the baseline's plain HTTP
            // origin has none.
            origin_up: Link::new(match s.origin_upload_cap_bps() {
                Some(cap) if p2p => cap.min(s.origin_up_bps),
                _ => s.origin_up_bps,
            }),
            origin_slots: UploadSlots::default(),
            // The baseline is a plain HTTP origin: it serves every request.
            origin_dedup: OriginDedup::new(if p2p {
                Duration::from_secs(s.origin_dedup_s)
            } else {
                Duration::ZERO
            }),
            upload_queue_max: s.device_upload_cap_bps().map(|_| queue_max()),
            origin_queue_max: s
                .origin_upload_cap_bps()
                .filter(|_| p2p)
                .map(|_| queue_max()),
            providers: Vec::new(),
            site_providers: vec![Vec::new(); s.sites as usize],
            site_seen: vec![Bitfield::new(n); s.sites as usize],
            site_heard: vec![Bitfield::new(n); s.sites as usize],
            rng: Rng::new(s.seed ^ 0xD15C_0FE7),
            site_up: vec![Link::new(s.site_wan_bps); s.sites as usize],
            site_down: vec![Link::new(s.site_wan_bps); s.sites as usize],
            queue: queue::EventQueue::default(),
            base: Instant::now(),
            ctl,
            planner,
            planner_wake: None,
            announcements: Vec::new(),
            kinds: [0; Ev::KINDS.len()],
            actions: Vec::new(),
            bounced: Vec::new(),
            lan_bounce: s.busy_backoff_ms > 0 && 20 * s.lan_latency_ms <= s.busy_backoff_ms,
            out: Outcome {
                site_wan_in: vec![0; s.sites as usize],
                ..Outcome::default()
            },
        })
    }

    /// `t` as the schedulers' monotonic clock.
    fn at(&self, t: Micros) -> Instant {
        self.base + Duration::from_micros(t)
    }

    /// A scheduler deadline as virtual time, rounded up: a deadline a
    /// fraction of a microsecond after `now` (half of an odd number of
    /// microseconds, as the origin's `Have` back-off computes) rounded
    /// down woke the device at `now` again, before it was due, for ever.
    fn micros_at(&self, i: Instant) -> Micros {
        let d = i.saturating_duration_since(self.base);
        (d.as_nanos().div_ceil(1000)).min(u128::from(MAX_VIRTUAL) + 1) as Micros
    }

    fn push(&mut self, t: Micros, ev: Ev) {
        self.queue.push(t, ev);
    }

    fn latency(&self, a: u32, b: u32) -> Micros {
        let lan = a != ORIGIN && b != ORIGIN && self.s.site_of(a) == self.s.site_of(b);
        1000 * if lan {
            self.s.lan_latency_ms
        } else {
            self.s.wan_latency_ms
        }
    }

    fn run(mut self, progress: &mut dyn FnMut(Progress)) -> Result<Outcome, VirtError> {
        self.push(0, Ev::PlannerWake);
        let mut finished = 0;
        let (mut instant, mut at_instant) = (0, 0u64);
        while let Some((now, ev)) = self.queue.pop() {
            if now > MAX_VIRTUAL {
                break;
            }
            if now == instant {
                at_instant += 1;
                if at_instant > MAX_EVENTS_AT_ONE_INSTANT {
                    return Err(VirtError::Stuck {
                        at_s: now as f64 / 1e6,
                        events: at_instant,
                    });
                }
            } else {
                (instant, at_instant) = (now, 1);
            }
            let done = self.out.commit_times_s.len() + self.out.rolled_back as usize;
            for _ in finished..done {
                progress(Progress::DeviceFinished {
                    at_s: now as f64 / 1e6,
                });
            }
            finished = finished.max(done);
            self.out.events += 1;
            self.kinds[ev.kind()] += 1;
            match ev {
                Ev::PlannerWake => {
                    if self.planner_wake.is_none_or(|w| w == now) {
                        self.planner_wake = None;
                        let t = control::secs(now);
                        self.planner.handle_timeout(t);
                        self.drain_planner(now, progress);
                    }
                }
                Ev::Broadcast(k) => self.broadcast(k as usize, now),
                Ev::Report {
                    dev,
                    counter,
                    state,
                } => {
                    self.report(dev, counter, state, now);
                    self.drain_planner(now, progress);
                }
                Ev::AgentWake(d) => {
                    if self.devices[d as usize].agent_wake == Some(now) {
                        self.devices[d as usize].agent_wake = None;
                        self.devices[d as usize]
                            .agent
                            .handle_timeout(control::secs(now));
                        self.step_agent(d, now);
                    } else {
                        self.kinds[Ev::STALE] += 1;
                    }
                }
                Ev::StepDone(d, step) => self.step_done(d, step, now),
                Ev::Wake(d) => {
                    if self.devices[d as usize].wake == Some(now) {
                        self.devices[d as usize].wake = None;
                        let t = self.at(now);
                        if let Some(s) = self.devices[d as usize].sched.as_mut() {
                            s.handle_timeout(t);
                        }
                        self.drive(d, now);
                    } else {
                        self.kinds[Ev::STALE] += 1;
                    }
                }
                Ev::Poke(d) => {
                    if self.devices[d as usize].poke == Some(now) {
                        self.devices[d as usize].poke = None;
                        self.drive(d, now);
                    } else {
                        self.kinds[Ev::STALE] += 1;
                    }
                }
                Ev::Have { dst, src } => self.have(dst, src, now),
                Ev::Arrive {
                    dst,
                    src,
                    index,
                    corrupt,
                } => self.arrive(dst, src, index, corrupt, now),
                Ev::Refused {
                    dst,
                    src,
                    index,
                    busy,
                } => self.refused(dst, src, index, busy, now),
                Ev::Rediscover { dst, peer } => self.rediscover(dst, peer, now),
                Ev::SiteHeard { site, index } => self.site_heard(site, index),
            }
        }
        Ok(self.finish())
    }

    /// Closes the books: per-device end states into the outcome.
    fn finish(mut self) -> Outcome {
        use meshota_protocol::UpdateState as U;
        let (mut failed, mut not_started) = (0, 0);
        for d in &self.devices {
            match d.agent.phase() {
                U::Committed | U::RolledBack => {}
                _ if !d.started => not_started += 1,
                _ => failed += 1,
            }
        }
        self.out.failed = failed;
        self.out.events_by_kind = Ev::KINDS.iter().copied().zip(self.kinds).collect();
        self.out.not_started = not_started;
        self.out.announcements_delivered = self.ctl.delivered;
        self.out.signature_checks = self.ctl.signature_checks;
        self.out
            .commit_times_s
            .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        self.out
    }
}
