#include "push/push_session.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/deadline.h"
#include "common/log.h"
#include "fuse/backup_view.h"
#include "push/push_cleanup.h"
#include "push/spool_file.h"
#include "push/push_tree.h"

typedef struct push_handle {
    handle_kind kind;           /* HANDLE_PUSH_FILE; first, see backup_view.h */
    push_session *session;
    push_node *node;
    int writable;
} push_handle;

/* ---- registry ---- */

push_registry *push_registry_new(store *st, const push_settings *settings, uid_t uid,
                                 gid_t gid, walfs_err *err)
{
    push_registry *reg = calloc(1, sizeof *reg);
    if (!reg) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    reg->st = st;
    reg->settings = *settings;
    reg->spool_dir = strdup(settings->spool_dir);
    reg->settings.spool_dir = reg->spool_dir;
    reg->uid = uid;
    reg->gid = gid;
    /* Eight files compressing at once covers pg_basebackup (one data file
     * and, with -X stream, one WAL file) with room; the default 32 MiB of
     * out-of-order writes is more than the kernel keeps in flight. */
    reg->spools = spool_pool_new(reg->spool_dir, 8, (size_t)settings->reorder_max_bytes);
    if (!reg->spool_dir || !reg->spools) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        spool_pool_free(reg->spools);
        free(reg->spool_dir);
        free(reg);
        return NULL;
    }
    pthread_mutex_init(&reg->lock, NULL);
    pthread_mutex_init(&reg->spool_lock, NULL);
    worker_init(&reg->emitter, &reg->lock, "walfs-push");
    worker_init(&reg->cleanup, &reg->lock, "walfs-pushclean");
    pthread_cond_init(&reg->progress, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(&reg->appended, &monotonic);
    pthread_condattr_destroy(&monotonic);
    return reg;
}

/* Leftovers of pushes whose walfs died are removed off the mount's path: in
 * an outage the listing alone waits out a whole deadline. */
static void *cleanup_main(void *arg)
{
    push_registry *reg = arg;
    deadline_cancel_on(&reg->cleanup_stop);
    push_cleanup_stale(reg->st);
    deadline_cancel_on(NULL);
    return NULL;
}

int push_registry_start(push_registry *reg, walfs_err *err)
{
    if (worker_start(&reg->emitter, 1, push_emitter_main, reg) != 0)
        return walfs_err_set(err, -EAGAIN, "cannot start the base backup push thread");
    /* Best effort: without it, the next mount removes the leftovers. */
    worker_start(&reg->cleanup, 1, cleanup_main, reg);
    return 0;
}

/* At unmount, with no request and no emitter left: store work runs here. */
static void session_teardown(push_registry *reg, push_session *s)
{
    if (s->state != SESSION_DONE && s->state != SESSION_FAILED && !s->retired)
        log_warn("base backup push into basebackups_005/%s never completed; removing what it "
                 "uploaded", s->dir);
    if (s->writer)
        backup_writer_abort(s->writer);
    if (s->leased)
        push_remove_leftovers(reg->st, s->backup_name);
    s->writer = NULL;
    s->leased = 0;
    tree_session_free(reg, s);
}

void push_registry_free(push_registry *reg)
{
    if (!reg)
        return;
    /* The clean-up is best effort and starts again at the next mount. */
    reg->cleanup_stop = 1;
    worker_destroy(&reg->cleanup);
    worker_destroy(&reg->emitter);
    /* No request is left at unmount; a rename still waiting would see the
     * emitter gone. */
    tree_lock(reg);
    for (push_session *s = reg->sessions; s; s = s->next)
        pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&reg->lock);
    while (reg->sessions) {
        push_session *next = reg->sessions->next;
        session_teardown(reg, reg->sessions);
        reg->sessions = next;
    }
    while (reg->retired) {
        push_session *next = reg->retired->next;
        session_teardown(reg, reg->retired);
        reg->retired = next;
    }
    for (size_t i = 0; i < reg->n_doomed; i++)
        spool_file_free(reg->doomed[i]);
    free(reg->doomed);
    spool_pool_free(reg->spools);
    pthread_cond_destroy(&reg->progress);
    pthread_cond_destroy(&reg->appended);
    pthread_mutex_destroy(&reg->spool_lock);
    pthread_mutex_destroy(&reg->lock);
    free(reg->spool_dir);
    free(reg);
}

