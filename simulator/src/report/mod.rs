//! `--report DIR`: `report.json` (the summary and the series behind the
//! charts) and `report.html`, one self-contained page with the summary
//! table and inline SVG charts: the completion CDF, bytes by source, WAN
//! bytes per site and the wave timeline.
//!
//! The page has no scripts, styles or fonts from elsewhere, so it can be
//! mailed or archived as one file. Series are thinned to at most
//! [`MAX_POINTS`] points so a 100,000-device report stays small.

pub mod svg;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::summary::Summary;
use crate::virt::Outcome;
use svg::{esc, Plot, COLOURS};

/// Most points kept in a CDF series.
pub const MAX_POINTS: usize = 500;

const MIB: f64 = 1024.0 * 1024.0;

/// Why a report was not written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The directory or a file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The JSON could not be encoded.
    #[error("report.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Bytes received, by where they came from.
#[derive(Debug, Clone, Serialize)]
pub struct BytesBySource {
    /// From peers on the same site (LAN).
    pub peers_lan: u64,
    /// From peers on other sites (WAN).
    pub peers_wan: u64,
    /// From the origin (WAN).
    pub origin: u64,
    /// Already held (delta reuse), never fetched.
    pub local: u64,
}

/// The series behind the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// `(seconds, share of devices committed)`, a step function.
    pub completion: Vec<(f64, f64)>,
    /// The same for the peer-to-peer-off baseline, when it ran.
    pub baseline_completion: Option<Vec<(f64, f64)>>,
    /// Bytes by source.
    pub bytes: BytesBySource,
    /// Bytes entering each site over its WAN link, by site index.
    pub site_wan_bytes: Vec<u64>,
    /// `(start, end)` of each wave, seconds.
    pub waves: Vec<(f64, f64)>,
}

/// What `report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report<'a> {
    /// The summary, every field.
    pub summary: &'a Summary,
    /// The chart series.
    pub series: Series,
}

/// The CDF of commit times over `devices`, thinned to [`MAX_POINTS`]
/// (always keeping the last point, so 100% stays where it is).
pub fn completion(sorted_times: &[f64], devices: u32) -> Vec<(f64, f64)> {
    if devices == 0 || sorted_times.is_empty() {
        return Vec::new();
    }
    let n = sorted_times.len();
    let stride = n.div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<(f64, f64)> = (0..n)
        .filter(|i| (i + 1) % stride == 0 || i + 1 == n)
        .map(|i| (sorted_times[i], (i + 1) as f64 / f64::from(devices)))
        .collect();
    out.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
    out
}

impl<'a> Report<'a> {
    /// The report of a run, with its baseline when it ran.
    pub fn new(summary: &'a Summary, run: &Outcome, baseline: Option<&Outcome>) -> Self {
        Self {
            summary,
            series: Series {
                completion: completion(&run.commit_times_s, summary.devices),
                baseline_completion: baseline
                    .map(|b| completion(&b.commit_times_s, summary.devices)),
                bytes: BytesBySource {
                    peers_lan: run.bytes.same_site,
                    peers_wan: run.bytes.other_peers,
                    origin: run.bytes.origin,
                    local: run.bytes.local,
                },
                site_wan_bytes: run.site_wan_in.clone(),
                waves: run.waves.clone(),
            },
        }
    }
}

/// Writes `report.json` and `report.html` into `dir` (created if needed).
///
/// # Errors
/// [`ReportError`] when the directory or a file cannot be written.
pub fn write(dir: &Path, summary: &Summary, outcome: &Outcome) -> Result<(), ReportError> {
    write_with_baseline(dir, summary, outcome, None)
}

/// As [`write`], drawing the baseline's completion CDF too.
///
/// # Errors
/// As [`write`].
pub fn write_with_baseline(
    dir: &Path,
    summary: &Summary,
    outcome: &Outcome,
    baseline: Option<&Outcome>,
) -> Result<(), ReportError> {
    let io = |path: PathBuf| move |source| ReportError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let report = Report::new(summary, outcome, baseline);
    let json = serde_json::to_string_pretty(&report)?;
    let p = dir.join("report.json");
    std::fs::write(&p, json).map_err(io(p.clone()))?;
    let p = dir.join("report.html");
    std::fs::write(&p, html(&report)?).map_err(io(p.clone()))?;
    Ok(())
}

/// Ends a run on the command line: the summary as JSON on stdout with
/// `json`, else the one-screen table; then the report files into `dir`,
/// when given.
///
/// # Errors
/// [`ReportError`] when the report cannot be written.
pub fn finish_run(
    summary: &Summary,
    run: &Outcome,
    baseline: Option<&Outcome>,
    json: bool,
    dir: Option<&Path>,
) -> Result<(), ReportError> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{}", summary_text(summary)?);
    }
    if let Some(dir) = dir {
        write_with_baseline(dir, summary, run, baseline)?;
        if !json {
            eprintln!("report written to {}", dir.join("report.html").display());
        }
    }
    Ok(())
}

