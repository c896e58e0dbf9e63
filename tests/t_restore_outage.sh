#!/bin/bash
# An S3 outage in the middle of an archive recovery must not end it.
#
# PostgreSQL takes any failed restore_command for "not in the archive" and,
# in archive recovery (recovery.signal), promotes at that point: everything
# after it is lost to the recovered server.  Here a primary archives 13
# segments through one mount; a server recovers from a base backup with
#   restore_command = 'cp MNT/wal_005/%f %p'
# through a second mount with --deadline=10, and when it asks for a chosen
# segment, RGW goes away for 35 s (over three times the deadline):
#   round 1: radosgw paused (SIGSTOP: connections hang)
#   round 2: radosgw stopped (connection refused), then started again
# Each recovered server must reach the primary's final results on timeline 2,
# having switched from timeline 1 after the primary's last segment; walfs's log
# must show it waited (so the outage really hit a read) and that it ended.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source tests/lib/pg.sh

t_require lzop
t_scratch outage
WATCHER_PID=
cleanup() {
    [[ -n $WATCHER_PID ]] && kill "$WATCHER_PID" 2>/dev/null
    rgw_resume >/dev/null 2>&1
    PG_KEEP=1 pg_cleanup >/dev/null 2>&1
    walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"
}
trap cleanup EXIT
fail_out() { not_ok "$1"; t_summary; exit 1; }

DEADLINE=10
OUTAGE=35
BUCKET=walfs-outage
rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7486}" || fail_out "RGW started"
rgw_s3 mb "$BUCKET" >/dev/null
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
ARCH_MNT=$SCRATCH/mnt-archive
REST_MNT=$SCRATCH/mnt-restore
walfs_mount "$ARCH_MNT" "s3://$BUCKET/pgdb" --endpoint="$RGW_ENDPOINT" --addressing=path ||
    fail_out "archive mount"
walfs_mount "$REST_MNT" "s3://$BUCKET/pgdb" --endpoint="$RGW_ENDPOINT" --addressing=path \
    --deadline=$DEADLINE --connect-timeout=2 --low-speed-time=3 || fail_out "restore mount"

# ---------------------------------------------------------------- the primary
PORT0=$((21000 + RANDOM % 8000))
PG_ARCHIVE_COMMAND="cp %p $ARCH_MNT/wal_005/%f"
pg_init primary "$(pg_free_port "$PORT0")" && pg_start primary && pg_make_schema primary &&
    pg_load primary 200 >/dev/null || fail_out "primary archiving through the mount"
BASE=$SCRATCH/base
pg_basebackup_local primary "$BASE" || fail_out "base backup"
segs=()
for i in $(seq 13); do
    pg_load primary 150 >/dev/null
    segs+=("$(pg_switch_wal primary)")
done
check "the primary archived 13 segments after the base backup (${segs[0]}..${segs[12]})" \
    [ -n "${segs[12]}" ]
expected=$(pg_results primary)
last_lsn=$(pg_psql primary "SELECT pg_current_wal_lsn()")
pg_stop primary

# ------------------------------------------------------ one recovery, one outage
recover_through_outage() { # label name segment-index outage-kind
    local label=$1 name=$2 chosen=${segs[$3]} kind=$4
    local flag=$SCRATCH/$name.asked log
    log=$(walfs_log "$REST_MNT")
    local waits_before
    waits_before=$(grep -c "waiting for it" "$log")
    # restore_command stops at the chosen segment until the outage has begun.
    local script=$SCRATCH/$name-restore.sh
    cat >"$script" <<SH
#!/bin/sh
if [ "\$1" = "$chosen" ] && [ ! -e "$flag" ]; then
    touch "$flag"
    i=0; while [ ! -e "$flag.ack" ] && [ \$i -lt 600 ]; do sleep 0.1; i=\$((i + 1)); done
fi
exec cp "$REST_MNT/wal_005/\$1" "\$2"
SH
    chmod 0755 "$script"
    chmod 0777 "$SCRATCH"
    (   for _ in $(seq 1200); do [ -e "$flag" ] && break; sleep 0.1; done
        if [ "$kind" == paused ]; then rgw_pause; else rgw_kill_gateway TERM; fi
        date +%s >"$flag.start"
        touch "$flag.ack"
        sleep "$OUTAGE"
        if [ "$kind" == paused ]; then rgw_resume; else rgw_restart_gateway; fi
        date +%s >"$flag.end"
    ) >"$SCRATCH/$name.watcher.log" 2>&1 &
    WATCHER_PID=$!
    local copy=$SCRATCH/base-$name
    cp -a "$BASE" "$copy"
    PG_TIMEOUT=$((OUTAGE + 180)) pg_recover "$name" "$(pg_free_port $((PORT0 + 1)))" "$copy" \
        "$script %f %p"
    local rc=$?
    wait "$WATCHER_PID"; WATCHER_PID=
    check "[$label] the outage began when recovery asked for $chosen" [ -s "$flag.start" ]
    check "[$label] it lasted ${OUTAGE} s, over three times --deadline=$DEADLINE" \
        [ -s "$flag.end" ] && [ $(( $(cat "$flag.end") - $(cat "$flag.start") )) -ge $((3 * DEADLINE)) ]
    check "[$label] archive recovery ended (promoted)" [ $rc -eq 0 ]
    local got tli hist
    got=$(pg_results "$name")
    check "[$label] the recovered server has the primary's results ($expected, got $got)" \
        [ "$got" == "$expected" ]
    tli=$(pg_timeline "$name")
    check "[$label] it promoted once, onto timeline 2 (got $tli)" [ "$tli" == 2 ]
    hist=$(cut -f2 "$PG_SCRATCH/$name/pg_wal/00000002.history" 2>/dev/null | head -n 1)
    check "[$label] its timeline history leaves timeline 1 after the primary's last WAL ($hist >= $last_lsn)" \
        [ "$(pg_psql "$name" "SELECT '${hist:-0/0}'::pg_lsn >= '$last_lsn'::pg_lsn")" == t ]
    check "[$label] walfs logged that the read waited for the archive" \
        [ "$(grep -c "waiting for it" "$log")" -gt "$waits_before" ]
    check "[$label] ... and that the archive answered again" grep -q "answered again" "$log"
    local eio
    eio=$(grep -c "Input/output error" "$PG_SCRATCH/$name.log")
    check "[$label] no restore_command failed with an I/O error ($eio)" [ "$eio" -eq 0 ]
    pg_stop "$name"
}

recover_through_outage "RGW paused" rec_paused 5 paused
recover_through_outage "RGW stopped" rec_stopped 8 stopped

check "the restore mount unmounts cleanly" walfs_umount "$REST_MNT"
check "the archive mount unmounts cleanly" walfs_umount "$ARCH_MNT"
t_summary
