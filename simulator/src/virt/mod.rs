//! Virtual-time mode: a discrete-event model of the network around the
//! production chunk scheduler.
//!
//! Every device runs the real [`Scheduler`] from `meshota-node`; only the
//! network is modelled ([`net`]). Time jumps from event to event, so a
//! fleet of 100,000 devices runs in seconds and the same seed replays the
//! same run exactly.
//!
//! Not yet driven here (they land with their issues): the agent's
//! announcement handling and install state machine, and the broker's
//! rollout planner. Until then waves follow a fixed plan (each wave
//! starts when the previous one finished and its soak elapsed) and
//! install and health take fixed times.

pub mod net;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use meshota_node::sched::{
    Action, Failure, OriginDedup, PeerClass, SchedEvent, Scheduler, SchedulerConfig,
};
use meshota_protocol::{Bitfield, ByteSplit, ChunkId, ChunkRef, Manifest};
use serde::Serialize;

use crate::progress::Progress;
use crate::scenario::Scenario;
use net::{reserve, Link, Micros, UploadSlots};

const ORIGIN: u32 = u32::MAX;
/// Give up on a run that has not finished after this much virtual time.
const MAX_VIRTUAL: Micros = 7 * 24 * 3600 * 1_000_000;

/// What happened, for the summary and the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Devices that committed, with their commit times in seconds.
    pub commit_times_s: Vec<f64>,
    /// Devices that rolled back after a failed health check.
    pub rolled_back: u32,
    /// Devices that never finished (stalled downloads).
    pub failed: u32,
    /// Bytes served by the origin.
    pub origin_bytes: u64,
    /// Bytes entering each site over its WAN link.
    pub site_wan_in: Vec<u64>,
    /// Bytes by source, over all devices.
    pub bytes: ByteSplit,
    /// Start and end of each wave, seconds.
    pub waves: Vec<(f64, f64)>,
    /// Peers banned for bad data, over all devices.
    pub bans: u64,
    /// Peers dropped for slowness, over all devices.
    pub drops: u64,
    /// Requests retried, over all devices.
    pub retries: u64,
    /// Events processed (a cost measure of the run itself).
    pub events: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Fetching,
    Installing,
    Done,
}

struct Device {
    site: u32,
    peers: Vec<u32>,
    held: Bitfield,
    sched: Option<Scheduler<u32>>,
    wake: Option<Micros>,
    phase: Phase,
    malicious: bool,
    health_fails: bool,
    up: Link,
    down: Link,
    uploads: UploadSlots,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Wake(u32),
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
    Have {
        dst: u32,
        src: u32,
    },
    Installed(u32),
    WaveStart(u32),
    /// A dropped peer is found again after its cool-off, as a real node
    /// would on its next discovery round.
    Rediscover {
        dst: u32,
        peer: u32,
    },
}

/// Runs a scenario in virtual time. With `p2p` off every device fetches
/// from the origin alone: the baseline of Mender, hawkBit or RAUC over
/// HTTP. `progress` hears of every wave start and end and every device
/// that finishes (committed or rolled back), in virtual seconds.
///
/// # Errors
/// [`meshota_protocol::IdError`] only if the synthetic manifest's names
/// were invalid, which they are not; kept typed rather than panicking.
pub fn run(
    s: &Scenario,
    p2p: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, meshota_protocol::IdError> {
    Ok(Sim::new(s, p2p, manifest(s)?).run(progress))
}

/// A synthetic manifest: the scheduler only needs ids and lengths.
fn manifest(s: &Scenario) -> Result<Manifest, meshota_protocol::IdError> {
    let avg = s.chunk_avg;
    let mut chunks = Vec::new();
    let mut left = s.bundle_bytes;
    while left > 0 {
        let len = left.min(u64::from(avg)) as u32;
        let id = ChunkId::digest(&(chunks.len() as u64).to_le_bytes());
        chunks.push(ChunkRef { id, len });
        left -= u64::from(len);
    }
    Ok(Manifest {
        name: "sim".into(),
        version: meshota_protocol::semver::Version::new(1, 0, 0),
        compatible: meshota_protocol::Compatible::new("sim")?,
        payload_size: s.bundle_bytes,
        payload_hash: meshota_protocol::PayloadHash::digest(b"sim"),
        chunker: meshota_protocol::ChunkerParams {
            min: avg / 4,
            avg,
            max: avg.saturating_mul(4),
        },
        chunks,
        kind: meshota_protocol::InstallKind::Image,
        created_at: 0,
        meta: Default::default(),
    })
}

/// The SplitMix64 finaliser, for the simulator's seeded choices.
fn meshota_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Sim<'a> {
    s: &'a Scenario,
    p2p: bool,
    manifest: Manifest,
    devices: Vec<Device>,
    origin_up: Link,
    origin_slots: UploadSlots,
    origin_dedup: OriginDedup,
    /// Devices that have started fetching (or finished): what a Kademlia
    /// provider lookup would return.
    providers: Vec<u32>,
    rng: u64,
    site_up: Vec<Link>,
    site_down: Vec<Link>,
    queue: BinaryHeap<Reverse<(Micros, u64, Ev)>>,
    seq: u64,
    base: Instant,
    /// Device indices per wave, in bucket order.
    waves: Vec<Vec<u32>>,
    wave_left: Vec<usize>,
    out: Outcome,
}

