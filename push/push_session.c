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
#include "pg/backup_label.h"
#include "pg/backup_manifest.h"
#include "pg/lsn.h"
#include "pg/pg_control.h"
#include "pg/wal_file.h"
#include "wale/layout.h"

/* Locking.  Two mutexes, never one held while waiting for the other's
 * holder to do I/O:
 *   reg->lock   the namespace: sessions, nodes, states, counters.  Held only
 *               for in-memory work; never across the store, the spool or a
 *               wait (condition waits release it).
 *   spool_lock  the spool pool, which shares one compressor and is not
 *               thread-safe (spool_file.h): every spool call runs under it.
 *               reg->lock may be taken while holding it (to account what the
 *               call changed), never the other way round.
 * All store work (naming the backup, adding files, completing, removing a
 * failed push's uploads) runs on the emitter thread, so no FUSE request
 * ever waits for the network except a completing rename, which waits on its
 * session's condition variable. */

#define MANIFEST_TMP "backup_manifest.tmp"
#define MANIFEST "backup_manifest"
#define LABEL "backup_label"
#define CONTROL "global/pg_control"
#define SMALL_FILE_MAX (16 * 1024 * 1024)

typedef struct push_node {
    char *path;                 /* relative to the push root; "" is the root */
    backup_member_type type;
    uint32_t mode, uid, gid;
    int64_t mtime_sec;
    uint32_t mtime_nsec;
    char *link_target;
    spool_file *spool;          /* a file's bytes until it is emitted */
    uint64_t spooled;           /* its share of the session's spooled_bytes */
    uint64_t size;
    int open_count;             /* handles: an open file is never emitted */
    int busy;                   /* requests and the emitter inside the spool on it */
    int emitted;                /* in the backup (or deliberately left out) */
    int emitting;               /* the emitter thread is reading it right now */
    int detached;               /* out of the namespace; freed when idle */
    int gap_waited_out;         /* a write ahead of the end waited in vain (spool_lock) */
    unsigned children;          /* nodes whose parent this is */
    uint64_t seq;               /* creation order: files are emitted in it */
    struct push_node *parent;
    struct push_node *hash_next;
    struct push_node *prev, *next;          /* all nodes, in creation order */
} push_node;

typedef enum session_state {
    SESSION_RECEIVING,  /* no backup_label yet: files wait in the spool */
    SESSION_NAMED,      /* the backup has its name; settled files stream out */
    SESSION_COMPLETING, /* a rename asked for completion; the emitter stores the rest */
    SESSION_DONE,       /* the sentinel is stored */
    SESSION_FAILED,     /* an error is latched; the emitter removes the uploads */
} session_state;

typedef struct push_session {
    char *dir;                  /* name under basebackups_005 */
    session_state state;
    walfs_err error;            /* latched: returned by every later close/fsync/rename */
    int label_pending;          /* backup_label settled: the emitter names the backup */
    int completion_by_manifest; /* how the completing rename said "complete" */
    pthread_cond_t changed;     /* state left COMPLETING */
    push_node **table;          /* by path */
    size_t table_size, node_count;
    push_node *first, *last;    /* creation order */
    push_node *detached;        /* removed while busy or open */
    uint64_t next_seq;
    uint64_t spooled_bytes;
    uint64_t emit_before;       /* closed files created before this seq are final */
    /* Owned by the emitter thread alone (and the registry's teardown). */
    backup_writer *writer;
    int leased;                 /* a lease object names this process */
    char backup_name[64];
    char start_segment[25];
    uint64_t segment_size;
    int emitter_busy;           /* the emitter is working on this session */
    char pg_version[16];        /* PG_VERSION, kept when it goes by */
    unsigned char control[PG_CONTROL_HEAD_BYTES];
    int have_control;
    int refs;                   /* handles, waiting renames, pinned nodes, the emitter */
    struct {                    /* how the spool fared, logged at completion */
        uint64_t compressed_files, compressed_bytes, records_bytes, plain_files, plain_bytes;
        unsigned waited_writes, stashed_writes, unpacked_files;
    } spool_stats;
    int retired;                /* out of the registry's names; freed when unused */
    struct push_session *next;
} push_session;

typedef struct push_handle {
    handle_kind kind;           /* HANDLE_PUSH_FILE; first, see backup_view.h */
    push_session *session;
    push_node *node;
    int writable;
} push_handle;

struct push_registry {
    store *st;
    push_settings settings;
    char *spool_dir;
    uid_t uid;
    gid_t gid;
    pthread_mutex_t lock;       /* the namespace (see Locking above) */
    pthread_mutex_t spool_lock; /* every spool call */
    pthread_cond_t work;        /* the emitter has something to do */
    pthread_cond_t progress;    /* the emitter finished a job (spool space, naming) */
    pthread_cond_t appended;    /* a file grew: writes waiting for their turn may go (spool_lock) */
    int waiting_writes;         /* spool_lock */
    pthread_t emitter;
    int emitter_running, stopping;
    pthread_t cleanup;      /* push_cleanup_stale, once per mount */
    int cleanup_running;
    _Atomic int cleanup_stop; /* unmounting: the clean-up's requests stop at once */
    push_session *sessions;
    push_session *retired;      /* replaced or removed, still in use or with uploads to remove */
    spool_file **doomed;        /* spools to free once reg->lock is released */
    size_t n_doomed, cap_doomed;
    size_t spool_count;         /* spools made and not yet freed */
    spool_pool *spools;
};

/* ---- locks ---- */

static void ns_lock(push_registry *reg) { pthread_mutex_lock(&reg->lock); }

/* Frees the spools that namespace changes gave up: that takes the spool
 * lock, which is never taken under reg->lock. */
static void free_doomed(push_registry *reg)
{
    pthread_mutex_lock(&reg->spool_lock);
    for (;;) {
        pthread_mutex_lock(&reg->lock);
        spool_file *f = reg->n_doomed ? reg->doomed[--reg->n_doomed] : NULL;
        if (f)
            reg->spool_count--;
        pthread_mutex_unlock(&reg->lock);
        if (!f)
            break;
        spool_file_free(f);
    }
    pthread_mutex_unlock(&reg->spool_lock);
}

/* Ends a namespace section that is not nested in a spool section. */
static void ns_unlock(push_registry *reg)
{
    int doomed = reg->n_doomed > 0;
    pthread_mutex_unlock(&reg->lock);
    if (doomed)
        free_doomed(reg);
}

/* Room for every spool that exists to be doomed, so that giving one up
 * never fails; called before a spool is made. */
static int reserve_spool(push_registry *reg)
{
    if (reg->cap_doomed <= reg->spool_count) {
        size_t cap = reg->cap_doomed ? reg->cap_doomed * 2 : 64;
        spool_file **grown = realloc(reg->doomed, cap * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        reg->doomed = grown;
        reg->cap_doomed = cap;
    }
    reg->spool_count++;
    return 0;
}

static void doom_spool(push_registry *reg, spool_file *f)
{
    if (f)
        reg->doomed[reg->n_doomed++] = f;
}

/* ---- nodes: a hash table by path, a list in creation order ---- */

static void now_ts(int64_t *sec, uint32_t *nsec)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *sec = ts.tv_sec;
    *nsec = (uint32_t)ts.tv_nsec;
}

static size_t path_hash(const char *path)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)path; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (size_t)h;
}

