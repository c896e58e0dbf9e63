/* Decompressed copies of archive objects on local disk.
 *
 * A WAL file is served only after the whole object has been fetched,
 * decompressed and every lzop checksum verified, so a reader never sees a
 * byte of a corrupt or truncated object.  Copies are keyed by object key and
 * ETag (a replaced object is fetched again) and evicted oldest-first above
 * a byte limit; an open file keeps its copy readable after eviction.
 *
 * The limit holds while copies are being written, too: every byte a fetch
 * writes is counted before it is written, room is made by evicting finished
 * copies, then by stopping read-ahead, and a fetch that still does not fit
 * fails.  An object is never written past the largest WAL file (1 GiB),
 * past the limit, past the size recorded at its upload, or (a segment) past
 * the segment size its first page header declares: anything in the bucket
 * may be a decompression bomb.  A failed fetch removes its partial copy;
 * partial copies of a walfs that died are removed at the next start. */
#ifndef WALFS_WAL_OBJECT_CACHE_H
#define WALFS_WAL_OBJECT_CACHE_H

#include <stdint.h>

#include "common/err.h"
#include "store/store.h"

typedef struct object_cache object_cache;

object_cache *object_cache_new(store *st, const char *dir, uint64_t max_bytes, walfs_err *err);
void object_cache_free(object_cache *oc);

/* Opens the verified decompressed content of key for reading (the caller
 * closes *fd_out).  meta is the object's current stat. */
int object_cache_open(object_cache *oc, const char *key, const store_stat *meta, int *fd_out,
                      uint64_t *size_out, walfs_err *err);

/* object_cache_open for read-ahead: it gives way (-EAGAIN) when a reader
 * needs the room it takes, and leaves nothing open. */
int object_cache_prefetch(object_cache *oc, const char *key, const store_stat *meta,
                          uint64_t *size_out, walfs_err *err);

/* Decompressed size of key: recorded at upload, remembered from an earlier
 * decode of the same ETag, or learned by fetching and verifying it. */
int object_cache_size(object_cache *oc, const char *key, const store_stat *meta,
                      uint64_t *size_out, walfs_err *err);

#endif
