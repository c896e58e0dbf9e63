/* Local-directory backend: the archive laid out with the same keys as in the
 * bucket, so a directory can be synced to S3 as it is.  A put is atomic
 * (temporary file, fsync, rename, fsync of the directory) so a crash never
 * leaves a partial object under its final name. */
#include "store/store_driver.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define TMP_MARKER STORE_RESERVED_PREFIX
#define XATTR_UNCOMPRESSED "user.walfs.uncompressed_size"

typedef struct local_store {
    store base;
    char *root;
} local_store;

static int join(const local_store *ls, const char *key, char *out, size_t outlen, walfs_err *err)
{
    for (const char *c = key; *c;) {
        size_t clen = strcspn(c, "/");
        if (clen == 2 && c[0] == '.' && c[1] == '.')
            return walfs_err_set(err, -EINVAL, "refusing key with a '..' component: %s", key);
        c += clen;
        if (*c == '/')
            c++;
    }
    int n = snprintf(out, outlen, "%s/%s", ls->root, key);
    if (n < 0 || (size_t)n >= outlen)
        return walfs_err_set(err, -ENAMETOOLONG, "key too long: %s", key);
    return 0;
}

static int errno_result(walfs_err *err, int e, const char *what, const char *path)
{
    const char *hint = e == EACCES || e == EPERM ? ": check the permissions of the archive directory"
                       : e == ENOSPC           ? ": the archive's filesystem is full"
                                               : "";
    return walfs_err_set(err, -e, "%s %s: %s%s", what, path, strerror(e), hint);
}

/* Changes whenever the file is replaced (rename gives a new inode) or
 * rewritten in place. */
static void format_etag(const struct stat *sb, char *out, size_t len)
{
    snprintf(out, len, "%" PRIx64 "-%" PRIx64 "-%lx-%lx", (uint64_t)sb->st_ino,
             (uint64_t)sb->st_size, (long)sb->st_mtim.tv_sec, (long)sb->st_mtim.tv_nsec);
}

static int local_stat(store *st, const char *key, store_stat *out, walfs_err *err)
{
    local_store *ls = (local_store *)st;
    char path[PATH_MAX];
    int rc = join(ls, key, path, sizeof path, err);
    if (rc)
        return rc;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return errno_result(err, errno, "stat", path);
    if (!S_ISREG(sb.st_mode))
        return walfs_err_set(err, -ENOENT, "%s is not a regular file", path);
    memset(out, 0, sizeof *out);
    out->size = (uint64_t)sb.st_size;
    out->mtime = sb.st_mtime;
    format_etag(&sb, out->etag, sizeof out->etag);
    out->uncompressed_size = -1;
    char buf[32];
    ssize_t n = getxattr(path, XATTR_UNCOMPRESSED, buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = '\0';
        char *end;
        long long v = strtoll(buf, &end, 10);
        if (*end == '\0' && v >= 0)
            out->uncompressed_size = v;
    }
    return 0;
}

static int local_get(store *st, const char *key, uint64_t offset, uint64_t length,
                     store_sink_fn sink, void *ctx, walfs_err *err)
{
    local_store *ls = (local_store *)st;
    char path[PATH_MAX];
    int rc = join(ls, key, path, sizeof path, err);
    if (rc)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno_result(err, errno, "open", path);
    enum { CHUNK = 256 * 1024 };
    char *buf = malloc(CHUNK);
    if (!buf) {
        close(fd);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    uint64_t pos = offset, end = length ? offset + length : UINT64_MAX;
    rc = 0;
    while (pos < end) {
        size_t want = end - pos < CHUNK ? (size_t)(end - pos) : CHUNK;
        ssize_t n = pread(fd, buf, want, (off_t)pos);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = errno_result(err, errno, "read", path);
            break;
        }
        if (n == 0)
            break;
        rc = sink(ctx, buf, (size_t)n);
        if (rc)
            break;
        pos += (uint64_t)n;
    }
    free(buf);
    close(fd);
    return rc;
}

/* A new object's path: refused when its name is one the listing skips. */
static int join_new(const local_store *ls, const char *key, char *out, size_t outlen,
                    walfs_err *err)
{
    const char *base = strrchr(key, '/');
    base = base ? base + 1 : key;
    if (strncmp(base, TMP_MARKER, strlen(TMP_MARKER)) == 0)
        return walfs_err_set(err, -EINVAL, "cannot store %s: names starting %s are reserved "
                             "for walfs's temporary files", key, TMP_MARKER);
    return join(ls, key, out, outlen, err);
}

/* 0700 directories and 0600 files: the archive holds every row of the
 * database, and the local backend is the only thing that reads it. */
static int mkdirs(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int r = mkdir(path, 0700);
        *p = '/';
        if (r != 0 && errno != EEXIST)
            return -errno;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return r;
}

