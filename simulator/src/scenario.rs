//! Scenarios: the fleet, its network and its faults, from flags or TOML.

use std::time::Duration;

use meshota_node::sched::SchedulerConfig;
use serde::{Deserialize, Serialize};

/// Bytes per second in one mebibit per second.
const MBIT: u64 = 1_000_000 / 8;

/// One simulated situation. Every field has a default, so a TOML file
/// names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Devices in the fleet.
    pub devices: u32,
    /// Sites; devices are spread evenly over them.
    pub sites: u32,
    /// Bundle payload size in bytes.
    pub bundle_bytes: u64,
    /// Average chunk size in bytes (min is a quarter, max four times).
    pub chunk_avg: u32,
    /// Origin upload rate, bytes per second.
    pub origin_up_bps: u64,
    /// Device upload rate, bytes per second.
    pub device_up_bps: u64,
    /// Device download rate, bytes per second.
    pub device_down_bps: u64,
    /// Each site's WAN uplink and downlink, bytes per second (shared by
    /// all devices of the site).
    pub site_wan_bps: u64,
    /// One-way latency between devices of one site, milliseconds.
    pub lan_latency_ms: u64,
    /// One-way latency across sites and to the origin, milliseconds.
    pub wan_latency_ms: u64,
    /// Same-site neighbours each device knows from the start (ring
    /// neighbours), and again as many site providers it finds by mDNS
    /// when it starts fetching (a bounded mesh, not the whole site).
    pub lan_peers: u32,
    /// Other-site peers each device knows.
    pub wan_peers: u32,
    /// Concurrent uploads a device serves before answering `Busy`. A
    /// real node serves 32 (`P2pConfig::max_concurrent_uploads`). The
    /// default here is 4 because the virtual mode's first-in-first-out
    /// links queue transfers deeper with more (10,000 devices took 220 s
    /// with 4 and 1,126 s with 16, BENCHMARKS.md). On slow downlinks a
    /// live run wants more: `throttled-1000.toml` sets 16.
    pub max_uploads: u32,
    /// Each device's upload cap (the node's `p2p.max_upload_bps`) in
    /// percent of `device_up_bps`; 0 for none. A cap just under the
    /// uplink paces a device's uploads: it hands its link one chunk at a
    /// time, each at the full rate, instead of its upload slots sharing
    /// the link side by side. Each chunk then lands, and can be passed
    /// on, up to `max_uploads` times sooner, which matters most on slow
    /// uplinks.
    pub upload_cap_pct: u32,
    /// Each device's download cap (the node's `p2p.max_download_bps`) in
    /// percent of `device_down_bps`; 0 for none (the default). Under a
    /// cap a device also keeps only a few seconds of it in requests out
    /// at once (`SchedulerConfig::max_in_flight_bytes`), so on a slow
    /// downlink its requests do not hold uploaders' slots for minutes.
    pub download_cap_pct: u32,
    /// The origin seeder's upload cap (the broker's `p2p_max_upload_bps`)
    /// in percent of `origin_up_bps`; 0 for none (the default). Capped,
    /// the seeder sends its chunk answers one after another at the cap
    /// and answers `Busy` past a 1.5 s queue, as a capped device does.
    pub origin_upload_cap_pct: u32,
    /// Concurrent uploads the origin serves.
    pub origin_max_uploads: u32,
    /// Seconds the origin withholds a chunk it has just served, so the
    /// fleet takes it from that copy (0 turns this off).
    pub origin_dedup_s: u64,
    /// Cumulative wave shares in percent, e.g. `[1, 10, 50, 100]`.
    pub waves: Vec<u8>,
    /// Minimum time a wave holds before the next starts, seconds (the
    /// planner's `soak_secs`).
    pub soak_s: u64,
    /// Once a wave has fetched, the next wave's devices download the
    /// release while it installs and soaks (the planner's `prefetch`), so
    /// that wave only installs when it opens.
    pub prefetch: bool,
    /// Percent of a wave that must commit before the next starts (the
    /// planner's `success_threshold_pct`).
    pub success_threshold_pct: u8,
    /// Percent of a wave failing or rolling back that halts the rollout
    /// (the planner's `error_threshold_pct`).
    pub error_threshold_pct: u8,
    /// Seconds to write the inactive slot.
    pub install_s: u64,
    /// Seconds for the health check after activation.
    pub health_s: u64,
    /// Share of devices whose health check fails (they roll back).
    pub health_fail_rate: f64,
    /// Share of devices that serve corrupted chunks.
    pub malicious_rate: f64,
    /// Seconds a device waits for a chunk's site or fleet home to pull it
    /// before pulling it itself (the scheduler's `site_patience`).
    pub patience_s: u64,
    /// Seconds without gaining a chunk after which a device pulls over
    /// the WAN a chunk its site is heard to hold (the scheduler's
    /// `site_hold_patience`). 0: word of what the site holds is ignored.
    pub site_hold_patience_s: u64,
    /// Seconds a neighbour's claim to be importing a chunk holds a device
    /// back from importing it too (live mode; the scheduler's
    /// `claim_patience`). Virtual time does not model claims.
    pub claim_patience_s: u64,
    /// Milliseconds a device announces a WAN pull it steps in for to its
    /// site neighbours and listens for theirs before making it (live
    /// mode; the node's `p2p.claim_check_ms`). 0 (the default): it pulls
    /// at once. Virtual time does not model claims.
    pub claim_check_ms: u64,
    /// Milliseconds between `Have` refreshes of a peer (the node's
    /// `p2p.have_refresh_ms`). In virtual time
    /// peers push each stored chunk instead of being polled, and a device
    /// acts on pushed news at the latest a quarter of this later (at once
    /// when it has nothing in flight), as the node re-asks busy peers.
    pub have_refresh_ms: u64,
    /// Longest a device leaves a neighbour that gains nothing un-asked,
    /// in milliseconds (live mode; the node's `p2p.have_refresh_max_ms`). At
    /// or below `have_refresh_ms`: every neighbour is asked every
    /// `have_refresh_ms`.
    pub have_refresh_max_ms: u64,
    /// Milliseconds between `Have` refreshes of a peer of another site
    /// (live mode; the node's `p2p.far_have_refresh_ms`, 5 s by default). Each
    /// round trip crosses the site's WAN, where on slow links it is most
    /// of what is not chunks.
    pub far_have_refresh_ms: u64,
    /// Milliseconds of the first back-off after a `Busy` answer; at
    /// least 1.
    pub busy_backoff_ms: u64,
    /// Share of devices that crash once in the middle of their download
    /// and restart from their store (live mode).
    pub crash_rate: f64,
    /// Share of devices that go offline once, at a random moment of their
    /// wave, and come back after `churn_offline_s` (live mode).
    pub churn_rate: f64,
    /// Seconds a churned device stays offline.
    pub churn_offline_s: u64,
    /// Live mode gives up on devices not finished after this many seconds
    /// of rollout (they count as failed).
    pub live_timeout_s: u64,
    /// Live mode: devices talk to each other over loopback TCP instead of
    /// libp2p's in-process memory transport. Each connection then costs
    /// two file descriptors, which limits a run to a few hundred devices.
    pub live_tcp: bool,
    /// Seed for every random choice; the same seed replays the same run.
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            devices: 100,
            sites: 5,
            bundle_bytes: 32 * 1024 * 1024,
            chunk_avg: 256 * 1024,
            origin_up_bps: 100 * MBIT,
            device_up_bps: 20 * MBIT,
            device_down_bps: 100 * MBIT,
            site_wan_bps: 50 * MBIT,
            lan_latency_ms: 1,
            wan_latency_ms: 30,
            lan_peers: 32,
            wan_peers: 2,
            max_uploads: 4,
            upload_cap_pct: 0,
            download_cap_pct: 0,
            origin_upload_cap_pct: 0,
            origin_max_uploads: 64,
            origin_dedup_s: 30,
            waves: vec![10, 50, 100],
            soak_s: 10,
            prefetch: false,
            success_threshold_pct: 95,
            error_threshold_pct: 5,
            install_s: 5,
            health_s: 2,
            health_fail_rate: 0.0,
            malicious_rate: 0.0,
            patience_s: 8,
            site_hold_patience_s: 30,
            claim_patience_s: 60,
            claim_check_ms: 0,
            have_refresh_ms: 1000,
            have_refresh_max_ms: 4000,
            far_have_refresh_ms: 5000,
            busy_backoff_ms: 250,
            crash_rate: 0.0,
            churn_rate: 0.0,
            churn_offline_s: 5,
            live_timeout_s: 900,
            live_tcp: false,
            seed: 1,
        }
    }
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A field is out of range.
    #[error("scenario field `{field}` {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and what to use instead.
        problem: String,
    },
    /// The TOML file could not be parsed.
    #[error("scenario file: {0}")]
    Toml(#[from] toml::de::Error),
}

