#!/usr/bin/env bash
# Self-test of the RGW harness (tests/lib/rgw.sh) and the reference S3 client
# (tests/lib/s3tool.py): start a throwaway RGW, round-trip an object, check that
# a wrong secret is refused, clean up.  Output: "ok - ..." / "not ok - ..." lines
# and a final "N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/rgw.sh
source "$HERE/lib/rgw.sh"

passed=0
failed=0
ok()     { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
check()  { local what=$1; shift; if "$@"; then ok "$what"; else not_ok "$what"; fi; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/walfs-rgw-harness.XXXXXX")
cleanup() {
    local rc=$?
    rgw_stop "$WORK/rgw" || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

s3() {
    S3_ENDPOINT=$RGW_ENDPOINT AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY \
        AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY python3 "$HERE/lib/s3tool.py" "$@"
}

if ! rgw_start "$WORK/rgw" "${RGW_TEST_PORT:-7480}"; then
    not_ok "rgw_start"
    echo "$passed passed, $failed failed"
    exit 1
fi
ok "rgw_start: S3 ready at $RGW_ENDPOINT"

bucket=harness-test
key='dir one/obj+name=%~.bin'          # characters that need URI encoding
head -c 3000000 /dev/urandom >"$WORK/in.bin"

check "mb $bucket" s3 mb "$bucket"
check "put $key" s3 put -m origin=harness "$bucket" "$key" "$WORK/in.bin"

if s3 get "$bucket" "$key" >"$WORK/out.bin" && cmp -s "$WORK/in.bin" "$WORK/out.bin"; then
    ok "get returns the same bytes"
else
    not_ok "get returns the same bytes"
fi

head_out=$(s3 head "$bucket" "$key" || true)
if grep -qx "size=3000000" <<<"$head_out" && grep -qx "x-amz-meta-origin=harness" <<<"$head_out"; then
    ok "head shows size and metadata"
else
    not_ok "head shows size and metadata: $head_out"
fi

ls_out=$(s3 ls "$bucket" "dir one/" || true)
if [[ $ls_out == "$key"$'\t'3000000 ]]; then
    ok "ls shows the object"
else
    not_ok "ls shows the object: '$ls_out'"
fi

rc=0
err=$(AWS_SECRET_ACCESS_KEY=wrong S3_ENDPOINT=$RGW_ENDPOINT AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY \
      python3 "$HERE/lib/s3tool.py" get "$bucket" "$key" 2>&1 >/dev/null) || rc=$?
if (( rc != 0 )) && [[ $err == *"403"*"SignatureDoesNotMatch"* ]]; then
    ok "wrong secret is refused: $err"
else
    not_ok "wrong secret is refused (rc=$rc): $err"
fi

check "rm $key" s3 rm "$bucket" "$key"
rc=0; s3 head "$bucket" "$key" >/dev/null 2>&1 || rc=$?
check "head after rm exits 3 (404)" test "$rc" -eq 3
check "rb $bucket" s3 rb "$bucket"

daemon_pids=$(cat "$WORK"/rgw/pids/*.pid)
rgw_stop "$WORK/rgw"
left=
for pid in $daemon_pids; do
    # gone, or at most a zombie about to be reaped
    if [[ -r /proc/$pid/stat ]]; then
        st=$(cat "/proc/$pid/stat" 2>/dev/null || true); st=${st##*) }
        [[ -z $st || ${st%% *} == Z ]] || left+=" $pid($(cat "/proc/$pid/comm" 2>/dev/null))"
    fi
done
check "rgw_stop leaves no daemons behind (pids: ${daemon_pids//$'\n'/ })" test -z "$left"

echo "$passed passed, $failed failed"
(( failed == 0 ))
