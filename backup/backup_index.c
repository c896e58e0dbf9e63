/* Base backup index: tar members of every partition, where their data lives
 * in the decompressed partition, and the lzop block table to get there
 * (format: docs/wal-e-format.md §1.2, §2, §3.9). */
#include "backup/backup_index.h"
#include "backup/backup_index_internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/hex.h"
#include "common/log.h"
#include "wale/layout.h"

#define INDEX_FORMAT "walfs-backup-index"
/* Version 1 stored every member's full path; version 2 stores a name and
 * a parent reference (an older index is rebuilt, not converted). */
#define INDEX_VERSION 2
/* A FUSE path beyond these cannot be looked up anyway. */
#define MAX_PATH_LEN BACKUP_PATH_MAX
#define MAX_NAME_LEN 255
/* The index (memory, and its JSON) must stay a bounded multiple of the
 * tar headers it describes.  Every member has a header of at least 512
 * bytes, which its entry never outgrows; each parent synthesized for a path
 * without directory entries is one entry of about 130 bytes in memory (14
 * in the JSON), paid for by the 2 or more bytes of the name that needs it
 * ("d/").  So no tar reaches 64x (one-letter components come closest, at
 * about 55x): the limit is a backstop, with a clear message, against
 * whatever this reasoning missed. */
#define INDEX_BUDGET_FACTOR 64
#define INDEX_BUDGET_SLACK_MIB 4

/* A stored index (anyone who may store indexes can write one) is refused
 * unparsed beyond this many times the compressed bytes of the partitions
 * it describes, plus a constant.  Measured: the PostgreSQL 15 fixture's
 * index is 0.014x its partitions (data dominates); a tar of nothing but
 * 20,000 empty files (headers only, lzop shrinks them 36x) about 3x.  Only
 * hostile trees compress further (60 files 2,000 levels deep: 390x): their
 * index is rebuilt from the partitions instead. */
#define INDEX_JSON_FACTOR 16u
#define INDEX_JSON_SLACK ((uint64_t)1 << 20)
/* json-c needs several times this much to parse. */
#define INDEX_JSON_CEILING ((uint64_t)256 << 20)

#define CORRUPT_TODO "the object is damaged or was not written by WAL-E: restore it from another copy " \
                     "or take a new base backup"

static uint64_t round_up_512(uint64_t n)
{
    return (n + 511u) & ~(uint64_t)511u;
}

/* Backup names become key components: refuse anything that could change
 * the key's meaning ('/', "..") rather than trust the caller. */
static int check_backup_name(const char *name, walfs_err *err)
{
    if (!name || !*name || strlen(name) > 200 || strchr(name, '/') || name[0] == '.')
        return walfs_err_set(err, -EINVAL, "invalid base backup name \"%s\": expected base_<24 hex>_<8 chars>",
                             name ? name : "(null)");
    return 0;
}

/* ------------------------------------------------------------------ paths */

char *backup_normalize_path(const char *name, int *escapes)
{
    int esc_dummy;
    if (!escapes)
        escapes = &esc_dummy;
    *escapes = 0;
    if (!name)
        return NULL;
    size_t n = strlen(name);
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    size_t o = 0, depth = 0;
    int dotdot = 0;
    const char *p = name;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, "/");
        if (len == 1 && p[0] == '.') {
            p += len;
            continue;
        }
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            /* Even a ".." that stays inside the root is refused: tar would
             * resolve it against directories of the extraction target that
             * may be symlinks, so its meaning is not the lexical one. */
            dotdot = 1;
            if (depth == 0)
                *escapes = 1;
            else
                depth--;
            p += len;
            continue;
        }
        if (o)
            out[o++] = '/';
        memcpy(out + o, p, len);
        o += len;
        depth++;
        p += len;
    }
    out[o] = '\0';
    /* WAL-E writes only relative names; the root directory's own entry is
     * the one exception ("/"). Any other absolute name was not written by
     * WAL-E and would be extracted outside the data directory by careless
     * tools, so it is refused like a climbing "..". */
    if (dotdot || (name[0] == '/' && o > 0)) {
        if (name[0] == '/' && o > 0)
            *escapes = 1;
        free(out);
        return NULL;
    }
    return out;
}

/* Names the FUSE layer could never serve are not worth indexing. */
static int path_fits(const char *path)
{
    if (strlen(path) > MAX_PATH_LEN)
        return 0;
    for (const char *c = path; *c;) {
        size_t len = strcspn(c, "/");
        if (len > MAX_NAME_LEN)
            return 0;
        c += len;
        if (*c == '/')
            c++;
    }
    return 1;
}

/* ---------------------------------------------------- header verification */

/* A numeric tar field: octal digits (leading spaces or NULs allowed, ended
 * by a space or NUL), or GNU/star base-256 when the top bit is set.  -1 when
 * it is neither, or does not fit. */
static int64_t tar_number(const unsigned char *f, size_t n)
{
    if (f[0] & 0x80) {
        if (f[0] == 0xff)
            return -1; /* negative: no size is */
        uint64_t v = f[0] & 0x3f;
        for (size_t i = 1; i < n; i++) {
            if (v >> 55)
                return -1;
            v = v << 8 | f[i];
        }
        return v > INT64_MAX ? -1 : (int64_t)v;
    }
    size_t i = 0;
    while (i < n && (f[i] == ' ' || f[i] == '\0'))
        i++;
    uint64_t v = 0;
    size_t digits = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++, digits++)
        v = v << 3 | (uint64_t)(f[i] - '0');
    if (!digits)
        return -1;
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0')
            return -1;
    return (int64_t)v;
}

static int tar_checksum_ok(const unsigned char *h)
{
    int64_t want = tar_number(h + 148, 8);
    uint64_t u = 0;
    int64_t sg = 0;
    for (size_t i = 0; i < BACKUP_TAR_HEADER_LEN; i++) {
        unsigned char c = i >= 148 && i < 156 ? ' ' : h[i];
        u += c;
        sg += (signed char)c;
    }
    /* Old writers summed signed chars; both are tar. */
    return want >= 0 && ((uint64_t)want == u || want == sg);
}

static int mismatch(const backup_index *idx, const backup_member *m, walfs_err *err, const char *what)
{
    char path[MAX_PATH_LEN + 1];
    return walfs_err_set(err, -EBADMSG, "the tar header in front of \"%s\" (decompressed offset %" PRIu64
                         ") %s", backup_index_path(idx, m, path, sizeof path), m->data_offset, what);
}

/* Python's tarfile (WAL-E) writes a name it cannot encode in ASCII to a pax
 * record, and in the header field with '?' for each such character. */
static int header_name_matches(const char *path, const char *h, int prefix)
{
    const unsigned char *p = (const unsigned char *)path, *q = (const unsigned char *)h;
    while (*q) {
        if (*q == '?' && *p >= 0x80) {
            p++;
            while (*p >= 0x80 && *p < 0xc0)
                p++;
            q++;
            continue;
        }
        if (*p != *q)
            return 0;
        p++;
        q++;
    }
    return prefix || *p == '\0';
}

/* Whether an octal header field says want.  A value the field cannot hold
 * is carried by a pax record, the field then holding 0 (Python's tarfile);
 * base-256 fields (GNU) are left to the caller, as a pax record may still
 * override them.  Any other octal value must be want exactly. */
static int octal_agrees(const unsigned char *f, size_t n, uint64_t want, uint64_t field_max)
{
    if (f[0] & 0x80)
        return 1;
    int64_t v = tar_number(f, n);
    if (v < 0)
        return 0;
    return (uint64_t)v == want || (v == 0 && want > field_max);
}

int backup_member_check_header(const backup_index *idx, const backup_member *m, const unsigned char *h,
                               walfs_err *err)
{
    char path[MAX_PATH_LEN + 1];
    backup_index_path(idx, m, path, sizeof path);
    if (!tar_checksum_ok(h))
        return mismatch(idx, m, err, "is not a tar header (bad checksum): the offset points into other data");
    /* '0', NUL (pre-POSIX) and '7' (contiguous) are what libarchive reads
     * as a regular file with data. */
    if (h[156] != '0' && h[156] != '\0' && h[156] != '7')
        return mismatch(idx, m, err, "is not that of a regular file");
    /* The size decides which bytes are served, so a field that is neither
     * octal nor base-256 refuses the member. */
    if (!(h[124] & 0x80) && !octal_agrees(h + 124, 12, m->size, 077777777777ULL))
        return mismatch(idx, m, err, "gives another size");
    /* The kernel checks permissions against these (default_permissions). */
    int64_t mode = h[100] & 0x80 ? -1 : tar_number(h + 100, 8);
    if (mode >= 0 && ((uint64_t)mode & 07777) != m->mode)
        return mismatch(idx, m, err, "gives another mode");
    if (tar_number(h + 108, 8) >= 0 && !octal_agrees(h + 108, 8, m->uid, 07777777))
        return mismatch(idx, m, err, "gives another owner (uid)");
    if (tar_number(h + 116, 8) >= 0 && !octal_agrees(h + 116, 8, m->gid, 07777777))
        return mismatch(idx, m, err, "gives another group (gid)");
    char full[100 + 1 + 155 + 1];
    size_t nlen = strnlen((const char *)h, 100), plen = 0;
    full[0] = '\0';
    /* POSIX ustar splits long names into prefix/name; GNU's magic has no
     * prefix field there. */
    if (memcmp(h + 257, "ustar\0", 6) == 0) {
        plen = strnlen((const char *)h + 345, 155);
        if (plen) {
            memcpy(full, h + 345, plen);
            full[plen++] = '/';
        }
    }
    memcpy(full + plen, h, nlen);
    full[plen + nlen] = '\0';
    /* A name longer than the field lives in a GNU 'L' or pax record before
     * this header, which keeps only its first 99 or 100 bytes: those must
     * begin the member's name. */
    int truncated = plen == 0 && nlen >= 99;
    if (truncated) {
        const char *t = full;
        while (t[0] == '/' || (t[0] == '.' && t[1] == '/'))
            t += t[0] == '/' ? 1 : 2;
        if (header_name_matches(path, t, 1))
            return 0;
    }
    char *norm = backup_normalize_path(full, NULL);
    int same = norm && header_name_matches(path, norm, 0);
    free(norm);
    if (same)
        return 0;
    return mismatch(idx, m, err, "names another member");
}

/* -------------------------------------------------------------- listing */

typedef struct list_ctx {
    const char *backup;
    backup_partition_listing *v;
    size_t n, cap;
    uint32_t *nums;
    int oom;
} list_ctx;

