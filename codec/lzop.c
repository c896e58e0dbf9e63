/* lzop stream encoder, decoder and block scanner (format: docs wal-e-format.md §3). */
#include "codec/lzop.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <isa-l/igzip_lib.h>
#include <lzo/lzo1x.h>

#define F_ADLER32_D     0x00000001u
#define F_ADLER32_C     0x00000002u
#define F_STDIN         0x00000004u
#define F_STDOUT        0x00000008u
#define F_H_EXTRA_FIELD 0x00000040u
#define F_CRC32_D       0x00000100u
#define F_CRC32_C       0x00000200u
#define F_MULTIPART     0x00000400u
#define F_H_FILTER      0x00000800u
#define F_H_CRC32       0x00001000u
#define F_OS_UNIX       0x03000000u
/* Bits lzop 1.04 itself refuses ("unknown header flags"). */
#define F_RESERVED      0x000FC000u

#define ADLER32_INIT 1u
#define CRC32_INIT   0u

/* What lzop 1.04 writes; also the newest version_needed it can extract. */
#define LZOP_VERSION          0x1040u
#define LZOP_VERSION_NEEDED   0x0940u
#define LZOP_METHOD_LZO1X_1   1u
#define LZOP_LEVEL_DEFAULT    5u
#define WALE_FLAGS (F_OS_UNIX | F_STDOUT | F_STDIN | F_ADLER32_D)

/* lzop's own sanity limit: anything above is a corrupt length field. */
#define LZOP_MAX_DST_LEN (64u * 1024u * 1024u)

/* magic + version..name_len with an empty name + header checksum */
#define WALE_HEADER_LEN (9 + 25 + 4)
#define BLOCK_HDR_MAX (4 + 4 + 4 * 4)

#define CORRUPT_HINT "the object is corrupt; restore it from another copy"
#define TRUNC_HINT "the object is incomplete (truncated upload or short read); restore it from another copy"

static const unsigned char lzop_magic[9] = {0x89, 0x4C, 0x5A, 0x4F, 0x00, 0x0D, 0x0A, 0x1A, 0x0A};

/* ---- shared helpers ---- */

static pthread_once_t lzo_once = PTHREAD_ONCE_INIT;
static int lzo_init_rc = LZO_E_ERROR;

static void lzo_init_once(void)
{
    lzo_init_rc = lzo_init();
}

/* lzo_init checks that the library was built with the same type sizes as we
 * were; calling it concurrently from several threads is not documented safe. */
static int lzo_ready(walfs_err *err)
{
    pthread_once(&lzo_once, lzo_init_once);
    if (lzo_init_rc != LZO_E_OK)
        return walfs_err_set(err, -EIO,
                             "lzo_init() failed (%d): liblzo2 does not match the headers walfs was "
                             "built with; rebuild walfs against the installed liblzo2",
                             lzo_init_rc);
    return 0;
}

