/* The monotonic clock for unit tests that time a call or wait for another
 * thread with a bound: milliseconds now, a deadline for
 * pthread_cond_timedwait, and a condition variable that uses that clock. */
#ifndef WALFS_TESTS_TEST_CLOCK_H
#define WALFS_TESTS_TEST_CLOCK_H

#include <pthread.h>
#include <time.h>

static inline double test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ms from now on CLOCK_MONOTONIC. */
static inline struct timespec test_deadline_ms(unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* A condition variable whose timed waits take test_deadline_ms's times. */
static inline void test_cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &monotonic);
    pthread_condattr_destroy(&monotonic);
}

#endif
