/* Unit tests for backup/block_reader.c: exact bytes for any range, only the
 * needed blocks fetched (proved by a counting store), the cache shared and
 * deduplicated across threads, read-ahead that removes round trips while
 * memory stays bounded, and clear errors for corrupt, truncated and vanished
 * partitions.  Run from the repository root. */
#include "backup/block_reader.h"
#include "backup/block_reader_internal.h"
#include "codec/lzop.h"
#include "store/store_driver.h"
#include "tests/unit/tap.h"
#include "common/buf.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLK LZOP_BLOCK_SIZE
#define N_BLOCKS 20
#define DATA_SIZE ((size_t)(N_BLOCKS - 1) * BLK + 100000)
#define KEY "basebackups_005/base_x/tar_partitions/part_00000000.tar.lzo"

static char tmpdir[64];
static unsigned char *orig;     /* DATA_SIZE bytes */
static unsigned char *comp;     /* the compressed stream */
static size_t comp_len;
static store *local;

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* Thread-local generator for the concurrent tests. */
static uint64_t rnd_r(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}


static void tpath(char *out, size_t size, const char *key)
{
    snprintf(out, size, "%s/%s", tmpdir, key);
}

static int write_key(const char *key, const void *d, size_t n)
{
    char path[512];
    tpath(path, sizeof path, key);
    for (char *p = path + strlen(tmpdir) + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0755);
            *p = '/';
        }
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(d, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A partition whose block table is the scan of `stream`, stored under key. */
static int make_part(backup_partition *p, const char *key, const char *etag,
                     const unsigned char *stream, size_t len)
{
    memset(p, 0, sizeof *p);
    p->key = strdup(key);
    snprintf(p->etag, sizeof p->etag, "%s", etag);
    p->object_size = len;
    walfs_err err;
    lzop_scanner *sc = lzop_scanner_new(key);
    int rc = lzop_scanner_feed(sc, stream, len, &err);
    if (rc == 0)
        rc = lzop_scanner_finish(sc, &p->blocks, &err);
    lzop_scanner_free(sc);
    if (rc)
        printf("# scan %s: %s\n", key, err.msg);
    return rc;
}

static void free_part(backup_partition *p)
{
    free(p->key);
    lzop_index_free(&p->blocks);
}

static size_t raw_size(const backup_partition *p, size_t i)
{
    const lzop_block *b = &p->blocks.blocks[i];
    return (size_t)(b->data_offset + b->comp_len - b->comp_offset);
}

/* Reads [off, off+len) and compares with the original; 1 when exact. */
static int read_ok(block_reader *br, const backup_partition *p, uint64_t off, size_t len)
{
    size_t expect = off >= DATA_SIZE ? 0 : (DATA_SIZE - off < len ? DATA_SIZE - off : len);
    unsigned char *b = malloc(len ? len : 1);
    walfs_err err;
    walfs_err_clear(&err);
    ssize_t n = block_reader_read(br, p, off, b, len, &err);
    int ok = n == (ssize_t)expect && (expect == 0 || memcmp(b, orig + off, expect) == 0);
    if (!ok)
        printf("# read %llu+%zu: got %zd (want %zu): %s\n", (unsigned long long)off, len, n,
               expect, n < 0 ? err.msg : "data differs");
    free(b);
    return ok;
}

/* ---- a store that counts (and can slow down) GETs ---- */

typedef struct counting_store {
    store base;
    store *inner;
    atomic_ulong gets, bytes;
    atomic_int delay_us;
} counting_store;

typedef struct count_sink_ctx {
    counting_store *cs;
    store_sink_fn sink;
    void *ctx;
} count_sink_ctx;

static int count_sink(void *vctx, const void *data, size_t len)
{
    count_sink_ctx *c = vctx;
    atomic_fetch_add(&c->cs->bytes, len);
    return c->sink(c->ctx, data, len);
}

static int cs_stat(store *st, const char *key, store_stat *out, walfs_err *err)
{
    return store_stat_key(((counting_store *)st)->inner, key, out, err);
}

static int cs_get(store *st, const char *key, uint64_t off, uint64_t len, store_sink_fn sink,
                  void *ctx, walfs_err *err)
{
    counting_store *cs = (counting_store *)st;
    atomic_fetch_add(&cs->gets, 1);
    int d = atomic_load(&cs->delay_us);
    if (d)
        usleep((useconds_t)d);
    count_sink_ctx c = {cs, sink, ctx};
    return store_get(cs->inner, key, off, len, count_sink, &c, err);
}

static int cs_put(store *st, const char *key, const void *body, size_t len, int64_t us,
                  walfs_err *err)
{
    return store_put(((counting_store *)st)->inner, key, body, len, us, err);
}

static int cs_remove(store *st, const char *key, walfs_err *err)
{
    return store_remove(((counting_store *)st)->inner, key, err);
}

static int cs_list(store *st, const char *dir, store_list_fn fn, void *ctx, walfs_err *err)
{
    return store_list(((counting_store *)st)->inner, dir, fn, ctx, err);
}

static void cs_destroy(store *st)
{
    (void)st; /* the test owns both stores */
}

static const store_ops cs_ops = {.stat = cs_stat, .get = cs_get, .put = cs_put, .remove = cs_remove,
                                  .list = cs_list, .destroy = cs_destroy};

static void cs_init(counting_store *cs)
{
    memset(cs, 0, sizeof *cs);
    cs->base.ops = &cs_ops;
    cs->base.url = "counting://";
    cs->inner = local;
}

/* ---- setup ---- */

static int setup(backup_partition *part)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/walfs-br.XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    walfs_err err;
    if (store_local_open(tmpdir, &local, &err) != 0) {
        printf("# %s\n", err.msg);
        return -1;
    }
    /* Every third block random (lzop stores it raw), the rest text-like
     * with enough noise that they compress to varied sizes. */
    orig = malloc(DATA_SIZE);
    static const char *words[] = {"pg_xlog ", "relation ", "tuple ", "0000000100000 ",
                                  "checkpoint ", "vacuum ", "\n", "base/16384/ "};
    for (size_t blk = 0; blk * BLK < DATA_SIZE; blk++) {
        size_t s = blk * BLK, e = s + BLK < DATA_SIZE ? s + BLK : DATA_SIZE;
        if (blk % 3 == 0) {
            for (size_t i = s; i < e; i++)
                orig[i] = (unsigned char)rnd();
        } else {
            size_t i = s;
            while (i < e) {
                const char *w = words[rnd() % 8];
                for (; *w && i < e; w++)
                    orig[i++] = (unsigned char)(rnd() % 64 == 0 ? rnd() : (uint64_t)*w);
            }
        }
    }
    walfs_buf out = {0};
    lzop_encoder *enc = lzop_encoder_new(0100600, 1700000000);
    int rc = lzop_encoder_write(enc, orig, DATA_SIZE, buf_sink, &out, &err);
    if (rc == 0)
        rc = lzop_encoder_finish(enc, buf_sink, &out, &err);
    lzop_encoder_free(enc);
    if (rc)
        return -1;
    comp = out.bytes;
    comp_len = out.len;
    if (write_key(KEY, comp, comp_len) != 0)
        return -1;
    return make_part(part, KEY, "etag-1", comp, comp_len);
}

