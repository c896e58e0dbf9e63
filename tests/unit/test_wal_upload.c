/* wal/wal_upload.c against the local store behind the fault store: a
 * segment is stored lzop-compressed (WAL-E's format, the uncompressed size
 * recorded) and reads back exactly; archiving is write-once (the same
 * content again uploads nothing, different content is refused and leaves
 * the object alone); a failing HEAD, GET or PUT is reported with its cause
 * and stores nothing; after a transient failure the retry (PostgreSQL runs
 * archive_command again) stores it.  Run from the repository root. */
#include "wal/wal_upload.h"

#include "codec/lzop.h"
#include "common/log.h"
#include "tests/unit/fault_store.h"
#include "tests/unit/tap.h"
#include "common/buf.h"
#include "tests/unit/test_sh.h"
#include "wal/lzop_object.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEG_BYTES (2u << 20)
#define KEY "wal_005/000000010000000000000003.lzo"
#define MTIME 1700000000

static char root[64];

/* WAL-like bytes: a page header pattern, counters, some noise. */
static unsigned char *make_segment(unsigned seed)
{
    unsigned char *p = malloc(SEG_BYTES);
    uint64_t x = 0x9E3779B97F4A7C15ull ^ seed;
    for (size_t i = 0; i < SEG_BYTES; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (i % 8192) < 40 ? (unsigned char)(i / 8192) : (x % 64 == 0 ? (unsigned char)x : 'w');
    }
    return p;
}

/* A spool file holding data, as the FUSE layer gives wal_upload. */
static int spool_of(const unsigned char *data, size_t len)
{
    char path[128];
    snprintf(path, sizeof path, "%s/spool.XXXXXX", root);
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    unlink(path);
    if (write(fd, data, len) != (ssize_t)len) {
        close(fd);
        return -1;
    }
    return fd;
}

static int upload(store *st, const unsigned char *data, size_t len, walfs_err *err)
{
    int fd = spool_of(data, len);
    if (fd < 0)
        return walfs_err_set(err, -EIO, "test: cannot write the spool");
    walfs_err_clear(err);
    int rc = wal_upload(st, KEY, fd, len, 0600, MTIME, NULL, 0, NULL, NULL, err);
    close(fd);
    return rc;
}

/* 1 when KEY decompresses to exactly data. */
static int stored_is(store *st, const unsigned char *data, size_t len)
{
    walfs_buf b = {0};
    walfs_err err;
    int rc = lzop_object_read(st, KEY, buf_sink, &b, &err);
    int same = rc == 0 && b.len == len && memcmp(b.bytes, data, len) == 0;
    if (rc)
        printf("# reading back %s: %s\n", KEY, err.msg);
    buf_free(&b);
    return same;
}

static int stored_stat(store *st, store_stat *out)
{
    walfs_err err;
    return store_stat_key(st, KEY, out, &err);
}

static void remove_key(store *st)
{
    walfs_err err;
    store_remove(st, KEY, &err);
}

static void test_stores_compressed(store *st, const unsigned char *seg)
{
    walfs_err err;
    int rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == 0, "a 2 MiB segment is archived: %s", rc ? err.msg : "ok");
    store_stat s = {0};
    rc = stored_stat(st, &s);
    CHECK(rc == 0 && s.size > 0 && s.size < SEG_BYTES / 2,
          "stored compressed under %s (%llu bytes for %u)", KEY, (unsigned long long)s.size,
          SEG_BYTES);
    CHECK(s.uncompressed_size == -1 || s.uncompressed_size == (int64_t)SEG_BYTES,
          "the uncompressed size is recorded where the store can (%lld)",
          (long long)s.uncompressed_size);
    CHECK(stored_is(st, seg, SEG_BYTES), "it decompresses to the segment, every checksum verified");
    char cmd[512];
    snprintf(cmd, sizeof cmd, "lzop -t -q '%s/%s' && lzop -dc '%s/%s' | cmp -s - '%s/seg.raw'", root,
             KEY, root, KEY, root);
    CHECK(sh("%s", cmd) == 0, "lzop(1) accepts it as WAL-E's lzop -c would write it");
    CHECK(fault_store_calls(st, FAULT_PUT) == 1, "one PUT (%u)", fault_store_calls(st, FAULT_PUT));
}

static void test_write_once(store *st, const unsigned char *seg, const unsigned char *other)
{
    walfs_err err;
    store_stat before = {0}, after = {0};
    stored_stat(st, &before);
    fault_store_reset(st);
    int rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == 0, "archiving the same content again succeeds (PostgreSQL retries after a crash)");
    CHECK(fault_store_calls(st, FAULT_PUT) == 0 && fault_store_calls(st, FAULT_GET) >= 1,
          "... by comparing with the stored object, without a PUT (%u PUT, %u GET)",
          fault_store_calls(st, FAULT_PUT), fault_store_calls(st, FAULT_GET));
    rc = upload(st, other, SEG_BYTES, &err);
    CHECK(rc == -EEXIST, "different content under the same name is refused with -EEXIST (%d)", rc);
    CHECK(strstr(err.msg, "refusing to overwrite") && strstr(err.msg, KEY),
          "... saying so and naming the object: %s", err.msg);
    stored_stat(st, &after);
    CHECK(fault_store_calls(st, FAULT_PUT) == 0 && strcmp(before.etag, after.etag) == 0 &&
              stored_is(st, seg, SEG_BYTES),
          "... and the stored object is untouched");
    rc = upload(st, seg, SEG_BYTES / 2, &err);
    CHECK(rc == -EEXIST, "a prefix of the stored content is different content too (%d)", rc);
}

