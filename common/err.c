#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int walfs_err_set(walfs_err *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

int walfs_err_prefix(walfs_err *err, const char *fmt, ...)
{
    if (!err)
        return 0;
    char prefix[WALFS_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return err->code;
    size_t plen = (size_t)n < sizeof prefix ? (size_t)n : sizeof prefix - 1;
    size_t old = strnlen(err->msg, sizeof err->msg - 1);
    if (plen + old >= sizeof err->msg)
        old = sizeof err->msg - 1 - plen;
    memmove(err->msg + plen, err->msg, old);
    memcpy(err->msg, prefix, plen);
    err->msg[plen + old] = '\0';
    return err->code;
}

void walfs_err_clear(walfs_err *err)
{
    if (!err)
        return;
    err->code = 0;
    err->msg[0] = '\0';
}
