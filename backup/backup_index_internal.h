/* Test-only view into backup_index: counters that prove indexing decodes
 * only the lzop blocks holding tar headers and passes over member data
 * without decompressing it.  Not for the filesystem. */
#ifndef WALFS_BACKUP_BACKUP_INDEX_INTERNAL_H
#define WALFS_BACKUP_BACKUP_INDEX_INTERNAL_H

#include <stdint.h>

#include "backup/backup_index.h"

/* Process-wide and cumulative since start: compare before and after. */
typedef struct backup_index_stats {
    uint64_t decoded_blocks;    /* decompressed (and checksum-verified) while indexing */
    uint64_t skipped_blocks;    /* passed over without decompressing */
} backup_index_stats;

void backup_index_get_stats(backup_index_stats *out);

#endif
