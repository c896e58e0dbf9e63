/* The one errno policy of the FUSE layer.
 *
 * Knows how a failed operation is logged; which errno values a user sees is
 * common/err.h's walfs_err_user_code, shared with the push's latched errors.
 * Does not know FUSE, the store, or any view. */
#ifndef WALFS_FUSE_ERRNO_POLICY_H
#define WALFS_FUSE_ERRNO_POLICY_H

#include "common/err.h"

/* rc (negative errno) as the user sees it; logs err's message (or rc's
 * strerror) as "<op> <path> failed: ...".  ENOENT is logged at debug level
 * only: a lookup of a missing name is not a failure. */
int fs_errno(int rc, const walfs_err *err, const char *op, const char *path);

#endif
