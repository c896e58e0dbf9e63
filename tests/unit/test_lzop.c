/* Unit tests for codec/lzop.c: byte-exactness against lzop 1.04, round trips
 * through the real lzop binary, corruption handling, the block scanner, and
 * the WAL-E fixture objects.  Run from the repository root. */
#include "common/hex.h"
#include "codec/lzop.h"
#include "tests/unit/tap.h"
#include "common/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lzo/lzoconf.h>
#include <openssl/evp.h>

#define FIXTURE_DIR "tests/fixtures/wale-pg15-a"
#define BLK LZOP_BLOCK_SIZE

/* ---- helpers ---- */


static void buf_put(walfs_buf *b, const void *d, size_t n)
{
    if (buf_sink(b, d, n) != 0)
        abort();
}

static int same(const walfs_buf *b, const void *d, size_t n)
{
    return b->len == n && (n == 0 || memcmp(b->bytes, d, n) == 0);
}

static char tmpdir[64];

static const char *tpath(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", tmpdir, name);
    return out;
}

static int write_file(const char *path, const void *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(d, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static int read_file(const char *path, walfs_buf *out)
{
    out->len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    unsigned char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        buf_put(out, tmp, n);
    fclose(f);
    return 0;
}

/* Runs a shell command; returns its exit status or -1. */
static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

static int encode(const void *d, size_t n, uint32_t mode, int64_t mtime, size_t chunk, walfs_buf *out,
                  walfs_err *err)
{
    out->len = 0;
    lzop_encoder *enc = lzop_encoder_new(mode, mtime);
    if (!enc)
        return -ENOMEM;
    const unsigned char *p = d;
    int rc = 0;
    if (chunk == 0)
        chunk = n ? n : 1;
    for (size_t off = 0; rc == 0 && off < n; off += chunk)
        rc = lzop_encoder_write(enc, p + off, n - off < chunk ? n - off : chunk, buf_sink, out, err);
    if (rc == 0)
        rc = lzop_encoder_finish(enc, buf_sink, out, err);
    lzop_encoder_free(enc);
    return rc;
}

/* chunk 0: all at once. */
static int decode_named(const void *d, size_t n, size_t chunk, const char *name, walfs_buf *out,
                        walfs_err *err)
{
    out->len = 0;
    walfs_err_clear(err);
    lzop_decoder *dec = lzop_decoder_new(name);
    if (!dec)
        return -ENOMEM;
    const unsigned char *p = d;
    int rc = 0;
    if (chunk == 0)
        chunk = n ? n : 1;
    for (size_t off = 0; rc == 0 && off < n; off += chunk)
        rc = lzop_decoder_feed(dec, p + off, n - off < chunk ? n - off : chunk, buf_sink, out, err);
    if (rc == 0)
        rc = lzop_decoder_finish(dec, err);
    if (rc == 0 && lzop_decoder_total_out(dec) != out->len)
        rc = -999;
    lzop_decoder_free(dec);
    return rc;
}

static int decode(const void *d, size_t n, size_t chunk, walfs_buf *out, walfs_err *err)
{
    return decode_named(d, n, chunk, "test-object.lzo", out, err);
}

/* Decode must fail with -EIO and a message naming the object. */
static int rejects(const void *d, size_t n, const char *needle, walfs_err *err)
{
    walfs_buf out = {0};
    int rc = decode(d, n, 0, &out, err);
    buf_free(&out);
    if (rc != -EIO || !strstr(err->msg, "test-object.lzo"))
        return 0;
    if (needle && !strstr(err->msg, needle))
        return 0;
    return 1;
}

static int scan(const void *d, size_t n, size_t chunk, lzop_index *idx, walfs_err *err)
{
    walfs_err_clear(err);
    lzop_scanner *sc = lzop_scanner_new("scan-object.lzo");
    if (!sc)
        return -ENOMEM;
    const unsigned char *p = d;
    int rc = 0;
    if (chunk == 0)
        chunk = n ? n : 1;
    for (size_t off = 0; rc == 0 && off < n; off += chunk)
        rc = lzop_scanner_feed(sc, p + off, n - off < chunk ? n - off : chunk, err);
    if (rc == 0)
        rc = lzop_scanner_finish(sc, idx, err);
    lzop_scanner_free(sc);
    return rc;
}

/* Checks the block table is contiguous and decodes every block on its own
 * into out (which must hold idx->uncomp_size bytes). */
static int index_decode_all(const unsigned char *s, size_t n, const lzop_index *idx,
                            unsigned char *out, walfs_err *err)
{
    uint64_t comp = idx->info.header_len, uncomp = 0;
    for (size_t i = 0; i < idx->n_blocks; i++) {
        const lzop_block *b = &idx->blocks[i];
        if (b->comp_offset != comp || b->uncomp_offset != uncomp || b->data_offset <= b->comp_offset)
            return -1;
        size_t raw_len = (size_t)(b->data_offset + b->comp_len - b->comp_offset);
        if (b->comp_offset + raw_len > n)
            return -2;
        int rc = lzop_decode_block(&idx->info, b, s + b->comp_offset, raw_len, out + b->uncomp_offset,
                                   err);
        if (rc)
            return rc;
        comp = b->data_offset + b->comp_len;
        uncomp += b->uncomp_len;
    }
    if (comp + 4 != idx->comp_size || uncomp != idx->uncomp_size)
        return -3;
    return 0;
}

static void sha256_hex(const void *d, size_t n, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(d, n, md, &mdlen, EVP_sha256(), NULL);
    hex_encode(md, mdlen < 32 ? mdlen : 32, hex);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill_random(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(rng() >> 24);
}

static void fill_text(unsigned char *p, size_t n, unsigned seed)
{
    size_t off = 0;
    unsigned i = seed;
    char line[128];
    while (off < n) {
        int l = snprintf(line, sizeof line, "record %u: balance=%u owner=user%03u status=%s\n", i,
                         (i * 7919u) % 100000u, i % 997u, (i % 3) ? "active" : "closed");
        size_t take = (size_t)l < n - off ? (size_t)l : n - off;
        memcpy(p + off, line, take);
        off += take;
        i++;
    }
}

/* 16 MiB shaped like a WAL segment: 8 KiB pages with a header and
 * heap-insert-like records in the first part, zeros after the insert point. */
static void fill_wal(unsigned char *p, size_t n)
{
    memset(p, 0, n);
    size_t used = n / 3;
    uint32_t lsn = 0x3000000;
    for (size_t page = 0; page + 8192 <= used; page += 8192) {
        unsigned char *pg = p + page;
        pg[0] = 0x10;
        pg[1] = 0xD1; /* xlp_magic */
        pg[2] = 0x05;
        pg[4] = 1; /* timeline */
        memcpy(pg + 8, &lsn, 4);
        size_t off = 24;
        while (off + 200 < 8192) {
            uint32_t len = 60 + (uint32_t)(rng() % 120);
            memcpy(pg + off, &len, 4);
            uint32_t xid = 700 + (uint32_t)(off / 64);
            memcpy(pg + off + 4, &xid, 4);
            memcpy(pg + off + 8, &lsn, 4);
            pg[off + 16] = 0x10; /* rmgr heap */
            fill_random(pg + off + 20, 4); /* crc */
            fill_text(pg + off + 24, len - 24, xid);
            off += (len + 7) & ~7u;
            lsn += len;
        }
        lsn += 8192;
    }
}

/* A WAL-E-style header around body (blocks + end marker of an ADLER32_D stream). */
typedef struct hdr_spec {
    uint32_t version, version_needed, method, level, flags, filter, mode;
    const char *name;
    const unsigned char *extra;
    uint32_t extra_len;
    int break_extra_sum;
} hdr_spec;

static void make_stream(const hdr_spec *h, const unsigned char *body, size_t body_len, walfs_buf *out)
{
    static const unsigned char magic[9] = {0x89, 0x4C, 0x5A, 0x4F, 0x00, 0x0D, 0x0A, 0x1A, 0x0A};
    unsigned char f[512];
    size_t n = 0;
#define PUT16(v) (f[n++] = (unsigned char)((v) >> 8), f[n++] = (unsigned char)(v))
#define PUT32(v) (PUT16((uint32_t)(v) >> 16), PUT16((uint32_t)(v)&0xFFFF))
    PUT16(h->version);
    PUT16(lzo_version() & 0xFFFF);
    if (h->version >= 0x0940)
        PUT16(h->version_needed);
    f[n++] = (unsigned char)h->method;
    if (h->version >= 0x0940)
        f[n++] = (unsigned char)h->level;
    PUT32(h->flags);
    if (h->flags & 0x800)
        PUT32(h->filter);
    PUT32(h->mode);
    PUT32(0); /* mtime_low */
    if (h->version >= 0x0940)
        PUT32(0);
    size_t nl = h->name ? strlen(h->name) : 0;
    f[n++] = (unsigned char)nl;
    memcpy(f + n, h->name ? h->name : "", nl);
    n += nl;
    int crc = (h->flags & 0x1000) != 0;
    uint32_t sum = crc ? (uint32_t)lzo_crc32(0, f, (lzo_uint)n) : (uint32_t)lzo_adler32(1, f, (lzo_uint)n);
    PUT32(sum);
    out->len = 0;
    buf_put(out, magic, 9);
    buf_put(out, f, n);
    if (h->flags & 0x40) {
        n = 0;
        PUT32(h->extra_len);
        memcpy(f + n, h->extra, h->extra_len);
        n += h->extra_len;
        sum = crc ? (uint32_t)lzo_crc32(0, f, (lzo_uint)n) : (uint32_t)lzo_adler32(1, f, (lzo_uint)n);
        if (h->break_extra_sum)
            sum ^= 1;
        PUT32(sum);
        buf_put(out, f, n);
    }
    buf_put(out, body, body_len);
#undef PUT16
#undef PUT32
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void set_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* ---- tests ---- */

static const char hello[] = "hello world hello world hello world\n";

static void test_vector(void)
{
    static const unsigned char expect[] = {
        0x89, 0x4C, 0x5A, 0x4F, 0x00, 0x0D, 0x0A, 0x1A, 0x0A, 0x10, 0x40, 0x20, 0xA0, 0x09, 0x40, 0x01,
        0x05, 0x03, 0x00, 0x00, 0x0D, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x1F, 0x5C, 0x01, 0x70, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00, 0x20, 0xFC, 0xF2,
        0x0D, 0x5F, 0x09, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x20, 0x77, 0x6F, 0x72, 0x6C, 0x64, 0x20, 0x2A,
        0x2C, 0x00, 0x09, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x20, 0x77, 0x6F, 0x72, 0x6C, 0x64, 0x0A, 0x11,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    walfs_err err = {0};
    walfs_buf out = {0}, dec = {0};
    CHECK((lzo_version() & 0xFFFF) == 0x20A0, "liblzo2 is 2.10 (the test vector's library)");
    int rc = encode(hello, 36, 0, 0, 0, &out, &err);
    CHECK(rc == 0 && same(&out, expect, sizeof expect), "doc 3.7 test vector reproduced byte for byte");
    rc = encode(hello, 36, 0, 0, 1, &out, &err);
    CHECK(rc == 0 && same(&out, expect, sizeof expect), "test vector with 1-byte encoder writes");
    rc = decode(expect, sizeof expect, 1, &dec, &err);
    CHECK(rc == 0 && same(&dec, hello, 36), "test vector decodes with 1-byte feeds");
    CHECK(lzop_max_compressed_size(36) >= sizeof expect && lzop_max_compressed_size(0) == 42,
          "lzop_max_compressed_size covers the vector and is exact for empty input");

    /* truncation at every offset of a small stream */
    int bad = 0;
    for (size_t cut = 0; cut < sizeof expect; cut++) {
        if (!rejects(expect, cut, cut ? "truncated" : "empty", &err)) {
            bad++;
            printf("# cut %zu: rc msg %s\n", cut, err.msg);
        }
    }
    CHECK(bad == 0, "truncation at each of %zu offsets rejected with -EIO", sizeof expect);

    /* the header's bytes after the magic are all covered by the checksum */
    bad = 0;
    for (size_t i = 0; i < 38; i++) {
        unsigned char c[sizeof expect];
        memcpy(c, expect, sizeof c);
        c[i] ^= 0x40;
        if (!rejects(c, sizeof c, NULL, &err))
            bad++;
    }
    CHECK(bad == 0, "a flipped bit in any of the 38 header bytes is rejected");

    unsigned char two[2 * sizeof expect];
    memcpy(two, expect, sizeof expect);
    memcpy(two + sizeof expect, expect, sizeof expect);
    CHECK(rejects(two, sizeof two, "second lzop stream", &err), "concatenated streams rejected: %s",
          err.msg);

    walfs_buf t = {0};
    buf_put(&t, expect, sizeof expect);
    static const unsigned char zeros[1000];
    buf_put(&t, zeros, sizeof zeros);
    rc = decode(t.bytes, t.len, 0, &dec, &err);
    CHECK(rc == 0 && same(&dec, hello, 36), "trailing zero bytes accepted like lzop");
    rc = decode(t.bytes, t.len, 1, &dec, &err);
    CHECK(rc == 0 && same(&dec, hello, 36), "trailing zero bytes accepted with 1-byte feeds");
    buf_put(&t, "x", 1);
    CHECK(rejects(t.bytes, t.len, "non-zero data", &err), "zeros then garbage rejected: %s", err.msg);
    t.len = 0;
    buf_put(&t, expect, sizeof expect);
    buf_put(&t, "garbage", 7);
    CHECK(rejects(t.bytes, t.len, "non-zero data", &err), "trailing garbage rejected");
    t.len = 0;
    buf_put(&t, expect, sizeof expect);
    buf_put(&t, "\x89LZ", 3);
    CHECK(rejects(t.bytes, t.len, "non-zero data", &err), "trailing partial magic rejected");
    buf_free(&t);

    unsigned char c[sizeof expect];
    memcpy(c, expect, sizeof c);
    c[0] = 0x88;
    CHECK(rejects(c, sizeof c, "bad magic", &err), "bad magic rejected: %s", err.msg);
    CHECK(rejects("just some text, not lzop", 24, "bad magic", &err), "plain text rejected");
    CHECK(rejects("", 0, "empty", &err), "empty input rejected: %s", err.msg);

    memcpy(c, expect, sizeof c);
    c[48] ^= 1; /* block Adler-32 */
    CHECK(rejects(c, sizeof c, "Adler-32 of decompressed data mismatch", &err),
          "wrong block checksum rejected: %s", err.msg);
    memcpy(c, expect, sizeof c);
    c[60] ^= 0x20; /* a literal in the compressed data */
    CHECK(rejects(c, sizeof c, NULL, &err), "flipped compressed byte rejected: %s", err.msg);

    /* sticky failure and sink errors */
    lzop_decoder *d = lzop_decoder_new("sticky");
    rc = lzop_decoder_feed(d, c, sizeof c, buf_sink, &dec, &err);
    int rc2 = lzop_decoder_feed(d, c, 1, buf_sink, &dec, &err);
    CHECK(rc == -EIO && rc2 == -EIO && lzop_decoder_finish(d, &err) == -EIO,
          "decoder stays failed after an error");
    lzop_decoder_free(d);
    buf_free(&out);
    buf_free(&dec);
}

static int failing_sink(void *ctx, const void *d, size_t n)
{
    return -ENOSPC;
}

static int msg_sink(void *ctx, const void *d, size_t n)
{
    walfs_err_set(ctx, -EPIPE, "sink says: reader went away");
    return -EPIPE;
}

static void test_sink_errors(void)
{
    walfs_err err = {0};
    walfs_buf s = {0};
    encode(hello, 36, 0, 0, 0, &s, &err);
    lzop_decoder *d = lzop_decoder_new("x");
    int rc = lzop_decoder_feed(d, s.bytes, s.len, failing_sink, NULL, &err);
    CHECK(rc == -ENOSPC && strstr(err.msg, "consumer"), "decoder propagates sink errno: %s", err.msg);
    lzop_decoder_free(d);
    walfs_err_clear(&err);
    d = lzop_decoder_new("x");
    rc = lzop_decoder_feed(d, s.bytes, s.len, msg_sink, &err, &err);
    CHECK(rc == -EPIPE && strcmp(err.msg, "sink says: reader went away") == 0,
          "decoder keeps the sink's own message");
    lzop_decoder_free(d);
    walfs_err_clear(&err);
    lzop_encoder *e = lzop_encoder_new(0, 0);
    rc = lzop_encoder_write(e, hello, 36, failing_sink, NULL, &err);
    int rc2 = lzop_encoder_finish(e, buf_sink, &s, &err);
    CHECK(rc == -ENOSPC && rc2 == -ENOSPC, "encoder propagates sink errno and stays failed");
    lzop_encoder_free(e);
    buf_free(&s);
}

typedef struct input {
    const char *name;
    unsigned char *data;
    size_t len;
} input;

static int has_flags(const walfs_buf *s, uint32_t want)
{
    return s->len > 21 && (be32(s->bytes + 17) & want) == want;
}

static void test_against_lzop(const input *in)
{
    char pin[128], pref[128], pours[128], pback[128], pv[128];
    tpath(pin, sizeof pin, "in.bin");
    tpath(pref, sizeof pref, "ref.lzo");
    tpath(pours, sizeof pours, "ours.lzo");
    tpath(pback, sizeof pback, "back.bin");
    tpath(pv, sizeof pv, "variant.lzo");
    walfs_err err = {0};
    walfs_buf ours = {0}, ref = {0}, dec = {0}, other = {0};

    CHECK(write_file(pin, in->data, in->len) == 0, "[%s] wrote %zu-byte input", in->name, in->len);
    struct stat st;
    stat(pin, &st);
    uint32_t mode = (uint32_t)(st.st_mode & 07777) | 0100000u;

    int rc = encode(in->data, in->len, mode, (int64_t)st.st_mtime, 0, &ours, &err);
    CHECK(rc == 0, "[%s] encoded to %zu bytes", in->name, ours.len);
    CHECK(ours.len <= lzop_max_compressed_size(in->len), "[%s] within lzop_max_compressed_size",
          in->name);
    CHECK(run("lzop -c < %s > %s", pin, pref) == 0 && read_file(pref, &ref) == 0,
          "[%s] lzop -c < file ran", in->name);
    CHECK(ours.len == ref.len && memcmp(ours.bytes, ref.bytes, ours.len) == 0,
          "[%s] our stream equals `lzop -c < file` byte for byte", in->name);

    size_t chunk = in->len <= (1u << 20) ? 1 : 4099;
    rc = encode(in->data, in->len, mode, (int64_t)st.st_mtime, chunk, &other, &err);
    CHECK(rc == 0 && other.len == ours.len && memcmp(other.bytes, ours.bytes, ours.len) == 0,
          "[%s] %zu-byte encoder writes give the same stream", in->name, chunk);
    rc = encode(in->data, in->len, mode, (int64_t)st.st_mtime, BLK + 7, &other, &err);
    CHECK(rc == 0 && other.len == ours.len && memcmp(other.bytes, ours.bytes, ours.len) == 0,
          "[%s] block+7-byte encoder writes give the same stream", in->name);

    /* ours -> lzop */
    encode(in->data, in->len, 0, 1700000000, 0, &ours, &err);
    write_file(pours, ours.bytes, ours.len);
    CHECK(run("lzop -t -q %s", pours) == 0, "[%s] lzop -t accepts our stream", in->name);
    CHECK(run("lzop -dc < %s > %s", pours, pback) == 0 && read_file(pback, &other) == 0 &&
              same(&other, in->data, in->len),
          "[%s] lzop -dc restores the input from our stream", in->name);

    /* lzop -> ours */
    rc = decode(ref.bytes, ref.len, 0, &dec, &err);
    CHECK(rc == 0 && same(&dec, in->data, in->len), "[%s] we decode lzop -c output (one feed) %s",
          in->name, rc ? err.msg : "");
    rc = decode(ref.bytes, ref.len, 1, &dec, &err);
    CHECK(rc == 0 && same(&dec, in->data, in->len), "[%s] we decode lzop -c output (1-byte feeds)",
          in->name);
    rc = decode(ref.bytes, ref.len, 4093, &dec, &err);
    CHECK(rc == 0 && same(&dec, in->data, in->len), "[%s] we decode lzop -c output (4093-byte feeds)",
          in->name);

    static const struct {
        const char *opts;
        uint32_t flags;
        unsigned method;
    } variants[] = {
        {"--crc32", 0x1100, 1},      {"-C -C", 0x3, 1},    {"--crc32 -C -C", 0x1300, 1},
        {"-F", 0, 1},                {"-1", 0x1, 2},       {"-9", 0x1, 3},
        {"-9 -C -C --crc32", 0x1300, 3},
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        if (in->len > (4u << 20) && variants[i].method == 3 && i != 5)
            continue; /* LZO1X-999 on 16 MiB is slow; -9 once is enough */
        int ok = run("lzop -c %s < %s > %s", variants[i].opts, pin, pv) == 0 &&
                 read_file(pv, &other) == 0 && has_flags(&other, variants[i].flags) &&
                 other.bytes[15] == variants[i].method;
        rc = ok ? decode(other.bytes, other.len, in->len < 100000 ? 1 : 65536, &dec, &err) : -1;
        CHECK(ok && rc == 0 && same(&dec, in->data, in->len), "[%s] we decode `lzop -c %s` %s",
              in->name, variants[i].opts, rc > -1000 && rc < 0 ? err.msg : "");
    }
    /* named: lzop given a file name stores it in the header */
    int ok = run("cd %s && lzop -c in.bin > variant.lzo", tmpdir) == 0 && read_file(pv, &other) == 0 &&
             other.len > 34 && other.bytes[33] == 6 && memcmp(other.bytes + 34, "in.bin", 6) == 0;
    rc = ok ? decode(other.bytes, other.len, 0, &dec, &err) : -1;
    CHECK(ok && rc == 0 && same(&dec, in->data, in->len), "[%s] we decode `lzop -c FILE` (named)",
          in->name);

    remove(pin);
    remove(pref);
    remove(pours);
    remove(pback);
    remove(pv);
    buf_free(&ours);
    buf_free(&ref);
    buf_free(&dec);
    buf_free(&other);
}

/* Corruption and header-variant cases on a multi-block stream with both
 * compressed and stored blocks. */
static void test_corruption(const input *mixed)
{
    walfs_err err = {0};
    walfs_buf s = {0}, c = {0}, dec = {0};
    encode(mixed->data, mixed->len, 0, 0, 0, &s, &err);
    lzop_index idx = {0};
    int rc = scan(s.bytes, s.len, 0, &idx, &err);
    CHECK(rc == 0 && idx.n_blocks == 5 && idx.blocks[0].comp_len < BLK && idx.blocks[1].comp_len == BLK &&
              idx.blocks[4].uncomp_len == mixed->len - 4 * BLK,
          "mixed stream: 5 blocks, compressed and stored, partial last");
    if (rc != 0 || idx.n_blocks != 5)
        return;
    const lzop_block *b0 = &idx.blocks[0], *b1 = &idx.blocks[1], *b2 = &idx.blocks[2];

#define MUTATE(stmt)                                                                               \
    do {                                                                                           \
        c.len = 0;                                                                                 \
        buf_put(&c, s.bytes, s.len);                                                                   \
        stmt;                                                                                      \
    } while (0)

    MUTATE(c.bytes[b0->data_offset + 100] ^= 0x01);
    CHECK(rejects(c.bytes, c.len, "block 0 at offset 38", &err), "flipped compressed byte: %s", err.msg);
    MUTATE(c.bytes[b1->data_offset + 100] ^= 0x01);
    CHECK(rejects(c.bytes, c.len, "Adler-32 of stored (uncompressed) data mismatch", &err),
          "flipped stored byte: %s", err.msg);
    MUTATE(c.bytes[b2->comp_offset + 9] ^= 0x01);
    CHECK(rejects(c.bytes, c.len, "block 2 at offset", &err) && strstr(err.msg, "restore it"),
          "wrong block checksum: %s", err.msg);
    MUTATE(set_be32(c.bytes + b0->comp_offset, BLK + 1));
    CHECK(rejects(c.bytes, c.len, "262144", &err), "dst_len > 256 KiB rejected: %s", err.msg);
    MUTATE(set_be32(c.bytes + b0->comp_offset, 65u << 20));
    CHECK(rejects(c.bytes, c.len, "64 MiB", &err), "dst_len > 64 MiB rejected");
    MUTATE(set_be32(c.bytes + b0->comp_offset, 0xFFFFFFFFu));
    CHECK(rejects(c.bytes, c.len, "split", &err), "dst_len 0xFFFFFFFF rejected");
    MUTATE(set_be32(c.bytes + b0->comp_offset + 4, 0));
    CHECK(rejects(c.bytes, c.len, "zero", &err), "src_len 0 rejected");
    MUTATE(set_be32(c.bytes + b0->comp_offset + 4, BLK + 1));
    CHECK(rejects(c.bytes, c.len, "larger than", &err), "src_len > dst_len rejected");
    MUTATE(set_be32(c.bytes + b0->comp_offset, BLK - 1));
    CHECK(rejects(c.bytes, c.len, "block 0", &err), "decompressed length != dst_len rejected: %s", err.msg);
    MUTATE(set_be32(c.bytes + idx.blocks[4].comp_offset, 12346));
    CHECK(rejects(c.bytes, c.len, "decompressed to 12345 bytes but the block header says 12346", &err),
          "decompressed length short of dst_len rejected: %s", err.msg);
    MUTATE(set_be32(c.bytes + b1->comp_offset + 4, BLK - 1));
    CHECK(rejects(c.bytes, c.len, "block 1", &err), "stored block shortened rejected: %s", err.msg);

    /* truncation: every offset near structure, a stride through the data */
    int bad = 0, tried = 0;
    for (size_t cut = 0; cut < s.len; cut++) {
        int near = cut < 100 || s.len - cut < 40;
        for (size_t i = 0; i < idx.n_blocks && !near; i++)
            near = (cut >= idx.blocks[i].comp_offset && cut < idx.blocks[i].data_offset + 20);
        if (!near && cut % 1013 != 0)
            continue;
        tried++;
        if (!rejects(s.bytes, cut, "truncated", &err))
            bad++;
    }
    CHECK(bad == 0, "truncation at %d offsets of a multi-block stream rejected", tried);

    MUTATE(buf_put(&c, s.bytes, s.len));
    CHECK(rejects(c.bytes, c.len, "second lzop stream", &err), "two concatenated multi-block streams");

    /* header flag and field checks need a valid header checksum to be reached */
    const unsigned char *body = s.bytes + 38;
    size_t body_len = s.len - 38;
    hdr_spec w = {0x1040, 0x0940, 1, 5, 0x0300000D, 0, 0, NULL, NULL, 0, 0};
    make_stream(&w, body, body_len, &c);
    CHECK(same(&c, s.bytes, s.len), "test header builder reproduces our header");

    hdr_spec h = w;
    h.flags |= 0x4000;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "unknown header flags", &err), "reserved flag rejected: %s", err.msg);
    h = w;
    h.flags |= 0x800;
    h.filter = 1;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "F_H_FILTER", &err), "filter flag rejected: %s", err.msg);
    h = w;
    h.flags |= 0x400;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "F_MULTIPART", &err), "multipart flag rejected");
    h = w;
    h.method = 4;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "method 4", &err), "method 4 rejected");
    h = w;
    h.level = 10;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "level 10", &err), "level 10 rejected");
    h = w;
    h.version = 0x0800;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "version", &err), "format version 0x0800 rejected");
    h = w;
    h.version_needed = 0x1050;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "needs lzop 1.05", &err), "version_needed 0x1050 rejected: %s", err.msg);

    /* accepted variants */
    static const unsigned char extra[] = {1, 2, 3, 4, 5};
    struct {
        const char *what;
        hdr_spec h;
    } okv[] = {
        {"version 0x0900 (no version_needed/level/mtime_high)", {0x0900, 0, 1, 0, 0x03000001, 0, 0, NULL, NULL, 0, 0}},
        {"BusyBox header 0x1010 flags 0x03000001", {0x1010, 0x0940, 1, 5, 0x03000001, 0, 0, NULL, NULL, 0, 0}},
        {"CRC-32 header checksum", {0x1040, 0x1001, 1, 5, 0x0300100D, 0, 0, NULL, NULL, 0, 0}},
        {"name in header", {0x1040, 0x0940, 1, 5, 0x03000009, 0, 0100644, "dir/some-file.bin", NULL, 0, 0}},
        {"extra field (Adler-32)", {0x1040, 0x0940, 1, 5, 0x0300004D, 0, 0, NULL, extra, 5, 0}},
        {"extra field (CRC-32)", {0x1040, 0x0940, 1, 5, 0x0300104D, 0, 0, NULL, extra, 5, 0}},
        {"empty extra field", {0x1040, 0x0940, 1, 5, 0x0300004D, 0, 0, NULL, extra, 0, 0}},
        {"level 0", {0x1040, 0x0940, 1, 0, 0x0300000D, 0, 0, NULL, NULL, 0, 0}},
    };
    for (size_t i = 0; i < sizeof okv / sizeof okv[0]; i++) {
        make_stream(&okv[i].h, body, body_len, &c);
        rc = decode(c.bytes, c.len, 1, &dec, &err);
        int ok = rc == 0 && same(&dec, mixed->data, mixed->len);
        lzop_index ix = {0};
        rc = scan(c.bytes, c.len, 3, &ix, &err);
        ok = ok && rc == 0 && ix.n_blocks == 5 && ix.info.header_len == c.len - body_len;
        lzop_index_free(&ix);
        CHECK(ok, "accepts %s", okv[i].what);
    }
    h = okv[4].h;
    h.break_extra_sum = 1;
    make_stream(&h, body, body_len, &c);
    CHECK(rejects(c.bytes, c.len, "extra field checksum", &err), "bad extra field checksum rejected");
    h = okv[2].h;
    make_stream(&h, body, body_len, &c);
    c.bytes[20] ^= 1;
    CHECK(rejects(c.bytes, c.len, "CRC-32 stored", &err), "CRC-32 header checksum verified: %s", err.msg);

    /* scanner rejects what the decoder rejects in the structure */
    lzop_index ix = {0};
    CHECK(scan(s.bytes, s.len - 1, 0, &ix, &err) == -EIO && strstr(err.msg, "scan-object.lzo") &&
              strstr(err.msg, "truncated"),
          "scanner: truncated stream rejected: %s", err.msg);
    MUTATE(buf_put(&c, "junk", 4));
    CHECK(scan(c.bytes, c.len, 0, &ix, &err) == -EIO, "scanner: trailing garbage rejected");
    MUTATE(set_be32(c.bytes + b0->comp_offset + 4, BLK + 1));
    CHECK(scan(c.bytes, c.len, 0, &ix, &err) == -EIO, "scanner: src_len > dst_len rejected");

    /* lzop_decode_block verification */
    unsigned char *out = malloc(BLK);
    size_t raw0 = (size_t)(b0->data_offset + b0->comp_len - b0->comp_offset);
    MUTATE(c.bytes[b0->data_offset + 50] ^= 0x10);
    rc = lzop_decode_block(&idx.info, b0, c.bytes + b0->comp_offset, raw0, out, &err);
    CHECK(rc == -EIO && strstr(err.msg, "offset 38"), "decode_block: corrupt block rejected: %s", err.msg);
    size_t raw1 = (size_t)(b1->data_offset + b1->comp_len - b1->comp_offset);
    MUTATE(c.bytes[b1->data_offset + 50] ^= 0x10);
    rc = lzop_decode_block(&idx.info, b1, c.bytes + b1->comp_offset, raw1, out, &err);
    CHECK(rc == -EIO && strstr(err.msg, "Adler-32"), "decode_block: corrupt stored block rejected");
    rc = lzop_decode_block(&idx.info, b0, s.bytes + b0->comp_offset, raw0 - 1, out, &err);
    CHECK(rc == -EIO, "decode_block: short raw buffer rejected");
    rc = lzop_decode_block(&idx.info, b1, s.bytes + b0->comp_offset, raw1, out, &err);
    CHECK(rc == -EIO && strstr(err.msg, "index"), "decode_block: wrong block for the index rejected");
    rc = lzop_decode_block(&idx.info, b1, s.bytes + b1->comp_offset, raw1, out, &err);
    CHECK(rc == 0 && memcmp(out, mixed->data + BLK, BLK) == 0, "decode_block: intact stored block decodes");
    free(out);
