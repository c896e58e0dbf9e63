#!/bin/bash
# Base backups read through the mount (basebackups_005), against a real Ceph RGW:
#  (a) the WAL-E fixture: listing, LATEST, .backup-list, every tar
#      member's type/size/mode/owner/mtime (sub-second) and content, and a
#      restore made with `rsync -a MNT/basebackups_005/LATEST/ DATADIR/` plus
#      restore_command = 'cp MNT/wal_005/%f %p' reaching the MANIFEST's results;
#  (b) backups of a real PostgreSQL 15 data directory written by
#      tests/lib/wale_backup.py in GNU, PAX and ustar flavours, several
#      partitions each, compared file by file with the source tree;
#  (c) hostile backups (escaping names, symlink to /etc/passwd, truncated and
#      corrupt partitions, a missing partition): nothing escapes, errors are
#      I/O errors, walfs keeps serving and unmounts cleanly;
#  (d) a second mount with a fresh cache uses the index stored in the bucket.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source tests/lib/pg.sh
source tests/lib/pg_wale_backup.sh

t_require rsync lzop
t_scratch bb
cleanup() {
    PG_KEEP=1 pg_cleanup >/dev/null 2>&1   # stop servers that read through the mount first
    walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"
}
trap cleanup EXIT

FIXTURE=tests/fixtures/wale-pg15-a
MANIFEST=$FIXTURE/MANIFEST.txt
FXNAME=base_000000010000000000000002_00000040
BUCKET=walfs-bb
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# Comparison helpers, one aggregated line per property: "RESULT <what> <bad> <total>"
cat >"$SCRATCH/cmp.py" <<'PY'
import hashlib, os, stat, subprocess, sys, tarfile
from decimal import Decimal

bad = {}
total = {}
def note(cat, ok, example=''):
    total[cat] = total.get(cat, 0) + 1
    if not ok:
        bad[cat] = bad.get(cat, 0) + 1
        if bad[cat] <= 5:
            print('# %s mismatch: %s' % (cat, example))
def finish():
    for cat in sorted(total):
        print('RESULT %s %d %d' % (cat, bad.get(cat, 0), total[cat]))
