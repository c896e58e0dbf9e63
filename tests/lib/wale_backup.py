#!/usr/bin/env python3
"""wale_backup.py: write base backups in WAL-E's format (basebackups_005) for
the walfs tests, with the standard library's tarfile and the lzop binary only.

It follows WAL-E's backup-push (see /work/shared/docs/wal-e-format.md, 1.4-1.9
and 2): the os.walk of the data directory with WAL-E's excludes, one entry per
directory, the root entry "/", partitions cut by WAL-E's rule, hard links
detected across the whole backup with one dummy TarFile, files padded/cut to
their planned size, extended_version.txt first, partitions, then the sentinel
last.  Everything goes below OUT laid out with the bucket keys of a WAL-E
prefix:

  OUT/basebackups_005/<name>/extended_version.txt
  OUT/basebackups_005/<name>/tar_partitions/part_%08d.tar.lzo
  OUT/basebackups_005/<name>_backup_stop_sentinel.json

So OUT is usable as walfs's file:// prefix directly, and for S3 a directory
STAGE with OUT=STAGE/<prefix> is uploaded with `s3tool.py sync-up STAGE BUCKET`
(upload the sentinel last if something may be listing meanwhile).

Subcommands
  push   --pgdata DIR --out OUT --name base_<SEG>_<OFF8> [--format gnu|pax|ustar]
         [--max-members N] [--max-bytes N] [--stop-segment SEG --stop-offset OFF8]
         [--backup-label FILE] [--version-text TEXT] [--no-sentinel]
         [--manifest FILE]
         Back up DIR.  --format default pax (what WAL-E on Python >= 3.8
         writes); gnu = Python <= 3.7; ustar for completeness.  Limits default
         to WAL-E's (1.5 GiB payload, 6144 members per partition).
         --backup-label adds FILE's content as member "backup_label" in an
         extra last partition (PG >= 15 non-exclusive backups, like the
         fixture).  --no-sentinel leaves the backup incomplete, for `finish`.
         --manifest writes one JSON line per member (name, type, size, mode,
         uid, gid, mtime, linkname, partition) for the tests.
  finish --out OUT --name NAME [--format F] [--backup-label FILE]
         --stop-segment SEG --stop-offset OFF8 [--pgdata DIR]
         Second half of an online backup: after pg_backup_stop(), add the
         backup_label partition (if given) and write the sentinel.  The
         expanded size is recomputed from the partitions already written.
  hostile --out OUT [--format F]
         Write deliberately broken backups, one per name (printed as
         "<name> <what>" lines):
           base_0000000100000000000000A1_00000040  member "../../etc/x"
           base_0000000100000000000000A2_00000040  member "/etc/y" (absolute)
           base_0000000100000000000000A3_00000040  symlink passwd_link -> /etc/passwd
           base_0000000100000000000000A4_00000040  partition 0 truncated
           base_0000000100000000000000A5_00000040  corrupt lzop block in partition 0
           base_0000000100000000000000A6_00000040  partitions 0 and 2 only
         Each also holds PG_VERSION, a directory and a few files that are fine.
"""

import argparse
import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time

PARTITION_MAX_SZ = 1610612736
PARTITION_MAX_MEMBERS = PARTITION_MAX_SZ // 262144
NAME_RE = re.compile(r'^base_[0-9A-F]{24}_[0-9A-F]{8}$')
FORMATS = {'gnu': tarfile.GNU_FORMAT, 'pax': tarfile.PAX_FORMAT, 'ustar': tarfile.USTAR_FORMAT}
TOP_EXCLUDED_FILES = ('postmaster.pid', 'postmaster.opts', 'postgresql.conf', 'pg_hba.conf',
                      'recovery.conf', 'recovery.done', 'pg_ident.conf', 'promote')


def die(msg):
    print('wale_backup: ' + msg, file=sys.stderr)
    sys.exit(1)


# --- 2.1: which paths are archived ---------------------------------------

