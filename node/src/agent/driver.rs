//! A synchronous driver that executes an [`Agent`]'s actions against an
//! install backend, a store and a state file. The MQTT daemon, the tests
//! and the simulator all run the core through it; the transport-facing
//! parts (fetching, inhibitor, publishing) are traits so each can plug in
//! its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshota_protocol::{Manifest, ManifestId, ReleaseId, ReportBody};

use super::persist::{PersistError, StateFile};
use super::{Agent, AgentAction, AgentConfig, FetchProgress};
use crate::install::{proc, InstallBackend, InstallRequest};
use crate::store::Store;

/// Brings a release's manifest and chunks into the store. The p2p layer
/// implements this; tests put chunks in the store up front.
pub trait Fetcher: Send {
    /// Fetches until every chunk of the manifest is held and verified,
    /// calling `progress` as bytes arrive (the agent rate-limits the events).
    ///
    /// # Errors
    /// Why the fetch stopped, as text for telemetry.
    fn fetch(
        &mut self,
        req: FetchRequest<'_>,
        store: &dyn Store,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<(), String>;

    /// Stops a fetch started earlier (a no-op for a blocking fetcher).
    fn cancel(&mut self, _release: &ReleaseId) {}

    /// The peer id this fetcher is known by on the mesh, if any.
    fn peer_id(&self) -> Option<String> {
        None
    }
}

/// What to fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The release.
    pub release: &'a ReleaseId,
    /// Its manifest.
    pub manifest_id: &'a ManifestId,
    /// Seeders to bootstrap from.
    pub bootstrap: &'a [String],
    /// HTTP origin, if any.
    pub http_origin: Option<&'a str>,
}

/// A fetcher for when the chunks are already in the store (bundles
/// imported by hand, and tests): it only checks that they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreloadedFetcher;

impl Fetcher for PreloadedFetcher {
    fn fetch(
        &mut self,
        req: FetchRequest<'_>,
        store: &dyn Store,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<(), String> {
        let m = load_manifest(store, req.manifest_id)?;
        let held = store.held(&m).map_err(|e| e.to_string())?;
        let missing = (0..m.chunks.len()).filter(|i| !held.get(*i)).count();
        if missing > 0 {
            return Err(format!("{missing} of {} chunks missing", m.chunks.len()));
        }
        progress(FetchProgress {
            bytes: meshota_protocol::ByteSplit {
                local: m.payload_size,
                ..Default::default()
            },
            total: m.payload_size,
        });
        Ok(())
    }
}

/// Asks whether a disruptive step must wait.
pub trait Inhibitor: Send {
    /// `None` to go ahead, or the reason to wait.
    fn check(&mut self) -> Option<String>;
}

/// The configured inhibitor sources.
#[derive(Debug, Clone)]
pub enum InhibitorSource {
    /// Inhibited while this file exists; its content is the reason.
    File(PathBuf),
    /// Inhibited while this program exits non-zero (or runs past `timeout`);
    /// its output is the reason.
    Command {
        /// The program.
        program: PathBuf,
        /// Its deadline.
        timeout: Duration,
    },
}

impl Inhibitor for InhibitorSource {
    fn check(&mut self) -> Option<String> {
        match self {
            InhibitorSource::File(p) => match std::fs::read_to_string(&*p) {
                Ok(s) if s.trim().is_empty() => Some(format!("{} exists", p.display())),
                Ok(s) => Some(s.trim().chars().take(256).collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => Some(format!("{}: {e}", p.display())),
            },
            InhibitorSource::Command { program, timeout } => {
                proc::run(std::process::Command::new(&*program), *timeout)
                    .err()
                    .map(|e| e.to_string())
            }
        }
    }
}

/// Where reports go (the MQTT driver signs and sends them).
pub trait Reporter: Send {
    /// Queues a report for publishing.
    fn publish(&mut self, body: ReportBody);