static push_session *new_session(push_registry *reg, const char *dir, mode_t mode,
                                 const push_caller *who)
{
    push_session *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return NULL;
    }
    pthread_cond_init(&s->changed, NULL);
    if (!tree_add_node(reg, s, "", MEMBER_DIR, mode, who)) {
        tree_session_free(reg, s);
        return NULL;
    }
    s->next = reg->sessions;
    reg->sessions = s;
    log_info("basebackups_005/%s: receiving a base backup", dir);
    return s;
}

/* The session a write into rel goes to (*out NULL when there is none):
 * writing into the directory of a completed push starts a new push there.
 * 0, -EBUSY while the push there is completing, or -ENOMEM. */
static int locate_for_write(push_registry *reg, const char *rel, const push_caller *who,
                            push_session **out, const char **inner)
{
    push_session *s = tree_locate(reg, rel, inner);
    *out = s;
    if (s && s->state == SESSION_COMPLETING)
        return -EBUSY;
    if (!s || s->state != SESSION_DONE || !(*inner)[0])
        return 0;
    push_node *root = tree_find_node(s, "");
    mode_t mode = root ? root->mode : 0700;
    char *dir = strdup(s->dir);
    if (!dir)
        return -ENOMEM;
    tree_retire(reg, s);
    *out = new_session(reg, dir, mode, who);
    *inner = rel + strlen(dir) + 1;
    free(dir);
    return *out ? 0 : -ENOMEM;
}

/* ---- the namespace (reg->lock only) ---- */

int push_is_session(push_registry *reg, const char *rel)
{
    tree_lock(reg);
    const char *inner;
    int found = tree_locate(reg, rel, &inner) != NULL;
    tree_unlock(reg);
    return found;
}

int push_mkdir(push_registry *reg, const char *rel, mode_t mode, const push_caller *who)
{
    tree_lock(reg);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    if (!rc && !s)
        rc = strchr(rel, '/') ? -ENOENT : new_session(reg, rel, mode, who) ? 0 : -ENOMEM;
    else if (!rc)
        rc = s->state == SESSION_FAILED ? tree_latched(s) : tree_find_node(s, inner) ? -EEXIST
             : !tree_parent_is_dir(s, inner) ? -ENOENT
             : tree_add_node(reg, s, inner, MEMBER_DIR, mode, who) ? 0 : -ENOMEM;
    tree_unlock(reg);
    return rc;
}

static void fill_stat(const push_node *n, struct stat *st)
{
    memset(st, 0, sizeof *st);
    mode_t type = n->type == MEMBER_DIR ? S_IFDIR : n->type == MEMBER_SYMLINK ? S_IFLNK : S_IFREG;
    st->st_mode = type | n->mode;
    st->st_nlink = type == S_IFDIR ? 2 : 1;
    st->st_uid = n->uid;
    st->st_gid = n->gid;
    st->st_size = (off_t)(n->type == MEMBER_SYMLINK && n->link_target ? strlen(n->link_target)
                                                                      : n->size);
    st->st_blksize = 1024 * 1024;
    st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
    st->st_mtim.tv_sec = n->mtime_sec;
    st->st_mtim.tv_nsec = n->mtime_nsec;
    st->st_atim = st->st_ctim = st->st_mtim;
}

int push_getattr(push_registry *reg, const char *rel, struct stat *st)
{
    tree_lock(reg);
    const char *inner;
    push_session *s = tree_locate(reg, rel, &inner);
    push_node *n = s ? tree_visible_node(s, inner) : NULL;
    if (n)
        fill_stat(n, st);
    tree_unlock(reg);
    return n ? 0 : -ENOENT;
}

int push_readdir(push_registry *reg, const char *rel, push_dir_filler fill, void *ctx)
{
    tree_lock(reg);
    const char *inner;
    push_session *s = tree_locate(reg, rel, &inner);
    push_node *dir = s ? tree_visible_node(s, inner) : NULL;
    int rc = !dir ? -ENOENT : dir->type != MEMBER_DIR ? -ENOTDIR : 0;
    if (!rc && s->state != SESSION_DONE) {
        for (push_node *n = s->first; n && dir->children; n = n->next) {
            if (n->parent != dir)
                continue;
            const char *slash = strrchr(n->path, '/');
            struct stat st;
            fill_stat(n, &st);
            if (fill(ctx, slash ? slash + 1 : n->path, &st))
                break;
        }
    }
    tree_unlock(reg);
    return rc;
}

void push_list_sessions(push_registry *reg, push_dir_filler fill, void *ctx)
{
    tree_lock(reg);
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->state == SESSION_DONE)
            continue; /* the backup shows under its own name now */
        struct stat st = {.st_mode = S_IFDIR | 0700};
        if (fill(ctx, s->dir, &st))
            break;
    }
    tree_unlock(reg);
}

