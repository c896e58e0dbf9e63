#include "s3/s3_client.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "common/buf.h"
#include "common/deadline.h"
#include "common/log.h"
#include "s3/s3_xml.h"
#include "s3/sigv4.h"

#ifndef WALFS_VERSION
#define WALFS_VERSION "dev"
#endif

#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define MIB ((size_t)1024 * 1024)
#define POOL_MAX 64
#define MAX_EXTRA_HEADERS (8 + S3_MAX_META)
/* An error document is a few hundred bytes; only its Code and Message are
 * used, and a hostile server may send a gigabyte. */
#define ERROR_BODY_LIMIT 4096
/* A ListObjectsV2 page of 1000 keys of at most 1024 bytes each stays well
 * below this. */
#define LIST_BODY_LIMIT (4 * MIB)
#define BACKOFF_START_MS 100
#define BACKOFF_CAP_MS 5000

/* Pages one listing may take.  The token and ordering checks stop a server
 * that loops, but not one that keeps going forward (one new, greater key and
 * a new token per page): this cap ends that.  At S3's 1000 keys a page it is
 * 100 M keys, 1.6 PB of 16 MiB WAL segments, far past any real archive; at
 * one key a page it is 100,000 requests, minutes, not forever.
 * WALFS_S3_LIST_MAX_PAGES lowers it for tests. */
#define S3_LIST_MAX_PAGES 100000

struct s3_client {
    char *url_base;     /* scheme://host[:port], with "bucket." in front when virtual-hosted */
    char *host;         /* Host header, signed exactly as sent */
    char *path_prefix;  /* "/bucket" for path-style, "" for virtual-hosted */
    char *bucket;
    char *label;        /* "s3://bucket" */
    char *region, *access_key, *secret_key, *session_token, *sse, *storage_class, *ca_file;
    int insecure;
    long connect_timeout_ms, low_speed_time_s, low_speed_limit, deadline_ms;
    size_t mp_threshold, mp_part_size;
    int list_max_keys;  /* 0 = server default; WALFS_S3_LIST_MAX_KEYS lets tests force paging */
    int list_max_pages; /* S3_LIST_MAX_PAGES, or lower by WALFS_S3_LIST_MAX_PAGES */

    pthread_mutex_t lock;
    CURL *idle[POOL_MAX];
    int n_idle;
};

/* ---- process-wide setup ---- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_rc;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
    s3_xml_init();
}

/* ---- small helpers ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Jitter only has to decorrelate clients, so a per-thread xorshift is enough
 * and avoids rand()'s hidden global state. */
static uint64_t jitter_rand(void)
{
    static _Thread_local uint64_t state;
    if (state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&state;
        if (state == 0)
            state = 0x9e3779b97f4a7c15ULL;
    }
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static void copy_str(char *dst, size_t dstlen, const char *src, size_t n)
{
    if (n >= dstlen)
        n = dstlen - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void strip_quotes(char *s)
{
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        memmove(s, s + 1, n - 2);
        s[n - 2] = '\0';
    }
}

static void md5_bin(const void *data, size_t len, unsigned char out[16])
{
    unsigned int n = 16;
    EVP_Digest(data, len, out, &n, EVP_md5(), NULL);
}

static void to_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* ---- one logical operation, across its attempts ---- */

typedef struct s3_op {
    s3_client *c;
    const char *name;       /* for messages: "GET", "PUT", "list", ... */
    const char *method;
    char object[1200];      /* "s3://bucket/key" for messages */
    char *path;             /* URI-encoded, as signed and sent */
    const char *query;      /* already encoded; NULL when none */
    sigv4_header hdr[MAX_EXTRA_HEADERS];
    size_t n_hdr;
    const void *body;
    size_t body_len;
    char body_sha[65];
    int error_in_200;       /* a 2xx body may be an <Error> document */
    size_t body_limit;      /* how much of a response body to keep */

    /* streaming GET */
    s3_sink_fn sink;
    void *sink_ctx;
    uint64_t want_start, want_end; /* want_end exclusive; 0 with to_end */
    int to_end;
    uint64_t delivered;
    char pinned_etag[128];
    int sink_rc;

    /* the current attempt's response */
    long status;
    walfs_buf resp;
    int resp_truncated;
    char etag[128], request_id[96], last_modified[64], content_range[96];
    uint64_t content_length;
    int have_content_length;
    s3_meta meta[S3_MAX_META];
    int n_meta;
    int body_started, done, bad_range;
    uint64_t pos;
    /* stall detection: the last time low_speed_limit more bytes had moved */
    uint64_t stall_mark_ms;
    curl_off_t stall_mark_bytes;
    int stalled;

    /* outcome */
    int attempts;
    char err_code[64];      /* S3 error Code of the last failed attempt */
} s3_op;


static int op_init(s3_op *op, s3_client *c, const char *name, const char *method,
                   const char *key, walfs_err *err)
{
    memset(op, 0, sizeof *op);
    op->c = c;
    op->name = name;
    op->method = method;
    op->body_limit = ERROR_BODY_LIMIT;
    memcpy(op->body_sha, EMPTY_SHA256, sizeof op->body_sha);
    if (key) {
        if (!*key)
            return walfs_err_set(err, -EINVAL, "%s %s: empty object key", name, c->label);
        snprintf(op->object, sizeof op->object, "%s/%s", c->label, key);
        char *enc = sigv4_uri_encode(key, 1);
        op->path = enc ? xasprintf("%s/%s", c->path_prefix, enc) : NULL;
        free(enc);
    } else {
        snprintf(op->object, sizeof op->object, "%s", c->label);
        op->path = xasprintf("%s/", c->path_prefix);
    }
    if (!op->path)
        return walfs_err_set(err, -ENOMEM, "%s %s: out of memory", name, op->object);
    return 0;
}

static void op_free(s3_op *op)
{
    free(op->path);
    buf_free(&op->resp);
    op->path = NULL;
}

static void op_header(s3_op *op, const char *name, const char *value)
{
    if (op->n_hdr < MAX_EXTRA_HEADERS) {
        op->hdr[op->n_hdr].name = name;
        op->hdr[op->n_hdr].value = value;
        op->n_hdr++;
    }
}

static void op_body(s3_op *op, const void *body, size_t len)
{
    op->body = body;
    op->body_len = len;
    sigv4_sha256_hex(body ? body : "", len, op->body_sha);
}

/* ---- connection pool ---- */

static CURL *pool_get(s3_client *c)
{
    CURL *h = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->n_idle > 0)
        h = c->idle[--c->n_idle];
    pthread_mutex_unlock(&c->lock);
    if (h)
        curl_easy_reset(h); /* keeps the handle's live connections */
    else
        h = curl_easy_init();
    return h;
}

