/* backup_writer against a local store: the partitions must read back with
 * lzop, python's tarfile, GNU tar and walfs's own index exactly as written,
 * split where WAL-E would split them, and every failure must leave nothing
 * behind (no sentinel ever).  Run from the repository root; needs lzop,
 * python3 and tar on PATH. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <openssl/evp.h>

#include "common/hex.h"
#include "backup/backup_index.h"
#include "push/backup_writer.h"
#include "codec/lzop.h"
#include "common/buf.h"
#include "store/store.h"
#include "tests/unit/fault_store.h"
#include "tests/unit/tap.h"
#include "tests/unit/test_files.h"

#define NAME "base_000000010000000000000002_00000040"
#define BIG_SIZE (300u * 1024u)
#define F2_SIZE (150u * 1024u)

static char srcdir[256];

typedef struct spec {
    const char *path;
    backup_member_type type;
    uint32_t mode;
    size_t size;
    const char *link;
    unsigned char *data;    /* FILE content */
    uint32_t nsec;
} spec;

static spec members[] = {
    {"", MEMBER_DIR, 0700, 0, NULL, NULL, 250000000},
    {"PG_VERSION", MEMBER_FILE, 0600, 3, NULL, NULL, 123456000},
    {"base", MEMBER_DIR, 0700, 0, NULL, NULL, 0},
    {"base/1", MEMBER_DIR, 0700, 0, NULL, NULL, 999999000},
    /* member limit 4: partition 1 starts here */
    {"base/1/big", MEMBER_FILE, 0600, BIG_SIZE, NULL, NULL, 500000000},
    {"base/1/empty", MEMBER_FILE, 0640, 0, NULL, NULL, 1000},
    /* 300 KiB + 150 KiB >= 400 KiB: partition 2 starts here */
    {"base/1/f2", MEMBER_FILE, 0600, F2_SIZE, NULL, NULL, 750000000},
    {"link", MEMBER_SYMLINK, 0777, 0, "base/1/f2", NULL, 125000000},
    {"hl", MEMBER_HARDLINK, 0600, 0, "base/1/big", NULL, 500000000},
    {"global", MEMBER_DIR, 0700, 0, NULL, NULL, 0},
    /* member limit again: partition 3 */
    {"global/pg_control", MEMBER_FILE, 0600, 8192, NULL, NULL, 987654000},
};
#define N_MEMBERS (sizeof members / sizeof members[0])
static const unsigned expect_partition[N_MEMBERS] = {0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3};

static uint64_t rng = 88172645463325252ull;
static unsigned char next_byte(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned char)rng;
}

static void make_data(void)
{
    for (size_t i = 0; i < N_MEMBERS; i++) {
        spec *s = &members[i];
        if (s->type != MEMBER_FILE)
            continue;
        s->data = malloc(s->size + 1);
        for (size_t j = 0; j < s->size; j++)
            /* half random, half text: both stored and compressed lzop blocks */
            s->data[j] = j < s->size / 2 ? next_byte() : (unsigned char)("walfs\n"[j % 6]);
        if (strcmp(s->path, "PG_VERSION") == 0)
            memcpy(s->data, "15\n", 3);
    }
}

static int open_source(const spec *s)
{
    char p[512];
    snprintf(p, sizeof p, "%s/src.%zu", srcdir, (size_t)(s - members));
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0 && s->size && write(fd, s->data, s->size) != (ssize_t)s->size) {
        close(fd);
        return -1;
    }
    return fd;
}

static backup_writer_member to_member(const spec *s)
{
    backup_writer_member m = {
        .path = s->path, .type = s->type, .mode = s->mode, .uid = 26, .gid = 27,
        .uname = "postgres", .gname = "pggroup", .mtime_sec = 1795624933,
        .mtime_nsec = s->nsec, .size = s->size, .link_target = s->link,
    };
    return m;
}

/* When set, files' data goes in as lzop records (what a push spools),
 * cut at 100 KiB so that short blocks sit in the middle of a member. */