static void put_be16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be16(const unsigned char *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ISA-L's Adler-32 is the same function as liblzo2's, about six times as
 * fast (SIMD): every byte of every WAL segment and backup passes it. */
static uint32_t adler32(uint32_t init, const void *p, size_t n)
{
    return isal_adler32(init, p, n);
}

static uint32_t crc32(uint32_t init, const void *p, size_t n)
{
    return (uint32_t)lzo_crc32(init, (const lzo_bytep)p, (lzo_uint)n);
}

/* The sink may fill err itself (e.g. a FUSE read buffer that went away); we
 * only supply a message when it did not, and leave err untouched on success. */
static int call_sink(lzop_sink_fn sink, void *ctx, const void *p, size_t n, const char *who,
                     walfs_err *err)
{
    if (n == 0)
        return 0;
    int saved = err ? err->code : 0;
    if (err)
        err->code = 0;
    int rc = sink(ctx, p, n);
    if (rc >= 0) {
        if (err && err->code == 0)
            err->code = saved;
        return 0;
    }
    if (err && err->code == 0)
        walfs_err_set(err, rc, "%s: the consumer of the lzop output failed: %s", who,
                      strerror(-rc));
    return rc;
}

/* ---- encoder ---- */

struct lzop_encoder {
    uint32_t mode;
    int64_t mtime;
    int header_done;
    int finished;
    int failed;             /* sticky negative errno after a sink failure */
    size_t fill;
    unsigned char *in;      /* one block of pending input */
    unsigned char *out;     /* block header + worst-case compressed block */
    void *wrk;
};

lzop_encoder *lzop_encoder_new(uint32_t mode, int64_t mtime)
{
    if (lzo_ready(NULL) != 0)
        return NULL;
    lzop_encoder *enc = calloc(1, sizeof *enc);
    if (!enc)
        return NULL;
    enc->mode = mode;
    enc->mtime = mtime;
    enc->in = malloc(LZOP_BLOCK_SIZE);
    enc->out = malloc(LZOP_RECORD_MAX);
    enc->wrk = malloc(LZO1X_1_MEM_COMPRESS);
    if (!enc->in || !enc->out || !enc->wrk) {
        lzop_encoder_free(enc);
        return NULL;
    }
    return enc;
}

void lzop_encoder_free(lzop_encoder *enc)
{
    if (!enc)
        return;
    free(enc->in);
    free(enc->out);
    free(enc->wrk);
    free(enc);
}

size_t lzop_max_compressed_size(uint64_t n)
{
    /* The stored-block rule caps every block at its input size plus its
     * 12-byte header, so the bound is exact rather than LZO's worst case. */
    uint64_t blocks = (n + LZOP_BLOCK_SIZE - 1) / LZOP_BLOCK_SIZE;
    return (size_t)(WALE_HEADER_LEN + blocks * 12 + n + 4);
}

static int enc_emit_header(lzop_encoder *enc, lzop_sink_fn sink, void *ctx, walfs_err *err)
{
    unsigned char h[WALE_HEADER_LEN];
    unsigned char *p = h;
    memcpy(p, lzop_magic, sizeof lzop_magic);
    p += sizeof lzop_magic;
    put_be16(p, LZOP_VERSION);
    put_be16(p + 2, lzo_version() & 0xFFFFu);
    put_be16(p + 4, LZOP_VERSION_NEEDED);
    p[6] = LZOP_METHOD_LZO1X_1;
    p[7] = LZOP_LEVEL_DEFAULT;
    put_be32(p + 8, WALE_FLAGS);
    put_be32(p + 12, enc->mode);
    uint64_t mt = (uint64_t)enc->mtime;
    put_be32(p + 16, (uint32_t)mt);
    put_be32(p + 20, (uint32_t)(mt >> 32));
    p[24] = 0; /* name length: WAL-E pipes through stdin, so no name */
    put_be32(p + 25, adler32(ADLER32_INIT, p, 25));
    int rc = call_sink(sink, ctx, h, sizeof h, "lzop encoder", err);
    if (rc == 0)
        enc->header_done = 1;
    return rc;
}

/* One block record as lzop -c writes it with WAL-E's flags: lengths,
 * Adler-32 of the data, then the compressed bytes, or the raw bytes when
 * compression does not shrink them.  out holds LZOP_RECORD_MAX bytes. */
static int compress_record(const unsigned char *data, size_t n, unsigned char *out, void *wrk,
                           size_t *rec_len, walfs_err *err)
{
    lzo_uint clen = 0;
    int r = lzo1x_1_compress(data, (lzo_uint)n, out + LZOP_RECORD_HEADER_LEN, &clen, wrk);
    if (r != LZO_E_OK)
        return walfs_err_set(err, -EIO, "lzop encoder: lzo1x_1_compress failed (%d); this is a bug "
                             "in liblzo2 or walfs, please report it", r);
    uint32_t src_len = (uint32_t)n;
    if (clen < n)
        src_len = (uint32_t)clen;
    else
        memcpy(out + LZOP_RECORD_HEADER_LEN, data, n); /* lzop stores blocks that do not shrink */
    put_be32(out, (uint32_t)n);
    put_be32(out + 4, src_len);
    put_be32(out + 8, adler32(ADLER32_INIT, data, n));
    *rec_len = LZOP_RECORD_HEADER_LEN + (size_t)src_len;
    return 0;
}

static int enc_emit_block(lzop_encoder *enc, const unsigned char *data, size_t n, lzop_sink_fn sink,
                          void *ctx, walfs_err *err)
{
    size_t len = 0;
    int rc = compress_record(data, n, enc->out, enc->wrk, &len, err);
    return rc ? rc : call_sink(sink, ctx, enc->out, len, "lzop encoder", err);
}

static int enc_begin(lzop_encoder *enc, lzop_sink_fn sink, void *ctx, walfs_err *err)
{
    if (enc->failed)
        return walfs_err_set(err, enc->failed,
                             "lzop encoder: an earlier write failed; the output is incomplete, start over");
    if (enc->finished)
        return walfs_err_set(err, -EINVAL,
                             "lzop encoder: used after lzop_encoder_finish (bug in the caller)");
    if (!enc->header_done)
        return enc_emit_header(enc, sink, ctx, err);
    return 0;
}

int lzop_encoder_write(lzop_encoder *enc, const void *data, size_t len, lzop_sink_fn sink, void *ctx,
                       walfs_err *err)
{
    int rc = enc_begin(enc, sink, ctx, err);
    const unsigned char *p = data;
    while (rc == 0 && len > 0) {
        if (enc->fill == 0 && len >= LZOP_BLOCK_SIZE) {
            /* whole block available in the caller's buffer: skip the copy */
            rc = enc_emit_block(enc, p, LZOP_BLOCK_SIZE, sink, ctx, err);
            p += LZOP_BLOCK_SIZE;
            len -= LZOP_BLOCK_SIZE;
            continue;
        }
        size_t take = LZOP_BLOCK_SIZE - enc->fill;
        if (take > len)
            take = len;
        memcpy(enc->in + enc->fill, p, take);
        enc->fill += take;
        p += take;
        len -= take;
        if (enc->fill == LZOP_BLOCK_SIZE) {
            rc = enc_emit_block(enc, enc->in, enc->fill, sink, ctx, err);
            enc->fill = 0;
        }
    }
    if (rc < 0)
        enc->failed = rc;
    return rc;
}

int lzop_encoder_finish(lzop_encoder *enc, lzop_sink_fn sink, void *ctx, walfs_err *err)
{
    int rc = lzop_encoder_flush(enc, sink, ctx, err);
    if (rc == 0) {
        static const unsigned char end_marker[4] = {0, 0, 0, 0};
        rc = call_sink(sink, ctx, end_marker, sizeof end_marker, "lzop encoder", err);
    }
    if (rc < 0)
        enc->failed = rc;
    else
        enc->finished = 1;
    return rc;
}

int lzop_encoder_flush(lzop_encoder *enc, lzop_sink_fn sink, void *ctx, walfs_err *err)
{
    int rc = enc_begin(enc, sink, ctx, err);
    if (rc == 0 && enc->fill > 0) {
        rc = enc_emit_block(enc, enc->in, enc->fill, sink, ctx, err);
        enc->fill = 0;
    }
    if (rc < 0)
        enc->failed = rc;
    return rc;
}

int lzop_encoder_write_records(lzop_encoder *enc, const void *records, size_t len,
                               lzop_sink_fn sink, void *ctx, walfs_err *err)
{
    int rc = enc_begin(enc, sink, ctx, err);
    if (rc == 0 && enc->fill > 0)
        rc = walfs_err_set(err, -EINVAL, "lzop encoder: records written over a partial block "
                           "(bug in the caller: lzop_encoder_flush first)");
    if (rc == 0)
        rc = call_sink(sink, ctx, records, len, "lzop encoder", err);
    if (rc < 0)
        enc->failed = rc;
    return rc;
}

/* ---- single block records ---- */

struct lzop_block_encoder {
    unsigned char *out;
    void *wrk;
};

lzop_block_encoder *lzop_block_encoder_new(void)
{
    if (lzo_ready(NULL) != 0)
        return NULL;
    lzop_block_encoder *be = calloc(1, sizeof *be);
    if (!be)
        return NULL;
    be->out = malloc(LZOP_RECORD_MAX);
    be->wrk = malloc(LZO1X_1_MEM_COMPRESS);
    if (!be->out || !be->wrk) {
        lzop_block_encoder_free(be);
        return NULL;
    }
    return be;
}

void lzop_block_encoder_free(lzop_block_encoder *be)
{
    if (!be)
        return;
    free(be->out);
    free(be->wrk);
    free(be);
}

int lzop_block_encode(lzop_block_encoder *be, const void *data, size_t n,
                      const unsigned char **record, size_t *record_len, walfs_err *err)
{
    if (n == 0 || n > LZOP_BLOCK_SIZE)
        return walfs_err_set(err, -EINVAL, "lzop block encoder: %zu bytes is not a block size "
                             "(1..%u; bug in the caller)", n, LZOP_BLOCK_SIZE);
    int rc = compress_record(data, n, be->out, be->wrk, record_len, err);
    if (rc == 0)
        *record = be->out;
    return rc;
}

int lzop_record_lengths(const unsigned char header[LZOP_RECORD_HEADER_LEN], uint32_t *uncomp_len,
                        uint32_t *payload_len, walfs_err *err)
{
    uint32_t dst_len = get_be32(header), src_len = get_be32(header + 4);
    if (dst_len == 0 || dst_len > LZOP_BLOCK_SIZE || src_len == 0 || src_len > dst_len)
        return walfs_err_set(err, -EIO, "lzop block record: lengths %" PRIu32 "/%" PRIu32
                             " (uncompressed/stored) are impossible; the spooled data is damaged",
                             dst_len, src_len);
    *uncomp_len = dst_len;
    *payload_len = src_len;
    return 0;
}

int lzop_record_decode(const void *record, size_t record_len, void *out, walfs_err *err)
{
    uint32_t dst_len, src_len;
    if (record_len < LZOP_RECORD_HEADER_LEN)
        return walfs_err_set(err, -EIO, "lzop block record: %zu bytes is shorter than its header",
                             record_len);
    int rc = lzop_record_lengths(record, &dst_len, &src_len, err);
    if (rc)
        return rc;
    if (record_len != LZOP_RECORD_HEADER_LEN + (size_t)src_len)
        return walfs_err_set(err, -EIO, "lzop block record: %zu bytes, its header says %zu",
                             record_len, LZOP_RECORD_HEADER_LEN + (size_t)src_len);
    lzop_stream_info info = {.flags = WALE_FLAGS, .method = LZOP_METHOD_LZO1X_1,
                             .header_len = WALE_HEADER_LEN};
    lzop_block blk = {.comp_offset = 0, .data_offset = LZOP_RECORD_HEADER_LEN, .comp_len = src_len,
                      .uncomp_len = dst_len, .uncomp_offset = 0};
    return lzop_decode_block(&info, &blk, record, record_len, out, err);
}

/* ---- block verification shared by the decoder and lzop_decode_block ---- */

typedef struct blk_sums {
    uint32_t d_adler, d_crc, c_adler, c_crc;
} blk_sums;

/* Number of 4-byte checksums following src_len; compressed-data checksums are
 * omitted for stored blocks (lzop takes them to equal the data checksums). */
static unsigned n_block_sums(uint32_t flags, uint32_t src_len, uint32_t dst_len)
{
    unsigned n = !!(flags & F_ADLER32_D) + !!(flags & F_CRC32_D);
    if (src_len < dst_len)
        n += !!(flags & F_ADLER32_C) + !!(flags & F_CRC32_C);
    return n;
}

static void parse_block_sums(uint32_t flags, uint32_t src_len, uint32_t dst_len,
                             const unsigned char *p, blk_sums *s)
{
    memset(s, 0, sizeof *s);
    if (flags & F_ADLER32_D) {
        s->d_adler = get_be32(p);
        p += 4;
    }
    if (flags & F_CRC32_D) {
        s->d_crc = get_be32(p);
        p += 4;
    }
    if (src_len < dst_len) {
        if (flags & F_ADLER32_C) {
            s->c_adler = get_be32(p);
            p += 4;
        }
        if (flags & F_CRC32_C)
            s->c_crc = get_be32(p);
    }
}

/* Rejects length fields the way lzop 1.04 does, before anything is buffered. */
static int check_lengths(const char *who, const char *where, uint32_t dst_len, uint32_t src_len,
                         int have_src, walfs_err *err)
{
    if (dst_len == 0xFFFFFFFFu)
        return walfs_err_set(err, -EIO, "%s: %s: block length 0xFFFFFFFF marks a split (multi-volume) "
                             "lzop file, which WAL-E never writes; %s", who, where, CORRUPT_HINT);
    if (dst_len > LZOP_MAX_DST_LEN)
        return walfs_err_set(err, -EIO, "%s: %s: uncompressed block length %" PRIu32
                             " exceeds lzop's 64 MiB sanity limit; %s", who, where, dst_len,
                             CORRUPT_HINT);
    if (dst_len > LZOP_BLOCK_SIZE)
        return walfs_err_set(err, -EIO, "%s: %s: uncompressed block length %" PRIu32
                             " exceeds the 262144-byte blocks that lzop 1.04 (and WAL-E's wal-fetch) "
                             "can read; the object was not written by WAL-E or is corrupt; "
                             "recompress it with `lzop -c`", who, where, dst_len);
    if (have_src && (src_len == 0 || src_len > dst_len))
        return walfs_err_set(err, -EIO, "%s: %s: stored length %" PRIu32
                             " is %s the uncompressed length %" PRIu32 "; %s", who, where, src_len,
                             src_len == 0 ? "zero, with" : "larger than", dst_len, CORRUPT_HINT);
    return 0;
}

/* Verifies and decompresses one block payload; *result points either at src
 * (stored block) or at out. */
static int verify_block(const char *who, const char *where, uint32_t flags, const blk_sums *s,
                        const unsigned char *src, uint32_t src_len, uint32_t dst_len,
                        unsigned char *out, const unsigned char **result, walfs_err *err)
{
    const unsigned char *data = src;
    if (src_len < dst_len) {
        /* Checking the compressed bytes first pins corruption on the
         * payload rather than on the decompressor's complaint. */
        if (flags & F_ADLER32_C) {
            uint32_t got = adler32(ADLER32_INIT, src, src_len);
            if (got != s->c_adler)
                return walfs_err_set(err, -EIO, "%s: %s: Adler-32 of compressed data mismatch "
                                     "(stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 "); %s", who,
                                     where, s->c_adler, got, CORRUPT_HINT);
        }
        if (flags & F_CRC32_C) {
            uint32_t got = crc32(CRC32_INIT, src, src_len);
            if (got != s->c_crc)
                return walfs_err_set(err, -EIO, "%s: %s: CRC-32 of compressed data mismatch "
                                     "(stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 "); %s", who,
                                     where, s->c_crc, got, CORRUPT_HINT);
        }
        lzo_uint got_len = dst_len;
        int r = lzo1x_decompress_safe(src, src_len, out, &got_len, NULL);
        if (r != LZO_E_OK)
            return walfs_err_set(err, -EIO, "%s: %s: LZO1X decompression failed (liblzo2 error %d): "
                                 "the compressed data is invalid; %s", who, where, r, CORRUPT_HINT);
        if (got_len != dst_len)
            return walfs_err_set(err, -EIO, "%s: %s: decompressed to %lu bytes but the block header "
                                 "says %" PRIu32 "; %s", who, where, (unsigned long)got_len, dst_len,
                                 CORRUPT_HINT);
        data = out;
    }
    if (flags & F_ADLER32_D) {
        uint32_t got = adler32(ADLER32_INIT, data, dst_len);
        if (got != s->d_adler)
            return walfs_err_set(err, -EIO, "%s: %s: Adler-32 of %s data mismatch (stored 0x%08" PRIx32
                                 ", computed 0x%08" PRIx32 "); %s", who, where,
                                 data == src ? "stored (uncompressed)" : "decompressed", s->d_adler,
                                 got, CORRUPT_HINT);
    }
    if (flags & F_CRC32_D) {
        uint32_t got = crc32(CRC32_INIT, data, dst_len);
        if (got != s->d_crc)
            return walfs_err_set(err, -EIO, "%s: %s: CRC-32 of %s data mismatch (stored 0x%08" PRIx32
                                 ", computed 0x%08" PRIx32 "); %s", who, where,
                                 data == src ? "stored (uncompressed)" : "decompressed", s->d_crc, got,
                                 CORRUPT_HINT);
    }
    *result = data;
    return 0;
}

