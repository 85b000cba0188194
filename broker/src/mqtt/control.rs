//! The control plane's MQTT client (rumqttc), used against the embedded
//! broker and an external one alike.
//!
//! It subscribes to every device status and events topic and feeds them to
//! [`crate::ingest`], and it owns the retained announcements: each one is
//! stored in the registry before it is published, re-published after every
//! (re)connect (rumqttd keeps retained messages in memory only), and
//! re-asserted whenever another client overwrites it (we subscribe to the
//! announce topics and compare bytes). A retained message on an announce
//! topic we do not own is cleared. The fleet's trust chain is owned and
//! guarded the same way. This assumes one control plane per
//! fleet: two with different announcements would keep overwriting each
//! other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshota_protocol::topics::{filters, Topic};
use meshota_protocol::{DeviceId, FleetId, ReportBody};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::ingest::{self, Outcome};
use crate::registry::{Registry, RegistryError};

/// Longest time an ingested report stays unflushed (group commit).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Where and how the control plane connects.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// MQTT client id.
    pub client_id: String,
    /// The fleet whose topics to follow.
    pub fleet: FleetId,
}

/// Why an announcement could not be published.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The topic is not an announce topic.
    #[error("{0} is not an announce or trust topic")]
    NotAnnounce(String),
    /// The topic is not a device cmd topic.
    #[error("{0} is not a device cmd topic")]
    NotCmd(String),
    /// Storing it failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The client's request queue is closed (the control plane stopped).
    #[error("MQTT client stopped: {0}")]
    Client(String),
}

/// Counters the control loop keeps for `/metrics`.
#[derive(Debug)]
pub struct ControlStats {
    /// Telemetry messages received (accepted or not).
    pub telemetry_messages: AtomicU64,
    /// Announcements re-asserted after someone overwrote them.
    pub reasserted: AtomicU64,
    /// Whether the client is connected right now.
    pub connected: AtomicBool,
    /// Per-second message counts over the last minute, for the rate.
    window: std::sync::Mutex<[(u64, u64); 60]>,
}

impl Default for ControlStats {
    fn default() -> Self {
        Self {
            telemetry_messages: AtomicU64::new(0),
            reasserted: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            window: std::sync::Mutex::new([(u64::MAX, 0); 60]),
        }
    }
}

impl ControlStats {
    /// Counts one telemetry message received at `now` (seconds).
    pub fn count_message(&self, now: u64) {
        self.telemetry_messages.fetch_add(1, Ordering::Relaxed);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut w[(now % 60) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += 1;
    }

    /// Telemetry messages per second, averaged over the 60 s before `now`.
    pub fn message_rate(&self, now: u64) -> f64 {
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let recent: u64 = w
            .iter()
            .filter(|(sec, _)| *sec <= now && now - *sec < 60)
            .map(|(_, n)| n)
            .sum();
        recent as f64 / 60.0
    }
}

/// A report the control plane accepted, for the rollout driver.
#[derive(Debug, Clone)]
pub struct AcceptedReport {
    /// The device.
    pub device: DeviceId,
    /// Its report counter.
    pub counter: u64,
    /// What it said.
    pub body: ReportBody,
}

/// A handle to publish through the control plane.
#[derive(Clone)]
pub struct ControlHandle {
    client: AsyncClient,
    registry: Arc<Registry>,
    stats: Arc<ControlStats>,
    feed: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<AcceptedReport>>>,
}

impl std::fmt::Debug for ControlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlHandle").finish_non_exhaustive()
    }
}

impl ControlHandle {
    /// Stores `payload` as the owned retained message of an announce
    /// topic, then publishes it retained. Stored first, so that a crash in
    /// between still re-publishes it on the next start.
    ///
    /// # Errors
    /// [`ControlError`].
    pub async fn announce(&self, topic: &Topic, payload: Vec<u8>) -> Result<(), ControlError> {
        if !matches!(topic, Topic::Announce { .. } | Topic::Trust { .. }) {
            return Err(ControlError::NotAnnounce(topic.to_string()));
        }
        let t = topic.to_string();
        let reg = self.registry.clone();
        let p = payload.clone();
        let t2 = t.clone();
        tokio::task::spawn_blocking(move || reg.put_announcement(&t2, &p))
            .await
            .map_err(|e| ControlError::Client(e.to_string()))??;
        self.client
            .publish(t, QoS::AtLeastOnce, true, payload)
            .await
            .map_err(|e| ControlError::Client(e.to_string()))
    }

