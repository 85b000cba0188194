//! Every MQTT topic meshota uses, built and parsed here and nowhere else.
//!
//! ```text
//! meshota/v1/{fleet}/announce/{compatible}/{channel}   retained, signed announcement
//! meshota/v1/{fleet}/devices/{device}/status            retained, signed status (also the last will)
//! meshota/v1/{fleet}/devices/{device}/events            signed events
//! meshota/v1/{fleet}/devices/{device}/cmd               signed commands to the device
//! meshota/v1/{fleet}/trust                              retained trust-root chain (root rotations)
//! ```
//!
//! Every variable segment is a validated name type, so no topic can carry
//! a wildcard or an extra level.

use std::fmt;

use crate::ids::{Channel, Compatible, DeviceId, FleetId, IdError};

const PREFIX: &str = "meshota/v1";

/// A concrete topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Where releases for a device class and channel are announced.
    Announce {
        /// Fleet.
        fleet: FleetId,
        /// Device class.
        compatible: Compatible,
        /// Channel.
        channel: Channel,
    },
    /// A device's retained status.
    Status {
        /// Fleet.
        fleet: FleetId,
        /// Device.
        device: DeviceId,
    },
    /// A device's events.
    Events {
        /// Fleet.
        fleet: FleetId,
        /// Device.
        device: DeviceId,
    },
    /// Commands to a device.
    Cmd {
        /// Fleet.
        fleet: FleetId,
        /// Device.
        device: DeviceId,
    },
    /// The fleet's retained chain of trust roots.
    Trust {
        /// Fleet.
        fleet: FleetId,
    },
}

/// Why a topic string is not a meshota topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Wrong prefix, level count or keyword.
    #[error("not a meshota topic: {0:?}")]
    Unknown(String),
    /// A segment is not a valid name.
    #[error("bad segment in topic: {0}")]
    BadSegment(#[from] IdError),
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Announce {
                fleet,
                compatible,
                channel,
            } => write!(f, "{PREFIX}/{fleet}/announce/{compatible}/{channel}"),
            Topic::Status { fleet, device } => {
                write!(f, "{PREFIX}/{fleet}/devices/{device}/status")
            }
            Topic::Events { fleet, device } => {
                write!(f, "{PREFIX}/{fleet}/devices/{device}/events")
            }
            Topic::Cmd { fleet, device } => write!(f, "{PREFIX}/{fleet}/devices/{device}/cmd"),
            Topic::Trust { fleet } => write!(f, "{PREFIX}/{fleet}/trust"),
        }
    }
}

impl Topic {
    /// Parses a topic string.
    ///
    /// # Errors
    /// [`TopicError`] for anything that is not exactly one of our topics.
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        let unknown = || TopicError::Unknown(s.chars().take(200).collect());
        let rest = s
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(unknown)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [fleet, "announce", compatible, channel] => Ok(Topic::Announce {
                fleet: FleetId::new(*fleet)?,
                compatible: Compatible::new(*compatible)?,
                channel: Channel::new(*channel)?,
            }),
            [fleet, "trust"] => Ok(Topic::Trust {
                fleet: FleetId::new(*fleet)?,
            }),
            [fleet, "devices", device, leaf] => {
                let fleet = FleetId::new(*fleet)?;
                let device = DeviceId::new(*device)?;
                match *leaf {
                    "status" => Ok(Topic::Status { fleet, device }),
                    "events" => Ok(Topic::Events { fleet, device }),
                    "cmd" => Ok(Topic::Cmd { fleet, device }),
                    _ => Err(unknown()),
                }
            }
            _ => Err(unknown()),
        }
    }

    /// Whether messages on this topic are published retained.
    pub fn retained(&self) -> bool {
        matches!(
            self,
            Topic::Announce { .. } | Topic::Status { .. } | Topic::Trust { .. }
        )
    }
}

/// Subscription filters for the control plane and tools.
pub mod filters {
    use super::PREFIX;
    use crate::ids::FleetId;

    /// Every device status in a fleet.
    pub fn all_status(fleet: &FleetId) -> String {
        format!("{PREFIX}/{fleet}/devices/+/status")
    }
    /// Every device event stream in a fleet.
    pub fn all_events(fleet: &FleetId) -> String {
        format!("{PREFIX}/{fleet}/devices/+/events")
    }
    /// Every announcement in a fleet.
    pub fn all_announce(fleet: &FleetId) -> String {
        format!("{PREFIX}/{fleet}/announce/+/+")
    }
    /// Every device topic (for broker ACL patterns and debugging).
    pub fn everything(fleet: &FleetId) -> String {
        format!("{PREFIX}/{fleet}/#")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> FleetId {
        FleetId::new("acme").unwrap()
    }
    fn d() -> DeviceId {
        DeviceId::new("rpi-7").unwrap()
    }

    #[test]
    fn every_topic_round_trips() {
        let topics = [
            Topic::Announce {
                fleet: f(),
                compatible: Compatible::new("rpi4").unwrap(),
                channel: Channel::new("stable").unwrap(),
            },
            Topic::Status {
                fleet: f(),
                device: d(),
            },
            Topic::Events {
                fleet: f(),
                device: d(),
            },
            Topic::Cmd {
                fleet: f(),
                device: d(),
            },
            Topic::Trust { fleet: f() },
        ];
        for t in topics {
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }
        assert_eq!(
            Topic::Status {
                fleet: f(),
                device: d()
            }
            .to_string(),
            "meshota/v1/acme/devices/rpi-7/status"
        );
    }

    #[test]
    fn foreign_and_malformed_topics_are_refused() {
        for bad in [
            "",
            "meshota/v1",
            "meshota/v2/acme/devices/x/status",
            "meshota/v1/acme/devices/x/other",
            "meshota/v1/acme/devices/x/status/extra",
            "meshota/v1/acme/devices//status",
            "meshota/v1/acme/announce/rpi4",
            "meshota/v1/+/devices/x/status",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad:?}");
        }
    }
}
