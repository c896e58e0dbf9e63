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
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[WALFS_ERR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s%s", prefix, old);
    return err->code;
}

void walfs_err_clear(walfs_err *err)
{
    if (!err)
        return;
    err->code = 0;
    err->msg[0] = '\0';
}
