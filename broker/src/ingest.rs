//! Telemetry ingest: every device status and event is checked before it
//! touches the registry.
//!
//! A report counts only if, in this order: the topic is a device status or
//! events topic; the payload decodes as a [`SignedReport`]; the device the
//! TOPIC names is enrolled (accepted); the signature verifies against that
//! device's enrolled key; the report's own device id equals the topic's
//! (a device cannot speak for another, even though rumqttd has no ACLs);
//! the body kind matches the topic; and the counter is above the last
//! accepted on that topic (statuses and events are counted apart, since
//! MQTT orders messages per topic only). Anything else is dropped, the
//! registry is left unchanged, and a counter for the reason is bumped.
//!
//! **The last will.** A device registers a pre-signed offline [`Status`]
//! as its MQTT will when it connects, so by the time the broker publishes
//! it the device has usually sent reports with higher counters. We accept
//! a correctly signed status with `online == false` whatever its counter,
//! but it only sets `online = false` and `last_seen`: it changes no other
//! field and does not move `last_counter`. The worst a replayed will can do
//! is show a device offline until its next status; it cannot roll back its
//! version, state or counter.

use meshota_protocol::codec;
use meshota_protocol::topics::Topic;
use meshota_protocol::{DeviceId, ReportBody, SignedReport};

use crate::registry::{Admission, EventRecord, Registry, RegistryError};

/// Why a report was dropped. [`Self::as_str`] names its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// Not a device status or events topic.
    Topic,
    /// The payload does not decode.
    Malformed,
    /// The topic's device is unknown or not accepted.
    Unenrolled,
    /// The signature does not verify with the topic device's key.
    Forged,
    /// The report names another device than the topic.
    DeviceMismatch,
    /// A status on the events topic or the reverse.
    WrongBody,
    /// Counter not above the last accepted.
    Replayed,
}

impl Rejection {
    /// Stable name, as in metrics and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Topic => "topic",
            Rejection::Malformed => "malformed",
            Rejection::Unenrolled => "unenrolled",
            Rejection::Forged => "forged",
            Rejection::DeviceMismatch => "device-mismatch",
            Rejection::WrongBody => "wrong-body",
            Rejection::Replayed => "replayed",
        }
    }

    /// Every reason, for metrics that list zeroes too.
    pub const ALL: [Rejection; 7] = [
        Rejection::Topic,
        Rejection::Malformed,
        Rejection::Unenrolled,
        Rejection::Forged,
        Rejection::DeviceMismatch,
        Rejection::WrongBody,
        Rejection::Replayed,
    ];
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to the registry.
    Accepted {
        /// The device.
        device: DeviceId,
        /// Its counter.
        counter: u64,
        /// What it said (the rollout driver counts it).
        body: Box<ReportBody>,
    },
    /// A last will: only `online = false` was applied.
    Offline(DeviceId),
    /// A retained status redelivered on (re)subscription that is not newer
    /// than what we hold: ignored, and not counted as a replay attack.
    Stale,
    /// Dropped.
    Rejected(Rejection),
}

/// Counter names in the registry.
pub const ACCEPTED: &str = "reports.accepted";
/// Prefix of rejection counters; the reason follows.
pub const REJECTED_PREFIX: &str = "reports.rejected.";

/// Checks one message and applies it to the registry.
///
/// `retained` is the MQTT retain flag as delivered: a retained status is
/// redelivered every time the control plane (re)subscribes.
///
/// Not flushed: the caller group-commits (the control loop flushes at
/// most [`crate::mqtt::control::FLUSH_EVERY`] after a change), because a
/// sled flush per report would cap ingest at a few hundred reports per
/// second. Reads see the change at once; a crash can lose the last
/// fraction of a second of telemetry, and with it the replay protection
/// of just those reports.
///
/// # Errors
/// Only [`RegistryError`]: a bad message is an `Ok(Outcome::Rejected)`.
pub fn ingest(
    reg: &Registry,
    topic: &str,
    payload: &[u8],
    retained: bool,
    now: u64,
) -> Result<Outcome, RegistryError> {
    let outcome = check_and_apply(reg, topic, payload, retained, now)?;
    match &outcome {
        Outcome::Accepted { .. } | Outcome::Offline(_) => {
            reg.bump(ACCEPTED)?;
        }
        Outcome::Rejected(r) => {
            reg.bump(&format!("{REJECTED_PREFIX}{}", r.as_str()))?;
        }
        Outcome::Stale => {}
    }
    Ok(outcome)
}

