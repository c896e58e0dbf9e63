#include "fuse/walfs_fs.h"

#include <fuse_lowlevel.h>

#include "wale/layout.h"

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

#include "common/deadline.h"
#include "common/log.h"
#include "common/private_dir.h"
#include "wal/background_compressor.h"
#include "pg/caller.h"
#include "wal/outage_wait.h"
#include "fuse/backup_view.h"
#include "fuse/errno_policy.h"
#include "push/push_session.h"
#include "wal/object_cache.h"
#include "push/spool_file.h"
#include "wal/wal_prefetch.h"
#include "wal/wal_upload.h"
#include "pg/wal_file.h"

#define WAL_FILE_MODE 0600 /* pg_wal's: a segment may hold any row of any table */

typedef enum node_kind {
    NODE_ROOT,
    NODE_WAL_DIR,
    NODE_WAL_FILE,
    NODE_BACKUPS,   /* /basebackups_005 and everything below it */
    NODE_NONE,
} node_kind;

/* Entries of the small tables of names seen lately (misses, stores). */
#define RECENT_SLOTS 16

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
    int probe_ready;        /* probe holds an answer without a thread (a fresh 404) */
    wal_probe probe;
    store *probe_store;
    uint64_t budget_ms;     /* what is left of the cp's --deadline for the probe and upload */
    pid_t writer_pid;       /* the process that created it */
    int latched_error;      /* result of the last upload, returned by every later flush */
    int scratch;            /* a dot-name (rsync's temporary): stored only by a rename */
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
    /* Closed temporary files (rsync writes ".NAME.XXXXXX" and renames it
     * to NAME): kept locally until renamed into the archive or removed. */
    struct scratch_file {
        char *name;
        int fd;
        uint64_t size;
        mode_t mode;
        struct scratch_file *next;
    } *scratch;
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
    /* Names that were just looked up and missing (or unanswered): the
     * lookups, the create and the upload of one archiving cp share one
     * --deadline, and its write-once check reuses the lookup's 404 instead
     * of asking again. */
    pthread_mutex_t misses_lock;
    struct recent_miss {
        char name[NAME_MAX + 1];
        uint64_t chain_start_ms, last_ms;
        int was_404;        /* the store said missing (not: did not answer) */
    } misses[RECENT_SLOTS];
    unsigned misses_next;
    /* Names this mount archived lately: install and rsync set the mode and
     * times of the file they just wrote, after the close that stored it;
     * that is accepted (and ignored: they are in the lzop header already). */
    struct recent_store {
        char name[NAME_MAX + 1];
        uint64_t at_ms;
        pid_t writer;       /* the process that wrote it */
    } stored[RECENT_SLOTS];
    unsigned stored_next;
};

#define RECENT_STORE_MS 60000

static node_kind classify(const char *path, const char **name);

static void remember_stored(walfs_fs *fs, const char *name, pid_t writer)
{
    pthread_mutex_lock(&fs->misses_lock);
    struct recent_store *slot = &fs->stored[fs->stored_next++ % RECENT_SLOTS];
    snprintf(slot->name, sizeof slot->name, "%s", name);
    slot->at_ms = deadline_now_ms();
    slot->writer = writer;
    pthread_mutex_unlock(&fs->misses_lock);
}

static int stored_lately(walfs_fs *fs, const char *path)
{
    const char *name;
    if (classify(path, &name) != NODE_WAL_FILE)
        return 0;
    int found = 0;
    uint64_t now = deadline_now_ms();
    pid_t caller = fuse_get_context()->pid;
    pthread_mutex_lock(&fs->misses_lock);
    for (unsigned i = 0; i < RECENT_SLOTS && !found; i++)
        found = fs->stored[i].at_ms && now - fs->stored[i].at_ms < RECENT_STORE_MS &&
                fs->stored[i].writer == caller && strcmp(fs->stored[i].name, name) == 0;
    pthread_mutex_unlock(&fs->misses_lock);
    return found;
}

/* A 404 this recent still answers the write-once check of a create. */
#define FRESH_MISS_MS 2000
/* A run of lookups of one name older than this starts afresh: a standby
 * polling for a segment every 200 ms must not run on leftover budgets for
 * good.  Between one and two deadlines a lookup gets budget_left's floor. */
#define CHAIN_MAX_DEADLINES 2

/* When the operation on name that starts now began, for its deadline: the
 * start of a run of lookups of the same missing name in quick succession
 * (an archiving cp's stat and create), else now. */
