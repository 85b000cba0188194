#!/usr/bin/env bash
# System benchmark: `meshota bundle create` on a 1 GiB file, next to
# `casync make` on the same file. Prints wall time and peak RSS per run
# (from `/usr/bin/time -v`) and a summary table.
#
# Usage: benches/bundle_create.sh [WORKDIR] [RUNS]
#   WORKDIR  scratch directory (default /tmp/meshota-bench); needs ~4 GiB
#   RUNS     measured runs per tool (default 3), after one warm-up run
#
# Needs: casync and GNU time (`apt-get install -y casync time`), openssl.
# Builds `meshota` in release mode (only that binary) if it is missing.
#
# The 1 GiB input is a reproducible mix, exactly 1073741824 bytes:
#   384 MiB  tar of /usr/lib   (sorted names, fixed owner and mtime)
#   256 MiB  tar of /usr/share (same)
#   128 MiB  zeros
#   256 MiB  AES-256-CTR keystream of /dev/zero with a fixed passphrase
#            (pseudo-random, incompressible, identical on every run)
# The tar parts depend on what is installed under /usr, so the file is
# identical across runs on one machine image, not across machines; its
# SHA-256 is printed so results can be matched to an input.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/meshota-bench}
runs=${2:-3}
bin="$repo/target/release/meshota"
mib=$((1024 * 1024))

for tool in casync /usr/bin/time openssl tar; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install -y casync time openssl" >&2
        exit 1
    }
done

if [[ ! -x $bin ]]; then
    (cd "$repo" && cargo build --release -p meshota-broker --bin meshota)
fi

mkdir -p "$work"
input="$work/input-1GiB.img"
if [[ ! -f $input || $(stat -c %s "$input") -ne $((1024 * mib)) ]]; then
    echo "generating $input" >&2
    tarball() {
        tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
            --ignore-failed-read -cf - "$1" 2>/dev/null || true
    }
    {
        tarball /usr/lib | head -c $((384 * mib))
        tarball /usr/share | head -c $((256 * mib))
        head -c $((128 * mib)) /dev/zero
        openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass pass:meshota-bench \
            </dev/zero 2>/dev/null | head -c $((256 * mib))
    } >"$input.part"
    truncate -s $((1024 * mib)) "$input.part"
    mv "$input.part" "$input"
fi
echo "input: $input $(stat -c %s "$input") bytes sha256 $(sha256sum "$input" | cut -d' ' -f1)"

keys="$work/keys"
[[ -f $keys/release.key ]] || "$bin" keys init --dir "$keys" >/dev/null

# Runs a command under GNU time; prints "wall_seconds max_rss_kib
# cpu_seconds" (cpu = user + system, which is less sensitive than wall
# time to other load on a shared machine).
measure() {
    local log="$work/time.log"
    /usr/bin/time -v "$@" >/dev/null 2>"$log" || {
        cat "$log" >&2
        return 1
    }
    awk -F': ' '
        /Elapsed \(wall clock\)/ {
            n = split($2, p, ":"); s = 0
            for (i = 1; i <= n; i++) s = s * 60 + p[i]
            wall = s
        }
        /Maximum resident set size/ { rss = $2 }
        /User time \(seconds\)/ { cpu += $2 }
        /System time \(seconds\)/ { cpu += $2 }
        END { printf "%.2f %d %.2f\n", wall, rss, cpu }' "$log"
}

meshota_run() {
    rm -f "$work/out.mota"
    measure "$bin" bundle create "$input" --name bench --version 1.0.0 \
        --compatible bench --keys "$keys" --out "$work/out.mota" --sequence 1 "$@"
}
meshota_1t() { meshota_run --threads 1; }
casync_run() {
    rm -rf "$work/store" "$work/out.caibx"
    measure casync make --store="$work/store" "$work/out.caibx" "$input"
}

summary=()
for tool in meshota_run meshota_1t casync_run; do
    "$tool" >/dev/null # warm-up: page cache, allocator, store directory
    for ((i = 1; i <= runs; i++)); do
        read -r wall rss cpu < <("$tool")
        echo "$tool run $i: wall ${wall}s cpu ${cpu}s max_rss ${rss} KiB"
        summary+=("$tool $wall $rss $cpu")
    done
done

echo
echo "| tool | runs | median wall (s) | median cpu user+sys (s) | max RSS (MiB, worst run) | output size (bytes) |"
echo "| --- | --- | --- | --- | --- | --- |"
out_size_meshota=$(stat -c %s "$work/out.mota")
out_size_casync=$(du -sb "$work/store" | cut -f1)
for tool in meshota_run meshota_1t casync_run; do
    printf '%s\n' "${summary[@]}" | awk -v t="$tool" '$1 == t { print $2, $3, $4 }' |
        awk -v t="$tool" -v n="$runs" -v m="$out_size_meshota" -v c="$out_size_casync" '
        function median(a, k,    i, j, x) {
            for (i = 2; i <= k; i++) {
                x = a[i]
                for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]
                a[j + 1] = x
            }
            return a[int((k + 1) / 2)]
        }
        { w[NR] = $1; u[NR] = $3; if ($2 > r) r = $2 }
        END {
            size = (t == "casync_run") ? c " (store dir)" : m
            printf "| %s | %d | %.2f | %.2f | %.1f | %s |\n", t, n, median(w, NR), median(u, NR), r / 1024, size
        }'
done
