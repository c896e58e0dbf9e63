#include "common/private_dir.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WHAT_TO_DO "walfs serves the copies kept there without checking them again, so it " \
                   "must be a real directory of this user's (uid %u) that group and others "   \
                   "cannot write: fix its owner or mode (chmod go-w), or choose another with " \
                   "--cache-dir"

int private_dir_check(const char *path, walfs_err *err)
{
    struct stat sb;
    uid_t me = geteuid();
    /* stat, not lstat: a cache directory symlinked to another disk is
     * common, and what the link points to is what must be private (the
     * directories walfs makes inside it only the owner could replace). */
    if (stat(path, &sb) != 0) {
        int e = errno;
        return walfs_err_set(err, -e, "cache directory %s: %s (choose another with --cache-dir)",
                             path, strerror(e));
    }
    if (!S_ISDIR(sb.st_mode))
        return walfs_err_set(err, -ENOTDIR, "cache directory %s is not a directory (owner "
                             "uid %u); " WHAT_TO_DO, path, (unsigned)sb.st_uid, (unsigned)me);
    if (sb.st_uid != me || (sb.st_mode & (S_IWGRP | S_IWOTH)))
        return walfs_err_set(err, -EPERM, "cache directory %s is not private: owner uid %u, "
                             "mode %04o; " WHAT_TO_DO, path, (unsigned)sb.st_uid,
                             (unsigned)(sb.st_mode & 07777), (unsigned)me);
    return 0;
}

int private_dir_make(const char *path, walfs_err *err)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        return walfs_err_set(err, -e, "cannot create cache directory %s: %s (choose another "
                             "with --cache-dir)", path, strerror(e));
    }
    return private_dir_check(path, err);
}