static int list_cb(void *ctx, const store_entry *e)
{
    list_ctx *lc = ctx;
    uint32_t num;
    if (e->is_dir || !wale_partition_number(e->name, &num)) {
        log_warn("backup %s: ignoring %s%s in tar_partitions/: not a part_NNNNNNNN.tar.lzo partition",
                 lc->backup, e->name, e->is_dir ? "/" : "");
        return 0;
    }
    if (lc->n == lc->cap) {
        size_t cap = lc->cap ? lc->cap * 2 : 8;
        backup_partition_listing *nv = realloc(lc->v, cap * sizeof *nv);
        if (!nv) {
            lc->oom = 1;
            return -ENOMEM;
        }
        lc->v = nv;
        uint32_t *nn = realloc(lc->nums, cap * sizeof *nn);
        if (!nn) {
            lc->oom = 1;
            return -ENOMEM;
        }
        lc->nums = nn;
        lc->cap = cap;
    }
    backup_partition_listing *l = &lc->v[lc->n];
    memset(l, 0, sizeof *l);
    l->size = e->size;
    if (e->etag)
        snprintf(l->etag, sizeof l->etag, "%s", e->etag);
    char prefix[WALE_KEY_MAX];
    wale_partitions_prefix(prefix, sizeof prefix, lc->backup);
    if (asprintf(&l->key, "%s%s", prefix, e->name) < 0) {
        l->key = NULL;
        lc->oom = 1;
        return -ENOMEM;
    }
    lc->nums[lc->n] = num;
    lc->n++;
    return 0;
}

void backup_partition_listing_free(backup_partition_listing *l, size_t n)
{
    if (!l)
        return;
    for (size_t i = 0; i < n; i++)
        free(l[i].key);
    free(l);
}

int backup_list_partitions(store *st, const char *backup_name, backup_partition_listing **out,
                           size_t *n_out, walfs_err *err)
{
    *out = NULL;
    *n_out = 0;
    int rc = check_backup_name(backup_name, err);
    if (rc)
        return rc;
    char prefix[WALE_KEY_MAX];
    wale_partitions_prefix(prefix, sizeof prefix, backup_name);
    list_ctx lc = {.backup = backup_name};
    rc = store_list(st, prefix, list_cb, &lc, err);
    if (lc.oom)
        rc = walfs_err_set(err, -ENOMEM, "out of memory listing %s", prefix);
    if (rc)
        goto fail;
    /* The listing comes in key order from S3 and in no order from a local
     * directory; sort by number (an insertion sort: a backup has a handful). */
    for (size_t i = 1; i < lc.n; i++) {
        for (size_t j = i; j > 0 && lc.nums[j - 1] > lc.nums[j]; j--) {
            backup_partition_listing t = lc.v[j];
            lc.v[j] = lc.v[j - 1];
            lc.v[j - 1] = t;
            uint32_t tn = lc.nums[j];
            lc.nums[j] = lc.nums[j - 1];
            lc.nums[j - 1] = tn;
        }
    }
    if (lc.n == 0) {
        rc = walfs_err_set(err, -EIO, "backup %s: no tar partitions under %s (part_00000000.tar.lzo is "
                           "missing): the backup is incomplete or was deleted; use another backup",
                           backup_name, prefix);
        goto fail;
    }
    for (size_t i = 0; i < lc.n; i++) {
        if (lc.nums[i] != i) {
            rc = walfs_err_set(err, -EIO, "backup %s: partition %spart_%08zu.tar.lzo is missing (found %zu "
                               "partitions, numbered up to %08" PRIu32 "): the backup is incomplete; "
                               "use another backup", backup_name, prefix, i, lc.n, lc.nums[lc.n - 1]);
            goto fail;
        }
    }
    /* The ETag is what proves a cached index still matches the objects;
     * listings carry it, and a backend that does not costs a HEAD each. */
    for (size_t i = 0; i < lc.n; i++) {
        if (lc.v[i].etag[0])
            continue;
        store_stat sst;
        rc = store_stat_key(st, lc.v[i].key, &sst, err);
        if (rc)
            goto fail;
        lc.v[i].size = sst.size;
        snprintf(lc.v[i].etag, sizeof lc.v[i].etag, "%s", sst.etag);
    }
    free(lc.nums);
    *out = lc.v;
    *n_out = lc.n;
    return 0;
fail:
    free(lc.nums);
    backup_partition_listing_free(lc.v, lc.n);
    return rc;
}

/* ------------------------------------------------------------ index core */

static void member_fini(backup_member *m)
{
    free(m->name);
    free(m->link_target);
    m->name = m->link_target = NULL;
}

void backup_index_free(backup_index *idx)
{
    if (!idx)
        return;
    for (size_t i = 0; i < idx->n_partitions; i++) {
        free(idx->partitions[i].key);
        lzop_index_free(&idx->partitions[i].blocks);
    }
    free(idx->partitions);
    for (size_t i = 0; i < idx->n_members; i++)
        member_fini(&idx->members[i]);
    free(idx->members);
    free(idx->backup_name);
    free(idx);
}

/* The child of dir named by the len bytes at name: binary search among
 * its children, which are sorted by name. */