impl<'a> Sim<'a> {
    fn new(s: &'a Scenario, p2p: bool, manifest: Manifest) -> Self {
        let mut rng = s.seed ^ 0x5EED;
        let mut next = || {
            rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            meshota_mix(rng)
        };
        let n = manifest.chunks.len();
        let per_site: Vec<Vec<u32>> = (0..s.sites)
            .map(|site| (0..s.devices).filter(|d| s.site_of(*d) == site).collect())
            .collect();
        let unit = |x: &mut dyn FnMut() -> u64| (x() >> 11) as f64 / (1u64 << 53) as f64;
        let devices: Vec<Device> = (0..s.devices)
            .map(|d| {
                let site = s.site_of(d);
                let mut peers = Vec::new();
                if p2p {
                    let members = &per_site[site as usize];
                    let pos = members.iter().position(|m| *m == d).unwrap_or(0);
                    let k = (s.lan_peers as usize).min(members.len().saturating_sub(1));
                    for off in 1..=k {
                        // Ring neighbours, alternating sides, so every member
                        // of a site is reachable in a few hops.
                        let step = off.div_ceil(2);
                        let j = if off % 2 == 1 {
                            (pos + step) % members.len()
                        } else {
                            (pos + members.len() - step % members.len()) % members.len()
                        };
                        if members[j] != d && !peers.contains(&members[j]) {
                            peers.push(members[j]);
                        }
                    }
                    if s.sites > 1 {
                        for _ in 0..s.wan_peers {
                            let o = (next() % u64::from(s.devices)) as u32;
                            if s.site_of(o) != site && !peers.contains(&o) {
                                peers.push(o);
                            }
                        }
                    }
                }
                Device {
                    site,
                    peers,
                    held: Bitfield::new(n),
                    sched: None,
                    wake: None,
                    phase: Phase::Waiting,
                    malicious: unit(&mut next) < s.malicious_rate,
                    health_fails: unit(&mut next) < s.health_fail_rate,
                    up: Link::new(s.device_up_bps),
                    down: Link::new(s.device_down_bps),
                    uploads: UploadSlots::default(),
                }
            })
            .collect();
        // Waves: devices in a seeded random order, cumulative shares.
        let mut order: Vec<(u64, u32)> = (0..s.devices).map(|d| (next(), d)).collect();
        order.sort_unstable();
        let mut waves = Vec::new();
        let mut taken = 0usize;
        for pct in &s.waves {
            let upto = (s.devices as usize * usize::from(*pct)).div_ceil(100);
            waves.push(
                order[taken..upto]
                    .iter()
                    .map(|(_, d)| *d)
                    .collect::<Vec<_>>(),
            );
            taken = upto;
        }
        let wave_left = waves.iter().map(Vec::len).collect();
        Self {
            s,
            p2p,
            manifest,
            devices,
            origin_up: Link::new(s.origin_up_bps),
            origin_slots: UploadSlots::default(),
            // The baseline is a plain HTTP origin: it serves every request.
            origin_dedup: OriginDedup::new(if p2p {
                Duration::from_secs(s.origin_dedup_s)
            } else {
                Duration::ZERO
            }),
            providers: Vec::new(),
            rng: s.seed ^ 0xD15C_0FE7,
            site_up: vec![Link::new(s.site_wan_bps); s.sites as usize],
            site_down: vec![Link::new(s.site_wan_bps); s.sites as usize],
            queue: BinaryHeap::new(),
            seq: 0,
            base: Instant::now(),
            waves,
            wave_left,
            out: Outcome {
                site_wan_in: vec![0; s.sites as usize],
                ..Outcome::default()
            },
        }
    }

