#include "wal/object_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hex.h"
#include "common/log.h"
#include "common/private_dir.h"
#include "wal/lzop_object.h"
#include "pg/wal_file.h"
#include "wale/layout.h"

/* Sizes learned by decoding, kept after the copy itself is evicted so that
 * `ls -l` of an archive written by WAL-E downloads each object once. */
typedef struct size_memo {
    char name[65];
    uint64_t size;
    struct size_memo *next;
} size_memo;

/* Objects refused for what they decompress to: the same ETag decompresses
 * the same way, so a bomb costs one download, not one per `stat`.  The
 * last few are enough (a full archive of bombs just costs more). */
#define REFUSALS 32
typedef struct refusal {
    char name[65];
    int64_t recorded;     /* the size recorded at upload: metadata replaced by
                           * a copy keeps the ETag, and may fix the refusal */
    char msg[WALFS_ERR_MSG_MAX];
} refusal;

/* A copy being fetched: a second reader of the same object (a cp that
 * caught up with read-ahead) waits for it instead of fetching it again. */
typedef struct fill_in_flight {
    char name[65];
    int foreground;       /* a reader waits for it: it never gives way */
    int give_way;         /* a fill before it needs its room: stop and free it */
    const char *key;      /* read-ahead of an earlier name goes first */
    uint64_t reserved;    /* bytes of it counted toward max_bytes */
    int refused;          /* it decompressed past its limit */
    struct fill_in_flight *next;
} fill_in_flight;

struct object_cache {
    store *st;
    char *dir;
    uint64_t max_bytes;
    pthread_mutex_t lock;
    pthread_cond_t changed; /* a fill ended or gave way */
    fill_in_flight *fills;
    uint64_t stored;        /* finished copies, as last counted on disk */
    uint64_t reserved;      /* sum of the fills' reserved */
    uint64_t finished;      /* fills that added a copy to stored */
    size_memo *memo;
    size_t memo_count;
    refusal refusals[REFUSALS];
    unsigned next_refusal;
};

/* Partial copies are named after the process writing them, so that a
 * start can tell the leftovers of a walfs that died from the fills of
 * another walfs sharing the directory. */
#define FILL_PREFIX ".fill-"

static void cache_name(const char *key, const char *etag, char out[65])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    char *material = NULL;
    int mlen = asprintf(&material, "%s\n%s", key, etag);
    if (mlen < 0 || !EVP_Digest(material, (size_t)mlen, digest, &dlen, EVP_sha256(), NULL))
        dlen = 0;
    free(material);
    memset(out, '0', 64);
    out[64] = '\0';
    if (dlen >= 32)
        hex_encode(digest, 32, out);
}

typedef struct entry_age {
    char name[80];
    time_t atime;
    uint64_t bytes;
} entry_age;

static int by_age(const void *a, const void *b)
{
    const entry_age *x = a, *y = b;
    return (x->atime > y->atime) - (x->atime < y->atime);
}

/* Evicts oldest-used finished copies until they take at most target bytes;
 * returns what they take then.  Partial copies (dot files) are counted by
 * their fills, not here. */
static uint64_t evict_to(object_cache *oc, uint64_t target)
{
    DIR *d = opendir(oc->dir);
    if (!d)
        return 0;
    entry_age *list = NULL;
    size_t n = 0, cap = 0;
    uint64_t total = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || strlen(de->d_name) >= sizeof list[0].name)
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), de->d_name, &sb, 0) != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            entry_age *grown = realloc(list, cap * sizeof *list);
            if (!grown)
                break;
            list = grown;
        }
        memcpy(list[n].name, de->d_name, strlen(de->d_name) + 1);
        list[n].atime = sb.st_atime > sb.st_mtime ? sb.st_atime : sb.st_mtime;
        list[n].bytes = (uint64_t)sb.st_blocks * 512;
        total += list[n].bytes;
        n++;
    }
    if (total > target) {
        qsort(list, n, sizeof *list, by_age);
        for (size_t i = 0; i < n && total > target; i++)
            if (unlinkat(dirfd(d), list[i].name, 0) == 0)
                total -= list[i].bytes;
    }
    closedir(d);
    free(list);
    return total;
}

/* A writer killed a moment ago may still be a zombie until its parent (for
 * a daemon: init) reaps it; it writes no more. */