/* ---- tests ---- */

static void test_layout(const backup_partition *p)
{
    size_t raw = 0, packed = 0;
    for (size_t i = 0; i < p->blocks.n_blocks; i++) {
        if (p->blocks.blocks[i].comp_len == p->blocks.blocks[i].uncomp_len)
            raw++;
        else
            packed++;
    }
    CHECK(p->blocks.n_blocks == N_BLOCKS && p->blocks.uncomp_size == DATA_SIZE,
          "test partition: %zu blocks, %llu bytes", p->blocks.n_blocks,
          (unsigned long long)p->blocks.uncomp_size);
    CHECK(raw >= 5 && packed >= 10, "test partition mixes stored (%zu) and compressed (%zu) blocks",
          raw, packed);
}

static void test_ranges(const backup_partition *p)
{
    walfs_err err;
    block_reader *br = block_reader_new(local, 64u << 20, 0, 0, &err);
    CHECK(br != NULL, "reader without read-ahead threads");
    if (!br)
        return;
    int bad = 0;
    for (size_t i = 1; i < N_BLOCKS; i++) {
        uint64_t b = (uint64_t)i * BLK;
        bad += !read_ok(br, p, b - 1, 2);
        bad += !read_ok(br, p, b - 10, 20);
        bad += !read_ok(br, p, b, 1);
        bad += !read_ok(br, p, b - 1, 1);
        bad += !read_ok(br, p, b, BLK);
    }
    CHECK(bad == 0, "reads across every block boundary (%d wrong)", bad);
    CHECK(read_ok(br, p, 0, 1), "first byte");
    CHECK(read_ok(br, p, DATA_SIZE - 1, 1), "last byte");
    CHECK(read_ok(br, p, DATA_SIZE - 10, 100), "read past the end is short (10 bytes)");
    CHECK(read_ok(br, p, DATA_SIZE, 100), "read at the end returns 0");
    CHECK(read_ok(br, p, DATA_SIZE + 12345, 100), "read beyond the end returns 0");
    CHECK(read_ok(br, p, 777, 0), "zero-length read returns 0");
    block_reader_free(br);

    /* Cold cache: one read spanning every block. */
    br = block_reader_new(local, 64u << 20, 0, 0, &err);
    CHECK(read_ok(br, p, 0, DATA_SIZE + 5000), "one read spanning all %d blocks, cold", N_BLOCKS);
    CHECK(read_ok(br, p, 3, DATA_SIZE - 3), "one read spanning all blocks, cached");
    block_reader_free(br);

    /* Random ranges, with a generous cache and with none at all. */
    size_t sizes[] = {64u << 20, 0};
    for (int k = 0; k < 2; k++) {
        br = block_reader_new(local, sizes[k], 0, 0, &err);
        bad = 0;
        for (int i = 0; i < 1500; i++) {
            uint64_t off = rnd() % (DATA_SIZE + 1000);
            size_t len = (size_t)(rnd() % 4 == 0 ? rnd() % (3 * BLK) : rnd() % 5000);
            bad += !read_ok(br, p, off, len);
        }
        CHECK(bad == 0, "1500 random reads, cache %zu bytes (%d wrong)", sizes[k], bad);
        block_reader_free(br);
    }
}

