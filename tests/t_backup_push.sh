#!/bin/bash
# Pushing base backups INTO the mount (walfs as WAL-E's backup-push), against a
# real Ceph RGW and PostgreSQL 15:
#  (a) pg_basebackup -D MNT/basebackups_005/<new name> -Fp --checkpoint=fast
#      with -X none, -X fetch and -X stream: exit 0 only once everything is
#      stored; the backup then lists as base_<start segment>_<decimal offset>
#      (from pg_basebackup's "write-ahead log start point"), LATEST points to
#      it, and the bucket holds exactly WAL-E's format: extended_version.txt,
#      tar_partitions/part_%08d.tar.lzo from 0 (lzop -t clean, PAX, root entry
#      "/", padded to 10240, WAL-E's exclusions, pg_wal empty unless -X
#      fetch/stream), and the sentinel last with WAL-E's four fields, the stop
#      position being the manifest's End-LSN;
#  (b) restores: a plain-tools reader (s3tool get | lzop -d | tar -x, no walfs)
#      with restore_command = 'cp MNT/wal_005/%f %p'; the -X fetch backup on
#      its own (restore_command = false); `rsync -a MNT/basebackups_005/LATEST/`
#      through the mount -- each ends with the primary's results;
#  (c) cp -a / rsync -a of a data directory copied between pg_backup_start()
#      and pg_backup_stop() (one psql session), backup_label written from
#      pg_backup_stop()'s labelfile, pushed into MNT/basebackups_005/<new>/
#      and completed by `mv MNT/basebackups_005/<new> MNT/basebackups_005/<any>`,
#      which returns only once the sentinel is stored; member set and content
#      equal WAL-E's walk of the copy; restore through the mount;
#  (d) lowered partition limits (--backup-partition-bytes/-members): several
#      partitions within the limits, a 3 MiB table file in a 4 MiB partition
#      limit is fine, a 6 MiB one fails the push naming the file
#      (WAL-E's TarMemberTooBigError) and leaves nothing behind;
#  (e) two pushes into the same -D, the second started the moment the first
#      returns: both are stored.
#
# The copy in (c) is staged locally between start and stop, because the
# backup_label content is only known once pg_backup_stop() has returned and
# walfs needs it among the first files; rsync -a sends it early (only
# PG_VERSION sorts before it), the cp -a variant copies it first.
#
# Knobs: RGW_TEST_PORT (default 7483), BB_TIMEOUT (seconds per pg_basebackup /
# rsync / mv, default 120), PG_TIMEOUT (recoveries, pg.sh, default 120).
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/lib/rgw.sh
source tests/lib/walfs.sh
source tests/lib/pg.sh

t_require rsync lzop curl
t_scratch bp
cleanup() {
    PG_KEEP=1 pg_cleanup >/dev/null 2>&1   # servers archive/restore through the mount: stop them first
    walfs_cleanup; rgw_stop; rm -rf "$SCRATCH"
}
trap cleanup EXIT

BUCKET=walfs-bp
BB_TIMEOUT=${BB_TIMEOUT:-120}
SEG_SIZE=16777216
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups env HOME="$SCRATCH" "$@"; }
quiet() { "$@" >/dev/null 2>&1; }
fail_out() { not_ok "$1"; t_summary; exit 1; }

# ------------------------------------------------------------------ helpers
# Inspection of a downloaded backup: prints "CHECK 0|1 description" lines
# (0 = good) and "# ..." comments.
cat >"$SCRATCH/bpcheck.py" <<'PY'
import argparse, hashlib, io, json, os, re, stat, subprocess, sys, tarfile

ap = argparse.ArgumentParser()
ap.add_argument('dir')                      # parts/, sentinel.json, keys.txt, extended_version.txt
ap.add_argument('--name', required=True)    # base_<SEG>_<OFF8>
ap.add_argument('--prefix', required=True)  # key prefix ("pgdb")
ap.add_argument('--wal', required=True, choices=['none', 'fetch', 'stream', 'copy'])
ap.add_argument('--stop-seg', default='')   # comma-separated acceptable values
ap.add_argument('--stop-off', default='')
ap.add_argument('--min-stop-seg', default='')
ap.add_argument('--max-bytes', type=int, default=1610612736)
ap.add_argument('--max-members', type=int, default=6144)
ap.add_argument('--min-parts', type=int, default=1)
ap.add_argument('--source', default='')     # data directory the copy was made from
ap.add_argument('--want-file', action='append', default=[])   # rel path that must be a full member
a = ap.parse_args()

def check(ok, what):
    print('CHECK %d %s' % (0 if ok else 1, what))
def note(msg):
    print('# ' + msg)

TOP_EXCL = {'postmaster.pid', 'postmaster.opts', 'postgresql.conf', 'pg_hba.conf', 'pg_ident.conf',
            'recovery.conf', 'recovery.done', 'promote'}
SEG_RE = re.compile(r'^[0-9A-F]{24}$')

# --- keys in the bucket
bb = a.prefix + '/basebackups_005/'
keys = [k for k in open(os.path.join(a.dir, 'keys.txt')).read().split('\n') if k]
mine = sorted(k for k in keys if k.startswith(bb + a.name + '/') or k.startswith(bb + a.name + '_'))
parts_keys = [k for k in mine if k.startswith(bb + a.name + '/tar_partitions/')]
want_parts = [bb + a.name + '/tar_partitions/part_%08d.tar.lzo' % i for i in range(len(parts_keys))]
check(len(parts_keys) >= a.min_parts and parts_keys == want_parts,
      'partitions are tar_partitions/part_%%08d.tar.lzo numbered from 0 without gaps (%d, at least %d)'
      % (len(parts_keys), a.min_parts))
extra = [k for k in mine if k not in parts_keys and k not in (
    bb + a.name + '/extended_version.txt', bb + a.name + '_backup_stop_sentinel.json',
    bb + a.name + '/walfs_index.json')]
