/* The WAL cache against decompression bombs, on an in-memory store that
 * measures the cache directory after every chunk it delivers: no copy is
 * written past --cache-size, its recorded size or its page header's
 * segment size; fills at once share the limit; read-ahead gives way to a
 * reader; partial copies go at failure, at the end, and at the next start
 * when their writer died. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codec/lzop.h"
#include "store/store_driver.h"
#include "wal/object_cache.h"
#include "tap.h"
#include "common/buf.h"

#define MiB (1024u * 1024u)
#define CHUNK (64u * 1024u)

typedef struct fake_obj {
    const char *key;
    const walfs_buf *lzo;
    int64_t recorded;
    int gated; /* stops half-way until the test opens the gate */
} fake_obj;

typedef struct fake_store {
    store base;
    fake_obj objs[16];
    int n;
    char objects_dir[256];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int gate_open, at_gate, gets;
    uint64_t peak;
} fake_store;

static uint64_t bytes_in(const char *dir)
{
    uint64_t total = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    struct stat sb;
    while ((de = readdir(d)) != NULL)
        if (fstatat(dirfd(d), de->d_name, &sb, 0) == 0 && S_ISREG(sb.st_mode))
            total += (uint64_t)sb.st_size;
    closedir(d);
    return total;
}

static int count_partial(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += strncmp(de->d_name, ".fill-", 6) == 0;
    closedir(d);
    return n;
}

static const fake_obj *find(fake_store *fs, const char *key)
{
    for (int i = 0; i < fs->n; i++)
        if (strcmp(fs->objs[i].key, key) == 0)
            return &fs->objs[i];
    return NULL;
}

static int fake_stat(store *st, const char *key, store_stat *out, walfs_err *err)
{
    const fake_obj *o = find((fake_store *)st, key);
    if (!o)
        return walfs_err_set(err, -ENOENT, "%s: no such object", key);
    memset(out, 0, sizeof *out);
    out->size = o->lzo->len;
    snprintf(out->etag, sizeof out->etag, "etag-%s", key);
    out->uncompressed_size = o->recorded;
    return 0;
}

static int fake_get(store *st, const char *key, uint64_t offset, uint64_t length,
                    store_sink_fn sink, void *ctx, walfs_err *err)
{
    fake_store *fs = (fake_store *)st;
    const fake_obj *o = find(fs, key);
    if (!o)
        return walfs_err_set(err, -ENOENT, "%s: no such object", key);
    pthread_mutex_lock(&fs->lock);
    fs->gets++;
    pthread_mutex_unlock(&fs->lock);
    for (size_t off = 0; off < o->lzo->len; off += CHUNK) {
        if (o->gated && off >= o->lzo->len / 2) {
            pthread_mutex_lock(&fs->lock);
            fs->at_gate = 1;
            pthread_cond_broadcast(&fs->cond);
            while (!fs->gate_open)
                pthread_cond_wait(&fs->cond, &fs->lock);
            pthread_mutex_unlock(&fs->lock);
        }
        size_t n = o->lzo->len - off < CHUNK ? o->lzo->len - off : CHUNK;
        int rc = sink(ctx, o->lzo->bytes + off, n);
        uint64_t now = bytes_in(fs->objects_dir);
        pthread_mutex_lock(&fs->lock);
        if (now > fs->peak)
            fs->peak = now;
        pthread_mutex_unlock(&fs->lock);
        if (rc)
            return rc;
    }
    return 0;
}

static const store_ops fake_ops = {.stat = fake_stat, .get = fake_get};

/* head (may be NULL) then zeros, or pseudo-random bytes (incompressible:
 * the object is about as long as what it decompresses to). */
static walfs_buf compress(const unsigned char *head, size_t head_len, size_t total, int random)
{
    walfs_buf out = {0};
    walfs_err err = {0};
    lzop_encoder *enc = lzop_encoder_new(0100600, 0);
    unsigned char *chunk = calloc(1, MiB);
    uint64_t x = 88172645463325252ull;
    for (size_t done = 0; done < total;) {
        size_t n = total - done < MiB ? total - done : MiB;
        memset(chunk, 0, n);
        for (size_t i = 0; random && i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            chunk[i] = (unsigned char)x;
        }
        if (done == 0 && head)
            memcpy(chunk, head, head_len);
        lzop_encoder_write(enc, chunk, n, buf_sink, &out, &err);
        done += n;
    }
    lzop_encoder_finish(enc, buf_sink, &out, &err);
    lzop_encoder_free(enc);
    free(chunk);
    return out;
}

