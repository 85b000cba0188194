//! The operator's HTTP client for the broker deployment's API: what the
//! `meshota release …`, `meshota devices …` and `meshota fleet status`
//! subcommands call. Blocking (ureq): a CLI has nothing else to do.
//!
//! `http://` and `https://`: a self-signed server certificate is trusted
//! with [`Client::with_ca_cert`] (`--ca-cert` / `MESHOTA_CA_CERT`),
//! anything else against the system's roots ([`tls`]).

mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::registry::{DeviceRecord, ReleaseRecord};

/// Environment variable naming the server URL.
pub const ENV_SERVER: &str = "MESHOTA_SERVER";
/// Environment variable holding the operator token.
pub const ENV_TOKEN: &str = "MESHOTA_TOKEN";
/// Environment variable naming a PEM CA certificate to trust for HTTPS.
pub const ENV_CA_CERT: &str = "MESHOTA_CA_CERT";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The server's message (or body).
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server: {0}")]
    Transport(String),
    /// The TLS handshake failed (most often: an untrusted certificate), or
    /// the CA file is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The answer is not the expected JSON.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A command-line value is invalid (nothing was sent).
    #[error("{0}")]
    Usage(String),
    /// A local file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl crate::cli::Hint for ClientError {
    fn hint(&self) -> Option<String> {
        match self {
            ClientError::Status { status: 401, .. } => Some(format!(
                "pass --token or set {ENV_TOKEN} to the operator-token file in the broker's data directory"
            )),
            ClientError::Status {
                status: 422,
                message,
            } if message.starts_with("bundle") || message.starts_with("release expired") => Some(
                "check the bundle with `meshota bundle verify --trust TRUST BUNDLE` against the trust root the broker was started with".into(),
            ),
            ClientError::Tls(_) => Some(format!(
                "if the server uses a self-signed certificate, pass --ca-cert FILE or set {ENV_CA_CERT} to its PEM certificate (or its CA's)"
            )),
            ClientError::Transport(_) => Some(format!(
                "is meshota-broker running? pass --server or set {ENV_SERVER} (e.g. http://127.0.0.1:8080)"
            )),
            _ => None,
        }
    }
}

/// A client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Filters for [`Client::devices`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceQuery {
    /// Update state (`idle`, `downloading`, … or `unknown`).
    pub state: Option<String>,
    /// Installed version.
    pub version: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// `pending` or `accepted`.
    pub admission: Option<String>,
}

impl Client {
    /// A client for `base` (for example `http://127.0.0.1:8080`); an
    /// `https://` server must have a certificate the system trusts.
    pub fn new(base: &str, token: Option<String>) -> Self {
        // Without a CA file nothing can fail: unreadable system roots
        // surface as an untrusted certificate at the handshake.
        let connector = tls::Connector::new(None).ok();
        Self::build(base, token, connector)
    }

    /// As [`Client::new`], trusting the PEM certificates in `ca` (for
    /// example the server's own self-signed certificate) instead of the
    /// system's roots.
    ///
    /// # Errors
    /// [`ClientError::File`] or [`ClientError::Tls`] when `ca` is
    /// unreadable or holds no certificate.
    pub fn with_ca_cert(base: &str, token: Option<String>, ca: &Path) -> Result<Self, ClientError> {
        let connector = tls::Connector::new(Some(ca))?;
        Ok(Self::build(base, token, Some(connector)))
    }