check(not extra, 'no other keys belong to the backup (%s)' % extra[:5])
check(bb + a.name + '/extended_version.txt' in mine, 'extended_version.txt is stored')
check(bb + a.name + '_backup_stop_sentinel.json' in mine, 'the sentinel is stored next to the folder')

# --- the partitions, raw and through tarfile
parts = sorted(os.listdir(os.path.join(a.dir, 'parts')))
members = []        # (partition, name, TarInfo)
raw_bad, pad_bad, gnu, glob, no_pax, root, label = [], [], False, False, 0, None, ''
for i, p in enumerate(parts):
    data = subprocess.run(['lzop', '-dc', os.path.join(a.dir, 'parts', p)], stdout=subprocess.PIPE).stdout
    if len(data) % 10240:
        pad_bad.append(p)
    off, prev_x, first = 0, False, True
    while off + 512 <= len(data):
        h = data[off:off + 512]
        if h == bytes(512):
            break
        if h[257:265] != b'ustar\x0000':
            raw_bad.append('%s@%d:%r' % (p, off, h[257:265]))
        t = h[156:157]
        size = int(h[124:136].strip(b'\0 ') or b'0', 8)
        if t in (b'L', b'K'):
            gnu = True
        if t == b'g':
            glob = True
        if t == b'x':
            prev_x = True
        else:
            if not prev_x:
                no_pax += 1
            if i == 0 and first:
                root = (h[0:100].split(b'\0')[0], t)
                first = False
            prev_x = False
        off += 512 + (size + 511) // 512 * 512
    with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as tf:
        for ti in tf:
            data_sha = None
            if ti.isreg():
                content = tf.extractfile(ti).read()
                data_sha = hashlib.sha256(content).hexdigest()
                if ti.name == 'backup_label':
                    label = content.decode(errors='replace')
            members.append((i, ti.name, ti, data_sha))
check(not pad_bad, 'every partition is padded to a multiple of 10240 bytes (%s)' % pad_bad[:3])
check(not raw_bad and not gnu and not glob,
      'every header is POSIX/PAX ("ustar\\0" "00"), no GNU L/K and no global headers (%s)' % raw_bad[:3])
check(no_pax == 0, 'every member has its own PAX extended header, as CPython >= 3.8 writes (%d without)' % no_pax)
check(root == (b'/', b'5'), 'partition 0 begins with the root directory entry "/" (got %r)' % (root,))

names = [n for _, n, _, _ in members]
byname = {}
for i, n, ti, sha in members:
    byname.setdefault(n.rstrip('/'), (i, ti, sha))
dups = sorted({n for n in names if names.count(n) > 1})
check(not dups, 'no member is archived twice (%s)' % dups[:5])
bad_names = [n for n in names if n.startswith('./') or (n.startswith('/') and n != '/') or '..' in n.split('/')]
check(not bad_names, 'member names are relative to the data directory (%s)' % bad_names[:5])
excl = sorted(n for n in names if n in TOP_EXCL)
check(not excl, "WAL-E's top-level exclusions are not archived (%s)" % excl)
for f in ('PG_VERSION', 'global/pg_control', 'backup_label'):
    check(f in byname and byname[f][1].isreg(), '%s is archived' % f)
for d in ('pg_wal', 'pg_replslot', 'pg_stat_tmp'):
    if d in byname or a.wal == 'copy' or d == 'pg_wal':
        check(d in byname and byname[d][1].isdir(), '%s is archived as a directory' % d)
for d in ['pg_replslot', 'pg_stat_tmp'] + sorted({n.rstrip('/') for n in byname if n.split('/')[-1] == 'pgsql_tmp'}):
    below = [n for n in names if n.startswith(d + '/')]
    check(not below, '%s is kept empty (%s)' % (d, below[:3]))
wal_members = [n for n in names if n.startswith('pg_wal/')]
segs = [n for n in wal_members if SEG_RE.match(n[len('pg_wal/'):])]
start_seg = a.name.split('_')[1]
if a.wal in ('none', 'copy'):
    check(not wal_members, 'pg_wal is kept empty (%s)' % wal_members[:3])
else:
    check(start_seg in [s[len('pg_wal/'):] for s in segs],
          'the streamed WAL is kept: pg_wal holds the start segment %s (%s)' % (start_seg, segs))
    check(all(byname[s][1].size == 16777216 for s in segs), 'the pg_wal segments are whole (16 MiB)')
    partial = [n for n in wal_members if n.endswith('.partial') or '.tmp' in n]
    check(not partial, 'no .partial/.tmp WAL file is archived (%s)' % partial)

# backup_label and the name
m = re.search(r'^START WAL LOCATION: ([0-9A-F]+)/([0-9A-F]+) \(file ([0-9A-F]{24})\)', label, re.M)
if m:
    lsn = (int(m.group(1), 16) << 32) | int(m.group(2), 16)
    nm = 'base_%s_%08d' % (m.group(3), lsn % 16777216)
    check(nm == a.name, 'the name follows from the archived backup_label (%s)' % nm)
else:
    check(False, 'the archived backup_label has a START WAL LOCATION line')

# partition limits
per = {}
for i, n, ti, sha in members:
    c = per.setdefault(i, [0, 0])
    c[0] += 1
    if ti.isreg():
        c[1] += ti.size
mx_m = max((c[0] for c in per.values()), default=0)
mx_b = max((c[1] for c in per.values()), default=0)
note('partitions: %s' % ', '.join('%d: %d members/%d bytes' % (i, c[0], c[1]) for i, c in sorted(per.items())))
check(mx_m <= a.max_members, 'at most %d members per partition (max %d)' % (a.max_members, mx_m))
check(mx_b <= a.max_bytes, 'at most %d bytes of member data per partition (max %d)' % (a.max_bytes, mx_b))
for f in a.want_file:
    rel, size = f.rsplit(':', 1)
    check(rel in byname and byname[rel][1].isreg() and byname[rel][1].size == int(size),
          '%s (%s bytes) is archived whole, in partition %s' % (rel, size, byname.get(rel, ('-',))[0]))

# the sentinel
try:
    s = json.load(open(os.path.join(a.dir, 'sentinel.json')))
