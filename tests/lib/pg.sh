# shellcheck shell=bash disable=SC2015
# tests/lib/pg.sh -- PostgreSQL helpers for the walfs end-to-end tests.
#
# Source this file from a bash test that runs as root.  Every server runs as
# the `postgres` OS user (via runuser), on 127.0.0.1 plus a unix socket in
# $PG_SCRATCH, on ports the caller picks (see pg_free_port).  Nothing here
# relies on `set -e`: every function returns non-zero (with a message on
# stderr, and the server log tail where useful) on failure, so the functions
# behave the same inside `if`, `||` and under `set -euo pipefail`.
#
# Conventions (environment):
#   PG_SCRATCH    (required) scratch directory, e.g. "$(mktemp -d /tmp/pgt.XXXXXX)".
#                 Adopted on first use: chowned to postgres, mode 0755.  Cluster
#                 NAME lives in $PG_SCRATCH/NAME, its server log in
#                 $PG_SCRATCH/NAME.log, its socket in $PG_SCRATCH.  The path must
#                 be short (unix socket path limit) and traversable by postgres.
#   PG_BINDIR     PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin).
#   PG_ARCHIVE_COMMAND   archive_command written by pg_init (required by pg_init
#                 unless PG_ARCHIVE_MODE=off), e.g. 'cp %p /mnt/pg/wal_005/%f'.
#   PG_ARCHIVE_MODE      archive_mode for pg_init (default: on).
#   PG_TIMEOUT    bound, seconds, for start/stop/recovery/replay waits (default 120).
#   PG_ARCHIVE_TIMEOUT   bound, seconds, for pg_switch_wal's wait (default 60).
#   PG_KEEP=1     pg_cleanup stops the servers but keeps $PG_SCRATCH (debugging).
#   PG_VERBOSE=1  echo each PostgreSQL command to stderr.
#
# Functions (all return 0 on success, non-zero on failure):
#   pg_free_port [FIRST]                print a TCP port free on 127.0.0.1
#                                       (probes FIRST.., default 15432..).
#   pg_init NAME PORT                   initdb $PG_SCRATCH/NAME (C locale, UTF8,
#                                       trust auth) and write its configuration:
#                                       listen 127.0.0.1 + socket in PG_SCRATCH,
#                                       shared_buffers=16MB, wal_level=replica,
#                                       fsync=on, synchronous_commit=off,
#                                       wal_keep_size=0, archive_mode=on,
#                                       archive_command=$PG_ARCHIVE_COMMAND,
#                                       archive_timeout=0.  Does not start it.
#   pg_start NAME                       start (pg_ctl -w, bounded), log to NAME.log.
#   pg_stop NAME                        stop -m fast (bounded); falls back to
#                                       -m immediate, then SIGKILL.
#   pg_psql NAME SQL                    run SQL (ON_ERROR_STOP) as postgres in
#                                       database postgres; prints unaligned,
#                                       tuples only, fields separated by '|'
#                                       (PG_PSQL_FS overrides the separator).
#   pg_make_schema NAME                 create random_numbers / random_letters
#                                       (the WAL-E fixture schema).
#   pg_load NAME N                      insert N random rows into each table.
#   pg_results NAME                     print "count_numbers sum_numbers
#                                       count_letters" (sum of no rows prints 0).
#   pg_switch_wal NAME                  SELECT pg_switch_wal(); wait (bounded by
#                                       PG_ARCHIVE_TIMEOUT) until that segment is
#                                       archived; fails at once, with
#                                       pg_stat_archiver and the log tail, if the
#                                       archiver reports a failure meanwhile.
#                                       Prints the switched segment's name.
#   pg_archived_files NAME              list the pg_wal files (segments, .backup,
#                                       .history) whose archive_status is .done.
#   pg_check_archive NAME DIR           cmp every pg_archived_files entry with
#                                       DIR/<file>; prints how many matched; fails
#                                       (listing the culprits) on any missing or
#                                       different file, or if none was found.
#   pg_basebackup_local NAME DEST       pg_basebackup -D DEST -Fp -X none
#                                       --checkpoint=fast (DEST must not exist or
#                                       be empty).  Returns once the backup's WAL
#                                       is archived (the server waits for it).
#   pg_recover NAME PORT BACKUP RESTORE_COMMAND [CONF_LINE...]
#                                       copy BACKUP to $PG_SCRATCH/NAME, write
#                                       overrides to postgresql.auto.conf (port,
#                                       listen, socket, restore_command,
#                                       recovery_target_timeline='latest',
#                                       archive_mode=off, then the CONF_LINEs),
#                                       touch recovery.signal, start, and wait
#                                       (PG_TIMEOUT) until pg_is_in_recovery() is
#                                       false, i.e. archive recovery ran out of
#                                       WAL and the server promoted itself onto a
#                                       new timeline and accepts writes.
#   pg_standby NAME PORT BACKUP RESTORE_COMMAND [CONF_LINE...]
#                                       same, but standby.signal + hot_standby=on
#                                       (+ wal_retrieve_retry_interval=200ms) and
#                                       waits until it accepts read-only queries.
#   pg_wait_replay NAME EXPECTED        poll pg_results NAME until it prints
#                                       EXPECTED (bounded by PG_TIMEOUT).
#   pg_timeline NAME                    print the server's current timeline id.
#   pg_log_tail NAME [LINES]            print the end of NAME's server log.
#   pg_cleanup                          stop every server this library started
#                                       (recorded in $PG_SCRATCH/.pgsh/servers)
#                                       and remove $PG_SCRATCH (unless PG_KEEP=1).
#                                       Install it in a trap:  trap pg_cleanup EXIT
#
# Quirks worth knowing:
#   * restore_command failing ("cp: cannot stat ...") is how archive recovery
#     ends; the log is full of those lines and that is normal.
#   * pg_switch_wal with no WAL written since the last switch switches nothing;
#     it then waits for the previous segment, which is already archived.
#   * A recovered cluster keeps the primary's postgresql.conf (it is in the
#     backup); overrides go to postgresql.auto.conf, which is read last.

