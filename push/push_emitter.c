/* The emitter: the one thread that talks to the store for pushes.  See
 * push/push_tree.h for the locking. */
#include "push/push_tree.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "pg/backup_label.h"
#include "pg/backup_manifest.h"
#include "pg/lsn.h"
#include "pg/pg_control.h"
#include "pg/wal_file.h"
#include "push/push_cleanup.h"
#include "wale/layout.h"

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
    c->m = tree_member_of(n, c->path);
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
    push_node *label = tree_find_node(s, LABEL);
    push_node *root = tree_find_node(s, "");
    s->label_pending = 0;
    if (!label || !label->spool || !root || s->writer)
        return;
    member_copy root_copy;
    walfs_err err = {0};
    if (copy_member(root, &root_copy) != 0) {
        walfs_err_set(&err, -ENOMEM, "out of memory");
        tree_fail(reg, s, &err);
        return;
    }
    root_copy.m.path = "";
    tree_pin(s, label);
    pthread_mutex_unlock(&reg->lock);

    char text[4096];
    size_t len = 0;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = tree_read_spool(reg, s, label, text, sizeof text - 1, 0, &len, &err);
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
        tree_fail(reg, s, &err);
    }
    tree_unpin(reg, s, label);
}

/* The next file the emitter may add, in creation order. */
push_node *emitter_next_ready(push_registry *reg, push_session *s)
{
    for (push_node *n = s->first; n; n = n->next) {
        if (n->seq >= s->emit_before)
            break;
        if (n->type != MEMBER_FILE || n->emitted || n->emitting || n->open_count || n->busy ||
            !n->spool || deferred(n))
            continue;
        if (left_out(n, 0)) {
            tree_mark_emitted(reg, s, n);
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
        tree_fail(reg, s, &err);
        return;
    }
    /* n stays as it is while emitting: renames over it get EBUSY, and
     * removing it fails the push. */
    n->emitting = 1;
    tree_pin(s, n);
    backup_writer *writer = s->writer;
    pthread_mutex_unlock(&reg->lock);
    spool_data data;
    pthread_mutex_lock(&reg->spool_lock);
    int rc = tree_spool_data_of(reg, s, n, &data, &err);
    if (!rc)
        c.m.size = spool_file_size(n->spool);
    pthread_mutex_unlock(&reg->spool_lock);
    if (!rc)
        rc = add_file(writer, &c.m, &data, &err);
    free_member(&c);
    pthread_mutex_lock(&reg->lock);
    n->emitting = 0;
    if (rc)
        tree_fail(reg, s, &err);
    else
        tree_mark_emitted(reg, s, n);
    tree_unpin(reg, s, n);
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
    int rc = !text ? -ENOMEM : tree_read_spool(reg, s, manifest, text, size, 0, &len, &why);
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
            tree_pin(s, n);
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
        int rc = tree_spool_data_of(reg, s, c->node, &data, err);
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
        tree_fail(reg, s, &err);
        return;
    }
    backup_writer_stop stop;
    memset(&stop, 0, sizeof stop);
    push_node *manifest = by_manifest ? tree_find_node(s, MANIFEST) : NULL;
    if (by_manifest && !manifest) {
        walfs_err_set(&err, -EIO, "backup_manifest vanished before completion");
        tree_fail(reg, s, &err);
        return;
    }
    if (!by_manifest && stop_from_control(s, &stop, &err) != 0) {
        tree_fail(reg, s, &err);
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
        tree_fail(reg, s, &err);
        return;
    }
    if (manifest)
        tree_pin(s, manifest);
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
            tree_mark_emitted(reg, s, n);
        s->spooled_bytes = 0;
        log_completed(s);
        pthread_cond_broadcast(&s->changed);
    } else {
        tree_fail(reg, s, &err);
    }
    for (size_t i = 0; i < count; i++) {
        free_member(&plan[i]);
        tree_unpin(reg, s, plan[i].node);
    }
    free(plan);
    if (manifest)
        tree_unpin(reg, s, manifest);
}

/* The job the emitter does next, most urgent first: removing uploads
 * (before a new push of the same name may begin), naming, adding a settled
 * file, completing. */
typedef enum job_kind { JOB_NONE, JOB_DISCARD, JOB_NAME, JOB_EMIT, JOB_COMPLETE } job_kind;

static job_kind next_job(push_registry *reg, push_session **out, push_node **node)
{
    for (int retired = 1; retired >= 0; retired--)
        for (push_session *s = retired ? reg->retired : reg->sessions; s; s = s->next)
            if ((s->state == SESSION_FAILED || s->retired) && tree_has_uploads(s)) {
                *out = s;
                return JOB_DISCARD;
            }
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->label_pending && (tree_receiving(s) || s->state == SESSION_COMPLETING)) {
            *out = s;
            return JOB_NAME;
        }
    }
    for (push_session *s = reg->sessions; s; s = s->next) {
        if (s->state == SESSION_NAMED && (*node = emitter_next_ready(reg, s)) != NULL) {
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

void *push_emitter_main(void *arg)
{
    push_registry *reg = arg;
    tree_lock(reg);
    while (!worker_stopping(&reg->emitter)) {
        push_session *s = NULL;
        push_node *n = NULL;
        job_kind job = next_job(reg, &s, &n);
        if (job == JOB_NONE) {
            pthread_cond_broadcast(&reg->progress);
            if (reg->n_doomed) {
                tree_unlock(reg);
                tree_lock(reg);
                continue;
            }
            worker_wait(&reg->emitter);
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
        tree_free_if_unused(reg, s);
        pthread_cond_broadcast(&reg->progress);
        if (reg->n_doomed) {
            tree_unlock(reg);
            tree_lock(reg);
        }
    }
    pthread_mutex_unlock(&reg->lock);
    return NULL;
}
