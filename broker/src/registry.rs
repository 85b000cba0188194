//! The device and release registry, in sled under the data directory.
//!
//! Trees (values are JSON, keys are plain strings or `device \0 counter`):
//!
//! | tree            | key                         | value                 |
//! |-----------------|-----------------------------|-----------------------|
//! | `devices`       | device id                   | [`DeviceRecord`]      |
//! | `events`        | device id, `\0`, counter BE | [`EventRecord`]       |
//! | `counters`      | counter name                | u64 big-endian        |
//! | `releases`      | release id (hex)            | [`ReleaseRecord`]     |
//! | `announcements` | MQTT topic                  | raw retained payload  |
//! | `signed`        | release id (hex)            | codec `Signed<Release>` |
//! | `rollouts`      | rollout id (hex)            | [`RolloutRecord`]     |
//!
//! JSON rather than the protocol codec: these records never leave the
//! control plane, and an operator can read them with any sled tool.
//! Admission, acceptance, releases and announcements are flushed before
//! they are acknowledged (sled otherwise syncs only every 500 ms);
//! telemetry is group-committed by the control loop (see
//! [`crate::ingest::ingest`]).

use std::path::Path;

use meshota_protocol::{
    Compatible, DeviceId, Group, PublicKey, ReleaseId, RolloutId, SiteId, UpdateState,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Events kept per device; older ones are dropped first.
pub const EVENTS_PER_DEVICE: usize = 200;

/// Most pending (unaccepted) devices recorded. Past it, logins by unknown
/// keys are refused without a record, so a flood of made-up device ids
/// cannot fill the disk.
pub const MAX_PENDING: u64 = 10_000;

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// sled failed.
    #[error("registry database: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not parse.
    #[error("corrupt registry record {key:?}: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// No such device.
    #[error("no device {0:?} in the registry")]
    UnknownDevice(String),
    /// Enrolment with a key other than the one already accepted.
    #[error("device {0:?} is already enrolled with another key; remove it first to re-key")]
    KeyConflict(String),
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Seen, refused until an operator accepts it.
    Pending,
    /// Enrolled: may connect, and its reports are verified with its key.
    Accepted,
}

/// One device as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id (also its MQTT username).
    pub id: DeviceId,
    /// The key it logs in and signs telemetry with.
    pub public_key: PublicKey,
    /// Pending or accepted.
    pub admission: Admission,
    /// When it first tried to log in (seconds since the epoch).
    pub first_seen: u64,
    /// When the last accepted report arrived.
    pub last_seen: Option<u64>,
    /// From the last accepted status (false after its last will).
    pub online: bool,
    /// Installed version.
    pub version: Option<meshota_protocol::semver::Version>,
    /// Release in the active slot.
    pub release: Option<ReleaseId>,
    /// Active slot.
    pub slot: Option<String>,
    /// Update state.
    pub state: Option<UpdateState>,
    /// Release the state refers to.
    pub target: Option<ReleaseId>,
    /// Site.
    pub site: Option<SiteId>,
    /// Tags and groups.
    pub tags: Vec<String>,
    /// libp2p peer id.
    pub peer_id: Option<String>,
    /// Highest status counter accepted; a status not above it is a replay.
    pub last_counter: u64,
    /// Highest event counter accepted; an event not above it is a replay.
    /// Kept apart from statuses because the two travel on different
    /// topics, and MQTT orders messages per topic only: a device's event
    /// can arrive after its later status.
    #[serde(default)]
    pub last_event_counter: u64,
    /// Rollout groups, from its status.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Device class, from its status (absent until the first status).
    #[serde(default)]
    pub compatible: Option<Compatible>,
    /// The trust-root version it last reported.
    #[serde(default)]
    pub trust_version: Option<u64>,
}

/// One accepted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The report counter.
    pub counter: u64,
    /// Device time.
    pub device_time: u64,
    /// Control-plane time of receipt.
    pub received_at: u64,
    /// The event.
    pub event: meshota_protocol::Event,
}

/// A release the origin serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// Release id.
    pub id: ReleaseId,
    /// Manifest id.
    pub manifest_id: meshota_protocol::ManifestId,
    /// Product name.
    pub name: String,
    /// Version.
    pub version: meshota_protocol::semver::Version,
    /// Device class.
    pub compatible: meshota_protocol::Compatible,
    /// Channel.
    pub channel: meshota_protocol::Channel,
    /// Payload bytes.
    pub payload_size: u64,
    /// Release sequence.
    pub sequence: u64,
    /// Release expiry.
    pub expires_at: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// When it was published here.
    pub published_at: u64,
}

