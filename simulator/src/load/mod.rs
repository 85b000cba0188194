//! `meshota-sim load`: broker load from MQTT-only virtual devices.
//!
//! Each virtual device ([`device`]) logs in as a real device would (a
//! device token signed by its own key, or given credentials), subscribes
//! to its announcement and command topics, and publishes signed status
//! and events with the real telemetry types. A monitor client
//! ([`monitor`]) subscribes to every status and times its delivery. All
//! clients share one tokio runtime.
//!
//! The result ([`LoadResult`]): connect rate achieved, connect failures,
//! messages per second, and publish-to-delivery latency p50, p99 and max.

pub mod device;
pub mod monitor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshota_protocol::{FleetId, Topic};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How the virtual devices log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// username = device id, password = a device token signed by the
    /// device's key (what `meshota-broker` checks; other brokers that
    /// allow anonymous logins accept it too).
    Token,
    /// The same username and password for every client.
    Password {
        /// Username.
        username: String,
        /// Password.
        password: String,
    },
    /// No credentials.
    Anonymous,
}

/// What load to apply.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `mqtt://host[:port]`.
    pub mqtt_url: String,
    /// Virtual devices.
    pub devices: u32,
    /// Connects started per second (0: all at once).
    pub rate: f64,
    /// Whole run, from the first connect to the stop.
    pub duration: Duration,
    /// Interval between a device's statuses.
    pub status_every: Duration,
    /// Interval between a device's events (`None`: no events).
    pub event_every: Option<Duration>,
    /// Fleet of the topics (the broker's control plane ingests its own).
    pub fleet: FleetId,
    /// Device ids are `<prefix>-<index>`; the monitor is `<prefix>-monitor`.
    pub prefix: String,
    /// Login scheme.
    pub auth: Auth,
    /// Seed of the device keys.
    pub seed: u64,
    /// Give up on one connect attempt after this long.
    pub connect_timeout: Duration,
    /// After the devices stop, how long the monitor waits for stragglers.
    pub drain: Duration,
}

impl LoadConfig {
    /// A config with the defaults of the command line.
    ///
    /// # Errors
    /// [`LoadError::Id`] never (the default fleet name is valid).
    pub fn new(mqtt_url: &str, devices: u32) -> Result<Self, LoadError> {
        Ok(Self {
            mqtt_url: mqtt_url.to_string(),
            devices,
            rate: 200.0,
            duration: Duration::from_secs(60),
            status_every: Duration::from_secs(1),
            event_every: Some(Duration::from_secs(5)),
            fleet: FleetId::new("default")?,
            prefix: "load".into(),
            auth: Auth::Token,
            seed: 1,
            connect_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(2),
        })
    }
}

/// Why a load run could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The broker URL is unusable.
    #[error("--mqtt-url: {0}")]
    Url(String),
    /// A name built from the prefix or fleet is invalid.
    #[error("device or site name: {0}")]
    Id(#[from] meshota_protocol::IdError),
    /// A report could not be encoded.
    #[error("report encoding: {0}")]
    Codec(#[from] meshota_protocol::CodecError),
    /// A device token could not be signed.
    #[error("device token: {0}")]
    Token(String),
    /// The monitor could not connect or subscribe.
    #[error("monitor client: {0}")]
    Monitor(String),
    /// The runtime could not start.
    #[error("tokio runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Counters shared by every client of a run.
#[derive(Debug, Default)]
pub struct Stats {
    /// Devices connected at least once.
    pub connected: AtomicU64,
    /// Failed connect attempts (refused, errors, timeouts).
    pub connect_failures: AtomicU64,
    /// Connections lost after they were up.
    pub disconnects: AtomicU64,
    /// Statuses handed to the client.
    pub status_sent: AtomicU64,
    /// Events handed to the client.
    pub events_sent: AtomicU64,
    /// Publishes dropped because the client's queue was full.
    pub dropped: AtomicU64,
    /// PUBACKs the devices received.
    pub acked: AtomicU64,
    /// Messages the devices received on their subscriptions.
    pub announcements: AtomicU64,
    /// Statuses of this run the monitor received.
    pub status_delivered: AtomicU64,
    /// Events the monitor received.
    pub events_delivered: AtomicU64,
    /// Connection errors of the monitor.
    pub monitor_errors: AtomicU64,
    /// Per device: connect latency and time of its first ConnAck, µs.
    connects: Mutex<Vec<(u64, u64)>>,
}

impl Stats {
    fn first_connect(&self, attempt: Instant, done: Instant, start: Instant) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let entry = (
            us(done.duration_since(attempt)),
            us(done.duration_since(start)),
        );
        self.connects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }

    fn messages(&self) -> (u64, u64) {
        let sent =
            self.status_sent.load(Ordering::Relaxed) + self.events_sent.load(Ordering::Relaxed);
        let got = self.status_delivered.load(Ordering::Relaxed)
            + self.events_delivered.load(Ordering::Relaxed);
        (sent, got)
    }
}

/// What every task of a run shares.
#[derive(Debug)]
pub struct Shared {
    host: String,
    port: u16,
    auth: Auth,
    fleet: FleetId,
    prefix: String,
    seed: u64,
    /// Tags this run's statuses, to tell them from retained older ones.
    run: u64,
    start: Instant,
    status_every: Duration,
    event_every: Option<Duration>,
    connect_timeout: Duration,
    announce_topic: String,
    /// The counters.
    pub stats: Stats,
}

/// A snapshot while the run goes, about once a second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoadProgress {
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Devices connected at least once.
    pub connected: u64,
    /// Messages published so far.
    pub sent: u64,
    /// Messages the monitor received so far.
    pub delivered: u64,
}

