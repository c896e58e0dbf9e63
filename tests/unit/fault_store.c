/* The unit tests' fault-injecting store (see fault_store.h). */
#include "tests/unit/fault_store.h"

#include "store/store_driver.h"
#include "tests/unit/test_clock.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { KEPT_PART_SIZES = 64 };

typedef struct fault_rule {
    unsigned nth;       /* 0: no rule */
    int count;          /* < 0: every call from nth */
    int error;
} fault_rule;

/* fault_store_block's rule: the first matching call waits in enter(). */
typedef struct fault_hold {
    char *key_part;         /* NULL: no rule */
    unsigned generation;    /* bumped when a rule is set or removed: the held call goes on */
    int taken;              /* a call matched: later ones pass */
    int holding;            /* that call is waiting right now */
} fault_hold;

typedef struct fault_store {
    store base;
    store_ops ops;      /* per instance: the optional ops follow the inner store's */
    store *inner;
    int owns_inner;
    pthread_mutex_t mu; /* the fields below; never held across a call of inner */
    pthread_cond_t held_cv; /* a call was held or let go */
    fault_rule rules[FAULT_N_OPS];
    fault_hold holds[FAULT_N_OPS];
    unsigned delay_us[FAULT_N_OPS];
    unsigned calls[FAULT_N_OPS], failures[FAULT_N_OPS];
    uint64_t get_cut;
    uint64_t get_bytes;
    size_t part_sizes[KEPT_PART_SIZES];
} fault_store;

/* Upload and lister calls get no store *: their handles carry it. */
typedef struct fault_upload {
    fault_store *f;
    store_upload *inner;
    char *key;
} fault_upload;

typedef struct fault_lister {
    fault_store *f;
    void *inner;
    char *dir;
} fault_lister;

static const char *const op_names[FAULT_N_OPS] = {
    "HEAD", "GET", "PUT", "DELETE", "LIST", "upload_begin", "upload_part", "upload_commit",
};

static fault_store *fault_of(const store *st)
{
    return (fault_store *)st;
}

/* The first call of op matching the hold rule waits here, f->mu held,
 * until the rule is removed or replaced (the wait lets go of the lock, so
 * the test can look and release meanwhile). */
static void hold_if_asked(fault_store *f, fault_op op, const char *key)
{
    fault_hold *h = &f->holds[op];
    if (!h->key_part || h->taken || !strstr(key ? key : "", h->key_part))
        return;
    h->taken = 1;
    h->holding = 1;
    unsigned gen = h->generation;
    pthread_cond_broadcast(&f->held_cv);
    while (h->generation == gen)
        pthread_cond_wait(&f->held_cv, &f->mu);
}

/* Counts the call, holds it when asked and sleeps its delay; 0 or the
 * injected error. */
static int enter(fault_store *f, fault_op op, const char *key, size_t part_len, uint64_t *cut)
{
    pthread_mutex_lock(&f->mu);
    unsigned call = ++f->calls[op];
    if (op == FAULT_UPLOAD_PART && call <= KEPT_PART_SIZES)
        f->part_sizes[call - 1] = part_len;
    const fault_rule *r = &f->rules[op];
    int fails = r->nth && call >= r->nth && (r->count < 0 || call - r->nth < (unsigned)r->count);
    int error = fails ? r->error : 0;
    f->failures[op] += (unsigned)fails;
    unsigned delay = f->delay_us[op];
    if (cut)
        *cut = f->get_cut;
    hold_if_asked(f, op, key);
    pthread_mutex_unlock(&f->mu);
    if (delay)
        usleep(delay);
    return error;
}

static int injected(walfs_err *err, int error, fault_op op, const char *key)
{
    return walfs_err_set(err, error, "%s %s: injected failure: %s", op_names[op], key ? key : "",
                         strerror(-error));
}

