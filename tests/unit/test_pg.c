/* pg/: LSN text, segment names for every wal_segment_size, backup_label's
 * start, backup_manifest's WAL end, pg_control's checkpoint, and the
 * segment size a label implies — with the malformed input a copy can
 * carry. */
#include <stdint.h>
#include <string.h>

#include "pg/backup_label.h"
#include "pg/backup_manifest.h"
#include "pg/lsn.h"
#include "pg/pg_control.h"
#include "pg/wal_file.h"
#include "tap.h"

#define MiB (1024ull * 1024)

static int lsn_is(const char *text, uint64_t want)
{
    uint64_t lsn = 0xdeadbeef;
    return pg_lsn_parse(text, &lsn) == 0 && lsn == want;
}

static int lsn_refused(const char *text)
{
    uint64_t lsn = 42;
    return pg_lsn_parse(text, &lsn) == -1 && lsn == 42;
}

static void test_lsn(void)
{
    CHECK(lsn_is("0/0", 0), "0/0");
    CHECK(lsn_is("16/B374D848", 0x16B374D848ull), "16/B374D848");
    CHECK(lsn_is("FFFFFFFF/FFFFFFFF", UINT64_MAX), "the largest LSN");
    CHECK(lsn_is("0/2000028", 0x2000028), "short halves");
    CHECK(lsn_is("a/bc", 0xa000000bcull), "lower-case hex (pg_lsn input accepts it)");
    CHECK(lsn_refused(NULL), "NULL (a manifest's End-LSN that is JSON null)");
    CHECK(lsn_refused(""), "empty");
    CHECK(lsn_refused("0"), "no slash");
    CHECK(lsn_refused("/0"), "nothing before the slash");
    CHECK(lsn_refused("0/"), "nothing after the slash");
    CHECK(lsn_refused("1/2/3"), "two slashes");
    CHECK(lsn_refused("100000000/0"), "nine digits overflow 32 bits");
    CHECK(lsn_refused("0/100000000"), "nine digits after the slash");
    CHECK(lsn_refused("G/0"), "not hex");
    CHECK(lsn_refused(" 0/1"), "leading blank");
    CHECK(lsn_refused("0/1 "), "trailing blank");
    CHECK(lsn_refused("0x1/2"), "a 0x prefix");
    CHECK(lsn_refused("-1/2"), "a sign");
}

static int name_is(uint32_t tli, uint64_t lsn, uint64_t size, const char *want)
{
    char out[25];
    memset(out, 'X', sizeof out);
    pg_segment_name_of_lsn(tli, lsn, size, out);
    return strcmp(out, want) == 0;
}

static void test_segment_names(void)
{
    CHECK(name_is(1, 0x2000028, 16 * MiB, "000000010000000000000002"), "16 MiB, log 0");
    CHECK(name_is(2, 0x16B374D848ull, 16 * MiB, "0000000200000016000000B3"), "16 MiB, log 0x16");
    CHECK(name_is(1, 0x16B374D848ull, 1024 * MiB, "000000010000001600000002"), "1 GiB: 4 per log");
    CHECK(name_is(1, 0x16B374D848ull, 1 * MiB, "000000010000001600000B37"), "1 MiB: 4096 per log");
    CHECK(name_is(0xFFFFFFFF, UINT64_MAX, 16 * MiB, "FFFFFFFFFFFFFFFF000000FF"), "the last segment");
    char out[25];
    pg_segment_name(3, 0x100, 16 * MiB, out);
    CHECK(strcmp(out, "000000030000000100000000") == 0, "segno 0x100 carries into log 1");

    uint32_t tli = 0;
    uint64_t segno = 0;
    CHECK(pg_segment_parse("0000000200000016000000B3", 16 * MiB, &tli, &segno) == 0 && tli == 2 &&
              segno == 0x16B3,
          "parse: timeline and segment number");
    CHECK(pg_segment_parse("000000010000000000000100", 16 * MiB, &tli, &segno) == -1,
          "parse: segment part beyond a 16 MiB log");
    CHECK(pg_segment_parse("000000010000000000000003", 1024 * MiB, &tli, &segno) == 0 &&
              segno == 3,
          "parse: segment 3 of a 1 GiB log");
    CHECK(pg_segment_parse("000000010000000000000004", 1024 * MiB, &tli, &segno) == -1,
          "parse: segment 4 does not exist with 1 GiB segments");
    CHECK(pg_segment_parse("00000001000000000000000a", 16 * MiB, &tli, &segno) == -1,
          "parse: lower case is no segment name");
    CHECK(pg_segment_parse("00000001000000000000000", 16 * MiB, &tli, &segno) == -1,
          "parse: 23 digits");
    CHECK(pg_segment_parse("000000010000000000000003", 0, &tli, &segno) == -1, "parse: size 0");
    CHECK(pg_segment_parse("000000010000000000000003", 3 * MiB, &tli, &segno) == -1,
          "parse: a size that is no power of two");
    CHECK(pg_segment_parse("000000010000000000000003", 2048 * MiB, &tli, &segno) == -1,
          "parse: a size beyond 1 GiB");
}