fn check_and_apply(
    reg: &Registry,
    topic: &str,
    payload: &[u8],
    retained: bool,
    now: u64,
) -> Result<Outcome, RegistryError> {
    let reject = |r| Ok(Outcome::Rejected(r));
    let (device, is_status) = match Topic::parse(topic) {
        Ok(Topic::Status { device, .. }) => (device, true),
        Ok(Topic::Events { device, .. }) => (device, false),
        _ => return reject(Rejection::Topic),
    };
    // An empty retained payload is how MQTT clears a retained message; a
    // device does that legitimately only when decommissioned, and it
    // carries no claim, so it is simply not a report.
    let Ok(signed) = codec::decode::<SignedReport>(payload) else {
        return reject(Rejection::Malformed);
    };
    let Some(mut rec) = reg.device(&device)? else {
        return reject(Rejection::Unenrolled);
    };
    if rec.admission != Admission::Accepted {
        return reject(Rejection::Unenrolled);
    }
    let report = match signed.verify(&rec.public_key) {
        Ok(r) => r,
        Err(meshota_protocol::telemetry::ReportError::BadSignature) => {
            return reject(Rejection::Forged)
        }
        Err(_) => return reject(Rejection::Malformed),
    };
    if report.device != device {
        return reject(Rejection::DeviceMismatch);
    }
    match (&report.body, is_status) {
        (ReportBody::Status(s), true) if !s.online => {
            // Whatever its counter: devices reserve their will's counter
            // above the reports of the session, so letting a will move
            // `last_counter` would turn every later report of that session
            // into a "replay" once the broker publishes it.
            if !rec.online {
                // Already offline: typically the retained will redelivered
                // when the control plane resubscribes. Nothing to change.
                return Ok(Outcome::Stale);
            } else {
                rec.online = false;
                rec.last_seen = Some(now);
                reg.put_device(&rec)?;
                return Ok(Outcome::Offline(device));
            }
        }
        (ReportBody::Status(_), true) | (ReportBody::Event(_), false) => {}
        _ => return reject(Rejection::WrongBody),
    }
    // One counter per topic: the device numbers all its reports in one
    // sequence, but MQTT keeps order per topic only.
    let last = if is_status {
        &mut rec.last_counter
    } else {
        &mut rec.last_event_counter
    };
    if report.counter <= *last {
        if retained && is_status {
            return Ok(Outcome::Stale);
        }
        return reject(Rejection::Replayed);
    }
    *last = report.counter;
    rec.last_seen = Some(now);
    let body = report.body.clone();
    match report.body {
        ReportBody::Status(s) => {
            rec.online = s.online;
            rec.version = s.version;
            rec.release = s.release;
            rec.slot = s.slot;
            rec.state = Some(s.state);
            rec.target = s.target;
            rec.peer_id = s.peer_id;
            rec.site = Some(s.site);
            rec.tags = s.tags;
            rec.groups = s.groups;
            if s.compatible.is_some() {
                rec.compatible = s.compatible;
            }
            if s.trust_version.is_some() {
                rec.trust_version = s.trust_version;
            }
        }
        ReportBody::Event(event) => {
            if let meshota_protocol::Event::StateChanged { to, .. } = &event {
                rec.state = Some(*to);
            }
            reg.push_event(
                &device,
                &EventRecord {
                    counter: report.counter,
                    device_time: report.time,
                    received_at: now,
                    event,
                },
            )?;
        }
    }
    reg.put_device(&rec)?;
    Ok(Outcome::Accepted {
        device,
        counter: report.counter,
        body: Box::new(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshota_protocol::{Report, SecretKey, SignedReport, SiteId, Status, UpdateState};

    fn signed(key: &SecretKey, counter: u64, body: ReportBody) -> Vec<u8> {
        let r = Report {
            device: DeviceId::new("d").unwrap(),
            counter,
            time: 1,
            body,
        };
        codec::encode(&SignedReport::sign(&r, key).unwrap()).unwrap()
    }

    fn status() -> ReportBody {
        ReportBody::Status(Status {
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
        })
    }

    fn event() -> ReportBody {
        ReportBody::Event(meshota_protocol::Event::Error {
            code: "E_X".into(),
            message: String::new(),
            release: None,
        })
    }

    #[test]
    fn an_event_overtaken_by_a_later_status_is_accepted_but_a_replayed_event_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let key = SecretKey::from_seed([5; 32]);
        let d = DeviceId::new("d").unwrap();
        reg.admit(&d, key.public(), true, 1).unwrap();
        let (st, ev) = (
            "meshota/v1/default/devices/d/status",
            "meshota/v1/default/devices/d/events",
        );
        let ok = |o: Outcome| matches!(o, Outcome::Accepted { .. });
        // The device sent event 1 then status 2; the broker delivered the
        // status first (different topics).
        assert!(ok(
            ingest(&reg, st, &signed(&key, 2, status()), false, 5).unwrap()
        ));
        assert!(ok(
            ingest(&reg, ev, &signed(&key, 1, event()), false, 5).unwrap()
        ));
        assert_eq!(
            ingest(&reg, ev, &signed(&key, 1, event()), false, 5).unwrap(),
            Outcome::Rejected(Rejection::Replayed)
        );
        assert_eq!(
            ingest(&reg, st, &signed(&key, 2, status()), false, 5).unwrap(),
            Outcome::Rejected(Rejection::Replayed)
        );
        assert_eq!(reg.events(&d).unwrap().len(), 1);
    }
}
