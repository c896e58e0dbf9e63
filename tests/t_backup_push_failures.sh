#!/bin/bash
# Base backup pushes into the mount that fail half-way, against a real Ceph RGW
# and PostgreSQL 15 (a pgbench -i -s 10 database, so that a push takes a few
# seconds).  Each case starts `pg_basebackup -D MNT/basebackups_005/<new> -X
# fetch`, waits until the push is under way, then:
#  1. stops radosgw (SIGKILL) -- pg_basebackup must exit non-zero on its own
#     (bounded by walfs's --deadline), walfs keeps running; radosgw restarts;
#  2. kills pg_basebackup (SIGKILL) -- the operator then removes the
#     incomplete directory (rm -rf, as pg_basebackup's own error path does);
#  3. kills the walfs daemon (SIGKILL) and lazy-unmounts -- pg_basebackup
#     exits non-zero; walfs is mounted again with the same cache directory;
#  4. a second mount's cache directory (a 4 MiB tmpfs) fills up -- the
#     writer gets the error, the push is failed for good.
# After each: no sentinel ever appears for the failed push, the bucket holds
# no key under basebackups_005/ that does not belong to a backup with a
# sentinel (none of the failed push's partitions), there is no incomplete
# multipart upload (checked with curl --aws-sigv4 GET /BUCKET?uploads=, as
# s3tool.py has no ListMultipartUploads), the failed push never lists as a
# backup, and the next push works.  Leftovers must go at once where walfs can
# reach the bucket; where it cannot (radosgw down, walfs killed) the test
# allows the clean-up to happen when radosgw is back or at the next mount
# (case 1 unmounts and mounts again if the bucket is not clean after 20 s).
#
# Knobs: RGW_TEST_PORT (default 7484), BPF_SCALE (pgbench scale, default 10),
# BPF_DEADLINE (walfs --deadline, default 15), BB_TIMEOUT (default 150).
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source tests/lib/pg.sh

t_require lzop curl
t_scratch bpf
BB_PID=
cleanup() {
    [[ -n $BB_PID ]] && kill -0 "$BB_PID" 2>/dev/null && { kill -9 "$BB_PID"; wait "$BB_PID" 2>/dev/null; }
    PG_KEEP=1 pg_cleanup >/dev/null 2>&1
    walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"
}
trap cleanup EXIT

BUCKET=walfs-bpf
BB_TIMEOUT=${BB_TIMEOUT:-150}
SEG_SIZE=16777216
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$SCRATCH" "$@"; }
fail_out() { not_ok "$1"; t_summary; exit 1; }

