/* Directories walfs keeps copies in (the cache directory and the ones it
 * makes inside it).  What is in them is served without being checked again,
 * so one that another user can write (a --cache-dir in a shared place, made
 * by someone else or left world-writable) would let that user plant a WAL
 * file.  Knows only the file system's owner and mode bits. */
#ifndef WALFS_COMMON_PRIVATE_DIR_H
#define WALFS_COMMON_PRIVATE_DIR_H

#include "common/err.h"

/* 0 when path is (or is a symlink to) a directory owned by this process's
 * user and not writable by group or others; else -EPERM (-ENOTDIR, or the
 * stat's error) with a message naming path, what was found, and what to do. */
int private_dir_check(const char *path, walfs_err *err);

/* Makes path with mode 0700 unless it exists, then private_dir_check. */
int private_dir_make(const char *path, walfs_err *err);

#endif