static push_node *find_node(const push_session *s, const char *path)
{
    if (!s->table_size)
        return NULL;
    for (push_node *n = s->table[path_hash(path) & (s->table_size - 1)]; n; n = n->hash_next)
        if (strcmp(n->path, path) == 0)
            return n;
    return NULL;
}

static void table_insert(push_session *s, push_node *n)
{
    push_node **slot = &s->table[path_hash(n->path) & (s->table_size - 1)];
    n->hash_next = *slot;
    *slot = n;
}

static void table_remove(push_session *s, push_node *n)
{
    for (push_node **p = &s->table[path_hash(n->path) & (s->table_size - 1)]; *p;
         p = &(*p)->hash_next) {
        if (*p == n) {
            *p = n->hash_next;
            n->hash_next = NULL;
            return;
        }
    }
}

/* Keeps the table at most one node per slot on average. */
static int table_reserve(push_session *s)
{
    if (s->node_count < s->table_size)
        return 0;
    size_t size = s->table_size ? s->table_size * 2 : 64;
    push_node **table = calloc(size, sizeof *table);
    if (!table)
        return -ENOMEM;
    push_node **old = s->table;
    s->table = table;
    s->table_size = size;
    for (push_node *n = s->first; n; n = n->next)
        table_insert(s, n);
    free(old);
    return 0;
}

static push_node *parent_of(const push_session *s, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!path[0])
        return NULL;
    if (!slash)
        return find_node(s, "");
    char parent[PATH_MAX];
    if ((size_t)(slash - path) >= sizeof parent)
        return NULL;
    snprintf(parent, sizeof parent, "%.*s", (int)(slash - path), path);
    return find_node(s, parent);
}

static int parent_is_dir(const push_session *s, const char *path)
{
    push_node *p = parent_of(s, path);
    return p && p->type == MEMBER_DIR;
}

/* The backup member a node becomes, under the given path. */
static backup_writer_member member_of(const push_node *n, const char *path)
{
    return (backup_writer_member){.path = path, .type = n->type, .mode = n->mode,
                                  .uid = n->uid, .gid = n->gid, .mtime_sec = n->mtime_sec,
                                  .mtime_nsec = n->mtime_nsec, .size = n->size,
                                  .link_target = n->link_target};
}

/* What a name shows.  A completed push keeps its directory so that
 * pg_basebackup's last steps (syncing the renamed backup_manifest and the
 * directory) still work, but shows nothing else: the same
 * `pg_basebackup -D .../incoming` must work again the next day, and
 * pg_basebackup wants an empty or missing directory. */
static push_node *visible_node(const push_session *s, const char *path)
{
    if (s->state == SESSION_DONE && path[0] && strcmp(path, MANIFEST) != 0)
        return NULL;
    return find_node(s, path);
}

/* Nothing in a push is writable by group or others: what they put there
 * would become part of the backup (with allow_other the kernel enforces the
 * mode shown, default_permissions being implied).  PostgreSQL never gives
 * its data directory's files or directories group or other write, so the
 * backup loses nothing. */
static uint32_t node_mode(mode_t mode)
{
    return mode & 07755;
}

static push_node *add_node(push_registry *reg, push_session *s, const char *path,
                           backup_member_type type, uint32_t mode, const push_caller *who)
{
    if (table_reserve(s) != 0)
        return NULL;
    push_node *n = calloc(1, sizeof *n);
    if (!n || !(n->path = strdup(path))) {
        free(n);
        return NULL;
    }
    n->type = type;
    n->mode = node_mode(mode);
    n->uid = who ? who->uid : reg->uid;
    n->gid = who ? who->gid : reg->gid;
    now_ts(&n->mtime_sec, &n->mtime_nsec);
    n->seq = s->next_seq++;
    n->parent = parent_of(s, path);
    if (n->parent)
        n->parent->children++;
    n->prev = s->last;
    if (s->last)
        s->last->next = n;
    else
        s->first = n;
    s->last = n;
    s->node_count++;
    table_insert(s, n);
    return n;
}

static void node_free(push_registry *reg, push_node *n)
{
    doom_spool(reg, n->spool);
    free(n->path);
    free(n->link_target);
    free(n);
}

/* n's bytes leave the spool (packed, left out, removed or rewritten). */
static void unspool(push_session *s, push_node *n)
{
    s->spooled_bytes -= n->spooled < s->spooled_bytes ? n->spooled : s->spooled_bytes;
    n->spooled = 0;
}

/* After n's spool changed (under both locks): its size and its share of the
 * spool. */
static void account(push_session *s, push_node *n)
{
    unspool(s, n);
    if (!n->spool)
        return;
    n->size = spool_file_size(n->spool);
    n->spooled = spool_file_disk_bytes(n->spool);
    s->spooled_bytes += n->spooled;
}

/* The spool goes back to the pool unless a request is inside it; the last
 * one out gives it up then (unpin). */
static void drop_spool(push_registry *reg, push_session *s, push_node *n)
{
    unspool(s, n);
    if (n->busy)
        return;
    doom_spool(reg, n->spool);
    n->spool = NULL;
}

/* Takes n out of the namespace.  Freed now if nothing uses it, else when
 * its last handle closes or its last request leaves. */
static void detach_node(push_registry *reg, push_session *s, push_node *n)
{
    table_remove(s, n);
    if (n->prev)
        n->prev->next = n->next;
    else
        s->first = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        s->last = n->prev;
    n->prev = n->next = NULL;
    if (n->parent)
        n->parent->children--;
    for (push_node *c = s->first; c && n->children; c = c->next)
        if (c->parent == n) {
            c->parent = NULL;
            n->children--;
        }
    n->parent = NULL;
    s->node_count--;
    if (!n->emitted)
        unspool(s, n);
    if (n->open_count == 0 && n->busy == 0) {
        node_free(reg, n);
        return;
    }
    n->detached = 1;
    n->next = s->detached;
    s->detached = n;
}

static void free_detached_if_idle(push_registry *reg, push_session *s, push_node *n)
{
    if (!n->detached || n->open_count || n->busy)
        return;
    for (push_node **p = &s->detached; *p; p = &(*p)->next) {
        if (*p == n) {
            *p = n->next;
            break;
        }
    }
    node_free(reg, n);
}

/* ---- sessions ---- */

static push_session *find_session(push_registry *reg, const char *dir, size_t len)
{
    for (push_session *s = reg->sessions; s; s = s->next)
        if (strlen(s->dir) == len && strncmp(s->dir, dir, len) == 0)
            return s;
    return NULL;
}

/* Splits rel into its session and the path inside it. */
static push_session *locate(push_registry *reg, const char *rel, const char **inner)
{
    const char *slash = strchr(rel, '/');
    size_t len = slash ? (size_t)(slash - rel) : strlen(rel);
    push_session *s = find_session(reg, rel, len);
    if (s)
        *inner = slash ? slash + 1 : "";
    return s;
}

static int receiving(const push_session *s)
{
    return s->state == SESSION_RECEIVING || s->state == SESSION_NAMED;
}

/* The latched error as the user sees it (common/err.h's one policy). */
static int latched(const push_session *s)
{
    return s->state == SESSION_FAILED ? walfs_err_user_code(s->error.code) : 0;
}

/* Latches err; the emitter removes what was uploaded (store work never
 * runs under reg->lock). */
