/* Unit tests for backup/backup_index.c: the WAL-E fixture against its
 * MANIFEST, synthesized GNU/PAX/ustar backups, hostile members and broken
 * partitions, and the JSON cache (round trip, tampering, truncation).
 * Data offsets are checked against the bytes `lzop -dc` produces and the
 * member contents Python's tarfile extracts.  Indexing must decode only the
 * lzop blocks that hold tar headers; counters in backup_index_internal.h
 * prove the rest is skipped.  Run from the repository root. */
#include "common/hex.h"
#include "backup/backup_index.h"
#include "backup/backup_index_internal.h"
#include "common/log.h"
#include "tests/unit/fault_store.h"
#include "tests/unit/tap.h"
#include "tests/unit/test_sh.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#define FIXTURE_DIR "tests/fixtures/wale-pg15-a"
#define FIXTURE_BACKUP "base_000000010000000000000002_00000040"
#define SYN_BACKUP "base_000000010000000000000007_00000040"

static char tmpdir[256];

/* ---- helpers ---- */


static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        abort();
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 65536, n = 0;
    char *b = malloc(cap + 1);
    size_t r;
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(b, cap + 1);
            if (!nb) {
                free(b);
                b = NULL;
            }
            b = nb;
        }
    }
    fclose(f);
    if (b)
        b[n] = '\0';
    *len = n;
    return b;
}

static void sha256_hex(const void *d, size_t n, char hex[65])
{
    unsigned char md[32];
    unsigned int ml = 0;
    EVP_Digest(d, n, md, &ml, EVP_sha256(), NULL);
    hex_encode(md, 32, hex);
}

/* Lists the partitions and builds; returns the build's rc. */
static int build(const char *root, const char *backup, backup_index **idx, walfs_err *err)
{
    store *st = NULL;
    *idx = NULL;
    int rc = store_local_open(root, &st, err);
    if (rc)
        return rc;
    backup_partition_listing *parts = NULL;
    size_t n = 0;
    rc = backup_list_partitions(st, backup, &parts, &n, err);
    if (!rc)
        rc = backup_index_build(st, backup, parts, n, idx, err);
    backup_partition_listing_free(parts, n);
    store_close(st);
    return rc;
}

/* ---- Python helpers (single quotes only, so they embed as C strings) ---- */

/* One line per tar member: name, type, size, mode, uid, gid, mtime (repr),
 * linkname, sha256 of the content, devmajor, devminor. */
static const char *dump_py =
    "import sys, tarfile, hashlib\n"
    "out = sys.stdout.buffer\n"
    "def b(s): return s.encode('utf-8', 'surrogateescape')\n"
    "with tarfile.open(sys.argv[1], 'r:') as tf:\n"
    "    for m in tf:\n"
    "        t = 'f' if m.isreg() else 'd' if m.isdir() else 'l' if m.issym() else 'h' if m.islnk() else 'p' if m.isfifo() else 'c' if m.ischr() else 'b' if m.isblk() else '?'\n"
    "        h = '-'\n"
    "        if m.isreg():\n"
    "            h = hashlib.sha256(tf.extractfile(m).read()).hexdigest()\n"
    "        mt = repr(m.mtime) if isinstance(m.mtime, float) else str(m.mtime)\n"
    "        f = [b(m.name), t.encode(), str(m.size).encode(), ('%o' % m.mode).encode(), str(m.uid).encode(), str(m.gid).encode(), mt.encode(), b(m.linkname), h.encode(), str(m.devmajor).encode(), str(m.devminor).encode()]\n"
    "        out.write(b'\\t'.join(f) + b'\\n')\n";

/* Writes scenario argv[2] as a bucket under argv[1]. */
static const char *gen_py =
    "import sys, os, io, tarfile, random, subprocess\n"
    "root, scen = sys.argv[1], sys.argv[2]\n"
    "pdir = os.path.join(root, 'basebackups_005', '" SYN_BACKUP "', 'tar_partitions')\n"
    "os.makedirs(pdir, exist_ok=True)\n"
    "def ti(name, typ=tarfile.REGTYPE, data=b'', mode=0o600, link='', mtime=1700000000.5, uid=101, gid=104):\n"
    "    t = tarfile.TarInfo(name); t.type = typ; t.mode = mode; t.linkname = link; t.mtime = mtime\n"
    "    t.uid = uid; t.gid = gid; t.uname = 'postgres'; t.gname = 'postgres'\n"
    "    t.size = len(data) if typ == tarfile.REGTYPE else 0\n"
    "    return (t, data)\n"
    "def d(name, **k): return ti(name, tarfile.DIRTYPE, mode=0o700, **k)\n"
    "def tar_bytes(fmt, members):\n"
    "    bio = io.BytesIO()\n"
    "    with tarfile.open(fileobj=bio, mode='w|', format=fmt) as tf:\n"
    "        for t, data in members:\n"
    "            tf.addfile(t, io.BytesIO(data) if t.isreg() else None)\n"
    "    return bio.getvalue()\n"
    "def put(n, raw, lzo=True):\n"
    "    p = os.path.join(pdir, 'part_%08d.tar.lzo' % n)\n"
    "    if not lzo:\n"
    "        open(p, 'wb').write(raw); return\n"
    "    r = subprocess.run(['lzop', '-c'], input=raw, stdout=subprocess.PIPE, check=True)\n"
    "    open(p, 'wb').write(r.stdout)\n"
    "rnd = random.Random(7)\n"
    "big = bytes(rnd.getrandbits(8) for _ in range(700 * 1024))\n"
    "if scen == 'full':\n"
    "    put(0, tar_bytes(tarfile.PAX_FORMAT, [d('/', mtime=1700000001.125), d('a/'), ti('a/' + 'd' * 120 + '/file', data=b'deep'),\n"
    "        ti('x/y/z.txt', data=b'zzz'), ti('big', data=big, mtime=1700000002.987654), ti('empty'), d('emptydir/'),\n"
    "        ti('lnk', tarfile.SYMTYPE, link='a/target', mode=0o777), ti('longlnk', tarfile.SYMTYPE, link='t' * 150, mode=0o777),\n"
    "        ti('orig', data=b'original data', mode=0o640), ti('dup', data=b'first'), ti('\\u00e9lan.txt', data=b'accent'),\n"
    "        ti('after_big', data=b'tail')]))\n"
    "    put(1, tar_bytes(tarfile.GNU_FORMAT, [d('g/', mtime=1600000000), ti('g/' + 'n' * 150, data=b'gnu long name', mtime=1600000001),\n"
    "        ti('g/lnk', tarfile.SYMTYPE, link='/very/long/' + 'k' * 120, mode=0o777, mtime=1600000002), ti('g/empty', mtime=1600000003),\n"
    "        ti('g/big2', data=big[:300 * 1024], mtime=1600000004), ti('g/e2', mtime=1600000005), ti('g/last', data=b'x' * 513, mtime=1600000006)]))\n"
    "    put(2, tar_bytes(tarfile.USTAR_FORMAT, [d('u/', mtime=1500000000), d('u/' + 'p' * 90 + '/', mtime=1500000000),\n"
    "        ti('u/' + 'p' * 90 + '/' + 'q' * 80, data=b'ustar prefix', mtime=1500000001), ti('hl', tarfile.LNKTYPE, link='orig', mtime=1500000002),\n"
    "        ti('dup', data=b'second', mtime=1500000003), ti('fifo', tarfile.FIFOTYPE, mtime=1500000004),\n"
    "        ti('hl2', tarfile.LNKTYPE, link='dup', mtime=1500000005), ti('u/zero', mtime=1500000006)]))\n"
    "elif scen == 'onebig':\n"
    "    rows = b''.join(b'%8d|%8d|%8d|%s\\n' % (i, i % 10, 0, b' ' * 84) for i in range(8 * 1024 * 1024 // 112 + 1))\n"
    "    put(0, tar_bytes(tarfile.PAX_FORMAT, [d('/'), d('base/'), ti('base/16384', data=rows[:8 << 20]), ti('base/after', data=b'after')]))\n"
    "elif scen == 'bigrand':\n"
    "    put(0, tar_bytes(tarfile.PAX_FORMAT, [d('/'), ti('first', data=b'1'), ti('rand', data=os.urandom(22 << 20)), ti('last', data=b'2' * 1000)]))\n"
    "elif scen == 'notar_big':\n"
    "    put(0, os.urandom(24 << 20))\n"
    "elif scen == 'hostile':\n"
    "    put(0, tar_bytes(tarfile.GNU_FORMAT, [d('/'), ti('ok', data=b'fine'), ti('../../etc/x', data=b'evil1'), ti('/abs/path', data=b'evil2'),\n"
    "        ti('a/../../x', data=b'evil3'), ti('a/../b', data=b'evil4'), ti('hl', tarfile.LNKTYPE, link='../x'),\n"
    "        ti('hl_missing', tarfile.LNKTYPE, link='nothere'), ti('pw', tarfile.SYMTYPE, link='/etc/passwd', mode=0o777),\n"
    "        ti('f', data=b'file'), ti('f/child', data=b'orphan'), ti('evil', tarfile.SYMTYPE, link='/etc', mode=0o777),\n"
    "        ti('evil/passwd', data=b'through a symlink'), ti('/', tarfile.SYMTYPE, link='/etc', mode=0o777)]))\n"
    "elif scen == 'empty':\n"
    "    put(0, tar_bytes(tarfile.PAX_FORMAT, []))\n"
    "elif scen == 'notar':\n"
    "    put(0, big + big + big)\n"
    "elif scen == 'zero':\n"
    "    put(0, b'')\n"
    "elif scen == 'noeof':\n"
    "    raw = tar_bytes(tarfile.GNU_FORMAT, [ti('a', data=b'abc'), ti('b', data=b'def')])\n"
    "    put(0, raw[:2048])\n"
    "elif scen == 'cutdata':\n"
    "    raw = tar_bytes(tarfile.GNU_FORMAT, [ti('a', data=big)])\n"
    "    put(0, raw[:512 + 4096])\n"
    "elif scen in ('sparse_gnu', 'sparse_pax'):\n"
    "    import tempfile\n"
    "    with tempfile.TemporaryDirectory() as t:\n"
    "        with open(os.path.join(t, 's'), 'wb') as f:\n"
    "            f.truncate(2 << 20); f.seek(0, 2); f.write(b'abc')\n"
    "        fmt = 'gnu' if scen == 'sparse_gnu' else 'pax'\n"
    "        raw = subprocess.run(['tar', '--sparse', '--format=' + fmt, '-C', t, '-cf', '-', 's'], stdout=subprocess.PIPE, check=True).stdout\n"
    "    put(0, raw)\n"
    "elif scen == 'gap':\n"
    "    put(0, tar_bytes(tarfile.PAX_FORMAT, [ti('a', data=b'1')]))\n"
    "    put(2, tar_bytes(tarfile.PAX_FORMAT, [ti('c', data=b'3')]))\n"
    "elif scen == 'deep':\n"
    "    put(0, tar_bytes(tarfile.GNU_FORMAT, [d('/')] + [ti('c%02d/' % i + 'd/' * 1999 + 'f', data=b'x') for i in range(60)]))\n"
    "elif scen == 'longsym':\n"
    "    put(0, tar_bytes(tarfile.PAX_FORMAT, [d('/'), ti('ok', data=b'fine'), ti('huge', tarfile.SYMTYPE, link='t' * 100000, mode=0o777),\n"
    "        ti('edge', tarfile.SYMTYPE, link='e' * 4095, mode=0o777)]))\n"
    "elif scen == 'noparts':\n"
    "    open(os.path.join(pdir, 'README'), 'w').write('not a partition')\n"
    "else:\n"
    "    sys.exit('unknown scenario ' + scen)\n";