/* ---- files ---- */

static push_handle *new_handle(push_session *s, push_node *n, int writable)
{
    push_handle *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->kind = HANDLE_PUSH_FILE;
    h->session = s;
    h->node = n;
    h->writable = writable;
    n->open_count++;
    s->refs++;
    return h;
}

static int check_spool_limit(push_registry *reg, push_session *s, walfs_err *err)
{
    if (s->spooled_bytes <= reg->settings.spool_max_bytes)
        return 0;
    return walfs_err_set(err, -ENOSPC,
                         "%" PRIu64 " bytes are waiting in the spool (limit %" PRIu64 ")%s",
                         s->spooled_bytes, reg->settings.spool_max_bytes,
                         s->state == SESSION_NAMED
                             ? ""
                             : ": backup_label must be written before the rest of the data "
                               "directory (pg_basebackup and rsync do; with cp -a, copy "
                               "backup_label first)");
}

/* A new file is starting: everything closed before it is final now, and
 * goes to the emitter.  When the spool is full the writer waits for the
 * emitter to make room (or to name the backup) rather than failing. */
static void advance(push_registry *reg, push_session *s, uint64_t new_seq)
{
    if (!tree_receiving(s))
        return;
    if (new_seq > s->emit_before)
        s->emit_before = new_seq;
    worker_wake_one(&reg->emitter);
    while (tree_receiving(s) && s->spooled_bytes > reg->settings.spool_max_bytes &&
           (s->label_pending || s->emitter_busy ||
            (s->state == SESSION_NAMED && emitter_next_ready(reg, s))) &&
           !worker_stopping(&reg->emitter))
        pthread_cond_wait(&reg->progress, &reg->lock);
    walfs_err err = {0};
    if (tree_receiving(s) && check_spool_limit(reg, s, &err) != 0)
        tree_fail(reg, s, &err);
}

/* Truncates n (pinned) to size: a spool section. */
static int truncate_pinned(push_registry *reg, push_session *s, push_node *n, uint64_t size)
{
    walfs_err err;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = n->spool ? spool_file_truncate(n->spool, size, &err)
                      : walfs_err_set(&err, -EROFS, "already uploaded into the backup");
    pthread_mutex_lock(&reg->lock);
    tree_account(s, n);
    if (rc)
        log_error("truncating basebackups_005/%s/%s: %s", s->dir, n->path, err.msg);
    pthread_mutex_unlock(&reg->lock);
    pthread_mutex_unlock(&reg->spool_lock);
    return rc ? (rc == -EROFS ? rc : -EIO) : 0;
}

/* Gives n (pinned, its handle h already counted) a new, empty spool, or
 * empties the one it has. */
static int fresh_spool(push_registry *reg, push_session *s, push_node *n, const char *rel)
{
    pthread_mutex_lock(&reg->spool_lock);
    spool_file *made = NULL;
    walfs_err err;
    int rc = 0;
    if (!n->spool) {
        made = spool_file_new(reg->spools);
        if (!made) {
            rc = errno == ENOSPC ? -ENOSPC : -EIO;
            log_error("basebackups_005/%s: cannot create its spool file (check --cache-dir)",
                      rel);
        }
    } else if (spool_file_truncate(n->spool, 0, &err) != 0) {
        rc = -EIO;
        log_error("truncating basebackups_005/%s: %s", rel, err.msg);
    }
    pthread_mutex_lock(&reg->lock);
    if (made)
        n->spool = made;
    else
        reg->spool_count--; /* the slot reserve_spool took goes unused */
    tree_account(s, n);
    pthread_mutex_unlock(&reg->lock);
    pthread_mutex_unlock(&reg->spool_lock);
    return rc;
}

static void release_locked(push_registry *reg, push_handle *h);

