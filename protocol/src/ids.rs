//! Identifier newtypes.
//!
//! Two families: 32-byte BLAKE3 digests (content addresses and key ids),
//! shown as lowercase hex, and topic-bound names (device, fleet, site …),
//! which end up inside MQTT topics and so must never carry a wildcard,
//! a level separator or NUL.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string could not become an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The hex form of a digest id was not 64 hex characters.
    #[error("{kind}: expected 64 hex characters, got {got:?}")]
    BadHex {
        /// Which id type was being parsed.
        kind: &'static str,
        /// The offending input, truncated for display.
        got: String,
    },
    /// A name was empty.
    #[error("{kind}: must not be empty")]
    Empty {
        /// Which id type was being parsed.
        kind: &'static str,
    },
    /// A name was longer than [`MAX_NAME_LEN`].
    #[error("{kind}: longer than {max} bytes")]
    TooLong {
        /// Which id type was being parsed.
        kind: &'static str,
        /// The limit.
        max: usize,
    },
    /// A name held a character that is unsafe inside an MQTT topic.
    #[error("{kind}: character {ch:?} is not allowed (no '/', '+', '#', NUL, whitespace or control characters)")]
    BadChar {
        /// Which id type was being parsed.
        kind: &'static str,
        /// The first offending character.
        ch: char,
    },
}

/// Longest accepted topic-bound name, in bytes. Keeps topics and
/// registries bounded whatever a client sends.
pub const MAX_NAME_LEN: usize = 128;

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw digest bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// The BLAKE3 digest of `data`.
            pub fn digest(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }
            /// A short prefix for logs.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdError::BadHex {
                    kind: stringify!($name),
                    got: s.chars().take(80).collect(),
                })?;
                Ok(Self(out))
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
                    let arr: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                        serde::de::Error::invalid_length(b.len(), &"32 bytes")
                    })?;
                    Ok(Self(arr))
                }
            }
        }
    };
}

digest_id!(
    /// BLAKE3 of a chunk's raw (uncompressed) bytes.
    ChunkId
);
digest_id!(
    /// BLAKE3 of a manifest's canonical encoding.
    ManifestId
);
digest_id!(
    /// BLAKE3 of a release's signed bytes.
    ReleaseId
);
digest_id!(
    /// BLAKE3 of a whole payload.
    PayloadHash
);
digest_id!(
    /// BLAKE3 of an ed25519 public key.
    KeyId
);
digest_id!(
    /// Identifies a staged rollout in the control plane.
    RolloutId
);

/// Checks that `s` may stand as one MQTT topic level and as a registry key.
pub fn check_name(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(IdError::TooLong {
            kind,
            max: MAX_NAME_LEN,
        });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_whitespace() || c.is_control())
    {
        return Err(IdError::BadChar { kind, ch });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            ///
            /// # Errors
            /// [`IdError`] when the name is empty, too long, or holds a
            /// character unsafe in a topic.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_name(stringify!($name), &s)?;
                Ok(Self(s))
            }
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A device's identity inside its fleet. Also its MQTT username.
    DeviceId
);
name_id!(
    /// A fleet: one namespace of devices, releases and rollouts.
    FleetId
);
name_id!(
    /// A site (a LAN, a depot, a factory): peers on one site share an uplink.
    SiteId
);
name_id!(
    /// A device class; a release installs only where it matches.
    Compatible
);
name_id!(
    /// A release channel such as `stable` or `beta`.
    Channel
);
name_id!(
    /// A named target group such as `canary`.
    Group
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ids_round_trip_through_hex() {
        let id = ChunkId::digest(b"hello");
        let parsed: ChunkId = id.to_string().parse().unwrap();
        assert_eq!(id, parsed);
        assert_eq!(id.to_string().len(), 64);
    }

    #[test]
    fn digest_ids_reject_bad_hex() {
        assert!(matches!(
            "zz".parse::<ManifestId>(),
            Err(IdError::BadHex { .. })
        ));
        assert!("ab".repeat(31).parse::<ReleaseId>().is_err());
    }

    #[test]
    fn names_reject_topic_wildcards_separators_nul_and_empty() {
        for bad in ["", "a/b", "a+", "#", "x\0y", "sp ace", "tab\t"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(DeviceId::new("x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert_eq!(DeviceId::new("rpi-0042").unwrap().as_str(), "rpi-0042");
    }

    #[test]
    fn names_are_validated_when_deserialized() {
        let bytes = serde_cbor::to_vec(&"bad/name").unwrap();
        assert!(serde_cbor::from_slice::<SiteId>(&bytes).is_err());
    }
}
