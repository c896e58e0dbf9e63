#!/bin/bash
# walfs as README runs it: daemonized (no -f), as the postgres user, on the
# local-directory backend.
#  1. no --cache-dir, no --log-file, HOME without ~/.cache: the daemon creates
#     ~/.cache/walfs (mode 0700), says on stderr where it logs (no /dev/log
#     here: CACHE_DIR/walfs.log), logs "serving" there, and its background
#     threads survived daemonizing (thread count vs a foreground mount);
#  2. --log-file=PATH: the log is appended there, nothing in the cache dir;
#  3. 10 mount/unmount cycles: each daemon exits within 2 s of fusermount3 -u;
#  4. restore read-ahead: cp of segment 1 out of a fresh mount fetches the next
#     --prefetch (4) segments into CACHE_DIR/objects in the background;
#  5. pg_basebackup of a ~40 MB PostgreSQL 15 cluster into a mount with
#     --spool-size=2 (the backup > 10x the spool): exits 0, lists as base_*,
#     and the daemon unmounts within 2 s afterwards;
#  6. SIGTERM to an idle daemon: it exits and the mount is gone within 2 s.
#
# Knobs: WALFS_BIN (default build/release/walfs), DAEMON_PG_PORT (first port
# probed, default 25432), BB_TIMEOUT (pg_basebackup bound, default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
export WALFS_MODE=daemon
source tests/lib/walfs.sh
source tests/lib/pg.sh

t_require fusermount3 setpriv pgbench
t_scratch daemon
# What the daemon picks by itself must come from HOME alone.
unset XDG_CACHE_HOME WALFS_CACHE_DIR WALE_S3_PREFIX WALE_FILE_PREFIX WALFS_LOG_LEVEL