# ------------------------------------------------------------------ helpers
lsn_name() { # X/Y TLI -> SEGMENT_OFF8
    local hi=$((16#${1%/*})) lo=$((16#${1#*/})) pos seg
    pos=$(( (hi << 32) | lo )); seg=$(( pos / SEG_SIZE ))
    printf '%08X%08X%08X_%08d\n' "$2" $(( seg / (0x100000000 / SEG_SIZE) )) $(( seg % (0x100000000 / SEG_SIZE) )) $(( pos % SEG_SIZE ))
}
list_mp() {
    curl -sS --max-time 10 --aws-sigv4 "aws:amz:${AWS_REGION:-us-east-1}:s3" --user "$RGW_ACCESS_KEY:$RGW_SECRET_KEY" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        "$RGW_ENDPOINT/$BUCKET?uploads="
}
# no incomplete multipart upload under PFX/ (an error answer does not count as clean)
no_mp() {
    local out; out=$(list_mp 2>&1) || return 1
    grep -q '<ListMultipartUploadsResult' <<<"$out" || return 1
    ! grep -o "<Upload><Key>[^<]*" <<<"$out" | grep -q "<Key>$1/"
}
mp_under() { ! no_mp "$1" && list_mp 2>/dev/null | grep -q '<ListMultipartUploadsResult'; }
# every key under PFX/basebackups_005/ belongs to a backup that has a sentinel
bucket_clean() {
    rgw_s3 ls "$BUCKET" "$1/basebackups_005/" | cut -f1 | python3 -c '
import re, sys
pfx = sys.argv[1] + "/basebackups_005/"
keys = [k for k in sys.stdin.read().split("\n") if k]
done = {k[len(pfx):-len("_backup_stop_sentinel.json")] for k in keys
        if re.fullmatch(re.escape(pfx) + r"base_[0-9A-F]{24}_[0-9A-F]{8}_backup_stop_sentinel\.json", k)}
stray = [k for k in keys if not k.endswith("_backup_stop_sentinel.json") and k[len(pfx):].split("/")[0] not in done]
for k in stray[:5]: print("#   stray key: " + k)
sys.exit(1 if stray else 0)' "$1"
}
all_clean() { bucket_clean pgdb >/dev/null && no_mp pgdb; }
check_clean() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; show_dirt; fi; }
show_dirt() { # the stray keys and uploads, as comments
    bucket_clean pgdb
    list_mp 2>/dev/null | grep -o "<Upload><Key>[^<]*" | sed 's/^<Upload><Key>/#   incomplete multipart upload: /' | head -n 5
}
# The negative checks below name a push by its backup name, which bb_name
# reads from pg_basebackup's log: an empty or malformed name (the log gave
# none) makes them fail, rather than look for a name no push could have.
push_name_ok() {
    [[ $1 =~ ^base_[0-9A-F]{24}_[0-9A-F]{8}$ ]] && return 0
    echo "# no backup name to look for ('$1'): pg_basebackup's log has no write-ahead log start point"
    return 1
}
has_sentinel() { rgw_s3 head "$BUCKET" "pgdb/basebackups_005/${1}_backup_stop_sentinel.json" >/dev/null 2>&1; }
# a 404 for the sentinel (an unreachable gateway is not "no sentinel")
sentinel_absent() { push_name_ok "$1" && rgw_s3_absent "$BUCKET" "pgdb/basebackups_005/${1}_backup_stop_sentinel.json"; }
# the listing succeeds and has no key of the push
no_keys_of() {
    local out
    push_name_ok "$1" || return 1
    out=$(rgw_s3 ls "$BUCKET" "pgdb/basebackups_005/$1") || { echo "# listing pgdb/basebackups_005/$1 failed"; return 1; }
    [[ -z $out ]]
}
# the mount answers the listing and it lacks the name
no_base_listed() { ls_lacks "$MNT/basebackups_005" "$1"; }
no_push_listed() { push_name_ok "$1" && no_base_listed "$1"; }
push_started() { # a partition key or a multipart upload of a push exists
    rgw_s3 ls "$BUCKET" "pgdb/basebackups_005/" 2>/dev/null | grep -q '/tar_partitions/' || mp_under pgdb/basebackups_005
}
# wait_clean SECONDS: poll until the bucket is clean
wait_clean() {
    local i
    for ((i = 0; i < $1 * 2; i++)); do all_clean && return 0; sleep 0.5; done
    return 1
}
# no sentinel shows up for NAME within SECONDS
no_sentinel_for() {
    local i
    push_name_ok "$1" || return 1
    for ((i = 0; i < $2 * 2; i++)); do has_sentinel "$1" && return 1; sleep 0.5; done
    sentinel_absent "$1"
}

# pg_basebackup -X fetch as postgres in the background; BB_PID is pg_basebackup
# itself (the subshell, setpriv and env all exec).
bb_start() { # LOG DEST
    (cd "$PG_SCRATCH" && exec setpriv --reuid=postgres --regid=postgres --init-groups \
        env -i PATH="$PG_BINDIR:/usr/bin:/bin" LANG=C LC_ALL=C HOME="$PG_SCRATCH" TZ=UTC \
        pg_basebackup -h "$PG_SCRATCH" -p "$PRIMARY_PORT" -U postgres -D "$2" -Fp -X fetch \
        --checkpoint=fast -v) >"$1" 2>&1 &
    BB_PID=$!
}
# bb_wait SECONDS: pg_basebackup's exit status; 124 (after SIGKILL) if it ran longer
bb_wait() {
    local i rc
    for ((i = 0; i < $1 * 10; i++)); do kill -0 "$BB_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$BB_PID" 2>/dev/null; then kill -9 "$BB_PID"; wait "$BB_PID" 2>/dev/null; BB_PID=; return 124; fi
    wait "$BB_PID"; rc=$?; BB_PID=; return $rc
}
# wait_midpush LABEL DIR: until pg_basebackup writes into DIR and something of
# the push reached the bucket (a partition or a multipart upload; at most
# 30 s, then go on anyway), then check pg_basebackup is still running.
wait_midpush() {
    local label=$1 dir=$2 i how="nothing in the bucket yet (after 30 s)"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$BB_PID" 2>/dev/null || break
        if [ -d "$dir/base" ] && push_started; then how="push under way in the bucket after $((i / 10)).$((i % 10)) s"; break; fi
        sleep 0.1
    done
    echo "# [$label] $how"
    check "[$label] pg_basebackup is still running when the fault is injected (else raise BPF_SCALE)" kill -0 "$BB_PID"
}
bb_name() { # LOG -> backup name from "write-ahead log start point"
    local lsn tli
    read -r lsn tli < <(sed -n 's/.*write-ahead log start point: \([0-9A-F]*\/[0-9A-F]*\) on timeline \([0-9]*\).*/\1 \2/p' "$1")
    [[ -n ${lsn:-} ]] && echo "base_$(lsn_name "$lsn" "$tli")"
}
show_tail() { # LOG: pg_basebackup's and walfs's last lines as comments
    tail -n 5 "$1" | sed 's/^/#   /'
    tail -n 6 "$(walfs_log "$MNT")" 2>/dev/null | sed 's/^/#   walfs: /'
}
# next_push LABEL: a push after the failure works
next_push() {
    local label=$1 log=$SCRATCH/next-$1.log rc name
    local t0=$SECONDS
    bb_start "$log" "$MNT/basebackups_005/next-$label"
    bb_wait "$BB_TIMEOUT"; rc=$?
    check "[$label] the next push (pg_basebackup -X fetch) exits 0 (rc $rc, $((SECONDS - t0)) s)" [ $rc -eq 0 ]
    [ $rc -eq 0 ] || show_tail "$log"
    name=$(bb_name "$log")
    check "[$label] ... its sentinel is stored ($name)" has_sentinel "${name:-none}"
    check "[$label] ... ls basebackups_005 shows it and LATEST points to it" \
        [ -n "$name" -a "$(readlink "$MNT/basebackups_005/LATEST" 2>/dev/null)" == "$name" ]
    check_clean "[$label] ... and the bucket has no stray keys or uploads" all_clean
}

# The cache directory stays the same across remounts, as with an operator's
# default ~/.cache/walfs: walfs_mount names its cache WALFS_SCRATCH/cache-<n>
# after the number of mounts so far, so point the next one at the first.
remount() {
    local n=${#_WALFS_MOUNTS[@]}
    [ -d "$FIRST_CACHE" ] && ln -sfn "$FIRST_CACHE" "$WALFS_SCRATCH/cache-$n"
    walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}"
}

# ------------------------------------------------------------------ setup
rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7484}" || { echo "RGW did not start"; echo "0 passed, 1 failed"; exit 1; }
rgw_s3 mb "$BUCKET" >/dev/null
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MOUNT_OPTS=(--endpoint="$RGW_ENDPOINT" --addressing=path --deadline="${BPF_DEADLINE:-15}")
MNT=$SCRATCH/mnt
walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || fail_out "mount s3://$BUCKET/pgdb"
FIRST_CACHE=$WALFS_SCRATCH/cache-0
[ -d "$FIRST_CACHE" ] || echo "# note: $FIRST_CACHE not found; remounts use a fresh cache directory"
PG_ARCHIVE_COMMAND="cp %p $MNT/wal_005/%f"
PRIMARY_PORT=$(pg_free_port $((20000 + RANDOM % 10000)))
pg_init primary "$PRIMARY_PORT" && pg_start primary || fail_out "primary started, archiving through the mount"
T0=$SECONDS
_pg_as pgbench -h "$PG_SCRATCH" -p "$PRIMARY_PORT" -U postgres -i -s "${BPF_SCALE:-10}" -q postgres \
    >"$SCRATCH/pgbench.out" 2>&1 || { cat "$SCRATCH/pgbench.out"; fail_out "pgbench -i -s ${BPF_SCALE:-10}"; }
