#include "fs/walfs_fs.h"

#include <fuse_lowlevel.h>

#include "backup/backup_index.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "fs/background_compressor.h"
#include "fs/backup_view.h"
#include "fs/push_session.h"
#include "fs/object_cache.h"
#include "fs/spool_file.h"
#include "fs/wal_prefetch.h"
#include "fs/wal_upload.h"

#define WAL_DIR "wal_005"
#define LZO_SUFFIX ".lzo"

typedef enum node_kind {
    NODE_ROOT,
    NODE_WAL_DIR,
    NODE_WAL_FILE,
    NODE_BACKUPS,   /* /basebackups_005 and everything below it */
    NODE_NONE,
} node_kind;

typedef struct wal_handle {
    handle_kind kind;       /* HANDLE_WAL; first, see backup_view.h */
    int writable;
    int fd;                 /* verified decompressed copy (read) or spool (write) */
    char *name;             /* file name inside wal_005 */
    char *key;              /* wal_005/<name>.lzo */
    uint64_t size;
    mode_t mode;
    int dirty;              /* written since the last successful upload */
    background_compressor *compressor; /* compresses while the writer appends */
    pthread_t probe_thread; /* checks whether the name exists while the writer writes */
    int probe_pending;      /* probe_thread started and not joined yet */
    wal_probe probe;
    store *probe_store;
    int latched_error;      /* result of the last upload, returned by every later flush */
    pthread_mutex_t lock;   /* size, dirty: held only briefly, getattr takes it */
    pthread_mutex_t upload_lock; /* serializes uploads; held for the whole upload */
    struct wal_handle *next_writer;
} wal_handle;

struct walfs_fs {
    walfs_fs_config cfg;
    object_cache *cache;
    wal_prefetch *prefetch;
    backup_view *backups;
    push_registry *pushes;
    char *spool_dir;
    pthread_mutex_t writers_lock;
    wal_handle *writers;    /* files being written, so getattr sees them before upload */
    uid_t uid;
    gid_t gid;
    time_t mount_time;
    /* Forgetting the kernel's names under basebackups_005 after a push
     * completes, from a thread of its own: the kernel forbids it inside the
     * rename that completed the push. */
    pthread_mutex_t forget_lock;
    pthread_cond_t forget_wake;
    pthread_t forget_thread;
    int forget_started, forget_pending, forget_stop;
    struct fuse_session *session;
};

static walfs_fs *current_fs(void) { return fuse_get_context()->private_data; }

/* *name is the file name for NODE_WAL_FILE and the path relative to
 * /basebackups_005 for NODE_BACKUPS. */
static node_kind classify(const char *path, const char **name)
{
    *name = NULL;
    if (strcmp(path, "/") == 0)
        return NODE_ROOT;
    if (strcmp(path, "/" WAL_DIR) == 0)
        return NODE_WAL_DIR;
    if (strcmp(path, "/" BASEBACKUP_DIR) == 0) {
        *name = "";
        return NODE_BACKUPS;
    }
    const char *backup_prefix = "/" BASEBACKUP_DIR "/";
    if (strncmp(path, backup_prefix, strlen(backup_prefix)) == 0) {
        *name = path + strlen(backup_prefix);
        return NODE_BACKUPS;
    }
    const char *wal_prefix = "/" WAL_DIR "/";
    size_t plen = strlen(wal_prefix);
    if (strncmp(path, wal_prefix, plen) == 0) {
        const char *n = path + plen;
        if (*n && !strchr(n, '/') && strcmp(n, ".") != 0 && strcmp(n, "..") != 0) {
            *name = n;
            return NODE_WAL_FILE;
        }
    }
    return NODE_NONE;
}

/* Paths under /basebackups_005 that belong to a push being written. */
static int in_push(walfs_fs *fs, const char *rel)
{
    return rel[0] && push_is_session(fs->pushes, rel);
}

static handle_kind kind_of(const struct fuse_file_info *fi)
{
    return fi && fi->fh ? *(const handle_kind *)(uintptr_t)fi->fh : 0;
}

