/* Spool files of a push: lzop records while the file arrives in order,
 * plain bytes otherwise.  See spool_file.h for the rules. */
#include "push/spool_file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/lzop.h"
#include "common/log.h"

#define POOLED_FDS 8
#define POOLED_BLOCKS 8

struct spool_pool {
    char *dir;
    int free_fds[POOLED_FDS];       /* emptied spool files: creating an inode per file is slow */
    int n_free_fds;
    size_t max_compressing, compressing;
    /* Block buffers are reused: memory touched for the first time costs
     * more than compressing it. */
    unsigned char *free_blocks[POOLED_BLOCKS];
    int n_free_blocks;
    size_t stash_limit, stash_used;
    lzop_block_encoder *encoder;    /* NULL: compression off */
    unsigned char *record_buf;      /* unpacking: one record read back */
};

typedef struct stash_chunk {
    uint64_t off;
    size_t len;
    struct stash_chunk *next;
    unsigned char data[];
} stash_chunk;

struct spool_file {
    spool_pool *pool;
    int fd;
    uint64_t size;              /* the file's length, stashed writes included */
    int plain;                  /* fd holds the bytes as they are */
    /* While compressing (!plain): fd holds records_len bytes of records
     * decoding to the file's first records_size bytes; block holds the
     * next contig - records_size; stash holds writes beyond contig. */
    uint64_t records_len, records_size, contig;
    unsigned char *block;
    stash_chunk *stash;
    spool_file_stats stats;
};

/* ---- the pool ---- */

spool_pool *spool_pool_new(const char *dir, size_t max_compressing, size_t stash_limit)
{
    spool_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->dir = strdup(dir);
    pool->max_compressing = max_compressing;
    pool->stash_limit = stash_limit;
    if (max_compressing > 0) {
        pool->encoder = lzop_block_encoder_new();
        pool->record_buf = malloc(LZOP_RECORD_MAX);
    }
    if (!pool->dir || (max_compressing > 0 && (!pool->encoder || !pool->record_buf))) {
        spool_pool_free(pool);
        return NULL;
    }
    return pool;
}

void spool_pool_free(spool_pool *pool)
{
    if (!pool)
        return;
    for (int i = 0; i < pool->n_free_fds; i++)
        close(pool->free_fds[i]);
    for (int i = 0; i < pool->n_free_blocks; i++)
        free(pool->free_blocks[i]);
    lzop_block_encoder_free(pool->encoder);
    free(pool->record_buf);
    free(pool->dir);
    free(pool);
}

int spool_open_unnamed(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd >= 0 ? fd : -errno;
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof tmpl, "%s/spool-XXXXXX", dir);
    fd = mkstemp(tmpl);
    if (fd < 0)
        return -errno;
    unlink(tmpl);
    return fd;
}

/* A spool file, or -1 with errno. */
static int pool_open_fd(spool_pool *pool)
{
    if (pool->n_free_fds > 0)
        return pool->free_fds[--pool->n_free_fds];
    int fd = spool_open_unnamed(pool->dir);
    if (fd >= 0)
        return fd;
    log_error("cannot create a spool file in %s: %s (check --cache-dir)", pool->dir,
              strerror(-fd));
    errno = -fd;
    return -1;
}

static void pool_release_fd(spool_pool *pool, int fd)
{
    if (fd < 0)
        return;
    if (pool->n_free_fds < POOLED_FDS && ftruncate(fd, 0) == 0)
        pool->free_fds[pool->n_free_fds++] = fd;
    else
        close(fd);
}

/* A block buffer for a file that starts compressing, or NULL when as many
 * files as allowed are compressing already. */
static unsigned char *pool_take_block(spool_pool *pool)
{
    if (!pool->encoder || pool->compressing >= pool->max_compressing)
        return NULL;
    unsigned char *b = pool->n_free_blocks > 0 ? pool->free_blocks[--pool->n_free_blocks]
                                               : malloc(LZOP_BLOCK_SIZE);
    if (b)
        pool->compressing++;
    return b;
}