    /// Publishes a signed command on a device's cmd topic (QoS 1, not
    /// retained: a command is for the device's current session or its
    /// queued persistent session, not for whoever subscribes later).
    ///
    /// # Errors
    /// [`ControlError::NotCmd`], or [`ControlError::Client`] when the
    /// client stopped.
    pub async fn command(&self, topic: &Topic, payload: Vec<u8>) -> Result<(), ControlError> {
        if !matches!(topic, Topic::Cmd { .. }) {
            return Err(ControlError::NotCmd(topic.to_string()));
        }
        self.client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| ControlError::Client(e.to_string()))
    }

    /// Sends every report accepted from now on to `tx` (the rollout
    /// driver). Only the first call takes effect.
    pub fn feed_reports(&self, tx: tokio::sync::mpsc::UnboundedSender<AcceptedReport>) {
        let _ = self.feed.set(tx);
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Arc<ControlStats> {
        &self.stats
    }
}

/// Creates the client; run the returned loop with [`run`].
pub fn connect(settings: &ControlSettings, registry: Arc<Registry>) -> (ControlHandle, EventLoop) {
    let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(
        crate::mqtt::embedded::MAX_PACKET,
        crate::mqtt::embedded::MAX_PACKET,
    );
    // Subscriptions are renewed on every ConnAck, so no session state is
    // needed on the broker (rumqttd would lose it on restart anyway).
    opts.set_clean_session(true);
    if let Some((u, p)) = &settings.credentials {
        opts.set_credentials(u, p);
    }
    let (client, eventloop) = AsyncClient::new(opts, 256);
    let handle = ControlHandle {
        client,
        registry,
        stats: Arc::new(ControlStats::default()),
        feed: Arc::new(std::sync::OnceLock::new()),
    };
    (handle, eventloop)
}

/// Drives the client until the task is aborted. Connection errors are
/// retried with a capped backoff; this only returns on a registry failure,
/// which the supervisor treats as fatal.
///
/// # Errors
/// A description of the registry failure.
pub async fn run(
    handle: ControlHandle,
    mut eventloop: EventLoop,
    fleet: FleetId,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(100);
    // Publishing from this task could wait on the request queue that only
    // this task drains, so publishes run as side tasks; they are aborted
    // with this one (the set is dropped).
    let mut side = tokio::task::JoinSet::new();
    let dirty = Arc::new(AtomicBool::new(false));
    let mut flusher = tokio::task::JoinSet::new();
    flusher.spawn(flush_when_dirty(handle.registry.clone(), dirty.clone()));
    let failed = Arc::new(std::sync::OnceLock::new());
    let ingest = spawn_ingest(handle.clone(), dirty.clone(), failed.clone())
        .map_err(|e| format!("could not start the ingest thread: {e}"))?;
    loop {
        if let Some(e) = failed.get() {
            return Err(format!("ingesting a report failed: {e}"));
        }
        if let Some(done) = flusher.try_join_next() {
            return Err(match done {
                Ok(Err(e)) => format!("registry flush failed: {e}"),
                _ => "registry flusher stopped".to_string(),
            });
        }
        while side.try_join_next().is_some() {}
        let event = match eventloop.poll().await {
            Ok(ev) => {
                backoff = Duration::from_millis(100);
                ev
            }
            Err(e) => {
                handle.stats.connected.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "control plane MQTT connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                handle.stats.connected.store(true, Ordering::Relaxed);
                let (h, f) = (handle.clone(), fleet.clone());
                side.spawn(async move {
                    if let Err(e) = on_connect(&h, &f).await {
                        tracing::error!(error = %e, "control plane could not (re)subscribe");
                    }
                });
            }
            Event::Incoming(Packet::Publish(p)) => {
                on_publish(
                    &handle,
                    &mut side,
                    &ingest,
                    &p.topic,
                    p.payload.to_vec(),
                    p.retain,
                )
                .await
                .map_err(|e| e.to_string())?;
            }
            _ => {}
        }
    }
}

/// Flushes the registry at most [`FLUSH_EVERY`] after it was dirtied.
async fn flush_when_dirty(registry: Arc<Registry>, dirty: Arc<AtomicBool>) -> Result<(), String> {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if dirty.swap(false, Ordering::AcqRel) {
            let reg = registry.clone();
            tokio::task::spawn_blocking(move || reg.flush())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
    }
}