static void pool_put(s3_client *c, CURL *h)
{
    pthread_mutex_lock(&c->lock);
    if (c->n_idle < POOL_MAX) {
        c->idle[c->n_idle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (h)
        curl_easy_cleanup(h);
}

/* ---- libcurl callbacks ---- */

static int hdr_is(const char *line, size_t n, const char *name, const char **value, size_t *vlen)
{
    size_t nl = strlen(name);
    if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return 0;
    const char *v = line + nl + 1;
    const char *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    *value = v;
    *vlen = (size_t)(end - v);
    return 1;
}

static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
    s3_op *op = ud;
    size_t n = size * nitems;
    const char *v;
    size_t vl;
    char tmp[64];
    if (n > 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* A new status line (100 Continue, or curl re-sending on a stale
         * connection) starts a fresh set of headers. */
        const char *sp = memchr(line, ' ', n);
        op->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        op->etag[0] = op->request_id[0] = op->last_modified[0] = op->content_range[0] = '\0';
        op->have_content_length = 0;
        op->n_meta = 0;
    } else if (hdr_is(line, n, "ETag", &v, &vl)) {
        copy_str(op->etag, sizeof op->etag, v, vl);
        strip_quotes(op->etag);
    } else if (hdr_is(line, n, "x-amz-request-id", &v, &vl)) {
        copy_str(op->request_id, sizeof op->request_id, v, vl);
    } else if (hdr_is(line, n, "Last-Modified", &v, &vl)) {
        copy_str(op->last_modified, sizeof op->last_modified, v, vl);
    } else if (hdr_is(line, n, "Content-Range", &v, &vl)) {
        copy_str(op->content_range, sizeof op->content_range, v, vl);
    } else if (hdr_is(line, n, "Content-Length", &v, &vl)) {
        copy_str(tmp, sizeof tmp, v, vl);
        char *end;
        op->content_length = strtoull(tmp, &end, 10);
        op->have_content_length = end != tmp;
    } else if (n > 11 && strncasecmp(line, "x-amz-meta-", 11) == 0) {
        const char *colon = memchr(line, ':', n);
        if (colon && op->n_meta < S3_MAX_META) {
            s3_meta *m = &op->meta[op->n_meta];
            copy_str(m->name, sizeof m->name, line + 11, (size_t)(colon - line - 11));
            for (char *p = m->name; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            v = colon + 1;
            const char *end = line + n;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
                end--;
            if ((size_t)(end - v) >= sizeof m->value)
                log_warn("s3: %s: metadata %s longer than %zu bytes, truncated", op->object,
                         m->name, sizeof m->value - 1);
            copy_str(m->value, sizeof m->value, v, (size_t)(end - v));
            op->n_meta++;
        } else if (colon) {
            log_debug("s3: %s: more than %d metadata headers, extra ignored", op->object,
                      S3_MAX_META);
        }
    }
    return n;
}

/* -1: out of memory; 1: the body is over its limit, stop receiving it
 * (what was kept is all that will be used). */
static int keep_body(s3_op *op, const char *data, size_t n)
{
    size_t limit = op->status >= 200 && op->status < 300 ? op->body_limit : ERROR_BODY_LIMIT;
    if (limit > op->body_limit)
        limit = op->body_limit;
    int over = op->resp.len + n > limit;
    if (over) {
        op->resp_truncated = 1;
        n = limit > op->resp.len ? limit - op->resp.len : 0;
    }
    if (n == 0)
        return over;
    if (buf_append(&op->resp, data, n) != 0)
        return -1;
    return over;
}

/* "bytes 100-199/1000" -> 100 */
static int content_range_start(const char *cr, uint64_t *start)
{
    if (strncmp(cr, "bytes ", 6) != 0 || !isdigit((unsigned char)cr[6]))
        return -1;
    *start = strtoull(cr + 6, NULL, 10);
    return 0;
}

static int wanted_all(const s3_op *op)
{
    return !op->to_end && op->want_start + op->delivered >= op->want_end;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    s3_op *op = ud;
    size_t n = size * nmemb;
    if (!op->sink || op->status < 200 || op->status >= 300) {
        int k = keep_body(op, data, n);
        if (k > 0)
            op->done = 1; /* ends the transfer; not a failure of the connection */
        return k == 0 ? n : 0;
    }

    uint64_t next = op->want_start + op->delivered;
    if (!op->body_started) {
        op->body_started = 1;
        op->pos = 0;
        /* A server may ignore Range and send 200 with the whole object; we
         * then skip to the wanted byte rather than trusting it did what we asked. */
        if (op->status == 206 && content_range_start(op->content_range, &op->pos) != 0) {
            op->bad_range = 1;
            return 0;
        }
        if (op->pos > next) {
            op->bad_range = 1;
            return 0;
        }
    }
    if (wanted_all(op)) {
        op->done = 1;
        return 0;
    }
    const char *p = data;
    size_t left = n;
    if (op->pos < next) {
        uint64_t skip = next - op->pos;
        if (skip > left)
            skip = left;
        p += skip;
        left -= (size_t)skip;
        op->pos += skip;
    }
    int clipped = 0;
    if (left && !op->to_end && left > op->want_end - next) {
        left = (size_t)(op->want_end - next);
        clipped = 1;
    }
    if (left) {
        int r = op->sink(op->sink_ctx, p, left);
        if (r != 0) {
            op->sink_rc = r;
            return 0;
        }
        op->delivered += left;
        op->pos += left;
    }
    if (clipped) {
        op->done = 1;
        return 0;
    }
    return n;
}

/* ---- classification and messages ---- */

static int code_is(const char *code, const char *want) { return strcmp(code, want) == 0; }

static int transient_status(long status, const char *code)
{
    return status >= 500 || status == 408 || status == 429 || code_is(code, "SlowDown") ||
           code_is(code, "RequestTimeout") || code_is(code, "InternalError") ||
           code_is(code, "ServiceUnavailable");
}

static int errno_for(long status, const char *code)
{
    if (code_is(code, "NoSuchUpload"))
        return -EIO; /* the object is fine; our upload is what vanished */
    if (status == 404)
        return -ENOENT;
    if (status == 403 || code_is(code, "ExpiredToken") || code_is(code, "InvalidToken") ||
        code_is(code, "TokenRefreshRequired"))
        return -EACCES;
    if (status == 412)
        return -EEXIST;
    return -EIO;
}

static const char *advice_for(const s3_client *c, long status, const char *code, char *buf,
                              size_t buflen)
{
    if (code_is(code, "SignatureDoesNotMatch"))
        return "the server rejected the request signature: check AWS_SECRET_ACCESS_KEY";
    if (code_is(code, "InvalidAccessKeyId"))
        return "the server does not know this access key: check AWS_ACCESS_KEY_ID";
    if (code_is(code, "RequestTimeTooSkewed"))
        return "the local clock is too far from the server's: fix the clock (enable NTP)";
    if (code_is(code, "ExpiredToken") || code_is(code, "TokenRefreshRequired"))
        return "the temporary credentials have expired: refresh AWS_SESSION_TOKEN and its keys";
    if (code_is(code, "InvalidToken"))
        return "the session token is not valid: check AWS_SESSION_TOKEN";
    if (code_is(code, "AccessDenied"))
        return "access denied: check that these credentials may use this bucket and prefix";
    if (code_is(code, "NoSuchBucket")) {
        snprintf(buf, buflen, "bucket %s does not exist: create the bucket or fix the prefix",
                 c->bucket);
        return buf;
    }
    if (code_is(code, "NoSuchKey"))
        return "no such object";
    if (code_is(code, "NoSuchUpload"))
        return "the multipart upload no longer exists (aborted or expired): upload again";
    if (code_is(code, "PermanentRedirect") || code_is(code, "AuthorizationHeaderMalformed") ||
        status == 301)
        return "the bucket is in another region or needs another endpoint: set the region";
    if (code_is(code, "BadDigest") || code_is(code, "XAmzContentSHA256Mismatch"))
        return "the server received different bytes than were sent (corrupted in transit)";
    if (code_is(code, "InvalidRange") || status == 416)
        return "the requested range is beyond the end of the object";
    if (status == 404)
        return "no such object (or bucket)";
    if (status == 403)
        return "access denied: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the clock and "
               "the bucket permissions";
    if (status == 412)
        return "precondition failed: the object changed or already exists";
    if (status == 400 && code_is(code, "InvalidRequest"))
        return "the server refused the request (SSE over plain HTTP, or a bad storage class?)";
    return "the request failed";
}

/* Where s holds the start of secret (its first 16 bytes, or all of a
 * shorter one): a message cut short, here or by the server, may hold only
 * a prefix of a long session token, and that prefix is as secret. */
static char *secret_start_in(char *s, const char *secret)
{
    size_t need = strlen(secret);
    if (need > 16)
        need = 16;
    for (char *p = s; need && *p; p++)
        if (strncmp(p, secret, need) == 0)
            return p;
    return NULL;
}

/* What a response says goes into messages and the log; a proxy or server
 * that echoes the request puts its Authorization (the signature, the
 * access key's scope) and x-amz-security-token in there.  Everything from
 * the first such mark on is cut, and the credentials themselves wherever
 * they (or their first 16 bytes) appear. */
static void redact_secrets(const s3_client *c, char *s, size_t cap)
{
    static const char *const marks[] = {"authorization:", "authorization=", "x-amz-security-token",
                                        "aws4-hmac-sha256", "credential=", "signature=",
                                        "x-amz-credential", "x-amz-signature"};
    static const char tail[] = " [redacted]";
    char *cut = NULL;
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
        char *m = strcasestr(s, marks[i]);
        if (m && (!cut || m < cut))
            cut = m;
    }
    const char *secrets[] = {c->secret_key, c->session_token};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
        char *m = secrets[i] ? secret_start_in(s, secrets[i]) : NULL;
        if (m && (!cut || m < cut))
            cut = m;
    }
    if (!cut)
        return;
    size_t at = (size_t)(cut - s);
    while (at > 0 && s[at - 1] == ' ')
        at--; /* the tail brings its own */
    if (cap < sizeof tail) {
        s[0] = '\0';
        return;
    }
    if (at + sizeof tail > cap)
        at = cap - sizeof tail;
    memcpy(s + at, tail, sizeof tail);
}

static void describe_http(const s3_op *op, const char *code, const char *message, char *out,
                          size_t outlen)
{
    snprintf(out, outlen, "HTTP %ld%s%s%s%s%s%s", op->status, *code ? " " : "", code,
             *message ? ": " : "", message, *op->request_id ? ", request id " : "",
             op->request_id);
    redact_secrets(op->c, out, outlen);
}

/* ---- one attempt ---- */

