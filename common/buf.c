#include "common/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Small enough that a buffer holding one short string wastes little. */
#define FIRST_CAP 64

int buf_reserve(walfs_buf *b, size_t extra)
{
    if (b->err)
        return b->err;
    if (b->max && (b->len > b->max || extra > b->max - b->len))
        return b->err = -EFBIG;
    if (extra > SIZE_MAX - 1 - b->len)
        return b->err = -ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap <= SIZE_MAX / 2 ? b->cap * 2 : need;
    if (cap < need)
        cap = need;
    if (cap < FIRST_CAP)
        cap = FIRST_CAP;
    /* Never more than the cap can use. */
    if (b->max && cap > b->max + 1)
        cap = b->max + 1;
    char *grown = realloc(b->data, cap);
    if (!grown)
        return b->err = -ENOMEM;
    if (!b->data)
        grown[0] = '\0';
    b->data = grown;
    b->cap = cap;
    return 0;
}

int buf_append(walfs_buf *b, const void *data, size_t len)
{
    int rc = buf_reserve(b, len);
    if (rc)
        return rc;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int buf_puts(walfs_buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(walfs_buf *b, const char *fmt, ...)
{
    if (b->err)
        return b->err;
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->cap > b->len ? b->cap - b->len : 0;
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
    va_end(ap);
    int rc = n < 0 ? (b->err = -EINVAL) : 0;
    if (!rc && (size_t)n >= room)
        rc = buf_reserve(b, (size_t)n);
    else if (!rc && b->max && (size_t)n > b->max - b->len)
        rc = b->err = -EFBIG;
    if (rc) {
        /* What was written into the room is not kept. */
        if (b->data)
            b->data[b->len] = '\0';
        return rc;
    }
    if ((size_t)n >= room) {
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return 0;
}

int buf_sink(void *ctx, const void *data, size_t len)
{
    return buf_append(ctx, data, len);
}

char *buf_take(walfs_buf *b, size_t *len)
{
    char *data = b->data;
    if (len)
        *len = b->len;
    *b = (walfs_buf){.max = b->max};
    return data;
}

void buf_reset(walfs_buf *b)
{
    b->len = 0;
    b->err = 0;
    if (b->data)
        b->data[0] = '\0';
}

void buf_free(walfs_buf *b)
{
    free(b->data);
    *b = (walfs_buf){.max = b->max};
}
