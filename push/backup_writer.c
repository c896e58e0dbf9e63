/* Base-backup writer: tar (libarchive, PAX) -> lzop encoder -> part buffer ->
 * streaming upload, one partition at a time; a member given as lzop records
 * skips the encoder.  Memory stays at one upload part, the codec's block
 * buffers and a read buffer, whatever the size of the backup. */
#include "push/backup_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/lzop.h"
#include "common/buf.h"
#include "common/log.h"
#include "wale/layout.h"

#define WALE_MAX_PARTITION_BYTES 1610612736ull
#define WALE_MAX_PARTITION_MEMBERS 6144u
#define DEFAULT_PART_SIZE (16u * 1024u * 1024u)
#define MIN_PART_SIZE (5u * 1024u * 1024u)   /* S3's smallest non-last part */
#define TAR_RECORD 10240                     /* CPython's RECORDSIZE: partitions pad to it */
#define READ_CHUNK (256u * 1024u)

struct backup_writer {
    store *st;
    char *name;
    uint64_t max_bytes;
    uint32_t max_members;
    size_t part_size;

    /* the open partition, if any */
    struct archive *ar;
    lzop_encoder *enc;
    store_upload *up;
    char *part_key;
    unsigned char *part_buf;        /* compressed bytes not yet sent */
    size_t part_len;
    uint64_t part_bytes;            /* member data in this partition */
    uint32_t part_members;
    uint32_t n_partitions;          /* opened so far, = next partition number */

    char **committed;               /* keys stored so far, removed on failure */
    size_t n_committed, cap_committed;

    uint64_t tar_pos;               /* tar bytes produced in the open partition */
    /* A member whose data comes as lzop records: libarchive's stand-in
     * zeros for [splice_from, splice_to) of the tar are dropped and the
     * records go into the lzop stream in their place. */
    uint64_t splice_from, splice_to;
    int splice_fd;
    uint64_t splice_len;
    int spliced;

    uint64_t expanded_size;
    unsigned char *read_buf;
    walfs_err cb_err;               /* what failed inside a libarchive callback */
    int discard;                    /* tar bytes go nowhere: the partition is being dropped */
    int failed;                     /* the stream broke: everything was removed */
    char failed_msg[WALFS_ERR_MSG_MAX];
};

static int remember_key(backup_writer *bw, const char *key, walfs_err *err)
{
    if (bw->n_committed == bw->cap_committed) {
        size_t ncap = bw->cap_committed ? bw->cap_committed * 2 : 8;
        char **nk = realloc(bw->committed, ncap * sizeof *nk);
        if (!nk)
            return walfs_err_set(err, -ENOMEM, "out of memory");
        bw->committed = nk;
        bw->cap_committed = ncap;
    }
    char *k = strdup(key);
    if (!k)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    bw->committed[bw->n_committed++] = k;
    return 0;
}

/* ---- the compressed stream of the open partition ---- */

static int flush_part(backup_writer *bw, walfs_err *err)
{
    if (bw->part_len == 0)
        return 0;
    int rc = store_upload_part(bw->st, bw->up, bw->part_buf, bw->part_len, err);
    if (rc)
        return walfs_err_prefix(err, "uploading %s: ", bw->part_key);
    bw->part_len = 0;
    return 0;
}

/* lzop output: parts go out only when full, so every part but the last has
 * exactly part_size bytes (S3's minimum is met). */