#undef MUTATE
    lzop_index_free(&idx);
    buf_free(&s);
    buf_free(&c);
    buf_free(&dec);
}

/* Compressed-data checksums from lzop --crc32 / -C -C are verified. */
static void test_lzop_checksums(const input *mixed)
{
    char pin[128], pv[128];
    tpath(pin, sizeof pin, "mixed.bin");
    tpath(pv, sizeof pv, "mixed.lzo");
    write_file(pin, mixed->data, mixed->len);
    walfs_err err = {0};
    walfs_buf s = {0}, c = {0};
    static const struct {
        const char *opts, *needle_c, *needle_d;
    } v[] = {
        {"-C -C", "Adler-32 of compressed data mismatch", "Adler-32 of stored"},
        {"--crc32 -C -C", "CRC-32 of compressed data mismatch", "CRC-32 of stored"},
    };
    for (size_t i = 0; i < 2; i++) {
        int ok = run("lzop -c %s < %s > %s", v[i].opts, pin, pv) == 0 && read_file(pv, &s) == 0;
        lzop_index idx = {0};
        int rc = ok ? scan(s.bytes, s.len, 0, &idx, &err) : -1;
        CHECK(rc == 0 && idx.n_blocks == 5, "[lzop %s] scanned", v[i].opts);
        if (rc)
            continue;
        unsigned char *all = malloc(mixed->len);
        rc = index_decode_all(s.bytes, s.len, &idx, all, &err);
        CHECK(rc == 0 && memcmp(all, mixed->data, mixed->len) == 0,
              "[lzop %s] every block decodes independently", v[i].opts);
        free(all);
        c.len = 0;
        buf_put(&c, s.bytes, s.len);
        c.bytes[idx.blocks[0].data_offset + 7] ^= 0x04;
        CHECK(rejects(c.bytes, c.len, v[i].needle_c, &err), "[lzop %s] corrupt compressed data: %s",
              v[i].opts, err.msg);
        c.len = 0;
        buf_put(&c, s.bytes, s.len);
        c.bytes[idx.blocks[1].data_offset + 7] ^= 0x04;
        CHECK(rejects(c.bytes, c.len, v[i].needle_d, &err), "[lzop %s] corrupt stored data: %s", v[i].opts,
              err.msg);
        lzop_index_free(&idx);
    }
    remove(pin);
    remove(pv);
    buf_free(&s);
    buf_free(&c);
}