static char *wal_key(const char *name)
{
    char *k = NULL;
    if (asprintf(&k, WAL_DIR "/%s" LZO_SUFFIX, name) < 0)
        return NULL;
    return k;
}

/* A failed operation's errno for the kernel, with its message logged. */
static int report(int rc, const walfs_err *err, const char *op, const char *path)
{
    if (rc == -ENOENT) {
        log_debug("%s %s: not in the archive", op, path);
        return rc;
    }
    log_error("%s %s failed: %s", op, path, err && err->msg[0] ? err->msg : strerror(-rc));
    if (rc == -EACCES || rc == -EEXIST || rc == -ENOSPC || rc == -ENOMEM || rc == -EROFS ||
        rc == -EPERM || rc == -ENAMETOOLONG || rc == -EINVAL)
        return rc;
    return -EIO; /* timeouts, corrupt data, server errors: never mistaken for "missing" */
}

static void fill_dir_stat(const walfs_fs *fs, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    st->st_uid = fs->uid;
    st->st_gid = fs->gid;
    st->st_mtime = st->st_ctime = st->st_atime = fs->mount_time;
}

static void fill_file_stat(const walfs_fs *fs, struct stat *st, uint64_t size, time_t mtime,
                           mode_t mode)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | mode;
    st->st_nlink = 1;
    st->st_uid = fs->uid;
    st->st_gid = fs->gid;
    st->st_size = (off_t)size;
    st->st_blocks = (blkcnt_t)((size + 511) / 512);
    st->st_blksize = 1024 * 1024; /* cp sizes its buffer by this */
    st->st_mtime = st->st_ctime = st->st_atime = mtime;
}

static wal_handle *find_writer(walfs_fs *fs, const char *name)
{
    for (wal_handle *h = fs->writers; h; h = h->next_writer)
        if (strcmp(h->name, name) == 0)
            return h;
    return NULL;
}

static int walfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    walfs_fs *fs = current_fs();
    if (kind_of(fi) == HANDLE_WAL) {
        wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
        pthread_mutex_lock(&h->lock);
        fill_file_stat(fs, st, h->size, time(NULL), h->mode);
        pthread_mutex_unlock(&h->lock);
        return 0;
    }
    const char *name;
    switch (classify(path, &name)) {
    case NODE_ROOT:
    case NODE_WAL_DIR:
        fill_dir_stat(fs, st);
        return 0;
    case NODE_BACKUPS:
        if (in_push(fs, name))
            return push_getattr(fs->pushes, name, st);
        return backup_view_getattr(fs->backups, name, st);
    case NODE_NONE:
        return -ENOENT;
    case NODE_WAL_FILE:
        break;
    }
    pthread_mutex_lock(&fs->writers_lock);
    wal_handle *w = find_writer(fs, name);
    if (w) {
        pthread_mutex_lock(&w->lock);
        fill_file_stat(fs, st, w->size, time(NULL), w->mode);
        pthread_mutex_unlock(&w->lock);
        pthread_mutex_unlock(&fs->writers_lock);
        return 0;
    }
    pthread_mutex_unlock(&fs->writers_lock);

    char *key = wal_key(name);
    if (!key)
        return -ENOMEM;
    walfs_err err = {0};
    store_stat meta;
    int rc = store_stat_key(fs->cfg.st, key, &meta, &err);
    uint64_t size = 0;
    if (!rc)
        rc = object_cache_size(fs->cache, key, &meta, &size, &err);
    free(key);
    if (rc)
        return report(rc, &err, "lookup", path);
    fill_file_stat(fs, st, size, meta.mtime, 0644);
    return 0;
}

typedef struct fill_ctx {
    void *buf;
    fuse_fill_dir_t filler;
} fill_ctx;

static int add_wal_entry(void *ctx, const store_entry *e)
{
    fill_ctx *f = ctx;
    size_t n = strlen(e->name), sl = strlen(LZO_SUFFIX);
    if (e->is_dir || n <= sl || strcmp(e->name + n - sl, LZO_SUFFIX) != 0)
        return 0; /* not something WAL-E's wal-push writes */
    char name[NAME_MAX + 1];
    if (n - sl > NAME_MAX)
        return 0;
    memcpy(name, e->name, n - sl);
    name[n - sl] = '\0';
    struct stat st = {.st_mode = S_IFREG | 0644};
    f->filler(f->buf, name, &st, 0, 0);
    return 0;
}

