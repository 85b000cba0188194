//! The one-screen summary and `report.json` fields.

use serde::Serialize;

use crate::scenario::{kumar_ross_bound_s, Scenario};
use crate::virt::Outcome;

/// The figures of one run, next to the baseline and the bound.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Devices in the fleet.
    pub devices: u32,
    /// Devices that committed (health-confirmed).
    pub committed: u32,
    /// Devices that rolled back.
    pub rolled_back: u32,
    /// Devices that started and did not finish.
    pub failed: u32,
    /// Devices the rollout never reached, because it halted first.
    pub not_started: u32,
    /// Whether the planner halted the rollout on its error threshold.
    pub halted: bool,
    /// Bundle payload size.
    pub bundle_bytes: u64,
    /// Bytes the origin served.
    pub origin_bytes: u64,
    /// The most bytes any one site pulled over its WAN link.
    pub max_site_wan_bytes: u64,
    /// Seconds until half the fleet committed.
    pub time_to_50_s: Option<f64>,
    /// Seconds until 90% committed.
    pub time_to_90_s: Option<f64>,
    /// Seconds until every committing device committed.
    pub time_to_100_s: Option<f64>,
    /// The Kumar–Ross lower bound for one wave of the whole fleet: a
    /// transfer bound, blind to waves, soak, install and health time
    /// (`simulator/scenarios/one-wave-1000.toml` is the scenario it fits).
    pub bound_s: f64,
    /// The same scenario with peer-to-peer off: time until all committed.
    pub baseline_time_to_100_s: Option<f64>,
    /// The same scenario with peer-to-peer off: origin bytes.
    pub baseline_origin_bytes: Option<u64>,
    /// Bytes from same-site peers, other peers and the origin.
    pub bytes_same_site: u64,
    /// See [`Self::bytes_same_site`].
    pub bytes_other_peers: u64,
    /// Peers banned for serving bad data.
    pub bans: u64,
    /// True when every device not faulted on purpose committed.
    pub ok: bool,
}

/// Seconds until `share` of `devices` committed, if they did.
fn time_to(times: &[f64], devices: u32, share: f64) -> Option<f64> {
    let need = ((f64::from(devices) * share).ceil() as usize).max(1);
    times.get(need - 1).copied()
}

impl Summary {
    /// Builds the summary of a run and, if given, its baseline.
    pub fn new(s: &Scenario, run: &Outcome, baseline: Option<&Outcome>) -> Self {
        let committed = run.commit_times_s.len() as u32;
        let expected_commits = s.devices - run.rolled_back;
        Self {
            devices: s.devices,
            committed,
            rolled_back: run.rolled_back,
            failed: run.failed,
            not_started: run.not_started,
            halted: run.halted,
            bundle_bytes: s.bundle_bytes,
            origin_bytes: run.origin_bytes,
            max_site_wan_bytes: run.site_wan_in.iter().copied().max().unwrap_or(0),
            time_to_50_s: time_to(&run.commit_times_s, expected_commits, 0.5),
            time_to_90_s: time_to(&run.commit_times_s, expected_commits, 0.9),
            time_to_100_s: time_to(&run.commit_times_s, expected_commits, 1.0),
            bound_s: kumar_ross_bound_s(s),
            baseline_time_to_100_s: baseline.and_then(|b| b.commit_times_s.last().copied()),
            baseline_origin_bytes: baseline.map(|b| b.origin_bytes),
            bytes_same_site: run.bytes.same_site,
            bytes_other_peers: run.bytes.other_peers,
            bans: run.bans,
            ok: run.failed == 0 && committed == expected_commits,
        }
    }
}
