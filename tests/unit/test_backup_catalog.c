/* backup_catalog over a local store wrapped to hold and count GETs: a
 * backup being indexed does not stall another backup's index, concurrent
 * wanters of one backup share one build, and a failed build is remembered
 * (three attempts, one read of the first partition). */
#include "common/hex.h"
#include "backup/backup_catalog.h"
#include "common/log.h"
#include "store/store_driver.h"
#include "tests/unit/tap.h"
#include "tests/unit/test_sh.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FIXTURE_DIR "tests/fixtures/wale-pg15-a/pgdb/basebackups_005"
#define A "base_000000010000000000000002_00000040"
#define B "base_000000010000000000000002_000000B0"
#define C "base_000000010000000000000002_000000C0"
#define PART0 "/tar_partitions/part_00000000.tar.lzo"

static char tmpdir[256];


/* ---- a store that counts GETs and can hold those of one key ---- */

typedef struct gate_store {
    store base;
    store *inner;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const char *hold_suffix;    /* GETs of a key ending so wait while held */
    int held, blocked;
    int gets_b0, gets_c0;
} gate_store;

static gate_store *gate_of(store *st)
{
    return (gate_store *)st;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int g_get(store *st, const char *key, uint64_t off, uint64_t len, store_sink_fn sink, void *ctx,
                 walfs_err *err)
{
    gate_store *g = gate_of(st);
    pthread_mutex_lock(&g->mu);
    g->gets_b0 += ends_with(key, B PART0);
    g->gets_c0 += ends_with(key, C PART0);
    if (g->hold_suffix && ends_with(key, g->hold_suffix)) {
        g->blocked++;
        pthread_cond_broadcast(&g->cv);
        while (g->held)
            pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    return store_get(g->inner, key, off, len, sink, ctx, err);
}

static int g_stat(store *st, const char *key, store_stat *out, walfs_err *err)
{
    return store_stat_key(gate_of(st)->inner, key, out, err);
}

static int g_put(store *st, const char *key, const void *body, size_t len, int64_t usize, walfs_err *err)
{
    return store_put(gate_of(st)->inner, key, body, len, usize, err);
}

static int g_list(store *st, const char *dir, store_list_fn fn, void *ctx, walfs_err *err)
{
    return store_list(gate_of(st)->inner, dir, fn, ctx, err);
}

static void g_destroy(store *st)
{
    (void)st;
}

static const store_ops gate_ops = {
    .stat = g_stat, .get = g_get, .put = g_put, .list = g_list, .destroy = g_destroy,
};

/* ---- acquiring in threads ---- */

typedef struct job {
    backup_catalog *cat;
    const char *name;
    const backup_index *idx;
    int rc, done;
    walfs_err err;
    gate_store *g;
} job;

static void *acquire_main(void *arg)
{
    job *j = arg;
    j->rc = backup_catalog_acquire(j->cat, j->name, &j->idx, &j->err);
    pthread_mutex_lock(&j->g->mu);
    j->done = 1;
    pthread_cond_broadcast(&j->g->cv);
    pthread_mutex_unlock(&j->g->mu);
    return NULL;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(64 << 20);
    *len = buf ? fread(buf, 1, (64 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[*len] = '\0';
    return buf;
}

/* The index with another format version, sealed as walfs seals it: the
 * sha256 covers everything before ,"sha256" closed with "}". */
static int write_with_version(const char *path, const char *json, const char *from, const char *to)
{
    const char *at = strstr(json, from), *tail = strstr(json, ",\"sha256\":\"");
    if (!at || !tail || at > tail)
        return -1;
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, json, (size_t)(at - json));
    EVP_DigestUpdate(ctx, to, strlen(to));
    EVP_DigestUpdate(ctx, at + strlen(from), (size_t)(tail - at) - strlen(from));
    EVP_DigestUpdate(ctx, "}", 1);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    fwrite(json, 1, (size_t)(at - json), f);
    fputs(to, f);
    fwrite(at + strlen(from), 1, (size_t)(tail - at) - strlen(from), f);
    fputs(",\"sha256\":\"", f);
    char hex[65];
    hex_encode(md, 32, hex);
    fputs(hex, f);
    fputs("\"}\n", f);
    return fclose(f) == 0 ? 0 : -1;
}

/* Waits up to secs for *flag >= want; 1 when it got there. */
static int wait_for(gate_store *g, const int *flag, int want, int secs)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += secs;
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    while (*flag < want && rc == 0)
        rc = pthread_cond_timedwait(&g->cv, &g->mu, &until);
    int ok = *flag >= want;
    pthread_mutex_unlock(&g->mu);
    return ok;
}

int main(void)
{
    walfs_log_set_level(WALFS_LOG_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/walfs-test-cat.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const char *S = "_backup_stop_sentinel.json";
    int rc = sh("set -e; d=%s/bucket/basebackups_005; mkdir -p $d %s/cache; f=" FIXTURE_DIR "; "
                "for n in " A " " B " " C "; do cp -r $f/" A " $d/$n; cp $f/" A "%s $d/${n}%s; done; "
                "p=$d/" C "/tar_partitions/part_00000001.tar.lzo; head -c $(( $(stat -c %%s $p) / 2 )) $p > $p.cut; "
                "mv $p.cut $p", tmpdir, tmpdir, S, S);
    CHECK(rc == 0, "three copies of the fixture backup, the last with a truncated last partition");
    char root[512], cache[512];
    snprintf(root, sizeof root, "%s/bucket", tmpdir);
    snprintf(cache, sizeof cache, "%s/cache", tmpdir);
    walfs_err err = {0};
    gate_store g = {0};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    if (store_local_open(root, &g.inner, &err) != 0) {
        CHECK(0, "local store: %s", err.msg);
        return test_summary();
    }
    g.base.ops = &gate_ops;
    g.base.url = g.inner->url;
    backup_catalog *cat = backup_catalog_new(&g.base, cache, &err);
    CHECK(cat != NULL, "catalog: %s", cat ? "ok" : err.msg);
    if (!cat)
        return test_summary();

    {
        backup_entry *list = NULL;
        size_t n = 0;
        int latest;
        int lrc = backup_catalog_list(cat, &list, &n, &latest, &err);
        CHECK(lrc == 0 && n == 3, "the catalog lists the 3 backups (%zu): %s", n, lrc ? err.msg : "ok");
        free(list);
    }
    /* B's first partition is held: its build waits in the middle. */
    g.hold_suffix = B PART0;
    g.held = 1;
    job jb1 = {.cat = cat, .name = B, .g = &g}, jb2 = jb1, ja = {.cat = cat, .name = A, .g = &g};
    pthread_t tb1, tb2, ta;
    pthread_create(&tb1, NULL, acquire_main, &jb1);
    CHECK(wait_for(&g, &g.blocked, 1, 10), "B's build is reading its first partition (held)%s%s",
          jb1.done ? ": it ended: " : "", jb1.done ? strerror(-jb1.rc) : "");
    pthread_create(&tb2, NULL, acquire_main, &jb2);
    pthread_create(&ta, NULL, acquire_main, &ja);
    int a_done = wait_for(&g, &ja.done, 1, 20);
    CHECK(a_done && ja.rc == 0 && ja.idx && ja.idx->n_members == 997,
          "backup A is indexed while B's build is stuck on the network (no global build lock): %s",
          a_done ? (ja.rc ? ja.err.msg : "ok") : "still waiting after 20 s");
    CHECK(!jb2.done, "a second wanter of B waits for the build in progress");
    pthread_mutex_lock(&g.mu);
    g.held = 0;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    pthread_join(tb1, NULL);
    pthread_join(tb2, NULL);
    pthread_join(ta, NULL);
    CHECK(jb1.rc == 0 && jb2.rc == 0 && jb1.idx && jb1.idx == jb2.idx && g.gets_b0 == 1,
          "both wanters of B get the one index built, from %d read of its first partition", g.gets_b0);
    backup_catalog_release(cat, ja.idx);
    backup_catalog_release(cat, jb1.idx);
    backup_catalog_release(cat, jb2.idx);

    /* C cannot be indexed: its last partition is cut. */
    int fails = 0;
    walfs_err last = {0};
    for (int i = 0; i < 3; i++) {
        const backup_index *idx = NULL;
        walfs_err e = {0};
        if (backup_catalog_acquire(cat, C, &idx, &e) == -EIO && !idx)
            fails++;
        else
            backup_catalog_release(cat, idx);
        last = e;
    }
    CHECK(fails == 3 && g.gets_c0 == 1,
          "three acquires of a backup with a truncated last partition fail (%d) after one build (%d read of "
          "its first partition)", fails, g.gets_c0);
    CHECK(strstr(last.msg, "failed") && strstr(last.msg, "have not changed") && strstr(last.msg, "part_00000001"),
          "the remembered failure says so and keeps the reason: %s", last.msg);

    backup_catalog_free(cat); /* waits for the stored indexes to be written */

    /* An index stored by a walfs of format version 1 is rebuilt from the
     * partitions (and stored again in the current format), saying so at
     * info level; the loader stops at the version, before the members. */
    char stored[600], logf[600], cache2[600];
    snprintf(stored, sizeof stored, "%s/basebackups_005/" B "/walfs_index.json", root);
    snprintf(logf, sizeof logf, "%s/log", tmpdir);
    snprintf(cache2, sizeof cache2, "%s/cache2", tmpdir);
    size_t len = 0;
    char *json = slurp(stored, &len);
    int v1 = json && write_with_version(stored, json, "\"version\":2", "\"version\":1") == 0;
    free(json);
    CHECK(v1, "B's stored index rewritten as format version 1");
    sh("mkdir -p %s", cache2);
    walfs_log_set_level(WALFS_LOG_INFO);
    walfs_log_use_file(logf);
    int before = g.gets_b0;
    backup_catalog *cat2 = backup_catalog_new(&g.base, cache2, &err);
    const backup_index *idx = NULL;
    rc = cat2 ? backup_catalog_acquire(cat2, B, &idx, &err) : -1;
    CHECK(rc == 0 && idx && idx->n_members == 997 && g.gets_b0 == before + 1,
          "a version-1 stored index is not used: the backup is indexed from its partitions (%d read): %s",
          g.gets_b0 - before, rc ? err.msg : "ok");
    if (idx)
        backup_catalog_release(cat2, idx);
    backup_catalog_free(cat2);
    walfs_log_close();
    walfs_log_set_level(WALFS_LOG_ERROR);
    char *log = slurp(logf, &len);
    int said = log && strstr(log, "INFO") && strstr(log, "from an older walfs") && strstr(log, "version 1");
    if (!said)
        printf("# log: %s\n", log ? log : "(none)");
    CHECK(said, "the log says why, at info (\"stored index of B is from an older walfs (... version 1 ...); "
                "rebuilding it\")");
    free(log);
    json = slurp(stored, &len);
    CHECK(json && strstr(json, "\"version\":2,"), "the stored index is format version 2 again");
    free(json);
    store_close(g.inner);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    sh("rm -rf %s", tmpdir);
    return test_summary();
}
