/* Writing a base backup in WAL-E's format, streaming: members go into tar
 * partitions (libarchive, PAX as WAL-E on Python >= 3.8 writes them, root
 * entry "/"), each compressed as lzop -c does and uploaded with a streaming
 * upload while later members are still being added, so a backup larger than
 * memory or local disk goes through.  Partition limits are WAL-E's (< 1.5 GiB
 * of member data, at most 6144 members) unless lowered.  Nothing marks the
 * backup as existing until backup_writer_finish has stored every partition,
 * extended_version.txt and, last, the sentinel; backup_writer_abort removes
 * what was uploaded.  Knows the store and the codec, nothing of FUSE. */
#ifndef WALFS_PUSH_BACKUP_WRITER_H
#define WALFS_PUSH_BACKUP_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "backup/backup_index.h"
#include "common/err.h"
#include "store/store.h"

typedef struct backup_writer backup_writer;

typedef struct backup_writer_limits {
    uint64_t max_partition_bytes;   /* member data per partition; 0 = WAL-E's 1610612736 */
    uint32_t max_partition_members; /* 0 = WAL-E's 6144 */
    size_t upload_part_size;        /* bytes per streaming-upload part; 0 = 16 MiB (>= 5 MiB) */
} backup_writer_limits;

/* name: base_<24 hex>_<8 chars>; partitions go to
 * basebackups_005/<name>/tar_partitions/part_%08d.tar.lzo.  -EEXIST when the
 * backup's sentinel or leftover partitions already exist (never mixes runs).
 * upload_part_size below 5 MiB is raised to 5 MiB. */
int backup_writer_begin(store *st, const char *name, const backup_writer_limits *limits,
                        backup_writer **out, walfs_err *err);

typedef struct backup_writer_member {
    const char *path;               /* relative to the data directory, "" for the root */
    backup_member_type type;        /* FILE, DIR, SYMLINK, HARDLINK */
    uint32_t mode;                  /* permission bits */
    uint32_t uid, gid;
    const char *uname, *gname;      /* may be NULL */
    int64_t mtime_sec;
    uint32_t mtime_nsec;
    uint64_t size;                  /* FILE: exactly this many bytes follow */
    const char *link_target;        /* SYMLINK target, or HARDLINK: path of the earlier member */
} backup_writer_member;

/* Adds one member; for a FILE, its data is read from fd (pread from offset
 * 0, exactly size bytes; a short file is an error).  Starts a new partition
 * first when this member would cross a limit.  -EINVAL / -EFBIG (member
 * larger than a partition) are refused before writing: the writer stays
 * usable.  Any other failure removes what was uploaded at once; later calls
 * return the same error and only finish/abort (to free) remain. */
int backup_writer_add(backup_writer *bw, const backup_writer_member *m, int fd, walfs_err *err);

/* The same for a FILE whose data is compressed already: fd holds
 * records_len bytes of lzop block records (lzop_block_encode; read from
 * offset 0) that decode to exactly m->size bytes.  They join the
 * partition's lzop stream as they are, after the pending block is closed
 * short, so a file compressed as it arrived is never decompressed again. */
int backup_writer_add_records(backup_writer *bw, const backup_writer_member *m, int fd,
                              uint64_t records_len, walfs_err *err);

typedef struct backup_writer_stop {
    char stop_segment[25];          /* wal_segment_backup_stop */
    char stop_offset[9];            /* wal_segment_offset_backup_stop, 8 decimal digits */
    const char *pg_version;         /* extended_version.txt content (may be NULL: then omitted) */
    const char *base_prefix;        /* spec.base_prefix in the sentinel */
} backup_writer_stop;

/* Closes the last partition, stores extended_version.txt, then the sentinel
 * {"wal_segment_backup_stop", "wal_segment_offset_backup_stop",
 * "expanded_size_bytes", "spec"}.  Frees bw whatever the result; on failure
 * everything uploaded is removed (best effort, logged). */
int backup_writer_finish(backup_writer *bw, const backup_writer_stop *stop, walfs_err *err);

/* Gives up: aborts the open upload, deletes finished partitions, frees bw. */
void backup_writer_abort(backup_writer *bw);

#endif
