#!/usr/bin/env bash
# Delta-update cost of meshota against casync and zchunk on two real root
# filesystem images (issue 3). Results go to BENCHMARKS.md by hand.
#
#   sudo benches/delta.sh [WORKDIR]        (default /tmp/delta; needs root
#                                           for debootstrap and chroot)
#
# v1: debootstrap --variant=minbase bookworm.
# v2: v1 + `apt-get install --no-install-recommends curl nano` in a chroot.
# Both: apt caches and lists removed, then an ext4 image of the same size
# with a fixed UUID, hash seed and mkfs time. mkfs copies each file's
# atime and ctime, which no flag pins: images are bit-identical across
# reruns only once the trees' atimes have settled (relatime), as the
# printed sha256 sums show.
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

sha256sum v1.img v2.img

# Average chunk sizes to measure, KiB; min = avg/4 and max = avg*4 for
# both meshota and casync. 64 is both tools' default.
AVG_KIBS=${AVG_KIBS:-64 32 16 8}

(cd "$REPO" && cargo build -q --release -p meshota-node --example delta_size)
for avg in $AVG_KIBS; do
    echo "== meshota avg=${avg}KiB"
    "$REPO"/target/release/examples/delta_size v1.img v2.img "$avg" | tee "meshota-$avg.txt"
done

for avg in $AVG_KIBS; do
    echo "== casync avg=${avg}KiB"
    size="$((avg * 256)):$((avg * 1024)):$((avg * 4096))"
    store="castore-$avg"
    rm -rf "$store" "v1-$avg.caibx" "v2-$avg.caibx"
    casync make --store="$store" --compression=zstd --chunk-size="$size" "v1-$avg.caibx" v1.img
    (cd "$store" && find . -name '*.cacnk' | sort) > "casync-v1-$avg.list"
    casync make --store="$store" --compression=zstd --chunk-size="$size" "v2-$avg.caibx" v2.img
    (cd "$store" && find . -name '*.cacnk' | sort) > "casync-v2-$avg.list"
    new_files=$(comm -13 "casync-v1-$avg.list" "casync-v2-$avg.list" | wc -l)
    new_bytes=$(comm -13 "casync-v1-$avg.list" "casync-v2-$avg.list" | (cd "$store" && xargs -r stat -c %s) | awk '{s+=$1} END {print s+0}')
    index=$(stat -c %s "v2-$avg.caibx")
    {
        echo "casync_chunk_size=$size"
        echo "casync_store_chunks_after_v2=$(wc -l < "casync-v2-$avg.list")"
        echo "casync_new_chunks=$new_files"
        echo "casync_new_chunk_bytes=$new_bytes"
        echo "casync_v2_index_bytes=$index"
        echo "casync_delta_bytes=$((new_bytes + index))"
    } | tee "casync-$avg.txt"
done

# zck has no chunk-size option; its automatic chunker is measured as is.
echo "== zchunk"
rm -f v1.zck v2.zck
zck -o v1.zck v1.img
zck -o v2.zck v2.img
ls -l v1.zck v2.zck | tee zchunk.txt
zck_read_header v2.zck | grep -E "Header size|Chunk count" | tee -a zchunk.txt
# zchunk 1.2.3 counts the v2 header in "Would download".
zck_delta_size v1.zck v2.zck | tee -a zchunk.txt
