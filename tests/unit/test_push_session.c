/* push/push_session.h through its API alone (no FUSE, no S3): the local
 * store behind the fault store.  A data directory written into a push
 * becomes a WAL-E backup when the directory is renamed (cp -a / rsync) or
 * backup_manifest.tmp is renamed (pg_basebackup); a store that fails
 * latches the error and publishes nothing; while one push's completion is
 * inside store I/O, the other pushes and the listing still answer at once
 * (issue 11: with one lock held across the upload they waited for it);
 * EEXIST, ENOENT and abandoning by rmdir.  Run from the repository root;
 * needs lzop and tar on PATH. */
#include "push/push_session.h"

#include "common/log.h"
#include "tests/unit/fault_store.h"
#include "tests/unit/tap.h"
#include "common/buf.h"
#include "tests/unit/test_clock.h"
#include "tests/unit/test_files.h"
#include "tests/unit/test_sh.h"
#include "wale/layout.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (128u * 1024u)
#define BIG_SIZE (2u * CHUNK + 64u * 1024u + 77u)   /* > 256 KiB: three writes */
#define OOO_PIECE (64u * 1024u)
#define OOO_SIZE (3u * OOO_PIECE)
#define CONTROL_SIZE 8192u
/* How long a call may take while another push completes, and how long the
 * test waits before it calls it stuck (then releases the store). */
#define QUICK_MS 100.0
#define STUCK_MS 2000u

/* ---- a store, a spool and a registry per test ---- */

typedef struct env {
    char root[64];      /* the local store's directory */
    char spool[64];
    store *fs;          /* the fault store around it */
    push_registry *reg;
} env;