enum { ATTEMPT_DONE, ATTEMPT_RETRY };

static int permanent_curl_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_OUT_OF_MEMORY:
        return 1;
    default:
        return 0;
    }
}

/* libcurl's own low-speed check averages over a window of its own and
 * aborted a stalled body only after about three times --low-speed-time;
 * this one aborts once fewer than low_speed_limit bytes moved in the last
 * low_speed_time seconds (checked about once a second). */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    s3_op *op = ud;
    if (deadline_cancelled())
        return 1;
    uint64_t now = now_ms();
    curl_off_t moved = dlnow + ulnow;
    if (op->stall_mark_ms == 0 || moved - op->stall_mark_bytes >= op->c->low_speed_limit) {
        op->stall_mark_ms = now;
        op->stall_mark_bytes = moved;
        return 0;
    }
    if (now - op->stall_mark_ms >= (uint64_t)op->c->low_speed_time_s * 1000) {
        op->stalled = 1;
        return 1;
    }
    return 0;
}

static int attempt(s3_op *op, uint64_t remaining_ms, int *rc_out, char *last, size_t lastlen,
                   walfs_err *err)
{
    s3_client *c = op->c;
    op->status = 0;
    buf_reset(&op->resp);
    op->resp_truncated = 0;
    op->body_started = op->done = op->bad_range = 0;
    op->sink_rc = 0;
    op->etag[0] = op->request_id[0] = op->content_range[0] = '\0';
    op->err_code[0] = '\0';
    op->n_meta = 0;
    op->have_content_length = 0;
    op->stall_mark_ms = 0;
    op->stall_mark_bytes = 0;
    op->stalled = 0;

    char amz_date[17];
    sigv4_amz_date(time(NULL), amz_date);
    char range[80] = "";
    sigv4_header h[MAX_EXTRA_HEADERS + 8];
    size_t nh = 0;
    h[nh++] = (sigv4_header){"host", c->host};
    h[nh++] = (sigv4_header){"x-amz-date", amz_date};
    h[nh++] = (sigv4_header){"x-amz-content-sha256", op->body_sha};
    if (c->session_token)
        h[nh++] = (sigv4_header){"x-amz-security-token", c->session_token};
    for (size_t i = 0; i < op->n_hdr; i++)
        h[nh++] = op->hdr[i];
    if (op->sink) {
        uint64_t from = op->want_start + op->delivered;
        if (!op->to_end)
            snprintf(range, sizeof range, "bytes=%" PRIu64 "-%" PRIu64, from, op->want_end - 1);
        else if (from > 0)
            snprintf(range, sizeof range, "bytes=%" PRIu64 "-", from);
        if (*range)
            h[nh++] = (sigv4_header){"range", range};
        /* Resuming must not splice bytes of a newer version onto an older one. */
        if (op->delivered > 0 && *op->pinned_etag)
            h[nh++] = (sigv4_header){"if-match", op->pinned_etag};
    }

    sigv4_request sreq = {op->method, op->path, op->query, h, nh, op->body_sha};
    sigv4_credentials cred = {c->access_key, c->secret_key, c->session_token};
    char auth[1024];
    if (sigv4_authorization(&sreq, &cred, amz_date, c->region, "s3", auth, sizeof auth, NULL,
                            NULL) != 0) {
        *rc_out = walfs_err_set(err, -EIO, "%s %s: could not sign the request", op->name,
                                op->object);
        return ATTEMPT_DONE;
    }

    struct curl_slist *list = NULL, *tmp;
    int oom = 0;
    char line[2048];
    for (size_t i = 0; i < nh && !oom; i++) {
        snprintf(line, sizeof line, "%s: %s", h[i].name, h[i].value);
        tmp = curl_slist_append(list, line);
        oom = !tmp;
        list = tmp ? tmp : list;
    }
    snprintf(line, sizeof line, "Authorization: %s", auth);
    const char *fixed[] = {line, "Expect:", "Accept:"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0] && !oom; i++) {
        tmp = curl_slist_append(list, fixed[i]);
        oom = !tmp;
        list = tmp ? tmp : list;
    }
    OPENSSL_cleanse(line, sizeof line);
    char *url = xasprintf("%s%s%s%s", c->url_base, op->path, op->query ? "?" : "",
                          op->query ? op->query : "");
    CURL *curl = oom || !url ? NULL : pool_get(c);
    if (!curl) {
        curl_slist_free_all(list);
        free(url);
        *rc_out = walfs_err_set(err, -ENOMEM, "%s %s: out of memory", op->name, op->object);
        return ATTEMPT_DONE;
    }

    char errbuf[CURL_ERROR_SIZE] = "";
    long timeout = remaining_ms > (uint64_t)LONG_MAX ? LONG_MAX : (long)remaining_ms;
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_VERBOSE, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                     c->connect_timeout_ms < timeout ? c->connect_timeout_ms : timeout);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, op);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, c->insecure ? 0L : 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, c->insecure ? 0L : 2L);
    if (c->ca_file)
        curl_easy_setopt(curl, CURLOPT_CAINFO, c->ca_file);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "walfs/" WALFS_VERSION);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, op);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, op);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    if (strcmp(op->method, "HEAD") == 0) {
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (strcmp(op->method, "PUT") == 0 || strcmp(op->method, "POST") == 0) {
        /* POSTFIELDS, unlike a read callback, lets libcurl rewind by itself
         * when it re-sends on a keep-alive connection the server closed. */
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)op->body_len);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, op->body ? (const char *)op->body : "");
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, op->method);
    } else if (strcmp(op->method, "GET") != 0) {
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, op->method);
    }

    uint64_t t0 = now_ms();
    CURLcode crc = curl_easy_perform(curl);
    uint64_t took = now_ms() - t0;
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL);
    pool_put(c, curl);
    curl_slist_free_all(list);
    free(url);
    log_debug("s3: %s %s -> %s%ld in %" PRIu64 " ms (attempt %d)", op->name, op->object,
              crc == CURLE_OK ? "HTTP " : "curl error, HTTP ", op->status, took, op->attempts);

    if (op->sink_rc) {
        /* The sink's own message (a checksum mismatch, a full cache disk)
         * says what failed and what to do; keep it. */
        int code = op->sink_rc < 0 ? op->sink_rc : -EIO;
        if (err && err->code == op->sink_rc && err->msg[0])
            *rc_out = code;
        else
            *rc_out = walfs_err_set(err, code, "%s %s: the consumer of the data failed (%s)",
                                    op->name, op->object, strerror(-code));
        return ATTEMPT_DONE;
    }
    if (op->bad_range) {
        redact_secrets(c, op->content_range, sizeof op->content_range);
        *rc_out = walfs_err_set(err, -EIO,
                                "%s %s: the server answered a range request with another range "
                                "(Content-Range '%s'); is the endpoint a compliant S3 server?",
                                op->name, op->object, op->content_range);
        return ATTEMPT_DONE;
    }
    /* Remember the version we started streaming, to pin any resume to it. */
    if (op->sink && op->status >= 200 && op->status < 300 && !*op->pinned_etag && *op->etag)
        copy_str(op->pinned_etag, sizeof op->pinned_etag, op->etag, strlen(op->etag));

    if (crc != CURLE_OK && !(op->done && crc == CURLE_WRITE_ERROR)) {
        const char *what = *errbuf ? errbuf : curl_easy_strerror(crc);
        if (op->stalled)
            snprintf(last, lastlen, "stalled: under %ld bytes/s for %ld s", c->low_speed_limit,
                     c->low_speed_time_s);
        else
            snprintf(last, lastlen, "%s", what);
        if (permanent_curl_error(crc)) {
            const char *hint = "";
            if (crc == CURLE_PEER_FAILED_VERIFICATION || crc == CURLE_SSL_CACERT_BADFILE)
                hint = "; set the CA file for a private CA (verification is never skipped "
                       "unless explicitly asked)";
            *rc_out = walfs_err_set(err, -EIO, "%s %s: %s%s", op->name, op->object, what, hint);
            return ATTEMPT_DONE;
        }
        return ATTEMPT_RETRY;
    }

    char code[64] = "", message[256] = "";
    int have_error = 0;
    if (op->status < 200 || op->status >= 300 || op->error_in_200) {
        int x = s3_xml_error(op->resp.data, op->resp.len, code, sizeof code, message, sizeof message);
        have_error = x == 1;
        if (x < 0 && op->status >= 200 && op->status < 300) {
            /* For a body we must parse anyway, the caller reports malformed XML. */
            have_error = 0;
        }
    }
    if (op->status >= 200 && op->status < 300 && !have_error) {
        *rc_out = 0;
        return ATTEMPT_DONE;
    }
    /* A resume that overshot the end: the previous attempt had delivered
     * everything, only the connection's clean end was lost. */
    if (op->status == 416 && op->sink && op->to_end && op->delivered > 0) {
        const char *slash = strrchr(op->content_range, '/');
        if (slash && strtoull(slash + 1, NULL, 10) == op->want_start + op->delivered) {
            *rc_out = 0;
            return ATTEMPT_DONE;
        }
    }
    snprintf(op->err_code, sizeof op->err_code, "%s", code);
    char http[512];
    describe_http(op, code, message, http, sizeof http);
    if (transient_status(op->status, code)) {
        snprintf(last, lastlen, "%s", http);
        return ATTEMPT_RETRY;
    }
    if (op->status == 412 && op->delivered > 0) {
        *rc_out = walfs_err_set(err, -EIO,
                                "%s %s: the object changed while it was being read (ETag no "
                                "longer %s); read it again",
                                op->name, op->object, op->pinned_etag);
        return ATTEMPT_DONE;
    }
    char abuf[256];
    const char *advice = advice_for(c, op->status, code, abuf, sizeof abuf);
    *rc_out = walfs_err_set(err, errno_for(op->status, code), "%s %s: %s (%s)", op->name,
                            op->object, advice, http);
    return ATTEMPT_DONE;
}

