/* Opening a store from the URL the user gives: s3://bucket/prefix or
 * file:///path.  WAL-E's prefix rules apply: "s3://b/p" and "s3://b/p/" are
 * the same archive, an empty path is the bucket root. */
#include "store/store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "s3/s3_client.h"
#include "store/store_driver.h"

void store_close(store *st)
{
    if (st)
        st->ops->destroy(st);
}

const char *store_url(const store *st)
{
    return st->url ? st->url : "";
}

int store_stat_key(store *st, const char *key, store_stat *out, walfs_err *err)
{
    return st->ops->stat(st, key, out, err);
}

int store_get(store *st, const char *key, uint64_t off, uint64_t len, store_sink_fn sink,
              void *ctx, walfs_err *err)
{
    return st->ops->get(st, key, off, len, sink, ctx, err);
}

int store_put(store *st, const char *key, const void *body, size_t len,
              int64_t uncompressed_size, walfs_err *err)
{
    return st->ops->put(st, key, body, len, uncompressed_size, err);
}

int store_put_hashed(store *st, const char *key, const void *body, size_t len,
                     const char *sha256_hex, int64_t uncompressed_size, walfs_err *err)
{
    if (st->ops->put_hashed && sha256_hex)
        return st->ops->put_hashed(st, key, body, len, sha256_hex, uncompressed_size, err);
    return st->ops->put(st, key, body, len, uncompressed_size, err);
}

int store_remove(store *st, const char *key, walfs_err *err)
{
    return st->ops->remove(st, key, err);
}

int store_list(store *st, const char *dir_prefix, store_list_fn fn, void *ctx, walfs_err *err)
{
    return st->ops->list(st, dir_prefix, fn, ctx, err);
}

/* A driver has all four upload operations or none (store_driver.h). */
static int no_uploads(store *st, const char *key, walfs_err *err)
{
    return walfs_err_set(err, -ENOTSUP, "cannot upload %s to %s in parts: this store does not "
                         "support streaming uploads", key, store_url(st));
}

int store_upload_begin(store *st, const char *key, store_upload **out, walfs_err *err)
{
    if (!st->ops->upload_begin)
        return no_uploads(st, key, err);
    return st->ops->upload_begin(st, key, out, err);
}

int store_upload_part(store *st, store_upload *up, const void *data, size_t len,
                      walfs_err *err)
{
    if (!st->ops->upload_part)
        return no_uploads(st, "an object", err);
    return st->ops->upload_part(st, up, data, len, err);
}

int store_upload_commit(store *st, store_upload *up, walfs_err *err)
{
    if (!st->ops->upload_commit)
        return no_uploads(st, "an object", err);
    return st->ops->upload_commit(st, up, err);
}

void store_upload_abort(store *st, store_upload *up)
{
    if (st->ops->upload_abort)
        st->ops->upload_abort(st, up);
}

int store_abort_uploads(store *st, const char *dir_prefix, walfs_err *err)
{
    if (!st->ops->abort_uploads)
        return walfs_err_set(err, -ENOTSUP, "cannot look for unfinished uploads under %s in %s: "
                             "this store does not support streaming uploads", dir_prefix,
                             store_url(st));
    return st->ops->abort_uploads(st, dir_prefix, err);
}

struct store_lister {
    store *st;
    void *impl;     /* the backend's; NULL: one list call is the only page */
    char *dir;
    int done;
};

int store_lister_open(store *st, const char *dir_prefix, store_lister **out, walfs_err *err)
{
    *out = NULL;
    store_lister *l = calloc(1, sizeof *l);
    if (!l || !(l->dir = strdup(dir_prefix))) {
        free(l);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    l->st = st;
    if (st->ops->lister_open) {
        int rc = st->ops->lister_open(st, dir_prefix, &l->impl, err);
        if (rc) {
            free(l->dir);
            free(l);
            return rc;
        }
    }
    *out = l;
    return 0;
}

int store_lister_next(store_lister *l, store_list_fn fn, void *ctx, int *done, walfs_err *err)
{
    if (l->impl)
        return l->st->ops->lister_next(l->impl, fn, ctx, done, err);
    *done = l->done;
    if (l->done)
        return 0;
    int rc = store_list(l->st, l->dir, fn, ctx, err);
    if (rc == 0)
        l->done = *done = 1;
    return rc;
}

void store_lister_close(store_lister *l)
{
    if (!l)
        return;
    if (l->impl)
        l->st->ops->lister_close(l->impl);
    free(l->dir);
    free(l);
}

static int open_s3_url(const char *rest, const s3_config *cfg, store **out, walfs_err *err)
{
    const char *slash = strchr(rest, '/');
    size_t bucket_len = slash ? (size_t)(slash - rest) : strlen(rest);
    if (bucket_len == 0)
        return walfs_err_set(err, -EINVAL,
                             "archive prefix has no bucket: expected s3://BUCKET/PREFIX");
    char *bucket = strndup(rest, bucket_len);
    const char *path = slash ? slash + 1 : "";
    while (*path == '/')
        path++;
    size_t plen = strlen(path);
    char *prefix = malloc(plen + 2);
    if (!bucket || !prefix) {
        free(bucket);
        free(prefix);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    memcpy(prefix, path, plen + 1);
    if (plen > 0 && prefix[plen - 1] != '/')
        strcat(prefix, "/");
    if (strstr(prefix, "//")) {
        free(bucket);
        free(prefix);
        return walfs_err_set(err, -EINVAL,
                             "archive prefix s3://%s contains an empty path component ('//'): "
                             "WAL-E writes such keys without it, so the archive would not match",
                             rest);
    }
    int rc = store_s3_open(cfg, bucket, prefix, out, err);
    free(bucket);
    free(prefix);
    return rc;
}

int store_open(const char *url, const struct s3_config *s3cfg, store **out, walfs_err *err)
{
    *out = NULL;
    if (strncmp(url, "s3://", 5) == 0) {
        if (!s3cfg)
            return walfs_err_set(err, -EINVAL, "no S3 settings for %s", url);
        return open_s3_url(url + 5, s3cfg, out, err);
    }
    if (strncmp(url, "file://", 7) == 0) {
        const char *path = url + 7;
        if (strncmp(path, "localhost/", 10) == 0) /* WAL-E's file://localhost/path form */
            path += 9;
        if (path[0] != '/')
            return walfs_err_set(err, -EINVAL,
                                 "%s: a file:// prefix needs an absolute path (file:///var/lib/walfs)",
                                 url);
        return store_local_open(path, out, err);
    }
    if (url[0] == '/')
        return store_local_open(url, out, err);
    return walfs_err_set(err, -EINVAL,
                         "unsupported archive prefix '%s': use s3://BUCKET/PREFIX or file:///PATH",
                         url);
}