static int env_open(env *e, const backup_writer_limits *limits)
{
    memset(e, 0, sizeof *e);
    snprintf(e->root, sizeof e->root, "/tmp/walfs-push-store.XXXXXX");
    snprintf(e->spool, sizeof e->spool, "/tmp/walfs-push-spool.XXXXXX");
    if (!mkdtemp(e->root) || !mkdtemp(e->spool))
        return -1;
    e->fs = fault_store_open_local(e->root);
    if (!e->fs)
        return -1;
    push_settings ps = {.spool_dir = e->spool, .spool_max_bytes = 64u << 20,
                        .reorder_max_bytes = 8u << 20};
    if (limits)
        ps.limits = *limits;
    walfs_err err = {0};
    e->reg = push_registry_new(e->fs, &ps, getuid(), getgid(), &err);
    if (!e->reg || push_registry_start(e->reg, &err) != 0) {
        fprintf(stderr, "push registry: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static void env_close(env *e);

/* env_open, or a failed check and everything undone. */
static int env_up(env *e, const backup_writer_limits *limits)
{
    if (env_open(e, limits) == 0)
        return 0;
    CHECK(0, "set up a store and a registry");
    env_close(e);
    return -1;
}

static void env_close(env *e)
{
    push_registry_free(e->reg);
    if (e->fs) {
        fault_store_reset(e->fs);
        store_close(e->fs);
    }
    sh("rm -rf '%s' '%s'", e->root, e->spool);
}

/* Whether the store holds key (asked of the inner store: not counted). */
static int stored(env *e, const char *key)
{
    store_stat st;
    walfs_err err = {0};
    return store_stat_key(fault_store_inner(e->fs), key, &st, &err) == 0;
}

static int backups_files(env *e)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", e->root, WALE_BASEBACKUPS_DIR);
    return count_files(p, NULL, 0);
}

/* Removal may be done off the caller's thread: waits up to 5 s for it. */
static int backups_emptied(env *e)
{
    double until = test_now_ms() + 5000;
    while (backups_files(e) != 0 && test_now_ms() < until)
        usleep(10 * 1000);
    return backups_files(e);
}

static int wait_stored(env *e, const char *key)
{
    double until = test_now_ms() + 5000;
    while (!stored(e, key) && test_now_ms() < until)
        usleep(10 * 1000);
    return stored(e, key);
}

/* ---- a data directory ---- */

static unsigned char big[BIG_SIZE], ooo[OOO_SIZE], control[CONTROL_SIZE];

static void make_data(void)
{
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < BIG_SIZE; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* a relation's pages: some noise, mostly repeats */
        big[i] = i % 8192 < 24 ? (unsigned char)x : (unsigned char)("walfs-page\n"[i % 11]);
    }
    for (size_t i = 0; i < OOO_SIZE; i++)
        ooo[i] = (unsigned char)(i / OOO_PIECE * 37 + i % 251);
}

/* ControlFileData's head as pg/pg_control.h reads it: the latest
 * checkpoint's LSN at byte 32, its timeline at 48 (host order). */
static void make_control(uint64_t checkpoint, uint32_t timeline)
{
    memset(control, 0, sizeof control);
    uint64_t sysid = 7301234567890123456ull;
    uint32_t version = 1300, catversion = 202209061, state = 6; /* in production */
    memcpy(control, &sysid, 8);
    memcpy(control + 8, &version, 4);
    memcpy(control + 12, &catversion, 4);
    memcpy(control + 16, &state, 4);
    memcpy(control + 32, &checkpoint, 8);
    memcpy(control + 40, &checkpoint, 8); /* checkPointCopy.redo */
    memcpy(control + 48, &timeline, 4);
    memcpy(control + 52, &timeline, 4);   /* PrevTimeLineID */
}

static void label_text(char *out, size_t len, unsigned segment)
{
    snprintf(out, len,
             "START WAL LOCATION: 0/%X000028 (file 0000000100000000000000%02X)\n"
             "CHECKPOINT LOCATION: 0/%X000060\n"
             "BACKUP METHOD: streamed\n"
             "BACKUP FROM: primary\n"
             "START TIME: 2026-12-03 00:25:00 UTC\n"
             "LABEL: pg_basebackup base backup\n"
             "START TIMELINE: 1\n",
             segment, segment, segment);
}

static void backup_name_of(char *out, size_t len, unsigned segment)
{
    snprintf(out, len, "base_0000000100000000000000%02X_00000040", segment);
}

/* Creates rel and writes data in order, chunk bytes a call; the first
 * error of create, write or flush (0 if none). */
static int put_file(push_registry *reg, const char *rel, const void *data, size_t len,
                    size_t chunk)
{
    void *h = NULL;
    int rc = push_create(reg, rel, 0600, NULL, &h);
    if (rc)
        return rc;
    for (size_t off = 0; off < len && rc >= 0; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        rc = push_write(reg, h, (const char *)data + off, n, (off_t)off);
        if (rc >= 0 && (size_t)rc != n)
            rc = -EIO;
    }
    if (rc >= 0)
        rc = push_flush(reg, h);
    push_release(reg, h);
    return rc < 0 ? rc : 0;
}

/* ooo written piece 1, then 2, then 0: what parallel writeback does. */
static int put_ooo(push_registry *reg, const char *rel)
{
    void *h = NULL;
    int rc = push_create(reg, rel, 0600, NULL, &h);
    if (rc)
        return rc;
    static const unsigned order[] = {1, 2, 0};
    for (size_t i = 0; i < 3 && rc >= 0; i++) {
        size_t off = order[i] * OOO_PIECE;
        rc = push_write(reg, h, (const char *)ooo + off, OOO_PIECE, (off_t)off);
    }
    if (rc >= 0)
        rc = push_flush(reg, h);
    push_release(reg, h);
    return rc < 0 ? rc : 0;
}

/* A data directory as pg_basebackup or rsync writes it into dir, the label
 * first, starting in WAL segment 1/segment.  The first error (0 if none). */
static int write_datadir(push_registry *reg, const char *dir, unsigned segment)
{
    char p[256], label[1024];
    int first = 0, rc;
#define STEP(call)                                                                          \
    do {                                                                                    \
        rc = (call);                                                                        \
        if (rc && !first)                                                                   \
            first = rc;                                                                     \
    } while (0)
    STEP(push_mkdir(reg, dir, 0700, NULL));
    label_text(label, sizeof label, segment);
    snprintf(p, sizeof p, "%s/backup_label", dir);
    STEP(put_file(reg, p, label, strlen(label), 4096));
    snprintf(p, sizeof p, "%s/PG_VERSION", dir);
    STEP(put_file(reg, p, "15\n", 3, 4096));
    snprintf(p, sizeof p, "%s/global", dir);
    STEP(push_mkdir(reg, p, 0700, NULL));
    make_control(((uint64_t)segment << 24) | 0x60, 1);
    snprintf(p, sizeof p, "%s/global/pg_control", dir);
    STEP(put_file(reg, p, control, sizeof control, CONTROL_SIZE));
    snprintf(p, sizeof p, "%s/base", dir);
    STEP(push_mkdir(reg, p, 0700, NULL));
    snprintf(p, sizeof p, "%s/base/1", dir);
    STEP(push_mkdir(reg, p, 0700, NULL));
    snprintf(p, sizeof p, "%s/base/1/1259", dir);
    STEP(put_file(reg, p, big, sizeof big, CHUNK));
    snprintf(p, sizeof p, "%s/base/1/1249", dir);
    STEP(put_ooo(reg, p));
    snprintf(p, sizeof p, "%s/base/1/PG_VERSION", dir);
    STEP(put_file(reg, p, "15\n", 3, 4096));
    snprintf(p, sizeof p, "%s/pg_tblspc", dir);
    STEP(push_mkdir(reg, p, 0700, NULL));
    snprintf(p, sizeof p, "%s/pg_tblspc/16385", dir);
    STEP(push_symlink(reg, "/srv/tblspc/fast", p, NULL));
#undef STEP
    return first;
}

/* ---- reading the backup back ---- */

static char *read_cmd(const char *cmd, size_t *len)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return NULL;
    walfs_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    int st = pclose(f);
    if (st != 0 || b.err || buf_reserve(&b, 1) != 0) {
        buf_free(&b);
        return NULL;
    }
    return buf_take(&b, len); /* NUL-terminated (common/buf.h) */
}

