//! Seeded random input sequences, checking invariants after every step:
//! the incremental indexes equal a rebuild from the persisted core, a
//! restored snapshot equals the original, gate sequences strictly rise,
//! shares never shrink, and every targeted device is counted once.

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const STATES: [UpdateState; 9] = [
    UpdateState::Idle,
    UpdateState::Downloading,
    UpdateState::Downloaded,
    UpdateState::Installing,
    UpdateState::Installed,
    UpdateState::Activated,
    UpdateState::Committed,
    UpdateState::RolledBack,
    UpdateState::Failed,
];

fn check(p: &Planner, now: u64, gates: &[RolloutGate], rebuild: bool) {
    if rebuild {
        let mut rebuilt = p.clone();
        rebuilt.rebuild();
        assert_eq!(rebuilt.derived, p.derived, "incremental indexes drifted");
    }
    for w in p.status(now).waves {
        let c = w.counts;
        assert_eq!(
            c.targeted,
            c.pending
                + c.downloading
                + c.installing
                + c.awaiting_health
                + c.succeeded
                + c.failed
                + c.rolled_back
                + c.not_reporting
        );
    }
    let targeted = p.core.devices.values().filter(|r| r.wave.is_some()).count();
    let counted: u32 = p.status(now).waves.iter().map(|w| w.counts.targeted).sum();
    assert_eq!(targeted, counted as usize);
    for g in gates.windows(2) {
        assert!(g[1].sequence > g[0].sequence);
        if g[1].action != Action::Stop {
            assert!(g[1].share_bp >= g[0].share_bp);
        }
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut s = spec();
    if rng.below(2) == 0 {
        s.groups = vec![group("canary")];
    }
    if rng.below(2) == 0 {
        s.max_parallel = Some(1 + rng.below(8) as u32);
    }
    s.waves = match rng.below(3) {
        0 => vec![1, 10, 50, 100],
        1 => vec![30, 60],
        _ => vec![100],
    };
    s.success_threshold_pct = 50 + rng.below(51) as u8;
    s.error_threshold_pct = 5 + rng.below(40) as u8;
    s.gate_lifetime_secs = 2 + rng.below(5_000);
    let mut p = Planner::new(RolloutId::digest(b"random"), s, T0 - 10).unwrap();
    let mut now = T0 - 10;
    let mut counters: BTreeMap<usize, u64> = BTreeMap::new();
    let mut progress: BTreeMap<usize, usize> = BTreeMap::new();
    let mut gates = Vec::new();
    for step in 0..1500 {
        let d = rng.below(60) as usize;
        match rng.below(20) {
            0..=2 => {
                let groups = if rng.below(5) == 0 {
                    vec![group("canary")]
                } else {
                    Vec::new()
                };
                let compatible = if rng.below(15) == 0 {
                    Compatible::new("other").unwrap()
                } else {
                    compat()
                };
                p.handle_device(
                    DeviceInfo {
                        id: dev(d),
                        groups,
                        compatible,
                        site: None,
                    },
                    now,
                );
            }
            3 => p.handle_device_removed(&dev(d), now),
            4..=12 => {
                let c = counters.entry(d).or_insert(0);
                // Mostly newer, sometimes a repeat or an older report.
                *c = match rng.below(6) {
                    0 => c.saturating_sub(1),
                    1 => *c,
                    _ => *c + 1,
                };
                let release = if rng.below(10) == 0 {
                    Some(ReleaseId::digest(b"other"))
                } else {
                    Some(rel())
                };
                // Mostly the next step of a healthy install, sometimes
                // anything at all (failures, rollbacks, retries).
                let at = progress.entry(d).or_insert(0);
                let state = if rng.below(20) < 19 {
                    *at = (*at + 1).min(6);
                    STATES[*at]
                } else {
                    *at = 0;
                    STATES[rng.below(9) as usize]
                };
                let bytes = (rng.below(3) == 0).then(|| ByteSplit {
                    same_site: rng.below(1000),
                    other_peers: rng.below(1000),
                    origin: rng.below(1000),
                    local: 0,
                });
                p.handle_report(
                    &dev(d),
                    DeviceReport {
                        release,
                        state,
                        bytes,
                        counter: *c,
                    },
                    now,
                );
            }
            13 if rng.below(4) == 0 => {
                // Abort is final, so it is rare enough to let most runs
                // go through several waves first.
                let cmd = match rng.below(40) {
                    0..=9 => PlannerCommand::Pause,
                    10..=37 => PlannerCommand::Resume,
                    38 => PlannerCommand::Abort,
                    _ => PlannerCommand::Rollback,
                };
                let _ = p.handle_command(cmd, now);
            }
            _ => {
                now = match p.poll_timeout() {
                    Some(t) if rng.below(2) == 0 => t.max(now),
                    _ => now + rng.below(400),
                };
                p.handle_timeout(now);
            }
        }
        while let Some(o) = p.poll_output() {
            if let PlannerOutput::PublishGate(g) = o {
                gates.push(g);
            }
        }
        check(&p, now, &gates, step % 4 == 0);
        if step % 50 == 0 {
            let r = Planner::restore(&p.snapshot().unwrap()).unwrap();
            assert_eq!(r.core, p.core);
            assert_eq!(r.derived, p.derived);
        }
    }
}

#[test]
fn random_input_sequences_keep_every_invariant() {
    for seed in 1..=16u64 {
        run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
}