impl Scenario {
    /// Parses a TOML scenario.
    ///
    /// # Errors
    /// [`ScenarioError`] for bad TOML or out-of-range values.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Checks every field is usable.
    ///
    /// # Errors
    /// [`ScenarioError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |field, problem: &str| {
            Err(ScenarioError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        if self.devices == 0 {
            return bad("devices", "must be at least 1");
        }
        if self.sites == 0 || self.sites > self.devices {
            return bad("sites", "must be between 1 and the number of devices");
        }
        if self.bundle_bytes == 0 {
            return bad("bundle_bytes", "must be at least 1");
        }
        if !(1024..=4 * 1024 * 1024).contains(&self.chunk_avg) {
            return bad("chunk_avg", "must be between 1024 and 4194304 bytes");
        }
        for (field, v) in [
            ("origin_up_bps", self.origin_up_bps),
            ("device_up_bps", self.device_up_bps),
            ("device_down_bps", self.device_down_bps),
            ("site_wan_bps", self.site_wan_bps),
        ] {
            if v == 0 {
                return bad(field, "must be above 0 bytes per second");
            }
        }
        for (field, v) in [
            ("have_refresh_ms", self.have_refresh_ms),
            ("far_have_refresh_ms", self.far_have_refresh_ms),
        ] {
            if v < 100 {
                return bad(field, "must be at least 100 milliseconds");
            }
        }
        if self.waves.is_empty()
            || self.waves.windows(2).any(|w| w[0] >= w[1])
            || self.waves.last() != Some(&100)
        {
            return bad(
                "waves",
                "must be strictly increasing percentages ending at 100, e.g. [10, 50, 100]",
            );
        }
        for (field, v) in [
            ("health_fail_rate", self.health_fail_rate),
            ("malicious_rate", self.malicious_rate),
            ("crash_rate", self.crash_rate),
            ("churn_rate", self.churn_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(field, "must be a share between 0.0 and 1.0");
            }
        }
        for (field, v) in [
            ("success_threshold_pct", self.success_threshold_pct),
            ("error_threshold_pct", self.error_threshold_pct),
        ] {
            if !(1..=100).contains(&v) {
                return bad(field, "must be a percent between 1 and 100");
            }
        }
        for (field, v) in [
            ("upload_cap_pct", self.upload_cap_pct),
            ("download_cap_pct", self.download_cap_pct),
            ("origin_upload_cap_pct", self.origin_upload_cap_pct),
        ] {
            if v > 100 {
                return bad(
                    field,
                    "must be a percent of the link between 0 (no cap) and 100",
                );
            }
        }
        if self.max_uploads == 0 || self.origin_max_uploads == 0 {
            return bad("max_uploads", "upload slots must be at least 1");
        }
        if self.busy_backoff_ms == 0 {
            return bad(
                "busy_backoff_ms",
                "must be at least 1: without a back-off a device asks a busy peer again at once",
            );
        }
        Ok(())
    }