static void test_scanner_ours(const input *mixed)
{
    walfs_err err = {0};
    walfs_buf s = {0};
    encode(mixed->data, mixed->len, 0100600, 1700000000, 0, &s, &err);
    for (size_t chunk = 0; chunk <= 1; chunk++) {
        lzop_index idx = {0};
        int rc = scan(s.bytes, s.len, chunk, &idx, &err);
        CHECK(rc == 0 && idx.uncomp_size == mixed->len && idx.comp_size == s.len &&
                  idx.info.flags == 0x0300000D && idx.info.method == 1 && idx.info.header_len == 38,
              "scanner on our stream (%s feeds): sizes and info", chunk ? "1-byte" : "one");
        unsigned char *all = malloc(mixed->len);
        rc = rc ? rc : index_decode_all(s.bytes, s.len, &idx, all, &err);
        CHECK(rc == 0 && memcmp(all, mixed->data, mixed->len) == 0,
              "scanner on our stream: blocks contiguous and decode independently");
        free(all);
        lzop_index_free(&idx);
    }
    buf_free(&s);
}

static void test_fixture_scan(void)
{
    walfs_err err = {0};
    walfs_buf f = {0};
    int ok = read_file(FIXTURE_DIR "/pgdb/wal_005/000000010000000000000003.lzo", &f) == 0;
    CHECK(ok && f.len == 259221, "fixture segment 3 read (%zu bytes)", f.len);
    if (!ok)
        return;
    lzop_index idx = {0};
    int rc = scan(f.bytes, f.len, 1000, &idx, &err);
    CHECK(rc == 0 && idx.n_blocks == 64 && idx.uncomp_size == 16777216 && idx.comp_size == f.len &&
              idx.info.flags == 0x0300000D && idx.info.header_len == 38,
          "fixture segment 3: 64 blocks, 16 MiB, flags 0x0300000D %s", rc ? err.msg : "");
    unsigned char *all = malloc(16777216);
    rc = rc ? rc : index_decode_all(f.bytes, f.len, &idx, all, &err);
    char hex[65] = "";
    if (rc == 0)
        sha256_hex(all, 16777216, hex);
    CHECK(rc == 0 && strcmp(hex, "47b7f50d98c503395bd2319a2fecabb357ec379d3e70b43a2d0162fcba596709") == 0,
          "fixture segment 3: blocks decoded one by one give the MANIFEST sha256");
    /* the last block first: random access needs no earlier state */
    const lzop_block *last = &idx.blocks[idx.n_blocks - 1];
    unsigned char *one = malloc(BLK);
    rc = lzop_decode_block(&idx.info, last, f.bytes + last->comp_offset,
                           (size_t)(last->data_offset + last->comp_len - last->comp_offset), one, &err);
    CHECK(rc == 0 && memcmp(one, all + last->uncomp_offset, last->uncomp_len) == 0,
          "fixture segment 3: last block decodes on its own");
    free(one);
    free(all);
    lzop_index_free(&idx);
    buf_free(&f);
}

