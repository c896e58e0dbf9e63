# shellcheck shell=bash
# tests/lib/rgw.sh — a throwaway single-node Ceph RADOS Gateway on loopback for
# the walfs tests (see /work/shared/docs/s3-test-server.md for the why of each
# setting).  Source it from a bash test script:
#
#   source tests/lib/rgw.sh
#   rgw_start "$(mktemp -d)"          # or: rgw_start DIR PORT [MON_PORT]
#   trap rgw_stop EXIT
#   rgw_s3 mb mybucket                # tests/lib/s3tool.py with RGW_* credentials
#
# Functions
#   rgw_start DIR [PORT [MON_PORT]]  fresh cluster (mon + memstore OSD + radosgw)
#                                    under DIR, S3 user created, waits until a
#                                    signed request gets 200 and a wrongly
#                                    signed one 403.  Any previous cluster state
#                                    in DIR is discarded (memstore keeps nothing).
#   rgw_stop [DIR]                   stop the recorded daemons (TERM, then KILL
#                                    after a bounded wait); DIR stays, removable.
#   rgw_pause / rgw_resume           SIGSTOP / SIGCONT radosgw only (S3 "hangs")
#   rgw_kill_gateway [SIGNAL]        stop radosgw only (default TERM; KILL for a
#                                    crash); mon and OSD keep the data
#   rgw_restart_gateway              start radosgw again and wait until ready
#   rgw_ready                        0 if S3 answers 200 right now (2 s timeout)
#   rgw_s3 ARGS...                   run s3tool.py against this gateway
#
# Exported after rgw_start: RGW_ENDPOINT (http://127.0.0.1:PORT), RGW_ACCESS_KEY,
# RGW_SECRET_KEY, RGW_DIR, RGW_PORT, RGW_MON_PORT.  rgw_pause/resume/
# kill_gateway/restart_gateway/ready/s3 act on the cluster in $RGW_DIR (the one
# started last); rgw_stop takes a DIR to stop another one.
#
# Knobs (environment): RGW_MEMSTORE_BYTES (default 3 GiB), RGW_MON_PORT (msgr2
# port of the mon; default: first free port from 3300), RGW_START_TIMEOUT
# (seconds, default 60), RGW_ACCESS_KEY / RGW_SECRET_KEY (defaults below).
#
# DIR should be dedicated to the cluster: rgw_start resets its ceph.conf,
# keyring, monmap, mon/ osd/ rgw/ run/ log/ crash/ pids/ (nothing else in DIR is
# touched).  Start two clusters one after the other, not concurrently, unless
# their ports are given explicitly (the mon-port auto-pick is not race-free).
# Daemon PIDs live in DIR/pids/{mon,osd,rgw}.pid; only those PIDs are ever
# signalled, and only if /proc/PID/comm still names the expected daemon.
# Logs: DIR/log/*.log (ceph logs) and DIR/log/*.out (stdout/stderr).
# Note: the OSD binds ports in 6800-7300, so do not choose an RGW port there.

RGW_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${RGW_ACCESS_KEY:=walfstestaccess}"
: "${RGW_SECRET_KEY:=walfstestsecret0123456789}"
_RGW_MON_PORT_CHOSEN=                      # what rgw_start last picked itself
export RGW_ACCESS_KEY RGW_SECRET_KEY

_rgw_msg() { echo "[rgw] $*" >&2; }

_rgw_now() { echo "${EPOCHREALTIME/./}"; }   # microseconds

# Seconds left before the deadline in _RGW_DEADLINE (µs), at least 1.
_rgw_left() {
    local left=$(( (_RGW_DEADLINE - $(_rgw_now)) / 1000000 ))
    if (( left < 1 )); then left=1; fi
    echo "$left"
}

_rgw_expired() { (( $(_rgw_now) >= _RGW_DEADLINE )); }

# 0 if something listens on 127.0.0.1:PORT.
_rgw_port_busy() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# _rgw_alive PID COMM: PID exists, is not a zombie, and is the expected daemon.
_rgw_alive() {
    local pid=$1 comm=$2 stat c
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    c=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $c == "$comm" ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z && ${stat%% *} != X ]]
}

_rgw_comm() {
    case $1 in mon) echo ceph-mon ;; osd) echo ceph-osd ;; rgw) echo radosgw ;; esac
}

