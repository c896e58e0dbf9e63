#include "pg/lsn.h"

#include <stdio.h>
#include <string.h>

#include "pg/wal_file.h"

/* Up to eight hex digits at *p; advances p.  -1 when there are none, or
 * more than fit 32 bits. */
static int hex32(const char **p, uint32_t *out)
{
    uint32_t v = 0;
    int n = 0;
    for (const char *s = *p;; s++, n++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else if (*s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else
            break;
        if (n == 8)
            return -1;
        v = v << 4 | (uint32_t)d;
    }
    if (n == 0)
        return -1;
    *p += n;
    *out = v;
    return 0;
}

int pg_lsn_parse(const char *text, uint64_t *lsn)
{
    uint32_t hi, lo;
    const char *p = text;
    if (!p || hex32(&p, &hi) != 0 || *p++ != '/' || hex32(&p, &lo) != 0 || *p != '\0')
        return -1;
    *lsn = (uint64_t)hi << 32 | lo;
    return 0;
}

/* Sizes below PostgreSQL's 1 MiB minimum still name segments consistently;
 * whether a file is a real segment is wal_segment_check's question. */
static int size_names_segments(uint64_t size)
{
    return size != 0 && size <= WAL_FILE_MAX_BYTES && (size & (size - 1)) == 0;
}

/* Segments per 4 GiB "log": the middle eight digits count these. */
static uint64_t per_log(uint64_t segment_size)
{
    return 0x100000000ull / segment_size;
}

void pg_segment_name(uint32_t timeline, uint64_t segno, uint64_t segment_size, char out[25])
{
    snprintf(out, 25, "%08X%08X%08X", (unsigned)timeline,
             (unsigned)(segno / per_log(segment_size)), (unsigned)(segno % per_log(segment_size)));
}

void pg_segment_name_of_lsn(uint32_t timeline, uint64_t lsn, uint64_t segment_size,
                            char out[25])
{
    pg_segment_name(timeline, lsn / segment_size, segment_size, out);
}

int pg_segment_parse(const char *name, uint64_t segment_size, uint32_t *timeline,
                     uint64_t *segno)
{
    if (!wal_name_is_segment(name) || !size_names_segments(segment_size))
        return -1;
    unsigned tli, log, seg;
    if (sscanf(name, "%8X%8X%8X", &tli, &log, &seg) != 3 || seg >= per_log(segment_size))
        return -1;
    *timeline = tli;
    *segno = (uint64_t)log * per_log(segment_size) + seg;
    return 0;
}