static int walfs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset,
                         struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    walfs_fs *fs = current_fs();
    const char *name;
    node_kind kind = classify(path, &name);
    if (kind == NODE_NONE || kind == NODE_WAL_FILE)
        return kind == NODE_NONE ? -ENOENT : -ENOTDIR;
    filler(buf, ".", NULL, 0, 0);
    filler(buf, "..", NULL, 0, 0);
    if (kind == NODE_ROOT) {
        struct stat st = {.st_mode = S_IFDIR | 0755};
        filler(buf, WAL_DIR, &st, 0, 0);
        filler(buf, BASEBACKUP_DIR, &st, 0, 0);
        return 0;
    }
    if (kind == NODE_BACKUPS && in_push(fs, name))
        return push_readdir(fs->pushes, name, buf, filler);
    if (kind == NODE_BACKUPS) {
        if (name[0] == '\0')
            push_list_sessions(fs->pushes, buf, filler);
        return backup_view_readdir(fs->backups, name, buf, filler);
    }
    walfs_err err = {0};
    fill_ctx f = {.buf = buf, .filler = filler};
    int rc = store_list(fs->cfg.st, WAL_DIR "/", add_wal_entry, &f, &err);
    if (rc)
        return report(rc, &err, "list", path);
    return 0;
}

static wal_handle *handle_new(const char *name)
{
    wal_handle *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->kind = HANDLE_WAL;
    h->fd = -1;
    h->name = strdup(name);
    h->key = wal_key(name);
    if (!h->name || !h->key) {
        free(h->name);
        free(h->key);
        free(h);
        return NULL;
    }
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_init(&h->upload_lock, NULL);
    return h;
}

static void handle_free(wal_handle *h)
{
    if (h->probe_pending)
        pthread_join(h->probe_thread, NULL);
    background_compressor_free(h->compressor);
    if (h->fd >= 0)
        close(h->fd);
    pthread_mutex_destroy(&h->lock);
    pthread_mutex_destroy(&h->upload_lock);
    free(h->name);
    free(h->key);
    free(h);
}

static void *probe_main(void *arg)
{
    wal_handle *h = arg;
    wal_probe_run(h->probe_store, h->key, &h->probe);
    return NULL;
}

static int start_writer(walfs_fs *fs, const char *path, const char *name, mode_t mode,
                        struct fuse_file_info *fi)
{
    wal_handle *h = handle_new(name);
    if (!h)
        return -ENOMEM;
    h->fd = spool_open_unnamed(fs->spool_dir);
    if (h->fd < 0) {
        int e = -h->fd;
        log_error("write %s: cannot create a spool file in %s: %s (check --cache-dir)", path,
                  fs->spool_dir, strerror(e));
        h->fd = -1;
        handle_free(h);
        return -e;
    }
    h->writable = 1;
    h->mode = mode & 0777 ? mode & 0777 : 0600;
    h->dirty = 1; /* even an empty file is an archive request */
    /* Without it the archive still works, compressing at close. */
    h->compressor = background_compressor_start(h->fd, h->mode, time(NULL));
    /* Without it the check runs at close. */
    h->probe_store = fs->cfg.st;
    h->probe_pending = pthread_create(&h->probe_thread, NULL, probe_main, h) == 0;
    pthread_mutex_lock(&fs->writers_lock);
    h->next_writer = fs->writers;
    fs->writers = h;
    pthread_mutex_unlock(&fs->writers_lock);
    fi->fh = (uint64_t)(uintptr_t)h;
    /* Past the page cache: compression and the write-once check overlap
     * cp's writes only if the writes reach walfs as cp makes them, not all
     * at close. */
    fi->direct_io = 1;
    return 0;
}