static void fail(push_registry *reg, push_session *s, const walfs_err *err)
{
    if (s->state == SESSION_FAILED || s->state == SESSION_DONE)
        return;
    s->state = SESSION_FAILED;
    s->error = *err;
    s->label_pending = 0;
    log_error("base backup push into basebackups_005/%s failed: %s; nothing was published, "
              "and what was uploaded is being removed", s->dir, err->msg);
    for (push_node *n = s->first; n; n = n->next)
        drop_spool(reg, s, n);
    s->spooled_bytes = 0;
    pthread_cond_signal(&reg->work);
    pthread_cond_broadcast(&reg->progress);
    pthread_cond_broadcast(&s->changed);
}

/* A request's failure latches only while the push is receiving: once a
 * rename has asked for completion, the emitter alone decides the outcome
 * (the sentinel may be stored already). */
static void fail_receiving(push_registry *reg, push_session *s, const walfs_err *err)
{
    if (receiving(s))
        fail(reg, s, err);
}

static int has_uploads(const push_session *s) { return s->writer || s->leased; }

static void session_free(push_registry *reg, push_session *s)
{
    while (s->first) {
        push_node *next = s->first->next;
        node_free(reg, s->first);
        s->first = next;
    }
    while (s->detached) {
        push_node *next = s->detached->next;
        node_free(reg, s->detached);
        s->detached = next;
    }
    pthread_cond_destroy(&s->changed);
    free(s->table);
    free(s->dir);
    free(s);
}

/* Takes s out of a list of sessions. */
static void unlink_session(push_session **list, push_session *s)
{
    for (push_session **p = list; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            return;
        }
    }
}

/* A retired session goes once nothing uses it and the emitter has removed
 * its uploads. */
static void free_if_unused(push_registry *reg, push_session *s)
{
    if (!s->retired || s->refs > 0 || has_uploads(s))
        return;
    unlink_session(&reg->retired, s);
    session_free(reg, s);
}

static void retire(push_registry *reg, push_session *s)
{
    unlink_session(&reg->sessions, s);
    s->retired = 1;
    s->next = reg->retired;
    reg->retired = s;
    free_if_unused(reg, s);
}

/* A request is about to use n's spool without reg->lock. */
static void pin(push_session *s, push_node *n)
{
    n->busy++;
    s->refs++;
}

static void unpin(push_registry *reg, push_session *s, push_node *n)
{
    n->busy--;
    s->refs--;
    if (n->busy == 0) {
        if (n->emitted || s->state == SESSION_FAILED)
            drop_spool(reg, s, n);
        if (n->detached)
            free_detached_if_idle(reg, s, n);
        pthread_cond_signal(&reg->work); /* it may be ready to emit now */
    }
    free_if_unused(reg, s);
}

/* ---- what goes into the backup ---- */

/* WAL-E's exclusions (wal-e-format.md 2.1): top-level configuration and pid
 * files are left out; the contents of these directories are not kept. */
static int excluded_file(const char *path)
{
    static const char *const top[] = {"postmaster.pid", "postmaster.opts", "postgresql.conf",
                                      "pg_hba.conf",    "recovery.conf",   "recovery.done",
                                      "pg_ident.conf",  "promote",         MANIFEST_TMP};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (strcmp(path, top[i]) == 0)
            return 1;
    return 0;
}

static int in_emptied_dir(const char *path, int keep_wal)
{
    static const char *const top_dirs[] = {"pg_replslot/", "pg_xlog/", "pg_log/"};
    for (size_t i = 0; i < sizeof top_dirs / sizeof top_dirs[0]; i++)
        if (strncmp(path, top_dirs[i], strlen(top_dirs[i])) == 0)
            return 1;
    if (!keep_wal && strncmp(path, "pg_wal/", 7) == 0)
        return 1;
    /* pgsql_tmp, pg_stat_tmp and .wal-e at any depth */
    for (const char *p = path; *p;) {
        size_t clen = strcspn(p, "/");
        if (p[clen] == '/' && ((clen == 9 && strncmp(p, "pgsql_tmp", 9) == 0) ||
                               (clen == 11 && strncmp(p, "pg_stat_tmp", 11) == 0) ||
                               (clen == 5 && strncmp(p, ".wal-e", 5) == 0)))
            return 1;
        p += clen;
        if (*p == '/')
            p++;
    }
    return 0;
}

static int left_out(const push_node *n, int keep_wal)
{
    return excluded_file(n->path) || in_emptied_dir(n->path, keep_wal);
}

/* Whether the file is decided only at completion, or never goes in. */
static int deferred(const push_node *n) { return strncmp(n->path, "pg_wal/", 7) == 0; }

/* n is in the backup (or deliberately left out): its spool goes back to
 * the pool. */
static void mark_emitted(push_registry *reg, push_session *s, push_node *n)
{
    n->emitted = 1;
    drop_spool(reg, s, n);
}

/* ---- spool sections: spool_lock held, reg->lock taken inside ---- */

