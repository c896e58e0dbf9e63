/* Streaming uploads (store/s3.c on multipart) and backup_writer against a
 * real Ceph RGW.  Needs RGW_ENDPOINT, RGW_ACCESS_KEY, RGW_SECRET_KEY and
 * WALFS_TEST_BUCKET (an existing bucket), which tests/t_unit_rgw.sh
 * provides; exits 77 without them.  Run from the repository root. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backup/backup_index.h"
#include "common/buf.h"
#include "push/backup_writer.h"
#include "s3/s3_client.h"
#include "wale/layout.h"
#include "store/store.h"
#include "tests/unit/tap.h"

#define NAME "base_000000010000000000000005_00000040"

static void test_uploads(store *st)
{
    walfs_err err;
    size_t big = 5u * 1024 * 1024 + 12345;
    char *data = malloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i * 2654435761u >> 13);
    store_upload *up = NULL;
    int rc = store_upload_begin(st, "stream/obj", &up, &err);
    CHECK(rc == 0, "upload_begin (%s)", rc ? err.msg : "");
    rc = rc ? rc : store_upload_part(st, up, data, 5u * 1024 * 1024, &err);
    rc = rc ? rc : store_upload_part(st, up, data + 5u * 1024 * 1024, 12345, &err);
    CHECK(rc == 0, "two parts uploaded (%s)", rc ? err.msg : "");
    store_stat sb;
    int src = store_stat_key(st, "stream/obj", &sb, &err);
    CHECK(src == -ENOENT, "nothing visible before commit (%d)", src);
    rc = rc ? rc : store_upload_commit(st, up, &err);
    CHECK(rc == 0, "commit (%s)", rc ? err.msg : "");
    walfs_buf b = {0};
    rc = store_get(st, "stream/obj", 0, 0, buf_sink, &b, &err);
    CHECK(rc == 0 && b.len == big && memcmp(b.data, data, big) == 0,
          "the object is both parts, in order (%zu bytes)", b.len);
    free(b.data);

    rc = store_upload_begin(st, "stream/aborted", &up, &err);
    rc = rc ? rc : store_upload_part(st, up, data, 5u * 1024 * 1024, &err);
    if (rc == 0)
        store_upload_abort(st, up);
    src = store_stat_key(st, "stream/aborted", &sb, &err);
    CHECK(rc == 0 && src == -ENOENT, "abort leaves no object (%d)", src);

    rc = store_upload_begin(st, "stream/empty", &up, &err);
    rc = rc ? rc : store_upload_commit(st, up, &err);
    src = rc ? rc : store_stat_key(st, "stream/empty", &sb, &err);
    CHECK(src == 0 && sb.size == 0, "an upload without parts commits an empty object (%s)",
          src ? err.msg : "");
    free(data);
}

static int add(backup_writer *bw, const char *path, backup_member_type t, const char *content,
               const char *link, walfs_err *err)
{
    int fd = -1;
    char tmp[] = "/tmp/walfs-bwr.XXXXXX";
    if (content) {
        fd = mkstemp(tmp);
        if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content))
            return -EIO;
        unlink(tmp);
    }
    backup_writer_member m = {.path = path, .type = t, .mode = t == MEMBER_DIR ? 0700 : 0600,
                              .uid = 26, .gid = 26, .mtime_sec = 1795624933,
                              .mtime_nsec = 500000000, .size = content ? strlen(content) : 0,
                              .link_target = link};
    int rc = backup_writer_add(bw, &m, fd, err);
    if (fd >= 0)
        close(fd);
    return rc;
}

static void test_backup(store *st)
{
    walfs_err err;
    backup_writer *bw = NULL;
    backup_writer_limits lim = {.max_partition_members = 3};
    int rc = backup_writer_begin(st, NAME, &lim, &bw, &err);
    rc = rc ? rc : add(bw, "", MEMBER_DIR, NULL, NULL, &err);
    rc = rc ? rc : add(bw, "PG_VERSION", MEMBER_FILE, "15\n", NULL, &err);
    rc = rc ? rc : add(bw, "base", MEMBER_DIR, NULL, NULL, &err);
    rc = rc ? rc : add(bw, "base/1", MEMBER_FILE, "some table data\n", NULL, &err);
    rc = rc ? rc : add(bw, "lnk", MEMBER_SYMLINK, NULL, "base/1", &err);
    CHECK(rc == 0, "backup members added (%s)", rc ? err.msg : "");
    backup_writer_stop stop = {.stop_segment = "000000010000000000000005",
                               .stop_offset = "00000256", .pg_version = "PostgreSQL 15",
                               .base_prefix = "/var/lib/pgsql/data/"};
    rc = bw ? backup_writer_finish(bw, &stop, &err) : rc;
    CHECK(rc == 0, "backup finished on S3 (%s)", rc ? err.msg : "");

    const char *want[] = {"/\nPG_VERSION\nbase/\n", "base/1\nlnk\n"};
    for (int p = 0; p < 2; p++) {
        char key[256];
        snprintf(key, sizeof key, WALE_BASEBACKUPS_DIR "/" NAME "/tar_partitions/part_%08d.tar.lzo", p);
        walfs_buf b = {0};
        rc = store_get(st, key, 0, 0, buf_sink, &b, &err);
        char file[] = "/tmp/walfs-bwr-part.XXXXXX";
        int fd = mkstemp(file);
        int wr = fd >= 0 && b.len && write(fd, b.data, b.len) == (ssize_t)b.len;
        if (fd >= 0)
            close(fd);
        free(b.data);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "lzop -d <'%s' | tar -tf - 2>/dev/null", file);
        FILE *f = popen(cmd, "r");
        char out[1024] = "";
        size_t n = f ? fread(out, 1, sizeof out - 1, f) : 0;
        out[n] = '\0';
        int pc = f ? pclose(f) : -1;
        unlink(file);
        CHECK(rc == 0 && wr && pc == 0 && strcmp(out, want[p]) == 0,
              "%s read back with lzop -d | tar -t: %s", key, out);
    }
    walfs_buf s = {0};
    rc = store_get(st, WALE_BASEBACKUPS_DIR "/" NAME "_backup_stop_sentinel.json", 0, 0, buf_sink, &s,
                   &err);
    CHECK(rc == 0 && s.data && strstr(s.data, "\"expanded_size_bytes\": 19,") != NULL,
          "sentinel stored on S3");
    free(s.data);
    backup_partition_listing *parts = NULL;
    size_t n_parts = 0;
    backup_index *idx = NULL;
    rc = backup_list_partitions(st, NAME, &parts, &n_parts, &err);
    rc = rc ? rc : backup_index_build(st, NAME, parts, n_parts, &idx, &err);
    const backup_member *m = idx ? backup_index_find(idx, "base/1") : NULL;
    CHECK(rc == 0 && n_parts == 2 && m && m->size == 16 && m->partition == 1,
          "walfs's index reads the S3 backup (%s)", rc ? err.msg : "");
    backup_index_free(idx);
    backup_partition_listing_free(parts, n_parts);

    /* an aborted backup leaves nothing on S3 */
    rc = backup_writer_begin(st, "base_000000010000000000000006_00000040", &lim, &bw, &err);
    rc = rc ? rc : add(bw, "", MEMBER_DIR, NULL, NULL, &err);
    rc = rc ? rc : add(bw, "a", MEMBER_FILE, "x", NULL, &err);
    rc = rc ? rc : add(bw, "b", MEMBER_FILE, "y", NULL, &err);
    rc = rc ? rc : add(bw, "c", MEMBER_FILE, "z", NULL, &err);
    CHECK(rc == 0, "second backup started, one partition committed (%s)", rc ? err.msg : "");
    if (bw)
        backup_writer_abort(bw);
    store_stat sb;
    int src = store_stat_key(
        st, WALE_BASEBACKUPS_DIR "/base_000000010000000000000006_00000040/tar_partitions/part_00000000.tar.lzo",
        &sb, &err);
    CHECK(src == -ENOENT, "abort removed the committed partition from S3 (%d)", src);
}

int main(void)
{
    const char *ep = getenv("RGW_ENDPOINT"), *ak = getenv("RGW_ACCESS_KEY"),
               *sk = getenv("RGW_SECRET_KEY"), *bucket = getenv("WALFS_TEST_BUCKET");
    if (!ep || !ak || !sk || !bucket) {
        printf("RGW_ENDPOINT/RGW_ACCESS_KEY/RGW_SECRET_KEY/WALFS_TEST_BUCKET not set\n");
        return 77;
    }
    s3_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.endpoint = ep;
    cfg.path_style = 1;
    cfg.access_key = ak;
    cfg.secret_key = sk;
    cfg.deadline_ms = 30000;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "bw%ld-%d/", (long)time(NULL), (int)getpid());
    store *st = NULL;
    walfs_err err;
    int rc = store_s3_open(&cfg, bucket, prefix, &st, &err);
    CHECK(rc == 0, "open s3 store (%s)", rc ? err.msg : "");
    if (rc)
        return test_summary();
    test_uploads(st);
    test_backup(st);
    store_close(st);
    return test_summary();
}
