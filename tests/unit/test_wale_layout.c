/* wale/: every key walfs reads or writes, as WAL-E spells it, and the
 * sentinel parser; with names that are not WAL-E's. */
#include <stdint.h>
#include <string.h>

#include "tap.h"
#include "wale/layout.h"
#include "wale/sentinel.h"

#define B "base_000000010000000000000002_00000040"

static void test_wal(void)
{
    char k[WALE_KEY_MAX];
    CHECK(strcmp(wale_wal_prefix(), "wal_005/") == 0, "wal prefix");
    CHECK(wale_wal_key(k, sizeof k, "000000010000000000000003") == 0 &&
              strcmp(k, "wal_005/000000010000000000000003.lzo") == 0,
          "a segment's key");
    CHECK(wale_wal_key(k, sizeof k, "00000002.history") == 0 &&
              strcmp(k, "wal_005/00000002.history.lzo") == 0,
          "a history file's key");
    CHECK(wale_wal_key(k, 10, "000000010000000000000003") == -1 && strlen(k) == 9,
          "too small a buffer: refused, still terminated");
    CHECK(wale_wal_file_len("000000010000000000000003.lzo") == 24, "listed segment");
    CHECK(wale_wal_file_len("000000010000000000000002.00000028.backup.lzo") == 40,
          "listed backup history file");
    CHECK(wale_wal_file_len(".lzo") == 0, "just the suffix names nothing");
    CHECK(wale_wal_file_len("000000010000000000000003") == 0, "no suffix");
    CHECK(wale_wal_file_len("000000010000000000000003.lz4") == 0, "WAL-G's lz4");
    CHECK(strcmp(WALE_WAL_DIR, "wal_005") == 0 && strcmp(WALE_BASEBACKUPS_DIR, "basebackups_005") == 0,
          "the directories the mount shows");
}

static void test_backups(void)
{
    char k[WALE_KEY_MAX];
    CHECK(strcmp(wale_backups_prefix(), "basebackups_005/") == 0, "backups prefix");
    char name[WALE_BACKUP_NAME_SIZE];
    CHECK(wale_backup_name(name, sizeof name, "000000010000000000000002", "00000040") == 0 &&
              strcmp(name, B) == 0,
          "a backup's name from its start");
    CHECK(wale_backup_name(name, sizeof name - 1, "000000010000000000000002", "00000040") == -1,
          "a name buffer one short is refused");
    CHECK(wale_sentinel_key(k, sizeof k, B) == 0 &&
              strcmp(k, "basebackups_005/" B "_backup_stop_sentinel.json") == 0,
          "the sentinel is a sibling of the backup's directory");
    CHECK(wale_backup_prefix(k, sizeof k, B) == 0 && strcmp(k, "basebackups_005/" B "/") == 0,
          "the backup's directory");
    CHECK(wale_extended_version_key(k, sizeof k, B) == 0 &&
              strcmp(k, "basebackups_005/" B "/extended_version.txt") == 0,
          "extended_version.txt");
    CHECK(wale_partitions_prefix(k, sizeof k, B) == 0 &&
              strcmp(k, "basebackups_005/" B "/tar_partitions/") == 0,
          "the partitions' directory");
    CHECK(wale_partition_key(k, sizeof k, B, 0) == 0 &&
              strcmp(k, "basebackups_005/" B "/tar_partitions/part_00000000.tar.lzo") == 0,
          "partition 0");
    CHECK(wale_partition_key(k, sizeof k, B, 12345678) == 0 &&
              strcmp(k, "basebackups_005/" B "/tar_partitions/part_12345678.tar.lzo") == 0,
          "partition 12345678: eight decimal digits");
    CHECK(wale_index_key(k, sizeof k, B) == 0 &&
              strcmp(k, "basebackups_005/" B "/walfs_index.json") == 0,
          "walfs's index next to the backup");
    CHECK(wale_lease_key(k, sizeof k, B) == 0 &&
              strcmp(k, "basebackups_005/" B "/walfs_push.json") == 0,
          "a push's lease");

    CHECK(wale_sentinel_backup_len(B "_backup_stop_sentinel.json") == strlen(B),
          "a listed sentinel gives its backup's name");
    CHECK(wale_sentinel_backup_len("_backup_stop_sentinel.json") == 0,
          "the bare suffix names no backup");
    CHECK(wale_sentinel_backup_len(B) == 0, "a backup's directory is no sentinel");
    CHECK(wale_sentinel_backup_len(B "_backup_stop_sentinel.json.tmp") == 0,
          "a longer name is no sentinel");

    uint32_t n = 99;
    CHECK(wale_partition_number("part_00000007.tar.lzo", &n) == 1 && n == 7, "part 7");
    CHECK(wale_partition_number("part_99999999.tar.lzo", &n) == 1 && n == 99999999,
          "the largest part number");
    n = 99;
    CHECK(wale_partition_number("part_7.tar.lzo", &n) == 0 && n == 99, "unpadded");
    CHECK(wale_partition_number("part_000000007.tar.lzo", &n) == 0, "nine digits");
    CHECK(wale_partition_number("part_0000000a.tar.lzo", &n) == 0, "hex digit");
    CHECK(wale_partition_number("part_00000001.tar.lz4", &n) == 0, "WAL-G's lz4");
    CHECK(wale_partition_number("part_001.tar.lzo", &n) == 0, "WAL-G's numbering");
    CHECK(wale_partition_number("", &n) == 0, "empty");
}

