/* The FUSE filesystem: the archive as PostgreSQL sees it.
 *
 *   /wal_005/<name>        one file per <name>.lzo object, decompressed
 *   /basebackups_005/      base backups (read side in a later part)
 *
 * Guarantees (see README "Guarantees"): lookup is one HEAD and never cached
 * as missing; close() and fsync() return only once the object is stored and
 * return the upload's error otherwise; objects are write-once. */
#ifndef WALFS_FUSE_WALFS_FS_H
#define WALFS_FUSE_WALFS_FS_H

#include <fuse.h>
#include <stdint.h>

#include "push/backup_writer.h"
#include "store/store.h"

typedef struct walfs_fs_config {
    store *st;              /* borrowed */
    const char *cache_dir;  /* decompressed copies and write spools */
    uint64_t cache_max_bytes;
    double attr_timeout;    /* seconds the kernel may cache a file's attributes */
    int prefetch_segments;  /* WAL segments fetched ahead of a restoring reader; 0 = off */
    long deadline_ms;       /* one archiving cp, from its first lookup to the stored object */
    long restore_outage_limit_ms; /* 0: a wal_005 read waits through an outage for good */
    uint64_t push_spool_bytes;          /* files of a push waiting locally, at most */
    uint64_t push_reorder_bytes;        /* out-of-order writes of a push held in memory */
    backup_writer_limits push_limits;   /* partition limits of pushed backups (0 = WAL-E's) */
    long owner_uid, owner_gid; /* of /, wal_005 and its files, basebackups_005; -1: ours */
} walfs_fs_config;

typedef struct walfs_fs walfs_fs;

/* Checks and creates the cache directory (with missing parents); starts no
 * thread. */
walfs_fs *walfs_fs_new(const walfs_fs_config *cfg, walfs_err *err);
/* Starts the background threads (read-ahead, the push uploader, clean-up).
 * Call it after fuse_daemonize: a fork keeps only the calling thread. */
int walfs_fs_start(walfs_fs *fs, walfs_err *err);
void walfs_fs_free(walfs_fs *fs);
/* Operations to pass to fuse_new with the walfs_fs as private data. */
const struct fuse_operations *walfs_fs_operations(void);

#endif