ok "pgbench -i -s ${BPF_SCALE:-10} ($((SECONDS - T0)) s, data directory $(du -sm "$PG_SCRATCH/primary" | cut -f1) MB)"

# ------------------------------------------------ 1. radosgw stops mid-push
T0=$SECONDS
log=$SCRATCH/fail-rgw.log
bb_start "$log" "$MNT/basebackups_005/fail-rgw"
wait_midpush rgw "$MNT/basebackups_005/fail-rgw"
rgw_kill_gateway KILL 2>/dev/null
bb_wait "$BB_TIMEOUT"; rc=$?
check "[rgw] pg_basebackup exits non-zero on its own while radosgw is down (rc $rc)" [ $rc -ne 0 -a $rc -ne 124 ]
show_tail "$log"
check "[rgw] walfs is still running" kill -0 "${_WALFS_PID[$MNT]:-none}"
NAME1=$(bb_name "$log")
rgw_restart_gateway 2>/dev/null || fail_out "[rgw] radosgw restarted"
check "[rgw] no sentinel for the failed push ${NAME1:-?} (watched 5 s)" no_sentinel_for "${NAME1:-}" 5
if wait_clean 20; then
    echo "# [rgw] bucket clean without a remount"
else
    echo "# [rgw] bucket not clean 20 s after radosgw came back; unmounting and mounting again"
    show_dirt
    check "[rgw] walfs unmounts cleanly" walfs_umount "$MNT"
    remount || fail_out "[rgw] mount again"
    wait_clean 30 || show_dirt