/* ---- stream reader shared by the decoder and the scanner ---- */

enum rd_state {
    RD_MAGIC,
    RD_HDR1,        /* version, lib_version */
    RD_HDR2,        /* [version_needed] method [level] flags */
    RD_HDR3,        /* [filter] mode mtime_low [mtime_high] name_len */
    RD_NAME,
    RD_HCSUM,
    RD_EXTRA_LEN,
    RD_EXTRA_DATA,
    RD_EXTRA_CSUM,
    RD_BLK_DST,
    RD_BLK_SRC,
    RD_BLK_SUMS,
    RD_BLK_DATA,
    RD_TRAILER,
};

typedef struct reader {
    char *who;              /* object name for messages */
    int scan_only;
    enum rd_state state;
    int failed;             /* sticky negative errno */
    uint64_t off;           /* stream offset of the next input byte */

    unsigned char fbuf[256]; /* field accumulator: the largest field is the name */
    size_t fneed, fhave;

    uint32_t hsum_adler, hsum_crc;  /* running header (or extra field) checksums */
    uint32_t version, version_needed, flags, extra_left;
    unsigned method, level;
    uint64_t header_len;

    uint64_t blk_no, blk_off, uncomp_off;
    uint32_t dst_len, src_len, data_have;
    blk_sums sums;

    unsigned char *cbuf;    /* decoder: payload split across feeds */
    unsigned char *obuf;    /* decoder: decompressed block */
    uint64_t total_out;

    uint64_t end_off;       /* offset just past the end marker */
    uint64_t trail_zeros;
    size_t trail_magic;     /* bytes of a second magic matched right after the end marker */

    lzop_block *blocks;     /* scanner */
    size_t n_blocks, cap_blocks;
} reader;

