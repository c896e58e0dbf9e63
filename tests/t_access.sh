#!/bin/bash
# Other local users (issue 10, item 2) and what names can do to the log
# (item 11).  walfs mounted by root with `-o allow_other` and nothing else:
#  (a) user nobody may not read global/1260 (pg_authid, 0600 in the tar),
#      archive into wal_005, list it, or start a push with mkdir in
#      basebackups_005; root, the owner, may do all of it; wal_005 is 0700
#      with 0600 files, as PostgreSQL keeps pg_wal;
#  (b) with -o uid=postgres,gid=postgres postgres owns /, wal_005 and
#      basebackups_005 and may do all of it, nobody still nothing, and the
#      file:// archive is written with 0600 files in 0700 directories;
#  (c) with -o uid=nobody the tar modes still hold: nobody enters the backup
#      but may not read pg_authid (0600 in global/ 0700, uid 101 in the tar);
#  (d) a name with a newline is one escaped log line, not a forged one, and
#      a name starting .walfs-tmp. (which a file:// archive never lists) is
#      refused at create;
#  (e) a --cache-dir (or a directory walfs makes in it) that another user
#      could write, or a symlink, is refused at startup with a message.
# No S3 server: the fixture is a file:// archive.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/walfs.sh

t_scratch access
trap 'walfs_cleanup; rm -rf "$SCRATCH"' EXIT
FIXTURE=tests/fixtures/wale-pg15-a/pgdb
FXNAME=base_000000010000000000000002_00000040
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mode_of() { stat -c %a "$1" 2>/dev/null; }
owner_of() { stat -c %U "$1" 2>/dev/null; }
# refused CMD...: CMD fails because access is refused (EACCES or EPERM), not
# for another reason (a dead mount, a missing source file).
refused() {
    local out
    out=$("$@" 2>&1 >/dev/null) && { echo "# $* succeeded"; return 1; }
    grep -qE "Permission denied|Operation not permitted" <<<"$out" && return 0
    echo "# $* failed, but not for want of permission: ${out:0:200}"
    return 1
}