/* Reads from n's spool (n pinned, spool_lock held, reg->lock not). */
static int read_spool(push_registry *reg, push_session *s, push_node *n, char *buf, size_t cap,
                      uint64_t off, size_t *len, walfs_err *err)
{
    int rc = n->spool ? spool_file_read(n->spool, buf, cap, off, len, err)
                      : walfs_err_set(err, -EIO, "already uploaded into the backup");
    pthread_mutex_lock(&reg->lock);
    account(s, n); /* reading may make it plain bytes */
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

/* A file's content as the backup writer takes it: whatever is pending goes
 * to disk first (n pinned, spool_lock held). */
static int spool_data_of(push_registry *reg, push_session *s, push_node *n, spool_data *data,
                         walfs_err *err)
{
    int rc = n->spool ? spool_file_seal(n->spool, err)
                      : walfs_err_set(err, -EIO, "its spool is gone");
    if (!rc)
        rc = spool_file_data(n->spool, data, err);
    spool_file_stats fs = {0};
    if (!rc)
        fs = spool_file_get_stats(n->spool);
    pthread_mutex_lock(&reg->lock);
    account(s, n);
    if (rc) {
        walfs_err_prefix(err, "spooling %s: ", n->path);
    } else {
        if (data->records) {
            s->spool_stats.compressed_files++;
            s->spool_stats.compressed_bytes += n->size;
            s->spool_stats.records_bytes += data->len;
        } else {
            s->spool_stats.plain_files++;
            s->spool_stats.plain_bytes += n->size;
        }
        s->spool_stats.stashed_writes += fs.stashed_writes;
        s->spool_stats.unpacked_files += fs.unpacked != 0;
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

static int add_file(backup_writer *writer, const backup_writer_member *m, const spool_data *data,
                    walfs_err *err)
{
    return data->records ? backup_writer_add_records(writer, m, data->fd, data->len, err)
                         : backup_writer_add(writer, m, data->fd, err);
}

/* A member as the emitter adds it without reg->lock: its own copy of the
 * strings, whatever renames happen meanwhile. */
typedef struct member_copy {
    push_node *node;
    backup_writer_member m;
    char *path, *link_target;
    int skip;               /* left out of the backup */
} member_copy;

static int copy_member(const push_node *n, member_copy *c)
{
    memset(c, 0, sizeof *c);
    c->path = strdup(n->path);
    c->link_target = n->link_target ? strdup(n->link_target) : NULL;
    if (!c->path || (n->link_target && !c->link_target)) {
        free(c->path);
        free(c->link_target);
        return -ENOMEM;
    }
    c->node = (push_node *)n;
    c->m = member_of(n, c->path);
    c->m.link_target = c->link_target;
    return 0;
}

static void free_member(member_copy *c)
{
    free(c->path);
    free(c->link_target);
}

/* ---- the emitter's jobs (reg->lock held on entry and exit, released for
 * the work itself) ---- */

/* Removes a failed or abandoned push's uploads. */
static void job_discard(push_registry *reg, push_session *s)
{
    backup_writer *writer = s->writer;
    int leased = s->leased;
    char name[sizeof s->backup_name];
    memcpy(name, s->backup_name, sizeof name);
    pthread_mutex_unlock(&reg->lock);
    if (writer)
        backup_writer_abort(writer);
    /* What the writer could not remove (an abort that failed while the
     * store was down, a commit whose answer was lost) is looked for again;
     * the lease goes only once nothing is left. */
    if (leased)
        push_remove_leftovers(reg->st, name);
    pthread_mutex_lock(&reg->lock);
    s->writer = NULL;
    s->leased = 0;
}

/* The backup's name from backup_label; the writer starts and the lease is
 * stored.  From here on, partitions stream out. */
static void job_name(push_registry *reg, push_session *s)
{
    push_node *label = find_node(s, LABEL);
    push_node *root = find_node(s, "");
    s->label_pending = 0;
    if (!label || !label->spool || !root || s->writer)
        return;
    member_copy root_copy;
    walfs_err err = {0};
    if (copy_member(root, &root_copy) != 0) {
        walfs_err_set(&err, -ENOMEM, "out of memory");
        fail(reg, s, &err);
        return;
    }
    root_copy.m.path = "";
    pin(s, label);
    pthread_mutex_unlock(&reg->lock);

    char text[4096];
    size_t len = 0;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = read_spool(reg, s, label, text, sizeof text - 1, 0, &len, &err);
    pthread_mutex_unlock(&reg->spool_lock);
    pg_backup_label start = {0};
    uint64_t segment_size = 0;
    char backup_name[sizeof s->backup_name] = "";
    backup_writer *writer = NULL;
    int leased = 0;
    if (rc) {
        rc = walfs_err_set(&err, -EIO, "could not read back backup_label from the spool");
    } else {
        text[len] = '\0';
        if (pg_backup_label_parse(text, &start) != 0)
            rc = walfs_err_set(&err, -EINVAL, "backup_label has no readable 'START WAL "
                               "LOCATION: X/Y (file Z)' line; this is not a PostgreSQL base "
                               "backup");
        else if (!(segment_size = wal_segment_size_of(start.start_lsn, start.start_file)))
            rc = walfs_err_set(&err, -EINVAL, "backup_label: start location %s does not belong "
                               "to file %s", start.start_lsn_text, start.start_file);
    }
    if (!rc) {
        char offset[9];
        wal_offset_lpad(start.start_lsn % segment_size, offset);
        wale_backup_name(backup_name, sizeof backup_name, start.start_file, offset);
        char sentinel[WALE_KEY_MAX];
        wale_sentinel_key(sentinel, sizeof sentinel, backup_name);
        store_stat st;
        walfs_err probe = {0};
        rc = store_stat_key(reg->st, sentinel, &st, &probe);
        if (rc == 0)
            rc = walfs_err_set(&err, -EEXIST, "a backup named %s already exists in the archive",
                               backup_name);
        else if (rc != -ENOENT)
            err = probe;
        else
            rc = backup_writer_begin(reg->st, backup_name, &reg->settings.limits, &writer, &err);
    }
    if (!rc) {
        /* Lets the next mount clean up should this process die mid-push. */
        rc = push_lease_write(reg->st, backup_name, &err);
        leased = rc == 0;
    }
    /* WAL-E's partition 0 starts with the data directory itself. */
    if (!rc)
        rc = backup_writer_add(writer, &root_copy.m, -1, &err);
    free_member(&root_copy);

    pthread_mutex_lock(&reg->lock);
    s->writer = writer;
    s->leased = leased;
    memcpy(s->backup_name, backup_name, sizeof s->backup_name);
    if (!rc) {
        s->segment_size = segment_size;
        memcpy(s->start_segment, start.start_file, 25);
        root->emitted = 1;
        if (s->state == SESSION_RECEIVING)
            s->state = SESSION_NAMED;
        log_info("pushing base backup %s from basebackups_005/%s", s->backup_name, s->dir);
    } else {
        fail(reg, s, &err);
    }
    unpin(reg, s, label);
}

/* The next file the emitter may add, in creation order. */
static push_node *next_ready(push_registry *reg, push_session *s)
{
    for (push_node *n = s->first; n; n = n->next) {
        if (n->seq >= s->emit_before)
            break;
        if (n->type != MEMBER_FILE || n->emitted || n->emitting || n->open_count || n->busy ||
            !n->spool || deferred(n))
            continue;
        if (left_out(n, 0)) {
            mark_emitted(reg, s, n);
            continue;
        }
        return n;
    }
    return NULL;
}

/* Adds a settled file to its backup while writers go on with the next
 * ones, so reading, compressing and uploading overlap. */
static void job_emit(push_registry *reg, push_session *s, push_node *n)
{
    member_copy c;
    walfs_err err = {0};
    if (copy_member(n, &c) != 0) {
        walfs_err_set(&err, -ENOMEM, "out of memory");
        fail(reg, s, &err);
        return;
    }
    /* n stays as it is while emitting: renames over it get EBUSY, and
     * removing it fails the push. */
    n->emitting = 1;
    pin(s, n);
    backup_writer *writer = s->writer;
    pthread_mutex_unlock(&reg->lock);
    spool_data data;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = spool_data_of(reg, s, n, &data, &err);
    if (!rc)
        c.m.size = spool_file_size(n->spool);
    pthread_mutex_unlock(&reg->spool_lock);
    if (!rc)
        rc = add_file(writer, &c.m, &data, &err);
    free_member(&c);
    pthread_mutex_lock(&reg->lock);
    n->emitting = 0;
    if (rc)
        fail(reg, s, &err);
    else
        mark_emitted(reg, s, n);
    unpin(reg, s, n);
}

/* ---- completion (on the emitter) ---- */

static int stop_from_manifest(const char *text, uint64_t segment_size, backup_writer_stop *stop,
                              walfs_err *err)
{
    uint32_t timeline;
    uint64_t lsn;
    if (pg_backup_manifest_wal_end(text, &timeline, &lsn) != 0)
        return walfs_err_set(err, -EINVAL, "backup_manifest has no WAL-Ranges End-LSN; cannot "
                             "tell where the backup stops");
    pg_segment_name_of_lsn(timeline, lsn, segment_size, stop->stop_segment);
    wal_offset_lpad(lsn % segment_size, stop->stop_offset);
    return 0;
}

/* Without a manifest: the copied pg_control's latest checkpoint, which was
 * written during the backup, is where the backup is known to reach. */
static int stop_from_control(const push_session *s, backup_writer_stop *stop, walfs_err *err)
{
    uint64_t lsn = 0;
    uint32_t timeline = 0;
    if (!s->have_control || pg_control_checkpoint(s->control, sizeof s->control, &lsn, &timeline))
        return walfs_err_set(err, -EINVAL, "global/pg_control is missing or unreadable; cannot "
                             "tell where the backup stops");
    pg_segment_name_of_lsn(timeline, lsn, s->segment_size, stop->stop_segment);
    wal_offset_lpad(lsn % s->segment_size, stop->stop_offset);
    if (strcmp(stop->stop_segment + 8, s->start_segment + 8) < 0)
        memcpy(stop->stop_segment, s->start_segment, 25);
    return 0;
}

/* The manifest's text (malloc'd), read without reg->lock. */
static char *read_manifest(push_registry *reg, push_session *s, push_node *manifest,
                           walfs_err *err)
{
    uint64_t size = manifest->size;
    if (size > SMALL_FILE_MAX * 8ull) {
        walfs_err_set(err, -EFBIG, "backup_manifest is implausibly large");
        return NULL;
    }
    char *text = malloc(size + 1);
    size_t len = 0;
    walfs_err why;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = !text ? -ENOMEM : read_spool(reg, s, manifest, text, size, 0, &len, &why);
    pthread_mutex_unlock(&reg->spool_lock);
    if (rc) {
        free(text);
        walfs_err_set(err, -EIO, "could not read back backup_manifest from the spool");
        return NULL;
    }
    text[len] = '\0';
    return text;
}

/* What completion adds, in the order it adds them: every file the emitter
 * has not packed, in creation order, including pg_wal's now that it is
 * known whether they are the backup's own streamed WAL; then directories,
 * symlinks and hard links, whose modes and times are final only once
 * everything inside them has been written.  Taken under reg->lock. */
static member_copy *completion_plan(push_session *s, int keep_wal, size_t *count)
{
    member_copy *plan = calloc(s->node_count ? s->node_count : 1, sizeof *plan);
    if (!plan)
        return NULL;
    size_t k = 0;
    for (int files = 1; files >= 0; files--) {
        for (push_node *n = s->first; n; n = n->next) {
            if (n->emitted || (n->type == MEMBER_FILE) != files)
                continue;
            if (copy_member(n, &plan[k]) != 0) {
                for (size_t i = 0; i < k; i++)
                    free_member(&plan[i]);
                free(plan);
                return NULL;
            }
            plan[k].skip = left_out(n, keep_wal);
            pin(s, n);
            k++;
        }
    }
    *count = k;
    return plan;
}

static int store_plan(push_registry *reg, push_session *s, backup_writer *writer,
                      member_copy *plan, size_t count, walfs_err *err)
{
    for (size_t i = 0; i < count; i++) {
        member_copy *c = &plan[i];
        if (c->skip)
            continue;
        if (c->m.type != MEMBER_FILE) {
            if (backup_writer_add(writer, &c->m, -1, err) != 0)
                return err->code;
            continue;
        }
        spool_data data;
        pthread_mutex_lock(&reg->spool_lock);
        int rc = spool_data_of(reg, s, c->node, &data, err);
        if (!rc)
            c->m.size = spool_file_size(c->node->spool);
        pthread_mutex_unlock(&reg->spool_lock);
        if (!rc)
            rc = add_file(writer, &c->m, &data, err);
        if (rc)
            return rc;
    }
    return 0;
}

static void log_completed(const push_session *s)
{
    log_info("base backup %s is complete: its sentinel is stored", s->backup_name);
    log_info("basebackups_005/%s: %" PRIu64 " files (%" PRIu64 " bytes) were compressed as they "
             "arrived, into %" PRIu64 " bytes of spool; %" PRIu64 " (%" PRIu64 " bytes) were "
             "spooled plain, %u of them after compressing had begun; %u writes waited for an "
             "earlier one, %u were held in memory",
             s->dir, s->spool_stats.compressed_files, s->spool_stats.compressed_bytes,
             s->spool_stats.records_bytes, s->spool_stats.plain_files, s->spool_stats.plain_bytes,
             s->spool_stats.unpacked_files, s->spool_stats.waited_writes,
             s->spool_stats.stashed_writes);
}

/* Stores the rest of the backup, extended_version.txt and the sentinel.
 * Renames and writes into the session wait or are refused meanwhile
 * (SESSION_COMPLETING), so the plan stays true. */
static void job_complete(push_registry *reg, push_session *s)
{
    walfs_err err = {0};
    int by_manifest = s->completion_by_manifest;
    log_info("basebackups_005/%s: the copy is complete (%s); storing the last %" PRIu64
             " bytes and the sentinel", s->dir, by_manifest ? "backup_manifest" : "renamed",
             s->spooled_bytes);
    if (!s->writer) {
        walfs_err_set(&err, -EINVAL, "no backup_label was written: this is not a base backup "
                      "(copy the backup_label that pg_backup_stop() returned)");
        fail(reg, s, &err);
        return;
    }
    backup_writer_stop stop;
    memset(&stop, 0, sizeof stop);
    push_node *manifest = by_manifest ? find_node(s, MANIFEST) : NULL;
    if (by_manifest && !manifest) {
        walfs_err_set(&err, -EIO, "backup_manifest vanished before completion");
        fail(reg, s, &err);
        return;
    }
    if (!by_manifest && stop_from_control(s, &stop, &err) != 0) {
        fail(reg, s, &err);
        return;
    }
    /* pg_basebackup -X fetch/stream puts the backup's own WAL in pg_wal:
     * kept, so the backup restores alone.  Anything else in pg_wal (a copy
     * of a live server's) is left out, as WAL-E does. */
    int keep_wal = 0;
    for (push_node *n = s->first; n && by_manifest && !keep_wal; n = n->next)
        if (n->type == MEMBER_FILE && strncmp(n->path, "pg_wal/", 7) == 0 &&
            !strchr(n->path + 7, '/'))
            keep_wal = 1;
    size_t count = 0;
    member_copy *plan = completion_plan(s, keep_wal, &count);
    if (!plan) {
        walfs_err_set(&err, -ENOMEM, "out of memory");
        fail(reg, s, &err);
        return;
    }
    if (manifest)
        pin(s, manifest);
    backup_writer *writer = s->writer;
    uint64_t segment_size = s->segment_size;
    char version[128];
    /* WAL-E stores SELECT version(); through a copy only PG_VERSION is known. */
    snprintf(version, sizeof version, "PostgreSQL %s",
             s->pg_version[0] ? s->pg_version : "(unknown version)");
    char name[sizeof s->backup_name];
    memcpy(name, s->backup_name, sizeof name);
    pthread_mutex_unlock(&reg->lock);

    int rc = 0;
    if (manifest) {
        char *text = read_manifest(reg, s, manifest, &err);
        rc = !text ? err.code : stop_from_manifest(text, segment_size, &stop, &err);
        free(text);
    }
    if (!rc)
        rc = store_plan(reg, s, writer, plan, count, &err);
    int finished = 0;
    if (!rc) {
        stop.pg_version = version;
        stop.base_prefix = "";
        rc = backup_writer_finish(writer, &stop, &err);
        finished = 1; /* finish frees the writer whatever the result */
    }
    if (!rc)
        push_lease_remove(reg->st, name);

    pthread_mutex_lock(&reg->lock);
    if (finished)
        s->writer = NULL;
    if (!rc) {
        s->leased = 0;
        s->state = SESSION_DONE;
        for (push_node *n = s->first; n; n = n->next)
            mark_emitted(reg, s, n);
        s->spooled_bytes = 0;
        log_completed(s);
        pthread_cond_broadcast(&s->changed);
    } else {
        fail(reg, s, &err);
    }
    for (size_t i = 0; i < count; i++) {
        free_member(&plan[i]);
        unpin(reg, s, plan[i].node);
    }
    free(plan);
    if (manifest)
        unpin(reg, s, manifest);
}

/* The job the emitter does next, most urgent first: removing uploads
 * (before a new push of the same name may begin), naming, adding a settled
 * file, completing. */
typedef enum job_kind { JOB_NONE, JOB_DISCARD, JOB_NAME, JOB_EMIT, JOB_COMPLETE } job_kind;

static job_kind next_job(push_registry *reg, push_session **out, push_node **node)
{
    for (int retired = 1; retired >= 0; retired--)
        for (push_session *s = retired ? reg->retired : reg->sessions; s; s = s->next)
            if ((s->state == SESSION_FAILED || s->retired) && has_uploads(s)) {
                *out = s;
                return JOB_DISCARD;
            }
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->label_pending && (receiving(s) || s->state == SESSION_COMPLETING)) {
            *out = s;
            return JOB_NAME;
        }
    }
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->state == SESSION_NAMED && (*node = next_ready(reg, s)) != NULL) {
            *out = s;
            return JOB_EMIT;
        }
    }
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->state == SESSION_COMPLETING) {
            *out = s;
            return JOB_COMPLETE;
        }
    }
    return JOB_NONE;
}

