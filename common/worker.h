/* One lifecycle for a module's long-lived threads (a pool of one or more):
 * started late (after the daemon forks: threads started before it are
 * lost), woken through one condition variable when work arrives or at
 * stop, stopped by a flag, joined exactly once.  Stopping a pool that was
 * never started, or stopping it twice, is harmless.
 *
 * The lock is the owner's: it guards the owner's work queue, and the
 * threads wait with it held.  Knows nothing of what the threads do or of
 * their queue; holds no thread-local state. */
#ifndef WALFS_COMMON_WORKER_H
#define WALFS_COMMON_WORKER_H

#include <pthread.h>
#include <stdatomic.h>

#define WORKER_MAX 64

typedef struct worker_pool {
    pthread_mutex_t *lock;
    char name[16];          /* the threads' name (ps -L, top -H) */
    pthread_cond_t wake;
    atomic_int stopping;    /* readable without the lock (a long transfer polls it) */
    pthread_t threads[WORKER_MAX];
    int n_threads;
} worker_pool;

/* No thread yet.  name (at most 15 bytes kept) is what ps -L and top -H
 * show for the threads, so an operator can tell them from FUSE's. */
void worker_init(worker_pool *w, pthread_mutex_t *lock, const char *name);
/* Starts threads running fn(arg) until n run (at most WORKER_MAX); not
 * after worker_stop.  0, or the first pthread_create error (a negative
 * errno), the threads started so far kept. */
int worker_start(worker_pool *w, int n, void *(*fn)(void *), void *arg);
/* With the lock held: wait for a wake; whether the pool is stopping. */
void worker_wait(worker_pool *w);
int worker_stopping(const worker_pool *w);
/* With the lock held: work for one thread, or for all. */
void worker_wake_one(worker_pool *w);
void worker_wake_all(worker_pool *w);
/* Without the lock: waits for the threads to end of themselves (their
 * work drained) and joins them; the flag is not set. */
void worker_join(worker_pool *w);
/* Without the lock: sets the flag, wakes every thread, joins them. */
void worker_stop(worker_pool *w);
/* worker_stop, then frees the condition variable; before the lock is destroyed. */
void worker_destroy(worker_pool *w);

#endif
