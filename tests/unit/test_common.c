/* common/'s shared pieces: the growable buffer keeps its cap exactly and
 * its first failure, and stays NUL-terminated for text; hex is lower-case
 * and terminated; a worker pool wakes, stops and joins once. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/hex.h"
#include "common/worker.h"
#include "tap.h"

static void test_buf_append(void)
{
    walfs_buf b = {0};
    CHECK(b.data == NULL && b.len == 0, "an empty buffer holds no memory");
    CHECK(buf_append(&b, "abc", 3) == 0 && b.len == 3 && strcmp(b.data, "abc") == 0,
          "append keeps the bytes, NUL-terminated");
    CHECK(buf_puts(&b, "def") == 0 && buf_printf(&b, "-%d-%s", 42, "x") == 0 &&
              strcmp(b.data, "abcdef-42-x") == 0 && b.len == 11,
          "puts and printf append");
    char big[1000];
    memset(big, 'q', sizeof big);
    int ok = 1;
    for (int i = 0; i < 1000 && ok; i++)
        ok = buf_append(&b, big, sizeof big) == 0;
    CHECK(ok && b.len == 11 + 1000u * 1000 && b.data[b.len] == '\0' && b.cap > b.len &&
              memcmp(b.data + 11 + 999u * 1000, big, sizeof big) == 0,
          "a megabyte in a thousand appends");
    buf_reset(&b);
    CHECK(b.len == 0 && b.data && b.data[0] == '\0' && b.cap > 0, "reset keeps the memory");
    char fmt_long[600];
    memset(fmt_long, 'z', sizeof fmt_long - 1);
    fmt_long[sizeof fmt_long - 1] = '\0';
    CHECK(buf_printf(&b, "<%s>", fmt_long) == 0 && b.len == 601 && b.data[600] == '>',
          "printf longer than the room left grows the buffer");
    size_t len = 0;
    char *taken = buf_take(&b, &len);
    CHECK(taken && len == 601 && b.data == NULL && b.len == 0 && b.cap == 0,
          "take hands the bytes over and leaves the buffer empty");
    free(taken);
    CHECK(buf_take(&b, &len) == NULL && len == 0, "take of an empty buffer is NULL");
    CHECK(buf_reserve(&b, 100) == 0 && b.cap == 101 && b.len == 0 && b.data[0] == '\0',
          "reserve from empty allocates what was asked (and the NUL)");
    CHECK(buf_append(&b, "", 0) == 0 && b.len == 0, "empty append");
    buf_free(&b);
    buf_free(&b);
    CHECK(b.data == NULL, "free twice is harmless");
}

static void test_buf_cap(void)
{
    walfs_buf b = {.max = 10};
    CHECK(buf_append(&b, "0123456789", 10) == 0 && b.len == 10, "exactly the cap fits");
    CHECK(b.cap == 11, "never more memory than the cap can use");
    CHECK(buf_append(&b, "x", 1) == -EFBIG && b.len == 10 && strcmp(b.data, "0123456789") == 0,
          "one byte past the cap: -EFBIG, nothing of it kept");
    CHECK(buf_append(&b, "", 0) == -EFBIG && b.err == -EFBIG, "the failure stays");
    buf_reset(&b);
    CHECK(b.err == 0 && b.max == 10 && buf_append(&b, "abcde", 5) == 0,
          "reset forgets the failure, keeps the cap");
    CHECK(buf_printf(&b, "%s", "123456") == -EFBIG && b.len == 5 && strcmp(b.data, "abcde") == 0,
          "printf past the cap keeps nothing of it");
    buf_free(&b);
    CHECK(b.max == 10, "free keeps the cap");

    walfs_buf c = {.max = 4096};
    char page[4096];
    memset(page, 'p', sizeof page);
    CHECK(buf_append(&c, page, 4000) == 0 && buf_append(&c, page, 96) == 0 && c.len == 4096 &&
              buf_append(&c, page, 1) == -EFBIG,
          "a 4 KiB cap in pieces");
    buf_free(&c);
    walfs_buf d = {.max = 4096};
    CHECK(buf_reserve(&d, 4097) == -EFBIG && d.data == NULL, "reserve past the cap");
    CHECK(buf_sink(&d, page, 1) == -EFBIG, "the sink fails once the buffer has");
    buf_free(&d);
}

static void test_hex(void)
{
    char out[9];
    memset(out, '#', sizeof out);
    hex_encode("\x00\x9f\xa0\xff", 4, out);
    CHECK(strcmp(out, "009fa0ff") == 0, "bytes as lower-case hex, NUL-terminated: %s", out);
    hex_encode("", 0, out);
    CHECK(out[0] == '\0', "no bytes: an empty string");
    unsigned char all[256];
    char hex[513], want[513];
    for (int i = 0; i < 256; i++) {
        all[i] = (unsigned char)i;
        snprintf(want + 2 * i, 3, "%02x", i);
    }
    hex_encode(all, sizeof all, hex);
    CHECK(strcmp(hex, want) == 0, "every byte value as printf's %%02x writes it");
}

typedef struct jobs {
    pthread_mutex_t lock;
    worker_pool pool;
    int queued, done, finishing;
} jobs;

/* Takes jobs until stopped, or (finishing) until none are left. */
static void *take_jobs(void *arg)
{
    jobs *j = arg;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (!worker_stopping(&j->pool) && !j->queued && !j->finishing)
            worker_wait(&j->pool);
        if (worker_stopping(&j->pool) || (!j->queued && j->finishing))
            break;
        j->queued--;
        j->done++;
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

/* How many of this process's threads /proc names so. */
static int threads_named(const char *name)
{
    int count = 0;
    DIR *d = opendir("/proc/self/task");
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = e->d_name[0] != '.' ? fopen(path, "r") : NULL;
        if (f && fgets(comm, sizeof comm, f)) {
            comm[strcspn(comm, "\n")] = '\0';
            count += strcmp(comm, name) == 0;
        }
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    return count;
}

static void test_worker(void)
{
    jobs j = {0};
    pthread_mutex_init(&j.lock, NULL);
    worker_init(&j.pool, &j.lock, NULL);
    worker_stop(&j.pool);
    worker_stop(&j.pool);
    CHECK(j.pool.n_threads == 0, "a pool never started stops (twice) harmlessly");
    CHECK(worker_start(&j.pool, 2, take_jobs, &j) == 0 && j.pool.n_threads == 0,
          "no thread starts once stopped");
    worker_destroy(&j.pool);

    worker_init(&j.pool, &j.lock, "walfs-test-pool-name");
    CHECK(worker_start(&j.pool, 3, take_jobs, &j) == 0 && j.pool.n_threads == 3 &&
              worker_start(&j.pool, 3, take_jobs, &j) == 0 && j.pool.n_threads == 3,
          "start runs n threads, a second start none more");
    CHECK(threads_named("walfs-test-pool") == 3,
          "the threads carry the pool's name, cut to 15 bytes: %d of 3", threads_named("walfs-test-pool"));
    pthread_mutex_lock(&j.lock);
    j.queued = 1000;
    worker_wake_all(&j.pool);
    j.finishing = 1;
    pthread_mutex_unlock(&j.lock);
    worker_join(&j.pool);
    CHECK(j.done == 1000 && j.queued == 0 && j.pool.n_threads == 0,
          "join waits for the threads to drain the work: %d done", j.done);
    worker_stop(&j.pool);
    worker_destroy(&j.pool);

    jobs k = {0};
    pthread_mutex_init(&k.lock, NULL);
    worker_init(&k.pool, &k.lock, "");
    CHECK(worker_start(&k.pool, WORKER_MAX + 5, take_jobs, &k) == 0 && k.pool.n_threads == WORKER_MAX,
          "at most WORKER_MAX threads");
    worker_destroy(&k.pool);
    CHECK(k.pool.n_threads == 0 && worker_stopping(&k.pool), "stop wakes the idle threads and joins them");
    pthread_mutex_destroy(&k.lock);
    pthread_mutex_destroy(&j.lock);
}

int main(void)
{
    test_worker();
    test_hex();
    test_buf_append();
    test_buf_cap();
    return test_summary();
}