int push_create(push_registry *reg, const char *rel, mode_t mode, const push_caller *who,
                void **handle)
{
    tree_lock(reg);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    push_node *n = NULL;
    if (!rc)
        rc = !s || !inner[0] ? -ENOENT : s->state == SESSION_FAILED ? tree_latched(s)
             : s->state == SESSION_DONE ? -EROFS : !tree_parent_is_dir(s, inner) ? -ENOENT : 0;
    if (!rc) {
        n = tree_find_node(s, inner);
        if (n && (n->type != MEMBER_FILE || n->emitted || n->emitting))
            rc = n->type == MEMBER_DIR ? -EISDIR : n->emitting ? -EBUSY : -EEXIST;
    }
    if (!rc && !n && !(n = tree_add_node(reg, s, inner, MEMBER_FILE, mode, who)))
        rc = -ENOMEM;
    if (!rc)
        rc = tree_reserve_spool(reg);
    push_handle *h = NULL;
    if (!rc && !(h = new_handle(s, n, 1))) {
        reg->spool_count--;
        rc = -ENOMEM;
    }
    if (rc) {
        tree_unlock(reg);
        return rc;
    }
    tree_pin(s, n);
    pthread_mutex_unlock(&reg->lock);
    rc = fresh_spool(reg, s, n, rel);
    tree_lock(reg);
    if (!rc) {
        advance(reg, s, n->seq);
        rc = tree_latched(s);
    }
    tree_unpin(reg, s, n);
    if (rc)
        release_locked(reg, h);
    else
        *handle = h;
    tree_unlock(reg);
    return rc;
}

