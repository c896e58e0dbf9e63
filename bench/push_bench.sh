#!/bin/bash
# Benchmark: pushing a base backup of real PostgreSQL data (pgbench tables,
# about 1 GiB at the default scale) into Ceph RGW on loopback with
#   pg_basebackup -D MNT/basebackups_005/incoming -X none --checkpoint=fast
# against the raw floor on the same machine: tar -c of the same data
# directory | lzop -c | curl upload.  Prints numbers; asserts nothing.
#   bash bench/push_bench.sh [PGBENCH_SCALE]      (as root; default 64)
# PUSH_BENCH_ROUNDS (default 5) rounds; PUSH_BENCH_PERF=FILE records the
# daemon's first push with perf.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/pg.sh
source tests/lib/walfs.sh
source bench/lib.sh
SCALE=${1:-64}
WALFS_BIN=${WALFS_BIN:-build/release/walfs}
WALFS_BIN=$(readlink -f "$WALFS_BIN")
B=$(mktemp -d /tmp/walfs-pbench.XXXXXX)
chmod 0755 "$B"
export PG_SCRATCH=$B/pg
mkdir -p "$PG_SCRATCH"
WALFS_SCRATCH=$B/walfs
mkdir -p "$WALFS_SCRATCH"
trap 'walfs_cleanup; pg_cleanup >/dev/null 2>&1; rgw_stop; rm -rf "$B"' EXIT

rgw_start "$B/rgw" "${RGW_BENCH_PORT:-7488}" 2>/dev/null
rgw_s3 mb pbench >/dev/null
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MNT=$B/mnt
walfs_mount "$MNT" s3://pbench/pgdb --endpoint="$RGW_ENDPOINT" --addressing=path
PID=${_WALFS_PID[$MNT]}

echo "# building a pgbench database at scale $SCALE"
PORT=$(pg_free_port 27432)
PG_ARCHIVE_COMMAND="cp %p $MNT/wal_005/%f" pg_init src "$PORT" >/dev/null
pg_start src >/dev/null
runuser -u postgres -- "$PG_BINDIR/pgbench" -q -i -s "$SCALE" -h "$PG_SCRATCH" -p "$PORT" postgres >/dev/null 2>&1
pg_psql src "CHECKPOINT" >/dev/null
# Building the database left gigabytes for the kernel to write back; let the
# disk settle so neither measurement pays for it.
sync
bytes=$(du -sb "$PG_SCRATCH/src" | cut -f1)

# The floor: the same data directory through tar, lzop and one upload, as
# the issue defines it.  A second floor leaves pg_wal's segments out, as
# the base backup does (pgbench's load leaves ~0.6 GB of WAL there, so the
# first floor does more work than the push).  The compressed stream goes to
# a file first: RGW answers a chunked upload of a pipe (curl -T -) with 411.
CURL=(curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$RGW_ACCESS_KEY:$RGW_SECRET_KEY"
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
floor_once() { # tar options...
    tar -c -C "$PG_SCRATCH/src" --exclude=./postmaster.pid "$@" . | lzop -c > "$B/floor.tar.lzo"
    "${CURL[@]}" -T "$B/floor.tar.lzo" "$RGW_ENDPOINT/pbench/floor/part_00000000.tar.lzo" >/dev/null
    rm -f "$B/floor.tar.lzo"
}
# What pg_basebackup costs by itself: its tar stream thrown away (no
# storage at all: the least any pg_basebackup-driven push can take), and
# the same command as walfs's into a local directory.
quiet() { "$@" 2> >(grep -v '^NOTICE:' >&2); }
null_once() {
    quiet runuser -u postgres -- "$PG_BINDIR/pg_basebackup" -D - -Ft -X none \
        --checkpoint=fast -h "$PG_SCRATCH" -p "$PORT" >/dev/null
}
local_once() {
    mkdir -p "$B/local" && chown postgres "$B/local"
    quiet runuser -u postgres -- "$PG_BINDIR/pg_basebackup" -D "$B/local/backup" -X none \
        --checkpoint=fast -h "$PG_SCRATCH" -p "$PORT"
    rm -rf "$B/local"
}
# The same -D every round, as a daily job would run it.
push_once() {
    quiet runuser -u postgres -- "$PG_BINDIR/pg_basebackup" -D "$MNT/basebackups_005/incoming" -X none \
        --checkpoint=fast -h "$PG_SCRATCH" -p "$PORT"
}
# CPU seconds: the daemon's own, and the whole machine's busy time (all
# processes, kernel included): on 2 vCPUs the push is CPU-bound, so these
# say where a second goes.
daemon_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$PID/stat"; }
busy_cpu() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }
# Every measurement starts with the page cache emptied (drop_page_cache says
# why); PUSH_BENCH_WARM=1 skips it.
settle() { if [[ -n ${PUSH_BENCH_WARM:-} ]]; then sync; else drop_page_cache; fi; }
measure() { local t0 t1; t0=$(now); "$@"; t1=$(now); secs "$t0" "$t1"; }
timed() { settle; measure "$@"; }

