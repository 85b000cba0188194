//! What a device holding `OLD` downloads to get `NEW`: the stored (zstd or
//! raw, whichever is smaller) bytes of every distinct chunk of `NEW` whose
//! id is not among `OLD`'s chunks, plus `NEW`'s encoded manifest.
//!
//! ```text
//! cargo run --release -p meshota-node --example delta_size -- OLD NEW [AVG_KIB]
//! ```
//!
//! `AVG_KIB` sets the average chunk size (min = avg/4, max = avg*4, as in
//! casync); the default is the manifest default, 64 KiB. Output is one
//! `key=value` per line so scripts can pick numbers out.

use std::collections::{BTreeMap, HashSet};
use std::error::Error;
use std::fs::File;
use std::io::BufReader;

use meshota_protocol::chunking::{encode_chunk, Chunker};
use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::{ChunkId, ChunkerParams, Compatible, InstallKind};

fn params(avg_kib: Option<&str>) -> Result<ChunkerParams, Box<dyn Error>> {
    let Some(avg_kib) = avg_kib else {
        return Ok(ChunkerParams::default());
    };
    let avg: u32 = avg_kib.parse::<u32>()? * 1024;
    let p = ChunkerParams {
        min: avg / 4,
        avg,
        max: avg * 4,
    };
    p.validate()?;
    Ok(p)
}

fn old_ids(path: &str, params: ChunkerParams) -> Result<HashSet<ChunkId>, Box<dyn Error>> {
    let mut chunker = Chunker::new(BufReader::new(File::open(path)?), params)?;
    let mut ids = HashSet::new();
    while let Some(c) = chunker.next_chunk()? {
        ids.insert(c.id);
    }
    Ok(ids)
}

#[derive(Default)]
struct Tally {
    chunks: u64,
    raw: u64,
    stored: u64,
}

impl Tally {
    fn add(&mut self, raw: usize, stored: usize) {
        self.chunks += 1;
        self.raw += raw as u64;
        self.stored += stored as u64;
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(old), Some(new)) = (args.first(), args.get(1)) else {
        return Err("usage: delta_size OLD NEW [AVG_KIB]".into());
    };
    let params = params(args.get(2).map(String::as_str))?;
    let have = old_ids(old, params)?;

    let template = ManifestTemplate {
        name: "rootfs".into(),
        version: semver::Version::new(2, 0, 0),
        compatible: Compatible::new("bench")?,
        chunker: params,
        kind: InstallKind::Image,
        created_at: 0,
        meta: BTreeMap::new(),
    };
    let mut seen = HashSet::new();
    let (mut all, mut fresh) = (Tally::default(), Tally::default());
    let manifest =
        build_manifest::<_, ManifestError>(BufReader::new(File::open(new)?), template, |c| {
            // A chunk repeated inside the payload is stored and sent once.
            if seen.insert(c.id) {
                let stored = encode_chunk(&c.data).1.len();
                all.add(c.data.len(), stored);
                if !have.contains(&c.id) {
                    fresh.add(c.data.len(), stored);
                }
            }
            Ok(())
        })?;
    let manifest_bytes = manifest.encode()?.len() as u64;

    println!(
        "chunker_min_avg_max={}/{}/{}",
        params.min, params.avg, params.max
    );
    println!("old_distinct_chunks={}", have.len());
    println!("new_chunks_listed={}", manifest.chunks.len());
    println!("new_distinct_chunks={}", all.chunks);
    println!("new_payload_bytes={}", manifest.payload_size);
    println!("new_stored_bytes_full={}", all.stored);
    println!("missing_chunks={}", fresh.chunks);
    println!("missing_raw_bytes={}", fresh.raw);
    println!("missing_stored_bytes={}", fresh.stored);
    println!("manifest_bytes={manifest_bytes}");
    println!("meshota_delta_bytes={}", fresh.stored + manifest_bytes);
    Ok(())
}
