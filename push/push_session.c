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
    int open_count;
    int emitted;                /* in the backup (or deliberately left out) */
    int emitting;               /* the emitter thread is reading it right now */
    int gap_waited_out;         /* a write ahead of the end waited in vain; the gap is open */
    uint64_t seq;               /* creation order: files are emitted in it */
    struct push_node *next;
} push_node;

typedef struct push_session {
    char *dir;                  /* name under basebackups_005 */
    push_node *nodes;
    uint64_t next_seq;
    uint64_t spooled_bytes;
    backup_writer *writer;
    char backup_name[64];
    char start_segment[25];
    uint64_t segment_size;
    int failed;
    walfs_err error;            /* latched: returned by every later close/fsync/rename */
    int completed;
    int completing;             /* the completing thread owns the writer */
    uint64_t emit_before;       /* closed files created before this seq are final */
    int emitting;               /* the emitter thread is using the writer */
    int leased;                 /* a lease object names this process */
    char pg_version[16];        /* PG_VERSION, kept when it goes by */
    unsigned char control[64];  /* the head of global/pg_control, kept likewise */
    int have_control;
    int open_handles;           /* push_handles pointing here */
    struct {                    /* how the spool fared, logged at completion */
        uint64_t compressed_files, compressed_bytes, records_bytes, plain_files, plain_bytes;
        unsigned waited_writes, stashed_writes, unpacked_files;
    } spool_stats;
    int retired;                /* out of the registry; freed with its last handle */
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
    pthread_mutex_t lock;       /* sessions and nodes; not held while the emitter uploads */
    pthread_cond_t work;        /* the emitter has files to add */
    pthread_cond_t progress;    /* the emitter finished one (spool space, idle writer) */
    pthread_cond_t appended;    /* a file grew: writes waiting for their turn may go */
    int waiting_writes;
    pthread_t emitter;
    int emitter_running, stopping;
    pthread_t cleanup;      /* push_cleanup_stale, once per mount */
    int cleanup_running;
    _Atomic int cleanup_stop; /* unmounting: the clean-up's requests stop at once */
    push_session *sessions;
    push_session *retired;      /* replaced or removed, with handles still open */
    spool_pool *spools;
};

/* ---- helpers ---- */

static void now_ts(int64_t *sec, uint32_t *nsec)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *sec = ts.tv_sec;
    *nsec = (uint32_t)ts.tv_nsec;
}

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

