#include "pg/backup_label.h"

#include <stdio.h>
#include <string.h>

#include "pg/lsn.h"

int pg_backup_label_parse(const char *text, pg_backup_label *out)
{
    const char *line = strstr(text, "START WAL LOCATION: ");
    if (!line || sscanf(line, "START WAL LOCATION: %31s (file %24[0-9A-F])", out->start_lsn_text,
                        out->start_file) != 2 ||
        strlen(out->start_file) != 24 || pg_lsn_parse(out->start_lsn_text, &out->start_lsn) != 0)
        return -1;
    return 0;
}
