//! Every site in the first wave: the planner names a device of each site
//! the first wave's share leaves out.

use std::collections::BTreeSet;

use meshota_protocol::release::bucket;
use meshota_protocol::SiteId;

use super::*;

fn site(i: usize, sites: usize) -> SiteId {
    SiteId::new(format!("site-{:02}", i % sites)).unwrap()
}

/// `n` devices over `sites` sites (device `i` in site `i % sites`).
fn with_sites(spec: RolloutSpec, n: usize, sites: usize) -> Harness {
    let mut h = Harness::plain(spec, 0);
    for i in 0..n {
        let info = DeviceInfo {
            id: dev(i),
            groups: Vec::new(),
            compatible: compat(),
            site: Some(site(i, sites)),
        };
        h.fleet.insert(info.id.clone(), Vec::new());
        h.p.handle_device(info, T0 - 100);
    }
    h
}

fn sites_of(ids: &[DeviceId], sites: usize) -> BTreeSet<SiteId> {
    ids.iter()
        .map(|id| {
            let i: usize = id.as_str().trim_start_matches("dev-").parse().unwrap();
            site(i, sites)
        })
        .collect()
}

#[test]
fn the_first_wave_names_the_lowest_device_of_each_site_its_share_leaves_out() {
    // 1 % of 1,000 devices over 40 sites: ten devices, so at least 30
    // sites have none in the share.
    let (n, sites) = (1000, 40);
    let mut s = spec();
    s.waves = vec![1, 100];
    let mut h = with_sites(s, n, sites);
    h.at(T0);
    let g = h.gate();
    let by_share: Vec<DeviceId> = (0..n)
        .map(dev)
        .filter(|id| bucket(id, &rel()) < g.share_bp)
        .collect();
    assert_eq!(by_share.len(), 10);
    let covered = sites_of(&by_share, sites);
    assert!(g.devices.len() >= 30, "{}", g.devices.len());
    assert_eq!(g.devices.len(), sites - covered.len());
    for named in &g.devices {
        let i: usize = named.as_str().trim_start_matches("dev-").parse().unwrap();
        let s = site(i, sites);
        assert!(
            !covered.contains(&s),
            "{named} is in a site the share covers"
        );
        let lowest = (0..n)
            .filter(|j| site(*j, sites) == s)
            .map(|j| (bucket(&dev(j), &rel()), dev(j)))
            .min()
            .unwrap();
        assert_eq!(&lowest.1, named);
    }
    // Every site now has a device in the first wave, and the wave counts
    // the named ones.
    let targeted = h.targeted();
    assert_eq!(sites_of(&targeted, sites).len(), sites);
    assert_eq!(targeted.len(), 10 + g.devices.len());
    assert_eq!(
        h.status().waves[0].counts.targeted as usize,
        10 + g.devices.len()
    );
}

#[test]
fn named_devices_stay_in_every_later_gate_and_the_rollout_completes() {
    let (n, sites) = (400, 20);
    let mut s = spec();
    s.waves = vec![2, 50, 100];
    let mut h = with_sites(s, n, sites);
    h.at(T0);
    let named = h.gate().devices;
    assert!(!named.is_empty());
    for _ in 0..3 {
        h.commit_targeted();
        h.run_until(h.now + SOAK);
    }
    assert_eq!(h.p.state(), RolloutState::Completed);
    assert_eq!(h.targeted().len(), n);
    // The named devices count in the first wave only.
    let waves = h.status().waves;
    let total: u32 = waves.iter().map(|w| w.counts.targeted).sum();
    assert_eq!(total as usize, n);
    for g in h.gates().iter().skip(1) {
        assert_eq!(g.devices, named);
    }
}

#[test]
fn a_fleet_whose_sites_are_unknown_gets_no_named_device() {
    let mut h = Harness::plain(spec(), 1000);
    h.at(T0);
    assert!(h.gate().devices.is_empty());
}

#[test]
fn the_named_devices_survive_a_snapshot() {
    let mut s = spec();
    s.waves = vec![1, 100];
    let mut h = with_sites(s, 500, 25);
    h.at(T0);
    let named = h.gate().devices;
    assert!(!named.is_empty());
    let bytes = h.p.snapshot().unwrap();
    let mut restored = Planner::restore(&bytes).unwrap();
    // The re-signed gate still names them.
    let later = T0 + DEFAULT_GATE_LIFETIME_SECS;
    restored.handle_timeout(later);
    let gate = std::iter::from_fn(|| restored.poll_output())
        .filter_map(|o| match o {
            PlannerOutput::PublishGate(g) => Some(g),
            _ => None,
        })
        .last()
        .unwrap();
    assert_eq!(gate.devices, named);
}

#[test]
fn named_devices_are_published_at_once_even_when_max_parallel_is_full() {
    let mut s = spec();
    s.waves = vec![1, 100];
    s.max_parallel = Some(2);
    let mut h = with_sites(s, 1000, 40);
    h.at(T0);
    let g = h.gate();
    assert!(g.devices.len() >= 30, "{}", g.devices.len());
    // They took every slot, so the share has not grown yet; it does as
    // they finish.
    assert_eq!(g.share_bp, 0);
    h.commit_targeted();
    h.at(h.now + 1);
    assert!(h.gate().share_bp > 0);
}
