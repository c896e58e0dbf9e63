/* One growable byte buffer: what a store or codec sink appends to, a
 * request or JSON document is built in, a response body is kept in.
 *
 * The bytes are always followed by a NUL (not counted in len) once any
 * memory is held, so a text body can be handed to a parser or printed as
 * is; binary content is fine too.  A buffer may be given a cap (max): an
 * append that would pass it fails with -EFBIG and keeps nothing of it, so
 * a hostile or broken peer cannot make it grow without bound.  The first
 * failure (-ENOMEM, -EFBIG) is kept in err and every later append fails
 * with it: a builder may append many pieces and check once at the end.
 *
 * Knows nothing of what the bytes are, where they come from or go, or any
 * lock: one buffer belongs to one thread at a time. */
#ifndef WALFS_COMMON_BUF_H
#define WALFS_COMMON_BUF_H

#include <stddef.h>

typedef struct walfs_buf {
    union {
        char *data;             /* NULL until something is kept */
        unsigned char *bytes;   /* the same memory, for binary content */
    };
    size_t len, cap;            /* cap counts the NUL's byte */
    size_t max;                 /* 0: no cap; else len never exceeds it */
    int err;                    /* 0, or the first failure */
} walfs_buf;

/* Room for extra more bytes without another allocation; 0, -ENOMEM or
 * -EFBIG (len + extra would pass max).  Growth at least doubles cap. */
int buf_reserve(walfs_buf *b, size_t extra);
/* 0, or -ENOMEM / -EFBIG (nothing of data kept). */
int buf_append(walfs_buf *b, const void *data, size_t len);
int buf_puts(walfs_buf *b, const char *s);
int buf_printf(walfs_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The sink of store_get and the codecs: ctx is the walfs_buf. */
int buf_sink(void *ctx, const void *data, size_t len);
/* Hands the bytes over (free() them; NULL when nothing was kept) and
 * leaves b empty, holding no memory, its max kept. */
char *buf_take(walfs_buf *b, size_t *len);
/* Empties b for reuse (a retried request): keeps its memory and max,
 * forgets a failure. */
void buf_reset(walfs_buf *b);
/* Frees the memory; b is empty again, its max kept. */
void buf_free(walfs_buf *b);

#endif