static int walfs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    walfs_fs *fs = current_fs();
    const char *name;
    node_kind kind = classify(path, &name);
    if (kind == NODE_BACKUPS && in_push(fs, name)) {
        void *handle;
        int rc = push_create(fs->pushes, name, mode, &handle);
        if (rc == 0)
            fi->fh = (uint64_t)(uintptr_t)handle;
        return rc;
    }
    if (kind == NODE_BACKUPS) {
        log_error("create %s refused: finished base backups are read-only; push a new one "
                  "into a new directory", path);
        return -EROFS;
    }
    if (kind != NODE_WAL_FILE) {
        log_error("create %s refused: files can only be written into /%s/", path, WAL_DIR);
        return -EPERM;
    }
    return start_writer(fs, path, name, mode, fi);
}

static int walfs_open(const char *path, struct fuse_file_info *fi)
{
    walfs_fs *fs = current_fs();
    const char *name;
    node_kind kind = classify(path, &name);
    if (kind == NODE_BACKUPS && in_push(fs, name)) {
        void *handle;
        int rc = push_open(fs->pushes, name, fi->flags, &handle);
        if (rc == 0) {
            fi->fh = (uint64_t)(uintptr_t)handle;
            fi->direct_io = 1; /* a file being pushed changes under the same name */
        }
        return rc;
    }
    if (kind == NODE_BACKUPS) {
        if ((fi->flags & O_ACCMODE) != O_RDONLY)
            return -EROFS;
        void *handle;
        int rc = backup_view_open(fs->backups, name, &handle);
        if (rc)
            return rc;
        fi->fh = (uint64_t)(uintptr_t)handle;
        if (strcmp(name, BACKUP_LIST_FILE) == 0)
            fi->direct_io = 1; /* made at open: stat cannot know its size */
        else
            fi->keep_cache = 1; /* a backup never changes */
        return 0;
    }
    if (kind != NODE_WAL_FILE)
        return -ENOENT;
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
        if (!(fi->flags & O_TRUNC)) {
            log_error("open %s for writing without O_TRUNC refused: archived files are "
                      "write-once; copy the whole file again (cp) to re-archive it", path);
            return -EPERM;
        }
        return start_writer(fs, path, name, 0600, fi);
    }
    wal_handle *h = handle_new(name);
    if (!h)
        return -ENOMEM;
    walfs_err err = {0};
    store_stat meta;
    int rc = store_stat_key(fs->cfg.st, h->key, &meta, &err);
    if (!rc)
        rc = object_cache_open(fs->cache, h->key, &meta, &h->fd, &h->size, &err);
    if (rc) {
        handle_free(h);
        return report(rc, &err, "open", path);
    }
    h->mode = 0644;
    wal_prefetch_after(fs->prefetch, name, h->size);
    fi->fh = (uint64_t)(uintptr_t)h;
    fi->keep_cache = 1; /* archived objects never change under the same ETag */
    return 0;
}

