#include "common/worker.h"

#include <stdio.h>

void worker_init(worker_pool *w, pthread_mutex_t *lock, const char *name)
{
    w->lock = lock;
    snprintf(w->name, sizeof w->name, "%s", name ? name : "");
    pthread_cond_init(&w->wake, NULL);
    atomic_init(&w->stopping, 0);
    w->n_threads = 0;
}

int worker_start(worker_pool *w, int n, void *(*fn)(void *), void *arg)
{
    if (n > WORKER_MAX)
        n = WORKER_MAX;
    while (!atomic_load(&w->stopping) && w->n_threads < n) {
        int rc = pthread_create(&w->threads[w->n_threads], NULL, fn, arg);
        if (rc)
            return -rc;
        if (w->name[0])
            pthread_setname_np(w->threads[w->n_threads], w->name);
        w->n_threads++;
    }
    return 0;
}

void worker_wait(worker_pool *w)
{
    pthread_cond_wait(&w->wake, w->lock);
}

int worker_stopping(const worker_pool *w)
{
    return atomic_load(&w->stopping);
}

void worker_wake_one(worker_pool *w)
{
    pthread_cond_signal(&w->wake);
}

void worker_wake_all(worker_pool *w)
{
    pthread_cond_broadcast(&w->wake);
}

void worker_join(worker_pool *w)
{
    /* Joined once: the count goes to 0 with the threads. */
    for (int i = 0; i < w->n_threads; i++)
        pthread_join(w->threads[i], NULL);
    w->n_threads = 0;
}

void worker_stop(worker_pool *w)
{
    pthread_mutex_lock(w->lock);
    atomic_store(&w->stopping, 1);
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(w->lock);
    worker_join(w);
}

void worker_destroy(worker_pool *w)
{
    worker_stop(w);
    pthread_cond_destroy(&w->wake);
}
