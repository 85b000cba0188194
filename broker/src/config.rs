//! The broker deployment's configuration: a TOML file (see
//! `broker/examples/broker.toml`) whose every field the binary's flags can
//! override, and the secrets created in the data directory at first start.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meshota_protocol::{codec, FleetId, SecretKey, Signed, TrustChain, TrustRoot};
use serde::Deserialize;

/// MQTT username the control plane (and only it) logs in with.
pub const CONTROL_USER: &str = "$meshota-control";
/// File in the data directory holding the control plane's MQTT password.
pub const CONTROL_PASSWORD_FILE: &str = "control-password";
/// File in the data directory holding the operator's HTTP bearer token.
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse.
    #[error("config {path}: {reason}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A value is not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate chain and private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Everything the broker deployment needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Registry, origin store, secrets and temporary uploads live here.
    pub data_dir: PathBuf,
    /// The fleet this deployment serves (the first topic level).
    pub fleet: FleetId,
    /// The self-signed trust root releases are verified against: the
    /// codec bytes of a `Signed<TrustRoot>`, or the same as hex text.
    /// Without it, `POST /v1/releases` answers 503.
    pub trust: Option<PathBuf>,
    /// The chain of trust roots from the one devices shipped with to
    /// `trust` (`meshota keys rotate` writes it). The control plane
    /// publishes it retained on the fleet's trust topic, and devices
    /// rotate along it over the air.
    pub trust_chain: Option<PathBuf>,
    /// The online `rollout` secret key file (used by the rollout planner).
    pub rollout_key: Option<PathBuf>,
    /// MQTT 3.1.1 listener of the embedded broker (port 0 picks one).
    pub mqtt_listen: SocketAddr,
    /// MQTT 5 listener of the embedded broker, if wanted.
    pub mqtt5_listen: Option<SocketAddr>,
    /// TLS for the embedded broker's listeners.
    pub mqtt_tls: Option<TlsFiles>,
    /// Use this external broker (`mqtt://[user:pass@]host:port`) instead of
    /// embedding one. Device admission is then that broker's business.
    pub mqtt_url: Option<String>,
    /// HTTP API and origin listener (port 0 picks one).
    pub http_listen: SocketAddr,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub http_tls: Option<TlsFiles>,
    /// libp2p listen addresses for the origin seeder (stored; the seeder
    /// is wired in by the node crate's p2p module).
    pub p2p_listen: Vec<String>,
    /// Seconds the origin seeder withholds a chunk it has just served, so
    /// the fleet takes it from that first copy (0 turns it off).
    pub p2p_origin_dedup_secs: u64,
    /// Most simultaneous libp2p connections the origin seeder accepts.
    /// Devices keep one each: it is their way into the DHT, so a fleet
    /// larger than this has devices that find no providers.
    pub p2p_max_connections: u32,
    /// The origin seeder's upload limit in bytes per second (0: none), so
    /// it leaves room on an uplink it shares. Chunk answers go out one
    /// after another at this rate, and a request that would queue longer
    /// than 1.5 s is answered `Busy` (the device asks a peer, or again
    /// later), as on a device with `p2p.max_upload_bps`. Only chunk
    /// answers are paced; `Have`, manifest and DHT answers are not.
    pub p2p_max_upload_bps: u64,
    /// Accept every new device key on first sight (labs, simulator).
    pub auto_accept: bool,
    /// Serve `/metrics` without the operator token.
    pub open_metrics: bool,
    /// Serve the read-only API (`GET /v1/...`) without the operator token.
    pub open_reads: bool,
    /// Most simultaneous MQTT connections; more are closed at accept,
    /// before rumqttd's own limit (which panics in some versions).
    pub max_connections: usize,
    /// Largest bundle `POST /v1/releases` accepts, in bytes.
    pub max_bundle_bytes: u64,
    /// Largest request body of every other endpoint, in bytes.
    pub max_request_bytes: usize,
    /// Milliseconds an HTTP client has to complete the TLS handshake and
    /// to send each request's headers; idle keep-alive connections are
    /// closed after the same time.
    pub http_header_timeout_ms: u64,
    /// Milliseconds an upload may pause between two pieces of its body.
    pub http_body_timeout_ms: u64,
    /// The HTTP origin's base URL as devices reach it (behind a proxy or a
    /// CDN), carried in announcements; default: the HTTP listener.
    pub public_url: Option<String>,
    /// libp2p multiaddrs (with `/p2p/<peer id>`) devices should dial for
    /// the origin seeder, carried in announcements; default: the seeder's
    /// own listen addresses.
    pub p2p_announce: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("meshota-data"),
            #[allow(clippy::expect_used)] // a constant, valid name
            fleet: FleetId::new("default").expect("valid fleet name"),
            trust: None,
            trust_chain: None,
            rollout_key: None,
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            mqtt5_listen: None,
            mqtt_tls: None,
            mqtt_url: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http_tls: None,
            p2p_listen: Vec::new(),
            p2p_origin_dedup_secs: 30,
            p2p_max_connections: 10_000,
            p2p_max_upload_bps: 0,
            auto_accept: false,
            open_metrics: false,
            open_reads: false,
            max_connections: 10_000,
            max_bundle_bytes: 8 << 30,
            max_request_bytes: 1 << 20,
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 30_000,
            public_url: None,
            p2p_announce: Vec::new(),
        }
    }
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Io`] or [`ConfigError::Toml`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        toml::from_str(&text).map_err(|e| ConfigError::Toml {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// A config for tests: everything on loopback port 0 under `data_dir`.
    pub fn for_tests(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_bundle_bytes: 1 << 30,
            ..Self::default()
        }
    }

    /// Loads the trust root, if configured, checking its self-signature
    /// and expiry at `now`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and what failed.
    pub fn load_trust(&self, now: u64) -> Result<Option<TrustRoot>, ConfigError> {
        let Some(path) = &self.trust else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(io(path))?;
        let bytes = match std::str::from_utf8(&bytes) {
            Ok(text) => hex::decode(text.trim()).unwrap_or(bytes),
            Err(_) => bytes,
        };
        let signed: Signed<TrustRoot> = codec::decode(&bytes)
            .map_err(|e| ConfigError::Invalid(format!("trust root {}: {e}", path.display())))?;
        TrustRoot::from_self_signed(&signed, now)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("trust root {}: {e}", path.display())))
    }

    /// Loads the trust chain, if configured, and checks that it verifies
    /// link by link from its first root and ends at `trust`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and what failed, including a chain
    /// without `trust` or one that ends elsewhere.
    pub fn load_trust_chain(
        &self,
        trust: Option<&TrustRoot>,
    ) -> Result<Option<(TrustChain, Vec<u8>)>, ConfigError> {
        let Some(path) = &self.trust_chain else {
            return Ok(None);
        };
        let bad =
            |why: String| ConfigError::Invalid(format!("trust chain {}: {why}", path.display()));
        let Some(trust) = trust else {
            return Err(bad("needs --trust (the newest trust.cbor) as well".into()));
        };
        let bytes = std::fs::read(path).map_err(io(path))?;
        let chain: TrustChain = codec::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        let first = chain
            .roots
            .first()
            .ok_or_else(|| bad("it lists no roots".into()))?;
        let first = TrustRoot::from_self_signed_any_time(first).map_err(|e| bad(e.to_string()))?;
        let last = chain
            .advance(&first)
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or(first);
        if &last != trust {
            return Err(bad(format!(
                "it ends at root v{} but --trust is v{}: pass the trust.cbor and trust-chain.cbor of the same rotation",
                last.version, trust.version
            )));
        }
        Ok(Some((chain, bytes)))
    }

    /// Loads the rollout key, if configured.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load_rollout_key(&self) -> Result<Option<SecretKey>, ConfigError> {
        let Some(path) = &self.rollout_key else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        SecretKey::from_file(&text)
            .map(|(_, k)| Some(k))
            .map_err(|e| ConfigError::Invalid(format!("rollout key {}: {e}", path.display())))
    }
}

/// Reads a secret from `dir/name`, creating it (32 random bytes as hex,
/// mode 0600) on first start.
///
/// # Errors
/// [`ConfigError`] when the file cannot be read or created.
pub fn load_or_create_secret(dir: &Path, name: &str) -> Result<String, ConfigError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ConfigError::Invalid(format!("no randomness for {name}: {e}")))?;
    let secret = hex::encode(raw);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(io(&path))?;
    f.write_all(secret.as_bytes()).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    Ok(secret)
}

/// Compares secrets in time independent of where they differ.
pub fn secret_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broker.toml");
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.fleet.as_str(), "acme");
        assert!(!c.auto_accept);
    }

    #[test]
    fn secrets_are_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(dir.path(), "s").unwrap();
        let b = load_or_create_secret(dir.path(), "s").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("s"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(secret_eq(&a, &b));
        assert!(!secret_eq(&a, "x"));
    }
}