static void *emitter_main(void *arg)
{
    push_registry *reg = arg;
    ns_lock(reg);
    while (!reg->stopping) {
        push_session *s = NULL;
        push_node *n = NULL;
        job_kind job = next_job(reg, &s, &n);
        if (job == JOB_NONE) {
            pthread_cond_broadcast(&reg->progress);
            if (reg->n_doomed) {
                ns_unlock(reg);
                ns_lock(reg);
                continue;
            }
            pthread_cond_wait(&reg->work, &reg->lock);
            continue;
        }
        s->refs++;
        s->emitter_busy = 1;
        switch (job) {
        case JOB_DISCARD: job_discard(reg, s); break;
        case JOB_NAME: job_name(reg, s); break;
        case JOB_EMIT: job_emit(reg, s, n); break;
        case JOB_COMPLETE: job_complete(reg, s); break;
        case JOB_NONE: break;
        }
        s->emitter_busy = 0;
        s->refs--;
        free_if_unused(reg, s);
        pthread_cond_broadcast(&reg->progress);
        if (reg->n_doomed) {
            ns_unlock(reg);
            ns_lock(reg);
        }
    }
    pthread_mutex_unlock(&reg->lock);
    return NULL;
}

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
    pthread_cond_init(&reg->work, NULL);
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
    if (!reg->emitter_running) {
        if (pthread_create(&reg->emitter, NULL, emitter_main, reg) != 0)
            return walfs_err_set(err, -EAGAIN, "cannot start the base backup push thread");
        reg->emitter_running = 1;
    }
    if (!reg->cleanup_running)
        reg->cleanup_running = pthread_create(&reg->cleanup, NULL, cleanup_main, reg) == 0;
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
    session_free(reg, s);
}