fi
check "[rgw] no key of the failed push remains (partitions, extended_version.txt)" no_keys_of "${NAME1:-}"
check "[rgw] no stray keys under pgdb/basebackups_005/" bucket_clean pgdb
check_clean "[rgw] no incomplete multipart upload" no_mp pgdb
check "[rgw] the failed push is not listed as a backup" no_push_listed "${NAME1:-}"
next_push rgw
echo "# (1) took $((SECONDS - T0)) s"

# ------------------------------------------ 2. the writer is killed mid-push
T0=$SECONDS
log=$SCRATCH/fail-writer.log
DIR2=$MNT/basebackups_005/fail-writer
bb_start "$log" "$DIR2"
wait_midpush writer "$DIR2"
NAME2=$(bb_name "$log")
kill -9 "$BB_PID"; wait "$BB_PID" 2>/dev/null; BB_PID=
check "[writer] no sentinel for the abandoned push ${NAME2:-?} (watched 5 s)" no_sentinel_for "${NAME2:-}" 5
check "[writer] the abandoned push is not listed as a backup" no_push_listed "${NAME2:-}"
if wait_clean 10; then echo "# [writer] walfs removed the abandoned push's uploads by itself"; fi
# What pg_basebackup itself does on an error, and what an operator does.
as_pg timeout 60 rm -rf "$DIR2" 2>"$SCRATCH/rm.err"; rc=$?
check "[writer] rm -rf of the incomplete directory succeeds (rc $rc)" [ $rc -eq 0 ]
[ $rc -eq 0 ] || head -n 3 "$SCRATCH/rm.err" | sed 's/^/#   /'
check "[writer] ... and it is gone from the listing" no_base_listed fail-writer
check_clean "[writer] its uploads are removed at once (bucket clean within 20 s)" wait_clean 20
check "[writer] no key of the abandoned push remains" no_keys_of "${NAME2:-}"
check "[writer] no sentinel appeared meanwhile" no_sentinel_for "${NAME2:-}" 0
next_push writer
echo "# (2) took $((SECONDS - T0)) s"