static void partition_path(env *e, const char *name, char *out, size_t len)
{
    char key[WALE_KEY_MAX];
    wale_partition_key(key, sizeof key, name, 0);
    snprintf(out, len, "%s/%s", e->root, key);
}

/* Partition 0 as tar lists it (verbose: tar tv), one member a line. */
static char *partition_listing(env *e, const char *name, int verbose)
{
    char path[640], cmd[1024];
    size_t len;
    partition_path(e, name, path, sizeof path);
    snprintf(cmd, sizeof cmd, "lzop -dc < '%s' | tar t%sf - 2>/dev/null", path,
             verbose ? "v" : "");
    return read_cmd(cmd, &len);
}

static char *partition_names(env *e, const char *name)
{
    return partition_listing(e, name, 0);
}

static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
            return 1;
    return 0;
}

/* Whether member holds exactly data. */
static int member_is(env *e, const char *name, const char *member, const void *data, size_t len)
{
    char path[640], cmd[1024];
    size_t got = 0;
    partition_path(e, name, path, sizeof path);
    snprintf(cmd, sizeof cmd, "lzop -dc < '%s' | tar xOf - '%s' 2>/dev/null", path, member);
    char *out = read_cmd(cmd, &got);
    int same = out && got == len && memcmp(out, data, len) == 0;
    if (!same)
        printf("# %s: %zu bytes read back, %zu expected\n", member, got, len);
    free(out);
    return same;
}

/* A string field of the backup's sentinel ("" when missing). */
static void sentinel_field(env *e, const char *name, const char *field, char *out, size_t len)
{
    char key[WALE_KEY_MAX], path[640], cmd[1024];
    wale_sentinel_key(key, sizeof key, name);
    snprintf(path, sizeof path, "%s/%s", e->root, key);
    snprintf(cmd, sizeof cmd, "cat '%s'", path);
    size_t n;
    char *text = read_cmd(cmd, &n);
    json_object *o = text ? json_tokener_parse(text) : NULL, *v = NULL;
    snprintf(out, len, "%s",
             o && json_object_object_get_ex(o, field, &v) ? json_object_get_string(v) : "");
    json_object_put(o);
    free(text);
}

static int sentinel_stored(env *e, const char *name)
{
    char key[WALE_KEY_MAX];
    wale_sentinel_key(key, sizeof key, name);
    return stored(e, key);
}

/* The sentinel says the backup stops in segment at offset. */
static void check_stop(env *e, const char *name, const char *segment, const char *offset,
                       const char *why)
{
    char got_segment[64], got_offset[64];
    sentinel_field(e, name, "wal_segment_backup_stop", got_segment, sizeof got_segment);
    sentinel_field(e, name, "wal_segment_offset_backup_stop", got_offset, sizeof got_offset);
    CHECK(strcmp(got_segment, segment) == 0 && strcmp(got_offset, offset) == 0,
          "the sentinel stops at %s (%s, %s)", why, got_segment, got_offset);
}

/* A fresh store and registry with the data directory of a backup starting
 * in segment 1/2 written into incoming; *name is the backup's.  -1 when
 * there is no store to test with. */
static int incoming_written(env *e, const backup_writer_limits *limits, char *name, size_t len)
{
    if (env_up(e, limits) != 0)
        return -1;
    backup_name_of(name, len, 2);
    CHECK(write_datadir(e->reg, "incoming", 2) == 0, "the data directory goes into incoming");
    return 0;
}

/* ---- listings ---- */

typedef struct names {
    int count;
    char seen[512];     /* "|a|b|" */
} names;

static int collect(void *ctx, const char *name, const struct stat *st)
{
    names *n = ctx;
    n->count++;
    size_t l = strlen(n->seen);
    snprintf(n->seen + l, sizeof n->seen - l, "%s%s|", l ? "" : "|", name);
    return 0;
}

static int listed(const names *n, const char *name)
{
    char pat[128];
    snprintf(pat, sizeof pat, "|%s|", name);
    return strstr(n->seen, pat) != NULL;
}

/* ---- 1. a whole push, completed by renaming its directory ---- */

