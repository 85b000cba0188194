//! Who knows whom: each device's bounded neighbour set, the reverse
//! ("who hears my news") lists, the release's manifest and the seeded
//! random numbers of a run.
//!
//! A real node keeps a bounded number of connections, so a device knows
//! `lan_peers` members of its own site (ring neighbours, alternating
//! sides, so the site is connected in a few hops), `wan_peers` random
//! devices of other sites, the origin, and the few providers of other
//! sites its node's discovery dials (at most four up at once; see
//! `Sim::discovery`). Never the whole fleet: that is
//! what keeps a 100,000-device run linear in the fleet size.

use meshota_protocol::{ChunkRef, Manifest};

use crate::scenario::Scenario;

/// SplitMix64: the simulator's seeded generator, so runs replay exactly.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Each device's neighbours (`peers`) and, reversed, the devices that
/// have it as a neighbour (`subs`: whom it tells about new chunks).
pub(super) struct Topology {
    pub peers: Vec<Vec<u32>>,
    pub subs: Vec<Vec<u32>>,
}

impl Topology {
    /// The static mesh; empty when peer-to-peer is off.
    pub fn build(s: &Scenario, p2p: bool, rng: &mut Rng) -> Self {
        let n = s.devices as usize;
        let mut peers = vec![Vec::new(); n];
        if p2p {
            for (d, list) in peers.iter_mut().enumerate() {
                let d = d as u32;
                let site = s.site_of(d);
                // Devices are spread round-robin, so site members are
                // `site, site + sites, …` and `d`'s rank is `d / sites`.
                let members = s.devices.saturating_sub(site).div_ceil(s.sites) as usize;
                let pos = (d / s.sites) as usize;
                let member = |i: usize| site + (i as u32) * s.sites;
                let k = (s.lan_peers as usize).min(members.saturating_sub(1));
                for off in 1..=k {
                    let step = off.div_ceil(2);
                    let j = if off % 2 == 1 {
                        (pos + step) % members
                    } else {
                        (pos + members - step % members) % members
                    };
                    let m = member(j);
                    if m != d && !list.contains(&m) {
                        list.push(m);
                    }
                }
                if s.sites > 1 {
                    for _ in 0..s.wan_peers {
                        let o = rng.below(u64::from(s.devices)) as u32;
                        if s.site_of(o) != site && !list.contains(&o) {
                            list.push(o);
                        }
                    }
                }
            }
        }
        let mut subs = vec![Vec::new(); n];
        for (d, list) in peers.iter().enumerate() {
            for &p in list {
                subs[p as usize].push(d as u32);
            }
        }
        Self { peers, subs }
    }

    /// Adds `p` to `d`'s neighbours (and `d` to `p`'s listeners); false
    /// if it was already there.
    pub fn link(&mut self, d: u32, p: u32) -> bool {
        if d == p || self.peers[d as usize].contains(&p) {
            return false;
        }
        self.peers[d as usize].push(p);
        self.subs[p as usize].push(d);
        true
    }
}

/// The release's manifest: the chunks of the payload a live run would
/// build its bundle from ([`crate::payload`]). The scheduler only needs
/// their ids and lengths, and the release only the manifest's id.
pub(super) fn manifest(s: &Scenario) -> Result<Manifest, super::VirtError> {
    let chunks = crate::payload::chunks(s)?
        .into_iter()
        .map(|(id, len)| ChunkRef { id, len })
        .collect();
    Ok(Manifest {
        name: "sim".into(),
        version: meshota_protocol::semver::Version::new(1, 0, 0),
        compatible: meshota_protocol::Compatible::new("sim")?,
        payload_size: s.bundle_bytes,
        payload_hash: meshota_protocol::PayloadHash::digest(b"sim"),
        chunker: crate::payload::chunker_params(s),
        chunks,
        kind: meshota_protocol::InstallKind::Image,
        created_at: 0,
        meta: Default::default(),
    })
}
