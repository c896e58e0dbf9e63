#!/bin/bash
# The command line: help, version, and clear errors for wrong invocations,
# plus the local-directory backend's write-once and corruption handling.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/walfs.sh
BIN=$WALFS_BIN
SCRATCH=$(mktemp -d /tmp/walfs-t-cli.XXXXXX)
chmod 0755 "$SCRATCH"
WALFS_SCRATCH=$SCRATCH/walfs
mkdir -p "$WALFS_SCRATCH"
trap 'walfs_cleanup; rm -rf "$SCRATCH"' EXIT

out=$("$BIN" --help 2>&1); rc=$?
check "--help exits 0" [ $rc -eq 0 ]
check "--help shows the usage line" grep -q "usage: .* \[options\] \[PREFIX\] MOUNTPOINT" <<<"$out"
check "--help documents archive_command" grep -q "archive_command" <<<"$out"
check "--help lists FUSE options" grep -q -- "-o allow_other" <<<"$out"
out=$("$BIN" --version 2>&1); rc=$?
check "--version exits 0" [ $rc -eq 0 ]
check "--version prints the version" grep -q '^walfs [0-9]' <<<"$out"

mkdir -p "$SCRATCH/m"
# fails_saying DESCRIPTION PATTERN COMMAND...: non-zero exit and PATTERN in the output
fails_saying() {
    local d=$1 pattern=$2 out rc
    shift 2
    out=$("$@" 2>&1); rc=$?
    if [[ $rc -ne 0 ]] && grep -q -- "$pattern" <<<"$out"; then
        ok "$d"
    else
        not_ok "$d (exit $rc): $out"
    fi
}
fails_saying "no arguments: says a mountpoint is missing" "no mountpoint" \
    env -u WALE_S3_PREFIX -u WALE_FILE_PREFIX "$BIN"
fails_saying "no prefix anywhere: explains WALE_S3_PREFIX" "WALE_S3_PREFIX" \
    env -u WALE_S3_PREFIX -u WALE_FILE_PREFIX "$BIN" "$SCRATCH/m"
fails_saying "missing credentials: says which variables to set" "AWS_SECRET_ACCESS_KEY" \
    env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$BIN" s3://b/p "$SCRATCH/m"
fails_saying "bad --addressing is rejected with the allowed values" "'path' or 'virtual'" \
    "$BIN" --addressing=sideways s3://b/p "$SCRATCH/m"
fails_saying "unsupported prefix scheme is explained" "use s3://BUCKET/PREFIX or file:///PATH" \
    "$BIN" ftp://x "$SCRATCH/m"
fails_saying "a missing archive directory is explained" "create it first" \
    "$BIN" "file://$SCRATCH/does-not-exist" "$SCRATCH/m"
fails_saying "--sse accepts only AES256" "AES256" \
    env AWS_ACCESS_KEY_ID=a AWS_SECRET_ACCESS_KEY=b "$BIN" --sse=aws:kms s3://b/p "$SCRATCH/m"
fails_saying "a malformed --deadline is explained" "is not a non-negative number" \
    "$BIN" --deadline=soon "file://$SCRATCH" "$SCRATCH/m"
fails_saying "a malformed --push-memory names the option" "push-memory" \
    "$BIN" --push-memory=lots "file://$SCRATCH" "$SCRATCH/m"
out=$("$BIN" --help 2>&1)
check "--help documents --push-memory and --spool-size" \
    bash -c 'grep -q -- "--push-memory=MIB" <<<"$1" && grep -q -- "--spool-size=MIB" <<<"$1"' _ "$out"