static int process_gone(long pid)
{
    if (kill((pid_t)pid, 0) != 0)
        return errno == ESRCH;
    char path[64], stat_line[256];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(stat_line, 1, sizeof stat_line - 1, f);
    fclose(f);
    stat_line[n] = '\0';
    const char *state = strrchr(stat_line, ')');
    return state && state[1] == ' ' && state[2] == 'Z';
}

/* Removes partial copies: at start those whose writer is gone (killed
 * mid-fetch), at the end this process's own. */
static void remove_partial_copies(const char *dir, int at_start)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    long me = (long)getpid();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, FILL_PREFIX, strlen(FILL_PREFIX)) != 0)
            continue;
        char *end;
        long pid = strtol(de->d_name + strlen(FILL_PREFIX), &end, 10);
        /* Also the pid-less names older walfs versions wrote; and at start
         * our own pid is a dead predecessor's (containers reuse pids). */
        int gone = *end != '-' || pid <= 0 || pid == me || process_gone(pid);
        if ((at_start ? gone : pid == me) && unlinkat(dirfd(d), de->d_name, 0) == 0)
            log_info("removed %s/%s, a partial copy of an interrupted fetch", dir, de->d_name);
    }
    closedir(d);
}

object_cache *object_cache_new(store *st, const char *dir, uint64_t max_bytes, walfs_err *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/objects", dir);
    if (private_dir_make(dir, err) || private_dir_make(path, err))
        return NULL;
    if (access(path, W_OK) != 0) {
        walfs_err_set(err, -errno, "cache directory %s is not writable: %s", path,
                      strerror(errno));
        return NULL;
    }
    object_cache *oc = calloc(1, sizeof *oc);
    if (!oc) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    oc->st = st;
    oc->dir = strdup(path);
    oc->max_bytes = max_bytes;
    pthread_mutex_init(&oc->lock, NULL);
    pthread_cond_init(&oc->changed, NULL);
    remove_partial_copies(oc->dir, 1);
    /* Also trims what an earlier mount with a larger --cache-size left. */
    oc->stored = evict_to(oc, max_bytes);
    return oc;
}

void object_cache_free(object_cache *oc)
{
    if (!oc)
        return;
    remove_partial_copies(oc->dir, 0);
    while (oc->memo) {
        size_memo *next = oc->memo->next;
        free(oc->memo);
        oc->memo = next;
    }
    pthread_mutex_destroy(&oc->lock);
    pthread_cond_destroy(&oc->changed);
    free(oc->dir);
    free(oc);
}

static void remember_size(object_cache *oc, const char *name, uint64_t size)
{
    pthread_mutex_lock(&oc->lock);
    for (size_memo *m = oc->memo; m; m = m->next) {
        if (strcmp(m->name, name) == 0) {
            pthread_mutex_unlock(&oc->lock);
            return;
        }
    }
    /* Bounded: beyond this many we forget everything and relearn on demand. */
    if (oc->memo_count >= 100000) {
        while (oc->memo) {
            size_memo *next = oc->memo->next;
            free(oc->memo);
            oc->memo = next;
        }
        oc->memo_count = 0;
    }
    size_memo *m = calloc(1, sizeof *m);
    if (m) {
        memcpy(m->name, name, sizeof m->name);
        m->size = size;
        m->next = oc->memo;
        oc->memo = m;
        oc->memo_count++;
    }
    pthread_mutex_unlock(&oc->lock);
}