# Mounts made here without tests/lib/walfs.sh (it always passes --log-file).
DIRECT_MNTS=() DIRECT_PIDS=()
cleanup() {
    PG_KEEP=1 pg_cleanup >/dev/null 2>&1 # the server archives through a mount: stop it first
    local i
    for i in "${!DIRECT_MNTS[@]}"; do
        grep -qs " ${DIRECT_MNTS[$i]} fuse" /proc/mounts && fusermount3 -uz "${DIRECT_MNTS[$i]}" 2>/dev/null
        kill -0 "${DIRECT_PIDS[$i]}" 2>/dev/null && { sleep 0.5; kill "${DIRECT_PIDS[$i]}" 2>/dev/null; }
    done
    walfs_cleanup
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

BB_TIMEOUT=${BB_TIMEOUT:-300}
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$SCRATCH" "$@"; }
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
mounted() { grep -qs " $1 fuse" /proc/mounts; }
threads() { ls "/proc/$1/task" 2>/dev/null | wc -l; }
# walfs's own long-lived threads by name (common/worker.h names them
# walfs-*; FUSE's request threads keep the process name and come and go
# with the load, so only these two counts can be compared).
bg_threads() { cat /proc/"$1"/task/*/comm 2>/dev/null | grep -c '^walfs-'; }
bg_names() { cat /proc/"$1"/task/*/comm 2>/dev/null | grep '^walfs-' | sort | uniq -c | tr -s ' \n' ' '; }
indent() { sed 's/^/#   /'; }


# direct_mount MNT HOME OUT [walfs options...]: README's command, as postgres,
# stdout+stderr of the starting walfs in OUT; sets DPID.
direct_mount() {
    local mnt=$1 home=$2 out=$3 rc=0 i; shift 3
    _walfs_prepare
    mkdir -p "$mnt" "$home"
    chown "$WALFS_USER" "$mnt" "$home"
    DPID=
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:log_path=$out.sanitizer" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-}:log_path=$out.sanitizer" \
    setpriv --reuid="$WALFS_USER" --regid="$WALFS_USER" --init-groups \
        env HOME="$home" "$WALFS_BIN" -o allow_other,default_permissions "$@" "$mnt" >"$out" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]] || ! mounted "$mnt"; then
        echo "# walfs did not mount $mnt (exit $rc):"; indent <"$out"
        return 1
    fi
    for ((i = 0; i < 50; i++)); do
        DPID=$(_walfs_find_daemon "$mnt") && break
        sleep 0.1
    done
    [[ -n $DPID ]] || { echo "# no daemon process found for $mnt"; return 1; }
    DIRECT_MNTS+=("$mnt") DIRECT_PIDS+=("$DPID")
}
# Has PID a thread that is not a zombie?  A daemon is reparented to PID 1,
# which reaps it when it gets round to it (this machine's init every ~2 s),
# so kill -0 would time the reaper: a zombie has exited.
alive() {
    local st
    for st in /proc/"$1"/task/*/stat; do
        [[ $(sed 's/.*) //' "$st" 2>/dev/null | cut -c1) == [^ZX] ]] && return 0
    done
    return 1
}
# wait_gone PID SECONDS: 0 once the process has exited, within the bound.
wait_gone() {
    local pid=$1 limit=$2 t0
    t0=$(now)
    while alive "$pid"; do
        le "$(elapsed "$t0" "$(now)")" "$limit" || return 1
        sleep 0.02
    done
}
# direct_umount MNT PID: fusermount3 -u, then wait (30 s at most); prints the
# seconds from fusermount3 -u to the daemon's exit.
direct_umount() {
    local mnt=$1 pid=$2 t0
    t0=$(now)
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null
    wait_gone "$pid" 30 || { echo 999; kill -9 "$pid" 2>/dev/null; return 1; }
    elapsed "$t0" "$(now)"
}
# settled_threads PID: the thread count once it stops changing (3 s at most).
settled_threads() {
    local pid=$1 n prev=-1 i
    for ((i = 0; i < 15; i++)); do
        n=$(threads "$pid")
        [[ $n == "$prev" ]] && break
        prev=$n
        sleep 0.2
    done
    echo "$n"
}

ARCHIVE=$SCRATCH/archive
mkdir -p "$ARCHIVE" && chown postgres: "$ARCHIVE"
LOGS=$SCRATCH/logs
mkdir -p "$LOGS" && chown postgres: "$LOGS"

# ------------------------------------------------- 1. README's mode, defaults
MNT1=$SCRATCH/mnt1
HOME1=$SCRATCH/home1
CACHE1=$HOME1/.cache/walfs
mkdir -p "$HOME1"
check "[readme] the fresh HOME has no .cache" [ ! -e "$HOME1/.cache" ]
if direct_mount "$MNT1" "$HOME1" "$LOGS/readme.out" "file://$ARCHIVE"; then
    PID1=$DPID
    ok "[readme] sudo -u postgres walfs file://ARCHIVE MNT (no -f, no --cache-dir, no --log-file) mounts"
    check "[readme] the daemon created \$HOME/.cache/walfs" [ -d "$CACHE1" ]
    check "[readme] ... with mode 700 (got $(stat -c %a "$CACHE1" 2>/dev/null))" [ "$(stat -c %a "$CACHE1" 2>/dev/null)" == 700 ]
    check "[readme] ... owned by postgres" [ "$(stat -c %U "$CACHE1" 2>/dev/null)" == postgres ]
    check "[readme] ... and the missing parent \$HOME/.cache with mode 700 (got $(stat -c %a "$HOME1/.cache" 2>/dev/null))" \
        [ "$(stat -c %a "$HOME1/.cache" 2>/dev/null)" == 700 ]
    echo "# walfs said: $(head -c 300 "$LOGS/readme.out")"
    check "[readme] stderr said it logs to $CACHE1/walfs.log" grep -qF "logging to $CACHE1/walfs.log" "$LOGS/readme.out"
    for _ in $(seq 50); do grep -qs "serving file://$ARCHIVE at $MNT1" "$CACHE1/walfs.log" && break; sleep 0.1; done
    check "[readme] CACHE_DIR/walfs.log has the 'serving' line" grep -qF "serving file://$ARCHIVE at $MNT1" "$CACHE1/walfs.log"
    ls "$MNT1" "$MNT1/wal_005" "$MNT1/basebackups_005" >/dev/null 2>&1
    DAEMON_THREADS=$(settled_threads "$PID1")
    DAEMON_BG=$(bg_threads "$PID1"); DAEMON_BG_NAMES=$(bg_names "$PID1")
    # The same archive in the foreground, touched the same way.
    MNTF=$SCRATCH/mntf
    if WALFS_MODE=foreground walfs_mount "$MNTF" "file://$ARCHIVE"; then
        ls "$MNTF" "$MNTF/wal_005" "$MNTF/basebackups_005" >/dev/null 2>&1
        FG_THREADS=$(settled_threads "$(walfs_pid "$MNTF")")
        FG_BG=$(bg_threads "$(walfs_pid "$MNTF")"); FG_BG_NAMES=$(bg_names "$(walfs_pid "$MNTF")")
        WALFS_MODE=foreground walfs_umount "$MNTF" || not_ok "[readme] the foreground mount unmounts cleanly"
    else
        not_ok "[readme] foreground mount for the thread count"
        FG_THREADS=0 FG_BG=0 FG_BG_NAMES=
    fi
    echo "# threads at rest: daemon $DAEMON_THREADS, foreground $FG_THREADS"
    check "[readme] the daemon has its background threads: $DAEMON_THREADS threads (at least 6)" [ "$DAEMON_THREADS" -ge 6 ]
    echo "# background threads: daemon $DAEMON_BG_NAMES; foreground $FG_BG_NAMES"
    check "[readme] ... the foreground's background threads, by name ($DAEMON_BG of $FG_BG; at least 4)" \
        [ "$DAEMON_BG" -ge 4 -a "$DAEMON_BG_NAMES" = "$FG_BG_NAMES" ]
    s=$(direct_umount "$MNT1" "$PID1"); rc=$?
    check "[readme] fusermount3 -u: the daemon exits (${s}s)" [ $rc -eq 0 ]
    check "[readme] ... and logged 'walfs unmounted from $MNT1'" grep -qF "walfs unmounted from $MNT1" "$CACHE1/walfs.log"
    check "[readme] ... no sanitizer report" walfs_log_clean "$LOGS/readme.out"
else
    not_ok "[readme] sudo -u postgres walfs file://ARCHIVE MNT (no -f, no --cache-dir, no --log-file) mounts"
fi

# -------------------------------------------------------- 2. --log-file=PATH
MNT2=$SCRATCH/mnt2
HOME2=$SCRATCH/home2
LOG2=$LOGS/explicit.log
echo "line written before the mount" >"$LOG2" && chown postgres: "$LOG2"
if direct_mount "$MNT2" "$HOME2" "$LOGS/explicit.out" "file://$ARCHIVE" --log-file="$LOG2"; then
    PID2=$DPID
    ok "[log-file] mount with --log-file=$LOG2"
    for _ in $(seq 50); do grep -qs "serving file://$ARCHIVE at $MNT2" "$LOG2" && break; sleep 0.1; done
    check "[log-file] the 'serving' line is in $LOG2" grep -qF "serving file://$ARCHIVE at $MNT2" "$LOG2"
    check "[log-file] ... appended (the earlier line is still there)" grep -qx "line written before the mount" "$LOG2"
    check "[log-file] stderr does not claim another log" bash -c "! grep -q 'logging to' '$LOGS/explicit.out'"
    check "[log-file] no CACHE_DIR/walfs.log" [ ! -e "$HOME2/.cache/walfs/walfs.log" ]
    # A refused operation logs a line while serving.
    as_pg mkdir "$MNT2/wal_005/x" 2>/dev/null
    sleep 0.2
    s=$(direct_umount "$MNT2" "$PID2"); rc=$?
    check "[log-file] the daemon exits on unmount (${s}s)" [ $rc -eq 0 ]
    check "[log-file] 'walfs unmounted from $MNT2' is in $LOG2" grep -qF "walfs unmounted from $MNT2" "$LOG2"
    echo "# $LOG2:"; indent <"$LOG2" | head -n 8
    check "[log-file] ... no sanitizer report" walfs_log_clean "$LOG2"
else
    not_ok "[log-file] mount with --log-file=$LOG2"
fi

# -------------------------------------------------------- 3. unmount cycles
MNT3=$SCRATCH/mnt3
max=0 fails=0 times=()
for i in $(seq 10); do
    if ! walfs_mount "$MNT3" "file://$ARCHIVE"; then fails=$((fails + 1)); continue; fi
    ls "$MNT3/wal_005" >/dev/null
    pid=$(walfs_pid "$MNT3")
    t0=$(now)
    fusermount3 -u "$MNT3"
    if wait_gone "$pid" 2; then
        s=$(elapsed "$t0" "$(now)")
    else
        s=">2"; fails=$((fails + 1))
        echo "# cycle $i: daemon $pid still running 2 s after fusermount3 -u"
        tail -n 5 "$(walfs_log "$MNT3")" | indent
    fi
    times+=("$s")
    [[ $s != ">2" ]] && ! le "$s" "$max" && max=$s
    walfs_umount "$MNT3" || fails=$((fails + 1)) # waits the rest, checks the log
done
echo "# exit after fusermount3 -u, seconds: ${times[*]}"
check "[cycles] 10 mount/unmount cycles, each daemon gone within 2 s of fusermount3 -u (max ${max}s, $fails failures)" \
    [ $fails -eq 0 -a ${#times[@]} -eq 10 ]

# ---------------------------------------------------------- 4. read-ahead
SEGS=$SCRATCH/segs
mkdir -p "$SEGS"
for i in 1 2 3 4 5 6; do
    head -c $((16 * 1024 * 1024)) /dev/urandom >"$SEGS/00000001000000000000000$i"
done
chmod 0644 "$SEGS"/*
MNT4=$SCRATCH/mnt4
if walfs_mount "$MNT4" "file://$ARCHIVE"; then
    okc=0
    for f in "$SEGS"/*; do as_pg cp "$f" "$MNT4/wal_005/${f##*/}" || okc=1; done
    check "[prefetch] 6 segments archived with cp through the mount" [ $okc -eq 0 ]
    check "[prefetch] the archiving mount unmounts cleanly" walfs_umount "$MNT4"