static const backup_member *find_child(const backup_index *idx, const backup_member *dir, const char *name,
                                       size_t len)
{
    if (dir->type != MEMBER_DIR)
        return NULL;
    size_t lo = dir->first_child, hi = (size_t)dir->first_child + dir->n_children;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *n = idx->members[mid].name;
        int c = strncmp(n, name, len);
        if (c == 0)
            c = n[len] != '\0';
        if (c == 0)
            return &idx->members[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const backup_member *backup_index_find(const backup_index *idx, const char *path)
{
    if (idx->n_members == 0)
        return NULL;
    const backup_member *m = &idx->members[0];
    while (m && *path) {
        size_t len = strcspn(path, "/");
        if (len == 0)
            return NULL;
        m = find_child(idx, m, path, len);
        path += len;
        if (*path == '/' && !*++path)
            return NULL;
    }
    return m;
}

char *backup_index_path(const backup_index *idx, const backup_member *m, char *buf, size_t cap)
{
    /* Filled from the end, then moved to the front.  Only the root has an
     * empty name, and parents come before their children, so this ends. */
    size_t pos = cap - 1;
    buf[pos] = '\0';
    for (const backup_member *c = m; c->name[0]; c = &idx->members[c->parent]) {
        size_t len = strlen(c->name), sep = c != m;
        if (len + sep > pos) {
            /* Only a corrupt index gets here: say so rather than truncate. */
            snprintf(buf, cap, "(path too long)");
            return buf;
        }
        pos -= len + sep;
        memcpy(buf + pos, c->name, len);
        if (sep)
            buf[pos + len] = '/';
    }
    memmove(buf, buf + pos, cap - pos);
    return buf;
}

int backup_index_matches(const backup_index *idx, const backup_partition_listing *parts,
                         size_t n_parts)
{
    if (!idx || idx->n_partitions != n_parts)
        return 0;
    for (size_t i = 0; i < n_parts; i++) {
        const backup_partition *p = &idx->partitions[i];
        if (strcmp(p->key, parts[i].key) != 0 || p->object_size != parts[i].size ||
            strcmp(p->etag, parts[i].etag) != 0)
            return 0;
    }
    return 1;
}

size_t backup_index_json_max(uint64_t total)
{
    uint64_t max = total > (UINT64_MAX - INDEX_JSON_SLACK) / INDEX_JSON_FACTOR
                       ? UINT64_MAX : total * INDEX_JSON_FACTOR + INDEX_JSON_SLACK;
    return max > INDEX_JSON_CEILING ? INDEX_JSON_CEILING : (size_t)max;
}

/* Members while building, in tar order (partition by partition), each with
 * its full normalized path (bounded by the tar's own header bytes: a long
 * name takes at least its length in header records). */
typedef struct pending {
    backup_member m;        /* name unset until the tree is built */
    char *path;
    char *link_path;        /* hard links: the normalized path the tar names */
    size_t seq;             /* tar order, for "the later entry wins" */
    uint32_t node;          /* its entry in the tree, UINT32_MAX when dropped */
} pending;

typedef struct mvec {
    pending *v;
    size_t n, cap;
} mvec;

static void pending_fini(pending *p)
{
    member_fini(&p->m);
    free(p->path);
    free(p->link_path);
    p->path = p->link_path = NULL;
}

static int mvec_push(mvec *mv, const pending *m)
{
    if (mv->n == mv->cap) {
        size_t cap = mv->cap ? mv->cap * 2 : 256;
        pending *nv = realloc(mv->v, cap * sizeof *nv);
        if (!nv)
            return -ENOMEM;
        mv->v = nv;
        mv->cap = cap;
    }
    mv->v[mv->n++] = *m;
    return 0;
}

static void mvec_free(mvec *mv)
{
    for (size_t i = 0; i < mv->n; i++)
        pending_fini(&mv->v[i]);
    free(mv->v);
    memset(mv, 0, sizeof *mv);
}

/* ------------------------------------------------------- partition stream */

/* Indexing needs only the tar headers, a few blocks out of thousands: member
 * data is skipped without being decompressed (its checksums are verified by
 * the block reader whenever it is read).  A producer thread downloads the
 * object, lets the scanner validate the stream structure and build the block
 * table, and cuts the stream into whole compressed blocks queued for the
 * consumer; libarchive, in the consumer, pulls decoded bytes through a read
 * callback that decodes blocks on demand, and moves past member data through
 * a skip callback that drops whole blocks undecoded. */

/* Compressed bytes in flight between download and tar walk: keeps the two
 * overlapped through uneven progress on either side, and bounds memory
 * whatever the partition size. */
#define INFLIGHT_MAX (16u << 20)

/* lzop header flags that decide where blocks start; the codec owns the
 * format and checks every field before this file looks at it. */
#define LZOP_F_ADLER32_D     0x00000001u
#define LZOP_F_ADLER32_C     0x00000002u
#define LZOP_F_H_EXTRA_FIELD 0x00000040u
#define LZOP_F_CRC32_D       0x00000100u
#define LZOP_F_CRC32_C       0x00000200u
#define LZOP_F_H_FILTER      0x00000800u

/* Enough for the longest header prefix that tells the header's length:
 * the fixed fields, a 255-byte name, its checksum and an extra-field length. */
#define LZOP_HDR_PREFIX_MAX 320

static _Atomic uint64_t stat_decoded_blocks, stat_skipped_blocks;

void backup_index_get_stats(backup_index_stats *out)
{
    out->decoded_blocks = atomic_load(&stat_decoded_blocks);
    out->skipped_blocks = atomic_load(&stat_skipped_blocks);
}

/* One compressed block: its bytes from the block header through the payload,
 * exactly what lzop_decode_block takes. */
typedef struct qblock {
    struct qblock *next;
    lzop_block b;
    size_t raw_len, have;
    unsigned char raw[];
} qblock;

typedef struct producer producer;

typedef struct bqueue {
    pthread_mutex_t mu;
    pthread_cond_t more, room;
    qblock *head, *tail;
    size_t bytes;
    lzop_stream_info info;  /* set before the first block is queued */
    int done;               /* the producer has finished: its rc and err are final */
    int stop;               /* the consumer gave up: the producer must stop too */
} bqueue;

struct producer {
    store *st;
    const char *key;
    lzop_scanner *sc;
    bqueue *q;
    lzop_index blocks;
    /* Block framing, a step behind the scanner on the same bytes. */
    enum { FR_HEADER, FR_HEADER_REST, FR_BLK_HDR, FR_BLK_BODY, FR_END } fr;
    unsigned char fbuf[LZOP_HDR_PREFIX_MAX];
    size_t fhave;
    uint64_t rest;          /* header bytes (name, extra field) still to pass over */
    uint64_t off;           /* stream offset of the next byte */
    uint64_t blk_off, uncomp_off, n_framed;
    lzop_stream_info info;
    qblock *cur;
    int rc;
    int peer_gone;          /* the consumer gave up first: its error is the real one */
    walfs_err err;
};

static uint32_t be16(const unsigned char *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The header's total length once h holds enough of it to tell, else 0.
 * Layout only: the scanner has already rejected bad values. */
static uint64_t lzop_header_len(const unsigned char *h, size_t n, lzop_stream_info *info)
{
    if (n < 13)
        return 0;
    uint32_t version = be16(h + 9);
    size_t p = 13 + (version >= 0x0940 ? 2 : 0);
    uint8_t method = h[p];
    p += 1 + (version >= 0x0940 ? 1 : 0);
    if (n < p + 4)
        return 0;
    uint32_t flags = be32(h + p);
    p += 4 + (flags & LZOP_F_H_FILTER ? 4 : 0) + 8 + (version >= 0x0940 ? 4 : 0);
    if (n < p + 1)
        return 0;
    uint64_t len = p + 1 + (uint64_t)h[p] + 4;
    if (flags & LZOP_F_H_EXTRA_FIELD) {
        if (n < len + 4)
            return 0;
        len += 4 + (uint64_t)be32(h + len) + 4;
    }
    info->flags = flags;
    info->method = method;
    info->header_len = (uint32_t)len;
    return len;
}

static size_t block_header_len(uint32_t flags, uint32_t src_len, uint32_t dst_len)
{
    size_t n = !!(flags & LZOP_F_ADLER32_D) + !!(flags & LZOP_F_CRC32_D);
    if (src_len < dst_len)
        n += !!(flags & LZOP_F_ADLER32_C) + !!(flags & LZOP_F_CRC32_C);
    return 8 + 4 * n;
}

static int queue_put(producer *p, qblock *b)
{
    bqueue *q = p->q;
    pthread_mutex_lock(&q->mu);
    if (p->n_framed == 1)
        q->info = p->info;
    /* One block always fits, however large the limit is exceeded by it. */
    while (!q->stop && q->bytes > 0 && q->bytes + b->raw_len > INFLIGHT_MAX)
        pthread_cond_wait(&q->room, &q->mu);
    int stopped = q->stop;
    if (!stopped) {
        b->next = NULL;
        if (q->tail)
            q->tail->next = b;
        else
            q->head = b;
        q->tail = b;
        q->bytes += b->raw_len;
        pthread_cond_signal(&q->more);
    }
    pthread_mutex_unlock(&q->mu);
    if (stopped) {
        free(b);
        p->peer_gone = 1;
        return walfs_err_set(&p->err, -EIO, "%s: tar reader stopped", p->key);
    }
    return 0;
}

/* The block header (dst_len, src_len) is complete in fbuf. */
static int block_begin(producer *p)
{
    uint32_t dst_len = be32(p->fbuf), src_len = be32(p->fbuf + 4);
    /* The scanner rejects these first; checked again because they size an
     * allocation. */
    if (dst_len > LZOP_BLOCK_SIZE || src_len == 0 || src_len > dst_len)
        return walfs_err_set(&p->err, -EIO, "%s: block at offset %" PRIu64 " has lengths %" PRIu32 "/%" PRIu32
                             " the scanner should have refused (bug); %s", p->key, p->blk_off, dst_len,
                             src_len, CORRUPT_TODO);
    size_t hdr = block_header_len(p->info.flags, src_len, dst_len);
    qblock *b = malloc(sizeof *b + hdr + src_len);
    if (!b)
        return walfs_err_set(&p->err, -ENOMEM, "%s: out of memory", p->key);
    b->next = NULL;
    b->b.comp_offset = p->blk_off;
    b->b.data_offset = p->blk_off + hdr;
    b->b.comp_len = src_len;
    b->b.uncomp_len = dst_len;
    b->b.uncomp_offset = p->uncomp_off;
    b->raw_len = hdr + src_len;
    memcpy(b->raw, p->fbuf, 8);
    b->have = 8;
    p->cur = b;
    p->fr = FR_BLK_BODY;
    return 0;
}

/* Cuts the stream into blocks.  Runs on bytes the scanner has accepted, so
 * every field it acts on has passed the codec's checks (the header and
 * extra-field checksums precede the first block). */
static int frame(producer *p, const unsigned char *d, size_t len)
{
    while (len > 0) {
        size_t used;
        int rc = 0;
        switch (p->fr) {
        case FR_HEADER: {
            size_t take = sizeof p->fbuf - p->fhave;
            if (take > len)
                take = len;
            memcpy(p->fbuf + p->fhave, d, take);
            uint64_t h = lzop_header_len(p->fbuf, p->fhave + take, &p->info);
            if (h == 0) {
                if (p->fhave + take == sizeof p->fbuf)
                    return walfs_err_set(&p->err, -EIO, "%s: lzop header longer than any lzop writes "
                                         "(bug: the scanner accepted it); %s", p->key, CORRUPT_TODO);
                used = take;
                p->fhave += take;
                break;
            }
            /* h > fhave: fewer bytes did not tell the length. */
            used = h - p->fhave < take ? (size_t)(h - p->fhave) : take;
            p->rest = h - p->fhave - used;
            p->fhave = 0;
            p->fr = p->rest ? FR_HEADER_REST : FR_BLK_HDR;
            break;
        }
        case FR_HEADER_REST:
            used = p->rest < len ? (size_t)p->rest : len;
            p->rest -= used;
            if (!p->rest)
                p->fr = FR_BLK_HDR;
            break;
        case FR_BLK_HDR: {
            if (p->fhave == 0)
                p->blk_off = p->off;
            size_t want = (p->fhave < 4 ? 4 : 8) - p->fhave;
            used = want < len ? want : len;
            memcpy(p->fbuf + p->fhave, d, used);
            p->fhave += used;
            if (p->fhave == 4 && be32(p->fbuf) == 0) {
                p->fr = FR_END; /* what follows is the scanner's to judge */
            } else if (p->fhave == 8) {
                p->fhave = 0;
                rc = block_begin(p);
            }
            break;
        }
        case FR_BLK_BODY: {
            qblock *b = p->cur;
            used = b->raw_len - b->have < len ? b->raw_len - b->have : len;
            memcpy(b->raw + b->have, d, used);
            b->have += used;
            if (b->have == b->raw_len) {
                p->cur = NULL;
                p->uncomp_off += b->b.uncomp_len;
                p->n_framed++;
                p->fr = FR_BLK_HDR;
                rc = queue_put(p, b);
            }
            break;
        }
        default:
            used = len;
            break;
        }
        if (rc)
            return rc;
        p->off += used;
        d += used;
        len -= used;
    }
    return 0;
}

static int producer_feed(void *ctx, const void *data, size_t len)
{
    producer *p = ctx;
    int rc = lzop_scanner_feed(p->sc, data, len, &p->err);
    if (rc)
        return rc;
    return frame(p, data, len);
}

static void *producer_main(void *arg)
{
    producer *p = arg;
    int rc = store_get(p->st, p->key, 0, 0, producer_feed, p, &p->err);
    if (!rc)
        rc = lzop_scanner_finish(p->sc, &p->blocks, &p->err);
    /* Two readings of the same bytes must agree, or the blocks handed to
     * libarchive are not the ones the block table describes. */
    if (!rc && (p->fr != FR_END || p->n_framed != p->blocks.n_blocks ||
                p->uncomp_off != p->blocks.uncomp_size || p->info.header_len != p->blocks.info.header_len ||
                p->info.flags != p->blocks.info.flags))
        rc = walfs_err_set(&p->err, -EIO, "%s: framed %" PRIu64 " blocks (%" PRIu64 " bytes) but the lzop "
                           "scanner found %zu (%" PRIu64 " bytes) (bug); %s", p->key, p->n_framed,
                           p->uncomp_off, p->blocks.n_blocks, p->blocks.uncomp_size, CORRUPT_TODO);
    if (rc && p->err.code == 0)
        walfs_err_set(&p->err, rc, "%s: reading the object failed", p->key);
    free(p->cur);
    p->cur = NULL;
    bqueue *q = p->q;
    pthread_mutex_lock(&q->mu);
    p->rc = rc;
    q->done = 1;
    pthread_cond_broadcast(&q->more);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

typedef struct consumer {
    bqueue *q;
    producer *p;
    const char *key;
    lzop_stream_info info;
    unsigned char *buf;     /* the current block, decoded */
    size_t len, pos;        /* its length, and how much of it libarchive has had */
    uint64_t total;         /* decompressed position: bytes handed out or skipped */
    int failed;             /* a block failed to decode: err says why */
    walfs_err err;
} consumer;

/* The next block, or NULL once the producer has finished and the queue is
 * empty (the stream ended, or the producer failed: see producer_rc). */
static qblock *queue_get(consumer *c)
{
    bqueue *q = c->q;
    pthread_mutex_lock(&q->mu);
    while (!q->head && !q->done)
        pthread_cond_wait(&q->more, &q->mu);
    qblock *b = q->head;
    if (b) {
        q->head = b->next;
        if (!q->head)
            q->tail = NULL;
        q->bytes -= b->raw_len;
        c->info = q->info;
        pthread_cond_signal(&q->room);
    }
    pthread_mutex_unlock(&q->mu);
    return b;
}

static int producer_rc(consumer *c)
{
    pthread_mutex_lock(&c->q->mu);
    int rc = c->q->done ? c->p->rc : 0;
    pthread_mutex_unlock(&c->q->mu);
    return rc;
}

static void queue_stop(bqueue *q)
{
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->room);
    pthread_mutex_unlock(&q->mu);
}

static int consumer_decode(consumer *c, qblock *b)
{
    walfs_err e;
    walfs_err_clear(&e);
    atomic_fetch_add(&stat_decoded_blocks, 1);
    int rc = lzop_decode_block(&c->info, &b->b, b->raw, b->raw_len, c->buf, &e);
    uint32_t len = b->b.uncomp_len;
    free(b);
    if (rc) {
        c->failed = 1;
        c->len = c->pos = 0;
        return walfs_err_set(&c->err, rc, "%s: %s", c->key, e.msg);
    }
    c->len = len;
    c->pos = 0;
    return 0;
}

static la_ssize_t consumer_read(struct archive *a, void *ctx, const void **out)
{
    consumer *c = ctx;
    while (c->pos == c->len) {
        if (c->failed) {
            archive_set_error(a, EIO, "%s", c->err.msg);
            return -1;
        }
        qblock *b = queue_get(c);
        if (!b) {
            if (producer_rc(c)) {
                /* The producer's message is the one reported. */
                archive_set_error(a, EIO, "the compressed stream is damaged or incomplete");
                return -1;
            }
            return 0;
        }
        consumer_decode(c, b);
    }
    *out = c->buf + c->pos;
    size_t n = c->len - c->pos;
    c->pos = c->len;
    c->total += n;
    return (la_ssize_t)n;
}

/* Whole blocks inside the skipped range are dropped undecoded.  Never
 * negative: libarchive (3.6) loops on a negative skip.  A short skip makes
 * libarchive fall back to reads, which report the end or the failure. */
static la_int64_t consumer_skip(struct archive *a, void *ctx, la_int64_t request)
{
    (void)a;
    consumer *c = ctx;
    if (request <= 0 || c->failed)
        return 0;
    uint64_t left = (uint64_t)request;
    size_t in_cur = c->len - c->pos;
    if (in_cur > left)
        in_cur = (size_t)left;
    c->pos += in_cur;
    left -= in_cur;
    while (left > 0) {
        qblock *b = queue_get(c);
        if (!b)
            break;
        if (b->b.uncomp_len <= left) {
            left -= b->b.uncomp_len;
            free(b);
            atomic_fetch_add(&stat_skipped_blocks, 1);
            continue;
        }
        /* The skip ends inside this block: the next header starts here. */
        if (consumer_decode(c, b))
            break;
        c->pos = (size_t)left;
        left = 0;
    }
    uint64_t done = (uint64_t)request - left;
    c->total += done;
    return (la_int64_t)done;
}

/* Past the tar's end: the rest (zero padding) is counted, not decoded, and
 * taking it lets the producer reach the end of the object, where the
 * scanner checks the end marker and what follows it. */
static void consumer_drain(consumer *c)
{
    c->total += c->len - c->pos;
    c->pos = c->len;
    qblock *b;
    while ((b = queue_get(c)) != NULL) {
        c->total += b->b.uncomp_len;
        free(b);
        atomic_fetch_add(&stat_skipped_blocks, 1);
    }
}

/* State of the tar walk of one partition. */
typedef struct tar_walk {
    const char *backup;
    const char *key;
    uint32_t part;
    mvec *mv;
    /* The entry before the current one: its data ends where the current
     * header chain starts (minus padding). */
    int have_prev;
    size_t prev_member;     /* index in mv, or SIZE_MAX when it was not kept as a file */
    uint64_t prev_size;
    uint64_t prev_header_pos;
    uint64_t prev_data_pos;  /* consumed position right after its header chain */
    uint64_t *header_bytes;  /* tar header bytes read so far, all partitions */
} tar_walk;

static void skip_member(const tar_walk *w, const char *name, const char *why)
{
    log_warn("backup %s, partition %s: skipping member \"%s\": %s", w->backup, w->key, name, why);
}

/* Fills the previous file's data offset now that the next header position
 * (or the end-of-archive position) is known. */
static int settle_prev(tar_walk *w, uint64_t next_header_pos, walfs_err *err)
{
    if (!w->have_prev)
        return 0;
    w->have_prev = 0;
    uint64_t padded = round_up_512(w->prev_size);
    if (padded < w->prev_size || next_header_pos < padded ||
        next_header_pos - padded < w->prev_header_pos + 512)
        return walfs_err_set(err, -EIO, "%s: tar member at offset %" PRIu64 " claims %" PRIu64 " bytes of data "
                             "but the next header starts at %" PRIu64 "; %s", w->key, w->prev_header_pos,
                             w->prev_size, next_header_pos, CORRUPT_TODO);
    uint64_t off = next_header_pos - padded;
    /* Cross-check against where libarchive stood after the header chain:
     * two independent derivations must agree, or offsets would silently
     * serve the wrong bytes. */
    if (off != w->prev_data_pos)
        return walfs_err_set(err, -EIO, "%s: tar member at offset %" PRIu64 ": data offset %" PRIu64 " derived "
                             "from the next header disagrees with %" PRIu64 " after its header; the tar "
                             "is malformed or this libarchive reports positions differently; %s",
                             w->key, w->prev_header_pos, off, w->prev_data_pos, CORRUPT_TODO);
    if (w->prev_member != SIZE_MAX)
        w->mv->v[w->prev_member].m.data_offset = off;
    return 0;
}

static char *entry_text(const char *mbs, const char *utf8)
{
    /* libarchive converts pax UTF-8 names to the locale; when that fails
     * (C locale, non-ASCII) the UTF-8 form is still the stored name. */
    return strdup(mbs ? mbs : utf8 ? utf8 : "");
}

/* Turns one libarchive entry into a member (or a logged skip). */
static int take_entry(tar_walk *w, struct archive_entry *e, walfs_err *err)
{
    int rc = 0;
    char *raw = entry_text(archive_entry_pathname(e), archive_entry_pathname_utf8(e));
    if (!raw)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    pending p;
    memset(&p, 0, sizeof p);
    p.m.partition = w->part;

    if (archive_entry_sparse_count(e) > 0) {
        rc = walfs_err_set(err, -EIO, "%s: member \"%s\" is a sparse file, which WAL-E never writes and "
                           "walfs cannot serve; this is not a WAL-E backup", w->key, raw);
        goto out;
    }
    int escapes = 0;
    p.path = backup_normalize_path(raw, &escapes);
    if (!p.path) {
        skip_member(w, raw, escapes ? "its name leaves the backup root (absolute or \"..\")"
                                    : "its name contains \"..\"");
        goto out;
    }
    if (!path_fits(p.path)) {
        skip_member(w, raw, "its name is too long to be served");
        goto out;
    }
    la_int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
    if (uid < 0 || uid > UINT32_MAX || gid < 0 || gid > UINT32_MAX) {
        skip_member(w, raw, "uid or gid out of range");
        goto out;
    }
    p.m.uid = (uint32_t)uid;
    p.m.gid = (uint32_t)gid;
    p.m.mode = (uint32_t)archive_entry_perm(e) & 07777;
    p.m.mtime_sec = (int64_t)archive_entry_mtime(e);
    long ns = archive_entry_mtime_nsec(e);
    p.m.mtime_nsec = ns >= 0 && ns < 1000000000L ? (uint32_t)ns : 0;

    const char *hl = archive_entry_hardlink(e);
    if (!hl)
        hl = archive_entry_hardlink_utf8(e);
    if (hl) {
        /* Checked against the whole backup once every partition is read. */
        p.m.type = MEMBER_HARDLINK;
        p.link_path = backup_normalize_path(hl, &escapes);
        if (!p.link_path || !*p.link_path) {
            skip_member(w, raw, "hard link to a name outside the backup");
            goto out;
        }
    } else {
        switch (archive_entry_filetype(e)) {
        case AE_IFREG:
            p.m.type = MEMBER_FILE;
            p.m.size = archive_entry_size_is_set(e) && archive_entry_size(e) > 0
                         ? (uint64_t)archive_entry_size(e) : 0;
            break;
        case AE_IFDIR:
            p.m.type = MEMBER_DIR;
            break;
        case AE_IFLNK: {
            /* Kept verbatim, even absolute: it is what the symlink is, and
             * the kernel resolves it on the client, not in the backup. */
            const char *t = archive_entry_symlink(e);
            if (!t)
                t = archive_entry_symlink_utf8(e);
            if (!t || !*t) {
                skip_member(w, raw, "symlink without a target");
                goto out;
            }
            if (strlen(t) > MAX_PATH_LEN) {
                /* readlink(2) could never return it: listing it would
                 * only make every reader of the link fail with EIO. */
                skip_member(w, raw, "its symlink target is longer than 4095 bytes, more than readlink "
                                    "can return");
                goto out;
            }
            p.m.type = MEMBER_SYMLINK;
            p.m.link_target = strdup(t);
            if (!p.m.link_target) {
                rc = walfs_err_set(err, -ENOMEM, "out of memory");
                goto out;
            }
            break;
        }
        case AE_IFIFO:
            p.m.type = MEMBER_FIFO;
            break;
        case AE_IFCHR:
        case AE_IFBLK:
            p.m.type = archive_entry_filetype(e) == AE_IFCHR ? MEMBER_CHARDEV : MEMBER_BLOCKDEV;
            p.m.rdev_major = (uint32_t)archive_entry_rdevmajor(e);
            p.m.rdev_minor = (uint32_t)archive_entry_rdevminor(e);
            break;
        default:
            skip_member(w, raw, "unsupported member type");
            goto out;
        }
    }
    if (p.path[0] == '\0' && p.m.type != MEMBER_DIR) {
        skip_member(w, raw, "the backup root must be a directory");
        goto out;
    }
    if (p.m.type == MEMBER_FILE)
        w->prev_member = w->mv->n;
    p.seq = w->mv->n;
    rc = mvec_push(w->mv, &p);
    if (rc) {
        w->prev_member = SIZE_MAX;
        rc = walfs_err_set(err, -ENOMEM, "out of memory indexing %s", w->key);
        goto out;
    }
    memset(&p, 0, sizeof p);
out:
    pending_fini(&p);
    free(raw);
    return rc;
}

/* Reads the tar from the consumer side; returns the consumer's verdict. */
static int walk_tar(tar_walk *w, consumer *c, walfs_err *err)
{
    struct archive *a = archive_read_new();
    if (!a)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    /* tar only: gnutar, pax and ustar share that reader; "all" formats
     * would let a garbage partition be taken for some other archive. */
    archive_read_support_format_tar(a);
    int rc = 0;
    if (archive_read_open2(a, c, NULL, consumer_read, consumer_skip, NULL) != ARCHIVE_OK) {
        rc = walfs_err_set(err, -EIO, "%s: not a tar archive (%s); %s", w->key, archive_error_string(a),
                           CORRUPT_TODO);
        goto done;
    }
    /* Never archive_read_data: moving to the next header makes the tar
     * reader skip the member's data, which is what keeps it undecoded. */
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        /* Negative (an error code) once libarchive has failed. */
        la_int64_t hp = archive_read_header_position(a);
        uint64_t header_pos = hp > 0 ? (uint64_t)hp : 0;
        if (r == ARCHIVE_OK || r == ARCHIVE_WARN || r == ARCHIVE_EOF) {
            rc = settle_prev(w, header_pos, err);
            if (rc)
                break;
        }
        if (r == ARCHIVE_EOF) {
            if (header_pos + 512 > c->total) {
                /* libarchive accepts a stream that stops at a header
                 * boundary; WAL-E always writes the end-of-archive blocks,
                 * so their absence means the tar was cut before lzop. */
                /* c->total is only what was consumed so far: drain first. */
                consumer_drain(c);
                if (header_pos + 512 > c->total)
                    rc = walfs_err_set(err, -EIO, "%s: tar ends at offset %" PRIu64 " without the end-of-archive "
                                       "blocks: the partition was truncated; %s", w->key, header_pos,
                                       CORRUPT_TODO);
            }
            break;
        }
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
            rc = walfs_err_set(err, -EIO, "%s: malformed tar after the member header at decompressed offset %" PRIu64 ": %s; %s", w->key,
                               w->prev_header_pos, archive_error_string(a) ? archive_error_string(a)
                                                                           : "unreadable header",
                               CORRUPT_TODO);
            break;
        }
        if (r == ARCHIVE_WARN)
            log_debug("%s: libarchive: %s", w->key, archive_error_string(a));
        w->have_prev = 1;
        w->prev_member = SIZE_MAX;
        w->prev_header_pos = header_pos;
        w->prev_data_pos = (uint64_t)archive_filter_bytes(a, 0);
        if (w->prev_data_pos > header_pos)
            *w->header_bytes += w->prev_data_pos - header_pos;
        w->prev_size = archive_entry_size_is_set(e) && archive_entry_size(e) > 0
                           ? (uint64_t)archive_entry_size(e) : 0;
        rc = take_entry(w, e, err);
        if (rc)
            break;
    }
done:
    archive_read_free(a);
    return rc;
}

static void queue_free(bqueue *q)
{
    while (q->head) {
        qblock *b = q->head;
        q->head = b->next;
        free(b);
    }
    q->tail = NULL;
    q->bytes = 0;
}

static int index_partition(store *st, const char *backup, const backup_partition_listing *pl,
                           uint32_t part_no, mvec *mv, uint64_t *header_bytes, backup_partition *out,
                           walfs_err *err)
{
    bqueue q;
    memset(&q, 0, sizeof q);
    pthread_mutex_init(&q.mu, NULL);
    pthread_cond_init(&q.more, NULL);
    pthread_cond_init(&q.room, NULL);
    producer p;
    memset(&p, 0, sizeof p);
    p.st = st;
    p.key = pl->key;
    p.q = &q;
    p.sc = lzop_scanner_new(pl->key);
    consumer *c = calloc(1, sizeof *c);
    unsigned char *buf = malloc(LZOP_BLOCK_SIZE);
    int rc = 0;
    if (!p.sc || !c || !buf) {
        rc = walfs_err_set(err, -ENOMEM, "out of memory");
        goto out_nothread;
    }
    c->q = &q;
    c->p = &p;
    c->key = pl->key;
    c->buf = buf;
    pthread_t th;
    int e = pthread_create(&th, NULL, producer_main, &p);
    if (e) {
        rc = walfs_err_set(err, -e, "%s: cannot start a thread: %s", pl->key, strerror(e));
        goto out_nothread;
    }
    tar_walk w = {.backup = backup, .key = pl->key, .part = part_no, .mv = mv, .prev_member = SIZE_MAX,
                  .header_bytes = header_bytes};
    walfs_err cerr;
    walfs_err_clear(&cerr);
    size_t n_before = mv->n;
    int crc = walk_tar(&w, c, &cerr);
    if (crc)
        queue_stop(&q); /* wakes a producer waiting for room */
    else
        consumer_drain(c);
    pthread_join(th, NULL);
    if (p.rc && !(crc && p.peer_gone)) {
        /* A stream failure also makes the tar look truncated: the codec's
         * message says what really happened. */
        rc = p.rc;
        if (err) {
            *err = p.err;
            err->code = rc;
        }
    } else if (crc) {
        rc = crc;
        /* A block that fails its checksums surfaces in libarchive as a
         * read error; the codec's message is the precise one. */
        if (err)
            *err = c->failed ? c->err : cerr;
        if (c->failed)
            rc = c->err.code;
    } else if (p.blocks.uncomp_size == 0) {
        rc = walfs_err_set(err, -EIO, "%s: the partition decompresses to nothing, not even an empty tar; %s",
                           pl->key, CORRUPT_TODO);
    } else if (c->total != p.blocks.uncomp_size) {
        rc = walfs_err_set(err, -EIO, "%s: the tar walk accounted for %" PRIu64 " decompressed bytes of %" PRIu64
                           " (bug); %s", pl->key, c->total, p.blocks.uncomp_size, CORRUPT_TODO);
    }
    if (rc) {
        while (mv->n > n_before)
            pending_fini(&mv->v[--mv->n]);
        lzop_index_free(&p.blocks);
        goto out_nothread;
    }
    memset(out, 0, sizeof *out);
    out->key = strdup(pl->key);
    if (!out->key) {
        lzop_index_free(&p.blocks);
        rc = walfs_err_set(err, -ENOMEM, "out of memory");
        goto out_nothread;
    }
    out->object_size = pl->size;
    snprintf(out->etag, sizeof out->etag, "%s", pl->etag);
    out->blocks = p.blocks;
out_nothread:
    queue_free(&q);
    free(p.cur);
    lzop_scanner_free(p.sc);
    free(buf);
    free(c);
    pthread_cond_destroy(&q.room);
    pthread_cond_destroy(&q.more);
    pthread_mutex_destroy(&q.mu);
    return rc;
}

/* ------------------------------------------------------------- finishing */

/* Component by component: '/' sorts before every other byte, so each
 * directory's descendants follow it directly (depth first), and siblings
 * come in the strcmp order of their names. */
static int cmp_path(const char *a, const char *b)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    while (*x && *x == *y) {
        x++;
        y++;
    }
    if (*x == *y)
        return 0;
    if (!*x || !*y)
        return *x ? 1 : -1;
    if (*x == '/' || *y == '/')
        return *x == '/' ? -1 : 1;
    return *x < *y ? -1 : 1;
}

