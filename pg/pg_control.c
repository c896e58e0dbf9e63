#include "pg/pg_control.h"

#include <string.h>

#define OFF_CHECKPOINT 32       /* after system_identifier, versions, state, time */
#define OFF_CHECKPOINT_TLI 48   /* checkPointCopy: redo (8 bytes), then ThisTimeLineID */

int pg_control_checkpoint(const unsigned char *head, size_t head_len, uint64_t *lsn,
                          uint32_t *timeline)
{
    if (head_len < PG_CONTROL_HEAD_BYTES)
        return -1;
    memcpy(lsn, head + OFF_CHECKPOINT, sizeof *lsn);
    memcpy(timeline, head + OFF_CHECKPOINT_TLI, sizeof *timeline);
    return 0;
}
