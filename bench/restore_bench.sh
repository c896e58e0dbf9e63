#!/bin/bash
# Benchmark: restoring a WAL-E base backup of real PostgreSQL data (pgbench
# tables, about 1 GiB at the default scale) from Ceph RGW on loopback with
# `rsync -a` from the mount, against the raw floor on the same machine
# (curl GET | lzop -d | tar -x of each partition).  Also the first listing of
# an unindexed backup against the time to download it, the listing of an
# indexed backup (same mount, and a second mount using the stored index),
# and the daemon's peak RSS.  Prints numbers; asserts nothing.
#   bash bench/restore_bench.sh [PGBENCH_SCALE]      (as root; default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/pg.sh
source tests/lib/walfs.sh
source tests/lib/pg_wale_backup.sh
source bench/lib.sh
SCALE=${1:-64}
WALFS_BIN=${WALFS_BIN:-build/release/walfs}
WALFS_BIN=$(readlink -f "$WALFS_BIN")
B=$(mktemp -d /tmp/walfs-rbench.XXXXXX)
chmod 0755 "$B"
export PG_SCRATCH=$B/pg
mkdir -p "$PG_SCRATCH"
WALFS_SCRATCH=$B/walfs
mkdir -p "$WALFS_SCRATCH"
trap 'walfs_cleanup; pg_cleanup >/dev/null 2>&1; rgw_stop; rm -rf "$B"' EXIT

echo "# building a pgbench database at scale $SCALE"
PG_ARCHIVE_MODE=off pg_init src "$(pg_free_port 26432)" >/dev/null
pg_start src >/dev/null
runuser -u postgres -- "$PG_BINDIR/pgbench" -q -i -s "$SCALE" -h "$PG_SCRATCH" -p "$(_pg_port src)" postgres >/dev/null 2>&1
pg_stop src >/dev/null
NAME=base_000000010000000000000009_00000040
OUT=$B/archive
mkdir -p "$OUT"
echo "# writing it as a WAL-E base backup"
python3 tests/lib/wale_backup.py push --pgdata "$PG_SCRATCH/src" --out "$OUT" --name "$NAME" \
    --format pax --stop-segment 000000010000000000000009 --stop-offset 00000256 >/dev/null
expanded=$(du -sb "$PG_SCRATCH/src" | cut -f1)
compressed=$(du -cb "$OUT/basebackups_005/$NAME/tar_partitions/"* | tail -1 | cut -f1)
parts=$(ls "$OUT/basebackups_005/$NAME/tar_partitions/")