static int f_stat(store *st, const char *key, store_stat *out, walfs_err *err)
{
    fault_store *f = fault_of(st);
    int e = enter(f, FAULT_STAT, key, 0, NULL);
    return e ? injected(err, e, FAULT_STAT, key) : store_stat_key(f->inner, key, out, err);
}

/* A GET that is to fail after some bytes: delivers them, then stops. */
typedef struct cut_sink {
    fault_store *f;
    store_sink_fn sink;
    void *ctx;
    uint64_t left;      /* UINT64_MAX: no cut */
    int tripped;
} cut_sink;

static int cut_sink_fn(void *ctx, const void *data, size_t len)
{
    cut_sink *c = ctx;
    size_t n = c->left < len ? (size_t)c->left : len;
    if (c->left != UINT64_MAX)
        c->left -= n;
    int rc = n ? c->sink(c->ctx, data, n) : 0;
    if (n) {
        pthread_mutex_lock(&c->f->mu);
        c->f->get_bytes += n;
        pthread_mutex_unlock(&c->f->mu);
    }
    if (rc == 0 && n < len) {
        c->tripped = 1;
        return -ECONNRESET;
    }
    return rc;
}

static int f_get(store *st, const char *key, uint64_t off, uint64_t len, store_sink_fn sink,
                 void *ctx, walfs_err *err)
{
    fault_store *f = fault_of(st);
    uint64_t cut;
    int e = enter(f, FAULT_GET, key, 0, &cut);
    if (e && cut == UINT64_MAX)
        return injected(err, e, FAULT_GET, key);
    cut_sink c = {f, sink, ctx, e ? cut : UINT64_MAX, 0};
    int rc = store_get(f->inner, key, off, len, cut_sink_fn, &c, err);
    if (c.tripped && rc == -ECONNRESET)
        return walfs_err_set(err, e, "GET %s: injected failure after %" PRIu64 " bytes: %s", key,
                             cut, strerror(-e));
    return rc;
}

static int f_put(store *st, const char *key, const void *body, size_t len, int64_t usize,
                 walfs_err *err)
{
    fault_store *f = fault_of(st);
    int e = enter(f, FAULT_PUT, key, 0, NULL);
    return e ? injected(err, e, FAULT_PUT, key) : store_put(f->inner, key, body, len, usize, err);
}

static int f_put_hashed(store *st, const char *key, const void *body, size_t len,
                        const char *sha256_hex, int64_t usize, walfs_err *err)
{
    fault_store *f = fault_of(st);
    int e = enter(f, FAULT_PUT, key, 0, NULL);
    return e ? injected(err, e, FAULT_PUT, key)
             : store_put_hashed(f->inner, key, body, len, sha256_hex, usize, err);
}

static int f_remove(store *st, const char *key, walfs_err *err)
{
    fault_store *f = fault_of(st);
    int e = enter(f, FAULT_REMOVE, key, 0, NULL);
    return e ? injected(err, e, FAULT_REMOVE, key) : store_remove(f->inner, key, err);
}

static int f_list(store *st, const char *dir, store_list_fn fn, void *ctx, walfs_err *err)
{
    fault_store *f = fault_of(st);
    int e = enter(f, FAULT_LIST, dir, 0, NULL);
    return e ? injected(err, e, FAULT_LIST, dir) : store_list(f->inner, dir, fn, ctx, err);
}

