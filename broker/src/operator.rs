//! The operator subcommands of `meshota` that talk to a broker deployment
//! (`release publish|list`, `devices list|accept`, `fleet status`,
//! `rollout create|list|status|pause|resume|abort|rollback`), as
//! clap types the binary embeds. Each returns the text to print, so the
//! binary only prints it; tables by default, JSON with `--json`.

mod rollout;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use rollout::RolloutCmd;

use crate::client::{devices_table, releases_table, Client, ClientError, DeviceQuery};

/// Where the server is and how to log in; shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the broker deployment's HTTP API.
    #[arg(long, env = crate::client::ENV_SERVER, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Operator bearer token (the `operator-token` file in the data dir).
    #[arg(long, env = crate::client::ENV_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate to trust for an `https://` server (its self-signed
    /// certificate or its CA); without it, the system's roots.
    #[arg(long, env = crate::client::ENV_CA_CERT)]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ServerArgs {
    /// The client these arguments describe.
    ///
    /// # Errors
    /// [`ClientError`] when the CA file is unusable.
    pub fn client(&self) -> Result<Client, ClientError> {
        match &self.ca_cert {
            Some(ca) => Client::with_ca_cert(&self.server, self.token.clone(), ca),
            None => Ok(Client::new(&self.server, self.token.clone())),
        }
    }
}

fn json(v: &impl serde::Serialize) -> Result<String, ClientError> {
    serde_json::to_string_pretty(v).map_err(|e| ClientError::Decode(e.to_string()))
}

/// `meshota release …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ReleaseCmd {
    /// Upload a bundle; the server verifies it against its trust root.
    Publish {
        /// The bundle file.
        bundle: PathBuf,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List published releases.
    List {
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `meshota devices …`.
#[derive(Debug, Clone, Subcommand)]
pub enum DevicesCmd {
    /// List devices.
    List {
        /// Only devices in this update state.
        #[arg(long)]
        state: Option<String>,
        /// Only devices on this version.
        #[arg(long)]
        version: Option<String>,
        /// Only devices on this site.
        #[arg(long)]
        site: Option<String>,
        /// Only `pending` or `accepted` devices.
        #[arg(long)]
        admission: Option<String>,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Enrol a device by its public key (printed by `meshota-node` at
    /// first start), accepted at once. The way in when an external broker
    /// does admission, or to enrol ahead of the first login.
    Enroll {
        /// The device id.
        id: String,
        /// Its public key, 64 hex characters.
        #[arg(long)]
        key: String,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Accept a pending device's key.
    Accept {
        /// The device id.
        id: String,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `meshota fleet …`.
#[derive(Debug, Clone, Subcommand)]
pub enum FleetCmd {
    /// Fleet summary: devices by admission, state and version.
    Status {
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
}

impl ReleaseCmd {
    /// Runs it and returns what to print.
    ///
    /// # Errors
    /// [`ClientError`], with the server's message.
    pub fn run(&self) -> Result<String, ClientError> {
        match self {
            ReleaseCmd::Publish { bundle, server } => {
                let rec = server.client()?.publish_release(bundle)?;
                if server.json {
                    json(&rec)
                } else {
                    Ok(format!(
                        "published {} {} for {} on {}: release {} ({} chunks, {} bytes)\n",
                        rec.name,
                        rec.version,
                        rec.compatible,
                        rec.channel,
                        rec.id,
                        rec.chunks,
                        rec.payload_size
                    ))
                }
            }
            ReleaseCmd::List { server } => {
                let list = server.client()?.releases()?;
                if server.json {
                    json(&list)
                } else {
                    Ok(releases_table(&list))
                }
            }
        }
    }
}

impl DevicesCmd {
    /// Runs it and returns what to print.
    ///
    /// # Errors
    /// [`ClientError`], with the server's message.
    pub fn run(&self) -> Result<String, ClientError> {
        match self {
            DevicesCmd::List {
                state,
                version,
                site,
                admission,
                server,
            } => {
                let q = DeviceQuery {
                    state: state.clone(),
                    version: version.clone(),
                    site: site.clone(),
                    admission: admission.clone(),
                };
                let list = server.client()?.devices(&q)?;
                if server.json {
                    json(&list)
                } else {
                    Ok(devices_table(&list))
                }
            }
            DevicesCmd::Enroll { id, key, server } => {
                let rec = server.client()?.enroll_device(id, key)?;
                if server.json {
                    json(&rec)
                } else {
                    Ok(format!("enrolled {} (key {})\n", rec.id, rec.public_key))
                }
            }
            DevicesCmd::Accept { id, server } => {
                let rec = server.client()?.accept_device(id)?;
                if server.json {
                    json(&rec)
                } else {
                    Ok(format!("accepted {} (key {})\n", rec.id, rec.public_key))
                }
            }
        }
    }
}

impl FleetCmd {
    /// Runs it and returns what to print.
    ///
    /// # Errors
    /// [`ClientError`], with the server's message.
    pub fn run(&self) -> Result<String, ClientError> {
        let FleetCmd::Status { server } = self;
        let v = server.client()?.fleet()?;
        if server.json {
            return json(&v);
        }
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let mut out = format!(
            "devices {}  accepted {}  pending {}  online {}  releases {}\n",
            n("devices"),
            n("accepted"),
            n("pending"),
            n("online"),
            n("releases")
        );
        for (title, key) in [
            ("by state", "by_state"),
            ("by version", "by_version"),
            ("by trust root", "by_trust_version"),
        ] {
            if let Some(map) = v.get(key).and_then(serde_json::Value::as_object) {
                out.push_str(title);
                out.push_str(":\n");
                for (k, c) in map {
                    out.push_str(&format!("  {k:<20} {}\n", c.as_u64().unwrap_or(0)));
                }
            }
        }
        Ok(out)
    }
}