void push_registry_free(push_registry *reg)
{
    if (!reg)
        return;
    /* The clean-up is best effort and starts again at the next mount. */
    reg->cleanup_stop = 1;
    if (reg->cleanup_running)
        pthread_join(reg->cleanup, NULL);
    ns_lock(reg);
    reg->stopping = 1;
    pthread_cond_broadcast(&reg->work);
    for (push_session *s = reg->sessions; s; s = s->next)
        pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&reg->lock);
    if (reg->emitter_running)
        pthread_join(reg->emitter, NULL);
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
    pthread_cond_destroy(&reg->work);
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
    if (!add_node(reg, s, "", MEMBER_DIR, mode, who)) {
        session_free(reg, s);
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
    push_session *s = locate(reg, rel, inner);
    *out = s;
    if (s && s->state == SESSION_COMPLETING)
        return -EBUSY;
    if (!s || s->state != SESSION_DONE || !(*inner)[0])
        return 0;
    push_node *root = find_node(s, "");
    mode_t mode = root ? root->mode : 0700;
    char *dir = strdup(s->dir);
    if (!dir)
        return -ENOMEM;
    retire(reg, s);
    *out = new_session(reg, dir, mode, who);
    *inner = rel + strlen(dir) + 1;
    free(dir);
    return *out ? 0 : -ENOMEM;
}

/* ---- the namespace (reg->lock only) ---- */

int push_is_session(push_registry *reg, const char *rel)
{
    ns_lock(reg);
    const char *inner;
    int found = locate(reg, rel, &inner) != NULL;
    ns_unlock(reg);
    return found;
}

int push_mkdir(push_registry *reg, const char *rel, mode_t mode, const push_caller *who)
{
    ns_lock(reg);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    if (!rc && !s)
        rc = strchr(rel, '/') ? -ENOENT : new_session(reg, rel, mode, who) ? 0 : -ENOMEM;
    else if (!rc)
        rc = s->state == SESSION_FAILED ? latched(s) : find_node(s, inner) ? -EEXIST
             : !parent_is_dir(s, inner) ? -ENOENT
             : add_node(reg, s, inner, MEMBER_DIR, mode, who) ? 0 : -ENOMEM;
    ns_unlock(reg);
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
    ns_lock(reg);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    if (n)
        fill_stat(n, st);
    ns_unlock(reg);
    return n ? 0 : -ENOENT;
}

int push_readdir(push_registry *reg, const char *rel, push_dir_filler fill, void *ctx)
{
    ns_lock(reg);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *dir = s ? visible_node(s, inner) : NULL;
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
    ns_unlock(reg);
    return rc;
}

void push_list_sessions(push_registry *reg, push_dir_filler fill, void *ctx)
{
    ns_lock(reg);
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->state == SESSION_DONE)
            continue; /* the backup shows under its own name now */
        struct stat st = {.st_mode = S_IFDIR | 0700};
        if (fill(ctx, s->dir, &st))
            break;
    }
    ns_unlock(reg);
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
    if (!receiving(s))
        return;
    if (new_seq > s->emit_before)
        s->emit_before = new_seq;
    pthread_cond_signal(&reg->work);
    while (receiving(s) && s->spooled_bytes > reg->settings.spool_max_bytes &&
           (s->label_pending || s->emitter_busy ||
            (s->state == SESSION_NAMED && next_ready(reg, s))) &&
           !reg->stopping)
        pthread_cond_wait(&reg->progress, &reg->lock);
    walfs_err err = {0};
    if (receiving(s) && check_spool_limit(reg, s, &err) != 0)
        fail(reg, s, &err);
}

/* Truncates n (pinned) to size: a spool section. */
static int truncate_pinned(push_registry *reg, push_session *s, push_node *n, uint64_t size)
{
    walfs_err err;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = n->spool ? spool_file_truncate(n->spool, size, &err)
                      : walfs_err_set(&err, -EROFS, "already uploaded into the backup");
    pthread_mutex_lock(&reg->lock);
    account(s, n);
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
    account(s, n);
    pthread_mutex_unlock(&reg->lock);
    pthread_mutex_unlock(&reg->spool_lock);
    return rc;
}

static void release_locked(push_registry *reg, push_handle *h);