    /// Asks the transport to fetch retained announcements again
    /// (`check-now`); a no-op where there is nothing to re-read.
    fn resync(&mut self) {}
}

impl Reporter for Vec<ReportBody> {
    fn publish(&mut self, body: ReportBody) {
        self.push(body);
    }
}

/// The clock the driver reads; tests pass a fixed or stepped one.
pub trait Clock: Send {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The state could not be persisted; nothing after it was executed.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// How a run of [`LocalDriver::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// No work left until `poll_timeout` or a new input.
    Idle,
    /// The backend needs a reboot; the caller reboots (or, in tests,
    /// starts a new driver from the same data directory).
    Reboot,
    /// Stopped after the requested number of actions (crash injection).
    Stopped,
}

fn load_manifest(store: &dyn Store, id: &ManifestId) -> Result<Manifest, String> {
    let bytes = store
        .get_manifest(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("manifest {id} is not in the store"))?;
    let (got, m) = Manifest::decode(&bytes).map_err(|e| e.to_string())?;
    if &got != id {
        return Err(format!("stored manifest hashes to {got}, not {id}"));
    }
    Ok(m)
}

/// Executes an agent's actions in order, synchronously.
pub struct LocalDriver {
    /// The decision core.
    pub agent: Agent,
    backend: Box<dyn InstallBackend>,
    store: Arc<dyn Store>,
    state_file: StateFile,
    fetcher: Box<dyn Fetcher>,
    inhibitor: Option<Box<dyn Inhibitor>>,
    reporter: Box<dyn Reporter>,
}

impl std::fmt::Debug for LocalDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDriver")
            .field("agent", &self.agent)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

/// The parts a [`LocalDriver`] drives.
pub struct DriverParts {
    /// The install backend.
    pub backend: Box<dyn InstallBackend>,
    /// The chunk store.
    pub store: Arc<dyn Store>,
    /// The data directory (holds the state file).
    pub data_dir: PathBuf,
    /// The fetcher.
    pub fetcher: Box<dyn Fetcher>,
    /// The inhibitor, if configured.
    pub inhibitor: Option<Box<dyn Inhibitor>>,
    /// Where reports go.
    pub reporter: Box<dyn Reporter>,
}

impl LocalDriver {
    /// Loads the persisted state (a corrupt file is set aside and reported),
    /// reads the real slot state and reconciles: the start of every run.
    ///
    /// # Errors
    /// [`DriverError`] when the state file cannot be read or written.
    pub fn start(
        mut cfg: AgentConfig,
        mut parts: DriverParts,
        now: u64,
    ) -> Result<Self, DriverError> {
        cfg.peer_id = cfg.peer_id.or_else(|| parts.fetcher.peer_id());
        let state_file = StateFile::new(&parts.data_dir)?;
        let (state, corrupt) = state_file.load_or_recover()?;
        let mut agent = Agent::new(cfg, state);
        if let Some(reason) = corrupt {
            agent.error("E_STATE_CORRUPT", reason, None);
        }
        match parts.backend.status() {
            Ok(st) => agent.handle_boot(st, now),
            Err(e) => {
                agent.error("E_BACKEND_STATUS", e.to_string(), None);
                agent.handle_boot(Default::default(), now);
            }
        }
        parts.inhibitor = parts.inhibitor.filter(|_| agent.config().inhibitor);
        Ok(Self {
            agent,
            backend: parts.backend,
            store: parts.store,
            state_file,
            fetcher: parts.fetcher,
            inhibitor: parts.inhibitor,
            reporter: parts.reporter,
        })
    }

    /// The backend, for inspection.
    pub fn backend(&mut self) -> &mut dyn InstallBackend {
        self.backend.as_mut()
    }

    /// Executes actions until none is left, a reboot is needed, or
    /// `max_actions` have run (to inject a crash at every point).
    ///
    /// # Errors
    /// [`DriverError`] when persisting fails; nothing later is executed.
    pub fn run(&mut self, now: u64, max_actions: Option<usize>) -> Result<RunOutcome, DriverError> {
        self.run_clocked(&|| now, max_actions)
    }

