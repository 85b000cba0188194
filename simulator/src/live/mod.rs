//! Live mode: the real broker and N real device agents in one process,
//! over a shaped loopback network.
//!
//! - [`shaper`]: the network model, plugged into every device's libp2p
//!   transport through `meshota_node::p2p::ConnectionShaper`.
//! - [`backend`]: the install backend that verifies and waits.
//! - [`store`]: per-device stores over one shared copy of the bytes.
//! - [`fleet`]: keys, the bundle, the broker, and starting, crashing and
//!   restarting devices.
//! - [`drive`]: the rollout (the broker's own rollout driver), fault
//!   injection, and the [`Outcome`].
//! - [`console`]: the progress bar, the demo scenario, `report.json`.
//!
//! [`run`] is the entry point; it produces the same [`Outcome`] as the
//! virtual-time mode, so the summary and the report work on both.

pub mod backend;
pub mod console;
pub mod drive;
pub mod fleet;
pub mod shaper;
pub mod store;
mod track;
pub mod uploads;

use std::time::Duration;

use crate::scenario::Scenario;
use crate::virt::Outcome;

pub use track::Tracker;

/// Why a live run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The scenario does not fit live mode.
    #[error("live mode: {0}")]
    Scenario(String),
    /// A temporary directory or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Keys, the bundle or publishing failed.
    #[error("setting up the release: {0}")]
    Release(String),
    /// The broker did not start.
    #[error("starting the broker: {0}")]
    Broker(#[from] meshota_broker::server::ServerError),
    /// A device could not be started.
    #[error("starting device {device}: {reason}")]
    Device {
        /// The device.
        device: String,
        /// Why.
        reason: String,
    },
    /// The devices did not all log in in time.
    #[error("only {online} of {devices} devices came online within {waited:?}")]
    NotOnline {
        /// Online devices.
        online: usize,
        /// Fleet size.
        devices: u32,
        /// How long the run waited.
        waited: Duration,
    },
    /// Opening the release to the fleet failed.
    #[error("opening the rollout: {0}")]
    Rollout(String),
}

/// Something worth telling the user while a run goes on.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// Setting up: a short description of the step.
    Setup(String),
    /// A wave was opened `at_s` seconds into the rollout.
    WaveStarted {
        /// Wave number, from 0.
        wave: usize,
        /// Seconds since the rollout started.
        at_s: f64,
        /// Devices newly inside the gate.
        devices: usize,
    },
    /// Every device of a wave ended (or the run gave up on it).
    WaveFinished {
        /// Wave number, from 0.
        wave: usize,
        /// Seconds since the rollout started.
        at_s: f64,
        /// Bytes into all sites over their WANs so far, so a reader can
        /// tell which wave paid for the imports.
        wan_in: u64,
        /// The most any one site has imported so far.
        max_site_wan_in: u64,
        /// Chunk bytes the origin has served so far.
        origin_bytes: u64,
    },
    /// Fleet-wide counts, about every 200 ms.
    Progress {
        /// Devices committed.
        committed: u32,
        /// Devices rolled back.
        rolled_back: u32,
        /// Devices failed.
        failed: u32,
        /// Payload bytes fetched so far over the fleet (all sources).
        fetched: u64,
        /// Seconds since the rollout started.
        at_s: f64,
    },
    /// A fault was injected.
    Fault(String),
}

/// What a live run measured, beyond the shared [`Outcome`].
#[derive(Debug, Clone)]
pub struct LiveRun {
    /// The figures every mode reports.
    pub outcome: Outcome,
    /// Bytes of the signed bundle file (chunks in stored, compressed form).
    pub bundle_file_bytes: u64,
    /// Chunk bytes of the release in stored form (what one full copy from
    /// the origin costs).
    pub release_stored_bytes: u64,
    /// Wire bytes devices read from the origin (protocol overhead included).
    pub origin_wire_bytes: u64,
    /// Bytes that left each site over its WAN uplink.
    pub site_wan_out: Vec<u64>,
    /// Agent restarts injected (crashes and churn).
    pub restarts: u32,
    /// Wall-clock seconds of the whole run, setup included.
    pub wall_s: f64,
    /// Seconds of setup before the rollout started.
    pub setup_s: f64,
    /// What each device did, by device index: which devices pulled a
    /// site's WAN bytes is what a tuning run asks first.
    pub devices: Vec<DeviceFigures>,
    /// What the origin seeder answered.
    pub origin: OriginFigures,
}

/// What the origin seeder answered in a live run: on a slow origin link,
/// whether its uplink carried chunks or everything else.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OriginFigures {
    /// Chunk answers flushed.
    pub chunks: u64,
    /// Their bytes (stored form).
    pub chunk_bytes: u64,
    /// Manifests sent.
    pub manifests: u64,
    /// `Busy` answers (upload limit).
    pub busy: u64,
    /// `NotFound` answers, mostly chunks withheld after serving them.
    pub not_found: u64,
    /// Chunk uploads that failed, after which the chunk was offered again.
    pub released: u64,
    /// Refusals of a withheld chunk that named the device that got it.
    pub hints: u64,
}

/// One device's figures in a live run; times in seconds from the start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceFigures {
    /// Its site.
    pub site: u32,
    /// When its first fetch began.
    pub started_s: Option<f64>,
    /// When it committed.
    pub committed_s: Option<f64>,
    /// Fetch attempts (more than one after a crash or a retry).
    pub fetches: u32,
    /// Bytes from same-site peers.
    pub same_site: u64,
    /// Bytes from peers on other sites.
    pub other_peers: u64,
    /// Bytes from the origin.
    pub origin: u64,
    /// Wire bytes it read over its site's WAN link, protocol and waste
    /// included.
    pub wan_in: u64,
    /// Of `wan_in`, wire bytes read from the origin (chunks, `Have`
    /// answers, the DHT).
    pub origin_wan_in: u64,
    /// Connections it had with the origin (each a handshake and identify).
    pub origin_conns: u64,
    /// Provider queries its node started (see
    /// `NodeStats::provider_lookups`), since its last restart.
    pub lookups: u64,
    /// Of `lookups`, those under the release's key (the rest were under
    /// its site's): the ones that find peers of other sites.
    pub release_lookups: u64,
    /// Connections it had with devices of other sites, either end
    /// dialling.
    pub far_conns: u64,
    /// Chunk bytes it received and could not use (already held, or the
    /// download had ended), from any source; since its last restart.
    pub unused: u64,
    /// Chunk bytes it served to peers, since its last restart: against
    /// its uplink and the run's length, how busy its upload was.
    pub uploaded: u64,
    /// `Busy` answers it gave (its upload slots all taken, or, under an
    /// upload cap, its queue too long), since its last restart.
    pub busy: u64,
    /// `Have` answers it received from devices of other sites
    /// (`NodeStats::far_have_received`), since its last restart.
    pub far_have_received: u64,
    /// `Have` requests it answered for devices of other sites
    /// (`NodeStats::far_have_answered`), since its last restart.
    pub far_have_answered: u64,
    /// Holders an origin named that it dialled (or asked again), since
    /// its last restart.
    pub hints_followed: u64,
}

/// Runs scenario `s` live, telling `progress` what happens.
///
/// # Errors
/// [`LiveError`] when the fleet cannot be set up; devices that do not
/// finish are reported in the outcome as failed, not as an error.
pub fn run(s: &Scenario, progress: impl FnMut(LiveEvent) + Send) -> Result<LiveRun, LiveError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| LiveError::Io {
            what: "starting the async runtime".into(),
            source,
        })?;
    rt.block_on(drive::run(s, progress))
}