# root_mount MNT ARCHIVE [walfs options...]: as root, with -o allow_other
# only (not walfs_mount's allow_other,default_permissions), registered with
# tests/lib/walfs.sh so walfs_umount and walfs_cleanup know it.
root_mount() {
    local mnt=$1 archive=$2 n=${#_WALFS_MOUNTS[@]} i; shift 2
    mkdir -p "$mnt"
    _WALFS_LOG[$mnt]=$WALFS_SCRATCH/walfs-$n.log
    _WALFS_MOUNTS+=("$mnt")
    "$WALFS_BIN" -f -o allow_other "file://$archive" "$mnt" --cache-dir="$WALFS_SCRATCH/cache-$n" \
        "$@" >"${_WALFS_LOG[$mnt]}" 2>&1 &
    _WALFS_PID[$mnt]=$!
    for ((i = 0; i < 100; i++)); do
        grep -qs " $mnt fuse" /proc/mounts && return 0
        kill -0 "${_WALFS_PID[$mnt]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "# walfs did not mount $mnt:"; sed 's/^/#   /' "${_WALFS_LOG[$mnt]}"
    return 1
}

printf 'forged history\n' >"$SCRATCH/seg"
chmod 0644 "$SCRATCH/seg"

# --- (a) root's mount, -o allow_other ---
A=$SCRATCH/archive-a
cp -a "$FIXTURE" "$A"
M=$SCRATCH/mnt-a
if root_mount "$M" "$A"; then
    member=$M/basebackups_005/$FXNAME/global/1260
    check "[a] wal_005 is 0700 (got $(mode_of "$M/wal_005"))" [ "$(mode_of "$M/wal_005")" == 700 ]
    check "[a] ... owned by the mounting user, root (got $(owner_of "$M/wal_005"))" \
        [ "$(owner_of "$M/wal_005")" == root ]
    w=$M/wal_005/000000010000000000000001
    check "[a] a WAL file is 0600 (got $(mode_of "$w"))" [ "$(mode_of "$w")" == 600 ]
    out=$(as_nobody cat "$member" 2>&1 >/dev/null)
    check "[a] nobody reading global/1260 (pg_authid) gets EACCES ($out)" grep -q "Permission denied" <<<"$out"
    check "[a] nobody cannot cp into wal_005" refused as_nobody cp "$SCRATCH/seg" "$M/wal_005/00000009.history"
    check "[a] ... and nothing was archived" [ ! -e "$A/wal_005/00000009.history.lzo" ]
    check "[a] nobody cannot start a push (mkdir basebackups_005/x)" refused as_nobody mkdir "$M/basebackups_005/x"
    check "[a] ... and no push was started" ls_lacks "$M/basebackups_005" x
    out=$(as_nobody ls "$M/wal_005" 2>&1)
    check "[a] nobody cannot list wal_005 ($out)" grep -q "Permission denied" <<<"$out"
    check "[a] root (the owner) reads global/1260 (8192 bytes)" [ "$(wc -c <"$member")" == 8192 ]
    check "[a] root lists wal_005" bash -c "ls '$M/wal_005' | grep -qx 000000010000000000000001"
    check "[a] root archives into wal_005" cp "$SCRATCH/seg" "$M/wal_005/00000009.history"
    check "[a] ... and it is stored" lzop -qt "$A/wal_005/00000009.history.lzo"
    check "[a] the stored object is 0600 (got $(mode_of "$A/wal_005/00000009.history.lzo"))" \
        [ "$(mode_of "$A/wal_005/00000009.history.lzo")" == 600 ]
    check "[a] root starts a push (mkdir basebackups_005/rootpush)" mkdir -m 0777 "$M/basebackups_005/rootpush"
    check "[a] ... which others may not write into, asked 0777 (got $(mode_of "$M/basebackups_005/rootpush"))" \
        [ "$(mode_of "$M/basebackups_005/rootpush")" == 755 ]
    check "[a] ... nobody cannot create a file in it" refused as_nobody touch "$M/basebackups_005/rootpush/f"
    check "[a] ... and root removes it again" rmdir "$M/basebackups_005/rootpush"

    # (d) the log
    evil=$(printf 'evil\n2026-01-01T00:00:00.000Z walfs ERROR: forged')
    mkdir "$M/$evil" 2>/dev/null
    log=$(walfs_log "$M")
    check "[d] a name with a newline forges no log line" bash -c "! grep -q '^2026-01-01T00:00:00.000Z walfs ERROR: forged' '$log'"
    check "[d] ... it is logged escaped, with the reason after it" \
        grep -qF 'mkdir /evil\n2026-01-01T00:00:00.000Z walfs ERROR: forged refused: ' "$log"
    out=$(cp "$SCRATCH/seg" "$M/wal_005/.walfs-tmp.00000009.history" 2>&1)
    rc=$?
    check "[d] cp to a name starting .walfs-tmp. fails ($out)" [ $rc -ne 0 ]
    check "[d] ... with EINVAL" grep -q "Invalid argument" <<<"$out"
    check "[d] ... and the log says the name is reserved" grep -q "names starting .walfs-tmp. are reserved" "$log"
    check "[a] walfs unmounts cleanly" walfs_umount "$M"
else
    not_ok "[a] root mounts with -o allow_other"
fi

# --- (b) -o uid=postgres,gid=postgres: postgres owns the mount ---
B=$SCRATCH/archive-b
cp -a "$FIXTURE" "$B"
rm -rf "$B/wal_005"
M=$SCRATCH/mnt-b
if root_mount "$M" "$B" -o uid=postgres,gid=postgres; then
    member=$M/basebackups_005/$FXNAME/global/1260
    check "[b] / wal_005 basebackups_005 are postgres's ($(owner_of "$M") $(owner_of "$M/wal_005") $(owner_of "$M/basebackups_005"))" \
        [ "$(owner_of "$M") $(owner_of "$M/wal_005") $(owner_of "$M/basebackups_005")" == "postgres postgres postgres" ]
    check "[b] postgres archives into wal_005" as_pg cp "$SCRATCH/seg" "$M/wal_005/00000009.history"
    check "[b] postgres lists wal_005" bash -c "setpriv --reuid=postgres --regid=postgres --init-groups ls '$M/wal_005' | grep -qx 00000009.history"
    check "[b] postgres reads it back, 0600 and its own" \
        bash -c "[ \"\$(stat -c '%a %U' '$M/wal_005/00000009.history')\" == '600 postgres' ] && setpriv --reuid=postgres --regid=postgres --init-groups cmp -s '$M/wal_005/00000009.history' '$SCRATCH/seg'"
    check "[b] postgres reads global/1260 (its tar owner is uid 101, postgres here)" \
        [ "$(as_pg wc -c <"$member")" == 8192 ]
    check "[b] postgres starts a push and removes it" \
        bash -c "setpriv --reuid=postgres --regid=postgres --init-groups mkdir '$M/basebackups_005/pgpush' && setpriv --reuid=postgres --regid=postgres --init-groups rmdir '$M/basebackups_005/pgpush'"
    check "[b] nobody still cannot read global/1260" refused as_nobody cat "$member"
    check "[b] nobody still cannot cp into wal_005" refused as_nobody cp "$SCRATCH/seg" "$M/wal_005/0000000A.history"
    check "[b] nobody still cannot start a push" refused as_nobody mkdir "$M/basebackups_005/y"
    check "[b] the file:// archive's new wal_005 is 0700 (got $(mode_of "$B/wal_005"))" [ "$(mode_of "$B/wal_005")" == 700 ]
    check "[b] ... and its object 0600 (got $(mode_of "$B/wal_005/00000009.history.lzo"))" \
        [ "$(mode_of "$B/wal_005/00000009.history.lzo")" == 600 ]
    check "[b] walfs unmounts cleanly" walfs_umount "$M"
else
    not_ok "[b] root mounts with -o allow_other,uid=postgres,gid=postgres"
fi

# --- (c) -o uid=nobody: the tar's own modes and owners are enforced ---
M=$SCRATCH/mnt-c
if root_mount "$M" "$A" -o uid=nobody,gid=nogroup; then
    member=$M/basebackups_005/$FXNAME/global/1260
    check "[c] nobody (owner of the mount) enters the backup" as_nobody ls "$M/basebackups_005/$FXNAME" >/dev/null
    check "[c] global/ keeps its tar mode and owner ($(stat -c '%a %u' "$M/basebackups_005/$FXNAME/global"))" \
        [ "$(stat -c '%a %u' "$M/basebackups_005/$FXNAME/global")" == "700 101" ]
    check "[c] global/1260 keeps its tar mode and owner ($(stat -c '%a %u' "$member"))" \
        [ "$(stat -c '%a %u' "$member")" == "600 101" ]
    out=$(as_nobody cat "$member" 2>&1 >/dev/null)
    check "[c] ... so nobody may not read it ($out)" grep -q "Permission denied" <<<"$out"
    check "[c] walfs unmounts cleanly" walfs_umount "$M"
else
    not_ok "[c] root mounts with -o allow_other,uid=nobody,gid=nogroup"
fi

# --- (e) a cache directory another user can write is refused: its copies are
# served without being checked again, so a planted WAL copy would be served ---
# refuses CACHE_DIR PATTERN WHAT: walfs exits without mounting, saying PATTERN
refuses() {
    local dir=$1 pattern=$2 what=$3 M=$SCRATCH/mnt-e out rc
    mkdir -p "$M"
    out=$(timeout 20 "$WALFS_BIN" -f "file://$A" "$M" --cache-dir="$dir" 2>&1)
    rc=$?
    grep -qs " $M fuse" /proc/mounts && { fusermount3 -u "$M"; rc=0; }
    check "[e] $what: walfs refuses to mount (exit $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
    check "[e] ... saying so: $(grep -o "cache directory.*" <<<"$out" | head -c 160)" grep -q -- "$pattern" <<<"$out"
    check "[e] ... and what to do" grep -q "chmod go-w" <<<"$out"
}
E=$SCRATCH/cache-e
mkdir -p "$E/open" "$E/nobody" "$E/inner"
chmod 0777 "$E/open"
chown nobody "$E/nobody"
mkdir -m 0777 "$E/inner/objects"
ln -s "$E/open" "$E/link"
refuses "$E/open" "cache directory $E/open is not private: owner uid 0, mode 0777" "a cache directory of mode 0777"
refuses "$E/nobody" "cache directory $E/nobody is not private: owner uid $(id -u nobody), mode 0755" "one owned by nobody"
refuses "$E/inner" "cache directory $E/inner/objects is not private: owner uid 0, mode 0777" "its objects/ of mode 0777"
refuses "$E/link" "cache directory $E/link is not private: owner uid 0, mode 0777" "a symbolic link to such a directory"

out=$("$WALFS_BIN" --help 2>&1)
check "--help says allow_other implies default_permissions" grep -q "implies" <<<"$out"
check "--help documents -o uid=,gid=" grep -q -- "-o uid=USER,gid=GROUP" <<<"$out"
t_summary
