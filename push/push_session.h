/* Pushing a base backup by writing a data directory into
 * /basebackups_005/<new name>/ (WAL-E's backup-push as a copy).
 *
 * Files are spooled locally only until they are complete — closed, and a
 * later file has been started, so tools that set modes and times or rename
 * after closing (rsync, cp -a) are seen through — and then appended to the
 * backup's current tar partition, which is compressed and uploaded as it
 * grows (push/backup_writer.h).  A file arriving in order is compressed
 * as it arrives and joins the partition as it is (push/spool_file.h).  The
 * backup's name comes from the backup_label, which must arrive before the
 * spool limit is reached (pg_basebackup writes it first; rsync sends it
 * before base/).
 *
 * The backup is complete, and its sentinel written, when either
 *   - backup_manifest.tmp is renamed to backup_manifest (pg_basebackup's
 *     last step), the stop position taken from the manifest's WAL-Ranges; or
 *   - the directory itself is renamed (mv incoming done: the signal for
 *     cp -a/rsync -a), the stop position taken from global/pg_control.
 * That rename returns only once the sentinel is stored, or the error.  Any
 * failure is latched: every later close/fsync/rename of the push returns it,
 * and what was uploaded is removed.
 *
 * Thread-safe.  Only a completing rename waits for the store: every other
 * call is served from memory while the emitter thread (push_emitter.c)
 * uploads (locking in push/push_tree.h). */
#ifndef WALFS_PUSH_PUSH_SESSION_H
#define WALFS_PUSH_PUSH_SESSION_H

#include <stdint.h>
#include <sys/stat.h>

#include "push/backup_writer.h"
#include "common/err.h"
#include "store/store.h"

typedef struct push_registry push_registry;

/* Who asked for a new node: its creator owns it, as on a local disk.  NULL
 * means the mounting user. */
typedef struct push_caller {
    uid_t uid;
    gid_t gid;
} push_caller;

/* Called once per directory entry of a listing; nonzero stops it. */
typedef int (*push_dir_filler)(void *ctx, const char *name, const struct stat *st);

typedef struct push_settings {
    const char *spool_dir;
    uint64_t spool_max_bytes;           /* files waiting for backup_label or completion */
    uint64_t reorder_max_bytes;         /* out-of-order writes held in memory (spool_file.h) */
    backup_writer_limits limits;
} push_settings;

push_registry *push_registry_new(store *st, const push_settings *settings, uid_t uid,
                                 gid_t gid, walfs_err *err);
/* Starts the thread that uploads partitions and, in the background, the
 * removal of pushes a dead walfs left (push/push_cleanup.h).  Call it after
 * daemonizing: threads started before the fork are lost. */
int push_registry_start(push_registry *reg, walfs_err *err);
/* Aborts pushes that never completed (their uploads are removed). */
void push_registry_free(push_registry *reg);

/* rel is the path under /basebackups_005 ("incoming/base/1/1259").  Each
 * returns -ENOENT when rel is not inside a push, so the caller can fall back
 * to the read-only view of finished backups. */
int push_is_session(push_registry *reg, const char *rel);
int push_mkdir(push_registry *reg, const char *rel, mode_t mode, const push_caller *who);
int push_getattr(push_registry *reg, const char *rel, struct stat *st);
int push_readdir(push_registry *reg, const char *rel, push_dir_filler fill, void *ctx);
/* Names of the pushes in progress, for the listing of /basebackups_005. */
void push_list_sessions(push_registry *reg, push_dir_filler fill, void *ctx);
int push_create(push_registry *reg, const char *rel, mode_t mode, const push_caller *who,
                void **handle);
/* Opening with O_TRUNC a file of a finished push starts a new push there,
 * owned by who. */
int push_open(push_registry *reg, const char *rel, int flags, const push_caller *who,
              void **handle);
int push_read(push_registry *reg, void *handle, char *buf, size_t size, off_t off);
int push_write(push_registry *reg, void *handle, const char *buf, size_t size, off_t off);
int push_flush(push_registry *reg, void *handle);
void push_release(push_registry *reg, void *handle);
int push_truncate(push_registry *reg, const char *rel, void *handle, off_t size);
int push_chmod(push_registry *reg, const char *rel, mode_t mode);
int push_chown(push_registry *reg, const char *rel, uid_t uid, gid_t gid);
int push_utimens(push_registry *reg, const char *rel, const struct timespec tv[2]);
int push_symlink(push_registry *reg, const char *target, const char *rel,
                 const push_caller *who);
int push_link(push_registry *reg, const char *from_rel, const char *to_rel,
              const push_caller *who);
int push_readlink(push_registry *reg, const char *rel, char *buf, size_t size);
/* *completed is set when this rename completed a push (its sentinel is stored). */
int push_rename(push_registry *reg, const char *from_rel, const char *to_rel, int *completed);
int push_unlink(push_registry *reg, const char *rel);
int push_rmdir(push_registry *reg, const char *rel);

#endif
