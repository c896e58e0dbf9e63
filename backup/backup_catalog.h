/* The base backups of an archive, as the filesystem shows them: which
 * backups are complete (their sentinel exists), which one is LATEST, what
 * their sentinels say, and each one's member index — loaded from the local
 * cache, from the copy stored next to the backup in the bucket, or built by
 * reading the partitions, in that order, and always checked against the
 * partitions the store lists right now.  A failed build is remembered until
 * the partitions' ETags change. */
#ifndef WALFS_BACKUP_BACKUP_CATALOG_H
#define WALFS_BACKUP_BACKUP_CATALOG_H

#include <stddef.h>
#include <time.h>

#include "backup/backup_index.h"
#include "common/err.h"
#include "store/store.h"

typedef struct backup_catalog backup_catalog;

typedef struct backup_entry {
    char name[64];          /* base_<24 hex>_<8 chars> */
    time_t sentinel_mtime;  /* LastModified of the sentinel */
} backup_entry;

typedef struct backup_details {
    char start_segment[25], start_offset[9];
    char stop_segment[32], stop_offset[16];     /* as the sentinel has them (wale/sentinel.h) */
    long long expanded_size_bytes;      /* -1 when the sentinel lacks it */
    char pg_version[512];               /* extended_version.txt, "" when absent */
    time_t sentinel_mtime;
} backup_details;

backup_catalog *backup_catalog_new(store *st, const char *cache_dir, walfs_err *err);
void backup_catalog_free(backup_catalog *cat);

/* Complete backups sorted by name; *latest is the index of the one whose
 * sentinel is newest (WAL-E's LATEST), -1 when there are none.  The caller
 * frees *out.  Cached for a second, so a burst of lookups costs one LIST. */
int backup_catalog_list(backup_catalog *cat, backup_entry **out, size_t *n, int *latest,
                        walfs_err *err);
/* 0 when name is a complete backup (fills *out), -ENOENT when it is not. */
int backup_catalog_find(backup_catalog *cat, const char *name, backup_entry *out, walfs_err *err);
int backup_catalog_details(backup_catalog *cat, const char *name, backup_details *out,
                           walfs_err *err);

/* The member index of a complete backup; hold it until
 * backup_catalog_release.  The first call for a backup may read all of it. */
int backup_catalog_acquire(backup_catalog *cat, const char *name, const backup_index **out,
                           walfs_err *err);
void backup_catalog_release(backup_catalog *cat, const backup_index *idx);

/* idx (held by the caller) disagrees with its partitions: it is never
 * handed out again.  Returns 1 when it came from the local cache or the
 * bucket, which are then ignored until a build from the partitions
 * replaces them (acquire again to get it); 0 when it was built from the
 * partitions themselves, so building again cannot help. */
int backup_catalog_distrust(backup_catalog *cat, const backup_index *idx);
/* Whether a loaded index of name was distrusted in this mount (the most
 * recent ones are remembered): what the kernel was told of its members may
 * have been forged. */
int backup_catalog_was_distrusted(backup_catalog *cat, const char *name);

#endif
