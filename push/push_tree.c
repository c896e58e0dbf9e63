#include "push/push_tree.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

/* ---- locks ---- */

void tree_lock(push_registry *reg) { pthread_mutex_lock(&reg->lock); }

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
void tree_unlock(push_registry *reg)
{
    int doomed = reg->n_doomed > 0;
    pthread_mutex_unlock(&reg->lock);
    if (doomed)
        free_doomed(reg);
}

/* Room for every spool that exists to be doomed, so that giving one up
 * never fails; called before a spool is made. */
int tree_reserve_spool(push_registry *reg)
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

void tree_now_ts(int64_t *sec, uint32_t *nsec)
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

push_node *tree_find_node(const push_session *s, const char *path)
{
    if (!s->table_size)
        return NULL;
    for (push_node *n = s->table[path_hash(path) & (s->table_size - 1)]; n; n = n->hash_next)
        if (strcmp(n->path, path) == 0)
            return n;
    return NULL;
}

void tree_table_insert(push_session *s, push_node *n)
{
    push_node **slot = &s->table[path_hash(n->path) & (s->table_size - 1)];
    n->hash_next = *slot;
    *slot = n;
}

void tree_table_remove(push_session *s, push_node *n)
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
        tree_table_insert(s, n);
    free(old);
    return 0;
}

push_node *tree_parent_of(const push_session *s, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!path[0])
        return NULL;
    if (!slash)
        return tree_find_node(s, "");
    char parent[PATH_MAX];
    if ((size_t)(slash - path) >= sizeof parent)
        return NULL;
    snprintf(parent, sizeof parent, "%.*s", (int)(slash - path), path);
    return tree_find_node(s, parent);
}

int tree_parent_is_dir(const push_session *s, const char *path)
{
    push_node *p = tree_parent_of(s, path);
    return p && p->type == MEMBER_DIR;
}

/* The backup member a node becomes, under the given path. */
backup_writer_member tree_member_of(const push_node *n, const char *path)
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
push_node *tree_visible_node(const push_session *s, const char *path)
{
    if (s->state == SESSION_DONE && path[0] && strcmp(path, MANIFEST) != 0)
        return NULL;
    return tree_find_node(s, path);
}

/* Nothing in a push is writable by group or others: what they put there
 * would become part of the backup (with allow_other the kernel enforces the
 * mode shown, default_permissions being implied).  PostgreSQL never gives
 * its data directory's files or directories group or other write, so the
 * backup loses nothing. */
uint32_t tree_node_mode(mode_t mode)
{
    return mode & 07755;
}