    fn build(base: &str, token: Option<String>, tls: Option<tls::Connector>) -> Self {
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(300));
        if let Some(tls) = tls {
            agent = agent.tls_connector(Arc::new(tls));
        }
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: agent.build(),
        }
    }

    fn transport(e: &ureq::Error) -> ClientError {
        match tls::handshake_failure(e) {
            Some(msg) => ClientError::Tls(msg),
            None => ClientError::Transport(e.to_string()),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    fn answer<T: DeserializeOwned>(
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, ClientError> {
        match r {
            Ok(resp) => resp
                .into_json()
                .map_err(|e| ClientError::Decode(e.to_string())),
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                    .unwrap_or(body);
                Err(ClientError::Status { status, message })
            }
            Err(e) => Err(Self::transport(&e)),
        }
    }

    /// Uploads a bundle file (streamed, not read into memory).
    ///
    /// # Errors
    /// [`ClientError`]; a tampered bundle is a `Status { status: 422, .. }`.
    pub fn publish_release(&self, bundle: &Path) -> Result<ReleaseRecord, ClientError> {
        let file = std::fs::File::open(bundle).map_err(|source| ClientError::File {
            path: bundle.display().to_string(),
            source,
        })?;
        let sent = Self::answer(
            self.request("POST", "/v1/releases")
                .set("Content-Type", "application/octet-stream")
                .send(file),
        );
        match sent {
            // A server that refuses before reading the body (401, 413,
            // 503) answers and closes while we are still writing, so all
            // we see is a broken pipe. Ask again without a body to learn
            // the real answer; an empty bundle is never accepted.
            Err(ClientError::Transport(msg)) => {
                let probe: Result<Value, _> = Self::answer(
                    self.request("POST", "/v1/releases")
                        .set("Content-Type", "application/octet-stream")
                        .send_bytes(&[]),
                );
                match probe {
                    Err(
                        e @ ClientError::Status {
                            status: 401 | 403 | 413 | 503,
                            ..
                        },
                    ) => Err(e),
                    _ => Err(ClientError::Transport(msg)),
                }
            }
            other => other,
        }
    }

    /// Every release.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn releases(&self) -> Result<Vec<ReleaseRecord>, ClientError> {
        Self::answer(self.request("GET", "/v1/releases").call())
    }

    /// Devices matching `q`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn devices(&self, q: &DeviceQuery) -> Result<Vec<DeviceRecord>, ClientError> {
        let mut r = self.request("GET", "/v1/devices");
        for (k, v) in [
            ("state", &q.state),
            ("version", &q.version),
            ("site", &q.site),
            ("admission", &q.admission),
        ] {
            if let Some(v) = v {
                r = r.query(k, v);
            }
        }
        Self::answer(r.call())
    }

    /// Accepts a pending device.
    ///
    /// # Errors
    /// [`ClientError`]; an unknown device is a `Status { status: 404, .. }`.
    pub fn accept_device(&self, id: &str) -> Result<DeviceRecord, ClientError> {
        Self::answer(
            self.request("POST", &format!("/v1/devices/{id}/accept"))
                .call(),
        )
    }

    /// Enrols a device with its public key (accepted at once).
    ///
    /// # Errors
    /// [`ClientError`]; another key already accepted is a `409`.
    pub fn enroll_device(&self, id: &str, public_key: &str) -> Result<DeviceRecord, ClientError> {
        Self::answer(
            self.request("POST", &format!("/v1/devices/{id}/enroll"))
                .send_json(serde_json::json!({ "public_key": public_key })),
        )
    }

    /// The fleet summary, as JSON.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn fleet(&self) -> Result<Value, ClientError> {
        Self::answer(self.request("GET", "/v1/fleet").call())
    }

    /// Creates a rollout.
    ///
    /// # Errors
    /// [`ClientError`]; an invalid spec is a `Status { status: 422, .. }`,
    /// a live rollout on the same topic a `409`.
    pub fn create_rollout(
        &self,
        req: &crate::rollouts::CreateRollout,
    ) -> Result<crate::rollouts::RolloutView, ClientError> {
        Self::answer(self.request("POST", "/v1/rollouts").send_json(req))
    }

    /// Every rollout, newest first.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn rollouts(&self) -> Result<Vec<crate::rollouts::RolloutView>, ClientError> {
        Self::answer(self.request("GET", "/v1/rollouts").call())
    }

    /// One rollout, by id or unique prefix.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn rollout(&self, id: &str) -> Result<crate::rollouts::RolloutView, ClientError> {
        Self::answer(self.request("GET", &format!("/v1/rollouts/{id}")).call())
    }

    /// Sends `pause`, `resume`, `abort` or `rollback`.
    ///
    /// # Errors
    /// [`ClientError`]; a command the state does not allow is a `409`.
    pub fn rollout_command(
        &self,
        id: &str,
        command: &str,
    ) -> Result<crate::rollouts::RolloutView, ClientError> {
        Self::answer(
            self.request("POST", &format!("/v1/rollouts/{id}/{command}"))
                .call(),
        )
    }

    /// Raw GET of a path, for tools and tests: status and body bytes.
    ///
    /// # Errors
    /// [`ClientError::Transport`] only; error statuses are returned.
    pub fn get_raw(&self, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
        let resp = match self.request("GET", path).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(Self::transport(&e)),
        };
        let status = resp.status();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body)
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok((status, body))
    }
}

/// Renders devices as a table.
pub fn devices_table(devices: &[DeviceRecord]) -> String {
    let mut rows = vec![[
        "DEVICE".to_string(),
        "ADMISSION".into(),
        "ONLINE".into(),
        "STATE".into(),
        "VERSION".into(),
        "SITE".into(),
        "TRUST".into(),
        "LAST SEEN".into(),
    ]];
    for d in devices {
        rows.push([
            d.id.to_string(),
            format!("{:?}", d.admission).to_lowercase(),
            if d.online { "yes" } else { "no" }.into(),
            d.state.map_or("-".into(), |s| s.as_str().to_string()),
            d.version.as_ref().map_or("-".into(), ToString::to_string),
            d.site.as_ref().map_or("-".into(), ToString::to_string),
            d.trust_version.map_or("-".into(), |v| format!("v{v}")),
            d.last_seen.map_or("-".into(), |t| t.to_string()),
        ]);
    }
    table(&rows)
}

/// Renders releases as a table.
pub fn releases_table(releases: &[ReleaseRecord]) -> String {
    let mut rows = vec![[
        "RELEASE".to_string(),
        "NAME".into(),
        "VERSION".into(),
        "COMPATIBLE".into(),
        "CHANNEL".into(),
        "BYTES".into(),
        "CHUNKS".into(),
    ]];
    for r in releases {
        rows.push([
            r.id.short(),
            r.name.clone(),
            r.version.to_string(),
            r.compatible.to_string(),
            r.channel.to_string(),
            r.payload_size.to_string(),
            r.chunks.to_string(),
        ]);
    }
    table(&rows)
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
