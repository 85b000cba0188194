//! Device admission tokens: the MQTT password a device presents.
//!
//! A device proves it holds its key by signing a short-lived
//! [`DeviceToken`] naming itself and that key. The broker checks the
//! signature against the key *inside* the token (so no device secret is
//! ever stored server-side), then decides admission by whether that key
//! is enrolled for the device. Tokens expire quickly, so a captured one is
//! worth little; the lifetime is capped at [`MAX_TTL`] whatever the issuer
//! asked for.
//!
//! Wire form: `hex(codec(Signed<DeviceToken>))`, used as the MQTT password
//! with the device id as the username.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Kind, Message};
use crate::ids::DeviceId;
use crate::trust::{PublicKey, SecretKey, Signed};

/// Longest lifetime a token may claim, in seconds. Longer ones are refused
/// even when correctly signed: a token is a login, not a credential.
pub const MAX_TTL: u64 = 24 * 3600;

/// Clock skew tolerated between device and broker, in seconds.
pub const CLOCK_SKEW: u64 = 120;

/// Longest password accepted, in characters, checked before any decoding.
pub const MAX_PASSWORD_LEN: usize = 2048;

/// What a device signs to log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceToken {
    /// The device logging in; must equal the MQTT username.
    pub device: DeviceId,
    /// The device's public key; the token is signed by its secret half.
    pub public_key: PublicKey,
    /// Seconds since the epoch when the token was made.
    pub issued_at: u64,
    /// Seconds since the epoch after which it is refused.
    pub expires_at: u64,
}