/// The result of a load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Virtual devices.
    pub devices: u32,
    /// Devices that connected at least once.
    pub connected: u64,
    /// Failed connect attempts.
    pub connect_failures: u64,
    /// Connections lost after they were up.
    pub disconnects: u64,
    /// Connects per second achieved: connected / time of the last first
    /// connect.
    pub connect_rate: f64,
    /// Connect (TCP + CONNECT + CONNACK, token check included) latency.
    pub connect_ms_p50: Option<f64>,
    /// See [`Self::connect_ms_p50`].
    pub connect_ms_p99: Option<f64>,
    /// Statuses and events published.
    pub published: u64,
    /// Publishes dropped on a full client queue.
    pub dropped: u64,
    /// PUBACKs received by the devices.
    pub acked: u64,
    /// Statuses and events the monitor received.
    pub delivered: u64,
    /// Messages received by the devices on announce and cmd topics.
    pub announcements: u64,
    /// Published per second once every device was connected (over the
    /// whole run if that left less than a quarter of it).
    pub publish_per_s: f64,
    /// Delivered to the monitor per second, same window.
    pub deliver_per_s: f64,
    /// Publish-to-delivery latency of statuses, milliseconds.
    pub latency_ms_p50: Option<f64>,
    /// See [`Self::latency_ms_p50`].
    pub latency_ms_p99: Option<f64>,
    /// See [`Self::latency_ms_p50`].
    pub latency_ms_max: Option<f64>,
    /// Latency samples behind the percentiles.
    pub latency_samples: u64,
    /// Seconds the run took.
    pub duration_s: f64,
}

/// The `q` quantile (0..=1) of sorted microsecond samples, in ms.
pub fn quantile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i] as f64 / 1000.0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The SplitMix64 finaliser, for phases and keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs the load on a fresh multi-threaded runtime (for the binary).
///
/// # Errors
/// As [`run`].
pub fn run_blocking(
    cfg: &LoadConfig,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<LoadResult, LoadError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cfg, progress))
}

/// Runs the load: monitor first, then devices at `rate` connects per
/// second, each publishing until `duration` after the start.
///
/// # Errors
/// [`LoadError`] for a bad URL or names, or when the monitor cannot
/// connect (then the broker is unusable and nothing is measured).
pub async fn run(
    cfg: &LoadConfig,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<LoadResult, LoadError> {
    let (tls, host, port) = meshota_node::agent::mqtt::parse_url(&cfg.mqtt_url)
        .map_err(|e| LoadError::Url(e.to_string()))?;
    if tls {
        return Err(LoadError::Url("load mode speaks plain mqtt:// only".into()));
    }
    let run_id = mix(u64::from(std::process::id()) ^ unix_now() ^ cfg.seed);
    let shared = Arc::new(Shared {
        host,
        port,
        auth: cfg.auth.clone(),
        fleet: cfg.fleet.clone(),
        prefix: cfg.prefix.clone(),
        seed: cfg.seed,
        run: run_id,
        start: Instant::now(),
        status_every: cfg.status_every.max(Duration::from_millis(1)),
        event_every: cfg.event_every.map(|e| e.max(Duration::from_millis(1))),
        connect_timeout: cfg.connect_timeout,
        announce_topic: Topic::Announce {
            fleet: cfg.fleet.clone(),
            compatible: meshota_protocol::Compatible::new("sim")?,
            channel: meshota_protocol::Channel::new("stable")?,
        }
        .to_string(),
        stats: Stats::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = monitor::spawn(shared.clone(), stop_rx).await?;
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut devices = JoinSet::new();
    let pacer_shared = shared.clone();
    let (n, rate) = (cfg.devices, cfg.rate);
    let pacer = tokio::spawn(async move {
        for i in 0..n {
            if rate > 0.0 {
                let at = start + Duration::from_secs_f64(f64::from(i) / rate);
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at).await;
            }
            devices.spawn(device::run(pacer_shared.clone(), i, deadline));
        }
        devices
    });
    // Counters when the last device connected: the steady-state window.
    let mut steady: Option<(Instant, u64, u64)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
        let connected = shared.stats.connected.load(Ordering::Relaxed);
        let (sent, delivered) = shared.stats.messages();
        if steady.is_none() && connected >= u64::from(cfg.devices) {
            steady = Some((Instant::now(), sent, delivered));
        }
        progress(LoadProgress {
            elapsed_s: start.elapsed().as_secs_f64(),
            connected,
            sent,
            delivered,
        });
    }
    let end = Instant::now();
    let at_end = shared.stats.messages();
    // Devices stop at the deadline; each gets a bounded moment to send its
    // DISCONNECT, then the monitor gets the drain time for stragglers.
    if let Ok(mut set) = pacer.await {
        // A device that could not even build its reports (a bad name)
        // fails the run; one still stuck after 5 s is aborted.
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(r) = set.join_next().await {
                if let Ok(Err(e)) = r {
                    return Err(e);
                }
            }
            Ok(())
        })
        .await
        .unwrap_or(Ok(()))?;
        set.abort_all();
    }
    tokio::time::sleep(cfg.drain).await;
    let _ = stop_tx.send(true);
    let lat = monitor.await.unwrap_or_default();
    let (_, delivered_end) = shared.stats.messages();
    Ok(result(
        cfg,
        &shared,
        lat,
        steady,
        (start, end, at_end, delivered_end),
    ))
}