except Exception as e:
    s = {}
    note('sentinel: %s' % e)
check(sorted(s) == sorted(['wal_segment_backup_stop', 'wal_segment_offset_backup_stop',
                           'expanded_size_bytes', 'spec']), "the sentinel has WAL-E's four fields (%s)" % sorted(s))
stop = s.get('wal_segment_backup_stop')
off = s.get('wal_segment_offset_backup_stop')
check(isinstance(stop, str) and SEG_RE.match(stop or ''), 'wal_segment_backup_stop is 24 hex digits (%r)' % stop)
check(isinstance(off, str) and re.match(r'^[0-9]{8}$', off or ''), 'wal_segment_offset_backup_stop is 8 decimal digits (%r)' % off)
if a.stop_seg:
    check(stop in a.stop_seg.split(',') and off == a.stop_off,
          'stop position is the backup end LSN: %s/%s (want %s/%s)' % (stop, off, a.stop_seg, a.stop_off))
if a.min_stop_seg:
    check(isinstance(stop, str) and stop >= a.min_stop_seg, 'stop segment %s >= start segment %s' % (stop, a.min_stop_seg))
total = sum(ti.size for _, _, ti, _ in members if ti.isreg())
check(s.get('expanded_size_bytes') == total and type(s.get('expanded_size_bytes')) is int,
      'expanded_size_bytes is the sum of the file members (%r, want %d)' % (s.get('expanded_size_bytes'), total))
spec = s.get('spec')
check(isinstance(spec, dict) and isinstance(spec.get('tablespaces'), list),
      'spec is an object with a tablespaces list (%r)' % (spec,))
ev = open(os.path.join(a.dir, 'extended_version.txt'), errors='replace').read()
check(ev.strip() != '' and '15' in ev, 'extended_version.txt names the server version (%r)' % ev[:80])

# against the data directory the copy was made from (WAL-E's walk, 2.1)
if a.source:
    src = a.source
    want = {''}
    for r, dirs, files in os.walk(src):
        rel = os.path.relpath(r, src)
        top = rel == '.'
        keep = ['pgsql_tmp', 'pg_stat_tmp', '.wal-e'] + (['pg_xlog', 'pg_log', 'pg_replslot', 'pg_wal'] if top else [])
        for d in list(dirs):
            if d in keep or d == 'lost+found':
                dirs.remove(d)
                if d != 'lost+found':
                    want.add(os.path.normpath(os.path.join(rel, d)))
            else:
                want.add(os.path.normpath(os.path.join(rel, d)))
        for f in files:
            if not (top and f in TOP_EXCL):
                want.add(os.path.normpath(os.path.join(rel, f)))
    want = {'' if p == '.' else p for p in want}
    got = {n.rstrip('/') for n in names}
    got = {'' if n == '' else n for n in got}
    check(got == want, 'member set is WAL-E\'s walk of the copied directory (extra %s, missing %s)'
          % (sorted(got - want)[:5], sorted(want - got)[:5]))
    bad_c, bad_m = [], []
    for n in sorted(got & want):
        i, ti, sha = byname[n]
        st = os.lstat(os.path.join(src, n)) if n else os.lstat(src)
        if n and stat.S_IMODE(st.st_mode) != ti.mode and not stat.S_ISLNK(st.st_mode):
            bad_m.append('%s %o!=%o' % (n, ti.mode, stat.S_IMODE(st.st_mode)))
        if ti.isreg():
            h = hashlib.sha256(open(os.path.join(src, n), 'rb').read()).hexdigest()
            if h != sha or ti.size != st.st_size:
                bad_c.append(n)
    check(not bad_m, 'member modes are the files\' modes (%s)' % bad_m[:3])
    check(not bad_c, 'member contents equal the copied files (%s)' % bad_c[:3])
PY
run_py() { # LABEL ARGS...: one ok/not_ok per CHECK line
    local label=$1 out line rc; shift
    out=$(python3 "$SCRATCH/bpcheck.py" "$@" 2>&1); rc=$?
    while IFS= read -r line; do
        case $line in
            "CHECK 0 "*) ok "$label ${line#CHECK 0 }" ;;
            "CHECK 1 "*) not_ok "$label ${line#CHECK 1 }" ;;
            "#"*) echo "$line" ;;
            *) echo "# $line" ;;
        esac
    done <<<"$out"
    check "$label inspection of the stored backup ran to the end" [ $rc -eq 0 ]
}

