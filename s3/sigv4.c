#include "s3/sigv4.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "common/buf.h"
#include "common/hex.h"

void sigv4_sha256_hex(const void *data, size_t len, char *hex)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    hex_encode(md, sizeof md, hex);
}

void sigv4_amz_date(time_t t, char *buf)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static int unreserved(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

static void uri_encode_into(walfs_buf *b, const char *s, size_t n, int keep_slash)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            buf_append(b, &c, 1);
        } else {
            /* SigV4 requires upper-case hex in percent-encodings. */
            char enc[4] = {'%', "0123456789ABCDEF"[c >> 4], "0123456789ABCDEF"[c & 15], 0};
            buf_puts(b, enc);
        }
    }
}

char *sigv4_uri_encode(const char *s, int keep_slash)
{
    walfs_buf b = {0};
    buf_reserve(&b, strlen(s) * 3);
    uri_encode_into(&b, s, strlen(s), keep_slash);
    if (b.err) {
        buf_free(&b);
        return NULL;
    }
    if (!b.data)
        return strdup("");
    return b.data;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decoding before re-encoding makes canonicalization idempotent: a query the
 * caller already percent-encoded (as it must be on the wire) and a raw one
 * without reserved characters both end up in the one canonical form. '+' is
 * left alone: S3 does not treat it as a space in SigV4 canonical queries. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int h1, h2;
        if (s[i] == '%' && i + 2 < n &&
            (h1 = hexval((unsigned char)s[i + 1])) >= 0 &&
            (h2 = hexval((unsigned char)s[i + 2])) >= 0) {
            out[o++] = (char)(h1 * 16 + h2);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

typedef struct qparam {
    char *name;   /* encoded */
    char *value;  /* encoded */
} qparam;

static int qparam_cmp(const void *a, const void *b)
{
    const qparam *x = a, *y = b;
    int r = strcmp(x->name, y->name);
    return r ? r : strcmp(x->value, y->value);
}

static char *encode_component(const char *s, size_t n)
{
    char *raw = pct_decode(s, n);
    if (!raw)
        return NULL;
    char *enc = sigv4_uri_encode(raw, 0);
    free(raw);
    return enc;
}

/* Returns 0 and appends the canonical query string, or -1 on OOM. */
static int canonical_query(walfs_buf *b, const char *query)
{
    if (!query || !*query)
        return 0;
    size_t n = 1;
    for (const char *p = query; *p; p++)
        n += *p == '&';
    qparam *params = calloc(n, sizeof *params);
    if (!params)
        return -1;
    size_t count = 0;
    int rc = 0;
    const char *p = query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > 0) {
            const char *eq = memchr(p, '=', len);
            size_t nlen = eq ? (size_t)(eq - p) : len;
            params[count].name = encode_component(p, nlen);
            params[count].value = eq ? encode_component(eq + 1, len - nlen - 1) : strdup("");
            count++;
            if (!params[count - 1].name || !params[count - 1].value) {
                rc = -1;
                break;
            }
        }
        p += len;
        if (*p == '&')
            p++;
    }
    if (rc == 0) {
        qsort(params, count, sizeof *params, qparam_cmp);
        for (size_t i = 0; i < count; i++) {
            if (i)
                buf_puts(b, "&");
            buf_puts(b, params[i].name);
            buf_puts(b, "=");
            buf_puts(b, params[i].value);
        }
    }
    for (size_t i = 0; i < count; i++) {
        free(params[i].name);
        free(params[i].value);
    }
    free(params);
    return rc;
}

typedef struct canon_header {
    char *name;   /* lower-cased */
    char *value;  /* trimmed, inner runs of spaces collapsed */
} canon_header;

static int canon_header_cmp(const void *a, const void *b)
{
    const canon_header *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static char *lower_dup(const char *s)
{
    char *d = strdup(s);
    if (d)
        for (char *p = d; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    return d;
}

static char *trim_dup(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    size_t o = 0;
    int space = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == ' ' || c == '\t') {
            space = 1;
            continue;
        }
        if (space && o > 0)
            d[o++] = ' ';
        space = 0;
        d[o++] = c;
    }
    d[o] = '\0';
    return d;
}

static void hmac_sha256(const void *key, size_t keylen, const char *msg, unsigned char out[32])
{
    unsigned int outlen = 32;
    HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, strlen(msg), out, &outlen);
}

