//! Small live fleets: the real broker and agents over the shaped loopback
//! network. The figures add up, and faults end as they should: health
//! failures roll back, a device that crashes mid-download resumes from its
//! store, malicious peers do not stop anyone.
// Test scaffolding may unwrap.
#![allow(clippy::unwrap_used)]

use meshota_sim::live;
use meshota_sim::scenario::Scenario;
use meshota_sim::summary::Summary;

const MIB: u64 = 1024 * 1024;

fn small() -> Scenario {
    Scenario {
        devices: 6,
        sites: 2,
        bundle_bytes: 2 * MIB,
        chunk_avg: 64 * 1024,
        waves: vec![50, 100],
        soak_s: 1,
        install_s: 1,
        health_s: 1,
        lan_peers: 3,
        wan_peers: 1,
        // A peer that turns out bad leaves the origin's copy withheld
        // for this long; short, so a small fleet is not held up by it.
        origin_dedup_s: 5,
        // Every run must end well inside the test's time.
        live_timeout_s: 45,
        ..Scenario::default()
    }
}

fn run(s: &Scenario) -> (live::LiveRun, Summary) {
    // Wave and fault lines (a stall's breakdown among them) go to the
    // captured output, so a failure says where the fleet stood.
    let run = live::run(s, |e| match e {
        live::LiveEvent::Progress { .. } => {}
        e => eprintln!("{e:?}"),
    })
    .unwrap();
    let summary = Summary::new(s, &run.outcome, None);
    (run, summary)
}

#[test]
fn every_device_commits_and_the_figures_add_up() {
    let s = small();
    let (run, sum) = run(&s);
    assert!(sum.ok, "{sum:#?}");
    assert_eq!(sum.committed + sum.rolled_back + sum.failed, s.devices);
    assert_eq!(sum.committed, s.devices);
    // The origin must ship at least one full copy, in stored form.
    assert!(run.outcome.origin_bytes >= run.release_stored_bytes);
    assert!(run.release_stored_bytes > 0);
    // Every payload byte a device holds came from somewhere.
    let b = run.outcome.bytes;
    assert!(
        b.same_site + b.other_peers + b.origin + b.local >= u64::from(s.devices) * s.bundle_bytes
    );
    // The WAN figure is what the shaper counted, and each site needed at
    // least the chunk bytes of one copy from outside.
    assert_eq!(run.outcome.site_wan_in.len(), s.sites as usize);
    assert_eq!(
        sum.max_site_wan_bytes,
        *run.outcome.site_wan_in.iter().max().unwrap()
    );
    for site in &run.outcome.site_wan_in {
        assert!(*site >= run.release_stored_bytes / 2, "{site}");
    }
    // Reads from the origin carry its uploads plus protocol overhead.
    assert!(run.origin_wire_bytes >= run.outcome.origin_bytes);
    // One connection to the origin each: the fetch's dial of the seeder
    // its announcement names reuses the bootstrap connection (a second
    // one was a handshake and identify over the site's WAN per device).
    for d in &run.devices {
        assert_eq!(d.origin_conns, 1, "{d:?}");
        assert!(d.lookups > 0, "{d:?}");
        // A device learns what a peer of another site holds only by
        // asking it.
        if d.other_peers > 0 {
            assert!(d.far_have_received > 0, "{d:?}");
        }
    }
    // Every far `Have` answer received was given by a device of the
    // fleet (the origin has no site).
    let received: u64 = run.devices.iter().map(|d| d.far_have_received).sum();
    let answered: u64 = run.devices.iter().map(|d| d.far_have_answered).sum();
    assert!(
        received <= answered,
        "{received} received, {answered} answered"
    );
    // Commit times are sorted, within the run, and after the first wave.
    let t = &run.outcome.commit_times_s;
    assert!(t.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(sum.time_to_100_s, t.last().copied());
    assert!(!run.outcome.waves.is_empty());
    assert!(t[0] >= run.outcome.waves[0].0);
}

#[test]
fn a_share_of_devices_failing_health_rolls_back_and_the_rest_commit() {
    let s = Scenario {
        health_fail_rate: 2.0 / 6.0,
        ..small()
    };
    let (_, sum) = run(&s);
    assert_eq!(sum.rolled_back, 2, "{sum:#?}");
    assert_eq!(sum.committed, 4, "{sum:#?}");
    assert_eq!(sum.failed, 0);
    assert!(
        sum.ok,
        "rolled-back devices are faulted on purpose: {sum:#?}"
    );
}

#[test]
fn a_device_that_crashes_mid_download_resumes_from_its_store() {
    let s = Scenario {
        crash_rate: 1.0 / 6.0,
        // Slow enough that the crash lands inside the download.
        device_down_bps: MIB,
        ..small()
    };
    let (run, sum) = run(&s);
    assert_eq!(run.restarts, 1, "{sum:#?}");
    assert!(sum.ok, "{sum:#?}");
    let b = run.outcome.bytes;
    // The restarted fetch found what it had verified before the crash.
    assert!(b.local >= s.bundle_bytes * 3 / 10, "{b:?}");
    // And fetched only the rest: about one copy per device.
    let fetched = b.same_site + b.other_peers + b.origin;
    let one_copy_each = u64::from(s.devices) * s.bundle_bytes;
    assert!(fetched < one_copy_each + s.bundle_bytes * 3 / 10, "{b:?}");
}

#[test]
fn malicious_peers_do_not_stop_anyone_from_committing() {
    let s = Scenario {
        malicious_rate: 2.0 / 6.0,
        ..small()
    };
    let (_, sum) = run(&s);
    assert!(sum.ok, "{sum:#?}");
    assert_eq!(sum.committed, s.devices);
}
