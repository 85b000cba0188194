//! Cross-module tests: verification failures, bundle tampering and
//! round-trips of every message.

mod bundle_tamper;
mod roundtrip;
mod verify_negative;

use crate::chunking::encode_chunk;
use crate::manifest::tests::{manifest_for, template};
use crate::release::{Action, Announcement, Release, RolloutGate};
use crate::trust::tests::{fixture, Keys};
use crate::trust::{Signed, TrustRoot};
use crate::{bundle, Channel, Manifest};

pub(crate) const NOW: u64 = 1_800_000_000;

pub(crate) struct World {
    pub keys: Keys,
    pub root: TrustRoot,
    pub release: Release,
}

pub(crate) fn world() -> World {
    let (keys, root) = fixture();
    let manifest = manifest_for(b"payload bytes for the test release");
    let release = release_for(&manifest, 5);
    World {
        keys,
        root,
        release,
    }
}

pub(crate) fn release_for(m: &Manifest, sequence: u64) -> Release {
    Release {
        manifest_id: m.id().unwrap(),
        name: m.name.clone(),
        version: m.version.clone(),
        compatible: m.compatible.clone(),
        channel: Channel::new("stable").unwrap(),
        payload_size: m.payload_size,
        sequence,
        expires_at: NOW + 86_400 * 365,
    }
}

impl World {
    pub fn sign_release(&self, r: &Release) -> Signed<Release> {
        Signed::sign(r, &[&self.keys.release[0], &self.keys.release[1]]).unwrap()
    }
    pub fn gate_for(&self, release: &Signed<Release>, sequence: u64) -> RolloutGate {
        RolloutGate {
            release_id: release.id(),
            share_bp: 10_000,
            groups: vec![],
            action: Action::InstallAndActivate,
            not_before: 0,
            expires_at: NOW + 86_400,
            sequence,
            devices: Vec::new(),
            prefetch_bp: 0,
        }
    }
    pub fn sign_gate(&self, g: &RolloutGate) -> Signed<RolloutGate> {
        Signed::sign(g, &[&self.keys.rollout[0]]).unwrap()
    }
    pub fn announcement(&self) -> Announcement {
        let release = self.sign_release(&self.release);
        let gate = self.sign_gate(&self.gate_for(&release, 7));
        Announcement {
            release,
            gate,
            bootstrap: vec![],
            http_origin: None,
        }
    }
}

/// A complete bundle of `payload`, signed by the world's release keys.
pub(crate) fn bundle_bytes(w: &World, payload: &[u8]) -> (Manifest, Vec<u8>) {
    let m = crate::manifest::build_manifest::<_, crate::manifest::ManifestError>(
        payload,
        template(),
        |_| Ok(()),
    )
    .unwrap();
    let release = w.sign_release(&release_for(&m, 1));
    let header = bundle::BundleHeader {
        manifest: m.encode().unwrap(),
        release,
    };
    let mut out = bundle::BundleWriter::new(Vec::new(), &header).unwrap();
    for (off, c) in m.offsets() {
        let raw = &payload[off as usize..off as usize + c.len as usize];
        let (enc, stored) = encode_chunk(raw);
        out.write_chunk(enc, &stored).unwrap();
    }
    (m, out.finish().unwrap())
}
