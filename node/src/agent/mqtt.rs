//! The MQTT driver: connects the agent to the broker.
//!
//! - rumqttc with a persistent session (`clean_session = false`) and QoS 1
//!   for subscriptions and reports;
//! - subscribes the announce topics of the device's class and channels
//!   (retained, so a (re)connect delivers the current announcement) and
//!   its cmd topic;
//! - every report is signed with the device key and the next report
//!   counter, written to the durable [`Outbox`], published, and removed on
//!   the broker's PUBACK; whatever is left is sent again on the next start;
//! - the last will is a signed status with `online: false` on the retained
//!   status topic. Its counter is reserved [`WILL_WINDOW`] above the
//!   current one, so it outranks every report of the session and a
//!   restart continues above it;
//! - reconnects back off exponentially with jitter, up to a minute.
//!
//! The agent itself runs on its own thread through the synchronous
//! [`LocalDriver`] (installs and health checks block for minutes); this
//! task only moves bytes between it and the broker. Fetching goes through
//! the [`Fetcher`] seam, where the p2p layer plugs in.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use meshota_protocol::{
    codec, Channel, Compatible, DeviceId, FleetId, Report, ReportBody, SecretKey, SignedReport,
    Status, Topic,
};
use rumqttc::{
    AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use tokio::sync::mpsc;

use super::driver::{
    Clock, DriverError, DriverParts, Fetcher, LocalDriver, Reporter, RunOutcome, SystemClock,
};
use super::outbox::{Outbox, Queued, QueuedKind, ReportCounter};
use crate::config::{ensure_device_key, Config, ConfigError};
use crate::install::{proc, InstallError};
use crate::store::Store;

/// Counter values between a session's reports and its last will.
pub const WILL_WINDOW: u64 = 1_000_000;

const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration, trust root or device key is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The agent's state could not be loaded or written.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The outbox or counter could not be written.
    #[error("telemetry queue: {0}")]
    Queue(#[from] InstallError),
    /// A report could not be encoded.
    #[error("report encoding: {0}")]
    Codec(#[from] meshota_protocol::CodecError),
    /// The broker URL is unusable.
    #[error("mqtt.url: {0}")]
    Url(String),
    /// The agent thread stopped.
    #[error("the agent thread stopped: {0}")]
    Agent(String),
}

/// Splits `mqtt[s]://host[:port]` into TLS flag, host and port.
///
/// # Errors
/// [`DaemonError::Url`].
pub fn parse_url(url: &str) -> Result<(bool, String, u16), DaemonError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| DaemonError::Url(format!("{url:?} has no scheme")))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        s => return Err(DaemonError::Url(format!("unknown scheme {s:?}"))),
    };
    let hostport = rest.trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| DaemonError::Url(format!("bad port in {url:?}")))?,
        ),
        None => (hostport, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(DaemonError::Url(format!("no host in {url:?}")));
    }
    Ok((tls, host.to_string(), port))
}

/// Signs reports and queues them durably.
struct Signer {
    key: SecretKey,
    device: DeviceId,
    counter: ReportCounter,
    outbox: Outbox,
}

impl Signer {
    fn sign(&mut self, body: ReportBody, now: u64) -> Result<Queued, DaemonError> {
        let q = self.sign_unqueued(body, now)?;
        self.outbox.push(q.seq, q.kind, &q.bytes)?;
        Ok(q)
    }

    /// [`Self::sign`] with the durable write (a file, two fsyncs and a
    /// directory listing) on the blocking pool. On the runtime's own
    /// threads it held up every task sharing them: the p2p loop on a
    /// device with a slow SD card, and in the simulator a thousand
    /// devices on two threads.
    async fn sign_queued(&mut self, body: ReportBody, now: u64) -> Result<Queued, DaemonError> {
        let q = self.sign_unqueued(body, now)?;
        let (outbox, seq, kind, bytes) = (self.outbox.clone(), q.seq, q.kind, q.bytes.clone());
        tokio::task::spawn_blocking(move || outbox.push(seq, kind, &bytes))
            .await
            .map_err(|e| DaemonError::Agent(format!("queueing a report: {e}")))??;
        Ok(q)
    }

    fn sign_unqueued(&mut self, body: ReportBody, now: u64) -> Result<Queued, DaemonError> {
        let kind = match body {
            ReportBody::Status(_) => QueuedKind::Status,
            ReportBody::Event(_) => QueuedKind::Event,
        };
        let seq = self.counter.take()?;
        let report = Report {
            device: self.device.clone(),
            counter: seq,
            time: now,
            body,
        };
        let bytes = codec::encode(&SignedReport::sign(&report, &self.key)?)?;
        Ok(Queued { seq, kind, bytes })
    }

