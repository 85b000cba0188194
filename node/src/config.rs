//! The device configuration: one TOML file, documented field by field in
//! `node/examples/node.toml`. Unknown fields are refused (a typo must not
//! silently fall back to a default), and every validation error names the
//! field and how to fix it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshota_protocol::{
    codec, Compatible, DeviceId, FleetId, Group, SecretKey, Signed, SiteId, TrustRoot,
};
use serde::Deserialize;

use crate::agent::driver::InhibitorSource;
use crate::agent::{AgentConfig, InhibitTimeout, Window, Windows};
use crate::install::command::{CommandBackend, Scripts};
use crate::install::dir::{DirBackend, HealthCommand};
use crate::install::rauc::RaucBackend;
use crate::install::{InstallBackend, InstallError};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a field has the wrong type or is unknown.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// A field holds an unusable value.
    #[error("config field `{field}`: {problem}; {fix}")]
    Invalid {
        /// Dotted field path.
        field: &'static str,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// The trust root or device key file is unusable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The install backend could not be set up.
    #[error("install backend: {0}")]
    Backend(#[from] InstallError),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who the device is.
    pub device: DeviceSection,
    /// The broker connection.
    pub mqtt: MqttSection,
    /// Where the trust root is.
    pub trust: TrustSection,
    /// Agent state, device key, chunk store, offline queue.
    pub data_dir: PathBuf,
    /// Peer-to-peer transfer.
    #[serde(default)]
    pub p2p: P2pSection,
    /// How updates are installed.
    #[serde(default)]
    pub install: InstallSection,
    /// The post-activation health check.
    #[serde(default)]
    pub health: HealthSection,
    /// When disruptive steps may start.
    #[serde(default)]
    pub maintenance: MaintenanceSection,
    /// What may hold an update back.
    #[serde(default)]
    pub inhibitor: InhibitorSection,
    /// How failed downloads are retried.
    #[serde(default)]
    pub fetch: FetchSection,
}

/// `[fetch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchSection {
    /// Attempts before the device gives up on a release (state `Failed`,
    /// reported); a newer announcement starts afresh.
    pub max_attempts: u32,
    /// Seconds before the first retry; doubles each time.
    pub retry_min_secs: u64,
    /// Longest wait between retries.
    pub retry_max_secs: u64,
}

impl Default for FetchSection {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_min_secs: 10,
            retry_max_secs: 600,
        }
    }
}

/// `[device]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// Device id, unique in the fleet.
    pub id: String,
    /// Fleet.
    pub fleet: String,
    /// Site (LAN) the device sits on.
    pub site: String,
    /// Device class releases must match.
    pub compatible: String,
    /// Rollout groups (for example `canary`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form tags reported in status.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Release channels to follow.
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
}

fn default_channels() -> Vec<String> {
    vec!["stable".into()]
}

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Username, if the broker wants one.
    pub username: Option<String>,
    /// File holding the password (kept out of the config file).
    pub password_file: Option<PathBuf>,
    /// CA certificate for `mqtts://`.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for brokers that authenticate
    /// devices by certificate (Mosquitto `require_certificate`, AWS IoT
    /// Core, EMQX); needs `client_key` and `mqtts://`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

/// `[trust]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    /// The self-signed trust root (`Signed<TrustRoot>`, codec-encoded).
    pub root: PathBuf,
}