static uint64_t operation_start(walfs_fs *fs, const char *name, int *fresh_miss)
{
    uint64_t now = deadline_now_ms(), start = now;
    *fresh_miss = 0;
    pthread_mutex_lock(&fs->misses_lock);
    for (unsigned i = 0; i < RECENT_SLOTS; i++) {
        struct recent_miss *m = &fs->misses[i];
        if (m->last_ms && strcmp(m->name, name) == 0 && now - m->last_ms < FRESH_MISS_MS &&
            now - m->chain_start_ms < CHAIN_MAX_DEADLINES * (uint64_t)fs->cfg.deadline_ms) {
            start = m->chain_start_ms;
            *fresh_miss = m->was_404;
        }
    }
    pthread_mutex_unlock(&fs->misses_lock);
    return start;
}

/* rc: the lookup's result, -ENOENT or a failure. */
static void remember_miss(walfs_fs *fs, const char *name, uint64_t op_start, int rc)
{
    uint64_t now = deadline_now_ms();
    pthread_mutex_lock(&fs->misses_lock);
    struct recent_miss *slot = NULL;
    for (unsigned i = 0; i < RECENT_SLOTS && !slot; i++)
        if (strcmp(fs->misses[i].name, name) == 0)
            slot = &fs->misses[i];
    if (!slot) {
        slot = &fs->misses[fs->misses_next++ % (RECENT_SLOTS)];
        snprintf(slot->name, sizeof slot->name, "%s", name);
        slot->chain_start_ms = op_start;
    } else if (now - slot->last_ms >= FRESH_MISS_MS ||
               now - slot->chain_start_ms >= CHAIN_MAX_DEADLINES * (uint64_t)fs->cfg.deadline_ms) {
        slot->chain_start_ms = op_start;
    }
    slot->last_ms = now;
    slot->was_404 = rc == -ENOENT;
    pthread_mutex_unlock(&fs->misses_lock);
}

static void forget_miss(walfs_fs *fs, const char *name)
{
    pthread_mutex_lock(&fs->misses_lock);
    for (unsigned i = 0; i < RECENT_SLOTS; i++)
        if (strcmp(fs->misses[i].name, name) == 0)
            fs->misses[i].last_ms = 0;
    pthread_mutex_unlock(&fs->misses_lock);
}

/* What is left of an operation's --deadline that began at start; never
 * nothing, so a request that is answered at once still gets its answer. */
static uint64_t budget_left(const walfs_fs *fs, uint64_t start)
{
    uint64_t end = start + (uint64_t)fs->cfg.deadline_ms, now = deadline_now_ms();
    uint64_t floor = 1000;
    return end > now + floor ? end - now : floor;
}

/* The request went away (the caller was interrupted: ^C, PostgreSQL
 * shutting down) or the filesystem is being unmounted. */
static int request_gone(void *ctx)
{
    walfs_fs *fs = ctx;
    return fuse_interrupted() || (fs->session && fuse_session_exited(fs->session));
}

/* The store's stat of a wal_005 object, and its decompressed size or its
 * verified decompressed copy (fd_out non-NULL).  A read waits through an
 * outage (wal/outage_wait.h): only the archive's 404 is ENOENT, and nothing
 * but the store's final answer ends the wait.  The archiver's lookups
 * (archive_command's cp looking at its destination) fail after the
 * deadline instead, so PostgreSQL retries and can shut down. */
static int read_wal_object(walfs_fs *fs, const char *op, const char *name, const char *key,
                           store_stat *meta, uint64_t *size_out, int *fd_out, walfs_err *err)
{
    int patient = -1; /* asked of /proc only once the store fails to answer */
    char what[160];
    snprintf(what, sizeof what, "%s %s", op, key);
    outage_wait wait;
    outage_wait_init(&wait, what, (uint64_t)fs->cfg.restore_outage_limit_ms, request_gone, fs);
    int rc, fresh;
    do {
        uint64_t start = operation_start(fs, name, &fresh);
        uint64_t outer = deadline_scope_begin(budget_left(fs, start));
        rc = store_stat_key(fs->cfg.st, key, meta, err);
        if (rc == -ENOENT || rc == -ETIMEDOUT)
            remember_miss(fs, name, start, rc);
        else if (!rc && fd_out)
            rc = object_cache_open(fs->cache, key, meta, fd_out, size_out, err);
        else if (!rc)
            rc = object_cache_size(fs->cache, key, meta, size_out, err);
        deadline_scope_end(outer);
        if (rc == -ETIMEDOUT && patient < 0)
            patient = !caller_is_wal_archiver(fuse_get_context()->pid);
    } while (patient > 0 && outage_wait_retry(&wait, rc, err));
    outage_wait_end(&wait, rc);
    return rc;
}