static int local_put(store *st, const char *key, const void *body, size_t len,
                     int64_t uncompressed_size, walfs_err *err)
{
    local_store *ls = (local_store *)st;
    char path[PATH_MAX], tmp[PATH_MAX];
    int rc = join_new(ls, key, path, sizeof path, err);
    if (rc)
        return rc;
    if (mkdirs(path) != 0)
        return errno_result(err, errno, "create directories for", path);
    char *slash = strrchr(path, '/');
    int n = snprintf(tmp, sizeof tmp, "%.*s/" TMP_MARKER "%s.%ld", (int)(slash - path), path,
                     slash + 1, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return walfs_err_set(err, -ENAMETOOLONG, "key too long: %s", key);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno_result(err, errno, "create", tmp);
    const char *p = body;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = errno_result(err, errno, "write", tmp);
            goto fail;
        }
        p += w;
        left -= (size_t)w;
    }
    if (uncompressed_size >= 0) {
        char buf[32];
        int bl = snprintf(buf, sizeof buf, "%lld", (long long)uncompressed_size);
        /* Best effort: filesystems without user xattrs just cost a decode on stat. */
        (void)fsetxattr(fd, XATTR_UNCOMPRESSED, buf, (size_t)bl, 0);
    }
    if (fsync(fd) != 0) {
        rc = errno_result(err, errno, "fsync", tmp);
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = errno_result(err, errno, "close", tmp);
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = errno_result(err, errno, "rename into place", path);
        goto fail;
    }
    int r = fsync_dir_of(path);
    if (r)
        return errno_result(err, -r, "fsync directory of", path);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

/* A streaming upload writes a hidden temporary file next to the target, so
 * listings never show it and the final rename is atomic. */
typedef struct local_upload {
    local_store *ls;
    char path[PATH_MAX];
    char tmp[PATH_MAX];
    int fd;
} local_upload;

