/* store/: the wrappers over a driver.  A driver with only the required
 * operations gets a clear -ENOTSUP for the optional ones (never a call
 * through NULL), and upload operations are handed the store they run on. */
#include <errno.h>
#include <string.h>

#include "store/store_driver.h"
#include "tap.h"

typedef struct bare {
    store base;
    int puts, lists;
} bare;

static int b_stat(store *st, const char *k, store_stat *o, walfs_err *e)
{
    return walfs_err_set(e, -ENOENT, "%s: no such object", k);
}
static int b_get(store *st, const char *k, uint64_t off, uint64_t len, store_sink_fn s, void *c,
                 walfs_err *e)
{
    return walfs_err_set(e, -ENOENT, "%s: no such object", k);
}
static int b_put(store *st, const char *k, const void *b, size_t l, int64_t u, walfs_err *e)
{
    ((bare *)st)->puts++;
    return 0;
}
static int b_remove(store *st, const char *k, walfs_err *e) { return 0; }
static int b_list(store *st, const char *d, store_list_fn fn, void *c, walfs_err *e)
{
    ((bare *)st)->lists++;
    store_entry one = {.name = "x"};
    return fn(c, &one);
}
static void b_destroy(store *st) {}

static const store_ops bare_ops = {.stat = b_stat, .get = b_get, .put = b_put,
                                   .remove = b_remove, .list = b_list, .destroy = b_destroy};

/* Uploads that check they are told their store. */
typedef struct uploading {
    store base;
    int parts, commits, aborts, wrong_store;
} uploading;

static store_upload *const TOKEN = (store_upload *)&bare_ops;

static uploading *as_uploading(store *st, store_upload *up)
{
    uploading *u = (uploading *)st;
    if (up != TOKEN)
        u->wrong_store++;
    return u;
}
static int u_begin(store *st, const char *k, store_upload **out, walfs_err *e)
{
    *out = TOKEN;
    return 0;
}
static int u_part(store *st, store_upload *up, const void *d, size_t l, walfs_err *e)
{
    as_uploading(st, up)->parts++;
    return 0;
}
static int u_commit(store *st, store_upload *up, walfs_err *e)
{
    as_uploading(st, up)->commits++;
    return 0;
}
static void u_abort(store *st, store_upload *up) { as_uploading(st, up)->aborts++; }

static const store_ops uploading_ops = {
    .stat = b_stat, .get = b_get, .put = b_put, .remove = b_remove, .list = b_list,
    .destroy = b_destroy, .upload_begin = u_begin, .upload_part = u_part,
    .upload_commit = u_commit, .upload_abort = u_abort};

static int count(void *ctx, const store_entry *e)
{
    (*(int *)ctx)++;
    return 0;
}

/* CHECK may evaluate its condition more than once: every call with an
 * effect is made before it. */
int main(void)
{
    bare b = {.base = {.ops = &bare_ops, .url = "bare://"}};
    store *st = &b.base;
    walfs_err err = {0};
    store_upload *up = NULL;

    int rc = store_upload_begin(st, "basebackups_005/x/part", &up, &err);
    CHECK(rc == -ENOTSUP && err.code == -ENOTSUP && up == NULL, "no upload_begin: -ENOTSUP");
    CHECK(strstr(err.msg, "basebackups_005/x/part") && strstr(err.msg, "bare://") &&
              strstr(err.msg, "streaming uploads"),
          "the message names the object, the store and what is missing: %s", err.msg);
    rc = store_upload_part(st, TOKEN, "x", 1, &err);
    CHECK(rc == -ENOTSUP, "no upload_part: -ENOTSUP");
    rc = store_upload_commit(st, TOKEN, &err);
    CHECK(rc == -ENOTSUP, "no upload_commit: -ENOTSUP");
    store_upload_abort(st, TOKEN);
    CHECK(1, "no upload_abort: nothing to abort, no call through NULL");
    walfs_err_clear(&err);
    rc = store_abort_uploads(st, "basebackups_005/x/", &err);
    CHECK(rc == -ENOTSUP && strstr(err.msg, "basebackups_005/x/") && strstr(err.msg, "bare://"),
          "no abort_uploads: -ENOTSUP naming the prefix and store: %s", err.msg);
    rc = store_put_hashed(st, "k", "v", 1, "ab", -1, &err);
    CHECK(rc == 0 && b.puts == 1, "no put_hashed: put is used");

    store_lister *l = NULL;
    int n = 0, done = 0;
    rc = store_lister_open(st, "wal_005/", &l, &err);
    if (!rc)
        rc = store_lister_next(l, count, &n, &done, &err);
    CHECK(rc == 0 && n == 1 && done, "no lister: the whole list is one page");
    if (l)
        rc = store_lister_next(l, count, &n, &done, &err);
    CHECK(rc == 0 && n == 1 && done && b.lists == 1, "and only one");
    store_lister_close(l);
    CHECK(strcmp(store_url(st), "bare://") == 0, "store_url");
    bare nameless = {.base = {.ops = &bare_ops}};
    CHECK(strcmp(store_url(&nameless.base), "") == 0, "store_url of a store without one: \"\"");

    uploading u = {.base = {.ops = &uploading_ops, .url = "up://"}};
    st = &u.base;
    rc = store_upload_begin(st, "k", &up, &err);
    CHECK(rc == 0 && up == TOKEN, "upload_begin");
    rc = store_upload_part(st, up, "x", 1, &err);
    if (!rc)
        rc = store_upload_part(st, up, "y", 1, &err);
    CHECK(rc == 0 && u.parts == 2, "upload_part is told its store");
    rc = store_upload_commit(st, up, &err);
    CHECK(rc == 0 && u.commits == 1, "upload_commit likewise");
    store_upload_abort(st, up);
    CHECK(u.aborts == 1 && u.wrong_store == 0, "upload_abort likewise");
    return test_summary();
}