/// `[p2p]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pSection {
    /// libp2p listen multiaddrs.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Serve chunks to peers.
    #[serde(default = "yes")]
    pub seed: bool,
    /// Upload cap in bytes per second; 0 = none.
    #[serde(default)]
    pub max_upload_bps: u64,
    /// Download cap in bytes per second; 0 = none.
    #[serde(default)]
    pub max_download_bps: u64,
    /// Under an upload cap, the most accepted uploads may wait before a
    /// new request is answered `Busy`, in milliseconds.
    #[serde(default = "default_upload_queue_ms")]
    pub upload_queue_ms: u64,
    /// Milliseconds between `Have` polls of a same-site neighbour that
    /// is gaining chunks.
    #[serde(default = "default_have_refresh_ms")]
    pub have_refresh_ms: u64,
    /// Longest a same-site neighbour that gains nothing goes un-asked, in
    /// milliseconds.
    #[serde(default = "default_have_refresh_max_ms")]
    pub have_refresh_max_ms: u64,
    /// Milliseconds between `Have` polls of a peer of another site.
    #[serde(default = "default_far_have_refresh_ms")]
    pub far_have_refresh_ms: u64,
    /// Milliseconds a device tells its site neighbours it is about to
    /// pull a chunk from another site, and listens for their claims,
    /// before it does; 0 pulls at once.
    #[serde(default = "default_claim_check_ms")]
    pub claim_check_ms: u64,
    /// Find LAN neighbours with mDNS.
    #[serde(default = "yes")]
    pub mdns: bool,
    /// Peers to dial at start (multiaddrs with `/p2p/<peer id>`), besides
    /// the seeders each announcement names.
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            seed: true,
            max_upload_bps: 0,
            max_download_bps: 0,
            upload_queue_ms: default_upload_queue_ms(),
            have_refresh_ms: default_have_refresh_ms(),
            have_refresh_max_ms: default_have_refresh_max_ms(),
            far_have_refresh_ms: default_far_have_refresh_ms(),
            claim_check_ms: default_claim_check_ms(),
            mdns: true,
            bootstrap: Vec::new(),
        }
    }
}

// The poll intervals default to the scheduler's own, so the two cannot
// drift apart.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
fn default_have_refresh_ms() -> u64 {
    millis(crate::sched::SchedulerConfig::default().have_refresh)
}
fn default_have_refresh_max_ms() -> u64 {
    millis(crate::sched::SchedulerConfig::default().have_refresh_max)
}
fn default_far_have_refresh_ms() -> u64 {
    millis(crate::sched::SchedulerConfig::default().far_have_refresh)
}
fn default_claim_check_ms() -> u64 {
    millis(crate::sched::SchedulerConfig::default().claim_check)
}

fn default_upload_queue_ms() -> u64 {
    1500
}

fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4001".into()]
}
fn yes() -> bool {
    true
}

/// `[install]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallSection {
    /// `dir` (default), `command` or `rauc`.
    #[serde(default)]
    pub backend: BackendKind,
    /// Settings of the `dir` backend.
    #[serde(default)]
    pub dir: DirSection,
    /// Settings of the `command` backend.
    pub command: Option<CommandSection>,
    /// Settings of the `rauc` backend.
    #[serde(default)]
    pub rauc: RaucSection,
    /// Program and arguments that reboot the device, when a backend needs a
    /// reboot to switch slots.
    #[serde(default = "default_reboot")]
    pub reboot_command: Vec<String>,
}

impl Default for InstallSection {
    fn default() -> Self {
        Self {
            backend: BackendKind::default(),
            dir: DirSection::default(),
            command: None,
            rauc: RaucSection::default(),
            reboot_command: default_reboot(),
        }
    }
}

fn default_reboot() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}

/// Which backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// A/B directories and a symlink.
    #[default]
    Dir,
    /// User scripts.
    Command,
    /// RAUC.
    Rauc,
}

/// `[install.dir]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSection {
    /// Root holding `slots/a`, `slots/b` and `current`; default `<data_dir>/root`.
    pub root: Option<PathBuf>,
}

/// `[install.command]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSection {
    /// Writes the inactive slot. Required.
    pub install: PathBuf,
    /// Switches slots.
    pub activate: Option<PathBuf>,
    /// Health check (overrides `[health] command`).
    pub health: Option<PathBuf>,
    /// Makes the new slot permanent.
    pub commit: Option<PathBuf>,
    /// Returns to the previous slot.
    pub rollback: Option<PathBuf>,
    /// Prints the real slot state.
    pub status: Option<PathBuf>,
    /// Deadline per script, seconds.
    #[serde(default = "default_step_timeout")]
    pub timeout_secs: u64,
    /// Whether `activate` needs a reboot to take effect.
    #[serde(default)]
    pub reboot_after_activate: bool,
}

fn default_step_timeout() -> u64 {
    1800
}