def walk(pgdata):
    """WAL-E tar_partition.partition(): (spec, [absolute paths in order])."""
    if not pgdata.endswith(os.path.sep):
        pgdata += os.path.sep
    matches = []
    spec = {'base_prefix': pgdata, 'tablespaces': []}

    def raise_err(e):
        raise e

    for root, dirnames, filenames in os.walk(pgdata, onerror=raise_err):
        toplevel = os.path.abspath(root) == os.path.abspath(pgdata)
        matches.append(root)
        if toplevel:
            for name in ('pg_xlog', 'pg_log', 'pg_replslot', 'pg_wal'):
                if name in dirnames:
                    dirnames.remove(name)
                    matches.append(os.path.join(root, name))
        for name in ('pgsql_tmp', 'pg_stat_tmp', '.wal-e'):
            if name in dirnames:
                dirnames.remove(name)
                matches.append(os.path.join(root, name))
        if 'lost+found' in dirnames:
            dirnames.remove('lost+found')
        for filename in filenames:
            if toplevel and filename in TOP_EXCLUDED_FILES:
                continue
            matches.append(os.path.join(root, filename))
        if os.path.abspath(root) == os.path.abspath(os.path.join(pgdata, 'pg_tblspc')):
            for ts in dirnames:
                ts_path = os.path.join(root, ts)
                if not (os.path.islink(ts_path) and os.path.isdir(ts_path)):
                    continue
                loc = os.readlink(ts_path)
                if not loc.endswith(os.path.sep):
                    loc += os.path.sep
                if ts not in spec['tablespaces']:
                    spec['tablespaces'].append(ts)
                    spec[ts] = {'loc': loc, 'link': ts_path[len(pgdata):]}
                for ts_root, ts_dirs, ts_files in os.walk(ts_path):
                    if 'pgsql_tmp' in ts_dirs:
                        ts_dirs.remove('pgsql_tmp')
                        matches.append(os.path.join(ts_root, 'pgsql_tmp'))
                    for f in ts_files:
                        matches.append(os.path.join(ts_root, f))
                    if not ts_files and ts_root not in matches:
                        matches.append(ts_root)
                if ts_path in matches:
                    matches.remove(ts_path)
    return spec, matches


def arcname_of(base, path):
    base = os.path.abspath(base)
    p = os.path.abspath(path)
    if p == base:
        return ''
    if not p.startswith(base + os.path.sep):
        die('path %s outside %s' % (path, base))
    return p[len(base) + 1:]


# --- 2.2: partitioning ----------------------------------------------------

def plan(pgdata, paths, max_bytes, max_members):
    """WAL-E _segmentation_guts(): list of partitions, each a list of
    (tarinfo, path).  One dummy TarFile for the whole walk, so hard links are
    detected across partitions, exactly like CPython/WAL-E."""
    bogus = tarfile.TarFile(os.devnull, 'w', dereference=False)
    parts = []
    cur = []
    nbytes = 0
    nmembers = 0
    try:
        for path in paths:
            try:
                ti = bogus.gettarinfo(path, arcname=arcname_of(pgdata, path))
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue          # unlinked meanwhile: WAL replay repairs it
                raise
            if ti is None:           # socket: WAL-E would crash; we skip it
                print('wale_backup: skipping unsupported file %s' % path, file=sys.stderr)
                continue
            if ti.size > max_bytes:
                die('member %s (%d bytes) bigger than a partition (%d)' % (path, ti.size, max_bytes))
            if nbytes + ti.size >= max_bytes or nmembers >= max_members:
                parts.append(cur)
                cur = [(ti, path)]
                nbytes = ti.size
                nmembers = 1
            else:
                cur.append((ti, path))
                nbytes += ti.size
                nmembers += 1
    finally:
        bogus.close()
    if cur:
        parts.append(cur)
    return parts


# --- writing ---------------------------------------------------------------

class StreamPadFileObj:
    """Exactly `size` bytes of a file: cut if it grew, NUL-padded if it shrank."""

    def __init__(self, f, size):
        self.f = f
        self.left = size

    def read(self, n=-1):
        if self.left <= 0:
            return b''
        if n is None or n < 0 or n > self.left:
            n = self.left
        data = self.f.read(n)
        if len(data) < n:
            data += b'\0' * (n - len(data))
        self.left -= len(data)
        return data


def lzop_writer(dest):
    out = open(dest + '.tmp', 'wb')
    proc = subprocess.Popen(['lzop', '-c'], stdin=subprocess.PIPE, stdout=out)
    return proc, out