static void test_rename_completes(void)
{
    printf("# a data directory copied in (cp -a, rsync) and completed by mv incoming done\n");
    env e;
    char name[64];
    if (incoming_written(&e, NULL, name, sizeof name) != 0)
        return;
    push_registry *reg = e.reg;
    CHECK(push_is_session(reg, "incoming") == 1 && push_is_session(reg, "incoming/base/1") == 1,
          "incoming is a push");
    struct stat st;
    CHECK(push_getattr(reg, "incoming/base/1/1259", &st) == 0 && S_ISREG(st.st_mode) &&
              st.st_size == BIG_SIZE,
          "the big file shows its size while the push goes on (%lld)", (long long)st.st_size);
    CHECK(push_getattr(reg, "incoming/base/1/1249", &st) == 0 && st.st_size == OOO_SIZE,
          "so does the one written out of order");
    char target[64] = "";
    CHECK(push_readlink(reg, "incoming/pg_tblspc/16385", target, sizeof target) == 0 &&
              strcmp(target, "/srv/tblspc/fast") == 0,
          "the symlink reads back");
    names top = {0}, sessions = {0};
    CHECK(push_readdir(reg, "incoming", collect, &top) == 0 && listed(&top, "backup_label") &&
              listed(&top, "base") && listed(&top, "global") && listed(&top, "PG_VERSION") &&
              listed(&top, "pg_tblspc") && !listed(&top, "1259"),
          "readdir of incoming shows its top level: %s", top.seen);
    push_list_sessions(reg, collect, &sessions);
    CHECK(listed(&sessions, "incoming"), "incoming is listed as a push in progress");
    char lease[WALE_KEY_MAX];
    wale_lease_key(lease, sizeof lease, name);
    CHECK(stored(&e, lease), "the label named the backup %s and its lease is stored", name);

    int completed = -1;
    double t0 = test_now_ms();
    int rc = push_rename(reg, "incoming", "done", &completed);
    CHECK(rc == 0 && completed == 1, "mv incoming done completes the push (rc %d, completed %d, "
          "%.1f ms)", rc, completed, test_now_ms() - t0);
    CHECK(sentinel_stored(&e, name), "the sentinel %s_backup_stop_sentinel.json is stored", name);
    char key[WALE_KEY_MAX];
    wale_partition_key(key, sizeof key, name, 0);
    CHECK(stored(&e, key), "%s is stored", key);
    wale_partition_key(key, sizeof key, name, 1);
    CHECK(!stored(&e, key), "in one partition");
    wale_extended_version_key(key, sizeof key, name);
    char path[640], cmd[1024];
    snprintf(path, sizeof path, "%s/%s", e.root, key);
    snprintf(cmd, sizeof cmd, "cat '%s'", path);
    size_t n = 0;
    char *version = read_cmd(cmd, &n);
    CHECK(version && strcmp(version, "PostgreSQL 15") == 0,
          "extended_version.txt says PostgreSQL 15 (%s)", version ? version : "missing");
    free(version);
    CHECK(!stored(&e, lease), "the lease is gone");
    check_stop(&e, name, "000000010000000000000002", "00000096",
               "pg_control's checkpoint 0/2000060");

    char *members = partition_names(&e, name);
    CHECK(members != NULL, "partition 0 decompresses and lists with lzop and tar");
    static const char *const want[] = {
        "/", "backup_label", "PG_VERSION", "global/", "global/pg_control", "base/", "base/1/",
        "base/1/1259", "base/1/1249", "base/1/PG_VERSION", "pg_tblspc/", "pg_tblspc/16385",
    };
    int all = members != NULL;
    for (size_t i = 0; members && i < sizeof want / sizeof want[0]; i++)
        if (!has_line(members, want[i])) {
            printf("# %s is not in the partition\n", want[i]);
            all = 0;
        }
    CHECK(all, "every file, directory and the symlink is a member");
    if (!all && members)
        printf("# members:\n%s", members);
    free(members);
    members = partition_listing(&e, name, 1);
    CHECK(members && strstr(members, "pg_tblspc/16385 -> /srv/tblspc/fast\n"),
          "the symlink is one, to its target");
    free(members);
    CHECK(member_is(&e, name, "base/1/1259", big, sizeof big),
          "the file written in 128 KiB chunks reads back byte for byte");
    CHECK(member_is(&e, name, "base/1/1249", ooo, sizeof ooo),
          "the file written out of order reads back byte for byte");
    CHECK(member_is(&e, name, "global/pg_control", control, sizeof control),
          "pg_control reads back byte for byte");

    sessions = (names){0};
    push_list_sessions(reg, collect, &sessions);
    CHECK(!listed(&sessions, "done") && !listed(&sessions, "incoming"),
          "a completed push is no longer listed as in progress (%s)", sessions.seen);
    CHECK(push_getattr(reg, "done", &st) == 0 && S_ISDIR(st.st_mode),
          "its directory stays, under its new name");
    CHECK(push_getattr(reg, "done/PG_VERSION", &st) == -ENOENT,
          "and shows nothing inside any more");
    env_close(&e);
}

/* ---- 2. pg_basebackup's way: backup_manifest.tmp renamed ---- */

