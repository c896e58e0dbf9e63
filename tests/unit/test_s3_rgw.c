/* The S3 client against a real Ceph RGW (which verifies every signature and
 * body hash).  Needs RGW_ENDPOINT, RGW_ACCESS_KEY, RGW_SECRET_KEY (exported by
 * tests/lib/rgw.sh; tests/t_unit_rgw.sh starts one); exits 77 without them.
 * A small TCP proxy between client and RGW injects the failures a real
 * server will not produce on demand: a connection cut mid-body, a 503. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "common/hex.h"
#include "s3/s3_client.h"
#include "s3/sigv4.h"
#include "tests/unit/tap.h"
#include "common/buf.h"

static const char *endpoint, *access_key, *secret_key;
static char bucket[64];
static int rgw_port;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static s3_config base_config(void)
{
    s3_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.endpoint = endpoint;
    cfg.path_style = 1;
    cfg.access_key = access_key;
    cfg.secret_key = secret_key;
    cfg.deadline_ms = 20000;
    return cfg;
}

/* ---- bucket creation, signed here independently of the client ---- */

static long raw_put_bucket(const char *name)
{
    char host[256], path[128], date[17], url[512], hdr[4][1200], auth[1024];
    const char *ep_host = strstr(endpoint, "://") + 3;
    snprintf(host, sizeof host, "%s", ep_host);
    snprintf(path, sizeof path, "/%s", name);
    snprintf(url, sizeof url, "%s%s", endpoint, path);
    sigv4_amz_date(time(NULL), date);
    const char *empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    sigv4_header h[] = {{"host", host}, {"x-amz-date", date}, {"x-amz-content-sha256", empty}};
    sigv4_request req = {"PUT", path, NULL, h, 3, empty};
    sigv4_credentials cred = {access_key, secret_key, NULL};
    if (sigv4_authorization(&req, &cred, date, "us-east-1", "s3", auth, sizeof auth, NULL, NULL))
        return -1;
    snprintf(hdr[0], sizeof hdr[0], "Host: %s", host);
    snprintf(hdr[1], sizeof hdr[1], "x-amz-date: %s", date);
    snprintf(hdr[2], sizeof hdr[2], "x-amz-content-sha256: %s", empty);
    snprintf(hdr[3], sizeof hdr[3], "Authorization: %s", auth);
    struct curl_slist *l = NULL;
    for (int i = 0; i < 4; i++)
        l = curl_slist_append(l, hdr[i]);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)0);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, fread);
    FILE *devnull = fopen("/dev/null", "r");
    curl_easy_setopt(c, CURLOPT_READDATA, devnull);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, l);
    FILE *sink = fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
    long status = -1;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(l);
    fclose(devnull);
    fclose(sink);
    return status;
}

/* ---- sinks and list callbacks ---- */

typedef struct listing {
    int n_keys, n_prefixes, sorted;
    char last[256];
    char names[64][128];
    int stop_after;
} listing;

static int list_cb(void *ctx, const s3_list_entry *e)
{
    listing *l = ctx;
    if (!e->is_prefix) {
        if (l->n_keys && strcmp(l->last, e->key) >= 0)
            l->sorted = 0;
        snprintf(l->last, sizeof l->last, "%s", e->key);
        l->n_keys++;
    } else {
        l->n_prefixes++;
    }
    int i = l->n_keys + l->n_prefixes - 1;
    if (i < 64)
        snprintf(l->names[i], sizeof l->names[i], "%s%s", e->is_prefix ? "P:" : "K:", e->key);
    if (l->stop_after && l->n_keys + l->n_prefixes >= l->stop_after)
        return 42;
    return 0;
}

static int has_name(const listing *l, const char *name)
{
    for (int i = 0; i < l->n_keys + l->n_prefixes && i < 64; i++)
        if (strcmp(l->names[i], name) == 0)
            return 1;
    return 0;
}

static void md5_hex(const void *d, size_t n, char out[33])
{
    unsigned char md[16];
    unsigned int l = 16;
    EVP_Digest(d, n, md, &l, EVP_md5(), NULL);
    hex_encode(md, 16, out);
}

/* ---- fault-injecting proxy ---- */

typedef struct proxy {
    int lfd, port;
    pthread_t th;
    volatile int stop;
    int conns;            /* connections accepted so far */
    int fail_503;         /* answer this many first connections with 503 SlowDown */
    int cut_conns;        /* cut this many first forwarded connections ... */
    long cut_after;       /* ... after this many response bytes */
    int stall_ms;         /* ... then send nothing this long (until the client hangs up) */
    const char **canned;  /* when set: answer connection i with canned[min(i, n_canned-1)] */
    int n_canned;
} proxy;

