#!/bin/bash
# The stored index (walfs_index.json) against a real Ceph RGW, on the WAL-E
# fixture:
#  (a) forged indexes (anyone who may store indexes can write one; its sha256
#      is no MAC) never make walfs serve wrong bytes for global/pg_control:
#      overlapping members, an offset into a tar header, a size too large, and
#      two members' data swapped (which passes every structural check and is
#      caught by the tar header in front of the data), a hard link to another
#      file (base backups have none: refused on load), size 0 (read to the
#      real end: the backup's files are then opened direct_io), and a wider
#      mode (the open the kernel allowed on it fails, the next one reads) --
#      each reads the real file, after discarding the forged index and
#      indexing the partitions;
#  (b) a backup with a corrupt last partition: three stats cost one build
#      (one GET of the first partition), not three;
#  (c) a backup of 20,000 members: its stored index (over 1 MiB) is used by a
#      second mount with a fresh cache, without reading the partitions;
#  (d) a sentinel's expanded_size_bytes beyond int64 is left blank, not shown
#      as 9223372036854775807.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source tests/lib/pg_wale_backup.sh

t_require lzop
t_scratch bbtrust
cleanup() { walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"; }
trap cleanup EXIT

FIXTURE=tests/fixtures/wale-pg15-a
FXNAME=base_000000010000000000000002_00000040
FXKEY=pgdb/basebackups_005/$FXNAME
BUCKET=walfs-trust

rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7700}" || { echo "RGW did not start"; exit 1; }
rgw_s3 mb "$BUCKET" >/dev/null
rgw_s3 sync-up "$FIXTURE" "$BUCKET" >/dev/null
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MOUNT_OPTS=(--endpoint="$RGW_ENDPOINT" --addressing=path)

REAL=$SCRATCH/pg_control.real
lzop -dc "$FIXTURE/pgdb/basebackups_005/$FXNAME/tar_partitions/part_00000000.tar.lzo" |
    tar -xOf - global/pg_control >"$REAL"
