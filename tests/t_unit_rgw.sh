#!/usr/bin/env bash
# The unit tests that need a real S3 server (build/{release,asan}/tests/*_rgw:
# the S3 client, streaming uploads and the backup writer) against one
# throwaway Ceph RGW started with tests/lib/rgw.sh.  They read RGW_ENDPOINT,
# RGW_ACCESS_KEY, RGW_SECRET_KEY and WALFS_TEST_BUCKET.  Ends with one
# "N passed, M failed" line summing every binary.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE/.."
# shellcheck source=lib/rgw.sh
source "$HERE/lib/rgw.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/walfs-unit-rgw.XXXXXX")
cleanup() {
    rgw_stop "$WORK/rgw" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=${RGW_TEST_PORT:-}
if [[ -z $port ]]; then
    # Another suite may hold 7480; take the first free port from 7600.
    for (( port = 7600; port < 7700; port++ )); do
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
for bin in build/release/tests/*_rgw build/asan/tests/*_rgw; do
    [[ -x $bin ]] || continue
    ran=1
    name=$(basename "$(dirname "$(dirname "$bin")")")/$(basename "$bin")
    echo "# $bin"
    "$bin" | tee "$WORK/out"
    rc=${PIPESTATUS[0]}
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$WORK/out" | tail -n 1)
    p=${summary%% passed*}
    f=${summary#*passed, }; f=${f%% failed*}
    [[ -z $summary ]] && { p=0; f=0; }
    if (( rc != 0 && f == 0 )); then
        f=1
        echo "not ok - $name exited with status $rc"
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done
if (( !ran )); then
    echo "not ok - no *_rgw test binary under build/ (run make release asan)"
    failed=1
fi
echo "$passed passed, $failed failed"
(( failed == 0 && passed > 0 ))
