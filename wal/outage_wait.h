/* Waiting through an outage on the restore path.
 *
 * PostgreSQL takes any failed restore_command for "this segment is not in
 * the archive" and, in archive recovery, ends recovery there and promotes:
 * an outage reported as EIO loses every transaction after that point.  So a
 * read of wal_005 retries a transient failure (-ETIMEDOUT from the store)
 * for as long as it lasts, or up to an operator's limit, logging when it
 * starts waiting, about once a minute while it waits, and when it is over.
 *
 * Knows nothing of FUSE or S3: the caller says what counts as transient
 * (only -ETIMEDOUT here) and when to stop waiting (an interrupted request,
 * an unmount). */
#ifndef WALFS_WAL_OUTAGE_WAIT_H
#define WALFS_WAL_OUTAGE_WAIT_H

#include <stdint.h>

#include "common/err.h"

typedef struct outage_wait {
    char what[200];             /* "lookup wal_005/X.lzo", for the log */
    uint64_t limit_ms;          /* 0: no limit */
    int (*stop)(void *ctx);     /* non-zero: give up now (the caller went away) */
    void *stop_ctx;
    uint64_t started_ms;        /* 0 until the first transient failure */
    uint64_t last_log_ms;
    char since[32];             /* wall clock of the first failure */
    unsigned retries;
} outage_wait;

void outage_wait_init(outage_wait *w, const char *what, uint64_t limit_ms,
                      int (*stop)(void *ctx), void *stop_ctx);

/* After a failed attempt with result rc: 1 when the caller should try
 * again (this call has slept a backoff pause), 0 when rc is final.  When
 * the wait ends by the limit or by stop, err says so (and rc stays). */
int outage_wait_retry(outage_wait *w, int rc, walfs_err *err);

/* After the last attempt: logs that the outage is over if it waited. */
void outage_wait_end(outage_wait *w, int rc);

#endif