static int walfs_read(const char *path, char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    if (kind_of(fi) == HANDLE_BACKUP_MEMBER)
        return backup_view_read(current_fs()->backups, (void *)(uintptr_t)fi->fh, buf, size, off);
    if (kind_of(fi) == HANDLE_PUSH_FILE)
        return push_read(current_fs()->pushes, (void *)(uintptr_t)fi->fh, buf, size, off);
    wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(h->fd, buf + got, size - got, off + (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_error("read %s: local copy unreadable: %s", path, strerror(errno));
            return -EIO;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (int)got;
}

static int walfs_write(const char *path, const char *buf, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    if (kind_of(fi) == HANDLE_PUSH_FILE)
        return push_write(current_fs()->pushes, (void *)(uintptr_t)fi->fh, buf, size, off);
    wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
    if (kind_of(fi) != HANDLE_WAL || !h->writable)
        return -EBADF;
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(h->fd, buf + done, size - done, off + (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            log_error("write %s: spooling to the cache directory failed: %s", path, strerror(e));
            return e == ENOSPC ? -ENOSPC : -EIO;
        }
        done += (size_t)n;
    }
    pthread_mutex_lock(&h->lock);
    if ((uint64_t)off + size > h->size)
        h->size = (uint64_t)off + size;
    h->dirty = 1;
    background_compressor_wrote(h->compressor, (uint64_t)off, size);
    pthread_mutex_unlock(&h->lock);
    return (int)size;
}

/* Uploads if anything changed since the last upload; otherwise repeats the
 * last result, so a second flush (after dup) neither uploads twice nor
 * loses the first error. */
static int sync_handle(wal_handle *h, const char *path, const char *op)
{
    walfs_fs *fs = current_fs();
    pthread_mutex_lock(&h->upload_lock);
    pthread_mutex_lock(&h->lock);
    int dirty = h->dirty;
    uint64_t size = h->size;
    h->dirty = 0; /* a write during the upload sets it again */
    background_compressor *bc = h->compressor;
    h->compressor = NULL; /* it covers one close; later writes compress at their close */
    pthread_mutex_unlock(&h->lock);
    char *compressed = NULL;
    size_t compressed_len = 0;
    char compressed_sha256[65] = "";
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (bc && dirty &&
        !background_compressor_finish(bc, size, &compressed, &compressed_len, compressed_sha256))
        compressed = NULL;
    background_compressor_free(bc);
    /* The check made while the file was written serves its first upload;
     * a later one (written again after a close) checks afresh. */
    const wal_probe *probe = NULL;
    if (h->probe_pending) {
        pthread_join(h->probe_thread, NULL);
        h->probe_pending = 0;
        probe = &h->probe;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (dirty) {
        walfs_err err = {0};
        int rc = wal_upload(fs->cfg.st, h->key, h->fd, size, h->mode, time(NULL), compressed,
                            compressed_len, compressed_sha256[0] ? compressed_sha256 : NULL,
                            probe, &err);
        clock_gettime(CLOCK_MONOTONIC, &t2);
        log_debug("%s: %.1f ms finishing compression, %.1f ms storing", h->key,
                  (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6,
                  (t2.tv_sec - t1.tv_sec) * 1e3 + (t2.tv_nsec - t1.tv_nsec) / 1e6);
        h->latched_error = rc ? report(rc, &err, op, path) : 0;
    }
    int rc = h->latched_error;
    pthread_mutex_unlock(&h->upload_lock);
    return rc;
}

static int walfs_flush(const char *path, struct fuse_file_info *fi)
{
    if (kind_of(fi) == HANDLE_PUSH_FILE)
        return push_flush(current_fs()->pushes, (void *)(uintptr_t)fi->fh);
    wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
    if (kind_of(fi) != HANDLE_WAL || !h->writable)
        return 0;
    return sync_handle(h, path, "archive");
}

static int walfs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    if (kind_of(fi) == HANDLE_PUSH_FILE)
        return push_flush(current_fs()->pushes, (void *)(uintptr_t)fi->fh);
    wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
    if (kind_of(fi) != HANDLE_WAL || !h->writable)
        return 0;
    return sync_handle(h, path, "archive (fsync)");
}

static int walfs_release(const char *path, struct fuse_file_info *fi)
{
    walfs_fs *fs = current_fs();
    if (kind_of(fi) == HANDLE_BACKUP_MEMBER) {
        backup_view_release(fs->backups, (void *)(uintptr_t)fi->fh);
        return 0;
    }
    if (kind_of(fi) == HANDLE_PUSH_FILE) {
        push_release(fs->pushes, (void *)(uintptr_t)fi->fh);
        /* Walfs has the data now; nobody will read it back through this
         * name.  Dropping the kernel's copy at once keeps a push from
         * filling the page cache (evicting the database's own pages), and
         * the next file reuses the freed pages.  The last close wrote every
         * dirty page back, so this does not wait for writeback. */
        if ((fi->flags & O_ACCMODE) != O_RDONLY && path)
            fuse_invalidate_path(fuse_get_context()->fuse, path);
        return 0;
    }
    wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
    if (h->writable) {
        /* The kernel ignores release's result, so this is only a last
         * attempt for writers that never flushed; their error was logged. */
        sync_handle(h, path, "archive (release)");
        pthread_mutex_lock(&fs->writers_lock);
        for (wal_handle **p = &fs->writers; *p; p = &(*p)->next_writer) {
            if (*p == h) {
                *p = h->next_writer;
                break;
            }
        }
        pthread_mutex_unlock(&fs->writers_lock);
    }
    handle_free(h);
    return 0;
}

static int walfs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    const char *name;
    if (classify(path, &name) == NODE_BACKUPS && in_push(current_fs(), name))
        return push_truncate(current_fs()->pushes, name,
                             kind_of(fi) == HANDLE_PUSH_FILE ? (void *)(uintptr_t)fi->fh : NULL,
                             size);
    if (kind_of(fi) == HANDLE_WAL) {
        wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
        if (h->writable) {
            if (ftruncate(h->fd, size) != 0)
                return -errno;
            pthread_mutex_lock(&h->lock);
            h->size = (uint64_t)size;
            h->dirty = 1;
            background_compressor_abandon(h->compressor);
            pthread_mutex_unlock(&h->lock);
            return 0;
        }
    }
    log_error("truncate %s refused: archived files are write-once", path);
    return -EPERM;
}

static int refuse(const char *op, const char *path)
{
    log_error("%s %s refused: the archive is write-once (files can only be added to /%s/)", op,
              path, WAL_DIR);
    return -EPERM;
}

/* The name under /basebackups_005 when path is inside a push, else NULL. */
static const char *push_path(const char *path)
{
    const char *name;
    if (classify(path, &name) == NODE_BACKUPS && in_push(current_fs(), name))
        return name;
    return NULL;
}

static int walfs_unlink(const char *path)
{
    const char *rel = push_path(path);
    return rel ? push_unlink(current_fs()->pushes, rel) : refuse("unlink", path);
}

static int walfs_mkdir(const char *path, mode_t mode)
{
    walfs_fs *fs = current_fs();
    const char *name;
    if (classify(path, &name) != NODE_BACKUPS || name[0] == '\0')
        return refuse("mkdir", path);
    if (!in_push(fs, name)) {
        /* A new directory directly under basebackups_005 starts a push,
         * unless the name is taken by a finished backup or LATEST. */
        struct stat st;
        if (strchr(name, '/') || backup_view_getattr(fs->backups, name, &st) == 0) {
            log_error("mkdir %s refused: %s", path, strchr(name, '/')
                          ? "finished base backups are read-only"
                          : "a backup or LATEST already has that name; push into a new directory");
            return strchr(name, '/') ? -EROFS : -EEXIST;
        }
    }
    return push_mkdir(fs->pushes, name, mode);
}

static int walfs_rmdir(const char *path)
{
    const char *rel = push_path(path);
    return rel ? push_rmdir(current_fs()->pushes, rel) : refuse("rmdir", path);
}

static void *forget_main(void *arg)
{
    walfs_fs *fs = arg;
    pthread_mutex_lock(&fs->forget_lock);
    while (!fs->forget_stop) {
        if (!fs->forget_pending) {
            pthread_cond_wait(&fs->forget_wake, &fs->forget_lock);
            continue;
        }
        fs->forget_pending = 0;
        pthread_mutex_unlock(&fs->forget_lock);
        /* Drops basebackups_005 and every name under it from the kernel's
         * cache, so the finished push's names cannot answer for the next
         * push into the same directory (mkdir would fail with EEXIST). */
        fuse_lowlevel_notify_inval_entry(fs->session, FUSE_ROOT_ID, BASEBACKUP_DIR,
                                         strlen(BASEBACKUP_DIR));
        pthread_mutex_lock(&fs->forget_lock);
    }
    pthread_mutex_unlock(&fs->forget_lock);
    return NULL;
}

static void forget_backup_names(walfs_fs *fs)
{
    pthread_mutex_lock(&fs->forget_lock);
    if (!fs->forget_started && fs->session)
        fs->forget_started = pthread_create(&fs->forget_thread, NULL, forget_main, fs) == 0;
    fs->forget_pending = 1;
    pthread_cond_signal(&fs->forget_wake);
    pthread_mutex_unlock(&fs->forget_lock);
}

static int walfs_rename(const char *from, const char *to, unsigned int flags)
{
    const char *rel = push_path(from);
    const char *to_name;
    /* mv asks for RENAME_NOREPLACE; nothing here is ever replaced implicitly. */
    if (!rel || classify(to, &to_name) != NODE_BACKUPS || (flags & ~RENAME_NOREPLACE) != 0)
        return refuse("rename", from);
    int completed = 0;
    int rc = push_rename(current_fs()->pushes, rel, to_name, &completed);
    if (completed)
        forget_backup_names(current_fs());
    return rc;
}

static int walfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    const char *rel = push_path(path);
    return rel ? push_chmod(current_fs()->pushes, rel, mode) : refuse("chmod", path);
}

static int walfs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    const char *rel = push_path(path);
    return rel ? push_chown(current_fs()->pushes, rel, uid, gid) : refuse("chown", path);
}