    /// The signed offline status for the last will, and its counter.
    fn will(&mut self, mut status: Status, now: u64) -> Result<(Vec<u8>, u64), DaemonError> {
        status.online = false;
        let counter = self.counter.reserve_will(WILL_WINDOW)?;
        let report = Report {
            device: self.device.clone(),
            counter,
            time: now,
            body: ReportBody::Status(status),
        };
        Ok((
            codec::encode(&SignedReport::sign(&report, &self.key)?)?,
            counter,
        ))
    }

    /// After a disconnect the broker may have published the will: queued
    /// reports signed below it would be dropped as replays, so they are
    /// signed again above it (the old copies rumqttc resends are harmless
    /// duplicates).
    fn resign_below(&mut self, will: u64, now: u64) -> Result<Vec<Queued>, DaemonError> {
        self.counter.skip_past(will);
        let mut out = Vec::new();
        for q in self.outbox.pending()? {
            if q.seq > will {
                continue;
            }
            let body = codec::decode::<SignedReport>(&q.bytes)
                .and_then(|s| s.claimed())
                .map(|r| r.body);
            self.outbox.remove(q.seq, q.kind);
            if let Ok(body) = body {
                out.push(self.sign(body, now)?);
            }
        }
        Ok(out)
    }
}

/// Hands a queued report to rumqttc; once accepted it waits in
/// `unassigned` for its packet id. On failure it stays in the outbox and
/// is sent again on the next start.
async fn send(
    client: &AsyncClient,
    (topic, retain): (String, bool),
    q: Queued,
    unassigned: &mut VecDeque<(u64, QueuedKind)>,
) {
    if client
        .publish(topic, QoS::AtLeastOnce, retain, q.bytes)
        .await
        .is_ok()
    {
        unassigned.push_back((q.seq, q.kind));
    }
}

/// What the agent thread asks of the MQTT task.
enum ToMqtt {
    Report(Box<ReportBody>),
    Resync,
}

/// Hands reports from the agent thread to the MQTT task.
struct ChannelReporter(mpsc::UnboundedSender<ToMqtt>);

impl Reporter for ChannelReporter {
    fn publish(&mut self, body: ReportBody) {
        // The receiver only goes away when the daemon is shutting down.
        let _ = self.0.send(ToMqtt::Report(Box::new(body)));
    }

    fn resync(&mut self) {
        let _ = self.0.send(ToMqtt::Resync);
    }
}

/// Input from the broker to the agent thread.
enum Input {
    Announcement(Vec<u8>),
    Command(Vec<u8>),
    TrustChain(Vec<u8>),
}