/* Runs op until it succeeds, fails for good, or its budget passes: the
 * client's deadline, cut to what is left of the calling thread's file
 * operation (common/deadline.h).  Transient failures until then give
 * -ETIMEDOUT: the object may well exist, the server just did not say. */
static int perform(s3_op *op, long deadline_ms, walfs_err *err)
{
    walfs_err_clear(err);
    uint64_t start = now_ms();
    uint64_t budget = deadline_budget_ms((uint64_t)deadline_ms);
    uint64_t deadline = start + budget;
    char last[512] = "no time was left for a first attempt";
    for (;;) {
        uint64_t now = now_ms();
        if (deadline_cancelled())
            return walfs_err_set(err, -ECANCELED,
                                 "%s %s: stopped: nobody waits for the answer any more (the "
                                 "request was interrupted, or walfs is unmounting)",
                                 op->name, op->object);
        if (now >= deadline)
            break;
        op->attempts++;
        int rc = 0;
        if (attempt(op, deadline - now, &rc, last, sizeof last, err) == ATTEMPT_DONE) {
            if (rc == 0)
                walfs_err_clear(err);
            return rc;
        }
        uint64_t cap = BACKOFF_START_MS;
        for (int i = 1; i < op->attempts && cap < BACKOFF_CAP_MS; i++)
            cap *= 2;
        if (cap > BACKOFF_CAP_MS)
            cap = BACKOFF_CAP_MS;
        uint64_t pause = jitter_rand() % (cap + 1);
        now = now_ms();
        if (now >= deadline)
            break;
        /* A long draw must not end the operation before its deadline (a
         * caller would see an outage as over early): keep half of what is
         * left for another attempt. */
        if (pause > (deadline - now) / 2)
            pause = (deadline - now) / 2;
        /* Debug only: whoever gives up or waits on says so once. */
        log_debug("s3: %s %s: attempt %d failed (%s); retrying in %" PRIu64 " ms", op->name,
                  op->object, op->attempts, last, pause);
        for (uint64_t slept = 0; slept < pause && !deadline_cancelled(); slept += 100)
            sleep_ms(pause - slept < 100 ? pause - slept : 100);
    }
    double secs = (double)(now_ms() - start) / 1000.0;
    int http_failure = strncmp(last, "HTTP ", 5) == 0;
    return walfs_err_set(err, -ETIMEDOUT,
                         "%s %s: gave up after %d attempt%s over %.1f s (deadline %.1f s); %s "
                         "last error: %s",
                         op->name, op->object, op->attempts, op->attempts == 1 ? "" : "s", secs,
                         (double)budget / 1000.0,
                         http_failure ? "the server kept failing;" : "is the endpoint reachable?",
                         last);
}

/* ---- client ---- */

static int valid_bucket(const char *b, int dns)
{
    size_t n = strlen(b);
    if (n < 1 || n > 255)
        return 0;
    for (const char *p = b; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (dns ? !(islower(ch) || isdigit(ch) || ch == '-' || ch == '.')
                : !(isalnum(ch) || ch == '-' || ch == '.' || ch == '_'))
            return 0;
    }
    return !dns || (n >= 3 && n <= 63);
}

/* Splits "scheme://host[:port][/]" into its scheme and host:port. */
static int split_endpoint(const char *ep, char **scheme, char **hostport)
{
    const char *sep = strstr(ep, "://");
    if (!sep)
        return -1;
    size_t sl = (size_t)(sep - ep);
    if (!((sl == 4 && strncasecmp(ep, "http", 4) == 0) ||
          (sl == 5 && strncasecmp(ep, "https", 5) == 0)))
        return -1;
    const char *h = sep + 3;
    size_t hl = strlen(h);
    if (hl > 0 && h[hl - 1] == '/')
        hl--;
    if (hl == 0 || memchr(h, '/', hl) || memchr(h, '?', hl) || memchr(h, '@', hl) ||
        memchr(h, ' ', hl))
        return -1;
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= 0x20 || (unsigned char)h[i] >= 0x7f)
            return -1;
    *scheme = strndup(ep, sl);
    *hostport = strndup(h, hl);
    if (!*scheme || !*hostport) {
        free(*scheme);
        free(*hostport);
        return -1;
    }
    for (char *p = *scheme; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return 0;
}

