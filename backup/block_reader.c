/* Random access into lzop partitions: see block_reader.h.
 *
 * One cache of decoded blocks, keyed by (object key, ETag, block number) so
 * a replaced object can never be served from blocks of its predecessor.
 * Entries are either in flight (someone is fetching them; others wait on
 * cv_done instead of fetching twice), ready (in the LRU, counted against
 * cache_bytes), or failed (already out of the table so the next read
 * retries; kept alive only until the waiters have read the error).
 *
 * Entries are reference counted so eviction never has to wait for a reader:
 * an evicted block that a reader is still copying from is freed by that
 * reader.  Memory is therefore the cache bound plus, at most, one decoded
 * block per concurrent reader and one raw plus one decoded block per fetch
 * in progress.
 *
 * A fetch is one ranged GET for a run of adjacent blocks; the stream is cut
 * into blocks as it arrives and each block is published as soon as it is
 * decoded, so a reader waiting on the first block of a 4 MiB read-ahead job
 * does not wait for the whole job. */
#include "backup/block_reader.h"
#include "backup/block_reader_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "codec/lzop.h"
#include "common/log.h"
#include "common/worker.h"

/* A foreground read's GET stops at this much compressed data, so one huge
 * read() cannot make a single request (and its waiters) arbitrarily long. */
#define RUN_MAX_COMP (8u << 20)
#define RUN_MAX_BLOCKS 64
/* Read-ahead jobs: big enough that request latency is amortized, small
 * enough that several workers share one reader's window. */
#define RA_CHUNK_MIN (1u << 20)
#define RA_CHUNK_MAX (4u << 20)
/* Queued jobs hold no data, but stale read-ahead from many readers should
 * not pile up behind the ones being consumed. */
#define MAX_QUEUED_JOBS 128
#define MAX_WORKERS 64
/* Block header (two lengths) plus at most four checksums. */
#define BLOCK_HDR_MAX 24u

enum ent_state { ENT_INFLIGHT, ENT_READY, ENT_FAILED };

typedef struct job job;

typedef struct entry {
    struct entry *hnext;
    struct entry *lru_prev, *lru_next;
    uint64_t hash;
    size_t blockno;
    /* With the block number, what the block table said the block is: a
     * forged table (from a stored index) decodes other bytes under the same
     * number, which must not be served to a table built from the partition. */
    uint64_t comp_offset;
    uint32_t comp_len, uncomp_len;
    enum ent_state state;
    int in_table;
    int refs;               /* one for the table while in_table, one per holder */
    job *queued;            /* the read-ahead job that will fetch it, while not yet started */
    unsigned char *data;
    size_t size;
    int err_code;           /* ENT_FAILED */
    char *err_msg;          /* may be NULL if even that allocation failed */
    const char *key, *etag; /* point into strs */
    char strs[];
} entry;

struct job {
    job *next, *prev;
    char *key, *etag;       /* own copies: the caller's partition may be freed at once */
    lzop_stream_info info;
    size_t first, n;
    lzop_block *blocks;
    entry **ents;
};

struct block_reader {
    store *st;
    size_t cache_bytes, readahead_bytes, chunk_bytes;
    pthread_mutex_t mu;
    pthread_cond_t cv_done; /* an entry left ENT_INFLIGHT, or a job finished */
    worker_pool pool;       /* the read-ahead threads; wake: a job was queued */
    entry **buckets;
    size_t n_buckets, n_entries;
    entry *lru_head, *lru_tail; /* head = most recently used; ready entries only */
    job *q_head, *q_tail;
    size_t q_len;
    int running;
    block_reader_stats stats;
};

/* ---- hash table and LRU (all under mu) ---- */

