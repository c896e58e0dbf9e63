#include "backup/backup_catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/private_dir.h"
#include "wale/layout.h"
#include "wale/sentinel.h"

#define MAX_LOADED 16
#define LISTING_TTL_SECONDS 1
/* A failed build is retried when the partitions change, or after this
 * long (the failure may have been the network's, not the backup's). */
#define FAILED_RETRY_SECONDS 600
#define MAX_FAILED 16
#define MAX_BUILDING 8
#define MAX_DISTRUSTED 16

typedef struct loaded_index {
    backup_index *idx;
    int refs;
    unsigned long last_used;
    int built;          /* read from the partitions here, not from a cache or the bucket */
    int stale;          /* found to disagree with a partition: never handed out again */
} loaded_index;

/* A build that failed, and the partitions it failed on. */
typedef struct failed_build {
    char name[64];
    unsigned char sig[32];  /* sha256 of the partitions' keys, sizes and ETags */
    time_t when;
    walfs_err err;
} failed_build;

#define MAX_KEEPERS 4

struct backup_catalog {
    store *st;
    char *index_dir;
    /* Guards everything below; never held across network I/O: a thread
     * obtaining an index registers it in building[] and works unlocked,
     * and others wanting the same backup wait on build_done. */
    pthread_mutex_t lock;
    pthread_cond_t build_done;
    pthread_cond_t listing_done;
    int listing_busy;           /* a thread is listing the backups */
    backup_entry *listing;
    size_t n_listing;
    int latest;
    time_t listed_at;
    loaded_index loaded[MAX_LOADED];
    unsigned long use_clock;
    char building[MAX_BUILDING][64];
    failed_build failed[MAX_FAILED];
    /* Backups whose cached and stored indexes were caught disagreeing
     * with a partition: the next load builds from the partitions. */
    char distrusted[MAX_DISTRUSTED][64];
    int next_distrusted;
    /* Backups whose loaded index was caught lying in this mount, kept after
     * the rebuild: the kernel may still hold attributes it gave. */
    char lied[MAX_DISTRUSTED][64];
    int next_lied;
    /* Threads storing freshly built indexes (locally and in the bucket),
     * off the path of the listing that built them; joined at free. */
    pthread_t keepers[MAX_KEEPERS];
    int n_keepers;
};

backup_catalog *backup_catalog_new(store *st, const char *cache_dir, walfs_err *err)
{
    backup_catalog *cat = calloc(1, sizeof *cat);
    if (!cat) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    cat->st = st;
    if (asprintf(&cat->index_dir, "%s/index", cache_dir) < 0) {
        free(cat);
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    if (private_dir_make(cat->index_dir, err)) {
        free(cat->index_dir);
        free(cat);
        return NULL;
    }
    cat->latest = -1;
    pthread_mutex_init(&cat->lock, NULL);
    pthread_cond_init(&cat->build_done, NULL);
    pthread_cond_init(&cat->listing_done, NULL);
    return cat;
}

void backup_catalog_free(backup_catalog *cat)
{
    if (!cat)
        return;
    for (int i = 0; i < cat->n_keepers; i++)
        pthread_join(cat->keepers[i], NULL);
    for (int i = 0; i < MAX_LOADED; i++)
        backup_index_free(cat->loaded[i].idx);
    free(cat->listing);
    free(cat->index_dir);
    pthread_mutex_destroy(&cat->lock);
    pthread_cond_destroy(&cat->build_done);
    pthread_cond_destroy(&cat->listing_done);
    free(cat);
}

typedef struct listing_builder {
    backup_entry *items;
    size_t n, cap;
} listing_builder;

static int collect_sentinel(void *ctx, const store_entry *e)
{
    listing_builder *b = ctx;
    size_t len = e->is_dir ? 0 : wale_sentinel_backup_len(e->name);
    if (!len)
        return 0;
    if (!wale_is_backup_name(e->name, len))
        return 0; /* WAL-G or foreign names: not a WAL-E backup walfs can serve */
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        backup_entry *grown = realloc(b->items, cap * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        b->items = grown;
        b->cap = cap;
    }
    backup_entry *be = &b->items[b->n++];
    memset(be, 0, sizeof *be);
    memcpy(be->name, e->name, len);
    be->sentinel_mtime = e->mtime;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const backup_entry *)a)->name, ((const backup_entry *)b)->name);
}

