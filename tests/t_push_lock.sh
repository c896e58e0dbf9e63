#!/bin/bash
# A push completing against a paused RGW must not stall basebackups_005
# (issue 11): while one push's completion waits on the archive for its last
# partition and its sentinel, everything that can be answered from memory
# answers within 100 ms:
#   ls -l basebackups_005, stat of a finished backup's directory and of a
#   file in it (its index loaded), ls -l of another push in progress,
#   mkdir of a new push, stat of a file in the completing push.
# Then RGW resumes and the completion ends well: the rename returns 0, the
# backup lists under its base_... name, its sentinel is in the bucket, LATEST
# points to it; the new push can be removed with rmdir.
#
# The pushes are data directories laid out as pg_basebackup writes them
# (backup_label first, backup_manifest.tmp renamed to backup_manifest last),
# made by a script: no PostgreSQL is needed, and the test picks the moment of
# the last rename.  That rename triggers the completion, not
# `mv incoming done`: a rename holds its parent directory's lock in the kernel
# until walfs answers, and `mv` renames in basebackups_005 itself, so every
# lookup, listing and mkdir there would wait on the kernel whatever walfs
# does.  For the same reason the completing push's own directory is not
# listed (its lock is the rename's); its file is stat'ed through a cached
# name, which the kernel revalidates without that lock.
#
# Two bounds shape the timing:
#  - --attr-timeout=0, so that every stat and lookup reaches walfs (the
#    kernel answers from its cache otherwise, and the measurement would prove
#    nothing);
#  - walfs lists the backups again once the wall clock's second changes
#    (backup/backup_catalog.c, LISTING_TTL_SECONDS), which against a paused
#    RGW waits for the archive however the push lock is held; so the
#    listing is refreshed just after a second begins and the measurements
#    that need it run first, within that second (the script says whether
#    they did).
#
# Knobs: RGW_TEST_PORT (default 7790), RGW_MON_PORT, WALFS_BIN (default
# build/release/walfs), WALFS_MODE (default daemon, as README runs walfs),
# OP_TIMEOUT (seconds each measured operation may take before it is given up
# on, default 5), LIMIT_MS (default 100).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${WALFS_MODE:=daemon}"
export WALFS_MODE
source tests/lib/rgw.sh
source tests/lib/walfs.sh

t_require fusermount3 setpriv python3 pgrep
t_scratch pushlock
BG_PIDS=()
cleanup() {
    rgw_resume >/dev/null 2>&1
    local p
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"
}
trap cleanup EXIT
fail_out() { not_ok "$1"; t_summary; exit 1; }