/// The summary fields issue 7 requires, in reading order. [`rows`] shows
/// these first and then any other field, so a field added to [`Summary`]
/// is never left out.
pub const ORDER: [&str; 14] = [
    "ok",
    "devices",
    "committed",
    "rolled_back",
    "failed",
    "bundle_bytes",
    "origin_bytes",
    "max_site_wan_bytes",
    "time_to_50_s",
    "time_to_90_s",
    "time_to_100_s",
    "bound_s",
    "baseline_time_to_100_s",
    "baseline_origin_bytes",
];

/// Every summary field as `(name, value as text)`, in reading order.
///
/// # Errors
/// [`ReportError::Json`] if the summary does not serialise (it does).
pub fn rows(summary: &Summary) -> Result<Vec<(String, String)>, ReportError> {
    let serde_json::Value::Object(map) = serde_json::to_value(summary)? else {
        return Ok(Vec::new());
    };
    let mut keys: Vec<&String> = ORDER
        .iter()
        .filter_map(|k| map.get_key_value(*k).map(|(k, _)| k))
        .collect();
    keys.extend(map.keys().filter(|k| !ORDER.contains(&k.as_str())));
    Ok(keys
        .into_iter()
        .map(|k| (k.clone(), value_text(k, &map[k])))
        .collect())
}

fn value_text(key: &str, v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        serde_json::Value::Number(n) if key.ends_with("_bytes") || key.starts_with("bytes_") => {
            let b = n.as_f64().unwrap_or(0.0);
            format!("{n} ({:.1} MiB)", b / MIB)
        }
        serde_json::Value::Number(n) if key.ends_with("_s") => {
            format!("{:.1} s", n.as_f64().unwrap_or(0.0))
        }
        other => other.to_string(),
    }
}

/// The one-screen summary for the terminal.
///
/// # Errors
/// As [`rows`].
pub fn summary_text(summary: &Summary) -> Result<String, ReportError> {
    let rows = rows(summary)?;
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    Ok(out)
}

const STYLE: &str = "body{font:14px sans-serif;margin:24px;color:#222;max-width:720px}\
table{border-collapse:collapse;margin-bottom:16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
td.v{font-family:monospace}svg{display:block;margin:12px 0;font:11px sans-serif}\
svg .t{font-weight:bold;font-size:13px}svg .c{text-anchor:middle}svg .r{text-anchor:end}\
.ok{color:#2e9d4b}.bad{color:#b8322f}";

/// The page.
fn html(r: &Report<'_>) -> Result<String, ReportError> {
    let s = r.summary;
    let mut out = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(
        out,
        "<title>meshota-sim report: {} devices</title><style>{STYLE}</style></head><body>",
        s.devices
    );
    let verdict = if s.ok {
        "<p class=\"ok\">Every device not faulted on purpose committed.</p>"
    } else {
        "<p class=\"bad\">Not every device that should have committed did.</p>"
    };
    let _ = write!(out, "<h1>meshota-sim report</h1>{verdict}<table>");
    out.push_str("<tr><th>field</th><th>value</th></tr>");
    for (k, v) in rows(s)? {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"v\">{}</td></tr>",
            esc(&k),
            esc(&v)
        );
    }
    out.push_str("</table>");
    out.push_str(&cdf_chart(r));
    out.push_str(&bytes_chart(&r.series.bytes));
    out.push_str(&site_chart(&r.series.site_wan_bytes, s.bundle_bytes));
    out.push_str(&wave_chart(&r.series.waves));
    out.push_str("</body></html>\n");
    Ok(out)
}

fn cdf_chart(r: &Report<'_>) -> String {
    let s = r.summary;
    let series = &r.series;
    let last = |v: &[(f64, f64)]| v.last().map_or(0.0, |p| p.0);
    let x_max = [
        last(&series.completion),
        series.baseline_completion.as_deref().map_or(0.0, last),
        s.baseline_time_to_100_s.unwrap_or(0.0),
        s.bound_s,
    ]
    .into_iter()
    .filter(|v| v.is_finite())
    .fold(0.0, f64::max);
    let mut p = Plot::new(
        "Completion over time",
        Some((x_max, "seconds")),
        Some((1.0, "share of devices committed")),
        "completion CDF",
    );
    p.steps(&series.completion, COLOURS[0], false);
    p.legend(0, COLOURS[0], "meshota (peer-to-peer)");
    if let Some(b) = &series.baseline_completion {
        p.steps(b, COLOURS[1], true);
        p.legend(1, COLOURS[1], "baseline (origin only)");
    } else if let Some(t) = s.baseline_time_to_100_s {
        p.vline(t, COLOURS[1], "baseline 100%");
    }
    if s.bound_s.is_finite() && s.bound_s > 0.0 {
        p.vline(s.bound_s, COLOURS[3], "bound");
    }
    p.finish()
}

