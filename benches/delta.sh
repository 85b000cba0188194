#!/usr/bin/env bash
# Delta-update cost of meshota against casync and zchunk on two real root
# filesystem images (issue 3). Results go to BENCHMARKS.md by hand.
#
#   sudo benches/delta.sh [WORKDIR]        (default /tmp/delta; needs root
#                                           for debootstrap and chroot)
#
# v1: debootstrap --variant=minbase bookworm.
# v2: v1 + `apt-get install curl nano` in a chroot.
# Both: apt caches and lists removed, then an ext4 image of the same size
# with a fixed UUID, hash seed and timestamps.
# Needs: apt-get install debootstrap casync zchunk e2fsprogs.
set -euo pipefail

WORK=${1:-/tmp/delta}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PACKAGES=${PACKAGES:-curl nano}
IMG_SIZE=${IMG_SIZE:-512M}
UUID=6d657368-6f74-6100-0000-000000000001
export SOURCE_DATE_EPOCH=1700000000
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
REPO=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$WORK"
cd "$WORK"

clean_root() {
    chroot "$1" apt-get clean
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin
}

if [ ! -e v1root/.done ]; then
    rm -rf v1root
    debootstrap --variant=minbase "$SUITE" v1root "$MIRROR"
    clean_root v1root
    touch v1root/.done
fi

if [ ! -e v2root/.done ]; then
    rm -rf v2root
    cp -a v1root v2root
    rm v2root/.done
    cp /etc/resolv.conf v2root/etc/resolv.conf
    chroot v2root apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive chroot v2root apt-get install -y --no-install-recommends $PACKAGES
    clean_root v2root
    cp v1root/etc/resolv.conf v2root/etc/resolv.conf
    touch v2root/.done
fi

for v in v1 v2; do
    rm -f "$v.img"
    truncate -s "$IMG_SIZE" "$v.img"
    mkfs.ext4 -q -F -b 4096 -L rootfs -U "$UUID" -E "hash_seed=$UUID" -d "${v}root" "$v.img"
done
ls -l v1.img v2.img
du -sh --apparent-size v1root v2root

echo "== meshota"
(cd "$REPO" && cargo build -q --release -p meshota-node --example delta_size)
"$REPO"/target/release/examples/delta_size v1.img v2.img | tee meshota.txt

echo "== casync"
rm -rf castore v1.caibx v2.caibx
casync make --store=castore --compression=zstd v1.caibx v1.img
(cd castore && find . -name '*.cacnk' | sort) > casync-v1.list
casync make --store=castore --compression=zstd v2.caibx v2.img
(cd castore && find . -name '*.cacnk' | sort) > casync-v2.list
casync_new_files=$(comm -13 casync-v1.list casync-v2.list | wc -l)
casync_new_bytes=$(comm -13 casync-v1.list casync-v2.list | (cd castore && xargs -r stat -c %s) | awk '{s+=$1} END {print s+0}')
casync_v2_chunks=$(wc -l < casync-v2.list)
casync_index=$(stat -c %s v2.caibx)
{
    echo "casync_store_chunks_after_v2=$casync_v2_chunks"
    echo "casync_new_chunks=$casync_new_files"
    echo "casync_new_chunk_bytes=$casync_new_bytes"
    echo "casync_v2_index_bytes=$casync_index"
    echo "casync_delta_bytes=$((casync_new_bytes + casync_index))"
} | tee casync.txt

echo "== zchunk"
rm -f v1.zck v2.zck
zck -o v1.zck v1.img
zck -o v2.zck v2.img
ls -l v1.zck v2.zck | tee zchunk.txt
zck_delta_size v1.zck v2.zck | tee -a zchunk.txt
