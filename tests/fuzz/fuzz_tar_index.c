/* libFuzzer target: the tar index builder (backup/backup_index.c), which
 * walks WAL-E tar partitions from the bucket with libarchive.
 *
 * Input: a mode byte, a block-size byte, then up to MEM_STORE_MAX
 * partitions separated by PART_SEP.
 *   mode bit 0 clear: each partition is the decompressed tar stream; the
 *     harness makes it an lzop object with walfs's own encoder, closing a
 *     block every (block byte * 512) bytes (0: 256 KiB blocks as WAL-E
 *     writes), so tar headers land on, across and between block
 *     boundaries.  Small blocks are stored (as lzop stores a block that
 *     does not shrink) unless mode bit 1 is set, which compresses them:
 *     lzo1x_1_compress clears a 128 KiB dictionary for every block, work
 *     most executions need not repeat;
 *   mode bit 0 set: each partition is the stored lzop object itself.
 * The partitions are served from memory through the store interface, so
 * backup_index_build runs as in walfs (its producer thread, the block
 * queue, libarchive).  A built index must survive its own JSON: to_json,
 * from_json and to_json again give the same bytes, and every member is
 * found by its path (tests/fuzz/index_check.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lzo/lzoconf.h>

#include "backup/backup_index.h"
#include "codec/lzop.h"
#include "common/log.h"
#include "tests/fuzz/index_check.h"
#include "tests/fuzz/mem_store.h"
#include "common/buf.h"
#include "wale/layout.h"

#define INPUT_MAX (1u << 20)
#define PART_SEP "WALFSPART\n"
#define BACKUP "base_000000010000000000000002_00000040"

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* The encoder's header, then stored blocks: dst_len = src_len, the
 * Adler-32 of the data (the encoder's flags ask for it), the data. */
static int store_blocks(const uint8_t *data, size_t size, size_t block, walfs_buf *out)
{
    walfs_err err = {0};
    lzop_encoder *enc = lzop_encoder_new(0100600, 0);
    if (!enc)
        return -ENOMEM;
    int rc = lzop_encoder_finish(enc, buf_sink, out, &err);
    lzop_encoder_free(enc);
    if (rc)
        return rc;
    out->len -= 4; /* the end marker comes after the blocks */
    for (size_t off = 0; off < size && rc == 0; off += block) {
        size_t n = size - off < block ? size - off : block;
        unsigned char h[12];
        put_be32(h, (uint32_t)n);
        put_be32(h + 4, (uint32_t)n);
        put_be32(h + 8, (uint32_t)lzo_adler32(1, data + off, (lzo_uint)n));
        rc = buf_sink(out, h, sizeof h);
        if (rc == 0)
            rc = buf_sink(out, data + off, n);
    }
    return rc ? rc : buf_sink(out, "\0\0\0\0", 4);
}

static int compress(const uint8_t *data, size_t size, size_t block, int stored, walfs_buf *out)
{
    if (block && stored)
        return store_blocks(data, size, block, out);
    walfs_err err = {0};
    lzop_encoder *enc = lzop_encoder_new(0100600, 0);
    if (!enc)
        return -ENOMEM;
    int rc = 0;
    size_t step = block ? block : size;
    for (size_t off = 0; off < size && rc == 0; off += step) {
        size_t n = size - off < step ? size - off : step;
        rc = lzop_encoder_write(enc, data + off, n, buf_sink, out, &err);
        if (rc == 0 && block)
            rc = lzop_encoder_flush(enc, buf_sink, out, &err);
    }
    if (rc == 0)
        rc = lzop_encoder_finish(enc, buf_sink, out, &err);
    lzop_encoder_free(enc);
    return rc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    walfs_log_set_level(WALFS_LOG_ERROR); /* skipped members are logged as warnings */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > INPUT_MAX)
        return 0;
    int raw_lzop = data[0] & 1, stored = !(data[0] & 2);
    size_t block = (size_t)data[1] * 512;
    data += 2;
    size -= 2;

    mem_store ms;
    mem_store_init(&ms);
    walfs_buf comp[MEM_STORE_MAX];
    memset(comp, 0, sizeof comp);
    char keys[MEM_STORE_MAX][128];
    backup_partition_listing parts[MEM_STORE_MAX];
    size_t sep = sizeof PART_SEP - 1;
    const uint8_t *p = data, *end = data + size;
    int ok = 1;
    while (ms.n < MEM_STORE_MAX) {
        const uint8_t *s = memmem(p, (size_t)(end - p), PART_SEP, sep);
        if (ms.n == MEM_STORE_MAX - 1)
            s = NULL;
        const uint8_t *stop = s ? s : end;
        size_t i = ms.n++;
        wale_partition_key(keys[i], sizeof keys[i], BACKUP, (uint32_t)i);
        ms.keys[i] = keys[i];
        if (raw_lzop) {
            ms.data[i] = p;
            ms.len[i] = (size_t)(stop - p);
        } else {
            if (compress(p, (size_t)(stop - p), block, stored, &comp[i]) != 0) {
                ok = 0;
                break;
            }
            ms.data[i] = comp[i].bytes;
            ms.len[i] = comp[i].len;
        }
        parts[i].key = keys[i];
        parts[i].size = ms.len[i];
        snprintf(parts[i].etag, sizeof parts[i].etag, "etag-%zu", i);
        if (!s)
            break;
        p = s + sep;
    }
    if (ok) {
        walfs_err err = {0};
        backup_index *idx = NULL;
        if (backup_index_build(&ms.base, BACKUP, parts, ms.n, &idx, &err) == 0) {
            if (!backup_index_matches(idx, parts, ms.n))
                abort();
            index_check_round_trip(idx);
            backup_index_free(idx);
        }
    }
    for (size_t i = 0; i < MEM_STORE_MAX; i++)
        free(comp[i].bytes);
    return 0;
}