static walfs_fs *current_fs(void) { return fuse_get_context()->private_data; }

/* The process a FUSE request came from; it owns what it creates in a push. */
static push_caller current_caller(void)
{
    const struct fuse_context *ctx = fuse_get_context();
    return (push_caller){.uid = ctx->uid, .gid = ctx->gid};
}

typedef struct fuse_fill_ctx {
    void *buf;
    fuse_fill_dir_t filler;
} fuse_fill_ctx;

static int fill_from_push(void *ctx, const char *name, const struct stat *st)
{
    fuse_fill_ctx *f = ctx;
    return f->filler(f->buf, name, st, 0, 0);
}

/* *name is the file name for NODE_WAL_FILE and the path relative to
 * /basebackups_005 for NODE_BACKUPS. */
static node_kind classify(const char *path, const char **name)
{
    *name = NULL;
    if (strcmp(path, "/") == 0)
        return NODE_ROOT;
    if (strcmp(path, "/" WALE_WAL_DIR) == 0)
        return NODE_WAL_DIR;
    if (strcmp(path, "/" WALE_BASEBACKUPS_DIR) == 0) {
        *name = "";
        return NODE_BACKUPS;
    }
    const char *backup_prefix = "/" WALE_BASEBACKUPS_DIR "/";
    if (strncmp(path, backup_prefix, strlen(backup_prefix)) == 0) {
        *name = path + strlen(backup_prefix);
        return NODE_BACKUPS;
    }
    const char *wal_prefix = "/" WALE_WAL_DIR "/";
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
    size_t len = strlen(wale_wal_prefix()) + strlen(name) + strlen(WALE_LZO_SUFFIX) + 1;
    char *k = malloc(len);
    if (k && wale_wal_key(k, len, name) != 0) {
        free(k);
        k = NULL;
    }
    return k;
}

static void fill_dir_stat(const walfs_fs *fs, struct stat *st, mode_t mode)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFDIR | mode;
    st->st_nlink = 2;
    st->st_uid = fs->uid;
    st->st_gid = fs->gid;
    st->st_mtime = st->st_ctime = st->st_atime = fs->mount_time;
}

/* Every file in wal_005 shows as 0600, whatever mode its writer gave it
 * (that mode goes into the lzop header only). */
static void fill_file_stat(const walfs_fs *fs, struct stat *st, uint64_t size, time_t mtime)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | WAL_FILE_MODE;
    st->st_nlink = 1;
    st->st_uid = fs->uid;
    st->st_gid = fs->gid;
    st->st_size = (off_t)size;
    st->st_blocks = (blkcnt_t)((size + 511) / 512);
    st->st_blksize = 1024 * 1024; /* cp sizes its buffer by this */
    st->st_mtime = st->st_ctime = st->st_atime = mtime;
}

/* The closed temporary file called name; fs->writers_lock held. */
static struct scratch_file *find_scratch(walfs_fs *fs, const char *name)
{
    for (struct scratch_file *f = fs->scratch; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static void keep_scratch(walfs_fs *fs, struct scratch_file *f)
{
    pthread_mutex_lock(&fs->writers_lock);
    f->next = fs->scratch;
    fs->scratch = f;
    pthread_mutex_unlock(&fs->writers_lock);
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
        fill_file_stat(fs, st, h->size, time(NULL));
        pthread_mutex_unlock(&h->lock);
        return 0;
    }
    const char *name;
    switch (classify(path, &name)) {
    case NODE_ROOT:
        fill_dir_stat(fs, st, 0755);
        return 0;
    case NODE_WAL_DIR:
        /* As PostgreSQL keeps pg_wal: with allow_other (and so
         * default_permissions) only the owner may list, read or archive. */
        fill_dir_stat(fs, st, 0700);
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
        fill_file_stat(fs, st, w->size, time(NULL));
        pthread_mutex_unlock(&w->lock);
        pthread_mutex_unlock(&fs->writers_lock);
        return 0;
    }
    struct scratch_file *f = find_scratch(fs, name);
    if (f) {
        fill_file_stat(fs, st, f->size, time(NULL));
        pthread_mutex_unlock(&fs->writers_lock);
        return 0;
    }
    pthread_mutex_unlock(&fs->writers_lock);
    if (name[0] == '.')
        return -ENOENT; /* temporary names are never archived */

    char *key = wal_key(name);
    if (!key)
        return -ENOMEM;
    walfs_err err = {0};
    store_stat meta;
    uint64_t size = 0;
    int rc = read_wal_object(fs, "lookup", name, key, &meta, &size, NULL, &err);
    free(key);
    if (rc)
        return fs_errno(rc, &err, "lookup", path);
    fill_file_stat(fs, st, size, meta.mtime);
    return 0;
}

/* An open wal_005, read a page of the archive's listing at a time: libfuse
 * would otherwise hold the whole directory (1 M segments: 250 MB) until
 * the reader is done.  Offsets: 1 and 2 follow "." and "..", 3 + i follows
 * the listing's entry i.  libfuse serializes the calls on one handle. */
typedef struct wal_dir {
    store_lister *lister;
    int done;               /* the lister gave its last page */
    uint64_t base;          /* index in the listing of names[0] */
    char **names;           /* the current page's WAL names */
    size_t n, cap;
    int oom;
} wal_dir;

#define DIR_OFFSET_FIRST 3  /* given with the listing's first entry */

static void wal_dir_drop_page(wal_dir *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->names[i]);
    d->base += d->n;
    d->n = 0;
}

