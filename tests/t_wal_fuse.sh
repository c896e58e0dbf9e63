#!/bin/bash
# The WAL half of walfs against a real, signature-checking Ceph RGW:
# the WAL-E fixture read back through the mount, archiving with cp,
# write-once, corrupt objects, an unreachable or hanging server, and
# rejected credentials.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh

SCRATCH=$(mktemp -d /tmp/walfs-t-wal.XXXXXX)
chmod 0755 "$SCRATCH"
WALFS_SCRATCH=$SCRATCH/walfs
mkdir -p "$WALFS_SCRATCH"
cleanup() { walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"; }
trap cleanup EXIT

FIXTURE=tests/fixtures/wale-pg15-a
MANIFEST=$FIXTURE/MANIFEST.txt
BUCKET=walfs-wal
MNT=$SCRATCH/mnt

rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7480}" || { echo "RGW did not start"; exit 1; }
rgw_s3 mb "$BUCKET"
rgw_s3 sync-up "$FIXTURE" "$BUCKET" >/dev/null

export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MOUNT_OPTS=(--endpoint="$RGW_ENDPOINT" --addressing=path --deadline=6 --connect-timeout=1)
walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || { echo "mount failed"; exit 1; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# --- the WAL-E fixture, read through the mount ---
expected_names=$(awk -F'\t' '$1 ~ /^pgdb\/wal_005\// {sub("pgdb/wal_005/", "", $1); sub(/\.lzo$/, "", $1); print $1}' "$MANIFEST" | sort)
listed=$(ls "$MNT/wal_005" | sort)
check "ls wal_005 shows every fixture object under its PostgreSQL name" [ "$listed" == "$expected_names" ]
check "the mount shows wal_005 and basebackups_005" [ "$(ls "$MNT" | tr '\n' ' ')" == "basebackups_005 wal_005 " ]
while IFS=$'\t' read -r key size sha dsize dsha; do
    [[ $key == pgdb/wal_005/* ]] || continue
    name=${key#pgdb/wal_005/}; name=${name%.lzo}
    check "stat size of $name is the decompressed size $dsize" [ "$(stat -c %s "$MNT/wal_005/$name")" == "$dsize" ]
    check "$name reads back with the MANIFEST's decompressed sha256" [ "$(as_pg sha256sum < "$MNT/wal_005/$name" | cut -d' ' -f1)" == "$dsha" ]
done < <(grep -v '^#' "$MANIFEST" | grep -P '^pgdb/wal_005/.*\t')

out=$(as_pg cp "$MNT/wal_005/000000010000000000000009" "$SCRATCH/x" 2>&1)
check "cp of a missing segment fails with 'No such file'" grep -q "No such file" <<<"$out"
check "a missing segment leaves no file behind" [ ! -e "$SCRATCH/x" ]

# --- archiving with cp ---
SRC=$SCRATCH/src
mkdir -p "$SRC"
printf 'hello walfs\n' > "$SRC/000000010000000000000011"
head -c $((3 * 1024 * 1024 + 12345)) /dev/urandom > "$SRC/000000010000000000000012"
python3 - "$SRC/000000010000000000000013" <<'PY'
import sys, os, struct
# 16 MiB that looks like WAL: page headers, records, long runs of zeros.
out = bytearray(16 * 1024 * 1024)
for page in range(0, len(out), 8192):
    out[page:page + 24] = struct.pack('<HHIQII', 0xD110, 2, 1, page, 0, 0)
    if page < 12 * 1024 * 1024:
        out[page + 24:page + 24 + 4000] = os.urandom(200) * 20
open(sys.argv[1], 'wb').write(out)
PY
printf '1\t0/3000000\tno recovery target specified\n' > "$SRC/00000002.history"
chmod 0644 "$SRC"/*
for f in "$SRC"/*; do
    name=$(basename "$f")
    check "cp $name into wal_005 exits 0" as_pg cp "$f" "$MNT/wal_005/$name"
    rgw_s3 get "$BUCKET" "pgdb/wal_005/$name.lzo" "$SCRATCH/obj.lzo" >/dev/null 2>&1
    check "object for $name is accepted by lzop -t" lzop -t "$SCRATCH/obj.lzo"
    check "object for $name decompresses to the same bytes" cmp -s <(lzop -dc < "$SCRATCH/obj.lzo") "$f"
    check "object for $name has WAL-E's lzop flags 0x0300000D" [ "$(od -An -tx1 -j17 -N4 "$SCRATCH/obj.lzo" | tr -d ' ')" == "0300000d" ]
    check "$name reads back through the mount" cmp -s "$MNT/wal_005/$name" "$f"
done
# An empty file is never a WAL segment or history file: cp must not exit 0
# with nothing stored, and nothing may appear under the name.
: > "$SCRATCH/000000010000000000000010"
chmod 0644 "$SCRATCH/000000010000000000000010"
check "cp of an empty file into wal_005 fails" bash -c "! setpriv --reuid=postgres --regid=postgres --init-groups cp $SCRATCH/000000010000000000000010 $MNT/wal_005/000000010000000000000010"
empty_not_stored() { rgw_s3_absent "$BUCKET" pgdb/wal_005/000000010000000000000010.lzo; }
check "... and stores nothing" empty_not_stored
meta=$(rgw_s3 head "$BUCKET" pgdb/wal_005/000000010000000000000013.lzo)
check "x-amz-meta-walfs-uncompressed-size is 16777216" grep -q "walfs-uncompressed-size=16777216" <<<"$meta"

# --- writers other than cp: each archives exactly once, never an empty or partial object ---
WSEG=$SCRATCH/real-segment
lzop -dc < "$FIXTURE/pgdb/wal_005/000000010000000000000003.lzo" > "$WSEG"
chmod 0644 "$WSEG"
stored_equals() { # name: the bucket's object decompresses to the real segment
    rgw_s3 get "$BUCKET" "pgdb/wal_005/$1.lzo" "$SCRATCH/w.lzo" >/dev/null 2>&1 &&
        lzop -t "$SCRATCH/w.lzo" 2>/dev/null && cmp -s <(lzop -dc < "$SCRATCH/w.lzo") "$WSEG"
}
declare -A WRITERS=(
    [000000010000000000000050]='cp "$0" "$1"'
    [000000010000000000000051]='cat "$0" > "$1"'
    [000000010000000000000052]='dd if="$0" of="$1" bs=64k status=none'
    [000000010000000000000053]='install -m 0600 "$0" "$1"'
    [000000010000000000000054]='rsync "$0" "$1"'
    [000000010000000000000055]='python3 -c "import shutil,sys; shutil.copyfile(sys.argv[1], sys.argv[2])" "$0" "$1"'
)
for name in $(printf '%s\n' "${!WRITERS[@]}" | sort); do
    how=${WRITERS[$name]}
    check "writer '$how' into wal_005/$name exits 0" as_pg sh -c "$how" "$WSEG" "$MNT/wal_005/$name"
    check "... stored exactly the segment (lzop -t, same bytes)" stored_equals "$name"
    check "... and reads back" cmp -s "$MNT/wal_005/$name" "$WSEG"
done
check "rsync left no temporary file visible" ls_lacks "$MNT/wal_005" '\.0000.*'
out=$(as_pg sh -c 'head -c 8388608 "$0" > "$1"' "$WSEG" "$MNT/wal_005/000000010000000000000056" 2>&1)
check "half a segment through a shell redirection is not reported stored" [ $? -ne 0 ]
not_stored_56() { rgw_s3_absent "$BUCKET" pgdb/wal_005/000000010000000000000056.lzo; }
check "... and nothing is stored under its name" not_stored_56
check "... the whole segment then archives under that name" as_pg cp "$WSEG" "$MNT/wal_005/000000010000000000000056"

# --- write-once ---
seg=000000010000000000000012
# the stored object's sha256, empty when it cannot be read (never the hash of nothing)
stored_sha() { rgw_s3 get "$BUCKET" "$1" "$SCRATCH/sha.obj" >/dev/null && sha256sum <"$SCRATCH/sha.obj" | cut -d' ' -f1; }
before=$(stored_sha "pgdb/wal_005/$seg.lzo")
check "re-archiving identical content succeeds" as_pg cp "$SRC/$seg" "$MNT/wal_005/$seg"
head -c 1000 /dev/urandom > "$SCRATCH/other"
chmod 0644 "$SCRATCH/other"
out=$(as_pg cp "$SCRATCH/other" "$MNT/wal_005/$seg" 2>&1)
rc=$?
check "archiving different content under an existing name fails" [ $rc -ne 0 ]
check "the refusal is explained in the log" grep -q "refusing to overwrite wal_005/$seg.lzo" "$(walfs_log "$MNT")"
check "the stored object is unchanged" [ -n "$before" -a "$(stored_sha "pgdb/wal_005/$seg.lzo")" == "$before" ]
check "re-archiving a WAL-E-written segment with identical content succeeds" \
    bash -c "lzop -dc < $FIXTURE/pgdb/wal_005/000000010000000000000002.lzo > $SCRATCH/seg2 && chmod 644 $SCRATCH/seg2 && setpriv --reuid=postgres --regid=postgres --init-groups cp $SCRATCH/seg2 $MNT/wal_005/000000010000000000000002"
check "rm is refused" bash -c "! setpriv --reuid=postgres --regid=postgres --init-groups rm -f $MNT/wal_005/$seg"
check "mv is refused" bash -c "! setpriv --reuid=postgres --regid=postgres --init-groups mv $MNT/wal_005/$seg $MNT/wal_005/x"
check "chmod is refused" bash -c "! setpriv --reuid=postgres --regid=postgres --init-groups chmod 600 $MNT/wal_005/$seg"
check "after the refusals the object is still there" rgw_s3 head "$BUCKET" "pgdb/wal_005/$seg.lzo"

# --- corrupt and truncated objects: EIO, never wrong bytes ---
python3 - "$FIXTURE/pgdb/wal_005/000000010000000000000003.lzo" "$SCRATCH/corrupt.lzo" "$SCRATCH/trunc.lzo" <<'PY'
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
c = bytearray(data); c[len(c) // 2] ^= 0x55
open(sys.argv[2], 'wb').write(c)
open(sys.argv[3], 'wb').write(data[:len(data) * 2 // 3])
PY
rgw_s3 put "$BUCKET" pgdb/wal_005/0000000100000000000000C1.lzo "$SCRATCH/corrupt.lzo" >/dev/null
rgw_s3 put "$BUCKET" pgdb/wal_005/0000000100000000000000C2.lzo "$SCRATCH/trunc.lzo" >/dev/null
for name in 0000000100000000000000C1 0000000100000000000000C2; do
    out=$(as_pg cp "$MNT/wal_005/$name" "$SCRATCH/restored" 2>&1)
    rc=$?
    check "cp of corrupt/truncated $name fails" [ $rc -ne 0 ]
    check "... with an I/O error, not 'No such file'" grep -q "Input/output error" <<<"$out"
    check "... and no partial file is left" [ ! -s "$SCRATCH/restored" ]
    check "the log names the object $name" grep -q "$name" "$(walfs_log "$MNT")"
    rm -f "$SCRATCH/restored"
done
check "the log keeps the decoder's own message (Adler-32 mismatch, what to do)" \
    grep -q "C1.lzo: block .* Adler-32 .* mismatch.*restore it from another copy" "$(walfs_log "$MNT")"
check "... not a generic 'consumer of the data failed'" bash -c "! grep -q 'consumer of the data failed' '$(walfs_log "$MNT")'"

# --- the server down or hanging ---
# archive_command runs under PostgreSQL's archiver: its cp fails within the
# deadline (PostgreSQL retries it).  A restoring read instead waits for as
# long as the outage lasts: a failed restore_command would end a recovery.
as_archiver() { # the process title PostgreSQL gives its archiver
    setpriv --reuid=postgres --regid=postgres --init-groups \
        bash -c 'exec -a "postgres: archiver last was 00000001000000000000000F" bash -c '"'"'"$@"; exit $?'"'"' _ "$@"' _ "$@"
}
printf 'segment written while S3 is down\n' > "$SRC/000000010000000000000020"
chmod 0644 "$SRC/000000010000000000000020"
rgw_kill_gateway
t0=$SECONDS
as_archiver cp "$SRC/000000010000000000000020" "$MNT/wal_005/000000010000000000000020" 2>/dev/null
rc=$?
took=$((SECONDS - t0))
check "the archiver's cp into the mount fails while RGW is down" [ $rc -ne 0 ]
check "... within the deadline (took ${took}s, deadline 6s)" [ $took -le 10 ]
as_pg cat "$MNT/wal_005/000000010000000000000004" > "$SCRATCH/read-in-outage" 2>"$SCRATCH/read-in-outage.err" &
reader=$!
sleep 14
check "a restoring read waits while RGW is down (still waiting after 14 s, twice the deadline)" kill -0 $reader
rgw_restart_gateway
wait $reader
rc=$?
check "... and returns the segment once RGW is back" [ $rc -eq 0 ] && cmp -s "$SCRATCH/read-in-outage" <(lzop -dc < "$FIXTURE/pgdb/wal_005/000000010000000000000004.lzo")
check "... having logged what it waited for" grep -q "wal_005/000000010000000000000004.lzo: the archive is not answering" "$(walfs_log "$MNT")"
rgw_pause
t0=$SECONDS
as_archiver cp "$SRC/000000010000000000000020" "$MNT/wal_005/000000010000000000000020" 2>/dev/null
rc=$?
took=$((SECONDS - t0))
rgw_resume
check "the archiver's cp into the mount fails while RGW hangs" [ $rc -ne 0 ]
check "... within the deadline (took ${took}s)" [ $took -le 10 ]
sleep 1
rgw_s3 head "$BUCKET" pgdb/wal_005/000000010000000000000020.lzo >/dev/null 2>&1
check "nothing was stored for the failed archive" [ $? -eq 3 ]
check "the same cp succeeds once RGW is back" as_archiver cp "$SRC/000000010000000000000020" "$MNT/wal_005/000000010000000000000020"

check "walfs unmounts cleanly (exit 0, no sanitizer report)" walfs_umount "$MNT"

# --- restore read-ahead: the segments after the one read are fetched in the background ---
if walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --log-level=debug --prefetch=3; then
    LOG=$(walfs_log "$MNT")
    as_pg cat "$MNT/wal_005/000000010000000000000001" > /dev/null
    # At once: segment 2's read-ahead is still in flight, and the reader joins it.
    as_pg cat "$MNT/wal_005/000000010000000000000002" > /dev/null
    check "a read of a segment whose read-ahead is in flight joins it (one download)" \
        [ "$(grep -c 'fetching wal_005/000000010000000000000002.lzo' "$LOG")" -eq 1 ]
    for i in $(seq 50); do grep -q "prefetched wal_005/000000010000000000000003.lzo" "$LOG" && break; sleep 0.1; done
    check "reading segment 1 prefetches segment 3" grep -q "prefetched wal_005/000000010000000000000003.lzo" "$LOG"
    check "a segment not yet archived is not prefetched (no error)" bash -c "! grep -q 'prefetch of .*000000010000000000000005' '$LOG'"
    check "the prefetched segment reads back right" [ "$(as_pg sha256sum < "$MNT/wal_005/000000010000000000000003" | cut -d' ' -f1)" == "$(grep -P '^pgdb/wal_005/000000010000000000000003.lzo\t' "$MANIFEST" | cut -f5)" ]
    check "... without being downloaded again" [ "$(grep -c 'fetching wal_005/000000010000000000000003.lzo' "$LOG")" -eq 1 ]
    check "the prefetching mount unmounts cleanly" walfs_umount "$MNT"
else
    not_ok "prefetching mount"
fi

# --- configured the WAL-E way: envdir with WALE_S3_PREFIX, WALE_S3_ENDPOINT, ... ---
ENVD=$SCRATCH/envdir
mkdir -p "$ENVD"
echo "s3://$BUCKET/pgdb" > "$ENVD/WALE_S3_PREFIX"
echo "http+path://127.0.0.1:$RGW_PORT" > "$ENVD/WALE_S3_ENDPOINT"
echo "$RGW_ACCESS_KEY" > "$ENVD/AWS_ACCESS_KEY_ID"
echo "$RGW_SECRET_KEY" > "$ENVD/AWS_SECRET_ACCESS_KEY"
echo STANDARD > "$ENVD/WALE_S3_STORAGE_CLASS"
chmod -R a+rX "$ENVD"
if (unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; WALFS_WRAPPER="envdir $ENVD" walfs_mount "$MNT" - --sse=AES256); then
    ok "envdir /etc/wal-e/env-style mount (WALE_S3_PREFIX, WALE_S3_ENDPOINT, credentials from files)"
    check "... lists the archive" [ "$(ls "$MNT/wal_005" | grep -c .)" -ge 5 ]
    printf 'archived with SSE and a storage class\n' > "$SRC/000000010000000000000040"
    chmod 0644 "$SRC/000000010000000000000040"
    check "cp with --sse=AES256 and WALE_S3_STORAGE_CLASS succeeds" as_pg cp "$SRC/000000010000000000000040" "$MNT/wal_005/000000010000000000000040"
    check "... and reads back" cmp -s "$SRC/000000010000000000000040" "$MNT/wal_005/000000010000000000000040"
    check "the envdir mount unmounts cleanly" walfs_umount "$MNT"
else
    not_ok "envdir /etc/wal-e/env-style mount"
fi

# --- rejected credentials ---
out=$(AWS_SECRET_ACCESS_KEY=wrong-secret-for-test setpriv --reuid=postgres --regid=postgres --init-groups \
      env HOME="$WALFS_SCRATCH" "$WALFS_BIN" -f "s3://$BUCKET/pgdb" "$MNT" --cache-dir="$WALFS_SCRATCH/c-bad" "${MOUNT_OPTS[@]}" 2>&1)
rc=$?
check "mounting with a wrong secret fails at once" [ $rc -ne 0 ]
check "... saying the secret was rejected" grep -q "AWS_SECRET_ACCESS_KEY" <<<"$out"
check "... without printing the secret" bash -c "! grep -q wrong-secret-for-test <<<'$out'"
AWS_SECRET_ACCESS_KEY=wrong-secret-for-test walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --skip-startup-check
out=$(as_pg cp "$SRC/000000010000000000000011" "$MNT/wal_005/000000010000000000000030" 2>&1)
rc=$?
check "cp with a wrong secret fails" [ $rc -ne 0 ]
check "... with 'Permission denied'" grep -q "Permission denied" <<<"$out"
check "the log says the credentials were rejected" grep -q "AWS_SECRET_ACCESS_KEY" "$(walfs_log "$MNT")"
check "the log never contains the secret" bash -c "! grep -q wrong-secret-for-test $(walfs_log "$MNT")"
rgw_s3 head "$BUCKET" pgdb/wal_005/000000010000000000000030.lzo >/dev/null 2>&1
check "nothing was stored with the wrong secret" [ $? -eq 3 ]
check "walfs unmounts cleanly after the credential failures" walfs_umount "$MNT"

t_summary
