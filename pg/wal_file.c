#include "pg/wal_file.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "pg/lsn.h"

/* XLogLongPageHeaderData on every platform PostgreSQL supports: the short
 * header (xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64,
 * xlp_rem_len u32, padded to 24), then xlp_sysid u64, xlp_seg_size u32,
 * xlp_xlog_blcksz u32, in the server's byte order. */
#define XLP_LONG_HEADER 0x0002
#define OFF_INFO 2
#define OFF_SEG_SIZE 32
#define OFF_BLCKSZ 36

int wal_name_is_segment(const char *name)
{
    return strlen(name) == 24 && strspn(name, "0123456789ABCDEF") == 24;
}

static uint32_t host_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static int power_of_two_between(uint64_t v, uint64_t lo, uint64_t hi)
{
    return v >= lo && v <= hi && (v & (v - 1)) == 0;
}

int wal_segment_check(const unsigned char *head, size_t head_len, uint64_t size,
                      uint64_t *expected)
{
    if (head_len < WAL_LONG_HEADER_BYTES)
        return -1;
    uint16_t info;
    memcpy(&info, head + OFF_INFO, sizeof info);
    uint32_t seg_size = host_u32(head + OFF_SEG_SIZE);
    uint32_t blcksz = host_u32(head + OFF_BLCKSZ);
    /* wal_segment_size: 1 MiB to 1 GiB; wal block size: 1 KiB to 64 KiB. */
    if (!(info & XLP_LONG_HEADER) || !power_of_two_between(seg_size, 1u << 20, WAL_FILE_MAX_BYTES) ||
        !power_of_two_between(blcksz, 1u << 10, 1u << 16))
        return -1;
    *expected = seg_size;
    return size == seg_size ? 1 : 0;
}

uint64_t wal_segment_size_of(uint64_t lsn, const char *name)
{
    uint32_t timeline;
    uint64_t segno;
    for (uint64_t size = 1 << 20; size <= WAL_FILE_MAX_BYTES; size <<= 1)
        if (pg_segment_parse(name, size, &timeline, &segno) == 0 && segno == lsn / size)
            return size;
    return 0;
}

void wal_offset_lpad(uint64_t offset, char out[9])
{
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%" PRIu64, offset);
    int pad = n < 8 ? 8 - n : 0;
    memset(out, '0', (size_t)pad);
    memcpy(out + pad, digits, (size_t)(8 - pad));
    out[8] = '\0';
}
