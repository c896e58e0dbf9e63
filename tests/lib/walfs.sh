# shellcheck shell=bash
# tests/lib/walfs.sh — mount and unmount walfs in tests, the way an operator
# runs it: as the postgres user, with its log in a file.  WALFS_MODE picks how:
#   foreground (default)  walfs -f in a background job of the test
#   daemon                walfs daemonizes as README says to run it, with
#                         --log-file, and HOME a fresh directory without
#                         ~/.cache, so the default cache directory must be
#                         created (unless the caller passes --cache-dir)
# Every mount made here is unmounted by walfs_cleanup.
#
#   walfs_mount MNT PREFIX [walfs options...]   mount, wait until it serves
#                                               (a --cache-dir among the options replaces
#                                               the per-mount default)
#                                               (PREFIX "-": none, from the environment;
#                                               WALFS_WRAPPER="envdir DIR" runs walfs under it)
#   walfs_umount MNT                            unmount, wait for the daemon,
#                                               fail if it exited non-zero or a
#                                               sanitizer reported anything
#   walfs_log MNT                               path of that mount's log
#   walfs_pid MNT                               the serving process (the daemon's own pid)
#   walfs_cache_dir MNT                         that mount's cache directory
#   walfs_cleanup                               lazy-unmount and kill leftovers
#
# WALFS_BIN (default build/release/walfs) picks the build; WALFS_USER
# (default postgres) the user; WALFS_SCRATCH a directory for logs and caches.

: "${WALFS_BIN:=build/release/walfs}"
: "${WALFS_USER:=postgres}"
WALFS_BIN=$(readlink -f "$WALFS_BIN")
: "${WALFS_MODE:=foreground}"
declare -gA _WALFS_PID _WALFS_LOG _WALFS_CACHE
_WALFS_MOUNTS=()

_walfs_prepare() {
    [[ -n ${WALFS_SCRATCH:-} ]] || WALFS_SCRATCH=$(mktemp -d /tmp/walfs-mnt.XXXXXX)
    chmod 0755 "$WALFS_SCRATCH"
    chown "$WALFS_USER" "$WALFS_SCRATCH"
    # This machine ships /dev/fuse as 0600; a stock Debian has 0666.
    [[ $(stat -c %a /dev/fuse) == 666 ]] || chmod 0666 /dev/fuse
    # The tests look into postgres's mounts as root, which needs allow_other,
    # which an unprivileged mounter may only ask for with user_allow_other.
    grep -qsx 'user_allow_other' /etc/fuse.conf || echo user_allow_other >> /etc/fuse.conf
}

walfs_log() { echo "${_WALFS_LOG[$1]}"; }
walfs_pid() { echo "${_WALFS_PID[$1]}"; }
walfs_cache_dir() { echo "${_WALFS_CACHE[$1]}"; }

