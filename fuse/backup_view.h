/* /basebackups_005 in the mount: one read-only directory per complete
 * base backup holding the data directory as its tar partitions describe it,
 * plus LATEST.  Paths here are relative to /basebackups_005 ("" is the
 * directory itself, "base_X_Y/global/pg_control" a member).  Returns 0 or a
 * negative errno, logging what failed. */
#ifndef WALFS_FUSE_BACKUP_VIEW_H
#define WALFS_FUSE_BACKUP_VIEW_H

#include <fuse.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "common/err.h"
#include "store/store.h"

/* The first field of every FUSE file handle walfs hands out, so release and
 * read can tell a WAL file from a backup member. */
typedef enum handle_kind { HANDLE_WAL = 1, HANDLE_BACKUP_MEMBER = 2, HANDLE_PUSH_FILE = 3 } handle_kind;

/* basebackups_005/.backup-list: what `wal-e backup-list --detail` prints
 * (plus pg_version), one tab-separated row per complete backup.  Its content
 * is made at open, so it has no size in stat: open it with direct_io. */
#define BACKUP_LIST_FILE ".backup-list"

typedef struct backup_view backup_view;

backup_view *backup_view_new(store *st, const char *cache_dir, uid_t uid, gid_t gid,
                             time_t mount_time, walfs_err *err);
/* Starts the read-ahead threads; after daemonizing (a fork loses threads). */
int backup_view_start(backup_view *bv, walfs_err *err);
void backup_view_free(backup_view *bv);

int backup_view_getattr(backup_view *bv, const char *rel, struct stat *st);
int backup_view_readdir(backup_view *bv, const char *rel, void *buf, fuse_fill_dir_t filler);
int backup_view_readlink(backup_view *bv, const char *rel, char *buf, size_t size);
/* On success *handle is a HANDLE_BACKUP_MEMBER handle for read/release. */
int backup_view_open(backup_view *bv, const char *rel, void **handle);
int backup_view_read(backup_view *bv, void *handle, char *buf, size_t size, off_t off);
/* 1 when the kernel may hold a forged size for the member (its backup's
 * loaded index was caught lying in this mount): open it with direct_io, as
 * the writeback cache makes the kernel keep its own size for a cached inode
 * and cut cached reads there. */
int backup_view_needs_direct_io(void *handle);
void backup_view_release(backup_view *bv, void *handle);

#endif