int sigv4_authorization(const sigv4_request *req, const sigv4_credentials *cred,
                        const char *amz_date, const char *region, const char *service,
                        char *out, size_t outlen, char **canonical_request,
                        char **string_to_sign)
{
    if (canonical_request)
        *canonical_request = NULL;
    if (string_to_sign)
        *string_to_sign = NULL;

    int rc = -1;
    walfs_buf creq = {0}, sts = {0}, signed_names = {0};
    canon_header *hdrs = calloc(req->n_headers ? req->n_headers : 1, sizeof *hdrs);
    size_t nh = 0;
    if (!hdrs)
        return -1;
    for (size_t i = 0; i < req->n_headers; i++) {
        hdrs[nh].name = trim_dup(req->headers[i].name);
        char *lname = hdrs[nh].name ? lower_dup(hdrs[nh].name) : NULL;
        free(hdrs[nh].name);
        hdrs[nh].name = lname;
        hdrs[nh].value = trim_dup(req->headers[i].value ? req->headers[i].value : "");
        nh++;
        if (!hdrs[nh - 1].name || !hdrs[nh - 1].value)
            goto out;
    }
    qsort(hdrs, nh, sizeof *hdrs, canon_header_cmp);

    buf_puts(&creq, req->method);
    buf_puts(&creq, "\n");
    buf_puts(&creq, req->path && *req->path ? req->path : "/");
    buf_puts(&creq, "\n");
    if (canonical_query(&creq, req->query) != 0)
        goto out;
    buf_puts(&creq, "\n");
    /* The spec joins repeated names with commas; qsort is not stable, so
     * their order is unspecified and callers should not repeat names. */
    for (size_t i = 0; i < nh; i++) {
        if (i > 0 && strcmp(hdrs[i].name, hdrs[i - 1].name) == 0) {
            creq.len--; /* drop the previous newline */
            buf_puts(&creq, ",");
            buf_puts(&creq, hdrs[i].value);
            buf_puts(&creq, "\n");
            continue;
        }
        buf_puts(&creq, hdrs[i].name);
        buf_puts(&creq, ":");
        buf_puts(&creq, hdrs[i].value);
        buf_puts(&creq, "\n");
        if (signed_names.len)
            buf_puts(&signed_names, ";");
        buf_puts(&signed_names, hdrs[i].name);
    }
    buf_puts(&creq, "\n");
    buf_puts(&creq, signed_names.data ? signed_names.data : "");
    buf_puts(&creq, "\n");
    buf_puts(&creq, req->payload_sha256_hex ? req->payload_sha256_hex : "UNSIGNED-PAYLOAD");
    if (creq.err || signed_names.err)
        goto out;

    char creq_hash[65];
    sigv4_sha256_hex(creq.data, creq.len, creq_hash);
    char day[9];
    memcpy(day, amz_date, 8);
    day[8] = '\0';

    buf_puts(&sts, "AWS4-HMAC-SHA256\n");
    buf_puts(&sts, amz_date);
    buf_puts(&sts, "\n");
    buf_puts(&sts, day);
    buf_puts(&sts, "/");
    buf_puts(&sts, region);
    buf_puts(&sts, "/");
    buf_puts(&sts, service);
    buf_puts(&sts, "/aws4_request\n");
    buf_puts(&sts, creq_hash);
    if (sts.err)
        goto out;

    size_t klen = strlen(cred->secret_key) + 5;
    char *kbuf = malloc(klen);
    if (!kbuf)
        goto out;
    snprintf(kbuf, klen, "AWS4%s", cred->secret_key);
    unsigned char k1[32], k2[32], k3[32], k4[32], sig[32];
    hmac_sha256(kbuf, klen - 1, day, k1);
    OPENSSL_cleanse(kbuf, klen);
    free(kbuf);
    hmac_sha256(k1, 32, region, k2);
    hmac_sha256(k2, 32, service, k3);
    hmac_sha256(k3, 32, "aws4_request", k4);
    hmac_sha256(k4, 32, sts.data, sig);
    char sighex[65];
    hex_encode(sig, 32, sighex);
    OPENSSL_cleanse(k1, sizeof k1);
    OPENSSL_cleanse(k2, sizeof k2);
    OPENSSL_cleanse(k3, sizeof k3);
    OPENSSL_cleanse(k4, sizeof k4);

    int n = snprintf(out, outlen,
                     "AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request,"
                     "SignedHeaders=%s,Signature=%s",
                     cred->access_key, day, region, service, signed_names.data ? signed_names.data : "",
                     sighex);
    if (n < 0 || (size_t)n >= outlen)
        goto out;

    if (canonical_request)
        *canonical_request = buf_take(&creq, NULL);
    if (string_to_sign)
        *string_to_sign = buf_take(&sts, NULL);
    rc = 0;
out:
    for (size_t i = 0; i < nh; i++) {
        free(hdrs[i].name);
        free(hdrs[i].value);
    }
    free(hdrs);
    buf_free(&creq);
    buf_free(&sts);
    buf_free(&signed_names);
    return rc;
}