else
    not_ok "[prefetch] archiving mount"
fi
if walfs_mount "$MNT4" "file://$ARCHIVE"; then
    OBJ=$(walfs_cache_dir "$MNT4")/objects
    count() { find "$OBJ" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l; }
    check "[prefetch] the fresh mount's cache is empty ($(count) objects)" [ "$(count)" -eq 0 ]
    as_pg cp "$MNT4/wal_005/000000010000000000000001" "$LOGS/restored1"
    check "[prefetch] cp of segment 1 out of the mount" cmp -s "$LOGS/restored1" "$SEGS/000000010000000000000001"
    t0=$(now)
    for _ in $(seq 100); do [ "$(count)" -ge 5 ] && break; sleep 0.1; done
    n=$(count)
    echo "# objects in $OBJ after $(elapsed "$t0" "$(now)") s: $n"
    check "[prefetch] within 10 s the cache holds segment 1 and the 4 next ($n objects, want at least 5)" [ "$n" -ge 5 ]
    check "[prefetch] segment 6 (beyond --prefetch=4) was not fetched ($n objects)" [ "$n" -le 5 ]
    check "[prefetch] a prefetched segment (5) reads back right" cmp -s "$MNT4/wal_005/000000010000000000000005" "$SEGS/000000010000000000000005"
    check "[prefetch] the mount unmounts cleanly" walfs_umount "$MNT4"
