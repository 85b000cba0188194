//! `meshota-sim`: the fleet simulator. Parses the command line and calls
//! the library.

use std::process::ExitCode;

/// mimalloc rather than glibc's allocator: a 100,000-device virtual run
/// keeps about a million small per-device allocations live, and walking
/// them is memory-bound; mimalloc packs same-size objects densely.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshota_sim::live;
use meshota_sim::load::{Auth, LoadConfig};
use meshota_sim::progress::ProgressView;
use meshota_sim::report;
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
    /// Run a scenario: live (real broker and agents) or `--virtual`.
    Run(RunArgs),
    /// The README's demo: ~100 live devices in 5 sites, a 32 MiB bundle,
    /// a 3-wave rollout; report in ./meshota-demo/.
    Demo,
    /// Load a broker with MQTT-only virtual devices; report connect rate,
    /// throughput and publish-to-delivery latency.
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Broker, `mqtt://host[:port]`.
    #[arg(long)]
    mqtt_url: String,
    /// Virtual devices.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Connects started per second (0: all at once).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Whole run, from the first connect: `60s`, `2m`, `500ms`.
    #[arg(long, default_value = "60s", value_parser = meshota_sim::load::parse_duration)]
    duration: std::time::Duration,
    /// Interval between a device's statuses.
    #[arg(long, default_value = "1s", value_parser = meshota_sim::load::parse_duration)]
    status_every: std::time::Duration,
    /// Interval between a device's events (`0s`: none).
    #[arg(long, default_value = "5s", value_parser = meshota_sim::load::parse_duration)]
    event_every: std::time::Duration,
    /// Fleet name in the topics (the broker's control plane ingests its own).
    #[arg(long, default_value = "default")]
    fleet: String,
    /// Device ids are `<prefix>-<n>`.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Same username for every client instead of device tokens.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Password for `--username`.
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// No credentials at all instead of device tokens.
    #[arg(long, conflicts_with = "username")]
    anonymous: bool,
    /// Seed of the device keys (the same seed reuses accepted keys).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
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
    /// Once a wave has fetched, the next wave's devices download the
    /// release while it installs and soaks (the rollout's `--prefetch`).
    #[arg(long)]
    prefetch: bool,
    /// Skip the peer-to-peer-off baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Write report.json and report.html into this directory.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    // Quiet by default: a thousand in-process nodes would drown the
    // summary. `RUST_LOG=meshota_node=debug` shows what they do.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
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
            let s = live::console::demo_scenario();
            let base = meshota_sim::virt::run(&s, false, &mut |_| {})?;
            let (run, summary) = live::console::run(&s, false, Some(&base))?;
            print!("{}", report::summary_text(&summary)?);
            let dir = std::path::Path::new(live::console::DEMO_REPORT_DIR);
            live::console::write_report(dir, &s, &run, &summary, Some(&base))?;
            eprintln!(
                "wall time {:.1} s ({:.1} s setup); report in {}/",
                run.wall_s,
                run.setup_s,
                dir.display()
            );
            Ok(exit(&summary))
        }
        Cmd::Load(a) => load(a),
        Cmd::Run(a) => {
            let s = scenario(&a)?;
            if !a.virtual_time {
                // The origin-only baseline comes from the virtual model.
                let base = if a.no_baseline {
                    None
                } else {
                    Some(meshota_sim::virt::run(&s, false, &mut |_| {})?)
                };
                let (run, summary) = live::console::run(&s, a.json, base.as_ref())?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                } else {
                    print!("{}", report::summary_text(&summary)?);
                }
                if let Some(dir) = &a.report {
                    live::console::write_report(dir, &s, &run, &summary, base.as_ref())?;
                }
                if !a.json {
                    eprintln!(
                        "wall time {:.1} s ({:.1} s setup), {} agent restarts",
                        run.wall_s, run.setup_s, run.restarts
                    );
                }
                return Ok(exit(&summary));
            }
            let started = std::time::Instant::now();
            let mut view = ProgressView::new(u64::from(s.devices), a.json, "meshota");
            let out = meshota_sim::virt::run(&s, true, &mut |p| view.on(p))?;
            view.finish();
            let wall = started.elapsed();
            let base = if a.no_baseline {
                None
            } else {
                let mut view = ProgressView::new(u64::from(s.devices), a.json, "baseline");
                let b = meshota_sim::virt::run(&s, false, &mut |p| view.on(p))?;
                view.finish();
                Some(b)
            };
            let summary = Summary::new(&s, &out, base.as_ref());
            report::finish_run(&summary, &out, base.as_ref(), a.json, a.report.as_deref())?;
            if !a.json {
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
                let kinds: Vec<String> = out
                    .events_by_kind
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                eprintln!("events by kind: {}", kinds.join(", "));
            }
            Ok(exit(&summary))
        }
    }
}

fn load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = LoadConfig::new(&a.mqtt_url, a.devices)?;
    cfg.rate = a.rate;
    cfg.duration = a.duration;
    cfg.status_every = a.status_every;
    cfg.event_every = (!a.event_every.is_zero()).then_some(a.event_every);
    cfg.fleet = meshota_protocol::FleetId::new(&a.fleet).context("--fleet")?;
    cfg.prefix = a.prefix;
    cfg.seed = a.seed;
    cfg.auth = match (a.username, a.password, a.anonymous) {
        (Some(username), Some(password), _) => Auth::Password { username, password },
        (_, _, true) => Auth::Anonymous,
        _ => Auth::Token,
    };
    let bar = meshota_sim::progress::load_bar(u64::from(a.devices), a.json);
    let result = meshota_sim::load::run_blocking(&cfg, &mut |p| {
        bar.set_position(p.connected);
        bar.set_message(format!(
            "{:.0} s  sent {}  delivered {}",
            p.elapsed_s, p.sent, p.delivered
        ));
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", result.table());
    }
    Ok(if result.connected == u64::from(result.devices) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The scenario from the file (if any) and the flags over it.
fn scenario(a: &RunArgs) -> anyhow::Result<Scenario> {
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
    if let Some(v) = &a.waves {
        s.waves.clone_from(v);
    }
    if let Some(v) = a.seed {
        s.seed = v;
    }
    if a.prefetch {
        s.prefetch = true;
    }
    s.validate()?;
    Ok(s)
}

fn exit(summary: &Summary) -> ExitCode {
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}