static int make_bucket(const char *scen, char *root, size_t rootlen)
{
    snprintf(root, rootlen, "%s/b_%s", tmpdir, scen);
    return sh("python3 %s/gen.py %s %s", tmpdir, root, scen);
}

/* ---- comparing an index with tarfile's view of the partitions ---- */

typedef struct rec {
    char *f[11];
    uint32_t part;
    char *norm;
} rec;

typedef struct recs {
    rec *v;
    size_t n, cap;
} recs;

/* Appends the dump of one decompressed partition. */
static int load_dump(recs *rs, const char *tarpath, uint32_t part)
{
    char out[512];
    snprintf(out, sizeof out, "%s.dump", tarpath);
    if (sh("python3 %s/dump.py %s > %s", tmpdir, tarpath, out) != 0)
        return -1;
    size_t len;
    char *text = read_all(out, &len);
    if (!text)
        return -1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (rs->n == rs->cap) {
            rs->cap = rs->cap ? rs->cap * 2 : 64;
            rs->v = realloc(rs->v, rs->cap * sizeof *rs->v);
            if (!rs->v)
                abort();
        }
        rec *r = &rs->v[rs->n++];
        memset(r, 0, sizeof *r);
        r->part = part;
        char *p = line;
        for (int i = 0; i < 11; i++) {
            char *tab = strchr(p, '\t');
            if (tab)
                *tab = '\0';
            r->f[i] = strdup(p);
            p = tab ? tab + 1 : p + strlen(p);
        }
        r->norm = backup_normalize_path(r->f[0], NULL);
    }
    free(text);
    return 0;
}

static void recs_free(recs *rs)
{
    for (size_t i = 0; i < rs->n; i++) {
        for (int k = 0; k < 11; k++)
            free(rs->v[i].f[k]);
        free(rs->v[i].norm);
    }
    free(rs->v);
}

/* "1795624933.9785094" -> nanoseconds since the epoch, without floats. */
static int64_t parse_mtime_ns(const char *s)
{
    char *end;
    int64_t sec = strtoll(s, &end, 10);
    int64_t ns = 0, scale = 100000000;
    if (*end == '.')
        for (const char *c = end + 1; *c >= '0' && *c <= '9' && scale; c++, scale /= 10)
            ns += (*c - '0') * scale;
    return sec * 1000000000 + ns;
}

static backup_member_type type_of(char c)
{
    switch (c) {
    case 'd': return MEMBER_DIR;
    case 'l': return MEMBER_SYMLINK;
    case 'h': return MEMBER_HARDLINK;
    case 'p': return MEMBER_FIFO;
    case 'c': return MEMBER_CHARDEV;
    case 'b': return MEMBER_BLOCKDEV;
    default: return MEMBER_FILE;
    }
}

/* Every record that is the last one for its path must be in the index with
 * the same metadata and, for files, the same bytes at data_offset of the
 * `lzop -dc` output.  Returns the number of mismatches (details printed). */
static int compare_with_dump(const backup_index *idx, const recs *rs, char tars[][512], size_t *n_files,
                             size_t *n_checked)
{
    int bad = 0;
    *n_files = *n_checked = 0;
    for (size_t i = 0; i < rs->n; i++) {
        const rec *r = &rs->v[i];
        if (!r->norm)
            continue;
        int later = 0;
        for (size_t j = i + 1; j < rs->n && !later; j++)
            later = rs->v[j].norm && strcmp(rs->v[j].norm, r->norm) == 0;
        if (later)
            continue;
        (*n_checked)++;
        const backup_member *m = backup_index_find(idx, r->norm);
        if (!m) {
            printf("# missing member %s\n", r->f[0]);
            bad++;
            continue;
        }
        backup_member_type t = type_of(r->f[1][0]);
        int64_t want_ns = parse_mtime_ns(r->f[6]);
        int64_t got_ns = m->mtime_sec * 1000000000 + m->mtime_nsec;
        int64_t dns = want_ns > got_ns ? want_ns - got_ns : got_ns - want_ns;
        uint64_t size = t == MEMBER_FILE ? strtoull(r->f[2], NULL, 10) : 0;
        const char *link = t == MEMBER_SYMLINK ? r->f[7] : t == MEMBER_HARDLINK ? r->f[7] : NULL;
        int ok = m->type == t && m->size == size && m->mode == (uint32_t)strtoul(r->f[3], NULL, 8) &&
                 m->uid == strtoul(r->f[4], NULL, 10) && m->gid == strtoul(r->f[5], NULL, 10) && dns <= 1000 &&
                 (!link || (t == MEMBER_HARDLINK ? &idx->members[m->link_member] == backup_index_find(idx, link)
                                                 : m->link_target && strcmp(m->link_target, link) == 0));
        if (ok && (t == MEMBER_CHARDEV || t == MEMBER_BLOCKDEV))
            ok = m->rdev_major == strtoul(r->f[9], NULL, 10) && m->rdev_minor == strtoul(r->f[10], NULL, 10);
        if (!ok) {
            printf("# metadata mismatch for %s (type %d/%d size %" PRIu64 "/%" PRIu64 " mode %o uid %u gid %u "
                   "mtime %" PRId64 ".%09u vs %s link %s)\n", r->f[0], m->type, t, m->size, size, m->mode,
                   m->uid, m->gid, m->mtime_sec, m->mtime_nsec, r->f[6], m->link_target ? m->link_target : "-");
            bad++;
            continue;
        }
        if (t != MEMBER_FILE)
            continue;
        (*n_files)++;
        if (m->partition != r->part) {
            printf("# %s: partition %u, expected %u\n", r->f[0], m->partition, r->part);
            bad++;
            continue;
        }
        int fd = open(tars[m->partition], O_RDONLY);
        char *data = malloc(size ? size : 1);
        ssize_t got = fd >= 0 && data ? pread(fd, data, size, (off_t)m->data_offset) : -1;
        char hex[65];
        sha256_hex(data, size, hex);
        if (got != (ssize_t)size || strcmp(hex, r->f[8]) != 0) {
            printf("# %s: bytes at data_offset %" PRIu64 " differ from the member content\n", r->f[0],
                   m->data_offset);
            bad++;
        }
        free(data);
        if (fd >= 0)
            close(fd);
    }
    return bad;
}

