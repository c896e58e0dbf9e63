#!/usr/bin/env bash
# Streaming uploads (store/s3.c) and backup_writer against a real Ceph RGW:
# starts a throwaway RGW with tests/lib/rgw.sh, creates a bucket, then runs
# build/{release,asan}/tests/test_backup_writer_rgw.  Ends with one
# "N passed, M failed" line summing both.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE/.."
# shellcheck source=lib/rgw.sh
source "$HERE/lib/rgw.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/walfs-bw-rgw.XXXXXX")
cleanup() {
    rgw_stop "$WORK/rgw" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=${RGW_TEST_PORT:-}
if [[ -z $port ]]; then
    # Another suite may hold 7480; take the first free port from 7700.
    for (( port = 7700; port < 7800; port++ )); do
        _rgw_port_busy "$port" || break
    done
fi
if ! rgw_start "$WORK/rgw" "$port"; then
    echo "not ok - rgw_start"
    echo "0 passed, 1 failed"
    exit 1
fi
export WALFS_TEST_BUCKET=walfs-bw-test
if ! rgw_s3 mb "$WALFS_TEST_BUCKET"; then
    echo "not ok - create bucket $WALFS_TEST_BUCKET"
    echo "0 passed, 1 failed"
    exit 1
fi

passed=0
failed=0
ran=0
for variant in release asan; do
    bin=${WALFS_BW_RGW_BIN:-build/$variant/tests/test_backup_writer_rgw}
    [[ -x $bin ]] || continue
    ran=1
    echo "# $bin"
    "$bin" | tee "$WORK/$variant.out"
    rc=${PIPESTATUS[0]}
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$WORK/$variant.out" | tail -n 1)
    p=${summary%% passed*}
    f=${summary#*passed, }; f=${f%% failed*}
    [[ -z $summary ]] && { p=0; f=0; }
    if (( rc != 0 && f == 0 )); then
        f=1
        echo "not ok - $bin exited with status $rc"
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    [[ -n ${WALFS_BW_RGW_BIN:-} ]] && break
done
if (( !ran )); then
    echo "not ok - no test_backup_writer_rgw binary under build/ (run make release asan)"
    failed=1
fi
echo "$passed passed, $failed failed"
(( failed == 0 && passed > 0 ))