impl Message for DeviceToken {
    const KIND: Kind = Kind::DeviceToken;
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password is longer than [`MAX_PASSWORD_LEN`].
    #[error("token is {0} characters, above the {MAX_PASSWORD_LEN}-character limit")]
    TooLong(usize),
    /// The password is not hex.
    #[error("token is not hex")]
    NotHex,
    /// The bytes do not decode as a signed token.
    #[error("token does not decode: {0}")]
    Codec(#[from] CodecError),
    /// Not exactly one signature, or not by the key the token names.
    #[error("token signature does not verify against the key it names")]
    BadSignature,
    /// The token names another device than the MQTT username.
    #[error("token is for device {token:?}, but the username is {username:?}")]
    WrongDevice {
        /// Device in the token.
        token: String,
        /// The username presented.
        username: String,
    },
    /// Past its expiry (plus skew).
    #[error("token expired at {expires_at} (now {now})")]
    Expired {
        /// Its expiry.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// Issued in the future (beyond skew), or its lifetime exceeds [`MAX_TTL`].
    #[error("token validity {issued_at}..{expires_at} is not acceptable at {now} (at most {MAX_TTL} s, not in the future)")]
    BadValidity {
        /// When it claims to be issued.
        issued_at: u64,
        /// When it claims to expire.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// The token could not be encoded.
    #[error("token could not be encoded: {0}")]
    Encode(CodecError),
}

impl DeviceToken {
    /// Makes the MQTT password for `device`, valid from `now` for `ttl`
    /// seconds (capped at [`MAX_TTL`]).
    ///
    /// # Errors
    /// [`AuthError::Encode`] (not expected for any valid device id).
    pub fn issue(
        device: &DeviceId,
        key: &SecretKey,
        now: u64,
        ttl: u64,
    ) -> Result<String, AuthError> {
        let token = DeviceToken {
            device: device.clone(),
            public_key: key.public(),
            issued_at: now,
            expires_at: now.saturating_add(ttl.min(MAX_TTL)),
        };
        let signed = Signed::sign(&token, &[key]).map_err(AuthError::Encode)?;
        let bytes = codec::encode(&signed).map_err(AuthError::Encode)?;
        Ok(hex::encode(bytes))
    }

    /// Checks a password presented with `username` at time `now`, and
    /// returns the device and the key it proved it holds. Whether that key
    /// is enrolled is the caller's decision.
    ///
    /// # Errors
    /// [`AuthError`] naming the first check that failed.
    pub fn verify(
        password: &str,
        username: &str,
        now: u64,
    ) -> Result<(DeviceId, PublicKey), AuthError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(AuthError::TooLong(password.len()));
        }
        let bytes = hex::decode(password).map_err(|_| AuthError::NotHex)?;
        let signed: Signed<DeviceToken> = codec::decode(&bytes)?;
        let token = signed.decode_unverified()?;
        let [sig] = signed.signatures() else {
            return Err(AuthError::BadSignature);
        };
        if sig.key != token.public_key.id() || !token.public_key.verify(signed.body(), &sig.sig) {
            return Err(AuthError::BadSignature);
        }
        if token.device.as_str() != username {
            return Err(AuthError::WrongDevice {
                token: token.device.to_string(),
                username: username.chars().take(200).collect(),
            });
        }
        let bad_validity = token.expires_at < token.issued_at
            || token.expires_at - token.issued_at > MAX_TTL
            || token.issued_at > now.saturating_add(CLOCK_SKEW);
        if bad_validity {
            return Err(AuthError::BadValidity {
                issued_at: token.issued_at,
                expires_at: token.expires_at,
                now,
            });
        }
        if now > token.expires_at.saturating_add(CLOCK_SKEW) {
            return Err(AuthError::Expired {
                expires_at: token.expires_at,
                now,
            });
        }
        Ok((token.device, token.public_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::KeySignature;

    fn dev() -> DeviceId {
        DeviceId::new("rpi-1").unwrap()
    }

    #[test]
    fn a_fresh_token_verifies_and_names_its_device_and_key() {
        let k = SecretKey::from_seed([3; 32]);
        let pw = DeviceToken::issue(&dev(), &k, 1000, 300).unwrap();
        let (d, pk) = DeviceToken::verify(&pw, "rpi-1", 1100).unwrap();
        assert_eq!(d, dev());
        assert_eq!(pk, k.public());
    }

    #[test]
    fn expired_future_and_overlong_tokens_are_refused() {
        let k = SecretKey::from_seed([3; 32]);
        let pw = DeviceToken::issue(&dev(), &k, 1000, 300).unwrap();
        assert!(DeviceToken::verify(&pw, "rpi-1", 1300 + CLOCK_SKEW).is_ok());
        assert!(matches!(
            DeviceToken::verify(&pw, "rpi-1", 1301 + CLOCK_SKEW),
            Err(AuthError::Expired { .. })
        ));
        assert!(matches!(
            DeviceToken::verify(&pw, "rpi-1", 1000 - CLOCK_SKEW - 1),
            Err(AuthError::BadValidity { .. })
        ));
        // A hand-made token claiming a year of validity.
        let token = DeviceToken {
            device: dev(),
            public_key: k.public(),
            issued_at: 1000,
            expires_at: 1000 + 365 * 86400,
        };
        let pw = hex::encode(codec::encode(&Signed::sign(&token, &[&k]).unwrap()).unwrap());
        assert!(matches!(
            DeviceToken::verify(&pw, "rpi-1", 1001),
            Err(AuthError::BadValidity { .. })
        ));
    }

    #[test]
    fn a_token_for_another_username_or_signed_by_another_key_is_refused() {
        let k = SecretKey::from_seed([3; 32]);
        let pw = DeviceToken::issue(&dev(), &k, 1000, 300).unwrap();
        assert!(matches!(
            DeviceToken::verify(&pw, "rpi-2", 1000),
            Err(AuthError::WrongDevice { .. })
        ));
        // Names k's public key but is signed by another key.
        let other = SecretKey::from_seed([4; 32]);
        let token = DeviceToken {
            device: dev(),
            public_key: k.public(),
            issued_at: 1000,
            expires_at: 1300,
        };
        let mut signed = Signed::sign(&token, &[&other]).unwrap();
        let forged = KeySignature {
            key: k.public().id(),
            sig: other.sign(signed.body()).to_vec(),
        };
        let pw = hex::encode(codec::encode(&signed.clone()).unwrap());
        assert!(matches!(
            DeviceToken::verify(&pw, "rpi-1", 1000),
            Err(AuthError::BadSignature)
        ));
        signed.push_signature(forged);
        let pw = hex::encode(codec::encode(&signed).unwrap());
        assert!(matches!(
            DeviceToken::verify(&pw, "rpi-1", 1000),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn garbage_passwords_give_typed_errors() {
        assert!(matches!(
            DeviceToken::verify("zz", "x", 0),
            Err(AuthError::NotHex)
        ));
        assert!(matches!(
            DeviceToken::verify("00ff", "x", 0),
            Err(AuthError::Codec(_))
        ));
        assert!(matches!(
            DeviceToken::verify(&"0".repeat(MAX_PASSWORD_LEN + 2), "x", 0),
            Err(AuthError::TooLong(_))
        ));
    }
}