static int as_records;
#define RECORD_CHUNK (100u * 1024u)

static int open_records(const spec *s, uint64_t *records_len)
{
    char p[512];
    snprintf(p, sizeof p, "%s/rec.%zu", srcdir, (size_t)(s - members));
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
    lzop_block_encoder *be = lzop_block_encoder_new();
    *records_len = 0;
    for (size_t off = 0; fd >= 0 && be && off < s->size; off += RECORD_CHUNK) {
        size_t n = s->size - off < RECORD_CHUNK ? s->size - off : RECORD_CHUNK;
        const unsigned char *rec;
        size_t rec_len;
        walfs_err err;
        if (lzop_block_encode(be, s->data + off, n, &rec, &rec_len, &err) != 0 ||
            write(fd, rec, rec_len) != (ssize_t)rec_len) {
            close(fd);
            fd = -1;
        }
        *records_len += rec_len;
    }
    lzop_block_encoder_free(be);
    return fd;
}

static int add_spec(backup_writer *bw, const spec *s, walfs_err *err)
{
    backup_writer_member m = to_member(s);
    if (as_records && s->type == MEMBER_FILE && s->size > 0) {
        uint64_t len = 0;
        int fd = open_records(s, &len);
        int rc = backup_writer_add_records(bw, &m, fd, len, err);
        if (fd >= 0)
            close(fd);
        return rc;
    }
    int fd = s->type == MEMBER_FILE ? open_source(s) : -1;
    int rc = backup_writer_add(bw, &m, fd, err);
    if (fd >= 0)
        close(fd);
    return rc;
}

static char *new_root(void)
{
    char *t = strdup("/tmp/walfs-bw-store.XXXXXX");
    if (!mkdtemp(t)) {
        perror("mkdtemp");
        exit(1);
    }
    return t;
}

