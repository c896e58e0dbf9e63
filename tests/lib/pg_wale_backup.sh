# shellcheck shell=bash
# tests/lib/pg_wale_backup.sh -- online base backups of a running PostgreSQL 15
# primary in WAL-E's format (basebackups_005), for the walfs tests.
#
# Source tests/lib/pg.sh first (and tests/lib/rgw.sh for wale_upload).
#
#   pg_wale_backup NAME OUT [push options...]
#       Back up cluster NAME (started by pg.sh) the way WAL-E's backup-push
#       does, adapted to PostgreSQL 15's non-exclusive backups, in ONE psql
#       session (a non-exclusive backup is aborted when its session ends):
#         1. SELECT version()                         -> extended_version.txt
#         2. pg_walfile_name_offset(pg_backup_start(label, true))
#                                                     -> name base_<SEG>_<OFF8>
#            (OFF8 = decimal byte offset, lpad 8, like WAL-E's SQL)
#         3. \! wale_backup.py push --no-sentinel     -> the data partitions
#         4. pg_backup_stop(true)  (waits until the stop segment is archived,
#            i.e. through archive_command / the mount)
#                                                     -> labelfile, stop LSN
#         5. \! wale_backup.py finish                 -> backup_label as the
#            member "backup_label" in an extra last partition (like the
#            fixture), then the sentinel with the stop segment/offset.
#       OUT is the WAL-E prefix directory (files land in OUT/basebackups_005/);
#       it is created and made writable by postgres.  Prints the backup name.
#       Extra options go to `wale_backup.py push` (e.g. --max-members 200).
#       WALE_FORMAT (gnu|pax|ustar, default pax) picks the tar flavour.
#       Fails (non-zero, message on stderr) unless the sentinel was written.
#       Bounded by PG_TIMEOUT seconds.
#
#   wale_upload OUT BUCKET KEY_PREFIX [BACKUP_NAME...]
#       Upload the named backups (default: all in OUT) to S3 with rgw_s3,
#       each in WAL-E's order: extended_version.txt, the partitions, then the
#       sentinel last -- so a backup is never listed before it is complete,
#       and LATEST (newest sentinel) is the last name given.
#       KEY_PREFIX is the walfs prefix path inside the bucket ("pgdb" for
#       s3://BUCKET/pgdb; "" for the bucket root).
#
# What a restorer must do by hand with a backup copied out of the mount
# (rsync -a MNT/basebackups_005/LATEST/ DATADIR/), because WAL-E never archives
# it (see wal-e-format.md 2.1 and 2.6):
#   * chown -R postgres DATADIR; chmod 0700 DATADIR (rsync as root keeps the
#     tar's uid/gid; PostgreSQL refuses a group/world-accessible data dir);
#   * mkdir DATADIR/pg_wal/archive_status (pg_wal comes back empty);
#   * write postgresql.conf, pg_hba.conf and pg_ident.conf (top-level config
#     files are excluded from WAL-E backups; postgresql.auto.conf is kept);
#   * set restore_command = 'cp MNT/wal_005/%f %p' (and for a standby
#     hot_standby = on, settings >= the primary's max_connections etc.);
#   * touch recovery.signal (archive recovery, then promotion) or
#     standby.signal (stay a standby); backup_label is already in the backup.

_WALE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WALE_BACKUP_PY=${WALE_BACKUP_PY:-$_WALE_LIB_DIR/wale_backup.py}

_wale_err() { printf 'pg_wale_backup.sh: %s\n' "$*" >&2; }

