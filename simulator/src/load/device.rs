//! One MQTT-only virtual device: connects (with a device token signed by
//! its own key, or the given credentials), subscribes to its
//! announcement and command topics as the real agent does, and publishes
//! signed status (retained) and events at the configured intervals until
//! the deadline.
//!
//! Each status carries the run tag and its send time in `tags`
//! (`load:<run>:<micros since the run started>`), so the monitor can time
//! delivery while the report stays a valid, signed meshota report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use meshota_protocol::{
    codec, ByteSplit, DeviceId, DeviceToken, Event, FleetId, ReleaseId, Report, ReportBody,
    SecretKey, SignedReport, SiteId, Status, Topic, UpdateState,
};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::time::Instant;

use super::{Auth, LoadError, Shared};

/// Seconds a device token stays valid (a fresh one is signed per connect).
const TOKEN_TTL: u64 = 3600;

/// A device's key, derived from the seed and its index so a rerun against
/// the same broker logs in with the same (already accepted) key. These
/// are load-test identities, not secrets.
pub fn device_key(seed: u64, index: u32) -> SecretKey {
    let mut bytes = [0u8; 32];
    let mut z = seed ^ (u64::from(index) << 32) ^ 0x006D_6573_686F_7461;
    for chunk in bytes.chunks_mut(8) {
        z = super::mix(z);
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    SecretKey::from_seed(bytes)
}

/// MQTT options for client `id` under `auth`, with a fresh token signed
/// by `key` when tokens are used.
pub fn options(
    shared: &Shared,
    id: &DeviceId,
    key: &SecretKey,
    clean: bool,
) -> Result<MqttOptions, LoadError> {
    let mut o = MqttOptions::new(id.as_str(), shared.host.clone(), shared.port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(clean)
        .set_max_packet_size(512 * 1024, 512 * 1024);
    match &shared.auth {
        Auth::Token => {
            let token = DeviceToken::issue(id, key, super::unix_now(), TOKEN_TTL)
                .map_err(|e| LoadError::Token(e.to_string()))?;
            o.set_credentials(id.as_str(), token);
        }
        Auth::Password { username, password } => {
            o.set_credentials(username.clone(), password.clone());
        }
        Auth::Anonymous => {}
    }
    Ok(o)
}

/// Builds the signed reports of one device.
pub struct Reporter {
    device: DeviceId,
    key: SecretKey,
    counter: u64,
    site: SiteId,
    release: ReleaseId,
    status_topic: String,
    events_topic: String,
}

impl Reporter {
    /// The reports of `device` in `fleet`, signed with `key`.
    pub fn new(device: DeviceId, key: SecretKey, fleet: &FleetId, site: SiteId) -> Self {
        Self {
            // Counters continue above any earlier run's (one report a
            // millisecond would be needed to catch up), so the control
            // plane takes every report instead of dropping it as a replay.
            counter: super::unix_now() * 1000,
            site,
            release: ReleaseId::digest(b"meshota-load"),
            status_topic: Topic::Status {
                fleet: fleet.clone(),
                device: device.clone(),
            }
            .to_string(),
            events_topic: Topic::Events {
                fleet: fleet.clone(),
                device: device.clone(),
            }
            .to_string(),
            device,
            key,
        }
    }

    fn sign(&mut self, body: ReportBody) -> Result<Vec<u8>, LoadError> {
        self.counter += 1;
        let report = Report {
            device: self.device.clone(),
            counter: self.counter,
            time: super::unix_now(),
            body,
        };
        Ok(codec::encode(&SignedReport::sign(&report, &self.key)?)?)
    }

    /// A signed, online, idle status stamped with `tag`.
    pub fn status(&mut self, tag: String) -> Result<Vec<u8>, LoadError> {
        let status = Status {
            version: Some(meshota_protocol::semver::Version::new(1, 0, 0)),
            release: Some(self.release),
            slot: Some("a".into()),
            state: UpdateState::Idle,
            target: None,
            peer_id: None,
            site: self.site.clone(),
            tags: vec!["load".into(), tag],
            online: true,
            groups: vec![],
            compatible: None,
            trust_version: None,
        };
        self.sign(ReportBody::Status(status))
    }

    /// A signed download-progress event, the most frequent kind a real
    /// device sends.
    pub fn event(&mut self) -> Result<Vec<u8>, LoadError> {
        let total = 32 << 20;
        let done = (self.counter * 256 * 1024) % total;
        self.sign(ReportBody::Event(Event::Progress {
            release: self.release,
            bytes: ByteSplit {
                same_site: done / 2,
                other_peers: done / 4,
                origin: done / 4,
                local: 0,
            },
            total,
            rate_bps: 2_500_000,
        }))
    }
}

/// Runs device `index` until `deadline`, reconnecting after failures.
pub async fn run(shared: Arc<Shared>, index: u32, deadline: Instant) -> Result<(), LoadError> {
    let id = DeviceId::new(format!("{}-{index}", shared.prefix))?;
    let key = device_key(shared.seed, index);
    let fleet = shared.fleet.clone();
    let site = SiteId::new(format!("site-{}", index % 20))?;
    let mut rep = Reporter::new(id.clone(), device_key(shared.seed, index), &fleet, site);
    let subscriptions = [shared.announce_topic.clone(), {
        Topic::Cmd {
            fleet,
            device: id.clone(),
        }
        .to_string()
    }];
    let mut ever_connected = false;
    let mut backoff = Duration::from_millis(500);
    while Instant::now() < deadline {
        let attempt = Instant::now();
        let (client, mut el) = AsyncClient::new(options(&shared, &id, &key, true)?, 64);
        let connected = tokio::time::timeout(shared.connect_timeout, async {
            loop {
                match el.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !connected {
            shared
                .stats
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_secs(8));
            continue;
        }
        if !ever_connected {
            ever_connected = true;
            shared
                .stats
                .first_connect(attempt, Instant::now(), shared.start);
        }
        for t in &subscriptions {
            // Queued for the event loop below; a full queue shows as a
            // missing announcement count, not as an error.
            let _ = client.try_subscribe(t.clone(), QoS::AtLeastOnce);
        }
        session(&shared, &client, &mut el, &mut rep, deadline).await?;
        if Instant::now() < deadline {
            shared.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Publishes until the deadline or until the connection drops.
async fn session(
    shared: &Shared,
    client: &AsyncClient,
    el: &mut rumqttc::EventLoop,
    rep: &mut Reporter,
    deadline: Instant,
) -> Result<(), LoadError> {
    let stats = &shared.stats;
    // A random phase per device spreads the fleet's reports over the
    // interval instead of in bursts.
    let phase = |every: Duration, salt: u64| {
        let frac = (super::mix(shared.seed ^ salt ^ rep.counter) % 1000) as f64 / 1000.0;
        Instant::now() + every.mul_f64(frac)
    };
    let mut status_tick =
        tokio::time::interval_at(phase(shared.status_every, 1), shared.status_every);
    let event_every = shared.event_every.unwrap_or(Duration::from_secs(3600));
    let mut event_tick = tokio::time::interval_at(phase(event_every, 2), event_every);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    event_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                let _ = client.try_disconnect();
                // Let the DISCONNECT go out; bounded so a dead broker
                // cannot hold the run.
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    while el.poll().await.is_ok() {}
                }).await;
                return Ok(());
            }
            _ = status_tick.tick() => {
                let sent = shared.start.elapsed().as_micros();
                let bytes = rep.status(format!("load:{}:{sent}", shared.run))?;
                match client.try_publish(rep.status_topic.clone(), QoS::AtLeastOnce, true, bytes) {
                    Ok(()) => stats.status_sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
            _ = event_tick.tick(), if shared.event_every.is_some() => {
                let bytes = rep.event()?;
                match client.try_publish(rep.events_topic.clone(), QoS::AtLeastOnce, false, bytes) {
                    Ok(()) => stats.events_sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
            ev = el.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(MqttEvent::Incoming(Packet::Publish(_))) => {
                    stats.announcements.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_keys_are_stable_per_index_and_distinct_across_indices() {
        assert_eq!(device_key(1, 7).public(), device_key(1, 7).public());
        assert_ne!(device_key(1, 7).public(), device_key(1, 8).public());
        assert_ne!(device_key(1, 7).public(), device_key(2, 7).public());
    }
}
