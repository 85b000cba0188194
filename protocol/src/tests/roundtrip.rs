//! Property tests: every message survives encode then decode unchanged,
//! and no byte string makes a decoder panic.

use proptest::prelude::*;

use super::*;
use crate::codec::{decode, encode, Message};
use crate::ids::{ChunkId, Compatible, DeviceId, FleetId, Group, ReleaseId, SiteId};
use crate::peer::{Bitfield, PeerRequest, PeerResponse};
use crate::release::{Command, CommandAction};
use crate::telemetry::{ByteSplit, Event, Report, ReportBody, SignedReport, Status, UpdateState};
use crate::trust::SecretKey;
use crate::Encoding;

fn rt<T: Message + PartialEq + std::fmt::Debug>(m: &T) {
    let bytes = encode(m).unwrap();
    assert_eq!(&decode::<T>(&bytes).unwrap(), m);
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

fn digest() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn state() -> impl Strategy<Value = UpdateState> {
    prop_oneof![
        Just(UpdateState::Idle),
        Just(UpdateState::Downloading),
        Just(UpdateState::Activated),
        Just(UpdateState::Committed),
        Just(UpdateState::RolledBack),
        Just(UpdateState::Failed),
    ]
}

proptest! {
    #[test]
    fn manifests_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200_000), meta in proptest::collection::btree_map(name(), name(), 0..4)) {
        let mut m = crate::manifest::tests::manifest_for(&data);
        m.meta = meta;
        rt(&m);
        let (id, back) = Manifest::decode(&m.encode().unwrap()).unwrap();
        prop_assert_eq!(id, m.id().unwrap());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn releases_gates_and_announcements_round_trip(seq in any::<u64>(), share in 0u16..=10_000, groups in proptest::collection::vec(name(), 0..3), boot in proptest::collection::vec(name(), 0..3)) {
        let w = world();
        let mut r = w.release.clone();
        r.sequence = seq;
        rt(&r);
        let sr = w.sign_release(&r);
        let mut g = w.gate_for(&sr, seq);
        g.share_bp = share;
        g.groups = groups.into_iter().map(|n| Group::new(n).unwrap()).collect();
        rt(&g);
        let ann = Announcement { release: sr, gate: w.sign_gate(&g), bootstrap: boot, http_origin: Some("http://127.0.0.1:1".into()) };
        rt(&ann);
        rt(&w.root);
    }

    #[test]
    fn commands_round_trip(seq in any::<u64>(), to in proptest::option::of(digest()), target in proptest::option::of(name())) {
        for action in [CommandAction::CheckNow, CommandAction::Cancel, CommandAction::Rollback { to: to.map(ReleaseId::from_bytes) }] {
            rt(&Command { fleet: FleetId::new("f").unwrap(), target: target.clone().map(|t| DeviceId::new(t).unwrap()), action, sequence: seq, expires_at: seq / 2 });
        }
    }

    #[test]
    fn reports_round_trip_signed(counter in any::<u64>(), st in state(), to in state(), split in any::<(u64, u64, u64, u64)>(), msg in ".{0,64}") {
        let key = SecretKey::from_seed([3; 32]);
        let device = DeviceId::new("dev-1").unwrap();
        let rel = ReleaseId::digest(b"r");
        let bodies = vec![
            ReportBody::Status(Status { version: Some(semver::Version::new(1, 0, counter % 7)), release: Some(rel), slot: Some("a".into()), state: st, target: None, peer_id: Some("12D3".into()), site: SiteId::new("s1").unwrap(), tags: vec!["lab".into()], online: counter % 2 == 0, groups: vec![Group::new("canary").unwrap()], compatible: Some(Compatible::new("rpi4").unwrap()), trust_version: Some(counter % 3) }),
            ReportBody::Event(Event::StateChanged { release: Some(rel), from: st, to }),
            ReportBody::Event(Event::Progress { release: rel, bytes: ByteSplit { same_site: split.0, other_peers: split.1, origin: split.2, local: split.3 }, total: 9, rate_bps: 1 }),
            ReportBody::Event(Event::InstallResult { release: rel, ok: true, detail: msg.clone() }),
            ReportBody::Event(Event::HealthResult { release: rel, ok: false, detail: msg.clone() }),
            ReportBody::Event(Event::Error { code: "E_X".into(), message: msg.clone(), release: None }),
        ];
        for body in bodies {
            let r = Report { device: device.clone(), counter, time: 1, body };
            rt(&r);
            let s = SignedReport::sign(&r, &key).unwrap();
            rt(&s);
            prop_assert_eq!(s.verify(&key.public()).unwrap(), r);
        }
    }

    #[test]
    fn peer_messages_round_trip(id in digest(), bits in proptest::collection::vec(any::<bool>(), 0..300), data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut bf = Bitfield::new(bits.len());
        for (i, b) in bits.iter().enumerate() { if *b { bf.set(i) } }
        rt(&PeerRequest::Get { chunk: ChunkId::from_bytes(id), hints: id[0] % 2 == 0 });
        rt(&PeerRequest::Have { manifest: crate::ManifestId::from_bytes(id), site: Some(SiteId::new("x").unwrap()), importing: None });
        rt(&PeerRequest::Have { manifest: crate::ManifestId::from_bytes(id), site: None, importing: Some(Bitfield::new(3)) });
        rt(&PeerRequest::Manifest { id: crate::ManifestId::from_bytes(id) });
        rt(&PeerResponse::Have { bitfield: bf.clone(), site: None, origin: true, fetching: false, importing: None, relayed: None, roster: vec![], site_holds: None, site_holds_relayed: None });
        rt(&PeerResponse::Have { bitfield: bf.clone(), site: None, origin: false, fetching: true, importing: Some(bf.clone()), relayed: Some(bf.clone()), roster: vec![1, u64::MAX], site_holds: Some(bf.clone()), site_holds_relayed: Some(bf) });
        rt(&PeerResponse::Chunk { encoding: Encoding::Zstd, data: data.clone().into() });
        rt(&PeerResponse::Manifest { data });
        rt(&PeerResponse::NotFound);
        rt(&PeerResponse::Busy);
    }

    #[test]
    fn no_input_makes_a_decoder_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Announcement>(&bytes);
        let _ = decode::<Manifest>(&bytes);
        let _ = decode::<SignedReport>(&bytes);
        let _ = decode::<PeerRequest>(&bytes);
        let _ = decode::<PeerResponse>(&bytes);
        let _ = decode::<TrustRoot>(&bytes);
        let _ = decode::<Signed<Command>>(&bytes);
        let _ = crate::bundle::BundleReader::open(bytes.as_slice());
    }
}