/* Decompresses every partition of idx with lzop -dc into tars[i]. */
static int decompress_parts(const char *root, const backup_index *idx, char tars[][512], const char *tag)
{
    for (size_t i = 0; i < idx->n_partitions; i++) {
        snprintf(tars[i], 512, "%s/%s_%zu.tar", tmpdir, tag, i);
        if (sh("lzop -dc %s/%s > %s", root, idx->partitions[i].key, tars[i]) != 0)
            return -1;
        struct stat sb;
        if (stat(tars[i], &sb) != 0 || (uint64_t)sb.st_size != idx->partitions[i].blocks.uncomp_size)
            return -1;
    }
    return 0;
}

/* Children grouped by parent and sorted by name, and every member found
 * again by its own path. */
static int is_sorted(const backup_index *idx)
{
    char path[BACKUP_PATH_MAX + 1];
    for (size_t i = 0; i < idx->n_members; i++) {
        const backup_member *m = &idx->members[i], *p = i ? m - 1 : NULL;
        if (p && (m->parent < p->parent || (m->parent == p->parent && strcmp(p->name, m->name) >= 0)))
            return 0;
        if (backup_index_find(idx, backup_index_path(idx, m, path, sizeof path)) != m)
            return 0;
    }
    return 1;
}

/* Field-by-field equality, for the JSON round trip. */
static int same_index(const backup_index *a, const backup_index *b)
{
    if (strcmp(a->backup_name, b->backup_name) || a->n_partitions != b->n_partitions ||
        a->n_members != b->n_members)
        return 0;
    for (size_t i = 0; i < a->n_partitions; i++) {
        const backup_partition *x = &a->partitions[i], *y = &b->partitions[i];
        if (strcmp(x->key, y->key) || x->object_size != y->object_size || strcmp(x->etag, y->etag) ||
            x->blocks.n_blocks != y->blocks.n_blocks || x->blocks.uncomp_size != y->blocks.uncomp_size ||
            x->blocks.comp_size != y->blocks.comp_size || x->blocks.info.flags != y->blocks.info.flags ||
            x->blocks.info.method != y->blocks.info.method ||
            x->blocks.info.header_len != y->blocks.info.header_len ||
            (x->blocks.n_blocks &&
             memcmp(x->blocks.blocks, y->blocks.blocks, x->blocks.n_blocks * sizeof *x->blocks.blocks)))
            return 0;
    }
    for (size_t i = 0; i < a->n_members; i++) {
        const backup_member *x = &a->members[i], *y = &b->members[i];
        if (strcmp(x->name, y->name) || x->parent != y->parent || x->first_child != y->first_child ||
            x->n_children != y->n_children ||
            (x->type == MEMBER_HARDLINK && x->link_member != y->link_member) || x->type != y->type || x->mode != y->mode || x->uid != y->uid ||
            x->gid != y->gid || x->mtime_sec != y->mtime_sec || x->mtime_nsec != y->mtime_nsec ||
            x->size != y->size || (!x->link_target) != (!y->link_target) ||
            (x->link_target && strcmp(x->link_target, y->link_target)) ||
            (x->type == MEMBER_FILE && (x->partition != y->partition || x->data_offset != y->data_offset)) ||
            x->rdev_major != y->rdev_major || x->rdev_minor != y->rdev_minor)
            return 0;
    }
    return 1;
}

/* ---- tests ---- */

static void test_normalize(void)
{
    static const struct {
        const char *in, *out;
        int escapes;
    } cases[] = {
        {"/", "", 0},          {"", "", 0},           {"./", "", 0},           {".", "", 0},
        {"a", "a", 0},         {"a/", "a", 0},        {"./a/b/", "a/b", 0},    {"a//b", "a/b", 0},
        {"a/./b", "a/b", 0},   {"././a", "a", 0},     {"../../etc/x", NULL, 1}, {"/abs/path", NULL, 1},
        {"a/../../x", NULL, 1}, {"a/../b", NULL, 0},  {"..", NULL, 1},         {"a/..", NULL, 0},
        {"//", "", 0},         {"/./", "", 0},        {"a/b/../../..", NULL, 1}, {"..a/b..", "..a/b..", 0},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int esc = -1;
        char *got = backup_normalize_path(cases[i].in, &esc);
        int ok = cases[i].out ? got && strcmp(got, cases[i].out) == 0 : got == NULL;
        if (!cases[i].out)
            ok = ok && esc == cases[i].escapes;
        if (!ok) {
            printf("# normalize(\"%s\") = %s (escapes %d)\n", cases[i].in, got ? got : "NULL", esc);
            bad++;
        }
        free(got);
    }
    CHECK(bad == 0, "backup_normalize_path: %zu cases (., .., //, root, absolute)", sizeof cases / sizeof cases[0]);
}

/* Manifest lines: path size mode type uid/gid names mtime linkname. */
static void check_manifest(const backup_index *idx)
{
    size_t len;
    char *text = read_all(FIXTURE_DIR "/MANIFEST.txt", &len);
    CHECK(text != NULL, "read MANIFEST.txt");
    if (!text)
        return;
    int in_part = -1, bad = 0;
    size_t seen[2] = {0, 0};
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "#### part_", 10) == 0) {
            in_part = atoi(line + 10);
            continue;
        }
        if (strncmp(line, "## 3.", 5) == 0)
            in_part = -1;
        if (in_part < 0 || line[0] == '#')
            continue;
        char *f[7] = {0};
        char *p = line;
        for (int i = 0; i < 7; i++) {
            f[i] = p;
            char *tab = strchr(p, '\t');
            if (!tab) {
                p += strlen(p);
                continue;
            }
            *tab = '\0';
            p = tab + 1;
        }
        if (!f[6])
            continue;
        seen[in_part]++;
        char *norm = backup_normalize_path(f[0], NULL);
        const backup_member *m = norm ? backup_index_find(idx, norm) : NULL;
        unsigned uid = 0, gid = 0;
        sscanf(f[4], "%u/%u", &uid, &gid);
        backup_member_type t = strcmp(f[3], "dir") == 0 ? MEMBER_DIR : strcmp(f[3], "file") == 0 ? MEMBER_FILE
                               : strcmp(f[3], "symlink") == 0 ? MEMBER_SYMLINK : MEMBER_HARDLINK;
        int64_t want_ns = parse_mtime_ns(f[5]);
        int ok = m && m->type == t && m->size == strtoull(f[1], NULL, 10) &&
                 m->mode == (uint32_t)strtoul(f[2], NULL, 8) && m->uid == uid && m->gid == gid &&
                 m->partition == (uint32_t)(t == MEMBER_FILE ? in_part : 0);
        if (ok) {
            int64_t got_ns = m->mtime_sec * 1000000000 + m->mtime_nsec;
            ok = (want_ns > got_ns ? want_ns - got_ns : got_ns - want_ns) <= 1000;
        }
        if (ok && *f[6])
            ok = m->link_target && strcmp(m->link_target, f[6]) == 0;
        else if (ok)
            ok = m->link_target == NULL;
        if (!ok) {
            printf("# manifest mismatch: %s\n", f[0]);
            bad++;
        }
        free(norm);
    }
    free(text);
    CHECK(seen[0] == 996 && seen[1] == 1, "MANIFEST lists 996 + 1 members (read %zu + %zu)", seen[0], seen[1]);
    CHECK(bad == 0, "every MANIFEST member matches path, type, size, mode, uid/gid, mtime to 1 us, link (%d bad)",
          bad);
}