static int reader_init(reader *r, const char *name, int scan_only)
{
    memset(r, 0, sizeof *r);
    r->who = strdup(name ? name : "lzop stream");
    if (!r->who)
        return -1;
    r->scan_only = scan_only;
    r->state = RD_MAGIC;
    r->fneed = sizeof lzop_magic;
    if (!scan_only) {
        r->cbuf = malloc(LZOP_BLOCK_SIZE);
        r->obuf = malloc(LZOP_BLOCK_SIZE);
        if (!r->cbuf || !r->obuf)
            return -1;
    }
    return 0;
}

static void reader_fini(reader *r)
{
    free(r->who);
    free(r->cbuf);
    free(r->obuf);
    free(r->blocks);
}

static void expect(reader *r, enum rd_state st, size_t n)
{
    r->state = st;
    r->fneed = n;
    r->fhave = 0;
}

static void enter_blocks(reader *r)
{
    if (r->header_len == 0)
        r->header_len = r->off;
    expect(r, RD_BLK_DST, 4);
}

static void block_where(const reader *r, char *buf, size_t size)
{
    snprintf(buf, size, "block %" PRIu64 " at offset %" PRIu64, r->blk_no, r->blk_off);
}

static int hdr_corrupt(reader *r, walfs_err *err, const char *what)
{
    return walfs_err_set(err, -EIO, "%s: lzop header: %s; %s", r->who, what, CORRUPT_HINT);
}

