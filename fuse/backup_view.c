#include "fuse/backup_view.h"
#include "fuse/errno_policy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "backup/block_reader.h"
#include "common/log.h"
#include "backup/backup_catalog.h"

#define LATEST "LATEST"
#define BLOCK_CACHE_BYTES (48u * 1024 * 1024)
#define READAHEAD_WORKERS 4
#define READAHEAD_BYTES (16u * 1024 * 1024)
/* Opening a file also fetches this much of the partition after it: readers
 * of a data directory open the small files of one directory in a row, and
 * the tar holds them side by side, so one request serves many files. */
#define NEIGHBOURHOOD_BYTES (8u * 1024 * 1024)

struct backup_view {
    store *st;
    backup_catalog *catalog;
    block_reader *reader;
    uid_t uid;
    gid_t gid;
    time_t mount_time;
};

typedef struct member_handle {
    handle_kind kind;               /* HANDLE_BACKUP_MEMBER */
    char *list_text;                /* BACKUP_LIST_FILE: its content; the rest is unused */
    size_t list_len;
    const backup_index *idx;        /* held from open to release */
    const backup_member *member;    /* the member holding the data (hard links resolved) */
    const backup_partition *partition;
    uint64_t next_sequential;       /* where a sequential reader reads next */
    int direct_io;                  /* see backup_view_needs_direct_io */
} member_handle;

