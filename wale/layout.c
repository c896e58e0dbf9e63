#include "wale/layout.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define WAL_PREFIX WALE_WAL_DIR "/"
#define BACKUPS_PREFIX WALE_BASEBACKUPS_DIR "/"
#define SENTINEL_SUFFIX "_backup_stop_sentinel.json"
#define PARTITIONS_DIR "tar_partitions/"
#define PARTITION_SUFFIX ".tar" WALE_LZO_SUFFIX

static int key(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int key(char *out, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, len, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < len ? 0 : -1;
}

/* The length of listed without suffix, when it ends in suffix after at
 * least one character; else 0. */
static size_t stem_len(const char *listed, const char *suffix)
{
    size_t n = strlen(listed), sl = strlen(suffix);
    return n > sl && strcmp(listed + n - sl, suffix) == 0 ? n - sl : 0;
}

const char *wale_wal_prefix(void)
{
    return WAL_PREFIX;
}

int wale_wal_key(char *out, size_t len, const char *file)
{
    return key(out, len, WAL_PREFIX "%s" WALE_LZO_SUFFIX, file);
}

size_t wale_wal_file_len(const char *listed)
{
    return stem_len(listed, WALE_LZO_SUFFIX);
}

const char *wale_backups_prefix(void)
{
    return BACKUPS_PREFIX;
}

int wale_backup_name(char *out, size_t len, const char *segment, const char *offset8)
{
    return key(out, len, "base_%s_%s", segment, offset8);
}

static int is_hex_upper(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F')))
            return 0;
    return 1;
}

int wale_is_backup_name(const char *name, size_t len)
{
    return len == 5 + 24 + 1 + 8 && strncmp(name, "base_", 5) == 0 &&
           is_hex_upper(name + 5, 24) && name[29] == '_' && is_hex_upper(name + 30, 8);
}

int wale_sentinel_key(char *out, size_t len, const char *backup)
{
    return key(out, len, BACKUPS_PREFIX "%s" SENTINEL_SUFFIX, backup);
}

size_t wale_sentinel_backup_len(const char *listed)
{
    return stem_len(listed, SENTINEL_SUFFIX);
}

int wale_backup_prefix(char *out, size_t len, const char *backup)
{
    return key(out, len, BACKUPS_PREFIX "%s/", backup);
}

int wale_extended_version_key(char *out, size_t len, const char *backup)
{
    return key(out, len, BACKUPS_PREFIX "%s/extended_version.txt", backup);
}

int wale_partitions_prefix(char *out, size_t len, const char *backup)
{
    return key(out, len, BACKUPS_PREFIX "%s/" PARTITIONS_DIR, backup);
}

int wale_partition_key(char *out, size_t len, const char *backup, uint32_t number)
{
    return key(out, len, BACKUPS_PREFIX "%s/" PARTITIONS_DIR "part_%08u" PARTITION_SUFFIX, backup,
               (unsigned)number);
}

int wale_partition_number(const char *listed, uint32_t *number)
{
    if (strlen(listed) != 21 || strncmp(listed, "part_", 5) != 0 ||
        strcmp(listed + 13, PARTITION_SUFFIX) != 0)
        return 0;
    uint32_t v = 0;
    for (int i = 5; i < 13; i++) {
        if (listed[i] < '0' || listed[i] > '9')
            return 0;
        v = v * 10 + (uint32_t)(listed[i] - '0');
    }
    *number = v;
    return 1;
}

int wale_index_key(char *out, size_t len, const char *backup)
{
    return key(out, len, BACKUPS_PREFIX "%s/walfs_index.json", backup);
}

int wale_lease_key(char *out, size_t len, const char *backup)
{
    return key(out, len, BACKUPS_PREFIX "%s/walfs_push.json", backup);
}