static push_node *find_node(push_session *s, const char *path)
{
    for (push_node *n = s->nodes; n; n = n->next)
        if (strcmp(n->path, path) == 0)
            return n;
    return NULL;
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
static push_node *visible_node(push_session *s, const char *path)
{
    if (s->completed && path[0] && strcmp(path, MANIFEST) != 0)
        return NULL;
    return find_node(s, path);
}

static int parent_is_dir(push_session *s, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return find_node(s, "") != NULL;
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%.*s", (int)(slash - path), path);
    push_node *p = find_node(s, parent);
    return p && p->type == MEMBER_DIR;
}

static void node_free(push_node *n)
{
    spool_file_free(n->spool);
    free(n->path);
    free(n->link_target);
    free(n);
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
    push_node *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->path = strdup(path);
    n->type = type;
    n->mode = node_mode(mode);
    n->uid = who ? who->uid : reg->uid;
    n->gid = who ? who->gid : reg->gid;
    now_ts(&n->mtime_sec, &n->mtime_nsec);
    n->seq = s->next_seq++;
    n->next = s->nodes;
    s->nodes = n;
    return n;
}

/* n's bytes leave the spool (packed, left out, removed or rewritten). */
static void unspool(push_session *s, push_node *n)
{
    s->spooled_bytes -= n->spooled < s->spooled_bytes ? n->spooled : s->spooled_bytes;
    n->spooled = 0;
}

/* After n's spool changed: its size and its share of the spool. */
static void account(push_session *s, push_node *n)
{
    unspool(s, n);
    n->size = spool_file_size(n->spool);
    n->spooled = spool_file_disk_bytes(n->spool);
    s->spooled_bytes += n->spooled;
}

static void drop_spool(push_session *s, push_node *n)
{
    unspool(s, n);
    spool_file_free(n->spool);
    n->spool = NULL;
}

static int truncate_spool(push_session *s, push_node *n, uint64_t size)
{
    walfs_err err;
    int rc = spool_file_truncate(n->spool, size, &err);
    account(s, n);
    if (rc)
        log_error("truncating basebackups_005/%s/%s: %s", s->dir, n->path, err.msg);
    return rc ? -EIO : 0;
}

/* Aborts the open upload, deletes what was uploaded and the lease. */
static void discard_uploads(push_registry *reg, push_session *s)
{
    if (s->writer) {
        backup_writer_abort(s->writer);
        s->writer = NULL;
    }
    if (s->leased) {
        push_lease_remove(reg->st, s->backup_name);
        s->leased = 0;
    }
}

static void wait_emitter_off(push_registry *reg, push_session *s)
{
    while (s->emitting)
        pthread_cond_wait(&reg->progress, &reg->lock);
}

static void fail(push_registry *reg, push_session *s, const walfs_err *err)
{
    if (s->failed)
        return;
    wait_emitter_off(reg, s);
    s->failed = 1;
    s->error = *err;
    log_error("base backup push into basebackups_005/%s failed: %s; nothing was published, "
              "and what was uploaded is being removed", s->dir, err->msg);
    discard_uploads(reg, s);
    for (push_node *n = s->nodes; n; n = n->next)
        drop_spool(s, n);
    s->spooled_bytes = 0;
}

static int latched(const push_session *s)
{
    if (!s->failed)
        return 0;
    return s->error.code == -EACCES || s->error.code == -ENOSPC || s->error.code == -EEXIST ||
                   s->error.code == -EFBIG
               ? s->error.code
               : -EIO;
}

static int read_spool(push_session *s, push_node *n, char *buf, size_t cap, uint64_t off,
                      size_t *len)
{
    walfs_err err;
    int rc = spool_file_read(n->spool, buf, cap, off, len, &err);
    account(s, n); /* reading may make it plain bytes */
    if (rc)
        log_error("read basebackups_005/%s/%s: %s", s->dir, n->path, err.msg);
    return rc;
}

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

/* ---- naming the backup from backup_label ---- */

static int name_from_label(push_registry *reg, push_session *s, push_node *label, walfs_err *err)
{
    char text[4096];
    size_t len;
    if (read_spool(s, label, text, sizeof text - 1, 0, &len) != 0)
        return walfs_err_set(err, -EIO, "could not read back backup_label from the spool");
    text[len] = '\0';
    pg_backup_label start;
    if (pg_backup_label_parse(text, &start) != 0)
        return walfs_err_set(err, -EINVAL, "backup_label has no readable 'START WAL LOCATION: "
                             "X/Y (file Z)' line; this is not a PostgreSQL base backup");
    s->segment_size = wal_segment_size_of(start.start_lsn, start.start_file);
    if (!s->segment_size)
        return walfs_err_set(err, -EINVAL, "backup_label: start location %s does not belong to "
                             "file %s", start.start_lsn_text, start.start_file);
    char offset[9];
    wal_offset_lpad(start.start_lsn % s->segment_size, offset);
    wale_backup_name(s->backup_name, sizeof s->backup_name, start.start_file, offset);
    memcpy(s->start_segment, start.start_file, 25);
    char sentinel[WALE_KEY_MAX];
    wale_sentinel_key(sentinel, sizeof sentinel, s->backup_name);
    store_stat st;
    walfs_err probe = {0};
    int rc = store_stat_key(reg->st, sentinel, &st, &probe);
    if (rc == 0)
        return walfs_err_set(err, -EEXIST, "a backup named %s already exists in the archive",
                             s->backup_name);
    if (rc != -ENOENT) {
        *err = probe;
        return rc;
    }
    rc = backup_writer_begin(reg->st, s->backup_name, &reg->settings.limits, &s->writer, err);
    if (!rc) {
        /* Lets the next mount clean up should this process die mid-push. */
        rc = push_lease_write(reg->st, s->backup_name, err);
        if (rc) {
            backup_writer_abort(s->writer);
            s->writer = NULL;
            return rc;
        }
        s->leased = 1;
        /* WAL-E's partition 0 starts with the data directory itself. */
        push_node *root = find_node(s, "");
        backup_writer_member m = member_of(root, "");
        rc = backup_writer_add(s->writer, &m, -1, err);
        if (!rc)
            root->emitted = 1;
    }
    if (!rc)
        log_info("pushing base backup %s from basebackups_005/%s", s->backup_name, s->dir);
    return rc;
}

/* ---- emitting members into the backup ---- */

/* n is in the backup (or deliberately left out): its spool goes back to
 * the pool. */
static void mark_emitted(push_session *s, push_node *n)
{
    n->emitted = 1;
    drop_spool(s, n);
}

/* A file's content as the backup writer takes it: whatever is pending goes
 * to disk first. */
static int spool_data_of(push_session *s, push_node *n, spool_data *data, walfs_err *err)
{
    int rc = spool_file_seal(n->spool, err);
    account(s, n);
    if (!rc)
        rc = spool_file_data(n->spool, data, err);
    if (rc)
        return walfs_err_prefix(err, "spooling %s: ", n->path);
    spool_file_stats fs = spool_file_get_stats(n->spool);
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
    return 0;
}

static int add_file(backup_writer *writer, const backup_writer_member *m, const spool_data *data,
                    walfs_err *err)
{
    return data->records ? backup_writer_add_records(writer, m, data->fd, data->len, err)
                         : backup_writer_add(writer, m, data->fd, err);
}

static int emit_file(push_session *s, push_node *n, walfs_err *err)
{
    backup_writer_member m = member_of(n, n->path);
    spool_data data;
    int rc = spool_data_of(s, n, &data, err);
    if (!rc)
        rc = add_file(s->writer, &m, &data, err);
    if (!rc)
        mark_emitted(s, n);
    return rc;
}

/* Whether the file is decided only at completion, or never goes in. */
static int deferred(const push_node *n) { return strncmp(n->path, "pg_wal/", 7) == 0; }

/* The next file the emitter may add, in creation order. */
static push_node *next_ready(push_session *s)
{
    push_node *best = NULL;
    for (push_node *n = s->nodes; n; n = n->next) {
        if (n->type != MEMBER_FILE || n->emitted || n->emitting || n->open_count ||
            n->seq >= s->emit_before || deferred(n))
            continue;
        if (excluded_file(n->path) || in_emptied_dir(n->path, 0)) {
            mark_emitted(s, n);
            continue;
        }
        if (!best || n->seq < best->seq)
            best = n;
    }
    return best;
}

/* Adds settled files to their backups while the writer goes on writing the
 * next ones, so reading, compressing and uploading overlap. */
static void *emitter_main(void *arg)
{
    push_registry *reg = arg;
    pthread_mutex_lock(&reg->lock);
    while (!reg->stopping) {
        push_session *s = NULL;
        push_node *n = NULL;
        for (s = reg->sessions; s; s = s->next) {
            if (!s->writer || s->failed || s->completing || s->completed)
                continue;
            if ((n = next_ready(s)) != NULL)
                break;
        }
        if (!n) {
            pthread_cond_broadcast(&reg->progress);
            pthread_cond_wait(&reg->work, &reg->lock);
            continue;
        }
        walfs_err err = {0};
        spool_data data;
        if (spool_data_of(s, n, &data, &err) != 0) {
            fail(reg, s, &err);
            continue;
        }
        n->emitting = 1;
        s->emitting = 1;
        /* n stays as it is while emitting: renames over it get EBUSY, and
         * removing it fails the push, which waits for this add to end. */
        backup_writer_member m = member_of(n, n->path);
        backup_writer *writer = s->writer;
        pthread_mutex_unlock(&reg->lock);
        int rc = add_file(writer, &m, &data, &err);
        pthread_mutex_lock(&reg->lock);
        n->emitting = 0;
        s->emitting = 0;
        if (rc)
            fail(reg, s, &err);
        else
            mark_emitted(s, n);
        pthread_cond_broadcast(&reg->progress);
    }
    pthread_mutex_unlock(&reg->lock);
    return NULL;
}

static int by_seq(const void *a, const void *b)
{
    const push_node *x = *(push_node *const *)a, *y = *(push_node *const *)b;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

typedef int (*node_filter)(const push_node *n);

/* The session's nodes that pass the filter, in creation order (malloc'd). */
static push_node **nodes_in_order(push_session *s, node_filter want, size_t *count,
                                  walfs_err *err)
{
    size_t total = 0;
    for (push_node *n = s->nodes; n; n = n->next)
        total++;
    push_node **order = malloc((total ? total : 1) * sizeof *order);
    if (!order) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    size_t k = 0;
    for (push_node *n = s->nodes; n; n = n->next)
        if (want(n))
            order[k++] = n;
    if (k > 1)
        qsort(order, k, sizeof *order, by_seq);
    *count = k;
    return order;
}

static int pending_file(const push_node *n) { return n->type == MEMBER_FILE && !n->emitted; }

static int pending_other(const push_node *n) { return n->type != MEMBER_FILE && !n->emitted; }

/* At completion (the emitter is off): every file the emitter has not
 * packed, in creation order, including pg_wal's, now that it is known
 * whether they are the backup's own streamed WAL. */
static int emit_remaining_files(push_registry *reg, push_session *s, int keep_wal,
                                walfs_err *err)
{
    if (!s->writer)
        return 0;
    size_t k;
    push_node **order = nodes_in_order(s, pending_file, &k, err);
    if (!order)
        return err->code;
    int rc = 0;
    for (size_t i = 0; i < k && !rc; i++) {
        push_node *n = order[i];
        if (excluded_file(n->path) || in_emptied_dir(n->path, keep_wal))
            mark_emitted(s, n);
        else
            rc = emit_file(s, n, err);
    }
    free(order);
    return rc;
}

static int check_spool_limit(push_registry *reg, push_session *s, walfs_err *err)
{
    if (s->spooled_bytes <= reg->settings.spool_max_bytes)
        return 0;
    return walfs_err_set(err, -ENOSPC,
                         "%" PRIu64 " bytes are waiting in the spool (limit %" PRIu64 ")%s",
                         s->spooled_bytes, reg->settings.spool_max_bytes,
                         s->writer ? "" : ": backup_label must be written before the rest of the "
                                          "data directory (pg_basebackup and rsync do; with cp "
                                          "-a, copy backup_label first)");
}

/* A new file is starting: everything closed before it is final now, and
 * goes to the emitter.  When the spool is full the writer waits for the
 * emitter to make room rather than failing. */
static void advance(push_registry *reg, push_session *s, uint64_t new_seq)
{
    if (s->failed || s->completed)
        return;
    if (new_seq > s->emit_before)
        s->emit_before = new_seq;
    pthread_cond_signal(&reg->work);
    while (!s->failed && s->writer && s->spooled_bytes > reg->settings.spool_max_bytes &&
           (s->emitting || next_ready(s)))
        pthread_cond_wait(&reg->progress, &reg->lock);
    walfs_err err = {0};
    if (!s->failed && check_spool_limit(reg, s, &err) != 0)
        fail(reg, s, &err);
}

/* ---- completion ---- */

static int stop_from_manifest(push_session *s, push_node *manifest, backup_writer_stop *stop,
                              walfs_err *err)
{
    if (manifest->size > SMALL_FILE_MAX * 8ull)
        return walfs_err_set(err, -EFBIG, "backup_manifest is implausibly large");
    char *text = malloc(manifest->size + 1);
    size_t len;
    if (!text || read_spool(s, manifest, text, manifest->size, 0, &len) != 0) {
        free(text);
        return walfs_err_set(err, -EIO, "could not read back backup_manifest from the spool");
    }
    text[len] = '\0';
    uint32_t timeline;
    uint64_t lsn;
    int ok = pg_backup_manifest_wal_end(text, &timeline, &lsn) == 0;
    free(text);
    if (!ok)
        return walfs_err_set(err, -EINVAL, "backup_manifest has no WAL-Ranges End-LSN; cannot "
                             "tell where the backup stops");
    pg_segment_name_of_lsn(timeline, lsn, s->segment_size, stop->stop_segment);
    wal_offset_lpad(lsn % s->segment_size, stop->stop_offset);
    return 0;
}

/* Without a manifest: the copied pg_control's latest checkpoint, which was
 * written during the backup, is where the backup is known to reach. */
static int stop_from_control(push_session *s, backup_writer_stop *stop, walfs_err *err)
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

static int emit_others(push_session *s, int keep_wal, walfs_err *err)
{
    /* Directories, symlinks and hard links last: their modes and times are
     * final only once everything inside them has been written. */
    size_t k;
    push_node **order = nodes_in_order(s, pending_other, &k, err);
    if (!order)
        return err->code;
    int rc = 0;
    for (size_t i = 0; i < k && !rc; i++) {
        push_node *n = order[i];
        if (excluded_file(n->path) || in_emptied_dir(n->path, keep_wal))
            continue;
        backup_writer_member m = member_of(n, n->path);
        rc = backup_writer_add(s->writer, &m, -1, err);
        if (!rc)
            n->emitted = 1;
    }
    free(order);
    return rc;
}

static int complete(push_registry *reg, push_session *s, int by_manifest)
{
    if (s->failed)
        return latched(s);
    if (s->completed)
        return 0;
    s->completing = 1;
    log_info("basebackups_005/%s: the copy is complete (%s); storing the last %" PRIu64
             " bytes and the sentinel", s->dir, by_manifest ? "backup_manifest" : "renamed",
             s->spooled_bytes);
    wait_emitter_off(reg, s);
    if (s->failed)
        return latched(s);
    walfs_err err = {0};
    int rc = 0;
    if (!s->writer)
        rc = walfs_err_set(&err, -EINVAL, "no backup_label was written: this is not a base "
                           "backup (copy the backup_label that pg_backup_stop() returned)");
    backup_writer_stop stop;
    memset(&stop, 0, sizeof stop);
    if (!rc)
        rc = by_manifest ? stop_from_manifest(s, find_node(s, MANIFEST), &stop, &err)
                         : stop_from_control(s, &stop, &err);
    /* pg_basebackup -X fetch/stream puts the backup's own WAL in pg_wal:
     * kept, so the backup restores alone.  Anything else in pg_wal (a copy
     * of a live server's) is left out, as WAL-E does. */
    int keep_wal = 0;
    for (push_node *n = s->nodes; n && by_manifest; n = n->next)
        if (n->type == MEMBER_FILE && strncmp(n->path, "pg_wal/", 7) == 0 &&
            !strchr(n->path + 7, '/'))
            keep_wal = 1;
    if (!rc)
        rc = emit_remaining_files(reg, s, keep_wal, &err);
    if (!rc)
        rc = emit_others(s, keep_wal, &err);
    if (rc) {
        fail(reg, s, &err);
        return latched(s);
    }
    char version[128];
    /* WAL-E stores SELECT version(); through a copy only PG_VERSION is known. */
    snprintf(version, sizeof version, "PostgreSQL %s",
             s->pg_version[0] ? s->pg_version : "(unknown version)");
    stop.pg_version = version;
    stop.base_prefix = "";
    rc = backup_writer_finish(s->writer, &stop, &err);
    s->writer = NULL;
    if (rc) {
        fail(reg, s, &err);
        return latched(s);
    }
    s->completed = 1;
    if (s->leased) {
        push_lease_remove(reg->st, s->backup_name);
        s->leased = 0;
    }
    for (push_node *n = s->nodes; n; n = n->next)
        mark_emitted(s, n);
    s->spooled_bytes = 0;
    log_info("base backup %s is complete: its sentinel is stored", s->backup_name);
    log_info("basebackups_005/%s: %" PRIu64 " files (%" PRIu64 " bytes) were compressed as they "
             "arrived, into %" PRIu64 " bytes of spool; %" PRIu64 " (%" PRIu64 " bytes) were "
             "spooled plain, %u of them after compressing had begun; %u writes waited for an "
             "earlier one, %u were held in memory",
             s->dir, s->spool_stats.compressed_files, s->spool_stats.compressed_bytes,
             s->spool_stats.records_bytes, s->spool_stats.plain_files, s->spool_stats.plain_bytes,
             s->spool_stats.unpacked_files, s->spool_stats.waited_writes,
             s->spool_stats.stashed_writes);
    return 0;
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

static void session_free(push_registry *reg, push_session *s)
{
    discard_uploads(reg, s);
    while (s->nodes) {
        push_node *next = s->nodes->next;
        node_free(s->nodes);
        s->nodes = next;
    }
    free(s->dir);
    free(s);
}

/* Takes s out of the registry's names; it lives on while handles use it. */
static void unlink_session(push_session **list, push_session *s)
{
    for (push_session **p = list; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            return;
        }
    }
}

static void retire(push_registry *reg, push_session *s)
{
    unlink_session(&reg->sessions, s);
    if (s->open_handles == 0) {
        session_free(reg, s);
        return;
    }
    s->retired = 1;
    s->next = reg->retired;
    reg->retired = s;
}

static void free_if_unused(push_registry *reg, push_session *s)
{
    if (!s->retired || s->open_handles > 0)
        return;
    unlink_session(&reg->retired, s);
    session_free(reg, s);
}

static push_session *new_session(push_registry *reg, const char *dir, mode_t mode,
                                 const push_caller *who)
{
    push_session *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return NULL;
    }
    if (!add_node(reg, s, "", MEMBER_DIR, mode, who)) {
        free(s->dir);
        free(s);
        return NULL;
    }
    s->next = reg->sessions;
    reg->sessions = s;
    log_info("basebackups_005/%s: receiving a base backup", dir);
    return s;
}

/* The session a write into rel goes to (*out NULL when there is none):
 * writing into the directory of a completed push starts a new push there.
 * 0 or -ENOMEM. */
static int locate_for_write(push_registry *reg, const char *rel, const push_caller *who,
                            push_session **out, const char **inner)
{
    push_session *s = locate(reg, rel, inner);
    *out = s;
    if (!s || !s->completed || !(*inner)[0])
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

void push_registry_free(push_registry *reg)
{
    if (!reg)
        return;
    /* The clean-up is best effort and starts again at the next mount. */
    reg->cleanup_stop = 1;
    if (reg->cleanup_running)
        pthread_join(reg->cleanup, NULL);
    pthread_mutex_lock(&reg->lock);
    reg->stopping = 1;
    pthread_cond_broadcast(&reg->work);
    pthread_mutex_unlock(&reg->lock);
    if (reg->emitter_running)
        pthread_join(reg->emitter, NULL);
    while (reg->sessions) {
        push_session *next = reg->sessions->next;
        if (!reg->sessions->completed && !reg->sessions->failed)
            log_warn("base backup push into basebackups_005/%s never completed; removing what "
                     "it uploaded", reg->sessions->dir);
        session_free(reg, reg->sessions);
        reg->sessions = next;
    }
    while (reg->retired) {
        push_session *next = reg->retired->next;
        session_free(reg, reg->retired);
        reg->retired = next;
    }
    spool_pool_free(reg->spools);
    pthread_cond_destroy(&reg->work);
    pthread_cond_destroy(&reg->progress);
    pthread_cond_destroy(&reg->appended);
    pthread_mutex_destroy(&reg->lock);
    free(reg->spool_dir);
    free(reg);
}

int push_is_session(push_registry *reg, const char *rel)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    int found = locate(reg, rel, &inner) != NULL;
    pthread_mutex_unlock(&reg->lock);
    return found;
}

int push_mkdir(push_registry *reg, const char *rel, mode_t mode, const push_caller *who)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    if (!rc && !s)
        rc = strchr(rel, '/') ? -ENOENT : new_session(reg, rel, mode, who) ? 0 : -ENOMEM;
    else if (!rc)
        rc = s->failed ? latched(s) : find_node(s, inner) ? -EEXIST
             : !parent_is_dir(s, inner) ? -ENOENT
             : add_node(reg, s, inner, MEMBER_DIR, mode, who) ? 0 : -ENOMEM;
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

static void fill_stat(const push_registry *reg, const push_node *n, struct stat *st)
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
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    if (n)
        fill_stat(reg, n, st);
    pthread_mutex_unlock(&reg->lock);
    return n ? 0 : -ENOENT;
}