typedef struct hash_sink {
    EVP_MD_CTX *md;
    uint64_t n;
} hash_sink;

static int hash_write(void *ctx, const void *d, size_t n)
{
    hash_sink *h = ctx;
    EVP_DigestUpdate(h->md, d, n);
    h->n += n;
    return 0;
}

static void test_fixtures_manifest(void)
{
    FILE *m = fopen(FIXTURE_DIR "/MANIFEST.txt", "r");
    CHECK(m != NULL, "fixture MANIFEST.txt opened (run from the repository root)");
    if (!m)
        return;
    char line[4096];
    int n_lzo = 0;
    while (fgets(line, sizeof line, m)) {
        char key[1024], osha[65], dsha[65];
        unsigned long long osize, dsize;
        if (line[0] == '#' ||
            sscanf(line, "%1023[^\t]\t%llu\t%64[0-9a-f]\t%llu\t%64[0-9a-f]", key, &osize, osha, &dsize,
                   dsha) != 5)
            continue;
        n_lzo++;
        char path[1200];
        snprintf(path, sizeof path, FIXTURE_DIR "/%s", key);
        walfs_buf f = {0};
        walfs_err err = {0};
        int rc = read_file(path, &f);
        hash_sink h = {EVP_MD_CTX_new(), 0};
        EVP_DigestInit_ex(h.md, EVP_sha256(), NULL);
        lzop_decoder *dec = lzop_decoder_new(key);
        for (size_t off = 0; rc == 0 && off < f.len; off += 65536)
            rc = lzop_decoder_feed(dec, f.bytes + off, f.len - off < 65536 ? f.len - off : 65536, hash_write,
                                   &h, &err);
        if (rc == 0)
            rc = lzop_decoder_finish(dec, &err);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        EVP_DigestFinal_ex(h.md, md, &mdlen);
        char hex[65];
        hex_encode(md, 32, hex);
        CHECK(rc == 0 && h.n == dsize && strcmp(hex, dsha) == 0, "fixture %s: %llu bytes, sha256 matches",
              key, dsize);
        lzop_decoder_free(dec);
        EVP_MD_CTX_free(h.md);
        buf_free(&f);
    }
    fclose(m);
    CHECK(n_lzo == 7, "all 7 .lzo fixture objects checked");
}