else
    not_ok "[prefetch] fresh mount"
fi

# --------------------------------- 5. a push much bigger than --spool-size
ARCHIVE5=$SCRATCH/archive5
mkdir -p "$ARCHIVE5" && chown postgres: "$ARCHIVE5"
MNT5=$SCRATCH/mnt5
SPOOL_MIB=2
if walfs_mount "$MNT5" "file://$ARCHIVE5" --spool-size=$SPOOL_MIB; then
    ok "[push] mount with --spool-size=$SPOOL_MIB"
    PG_ARCHIVE_COMMAND="cp %p $MNT5/wal_005/%f"
    PORT=$(pg_free_port "${DAEMON_PG_PORT:-25432}")
    if pg_init primary "$PORT" && pg_start primary &&
        _pg_as pgbench -h "$PG_SCRATCH" -p "$PORT" -U postgres -i -s 3 -q postgres >"$SCRATCH/pgbench.out" 2>&1; then
        DBSIZE=$(pg_psql primary "SELECT pg_database_size('postgres')")
        echo "# primary on port $PORT, database postgres: $DBSIZE bytes"
        t0=$(now)
        _pg_as timeout "$BB_TIMEOUT" pg_basebackup -h "$PG_SCRATCH" -p "$PORT" -U postgres \
            -D "$MNT5/basebackups_005/incoming" -Fp -X none --checkpoint=fast >"$SCRATCH/bb.out" 2>&1
        rc=$?
        took=$(elapsed "$t0" "$(now)")
        check "[push] pg_basebackup -D MNT/basebackups_005/incoming -X none exits 0 (rc $rc, ${took}s)" [ $rc -eq 0 ]
        if [ $rc -ne 0 ]; then
            indent <"$SCRATCH/bb.out" | tail -n 6
            tail -n 12 "$(walfs_log "$MNT5")" | indent
        fi
        NAME=$(ls "$MNT5/basebackups_005" 2>/dev/null | grep '^base_' | head -n 1)
        check "[push] ls MNT/basebackups_005 shows a base_* backup (${NAME:-none})" [ -n "$NAME" ]
        SIZE=$(awk -F'\t' -v n="$NAME" '$1 == n { print $3 }' "$MNT5/basebackups_005/.backup-list" 2>/dev/null)
        [[ $SIZE =~ ^[0-9]+$ ]] || SIZE=0
        RATIO=$((SIZE / (SPOOL_MIB * 1048576)))
        echo "# backup $SIZE bytes, spool $((SPOOL_MIB * 1048576)) bytes: ratio $RATIO"
        check "[push] the backup is more than 10x the spool ($SIZE bytes, ${RATIO}x)" [ "$RATIO" -ge 10 ]
        grep -E 'incoming: .*(compressed as they arrived|spool)' "$(walfs_log "$MNT5")" | tail -n 2 | indent
    else
        not_ok "[push] PostgreSQL 15 primary archiving through the mount, pgbench -i -s 3"
        indent <"$SCRATCH/pgbench.out" 2>/dev/null | tail -n 5
    fi
    PG_KEEP=1 pg_stop primary
    pid=$(walfs_pid "$MNT5")
    t0=$(now)
    fusermount3 -u "$MNT5"
    if wait_gone "$pid" 2; then
        ok "[push] after the push the daemon exits within 2 s of fusermount3 -u ($(elapsed "$t0" "$(now)")s)"
    else
        not_ok "[push] after the push the daemon exits within 2 s of fusermount3 -u"
        tail -n 8 "$(walfs_log "$MNT5")" | indent
    fi
    check "[push] ... cleanly (logged, no sanitizer report)" walfs_umount "$MNT5"
