//! `meshota rollout create | list | status | pause | resume | abort |
//! rollback`.

use clap::Subcommand;
use meshota_protocol::{Action, ReleaseId};

use super::{json, ServerArgs};
use crate::client::ClientError;
use crate::rollout::{parse_duration, parse_groups, parse_percent, parse_time, parse_waves};
use crate::rollouts::{CreateRollout, RolloutView};

/// `meshota rollout …`.
#[derive(Debug, Clone, Subcommand)]
// Parsed once per process; boxing the big variant would only obscure it.
#[allow(clippy::large_enum_variant)]
pub enum RolloutCmd {
    /// Start a staged rollout of a published release; prints its id.
    Create {
        /// The release id (from `meshota release list`).
        #[arg(long)]
        release: String,
        /// Cumulative percents of the eligible fleet, one wave each.
        #[arg(long, default_value = "1,10,50,100")]
        waves: String,
        /// Groups that go first, as their own wave (`canary,lab`).
        #[arg(long)]
        groups: Option<String>,
        /// Percent of a wave that must commit (health-checked) before the
        /// next starts.
        #[arg(long, default_value = "95")]
        success_threshold: String,
        /// Percent of a wave whose failures halt the rollout.
        #[arg(long, default_value = "5")]
        error_threshold: String,
        /// Minimum time each wave holds before the next (`10m`, `1h`, `0s`).
        #[arg(long, default_value = "10m")]
        soak: String,
        /// `install-and-activate`, `install` or `download`.
        #[arg(long, default_value = "install-and-activate")]
        action: String,
        /// Do not start before this time (`now`, `+1h`, RFC 3339, epoch s).
        #[arg(long)]
        not_before: Option<String>,
        /// At most this many targeted devices unfinished at once.
        #[arg(long)]
        max_parallel: Option<u32>,
        /// How long each signed gate is valid (re-signed at half of it).
        #[arg(long, default_value = "24h")]
        gate_lifetime: String,
        /// After this long without a report, a targeted device counts as
        /// not reporting.
        #[arg(long, default_value = "10m")]
        report_timeout: String,
        /// Once a wave's devices have fetched the release, let the next
        /// wave's devices download it (download only) while this one
        /// installs and soaks, so the next installs at once when it opens.
        /// If the rollout halts, those devices hold a bundle they may never
        /// install.
        #[arg(long)]
        prefetch: bool,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List rollouts, newest first.
    List {
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Per-wave device counts, bytes from peers and origin, halt reason.
    Status {
        /// Rollout id (or a unique prefix).
        id: String,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Freeze the share where it is.
    Pause {
        /// Rollout id (or a unique prefix).
        id: String,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Continue after a pause or an automatic halt.
    Resume {
        /// Rollout id (or a unique prefix).
        id: String,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop every device that has not installed yet (final). Devices that
    /// already committed keep the release; see `rollback`.
    Abort {
        /// Rollout id (or a unique prefix).
        id: String,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Abort, and send every device that activated the release a signed
    /// command to go back to its previous slot.
    Rollback {
        /// Rollout id (or a unique prefix).
        id: String,
        /// Server, token and output format.
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn usage(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Usage(format!("{what}: {e}"))
}

fn view(v: &RolloutView, server: &ServerArgs) -> Result<String, ClientError> {
    if server.json {
        return json(v);
    }
    let mut out = v.status.to_string();
    out.push('\n');
    if v.retired {
        out.push_str("(retired: a later rollout took over its announce topic)\n");
    }
    Ok(out)
}

impl RolloutCmd {
    /// Runs it and returns what to print.
    ///
    /// # Errors
    /// [`ClientError`], with the server's message.
    pub fn run(&self) -> Result<String, ClientError> {
        match self {
            RolloutCmd::Create {
                release,
                waves,
                groups,
                success_threshold,
                error_threshold,
                soak,
                action,
                not_before,
                max_parallel,
                gate_lifetime,
                report_timeout,
                prefetch,
                server,
            } => {
                let now = crate::now();
                let req = CreateRollout {
                    release: release
                        .trim()
                        .parse::<ReleaseId>()
                        .map_err(|e| usage("--release", e))?,
                    waves: Some(parse_waves(waves).map_err(|e| usage("--waves", e))?),
                    groups: match groups {
                        Some(g) => parse_groups(g).map_err(|e| usage("--groups", e))?,
                        None => Vec::new(),
                    },
                    success_threshold: Some(
                        parse_percent(success_threshold)
                            .map_err(|e| usage("--success-threshold", e))?,
                    ),
                    error_threshold: Some(
                        parse_percent(error_threshold)
                            .map_err(|e| usage("--error-threshold", e))?,
                    ),
                    soak_secs: Some(parse_duration(soak).map_err(|e| usage("--soak", e))?),
                    action: Some(action.parse::<Action>().map_err(|e| usage("--action", e))?),
                    not_before: not_before
                        .as_deref()
                        .map(|t| parse_time(t, now))
                        .transpose()
                        .map_err(|e| usage("--not-before", e))?,
                    max_parallel: *max_parallel,
                    gate_lifetime_secs: Some(
                        parse_duration(gate_lifetime).map_err(|e| usage("--gate-lifetime", e))?,
                    ),
                    report_timeout_secs: Some(
                        parse_duration(report_timeout).map_err(|e| usage("--report-timeout", e))?,
                    ),
                    prefetch: *prefetch,
                };
                let v = server.client()?.create_rollout(&req)?;
                if server.json {
                    json(&v)
                } else {
                    Ok(format!("{}\n", v.status.rollout))
                }
            }
            RolloutCmd::List { server } => {
                let list = server.client()?.rollouts()?;
                if server.json {
                    return json(&list);
                }
                let mut out = format!(
                    "{:<18} {:<18} {:<10} {:>5} {:>8} {:>9} {:>7}\n",
                    "ROLLOUT", "RELEASE", "STATE", "WAVE", "SHARE", "ELIGIBLE", "RETIRED"
                );
                for v in &list {
                    let s = &v.status;
                    out.push_str(&format!(
                        "{:<18} {:<18} {:<10} {:>5} {:>7.2}% {:>9} {:>7}\n",
                        s.rollout.short(),
                        s.release.short(),
                        s.state,
                        s.current_wave.map_or("-".into(), |w| w.to_string()),
                        f64::from(s.share_bp) / 100.0,
                        s.eligible_devices,
                        if v.retired { "yes" } else { "" }
                    ));
                }
                Ok(out)
            }
            RolloutCmd::Status { id, server } => view(&server.client()?.rollout(id)?, server),
            RolloutCmd::Pause { id, server } => {
                view(&server.client()?.rollout_command(id, "pause")?, server)
            }
            RolloutCmd::Resume { id, server } => {
                view(&server.client()?.rollout_command(id, "resume")?, server)
            }
            RolloutCmd::Abort { id, server } => {
                view(&server.client()?.rollout_command(id, "abort")?, server)
            }
            RolloutCmd::Rollback { id, server } => {
                view(&server.client()?.rollout_command(id, "rollback")?, server)
            }
        }
    }
}