/* Lists with cat->lock released (others wait on listing_done for this
 * one), then installs the result under it. */
static int refresh_listing(backup_catalog *cat, walfs_err *err)
{
    listing_builder b = {0};
    cat->listing_busy = 1;
    pthread_mutex_unlock(&cat->lock);
    int rc = store_list(cat->st, wale_backups_prefix(), collect_sentinel, &b, err);
    pthread_mutex_lock(&cat->lock);
    cat->listing_busy = 0;
    pthread_cond_broadcast(&cat->listing_done);
    if (rc) {
        free(b.items);
        return rc == -ENOMEM ? walfs_err_set(err, rc, "out of memory listing backups") : rc;
    }
    if (b.n > 1)
        qsort(b.items, b.n, sizeof *b.items, by_name);
    /* LATEST: newest sentinel; on a tie the later name, as WAL-E's stable
     * sort over key order picks it. */
    int latest = -1;
    for (size_t i = 0; i < b.n; i++)
        if (latest < 0 || b.items[i].sentinel_mtime >= b.items[latest].sentinel_mtime)
            latest = (int)i;
    free(cat->listing);
    cat->listing = b.items;
    cat->n_listing = b.n;
    cat->latest = latest;
    cat->listed_at = time(NULL);
    return 0;
}

int backup_catalog_list(backup_catalog *cat, backup_entry **out, size_t *n, int *latest,
                        walfs_err *err)
{
    pthread_mutex_lock(&cat->lock);
    int rc = 0;
    while (cat->listing_busy && (!cat->listing || time(NULL) - cat->listed_at >= LISTING_TTL_SECONDS))
        pthread_cond_wait(&cat->listing_done, &cat->lock);
    if (!cat->listing || time(NULL) - cat->listed_at >= LISTING_TTL_SECONDS)
        rc = refresh_listing(cat, err);
    if (!rc) {
        *out = malloc((cat->n_listing ? cat->n_listing : 1) * sizeof **out);
        if (!*out) {
            rc = walfs_err_set(err, -ENOMEM, "out of memory");
        } else {
            if (cat->n_listing)
                memcpy(*out, cat->listing, cat->n_listing * sizeof **out);
            *n = cat->n_listing;
            *latest = cat->latest;
        }
    }
    pthread_mutex_unlock(&cat->lock);
    return rc;
}

int backup_catalog_find(backup_catalog *cat, const char *name, backup_entry *out, walfs_err *err)
{
    if (!wale_is_backup_name(name, strlen(name)))
        return -ENOENT;
    backup_entry *list;
    size_t n;
    int latest;
    int rc = backup_catalog_list(cat, &list, &n, &latest, err);
    if (rc)
        return rc;
    backup_entry key;
    memset(&key, 0, sizeof key);
    snprintf(key.name, sizeof key.name, "%s", name);
    backup_entry *hit = bsearch(&key, list, n, sizeof *list, by_name);
    if (hit)
        *out = *hit;
    free(list);
    return hit ? 0 : -ENOENT;
}

/* Fetches a small object whole (sentinels, version text, indexes are
 * bounded by max, so a hostile object cannot exhaust memory). */