static int cmp_pending(const void *a, const void *b)
{
    const pending *x = a, *y = b;
    int c = cmp_path(x->path, y->path);
    if (c)
        return c;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

static const pending *find_pending(const mvec *mv, const char *path)
{
    size_t lo = 0, hi = mv->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_path(mv->v[mid].path, path);
        if (c == 0)
            return &mv->v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

#define NO_NODE UINT32_MAX

/* The tree while it is built, depth first, children linked in name order. */
typedef struct tnode {
    backup_member m;
    uint32_t first, last, next;
    int dead;
} tnode;

typedef struct tree {
    const char *backup;
    tnode *v;
    size_t n, cap;
    uint64_t cost, budget, header_bytes;
} tree;

static int over_budget(const tree *t, walfs_err *err)
{
    return walfs_err_set(err, -EIO, "backup %s: its index would need more than %" PRIu64 " MiB for %" PRIu64
                         " KiB of tar headers (members nested deep under directories the tar does not "
                         "contain); walfs refuses indexes beyond %dx the tar's header bytes + %d MiB: "
                         "this is not a data directory WAL-E wrote, use another backup",
                         t->backup, t->cost >> 20, t->header_bytes >> 10, INDEX_BUDGET_FACTOR,
                         INDEX_BUDGET_SLACK_MIB);
}

/* Adds a copy of m (taking its link_target) named by len bytes of name
 * under parent; its index in *node. */
static int tree_add(tree *t, backup_member *m, uint32_t parent, const char *name, size_t len, uint32_t *node,
                    walfs_err *err)
{
    t->cost += sizeof(tnode) + len + 1 + (m->link_target ? strlen(m->link_target) + 1 : 0);
    if (t->cost > t->budget)
        return over_budget(t, err);
    if (t->n >= UINT32_MAX - 1)
        return walfs_err_set(err, -EIO, "backup %s has too many members", t->backup);
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        tnode *nv = realloc(t->v, cap * sizeof *nv);
        if (!nv)
            return walfs_err_set(err, -ENOMEM, "out of memory");
        t->v = nv;
        t->cap = cap;
    }
    tnode *n = &t->v[t->n];
    memset(n, 0, sizeof *n);
    n->m = *m;
    n->m.name = strndup(name, len);
    if (!n->m.name)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    m->link_target = NULL;
    n->m.parent = parent;
    n->first = n->last = n->next = NO_NODE;
    *node = (uint32_t)t->n++;
    if (*node != parent) {
        tnode *p = &t->v[parent];
        if (p->last == NO_NODE)
            p->first = *node;
        else
            t->v[p->last].next = *node;
        p->last = *node;
    }
    return 0;
}

static void tree_free(tree *t)
{
    for (size_t i = 0; i < t->n; i++)
        member_fini(&t->v[i].m);
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

/* A directory on the way down to the current member. */
typedef struct tstep {
    uint32_t node;
    const char *path;       /* a member path it is a prefix of */
    size_t len;
} tstep;

/* Builds the tree of the sorted members: one entry per directory, parents
 * without an entry of their own synthesized once, members under a parent
 * that is not a directory (a file or symlink replaced a directory, or a
 * symlink was placed to redirect later members) dropped. */
static int grow_tree(tree *t, mvec *mv, walfs_err *err)
{
    /* Parents without an entry (tablespace trees, other writers). */
    int has_root = mv->n && mv->v[0].path[0] == '\0';
    backup_member tmpl = {.type = MEMBER_DIR, .mode = 0700};
    if (has_root) {
        tmpl.uid = mv->v[0].m.uid;
        tmpl.gid = mv->v[0].m.gid;
        tmpl.mtime_sec = mv->v[0].m.mtime_sec;
        tmpl.mtime_nsec = mv->v[0].m.mtime_nsec;
    }
    backup_member root = has_root ? mv->v[0].m : tmpl;
    uint32_t node;
    int rc = tree_add(t, &root, 0, "", 0, &node, err);
    if (rc)
        return rc;
    if (has_root)
        mv->v[0].node = 0;
    /* Normalized paths that fit have at most this many components. */
    tstep *stack = malloc((MAX_PATH_LEN / 2 + 4) * sizeof *stack);
    if (!stack)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    size_t depth = 1;
    stack[0] = (tstep){.node = 0, .path = "", .len = 0};
    for (size_t i = has_root ? 1 : 0; i < mv->n && !rc; i++) {
        pending *p = &mv->v[i];
        p->node = NO_NODE;
        size_t plen = strlen(p->path);
        while (depth > 1) {
            const tstep *s = &stack[depth - 1];
            if (s->len < plen && p->path[s->len] == '/' && memcmp(s->path, p->path, s->len) == 0)
                break;
            depth--;
        }
        const tstep *up = &stack[depth - 1];
        if (t->v[up->node].m.type != MEMBER_DIR) {
            log_warn("backup %s: skipping member \"%s\": its parent \"%.*s\" is not a directory", t->backup,
                     p->path, (int)up->len, up->path);
            continue;
        }
        size_t pos = depth > 1 ? up->len + 1 : 0;
        uint32_t parent = up->node;
        for (const char *s = strchr(p->path + pos, '/'); s && !rc; s = strchr(p->path + pos, '/')) {
            backup_member dir = tmpl;
            rc = tree_add(t, &dir, parent, p->path + pos, (size_t)(s - p->path) - pos, &parent, err);
            stack[depth++] = (tstep){.node = parent, .path = p->path, .len = (size_t)(s - p->path)};
            pos = (size_t)(s - p->path) + 1;
        }
        if (!rc)
            rc = tree_add(t, &p->m, parent, p->path + pos, plen - pos, &p->node, err);
        if (!rc)
            stack[depth++] = (tstep){.node = p->node, .path = p->path, .len = plen};
    }
    free(stack);
    return rc;
}

/* Hard links name the first archived copy, possibly in an earlier
 * partition; point them straight at the file holding the data. */
static void link_hardlinks(tree *t, const mvec *mv)
{
    for (size_t i = 0; i < mv->n; i++) {
        const pending *p = &mv->v[i];
        if (p->node == NO_NODE || p->m.type != MEMBER_HARDLINK)
            continue;
        const pending *to = NULL;
        const char *name = p->link_path;
        for (int hops = 0; hops < 16; hops++) {
            to = find_pending(mv, name);
            if (!to || to->node == NO_NODE || to->m.type != MEMBER_HARDLINK)
                break;
            name = to->link_path;
        }
        if (!to || to->node == NO_NODE || to->m.type != MEMBER_FILE) {
            log_warn("backup %s: skipping hard link \"%s\": its target \"%s\" is %s", t->backup, p->path,
                     p->link_path, !to || to->node == NO_NODE ? "not in the backup" : "not a regular file");
            t->v[p->node].dead = 1;
            continue;
        }
        t->v[p->node].m.link_member = to->node;
    }
}

/* Breadth first, so that each directory's children are contiguous. */
static int flatten(tree *t, backup_member **out, size_t *n_out, walfs_err *err)
{
    uint32_t *order = malloc(t->n * sizeof *order), *renum = malloc(t->n * sizeof *renum);
    backup_member *v = calloc(t->n, sizeof *v);
    if (!order || !renum || !v) {
        free(order);
        free(renum);
        free(v);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    size_t k = 1;
    order[0] = 0;
    renum[0] = 0;
    for (size_t q = 0; q < k; q++) {
        tnode *d = &t->v[order[q]];
        size_t first = k;
        for (uint32_t c = d->first; c != NO_NODE; c = t->v[c].next)
            if (!t->v[c].dead) {
                renum[c] = (uint32_t)k;
                order[k++] = c;
            }
        d->m.n_children = (uint32_t)(k - first);
        d->m.first_child = k > first ? (uint32_t)first : 0;
    }
    for (size_t j = 0; j < k; j++) {
        tnode *d = &t->v[order[j]];
        v[j] = d->m;
        v[j].parent = renum[d->m.parent];
        if (v[j].type == MEMBER_HARDLINK)
            v[j].link_member = renum[v[j].link_member];
        memset(&d->m, 0, sizeof d->m);
    }
    free(order);
    free(renum);
    *out = v;
    *n_out = k;
    return 0;
}

/* Sorts, applies "later entry wins", then builds the tree. */
static int finish_members(const char *backup, mvec *mv, uint64_t header_bytes, backup_member **out,
                          size_t *n_out, walfs_err *err)
{
    if (mv->n)
        qsort(mv->v, mv->n, sizeof *mv->v, cmp_pending);
    size_t o = 0;
    for (size_t i = 0; i < mv->n; i++) {
        if (i + 1 < mv->n && strcmp(mv->v[i].path, mv->v[i + 1].path) == 0) {
            pending_fini(&mv->v[i]); /* replaced by a later entry */
            continue;
        }
        mv->v[o++] = mv->v[i];
    }
    mv->n = o;
    tree t = {.backup = backup, .header_bytes = header_bytes,
              .budget = header_bytes * INDEX_BUDGET_FACTOR + ((uint64_t)INDEX_BUDGET_SLACK_MIB << 20)};
    int rc = grow_tree(&t, mv, err);
    if (!rc) {
        link_hardlinks(&t, mv);
        rc = flatten(&t, out, n_out, err);
    }
    tree_free(&t);
    return rc;
}

int backup_index_build(store *st, const char *backup_name, const backup_partition_listing *parts,
                       size_t n_parts, backup_index **out, walfs_err *err)
{
    *out = NULL;
    int rc = check_backup_name(backup_name, err);
    if (rc)
        return rc;
    if (n_parts == 0 || n_parts > UINT32_MAX)
        return walfs_err_set(err, -EIO, "backup %s: no tar partitions: the backup is incomplete", backup_name);
    backup_index *idx = calloc(1, sizeof *idx);
    if (!idx)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    idx->backup_name = strdup(backup_name);
    idx->partitions = calloc(n_parts, sizeof *idx->partitions);
    if (!idx->backup_name || !idx->partitions) {
        backup_index_free(idx);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    mvec mv = {0};
    uint64_t header_bytes = 0;
    for (size_t i = 0; i < n_parts; i++) {
        rc = index_partition(st, backup_name, &parts[i], (uint32_t)i, &mv, &header_bytes,
                             &idx->partitions[i], err);
        if (rc)
            goto fail;
        idx->n_partitions++;
    }
    rc = finish_members(backup_name, &mv, header_bytes, &idx->members, &idx->n_members, err);
    if (rc)
        goto fail;
    mvec_free(&mv);
    *out = idx;
    return 0;
fail:
    mvec_free(&mv);
    backup_index_free(idx);
    return rc;
}

/* ------------------------------------------------------------------ JSON */

/* Bytes >= 0x80 go through raw: tar names are bytes, and json-c hands
 * them back unchanged, whereas \u escapes would re-encode them. */
static void json_str(walfs_buf *b, const char *s)
{
    buf_append(b, "\"", 1);
    const char *run = s;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c >= 0x20 && *c != '"' && *c != '\\')
            continue;
        buf_append(b, run, (size_t)((const char *)c - run));
        char esc[8];
        if (*c == '"' || *c == '\\')
            snprintf(esc, sizeof esc, "\\%c", *c);
        else
            snprintf(esc, sizeof esc, "\\u%04x", *c);
        buf_puts(b, esc);
        run = (const char *)c + 1;
    }
    buf_puts(b, run);
    buf_append(b, "\"", 1);
}

static const char type_codes[] = "fdlhpcb"; /* indexed by backup_member_type */

static void sha256_hex(const void *a, size_t alen, const void *b, size_t blen, char hex[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(ctx, a, alen) != 1 ||
        EVP_DigestUpdate(ctx, b, blen) != 1 || EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
        /* A digest that cannot be computed must never match anything. */
        memset(hex, 'x', 64);
        hex[64] = '\0';
    } else {
        hex_encode(md, 32, hex);
    }
    EVP_MD_CTX_free(ctx);
}

/* The checksum covers the serialization up to the sha256 member, closed
 * with "}": written last, it can be checked on the raw bytes before any
 * parsing, without depending on how a JSON library re-serializes. */
#define SHA_TAIL_PREFIX ",\"sha256\":\""
#define SHA_TAIL_LEN (sizeof SHA_TAIL_PREFIX - 1 + 64 + 2)

/* A directory with the attributes the builder gives the parents it
 * synthesizes (the root's owner and mtime, mode 0700) is stored as just
 * [parent, name]: deep trees without directory entries are made of them. */
static void synthesized_attrs(const backup_index *idx, backup_member *d)
{
    const backup_member *root = &idx->members[0];
    d->type = MEMBER_DIR;
    d->mode = 0700;
    d->uid = root->uid;
    d->gid = root->gid;
    d->mtime_sec = root->mtime_sec;
    d->mtime_nsec = root->mtime_nsec;
}

static int like_synthesized(const backup_index *idx, const backup_member *m)
{
    backup_member d = {0};
    synthesized_attrs(idx, &d);
    return m->type == d.type && m->mode == d.mode && m->uid == d.uid && m->gid == d.gid &&
           m->mtime_sec == d.mtime_sec && m->mtime_nsec == d.mtime_nsec;
}

int backup_index_to_json(const backup_index *idx, char **json, size_t *len, walfs_err *err)
{
    *json = NULL;
    *len = 0;
    walfs_buf b = {0};
    /* One allocation holds a small backup's index. */
    buf_reserve(&b, 65536);
    buf_printf(&b, "{\"format\":\"" INDEX_FORMAT "\",\"version\":%d,\"backup\":", INDEX_VERSION);
    json_str(&b, idx->backup_name);
    buf_puts(&b, ",\"partitions\":[");
    for (size_t i = 0; i < idx->n_partitions; i++) {
        const backup_partition *p = &idx->partitions[i];
        const lzop_index *bi = &p->blocks;
        buf_puts(&b, i ? ",{\"key\":" : "{\"key\":");
        json_str(&b, p->key);
        buf_printf(&b, ",\"size\":%" PRIu64 ",\"etag\":", p->object_size);
        json_str(&b, p->etag);
        buf_printf(&b, ",\"header_len\":%" PRIu32 ",\"flags\":%" PRIu32 ",\"method\":%u,\"uncomp_size\":%" PRIu64
                  ",\"comp_size\":%" PRIu64 ",\"blocks\":[", bi->info.header_len, bi->info.flags,
                  (unsigned)bi->info.method, bi->uncomp_size, bi->comp_size);
        for (size_t k = 0; k < bi->n_blocks; k++) {
            const lzop_block *bl = &bi->blocks[k];
            buf_printf(&b, "%s[%" PRIu64 ",%" PRIu64 ",%" PRIu32 ",%" PRIu32 ",%" PRIu64 "]", k ? "," : "",
                      bl->comp_offset, bl->data_offset, bl->comp_len, bl->uncomp_len, bl->uncomp_offset);
        }
        buf_puts(&b, "]}");
    }
    buf_puts(&b, "],\"members\":[");
    for (size_t i = 0; i < idx->n_members; i++) {
        const backup_member *m = &idx->members[i];
        buf_printf(&b, "%s[%" PRIu32 ",", i ? ",\n" : "\n", m->parent);
        json_str(&b, m->name);
        if (i > 0 && like_synthesized(idx, m)) {
            buf_append(&b, "]", 1);
            continue;
        }
        buf_printf(&b, ",\"%c\",%" PRIu32 ",%" PRIu32 ",%" PRIu32 ",%" PRId64 ",%" PRIu32, type_codes[m->type],
                  m->mode, m->uid, m->gid, m->mtime_sec, m->mtime_nsec);
        switch (m->type) {
        case MEMBER_FILE:
            buf_printf(&b, ",%" PRIu64 ",%" PRIu32 ",%" PRIu64, m->size, m->partition, m->data_offset);
            break;
        case MEMBER_SYMLINK:
            buf_append(&b, ",", 1);
            json_str(&b, m->link_target ? m->link_target : "");
            break;
        case MEMBER_HARDLINK:
            buf_printf(&b, ",%" PRIu32, m->link_member);
            break;
        case MEMBER_CHARDEV:
        case MEMBER_BLOCKDEV:
            buf_printf(&b, ",%" PRIu32 ",%" PRIu32, m->rdev_major, m->rdev_minor);
            break;
        default:
            break;
        }
        buf_append(&b, "]", 1);
    }
    buf_puts(&b, "]");
    if (b.err) {
        buf_free(&b);
        return walfs_err_set(err, -ENOMEM, "out of memory serializing the index of %s", idx->backup_name);
    }
    char hex[65];
    sha256_hex(b.data, b.len, "}", 1, hex);
    buf_puts(&b, SHA_TAIL_PREFIX);
    buf_puts(&b, hex);
    buf_puts(&b, "\"}\n");
    if (b.err) {
        buf_free(&b);
        return walfs_err_set(err, -ENOMEM, "out of memory serializing the index of %s", idx->backup_name);
    }
    *json = buf_take(&b, len);
    return 0;
}

/* ---- loading: every field is checked, nothing is trusted ---- */

typedef struct loader {
    walfs_err *err;
    const char *what;       /* current location, for messages */
    char where[96];
} loader;

static int bad(loader *L, const char *why)
{
    return walfs_err_set(L->err, -EIO, "backup index JSON: %s%s%s; the cached index is corrupt or from an "
                         "incompatible walfs: delete it so it is rebuilt from the partitions",
                         L->where, *L->where ? ": " : "", why);
}

static int get_u64(loader *L, json_object *o, uint64_t max, uint64_t *out)
{
    if (!o || !json_object_is_type(o, json_type_int))
        return bad(L, "expected an integer");
    errno = 0;
    int64_t v = json_object_get_int64(o);
    /* json-c saturates out-of-range values and flags it in errno only on
     * some paths: treat the saturated extremes as out of range too. */
    if (v < 0 || v == INT64_MAX || (uint64_t)v > max)
        return bad(L, "integer out of range");
    *out = (uint64_t)v;
    return 0;
}

static int get_i64(loader *L, json_object *o, int64_t *out)
{
    if (!o || !json_object_is_type(o, json_type_int))
        return bad(L, "expected an integer");
    int64_t v = json_object_get_int64(o);
    if (v == INT64_MAX || v == INT64_MIN)
        return bad(L, "integer out of range");
    *out = v;
    return 0;
}

static int get_str(loader *L, json_object *o, const char **out)
{
    if (!o || !json_object_is_type(o, json_type_string))
        return bad(L, "expected a string");
    const char *s = json_object_get_string(o);
    if ((size_t)json_object_get_string_len(o) != strlen(s))
        return bad(L, "string contains a NUL character");
    *out = s;
    return 0;
}

static json_object *field(json_object *obj, const char *name)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(obj, name, &v))
        return NULL;
    return v;
}

