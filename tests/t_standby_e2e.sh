#!/bin/bash
# The user's scenario end to end, PostgreSQL 15 + walfs + Ceph RGW:
#  1. a primary writes and archives through the mount
#       archive_command = 'cp %p MNT/wal_005/%f'
#  2. an online base backup of it, taken while it keeps writing, is pushed into
#     the bucket in WAL-E's format (tests/lib/pg_wale_backup.sh: one psql
#     session with pg_backup_start / copy / pg_backup_stop, sentinel last);
#  3. a hot standby is built from the mount with
#       rsync -a MNT/basebackups_005/LATEST/ DIR/
#     and restore_command = 'cp MNT/wal_005/%f %p'; its read-only queries
#     return what the primary had once the primary's WAL switch is archived,
#     and keep following further writes;
#  4. the primary goes away; `pg_ctl promote` makes the standby a primary on
#     timeline 2 whose own archive_command (same mount, same prefix) archives
#     00000002.history and timeline-2 segments;
#  5. a third server restored from the same backup with
#     recovery_target_timeline = 'latest' follows timeline 2 and ends with the
#     promoted server's results.
#
# What the restorer does by hand after `rsync -a MNT/basebackups_005/LATEST/ DIR/`
# (WAL-E backups deliberately lack these; wal-e-format.md 2.1, 2.6):
#   * run rsync as root so the tar's owners are kept, then chown -R postgres DIR
#     and chmod 0700 DIR (PostgreSQL refuses a group/world-readable data dir);
#   * mkdir DIR/pg_wal/archive_status (pg_wal is archived as an empty dir);
#   * write postgresql.conf, pg_hba.conf, pg_ident.conf (the top-level config
#     files are excluded; postgresql.auto.conf comes with the backup): port,
#     listen/socket settings, hot_standby = on, max_connections & co. at least
#     the primary's, restore_command = 'cp MNT/wal_005/%f %p', and, so that a
#     promoted server archives too, archive_mode = on +
#     archive_command = 'cp %p MNT/wal_005/%f';
#   * touch DIR/standby.signal (a standby that keeps fetching WAL) or
#     DIR/recovery.signal (archive recovery to the end of the archive, then
#     promotion); recovery_target_timeline = 'latest' (the default) follows a
#     promoted standby's timeline through its .history file;
#   * backup_label is already in DIR (the backup's last partition); do not
#     remove it, it tells PostgreSQL where replay must start.
# pg.sh's pg_standby / pg_recover do the mkdir, chown/chmod, signal file and
# postgresql.auto.conf settings; the config files are written below.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source tests/lib/pg.sh
source tests/lib/pg_wale_backup.sh

t_require rsync lzop
t_scratch sb
LOADER_PID=
cleanup() {
    [[ -n $LOADER_PID ]] && { touch "$SCRATCH/stop-load"; wait "$LOADER_PID" 2>/dev/null; }
    PG_KEEP=1 pg_cleanup >/dev/null 2>&1   # servers read through the mount: stop them first
    walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"
}
trap cleanup EXIT

BUCKET=walfs-sb
MNT=$SCRATCH/mnt
rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7482}" || { echo "RGW did not start"; exit 1; }
rgw_s3 mb "$BUCKET" >/dev/null
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
walfs_mount "$MNT" "s3://$BUCKET/pgdb" --endpoint="$RGW_ENDPOINT" --addressing=path || { echo "mount failed"; exit 1; }
ARCHIVE_CMD="cp %p $MNT/wal_005/%f"
RESTORE_CMD="cp $MNT/wal_005/%f %p"
PORT0=$((20000 + RANDOM % 10000))
fail_out() { not_ok "$1"; t_summary; exit 1; }

# WAL-E leaves out the top-level configuration files: the restorer writes them.
write_config_files() { # DIR
    printf "max_connections = 100\nshared_buffers = 16MB\ndynamic_shared_memory_type = posix\nwal_level = replica\n" >"$1/postgresql.conf"
    printf "local all all trust\nhost all all 127.0.0.1/32 trust\n" >"$1/pg_hba.conf"
    : >"$1/pg_ident.conf"
}

# ------------------------------------------------ 1. primary archiving via the mount
PG_ARCHIVE_COMMAND=$ARCHIVE_CMD
pg_init primary "$(pg_free_port "$PORT0")" && pg_start primary && pg_make_schema primary &&
    pg_load primary 1000 || fail_out "primary started with archive_command through the mount"
seg=$(pg_switch_wal primary)
check "primary archives $seg through the mount" [ -n "$seg" -a -e "$MNT/wal_005/$seg" ]

# ------------------------------------------------ 2. online base backup, WAL-E style
# A writer keeps inserting during the backup (bounded: at most 300 rounds).
( for _ in $(seq 300); do
      [ -e "$SCRATCH/stop-load" ] && break
      pg_load primary 50 >/dev/null 2>&1; sleep 0.05
  done ) &