static int fetch_object(store *st, const char *key, size_t max, walfs_buf *out, walfs_err *err)
{
    *out = (walfs_buf){.max = max};
    int rc = store_get(st, key, 0, 0, buf_sink, out, err);
    if (rc == -EFBIG)
        rc = walfs_err_set(err, -EIO, "%s is larger than %zu bytes; it is not what walfs wrote",
                           key, max);
    else if (rc == -ENOMEM)
        rc = walfs_err_set(err, -ENOMEM, "out of memory reading %s", key);
    if (rc)
        buf_free(out);
    return rc;
}

int backup_catalog_details(backup_catalog *cat, const char *name, backup_details *out,
                           walfs_err *err)
{
    backup_entry entry;
    int rc = backup_catalog_find(cat, name, &entry, err);
    if (rc)
        return rc;
    memset(out, 0, sizeof *out);
    memcpy(out->start_segment, name + 5, 24);
    memcpy(out->start_offset, name + 30, 8);
    out->expanded_size_bytes = -1;
    out->sentinel_mtime = entry.sentinel_mtime;
    char key[WALE_KEY_MAX];
    wale_sentinel_key(key, sizeof key, name);
    walfs_buf buf;
    rc = fetch_object(cat->st, key, 64 * 1024, &buf, err);
    if (rc)
        return rc;
    _Static_assert(sizeof out->stop_segment == sizeof ((wale_sentinel *)0)->stop_segment &&
                   sizeof out->stop_offset == sizeof ((wale_sentinel *)0)->stop_offset,
                   "backup_details holds what the sentinel gives");
    wale_sentinel sentinel = {.expanded_size_bytes = -1};
    rc = wale_sentinel_parse(buf.data, buf.len, &sentinel);
    buf_free(&buf);
    memcpy(out->stop_segment, sentinel.stop_segment, sizeof out->stop_segment);
    memcpy(out->stop_offset, sentinel.stop_offset, sizeof out->stop_offset);
    out->expanded_size_bytes = sentinel.expanded_size_bytes;
    if (rc < 0)
        return walfs_err_set(err, -EIO, "sentinel %s is not a JSON object; the backup's "
                             "metadata is damaged", key);
    if (rc > 0)
        log_warn("sentinel %s: expanded_size_bytes is out of range; leaving it blank", key);

    wale_extended_version_key(key, sizeof key, name);
    walfs_err verr = {0};
    if (fetch_object(cat->st, key, sizeof out->pg_version - 1, &buf, &verr) == 0) {
        size_t n = buf.len;
        while (n > 0 && (buf.data[n - 1] == '\n' || buf.data[n - 1] == '\r'))
            n--;
        memcpy(out->pg_version, buf.data, n);
        out->pg_version[n] = '\0';
        buf_free(&buf);
    }
    return 0;
}

/* ---- indexes ---- */

static void local_index_path(const backup_catalog *cat, const char *name, char *out, size_t len)
{
    /* One cache directory may serve several archives: key by store URL too. */
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    const char *url = store_url(cat->st);
    EVP_Digest(url, strlen(url), digest, &dlen, EVP_sha256(), NULL);
    char tag[13];
    hex_encode(digest, 6, tag);
    snprintf(out, len, "%s/%s-%s.json", cat->index_dir, name, tag);
}

static int read_local_file(const char *path, size_t max, walfs_buf *out)
{
    *out = (walfs_buf){0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size < 0) {
        close(fd);
        return -EIO;
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return -EFBIG;
    }
    if (buf_reserve(out, (size_t)sb.st_size) != 0) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, out->data + got, (size_t)sb.st_size - got);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    out->len = got;
    out->data[got] = '\0';
    return 0;
}

static void write_local_file(const char *path, const char *data, size_t len)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    int ok = done == len && close(fd) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        log_warn("could not cache the index at %s; it will be fetched again next mount", path);
    }
}

/* An index is trusted only if it parses, passes its own checksum, and
 * describes exactly the partitions the store has now. */