def lzop_finish(proc, out, dest):
    proc.stdin.close()
    rc = proc.wait()
    out.close()
    if rc != 0:
        die('lzop -c exited %d for %s' % (rc, dest))
    os.replace(dest + '.tmp', dest)


def write_partition(dest, members, fmt):
    """members: list of (tarinfo, path-or-None, bytes-or-None)."""
    proc, out = lzop_writer(dest)
    tar = tarfile.open(fileobj=proc.stdin, mode='w|', format=fmt)
    for ti, path, data in members:
        if data is not None:
            tar.addfile(ti, io.BytesIO(data))
        elif ti.isfile():
            try:
                with open(path, 'rb') as f:
                    tar.addfile(ti, StreamPadFileObj(f, ti.size))
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue
                raise
        else:
            tar.addfile(ti)
    tar.close()
    lzop_finish(proc, out, dest)


def backup_dir(out, name):
    return os.path.join(out, 'basebackups_005', name)


def write_file_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)


def sentinel_path(out, name):
    return os.path.join(out, 'basebackups_005', name + '_backup_stop_sentinel.json')


def write_sentinel(out, name, stop_seg, stop_off, expanded, spec):
    body = {'wal_segment_backup_stop': stop_seg,
            'wal_segment_offset_backup_stop': stop_off,
            'expanded_size_bytes': expanded,
            'spec': spec}
    write_file_atomic(sentinel_path(out, name), json.dumps(body).encode('ascii'))


def default_version(pgdata):
    try:
        v = subprocess.run(['pg_config', '--version'], capture_output=True, text=True).stdout.strip()
        if v:
            return v
    except OSError:
        pass
    try:
        return 'PostgreSQL ' + open(os.path.join(pgdata, 'PG_VERSION')).read().strip()
    except OSError:
        return 'PostgreSQL'


def label_member(label_bytes, pgdata):
    ti = tarfile.TarInfo('backup_label')
    ti.size = len(label_bytes)
    ti.mode = 0o600
    ti.mtime = time.time()
    ti.type = tarfile.REGTYPE
    if pgdata:
        st = os.stat(pgdata)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        try:
            import pwd
            ti.uname = pwd.getpwuid(st.st_uid).pw_name
        except (KeyError, ImportError):
            pass
        try:
            import grp
            ti.gname = grp.getgrgid(st.st_gid).gr_name
        except (KeyError, ImportError):
            pass
    return ti


def part_path(out, name, n):
    return os.path.join(backup_dir(out, name), 'tar_partitions', 'part_%08d.tar.lzo' % n)


def check_name(name):
    if not NAME_RE.match(name):
        die('bad backup name %r (want base_<24 hex>_<8 hex/decimal>)' % name)


def manifest_line(ti, n):
    return json.dumps({'name': ti.name, 'type': ti.type.decode('latin-1'), 'size': ti.size,
                       'mode': ti.mode, 'uid': ti.uid, 'gid': ti.gid, 'mtime': ti.mtime,
                       'linkname': ti.linkname, 'partition': n})


def cmd_push(a):
    check_name(a.name)
    if not os.path.isdir(a.pgdata):
        die('%s is not a directory' % a.pgdata)
    pgdata = os.path.abspath(a.pgdata)
    fmt = FORMATS[a.format]
    spec, paths = walk(a.pgdata)
    parts = plan(pgdata, paths, a.max_bytes, a.max_members)
    bdir = backup_dir(a.out, a.name)
    if os.path.exists(sentinel_path(a.out, a.name)):
        die('backup %s already complete in %s' % (a.name, a.out))
    # Leftovers of an earlier, failed push under the same name would be read
    # as partitions of this one.
    shutil.rmtree(os.path.join(bdir, 'tar_partitions'), ignore_errors=True)
    os.makedirs(os.path.join(bdir, 'tar_partitions'), exist_ok=True)
    # 1.9: extended_version.txt first, then the partitions, then the sentinel.
    write_file_atomic(os.path.join(bdir, 'extended_version.txt'),
                      (a.version_text if a.version_text is not None else default_version(pgdata)).encode())
    expanded = 0
    man = open(a.manifest, 'w') if a.manifest else None
    for n, members in enumerate(parts):
        write_partition(part_path(a.out, a.name, n), [(ti, p, None) for ti, p in members], fmt)
        for ti, _ in members:
            expanded += ti.size
            if man:
                man.write(manifest_line(ti, n) + '\n')
    nparts = len(parts)
    if a.backup_label:
        label = open(a.backup_label, 'rb').read()
        ti = label_member(label, pgdata)
        write_partition(part_path(a.out, a.name, nparts), [(ti, None, label)], fmt)
        expanded += ti.size
        if man:
            man.write(manifest_line(ti, nparts) + '\n')
        nparts += 1
    if man:
        man.close()
    if not a.no_sentinel:
        write_sentinel(a.out, a.name, a.stop_segment or a.name[5:29],
                       a.stop_offset or a.name[30:], expanded, spec)
    print('%s: %d partitions, expanded_size_bytes %d' % (a.name, nparts, expanded), file=sys.stderr)