static char *dup_or_null(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

s3_client *s3_client_new(const s3_config *cfg, const char *bucket, walfs_err *err)
{
    pthread_once(&global_once, global_init);
    if (global_rc != 0) {
        walfs_err_set(err, -EIO, "s3: libcurl could not be initialized");
        return NULL;
    }
    if (!cfg || !bucket) {
        walfs_err_set(err, -EINVAL, "s3: no configuration or bucket given");
        return NULL;
    }
    if (!valid_bucket(bucket, !cfg->path_style)) {
        walfs_err_set(err, -EINVAL,
                      "s3: bucket name '%.100s' is not valid%s", bucket,
                      cfg->path_style ? ""
                                      : " for virtual-hosted addressing (lower case letters, "
                                        "digits, '-' and '.', 3 to 63 characters); use "
                                        "path-style addressing for legacy names");
        return NULL;
    }
    if (!cfg->access_key || !*cfg->access_key || !cfg->secret_key || !*cfg->secret_key) {
        walfs_err_set(err, -EINVAL,
                      "s3://%s: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                      bucket);
        return NULL;
    }
    const char *region = cfg->region && *cfg->region ? cfg->region : "us-east-1";
    for (const char *p = region; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-') || p - region > 64) {
            walfs_err_set(err, -EINVAL, "s3: region '%.64s' is not valid", region);
            return NULL;
        }
    size_t part = cfg->multipart_part_size ? cfg->multipart_part_size : 16 * MIB;
    if (part < 5 * MIB || part > (size_t)5 * 1024 * MIB) {
        walfs_err_set(err, -EINVAL,
                      "s3: multipart part size %zu is outside S3's limits (5 MiB to 5 GiB)",
                      part);
        return NULL;
    }
    if (cfg->sse && strcmp(cfg->sse, "AES256") != 0 && strcmp(cfg->sse, "aws:kms") != 0) {
        walfs_err_set(err, -EINVAL, "s3: server-side encryption '%.32s' is not supported "
                                    "(use AES256)", cfg->sse);
        return NULL;
    }

    char *scheme = NULL, *hostport = NULL;
    if (cfg->endpoint && *cfg->endpoint) {
        if (split_endpoint(cfg->endpoint, &scheme, &hostport) != 0) {
            walfs_err_set(err, -EINVAL,
                          "s3: endpoint '%.200s' is not valid: expected http://host[:port] or "
                          "https://host[:port]",
                          cfg->endpoint);
            return NULL;
        }
    } else {
        scheme = strdup("https");
        hostport = xasprintf("s3.%s.amazonaws.com", region);
    }

    s3_client *c = calloc(1, sizeof *c);
    int oom = !c || !scheme || !hostport;
    if (c) {
        if (cfg->path_style) {
            c->host = hostport ? strdup(hostport) : NULL;
            c->path_prefix = xasprintf("/%s", bucket);
        } else {
            c->host = hostport ? xasprintf("%s.%s", bucket, hostport) : NULL;
            c->path_prefix = strdup("");
        }
        c->url_base = c->host && scheme ? xasprintf("%s://%s", scheme, c->host) : NULL;
        c->bucket = strdup(bucket);
        c->label = xasprintf("s3://%s", bucket);
        c->region = strdup(region);
        c->access_key = dup_or_null(cfg->access_key, &oom);
        c->secret_key = dup_or_null(cfg->secret_key, &oom);
        c->session_token =
            cfg->session_token && *cfg->session_token ? dup_or_null(cfg->session_token, &oom)
                                                      : NULL;
        c->sse = cfg->sse && *cfg->sse ? dup_or_null(cfg->sse, &oom) : NULL;
        c->storage_class =
            cfg->storage_class && *cfg->storage_class ? dup_or_null(cfg->storage_class, &oom)
                                                      : NULL;
        c->ca_file = cfg->ca_file && *cfg->ca_file ? dup_or_null(cfg->ca_file, &oom) : NULL;
        oom |= !c->host || !c->path_prefix || !c->url_base || !c->bucket || !c->label ||
               !c->region;
        c->insecure = cfg->insecure_skip_verify;
        c->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 5000;
        c->low_speed_time_s = cfg->low_speed_time_s > 0 ? cfg->low_speed_time_s : 15;
        c->low_speed_limit = cfg->low_speed_limit > 0 ? cfg->low_speed_limit : 1024;
        c->deadline_ms = cfg->deadline_ms > 0 ? cfg->deadline_ms : 60000;
        c->mp_threshold = cfg->multipart_threshold ? cfg->multipart_threshold : 64 * MIB;
        c->mp_part_size = part;
        const char *mk = getenv("WALFS_S3_LIST_MAX_KEYS");
        c->list_max_keys = mk ? atoi(mk) : 0;
        if (c->list_max_keys < 0 || c->list_max_keys > 1000)
            c->list_max_keys = 0;
        const char *mp = getenv("WALFS_S3_LIST_MAX_PAGES");
        c->list_max_pages = mp ? atoi(mp) : 0;
        if (c->list_max_pages <= 0 || c->list_max_pages > S3_LIST_MAX_PAGES)
            c->list_max_pages = S3_LIST_MAX_PAGES;
        pthread_mutex_init(&c->lock, NULL);
    }
    free(scheme);
    free(hostport);
    if (oom) {
        s3_client_free(c);
        walfs_err_set(err, -ENOMEM, "s3://%s: out of memory", bucket);
        return NULL;
    }
    if (c->insecure)
        log_warn("s3: TLS certificate verification is disabled for %s", c->url_base);
    if (!cfg->path_style && strchr(bucket, '.') && strncmp(c->url_base, "https:", 6) == 0)
        log_warn("s3: bucket name %s contains '.', which breaks TLS with virtual-hosted "
                 "addressing; consider path-style",
                 bucket);
    return c;
}

void s3_client_free(s3_client *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n_idle; i++)
        curl_easy_cleanup(c->idle[i]);
    if (c->url_base) /* fully constructed: the mutex was initialized */
        pthread_mutex_destroy(&c->lock);
    if (c->secret_key)
        OPENSSL_cleanse(c->secret_key, strlen(c->secret_key));
    if (c->session_token)
        OPENSSL_cleanse(c->session_token, strlen(c->session_token));
    free(c->url_base);
    free(c->host);
    free(c->path_prefix);
    free(c->bucket);
    free(c->label);
    free(c->region);
    free(c->access_key);
    free(c->secret_key);
    free(c->session_token);
    free(c->sse);
    free(c->storage_class);
    free(c->ca_file);
    free(c);
}

const char *s3_client_bucket(const s3_client *c) { return c->label; }

/* ---- object operations ---- */

int s3_head(s3_client *c, const char *key, s3_object_info *out, walfs_err *err)
{
    s3_op op;
    int rc = op_init(&op, c, "HEAD", "HEAD", key, err);
    if (rc == 0)
        rc = perform(&op, c->deadline_ms, err);
    if (rc == 0 && out) {
        memset(out, 0, sizeof *out);
        out->size = op.content_length;
        out->last_modified = *op.last_modified ? curl_getdate(op.last_modified, NULL) : 0;
        if (out->last_modified < 0)
            out->last_modified = 0;
        snprintf(out->etag, sizeof out->etag, "%s", op.etag);
        memcpy(out->meta, op.meta, sizeof out->meta);
        out->n_meta = op.n_meta;
    }
    op_free(&op);
    return rc;
}

int s3_get(s3_client *c, const char *key, uint64_t offset, uint64_t length, s3_sink_fn sink,
           void *ctx, walfs_err *err)
{
    if (!sink)
        return walfs_err_set(err, -EINVAL, "GET: no sink given");
    if (length > 0 && offset + length < offset)
        return walfs_err_set(err, -EINVAL, "GET: range overflows");
    s3_op op;
    int rc = op_init(&op, c, "GET", "GET", key, err);
    if (rc == 0) {
        op.sink = sink;
        op.sink_ctx = ctx;
        op.want_start = offset;
        op.to_end = length == 0;
        op.want_end = length ? offset + length : 0;
        rc = perform(&op, c->deadline_ms, err);
    }
    op_free(&op);
    return rc;
}

int s3_delete(s3_client *c, const char *key, walfs_err *err)
{
    s3_op op;
    int rc = op_init(&op, c, "DELETE", "DELETE", key, err);
    if (rc == 0)
        rc = perform(&op, c->deadline_ms, err);
    op_free(&op);
    return rc;
}

/* Metadata goes into HTTP headers: reject anything that could split or
 * corrupt a header instead of letting it through. */
static int check_meta(const char *key, const s3_meta *meta, int n_meta, char names[][80],
                      walfs_err *err)
{
    if (n_meta < 0 || n_meta > S3_MAX_META)
        return walfs_err_set(err, -EINVAL, "PUT %s: %d metadata entries (at most %d)", key,
                             n_meta, S3_MAX_META);
    for (int i = 0; i < n_meta; i++) {
        const char *nm = meta[i].name;
        int ok = *nm != '\0';
        for (const char *p = nm; *p && ok; p++)
            ok = isalnum((unsigned char)*p) || *p == '-' || *p == '_';
        for (const char *p = meta[i].value; *p && ok; p++)
            ok = (unsigned char)*p >= 0x20 && *p != 0x7f;
        if (!ok)
            return walfs_err_set(err, -EINVAL,
                                 "PUT %s: metadata '%.63s' has a name or value that cannot be "
                                 "sent as an HTTP header",
                                 key, nm);
        snprintf(names[i], 80, "x-amz-meta-%s", nm);
        for (char *p = names[i]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    }
    return 0;
}

static void add_object_headers(s3_op *op, const s3_meta *meta, int n_meta, char names[][80])
{
    /* The type boto (WAL-E) derives from the name: sentinels are JSON,
     * extended_version.txt is text, everything else bytes. */
    size_t n = strlen(op->object);
    const char *type = "application/octet-stream";
    if (n > 5 && strcmp(op->object + n - 5, ".json") == 0)
        type = "application/json";
    else if (n > 4 && strcmp(op->object + n - 4, ".txt") == 0)
        type = "text/plain";
    op_header(op, "content-type", type);
    if (op->c->sse)
        op_header(op, "x-amz-server-side-encryption", op->c->sse);
    if (op->c->storage_class)
        op_header(op, "x-amz-storage-class", op->c->storage_class);
    for (int i = 0; i < n_meta; i++)
        op_header(op, names[i], meta[i].value);
}

static void content_md5(const void *body, size_t len, unsigned char bin[16], char b64[32])
{
    md5_bin(body ? body : "", len, bin);
    EVP_EncodeBlock((unsigned char *)b64, bin, 16);
}

static int put_multipart(s3_client *c, const char *key, const void *body, size_t len,
                         const s3_meta *meta, int n_meta, walfs_err *err);

int s3_put(s3_client *c, const char *key, const void *body, size_t len, const s3_meta *meta,
           int n_meta, walfs_err *err)
{
    return s3_put_hashed(c, key, body, len, NULL, meta, n_meta, err);
}

int s3_put_hashed(s3_client *c, const char *key, const void *body, size_t len,
                  const char *sha256_hex, const s3_meta *meta, int n_meta, walfs_err *err)
{
    if (!meta)
        n_meta = 0;
    if (len > c->mp_threshold)
        return put_multipart(c, key, body, len, meta, n_meta, err);
    char names[S3_MAX_META][80];
    s3_op op;
    int rc = op_init(&op, c, "PUT", "PUT", key, err);
    if (rc == 0)
        rc = check_meta(op.object, meta, n_meta, names, err);
    if (rc == 0) {
        /* No Content-MD5: the signed x-amz-content-sha256 already makes the
         * server reject a body that differs from what was hashed, and MD5
         * would cost more CPU than the SHA-256 on every segment. */
        if (sha256_hex && strlen(sha256_hex) == 64) {
            /* Hashed by the caller as the bytes were produced. */
            op.body = body;
            op.body_len = len;
            memcpy(op.body_sha, sha256_hex, sizeof op.body_sha);
        } else {
            op_body(&op, body, len);
        }
        add_object_headers(&op, meta, n_meta, names);
        rc = perform(&op, c->deadline_ms, err);
    }
    op_free(&op);
    return rc;
}

/* ---- listing ---- */

/* Skipped entries logged per listing; the rest are only counted. */
#define BAD_LOG_MAX 5

struct s3_lister {
    s3_client *c;
    char *prefix, *delim, *eprefix, *edelim;
    char *token;    /* NextContinuationToken of the last page; NULL before the first */
    char *last;     /* the greatest entry so far: every page must go past it */
    int pages, done;
    size_t bad;     /* entries skipped as impossible */
};

/* A key for a log line: control characters escaped, so a key cannot
 * forge a line, and long keys cut. */
static void printable_key(const char *key, char *out, size_t outlen)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p && o + 8 < outlen; p++) {
        if (*p < 0x20 || *p == 0x7f || *p == '\\')
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *p);
        else
            out[o++] = (char)*p;
    }
    if (o + 8 >= outlen && o + 4 <= outlen)
        o += (size_t)snprintf(out + o, outlen - o, "...");
    out[o] = '\0';
}

