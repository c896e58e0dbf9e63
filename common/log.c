#include "common/log.h"

#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Message bytes kept in one line (head and tail of a longer one); names
 * are at most PATH_MAX, so a line with one or two is never cut. */
#define LOG_MESSAGE_MAX 16384

static enum walfs_log_level current_level = WALFS_LOG_INFO;
static int use_syslog;
static FILE *log_file; /* NULL: stderr */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void walfs_log_set_level(enum walfs_log_level level) { current_level = level; }

int walfs_log_parse_level(const char *name)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

void walfs_log_use_syslog(int enable)
{
    use_syslog = enable;
    if (enable)
        openlog("walfs", LOG_PID, LOG_DAEMON);
}

int walfs_log_use_file(const char *path)
{
    /* O_APPEND: several mounts, or logrotate's copytruncate, may share it. */
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    FILE *f = fdopen(fd, "a");
    if (!f) {
        int e = errno;
        close(fd);
        return -e;
    }
    pthread_mutex_lock(&log_lock);
    if (log_file)
        fclose(log_file);
    log_file = f;
    use_syslog = 0;
    pthread_mutex_unlock(&log_lock);
    return 0;
}

int walfs_log_syslog_available(void)
{
    struct stat st;
    return stat("/dev/log", &st) == 0 && S_ISSOCK(st.st_mode);
}

void walfs_log_close(void)
{
    pthread_mutex_lock(&log_lock);
    if (log_file)
        fclose(log_file);
    log_file = NULL;
    pthread_mutex_unlock(&log_lock);
    if (use_syslog)
        closelog();
}

/* Length of the well-formed UTF-8 sequence at p (at most n bytes), or 0:
 * overlong forms, surrogates and code points past U+10FFFF are not. */
static size_t utf8_sequence(const unsigned char *p, size_t n)
{
    size_t len;
    uint32_t cp;
    if (p[0] >= 0xC2 && p[0] <= 0xDF)
        len = 2, cp = p[0] & 0x1F;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF)
        len = 3, cp = p[0] & 0x0F;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4)
        len = 4, cp = p[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

size_t walfs_log_escape(const char *in, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0, kept = 0;
    for (size_t i = 0; i < len;) {
        char esc[4];
        size_t elen = 0, seq = p[i] >= 0x80 ? utf8_sequence(p + i, len - i) : 0;
        /* C1 controls (U+0080..U+009F) are terminal controls too. */
        if (seq == 2 && p[i] == 0xC2 && p[i + 1] < 0xA0)
            seq = 0;
        if (seq) {
            if (o + seq < cap)
                memcpy(out + o, p + i, seq), kept = o + seq;
            o += seq;
            i += seq;
            continue;
        }
        unsigned char c = p[i++];
        if (c == '\n' || c == '\r' || c == '\t') {
            esc[0] = '\\', esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            elen = 2;
        } else if (c < 0x20 || c >= 0x7F) {
            esc[0] = '\\', esc[1] = 'x', esc[2] = hex[c >> 4], esc[3] = hex[c & 15];
            elen = 4;
        } else {
            esc[0] = (char)c;
            elen = 1;
        }
        if (o + elen < cap)
            memcpy(out + o, esc, elen), kept = o + elen;
        o += elen;
    }
    if (cap)
        out[kept] = '\0';
    return o;
}

void walfs_log(enum walfs_log_level level, const char *fmt, ...)
{
    if (level > current_level)
        return;
    static const char *tags[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    /* The message as formatted (names included, at any length), then
     * escaped: a name with a newline must not make a line of its own. */
    char stack[2048], *msg = stack;
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0, stack[0] = '\0';
    if ((size_t)n >= sizeof stack) {
        char *big = malloc((size_t)n + 1);
        if (big) {
            vsnprintf(big, (size_t)n + 1, fmt, again);
            msg = big;
        } else {
            n = (int)strlen(stack);
        }
    }
    va_end(again);
    /* A line past LOG_MESSAGE_MAX keeps its head and its tail, which
     * holds the reason and what to do. */
    size_t len = (size_t)n, head = len, tail_at = len;
    if (len > LOG_MESSAGE_MAX) {
        head = walfs_char_start(msg, len, LOG_MESSAGE_MAX / 2);
        tail_at = walfs_char_start(msg, len, len - LOG_MESSAGE_MAX / 2);
    }
    static char line[LOG_MESSAGE_MAX * 4 + 64];
    pthread_mutex_lock(&log_lock);
    size_t o = walfs_log_escape(msg, head, line, sizeof line);
    if (tail_at < len) {
        o += (size_t)snprintf(line + o, sizeof line - o, " [... %zu bytes left out ...] ",
                              tail_at - head);
        walfs_log_escape(msg + tail_at, len - tail_at, line + o, sizeof line - o);
    }
    if (msg != stack)
        free(msg);
    if (use_syslog) {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        syslog(prio[level], "%s", line);
        pthread_mutex_unlock(&log_lock);
        return;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    FILE *out = log_file ? log_file : stderr;
    fprintf(out, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ walfs %s: %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000,
            tags[level], line);
    fflush(out);
    pthread_mutex_unlock(&log_lock);
}