static void test_segment_size(void)
{
    CHECK(wal_segment_size_of(0x2000028, "000000010000000000000002") == 16 * MiB,
          "0/2000028 in segment 2: 16 MiB");
    CHECK(wal_segment_size_of(0x8000028, "000000010000000000000002") == 64 * MiB,
          "0/8000028 in segment 2: 64 MiB");
    CHECK(wal_segment_size_of(0x16B374D848ull, "000000010000001600000002") == 1024 * MiB,
          "16/B374D848 in log 16 segment 2: 1 GiB");
    CHECK(wal_segment_size_of(0x28, "000000010000000000000000") == 1 * MiB,
          "below every boundary: the smallest size");
    CHECK(wal_segment_size_of(0x2000028, "000000010000000000000003") == 0,
          "an LSN outside the file: no size");
    CHECK(wal_segment_size_of(0x2000028, "not a segment") == 0, "no segment name: no size");
}

static void test_backup_label(void)
{
    pg_backup_label l;
    const char *label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
                        "CHECKPOINT LOCATION: 0/2000060\n"
                        "BACKUP METHOD: streamed\nBACKUP FROM: primary\n"
                        "START TIME: 2026-01-01 00:00:00 UTC\nLABEL: x\nSTART TIMELINE: 1\n";
    CHECK(pg_backup_label_parse(label, &l) == 0 && l.start_lsn == 0x2000028 &&
              strcmp(l.start_file, "000000010000000000000002") == 0 &&
              strcmp(l.start_lsn_text, "0/2000028") == 0,
          "a pg_basebackup label");
    CHECK(pg_backup_label_parse("LABEL: y\nSTART WAL LOCATION: 16/B374D848 (file "
                                "0000000200000016000000B3)\n", &l) == 0 &&
              l.start_lsn == 0x16B374D848ull,
          "the line need not come first");
    CHECK(pg_backup_label_parse("", &l) == -1, "empty label");
    CHECK(pg_backup_label_parse("CHECKPOINT LOCATION: 0/2000060\n", &l) == -1, "no start line");
    CHECK(pg_backup_label_parse("START WAL LOCATION: 0/2000028\n", &l) == -1, "no file");
    CHECK(pg_backup_label_parse("START WAL LOCATION: 0/2000028 (file 0000000100000000000002)\n",
                                &l) == -1,
          "a file name of 22 digits");
    CHECK(pg_backup_label_parse("START WAL LOCATION: 0/2000028 (file "
                                "00000001000000000000000g)\n", &l) == -1,
          "a lower-case file name");
    CHECK(pg_backup_label_parse("START WAL LOCATION: 0-2000028 (file "
                                "000000010000000000000002)\n", &l) == -1,
          "an unreadable LSN");
    CHECK(pg_backup_label_parse("START WAL LOCATION: 123456789/0 (file "
                                "000000010000000000000002)\n", &l) == -1,
          "an LSN half beyond 32 bits");
    CHECK(pg_backup_label_parse("START WAL LOCATION: "
                                "0/200002800000000000000000000000000000000000000000 (file "
                                "000000010000000000000002)\n", &l) == -1,
          "an overlong LSN is cut, not overrun, and refused");
}