fn bytes_chart(b: &BytesBySource) -> String {
    let bars = [
        ("peers LAN", b.peers_lan),
        ("peers WAN", b.peers_wan),
        ("origin", b.origin),
        ("local (held)", b.local),
    ];
    let total: u64 = bars.iter().map(|(_, v)| v).sum();
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0) as f64 / MIB;
    let mut p = Plot::new(
        "Bytes by source",
        None,
        Some((max, "MiB")),
        "bytes by source",
    );
    let (left, right, _, bottom) = p.area();
    let slot = 1.0 / bars.len() as f64;
    for (i, (name, v)) in bars.iter().enumerate() {
        let x0 = slot * i as f64 + slot * 0.2;
        let share = if total == 0 {
            0.0
        } else {
            100.0 * *v as f64 / total as f64
        };
        let label = format!("{name}: {:.1} MiB ({share:.0}%)", *v as f64 / MIB);
        p.bar(
            x0,
            0.0,
            x0 + slot * 0.6,
            *v as f64 / MIB,
            COLOURS[i],
            &label,
        );
        let cx = left + (right - left) * (slot * i as f64 + slot / 2.0);
        let top = p.y(*v as f64 / MIB);
        p.text(cx, top - 4.0, "c", &format!("{:.1} MiB", *v as f64 / MIB));
        p.text(cx, bottom + 16.0, "c", name);
        p.text(cx, bottom + 30.0, "c", &format!("{share:.0}%"));
    }
    p.finish()
}

fn site_chart(sites: &[u64], bundle: u64) -> String {
    let max = sites.iter().copied().max().unwrap_or(0).max(bundle * 6 / 5) as f64 / MIB;
    let mut p = Plot::new(
        "WAN bytes per site",
        None,
        Some((max, "MiB in over WAN")),
        "WAN bytes per site",
    );
    let (left, right, _, bottom) = p.area();
    let n = sites.len().max(1) as f64;
    for (i, v) in sites.iter().enumerate() {
        let x0 = i as f64 / n;
        let label = format!("site {i}: {:.1} MiB", *v as f64 / MIB);
        p.bar(
            x0 + 0.1 / n,
            0.0,
            x0 + 0.9 / n,
            *v as f64 / MIB,
            COLOURS[0],
            &label,
        );
    }
    // Label a few sites only, so a hundred sites stay legible.
    let every = (sites.len() / 10).max(1);
    for i in (0..sites.len()).step_by(every) {
        let cx = left + (right - left) * (i as f64 + 0.5) / n;
        p.text(cx, bottom + 16.0, "c", &i.to_string());
    }
    p.text((left + right) / 2.0, bottom + 36.0, "c", "site");
    let b = bundle as f64 / MIB;
    p.hline(b, COLOURS[2]);
    p.hline(b * 1.2, COLOURS[3]);
    p.legend(0, COLOURS[2], &format!("1× bundle ({b:.1} MiB)"));
    p.legend(1, COLOURS[3], "1.2× bundle (the goal's cap)");
    p.finish()
}

fn wave_chart(waves: &[(f64, f64)]) -> String {
    let end = waves.iter().map(|w| w.1).fold(0.0, f64::max);
    let mut p = Plot::new(
        "Wave timeline",
        Some((end, "seconds")),
        None,
        "wave timeline",
    );
    let (left, _, top, bottom) = p.area();
    let n = waves.len().max(1) as f64;
    let row = (bottom - top) / n;
    for (i, (a, b)) in waves.iter().enumerate() {
        // Rows top-down in wave order: the y scale runs 0..1 upwards.
        let y_hi = 1.0 - i as f64 / n;
        let y_lo = 1.0 - (i as f64 + 1.0) / n;
        let pad = 0.2 / n;
        let label = format!("wave {}: {a:.1} s to {b:.1} s", i + 1);
        p.bar(
            *a,
            y_lo + pad,
            *b,
            y_hi - pad,
            COLOURS[i % COLOURS.len()],
            &label,
        );
        p.text(
            left - 6.0,
            top + row * (i as f64 + 0.5) + 4.0,
            "r",
            &format!("wave {}", i + 1),
        );
    }
    p.finish()
}

#[cfg(test)]
mod tests;