static void test_lzop_binary(void)
{
    /* lzop itself writes a header with a name and, with --crc32, CRC-32
     * checksums: block offsets and checksum sizes differ from ours. */
    char src[512], cmd[1400];
    tpath(src, sizeof src, "plain.tar");
    FILE *f = fopen(src, "wb");
    fwrite(orig, 1, DATA_SIZE, f);
    fclose(f);
    const char *variants[] = {"", "--crc32 -9"};
    for (int v = 0; v < 2; v++) {
        char key[64];
        snprintf(key, sizeof key, "bin%d.tar.lzo", v);
        snprintf(cmd, sizeof cmd, "lzop -c %s '%s' > '%s/%s' 2>/dev/null", variants[v], src,
                 tmpdir, key);
        if (system(cmd) != 0) {
            CHECK(1, "# SKIP lzop binary variant '%s' unavailable", variants[v]);
            continue;
        }
        char path[512];
        tpath(path, sizeof path, key);
        walfs_buf b = {0};
        f = fopen(path, "rb");
        char chunk[65536];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            buf_sink(&b, chunk, n);
        fclose(f);
        backup_partition p;
        int rc = make_part(&p, key, "e", b.bytes, b.len);
        free(b.bytes);
        CHECK(rc == 0 && p.blocks.n_blocks == N_BLOCKS, "scan of `lzop -c %s` output", variants[v]);
        if (rc)
            continue;
        walfs_err err;
        block_reader *br = block_reader_new(local, 2u << 20, 2, 1u << 20, &err);
        int bad = 0;
        for (int i = 0; i < 300; i++) {
            uint64_t off = rnd() % DATA_SIZE;
            bad += !read_ok(br, &p, off, (size_t)(rnd() % (2 * BLK)));
        }
        CHECK(bad == 0, "random reads of `lzop -c %s` output (%d wrong)", variants[v], bad);
        block_reader_free(br);
        free_part(&p);
    }
}

