/* WAL-E's archive layout (format 005), every key spelled here and nowhere
 * else: keys are relative to the archive prefix, as the store takes them.
 *
 *   wal_005/<file>.lzo                                     a WAL file, lzop
 *   basebackups_005/<backup>_backup_stop_sentinel.json     the backup exists
 *   basebackups_005/<backup>/extended_version.txt          SELECT version()
 *   basebackups_005/<backup>/tar_partitions/part_%08u.tar.lzo
 *   basebackups_005/<backup>/walfs_index.json              walfs's own, which
 *   basebackups_005/<backup>/walfs_push.json               WAL-E never reads
 *
 * Knows the names (WAL-E's storage/base.py and worker/upload.py); nothing of
 * what the objects hold, of the store, or of FUSE.  Key builders return 0,
 * or -1 when out is too small (out is then cut short, still terminated). */
#ifndef WALFS_WALE_LAYOUT_H
#define WALFS_WALE_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

/* The two directories the archive has, and the mount shows at its root. */
#define WALE_WAL_DIR "wal_005"
#define WALE_BASEBACKUPS_DIR "basebackups_005"
/* What every WAL file and partition is stored as (lzop). */
#define WALE_LZO_SUFFIX ".lzo"

/* Room for any key below: a backup name is at most 200 characters
 * (backup/backup_index.c refuses longer), a WAL file name NAME_MAX. */
#define WALE_KEY_MAX 512
/* Bytes of base_<24 hex>_<8 chars> and its terminator. */
#define WALE_BACKUP_NAME_SIZE 39


/* ---- WAL ---- */

/* "wal_005/": what to list for the archived WAL files. */
const char *wale_wal_prefix(void);
/* wal_005/<file>.lzo for PostgreSQL's file name (%f). */
int wale_wal_key(char *out, size_t len, const char *file);
/* For a name listed under wal_005/: the length of the PostgreSQL file name
 * it stores (the name without ".lzo"); 0 when it is no such object. */
size_t wale_wal_file_len(const char *listed);

/* ---- base backups ---- */

/* "basebackups_005/": what to list for the backups and their sentinels. */
const char *wale_backups_prefix(void);
/* WAL-E's name for a backup starting in segment (24 hex) at offset8 (the
 * lpad'ed offset, pg/wal_file.h): base_<segment>_<offset8>. */
int wale_backup_name(char *out, size_t len, const char *segment, const char *offset8);
/* WAL-E's COMPLETE_BASE_BACKUP_REGEXP, upper case as WAL-E writes it:
 * base_<24 hex>_<8 hex or decimal> in the first len bytes of name. */
int wale_is_backup_name(const char *name, size_t len);

/* basebackups_005/<backup>_backup_stop_sentinel.json: a sibling of the
 * backup's directory, not inside it. */
int wale_sentinel_key(char *out, size_t len, const char *backup);
/* For a name listed under basebackups_005/: the length of the backup name
 * when it is a sentinel, else 0. */
size_t wale_sentinel_backup_len(const char *listed);
/* basebackups_005/<backup>/: everything of the backup but its sentinel. */
int wale_backup_prefix(char *out, size_t len, const char *backup);
int wale_extended_version_key(char *out, size_t len, const char *backup);
/* basebackups_005/<backup>/tar_partitions/ */
int wale_partitions_prefix(char *out, size_t len, const char *backup);
/* .../tar_partitions/part_<number, 8 decimal digits>.tar.lzo */
int wale_partition_key(char *out, size_t len, const char *backup, uint32_t number);
/* 1 and *number when a name listed under tar_partitions/ is exactly
 * part_NNNNNNNN.tar.lzo, as WAL-E's uploader names partitions; 0 if not. */
int wale_partition_number(const char *listed, uint32_t *number);

/* walfs's objects next to a backup (WAL-E lists only tar_partitions/ and
 * the sentinel, so it never sees them): the member index, and the lease of
 * a push in progress (push/push_cleanup.h). */
int wale_index_key(char *out, size_t len, const char *backup);
int wale_lease_key(char *out, size_t len, const char *backup);

#endif
