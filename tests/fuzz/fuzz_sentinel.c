/* libFuzzer target: the backup sentinel parser (wale_sentinel_parse in
 * wale/sentinel.c), which reads *_backup_stop_sentinel.json from the
 * bucket for every backup's details. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wale/sentinel.h"

/* backup_catalog_details fetches at most this much of a sentinel. */
#define INPUT_MAX (64u << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > INPUT_MAX)
        return 0;
    wale_sentinel d;
    memset(&d, 0, sizeof d);
    d.expanded_size_bytes = -1;
    if (wale_sentinel_parse((const char *)data, size, &d) == 0 &&
        (strnlen(d.stop_segment, sizeof d.stop_segment) == sizeof d.stop_segment ||
         strnlen(d.stop_offset, sizeof d.stop_offset) == sizeof d.stop_offset))
        abort(); /* the copies must stay terminated */
    return 0;
}