static backup_index *load_candidate(const char *what, const char *name, const walfs_buf *buf,
                                    const backup_partition_listing *parts, size_t n_parts)
{
    backup_index *idx = NULL;
    walfs_err err = {0};
    int rc = backup_index_from_json(buf->data, buf->len, &idx, &err);
    if (rc == -ESTALE) {
        log_info("%s index of %s is from an older walfs (%s); rebuilding it", what, name, err.msg);
        return NULL;
    }
    if (rc != 0) {
        log_warn("%s index of %s is unusable (%s); rebuilding it", what, name, err.msg);
        return NULL;
    }
    if (strcmp(idx->backup_name, name) != 0 || !backup_index_matches(idx, parts, n_parts)) {
        log_warn("%s index of %s does not match the backup's partitions; rebuilding it", what,
                 name);
        backup_index_free(idx);
        return NULL;
    }
    /* A hard link's target is an index into the members that no tar header
     * vouches for, so a forged one could serve any file under any name.
     * PostgreSQL base backups (pg_basebackup, WAL-E) hold no hard links, so
     * a loaded index with one is rebuilt rather than checked.  The index
     * built then is still stored (and cached), but is never trusted on load:
     * a backup that really has hard links is indexed on every mount. */
    for (size_t i = 0; i < idx->n_members; i++) {
        if (idx->members[i].type == MEMBER_HARDLINK) {
            log_info("%s index of %s lists hard links, which a base backup does not have and "
                     "which no tar header vouches for; rebuilding it from the partitions",
                     what, name);
            backup_index_free(idx);
            return NULL;
        }
    }
    return idx;
}

static void partitions_sig(const backup_partition_listing *parts, size_t n, unsigned char sig[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int len = 0;
    memset(sig, 0, 32);
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char size[32];
        snprintf(size, sizeof size, "%llu", (unsigned long long)parts[i].size);
        EVP_DigestUpdate(ctx, parts[i].key, strlen(parts[i].key) + 1);
        EVP_DigestUpdate(ctx, size, strlen(size) + 1);
        EVP_DigestUpdate(ctx, parts[i].etag, strlen(parts[i].etag) + 1);
    }
    EVP_DigestFinal_ex(ctx, sig, &len);
    EVP_MD_CTX_free(ctx);
}

/* With cat->lock held. */
static failed_build *find_failed(backup_catalog *cat, const char *name)
{
    for (int i = 0; i < MAX_FAILED; i++)
        if (cat->failed[i].name[0] && strcmp(cat->failed[i].name, name) == 0)
            return &cat->failed[i];
    return NULL;
}

