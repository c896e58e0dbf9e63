/* Minimal TAP-style checks for the unit test binaries: each CHECK prints
 * "ok N - what" or "not ok N - what", and test_summary() prints the closing
 * "N passed, M failed" line and returns the exit status. */
#ifndef WALFS_TESTS_TAP_H
#define WALFS_TESTS_TAP_H

#include <stdio.h>

static int tap_passed, tap_failed;

/* cond is evaluated exactly once: a CHECK whose condition calls the code
 * under test must not run it a second time to print the failure. */
#define CHECK(cond, ...)                                                           \
    do {                                                                           \
        int tap_ok_ = !!(cond);                                                    \
        if (tap_ok_) {                                                             \
            tap_passed++;                                                          \
            printf("ok %d - ", tap_passed + tap_failed);                           \
        } else {                                                                   \
            tap_failed++;                                                          \
            printf("not ok %d - ", tap_passed + tap_failed);                       \
        }                                                                          \
        printf(__VA_ARGS__);                                                       \
        if (!tap_ok_)                                                              \
            printf("   [%s:%d: %s]", __FILE__, __LINE__, #cond);                   \
        printf("\n");                                                              \
        fflush(stdout);                                                            \
    } while (0)

static inline int test_summary(void)
{
    printf("%d passed, %d failed\n", tap_passed, tap_failed);
    return tap_failed == 0 && tap_passed > 0 ? 0 : 1;
}

#endif