static int manifest_end(const char *json, uint32_t want_tli, uint64_t want_lsn)
{
    uint32_t tli = 0;
    uint64_t lsn = 0;
    return pg_backup_manifest_wal_end(json, &tli, &lsn) == 0 && tli == want_tli &&
           lsn == want_lsn;
}

static int manifest_refused(const char *json)
{
    uint32_t tli = 7;
    uint64_t lsn = 7;
    return pg_backup_manifest_wal_end(json, &tli, &lsn) == -1 && tli == 7 && lsn == 7;
}

static void test_backup_manifest(void)
{
    CHECK(manifest_end("{\"PostgreSQL-Backup-Manifest-Version\": 1, \"Files\": [],"
                       " \"WAL-Ranges\": [{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\","
                       " \"End-LSN\": \"0/2000100\" }], \"Manifest-Checksum\": \"ab\"}",
                       1, 0x2000100),
          "one range");
    CHECK(manifest_end("{\"WAL-Ranges\": [{\"Timeline\": 1, \"End-LSN\": \"0/3000000\"},"
                       " {\"Timeline\": 2, \"End-LSN\": \"0/4000060\"}]}",
                       2, 0x4000060),
          "several ranges: the last one");
    CHECK(manifest_refused(""), "empty");
    CHECK(manifest_refused("{"), "truncated JSON");
    CHECK(manifest_refused("[]"), "not an object");
    CHECK(manifest_refused("{\"Files\": []}"), "no WAL-Ranges");
    CHECK(manifest_refused("{\"WAL-Ranges\": []}"), "empty WAL-Ranges");
    CHECK(manifest_refused("{\"WAL-Ranges\": {\"Timeline\": 1}}"), "WAL-Ranges not an array");
    CHECK(manifest_refused("{\"WAL-Ranges\": [{\"Timeline\": 1}]}"), "no End-LSN");
    CHECK(manifest_refused("{\"WAL-Ranges\": [{\"End-LSN\": \"0/1\"}]}"), "no Timeline");
    CHECK(manifest_refused("{\"WAL-Ranges\": [{\"Timeline\": 1, \"End-LSN\": null}]}"),
          "End-LSN null");
    CHECK(manifest_refused("{\"WAL-Ranges\": [{\"Timeline\": 1, \"End-LSN\": 12}]}"),
          "End-LSN a number");
    CHECK(manifest_refused("{\"WAL-Ranges\": [{\"Timeline\": 1, \"End-LSN\": \"0/x\"}]}"),
          "End-LSN unreadable");
    CHECK(manifest_refused("{\"WAL-Ranges\": [7]}"), "a range that is no object");
}

static void test_pg_control(void)
{
    unsigned char head[64];
    memset(head, 0xAA, sizeof head);
    uint64_t want_lsn = 0x000000000300A0B8ull;
    uint32_t want_tli = 3;
    memcpy(head + 32, &want_lsn, 8);
    memcpy(head + 48, &want_tli, 4);
    uint64_t lsn = 0;
    uint32_t tli = 0;
    CHECK(pg_control_checkpoint(head, sizeof head, &lsn, &tli) == 0 && lsn == want_lsn &&
              tli == want_tli,
          "checkPoint at 32, its timeline at 48");
    CHECK(pg_control_checkpoint(head, PG_CONTROL_HEAD_BYTES, &lsn, &tli) == 0,
          "the first %d bytes suffice", PG_CONTROL_HEAD_BYTES);
    lsn = 1;
    CHECK(pg_control_checkpoint(head, PG_CONTROL_HEAD_BYTES - 1, &lsn, &tli) == -1 && lsn == 1,
          "a shorter head is refused and nothing is read");
    CHECK(pg_control_checkpoint(head, 0, &lsn, &tli) == -1, "an empty file is refused");
}

int main(void)
{
    test_lsn();
    test_segment_names();
    test_segment_size();
    test_backup_label();
    test_backup_manifest();
    test_pg_control();
    return test_summary();
}