static void lister_bad(void *ctx, const char *key, const char *why)
{
    s3_lister *l = ctx;
    if (++l->bad > BAD_LOG_MAX)
        return;
    char shown[256];
    printable_key(key, shown, sizeof shown);
    log_warn("list %s/%s*: skipped the entry '%s': %s; the rest of the listing is used%s",
             l->c->label, l->prefix, shown, why,
             l->bad == BAD_LOG_MAX ? " (further skipped entries are only counted)" : "");
}

typedef struct page_ctx {
    s3_lister *l;
    s3_list_fn fn;
    void *ctx;
    char *max;          /* the greatest entry of this page */
    size_t fresh, stale;
    int oom;
} page_ctx;

static void page_bad(void *ctx, const char *key, const char *why)
{
    lister_bad(((page_ctx *)ctx)->l, key, why);
}

/* Anything in a listing is the server's word: an entry must lie under the
 * prefix asked for, one level down when listing by delimiter, and after
 * every entry of the earlier pages (S3 lists in key order), which is what
 * makes a listing end. */
static int page_entry(void *ctx, const s3_list_entry *e)
{
    page_ctx *p = ctx;
    s3_lister *l = p->l;
    size_t pl = strlen(l->prefix);
    if (strncmp(e->key, l->prefix, pl) != 0) {
        lister_bad(l, e->key, "it is not under the prefix that was listed");
        return 0;
    }
    if (*l->delim) {
        const char *d = strstr(e->key + pl, l->delim);
        if (!e->is_prefix && d) {
            lister_bad(l, e->key, "a key past the delimiter, which a listing by delimiter "
                                  "gives as a common prefix");
            return 0;
        }
        if (e->is_prefix && (!d || d[strlen(l->delim)] != '\0')) {
            lister_bad(l, e->key, "a common prefix that does not end at the first delimiter");
            return 0;
        }
    }
    if (l->last && strcmp(e->key, l->last) <= 0) {
        p->stale++;
        return 0;
    }
    p->fresh++;
    if (!p->max || strcmp(e->key, p->max) > 0) {
        free(p->max);
        p->max = strdup(e->key);
        if (!p->max) {
            p->oom = 1;
            return -ENOMEM;
        }
    }
    return p->fn(p->ctx, e);
}

int s3_lister_new(s3_client *c, const char *prefix, const char *delimiter, s3_lister **out,
                  walfs_err *err)
{
    *out = NULL;
    s3_lister *l = calloc(1, sizeof *l);
    if (l) {
        l->c = c;
        l->prefix = strdup(prefix ? prefix : "");
        l->delim = strdup(delimiter ? delimiter : "");
        l->eprefix = sigv4_uri_encode(prefix ? prefix : "", 0);
        l->edelim = sigv4_uri_encode(delimiter ? delimiter : "", 0);
    }
    if (!l || !l->prefix || !l->delim || !l->eprefix || !l->edelim) {
        s3_lister_free(l);
        return walfs_err_set(err, -ENOMEM, "list %s: out of memory", c->label);
    }
    *out = l;
    return 0;
}

void s3_lister_free(s3_lister *l)
{
    if (!l)
        return;
    if (l->bad > BAD_LOG_MAX)
        log_warn("list %s/%s*: %zu impossible entries were skipped in all", l->c->label,
                 l->prefix, l->bad);
    free(l->prefix);
    free(l->delim);
    free(l->eprefix);
    free(l->edelim);
    free(l->token);
    free(l->last);
    free(l);
}

int s3_lister_next(s3_lister *l, s3_list_fn fn, void *ctx, int *done, walfs_err *err)
{
    s3_client *c = l->c;
    *done = l->done;
    if (l->done)
        return 0;
    if (l->pages >= c->list_max_pages)
        return walfs_err_set(err, -EIO,
                             "list %s/%s*: the server has sent %d pages and says there are "
                             "more; walfs stops a listing at %d pages (far past any real "
                             "archive), so it would not end; is the endpoint a compliant S3 "
                             "server?",
                             c->label, l->prefix, l->pages, c->list_max_pages);
    char *etoken = l->token ? sigv4_uri_encode(l->token, 0) : NULL;
    int oom = l->token && !etoken;
    char maxkeys[16] = "";
    if (c->list_max_keys > 0)
        snprintf(maxkeys, sizeof maxkeys, "%d", c->list_max_keys);
    /* Parameters in sorted order, so the URL is already the canonical form. */
    char *query = xasprintf("%s%s%s%s%s%slist-type=2%s%s&prefix=%s",
                            etoken ? "continuation-token=" : "", etoken ? etoken : "",
                            etoken ? "&" : "", *l->edelim ? "delimiter=" : "", l->edelim,
                            *l->edelim ? "&" : "", *maxkeys ? "&max-keys=" : "", maxkeys,
                            l->eprefix);
    free(etoken);
    if (!query || oom) {
        free(query);
        return walfs_err_set(err, -ENOMEM, "list %s: out of memory", c->label);
    }
    s3_op op;
    int rc = op_init(&op, c, "list", "GET", NULL, err);
    if (rc == 0) {
        snprintf(op.object, sizeof op.object, "%s/%s*", c->label, l->prefix);
        op.query = query;
        op.body_limit = LIST_BODY_LIMIT;
        rc = perform(&op, c->deadline_ms, err);
    }
    char *token = NULL;
    page_ctx p = {.l = l, .fn = fn, .ctx = ctx};
    if (rc == 0) {
        int fn_rc = 0;
        int x = op.resp_truncated
                    ? -1
                    : s3_xml_list(op.resp.data, op.resp.len, page_entry, page_bad, &p, &token, &fn_rc);
        if (p.oom)
            rc = walfs_err_set(err, -ENOMEM, "list %s: out of memory", op.object);
        else if (x == -1)
            rc = walfs_err_set(err, -EIO,
                               "list %s: the server sent a malformed or oversized "
                               "ListObjectsV2 response; is the endpoint an S3 server?",
                               op.object);
        else if (x == -2)
            rc = walfs_err_set(err, -EIO,
                               "list %s: the server said page %d is not the last but gave no "
                               "continuation token, so the listing could never be finished; "
                               "is the endpoint a compliant S3 server?",
                               op.object, l->pages + 1);
        else if (x == 1)
            rc = fn_rc;
    }
    if (rc == 0 && token && l->token && strcmp(token, l->token) == 0)
        rc = walfs_err_set(err, -EIO,
                           "list %s: the server answered page %d with the continuation token "
                           "it was asked for, so the listing would never end; is the endpoint "
                           "a compliant S3 server?",
                           op.object, l->pages + 1);
    else if (rc == 0 && token && p.fresh == 0)
        rc = walfs_err_set(err, -EIO,
                           "list %s: page %d is not the last but holds no entry after the "
                           "previous pages' (%zu repeated, %zu skipped so far), so the listing "
                           "would never end; is the endpoint a compliant S3 server?",
                           op.object, l->pages + 1, p.stale, l->bad);
    else if (rc == 0 && p.stale)
        log_warn("list %s: page %d repeated %zu entries of the earlier pages; skipped",
                 op.object, l->pages + 1, p.stale);
    if (rc == 0) {
        l->pages++;
        if (p.max) {
            free(l->last);
            l->last = p.max;
            p.max = NULL;
        }
        free(l->token);
        l->token = token;
        token = NULL;
        l->done = *done = l->token == NULL;
    }
    free(p.max);
    free(token);
    op_free(&op);
    free(query);
    return rc;
}

