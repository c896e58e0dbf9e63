/* Archiving one file: compress it the way WAL-E's `lzop -c` does and store
 * it, write-once.  Returns only once the object is in the store (or the
 * identical object already was), so `close()` can report the truth. */
#ifndef WALFS_FS_WAL_UPLOAD_H
#define WALFS_FS_WAL_UPLOAD_H

#include <stdint.h>
#include <sys/types.h>

#include "common/err.h"
#include "store/store.h"

/* Stores the first len bytes of spool_fd under key.  If key exists with the
 * same decompressed content, succeeds without uploading (PostgreSQL retries
 * archive_command after a crash); with different content fails with -EEXIST
 * and leaves the stored object untouched.  mode/mtime go into the lzop
 * header as wal-push would write them. */
/* compressed/compressed_len: the lzop stream of the spool if the caller
 * already has it (see background_compressor.h); NULL to compress here.
 * Takes ownership of compressed (freed). */
int wal_upload(store *st, const char *key, int spool_fd, uint64_t len, mode_t mode,
               time_t mtime, char *compressed, size_t compressed_len, walfs_err *err);

#endif