rgw_start "$B/rgw" "${RGW_BENCH_PORT:-7486}" 2>/dev/null
rgw_s3 mb rbench >/dev/null
wale_upload "$OUT" rbench pgdb "$NAME" >/dev/null
CURL=(curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$RGW_ACCESS_KEY:$RGW_SECRET_KEY"
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
purl() { echo "$RGW_ENDPOINT/rbench/pgdb/basebackups_005/$NAME/tar_partitions/$1"; }
drop_page_cache

# The floor: download only, then download + lzop -d + tar -x.
t0=$(now); for p in $parts; do "${CURL[@]}" "$(purl "$p")" > /dev/null; done; t1=$(now)
t_download=$(secs "$t0" "$t1")
# The floor and the rsync are measured in rounds, alternating, each after
# emptying the page cache and on a fresh mount: on this VM a single run of
# either varies by half (both write 1.5 GB to a disk of varying speed).
floor_once() {
    rm -rf "$B/floor" && mkdir -p "$B/floor"
    for p in $parts; do "${CURL[@]}" "$(purl "$p")" | lzop -dc | tar -x -C "$B/floor"; done
}

export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MNT=$B/mnt
walfs_mount "$MNT" s3://rbench/pgdb --endpoint="$RGW_ENDPOINT" --addressing=path
PID=${_WALFS_PID[$MNT]}
t0=$(now); ls "$MNT/basebackups_005/$NAME/" > /dev/null; t1=$(now)
t_first_listing=$(secs "$t0" "$t1")
t0=$(now); ls -l "$MNT/basebackups_005/$NAME/" > /dev/null; t1=$(now)
t_indexed_listing=$(secs "$t0" "$t1")
t0=$(now); ls -lR "$MNT/basebackups_005/$NAME/" > /dev/null; t1=$(now)
t_indexed_tree=$(secs "$t0" "$t1")
members=$(find "$MNT/basebackups_005/$NAME/" | wc -l)
big=$(cd "$PG_SCRATCH/src" && find . -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)
big_bytes=$(stat -c %s "$PG_SCRATCH/src/$big")
t0=$(now); cat "$MNT/basebackups_005/$NAME/$big" > /dev/null; t1=$(now)
t_big=$(secs "$t0" "$t1")
walfs_umount "$MNT"
ROUNDS=${RESTORE_BENCH_ROUNDS:-3}
floors=() rsyncs=() downloads=() firsts=() rss_kib=0
printf '\n%-6s %9s %9s %12s %11s %10s\n' round "floor s" "rsync s" "rsync/floor" "download s" "listing s"
for ((r = 1; r <= ROUNDS; r++)); do
    drop_page_cache
    t0=$(now); floor_once; t1=$(now)
    f=$(secs "$t0" "$t1")
    t0=$(now); for p in $parts; do "${CURL[@]}" "$(purl "$p")" > /dev/null; done; t1=$(now)
    d=$(secs "$t0" "$t1")
    # unindexed again: no stored index, and every mount has a cache of its own
    rgw_s3 rm rbench "pgdb/basebackups_005/$NAME/walfs_index.json" >/dev/null
    walfs_mount "$MNT" s3://rbench/pgdb --endpoint="$RGW_ENDPOINT" --addressing=path
    PID=${_WALFS_PID[$MNT]}
    t0=$(now); ls "$MNT/basebackups_005/$NAME/" > /dev/null; t1=$(now)
    l=$(secs "$t0" "$t1")
    grep -q "indexing $NAME" "$(walfs_log "$MNT")" || l="$l(not-indexed!)"
    rm -rf "$B/restore" && mkdir -p "$B/restore"
    drop_page_cache
    [[ -n ${RESTORE_BENCH_PERF:-} && $r -eq 1 ]] && { perf record -g -o "$RESTORE_BENCH_PERF" -p "$PID" 2>/dev/null & PERFPID=$!; sleep 0.3; }
    t0=$(now); rsync -a "$MNT/basebackups_005/$NAME/" "$B/restore/"; t1=$(now)
    [[ -n ${RESTORE_BENCH_PERF:-} && $r -eq 1 ]] && { kill -INT "$PERFPID"; wait "$PERFPID" || true; }
    s=$(secs "$t0" "$t1")
    floors+=("$f") rsyncs+=("$s") downloads+=("$d") firsts+=("$l")
    printf '%-6s %9s %9s %11sx %11s %10s\n' "$r" "$f" "$s" "$(ratio "$s" "$f")" "$d" "$l"
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
    ((hwm > rss_kib)) && rss_kib=$hwm
    walfs_umount "$MNT"
done
t_floor=$(median "${floors[@]}") t_rsync=$(median "${rsyncs[@]}")
t_download=$(median "${downloads[@]}") t_first_listing=$(median "${firsts[@]}")
same=$(diff -r "$B/floor" "$B/restore" >/dev/null 2>&1 && echo yes || echo NO)

# The same rsync with walfs daemonized, as README runs it (fresh mount, cache
# and page cache), for the side-by-side figure.
rm -rf "$B/restore-daemon" && mkdir -p "$B/restore-daemon"
WALFS_MODE=daemon walfs_mount "$B/mnt-daemon" s3://rbench/pgdb --endpoint="$RGW_ENDPOINT" --addressing=path
ls "$B/mnt-daemon/basebackups_005/$NAME/" > /dev/null
drop_page_cache
t0=$(now); rsync -a "$B/mnt-daemon/basebackups_005/$NAME/" "$B/restore-daemon/"; t1=$(now)
t_rsync_daemon=$(secs "$t0" "$t1")
same_daemon=$(diff -r "$B/floor" "$B/restore-daemon" >/dev/null 2>&1 && echo yes || echo NO)
WALFS_MODE=daemon walfs_umount "$B/mnt-daemon"

MNT2=$B/mnt2
walfs_mount "$MNT2" s3://rbench/pgdb --endpoint="$RGW_ENDPOINT" --addressing=path
t0=$(now); ls "$MNT2/basebackups_005/$NAME/" > /dev/null; t1=$(now)
t_second_mount=$(secs "$t0" "$t1")
used_stored=$(grep -c "using stored index" "$(walfs_log "$MNT2")" || true)
walfs_umount "$MNT2"

printf '\nwalfs restore benchmark: pgbench scale %s, %s bytes expanded, %s bytes in %s partitions\n' \
    "$SCALE" "$expanded" "$compressed" "$(echo $parts | wc -w)"
printf '%-58s %8s s\n' "download the partitions (curl), median" "$t_download"
printf '%-58s %8s s\n' "raw floor: curl | lzop -d | tar -x" "$t_floor"
printf '%-58s %8s s  %sx floor (target <= 1.5), medians of %s rounds\n' "walfs: rsync -a from the mount" "$t_rsync" "$(ratio "$t_rsync" "$t_floor")" "$ROUNDS"
printf '%-58s %8s s  %sx the -f median (indexed backup; tree identical: %s)\n' "walfs daemonized: rsync -a from the mount" "$t_rsync_daemon" "$(ratio "$t_rsync_daemon" "$t_rsync")" "$same_daemon"
printf '%-58s %8s s  (%s bytes, read once cold)\n' "walfs: cat of the largest file ($big)" "$t_big" "$big_bytes"
printf '%-58s %8s s  %sx download (target <= 1.2), medians\n' "walfs: first listing of the unindexed backup (indexing)" "$t_first_listing" "$(ratio "$t_first_listing" "$t_download")"
printf '%-58s %8s s  (target < 0.1)\n' "walfs: ls -l of the indexed backup, same mount" "$t_indexed_listing"
printf '%-58s %8s s  (%s entries)\n' "walfs: ls -lR of the whole indexed backup" "$t_indexed_tree" "$members"
printf '%-58s %8s s  (target < 0.1; stored index used: %s)\n' "walfs: listing on a second mount, fresh cache" "$t_second_mount" "$used_stored"
printf '%-58s %8s KiB (target < 131072)\n' "walfs daemon peak RSS (VmHWM), largest of the rounds" "$rss_kib"
printf '%-58s %8s\n' "rsync'd tree identical to the floor's tar -x (diff -r)" "$same"