int s3_list(s3_client *c, const char *prefix, const char *delimiter, s3_list_fn fn, void *ctx,
            walfs_err *err)
{
    s3_lister *l;
    int rc = s3_lister_new(c, prefix, delimiter, &l, err);
    if (rc)
        return rc;
    /* One deadline for the whole listing, not one per page. */
    uint64_t outer = deadline_scope_begin((uint64_t)c->deadline_ms);
    int done = 0;
    while (rc == 0 && !done)
        rc = s3_lister_next(l, fn, ctx, &done, err);
    deadline_scope_end(outer);
    if (rc == -ETIMEDOUT && l->pages > 0 && err) {
        /* The request that found no time left has nothing to add. */
        char last[sizeof err->msg];
        snprintf(last, sizeof last, "%s", strstr(err->msg, "no time was left") ? "" : err->msg);
        walfs_err_set(err, -ETIMEDOUT,
                      "list %s/%s*: the listing was not finished within the deadline (%.1f s, "
                      "%d pages read and more to come): the listing is too long or the server "
                      "too slow%s%s",
                      c->label, prefix ? prefix : "", (double)c->deadline_ms / 1000.0, l->pages,
                      *last ? "; " : "", last);
    }
    s3_lister_free(l);
    return rc;
}

/* ---- multipart ---- */

typedef struct mp_part {
    int number;
    size_t size;
    unsigned char md5[16];
    char etag[128];
} mp_part;

struct s3_multipart {
    s3_client *c;
    char *key;
    char *upload_id;
    char *upload_id_enc;
    pthread_mutex_t lock; /* parts may be uploaded from several threads */
    mp_part *parts;
    size_t n_parts, cap_parts;
};

int s3_multipart_begin(s3_client *c, const char *key, const s3_meta *meta, int n_meta,
                       s3_multipart **out, walfs_err *err)
{
    *out = NULL;
    if (!meta)
        n_meta = 0;
    char names[S3_MAX_META][80];
    s3_op op;
    int rc = op_init(&op, c, "multipart create", "POST", key, err);
    if (rc == 0)
        rc = check_meta(op.object, meta, n_meta, names, err);
    if (rc == 0) {
        op.query = "uploads";
        op_body(&op, NULL, 0);
        add_object_headers(&op, meta, n_meta, names);
        rc = perform(&op, c->deadline_ms, err);
    }
    char *id = NULL;
    if (rc == 0 && s3_xml_upload_id(op.resp.data, op.resp.len, &id) != 0)
        rc = walfs_err_set(err, -EIO,
                           "multipart create %s: the server's answer has no UploadId "
                           "(malformed response)",
                           op.object);
    if (rc == 0) {
        s3_multipart *mp = calloc(1, sizeof *mp);
        if (mp) {
            mp->c = c;
            mp->key = strdup(key);
            mp->upload_id = id;
            mp->upload_id_enc = sigv4_uri_encode(id, 0);
            id = NULL;
            pthread_mutex_init(&mp->lock, NULL);
        }
        if (!mp || !mp->key || !mp->upload_id_enc) {
            /* Nothing can refer to the upload later, so abort it now. */
            if (mp) {
                walfs_err e2;
                s3_multipart_abort(mp, &e2);
                s3_multipart_free(mp);
            }
            rc = walfs_err_set(err, -ENOMEM, "multipart create %s: out of memory", op.object);
        } else {
            *out = mp;
        }
    }
    free(id);
    op_free(&op);
    return rc;
}

int s3_multipart_upload_part(s3_multipart *mp, int part_number, const void *body, size_t len,
                             walfs_err *err)
{
    s3_client *c = mp->c;
    if (part_number < 1 || part_number > 10000)
        return walfs_err_set(err, -EINVAL, "upload part %s/%s: part number %d outside 1..10000",
                             c->label, mp->key, part_number);
    char name[48];
    snprintf(name, sizeof name, "upload part %d of", part_number);
    s3_op op;
    int rc = op_init(&op, c, name, "PUT", mp->key, err);
    char *query = xasprintf("partNumber=%d&uploadId=%s", part_number, mp->upload_id_enc);
    if (rc == 0 && !query)
        rc = walfs_err_set(err, -ENOMEM, "upload part %s: out of memory", op.object);
    mp_part p = {part_number, len, {0}, ""};
    if (rc == 0) {
        char md5[32];
        content_md5(body, len, p.md5, md5);
        op.query = query;
        op_body(&op, body, len);
        op_header(&op, "content-md5", md5);
        rc = perform(&op, c->deadline_ms, err);
        if (rc == 0 && !*op.etag)
            rc = walfs_err_set(err, -EIO, "%s %s: the server returned no ETag", name,
                               op.object);
        if (rc == 0)
            snprintf(p.etag, sizeof p.etag, "%s", op.etag);
    }
    if (rc == 0) {
        pthread_mutex_lock(&mp->lock);
        size_t i;
        for (i = 0; i < mp->n_parts && mp->parts[i].number != part_number; i++) {
        }
        if (i == mp->n_parts && mp->n_parts == mp->cap_parts) {
            size_t ncap = mp->cap_parts ? mp->cap_parts * 2 : 16;
            mp_part *np = realloc(mp->parts, ncap * sizeof *np);
            if (np) {
                mp->parts = np;
                mp->cap_parts = ncap;
            }
        }
        if (i < mp->cap_parts) {
            mp->parts[i] = p;
            if (i == mp->n_parts)
                mp->n_parts++;
        } else {
            rc = walfs_err_set(err, -ENOMEM, "%s %s: out of memory", name, op.object);
        }
        pthread_mutex_unlock(&mp->lock);
    }
    free(query);
    op_free(&op);
    return rc;
}

static int part_cmp(const void *a, const void *b)
{
    const mp_part *x = a, *y = b;
    return (x->number > y->number) - (x->number < y->number);
}

/* The ETag S3 gives a multipart object: md5 of the parts' md5s, "-N". */
static void multipart_etag(const mp_part *parts, size_t n, char out[64])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[16];
    unsigned int mdlen = 16;
    out[0] = '\0';
    if (!ctx)
        return;
    EVP_DigestInit_ex(ctx, EVP_md5(), NULL);
    for (size_t i = 0; i < n; i++)
        EVP_DigestUpdate(ctx, parts[i].md5, 16);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    to_hex(md, 16, out);
    snprintf(out + 32, 32, "-%zu", n);
}

/* After completing, check what the bucket now holds: a complete that
 * "succeeded" must leave an object of the size we uploaded. */
static int verify_completed(s3_multipart *mp, uint64_t total, const char *want_etag,
                            walfs_err *err)
{
    s3_object_info info;
    int rc = s3_head(mp->c, mp->key, &info, err);
    if (rc != 0)
        return walfs_err_prefix(err, "checking the completed multipart upload: ");
    if (info.size != total)
        return walfs_err_set(err, -EIO,
                             "multipart complete %s/%s: the stored object has %" PRIu64
                             " bytes, %" PRIu64 " were uploaded",
                             mp->c->label, mp->key, info.size, total);
    /* Only a plain store's ETag is the md5 construction; encrypted ones differ. */
    if (!mp->c->sse && strchr(info.etag, '-') && strlen(info.etag) > 33 &&
        strcmp(info.etag, want_etag) != 0)
        return walfs_err_set(err, -EIO,
                             "multipart complete %s/%s: the stored object's ETag %s is not the "
                             "one of the uploaded parts (%s)",
                             mp->c->label, mp->key, info.etag, want_etag);
    return 0;
}

