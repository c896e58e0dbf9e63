/* Read-ahead for restore_command: when PostgreSQL fetches segment N, the
 * next segments are fetched, verified and decompressed into the object
 * cache in the background while it replays N, so the next `cp` costs a
 * HEAD instead of a download.  A segment that is not in the archive yet is
 * simply skipped (never remembered as missing).  Prefetched data lives only
 * in walfs's own cache, never in pg_wal. */
#ifndef WALFS_WAL_WAL_PREFETCH_H
#define WALFS_WAL_WAL_PREFETCH_H

#include <stdint.h>

#include "wal/object_cache.h"
#include "store/store.h"

typedef struct wal_prefetch wal_prefetch;

/* depth: how many segments ahead; 0 disables.  No thread runs until
 * wal_prefetch_start: threads started before a daemon forks are lost. */
wal_prefetch *wal_prefetch_new(store *st, object_cache *cache, int depth);
void wal_prefetch_start(wal_prefetch *p);
void wal_prefetch_free(wal_prefetch *p);

/* A reader opened wal_005/<name> whose decompressed size is segment_size:
 * queue the segments after it (only for 24-hex segment names). */
void wal_prefetch_after(wal_prefetch *p, const char *name, uint64_t segment_size);

/* Exposed for tests: the name of the segment `ahead` segments after name, for
 * segments of segment_size bytes; 0 on success, -1 if name is no segment. */
int wal_segment_name_after(const char *name, uint64_t segment_size, int ahead, char out[25]);

#endif