static object_cache *new_cache(fake_store *fs, char *dir, uint64_t max)
{
    walfs_err err = {0};
    object_cache *oc = object_cache_new(&fs->base, dir, max, &err);
    snprintf(fs->objects_dir, sizeof fs->objects_dir, "%s/objects", dir);
    fs->peak = 0;
    return oc;
}

static void add(fake_store *fs, const char *key, const walfs_buf *lzo, int64_t recorded, int gated)
{
    fs->objs[fs->n++] = (fake_obj){.key = key, .lzo = lzo, .recorded = recorded, .gated = gated};
}

typedef struct job {
    object_cache *oc;
    fake_store *fs;
    const char *key;
    int prefetch;
    int rc;
    uint64_t size;
    walfs_err err;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    store_stat meta;
    j->rc = fake_stat(&j->fs->base, j->key, &meta, &j->err);
    if (!j->rc && j->prefetch)
        j->rc = object_cache_prefetch(j->oc, j->key, &meta, &j->size, &j->err);
    else if (!j->rc)
        j->rc = object_cache_size(j->oc, j->key, &meta, &j->size, &j->err);
    return NULL;
}

static void run(job *j) { run_job(j); }

/* The first page header of a segment of seg_size bytes. */
static void long_header(unsigned char h[40], uint32_t seg_size)
{
    memset(h, 0, 40);
    uint16_t magic = 0xD110, info = 0x0002;
    uint32_t tli = 1, blcksz = 8192;
    uint64_t sysid = 7;
    memcpy(h, &magic, 2);
    memcpy(h + 2, &info, 2);
    memcpy(h + 4, &tli, 4);
    memcpy(h + 24, &sysid, 8);
    memcpy(h + 32, &seg_size, 4);
    memcpy(h + 36, &blcksz, 4);
}