int push_open(push_registry *reg, const char *rel, int flags, const push_caller *who,
              void **handle)
{
    tree_lock(reg);
    const char *inner;
    push_session *s = tree_locate(reg, rel, &inner);
    int truncating = (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY;
    if (s && s->state == SESSION_DONE && inner[0] && truncating) {
        /* Rewriting a name the kernel still remembers from the finished
         * push: a new push into the same directory. */
        tree_unlock(reg);
        return push_create(reg, rel, 0600, who, handle);
    }
    push_node *n = s ? tree_visible_node(s, inner) : NULL;
    int rc = 0;
    if (!n)
        rc = -ENOENT;
    else if (n->type == MEMBER_DIR)
        rc = -EISDIR;
    else if (s->state == SESSION_FAILED)
        rc = tree_latched(s);
    else if ((flags & O_TRUNC) && (n->emitting || s->state == SESSION_COMPLETING))
        rc = -EBUSY;
    /* Opening a finished file read-write is how pg_basebackup fsyncs it:
     * allowed, but writing to it is not. */
    push_handle *h = NULL;
    if (!rc && !(h = new_handle(s, n, (flags & O_ACCMODE) != O_RDONLY && !n->emitted &&
                                          !n->emitting && tree_receiving(s))))
        rc = -ENOMEM;
    if (!rc && (flags & O_TRUNC) && !n->emitted && n->spool) {
        tree_pin(s, n);
        pthread_mutex_unlock(&reg->lock);
        rc = truncate_pinned(reg, s, n, 0);
        tree_lock(reg);
        tree_unpin(reg, s, n);
        if (rc)
            release_locked(reg, h);
    }
    if (!rc)
        *handle = h;
    tree_unlock(reg);
    return rc;
}

int push_read(push_registry *reg, void *handle, char *buf, size_t size, off_t off)
{
    push_handle *h = handle;
    push_session *s = h->session;
    push_node *n = h->node;
    tree_lock(reg);
    if (!n->spool) {
        log_error("read basebackups_005/%s/%s: already uploaded into the backup; read it from "
                  "the finished backup's directory", s->dir, n->path);
        tree_unlock(reg);
        return -EIO;
    }
    tree_pin(s, n);
    pthread_mutex_unlock(&reg->lock);
    size_t got = 0;
    walfs_err err;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = tree_read_spool(reg, s, n, buf, size, (uint64_t)off, &got, &err);
    pthread_mutex_unlock(&reg->spool_lock);
    tree_lock(reg);
    if (rc)
        log_error("read basebackups_005/%s/%s: %s", s->dir, n->path, err.msg);
    tree_unpin(reg, s, n);
    tree_unlock(reg);
    return rc ? -EIO : (int)got;
}

/* The kernel writes a file back in 1 MiB requests that FUSE threads serve
 * in parallel, so a request may get here before the one in front of it.
 * It waits a moment for that one rather than being copied aside: the
 * spool then stays compressed without holding the data twice.  Under
 * spool_lock; 1 when it waited. */
static int wait_for_turn(push_registry *reg, push_node *n, uint64_t off)
{
    if (n->gap_waited_out || !n->spool || off <= spool_file_append_offset(n->spool))
        return 0;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_nsec += 50 * 1000 * 1000;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    reg->waiting_writes++;
    while (n->spool && off > spool_file_append_offset(n->spool)) {
        if (pthread_cond_timedwait(&reg->appended, &reg->spool_lock, &deadline) == ETIMEDOUT) {
            /* A writer that seeks ahead on purpose: never wait for it again. */
            n->gap_waited_out = 1;
            break;
        }
    }
    reg->waiting_writes--;
    return 1;
}

int push_write(push_registry *reg, void *handle, const char *buf, size_t size, off_t off)
{
    push_handle *h = handle;
    push_session *s = h->session;
    push_node *n = h->node;
    tree_lock(reg);
    int rc = tree_latched(s);
    if (!rc && (!h->writable || !n->spool || n->emitted))
        rc = -EBADF;
    if (!rc && !tree_receiving(s))
        rc = -EBUSY; /* completing: the backup is being closed */
    if (rc) {
        tree_unlock(reg);
        return rc;
    }
    tree_pin(s, n);
    pthread_mutex_unlock(&reg->lock);

    pthread_mutex_lock(&reg->spool_lock);
    int waited = wait_for_turn(reg, n, (uint64_t)off);
    walfs_err err;
    rc = n->spool ? spool_file_write(n->spool, buf, size, (uint64_t)off, &err)
                  : walfs_err_set(&err, -EIO, "the push failed meanwhile");
    if (!rc) {
        /* The gap filled after all: a slow writer, not one that seeks
         * ahead, so later writes may wait for their turn again. */
        if (n->gap_waited_out && spool_file_append_offset(n->spool) == spool_file_size(n->spool))
            n->gap_waited_out = 0;
        if (reg->waiting_writes)
            pthread_cond_broadcast(&reg->appended);
    }
    pthread_mutex_lock(&reg->lock);
    tree_account(s, n);
    s->spool_stats.waited_writes += (unsigned)waited;
    if (rc) {
        /* Latched: with the kernel's writeback cache the writer may only
         * hear of it at close, and a file with a hole must never be
         * packed, whatever the writer does next. */
        walfs_err why;
        walfs_err_set(&why, err.code, "spooling %s failed: %s (check the space in the cache "
                      "directory, --cache-dir)", n->path, err.msg);
        tree_fail_receiving(reg, s, &why);
        rc = tree_latched(s) ? tree_latched(s) : -EIO;
    } else {
        tree_now_ts(&n->mtime_sec, &n->mtime_nsec);
    }
    pthread_mutex_unlock(&reg->lock);
    pthread_mutex_unlock(&reg->spool_lock);

    tree_lock(reg);
    tree_unpin(reg, s, n);
    tree_unlock(reg);
    return rc ? rc : (int)size;
}

int push_flush(push_registry *reg, void *handle)
{
    push_handle *h = handle;
    tree_lock(reg);
    int rc = tree_latched(h->session);
    tree_unlock(reg);
    return rc;
}

/* A file is closed under its final name (rsync closes a temporary name
 * and renames it after): pick up what completion will need from it.  n is
 * pinned; called without reg->lock. */
static void settle_pinned(push_registry *reg, push_session *s, push_node *n)
{
    char head[PG_CONTROL_HEAD_BYTES > 16 ? PG_CONTROL_HEAD_BYTES : 16];
    size_t len = 0;
    walfs_err err = {0};
    pthread_mutex_lock(&reg->spool_lock);
    /* The pending block goes to disk now: its memory is for the next file. */
    int rc = n->spool ? spool_file_seal(n->spool, &err) : 0;
    pthread_mutex_lock(&reg->lock);
    tree_account(s, n);
    int is_version = strcmp(n->path, "PG_VERSION") == 0;
    int is_control = strcmp(n->path, CONTROL) == 0;
    int is_label = strcmp(n->path, LABEL) == 0;
    pthread_mutex_unlock(&reg->lock);
    int read_rc = -1;
    if (!rc && n->spool && (is_version || is_control))
        read_rc = spool_file_read(n->spool, head, is_version ? 15 : PG_CONTROL_HEAD_BYTES, 0,
                                  &len, &err);
    pthread_mutex_lock(&reg->lock);
    if (read_rc == 0)
        tree_account(s, n);
    if (rc) {
        walfs_err_prefix(&err, "spooling %s failed: ", n->path);
        tree_fail_receiving(reg, s, &err);
    } else if (is_version && read_rc == 0) {
        memcpy(s->pg_version, head, len);
        s->pg_version[len] = '\0';
        s->pg_version[strcspn(s->pg_version, "\n")] = '\0';
    } else if (is_control) {
        s->have_control = read_rc == 0 && len >= PG_CONTROL_HEAD_BYTES;
        if (s->have_control)
            memcpy(s->control, head, PG_CONTROL_HEAD_BYTES);
    } else if (is_label && s->state == SESSION_RECEIVING && !s->label_pending && !s->writer) {
        /* The label names the backup: the emitter does (it asks the store). */
        s->label_pending = 1;
        worker_wake_one(&reg->emitter);
    }
    pthread_mutex_unlock(&reg->lock);
    pthread_mutex_unlock(&reg->spool_lock);
}

/* Whether closing or renaming n makes it settle now. */
static int settles(const push_session *s, const push_node *n)
{
    return n->open_count == 0 && !n->detached && !s->retired && n->spool &&
           n->type == MEMBER_FILE && tree_receiving(s);
}

/* Drops h (reg->lock held, nothing to settle). */
static void release_locked(push_registry *reg, push_handle *h)
{
    push_session *s = h->session;
    push_node *n = h->node;
    if (n->open_count > 0)
        n->open_count--;
    if (n->detached)
        tree_free_detached_if_idle(reg, s, n);
    s->refs--;
    tree_free_if_unused(reg, s);
    worker_wake_one(&reg->emitter);
    free(h);
}

void push_release(push_registry *reg, void *handle)
{
    push_handle *h = handle;
    push_session *s = h->session;
    push_node *n = h->node;
    tree_lock(reg);
    n->open_count--; /* settles() asks whether this was the last close */
    if (settles(s, n)) {
        tree_pin(s, n);
        pthread_mutex_unlock(&reg->lock);
        settle_pinned(reg, s, n);
        tree_lock(reg);
        n->open_count++; /* before unpin: n stays while h counts */
        tree_unpin(reg, s, n);
    } else {
        n->open_count++;
    }
    release_locked(reg, h);
    tree_unlock(reg);
}

int push_truncate(push_registry *reg, const char *rel, void *handle, off_t size)
{
    tree_lock(reg);
    const char *inner;
    push_handle *h = handle;
    push_session *s = h ? h->session : tree_locate(reg, rel, &inner);
    push_node *n = h ? h->node : s ? tree_visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_FILE ? -EISDIR
             : (n->emitted || n->emitting || !n->spool) ? -EROFS
             : !tree_receiving(s) ? -EBUSY : 0;
    if (!rc) {
        tree_pin(s, n);
        pthread_mutex_unlock(&reg->lock);
        rc = truncate_pinned(reg, s, n, (uint64_t)size);
        tree_lock(reg);
        tree_unpin(reg, s, n);
    }
    tree_unlock(reg);
    return rc;
}

/* ---- attributes, links, renames, removals (reg->lock only) ---- */

static int change_node(push_registry *reg, const char *rel, push_node **out)
{
    const char *inner;
    push_session *s = tree_locate(reg, rel, &inner);
    push_node *n = s ? tree_visible_node(s, inner) : NULL;
    if (!n)
        return -ENOENT;
    *out = n;
    return 0;
}

int push_chmod(push_registry *reg, const char *rel, mode_t mode)
{
    tree_lock(reg);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted)
        n->mode = tree_node_mode(mode);
    tree_unlock(reg);
    return rc;
}

