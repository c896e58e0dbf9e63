#!/bin/bash
# Listings of wal_005 from a huge or hostile archive (issue 10, items 3, 6, 9,
# 10, 12).  walfs is mounted through tests/lib/faultproxy.py in front of Ceph
# RGW; the proxy's list modes answer ListObjectsV2 requests as a hostile
# server would (or synthesize a large archive), everything else reaches RGW
# and its signature checks:
#   repeat-token   a page that hands back the token it was asked for: ls
#                  fails within --deadline, after a few requests
#   advancing      one new, greater key and a new token a page, forever:
#                  ls fails at the cap on pages (lowered to 200 by
#                  WALFS_S3_LIST_MAX_PAGES), not never
#   many:100000000 a listing that would take hours: once ls is killed,
#                  walfs stops listing
#   many:1000000   1 M keys: ls lists them all, walfs's peak RSS grows by a
#                  bounded amount (a page), not with the number of keys
#   huge-error:1e9 a 1 GB 403 body: ls fails, walfs reads only a few KiB of it
#   bad-keys       impossible entries (past the delimiter, outside the prefix,
#                  a negative size, an empty key) are skipped and logged; ls
#                  shows the others
#   bad-encoding   libxml2 prints nothing on walfs's stderr
#   echo-403       an error body echoing the request's Authorization and
#                  x-amz-security-token: neither reaches the log
#   echo-token-403 one echoing a 600-byte session token bare, cut short by
#                  walfs: no 16 bytes of its start reach the log
# Figures (requests, seconds, MiB) are printed as "# ..." lines.
#
# Knobs: RGW_TEST_PORT (7720), RGW_TEST_MON_PORT or RGW_MON_PORT (3420),
# FAULT_PROXY_PORT (7721), LISTING_KEYS (1000000), LISTING_RSS_MAX_MIB (64:
# allowed peak RSS growth while listing them), LISTING_KEEP=1 (keep scratch).
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh

t_require python3
t_scratch listing
RGW_PORT_ARG=${RGW_TEST_PORT:-7720}
RGW_MON_ARG=${RGW_TEST_MON_PORT:-${RGW_MON_PORT:-3420}}
PROXY_PORT=${FAULT_PROXY_PORT:-7721}
KEYS=${LISTING_KEYS:-1000000}
RSS_MAX=${LISTING_RSS_MAX_MIB:-64}
DEADLINE=5