# The machine is noisy (2 vCPUs shared with RGW and PostgreSQL): several
# rounds, each measuring all three back to back, and the medians.
ROUNDS=${PUSH_BENCH_ROUNDS:-5}
cpus=() busys=() floors=() floors_nowal=() nulls=() locals=() pushes=() ratios=()
printf '\n%-6s %9s %9s %9s %9s %9s %12s %10s %10s\n' round "floor s" "-pg_wal s" "null s" "local s" "walfs s" "walfs/floor" "daemon cpu" "busy cpu"
for ((r = 1; r <= ROUNDS; r++)); do
    f=$(timed floor_once)
    fw=$(timed floor_once --exclude='./pg_wal/*')
    z=$(timed null_once)
    l=$(timed local_once)
    [[ -n ${PUSH_BENCH_PERF:-} && $r -eq 1 ]] && { perf record -g -o "$PUSH_BENCH_PERF" -p "$PID" 2>/dev/null & PERFPID=$!; sleep 0.3; }
    settle
    c0=$(daemon_cpu) b0=$(busy_cpu)
    p=$(measure push_once)
    c1=$(daemon_cpu) b1=$(busy_cpu)
    cpus+=("$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')")
    busys+=("$(awk -v a="$b0" -v b="$b1" 'BEGIN { printf "%.2f", b - a }')")
    [[ -n ${PUSH_BENCH_PERF:-} && $r -eq 1 ]] && { kill -INT "$PERFPID"; wait "$PERFPID" || true; }
    floors+=("$f") floors_nowal+=("$fw") nulls+=("$z") locals+=("$l") pushes+=("$p") ratios+=("$(ratio "$p" "$f")")
    printf '%-6s %9s %9s %9s %9s %9s %11sx %10s %10s\n' "$r" "$f" "$fw" "$z" "$l" "$p" "$(ratio "$p" "$f")" "${cpus[-1]}" "${busys[-1]}"
    sleep 2 # the kernel's memory of the last push's names (--attr-timeout)
done
cp "$(walfs_log "$MNT")" /tmp/push_bench_walfs.log
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
n_listed=$(ls "$MNT/basebackups_005" | grep -c '^base_' || true)
t_floor=$(median "${floors[@]}") t_floor_nowal=$(median "${floors_nowal[@]}") t_null=$(median "${nulls[@]}") t_local=$(median "${locals[@]}") t_push=$(median "${pushes[@]}")

printf '\nwalfs push benchmark: pgbench scale %s, data directory %s bytes, %s rounds (medians)\n' \
    "$SCALE" "$bytes" "$ROUNDS"
printf '%-52s %8s s\n' "raw floor: tar -c | lzop -c, curl upload" "$t_floor"
printf '%-52s %8s s\n' "... without pg_wal's segments (what the backup holds)" "$t_floor_nowal"
printf '%-52s %8s s  %sx floor\n' "pg_basebackup -Ft -D - > /dev/null" "$t_null" "$(ratio "$t_null" "$t_floor")"
printf '%-52s %8s s  %sx floor\n' "pg_basebackup into a local directory" "$t_local" "$(ratio "$t_local" "$t_floor")"
printf '%-52s %8s s  %sx floor (target <= 1.3)\n' "walfs: pg_basebackup into the mount" "$t_push" "$(ratio "$t_push" "$t_floor")"
printf '%-52s %8sx\n' "median of the per-round ratios" "$(median "${ratios[@]}")"
printf '%-52s %8sx\n' "walfs against the floor without pg_wal" "$(ratio "$t_push" "$t_floor_nowal")"
printf '%-52s %8sx\n' "walfs against pg_basebackup into a local directory" "$(ratio "$t_push" "$t_local")"
printf '%-52s %8sx\n' "walfs against pg_basebackup > /dev/null" "$(ratio "$t_push" "$t_null")"
printf '%-52s %8s s\n' "walfs daemon CPU per push" "$(median "${cpus[@]}")"
printf '%-52s %8s s\n' "machine busy CPU during a push (2 vCPUs)" "$(median "${busys[@]}")"
printf '%-52s %8s KiB (target < 131072)\n' "walfs daemon peak RSS (VmHWM), all rounds" "$rss_kib"
printf '%-52s %8s of %s\n' "backups listed" "$n_listed" "$ROUNDS"
echo "how the spool fared in the last push (walfs's log):"
grep "were compressed as they arrived" /tmp/push_bench_walfs.log | tail -n 1 | sed 's/.*INFO: /  /'

walfs_umount "$MNT"