int push_chown(push_registry *reg, const char *rel, uid_t uid, gid_t gid)
{
    tree_lock(reg);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted) {
        if (uid != (uid_t)-1)
            n->uid = uid;
        if (gid != (gid_t)-1)
            n->gid = gid;
    }
    tree_unlock(reg);
    return rc;
}

int push_utimens(push_registry *reg, const char *rel, const struct timespec tv[2])
{
    tree_lock(reg);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted) {
        if (!tv || tv[1].tv_nsec == UTIME_NOW) {
            tree_now_ts(&n->mtime_sec, &n->mtime_nsec);
        } else if (tv[1].tv_nsec != UTIME_OMIT) {
            n->mtime_sec = tv[1].tv_sec;
            n->mtime_nsec = (uint32_t)tv[1].tv_nsec;
        }
    }
    tree_unlock(reg);
    return rc;
}

int push_symlink(push_registry *reg, const char *target, const char *rel,
                 const push_caller *who)
{
    tree_lock(reg);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    if (!rc)
        rc = !s || !inner[0] ? -ENOENT : s->state == SESSION_FAILED ? tree_latched(s)
             : s->state == SESSION_DONE ? -EROFS : tree_find_node(s, inner) ? -EEXIST
             : !tree_parent_is_dir(s, inner) ? -ENOENT : 0;
    if (!rc) {
        push_node *n = tree_add_node(reg, s, inner, MEMBER_SYMLINK, 0777, who);
        if (!n || !(n->link_target = strdup(target)))
            rc = -ENOMEM;
    }
    tree_unlock(reg);
    return rc;
}