static int walfs_symlink(const char *target, const char *path)
{
    const char *rel = push_path(path);
    return rel ? push_symlink(current_fs()->pushes, target, rel) : refuse("symlink", path);
}

static int walfs_link(const char *from, const char *to)
{
    const char *rel_from = push_path(from), *rel_to = push_path(to);
    return rel_from && rel_to ? push_link(current_fs()->pushes, rel_from, rel_to)
                              : refuse("link", to);
}

static int walfs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    /* Timestamps are the store's; accept the request on a file being
     * written (tools set them after copying) and ignore it. */
    if (kind_of(fi) == HANDLE_WAL && ((wal_handle *)(uintptr_t)fi->fh)->writable)
        return 0;
    const char *rel = push_path(path);
    return rel ? push_utimens(current_fs()->pushes, rel, tv) : refuse("utimens", path);
}

static int walfs_readlink(const char *path, char *buf, size_t size)
{
    const char *name;
    if (classify(path, &name) != NODE_BACKUPS)
        return -EINVAL;
    if (in_push(current_fs(), name))
        return push_readlink(current_fs()->pushes, name, buf, size);
    return backup_view_readlink(current_fs()->backups, name, buf, size);
}

static int walfs_statfs(const char *path, struct statvfs *sv)
{
    memset(sv, 0, sizeof *sv);
    sv->f_bsize = sv->f_frsize = 4096;
    sv->f_blocks = sv->f_bfree = sv->f_bavail = UINT32_MAX; /* object storage has no fixed size */
    sv->f_files = sv->f_ffree = sv->f_favail = UINT32_MAX;
    sv->f_namemax = NAME_MAX - strlen(LZO_SUFFIX);
    return 0;
}

