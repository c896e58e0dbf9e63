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
    return walfs_err_user_code(rc);
}
