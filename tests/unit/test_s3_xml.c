/* s3/s3_xml.c on its own: a ListObjectsV2 page with impossible entries
 * keeps the others, a truncated page without a token is told apart, and
 * libxml2 prints nothing to stderr about a body it cannot decode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "s3/s3_xml.h"
#include "tests/unit/tap.h"

typedef struct seen {
    char keys[512];
    char bad[512];
    int n, n_bad;
} seen;

static int on_entry(void *ctx, const s3_list_entry *e)
{
    seen *s = ctx;
    s->n++;
    strncat(s->keys, e->key, sizeof s->keys - strlen(s->keys) - 2);
    strcat(s->keys, " ");
    return 0;
}

static void on_bad(void *ctx, const char *key, const char *why)
{
    seen *s = ctx;
    (void)why;
    s->n_bad++;
    strncat(s->bad, *key ? key : "(empty)", sizeof s->bad - strlen(s->bad) - 2);
    strcat(s->bad, " ");
}

#define ENTRY(key, size)                                                              \
    "<Contents><Key>" key "</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>" \
    "<ETag>\"abc\"</ETag><Size>" size "</Size></Contents>"

int main(void)
{
    s3_xml_init();

    const char *page = "<ListBucketResult>" ENTRY("p/a", "1") ENTRY("p/neg", "-5")
        ENTRY("", "3") ENTRY("p/huge", "99999999999999999999") ENTRY("p/word", "12x")
        ENTRY("p/b", "18446744073709551") "<IsTruncated>false</IsTruncated></ListBucketResult>";
    seen s = {0};
    char *tok = NULL;
    int fn_rc = 0;
    int rc = s3_xml_list(page, strlen(page), on_entry, on_bad, &s, &tok, &fn_rc);
    CHECK(rc == 0, "a page with impossible entries still parses (rc %d)", rc);
    CHECK(s.n == 2 && strcmp(s.keys, "p/a p/b ") == 0, "the possible entries are kept: %s", s.keys);
    CHECK(s.n_bad == 4 && strcmp(s.bad, "p/neg (empty) p/huge p/word ") == 0,
          "a negative, an overflowing and a non-numeric size, and an empty key are reported: %s",
          s.bad);
    CHECK(tok == NULL, "the last page has no token");

    const char *notoken = "<ListBucketResult>" ENTRY("p/a", "1")
        "<IsTruncated>true</IsTruncated></ListBucketResult>";
    memset(&s, 0, sizeof s);
    rc = s3_xml_list(notoken, strlen(notoken), on_entry, NULL, &s, &tok, &fn_rc);
    CHECK(rc == -2 && tok == NULL, "a truncated page without a token is -2 (rc %d)", rc);

    const char *withtoken = "<ListBucketResult>" ENTRY("p/a", "1")
        "<IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken>"
        "</ListBucketResult>";
    rc = s3_xml_list(withtoken, strlen(withtoken), on_entry, NULL, &s, &tok, &fn_rc);
    CHECK(rc == 0 && tok && strcmp(tok, "t1") == 0, "a truncated page gives its token");
    free(tok);
    tok = NULL;

    /* libxml2's encoding layer reports without a parser context, to the
     * thread's handler: stderr unless one is installed. */
    fflush(stderr);
    FILE *cap = tmpfile();
    int saved = dup(2);
    dup2(fileno(cap), 2);
    const char *sjis = "<?xml version=\"1.0\" encoding=\"SHIFT_JIS\"?>\n<ListBucketResult>"
                       "<Name>\x81\xff\x81\xff</Name></ListBucketResult>";
    rc = s3_xml_list(sjis, strlen(sjis), on_entry, on_bad, &s, &tok, &fn_rc);
    char code[64], msg[256];
    const char *err = "<?xml version=\"1.0\" encoding=\"SHIFT_JIS\"?><Error><Code>\x81\xff"
                      "</Code></Error>";
    int erc = s3_xml_error(err, strlen(err), code, sizeof code, msg, sizeof msg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    long written = ftell(cap);
    fclose(cap);
    CHECK(rc == -1 && erc == -1, "bodies that cannot be decoded are malformed (%d, %d)", rc, erc);
    CHECK(written == 0, "and libxml2 wrote nothing to stderr (%ld bytes)", written);
    free(tok);
    return test_summary();
}