static void *walfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    walfs_fs *fs = current_fs();
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
        conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    /* A segment in 1 MiB requests instead of 128 KiB ones: fewer round
     * trips through the kernel for every cp in and out. */
    conn->max_write = 1024 * 1024;
    /* pg_basebackup writes a data directory in ~16 KiB pieces; without the
     * kernel gathering them into max_write requests, each one is a round
     * trip through walfs and a push runs at a third of the disk's speed.
     * close() and fsync() still return only after every page reached walfs
     * (the kernel writes them back before FLUSH and FSYNC).  No getxattr
     * operation either, for the same reason: while walfs answers getxattr,
     * the kernel asks it for security.capability before every write(2). */
    if (conn->capable & FUSE_CAP_WRITEBACK_CACHE)
        conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    conn->max_readahead = 1024 * 1024;
    cfg->entry_timeout = fs->cfg.attr_timeout;
    cfg->attr_timeout = fs->cfg.attr_timeout;
    cfg->negative_timeout = 0; /* a standby polling for the next segment must see it at once */
    cfg->nullpath_ok = 0;
    /* No FLUSH round trip for read-only descriptors, which walfs has
     * nothing to do for: pg_basebackup opens every file it wrote once more
     * read-only to sync it. */
    cfg->no_rofd_flush = 1;
    fs->session = fuse_get_session(fuse_get_context()->fuse);
    return fs;
}