# LSN (X/Y) + timeline -> "SEGMENT OFF8"; with "prev": the segment of LSN-1
# (pg_walfile_name_offset's convention at a segment boundary).
lsn_name() {
    local hi=$((16#${1%/*})) lo=$((16#${1#*/})) pos seg
    pos=$(( (hi << 32) | lo ))
    seg=$(( pos / SEG_SIZE ))
    [[ ${3:-} == prev ]] && seg=$(( (pos - 1) / SEG_SIZE ))
    printf '%08X%08X%08X %08d\n' "$2" $(( seg / (0x100000000 / SEG_SIZE) )) $(( seg % (0x100000000 / SEG_SIZE) )) $(( pos % SEG_SIZE ))
}

list_mp() { # incomplete multipart uploads in the bucket (s3tool has no ListMultipartUploads)
    curl -sS --max-time 10 --aws-sigv4 "aws:amz:${AWS_REGION:-us-east-1}:s3" --user "$RGW_ACCESS_KEY:$RGW_SECRET_KEY" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        "$RGW_ENDPOINT/$BUCKET?uploads="
}

# Every key under PFX/basebackups_005/ belongs to a backup with a sentinel.
bucket_clean() { # PFX -> 0 if clean; prints the strays
    rgw_s3 ls "$BUCKET" "$1/basebackups_005/" | cut -f1 | python3 -c '
import re, sys
pfx = sys.argv[1] + "/basebackups_005/"
keys = [k for k in sys.stdin.read().split("\n") if k]
done = {k[len(pfx):-len("_backup_stop_sentinel.json")] for k in keys
        if re.fullmatch(re.escape(pfx) + r"base_[0-9A-F]{24}_[0-9A-F]{8}_backup_stop_sentinel\.json", k)}
stray = [k for k in keys if not k.endswith("_backup_stop_sentinel.json") and k[len(pfx):].split("/")[0] not in done]
for k in stray: print(k)
sys.exit(1 if stray else 0)' "$1"
}

download_backup() { # PFX NAME DIR: keys.txt, parts/, sentinel.json, extended_version.txt
    local pfx=$1 name=$2 dir=$3 k
    mkdir -p "$dir/parts"
    rgw_s3 ls "$BUCKET" "$pfx/basebackups_005/" | cut -f1 >"$dir/keys.txt" || return 1
    for k in $(grep "^$pfx/basebackups_005/$name/tar_partitions/" "$dir/keys.txt"); do
        rgw_s3 get "$BUCKET" "$k" "$dir/parts/${k##*/}" || return 1
    done
    rgw_s3 get "$BUCKET" "$pfx/basebackups_005/${name}_backup_stop_sentinel.json" "$dir/sentinel.json" || return 1
    rgw_s3 get "$BUCKET" "$pfx/basebackups_005/$name/extended_version.txt" "$dir/extended_version.txt" || return 1
}

has_sentinel() { rgw_s3 head "$BUCKET" "$1/basebackups_005/${2}_backup_stop_sentinel.json" >/dev/null 2>&1; }
no_sentinel() { rgw_s3_absent "$BUCKET" "$1/basebackups_005/${2}_backup_stop_sentinel.json"; } # a 404, not a dead gateway
sentinel_is_json() { rgw_s3 head "$BUCKET" "$1/basebackups_005/${2}_backup_stop_sentinel.json" | grep -qx 'content-type=application/json'; }
ls_has() { ls "$1" 2>/dev/null | grep -qx -- "$2"; }
no_mp() { # no incomplete multipart upload under PFX/ (an error answer is not "clean")
    local out; out=$(list_mp) || return 1
    grep -q '<ListMultipartUploadsResult' <<<"$out" || { echo "# ListMultipartUploads: ${out:0:200}"; return 1; }
    ! grep -o "<Upload><Key>[^<]*" <<<"$out" | grep -q "<Key>$1/"
}
lzop_all_ok() { local p; for p in "$1"/parts/*; do lzop -tq "$p" || return 1; done; }

# Keys of the backup were stored before its sentinel (LastModified, seconds).
sentinel_last() { # PFX NAME DIR
    local pfx=$1 name=$2 dir=$3 k t s
    s=$(rgw_s3 head "$BUCKET" "$pfx/basebackups_005/${name}_backup_stop_sentinel.json" | sed -n 's/^last-modified=//p')
    s=$(date -d "$s" +%s) || return 1
    for k in $(grep "^$pfx/basebackups_005/$name/" "$dir/keys.txt" | grep -v walfs_index.json); do
        t=$(rgw_s3 head "$BUCKET" "$k" | sed -n 's/^last-modified=//p')
        t=$(date -d "$t" +%s) || return 1
        [ "$t" -le "$s" ] || { echo "# $k stored after the sentinel"; return 1; }
    done
}

# Run pg_basebackup (plain format, fast checkpoint, -v) as postgres, bounded.
# Sets BB_START, BB_END (LSNs X/Y, empty if unknown) and BB_TLI from the backup
# history file the primary wrote into its own pg_wal (pg_basebackup -v prints
# the start point only with -X fetch/stream), else from the -v output.
BB_START='' BB_END='' BB_TLI=''
newest_history() { ls "$PG_SCRATCH/primary/pg_wal" 2>/dev/null | grep '\.backup$' | sort | tail -n 1; }
bb_run() { # LOG DEST [options...]
    local log=$1 dest=$2 before hist rc; shift 2
    before=$(newest_history)
    _pg_as timeout "$BB_TIMEOUT" pg_basebackup -h "$PG_SCRATCH" -p "$PRIMARY_PORT" -U postgres \
        -D "$dest" -Fp --checkpoint=fast -v "$@" >"$log" 2>&1
    rc=$?
    hist=$(newest_history)
    BB_START='' BB_END='' BB_TLI=''
    if [[ -n $hist && $hist != "$before" ]]; then
        hist=$PG_SCRATCH/primary/pg_wal/$hist
        BB_START=$(sed -n 's/^START WAL LOCATION: \([0-9A-F]*\/[0-9A-F]*\) .*/\1/p' "$hist")
        BB_END=$(sed -n 's/^STOP WAL LOCATION: \([0-9A-F]*\/[0-9A-F]*\) .*/\1/p' "$hist")
        BB_TLI=$(sed -n 's/^START TIMELINE: //p' "$hist")
    else
        read -r BB_START BB_TLI < <(sed -n 's/.*write-ahead log start point: \([0-9A-F]*\/[0-9A-F]*\) on timeline \([0-9]*\).*/\1 \2/p' "$log")
        BB_END=$(sed -n 's/.*write-ahead log end point: \([0-9A-F]*\/[0-9A-F]*\).*/\1/p' "$log")
    fi
    return $rc
}

# push_pgbb LABEL MNT PFX NEWDIR XMODE [bpcheck options...]: push with
# pg_basebackup -X XMODE and inspect what was stored.  Sets PUSH_NAME.
PUSH_NAME=
push_pgbb() {
    local label=$1 mnt=$2 pfx=$3 newdir=$4 xmode=$5; shift 5
    local log=$SCRATCH/bb-$label.log rc name sseg soff stop_prev dl=$SCRATCH/dl-$label
    PUSH_NAME=
    bb_run "$log" "$mnt/basebackups_005/$newdir" -X "$xmode"; rc=$?
    check "[$label] pg_basebackup -X $xmode -D MNT/basebackups_005/$newdir exits 0 (rc $rc)" [ $rc -eq 0 ]
    if [ $rc -ne 0 ]; then
        sed 's/^/#   /' "$log" | tail -n 8
        tail -n 8 "$(walfs_log "$mnt")" | sed 's/^/#   walfs: /'
    fi
    [[ -n $BB_START ]] || { not_ok "[$label] the backup's start point is known (backup history file or pg_basebackup -v)"; return 1; }
    name=base_$(lsn_name "$BB_START" "$BB_TLI" | tr ' ' _)
    echo "# [$label] start $BB_START, end ${BB_END:-?} on timeline $BB_TLI: $name"
    # sentinel right after the exit: pg_basebackup returned only once it was stored
    check "[$label] the sentinel is in the bucket when pg_basebackup returns" has_sentinel "$pfx" "$name"
    [ $rc -eq 0 ] || return 1
    PUSH_NAME=$name
    check "[$label] ls basebackups_005 shows $name" ls_has "$mnt/basebackups_005" "$name"
    check "[$label] ... and no longer the temporary name $newdir" ls_lacks "$mnt/basebackups_005" "$newdir"
    check "[$label] LATEST points to $name" [ "$(readlink "$mnt/basebackups_005/LATEST")" == "$name" ]
    check "[$label] the backup reads through the mount (PG_VERSION)" [ "$(cat "$mnt/basebackups_005/$name/PG_VERSION" 2>/dev/null)" == 15 ]
    if ! download_backup "$pfx" "$name" "$dl"; then
        not_ok "[$label] download of $name with s3tool"; return 1
    fi
    check "[$label] every partition passes lzop -t" lzop_all_ok "$dl"
    check "[$label] the sentinel was stored after every other key of the backup" sentinel_last "$pfx" "$name" "$dl"
    check "[$label] the sentinel's Content-Type is application/json" sentinel_is_json "$pfx" "$name"
    [[ -n $BB_END ]] || { not_ok "[$label] the backup's end point is known"; return 1; }
    sseg=$(lsn_name "$BB_END" "$BB_TLI"); soff=${sseg#* }; sseg=${sseg% *}
    stop_prev=$(lsn_name "$BB_END" "$BB_TLI" prev); stop_prev=${stop_prev% *}
    run_py "[$label]" "$dl" --name "$name" --prefix "$pfx" --wal "$xmode" \
        --stop-seg "$sseg,$stop_prev" --stop-off "$soff" "$@"
}

# ------------------------------------------------------------------ setup
rgw_start "$SCRATCH/rgw" "${RGW_TEST_PORT:-7483}" || { echo "RGW did not start"; echo "0 passed, 1 failed"; exit 1; }
rgw_s3 mb "$BUCKET" >/dev/null
export AWS_ACCESS_KEY_ID=$RGW_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$RGW_SECRET_KEY
export RGW_ENDPOINT RGW_ACCESS_KEY RGW_SECRET_KEY
MOUNT_OPTS=(--endpoint="$RGW_ENDPOINT" --addressing=path)
MNT=$SCRATCH/mnt
walfs_mount "$MNT" "s3://$BUCKET/pgdb" "${MOUNT_OPTS[@]}" || fail_out "mount s3://$BUCKET/pgdb"
BB=$MNT/basebackups_005
ARCHIVE_CMD="cp %p $MNT/wal_005/%f"
RESTORE_CMD="cp $MNT/wal_005/%f %p"
PORT0=$((20000 + RANDOM % 10000))
PG_ARCHIVE_COMMAND=$ARCHIVE_CMD
PRIMARY_PORT=$(pg_free_port "$PORT0")
pg_init primary "$PRIMARY_PORT" && pg_start primary && pg_make_schema primary && pg_load primary 2000 ||
    fail_out "primary started, archiving through the mount"
seg=$(pg_switch_wal primary)
check "the primary archives $seg through the mount" [ -n "$seg" -a -e "$MNT/wal_005/$seg" ]

write_config_files() { # DIR: WAL-E never archives the top-level config files
    printf "max_connections = 100\nshared_buffers = 16MB\ndynamic_shared_memory_type = posix\nwal_level = replica\n" >"$1/postgresql.conf"
    printf "local all all trust\nhost all all 127.0.0.1/32 trust\n" >"$1/pg_hba.conf"
    : >"$1/pg_ident.conf"
}

# ------------------------------------------------- (a) pg_basebackup pushes
T0=$SECONDS
push_pgbb none "$MNT" pgdb incoming-none none; NAME_NONE=$PUSH_NAME
check "[none] the directory pushed into shows empty afterwards" \
    [ -d "$BB/incoming-none" -a -z "$(ls -A "$BB/incoming-none" 2>&1)" ]
# Files over one lzop block (the catalogs, the tables) are compressed as
# they arrive and spooled as lzop records (push/spool_file.h); the tests above
# prove the partitions right, this that the path was taken and saved space.
read -r SP_FILES SP_BYTES SP_SPOOL < <(sed -En 's/.*basebackups_005\/incoming-none: ([0-9]+) files \(([0-9]+) bytes\) were compressed as they arrived, into ([0-9]+) bytes of spool.*/\1 \2 \3/p' "$(walfs_log "$MNT")" | tail -n 1)
check "[none] large files were spooled compressed: ${SP_FILES:-0} files, ${SP_BYTES:-?} bytes into ${SP_SPOOL:-?}" \
    [ "${SP_FILES:-0}" -gt 0 -a "${SP_SPOOL:-0}" -gt 0 -a "$((${SP_SPOOL:-0} * 2))" -lt "${SP_BYTES:-0}" ]
pg_load primary 300 >/dev/null
RESULTS_FETCH=$(pg_results primary)
push_pgbb fetch "$MNT" pgdb incoming-fetch fetch; NAME_FETCH=$PUSH_NAME
pg_load primary 300 >/dev/null
# The same -D as the first push: a daily cron job runs the same command.
push_pgbb stream "$MNT" pgdb incoming-none stream; NAME_STREAM=$PUSH_NAME
echo "# (a) took $((SECONDS - T0)) s"
want=$(printf '%s\n' $NAME_NONE $NAME_FETCH $NAME_STREAM LATEST | sort -u | tr '\n' ' ')
check "ls basebackups_005 lists exactly the three pushed backups and LATEST ($want)" \
    [ "$(ls "$BB" | sort | tr '\n' ' ')" == "$want" ]
check "no stray keys under pgdb/basebackups_005/" bucket_clean pgdb
check "no incomplete multipart upload is left under pgdb/" no_mp pgdb

# ------------------------------------------------------------ (b) restores
T0=$SECONDS
pg_load primary 500 >/dev/null
pg_switch_wal primary >/dev/null
EXPECTED=$(pg_results primary)
# b1. A reader that knows only WAL-E's format: s3tool, lzop, tar.
if [[ -n $NAME_NONE ]]; then
    PLAIN=$SCRATCH/plain
    mkdir -p "$PLAIN"
    okx=0
    for p in $(rgw_s3 ls "$BUCKET" "pgdb/basebackups_005/$NAME_NONE/tar_partitions/" | cut -f1 | sort); do
        rgw_s3 get "$BUCKET" "$p" | lzop -dc | tar -xf - -C "$PLAIN" 2>/dev/null || okx=1
    done
    check "[b] plain tools: s3tool get | lzop -d | tar -x of $NAME_NONE" [ $okx -eq 0 -a -f "$PLAIN/PG_VERSION" ]
    write_config_files "$PLAIN"
    if pg_recover plain "$(pg_free_port $((PORT0 + 10)))" "$PLAIN" "$RESTORE_CMD"; then
        got=$(pg_results plain)
        check "[b] plain-tools restore + restore_command from the mount gives the primary's results ($EXPECTED, got $got)" [ -n "$got" -a "$got" == "$EXPECTED" ]
    else
        not_ok "[b] plain-tools restore of $NAME_NONE recovers"
    fi
    pg_stop plain
else
    not_ok "[b] plain-tools restore: no -X none backup"
fi
# b2. The -X fetch backup restores on its own: no archive at all.
if [[ -n $NAME_FETCH ]]; then
    ALONE=$SCRATCH/alone
    mkdir -p "$ALONE"
    for p in "$SCRATCH/dl-fetch/parts"/part_*.tar.lzo; do lzop -dc "$p" | tar -xf - -C "$ALONE" 2>/dev/null; done
    write_config_files "$ALONE"
    if pg_recover alone "$(pg_free_port $((PORT0 + 11)))" "$ALONE" "/bin/false"; then
        got=$(pg_results alone)
        check "[b] the -X fetch backup restores without the archive, to the results at backup time ($RESULTS_FETCH, got $got)" [ -n "$got" -a "$got" == "$RESULTS_FETCH" ]
    else
        not_ok "[b] the -X fetch backup restores without the archive"
    fi
    pg_stop alone
else
    not_ok "[b] self-contained restore: no -X fetch backup"
fi
# b3. Through the mount.
THRU=$SCRATCH/thru
if rsync -a "$BB/LATEST/" "$THRU/" 2>"$SCRATCH/rsync.err"; then
    ok "[b] rsync -a MNT/basebackups_005/LATEST/ DIR/"
    write_config_files "$THRU"
    if pg_recover thru "$(pg_free_port $((PORT0 + 12)))" "$THRU" "$RESTORE_CMD"; then
        got=$(pg_results thru)
        check "[b] restore of LATEST ($NAME_STREAM) through the mount gives the primary's results ($EXPECTED, got $got)" [ -n "$got" -a "$got" == "$EXPECTED" ]
    else
        not_ok "[b] restore of LATEST through the mount recovers"
    fi
    pg_stop thru
else
    not_ok "[b] rsync -a MNT/basebackups_005/LATEST/ DIR/ ($(head -c 200 "$SCRATCH/rsync.err"))"
fi
echo "# (b) took $((SECONDS - T0)) s"

# ------------------------------------------- (c) cp -a / rsync -a + rename
T0=$SECONDS
COPIES=$SCRATCH/copies
mkdir -p "$COPIES" && chown postgres: "$COPIES"
# stage_copy DIR: non-exclusive backup in one psql session; the data directory
# is copied between pg_backup_start and pg_backup_stop, then backup_label is
# written from the labelfile.  Prints "<start segment> <off8>".
stage_copy() {
    local dest=$1 w=$COPIES/session-${1##*/}
    mkdir -p "$w" && chown postgres: "$w"
    cat >"$w/session.sql" <<EOF
\\set ON_ERROR_STOP 1
SELECT file_name AS start_seg, lpad(file_offset::text, 8, '0') AS start_off
  FROM pg_walfile_name_offset(pg_backup_start('walfs push test', true)) \\gset
\\! cp -a $PG_SCRATCH/primary $dest
SELECT encode(convert_to(labelfile, 'UTF8'), 'hex') AS label_hex FROM pg_backup_stop(true) \\gset
\\setenv LABEL_HEX :label_hex
\\! python3 -c "import os, binascii; open('$dest/backup_label', 'wb').write(binascii.unhexlify(os.environ['LABEL_HEX']))"
\\echo :start_seg :start_off
EOF
    chown postgres: "$w/session.sql"
    _pg_as timeout "$PG_TIMEOUT" psql -X -q -A -t -h "$PG_SCRATCH" -p "$PRIMARY_PORT" -U postgres -d postgres \
        -f "$w/session.sql" 2>"$w/err" | tail -n 1
    [ -s "$dest/backup_label" ] || { sed 's/^/# /' "$w/err"; return 1; }
    # things WAL-E leaves out or keeps empty, on top of postmaster.pid/opts,
    # the config files and the WAL in pg_wal that the copy already has
    touch "$dest/promote" "$dest/recovery.done"
    mkdir -p "$dest/base/pgsql_tmp" && echo tmp >"$dest/base/pgsql_tmp/pgsql_tmp123.0"
    mkdir -p "$dest/pg_stat_tmp" && echo stat >"$dest/pg_stat_tmp/global.stat"
    chown -R postgres: "$dest"
}
# Files written out of order (O_DIRECT, so each write reaches walfs as it
# is made): one whose first MiB comes second (that write waits for its
# turn, then is held in memory until the gap fills, then compressed on),
# one also rewritten behind what was compressed and ending after a hole
# (kept as plain bytes from there).  The same bytes go into the staged
# copy, which the backup is compared with.
cat >"$SCRATCH/ooo.py" <<'PY'
import mmap, os, sys
how, stage, dst = sys.argv[1:4]
M = 1 << 20
def content(n, seed):
    text = b'walfs out of order %d ' % seed
    return bytes((text * (n // len(text) + 1))[:n]) if seed % 2 else os.urandom(n // 4) + (text * n)[:n - n // 4]
if how == 'swapped':
    size = 2 * M + M // 2
    data = content(size, 1)
    writes = [(M, data[M:2 * M]), (0, data[:M]), (2 * M, data[2 * M:])]
else:
    size = 3 * M + 12288
    data = bytearray(content(size, 2))
    data[3 * M:3 * M + 8192] = bytes(8192)      # a hole
    data = bytes(data)
    writes = [(M, data[M:2 * M]), (0, data[:M]), (2 * M, os.urandom(M)), (2 * M, data[2 * M:3 * M]),
              (3 * M + 8192, data[3 * M + 8192:])]
name = 'walfs_ooo_' + how
with open(os.path.join(stage, name), 'wb') as f:
    f.write(data)
os.chmod(os.path.join(stage, name), 0o600)
fd = os.open(os.path.join(dst, name), os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
for off, b in writes:
    buf = mmap.mmap(-1, len(b))             # O_DIRECT wants aligned memory
    buf.write(b)
    if os.pwrite(fd, buf, off) != len(b):
        sys.exit('short write at %d' % off)
    buf.close()
os.close(fd)
PY
# copy_push LABEL HOW: HOW = rsync or cp.  Sets PUSH_NAME.
copy_push() {
    local label=$1 how=$2 stage=$COPIES/$1 newdir=incoming-$1 done=done-$1 rc start name dl=$SCRATCH/dl-$1
    PUSH_NAME=
    start=$(stage_copy "$stage") || { not_ok "[$label] data directory copied between pg_backup_start and pg_backup_stop"; return 1; }
    name=base_${start// /_}
    check "[$label] staged copy has pg_wal segments, postmaster.pid and postgresql.conf (to be left out)" \
        bash -c "ls '$stage/pg_wal' | grep -qE '^[0-9A-F]{24}\$' && [ -f '$stage/postmaster.pid' -a -f '$stage/postgresql.conf' ]"
    if [[ $how == rsync ]]; then
        as_pg timeout "$BB_TIMEOUT" rsync -a "$stage/" "$BB/$newdir/" 2>"$SCRATCH/$label.err"; rc=$?
        check "[$label] rsync -a COPY/ MNT/basebackups_005/$newdir/ (rc $rc)" [ $rc -eq 0 ]
    else
        as_pg timeout "$BB_TIMEOUT" bash -c "mkdir '$BB/$newdir' && cp -a '$stage/backup_label' '$BB/$newdir/' &&
            cd '$stage' && cp -a \$(ls -A | grep -vx backup_label) '$BB/$newdir/'" 2>"$SCRATCH/$label.err"; rc=$?
        check "[$label] cp -a backup_label first, then the rest, into MNT/basebackups_005/$newdir/ (rc $rc)" [ $rc -eq 0 ]
        local order
        for order in swapped rewritten; do
            as_pg python3 "$SCRATCH/ooo.py" "$order" "$stage" "$BB/$newdir" 2>>"$SCRATCH/$label.err"
            check "[$label] a file written out of order ($order) with O_DIRECT" [ $? -eq 0 ]
        done
    fi
    [ $rc -eq 0 ] || head -n 5 "$SCRATCH/$label.err" | sed 's/^/#   /'
    check "[$label] no sentinel before the rename" no_sentinel pgdb "$name"
    as_pg timeout "$BB_TIMEOUT" mv "$BB/$newdir" "$BB/$done" 2>"$SCRATCH/$label.mv.err"; rc=$?
    check "[$label] mv MNT/basebackups_005/$newdir MNT/basebackups_005/$done completes the push (rc $rc)" [ $rc -eq 0 ]
    [ $rc -eq 0 ] || { head -n 3 "$SCRATCH/$label.mv.err" | sed 's/^/#   /'; tail -n 8 "$(walfs_log "$MNT")" | sed 's/^/#   walfs: /'; }
    check "[$label] the sentinel is in the bucket when mv returns" has_sentinel pgdb "$name"
    [ $rc -eq 0 ] || return 1
    PUSH_NAME=$name
    check "[$label] ls basebackups_005 shows $name" ls_has "$BB" "$name"
    check "[$label] ... neither $newdir nor $done" ls_lacks "$BB" "$newdir|$done"
    check "[$label] LATEST points to $name" [ "$(readlink "$BB/LATEST")" == "$name" ]
    download_backup pgdb "$name" "$dl" || { not_ok "[$label] download of $name"; return 1; }
    check "[$label] every partition passes lzop -t" lzop_all_ok "$dl"
    check "[$label] the sentinel was stored after every other key of the backup" sentinel_last pgdb "$name" "$dl"
    run_py "[$label]" "$dl" --name "$name" --prefix pgdb --wal copy --min-stop-seg "${start% *}" --source "$stage"
    if [[ $how == cp ]]; then
        local held plain waited
        read -r plain waited held < <(sed -En "s/.*basebackups_005\/$newdir: .* spooled plain, ([0-9]+) of them after compressing had begun; ([0-9]+) writes waited for an earlier one, ([0-9]+) were held in memory.*/\1 \2 \3/p" "$(walfs_log "$MNT")" | tail -n 1)
        check "[$label] the out-of-order writes were held in memory (${held:-?}) and the rewritten file turned plain (${plain:-?})" \
            [ "${held:-0}" -ge 1 -a "${plain:-0}" -ge 1 ]
        check "[$label] a write ahead of the end waited for its turn before it was held (${waited:-?} waited)" \
            [ "${waited:-0}" -ge 1 ]
    fi
}
copy_push rsync rsync; NAME_RSYNC=$PUSH_NAME
copy_push cp cp; NAME_CP=$PUSH_NAME
check "no stray keys under pgdb/basebackups_005/ after the copy pushes" bucket_clean pgdb
pg_load primary 300 >/dev/null
pg_switch_wal primary >/dev/null
EXPECTED=$(pg_results primary)
for v in rsync cp; do
    n=NAME_${v^^}
    [[ -n ${!n} ]] || { not_ok "[$v] restore: no backup"; continue; }
    dst=$SCRATCH/thru-$v
    if rsync -a "$BB/${!n}/" "$dst/" 2>/dev/null; then
        write_config_files "$dst"
        if pg_recover "thru$v" "$(pg_free_port $((PORT0 + 13)))" "$dst" "$RESTORE_CMD"; then
            got=$(pg_results "thru$v")
            check "[$v] restore of ${!n} through the mount gives the primary's results ($EXPECTED, got $got)" [ -n "$got" -a "$got" == "$EXPECTED" ]
        else
            not_ok "[$v] restore of the $v-pushed backup through the mount recovers"
        fi
        pg_stop "thru$v"
    else
        not_ok "[$v] rsync -a MNT/basebackups_005/${!n}/ DIR/"
    fi
done
echo "# (c) took $((SECONDS - T0)) s"

# ------------------------------------------ (d) lowered partition limits
T0=$SECONDS
LIMIT_BYTES=4194304
LIMIT_MEMBERS=100
pg_psql primary "CREATE TABLE mid AS SELECT g, repeat('x', 200) AS t FROM generate_series(1, 13000) g" >/dev/null
MID=$(pg_psql primary "SELECT pg_relation_filepath('mid') || ':' || pg_relation_size('mid')")
echo "# mid table: $MID (bigger than what is left of a partition, smaller than the limit)"
MNT2=$SCRATCH/mnt-limits
if walfs_mount "$MNT2" "s3://$BUCKET/limits" "${MOUNT_OPTS[@]}" --backup-partition-bytes=$LIMIT_BYTES \
        --backup-partition-members=$LIMIT_MEMBERS; then
    ok "[limits] mount with --backup-partition-bytes=$LIMIT_BYTES --backup-partition-members=$LIMIT_MEMBERS"
    push_pgbb limits "$MNT2" limits incoming none --max-bytes $LIMIT_BYTES --max-members $LIMIT_MEMBERS \
        --min-parts 3 --want-file "$MID"
    NAME_LIMITS=$PUSH_NAME
    # A file bigger than the whole partition limit: WAL-E's TarMemberTooBigError.
    pg_psql primary "CREATE TABLE big AS SELECT g, repeat('x', 200) AS t FROM generate_series(1, 27000) g" >/dev/null
    BIGF=$(pg_psql primary "SELECT pg_relation_filepath('big')")
    log=$SCRATCH/bb-toobig.log
    bb_run "$log" "$MNT2/basebackups_005/incoming-toobig" -X none; rc=$?
    check "[limits] pushing a $(pg_psql primary "SELECT pg_relation_size('big')")-byte file past a $LIMIT_BYTES-byte limit fails (rc $rc)" [ $rc -ne 0 -a $rc -ne 124 ]
    check "[limits] ... with an error naming the file $BIGF (walfs log or pg_basebackup)" \
        bash -c "grep -qF '$BIGF' '$(walfs_log "$MNT2")' '$log'"
    if [[ -n $BB_START ]]; then
        bad=base_$(lsn_name "$BB_START" "$BB_TLI" | tr ' ' _)
        check "[limits] ... no sentinel for $bad" no_sentinel limits "$bad"
    fi
    clean=1
    for _ in $(seq 60); do bucket_clean limits >/dev/null && { clean=0; break; }; sleep 0.5; done
    check "[limits] ... and its partitions are removed (no stray keys under limits/basebackups_005/)" [ $clean -eq 0 ]
    check "[limits] ... ls shows only the good backup and LATEST" \
        [ "$(ls "$MNT2/basebackups_005" 2>/dev/null | sort | tr '\n' ' ')" == "$(printf '%s\n' $NAME_LIMITS LATEST | sort | tr '\n' ' ')" ]
    check "[limits] the limits mount unmounts cleanly" walfs_umount "$MNT2"
else
    not_ok "[limits] mount with --backup-partition-bytes=$LIMIT_BYTES --backup-partition-members=$LIMIT_MEMBERS"
fi
pg_psql primary "DROP TABLE IF EXISTS big" >/dev/null
echo "# (d) took $((SECONDS - T0)) s"

# ---------------------------- (e) the same -D again, the moment the last ends
T0=$SECONDS
again_names=()
for i in 1 2; do
    log=$SCRATCH/bb-again-$i.log
    bb_run "$log" "$BB/incoming-again" -X fetch; rc=$?
    check "[again] push $i into MNT/basebackups_005/incoming-again exits 0 (rc $rc)" [ $rc -eq 0 ]
    [ $rc -eq 0 ] || { sed 's/^/#   /' "$log" | tail -n 4; tail -n 4 "$(walfs_log "$MNT")" | sed 's/^/#   walfs: /'; }
    again_names+=("base_$(lsn_name "${BB_START:-0/0}" "${BB_TLI:-1}" | tr ' ' _)")
done
check "[again] both pushes are stored under their own names (${again_names[*]})" \
    [ "${again_names[0]}" != "${again_names[1]}" ]
for n in "${again_names[@]}"; do
    check "[again] $n has its sentinel" has_sentinel pgdb "$n"
    check "[again] ... and lists in basebackups_005" ls_has "$BB" "$n"
done
echo "# (e) took $((SECONDS - T0)) s"

check "no incomplete multipart upload is left in the bucket" no_mp pgdb
check "... nor under limits/" no_mp limits
PG_KEEP=1 pg_stop primary
check "walfs unmounts cleanly" walfs_umount "$MNT"
t_summary