static void test_backup_names(void)
{
    CHECK(wale_is_backup_name(B, strlen(B)), "WAL-E's name");
    CHECK(wale_is_backup_name("base_000000010000000000000002_0000004A", 38),
          "hex in the offset part (WAL-E's regexp allows it)");
    CHECK(wale_is_backup_name(B "_backup_stop_sentinel.json", strlen(B)),
          "the first len bytes are what is checked");
    CHECK(!wale_is_backup_name(B, strlen(B) - 1), "one short");
    CHECK(!wale_is_backup_name("base_000000010000000000000002_00000040x", 39), "one long");
    CHECK(!wale_is_backup_name("base_00000001000000000000000a_00000040", 38), "lower case");
    CHECK(!wale_is_backup_name("base_000000010000000000000002-00000040", 38), "no underscore");
    CHECK(!wale_is_backup_name("BASE_000000010000000000000002_00000040", 38), "upper-case base");
    CHECK(!wale_is_backup_name("base_000000010000000000000002_D_00000001000000000000", 38),
          "a WAL-G delta name");
}

static void test_sentinel(void)
{
    wale_sentinel s = {.expanded_size_bytes = -1};
    const char *json = "{\"wal_segment_backup_stop\": \"000000010000000000000004\", "
                       "\"wal_segment_offset_backup_stop\": \"00000256\", "
                       "\"expanded_size_bytes\": 123456, \"spec\": {\"base_prefix\": \"/x\"}}";
    CHECK(wale_sentinel_parse(json, strlen(json), &s) == 0 &&
              strcmp(s.stop_segment, "000000010000000000000004") == 0 &&
              strcmp(s.stop_offset, "00000256") == 0 && s.expanded_size_bytes == 123456,
          "WAL-E's sentinel");
    wale_sentinel t = {.stop_segment = "keep", .stop_offset = "keep", .expanded_size_bytes = -1};
    CHECK(wale_sentinel_parse("{}", 2, &t) == 0 && strcmp(t.stop_segment, "keep") == 0 &&
              t.expanded_size_bytes == -1,
          "absent fields are left as they are");
    const char *typed = "{\"wal_segment_backup_stop\": 4, \"expanded_size_bytes\": \"12\"}";
    CHECK(wale_sentinel_parse(typed, strlen(typed), &t) == 0 &&
              strcmp(t.stop_segment, "keep") == 0 && t.expanded_size_bytes == -1,
          "fields of another type are left as they are");
    CHECK(wale_sentinel_parse("[1]", 3, &t) == -1, "an array is no sentinel");
    CHECK(wale_sentinel_parse("{\"a\":", 5, &t) == -1, "truncated JSON");
    CHECK(wale_sentinel_parse("", 0, &t) == -1, "empty body");
    const char *neg = "{\"expanded_size_bytes\": -5}";
    CHECK(wale_sentinel_parse(neg, strlen(neg), &t) == 1 && t.expanded_size_bytes == -1,
          "a negative size is reported and not kept");
    const char *big = "{\"expanded_size_bytes\": 18446744073709551615}";
    CHECK(wale_sentinel_parse(big, strlen(big), &t) == 1 && t.expanded_size_bytes == -1,
          "a size beyond int64 is reported and not kept");
    char longseg[200];
    snprintf(longseg, sizeof longseg, "{\"wal_segment_backup_stop\": \"%0100d\"}", 1);
    CHECK(wale_sentinel_parse(longseg, strlen(longseg), &t) == 0 &&
              strlen(t.stop_segment) == sizeof t.stop_segment - 1,
          "an overlong value is cut to fit, terminated");
}

int main(void)
{
    test_wal();
    test_backups();
    test_backup_names();
    test_sentinel();
    return test_summary();
}
