/* PostgreSQL's WAL positions: an LSN as the server prints it ("16/B374D848"),
 * and the name of the segment file holding it (XLByteToSeg, XLogFileName,
 * XLogFromFileName) for a timeline and a wal_segment_size.  The one place
 * walfs does this arithmetic.
 *
 * Knows PostgreSQL's WAL addressing; nothing of files, FUSE, S3 or WAL-E. */
#ifndef WALFS_PG_LSN_H
#define WALFS_PG_LSN_H

#include <stdint.h>

/* "X/Y": one to eight hex digits on each side of the slash, nothing else
 * (PostgreSQL's pg_lsn input, as backup_label and backup_manifest write
 * it).  0, or -1 for anything else (NULL included). */
int pg_lsn_parse(const char *text, uint64_t *lsn);

/* The 24 hex digits of segment number segno on timeline: XLogFileName.
 * segment_size is a power of two up to 1 GiB. */
void pg_segment_name(uint32_t timeline, uint64_t segno, uint64_t segment_size, char out[25]);

/* The name of the segment holding lsn: XLByteToSeg, then XLogFileName. */
void pg_segment_name_of_lsn(uint32_t timeline, uint64_t lsn, uint64_t segment_size,
                            char out[25]);

/* XLogFromFileName: 0 and the timeline and segment number that name (24
 * upper-case hex digits) gives for segment_size; -1 when name is no segment
 * name, the size is no power of two up to 1 GiB, or the name's segment
 * part is beyond one 4 GiB log. */
int pg_segment_parse(const char *name, uint64_t segment_size, uint32_t *timeline,
                     uint64_t *segno);

#endif