static int local_upload_begin(store *st, const char *key, store_upload **out, walfs_err *err)
{
    /* Two uploads of one key from the same process must not share a file. */
    static unsigned long seq;
    local_store *ls = (local_store *)st;
    *out = NULL;
    local_upload *up = calloc(1, sizeof *up);
    if (!up)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    up->ls = ls;
    up->fd = -1;
    int rc = join_new(ls, key, up->path, sizeof up->path, err);
    if (rc)
        goto fail;
    if (mkdirs(up->path) != 0) {
        rc = errno_result(err, errno, "create directories for", up->path);
        goto fail;
    }
    char *slash = strrchr(up->path, '/');
    int n = snprintf(up->tmp, sizeof up->tmp, "%.*s/" TMP_MARKER "%s.%ld.%lu",
                     (int)(slash - up->path), up->path, slash + 1, (long)getpid(),
                     __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
    if (n < 0 || (size_t)n >= sizeof up->tmp) {
        rc = walfs_err_set(err, -ENAMETOOLONG, "key too long: %s", key);
        goto fail;
    }
    up->fd = open(up->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (up->fd < 0) {
        rc = errno_result(err, errno, "create", up->tmp);
        goto fail;
    }
    *out = (store_upload *)up;
    return 0;
fail:
    free(up);
    return rc;
}

static int local_upload_part(store *st, store_upload *u, const void *data, size_t len, walfs_err *err)
{
    local_upload *up = (local_upload *)u;
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(up->fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno_result(err, errno, "write", up->tmp);
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static void local_upload_abort(store *st, store_upload *u)
{
    local_upload *up = (local_upload *)u;
    if (!up)
        return;
    if (up->fd >= 0)
        close(up->fd);
    unlink(up->tmp);
    free(up);
}

static int local_upload_commit(store *st, store_upload *u, walfs_err *err)
{
    local_upload *up = (local_upload *)u;
    int rc = 0;
    if (fsync(up->fd) != 0) {
        rc = errno_result(err, errno, "fsync", up->tmp);
        goto fail;
    }
    int fd = up->fd;
    up->fd = -1;
    if (close(fd) != 0) {
        rc = errno_result(err, errno, "close", up->tmp);
        goto fail;
    }
    if (rename(up->tmp, up->path) != 0) {
        rc = errno_result(err, errno, "rename into place", up->path);
        goto fail;
    }
    int r = fsync_dir_of(up->path);
    if (r)
        rc = errno_result(err, -r, "fsync directory of", up->path);
    free(up);
    return rc;
fail:
    local_upload_abort(st, u);
    return rc;
}

static int local_remove(store *st, const char *key, walfs_err *err)
{
    local_store *ls = (local_store *)st;
    char path[PATH_MAX];
    int rc = join(ls, key, path, sizeof path, err);
    if (rc)
        return rc;
    if (unlink(path) != 0)
        return errno_result(err, errno, "remove", path);
    return 0;
}

/* One directory entry as a listing entry: 0 when given to fn (and fn
 * returned 0) or skipped, else what fn returned. */
static int list_one(DIR *d, const struct dirent *de, store_list_fn fn, void *ctx)
{
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
        strncmp(de->d_name, TMP_MARKER, strlen(TMP_MARKER)) == 0)
        return 0;
    struct stat sb;
    if (fstatat(dirfd(d), de->d_name, &sb, 0) != 0)
        return 0; /* removed while listing */
    if (!S_ISDIR(sb.st_mode) && !S_ISREG(sb.st_mode))
        return 0;
    char etag[128];
    format_etag(&sb, etag, sizeof etag);
    store_entry e = {.name = de->d_name, .is_dir = S_ISDIR(sb.st_mode),
                     .size = (uint64_t)sb.st_size, .mtime = sb.st_mtime,
                     .etag = S_ISDIR(sb.st_mode) ? NULL : etag};
    return fn(ctx, &e);
}

/* NULL in *out (and 0) when the directory does not exist: like S3, a
 * prefix with no objects lists as empty. */
static int open_listing(local_store *ls, const char *dir_prefix, DIR **out, walfs_err *err)
{
    char path[PATH_MAX];
    *out = NULL;
    int rc = join(ls, dir_prefix, path, sizeof path, err);
    if (rc)
        return rc;
    *out = opendir(path);
    if (!*out && errno != ENOENT)
        return errno_result(err, errno, "list", path);
    return 0;
}

static int local_list(store *st, const char *dir_prefix, store_list_fn fn, void *ctx,
                      walfs_err *err)
{
    DIR *d;
    int rc = open_listing((local_store *)st, dir_prefix, &d, err);
    if (rc || !d)
        return rc;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && (rc = list_one(d, de, fn, ctx)) == 0) {
    }
    closedir(d);
    return rc;
}

/* A page of a paged listing: about what an S3 page holds. */
#define LOCAL_PAGE 1000

typedef struct local_lister {
    DIR *d;     /* NULL: nothing to list */
} local_lister;

static int local_lister_open(store *st, const char *dir_prefix, void **impl, walfs_err *err)
{
    local_lister *l = calloc(1, sizeof *l);
    if (!l)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    int rc = open_listing((local_store *)st, dir_prefix, &l->d, err);
    if (rc) {
        free(l);
        return rc;
    }
    *impl = l;
    return 0;
}

static int local_lister_next(void *impl, store_list_fn fn, void *ctx, int *done, walfs_err *err)
{
    (void)err;
    local_lister *l = impl;
    *done = 0;
    for (int i = 0; i < LOCAL_PAGE; i++) {
        struct dirent *de = l->d ? readdir(l->d) : NULL;
        if (!de) {
            *done = 1;
            return 0;
        }
        int rc = list_one(l->d, de, fn, ctx);
        if (rc)
            return rc;
    }
    return 0;
}

static void local_lister_close(void *impl)
{
    local_lister *l = impl;
    if (l->d)
        closedir(l->d);
    free(l);
}

/* Temporary files of interrupted uploads, two levels deep at most (a
 * backup's directory and its tar_partitions/). */
static void remove_temporaries(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (lstat(path, &sb) != 0)
            continue;
        if (S_ISDIR(sb.st_mode) && depth > 0)
            remove_temporaries(path, depth - 1);
        else if (S_ISREG(sb.st_mode) && strncmp(de->d_name, TMP_MARKER, strlen(TMP_MARKER)) == 0)
            unlink(path);
    }
    closedir(d);
}

static int local_abort_uploads(store *st, const char *dir_prefix, walfs_err *err)
{
    local_store *ls = (local_store *)st;
    char path[PATH_MAX];
    int rc = join(ls, dir_prefix, path, sizeof path, err);
    if (!rc)
        remove_temporaries(path, 1);
    return rc;
}

static void local_destroy(store *st)
{
    local_store *ls = (local_store *)st;
    free(ls->root);
    free(ls->base.url);
    free(ls);
}

static const store_ops local_ops = {
    .stat = local_stat, .get = local_get, .put = local_put,
    .remove = local_remove, .list = local_list, .abort_uploads = local_abort_uploads, .destroy = local_destroy,
    .upload_begin = local_upload_begin, .upload_part = local_upload_part,
    .upload_commit = local_upload_commit, .upload_abort = local_upload_abort,
    .lister_open = local_lister_open, .lister_next = local_lister_next,
    .lister_close = local_lister_close,
};

int store_local_open(const char *root_dir, store **out, walfs_err *err)
{
    struct stat sb;
    if (stat(root_dir, &sb) != 0)
        return walfs_err_set(err, -errno,
                             "archive directory %s: %s (create it first, owned by the user "
                             "running walfs)",
                             root_dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return walfs_err_set(err, -ENOTDIR, "archive %s is not a directory", root_dir);
    local_store *ls = calloc(1, sizeof *ls);
    if (!ls)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    ls->root = strdup(root_dir);
    size_t rl = strlen(ls->root);
    while (rl > 1 && ls->root[rl - 1] == '/')
        ls->root[--rl] = '\0';
    ls->base.ops = &local_ops;
    if (asprintf(&ls->base.url, "file://%s", ls->root) < 0)
        ls->base.url = NULL;
    *out = &ls->base;
    return 0;
}
