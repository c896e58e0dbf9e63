/* WAL-E's completion sentinel, basebackups_005/<backup>_backup_stop_sentinel.json:
 * where the backup's WAL stops and how large it is once extracted.
 *
 * Knows the fields walfs reads (wal_segment_backup_stop,
 * wal_segment_offset_backup_stop, expanded_size_bytes); nothing of where
 * the body comes from.  push/backup_writer.c writes the same fields. */
#ifndef WALFS_WALE_SENTINEL_H
#define WALFS_WALE_SENTINEL_H

#include <stddef.h>

typedef struct wale_sentinel {
    char stop_segment[32], stop_offset[16];   /* copies, cut short to fit */
    long long expanded_size_bytes;
} wale_sentinel;

/* Fills out's fields from a sentinel body (fields absent or of another type
 * are left as they are); -1 when it is not a JSON object, 1 when its
 * expanded_size_bytes is negative or beyond int64 (left as it was).  Pure:
 * the fuzzer's way in (tests/fuzz/fuzz_sentinel.c). */
int wale_sentinel_parse(const char *json, size_t len, wale_sentinel *out);

#endif
