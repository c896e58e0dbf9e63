#!/bin/bash
# Decompression bombs in wal_005 against a real RGW: an lzop object of a few
# hundred KB that decompresses to far more than a WAL file can hold must be
# refused with EIO and a log line naming it, without the cache directory
# ever holding more than --cache-size (also with four fills at once), and
# without leaving a partial copy behind (after the refusal, after unmount,
# after walfs was killed mid-fill).  A legitimate restore under the same
# small cache, with read-ahead, still gets every segment right.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
t_require lzop python3

t_scratch bomb
cleanup() { stop_sampler >/dev/null 2>&1; walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"; }
trap cleanup EXIT

FIXTURE=tests/fixtures/wale-pg15-a
MANIFEST=$FIXTURE/MANIFEST.txt
BUCKET=walfs-bomb
MNT=$SCRATCH/mnt
MiB=$((1024 * 1024))

rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7760}" || { echo "RGW did not start"; exit 1; }
rgw_s3 mb "$BUCKET"
for k in $(grep -v '^#' "$MANIFEST" | cut -f1 | grep '^pgdb/wal_005/'); do
    rgw_s3 put "$BUCKET" "$k" "$FIXTURE/$k" >/dev/null
done

# --- the bombs ---
B=$SCRATCH/bombs
mkdir -p "$B"
head -c $((64 * MiB)) /dev/zero | lzop -c > "$B/64m.lzo"           # ~300 KB
head -c $((1100 * MiB)) /dev/zero | lzop -c > "$B/1100m.lzo"       # ~5 MB, past any WAL file
# A segment whose first page header declares 1 MiB segments, then 8 MiB.
python3 - <<'PY' | lzop -c > "$B/header1m.lzo"
import struct, sys
head = struct.pack('<HHIQIIQII', 0xD110, 0x0002, 1, 0x51 << 20, 0, 0, 7, 1 << 20, 8192)
sys.stdout.buffer.write(head + bytes(8 * 1024 * 1024 - len(head)))
PY
printf 'hello\n' | lzop -c > "$B/small.lzo"
put() { rgw_s3 put "$BUCKET" "pgdb/wal_005/$1.lzo" "$2" "${@:3}" >/dev/null; }
put 000000010000000000000031 "$B/64m.lzo"
for n in 41 42 43 44; do put 0000000100000000000000$n "$B/64m.lzo"; done
put 000000010000000000000051 "$B/header1m.lzo"
put 000000010000000000000061 "$B/small.lzo" -m walfs-uncompressed-size=3000000000
put 00000003.history "$B/1100m.lzo"

