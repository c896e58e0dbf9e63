/* A small S3 client on libcurl + OpenSSL: SigV4, path-style or
 * virtual-hosted addressing, retries with backoff and jitter under a total
 * deadline (--deadline, cut to the calling thread's common/deadline.h scope),
 * connection reuse.  Knows nothing of FUSE or lzop.
 *
 * Every call returns 0 or a negative errno and fills err:
 *   -ENOENT  the server answered 404 (NoSuchKey / NoSuchBucket: the message says which)
 *   -EACCES  403 (bad credentials, signature mismatch, access denied, skewed clock)
 *   -EEXIST  412 precondition failed
 *   -ETIMEDOUT  transient failures (network, timeouts, stalls, 5xx, throttling) were
 *            retried until the deadline: the server never said; ask again later
 *   -EIO     anything else that is final (a TLS certificate refused, a malformed
 *            answer, an object that changed mid-read, a failing consumer)
 *   -EINVAL  bad configuration
 * Thread-safe: one client can be used from many threads at once. */
#ifndef WALFS_S3_S3_CLIENT_H
#define WALFS_S3_S3_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/err.h"

typedef struct s3_config {
    const char *endpoint;        /* "http://127.0.0.1:7480" or "https://host"; NULL = https://s3.<region>.amazonaws.com */
    const char *region;          /* default "us-east-1" */
    int path_style;              /* 1: http://host/bucket/key  0: http://bucket.host/key */
    const char *access_key;
    const char *secret_key;
    const char *session_token;   /* NULL when none */
    const char *sse;             /* NULL, or "AES256" sent as x-amz-server-side-encryption on PUT/multipart create */
    const char *storage_class;   /* NULL, or sent as x-amz-storage-class */
    const char *ca_file;         /* NULL = system store */
    int insecure_skip_verify;    /* 0 = verify TLS certificates (default) */
    long connect_timeout_ms;     /* per attempt; default 5000 */
    long low_speed_time_s;       /* abort an attempt slower than low_speed_limit for this long; default 15 */
    long low_speed_limit;        /* bytes/s; default 1024 */
    long deadline_ms;            /* total time for one operation including retries; default 60000 */
    size_t multipart_threshold;  /* s3_put switches to multipart at this size; default 64 MiB */
    size_t multipart_part_size;  /* default 16 MiB (>= 5 MiB) */
} s3_config;

typedef struct s3_client s3_client;

/* Copies everything it needs from cfg. */
s3_client *s3_client_new(const s3_config *cfg, const char *bucket, walfs_err *err);
void s3_client_free(s3_client *c);
/* "s3://bucket" — for messages. */
const char *s3_client_bucket(const s3_client *c);

#define S3_MAX_META 8
typedef struct s3_meta {
    char name[64];     /* without the x-amz-meta- prefix, lower case */
    char value[256];
} s3_meta;

typedef struct s3_object_info {
    uint64_t size;
    time_t last_modified;
    char etag[128];            /* with quotes stripped */
    s3_meta meta[S3_MAX_META];
    int n_meta;
} s3_object_info;

int s3_head(s3_client *c, const char *key, s3_object_info *out, walfs_err *err);

/* Body bytes are passed to sink as they arrive.  A transient failure
 * mid-body is retried from the next undelivered byte with If-Match on the
 * ETag, so the sink sees every byte exactly once.  length 0 = to the end. */
typedef int (*s3_sink_fn)(void *ctx, const void *data, size_t len);
int s3_get(s3_client *c, const char *key, uint64_t offset, uint64_t length,
           s3_sink_fn sink, void *ctx, walfs_err *err);

/* Uploads body with x-amz-content-sha256 and Content-MD5, so the server
 * verifies it; above multipart_threshold uses multipart upload (aborted on
 * failure).  meta may be NULL. */
int s3_put(s3_client *c, const char *key, const void *body, size_t len,
           const s3_meta *meta, int n_meta, walfs_err *err);

/* The same, with the body's SHA-256 (64 lower-case hex digits) computed by
 * the caller, so it is not hashed twice; the server still verifies it. */
int s3_put_hashed(s3_client *c, const char *key, const void *body, size_t len,
                  const char *sha256_hex, const s3_meta *meta, int n_meta, walfs_err *err);

int s3_delete(s3_client *c, const char *key, walfs_err *err);

typedef struct s3_list_entry {
    const char *key;          /* full key, or common prefix when is_prefix */
    int is_prefix;
    uint64_t size;
    time_t last_modified;
    const char *etag;
} s3_list_entry;
/* Return non-zero from the callback to stop (that value is returned). */
typedef int (*s3_list_fn)(void *ctx, const s3_list_entry *entry);
/* ListObjectsV2, following continuation tokens, within one deadline for
 * the whole listing.  delimiter may be NULL.  The listing is checked to
 * end: a page that repeats the token it was asked for, or is truncated
 * with no token or no entry after the previous pages', fails it (-EIO).
 * Entries that cannot be in it (not under prefix, past the delimiter, a
 * size that is no number) are skipped and logged. */
int s3_list(s3_client *c, const char *prefix, const char *delimiter,
            s3_list_fn fn, void *ctx, walfs_err *err);

/* The same listing a page at a time, for a consumer that goes at its own
 * pace (a directory being read): memory is one page, whatever the number
 * of keys.  Each s3_lister_next is one request (with its retries) under
 * the caller's deadline scope; *done is set after the last page. */
typedef struct s3_lister s3_lister;
int s3_lister_new(s3_client *c, const char *prefix, const char *delimiter, s3_lister **out,
                  walfs_err *err);
int s3_lister_next(s3_lister *l, s3_list_fn fn, void *ctx, int *done, walfs_err *err);
void s3_lister_free(s3_lister *l);

/* Multipart upload, for streaming writers that do not hold the whole object. */
typedef struct s3_multipart s3_multipart;
int s3_multipart_begin(s3_client *c, const char *key, const s3_meta *meta, int n_meta,
                       s3_multipart **out, walfs_err *err);
/* part numbers from 1, each >= 5 MiB except the last */
int s3_multipart_upload_part(s3_multipart *mp, int part_number, const void *body,
                             size_t len, walfs_err *err);
/* Parses the body: a 200 carrying <Error> is an error. */
int s3_multipart_complete(s3_multipart *mp, walfs_err *err);
int s3_multipart_abort(s3_multipart *mp, walfs_err *err);
void s3_multipart_free(s3_multipart *mp);

/* Aborts every unfinished multipart upload whose key starts with prefix
 * (what a crashed writer leaves behind: invisible, but stored and billed). */
int s3_abort_multipart_uploads(s3_client *c, const char *prefix, walfs_err *err);

/* Parses WAL-E's WALE_S3_ENDPOINT ("http+path://host:port",
 * "https+virtualhost://host", "https+subdomain://host") into cfg-ready parts.
 * endpoint_out receives "http://host:port" (malloc'd). */
int s3_parse_wale_endpoint(const char *spec, char **endpoint_out, int *path_style,
                           walfs_err *err);

#endif