int push_link(push_registry *reg, const char *from_rel, const char *to_rel,
              const push_caller *who)
{
    tree_lock(reg);
    const char *from_inner, *to_inner;
    push_session *s = tree_locate(reg, from_rel, &from_inner);
    push_session *t = tree_locate(reg, to_rel, &to_inner);
    push_node *target = s ? tree_find_node(s, from_inner) : NULL;
    int rc = !target || s != t ? -ENOENT : target->type != MEMBER_FILE ? -EPERM
             : s->state == SESSION_FAILED ? tree_latched(s) : !tree_receiving(s) ? -EBUSY
             : tree_find_node(s, to_inner) ? -EEXIST : 0;
    if (!rc) {
        push_node *n = tree_add_node(reg, s, to_inner, MEMBER_HARDLINK, target->mode, who);
        if (!n || !(n->link_target = strdup(from_inner)))
            rc = -ENOMEM;
        else {
            n->uid = target->uid;
            n->gid = target->gid;
            n->mtime_sec = target->mtime_sec;
            n->mtime_nsec = target->mtime_nsec;
            n->size = 0;
        }
    }
    tree_unlock(reg);
    return rc;
}

int push_readlink(push_registry *reg, const char *rel, char *buf, size_t size)
{
    tree_lock(reg);
    const char *inner;
    push_session *s = tree_locate(reg, rel, &inner);
    push_node *n = s ? tree_visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_SYMLINK ? -EINVAL : 0;
    if (!rc)
        snprintf(buf, size, "%s", n->link_target);
    tree_unlock(reg);
    return rc;
}

static int under(const char *path, const char *top, size_t tlen)
{
    return strcmp(path, top) == 0 || (strncmp(path, top, tlen) == 0 && path[tlen] == '/');
}

/* Moves the node at from, and everything under it, to to. */
static int rename_nodes(push_session *s, const char *from, const char *to)
{
    size_t flen = strlen(from);
    size_t moving = 0;
    for (push_node *n = s->first; n; n = n->next) {
        if (!under(n->path, from, flen))
            continue;
        if ((n->emitted || n->emitting) && n->type == MEMBER_FILE)
            return -EBUSY;
        moving++;
    }
    char **paths = calloc(moving ? moving : 1, sizeof *paths);
    if (!paths)
        return -ENOMEM;
    size_t k = 0;
    for (push_node *n = s->first; n; n = n->next) {
        if (under(n->path, from, flen) && asprintf(&paths[k++], "%s%s", to, n->path + flen) < 0) {
            paths[k - 1] = NULL;
            for (size_t i = 0; i < k; i++)
                free(paths[i]);
            free(paths);
            return -ENOMEM;
        }
    }
    push_node *top = tree_find_node(s, from);
    k = 0;
    for (push_node *n = s->first; n; n = n->next) {
        if (!under(n->path, from, flen))
            continue;
        tree_table_remove(s, n);
        free(n->path);
        n->path = paths[k++];
        tree_table_insert(s, n);
    }
    free(paths);
    if (top) {
        if (top->parent)
            top->parent->children--;
        top->parent = tree_parent_of(s, top->path);
        if (top->parent)
            top->parent->children++;
    }
    return 0;
}

/* Asks the emitter to complete s and waits for the outcome (reg->lock
 * held; released while waiting).  *completed when this call did it. */
static int complete(push_registry *reg, push_session *s, int by_manifest, int *completed)
{
    if (s->state == SESSION_FAILED)
        return tree_latched(s);
    if (s->state == SESSION_DONE)
        return 0;
    int mine = s->state != SESSION_COMPLETING;
    if (mine) {
        s->state = SESSION_COMPLETING;
        s->completion_by_manifest = by_manifest;
        worker_wake_one(&reg->emitter);
    }
    s->refs++;
    while (s->state == SESSION_COMPLETING && !worker_stopping(&reg->emitter))
        pthread_cond_wait(&s->changed, &reg->lock);
    s->refs--;
    int rc = s->state == SESSION_DONE ? 0 : s->state == SESSION_FAILED ? tree_latched(s) : -EIO;
    *completed = mine && rc == 0;
    return rc;
}