fn result(
    cfg: &LoadConfig,
    shared: &Shared,
    lat: Vec<u32>,
    steady: Option<(Instant, u64, u64)>,
    (start, end, (sent_end, got_end), delivered_end): (Instant, Instant, (u64, u64), u64),
) -> LoadResult {
    let st = &shared.stats;
    let mut lat: Vec<u64> = lat.into_iter().map(u64::from).collect();
    lat.sort_unstable();
    let connects = st
        .connects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut conn_lat: Vec<u64> = connects.iter().map(|c| c.0).collect();
    conn_lat.sort_unstable();
    let last_connect_s = connects.iter().map(|c| c.1).max().unwrap_or(0) as f64 / 1e6;
    let connected = st.connected.load(Ordering::Relaxed);
    // Rates over the steady state, once every device was connected; over
    // the whole run when that came too late to leave a quarter of it.
    let whole = end.saturating_duration_since(start);
    let (from, sent0, got0) = steady
        .filter(|(t, _, _)| end.saturating_duration_since(*t) * 4 >= whole)
        .unwrap_or((start, 0, 0));
    let window = end.saturating_duration_since(from).as_secs_f64();
    let per_s = |n: u64| if window > 0.0 { n as f64 / window } else { 0.0 };
    LoadResult {
        devices: cfg.devices,
        connected,
        connect_failures: st.connect_failures.load(Ordering::Relaxed),
        disconnects: st.disconnects.load(Ordering::Relaxed),
        connect_rate: if last_connect_s > 0.0 {
            connected as f64 / last_connect_s
        } else {
            0.0
        },
        connect_ms_p50: quantile_ms(&conn_lat, 0.5),
        connect_ms_p99: quantile_ms(&conn_lat, 0.99),
        published: sent_end,
        dropped: st.dropped.load(Ordering::Relaxed),
        acked: st.acked.load(Ordering::Relaxed),
        delivered: delivered_end,
        announcements: st.announcements.load(Ordering::Relaxed),
        publish_per_s: per_s(sent_end.saturating_sub(sent0)),
        // Same window as publishing; the drain after `end` only adds to
        // the `delivered` count.
        deliver_per_s: per_s(got_end.saturating_sub(got0)),
        latency_ms_p50: quantile_ms(&lat, 0.5),
        latency_ms_p99: quantile_ms(&lat, 0.99),
        latency_ms_max: lat.last().map(|v| *v as f64 / 1000.0),
        latency_samples: lat.len() as u64,
        duration_s: end.duration_since(start).as_secs_f64(),
    }
}

impl LoadResult {
    /// The result as an aligned table for the terminal.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} ms"));
        let rows = [
            ("devices", self.devices.to_string()),
            ("connected", self.connected.to_string()),
            ("connect failures", self.connect_failures.to_string()),
            ("disconnects", self.disconnects.to_string()),
            ("connect rate", format!("{:.1} /s", self.connect_rate)),
            ("connect p50", ms(self.connect_ms_p50)),
            ("connect p99", ms(self.connect_ms_p99)),
            ("published", self.published.to_string()),
            ("dropped (queue full)", self.dropped.to_string()),
            ("acked", self.acked.to_string()),
            ("delivered to monitor", self.delivered.to_string()),
            ("announce/cmd received", self.announcements.to_string()),
            ("publish rate", format!("{:.1} msg/s", self.publish_per_s)),
            ("delivery rate", format!("{:.1} msg/s", self.deliver_per_s)),
            ("latency p50", ms(self.latency_ms_p50)),
            ("latency p99", ms(self.latency_ms_p99)),
            ("latency max", ms(self.latency_ms_max)),
            ("latency samples", self.latency_samples.to_string()),
            ("duration", format!("{:.1} s", self.duration_s)),
        ];
        rows.iter()
            .map(|(k, v)| format!("{k:<22}  {v}\n"))
            .collect()
    }
}

/// Parses `500ms`, `60s`, `2m` or a bare number of seconds.
///
/// # Errors
/// A message naming the bad value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 60s, 500ms or 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn quantiles_pick_ranked_samples_and_none_when_empty() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&v, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&v, 1.0), Some(100.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }
}
