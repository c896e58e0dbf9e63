#!/usr/bin/env bash
# tests/t_pg_harness.sh -- self-test of tests/lib/pg.sh: the whole PostgreSQL
# archive / base backup / recovery / standby scenario, against a directory that
# stands in for walfs's <mount>/wal_005.
#
# Usage (as root):  tests/t_pg_harness.sh [ARCHIVE_DIR]
#   ARCHIVE_DIR   where WAL is archived (default: a fresh plain directory in the
#                 scratch dir).  To run the scenario through walfs pass the
#                 mount's wal_005 directory, e.g. /mnt/pg/wal_005.  It must be
#                 empty (a fresh prefix), and writable by the postgres user.
# Environment:
#   PG_ARCHIVE_COMMAND  default: cp %p ARCHIVE_DIR/%f
#   PG_RESTORE_COMMAND  default: cp ARCHIVE_DIR/%f %p
#   PG_ROWS             rows per table per load round (default 500)
#   PG_KEEP=1           keep the scratch dir; other knobs: see tests/lib/pg.sh
# Output: TAP-like "ok - ..." / "not ok - ..." lines, then "P passed, F failed";
# exit status 0 only if everything passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/pg.sh
. "$here/lib/pg.sh"

if [ "$(id -u)" -ne 0 ]; then echo "t_pg_harness: must run as root" >&2; exit 2; fi

t0=$SECONDS
PG_SCRATCH=$(mktemp -d /tmp/pgh.XXXXXX)
export PG_SCRATCH
trap pg_cleanup EXIT
trap 'exit 130' INT TERM

ARCHIVE=${1:-}
if [ -z "$ARCHIVE" ]; then
    ARCHIVE=$PG_SCRATCH/wal_005
    mkdir -p "$ARCHIVE"
    chown postgres: "$PG_SCRATCH" "$ARCHIVE"
fi
if [ ! -d "$ARCHIVE" ]; then echo "t_pg_harness: $ARCHIVE is not a directory" >&2; exit 2; fi
if [ -n "$(ls -A "$ARCHIVE")" ]; then
    echo "t_pg_harness: $ARCHIVE is not empty (old WAL would confuse recovery)" >&2; exit 2
fi
PG_ARCHIVE_COMMAND=${PG_ARCHIVE_COMMAND:-"cp %p $ARCHIVE/%f"}
PG_RESTORE_COMMAND=${PG_RESTORE_COMMAND:-"cp $ARCHIVE/%f %p"}
ROWS=${PG_ROWS:-500}

passed=0 failed=0
report() { # report STATUS DESCRIPTION
    if [ "$1" -eq 0 ]; then
        passed=$((passed + 1)); echo "ok - $2"
    else
        failed=$((failed + 1)); echo "not ok - $2"
    fi
}

P_PORT=$(pg_free_port $((20000 + RANDOM % 10000)))  # random start: parallel runs
primary_ok=0 backup_ok=0 expected=''

# 1. primary with archiving; schema; 4 rounds of load + switch, each archived.
t_primary() {
    local seg
    pg_init primary "$P_PORT" || return 1
    pg_start primary || return 1
    pg_make_schema primary || return 1
    for _ in 1 2 3 4; do
        pg_load primary "$ROWS" || return 1
        seg=$(pg_switch_wal primary) || return 1
        segs="$segs $seg"
    done
}
segs=''
if t_primary; then primary_ok=1; fi
report $((1 - primary_ok)) "primary archives 4 switched segments:${segs:- none}"

# 2. everything the primary marked .done is in ARCHIVE, byte for byte.
t_archive() {
    local n
    [ "$primary_ok" = 1 ] || { echo "# skipped: no primary" >&2; return 1; }
    n=$(pg_check_archive primary "$ARCHIVE") || return 1
    echo "# $n archived files identical (cmp)"
}
st=0; t_archive || st=1
report "$st" "every .done file in the primary's pg_wal is identical in the archive"

# 3. base backup, then more load + switches; archive still identical.
t_backup() {
    local n b
    [ "$primary_ok" = 1 ] || { echo "# skipped: no primary" >&2; return 1; }
    pg_basebackup_local primary "$PG_SCRATCH/backup" || return 1
    [ -f "$PG_SCRATCH/backup/backup_label" ] || { echo "# no backup_label" >&2; return 1; }
    for _ in 1 2; do
        pg_load primary "$ROWS" || return 1
        pg_switch_wal primary >/dev/null || return 1
    done
    expected=$(pg_results primary) || return 1
    n=$(pg_check_archive primary "$ARCHIVE") || return 1
    for b in "$ARCHIVE"/*.backup; do [ -f "$b" ] && break; done
    [ -f "$b" ] || { echo "# no .backup file archived" >&2; return 1; }
    echo "# primary results: $expected; $n archived files identical"
}
if t_backup; then backup_ok=1; fi
report $((1 - backup_ok)) "base backup (-X none) + 2 more archived switches; archive still identical"

# 4. archive recovery from the base backup: promotes and matches the primary.
t_recover() {
    local got tli
    [ "$backup_ok" = 1 ] || { echo "# skipped: no base backup" >&2; return 1; }
    pg_recover restored "$(pg_free_port $((P_PORT + 1)))" "$PG_SCRATCH/backup" "$PG_RESTORE_COMMAND" || return 1
    got=$(pg_results restored) || return 1
    tli=$(pg_timeline restored) || return 1
    echo "# restored: results $got, timeline $tli"
    [ "$got" = "$expected" ] || { echo "# expected '$expected', got '$got'" >&2; return 1; }
    [ "$tli" -gt 1 ] || { echo "# still on timeline $tli after promotion" >&2; return 1; }
    pg_psql restored "CREATE TABLE after_promotion (x int); INSERT INTO after_promotion VALUES (1)" || return 1
}
st=0; t_recover || st=1
report "$st" "recovery from base backup + archive promotes with the primary's results${expected:+ ($expected)}"

# 5. a standby built from the same backup replays the archive to the same point.
t_standby() {
    [ "$backup_ok" = 1 ] || { echo "# skipped: no base backup" >&2; return 1; }
    pg_standby standby "$(pg_free_port $((P_PORT + 2)))" "$PG_SCRATCH/backup" "$PG_RESTORE_COMMAND" || return 1
    pg_wait_replay standby "$expected" || return 1
    [ "$(pg_psql standby 'SELECT pg_is_in_recovery()')" = t ] || { echo "# standby left recovery" >&2; return 1; }
}
st=0; t_standby || st=1
report "$st" "standby from the base backup replays the archive to the primary's results"

echo "# runtime $((SECONDS - t0))s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
