#!/bin/bash
# Faults: the archive loses nothing.  PostgreSQL 15 archives through walfs to
# Ceph RGW while tests/lib/faultproxy.py, an S3 reverse proxy between them,
# spoils about a quarter of the requests (seeded: 503 SlowDown, 500
# InternalError, a reset before the answer, a reset in the middle of the body,
# a stall longer than --low-speed-time, a short body), and radosgw is killed
# (SIGKILL) once during the load and started again.
#
#   1. RGW; the proxy in front of it (faults off); walfs mounted through the
#      proxy with --deadline=$DEADLINE --low-speed-time=$LOW_SPEED_TIME;
#   2. a primary with archive_command = 'timed_cp archive LOG %p MNT/wal_005/%f'
#      (timed_cp runs cp and logs its duration, exit status and the segment's
#      SHA-256), pgbench -i and a base backup; then faults on;
#   3. load: pgbench chunks, rows for pg_results, pg_switch_wal after each,
#      until $SEGMENTS segments were switched; radosgw killed (for longer
#      than --deadline) and restarted during it; then wait until PostgreSQL
#      has archived everything;
#   4. checks, against RGW directly (rgw_s3, not through the proxy): every file
#      PostgreSQL archived (a .done in pg_wal, or a cp that exited 0) is in the
#      bucket, passes lzop -t and decompresses to the bytes in pg_wal (or to
#      the SHA-256 timed_cp logged, for a segment no longer in pg_wal); no
#      archiving cp ran longer than --deadline plus $CP_MARGIN s;
#   5. a server recovered from the base backup with restore_command =
#      'timed_cp restore LOG MNT/wal_005/%f %p', through the same faulty proxy,
#      reaches the primary's results (pg_results and pgbench's sums); every
#      segment it restored is byte-identical to the archived one; no restoring
#      cp failed with anything but ENOENT;
#   6. walfs unmounts cleanly.  Figures: faults by kind, segments archived,
#      lost, corrupt, longest cp.
#
# Knobs (environment): RGW_TEST_PORT (7610), RGW_TEST_MON_PORT (3360),
# FAULT_PROXY_PORT (7611), FAULT_SEED (1), FAULT_RATE (0.25), FAULT_KINDS
# (503,500,reset-before,reset-mid-body,stall,short-body; faultproxy.py also
# knows reset-after), FAULT_STALL_SECONDS (8), FAULT_DEADLINE (20),
# FAULT_LOW_SPEED_TIME (3), FAULT_CP_MARGIN (5), FAULT_SEGMENTS (160),
# FAULT_KILL_AT (the radosgw kill comes after that many switches, 50),
# FAULT_OUTAGE (seconds radosgw stays down before the restart; default
# --deadline + 10, so that an archiving cp caught by it has to fail within
# --deadline and be retried by PostgreSQL), FAULT_ARCHIVE_WAIT
# (seconds for PostgreSQL to archive the backlog, 300), FAULT_RECOVERY_TIMEOUT
# (300), FAULT_RESTORE_OUTAGE_AT (unset: if set, radosgw is also killed that
# many seconds into the recovery, for $FAULT_OUTAGE s), FAULT_WALFS_LOG_LEVEL
# (walfs --log-level; debug logs each retry), FAULT_KEEP=1 (keep the scratch
# directory: the cp logs, proxy.log, proxy-stats.json, walfs and server logs).
#
# Run (as root, from the repository): bash tests/t_faults.sh
#   WALFS_BIN=build/asan/walfs bash tests/t_faults.sh    (another build)
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source tests/lib/pg.sh

t_require lzop python3 sha256sum
T0=$SECONDS