LOADER_PID=$!
STAGE=$SCRATCH/stage
BNAME=$(pg_wale_backup primary "$STAGE/pgdb")
rc=$?
touch "$SCRATCH/stop-load"; wait "$LOADER_PID"; LOADER_PID=
check "online base backup in WAL-E's format while the primary writes ($BNAME)" [ $rc -eq 0 -a -n "$BNAME" ]
[[ -n $BNAME ]] || fail_out "base backup"
check "its name is base_<start segment>_<decimal offset>" grep -qE '^base_[0-9A-F]{24}_[0-9]{8}$' <<<"$BNAME"
last=$(ls "$STAGE/pgdb/basebackups_005/$BNAME/tar_partitions" | tail -n 1)
check "the last partition holds backup_label only" \
    [ "$(lzop -dc "$STAGE/pgdb/basebackups_005/$BNAME/tar_partitions/$last" | tar -tf -)" == backup_label ]
wale_upload "$STAGE/pgdb" "$BUCKET" pgdb "$BNAME"
check "backup uploaded into the bucket, sentinel last" [ $? -eq 0 ]
seen=1
for _ in $(seq 50); do
    [ "$(readlink "$MNT/basebackups_005/LATEST" 2>/dev/null)" == "$BNAME" ] && { seen=0; break; }
    sleep 0.2
done
check "the mount shows it as basebackups_005/LATEST" [ $seen -eq 0 ]

pg_load primary 500 >/dev/null
pg_switch_wal primary >/dev/null
expected=$(pg_results primary)

# ------------------------------------------------ 3. hot standby from the mount
BASE=$SCRATCH/base-standby
check "rsync -a MNT/basebackups_005/LATEST/ DIR/" rsync -a "$MNT/basebackups_005/LATEST/" "$BASE/"
check "the copy has PG_VERSION and backup_label" [ -f "$BASE/PG_VERSION" -a -f "$BASE/backup_label" ]
write_config_files "$BASE"
if pg_standby standby "$(pg_free_port $((PORT0 + 1)))" "$BASE" "$RESTORE_CMD" \
        "archive_mode = on" "archive_command = '$ARCHIVE_CMD'"; then
    ok "hot standby built from the rsync'd backup accepts read-only queries"
else
    fail_out "hot standby built from the rsync'd backup accepts read-only queries"
fi
check "standby replays to the primary's results after its WAL switch ($expected)" pg_wait_replay standby "$expected"
# refused because the server is read-only, not because psql failed to connect
read_only_refused() {
    local out
    out=$(pg_psql "$@" 2>&1) && { echo "# the statement succeeded"; return 1; }
    grep -q "read-only transaction" <<<"$out" || { echo "# failed, but not as read-only: ${out:0:200}"; return 1; }
}
check "standby is read-only" read_only_refused standby "CREATE TABLE x (i int)"
for round in 1 2; do
    pg_load primary 300 >/dev/null
    pg_switch_wal primary >/dev/null
    expected=$(pg_results primary)
    check "more writes on the primary show up on the standby (round $round: $expected)" pg_wait_replay standby "$expected"
done

# ------------------------------------------------ 4. failover: promote the standby
pg_stop primary
SDIR=$PG_SCRATCH/standby
_pg_as pg_ctl -D "$SDIR" -w -t 60 promote >/dev/null 2>&1
check "pg_ctl promote succeeds" [ $? -eq 0 ]
check "the promoted server leaves recovery" _pg_wait_sql standby "SELECT pg_is_in_recovery()" f "promotion"
tli=$(pg_timeline standby)
check "the promoted server is on timeline 2 (got $tli)" [ "$tli" == 2 ]
pg_psql standby "CREATE TABLE after_promotion (x int); INSERT INTO after_promotion VALUES (42)" >/dev/null
pg_load standby 700 >/dev/null
seg2=$(pg_switch_wal standby)
check "the promoted server archives its segments through the mount ($seg2)" [ -n "$seg2" ]
hist=1
for _ in $(seq 50); do
    ls "$MNT/wal_005" | grep -qx 00000002.history && { hist=0; break; }
    sleep 0.2
done
check "00000002.history is in ls MNT/wal_005" [ $hist -eq 0 ]
check "a timeline-2 segment is in ls MNT/wal_005 ($seg2)" bash -c "ls '$MNT/wal_005' | grep -qx '$seg2' && [[ '$seg2' == 00000002* ]]"
quiet() { "$@" >/dev/null; }
check "... stored as an lzop object in the bucket" quiet rgw_s3 head "$BUCKET" "pgdb/wal_005/$seg2.lzo"
final=$(pg_results standby)

# ------------------------------------------------ 5. a third server follows timeline 2
BASE3=$SCRATCH/base-third
check "rsync of LATEST for a third server" rsync -a "$MNT/basebackups_005/LATEST/" "$BASE3/"
write_config_files "$BASE3"
if pg_recover third "$(pg_free_port $((PORT0 + 2)))" "$BASE3" "$RESTORE_CMD" "recovery_target_timeline = 'latest'"; then
    ok "third server recovers from the same backup to the end of the archive"
    tli3=$(pg_timeline third)
    check "third server followed the new timeline (timeline $tli3 >= 2)" [ "${tli3:-0}" -ge 2 ]
    got=$(pg_results third)
    check "third server's results equal the promoted server's ($final, got $got)" [ -n "$got" -a "$got" == "$final" ]
    check "third server has the table created after promotion" [ "$(pg_psql third 'SELECT x FROM after_promotion')" == 42 ]
else
    not_ok "third server recovers from the same backup to the end of the archive"
fi
pg_stop third; pg_stop standby
check "walfs unmounts cleanly" walfs_umount "$MNT"
t_summary
