#include "pg/caller.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* cp, under sh -c, under the archiver; a wrapper script and its $(...)
 * subshell add two more (seen: cp < bash < bash < sh < archiver). */
#define ANCESTORS 6

static ssize_t read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return n;
}

static int is_archiver_title(const char *cmdline, ssize_t len)
{
    /* With update_process_title (the default) the title replaces argv, so
     * cmdline is one string "postgres: [cluster: ]archiver ...". */
    static const char prefix[] = "postgres: ";
    if (len < (ssize_t)sizeof prefix || strncmp(cmdline, prefix, sizeof prefix - 1) != 0)
        return 0;
    const char *rest = cmdline + sizeof prefix - 1;
    const char *hit = strstr(rest, "archiver");
    if (!hit)
        return 0;
    /* "archiver" as the process's role, first or after "cluster: ". */
    return hit == rest || (hit >= rest + 2 && hit[-1] == ' ' && hit[-2] == ':');
}

static pid_t parent_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_small(path, buf, sizeof buf) <= 0)
        return 0;
    /* The command name may hold spaces and parentheses: the fields after
     * it start at the last ')'. */
    const char *p = strrchr(buf, ')');
    int ppid = 0;
    char state;
    if (!p || sscanf(p + 1, " %c %d", &state, &ppid) != 2)
        return 0;
    return (pid_t)ppid;
}

int caller_is_wal_archiver(pid_t pid)
{
    for (int level = 0; level < ANCESTORS && pid > 1; level++) {
        char path[64], cmdline[256];
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
        ssize_t n = read_small(path, cmdline, sizeof cmdline);
        if (n > 0 && is_archiver_title(cmdline, n))
            return 1;
        pid = parent_of(pid);
    }
    return 0;
}