    /// Site of device `d`.
    pub fn site_of(&self, d: u32) -> u32 {
        d % self.sites
    }

    /// The upload cap each device configures, bytes per second.
    pub fn device_upload_cap_bps(&self) -> Option<u64> {
        share(self.device_up_bps, self.upload_cap_pct)
    }

    /// The download cap each device configures, bytes per second.
    pub fn device_download_cap_bps(&self) -> Option<u64> {
        share(self.device_down_bps, self.download_cap_pct)
    }

    /// The rate a device's downloads can reach: its downlink, or its cap.
    pub fn device_download_bps(&self) -> u64 {
        self.device_download_cap_bps()
            .map_or(self.device_down_bps, |c| c.min(self.device_down_bps))
    }

    /// The upload cap the origin seeder configures, bytes per second.
    pub fn origin_upload_cap_bps(&self) -> Option<u64> {
        share(self.origin_up_bps, self.origin_upload_cap_pct)
    }

    /// The rate a device's uploads can reach: its uplink, or its cap.
    pub fn device_upload_bps(&self) -> u64 {
        self.device_upload_cap_bps()
            .map_or(self.device_up_bps, |c| c.min(self.device_up_bps))
    }

    /// The chunk scheduler of device `d`, tuned to the scenario's rates.
    /// Live and virtual runs use the same, so they run the same policy.
    pub fn scheduler_config(&self, d: u32) -> SchedulerConfig {
        let chunk_time = u64::from(self.chunk_avg) * 1_000_000 / self.device_up_bps.max(1);
        let request_timeout =
            Duration::from_micros((chunk_time * u64::from(self.max_uploads) * 8).max(30_000_000));
        SchedulerConfig {
            have_refresh: Duration::from_millis(self.have_refresh_ms),
            have_refresh_max: Duration::from_millis(self.have_refresh_max_ms),
            far_have_refresh: Duration::from_millis(self.far_have_refresh_ms),
            request_timeout,
            // The defaults' ratio (2.5 s of 10 s).
            endgame_after: request_timeout / 4,
            min_rate_bps: 1024,
            max_in_flight_bytes: SchedulerConfig::in_flight_for_rate(
                self.device_download_cap_bps(),
            ),
            site_patience: Duration::from_secs(self.patience_s),
            site_hold_patience: Duration::from_secs(self.site_hold_patience_s),
            claim_patience: Duration::from_secs(self.claim_patience_s),
            claim_check: Duration::from_millis(self.claim_check_ms),
            busy_backoff: Duration::from_millis(self.busy_backoff_ms),
            stall_timeout: Duration::from_secs(3600),
            seed: self.seed ^ u64::from(d).wrapping_mul(0x9E37_79B9),
            ..SchedulerConfig::default()
        }
    }
}