BUCKET=walfs-pushlock
OP_TIMEOUT=${OP_TIMEOUT:-5}
LIMIT_MS=${LIMIT_MS:-100}
# Longer than the measurements take when every one of them waits its whole
# OP_TIMEOUT (the code before the fix), so the completion outlives the pause.
DEADLINE=$((OP_TIMEOUT * 6 + 15))
PG_RUN=(setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$SCRATCH")
as_pg() { "${PG_RUN[@]}" "$@"; }
us_now() { local t=$EPOCHREALTIME; echo "${t//[.,]/}"; }
# A sleep without a process per nap: read on a FIFO that never gets data.
mkfifo "$SCRATCH/nap"
exec {NAP_FD}<>"$SCRATCH/nap"
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# mkpush.py DIR SEGMENT HOW: a data directory as pg_basebackup writes it,
# starting at 0/<SEGMENT>000028 (so its name is base_000000010000000000<SEG>_00000040).
# HOW: label (backup_label only), files (all but the last rename), full.
cat >"$SCRATCH/mkpush.py" <<'PY'
import json, os, sys
d, seg, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lsn = seg * 16777216 + 0x28
def put(rel, data, mode=0o600):
    p = os.path.join(d, rel)
    with open(p, 'wb') as f:
        f.write(data)
    os.chmod(p, mode)
put('backup_label', (
    'START WAL LOCATION: 0/%X (file 00000001%016X)\n'
    'CHECKPOINT LOCATION: 0/%X\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n'
    'START TIME: 2026-12-03 00:00:00 UTC\nLABEL: walfs push lock test\nSTART TIMELINE: 1\n'
    % (lsn, seg, lsn + 0x38)).encode())
if how == 'label':
    sys.exit(0)
put('PG_VERSION', b'15\n')
for sub in ('global', 'base', 'base/1', 'pg_wal'):
    os.mkdir(os.path.join(d, sub), 0o700)
put('global/pg_control', bytes(8192))
put('base/1/1259', os.urandom(1 << 16) * 4)
put('base/1/16384', os.urandom(3 << 20))          # the last partition has something to upload
put('backup_manifest.tmp', json.dumps({
    'PostgreSQL-Backup-Manifest-Version': 1, 'Files': [],
    'WAL-Ranges': [{'Timeline': 1, 'Start-LSN': '0/%X' % lsn, 'End-LSN': '0/%X' % (lsn + 0x1000)}],
    'Manifest-Checksum': '0' * 64}).encode())
if how == 'full':
    os.rename(os.path.join(d, 'backup_manifest.tmp'), os.path.join(d, 'backup_manifest'))
PY
name_of() { printf 'base_00000001%016X_00000040' "$1"; }

# ---------------------------------------------------------------- setup
rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7790}" || fail_out "RGW started"
rgw_s3 mb "$BUCKET" >/dev/null || fail_out "bucket $BUCKET created"
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MNT=$SCRATCH/mnt
walfs_mount "$MNT" "s3://$BUCKET/pgdb" --endpoint="$RGW_ENDPOINT" --addressing=path \
    --deadline="$DEADLINE" --attr-timeout=0 || fail_out "mount s3://$BUCKET/pgdb"
ok "mounted ($WALFS_MODE, $(basename "$(dirname "$WALFS_BIN")") build, --deadline=$DEADLINE --attr-timeout=0)"
BB=$MNT/basebackups_005
LOG=$(walfs_log "$MNT")
NAME1=$(name_of 2) NAME2=$(name_of 3) NAME_OTHER=$(name_of 4)

# A finished backup to look at while the next one completes.
rc=0
as_pg mkdir "$BB/first" && as_pg timeout 60 python3 "$SCRATCH/mkpush.py" "$BB/first" 2 full || rc=$?
check "a first push completes by renaming backup_manifest.tmp (rc $rc)" [ $rc -eq 0 ]
listed=1
for _ in $(seq 50); do ls "$BB" 2>/dev/null | grep -qx "$NAME1" && { listed=0; break; }; nap 0.1; done
check "... and lists as $NAME1" [ $listed -eq 0 ]
check "... its PG_VERSION reads through the mount (its index is loaded)" \
    [ "$(timeout 30 cat "$BB/$NAME1/PG_VERSION" 2>/dev/null)" == 15 ]

# The push that will complete against the paused RGW, and one left in progress.
rc=0
as_pg mkdir "$BB/second" && as_pg timeout 60 python3 "$SCRATCH/mkpush.py" "$BB/second" 3 files || rc=$?
check "a second push has all its files, backup_manifest.tmp last (rc $rc)" [ $rc -eq 0 ]
rc=0
as_pg mkdir "$BB/other" && as_pg timeout 60 python3 "$SCRATCH/mkpush.py" "$BB/other" 4 label || rc=$?
check "a push left in progress (basebackups_005/other) has its backup_label (rc $rc)" [ $rc -eq 0 ]
# Each label has been read (the push named, its lease stored) before the
# pause: that is network I/O of its own.
logged() { local i; for i in $(seq 50); do grep -qF "$1" "$LOG" && return 0; nap 0.1; done; return 1; }
check "walfs named the second push $NAME2 from its backup_label" \
    logged "pushing base backup $NAME2 from basebackups_005/second"
check "... and the one left in progress $NAME_OTHER" logged "pushing base backup $NAME_OTHER from basebackups_005/other"

