/* Counting what a local store left in its directory, for unit tests that
 * check that nothing (no object, no temporary file) stayed behind. */
#ifndef WALFS_TESTS_TEST_FILES_H
#define WALFS_TESTS_TEST_FILES_H

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* Regular files under dir, recursively (the store's objects, temp files
 * too); the first one met goes to first when it is given and empty. */
static int count_files(const char *dir, char *first, size_t first_len)
    __attribute__((unused));
static int count_files(const char *dir, char *first, size_t first_len)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (lstat(p, &sb) != 0)
            continue;
        if (S_ISDIR(sb.st_mode)) {
            n += count_files(p, first, first_len);
        } else {
            if (first && !*first)
                snprintf(first, first_len, "%s", p);
            n++;
        }
    }
    closedir(d);
    return n;
}

#endif