RGW_PORT_ARG=${RGW_TEST_PORT:-7610}
RGW_MON_ARG=${RGW_TEST_MON_PORT:-3360}
PROXY_PORT=${FAULT_PROXY_PORT:-7611}
SEED=${FAULT_SEED:-1}
RATE=${FAULT_RATE:-0.25}
KINDS=${FAULT_KINDS:-503,500,reset-before,reset-mid-body,stall,short-body}
STALL=${FAULT_STALL_SECONDS:-8}
DEADLINE=${FAULT_DEADLINE:-20}
LOW_SPEED_TIME=${FAULT_LOW_SPEED_TIME:-3}
CP_MARGIN=${FAULT_CP_MARGIN:-5}
SEGMENTS=${FAULT_SEGMENTS:-160}
KILL_AT=${FAULT_KILL_AT:-50}
OUTAGE=${FAULT_OUTAGE:-$((DEADLINE + 10))}
ARCHIVE_WAIT=${FAULT_ARCHIVE_WAIT:-300}
RECOVERY_TIMEOUT=${FAULT_RECOVERY_TIMEOUT:-300}
MIN_SEGMENTS=150

t_scratch faults
PROXY_PID= OUTAGE_PID=
cleanup() {
    [[ -n $OUTAGE_PID ]] && { kill "$OUTAGE_PID" 2>/dev/null; wait "$OUTAGE_PID" 2>/dev/null; }
    PG_KEEP=1 pg_cleanup >/dev/null 2>&1 # the servers use the mount: stop them first
    walfs_cleanup
    [[ -n $PROXY_PID ]] && { kill "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; }
    rgw_stop
    if [[ ${FAULT_KEEP:-0} == 1 ]]; then echo "# kept $SCRATCH" >&2; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
fail_out() { not_ok "$1"; t_summary; exit 1; }

BUCKET=walfs-faults
MNT=$SCRATCH/mnt
STATS=$SCRATCH/proxy-stats.json
CTL=$SCRATCH/proxy.ctl
ARCH_LOG=$SCRATCH/archive-cp.log
REST_LOG=$SCRATCH/restore-cp.log

# timed_cp MODE LOG SRC DST: cp SRC DST; appends to LOG one line
#   START_US DURATION_US EXIT_STATUS NAME SHA256|- CP_ERROR...
# NAME is the WAL file's name, SHA256 that of the local copy (SRC when
# archiving, DST when restoring) after a successful cp.
TIMED_CP=$SCRATCH/timed_cp
cat >"$TIMED_CP" <<'EOF'
#!/bin/bash
mode=$1 log=$2 src=$3 dst=$4
t0=${EPOCHREALTIME/./}
err=$(cp "$src" "$dst" 2>&1)
rc=$?
t1=${EPOCHREALTIME/./}
if [ "$mode" = archive ]; then name=${dst##*/} local=$src; else name=${src##*/} local=$dst; fi
sum=-
if [ $rc -eq 0 ]; then sum=$(sha256sum <"$local") && sum=${sum%% *} || sum=-; fi
printf '%s %s %s %s %s %s\n' "$t0" "$((t1 - t0))" "$rc" "$name" "$sum" "$(printf '%s' "$err" | tr '\n' ' ')" >>"$log"
exit $rc
EOF
chmod 0755 "$TIMED_CP"
: >"$ARCH_LOG"; : >"$REST_LOG"
chown postgres "$ARCH_LOG" "$REST_LOG"

stat_get() { # python expression over the stats JSON d
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$STATS" "$1"
}
now() { date -u +%H:%M:%S; }

# ------------------------------------------------ 1. RGW, proxy, mount
rgw_start "$SCRATCH/rgw" "$RGW_PORT_ARG" "$RGW_MON_ARG" || fail_out "RGW started on $RGW_PORT_ARG"
rgw_s3 mb "$BUCKET" >/dev/null || fail_out "bucket created"
echo "rate=0" >"$CTL"
python3 tests/lib/faultproxy.py --upstream "$RGW_ENDPOINT" --listen "$PROXY_PORT" --seed "$SEED" \
    --fault-rate 0 --kinds "$KINDS" --stall-seconds "$STALL" --stats "$STATS" \
    --log "$SCRATCH/proxy.log" --control "$CTL" --port-file "$SCRATCH/proxy.port" \
    >"$SCRATCH/proxy.out" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do [[ -s $SCRATCH/proxy.port ]] && break; kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
[[ -s $SCRATCH/proxy.port ]] || { cat "$SCRATCH/proxy.out"; fail_out "fault proxy listens on 127.0.0.1:$PROXY_PORT"; }
ok "fault proxy on 127.0.0.1:$PROXY_PORT in front of RGW $RGW_ENDPOINT (seed $SEED, kinds $KINDS)"

export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
walfs_mount "$MNT" "s3://$BUCKET/pgdb" --endpoint="http://127.0.0.1:$PROXY_PORT" --addressing=path \
    --deadline="$DEADLINE" --low-speed-time="$LOW_SPEED_TIME" ${FAULT_WALFS_LOG_LEVEL:+--log-level="$FAULT_WALFS_LOG_LEVEL"} ||
    fail_out "walfs mounted through the proxy"
WLOG=$(walfs_log "$MNT")

# ------------------------------------------------ 2. primary, pgbench -i, base backup
PORT0=$(pg_free_port $((20000 + RANDOM % 10000)))
PG_ARCHIVE_COMMAND="$TIMED_CP archive $ARCH_LOG %p $MNT/wal_005/%f"
pg_init primary "$PORT0" || fail_out "primary initialised"
# Keep every segment in pg_wal (no checkpoint recycles them before the check
# compares bytes) and do not zero-fill each new 16 MiB segment first.
printf 'max_wal_size = 8GB\nwal_init_zero = off\n' >>"$PG_SCRATCH/primary/postgresql.conf"
pgbench() { runuser -u postgres -- "$PG_BINDIR/pgbench" -h "$PG_SCRATCH" -p "$PORT0" -U postgres "$@" postgres; }
bench_sums() { pg_psql "$1" "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT count(*) FROM pgbench_history)"; }
pg_start primary && pg_make_schema primary >/dev/null && pg_load primary 100 >/dev/null &&
    pgbench -i -s 2 -q >"$SCRATCH/pgbench-init.out" 2>&1 ||
    fail_out "primary with archive_command through the mount, schema, pgbench -i"
pg_basebackup_local primary "$SCRATCH/backup" || fail_out "base backup"
ok "primary archives through the mount; base backup taken (faults off so far)"

# ------------------------------------------------ 3. load with faults and a radosgw outage
echo "rate=$RATE" >"$CTL"
REQ0=$(stat_get 'd["requests"]') FAULT0=$(stat_get 'd["faults_total"]')
echo "# $(now) faults on: rate $RATE; load until $SEGMENTS segments are switched"
outage() {
    echo "$(now) killing radosgw"
    rgw_kill_gateway KILL
    sleep "$OUTAGE"
    echo "$(now) restarting radosgw"
    rgw_restart_gateway || { echo "$(now) restart failed"; return 1; }
    echo "$(now) radosgw back"
}
switched=0 load_err=0
TL=$SECONDS
while (( switched < SEGMENTS )); do
    pgbench -n -c 1 -t 25 >>"$SCRATCH/pgbench.out" 2>&1 || load_err=$((load_err + 1))
    pg_load primary 20 >/dev/null || load_err=$((load_err + 1))
    pg_psql primary "SELECT pg_switch_wal()" >/dev/null || load_err=$((load_err + 1))
    switched=$((switched + 1))
    if (( switched == KILL_AT )); then
        outage >"$SCRATCH/outage.log" 2>&1 &
        OUTAGE_PID=$!
    fi
done
echo "# $(now) load done in $((SECONDS - TL)) s: $switched switches, $load_err errors"
outage_rc=1
if [[ -n $OUTAGE_PID ]]; then wait "$OUTAGE_PID"; outage_rc=$?; OUTAGE_PID=; fi
sed 's/^/# outage: /' "$SCRATCH/outage.log"
check "radosgw killed (SIGKILL) at switch $KILL_AT, down ${OUTAGE}s, restarted during the load" [ "$outage_rc" -eq 0 ]
check "load ran without errors ($switched pg_switch_wal, pgbench and inserts)" [ "$load_err" -eq 0 ]

# PostgreSQL archives the backlog; a SIGHUP wakes an archiver that rests after
# three failures in a row.
ready_count() { find "$PG_SCRATCH/primary/pg_wal/archive_status" -name '*.ready' | wc -l; }
TW=$SECONDS
while (( $(ready_count) > 0 && SECONDS - TW < ARCHIVE_WAIT )); do
    (( (SECONDS - TW) % 10 == 0 )) && pg_psql primary "SELECT pg_reload_conf()" >/dev/null
    sleep 1
done
left=$(ready_count)
echo "# $(now) archiving finished $((SECONDS - TW)) s after the load ($left left)"
check "PostgreSQL archived everything within ${ARCHIVE_WAIT}s after the load ($left .ready left)" [ "$left" -eq 0 ]
pg_stat=$(pg_psql primary "SELECT archived_count, failed_count, coalesce(last_failed_wal,'-') FROM pg_stat_archiver")
expected="$(pg_results primary) / $(bench_sums primary)"
echo "# primary: results $expected; pg_stat_archiver archived|failed|last_failed: $pg_stat"

# ------------------------------------------------ 4. the archive, checked against RGW directly
PGWAL=$PG_SCRATCH/primary/pg_wal
declare -A ASUM # name -> sha256 logged by timed_cp for a successful archiving cp
while read -r _ _ rc name sum _; do
    [[ $rc == 0 ]] && ASUM[$name]=$sum
done <"$ARCH_LOG"
{ pg_archived_files primary; printf '%s\n' "${!ASUM[@]}"; } | sort -u >"$SCRATCH/archived.txt"
n_archived=$(wc -l <"$SCRATCH/archived.txt")
n_segments=$(grep -cE '^[0-9A-F]{24}$' "$SCRATCH/archived.txt")
rgw_s3 ls "$BUCKET" pgdb/wal_005/ >"$SCRATCH/bucket.txt" || echo "# rgw_s3 ls failed"
declare -A INBUCKET
while IFS=$'\t' read -r key _; do INBUCKET[$key]=1; done <"$SCRATCH/bucket.txt"
lost=0 corrupt=0 differ=0 unverified=0 n_cmp=0 n_sha=0
OBJ=$SCRATCH/obj.lzo
while read -r name; do
    key=pgdb/wal_005/$name.lzo
    if [[ -z ${INBUCKET[$key]:-} ]] || ! rgw_s3 get "$BUCKET" "$key" "$OBJ" 2>/dev/null; then
        lost=$((lost + 1)); echo "# lost: $name (no $key in the bucket)"; continue
    fi
    if ! lzop -t "$OBJ" 2>/dev/null; then
        corrupt=$((corrupt + 1)); echo "# corrupt: $key fails lzop -t"; continue
    fi
    if [[ -e $PGWAL/$name ]]; then
        n_cmp=$((n_cmp + 1))
        lzop -dc <"$OBJ" | cmp -s - "$PGWAL/$name" ||
            { differ=$((differ + 1)); echo "# differs: $key does not decompress to pg_wal/$name"; }
    elif [[ -n ${ASUM[$name]:-} && ${ASUM[$name]} != - ]]; then
        n_sha=$((n_sha + 1))
        got=$(lzop -dc <"$OBJ" | sha256sum); got=${got%% *}
        [[ $got == "${ASUM[$name]}" ]] ||
            { differ=$((differ + 1)); echo "# differs: $key does not decompress to what cp archived"; }
    else
        unverified=$((unverified + 1)); echo "# unverified: $name (gone from pg_wal, no checksum logged)"
    fi
done <"$SCRATCH/archived.txt"
echo "# archived files $n_archived ($n_segments segments): $n_cmp compared with pg_wal, $n_sha with the logged SHA-256"
check "at least $MIN_SEGMENTS WAL segments archived ($n_segments)" [ "$n_segments" -ge "$MIN_SEGMENTS" ]
check "every file PostgreSQL archived is in the bucket ($lost of $n_archived lost)" [ "$n_archived" -gt 0 -a "$lost" -eq 0 ]
check "every archived object passes lzop -t ($corrupt corrupt)" [ "$n_archived" -gt 0 -a "$corrupt" -eq 0 ]
check "every archived object decompresses to the bytes PostgreSQL wrote ($differ differ, $unverified unverified)" \
    [ "$((n_cmp + n_sha))" -gt 0 -a "$differ" -eq 0 -a "$unverified" -eq 0 ]

# durations: the longest archiving cp, and how many failed (PostgreSQL retried them)
cp_stats() { # LOG -> "count max_us failed enoent other"
    awk '{ n++; if ($2 > m) m = $2; if ($3 != 0) { f++; if ($0 ~ /No such file/) e++; else o++ } }
         END { printf "%d %d %d %d %d\n", n, m, f, e, o }' "$1"
}
read -r a_n a_max a_fail _ a_other <<<"$(cp_stats "$ARCH_LOG")"
limit_us=$(( (DEADLINE + CP_MARGIN) * 1000000 ))
longest_a=$(awk -v m="$a_max" 'BEGIN { printf "%.1f", m / 1e6 }')
check "no archiving cp ran longer than --deadline + ${CP_MARGIN}s = $((DEADLINE + CP_MARGIN))s (longest ${longest_a}s of $a_n)" \
    [ "$a_n" -gt 0 -a "$a_max" -le "$limit_us" ]
echo "# archiving cps: $a_n, failed $a_fail (retried by PostgreSQL); slowest:"
slowest() { # LOG [N]: the N slowest cps
    sort -k2,2nr "$1" | head -n "${2:-3}" |
        awk '{ e = ""; for (i = 6; i <= NF; i++) e = e " " $i; printf "#   %s %.1fs exit %s%s\n", $4, $2 / 1e6, $3, e }'
}
slowest "$ARCH_LOG"

# ------------------------------------------------ 5. recovery through the same faulty proxy
TR=$SECONDS
rec_ok=1
if [[ -n ${FAULT_RESTORE_OUTAGE_AT:-} ]]; then # not by default: radosgw down during recovery too
    { sleep "$FAULT_RESTORE_OUTAGE_AT"; outage; } >"$SCRATCH/outage-restore.log" 2>&1 &
    OUTAGE_PID=$!
fi
PG_TIMEOUT=$RECOVERY_TIMEOUT pg_recover restored "$(pg_free_port $((PORT0 + 1)))" "$SCRATCH/backup" \
    "$TIMED_CP restore $REST_LOG $MNT/wal_005/%f %p" || rec_ok=0
got="-"
if [[ $rec_ok == 1 ]]; then got="$(pg_results restored) / $(bench_sums restored)"; fi
echo "# $(now) recovery took $((SECONDS - TR)) s"
if [[ -n $OUTAGE_PID ]]; then
    wait "$OUTAGE_PID"; outage_rc=$?; OUTAGE_PID=
    sed 's/^/# outage: /' "$SCRATCH/outage-restore.log"
    check "radosgw killed (SIGKILL) ${FAULT_RESTORE_OUTAGE_AT}s into recovery, down ${OUTAGE}s, restarted" [ "$outage_rc" -eq 0 ]
fi
check "a server recovered through the faulty proxy reaches the primary's results ($expected; got $got)" \
    [ "$rec_ok" -eq 1 -a "$got" == "$expected" ]
read -r r_n r_max r_fail r_enoent r_other <<<"$(cp_stats "$REST_LOG")"
r_ok=0 r_differ=0
while read -r _ _ rc name sum _; do
    [[ $rc == 0 ]] || continue
    r_ok=$((r_ok + 1))
    if [[ ${ASUM[$name]:-} != "$sum" ]]; then
        r_differ=$((r_differ + 1)); echo "# restored $name differs from what was archived"
    fi
done <"$REST_LOG"
check "every segment restored is byte-identical to the archived one ($r_ok restored, $r_differ differ)" \
    [ "$r_ok" -gt 0 -a "$r_differ" -eq 0 ]
check "no restoring cp failed with anything but ENOENT ($r_other did; $r_enoent ENOENT)" [ "$r_n" -gt 0 -a "$r_other" -eq 0 ]
if [[ $r_other -gt 0 ]]; then
    awk '$3 != 0 && $0 !~ /No such file/ { e = ""; for (i = 6; i <= NF; i++) e = e " " $i
                                           printf "#   %s %.1fs exit %s%s\n", $4, $2 / 1e6, $3, e }' "$REST_LOG" | head -n 5
fi
longest_r=$(awk -v m="$r_max" 'BEGIN { printf "%.1f", m / 1e6 }')

# ------------------------------------------------ 6. figures, clean unmount
faults=$(stat_get '" ".join(f"{k}={v}" for k, v in sorted(d["faults"].items()))')
fallbacks=$(stat_get '" ".join(f"{k}={v}" for k, v in sorted(d["fallbacks"].items())) or "none"')
REQ1=$(stat_get 'd["requests"]') FAULT1=$(stat_get 'd["faults_total"]') UPERR=$(stat_get 'd["upstream_errors"]')
req=$((REQ1 - REQ0)) flt=$((FAULT1 - FAULT0))
kinds_hit=$(stat_get 'sum(1 for k in d["kinds"] if d["faults"].get(k, 0) > 0)')
kinds_all=$(stat_get 'len(d["kinds"])')
share=$(awk -v f="$flt" -v r="$req" 'BEGIN { printf "%.3f", r ? f / r : 0 }')
check "the proxy faulted about $RATE of the requests ($flt of $req = $share) with every kind ($kinds_hit of $kinds_all)" \
    awk -v s="$share" -v r="$RATE" -v h="$kinds_hit" -v a="$kinds_all" 'BEGIN { exit !(s >= r * 0.6 && s <= r * 1.4 && h == a) }'
echo "rate=0" >"$CTL"
pg_stop restored; pg_stop primary
check "walfs unmounts cleanly" walfs_umount "$MNT"

echo "# ---- figures (seed $SEED) ----"
echo "# requests through the proxy: $REQ1 ($req with faults on); faults injected: $FAULT1 ($share while on)"
echo "# faults by kind: $faults; fallbacks: $fallbacks; upstream errors (radosgw down): $UPERR"
echo "# segments archived: $n_segments (files $n_archived); lost: $lost; corrupt: $corrupt; differ: $differ"
echo "# archiving cps: $a_n, $a_fail failed ($a_other not ENOENT); longest ${longest_a}s (limit $((DEADLINE + CP_MARGIN))s)"
echo "# restoring cps: $r_n, $r_ok ok, $r_enoent ENOENT, $r_other other failures; longest ${longest_r}s"
echo "# walfs log: $(grep -c . "$WLOG") lines, $(grep -c 'retrying in' "$WLOG") retries logged (debug only)," \
    "$(grep -cE 'ERROR|WARN' "$WLOG") warnings/errors:"
grep -E 'ERROR|WARN' "$WLOG" | sed -E 's/^[^ ]+ //; s/[0-9A-F]{24}/<seg>/g' | sort | uniq -c | sort -nr | head -n 8 | sed 's/^/#   /'
echo "# runtime $((SECONDS - T0)) s"
t_summary
