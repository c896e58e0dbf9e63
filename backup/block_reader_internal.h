/* Test-only view into block_reader: counters that prove requests are
 * deduplicated and memory stays bounded, and a way to wait for read-ahead
 * to settle without sleeping for a guessed time.  Not for the filesystem. */
#ifndef WALFS_BACKUP_BLOCK_READER_INTERNAL_H
#define WALFS_BACKUP_BLOCK_READER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backup/block_reader.h"

typedef struct block_reader_stats {
    uint64_t gets;              /* store_get calls issued */
    uint64_t fetched_bytes;     /* compressed bytes received */
    uint64_t decoded_blocks;
    uint64_t jobs_queued;       /* read-ahead jobs ever enqueued */
    uint64_t jobs_dropped;      /* read-ahead skipped because the queue was full */
    size_t cached_bytes;        /* decoded bytes held by the cache now */
    size_t cached_blocks;
    size_t peak_cached_bytes;   /* highest cached_bytes after eviction */
    size_t live_bytes;          /* decoded bytes allocated now (cache + pinned by readers) */
    size_t peak_live_bytes;
    size_t readahead_bytes;     /* the effective window after clamping to the cache */
} block_reader_stats;

void block_reader_get_stats(block_reader *br, block_reader_stats *out);

/* Blocks until no read-ahead job is queued or running. */
void block_reader_wait_idle(block_reader *br);

#endif
