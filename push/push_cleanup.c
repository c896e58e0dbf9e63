#include "push/push_cleanup.h"

#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "wale/layout.h"

#define LEASE_MAX_AGE (7 * 24 * 3600)

int push_lease_write(store *st, const char *backup_name, walfs_err *err)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "host", json_object_new_string(host));
    json_object_object_add(o, "pid", json_object_new_int64(getpid()));
    json_object_object_add(o, "started", json_object_new_int64(time(NULL)));
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    char key[WALE_KEY_MAX];
    wale_lease_key(key, sizeof key, backup_name);
    int rc = store_put(st, key, text, strlen(text), -1, err);
    json_object_put(o);
    return rc;
}

void push_lease_remove(store *st, const char *backup_name)
{
    char key[WALE_KEY_MAX];
    wale_lease_key(key, sizeof key, backup_name);
    walfs_err err = {0};
    if (store_remove(st, key, &err) != 0 && err.code != -ENOENT)
        log_warn("could not remove the push lease %s: %s", key, err.msg);
}

typedef struct names {
    char (*v)[128];
    size_t n, cap;
} names;

static int add_name(names *l, const char *name)
{
    if (strlen(name) >= sizeof l->v[0])
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char(*grown)[128] = realloc(l->v, cap * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        l->v = grown;
        l->cap = cap;
    }
    snprintf(l->v[l->n++], sizeof l->v[0], "%s", name);
    return 0;
}

typedef struct top_listing {
    names dirs, sentinels;
} top_listing;

static int collect_top(void *ctx, const store_entry *e)
{
    top_listing *t = ctx;
    if (e->is_dir)
        return add_name(&t->dirs, e->name);
    size_t len = wale_sentinel_backup_len(e->name);
    if (len) {
        char base[128];
        snprintf(base, sizeof base, "%.*s", (int)len, e->name);
        return add_name(&t->sentinels, base);
    }
    return 0;
}

static int collect_files(void *ctx, const store_entry *e)
{
    return e->is_dir ? 0 : add_name(ctx, e->name);
}

typedef struct small {
    char buf[1024];
    size_t len;
} small;

static int keep_small(void *ctx, const void *data, size_t len)
{
    small *s = ctx;
    if (s->len + len >= sizeof s->buf)
        return -EFBIG;
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    return 0;
}

/* 1 when the lease's writer is certainly gone. */
static int lease_is_stale(const char *json)
{
    json_object *o = json_tokener_parse(json);
    json_object *host = NULL, *pid = NULL, *started = NULL;
    int stale = 0;
    if (o && json_object_object_get_ex(o, "host", &host) &&
        json_object_object_get_ex(o, "pid", &pid) &&
        json_object_object_get_ex(o, "started", &started)) {
        char me[256] = "";
        gethostname(me, sizeof me - 1);
        pid_t p = (pid_t)json_object_get_int64(pid);
        if (time(NULL) - json_object_get_int64(started) > LEASE_MAX_AGE) {
            stale = 1;
        } else if (strcmp(json_object_get_string(host), me) == 0 && p != getpid()) {
            char path[64], comm[64] = "";
            snprintf(path, sizeof path, "/proc/%d/comm", (int)p);
            FILE *f = fopen(path, "r");
            if (f) {
                if (!fgets(comm, sizeof comm, f))
                    comm[0] = '\0';
                fclose(f);
            }
            comm[strcspn(comm, "\n")] = '\0';
            stale = strcmp(comm, "walfs") != 0; /* gone, or the pid now belongs to another program */
        }
    }
    json_object_put(o);
    return stale;
}

int push_remove_leftovers(store *st, const char *name)
{
    char prefix[WALE_KEY_MAX], partitions[WALE_KEY_MAX], lease[WALE_KEY_MAX];
    walfs_err err = {0};
    wale_backup_prefix(prefix, sizeof prefix, name);
    wale_partitions_prefix(partitions, sizeof partitions, name);
    wale_lease_key(lease, sizeof lease, name);
    int left = 0;
    int rc = store_abort_uploads(st, prefix, &err);
    if (rc != 0 && rc != -ENOTSUP) { /* a store without streaming uploads has none left */
        log_warn("could not abort unfinished uploads under %s: %s", prefix, err.msg);
        left = 1;
    }
    const char *dirs[] = {partitions, prefix};
    for (size_t d = 0; d < 2; d++) {
        const char *dir = dirs[d];
        names files = {0};
        walfs_err lerr = {0};
        if (store_list(st, dir, collect_files, &files, &lerr) != 0) {
            log_warn("could not list %s: %s", dir, lerr.msg);
            left = 1;
        }
        for (size_t i = 0; i < files.n; i++) {
            char key[512];
            snprintf(key, sizeof key, "%s%s", dir, files.v[i]);
            if (strcmp(key, lease) == 0)
                continue; /* last, once nothing else is left */
            walfs_err rerr = {0};
            if (store_remove(st, key, &rerr) != 0 && rerr.code != -ENOENT) {
                log_warn("could not remove %s: %s", key, rerr.msg);
                left = 1;
            }
        }
        free(files.v);
    }
    if (left) {
        log_warn("leftovers of the unfinished base backup push %s remain; its lease %s stays, so "
                 "the next mount of walfs removes them", name, lease);
        return -EIO;
    }
    push_lease_remove(st, name);
    return 0;
}

void push_cleanup_stale(store *st)
{
    top_listing t = {0};
    walfs_err err = {0};
    int rc = store_list(st, wale_backups_prefix(), collect_top, &t, &err);
    if (rc == -ECANCELED) {
        goto out; /* unmounted first: the next mount looks again */
    } else if (rc != 0) {
        log_warn("could not look for the leftovers of unfinished base backup pushes (the next "
                 "mount looks again): %s", err.msg);
        goto out;
    }
    for (size_t i = 0; i < t.dirs.n; i++) {
        const char *name = t.dirs.v[i];
        int complete = 0;
        for (size_t j = 0; j < t.sentinels.n && !complete; j++)
            complete = strcmp(t.sentinels.v[j], name) == 0;
        char key[WALE_KEY_MAX];
        wale_lease_key(key, sizeof key, name);
        small lease = {.len = 0};
        walfs_err gerr = {0};
        if (store_get(st, key, 0, 0, keep_small, &lease, &gerr) != 0)
            continue; /* no lease: not a walfs push, or already clean */
        lease.buf[lease.len] = '\0';
        if (complete) {
            push_lease_remove(st, name); /* walfs died between the sentinel and this */
            continue;
        }
        if (!lease_is_stale(lease.buf))
            continue;
        log_warn("removing the leftovers of an unfinished base backup push %s (its walfs "
                 "process is gone)", name);
        push_remove_leftovers(st, name);
    }
out:
    free(t.dirs.v);
    free(t.sentinels.v);
}