static void pool_give_block(spool_pool *pool, unsigned char *b)
{
    if (!b)
        return;
    pool->compressing--;
    if (pool->n_free_blocks < POOLED_BLOCKS)
        pool->free_blocks[pool->n_free_blocks++] = b;
    else
        free(b);
}

/* ---- disk I/O ---- */

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off, walfs_err *err)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return walfs_err_set(err, errno == ENOSPC ? -ENOSPC : -EIO, "%s", strerror(errno));
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off, walfs_err *err)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return walfs_err_set(err, -EIO, "reading the spool back: %s",
                                 r < 0 ? strerror(errno) : "it is shorter than was written");
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* ---- files ---- */

spool_file *spool_file_new(spool_pool *pool)
{
    spool_file *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->pool = pool;
    f->fd = pool_open_fd(pool);
    if (f->fd < 0) {
        int e = errno;
        free(f);
        errno = e;
        return NULL;
    }
    f->plain = pool->encoder == NULL;
    return f;
}

static void drop_memory(spool_file *f)
{
    pool_give_block(f->pool, f->block);
    f->block = NULL;
    while (f->stash) {
        stash_chunk *c = f->stash;
        f->stash = c->next;
        f->pool->stash_used -= c->len;
        free(c);
    }
}

void spool_file_free(spool_file *f)
{
    if (!f)
        return;
    drop_memory(f);
    pool_release_fd(f->pool, f->fd);
    free(f);
}

uint64_t spool_file_size(const spool_file *f) { return f->size; }

uint64_t spool_file_append_offset(const spool_file *f) { return f->plain ? UINT64_MAX : f->contig; }

uint64_t spool_file_disk_bytes(const spool_file *f) { return f->plain ? f->size : f->records_len; }

static int append_record(spool_file *f, const unsigned char *data, size_t n, walfs_err *err)
{
    const unsigned char *rec;
    size_t rec_len;
    int rc = lzop_block_encode(f->pool->encoder, data, n, &rec, &rec_len, err);
    if (!rc)
        rc = pwrite_all(f->fd, rec, rec_len, f->records_len, err);
    if (!rc) {
        f->records_len += rec_len;
        f->records_size += n;
    }
    return rc;
}

/* Makes the file plain bytes on disk, for good: the records are decoded
 * into a new spool file, then the pending block and the stash follow. */
static int unpack(spool_file *f, walfs_err *err)
{
    if (f->plain)
        return 0;
    int nfd = pool_open_fd(f->pool);
    if (nfd < 0)
        return walfs_err_set(err, -EIO, "cannot create a spool file in %s: %s", f->pool->dir,
                             strerror(errno));
    unsigned char *out = malloc(LZOP_BLOCK_SIZE);
    int rc = out ? 0 : walfs_err_set(err, -ENOMEM, "out of memory");
    uint64_t at = 0, uncomp_at = 0;
    while (!rc && at < f->records_len) {
        uint32_t ulen = 0, plen = 0;
        unsigned char *rec = f->pool->record_buf;
        rc = pread_all(f->fd, rec, LZOP_RECORD_HEADER_LEN, at, err);
        if (!rc)
            rc = lzop_record_lengths(rec, &ulen, &plen, err);
        if (!rc)
            rc = pread_all(f->fd, rec + LZOP_RECORD_HEADER_LEN, plen, at + LZOP_RECORD_HEADER_LEN,
                           err);
        if (!rc)
            rc = lzop_record_decode(rec, LZOP_RECORD_HEADER_LEN + plen, out, err);
        if (!rc)
            rc = pwrite_all(nfd, out, ulen, uncomp_at, err);
        at += LZOP_RECORD_HEADER_LEN + (uint64_t)plen;
        uncomp_at += ulen;
    }
    if (!rc && uncomp_at != f->records_size)
        rc = walfs_err_set(err, -EIO, "the spool's records hold %" PRIu64 " bytes, %" PRIu64
                           " were written", uncomp_at, f->records_size);
    if (!rc && f->contig > f->records_size)
        rc = pwrite_all(nfd, f->block, (size_t)(f->contig - f->records_size), f->records_size,
                        err);
    for (stash_chunk *c = f->stash; !rc && c; c = c->next)
        rc = pwrite_all(nfd, c->data, c->len, c->off, err);
    free(out);
    if (!rc && ftruncate(nfd, (off_t)f->size) != 0) /* the length, were the last bytes zeros */
        rc = walfs_err_set(err, -EIO, "extending the spool: %s", strerror(errno));
    if (rc) {
        pool_release_fd(f->pool, nfd);
        return rc;
    }
    drop_memory(f);
    pool_release_fd(f->pool, f->fd);
    f->fd = nfd;
    f->plain = 1;
    f->stats.unpacked = f->records_len > 0 || f->contig > 0 || f->size > 0;
    f->records_len = f->records_size = f->contig = 0;
    return 0;
}