/* Runs before libfuse frees the session the forgetting thread writes to. */
static void walfs_destroy(void *private_data)
{
    walfs_fs *fs = private_data;
    pthread_mutex_lock(&fs->forget_lock);
    fs->forget_stop = 1;
    pthread_cond_signal(&fs->forget_wake);
    int started = fs->forget_started;
    fs->forget_started = 0;
    pthread_mutex_unlock(&fs->forget_lock);
    if (started)
        pthread_join(fs->forget_thread, NULL);
    fs->session = NULL;
}

static const struct fuse_operations operations = {
    .init = walfs_init,
    .destroy = walfs_destroy,
    .getattr = walfs_getattr,
    .readdir = walfs_readdir,
    .create = walfs_create,
    .open = walfs_open,
    .read = walfs_read,
    .write = walfs_write,
    .flush = walfs_flush,
    .fsync = walfs_fsync,
    .release = walfs_release,
    .truncate = walfs_truncate,
    .unlink = walfs_unlink,
    .mkdir = walfs_mkdir,
    .rmdir = walfs_rmdir,
    .rename = walfs_rename,
    .chmod = walfs_chmod,
    .chown = walfs_chown,
    .symlink = walfs_symlink,
    .link = walfs_link,
    .utimens = walfs_utimens,
    .statfs = walfs_statfs,
    .readlink = walfs_readlink,
};

const struct fuse_operations *walfs_fs_operations(void) { return &operations; }

walfs_fs *walfs_fs_new(const walfs_fs_config *cfg, walfs_err *err)
{
    walfs_fs *fs = calloc(1, sizeof *fs);
    if (!fs) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    fs->cfg = *cfg;
    fs->uid = getuid();
    fs->gid = getgid();
    fs->mount_time = time(NULL);
    pthread_mutex_init(&fs->writers_lock, NULL);
    pthread_mutex_init(&fs->forget_lock, NULL);
    pthread_cond_init(&fs->forget_wake, NULL);
    if (mkdir(cfg->cache_dir, 0700) != 0 && errno != EEXIST) {
        walfs_err_set(err, -errno, "cannot create cache directory %s: %s (set --cache-dir)",
                      cfg->cache_dir, strerror(errno));
        walfs_fs_free(fs);
        return NULL;
    }
    if (asprintf(&fs->spool_dir, "%s/spool", cfg->cache_dir) < 0) {
        fs->spool_dir = NULL;
        walfs_fs_free(fs);
        return NULL;
    }
    if (mkdir(fs->spool_dir, 0700) != 0 && errno != EEXIST) {
        walfs_err_set(err, -errno, "cannot create spool directory %s: %s", fs->spool_dir,
                      strerror(errno));
        walfs_fs_free(fs);
        return NULL;
    }
    fs->cache = object_cache_new(cfg->st, cfg->cache_dir, cfg->cache_max_bytes, err);
    if (fs->cache)
        fs->prefetch = wal_prefetch_new(cfg->st, fs->cache, cfg->prefetch_segments);
    if (fs->cache)
        fs->backups = backup_view_new(cfg->st, cfg->cache_dir, fs->uid, fs->gid, fs->mount_time,
                                      err);
    if (fs->backups) {
        push_settings ps = {.spool_dir = fs->spool_dir, .spool_max_bytes = cfg->push_spool_bytes,
                            .reorder_max_bytes = cfg->push_reorder_bytes,
                            .limits = cfg->push_limits};
        fs->pushes = push_registry_new(cfg->st, &ps, fs->uid, fs->gid, err);
    }
    if (!fs->cache || !fs->backups || !fs->pushes) {
        walfs_fs_free(fs);
        return NULL;
    }
    return fs;
}

void walfs_fs_free(walfs_fs *fs)
{
    if (!fs)
        return;
    push_registry_free(fs->pushes);
    backup_view_free(fs->backups);
    wal_prefetch_free(fs->prefetch);
    object_cache_free(fs->cache);
    pthread_mutex_destroy(&fs->writers_lock);
    pthread_mutex_destroy(&fs->forget_lock);
    pthread_cond_destroy(&fs->forget_wake);
    free(fs->spool_dir);
    free(fs);
}