static void wal_dir_free(wal_dir *d)
{
    if (!d)
        return;
    wal_dir_drop_page(d);
    free(d->names);
    store_lister_close(d->lister);
    free(d);
}

static int add_wal_entry(void *ctx, const store_entry *e)
{
    wal_dir *d = ctx;
    size_t stem = e->is_dir ? 0 : wale_wal_file_len(e->name);
    if (!stem)
        return 0; /* not something WAL-E's wal-push writes */
    if (stem > NAME_MAX)
        return 0;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 256;
        char **grown = realloc(d->names, cap * sizeof *grown);
        if (!grown) {
            d->oom = 1;
            return -ENOMEM;
        }
        d->names = grown;
        d->cap = cap;
    }
    if (!(d->names[d->n] = strndup(e->name, stem))) {
        d->oom = 1;
        return -ENOMEM;
    }
    d->n++;
    return 0;
}

static int walfs_opendir(const char *path, struct fuse_file_info *fi)
{
    fi->fh = 0;
    if (strcmp(path, "/" WALE_WAL_DIR) != 0)
        return 0;
    walfs_fs *fs = current_fs();
    walfs_err err = {0};
    wal_dir *d = calloc(1, sizeof *d);
    int rc = d ? store_lister_open(fs->cfg.st, WALE_WAL_DIR "/", &d->lister, &err)
               : walfs_err_set(&err, -ENOMEM, "out of memory");
    if (rc) {
        free(d);
        return fs_errno(rc, &err, "opendir", path);
    }
    fi->fh = (uintptr_t)d;
    return 0;
}

static int walfs_releasedir(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    wal_dir_free((wal_dir *)(uintptr_t)fi->fh);
    fi->fh = 0;
    return 0;
}

/* Makes entry i of the listing the current page's or past the end: pages
 * are fetched only as the reader gets to them, and only at the start of a
 * call, so the kernel's resumption (at the first entry its reader had no
 * room for) is always in the page kept.  An earlier offset (rewinddir,
 * seekdir) lists again from the start. */
static int wal_dir_seek(walfs_fs *fs, wal_dir *d, uint64_t i, walfs_err *err)
{
    if (i < d->base) {
        store_lister *fresh;
        int rc = store_lister_open(fs->cfg.st, WALE_WAL_DIR "/", &fresh, err);
        if (rc)
            return rc;
        wal_dir_drop_page(d);
        store_lister_close(d->lister);
        d->lister = fresh;
        d->base = 0;
        d->done = 0;
    }
    while (i >= d->base + d->n && !d->done) {
        wal_dir_drop_page(d);
        int rc = store_lister_next(d->lister, add_wal_entry, d, &d->done, err);
        if (d->oom) {
            /* the partial page is dropped below, base kept at its start */
            d->oom = 0;
            rc = walfs_err_set(err, -ENOMEM, "out of memory");
        }
        if (rc) {
            d->base -= d->n;
            wal_dir_drop_page(d); /* a partial page: fetched again next time */
            return rc;
        }
    }
    return 0;
}

