/* What every index the fuzz targets obtain must satisfy: it survives its own
 * JSON (to_json, from_json and to_json again give the same bytes) and every
 * member is found by its path.  A failure aborts, which libFuzzer reports
 * as a crash. */
#ifndef WALFS_TESTS_FUZZ_INDEX_CHECK_H
#define WALFS_TESTS_FUZZ_INDEX_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/backup_index.h"

static void index_check_round_trip(const backup_index *idx)
{
    walfs_err err = {0};
    char *j1 = NULL, *j2 = NULL;
    size_t l1 = 0, l2 = 0;
    backup_index *back = NULL;
    if (backup_index_to_json(idx, &j1, &l1, &err) != 0)
        abort();
    if (backup_index_from_json(j1, l1, &back, &err) != 0) {
        fprintf(stderr, "walfs cannot load its own index: %s\n", err.msg);
        abort();
    }
    if (backup_index_to_json(back, &j2, &l2, &err) != 0 || l1 != l2 || memcmp(j1, j2, l1) != 0)
        abort();
    char path[BACKUP_PATH_MAX + 1];
    for (size_t i = 0; i < idx->n_members; i++)
        if (backup_index_find(back, backup_index_path(idx, &idx->members[i], path, sizeof path)) ==
            NULL)
            abort();
    /* tests/fuzz/make_corpus.sh takes fuzz_index_json's seeds from here. */
    const char *dump = getenv("WALFS_FUZZ_DUMP_INDEX");
    FILE *f = dump ? fopen(dump, "w") : NULL;
    if (f) {
        fwrite(j1, 1, l1, f);
        fclose(f);
    }
    backup_index_free(back);
    free(j1);
    free(j2);
}

#endif
