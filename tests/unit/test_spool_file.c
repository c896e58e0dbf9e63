/* Unit tests for push/spool_file.c: whatever the order of writes, a sealed
 * spool gives back exactly the bytes a plain file would hold, and data
 * arriving in order is kept as lzop records, a fraction of its size. */
#include "push/spool_file.h"
#include "codec/lzop.h"
#include "tests/unit/tap.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024u * 1024u)

static char dir[64];

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Compressible like table data: runs of text with random bytes in between. */
static void fill(unsigned char *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (i + seed) % 97 < 90 ? (unsigned char)("pgbench row "[(i + seed) % 12])
                                    : (unsigned char)next_rand();
}

/* A sealed spool's content, decoded: records or plain bytes. */
static unsigned char *content(spool_file *f, size_t *len, int *records)
{
    spool_data d;
    walfs_err err;
    if (spool_file_data(f, &d, &err) != 0)
        return NULL;
    *records = d.records;
    unsigned char *raw = malloc(d.len + 1);
    if (!raw || pread(d.fd, raw, d.len, 0) != (ssize_t)d.len) {
        free(raw);
        return NULL;
    }
    if (!d.records) {
        *len = d.len;
        return raw;
    }
    size_t cap = spool_file_size(f) + 1, out = 0;
    unsigned char *plain = malloc(cap);
    for (uint64_t at = 0; plain && at < d.len;) {
        uint32_t ulen, plen;
        if (d.len - at < LZOP_RECORD_HEADER_LEN ||
            lzop_record_lengths(raw + at, &ulen, &plen, &err) != 0 || out + ulen > cap ||
            lzop_record_decode(raw + at, LZOP_RECORD_HEADER_LEN + plen, plain + out, &err) != 0) {
            free(plain);
            plain = NULL;
            break;
        }
        at += LZOP_RECORD_HEADER_LEN + plen;
        out += ulen;
    }
    free(raw);
    *len = out;
    return plain;
}

static int same(spool_file *f, const unsigned char *want, size_t want_len, int *records)
{
    size_t len = 0;
    unsigned char *got = content(f, &len, records);
    int ok = got && len == want_len && spool_file_size(f) == want_len &&
             memcmp(got, want, want_len) == 0;
    free(got);
    return ok;
}

static void test_in_order(void)
{
    spool_pool *pool = spool_pool_new(dir, 4, 16 * MIB);
    spool_file *f = spool_file_new(pool);
    size_t n = 20 * MIB + 12345;
    unsigned char *data = malloc(n);
    fill(data, n, 1);
    walfs_err err;
    int ok = 1;
    /* 1 MiB writes, as the kernel's writeback sends them, and odd ones */
    for (size_t off = 0; off < n && ok;) {
        size_t w = off < 10 * MIB ? MIB : 4096 + 17;
        if (w > n - off)
            w = n - off;
        ok = spool_file_write(f, data + off, w, off, &err) == 0;
        off += w;
    }
    CHECK(ok, "in-order writes accepted");
    CHECK(spool_file_seal(f, &err) == 0, "sealed");
    int records = 0;
    CHECK(same(f, data, n, &records), "content as written");
    CHECK(records, "kept as lzop records");
    CHECK(spool_file_disk_bytes(f) < n / 3, "disk bytes %llu for %zu written",
          (unsigned long long)spool_file_disk_bytes(f), n);

    /* appending after the last close: more records, short ones in between */
    unsigned char *more = malloc(n + 300000);
    memcpy(more, data, n);
    fill(more + n, 300000, 7);
    ok = spool_file_write(f, more + n, 300000, n, &err) == 0 && spool_file_seal(f, &err) == 0;
    CHECK(ok && same(f, more, n + 300000, &records) && records,
          "appended after sealing: still records, content right");
    free(more);
    spool_file_free(f);

    /* reading the pending block (what the kernel does for a page a write
     * covers only partly) leaves the file compressing */
    f = spool_file_new(pool);
    unsigned char back[8192];
    size_t got = 0;
    ok = spool_file_write(f, data, 300000, 0, &err) == 0 &&
         spool_file_read(f, back, 8192, 294912, &got, &err) == 0 && got == 5088 &&
         memcmp(back, data + 294912, 5088) == 0 &&
         spool_file_write(f, data + 300000, 700000, 300000, &err) == 0 &&
         spool_file_seal(f, &err) == 0;
    CHECK(ok && same(f, data, 1000000, &records) && records,
          "a read of the pending block's last page: served from memory, still records");
    spool_file_free(f);

    /* a small file stays plain */
    f = spool_file_new(pool);
    ok = spool_file_write(f, data, 5000, 0, &err) == 0 && spool_file_seal(f, &err) == 0;
    CHECK(ok && same(f, data, 5000, &records) && !records, "a 5000-byte file is kept plain");
    spool_file_free(f);
    /* an empty one too */
    f = spool_file_new(pool);
    CHECK(spool_file_seal(f, &err) == 0 && same(f, data, 0, &records) && !records,
          "an empty file: plain, 0 bytes");
    spool_file_free(f);
    free(data);
    spool_pool_free(pool);
}

