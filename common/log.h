/* Logging to stderr (or syslog when daemonized).  One line per event, with a
 * level prefix.  Callers must never pass credentials. */
#ifndef WALFS_COMMON_LOG_H
#define WALFS_COMMON_LOG_H

enum walfs_log_level { WALFS_LOG_ERROR = 0, WALFS_LOG_WARN, WALFS_LOG_INFO, WALFS_LOG_DEBUG };

void walfs_log_set_level(enum walfs_log_level level);
/* Parses "error", "warn", "info", "debug"; returns -1 when unknown. */
int walfs_log_parse_level(const char *name);
void walfs_log_use_syslog(int enable);
void walfs_log(enum walfs_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) walfs_log(WALFS_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) walfs_log(WALFS_LOG_WARN, __VA_ARGS__)
#define log_info(...) walfs_log(WALFS_LOG_INFO, __VA_ARGS__)
#define log_debug(...) walfs_log(WALFS_LOG_DEBUG, __VA_ARGS__)

#endif