/* Validates the header fields once its checksum has vouched for them, so a
 * flipped bit is reported as corruption rather than as an odd feature. */
static int check_header(reader *r, walfs_err *err)
{
    char what[200];
    if (r->version >= 0x0940 && (r->version_needed < 0x0900 || r->version_needed > LZOP_VERSION)) {
        snprintf(what, sizeof what, "needs lzop %x.%02x to extract (version_needed 0x%04" PRIx32
                 "); walfs reads what lzop 0.90 to 1.04 read", r->version_needed >> 12,
                 (r->version_needed >> 4) & 0xFF, r->version_needed);
        return walfs_err_set(err, -EIO, "%s: lzop header: %s; recompress the object with lzop 1.04",
                             r->who, what);
    }
    if (r->method < 1 || r->method > 3) {
        snprintf(what, sizeof what, "unsupported compression method %u (only LZO1X methods 1-3 exist "
                 "in lzop)", r->method);
        return hdr_corrupt(r, err, what);
    }
    if (r->level > 9) {
        snprintf(what, sizeof what, "invalid compression level %u (must be 1-9)", r->level);
        return hdr_corrupt(r, err, what);
    }
    if (r->flags & F_RESERVED) {
        snprintf(what, sizeof what, "unknown header flags 0x%08" PRIx32, r->flags & F_RESERVED);
        return hdr_corrupt(r, err, what);
    }
    if (r->flags & F_H_FILTER)
        return walfs_err_set(err, -EIO, "%s: lzop header: the stream uses a preprocessing filter "
                             "(F_H_FILTER), which WAL-E never writes and walfs does not support; "
                             "decompress it with lzop and recompress with `lzop -c`", r->who);
    if (r->flags & F_MULTIPART)
        return walfs_err_set(err, -EIO, "%s: lzop header: the stream is a multipart archive "
                             "(F_MULTIPART), which WAL-E never writes and walfs does not support; "
                             "recompress it with `lzop -c`", r->who);
    return 0;
}

