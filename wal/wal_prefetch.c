#include "wal/wal_prefetch.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/worker.h"
#include "pg/lsn.h"
#include "wale/layout.h"

#define QUEUE_MAX 32
#define WORKERS 2

struct wal_prefetch {
    store *st;
    object_cache *cache;
    int depth;
    pthread_mutex_t lock;
    char queue[QUEUE_MAX][25];
    int head, count;
    char recent[QUEUE_MAX][25];     /* queued or fetched lately: not queued again */
    int recent_next;
    worker_pool pool;
};

int wal_segment_name_after(const char *name, uint64_t segment_size, int ahead, char out[25])
{
    uint32_t timeline;
    uint64_t segno;
    if (pg_segment_parse(name, segment_size, &timeline, &segno) != 0)
        return -1;
    pg_segment_name(timeline, segno + (uint64_t)ahead, segment_size, out);
    return 0;
}

static int recently_seen(wal_prefetch *p, const char *name)
{
    for (int i = 0; i < QUEUE_MAX; i++)
        if (strcmp(p->recent[i], name) == 0)
            return 1;
    return 0;
}

/* Returns 1 when the segment is now in the cache. */
static int fetch_one(wal_prefetch *p, const char *name)
{
    char key[WALE_KEY_MAX];
    wale_wal_key(key, sizeof key, name);
    walfs_err err = {0};
    store_stat meta;
    int rc = store_stat_key(p->st, key, &meta, &err);
    if (rc == -ENOENT)
        return 0; /* not archived yet: the standby will ask again */
    if (rc == 0) {
        uint64_t size;
        rc = object_cache_prefetch(p->cache, key, &meta, &size, &err);
        if (rc == 0) {
            log_debug("prefetched %s (%llu bytes)", key, (unsigned long long)size);
            return 1;
        }
    }
    /* Not fatal: the reader will fetch it itself and report the error. */
    log_debug("prefetch of %s failed: %s", key, err.msg);
    return 0;
}

static void *worker(void *arg)
{
    wal_prefetch *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!worker_stopping(&p->pool) && p->count == 0)
            worker_wait(&p->pool);
        if (worker_stopping(&p->pool))
            break;
        char name[25];
        memcpy(name, p->queue[p->head], sizeof name);
        p->head = (p->head + 1) % QUEUE_MAX;
        p->count--;
        pthread_mutex_unlock(&p->lock);
        int cached = fetch_one(p, name);
        pthread_mutex_lock(&p->lock);
        /* Forget a segment that is not there yet, so the next hint tries it
         * again once it has been archived. */
        for (int i = 0; !cached && i < QUEUE_MAX; i++)
            if (strcmp(p->recent[i], name) == 0)
                p->recent[i][0] = '\0';
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

wal_prefetch *wal_prefetch_new(store *st, object_cache *cache, int depth)
{
    wal_prefetch *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->st = st;
    p->cache = cache;
    p->depth = depth > QUEUE_MAX ? QUEUE_MAX : depth;
    pthread_mutex_init(&p->lock, NULL);
    worker_init(&p->pool, &p->lock, "walfs-prefetch");
    return p;
}

void wal_prefetch_start(wal_prefetch *p)
{
    /* Without threads, hints are ignored: readers fetch for themselves. */
    if (p->depth > 0)
        worker_start(&p->pool, WORKERS, worker, p);
}

void wal_prefetch_free(wal_prefetch *p)
{
    if (!p)
        return;
    worker_destroy(&p->pool);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void wal_prefetch_after(wal_prefetch *p, const char *name, uint64_t segment_size)
{
    if (!p || p->pool.n_threads == 0)
        return;
    pthread_mutex_lock(&p->lock);
    /* The reader is past what is still queued behind name: nobody needs it
     * any more (in an outage such work would only keep retrying). */
    int kept = 0;
    for (int i = 0; i < p->count; i++) {
        const char *queued = p->queue[(p->head + i) % QUEUE_MAX];
        if (strcmp(queued, name) > 0)
            memmove(p->queue[(p->head + kept++) % QUEUE_MAX], queued, 25);
    }
    p->count = kept;
    for (int ahead = 1; ahead <= p->depth; ahead++) {
        char next[25];
        if (wal_segment_name_after(name, segment_size, ahead, next) != 0)
            break;
        if (recently_seen(p, next) || p->count == QUEUE_MAX)
            continue;
        memcpy(p->queue[(p->head + p->count) % QUEUE_MAX], next, sizeof next);
        p->count++;
        memcpy(p->recent[p->recent_next], next, sizeof next);
        p->recent_next = (p->recent_next + 1) % QUEUE_MAX;
    }
    worker_wake_all(&p->pool);
    pthread_mutex_unlock(&p->lock);
}
