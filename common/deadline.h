/* One deadline for one file operation, shared by every request it makes.
 *
 * A `cp` into the archive makes several requests (a HEAD for its stat, one
 * for the create, the upload); each used to get the whole --deadline, so one
 * cp could take several times the deadline.  A file operation opens a scope
 * on its thread; every request inside it gets only what is left.  Outside a
 * scope, requests use their own default budget.
 *
 * Knows nothing of S3 or FUSE: it is a thread-local absolute time. */
#ifndef WALFS_COMMON_DEADLINE_H
#define WALFS_COMMON_DEADLINE_H

#include <stdint.h>

/* Milliseconds on the monotonic clock. */
uint64_t deadline_now_ms(void);

/* Opens a scope ending budget_ms from now, unless the calling thread's
 * current scope ends sooner (a scope never extends an outer one).  Returns
 * the previous end, for deadline_scope_end. */
uint64_t deadline_scope_begin(uint64_t budget_ms);
void deadline_scope_end(uint64_t previous_end);

/* Milliseconds a request may take now: default_ms, cut to what is left of
 * the thread's scope (0 when it has passed). */
uint64_t deadline_budget_ms(uint64_t default_ms);

/* A flag that, once set, makes the calling thread's requests stop at once
 * (a background job at unmount).  NULL: none. */
void deadline_cancel_on(const _Atomic int *flag);
/* The same for a condition only a predicate can tell (the FUSE request
 * this thread serves was interrupted: its caller is gone), polled while
 * requests run and between their attempts.  NULL: none. */
void deadline_stop_when(int (*stop)(void *ctx), void *ctx);
int deadline_cancelled(void);

#endif