static int f_upload_begin(store *st, const char *key, store_upload **out, walfs_err *err)
{
    fault_store *f = fault_of(st);
    *out = NULL;
    int e = enter(f, FAULT_UPLOAD_BEGIN, key, 0, NULL);
    if (e)
        return injected(err, e, FAULT_UPLOAD_BEGIN, key);
    fault_upload *up = calloc(1, sizeof *up);
    if (!up || !(up->key = strdup(key))) {
        free(up);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    up->f = f;
    int rc = store_upload_begin(f->inner, key, &up->inner, err);
    if (rc) {
        free(up->key);
        free(up);
        return rc;
    }
    *out = (store_upload *)up;
    return 0;
}

static void upload_free(fault_upload *up)
{
    free(up->key);
    free(up);
}

static int f_upload_part(store *st, store_upload *handle, const void *data, size_t len, walfs_err *err)
{
    fault_upload *up = (fault_upload *)handle;
    int e = enter(up->f, FAULT_UPLOAD_PART, up->key, len, NULL);
    return e ? injected(err, e, FAULT_UPLOAD_PART, up->key)
             : store_upload_part(up->f->inner, up->inner, data, len, err);
}

static int f_upload_commit(store *st, store_upload *handle, walfs_err *err)
{
    fault_upload *up = (fault_upload *)handle;
    int e = enter(up->f, FAULT_UPLOAD_COMMIT, up->key, 0, NULL);
    int rc;
    if (e) {
        /* commit frees the upload whatever its outcome */
        store_upload_abort(up->f->inner, up->inner);
        rc = injected(err, e, FAULT_UPLOAD_COMMIT, up->key);
    } else {
        rc = store_upload_commit(up->f->inner, up->inner, err);
    }
    upload_free(up);
    return rc;
}

static void f_upload_abort(store *st, store_upload *handle)
{
    fault_upload *up = (fault_upload *)handle;
    store_upload_abort(up->f->inner, up->inner);
    upload_free(up);
}

static int f_abort_uploads(store *st, const char *dir, walfs_err *err)
{
    fault_store *f = fault_of(st);
    return store_abort_uploads(f->inner, dir, err);
}

static int f_lister_open(store *st, const char *dir, void **impl, walfs_err *err)
{
    fault_store *f = fault_of(st);
    fault_lister *l = calloc(1, sizeof *l);
    if (!l || !(l->dir = strdup(dir))) {
        free(l);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    l->f = f;
    int rc = f->inner->ops->lister_open(f->inner, dir, &l->inner, err);
    if (rc) {
        free(l->dir);
        free(l);
        return rc;
    }
    *impl = l;
    return 0;
}

static int f_lister_next(void *impl, store_list_fn fn, void *ctx, int *done, walfs_err *err)
{
    fault_lister *l = impl;
    int e = enter(l->f, FAULT_LIST, l->dir, 0, NULL);
    return e ? injected(err, e, FAULT_LIST, l->dir)
             : l->f->inner->ops->lister_next(l->inner, fn, ctx, done, err);
}

static void f_lister_close(void *impl)
{
    fault_lister *l = impl;
    l->f->inner->ops->lister_close(l->inner);
    free(l->dir);
    free(l);
}

static void f_destroy(store *st)
{
    fault_store *f = fault_of(st);
    if (f->owns_inner)
        store_close(f->inner);
    for (int op = 0; op < FAULT_N_OPS; op++)
        free(f->holds[op].key_part);
    pthread_cond_destroy(&f->held_cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* The one place that knows the driver table: every required op wraps the
 * inner store's; an optional one only when the inner store has it, so the
 * fallbacks in store/store.c behave as they would with the inner store. */
static void fill_driver(store_ops *ops, const store_ops *inner)
{
    *ops = (store_ops){
        .stat = f_stat, .get = f_get, .put = f_put, .remove = f_remove, .list = f_list,
        .destroy = f_destroy, .upload_begin = f_upload_begin, .upload_part = f_upload_part,
        .upload_commit = f_upload_commit, .upload_abort = f_upload_abort,
    };
    if (inner->put_hashed)
        ops->put_hashed = f_put_hashed;
    if (inner->abort_uploads)
        ops->abort_uploads = f_abort_uploads;
    if (inner->lister_open) {
        ops->lister_open = f_lister_open;
        ops->lister_next = f_lister_next;
        ops->lister_close = f_lister_close;
    }
}

store *fault_store_wrap(store *inner, int owns_inner)
{
    fault_store *f = calloc(1, sizeof *f);
    if (!f || !inner) {
        free(f);
        return NULL;
    }
    fill_driver(&f->ops, inner->ops);
    f->base.ops = &f->ops;
    f->base.url = inner->url;
    f->inner = inner;
    f->owns_inner = owns_inner;
    f->get_cut = UINT64_MAX;
    pthread_mutex_init(&f->mu, NULL);
    test_cond_init_monotonic(&f->held_cv);
    return &f->base;
}

store *fault_store_open_local(const char *root)
{
    store *inner = NULL;
    walfs_err err = {0};
    if (store_local_open(root, &inner, &err) != 0)
        return NULL;
    store *f = fault_store_wrap(inner, 1);
    if (!f)
        store_close(inner);
    return f;
}

store *fault_store_inner(store *fs)
{
    return fault_of(fs)->inner;
}

void fault_store_fail(store *fs, fault_op op, unsigned nth, int count, int error)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    f->rules[op] = (fault_rule){.nth = nth, .count = count, .error = error};
    pthread_mutex_unlock(&f->mu);
}

void fault_store_fail_get_after(store *fs, uint64_t bytes)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    f->get_cut = bytes;
    pthread_mutex_unlock(&f->mu);
}

void fault_store_delay(store *fs, fault_op op, unsigned delay_us)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    f->delay_us[op] = delay_us;
    pthread_mutex_unlock(&f->mu);
}

/* With f->mu held: the rule goes, and a call it holds goes on. */
static void set_hold(fault_store *f, fault_op op, const char *key_part)
{
    fault_hold *h = &f->holds[op];
    free(h->key_part);
    h->key_part = key_part ? strdup(key_part) : NULL;
    h->generation++;
    h->taken = h->holding = 0;
    pthread_cond_broadcast(&f->held_cv);
}

void fault_store_block(store *fs, fault_op op, const char *key_part)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    set_hold(f, op, key_part ? key_part : "");
    pthread_mutex_unlock(&f->mu);
}

