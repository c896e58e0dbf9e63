/* The storage interface the filesystem talks to.  Keys are relative to the
 * archive prefix ("wal_005/000000010000000000000003.lzo"); each backend maps
 * them to its own namespace (an S3 bucket and key prefix, or a local
 * directory laid out with the same keys).
 *
 * Every call returns 0 or a negative errno and fills err (see common/err.h):
 * -ENOENT means the backend said the object does not exist, and nothing else
 * does; transient failures are retried inside the backend up to its deadline
 * (common/deadline.h cuts it to the caller's file operation), then give
 * -ETIMEDOUT: the object may exist, the backend just did not answer.  A
 * backend lacking an optional operation gives -ENOTSUP.
 *
 * This is what callers use; backends implement store/store_driver.h. */
#ifndef WALFS_STORE_STORE_H
#define WALFS_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/err.h"

typedef struct store store;
typedef struct store_upload store_upload;

typedef struct store_stat {
    uint64_t size;              /* stored (compressed) bytes */
    time_t mtime;
    char etag[128];             /* changes whenever the content does */
    int64_t uncompressed_size;  /* recorded by walfs at upload; -1 when unknown (e.g. written by WAL-E) */
} store_stat;

typedef struct store_entry {
    const char *name;           /* key relative to the listed prefix, no trailing '/' */
    int is_dir;                 /* a common prefix (sub-"directory") */
    uint64_t size;
    time_t mtime;
    const char *etag;           /* same value store_stat gives; NULL for directories */
} store_entry;

/* Returns 0 to continue, non-zero to stop the listing (that value is returned). */
typedef int (*store_list_fn)(void *ctx, const store_entry *entry);
/* Receives object bytes; returns 0 or a negative errno to abort. */
typedef int (*store_sink_fn)(void *ctx, const void *data, size_t len);

/* Options for opening a store from a URL; S3 settings are ignored for file://. */
struct s3_config;
int store_open(const char *url, const struct s3_config *s3cfg, store **out, walfs_err *err);
/* One backend directly (store/local.c, store/s3.c). */
int store_local_open(const char *root_dir, store **out, walfs_err *err);
int store_s3_open(const struct s3_config *cfg, const char *bucket, const char *key_prefix,
                  store **out, walfs_err *err);
void store_close(store *st);

/* "s3://bucket/prefix" or "file:///path", for messages; "" when unknown. */
const char *store_url(const store *st);

int store_stat_key(store *st, const char *key, store_stat *out, walfs_err *err);
/* length 0 = to the end */
int store_get(store *st, const char *key, uint64_t off, uint64_t len, store_sink_fn sink,
              void *ctx, walfs_err *err);
/* Stores body atomically under key: readers see the old object or the
 * whole new one, never a part.  uncompressed_size < 0 = not recorded. */
int store_put(store *st, const char *key, const void *body, size_t len,
              int64_t uncompressed_size, walfs_err *err);
/* store_put with the body's SHA-256 already known (hex, or NULL), which
 * spares a backend that signs the body hashing it again. */
int store_put_hashed(store *st, const char *key, const void *body, size_t len,
                     const char *sha256_hex, int64_t uncompressed_size, walfs_err *err);
int store_remove(store *st, const char *key, walfs_err *err);
/* One level under dir_prefix ("wal_005/"), paging through as needed. */
int store_list(store *st, const char *dir_prefix, store_list_fn fn, void *ctx, walfs_err *err);

/* Streaming upload of an object too large to hold: parts arrive in order;
 * nothing is visible under key until commit succeeds, and abort leaves
 * nothing behind.  Each part but the last is >= 5 MiB.  commit and abort
 * free up. */
int store_upload_begin(store *st, const char *key, store_upload **out, walfs_err *err);
int store_upload_part(store *st, store_upload *up, const void *data, size_t len,
                      walfs_err *err);
int store_upload_commit(store *st, store_upload *up, walfs_err *err);
void store_upload_abort(store *st, store_upload *up);
/* Removes what interrupted streaming uploads under dir_prefix left (S3:
 * unfinished multipart uploads; local: temporary files). */
int store_abort_uploads(store *st, const char *dir_prefix, walfs_err *err);

/* The local backend's temporary files start with this and are neither
 * listed nor kept, so no object name may: it would be stored and never
 * seen again. */
#define STORE_RESERVED_PREFIX ".walfs-tmp."

/* The listing of dir_prefix a page at a time, for a reader that takes it
 * at its own pace (readdir): memory is one page, whatever the number of
 * entries.  Each store_lister_next delivers the next page's entries to fn
 * (one request, under the caller's deadline scope) and sets *done after
 * the last; an error leaves the lister where it was. */
typedef struct store_lister store_lister;
int store_lister_open(store *st, const char *dir_prefix, store_lister **out, walfs_err *err);
int store_lister_next(store_lister *l, store_list_fn fn, void *ctx, int *done, walfs_err *err);
void store_lister_close(store_lister *l);

#endif