static void test_counting(const backup_partition *p)
{
    counting_store cs;
    cs_init(&cs);
    walfs_err err;
    block_reader *br = block_reader_new(&cs.base, 64u << 20, 2, 8u << 20, &err);
    uint64_t mid7 = 7 * (uint64_t)BLK + 1000;
    CHECK(read_ok(br, p, mid7, 1000), "small read in block 7");
    CHECK(cs.gets == 1, "one GET for it (%lu)", cs.gets);
    CHECK(cs.bytes == raw_size(p, 7), "fetched exactly block 7's %zu compressed bytes (%lu)",
          raw_size(p, 7), cs.bytes);
    CHECK(read_ok(br, p, mid7 + 10, 500), "re-read of block 7");
    CHECK(cs.gets == 1, "served from the cache, no new GET (%lu)", cs.gets);

    unsigned long g0 = cs.gets, b0 = cs.bytes;
    CHECK(read_ok(br, p, 10 * (uint64_t)BLK - 100, 200), "read across blocks 9 and 10");
    CHECK(cs.gets == g0 + 1 && cs.bytes - b0 == raw_size(p, 9) + raw_size(p, 10),
          "one GET of exactly blocks 9+10 (%lu GETs, %lu bytes, want %zu)", cs.gets - g0,
          cs.bytes - b0, raw_size(p, 9) + raw_size(p, 10));
    g0 = cs.gets, b0 = cs.bytes;
    CHECK(read_ok(br, p, 8 * (uint64_t)BLK + 5, 2 * BLK + 10), "read of blocks 8..10, 9-10 cached");
    CHECK(cs.gets == g0 + 1 && cs.bytes - b0 == raw_size(p, 8),
          "only block 8 fetched (%lu GETs, %lu bytes)", cs.gets - g0, cs.bytes - b0);
    g0 = cs.gets;
    CHECK(read_ok(br, p, 12 * (uint64_t)BLK, 4 * BLK), "read of blocks 12..15, none cached");
    CHECK(cs.gets == g0 + 1, "adjacent missing blocks come in one GET (%lu)", cs.gets - g0);
    g0 = cs.gets;
    CHECK(read_ok(br, p, 6 * (uint64_t)BLK, 11 * BLK), "read of blocks 6..16, 11 and 16 missing");
    CHECK(cs.gets == g0 + 3, "one GET per missing run: 6, 11, 16 (%lu)", cs.gets - g0);
    block_reader_stats s;
    block_reader_get_stats(br, &s);
    CHECK(s.gets == cs.gets && s.fetched_bytes == cs.bytes, "reader's own counters agree");
    block_reader_free(br);
}

/* ---- concurrency ---- */

typedef struct thr_arg {
    block_reader *br;
    const backup_partition *p;
    uint64_t seed;
    int reads, bad, use_ra;
    pthread_barrier_t *bar;
    uint64_t off;
    size_t len;
} thr_arg;

static void *random_reader(void *v)
{
    thr_arg *a = v;
    for (int i = 0; i < a->reads; i++) {
        uint64_t off = rnd_r(&a->seed) % DATA_SIZE;
        size_t len = (size_t)(rnd_r(&a->seed) % 3 == 0 ? rnd_r(&a->seed) % (2 * BLK)
                                                        : rnd_r(&a->seed) % 20000);
        if (a->use_ra && i % 5 == 0)
            block_reader_readahead(a->br, a->p, off, DATA_SIZE);
        a->bad += !read_ok(a->br, a->p, off, len);
    }
    return NULL;
}

static void *same_reader(void *v)
{
    thr_arg *a = v;
    pthread_barrier_wait(a->bar);
    a->bad = !read_ok(a->br, a->p, a->off, a->len);
    return NULL;
}

