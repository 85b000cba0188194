//! Small virtual-time scenarios: the figures are consistent and faults end
//! as expected.

use meshota_sim::scenario::Scenario;
use meshota_sim::summary::Summary;
use meshota_sim::virt;

fn small() -> Scenario {
    Scenario {
        devices: 30,
        sites: 3,
        bundle_bytes: 4 * 1024 * 1024,
        chunk_avg: 64 * 1024,
        waves: vec![100],
        ..Scenario::default()
    }
}

#[test]
fn every_device_commits_and_the_figures_add_up() {
    let s = small();
    let out = virt::run(&s, true, &mut |_| {}).unwrap();
    let sum = Summary::new(&s, &out, None);
    assert!(sum.ok, "{sum:?}");
    assert_eq!(sum.committed, s.devices);
    // Every byte a device fetched came from somewhere.
    let fetched = out.bytes.same_site + out.bytes.other_peers + out.bytes.origin;
    assert!(fetched >= u64::from(s.devices) * s.bundle_bytes);
    assert_eq!(out.bytes.origin, out.origin_bytes);
    // The first copy of every chunk has to come from the origin.
    assert!(sum.origin_bytes >= s.bundle_bytes);
    for site in &out.site_wan_in {
        assert!(
            *site >= s.bundle_bytes,
            "a site cannot get the bundle without its WAN"
        );
    }
    let t = sum.time_to_100_s.unwrap();
    assert!(
        t >= sum.bound_s,
        "faster than the theoretical bound: {t} < {}",
        sum.bound_s
    );
}

#[test]
fn the_origin_only_baseline_serves_one_copy_per_device() {
    let s = small();
    let out = virt::run(&s, false, &mut |_| {}).unwrap();
    assert_eq!(out.failed, 0);
    assert_eq!(out.origin_bytes, u64::from(s.devices) * s.bundle_bytes);
    assert_eq!(out.bytes.same_site + out.bytes.other_peers, 0);
}

#[test]
fn health_failures_roll_back_and_malicious_peers_get_banned() {
    let s = Scenario {
        health_fail_rate: 0.2,
        malicious_rate: 0.1,
        ..small()
    };
    let out = virt::run(&s, true, &mut |_| {}).unwrap();
    assert!(out.rolled_back > 0);
    assert_eq!(out.commit_times_s.len() as u32 + out.rolled_back, s.devices);
    assert!(out.bans > 0, "no malicious peer was banned");
    assert_eq!(out.failed, 0);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let s = small();
    let a = virt::run(&s, true, &mut |_| {}).unwrap();
    let b = virt::run(&s, true, &mut |_| {}).unwrap();
    assert_eq!(a.commit_times_s, b.commit_times_s);
    assert_eq!(a.origin_bytes, b.origin_bytes);
}

#[test]
fn waves_start_in_order_after_their_soak() {
    let s = Scenario {
        waves: vec![10, 50, 100],
        soak_s: 30,
        ..small()
    };
    let mut starts = Vec::new();
    let out = virt::run(&s, true, &mut |p| {
        if let meshota_sim::progress::Progress::WaveStarted { wave, at_s, .. } = p {
            starts.push((wave, at_s));
        }
    })
    .unwrap();
    assert_eq!(
        starts.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for pair in starts.windows(2) {
        assert!(pair[1].1 >= pair[0].1 + 30.0, "{starts:?}");
    }
    assert_eq!(out.failed, 0);
}

#[test]
fn the_default_scenario_baseline_serves_one_copy_per_device() {
    let s = Scenario {
        waves: vec![100],
        ..Scenario::default()
    };
    let out = virt::run(&s, false, &mut |_| {}).unwrap();
    assert_eq!(out.failed, 0);
    assert_eq!(out.origin_bytes, u64::from(s.devices) * s.bundle_bytes);
}