/// The registry. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Registry {
    /// Pending devices, counted once at open and kept in step by
    /// [`Registry::admit`] and [`Registry::accept`] (the only writers of
    /// admission), so the cap costs no scan per login.
    pending: std::sync::Mutex<u64>,
    db: sled::Db,
    devices: sled::Tree,
    events: sled::Tree,
    counters: sled::Tree,
    releases: sled::Tree,
    announcements: sled::Tree,
    signed: sled::Tree,
    rollouts: sled::Tree,
}

/// A rollout as the driver persists it: the planner's snapshot plus what
/// the driver itself must remember.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The rollout.
    pub id: RolloutId,
    /// [`crate::rollout::Planner::snapshot`] bytes (hex in the JSON).
    #[serde(with = "hex_bytes")]
    pub snapshot: Vec<u8>,
    /// A later rollout on the same announce topic took over: this one
    /// publishes nothing more and is kept for its status only.
    pub retired: bool,
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Corrupt {
        key: String::from_utf8_lossy(key).chars().take(200).collect(),
        reason: e.to_string(),
    }
}

fn parse<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(v).map_err(|e| corrupt(key, e))
}

fn json<T: Serialize>(key: &[u8], v: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(v).map_err(|e| corrupt(key, e))
}

fn event_key(device: &DeviceId, counter: u64) -> Vec<u8> {
    let mut k = device.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&counter.to_be_bytes());
    k
}