static void test_json(const backup_index *idx, const char *root)
{
    char *json = NULL;
    size_t len = 0;
    walfs_err err = {0};
    int rc = backup_index_to_json(idx, &json, &len, &err);
    CHECK(rc == 0 && json && len > 0 && strlen(json) == len, "index serializes to JSON (%zu bytes)", len);
    if (rc)
        return;
    backup_index *back = NULL;
    rc = backup_index_from_json(json, len, &back, &err);
    CHECK(rc == 0 && back, "JSON loads back: %s", rc ? err.msg : "ok");
    CHECK(back && same_index(idx, back), "JSON round trip gives an identical index");
    if (back) {
        char *json2 = NULL;
        size_t len2 = 0;
        backup_index_to_json(back, &json2, &len2, &err);
        CHECK(json2 && len2 == len && memcmp(json, json2, len) == 0, "re-serialization is byte-identical");
        free(json2);
    }
    backup_index_free(back);

    /* Any flipped byte: spread over the file, plus the checksum itself. */
    int accepted = 0, tried = 0, wrong_code = 0;
    for (size_t pos = 0; pos < len; pos += len / 97 + 1) {
        json[pos] ^= 0x01;
        back = NULL;
        walfs_err e2 = {0};
        int r2 = backup_index_from_json(json, len, &back, &e2);
        json[pos] ^= 0x01;
        tried++;
        if (r2 == 0) {
            accepted++;
            printf("# flipped byte %zu accepted\n", pos);
        } else if (r2 != -EIO) {
            wrong_code++;
        }
        backup_index_free(back);
    }
    CHECK(accepted == 0 && wrong_code == 0, "%d single-bit flips all rejected with -EIO", tried);
    {
        walfs_err e2 = {0};
        json[len - 10] = json[len - 10] == 'a' ? 'b' : 'a'; /* inside the hex digest */
        back = NULL;
        rc = backup_index_from_json(json, len, &back, &e2);
        json[len - 10] = '\0';
        CHECK(rc == -EIO && strstr(e2.msg, "sha256"), "altered checksum rejected: %s", e2.msg);
        backup_index_free(back);
    }
    free(json);
    backup_index_to_json(idx, &json, &len, &err);
    int trunc_ok = 1;
    size_t cuts[] = {0, 1, len / 3, len / 2, len - 80, len - 3, len - 2};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        back = NULL;
        walfs_err e2 = {0};
        if (backup_index_from_json(json, cuts[i], &back, &e2) != -EIO)
            trunc_ok = 0;
        backup_index_free(back);
    }
    CHECK(trunc_ok, "truncated JSON rejected at 7 lengths");
    free(json);

    /* matches: against a fresh listing, then altered listings. */
    store *st = NULL;
    store_local_open(root, &st, &err);
    backup_partition_listing *parts = NULL;
    size_t n = 0;
    rc = st ? backup_list_partitions(st, idx->backup_name, &parts, &n, &err) : -1;
    CHECK(rc == 0 && backup_index_matches(idx, parts, n), "backup_index_matches: fresh listing matches");
    if (rc == 0) {
        CHECK(!backup_index_matches(idx, parts, n - 1), "matches: fewer partitions -> no");
        parts[0].size++;
        CHECK(!backup_index_matches(idx, parts, n), "matches: other size -> no");
        parts[0].size--;
        parts[n - 1].etag[0] ^= 1;
        CHECK(!backup_index_matches(idx, parts, n), "matches: other ETag -> no");
        parts[n - 1].etag[0] ^= 1;
        parts[0].key[strlen(parts[0].key) - 9] ^= 1;
        CHECK(!backup_index_matches(idx, parts, n), "matches: other key -> no");
        parts[0].key[strlen(parts[0].key) - 9] ^= 1;
        CHECK(backup_index_matches(idx, parts, n), "matches: restored listing matches again");
    }
    backup_partition_listing_free(parts, n);
    store_close(st);
}

/* A correctly sealed JSON with invalid content must still be rejected. */
static char *reseal(const char *json, size_t len, const char *from, const char *to, size_t *outlen)
{
    const char *tail = strstr(json, ",\"sha256\":\"");
    const char *at = strstr(json, from);
    if (!tail || !at || at >= tail)
        return NULL;
    size_t body = (size_t)(tail - json);
    size_t nl = body - strlen(from) + strlen(to);
    char *out = malloc(nl + 100);
    size_t pre = (size_t)(at - json);
    memcpy(out, json, pre);
    memcpy(out + pre, to, strlen(to));
    memcpy(out + pre + strlen(to), at + strlen(from), body - pre - strlen(from));
    out[nl] = '}';
    char hex[65];
    sha256_hex(out, nl + 1, hex);
    *outlen = (size_t)sprintf(out + nl, ",\"sha256\":\"%s\"}\n", hex) + nl;
    (void)len;
    return out;
}

static void test_hostile_json(const backup_index *idx)
{
    char *json = NULL;
    size_t len = 0;
    walfs_err err = {0};
    if (backup_index_to_json(idx, &json, &len, &err) != 0)
        return;
    /* Sanity: resealing without a change still loads. */
    size_t nl;
    char *same = reseal(json, len, "\"version\":2", "\"version\":2", &nl);
    backup_index *b = NULL;
    int rc = same ? backup_index_from_json(same, nl, &b, &err) : -1;
    CHECK(rc == 0, "resealed unchanged JSON loads");
    backup_index_free(b);
    free(same);
    /* Members are [parent, name, type, ...]: global/1261 is "1261" under
     * global's index. */
    const backup_member *g = backup_index_find(idx, "global"), *pv = backup_index_find(idx, "PG_VERSION");
    if (!g || !pv) {
        CHECK(0, "fixture has global/ and PG_VERSION");
        free(json);
        return;
    }
#define M1261 "\"1261\",\"f\",384,101,104,1795624933,829258200"
    char in_g[64], under_file[64];
    snprintf(in_g, sizeof in_g, "[%zu,\"1261\"", (size_t)(g - idx->members));
    snprintf(under_file, sizeof under_file, "[%zu,\"1261\"", (size_t)(pv - idx->members));
    const struct {
        const char *from, *to, *what;
    } cases[] = {
        {"\"version\":2", "\"version\":3", "other version"},
        {"\"version\":2", "\"version\":\"2\"", "version as a string"},
        {"\"format\":\"walfs-backup-index\"", "\"format\":\"other\"", "other format"},
        {"\"method\":1", "\"method\":9", "unknown lzop method"},
        {"\"uncomp_size\":25272320", "\"uncomp_size\":25272321", "uncomp_size not the sum of blocks"},
        {"[38,50,", "[38,51,", "block payload misplaced"}, {"[5474,5486,", "[5475,5487,", "blocks not contiguous"},
        {M1261 ",8192,0,", M1261 ",8192,7,", "member in a missing partition"},
        {M1261 ",8192,0,", M1261 ",88888888,0,", "data beyond the partition"},
        {"\"1261\"", "\"..\"", "name \"..\""},
        {"\"1261\"", "\".\"", "name \".\""},
        {"\"1261\"", "\"\"", "empty name"},
        {"\"1261\"", "\"x/1261\"", "name with a '/'"},
        {"\"1261\"", "\"1260\"", "unsorted/duplicate name"},
        {in_g, under_file, "member under a regular file"},
        {in_g, "[99999,\"1261\"", "parent after the member"},
        {"\"1261\",\"f\",384", "\"1261\",\"f\",99999", "mode out of range"},
        {"\"1261\",\"f\",384", "\"1261\",\"z\",384", "unknown type"},
        {M1261, "\"1261\",\"f\",384,101,104,1795624933,1829258200", "nsec out of range"},
        {M1261 ",8192,0,", M1261 ",-5,0,", "negative size"},
        {M1261 ",8192,0,", M1261 ",1e3,0,", "float size"},
        {"\"members\":[", "\"members\":{", "members not an array"},
        {"\"members\":[", "\"members\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "deep nesting"},
        {"tar_partitions/part_00000001", "tar_partitions/part_00000009", "partition key out of sequence"},
        {"\"1261\"", "\"12\\u000061\"", "NUL in a name"},
    };
#undef M1261
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *t = reseal(json, len, cases[i].from, cases[i].to, &nl);
        if (!t) {
            printf("# case '%s': pattern not found\n", cases[i].what);
            bad++;
            continue;
        }
        b = NULL;
        walfs_err e2 = {0};
        int r2 = backup_index_from_json(t, nl, &b, &e2);
        if (r2 != -EIO || b) {
            printf("# hostile JSON accepted: %s\n", cases[i].what);
            bad++;
        } else {
            printf("# %s -> %s\n", cases[i].what, e2.msg);
        }
        backup_index_free(b);
        free(t);
    }
    CHECK(bad == 0, "%zu sealed but invalid JSON variants rejected with -EIO", sizeof cases / sizeof cases[0]);
    free(json);
}

/* ---- what the partition says in front of each member's data ---- */

static int header_at(const char *tar, uint64_t off, unsigned char hdr[512])
{
    FILE *f = fopen(tar, "rb");
    if (!f)
        return -1;
    int ok = fseeko(f, (off_t)off, SEEK_SET) == 0 && fread(hdr, 1, 512, f) == 512;
    fclose(f);
    return ok ? 0 : -1;
}

/* Every file of a genuine index passes backup_member_check_header (no false
 * alarm in PAX, GNU or ustar, long names included); moved offsets, other
 * sizes and other members' headers do not. */