int push_create(push_registry *reg, const char *rel, mode_t mode, const push_caller *who,
                void **handle)
{
    ns_lock(reg);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    push_node *n = NULL;
    if (!rc)
        rc = !s || !inner[0] ? -ENOENT : s->state == SESSION_FAILED ? latched(s)
             : s->state == SESSION_DONE ? -EROFS : !parent_is_dir(s, inner) ? -ENOENT : 0;
    if (!rc) {
        n = find_node(s, inner);
        if (n && (n->type != MEMBER_FILE || n->emitted || n->emitting))
            rc = n->type == MEMBER_DIR ? -EISDIR : n->emitting ? -EBUSY : -EEXIST;
    }
    if (!rc && !n && !(n = add_node(reg, s, inner, MEMBER_FILE, mode, who)))
        rc = -ENOMEM;
    if (!rc)
        rc = reserve_spool(reg);
    push_handle *h = NULL;
    if (!rc && !(h = new_handle(s, n, 1))) {
        reg->spool_count--;
        rc = -ENOMEM;
    }
    if (rc) {
        ns_unlock(reg);
        return rc;
    }
    pin(s, n);
    pthread_mutex_unlock(&reg->lock);
    rc = fresh_spool(reg, s, n, rel);
    ns_lock(reg);
    if (!rc) {
        advance(reg, s, n->seq);
        rc = latched(s);
    }
    unpin(reg, s, n);
    if (rc)
        release_locked(reg, h);
    else
        *handle = h;
    ns_unlock(reg);
    return rc;
}

int push_open(push_registry *reg, const char *rel, int flags, const push_caller *who,
              void **handle)
{
    ns_lock(reg);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    int truncating = (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY;
    if (s && s->state == SESSION_DONE && inner[0] && truncating) {
        /* Rewriting a name the kernel still remembers from the finished
         * push: a new push into the same directory. */
        ns_unlock(reg);
        return push_create(reg, rel, 0600, who, handle);
    }
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = 0;
    if (!n)
        rc = -ENOENT;
    else if (n->type == MEMBER_DIR)
        rc = -EISDIR;
    else if (s->state == SESSION_FAILED)
        rc = latched(s);
    else if ((flags & O_TRUNC) && (n->emitting || s->state == SESSION_COMPLETING))
        rc = -EBUSY;
    /* Opening a finished file read-write is how pg_basebackup fsyncs it:
     * allowed, but writing to it is not. */
    push_handle *h = NULL;
    if (!rc && !(h = new_handle(s, n, (flags & O_ACCMODE) != O_RDONLY && !n->emitted &&
                                          !n->emitting && receiving(s))))
        rc = -ENOMEM;
    if (!rc && (flags & O_TRUNC) && !n->emitted && n->spool) {
        pin(s, n);
        pthread_mutex_unlock(&reg->lock);
        rc = truncate_pinned(reg, s, n, 0);
        ns_lock(reg);
        unpin(reg, s, n);
        if (rc)
            release_locked(reg, h);
    }
    if (!rc)
        *handle = h;
    ns_unlock(reg);
    return rc;
}

int push_read(push_registry *reg, void *handle, char *buf, size_t size, off_t off)
{
    push_handle *h = handle;
    push_session *s = h->session;
    push_node *n = h->node;
    ns_lock(reg);
    if (!n->spool) {
        log_error("read basebackups_005/%s/%s: already uploaded into the backup; read it from "
                  "the finished backup's directory", s->dir, n->path);
        ns_unlock(reg);
        return -EIO;
    }
    pin(s, n);
    pthread_mutex_unlock(&reg->lock);
    size_t got = 0;
    walfs_err err;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = read_spool(reg, s, n, buf, size, (uint64_t)off, &got, &err);
    pthread_mutex_unlock(&reg->spool_lock);
    ns_lock(reg);
    if (rc)
        log_error("read basebackups_005/%s/%s: %s", s->dir, n->path, err.msg);
    unpin(reg, s, n);
    ns_unlock(reg);
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
    ns_lock(reg);
    int rc = latched(s);
    if (!rc && (!h->writable || !n->spool || n->emitted))
        rc = -EBADF;
    if (!rc && !receiving(s))
        rc = -EBUSY; /* completing: the backup is being closed */
    if (rc) {
        ns_unlock(reg);
        return rc;
    }
    pin(s, n);
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
    account(s, n);
    s->spool_stats.waited_writes += (unsigned)waited;
    if (rc) {
        /* Latched: with the kernel's writeback cache the writer may only
         * hear of it at close, and a file with a hole must never be
         * packed, whatever the writer does next. */
        walfs_err why;
        walfs_err_set(&why, err.code, "spooling %s failed: %s (check the space in the cache "
                      "directory, --cache-dir)", n->path, err.msg);
        fail_receiving(reg, s, &why);
        rc = latched(s) ? latched(s) : -EIO;
    } else {
        now_ts(&n->mtime_sec, &n->mtime_nsec);
    }
    pthread_mutex_unlock(&reg->lock);
    pthread_mutex_unlock(&reg->spool_lock);

    ns_lock(reg);
    unpin(reg, s, n);
    ns_unlock(reg);
    return rc ? rc : (int)size;
}

int push_flush(push_registry *reg, void *handle)
{
    push_handle *h = handle;
    ns_lock(reg);
    int rc = latched(h->session);
    ns_unlock(reg);
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
    account(s, n);
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
        account(s, n);
    if (rc) {
        walfs_err_prefix(&err, "spooling %s failed: ", n->path);
        fail_receiving(reg, s, &err);
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
        pthread_cond_signal(&reg->work);
    }
    pthread_mutex_unlock(&reg->lock);
    pthread_mutex_unlock(&reg->spool_lock);
}

/* Whether closing or renaming n makes it settle now. */
static int settles(const push_session *s, const push_node *n)
{
    return n->open_count == 0 && !n->detached && !s->retired && n->spool &&
           n->type == MEMBER_FILE && receiving(s);
}

/* Drops h (reg->lock held, nothing to settle). */
static void release_locked(push_registry *reg, push_handle *h)
{
    push_session *s = h->session;
    push_node *n = h->node;
    if (n->open_count > 0)
        n->open_count--;
    if (n->detached)
        free_detached_if_idle(reg, s, n);
    s->refs--;
    free_if_unused(reg, s);
    pthread_cond_signal(&reg->work);
    free(h);
}

void push_release(push_registry *reg, void *handle)
{
    push_handle *h = handle;
    push_session *s = h->session;
    push_node *n = h->node;
    ns_lock(reg);
    n->open_count--; /* settles() asks whether this was the last close */
    if (settles(s, n)) {
        pin(s, n);
        pthread_mutex_unlock(&reg->lock);
        settle_pinned(reg, s, n);
        ns_lock(reg);
        n->open_count++; /* before unpin: n stays while h counts */
        unpin(reg, s, n);
    } else {
        n->open_count++;
    }
    release_locked(reg, h);
    ns_unlock(reg);
}

int push_truncate(push_registry *reg, const char *rel, void *handle, off_t size)
{
    ns_lock(reg);
    const char *inner;
    push_handle *h = handle;
    push_session *s = h ? h->session : locate(reg, rel, &inner);
    push_node *n = h ? h->node : s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_FILE ? -EISDIR
             : (n->emitted || n->emitting || !n->spool) ? -EROFS
             : !receiving(s) ? -EBUSY : 0;
    if (!rc) {
        pin(s, n);
        pthread_mutex_unlock(&reg->lock);
        rc = truncate_pinned(reg, s, n, (uint64_t)size);
        ns_lock(reg);
        unpin(reg, s, n);
    }
    ns_unlock(reg);
    return rc;
}

/* ---- attributes, links, renames, removals (reg->lock only) ---- */

static int change_node(push_registry *reg, const char *rel, push_node **out)
{
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    if (!n)
        return -ENOENT;
    *out = n;
    return 0;
}

int push_chmod(push_registry *reg, const char *rel, mode_t mode)
{
    ns_lock(reg);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted)
        n->mode = node_mode(mode);
    ns_unlock(reg);
    return rc;
}