_rgw_pid() { cat "${2:-$RGW_DIR}/pids/$1.pid" 2>/dev/null || true; }

# _rgw_spawn NAME CMD...: start a daemon in the background, record its PID.
_rgw_spawn() {
    local name=$1; shift
    "$@" >>"$RGW_DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$RGW_DIR/pids/$name.pid"
    # Out of the job table: no "Killed" notices, a caller's bare `wait` does
    # not block on the daemons, and bash still reaps them when they exit.
    disown $!
}

# _rgw_stop_one NAME [DIR] [SIGNAL] [GRACE_SECONDS]
_rgw_stop_one() {
    local name=$1 dir=${2:-$RGW_DIR} sig=${3:-TERM} grace=${4:-10}
    local pid comm i
    pid=$(_rgw_pid "$name" "$dir")
    comm=$(_rgw_comm "$name")
    if [[ -n $pid ]] && _rgw_alive "$pid" "$comm"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true       # in case it was paused
        for (( i = 0; i < grace * 20; i++ )); do
            _rgw_alive "$pid" "$comm" || break
            sleep 0.05
        done
        if _rgw_alive "$pid" "$comm"; then
            _rgw_msg "$name (pid $pid) still running after ${grace}s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for (( i = 0; i < 100; i++ )); do
                _rgw_alive "$pid" "$comm" || break
                sleep 0.05
            done
        fi
    fi
    # Reap it if it is our child (otherwise a zombie lingers until we exit).
    if [[ -n $pid ]]; then wait "$pid" 2>/dev/null || true; fi
    rm -f "$dir/pids/$name.pid"
    return 0
}