# ------------------------------------------------- the measured window
# measure LABEL WANT CMD...: runs CMD in the background, bounded by
# OP_TIMEOUT; one check: it answered (exit 0, every word of WANT in its
# output) within LIMIT_MS.  An operation still
# waiting after half a second is left running (it is reaped at the end), and
# where in the kernel it waits is printed: in a FUSE request (walfs has not
# answered) or on a lock.
M_N=0
LIST_DEPENDENT_END=0
declare -A M_PID
measure() {
    local label=$1 want=$2 f pid i where='' rc start end ms w missing=''; shift 2
    M_N=$((M_N + 1))
    f=$SCRATCH/measure.$M_N
    LAST_END=0
    (   s=$(us_now)
        timeout -k 1 "$OP_TIMEOUT" "$@" >"$f.out" 2>&1
        r=$? e=$(us_now)
        echo "$r $s $e" >"$f.tmp" && mv "$f.tmp" "$f"
    ) 2>/dev/null & # (bash's "Killed" notice of an operation given up on)
    pid=$!
    BG_PIDS+=("$pid")
    M_PID[$label]=$pid
    for ((i = 0; i < (OP_TIMEOUT + 2) * 100; i++)); do
        [[ -s $f ]] && break
        if ((i == 50)); then where=$(where_blocked "$pid"); fi
        nap 0.01
    done
    if [[ ! -s $f ]]; then
        not_ok "$label answers within $LIMIT_MS ms (no answer after $((OP_TIMEOUT + 2)) s; waiting in: ${where:-?})"
        return 1
    fi
    read -r rc start end <"$f"
    ms=$(( (end - start) / 1000 ))
    LAST_END=$end
    [[ -n $where ]] && echo "# $label was still waiting after 0.5 s, in: $where"
    [[ $rc -eq 0 ]] || echo "# $label: exit $rc: $(head -c 200 "$f.out")"
    for w in $want; do grep -qF -- "$w" "$f.out" || missing+=" $w"; done
    local took="took $ms ms, exit $rc"
    [[ $rc == 124 || $rc == 137 ]] && took="no answer: given up on after $ms ms"
    check "$label answers within $LIMIT_MS ms ($took${missing:+, output lacks$missing})" \
        [ "$rc" -eq 0 -a "$ms" -lt "$LIMIT_MS" -a -z "$missing" ]
}
# The kernel stack of the deepest process under PID (the operation itself).
where_blocked() {
    local p=$1 c
    while c=$(pgrep -P "$p" | head -n 1) && [[ -n $c ]]; do p=$c; done
    sed -E 's/^\[<[^>]*>\] //; s/\+.*//' "/proc/$p/stack" 2>/dev/null | head -n 8 | tr '\n' ' '
}

