//! # meshota-protocol
//!
//! Everything two meshota parts must agree on, with no I/O beyond
//! `std::io::Read`/`Write`: no async runtime, no sockets, no clock. Time
//! always comes in as an argument (`now`, seconds since the Unix epoch).
//!
//! # Layout
//!
//! - [`ids`]: newtypes for every id. Digest ids (chunk, manifest, release,
//!   key) are BLAKE3-256 shown as hex; names (device, fleet, site …) are
//!   validated so they are safe inside MQTT topics.
//! - [`codec`]: the one CBOR codec. A versioned envelope, a size limit per
//!   message kind checked before decoding, and length-prefixed frames.
//! - [`chunking`]: FastCDC over any `Read`, BLAKE3 per chunk and per
//!   payload, and per-chunk zstd with capped decompression.
//! - [`manifest`]: the chunk list of a payload, its id, and a streaming
//!   payload verifier.
//! - [`trust`]: ed25519 keys, [`Signed`] documents that keep their signed
//!   bytes, and the [`TrustRoot`] with its `root`, `release` and `rollout`
//!   roles and root rotation.
//! - [`trust_chain`]: root rotations as devices receive them over the air.
//! - [`release`]: [`Release`] (offline-signed), [`RolloutGate`]
//!   (online-signed), [`Announcement`], [`Command`], and rollout bucketing.
//! - [`verify`]: full verification of announcements and commands, with a
//!   typed error and a stable code for every way to fail.
//! - [`telemetry`]: signed device status and events with replay counters.
//! - [`topics`]: every MQTT topic, built and parsed in one place.
//! - [`peer`]: messages of the `/meshota/chunks/1` peer protocol.
//! - [`bundle`]: the bundle file format, written and read as a stream.
//! - [`auth`]: short-lived device login tokens (the MQTT password).
#![warn(missing_docs)]

pub mod auth;
pub mod bundle;
pub mod chunking;
pub mod codec;
pub mod ids;
pub mod manifest;
pub mod peer;
pub mod release;
pub mod telemetry;
pub mod topics;
pub mod trust;
pub mod trust_chain;
pub mod verify;

#[cfg(test)]
mod tests;

pub use auth::{AuthError, DeviceToken};
pub use chunking::{ChunkerParams, Encoding, MAX_CHUNK_LEN};
pub use codec::{CodecError, Kind, Message};
pub use ids::{
    Channel, ChunkId, Compatible, DeviceId, FleetId, Group, IdError, KeyId, ManifestId,
    PayloadHash, ReleaseId, RolloutId, SiteId,
};
pub use manifest::{ChunkRef, InstallKind, Manifest, MAX_CHUNKS};
pub use peer::{Bitfield, PeerHint, PeerRequest, PeerResponse, MAX_HINT_ADDRS};
pub use release::{Action, Announcement, Command, CommandAction, Release, RolloutGate};
pub use semver;
pub use telemetry::{ByteSplit, Event, Report, ReportBody, SignedReport, Status, UpdateState};
pub use topics::Topic;
pub use trust::{PublicKey, Role, RoleKeys, SecretKey, Signed, TrustRoot};
pub use trust_chain::TrustChain;
pub use verify::{CheckedSignatures, DeviceContext, VerifiedAnnouncement, VerifyError};