static int load_blocks(loader *L, json_object *arr, backup_partition *p)
{
    if (!arr || !json_object_is_type(arr, json_type_array))
        return bad(L, "\"blocks\" must be an array");
    lzop_index *bi = &p->blocks;
    size_t n = json_object_array_length(arr);
    if (n > 0) {
        bi->blocks = calloc(n, sizeof *bi->blocks);
        if (!bi->blocks)
            return walfs_err_set(L->err, -ENOMEM, "out of memory");
    }
    bi->n_blocks = n;
    uint64_t comp = bi->info.header_len, uncomp = 0;
    uint32_t fl = bi->info.flags;
    for (size_t k = 0; k < n; k++) {
        json_object *e = json_object_array_get_idx(arr, k);
        if (!e || !json_object_is_type(e, json_type_array) || json_object_array_length(e) != 5)
            return bad(L, "a block must be an array of 5 integers");
        uint64_t v[5];
        for (size_t j = 0; j < 5; j++) {
            int rc = get_u64(L, json_object_array_get_idx(e, j), (uint64_t)INT64_MAX, &v[j]);
            if (rc)
                return rc;
        }
        lzop_block *bl = &bi->blocks[k];
        if (v[2] == 0 || v[3] == 0 || v[3] > LZOP_BLOCK_SIZE || v[2] > v[3])
            return bad(L, "block lengths out of range");
        bl->comp_offset = v[0];
        bl->data_offset = v[1];
        bl->comp_len = (uint32_t)v[2];
        bl->uncomp_len = (uint32_t)v[3];
        bl->uncomp_offset = v[4];
        /* Same rule as the codec: the payload follows the 8-byte header
         * and the checksums the flags announce. */
        uint64_t sums = !!(fl & 0x1u) + !!(fl & 0x100u);
        if (bl->comp_len < bl->uncomp_len)
            sums += !!(fl & 0x2u) + !!(fl & 0x200u);
        if (bl->comp_offset != comp || bl->data_offset != comp + 8 + 4 * sums || bl->uncomp_offset != uncomp)
            return bad(L, "blocks are not contiguous");
        comp = bl->data_offset + bl->comp_len;
        uncomp += bl->uncomp_len;
    }
    if (bi->uncomp_size != uncomp)
        return bad(L, "uncomp_size is not the sum of the blocks");
    if (bi->comp_size != comp + 4 || bi->comp_size > p->object_size)
        return bad(L, "comp_size does not end with the blocks' end marker inside the object");
    return 0;
}

