/* lzop streams (the format WAL-E writes with `lzop -c`), on liblzo2.
 *
 * Knows nothing of S3 or FUSE: bytes in, bytes out through a sink callback.
 * Memory is bounded by one 256 KiB block (plus its worst-case compressed size)
 * whatever the stream length.
 *
 * Encoder output is byte-identical to `lzop 1.04 -c` as WAL-E runs it:
 * version 0x1040, version_needed 0x0940, method 1 (LZO1X-1), level 5,
 * flags 0x0300000D, empty name, 256 KiB blocks, stored raw when compression
 * does not shrink them, Adler-32 of the uncompressed block, end marker 0.
 *
 * The decoder accepts what lzop 1.04 writes in any of its variants (versions
 * >= 0x0900, Adler-32 or CRC-32 on data and/or compressed data, CRC-32 header
 * checksum, extra field, name, methods 1-3), verifies every checksum, uses
 * lzo1x_decompress_safe, and fails with a clear message on corrupt, truncated
 * or concatenated input.  Trailing zero bytes after the end marker are
 * accepted (lzop does); any other trailing byte is an error.  Filtered
 * (F_H_FILTER) and multipart streams are rejected. */
#ifndef WALFS_CODEC_LZOP_H
#define WALFS_CODEC_LZOP_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define LZOP_BLOCK_SIZE (256u * 1024u)

/* Receives output bytes; returns 0 to continue or a negative errno to abort
 * (the codec then returns that value without touching err->msg if the sink
 * already filled it). */
typedef int (*lzop_sink_fn)(void *ctx, const void *data, size_t len);

/* ---- encoder ---- */
typedef struct lzop_encoder lzop_encoder;

/* mode: st_mode of the source as lzop writes it (0 for a pipe; WAL-E's
 * wal-push gives the segment's mode, e.g. 0100600); mtime: seconds. */
lzop_encoder *lzop_encoder_new(uint32_t mode, int64_t mtime);
/* Buffers input and emits whole blocks (the header on the first call). */
int lzop_encoder_write(lzop_encoder *enc, const void *data, size_t len,
                       lzop_sink_fn sink, void *ctx, walfs_err *err);
/* Closes the pending partial block now, as a shorter block (valid lzop:
 * only the writer's habit makes every block but the last 256 KiB), so that
 * records made ahead of time with lzop_block_encode can follow. */
int lzop_encoder_flush(lzop_encoder *enc, lzop_sink_fn sink, void *ctx, walfs_err *err);
/* Appends whole block records (from lzop_block_encode) to the stream as
 * they are.  Only with no partial block pending: after lzop_encoder_flush. */
int lzop_encoder_write_records(lzop_encoder *enc, const void *records, size_t len,
                               lzop_sink_fn sink, void *ctx, walfs_err *err);
/* Emits the last partial block and the end marker. */
int lzop_encoder_finish(lzop_encoder *enc, lzop_sink_fn sink, void *ctx, walfs_err *err);
void lzop_encoder_free(lzop_encoder *enc);

/* Worst case compressed size of an input of n bytes (header + blocks + end),
 * for callers that want one buffer. */
size_t lzop_max_compressed_size(uint64_t n);

/* ---- single block records ----
 * A record is one block as the encoder writes it (12-byte header: lengths
 * and Adler-32 of the data; then the payload).  Compressing data into
 * records before the stream it joins exists lets a writer compress a file
 * as it arrives and splice it into a tar stream later. */
#define LZOP_RECORD_HEADER_LEN 12u
/* lzo1x_1_compress writes without a bound: LZO's documented worst case. */
#define LZOP_RECORD_MAX (LZOP_RECORD_HEADER_LEN + LZOP_BLOCK_SIZE + LZOP_BLOCK_SIZE / 16 + 64 + 3)

typedef struct lzop_block_encoder lzop_block_encoder;
lzop_block_encoder *lzop_block_encoder_new(void);
void lzop_block_encoder_free(lzop_block_encoder *be);
/* n: 1..LZOP_BLOCK_SIZE bytes.  *record points into be until the next call. */
int lzop_block_encode(lzop_block_encoder *be, const void *data, size_t n,
                      const unsigned char **record, size_t *record_len, walfs_err *err);
/* The lengths a record's header gives; -EIO when they are impossible. */
int lzop_record_lengths(const unsigned char header[LZOP_RECORD_HEADER_LEN], uint32_t *uncomp_len,
                        uint32_t *payload_len, walfs_err *err);
/* Decodes one whole record (header and payload) into out, which holds its
 * uncompressed length, verifying the checksum. */
int lzop_record_decode(const void *record, size_t record_len, void *out, walfs_err *err);

/* ---- decoder (push) ---- */
typedef struct lzop_decoder lzop_decoder;

/* name: used only in error messages (e.g. the object key), may be NULL. */
lzop_decoder *lzop_decoder_new(const char *name);
/* Feed compressed bytes in any chunking; decompressed bytes go to sink. */
int lzop_decoder_feed(lzop_decoder *dec, const void *data, size_t len,
                      lzop_sink_fn sink, void *ctx, walfs_err *err);
/* Call at end of input: fails (-EIO) unless a complete stream was seen. */
int lzop_decoder_finish(lzop_decoder *dec, walfs_err *err);
uint64_t lzop_decoder_total_out(const lzop_decoder *dec);
void lzop_decoder_free(lzop_decoder *dec);

/* ---- block index (random access) ----
 * Walks the header and block headers without decompressing: the scanner is
 * fed the stream like the decoder but skips block payloads.  Each block can
 * later be decoded on its own with lzop_decode_block. */
typedef struct lzop_block {
    uint64_t comp_offset;   /* offset of the block's header (dst_len field) in the stream */
    uint64_t data_offset;   /* offset of the block's payload in the stream */
    uint32_t comp_len;      /* payload length (src_len) */
    uint32_t uncomp_len;    /* dst_len */
    uint64_t uncomp_offset; /* offset of this block's first byte in the decompressed stream */
} lzop_block;

typedef struct lzop_stream_info {
    uint32_t flags;         /* header flags: which per-block checksums are present */
    uint8_t method;
    uint32_t header_len;    /* bytes from 0 to the first block header */
} lzop_stream_info;

typedef struct lzop_index {
    lzop_stream_info info;
    lzop_block *blocks;
    size_t n_blocks;
    uint64_t uncomp_size;   /* sum of dst_len */
    uint64_t comp_size;     /* total stream length including end marker */
} lzop_index;

typedef struct lzop_scanner lzop_scanner;
lzop_scanner *lzop_scanner_new(const char *name);
int lzop_scanner_feed(lzop_scanner *sc, const void *data, size_t len, walfs_err *err);
/* On success moves the finished index into *out (caller frees with lzop_index_free). */
int lzop_scanner_finish(lzop_scanner *sc, lzop_index *out, walfs_err *err);
void lzop_scanner_free(lzop_scanner *sc);
void lzop_index_free(lzop_index *idx);

/* Decodes one block given the bytes from blk->comp_offset to the end of its
 * payload (header fields and checksums included), verifying its checksums.
 * out must hold blk->uncomp_len bytes. */
int lzop_decode_block(const lzop_stream_info *info, const lzop_block *blk,
                      const void *raw, size_t raw_len, void *out, walfs_err *err);

#endif
