#include "pg/backup_manifest.h"

#include <json-c/json.h>

#include "pg/lsn.h"

int pg_backup_manifest_wal_end(const char *text, uint32_t *timeline, uint64_t *end_lsn)
{
    json_object *root = json_tokener_parse(text);
    json_object *ranges = NULL, *last = NULL, *end = NULL, *tli = NULL;
    if (root && json_object_object_get_ex(root, "WAL-Ranges", &ranges) &&
        json_object_is_type(ranges, json_type_array) && json_object_array_length(ranges) > 0)
        last = json_object_array_get_idx(ranges, json_object_array_length(ranges) - 1);
    uint64_t lsn = 0;
    int ok = last && json_object_object_get_ex(last, "End-LSN", &end) &&
             json_object_object_get_ex(last, "Timeline", &tli) &&
             pg_lsn_parse(json_object_get_string(end), &lsn) == 0;
    if (ok) {
        *timeline = (uint32_t)json_object_get_int(tli);
        *end_lsn = lsn;
    }
    json_object_put(root);
    return ok ? 0 : -1;
}
