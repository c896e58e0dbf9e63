/* Logging to stderr, a file (--log-file) or syslog.  One line per event,
 * with a time stamp and a level.  Callers must never pass credentials.
 * Names in messages come from the bucket and from other users, so every
 * message is escaped here: no name can forge or break a line. */
#ifndef WALFS_COMMON_LOG_H
#define WALFS_COMMON_LOG_H

#include <stddef.h>

enum walfs_log_level { WALFS_LOG_ERROR = 0, WALFS_LOG_WARN, WALFS_LOG_INFO, WALFS_LOG_DEBUG };

void walfs_log_set_level(enum walfs_log_level level);
/* Parses "error", "warn", "info", "debug"; returns -1 when unknown. */
int walfs_log_parse_level(const char *name);
void walfs_log_use_syslog(int enable);
/* Appends to path from now on (created 0600); 0 or a negative errno. */
int walfs_log_use_file(const char *path);
/* Whether syslog has a socket to write to: without /dev/log (containers,
 * machines without a syslog daemon) every syslog line is lost. */
int walfs_log_syslog_available(void);
void walfs_log_close(void);
/* in[0..len) with \n, \r, \t escaped so, other control bytes (C0, DEL,
 * C1) and bytes that are not well-formed UTF-8 as \xNN; written to out
 * (cap bytes, always terminated when cap > 0; cut after the last whole
 * character or escape that fits).
 * Returns the escaped length, as snprintf does. */
size_t walfs_log_escape(const char *in, size_t len, char *out, size_t cap);
void walfs_log(enum walfs_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) walfs_log(WALFS_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) walfs_log(WALFS_LOG_WARN, __VA_ARGS__)
#define log_info(...) walfs_log(WALFS_LOG_INFO, __VA_ARGS__)
#define log_debug(...) walfs_log(WALFS_LOG_DEBUG, __VA_ARGS__)

#endif