# --- local-directory backend: write-once and corrupt objects ---
ARCHIVE=$SCRATCH/archive
mkdir -p "$ARCHIVE/wal_005"
cp tests/fixtures/wale-pg15-a/pgdb/wal_005/000000010000000000000002.lzo "$ARCHIVE/wal_005/"
python3 - "$ARCHIVE/wal_005/000000010000000000000002.lzo" "$ARCHIVE/wal_005/0000000100000000000000AA.lzo" <<'PY'
import sys
d = bytearray(open(sys.argv[1], 'rb').read()); d[-20] ^= 0xFF
open(sys.argv[2], 'wb').write(d)
PY
chown -R postgres "$ARCHIVE"
MNT=$SCRATCH/mnt
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
walfs_mount "$MNT" "file://$ARCHIVE" || { echo "mount failed"; t_summary; exit 1; }
check "[local] a WAL-E object reads back at its full size" [ "$(stat -c %s "$MNT/wal_005/000000010000000000000002")" == 16777216 ]
out=$(as_pg cat "$MNT/wal_005/0000000100000000000000AA" 2>&1 >/dev/null)
check "[local] a corrupt object is an I/O error" grep -q "Input/output error" <<<"$out"
check "[local] the log names the corrupt object" grep -q "0000000100000000000000AA.lzo" "$(walfs_log "$MNT")"
printf 'x\n' > "$SCRATCH/seg"; chmod 644 "$SCRATCH/seg"
check "[local] cp into wal_005 succeeds" as_pg cp "$SCRATCH/seg" "$MNT/wal_005/00000003.history"
check "[local] the object is a valid lzop file" lzop -t "$ARCHIVE/wal_005/00000003.history.lzo"
check "[local] no temporary files are left in the archive" [ -z "$(ls -A "$ARCHIVE/wal_005" | grep walfs-tmp)" ]
printf 'y\n' > "$SCRATCH/seg2"; chmod 644 "$SCRATCH/seg2"
check "[local] different content under the same name is refused" bash -c "! setpriv --reuid=postgres --regid=postgres --init-groups cp $SCRATCH/seg2 $MNT/wal_005/00000003.history"
check "[local] the stored object is unchanged" cmp -s <(lzop -dc < "$ARCHIVE/wal_005/00000003.history.lzo") "$SCRATCH/seg"
check "[local] writing into basebackups_005 is refused" bash -c "! setpriv --reuid=postgres --regid=postgres --init-groups cp $SCRATCH/seg $MNT/basebackups_005/x"
check "[local] walfs unmounts cleanly" walfs_umount "$MNT"

# --- start-up with S3 down: a few seconds and one warning, not minutes ---
closed_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t0=$(date +%s%N)
AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s walfs_mount "$MNT" s3://bucket/pgdb \
    --endpoint="http://127.0.0.1:$closed_port" --addressing=path --deadline=2 \
    --restore-outage-limit=4
rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "[down] with the endpoint refusing connections the mount appears (${ms} ms)" [ $rc -eq 0 ]
check "[down] ... within 6 s" [ $ms -lt 6000 ]
start_log=$(walfs_log "$MNT")
[[ -e $start_log.start ]] && start_log="$start_log.start $start_log"
warnings=$(cat $start_log | grep -ci "warn")
check "[down] ... with one warning ($warnings)" [ "$warnings" -eq 1 ]
check "[down] ... that says the archive did not answer" grep -q "did not answer" $start_log
t0=$SECONDS
out=$(as_pg cat "$MNT/wal_005/000000010000000000000001" 2>&1 >/dev/null)
took=$((SECONDS - t0))
check "[down] with --restore-outage-limit=4 a read waits, then fails (${took} s)" [ $took -ge 4 -a $took -le 12 ]
check "[down] ... with an I/O error, not 'No such file'" grep -q "Input/output error" <<<"$out"
check "[down] ... and the log says the limit ended the wait" grep -q "gave up waiting for the archive after .* (--restore-outage-limit)" "$(walfs_log "$MNT")"
check "[down] walfs unmounts cleanly" walfs_umount "$MNT"

# --- a TLS certificate that fails verification refuses the mount ---
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$SCRATCH/key.pem" -out "$SCRATCH/cert.pem" \
    -days 1 -subj /CN=not-the-endpoint >/dev/null 2>&1
tls_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$SCRATCH/cert.pem" "$SCRATCH/key.pem" "$tls_port" <<'PY' &
import http.server, ssl, sys
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[3])), http.server.BaseHTTPRequestHandler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.timeout = 30
srv.handle_request(); srv.handle_request()
PY
tls_pid=$!
sleep 1
t0=$SECONDS
out=$(AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s "$BIN" -f s3://bucket/pgdb "$MNT" \
      --endpoint="https://127.0.0.1:$tls_port" --addressing=path --cache-dir="$SCRATCH/c-tls" 2>&1)
rc=$?
check "[tls] a certificate that fails verification refuses the mount (exit $rc, $((SECONDS - t0)) s)" [ $rc -ne 0 ]
check "[tls] ... saying why" grep -qi "certificate" <<<"$out"
check "[tls] ... and nothing is mounted" bash -c "! grep -qs ' $MNT fuse' /proc/mounts"
kill $tls_pid 2>/dev/null; wait $tls_pid 2>/dev/null
t_summary
