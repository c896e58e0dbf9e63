/* The index of one WAL-E base backup: which tar member lives where.
 *
 * Built once by streaming every tar partition: the lzop block table is
 * walked, and only the blocks holding tar headers are decompressed (and
 * verified) for libarchive; member data is skipped, so indexing runs at the
 * speed of the download, and is verified block by block when it is read.
 * The index is cached locally and in the bucket next to the backup as JSON,
 * so later mounts list the backup without reading the partitions.
 * Knows the store and the codec; nothing of FUSE. */
#ifndef WALFS_BACKUP_BACKUP_INDEX_H
#define WALFS_BACKUP_BACKUP_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "codec/lzop.h"
#include "common/err.h"
#include "store/store.h"


typedef enum backup_member_type {
    MEMBER_FILE,
    MEMBER_DIR,
    MEMBER_SYMLINK,
    MEMBER_HARDLINK,   /* data is that of the member named by link_target */
    MEMBER_FIFO,
    MEMBER_CHARDEV,
    MEMBER_BLOCKDEV,
} backup_member_type;

typedef struct backup_member {
    /* Each directory is stored once and each member only by its own name
     * under it: full paths would cost the square of the depth for members
     * nested deep under directories the tar does not contain. */
    char *name;             /* own name component; "" for the root */
    uint32_t parent;        /* index of the parent directory; the root (index 0) is its own */
    uint32_t first_child;   /* directories: children are members[first_child ..+ n_children) */
    uint32_t n_children;
    backup_member_type type;
    uint32_t mode;          /* permission bits only (07777) */
    uint32_t uid, gid;
    int64_t mtime_sec;
    uint32_t mtime_nsec;    /* from a pax mtime record when present */
    uint64_t size;          /* data length for MEMBER_FILE; 0 otherwise */
    char *link_target;      /* symlink text as stored (symlinks only) */
    uint32_t link_member;   /* hard links: index of the regular file holding the data */
    uint32_t partition;     /* index into backup_index.partitions (files) */
    uint64_t data_offset;   /* offset of the file data in the decompressed partition */
    uint32_t rdev_major, rdev_minor;
} backup_member;

typedef struct backup_partition {
    char *key;              /* "basebackups_005/<name>/tar_partitions/part_00000000.tar.lzo" */
    uint64_t object_size;   /* compressed bytes, as listed */
    char etag[128];
    lzop_index blocks;      /* block table for ranged reads */
} backup_partition;

typedef struct backup_index {
    char *backup_name;      /* base_<24 hex>_<8 chars> */
    backup_partition *partitions;
    size_t n_partitions;
    /* The root first, then breadth first: every directory's children are
     * contiguous and sorted by name (strcmp); parents without an entry in
     * the tar are synthesized. */
    backup_member *members;
    size_t n_members;
} backup_index;

/* What the store says the backup's partitions are right now: proof that a
 * cached index still describes the backup. */
typedef struct backup_partition_listing {
    char *key;
    uint64_t size;
    char etag[128];
} backup_partition_listing;

/* Lists basebackups_005/<name>/tar_partitions/ (part_%08d.tar.lzo, numbered
 * from 0 without gaps; anything else there is ignored with a warning).
 * A gap is -EIO naming the missing partition. */
int backup_list_partitions(store *st, const char *backup_name, backup_partition_listing **out,
                           size_t *n_out, walfs_err *err);
void backup_partition_listing_free(backup_partition_listing *l, size_t n);

/* Streams every partition and builds the index.  Members whose names would
 * leave the backup ("..", absolute after normalization) are skipped and
 * logged; so are hard links to members that do not exist.  Corrupt or
 * truncated partitions are -EIO with a message naming the partition. */
int backup_index_build(store *st, const char *backup_name,
                       const backup_partition_listing *parts, size_t n_parts,
                       backup_index **out, walfs_err *err);

/* 1 when idx was built from exactly these partitions (keys, sizes, ETags). */
int backup_index_matches(const backup_index *idx, const backup_partition_listing *parts,
                         size_t n_parts);

/* JSON with a format version and a sha256 of its content; load rejects
 * anything malformed or failing its checksum (-EIO), and an index of an
 * older format (-ESTALE: rebuild it, nothing is wrong). */
int backup_index_to_json(const backup_index *idx, char **json, size_t *len, walfs_err *err);
int backup_index_from_json(const char *json, size_t len, backup_index **out, walfs_err *err);

/* The partition is the authority, an index (above all one read from the
 * bucket, which anyone allowed to store indexes can forge) only a claim:
 * checks the 512-byte tar header that ends where m's data starts against m
 * (valid checksum, regular file, m's size, m's name).  0, or -EBADMSG with
 * err saying what disagrees. */
#define BACKUP_TAR_HEADER_LEN 512
int backup_member_check_header(const backup_index *idx, const backup_member *m, const unsigned char *hdr,
                               walfs_err *err);

/* The largest index JSON walfs stores for, or reads back as describing,
 * partitions of this many compressed bytes in all: a bigger stored one is
 * refused before it is parsed (json-c needs many times its size in memory),
 * and a bigger built one is not stored (rebuilt instead, at the cost of
 * reading those few partition bytes). */
size_t backup_index_json_max(uint64_t partition_bytes);

/* Walks the path's components (normalized path, "" = root); NULL when absent. */
const backup_member *backup_index_find(const backup_index *idx, const char *path);

/* m's path relative to the backup root, built from its parents into buf
 * (BACKUP_PATH_MAX + 1 bytes always suffice); returns buf. */
#define BACKUP_PATH_MAX 4095
char *backup_index_path(const backup_index *idx, const backup_member *m, char *buf, size_t cap);

void backup_index_free(backup_index *idx);

/* Normalizes a tar member name; returns NULL (and sets *escapes when the
 * name leaves the root) for names that must not be exposed.  malloc'd.
 * Strips "./", collapses "//", drops "." components; "/" (WAL-E's root
 * entry), "./" and "" map to "" (the root).  Any ".." is refused (escapes
 * set when it climbs above the root).  WAL-E never writes absolute names,
 * so a leading '/' on anything but the root ("/abs/path") is refused too,
 * with escapes set, instead of being turned into "abs/path". */
char *backup_normalize_path(const char *name, int *escapes);

#endif