static int readdir_wal(walfs_fs *fs, const char *path, wal_dir *d, void *buf,
                       fuse_fill_dir_t filler, off_t offset)
{
    if (offset < 0)
        return -EINVAL;
    if (offset == 0 && filler(buf, ".", NULL, 1, 0))
        return 0;
    if (offset <= 1 && filler(buf, "..", NULL, 2, 0))
        return 0;
    /* offset is what was given with the last entry the reader took */
    uint64_t i = offset < DIR_OFFSET_FIRST ? 0 : (uint64_t)offset - DIR_OFFSET_FIRST + 1;
    walfs_err err = {0};
    /* One --deadline for the call, and none of it once its reader is gone. */
    uint64_t outer = deadline_scope_begin((uint64_t)fs->cfg.deadline_ms);
    deadline_stop_when(request_gone, fs);
    int rc = wal_dir_seek(fs, d, i, &err);
    deadline_stop_when(NULL, NULL);
    deadline_scope_end(outer);
    if (rc)
        return fs_errno(rc, &err, "list", path);
    struct stat st = {.st_mode = S_IFREG | 0644};
    for (; i < d->base + d->n; i++)
        if (filler(buf, d->names[i - d->base], &st, (off_t)(i + DIR_OFFSET_FIRST), 0))
            break;
    return 0;
}

static int walfs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset,
                         struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)flags;
    walfs_fs *fs = current_fs();
    const char *name;
    node_kind kind = classify(path, &name);
    if (kind == NODE_NONE || kind == NODE_WAL_FILE)
        return kind == NODE_NONE ? -ENOENT : -ENOTDIR;
    if (kind == NODE_WAL_DIR) {
        if (!fi || !fi->fh)
            return -EIO; /* opened before it was wal_005? cannot happen */
        return readdir_wal(fs, path, (wal_dir *)(uintptr_t)fi->fh, buf, filler, offset);
    }
    filler(buf, ".", NULL, 0, 0);
    filler(buf, "..", NULL, 0, 0);
    if (kind == NODE_ROOT) {
        struct stat st = {.st_mode = S_IFDIR | 0755};
        filler(buf, WALE_WAL_DIR, &st, 0, 0);
        filler(buf, WALE_BASEBACKUPS_DIR, &st, 0, 0);
        return 0;
    }
    if (kind == NODE_BACKUPS && in_push(fs, name))
        return push_readdir(fs->pushes, name, fill_from_push, &(fuse_fill_ctx){buf, filler});
    if (name[0] == '\0')
        push_list_sessions(fs->pushes, fill_from_push, &(fuse_fill_ctx){buf, filler});
    return backup_view_readdir(fs->backups, name, buf, filler);
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
    uint64_t outer = deadline_scope_begin(h->budget_ms);
    wal_probe_run(h->probe_store, h->key, &h->probe);
    deadline_scope_end(outer);
    return NULL;
}