/* Random writes of every kind against a model of the file. */
static void test_random(unsigned rounds)
{
    spool_pool *pool = spool_pool_new(dir, 4, 4 * MIB);
    int all_ok = 1, saw_records = 0, saw_plain = 0;
    size_t cap = 12 * MIB;
    unsigned char *model = malloc(cap), *chunk = malloc(2 * MIB);
    for (unsigned r = 0; r < rounds; r++) {
        spool_file *f = spool_file_new(pool);
        size_t size = 0;
        memset(model, 0, cap);
        walfs_err err;
        int ok = 1;
        size_t next = 0;
        unsigned ops = 20 + (unsigned)(next_rand() % 40);
        for (unsigned i = 0; i < ops && ok; i++) {
            uint64_t k = next_rand() % 100;
            size_t len = 1 + (size_t)(next_rand() % (k < 50 ? MIB : 70000));
            uint64_t off;
            if (k < 70 || r % 4 == 0)
                off = next; /* mostly in order */
            else if (k < 85)
                off = next + (next_rand() % (3 * MIB)); /* ahead, leaving a gap */
            else if (k < 95)
                off = size ? next_rand() % size : 0; /* a rewrite */
            else {
                size_t t = size ? (size_t)(next_rand() % (size + 1)) : 0;
                if (next_rand() % 3 == 0)
                    t = 0;
                ok = spool_file_truncate(f, t, &err) == 0;
                if (t < size)
                    memset(model + t, 0, size - t);
                size = t;
                next = t;
                continue;
            }
            if (off + len > cap)
                continue;
            fill(chunk, len, next_rand());
            ok = spool_file_write(f, chunk, len, off, &err) == 0;
            memcpy(model + off, chunk, len);
            if (off + len > size)
                size = off + len;
            next = off + len;
            if (next_rand() % 10 == 0) {
                ok = ok && spool_file_seal(f, &err) == 0; /* closed and reopened */
            }
        }
        /* a file the kernel wrote back in swapped 1 MiB pieces */
        if (r % 4 == 0 && ok && size + 2 * MIB <= cap) {
            fill(chunk, 2 * MIB, r);
            ok = spool_file_write(f, chunk + MIB, MIB, size + MIB, &err) == 0 &&
                 spool_file_write(f, chunk, MIB, size, &err) == 0;
            memcpy(model + size, chunk, 2 * MIB);
            size += 2 * MIB;
        }
        ok = ok && spool_file_seal(f, &err) == 0;
        int records = 0;
        if (!ok || !same(f, model, size, &records)) {
            all_ok = 0;
            printf("# round %u: %s\n", r, ok ? "content differs" : err.msg);
        }
        saw_records |= records;
        saw_plain |= !records;
        /* reading back (the label, a user) gives the same bytes */
        size_t got = 0;
        unsigned char *back = malloc(size + 1);
        ok = spool_file_read(f, back, size + 1, 0, &got, &err) == 0 && got == size &&
             memcmp(back, model, size) == 0;
        free(back);
        if (!ok) {
            all_ok = 0;
            printf("# round %u: read back differs\n", r);
        }
        spool_file_free(f);
    }
    CHECK(all_ok, "%u random write sequences (in order, ahead, rewrites, truncations, "
                  "reopenings): content always right", rounds);
    CHECK(saw_records && saw_plain, "both records and plain spools were exercised");
    free(model);
    free(chunk);
    spool_pool_free(pool);
}

static void test_limits(void)
{
    walfs_err err;
    unsigned char *data = malloc(4 * MIB);
    fill(data, 4 * MIB, 3);
    int records = 0;

    /* one file may compress at a time: the second is kept plain */
    spool_pool *pool = spool_pool_new(dir, 1, MIB);
    spool_file *a = spool_file_new(pool), *b = spool_file_new(pool);
    /* (whole aligned blocks need no memory, so start with a partial one) */
    int ok = spool_file_write(a, data, 1000, 0, &err) == 0 &&
             spool_file_write(b, data, 1000, 0, &err) == 0 &&
             spool_file_write(a, data + 1000, 2 * MIB - 1000, 1000, &err) == 0 &&
             spool_file_write(b, data + 1000, 2 * MIB - 1000, 1000, &err) == 0;
    ok = ok && spool_file_seal(a, &err) == 0 && spool_file_seal(b, &err) == 0;
    CHECK(ok && same(a, data, 2 * MIB, &records) && records, "the first file compresses");
    CHECK(same(b, data, 2 * MIB, &records) && !records,
          "beyond max_compressing files: kept plain, content right");
    spool_file_free(a);
    spool_file_free(b);

    /* more out-of-order bytes than the stash allows: plain, content right */
    a = spool_file_new(pool);
    ok = spool_file_write(a, data + 3 * MIB, MIB, 3 * MIB, &err) == 0 &&
         spool_file_write(a, data + 2 * MIB, MIB, 2 * MIB, &err) == 0 &&
         spool_file_write(a, data, 2 * MIB, 0, &err) == 0 && spool_file_seal(a, &err) == 0;
    CHECK(ok && same(a, data, 4 * MIB, &records) && !records,
          "stash limit exceeded: kept plain, content right");
    spool_file_free(a);

    /* a gap never written: a hole of zeros, as a plain file has */
    a = spool_file_new(pool);
    unsigned char *want = calloc(1, 2 * MIB);
    memcpy(want, data, 1000);
    memcpy(want + MIB + 5, data, 1000);
    ok = spool_file_write(a, data, 1000, 0, &err) == 0 &&
         spool_file_write(a, data, 1000, MIB + 5, &err) == 0 && spool_file_seal(a, &err) == 0;
    CHECK(ok && same(a, want, MIB + 1005, &records) && !records,
          "a hole left at the last close reads as zeros");
    spool_file_free(a);
    free(want);
    spool_pool_free(pool);

    /* compression off */
    pool = spool_pool_new(dir, 0, 0);
    a = spool_file_new(pool);
    ok = spool_file_write(a, data, 4 * MIB, 0, &err) == 0 && spool_file_seal(a, &err) == 0;
    CHECK(ok && same(a, data, 4 * MIB, &records) && !records, "compression off: plain");
    spool_file_free(a);
    spool_pool_free(pool);
    free(data);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/walfs-spool.XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    test_in_order();
    test_random(200);
    test_limits();
    rmdir(dir);
    return test_summary();
}
