//! The report files: JSON round trip, self-contained HTML, empty runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::scenario::Scenario;
use meshota_protocol::ByteSplit;

fn outcome(devices: u32) -> Outcome {
    Outcome {
        commit_times_s: (0..devices).map(|i| 10.0 + f64::from(i)).collect(),
        origin_bytes: 5 << 20,
        site_wan_in: vec![4 << 20, 6 << 20, 5 << 20],
        bytes: ByteSplit {
            same_site: 40 << 20,
            other_peers: 3 << 20,
            origin: 5 << 20,
            local: 0,
        },
        waves: vec![(0.0, 12.0), (22.0, 30.0), (40.0, 10.0 + f64::from(devices))],
        ..Outcome::default()
    }
}

fn scenario(devices: u32) -> Scenario {
    Scenario {
        devices,
        sites: 3,
        bundle_bytes: 4 << 20,
        ..Scenario::default()
    }
}

#[test]
fn the_json_parses_back_with_every_summary_field_and_the_chart_series() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(30);
    let (run, base) = (outcome(30), outcome(30));
    let summary = Summary::new(&s, &run, Some(&base));
    write_with_baseline(dir.path(), &summary, &run, Some(&base)).unwrap();
    let text = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for f in ORDER {
        assert!(v["summary"].get(f).is_some(), "summary lacks {f}");
    }
    assert_eq!(v["summary"]["devices"], 30);
    assert_eq!(v["series"]["completion"].as_array().unwrap().len(), 30);
    assert_eq!(v["series"]["completion"][29][1], 1.0);
    assert!(v["series"]["baseline_completion"].is_array());
    assert_eq!(v["series"]["site_wan_bytes"].as_array().unwrap().len(), 3);
    assert_eq!(v["series"]["bytes"]["peers_lan"], 40 << 20);
    assert_eq!(v["series"]["waves"].as_array().unwrap().len(), 3);
}

#[test]
fn the_html_has_an_svg_per_chart_and_no_url_reference() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(30);
    let run = outcome(30);
    let summary = Summary::new(&s, &run, None);
    write(dir.path(), &summary, &run).unwrap();
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4);
    assert_eq!(html.matches("</svg>").count(), 4);
    assert!(!html.to_lowercase().contains("http"), "a URL in the page");
    assert!(!html.contains("<script"));
    for f in ORDER {
        assert!(html.contains(&format!("<td>{f}</td>")), "table lacks {f}");
    }
}

#[test]
fn an_empty_run_writes_a_report_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario {
        devices: 0,
        sites: 0,
        bundle_bytes: 0,
        ..Scenario::default()
    };
    let run = Outcome::default();
    let summary = Summary::new(&s, &run, Some(&run));
    write_with_baseline(dir.path(), &summary, &run, Some(&run)).unwrap();
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4);
    assert!(!html.contains("NaN") && !html.contains("inf"), "{html}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(v["summary"]["devices"], 0);
}

#[test]
fn a_large_run_keeps_its_series_short_and_ends_at_full_completion() {
    let times: Vec<f64> = (0..100_000).map(f64::from).collect();
    let c = completion(&times, 100_000);
    assert!(c.len() <= MAX_POINTS + 1, "{}", c.len());
    assert_eq!(c.last().copied(), Some((99_999.0, 1.0)));
    assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
}

#[test]
fn the_terminal_summary_names_every_field_once() {
    let s = scenario(3);
    let summary = Summary::new(&s, &outcome(3), None);
    let text = summary_text(&summary).unwrap();
    for f in ORDER {
        assert_eq!(
            text.lines()
                .filter(|l| l.split_whitespace().next() == Some(f))
                .count(),
            1,
            "{f} in {text}"
        );
    }
}