push_node *tree_add_node(push_registry *reg, push_session *s, const char *path,
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
    n->mode = tree_node_mode(mode);
    n->uid = who ? who->uid : reg->uid;
    n->gid = who ? who->gid : reg->gid;
    tree_now_ts(&n->mtime_sec, &n->mtime_nsec);
    n->seq = s->next_seq++;
    n->parent = tree_parent_of(s, path);
    if (n->parent)
        n->parent->children++;
    n->prev = s->last;
    if (s->last)
        s->last->next = n;
    else
        s->first = n;
    s->last = n;
    s->node_count++;
    tree_table_insert(s, n);
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
void tree_account(push_session *s, push_node *n)
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
void tree_drop_spool(push_registry *reg, push_session *s, push_node *n)
{
    unspool(s, n);
    if (n->busy)
        return;
    doom_spool(reg, n->spool);
    n->spool = NULL;
}

/* Takes n out of the namespace.  Freed now if nothing uses it, else when
 * its last handle closes or its last request leaves. */
void tree_detach_node(push_registry *reg, push_session *s, push_node *n)
{
    tree_table_remove(s, n);
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

void tree_free_detached_if_idle(push_registry *reg, push_session *s, push_node *n)
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
push_session *tree_locate(push_registry *reg, const char *rel, const char **inner)
{
    const char *slash = strchr(rel, '/');
    size_t len = slash ? (size_t)(slash - rel) : strlen(rel);
    push_session *s = find_session(reg, rel, len);
    if (s)
        *inner = slash ? slash + 1 : "";
    return s;
}

int tree_receiving(const push_session *s)
{
    return s->state == SESSION_RECEIVING || s->state == SESSION_NAMED;
}

/* The latched error as the user sees it (common/err.h's one policy). */
int tree_latched(const push_session *s)
{
    return s->state == SESSION_FAILED ? walfs_err_user_code(s->error.code) : 0;
}

/* Latches err; the emitter removes what was uploaded (store work never
 * runs under reg->lock). */
void tree_fail(push_registry *reg, push_session *s, const walfs_err *err)
{
    if (s->state == SESSION_FAILED || s->state == SESSION_DONE)
        return;
    s->state = SESSION_FAILED;
    s->error = *err;
    s->label_pending = 0;
    log_error("base backup push into basebackups_005/%s failed: %s; nothing was published, "
              "and what was uploaded is being removed", s->dir, err->msg);
    for (push_node *n = s->first; n; n = n->next)
        tree_drop_spool(reg, s, n);
    s->spooled_bytes = 0;
    worker_wake_one(&reg->emitter);
    pthread_cond_broadcast(&reg->progress);
    pthread_cond_broadcast(&s->changed);
}

/* A request's failure latches only while the push is receiving: once a
 * rename has asked for completion, the emitter alone decides the outcome
 * (the sentinel may be stored already). */
void tree_fail_receiving(push_registry *reg, push_session *s, const walfs_err *err)
{
    if (tree_receiving(s))
        tree_fail(reg, s, err);
}

int tree_has_uploads(const push_session *s) { return s->writer || s->leased; }

void tree_session_free(push_registry *reg, push_session *s)
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
void tree_free_if_unused(push_registry *reg, push_session *s)
{
    if (!s->retired || s->refs > 0 || tree_has_uploads(s))
        return;
    unlink_session(&reg->retired, s);
    tree_session_free(reg, s);
}

void tree_retire(push_registry *reg, push_session *s)
{
    unlink_session(&reg->sessions, s);
    s->retired = 1;
    s->next = reg->retired;
    reg->retired = s;
    tree_free_if_unused(reg, s);
}

/* A request is about to use n's spool without reg->lock. */
void tree_pin(push_session *s, push_node *n)
{
    n->busy++;
    s->refs++;
}

void tree_unpin(push_registry *reg, push_session *s, push_node *n)
{
    n->busy--;
    s->refs--;
    if (n->busy == 0) {
        if (n->emitted || s->state == SESSION_FAILED)
            tree_drop_spool(reg, s, n);
        if (n->detached)
            tree_free_detached_if_idle(reg, s, n);
        worker_wake_one(&reg->emitter); /* it may be ready to emit now */
    }
    tree_free_if_unused(reg, s);
}

/* n is in the backup (or deliberately left out): its spool goes back to
 * the pool. */
void tree_mark_emitted(push_registry *reg, push_session *s, push_node *n)
{
    n->emitted = 1;
    tree_drop_spool(reg, s, n);
}

/* ---- spool sections: spool_lock held, reg->lock taken inside ---- */

/* Reads from n's spool (n pinned, spool_lock held, reg->lock not). */
int tree_read_spool(push_registry *reg, push_session *s, push_node *n, char *buf, size_t cap,
                      uint64_t off, size_t *len, walfs_err *err)
{
    int rc = n->spool ? spool_file_read(n->spool, buf, cap, off, len, err)
                      : walfs_err_set(err, -EIO, "already uploaded into the backup");
    pthread_mutex_lock(&reg->lock);
    tree_account(s, n); /* reading may make it plain bytes */
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

/* A file's content as the backup writer takes it: whatever is pending goes
 * to disk first (n pinned, spool_lock held). */
int tree_spool_data_of(push_registry *reg, push_session *s, push_node *n, spool_data *data,
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
    tree_account(s, n);
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
