#include "wal/outage_wait.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/deadline.h"
#include "common/log.h"

#define PAUSE_START_MS 500
#define PAUSE_CAP_MS 10000
#define LOG_EVERY_MS 60000
#define STOP_POLL_MS 100

void outage_wait_init(outage_wait *w, const char *what, uint64_t limit_ms,
                      int (*stop)(void *ctx), void *stop_ctx)
{
    memset(w, 0, sizeof *w);
    snprintf(w->what, sizeof w->what, "%s", what);
    w->limit_ms = limit_ms;
    w->stop = stop;
    w->stop_ctx = stop_ctx;
}

static void wall_clock(char out[32])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Sleeps ms, waking early when the caller went away; 1 if it did. */
static int pause_ms(outage_wait *w, uint64_t ms)
{
    uint64_t end = deadline_now_ms() + ms;
    for (;;) {
        if (w->stop && w->stop(w->stop_ctx))
            return 1;
        uint64_t now = deadline_now_ms();
        if (now >= end)
            return 0;
        uint64_t step = end - now < STOP_POLL_MS ? end - now : STOP_POLL_MS;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int outage_wait_retry(outage_wait *w, int rc, walfs_err *err)
{
    if (rc != -ETIMEDOUT)
        return 0;
    uint64_t now = deadline_now_ms();
    if (w->started_ms == 0) {
        w->started_ms = now;
        w->last_log_ms = now;
        wall_clock(w->since);
        log_warn("%s: the archive is not answering (%s); waiting for it, as long as it takes%s, "
                 "so that PostgreSQL does not take the outage for the end of the archive",
                 w->what, err->msg, w->limit_ms ? " (up to --restore-outage-limit)" : "");
    } else if (now - w->last_log_ms >= LOG_EVERY_MS) {
        w->last_log_ms = now;
        log_warn("%s: still waiting for the archive, since %s (%.0f s, %u retries); last error: "
                 "%s", w->what, w->since, (double)(now - w->started_ms) / 1000.0, w->retries,
                 err->msg);
    }
    if (w->limit_ms && now - w->started_ms >= w->limit_ms) {
        walfs_err_prefix(err, "%s: gave up waiting for the archive after %.0f s "
                         "(--restore-outage-limit): ", w->what,
                         (double)(now - w->started_ms) / 1000.0);
        return 0;
    }
    uint64_t pause = PAUSE_START_MS;
    for (unsigned i = 0; i < w->retries && pause < PAUSE_CAP_MS; i++)
        pause *= 2;
    if (pause > PAUSE_CAP_MS)
        pause = PAUSE_CAP_MS;
    if (w->limit_ms && now + pause > w->started_ms + w->limit_ms)
        pause = w->started_ms + w->limit_ms - now;
    if (pause_ms(w, pause)) {
        walfs_err_prefix(err, "%s: stopped waiting for the archive (the request was "
                         "interrupted or walfs is unmounting): ", w->what);
        return 0;
    }
    w->retries++;
    return 1;
}

void outage_wait_end(outage_wait *w, int rc)
{
    if (w->started_ms == 0)
        return;
    double secs = (double)(deadline_now_ms() - w->started_ms) / 1000.0;
    if (rc == 0 || rc == -ENOENT)
        log_warn("%s: the archive answered again after %.0f s of waiting (since %s)", w->what,
                 secs, w->since);
}
