/* Who is asking: the process behind a filesystem request.
 *
 * A lookup of wal_005/<name> comes before the open, so the request itself
 * cannot say whether the file is about to be read (restore_command: must
 * wait through an outage) or written (archive_command: must fail fast so
 * PostgreSQL retries it, and so the primary can shut down).  PostgreSQL
 * names its processes ("postgres: archiver", "postgres: main: archiver
 * last was ..."), and archive_command runs under the archiver, so the
 * caller's ancestors tell.
 *
 * Knows /proc and PostgreSQL's process titles; nothing of FUSE. */
#ifndef WALFS_PG_CALLER_H
#define WALFS_PG_CALLER_H

#include <sys/types.h>

/* 1 when pid, or one of its few nearest ancestors, is PostgreSQL's WAL
 * archiver; 0 otherwise (including when /proc cannot tell). */
int caller_is_wal_archiver(pid_t pid);

#endif