/* Handles a completed fixed-size field in r->fbuf. */
static int on_field(reader *r, walfs_err *err)
{
    const unsigned char *b = r->fbuf;
    char where[96];
    switch (r->state) {
    case RD_MAGIC:
        r->hsum_adler = ADLER32_INIT;
        r->hsum_crc = CRC32_INIT;
        expect(r, RD_HDR1, 4);
        return 0;
    case RD_HDR1:
        r->version = get_be16(b);
        if (r->version < 0x0900)
            return walfs_err_set(err, -EIO, "%s: lzop header: format version 0x%04" PRIx32
                                 " predates lzop 0.90 and is not supported; %s", r->who, r->version,
                                 CORRUPT_HINT);
        expect(r, RD_HDR2, r->version >= 0x0940 ? 8 : 5);
        return 0;
    case RD_HDR2:
        if (r->version >= 0x0940) {
            r->version_needed = get_be16(b);
            b += 2;
        }
        r->method = *b++;
        if (r->version >= 0x0940)
            r->level = *b++;
        r->flags = get_be32(b);
        expect(r, RD_HDR3, (r->flags & F_H_FILTER ? 4 : 0) + 4 + 4 +
                               (r->version >= 0x0940 ? 4 : 0) + 1);
        return 0;
    case RD_HDR3: {
        size_t name_len = b[r->fneed - 1];
        if (name_len > 0)
            expect(r, RD_NAME, name_len);
        else
            expect(r, RD_HCSUM, 4);
        return 0;
    }
    case RD_NAME:
        expect(r, RD_HCSUM, 4);
        return 0;
    case RD_HCSUM: {
        uint32_t stored = get_be32(b);
        int use_crc = (r->flags & F_H_CRC32) != 0;
        uint32_t computed = use_crc ? r->hsum_crc : r->hsum_adler;
        if (stored != computed)
            return walfs_err_set(err, -EIO, "%s: lzop header checksum mismatch (%s stored 0x%08" PRIx32
                                 ", computed 0x%08" PRIx32 "); %s", r->who,
                                 use_crc ? "CRC-32" : "Adler-32", stored, computed, CORRUPT_HINT);
        int rc = check_header(r, err);
        if (rc)
            return rc;
        if (r->flags & F_H_EXTRA_FIELD) {
            r->hsum_adler = ADLER32_INIT;
            r->hsum_crc = CRC32_INIT;
            expect(r, RD_EXTRA_LEN, 4);
        } else {
            enter_blocks(r);
        }
        return 0;
    }
    case RD_EXTRA_LEN:
        r->extra_left = get_be32(b);
        if (r->extra_left > 0)
            expect(r, RD_EXTRA_DATA, 0);
        else
            expect(r, RD_EXTRA_CSUM, 4);
        return 0;
    case RD_EXTRA_CSUM: {
        uint32_t stored = get_be32(b);
        uint32_t computed = (r->flags & F_H_CRC32) ? r->hsum_crc : r->hsum_adler;
        if (stored != computed)
            return walfs_err_set(err, -EIO, "%s: lzop header extra field checksum mismatch "
                                 "(stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 "); %s", r->who,
                                 stored, computed, CORRUPT_HINT);
        enter_blocks(r);
        return 0;
    }
    case RD_BLK_DST:
        r->blk_off = r->off - 4;
        r->dst_len = get_be32(b);
        if (r->dst_len == 0) {
            r->end_off = r->off;
            expect(r, RD_TRAILER, 0);
            return 0;
        }
        block_where(r, where, sizeof where);
        {
            int rc = check_lengths(r->who, where, r->dst_len, 0, 0, err);
            if (rc)
                return rc;
        }
        expect(r, RD_BLK_SRC, 4);
        return 0;
    case RD_BLK_SRC: {
        r->src_len = get_be32(b);
        block_where(r, where, sizeof where);
        int rc = check_lengths(r->who, where, r->dst_len, r->src_len, 1, err);
        if (rc)
            return rc;
        unsigned n = n_block_sums(r->flags, r->src_len, r->dst_len);
        memset(&r->sums, 0, sizeof r->sums);
        if (n > 0)
            expect(r, RD_BLK_SUMS, 4 * (size_t)n);
        else
            expect(r, RD_BLK_DATA, 0);
        r->data_have = 0;
        return 0;
    }
    case RD_BLK_SUMS:
        parse_block_sums(r->flags, r->src_len, r->dst_len, b, &r->sums);
        expect(r, RD_BLK_DATA, 0);
        r->data_have = 0;
        return 0;
    default:
        return walfs_err_set(err, -EIO, "%s: lzop reader in impossible state %d (bug)", r->who,
                             (int)r->state);
    }
}

static int add_block(reader *r, walfs_err *err)
{
    if (r->n_blocks == r->cap_blocks) {
        size_t cap = r->cap_blocks ? r->cap_blocks * 2 : 64;
        lzop_block *nb = realloc(r->blocks, cap * sizeof *nb);
        if (!nb)
            return walfs_err_set(err, -ENOMEM, "%s: out of memory for the lzop block index "
                                 "(%zu blocks)", r->who, cap);
        r->blocks = nb;
        r->cap_blocks = cap;
    }
    lzop_block *b = &r->blocks[r->n_blocks++];
    b->comp_offset = r->blk_off;
    b->data_offset = r->off - r->src_len;
    b->comp_len = r->src_len;
    b->uncomp_len = r->dst_len;
    b->uncomp_offset = r->uncomp_off;
    return 0;
}

/* Called with the whole payload of the current block; r->off is past it. */
static int on_block(reader *r, const unsigned char *payload, lzop_sink_fn sink, void *ctx,
                    walfs_err *err)
{
    int rc = 0;
    if (r->scan_only) {
        rc = add_block(r, err);
    } else {
        char where[96];
        block_where(r, where, sizeof where);
        const unsigned char *data;
        rc = verify_block(r->who, where, r->flags, &r->sums, payload, r->src_len, r->dst_len, r->obuf,
                          &data, err);
        if (rc == 0)
            rc = call_sink(sink, ctx, data, r->dst_len, r->who, err);
        if (rc == 0)
            r->total_out += r->dst_len;
    }
    if (rc == 0) {
        r->uncomp_off += r->dst_len;
        r->blk_no++;
        expect(r, RD_BLK_DST, 4);
    }
    return rc;
}

static int trailer_garbage(reader *r, uint64_t at, walfs_err *err)
{
    return walfs_err_set(err, -EIO, "%s: non-zero data at offset %" PRIu64 " after the lzop end "
                         "marker (which ends at offset %" PRIu64 "); lzop reports this as trailing "
                         "garbage and WAL-E's wal-fetch would fail; %s", r->who, at, r->end_off,
                         CORRUPT_HINT);
}