static void rm_rf(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static int run(const char *cmd)
{
    int r = system(cmd);
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 32;
    EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
    hex_encode(md, 32, out);
}

static const char *PY_LIST =
    "import sys,tarfile,hashlib\n"
    "t=tarfile.open(fileobj=sys.stdin.buffer,mode='r|')\n"
    "for m in t:\n"
    "  h=hashlib.sha256(t.extractfile(m).read()).hexdigest() if m.isreg() else '-'\n"
    "  print('[%s] %s %d %o %d %d %s %s %.6f %s %s'%(m.name,m.type.decode(),m.size,m.mode,"
    "m.uid,m.gid,m.uname,m.gname,m.mtime,m.linkname or '-',h))\n";

static void expected_line(const spec *s, char *out, size_t len)
{
    char h[65] = "-";
    if (s->type == MEMBER_FILE)
        sha256_hex(s->data, s->size, h);
    const char *type = s->type == MEMBER_DIR ? "5" : s->type == MEMBER_SYMLINK ? "2"
                       : s->type == MEMBER_HARDLINK ? "1" : "0";
    snprintf(out, len, "[%s] %s %zu %o 26 27 postgres pggroup %.6f %s %s\n", s->path, type,
             s->type == MEMBER_FILE ? s->size : 0, s->mode,
             1795624933.0 + s->nsec / 1e9, s->link ? s->link : "-", h);
}

typedef struct dec_ctx {
    lzop_decoder *dec;
    walfs_buf *out;
} dec_ctx;

static int dec_sink(void *ctx, const void *data, size_t len)
{
    dec_ctx *d = ctx;
    walfs_err e;
    return lzop_decoder_feed(d->dec, data, len, buf_sink, d->out, &e);
}

static int decompress_key(store *st, const char *key, walfs_buf *out)
{
    walfs_err e;
    dec_ctx d = {lzop_decoder_new(key), out};
    int rc = store_get(st, key, 0, 0, dec_sink, &d, &e);
    if (rc == 0)
        rc = lzop_decoder_finish(d.dec, &e);
    lzop_decoder_free(d.dec);
    return rc;
}

static void test_full_backup(void)
{
    char *root = new_root();
    store *st = NULL;
    walfs_err err;
    int orc = store_local_open(root, &st, &err);
    CHECK(orc == 0, "open local store %s", root);
    backup_writer_limits lim = {.max_partition_bytes = 400 * 1024, .max_partition_members = 4};
    backup_writer *bw = NULL;
    int rc = backup_writer_begin(st, NAME, &lim, &bw, &err);
    CHECK(rc == 0, "begin (%s)", rc ? err.msg : "");
    int add_ok = 1;
    for (size_t i = 0; i < N_MEMBERS && bw; i++) {
        rc = add_spec(bw, &members[i], &err);
        if (rc) {
            add_ok = 0;
            printf("# add %s: %s\n", members[i].path, err.msg);
        }
    }
    CHECK(add_ok, "every member added");
    char sentinel[512];
    snprintf(sentinel, sizeof sentinel, "%s/basebackups_005/%s_backup_stop_sentinel.json", root,
             NAME);
    CHECK(access(sentinel, F_OK) != 0, "no sentinel before finish");
    backup_writer_stop stop = {.stop_segment = "000000010000000000000003",
                               .stop_offset = "00000256",
                               .pg_version = "PostgreSQL 15.8 on x86_64-pc-linux-gnu, 64-bit",
                               .base_prefix = "/var/lib/pgsql/d\xc3\xa4ta \"x\"/"};
    rc = bw ? backup_writer_finish(bw, &stop, &err) : -1;
    CHECK(rc == 0, "finish (%s)", rc ? err.msg : "");

    /* ---- the objects ---- */
    char path[1024], cmd[2048];
    int nparts = 0;
    for (int p = 0; p < 10; p++) {
        snprintf(path, sizeof path, "%s/basebackups_005/%s/tar_partitions/part_%08d.tar.lzo",
                 root, NAME, p);
        if (access(path, F_OK) != 0)
            break;
        nparts++;
    }
    CHECK(nparts == 4, "4 partitions written (%d): split by member count and by bytes", nparts);
    CHECK(count_files(root, NULL, 0) == nparts + 2,
          "only partitions, extended_version.txt and the sentinel in the store (%d files)",
          count_files(root, NULL, 0));

    size_t mi = 0;
    int lines_ok = 1, partition_ok = 1;
    for (int p = 0; p < nparts; p++) {
        snprintf(path, sizeof path, "%s/basebackups_005/%s/tar_partitions/part_%08d.tar.lzo",
                 root, NAME, p);
        snprintf(cmd, sizeof cmd, "lzop -t '%s' >/dev/null 2>&1", path);
        rc = run(cmd);
        CHECK(rc == 0, "lzop -t accepts partition %d", p);
        snprintf(cmd, sizeof cmd, "test $(( $(lzop -dc '%s' | wc -c) %% 10240 )) -eq 0", path);
        rc = run(cmd);
        CHECK(rc == 0, "partition %d decompresses to a multiple of 10240 bytes", p);
        snprintf(cmd, sizeof cmd, "lzop -dc '%s' | tar -tf - >/dev/null 2>&1", path);
        rc = run(cmd);
        CHECK(rc == 0, "GNU tar lists partition %d", p);
        snprintf(cmd, sizeof cmd, "lzop -dc '%s' | python3 -c \"$PYLIST\"", path);
        setenv("PYLIST", PY_LIST, 1);
        FILE *f = popen(cmd, "r");
        char line[1024], want[1024];
        while (f && fgets(line, sizeof line, f)) {
            if (mi >= N_MEMBERS) {
                lines_ok = 0;
                printf("# extra member: %s", line);
                continue;
            }
            expected_line(&members[mi], want, sizeof want);
            if (strcmp(line, want) != 0) {
                lines_ok = 0;
                printf("# got  %s# want %s", line, want);
            }
            if (expect_partition[mi] != (unsigned)p) {
                partition_ok = 0;
                printf("# %s in partition %d, expected %u\n", members[mi].path, p,
                       expect_partition[mi]);
            }
            mi++;
        }
        int pc = f ? pclose(f) : -1;
        CHECK(pc == 0, "python tarfile reads partition %d", p);
    }
    CHECK(mi == N_MEMBERS && lines_ok,
          "python tarfile: names, types, sizes, modes, owners, fractional mtimes, link "
          "names and contents as written (%zu members)",
          mi);
    CHECK(partition_ok, "members are in the partitions WAL-E's rules give");

    /* GNU tar extracts all partitions into a tree with the same content */
    char *ex = new_root();
    snprintf(cmd, sizeof cmd,
             "cd '%s' && for p in '%s'/basebackups_005/%s/tar_partitions/part_*.tar.lzo; do "
             "lzop -dc \"$p\" | tar -xf - 2>/dev/null || exit 1; done",
             ex, root, NAME);
    rc = run(cmd);
        CHECK(rc == 0, "lzop -d | tar -x extracts every partition");
    for (size_t i = 0; i < N_MEMBERS; i++) {
        const spec *s = &members[i];
        if (s->type != MEMBER_FILE || s->size == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", ex, s->path);
        FILE *f = fopen(path, "rb");
        unsigned char *got = malloc(s->size + 1);
        size_t n = f ? fread(got, 1, s->size + 1, f) : 0;
        CHECK(n == s->size && memcmp(got, s->data, s->size) == 0, "tar -x: %s content", s->path);
        free(got);
        if (f)
            fclose(f);
    }
    struct stat a, b;
    snprintf(path, sizeof path, "%s/hl", ex);
    int r1 = stat(path, &a);
    snprintf(path, sizeof path, "%s/base/1/big", ex);
    int r2 = stat(path, &b);
    CHECK(r1 == 0 && r2 == 0 && a.st_ino == b.st_ino, "tar -x: hl is a hard link of base/1/big");
    snprintf(path, sizeof path, "%s/link", ex);
    char lt[256] = "";
    ssize_t ll = readlink(path, lt, sizeof lt - 1);
    CHECK(ll > 0 && strcmp(lt, "base/1/f2") == 0, "tar -x: link -> base/1/f2");
    snprintf(path, sizeof path, "%s/global/pg_control", ex);
    CHECK(stat(path, &a) == 0 && a.st_mtim.tv_nsec == 987654000,
          "tar -x: sub-second mtime preserved (%ld)", (long)a.st_mtim.tv_nsec);
    rm_rf(ex);
    free(ex);

    /* ---- sentinel and extended_version.txt ---- */
    FILE *f = fopen(sentinel, "rb");
    char js[4096] = "";
    size_t jl = f ? fread(js, 1, sizeof js - 1, f) : 0;
    if (f)
        fclose(f);
    js[jl] = '\0';
    uint64_t expanded = 0;
    for (size_t i = 0; i < N_MEMBERS; i++)
        expanded += members[i].type == MEMBER_FILE ? members[i].size : 0;
    char want_js[1024];
    snprintf(want_js, sizeof want_js,
             "{\"wal_segment_backup_stop\": \"000000010000000000000003\", "
             "\"wal_segment_offset_backup_stop\": \"00000256\", \"expanded_size_bytes\": %" PRIu64
             ", \"spec\": {\"base_prefix\": \"/var/lib/pgsql/d\\u00e4ta \\\"x\\\"/\", "
             "\"tablespaces\": []}}",
             expanded);
    CHECK(strcmp(js, want_js) == 0, "sentinel is byte for byte json.dumps' output: %s", js);
    json_object *jo = json_tokener_parse(js), *v;
    CHECK(jo && json_object_object_length(jo) == 4, "sentinel: JSON object with 4 keys");
    CHECK(jo && json_object_object_get_ex(jo, "wal_segment_backup_stop", &v) &&
              json_object_is_type(v, json_type_string) &&
              !strcmp(json_object_get_string(v), "000000010000000000000003"),
          "sentinel: wal_segment_backup_stop");
    CHECK(jo && json_object_object_get_ex(jo, "wal_segment_offset_backup_stop", &v) &&
              json_object_is_type(v, json_type_string) &&
              !strcmp(json_object_get_string(v), "00000256"),
          "sentinel: wal_segment_offset_backup_stop");
    CHECK(jo && json_object_object_get_ex(jo, "expanded_size_bytes", &v) &&
              json_object_is_type(v, json_type_int) &&
              (uint64_t)json_object_get_int64(v) == expanded,
          "sentinel: expanded_size_bytes = %" PRIu64, expanded);
    json_object *sp = NULL, *tb = NULL;
    CHECK(jo && json_object_object_get_ex(jo, "spec", &sp) &&
              json_object_object_get_ex(sp, "base_prefix", &v) &&
              !strcmp(json_object_get_string(v), stop.base_prefix) &&
              json_object_object_get_ex(sp, "tablespaces", &tb) &&
              json_object_is_type(tb, json_type_array) && json_object_array_length(tb) == 0,
          "sentinel: spec.base_prefix and empty tablespaces");
    json_object_put(jo);
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
             "sys.exit(0 if json.dumps(d)==open(sys.argv[1]).read() else 1)' '%s'",
             sentinel);
    rc = run(cmd);
        CHECK(rc == 0, "python: json.dumps(json.load(sentinel)) == sentinel");
    snprintf(path, sizeof path, "%s/basebackups_005/%s/extended_version.txt", root, NAME);
    f = fopen(path, "rb");
    char ev[256] = "";
    size_t evl = f ? fread(ev, 1, sizeof ev - 1, f) : 0;
    if (f)
        fclose(f);
    ev[evl] = '\0';
    CHECK(strcmp(ev, stop.pg_version) == 0, "extended_version.txt holds the version, no newline");

    /* ---- walfs's own reader ---- */
    backup_partition_listing *parts = NULL;
    size_t n_parts = 0;
    rc = backup_list_partitions(st, NAME, &parts, &n_parts, &err);
    CHECK(rc == 0 && n_parts == (size_t)nparts, "backup_list_partitions: %zu (%s)", n_parts,
          rc ? err.msg : "");
    backup_index *idx = NULL;
    rc = rc ? rc : backup_index_build(st, NAME, parts, n_parts, &idx, &err);
    CHECK(rc == 0, "backup_index_build (%s)", rc ? err.msg : "");
    walfs_buf decomp[8] = {0};
    for (int p = 0; idx && p < nparts && p < 8; p++)
    {
        int dr = decompress_key(st, parts[p].key, &decomp[p]);
        CHECK(dr == 0, "decompress %s", parts[p].key);
    }
    for (size_t i = 0; idx && i < N_MEMBERS; i++) {
        const spec *s = &members[i];
        const backup_member *bm = backup_index_find(idx, s->path);
        int ok = bm && bm->type == s->type && bm->mode == s->mode && bm->uid == 26 &&
                 bm->gid == 27 && bm->mtime_sec == 1795624933 && bm->mtime_nsec == s->nsec;
        if (ok && s->type == MEMBER_FILE) {
            ok = bm->size == s->size && bm->partition == expect_partition[i] &&
                 bm->partition < 8 && bm->data_offset + s->size <= decomp[bm->partition].len &&
                 (s->size == 0 ||
                  memcmp(decomp[bm->partition].bytes + bm->data_offset, s->data, s->size) == 0);
        }
        if (ok && s->link && s->type == MEMBER_HARDLINK)
            ok = &idx->members[bm->link_member] == backup_index_find(idx, s->link);
        else if (ok && s->link)
            ok = bm->link_target && strcmp(bm->link_target, s->link) == 0;
        CHECK(ok, "index: '%s' with its type, mode, owner, mtime (ns)%s", s->path,
              s->type == MEMBER_FILE ? ", partition and bytes at its data offset" : "");
    }
    for (int p = 0; p < 8; p++)
        free(decomp[p].bytes);
    backup_index_free(idx);
    backup_partition_listing_free(parts, n_parts);

    /* the same name again is refused rather than mixed with this backup */
    bw = NULL;
    rc = backup_writer_begin(st, NAME, &lim, &bw, &err);
    CHECK(rc == -EEXIST && !bw, "begin on an existing backup: -EEXIST (%s)", err.msg);
    store_close(st);
    rm_rf(root);
    free(root);
}

static void test_abort(void)
{
    char *root = new_root();
    store *st = NULL;
    walfs_err err;
    store_local_open(root, &st, &err);
    backup_writer_limits lim = {.max_partition_bytes = 400 * 1024, .max_partition_members = 4};
    backup_writer *bw = NULL;
    int rc = backup_writer_begin(st, NAME, &lim, &bw, &err);
    for (size_t i = 0; rc == 0 && i < 8; i++)
        rc = add_spec(bw, &members[i], &err);
    CHECK(rc == 0, "abort: 8 members added");
    int before = count_files(root, NULL, 0);
    CHECK(before >= 2, "abort: partitions committed before the abort (%d files)", before);
    backup_writer_abort(bw);
    char first[1024] = "";
    int n = count_files(root, first, sizeof first);
    CHECK(n == 0, "abort leaves no object behind (%d; %s)", n, first);
    /* leftovers of an unfinished run block a new begin */
    rc = backup_writer_begin(st, NAME, &lim, &bw, &err);
    CHECK(rc == 0, "after abort the name can be used again (%s)", rc ? err.msg : "");
    if (rc == 0)
        backup_writer_abort(bw);
    store_close(st);
    rm_rf(root);
    free(root);
}

static void test_too_big(void)
{
    char *root = new_root();
    store *st = NULL;
    walfs_err err;
    store_local_open(root, &st, &err);
    backup_writer_limits lim = {.max_partition_bytes = 100 * 1024};
    backup_writer *bw = NULL;
    int rc = backup_writer_begin(st, NAME, &lim, &bw, &err);
    rc = rc ? rc : add_spec(bw, &members[0], &err);
    rc = rc ? rc : add_spec(bw, &members[1], &err);
    CHECK(rc == 0, "too big: first members added");
    rc = add_spec(bw, &members[4], &err); /* 300 KiB > 100 KiB */
    CHECK(rc == -EFBIG, "a member larger than a partition: -EFBIG (%d)", rc);
    CHECK(strstr(err.msg, "base/1/big") && strstr(err.msg, "102400"),
          "the message names the file and the limit: %s", err.msg);
    backup_writer_abort(bw);
    char first[1024] = "";
    int n = count_files(root, first, sizeof first);
    CHECK(n == 0, "after the abort nothing is left (%d; %s)", n, first);

    /* invalid input is refused before anything is written */
    rc = backup_writer_begin(st, "base_0000000100000000000000_2", &lim, &bw, &err);
    CHECK(rc == -EINVAL, "invalid backup name refused");
    rc = backup_writer_begin(st, NAME, &lim, &bw, &err);
    backup_writer_member m = to_member(&members[2]);
    m.path = "../etc";
    rc = rc ? rc : backup_writer_add(bw, &m, -1, &err);
    CHECK(rc == -EINVAL, "path with '..' refused");
    m.path = "/abs";
    rc = backup_writer_add(bw, &m, -1, &err);
    CHECK(rc == -EINVAL, "absolute path refused");
    backup_writer_stop stop = {.stop_segment = "00000001000000000000000g",
                               .stop_offset = "00000256", .base_prefix = "/x/"};
    rc = backup_writer_finish(bw, &stop, &err);
    CHECK(rc == -EINVAL, "a malformed stop segment fails finish (%s)", err.msg);
    n = count_files(root, NULL, 0);
    CHECK(n == 0, "and leaves nothing (%d)", n);
    store_close(st);
    rm_rf(root);
    free(root);
}

/* ---- the local store behind the shared fault store (tests/unit/fault_store.h) ---- */

/* Upload parts that succeed before every later one fails (-1: none fails),
 * likewise commits. */
static store *flaky_open(const char *root, int fail_part_after, int fail_commit_after)
{
    store *st = fault_store_open_local(root);
    if (st && fail_part_after >= 0)
        fault_store_fail(st, FAULT_UPLOAD_PART, (unsigned)fail_part_after + 1, -1, -EIO);
    if (st && fail_commit_after >= 0)
        fault_store_fail(st, FAULT_UPLOAD_COMMIT, (unsigned)fail_commit_after + 1, -1, -EIO);
    return st;
}

static void test_failing_store(int fail_part_after, int fail_commit_after)
{
    char *root = new_root();
    store *f = flaky_open(root, fail_part_after, fail_commit_after);
    walfs_err err;
    backup_writer_limits lim = {.max_partition_bytes = 400 * 1024, .max_partition_members = 4};
    backup_writer *bw = NULL;
    int rc = backup_writer_begin(f, NAME, &lim, &bw, &err);
    size_t i;
    for (i = 0; rc == 0 && i < N_MEMBERS; i++)
        rc = add_spec(bw, &members[i], &err);
    if (rc == 0) {
        backup_writer_stop stop = {.stop_segment = "000000010000000000000003",
                                   .stop_offset = "00000256", .base_prefix = "/x/"};
        rc = backup_writer_finish(bw, &stop, &err);
    } else {
        printf("# add %s failed: %s\n", members[i - 1].path, err.msg);
        /* the writer refuses to go on after a broken stream */
        walfs_err e2;
        int again = add_spec(bw, &members[N_MEMBERS - 1], &e2);
        CHECK(again == rc,
              "an add after the failure returns the same error");
        backup_writer_abort(bw);
    }
    CHECK(rc == -EIO, "store failing %s %d: -EIO returned",
          fail_part_after >= 0 ? "upload_part after" : "commit after",
          fail_part_after >= 0 ? fail_part_after : fail_commit_after);
    CHECK(strstr(err.msg, "injected") && strstr(err.msg, "part_0000000"),
          "the message names the partition and the cause: %s", err.msg);
    char first[1024] = "";
    int n = count_files(root, first, sizeof first);
    CHECK(n == 0, "nothing left, no sentinel (%d; %s)", n, first);
    store_close(f);
    rm_rf(root);
    free(root);
}

/* One partition larger than an upload part: several parts, each but the
 * last exactly the part size, and the object whole. */
static void test_multipart(void)
{
    char *root = new_root();
    store *f = flaky_open(root, -1, -1);
    walfs_err err;
    backup_writer *bw = NULL;
    backup_writer_limits lim = {.upload_part_size = 1};
    int rc = backup_writer_begin(f, NAME, &lim, &bw, &err);
    spec big = {"big", MEMBER_FILE, 0600, 11u * 1024 * 1024, NULL, NULL, 0};
    big.data = malloc(big.size);
    for (size_t j = 0; j < big.size; j++)
        big.data[j] = next_byte();
    rc = rc ? rc : add_spec(bw, &members[0], &err);
    rc = rc ? rc : add_spec(bw, &big, &err);
    backup_writer_stop stop = {.stop_segment = "000000010000000000000003",
                               .stop_offset = "00000256", .base_prefix = "/x/"};
    rc = rc ? rc : backup_writer_finish(bw, &stop, &err);
    CHECK(rc == 0, "11 MiB of random data written (%s)", rc ? err.msg : "");
    unsigned parts = fault_store_calls(f, FAULT_UPLOAD_PART);
    size_t part0 = fault_store_part_size(f, 0), part1 = fault_store_part_size(f, 1);
    CHECK(parts == 3, "3 upload parts (%u)", parts);
    CHECK(part0 == 5u * 1024 * 1024 && part1 == 5u * 1024 * 1024,
          "parts but the last are part_size (5 MiB minimum applied): %zu %zu", part0, part1);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "lzop -dc '%s/basebackups_005/%s/tar_partitions/part_00000000.tar.lzo' | "
             "python3 -c \"$PYLIST\" | grep -q '^\\[big\\] 0 11534336 '",
             root, NAME);
    rc = run(cmd);
        CHECK(rc == 0, "the multi-part partition reads back");
    walfs_buf d = {0};
    rc = decompress_key(fault_store_inner(f), "basebackups_005/" NAME "/tar_partitions/part_00000000.tar.lzo",
                        &d);
    CHECK(rc == 0 &&
              d.len > big.size && memmem(d.bytes, d.len, big.data, 4096) != NULL,
          "decoded partition holds the data");
    free(d.bytes);
    free(big.data);
    store_close(f);
    rm_rf(root);
    free(root);
}