_rgw_tail_logs() {
    local dir=${1:-$RGW_DIR} f
    for f in "$dir"/log/*.log "$dir"/log/*.out; do
        [[ -s $f ]] || continue
        echo "[rgw] ---- tail of $f ----" >&2
        tail -n 25 "$f" >&2 || true
    done
}

_rgw_fail() {
    _rgw_msg "ERROR: $*"
    _rgw_tail_logs "$RGW_DIR"
    rgw_stop "$RGW_DIR"
    return 1
}

_rgw_ceph() { timeout "$(_rgw_left)" ceph -c "$RGW_DIR/ceph.conf" --connect-timeout "$(_rgw_left)" "$@"; }

# Run s3tool.py against the gateway (extra env may be given by the caller).
rgw_s3() {
    S3_ENDPOINT=$RGW_ENDPOINT AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY \
        AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY AWS_REGION=${AWS_REGION:-us-east-1} \
        python3 "$RGW_LIB_DIR/s3tool.py" "$@"
}
# rgw_s3_absent BUCKET KEY: the gateway answered 404 for KEY.  Any other
# failure (gateway down, 403, a bad key) is not evidence of absence: it
# fails, saying so, so that a negative check cannot pass by accident.
rgw_s3_absent() {
    local out rc=0
    out=$(rgw_s3 head "$1" "$2" 2>&1) || rc=$?
    case $rc in
        3) return 0 ;;
        0) return 1 ;;
        *) echo "# HEAD $2 failed (s3tool exit $rc), cannot tell whether it exists: ${out:0:200}"; return 1 ;;
    esac
}

# 0 if a signed request with the right secret gets 200 right now.
rgw_ready() {
    S3TOOL_TIMEOUT=2 rgw_s3 lsb >/dev/null 2>&1
}

# 0 if a signed request with a wrong secret gets a 403 right now.
_rgw_rejects_bad_secret() {
    local err
    err=$(S3TOOL_TIMEOUT=2 RGW_SECRET_KEY=wrong-secret-for-readiness-check \
          rgw_s3 lsb 2>&1 >/dev/null) && return 1
    [[ $err == *"HTTP 403"* ]]
}

# Wait (until _RGW_DEADLINE) for: right secret -> 200, wrong secret -> 403.
_rgw_wait_ready() {
    while :; do
        if rgw_ready && _rgw_rejects_bad_secret; then return 0; fi
        local pid; pid=$(_rgw_pid rgw)
        _rgw_alive "$pid" radosgw || { _rgw_msg "radosgw (pid ${pid:-?}) exited"; return 1; }
        _rgw_expired && return 1
        sleep 0.1
    done
}

_rgw_write_conf() {
    local d=$RGW_DIR
    cat >"$d/ceph.conf" <<EOF
[global]
fsid = $1
mon host = [v2:127.0.0.1:$RGW_MON_PORT]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms mon client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
keyring = $d/keyring
run dir = $d/run
admin socket = $d/run/\$name.asok
pid file = $d/run/\$name.pid
crash dir = $d/crash
log file = $d/log/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $d/log/cluster.log
mon data = $d/mon
osd data = $d/osd
rgw data = $d/rgw
paxos propose interval = 0.05
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = $RGW_MEMSTORE_BYTES
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw dns name = localhost
rgw crypt require ssl = false
rgw gc obj min wait = 30
rgw gc processor period = 30
EOF
}

_rgw_start_gateway() {
    _rgw_spawn rgw radosgw -c "$RGW_DIR/ceph.conf" -n client.rgw -f
}

rgw_start() {
    local dir=${1:?usage: rgw_start DIR [PORT [MON_PORT]]} port=${2:-7480}
    local t0 fsid osd_uuid p
    t0=$(_rgw_now)
    _RGW_DEADLINE=$(( t0 + ${RGW_START_TIMEOUT:-60} * 1000000 ))
    : "${RGW_MEMSTORE_BYTES:=3221225472}"
    export RGW_MEMSTORE_BYTES

    mkdir -p "$dir" || { _rgw_msg "ERROR: cannot create $dir"; return 1; }
    dir=$(cd "$dir" && pwd)

    # A cluster of ours still running in DIR (or the one last started): stop it.
    for p in rgw osd mon; do
        if _rgw_alive "$(_rgw_pid "$p" "$dir")" "$(_rgw_comm "$p")"; then
            _rgw_msg "cluster already running in $dir, stopping it first"
            rgw_stop "$dir"
            break
        fi
    done

    RGW_DIR=$dir
    RGW_PORT=$port
    RGW_ENDPOINT=http://127.0.0.1:$port
    export RGW_DIR RGW_PORT RGW_ENDPOINT

    if _rgw_port_busy "$port"; then
        _rgw_msg "ERROR: 127.0.0.1:$port is already in use (another RGW?); pick another PORT"
        return 1
    fi
    # Mon port: MON_PORT argument, else RGW_MON_PORT set by the caller (a value
    # left over from our own auto-pick does not count), else auto-pick.
    local auto=$_RGW_MON_PORT_CHOSEN
    _RGW_MON_PORT_CHOSEN=
    if [[ -n ${3:-} ]]; then
        RGW_MON_PORT=$3
        _RGW_MON_PORT_CHOSEN=$3          # applies to this call only
    elif [[ -n ${RGW_MON_PORT:-} && $RGW_MON_PORT != "$auto" ]]; then
        :
    else
        # Default: first free port from 3300 (so a second cluster just works).
        for (( p = 3300; p < 3400; p++ )); do
            _rgw_port_busy "$p" || break
        done
        RGW_MON_PORT=$p
        _RGW_MON_PORT_CHOSEN=$p
    fi
    if _rgw_port_busy "$RGW_MON_PORT"; then
        _rgw_msg "ERROR: mon port 127.0.0.1:$RGW_MON_PORT is already in use"
        return 1
    fi
    export RGW_MON_PORT

    # Fresh state every time (memstore would lose the objects anyway).
    rm -rf "$dir"/{mon,osd,rgw,run,log,crash,pids} "$dir"/{ceph.conf,keyring,monmap}
    mkdir -p "$dir"/{mon,osd,rgw,run,log,crash,pids}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    _rgw_write_conf "$fsid"
    _rgw_msg "starting cluster in $dir (S3 127.0.0.1:$port, mon 127.0.0.1:$RGW_MON_PORT, memstore $RGW_MEMSTORE_BYTES bytes)"

    # mon
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$RGW_MON_PORT]" "$dir/monmap" \
        >"$dir/log/monmaptool.out" 2>&1 \
        || { _rgw_fail "monmaptool failed"; return 1; }
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' \
        >"$dir/log/authtool.out" 2>&1 \
        || { _rgw_fail "ceph-authtool failed"; return 1; }
    ceph-mon -c "$dir/ceph.conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" \
        >"$dir/log/mon-mkfs.out" 2>&1 \
        || { _rgw_fail "ceph-mon --mkfs failed"; return 1; }
    _rgw_spawn mon ceph-mon -c "$dir/ceph.conf" -i a -f

    # osd
    local id
    id=$(_rgw_ceph osd new "$osd_uuid" 2>>"$dir/log/ceph-cli.out") \
        || { _rgw_fail "'ceph osd new' failed (mon not reachable?)"; return 1; }
    [[ $id == 0 ]] || { _rgw_fail "'ceph osd new' returned id '$id', expected 0"; return 1; }
    ceph-osd -c "$dir/ceph.conf" -i 0 --mkfs --osd-uuid "$osd_uuid" \
        >"$dir/log/osd-mkfs.out" 2>&1 \
        || { _rgw_fail "ceph-osd --mkfs failed"; return 1; }
    _rgw_spawn osd ceph-osd -c "$dir/ceph.conf" -i 0 -f

    # S3 user (this also creates the RGW pools and waits for the OSD), then radosgw.
    timeout "$(_rgw_left)" radosgw-admin -c "$dir/ceph.conf" user create --uid=walfstest \
        --display-name="walfs test" --access-key="$RGW_ACCESS_KEY" --secret="$RGW_SECRET_KEY" \
        >"$dir/log/user-create.out" 2>&1 \
        || { _rgw_fail "radosgw-admin user create failed or timed out"; return 1; }
    _rgw_start_gateway

    if ! _rgw_wait_ready; then
        _rgw_fail "S3 not ready within ${RGW_START_TIMEOUT:-60}s (want 200 with the right secret, 403 with a wrong one)"
        return 1
    fi
    local us=$(( $(_rgw_now) - t0 ))
    _rgw_msg "ready at $RGW_ENDPOINT after $(( us / 1000000 )).$(printf %03d $(( us / 1000 % 1000 )))s (pids: mon $(_rgw_pid mon), osd $(_rgw_pid osd), rgw $(_rgw_pid rgw))"
    return 0
}

rgw_stop() {
    local dir=${1:-${RGW_DIR:-}}
    [[ -n $dir && -d $dir/pids ]] || return 0
    local any=0 p
    for p in rgw osd mon; do
        if [[ -n $(_rgw_pid "$p" "$dir") ]]; then any=1; fi
    done
    (( any )) || return 0
    _rgw_msg "stopping cluster in $dir"
    # Gateway first (clean shutdown needs the cluster), then the OSD while the
    # mon can still hear that it goes down, then the mon.
    _rgw_stop_one rgw "$dir" TERM 10
    _rgw_stop_one osd "$dir" TERM 10
    _rgw_stop_one mon "$dir" TERM 10
    _rgw_msg "stopped"
    return 0
}

rgw_pause() {
    local pid; pid=$(_rgw_pid rgw)
    _rgw_alive "$pid" radosgw || { _rgw_msg "rgw_pause: radosgw not running"; return 1; }
    kill -STOP "$pid"
    _rgw_msg "radosgw (pid $pid) paused"
}

rgw_resume() {
    local pid; pid=$(_rgw_pid rgw)
    _rgw_alive "$pid" radosgw || { _rgw_msg "rgw_resume: radosgw not running"; return 1; }
    kill -CONT "$pid"
    _rgw_msg "radosgw (pid $pid) resumed"
}

rgw_kill_gateway() {
    local sig=${1:-TERM} pid; pid=$(_rgw_pid rgw)
    _rgw_stop_one rgw "$RGW_DIR" "$sig" 10
    _rgw_msg "radosgw (pid ${pid:-none}) stopped with SIG$sig"
}

rgw_restart_gateway() {
    local t0; t0=$(_rgw_now)
    _RGW_DEADLINE=$(( t0 + ${RGW_START_TIMEOUT:-60} * 1000000 ))
    if _rgw_alive "$(_rgw_pid rgw)" radosgw; then _rgw_stop_one rgw "$RGW_DIR" TERM 10; fi
    local i
    for (( i = 0; i < 100; i++ )); do
        _rgw_port_busy "$RGW_PORT" || break
        sleep 0.05
    done
    _rgw_start_gateway
    if ! _rgw_wait_ready; then
        _rgw_msg "ERROR: radosgw not ready again within ${RGW_START_TIMEOUT:-60}s"
        _rgw_tail_logs "$RGW_DIR"
        return 1
    fi
    local us=$(( $(_rgw_now) - t0 ))
    _rgw_msg "radosgw restarted (pid $(_rgw_pid rgw)), ready after $(( us / 1000 )) ms"
}
