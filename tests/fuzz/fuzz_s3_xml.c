/* libFuzzer target: the S3 response parsers (s3/s3_xml.c).  Every body a
 * server sends goes through one of them, so each input is given to all
 * four: the <Error> reader, InitiateMultipartUploadResult, ListBucketResult
 * (ListObjectsV2) and ListMultipartUploadsResult. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "s3/s3_xml.h"

#define INPUT_MAX (256u << 10)

static int list_fn(void *ctx, const s3_list_entry *e)
{
    size_t *n = ctx;
    /* Touch every field, so a dangling pointer shows under ASan. */
    *n += strlen(e->key) + strlen(e->etag) + (size_t)e->is_prefix + (size_t)(e->size & 1) +
          (size_t)(e->last_modified & 1);
    /* Stop once the names add up to 100,000 bytes, so the early-exit path
     * (fn returning non-zero) runs and frees what it holds. */
    return *n > 100000 ? 7 : 0;
}

static void upload_fn(void *ctx, const char *key, const char *upload_id)
{
    size_t *n = ctx;
    *n += strlen(key) + strlen(upload_id);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    s3_xml_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > INPUT_MAX)
        return 0;
    const char *body = (const char *)data;
    char code[64], message[256];
    int rc = s3_xml_error(body, size, code, sizeof code, message, sizeof message);
    if (rc < -1 || rc > 1 || strlen(code) >= sizeof code || strlen(message) >= sizeof message)
        abort();

    char *upload_id = NULL;
    if (s3_xml_upload_id(body, size, &upload_id) == 0 && (!upload_id || !*upload_id))
        abort();
    free(upload_id);

    size_t n = 0;
    char *token = NULL;
    int fn_rc = 0;
    rc = s3_xml_list(body, size, list_fn, NULL, &n, &token, &fn_rc);
    if ((rc == 1) != (fn_rc == 7) || (token && (rc != 0 || !*token)))
        abort();
    free(token);

    n = 0;
    (void)s3_xml_uploads(body, size, upload_fn, &n);
    return 0;
}