    fn at(&self, t: Micros) -> Instant {
        self.base + Duration::from_micros(t)
    }

    fn push(&mut self, t: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn latency(&self, a: u32, b: u32) -> Micros {
        let lan = a != ORIGIN && b != ORIGIN && self.s.site_of(a) == self.s.site_of(b);
        1000 * if lan {
            self.s.lan_latency_ms
        } else {
            self.s.wan_latency_ms
        }
    }

    fn sched_config(&self, d: u32) -> SchedulerConfig {
        let chunk_time = u64::from(self.s.chunk_avg) * 1_000_000 / self.s.device_up_bps.max(1);
        SchedulerConfig {
            have_refresh: Duration::from_millis(self.s.have_refresh_ms),
            request_timeout: Duration::from_micros(
                (chunk_time * u64::from(self.s.max_uploads) * 8).max(30_000_000),
            ),
            min_rate_bps: 1024,
            site_patience: Duration::from_secs(self.s.patience_s),
            busy_backoff: Duration::from_millis(self.s.busy_backoff_ms),
            stall_timeout: Duration::from_secs(3600),
            seed: self.s.seed ^ u64::from(d).wrapping_mul(0x9E37_79B9),
            ..SchedulerConfig::default()
        }
    }

    fn run(mut self, progress: &mut dyn FnMut(Progress)) -> Outcome {
        self.push(0, Ev::WaveStart(0));
        while let Some(Reverse((now, _, ev))) = self.queue.pop() {
            if now > MAX_VIRTUAL {
                break;
            }
            self.out.events += 1;
            match ev {
                Ev::WaveStart(w) => self.start_wave(w as usize, now, progress),
                Ev::Wake(d) => {
                    if self.devices[d as usize].wake == Some(now) {
                        self.devices[d as usize].wake = None;
                        let t = self.at(now);
                        if let Some(s) = self.devices[d as usize].sched.as_mut() {
                            s.handle_timeout(t);
                        }
                        self.drive(d, now);
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
                } => {
                    let t = self.at(now);
                    let failure = if busy {
                        Failure::Busy
                    } else {
                        Failure::NotFound
                    };
                    if let Some(s) = self.devices[dst as usize].sched.as_mut() {
                        s.handle_chunk_failed(src, index as usize, failure, t);
                    }
                    self.drive(dst, now);
                }
                Ev::Installed(d) => self.installed(d, now, progress),
                Ev::Rediscover { dst, peer } => {
                    let t = self.at(now);
                    let class = if peer == ORIGIN {
                        PeerClass::Origin
                    } else if self.s.site_of(peer) == self.devices[dst as usize].site {
                        PeerClass::SameSite
                    } else {
                        PeerClass::OtherSite
                    };
                    if let Some(s) = self.devices[dst as usize].sched.as_mut() {
                        s.handle_peer_found(peer, class, t);
                    }
                    self.drive(dst, now);
                }
            }
        }
        self.out.failed = self
            .devices
            .iter()
            .filter(|d| d.phase != Phase::Done)
            .count() as u32;
        self.out
            .commit_times_s
            .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        self.out
    }

    fn start_wave(&mut self, w: usize, now: Micros, progress: &mut dyn FnMut(Progress)) {
        let Some(members) = self.waves.get(w).cloned() else {
            return;
        };
        self.out.waves.push((now as f64 / 1e6, now as f64 / 1e6));
        progress(Progress::WaveStarted {
            wave: w,
            at_s: now as f64 / 1e6,
            devices: members.len(),
        });
        if members.is_empty() {
            self.finish_wave(w, now, progress);
            return;
        }
        let t = self.at(now);
        if self.p2p {
            self.providers.extend(members.iter().copied());
        }
        for d in members {
            if self.p2p {
                self.discover(d);
            }
            let cfg = self.sched_config(d);
            let dev = &mut self.devices[d as usize];
            dev.phase = Phase::Fetching;
            let mut s = Scheduler::new(&self.manifest, &dev.held, cfg, t);
            if self.p2p {
                s.set_local_peer(d);
            }
            s.handle_peer_found(ORIGIN, PeerClass::Origin, t);
            for &p in &dev.peers {
                let class = if self.s.site_of(p) == dev.site {
                    PeerClass::SameSite
                } else {
                    PeerClass::OtherSite
                };
                s.handle_peer_found(p, class, t);
            }
            dev.sched = Some(s);
            self.drive(d, now);
        }
    }

    /// Adds providers of the manifest to `d`'s peers, as a Kademlia
    /// lookup would: a few random devices that are fetching or done.
    fn discover(&mut self, d: u32) {
        let n = self.providers.len() as u64;
        if n < 2 {
            return;
        }
        for _ in 0..self.s.wan_peers * 2 {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let pick = self.providers[(meshota_mix(self.rng) % n) as usize];
            let dev = &mut self.devices[d as usize];
            if pick != d && !dev.peers.contains(&pick) {
                dev.peers.push(pick);
            }
        }
    }

    fn finish_wave(&mut self, w: usize, now: Micros, progress: &mut dyn FnMut(Progress)) {
        if let Some(rec) = self.out.waves.get_mut(w) {
            rec.1 = now as f64 / 1e6;
        }
        progress(Progress::WaveFinished {
            wave: w,
            at_s: now as f64 / 1e6,
        });
        if w + 1 < self.waves.len() {
            let started = self.out.waves.get(w).map_or(0.0, |r| r.0);
            let soak_end = (started * 1e6) as Micros + self.s.soak_s * 1_000_000;
            self.push(now.max(soak_end), Ev::WaveStart(w as u32 + 1));
        }
    }

    fn have(&mut self, dst: u32, src: u32, now: Micros) {
        let t = self.at(now);
        let (bits, fetching) = if src == ORIGIN {
            (self.origin_dedup.advertise(&self.manifest, t), false)
        } else {
            let p = &self.devices[src as usize];
            (p.held.clone(), p.phase == Phase::Fetching)
        };
        if let Some(s) = self.devices[dst as usize].sched.as_mut() {
            s.handle_peer_have(src, &bits, t);
            s.handle_peer_fetching(src, fetching);
        }
        self.drive(dst, now);
    }

    fn arrive(&mut self, dst: u32, src: u32, index: u32, corrupt: bool, now: Micros) {
        let t = self.at(now);
        let len = u64::from(self.manifest.chunks[index as usize].len);
        let site = self.devices[dst as usize].site;
        if src == ORIGIN {
            self.out.origin_bytes += len;
        }
        if src == ORIGIN || self.devices[src as usize].site != site {
            self.out.site_wan_in[site as usize] += len;
        }
        let dev = &mut self.devices[dst as usize];
        if let Some(s) = dev.sched.as_mut() {
            if corrupt {
                s.handle_chunk_failed(
                    src,
                    index as usize,
                    Failure::Misbehaved("chunk failed BLAKE3 verification".into()),
                    t,
                );
            } else {
                dev.held.set(index as usize);
                s.handle_chunk_arrived(src, index as usize, len, t);
            }
        }
        self.drive(dst, now);
    }

    fn installed(&mut self, d: u32, now: Micros, progress: &mut dyn FnMut(Progress)) {
        let dev = &mut self.devices[d as usize];
        dev.phase = Phase::Done;
        if dev.health_fails {
            self.out.rolled_back += 1;
        } else {
            self.out.commit_times_s.push(now as f64 / 1e6);
        }
        progress(Progress::DeviceFinished {
            at_s: now as f64 / 1e6,
        });
        self.device_finished(d, now, progress);
    }

    fn device_finished(&mut self, d: u32, now: Micros, progress: &mut dyn FnMut(Progress)) {
        if let Some(w) = self.waves.iter().position(|m| m.contains(&d)) {
            self.wave_left[w] = self.wave_left[w].saturating_sub(1);
            if self.wave_left[w] == 0 {
                self.finish_wave(w, now, progress);
            }
        }
    }

    /// Executes everything device `d`'s scheduler wants now.
    fn drive(&mut self, d: u32, now: Micros) {
        let t = self.at(now);
        let mut actions = Vec::new();
        let mut complete = false;
        let mut dropped = Vec::new();
        {
            let Some(s) = self.devices[d as usize].sched.as_mut() else {
                return;
            };
            while let Some(a) = s.poll_action(t) {
                actions.push(a);
            }
            while let Some(e) = s.poll_event() {
                match e {
                    SchedEvent::Complete => complete = true,
                    SchedEvent::Dropped { peer, .. } => dropped.push(peer),
                    SchedEvent::Banned { .. } => {}
                    SchedEvent::Stalled => {}
                }
            }
        }
        let cooloff = SchedulerConfig::default().drop_cooloff.as_micros() as Micros;
        for peer in dropped {
            self.push(now + cooloff + 1, Ev::Rediscover { dst: d, peer });
        }
        for a in actions {
            match a {
                Action::QueryHave { peer } => {
                    let rtt = 2 * self.latency(d, peer);
                    self.push(now + rtt, Ev::Have { dst: d, src: peer });
                }
                Action::Request { peer, index, .. } => self.request(d, peer, index as u32, now),
                Action::Cancel { .. } => {}
            }
        }
        if complete {
            let dev = &mut self.devices[d as usize];
            if let Some(s) = dev.sched.take() {
                let st = s.stats();
                self.out.bytes.same_site += st.bytes.same_site;
                self.out.bytes.other_peers += st.bytes.other_peers;
                self.out.bytes.origin += st.bytes.origin;
                self.out.bytes.local += st.bytes.local;
                self.out.bans += st.bans;
                self.out.drops += st.drops;
                self.out.retries += st.retries;
            }
            dev.phase = Phase::Installing;
            dev.wake = None;
            let done = now + (self.s.install_s + self.s.health_s) * 1_000_000;
            self.push(done, Ev::Installed(d));
            return;
        }
        let next = self.devices[d as usize]
            .sched
            .as_ref()
            .and_then(|s| s.poll_timeout())
            .map(|i| i.saturating_duration_since(self.base).as_micros() as Micros);
        if let Some(w) = next {
            let dev = &mut self.devices[d as usize];
            if dev.wake.is_none_or(|cur| w < cur || cur <= now) {
                dev.wake = Some(w);
                self.push(w, Ev::Wake(d));
            }
        }
    }

    fn request(&mut self, dst: u32, src: u32, index: u32, now: Micros) {
        let len = u64::from(self.manifest.chunks[index as usize].len);
        let lat = self.latency(dst, src);
        let dst_site = self.devices[dst as usize].site as usize;
        if src == ORIGIN {
            let busy = !self.origin_slots.try_take(now, self.s.origin_max_uploads);
            let id = self.manifest.chunks[index as usize].id;
            if busy || !self.origin_dedup.admit(&id, self.at(now)) {
                self.push(
                    now + 2 * lat,
                    Ev::Refused {
                        dst,
                        src,
                        index,
                        busy,
                    },
                );
                return;
            }
            let (a, b) = (dst as usize, dst_site);
            let mut down = self.devices[a].down;
            let end = reserve(
                &mut [&mut self.origin_up, &mut self.site_down[b], &mut down],
                len,
                now + lat,
            );
            self.devices[a].down = down;
            self.origin_slots.hold(end);
            self.push(
                end + lat,
                Ev::Arrive {
                    dst,
                    src,
                    index,
                    corrupt: false,
                },
            );
            return;
        }
        let (si, di) = (src as usize, dst as usize);
        let has = self.devices[si].held.get(index as usize);
        let free = has && self.devices[si].uploads.try_take(now, self.s.max_uploads);
        if !free {
            self.push(
                now + 2 * lat,
                Ev::Refused {
                    dst,
                    src,
                    index,
                    busy: has,
                },
            );
            return;
        }
        let src_site = self.devices[si].site as usize;
        let mut up = self.devices[si].up;
        let mut down = self.devices[di].down;
        let end = if src_site == dst_site {
            reserve(&mut [&mut up, &mut down], len, now + lat)
        } else {
            let (su, sd) = (src_site, dst_site);
            let mut wan_up = self.site_up[su];
            let mut wan_down = self.site_down[sd];
            let end = reserve(
                &mut [&mut up, &mut wan_up, &mut wan_down, &mut down],
                len,
                now + lat,
            );
            self.site_up[su] = wan_up;
            self.site_down[sd] = wan_down;
            end
        };
        self.devices[si].up = up;
        self.devices[di].down = down;
        self.devices[si].uploads.hold(end);
        let corrupt = self.devices[si].malicious;
        self.push(
            end + lat,
            Ev::Arrive {
                dst,
                src,
                index,
                corrupt,
            },
        );
    }
}
