#include "fuse/errno_policy.h"
#include <errno.h>
#include <string.h>
#include "common/log.h"

int fs_errno(int rc, const walfs_err *err, const char *op, const char *path)
{
    if (rc == -ENOENT) {
        log_debug("%s %s: not in the archive", op, path);
        return rc;
    }
    log_error("%s %s failed: %s", op, path, err && err->msg[0] ? err->msg : strerror(-rc));
    switch (-rc) {
    case EACCES: case EEXIST: case ENOSPC: case ENOMEM: case EROFS: case ENODATA:
    case EPERM: case ENAMETOOLONG: case EINVAL:
    /* The catalog's "too many base backups open at once": the user closes
     * some and retries, which EMFILE ("too many open files") says. */
    case EMFILE: case ENFILE:
        return rc;
    default:
        return -EIO; /* timeouts, corrupt data, server errors */
    }
}