async fn on_connect(handle: &ControlHandle, fleet: &FleetId) -> Result<(), ControlError> {
    let client = &handle.client;
    let sub = |f: String| async move {
        client
            .subscribe(f, QoS::AtLeastOnce)
            .await
            .map_err(|e| ControlError::Client(e.to_string()))
    };
    sub(filters::all_status(fleet)).await?;
    sub(filters::all_events(fleet)).await?;
    sub(filters::all_announce(fleet)).await?;
    sub(Topic::Trust {
        fleet: fleet.clone(),
    }
    .to_string())
    .await?;
    let reg = handle.registry.clone();
    let owned = tokio::task::spawn_blocking(move || reg.announcements())
        .await
        .map_err(|e| ControlError::Client(e.to_string()))??;
    for (topic, payload) in owned {
        client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .map_err(|e| ControlError::Client(e.to_string()))?;
    }
    Ok(())
}

/// A report waiting for the ingest thread.
struct Pending {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// Verifies and records reports, in arrival order, on a thread of its
/// own, so the MQTT loop never waits on a signature check or a registry
/// write. Awaited one at a time on a busy runtime, 1,000 simulated
/// devices' reports fell minutes behind, and the rollout planner saw a
/// wave finish up to 270 s after its last device had committed. The
/// thread stops when the sender is dropped, or on a registry failure,
/// which it leaves in `failed` for the loop to return.
fn spawn_ingest(
    handle: ControlHandle,
    dirty: Arc<AtomicBool>,
    failed: Arc<std::sync::OnceLock<String>>,
) -> std::io::Result<std::sync::mpsc::Sender<Pending>> {
    let (tx, rx) = std::sync::mpsc::channel::<Pending>();
    std::thread::Builder::new()
        .name("meshota-ingest".into())
        .spawn(move || {
            while let Ok(p) = rx.recv() {
                match ingest::ingest(
                    &handle.registry,
                    &p.topic,
                    &p.payload,
                    p.retain,
                    crate::now(),
                ) {
                    Ok(outcome) => {
                        dirty.store(true, Ordering::Release);
                        deliver(&handle, &p.topic, outcome);
                    }
                    Err(e) => {
                        let _ = failed.set(e.to_string());
                        return;
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Logs a rejected report, or hands an accepted one to the rollout driver.
fn deliver(handle: &ControlHandle, topic: &str, outcome: Outcome) {
    match outcome {
        // An unenrolled fleet behind an external broker would log every
        // report; the metrics count them either way.
        Outcome::Rejected(ingest::Rejection::Unenrolled) => {
            tracing::debug!(topic, "report from an unenrolled device rejected");
        }
        Outcome::Rejected(why) => {
            tracing::info!(topic, reason = why.as_str(), "device report rejected");
        }
        Outcome::Accepted {
            device,
            counter,
            body,
        } => {
            if let Some(feed) = handle.feed.get() {
                // The receiver only goes away when the server stops.
                let _ = feed.send(AcceptedReport {
                    device,
                    counter,
                    body: *body,
                });
            }
        }
        Outcome::Offline(_) | Outcome::Stale => {}
    }
}

async fn on_publish(
    handle: &ControlHandle,
    side: &mut tokio::task::JoinSet<()>,
    ingest: &std::sync::mpsc::Sender<Pending>,
    topic: &str,
    payload: Vec<u8>,
    retain: bool,
) -> Result<(), ControlError> {
    let reg = handle.registry.clone();
    if let Ok(Topic::Announce { .. } | Topic::Trust { .. }) = Topic::parse(topic) {
        let t = topic.to_string();
        let owned = tokio::task::spawn_blocking(move || reg.announcement(&t))
            .await
            .map_err(|e| ControlError::Client(e.to_string()))??;
        let correction = match owned {
            Some(ours) if ours != payload => Some(ours),
            None if !payload.is_empty() => Some(Vec::new()),
            _ => None,
        };
        if let Some(fix) = correction {
            tracing::warn!(
                topic,
                "announce topic overwritten by another client; re-asserting"
            );
            handle.stats.reasserted.fetch_add(1, Ordering::Relaxed);
            let client = handle.client.clone();
            let t = topic.to_string();
            side.spawn(async move {
                if let Err(e) = client.publish(t, QoS::AtLeastOnce, true, fix).await {
                    tracing::error!(error = %e, "could not re-assert an announcement");
                }
            });
        }
        return Ok(());
    }
    handle.stats.count_message(crate::now());
    ingest
        .send(Pending {
            topic: topic.to_string(),
            payload,
            retain,
        })
        .map_err(|_| ControlError::Client("the ingest thread stopped".into()))
}
