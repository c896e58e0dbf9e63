/* The backup_label that pg_backup_stop() returns (and pg_basebackup writes
 * into the copy): where the backup's WAL starts.
 *
 * Knows the label's "START WAL LOCATION: X/Y (file Z)" line; nothing of
 * the other lines, of where the label comes from, or of WAL-E. */
#ifndef WALFS_PG_BACKUP_LABEL_H
#define WALFS_PG_BACKUP_LABEL_H

#include <stdint.h>

typedef struct pg_backup_label {
    uint64_t start_lsn;
    char start_lsn_text[32];    /* as the label spells it, for messages */
    char start_file[25];        /* the segment holding start_lsn: 24 upper-case hex */
} pg_backup_label;

/* text is the whole label, NUL-terminated.  0, or -1 when it has no
 * readable START WAL LOCATION line (not a base backup's label).  Whether
 * start_lsn lies in start_file says the segment size (wal_segment_size_of). */
int pg_backup_label_parse(const char *text, pg_backup_label *out);

#endif