def sha(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for b in iter(lambda: f.read(1 << 20), b''):
            h.update(b)
    return h.hexdigest()
def kind(st):
    return 'dir' if stat.S_ISDIR(st.st_mode) else 'symlink' if stat.S_ISLNK(st.st_mode) \
        else 'file' if stat.S_ISREG(st.st_mode) else 'other'

def manifest(man, mnt, name, parts):
    """Every MANIFEST member of backup `name` against the mount."""
    members, in_backup = {}, False
    for line in open(man):
        line = line.rstrip('\n')
        if line.startswith('### '):
            in_backup = line[4:].strip() == name
        if in_backup and not line.startswith('#') and line.count('\t') == 6:
            path, size, mode, typ, owner, mtime, link = line.split('\t')
            rel = path.strip('/')
            members[rel] = (int(size), int(mode, 8), typ, owner.split()[0], mtime, link)
    shas = {}
    for p in parts:
        lz = subprocess.Popen(['lzop', '-dc', p], stdout=subprocess.PIPE)
        with tarfile.open(fileobj=lz.stdout, mode='r|') as t:
            for ti in t:
                if ti.isfile():
                    shas[ti.name.strip('/')] = hashlib.sha256(t.extractfile(ti).read()).hexdigest()
        lz.wait()
    seen = set()
    for root, dirs, files in os.walk(mnt):
        for n in dirs + files:
            seen.add(os.path.relpath(os.path.join(root, n), mnt))
    seen.add('')
    note('member-set', seen == set(members), 'extra %s missing %s' % (
        sorted(seen - set(members))[:5], sorted(set(members) - seen)[:5]))
    for rel, (size, mode, typ, owner, mtime, link) in sorted(members.items()):
        p = os.path.join(mnt, rel)
        try:
            st = os.lstat(p)
        except OSError as e:
            note('exists', False, '%s: %s' % (rel, e)); continue
        note('exists', True)
        want = {'dir': 'dir', 'file': 'file', 'hardlink': 'file', 'symlink': 'symlink'}.get(typ, typ)
        note('type', kind(st) == want, '%s: %s != %s' % (rel, kind(st), want))
        note('mode', stat.S_IMODE(st.st_mode) == mode, '%s: %o != %o' % (rel, stat.S_IMODE(st.st_mode), mode))
        note('uid/gid', '%d/%d' % (st.st_uid, st.st_gid) == owner, '%s: %d/%d != %s' % (rel, st.st_uid, st.st_gid, owner))
        want_ns = int(Decimal(mtime) * 10**9)
        if rel != '':   # the backup directory itself carries the sentinel's LastModified
          note('mtime-ns(+-1us)', abs(st.st_mtime_ns - want_ns) <= 1000, '%s: %d != %d' % (rel, st.st_mtime_ns, want_ns))
        if want == 'file':
            note('size', st.st_size == size, '%s: %d != %d' % (rel, st.st_size, size))
            try:
                got = sha(p)
            except OSError as e:
                got = str(e)
            note('content-sha256', got == shas.get(rel), rel)
        if want == 'symlink':
            note('symlink-target', os.readlink(p) == link, rel)
    finish()

TOP_EXCL = {'postmaster.pid', 'postmaster.opts', 'postgresql.conf', 'pg_hba.conf', 'recovery.conf',
            'recovery.done', 'pg_ident.conf', 'promote'}
def walk_src(src):
    """Paths WAL-E archives (wal-e-format.md 2.1), relative, '' = root."""
    out = {''}
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        top = rel == '.'
        keep_empty = ['pgsql_tmp', 'pg_stat_tmp', '.wal-e'] + (['pg_xlog', 'pg_log', 'pg_replslot', 'pg_wal'] if top else [])
        for d in list(dirs):
            if d in keep_empty or d == 'lost+found':
                dirs.remove(d)
                if d != 'lost+found':
                    out.add(os.path.normpath(os.path.join(rel, d)))
            elif os.path.islink(os.path.join(root, d)):
                pass    # os.walk lists a symlink to a directory but WAL-E drops it
            else:
                out.add(os.path.normpath(os.path.join(rel, d)))
        for f in files:
            if top and f in TOP_EXCL:
                continue
            out.add(os.path.normpath(os.path.join(rel, f)))
    return {'' if p == '.' else p for p in out}

def tree(src, mnt, precision):
    want = walk_src(src)
    seen = {''}
    for root, dirs, files in os.walk(mnt):
        for n in dirs + files:
            seen.add(os.path.relpath(os.path.join(root, n), mnt))
    note('path-set', seen == want, 'extra %s missing %s' % (sorted(seen - want)[:5], sorted(want - seen)[:5]))
    for rel in sorted(want & seen):
        s = os.lstat(os.path.join(src, rel))
        m = os.lstat(os.path.join(mnt, rel))
        note('type', kind(s) == kind(m), '%s: %s != %s' % (rel, kind(m), kind(s)))
        if kind(s) != 'symlink':
            note('mode', stat.S_IMODE(s.st_mode) == stat.S_IMODE(m.st_mode), '%s: %o != %o' % (rel, stat.S_IMODE(m.st_mode), stat.S_IMODE(s.st_mode)))
        note('uid/gid', (s.st_uid, s.st_gid) == (m.st_uid, m.st_gid), rel)
        if rel == '':
            continue    # the backup directory itself: the sentinel's LastModified, checked elsewhere
        note('mtime-seconds', s.st_mtime_ns // 10**9 == m.st_mtime_ns // 10**9, '%s: %d != %d' % (rel, m.st_mtime_ns, s.st_mtime_ns))
        if precision == 'ns':
            note('mtime-subsecond(+-2us)', abs(s.st_mtime_ns - m.st_mtime_ns) <= 2000, '%s: %d != %d' % (rel, m.st_mtime_ns, s.st_mtime_ns))
        if kind(s) == 'file':
            note('size', s.st_size == m.st_size, '%s: %d != %d' % (rel, m.st_size, s.st_size))
            try:
                got = sha(os.path.join(mnt, rel))
            except OSError as e:
                got = str(e)
            note('content-sha256', got == sha(os.path.join(src, rel)), rel)
        if kind(s) == 'symlink':
            note('symlink-target', os.readlink(os.path.join(src, rel)) == os.readlink(os.path.join(mnt, rel)), rel)
    finish()

if sys.argv[1] == 'manifest':
    manifest(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
else:
    tree(sys.argv[2], sys.argv[3], sys.argv[4])
PY
# run_cmp LABEL ARGS...: one check per RESULT line of cmp.py
run_cmp() {
    local label=$1 out tag what nbad ntot; shift
    out=$(python3 "$SCRATCH/cmp.py" "$@" 2>&1)
    grep '^#' <<<"$out"
    if ! grep -q '^RESULT' <<<"$out"; then not_ok "$label: comparison ran"; echo "$out" | tail -5; return; fi
    while read -r tag what nbad ntot; do
        [[ $tag == RESULT ]] || continue
        check "$label: $what matches ($ntot compared, $nbad bad)" [ "$nbad" -eq 0 ]
    done <<<"$out"
}
# One column of basebackups_005/.backup-list for one backup, by the header's name.
detail() {
    awk -F'\t' -v name="$2" -v col="$3" 'NR == 1 { for (i = 1; i <= NF; i++) idx[$i] = i; next }
        $1 == name { print $(idx[col]) }' "$1/.backup-list"
}

rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7481}" || { echo "RGW did not start"; exit 1; }
rgw_s3 mb "$BUCKET" >/dev/null
rgw_s3 sync-up "$FIXTURE" "$BUCKET" >/dev/null
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
MOUNT_OPTS=(--endpoint="$RGW_ENDPOINT" --addressing=path)

# ---------------------------------------------------------------- (a) fixture
MNT=$SCRATCH/mnt
walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || { echo "mount failed"; exit 1; }
BB=$MNT/basebackups_005
check "[a] ls basebackups_005 shows the fixture backup and LATEST" \
    [ "$(ls "$BB" | sort | tr '\n' ' ')" == "$(printf '%s\n' "$FXNAME" LATEST | sort | tr '\n' ' ')" ]
check "[a] LATEST is a symlink to $FXNAME" [ -L "$BB/LATEST" -a "$(readlink "$BB/LATEST")" == "$FXNAME" ]
check "[a] the backup is a directory" [ -d "$BB/$FXNAME" ]
lm=$(rgw_s3 head "$BUCKET" "pgdb/basebackups_005/${FXNAME}_backup_stop_sentinel.json" | sed -n 's/^last-modified=//p')
check "[a] backup dir mtime is the sentinel's LastModified ($lm)" [ "$(stat -c %Y "$BB/$FXNAME")" == "$(date -d "$lm" +%s)" ]
check "[a] .backup-list has WAL-E's --detail columns, then pg_version" \
    [ "$(head -1 "$BB/.backup-list")" == "$(printf 'name\tlast_modified\texpanded_size_bytes\twal_segment_backup_start\twal_segment_offset_backup_start\twal_segment_backup_stop\twal_segment_offset_backup_stop\tpg_version')" ]
check "[a] .backup-list has one row per backup" [ "$(wc -l < "$BB/.backup-list")" -eq 2 ]
check "[a] .backup-list is hidden from ls" bash -c "! ls '$BB' | grep -q backup-list"
check "[a] detail wal_segment_backup_start" [ "$(detail "$BB" "$FXNAME" wal_segment_backup_start)" == 000000010000000000000002 ]
check "[a] detail wal_segment_offset_backup_start" [ "$(detail "$BB" "$FXNAME" wal_segment_offset_backup_start)" == 00000040 ]
check "[a] detail wal_segment_backup_stop" [ "$(detail "$BB" "$FXNAME" wal_segment_backup_stop)" == 000000010000000000000002 ]
check "[a] detail wal_segment_offset_backup_stop" [ "$(detail "$BB" "$FXNAME" wal_segment_offset_backup_stop)" == 00000256 ]
check "[a] detail expanded_size_bytes" [ "$(detail "$BB" "$FXNAME" expanded_size_bytes)" == 23736353 ]
check "[a] detail pg_version is extended_version.txt" \
    [ "$(detail "$BB" "$FXNAME" pg_version)" == "$(cat "$FIXTURE/pgdb/basebackups_005/$FXNAME/extended_version.txt")" ]
check "[a] detail last_modified is the sentinel's LastModified" \
    [ "$(date -d "$(detail "$BB" "$FXNAME" last_modified)" +%s)" == "$(date -d "$lm" +%s)" ]
run_cmp "[a] fixture member" manifest "$MANIFEST" "$BB/$FXNAME" "$FXNAME" \
    "$FIXTURE"/pgdb/basebackups_005/$FXNAME/tar_partitions/part_*.tar.lzo
check "[a] writing into a backup is refused" bash -c "! touch '$BB/$FXNAME/newfile' 2>/dev/null"
check "[a] removing from a backup is refused" bash -c "! rm -f '$BB/$FXNAME/PG_VERSION' 2>/dev/null && [ -e '$BB/$FXNAME/PG_VERSION' ]"
check "[a] mkdir over an existing backup's name is refused" bash -c "! mkdir '$BB/$FXNAME' 2>/dev/null"
check "[a] mkdir inside a finished backup is refused" bash -c "! mkdir '$BB/$FXNAME/newdir' 2>/dev/null"

# Restore the fixture with rsync from the mount, then archive recovery from wal_005.
RESTORE=$SCRATCH/restore
check "[a] rsync -a MNT/basebackups_005/LATEST/ DATADIR/ succeeds" rsync -a "$BB/LATEST/" "$RESTORE/"
check "[a] the rsync'd copy keeps the tar's owner" [ "$(stat -c %u/%g "$RESTORE/PG_VERSION")" == 101/104 ]
# WAL-E never archives the top-level config files: the restorer writes them.
printf "max_connections = 100\nshared_buffers = 16MB\ndynamic_shared_memory_type = posix\n" >"$RESTORE/postgresql.conf"
printf "local all all trust\nhost all all 127.0.0.1/32 trust\n" >"$RESTORE/pg_hba.conf"
: >"$RESTORE/pg_ident.conf"
if pg_recover fxrestore "$(pg_free_port $((20000 + RANDOM % 10000)))" "$RESTORE" "cp $MNT/wal_005/%f %p"; then
    got=$(pg_results fxrestore)
    check "[a] restored fixture gives the MANIFEST's final results (got '$got')" [ "$got" == "4865 2431651 4584" ]
    pg_stop fxrestore
else
    not_ok "[a] archive recovery of the rsync'd fixture backup"
fi

# --------------------------------------- (b) generated backups of a PG15 cluster
STAGE=$SCRATCH/stage
OUT=$STAGE/gen
PG_ARCHIVE_MODE=off
SRC=$PG_SCRATCH/gen
gen_ok=0
if pg_init gen "$(pg_free_port $((20000 + RANDOM % 10000)))" && pg_start gen && pg_make_schema gen &&
    pg_load gen 12000 && pg_stop gen; then
    gen_ok=1
fi
check "[b] PostgreSQL 15 cluster created, loaded and stopped" [ $gen_ok -eq 1 ]
# extra objects in a harmless place
mkdir -p "$SRC/walfs_test/empty" "$SRC/walfs_test/sub" \
    "$SRC/walfs_test/a_rather_long_directory_name_to_need_the_ustar_prefix_or_a_gnu_longlink_0123456789"
head -c $((700 * 1024 + 123)) /dev/urandom >"$SRC/walfs_test/big"
ln "$SRC/walfs_test/big" "$SRC/walfs_test/sub/hardlink_to_big"
ln -s ../PG_VERSION "$SRC/walfs_test/symlink_to_pg_version"
ln -s does/not/exist "$SRC/walfs_test/dangling"
printf 'long\n' >"$SRC/walfs_test/a_rather_long_directory_name_to_need_the_ustar_prefix_or_a_gnu_longlink_0123456789/and_a_file_name_that_is_long_as_well_0123456789"
printf 'other owner\n' >"$SRC/walfs_test/other_owner"
chown 1234:5678 "$SRC/walfs_test/other_owner"; chmod 0640 "$SRC/walfs_test/other_owner"
chown -R postgres: "$SRC/walfs_test"; chown 1234:5678 "$SRC/walfs_test/other_owner"
big_rel=$(python3 -c "import os,sys; d=sys.argv[1]; print(max((os.path.getsize(os.path.join(r,f)), os.path.relpath(os.path.join(r,f), d)) for r,_,fs in os.walk(d+'/base') for f in fs)[1])" "$SRC")
check "[b] the cluster has a table file bigger than one lzop block ($big_rel)" [ "$(stat -c %s "$SRC/$big_rel")" -gt 262144 ]
# A second name for that table file at the top level: top-level files are
# walked first, so the top-level name is archived as the file (partition 0) and
# $big_rel, several hundred members later, as a hard link to it (type 1) in a
# later partition.  Harmless: this cluster is never started again.
ln "$SRC/$big_rel" "$SRC/walfs_test_hardlink"
declare -A GEN
GEN[gnu]=base_000000010000000000000003_00000041
GEN[pax]=base_000000010000000000000003_00000042
GEN[ustar]=base_000000010000000000000003_00000043
for f in gnu pax ustar; do
    python3 tests/lib/wale_backup.py push --pgdata "$SRC" --out "$OUT" --name "${GEN[$f]}" --format "$f" \
        --max-members 250 --max-bytes 3000000 --manifest "$SCRATCH/man-$f.json" 2>/dev/null
    check "[b] wale_backup.py push --format $f" [ $? -eq 0 ]
    n=$(ls "$OUT/basebackups_005/${GEN[$f]}/tar_partitions" | wc -l)
    check "[b] $f backup has several partitions ($n)" [ "$n" -ge 3 ]
done
links=$(python3 - "$SCRATCH/man-pax.json" <<'PY'
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
part = {x['name']: x['partition'] for x in m}
for x in m:
    if x['type'] == '1':
        print('hard link %s -> %s (partitions %d -> %d)' % (x['name'], x['linkname'], x['partition'], part[x['linkname']]))
PY
)
sed 's/^/# /' <<<"$links"
check "[b] a hard-link member points into an earlier partition" grep -qE 'partitions ([0-9]+) -> (0|[1-9])' <(awk '{gsub(/[()]/,""); if ($(NF-2) != $NF) print}' <<<"$links")
HOSTILE=$(python3 tests/lib/wale_backup.py hostile --out "$OUT")
check "[c] wale_backup.py hostile wrote 6 backups" [ "$(wc -l <<<"$HOSTILE")" -eq 6 ]
# Upload the hostile ones and two good ones first, the ustar one last: LATEST.
wale_upload "$OUT" "$BUCKET" gen $(cut -d' ' -f1 <<<"$HOSTILE") "${GEN[gnu]}" "${GEN[pax]}"
check "[b] upload of the generated backups" [ $? -eq 0 ]
sleep 1.2
wale_upload "$OUT" "$BUCKET" gen "${GEN[ustar]}"
MNTG=$SCRATCH/mnt-gen
walfs_mount "$MNTG" "s3://$BUCKET/gen" "${MOUNT_OPTS[@]}" || { not_ok "mount of the generated backups"; }
BG=$MNTG/basebackups_005
want=$( { printf '%s\n' "${GEN[@]}" LATEST; cut -d' ' -f1 <<<"$HOSTILE"; } | sort | tr '\n' ' ')
check "[b] ls basebackups_005 lists the 9 backups and LATEST" [ "$(ls "$BG" | sort | tr '\n' ' ')" == "$want" ]
check "[b] LATEST is the backup whose sentinel is newest (ustar)" [ "$(readlink "$BG/LATEST")" == "${GEN[ustar]}" ]
check "[b] .backup-list has a row for each of the 9 backups, in name order" \
    [ "$(tail -n +2 "$BG/.backup-list" | cut -f1 | tr '\n' ' ')" == "$(printf '%s\n' "${GEN[@]}" $(cut -d' ' -f1 <<<"$HOSTILE") | sort | tr '\n' ' ')" ]
for f in gnu pax ustar; do
    prec=seconds; [[ $f == pax ]] && prec=ns
    run_cmp "[b] $f" tree "$SRC" "$BG/${GEN[$f]}" "$prec"
    check "[b] $f: the hard link reads as the target's content" cmp -s "$BG/${GEN[$f]}/walfs_test/sub/hardlink_to_big" "$SRC/walfs_test/big"
    check "[b] $f: the table file archived as a hard link reads as the table" cmp -s "$BG/${GEN[$f]}/$big_rel" "$SRC/$big_rel"
done

# --------------------------------------------------------------- (c) hostile
h() { sed -n "$1p" <<<"$HOSTILE" | cut -d' ' -f1; }
for i in 1 2; do
    d=$BG/$(h $i)
    list=$(cd "$d" 2>/dev/null && find . | sort | tr '\n' ' ')
    check "[c] $(h $i): only the harmless members are shown ($list)" [ "$list" == ". ./PG_VERSION ./global ./global/ok " ]
done
check "[c] nothing named etc appears anywhere in the mount" bash -c "[ -z \"\$(find '$MNTG' -name etc -o -name x -o -name y -o -name z 2>/dev/null)\" ]"
check "[c] nothing escaped onto the host" [ ! -e /etc/x -a ! -e /etc/y -a ! -e /etc/z ]
d=$BG/$(h 3)
check "[c] passwd_link is a symlink" [ -L "$d/passwd_link" ]
check "[c] ... whose target text is /etc/passwd" [ "$(readlink "$d/passwd_link")" == /etc/passwd ]
check "[c] ... and the backup's files are still served" [ "$(cat "$d/PG_VERSION")" == 15 ]
for i in 4 5 6; do
    d=$BG/$(h $i)
    out=$( { ls -lR "$d"; find "$d" -type f -exec cat {} +; } 2>&1 >/dev/null)
    what=$(sed -n "$i"p <<<"$HOSTILE" | cut -d' ' -f2-)
    check "[c] $what: listing or reading fails with Input/output error" grep -q "Input/output error" <<<"$out"
    if [[ $i != 6 ]]; then
        check "[c] $what: global/big is never served" bash -c "! cat '$d/global/big' >/dev/null 2>&1"
    fi
done
check "[c] walfs is still running" kill -0 "${_WALFS_PID[$MNTG]:-none}"
check "[c] a good backup still lists and reads afterwards" \
    bash -c "ls '$BG/${GEN[pax]}/global' >/dev/null && cmp -s '$BG/${GEN[pax]}/PG_VERSION' '$SRC/PG_VERSION'"
# A sentinel that is not JSON: the detail table refuses to look complete.
BADNAME=base_0000000100000000000000FF_00000028
printf '{"wal_segment_backup_stop": ' > "$SCRATCH/bad-sentinel.json"
rgw_s3 put "$BUCKET" "gen/basebackups_005/${BADNAME}_backup_stop_sentinel.json" "$SCRATCH/bad-sentinel.json" >/dev/null
sleep 1.2 # the listing is cached for a second
out=$(cat "$BG/.backup-list" 2>&1 >/dev/null)
check "[c] a damaged sentinel makes reading .backup-list fail with Input/output error" grep -q "Input/output error" <<<"$out"
check "[c] ... and the log names the backup" grep -q "$BADNAME: sentinel .* is not a JSON object" "$(walfs_log "$MNTG")"
rgw_s3 rm "$BUCKET" "gen/basebackups_005/${BADNAME}_backup_stop_sentinel.json"
sleep 1.2
check "[c] ... and it reads again once the sentinel is gone" [ "$(wc -l < "$BG/.backup-list")" -eq 10 ]
check "[c] the generated-backups mount unmounts cleanly" walfs_umount "$MNTG"

# ------------------------------------------------------- (d) the stored index
stored=1
for _ in $(seq 50); do
    rgw_s3 head "$BUCKET" "pgdb/basebackups_005/$FXNAME/walfs_index.json" >/dev/null 2>&1 && { stored=0; break; }
    sleep 0.2
done
check "[d] the index object basebackups_005/$FXNAME/walfs_index.json is in the bucket" [ $stored -eq 0 ]
check "[d] the first mount logged 'indexing $FXNAME'" grep -q "indexing $FXNAME" "$(walfs_log "$MNT")"
check "[d] first fixture mount unmounts cleanly" walfs_umount "$MNT"
MNT2=$SCRATCH/mnt2
walfs_mount "$MNT2" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || not_ok "second mount"
check "[d] a second mount (fresh cache) lists the fixture backup" [ -d "$MNT2/basebackups_005/$FXNAME/global" ]
check "[d] ... and reads it" [ "$(sha256sum <"$MNT2/basebackups_005/$FXNAME/global/pg_control" | cut -d' ' -f1)" == \
    "$(lzop -dc "$FIXTURE"/pgdb/basebackups_005/$FXNAME/tar_partitions/part_00000000.tar.lzo | tar -xOf - global/pg_control | sha256sum | cut -d' ' -f1)" ]
check "[d] ... using the stored index (log: 'using stored index for $FXNAME')" grep -q "using stored index for $FXNAME" "$(walfs_log "$MNT2")"
check "[d] ... without indexing the partitions again" bash -c "! grep -q 'indexing $FXNAME' '$(walfs_log "$MNT2")'"
check "[d] second mount unmounts cleanly" walfs_umount "$MNT2"

t_summary
