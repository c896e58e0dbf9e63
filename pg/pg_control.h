/* The head of global/pg_control (ControlFileData): where the latest
 * checkpoint is.  A copy of a data directory made during a backup carries
 * the checkpoint written during it, so the backup is known to reach it.
 *
 * Knows the layout of ControlFileData's first fields from PostgreSQL 11 on
 * (checkPoint at byte 32, checkPointCopy.ThisTimeLineID at 48, in the
 * server's byte order); nothing of the rest, nor of its CRC. */
#ifndef WALFS_PG_PG_CONTROL_H
#define WALFS_PG_PG_CONTROL_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of the file's start pg_control_checkpoint reads. */
#define PG_CONTROL_HEAD_BYTES 52

/* The latest checkpoint's LSN and timeline from the first head_len bytes
 * of pg_control.  0, or -1 when head_len < PG_CONTROL_HEAD_BYTES. */
int pg_control_checkpoint(const unsigned char *head, size_t head_len, uint64_t *lsn,
                          uint32_t *timeline);

#endif