    /// As [`LocalDriver::run`], reading `clock` before each action, so the
    /// results of a long install or health check carry the time they ended.
    ///
    /// # Errors
    /// [`DriverError`] when persisting fails; nothing later is executed.
    pub fn run_clocked(
        &mut self,
        clock: &dyn Fn() -> u64,
        max_actions: Option<usize>,
    ) -> Result<RunOutcome, DriverError> {
        let mut done = 0usize;
        while let Some(action) = self.agent.poll_action() {
            if max_actions.is_some_and(|m| done >= m) {
                return Ok(RunOutcome::Stopped);
            }
            done += 1;
            if self.execute(action, clock)? {
                return Ok(RunOutcome::Reboot);
            }
        }
        Ok(RunOutcome::Idle)
    }

    /// Executes one action outside [`LocalDriver::run`], for tests that
    /// hold some actions back.
    #[cfg(test)]
    pub(crate) fn execute_for_test(&mut self, action: AgentAction, now: u64) {
        let _ = self.execute(action, &|| now);
    }

    /// Executes one action; `true` when a reboot is requested.
    fn execute(
        &mut self,
        action: AgentAction,
        clock: &dyn Fn() -> u64,
    ) -> Result<bool, DriverError> {
        let now = clock();
        match action {
            AgentAction::Persist(s) => self.state_file.save(&s)?,
            AgentAction::Publish(body) => self.reporter.publish(body),
            AgentAction::Fetch {
                release,
                manifest_id,
                bootstrap,
                http_origin,
            } => {
                let req = FetchRequest {
                    release: &release,
                    manifest_id: &manifest_id,
                    bootstrap: &bootstrap,
                    http_origin: http_origin.as_deref(),
                };
                let agent = &mut self.agent;
                let r = self.fetcher.fetch(req, self.store.as_ref(), &mut |p| {
                    agent.handle_fetch_progress(p, clock());
                });
                self.agent.handle_fetch_done(r, clock());
            }
            AgentAction::CancelFetch { release } => self.fetcher.cancel(&release),
            AgentAction::CheckInhibitor => {
                let r = self.inhibitor.as_mut().and_then(|i| i.check());
                self.agent.handle_inhibitor(r, clock());
            }
            AgentAction::Install {
                release,
                manifest_id,
            } => {
                let r = load_manifest(self.store.as_ref(), &manifest_id).and_then(|m| {
                    let req = InstallRequest {
                        release,
                        manifest: &m,
                        store: self.store.as_ref(),
                    };
                    self.backend.install(&req).map_err(|e| e.to_string())
                });
                self.agent.handle_install_done(r, clock());
            }
            AgentAction::Activate { release } => {
                let r = self.backend.activate(&release).map_err(|e| e.to_string());
                self.agent.handle_activate_done(r, clock());
            }
            AgentAction::RunHealth { deadline, .. } => {
                let timeout = Duration::from_secs(deadline.saturating_sub(now).max(1));
                let (ok, detail) = match self.backend.health(timeout) {
                    Ok(out) => (true, out),
                    Err(e) => (false, e),
                };
                self.agent.handle_health_result(ok, detail, clock());
            }
            AgentAction::Commit { .. } => {
                let r = self.backend.commit().map_err(|e| e.to_string());
                self.agent.handle_commit_done(r, clock());
            }
            AgentAction::Rollback { .. } => {
                let r = self.backend.rollback().map_err(|e| e.to_string());
                self.agent.handle_rollback_done(r, clock());
            }
            AgentAction::PruneStore { keep } => {
                // Only disk space is at stake: a failure is logged, and the
                // next commit tries again.
                match crate::store::prune_to(&*self.store, &keep) {
                    Ok(gc) => tracing::info!(
                        removed_chunks = gc.removed_chunks,
                        removed_bytes = gc.removed_bytes,
                        kept_chunks = gc.kept_chunks,
                        "pruned the chunk store"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not prune the chunk store"),
                }
            }
            AgentAction::Reboot => return Ok(true),
            AgentAction::Resync => self.reporter.resync(),
        }
        Ok(false)
    }
}
