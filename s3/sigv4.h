/* AWS Signature Version 4 for S3 requests.  Pure functions over strings:
 * no I/O, so the published AWS test vectors can check them directly. */
#ifndef WALFS_S3_SIGV4_H
#define WALFS_S3_SIGV4_H

#include <stddef.h>
#include <time.h>

typedef struct sigv4_header {
    const char *name;   /* any case; signed lower-cased and trimmed */
    const char *value;
} sigv4_header;

typedef struct sigv4_request {
    const char *method;          /* "GET" */
    const char *path;            /* already URI-encoded path, e.g. "/bucket/a%20b" */
    const char *query;           /* raw query string without '?', may be NULL; canonicalized (sorted, encoded) here */
    const sigv4_header *headers; /* must include host and x-amz-date; x-amz-content-sha256 for S3 */
    size_t n_headers;
    const char *payload_sha256_hex; /* hex sha256 of body, or "UNSIGNED-PAYLOAD" */
} sigv4_request;

typedef struct sigv4_credentials {
    const char *access_key;
    const char *secret_key;
    const char *session_token;   /* may be NULL; caller adds x-amz-security-token header */
} sigv4_credentials;

/* Builds the Authorization header value into out (size outlen).
 * amz_date is "YYYYMMDDTHHMMSSZ", region e.g. "us-east-1", service "s3".
 * Returns 0, or -1 if out is too small.  canonical_request / string_to_sign,
 * when non-NULL, receive malloc'd copies for tests and debugging. */
int sigv4_authorization(const sigv4_request *req, const sigv4_credentials *cred,
                        const char *amz_date, const char *region, const char *service,
                        char *out, size_t outlen, char **canonical_request,
                        char **string_to_sign);

/* Formats t as "YYYYMMDDTHHMMSSZ" (buf >= 17 bytes). */
void sigv4_amz_date(time_t t, char *buf);
/* Hex sha256 of data into hex (65 bytes). */
void sigv4_sha256_hex(const void *data, size_t len, char *hex);
/* URI-encodes s per SigV4 (RFC 3986 unreserved kept; '/' kept when keep_slash). malloc'd. */
char *sigv4_uri_encode(const char *s, int keep_slash);

#endif
