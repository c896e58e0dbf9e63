/* Random access into lzop-compressed partitions with ranged GETs.
 *
 * Reading a range fetches only the lzop blocks that hold it (adjacent
 * blocks in one request), verifies and decompresses them, and keeps
 * decoded blocks in a cache bounded in bytes, shared by every open file.
 * Sequential readers get read-ahead: the next blocks are fetched by worker
 * threads in parallel ahead of the reader, so a big file streams at the
 * speed of the network rather than one round trip per block. */
#ifndef WALFS_BACKUP_BLOCK_READER_H
#define WALFS_BACKUP_BLOCK_READER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "backup/backup_index.h"
#include "common/err.h"
#include "store/store.h"

typedef struct block_reader block_reader;

/* cache_bytes bounds the decoded blocks kept (and so memory); workers is
 * the number of read-ahead threads; readahead_bytes how far ahead of a
 * sequential reader they fetch. */
block_reader *block_reader_new(store *st, size_t cache_bytes, int workers,
                               size_t readahead_bytes, walfs_err *err);
void block_reader_free(block_reader *br);

/* Copies decompressed bytes [offset, offset+len) of the partition into buf.
 * Returns the number of bytes copied (short only at the end of the
 * partition) or a negative errno (err says which object and what failed). 
 * The partition must stay valid for the duration of the call only. */
ssize_t block_reader_read(block_reader *br, const backup_partition *part, uint64_t offset,
                          void *buf, size_t len, walfs_err *err);

/* A reader is consuming [offset, end) sequentially: fetch ahead of it.
 * Returns at once; errors surface when the range is read. */
void block_reader_readahead(block_reader *br, const backup_partition *part, uint64_t offset,
                            uint64_t end);

#endif