/// `pct` percent of `bps` (at least 1), or `None` for 0: a cap.
fn share(bps: u64, pct: u32) -> Option<u64> {
    (pct > 0).then(|| (bps * u64::from(pct) / 100).max(1))
}

/// The Kumar–Ross lower bound on the time to give `n` devices a file of
/// `f` bytes: `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))`. Site uplinks are
/// not part of the bound; it is the best any scheme could do with these
/// device and origin capacities.
pub fn kumar_ross_bound_s(s: &Scenario) -> f64 {
    let f = s.bundle_bytes as f64;
    let n = f64::from(s.devices);
    let us = s.origin_up_bps as f64;
    let sum_u = n * s.device_up_bps as f64;
    let d_min = s.device_down_bps as f64;
    (f / us).max(f / d_min).max(n * f / (us + sum_u))
}

/// The client–server time with no peer upload: `max(N·F/u_s, F/d_min)`.
pub fn client_server_bound_s(s: &Scenario) -> f64 {
    let f = s.bundle_bytes as f64;
    (f64::from(s.devices) * f / s.origin_up_bps as f64).max(f / s.device_down_bps as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_scenario_is_valid_and_round_trips_through_toml() {
        let s = Scenario::default();
        s.validate().unwrap();
        let text = toml::to_string(&s).unwrap();
        assert_eq!(Scenario::from_toml(&text).unwrap(), s);
    }

    #[test]
    fn the_documented_example_scenario_parses_to_the_live_goal() {
        let s = example(include_str!("../scenarios/live-1000.toml"));
        assert_eq!((s.devices, s.sites, s.bundle_bytes), (1000, 20, 16 << 20));
        // The commented-out lines state the defaults; keep them true.
        let d = Scenario::default();
        assert_eq!(
            (
                d.origin_up_bps,
                d.device_up_bps,
                d.device_down_bps,
                d.site_wan_bps
            ),
            (12_500_000, 2_500_000, 12_500_000, 6_250_000)
        );
        assert_eq!(
            (d.chunk_avg, d.waves.clone(), d.soak_s),
            (262_144, vec![10, 50, 100], 10)
        );
    }

    /// A scenario file from `simulator/scenarios/`, parsed and valid.
    fn example(text: &str) -> Scenario {
        let s = Scenario::from_toml(text).unwrap();
        s.validate().unwrap();
        s
    }

    #[test]
    fn the_one_wave_example_is_the_scenario_the_bound_describes() {
        let s = example(include_str!("../scenarios/one-wave-1000.toml"));
        assert_eq!((s.devices, s.sites, s.bundle_bytes), (1000, 20, 16 << 20));
        assert_eq!(
            (s.waves.clone(), s.install_s, s.health_s),
            (vec![100], 0, 0)
        );
        // Its comment prices the staged plan at 3 × (5 + 2) + 2 × 10 s.
        let d = Scenario::default();
        assert_eq!((d.install_s, d.health_s, d.soak_s), (5, 2, 10));
    }

    #[test]
    fn the_slow_uplink_example_parses_with_the_rates_its_comment_names() {
        let s = example(include_str!("../scenarios/slow-uplink-30.toml"));
        assert_eq!((s.devices, s.sites, s.bundle_bytes), (30, 3, 4 << 20));
        assert_eq!((s.device_up_bps, s.device_down_bps), (125_000, 1_250_000));
        // Its comment quotes the bound.
        let bound = kumar_ross_bound_s(&s);
        assert!((bound - 25.2).abs() < 0.05, "{bound}");
    }

    #[test]
    fn the_cellular_example_parses_with_the_bound_its_comment_names() {
        let s = example(include_str!("../scenarios/cellular-1000.toml"));
        assert_eq!((s.devices, s.sites, s.bundle_bytes), (1000, 20, 16 << 20));
        assert_eq!((s.upload_cap_pct, s.origin_dedup_s), (95, 300));
        let bound = kumar_ross_bound_s(&s);
        assert!((bound - 263.2).abs() < 0.05, "{bound}");
    }

    #[test]
    fn the_throttled_example_parses_with_the_bound_its_comment_names() {
        let s = example(include_str!("../scenarios/throttled-1000.toml"));
        assert_eq!((s.devices, s.sites, s.bundle_bytes), (1000, 20, 16 << 20));
        assert_eq!(s.device_download_cap_bps(), Some(59_375));
        assert_eq!((s.max_uploads, s.claim_check_ms), (16, 1000));
        assert_eq!(
            (
                s.have_refresh_ms,
                s.have_refresh_max_ms,
                s.far_have_refresh_ms
            ),
            (8000, 32000, 60000)
        );
        let bound = kumar_ross_bound_s(&s);
        assert!((bound - 268.4).abs() < 0.05, "{bound}");
    }

    #[test]
    fn the_virtual_100k_example_is_the_goal_s_fleet() {
        let s = example(include_str!("../scenarios/virtual-100k.toml"));
        assert_eq!(
            (s.devices, s.sites, s.bundle_bytes, s.chunk_avg),
            (100_000, 100, 16 << 20, 1 << 20)
        );
        assert_eq!(s.waves, vec![1, 10, 50, 100]);
    }

    #[test]
    fn bad_fields_are_named() {
        let err = Scenario::from_toml("waves = [50, 10, 100]").unwrap_err();
        assert!(err.to_string().contains("waves"), "{err}");
        let err = Scenario::from_toml("devices = 0").unwrap_err();
        assert!(err.to_string().contains("devices"), "{err}");
        assert!(Scenario::from_toml("no_such_field = 1").is_err());
        let err = Scenario::from_toml("upload_cap_pct = 120").unwrap_err();
        assert!(err.to_string().contains("upload_cap_pct"), "{err}");
        let err = Scenario::from_toml("origin_upload_cap_pct = 101").unwrap_err();
        assert!(err.to_string().contains("origin_upload_cap_pct"), "{err}");
        let err = Scenario::from_toml("far_have_refresh_ms = 0").unwrap_err();
        assert!(err.to_string().contains("far_have_refresh_ms"), "{err}");
        let err = Scenario::from_toml("busy_backoff_ms = 0").unwrap_err();
        assert!(err.to_string().contains("busy_backoff_ms"), "{err}");
    }

    #[test]
    fn an_upload_cap_is_a_share_of_the_uplink_and_none_by_default() {
        let d = Scenario::default();
        assert_eq!(d.device_upload_cap_bps(), None);
        assert_eq!(d.device_upload_bps(), d.device_up_bps);
        let s = Scenario::from_toml("device_up_bps = 250000\nupload_cap_pct = 95").unwrap();
        assert_eq!(s.device_upload_cap_bps(), Some(237_500));
        assert_eq!(s.device_upload_bps(), 237_500);
        assert_eq!(d.origin_upload_cap_bps(), None);
        let o = Scenario::from_toml("origin_up_bps = 62500\norigin_upload_cap_pct = 95").unwrap();
        assert_eq!(o.origin_upload_cap_bps(), Some(59_375));
        // The bound is the links' capacity, whatever the devices cap.
        assert_eq!(
            kumar_ross_bound_s(&s),
            kumar_ross_bound_s(&Scenario {
                upload_cap_pct: 0,
                ..s.clone()
            })
        );
    }

    #[test]
    fn a_download_cap_is_a_share_of_the_downlink_and_sizes_the_devices_request_budget() {
        let d = Scenario::default();
        assert_eq!(d.device_download_cap_bps(), None);
        assert_eq!(d.scheduler_config(0).max_in_flight_bytes, u64::MAX);
        let s = Scenario::from_toml("device_down_bps = 62500\ndownload_cap_pct = 95").unwrap();
        assert_eq!(s.device_download_cap_bps(), Some(59_375));
        assert_eq!(s.device_download_bps(), 59_375);
        assert_eq!(
            s.scheduler_config(0).max_in_flight_bytes,
            59_375 * meshota_node::sched::IN_FLIGHT_SECS
        );
        let err = Scenario::from_toml("download_cap_pct = 101").unwrap_err();
        assert!(err.to_string().contains("download_cap_pct"), "{err}");
    }

    #[test]
    fn the_bound_is_the_largest_of_its_three_terms() {
        let s = Scenario {
            devices: 1000,
            bundle_bytes: 1_000_000,
            origin_up_bps: 1_000_000,
            device_up_bps: 100_000,
            device_down_bps: 10_000_000,
            ..Scenario::default()
        };
        // N·F/(u_s+Σu_i) = 1e9 / (1e6 + 1e8) ≈ 9.9 s dominates F/u_s = 1 s.
        let b = kumar_ross_bound_s(&s);
        assert!((b - 1e9 / 101e6).abs() < 1e-9, "{b}");
        assert!((client_server_bound_s(&s) - 1000.0).abs() < 1e-9);
    }
}
