/* Runs a shell command built printf-style, for unit tests that set up
 * files with the tools the suite already needs (cp, lzop, python3). */
#ifndef WALFS_TESTS_TEST_SH_H
#define WALFS_TESTS_TEST_SH_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd) == 0 ? 0 : -1;
}

#endif
