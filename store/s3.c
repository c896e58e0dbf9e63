/* S3 backend: keys live under the archive's key prefix in one bucket.  The
 * uncompressed size travels as user metadata, which WAL-E ignores, so
 * getattr on an object walfs wrote needs no download. */
#include "store/store_driver.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "s3/s3_client.h"

#define META_UNCOMPRESSED "walfs-uncompressed-size"

typedef struct s3_store {
    store base;
    s3_client *client;
    char *prefix;   /* "" or ending in '/' */
} s3_store;

static char *full_key(const s3_store *ss, const char *key)
{
    char *k = NULL;
    if (asprintf(&k, "%s%s", ss->prefix, key) < 0)
        return NULL;
    return k;
}

static int s3s_stat(store *st, const char *key, store_stat *out, walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    char *k = full_key(ss, key);
    if (!k)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    s3_object_info info;
    int rc = s3_head(ss->client, k, &info, err);
    free(k);
    if (rc)
        return rc;
    memset(out, 0, sizeof *out);
    out->size = info.size;
    out->mtime = info.last_modified;
    snprintf(out->etag, sizeof out->etag, "%s", info.etag);
    out->uncompressed_size = -1;
    for (int i = 0; i < info.n_meta; i++) {
        if (strcmp(info.meta[i].name, META_UNCOMPRESSED) == 0) {
            char *end;
            long long v = strtoll(info.meta[i].value, &end, 10);
            if (*end == '\0' && end != info.meta[i].value && v >= 0)
                out->uncompressed_size = v;
        }
    }
    return 0;
}

static int s3s_get(store *st, const char *key, uint64_t offset, uint64_t length,
                   store_sink_fn sink, void *ctx, walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    char *k = full_key(ss, key);
    if (!k)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    int rc = s3_get(ss->client, k, offset, length, sink, ctx, err);
    free(k);
    return rc;
}

static int s3s_put_hashed(store *st, const char *key, const void *body, size_t len,
                          const char *sha256_hex, int64_t uncompressed_size, walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    char *k = full_key(ss, key);
    if (!k)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    s3_meta meta;
    int n_meta = 0;
    if (uncompressed_size >= 0) {
        snprintf(meta.name, sizeof meta.name, "%s", META_UNCOMPRESSED);
        snprintf(meta.value, sizeof meta.value, "%lld", (long long)uncompressed_size);
        n_meta = 1;
    }
    int rc = s3_put_hashed(ss->client, k, body, len, sha256_hex, n_meta ? &meta : NULL, n_meta,
                           err);
    free(k);
    return rc;
}

static int s3s_put(store *st, const char *key, const void *body, size_t len,
                   int64_t uncompressed_size, walfs_err *err)
{
    return s3s_put_hashed(st, key, body, len, NULL, uncompressed_size, err);
}

static int s3s_remove(store *st, const char *key, walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    char *k = full_key(ss, key);
    if (!k)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    int rc = s3_delete(ss->client, k, err);
    free(k);
    return rc;
}

/* A streaming upload is a multipart upload numbered as the parts arrive. */
typedef struct s3_upload {
    s3_multipart *mp;
    int next_part;
} s3_upload;