static void test_manifest_completes(void)
{
    printf("# pg_basebackup: backup_manifest.tmp renamed to backup_manifest completes it\n");
    env e;
    char name[64];
    if (incoming_written(&e, NULL, name, sizeof name) != 0)
        return;
    push_registry *reg = e.reg;
    static const char manifest[] =
        "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n"
        "\"Files\": [\n"
        "{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-12-03 00:25:00 GMT\", "
        "\"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"6c3ec6f4\" }\n"
        "],\n"
        "\"WAL-Ranges\": [\n"
        "{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n"
        "],\n"
        "\"Manifest-Checksum\": "
        "\"8a3b7c1e2f4d5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b\"}\n";
    CHECK(put_file(reg, "incoming/backup_manifest.tmp", manifest, strlen(manifest), 4096) == 0,
          "backup_manifest.tmp is written");
    CHECK(!sentinel_stored(&e, name), "no sentinel before the manifest's rename");
    int completed = -1;
    int rc = push_rename(reg, "incoming/backup_manifest.tmp", "incoming/backup_manifest",
                         &completed);
    CHECK(rc == 0 && completed == 1, "the rename completes the push (rc %d, completed %d)", rc,
          completed);
    CHECK(sentinel_stored(&e, name), "the sentinel is stored");
    check_stop(&e, name, "000000010000000000000002", "00000256",
               "the manifest's End-LSN 0/2000100");
    char *members = partition_names(&e, name);
    CHECK(members && has_line(members, "backup_label") && has_line(members, "base/1/1259") &&
              has_line(members, "backup_manifest") && !has_line(members, "backup_manifest.tmp"),
          "the partition holds the data directory and backup_manifest");
    free(members);
    CHECK(member_is(&e, name, "backup_manifest", manifest, strlen(manifest)),
          "backup_manifest reads back byte for byte");
    struct stat st;
    CHECK(push_getattr(reg, "incoming/backup_manifest", &st) == 0,
          "backup_manifest still shows, for pg_basebackup's fsync of it");
    CHECK(push_getattr(reg, "incoming/PG_VERSION", &st) == -ENOENT,
          "nothing else does (the same pg_basebackup -D can run again)");
    env_close(&e);
}

/* ---- 3. a failing store: latched, nothing published ---- */

static void test_latched(void)
{
    printf("# a store failing PUTs at completion: the rename fails, the error is latched\n");
    env e;
    char name[64];
    if (incoming_written(&e, NULL, name, sizeof name) != 0)
        return;
    push_registry *reg = e.reg;
    void *h = NULL;
    CHECK(push_open(reg, "incoming/PG_VERSION", O_RDONLY, NULL, &h) == 0,
          "a file stays open across the completion");
    CHECK(h && push_flush(reg, h) == 0, "its flush is fine before");
    fault_store_fail(e.fs, FAULT_PUT, fault_store_calls(e.fs, FAULT_PUT) + 1, -1, -EIO);
    int completed = -1;
    int rc = push_rename(reg, "incoming", "done", &completed);
    CHECK(rc < 0 && completed == 0, "the completing rename fails (rc %d, completed %d)", rc,
          completed);
    CHECK(fault_store_failures(e.fs, FAULT_PUT) >= 1, "a PUT failed (%u)",
          fault_store_failures(e.fs, FAULT_PUT));
    int frc = h ? push_flush(reg, h) : 0;
    CHECK(frc == rc, "a later flush of the open file returns the same error (%d)", frc);
    if (h)
        push_release(reg, h);
    completed = -1;
    int again = push_rename(reg, "incoming", "done", &completed);
    CHECK(again == rc && completed == 0, "so does renaming it again (%d)", again);
    CHECK(!sentinel_stored(&e, name), "no sentinel was published");
    CHECK(backups_emptied(&e) == 0, "nothing of the backup is left in the store");
    env_close(&e);

    printf("# a store failing every PUT: the push fails when the label names it\n");
    if (env_up(&e, NULL) != 0)
        return;
    reg = e.reg;
    fault_store_fail(e.fs, FAULT_PUT, 1, -1, -EIO);
    write_datadir(reg, "incoming", 2);
    completed = -1;
    rc = push_rename(reg, "incoming", "done", &completed);
    CHECK(rc < 0 && completed == 0, "the completing rename fails (rc %d)", rc);
    CHECK(!sentinel_stored(&e, name), "no sentinel was published");
    CHECK(backups_emptied(&e) == 0, "nothing is left in the store");
    env_close(&e);
}

/* ---- 4. other pushes answer while one completion is in store I/O ---- */

enum probe_kind {
    PROBE_GETATTR, PROBE_IS_SESSION, PROBE_MKDIR, PROBE_LIST, PROBE_READDIR, PROBE_WRITE,
    N_PROBES
};

