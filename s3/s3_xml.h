/* Internal to s3/: parsing of S3 XML response bodies with libxml2.  No
 * network access, no entity expansion, and documents carrying a DTD are
 * refused, so a hostile or broken server cannot make the parser fetch or
 * expand anything.  Malformed input is reported, never crashes. */
#ifndef WALFS_S3_S3_XML_H
#define WALFS_S3_S3_XML_H

#include <stddef.h>

#include "s3/s3_client.h"

void s3_xml_init(void);

/* 1 if body is an S3 <Error> document (code/message filled, possibly empty),
 * 0 if it is some other well-formed document or empty, -1 if malformed. */
int s3_xml_error(const char *body, size_t len, char *code, size_t code_len, char *message,
                 size_t message_len);

/* InitiateMultipartUploadResult/UploadId, malloc'd into *upload_id.
 * Returns 0, or -1 (malformed / missing). */
int s3_xml_upload_id(const char *body, size_t len, char **upload_id);

/* ListBucketResult (ListObjectsV2): calls fn for each Contents and
 * CommonPrefixes entry in document order, and bad (if not NULL; with the
 * key, or "", and why) for an entry that cannot be one: skipped, so one
 * bad key does not hide the others.  Returns 0, -1 for a malformed body, -2 for a
 * truncated page without a NextContinuationToken, or 1 when fn returned
 * non-zero (that value in *fn_rc).  *next_token gets
 * NextContinuationToken (malloc'd) when IsTruncated is true, else NULL. */
typedef void (*s3_xml_bad_fn)(void *ctx, const char *key, const char *why);
int s3_xml_list(const char *body, size_t len, s3_list_fn fn, s3_xml_bad_fn bad, void *ctx,
                char **next_token, int *fn_rc);

/* ListMultipartUploadsResult: calls fn for each <Upload> (Key, UploadId).
 * Returns the number of uploads, or -1 when the body is malformed. */
typedef void (*s3_xml_upload_fn)(void *ctx, const char *key, const char *upload_id);
int s3_xml_uploads(const char *body, size_t len, s3_xml_upload_fn fn, void *ctx);

#endif