/// `[install.rauc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaucSection {
    /// The `rauc` program.
    #[serde(default = "default_rauc")]
    pub binary: PathBuf,
    /// Deadline per `rauc` call, seconds.
    #[serde(default = "default_step_timeout")]
    pub timeout_secs: u64,
}

impl Default for RaucSection {
    fn default() -> Self {
        Self {
            binary: default_rauc(),
            timeout_secs: default_step_timeout(),
        }
    }
}

fn default_rauc() -> PathBuf {
    "rauc".into()
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Program run after activation; exit 0 means healthy.
    pub command: Option<PathBuf>,
    /// Its arguments (the slot path is appended).
    #[serde(default)]
    pub args: Vec<String>,
    /// Seconds before an unanswered check counts as failed.
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
    /// Boots into a trial slot before an automatic rollback.
    #[serde(default = "default_trial_boots")]
    pub max_trial_boots: u32,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            command: None,
            args: Vec::new(),
            timeout_secs: default_health_timeout(),
            max_trial_boots: default_trial_boots(),
        }
    }
}

fn default_health_timeout() -> u64 {
    300
}
fn default_trial_boots() -> u32 {
    3
}

/// `[maintenance]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSection {
    /// Daily UTC windows like `02:00-04:00`; empty = any time.
    #[serde(default)]
    pub windows: Vec<Window>,
}

/// `[inhibitor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitorSection {
    /// Inhibited while this file exists.
    pub file: Option<PathBuf>,
    /// Inhibited while this program exits non-zero.
    pub command: Option<PathBuf>,
    /// Deadline for the command, seconds.
    #[serde(default = "default_inhibit_cmd_timeout")]
    pub command_timeout_secs: u64,
    /// Longest a step may be held back, seconds.
    #[serde(default = "default_max_inhibit")]
    pub max_inhibit_secs: u64,
    /// `fail` (give up the release) or `proceed` after `max_inhibit_secs`.
    #[serde(default)]
    pub on_timeout: InhibitTimeout,
}

impl Default for InhibitorSection {
    fn default() -> Self {
        Self {
            file: None,
            command: None,
            command_timeout_secs: default_inhibit_cmd_timeout(),
            max_inhibit_secs: default_max_inhibit(),
            on_timeout: InhibitTimeout::Fail,
        }
    }
}

fn default_inhibit_cmd_timeout() -> u64 {
    30
}
fn default_max_inhibit() -> u64 {
    86_400
}