int fault_store_wait_blocked(store *fs, fault_op op, unsigned timeout_ms)
{
    fault_store *f = fault_of(fs);
    struct timespec until = test_deadline_ms(timeout_ms);
    pthread_mutex_lock(&f->mu);
    while (!f->holds[op].holding &&
           pthread_cond_timedwait(&f->held_cv, &f->mu, &until) != ETIMEDOUT)
        ;
    int holding = f->holds[op].holding;
    pthread_mutex_unlock(&f->mu);
    return holding;
}

void fault_store_unblock(store *fs, fault_op op)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    set_hold(f, op, NULL);
    pthread_mutex_unlock(&f->mu);
}

void fault_store_reset(store *fs)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    for (int op = 0; op < FAULT_N_OPS; op++)
        set_hold(f, op, NULL);
    memset(f->rules, 0, sizeof f->rules);
    memset(f->delay_us, 0, sizeof f->delay_us);
    memset(f->calls, 0, sizeof f->calls);
    memset(f->failures, 0, sizeof f->failures);
    memset(f->part_sizes, 0, sizeof f->part_sizes);
    f->get_cut = UINT64_MAX;
    f->get_bytes = 0;
    pthread_mutex_unlock(&f->mu);
}

/* The readers take the lock too: counts are read while other threads call. */
unsigned fault_store_calls(const store *fs, fault_op op)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    unsigned n = f->calls[op];
    pthread_mutex_unlock(&f->mu);
    return n;
}

unsigned fault_store_failures(const store *fs, fault_op op)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    unsigned n = f->failures[op];
    pthread_mutex_unlock(&f->mu);
    return n;
}

uint64_t fault_store_get_bytes(const store *fs)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    uint64_t n = f->get_bytes;
    pthread_mutex_unlock(&f->mu);
    return n;
}

size_t fault_store_part_size(const store *fs, unsigned i)
{
    fault_store *f = fault_of(fs);
    pthread_mutex_lock(&f->mu);
    size_t n = i < KEPT_PART_SIZES ? f->part_sizes[i] : 0;
    pthread_mutex_unlock(&f->mu);
    return n;
}