else
    not_ok "[push] mount with --spool-size=$SPOOL_MIB"
fi

# ------------------------------------------------------ 6. SIGTERM, idle
MNT6=$SCRATCH/mnt6
if walfs_mount "$MNT6" "file://$ARCHIVE"; then
    ls "$MNT6/wal_005" >/dev/null
    pid=$(walfs_pid "$MNT6")
    t0=$(now)
    kill -TERM "$pid"
    gone=1
    while :; do
        if ! alive "$pid" && ! mounted "$MNT6"; then gone=0; break; fi
        le "$(elapsed "$t0" "$(now)")" 2 || break
        sleep 0.02
    done
    s=$(elapsed "$t0" "$(now)")
    check "[sigterm] SIGTERM: the daemon exits and $MNT6 is unmounted within 2 s (${s}s)" [ $gone -eq 0 ]
    [ $gone -eq 0 ] || { echo "# alive: $(alive "$pid" && echo yes || echo no), mounted: $(mounted "$MNT6" && echo yes || echo no)"; tail -n 5 "$(walfs_log "$MNT6")" | indent; }
    check "[sigterm] ... cleanly (logged 'walfs unmounted from', no sanitizer report)" walfs_umount "$MNT6"
else
    not_ok "[sigterm] mount"
fi

t_summary