static int s3s_upload_begin(store *st, const char *key, store_upload **out, walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    *out = NULL;
    s3_upload *up = calloc(1, sizeof *up);
    char *k = full_key(ss, key);
    if (!up || !k) {
        free(up);
        free(k);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    int rc = s3_multipart_begin(ss->client, k, NULL, 0, &up->mp, err);
    free(k);
    if (rc) {
        free(up);
        return rc;
    }
    up->next_part = 1;
    *out = (store_upload *)up;
    return 0;
}

static int s3s_upload_part(store *st, store_upload *u, const void *data, size_t len, walfs_err *err)
{
    s3_upload *up = (s3_upload *)u;
    int rc = s3_multipart_upload_part(up->mp, up->next_part, data, len, err);
    if (rc == 0)
        up->next_part++;
    return rc;
}

static void s3s_upload_abort(store *st, store_upload *u)
{
    s3_upload *up = (s3_upload *)u;
    if (!up)
        return;
    walfs_err e;
    walfs_err_clear(&e);
    /* An upload left open keeps its parts billed and invisible: say so. */
    if (s3_multipart_abort(up->mp, &e) != 0)
        log_warn("s3: could not abort an incomplete multipart upload (%s); a bucket lifecycle "
                 "rule for incomplete multipart uploads will remove its parts",
                 e.msg);
    s3_multipart_free(up->mp);
    free(up);
}

static int s3s_upload_commit(store *st, store_upload *u, walfs_err *err)
{
    s3_upload *up = (s3_upload *)u;
    int rc = 0;
    /* S3 wants at least one part, and an empty one is a valid last part. */
    if (up->next_part == 1)
        rc = s3s_upload_part(st, u, "", 0, err);
    if (rc == 0)
        rc = s3_multipart_complete(up->mp, err);
    if (rc) {
        s3s_upload_abort(st, u);
        return rc;
    }
    s3_multipart_free(up->mp);
    free(up);
    return 0;
}

typedef struct list_adapter {
    store_list_fn fn;
    void *ctx;
    size_t strip;   /* length of prefix + dir_prefix */
} list_adapter;

static int adapt_entry(void *ctx, const s3_list_entry *e)
{
    list_adapter *a = ctx;
    size_t klen = strlen(e->key);
    if (klen <= a->strip)
        return 0; /* the "directory" marker object itself */
    char name[1024];
    size_t nlen = klen - a->strip;
    if (e->is_prefix && nlen > 0 && e->key[klen - 1] == '/')
        nlen--;
    if (nlen == 0 || nlen >= sizeof name)
        return 0;
    memcpy(name, e->key + a->strip, nlen);
    name[nlen] = '\0';
    store_entry se = {.name = name, .is_dir = e->is_prefix, .size = e->size,
                      .mtime = e->last_modified, .etag = e->is_prefix ? NULL : e->etag};
    return a->fn(a->ctx, &se);
}

static int s3s_list(store *st, const char *dir_prefix, store_list_fn fn, void *ctx,
                    walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    char *k = full_key(ss, dir_prefix);
    if (!k)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    list_adapter a = {.fn = fn, .ctx = ctx, .strip = strlen(k)};
    int rc = s3_list(ss->client, k, "/", adapt_entry, &a, err);
    free(k);
    return rc;
}

typedef struct s3s_lister {
    s3_lister *l;
    list_adapter a;
} s3s_lister;

static int s3s_lister_open(store *st, const char *dir_prefix, void **impl, walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    s3s_lister *sl = calloc(1, sizeof *sl);
    char *k = full_key(ss, dir_prefix);
    int rc = !sl || !k ? walfs_err_set(err, -ENOMEM, "out of memory")
                       : s3_lister_new(ss->client, k, "/", &sl->l, err);
    if (rc == 0)
        sl->a.strip = strlen(k);
    free(k);
    if (rc) {
        free(sl);
        return rc;
    }
    *impl = sl;
    return 0;
}

static int s3s_lister_next(void *impl, store_list_fn fn, void *ctx, int *done, walfs_err *err)
{
    s3s_lister *sl = impl;
    sl->a.fn = fn;
    sl->a.ctx = ctx;
    return s3_lister_next(sl->l, adapt_entry, &sl->a, done, err);
}

static void s3s_lister_close(void *impl)
{
    s3s_lister *sl = impl;
    s3_lister_free(sl->l);
    free(sl);
}

static int s3s_abort_uploads(store *st, const char *dir_prefix, walfs_err *err)
{
    s3_store *ss = (s3_store *)st;
    char *k = full_key(ss, dir_prefix);
    if (!k)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    int rc = s3_abort_multipart_uploads(ss->client, k, err);
    free(k);
    return rc;
}

static void s3s_destroy(store *st)
{
    s3_store *ss = (s3_store *)st;
    s3_client_free(ss->client);
    free(ss->prefix);
    free(ss->base.url);
    free(ss);
}

static const store_ops s3_store_ops = {
    .stat = s3s_stat, .get = s3s_get, .put = s3s_put,
    .remove = s3s_remove, .list = s3s_list, .put_hashed = s3s_put_hashed, .abort_uploads = s3s_abort_uploads, .destroy = s3s_destroy,
    .upload_begin = s3s_upload_begin, .upload_part = s3s_upload_part,
    .upload_commit = s3s_upload_commit, .upload_abort = s3s_upload_abort,
    .lister_open = s3s_lister_open, .lister_next = s3s_lister_next,
    .lister_close = s3s_lister_close,
};

int store_s3_open(const struct s3_config *cfg, const char *bucket, const char *key_prefix,
                  store **out, walfs_err *err)
{
    s3_store *ss = calloc(1, sizeof *ss);
    if (!ss)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    ss->client = s3_client_new(cfg, bucket, err);
    if (!ss->client) {
        free(ss);
        return err && err->code ? err->code : -EINVAL;
    }
    ss->prefix = strdup(key_prefix);
    ss->base.ops = &s3_store_ops;
    if (asprintf(&ss->base.url, "s3://%s/%s", bucket, key_prefix) < 0)
        ss->base.url = NULL;
    *out = &ss->base;
    return 0;
}