static int load_partition(loader *L, json_object *o, size_t i, const char *backup, backup_partition *p)
{
    if (!json_object_is_type(o, json_type_object))
        return bad(L, "a partition must be an object");
    const char *key, *etag;
    int rc = get_str(L, field(o, "key"), &key);
    if (rc)
        return rc;
    char want[WALE_KEY_MAX];
    wale_partition_key(want, sizeof want, backup, (uint32_t)i);
    if (strcmp(key, want) != 0)
        return bad(L, "partition key does not match the backup and its position");
    p->key = strdup(key);
    if (!p->key)
        return walfs_err_set(L->err, -ENOMEM, "out of memory");
    if ((rc = get_str(L, field(o, "etag"), &etag)))
        return rc;
    if (strlen(etag) >= sizeof p->etag)
        return bad(L, "etag too long");
    snprintf(p->etag, sizeof p->etag, "%s", etag);
    uint64_t v;
    if ((rc = get_u64(L, field(o, "size"), (uint64_t)INT64_MAX - 1, &p->object_size)))
        return rc;
    if ((rc = get_u64(L, field(o, "flags"), UINT32_MAX, &v)))
        return rc;
    p->blocks.info.flags = (uint32_t)v;
    if ((rc = get_u64(L, field(o, "method"), 3, &v)))
        return rc;
    if (v < 1)
        return bad(L, "unknown lzop method");
    p->blocks.info.method = (uint8_t)v;
    if ((rc = get_u64(L, field(o, "header_len"), 4096, &v)))
        return rc;
    if (v < 29)
        return bad(L, "lzop header length too small");
    p->blocks.info.header_len = (uint32_t)v;
    if ((rc = get_u64(L, field(o, "uncomp_size"), (uint64_t)INT64_MAX - 1, &p->blocks.uncomp_size)))
        return rc;
    if ((rc = get_u64(L, field(o, "comp_size"), (uint64_t)INT64_MAX - 1, &p->blocks.comp_size)))
        return rc;
    return load_blocks(L, field(o, "blocks"), p);
}