static void test_check_headers(const backup_index *idx, char tars[][512], const char *what)
{
    size_t n = 0, bad = 0, caught = 0, tried = 0;
    const backup_member *prev = NULL;
    for (size_t i = 0; i < idx->n_members; i++) {
        const backup_member *m = &idx->members[i];
        if (m->type != MEMBER_FILE)
            continue;
        unsigned char hdr[512];
        walfs_err err = {0};
        n++;
        if (header_at(tars[m->partition], m->data_offset - 512, hdr) != 0 ||
            backup_member_check_header(idx, m, hdr, &err) != 0) {
            char path[BACKUP_PATH_MAX + 1];
            printf("# %s: genuine member %s refused: %s\n", what, backup_index_path(idx, m, path, sizeof path),
                   err.msg);
            bad++;
            continue;
        }
        backup_member forged = *m;
        forged.size = m->size + 1;
        tried++;
        caught += backup_member_check_header(idx, &forged, hdr, &err) == -EBADMSG && strstr(err.msg, "another size");
        /* Sizes a plain octal field contradicts: 0 for a file with data, and
         * 16 GiB (once let through as "only a pax record can say that"; a
         * field of 0 still is, and an empty file's forged 16 GiB is left to
         * the load-time extent checks). */
        if (m->size) {
            forged.size = 0;
            tried++;
            caught += backup_member_check_header(idx, &forged, hdr, &err) == -EBADMSG && strstr(err.msg, "another size");
            forged.size = (uint64_t)1 << 34;
            tried++;
            caught += backup_member_check_header(idx, &forged, hdr, &err) == -EBADMSG && strstr(err.msg, "another size");
        }
        /* Attributes the kernel checks access against. */
        forged = *m;
        forged.mode ^= 0044;
        tried++;
        caught += backup_member_check_header(idx, &forged, hdr, &err) == -EBADMSG && strstr(err.msg, "another mode");
        forged = *m;
        forged.uid++;
        tried++;
        caught += backup_member_check_header(idx, &forged, hdr, &err) == -EBADMSG && strstr(err.msg, "(uid)");
        forged = *m;
        forged.gid++;
        tried++;
        caught += backup_member_check_header(idx, &forged, hdr, &err) == -EBADMSG && strstr(err.msg, "(gid)");
        if (prev && prev->partition == m->partition) {
            /* Another file's header: its name differs (sizes may agree). */
            forged = *m;
            forged.size = prev->size;
            forged.mode = prev->mode;
            forged.uid = prev->uid;
            forged.gid = prev->gid;
            tried++;
            unsigned char ph[512];
            caught += header_at(tars[prev->partition], prev->data_offset - 512, ph) == 0 &&
                      backup_member_check_header(idx, &forged, ph, &err) == -EBADMSG && strstr(err.msg, "another member");
        }
        /* The header itself, read as if it were data behind a header. */
        tried++;
        unsigned char before[512];
        caught += m->data_offset < 1024 || header_at(tars[m->partition], m->data_offset - 1024, before) != 0 ||
                  backup_member_check_header(idx, m, before, &err) == -EBADMSG;
        prev = m;
    }
    CHECK(n > 0 && bad == 0, "%s: the tar header in front of each of %zu files matches it", what, n);
    CHECK(caught == tried, "%s: %zu of %zu forged claims (size+1, size 0 or 16 GiB, mode, uid, gid, another file's header, one block early) refused",
          what, caught, tried);
}

/* The extents a loaded index claims: misaligned, overlapping or oversized
 * data is refused before anything is read. */
static void test_hostile_extents(const backup_index *idx)
{
    char *json = NULL;
    size_t len = 0;
    walfs_err err = {0};
    if (backup_index_to_json(idx, &json, &len, &err) != 0)
        return;
    const char *what[] = {"data offset not on a tar block", "offset of another file (overlap)",
                          "size running into the next member's header", "offset of its own header"};
    int refused = 0;
    for (int v = 0; v < 4; v++) {
        backup_index *b = NULL;
        if (backup_index_from_json(json, len, &b, &err) != 0)
            break;
        backup_member *pc = (backup_member *)backup_index_find(b, "global/pg_control");
        const backup_member *other = backup_index_find(b, "global/1260");
        if (!pc || !other) {
            backup_index_free(b);
            break;
        }
        if (v == 0)
            pc->data_offset += 8;
        else if (v == 1)
            pc->data_offset = other->data_offset;
        else if (v == 2)
            pc->size += 4096;
        else
            pc->data_offset -= 512;
        char *t = NULL;
        size_t tl = 0;
        backup_index_to_json(b, &t, &tl, &err);
        backup_index_free(b);
        b = NULL;
        walfs_err e2 = {0};
        int rc = t ? backup_index_from_json(t, tl, &b, &e2) : 0;
        if (rc == -EIO && !b) {
            printf("# %s -> %s\n", what[v], e2.msg);
            refused++;
        } else if (v == 3) {
            /* Not always visible in the extents (the member before may be a
             * directory): the header check at open catches it. */
            printf("# %s: passes the load-time checks; caught by the header check\n", what[v]);
            refused++;
        } else {
            printf("# %s: accepted\n", what[v]);
        }
        backup_index_free(b);
        free(t);
    }
    CHECK(refused == 4, "sealed indexes with forged extents for global/pg_control refused at load, or left to "
          "the header check when nothing overlaps (%d of 4)",
          refused);
    free(json);
}

/* The stored-index bound (backup_index_json_max) against the JSON of a
 * real index: *ratio is JSON bytes per compressed partition byte. */
static int json_within_bound(const backup_index *idx, double *ratio, size_t *json_len, size_t *max)
{
    uint64_t total = 0;
    for (size_t i = 0; i < idx->n_partitions; i++)
        total += idx->partitions[i].object_size;
    char *json = NULL;
    walfs_err err = {0};
    *json_len = 0;
    *max = backup_index_json_max(total);
    if (backup_index_to_json(idx, &json, json_len, &err) != 0)
        return 0;
    free(json);
    *ratio = total ? (double)*json_len / (double)total : 0;
    return *json_len <= *max;
}

/* 60 files 2,000 levels deep, each under its own chain of directories the
 * tar does not contain: an index of full paths took 255 MB (the square of
 * the depth); names under a parent reference take one short entry per
 * directory. */
static void test_deep(void)
{
    char root[512];
    int rc = make_bucket("deep", root, sizeof root);
    CHECK(rc == 0, "python3 wrote 60 files 2,000 levels deep without directory entries");
    char part[1024];
    snprintf(part, sizeof part, "%s/basebackups_005/" SYN_BACKUP "/tar_partitions/part_00000000.tar.lzo", root);
    struct stat sb;
    stat(part, &sb);
    backup_index *idx = NULL;
    walfs_err err = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct rusage ru0, ru;
    getrusage(RUSAGE_SELF, &ru0);
    rc = build(root, SYN_BACKUP, &idx, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &ru);
    long built_kib = ru.ru_maxrss;
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(rc == 0 && idx && idx->n_members == 1 + 60 + 60 * 1999 + 60,
          "a %lld-byte partition of 60 files 2,000 levels deep indexes in %.2f s: %zu members (%s)",
          (long long)sb.st_size, secs, idx ? idx->n_members : 0, rc ? err.msg : "ok");
    if (rc)
        return;
    char path[BACKUP_PATH_MAX + 1];
    snprintf(path, sizeof path, "c59/");
    for (int i = 0; i < 1999; i++)
        strcat(path, "d/");
    strcat(path, "f");
    const backup_member *f = backup_index_find(idx, path);
    char again[BACKUP_PATH_MAX + 1];
    CHECK(f && f->type == MEMBER_FILE && f->size == 1 && strcmp(backup_index_path(idx, f, again, sizeof again), path) == 0,
          "the deepest file is found by its %zu-byte path, and its path built back from its parents", strlen(path));
    char *json = NULL;
    size_t len = 0;
    rc = backup_index_to_json(idx, &json, &len, &err);
    backup_index *back = NULL;
    if (rc == 0)
        rc = backup_index_from_json(json, len, &back, &err);
    getrusage(RUSAGE_SELF, &ru);
    printf("# deep: index JSON %zu bytes (format 1 stored 255 MB); peak RSS %ld KiB before, %ld KiB after "
           "the build, %ld KiB after serializing and loading it again\n", len, ru0.ru_maxrss, built_kib,
           ru.ru_maxrss);
    CHECK(rc == 0 && back && back->n_members == idx->n_members && len < (2u << 20),
          "its index JSON is %zu bytes (< 2 MiB) and loads back: %s", len, rc ? err.msg : "ok");
#if defined(__SANITIZE_ADDRESS__)
    const long slack = 3; /* ASan's redzones and quarantine */
#else
    const long slack = 1;
#endif
    CHECK(built_kib < slack * 48 * 1024 && ru.ru_maxrss < slack * 128 * 1024,
          "peak memory: %ld MiB to build it (< %ld), %ld MiB with a load of its JSON (< %ld; format 1 took 843 MB)",
          built_kib / 1024, slack * 48, ru.ru_maxrss / 1024, slack * 128);
    double ratio;
    size_t jl, max;
    CHECK(!json_within_bound(idx, &ratio, &jl, &max),
          "its %zu-byte JSON is %.0fx the partition, beyond what a stored index may be (%zu bytes): walfs "
          "rebuilds it from the partition rather than parse a stored one that large", jl, ratio, max);
    backup_index_free(back);
    free(json);
    backup_index_free(idx);
}

