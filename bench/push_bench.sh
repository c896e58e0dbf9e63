#!/bin/bash
# Benchmark: pushing a base backup of real PostgreSQL data (pgbench tables,
# about 1 GiB at the default scale) into Ceph RGW on loopback with
#   pg_basebackup -D MNT/basebackups_005/incoming -X none --checkpoint=fast
# against the raw floor on the same machine: tar -c of the same data
# directory | lzop -c | curl upload.  Prints numbers; asserts nothing.
#   bash bench/push_bench.sh [PGBENCH_SCALE]      (as root; default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/pg.sh
source tests/lib/walfs.sh
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
now() { echo "${EPOCHREALTIME/./}"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

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

# The floor: the same data directory through tar, lzop and one upload.
CURL=(curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$RGW_ACCESS_KEY:$RGW_SECRET_KEY"
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
t0=$(now)
tar -c -C "$PG_SCRATCH/src" --exclude=postmaster.pid . | lzop -c > "$B/floor.tar.lzo"
"${CURL[@]}" -T "$B/floor.tar.lzo" "$RGW_ENDPOINT/pbench/floor/part_00000000.tar.lzo" >/dev/null
t1=$(now)
t_floor=$(secs "$t0" "$t1")
rm -f "$B/floor.tar.lzo"

# What pg_basebackup costs by itself: the same command into a local directory.
mkdir -p "$B/local" && chown postgres "$B/local"
t0=$(now)
runuser -u postgres -- "$PG_BINDIR/pg_basebackup" -D "$B/local/backup" -X none \
    --checkpoint=fast -h "$PG_SCRATCH" -p "$PORT"
t1=$(now)
t_local=$(secs "$t0" "$t1")
rm -rf "$B/local"

[[ -n ${PUSH_BENCH_PERF:-} ]] && { perf record -g -o "$PUSH_BENCH_PERF" -p "$PID" 2>/dev/null & PERFPID=$!; sleep 0.3; }
t0=$(now)
runuser -u postgres -- "$PG_BINDIR/pg_basebackup" -D "$MNT/basebackups_005/incoming" -X none \
    --checkpoint=fast -h "$PG_SCRATCH" -p "$PORT"
t1=$(now)
t_push=$(secs "$t0" "$t1")
[[ -n ${PUSH_BENCH_PERF:-} ]] && { kill -INT "$PERFPID"; wait "$PERFPID" || true; }
cp "$(walfs_log "$MNT")" /tmp/push_bench_walfs.log
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
name=$(ls "$MNT/basebackups_005" | grep '^base_' | head -1)

printf '\nwalfs push benchmark: pgbench scale %s, data directory %s bytes\n' "$SCALE" "$bytes"
printf '%-52s %8s s\n' "raw floor: tar -c | lzop -c, curl upload" "$t_floor"
printf '%-52s %8s s  %sx floor\n' "pg_basebackup into a local directory" "$t_local" "$(ratio "$t_local" "$t_floor")"
printf '%-52s %8s s  %sx floor (target <= 1.3)\n' "walfs: pg_basebackup into the mount" "$t_push" "$(ratio "$t_push" "$t_floor")"
printf '%-52s %8s KiB (target < 131072)\n' "walfs daemon peak RSS (VmHWM)" "$rss_kib"
printf '%-52s %8s\n' "backup listed as" "${name:-NONE}"
walfs_umount "$MNT"
