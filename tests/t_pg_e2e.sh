#!/bin/bash
# PostgreSQL 15 end to end through the mount, on both backends (Ceph RGW and
# the local-directory default): a primary archives with
#   archive_command = 'cp %p MNT/wal_005/%f'
# over repeated pg_switch_wal(); every archived segment is in the store as an
# lzop object identical to what PostgreSQL wrote; a pg_basebackup recovered
# with restore_command = 'cp MNT/wal_005/%f %p' (and a standby built from it)
# reaches the primary's query results.  The scenario itself lives in
# tests/t_pg_harness.sh, which runs here against the mount.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh

SCRATCH=$(mktemp -d /tmp/walfs-t-pg.XXXXXX)
chmod 0755 "$SCRATCH"
WALFS_SCRATCH=$SCRATCH/walfs
mkdir -p "$WALFS_SCRATCH"
cleanup() { walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"; }
trap cleanup EXIT

run_scenario() { # backend-label mountpoint
    local label=$1 mnt=$2 out line
    out=$(bash tests/t_pg_harness.sh "$mnt/wal_005" 2>&1)
    while IFS= read -r line; do
        case $line in
            "ok - "*) ok "[$label] ${line#ok - }" ;;
            "not ok - "*) not_ok "[$label] ${line#not ok - }" ;;
        esac
    done <<<"$out"
    if ! grep -qE '^[0-9]+ passed, 0 failed' <<<"$out"; then
        not_ok "[$label] PostgreSQL scenario completed"
        echo "$out" | tail -n 40 | sed 's/^/# /'
    fi
}

# Every object must be a valid lzop stream of what the mount serves.
verify_objects() { # label, fetch-command-prefix..., then names from the mount
    local label=$1 mnt=$2 getter=$3 n=0 bad=0 name
    for name in $(ls "$mnt/wal_005"); do
        n=$((n + 1))
        if ! $getter "$name" > "$SCRATCH/obj.lzo" || ! lzop -t "$SCRATCH/obj.lzo" 2>/dev/null ||
           ! cmp -s <(lzop -dc < "$SCRATCH/obj.lzo") "$mnt/wal_005/$name"; then
            bad=$((bad + 1))
            echo "# bad object: $name"
        fi
    done
    check "[$label] all $n archived objects pass lzop -t and match the mount" [ $n -gt 4 -a $bad -eq 0 ]
}

# --- local-directory backend ---
ARCHIVE=$SCRATCH/archive
mkdir -p "$ARCHIVE"
chown postgres "$ARCHIVE"
MNT=$SCRATCH/mnt-local
if walfs_mount "$MNT" "file://$ARCHIVE"; then
    run_scenario local "$MNT"
    get_local() { cat "$ARCHIVE/wal_005/$1.lzo"; }
    verify_objects local "$MNT" get_local
    check "[local] walfs unmounts cleanly" walfs_umount "$MNT"
else
    not_ok "[local] mount"
fi

# --- S3 backend on Ceph RGW ---
if rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7480}"; then
    rgw_s3 mb walfs-pg >/dev/null
    MNT=$SCRATCH/mnt-s3
    if AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY \
        walfs_mount "$MNT" s3://walfs-pg/cluster-a --endpoint="$RGW_ENDPOINT" --addressing=path; then
        run_scenario s3 "$MNT"
        get_s3() { rgw_s3 get walfs-pg "cluster-a/wal_005/$1.lzo"; }
        verify_objects s3 "$MNT" get_s3
        check "[s3] walfs unmounts cleanly" walfs_umount "$MNT"
    else
        not_ok "[s3] mount"
    fi
else
    not_ok "RGW started"
fi

t_summary
