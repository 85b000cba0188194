//! Placeholder; the benchmarks land with the bundle tool.
fn main() {}