impl Registry {
    /// Opens (or creates) the registry under `dir`.
    ///
    /// # Errors
    /// [`RegistryError::Sled`], for example when another process holds it.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let db = meshota_node::store::open_sled(&sled::Config::new().path(dir))?;
        let devices = db.open_tree("devices")?;
        let mut pending = 0;
        for kv in devices.iter() {
            let (k, v) = kv?;
            if parse::<DeviceRecord>(&k, &v)?.admission == Admission::Pending {
                pending += 1;
            }
        }
        Ok(Self {
            pending: std::sync::Mutex::new(pending),
            devices,
            events: db.open_tree("events")?,
            counters: db.open_tree("counters")?,
            releases: db.open_tree("releases")?,
            announcements: db.open_tree("announcements")?,
            signed: db.open_tree("signed")?,
            rollouts: db.open_tree("rollouts")?,
            db,
        })
    }

    /// Makes everything written so far durable.
    ///
    /// # Errors
    /// [`RegistryError::Sled`].
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.db.flush()?;
        Ok(())
    }

    /// One device.
    ///
    /// # Errors
    /// [`RegistryError`] on backend failure or a corrupt record.
    pub fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        let key = id.as_str().as_bytes();
        self.devices.get(key)?.map(|v| parse(key, &v)).transpose()
    }

    /// Writes one device record (not flushed). Telemetry fields only:
    /// admission changes go through [`Self::admit`] and [`Self::accept`].
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn put_device(&self, rec: &DeviceRecord) -> Result<(), RegistryError> {
        let key = rec.id.as_str().as_bytes();
        self.devices.insert(key, json(key, rec)?)?;
        Ok(())
    }

    /// Every device, in id order.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        self.devices
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                parse(&k, &v)
            })
            .collect()
    }

    /// Marks a device accepted, and flushes.
    ///
    /// # Errors
    /// [`RegistryError::UnknownDevice`] when it never tried to log in.
    pub fn accept(&self, id: &DeviceId) -> Result<DeviceRecord, RegistryError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec = self
            .device(id)?
            .ok_or_else(|| RegistryError::UnknownDevice(id.to_string()))?;
        if rec.admission == Admission::Pending {
            *pending = pending.saturating_sub(1);
        }
        rec.admission = Admission::Accepted;
        self.put_device(&rec)?;
        self.flush()?;
        Ok(rec)
    }

    /// Enrols device `id` with `key` on an operator's word, accepted at
    /// once: how devices join when an external broker does admission, or
    /// ahead of their first login. Flushes.
    ///
    /// # Errors
    /// [`RegistryError::KeyConflict`] when `id` is accepted with another
    /// key (a re-key is not an enrolment).
    pub fn enroll(
        &self,
        id: &DeviceId,
        key: PublicKey,
        now: u64,
    ) -> Result<DeviceRecord, RegistryError> {
        if let Some(rec) = self.device(id)? {
            if rec.admission == Admission::Accepted && rec.public_key != key {
                return Err(RegistryError::KeyConflict(id.to_string()));
            }
        }
        self.admit(id, key, true, now)?;
        self.flush()?;
        self.device(id)?
            .ok_or_else(|| RegistryError::UnknownDevice(id.to_string()))
    }

    /// Decides a login by device `id` proving key `key`: accepted if that
    /// key is enrolled; otherwise recorded as pending (or accepted at once
    /// when `auto_accept` and the device has no accepted key yet).
    ///
    /// A device already accepted with another key is refused and its
    /// record kept: re-keying needs an operator, not a first-come login.
    /// Past [`MAX_PENDING`] pending devices, a new one is refused unrecorded.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn admit(
        &self,
        id: &DeviceId,
        key: PublicKey,
        auto_accept: bool,
        now: u64,
    ) -> Result<Admission, RegistryError> {
        // Held across read-modify-write so concurrent logins of one device
        // cannot interleave, and the pending count stays exact.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let existing = self.device(id)?;
        if existing.is_none() && !auto_accept && *pending >= MAX_PENDING {
            return Ok(Admission::Pending);
        }
        let was_pending = existing.is_some();
        let rec = match existing {
            Some(rec) if rec.admission == Admission::Accepted => {
                return Ok(if rec.public_key == key {
                    Admission::Accepted
                } else {
                    Admission::Pending
                });
            }
            Some(mut rec) => {
                rec.public_key = key;
                rec
            }
            None => DeviceRecord {
                id: id.clone(),
                public_key: key,
                admission: Admission::Pending,
                first_seen: now,
                last_seen: None,
                online: false,
                version: None,
                release: None,
                slot: None,
                state: None,
                target: None,
                site: None,
                tags: Vec::new(),
                peer_id: None,
                last_counter: 0,
                last_event_counter: 0,
                groups: Vec::new(),
                compatible: None,
                trust_version: None,
            },
        };
        let mut rec = rec;
        if auto_accept {
            rec.admission = Admission::Accepted;
        }
        match (was_pending, rec.admission) {
            (false, Admission::Pending) => *pending += 1,
            (true, Admission::Accepted) => *pending = pending.saturating_sub(1),
            _ => {}
        }
        self.put_device(&rec)?;
        self.flush()?;
        Ok(rec.admission)
    }

    /// Appends an event, dropping the oldest beyond [`EVENTS_PER_DEVICE`].
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn push_event(&self, id: &DeviceId, ev: &EventRecord) -> Result<(), RegistryError> {
        let key = event_key(id, ev.counter);
        self.events.insert(key.as_slice(), json(&key, ev)?)?;
        let mut prefix = id.as_str().as_bytes().to_vec();
        prefix.push(0);
        let n = self.events.scan_prefix(&prefix).count();
        if n > EVENTS_PER_DEVICE {
            let old: Vec<_> = self
                .events
                .scan_prefix(&prefix)
                .keys()
                .take(n - EVENTS_PER_DEVICE)
                .collect::<Result<_, _>>()?;
            for k in old {
                self.events.remove(k)?;
            }
        }
        Ok(())
    }

    /// A device's events, oldest first.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn events(&self, id: &DeviceId) -> Result<Vec<EventRecord>, RegistryError> {
        let mut prefix = id.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.events
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                parse(&k, &v)
            })
            .collect()
    }

    /// Adds one to a named counter (not flushed: counters are statistics).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn bump(&self, name: &str) -> Result<u64, RegistryError> {
        let next = self.counters.update_and_fetch(name, |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            Some(n.saturating_add(1).to_be_bytes().to_vec())
        })?;
        Ok(next
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Every counter, by name.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn counters(&self) -> Result<Vec<(String, u64)>, RegistryError> {
        self.counters
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let n = <[u8; 8]>::try_from(v.as_ref()).map_err(|e| corrupt(&k, e))?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    u64::from_be_bytes(n),
                ))
            })
            .collect()
    }

    /// Records a release and flushes.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn put_release(&self, rec: &ReleaseRecord) -> Result<(), RegistryError> {
        let key = rec.id.to_string();
        self.releases
            .insert(key.as_bytes(), json(key.as_bytes(), rec)?)?;
        self.flush()
    }

    /// Every release, oldest publication first.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn releases(&self) -> Result<Vec<ReleaseRecord>, RegistryError> {
        let mut out: Vec<ReleaseRecord> = self
            .releases
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                parse(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|r| (r.published_at, r.id));
        Ok(out)
    }

    /// Stores the retained payload the control plane owns on `topic`, and
    /// flushes.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn put_announcement(&self, topic: &str, payload: &[u8]) -> Result<(), RegistryError> {
        self.announcements.insert(topic, payload)?;
        self.flush()
    }

    /// The retained payload owned on `topic`.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn announcement(&self, topic: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(self.announcements.get(topic)?.map(|v| v.to_vec()))
    }

    /// Every owned retained payload, by topic.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn announcements(&self) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        self.announcements
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }
}