int s3_multipart_complete(s3_multipart *mp, walfs_err *err)
{
    s3_client *c = mp->c;
    pthread_mutex_lock(&mp->lock);
    qsort(mp->parts, mp->n_parts, sizeof *mp->parts, part_cmp);
    size_t n = mp->n_parts;
    uint64_t total = 0;
    size_t cap = 64 + n * 200;
    char *xml = malloc(cap);
    size_t o = 0;
    if (xml) {
        o += (size_t)snprintf(xml + o, cap - o, "<CompleteMultipartUpload>");
        for (size_t i = 0; i < n; i++) {
            o += (size_t)snprintf(xml + o, cap - o,
                                  "<Part><PartNumber>%d</PartNumber><ETag>\"%s\"</ETag></Part>",
                                  mp->parts[i].number, mp->parts[i].etag);
            total += mp->parts[i].size;
        }
        o += (size_t)snprintf(xml + o, cap - o, "</CompleteMultipartUpload>");
    }
    char want_etag[64];
    multipart_etag(mp->parts, n, want_etag);
    pthread_mutex_unlock(&mp->lock);
    if (!xml)
        return walfs_err_set(err, -ENOMEM, "multipart complete %s/%s: out of memory", c->label,
                             mp->key);
    if (n == 0) {
        free(xml);
        return walfs_err_set(err, -EINVAL, "multipart complete %s/%s: no parts were uploaded",
                             c->label, mp->key);
    }

    s3_op op;
    char *query = xasprintf("uploadId=%s", mp->upload_id_enc);
    int rc = op_init(&op, c, "multipart complete", "POST", mp->key, err);
    if (rc == 0 && !query)
        rc = walfs_err_set(err, -ENOMEM, "multipart complete %s: out of memory", op.object);
    if (rc == 0) {
        op.query = query;
        op.error_in_200 = 1;
        op_body(&op, xml, o);
        op_header(&op, "content-type", "application/xml");
        rc = perform(&op, c->deadline_ms, err);
        if (rc == 0) {
            char code[64], msg[256];
            if (s3_xml_error(op.resp.data, op.resp.len, code, sizeof code, msg, sizeof msg) < 0)
                rc = walfs_err_set(err, -EIO,
                                   "multipart complete %s: the server's answer is not valid XML; "
                                   "the upload may not be complete",
                                   op.object);
        } else if (strcmp(op.err_code, "NoSuchUpload") == 0 && op.attempts > 1) {
            /* An earlier attempt may have completed it and only the answer
             * was lost: the stored object tells. */
            walfs_err e2;
            if (verify_completed(mp, total, want_etag, &e2) == 0) {
                walfs_err_clear(err);
                rc = 0;
            }
        }
    }
    if (rc == 0)
        rc = verify_completed(mp, total, want_etag, err);
    free(query);
    free(xml);
    op_free(&op);
    return rc;
}

int s3_multipart_abort(s3_multipart *mp, walfs_err *err)
{
    s3_op op;
    char *query = xasprintf("uploadId=%s", mp->upload_id_enc);
    int rc = op_init(&op, mp->c, "multipart abort", "DELETE", mp->key, err);
    if (rc == 0 && !query)
        rc = walfs_err_set(err, -ENOMEM, "multipart abort %s: out of memory", op.object);
    if (rc == 0) {
        op.query = query;
        rc = perform(&op, mp->c->deadline_ms, err);
        if (rc == -ENOENT || strcmp(op.err_code, "NoSuchUpload") == 0) {
            walfs_err_clear(err); /* already gone is what we wanted */
            rc = 0;
        }
    }
    free(query);
    op_free(&op);
    return rc;
}

void s3_multipart_free(s3_multipart *mp)
{
    if (!mp)
        return;
    pthread_mutex_destroy(&mp->lock);
    free(mp->key);
    free(mp->upload_id);
    free(mp->upload_id_enc);
    free(mp->parts);
    free(mp);
}

typedef struct pending_upload {
    char *key;
    char *id;
} pending_upload;

typedef struct pending_list {
    pending_upload *v;
    size_t n, cap;
    int oom;
} pending_list;

static void collect_upload(void *ctx, const char *key, const char *upload_id)
{
    pending_list *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        pending_upload *grown = realloc(l->v, cap * sizeof *grown);
        if (!grown) {
            l->oom = 1;
            return;
        }
        l->v = grown;
        l->cap = cap;
    }
    l->v[l->n].key = strdup(key);
    l->v[l->n].id = strdup(upload_id);
    if (!l->v[l->n].key || !l->v[l->n].id) {
        free(l->v[l->n].key);
        free(l->v[l->n].id);
        l->oom = 1;
        return;
    }
    l->n++;
}

int s3_abort_multipart_uploads(s3_client *c, const char *prefix, walfs_err *err)
{
    char *eprefix = sigv4_uri_encode(prefix, 0);
    char *query = eprefix ? xasprintf("prefix=%s&uploads=", eprefix) : NULL;
    free(eprefix);
    if (!query)
        return walfs_err_set(err, -ENOMEM, "list uploads %s: out of memory", c->label);
    int rc = 0;
    /* Aborted uploads leave the listing, so listing again until it is empty
     * pages through without markers; bounded in case the server keeps some. */
    for (int round = 0; round < 50 && rc == 0; round++) {
        s3_op op;
        pending_list l = {0};
        rc = op_init(&op, c, "list uploads", "GET", NULL, err);
        if (rc == 0) {
            snprintf(op.object, sizeof op.object, "%s/%s*", c->label, prefix);
            op.query = query;
            op.body_limit = LIST_BODY_LIMIT;
            rc = perform(&op, c->deadline_ms, err);
        }
        int found = 0;
        if (rc == 0) {
            found = op.resp_truncated ? -1 : s3_xml_uploads(op.resp.data, op.resp.len, collect_upload, &l);
            if (found < 0 || l.oom)
                rc = walfs_err_set(err, -EIO, "list uploads %s: malformed ListMultipartUploads "
                                   "response", op.object);
        }
        op_free(&op);
        for (size_t i = 0; i < l.n; i++) {
            s3_multipart mp = {.c = c, .key = l.v[i].key, .upload_id = l.v[i].id};
            mp.upload_id_enc = sigv4_uri_encode(l.v[i].id, 0);
            walfs_err aerr = {0};
            if (rc == 0 && mp.upload_id_enc && s3_multipart_abort(&mp, &aerr) != 0)
                rc = walfs_err_set(err, aerr.code, "%s", aerr.msg);
            free(mp.upload_id_enc);
            free(l.v[i].key);
            free(l.v[i].id);
        }
        free(l.v);
        if (found <= 0)
            break;
    }
    free(query);
    return rc;
}

static int put_multipart(s3_client *c, const char *key, const void *body, size_t len,
                         const s3_meta *meta, int n_meta, walfs_err *err)
{
    size_t part = c->mp_part_size;
    while (len / part >= 10000)
        part *= 2; /* S3 allows at most 10000 parts */
    s3_multipart *mp = NULL;
    int rc = s3_multipart_begin(c, key, meta, n_meta, &mp, err);
    if (rc != 0)
        return rc;
    int number = 1;
    for (size_t off = 0; off < len && rc == 0; off += part, number++) {
        size_t n = len - off < part ? len - off : part;
        rc = s3_multipart_upload_part(mp, number, (const char *)body + off, n, err);
    }
    if (rc == 0)
        rc = s3_multipart_complete(mp, err);
    if (rc != 0) {
        walfs_err e2;
        if (s3_multipart_abort(mp, &e2) != 0)
            log_warn("s3: %s; the incomplete upload could not be aborted: %s", err ? err->msg : "",
                     e2.msg);
    }
    s3_multipart_free(mp);
    return rc;
}

/* ---- WAL-E endpoint syntax ---- */

int s3_parse_wale_endpoint(const char *spec, char **endpoint_out, int *path_style, walfs_err *err)
{
    *endpoint_out = NULL;
    const char *plus = spec ? strchr(spec, '+') : NULL;
    const char *sep = spec ? strstr(spec, "://") : NULL;
    if (!plus || !sep || plus > sep)
        return walfs_err_set(err, -EINVAL,
                             "WALE_S3_ENDPOINT '%.200s' is not valid: expected "
                             "scheme+convention://host[:port], e.g. http+path://127.0.0.1:7480 or "
                             "https+virtualhost://s3.example.com",
                             spec ? spec : "");
    size_t sl = (size_t)(plus - spec);
    const char *conv = plus + 1;
    size_t cl = (size_t)(sep - conv);
    int ps;
    if (cl == 4 && strncasecmp(conv, "path", 4) == 0)
        ps = 1;
    else if ((cl == 11 && strncasecmp(conv, "virtualhost", 11) == 0) ||
             (cl == 9 && strncasecmp(conv, "subdomain", 9) == 0))
        ps = 0;
    else
        return walfs_err_set(err, -EINVAL,
                             "WALE_S3_ENDPOINT '%.200s': calling convention must be path, "
                             "virtualhost or subdomain",
                             spec);
    char *ep = xasprintf("%.*s%s", (int)sl, spec, sep);
    char *scheme = NULL, *hostport = NULL;
    if (!ep || split_endpoint(ep, &scheme, &hostport) != 0) {
        free(ep);
        return walfs_err_set(err, -EINVAL,
                             "WALE_S3_ENDPOINT '%.200s' is not valid: the scheme must be http "
                             "or https, followed by a host and optional port",
                             spec);
    }
    free(ep);
    *endpoint_out = xasprintf("%s://%s", scheme, hostport);
    free(scheme);
    free(hostport);
    if (!*endpoint_out)
        return walfs_err_set(err, -ENOMEM, "WALE_S3_ENDPOINT: out of memory");
    *path_style = ps;
    return 0;
}
