#include "fs/object_cache.h"

#include <dirent.h>
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

#include "common/log.h"
#include "fs/lzop_object.h"

/* Sizes learned by decoding, kept after the copy itself is evicted so that
 * `ls -l` of an archive written by WAL-E downloads each object once. */
typedef struct size_memo {
    char name[65];
    uint64_t size;
    struct size_memo *next;
} size_memo;

/* A copy being fetched: a second reader of the same object (a cp that
 * caught up with read-ahead) waits for it instead of fetching it again. */
typedef struct fill_in_flight {
    char name[65];
    struct fill_in_flight *next;
} fill_in_flight;

struct object_cache {
    store *st;
    char *dir;
    uint64_t max_bytes;
    pthread_mutex_t lock;
    pthread_cond_t fill_done;
    fill_in_flight *fills;
    size_memo *memo;
    size_t memo_count;
};

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
    for (unsigned i = 0; i < dlen && i < 32; i++)
        sprintf(out + 2 * i, "%02x", digest[i]);
}

object_cache *object_cache_new(store *st, const char *dir, uint64_t max_bytes, walfs_err *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/objects", dir);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        walfs_err_set(err, -errno, "cache directory %s: %s (choose another with --cache-dir)", dir,
                      strerror(errno));
        return NULL;
    }
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        walfs_err_set(err, -errno, "cache directory %s: %s (choose another with --cache-dir)",
                      path, strerror(errno));
        return NULL;
    }
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
    pthread_cond_init(&oc->fill_done, NULL);
    return oc;
}

void object_cache_free(object_cache *oc)
{
    if (!oc)
        return;
    while (oc->memo) {
        size_memo *next = oc->memo->next;
        free(oc->memo);
        oc->memo = next;
    }
    pthread_mutex_destroy(&oc->lock);
    pthread_cond_destroy(&oc->fill_done);
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

/* Evicts oldest-used copies until the cache fits; runs after each fill. */
static void evict(object_cache *oc, const char *keep)
{
    DIR *d = opendir(oc->dir);
    if (!d)
        return;
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
    if (total > oc->max_bytes) {
        qsort(list, n, sizeof *list, by_age);
        for (size_t i = 0; i < n && total > oc->max_bytes; i++) {
            if (strcmp(list[i].name, keep) == 0)
                continue;
            if (unlinkat(dirfd(d), list[i].name, 0) == 0)
                total -= list[i].bytes;
        }
    }
    closedir(d);
    free(list);
}

typedef struct decode_target {
    int fd;
    uint64_t written;
    const char *path;
    walfs_err *err;
} decode_target;

static int write_decoded(void *ctx, const void *data, size_t len)
{
    decode_target *t = ctx;
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

/* Fetches key, decodes and verifies it into a temporary file, and renames it
 * into place only once the whole stream checked out. */
static int fill(object_cache *oc, const char *key, const char *final_path, walfs_err *err)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/.fill-XXXXXX", oc->dir);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return walfs_err_set(err, -EIO, "creating a cache file in %s: %s", oc->dir,
                             strerror(errno));
    log_debug("fetching %s into the cache", key);
    decode_target out = {.fd = fd, .path = tmp, .err = err};
    int rc = lzop_object_read(oc->st, key, write_decoded, &out, err);
    if (close(fd) != 0 && !rc)
        rc = walfs_err_set(err, -EIO, "writing cache file %s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, final_path) != 0)
        rc = walfs_err_set(err, -EIO, "renaming cache file to %s: %s", final_path,
                           strerror(errno));
    if (rc)
        unlink(tmp);
    return rc;
}

/* Called with oc->lock held. */
static int fill_running(const object_cache *oc, const char *name)
{
    for (const fill_in_flight *f = oc->fills; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return 1;
    return 0;
}

int object_cache_open(object_cache *oc, const char *key, const store_stat *meta, int *fd_out,
                      uint64_t *size_out, walfs_err *err)
{
    char name[65], path[PATH_MAX];
    cache_name(key, meta->etag, name);
    snprintf(path, sizeof path, "%s/%s", oc->dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd < 0) {
        pthread_mutex_lock(&oc->lock);
        if (fill_running(oc, name)) {
            /* Looked up afresh after every wake: the filler's entry lives
             * on its stack and is gone once it returns. */
            do
                pthread_cond_wait(&oc->fill_done, &oc->lock);
            while (fill_running(oc, name));
            pthread_mutex_unlock(&oc->lock);
            /* Its copy, or (if its fetch failed) a fetch of our own. */
            fd = open(path, O_RDONLY | O_CLOEXEC);
            continue;
        }
        fill_in_flight mine = {.next = oc->fills};
        memcpy(mine.name, name, sizeof mine.name);
        oc->fills = &mine;
        pthread_mutex_unlock(&oc->lock);
        int rc = fill(oc, key, path, err);
        pthread_mutex_lock(&oc->lock);
        for (fill_in_flight **p = &oc->fills; *p; p = &(*p)->next) {
            if (*p == &mine) {
                *p = mine.next;
                break;
            }
        }
        pthread_cond_broadcast(&oc->fill_done);
        pthread_mutex_unlock(&oc->lock);
        if (rc)
            return rc;
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return walfs_err_set(err, -EIO, "opening cache file %s: %s", path, strerror(errno));
        evict(oc, name);
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

int object_cache_size(object_cache *oc, const char *key, const store_stat *meta,
                      uint64_t *size_out, walfs_err *err)
{
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
