//! A node SIGKILLed at seeded random points of its updates: every
//! iteration ends committed or rolled back, with an intact active slot,
//! and no chunk is fetched twice (a chunk stored before the kill is never
//! fetched again after the restart).
//!
//! `MESHOTA_KILL9_ITERATIONS` (default 20) and `MESHOTA_KILL9_SEED` tune
//! it; `benches/kill9.sh` runs hundreds of iterations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// Payload of each release, and the node's download cap: a download takes
/// about a second, so kill points spread over fetch, install and commit.
const PAYLOAD: usize = 768 * 1024;
const DOWNLOAD_BPS: u64 = 768 * 1024;
/// The health check holds the trial for this long, so kills also land
/// between activation and commit.
const HEALTH_SCRIPT: &str = "sleep 0.4";
/// Kill points are drawn from 0..KILL_WINDOW after the rollout starts.
const KILL_WINDOW_MS: u64 = 2_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How one iteration ended.
#[derive(Debug, PartialEq)]
enum End {
    Committed,
    RolledBack,
}

#[test]
fn a_node_killed_at_random_points_of_its_updates_always_ends_committed_or_rolled_back() {
    let iterations = env_u64("MESHOTA_KILL9_ITERATIONS", 20);
    let seed = env_u64("MESHOTA_KILL9_SEED", 0x6b69_6c6c);
    let mut rng = Rng(seed);
    let mut lab = Lab::new(PAYLOAD, seed);
    lab.download_bps = DOWNLOAD_BPS;
    lab.health_script = Some(HEALTH_SCRIPT.into());
    lab.start_broker();
    let n = lab.add_node("victim");
    lab.wait_online(&["victim"]);

    // What the active slot held before the current update (none at first).
    let mut before: Option<Vec<u8>> = None;
    let mut ends: HashMap<String, usize> = HashMap::new();
    let mut total_chunks = 0;
    let started = Instant::now();
    for it in 0..iterations {
        let payload = payload(PAYLOAD, seed ^ (it + 1).wrapping_mul(0x1000_0001));
        let input = lab.path("payload.bin");
        std::fs::write(&input, &payload).unwrap();
        let bundle = lab.path("update.mota");
        lab.create_bundle(&input, &format!("1.{}.0", it + 1), it + 2, &bundle);
        let release = lab.publish_file(&bundle);
        lab.create_rollout_in(&release, "100");

        let kill_at = Duration::from_millis(rng.next() % KILL_WINDOW_MS);
        // The kill point itself is the test input, not a wait for a condition.
        std::thread::sleep(kill_at);
        let held_before = lab.nodes[n].chunks_stored().len();
        let phase = lab.nodes[n].status()["state"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        lab.kill_node(n);
        lab.start_node(n);

        let end = eventually(
            &format!("iteration {it}: the node finishes after a kill at {kill_at:?} ({phase})"),
            WAIT,
            || {
                let st = lab.nodes[n].status();
                let state = st["state"].as_str().unwrap_or("").to_string();
                match state.as_str() {
                    "committed" if st["installed_release"] == release.as_str() => {
                        Some(End::Committed)
                    }
                    "rolled-back" | "failed" => Some(End::RolledBack),
                    _ => None,
                }
            },
        );
        let node = &lab.nodes[n];
        let active = node.active_payload();
        match end {
            End::Committed => {
                assert!(
                    active.as_deref() == Some(payload.as_slice()),
                    "iteration {it}: committed, but the active slot is not the payload"
                );
                assert!(node.active_release().unwrap().starts_with(&release));
                before = active;
            }
            End::RolledBack => assert!(
                active == before,
                "iteration {it}: rolled back, but the active slot is not the previous one"
            ),
        }
        *ends
            .entry(format!("{end:?} after a kill in {phase}"))
            .or_default() += 1;

        let stored = node.chunks_stored();
        eprintln!(
            "iteration {it}: killed at {kill_at:?} in {phase} with {} chunks of this release stored; {end:?} after {} more",
            held_before.saturating_sub(total_chunks),
            stored.len() - held_before,
        );
        total_chunks = stored.len();
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<&String> = stored.iter().filter(|c| !seen.insert(*c)).collect();
        assert!(
            twice.is_empty(),
            "iteration {it}: chunks fetched twice: {twice:?}"
        );
    }
    eprintln!(
        "{iterations} kill -9 iterations (seed {seed:#x}) in {:?}: {ends:?}",
        started.elapsed()
    );
    assert!(
        !lab.nodes[n].chunks_stored().is_empty(),
        "the chunk log is empty: is `meshota::chunk_stored` logging enabled?"
    );
}