/* One path component as the builder makes them. */
static int valid_name(const char *s)
{
    size_t len = strlen(s);
    return len > 0 && len <= MAX_NAME_LEN && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int load_member(loader *L, json_object *e, const backup_index *idx, size_t i, backup_member *m)
{
    if (!json_object_is_type(e, json_type_array))
        return bad(L, "a member must be an array");
    size_t n = json_object_array_length(e);
    if (n < 8 && (n != 2 || i == 0))
        return bad(L, "member array too short");
    const char *name, *tc;
    uint64_t v;
    int rc = get_u64(L, json_object_array_get_idx(e, 0), UINT32_MAX, &v);
    if (rc)
        return rc;
    if (i == 0 ? v != 0 : v >= i)
        return bad(L, "member's parent does not come before it");
    m->parent = (uint32_t)v;
    if ((rc = get_str(L, json_object_array_get_idx(e, 1), &name)))
        return rc;
    if (i == 0 ? *name != '\0' : !valid_name(name))
        return bad(L, "member name is not a single path component");
    m->name = strdup(name);
    if (!m->name)
        return walfs_err_set(L->err, -ENOMEM, "out of memory");
    if (n == 2) {
        synthesized_attrs(idx, m);
        return 0;
    }
    if ((rc = get_str(L, json_object_array_get_idx(e, 2), &tc)))
        return rc;
    const char *tp = strlen(tc) == 1 ? strchr(type_codes, tc[0]) : NULL;
    if (!tp)
        return bad(L, "unknown member type");
    m->type = (backup_member_type)(tp - type_codes);
    if ((rc = get_u64(L, json_object_array_get_idx(e, 3), 07777, &v)))
        return rc;
    m->mode = (uint32_t)v;
    if ((rc = get_u64(L, json_object_array_get_idx(e, 4), UINT32_MAX, &v)))
        return rc;
    m->uid = (uint32_t)v;
    if ((rc = get_u64(L, json_object_array_get_idx(e, 5), UINT32_MAX, &v)))
        return rc;
    m->gid = (uint32_t)v;
    if ((rc = get_i64(L, json_object_array_get_idx(e, 6), &m->mtime_sec)))
        return rc;
    if ((rc = get_u64(L, json_object_array_get_idx(e, 7), 999999999, &v)))
        return rc;
    m->mtime_nsec = (uint32_t)v;
    size_t want = m->type == MEMBER_FILE                                        ? 11
                  : m->type == MEMBER_SYMLINK || m->type == MEMBER_HARDLINK     ? 9
                  : m->type == MEMBER_CHARDEV || m->type == MEMBER_BLOCKDEV     ? 10
                                                                                : 8;
    if (n != want)
        return bad(L, "member array has the wrong length for its type");
    switch (m->type) {
    case MEMBER_FILE: {
        if ((rc = get_u64(L, json_object_array_get_idx(e, 8), (uint64_t)INT64_MAX - 1, &m->size)))
            return rc;
        if ((rc = get_u64(L, json_object_array_get_idx(e, 9), UINT32_MAX, &v)))
            return rc;
        if (v >= idx->n_partitions)
            return bad(L, "member names a partition that does not exist");
        m->partition = (uint32_t)v;
        if ((rc = get_u64(L, json_object_array_get_idx(e, 10), (uint64_t)INT64_MAX - 1, &m->data_offset)))
            return rc;
        uint64_t usz = idx->partitions[m->partition].blocks.uncomp_size;
        if (m->data_offset > usz || m->size > usz - m->data_offset)
            return bad(L, "member data lies outside its partition");
        break;
    }
    case MEMBER_HARDLINK:
        /* Checked against its target once every member is read. */
        if ((rc = get_u64(L, json_object_array_get_idx(e, 8), UINT32_MAX, &v)))
            return rc;
        m->link_member = (uint32_t)v;
        break;
    case MEMBER_SYMLINK: {
        const char *t;
        if ((rc = get_str(L, json_object_array_get_idx(e, 8), &t)))
            return rc;
        if (!*t || strlen(t) > MAX_PATH_LEN)
            return bad(L, "empty or overlong link target");
        m->link_target = strdup(t);
        if (!m->link_target)
            return walfs_err_set(L->err, -ENOMEM, "out of memory");
        break;
    }
    case MEMBER_CHARDEV:
    case MEMBER_BLOCKDEV:
        if ((rc = get_u64(L, json_object_array_get_idx(e, 8), UINT32_MAX, &v)))
            return rc;
        m->rdev_major = (uint32_t)v;
        if ((rc = get_u64(L, json_object_array_get_idx(e, 9), UINT32_MAX, &v)))
            return rc;
        m->rdev_minor = (uint32_t)v;
        break;
    default:
        break;
    }
    return 0;
}

/* The invariants the builder guarantees, checked again on what was read:
 * a tree (parents come first and are directories), children contiguous
 * and sorted by name, paths that fit, hard links to regular files.  Fills
 * in each directory's children. */
static int check_tree(loader *L, backup_index *idx)
{
    if (idx->n_members == 0 || idx->members[0].type != MEMBER_DIR)
        return bad(L, "no root directory entry");
    size_t *plen = malloc(idx->n_members * sizeof *plen);
    if (!plen)
        return walfs_err_set(L->err, -ENOMEM, "out of memory");
    plen[0] = 0;
    int rc = 0;
    for (size_t i = 1; i < idx->n_members && !rc; i++) {
        backup_member *m = &idx->members[i], *pm = &idx->members[m->parent];
        const backup_member *prev = &idx->members[i - 1];
        snprintf(L->where, sizeof L->where, "member %zu", i);
        plen[i] = (m->parent ? plen[m->parent] + 1 : 0) + strlen(m->name);
        if (pm->type != MEMBER_DIR)
            rc = bad(L, "member's parent is not a directory in the index");
        else if (m->parent < prev->parent || (m->parent == prev->parent && strcmp(prev->name, m->name) >= 0))
            rc = bad(L, "members are not grouped by parent and sorted by name, or are duplicated");
        else if (plen[i] > MAX_PATH_LEN)
            rc = bad(L, "member path is too long");
        else if (m->type == MEMBER_HARDLINK &&
                 (m->link_member >= idx->n_members || idx->members[m->link_member].type != MEMBER_FILE))
            rc = bad(L, "hard link does not name a regular file of the index");
        if (pm->n_children++ == 0)
            pm->first_child = (uint32_t)i;
    }
    free(plen);
    if (!rc)
        L->where[0] = '\0';
    return rc;
}

static int cmp_extent(const void *a, const void *b)
{
    const backup_member *x = *(const backup_member *const *)a, *y = *(const backup_member *const *)b;
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    return (x->data_offset > y->data_offset) - (x->data_offset < y->data_offset);
}

/* Where a tar puts data: each file's behind its own 512-byte header, on a
 * 512-byte boundary, inside its partition, never overlapping another's.
 * Cheap to check, and refuses the crude forgeries before any read. */
static int check_extents(loader *L, const backup_index *idx)
{
    size_t n = 0;
    for (size_t i = 0; i < idx->n_members; i++)
        n += idx->members[i].type == MEMBER_FILE;
    const backup_member **v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return walfs_err_set(L->err, -ENOMEM, "out of memory");
    n = 0;
    for (size_t i = 0; i < idx->n_members; i++)
        if (idx->members[i].type == MEMBER_FILE)
            v[n++] = &idx->members[i];
    qsort(v, n, sizeof *v, cmp_extent);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const backup_member *m = v[i];
        uint64_t end = m->data_offset + round_up_512(m->size);
        char path[MAX_PATH_LEN + 1];
        snprintf(L->where, sizeof L->where, "member \"%.60s\"", backup_index_path(idx, m, path, sizeof path));
        if (m->data_offset < 512 || m->data_offset % 512 != 0)
            rc = bad(L, "data does not start on a tar block after a header");
        else if (end > idx->partitions[m->partition].blocks.uncomp_size)
            rc = bad(L, "data runs past the end of its partition");
        else if (i + 1 < n && v[i + 1]->partition == m->partition && end + 512 > v[i + 1]->data_offset)
            rc = bad(L, "data overlaps the next member or its header");
    }
    if (!rc)
        L->where[0] = '\0';
    free(v);
    return rc;
}

