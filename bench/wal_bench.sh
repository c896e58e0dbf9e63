#!/bin/bash
# Benchmark: archiving and restoring 16 MiB WAL segments through walfs against
# Ceph RGW on loopback, compared with the raw floor on the same machine
# (lzop -c + curl PUT, curl GET + lzop -d).  Prints numbers; asserts nothing.
#   bash bench/wal_bench.sh [SEGMENTS]      (as root; default 48 segments: fewer are noisy)
# The segments are the real PostgreSQL WAL of the WAL-E fixture, cycled.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source bench/lib.sh
N=${1:-48}
WALFS_BIN=${WALFS_BIN:-build/release/walfs}
WALFS_BIN=$(readlink -f "$WALFS_BIN")
B=$(mktemp -d /tmp/walfs-bench.XXXXXX)
chmod 0755 "$B"
WALFS_SCRATCH=$B/walfs
mkdir -p "$WALFS_SCRATCH" "$B/segs" "$B/out"
trap 'walfs_cleanup; rgw_stop; rm -rf "$B"' EXIT

rgw_start "$B/rgw" "${RGW_BENCH_PORT:-7485}" 2>/dev/null
rgw_s3 mb bench >/dev/null
i=0
for f in tests/fixtures/wale-pg15-a/pgdb/wal_005/00000001000000000000000?.lzo; do
    lzop -dc < "$f" > "$B/segs/src$i"
    i=$((i + 1))
done
chmod 0644 "$B/segs"/*
seg_src() { echo "$B/segs/src$(( $1 % 4 ))"; }
name_of() { printf '0000000100000001%08X' "$1"; }

export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
walfs_mount "$B/mnt" s3://bench/walfs --endpoint="$RGW_ENDPOINT" --addressing=path
PID=${_WALFS_PID[$B/mnt]}
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
ms() { echo $(( ($2 - $1) / 1000 )); }

# walfs: archive with cp, then restore with cp (cold: nothing cached yet).
t0=$(now)
for ((k = 0; k < N; k++)); do as_pg cp "$(seg_src $k)" "$B/mnt/wal_005/$(name_of $k)"; done
t1=$(now)
chown postgres "$B/out"
for ((k = 0; k < N; k++)); do as_pg cp "$B/mnt/wal_005/$(name_of $k)" "$B/out/seg"; done
t2=$(now)
walfs_put=$(( $(ms "$t0" "$t1") * 1000 / N ))
walfs_get=$(( $(ms "$t1" "$t2") * 1000 / N ))
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")

# Raw floor: the same bytes through lzop and curl, signed by curl's SigV4.
url() { echo "$RGW_ENDPOINT/bench/raw/wal_005/$(name_of "$1").lzo"; }
CURL=(curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$RGW_ACCESS_KEY:$RGW_SECRET_KEY"
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
t0=$(now)
for ((k = 0; k < N; k++)); do
    lzop -c < "$(seg_src $k)" > "$B/raw.lzo"
    "${CURL[@]}" -T "$B/raw.lzo" "$(url $k)" >/dev/null
done
t1=$(now)
for ((k = 0; k < N; k++)); do
    "${CURL[@]}" "$(url $k)" | lzop -dc > "$B/out/rawseg"
done
t2=$(now)
raw_put=$(( $(ms "$t0" "$t1") * 1000 / N ))
raw_get=$(( $(ms "$t1" "$t2") * 1000 / N ))

# Sequential restore on a fresh mount (empty cache), where read-ahead does
# the work, in the foreground and in README's daemon mode, side by side.
restore_round() { # MODE -> prints "per-segment-us cached-after-first"
    local mode=$1 mnt=$B/mnt-$1 t0 t1 k cached
    WALFS_MODE=$mode walfs_mount "$mnt" s3://bench/walfs --endpoint="$RGW_ENDPOINT" --addressing=path >&2
    as_pg cp "$mnt/wal_005/$(name_of 0)" "$B/out/seg"
    sleep 1
    cached=$(ls "$(walfs_cache_dir "$mnt")/objects" | grep -vc '^\.')
    t0=$(now)
    for ((k = 1; k < N; k++)); do as_pg cp "$mnt/wal_005/$(name_of $k)" "$B/out/seg"; done
    t1=$(now)
    WALFS_MODE=$mode walfs_umount "$mnt" >&2
    echo "$(( $(ms "$t0" "$t1") * 1000 / (N - 1) )) $cached"
}
read -r fg_seq fg_cached < <(restore_round foreground)
read -r dm_seq dm_cached < <(restore_round daemon)

printf '\nwalfs WAL benchmark: %d segments of 16 MiB (real WAL), Ceph RGW on loopback\n' "$N"
printf '%-34s %10s %10s %8s\n' "" "walfs" "raw floor" "ratio"
printf '%-34s %8.1f ms %8.1f ms %8s\n' "archive, per segment (cp in)" "$(awk -v v=$walfs_put 'BEGIN{print v/1000}')" "$(awk -v v=$raw_put 'BEGIN{print v/1000}')" "$(ratio $walfs_put $raw_put)x"
printf '%-34s %8.1f ms %8.1f ms %8s\n' "restore, per segment (cp out)" "$(awk -v v=$walfs_get 'BEGIN{print v/1000}')" "$(awk -v v=$raw_get 'BEGIN{print v/1000}')" "$(ratio $walfs_get $raw_get)x"
printf '%-34s %8d KiB (target < 65536 KiB)\n' "walfs daemon peak RSS (VmHWM)" "$rss_kib"
printf '%-34s %8.1f ms %8.1f ms %8s\n' "sequential restore, fresh mount" "$(awk -v v=$fg_seq 'BEGIN{print v/1000}')" "$(awk -v v=$dm_seq 'BEGIN{print v/1000}')" "$(ratio $dm_seq $fg_seq)x"
printf '%-34s %8d    %8d\n' "  (columns: -f, daemon) cached after 1st" "$fg_cached" "$dm_cached"
printf 'targets: ratio <= 1.30 both ways; daemon/-f sequential restore ratio ~1.0\n'
walfs_umount "$B/mnt"
