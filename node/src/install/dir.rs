//! The default backend: A/B slot directories under a root, and a `current`
//! symlink that is switched atomically.
//!
//! ```text
//! <root>/slots/a/payload     the payload as verified
//! <root>/slots/a/root/       an Archive (tar) payload, unpacked
//! <root>/slots/a/release     "<release id>\n<version>\n", written last:
//!                            a slot without it holds nothing
//! <root>/current -> slots/a  the active slot
//! <root>/trial               while on trial: the slot to fall back to
//! ```
//!
//! The switch creates `current.new` and renames it over `current`, then
//! fsyncs the root, so after power loss `current` names one slot or the
//! other, never neither.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshota_protocol::semver::Version;
use meshota_protocol::ReleaseId;

use super::{
    fsync_dir, proc, write_atomic, Activation, HealthOutcome, InstallBackend, InstallError,
    InstallRequest, SlotStatus,
};

const SLOTS: [&str; 2] = ["a", "b"];

/// A/B directories with an atomically switched symlink.
#[derive(Debug, Clone)]
pub struct DirBackend {
    root: PathBuf,
    health: Option<HealthCommand>,
}

/// A health check program and its deadline, shared by backends that have
/// no health mechanism of their own.
#[derive(Debug, Clone)]
pub struct HealthCommand {
    /// The program; it gets the active slot path as its argument.
    pub program: PathBuf,
    /// Extra arguments before the slot path.
    pub args: Vec<String>,
}

impl HealthCommand {
    /// Runs the check within `timeout`, passing `slot` as the last argument
    /// and in `MESHOTA_SLOT`.
    pub fn run(&self, slot: &Path, timeout: Duration) -> HealthOutcome {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args).arg(slot).env("MESHOTA_SLOT", slot);
        proc::run(cmd, timeout).map_err(|e| e.to_string())
    }
}

/// What a slot holds, as recorded beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecord {
    /// The release.
    pub release: ReleaseId,
    /// Its version.
    pub version: Version,
}

impl DirBackend {
    /// A backend rooted at `root` (created if missing).
    ///
    /// # Errors
    /// [`InstallError::Io`] when the slot directories cannot be created.
    pub fn new(
        root: impl Into<PathBuf>,
        health: Option<HealthCommand>,
    ) -> Result<Self, InstallError> {
        let root = root.into();
        for s in SLOTS {
            let p = root.join("slots").join(s);
            std::fs::create_dir_all(&p).map_err(|e| InstallError::io("create dir", &p, e))?;
        }
        Ok(Self { root, health })
    }

    /// Path of a slot directory.
    pub fn slot_path(&self, slot: &str) -> PathBuf {
        self.root.join("slots").join(slot)
    }

    /// The active slot name, if `current` exists.
    ///
    /// # Errors
    /// [`InstallError`] when `current` exists but does not name a slot.
    pub fn active(&self) -> Result<Option<&'static str>, InstallError> {
        let link = self.root.join("current");
        match std::fs::read_link(&link) {
            Ok(target) => {
                let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
                SLOTS
                    .into_iter()
                    .find(|s| *s == name)
                    .map(Some)
                    .ok_or_else(|| {
                        InstallError::State(format!(
                            "{} points at {}, not a slot; point it at slots/a or slots/b",
                            link.display(),
                            target.display()
                        ))
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(InstallError::io("read link", link, e)),
        }
    }

    fn inactive(&self) -> Result<&'static str, InstallError> {
        Ok(match self.active()? {
            Some("a") => "b",
            _ => "a",
        })
    }

    /// What a slot holds, if anything complete.
    ///
    /// # Errors
    /// [`InstallError::State`] for an unreadable record.
    pub fn record(&self, slot: &str) -> Result<Option<SlotRecord>, InstallError> {
        let path = self.slot_path(slot).join("release");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(InstallError::io("read", path, e)),
        };
        let mut lines = text.lines();
        let bad = |what: &str| InstallError::State(format!("{}: bad {what}", path.display()));
        let release = lines
            .next()
            .and_then(|l| l.parse::<ReleaseId>().ok())
            .ok_or_else(|| bad("release id"))?;
        let version = lines
            .next()
            .and_then(|l| Version::parse(l).ok())
            .ok_or_else(|| bad("version"))?;
        Ok(Some(SlotRecord { release, version }))
    }

    fn switch_to(&self, slot: &str) -> Result<(), InstallError> {
        let new = self.root.join("current.new");
        let _ = std::fs::remove_file(&new);
        let target = Path::new("slots").join(slot);
        std::os::unix::fs::symlink(&target, &new)
            .map_err(|e| InstallError::io("symlink", &new, e))?;
        let cur = self.root.join("current");
        std::fs::rename(&new, &cur).map_err(|e| InstallError::io("rename", cur, e))?;
        fsync_dir(&self.root)
    }

