#!/bin/bash
# The main job end to end on the embedded default (a local directory as the
# archive, no S3 server needed), on a fresh Debian 12 machine (as root):
#   1. walfs mounts file:///…/archive at …/mnt, as the postgres user;
#   2. a PostgreSQL 15 primary archives with archive_command = 'cp %p MNT/wal_005/%f';
#   3. a base backup is taken, more WAL is archived;
#   4. a second server restores with restore_command = 'cp MNT/wal_005/%f %p'
#      and returns the primary's query results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
make -j2 release
source tests/lib/walfs.sh
WALFS_BIN=build/release/walfs
WALFS_MODE=daemon # as README runs it: daemonized, as postgres, default cache directory
WALFS_BIN=$(readlink -f "$WALFS_BIN")
DEMO=$(mktemp -d /tmp/walfs-demo.XXXXXX)
chmod 0755 "$DEMO"
WALFS_SCRATCH=$DEMO/walfs
mkdir -p "$WALFS_SCRATCH" "$DEMO/archive"
chown postgres "$DEMO/archive"
trap 'walfs_cleanup; rm -rf "$DEMO"' EXIT
walfs_mount "$DEMO/mnt" "file://$DEMO/archive"
echo "walfs: file://$DEMO/archive mounted at $DEMO/mnt"
bash tests/t_pg_harness.sh "$DEMO/mnt/wal_005"
echo
echo "archive contents (as WAL-E would see them):"
find "$DEMO/archive" -type f -printf '  %P  %s bytes\n' | sort
walfs_umount "$DEMO/mnt"
echo "demo finished: archive and restore through walfs worked"