def existing_parts(out, name):
    d = os.path.join(backup_dir(out, name), 'tar_partitions')
    nums = []
    for f in os.listdir(d) if os.path.isdir(d) else []:
        m = re.match(r'^part_(\d+)\.tar\.lzo$', f)
        if m:
            nums.append(int(m.group(1)))
    return sorted(nums)


def partition_member_sizes(path):
    p = subprocess.Popen(['lzop', '-dc', path], stdout=subprocess.PIPE)
    total = 0
    with tarfile.open(fileobj=p.stdout, mode='r|') as t:
        for ti in t:
            total += ti.size if ti.isfile() else 0
    p.stdout.close()
    if p.wait() != 0:
        die('lzop -dc %s failed' % path)
    return total


def cmd_finish(a):
    check_name(a.name)
    nums = existing_parts(a.out, a.name)
    if not nums or nums != list(range(len(nums))):
        die('backup %s: partitions missing or not consecutive: %s' % (a.name, nums))
    expanded = sum(partition_member_sizes(part_path(a.out, a.name, n)) for n in nums)
    if a.backup_label:
        label = open(a.backup_label, 'rb').read()
        ti = label_member(label, a.pgdata)
        write_partition(part_path(a.out, a.name, len(nums)), [(ti, None, label)], FORMATS[a.format])
        expanded += ti.size
    spec = {'base_prefix': os.path.abspath(a.pgdata) + '/' if a.pgdata else '/', 'tablespaces': []}
    if a.pgdata:
        spec = walk(a.pgdata)[0]
    write_sentinel(a.out, a.name, a.stop_segment, a.stop_offset, expanded, spec)
    print('%s: complete, expanded_size_bytes %d' % (a.name, expanded), file=sys.stderr)


# --- hostile backups ---------------------------------------------------------

def _ti(name, typ=tarfile.REGTYPE, size=0, mode=0o600, linkname=''):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.size = size
    ti.mode = mode
    ti.mtime = 1700000000.25
    ti.uid = os.getuid()
    ti.gid = os.getgid()
    ti.linkname = linkname
    return ti


def _good_members():
    body = b'15\n'
    data = b'fine content\n' * 10
    return [(_ti('', tarfile.DIRTYPE, mode=0o700), None, None),
            (_ti('PG_VERSION', size=len(body)), None, body),
            (_ti('global', tarfile.DIRTYPE, mode=0o700), None, None),
            (_ti('global/ok', size=len(data)), None, data)]


def _big_data(seed, n):
    # Compressible but not trivially (several lzop blocks of real LZO data).
    rnd = random.Random(seed)
    words = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(3, 12))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words)
    return bytes(out[:n])


def _write_hostile(out, name, fmt, partitions):
    bdir = backup_dir(out, name)
    if os.path.exists(bdir):
        shutil.rmtree(bdir)
    os.makedirs(os.path.join(bdir, 'tar_partitions'))
    write_file_atomic(os.path.join(bdir, 'extended_version.txt'), b'PostgreSQL 15 (hostile test backup)')
    expanded = 0
    for n, members in partitions:
        write_partition(part_path(out, name, n), members, fmt)
        expanded += sum(ti.size for ti, _, _ in members)
    return expanded


def _lzop_ok(path):
    return subprocess.run(['lzop', '-t', path], capture_output=True).returncode == 0


