//! Network partitions across real processes: a `meshota-node` in its own
//! network namespace, whose only link to the broker and origin is taken
//! down and brought back up in the middle of its download.
//!
//! Needs root and iproute2 (`.ci/run` runs as root and installs it); on a
//! machine that cannot create a namespace the test says so and skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

#[test]
fn a_node_cut_off_and_reconnected_mid_download_commits_without_fetching_a_chunk_twice() {
    let net = match NetNs::create() {
        Ok(n) => n,
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot create a network namespace here ({e}); run as root with iproute2"
            );
            return;
        }
    };
    let mut lab = Lab::new(1024 * 1024, 41);
    lab.listen_ip = net.host_ip.clone();
    // About twelve seconds of download, so the cuts land in the middle.
    lab.download_bps = 80 * 1024;
    lab.start_broker();
    let release = lab.publish();
    lab.node_netns = Some(net.name.clone());
    lab.node_listen = net.ns_ip.clone();
    lab.add_node("node-1");
    lab.wait_online(&["node-1"]);
    lab.create_rollout_in(&release, "100");

    eventually("node-1 holding a few chunks", WAIT, || {
        (lab.nodes[0].chunks_stored().len() >= 2).then_some(())
    });
    let before = lab.device("node-1").unwrap();
    assert_ne!(
        before["state"], "committed",
        "the cut must land mid-download"
    );
    // One outage longer than the chunk request timeouts, then flapping.
    for (down, up) in [(12, 3), (2, 2), (2, 0)] {
        net.cut();
        std::thread::sleep(Duration::from_secs(down));
        net.restore();
        std::thread::sleep(Duration::from_secs(up));
    }

    let deadline = std::time::Instant::now() + WAIT;
    while lab
        .device("node-1")
        .is_none_or(|d| d["state"] != "committed")
    {
        if std::time::Instant::now() > deadline {
            let read = |ext: &str| {
                std::fs::read_to_string(lab.nodes[0].log().with_extension(ext)).unwrap_or_default()
            };
            let (out, err) = (read("out"), read("err"));
            let tail = |s: &str| {
                let v: Vec<&str> = s.lines().filter(|l| !l.contains("chunk_stored")).collect();
                v[v.len().saturating_sub(40)..].join("\n")
            };
            let log = format!("{}\n{}", tail(&out), tail(&err));
            panic!(
                "node-1 did not commit after the partition; device: {}\nnode log:\n{log}",
                lab.device_detail("node-1")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let node = &lab.nodes[0];
    assert!(
        node.active_payload().as_deref() == Some(&lab.payload[..]),
        "the active slot differs from the payload"
    );
    let stored = node.chunks_stored();
    let distinct: HashSet<&String> = stored.iter().collect();
    assert_eq!(
        distinct.len(),
        stored.len(),
        "a chunk was fetched twice: {stored:?}"
    );
}