export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MOUNT_OPTS=(--endpoint="$RGW_ENDPOINT" --addressing=path --deadline=20 --connect-timeout=1)
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# Bytes of the files in a directory (partial copies included), and their
# peak sampled every 20 ms while a step runs.
bytes_in() { find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{ t += $1 } END { print t + 0 }'; }
SAMPLER=
start_sampler() {
    : > "$SCRATCH/samples"
    (while :; do bytes_in "$1"; sleep 0.02; done >> "$SCRATCH/samples") &
    SAMPLER=$!
}
stop_sampler() {
    [[ -n $SAMPLER ]] || return 0
    kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; SAMPLER=
    sort -n "$SCRATCH/samples" | tail -n 1
}
leftovers() { find "$1" -name '.fill-*' | grep -c .; }
mib() { echo "$(( $1 / MiB )) MiB"; }

# --- under --cache-size=16 ---
CACHE=$WALFS_SCRATCH/cache16
if ! walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --cache-dir="$CACHE" --cache-size=16 --log-level=debug; then
    not_ok "mount with --cache-size=16"; t_summary; exit 1
fi
LOG=$(walfs_log "$MNT")
OBJ=$CACHE/objects

start_sampler "$OBJ"
t0=$EPOCHREALTIME
out=$(stat -c %s "$MNT/wal_005/000000010000000000000031" 2>&1); rc=$?
took=$(echo "$EPOCHREALTIME - $t0" | bc)
peak=$(stop_sampler)
check "stat of a 300 KB object that decompresses to 64 MiB fails (took ${took}s)" [ $rc -ne 0 ]
check "... with EIO" grep -q "Input/output error" <<<"$out"
check "... and a log line naming the object, the limit and what to do" \
    grep -qE "wal_005/000000010000000000000031\.lzo.*16 MiB.*--cache-size" "$LOG"
check "... the cache never held more than --cache-size (peak $(mib "$peak"))" [ "$peak" -le $((16 * MiB)) ]
check "... and nothing of it is left in the cache" [ "$(bytes_in "$OBJ")" -eq 0 ]
stat "$MNT/wal_005/000000010000000000000031" >/dev/null 2>&1; rc=$?
check "a second stat fails too, without a second download" \
    [ $rc -ne 0 -a "$(grep -c 'fetching wal_005/000000010000000000000031.lzo' "$LOG")" -eq 1 ]

start_sampler "$OBJ"
t0=$EPOCHREALTIME
pids=()
for n in 41 42 43 44; do stat "$MNT/wal_005/0000000100000000000000$n" >/dev/null 2>&1 & pids+=($!); done
fails=0
for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
took=$(echo "$EPOCHREALTIME - $t0" | bc)
peak=$(stop_sampler)
check "four concurrent stats of such objects all fail (took ${took}s)" [ $fails -eq 4 ]
check "... and together stay within --cache-size (peak $(mib "$peak"))" [ "$peak" -le $((16 * MiB)) ]
check "... leaving nothing in the cache" [ "$(bytes_in "$OBJ")" -eq 0 ]
check "... each refusal logged under its object's name" \
    [ "$(grep -cE 'wal_005/0000000100000000000000(41|42|43|44)\.lzo.*(refused|not fetched)' "$LOG")" -ge 4 ]

out=$(stat -c %s "$MNT/wal_005/000000010000000000000051" 2>&1)
check "a segment decompressing past the 1 MiB its page header declares is refused ($out)" \
    grep -q "Input/output error" <<<"$out"
check "... the log names it and its declared size" \
    grep -qE "wal_005/000000010000000000000051\.lzo.*1048576" "$LOG"

out=$(stat -c %s "$MNT/wal_005/000000010000000000000061" 2>&1)
check "an object whose recorded size is past any WAL file is refused ($out)" \
    grep -q "Input/output error" <<<"$out"

# A restore reading segment after segment, read-ahead (--prefetch=4) on:
# read-ahead must give way to the reader rather than fail it.  Reading 4
# right after 1 finds the read-ahead of 2 and 3 holding the cache.
start_sampler "$OBJ"
good=0
for n in 1 4 2 3; do
    name=00000001000000000000000$n
    want=$(grep -P "^pgdb/wal_005/$name.lzo\t" "$MANIFEST" | cut -f5)
    as_pg cp "$MNT/wal_005/$name" "$WALFS_SCRATCH/restored" &&
        [ "$(sha256sum < "$WALFS_SCRATCH/restored" | cut -d' ' -f1)" == "$want" ] && good=$((good + 1))
done
peak=$(stop_sampler)
gave=$(grep -c 'needed its room' "$LOG")
check "a restore of four 16 MiB segments under --cache-size=16 with read-ahead gets all right ($good; read-ahead gave way $gave times)" [ $good -eq 4 ]
check "... within --cache-size (peak $(mib "$peak"))" [ "$peak" -le $((16 * MiB)) ]
check "walfs unmounts cleanly" walfs_umount "$MNT"
check "nothing partial is left after unmount" [ "$(leftovers "$OBJ")" -eq 0 ]

# --- a large cache: the 1 GiB limit of a WAL file, and a kill mid-fill ---
CACHE=$WALFS_SCRATCH/cache4g
OBJ=$CACHE/objects
if walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --cache-dir="$CACHE" --cache-size=4096; then
    stat "$MNT/wal_005/00000003.history" >/dev/null 2>&1 &
    statpid=$!
    for i in $(seq 100); do
        [ "$(bytes_in "$OBJ")" -gt $((100 * MiB)) ] && break
        sleep 0.1
    done
    kill -9 "$(walfs_pid "$MNT")"
    { wait "$(walfs_pid "$MNT")"; wait "$statpid"; } 2>/dev/null
    fusermount3 -uz "$MNT" 2>/dev/null || umount -l "$MNT"
    check "walfs killed mid-fill leaves a partial copy ($(leftovers "$OBJ") files)" [ "$(leftovers "$OBJ")" -ge 1 ]
    walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --cache-dir="$CACHE" --cache-size=4096
    check "... which the next mount removes" [ "$(leftovers "$OBJ")" -eq 0 ]
    LOG=$(walfs_log "$MNT")
    start_sampler "$OBJ"
    t0=$EPOCHREALTIME
    out=$(stat -c %s "$MNT/wal_005/00000003.history" 2>&1)
    took=$(echo "$EPOCHREALTIME - $t0" | bc)
    peak=$(stop_sampler)
    check "a 5 MB object decompressing to 1100 MiB is refused even with --cache-size=4096 (took ${took}s)" \
        grep -q "Input/output error" <<<"$out"
    check "... the log says no WAL file is larger than 1 GiB" grep -qE "00000003\.history\.lzo.*1 GiB" "$LOG"
    check "... the cache held at most 1 GiB (peak $(mib "$peak"))" [ "$peak" -le $((1024 * MiB)) ]
    check "... and nothing of it is left" [ "$(bytes_in "$OBJ")" -eq 0 ]
    check "the large-cache mount unmounts cleanly" walfs_umount "$MNT"
else
    not_ok "mount with --cache-size=4096"
fi

t_summary
