/* Log lines: a name with control characters or bytes that are not UTF-8
 * can neither start a line of its own nor hide the reason after it, and a
 * long name does not cut the rest of the message off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "tap.h"

static int escapes_to(const char *in, size_t len, const char *want)
{
    char out[256];
    size_t n = walfs_log_escape(in, len, out, sizeof out);
    if (n != strlen(want) || strcmp(out, want) != 0) {
        printf("# got '%s' (%zu), want '%s'\n", out, n, want);
        return 0;
    }
    return 1;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* The log file's text after logging one lookup failure of a key made of
 * len 'k's. */
static char *log_long_key(int fd, const char *path, char **name, size_t len)
{
    *name = realloc(*name, len + 1);
    memset(*name, 'k', len);
    (*name)[len] = '\0';
    if (ftruncate(fd, 0) != 0)
        perror("ftruncate");
    log_error("lookup %s failed: HTTP 403 (check the credentials)", *name);
    return slurp(path);
}

int main(void)
{
    CHECK(escapes_to("plain name", 10, "plain name"), "printable ASCII unchanged");
    CHECK(escapes_to("a\nb\rc\td", 7, "a\\nb\\rc\\td"), "newline, CR, tab as \\n \\r \\t");
    CHECK(escapes_to("\x1b[31m\x7f", 6, "\\x1b[31m\\x7f"), "ESC and DEL as \\xNN");
    CHECK(escapes_to("a\0b", 3, "a\\x00b"), "NUL inside the length as \\x00");
    CHECK(escapes_to("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
          "well-formed UTF-8 (2, 3 and 4 bytes) unchanged");
    CHECK(escapes_to("\xff\xc3(", 3, "\\xff\\xc3("), "bytes that are not UTF-8 as \\xNN");
    CHECK(escapes_to("\xc0\xaf", 2, "\\xc0\\xaf"), "an overlong form is not UTF-8");
    CHECK(escapes_to("\xed\xa0\x80", 3, "\\xed\\xa0\\x80"), "a surrogate is not UTF-8");
    CHECK(escapes_to("\xe2\x82", 2, "\\xe2\\x82"), "a sequence cut short is not UTF-8");
    CHECK(escapes_to("\xc2\x9b", 2, "\\xc2\\x9b"), "a C1 control (CSI) is escaped");
    char small[6];
    size_t n = walfs_log_escape("ab\ncd", 5, small, sizeof small);
    CHECK(n == 6 && strcmp(small, "ab\\nc") == 0, "too small a buffer: cut after a whole escape, "
          "full length returned (%zu, '%s')", n, small);
    n = walfs_log_escape("ab\n", 3, small, 4);
    CHECK(strcmp(small, "ab") == 0, "an escape that does not fit is left out whole ('%s')", small);

    char path[] = "/tmp/walfs-test-log.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && walfs_log_use_file(path) == 0, "log to a file");
    log_error("lookup wal_005/%s failed: %s", "x\n2026-01-01T00:00:00.000Z walfs ERROR: forged",
              "not found");
    char *text = slurp(path);
    CHECK(text && count_lines(text) == 1, "a name with a newline gives one line");
    CHECK(text && strstr(text, "x\\n2026-01-01T00:00:00.000Z walfs ERROR: forged failed: not found\n"),
          "... with the newline escaped and the reason after it");

    /* A key name far past the old 2048-byte line, then the reason. */
    char *name = NULL;
    text = log_long_key(fd, path, &name, 10000);
    CHECK(text && count_lines(text) == 1 && strstr(text, name) &&
              strstr(text, " failed: HTTP 403 (check the credentials)\n"),
          "a 10000-byte name is logged whole, and the reason after it too");

    /* Longer than any name: head and tail kept, the reason with it. */
    size_t huge = 100000;
    text = log_long_key(fd, path, &name, huge);
    CHECK(text && count_lines(text) == 1 && strlen(text) < 20000 &&
              strstr(text, "bytes left out") &&
              strstr(text, " failed: HTTP 403 (check the credentials)\n"),
          "a 100000-byte message: one bounded line (%zu bytes) that still ends with the reason",
          text ? strlen(text) : 0);

    /* A multi-byte character across the cut is never split. */
    for (size_t i = 0; i + 1 < huge; i += 2)
        memcpy(name + i, "\xc3\xa9", 2);
    if (ftruncate(fd, 0) != 0)
        perror("ftruncate");
    log_error("%s", name);
    text = slurp(path);
    CHECK(text && !strstr(text, "\\x"), "cutting a long UTF-8 message splits no character");
    free(name);

    /* Error messages are bounded too, and lose the middle, not the end. */
    char key[3000];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    walfs_err err = {0};
    walfs_err_set(&err, -5, "GET wal_005/%s: HTTP 403 (check the credentials)", key);
    n = strlen(err.msg);
    const char *reason = "k: HTTP 403 (check the credentials)";
    CHECK(n < WALFS_ERR_MSG_MAX && strncmp(err.msg, "GET wal_005/kkk", 15) == 0 &&
              strstr(err.msg, "k [...] k") && n > strlen(reason) &&
              strcmp(err.msg + n - strlen(reason), reason) == 0,
          "a 3000-byte key in an error: the head and the reason are kept (%zu bytes)", n);
    walfs_err_set(&err, -5, "HTTP 403 (check the credentials)");
    walfs_err_prefix(&err, "lookup %s: ", key);
    n = strlen(err.msg);
    CHECK(n < WALFS_ERR_MSG_MAX && strncmp(err.msg, "lookup kkk", 10) == 0 &&
              strstr(err.msg, "k [...] k") && strcmp(err.msg + n - strlen(reason), reason) == 0,
          "a long prefix before an error: the reason after it is kept (%zu bytes)", n);
    walfs_err_set(&err, -5, "short");
    walfs_err_prefix(&err, "GET %s: ", "k");
    CHECK(strcmp(err.msg, "GET k: short") == 0, "a short prefix as before ('%s')", err.msg);
    walfs_log_close();
    close(fd);
    unlink(path);
    return test_summary();
}
