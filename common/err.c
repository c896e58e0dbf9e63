#include "common/err.h"

#include <errno.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ELIDED " [...] "

size_t walfs_char_start(const char *s, size_t len, size_t at)
{
    while (at < len && ((unsigned char)s[at] & 0xC0) == 0x80)
        at++;
    return at;
}

/* src[0..len) into msg; a longer one keeps its head and its tail, where
 * the reason and what to do are, and loses the middle (a long key name). */
static void fit(char *msg, const char *src, size_t len)
{
    const size_t cap = WALFS_ERR_MSG_MAX - 1;
    if (len <= cap) {
        memmove(msg, src, len);
        msg[len] = '\0';
        return;
    }
    size_t keep = cap - strlen(ELIDED);
    size_t head = keep / 2;
    while (head > 0 && ((unsigned char)src[head] & 0xC0) == 0x80)
        head--;
    size_t tail_at = walfs_char_start(src, len, len - (keep - head));
    char out[WALFS_ERR_MSG_MAX];
    memcpy(out, src, head);
    memcpy(out + head, ELIDED, strlen(ELIDED));
    memcpy(out + head + strlen(ELIDED), src + tail_at, len - tail_at);
    out[head + strlen(ELIDED) + len - tail_at] = '\0';
    memcpy(msg, out, strlen(out) + 1);
}

/* fmt formatted in full (on the heap when that is long), followed by
 * after (the old message, for a prefix), fitted into err->msg. */
__attribute__((format(printf, 2, 0)))
static void format_into(walfs_err *err, const char *fmt, va_list ap, const char *after)
{
    char stack[WALFS_ERR_MSG_MAX * 2], *buf = stack;
    va_list again;
    va_copy(again, ap);
    size_t alen = after ? strlen(after) : 0;
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    if (n < 0)
        n = 0, stack[0] = '\0';
    if ((size_t)n + alen >= sizeof stack) {
        buf = malloc((size_t)n + alen + 1);
        if (buf)
            vsnprintf(buf, (size_t)n + 1, fmt, again);
        else
            buf = stack, n = (int)strlen(stack), alen = 0;
    }
    va_end(again);
    if (alen)
        memcpy(buf + n, after, alen + 1);
    fit(err->msg, buf, (size_t)n + alen);
    if (buf != stack)
        free(buf);
}

int walfs_err_set(walfs_err *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    format_into(err, fmt, ap, NULL);
    va_end(ap);
    return code;
}

int walfs_err_prefix(walfs_err *err, const char *fmt, ...)
{
    if (!err)
        return 0;
    char old[WALFS_ERR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    va_list ap;
    va_start(ap, fmt);
    format_into(err, fmt, ap, old);
    va_end(ap);
    return err->code;
}

void walfs_err_clear(walfs_err *err)
{
    if (!err)
        return;
    err->code = 0;
    err->msg[0] = '\0';
}

int walfs_err_user_code(int code)
{
    switch (-code) {
    case 0: case ENOENT:
    case EACCES: case EEXIST: case ENOSPC: case ENOMEM: case EROFS: case ENODATA:
    case EPERM: case ENAMETOOLONG: case EINVAL: case EFBIG:
    /* The catalog's "too many base backups open at once": the user closes
     * some and retries, which EMFILE ("too many open files") says. */
    case EMFILE: case ENFILE:
        return code;
    default:
        return -EIO;
    }
}