# ------------------------------------------ 3. walfs is killed mid-push
T0=$SECONDS
log=$SCRATCH/fail-walfs.log
bb_start "$log" "$MNT/basebackups_005/fail-walfs"
wait_midpush walfs "$MNT/basebackups_005/fail-walfs"
WPID=${_WALFS_PID[$MNT]:-}
[[ -n $WPID ]] && kill -9 "$WPID"
fusermount3 -uz "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
[[ -n $WPID ]] && wait "$WPID" 2>/dev/null
bb_wait 60; rc=$?
check "[walfs] pg_basebackup exits non-zero once walfs is gone (rc $rc)" [ $rc -ne 0 -a $rc -ne 124 ]
NAME3=$(bb_name "$log")
check "[walfs] no sentinel for the interrupted push ${NAME3:-?} (watched 3 s)" no_sentinel_for "${NAME3:-}" 3
echo "# [walfs] before the remount: $(rgw_s3 ls "$BUCKET" pgdb/basebackups_005/ | grep -c "${NAME3:-none}/") key(s) of the push, multipart uploads: $(list_mp | grep -o '<Upload>' | wc -l)"
remount || fail_out "[walfs] mount again after walfs was killed"
check_clean "[walfs] after the next mount the leftovers are removed (bucket clean within 30 s)" wait_clean 30
check "[walfs] no key of the interrupted push remains" no_keys_of "${NAME3:-}"
check "[walfs] no incomplete multipart upload" no_mp pgdb
check "[walfs] the interrupted push is not listed as a backup" no_push_listed "${NAME3:-}"
check "[walfs] no sentinel appeared for it" no_sentinel_for "${NAME3:-}" 0
next_push walfs
echo "# (3) took $((SECONDS - T0)) s"

# ----------------------------- 4. the spool's filesystem fills up mid-push
# A second mount whose cache directory is a 4 MiB tmpfs: pgbench_accounts
# (~130 MB, ~13 MB as the lzop records it is spooled as) cannot be spooled.  The writer hears of it (at close, through the
# kernel's writeback), the push is failed for good, its uploads go at once.
T0=$SECONDS
SMALL=$SCRATCH/small-cache
mkdir -p "$SMALL" && mount -t tmpfs -o size=4m,mode=0755 tmpfs "$SMALL" && chown postgres "$SMALL"
MNT4=$SCRATCH/mnt-small
if walfs_mount "$MNT4" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --cache-dir="$SMALL/cache"; then
    log=$SCRATCH/fail-space.log
    bb_start "$log" "$MNT4/basebackups_005/fail-space"
    bb_wait 120; rc=$?
    check "[space] pg_basebackup exits non-zero when the spool is full (rc $rc)" [ $rc -ne 0 -a $rc -ne 124 ]
    grep -q "No space left on device" "$log" || tail -n 3 "$log" | sed 's/^/#   /'
    check "[space] walfs logs which file could not be spooled and where to look" \
        grep -q "spooling .* failed: No space left on device (check the space in the cache directory" "$(walfs_log "$MNT4")"
    NAME4=$(bb_name "$log")
    check "[space] no sentinel for the push ${NAME4:-?} (watched 3 s)" no_sentinel_for "${NAME4:-}" 3
    check_clean "[space] its uploads are removed at once (bucket clean within 20 s)" wait_clean 20
    check "[space] the mount with the small spool unmounts cleanly" walfs_umount "$MNT4"
else
    not_ok "[space] mount with a 4 MiB cache directory"
fi
umount "$SMALL" 2>/dev/null || umount -l "$SMALL"
echo "# (4) took $((SECONDS - T0)) s"

check "ls basebackups_005 lists exactly the three good pushes and LATEST" \
    [ "$(ls "$MNT/basebackups_005" 2>/dev/null | grep -c '^base_')" -eq 3 ]
PG_KEEP=1 pg_stop primary
check "walfs unmounts cleanly" walfs_umount "$MNT"
t_summary
