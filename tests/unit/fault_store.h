/* A store for the unit tests that wraps another one (usually the local
 * store) and injects faults: the Nth call of an operation, and optionally
 * the ones after it, fails with a chosen errno (a transient -ETIMEDOUT, a
 * hard -EIO, -EACCES, ...); a failing GET may first deliver some bytes (a
 * connection reset mid-stream); any operation can be slowed down, or held
 * until the test lets it go; every call is counted.  Thread-safe: the
 * wrapped store is never called with the fault store's lock held.
 *
 * Knows the store driver table (store/store.h) and nothing of what the
 * tests store.  Injected errors say "injected" and name the key. */
#ifndef WALFS_TESTS_FAULT_STORE_H
#define WALFS_TESTS_FAULT_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

typedef enum fault_op {
    FAULT_STAT,         /* HEAD */
    FAULT_GET,
    FAULT_PUT,          /* put and put_hashed */
    FAULT_REMOVE,
    FAULT_LIST,         /* list, and each page of a lister */
    FAULT_UPLOAD_BEGIN,
    FAULT_UPLOAD_PART,
    FAULT_UPLOAD_COMMIT,
    FAULT_N_OPS
} fault_op;

/* Wraps inner.  owns_inner: store_close of the fault store closes inner. */
store *fault_store_wrap(store *inner, int owns_inner);
/* A local store at root, wrapped (and owned); NULL on error. */
store *fault_store_open_local(const char *root);
store *fault_store_inner(store *fs);

/* Calls nth, nth+1, ... (counted from 1 since the wrap or the last
 * fault_store_reset, failed ones included) fail with error (a negative
 * errno): count of them, or every one from nth when count < 0.  nth 0
 * removes the rule.  One rule per operation; a new one replaces it. */
void fault_store_fail(store *fs, fault_op op, unsigned nth, int count, int error);
/* A failing GET first delivers this many bytes (then fails with the rule's
 * error, as a connection reset would); UINT64_MAX (the default) fails it
 * before it starts.  A GET that ends before the cut succeeds. */
void fault_store_fail_get_after(store *fs, uint64_t bytes);
/* The first call of op from now on whose key (a listing's: its prefix)
 * contains key_part ("" or NULL: any key) waits, before it reaches the
 * inner store, until fault_store_unblock or fault_store_reset: a test holds
 * an operation in flight to see what its caller blocks meanwhile.  It is
 * counted before it waits; later calls pass.  A new rule for op replaces
 * the old one and lets a call that one holds go on. */
void fault_store_block(store *fs, fault_op op, const char *key_part);
/* 1 once a call is held by op's rule (waits up to timeout_ms for it), 0 if
 * none is. */
int fault_store_wait_blocked(store *fs, fault_op op, unsigned timeout_ms);
/* Removes op's rule; the call it holds goes on. */
void fault_store_unblock(store *fs, fault_op op);
/* Each call of op sleeps this long first (0: none). */
void fault_store_delay(store *fs, fault_op op, unsigned delay_us);
/* Forgets the rules, delays and counts; a held call goes on. */
void fault_store_reset(store *fs);

unsigned fault_store_calls(const store *fs, fault_op op);
unsigned fault_store_failures(const store *fs, fault_op op);
/* Bytes the GETs delivered to their callers. */
uint64_t fault_store_get_bytes(const store *fs);
/* The size of the i-th upload_part call (from 0; the first 64 are kept),
 * 0 past them. */
size_t fault_store_part_size(const store *fs, unsigned i);

#endif
