//! # meshota-tests
//!
//! End-to-end tests that run the shipped binaries (`meshota`,
//! `meshota-broker`, `meshota-node`) as separate processes on loopback,
//! on ephemeral ports and in temporary directories (issue 8).
//!
//! # Layout
//!
//! | file | what it proves |
//! |---|---|
//! | `tests/common/mod.rs` | the harness: keys, bundles, the broker and nodes as processes killed on drop, the CLI, bounded polling |
//! | `tests/rejections.rs` | a tampered bundle upload is refused; a node given a forged announcement on the broker installs nothing and reports why |
//! | `tests/rollout.rs` | a two-wave rollout takes five nodes to committed with byte-identical slots; a rollout survives a SIGKILL of the broker |
//! | `tests/kill9.rs` | a node SIGKILLed at seeded random points of its updates always ends committed or rolled back, and never fetches a chunk twice |
//!
//! The binaries are found next to the test executable (`target/<profile>`)
//! or in `MESHOTA_BIN_DIR`. `cargo test --workspace` builds them; to run
//! this crate alone, first `cargo build -p meshota-broker -p meshota-node
//! --bins`. `benches/kill9.sh` runs the kill loop for hundreds of
//! iterations.
