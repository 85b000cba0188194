//! A network namespace joined to this one by a veth pair, so a node can
//! be cut off and reconnected by taking the link down and up (a real
//! partition: its TCP connections stall exactly as over a failed link).
//!
//! Needs root (CAP_NET_ADMIN) and `ip` from iproute2; [`NetNs::create`]
//! returns `None` when the machine cannot make one, and the caller skips
//! loudly.

use std::process::Command;

/// A namespace `name` whose end of the pair has `ns_ip`, reached from
/// here at `host_ip`; deleted (with the pair) on drop.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace and the link, both up. The subnet is derived
    /// from the process id so parallel test processes do not collide.
    pub fn create() -> Result<Self, String> {
        let id = std::process::id();
        let (a, b) = ((id >> 8) % 200 + 20, id % 250 + 1);
        let ns = Self {
            name: format!("mota-{id}"),
            host_if: format!("mh{id}"),
            host_ip: format!("10.{a}.{b}.1"),
            ns_ip: format!("10.{a}.{b}.2"),
        };
        let peer = format!("mn{id}");
        ip(&["netns", "add", &ns.name])?;
        // From here on, drop cleans up whatever was made.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/24", ns.ns_ip), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Takes the link down: nothing crosses until [`NetNs::restore`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).unwrap();
    }

    /// Brings the link back up (addresses and routes come back with it).
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]).unwrap();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it
        // ours; the explicit delete covers a half-made setup.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