backup_view *backup_view_new(store *st, const char *cache_dir, uid_t uid, gid_t gid,
                             time_t mount_time, walfs_err *err)
{
    backup_view *bv = calloc(1, sizeof *bv);
    if (!bv) {
        walfs_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    bv->uid = uid;
    bv->gid = gid;
    bv->mount_time = mount_time;
    bv->st = st;
    bv->catalog = backup_catalog_new(st, cache_dir, err);
    if (!bv->catalog) {
        backup_view_free(bv);
        return NULL;
    }
    return bv;
}

int backup_view_start(backup_view *bv, walfs_err *err)
{
    if (!bv->reader)
        bv->reader = block_reader_new(bv->st, BLOCK_CACHE_BYTES, READAHEAD_WORKERS,
                                      READAHEAD_BYTES, err);
    return bv->reader ? 0 : err->code ? err->code : -ENOMEM;
}

void backup_view_free(backup_view *bv)
{
    if (!bv)
        return;
    block_reader_free(bv->reader);
    backup_catalog_free(bv->catalog);
    free(bv);
}

/* Through the one policy, named as the user sees the path. */
static int report(int rc, const walfs_err *err, const char *op, const char *rel)
{
    char path[4200];
    snprintf(path, sizeof path, "basebackups_005/%s", rel);
    return fs_errno(rc, err, op, path);
}

/* Splits "base_X_Y/some/path" into the backup name and the member path. */
static int split(const char *rel, char name[64], const char **member)
{
    const char *slash = strchr(rel, '/');
    size_t n = slash ? (size_t)(slash - rel) : strlen(rel);
    if (n == 0 || n >= 64)
        return -ENOENT;
    memcpy(name, rel, n);
    name[n] = '\0';
    *member = slash ? slash + 1 : "";
    return 0;
}

/* The index points a hard link straight at the file holding the data. */
static const backup_member *resolve_hardlink(const backup_index *idx, const backup_member *m)
{
    return m->type == MEMBER_HARDLINK ? &idx->members[m->link_member] : m;
}

static void fill_member_stat(const backup_member *m, const backup_member *data, struct stat *st)
{
    memset(st, 0, sizeof *st);
    mode_t type = S_IFREG;
    switch (data->type) {
    case MEMBER_DIR: type = S_IFDIR; break;
    case MEMBER_SYMLINK: type = S_IFLNK; break;
    case MEMBER_FIFO: type = S_IFIFO; break;
    case MEMBER_CHARDEV: type = S_IFCHR; break;
    case MEMBER_BLOCKDEV: type = S_IFBLK; break;
    default: break;
    }
    /* A hard link shows its own name's metadata over the shared data. */
    st->st_mode = type | (m->mode & 07777);
    st->st_nlink = type == S_IFDIR ? 2 : 1;
    st->st_uid = m->uid;
    st->st_gid = m->gid;
    st->st_size = (off_t)(data->type == MEMBER_SYMLINK && data->link_target
                              ? strlen(data->link_target)
                              : data->size);
    st->st_blocks = (blkcnt_t)((data->size + 511) / 512);
    st->st_blksize = 1024 * 1024;
    st->st_mtim.tv_sec = m->mtime_sec;
    st->st_mtim.tv_nsec = m->mtime_nsec;
    st->st_atim = st->st_ctim = st->st_mtim;
    if (type == S_IFCHR || type == S_IFBLK)
        st->st_rdev = makedev(data->rdev_major, data->rdev_minor);
}

static void fill_dir(const backup_view *bv, struct stat *st, time_t mtime, mode_t mode)
{
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFDIR | mode;
    st->st_nlink = 2;
    st->st_uid = bv->uid;
    st->st_gid = bv->gid;
    st->st_mtime = st->st_ctime = st->st_atime = mtime;
}

/* The backup LATEST points to; -ENOENT when there is none. */
static int latest_backup(backup_view *bv, backup_entry *out, walfs_err *err)
{
    backup_entry *list;
    size_t n;
    int latest;
    int rc = backup_catalog_list(bv->catalog, &list, &n, &latest, err);
    if (rc)
        return rc;
    if (latest >= 0)
        *out = list[latest];
    free(list);
    return latest >= 0 ? 0 : -ENOENT;
}

int backup_view_getattr(backup_view *bv, const char *rel, struct stat *st)
{
    walfs_err err = {0};
    if (rel[0] == '\0') {
        fill_dir(bv, st, bv->mount_time, 0755);
        return 0;
    }
    if (strcmp(rel, BACKUP_LIST_FILE) == 0) {
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_uid = bv->uid;
        st->st_gid = bv->gid;
        st->st_mtime = st->st_ctime = st->st_atime = time(NULL);
        return 0;
    }
    if (strcmp(rel, LATEST) == 0) {
        backup_entry latest;
        int rc = latest_backup(bv, &latest, &err);
        if (rc)
            return report(rc, &err, "lookup", rel);
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFLNK | 0777;
        st->st_nlink = 1;
        st->st_uid = bv->uid;
        st->st_gid = bv->gid;
        st->st_size = (off_t)strlen(latest.name);
        st->st_mtime = st->st_ctime = st->st_atime = latest.sentinel_mtime;
        return 0;
    }
    char name[64];
    const char *member;
    if (split(rel, name, &member) != 0)
        return -ENOENT;
    if (member[0] == '\0') {
        /* The backup directory itself: no need to index it to stat it. */
        backup_entry entry;
        int rc = backup_catalog_find(bv->catalog, name, &entry, &err);
        if (rc)
            return report(rc, &err, "lookup", rel);
        fill_dir(bv, st, entry.sentinel_mtime, 0700);
        return 0;
    }
    const backup_index *idx;
    int rc = backup_catalog_acquire(bv->catalog, name, &idx, &err);
    if (rc)
        return report(rc, &err, "lookup", rel);
    const backup_member *m = backup_index_find(idx, member);
    const backup_member *data = m ? resolve_hardlink(idx, m) : NULL;
    if (data)
        fill_member_stat(m, data, st);
    backup_catalog_release(bv->catalog, idx);
    return data ? 0 : -ENOENT;
}

int backup_view_readdir(backup_view *bv, const char *rel, void *buf, fuse_fill_dir_t filler)
{
    walfs_err err = {0};
    if (rel[0] == '\0') {
        backup_entry *list;
        size_t n;
        int latest;
        int rc = backup_catalog_list(bv->catalog, &list, &n, &latest, &err);
        if (rc)
            return report(rc, &err, "list", rel);
        struct stat st = {.st_mode = S_IFDIR | 0700};
        struct stat fst = {.st_mode = S_IFREG | 0444};
        filler(buf, BACKUP_LIST_FILE, &fst, 0, 0);
        for (size_t i = 0; i < n; i++)
            filler(buf, list[i].name, &st, 0, 0);
        if (latest >= 0) {
            struct stat lst = {.st_mode = S_IFLNK | 0777};
            filler(buf, LATEST, &lst, 0, 0);
        }
        free(list);
        return 0;
    }
    char name[64];
    const char *member;
    if (split(rel, name, &member) != 0)
        return -ENOENT;
    const backup_index *idx;
    int rc = backup_catalog_acquire(bv->catalog, name, &idx, &err);
    if (rc)
        return report(rc, &err, "list", rel);
    const backup_member *dir = backup_index_find(idx, member);
    if (!dir || dir->type != MEMBER_DIR) {
        backup_catalog_release(bv->catalog, idx);
        return dir ? -ENOTDIR : -ENOENT;
    }
    for (size_t i = dir->first_child; i < (size_t)dir->first_child + dir->n_children; i++) {
        const backup_member *c = &idx->members[i];
        struct stat st;
        fill_member_stat(c, resolve_hardlink(idx, c), &st);
        filler(buf, c->name, &st, 0, 0);
    }
    backup_catalog_release(bv->catalog, idx);
    return 0;
}

int backup_view_readlink(backup_view *bv, const char *rel, char *buf, size_t size)
{
    walfs_err err = {0};
    const char *target = NULL;
    backup_entry latest;
    const backup_index *idx = NULL;
    if (strcmp(rel, LATEST) == 0) {
        int rc = latest_backup(bv, &latest, &err);
        if (rc)
            return report(rc, &err, "readlink", rel);
        target = latest.name;
    } else {
        char name[64];
        const char *member;
        if (split(rel, name, &member) != 0 || member[0] == '\0')
            return -EINVAL;
        int rc = backup_catalog_acquire(bv->catalog, name, &idx, &err);
        if (rc)
            return report(rc, &err, "readlink", rel);
        const backup_member *m = backup_index_find(idx, member);
        if (!m || m->type != MEMBER_SYMLINK || !m->link_target) {
            backup_catalog_release(bv->catalog, idx);
            return m ? -EINVAL : -ENOENT;
        }
        target = m->link_target;
    }
    snprintf(buf, size, "%s", target);
    backup_catalog_release(bv->catalog, idx);
    return 0;
}

static int open_backup_list(backup_view *bv, void **handle);

/* Reads the tar header in front of m's data, with the first bytes of the
 * data in the same request (the block reader fetches adjacent lzop blocks
 * at once and keeps them for the reads that follow).  -EBADMSG when the
 * partition disagrees with the index, another negative errno when it could
 * not be read. */
static int verify_member(backup_view *bv, const backup_index *idx, const backup_member *m,
                         walfs_err *err)
{
    /* An empty file too: a forged size 0 would otherwise serve a real
     * file as empty. */
    char path[BACKUP_PATH_MAX + 1];
    if (m->data_offset < BACKUP_TAR_HEADER_LEN)
        return walfs_err_set(err, -EBADMSG, "\"%s\" has its data at offset %llu, where no tar "
                             "header can precede it", backup_index_path(idx, m, path, sizeof path),
                             (unsigned long long)m->data_offset);
    unsigned char buf[BACKUP_TAR_HEADER_LEN + 4096];
    size_t want = BACKUP_TAR_HEADER_LEN + (m->size < 4096 ? (size_t)m->size : 4096);
    ssize_t n = block_reader_read(bv->reader, &idx->partitions[m->partition],
                                  m->data_offset - BACKUP_TAR_HEADER_LEN, buf, want, err);
    if (n < 0)
        return (int)n;
    if ((size_t)n != want)
        return walfs_err_set(err, -EBADMSG, "\"%s\" lies past the end of partition %s",
                             backup_index_path(idx, m, path, sizeof path), idx->partitions[m->partition].key);
    return backup_member_check_header(idx, m, buf, err);
}

int backup_view_open(backup_view *bv, const char *rel, void **handle)
{
    if (strcmp(rel, BACKUP_LIST_FILE) == 0)
        return open_backup_list(bv, handle);
    walfs_err err = {0};
    char name[64];
    const char *member;
    if (split(rel, name, &member) != 0 || member[0] == '\0')
        return -EISDIR;
    const backup_index *idx;
    const backup_member *data;
    backup_member seen = {0}; /* what the lying index told the kernel */
    /* A second round only after the index was caught lying and was
     * replaced by one built from the partitions. */
    for (int round = 0;; round++) {
        int rc = backup_catalog_acquire(bv->catalog, name, &idx, &err);
        if (rc)
            return report(rc, &err, "open", rel);
        const backup_member *m = backup_index_find(idx, member);
        data = m ? resolve_hardlink(idx, m) : NULL;
        if (!data || data->type != MEMBER_FILE) {
            backup_catalog_release(bv->catalog, idx);
            return !data ? -ENOENT : data->type == MEMBER_DIR ? -EISDIR : -EACCES;
        }
        /* The kernel let this open through on the forged attributes
         * (default_permissions); serving it would honour them.  It fetches
         * the real ones on its next lookup.  A forged size alone is served
         * (the handle is direct_io, so reads are not cut at it). */
        if (round > 0 && (m->type != seen.type || m->mode != seen.mode || m->uid != seen.uid ||
                          m->gid != seen.gid)) {
            log_error("backup %s, member %s: the discarded index gave it mode %04o, owner %u:%u, "
                      "%llu bytes; the partitions say mode %04o, owner %u:%u, %llu bytes; refusing "
                      "this open, which the kernel allowed on the wrong attributes: open it again "
                      "once the kernel has re-read them (--attr-timeout)",
                      name, member, (unsigned)seen.mode, (unsigned)seen.uid, (unsigned)seen.gid,
                      (unsigned long long)seen.size, (unsigned)m->mode, (unsigned)m->uid,
                      (unsigned)m->gid, (unsigned long long)m->size);
            backup_catalog_release(bv->catalog, idx);
            return -EIO;
        }
        seen = *m;
        rc = verify_member(bv, idx, data, &err);
        if (rc == 0)
            break;
        if (rc != -EBADMSG) {
            backup_catalog_release(bv->catalog, idx);
            return report(rc, &err, "open", rel);
        }
        int rebuild = round == 0 && backup_catalog_distrust(bv->catalog, idx);
        log_error("backup %s, member %s: %s; %s", name, member, err.msg,
                  rebuild ? "the index walfs loaded is wrong (forged or damaged): discarding it "
                            "and indexing the backup from its partitions"
                          : "the index built from the partitions disagrees with them: refusing "
                            "to serve the file");
        backup_catalog_release(bv->catalog, idx);
        if (!rebuild)
            return -EIO;
        walfs_err_clear(&err);
    }
    member_handle *h = calloc(1, sizeof *h);
    if (!h) {
        backup_catalog_release(bv->catalog, idx);
        return -ENOMEM;
    }
    h->kind = HANDLE_BACKUP_MEMBER;
    h->direct_io = backup_catalog_was_distrusted(bv->catalog, name);
    h->idx = idx;
    h->member = data;
    h->partition = &idx->partitions[data->partition];
    uint64_t end = data->data_offset + (data->size > NEIGHBOURHOOD_BYTES ? data->size
                                                                       : NEIGHBOURHOOD_BYTES);
    if (end > h->partition->blocks.uncomp_size)
        end = h->partition->blocks.uncomp_size;
    if (data->size > 0)
        block_reader_readahead(bv->reader, h->partition, data->data_offset, end);
    *handle = h;
    return 0;
}

int backup_view_needs_direct_io(void *handle)
{
    return ((member_handle *)handle)->direct_io;
}

int backup_view_read(backup_view *bv, void *handle, char *buf, size_t size, off_t off)
{
    member_handle *h = handle;
    if (h->list_text) {
        if (off < 0 || (uint64_t)off >= h->list_len)
            return 0;
        size_t n = h->list_len - (size_t)off < size ? h->list_len - (size_t)off : size;
        memcpy(buf, h->list_text + off, n);
        return (int)n;
    }
    const backup_member *m = h->member;
    if (off < 0 || (uint64_t)off >= m->size)
        return 0;
    uint64_t want = m->size - (uint64_t)off < size ? m->size - (uint64_t)off : size;
    uint64_t start = m->data_offset + (uint64_t)off;
    /* Sequential readers (rsync, cp) get the rest of the file fetched
     * ahead.  The kernel's own read-ahead sends requests from several threads
     * that arrive slightly out of order, so "sequential" means moving forward
     * from where the last read was. */
    if ((uint64_t)off + READAHEAD_BYTES >= h->next_sequential &&
        (uint64_t)off <= h->next_sequential + READAHEAD_BYTES)
        block_reader_readahead(bv->reader, h->partition, start + want,
                               m->data_offset + m->size);
    walfs_err err = {0};
    ssize_t n = block_reader_read(bv->reader, h->partition, start, buf, (size_t)want, &err);
    char path[BACKUP_PATH_MAX + 1];
    if (n < 0) {
        log_error("read %s (backup %s) failed: %s", backup_index_path(h->idx, m, path, sizeof path),
                  h->idx->backup_name,
                  err.msg[0] ? err.msg : strerror((int)-n));
        return n == -ENOMEM ? -ENOMEM : -EIO;
    }
    if ((uint64_t)n != want) {
        log_error("read %s (backup %s): partition %s ended early; the backup is damaged",
                  backup_index_path(h->idx, m, path, sizeof path), h->idx->backup_name, h->partition->key);
        return -EIO;
    }
    if ((uint64_t)off + want > h->next_sequential)
        h->next_sequential = (uint64_t)off + want;
    return (int)n;
}

void backup_view_release(backup_view *bv, void *handle)
{
    member_handle *h = handle;
    if (h->idx)
        backup_catalog_release(bv->catalog, h->idx);
    free(h->list_text);
    free(h);
}

/* A table field: tabs or line breaks in it would shift the columns. */
static void append_field(FILE *f, const char *text, int last)
{
    for (const char *c = text; *c; c++)
        fputc(*c == '\t' || *c == '\n' || *c == '\r' ? ' ' : *c, f);
    fputc(last ? '\n' : '\t', f);
}

/* WAL-E's columns in WAL-E's order (excel-tab, but with plain \n line
 * ends for the shell), then pg_version from extended_version.txt.  One GET
 * of the sentinel and of extended_version.txt per backup, as --detail costs
 * WAL-E; a backup whose metadata cannot be read fails the whole open rather
 * than print a row that looks complete. */
static int open_backup_list(backup_view *bv, void **handle)
{
    walfs_err err = {0};
    backup_entry *list;
    size_t n;
    int latest;
    int rc = backup_catalog_list(bv->catalog, &list, &n, &latest, &err);
    if (rc)
        return report(rc, &err, "open", BACKUP_LIST_FILE);
    member_handle *h = calloc(1, sizeof *h);
    FILE *f = h ? open_memstream(&h->list_text, &h->list_len) : NULL;
    if (!f) {
        free(h);
        free(list);
        return -ENOMEM;
    }
    h->kind = HANDLE_BACKUP_MEMBER;
    fputs("name\tlast_modified\texpanded_size_bytes\twal_segment_backup_start\t"
          "wal_segment_offset_backup_start\twal_segment_backup_stop\t"
          "wal_segment_offset_backup_stop\tpg_version\n", f);
    for (size_t i = 0; i < n && rc == 0; i++) {
        backup_details d;
        rc = backup_catalog_details(bv->catalog, list[i].name, &d, &err);
        if (rc == -ENOENT) { /* deleted since the listing */
            rc = 0;
            continue;
        }
        if (rc) {
            walfs_err_prefix(&err, "%s: ", list[i].name);
            break;
        }
        char when[40], size[32];
        struct tm tm;
        gmtime_r(&d.sentinel_mtime, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
        if (d.expanded_size_bytes >= 0)
            snprintf(size, sizeof size, "%lld", d.expanded_size_bytes);
        else
            size[0] = '\0';
        append_field(f, list[i].name, 0);
        append_field(f, when, 0);
        append_field(f, size, 0);
        append_field(f, d.start_segment, 0);
        append_field(f, d.start_offset, 0);
        append_field(f, d.stop_segment, 0);
        append_field(f, d.stop_offset, 0);
        append_field(f, d.pg_version, 1);
    }
    free(list);
    if (fclose(f) != 0 && rc == 0)
        rc = walfs_err_set(&err, -ENOMEM, "out of memory");
    if (rc) {
        free(h->list_text);
        free(h);
        return report(rc, &err, "open", BACKUP_LIST_FILE);
    }
    *handle = h;
    return 0;
}