static void test_long_symlink(void)
{
    char root[512];
    int rc = make_bucket("longsym", root, sizeof root);
    CHECK(rc == 0, "python3 wrote a symlink with a 100,000-byte target");
    backup_index *idx = NULL;
    walfs_err err = {0};
    rc = build(root, SYN_BACKUP, &idx, &err);
    CHECK(rc == 0 && idx, "the backup indexes: %s", rc ? err.msg : "ok");
    if (rc)
        return;
    const backup_member *e = backup_index_find(idx, "edge");
    CHECK(!backup_index_find(idx, "huge") && backup_index_find(idx, "ok") && e && strlen(e->link_target) == 4095,
          "the 100,000-byte symlink is skipped at index time; a 4,095-byte one and the file are kept");
    backup_index_free(idx);
}

static void test_fixture(void)
{
    backup_index *idx = NULL;
    walfs_err err = {0};
    int rc = build(FIXTURE_DIR "/pgdb", FIXTURE_BACKUP, &idx, &err);
    CHECK(rc == 0 && idx, "fixture backup indexes: %s", rc ? err.msg : "ok");
    if (rc)
        return;
    CHECK(idx->n_partitions == 2, "2 partitions");
    CHECK(idx->n_members == 997, "997 members (996 in part 0 + backup_label), got %zu", idx->n_members);
    CHECK(is_sorted(idx), "members sorted by path, no duplicates");
    const backup_member *r = backup_index_find(idx, "");
    CHECK(r && r->type == MEMBER_DIR && r->mode == 0700 && r->uid == 101 && r->mtime_sec == 1795624933 &&
              r->mtime_nsec / 1000 == 978509,
          "root entry \"/\" -> \"\" with its pax mtime 1795624933.9785094");
    const backup_member *bl = backup_index_find(idx, "backup_label");
    CHECK(bl && bl->type == MEMBER_FILE && bl->partition == 1 && bl->size == 245 && bl->data_offset == 1536,
          "backup_label in partition 1 at data offset 1536 (pax header + header)");
    CHECK(idx->partitions[0].blocks.uncomp_size == 25272320 && idx->partitions[1].blocks.uncomp_size == 10240 &&
              idx->partitions[0].object_size == 4943977 && idx->partitions[0].blocks.comp_size == 4943977,
          "partition sizes as in the MANIFEST");
    CHECK(idx->partitions[0].blocks.n_blocks == (25272320 + LZOP_BLOCK_SIZE - 1) / LZOP_BLOCK_SIZE,
          "block table of partition 0 has %zu blocks", idx->partitions[0].blocks.n_blocks);
    CHECK(backup_index_find(idx, "nonexistent") == NULL && backup_index_find(idx, "global/1261") != NULL,
          "backup_index_find hits and misses");
    check_manifest(idx);

    char tars[2][512];
    rc = decompress_parts(FIXTURE_DIR "/pgdb", idx, tars, "fixture");
    CHECK(rc == 0, "lzop -dc of both partitions matches the indexed uncompressed sizes");
    if (rc == 0) {
        recs rs = {0};
        load_dump(&rs, tars[0], 0);
        load_dump(&rs, tars[1], 1);
        size_t nf, nc;
        int bad = compare_with_dump(idx, &rs, tars, &nf, &nc);
        CHECK(rs.n == 997 && bad == 0,
              "python tarfile: %zu members agree; bytes at data_offset == content for all %zu files", nc, nf);
        recs_free(&rs);
        test_check_headers(idx, tars, "fixture");
    }
    test_json(idx, FIXTURE_DIR "/pgdb");
    double ratio;
    size_t jl, max;
    CHECK(json_within_bound(idx, &ratio, &jl, &max),
          "fixture: its %zu-byte index JSON (%.3fx the partitions) is within the stored-index bound of %zu bytes",
          jl, ratio, max);
    test_hostile_json(idx);
    test_hostile_extents(idx);
    backup_index_free(idx);
}

static void test_synthesized(void)
{
    char root[512];
    int rc = make_bucket("full", root, sizeof root);
    CHECK(rc == 0, "python3 wrote a PAX + GNU + ustar backup");
    backup_index *idx = NULL;
    walfs_err err = {0};
    rc = build(root, SYN_BACKUP, &idx, &err);
    CHECK(rc == 0 && idx, "synthesized backup indexes: %s", rc ? err.msg : "ok");
    if (rc)
        return;
    char tars[3][512];
    rc = idx->n_partitions == 3 ? decompress_parts(root, idx, tars, "syn") : -1;
    CHECK(rc == 0, "3 partitions, lzop -dc sizes agree");
    recs rs = {0};
    for (uint32_t i = 0; i < 3; i++)
        load_dump(&rs, tars[i], i);
    size_t nf = 0, nc = 0;
    int bad = compare_with_dump(idx, &rs, tars, &nf, &nc);
    CHECK(bad == 0 && nc > 20, "every member (%zu, %zu files) matches tarfile: metadata and bytes at data_offset",
          nc, nf);
    /* Distinct paths in the tars + synthesized parents. */
    const char *synth[] = {"x", "x/y", NULL};
    char deep[200];
    snprintf(deep, sizeof deep, "a/%.*s", 120, "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
                                              "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd");
    size_t distinct = 0;
    for (size_t i = 0; i < rs.n; i++) {
        int later = 0;
        for (size_t j = i + 1; j < rs.n && !later; j++)
            later = strcmp(rs.v[j].norm, rs.v[i].norm) == 0;
        distinct += !later;
    }
    CHECK(idx->n_members == distinct + 3, "%zu members = %zu distinct tar paths + 3 synthesized parents",
          idx->n_members, distinct);
    const backup_member *r = backup_index_find(idx, "");
    int synth_ok = 1;
    for (int i = 0; i <= 2; i++) {
        const backup_member *m = backup_index_find(idx, synth[i] ? synth[i] : deep);
        if (!i && !synth[0])
            break;
        if (!m || m->type != MEMBER_DIR || m->mode != 0700 || !r || m->uid != r->uid || m->gid != r->gid ||
            m->mtime_sec != r->mtime_sec || m->mtime_nsec != r->mtime_nsec)
            synth_ok = 0;
    }
    CHECK(synth_ok && r->mtime_sec == 1700000001 && r->mtime_nsec == 125000000,
          "missing parents synthesized as 0700 dirs with the root's uid/gid/mtime");
    const backup_member *big = backup_index_find(idx, "big");
    CHECK(big && big->size == 700 * 1024 && big->mtime_nsec / 1000 == 987654 &&
              big->data_offset / LZOP_BLOCK_SIZE != (big->data_offset + big->size - 1) / LZOP_BLOCK_SIZE &&
              idx->partitions[0].blocks.n_blocks >= 3,
          "700 KiB file spans lzop blocks, fractional pax mtime kept");
    const backup_member *e = backup_index_find(idx, "empty"), *ge = backup_index_find(idx, "g/empty"),
                        *uz = backup_index_find(idx, "u/zero");
    CHECK(e && e->size == 0 && e->type == MEMBER_FILE && ge && ge->size == 0 && uz && uz->size == 0,
          "empty files in PAX, GNU and ustar partitions");
    const backup_member *ed = backup_index_find(idx, "emptydir");
    CHECK(ed && ed->type == MEMBER_DIR, "empty directory kept");
    const backup_member *hl = backup_index_find(idx, "hl"), *hl2 = backup_index_find(idx, "hl2");
    CHECK(hl && hl->type == MEMBER_HARDLINK && hl->partition == 2 && &idx->members[hl->link_member] == backup_index_find(idx, "orig") &&
              backup_index_find(idx, "orig")->partition == 0,
          "hard link in partition 2 resolves to its target in partition 0");
    CHECK(hl2 && hl2->type == MEMBER_HARDLINK && &idx->members[hl2->link_member] == backup_index_find(idx, "dup"), "hard link within a partition");
    const backup_member *dup = backup_index_find(idx, "dup");
    CHECK(dup && dup->partition == 2 && dup->size == 6, "later entry with the same path replaces the earlier one");
    const backup_member *gl = backup_index_find(idx, "g/lnk"), *ll = backup_index_find(idx, "longlnk");
    CHECK(gl && gl->type == MEMBER_SYMLINK && strlen(gl->link_target) == 131 && ll && strlen(ll->link_target) == 150,
          "long symlink targets (GNU K and pax linkpath)");
    CHECK(backup_index_find(idx, "\xc3\xa9lan.txt") != NULL, "non-ASCII pax path kept as UTF-8 bytes");
    CHECK(is_sorted(idx), "members sorted");
    test_check_headers(idx, tars, "PAX + GNU + ustar");
    test_json(idx, root);
    recs_free(&rs);
    backup_index_free(idx);
}