/* The local store's streaming upload on its own. */
static void test_local_upload(void)
{
    char *root = new_root();
    store *st = NULL;
    walfs_err err;
    store_local_open(root, &st, &err);
    store_upload *up = NULL;
    int rc = store_upload_begin(st, "a/b/obj", &up, &err);
    CHECK(rc == 0, "local upload_begin creates the directories (%s)", rc ? err.msg : "");
    rc = rc ? rc : store_upload_part(st, up, "hello ", 6, &err);
    rc = rc ? rc : store_upload_part(st, up, "world", 5, &err);
    char path[512];
    snprintf(path, sizeof path, "%s/a/b/obj", root);
    CHECK(access(path, F_OK) != 0, "nothing under the key before commit");
    CHECK(count_files(root, NULL, 0) == 1, "one temporary file while uploading");
    rc = rc ? rc : store_upload_commit(st, up, &err);
    CHECK(rc == 0, "commit (%s)", rc ? err.msg : "");
    FILE *f = fopen(path, "r");
    char got[32] = "";
    size_t n = f ? fread(got, 1, sizeof got - 1, f) : 0;
    if (f)
        fclose(f);
    CHECK(n == 11 && !strcmp(got, "hello world"), "committed object has both parts");
    CHECK(count_files(root, NULL, 0) == 1, "no temporary file left after commit");

    rc = store_upload_begin(st, "a/b/obj", &up, &err);
    rc = rc ? rc : store_upload_part(st, up, "XX", 2, &err);
    if (rc == 0)
        store_upload_abort(st, up);
    f = fopen(path, "r");
    n = f ? fread(got, 1, sizeof got - 1, f) : 0;
    if (f)
        fclose(f);
    got[n] = '\0';
    CHECK(!strcmp(got, "hello world") && count_files(root, NULL, 0) == 1,
          "abort leaves the old object and no temporary file");
    rc = store_upload_begin(st, "empty", &up, &err);
    rc = rc ? rc : store_upload_commit(st, up, &err);
    store_stat sb;
    CHECK(rc == 0 && store_stat_key(st, "empty", &sb, &err) == 0 && sb.size == 0,
          "an upload without parts commits an empty object");
    rc = store_upload_begin(st, "../escape", &up, &err);
    CHECK(rc == -EINVAL, "a key with '..' is refused");
    store_close(st);
    rm_rf(root);
    free(root);
}

int main(void)
{
    if (run("command -v lzop >/dev/null && command -v python3 >/dev/null") != 0) {
        printf("lzop or python3 missing\n");
        return 77;
    }
    snprintf(srcdir, sizeof srcdir, "/tmp/walfs-bw-src.XXXXXX");
    if (!mkdtemp(srcdir))
        return 1;
    make_data();
    test_local_upload();
    test_full_backup();
    printf("# again, the files' data given as lzop records\n");
    as_records = 1;
    test_full_backup();
    as_records = 0;
    test_abort();
    test_too_big();
    test_failing_store(0, -1);
    test_failing_store(2, -1);
    test_failing_store(3, -1); /* in finish: the last partition */
    test_failing_store(-1, 1);
    test_multipart();
    for (size_t i = 0; i < N_MEMBERS; i++)
        free(members[i].data);
    rm_rf(srcdir);
    return test_summary();
}