/* Records made ahead of the stream (lzop_block_encode) spliced into it
 * after lzop_encoder_flush: the result decodes, with lzop too, to the bytes
 * in their order; damaged records are refused, never decoded to garbage. */
static void test_records(const input *mixed)
{
    walfs_err err;
    walfs_buf enc = {0}, dec = {0}, want = {0};
    lzop_encoder *e = lzop_encoder_new(0, 0);
    lzop_block_encoder *be = lzop_block_encoder_new();
    const unsigned char *rec;
    size_t rec_len;
    int ok = e && be;
    ok = ok && lzop_encoder_write(e, "head ", 5, (lzop_sink_fn)buf_sink, &enc, &err) == 0;
    buf_put(&want, "head ", 5);
    ok = ok && lzop_encoder_flush(e, (lzop_sink_fn)buf_sink, &enc, &err) == 0;
    /* a full block, a short one and a block that does not shrink */
    size_t cuts[] = {BLK, 1000, BLK};
    size_t at = 0;
    for (size_t i = 0; ok && i < 3; i++) {
        ok = lzop_block_encode(be, mixed->data + at, cuts[i], &rec, &rec_len, &err) == 0 &&
             lzop_encoder_write_records(e, rec, rec_len, (lzop_sink_fn)buf_sink, &enc, &err) == 0;
        buf_put(&want, mixed->data + at, cuts[i]);
        at += cuts[i];
    }
    ok = ok && lzop_encoder_write(e, " tail", 5, (lzop_sink_fn)buf_sink, &enc, &err) == 0 &&
         lzop_encoder_finish(e, (lzop_sink_fn)buf_sink, &enc, &err) == 0;
    buf_put(&want, " tail", 5);
    CHECK(ok, "records spliced into a stream after a flush (%s)", ok ? "" : err.msg);
    CHECK(ok && decode(enc.bytes, enc.len, 4096, &dec, &err) == 0 && same(&dec, want.bytes, want.len),
          "our decoder reads the stream with short blocks in the middle");
    char in[256], out[256];
    tpath(in, sizeof in, "records.lzo");
    tpath(out, sizeof out, "records.out");
    walfs_buf got = {0};
    CHECK(write_file(in, enc.bytes, enc.len) == 0 && run("lzop -t -q '%s'", in) == 0 &&
              run("lzop -dc '%s' > '%s'", in, out) == 0 && read_file(out, &got) == 0 &&
              same(&got, want.bytes, want.len),
          "lzop 1.04 tests and decodes it to the same bytes");
    unlink(in);
    unlink(out);
    buf_free(&got);

    /* one record decoded alone; then damaged */
    unsigned char *plain = malloc(BLK);
    ok = lzop_block_encode(be, mixed->data, BLK, &rec, &rec_len, &err) == 0;
    unsigned char *copy = malloc(rec_len);
    memcpy(copy, rec, rec_len);
    CHECK(ok && lzop_record_decode(copy, rec_len, plain, &err) == 0 &&
              memcmp(plain, mixed->data, BLK) == 0, "a record decodes alone");
    copy[rec_len / 2] ^= 0x55;
    CHECK(lzop_record_decode(copy, rec_len, plain, &err) == -EIO,
          "a damaged record is refused: %s", err.msg);
    copy[rec_len / 2] ^= 0x55;
    CHECK(lzop_record_decode(copy, rec_len - 1, plain, &err) == -EIO,
          "a truncated record is refused: %s", err.msg);
    set_be32(copy, BLK + 1);
    uint32_t ul, pl;
    CHECK(lzop_record_lengths(copy, &ul, &pl, &err) == -EIO,
          "impossible lengths are refused: %s", err.msg);
    CHECK(lzop_block_encode(be, mixed->data, 0, &rec, &rec_len, &err) == -EINVAL &&
              lzop_block_encode(be, mixed->data, BLK + 1, &rec, &rec_len, &err) == -EINVAL,
          "block sizes outside 1..256 KiB are refused");
    /* records over a partial block would corrupt the stream: refused */
    lzop_encoder *e2 = lzop_encoder_new(0, 0);
    walfs_buf junk = {0};
    int refused = lzop_encoder_write(e2, "x", 1, (lzop_sink_fn)buf_sink, &junk, &err) == 0 &&
                  lzop_encoder_write_records(e2, copy, rec_len, (lzop_sink_fn)buf_sink, &junk,
                                             &err) == -EINVAL;
    CHECK(refused, "records written over a pending partial block are refused");
    lzop_encoder_free(e2);
    buf_free(&junk);
    free(copy);
    free(plain);
    lzop_encoder_free(e);
    lzop_block_encoder_free(be);
    buf_free(&enc);
    buf_free(&dec);
    buf_free(&want);
}

