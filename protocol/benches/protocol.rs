//! Protocol microbenchmarks: chunking + hashing throughput next to raw
//! BLAKE3, ed25519 signature verification, and encoding a chunk answer.
//!
//! Run with `cargo bench -p meshota-protocol`. Sample sizes are small so
//! the whole run takes a couple of minutes on two cores.

// Benchmarks run on fixed, known-good inputs built right here; a failure
// to build them is a bug in the bench, best reported loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshota_protocol::chunking::Chunker;
use meshota_protocol::ids::ManifestId;
use meshota_protocol::{
    codec, Channel, ChunkerParams, Compatible, Encoding, PeerResponse, Release, Role, RoleKeys,
    SecretKey, Signed,
};

const BUF_LEN: usize = 64 * 1024 * 1024;

/// Pseudo-random but compressible-ish bytes (xorshift with runs), so the
/// chunker sees realistic cut-point density without a rand dependency.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (x & 0x7) as usize;
        let byte = (x >> 32) as u8;
        out.push(byte);
        out.extend(std::iter::repeat_n(byte, run));
    }
    out.truncate(len);
    out
}

fn chunking(c: &mut Criterion) {
    let data = payload(BUF_LEN);
    let mut g = c.benchmark_group("chunking_64MiB");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(BUF_LEN as u64));
    g.bench_function("chunker_fastcdc_blake3", |b| {
        b.iter(|| {
            let mut chunker =
                Chunker::new(&data[..], ChunkerParams::default()).expect("default params");
            let mut n = 0usize;
            while let Ok(Some(chunk)) = chunker.next_chunk() {
                n += chunk.data.len();
            }
            black_box((n, chunker.finish()))
        })
    });
    g.bench_function("blake3_hash", |b| {
        b.iter(|| black_box(blake3::hash(black_box(&data))))
    });
    g.finish();
}

fn signatures(c: &mut Criterion) {
    let key = SecretKey::from_seed([7; 32]);
    let release = Release {
        manifest_id: ManifestId::digest(b"manifest"),
        name: "rootfs".into(),
        version: semver::Version::new(1, 2, 3),
        compatible: Compatible::new("rpi4").expect("valid id"),
        channel: Channel::new("stable").expect("valid id"),
        payload_size: 1 << 30,
        sequence: 1,
        expires_at: u64::MAX,
    };
    let signed = Signed::sign(&release, &[&key]).expect("small release encodes");
    let role = RoleKeys {
        keys: vec![key.public()],
        threshold: 1,
    };
    let msg = signed.body().to_vec();
    let sig = key.sign(&msg);
    let public = key.public();

    let mut g = c.benchmark_group("ed25519");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("signed_release_verify", |b| {
        b.iter(|| black_box(signed.verify(Role::Release, black_box(&role)).is_ok()))
    });
    g.bench_function("public_key_verify", |b| {
        b.iter(|| black_box(public.verify(black_box(&msg), black_box(&sig))))
    });
    g.finish();
}

/// A chunk answer of the simulator's average chunk, encoded whole (one
/// buffer, as MQTT and files need) and in parts (as the peer protocol
/// writes it: the envelope's header, then the body).
fn chunk_answer(c: &mut Criterion) {
    const LEN: usize = 256 * 1024;
    let answer = PeerResponse::Chunk {
        encoding: Encoding::Raw,
        data: payload(LEN).into(),
    };
    let mut g = c.benchmark_group("encode_chunk_answer_256KiB");
    g.sample_size(50)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("whole", |b| {
        b.iter(|| black_box(codec::encode(black_box(&answer)).expect("fits")))
    });
    g.bench_function("parts", |b| {
        b.iter(|| black_box(codec::encode_parts(black_box(&answer)).expect("fits")))
    });
    g.finish();
}

criterion_group!(benches, chunking, signatures, chunk_answer);
criterion_main!(benches);