# Just after a second begins: everything once more with the archive up, so
# that the listing is fresh (listed in this second) and the index loaded.
next_second() {
    local left
    left=$(us_now); left=$((1000000 - 10#${left: -6}))
    nap "$(printf '%d.%06d' $((left / 1000000)) $((left % 1000000)))"
}
warm() {
    ls -l "$BB" >/dev/null && stat "$BB/$NAME1" "$BB/$NAME1/PG_VERSION" "$BB/second/PG_VERSION" >/dev/null &&
        ls -l "$BB/other" >/dev/null
}
for attempt in 1 2 3; do
    next_second
    t0=$(us_now)
    warm || fail_out "basebackups_005 answers with the archive up"
    t1=$(us_now)
    # The listing was refreshed in this second if the warm-up began and ended in it.
    (( t0 / 1000000 == t1 / 1000000 )) && break
    echo "# warm-up $attempt crossed a second boundary ($(( (t1 - t0) / 1000 )) ms), again"
done
SECOND_END=$(( (t0 / 1000000 + 1) * 1000000 ))

rgw_pause || fail_out "radosgw paused"
(   r=0
    as_pg timeout 120 mv "$BB/second/backup_manifest.tmp" "$BB/second/backup_manifest" \
        2>"$SCRATCH/complete.err" || r=$?
    echo "$r $(us_now)" >"$SCRATCH/complete.tmp" && mv "$SCRATCH/complete.tmp" "$SCRATCH/complete.rc"
) &
COMPLETE_PID=$!
BG_PIDS+=("$COMPLETE_PID")
began=1
for _ in $(seq 100); do
    grep -qF "basebackups_005/second: the copy is complete (backup_manifest)" "$LOG" && { began=0; break; }
    nap 0.01
done
check "the rename of backup_manifest.tmp began the completion (walfs logged it) against the paused RGW" [ $began -eq 0 ]
nap 0.1 # into its requests to the archive, which wait for the paused RGW

LAST_END=0
measure "ls -l basebackups_005" "$NAME1 LATEST second other" ls -l "$BB"
measure "stat of the finished backup's directory" "$NAME1" stat "$BB/$NAME1"
measure "stat of a file in the finished backup" PG_VERSION stat "$BB/$NAME1/PG_VERSION"
LIST_DEPENDENT_END=$LAST_END
measure "ls -l of the push in progress" backup_label ls -l "$BB/other"
measure "mkdir of a new push" "" "${PG_RUN[@]}" mkdir "$BB/third"
measure "stat of a file in the completing push" PG_VERSION stat "$BB/second/PG_VERSION"
if (( LIST_DEPENDENT_END > 0 && LIST_DEPENDENT_END < SECOND_END )); then
    echo "# the measurements that need the backup listing ended $(( (SECOND_END - LIST_DEPENDENT_END) / 1000 )) ms before walfs would list again"
else
    echo "# the measurements that need the backup listing did not end within the second of the last listing:" \
        "a slow answer among them may be walfs listing the paused RGW, not the push lock"
fi
check "the completion was still waiting for the paused RGW when the measurements ended" \
    [ ! -e "$SCRATCH/complete.rc" ]

# --------------------------------------------------------- RGW is back
rgw_resume || fail_out "radosgw resumed"
T_RESUME=$(us_now)
for _ in $(seq $((DEADLINE * 10 + 100))); do [[ -e $SCRATCH/complete.rc ]] && break; nap 0.1; done
read -r crc cend <"$SCRATCH/complete.rc" 2>/dev/null || crc=unfinished cend=$T_RESUME
check "the rename that completes the push returns 0 once RGW is back (rc $crc, $(( (cend - T_RESUME) / 1000 )) ms after resuming)" \
    [ "$crc" == 0 ]
[[ $crc == 0 ]] || { head -c 300 "$SCRATCH/complete.err" | sed 's/^/#   /'; tail -n 8 "$LOG" | sed 's/^/#   walfs: /'; }
check "walfs logged that $NAME2 is complete" grep -qF "base backup $NAME2 is complete: its sentinel is stored" "$LOG"
has_sentinel() { rgw_s3 head "$BUCKET" "pgdb/basebackups_005/${1}_backup_stop_sentinel.json" >/dev/null; }
check "the sentinel of $NAME2 is in the bucket" has_sentinel "$NAME2"
listed=1
for _ in $(seq 50); do ls "$BB" 2>/dev/null | grep -qx "$NAME2" && { listed=0; break; }; nap 0.1; done
check "ls basebackups_005 shows $NAME2" [ $listed -eq 0 ]
check "LATEST points to $NAME2" [ "$(readlink "$BB/LATEST")" == "$NAME2" ]
# Given up on, a mkdir may never have reached walfs: the new push is made
# again here, so that removing it is tested either way.
for label in "${!M_PID[@]}"; do wait "${M_PID[$label]}" 2>/dev/null; done
[[ -d $BB/third ]] || { echo "# basebackups_005/third does not exist after the measurements: made again"; as_pg mkdir "$BB/third"; }
check "the new push can be removed with rmdir" as_pg rmdir "$BB/third"
check "... and no longer lists" ls_lacks "$BB" third
check "the push left in progress can be removed (rm -rf)" as_pg rm -rf "$BB/other"
gone=1
for _ in $(seq 100); do
    [[ -z $(rgw_s3 ls "$BUCKET" "pgdb/basebackups_005/$NAME_OTHER" 2>&1) ]] && { gone=0; break; }
    nap 0.1
done
check "... and its uploads (the lease of $NAME_OTHER) are deleted from the bucket" [ $gone -eq 0 ]
check "walfs unmounts cleanly" walfs_umount "$MNT"
echo "# took $SECONDS s"
t_summary
