#include "wal/wal_upload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codec/lzop.h"
#include "common/log.h"
#include "wal/lzop_object.h"

enum { SPOOL_CHUNK = 1024 * 1024 };

typedef struct out_buffer {
    char *data;
    size_t len, cap;
} out_buffer;

static int append_output(void *ctx, const void *data, size_t len)
{
    out_buffer *b = ctx;
    if (b->len + len > b->cap)
        return -EOVERFLOW; /* cannot happen: cap is the codec's worst case */
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static int read_spool(int fd, char *buf, size_t want, uint64_t off, const char *key,
                      walfs_err *err)
{
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return walfs_err_set(err, -EIO, "reading the local spool of %s: %s", key,
                                 n < 0 ? strerror(errno) : "unexpected end of file");
        got += (size_t)n;
    }
    return 0;
}

static int compress_spool(const char *key, int fd, uint64_t len, mode_t mode, time_t mtime,
                          out_buffer *out, walfs_err *err)
{
    out->cap = lzop_max_compressed_size(len);
    out->len = 0;
    out->data = malloc(out->cap);
    char *chunk = malloc(SPOOL_CHUNK);
    lzop_encoder *enc = lzop_encoder_new((uint32_t)(mode & 07777) | S_IFREG, mtime);
    int rc = 0;
    if (!out->data || !chunk || !enc)
        rc = walfs_err_set(err, -ENOMEM, "out of memory compressing %s", key);
    for (uint64_t off = 0; !rc && off < len;) {
        size_t want = len - off < SPOOL_CHUNK ? (size_t)(len - off) : SPOOL_CHUNK;
        rc = read_spool(fd, chunk, want, off, key, err);
        if (!rc)
            rc = lzop_encoder_write(enc, chunk, want, append_output, out, err);
        off += want;
    }
    if (!rc)
        rc = lzop_encoder_finish(enc, append_output, out, err);
    lzop_encoder_free(enc);
    free(chunk);
    return rc;
}

/* Compares the decompressed stored object with the spool as it streams. */
typedef struct compare_ctx {
    int fd;
    uint64_t len, pos;
    int differs;
    char *chunk;
    const char *key;
    walfs_err *err;
} compare_ctx;

static int compare_decoded(void *ctx, const void *data, size_t n)
{
    compare_ctx *c = ctx;
    if (c->differs)
        return 0;
    if (c->pos + n > c->len) {
        c->differs = 1;
        return 0;
    }
    int rc = read_spool(c->fd, c->chunk, n, c->pos, c->key, c->err);
    if (rc)
        return rc;
    if (memcmp(c->chunk, data, n) != 0)
        c->differs = 1;
    c->pos += n;
    return 0;
}

/* 0 = identical, 1 = different, <0 = error reading the stored object. */
static int stored_differs(store *st, const char *key, int fd, uint64_t len, walfs_err *err)
{
    compare_ctx cmp = {.fd = fd, .len = len, .key = key, .err = err,
                       .chunk = malloc(LZOP_BLOCK_SIZE)};
    int rc = cmp.chunk ? lzop_object_read(st, key, compare_decoded, &cmp, err)
                       : walfs_err_set(err, -ENOMEM, "out of memory");
    free(cmp.chunk);
    if (rc)
        return rc;
    return cmp.differs || cmp.pos != len;
}

void wal_probe_run(store *st, const char *key, wal_probe *out)
{
    store_stat existing;
    walfs_err_clear(&out->err);
    out->rc = store_stat_key(st, key, &existing, &out->err);
}

int wal_upload(store *st, const char *key, int spool_fd, uint64_t len, mode_t mode,
               time_t mtime, char *compressed, size_t compressed_len,
               const char *compressed_sha256, const wal_probe *probe, walfs_err *err)
{
    out_buffer out = {.data = compressed, .len = compressed_len, .cap = compressed_len};
    wal_probe now;
    if (!probe) {
        wal_probe_run(st, key, &now);
        probe = &now;
    }
    int rc = probe->rc;
    if (rc == 0) {
        free(out.data);
        int d = stored_differs(st, key, spool_fd, len, err);
        if (d < 0)
            return walfs_err_prefix(err, "%s already exists and could not be compared with the "
                                    "new file: ", key);
        if (d == 0) {
            log_info("%s already archived with identical content; nothing to upload", key);
            return 0;
        }
        return walfs_err_set(err, -EEXIST,
                             "refusing to overwrite %s: it is already archived with different "
                             "content (is another cluster archiving to this prefix?); the stored "
                             "object was left untouched",
                             key);
    }
    if (rc != -ENOENT) {
        free(out.data);
        *err = probe->err;
        return rc;
    }
    if (!out.data)
        compressed_sha256 = NULL;
    rc = out.data ? 0 : compress_spool(key, spool_fd, len, mode, mtime, &out, err);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!rc)
        rc = store_put_hashed(st, key, out.data, out.len, compressed_sha256, (int64_t)len, err);
    free(out.data);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    log_debug("%s: PUT of %zu bytes took %.1f ms", key, out.len,
              (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    /* A single PUT answered 200 is stored: the server checked the body
     * against its signed SHA-256 (multipart uploads are verified with a
     * HEAD by the S3 client, since their completion can fail inside a 200). */
    if (rc)
        return rc;
    log_info("archived %s (%llu bytes, %zu stored)", key, (unsigned long long)len, out.len);
    return 0;
}