/* Position of name in a table of backup names ("" finds a free entry). */
static int find_name(char (*names)[64], int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

/* With cat->lock held. */
static int find_distrusted(backup_catalog *cat, const char *name)
{
    return find_name(cat->distrusted, MAX_DISTRUSTED, name);
}

/* Remembers (or, with err NULL, forgets) a failed build of name. */
static void remember_failure(backup_catalog *cat, const char *name, const unsigned char sig[32],
                             const walfs_err *err)
{
    pthread_mutex_lock(&cat->lock);
    failed_build *f = find_failed(cat, name);
    if (!f && err) {
        f = &cat->failed[0];
        for (int i = 0; i < MAX_FAILED; i++) {
            if (!cat->failed[i].name[0]) {
                f = &cat->failed[i];
                break;
            }
            if (cat->failed[i].when < f->when)
                f = &cat->failed[i];
        }
    }
    if (f && err) {
        snprintf(f->name, sizeof f->name, "%s", name);
        memcpy(f->sig, sig, 32);
        f->when = time(NULL);
        f->err = *err;
    } else if (f) {
        memset(f, 0, sizeof *f);
    }
    pthread_mutex_unlock(&cat->lock);
}

/* Runs without any lock held: lists, reads and builds over the network. */
static int obtain_index(backup_catalog *cat, const char *name, backup_index **out, int *built,
                        walfs_err *err)
{
    *built = 0;
    *out = NULL;
    backup_partition_listing *parts = NULL;
    size_t n_parts = 0;
    int rc = backup_list_partitions(cat->st, name, &parts, &n_parts, err);
    if (rc)
        return rc;
    unsigned char sig[32];
    partitions_sig(parts, n_parts, sig);
    pthread_mutex_lock(&cat->lock);
    failed_build *f = find_failed(cat, name);
    int known_bad = f && memcmp(f->sig, sig, 32) == 0 && time(NULL) - f->when < FAILED_RETRY_SECONDS;
    long ago = f ? (long)(time(NULL) - f->when) : 0;
    if (known_bad)
        *err = f->err;
    int distrusted = find_distrusted(cat, name) >= 0;
    pthread_mutex_unlock(&cat->lock);
    if (known_bad) {
        backup_partition_listing_free(parts, n_parts);
        walfs_err_prefix(err, "indexing %s failed %lds ago and its partitions have not changed "
                         "since (walfs retries when they do, or after %ds): ", name, ago,
                         FAILED_RETRY_SECONDS);
        return err->code ? err->code : -EIO;
    }
    char local_path[PATH_MAX];
    local_index_path(cat, name, local_path, sizeof local_path);
    char stored_key[WALE_KEY_MAX];
    wale_index_key(stored_key, sizeof stored_key, name);

    backup_index *idx = NULL;
    walfs_buf buf;
    /* Refused unparsed beyond what such partitions can need: json-c takes
     * many times an index's size to parse it. */
    uint64_t part_bytes = 0;
    for (size_t i = 0; i < n_parts; i++)
        part_bytes += parts[i].size;
    size_t max = backup_index_json_max(part_bytes);
    int lrc = distrusted ? -ENOENT : read_local_file(local_path, max, &buf);
    if (lrc == -EFBIG)
        log_warn("cached index %s of %s is larger than the %zu bytes its partitions can need; "
                 "rebuilding it", local_path, name, max);
    if (lrc == 0) {
        idx = load_candidate("cached", name, &buf, parts, n_parts);
        buf_free(&buf);
        if (idx)
            log_info("using cached index for %s", name);
    }
    if (!idx && !distrusted) {
        walfs_err gerr = {0};
        int grc = fetch_object(cat->st, stored_key, max, &buf, &gerr);
        if (grc == 0) {
            idx = load_candidate("stored", name, &buf, parts, n_parts);
            if (idx) {
                log_info("using stored index for %s", name);
                write_local_file(local_path, buf.data, buf.len);
            }
            buf_free(&buf);
        } else if (grc != -ENOENT) {
            log_warn("could not read the stored index of %s (%s); rebuilding it", name, gerr.msg);
        }
    }
    if (!idx) {
        log_info("indexing %s (%zu partitions): reading the backup once", name, n_parts);
        rc = backup_index_build(cat->st, name, parts, n_parts, &idx, err);
        if (!rc) {
            log_info("indexed %s: %zu members", name, idx->n_members);
            *built = 1;
            remember_failure(cat, name, sig, NULL);
        } else if (rc != -ENOMEM) {
            remember_failure(cat, name, sig, err);
        }
    }
    backup_partition_listing_free(parts, n_parts);
    *out = idx;
    return rc;
}

/* Keeps a freshly built index: in the local cache for the next mount here,
 * in the bucket for other machines. */
static void keep_index(backup_catalog *cat, const backup_index *idx)
{
    char local_path[PATH_MAX], stored_key[WALE_KEY_MAX];
    local_index_path(cat, idx->backup_name, local_path, sizeof local_path);
    wale_index_key(stored_key, sizeof stored_key, idx->backup_name);
    char *json = NULL;
    size_t len = 0;
    walfs_err err = {0};
    if (backup_index_to_json(idx, &json, &len, &err) != 0) {
        log_warn("could not serialize the index of %s: %s", idx->backup_name, err.msg);
        return;
    }
    uint64_t part_bytes = 0;
    for (size_t i = 0; i < idx->n_partitions; i++)
        part_bytes += idx->partitions[i].object_size;
    if (len > backup_index_json_max(part_bytes)) {
        /* It would be refused when read back: reading the partitions again
         * costs less than it. */
        log_info("not keeping the %zu-byte index of %s: more than its %" PRIu64 " bytes of partitions "
                 "can need; it is rebuilt from them on each mount", len, idx->backup_name, part_bytes);
        free(json);
        return;
    }
    write_local_file(local_path, json, len);
    if (store_put(cat->st, stored_key, json, len, -1, &err) != 0)
        log_warn("could not store the index of %s in the archive (%s); other machines will "
                 "index the backup themselves", idx->backup_name, err.msg);
    free(json);
}

typedef struct keeper_job {
    backup_catalog *cat;
    const backup_index *idx;    /* a reference held until the job ends */
} keeper_job;

static void *keeper_main(void *arg)
{
    keeper_job *job = arg;
    keep_index(job->cat, job->idx);
    backup_catalog_release(job->cat, job->idx);
    free(job);
    return NULL;
}

/* Called with no lock held and a reference on idx taken for the job. */
static void start_keeper(backup_catalog *cat, const backup_index *idx)
{
    pthread_mutex_lock(&cat->lock);
    int full = cat->n_keepers == MAX_KEEPERS;
    pthread_t oldest = cat->keepers[0];
    if (full) {
        memmove(cat->keepers, cat->keepers + 1, (MAX_KEEPERS - 1) * sizeof cat->keepers[0]);
        cat->n_keepers--;
    }
    pthread_mutex_unlock(&cat->lock);
    /* Seldom: as many backups indexed at once as there are keepers. */
    if (full)
        pthread_join(oldest, NULL);
    keeper_job *job = malloc(sizeof *job);
    if (job) {
        *job = (keeper_job){.cat = cat, .idx = idx};
        pthread_t th;
        if (pthread_create(&th, NULL, keeper_main, job) == 0) {
            pthread_mutex_lock(&cat->lock);
            if (cat->n_keepers < MAX_KEEPERS) {
                cat->keepers[cat->n_keepers++] = th;
                th = 0;
            }
            pthread_mutex_unlock(&cat->lock);
            if (th)
                pthread_join(th, NULL); /* another builder filled the table meanwhile */
            return;
        }
        free(job);
    }
    /* No thread: keep it here, the listing waits a little longer. */
    keep_index(cat, idx);
    backup_catalog_release(cat, idx);
}

/* With cat->lock held: a reference to name's loaded index, or NULL. */
static const backup_index *take_loaded(backup_catalog *cat, const char *name)
{
    for (int i = 0; i < MAX_LOADED; i++) {
        loaded_index *l = &cat->loaded[i];
        if (l->idx && !l->stale && strcmp(l->idx->backup_name, name) == 0) {
            l->refs++;
            l->last_used = ++cat->use_clock;
            return l->idx;
        }
    }
    return NULL;
}

/* With cat->lock held. */
static int find_building(backup_catalog *cat, const char *name)
{
    return find_name(cat->building, MAX_BUILDING, name);
}

int backup_catalog_acquire(backup_catalog *cat, const char *name, const backup_index **out,
                           walfs_err *err)
{
    pthread_mutex_lock(&cat->lock);
    *out = take_loaded(cat, name);
    pthread_mutex_unlock(&cat->lock);
    if (*out)
        return 0;

    backup_entry entry;
    int rc = backup_catalog_find(cat, name, &entry, err);
    if (rc)
        return rc;
    /* One thread obtains a backup's index; the others wanting it wait for
     * that one (not for builds of other backups). */
    pthread_mutex_lock(&cat->lock);
    int slot;
    for (;;) {
        if ((*out = take_loaded(cat, name)) != NULL) {
            pthread_mutex_unlock(&cat->lock);
            return 0;
        }
        /* A failed build is remembered: a waiter that goes on costs a
         * listing, not a second build. */
        if (find_building(cat, name) < 0 && (slot = find_building(cat, "")) >= 0)
            break;
        pthread_cond_wait(&cat->build_done, &cat->lock);
    }
    snprintf(cat->building[slot], sizeof cat->building[slot], "%s", name);
    pthread_mutex_unlock(&cat->lock);

    backup_index *idx = NULL;
    int built = 0;
    rc = obtain_index(cat, name, &idx, &built, err);

    pthread_mutex_lock(&cat->lock);
    cat->building[slot][0] = '\0';
    if (!rc) {
        int ls = -1;
        for (int i = 0; i < MAX_LOADED; i++) {
            if (!cat->loaded[i].idx) {
                ls = i;
                break;
            }
            if (cat->loaded[i].refs == 0 &&
                (ls < 0 || cat->loaded[i].last_used < cat->loaded[ls].last_used))
                ls = i;
        }
        if (ls < 0) {
            /* Every slot is held by open files; memory stays bounded. */
            rc = walfs_err_set(err, -EMFILE, "too many base backups open at once (%d); close "
                               "some files and retry", MAX_LOADED);
            backup_index_free(idx);
        } else {
            backup_index_free(cat->loaded[ls].idx);
            cat->loaded[ls] = (loaded_index){
                .idx = idx,
                .refs = built ? 2 : 1, /* the caller's, and the keeper's */
                .last_used = ++cat->use_clock,
                .built = built,
            };
            if (built) {
                int d = find_distrusted(cat, name);
                if (d >= 0)
                    cat->distrusted[d][0] = '\0';
            }
            *out = idx;
        }
    }
    pthread_cond_broadcast(&cat->build_done);
    pthread_mutex_unlock(&cat->lock);
    if (!rc && built)
        start_keeper(cat, idx);
    return rc;
}

int backup_catalog_distrust(backup_catalog *cat, const backup_index *idx)
{
    char local_path[PATH_MAX];
    local_index_path(cat, idx->backup_name, local_path, sizeof local_path);
    pthread_mutex_lock(&cat->lock);
    int rebuild = 0;
    for (int i = 0; i < MAX_LOADED; i++) {
        loaded_index *l = &cat->loaded[i];
        if (l->idx != idx || l->stale)
            continue;
        l->stale = 1;
        rebuild = !l->built;
        if (rebuild && find_distrusted(cat, idx->backup_name) < 0) {
            int d = cat->next_distrusted++ % MAX_DISTRUSTED;
            snprintf(cat->distrusted[d], sizeof cat->distrusted[d], "%s", idx->backup_name);
        }
        if (rebuild && find_name(cat->lied, MAX_DISTRUSTED, idx->backup_name) < 0) {
            int d = cat->next_lied++ % MAX_DISTRUSTED;
            snprintf(cat->lied[d], sizeof cat->lied[d], "%s", idx->backup_name);
        }
    }
    pthread_mutex_unlock(&cat->lock);
    if (rebuild)
        unlink(local_path);
    return rebuild;
}

int backup_catalog_was_distrusted(backup_catalog *cat, const char *name)
{
    pthread_mutex_lock(&cat->lock);
    int d = find_name(cat->lied, MAX_DISTRUSTED, name) >= 0;
    pthread_mutex_unlock(&cat->lock);
    return d;
}

void backup_catalog_release(backup_catalog *cat, const backup_index *idx)
{
    if (!idx)
        return;
    pthread_mutex_lock(&cat->lock);
    for (int i = 0; i < MAX_LOADED; i++) {
        loaded_index *l = &cat->loaded[i];
        if (l->idx == idx && l->refs > 0 && --l->refs == 0 && l->stale) {
            backup_index_free(l->idx);
            *l = (loaded_index){0};
        }
    }
    pthread_mutex_unlock(&cat->lock);
}
