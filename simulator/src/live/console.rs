//! What `meshota-sim run` (live) and `meshota-sim demo` show and write:
//! a progress bar, a line per wave and per fault, the summary, and the
//! report directory.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{LiveError, LiveEvent, LiveRun};
use crate::scenario::Scenario;
use crate::summary::Summary;
use crate::virt::Outcome;

/// Where `meshota-sim demo` writes its report.
pub const DEMO_REPORT_DIR: &str = "meshota-demo";

/// The README's demo: about 100 devices in 5 sites, a 32 MiB bundle and
/// a 3-wave rollout over the default network: 74 s on the 2-core machine
/// when idle, up to 3.3 minutes under load (see BENCHMARKS.md).
pub fn demo_scenario() -> Scenario {
    Scenario {
        devices: 100,
        sites: 5,
        bundle_bytes: 32 * 1024 * 1024,
        waves: vec![10, 50, 100],
        soak_s: 5,
        install_s: 3,
        health_s: 1,
        lan_peers: 8,
        wan_peers: 2,
        // Devices cap their uploads just under their uplink, as
        // docs/operations.md advises: 58.4 and 58.9 s to 100 % against
        // 61.8 and 62.0 s uncapped (BENCHMARKS.md, "2026-12-05
        // (afternoon)").
        upload_cap_pct: 95,
        ..Scenario::default()
    }
}

/// Renders [`LiveEvent`]s on stderr.
#[derive(Debug)]
pub struct Console {
    bar: ProgressBar,
    devices: u32,
    quiet: bool,
    /// Stderr is no terminal (a log file, CI): the bar is not drawn, so
    /// progress goes out as a line now and then instead.
    plain: bool,
    /// When the last such line went out, in run seconds (`f64` bits).
    last_plain: std::sync::atomic::AtomicU64,
}

/// Seconds between progress lines when stderr is no terminal.
const PLAIN_EVERY_S: f64 = 10.0;

impl Console {
    /// A console for a fleet of `devices`; `quiet` shows nothing.
    pub fn new(devices: u32, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(u64::from(devices));
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        Self {
            bar,
            devices,
            quiet,
            plain: !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            last_plain: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Prints a line above the bar (also when stderr is not a terminal,
    /// where the bar itself is not drawn).
    fn line(&self, text: String) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{text}"));
        }
    }

    /// Shows one event.
    pub fn event(&self, ev: &LiveEvent) {
        match ev {
            LiveEvent::Setup(what) => self.bar.set_message(format!("setting up: {what}")),
            LiveEvent::WaveStarted {
                wave,
                at_s,
                devices,
            } => self.line(format!(
                "wave {} opens at {at_s:.1} s ({devices} devices)",
                wave + 1
            )),
            LiveEvent::WaveFinished {
                wave,
                at_s,
                wan_in,
                max_site_wan_in,
                origin_bytes,
            } => {
                self.line(format!(
                    "wave {} hands over at {at_s:.1} s; so far the origin served {} MiB \
                     and the sites imported {} MiB, the most any one site {} MiB",
                    wave + 1,
                    origin_bytes >> 20,
                    wan_in >> 20,
                    max_site_wan_in >> 20
                ));
            }
            LiveEvent::Progress {
                committed,
                rolled_back,
                failed,
                fetched,
                at_s,
            } => {
                self.bar
                    .set_position(u64::from(committed + rolled_back + failed));
                let msg = format!(
                    "t={at_s:.0}s  {committed} committed, {rolled_back} rolled back, \
                     {failed} failed, {} MiB fetched of {} devices",
                    fetched >> 20,
                    self.devices
                );
                use std::sync::atomic::Ordering::Relaxed;
                let last = f64::from_bits(self.last_plain.load(Relaxed));
                if self.plain && *at_s >= last + PLAIN_EVERY_S {
                    self.last_plain.store(at_s.to_bits(), Relaxed);
                    self.line(msg.clone());
                }
                self.bar.set_message(msg);
            }
            LiveEvent::Fault(what) => self.line(format!("fault: {what}")),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `s` live with a console, and summarises it against `baseline`
/// (the peer-to-peer-off run of the same scenario, if wanted).
///
/// # Errors
/// [`LiveError`].
pub fn run(
    s: &Scenario,
    quiet: bool,
    baseline: Option<&Outcome>,
) -> Result<(LiveRun, Summary), LiveError> {
    let console = Console::new(s.devices, quiet);
    let r = super::run(s, |ev| console.event(&ev));
    console.finish();
    let run = r?;
    let summary = Summary::new(s, &run.outcome, baseline);
    Ok((run, summary))
}

/// What a live report holds.
#[derive(Debug, Serialize)]
struct Report<'a> {
    scenario: &'a Scenario,
    summary: &'a Summary,
    outcome: &'a Outcome,
    live: LiveFigures<'a>,
}

/// The live-only figures of a report.
#[derive(Debug, Serialize)]
struct LiveFigures<'a> {
    bundle_file_bytes: u64,
    release_stored_bytes: u64,
    origin_wire_bytes: u64,
    site_wan_out: &'a [u64],
    restarts: u32,
    wall_s: f64,
    setup_s: f64,
    devices: &'a [super::DeviceFigures],
    origin: &'a super::OriginFigures,
}

/// Writes the report of a live run into `dir` (created if missing):
/// `report.json` and `report.html` as for virtual runs, plus `live.json`
/// with the scenario and the figures only a live run has.
///
/// # Errors
/// [`LiveError::Io`].
pub fn write_report(
    dir: &Path,
    s: &Scenario,
    run: &LiveRun,
    summary: &Summary,
    baseline: Option<&crate::virt::Outcome>,
) -> Result<(), LiveError> {
    let io = |what: String| move |source| LiveError::Io { what, source };
    crate::report::write_with_baseline(dir, summary, &run.outcome, baseline).map_err(|e| {
        LiveError::Io {
            what: format!("writing the report in {}", dir.display()),
            source: std::io::Error::other(e),
        }
    })?;
    let report = Report {
        scenario: s,
        summary,
        outcome: &run.outcome,
        live: LiveFigures {
            bundle_file_bytes: run.bundle_file_bytes,
            release_stored_bytes: run.release_stored_bytes,
            origin_wire_bytes: run.origin_wire_bytes,
            site_wan_out: &run.site_wan_out,
            restarts: run.restarts,
            wall_s: run.wall_s,
            setup_s: run.setup_s,
            devices: &run.devices,
            origin: &run.origin,
        },
    };
    let text = serde_json::to_string_pretty(&report).map_err(|e| LiveError::Io {
        what: "encoding report.json".into(),
        source: std::io::Error::other(e),
    })?;
    let path = dir.join("live.json");
    std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))
}