int backup_index_from_json(const char *json, size_t len, backup_index **out, walfs_err *err)
{
    *out = NULL;
    loader L = {.err = err};
    L.where[0] = '\0';
    size_t end = len;
    while (end > 0 && (json[end - 1] == '\n' || json[end - 1] == ' ' || json[end - 1] == '\r' ||
                       json[end - 1] == '\t'))
        end--;
    if (end < SHA_TAIL_LEN + 2 || len > (size_t)INT_MAX)
        return bad(&L, "too short or too long to be an index");
    const char *tail = json + end - SHA_TAIL_LEN;
    if (memcmp(tail, SHA_TAIL_PREFIX, sizeof SHA_TAIL_PREFIX - 1) != 0 || memcmp(json + end - 2, "\"}", 2) != 0)
        return bad(&L, "no sha256 at the end: the file is truncated");
    char hex[65];
    sha256_hex(json, (size_t)(tail - json), "}", 1, hex);
    if (memcmp(hex, tail + sizeof SHA_TAIL_PREFIX - 1, 64) != 0)
        return bad(&L, "sha256 mismatch: the file was altered or damaged");

    json_tokener *tok = json_tokener_new_ex(16);
    if (!tok)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    json_object *root = json_tokener_parse_ex(tok, json, (int)end);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t used = root ? json_tokener_get_parse_end(tok) : 0;
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success || used != end) {
        json_object_put(root);
        return bad(&L, root ? "trailing data after the JSON object" : "not valid JSON");
    }
    backup_index *idx = calloc(1, sizeof *idx);
    int rc;
    if (!idx) {
        rc = walfs_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    if (!json_object_is_type(root, json_type_object)) {
        rc = bad(&L, "not a JSON object");
        goto fail;
    }
    const char *s;
    uint64_t ver;
    if ((rc = get_str(&L, field(root, "format"), &s)))
        goto fail;
    if (strcmp(s, INDEX_FORMAT) != 0) {
        rc = bad(&L, "not a walfs backup index");
        goto fail;
    }
    if ((rc = get_u64(&L, field(root, "version"), UINT32_MAX, &ver)))
        goto fail;
    if (ver < INDEX_VERSION) {
        rc = walfs_err_set(err, -ESTALE, "the index is in format version %" PRIu64 " (full paths); this walfs "
                           "uses version %d", ver, INDEX_VERSION);
        goto fail;
    }
    if (ver != INDEX_VERSION) {
        rc = bad(&L, "unsupported index version");
        goto fail;
    }
    if ((rc = get_str(&L, field(root, "backup"), &s)))
        goto fail;
    if (check_backup_name(s, NULL) != 0) {
        rc = bad(&L, "invalid backup name");
        goto fail;
    }
    idx->backup_name = strdup(s);
    if (!idx->backup_name) {
        rc = walfs_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    json_object *parts = field(root, "partitions"), *mems = field(root, "members");
    if (!parts || !json_object_is_type(parts, json_type_array) || json_object_array_length(parts) == 0 ||
        json_object_array_length(parts) > UINT32_MAX) {
        rc = bad(&L, "\"partitions\" must be a non-empty array");
        goto fail;
    }
    size_t np = json_object_array_length(parts);
    idx->partitions = calloc(np, sizeof *idx->partitions);
    if (!idx->partitions) {
        rc = walfs_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < np; i++) {
        snprintf(L.where, sizeof L.where, "partition %zu", i);
        idx->n_partitions = i + 1;
        if ((rc = load_partition(&L, json_object_array_get_idx(parts, i), i, idx->backup_name,
                                 &idx->partitions[i])))
            goto fail;
    }
    L.where[0] = '\0';
    if (!mems || !json_object_is_type(mems, json_type_array)) {
        rc = bad(&L, "\"members\" must be an array");
        goto fail;
    }
    size_t nm = json_object_array_length(mems);
    idx->members = calloc(nm ? nm : 1, sizeof *idx->members);
    if (!idx->members) {
        rc = walfs_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nm; i++) {
        snprintf(L.where, sizeof L.where, "member %zu", i);
        idx->n_members = i + 1;
        if ((rc = load_member(&L, json_object_array_get_idx(mems, i), idx, i, &idx->members[i])))
            goto fail;
    }
    L.where[0] = '\0';
    if ((rc = check_tree(&L, idx)))
        goto fail;
    if ((rc = check_extents(&L, idx)))
        goto fail;
    json_object_put(root);
    *out = idx;
    return 0;
fail:
    json_object_put(root);
    backup_index_free(idx);
    return rc;
}