static void test_hostile_members(void)
{
    char root[512];
    int rc = make_bucket("hostile", root, sizeof root);
    CHECK(rc == 0, "python3 wrote a hostile partition");
    backup_index *idx = NULL;
    walfs_err err = {0};
    rc = build(root, SYN_BACKUP, &idx, &err);
    CHECK(rc == 0 && idx, "hostile partition still indexes (bad members skipped): %s", rc ? err.msg : "ok");
    if (rc)
        return;
    int dotdot = 0;
    for (size_t i = 0; i < idx->n_members; i++)
        if (strcmp(idx->members[i].name, "..") == 0 || strchr(idx->members[i].name, '/'))
            dotdot++;
    CHECK(dotdot == 0, "no member path with '..' or a leading '/'");
    CHECK(!backup_index_find(idx, "etc") && !backup_index_find(idx, "etc/x") && !backup_index_find(idx, "x") &&
              !backup_index_find(idx, "b") && !backup_index_find(idx, "a"),
          "../../etc/x, a/../../x, a/../b skipped (and no parents synthesized for them)");
    CHECK(!backup_index_find(idx, "abs/path") && !backup_index_find(idx, "abs"), "absolute /abs/path skipped");
    CHECK(!backup_index_find(idx, "hl") && !backup_index_find(idx, "hl_missing"),
          "hard links to ../x and to a missing member skipped");
    const backup_member *pw = backup_index_find(idx, "pw");
    CHECK(pw && pw->type == MEMBER_SYMLINK && strcmp(pw->link_target, "/etc/passwd") == 0,
          "symlink to /etc/passwd kept as a symlink, target unchanged");
    CHECK(!backup_index_find(idx, "f/child") && backup_index_find(idx, "f"),
          "member under a regular file skipped");
    CHECK(!backup_index_find(idx, "evil/passwd") && backup_index_find(idx, "evil"),
          "member under a symlink skipped (no writing through links)");
    const backup_member *r = backup_index_find(idx, "");
    CHECK(r && r->type == MEMBER_DIR, "root stays a directory when a later \"/\" entry is a file");
    CHECK(idx->n_members == 5, "exactly root, evil, f, ok, pw remain (%zu)", idx->n_members);
    backup_index_free(idx);
}

static void expect_fail(const char *scen, int from_list, const char *needle, const char *what)
{
    char root[512];
    if (make_bucket(scen, root, sizeof root) != 0) {
        CHECK(0, "%s: python3 wrote the bucket", what);
        return;
    }
    store *st = NULL;
    walfs_err err = {0};
    store_local_open(root, &st, &err);
    backup_partition_listing *parts = NULL;
    size_t n = 0;
    int lrc = backup_list_partitions(st, SYN_BACKUP, &parts, &n, &err);
    int rc = lrc;
    backup_index *idx = NULL;
    if (!lrc)
        rc = backup_index_build(st, SYN_BACKUP, parts, n, &idx, &err);
    CHECK(rc == -EIO && (from_list ? lrc != 0 : lrc == 0) && idx == NULL && strstr(err.msg, needle),
          "%s: -EIO naming %s: %s", what, needle, err.msg);
    backup_index_free(idx);
    backup_partition_listing_free(parts, n);
    store_close(st);
}

/* Writes part 0 of backup SYN_BACKUP under droot with orig's bytes, one
 * byte flipped at flip (none when flip == SIZE_MAX), cut to len, plus tail. */
static void write_damaged(const char *droot, const char *orig, size_t len, size_t flip, const char *tail)
{
    char dir[700], path[800];
    snprintf(dir, sizeof dir, "%s/basebackups_005/" SYN_BACKUP "/tar_partitions", droot);
    sh("mkdir -p %s", dir);
    snprintf(path, sizeof path, "%s/part_00000000.tar.lzo", dir);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(orig, 1, len, f);
    if (flip != SIZE_MAX && flip < len) {
        fseek(f, (long)flip, SEEK_SET);
        fputc((unsigned char)orig[flip] ^ 0x40, f);
        fseek(f, 0, SEEK_END);
    }
    if (tail)
        fputs(tail, f);
    fclose(f);
}

/* Index of the block holding decompressed offset off. */
static size_t block_at(const lzop_index *bi, uint64_t off)
{
    for (size_t i = 0; i < bi->n_blocks; i++)
        if (off >= bi->blocks[i].uncomp_offset && off < bi->blocks[i].uncomp_offset + bi->blocks[i].uncomp_len)
            return i;
    return SIZE_MAX;
}

/* Damages a copy of the synthesized part 0 and expects -EIO naming it,
 * wherever the damage is in a block that indexing must decode.  Damage in
 * member data is not indexing's to find: the read path verifies it. */
static void test_damaged(void)
{
    char root[512];
    snprintf(root, sizeof root, "%s/b_full", tmpdir);
    char key[1024];
    snprintf(key, sizeof key, "%s/basebackups_005/" SYN_BACKUP "/tar_partitions/part_00000000.tar.lzo", root);
    size_t len;
    char *orig = read_all(key, &len);
    /* Part 0 alone, intact: the reference for the damaged copies. */
    char groot[512];
    snprintf(groot, sizeof groot, "%s/intact", tmpdir);
    if (orig)
        write_damaged(groot, orig, len, SIZE_MAX, NULL);
    backup_index *good = NULL;
    walfs_err gerr = {0};
    int grc = orig ? build(groot, SYN_BACKUP, &good, &gerr) : -1;
    CHECK(orig != NULL && grc == 0, "read and index part 0 of the synthesized backup");
    if (!orig || grc) {
        free(orig);
        backup_index_free(good);
        return;
    }
    const lzop_index *bi = &good->partitions[0].blocks;
    const backup_member *big = backup_index_find(good, "big"), *after = backup_index_find(good, "after_big");
    /* The header of after_big lies in the block where the skip over big's
     * data ends: indexing decodes it inside the skip callback. */
    size_t hdr_blk = after ? block_at(bi, after->data_offset - 1) : SIZE_MAX;
    size_t data_blk = SIZE_MAX;
    for (size_t i = 0; big && i < bi->n_blocks; i++)
        if (bi->blocks[i].uncomp_offset >= big->data_offset &&
            bi->blocks[i].uncomp_offset + bi->blocks[i].uncomp_len <= big->data_offset + big->size) {
            data_blk = i;
            break;
        }
    CHECK(hdr_blk != SIZE_MAX && hdr_blk > 0 && data_blk != SIZE_MAX && data_blk < hdr_blk,
          "part 0: block %zu holds only data of \"big\", block %zu the header of \"after_big\"", data_blk, hdr_blk);
    if (hdr_blk == SIZE_MAX || data_blk == SIZE_MAX) {
        free(orig);
        backup_index_free(good);
        return;
    }
#define MID(b) ((size_t)(bi->blocks[b].data_offset + bi->blocks[b].comp_len / 2))
    static const char *kinds[] = {"truncated", "corrupt first block (headers)",
                                  "corrupt block where a skip over member data ends", "trailing"};
    for (int k = 0; k < 4; k++) {
        char droot[512];
        snprintf(droot, sizeof droot, "%s/damaged_%d", tmpdir, k);
        if (k == 0)
            write_damaged(droot, orig, len / 2, SIZE_MAX, NULL);
        else if (k == 1)
            write_damaged(droot, orig, len, MID(0), NULL);
        else if (k == 2)
            write_damaged(droot, orig, len, MID(hdr_blk), NULL);
        else
            write_damaged(droot, orig, len, SIZE_MAX, "garbage");
        backup_index *idx = NULL;
        walfs_err err = {0};
        int rc = build(droot, SYN_BACKUP, &idx, &err);
        CHECK(rc == -EIO && !idx && strstr(err.msg, "part_00000000.tar.lzo"), "%s partition: -EIO naming it: %s",
              kinds[k], err.msg);
        backup_index_free(idx);
    }

    /* A corrupt block in the middle of big's data: indexing never decodes
     * it, so the index comes out whole and right; the block reader runs
     * every read through lzop_decode_block, which rejects it. */
    char droot[512];
    snprintf(droot, sizeof droot, "%s/damaged_data", tmpdir);
    write_damaged(droot, orig, len, MID(data_blk), NULL);
    backup_index_stats s0, s1;
    backup_index_get_stats(&s0);
    backup_index *idx = NULL;
    walfs_err err = {0};
    int rc = build(droot, SYN_BACKUP, &idx, &err);
    backup_index_get_stats(&s1);
    if (idx) /* the object changed, so its ETag did: nothing else may differ */
        for (size_t i = 0; i < idx->n_partitions; i++)
            memcpy(idx->partitions[i].etag, good->partitions[i].etag, sizeof idx->partitions[i].etag);
    CHECK(rc == 0 && idx && same_index(idx, good) && s1.skipped_blocks > s0.skipped_blocks,
          "corrupt block %zu inside member data: not decoded at index time, index identical to the intact "
          "one: %s", data_blk, rc ? err.msg : "ok");
    const lzop_block *b = &bi->blocks[data_blk];
    size_t raw_len = (size_t)(b->data_offset - b->comp_offset) + b->comp_len;
    unsigned char *out = malloc(LZOP_BLOCK_SIZE);
    char dkey[1024];
    snprintf(dkey, sizeof dkey, "%s/basebackups_005/" SYN_BACKUP "/tar_partitions/part_00000000.tar.lzo", droot);
    size_t dlen;
    char *damaged = read_all(dkey, &dlen);
    walfs_err e1 = {0}, e2 = {0};
    int ok_rc = damaged && out ? lzop_decode_block(&bi->info, b, orig + b->comp_offset, raw_len, out, &e1) : -1;
    int bad_rc = damaged && out ? lzop_decode_block(&bi->info, b, damaged + b->comp_offset, raw_len, out, &e2) : 0;
    CHECK(ok_rc == 0 && bad_rc == -EIO, "the read path's lzop_decode_block rejects that block: %s", e2.msg);
    free(damaged);
    free(out);
    backup_index_free(idx);
#undef MID
    backup_index_free(good);
    free(orig);
}

