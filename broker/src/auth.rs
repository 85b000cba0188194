//! MQTT admission for the embedded broker.
//!
//! Two kinds of client may log in:
//! - the control plane, as [`CONTROL_USER`] with the random password kept
//!   in the data directory;
//! - devices, with username = device id, client id = device id, and a
//!   [`DeviceToken`] as password. The token proves the device holds the
//!   key it names; the device is let in only if that key is enrolled
//!   (accepted) in the registry. An unknown key is recorded as pending,
//!   and refused until an operator accepts it (or at once accepted, with
//!   `auto_accept`).
//!
//! The handler holds the registry weakly: rumqttd's threads cannot be
//! stopped and keep the handler for the life of the process, so after
//! [`crate::server::Server::shutdown`] every login is refused and the
//! registry's sled database is released.

use std::sync::{Arc, Weak};

use meshota_protocol::{DeviceId, DeviceToken};

use crate::config::{secret_eq, CONTROL_USER};
use crate::registry::{Admission, Registry};

/// What a login attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The control plane.
    Control,
    /// An enrolled device.
    Device(DeviceId),
    /// A valid token for a key that is not (yet) accepted.
    Pending(DeviceId),
    /// Anything else, with the reason for the log.
    Refused(String),
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Control | Decision::Device(_))
    }
}

/// Decides MQTT logins. Cheap to clone into rumqttd's handler.
#[derive(Debug, Clone)]
pub struct Authenticator {
    registry: Weak<Registry>,
    control_password: Arc<str>,
    auto_accept: bool,
}

impl Authenticator {
    /// An authenticator over `registry` (held weakly).
    pub fn new(registry: &Arc<Registry>, control_password: &str, auto_accept: bool) -> Self {
        Self {
            registry: Arc::downgrade(registry),
            control_password: control_password.into(),
            auto_accept,
        }
    }

    /// Decides one login at time `now`.
    pub fn decide(&self, client_id: &str, username: &str, password: &str, now: u64) -> Decision {
        let refused = |why: String| Decision::Refused(why);
        if username == CONTROL_USER {
            return if secret_eq(password, &self.control_password) {
                Decision::Control
            } else {
                refused("wrong control-plane password".into())
            };
        }
        // `$`-names are reserved (MQTT uses them for broker topics, and we
        // for the control user): no device may take one.
        if username.starts_with('$') {
            return refused("reserved username".into());
        }
        // The client id is the session key in the broker: a device using
        // another's id would knock it off and could inherit its session.
        if client_id != username {
            return refused("client id must equal the device id".into());
        }
        let (device, key) = match DeviceToken::verify(password, username, now) {
            Ok(v) => v,
            Err(e) => return refused(e.to_string()),
        };
        let Some(registry) = self.registry.upgrade() else {
            return refused("control plane is shutting down".into());
        };
        match registry.admit(&device, key, self.auto_accept, now) {
            Ok(Admission::Accepted) => Decision::Device(device),
            Ok(Admission::Pending) => Decision::Pending(device),
            Err(e) => refused(format!("registry: {e}")),
        }
    }

    /// Installs this authenticator as rumqttd's handler on `conn`.
    pub fn install(&self, conn: &mut rumqttd::ConnectionSettings) {
        let this = self.clone();
        conn.set_auth_handler(
            move |client_id: String, username: String, password: String| {
                let this = this.clone();
                async move {
                    // sled is synchronous; keep it off rumqttd's accept loop.
                    let decided = tokio::task::spawn_blocking(move || {
                    let d = this.decide(&client_id, &username, &password, crate::now());
                    if !d.allowed() {
                        tracing::info!(client_id = %client_id, username = %username, decision = ?d, "MQTT login refused");
                    }
                    d
                })
                .await;
                    decided.is_ok_and(|d| d.allowed())
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshota_protocol::SecretKey;

    #[test]
    fn logins_are_decided_by_token_enrolment_and_control_password() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(Registry::open(dir.path()).unwrap());
        let auth = Authenticator::new(&reg, "s3cret", false);
        let k = SecretKey::from_seed([7; 32]);
        let dev = DeviceId::new("d1").unwrap();
        let pw = DeviceToken::issue(&dev, &k, 100, 60).unwrap();
        assert_eq!(
            auth.decide("d1", "d1", &pw, 100),
            Decision::Pending(dev.clone())
        );
        reg.accept(&dev).unwrap();
        assert_eq!(
            auth.decide("d1", "d1", &pw, 100),
            Decision::Device(dev.clone())
        );
        assert!(!auth.decide("other", "d1", &pw, 100).allowed());
        assert!(!auth.decide("d1", "d1", "garbage", 100).allowed());
        assert!(auth.decide("x", CONTROL_USER, "s3cret", 100).allowed());
        assert!(!auth.decide("x", CONTROL_USER, "nope", 100).allowed());
        drop(reg);
        assert!(!auth.decide("d1", "d1", &pw, 100).allowed());
    }
}