static int start_writer(walfs_fs *fs, const char *path, const char *name, mode_t mode,
                        struct fuse_file_info *fi)
{
    if (strncmp(name, STORE_RESERVED_PREFIX, strlen(STORE_RESERVED_PREFIX)) == 0) {
        log_error("create %s refused: names starting %s are reserved for walfs's temporary "
                  "files (such a file would never be listed); use another name", path,
                  STORE_RESERVED_PREFIX);
        return -EINVAL;
    }
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
    h->writer_pid = fuse_get_context()->pid;
    h->mode = mode & 0777 ? mode & 0777 : 0600;
    h->dirty = 1; /* even an empty file is an archive request */
    /* Without it the archive still works, compressing at close. */
    h->compressor = background_compressor_start(h->fd, h->mode, time(NULL));
    int fresh_miss;
    uint64_t start = operation_start(fs, name, &fresh_miss);
    h->budget_ms = budget_left(fs, start);
    h->scratch = name[0] == '.';
    if (h->scratch) {
        /* checked when it is renamed to its archive name */
    } else if (fresh_miss) {
        /* The lookup in front of this create was answered 404 a moment ago. */
        h->probe.rc = -ENOENT;
        h->probe_ready = 1;
    } else {
        /* Without it the check runs at close. */
        h->probe_store = fs->cfg.st;
        h->probe_pending = pthread_create(&h->probe_thread, NULL, probe_main, h) == 0;
    }
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
        push_caller who = current_caller();
        int rc = push_create(fs->pushes, name, mode, &who, &handle);
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
        log_error("create %s refused: files can only be written into /%s/", path, WALE_WAL_DIR);
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
        push_caller who = current_caller();
        int rc = push_open(fs->pushes, name, fi->flags, &who, &handle);
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
        if (strcmp(name, BACKUP_LIST_FILE) == 0 || backup_view_needs_direct_io(handle))
            fi->direct_io = 1; /* stat does not (or may not) give its size */
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
    if (name[0] == '.') {
        /* A closed temporary file, read back by its writer (rsync does). */
        pthread_mutex_lock(&fs->writers_lock);
        struct scratch_file *f = find_scratch(fs, name);
        if (f) {
            h->fd = dup(f->fd);
            h->size = f->size;
        }
        pthread_mutex_unlock(&fs->writers_lock);
        if (h->fd < 0) {
            handle_free(h);
            return -ENOENT;
        }
        h->mode = 0600;
        fi->fh = (uint64_t)(uintptr_t)h;
        fi->direct_io = 1;
        return 0;
    }
    walfs_err err = {0};
    store_stat meta;
    int rc = read_wal_object(fs, "open", name, h->key, &meta, &h->size, &h->fd, &err);
    if (rc) {
        handle_free(h);
        return fs_errno(rc, &err, "open", path);
    }
    h->mode = WAL_FILE_MODE;
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

/* Whether what a handle holds may be stored under its name now: 1 yes;
 * -ENODATA when nothing was written (the shell's redirection closes its
 * first descriptor before a byte is written, and ignores that close's
 * result; a cp of an empty file must not exit 0 with nothing stored);
 * -EIO when the start of a segment says it is longer than what arrived (a
 * flush of a descriptor that did not write the whole file: if it is the
 * last close, its caller must not take it for archived). */
static int ready_to_store(wal_handle *h, uint64_t size, const char *path)
{
    if (size == 0) {
        log_debug("archive %s: a close with nothing written yet stores nothing", path);
        return -ENODATA;
    }
    if (!wal_name_is_segment(h->name))
        return 1;
    unsigned char head[WAL_LONG_HEADER_BYTES];
    ssize_t n = pread(h->fd, head, sizeof head, 0);
    uint64_t expected = 0;
    if (n > 0 && wal_segment_check(head, (size_t)n, size, &expected) == 0) {
        log_error("archive %s: not stored: %llu bytes arrived of a %llu-byte segment (its page "
                  "header says so); it is stored once a close follows the whole segment",
                  path, (unsigned long long)size, (unsigned long long)expected);
        return -EIO;
    }
    return 1;
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
    pthread_mutex_unlock(&h->lock);
    int ready = dirty ? ready_to_store(h, size, path) : 1;
    if (ready <= 0) {
        pthread_mutex_unlock(&h->upload_lock);
        return ready;
    }
    pthread_mutex_lock(&h->lock);
    dirty = h->dirty;
    size = h->size;
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
    } else if (h->probe_ready) {
        h->probe_ready = 0;
        probe = &h->probe;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (dirty) {
        walfs_err err = {0};
        /* The cp's remaining --deadline; a later upload of the same handle
         * (written again after a close) gets a whole one. */
        uint64_t outer = deadline_scope_begin(h->budget_ms ? h->budget_ms
                                                           : (uint64_t)fs->cfg.deadline_ms);
        h->budget_ms = 0;
        forget_miss(fs, h->name);
        int rc = wal_upload(fs->cfg.st, h->key, h->fd, size, h->mode, time(NULL), compressed,
                            compressed_len, compressed_sha256[0] ? compressed_sha256 : NULL,
                            probe, &err);
        deadline_scope_end(outer);
        clock_gettime(CLOCK_MONOTONIC, &t2);
        log_debug("%s: %.1f ms finishing compression, %.1f ms storing", h->key,
                  (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6,
                  (t2.tv_sec - t1.tv_sec) * 1e3 + (t2.tv_nsec - t1.tv_nsec) / 1e6);
        h->latched_error = rc ? fs_errno(rc, &err, op, path) : 0;
        if (!rc)
            remember_stored(fs, h->name, h->writer_pid);
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
    if (kind_of(fi) != HANDLE_WAL || !h->writable || h->scratch)
        return 0;
    return sync_handle(h, path, "archive");
}

static int walfs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    if (kind_of(fi) == HANDLE_PUSH_FILE)
        return push_flush(current_fs()->pushes, (void *)(uintptr_t)fi->fh);
    wal_handle *h = (wal_handle *)(uintptr_t)fi->fh;
    if (kind_of(fi) != HANDLE_WAL || !h->writable || h->scratch)
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
        if (h->dirty && h->size == 0 && !h->scratch)
            log_warn("archive %s: closed with nothing written; nothing was stored (an empty "
                     "file is never a WAL segment or history file)", path);
        else if (!h->scratch)
            sync_handle(h, path, "archive (release)");
        struct scratch_file *kept = h->scratch ? calloc(1, sizeof *kept) : NULL;
        if (kept) {
            kept->name = h->name;
            kept->fd = h->fd;
            kept->size = h->size;
            kept->mode = h->mode;
            h->name = NULL;
            h->fd = -1;
            keep_scratch(fs, kept);
        } else if (h->scratch) {
            log_error("write %s: out of memory keeping the temporary file; it is lost", path);
        }
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
              path, WALE_WAL_DIR);
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

/* Takes the closed temporary file name out of the list (NULL if none). */
static struct scratch_file *take_scratch(walfs_fs *fs, const char *name)
{
    pthread_mutex_lock(&fs->writers_lock);
    struct scratch_file *found = NULL;
    for (struct scratch_file **p = &fs->scratch; *p; p = &(*p)->next) {
        if (strcmp((*p)->name, name) == 0) {
            found = *p;
            *p = found->next;
            break;
        }
    }
    pthread_mutex_unlock(&fs->writers_lock);
    return found;
}

static void scratch_free(struct scratch_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free(f->name);
    free(f);
}

static int walfs_unlink(const char *path)
{
    const char *name;
    if (classify(path, &name) == NODE_WAL_FILE && name[0] == '.') {
        struct scratch_file *f = take_scratch(current_fs(), name);
        scratch_free(f);
        return f ? 0 : -ENOENT;
    }
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
    push_caller who = current_caller();
    return push_mkdir(fs->pushes, name, mode, &who);
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
        fuse_lowlevel_notify_inval_entry(fs->session, FUSE_ROOT_ID, WALE_BASEBACKUPS_DIR,
                                         strlen(WALE_BASEBACKUPS_DIR));
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

/* rsync's last step: its temporary file becomes NAME.  Storing happens
 * here, and rename returns the upload's result, as close does for cp. */
static int store_scratch(walfs_fs *fs, const char *from, const char *from_name,
                         const char *to, const char *to_name)
{
    if (to_name[0] == '.')
        return refuse("rename", from);
    struct scratch_file *f = take_scratch(fs, from_name);
    if (!f)
        return -ENOENT;
    char *key = wal_key(to_name);
    if (!key) {
        scratch_free(f);
        return -ENOMEM;
    }
    int rc;
    if (f->size == 0) {
        log_error("archive %s: refused: the file is empty (an empty file is never a WAL "
                  "segment or history file)", to);
        rc = -EINVAL;
    } else {
        uint64_t outer = deadline_scope_begin((uint64_t)fs->cfg.deadline_ms);
        walfs_err err = {0};
        rc = wal_upload(fs->cfg.st, key, f->fd, f->size, f->mode, time(NULL), NULL, 0, NULL,
                        NULL, &err);
        deadline_scope_end(outer);
        if (rc)
            rc = fs_errno(rc, &err, "archive (rename)", to);
        else
            remember_stored(fs, to_name, fuse_get_context()->pid);
    }
    free(key);
    if (rc) {
        keep_scratch(fs, f); /* so the writer may retry the rename or remove it */
        return rc;
    }
    scratch_free(f);
    return 0;
}

static int walfs_rename(const char *from, const char *to, unsigned int flags)
{
    const char *from_name, *wal_to;
    if (classify(from, &from_name) == NODE_WAL_FILE && from_name[0] == '.' &&
        classify(to, &wal_to) == NODE_WAL_FILE && (flags & ~RENAME_NOREPLACE) == 0)
        return store_scratch(current_fs(), from, from_name, to, wal_to);
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

/* A temporary dot-file, open or closed: its attributes are the writer's to
 * set (rsync sets mode and times before it renames). */
static int is_scratch_path(const char *path)
{
    const char *name;
    return classify(path, &name) == NODE_WAL_FILE && name[0] == '.';
}

static int walfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    walfs_fs *fs = current_fs();
    if (stored_lately(fs, path))
        return 0;
    const char *name;
    if (classify(path, &name) == NODE_WAL_FILE) {
        /* The mode of a file still being written goes into its lzop header
         * (install sets it before it closes). */
        pthread_mutex_lock(&fs->writers_lock);
        struct scratch_file *f = find_scratch(fs, name);
        wal_handle *w = find_writer(fs, name);
        if (f)
            f->mode = mode & 0777;
        if (w)
            w->mode = mode & 0777;
        pthread_mutex_unlock(&fs->writers_lock);
        if (f || w || name[0] == '.')
            return 0;
    }
    const char *rel = push_path(path);
    return rel ? push_chmod(fs->pushes, rel, mode) : refuse("chmod", path);
}

static int walfs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    if (is_scratch_path(path))
        return 0; /* files are the mounting user's */
    const char *rel = push_path(path);
    return rel ? push_chown(current_fs()->pushes, rel, uid, gid) : refuse("chown", path);
}

static int walfs_symlink(const char *target, const char *path)
{
    const char *rel = push_path(path);
    push_caller who = current_caller();
    return rel ? push_symlink(current_fs()->pushes, target, rel, &who) : refuse("symlink", path);
}

static int walfs_link(const char *from, const char *to)
{
    const char *rel_from = push_path(from), *rel_to = push_path(to);
    push_caller who = current_caller();
    return rel_from && rel_to ? push_link(current_fs()->pushes, rel_from, rel_to, &who)
                              : refuse("link", to);
}

static int walfs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    /* Timestamps are the store's; accept the request on a file being
     * written (tools set them after copying) and ignore it. */
    if ((kind_of(fi) == HANDLE_WAL && ((wal_handle *)(uintptr_t)fi->fh)->writable) ||
        is_scratch_path(path) || stored_lately(current_fs(), path))
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
    sv->f_namemax = NAME_MAX - strlen(WALE_LZO_SUFFIX);
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
    .opendir = walfs_opendir,
    .readdir = walfs_readdir,
    .releasedir = walfs_releasedir,
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

/* mkdir -p with mode 0700: a stock Debian postgres (or a new machine's
 * root) has no ~/.cache, and the default cache directory is below it. */
static int make_dirs(const char *dir, walfs_err *err)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return walfs_err_set(err, -ENAMETOOLONG, "cache directory %s: name too long", dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            int e = errno;
            return walfs_err_set(err, -e, "cannot create cache directory %s: %s creating %s "
                                 "(set --cache-dir to a directory this user may write)",
                                 dir, strerror(e), path);
        }
        *p = saved;
        if (saved == '\0')
            break;
    }
    return private_dir_check(dir, err);
}

