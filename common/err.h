/* Error reporting shared by every module.
 *
 * Every fallible function returns 0 on success or a negative errno value, and
 * fills a walfs_err with a sentence a user can act on: what failed, on which
 * object, and what to do.  The errno is chosen for what the filesystem layer
 * must tell the kernel: -ENOENT only when the store said the object does not
 * exist, -EACCES for rejected credentials, -ETIMEDOUT when the store did not
 * answer within the deadline (the object may exist: a reader waits and asks
 * again), -EIO for other failures that are not the caller's fault (corrupt
 * data, a malformed answer).  Secrets never go in here. */
#ifndef WALFS_COMMON_ERR_H
#define WALFS_COMMON_ERR_H

#include <stddef.h>

#define WALFS_ERR_MSG_MAX 1024

typedef struct walfs_err {
    int code;                       /* negative errno, 0 when no error */
    char msg[WALFS_ERR_MSG_MAX];    /* human-readable, single line */
} walfs_err;

/* Records code and a printf-formatted message; returns code so callers can
 * write `return walfs_err_set(err, -EIO, "...")`.  err may be NULL.  A
 * message too long for msg (a long key name in it) keeps its beginning and
 * its end, where the reason and what to do are, and loses the middle. */
int walfs_err_set(walfs_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends context ("GET s3://b/k: ") to an existing message; returns err->code. */
int walfs_err_prefix(walfs_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void walfs_err_clear(walfs_err *err);

/* The one errno policy: code as a user sees it.  Errors a user can act on
 * (missing, refused, exists, out of space or memory, read-only, no data,
 * invalid, name too long, too big, too many open) keep their errno; every
 * other failure (timeouts, corrupt data, server errors) becomes -EIO, so it
 * is never mistaken for "missing". */
int walfs_err_user_code(int code);

/* The first position at or after at (at most len) that starts a UTF-8
 * character: where a long message may be cut. */
size_t walfs_char_start(const char *s, size_t len, size_t at);

#endif