    fn trial_path(&self) -> PathBuf {
        self.root.join("trial")
    }

    fn trial_fallback(&self) -> Result<Option<String>, InstallError> {
        match std::fs::read_to_string(self.trial_path()) {
            Ok(t) => Ok(Some(t.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(InstallError::io("read", self.trial_path(), e)),
        }
    }

    fn clear_trial(&self) -> Result<(), InstallError> {
        match std::fs::remove_file(self.trial_path()) {
            Ok(()) => fsync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(InstallError::io("remove", self.trial_path(), e)),
        }
    }
}

impl InstallBackend for DirBackend {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn status(&mut self) -> Result<SlotStatus, InstallError> {
        let active = self.active()?;
        let rec = match active {
            Some(s) => self.record(s)?,
            None => None,
        };
        Ok(SlotStatus {
            active_slot: active.map(str::to_string),
            active_release: rec.as_ref().map(|r| r.release),
            active_version: rec.map(|r| r.version),
            trial: self
                .trial_fallback()?
                .is_some_and(|f| Some(f.as_str()) != active),
        })
    }

    fn install(&mut self, req: &InstallRequest<'_>) -> Result<String, InstallError> {
        let slot = self.inactive()?;
        let dir = self.slot_path(slot);
        // The record goes first so a half-written slot never claims a release.
        let rec = dir.join("release");
        match std::fs::remove_file(&rec) {
            Ok(()) => fsync_dir(&dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(InstallError::io("remove", rec, e)),
        }
        super::payload_to_file(req.manifest, req.store, &dir.join("payload"))?;
        if req.manifest.kind == meshota_protocol::InstallKind::Archive {
            super::archive::unpack_tar(&dir.join("payload"), &dir.join("root"))?;
        } else {
            // A tree from an earlier archive release must not outlive it.
            super::archive::remove_tree(&dir.join("root"))?;
        }
        let text = format!("{}\n{}\n", req.release, req.manifest.version);
        write_atomic(&rec, text.as_bytes())?;
        Ok(slot.to_string())
    }

    fn activate(&mut self, release: &ReleaseId) -> Result<Activation, InstallError> {
        let active = self.active()?;
        let target = SLOTS
            .into_iter()
            .find(|s| {
                self.record(s)
                    .ok()
                    .flatten()
                    .is_some_and(|r| &r.release == release)
            })
            .ok_or_else(|| InstallError::State(format!("no slot holds release {release}")))?;
        if active == Some(target) {
            // Already switched (a crash after the switch, before the agent noted it).
            return Ok(Activation::Live);
        }
        // The fallback is recorded before the switch so a crash in between
        // still knows where to return.
        let fallback = active.unwrap_or("");
        write_atomic(&self.trial_path(), fallback.as_bytes())?;
        self.switch_to(target)?;
        Ok(Activation::Live)
    }

    fn health(&mut self, timeout: Duration) -> HealthOutcome {
        let slot = match self.active() {
            Ok(Some(s)) => self.slot_path(s),
            Ok(None) => return Err("no active slot".into()),
            Err(e) => return Err(e.to_string()),
        };
        match &self.health {
            Some(h) => h.run(&slot, timeout),
            None => Ok("no health command configured".into()),
        }
    }

    fn commit(&mut self) -> Result<(), InstallError> {
        self.clear_trial()
    }

    fn rollback(&mut self) -> Result<Activation, InstallError> {
        let active = self.active()?;
        let back = match self.trial_fallback()? {
            Some(f) if SLOTS.contains(&f.as_str()) => Some(f),
            Some(_) => None, // there was nothing active before the trial
            None => match active {
                // An operator rollback after commit: the other slot, if complete.
                Some(a) => {
                    let other = if a == "a" { "b" } else { "a" };
                    if self.record(other)?.is_none() {
                        return Err(InstallError::State(format!(
                            "slot {other} holds no complete release to roll back to"
                        )));
                    }
                    Some(other.to_string())
                }
                None => None,
            },
        };
        match back {
            Some(slot) if Some(slot.as_str()) != active => self.switch_to(&slot)?,
            Some(_) => {}
            None => {
                let cur = self.root.join("current");
                match std::fs::remove_file(&cur) {
                    Ok(()) => fsync_dir(&self.root)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(InstallError::io("remove", cur, e)),
                }
            }
        }
        self.clear_trial()?;
        Ok(Activation::Live)
    }
}