static uint64_t ident_hash(const char *key, const char *etag)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    h = (h ^ 0x100) * 1099511628211ull; /* separator no key byte can produce */
    for (const unsigned char *p = (const unsigned char *)etag; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static uint64_t block_hash(uint64_t ih, size_t blockno)
{
    uint64_t h = ih ^ ((uint64_t)blockno * 0x9E3779B97F4A7C15ull);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return h;
}

static entry *lookup(block_reader *br, uint64_t ih, const char *key, const char *etag,
                     size_t blockno, const lzop_block *bl)
{
    uint64_t h = block_hash(ih, blockno);
    for (entry *e = br->buckets[h & (br->n_buckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->blockno == blockno && e->comp_offset == bl->comp_offset &&
            e->comp_len == bl->comp_len && e->uncomp_len == bl->uncomp_len &&
            strcmp(e->key, key) == 0 && strcmp(e->etag, etag) == 0)
            return e;
    return NULL;
}

static void table_grow(block_reader *br)
{
    size_t nb = br->n_buckets * 2;
    entry **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < br->n_buckets; i++) {
        for (entry *e = br->buckets[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    }
    free(br->buckets);
    br->buckets = b;
    br->n_buckets = nb;
}

static void table_remove(block_reader *br, entry *e)
{
    entry **pp = &br->buckets[e->hash & (br->n_buckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    e->hnext = NULL;
    e->in_table = 0;
    br->n_entries--;
}

static void lru_unlink(block_reader *br, entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        br->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        br->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(block_reader *br, entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = br->lru_head;
    if (br->lru_head)
        br->lru_head->lru_prev = e;
    else
        br->lru_tail = e;
    br->lru_head = e;
}

static void entry_unref(block_reader *br, entry *e)
{
    if (--e->refs > 0)
        return;
    if (e->data)
        br->stats.live_bytes -= e->size;
    free(e->data);
    free(e->err_msg);
    free(e);
}

/* A new in-flight entry, referenced by the table and by the caller. */
static entry *new_inflight(block_reader *br, uint64_t ih, const char *key, const char *etag,
                           size_t blockno, const lzop_block *bl)
{
    size_t kl = strlen(key), el = strlen(etag);
    entry *e = calloc(1, sizeof *e + kl + el + 2);
    if (!e)
        return NULL;
    memcpy(e->strs, key, kl + 1);
    memcpy(e->strs + kl + 1, etag, el + 1);
    e->key = e->strs;
    e->etag = e->strs + kl + 1;
    e->hash = block_hash(ih, blockno);
    e->blockno = blockno;
    e->comp_offset = bl->comp_offset;
    e->comp_len = bl->comp_len;
    e->uncomp_len = bl->uncomp_len;
    e->state = ENT_INFLIGHT;
    e->in_table = 1;
    e->refs = 2;
    if (br->n_entries >= br->n_buckets)
        table_grow(br);
    entry **slot = &br->buckets[e->hash & (br->n_buckets - 1)];
    e->hnext = *slot;
    *slot = e;
    br->n_entries++;
    return e;
}

/* Evicts least recently used blocks, read-ahead not yet consumed included:
 * a later read refetches them, which is slower but always correct. */
static void evict(block_reader *br)
{
    while (br->stats.cached_bytes > br->cache_bytes && br->lru_tail) {
        entry *e = br->lru_tail;
        lru_unlink(br, e);
        table_remove(br, e);
        br->stats.cached_bytes -= e->size;
        br->stats.cached_blocks--;
        entry_unref(br, e);
    }
}

/* publish and fail_entry take over the fetcher's reference: a fetcher
 * holding every block of its run until the end would pin up to a whole run
 * of evicted data, beyond the cache bound. */
static void publish(block_reader *br, entry *e, unsigned char *data, size_t size)
{
    pthread_mutex_lock(&br->mu);
    e->data = data;
    e->size = size;
    e->state = ENT_READY;
    br->stats.live_bytes += size;
    if (br->stats.live_bytes > br->stats.peak_live_bytes)
        br->stats.peak_live_bytes = br->stats.live_bytes;
    br->stats.decoded_blocks++;
    if (e->in_table) {
        lru_push_front(br, e);
        br->stats.cached_bytes += size;
        br->stats.cached_blocks++;
        evict(br);
        if (br->stats.cached_bytes > br->stats.peak_cached_bytes)
            br->stats.peak_cached_bytes = br->stats.cached_bytes;
    }
    entry_unref(br, e); /* the fetcher's */
    pthread_cond_broadcast(&br->cv_done);
    pthread_mutex_unlock(&br->mu);
}

/* Failures are not cached: the entry leaves the table so the next read
 * fetches again, and only the readers already waiting see this error. */
static void fail_entry(block_reader *br, entry *e, int code, const walfs_err *why)
{
    char *msg = strdup(why->msg);
    pthread_mutex_lock(&br->mu);
    e->state = ENT_FAILED;
    e->err_code = code;
    e->err_msg = msg;
    if (e->in_table) {
        table_remove(br, e);
        e->refs--; /* the table's: cannot be the last, the fetcher holds one */
    }
    entry_unref(br, e); /* the fetcher's */
    pthread_cond_broadcast(&br->cv_done);
    pthread_mutex_unlock(&br->mu);
}

/* ---- fetching a run of adjacent blocks with one GET ---- */

typedef struct run {
    const char *key, *etag;
    const lzop_stream_info *info;
    const lzop_block *blocks; /* blocks[0] is block number `first` */
    size_t first, n;
    entry **ents;
    /* A foreground read copies its bytes out while decoding, so it needs
     * no reference to the data after it is published (and maybe evicted). */
    unsigned char *dst;
    uint64_t dst_off, dst_end;
} run;

typedef struct fetch_ctx {
    block_reader *br;
    const run *r;
    size_t cur;         /* index in the run of the block being assembled */
    uint64_t pos;       /* stream offset of the next byte the sink receives */
    unsigned char *raw;
    size_t have;
    uint64_t received;
    int rc;             /* first block that failed to decode */
    walfs_err err;
} fetch_ctx;

static size_t raw_len(const lzop_block *b)
{
    return (size_t)(b->data_offset + b->comp_len - b->comp_offset);
}

static void finish_block(fetch_ctx *fc)
{
    const run *r = fc->r;
    const lzop_block *b = &r->blocks[fc->cur];
    entry *e = r->ents[fc->cur];
    walfs_err berr;
    walfs_err_clear(&berr);
    unsigned char *out = malloc(b->uncomp_len);
    int rc = out ? lzop_decode_block(r->info, b, fc->raw, fc->have, out, &berr)
                 : walfs_err_set(&berr, -ENOMEM, "out of memory for a decoded block");
    if (rc) {
        free(out);
        walfs_err_prefix(&berr, "%s: block %zu: ", r->key, r->first + fc->cur);
        /* Later blocks are decoded on their own: one corrupt block must not
         * make its healthy neighbours in the same request unreadable. */
        fail_entry(fc->br, e, rc, &berr);
        if (!fc->rc) {
            fc->rc = rc;
            fc->err = berr;
        }
        return;
    }
    if (r->dst) {
        uint64_t bs = b->uncomp_offset, be = bs + b->uncomp_len;
        uint64_t lo = bs > r->dst_off ? bs : r->dst_off;
        uint64_t hi = be < r->dst_end ? be : r->dst_end;
        if (lo < hi)
            memcpy(r->dst + (lo - r->dst_off), out + (lo - bs), (size_t)(hi - lo));
    }
    publish(fc->br, e, out, b->uncomp_len);
}

static int fetch_sink(void *vctx, const void *data, size_t len)
{
    fetch_ctx *fc = vctx;
    const run *r = fc->r;
    const unsigned char *p = data;
    if (worker_stopping(&fc->br->pool))
        return -ECANCELED; /* shutting down: don't finish a long read-ahead */
    fc->received += len;
    while (len > 0 && fc->cur < r->n) {
        const lzop_block *b = &r->blocks[fc->cur];
        if (fc->pos < b->comp_offset) {
            /* Bytes between blocks (none in a stream lzop wrote). */
            uint64_t gap = b->comp_offset - fc->pos;
            size_t skip = gap < len ? (size_t)gap : len;
            p += skip;
            len -= skip;
            fc->pos += skip;
            continue;
        }
        size_t need = raw_len(b);
        size_t take = need - fc->have < len ? need - fc->have : len;
        memcpy(fc->raw + fc->have, p, take);
        fc->have += take;
        p += take;
        len -= take;
        fc->pos += take;
        if (fc->have == need) {
            finish_block(fc);
            fc->have = 0;
            fc->cur++;
        }
    }
    return 0; /* bytes past the last block (a longer reply) are ignored */
}

/* Fetches and publishes (or fails) every entry of the run, consuming the
 * caller's reference to each.  Returns the first error, in block order;
 * err gets its message. */
static int fetch_run(block_reader *br, const run *r, walfs_err *err)
{
    size_t max_raw = 0;
    for (size_t i = 0; i < r->n; i++)
        if (raw_len(&r->blocks[i]) > max_raw)
            max_raw = raw_len(&r->blocks[i]);
    const lzop_block *last = &r->blocks[r->n - 1];
    uint64_t start = r->blocks[0].comp_offset, end = last->data_offset + last->comp_len;

    fetch_ctx fc = {.br = br, .r = r, .pos = start};
    walfs_err_clear(&fc.err);
    walfs_err serr;
    walfs_err_clear(&serr);
    int src;
    fc.raw = malloc(max_raw);
    if (!fc.raw) {
        src = walfs_err_set(&serr, -ENOMEM, "out of memory for a %zu-byte block", max_raw);
    } else {
        pthread_mutex_lock(&br->mu);
        br->stats.gets++;
        pthread_mutex_unlock(&br->mu);
        src = store_get(br->st, r->key, start, end - start, fetch_sink, &fc, &serr);
        pthread_mutex_lock(&br->mu);
        br->stats.fetched_bytes += fc.received;
        pthread_mutex_unlock(&br->mu);
        if (src == 0 && fc.cur < r->n)
            src = walfs_err_set(&serr, -EIO,
                                "%s: no data at byte %" PRIu64 " (block %zu): the object is "
                                "shorter than its index says; it changed since it was "
                                "indexed: rebuild the index", r->key, fc.pos, r->first + fc.cur);
        else if (src)
            walfs_err_prefix(&serr, "reading block %zu%s of %s: ", r->first + fc.cur,
                             r->n - fc.cur > 1 ? " and following" : "", r->key);
    }
    free(fc.raw);
    if (src)
        for (size_t i = fc.cur; i < r->n; i++)
            fail_entry(br, r->ents[i], src, &serr);
    /* Blocks before fc.cur come first in the file, so their error first. */
    if (fc.rc) {
        if (err)
            *err = fc.err;
        return fc.rc;
    }
    if (src) {
        if (err)
            *err = serr;
        return src;
    }
    return 0;
}

/* ---- read-ahead jobs ---- */

static void job_free(job *j)
{
    if (!j)
        return;
    free(j->key);
    free(j->etag);
    free(j->blocks);
    free(j->ents);
    free(j);
}

static void dequeue_locked(block_reader *br, job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        br->q_head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        br->q_tail = j->prev;
    j->next = j->prev = NULL;
    br->q_len--;
    for (size_t i = 0; i < j->n; i++)
        j->ents[i]->queued = NULL;
}

/* Runs a dequeued job on the calling thread and frees it. */
static void run_job(block_reader *br, job *j)
{
    run r = {.key = j->key, .etag = j->etag, .info = &j->info, .blocks = j->blocks,
             .first = j->first, .n = j->n, .ents = j->ents};
    walfs_err e;
    walfs_err_clear(&e);
    if (fetch_run(br, &r, &e) && e.code != -ECANCELED)
        log_debug("read-ahead: %s", e.msg); /* the reader reports it, if it still wants it */
    job_free(j);
}

static void *worker_main(void *arg)
{
    block_reader *br = arg;
    pthread_mutex_lock(&br->mu);
    for (;;) {
        while (!worker_stopping(&br->pool) && !br->q_head)
            worker_wait(&br->pool);
        if (worker_stopping(&br->pool))
            break;
        job *j = br->q_head;
        dequeue_locked(br, j);
        br->running++;
        pthread_mutex_unlock(&br->mu);
        run_job(br, j);
        pthread_mutex_lock(&br->mu);
        br->running--;
        pthread_cond_broadcast(&br->cv_done);
    }
    pthread_mutex_unlock(&br->mu);
    return NULL;
}

/* ---- public API ---- */

block_reader *block_reader_new(store *st, size_t cache_bytes, int workers,
                               size_t readahead_bytes, walfs_err *err)
{
    if (!st) {
        walfs_err_set(err, -EINVAL, "block reader: no store given");
        return NULL;
    }
    if (workers < 0)
        workers = 0;
    if (workers > MAX_WORKERS)
        workers = MAX_WORKERS;
    block_reader *br = calloc(1, sizeof *br);
    if (!br) {
        walfs_err_set(err, -ENOMEM, "out of memory for the block reader");
        return NULL;
    }
    br->st = st;
    br->cache_bytes = cache_bytes;
    /* A window larger than half the cache would evict its own blocks before
     * the reader gets to them: every block fetched twice. */
    br->readahead_bytes = readahead_bytes < cache_bytes / 2 ? readahead_bytes : cache_bytes / 2;
    br->stats.readahead_bytes = br->readahead_bytes;
    size_t chunk = workers ? br->readahead_bytes / (size_t)workers : br->readahead_bytes;
    chunk = chunk < RA_CHUNK_MIN ? RA_CHUNK_MIN : chunk > RA_CHUNK_MAX ? RA_CHUNK_MAX : chunk;
    br->chunk_bytes = chunk < br->readahead_bytes ? chunk : br->readahead_bytes;
    br->n_buckets = 256;
    br->buckets = calloc(br->n_buckets, sizeof *br->buckets);
    if (!br->buckets) {
        free(br);
        walfs_err_set(err, -ENOMEM, "out of memory for the block reader");
        return NULL;
    }
    pthread_mutex_init(&br->mu, NULL);
    pthread_cond_init(&br->cv_done, NULL);
    worker_init(&br->pool, &br->mu, "walfs-readahead");
    int rc = worker_start(&br->pool, workers, worker_main, br);
    if (rc) {
        int started = br->pool.n_threads;
        block_reader_free(br);
        walfs_err_set(err, rc, "cannot start read-ahead thread %d: %s", started, strerror(-rc));
        return NULL;
    }
    return br;
}

void block_reader_free(block_reader *br)
{
    if (!br)
        return;
    worker_stop(&br->pool);
    /* No caller may be inside the reader now, so whatever is left is only
     * referenced by the queue and the table. */
    while (br->q_head) {
        job *j = br->q_head;
        dequeue_locked(br, j);
        for (size_t i = 0; i < j->n; i++)
            entry_unref(br, j->ents[i]);
        job_free(j);
    }
    for (size_t i = 0; i < br->n_buckets; i++) {
        for (entry *e = br->buckets[i], *next; e; e = next) {
            next = e->hnext;
            free(e->data);
            free(e->err_msg);
            free(e);
        }
    }
    free(br->buckets);
    worker_destroy(&br->pool);
    pthread_mutex_destroy(&br->mu);
    pthread_cond_destroy(&br->cv_done);
    free(br);
}

/* The block table comes from a cached JSON index: check what the offsets
 * arithmetic below relies on instead of trusting it. */
static int check_block(const backup_partition *part, size_t i, walfs_err *err)
{
    const lzop_index *ix = &part->blocks;
    const lzop_block *b = &ix->blocks[i];
    int ok = b->uncomp_len > 0 && b->uncomp_len <= LZOP_BLOCK_SIZE && b->comp_len > 0 &&
             b->comp_len <= b->uncomp_len && b->data_offset >= b->comp_offset + 8 &&
             b->data_offset - b->comp_offset <= BLOCK_HDR_MAX &&
             b->data_offset <= UINT64_MAX - b->comp_len && (i > 0 || b->uncomp_offset == 0);
    if (ok && i + 1 < ix->n_blocks) {
        const lzop_block *nb = b + 1;
        ok = nb->comp_offset >= b->data_offset + b->comp_len &&
             nb->uncomp_offset == b->uncomp_offset + b->uncomp_len;
    }
    if (!ok)
        return walfs_err_set(err, -EIO, "%s: the block index is inconsistent at block %zu; "
                             "rebuild the backup index", part->key, i);
    return 0;
}

static uint64_t part_size(const lzop_index *ix)
{
    if (ix->n_blocks == 0)
        return 0;
    const lzop_block *last = &ix->blocks[ix->n_blocks - 1];
    return last->uncomp_offset + last->uncomp_len;
}

/* Last block starting at or before off. */
static size_t find_block(const lzop_index *ix, uint64_t off)
{
    size_t lo = 0, hi = ix->n_blocks;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->blocks[mid].uncomp_offset <= off)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

ssize_t block_reader_read(block_reader *br, const backup_partition *part, uint64_t offset,
                          void *buf, size_t len, walfs_err *err)
{
    const lzop_index *ix = &part->blocks;
    uint64_t size = part_size(ix);
    if (offset >= size || len == 0)
        return 0;
    if (len > SSIZE_MAX)
        len = SSIZE_MAX;
    uint64_t end = offset + (size - offset < len ? size - offset : len);
    size_t first = find_block(ix, offset);
    for (size_t i = first; i < ix->n_blocks && ix->blocks[i].uncomp_offset < end; i++) {
        int rc = check_block(part, i, err);
        if (rc)
            return rc;
    }
    uint64_t ih = ident_hash(part->key, part->etag);
    unsigned char *dst = buf;
    uint64_t pos = offset;
    size_t bi = first;

    while (pos < end) {
        const lzop_block *b = &ix->blocks[bi];
        pthread_mutex_lock(&br->mu);
        entry *e = lookup(br, ih, part->key, part->etag, bi, &ix->blocks[bi]);
        if (e) {
            e->refs++;
            while (e->state == ENT_INFLIGHT) {
                job *j = e->queued;
                if (j) {
                    /* Queued read-ahead (maybe behind other readers' jobs):
                     * do it ourselves rather than wait for a worker. */
                    dequeue_locked(br, j);
                    pthread_mutex_unlock(&br->mu);
                    run_job(br, j);
                    pthread_mutex_lock(&br->mu);
                } else {
                    pthread_cond_wait(&br->cv_done, &br->mu);
                }
            }
            if (e->state == ENT_FAILED) {
                int rc = e->err_code;
                if (e->err_msg)
                    walfs_err_set(err, rc, "%s", e->err_msg);
                else
                    walfs_err_set(err, rc, "%s: block %zu: fetch failed", part->key, bi);
                entry_unref(br, e);
                pthread_mutex_unlock(&br->mu);
                return rc;
            }
            if (e->in_table) {
                lru_unlink(br, e);
                lru_push_front(br, e);
            }
            pthread_mutex_unlock(&br->mu);
            uint64_t be = b->uncomp_offset + b->uncomp_len;
            uint64_t hi = be < end ? be : end;
            memcpy(dst + (pos - offset), e->data + (pos - b->uncomp_offset), (size_t)(hi - pos));
            pthread_mutex_lock(&br->mu);
            entry_unref(br, e);
            pthread_mutex_unlock(&br->mu);
            pos = hi;
            bi++;
            continue;
        }

        /* Claim every adjacent missing block this read needs (up to the
         * caps) so they come in one request. */
        entry *ents[RUN_MAX_BLOCKS];
        size_t n = 0;
        uint64_t comp = 0;
        while (n < RUN_MAX_BLOCKS && bi + n < ix->n_blocks && ix->blocks[bi + n].uncomp_offset < end) {
            size_t rl = raw_len(&ix->blocks[bi + n]);
            if (n > 0 && (comp + rl > RUN_MAX_COMP || lookup(br, ih, part->key, part->etag, bi + n, &ix->blocks[bi + n])))
                break;
            entry *ne = new_inflight(br, ih, part->key, part->etag, bi + n, &ix->blocks[bi + n]);
            if (!ne)
                break;
            ents[n++] = ne;
            comp += rl;
        }
        pthread_mutex_unlock(&br->mu);
        if (n == 0)
            return walfs_err_set(err, -ENOMEM, "%s: out of memory for the block cache", part->key);
        run r = {.key = part->key, .etag = part->etag, .info = &ix->info, .blocks = b,
                 .first = bi, .n = n, .ents = ents, .dst = dst, .dst_off = offset, .dst_end = end};
        int rc = fetch_run(br, &r, err);
        if (rc)
            return rc;
        const lzop_block *lb = &ix->blocks[bi + n - 1];
        uint64_t be = lb->uncomp_offset + lb->uncomp_len;
        pos = be < end ? be : end;
        bi += n;
    }
    return (ssize_t)(end - offset);
}

void block_reader_readahead(block_reader *br, const backup_partition *part, uint64_t offset,
                            uint64_t end)
{
    const lzop_index *ix = &part->blocks;
    uint64_t size = part_size(ix);
    if (br->pool.n_threads == 0 || br->readahead_bytes == 0 || offset >= size)
        return;
    if (end > size)
        end = size;
    if (end <= offset)
        return;
    uint64_t wend = end - offset > br->readahead_bytes ? offset + br->readahead_bytes : end;
    uint64_t ih = ident_hash(part->key, part->etag);
    size_t bi = find_block(ix, offset);

    pthread_mutex_lock(&br->mu);
    while (bi < ix->n_blocks && ix->blocks[bi].uncomp_offset < wend) {
        if (lookup(br, ih, part->key, part->etag, bi, &ix->blocks[bi])) {
            bi++;
            continue;
        }
        size_t n = 0;
        uint64_t ub = 0;
        while (n < RUN_MAX_BLOCKS && ub < br->chunk_bytes && bi + n < ix->n_blocks &&
               ix->blocks[bi + n].uncomp_offset < wend &&
               check_block(part, bi + n, NULL) == 0 &&
               !lookup(br, ih, part->key, part->etag, bi + n, &ix->blocks[bi + n])) {
            ub += ix->blocks[bi + n].uncomp_len;
            n++;
        }
        if (n == 0)
            break; /* a bad index entry: the read will report it */
        int at_window_end = bi + n == ix->n_blocks || ix->blocks[bi + n].uncomp_offset >= wend;
        /* The window slides by one read at a time; issuing its new edge
         * right away would make one GET per block.  Wait for a whole chunk,
         * unless this is the end of what the reader wants. */
        if (at_window_end && wend < end && ub < br->chunk_bytes)
            break;
        if (br->q_len >= MAX_QUEUED_JOBS) {
            br->stats.jobs_dropped++;
            break;
        }
        job *j = calloc(1, sizeof *j);
        if (j) {
            j->key = strdup(part->key);
            j->etag = strdup(part->etag);
            j->blocks = malloc(n * sizeof *j->blocks);
            j->ents = calloc(n, sizeof *j->ents);
        }
        if (!j || !j->key || !j->etag || !j->blocks || !j->ents) {
            job_free(j);
            break;
        }
        j->info = ix->info;
        j->first = bi;
        memcpy(j->blocks, &ix->blocks[bi], n * sizeof *j->blocks);
        for (; j->n < n; j->n++) {
            entry *ne = new_inflight(br, ih, part->key, part->etag, bi + j->n, &ix->blocks[bi + j->n]);
            if (!ne)
                break;
            ne->queued = j;
            j->ents[j->n] = ne;
        }
        if (j->n == 0) {
            job_free(j);
            break;
        }
        j->prev = br->q_tail;
        if (br->q_tail)
            br->q_tail->next = j;
        else
            br->q_head = j;
        br->q_tail = j;
        br->q_len++;
        br->stats.jobs_queued++;
        worker_wake_one(&br->pool);
        bi += j->n;
    }
    pthread_mutex_unlock(&br->mu);
}

void block_reader_get_stats(block_reader *br, block_reader_stats *out)
{
    pthread_mutex_lock(&br->mu);
    *out = br->stats;
    pthread_mutex_unlock(&br->mu);
}

void block_reader_wait_idle(block_reader *br)
{
    pthread_mutex_lock(&br->mu);
    while (br->q_head || br->running)
        pthread_cond_wait(&br->cv_done, &br->mu);
    pthread_mutex_unlock(&br->mu);
}