static void grow(spool_file *f, uint64_t end)
{
    if (end > f->size)
        f->size = end;
}

/* Appends at contig (no stash is in the way). */
static int append(spool_file *f, const unsigned char *p, size_t n, walfs_err *err)
{
    while (n > 0) {
        size_t fill = (size_t)(f->contig - f->records_size);
        if (fill == 0 && n >= LZOP_BLOCK_SIZE) {
            /* A whole block in the caller's buffer: no copy. */
            int rc = append_record(f, p, LZOP_BLOCK_SIZE, err);
            if (rc)
                return rc;
            f->contig += LZOP_BLOCK_SIZE;
            grow(f, f->contig);
            p += LZOP_BLOCK_SIZE;
            n -= LZOP_BLOCK_SIZE;
            continue;
        }
        if (!f->block && !(f->block = pool_take_block(f->pool))) {
            /* As many files as allowed are compressing: this one is kept
             * plain from here. */
            uint64_t at = f->contig;
            int rc = unpack(f, err);
            if (!rc)
                rc = pwrite_all(f->fd, p, n, at, err);
            if (!rc)
                grow(f, at + n);
            return rc;
        }
        size_t take = LZOP_BLOCK_SIZE - fill < n ? LZOP_BLOCK_SIZE - fill : n;
        memcpy(f->block + fill, p, take);
        f->contig += take;
        grow(f, f->contig);
        p += take;
        n -= take;
        if (fill + take == LZOP_BLOCK_SIZE) {
            int rc = append_record(f, f->block, LZOP_BLOCK_SIZE, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int overlaps_stash(const spool_file *f, uint64_t off, size_t len)
{
    for (const stash_chunk *c = f->stash; c; c = c->next)
        if (off < c->off + c->len && c->off < off + len)
            return 1;
    return 0;
}

/* Stashed writes that now continue the file go in, in order. */
static int drain_stash(spool_file *f, walfs_err *err)
{
    for (;;) {
        stash_chunk **pp = &f->stash;
        while (*pp && (*pp)->off != f->contig)
            pp = &(*pp)->next;
        if (!*pp)
            return 0;
        stash_chunk *c = *pp;
        *pp = c->next;
        f->pool->stash_used -= c->len;
        int rc = append(f, c->data, c->len, err);
        free(c);
        if (rc || f->plain)
            return rc;
    }
}

static int write_plain(spool_file *f, const void *buf, size_t len, uint64_t off, walfs_err *err)
{
    int rc = pwrite_all(f->fd, buf, len, off, err);
    if (!rc)
        grow(f, off + len);
    return rc;
}

int spool_file_write(spool_file *f, const void *buf, size_t len, uint64_t off, walfs_err *err)
{
    if (len == 0)
        return 0;
    if (f->plain)
        return write_plain(f, buf, len, off, err);
    const unsigned char *p = buf;
    if (off > f->contig) {
        /* Ahead of the end: a request the kernel sent later was served
         * first.  Held until the gap fills, within the memory allowed. */
        if (overlaps_stash(f, off, len) || f->pool->stash_used + len > f->pool->stash_limit) {
            int rc = unpack(f, err);
            return rc ? rc : write_plain(f, buf, len, off, err);
        }
        stash_chunk *c = malloc(sizeof *c + len);
        if (!c) {
            int rc = unpack(f, err);
            return rc ? rc : write_plain(f, buf, len, off, err);
        }
        c->off = off;
        c->len = len;
        memcpy(c->data, buf, len);
        c->next = f->stash;
        f->stash = c;
        f->pool->stash_used += len;
        f->stats.stashed_writes++;
        grow(f, off + len);
        return 0;
    }
    if (off < f->records_size || overlaps_stash(f, off, len)) {
        /* Behind what was compressed (or over a stashed write): rewrite in
         * place, as plain bytes. */
        int rc = unpack(f, err);
        return rc ? rc : write_plain(f, buf, len, off, err);
    }
    /* Overwriting the pending block's bytes, then appending. */
    size_t over = off + len <= f->contig ? len : (size_t)(f->contig - off);
    if (over > 0)
        memcpy(f->block + (off - f->records_size), p, over);
    int rc = append(f, p + over, len - over, err);
    if (!rc && !f->plain && f->stash)
        rc = drain_stash(f, err);
    return rc;
}

int spool_file_truncate(spool_file *f, uint64_t size, walfs_err *err)
{
    if (size == f->size)
        return 0;
    if (size == 0) {
        drop_memory(f);
        if (ftruncate(f->fd, 0) != 0)
            return walfs_err_set(err, -EIO, "truncating the spool: %s", strerror(errno));
        f->size = f->records_len = f->records_size = f->contig = 0;
        return 0;
    }
    int rc = unpack(f, err);
    if (rc)
        return rc;
    if (ftruncate(f->fd, (off_t)size) != 0)
        return walfs_err_set(err, -EIO, "truncating the spool: %s", strerror(errno));
    f->size = size;
    return 0;
}

int spool_file_read(spool_file *f, void *buf, size_t len, uint64_t off, size_t *got,
                    walfs_err *err)
{
    /* The kernel reads the page a write only partly covers (writeback
     * cache), and that page is always in the pending block: served from
     * memory, so the file goes on compressing. */
    if (!f->plain && off >= f->records_size && (off + len <= f->contig || f->contig == f->size)) {
        size_t n = off >= f->contig ? 0 : (size_t)(f->contig - off) < len ? (size_t)(f->contig - off) : len;
        if (n)
            memcpy(buf, f->block + (off - f->records_size), n);
        *got = n;
        return 0;
    }
    int rc = unpack(f, err);
    if (rc)
        return rc;
    *got = 0;
    if (off >= f->size)
        return 0;
    if (len > f->size - off)
        len = (size_t)(f->size - off);
    rc = pread_all(f->fd, buf, len, off, err);
    if (!rc)
        *got = len;
    return rc;
}

int spool_file_seal(spool_file *f, walfs_err *err)
{
    if (f->plain)
        return 0;
    if (f->stash)
        return unpack(f, err); /* the file ends in a hole, or a gap was never written */
    size_t fill = (size_t)(f->contig - f->records_size);
    if (f->records_len == 0) {
        /* Ended within its first block: plain, compressed later in the
         * partition's own stream with its neighbours. */
        int rc = fill ? pwrite_all(f->fd, f->block, fill, 0, err) : 0;
        if (rc)
            return rc;
        drop_memory(f);
        f->plain = 1;
        f->contig = 0;
        return 0;
    }
    if (fill > 0) {
        int rc = append_record(f, f->block, fill, err);
        if (rc)
            return rc;
    }
    drop_memory(f);
    return 0;
}

spool_file_stats spool_file_get_stats(const spool_file *f) { return f->stats; }

int spool_file_data(const spool_file *f, spool_data *out, walfs_err *err)
{
    if (!f->plain && (f->block || f->stash || f->contig != f->records_size))
        return walfs_err_set(err, -EINVAL, "the spool file is not sealed (bug in walfs)");
    out->fd = f->fd;
    out->records = !f->plain;
    out->len = f->plain ? f->size : f->records_len;
    return 0;
}
