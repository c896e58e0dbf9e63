/* The SigV4 examples AWS publishes for S3 ("Signature Calculations for the
 * Authorization Header: Transferring Payload in a Single Chunk"): if these
 * match byte for byte, real S3 accepts our signatures. */
#include <stdlib.h>
#include <string.h>

#include "s3/sigv4.h"
#include "tests/unit/tap.h"

#define AK "AKIAIOSFODNN7EXAMPLE"
#define SK "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define DATE "20130524T000000Z"
#define EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define HOST "examplebucket.s3.amazonaws.com"

static const sigv4_credentials cred = {AK, SK, NULL};

static void check_example(const char *what, const sigv4_request *req, const char *want_creq,
                          const char *want_signed, const char *want_sig)
{
    char auth[512];
    char *creq = NULL, *sts = NULL;
    int rc = sigv4_authorization(req, &cred, DATE, "us-east-1", "s3", auth, sizeof auth, &creq,
                                 &sts);
    CHECK(rc == 0, "%s: signs", what);
    CHECK(creq && strcmp(creq, want_creq) == 0, "%s: canonical request", what);
    if (creq && strcmp(creq, want_creq) != 0)
        printf("# got:\n%s\n# want:\n%s\n", creq, want_creq);
    char want_auth[512];
    snprintf(want_auth, sizeof want_auth,
             "AWS4-HMAC-SHA256 Credential=" AK "/20130524/us-east-1/s3/aws4_request,"
             "SignedHeaders=%s,Signature=%s",
             want_signed, want_sig);
    CHECK(strcmp(auth, want_auth) == 0, "%s: authorization header", what);
    if (strcmp(auth, want_auth) != 0)
        printf("# got:  %s\n# want: %s\n", auth, want_auth);
    CHECK(sts && strncmp(sts, "AWS4-HMAC-SHA256\n" DATE "\n20130524/us-east-1/s3/aws4_request\n",
                         strlen("AWS4-HMAC-SHA256\n" DATE
                                "\n20130524/us-east-1/s3/aws4_request\n")) == 0,
          "%s: string to sign scope", what);
    free(creq);
    free(sts);
}