fn invalid(field: &'static str, problem: impl ToString, fix: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.to_string(),
        fix,
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field and the fix.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates config text.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values serde cannot.
    ///
    /// # Errors
    /// The first [`ConfigError::Invalid`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        const NAME_FIX: &str = "use letters, digits, '-', '_' or '.'";
        DeviceId::new(&self.device.id).map_err(|e| invalid("device.id", e, NAME_FIX))?;
        FleetId::new(&self.device.fleet).map_err(|e| invalid("device.fleet", e, NAME_FIX))?;
        SiteId::new(&self.device.site).map_err(|e| invalid("device.site", e, NAME_FIX))?;
        Compatible::new(&self.device.compatible)
            .map_err(|e| invalid("device.compatible", e, NAME_FIX))?;
        for g in &self.device.groups {
            Group::new(g).map_err(|e| invalid("device.groups", e, NAME_FIX))?;
        }
        if self.fetch.max_attempts == 0 {
            return Err(invalid(
                "fetch.max_attempts",
                "is 0",
                "allow at least one attempt (the default is 8)",
            ));
        }
        if self.fetch.retry_min_secs == 0 || self.fetch.retry_min_secs > self.fetch.retry_max_secs {
            return Err(invalid(
                "fetch.retry_min_secs",
                format!(
                    "is {} with retry_max_secs {}",
                    self.fetch.retry_min_secs, self.fetch.retry_max_secs
                ),
                "use 1 <= retry_min_secs <= retry_max_secs",
            ));
        }
        for (field, v) in [
            ("p2p.have_refresh_ms", self.p2p.have_refresh_ms),
            ("p2p.far_have_refresh_ms", self.p2p.far_have_refresh_ms),
        ] {
            if v < 100 {
                return Err(invalid(
                    field,
                    format!("is {v}"),
                    "poll peers at most ten times a second: use 100 or more (milliseconds)",
                ));
            }
        }
        if self.device.channels.is_empty() {
            return Err(invalid(
                "device.channels",
                "is empty",
                "follow at least one channel, e.g. [\"stable\"]",
            ));
        }
        for c in &self.device.channels {
            meshota_protocol::Channel::new(c)
                .map_err(|e| invalid("device.channels", e, NAME_FIX))?;
        }
        if self.install.reboot_command.is_empty() {
            return Err(invalid(
                "install.reboot_command",
                "is empty",
                "set it to e.g. [\"systemctl\", \"reboot\"]",
            ));
        }
        let scheme = self.mqtt.url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("mqtt" | "mqtts" | "tcp" | "ssl")) {
            return Err(invalid(
                "mqtt.url",
                format!("{:?} has no mqtt:// or mqtts:// scheme", self.mqtt.url),
                "write it as mqtt://host:1883 or mqtts://host:8883",
            ));
        }
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            return Err(invalid(
                "mqtt.username",
                "a password_file is set without a username",
                "set mqtt.username or remove mqtt.password_file",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "is empty",
                "set it to a writable persistent directory such as /var/lib/meshota",
            ));
        }
        if self.health.timeout_secs == 0 {
            return Err(invalid(
                "health.timeout_secs",
                "is 0",
                "give the health check at least a few seconds",
            ));
        }
        if self.health.max_trial_boots == 0 {
            return Err(invalid(
                "health.max_trial_boots",
                "is 0",
                "allow at least one trial boot (default 3)",
            ));
        }
        if self.install.backend == BackendKind::Command && self.install.command.is_none() {
            return Err(invalid(
                "install.command",
                "backend = \"command\" but no [install.command] section",
                "add [install.command] with at least `install = \"/path/to/script\"`",
            ));
        }
        if self.inhibitor.file.is_some() && self.inhibitor.command.is_some() {
            return Err(invalid(
                "inhibitor",
                "both `file` and `command` are set",
                "keep one of inhibitor.file and inhibitor.command",
            ));
        }
        if self.inhibitor.max_inhibit_secs == 0 {
            return Err(invalid(
                "inhibitor.max_inhibit_secs",
                "is 0",
                "set how long an inhibitor may hold a step back, e.g. 86400",
            ));
        }
        Ok(())
    }

    /// The agent's view of this config.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for names that do not validate.
    pub fn agent_config(&self, root: TrustRoot) -> Result<AgentConfig, ConfigError> {
        const FIX: &str = "use letters, digits, '-', '_' or '.'";
        let d = &self.device;
        let mut a = AgentConfig::new(
            DeviceId::new(&d.id).map_err(|e| invalid("device.id", e, FIX))?,
            FleetId::new(&d.fleet).map_err(|e| invalid("device.fleet", e, FIX))?,
            SiteId::new(&d.site).map_err(|e| invalid("device.site", e, FIX))?,
            Compatible::new(&d.compatible).map_err(|e| invalid("device.compatible", e, FIX))?,
            root,
        );
        a.groups = d
            .groups
            .iter()
            .map(|g| Group::new(g).map_err(|e| invalid("device.groups", e, FIX)))
            .collect::<Result<_, _>>()?;
        a.tags = d.tags.clone();
        a.health_timeout = self.health.timeout_secs;
        a.max_trial_boots = self.health.max_trial_boots;
        a.windows = Windows(self.maintenance.windows.clone());
        a.inhibitor = self.inhibitor.file.is_some() || self.inhibitor.command.is_some();
        a.max_inhibit = self.inhibitor.max_inhibit_secs;
        a.on_inhibit_timeout = self.inhibitor.on_timeout;
        a.max_fetch_attempts = self.fetch.max_attempts;
        a.fetch_backoff_min = self.fetch.retry_min_secs;
        a.fetch_backoff_max = self.fetch.retry_max_secs;
        Ok(a)
    }

    /// The configured inhibitor, if any.
    pub fn inhibitor(&self) -> Option<InhibitorSource> {
        if let Some(f) = &self.inhibitor.file {
            return Some(InhibitorSource::File(f.clone()));
        }
        self.inhibitor
            .command
            .as_ref()
            .map(|c| InhibitorSource::Command {
                program: c.clone(),
                timeout: Duration::from_secs(self.inhibitor.command_timeout_secs),
            })
    }

    fn health_command(&self) -> Option<HealthCommand> {
        self.health.command.as_ref().map(|p| HealthCommand {
            program: p.clone(),
            args: self.health.args.clone(),
        })
    }

    /// Builds the configured install backend.
    ///
    /// # Errors
    /// [`ConfigError`] when it cannot be set up.
    pub fn backend(&self) -> Result<Box<dyn InstallBackend>, ConfigError> {
        let work = self.data_dir.join("install");
        Ok(match self.install.backend {
            BackendKind::Dir => {
                let root = self
                    .install
                    .dir
                    .root
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("root"));
                Box::new(DirBackend::new(root, self.health_command())?)
            }
            BackendKind::Command => {
                let c = self.install.command.as_ref().ok_or_else(|| {
                    invalid(
                        "install.command",
                        "missing",
                        "add an [install.command] section",
                    )
                })?;
                let scripts = Scripts {
                    install: c.install.clone(),
                    activate: c.activate.clone(),
                    health: c.health.clone().or_else(|| self.health.command.clone()),
                    commit: c.commit.clone(),
                    rollback: c.rollback.clone(),
                    status: c.status.clone(),
                };
                Box::new(CommandBackend::new(
                    scripts,
                    work,
                    Duration::from_secs(c.timeout_secs),
                    c.reboot_after_activate,
                )?)
            }
            BackendKind::Rauc => Box::new(RaucBackend::new(
                self.install.rauc.binary.clone(),
                work,
                Duration::from_secs(self.install.rauc.timeout_secs),
                self.health_command(),
            )?),
        })
    }

    /// Loads and checks the trust root, including its expiry.
    ///
    /// # Errors
    /// [`ConfigError::File`].
    pub fn trust_root(&self, now: u64) -> Result<TrustRoot, ConfigError> {
        let root = self.shipped_trust_root()?;
        root.check_expiry(now).map_err(|e| ConfigError::File {
            what: "trust root",
            path: self.trust.root.clone(),
            reason: e.to_string(),
        })?;
        Ok(root)
    }

    /// Loads the shipped trust root and checks its signatures, but not its
    /// expiry: a device that was offline past the root's expiry can still
    /// rotate to a newer root over the air, since rotation checks only the
    /// final root's expiry.
    ///
    /// # Errors
    /// [`ConfigError::File`].
    pub fn shipped_trust_root(&self) -> Result<TrustRoot, ConfigError> {
        let path = &self.trust.root;
        let err = |reason: String| ConfigError::File {
            what: "trust root",
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let signed: Signed<TrustRoot> = codec::decode(&bytes).map_err(|e| err(e.to_string()))?;
        TrustRoot::from_self_signed_any_time(&signed).map_err(|e| err(e.to_string()))
    }
}

/// File name of the device key in the data directory.
pub const DEVICE_KEY_FILE: &str = "device.key";

/// Loads the device key, creating it (mode 0600) on first start.
///
/// # Returns
/// The key and whether it was just created (print its public key then).
///
/// # Errors
/// [`ConfigError::File`] when the file cannot be read, parsed or written.
pub fn ensure_device_key(data_dir: &Path) -> Result<(SecretKey, bool), ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(DEVICE_KEY_FILE);
    let err = |reason: String| ConfigError::File {
        what: "device key",
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (_, key) = SecretKey::from_file(&text).map_err(|e| err(e.to_string()))?;
            return Ok((key, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    std::fs::create_dir_all(data_dir).map_err(|e| err(e.to_string()))?;
    let key = SecretKey::generate().map_err(|e| err(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(e.to_string()))?;
    f.write_all(key.to_file("device").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| err(e.to_string()))?;
    crate::install::fsync_dir(data_dir)?;
    Ok((key, true))
}

#[cfg(test)]
mod tests;
