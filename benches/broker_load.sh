#!/usr/bin/env bash
# Broker load (issue 7): the embedded rumqttd of `meshota-broker` against
# Mosquitto under the same `meshota-sim load`. One run per call; prints
# the broker's peak RSS and CPU (from `/usr/bin/time -v`) and the load
# result as JSON. Results go to BENCHMARKS.md by hand.
#
# Usage: benches/broker_load.sh embedded|mosquitto DEVICES [OUTDIR]
#   DEVICES  virtual devices (the table uses 1000, 3000 and 5000)
#   OUTDIR   where logs and results go (default /tmp/meshota-broker-load)
# Environment: RATE (connects/s, 500), DURATION (60s), FLEET (default;
# another name keeps the control plane out of the load).
#
# Needs: mosquitto and GNU time (`apt-get install -y mosquitto time`).
# Builds meshota-broker and meshota-sim in release mode from this
# checkout first (a no-op when they are current). The broker's data
# directory lives in /dev/shm, so a full disk cannot spoil the run.
set -euo pipefail

kind=${1:?embedded or mosquitto}
devices=${2:?number of devices}
out=${3:-/tmp/meshota-broker-load}/$kind-$devices
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build --release -p meshota-broker --bin meshota-broker -p meshota-sim --bin meshota-sim)
data=/dev/shm/meshota-broker-load-$$
rm -rf "$out" && mkdir -p "$out" "$data"
trap 'rm -rf "$data"' EXIT

case $kind in
embedded)
    port=18831
    /usr/bin/time -v -o "$out/broker.time" "$target/release/meshota-broker" \
        --data-dir "$data" --auto-accept \
        --mqtt-listen 127.0.0.1:$port --http-listen 127.0.0.1:18081 >"$out/broker.log" 2>&1 &
    ;;
mosquitto)
    port=18832
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\nmax_queued_messages 1000\n' \
        $port >"$out/mosquitto.conf"
    /usr/bin/time -v -o "$out/broker.time" mosquitto -c "$out/mosquitto.conf" >"$out/broker.log" 2>&1 &
    ;;
*)
    echo "unknown broker $kind (embedded or mosquitto)" >&2
    exit 2
    ;;
esac
timer=$!
sleep 3
/usr/bin/time -v -o "$out/load.time" "$target/release/meshota-sim" load \
    --mqtt-url mqtt://127.0.0.1:$port --devices "$devices" --rate "${RATE:-500}" \
    --duration "${DURATION:-60s}" --fleet "${FLEET:-default}" --json >"$out/result.json" || true
# time(1) is the background job; stop the broker, its child, so time
# reports the broker's figures.
kill -TERM "$(pgrep -P $timer)" 2>/dev/null || true
wait $timer || true
grep -E "Maximum resident|User time|System time" "$out/broker.time"
cat "$out/result.json"