/// Bytes as a hex string: JSON would otherwise spell each byte as a
/// number, several times the size of a snapshot.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

impl Registry {
    /// Keeps the exact signed release document (codec bytes of a
    /// `Signed<Release>`), which announcements must carry unchanged.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn put_signed_release(&self, id: &ReleaseId, bytes: &[u8]) -> Result<(), RegistryError> {
        self.signed.insert(id.to_string().as_bytes(), bytes)?;
        self.flush()
    }

    /// The signed release document of `id`, if published here.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn signed_release(&self, id: &ReleaseId) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(self
            .signed
            .get(id.to_string().as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// Stores a rollout (not flushed: the driver flushes once per round,
    /// before it publishes anything the round decided).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn put_rollout(&self, rec: &RolloutRecord) -> Result<(), RegistryError> {
        let key = rec.id.to_string();
        self.rollouts
            .insert(key.as_bytes(), json(key.as_bytes(), rec)?)?;
        Ok(())
    }

    /// Moves a named counter to `max(value + 1, floor)`, flushes, and
    /// returns the new value: for sequences that must only ever grow.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn advance(&self, name: &str, floor: u64) -> Result<u64, RegistryError> {
        let next = |old: Option<&[u8]>| -> u64 {
            let cur = old
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map_or(0, u64::from_be_bytes);
            cur.saturating_add(1).max(floor)
        };
        self.counters
            .update_and_fetch(name, |old| Some(next(old).to_be_bytes().to_vec()))?;
        let v = self
            .counters
            .get(name)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        self.flush()?;
        Ok(v)
    }

    /// Every rollout, in id order.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, RegistryError> {
        self.rollouts
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                parse(&k, &v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshota_protocol::SecretKey;

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn an_unknown_key_is_pending_until_accepted_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::from_seed([1; 32]).public();
        {
            let r = Registry::open(dir.path()).unwrap();
            assert_eq!(r.admit(&dev("a"), k, false, 5).unwrap(), Admission::Pending);
            assert_eq!(r.admit(&dev("a"), k, false, 6).unwrap(), Admission::Pending);
            r.accept(&dev("a")).unwrap();
            assert_eq!(
                r.admit(&dev("a"), k, false, 7).unwrap(),
                Admission::Accepted
            );
        }
        let r = Registry::open(dir.path()).unwrap();
        let rec = r.device(&dev("a")).unwrap().unwrap();
        assert_eq!(rec.admission, Admission::Accepted);
        assert_eq!(rec.first_seen, 5);
    }

    #[test]
    fn an_accepted_device_is_not_rekeyed_by_a_login_with_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let k1 = SecretKey::from_seed([1; 32]).public();
        let k2 = SecretKey::from_seed([2; 32]).public();
        assert_eq!(
            r.admit(&dev("a"), k1, true, 1).unwrap(),
            Admission::Accepted
        );
        assert_eq!(r.admit(&dev("a"), k2, true, 2).unwrap(), Admission::Pending);
        assert_eq!(r.device(&dev("a")).unwrap().unwrap().public_key, k1);
    }

    #[test]
    fn event_history_is_bounded_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        for c in 0..(EVENTS_PER_DEVICE as u64 + 10) {
            let ev = EventRecord {
                counter: c,
                device_time: c,
                received_at: c,
                event: meshota_protocol::Event::Error {
                    code: "E".into(),
                    message: String::new(),
                    release: None,
                },
            };
            r.push_event(&dev("a"), &ev).unwrap();
        }
        let evs = r.events(&dev("a")).unwrap();
        assert_eq!(evs.len(), EVENTS_PER_DEVICE);
        assert_eq!(evs[0].counter, 10);
        assert_eq!(r.bump("x").unwrap(), 1);
        assert_eq!(r.bump("x").unwrap(), 2);
    }
}