fn agent_loop(
    mut driver: LocalDriver,
    rx: std_mpsc::Receiver<Input>,
    reboot: Vec<String>,
) -> Result<(), DaemonError> {
    let clock = SystemClock;
    loop {
        if driver.run_clocked(&|| clock.now(), None)? == RunOutcome::Reboot {
            tracing::info!("rebooting to switch slots: {reboot:?}");
            let mut cmd = std::process::Command::new(&reboot[0]);
            cmd.args(&reboot[1..]);
            match proc::run(cmd, Duration::from_secs(120)) {
                // The system is going down; wait for it without a busy loop.
                Ok(_) => std::thread::sleep(Duration::from_secs(300)),
                Err(e) => {
                    tracing::error!("reboot failed: {e}");
                    driver
                        .agent
                        .handle_reboot_failed(e.to_string(), clock.now());
                }
            }
            continue;
        }
        let now = clock.now();
        let wait = driver
            .agent
            .poll_timeout()
            .map_or(3600, |t| t.saturating_sub(now))
            .min(3600);
        if wait == 0 {
            driver.agent.handle_timeout(now);
            continue;
        }
        match rx.recv_timeout(Duration::from_secs(wait)) {
            Ok(Input::Announcement(b)) => driver.agent.handle_announcement_bytes(&b, clock.now()),
            Ok(Input::Command(b)) => driver.agent.handle_command(&b, clock.now()),
            Ok(Input::TrustChain(b)) => driver.agent.handle_trust_chain_bytes(&b, clock.now()),
            Err(std_mpsc::RecvTimeoutError::Timeout) => driver.agent.handle_timeout(clock.now()),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

fn jitter(base: Duration) -> Duration {
    // Spread reconnects of a fleet that lost its broker at the same moment.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// How often the device re-publishes its status when nothing changes.
const STATUS_INTERVAL: Duration = Duration::from_secs(300);

/// Seconds a device token stays valid. Short, because a captured token can
/// be replayed until it expires; a fresh one is signed for every connect.
const TOKEN_TTL: u64 = 3600;

/// The MQTT password when `mqtt.username` is not configured: a short-lived
/// token signed by the device key, which `meshota-broker` checks against
/// the enrolled public key (username = device id). No shared secret.
fn device_token(device: &DeviceId, key: &SecretKey, now: u64) -> Result<String, DaemonError> {
    meshota_protocol::auth::DeviceToken::issue(device, key, now, TOKEN_TTL)
        .map_err(|e| DaemonError::Url(format!("signing the device token: {e}")))
}

fn options(
    cfg: &Config,
    will: Vec<u8>,
    status_topic: &str,
    token: &str,
) -> Result<MqttOptions, DaemonError> {
    let (tls, host, port) = parse_url(&cfg.mqtt.url)?;
    let mut o = MqttOptions::new(cfg.device.id.clone(), host, port);
    o.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(512 * 1024, 512 * 1024)
        .set_last_will(LastWill::new(status_topic, will, QoS::AtLeastOnce, true));
    if let Some(user) = &cfg.mqtt.username {
        let password = match &cfg.mqtt.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| DaemonError::Url(format!("mqtt.password_file {}: {e}", p.display())))?
                .trim()
                .to_string(),
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    } else {
        o.set_credentials(cfg.device.id.clone(), token);
    }
    if tls {
        let ca = match &cfg.mqtt.ca {
            Some(p) => std::fs::read(p)
                .map_err(|e| DaemonError::Url(format!("mqtt.ca {}: {e}", p.display())))?,
            None => {
                return Err(DaemonError::Url(
                    "mqtts:// needs mqtt.ca (the broker's CA certificate, PEM)".into(),
                ))
            }
        };
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| DaemonError::Url(format!("{what} {}: {e}", p.display())))
        };
        let client = match (&cfg.mqtt.client_cert, &cfg.mqtt.client_key) {
            (Some(c), Some(k)) => Some((read("mqtt.client_cert", c)?, read("mqtt.client_key", k)?)),
            (None, None) => None,
            _ => {
                return Err(DaemonError::Url(
                    "mqtt.client_cert and mqtt.client_key go together: set both or neither".into(),
                ))
            }
        };
        o.set_transport(Transport::tls(ca, client, None));
    } else if cfg.mqtt.client_cert.is_some() || cfg.mqtt.client_key.is_some() {
        return Err(DaemonError::Url(
            "mqtt.client_cert needs an mqtts:// url: a certificate is only presented over TLS"
                .into(),
        ));
    }
    Ok(o)
}

fn ids(cfg: &Config) -> Result<(FleetId, DeviceId, Compatible, Vec<Channel>), DaemonError> {
    let bad = |e: meshota_protocol::IdError| DaemonError::Url(e.to_string());
    Ok((
        FleetId::new(&cfg.device.fleet).map_err(bad)?,
        DeviceId::new(&cfg.device.id).map_err(bad)?,
        Compatible::new(&cfg.device.compatible).map_err(bad)?,
        cfg.device
            .channels
            .iter()
            .map(|c| Channel::new(c).map_err(bad))
            .collect::<Result<_, _>>()?,
    ))
}

/// Runs the device agent against the broker until the agent thread stops.
///
/// # Errors
/// [`DaemonError`] for configuration problems at start, or a fatal
/// persistence failure later (the service manager restarts the daemon,
/// and the boot reconciliation takes over).
pub async fn run(
    cfg: Config,
    store: Arc<dyn Store>,
    fetcher: Box<dyn Fetcher>,
) -> Result<(), DaemonError> {
    run_until(cfg, store, fetcher, std::future::pending()).await
}

/// As [`run`], stopping when `shutdown` completes (tests, signal handlers).
///
/// # Errors
/// As [`run`].
pub async fn run_until(
    cfg: Config,
    store: Arc<dyn Store>,
    fetcher: Box<dyn Fetcher>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let backend = cfg.backend()?;
    run_with_backend(cfg, store, fetcher, backend, shutdown).await
}

/// As [`run_until`] with an install backend built by the caller instead
/// of the one `cfg` names (the simulator's backend, which only verifies
/// and waits).
///
/// # Errors
/// As [`run`].
pub async fn run_with_backend(
    cfg: Config,
    store: Arc<dyn Store>,
    fetcher: Box<dyn Fetcher>,
    backend: Box<dyn crate::install::InstallBackend>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    tokio::pin!(shutdown);
    let clock = SystemClock;
    let now = clock.now();
    let root = cfg.shipped_trust_root()?;
    let (key, created) = ensure_device_key(&cfg.data_dir)?;
    if created {
        tracing::info!(
            "created device key; enrol this public key: {}",
            key.public()
        );
    }
    let (fleet, device, compatible, channels) = ids(&cfg)?;
    let (rep_tx, mut rep_rx) = mpsc::unbounded_channel();
    let parts = DriverParts {
        backend,
        store,
        data_dir: cfg.data_dir.clone(),
        fetcher,
        inhibitor: cfg
            .inhibitor()
            .map(|i| Box::new(i) as Box<dyn super::driver::Inhibitor>),
        reporter: Box::new(ChannelReporter(rep_tx)),
    };
    let driver = LocalDriver::start(cfg.agent_config(root)?, parts, now)?;
    if let Err(e) = driver.agent.trust_root().check_expiry(now) {
        // Not fatal: a rotation published on the trust topic can still
        // bring a fresh root; until then every document fails E_EXPIRED.
        tracing::warn!(
            "the trust root has expired ({e}); waiting for a newer root on the trust topic, \
             or ship a new trust root file"
        );
    }
    let status = driver.agent.status();

    let mut signer = Signer {
        key,
        device: device.clone(),
        counter: ReportCounter::open(&cfg.data_dir.join("report-counter"))?,
        outbox: Outbox::open(&cfg.data_dir.join("outbox"))?,
    };
    let status_topic = Topic::Status {
        fleet: fleet.clone(),
        device: device.clone(),
    }
    .to_string();
    let events_topic = Topic::Events {
        fleet: fleet.clone(),
        device: device.clone(),
    }
    .to_string();
    let cmd_topic = Topic::Cmd {
        fleet: fleet.clone(),
        device,
    }
    .to_string();
    let trust_topic = Topic::Trust {
        fleet: fleet.clone(),
    }
    .to_string();
    let announce: Vec<String> = channels
        .into_iter()
        .map(|channel| {
            Topic::Announce {
                fleet: fleet.clone(),
                compatible: compatible.clone(),
                channel,
            }
            .to_string()
        })
        .collect();
    let mut last_status = status.clone();
    let (will, mut will_counter) = signer.will(status, now)?;
    let token = device_token(&signer.device, &signer.key, now)?;
    let (client, mut eventloop) =
        AsyncClient::new(options(&cfg, will, &status_topic, &token)?, 256);
    let mut resign_floor: Option<u64> = None;

    let (in_tx, in_rx) = std_mpsc::channel();
    let reboot = cfg.install.reboot_command.clone();
    let agent = std::thread::spawn(move || agent_loop(driver, in_rx, reboot));

    // Publishes handed to rumqttc but not yet given a packet id, in order.
    let mut unassigned: VecDeque<(u64, QueuedKind)> = VecDeque::new();
    let mut inflight: HashMap<u16, (u64, QueuedKind)> = HashMap::new();
    let topic_of = |k: QueuedKind| match k {
        QueuedKind::Status => (status_topic.clone(), true),
        QueuedKind::Event => (events_topic.clone(), false),
    };
    for q in signer.outbox.pending()? {
        send(&client, topic_of(q.kind), q, &mut unassigned).await;
    }
    let mut backoff = Duration::from_secs(1);
    // A status at an interval, not only on changes, so the registry can
    // tell a quiet device from a dead one even when the will is lost.
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + STATUS_INTERVAL,
        STATUS_INTERVAL,
    );
    'run: loop {
        // The poll future is kept until it completes. Dropped part-way
        // through a connect (when another arm of the select won), it
        // closed the fresh connection just after the broker's CONNACK:
        // the broker saw each first login twice and published the will
        // of the aborted one, and a steady stream of reports could keep
        // a slow reconnect from ever finishing.
        let ev = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    () = &mut shutdown => break 'run,
                    _ = heartbeat.tick() => {
                        let q = signer
                            .sign_queued(ReportBody::Status(last_status.clone()), clock.now())
                            .await?;
                        send(&client, topic_of(q.kind), q, &mut unassigned).await;
                    }
                    msg = rep_rx.recv() => {
                        let body = match msg {
                            None => break 'run,
                            Some(ToMqtt::Resync) => {
                                // Re-subscribing makes the broker send the retained
                                // announcements again.
                                for t in &announce {
                                    let _ = client.unsubscribe(t.clone()).await;
                                    let _ = client.subscribe(t.clone(), QoS::AtLeastOnce).await;
                                }
                                continue;
                            }
                            Some(ToMqtt::Report(body)) => *body,
                        };
                        if let ReportBody::Status(s) = &body {
                            last_status = s.clone();
                        }
                        let q = signer.sign_queued(body, clock.now()).await?;
                        send(&client, topic_of(q.kind), q, &mut unassigned).await;
                    }
                    ev = &mut poll => break ev,
                }
            }
        };
        match ev {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_secs(1);
                tracing::info!("connected to {}", cfg.mqtt.url);
                if let Some(floor) = resign_floor.take() {
                    let (now, status) = (clock.now(), ReportBody::Status(last_status.clone()));
                    // Re-signing reads, rewrites and fsyncs the queue: on
                    // the blocking pool, as a broker restart brings every
                    // device back at once (see `Signer::sign_queued`).
                    let (s, again) = tokio::task::spawn_blocking(move || {
                        let again = signer.resign_below(floor, now).and_then(|mut again| {
                            // The retained status may be the will: say we are back.
                            again.push(signer.sign(status, now)?);
                            Ok(again)
                        });
                        (signer, again)
                    })
                    .await
                    .map_err(|e| DaemonError::Agent(format!("re-signing queued reports: {e}")))?;
                    signer = s;
                    for q in again? {
                        send(&client, topic_of(q.kind), q, &mut unassigned).await;
                    }
                }
                // The trust topic first: a rotated-in key must be known
                // before the announcements it signed are checked (they are
                // also re-read after a rotation, as the order of retained
                // messages across topics is not guaranteed).
                for t in std::iter::once(&trust_topic)
                    .chain(announce.iter())
                    .chain(std::iter::once(&cmd_topic))
                {
                    if let Err(e) = client.subscribe(t.clone(), QoS::AtLeastOnce).await {
                        tracing::warn!("subscribe {t}: {e}");
                    }
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                let input = match Topic::parse(&p.topic) {
                    // An empty retained message deletes the retained
                    // one (the control plane clears announcements it
                    // does not own): nothing to verify or report.
                    Ok(Topic::Announce { .. }) if p.payload.is_empty() => None,
                    Ok(Topic::Announce { .. }) => Some(Input::Announcement(p.payload.to_vec())),
                    Ok(Topic::Cmd { .. }) => Some(Input::Command(p.payload.to_vec())),
                    Ok(Topic::Trust { .. }) if p.payload.is_empty() => None,
                    Ok(Topic::Trust { .. }) => Some(Input::TrustChain(p.payload.to_vec())),
                    _ => None,
                };
                if let Some(i) = input {
                    if in_tx.send(i).is_err() {
                        break;
                    }
                }
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => {
                // A resend after reconnect reuses its packet id.
                if let std::collections::hash_map::Entry::Vacant(slot) = inflight.entry(pkid) {
                    if let Some(x) = unassigned.pop_front() {
                        slot.insert(x);
                    }
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                if let Some((seq, kind)) = inflight.remove(&ack.pkid) {
                    signer.outbox.remove(seq, kind);
                }
            }
            Ok(_) => {}
            Err(e) => {
                // The broker may have published the will: everything
                // from now on must outrank it, and the next connection
                // gets a fresh will above that.
                signer.counter.skip_past(will_counter);
                resign_floor =
                    Some(resign_floor.map_or(will_counter, |f: u64| f.max(will_counter)));
                let (will, counter) = signer.will(last_status.clone(), clock.now())?;
                eventloop.mqtt_options.set_last_will(LastWill::new(
                    status_topic.clone(),
                    will,
                    QoS::AtLeastOnce,
                    true,
                ));
                will_counter = counter;
                if cfg.mqtt.username.is_none() {
                    let token = device_token(&signer.device, &signer.key, clock.now())?;
                    eventloop
                        .mqtt_options
                        .set_credentials(cfg.device.id.clone(), token);
                }
                let wait = jitter(backoff);
                tracing::warn!("mqtt: {e}; reconnecting in {wait:?}");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    drop(in_tx);
    // The agent thread may be finishing an install or a health check:
    // wait for it off the runtime, so other tasks (many agents share one
    // runtime in the simulator) keep running.
    match tokio::task::spawn_blocking(move || agent.join()).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(DaemonError::Agent("panicked".into())),
        Err(e) => Err(DaemonError::Agent(format!("joining the agent thread: {e}"))),
    }
}

/// What `meshota-node status` prints: the persisted agent state and the
/// real slot state, without touching the broker.
///
/// # Errors
/// [`DaemonError`] when the config, state or backend cannot be read.
pub fn local_status(cfg: &Config) -> Result<serde_json::Value, DaemonError> {
    let state = super::persist::StateFile::new(&cfg.data_dir)
        .map_err(DriverError::from)?
        .load()
        .map_err(DriverError::from)?
        .unwrap_or_default();
    let slots = cfg.backend()?.status();
    let opt = |v: Option<String>| v.map_or(serde_json::Value::Null, serde_json::Value::String);
    // The root the agent will verify with: the shipped one, advanced
    // along the persisted chain exactly as the agent does at start.
    let trust = match cfg.shipped_trust_root() {
        Ok(shipped) => {
            let shipped_version = shipped.version;
            let agent = super::Agent::new(cfg.agent_config(shipped)?, state.clone());
            let root = agent.trust_root();
            serde_json::json!({
                "version": root.version,
                "shipped_version": shipped_version,
                "expires_at": root.expires_at,
            })
        }
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    Ok(serde_json::json!({
        "device": cfg.device.id,
        "trust": trust,
        "state": state.phase.as_str(),
        "failure": state.failure,
        "installed_version": opt(state.installed_version.as_ref().map(|v| v.to_string())),
        "installed_release": opt(state.installed_release.map(|r| r.to_string())),
        "target": opt(state.target().map(|r| r.to_string())),
        "trial_boots": state.trial_boots,
        "slot": match slots {
            Ok(s) => serde_json::json!({
                "active": s.active_slot,
                "release": s.active_release.map(|r| r.to_string()),
                "version": s.active_version.map(|v| v.to_string()),
                "trial": s.trial,
            }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshota_protocol::{Event, SiteId, UpdateState};

    fn status() -> Status {
        Status {
            version: None,
            release: None,
            slot: None,
            state: UpdateState::Idle,
            target: None,
            peer_id: None,
            site: SiteId::new("s").unwrap(),
            tags: vec![],
            online: true,
            groups: vec![],
            compatible: None,
            trust_version: None,
        }
    }

    #[test]
    fn urls_split_into_tls_host_and_port() {
        assert_eq!(parse_url("mqtt://h").unwrap(), (false, "h".into(), 1883));
        assert_eq!(parse_url("mqtts://h:9").unwrap(), (true, "h".into(), 9));
        assert!(parse_url("http://h").is_err());
        assert!(parse_url("mqtt://:1").is_err());
        assert!(parse_url("mqtt://h:x").is_err());
    }

    #[test]
    fn reports_queued_below_a_published_will_are_signed_again_above_it() {
        let tmp = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32]);
        let mut s = Signer {
            key: SecretKey::from_seed([9; 32]),
            device: DeviceId::new("d").unwrap(),
            counter: ReportCounter::open(&tmp.path().join("c")).unwrap(),
            outbox: Outbox::open(&tmp.path().join("o")).unwrap(),
        };
        let ev = ReportBody::Event(Event::Error {
            code: "E_X".into(),
            message: "m".into(),
            release: None,
        });
        let (will, w) = s.will(status(), 1).unwrap();
        let will = codec::decode::<SignedReport>(&will)
            .unwrap()
            .verify(&key.public())
            .unwrap();
        assert_eq!(will.counter, w);
        assert!(matches!(
            will.body,
            ReportBody::Status(Status { online: false, .. })
        ));
        let q = s.sign(ev.clone(), 2).unwrap();
        assert!(q.seq < w);
        let again = s.resign_below(w, 3).unwrap();
        assert_eq!(again.len(), 1);
        assert!(again[0].seq > w);
        let r = codec::decode::<SignedReport>(&again[0].bytes)
            .unwrap()
            .verify(&key.public())
            .unwrap();
        assert_eq!(r.body, ev);
        let left: Vec<u64> = s.outbox.pending().unwrap().iter().map(|q| q.seq).collect();
        assert_eq!(left, vec![again[0].seq]);
    }
}
