#include "common/deadline.h"

#include <time.h>

/* 0: no scope open on this thread. */
static _Thread_local uint64_t scope_end_ms;
static _Thread_local const _Atomic int *cancel_flag;
static _Thread_local int (*stop_fn)(void *ctx);
static _Thread_local void *stop_ctx;

void deadline_cancel_on(const _Atomic int *flag) { cancel_flag = flag; }

void deadline_stop_when(int (*stop)(void *ctx), void *ctx)
{
    stop_fn = stop;
    stop_ctx = ctx;
}

int deadline_cancelled(void)
{
    return (cancel_flag && *cancel_flag) || (stop_fn && stop_fn(stop_ctx));
}

uint64_t deadline_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t deadline_scope_begin(uint64_t budget_ms)
{
    uint64_t previous = scope_end_ms;
    uint64_t end = deadline_now_ms() + budget_ms;
    if (previous == 0 || end < previous)
        scope_end_ms = end;
    return previous;
}

void deadline_scope_end(uint64_t previous_end) { scope_end_ms = previous_end; }

uint64_t deadline_budget_ms(uint64_t default_ms)
{
    if (scope_end_ms == 0)
        return default_ms;
    uint64_t now = deadline_now_ms();
    if (now >= scope_end_ms)
        return 0;
    uint64_t left = scope_end_ms - now;
    return left < default_ms ? left : default_ms;
}
