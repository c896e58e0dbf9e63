/* Compresses a file while it is being written, on a thread of its own, so
 * that by the time the writer closes the file only the upload is left.
 * It follows the spool file as long as the writer appends; any other write
 * pattern (a seek back, a truncate) makes it give up, and the caller
 * compresses the spool at close instead. */
#ifndef WALFS_WAL_BACKGROUND_COMPRESSOR_H
#define WALFS_WAL_BACKGROUND_COMPRESSOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

typedef struct background_compressor background_compressor;

/* spool_fd is read with pread; it stays owned by the caller. */
background_compressor *background_compressor_start(int spool_fd, mode_t mode, time_t mtime);
/* Tells it that bytes [offset, offset+len) were written to the spool. */
void background_compressor_wrote(background_compressor *bc, uint64_t offset, size_t len);
/* The writer did something other than append. */
void background_compressor_abandon(background_compressor *bc);
/* Waits for the stream of the first `size` bytes.  On success returns 1 and
 * hands over the compressed bytes (free() them) and their SHA-256 in hex,
 * computed as they were produced; returns 0 if it gave up. */
int background_compressor_finish(background_compressor *bc, uint64_t size, char **data,
                                 size_t *len, char sha256_hex[65]);
/* Stops the thread and frees everything (safe after finish). */
void background_compressor_free(background_compressor *bc);

#endif
