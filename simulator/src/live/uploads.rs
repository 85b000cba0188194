//! Where a live fleet's uplinks go idle: every 10 s, with
//! `RUST_LOG=meshota_sim::uploads=debug`, one line on how busy the
//! devices' uplinks were, how much of what they wrote was chunks, and
//! how many copies of each chunk the fleet holds.
//!
//! Live runs on slow links took a third longer than virtual time with
//! their steady state short of the uplinks' capacity, and neither the
//! summary nor the report said which uplinks sat idle, or why. This is
//! what showed that the fleet's copies of its largest chunks lag far
//! behind the small ones (BENCHMARKS.md, "2026-12-06 (early)").

use std::time::{Duration, Instant};

use meshota_node::p2p::NodeStats;
use meshota_protocol::Bitfield;

use super::fleet::Fleet;

/// The log's target.
pub const TARGET: &str = "meshota_sim::uploads";
/// How often a line is written.
const EVERY: Duration = Duration::from_secs(10);

/// How the devices' uplinks were used between two counter snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadSummary {
    /// Chunk bytes the devices uploaded, per second.
    pub rate_bps: f64,
    /// Devices by the share of their capped uplink used: below 25 %,
    /// 25-50 %, 50-75 %, 75-100 %, and at or above the cap (an answer
    /// counts when it is flushed, so one that straddles a window lands
    /// in the later one).
    pub by_share: [u32; 5],
    /// `Busy` answers the devices gave.
    pub busy: u64,
    /// Chunk requests the devices sent.
    pub requests: u64,
}

/// Sums up the devices' counters `cur` against `prev` (same order, same
/// length; extra entries are ignored) over `secs` seconds, for uplinks
/// capped at `cap_bps` bytes per second.
pub fn summarize(prev: &[NodeStats], cur: &[NodeStats], secs: f64, cap_bps: u64) -> UploadSummary {
    let full = (cap_bps as f64 * secs).max(1.0);
    let mut s = UploadSummary {
        rate_bps: 0.0,
        by_share: [0; 5],
        busy: 0,
        requests: 0,
    };
    let mut bytes = 0u64;
    for (p, c) in prev.iter().zip(cur) {
        // A restarted device's counters start again from zero.
        let up = c.uploaded_bytes.saturating_sub(p.uploaded_bytes);
        bytes += up;
        s.busy += c.busy.saturating_sub(p.busy);
        s.requests += c.chunk_requests_sent.saturating_sub(p.chunk_requests_sent);
        let share = up as f64 / full;
        s.by_share[((share * 4.0) as usize).min(4)] += 1;
    }
    s.rate_bps = bytes as f64 / secs.max(f64::MIN_POSITIVE);
    s
}

/// How many of `held` have each of `chunks` manifest positions.
pub fn copies(held: &[Bitfield], chunks: usize) -> Vec<u32> {
    (0..chunks)
        .map(|i| held.iter().filter(|b| b.get(i)).count() as u32)
        .collect()
}

/// Writes the line every [`EVERY`] while the target is enabled.
#[derive(Default)]
pub struct UploadLog {
    last: Option<(Instant, Vec<NodeStats>, u64)>,
}

impl UploadLog {
    /// Takes a snapshot when one is due and logs the line.
    pub fn sample(&mut self, fleet: &Fleet, now: Instant) {
        if !tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            return;
        }
        if self
            .last
            .as_ref()
            .is_some_and(|(at, ..)| now.saturating_duration_since(*at) < EVERY)
        {
            return;
        }
        let cur = fleet.node_stats();
        // Everything the devices wrote, requests and `Have` answers too.
        let wire: u64 = fleet.net.device_up_bytes().iter().sum();
        let m = &fleet.release.manifest;
        if self.last.is_none() {
            let kib: Vec<u32> = m.chunks.iter().map(|c| c.len >> 10).collect();
            tracing::debug!(target: TARGET, "chunk sizes (KiB, by position): {kib:?}");
        }
        if let Some((at, prev, wire_before)) = self.last.take() {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            let cap = fleet.s.device_upload_bps();
            let s = summarize(&prev, &cur, secs, cap);
            let copies = copies(&fleet.held(m), m.chunks.len());
            let wire_bps = wire.saturating_sub(wire_before) as f64 / secs.max(f64::MIN_POSITIVE);
            tracing::debug!(
                target: TARGET,
                "uplinks {:.2} MiB/s of chunks ({:.0} % of the capped total) in {:.2} MiB/s \
                 written; devices by share <25/50/75/100/full %: {:?}; {} busy answers, \
                 {} requests; copies by chunk: {:?}",
                s.rate_bps / 1_048_576.0,
                100.0 * s.rate_bps / (cap as f64 * cur.len().max(1) as f64),
                wire_bps / 1_048_576.0,
                s.by_share,
                s.busy,
                s.requests,
                copies,
            );
        }
        self.last = Some((now, cur, wire));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(bytes: u64) -> NodeStats {
        NodeStats {
            uploaded_bytes: bytes,
            ..NodeStats::default()
        }
    }

    #[test]
    fn devices_are_counted_by_the_share_of_their_cap_they_used() {
        let prev = vec![up(0); 5];
        // Over 10 s at 1,000 B/s: 0 %, 30 %, 60 %, 90 %, 100 %.
        let cur = vec![up(0), up(3_000), up(6_000), up(9_000), up(10_000)];
        let s = summarize(&prev, &cur, 10.0, 1_000);
        assert_eq!(s.by_share, [1, 1, 1, 1, 1]);
        assert!((s.rate_bps - 2_800.0).abs() < 1e-9);
    }

    #[test]
    fn a_restarted_device_counts_as_idle_rather_than_negative() {
        let s = summarize(&[up(50_000)], &[up(10)], 10.0, 1_000);
        assert_eq!(s.by_share, [1, 0, 0, 0, 0]);
        assert_eq!(s.rate_bps, 0.0);
    }

    #[test]
    fn copies_count_the_holders_of_each_position() {
        let mut a = Bitfield::new(3);
        a.set(0);
        a.set(2);
        let mut b = Bitfield::new(3);
        b.set(2);
        assert_eq!(copies(&[a, b], 3), vec![1, 0, 2]);
    }
}