def cmd_hostile(a):
    fmt = FORMATS[a.format]
    spec = {'base_prefix': '/var/lib/postgresql/15/main/', 'tablespaces': []}
    made = []

    def done(name, what, expanded):
        write_sentinel(a.out, name, name[5:29], name[30:], expanded, spec)
        made.append((name, what))

    big = _big_data(1, 700 * 1024)
    evil = b'escaped!\n'

    n = 'base_0000000100000000000000A1_00000040'
    done(n, 'member ../../etc/x', _write_hostile(a.out, n, fmt, [
        (0, _good_members() + [(_ti('../../etc/x', size=len(evil)), None, evil),
                               (_ti('global/../../../etc/z', size=len(evil)), None, evil)])]))
    n = 'base_0000000100000000000000A2_00000040'
    done(n, 'member /etc/y (absolute)', _write_hostile(a.out, n, fmt, [
        (0, _good_members() + [(_ti('/etc/y', size=len(evil)), None, evil)])]))
    n = 'base_0000000100000000000000A3_00000040'
    done(n, 'symlink passwd_link -> /etc/passwd', _write_hostile(a.out, n, fmt, [
        (0, _good_members() + [(_ti('passwd_link', tarfile.SYMTYPE, mode=0o777,
                                    linkname='/etc/passwd'), None, None)])]))
    n = 'base_0000000100000000000000A4_00000040'
    exp = _write_hostile(a.out, n, fmt, [
        (0, _good_members() + [(_ti('global/big', size=len(big)), None, big)])])
    p = part_path(a.out, n, 0)
    data = open(p, 'rb').read()
    write_file_atomic(p, data[:len(data) * 2 // 3])
    done(n, 'partition 0 truncated', exp)
    n = 'base_0000000100000000000000A5_00000040'
    exp = _write_hostile(a.out, n, fmt, [
        (0, _good_members() + [(_ti('global/big', size=len(big)), None, big)])])
    p = part_path(a.out, n, 0)
    data = bytearray(open(p, 'rb').read())
    for off in range(len(data) // 2, len(data) - 64, 97):
        c = bytearray(data)
        c[off] ^= 0x55
        write_file_atomic(p, bytes(c))
        if not _lzop_ok(p):
            break
    else:
        die('could not corrupt %s detectably' % p)
    done(n, 'corrupt lzop block in partition 0', exp)
    n = 'base_0000000100000000000000A6_00000040'
    d1 = b'in partition one\n'
    d2 = b'in partition two\n'
    exp = _write_hostile(a.out, n, fmt, [
        (0, _good_members()),
        (1, [(_ti('global/one', size=len(d1)), None, d1)]),
        (2, [(_ti('global/two', size=len(d2)), None, d2)])])
    os.unlink(part_path(a.out, n, 1))
    done(n, 'partitions 0 and 2 only', exp)
    for name, what in made:
        print('%s %s' % (name, what))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('push')
    p.add_argument('--pgdata', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--name', required=True)
    p.add_argument('--format', choices=FORMATS, default='pax')
    p.add_argument('--max-members', type=int, default=PARTITION_MAX_MEMBERS)
    p.add_argument('--max-bytes', type=int, default=PARTITION_MAX_SZ)
    p.add_argument('--stop-segment')
    p.add_argument('--stop-offset')
    p.add_argument('--backup-label')
    p.add_argument('--version-text')
    p.add_argument('--no-sentinel', action='store_true')
    p.add_argument('--manifest')
    p = sub.add_parser('finish')
    p.add_argument('--out', required=True)
    p.add_argument('--name', required=True)
    p.add_argument('--format', choices=FORMATS, default='pax')
    p.add_argument('--backup-label')
    p.add_argument('--pgdata')
    p.add_argument('--stop-segment', required=True)
    p.add_argument('--stop-offset', required=True)
    p = sub.add_parser('hostile')
    p.add_argument('--out', required=True)
    p.add_argument('--format', choices=FORMATS, default='pax')
    a = ap.parse_args()
    for attr in ('stop_segment',):
        v = getattr(a, attr, None)
        if v is not None and not re.match(r'^[0-9A-F]{24}$', v):
            die('bad --stop-segment %r' % v)
    for attr in ('stop_offset',):
        v = getattr(a, attr, None)
        if v is not None and not re.match(r'^[0-9A-F]{8}$', v):
            die('bad --stop-offset %r' % v)
    {'push': cmd_push, 'finish': cmd_finish, 'hostile': cmd_hostile}[a.cmd](a)


if __name__ == '__main__':
    main()