/* Reads one request (headers and Content-Length body) so that closing
 * afterwards does not reset the connection under the client. */
static void drain_request(int cfd)
{
    char req[16384];
    size_t got = 0;
    char *end = NULL;
    while (got < sizeof req - 1 && !end) {
        ssize_t r = read(cfd, req + got, sizeof req - 1 - got);
        if (r <= 0)
            return;
        got += (size_t)r;
        req[got] = '\0';
        end = strstr(req, "\r\n\r\n");
    }
    if (!end)
        return;
    long body = 0;
    for (char *h = req; h < end; h = strstr(h, "\r\n") + 2)
        if (strncasecmp(h, "content-length:", 15) == 0)
            body = atol(h + 15);
    long have = (long)(got - (size_t)(end + 4 - req));
    while (have < body) {
        ssize_t r = read(cfd, req, sizeof req);
        if (r <= 0)
            return;
        have += r;
    }
}

static void proxy_serve(proxy *p, int cfd, int index)
{
    if (p->canned) {
        drain_request(cfd);
        const char *r = p->canned[index < p->n_canned ? index : p->n_canned - 1];
        if (write(cfd, r, strlen(r)) < 0) {
        }
        return;
    }
    if (index < p->fail_503) {
        char req[8192];
        size_t got = 0;
        while (got < sizeof req - 1) {
            ssize_t r = read(cfd, req + got, sizeof req - 1 - got);
            if (r <= 0)
                break;
            got += (size_t)r;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        const char *body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code>"
                           "<Message>Please reduce your request rate.</Message></Error>";
        char resp[512];
        int n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                         strlen(body), body);
        if (write(cfd, resp, (size_t)n) < 0) {
        }
        return;
    }
    int ufd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rgw_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(ufd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(ufd);
        return;
    }
    long down = 0;
    int cut = index - p->fail_503 < p->cut_conns;
    char data[16384];
    for (;;) {
        struct pollfd pf[2] = {{cfd, POLLIN, 0}, {ufd, POLLIN, 0}};
        if (poll(pf, 2, 200) < 0 || p->stop)
            break;
        if (pf[0].revents) {
            ssize_t r = read(cfd, data, sizeof data);
            if (r <= 0 || write(ufd, data, (size_t)r) != r)
                break;
        }
        if (pf[1].revents) {
            ssize_t r = read(ufd, data, sizeof data);
            if (r <= 0)
                break;
            if (cut && down + r > p->cut_after)
                r = p->cut_after - down;
            if (r > 0 && write(cfd, data, (size_t)r) != r)
                break;
            down += r;
            if (cut && down >= p->cut_after) {
                /* A stalled body: the connection stays open, silent. */
                for (int waited = 0; waited < p->stall_ms && !p->stop; waited += 100) {
                    struct pollfd hup = {cfd, POLLIN, 0};
                    if (poll(&hup, 1, 100) > 0 && read(cfd, data, sizeof data) <= 0)
                        break;
                }
                break;
            }
        }
    }
    close(ufd);
}