static int lzop_out(void *ctx, const void *data, size_t len)
{
    backup_writer *bw = ctx;
    const unsigned char *p = data;
    while (len > 0) {
        size_t n = bw->part_size - bw->part_len;
        if (n > len)
            n = len;
        memcpy(bw->part_buf + bw->part_len, p, n);
        bw->part_len += n;
        p += n;
        len -= n;
        if (bw->part_len == bw->part_size) {
            int rc = flush_part(bw, &bw->cb_err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int splice_records(backup_writer *bw)
{
    if (lzop_encoder_flush(bw->enc, lzop_out, bw, &bw->cb_err) != 0)
        return -1;
    uint64_t off = 0;
    while (off < bw->splice_len) {
        size_t want = bw->splice_len - off < READ_CHUNK ? (size_t)(bw->splice_len - off) : READ_CHUNK;
        ssize_t n = pread(bw->splice_fd, bw->read_buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            walfs_err_set(&bw->cb_err, n < 0 ? -errno : -EIO,
                          "reading the compressed spool of a member of %s: %s", bw->part_key,
                          n < 0 ? strerror(errno) : "it is shorter than was written");
            return -1;
        }
        if (lzop_encoder_write_records(bw->enc, bw->read_buf, (size_t)n, lzop_out, bw,
                                       &bw->cb_err) != 0)
            return -1;
        off += (uint64_t)n;
    }
    bw->spliced = 1;
    return 0;
}

/* libarchive writes unbuffered, so tar_pos is exactly where each byte sits
 * in the tar: that is how the spliced member's stand-in zeros are found. */
static la_ssize_t tar_out(struct archive *a, void *ctx, const void *buf, size_t len)
{
    (void)a;
    backup_writer *bw = ctx;
    if (bw->discard)
        return (la_ssize_t)len;
    const unsigned char *p = buf;
    size_t left = len;
    while (left > 0) {
        uint64_t pos = bw->tar_pos;
        size_t n = left;
        if (pos >= bw->splice_from && pos < bw->splice_to) {
            if (!bw->spliced && splice_records(bw) != 0)
                return -1;
            if (n > bw->splice_to - pos)
                n = (size_t)(bw->splice_to - pos);
        } else {
            if (pos < bw->splice_from && n > bw->splice_from - pos)
                n = (size_t)(bw->splice_from - pos);
            if (lzop_encoder_write(bw->enc, p, n, lzop_out, bw, &bw->cb_err) != 0)
                return -1;
        }
        p += n;
        left -= n;
        bw->tar_pos += n;
    }
    return (la_ssize_t)len;
}

/* The error of a failed libarchive call: ours from the callback if that is
 * where it failed, libarchive's message otherwise. */
static int archive_failure(backup_writer *bw, const char *what, walfs_err *err)
{
    if (bw->cb_err.code) {
        if (err)
            *err = bw->cb_err;
        return bw->cb_err.code;
    }
    return walfs_err_set(err, -EIO, "%s in %s: %s", what, bw->part_key,
                         archive_error_string(bw->ar) ? archive_error_string(bw->ar)
                                                      : "libarchive error");
}

static void drop_partition(backup_writer *bw)
{
    if (bw->ar) {
        /* Freeing closes, which writes the end blocks: not to an upload we abort. */
        bw->discard = 1;
        archive_write_free(bw->ar);
        bw->discard = 0;
        bw->ar = NULL;
    }
    if (bw->up) {
        store_upload_abort(bw->st, bw->up);
        bw->up = NULL;
    }
    lzop_encoder_free(bw->enc);
    bw->enc = NULL;
    free(bw->part_key);
    bw->part_key = NULL;
    bw->part_len = 0;
}

static int open_partition(backup_writer *bw, walfs_err *err)
{
    walfs_err_clear(&bw->cb_err);
    char key[WALE_KEY_MAX];
    wale_partition_key(key, sizeof key, bw->name, bw->n_partitions);
    if (!(bw->part_key = strdup(key))) {
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    bw->n_partitions++;
    bw->part_bytes = 0;
    bw->part_members = 0;
    bw->part_len = 0;
    bw->tar_pos = 0;
    /* What `lzop -c` writes when reading the tar from a pipe. */
    bw->enc = lzop_encoder_new(0, (int64_t)time(NULL));
    if (!bw->enc)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    int rc = store_upload_begin(bw->st, bw->part_key, &bw->up, err);
    if (rc) {
        bw->up = NULL;
        return walfs_err_prefix(err, "starting the upload of %s: ", bw->part_key);
    }
    bw->ar = archive_write_new();
    if (!bw->ar)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    /* Unbuffered (close_partition pads to TAR_RECORD itself), so that
     * tar_out sees every byte at the moment libarchive produces it. */
    if (archive_write_set_format_pax(bw->ar) != ARCHIVE_OK ||
        archive_write_set_bytes_per_block(bw->ar, 0) != ARCHIVE_OK ||
        archive_write_open2(bw->ar, bw, NULL, tar_out, NULL, NULL) != ARCHIVE_OK)
        return archive_failure(bw, "opening the tar stream", err);
    return 0;
}

static int close_partition(backup_writer *bw, walfs_err *err)
{
    int rc;
    static const unsigned char zeros[TAR_RECORD];
    if (archive_write_close(bw->ar) != ARCHIVE_OK)
        return archive_failure(bw, "closing the tar stream", err);
    archive_write_free(bw->ar);
    bw->ar = NULL;
    walfs_err_clear(&bw->cb_err);
    size_t pad = (size_t)((TAR_RECORD - bw->tar_pos % TAR_RECORD) % TAR_RECORD);
    if (pad && (rc = lzop_encoder_write(bw->enc, zeros, pad, lzop_out, bw, &bw->cb_err)) != 0) {
        if (err)
            *err = bw->cb_err;
        return rc;
    }
    if ((rc = lzop_encoder_finish(bw->enc, lzop_out, bw, &bw->cb_err)) != 0) {
        if (err)
            *err = bw->cb_err;
        return rc;
    }
    if ((rc = flush_part(bw, err)) != 0)
        return rc;
    store_upload *up = bw->up;
    bw->up = NULL; /* commit frees it, whatever the result */
    if ((rc = store_upload_commit(bw->st, up, err)) != 0)
        return walfs_err_prefix(err, "completing the upload of %s: ", bw->part_key);
    if ((rc = remember_key(bw, bw->part_key, err)) != 0)
        return rc;
    lzop_encoder_free(bw->enc);
    bw->enc = NULL;
    free(bw->part_key);
    bw->part_key = NULL;
    return 0;
}

/* ---- cleanup ---- */

static void remove_key(backup_writer *bw, const char *key, int missing_ok)
{
    walfs_err e;
    walfs_err_clear(&e);
    int rc = store_remove(bw->st, key, &e);
    if (rc && !(missing_ok && rc == -ENOENT))
        log_warn("backup %s: could not remove %s after the failed backup (%s); delete it by hand "
                 "(without a sentinel WAL-E ignores it)",
                 bw->name, key, e.msg);
}

static void free_writer(backup_writer *bw)
{
    drop_partition(bw);
    for (size_t i = 0; i < bw->n_committed; i++)
        free(bw->committed[i]);
    free(bw->committed);
    free(bw->part_buf);
    free(bw->read_buf);
    free(bw->name);
    free(bw);
}

static void remove_uploaded(backup_writer *bw)
{
    drop_partition(bw);
    for (size_t i = bw->n_committed; i-- > 0;) {
        remove_key(bw, bw->committed[i], 0);
        free(bw->committed[i]);
    }
    bw->n_committed = 0;
}

void backup_writer_abort(backup_writer *bw)
{
    if (!bw)
        return;
    remove_uploaded(bw);
    free_writer(bw);
}

/* After a broken stream nothing of the backup can be kept: remove it now so
 * a caller that only reports the error leaves no half backup behind. */
static int fail_stream(backup_writer *bw, int rc, walfs_err *err)
{
    log_warn("backup %s failed, removing what was uploaded: %s", bw->name, err ? err->msg : "");
    remove_uploaded(bw);
    walfs_err_prefix(err, "backup %s abandoned, its uploaded partitions were removed (fix the "
                          "cause and run the backup again): ",
                     bw->name);
    bw->failed = rc;
    snprintf(bw->failed_msg, sizeof bw->failed_msg, "%s", err ? err->msg : "");
    return rc;
}

/* ---- API ---- */

static int count_object(void *ctx, const store_entry *e)
{
    if (!e->is_dir)
        (*(size_t *)ctx)++;
    return 0;
}

int backup_writer_begin(store *st, const char *name, const backup_writer_limits *limits,
                        backup_writer **out, walfs_err *err)
{
    *out = NULL;
    if (!wale_is_backup_name(name, strlen(name)))
        return walfs_err_set(err, -EINVAL,
                             "invalid backup name '%s': expected base_<24 upper-case hex>_<8 "
                             "upper-case hex/decimal chars> as WAL-E names backups",
                             name);
    /* Writing over a complete backup, or next to leftovers of an earlier
     * attempt, would yield a backup mixing two runs. */
    char sentinel[WALE_KEY_MAX];
    wale_sentinel_key(sentinel, sizeof sentinel, name);
    store_stat sb;
    walfs_err e;
    walfs_err_clear(&e);
    int rc = store_stat_key(st, sentinel, &sb, &e);
    if (rc == 0)
        return walfs_err_set(err, -EEXIST,
                             "backup %s already exists in %s: choose another name or delete it "
                             "first",
                             name, store_url(st)[0] ? store_url(st) : "the archive");
    if (rc != -ENOENT) {
        if (err)
            *err = e;
        return walfs_err_prefix(err, "checking whether backup %s exists: ", name);
    }
    char dir[WALE_KEY_MAX];
    wale_partitions_prefix(dir, sizeof dir, name);
    size_t n_objects = 0;
    walfs_err_clear(&e);
    rc = store_list(st, dir, count_object, &n_objects, &e);
    if (rc == 0 && n_objects > 0)
        rc = walfs_err_set(err, -EEXIST,
                           "%s already holds %zu object(s) of an unfinished backup: delete them "
                           "first or choose another name",
                           dir, n_objects);
    else if (rc) {
        if (err)
            *err = e;
        walfs_err_prefix(err, "checking for leftovers of backup %s: ", name);
    }
    if (rc)
        return rc;

    backup_writer *bw = calloc(1, sizeof *bw);
    if (!bw)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    bw->st = st;
    bw->max_bytes = limits && limits->max_partition_bytes ? limits->max_partition_bytes
                                                          : WALE_MAX_PARTITION_BYTES;
    bw->max_members = limits && limits->max_partition_members ? limits->max_partition_members
                                                              : WALE_MAX_PARTITION_MEMBERS;
    bw->part_size = limits && limits->upload_part_size ? limits->upload_part_size
                                                       : DEFAULT_PART_SIZE;
    if (bw->part_size < MIN_PART_SIZE)
        bw->part_size = MIN_PART_SIZE;
    bw->name = strdup(name);
    bw->part_buf = malloc(bw->part_size);
    bw->read_buf = malloc(READ_CHUNK);
    if (!bw->name || !bw->part_buf || !bw->read_buf) {
        free_writer(bw);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    *out = bw;
    return 0;
}

/* Streams exactly m->size bytes of fd into the archive. */
static int copy_data(backup_writer *bw, const backup_writer_member *m, int fd, walfs_err *err)
{
    uint64_t off = 0;
    while (off < m->size) {
        size_t want = m->size - off < READ_CHUNK ? (size_t)(m->size - off) : READ_CHUNK;
        ssize_t n = pread(fd, bw->read_buf, want, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return walfs_err_set(err, -errno, "reading %s for the backup: %s", m->path,
                                 strerror(errno));
        }
        if (n == 0)
            return walfs_err_set(err, -EIO,
                                 "%s has %" PRIu64 " bytes, %" PRIu64 " were announced: the file "
                                 "shrank during the backup",
                                 m->path, off, m->size);
        la_ssize_t w = archive_write_data(bw->ar, bw->read_buf, (size_t)n);
        if (w != n)
            return archive_failure(bw, "writing member data", err);
        off += (uint64_t)n;
    }
    return 0;
}

static int check_member(const backup_writer_member *m, walfs_err *err)
{
    if (!m->path)
        return walfs_err_set(err, -EINVAL, "backup member without a path");
    if (m->path[0] == '\0') {
        if (m->type != MEMBER_DIR)
            return walfs_err_set(err, -EINVAL, "the root member (\"\") must be a directory");
        return 0;
    }
    /* Names the index would refuse or rename would make the backup lie. */
    int escapes = 0;
    char *norm = backup_normalize_path(m->path, &escapes);
    int same = norm && strcmp(norm, m->path) == 0;
    free(norm);
    if (!same)
        return walfs_err_set(err, -EINVAL,
                             "member path '%s' is not a normalized relative path (no leading '/', "
                             "'.', '..', '//' or trailing '/')",
                             m->path);
    switch (m->type) {
    case MEMBER_FILE:
    case MEMBER_DIR:
        return 0;
    case MEMBER_SYMLINK:
    case MEMBER_HARDLINK:
        if (!m->link_target || !*m->link_target)
            return walfs_err_set(err, -EINVAL, "link member %s has no target", m->path);
        return 0;
    default:
        return walfs_err_set(err, -EINVAL,
                             "member %s: only files, directories, symlinks and hard links can be "
                             "written",
                             m->path);
    }
}

/* Where a FILE member's data comes from: plain bytes, or lzop records. */
typedef struct member_source {
    int fd;
    int records;
    uint64_t records_len;
} member_source;

static int add_member(backup_writer *bw, const backup_writer_member *m, uint64_t size,
                      const member_source *src, walfs_err *err)
{
    int rc;
    if (bw->ar && bw->part_members > 0 &&
        (bw->part_bytes + size >= bw->max_bytes || bw->part_members >= bw->max_members)) {
        if ((rc = close_partition(bw, err)) != 0)
            return rc;
    }
    if (!bw->ar && (rc = open_partition(bw, err)) != 0)
        return rc;

    struct archive_entry *e = archive_entry_new();
    if (!e)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    /* CPython names the data directory itself "/" and every directory with a
     * trailing '/'. */
    char *name = NULL;
    if (asprintf(&name, "%s%s", m->path, m->type == MEMBER_DIR ? "/" : "") < 0) {
        archive_entry_free(e);
        return walfs_err_set(err, -ENOMEM, "out of memory");
    }
    archive_entry_set_pathname(e, name);
    uint32_t perm = m->mode & 07777;
    switch (m->type) {
    case MEMBER_DIR:
        archive_entry_set_mode(e, AE_IFDIR | perm);
        break;
    case MEMBER_SYMLINK:
        archive_entry_set_mode(e, AE_IFLNK | perm);
        archive_entry_set_symlink(e, m->link_target);
        break;
    case MEMBER_HARDLINK:
        archive_entry_set_mode(e, AE_IFREG | perm);
        archive_entry_set_hardlink(e, m->link_target);
        break;
    default:
        archive_entry_set_mode(e, AE_IFREG | perm);
        break;
    }
    archive_entry_set_size(e, (la_int64_t)size);
    archive_entry_set_uid(e, m->uid);
    archive_entry_set_gid(e, m->gid);
    if (m->uname)
        archive_entry_set_uname(e, m->uname);
    if (m->gname)
        archive_entry_set_gname(e, m->gname);
    archive_entry_set_mtime(e, (time_t)m->mtime_sec, (long)m->mtime_nsec);
    int r = archive_write_header(bw->ar, e);
    archive_entry_free(e);
    free(name);
    if (r < ARCHIVE_WARN)
        return archive_failure(bw, "writing the header of a member", err);
    if (r == ARCHIVE_WARN)
        log_warn("backup %s: %s: %s", bw->name, m->path, archive_error_string(bw->ar));
    if (size > 0 && src->records) {
        /* libarchive fills the member with zeros when it finishes it:
         * those are the bytes the records stand in for. */
        bw->splice_from = bw->tar_pos;
        bw->splice_to = bw->tar_pos + size;
        bw->splice_fd = src->fd;
        bw->splice_len = src->records_len;
        bw->spliced = 0;
    } else if (size > 0 && (rc = copy_data(bw, m, src->fd, err)) != 0) {
        return rc;
    }
    r = m->type == MEMBER_FILE ? archive_write_finish_entry(bw->ar) : ARCHIVE_OK;
    int not_spliced = size > 0 && src->records && (!bw->spliced || bw->tar_pos < bw->splice_to);
    bw->splice_from = bw->splice_to = 0;
    bw->spliced = 0;
    if (r != ARCHIVE_OK)
        return archive_failure(bw, "finishing a member", err);
    if (not_spliced)
        return walfs_err_set(err, -EIO, "%s in %s: libarchive did not fill the member's data "
                             "with zeros as walfs expects of it; this libarchive cannot be used "
                             "for pushes, please report it", m->path, bw->part_key);
    bw->part_bytes += size;
    bw->part_members++;
    bw->expanded_size += size;
    return 0;
}

static int add_checked(backup_writer *bw, const backup_writer_member *m,
                       const member_source *src, walfs_err *err)
{
    if (bw->failed)
        return walfs_err_set(err, bw->failed, "backup %s already failed: %s", bw->name,
                             bw->failed_msg);
    int rc = check_member(m, err);
    if (rc)
        return rc;
    uint64_t size = m->type == MEMBER_FILE ? m->size : 0;
    /* Refused before anything is written, so the caller may go on without it. */
    if (size > bw->max_bytes)
        return walfs_err_set(err, -EFBIG,
                             "%s has %" PRIu64 " bytes, more than the %" PRIu64 " bytes a tar "
                             "partition may hold (WAL-E's TarMemberTooBigError): a WAL-E backup "
                             "cannot contain it",
                             m->path, size, bw->max_bytes);
    rc = add_member(bw, m, size, src, err);
    return rc ? fail_stream(bw, rc, err) : 0;
}

int backup_writer_add(backup_writer *bw, const backup_writer_member *m, int fd, walfs_err *err)
{
    member_source src = {.fd = fd};
    return add_checked(bw, m, &src, err);
}

int backup_writer_add_records(backup_writer *bw, const backup_writer_member *m, int fd,
                              uint64_t records_len, walfs_err *err)
{
    if (m->type != MEMBER_FILE)
        return walfs_err_set(err, -EINVAL, "member %s: only a file's data comes as records",
                             m->path ? m->path : "");
    member_source src = {.fd = fd, .records = 1, .records_len = records_len};
    return add_checked(bw, m, &src, err);
}

/* Appends s as a JSON string the way Python's json.dumps writes it
 * (ensure_ascii: every non-ASCII code point as \uXXXX). */
static int json_str(walfs_buf *b, const char *s, walfs_err *err)
{
    /* Room for the worst case of every escape below: they are written in place. */
    if (buf_reserve(b, 2 + strlen(s) * 12) != 0)
        return walfs_err_set(err, -ENOMEM, "out of memory");
    char *o = b->data + b->len;
    *o++ = '"';
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t cp;
        int extra;
        if (*p < 0x80) {
            cp = *p;
            extra = 0;
        } else if ((*p & 0xE0) == 0xC0) {
            cp = *p & 0x1F;
            extra = 1;
        } else if ((*p & 0xF0) == 0xE0) {
            cp = *p & 0x0F;
            extra = 2;
        } else if ((*p & 0xF8) == 0xF0) {
            cp = *p & 0x07;
            extra = 3;
        } else {
            return walfs_err_set(err, -EINVAL, "'%s' is not valid UTF-8", s);
        }
        p++;
        for (int i = 0; i < extra; i++, p++) {
            if ((*p & 0xC0) != 0x80)
                return walfs_err_set(err, -EINVAL, "'%s' is not valid UTF-8", s);
            cp = (cp << 6) | (*p & 0x3F);
        }
        switch (cp) {
        case '"': o += sprintf(o, "\\\""); break;
        case '\\': o += sprintf(o, "\\\\"); break;
        case '\n': o += sprintf(o, "\\n"); break;
        case '\r': o += sprintf(o, "\\r"); break;
        case '\t': o += sprintf(o, "\\t"); break;
        case '\b': o += sprintf(o, "\\b"); break;
        case '\f': o += sprintf(o, "\\f"); break;
        default:
            if (cp < 0x20 || (cp >= 0x7F && cp < 0x10000))
                o += sprintf(o, "\\u%04x", (unsigned)cp);
            else if (cp >= 0x10000) {
                cp -= 0x10000;
                o += sprintf(o, "\\u%04x\\u%04x", 0xD800u + (cp >> 10), 0xDC00u + (cp & 0x3FF));
            } else
                *o++ = (char)cp;
        }
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->data);
    return 0;
}

/* Byte for byte what WAL-E's json.dumps gives (", " and ": " separators,
 * keys in WAL-E's order), so the object is indistinguishable from WAL-E's. */
static int sentinel_json(const backup_writer *bw, const backup_writer_stop *stop, char **out,
                         size_t *out_len, walfs_err *err)
{
    walfs_buf b = {0};
    const char *prefix = stop->base_prefix ? stop->base_prefix : "";
    buf_puts(&b, "{\"wal_segment_backup_stop\": ");
    int rc = json_str(&b, stop->stop_segment, err);
    buf_puts(&b, ", \"wal_segment_offset_backup_stop\": ");
    if (!rc) rc = json_str(&b, stop->stop_offset, err);
    buf_printf(&b, ", \"expanded_size_bytes\": %" PRIu64 ", \"spec\": {\"base_prefix\": ",
               bw->expanded_size);
    if (!rc) rc = json_str(&b, prefix, err);
    buf_puts(&b, ", \"tablespaces\": []}}");
    if (!rc && b.err)
        rc = walfs_err_set(err, -ENOMEM, "out of memory");
    if (rc) {
        buf_free(&b);
        return rc;
    }
    *out = buf_take(&b, out_len);
    return 0;
}

static int check_stop(const backup_writer_stop *stop, walfs_err *err)
{
    size_t sl = strnlen(stop->stop_segment, sizeof stop->stop_segment);
    int ok = sl == 24;
    for (size_t i = 0; ok && i < sl; i++)
        ok = (stop->stop_segment[i] >= '0' && stop->stop_segment[i] <= '9') ||
             (stop->stop_segment[i] >= 'A' && stop->stop_segment[i] <= 'F');
    if (!ok)
        return walfs_err_set(err, -EINVAL,
                             "stop segment '%.*s' is not a WAL file name (24 upper-case hex)",
                             (int)sl, stop->stop_segment);
    size_t ol = strnlen(stop->stop_offset, sizeof stop->stop_offset);
    if (ol != 8)
        return walfs_err_set(err, -EINVAL, "stop offset '%.*s' must have 8 characters", (int)ol,
                             stop->stop_offset);
    return 0;
}

int backup_writer_finish(backup_writer *bw, const backup_writer_stop *stop, walfs_err *err)
{
    char ev_key[WALE_KEY_MAX], sentinel_key[WALE_KEY_MAX], *json = NULL;
    size_t json_len = 0;
    int sentinel_tried = 0, ev_stored = 0;
    if (bw->failed) {
        int code = walfs_err_set(err, bw->failed, "backup %s already failed: %s", bw->name,
                                 bw->failed_msg);
        free_writer(bw);
        return code;
    }
    int rc = check_stop(stop, err);
    wale_extended_version_key(ev_key, sizeof ev_key, bw->name);
    wale_sentinel_key(sentinel_key, sizeof sentinel_key, bw->name);
    if (!rc)
        rc = sentinel_json(bw, stop, &json, &json_len, err);
    /* A backup without members still needs partition 0 for readers. */
    if (!rc && !bw->ar && bw->n_partitions == 0)
        rc = open_partition(bw, err);
    if (!rc && bw->ar)
        rc = close_partition(bw, err);
    if (!rc && stop->pg_version) {
        rc = store_put(bw->st, ev_key, stop->pg_version, strlen(stop->pg_version), -1, err);
        if (rc)
            walfs_err_prefix(err, "storing %s: ", ev_key);
        else
            ev_stored = 1;
    }
    if (!rc) {
        sentinel_tried = 1;
        rc = store_put(bw->st, sentinel_key, json, json_len, -1, err);
        if (rc)
            walfs_err_prefix(err, "storing the sentinel %s: ", sentinel_key);
    }
    if (rc) {
        log_warn("backup %s failed, removing what was uploaded: %s", bw->name,
                 err ? err->msg : "");
        drop_partition(bw);
        /* A put whose answer was lost may still have landed: the sentinel
         * goes first so the backup never looks complete over missing parts. */
        if (sentinel_tried)
            remove_key(bw, sentinel_key, 1);
        if (ev_stored)
            remove_key(bw, ev_key, 0);
        remove_uploaded(bw);
        walfs_err_prefix(err, "backup %s not written (nothing of it was kept; retry once the "
                              "cause is fixed): ",
                         bw->name);
    }
    free(json);
    free_writer(bw);
    return rc;
}