# The daemon of the mount at $1: the walfs process whose arguments name it.
_walfs_find_daemon() {
    local mnt=$1 pid
    for pid in $(pgrep -u "$WALFS_USER"); do
        [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$WALFS_BIN" ]] || continue
        tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$mnt" && { echo "$pid"; return 0; }
    done
    return 1
}

walfs_mount() {
    local mnt=$1 prefix=$2; shift 2
    _walfs_prepare
    mkdir -p "$mnt"
    chown "$WALFS_USER" "$mnt"
    local n=${#_WALFS_MOUNTS[@]}
    while [[ -e $WALFS_SCRATCH/walfs-$n.log ]]; do n=$((n + 1)); done # mounts made in subshells
    local log="$WALFS_SCRATCH/walfs-$n.log"
    local cache="$WALFS_SCRATCH/cache-$n"
    _WALFS_LOG[$mnt]=$log
    # setpriv execs walfs itself, so $! is the daemon and its exit status ours.
    local prefix_arg=("$prefix")
    [[ $prefix == - ]] && prefix_arg=()
    local wrapper=() cache_arg=(--cache-dir="$cache") a home=$WALFS_SCRATCH
    [[ -n ${WALFS_WRAPPER:-} ]] && read -r -a wrapper <<<"$WALFS_WRAPPER"
    if [[ $WALFS_MODE == daemon ]]; then
        # README's mode: no --cache-dir, a home without ~/.cache.
        home=$WALFS_SCRATCH/home-$n
        mkdir -p "$home"
        chown "$WALFS_USER" "$home"
        cache_arg=()
        cache=$home/.cache/walfs
    fi
    for a in "$@"; do
        if [[ $a == --cache-dir=* ]]; then cache_arg=(); cache=${a#--cache-dir=}; fi # the caller's own
    done
    _WALFS_CACHE[$mnt]=$cache
    _WALFS_MOUNTS+=("$mnt")
    if [[ $WALFS_MODE == daemon ]]; then
        # The sanitizers write where the daemon's stderr (now /dev/null) cannot.
        local rc=0 i
        : >"$log"
        chown "$WALFS_USER" "$log"
        ASAN_OPTIONS="${ASAN_OPTIONS:-}:log_path=$log.sanitizer" \
        UBSAN_OPTIONS="${UBSAN_OPTIONS:-}:log_path=$log.sanitizer" \
        setpriv --reuid="$WALFS_USER" --regid="$WALFS_USER" --init-groups \
            env HOME="$home" "${wrapper[@]}" "$WALFS_BIN" -o allow_other,default_permissions \
            "${prefix_arg[@]}" "$mnt" --log-file="$log" "${cache_arg[@]}" "$@" \
            >"$log.start" 2>&1 || rc=$?
        if [[ $rc -ne 0 ]] || ! grep -qs " $mnt fuse" /proc/mounts; then
            echo "walfs (daemon) did not mount $mnt (exit $rc):" >&2
            cat "$log.start" "$log" >&2 2>/dev/null
            return 1
        fi
        for ((i = 0; i < 50; i++)); do
            _WALFS_PID[$mnt]=$(_walfs_find_daemon "$mnt") && return 0
            sleep 0.1
        done
        echo "walfs mounted $mnt but its daemon process was not found" >&2
        return 1
    fi
    setpriv --reuid="$WALFS_USER" --regid="$WALFS_USER" --init-groups \
        env HOME="$home" "${wrapper[@]}" "$WALFS_BIN" -f -o allow_other,default_permissions \
        "${prefix_arg[@]}" "$mnt" "${cache_arg[@]}" "$@" \
        >"$log" 2>&1 &
    _WALFS_PID[$mnt]=$!
    local i
    for ((i = 0; i < 100; i++)); do
        if grep -qs " $mnt fuse" /proc/mounts; then
            return 0
        fi
        if ! kill -0 "${_WALFS_PID[$mnt]}" 2>/dev/null; then
            echo "walfs exited before mounting $mnt:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "walfs did not mount $mnt within 10 s:" >&2
    cat "$log" >&2
    return 1
}

# Sanitizer reports in a log mean a bug even when the exit status is 0.
walfs_log_clean() {
    ! grep -qsE 'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:' "$1" "$1".sanitizer*
}

# Running, and not a zombie: an exited daemon's parent is init, which on
# these machines reaps orphans only every ~2 s.
_walfs_alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

walfs_umount() {
    local mnt=$1 pid=${_WALFS_PID[$1]:-} rc=0 i
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true
    if [[ -n $pid ]]; then
        for ((i = 0; i < 300; i++)); do
            _walfs_alive "$pid" || break
            sleep 0.1
        done
        if _walfs_alive "$pid"; then
            echo "walfs for $mnt did not exit within 30 s after unmount" >&2
            kill -9 "$pid" 2>/dev/null
            rc=1
        fi
        if [[ $WALFS_MODE != daemon ]]; then
            wait "$pid" 2>/dev/null || rc=$?
        elif ! grep -q "walfs unmounted from" "${_WALFS_LOG[$mnt]}"; then
            echo "walfs (daemon) for $mnt did not log its clean exit" >&2
            rc=1
        fi
        unset "_WALFS_PID[$mnt]"
    fi
    if ! walfs_log_clean "${_WALFS_LOG[$mnt]}"; then
        echo "sanitizer report in $(walfs_log "$mnt"):" >&2
        grep -A30 -E 'Sanitizer|runtime error' "${_WALFS_LOG[$mnt]}" "${_WALFS_LOG[$mnt]}".sanitizer* 2>/dev/null | head -60 >&2
        rc=1
    fi
    if [[ $rc -ne 0 ]]; then
        echo "walfs for $mnt exited with status $rc; log tail:" >&2
        tail -n 20 "${_WALFS_LOG[$mnt]}" >&2
    fi
    return $rc
}

walfs_cleanup() {
    local mnt
    for mnt in "${_WALFS_MOUNTS[@]}"; do
        if grep -qs " $mnt fuse" /proc/mounts; then
            fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        fi
        local pid=${_WALFS_PID[$mnt]:-}
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            sleep 0.5
            kill "$pid" 2>/dev/null || true
        fi
    done
    _WALFS_MOUNTS=()
}

# --- tiny assertion helpers shared by the shell suites ---
_T_PASSED=0
_T_FAILED=0
ok() { _T_PASSED=$((_T_PASSED + 1)); echo "ok - $*"; }
not_ok() { _T_FAILED=$((_T_FAILED + 1)); echo "not ok - $*"; }
# check "description" command...: ok when the command succeeds
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
# A suite that ran no check proved nothing: it fails, like one that failed a check.
t_summary() {
    echo "$_T_PASSED passed, $_T_FAILED failed"
    [[ $_T_PASSED -gt 0 ]] || echo "# no check passed: the suite proved nothing"
    [[ $_T_FAILED -eq 0 && $_T_PASSED -gt 0 ]]
}
# ls_lacks DIR ERE: DIR lists, and no entry (dot files too) matches ERE whole.  A directory
# that cannot be listed (dead mount, EIO) is not evidence of absence.
ls_lacks() {
    local out
    out=$(ls -A "$1" 2>&1) || { echo "# ls $1 failed: ${out:0:200}"; return 1; }
    ! grep -qxE -- "$2" <<<"$out"
}

# --- shared set-up of the shell suites ---
# t_require TOOL...: stop with one failed check if a tool is missing.
t_require() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null && continue
        echo "needs $tool (install the dependencies with scripts/install-deps.sh)"
        echo "0 passed, 1 failed"
        exit 1
    done
}
# t_scratch TAG: a fresh scratch directory in SCRATCH, with WALFS_SCRATCH
# and PG_SCRATCH (exported) inside it, readable by the postgres user.
t_scratch() {
    SCRATCH=$(mktemp -d "/tmp/walfs-t-$1.XXXXXX")
    chmod 0755 "$SCRATCH"
    WALFS_SCRATCH=$SCRATCH/walfs
    PG_SCRATCH=$SCRATCH/pg
    mkdir -p "$WALFS_SCRATCH" "$PG_SCRATCH"
    export PG_SCRATCH
}
