/* A growing byte buffer usable as a codec or store sink, for unit tests. */
#ifndef WALFS_TESTS_TEST_BUF_H
#define WALFS_TESTS_TEST_BUF_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct buf {
    unsigned char *p;
    size_t len, cap;
} buf;

static inline int buf_sink(void *ctx, const void *data, size_t n)
{
    buf *b = ctx;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np)
            return -ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static inline void buf_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

#endif