int main(void)
{
    char dir[] = "/tmp/walfs-test-oc.XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    fake_store fs = {.base = {.ops = &fake_ops, .url = "mem://"}};
    pthread_mutex_init(&fs.lock, NULL);
    pthread_cond_init(&fs.cond, NULL);

    walfs_buf zeros64 = compress(NULL, 0, 64 * MiB, 0);
    unsigned char head[40];
    long_header(head, MiB);
    walfs_buf header_bomb = compress(head, sizeof head, 4 * MiB, 0);
    walfs_buf segment_1m = compress(head, sizeof head, MiB, 0);
    walfs_buf small = compress(NULL, 0, MiB, 0);
    walfs_buf random3 = compress(NULL, 0, 3 * MiB, 1);
    add(&fs, "wal_005/000000010000000000000031.lzo", &zeros64, -1, 0);
    add(&fs, "wal_005/000000010000000000000041.lzo", &zeros64, -1, 0);
    add(&fs, "wal_005/000000010000000000000042.lzo", &zeros64, -1, 0);
    add(&fs, "wal_005/000000010000000000000043.lzo", &zeros64, -1, 0);
    add(&fs, "wal_005/000000010000000000000044.lzo", &zeros64, -1, 0);
    add(&fs, "wal_005/000000010000000000000051.lzo", &header_bomb, -1, 0);
    add(&fs, "wal_005/000000010000000000000052.lzo", &segment_1m, -1, 0);
    add(&fs, "wal_005/00000002.history.lzo", &header_bomb, -1, 0);
    add(&fs, "wal_005/000000010000000000000061.lzo", &small, 3000000000ll, 0);
    add(&fs, "wal_005/000000010000000000000062.lzo", &small, 100, 0);
    add(&fs, "wal_005/000000010000000000000002.lzo", &random3, -1, 1);
    add(&fs, "wal_005/000000010000000000000007.lzo", &random3, -1, 0);
    CHECK(zeros64.len < MiB / 2, "a %zu-byte object that decompresses to 64 MiB", zeros64.len);

    object_cache *oc = new_cache(&fs, dir, 16 * MiB);
    job j = {.oc = oc, .fs = &fs, .key = "wal_005/000000010000000000000031.lzo"};
    run(&j);
    CHECK(j.rc == -EIO, "the 64 MiB bomb is refused under a 16 MiB cache: %s", j.err.msg);
    CHECK(strstr(j.err.msg, "000000010000000000000031.lzo") && strstr(j.err.msg, "16 MiB") &&
              strstr(j.err.msg, "--cache-size"),
          "... the message names it, the limit and what to do");
    CHECK(fs.peak <= 16 * MiB, "... the cache never held more than 16 MiB (%llu bytes)",
          (unsigned long long)fs.peak);
    CHECK(bytes_in(fs.objects_dir) == 0, "... and nothing of it stays");
    int gets = fs.gets;
    char first[sizeof j.err.msg];
    memcpy(first, j.err.msg, sizeof first);
    run(&j);
    CHECK(j.rc == -EIO && fs.gets == gets && strcmp(j.err.msg, first) == 0,
          "a second stat is refused the same way without a download");

    fs.peak = 0;
    job four[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        static const char *keys[] = {"wal_005/000000010000000000000041.lzo",
                                     "wal_005/000000010000000000000042.lzo",
                                     "wal_005/000000010000000000000043.lzo",
                                     "wal_005/000000010000000000000044.lzo"};
        four[i] = (job){.oc = oc, .fs = &fs, .key = keys[i]};
        pthread_create(&t[i], NULL, run_job, &four[i]);
    }
    int refused = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        refused += four[i].rc == -EIO;
    }
    CHECK(refused == 4, "four bombs at once are all refused (%d)", refused);
    CHECK(fs.peak <= 16 * MiB, "... and together stay within 16 MiB (%llu bytes)",
          (unsigned long long)fs.peak);
    CHECK(bytes_in(fs.objects_dir) == 0, "... leaving nothing");

    fs.peak = 0;
    j = (job){.oc = oc, .fs = &fs, .key = "wal_005/000000010000000000000051.lzo"};
    run(&j);
    CHECK(j.rc == -EIO && strstr(j.err.msg, "1048576") && strstr(j.err.msg, "page header"),
          "a segment past the 1 MiB its page header declares is refused: %s", j.err.msg);
    CHECK(fs.peak <= MiB, "... after at most 1 MiB (%llu bytes)", (unsigned long long)fs.peak);
    j = (job){.oc = oc, .fs = &fs, .key = "wal_005/000000010000000000000052.lzo"};
    run(&j);
    CHECK(j.rc == 0 && j.size == MiB, "a whole 1 MiB segment with that header is served (%llu)",
          (unsigned long long)j.size);
    j = (job){.oc = oc, .fs = &fs, .key = "wal_005/00000002.history.lzo"};
    run(&j);
    CHECK(j.rc == 0 && j.size == 4 * MiB, "the same bytes under a history file's name are no "
          "segment: no page header check");

    fs.gets = 0;
    j = (job){.oc = oc, .fs = &fs, .key = "wal_005/000000010000000000000061.lzo"};
    run(&j);
    CHECK(j.rc == -EIO && strstr(j.err.msg, "1 GiB") && fs.gets == 0,
          "a recorded size of 3000000000 bytes is refused by stat without a download: %s",
          j.err.msg);
    store_stat meta;
    int fd = -1;
    uint64_t size;
    walfs_err err = {0};
    fake_stat(&fs.base, "wal_005/000000010000000000000061.lzo", &meta, &err);
    CHECK(object_cache_open(oc, "wal_005/000000010000000000000061.lzo", &meta, &fd, &size, &err) ==
              -EIO && fs.gets == 0, "... and by open, without a download");
    uint64_t before = fs.peak = bytes_in(fs.objects_dir); /* the copies served above */
    fake_stat(&fs.base, "wal_005/000000010000000000000062.lzo", &meta, &err);
    int rc = object_cache_open(oc, "wal_005/000000010000000000000062.lzo", &meta, &fd, &size, &err);
    CHECK(rc == -EIO && strstr(err.msg, "100 bytes recorded") && fs.peak == before,
          "an object decompressing past its recorded 100 bytes is refused before a byte is "
          "written: %s", err.msg);
    /* Its metadata fixed by a copy onto itself: same ETag, the true size. */
    meta.uncompressed_size = MiB;
    rc = object_cache_open(oc, "wal_005/000000010000000000000062.lzo", &meta, &fd, &size, &err);
    CHECK(rc == 0 && size == MiB, "... and served once its recorded size is fixed (same ETag): "
          "%d %s", rc, rc ? err.msg : "");
    if (rc == 0)
        close(fd);
    object_cache_free(oc);

    /* Read-ahead holds half a cache of 4 MiB when a reader needs 3 MiB. */
    char dir2[] = "/tmp/walfs-test-oc.XXXXXX";
    if (!mkdtemp(dir2))
        return 1;
    oc = new_cache(&fs, dir2, 4 * MiB);
    job ahead = {.oc = oc, .fs = &fs, .key = "wal_005/000000010000000000000002.lzo", .prefetch = 1};
    job reader = {.oc = oc, .fs = &fs, .key = "wal_005/000000010000000000000007.lzo"};
    pthread_t ta, tr;
    pthread_create(&ta, NULL, run_job, &ahead);
    pthread_mutex_lock(&fs.lock);
    while (!fs.at_gate)
        pthread_cond_wait(&fs.cond, &fs.lock);
    pthread_mutex_unlock(&fs.lock);
    pthread_create(&tr, NULL, run_job, &reader);
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL);
    pthread_mutex_lock(&fs.lock);
    fs.gate_open = 1;
    pthread_cond_broadcast(&fs.cond);
    pthread_mutex_unlock(&fs.lock);
    pthread_join(ta, NULL);
    pthread_join(tr, NULL);
    CHECK(reader.rc == 0 && reader.size == 3 * MiB,
          "a reader short of room gets it from read-ahead: %s", reader.err.msg);
    CHECK(ahead.rc == -EAGAIN, "... which gave way: %s", ahead.err.msg);
    CHECK(fs.peak <= 4 * MiB, "... within the 4 MiB cache (%llu bytes)",
          (unsigned long long)fs.peak);
    CHECK(count_partial(fs.objects_dir) == 0, "... and left no partial copy");
    object_cache_free(oc);

    /* Partial copies: of a dead walfs, pid-less (older versions), of a live one. */
    char dead[512], pidless[512], live[512], mine[512];
    snprintf(dead, sizeof dead, "%s/.fill-999999999-aaaaaa", fs.objects_dir);
    snprintf(pidless, sizeof pidless, "%s/.fill-bbbbbb", fs.objects_dir);
    snprintf(live, sizeof live, "%s/.fill-%ld-cccccc", fs.objects_dir, (long)getppid());
    snprintf(mine, sizeof mine, "%s/.fill-%ld-dddddd", fs.objects_dir, (long)getpid());
    close(open(dead, O_CREAT | O_WRONLY, 0600));
    close(open(pidless, O_CREAT | O_WRONLY, 0600));
    close(open(live, O_CREAT | O_WRONLY, 0600));
    oc = new_cache(&fs, dir2, 4 * MiB);
    CHECK(access(dead, F_OK) != 0 && access(pidless, F_OK) != 0,
          "a start removes partial copies whose writer is gone");
    CHECK(access(live, F_OK) == 0, "... but not those of a walfs still running");
    close(open(mine, O_CREAT | O_WRONLY, 0600));
    object_cache_free(oc);
    CHECK(access(mine, F_OK) != 0 && access(live, F_OK) == 0,
          "the end removes this process's own, only");
    unlink(live);

    buf_free(&zeros64);
    buf_free(&header_bomb);
    buf_free(&segment_1m);
    buf_free(&small);
    buf_free(&random3);
    pthread_mutex_destroy(&fs.lock);
    pthread_cond_destroy(&fs.cond);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, dir2);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s %s\n", dir, dir2);
    return test_summary();
}
