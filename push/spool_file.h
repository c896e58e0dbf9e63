/* A file being written into a base backup push, held in the cache directory
 * until it goes into the backup.
 *
 * While the file arrives in order (as pg_basebackup, cp and rsync write),
 * each whole 256 KiB block is compressed at once into an lzop block record
 * and only the records reach the disk: a tenth of the bytes, and the
 * backup writer splices them into the partition's lzop stream without
 * compressing again (backup_writer_add_records).  Writing into memory and
 * disk pages for the first time is what costs most on a VM, so the bytes
 * that never touch the spool are the saving.
 *
 * Anything else is still accepted and kept exactly: a write ahead of the end
 * waits in memory (the kernel's writeback may deliver 1 MiB requests out of
 * order) until the gap fills; a write behind what was compressed, a
 * truncation, a read, a hole left at the last close, or running out of the
 * memory this allows turns the file into plain bytes on disk ("unpacking"),
 * and it stays so.  A file that ends within its first block is kept plain:
 * the backup writer compresses it with its neighbours.
 *
 * Not thread-safe: the caller serializes every call on a pool and its files
 * (the backup writer may read spool_file_data's fd meanwhile).  Knows the
 * codec, nothing of FUSE or S3. */
#ifndef WALFS_PUSH_SPOOL_FILE_H
#define WALFS_PUSH_SPOOL_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct spool_pool spool_pool;
typedef struct spool_file spool_file;

/* An unnamed file in dir (O_TMPFILE, or created and unlinked at once where
 * the filesystem lacks it): a crash leaves nothing behind and no one else
 * can see it.  The fd, or -errno. */
int spool_open_unnamed(const char *dir);

/* dir: where the spool files live (unlinked at once, O_TMPFILE where the
 * filesystem has it).  max_compressing: files compressing at once, each
 * holding one 256 KiB block in memory; stash_limit: bytes of out-of-order
 * writes held in memory over all files.  0 for either turns compression
 * off: every file is kept plain. */
spool_pool *spool_pool_new(const char *dir, size_t max_compressing, size_t stash_limit);
void spool_pool_free(spool_pool *pool);

/* An empty file.  NULL with errno (and a log line naming dir) on failure. */
spool_file *spool_file_new(spool_pool *pool);
/* Returns its disk file to the pool. */
void spool_file_free(spool_file *f);

/* Errors say what failed; the caller names the file. */
int spool_file_write(spool_file *f, const void *buf, size_t len, uint64_t off, walfs_err *err);
int spool_file_truncate(spool_file *f, uint64_t size, walfs_err *err);
int spool_file_read(spool_file *f, void *buf, size_t len, uint64_t off, size_t *got,
                    walfs_err *err);
/* At the last close: the pending block goes to disk and the memory is
 * given back.  Writing later is allowed. */
int spool_file_seal(spool_file *f, walfs_err *err);

uint64_t spool_file_size(const spool_file *f);
/* Where the next in-order write starts while the file compresses (a write
 * further ahead would wait in memory); UINT64_MAX when it is plain. */
uint64_t spool_file_append_offset(const spool_file *f);
/* Bytes it occupies in the cache directory. */
uint64_t spool_file_disk_bytes(const spool_file *f);

/* How the file was kept, for the log. */
typedef struct spool_file_stats {
    unsigned stashed_writes;    /* writes held in memory until the gap filled */
    int unpacked;               /* turned plain after compressing had begun */
} spool_file_stats;
spool_file_stats spool_file_get_stats(const spool_file *f);

/* A sealed file's content for the backup writer: lzop records or plain
 * bytes, len bytes of them from offset 0 of fd. */
typedef struct spool_data {
    int fd;
    int records;
    uint64_t len;
} spool_data;
/* -EINVAL unless sealed since the last write. */
int spool_file_data(const spool_file *f, spool_data *out, walfs_err *err);

#endif