int push_rename(push_registry *reg, const char *from_rel, const char *to_rel, int *completed)
{
    *completed = 0;
    tree_lock(reg);
    const char *from_inner, *to_inner;
    push_session *s = tree_locate(reg, from_rel, &from_inner);
    int rc = 0;
    if (!s) {
        rc = -ENOENT;
    } else if (!from_inner[0]) {
        /* mv incoming done: the cp -a / rsync -a way to say "complete". */
        rc = complete(reg, s, 0, completed);
        if (!rc && !strchr(to_rel, '/') && !s->retired) {
            char *renamed = strdup(to_rel);
            if (renamed) {
                free(s->dir);
                s->dir = renamed;
            }
        }
        tree_free_if_unused(reg, s);
    } else {
        s->refs++; /* s outlives the settle below */
        push_session *t = tree_locate(reg, to_rel, &to_inner);
        push_node *from = tree_visible_node(s, from_inner);
        push_node *existing = t == s ? tree_find_node(s, to_inner) : NULL;
        if (!from)
            rc = -ENOENT;
        else if (t != s)
            rc = -EXDEV;
        else if (s->state == SESSION_FAILED)
            rc = tree_latched(s);
        else if (!tree_receiving(s))
            rc = -EBUSY;
        else if (existing == from)
            rc = 0;
        else if (existing && (existing->emitting || existing->emitted))
            rc = -EBUSY; /* already packed into an uploaded partition */
        else if (existing && existing->type == MEMBER_DIR)
            rc = from->type != MEMBER_DIR ? -EISDIR : existing->children ? -ENOTEMPTY : 0;
        else if (existing && from->type == MEMBER_DIR)
            rc = -ENOTDIR;
        if (!rc && existing && existing != from)
            tree_detach_node(reg, s, existing); /* rename over a name replaces it */
        if (!rc && existing != from)
            rc = rename_nodes(s, from_inner, to_inner);
        push_node *moved = rc ? NULL : tree_find_node(s, to_inner);
        if (moved && settles(s, moved)) {
            tree_pin(s, moved);
            pthread_mutex_unlock(&reg->lock);
            settle_pinned(reg, s, moved);
            tree_lock(reg);
            tree_unpin(reg, s, moved);
        }
        if (!rc && strcmp(from_inner, MANIFEST_TMP) == 0 && strcmp(to_inner, MANIFEST) == 0)
            rc = complete(reg, s, 1, completed);
        if (!rc)
            rc = tree_latched(s);
        s->refs--;
        tree_free_if_unused(reg, s);
    }
    tree_unlock(reg);
    return rc;
}

/* rmdir of the push itself: given up; the emitter removes its uploads. */
static void drop_session(push_registry *reg, push_session *s)
{
    if (tree_receiving(s)) {
        walfs_err err;
        walfs_err_set(&err, -ECANCELED, "the push directory was removed");
        log_warn("base backup push into basebackups_005/%s abandoned; removing what it uploaded",
                 s->dir);
        s->state = SESSION_FAILED;
        s->error = err;
        s->label_pending = 0;
        for (push_node *n = s->first; n; n = n->next)
            tree_drop_spool(reg, s, n);
        s->spooled_bytes = 0;
        pthread_cond_broadcast(&reg->progress);
    }
    worker_wake_one(&reg->emitter);
    tree_retire(reg, s);
}

int push_unlink(push_registry *reg, const char *rel)
{
    tree_lock(reg);
    const char *inner;
    push_session *s = tree_locate(reg, rel, &inner);
    push_node *n = s ? tree_visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type == MEMBER_DIR ? -EISDIR : n->open_count ? -EBUSY
             : s->state == SESSION_COMPLETING ? -EBUSY : 0;
    if (!rc && (n->emitted || n->emitting) && tree_receiving(s)) {
        /* Already packed into an uploaded partition: removing it can only
         * mean the push is being abandoned (pg_basebackup cleans up with
         * rm -rf when it fails), so abandon it now and remove the uploads. */
        walfs_err err;
        walfs_err_set(&err, -ECANCELED, "%s was removed after it was packed into the backup; "
                      "the push is abandoned", n->path);
        tree_fail(reg, s, &err);
    }
    if (!rc)
        tree_detach_node(reg, s, n);
    tree_unlock(reg);
    return rc;
}

int push_rmdir(push_registry *reg, const char *rel)
{
    tree_lock(reg);
    const char *inner;
    push_session *s = tree_locate(reg, rel, &inner);
    push_node *n = s ? tree_visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_DIR ? -ENOTDIR : 0;
    if (!rc && s->state == SESSION_COMPLETING)
        rc = -EBUSY;
    if (!rc && s->state != SESSION_DONE && n->children) /* a completed push shows empty */
        rc = -ENOTEMPTY;
    if (!rc) {
        if (!inner[0])
            drop_session(reg, s);
        else
            tree_detach_node(reg, s, n);
    }
    tree_unlock(reg);
    return rc;
}
