//! The RAUC backend: the meshota payload of a release is itself a RAUC
//! bundle (`InstallKind::File` whose content is a `.raucb`), so RAUC's
//! own X.509 signature check runs on top of meshota's ed25519 chain.
//!
//! Steps map to the `rauc` CLI, which talks to the RAUC service over D-Bus:
//! - install: reassemble the payload into `<work-dir>/bundle.raucb`,
//!   `rauc install` it, then `rauc status mark-active booted` so that
//!   writing the slot does not yet switch to it (gate action `install`);
//! - activate: `rauc status mark-active other`, then reboot;
//! - commit: `rauc status mark-good` (the booted slot);
//! - rollback: `rauc status mark-bad` (the booted slot) and
//!   `mark-active other`, then reboot;
//! - status: `rauc status --output-format=json` (the booted slot).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshota_protocol::ReleaseId;

use super::dir::HealthCommand;
use super::{
    proc, Activation, HealthOutcome, InstallBackend, InstallError, InstallRequest, SlotStatus,
};

/// Drives RAUC through its CLI.
#[derive(Debug, Clone)]
pub struct RaucBackend {
    rauc: PathBuf,
    work_dir: PathBuf,
    timeout: Duration,
    health: Option<HealthCommand>,
    env: Vec<(String, String)>,
}

impl RaucBackend {
    /// A backend calling `rauc` (a path or a name on `PATH`), keeping the
    /// reassembled bundle in `work_dir`; `timeout` bounds every call
    /// (an install of a large image needs minutes).
    ///
    /// # Errors
    /// [`InstallError::Io`] when the work directory cannot be created.
    pub fn new(
        rauc: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
        timeout: Duration,
        health: Option<HealthCommand>,
    ) -> Result<Self, InstallError> {
        let work_dir = work_dir.into();
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| InstallError::io("create dir", &work_dir, e))?;
        Ok(Self {
            rauc: rauc.into(),
            work_dir,
            timeout,
            health,
            env: Vec::new(),
        })
    }

    /// Adds an environment variable for every `rauc` call, for example
    /// `DBUS_SYSTEM_BUS_ADDRESS` to reach a RAUC service on a private bus.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Where the reassembled bundle is written.
    pub fn bundle_path(&self) -> PathBuf {
        self.work_dir.join("bundle.raucb")
    }

    fn rauc(&self, args: &[&str]) -> Result<String, InstallError> {
        let mut c = Command::new(&self.rauc);
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(proc::run(c, self.timeout)?)
    }
}

/// Reads the booted slot's bootname out of `rauc status --output-format=json`.
fn parse_booted(json: &str) -> Result<SlotStatus, InstallError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| InstallError::State(format!("rauc status is not JSON: {e}")))?;
    Ok(SlotStatus {
        active_slot: v.get("booted").and_then(|b| b.as_str()).map(str::to_string),
        ..SlotStatus::default()
    })
}

impl InstallBackend for RaucBackend {
    fn name(&self) -> &'static str {
        "rauc"
    }

    fn status(&mut self) -> Result<SlotStatus, InstallError> {
        parse_booted(&self.rauc(&["status", "--output-format=json"])?)
    }

    fn install(&mut self, req: &InstallRequest<'_>) -> Result<String, InstallError> {
        let bundle = self.bundle_path();
        super::payload_to_file(req.manifest, req.store, &bundle)?;
        let path = bundle.to_string_lossy().into_owned();
        self.rauc(&["install", &path])?;
        // RAUC marks the written slot primary; undo that until activation.
        // Best effort: with the noop bootloader the primary cannot be set.
        let _ = self.rauc(&["status", "mark-active", "booted"]);
        Ok("other".into())
    }

    fn activate(&mut self, _release: &ReleaseId) -> Result<Activation, InstallError> {
        self.rauc(&["status", "mark-active", "other"])?;
        Ok(Activation::RebootRequired)
    }

    fn health(&mut self, timeout: Duration) -> HealthOutcome {
        match &self.health {
            Some(h) => h.run(&self.work_dir, timeout),
            None => Ok("no health command configured".into()),
        }
    }

    fn commit(&mut self) -> Result<(), InstallError> {
        self.rauc(&["status", "mark-good"]).map(drop)
    }

    fn rollback(&mut self) -> Result<Activation, InstallError> {
        self.rauc(&["status", "mark-bad"])?;
        let _ = self.rauc(&["status", "mark-active", "other"]);
        Ok(Activation::RebootRequired)
    }
}

#[cfg(test)]
mod tests;
