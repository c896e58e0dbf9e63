/* The offset part of base backup names and of wal_segment_offset_backup_stop:
 * WAL-E's lpad(file_offset::text, 8, '0'), which keeps the leading digits of a
 * longer number (an offset past 99999999 exists only with 128 MiB segments
 * and larger). */
#include <string.h>

#include "pg/wal_file.h"
#include "tap.h"

static int lpad_is(uint64_t offset, const char *want)
{
    char out[9];
    memset(out, 'X', sizeof out);
    wal_offset_lpad(offset, out);
    return strcmp(out, want) == 0;
}

int main(void)
{
    CHECK(lpad_is(0, "00000000"), "0 pads to eight zeros");
    CHECK(lpad_is(0x28, "00000040"), "0x28 is 40 in decimal, left-padded");
    CHECK(lpad_is(12345678, "12345678"), "eight digits stay as they are");
    CHECK(lpad_is(123456789, "12345678"), "nine digits keep the first eight (not %% 10^8)");
    CHECK(lpad_is(1073741823, "10737418"), "the last offset of a 1 GiB segment: first eight");
    CHECK(lpad_is(100000000, "10000000"), "100000000 keeps its leading 1 (%% 10^8 gave 0)");
    CHECK(lpad_is(UINT64_MAX, "18446744"), "a 20-digit number keeps its first eight");
    return test_summary();
}