pg_wale_backup() {
    local name=${1:-} out=${2:-} port dir work fmt=${WALE_FORMAT:-pax} bname a
    shift 2 || { _wale_err "usage: pg_wale_backup NAME OUT [push options...]"; return 1; }
    _pg_name_ok "$name" && _pg_scratch || return 1
    port=$(_pg_port "$name") || return 1
    dir=$(_pg_dir "$name")
    case $out in /*) ;; *) out=$PWD/$out ;; esac
    mkdir -p "$out/basebackups_005" && chown postgres: "$out" "$out/basebackups_005" || {
        _wale_err "cannot prepare $out"; return 1; }
    work=$(mktemp -d "$PG_SCRATCH/.pgsh/walebk.XXXXXX") || return 1
    # Scripts the psql session runs with \!  (their arguments are quoted here,
    # the backup's name and the LSN-derived values come in through \setenv).
    {
        printf '#!/bin/sh\nset -e\n'
        printf 'bname="base_${WALE_START_SEG}_${WALE_START_OFF}"\n'
        printf 'python3 %q push --pgdata %q --out %q --name "$bname" --format %q --version-text "$WALE_PGVER" --no-sentinel' \
            "$WALE_BACKUP_PY" "$dir" "$out" "$fmt"
        for a in "$@"; do printf ' %q' "$a"; done
        printf '\nprintf "%%s\\n" "$bname" > %q\n' "$work/name"
    } >"$work/copy.sh"
    {
        printf '#!/bin/sh\nset -e\n'
        printf 'test -s %q\n' "$work/name"
        printf 'bname=$(cat %q)\n' "$work/name"
        printf 'python3 -c "import sys, binascii; sys.stdout.buffer.write(binascii.unhexlify(sys.argv[1]))" "$WALE_LABEL_HEX" > %q\n' "$work/backup_label"
        printf 'python3 %q finish --out %q --name "$bname" --format %q --pgdata %q --backup-label %q --stop-segment "$WALE_STOP_SEG" --stop-offset "$WALE_STOP_OFF"\n' \
            "$WALE_BACKUP_PY" "$out" "$fmt" "$dir" "$work/backup_label"
        printf 'touch %q\n' "$work/done"
    } >"$work/finish.sh"
    cat >"$work/session.sql" <<EOF
\\set ON_ERROR_STOP 1
SELECT version() AS pgver \\gset
SELECT file_name AS start_seg, lpad(file_offset::text, 8, '0') AS start_off
  FROM pg_walfile_name_offset(pg_backup_start('freeze_start_$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00)', true)) \\gset
\\setenv WALE_PGVER :pgver
\\setenv WALE_START_SEG :start_seg
\\setenv WALE_START_OFF :start_off
\\! sh $work/copy.sh
SELECT lsn AS stop_lsn, encode(convert_to(labelfile, 'UTF8'), 'hex') AS label_hex
  FROM pg_backup_stop(true) \\gset
SELECT file_name AS stop_seg, lpad(file_offset::text, 8, '0') AS stop_off
  FROM pg_walfile_name_offset(:'stop_lsn') \\gset
\\setenv WALE_STOP_SEG :stop_seg
\\setenv WALE_STOP_OFF :stop_off
\\setenv WALE_LABEL_HEX :label_hex
\\! sh $work/finish.sh
EOF
    chown -R postgres: "$work"
    if ! _pg_as timeout "$PG_TIMEOUT" psql -X -q -A -t -h "$PG_SCRATCH" -p "$port" -U postgres \
            -d postgres -f "$work/session.sql" >"$work/session.out" 2>&1; then
        _wale_err "backup session on $name failed:"; cat "$work/session.out" >&2
        pg_log_tail "$name" 20; return 1
    fi
    if [ ! -e "$work/done" ]; then
        _wale_err "backup of $name did not complete:"; cat "$work/session.out" >&2; return 1
    fi
    bname=$(cat "$work/name")
    if [ ! -s "$out/basebackups_005/${bname}_backup_stop_sentinel.json" ]; then
        _wale_err "no sentinel for $bname in $out"; return 1
    fi
    printf '%s\n' "$bname"
}

wale_upload() {
    local out=${1:-} bucket=${2:-} prefix=${3-} names b f key
    shift 3 || { _wale_err "usage: wale_upload OUT BUCKET KEY_PREFIX [NAME...]"; return 1; }
    [ -n "$prefix" ] && prefix=${prefix%/}/
    if [ $# -gt 0 ]; then names=("$@"); else
        names=()
        for f in "$out"/basebackups_005/base_*_backup_stop_sentinel.json; do
            [ -e "$f" ] || continue
            f=${f##*/}; names+=("${f%_backup_stop_sentinel.json}")
        done
    fi
    for b in "${names[@]}"; do
        [ -d "$out/basebackups_005/$b" ] || { _wale_err "no backup $b in $out"; return 1; }
        key=${prefix}basebackups_005/$b
        rgw_s3 put -t text/plain "$bucket" "$key/extended_version.txt" \
            "$out/basebackups_005/$b/extended_version.txt" >/dev/null || return 1
        for f in "$out/basebackups_005/$b/tar_partitions"/part_*.tar.lzo; do
            [ -e "$f" ] || continue
            rgw_s3 put "$bucket" "$key/tar_partitions/${f##*/}" "$f" >/dev/null || return 1
        done
        if [ -e "$out/basebackups_005/${b}_backup_stop_sentinel.json" ]; then
            rgw_s3 put -t application/json "$bucket" "${key}_backup_stop_sentinel.json" \
                "$out/basebackups_005/${b}_backup_stop_sentinel.json" >/dev/null || return 1
        fi
    done
}
