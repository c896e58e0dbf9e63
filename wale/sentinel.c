#include "wale/sentinel.h"

#include <json-c/json.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>

int wale_sentinel_parse(const char *json, size_t len, wale_sentinel *out)
{
    if (len > INT_MAX)
        return -1;
    struct json_tokener *tok = json_tokener_new();
    json_object *root = tok ? json_tokener_parse_ex(tok, json, (int)len) : NULL;
    if (tok)
        json_tokener_free(tok);
    if (!root || !json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return -1;
    }
    json_object *v;
    if (json_object_object_get_ex(root, "wal_segment_backup_stop", &v) &&
        json_object_is_type(v, json_type_string))
        snprintf(out->stop_segment, sizeof out->stop_segment, "%s", json_object_get_string(v));
    if (json_object_object_get_ex(root, "wal_segment_offset_backup_stop", &v) &&
        json_object_is_type(v, json_type_string))
        snprintf(out->stop_offset, sizeof out->stop_offset, "%s", json_object_get_string(v));
    int rc = 0;
    if (json_object_object_get_ex(root, "expanded_size_bytes", &v) &&
        json_object_is_type(v, json_type_int)) {
        /* json-c saturates what int64 cannot hold (a uint64 above it reads
         * as INT64_MAX): such a size is no size. */
        int64_t size = json_object_get_int64(v);
        if (size < 0 || size == INT64_MAX)
            rc = 1;
        else
            out->expanded_size_bytes = size;
    }
    json_object_put(root);
    return rc;
}
