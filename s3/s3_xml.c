#include "s3/s3_xml.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

void s3_xml_init(void) { xmlInitParser(); }

/* XML_PARSE_NOERROR silences only the parser context; the encoding layer
 * reports without one ("encoding error : input conversion failed") through
 * the thread's handler, which defaults to stderr.  Our callers report a
 * malformed body themselves. */
static void silent_error(void *ctx, xmlErrorPtr error)
{
    (void)ctx;
    (void)error;
}

static xmlDocPtr parse(const char *body, size_t len)
{
    if (!body || len == 0 || len > (size_t)INT32_MAX)
        return NULL;
    /* The handler is per thread in libxml2, and parsing runs on many. */
    xmlSetStructuredErrorFunc(NULL, silent_error);
    /* NONET: never fetch; no NOENT/DTDLOAD: entities are not substituted or
     * loaded; NOERROR/NOWARNING: libxml2 must not print to our stderr. */
    xmlDocPtr doc = xmlReadMemory(body, (int)len, "s3-response.xml", NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return NULL;
    /* S3 never sends a DTD; one here can only be an entity-expansion trick. */
    if (doc->intSubset || doc->extSubset || !xmlDocGetRootElement(doc)) {
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}

static int is(const xmlNode *n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0;
}

static const xmlNode *child(const xmlNode *parent, const char *name)
{
    for (const xmlNode *n = parent->children; n; n = n->next)
        if (is(n, name))
            return n;
    return NULL;
}

/* Text content of an element (text and CDATA children only), malloc'd. */
static char *text_of(const xmlNode *n)
{
    size_t len = 0;
    for (const xmlNode *t = n ? n->children : NULL; t; t = t->next)
        if ((t->type == XML_TEXT_NODE || t->type == XML_CDATA_SECTION_NODE) && t->content)
            len += strlen((const char *)t->content);
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    s[0] = '\0';
    size_t o = 0;
    for (const xmlNode *t = n ? n->children : NULL; t; t = t->next)
        if ((t->type == XML_TEXT_NODE || t->type == XML_CDATA_SECTION_NODE) && t->content) {
            size_t l = strlen((const char *)t->content);
            memcpy(s + o, t->content, l);
            o += l;
        }
    s[o] = '\0';
    return s;
}

static void copy_child_text(const xmlNode *parent, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    const xmlNode *n = child(parent, name);
    char *t = n ? text_of(n) : NULL;
    if (!t)
        return;
    /* Messages go into one-line error strings. */
    size_t o = 0;
    for (const char *p = t; *p && o + 1 < outlen; p++)
        out[o++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
    out[o] = '\0';
    free(t);
}

int s3_xml_error(const char *body, size_t len, char *code, size_t code_len, char *message,
                 size_t message_len)
{
    code[0] = '\0';
    message[0] = '\0';
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    if (i == len)
        return 0;
    xmlDocPtr doc = parse(body, len);
    if (!doc)
        return -1;
    const xmlNode *root = xmlDocGetRootElement(doc);
    int rc = 0;
    if (is(root, "Error")) {
        copy_child_text(root, "Code", code, code_len);
        copy_child_text(root, "Message", message, message_len);
        rc = 1;
    }
    xmlFreeDoc(doc);
    return rc;
}

int s3_xml_upload_id(const char *body, size_t len, char **upload_id)
{
    *upload_id = NULL;
    xmlDocPtr doc = parse(body, len);
    if (!doc)
        return -1;
    const xmlNode *root = xmlDocGetRootElement(doc);
    const xmlNode *n = is(root, "InitiateMultipartUploadResult") ? child(root, "UploadId") : NULL;
    char *id = n ? text_of(n) : NULL;
    xmlFreeDoc(doc);
    if (!id || !*id) {
        free(id);
        return -1;
    }
    *upload_id = id;
    return 0;
}

/* "2009-10-12T17:50:30.000Z" */
static time_t parse_iso8601(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!s || !strptime(s, "%Y-%m-%dT%H:%M:%S", &tm))
        return 0;
    return timegm(&tm);
}

static void strip_quotes(char *s)
{
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
        memmove(s, s + 1, n - 2);
        s[n - 2] = '\0';
    }
}

/* A Size is a plain decimal: strtoull alone would take "-1" for 2^64-1. */
static int parse_size(const char *s, uint64_t *out)
{
    if (!*s || strlen(s) > 19)
        return -1;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v;
    return 0;
}

int s3_xml_list(const char *body, size_t len, s3_list_fn fn, s3_xml_bad_fn bad, void *ctx,
                char **next_token, int *fn_rc)
{
    *next_token = NULL;
    *fn_rc = 0;
    xmlDocPtr doc = parse(body, len);
    if (!doc)
        return -1;
    const xmlNode *root = xmlDocGetRootElement(doc);
    if (!is(root, "ListBucketResult")) {
        xmlFreeDoc(doc);
        return -1;
    }
    int rc = 0;
    for (const xmlNode *n = root->children; n && rc == 0; n = n->next) {
        if (is(n, "Contents")) {
            char *key = text_of(child(n, "Key"));
            char *size = text_of(child(n, "Size"));
            char *lm = text_of(child(n, "LastModified"));
            char *etag = text_of(child(n, "ETag"));
            uint64_t sz = 0;
            if (!key || !size || !lm || !etag) {
                rc = -1; /* out of memory */
            } else if (!*key) {
                if (bad)
                    bad(ctx, "", "an entry without a key");
            } else if (parse_size(size, &sz) != 0) {
                if (bad)
                    bad(ctx, key, "its size is not a non-negative number");
            } else {
                strip_quotes(etag);
                s3_list_entry e = {key, 0, sz, parse_iso8601(lm), etag};
                if ((*fn_rc = fn(ctx, &e)) != 0)
                    rc = 1;
            }
            free(key);
            free(size);
            free(lm);
            free(etag);
        } else if (is(n, "CommonPrefixes")) {
            char *prefix = text_of(child(n, "Prefix"));
            if (!prefix) {
                rc = -1;
            } else if (!*prefix) {
                if (bad)
                    bad(ctx, "", "a common prefix that is empty");
            } else {
                s3_list_entry e = {prefix, 1, 0, 0, ""};
                if ((*fn_rc = fn(ctx, &e)) != 0)
                    rc = 1;
            }
            free(prefix);
        }
    }
    if (rc == 0) {
        char *trunc = text_of(child(root, "IsTruncated"));
        if (trunc && strcmp(trunc, "true") == 0) {
            char *tok = text_of(child(root, "NextContinuationToken"));
            if (!tok || !*tok) {
                free(tok);
                rc = -2; /* truncated without a token: we could never finish */
            } else {
                *next_token = tok;
            }
        }
        free(trunc);
    }
    xmlFreeDoc(doc);
    return rc;
}

int s3_xml_uploads(const char *body, size_t len, s3_xml_upload_fn fn, void *ctx)
{
    xmlDocPtr doc = parse(body, len);
    if (!doc)
        return -1;
    const xmlNode *root = xmlDocGetRootElement(doc);
    int n = 0;
    if (!is(root, "ListMultipartUploadsResult")) {
        xmlFreeDoc(doc);
        return -1;
    }
    for (const xmlNode *u = root->children; u; u = u->next) {
        if (!is(u, "Upload"))
            continue;
        char *key = text_of(child(u, "Key"));
        char *id = text_of(child(u, "UploadId"));
        if (key && id && *key && *id) {
            fn(ctx, key, id);
            n++;
        }
        free(key);
        free(id);
    }
    xmlFreeDoc(doc);
    return n;
}