int push_readdir(push_registry *reg, const char *rel, push_dir_filler fill, void *ctx)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *dir = s ? visible_node(s, inner) : NULL;
    int rc = !dir ? -ENOENT : dir->type != MEMBER_DIR ? -ENOTDIR : 0;
    if (!rc && !s->completed) {
        size_t plen = strlen(inner);
        for (push_node *n = s->nodes; n; n = n->next) {
            if (n->path[0] == '\0')
                continue;
            const char *child = n->path;
            if (plen) {
                if (strncmp(n->path, inner, plen) != 0 || n->path[plen] != '/')
                    continue;
                child = n->path + plen + 1;
            }
            if (strchr(child, '/'))
                continue;
            struct stat st;
            fill_stat(reg, n, &st);
            if (fill(ctx, child, &st))
                break;
        }
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

void push_list_sessions(push_registry *reg, push_dir_filler fill, void *ctx)
{
    pthread_mutex_lock(&reg->lock);
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->completed)
            continue; /* the backup shows under its own name now */
        struct stat st = {.st_mode = S_IFDIR | 0700};
        if (fill(ctx, s->dir, &st))
            break;
    }
    pthread_mutex_unlock(&reg->lock);
}

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
    s->open_handles++;
    return h;
}

int push_create(push_registry *reg, const char *rel, mode_t mode, const push_caller *who,
                void **handle)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    push_node *n = NULL;
    if (!rc)
        rc = !s || !inner[0] ? -ENOENT : s->failed ? latched(s) : s->completed ? -EROFS
             : !parent_is_dir(s, inner) ? -ENOENT : 0;
    if (!rc) {
        n = find_node(s, inner);
        if (n && (n->type != MEMBER_FILE || n->emitted || n->emitting))
            rc = n->type == MEMBER_DIR ? -EISDIR : n->emitting ? -EBUSY : -EEXIST;
    }
    if (!rc && !n) {
        n = add_node(reg, s, inner, MEMBER_FILE, mode, who);
        if (!n)
            rc = -ENOMEM;
    }
    if (!rc && !n->spool) {
        n->spool = spool_file_new(reg->spools);
        if (!n->spool) {
            rc = errno == ENOSPC ? -ENOSPC : -EIO;
            log_error("basebackups_005/%s: cannot create its spool file (check --cache-dir)",
                      rel);
        }
    } else if (!rc) {
        rc = truncate_spool(s, n, 0);
    }
    if (!rc) {
        advance(reg, s, n->seq);
        rc = latched(s);
    }
    if (!rc) {
        *handle = new_handle(s, n, 1);
        if (!*handle)
            rc = -ENOMEM;
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_open(push_registry *reg, const char *rel, int flags, const push_caller *who,
              void **handle)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    if (s && s->completed && inner[0] && (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
        /* Rewriting a name the kernel still remembers from the finished
         * push: a new push into the same directory. */
        pthread_mutex_unlock(&reg->lock);
        return push_create(reg, rel, 0600, who, handle);
    }
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = 0;
    if (!n)
        rc = -ENOENT;
    else if (n->type == MEMBER_DIR)
        rc = -EISDIR;
    else if (s->failed)
        rc = latched(s);
    if (!rc && (flags & O_TRUNC) && n->emitting)
        rc = -EBUSY;
    if (!rc && (flags & O_TRUNC) && !n->emitted && n->spool)
        rc = truncate_spool(s, n, 0);
    /* Opening a finished file read-write is how pg_basebackup fsyncs it:
     * allowed, but writing to it is not. */
    if (!rc) {
        *handle = new_handle(s, n, (flags & O_ACCMODE) != O_RDONLY && !n->emitted && !n->emitting);
        if (!*handle)
            rc = -ENOMEM;
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_read(push_registry *reg, void *handle, char *buf, size_t size, off_t off)
{
    push_handle *h = handle;
    pthread_mutex_lock(&reg->lock);
    int rc;
    if (!h->node->spool) {
        log_error("read basebackups_005/%s/%s: already uploaded into the backup; read it from "
                  "the finished backup's directory", h->session->dir, h->node->path);
        rc = -EIO;
    } else {
        size_t got = 0;
        rc = read_spool(h->session, h->node, buf, size, (uint64_t)off, &got) ? -EIO : (int)got;
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

/* The kernel writes a file back in 1 MiB requests that FUSE threads serve
 * in parallel, so a request may get here before the one in front of it.
 * It waits a moment for that one rather than being copied aside: the
 * spool then stays compressed without holding the data twice. */
static void wait_for_turn(push_registry *reg, push_session *s, push_node *n, uint64_t off)
{
    if (n->gap_waited_out || !n->spool || off <= spool_file_append_offset(n->spool))
        return;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_nsec += 50 * 1000 * 1000;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    reg->waiting_writes++;
    s->spool_stats.waited_writes++;
    while (!s->failed && n->spool && off > spool_file_append_offset(n->spool)) {
        if (pthread_cond_timedwait(&reg->appended, &reg->lock, &deadline) == ETIMEDOUT) {
            /* A writer that seeks ahead on purpose: never wait for it again. */
            n->gap_waited_out = 1;
            break;
        }
    }
    reg->waiting_writes--;
}

int push_write(push_registry *reg, void *handle, const char *buf, size_t size, off_t off)
{
    push_handle *h = handle;
    pthread_mutex_lock(&reg->lock);
    push_session *s = h->session;
    push_node *n = h->node;
    if (h->writable)
        wait_for_turn(reg, s, n, (uint64_t)off);
    int rc = latched(s);
    if (!rc && (!h->writable || !n->spool || n->emitted))
        rc = -EBADF;
    if (!rc) {
        walfs_err err;
        if (spool_file_write(n->spool, buf, size, (uint64_t)off, &err) != 0) {
            /* Latched: with the kernel's writeback cache the writer may only
             * hear of it at close, and a file with a hole must never be
             * packed, whatever the writer does next. */
            walfs_err why;
            walfs_err_set(&why, err.code, "spooling %s failed: %s (check the space in the cache "
                          "directory, --cache-dir)", n->path, err.msg);
            fail(reg, s, &why);
            rc = latched(s);
        } else {
            account(s, n);
            now_ts(&n->mtime_sec, &n->mtime_nsec);
            /* The gap filled after all: a slow writer, not one that seeks
             * ahead, so later writes may wait for their turn again. */
            if (n->gap_waited_out && spool_file_append_offset(n->spool) == n->size)
                n->gap_waited_out = 0;
            if (reg->waiting_writes)
                pthread_cond_broadcast(&reg->appended);
        }
    }
    pthread_mutex_unlock(&reg->lock);
    return rc ? rc : (int)size;
}

int push_flush(push_registry *reg, void *handle)
{
    push_handle *h = handle;
    pthread_mutex_lock(&reg->lock);
    int rc = latched(h->session);
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

/* A file is closed under its final name (rsync closes a temporary name
 * and renames it after): pick up what completion will need from it. */
static void file_settled(push_registry *reg, push_session *s, push_node *n)
{
    if (!n->spool || n->type != MEMBER_FILE || s->failed)
        return;
    /* The pending block goes to disk now: its memory is for the next file. */
    walfs_err err = {0};
    int rc = spool_file_seal(n->spool, &err);
    account(s, n);
    if (rc) {
        walfs_err_prefix(&err, "spooling %s failed: ", n->path);
        fail(reg, s, &err);
        return;
    }
    if (strcmp(n->path, "PG_VERSION") == 0) {
        size_t len = 0;
        if (read_spool(s, n, s->pg_version, sizeof s->pg_version - 1, 0, &len) == 0) {
            s->pg_version[len] = '\0';
            s->pg_version[strcspn(s->pg_version, "\n")] = '\0';
        }
    } else if (strcmp(n->path, CONTROL) == 0) {
        size_t len = 0;
        s->have_control = read_spool(s, n, (char *)s->control, sizeof s->control, 0, &len) == 0 &&
                          len >= 52;
    } else if (strcmp(n->path, LABEL) == 0 && !s->writer) {
        /* The label names the backup: from here on, partitions stream out. */
        if (name_from_label(reg, s, n, &err) != 0)
            fail(reg, s, &err);
    }
}

void push_release(push_registry *reg, void *handle)
{
    push_handle *h = handle;
    pthread_mutex_lock(&reg->lock);
    push_session *s = h->session;
    push_node *n = h->node;
    if (n->open_count > 0)
        n->open_count--;
    if (n->open_count == 0 && !s->retired)
        file_settled(reg, s, n);
    s->open_handles--;
    free_if_unused(reg, s);
    pthread_mutex_unlock(&reg->lock);
    free(h);
}

int push_truncate(push_registry *reg, const char *rel, void *handle, off_t size)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = handle ? ((push_handle *)handle)->node : s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_FILE ? -EISDIR
             : (n->emitted || n->emitting || !n->spool) ? -EROFS : 0;
    if (!rc)
        rc = truncate_spool(handle ? ((push_handle *)handle)->session : s, n, (uint64_t)size);
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

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
    pthread_mutex_lock(&reg->lock);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted)
        n->mode = node_mode(mode);
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_chown(push_registry *reg, const char *rel, uid_t uid, gid_t gid)
{
    pthread_mutex_lock(&reg->lock);
    push_node *n;
    int rc = change_node(reg, rel, &n);
    if (!rc && !n->emitted) {
        if (uid != (uid_t)-1)
            n->uid = uid;
        if (gid != (gid_t)-1)
            n->gid = gid;
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_utimens(push_registry *reg, const char *rel, const struct timespec tv[2])
{
    pthread_mutex_lock(&reg->lock);
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
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_symlink(push_registry *reg, const char *target, const char *rel,
                 const push_caller *who)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s;
    int rc = locate_for_write(reg, rel, who, &s, &inner);
    if (!rc)
        rc = !s || !inner[0] ? -ENOENT : s->failed ? latched(s) : s->completed ? -EROFS
             : find_node(s, inner) ? -EEXIST : !parent_is_dir(s, inner) ? -ENOENT : 0;
    if (!rc) {
        push_node *n = add_node(reg, s, inner, MEMBER_SYMLINK, 0777, who);
        if (!n || !(n->link_target = strdup(target)))
            rc = -ENOMEM;
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_link(push_registry *reg, const char *from_rel, const char *to_rel,
              const push_caller *who)
{
    pthread_mutex_lock(&reg->lock);
    const char *from_inner, *to_inner;
    push_session *s = locate(reg, from_rel, &from_inner);
    push_session *t = locate(reg, to_rel, &to_inner);
    push_node *target = s ? find_node(s, from_inner) : NULL;
    int rc = !target || s != t ? -ENOENT : target->type != MEMBER_FILE ? -EPERM
             : s->failed ? latched(s) : find_node(s, to_inner) ? -EEXIST : 0;
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
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

static int rename_nodes(push_session *s, const char *from, const char *to)
{
    size_t flen = strlen(from);
    for (push_node *n = s->nodes; n; n = n->next) {
        if (strcmp(n->path, from) != 0 && !(strncmp(n->path, from, flen) == 0 && n->path[flen] == '/'))
            continue;
        if ((n->emitted || n->emitting) && n->type == MEMBER_FILE)
            return -EBUSY;
    }
    for (push_node *n = s->nodes; n; n = n->next) {
        if (strcmp(n->path, from) != 0 && !(strncmp(n->path, from, flen) == 0 && n->path[flen] == '/'))
            continue;
        char *p = NULL;
        if (asprintf(&p, "%s%s", to, n->path + flen) < 0)
            return -ENOMEM;
        free(n->path);
        n->path = p;
    }
    return 0;
}

int push_rename(push_registry *reg, const char *from_rel, const char *to_rel, int *completed)
{
    *completed = 0;
    pthread_mutex_lock(&reg->lock);
    const char *from_inner, *to_inner;
    push_session *s = locate(reg, from_rel, &from_inner);
    int rc = 0;
    if (!s) {
        rc = -ENOENT;
    } else if (!from_inner[0]) {
        /* mv incoming done: the cp -a / rsync -a way to say "complete". */
        int was_completed = s->completed;
        rc = complete(reg, s, 0);
        *completed = !rc && !was_completed;
        const char *to_slash = strchr(to_rel, '/');
        if (!rc && !to_slash) {
            char *renamed = strdup(to_rel);
            if (renamed) {
                free(s->dir);
                s->dir = renamed;
            }
        }
    } else {
        push_session *t = locate(reg, to_rel, &to_inner);
        if (!visible_node(s, from_inner)) {
            rc = -ENOENT;
        } else if (t != s) {
            rc = -EXDEV;
        } else if (s->failed) {
            rc = latched(s);
        } else {
            push_node *existing = find_node(s, to_inner);
            if (existing && existing->emitting)
                rc = -EBUSY;
            else if (existing && existing->type != MEMBER_DIR && !existing->emitted) {
                /* rename over a file replaces it */
                for (push_node **p = &s->nodes; *p; p = &(*p)->next) {
                    if (*p == existing) {
                        *p = existing->next;
                        unspool(s, existing);
                        node_free(existing);
                        break;
                    }
                }
            }
            if (!rc)
                rc = rename_nodes(s, from_inner, to_inner);
            push_node *moved = rc ? NULL : find_node(s, to_inner);
            if (moved && moved->open_count == 0)
                file_settled(reg, s, moved);
            if (!rc && strcmp(from_inner, MANIFEST_TMP) == 0 && strcmp(to_inner, MANIFEST) == 0) {
                rc = complete(reg, s, 1);
                *completed = !rc;
            }
            if (!rc)
                rc = latched(s);
        }
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_readlink(push_registry *reg, const char *rel, char *buf, size_t size)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_SYMLINK ? -EINVAL : 0;
    if (!rc)
        snprintf(buf, size, "%s", n->link_target);
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

static void drop_session(push_registry *reg, push_session *s)
{
    wait_emitter_off(reg, s);
    if (!s->completed && !s->failed)
        log_warn("base backup push into basebackups_005/%s abandoned; removing what it uploaded",
                 s->dir);
    discard_uploads(reg, s); /* now, not when the last open handle goes */
    retire(reg, s);
}

int push_unlink(push_registry *reg, const char *rel)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type == MEMBER_DIR ? -EISDIR : n->open_count ? -EBUSY : 0;
    if (!rc && (n->emitted || n->emitting) && !s->completed && !s->failed) {
        /* Already packed into an uploaded partition: removing it can only
         * mean the push is being abandoned (pg_basebackup cleans up with
         * rm -rf when it fails), so abandon it now and remove the uploads. */
        walfs_err err;
        walfs_err_set(&err, -ECANCELED, "%s was removed after it was packed into the backup; "
                      "the push is abandoned", n->path);
        fail(reg, s, &err);
    }
    if (!rc) {
        for (push_node **p = &s->nodes; *p; p = &(*p)->next) {
            if (*p == n) {
                *p = n->next;
                break;
            }
        }
        if (!n->emitted)
            unspool(s, n);
        node_free(n);
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}

int push_rmdir(push_registry *reg, const char *rel)
{
    pthread_mutex_lock(&reg->lock);
    const char *inner;
    push_session *s = locate(reg, rel, &inner);
    push_node *n = s ? visible_node(s, inner) : NULL;
    int rc = !n ? -ENOENT : n->type != MEMBER_DIR ? -ENOTDIR : 0;
    if (!rc && !s->completed) { /* a completed push shows empty */
        size_t plen = strlen(inner);
        for (push_node *c = s->nodes; c && !rc; c = c->next)
            if (c != n && (plen == 0 || (strncmp(c->path, inner, plen) == 0 && c->path[plen] == '/')))
                rc = -ENOTEMPTY;
    }
    if (!rc) {
        if (!inner[0]) {
            drop_session(reg, s);
        } else {
            for (push_node **p = &s->nodes; *p; p = &(*p)->next) {
                if (*p == n) {
                    *p = n->next;
                    break;
                }
            }
            node_free(n);
        }
    }
    pthread_mutex_unlock(&reg->lock);
    return rc;
}
