/* An in-memory store for the fuzz targets: objects are byte ranges of the
 * fuzzer's input, served by get the way the S3 and local backends serve
 * them (in pieces, honouring offset and length), so the code under test
 * runs its real store path without disk or network. */
#ifndef WALFS_TESTS_FUZZ_MEM_STORE_H
#define WALFS_TESTS_FUZZ_MEM_STORE_H

#include <errno.h>
#include <string.h>

#include "store/store_driver.h"

#define MEM_STORE_MAX 8

typedef struct mem_store {
    store base;
    size_t n;
    const char *keys[MEM_STORE_MAX];
    const unsigned char *data[MEM_STORE_MAX];
    size_t len[MEM_STORE_MAX];
} mem_store;

static int mem_get(store *st, const char *key, uint64_t off, uint64_t len, store_sink_fn sink,
                   void *ctx, walfs_err *err)
{
    mem_store *ms = (mem_store *)st;
    for (size_t i = 0; i < ms->n; i++) {
        if (strcmp(ms->keys[i], key) != 0)
            continue;
        if (off > ms->len[i])
            return walfs_err_set(err, -EIO, "%s: range starts past the end", key);
        size_t end = len == 0 || len > ms->len[i] - off ? ms->len[i] : (size_t)(off + len);
        /* Pieces of a few KiB, as a network body arrives. */
        for (size_t p = (size_t)off; p < end;) {
            size_t n = end - p < 3000 ? end - p : 3000;
            int rc = sink(ctx, ms->data[i] + p, n);
            if (rc)
                return rc;
            p += n;
        }
        return 0;
    }
    return walfs_err_set(err, -ENOENT, "%s: no such object", key);
}

static int mem_unsupported(void)
{
    return -ENOTSUP;
}

static int mem_stat(store *st, const char *key, store_stat *out, walfs_err *err)
{
    (void)st; (void)key; (void)out; (void)err;
    return mem_unsupported();
}

static int mem_put(store *st, const char *key, const void *body, size_t len, int64_t us, walfs_err *err)
{
    (void)st; (void)key; (void)body; (void)len; (void)us; (void)err;
    return mem_unsupported();
}

static int mem_remove(store *st, const char *key, walfs_err *err)
{
    (void)st; (void)key; (void)err;
    return mem_unsupported();
}

static int mem_list(store *st, const char *dir, store_list_fn fn, void *ctx, walfs_err *err)
{
    (void)st; (void)dir; (void)fn; (void)ctx; (void)err;
    return mem_unsupported();
}

static void mem_destroy(store *st)
{
    (void)st;
}

static const store_ops mem_ops = {.stat = mem_stat, .get = mem_get, .put = mem_put,
                                  .remove = mem_remove, .list = mem_list, .destroy = mem_destroy};

static void mem_store_init(mem_store *ms)
{
    memset(ms, 0, sizeof *ms);
    ms->base.ops = &mem_ops;
    ms->base.url = "mem://";
}

#endif
