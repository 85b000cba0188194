//! `meshota-sim`: the fleet simulator. Parses the command line and calls
//! the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshota_sim::scenario::Scenario;
use meshota_sim::summary::Summary;

#[derive(Parser)]
#[command(
    name = "meshota-sim",
    version,
    about = "Simulate a meshota fleet rollout"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario. Only `--virtual` is implemented so far.
    Run(RunArgs),
    /// The README's demo (not implemented yet: needs live mode, issue 7).
    Demo,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Virtual time: the production agent, scheduler and rollout planner
    /// over a modelled network.
    #[arg(long = "virtual")]
    virtual_time: bool,
    /// Scenario TOML file; flags below override it.
    #[arg(long)]
    scenario: Option<std::path::PathBuf>,
    /// Devices in the fleet.
    #[arg(long)]
    devices: Option<u32>,
    /// Sites.
    #[arg(long)]
    sites: Option<u32>,
    /// Bundle size in MiB.
    #[arg(long)]
    bundle_mib: Option<u64>,
    /// Cumulative wave percentages, e.g. 10,50,100.
    #[arg(long, value_delimiter = ',')]
    waves: Option<Vec<u8>>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Skip the peer-to-peer-off baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshota-sim: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().cmd {
        Cmd::Demo => {
            eprintln!(
                "meshota-sim demo: not implemented yet. It needs live mode (real broker and node \
                 agents), tracked as issue 7. Try `meshota-sim run --virtual`."
            );
            Ok(ExitCode::from(2))
        }
        Cmd::Run(a) => {
            if !a.virtual_time {
                anyhow::bail!(
                    "live mode is not implemented yet (issue 7); add --virtual to run the \
                     virtual-time model"
                );
            }
            let mut s = match &a.scenario {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading scenario {}", p.display()))?;
                    Scenario::from_toml(&text)?
                }
                None => Scenario::default(),
            };
            if let Some(v) = a.devices {
                s.devices = v;
            }
            if let Some(v) = a.sites {
                s.sites = v;
            }
            if let Some(v) = a.bundle_mib {
                s.bundle_bytes = v * 1024 * 1024;
            }
            if let Some(v) = a.waves {
                s.waves = v;
            }
            if let Some(v) = a.seed {
                s.seed = v;
            }
            s.validate()?;
            let started = std::time::Instant::now();
            let quiet = a.json;
            let out = meshota_sim::virt::run(&s, true, |w, t| {
                if !quiet {
                    eprintln!("wave {} starts at {t:.1} s (virtual)", w + 1);
                }
            })?;
            let wall = started.elapsed();
            let base = if a.no_baseline {
                None
            } else {
                Some(meshota_sim::virt::run(&s, false, |_, _| {})?)
            };
            let summary = Summary::new(&s, &out, base.as_ref());
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&summary)?);
                eprintln!(
                    "wall time {:.2} s for the meshota run ({} events, {} pushed chunk \
                     announcements, {} gates, {} signature checks, planner {})",
                    wall.as_secs_f64(),
                    out.events,
                    out.have_pushes,
                    out.gates,
                    out.signature_checks,
                    if out.completed {
                        "completed"
                    } else if out.halted {
                        "halted"
                    } else {
                        "did not finish"
                    }
                );
            }
            Ok(if summary.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}
