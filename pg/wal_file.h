/* PostgreSQL's WAL files as they arrive in wal_005: segment names and the
 * long page header that opens every segment.
 *
 * Knows PostgreSQL's on-disk format (XLogLongPageHeaderData; names through
 * pg/lsn);
 * nothing of FUSE, S3 or WAL-E. */
#ifndef WALFS_PG_WAL_FILE_H
#define WALFS_PG_WAL_FILE_H

#include <stddef.h>
#include <stdint.h>

/* The largest file PostgreSQL puts in pg_wal: a segment of its largest
 * wal_segment_size (history and backup history files are far smaller). */
#define WAL_FILE_MAX_BYTES (1ull << 30)

/* Bytes of a segment's first page header that wal_segment_check reads. */
#define WAL_LONG_HEADER_BYTES 40

/* 1 for a segment name: 24 upper-case hex digits (timeline, log, seg). */
int wal_name_is_segment(const char *name);

/* What the start of a file says about its length:
 *   1  head is a segment's long page header and size is its segment size
 *   0  head is a segment's long page header, but size is not (yet) that
 *      size: *expected receives the segment size
 *  -1  head is no such header (too short, or not a WAL page): nothing to
 *      check against */
int wal_segment_check(const unsigned char *head, size_t head_len, uint64_t size,
                      uint64_t *expected);

/* The wal_segment_size (1 MiB to 1 GiB) for which lsn lies in segment
 * file name, as backup_label pairs them ("START WAL LOCATION: 0/2000028
 * (file 000000010000000000000002)"); 0 when no size does.  Several sizes
 * can fit only when the LSN is below the first segment boundary they share;
 * the smallest is given, as PostgreSQL's own file name would be the same. */
uint64_t wal_segment_size_of(uint64_t lsn, const char *name);

/* out = WAL-E's lpad(offset::text, 8, '0') of an offset into a segment, as
 * in base backup names and wal_segment_offset_backup_stop: shorter
 * decimals left-padded with '0' to 8, longer ones cut to their first 8
 * digits (PostgreSQL's lpad truncates on the right). */
void wal_offset_lpad(uint64_t offset, char out[9]);

#endif