static const char *const probe_names[N_PROBES] = {
    "push_getattr of another push's file", "push_is_session of another push",
    "push_mkdir of a new push",            "push_list_sessions",
    "push_readdir of another push",        "push_create/write/release in another push",
};

typedef struct probe_set probe_set;

typedef struct probe {
    probe_set *set;
    enum probe_kind kind;
    int rc;
    names seen;
    struct stat st;
    double ms;          /* from the set's start to the call's return */
    int done;
    pthread_t th;
    int started;
} probe;

struct probe_set {
    push_registry *reg;
    const char *new_push;   /* PROBE_MKDIR's */
    const char *new_file;   /* PROBE_WRITE's */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    double t0;
    probe probes[N_PROBES];
};

static void *probe_main(void *arg)
{
    probe *p = arg;
    probe_set *s = p->set;
    switch (p->kind) {
    case PROBE_GETATTR:
        p->rc = push_getattr(s->reg, "other/PG_VERSION", &p->st);
        break;
    case PROBE_IS_SESSION:
        p->rc = push_is_session(s->reg, "other/base") == 1 ? 0 : -1;
        break;
    case PROBE_MKDIR:
        p->rc = push_mkdir(s->reg, s->new_push, 0700, NULL);
        break;
    case PROBE_LIST:
        push_list_sessions(s->reg, collect, &p->seen);
        p->rc = listed(&p->seen, "other") ? 0 : -1;
        break;
    case PROBE_READDIR:
        p->rc = push_readdir(s->reg, "other", collect, &p->seen);
        if (!p->rc && !listed(&p->seen, "PG_VERSION"))
            p->rc = -1;
        break;
    case PROBE_WRITE:
        p->rc = put_file(s->reg, s->new_file, "relation page\n", 14, 4096);
        break;
    default:
        break;
    }
    pthread_mutex_lock(&s->mu);
    p->ms = test_now_ms() - s->t0;
    p->done = 1;
    s->done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

typedef struct renamer {
    push_registry *reg;
    const char *from, *to;
    int rc, completed;
    double ms;
} renamer;

static void *rename_main(void *arg)
{
    renamer *r = arg;
    double t0 = test_now_ms();
    r->rc = push_rename(r->reg, r->from, r->to, &r->completed);
    r->ms = test_now_ms() - t0;
    return NULL;
}

/* Waits until every probe returned or STUCK_MS passed; the number done. */
static int wait_probes(probe_set *s)
{
    struct timespec until = test_deadline_ms(STUCK_MS);
    pthread_mutex_lock(&s->mu);
    while (s->done < N_PROBES && pthread_cond_timedwait(&s->cv, &s->mu, &until) != ETIMEDOUT)
        ;
    int done = s->done;
    pthread_mutex_unlock(&s->mu);
    return done;
}

/* Completes push dir (its data already in) with op's call on the backup's
 * key ending in key_tail held in the store, and meanwhile calls into the
 * other push and the registry from other threads. */
static void concurrency_round(env *e, const char *dir, unsigned segment, fault_op op,
                              const char *key_tail, const char *held, const char *tag)
{
    push_registry *reg = e->reg;
    char name[64], to[64], new_push[64], new_file[64], key_part[128];
    backup_name_of(name, sizeof name, segment);
    snprintf(key_part, sizeof key_part, "%s%s", name, key_tail);
    snprintf(to, sizeof to, "%s.done", dir);
    snprintf(new_push, sizeof new_push, "new_%s", tag);
    snprintf(new_file, sizeof new_file, "other/base/1/%s", tag);
    printf("# %s held in the store while %s completes\n", held, dir);

    fault_store_block(e->fs, op, key_part);
    renamer r = {.reg = reg, .from = dir, .to = to, .rc = 1, .completed = -1};
    pthread_t rt;
    if (pthread_create(&rt, NULL, rename_main, &r) != 0) {
        CHECK(0, "start the completing rename");
        fault_store_unblock(e->fs, op);
        return;
    }
    int blocked = fault_store_wait_blocked(e->fs, op, 10000);
    CHECK(blocked, "the completion reached %s and waits there", held);

    probe_set s = {.reg = reg, .new_push = new_push, .new_file = new_file};
    pthread_mutex_init(&s.mu, NULL);
    test_cond_init_monotonic(&s.cv);
    if (blocked) {
        s.t0 = test_now_ms();
        for (int k = 0; k < N_PROBES; k++) {
            probe *p = &s.probes[k];
            p->set = &s;
            p->kind = (enum probe_kind)k;
            p->rc = 1;
            p->started = pthread_create(&p->th, NULL, probe_main, p) == 0;
            if (!p->started) {
                pthread_mutex_lock(&s.mu);
                s.done++;
                pthread_mutex_unlock(&s.mu);
            }
        }
        wait_probes(&s);
        CHECK(fault_store_wait_blocked(e->fs, op, 0), "the completion was held all along");
        pthread_mutex_lock(&s.mu);
        int done[N_PROBES];
        double ms[N_PROBES];
        for (int k = 0; k < N_PROBES; k++) {
            done[k] = s.probes[k].done;
            ms[k] = s.probes[k].ms;
        }
        pthread_mutex_unlock(&s.mu);
        for (int k = 0; k < N_PROBES; k++) {
            if (done[k])
                CHECK(ms[k] < QUICK_MS, "%s returns within %.0f ms: %.1f ms", probe_names[k],
                      QUICK_MS, ms[k]);
            else
                CHECK(0, "%s returns within %.0f ms: still waiting after %u ms", probe_names[k],
                      QUICK_MS, STUCK_MS);
        }
    }
    double released = test_now_ms();
    fault_store_unblock(e->fs, op);
    for (int k = 0; blocked && k < N_PROBES; k++)
        if (s.probes[k].started)
            pthread_join(s.probes[k].th, NULL);
    pthread_join(rt, NULL);
    if (blocked)
        for (int k = 0; k < N_PROBES; k++)
            if (s.probes[k].ms >= STUCK_MS)
                printf("# %s returned %.1f ms after the store was released\n", probe_names[k],
                       s.probes[k].ms - (released - s.t0));
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    printf("# the completing rename took %.1f ms\n", r.ms);
    CHECK(r.rc == 0 && r.completed == 1, "once released, the rename completes %s (rc %d)", dir,
          r.rc);
    CHECK(sentinel_stored(e, name), "its sentinel is stored");
    if (!blocked)
        return;
    probe *p = s.probes;
    CHECK(p[PROBE_GETATTR].rc == 0 && S_ISREG(p[PROBE_GETATTR].st.st_mode) &&
              p[PROBE_GETATTR].st.st_size == 3,
          "the getattr saw other/PG_VERSION (rc %d)", p[PROBE_GETATTR].rc);
    CHECK(p[PROBE_IS_SESSION].rc == 0, "other was a push");
    CHECK(p[PROBE_MKDIR].rc == 0 && push_is_session(reg, new_push) == 1,
          "%s was made (rc %d)", new_push, p[PROBE_MKDIR].rc);
    CHECK(p[PROBE_LIST].rc == 0, "the listing showed other (%s)", p[PROBE_LIST].seen.seen);
    CHECK(p[PROBE_READDIR].rc == 0, "the readdir of other showed its files (%s)",
          p[PROBE_READDIR].seen.seen);
    struct stat st;
    CHECK(p[PROBE_WRITE].rc == 0 && push_getattr(reg, new_file, &st) == 0 && st.st_size == 14,
          "%s was written (rc %d)", new_file, p[PROBE_WRITE].rc);
    CHECK(push_rmdir(reg, new_push) == 0 && push_is_session(reg, new_push) == 0,
          "%s is removed again", new_push);
}

static void test_concurrency(void)
{
    printf("# issue 11: one push's completion in store I/O holds up no one else\n");
    env e;
    if (env_up(&e, NULL) != 0)
        return;
    push_registry *reg = e.reg;
    CHECK(write_datadir(reg, "other", 9) == 0, "another push, other, is under way");
    CHECK(write_datadir(reg, "first", 2) == 0 && write_datadir(reg, "second", 3) == 0,
          "two more pushes have their data in");
    concurrency_round(&e, "first", 2, FAULT_UPLOAD_COMMIT, "/tar_partitions/",
                      "the partition's upload commit", "a");
    concurrency_round(&e, "second", 3, FAULT_PUT, "_backup_stop_sentinel.json",
                      "the sentinel's PUT", "b");
    /* other still completes, with the files written into it meanwhile */
    int completed = -1;
    int rc = push_rename(reg, "other", "other.done", &completed);
    CHECK(rc == 0 && completed == 1, "other completes afterwards (rc %d)", rc);
    char name[64];
    backup_name_of(name, sizeof name, 9);
    char *members = sentinel_stored(&e, name) ? partition_names(&e, name) : NULL;
    CHECK(members && has_line(members, "base/1/1259"), "with its files");
    free(members);
    env_close(&e);
}

/* ---- 5. errors ---- */

static void test_errors(void)
{
    printf("# a backup of the same name exists already: EEXIST, and it is left alone\n");
    env e;
    if (env_up(&e, NULL) != 0)
        return;
    push_registry *reg = e.reg;
    char name[64], key[WALE_KEY_MAX];
    backup_name_of(name, sizeof name, 2);
    int completed = -1;
    CHECK(write_datadir(reg, "incoming", 2) == 0 &&
              push_rename(reg, "incoming", "done", &completed) == 0 && completed == 1,
          "a first push of %s completes", name);
    int before = backups_files(&e);
    write_datadir(reg, "again", 2);
    completed = -1;
    int rc = push_rename(reg, "again", "again.done", &completed);
    CHECK(rc == -EEXIST && completed == 0, "pushing the same backup again fails with EEXIST (%d)",
          rc);
    wale_partition_key(key, sizeof key, name, 0);
    CHECK(sentinel_stored(&e, name) && stored(&e, key) && backups_files(&e) == before,
          "the first backup is untouched (%d objects, %d before)", backups_files(&e), before);
    CHECK(member_is(&e, name, "base/1/1259", big, sizeof big), "and still reads back");

    printf("# paths that are not there: ENOENT\n");
    struct stat st;
    void *h = NULL;
    char link[64];
    names n = {0};
    CHECK(push_mkdir(reg, "live", 0700, NULL) == 0, "a push in progress, live");
    CHECK(push_is_session(reg, "nosuch") == 0, "push_is_session of no push is 0");
    CHECK(push_getattr(reg, "nosuch", &st) == -ENOENT, "getattr of no push");
    CHECK(push_getattr(reg, "live/nosuch", &st) == -ENOENT, "getattr of nothing in a push");
    CHECK(push_readdir(reg, "nosuch", collect, &n) == -ENOENT, "readdir of no push");
    CHECK(push_mkdir(reg, "nosuch/sub", 0700, NULL) == -ENOENT, "mkdir inside no push");
    CHECK(push_mkdir(reg, "live/no/sub", 0700, NULL) == -ENOENT,
          "mkdir under a missing directory");
    CHECK(push_create(reg, "nosuch/file", 0600, NULL, &h) == -ENOENT, "create inside no push");
    CHECK(push_open(reg, "live/nosuch", O_RDONLY, NULL, &h) == -ENOENT, "open of nothing");
    CHECK(push_readlink(reg, "live/nosuch", link, sizeof link) == -ENOENT, "readlink of nothing");
    completed = -1;
    CHECK(push_rename(reg, "nosuch", "x", &completed) == -ENOENT && completed == 0,
          "rename of no push");
    CHECK(push_unlink(reg, "live/nosuch") == -ENOENT, "unlink of nothing");
    CHECK(push_rmdir(reg, "nosuch") == -ENOENT, "rmdir of no push");
    env_close(&e);

    printf("# rm -rf of a push abandons it and removes what it uploaded\n");
    /* Two members a partition: partition 0 is uploaded while the push goes on. */
    backup_writer_limits small = {.max_partition_members = 2};
    if (env_up(&e, &small) != 0)
        return;
    reg = e.reg;
    CHECK(write_datadir(reg, "gone", 2) == 0, "a push is under way");
    wale_partition_key(key, sizeof key, name, 0);
    CHECK(wait_stored(&e, key), "its partition 0 is uploaded already");
    CHECK(push_rmdir(reg, "gone") == -ENOTEMPTY, "rmdir of the push with files in it: ENOTEMPTY");
    static const char *const files[] = {
        "gone/base/1/PG_VERSION", "gone/base/1/1249", "gone/base/1/1259", "gone/global/pg_control",
        "gone/PG_VERSION", "gone/backup_label", "gone/pg_tblspc/16385",
    };
    static const char *const dirs[] = {"gone/base/1", "gone/base", "gone/global", "gone/pg_tblspc"};
    int ok = 1;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        ok &= push_unlink(reg, files[i]) == 0;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        ok &= push_rmdir(reg, dirs[i]) == 0;
    CHECK(ok, "its files and directories are removed");
    CHECK(push_rmdir(reg, "gone") == 0, "then the push itself");
    CHECK(push_is_session(reg, "gone") == 0, "it is no push any more");
    CHECK(backups_emptied(&e) == 0, "nothing it uploaded is left in the store");
    CHECK(!sentinel_stored(&e, name), "no sentinel");

    printf("# rmdir of a push that has only its label\n");
    char label[1024];
    label_text(label, sizeof label, 5);
    backup_name_of(name, sizeof name, 5);
    char lease[WALE_KEY_MAX];
    wale_lease_key(lease, sizeof lease, name);
    CHECK(push_mkdir(reg, "solo", 0700, NULL) == 0 &&
              put_file(reg, "solo/backup_label", label, strlen(label), 4096) == 0,
          "a push with a backup_label");
    CHECK(wait_stored(&e, lease), "its lease is stored");
    CHECK(push_unlink(reg, "solo/backup_label") == 0 && push_rmdir(reg, "solo") == 0,
          "rm -rf solo");
    CHECK(push_is_session(reg, "solo") == 0, "it is no push any more");
    CHECK(backups_emptied(&e) == 0, "its lease and upload are gone");
    env_close(&e);
}

int main(void)
{
    walfs_log_set_level(WALFS_LOG_WARN);
    make_data();
    double t0 = test_now_ms();
    test_rename_completes();
    test_manifest_completes();
    test_latched();
    test_concurrency();
    test_errors();
    printf("# %.0f ms in all\n", test_now_ms() - t0);
    return test_summary();
}
