//! User scripts as the install mechanism, in the spirit of Mender update
//! modules and RAUC hooks.
//!
//! Every script is called as `<script> <step> <payload> <work-dir>`, with
//! the same in the environment (`MESHOTA_STEP`, `MESHOTA_PAYLOAD`,
//! `MESHOTA_WORK_DIR`) plus `MESHOTA_RELEASE` and `MESHOTA_VERSION` when
//! known. `<payload>` is the verified payload, reassembled from the store
//! into `<work-dir>/payload`; `<work-dir>` persists across steps and
//! reboots for the scripts' own bookkeeping.
//!
//! Only `install` is required. A missing `activate`, `commit` or
//! `rollback` script is a no-op; a missing `health` script passes. An
//! optional `status` script prints `slot=`, `release=`, `version=` and
//! `trial=0|1` lines, which make its output the source of truth on start.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshota_protocol::semver::Version;
use meshota_protocol::ReleaseId;

use super::{
    proc, Activation, HealthOutcome, InstallBackend, InstallError, InstallRequest, SlotStatus,
};

/// Scripts per step; `None` means the step does nothing.
#[derive(Debug, Clone, Default)]
pub struct Scripts {
    /// Writes the payload to the inactive slot. Required.
    pub install: PathBuf,
    /// Switches to the installed slot.
    pub activate: Option<PathBuf>,
    /// Checks the running system after activation.
    pub health: Option<PathBuf>,
    /// Makes the new slot permanent.
    pub commit: Option<PathBuf>,
    /// Returns to the previous slot.
    pub rollback: Option<PathBuf>,
    /// Prints the real slot state.
    pub status: Option<PathBuf>,
}

/// Runs user scripts for each step.
#[derive(Debug, Clone)]
pub struct CommandBackend {
    scripts: Scripts,
    work_dir: PathBuf,
    timeout: Duration,
    /// Set when `activate` should report that a reboot is needed.
    reboot_after_activate: bool,
    current: Option<(ReleaseId, Version)>,
}

impl CommandBackend {
    /// A backend running `scripts` with `work_dir` as their state
    /// directory, each step (but health) bounded by `timeout`.
    ///
    /// # Errors
    /// [`InstallError::Io`] when the work directory cannot be created.
    pub fn new(
        scripts: Scripts,
        work_dir: impl Into<PathBuf>,
        timeout: Duration,
        reboot_after_activate: bool,
    ) -> Result<Self, InstallError> {
        let work_dir = work_dir.into();
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| InstallError::io("create dir", &work_dir, e))?;
        Ok(Self {
            scripts,
            work_dir,
            timeout,
            reboot_after_activate,
            current: None,
        })
    }

    fn payload(&self) -> PathBuf {
        self.work_dir.join("payload")
    }

    fn command(&self, script: &PathBuf, step: &str) -> Command {
        let mut c = Command::new(script);
        c.arg(step)
            .arg(self.payload())
            .arg(&self.work_dir)
            .env("MESHOTA_STEP", step)
            .env("MESHOTA_PAYLOAD", self.payload())
            .env("MESHOTA_WORK_DIR", &self.work_dir);
        if let Some((r, v)) = &self.current {
            c.env("MESHOTA_RELEASE", r.to_string())
                .env("MESHOTA_VERSION", v.to_string());
        }
        c
    }

    fn step(&self, script: Option<&PathBuf>, step: &str) -> Result<String, InstallError> {
        match script {
            Some(s) => Ok(proc::run(self.command(s, step), self.timeout)?),
            None => Ok(String::new()),
        }
    }
}

/// Parses `key=value` lines from a status script.
fn parse_status(out: &str) -> SlotStatus {
    let mut st = SlotStatus::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "slot" if !v.is_empty() => st.active_slot = Some(v.to_string()),
            "release" => st.active_release = v.parse().ok(),
            "version" => st.active_version = Version::parse(v).ok(),
            "trial" => st.trial = v == "1" || v == "true",
            _ => {}
        }
    }
    st
}

impl InstallBackend for CommandBackend {
    fn name(&self) -> &'static str {
        "command"
    }

    fn status(&mut self) -> Result<SlotStatus, InstallError> {
        match &self.scripts.status {
            Some(s) => Ok(parse_status(&proc::run(
                self.command(s, "status"),
                self.timeout,
            )?)),
            None => Ok(SlotStatus::default()),
        }
    }

    fn install(&mut self, req: &InstallRequest<'_>) -> Result<String, InstallError> {
        self.current = Some((req.release, req.manifest.version.clone()));
        super::payload_to_file(req.manifest, req.store, &self.payload())?;
        let out = self.step(Some(&self.scripts.install.clone()), "install")?;
        // The script may name the slot it wrote on its last line of output.
        Ok(out
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("slot="))
            .unwrap_or("inactive")
            .to_string())
    }

    fn activate(&mut self, release: &ReleaseId) -> Result<Activation, InstallError> {
        if self.current.as_ref().is_none_or(|(r, _)| r != release) {
            self.current = None;
        }
        self.step(self.scripts.activate.as_ref(), "activate")?;
        Ok(if self.reboot_after_activate {
            Activation::RebootRequired
        } else {
            Activation::Live
        })
    }

    fn health(&mut self, timeout: Duration) -> HealthOutcome {
        match &self.scripts.health {
            Some(s) => proc::run(self.command(s, "health"), timeout).map_err(|e| e.to_string()),
            None => Ok("no health script configured".into()),
        }
    }

    fn commit(&mut self) -> Result<(), InstallError> {
        self.step(self.scripts.commit.as_ref(), "commit").map(drop)
    }

    fn rollback(&mut self) -> Result<Activation, InstallError> {
        self.step(self.scripts.rollback.as_ref(), "rollback")?;
        Ok(if self.reboot_after_activate {
            Activation::RebootRequired
        } else {
            Activation::Live
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse_and_unknown_keys_are_ignored() {
        let st = parse_status("slot=b\nversion=1.2.3\ntrial=1\nnoise\nother=x\n");
        assert_eq!(st.active_slot.as_deref(), Some("b"));
        assert_eq!(st.active_version, Some(Version::new(1, 2, 3)));
        assert!(st.trial);
        assert_eq!(st.active_release, None);
    }
}