/* One 8 MiB file (32 lzop blocks of data): only the blocks holding tar
 * headers may be decoded, and the index must still agree with tarfile. */
static void test_skips_data(void)
{
    char root[512];
    int rc = make_bucket("onebig", root, sizeof root);
    CHECK(rc == 0, "python3 wrote a partition with one 8 MiB file");
    backup_index_stats s0, s1;
    backup_index_get_stats(&s0);
    backup_index *idx = NULL;
    walfs_err err = {0};
    rc = build(root, SYN_BACKUP, &idx, &err);
    backup_index_get_stats(&s1);
    CHECK(rc == 0 && idx, "8 MiB file partition indexes: %s", rc ? err.msg : "ok");
    if (rc)
        return;
    uint64_t dec = s1.decoded_blocks - s0.decoded_blocks, skip = s1.skipped_blocks - s0.skipped_blocks;
    size_t nb = idx->partitions[0].blocks.n_blocks;
    CHECK(nb >= 33 && dec >= 1 && dec <= 3 && dec + skip == nb,
          "%" PRIu64 " of %zu blocks decoded (those with tar headers), %" PRIu64 " skipped undecoded", dec, nb, skip);
    char tars[1][512];
    rc = decompress_parts(root, idx, tars, "onebig");
    CHECK(rc == 0, "lzop -dc size agrees with the block table");
    recs rs = {0};
    load_dump(&rs, tars[0], 0);
    size_t nf = 0, nc = 0;
    int bad = rc == 0 ? compare_with_dump(idx, &rs, tars, &nf, &nc) : 1;
    const backup_member *m = backup_index_find(idx, "base/16384"), *a = backup_index_find(idx, "base/after");
    CHECK(bad == 0 && nc == 4 && nf == 2 && m && m->size == 8u << 20 && a && a->size == 5,
          "members and data offsets match tarfile (%zu members, %zu files)", nc, nf);
    recs_free(&rs);
    backup_index_free(idx);
}

/* The local store behind the shared fault store: every GET fails with
 * -EIO after delivering fail_after bytes (as a connection reset would). */
static store *fail_store_open(const char *root, uint64_t fail_after)
{
    store *st = fault_store_open_local(root);
    if (st) {
        fault_store_fail(st, FAULT_GET, 1, -1, -EIO);
        fault_store_fail_get_after(st, fail_after);
    }
    return st;
}

/* A member whose compressed data outgrows the in-flight limit: the
 * download waits for the tar walk; failures on either side while it waits
 * must end the build, not hang it. */
static void test_backpressure(void)
{
    char root[512];
    int rc = make_bucket("bigrand", root, sizeof root);
    CHECK(rc == 0, "python3 wrote a partition with 22 MiB of random data");
    backup_index *idx = NULL;
    walfs_err err = {0};
    rc = build(root, SYN_BACKUP, &idx, &err);
    CHECK(rc == 0 && idx, "22 MiB incompressible member (more than the 16 MiB in flight) indexes: %s",
          rc ? err.msg : "ok");
    if (rc)
        return;
    char tars[1][512];
    rc = decompress_parts(root, idx, tars, "bigrand");
    recs rs = {0};
    load_dump(&rs, tars[0], 0);
    size_t nf = 0, nc = 0;
    int bad = rc == 0 ? compare_with_dump(idx, &rs, tars, &nf, &nc) : 1;
    CHECK(bad == 0 && nf == 3, "members and data offsets match tarfile (%zu files)", nf);
    recs_free(&rs);
    uint64_t comp = idx->partitions[0].object_size;
    backup_index_free(idx);

    static const uint64_t cuts[] = {0, 20, 100000, 262144 + 30, 17u << 20, 0};
    int bad_cuts = 0;
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        uint64_t at = i + 1 == sizeof cuts / sizeof cuts[0] ? comp - 5 : cuts[i];
        store *st = fail_store_open(root, at);
        backup_partition_listing *parts = NULL;
        size_t n = 0;
        walfs_err e = {0};
        int r = st ? backup_list_partitions(st, SYN_BACKUP, &parts, &n, &e) : -1;
        backup_index *x = NULL;
        if (!r)
            r = backup_index_build(st, SYN_BACKUP, parts, n, &x, &e);
        if (r != -EIO || x || !strstr(e.msg, "part_00000000.tar.lzo") || !strstr(e.msg, "injected")) {
            printf("# store failure after %" PRIu64 " bytes: rc %d: %s\n", at, r, e.msg);
            bad_cuts++;
        }
        backup_index_free(x);
        backup_partition_listing_free(parts, n);
        if (st)
            store_close(st);
    }
    CHECK(bad_cuts == 0, "store error mid-stream (%zu points, up to 5 bytes before the end): the store's -EIO, "
          "naming the partition, no hang", sizeof cuts / sizeof cuts[0]);
}

int main(void)
{
    walfs_log_set_level(WALFS_LOG_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/walfs-test-bi.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    char p[512];
    snprintf(p, sizeof p, "%s/dump.py", tmpdir);
    write_file(p, dump_py);
    snprintf(p, sizeof p, "%s/gen.py", tmpdir);
    write_file(p, gen_py);

    test_normalize();
    test_deep(); /* first: its peak memory is measured */
    test_fixture();
    test_synthesized();
    test_hostile_members();
    test_damaged();
    test_skips_data();
    test_backpressure();
    test_long_symlink();
    expect_fail("sparse_gnu", 0, "sparse", "GNU sparse member (GNU tar --sparse)");
    expect_fail("sparse_pax", 0, "sparse", "pax GNU.sparse member (GNU tar --sparse --format=pax)");
    expect_fail("gap", 1, "part_00000001.tar.lzo is missing", "partition missing from the numbering");
    expect_fail("noparts", 1, "part_00000000.tar.lzo is missing", "no partitions at all");
    expect_fail("notar", 0, "part_00000000.tar.lzo: not a tar", "lzop'd garbage (2 MiB, producer must not hang)");
    expect_fail("notar_big", 0, "part_00000000.tar.lzo: not a tar",
                "24 MiB of lzop'd garbage (tar fails while the download waits for room)");
    expect_fail("zero", 0, "part_00000000.tar.lzo", "partition that decompresses to nothing");
    expect_fail("noeof", 0, "end-of-archive", "tar cut at a header boundary before compression");
    expect_fail("cutdata", 0, "part_00000000.tar.lzo", "tar cut inside member data before compression");
    {
        char root[512];
        int rc = make_bucket("empty", root, sizeof root);
        CHECK(rc == 0, "python3 wrote an empty tar");
        backup_index *idx = NULL;
        walfs_err err = {0};
        rc = build(root, SYN_BACKUP, &idx, &err);
        CHECK(rc == 0 && idx && idx->n_members == 1 && idx->members[0].name[0] == '\0' &&
                  idx->members[0].type == MEMBER_DIR && idx->members[0].mode == 0700 && idx->members[0].uid == 0,
              "empty tar: index with just a synthesized root (0700, 0/0): %s", rc ? err.msg : "ok");
        backup_index_free(idx);
    }
    sh("rm -rf %s", tmpdir);
    return test_summary();
}