static void test_concurrency(const backup_partition *p)
{
    size_t caches[] = {64u << 20, 1u << 20};
    for (int k = 0; k < 2; k++) {
        walfs_err err;
        block_reader *br = block_reader_new(local, caches[k], 3, 4u << 20, &err);
        pthread_t t[8];
        thr_arg a[8];
        for (int i = 0; i < 8; i++) {
            a[i] = (thr_arg){.br = br, .p = p, .seed = 1000 + (uint64_t)i * 77, .reads = 250,
                             .use_ra = i % 2};
            pthread_create(&t[i], NULL, random_reader, &a[i]);
        }
        int bad = 0;
        for (int i = 0; i < 8; i++) {
            pthread_join(t[i], NULL);
            bad += a[i].bad;
        }
        CHECK(bad == 0, "8 threads x 250 random reads, cache %zu bytes (%d wrong)", caches[k], bad);
        block_reader_free(br);
    }

    /* Two threads want the same uncached block while its GET is slow. */
    counting_store cs;
    cs_init(&cs);
    cs.delay_us = 200000;
    walfs_err err;
    block_reader *br = block_reader_new(&cs.base, 64u << 20, 0, 0, &err);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    pthread_t t[2];
    thr_arg a[2];
    for (int i = 0; i < 2; i++) {
        a[i] = (thr_arg){.br = br, .p = p, .bar = &bar, .off = 12 * (uint64_t)BLK + 100 * i,
                         .len = 3000};
        pthread_create(&t[i], NULL, same_reader, &a[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK(a[0].bad == 0 && a[1].bad == 0, "both readers of the same block get correct bytes");
    CHECK(cs.gets == 1, "the block was fetched once for both (%lu GETs)", cs.gets);
    pthread_barrier_destroy(&bar);
    block_reader_free(br);
}

/* ---- read-ahead ---- */

static void test_readahead(const backup_partition *p)
{
    counting_store cs;
    cs_init(&cs);
    walfs_err err;
    block_reader *br = block_reader_new(&cs.base, 32u << 20, 4, 16u << 20, &err);
    block_reader_readahead(br, p, 0, DATA_SIZE);
    block_reader_wait_idle(br);
    unsigned long g0 = cs.gets;
    CHECK(g0 >= 1 && g0 <= 4, "read-ahead of the whole partition: %lu GETs of multi-MiB chunks", g0);
    CHECK(cs.bytes == comp_len - p->blocks.blocks[0].comp_offset - 4,
          "it fetched every block once (%lu bytes)", cs.bytes);
    int bad = 0;
    for (uint64_t off = 0; off < DATA_SIZE; off += 131072)
        bad += !read_ok(br, p, off, 131072);
    CHECK(bad == 0, "sequential 128 KiB reads after read-ahead are correct");
    CHECK(cs.gets == g0, "and cause no further GET (%lu)", cs.gets - g0);
    block_reader_free(br);

    /* How the filesystem uses it: read-ahead from the current offset on
     * every read, against a store with latency. */
    cs_init(&cs);
    cs.delay_us = 20000;
    br = block_reader_new(&cs.base, 8u << 20, 4, 2u << 20, &err);
    double t0 = now_s();
    bad = 0;
    for (uint64_t off = 0; off < DATA_SIZE; off += 131072) {
        block_reader_readahead(br, p, off, DATA_SIZE);
        bad += !read_ok(br, p, off, 131072);
    }
    double took = now_s() - t0;
    CHECK(bad == 0, "sliding read-ahead: sequential reads correct");
    CHECK(cs.gets <= 8, "sliding read-ahead: %lu GETs for %d blocks (chunks, not blocks)", cs.gets,
          N_BLOCKS);
    /* One 20 ms round trip per block would be 400 ms. */
    CHECK(took < 0.3, "sliding read-ahead hides latency: %.0f ms for 20 blocks at 20 ms per GET",
          took * 1000);
    block_reader_free(br);

    /* A tiny cache (4 blocks) under read-ahead and 4 concurrent readers:
     * still correct, and the bound holds. */
    size_t cache = 4 * (size_t)BLK;
    br = block_reader_new(local, cache, 4, 16u << 20, &err);
    pthread_t t[4];
    thr_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (thr_arg){.br = br, .p = p, .seed = 99 + (uint64_t)i, .reads = 200, .use_ra = 1};
        pthread_create(&t[i], NULL, random_reader, &a[i]);
    }
    bad = 0;
    for (uint64_t off = 0; off < DATA_SIZE; off += 131072) {
        block_reader_readahead(br, p, off, DATA_SIZE);
        bad += !read_ok(br, p, off, 131072);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        bad += a[i].bad;
    }
    block_reader_wait_idle(br);
    block_reader_stats s;
    block_reader_get_stats(br, &s);
    CHECK(bad == 0, "4-block cache, read-ahead, 5 readers: all reads correct");
    CHECK(s.readahead_bytes <= cache / 2, "read-ahead window clamped to half the cache (%zu)",
          s.readahead_bytes);
    CHECK(s.peak_cached_bytes <= cache && s.cached_bytes <= cache,
          "cache never above its bound (peak %zu of %zu)", s.peak_cached_bytes, cache);
    /* Beyond the cache, at most a block per reader being copied and a block
     * per worker between decode and eviction. */
    CHECK(s.peak_live_bytes <= cache + (5 + 4 + 1) * (size_t)BLK,
          "decoded memory bounded (peak %zu)", s.peak_live_bytes);
    CHECK(s.live_bytes == s.cached_bytes, "nothing pinned once idle (%zu live, %zu cached)",
          s.live_bytes, s.cached_bytes);
    block_reader_free(br);

    /* A reader needing a block whose read-ahead job is still queued behind
     * other readers' jobs fetches it itself instead of waiting its turn. */
    cs_init(&cs);
    cs.delay_us = 200000;
    br = block_reader_new(&cs.base, 64u << 20, 1, 16u << 20, &err);
    backup_partition others[4];
    for (int i = 0; i < 4; i++) {
        others[i] = *p;
        snprintf(others[i].etag, sizeof others[i].etag, "other-%d", i);
        block_reader_readahead(br, &others[i], 0, DATA_SIZE);
    }
    t0 = now_s();
    int ok = read_ok(br, &others[3], 0, 1000);
    took = now_s() - t0;
    CHECK(ok && took < 0.6, "read of a block queued behind 7 slow jobs: %.0f ms, not 1400",
          took * 1000);
    block_reader_free(br);

    /* Jobs copy what they need: the caller's partition may go away at once. */
    cs_init(&cs);
    br = block_reader_new(&cs.base, 32u << 20, 2, 16u << 20, &err);
    backup_partition *tmp = malloc(sizeof *tmp);
    *tmp = *p;
    tmp->key = strdup(p->key);
    tmp->blocks.blocks = malloc(p->blocks.n_blocks * sizeof *p->blocks.blocks);
    memcpy(tmp->blocks.blocks, p->blocks.blocks, p->blocks.n_blocks * sizeof *p->blocks.blocks);
    block_reader_readahead(br, tmp, 0, DATA_SIZE);
    free(tmp->blocks.blocks);
    free(tmp->key);
    free(tmp);
    block_reader_wait_idle(br);
    g0 = cs.gets;
    CHECK(read_ok(br, p, BLK * 3 + 7, 5 * BLK) && cs.gets == g0 && g0 > 0,
          "read-ahead outlives the caller's partition struct");
    block_reader_free(br);

    /* Freeing with jobs queued behind a slow store: no hang, no leak. */
    cs_init(&cs);
    cs.delay_us = 100000;
    br = block_reader_new(&cs.base, 32u << 20, 1, 16u << 20, &err);
    block_reader_readahead(br, p, 0, DATA_SIZE);
    t0 = now_s();
    block_reader_free(br);
    CHECK(now_s() - t0 < 1.0, "free with queued read-ahead returns promptly (%.2f s)", now_s() - t0);
}

/* ---- errors ---- */

static int read_err(block_reader *br, const backup_partition *p, uint64_t off, size_t len,
                    walfs_err *err)
{
    unsigned char *b = malloc(len);
    walfs_err_clear(err);
    ssize_t n = block_reader_read(br, p, off, b, len, err);
    free(b);
    return (int)(n < 0 ? n : 0);
}

static void test_corruption(const backup_partition *good)
{
    /* Flip a byte in a compressed block (5) and in a stored one (9). */
    unsigned char *bad = malloc(comp_len);
    memcpy(bad, comp, comp_len);
    const lzop_block *b5 = &good->blocks.blocks[5], *b9 = &good->blocks.blocks[9];
    CHECK(b5->comp_len < b5->uncomp_len && b9->comp_len == b9->uncomp_len,
          "block 5 is compressed, block 9 stored");
    bad[b5->data_offset + b5->comp_len / 2] ^= 0x10;
    bad[b9->data_offset + 1234] ^= 0x01;
    write_key("corrupt/part.lzo", bad, comp_len);
    free(bad);
    backup_partition p = *good;
    p.key = "corrupt/part.lzo";
    snprintf(p.etag, sizeof p.etag, "etag-c");

    counting_store cs;
    cs_init(&cs);
    walfs_err err;
    block_reader *br = block_reader_new(&cs.base, 64u << 20, 2, 8u << 20, &err);
    int rc = read_err(br, &p, 5 * (uint64_t)BLK + 10, 100, &err);
    CHECK(rc == -EIO, "corrupt compressed block: -EIO (%d)", rc);
    CHECK(strstr(err.msg, "corrupt/part.lzo") && strstr(err.msg, "block 5"),
          "message names the object and the block: %s", err.msg);
    rc = read_err(br, &p, 9 * (uint64_t)BLK + 10, 100, &err);
    CHECK(rc == -EIO && strstr(err.msg, "corrupt/part.lzo") && strstr(err.msg, "block 9"),
          "corrupt stored block: -EIO naming it: %s", err.msg);
    CHECK(read_ok(br, &p, 4 * (uint64_t)BLK, BLK) && read_ok(br, &p, 6 * (uint64_t)BLK, 3 * BLK),
          "neighbouring blocks read fine");
    unsigned long g0 = cs.gets;
    rc = read_err(br, &p, 5 * (uint64_t)BLK, 10, &err);
    CHECK(rc == -EIO && cs.gets == g0 + 1, "a failure is not cached: the re-read fetches again");
    rc = read_err(br, &p, 3 * (uint64_t)BLK, 4 * BLK, &err);
    CHECK(rc == -EIO, "a read spanning the corrupt block fails");
    block_reader_free(br);

    /* One GET covering the corrupt block still delivers its neighbours. */
    cs_init(&cs);
    br = block_reader_new(&cs.base, 64u << 20, 2, 8u << 20, &err);
    rc = read_err(br, &p, 0, DATA_SIZE, &err);
    CHECK(rc == -EIO && strstr(err.msg, "block 5"), "whole-partition read: -EIO at block 5");
    g0 = cs.gets;
    CHECK(read_ok(br, &p, 6 * (uint64_t)BLK, 3 * BLK) && read_ok(br, &p, 10 * (uint64_t)BLK, BLK) &&
              cs.gets == g0,
          "blocks after the corrupt one in the same GET were cached (%lu new GETs)", cs.gets - g0);
    block_reader_readahead(br, &p, 0, DATA_SIZE);
    block_reader_wait_idle(br);
    rc = read_err(br, &p, 9 * (uint64_t)BLK, 10, &err);
    CHECK(rc == -EIO && strstr(err.msg, "block 9"), "after read-ahead, block 9 still -EIO");
    block_reader_free(br);

    /* Truncated object: the index promises more than the store has. */
    const lzop_block *b10 = &good->blocks.blocks[10];
    write_key("trunc/part.lzo", comp, (size_t)b10->data_offset + 100);
    p.key = "trunc/part.lzo";
    br = block_reader_new(local, 64u << 20, 2, 8u << 20, &err);
    rc = read_err(br, &p, 12 * (uint64_t)BLK, 10, &err);
    CHECK(rc == -EIO && strstr(err.msg, "trunc/part.lzo"), "truncated object: -EIO: %s", err.msg);
    rc = read_err(br, &p, 9 * (uint64_t)BLK, 2 * BLK, &err);
    CHECK(rc == -EIO, "read into the cut block: -EIO");
    CHECK(read_ok(br, &p, 8 * (uint64_t)BLK, 2 * BLK), "blocks before the cut read fine");
    block_reader_free(br);

    /* A partition that vanished after it was indexed. */
    write_key("vanish/part.lzo", comp, comp_len);
    p.key = "vanish/part.lzo";
    br = block_reader_new(local, 64u << 20, 2, 8u << 20, &err);
    CHECK(read_ok(br, &p, 0, 1000), "partition readable before it vanishes");
    char path[512];
    tpath(path, sizeof path, p.key);
    unlink(path);
    rc = read_err(br, &p, 3 * (uint64_t)BLK, 10, &err);
    CHECK(rc == -ENOENT && strstr(err.msg, "vanish/part.lzo"), "vanished partition: -ENOENT: %s",
          err.msg);
    block_reader_readahead(br, &p, 4 * (uint64_t)BLK, DATA_SIZE);
    rc = read_err(br, &p, 6 * (uint64_t)BLK, 10, &err);
    CHECK(rc == -ENOENT, "read-ahead on it, then a read: -ENOENT, no crash (%d)", rc);
    block_reader_free(br);

    /* An index that does not fit the object is caught, not trusted. */
    backup_partition q = *good;
    lzop_block *blocks = malloc(q.blocks.n_blocks * sizeof *blocks);
    memcpy(blocks, good->blocks.blocks, q.blocks.n_blocks * sizeof *blocks);
    blocks[3].data_offset = blocks[3].comp_offset + 100000;
    q.blocks.blocks = blocks;
    br = block_reader_new(local, 64u << 20, 2, 8u << 20, &err);
    rc = read_err(br, &q, 3 * (uint64_t)BLK, 10, &err);
    CHECK(rc == -EIO && strstr(err.msg, "block 3"), "inconsistent block table: -EIO: %s", err.msg);
    block_reader_readahead(br, &q, 0, DATA_SIZE);
    block_reader_free(br);
    free(blocks);
}

/* A forged block table (from a stored index) whose block 0 is the object's
 * block 1: what it decodes must not be served, from the cache, to the
 * genuine table of the same object under the same block number. */
static void test_forged_table(const backup_partition *good)
{
    backup_partition q = *good;
    size_t n = good->blocks.n_blocks - 1;
    lzop_block *blocks = malloc(n * sizeof *blocks);
    memcpy(blocks, good->blocks.blocks + 1, n * sizeof *blocks);
    for (size_t i = 0; i < n; i++)
        blocks[i].uncomp_offset -= BLK;
    q.blocks.blocks = blocks;
    q.blocks.n_blocks = n;
    q.blocks.uncomp_size -= BLK;
    walfs_err err;
    block_reader *br = block_reader_new(local, 64u << 20, 0, 0, &err);
    unsigned char *b = malloc(BLK);
    walfs_err_clear(&err);
    ssize_t got = block_reader_read(br, &q, 0, b, 1000, &err);
    CHECK(got == 1000 && memcmp(b, orig + BLK, 1000) == 0,
          "the forged table's block 0 decodes the object's block 1 (%zd bytes)", got);
    CHECK(read_ok(br, good, 0, 2 * BLK),
          "the genuine table reads its own block 0, not the one cached for the forged table");
    CHECK(read_ok(br, good, 0, 1000) && block_reader_read(br, &q, 0, b, 1000, &err) == 1000 &&
              memcmp(b, orig + BLK, 1000) == 0,
          "both stay right once both are cached");
    free(b);
    block_reader_free(br);
    free(blocks);
}

/* Not a check: sequential throughput from the local store, for the record. */
static void bench(const backup_partition *p)
{
    walfs_err err;
    block_reader *br = block_reader_new(local, 64u << 20, 4, 16u << 20, &err);
    unsigned char *b = malloc(131072);
    double t0 = now_s();
    int rounds = 4;
    for (int r = 0; r < rounds; r++) {
        backup_partition q = *p;
        char etag[32];
        snprintf(etag, sizeof etag, "bench-%d", r); /* a cold cache each round */
        snprintf(q.etag, sizeof q.etag, "%s", etag);
        for (uint64_t off = 0; off < DATA_SIZE; off += 131072) {
            block_reader_readahead(br, &q, off, DATA_SIZE);
            block_reader_read(br, &q, off, b, 131072, &err);
        }
    }
    double took = now_s() - t0;
    printf("# sequential read with read-ahead, local store: %.0f MB/s\n",
           rounds * (double)DATA_SIZE / took / 1e6);
    free(b);
    block_reader_free(br);
}

int main(void)
{
    backup_partition part;
    if (setup(&part) != 0) {
        printf("not ok 1 - setup failed\n");
        return 1;
    }
    test_layout(&part);
    test_ranges(&part);
    test_lzop_binary();
    test_counting(&part);
    test_concurrency(&part);
    test_readahead(&part);
    test_corruption(&part);
    test_forged_table(&part);
    bench(&part);

    free_part(&part);
    free(orig);
    free(comp);
    store_close(local);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", tmpdir);
    return test_summary();
}
