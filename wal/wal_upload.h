/* Archiving one file: compress it the way WAL-E's `lzop -c` does and store
 * it, write-once.  Returns only once the object is in the store (or the
 * identical object already was), so `close()` can report the truth. */
#ifndef WALFS_WAL_WAL_UPLOAD_H
#define WALFS_WAL_WAL_UPLOAD_H

#include <stdint.h>
#include <sys/types.h>

#include "common/err.h"
#include "store/store.h"

/* Stores the first len bytes of spool_fd under key.  If key exists with the
 * same decompressed content, succeeds without uploading (PostgreSQL retries
 * archive_command after a crash); with different content fails with -EEXIST
 * and leaves the stored object untouched.  mode/mtime go into the lzop
 * header as wal-push would write them. */
/* Whether key exists, asked while the file was still being written so the
 * answer is ready at close (the check costs a round trip). */
typedef struct wal_probe {
    int rc;                 /* store_stat_key's result: 0, -ENOENT, or an error */
    walfs_err err;
} wal_probe;
void wal_probe_run(store *st, const char *key, wal_probe *out);

/* compressed/compressed_len: the lzop stream of the spool if the caller
 * already has it (see background_compressor.h); NULL to compress here.
 * Takes ownership of compressed (freed); compressed_sha256 is its hex
 * SHA-256 when known (else NULL).  probe: an existence check made
 * since the file was opened, or NULL to check now. */
int wal_upload(store *st, const char *key, int spool_fd, uint64_t len, mode_t mode,
               time_t mtime, char *compressed, size_t compressed_len,
               const char *compressed_sha256, const wal_probe *probe, walfs_err *err);

#endif
