#include "wal/lzop_object.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

typedef struct decode_feed {
    lzop_decoder *dec;
    lzop_sink_fn sink;
    void *ctx;
    walfs_err *err;
} decode_feed;

static int feed(void *ctx, const void *data, size_t len)
{
    decode_feed *f = ctx;
    return lzop_decoder_feed(f->dec, data, len, f->sink, f->ctx, f->err);
}

int lzop_object_read(store *st, const char *key, lzop_sink_fn sink, void *ctx, walfs_err *err)
{
    char label[PATH_MAX];
    const char *url = store_url(st);
    snprintf(label, sizeof label, "%s%s%s", url, url[0] && url[strlen(url) - 1] != '/' ? "/" : "",
             key);
    decode_feed f = {.dec = lzop_decoder_new(label), .sink = sink, .ctx = ctx, .err = err};
    if (!f.dec)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    int rc = store_get(st, key, 0, 0, feed, &f, err);
    if (!rc)
        rc = lzop_decoder_finish(f.dec, err);
    lzop_decoder_free(f.dec);
    return rc;
}