int walfs_fs_start(walfs_fs *fs, walfs_err *err)
{
    wal_prefetch_start(fs->prefetch);
    int rc = backup_view_start(fs->backups, err);
    return rc ? rc : push_registry_start(fs->pushes, err);
}

walfs_fs *walfs_fs_new(const walfs_fs_config *cfg, walfs_err *err)
{
    walfs_fs *fs = calloc(1, sizeof *fs);
    if (!fs) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    fs->cfg = *cfg;
    if (fs->cfg.deadline_ms <= 0)
        fs->cfg.deadline_ms = 60000;
    fs->uid = cfg->owner_uid >= 0 ? (uid_t)cfg->owner_uid : getuid();
    fs->gid = cfg->owner_gid >= 0 ? (gid_t)cfg->owner_gid : getgid();
    fs->mount_time = time(NULL);
    pthread_mutex_init(&fs->writers_lock, NULL);
    pthread_mutex_init(&fs->misses_lock, NULL);
    pthread_mutex_init(&fs->forget_lock, NULL);
    pthread_cond_init(&fs->forget_wake, NULL);
    if (make_dirs(cfg->cache_dir, err) != 0) {
        walfs_fs_free(fs);
        return NULL;
    }
    if (asprintf(&fs->spool_dir, "%s/spool", cfg->cache_dir) < 0) {
        fs->spool_dir = NULL;
        walfs_fs_free(fs);
        return NULL;
    }
    if (private_dir_make(fs->spool_dir, err)) {
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
    while (fs->scratch) {
        struct scratch_file *next = fs->scratch->next;
        log_warn("temporary file wal_005/%s was never renamed into the archive; dropped",
                 fs->scratch->name);
        scratch_free(fs->scratch);
        fs->scratch = next;
    }
    /* The kernel sends no release for a file still open when the mount goes
     * away (a lazy unmount, a writer killed at shutdown). */
    while (fs->writers) {
        wal_handle *next = fs->writers->next_writer;
        log_warn("wal_005/%s was still open for writing at unmount; it was not archived "
                 "(PostgreSQL's archiver retries it)", fs->writers->name);
        handle_free(fs->writers);
        fs->writers = next;
    }
    push_registry_free(fs->pushes);
    backup_view_free(fs->backups);
    wal_prefetch_free(fs->prefetch);
    object_cache_free(fs->cache);
    pthread_mutex_destroy(&fs->writers_lock);
    pthread_mutex_destroy(&fs->misses_lock);
    pthread_mutex_destroy(&fs->forget_lock);
    pthread_cond_destroy(&fs->forget_wake);
    free(fs->spool_dir);
    free(fs);
}
