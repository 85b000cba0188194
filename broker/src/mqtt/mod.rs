//! MQTT: the embedded broker and the control plane's client.

pub mod control;
pub mod embedded;
pub mod guard;