int push_chown(push_registry *reg, const char *rel, uid_t uid, gid_t gid)
{
    ns_lock(reg);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted) {
        if (uid != (uid_t)-1)
            n->uid = uid;
        if (gid != (gid_t)-1)
            n->gid = gid;
    }
    ns_unlock(reg);
    return rc;
}

int push_utimens(push_registry *reg, const char *rel, const struct timespec tv[2])
{
    ns_lock(reg);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted) {
        if (!tv || tv[1].tv_nsec == UTIME_NOW) {
            now_ts(&n->mtime_sec, &n->mtime_nsec);
        } else if (tv[1].tv_nsec != UTIME_OMIT) {
            n->mtime_sec = tv[1].tv_sec;
            n->mtime_nsec = (uint32_t)tv[1].tv_nsec;
        }
    }
    ns_unlock(reg);
    return rc;
}

int push_symlink(push_registry *reg, const char *target, const char *rel,
                 const push_caller *who)
{
    ns_lock(reg);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    if (!rc)
        rc = !s || !inner[0] ? -ENOENT : s->state == SESSION_FAILED ? latched(s)
             : s->state == SESSION_DONE ? -EROFS : find_node(s, inner) ? -EEXIST
             : !parent_is_dir(s, inner) ? -ENOENT : 0;
    if (!rc) {
        push_node *n = add_node(reg, s, inner, MEMBER_SYMLINK, 0777, who);
        if (!n || !(n->link_target = strdup(target)))
            rc = -ENOMEM;
    }
    ns_unlock(reg);
    return rc;
}

int push_link(push_registry *reg, const char *from_rel, const char *to_rel,
              const push_caller *who)
{
    ns_lock(reg);
    const char *from_inner, *to_inner;
    push_session *s = locate(reg, from_rel, &from_inner);
    push_session *t = locate(reg, to_rel, &to_inner);
    push_node *target = s ? find_node(s, from_inner) : NULL;
    int rc = !target || s != t ? -ENOENT : target->type != MEMBER_FILE ? -EPERM
             : s->state == SESSION_FAILED ? latched(s) : !receiving(s) ? -EBUSY
             : find_node(s, to_inner) ? -EEXIST : 0;
    if (!rc) {
        push_node *n = add_node(reg, s, to_inner, MEMBER_HARDLINK, target->mode, who);
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
    ns_unlock(reg);
    return rc;
}

int push_readlink(push_registry *reg, const char *rel, char *buf, size_t size)
{
    ns_lock(reg);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_SYMLINK ? -EINVAL : 0;
    if (!rc)
        snprintf(buf, size, "%s", n->link_target);
    ns_unlock(reg);
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
    push_node *top = find_node(s, from);
    k = 0;
    for (push_node *n = s->first; n; n = n->next) {
        if (!under(n->path, from, flen))
            continue;
        table_remove(s, n);
        free(n->path);
        n->path = paths[k++];
        table_insert(s, n);
    }
    free(paths);
    if (top) {
        if (top->parent)
            top->parent->children--;
        top->parent = parent_of(s, top->path);
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
        return latched(s);
    if (s->state == SESSION_DONE)
        return 0;
    int mine = s->state != SESSION_COMPLETING;
    if (mine) {
        s->state = SESSION_COMPLETING;
        s->completion_by_manifest = by_manifest;
        pthread_cond_signal(&reg->work);
    }
    s->refs++;
    while (s->state == SESSION_COMPLETING && !reg->stopping)
        pthread_cond_wait(&s->changed, &reg->lock);
    s->refs--;
    int rc = s->state == SESSION_DONE ? 0 : s->state == SESSION_FAILED ? latched(s) : -EIO;
    *completed = mine && rc == 0;
    return rc;
}

int push_rename(push_registry *reg, const char *from_rel, const char *to_rel, int *completed)
{
    *completed = 0;
    ns_lock(reg);
    const char *from_inner, *to_inner;
    push_session *s = locate(reg, from_rel, &from_inner);
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
        free_if_unused(reg, s);
    } else {
        s->refs++; /* s outlives the settle below */
        push_session *t = locate(reg, to_rel, &to_inner);
        push_node *from = visible_node(s, from_inner);
        push_node *existing = t == s ? find_node(s, to_inner) : NULL;
        if (!from)
            rc = -ENOENT;
        else if (t != s)
            rc = -EXDEV;
        else if (s->state == SESSION_FAILED)
            rc = latched(s);
        else if (!receiving(s))
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
            detach_node(reg, s, existing); /* rename over a name replaces it */
        if (!rc && existing != from)
            rc = rename_nodes(s, from_inner, to_inner);
        push_node *moved = rc ? NULL : find_node(s, to_inner);
        if (moved && settles(s, moved)) {
            pin(s, moved);
            pthread_mutex_unlock(&reg->lock);
            settle_pinned(reg, s, moved);
            ns_lock(reg);
            unpin(reg, s, moved);
        }
        if (!rc && strcmp(from_inner, MANIFEST_TMP) == 0 && strcmp(to_inner, MANIFEST) == 0)
            rc = complete(reg, s, 1, completed);
        if (!rc)
            rc = latched(s);
        s->refs--;
        free_if_unused(reg, s);
    }
    ns_unlock(reg);
    return rc;
}

/* rmdir of the push itself: given up; the emitter removes its uploads. */
static void drop_session(push_registry *reg, push_session *s)
{
    if (receiving(s)) {
        walfs_err err;
        walfs_err_set(&err, -ECANCELED, "the push directory was removed");
        log_warn("base backup push into basebackups_005/%s abandoned; removing what it uploaded",
                 s->dir);
        s->state = SESSION_FAILED;
        s->error = err;
        s->label_pending = 0;
        for (push_node *n = s->first; n; n = n->next)
            drop_spool(reg, s, n);
        s->spooled_bytes = 0;
        pthread_cond_broadcast(&reg->progress);
    }
    pthread_cond_signal(&reg->work);
    retire(reg, s);
}

int push_unlink(push_registry *reg, const char *rel)
{
    ns_lock(reg);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type == MEMBER_DIR ? -EISDIR : n->open_count ? -EBUSY
             : s->state == SESSION_COMPLETING ? -EBUSY : 0;
    if (!rc && (n->emitted || n->emitting) && receiving(s)) {
        /* Already packed into an uploaded partition: removing it can only
         * mean the push is being abandoned (pg_basebackup cleans up with
         * rm -rf when it fails), so abandon it now and remove the uploads. */
        walfs_err err;
        walfs_err_set(&err, -ECANCELED, "%s was removed after it was packed into the backup; "
                      "the push is abandoned", n->path);
        fail(reg, s, &err);
    }
    if (!rc)
        detach_node(reg, s, n);
    ns_unlock(reg);
    return rc;
}

int push_rmdir(push_registry *reg, const char *rel)
{
    ns_lock(reg);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_DIR ? -ENOTDIR : 0;
    if (!rc && s->state == SESSION_COMPLETING)
        rc = -EBUSY;
    if (!rc && s->state != SESSION_DONE && n->children) /* a completed push shows empty */
        rc = -ENOTEMPTY;
    if (!rc) {
        if (!inner[0])
            drop_session(reg, s);
        else
            detach_node(reg, s, n);
    }
    ns_unlock(reg);
    return rc;
}