PG_BINDIR=${PG_BINDIR:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
PG_TIMEOUT=${PG_TIMEOUT:-120}
PG_ARCHIVE_TIMEOUT=${PG_ARCHIVE_TIMEOUT:-60}
PG_ARCHIVE_MODE=${PG_ARCHIVE_MODE:-on}

_pg_err() { printf 'pg.sh: %s\n' "$*" >&2; }

# Quote a string as a postgresql.conf literal: '...' with ' doubled.
_pg_q() { local s=${1//\'/\'\'}; printf "'%s'" "$s"; }

# Make $PG_SCRATCH usable: exists, owned by postgres, has our state directory.
_pg_scratch() {
    if [ -z "${PG_SCRATCH:-}" ]; then _pg_err "PG_SCRATCH is not set"; return 1; fi
    case $PG_SCRATCH in /*) ;; *) _pg_err "PG_SCRATCH must be absolute: $PG_SCRATCH"; return 1 ;; esac
    if [ ! -d "$PG_SCRATCH/.pgsh" ]; then
        if [ ! -d "$PG_SCRATCH" ]; then _pg_err "PG_SCRATCH $PG_SCRATCH is not a directory"; return 1; fi
        if [ "${#PG_SCRATCH}" -gt 80 ]; then
            _pg_err "PG_SCRATCH path too long for a unix socket: $PG_SCRATCH"; return 1
        fi
        if [ ! -x "$PG_BINDIR/postgres" ]; then _pg_err "no PostgreSQL in PG_BINDIR=$PG_BINDIR"; return 1; fi
        mkdir -p "$PG_SCRATCH/.pgsh" && : >>"$PG_SCRATCH/.pgsh/servers" &&
            chown postgres: "$PG_SCRATCH" && chmod 0755 "$PG_SCRATCH" || {
            _pg_err "cannot prepare $PG_SCRATCH"; return 1; }
        if ! runuser -u postgres -- test -w "$PG_SCRATCH"; then
            _pg_err "postgres cannot write $PG_SCRATCH (parent not traversable?)"; return 1
        fi
    fi
}

# Run a command as postgres with a clean environment, from $PG_SCRATCH.
_pg_as() {
    [ "${PG_VERBOSE:-0}" = 1 ] && printf '+ [postgres] %s\n' "$*" >&2
    (cd "$PG_SCRATCH" && exec runuser -u postgres -- env -i \
        PATH="$PG_BINDIR:/usr/local/bin:/usr/bin:/bin" LANG=C LC_ALL=C \
        HOME="$PG_SCRATCH" TZ=UTC "$@")
}

_pg_name_ok() {
    case ${1:-} in
        '' | *[!A-Za-z0-9_-]*) _pg_err "bad cluster name '${1:-}' (use [A-Za-z0-9_-])"; return 1 ;;
    esac
}
_pg_port_ok() {
    case ${1:-} in
        '' | *[!0-9]*) _pg_err "bad port '${1:-}'"; return 1 ;;
    esac
}
_pg_dir() { printf '%s/%s' "$PG_SCRATCH" "$1"; }
_pg_log() { printf '%s/%s.log' "$PG_SCRATCH" "$1"; }
_pg_port() {
    local f="$PG_SCRATCH/.pgsh/$1.port"
    if [ ! -s "$f" ]; then _pg_err "unknown cluster '$1'"; return 1; fi
    cat "$f"
}
_pg_register() {
    printf '%s\n' "$2" >"$PG_SCRATCH/.pgsh/$1.port" || return 1
    grep -qxF -- "$1" "$PG_SCRATCH/.pgsh/servers" 2>/dev/null ||
        printf '%s\n' "$1" >>"$PG_SCRATCH/.pgsh/servers"
}

pg_log_tail() {
    local log n=${2:-40}
    log=$(_pg_log "$1")
    printf -- '--- %s (distinct lines; repeats counted) ---\n' "$log" >&2
    if [ ! -f "$log" ]; then printf '(no log)\n' >&2; return 0; fi
    # Retrying recovery repeats the same few lines forever: collapse repeats
    # (ignoring the timestamp/pid prefix) so the interesting ones stay visible;
    # print the first 10 and the last N (default 40) distinct lines.
    tail -n 3000 "$log" | awk -v n="$n" '
        { k = $0; sub(/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] /, "", k)
          if (!(k in cnt)) { order[++m] = k; first[k] = $0 }
          cnt[k]++ }
        END { if (m > n + 10) { for (i = 1; i <= 10; i++) print first[order[i]]; print "[...]" }
              for (i = (m > n ? m - n + 1 : 1); i <= m; i++) {
                  k = order[i]
                  print first[k] (cnt[k] > 1 ? "   [x" cnt[k] "]" : "") } }' >&2
    printf -- '--- end of log ---\n' >&2
}

# Is the postmaster of NAME alive?  (pg_ctl status: 0 running, 3 not running)
_pg_running() { _pg_as pg_ctl -D "$(_pg_dir "$1")" status >/dev/null 2>&1; }

# Ports at or above 32768 are the kernel's ephemeral range: an outgoing
# connection (curl, walfs to RGW) may hold one at the moment PostgreSQL
# binds, so only ports below it are handed out.
pg_free_port() {
    local p=${1:-15432}
    [ "$p" -lt 32000 ] || p=$((15432 + p % 16000))
    while [ "$p" -lt 32700 ]; do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
            { [ -z "${PG_SCRATCH:-}" ] || [ ! -e "$PG_SCRATCH/.s.PGSQL.$p" ]; } &&
            ! grep -qxF "$p" "${PG_SCRATCH:-/nonexistent}"/.pgsh/*.port 2>/dev/null; then
            printf '%s\n' "$p"
            return 0
        fi
        p=$((p + 1))
    done
    _pg_err "no free port"
    return 1
}

pg_init() {
    local name=${1:-} port=${2:-} dir
    _pg_name_ok "$name" && _pg_port_ok "$port" && _pg_scratch || return 1
    if [ "$PG_ARCHIVE_MODE" != off ] && [ -z "${PG_ARCHIVE_COMMAND:-}" ]; then
        _pg_err "pg_init: set PG_ARCHIVE_COMMAND (or PG_ARCHIVE_MODE=off)"; return 1
    fi
    dir=$(_pg_dir "$name")
    if [ -e "$dir" ]; then _pg_err "pg_init: $dir already exists"; return 1; fi
    _pg_as initdb -D "$dir" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        >"$PG_SCRATCH/.pgsh/$name.initdb.out" 2>&1 || {
        _pg_err "initdb failed:"; cat "$PG_SCRATCH/.pgsh/$name.initdb.out" >&2; return 1; }
    {
        printf '\n# --- tests/lib/pg.sh ---\n'
        printf 'port = %s\n' "$port"
        printf "listen_addresses = '127.0.0.1'\n"
        printf 'unix_socket_directories = %s\n' "$(_pg_q "$PG_SCRATCH")"
        printf "max_connections = 20\n"
        printf "shared_buffers = 16MB\n"
        printf "dynamic_shared_memory_type = posix\n"
        printf "wal_level = replica\n"
        printf "fsync = on\n"
        printf "synchronous_commit = off\n"
        printf "wal_keep_size = 0\n"
        printf "min_wal_size = 32MB\n"
        printf "max_wal_size = 512MB\n"
        printf "checkpoint_timeout = 30min\n"
        printf 'archive_mode = %s\n' "$PG_ARCHIVE_MODE"
        printf 'archive_command = %s\n' "$(_pg_q "${PG_ARCHIVE_COMMAND:-}")"
        printf "archive_timeout = 0\n"
        printf "logging_collector = off\n"
        printf "log_line_prefix = '%%m [%%p] '\n"
        printf "log_checkpoints = on\n"
        printf "timezone = 'UTC'\n"
        printf "log_timezone = 'UTC'\n"
    } >>"$dir/postgresql.conf" || { _pg_err "cannot write $dir/postgresql.conf"; return 1; }
    _pg_register "$name" "$port"
}

# Start without waiting (internal).
_pg_launch() {
    local name=$1 dir log
    dir=$(_pg_dir "$name"); log=$(_pg_log "$name")
    _pg_as pg_ctl -D "$dir" -l "$log" -W start >/dev/null 2>&1 || {
        _pg_err "pg_ctl start of $name failed"; pg_log_tail "$name"; return 1; }
}

pg_start() {
    local name=${1:-}
    _pg_name_ok "$name" && _pg_scratch && _pg_port "$name" >/dev/null || return 1
    _pg_as pg_ctl -D "$(_pg_dir "$name")" -l "$(_pg_log "$name")" -w -t "$PG_TIMEOUT" start >/dev/null 2>&1 || {
        _pg_err "cluster $name did not start within ${PG_TIMEOUT}s"; pg_log_tail "$name"; return 1; }
}

pg_stop() {
    local name=${1:-} dir pid
    _pg_name_ok "$name" && _pg_scratch || return 1
    dir=$(_pg_dir "$name")
    [ -f "$dir/postmaster.pid" ] || return 0
    _pg_as pg_ctl -D "$dir" -m fast -w -t 30 stop >/dev/null 2>&1 && return 0
    _pg_err "fast stop of $name failed; trying immediate"
    _pg_as pg_ctl -D "$dir" -m immediate -w -t 15 stop >/dev/null 2>&1 && return 1
    pid=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null)
    case $pid in '' | *[!0-9]*) ;; *) kill -KILL "$pid" 2>/dev/null ;; esac
    return 1
}

# _pg_psql_port PORT SQL -- psql against an explicit port (internal).
_pg_psql_port() {
    _pg_as psql -X -q -A -t -v ON_ERROR_STOP=1 -F "${PG_PSQL_FS:-|}" \
        -h "$PG_SCRATCH" -p "$1" -U postgres -d postgres -c "$2"
}

pg_psql() {
    local name=${1:-} port
    _pg_name_ok "$name" && _pg_scratch || return 1
    port=$(_pg_port "$name") || return 1
    _pg_psql_port "$port" "$2"
}

pg_make_schema() {
    pg_psql "${1:-}" "
        CREATE TABLE random_numbers (id serial PRIMARY KEY, number int NOT NULL, created_at timestamp NOT NULL);
        CREATE TABLE random_letters (id serial PRIMARY KEY, letter varchar(1) NOT NULL, created_at timestamp NOT NULL);"
}

pg_load() {
    local name=${1:-} n=${2:-}
    _pg_port_ok "$n" || { _pg_err "pg_load: bad row count '$n'"; return 1; }
    pg_psql "$name" "
        INSERT INTO random_numbers (number, created_at)
            SELECT (random() * 1000)::int, now() FROM generate_series(1, $n);
        INSERT INTO random_letters (letter, created_at)
            SELECT chr(97 + (random() * 25)::int), now() FROM generate_series(1, $n);"
}

pg_results() {
    PG_PSQL_FS=' ' pg_psql "${1:-}" "SELECT
        (SELECT count(*) FROM random_numbers),
        (SELECT coalesce(sum(number), 0) FROM random_numbers),
        (SELECT count(*) FROM random_letters)"
}

pg_timeline() {
    # On a primary the insert position's file name carries the live timeline;
    # during recovery fall back to the last checkpoint's (may lag).
    pg_psql "${1:-}" "SELECT CASE WHEN pg_is_in_recovery()
                  THEN (SELECT timeline_id FROM pg_control_checkpoint())
                  ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
}

_pg_archiver_state() {
    pg_psql "$1" "SELECT coalesce(last_archived_wal, ''), failed_count,
                         coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '')
                  FROM pg_stat_archiver"
}

pg_switch_wal() {
    local name=${1:-} dir seg st failed0 last failed deadline
    _pg_name_ok "$name" && _pg_scratch || return 1
    dir=$(_pg_dir "$name")
    st=$(_pg_archiver_state "$name") || return 1
    failed0=$(printf '%s' "$st" | cut -d'|' -f2)
    seg=$(pg_psql "$name" "SELECT pg_walfile_name(pg_switch_wal())") || return 1
    deadline=$((SECONDS + PG_ARCHIVE_TIMEOUT))
    while :; do
        st=$(_pg_archiver_state "$name") || return 1
        IFS='|' read -r last failed _ <<<"$st"
        if [ -e "$dir/pg_wal/archive_status/$seg.done" ]; then break; fi
        # last_archived_wal >= seg (a .history/.backup name has another length)
        if [ "${#last}" -eq 24 ] && [[ ! $last < $seg ]]; then break; fi
        if [ "$failed" != "$failed0" ]; then
            _pg_err "archiving failed while waiting for $seg on $name: pg_stat_archiver: $st"
            pg_log_tail "$name"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            _pg_err "segment $seg of $name not archived within ${PG_ARCHIVE_TIMEOUT}s; pg_stat_archiver: $st"
            pg_log_tail "$name"
            return 1
        fi
        sleep 0.1
    done
    printf '%s\n' "$seg"
}

pg_archived_files() {
    local name=${1:-} dir f
    _pg_name_ok "$name" && _pg_scratch || return 1
    dir=$(_pg_dir "$name")
    for f in "$dir"/pg_wal/archive_status/*.done; do
        [ -e "$f" ] || continue
        f=${f##*/}
        printf '%s\n' "${f%.done}"
    done
}

pg_check_archive() {
    local name=${1:-} adir=${2:-} dir f n=0 bad=0 files
    _pg_name_ok "$name" && _pg_scratch || return 1
    if [ ! -d "$adir" ]; then _pg_err "pg_check_archive: no directory $adir"; return 1; fi
    dir=$(_pg_dir "$name")
    files=$(pg_archived_files "$name") || return 1
    for f in $files; do
        # A checkpoint may recycle a segment between listing and cmp: skip
        # files that vanished together with their .done marker.
        if [ ! -e "$dir/pg_wal/$f" ] && [ ! -e "$dir/pg_wal/archive_status/$f.done" ]; then continue; fi
        if [ ! -e "$adir/$f" ]; then
            _pg_err "archived $f is missing from $adir"; bad=$((bad + 1)); continue
        fi
        if ! cmp -s "$dir/pg_wal/$f" "$adir/$f"; then
            _pg_err "archived $f differs: $(cmp "$dir/pg_wal/$f" "$adir/$f" 2>&1 | head -n 1)"
            bad=$((bad + 1)); continue
        fi
        n=$((n + 1))
    done
    if [ "$bad" -ne 0 ]; then _pg_err "$bad archived file(s) missing or different"; return 1; fi
    if [ "$n" -eq 0 ]; then _pg_err "no archived (.done) file found in $dir/pg_wal"; return 1; fi
    printf '%s\n' "$n"
}

pg_basebackup_local() {
    local name=${1:-} dest=${2:-} port
    _pg_name_ok "$name" && _pg_scratch || return 1
    port=$(_pg_port "$name") || return 1
    if [ -z "$dest" ]; then _pg_err "pg_basebackup_local: no DEST"; return 1; fi
    if [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
        _pg_err "pg_basebackup_local: $dest is not empty"; return 1
    fi
    mkdir -p "$dest" && chown postgres: "$dest" && chmod 0700 "$dest" || {
        _pg_err "cannot create $dest"; return 1; }
    _pg_as pg_basebackup -h "$PG_SCRATCH" -p "$port" -U postgres -D "$dest" \
        -F p -X none --checkpoint=fast --no-sync >"$PG_SCRATCH/.pgsh/basebackup.out" 2>&1 || {
        _pg_err "pg_basebackup of $name failed:"; cat "$PG_SCRATCH/.pgsh/basebackup.out" >&2
        pg_log_tail "$name" 20; return 1; }
}

# _pg_clone NAME PORT BACKUP RESTORE_COMMAND SIGNAL [CONF_LINE...] (internal)
_pg_clone() {
    local name=${1:-} port=${2:-} backup=${3:-} restore=${4:-} signal=${5:-} dir line
    shift 5 || { _pg_err "usage: pg_recover/pg_standby NAME PORT BACKUP RESTORE_COMMAND [CONF_LINE...]"; return 1; }
    _pg_name_ok "$name" && _pg_port_ok "$port" && _pg_scratch || return 1
    dir=$(_pg_dir "$name")
    if [ -e "$dir" ]; then _pg_err "$dir already exists"; return 1; fi
    if [ ! -f "$backup/PG_VERSION" ]; then _pg_err "$backup is not a base backup"; return 1; fi
    if [ -z "$restore" ]; then _pg_err "empty restore_command"; return 1; fi
    cp -a "$backup" "$dir" && mkdir -p "$dir/pg_wal/archive_status" &&
        rm -f "$dir/postmaster.pid" "$dir/recovery.signal" "$dir/standby.signal" || {
        _pg_err "cannot copy $backup to $dir"; return 1; }
    {
        printf '\n# --- tests/lib/pg.sh (%s) ---\n' "$signal"
        printf 'port = %s\n' "$port"
        printf "listen_addresses = '127.0.0.1'\n"
        printf 'unix_socket_directories = %s\n' "$(_pg_q "$PG_SCRATCH")"
        printf 'restore_command = %s\n' "$(_pg_q "$restore")"
        printf "recovery_target_timeline = 'latest'\n"
        printf "archive_mode = off\n"
        printf "hot_standby = on\n"
        if [ "$signal" = standby ]; then printf "wal_retrieve_retry_interval = '200ms'\n"; fi
        for line in "$@"; do printf '%s\n' "$line"; done
    } >>"$dir/postgresql.auto.conf" && touch "$dir/$signal.signal" &&
        chown -R postgres: "$dir" && chmod 0700 "$dir" || {
        _pg_err "cannot configure $dir"; return 1; }
    _pg_register "$name" "$port" && _pg_launch "$name"
}

# _pg_wait_sql NAME SQL EXPECTED WHAT -- poll until SQL prints EXPECTED (internal).
# Connects only once postmaster.pid says "ready" or "standby", so that the
# polling does not fill the server log with "the database system is starting up".
_pg_wait_sql() {
    local name=$1 sql=$2 want=$3 what=$4 got='' pmst dir missing=0 deadline=$((SECONDS + PG_TIMEOUT))
    dir=$(_pg_dir "$name")
    while :; do
        if [ -f "$dir/postmaster.pid" ]; then
            missing=0
            pmst=$(sed -n 8p "$dir/postmaster.pid" 2>/dev/null)
            pmst=${pmst%% *}
            if [ "$pmst" = ready ] || [ "$pmst" = standby ]; then
                got=$(pg_psql "$name" "$sql" 2>/dev/null) && [ "$got" = "$want" ] && return 0
            fi
        else
            missing=$((missing + 1))
            if [ "$missing" -ge 10 ] && ! _pg_running "$name"; then
                _pg_err "$name exited while waiting for $what"; pg_log_tail "$name"; return 1
            fi
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            _pg_err "$name: no $what within ${PG_TIMEOUT}s (last: '$got')"; pg_log_tail "$name"; return 1
        fi
        sleep 0.2
    done
}

pg_recover() {
    _pg_clone "${1:-}" "${2:-}" "${3:-}" "${4:-}" recovery "${@:5}" || return 1
    _pg_wait_sql "$1" "SELECT pg_is_in_recovery()" f "end of recovery"
}

pg_standby() {
    _pg_clone "${1:-}" "${2:-}" "${3:-}" "${4:-}" standby "${@:5}" || return 1
    _pg_wait_sql "$1" "SELECT pg_is_in_recovery()" t "hot standby connections"
}

pg_wait_replay() {
    local name=${1:-}
    _pg_name_ok "$name" && _pg_scratch || return 1
    _pg_wait_sql "$name" "SELECT
        (SELECT count(*) FROM random_numbers) || ' ' ||
        (SELECT coalesce(sum(number), 0) FROM random_numbers) || ' ' ||
        (SELECT count(*) FROM random_letters)" "${2:-}" "replay up to results '${2:-}'"
}

pg_cleanup() {
    local rc=$? name
    if [ -n "${PG_SCRATCH:-}" ] && [ -f "$PG_SCRATCH/.pgsh/servers" ]; then
        while IFS= read -r name; do
            [ -n "$name" ] && { pg_stop "$name" || true; }
        done <"$PG_SCRATCH/.pgsh/servers"
        if [ "${PG_KEEP:-0}" = 1 ]; then
            _pg_err "PG_KEEP=1: keeping $PG_SCRATCH"
        else
            rm -rf -- "$PG_SCRATCH"
        fi
    elif [ -n "${PG_SCRATCH:-}" ] && [ -d "$PG_SCRATCH" ]; then
        rmdir -- "$PG_SCRATCH" 2>/dev/null || true
    fi
    return "$rc"
}
