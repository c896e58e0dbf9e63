/* Segment name arithmetic for restore read-ahead: it must follow
 * PostgreSQL's XLogFileName for any wal_segment_size. */
#include <string.h>

#include "wal/wal_prefetch.h"
#include "tap.h"

static int next_is(const char *name, unsigned long long size, int ahead, const char *want)
{
    char out[25];
    return wal_segment_name_after(name, size, ahead, out) == 0 && strcmp(out, want) == 0;
}

int main(void)
{
    const unsigned long long MiB = 1024 * 1024;
    char out[25];
    CHECK(next_is("000000010000000000000003", 16 * MiB, 1, "000000010000000000000004"),
          "16 MiB: 3 -> 4");
    CHECK(next_is("0000000100000000000000FF", 16 * MiB, 1, "000000010000000100000000"),
          "16 MiB: the last segment of a log file carries into the next log");
    CHECK(next_is("0000000200000003000000FE", 16 * MiB, 3, "000000020000000400000001"),
          "16 MiB: three ahead across the carry, timeline kept");
    CHECK(next_is("00000001000000000000003F", 64 * MiB, 1, "000000010000000100000000"),
          "64 MiB segments: 0x40 per log file");
    CHECK(next_is("000000010000000000000003", 1024 * MiB, 1, "000000010000000100000000"),
          "1 GiB segments: 4 per log file");
    CHECK(next_is("000000010000000000000001", 1 * MiB, 1, "000000010000000000000002"),
          "1 MiB segments");
    CHECK(wal_segment_name_after("00000002.history", 16 * MiB, 1, out) == -1,
          "a history file has no successor");
    CHECK(wal_segment_name_after("000000010000000000000002.00000028.backup", 16 * MiB, 1, out) == -1,
          "a backup history file has no successor");
    CHECK(wal_segment_name_after("000000010000000000000003.partial", 16 * MiB, 1, out) == -1,
          "a .partial file has no successor");
    CHECK(wal_segment_name_after("00000001000000000000000g", 16 * MiB, 1, out) == -1,
          "lower-case or non-hex names are not segments");
    CHECK(wal_segment_name_after("000000010000000000000100", 16 * MiB, 1, out) == -1,
          "a segment number beyond the log file's range is rejected");
    CHECK(wal_segment_name_after("000000010000000000000003", 12345, 1, out) == -1,
          "a size that is not a power of two is no WAL segment size");
    return test_summary();
}