static void test_failing_put(store *st, const unsigned char *seg)
{
    walfs_err err;
    remove_key(st);
    fault_store_reset(st);
    fault_store_fail(st, FAULT_PUT, 1, 1, -EIO);
    int rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == -EIO, "a failing PUT is reported (%d)", rc);
    CHECK(strstr(err.msg, "injected") && strstr(err.msg, KEY), "... with its cause and the key: %s",
          err.msg);
    store_stat s;
    CHECK(stored_stat(st, &s) == -ENOENT, "... and nothing is stored");

    fault_store_reset(st);
    fault_store_fail(st, FAULT_PUT, 1, 1, -ETIMEDOUT);
    rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == -ETIMEDOUT, "a PUT that timed out gives -ETIMEDOUT, not success (%d)", rc);
    rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == 0 && stored_is(st, seg, SEG_BYTES),
          "the retry (archive_command run again) stores the segment: %s", rc ? err.msg : "ok");
    CHECK(fault_store_calls(st, FAULT_PUT) == 2, "two PUTs in all (%u)",
          fault_store_calls(st, FAULT_PUT));
}

static void test_failing_head_and_get(store *st, const unsigned char *seg)
{
    walfs_err err;
    remove_key(st);
    fault_store_reset(st);
    fault_store_fail(st, FAULT_STAT, 1, 1, -ETIMEDOUT);
    int rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == -ETIMEDOUT && fault_store_calls(st, FAULT_PUT) == 0,
          "when the existence check times out nothing is uploaded: the object may exist (%d)", rc);

    /* the probe made while the file was written is what counts */
    fault_store_reset(st);
    fault_store_fail(st, FAULT_STAT, 1, 1, -EACCES);
    wal_probe probe;
    wal_probe_run(st, KEY, &probe);
    CHECK(probe.rc == -EACCES && strstr(probe.err.msg, "injected"),
          "a probe keeps the HEAD's error: %s", probe.err.msg);
    int fd = spool_of(seg, SEG_BYTES);
    walfs_err_clear(&err);
    rc = wal_upload(st, KEY, fd, SEG_BYTES, 0600, MTIME, NULL, 0, NULL, &probe, &err);
    close(fd);
    CHECK(rc == -EACCES && strstr(err.msg, "injected") && fault_store_calls(st, FAULT_PUT) == 0,
          "... and wal_upload returns it without asking again or uploading: %s", err.msg);
    CHECK(fault_store_calls(st, FAULT_STAT) == 1, "one HEAD in all (%u)",
          fault_store_calls(st, FAULT_STAT));

    rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == 0, "stored once the store answers");
    fault_store_reset(st);
    fault_store_fail(st, FAULT_GET, 1, -1, -EIO);
    fault_store_fail_get_after(st, 1000);
    rc = upload(st, seg, SEG_BYTES, &err);
    CHECK(rc == -EIO && strstr(err.msg, "could not be compared") && strstr(err.msg, KEY),
          "an existing object that cannot be read back for the comparison is an error, not a "
          "success: %s", err.msg);
    CHECK(fault_store_calls(st, FAULT_PUT) == 0, "... and is not overwritten");
}

static void test_precompressed(store *st, const unsigned char *seg)
{
    remove_key(st);
    fault_store_reset(st);
    walfs_buf z = {0};
    walfs_err err;
    lzop_encoder *enc = lzop_encoder_new(0100600, MTIME);
    int rc = lzop_encoder_write(enc, seg, SEG_BYTES, buf_sink, &z, &err);
    if (!rc)
        rc = lzop_encoder_finish(enc, buf_sink, &z, &err);
    lzop_encoder_free(enc);
    CHECK(rc == 0, "the caller compressed the segment (as background_compressor does)");
    int fd = spool_of(seg, SEG_BYTES);
    size_t zlen = z.len;
    unsigned char *copy = malloc(zlen);
    memcpy(copy, z.bytes, zlen);
    rc = wal_upload(st, KEY, fd, SEG_BYTES, 0600, MTIME, (char *)z.bytes, z.len, NULL, NULL, &err);
    close(fd);
    walfs_buf raw = {0};
    walfs_err gerr;
    int grc = store_get(fault_store_inner(st), KEY, 0, 0, buf_sink, &raw, &gerr);
    CHECK(rc == 0 && grc == 0 && raw.len == zlen && memcmp(raw.bytes, copy, zlen) == 0,
          "a stream compressed beforehand is stored as it is (%zu bytes)", raw.len);
    CHECK(stored_is(st, seg, SEG_BYTES), "... and reads back as the segment");
    buf_free(&raw);
    free(copy);
}

int main(void)
{
    walfs_log_set_level(WALFS_LOG_ERROR);
    snprintf(root, sizeof root, "/tmp/walfs-test-walup.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    store *st = fault_store_open_local(root);
    CHECK(st != NULL, "local store in %s behind the fault store", root);
    if (!st)
        return test_summary();
    unsigned char *seg = make_segment(1), *other = make_segment(2);
    char raw[128];
    snprintf(raw, sizeof raw, "%s/seg.raw", root);
    FILE *f = fopen(raw, "wb");
    CHECK(f && fwrite(seg, 1, SEG_BYTES, f) == SEG_BYTES && fclose(f) == 0,
          "the segment also as a plain file, for lzop(1)");

    test_stores_compressed(st, seg);
    test_write_once(st, seg, other);
    test_failing_put(st, seg);
    test_failing_head_and_get(st, seg);
    test_precompressed(st, seg);

    store_close(st);
    free(seg);
    free(other);
    sh("rm -rf '%s'", root);
    return test_summary();
}
