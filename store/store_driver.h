/* What a storage backend implements: the table of operations behind
 * store/store.h, whose wrappers (store/store.c) are the only callers.
 *
 * Required (never NULL): stat, get, put, remove, list, destroy.
 * Optional (NULL when the backend cannot):
 *   upload_begin, upload_part, upload_commit, upload_abort: all four or
 *       none; without them store_upload_begin gives -ENOTSUP;
 *   put_hashed: without it store_put_hashed uses put;
 *   abort_uploads: without it store_abort_uploads gives -ENOTSUP;
 *   lister_open, lister_next, lister_close: all three or none; without
 *       them a lister delivers the whole list as one page.
 * Semantics of each operation: the wrapper's comment in store/store.h. */
#ifndef WALFS_STORE_STORE_DRIVER_H
#define WALFS_STORE_STORE_DRIVER_H

#include "store/store.h"

typedef struct store_ops {
    int (*stat)(store *st, const char *key, store_stat *out, walfs_err *err);
    int (*get)(store *st, const char *key, uint64_t offset, uint64_t length,
               store_sink_fn sink, void *ctx, walfs_err *err);
    int (*put)(store *st, const char *key, const void *body, size_t len,
               int64_t uncompressed_size, walfs_err *err);
    int (*remove)(store *st, const char *key, walfs_err *err);
    int (*list)(store *st, const char *dir_prefix, store_list_fn fn, void *ctx, walfs_err *err);
    void (*destroy)(store *st);
    /* S3: a multipart upload; local: a temporary file renamed into place.
     * st is the store upload_begin was called on. */
    int (*upload_begin)(store *st, const char *key, store_upload **out, walfs_err *err);
    int (*upload_part)(store *st, store_upload *up, const void *data, size_t len,
                       walfs_err *err);
    int (*upload_commit)(store *st, store_upload *up, walfs_err *err);   /* frees up */
    void (*upload_abort)(store *st, store_upload *up);                   /* frees up */
    int (*put_hashed)(store *st, const char *key, const void *body, size_t len,
                      const char *sha256_hex, int64_t uncompressed_size, walfs_err *err);
    int (*abort_uploads)(store *st, const char *dir_prefix, walfs_err *err);
    int (*lister_open)(store *st, const char *dir_prefix, void **impl, walfs_err *err);
    int (*lister_next)(void *impl, store_list_fn fn, void *ctx, int *done, walfs_err *err);
    void (*lister_close)(void *impl);
} store_ops;

/* The first member of every backend's own struct. */
struct store {
    const store_ops *ops;
    char *url;                  /* "s3://bucket/prefix" or "file:///path", for messages */
};

#endif