static void *proxy_main(void *arg)
{
    proxy *p = arg;
    while (!p->stop) {
        struct pollfd pf = {p->lfd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        int cfd = accept(p->lfd, NULL, NULL);
        if (cfd < 0)
            continue;
        proxy_serve(p, cfd, p->conns++);
        close(cfd);
    }
    return NULL;
}

static int proxy_start(proxy *p)
{
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(p->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(p->lfd, 16) != 0 ||
        getsockname(p->lfd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    p->port = ntohs(a.sin_port);
    return pthread_create(&p->th, NULL, proxy_main, p);
}

static void proxy_stop(proxy *p)
{
    p->stop = 1;
    pthread_join(p->th, NULL);
    close(p->lfd);
}

/* ---- tests ---- */

static void test_round_trip(s3_client *c)
{
    walfs_err err = {0};
    const char *body = "hello, walfs: 0123456789abcdefghijklmnopqrstuvwxyz\n";
    size_t len = strlen(body);
    s3_meta meta[2] = {{"walfs-test", "round trip"}, {"Mixed-Case", "v2"}};
    int rc = s3_put(c, "rt/hello world+$.txt", body, len, meta, 2, &err);
    CHECK(rc == 0, "put small object with metadata and a key needing encoding (%s)", err.msg);

    s3_object_info info;
    rc = s3_head(c, "rt/hello world+$.txt", &info, &err);
    char md5[33];
    md5_hex(body, len, md5);
    CHECK(rc == 0 && info.size == len, "head: size %llu (%s)", (unsigned long long)info.size,
          err.msg);
    CHECK(rc == 0 && strcmp(info.etag, md5) == 0, "head: ETag is the body md5 without quotes (%s)",
          info.etag);
    CHECK(rc == 0 && info.last_modified > time(NULL) - 600 &&
              info.last_modified < time(NULL) + 600,
          "head: Last-Modified parsed");
    int found = 0;
    for (int i = 0; i < info.n_meta; i++) {
        if (strcmp(info.meta[i].name, "walfs-test") == 0 &&
            strcmp(info.meta[i].value, "round trip") == 0)
            found |= 1;
        if (strcmp(info.meta[i].name, "mixed-case") == 0 && strcmp(info.meta[i].value, "v2") == 0)
            found |= 2;
    }
    CHECK(found == 3, "head: metadata round trip, names lower-cased (%d entries)", info.n_meta);

    walfs_buf b = {0};
    rc = s3_get(c, "rt/hello world+$.txt", 0, 0, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == len && memcmp(b.bytes, body, len) == 0, "get whole object");
    buf_free(&b);

    rc = s3_get(c, "rt/hello world+$.txt", 7, 5, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == 5 && memcmp(b.bytes, "walfs", 5) == 0, "ranged get 7+5 (%s)", err.msg);
    buf_free(&b);

    rc = s3_get(c, "rt/hello world+$.txt", len - 4, 0, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == 4 && memcmp(b.bytes, "xyz\n", 4) == 0, "ranged get to the end");
    buf_free(&b);

    rc = s3_put(c, "rt/empty", "", 0, NULL, 0, &err);
    CHECK(rc == 0, "put empty object (%s)", err.msg);
    rc = s3_get(c, "rt/empty", 0, 0, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == 0, "get empty object");
    buf_free(&b);

    s3_meta bad = {"bad name", "x"};
    rc = s3_put(c, "rt/bad", "x", 1, &bad, 1, &err);
    CHECK(rc == -EINVAL, "metadata name that cannot be a header is refused");
    s3_meta bad2 = {"ok", "line\r\nx-amz-acl: public-read"};
    rc = s3_put(c, "rt/bad", "x", 1, &bad2, 1, &err);
    CHECK(rc == -EINVAL, "metadata value with CR/LF is refused");
}

static void test_missing(s3_client *c)
{
    walfs_err err = {0};
    s3_object_info info;
    int rc = s3_head(c, "no/such/key", &info, &err);
    CHECK(rc == -ENOENT, "head of a missing key: -ENOENT (%d)", rc);
    walfs_buf b = {0};
    rc = s3_get(c, "no/such/key", 0, 0, buf_sink, &b, &err);
    CHECK(rc == -ENOENT && b.len == 0, "get of a missing key: -ENOENT");
    CHECK(strstr(err.msg, "no/such/key") != NULL, "404 message names the object: %s", err.msg);
    buf_free(&b);

    s3_config cfg = base_config();
    s3_client *nb = s3_client_new(&cfg, "walfs-no-such-bucket", &err);
    rc = s3_get(nb, "k", 0, 0, buf_sink, &b, &err);
    CHECK(rc == -ENOENT && strstr(err.msg, "create the bucket"),
          "missing bucket: -ENOENT saying the bucket is missing: %s", err.msg);
    s3_client_free(nb);
    buf_free(&b);
}

static void test_list(s3_client *c)
{
    walfs_err err = {0};
    int rc = 0;
    char key[64];
    for (int i = 0; i < 25 && rc == 0; i++) {
        snprintf(key, sizeof key, "many/k%02d", i);
        rc = s3_put(c, key, key, strlen(key), NULL, 0, &err);
    }
    CHECK(rc == 0, "put 25 keys (%s)", err.msg);
    /* The client reads its page size when created; 7 forces four pages. */
    setenv("WALFS_S3_LIST_MAX_KEYS", "7", 1);
    s3_config cfg = base_config();
    s3_client *pc = s3_client_new(&cfg, bucket, &err);
    unsetenv("WALFS_S3_LIST_MAX_KEYS");
    listing l = {.sorted = 1};
    rc = s3_list(pc, "many/", NULL, list_cb, &l, &err);
    CHECK(rc == 0 && l.n_keys == 25 && l.sorted,
          "list with continuation tokens over pages of 7: %d keys (%s)", l.n_keys, err.msg);

    listing s = {.stop_after = 10};
    rc = s3_list(pc, "many/", NULL, list_cb, &s, &err);
    CHECK(rc == 42 && s.n_keys == 10, "callback's non-zero stops the listing and is returned");

    const char *tree[] = {"tree/a/1", "tree/a/2", "tree/b/x/1", "tree/c", "treetop"};
    for (int i = 0; i < 5; i++)
        s3_put(c, tree[i], "t", 1, NULL, 0, &err);
    listing d = {.sorted = 1};
    rc = s3_list(pc, "tree/", "/", list_cb, &d, &err);
    CHECK(rc == 0 && d.n_prefixes == 2 && d.n_keys == 1 && has_name(&d, "P:tree/a/") &&
              has_name(&d, "P:tree/b/") && has_name(&d, "K:tree/c"),
          "delimiter: common prefixes tree/a/, tree/b/ and key tree/c (%d, %d)", d.n_prefixes,
          d.n_keys);
    listing e = {.sorted = 1};
    rc = s3_list(pc, "nothing-here/", "/", list_cb, &e, &err);
    CHECK(rc == 0 && e.n_keys == 0 && e.n_prefixes == 0, "empty listing");
    s3_client_free(pc);

    rc = s3_delete(c, "tree/c", &err);
    CHECK(rc == 0, "delete (%s)", err.msg);
    s3_object_info info;
    CHECK(s3_head(c, "tree/c", &info, &err) == -ENOENT, "deleted object is gone");
}

static void test_wrong_secret(void)
{
    walfs_err err = {0};
    s3_config cfg = base_config();
    const char *bad = "ThisIsNotTheSecretKey0123456789";
    cfg.secret_key = bad;
    s3_client *c = s3_client_new(&cfg, bucket, &err);
    walfs_buf b = {0};
    double t0 = now_s();
    int rc = s3_get(c, "rt/empty", 0, 0, buf_sink, &b, &err);
    CHECK(rc == -EACCES, "wrong secret: -EACCES (%d)", rc);
    CHECK(now_s() - t0 < 2.0, "wrong secret is not retried");
    CHECK(strstr(err.msg, "s3://") && strstr(err.msg, "rt/empty"), "message names the object: %s",
          err.msg);
    CHECK(strstr(err.msg, "AWS_SECRET_ACCESS_KEY") != NULL, "message says to check the secret");
    CHECK(strstr(err.msg, bad) == NULL && strstr(err.msg, secret_key) == NULL,
          "message does not contain the secret");
    s3_object_info info;
    rc = s3_head(c, "rt/empty", &info, &err);
    CHECK(rc == -EACCES && strstr(err.msg, bad) == NULL, "HEAD with wrong secret: -EACCES: %s",
          err.msg);
    buf_free(&b);
    s3_client_free(c);

    cfg = base_config();
    cfg.access_key = "NOSUCHACCESSKEY";
    c = s3_client_new(&cfg, bucket, &err);
    rc = s3_get(c, "rt/empty", 0, 0, buf_sink, &b, &err);
    CHECK(rc == -EACCES && strstr(err.msg, "AWS_ACCESS_KEY_ID"),
          "unknown access key: -EACCES mentioning AWS_ACCESS_KEY_ID: %s", err.msg);
    buf_free(&b);
    s3_client_free(c);
}

static void test_multipart(s3_client *unused)
{
    walfs_err err = {0};
    s3_config cfg = base_config();
    cfg.multipart_threshold = 8u << 20;
    cfg.multipart_part_size = 5u << 20;
    s3_client *c = s3_client_new(&cfg, bucket, &err);
    size_t len = (12u << 20) + 12345;
    unsigned char *data = malloc(len);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data[i] = (unsigned char)x;
    }
    s3_meta meta = {"origin", "multipart"};
    double t0 = now_s();
    int rc = s3_put(c, "mp/big", data, len, &meta, 1, &err);
    double took = now_s() - t0;
    CHECK(rc == 0, "multipart put of 12 MiB with 5 MiB parts (%.2f s) (%s)", took, err.msg);
    s3_object_info info;
    rc = s3_head(c, "mp/big", &info, &err);
    CHECK(rc == 0 && info.size == len && strstr(info.etag, "-3") != NULL,
          "head: size %llu, ETag %s (3 parts)", (unsigned long long)info.size, info.etag);
    CHECK(rc == 0 && info.n_meta == 1 && strcmp(info.meta[0].value, "multipart") == 0,
          "multipart object keeps its metadata");
    walfs_buf b = {0};
    rc = s3_get(c, "mp/big", 0, 0, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == len && memcmp(b.bytes, data, len) == 0, "reads back identical");
    buf_free(&b);
    rc = s3_get(c, "mp/big", (5u << 20) - 10, 20, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == 20 && memcmp(b.bytes, data + (5u << 20) - 10, 20) == 0,
          "ranged get across a part boundary");
    buf_free(&b);

    /* The streaming API, parts out of order. */
    s3_multipart *mp = NULL;
    rc = s3_multipart_begin(c, "mp/streamed", NULL, 0, &mp, &err);
    CHECK(rc == 0 && mp, "multipart begin (%s)", err.msg);
    if (mp) {
        rc = s3_multipart_upload_part(mp, 2, data + (5u << 20), 1000, &err);
        rc |= s3_multipart_upload_part(mp, 1, data, 5u << 20, &err);
        CHECK(rc == 0, "upload parts 2 then 1 (%s)", err.msg);
        rc = s3_multipart_complete(mp, &err);
        CHECK(rc == 0, "complete (%s)", err.msg);
        s3_multipart_free(mp);
        rc = s3_get(c, "mp/streamed", 0, 0, buf_sink, &b, &err);
        CHECK(rc == 0 && b.len == (5u << 20) + 1000 && memcmp(b.bytes, data, b.len) == 0,
              "streamed multipart object reads back identical");
        buf_free(&b);
    }

    mp = NULL;
    rc = s3_multipart_begin(c, "mp/aborted", NULL, 0, &mp, &err);
    if (mp) {
        s3_multipart_upload_part(mp, 1, data, 5u << 20, &err);
        rc = s3_multipart_abort(mp, &err);
        CHECK(rc == 0, "abort (%s)", err.msg);
        CHECK(s3_multipart_abort(mp, &err) == 0, "second abort of a vanished upload is fine");
        s3_multipart_free(mp);
        s3_object_info gone;
        CHECK(s3_head(c, "mp/aborted", &gone, &err) == -ENOENT, "aborted upload left no object");
    }
    free(data);
    s3_client_free(c);
}

static void test_unreachable(void)
{
    walfs_err err = {0};
    /* A port that was just bound and released: nothing listens there. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", ntohs(a.sin_port));
    s3_config cfg = base_config();
    cfg.endpoint = ep;
    cfg.deadline_ms = 2000;
    s3_client *c = s3_client_new(&cfg, bucket, &err);
    walfs_buf b = {0};
    double t0 = now_s();
    int rc = s3_get(c, "k", 0, 0, buf_sink, &b, &err);
    double took = now_s() - t0;
    CHECK(rc == -ETIMEDOUT, "closed port: -ETIMEDOUT (%d)", rc);
    CHECK(took < 4.0 && took > 0.5, "gave up within the 2 s deadline: %.2f s", took);
    CHECK(strstr(err.msg, "attempts") && strstr(err.msg, "reachable") &&
              strstr(err.msg, "onnect"),
          "message: %s", err.msg);
    buf_free(&b);
    s3_client_free(c);
}

static void test_virtual_hosted(void)
{
    walfs_err err = {0};
    char ep[128];
    snprintf(ep, sizeof ep, "http://localhost:%d", rgw_port);
    s3_config cfg = base_config();
    cfg.endpoint = ep;
    cfg.path_style = 0;
    s3_client *c = s3_client_new(&cfg, bucket, &err);
    CHECK(c != NULL, "virtual-hosted client (%s)", err.msg);
    if (!c)
        return;
    int rc = s3_put(c, "vh/obj", "virtual", 7, NULL, 0, &err);
    CHECK(rc == 0, "virtual-hosted put via %s.localhost (%s)", bucket, err.msg);
    walfs_buf b = {0};
    rc = s3_get(c, "vh/obj", 0, 0, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == 7 && memcmp(b.bytes, "virtual", 7) == 0, "virtual-hosted get");
    buf_free(&b);
    listing l = {.sorted = 1};
    rc = s3_list(c, "vh/", NULL, list_cb, &l, &err);
    CHECK(rc == 0 && l.n_keys == 1 && has_name(&l, "K:vh/obj"), "virtual-hosted list (%s)",
          err.msg);
    s3_client_free(c);
}

static s3_client *changer;
static int overwritten;
/* buf_sink that replaces the object once, on the first delivery. */
static int overwriting_sink(void *ctx, const void *data, size_t len)
{
    if (!overwritten++) {
        walfs_err err;
        s3_put(changer, "fault/obj", "different", 9, NULL, 0, &err);
    }
    return buf_sink(ctx, data, len);
}

/* Each scenario uses a fresh client: a kept-alive connection to the proxy
 * would bypass the faults armed for new connections, and the proxy serves
 * one connection at a time. */
static s3_client *proxied(proxy *p, long deadline_ms, int fail_503, int cut_conns)
{
    walfs_err err;
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", p->port);
    s3_config cfg = base_config();
    cfg.endpoint = ep;
    cfg.deadline_ms = deadline_ms;
    p->conns = 0;
    p->fail_503 = fail_503;
    p->cut_conns = cut_conns;
    return s3_client_new(&cfg, bucket, &err);
}

static void test_faults(s3_client *direct)
{
    walfs_err err = {0};
    size_t len = 3u << 20;
    unsigned char *data = malloc(len);
    for (size_t i = 0; i < len; i++)
        data[i] = (unsigned char)(i * 31 + (i >> 13));
    int rc = s3_put(direct, "fault/obj", data, len, NULL, 0, &err);
    CHECK(rc == 0, "put 3 MiB for the fault tests (%s)", err.msg);

    proxy p = {.cut_after = 1000000};
    if (proxy_start(&p) != 0) {
        CHECK(0, "proxy starts");
        free(data);
        return;
    }

    walfs_buf b = {0};
    s3_client *c = proxied(&p, 10000, 0, 1);
    rc = s3_get(c, "fault/obj", 0, 0, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == len && memcmp(b.bytes, data, len) == 0 && p.conns == 2,
          "connection cut after 1 MB: resumed, every byte exactly once (%zu bytes, %d conns) %s",
          b.len, p.conns, err.msg);
    buf_free(&b);
    s3_client_free(c);

    c = proxied(&p, 10000, 0, 1);
    rc = s3_get(c, "fault/obj", 100, 2000000, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == 2000000 && memcmp(b.bytes, data + 100, b.len) == 0 && p.conns == 2,
          "ranged get cut mid-body resumes within the range (%d conns)", p.conns);
    buf_free(&b);
    s3_client_free(c);

    c = proxied(&p, 10000, 2, 0);
    double t0 = now_s();
    rc = s3_get(c, "fault/obj", 0, 10, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == 10 && memcmp(b.bytes, data, 10) == 0 && p.conns == 3,
          "two 503 SlowDown answers retried (%.2f s, %d conns)", now_s() - t0, p.conns);
    buf_free(&b);
    s3_client_free(c);

    /* Overwritten between the cut and the resume: If-Match must refuse to
     * splice the new version onto the old bytes. */
    c = proxied(&p, 10000, 0, 1);
    changer = direct;
    overwritten = 0;
    rc = s3_get(c, "fault/obj", 0, 0, overwriting_sink, &b, &err);
    CHECK(rc == -EIO && strstr(err.msg, "changed"),
          "object replaced mid-read: -EIO, not a spliced body: %s", err.msg);
    buf_free(&b);
    s3_client_free(c);

    /* A body that stalls: --low-speed-time means what it says (libcurl's
     * own check took about three times as long). */
    {
        /* the test above replaced the object */
        rc = s3_put(direct, "fault/obj", data, len, NULL, 0, &err);
        s3_config cfg = base_config();
        char ep[64];
        snprintf(ep, sizeof ep, "http://127.0.0.1:%d", p.port);
        cfg.endpoint = ep;
        cfg.deadline_ms = 20000;
        cfg.low_speed_time_s = 2;
        p.conns = 0;
        p.fail_503 = 0;
        p.cut_conns = 1;
        p.stall_ms = 15000;
        c = s3_client_new(&cfg, bucket, &err);
        t0 = now_s();
        rc = s3_get(c, "fault/obj", 0, 0, buf_sink, &b, &err);
        double stalled_for = now_s() - t0;
        CHECK(rc == 0 && b.len == len && memcmp(b.bytes, data, len) == 0 && p.conns == 2 &&
                  stalled_for >= 1.9 && stalled_for < 4.5,
              "a body stalled after 1 MB is abandoned after --low-speed-time=2 and resumed "
              "(%.2f s, %d conns) %s", stalled_for, p.conns, err.msg);
        buf_free(&b);
        s3_client_free(c);
        p.stall_ms = 0;
    }

    /* 503 forever: gives up at the deadline with the last error. */
    c = proxied(&p, 1500, 1000, 0);
    t0 = now_s();
    rc = s3_get(c, "fault/obj", 0, 10, buf_sink, &b, &err);
    double took = now_s() - t0;
    CHECK(rc == -ETIMEDOUT && took < 3.0 && strstr(err.msg, "SlowDown") && strstr(err.msg, "attempts"),
          "endless 503: -ETIMEDOUT after %.2f s: %s", took, err.msg);
    buf_free(&b);
    s3_client_free(c);

    proxy_stop(&p);
    free(data);
}

static char canned_buf[8][1024];
static const char *canned(int i, const char *status_and_headers, const char *body)
{
    snprintf(canned_buf[i], sizeof canned_buf[i],
             "HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: application/xml\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             status_and_headers, strlen(body), body);
    return canned_buf[i];
}

/* Responses no real server gives on demand: malformed XML, a DTD, a 200
 * CompleteMultipartUpload carrying <Error>. */
static void test_canned(void)
{
    walfs_err err = {0};
    proxy p = {0};
    if (proxy_start(&p) != 0) {
        CHECK(0, "proxy starts");
        return;
    }
    const char *r[4];
    r[0] = canned(0, "200 OK", "<ListBucketResult><Contents><Key>a</Key><Size>1");
    p.canned = r;
    p.n_canned = 1;
    s3_client *c = proxied(&p, 3000, 0, 0);
    listing l = {.sorted = 1};
    int rc = s3_list(c, "", NULL, list_cb, &l, &err);
    CHECK(rc == -EIO && strstr(err.msg, "malformed"), "truncated list XML: -EIO: %s", err.msg);
    s3_client_free(c);

    r[0] = canned(0, "200 OK",
                  "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\">"
                  "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]>"
                  "<ListBucketResult><Contents><Key>&b;</Key><Size>1</Size>"
                  "<LastModified>2020-01-01T00:00:00.000Z</LastModified><ETag>x</ETag>"
                  "</Contents><IsTruncated>false</IsTruncated></ListBucketResult>");
    c = proxied(&p, 3000, 0, 0);
    memset(&l, 0, sizeof l);
    rc = s3_list(c, "", NULL, list_cb, &l, &err);
    CHECK(rc == -EIO && l.n_keys == 0, "list XML with a DTD and entities refused: %s", err.msg);
    s3_client_free(c);

    r[0] = canned(0, "403 Forbidden", "<Error><Code>SignatureDoesNotMatch</Code><Message>x</Mess");
    c = proxied(&p, 3000, 0, 0);
    walfs_buf b = {0};
    rc = s3_get(c, "k", 0, 0, buf_sink, &b, &err);
    CHECK(rc == -EACCES, "malformed 403 error body still -EACCES: %s", err.msg);
    buf_free(&b);
    s3_client_free(c);

    /* create, part 1, part 2, then complete answering 200 + <Error>, then abort. */
    r[0] = canned(0, "200 OK",
                  "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                  "<UploadId>up-1</UploadId></InitiateMultipartUploadResult>");
    r[1] = canned(1, "200 OK\r\nETag: \"0123456789abcdef0123456789abcdef\"", "");
    r[2] = canned(2, "200 OK",
                  "<?xml version=\"1.0\"?>\n<Error><Code>AccessDenied</Code>"
                  "<Message>Access Denied</Message></Error>");
    p.n_canned = 4;
    r[3] = canned(3, "204 No Content", "");
    const char *seq[5] = {r[0], r[1], r[1], r[2], r[3]};
    p.canned = seq;
    p.n_canned = 5;
    s3_config cfg = base_config();
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", p.port);
    cfg.endpoint = ep;
    cfg.multipart_threshold = 5u << 20;
    cfg.multipart_part_size = 5u << 20;
    cfg.deadline_ms = 3000;
    p.conns = 0;
    c = s3_client_new(&cfg, bucket, &err);
    size_t len = (5u << 20) + 1;
    char *data = calloc(1, len);
    rc = s3_put(c, "mp/err200", data, len, NULL, 0, &err);
    CHECK(rc != 0 && strstr(err.msg, "AccessDenied") && p.conns == 5,
          "200 complete carrying <Error> is an error, and the upload is aborted (%d requests): %s",
          p.conns, err.msg);
    free(data);
    s3_client_free(c);
    proxy_stop(&p);
}

typedef struct thr {
    s3_client *c;
    int id, failures;
} thr;

static void *thread_main(void *arg)
{
    thr *t = arg;
    char key[64], body[64];
    walfs_err err;
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "threads/%d/%d", t->id, i);
        int n = snprintf(body, sizeof body, "thread %d item %d", t->id, i);
        walfs_buf b = {0};
        if (s3_put(t->c, key, body, (size_t)n, NULL, 0, &err) != 0 ||
            s3_get(t->c, key, 0, 0, buf_sink, &b, &err) != 0 || b.len != (size_t)n ||
            memcmp(b.bytes, body, (size_t)n) != 0)
            t->failures++;
        buf_free(&b);
    }
    return NULL;
}

static void test_threads(s3_client *c)
{
    pthread_t th[8];
    thr t[8];
    for (int i = 0; i < 8; i++) {
        t[i] = (thr){c, i, 0};
        pthread_create(&th[i], NULL, thread_main, &t[i]);
    }
    int failures = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        failures += t[i].failures;
    }
    CHECK(failures == 0, "8 threads x 20 put+get on one client: %d failures", failures);
}

/* CHECK evaluates its condition twice, so calls with effects run first. */
static void test_config(void)
{
    walfs_err err = {0};
    char *ep = NULL;
    int ps = -1;
    int rc = s3_parse_wale_endpoint("http+path://127.0.0.1:7480", &ep, &ps, &err);
    CHECK(rc == 0 && ep && strcmp(ep, "http://127.0.0.1:7480") == 0 && ps == 1,
          "WALE_S3_ENDPOINT http+path");
    free(ep);
    ep = NULL;
    rc = s3_parse_wale_endpoint("https+virtualhost://s3.example.com", &ep, &ps, &err);
    CHECK(rc == 0 && ep && strcmp(ep, "https://s3.example.com") == 0 && ps == 0,
          "WALE_S3_ENDPOINT https+virtualhost");
    free(ep);
    ep = NULL;
    rc = s3_parse_wale_endpoint("https+subdomain://h:9000/", &ep, &ps, &err);
    CHECK(rc == 0 && ep && strcmp(ep, "https://h:9000") == 0 && ps == 0,
          "WALE_S3_ENDPOINT https+subdomain");
    free(ep);
    ep = NULL;
    rc = s3_parse_wale_endpoint("http://h", &ep, &ps, &err);
    CHECK(rc == -EINVAL && !ep && strstr(err.msg, "WALE_S3_ENDPOINT"),
          "WALE_S3_ENDPOINT without convention refused: %s", err.msg);
    rc = s3_parse_wale_endpoint("ftp+path://h", &ep, &ps, &err);
    CHECK(rc == -EINVAL && !ep, "ftp refused");
    rc = s3_parse_wale_endpoint("http+sideways://h", &ep, &ps, &err);
    CHECK(rc == -EINVAL && !ep, "unknown convention refused");
    rc = s3_parse_wale_endpoint("http+path://", &ep, &ps, &err);
    CHECK(rc == -EINVAL && !ep, "no host refused");

    s3_config cfg = base_config();
    cfg.endpoint = "ftp://x";
    s3_client *c = s3_client_new(&cfg, "b", &err);
    CHECK(c == NULL && err.code == -EINVAL, "bad endpoint: -EINVAL");
    cfg = base_config();
    cfg.secret_key = NULL;
    c = s3_client_new(&cfg, "b", &err);
    CHECK(c == NULL && err.code == -EINVAL && strstr(err.msg, "AWS_SECRET_ACCESS_KEY"),
          "missing credentials: -EINVAL");
    cfg = base_config();
    cfg.multipart_part_size = 1 << 20;
    c = s3_client_new(&cfg, "b", &err);
    CHECK(c == NULL && err.code == -EINVAL, "1 MiB parts refused");
    cfg = base_config();
    cfg.path_style = 0;
    c = s3_client_new(&cfg, "Bad_Bucket", &err);
    CHECK(c == NULL && err.code == -EINVAL,
          "non-DNS bucket refused for virtual-hosted addressing");
    cfg = base_config();
    cfg.endpoint = NULL;
    c = s3_client_new(&cfg, "b", &err);
    CHECK(c && strcmp(s3_client_bucket(c), "s3://b") == 0, "default AWS endpoint accepted");
    s3_client_free(c);
}

int main(void)
{
    endpoint = getenv("RGW_ENDPOINT");
    access_key = getenv("RGW_ACCESS_KEY");
    secret_key = getenv("RGW_SECRET_KEY");
    if (!endpoint || !access_key || !secret_key) {
        printf("skipped: RGW_ENDPOINT, RGW_ACCESS_KEY and RGW_SECRET_KEY are not set "
               "(run tests/t_unit_rgw.sh, which starts a Ceph RGW)\n");
        return 77;
    }
    const char *colon = strrchr(endpoint, ':');
    rgw_port = colon ? atoi(colon + 1) : 80;
    snprintf(bucket, sizeof bucket, "walfs-s3test-%ld-%d", (long)time(NULL) % 100000,
             (int)getpid());
    curl_global_init(CURL_GLOBAL_DEFAULT);

    test_config();
    long st = raw_put_bucket(bucket);
    CHECK(st == 200, "bucket %s created with an independently signed request (HTTP %ld)", bucket,
          st);

    walfs_err err = {0};
    s3_config cfg = base_config();
    s3_client *c = s3_client_new(&cfg, bucket, &err);
    CHECK(c != NULL, "client (%s)", err.msg);
    if (!c)
        return test_summary();
    test_round_trip(c);
    test_missing(c);
    test_list(c);
    test_wrong_secret();
    test_multipart(c);
    test_unreachable();
    test_virtual_hosted();
    test_faults(c);
    test_threads(c);
    test_canned();
    s3_client_free(c);
    curl_global_cleanup();
    return test_summary();
}