static void test_get_object(void)
{
    /* Header names in mixed case and padded values: the signer must
     * lower-case and trim them. */
    sigv4_header h[] = {
        {"Host", HOST},
        {"Range", " bytes=0-9"},
        {"x-amz-content-sha256", EMPTY_SHA},
        {"X-Amz-Date", DATE},
    };
    sigv4_request req = {"GET", "/test.txt", NULL, h, 4, EMPTY_SHA};
    check_example("GET Object", &req,
                  "GET\n/test.txt\n\n"
                  "host:" HOST "\n"
                  "range:bytes=0-9\n"
                  "x-amz-content-sha256:" EMPTY_SHA "\n"
                  "x-amz-date:" DATE "\n\n"
                  "host;range;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA,
                  "host;range;x-amz-content-sha256;x-amz-date",
                  "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    char auth[512], *sts = NULL;
    sigv4_authorization(&req, &cred, DATE, "us-east-1", "s3", auth, sizeof auth, NULL, &sts);
    CHECK(sts && strcmp(sts, "AWS4-HMAC-SHA256\n" DATE "\n20130524/us-east-1/s3/aws4_request\n"
                             "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972") == 0,
          "GET Object: string to sign as published");
    free(sts);
}

static void test_put_object(void)
{
    const char *body = "Welcome to Amazon S3.";
    char sha[65];
    sigv4_sha256_hex(body, strlen(body), sha);
    CHECK(strcmp(sha, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072") == 0,
          "sha256 of the PUT body");
    char *path = sigv4_uri_encode("/test$file.text", 1);
    CHECK(path && strcmp(path, "/test%24file.text") == 0, "key encoded with '/' kept, '$' escaped");
    sigv4_header h[] = {
        {"Host", HOST},
        {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
        {"x-amz-date", DATE},
        {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
        {"x-amz-content-sha256", sha},
    };
    sigv4_request req = {"PUT", path, NULL, h, 5, sha};
    check_example("PUT Object", &req,
                  "PUT\n/test%24file.text\n\n"
                  "date:Fri, 24 May 2013 00:00:00 GMT\n"
                  "host:" HOST "\n"
                  "x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n"
                  "x-amz-date:" DATE "\n"
                  "x-amz-storage-class:REDUCED_REDUNDANCY\n\n"
                  "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n"
                  "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
                  "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                  "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
    free(path);
}

static void test_get_lifecycle(void)
{
    sigv4_header h[] = {
        {"Host", HOST},
        {"x-amz-date", DATE},
        {"x-amz-content-sha256", EMPTY_SHA},
    };
    sigv4_request req = {"GET", "/", "lifecycle", h, 3, EMPTY_SHA};
    check_example("GET Bucket Lifecycle", &req,
                  "GET\n/\nlifecycle=\n"
                  "host:" HOST "\n"
                  "x-amz-content-sha256:" EMPTY_SHA "\n"
                  "x-amz-date:" DATE "\n\n"
                  "host;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA,
                  "host;x-amz-content-sha256;x-amz-date",
                  "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
}

static void test_list_objects(void)
{
    sigv4_header h[] = {
        {"Host", HOST},
        {"x-amz-date", DATE},
        {"x-amz-content-sha256", EMPTY_SHA},
    };
    /* Deliberately out of order: the signer sorts parameters. */
    sigv4_request req = {"GET", "/", "prefix=J&max-keys=2", h, 3, EMPTY_SHA};
    check_example("GET Bucket (list objects)", &req,
                  "GET\n/\nmax-keys=2&prefix=J\n"
                  "host:" HOST "\n"
                  "x-amz-content-sha256:" EMPTY_SHA "\n"
                  "x-amz-date:" DATE "\n\n"
                  "host;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA,
                  "host;x-amz-content-sha256;x-amz-date",
                  "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

static void test_query_canonicalization(void)
{
    sigv4_header h[] = {{"host", "h"}, {"x-amz-date", DATE}};
    /* Raw and already-encoded forms of the same query must canonicalize
     * identically, with upper-case hex and '+', '/', '=' escaped. */
    const char *forms[] = {"b=x y/z+&a=1&continuation-token=ab%3D%3D",
                           "continuation-token=ab%3d%3d&a=1&b=x%20y%2Fz%2B"};
    char *c[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        char auth[512];
        sigv4_request req = {"GET", "/", forms[i], h, 2, EMPTY_SHA};
        sigv4_authorization(&req, &cred, DATE, "us-east-1", "s3", auth, sizeof auth, &c[i], NULL);
    }
    const char *want = "GET\n/\na=1&b=x%20y%2Fz%2B&continuation-token=ab%3D%3D\n";
    CHECK(c[0] && strncmp(c[0], want, strlen(want)) == 0, "raw query canonicalized");
    CHECK(c[1] && strncmp(c[1], want, strlen(want)) == 0, "encoded query canonicalized");
    free(c[0]);
    free(c[1]);

    char *e = sigv4_uri_encode("a b/c~d_e.f-g*h%", 0);
    CHECK(e && strcmp(e, "a%20b%2Fc~d_e.f-g%2Ah%25") == 0, "uri encode without slash: %s", e ? e : "(null)");
    free(e);
    e = sigv4_uri_encode("wal_005/0000000100000000000000A1.lzo", 1);
    CHECK(e && strcmp(e, "wal_005/0000000100000000000000A1.lzo") == 0, "WAL key unchanged");
    free(e);
    e = sigv4_uri_encode("\xc3\xa9", 1);
    CHECK(e && strcmp(e, "%C3%A9") == 0, "UTF-8 bytes encoded individually");
    free(e);

    char d[17];
    sigv4_amz_date(1369353600, d);
    CHECK(strcmp(d, DATE) == 0, "amz date formatting");

    char small[16];
    sigv4_request req = {"GET", "/", NULL, h, 2, EMPTY_SHA};
    CHECK(sigv4_authorization(&req, &cred, DATE, "us-east-1", "s3", small, sizeof small, NULL,
                              NULL) == -1,
          "too-small output buffer reported");
}

int main(void)
{
    test_get_object();
    test_put_object();
    test_get_lifecycle();
    test_list_objects();
    test_query_canonicalization();
    return test_summary();
}