static int on_trailer(reader *r, const unsigned char *p, size_t len, walfs_err *err)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (r->trail_magic == 0 && c == 0) {
            r->trail_zeros++; /* lzop silently ignores zero padding */
            continue;
        }
        if (r->trail_zeros == 0 && c == lzop_magic[r->trail_magic]) {
            if (++r->trail_magic == sizeof lzop_magic)
                return walfs_err_set(err, -EIO, "%s: a second lzop stream starts at offset %" PRIu64
                                     " right after the end marker (concatenated/multipart data, "
                                     "which lzop reports as an error to WAL-E); %s", r->who,
                                     r->end_off, CORRUPT_HINT);
            continue;
        }
        return trailer_garbage(r, r->trail_magic ? r->end_off : r->end_off + r->trail_zeros, err);
    }
    return 0;
}

static int reader_feed(reader *r, const void *data, size_t len, lzop_sink_fn sink, void *ctx,
                       walfs_err *err)
{
    if (r->failed)
        return walfs_err_set(err, r->failed, "%s: lzop reader already failed on earlier input; "
                             "start over with a new reader", r->who);
    const unsigned char *p = data;
    int rc = 0;
    while (rc == 0 && len > 0) {
        size_t used;
        switch (r->state) {
        case RD_TRAILER:
            rc = on_trailer(r, p, len, err);
            used = len;
            break;
        case RD_EXTRA_DATA:
            used = len < r->extra_left ? len : r->extra_left;
            r->hsum_adler = adler32(r->hsum_adler, p, used);
            r->hsum_crc = crc32(r->hsum_crc, p, used);
            r->extra_left -= (uint32_t)used;
            if (r->extra_left == 0)
                expect(r, RD_EXTRA_CSUM, 4);
            break;
        case RD_BLK_DATA: {
            uint32_t want = r->src_len - r->data_have;
            used = len < want ? len : want;
            if (r->data_have == 0 && used == r->src_len) {
                /* the whole payload is in the caller's buffer: no copy */
                r->off += used;
                rc = on_block(r, p, sink, ctx, err);
                p += used;
                len -= used;
                continue;
            }
            if (!r->scan_only)
                memcpy(r->cbuf + r->data_have, p, used);
            r->data_have += (uint32_t)used;
            if (r->data_have == r->src_len) {
                r->off += used;
                rc = on_block(r, r->cbuf, sink, ctx, err);
                p += used;
                len -= used;
                continue;
            }
            break;
        }
        default: {
            size_t want = r->fneed - r->fhave;
            used = len < want ? len : want;
            memcpy(r->fbuf + r->fhave, p, used);
            r->fhave += used;
            if (r->state >= RD_HDR1 && r->state <= RD_NAME) {
                r->hsum_adler = adler32(r->hsum_adler, p, used);
                r->hsum_crc = crc32(r->hsum_crc, p, used);
            } else if (r->state == RD_EXTRA_LEN) {
                r->hsum_adler = adler32(r->hsum_adler, p, used);
                r->hsum_crc = crc32(r->hsum_crc, p, used);
            }
            if (r->state == RD_MAGIC && memcmp(r->fbuf, lzop_magic, r->fhave) != 0) {
                rc = walfs_err_set(err, -EIO, "%s: not an lzop stream (bad magic at offset 0: "
                                   "expected 89 4C 5A 4F 00 0D 0A 1A 0A); the object is not "
                                   "lzop-compressed or is corrupt; restore it from another copy",
                                   r->who);
                break;
            }
            r->off += used;
            p += used;
            len -= used;
            if (r->fhave == r->fneed)
                rc = on_field(r, err);
            continue;
        }
        }
        r->off += used;
        p += used;
        len -= used;
    }
    if (rc < 0)
        r->failed = rc;
    return rc;
}

static const char *state_desc(enum rd_state st)
{
    switch (st) {
    case RD_MAGIC:
        return "the magic number";
    case RD_HDR1:
    case RD_HDR2:
    case RD_HDR3:
    case RD_NAME:
    case RD_HCSUM:
        return "the stream header";
    case RD_EXTRA_LEN:
    case RD_EXTRA_DATA:
    case RD_EXTRA_CSUM:
        return "the header's extra field";
    case RD_BLK_DST:
    case RD_BLK_SRC:
    case RD_BLK_SUMS:
        return "a block header";
    case RD_BLK_DATA:
        return "block data";
    case RD_TRAILER:
        break;
    }
    return "?";
}

static int reader_finish(reader *r, walfs_err *err)
{
    if (r->failed)
        return walfs_err_set(err, r->failed, "%s: lzop reader already failed on earlier input",
                             r->who);
    int rc = 0;
    if (r->state != RD_TRAILER) {
        if (r->state == RD_MAGIC && r->off == 0)
            rc = walfs_err_set(err, -EIO, "%s: empty input: not an lzop stream (an lzop stream of "
                               "empty data still has a 42-byte header and end marker); %s", r->who,
                               TRUNC_HINT);
        else if (r->state == RD_BLK_DST)
            rc = walfs_err_set(err, -EIO, "%s: lzop stream truncated at offset %" PRIu64 " after %"
                               PRIu64 " complete blocks: the next block header or the end marker is "
                               "missing; %s", r->who, r->off, r->blk_no, TRUNC_HINT);
        else if (r->state > RD_BLK_DST)
            rc = walfs_err_set(err, -EIO, "%s: lzop stream truncated at offset %" PRIu64 " inside %s "
                               "of block %" PRIu64 " (which starts at offset %" PRIu64 "); %s", r->who,
                               r->off, state_desc(r->state), r->blk_no, r->blk_off, TRUNC_HINT);
        else
            rc = walfs_err_set(err, -EIO, "%s: lzop stream truncated at offset %" PRIu64 " inside %s; %s",
                               r->who, r->off, state_desc(r->state), TRUNC_HINT);
    } else if (r->trail_magic > 0) {
        rc = trailer_garbage(r, r->end_off, err);
    }
    if (rc < 0)
        r->failed = rc;
    return rc;
}

