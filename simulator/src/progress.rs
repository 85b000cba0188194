//! Progress while a run is under way: what the modes report
//! ([`Progress`]) and how the command line shows it ([`ProgressView`]: an
//! indicatif bar on stderr and a line per wave).
//!
//! The bar is hidden when stderr is not a terminal or when the summary
//! goes to stdout as JSON, so scripted runs get clean output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Something a run reports while it goes, in the run's own seconds
/// (virtual seconds in virtual mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// A wave opened.
    WaveStarted {
        /// Wave index, from 0.
        wave: usize,
        /// When.
        at_s: f64,
        /// Devices in the wave.
        devices: usize,
    },
    /// Every device of a wave finished (committed or rolled back).
    WaveFinished {
        /// Wave index, from 0.
        wave: usize,
        /// When.
        at_s: f64,
    },
    /// One device finished, committed or rolled back.
    DeviceFinished {
        /// When.
        at_s: f64,
    },
}

/// Shows [`Progress`] on stderr.
#[derive(Debug)]
pub struct ProgressView {
    bar: ProgressBar,
    quiet: bool,
    label: &'static str,
}

impl ProgressView {
    /// A view over `devices` devices. `quiet` (for `--json`) hides
    /// everything; otherwise the bar shows only on a terminal and the wave
    /// lines always. `label` names the run (for example `meshota` or
    /// `baseline`).
    pub fn new(devices: u64, quiet: bool, label: &'static str) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            // Hidden by indicatif itself when stderr is not a terminal.
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(devices), target);
        // The template is a constant; a bad one would only lose the style.
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} devices  {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        Self { bar, quiet, label }
    }

    /// Takes one report.
    pub fn on(&mut self, p: Progress) {
        match p {
            Progress::WaveStarted {
                wave,
                at_s,
                devices,
            } => self.line(&format!(
                "{}: wave {} starts at {at_s:.1} s with {devices} devices",
                self.label,
                wave + 1
            )),
            Progress::WaveFinished { wave, at_s } => self.line(&format!(
                "{}: wave {} finished at {at_s:.1} s",
                self.label,
                wave + 1
            )),
            Progress::DeviceFinished { at_s } => {
                self.bar.inc(1);
                // Formatting a message per device would dominate a 100k
                // run; every 256th is plenty for a bar redrawn at 20 Hz.
                if self.bar.position().is_multiple_of(256) {
                    self.bar.set_message(format!("t = {at_s:.1} s"));
                }
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

/// A bar of devices connected, for `meshota-sim load`; hidden with
/// `quiet` or off a terminal.
pub fn load_bar(devices: u64, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(devices), target);
    if let Ok(style) = ProgressStyle::with_template("load [{bar:40}] {pos}/{len} connected  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_view_takes_every_kind_of_report_without_output() {
        let mut v = ProgressView::new(2, true, "test");
        v.on(Progress::WaveStarted {
            wave: 0,
            at_s: 0.0,
            devices: 2,
        });
        v.on(Progress::DeviceFinished { at_s: 1.0 });
        v.on(Progress::DeviceFinished { at_s: 2.0 });
        v.on(Progress::WaveFinished { wave: 0, at_s: 2.0 });
        assert_eq!(v.bar.position(), 2);
        v.finish();
    }
}