# wait_stored KEY: the keeper stores indexes off the listing's path
wait_stored() {
    local _
    for _ in $(seq 100); do
        rgw_s3 head "$BUCKET" "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}
# Counts GET requests for keys matching $2 in walfs log $1 (--log-level=debug).
count_gets() { grep -cE "s3: GET s3://$BUCKET/$2" "$1"; }

# ------------------------------------------------------------ (a) forgeries
MNT=$SCRATCH/mnt
walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || { echo "mount failed"; exit 1; }
check "[a] the fixture's pg_control reads as in the tar" cmp -s "$MNT/basebackups_005/$FXNAME/global/pg_control" "$REAL"
check "[a] the index is stored in the bucket" wait_stored "$FXKEY/walfs_index.json"
walfs_umount "$MNT"
GENUINE=$SCRATCH/genuine.json
rgw_s3 get "$BUCKET" "$FXKEY/walfs_index.json" "$GENUINE" >/dev/null
check "[a] fetched the genuine index ($(stat -c %s "$GENUINE") bytes)" [ -s "$GENUINE" ]

cat >"$SCRATCH/forge.py" <<'PY'
# forge.py GENUINE OUT VARIANT: rewrites global/pg_control's entry and reseals
# the sha256 the way walfs computes it (over the text before it, plus "}").
import hashlib, json, sys
src, out, variant = sys.argv[1:4]
idx = json.loads(open(src, 'rb').read())
del idx['sha256']
# Format 2: [parent, name, type, mode, uid, gid, mtime, nsec, size, partition, offset];
# a directory with the synthesized attributes is just [parent, name].
mem = idx['members']
glob = next(i for i, m in enumerate(mem) if m[0] == 0 and m[1] == 'global')
files = [m for m in mem if len(m) > 2 and m[2] == 'f']
pc = next(m for m in files if m[0] == glob and m[1] == 'pg_control')
part, off, size = pc[9], pc[10], pc[8]
same = [m for m in files if m[9] == part and m is not pc]
if variant == 'overlap':       # pg_control's offset is another, bigger file's
    other = max(same, key=lambda m: m[8])
    pc[10] = other[10]
elif variant == 'header':      # the offset of pg_control's own tar header
    pc[10] = off - 512
elif variant == 'size':        # 4 KiB more than the file holds
    pc[8] = size + 4096
elif variant == 'swap':        # data of another file of the same size, and back
    other = next(m for m in same if m[8] == size and m[0] == glob)
    pc[10], other[10] = other[10], pc[10]
    print('global/' + other[1])
elif variant == 'hardlink':    # a hard link to another, bigger file
    other = max(same, key=lambda m: m[8])
    pc[2] = 'h'
    pc[8:] = [mem.index(other)]
elif variant == 'empty':       # size 0 at its real offset
    pc[8] = 0
elif variant == 'mode':        # readable by group and others
    pc[3] ^= 0o044
else:
    sys.exit('unknown variant')
body = json.dumps(idx, separators=(',', ':'), ensure_ascii=False).encode()[:-1]
sha = hashlib.sha256(body + b'}').hexdigest()
open(out, 'wb').write(body + b',"sha256":"' + sha.encode() + b'"}\n')
PY

for variant in ${TRUST_VARIANTS:-overlap header size swap hardlink empty mode}; do
    forged=$SCRATCH/forged-$variant.json
    other=$(python3 "$SCRATCH/forge.py" "$GENUINE" "$forged" "$variant") || { not_ok "[a] $variant: forge"; continue; }
    rgw_s3 put "$BUCKET" "$FXKEY/walfs_index.json" "$forged" >/dev/null
    M=$SCRATCH/mnt-$variant
    walfs_mount "$M" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || { not_ok "[a] $variant: mount"; continue; }
    got=$SCRATCH/got-$variant
    log=$(walfs_log "$M")
    if [[ $variant == mode ]]; then
        # The kernel allowed the open on the forged attributes (and would cut
        # reads at the forged size): walfs refuses it once the partitions say
        # otherwise, and serves the next open.
        fattr=$(stat -c '%a %s' "$M/basebackups_005/$FXNAME/global/pg_control")
        cat "$M/basebackups_005/$FXNAME/global/pg_control" >"$got" 2>"$got.err"
        rc=$?
        check "[a] $variant: the open the kernel allowed on the forged mode and size ($fattr) fails (cat rc $rc, $(stat -c %s "$got") bytes)" \
            [ $rc -ne 0 -a ! -s "$got" ]
        check "[a] $variant: the log says which attributes differ" \
            grep -q "member global/pg_control: the discarded index gave it mode 0${fattr% *}, .* ${fattr#* } bytes; the partitions say mode" "$log"
        sleep 1.5
        check "[a] $variant: mode and size are the real ones again ($(stat -c '%a %s' "$M/basebackups_005/$FXNAME/global/pg_control"))" \
            [ "$(stat -c '%a %s' "$M/basebackups_005/$FXNAME/global/pg_control")" != "$fattr" ]
    fi
    cat "$M/basebackups_005/$FXNAME/global/pg_control" >"$got" 2>"$got.err"
    rc=$?
    check "[a] $variant: pg_control reads as the real file ($(stat -c %s "$got") bytes, cat rc $rc; $(head -c 80 "$got.err"))" \
        cmp -s "$got" "$REAL"
    if [[ $variant == empty ]]; then
        # With the writeback cache the kernel keeps the size it was told for
        # the inode it has cached; the file is read to its real end anyway.
        echo "# empty: stat says $(stat -c %s "$M/basebackups_005/$FXNAME/global/pg_control") bytes while the kernel keeps its inode"
    else
        check "[a] $variant: pg_control's size is the real one" \
            [ "$(stat -c %s "$M/basebackups_005/$FXNAME/global/pg_control")" -eq "$(stat -c %s "$REAL")" ]
    fi
    if [[ $variant == swap ]]; then
        # Nothing structural is wrong with it: walfs loads it, and the tar
        # header in front of the data gives it away when the file is opened.
        check "[a] swap: the forged index passed the load-time checks ('using stored index')" \
            grep -q "using stored index for $FXNAME" "$log"
        check "[a] swap: the log names the backup and the member, and says the index is discarded" \
            grep -q "backup $FXNAME, member global/pg_control: the tar header .* names another member; the index walfs loaded is wrong .*discarding it" "$log"
        check "[a] swap: the other file of the pair ($other) reads right too" \
            bash -c "cmp -s '$M/basebackups_005/$FXNAME/$other' <(lzop -dc '$FIXTURE/pgdb/basebackups_005/$FXNAME/tar_partitions/part_00000000.tar.lzo' | tar -xOf - '$other')"
    else
        check "[a] $variant: the forged index is refused with a reason, then rebuilt" \
            bash -c "grep -qE 'stored index of $FXNAME is unusable .*(overlaps|header|outside|past the end)|stored index of $FXNAME lists hard links|member global/pg_control: the tar header' '$log' && grep -q 'indexing $FXNAME' '$log'"
    fi
    walfs_umount "$M"
    stored=$SCRATCH/stored-$variant.json
    ok_stored=1
    for _ in $(seq 50); do
        rgw_s3 get "$BUCKET" "$FXKEY/walfs_index.json" "$stored" >/dev/null 2>&1
        cmp -s "$stored" "$GENUINE" && { ok_stored=0; break; }
        sleep 0.2
    done
    check "[a] $variant: the bucket holds the genuine index again" [ $ok_stored -eq 0 ]
    check "[a] $variant: no sanitizer report" walfs_log_clean "$log"
done

# ------------------------------------------- (b) a failed build is remembered
BAD=base_000000010000000000000002_000000A0
FXDIR=$FIXTURE/pgdb/basebackups_005/$FXNAME
P1=$FXDIR/tar_partitions/part_00000001.tar.lzo
head -c $(( $(stat -c %s "$P1") / 2 )) "$P1" >"$SCRATCH/part1.cut"
rgw_s3 put "$BUCKET" "pgdb/basebackups_005/$BAD/extended_version.txt" "$FXDIR/extended_version.txt" >/dev/null
rgw_s3 put "$BUCKET" "pgdb/basebackups_005/$BAD/tar_partitions/part_00000000.tar.lzo" \
    "$FXDIR/tar_partitions/part_00000000.tar.lzo" >/dev/null
rgw_s3 put "$BUCKET" "pgdb/basebackups_005/$BAD/tar_partitions/part_00000001.tar.lzo" "$SCRATCH/part1.cut" >/dev/null
rgw_s3 put "$BUCKET" "pgdb/basebackups_005/${BAD}_backup_stop_sentinel.json" \
    "$FIXTURE/pgdb/basebackups_005/${FXNAME}_backup_stop_sentinel.json" >/dev/null
MB=$SCRATCH/mnt-bad
walfs_mount "$MB" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --log-level=debug || not_ok "[b] mount"
fails=0
for i in 1 2 3; do
    stat "$MB/basebackups_005/$BAD/PG_VERSION" >/dev/null 2>"$SCRATCH/stat.err" || fails=$((fails + 1))
    grep -q "Input/output error" "$SCRATCH/stat.err" || echo "# stat $i: $(cat "$SCRATCH/stat.err")"
done
log=$(walfs_log "$MB")
check "[b] three stats of a member of a backup with a truncated last partition fail ($fails of 3)" [ $fails -eq 3 ]
n0=$(count_gets "$log" "pgdb/basebackups_005/$BAD/tar_partitions/part_00000000")
n1=$(count_gets "$log" "pgdb/basebackups_005/$BAD/tar_partitions/part_00000001")
check "[b] ... cost one build: part_00000000 fetched $n0 time(s), part_00000001 $n1" [ "$n0" -eq 1 -a "$n1" -eq 1 ]
check "[b] ... the later ones say the failure is remembered" \
    grep -q "indexing $BAD failed [0-9]*s ago and its partitions have not changed" "$log"
check "[b] ... and the fixture backup is served meanwhile" cmp -s "$MB/basebackups_005/$FXNAME/global/pg_control" "$REAL"
walfs_umount "$MB"
rgw_s3 rm "$BUCKET" "pgdb/basebackups_005/${BAD}_backup_stop_sentinel.json"

# ------------------------------------------ (c) a stored index above 1 MiB
MANY=base_000000010000000000000005_00000028
SRC=$SCRATCH/many
python3 - "$SRC" <<'PY'
import os, sys
root = sys.argv[1]
os.makedirs(root)
open(os.path.join(root, 'PG_VERSION'), 'w').write('15\n')
for d in range(100):
    p = os.path.join(root, 'base', 'dir_with_a_longish_name_%03d' % d)
    os.makedirs(p)
    for f in range(200):
        open(os.path.join(p, 'relation_file_%05d' % f), 'w').write('x')
PY
OUTM=$SCRATCH/stage/pgdb
python3 tests/lib/wale_backup.py push --pgdata "$SRC" --out "$OUTM" --name "$MANY" >/dev/null 2>"$SCRATCH/push.err"
check "[c] wale_backup.py wrote a backup of 20,000 files" [ $? -eq 0 ]
wale_upload "$OUTM" "$BUCKET" pgdb "$MANY" >/dev/null
M1=$SCRATCH/mnt-many1
walfs_mount "$M1" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || not_ok "[c] first mount"
check "[c] first mount reads a member" [ "$(cat "$M1/basebackups_005/$MANY/base/dir_with_a_longish_name_042/relation_file_00042")" == x ]
check "[c] ... and stores the index" wait_stored "pgdb/basebackups_005/$MANY/walfs_index.json"
walfs_umount "$M1"
isize=$(rgw_s3 head "$BUCKET" "pgdb/basebackups_005/$MANY/walfs_index.json" | sed -n 's/^size=//p')
check "[c] the stored index is above 1 MiB ($isize bytes)" [ "${isize:-0}" -gt $((1 << 20)) ]
M2=$SCRATCH/mnt-many2
walfs_mount "$M2" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" --log-level=debug || not_ok "[c] second mount"
check "[c] a second mount (fresh cache) lists a directory of the backup" \
    [ "$(ls "$M2/basebackups_005/$MANY/base/dir_with_a_longish_name_099" | wc -l)" -eq 200 ]
log=$(walfs_log "$M2")
check "[c] ... using the stored index" grep -q "using stored index for $MANY" "$log"
np=$(count_gets "$log" "pgdb/basebackups_005/$MANY/tar_partitions/")
check "[c] ... without reading a partition ($np GETs of tar_partitions/)" [ "$np" -eq 0 ]
check "[c] ... and without indexing" bash -c "! grep -q 'indexing $MANY' '$log'"
walfs_umount "$M2"

# --------------------------------------- (d) expanded_size_bytes beyond int64
SENT=pgdb/basebackups_005/${FXNAME}_backup_stop_sentinel.json
python3 - "$FIXTURE/$SENT" "$SCRATCH/huge-sentinel.json" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text, n = re.subn(r'"expanded_size_bytes":\s*\d+', '"expanded_size_bytes": 18446744073709551615', text)
assert n == 1
open(sys.argv[2], 'w').write(text)
PY
rgw_s3 put "$BUCKET" "$SENT" "$SCRATCH/huge-sentinel.json" >/dev/null
MD=$SCRATCH/mnt-detail
walfs_mount "$MD" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || not_ok "[d] mount"
size=$(awk -F'\t' -v name="$FXNAME" 'NR == 1 { for (i = 1; i <= NF; i++) idx[$i] = i; next }
    $1 == name { print $(idx["expanded_size_bytes"]) }' "$MD/basebackups_005/.backup-list")
check "[d] expanded_size_bytes 18446744073709551615 is left blank (got '$size')" [ -z "$size" ]
check "[d] ... with a warning naming the sentinel" \
    grep -q "sentinel ${SENT#pgdb/}: expanded_size_bytes is out of range" "$(walfs_log "$MD")"
walfs_umount "$MD"

t_summary