/* ---- decoder ---- */

struct lzop_decoder {
    reader r;
};

lzop_decoder *lzop_decoder_new(const char *name)
{
    if (lzo_ready(NULL) != 0)
        return NULL;
    lzop_decoder *dec = malloc(sizeof *dec);
    if (!dec)
        return NULL;
    if (reader_init(&dec->r, name, 0) != 0) {
        reader_fini(&dec->r);
        free(dec);
        return NULL;
    }
    return dec;
}

int lzop_decoder_feed(lzop_decoder *dec, const void *data, size_t len, lzop_sink_fn sink, void *ctx,
                      walfs_err *err)
{
    return reader_feed(&dec->r, data, len, sink, ctx, err);
}

int lzop_decoder_finish(lzop_decoder *dec, walfs_err *err)
{
    return reader_finish(&dec->r, err);
}

uint64_t lzop_decoder_total_out(const lzop_decoder *dec)
{
    return dec->r.total_out;
}

void lzop_decoder_free(lzop_decoder *dec)
{
    if (!dec)
        return;
    reader_fini(&dec->r);
    free(dec);
}

/* ---- scanner ---- */

struct lzop_scanner {
    reader r;
};

lzop_scanner *lzop_scanner_new(const char *name)
{
    lzop_scanner *sc = malloc(sizeof *sc);
    if (!sc)
        return NULL;
    if (reader_init(&sc->r, name, 1) != 0) {
        reader_fini(&sc->r);
        free(sc);
        return NULL;
    }
    return sc;
}

int lzop_scanner_feed(lzop_scanner *sc, const void *data, size_t len, walfs_err *err)
{
    return reader_feed(&sc->r, data, len, NULL, NULL, err);
}

int lzop_scanner_finish(lzop_scanner *sc, lzop_index *out, walfs_err *err)
{
    int rc = reader_finish(&sc->r, err);
    if (rc)
        return rc;
    reader *r = &sc->r;
    memset(out, 0, sizeof *out);
    out->info.flags = r->flags;
    out->info.method = (uint8_t)r->method;
    out->info.header_len = (uint32_t)r->header_len;
    out->blocks = r->blocks;
    out->n_blocks = r->n_blocks;
    out->uncomp_size = r->uncomp_off;
    out->comp_size = r->end_off;
    r->blocks = NULL;
    r->n_blocks = r->cap_blocks = 0;
    return 0;
}

void lzop_scanner_free(lzop_scanner *sc)
{
    if (!sc)
        return;
    reader_fini(&sc->r);
    free(sc);
}

void lzop_index_free(lzop_index *idx)
{
    if (!idx)
        return;
    free(idx->blocks);
    idx->blocks = NULL;
    idx->n_blocks = 0;
}

int lzop_decode_block(const lzop_stream_info *info, const lzop_block *blk, const void *raw,
                      size_t raw_len, void *out, walfs_err *err)
{
    int rc = lzo_ready(err);
    if (rc)
        return rc;
    char where[128];
    snprintf(where, sizeof where, "block at offset %" PRIu64 " (uncompressed offset %" PRIu64 ")",
             blk->comp_offset, blk->uncomp_offset);
    const unsigned char *p = raw;
    if (raw_len < 8)
        return walfs_err_set(err, -EIO, "lzop stream: %s: only %zu bytes given, the block header alone needs 8; "
                             "the ranged read returned too little data, retry it", where, raw_len);
    uint32_t dst_len = get_be32(p), src_len = get_be32(p + 4);
    if (dst_len != blk->uncomp_len || src_len != blk->comp_len)
        return walfs_err_set(err, -EIO, "lzop stream: %s: block header says %" PRIu32 "/%" PRIu32 " bytes "
                             "(uncompressed/stored) but the index says %" PRIu32 "/%" PRIu32
                             "; the object changed since it was indexed or the read is misplaced; "
                             "rebuild the index", where, dst_len, src_len, blk->uncomp_len,
                             blk->comp_len);
    rc = check_lengths("lzop stream", where, dst_len, src_len, 1, err);
    if (rc)
        return rc;
    size_t hdr = 8 + 4 * (size_t)n_block_sums(info->flags, src_len, dst_len);
    if (blk->data_offset - blk->comp_offset != hdr)
        return walfs_err_set(err, -EIO, "lzop stream: %s: index places the payload %" PRIu64 " bytes after the "
                             "block header, but the header flags 0x%08" PRIx32 " imply %zu; the "
                             "index does not belong to this stream; rebuild it", where,
                             blk->data_offset - blk->comp_offset, info->flags, hdr);
    if (raw_len < hdr + src_len)
        return walfs_err_set(err, -EIO, "lzop stream: %s: only %zu bytes given, the block needs %zu; the ranged "
                             "read returned too little data, retry it", where, raw_len,
                             hdr + src_len);
    blk_sums s;
    parse_block_sums(info->flags, src_len, dst_len, p + 8, &s);
    const unsigned char *data;
    rc = verify_block("lzop stream", where, info->flags, &s, p + hdr, src_len, dst_len, out, &data,
                      err);
    if (rc)
        return rc;
    if (data != out)
        memcpy(out, data, dst_len);
    return 0;
}
