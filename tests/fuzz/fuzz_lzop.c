/* libFuzzer target: the lzop decoder (codec/lzop.c), as walfs meets it on
 * every WAL segment and tar partition from the bucket.
 *
 * The input is an lzop object.  It is decoded three ways that must agree:
 * fed whole, fed in small uneven chunks (the decoder's state machine sees
 * every split an HTTP body can make), and through the block scanner plus
 * lzop_decode_block per block (the random-access path of block_reader).
 * A disagreement aborts, so the fuzzer reports it as a crash. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/lzop.h"
#include "common/buf.h"

/* Far above a WAL segment's worth of blocks from a 1 MiB input would be
 * pointless; the cap keeps one execution's memory bounded. */
#define INPUT_MAX (1u << 20)
#define MAX_OUTPUT (8u << 20)

typedef struct out_buf {
    walfs_buf b;
    const unsigned char *expect;    /* compare against this instead of storing */
    size_t expect_len;
    int mismatch;
} out_buf;

static int sink(void *ctx, const void *data, size_t len)
{
    out_buf *o = ctx;
    if (len > MAX_OUTPUT - o->b.len)
        return -EFBIG;
    if (!o->expect)
        return buf_sink(&o->b, data, len);
    if (o->b.len + len > o->expect_len || memcmp(o->expect + o->b.len, data, len) != 0)
        o->mismatch = 1;
    o->b.len += len;
    return 0;
}

static int decode(const uint8_t *data, size_t size, size_t chunk, out_buf *o, uint64_t *total)
{
    walfs_err err = {0};
    lzop_decoder *dec = lzop_decoder_new("fuzz");
    if (!dec)
        return -ENOMEM;
    int rc = 0;
    for (size_t off = 0; off < size && rc == 0;) {
        size_t n = size - off < chunk ? size - off : chunk;
        rc = lzop_decoder_feed(dec, data + off, n, sink, o, &err);
        off += n;
        /* Uneven splits: 1, 2, 3, ... bytes past the base chunk. */
        chunk = chunk == SIZE_MAX ? chunk : chunk % 97 + 1 + (off & 7);
    }
    if (rc == 0)
        rc = lzop_decoder_finish(dec, &err);
    *total = lzop_decoder_total_out(dec);
    lzop_decoder_free(dec);
    return rc;
}

static void check_blocks(const uint8_t *data, size_t size, const out_buf *whole)
{
    walfs_err err = {0};
    lzop_scanner *sc = lzop_scanner_new("fuzz");
    if (!sc)
        return;
    lzop_index idx;
    memset(&idx, 0, sizeof idx);
    int rc = lzop_scanner_feed(sc, data, size, &err);
    if (rc == 0)
        rc = lzop_scanner_finish(sc, &idx, &err);
    lzop_scanner_free(sc);
    /* The decoder verified every checksum: the scanner must accept the
     * same stream and describe the same bytes (the stream ends at the end
     * marker; only zero bytes may follow it). */
    if (rc != 0 || idx.uncomp_size != whole->b.len || idx.comp_size > size)
        abort();
    for (size_t i = (size_t)idx.comp_size; i < size; i++)
        if (data[i] != 0)
            abort();
    unsigned char *blk = malloc(LZOP_BLOCK_SIZE);
    if (!blk)
        abort();
    for (size_t i = 0; i < idx.n_blocks; i++) {
        const lzop_block *b = &idx.blocks[i];
        if (b->comp_offset > b->data_offset || b->data_offset + b->comp_len > size ||
            b->uncomp_len > LZOP_BLOCK_SIZE || b->uncomp_offset + b->uncomp_len > whole->b.len)
            abort();
        size_t raw_len = (size_t)(b->data_offset - b->comp_offset) + b->comp_len;
        if (lzop_decode_block(&idx.info, b, data + b->comp_offset, raw_len, blk, &err) != 0 ||
            memcmp(blk, whole->b.bytes + b->uncomp_offset, b->uncomp_len) != 0)
            abort();
    }
    free(blk);
    lzop_index_free(&idx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > INPUT_MAX)
        return 0;
    out_buf whole = {0};
    uint64_t total1 = 0, total2 = 0;
    int rc1 = decode(data, size, SIZE_MAX, &whole, &total1);
    int capped = whole.b.len + LZOP_BLOCK_SIZE > MAX_OUTPUT;
    out_buf chunked = {.expect = whole.b.bytes, .expect_len = whole.b.len};
    int rc2 = decode(data, size, 1 + size % 13, &chunked, &total2);
    if (!capped) {
        /* How the bytes arrive must not change the verdict or the output. */
        if ((rc1 == 0) != (rc2 == 0) || chunked.mismatch || chunked.b.len != whole.b.len)
            abort();
        if (rc1 == 0) {
            if (total1 != whole.b.len || total2 != whole.b.len)
                abort();
            check_blocks(data, size, &whole);
        }
    }
    free(whole.b.bytes);
    return 0;
}
