//! Late, duplicate and foreign reports; status output.

use super::*;

#[test]
fn ignores_reports_about_other_releases_older_reports_and_repeats() {
    let mut s = spec();
    s.waves = vec![10, 100];
    let mut h = Harness::plain(s, 50);
    h.at(T0);
    let d = h.targeted()[0].clone();
    let report = |release, state, counter| DeviceReport {
        release,
        state,
        bytes: None,
        counter,
    };
    let other = Some(ReleaseId::digest(b"another release"));
    let p = &mut h.p;
    assert_eq!(
        p.handle_report(&d, report(other, UpdateState::Committed, 1), T0),
        ReportOutcome::OtherRelease
    );
    assert_eq!(
        p.handle_report(&d, report(None, UpdateState::Idle, 2), T0),
        ReportOutcome::OtherRelease
    );
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Failed, 5), T0),
        ReportOutcome::Accepted
    );
    // Arrives late: an older state after a newer one.
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Downloading, 4), T0),
        ReportOutcome::Stale
    );
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Failed, 5), T0),
        ReportOutcome::Duplicate
    );
    assert_eq!(
        p.handle_report(&dev(9999), report(Some(rel()), UpdateState::Failed, 1), T0),
        ReportOutcome::UnknownDevice
    );
    let c = p.status(T0).waves[0].counts;
    assert_eq!((c.targeted, c.failed, c.downloading), (5, 1, 0));
    // A retry after the failure moves the device, never counts it twice.
    assert_eq!(
        p.handle_report(&d, report(Some(rel()), UpdateState::Downloading, 6), T0),
        ReportOutcome::Accepted
    );
    let c = p.status(T0).waves[0].counts;
    assert_eq!((c.targeted, c.failed, c.downloading), (5, 0, 1));
    // Committing, then saying so again with a newer counter: still one.
    for counter in [7, 8] {
        let r = report(Some(rel()), UpdateState::Committed, counter);
        assert_eq!(p.handle_report(&d, r, T0), ReportOutcome::Accepted);
    }
    let c = p.status(T0).waves[0].counts;
    assert_eq!((c.targeted, c.succeeded, c.downloading), (5, 1, 0));
}

#[test]
fn bytes_by_source_sum_each_devices_latest_split() {
    let mut s = spec();
    s.waves = vec![100];
    let mut h = Harness::plain(s, 4);
    h.at(T0);
    let split = |peers, origin| ByteSplit {
        same_site: peers,
        other_peers: 0,
        origin,
        local: 0,
    };
    let mut send = |d: usize, counter, bytes| {
        h.p.handle_report(
            &dev(d),
            DeviceReport {
                release: Some(rel()),
                state: UpdateState::Downloading,
                bytes: Some(bytes),
                counter,
            },
            T0,
        )
    };
    send(0, 1, split(100, 10));
    send(0, 2, split(300, 10));
    send(0, 2, split(999, 999));
    send(1, 1, split(50, 40));
    let st = h.p.status(T0);
    assert_eq!(st.bytes_from_peers, 350);
    assert_eq!(st.bytes_from_origin, 50);
}

#[test]
fn status_serializes_to_json_for_the_api_and_the_cli() {
    let mut s = spec();
    s.groups = vec![group("canary")];
    let mut h = Harness::new(s, 10, |i| {
        if i == 0 {
            vec![group("canary")]
        } else {
            Vec::new()
        }
    });
    h.at(T0);
    let v = serde_json::to_value(h.status()).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["release"], rel().to_string());
    assert_eq!(v["waves"][0]["kind"], "groups");
    assert_eq!(v["waves"][1]["kind"]["percent"], 1);
    assert_eq!(v["waves"][0]["counts"]["targeted"], 1);
    assert_eq!(v["gate_sequence"], 100);
}

#[test]
fn status_prints_a_table_with_a_row_per_wave() {
    let mut s = spec();
    s.waves = vec![10, 100];
    let mut h = Harness::plain(s, 20);
    h.at(T0);
    let t = h.targeted();
    h.report(&t[0], UpdateState::Failed);
    let text = h.status().to_string();
    assert!(
        text.contains("halted: wave 0: 1 of 2 devices failed"),
        "{text}"
    );
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 6, "{text}");
    assert!(rows[3].starts_with("0     10%"), "{text}");
    assert!(rows[5].starts_with("bytes: 0 from peers"), "{text}");
}
