/* The backup_manifest that pg_basebackup (PostgreSQL 13 and later) writes
 * last: where the backup's WAL ends.
 *
 * Knows the manifest's WAL-Ranges (Timeline, End-LSN); nothing of its file
 * list or checksums, which walfs does not verify. */
#ifndef WALFS_PG_BACKUP_MANIFEST_H
#define WALFS_PG_BACKUP_MANIFEST_H

#include <stdint.h>

/* The Timeline and End-LSN of the last WAL-Ranges entry of the manifest
 * text (NUL-terminated JSON).  0, or -1 when the text is no JSON object
 * with such an entry. */
int pg_backup_manifest_wal_end(const char *text, uint32_t *timeline, uint64_t *end_lsn);

#endif