static int recall_size(object_cache *oc, const char *name, uint64_t *size)
{
    int found = 0;
    pthread_mutex_lock(&oc->lock);
    for (size_memo *m = oc->memo; m; m = m->next) {
        if (strcmp(m->name, name) == 0) {
            *size = m->size;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&oc->lock);
    return found;
}

/* Called with oc->lock held.  Asks every fill that yields to f to stop: a
 * reader goes before read-ahead, read-ahead of the next segment before that
 * of the one after (segment names sort in replay order).
 * 1 if one still holds room (f waits for it to give it back); waits thus
 * only ever go from a fill to one that yields to it, so they end. */
static int make_way_for(object_cache *oc, const fill_in_flight *f)
{
    int holding = 0;
    for (fill_in_flight *g = oc->fills; g; g = g->next) {
        if (g == f || g->foreground || (!f->foreground && strcmp(g->key, f->key) <= 0))
            continue;
        holding |= g->reserved > 0;
        if (!g->give_way) {
            g->give_way = 1;
            /* One waiting for room itself stops now, not at its next wake. */
            pthread_cond_broadcast(&oc->changed);
        }
    }
    return holding;
}

static double mib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

/* Counts len more bytes of f's copy toward max_bytes before they are
 * written.  Room comes from finished copies (oldest first), then from fills
 * that yield to f: a restore under a small cache must not fail a segment
 * because read-ahead filled the cache first, nor read-ahead of the next
 * segment stop for that of the one after. */
static int reserve(object_cache *oc, fill_in_flight *f, uint64_t len, const char *key,
                   walfs_err *err)
{
    int counted = 0, rc = 0;
    pthread_mutex_lock(&oc->lock);
    for (;;) {
        if (f->give_way) {
            rc = walfs_err_set(err, -EAGAIN, "read-ahead of %s stopped: %s needed its room in "
                               "the cache", key, "a reader or nearer read-ahead");
            break;
        }
        uint64_t need = oc->reserved + len;
        if (need <= oc->max_bytes && oc->stored <= oc->max_bytes - need) {
            oc->reserved += len;
            f->reserved += len;
            break;
        }
        if (!counted) {
            /* Counted afresh: another walfs may share the directory.  A
             * copy finished meanwhile may be missing from the count. */
            uint64_t finished = oc->finished;
            pthread_mutex_unlock(&oc->lock);
            uint64_t left = evict_to(oc, need < oc->max_bytes ? oc->max_bytes - need : 0);
            pthread_mutex_lock(&oc->lock);
            if (finished == oc->finished) {
                oc->stored = left;
                counted = 1;
            }
            continue;
        }
        if (make_way_for(oc, f)) {
            /* The other notices at its next block. */
            pthread_cond_wait(&oc->changed, &oc->lock);
            counted = 0;
            continue;
        }
        if (!f->foreground) {
            rc = walfs_err_set(err, -EAGAIN, "read-ahead of %s stopped: the cache is full", key);
            break;
        }
        rc = walfs_err_set(err, -EIO,
                           "%s: not fetched: the cache (--cache-size=%g MiB) cannot hold it "
                           "while %g MiB of other WAL files are fetched at the same time; raise "
                           "--cache-size to at least the largest WAL file times the number of "
                           "files read at once", key, mib(oc->max_bytes),
                           mib(oc->reserved - f->reserved));
        break;
    }
    pthread_mutex_unlock(&oc->lock);
    return rc;
}

/* What bounds a copy's decompressed size, tightest last. */
typedef enum { LIMIT_WAL_FILE, LIMIT_CACHE, LIMIT_RECORDED, LIMIT_PAGE_HEADER } limit_kind;

typedef struct decode_target {
    object_cache *oc;
    fill_in_flight *fill;
    const char *key;
    int fd;
    uint64_t written;
    uint64_t limit;
    limit_kind why;
    int segment;          /* its first page header declares its size */
    unsigned char head[WAL_LONG_HEADER_BYTES];
    size_t head_len;
    const char *path;
    walfs_err *err;
} decode_target;

static int refuse(walfs_err *err, const char *key, limit_kind why, uint64_t limit)
{
    switch (why) {
    case LIMIT_WAL_FILE:
        return walfs_err_set(err, -EIO, "%s decompresses to more than 1 GiB, more than any WAL "
                             "file holds (PostgreSQL's largest wal_segment_size): refused as "
                             "damaged or hostile; remove it from the archive", key);
    case LIMIT_CACHE:
        return walfs_err_set(err, -EIO, "%s decompresses to more than the %g MiB the cache holds: "
                             "refused; if it is a real WAL file, mount with a --cache-size above "
                             "its size, otherwise remove it from the archive (it is damaged or "
                             "hostile)", key, mib(limit));
    case LIMIT_RECORDED:
        return walfs_err_set(err, -EIO, "%s decompresses to more than the %llu bytes recorded at "
                             "its upload: the object is damaged; restore it from another copy",
                             key, (unsigned long long)limit);
    case LIMIT_PAGE_HEADER:
        break;
    }
    return walfs_err_set(err, -EIO, "%s decompresses to more than the %llu bytes its first page "
                         "header declares as its segment size: the object is damaged or hostile; "
                         "restore it from another copy", key, (unsigned long long)limit);
}

/* The tightest bound known before the first byte; -EIO when the size
 * recorded at upload is already past it. */
static int initial_limit(const object_cache *oc, const char *key, const store_stat *meta,
                         decode_target *t, walfs_err *err)
{
    t->limit = WAL_FILE_MAX_BYTES;
    t->why = LIMIT_WAL_FILE;
    if (oc->max_bytes < t->limit) {
        t->limit = oc->max_bytes;
        t->why = LIMIT_CACHE;
    }
    if (meta->uncompressed_size >= 0) {
        if ((uint64_t)meta->uncompressed_size > t->limit)
            return refuse(err, key, t->why, t->limit);
        t->limit = (uint64_t)meta->uncompressed_size;
        t->why = LIMIT_RECORDED;
    }
    return 0;
}

/* "wal_005/<24 hex digits>.lzo": a segment (wale/layout.h) */
static int key_names_segment(const char *key)
{
    const char *base = strrchr(key, '/');
    base = base ? base + 1 : key;
    char name[25];
    if (wale_wal_file_len(base) != 24)
        return 0;
    memcpy(name, base, 24);
    name[24] = '\0';
    return wal_name_is_segment(name);
}

static int write_decoded(void *ctx, const void *data, size_t len)
{
    decode_target *t = ctx;
    if (t->segment && t->head_len < sizeof t->head) {
        size_t take = len < sizeof t->head - t->head_len ? len : sizeof t->head - t->head_len;
        memcpy(t->head + t->head_len, data, take);
        t->head_len += take;
        uint64_t declared;
        if (wal_segment_check(t->head, t->head_len, 0, &declared) == 0 && declared < t->limit) {
            t->limit = declared;
            t->why = LIMIT_PAGE_HEADER;
        }
    }
    if (len > t->limit - t->written) {
        t->fill->refused = 1;
        return refuse(t->err, t->key, t->why, t->limit);
    }
    int rc = reserve(t->oc, t->fill, len, t->key, t->err);
    if (rc)
        return rc;
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(t->fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return walfs_err_set(t->err, -EIO, "writing cache file %s: %s (check free space in "
                                 "the cache directory)", t->path, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
        t->written += (uint64_t)w;
    }
    return 0;
}

/* Fetches key, decodes and verifies it into a partial copy, and renames it
 * into place only once the whole stream checked out; *fd_out is opened
 * before the rename, so eviction cannot take the copy from its reader. */
static int fill(object_cache *oc, fill_in_flight *f, const char *key, const store_stat *meta,
                const char *final_path, int *fd_out, walfs_err *err)
{
    decode_target out = {.oc = oc, .fill = f, .key = key, .segment = key_names_segment(key),
                         .err = err};
    int rc = initial_limit(oc, key, meta, &out, err);
    if (rc)
        return rc;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/" FILL_PREFIX "%ld-XXXXXX", oc->dir, (long)getpid());
    int fd = mkstemp(tmp);
    if (fd < 0)
        return walfs_err_set(err, -EIO, "creating a cache file in %s: %s", oc->dir,
                             strerror(errno));
    log_debug("fetching %s into the cache", key);
    out.fd = fd;
    out.path = tmp;
    rc = lzop_object_read(oc->st, key, write_decoded, &out, err);
    if (close(fd) != 0 && !rc)
        rc = walfs_err_set(err, -EIO, "writing cache file %s: %s", tmp, strerror(errno));
    int rfd = -1;
    if (!rc && (rfd = open(tmp, O_RDONLY | O_CLOEXEC)) < 0)
        rc = walfs_err_set(err, -EIO, "opening cache file %s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, final_path) != 0)
        rc = walfs_err_set(err, -EIO, "renaming cache file to %s: %s", final_path,
                           strerror(errno));
    if (rc) {
        if (rfd >= 0)
            close(rfd);
        unlink(tmp);
        return rc;
    }
    *fd_out = rfd;
    return 0;
}

/* Called with oc->lock held. */
static fill_in_flight *fill_running(const object_cache *oc, const char *name)
{
    for (fill_in_flight *f = oc->fills; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static int obtain(object_cache *oc, const char *key, const store_stat *meta, int foreground,
                  int *fd_out, uint64_t *size_out, walfs_err *err)
{
    char name[65], path[PATH_MAX];
    cache_name(key, meta->etag, name);
    snprintf(path, sizeof path, "%s/%s", oc->dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd < 0) {
        pthread_mutex_lock(&oc->lock);
        fill_in_flight *running = fill_running(oc, name);
        if (running) {
            /* A reader waits for this read-ahead now: it keeps its room. */
            if (foreground)
                running->foreground = 1;
            /* Looked up afresh after every wake: the filler's entry lives
             * on its stack and is gone once it returns. */
            do
                pthread_cond_wait(&oc->changed, &oc->lock);
            while (fill_running(oc, name));
            pthread_mutex_unlock(&oc->lock);
            /* Its copy, or (if its fetch failed) a fetch of our own. */
            fd = open(path, O_RDONLY | O_CLOEXEC);
            continue;
        }
        for (unsigned i = 0; i < REFUSALS; i++) {
            if (strcmp(oc->refusals[i].name, name) == 0 &&
                oc->refusals[i].recorded == meta->uncompressed_size) {
                int rc = walfs_err_set(err, -EIO, "%s", oc->refusals[i].msg);
                pthread_mutex_unlock(&oc->lock);
                return rc;
            }
        }
        fill_in_flight mine = {.next = oc->fills, .foreground = foreground, .key = key};
        memcpy(mine.name, name, sizeof mine.name);
        oc->fills = &mine;
        pthread_mutex_unlock(&oc->lock);
        int rc = fill(oc, &mine, key, meta, path, &fd, err);
        pthread_mutex_lock(&oc->lock);
        for (fill_in_flight **p = &oc->fills; *p; p = &(*p)->next) {
            if (*p == &mine) {
                *p = mine.next;
                break;
            }
        }
        /* Its room now belongs to the finished copy, or (failed: the partial
         * copy is already removed) to nobody. */
        oc->reserved -= mine.reserved;
        if (!rc) {
            oc->stored += mine.reserved;
            oc->finished++;
        }
        if (mine.refused && err) {
            refusal *r = &oc->refusals[oc->next_refusal++ % REFUSALS];
            memcpy(r->name, name, sizeof r->name);
            r->recorded = meta->uncompressed_size;
            snprintf(r->msg, sizeof r->msg, "%s", err->msg);
        }
        pthread_cond_broadcast(&oc->changed);
        pthread_mutex_unlock(&oc->lock);
        if (rc)
            return rc;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return walfs_err_set(err, -EIO, "stat of cache file %s: %s", path, strerror(e));
    }
    /* The recorded size is a second, independent check of the decoded copy. */
    if (meta->uncompressed_size >= 0 && (uint64_t)meta->uncompressed_size != (uint64_t)sb.st_size) {
        close(fd);
        unlink(path);
        return walfs_err_set(err, -EIO,
                             "%s: decompressed to %lld bytes but its upload recorded %lld; the "
                             "object is damaged: restore it from another copy",
                             key, (long long)sb.st_size, (long long)meta->uncompressed_size);
    }
    remember_size(oc, name, (uint64_t)sb.st_size);
    *fd_out = fd;
    *size_out = (uint64_t)sb.st_size;
    return 0;
}

int object_cache_open(object_cache *oc, const char *key, const store_stat *meta, int *fd_out,
                      uint64_t *size_out, walfs_err *err)
{
    return obtain(oc, key, meta, 1, fd_out, size_out, err);
}

int object_cache_prefetch(object_cache *oc, const char *key, const store_stat *meta,
                          uint64_t *size_out, walfs_err *err)
{
    int fd;
    int rc = obtain(oc, key, meta, 0, &fd, size_out, err);
    if (!rc)
        close(fd);
    return rc;
}

int object_cache_size(object_cache *oc, const char *key, const store_stat *meta,
                      uint64_t *size_out, walfs_err *err)
{
    if (meta->uncompressed_size > (int64_t)WAL_FILE_MAX_BYTES)
        return refuse(err, key, LIMIT_WAL_FILE, WAL_FILE_MAX_BYTES);
    if (meta->uncompressed_size >= 0) {
        *size_out = (uint64_t)meta->uncompressed_size;
        return 0;
    }
    char name[65];
    cache_name(key, meta->etag, name);
    if (recall_size(oc, name, size_out))
        return 0;
    int fd;
    int rc = object_cache_open(oc, key, meta, &fd, size_out, err);
    if (rc)
        return rc;
    close(fd);
    return 0;
}