int main(void)
{
    strcpy(tmpdir, "/tmp/test_lzop.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    CHECK(run("lzop --version > /dev/null 2>&1") == 0, "lzop binary available");

    unsigned char *rnd = malloc(600000), *wal = malloc(16u << 20), *mixed = malloc(4 * BLK + 12345),
                  *text = malloc(3 * BLK);
    fill_random(rnd, 600000);
    fill_wal(wal, 16u << 20);
    fill_text(text, 3 * BLK, 1);
    fill_text(mixed, BLK, 1);
    fill_random(mixed + BLK, BLK);
    fill_text(mixed + 2 * BLK, BLK, 50000);
    fill_random(mixed + 3 * BLK, BLK);
    fill_text(mixed + 4 * BLK, 12345, 90000);

    input inputs[] = {
        {"empty", (unsigned char *)"", 0},
        {"small", (unsigned char *)hello, 36},
        {"random 600000", rnd, 600000},
        {"text 3 blocks", text, 3 * BLK},
        {"mixed 4 blocks + 12345", mixed, 4 * BLK + 12345},
        {"WAL-like 16 MiB", wal, 16u << 20},
    };
    input mixed_in = inputs[4];

    test_vector();
    test_sink_errors();
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++)
        test_against_lzop(&inputs[i]);
    test_corruption(&mixed_in);
    test_lzop_checksums(&mixed_in);
    test_scanner_ours(&mixed_in);
    test_records(&mixed_in);
    test_fixture_scan();
    test_fixtures_manifest();

    free(rnd);
    free(wal);
    free(mixed);
    free(text);
    CHECK(rmdir(tmpdir) == 0, "temporary directory %s left empty and removed", tmpdir);
    return test_summary();
}
