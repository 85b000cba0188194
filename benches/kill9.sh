#!/bin/sh
# The kill -9 loop of tests/tests/kill9.rs for hundreds of iterations: a
# node SIGKILLed at seeded random points of its updates must always end
# committed or rolled back, with an intact active slot, and never fetch a
# chunk twice.
#
#   benches/kill9.sh [ITERATIONS [SEED]]      default: 300 iterations, seed 1
#
# Release builds; about 1.5 s per iteration. Prints one line per iteration
# and a summary of how iterations ended, by the phase the kill hit.
set -eu
cd "$(dirname "$0")/.."
iterations="${1:-300}"
seed="${2:-1}"
cargo build --release -p meshota-broker -p meshota-node --bins
# Each iteration is bounded inside the test; this bounds the whole run.
limit=$((iterations * 30 + 300))
MESHOTA_KILL9_ITERATIONS="$iterations" MESHOTA_KILL9_SEED="$seed" \
    timeout "$limit" cargo test --release -p meshota-tests --test kill9 -- --nocapture