PROXY_PID=
cleanup() {
    walfs_cleanup
    [[ -n $PROXY_PID ]] && { kill "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; }
    rgw_stop
    if [[ ${LISTING_KEEP:-0} == 1 ]]; then echo "# kept $SCRATCH" >&2; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
fail_out() { not_ok "$1"; t_summary; exit 1; }

FIXTURE=tests/fixtures/wale-pg15-a
BUCKET=walfs-listing
STATS=$SCRATCH/proxy-stats.json
CTL=$SCRATCH/proxy.ctl

rgw_start "$SCRATCH/rgw" "$RGW_PORT_ARG" "$RGW_MON_ARG" || fail_out "RGW starts"
rgw_s3 mb "$BUCKET" >/dev/null
rgw_s3 sync-up "$FIXTURE" "$BUCKET" >/dev/null
expected=$(awk -F'\t' '$1 ~ /^pgdb\/wal_005\// {sub("pgdb/wal_005/", "", $1); sub(/\.lzo$/, "", $1); print $1}' \
    "$FIXTURE/MANIFEST.txt" | sort)

echo "list=off" >"$CTL"
python3 tests/lib/faultproxy.py --upstream "$RGW_ENDPOINT" --listen "$PROXY_PORT" \
    --stats "$STATS" --control "$CTL" --port-file "$SCRATCH/proxy.port" \
    --log "$SCRATCH/proxy.log" --stall-seconds 60 >"$SCRATCH/proxy.out" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do [[ -s $SCRATCH/proxy.port ]] && break; sleep 0.1; done
[[ -s $SCRATCH/proxy.port ]] || { cat "$SCRATCH/proxy.out"; fail_out "fault proxy listens on $PROXY_PORT"; }

requests() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$STATS" "${1:-requests}"; }
# The control file is read when its mtime changes: make sure it does.
control() { sleep 0.01; echo "$*" >"$CTL.tmp"; mv "$CTL.tmp" "$CTL"; }
list_mode() { control "list=$1"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 >"/proc/$1/clear_refs"; }
now_s() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# bounded SECS OUT CMD...: CMD, its output in OUT; its exit status, or 124 when
# it still runs after SECS (then it is killed; one stuck in a FUSE request stays
# until its walfs is gone: the mount is left alone from then on)
bounded() {
    local secs=$1 out=$2 pid i
    shift 2
    "$@" >"$out" 2>&1 &
    pid=$!
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid"; return; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    return 124
}

export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
OPTS=(--endpoint="http://127.0.0.1:$PROXY_PORT" --addressing=path --deadline=$DEADLINE --connect-timeout=1)
# One mount per part, so that a listing that wedges one (before the fix) does
# not stop the others.  "paged": two keys a page, so RGW's own paging is used.
mount_part() { # NAME [paged] [walfs options...]
    local name=$1 mnt=$SCRATCH/mnt-$1
    shift
    if [[ ${1:-} == paged ]]; then
        shift
        WALFS_WRAPPER="env WALFS_S3_LIST_MAX_KEYS=2" walfs_mount "$mnt" "s3://$BUCKET/pgdb" "${OPTS[@]}" "$@"
    else
        walfs_mount "$mnt" "s3://$BUCKET/pgdb" "${OPTS[@]}" "$@"
    fi || fail_out "walfs mounts $mnt"
}
for part in loop endless catalog; do mount_part $part; done
# ASan keeps freed memory in a quarantine (256 MiB): a small one, so that the
# peak RSS measures what walfs holds.
ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=8:thread_local_quarantine_size_kb=256" mount_part big
mount_part intr --deadline=30
mount_part loop2 paged
WALFS_WRAPPER="env WALFS_S3_LIST_MAX_PAGES=200" walfs_mount "$SCRATCH/mnt-advance" "s3://$BUCKET/pgdb" \
    "${OPTS[@]}" || fail_out "walfs mounts $SCRATCH/mnt-advance"
mount_part bad paged
MNT=$SCRATCH/mnt

check "ls wal_005 through RGW's pages of two keys shows every fixture segment" \
    [ "$(ls "$MNT-loop2/wal_005" | sort)" == "$expected" ]
check "ls wal_005 with S3's page size shows every fixture segment" \
    [ "$(ls "$MNT-loop/wal_005" | sort)" == "$expected" ]

# --- item 3: a continuation token that repeats ---
list_mode repeat-token
for part in loop loop2; do
    r0=$(requests) t0=$(now_s)
    bounded 30 "$SCRATCH/ls.out" ls "$MNT-$part/wal_005"
    rc=$? t1=$(now_s) r1=$(requests)
    echo "# repeat-token ($part): ls exit $rc after $(secs "$t0" "$t1") s and $((r1 - r0)) requests"
    check "$part: a repeating continuation token fails ls (it does not hang)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
    check "$part: ... within --deadline ($DEADLINE s)" awk -v s="$(secs "$t0" "$t1")" -v d=$DEADLINE 'BEGIN { exit !(s <= d + 1) }'
    check "$part: ... after a handful of requests" [ $((r1 - r0)) -le 5 ]
    check "$part: ... with an EIO for ls" grep -q "Input/output error" "$SCRATCH/ls.out"
    check "$part: ... and a log line saying the listing would never end" grep -q "would never end" "$(walfs_log "$MNT-$part")"
done

# --- item 3: a listing that keeps going forward ends at the cap on pages ---
list_mode advancing
r0=$(requests) t0=$(now_s)
bounded 60 "$SCRATCH/ls.out" ls "$MNT-advance/wal_005"
rc=$? t1=$(now_s) r1=$(requests)
echo "# advancing listing (cap 200 pages): ls exit $rc after $(secs "$t0" "$t1") s and $((r1 - r0)) requests"
check "a listing that advances forever fails ls (it does not go on for ever)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "... with an EIO for ls" grep -q "Input/output error" "$SCRATCH/ls.out"
check "... after the cap's 200 pages, not many more" [ $((r1 - r0)) -ge 200 -a $((r1 - r0)) -le 205 ]
check "... and a log line naming the prefix and the cap" \
    grep -q "list .*pgdb/wal_005/\*: the server has sent 200 pages and says there are more; walfs stops a listing at 200 pages" \
    "$(walfs_log "$MNT-advance")"

# --- item 3: a listing nobody waits for stops; one of walfs's own fits in --deadline ---
list_mode many:100000000
ls -f "$MNT-endless/wal_005" >/dev/null 2>&1 &
LS_PID=$!
sleep 3
kill -9 "$LS_PID" 2>/dev/null
sleep 1
r0=$(requests)
sleep 5
r1=$(requests)
echo "# endless listing: $((r1 - r0)) requests in the 5 s after ls was killed"
check "once ls is killed, walfs stops listing (at most one request after)" [ $((r1 - r0)) -le 1 ]
# A request in flight: every answer stalls; the reader is killed meanwhile.
# The kernel holds a killed reader until walfs answers the interrupted
# request, so its exit shows when walfs gave the request up.
control rate=1 kinds=stall list=off
ls "$MNT-intr/wal_005" >/dev/null 2>&1 &
LS_PID=$!
sleep 2
t0=$(now_s)
kill -9 "$LS_PID" 2>/dev/null
for ((i = 0; i < 400; i++)); do kill -0 "$LS_PID" 2>/dev/null || break; sleep 0.1; done
t1=$(now_s)
control rate=0 list=many:100000000
echo "# a stalled listing request: the killed ls was gone $(secs "$t0" "$t1") s after the kill (--deadline=30)"
check "a listing request whose reader is killed is given up at once (under 3 s, not at --deadline)" \
    awk -v s="$(secs "$t0" "$t1")" 'BEGIN { exit !(s < 3) }'
check "... and the log says nobody waited for it" grep -q "nobody waits" "$(walfs_log "$MNT-intr")"
t0=$(now_s)
bounded 40 "$SCRATCH/ls.out" ls "$MNT-catalog/basebackups_005"
rc=$? t1=$(now_s)
echo "# endless listing of basebackups_005 (the catalog's): ls exit $rc after $(secs "$t0" "$t1") s"
# (about --deadline; a loaded machine's slow pages and ls's own calls get some slack)
check "the catalog's endless listing fails ls, after about --deadline" \
    awk -v s="$(secs "$t0" "$t1")" -v d=$DEADLINE -v rc=$rc 'BEGIN { exit !(rc != 0 && rc != 124 && s < 3 * d) }'
check "... and the log says the listing was not finished within the deadline" \
    grep -q "not finished within the deadline" "$(walfs_log "$MNT-catalog")"

# --- item 6: 1 M keys, streamed ---
PID_BIG=$(walfs_pid "$MNT-big")
list_mode "many:$KEYS"
reset_hwm "$PID_BIG"
base=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID_BIG/status")
r0=$(requests) t0=$(now_s)
bounded 300 "$SCRATCH/n.out" bash -c "ls -f '$MNT-big/wal_005' | wc -l"
t1=$(now_s) r1=$(requests)
n=$(cat "$SCRATCH/n.out")
peak=$(hwm_kib "$PID_BIG")
echo "# $KEYS keys: ls -f took $(secs "$t0" "$t1") s, $((r1 - r0)) requests; walfs RSS $(mib "$base") MiB before, peak $(mib "$peak") MiB (+$(mib $((peak - base))) MiB)"
check "ls -f wal_005 lists all $KEYS synthetic keys (and . ..)" [ "$n" == $((KEYS + 2)) ]
check "walfs's peak RSS grew by less than $RSS_MAX MiB listing them" [ $((peak - base)) -lt $((RSS_MAX * 1024)) ]
t0=$(now_s)
bounded 300 "$SCRATCH/n.out" bash -c "ls '$MNT-big/wal_005' | tail -n 1"
echo "# $KEYS keys: sorted ls took $(secs "$t0" "$(now_s)") s"
check "sorted ls ends with the greatest name" [ "$(cat "$SCRATCH/n.out")" == "$(printf '00000001%08X%08X' $(((KEYS - 1) >> 8)) $(((KEYS - 1) & 255)))" ]

# --- item 6: a 1 GB error body ---
list_mode huge-error:1000000000
reset_hwm "$PID_BIG"
base=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID_BIG/status")
s0=$(requests huge_error_sent) t0=$(now_s)
bounded 60 "$SCRATCH/ls.out" ls "$MNT-big/wal_005"
rc=$? t1=$(now_s)
sleep 0.5
s1=$(requests huge_error_sent)
peak=$(hwm_kib "$PID_BIG")
echo "# 1 GB 403 body: ls exit $rc after $(secs "$t0" "$t1") s; the proxy got $(((s1 - s0) / 1048576)) MiB of it out; walfs RSS peak +$(mib $((peak - base))) MiB"
check "a 403 with a 1 GB body fails ls" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "... with walfs's peak RSS up by less than 16 MiB" [ $((peak - base)) -lt 16384 ]
check "... and the log names the 403" grep -q "HTTP 403" "$(walfs_log "$MNT-big")"

# --- item 9: impossible keys in a page ---
LOG_BAD=$(walfs_log "$MNT-bad")
list_mode bad-keys
bounded 30 "$SCRATCH/ls.out" ls "$MNT-bad/wal_005"
check "impossible entries do not break ls: it shows the fixture segments, and only them" \
    [ "$(sort "$SCRATCH/ls.out")" == "$expected" ]
check "... the key past the delimiter is skipped and logged" grep -q "skipped the entry 'pgdb/wal_005/sub/000000010000000000000077.lzo'" "$LOG_BAD"
check "... the key outside the prefix is skipped and logged" grep -q "skipped the entry 'elsewhere/000000010000000000000078.lzo'" "$LOG_BAD"
check "... the negative size is skipped and logged" grep -q "skipped the entry 'pgdb/wal_005/000000010000000000000079.lzo': its size" "$LOG_BAD"

# --- item 10: libxml2 stays off stderr ---
list_mode bad-encoding
bounded 30 "$SCRATCH/ls.out" ls "$MNT-bad/wal_005"
check "a body libxml2 cannot decode fails the listing as malformed" grep -q "malformed" "$LOG_BAD"
check "... and libxml2 wrote nothing to walfs's stderr" bash -c "! grep -qE 'encoding error|I/O error|parser error' '$LOG_BAD'"

# --- item 12: credentials echoed back in an error body ---
list_mode echo-403
TOKEN=walfs-test-session-token-7f3a9c
AWS_SESSION_TOKEN=$TOKEN mount_part echo --skip-startup-check
LOG_ECHO=$(walfs_log "$MNT-echo")
bounded 30 "$SCRATCH/ls.out" ls "$MNT-echo/wal_005"
sleep 0.5
check "a 403 echoing the request fails ls, and the log says so" grep -q "HTTP 403" "$LOG_ECHO"
check "... the session token is not in the log" bash -c "! grep -q '$TOKEN' '$LOG_ECHO'"
check "... nor the signature" bash -c "! grep -qi 'Signature=' '$LOG_ECHO'"
check "... nor the Authorization header" bash -c "! grep -qi 'Authorization:' '$LOG_ECHO'"
check "... nor the secret key" bash -c "! grep -q '$RGW_SECRET_KEY' '$LOG_ECHO'"
check "... the redaction is said" grep -q "\[redacted\]" "$LOG_ECHO"
# A session token as long as STS's (hundreds of bytes), echoed bare: the
# message is cut before its end, and the prefix left is as secret.
LONG_TOKEN=walfs-long-token-$(printf '%0600d' 0 | tr 0 q)
list_mode echo-token-403
AWS_SESSION_TOKEN=$LONG_TOKEN mount_part echolong --skip-startup-check
LOG_LONG=$(walfs_log "$MNT-echolong")
bounded 30 "$SCRATCH/ls.out" ls "$MNT-echolong/wal_005"
sleep 0.5
check "a 403 echoing a long session token bare fails ls, and the log says so" grep -q "HTTP 403" "$LOG_LONG"
check "... no 16 bytes of the token's start are in the log (the message was cut before its end)" \
    bash -c "! grep -q '${LONG_TOKEN:0:16}' '$LOG_LONG'"
check "... the redaction is said" grep -q "the token \[redacted\]" "$LOG_LONG"

# A file:// archive is listed a page at a time too (1000 entries a page).
mkdir -p "$SCRATCH/local/wal_005"
(cd "$SCRATCH/local/wal_005" && for ((i = 0; i < 2500; i++)); do : >"$(printf '0000000100000000%08X.lzo' $i)"; done)
walfs_mount "$MNT-file" "file://$SCRATCH/local" || fail_out "walfs mounts a file:// archive"
check "ls -f of a file:// wal_005 with 2,500 segments (3 pages) shows each once" \
    [ "$(ls -f "$MNT-file/wal_005" | grep -c '^0000000100000000')" == 2500 -a \
      "$(ls "$MNT-file/wal_005" | sort -u | wc -l)" == 2500 ]
check "walfs unmounts mnt-file cleanly" walfs_umount "$MNT-file"

list_mode off
check "ls wal_005 works again once the server behaves" [ "$(ls "$MNT-bad/wal_005" | sort)" == "$expected" ]
for part in echolong echo bad advance loop2 intr catalog big endless loop; do
    check "walfs unmounts mnt-$part cleanly" walfs_umount "$MNT-$part"
done
t_summary
