/* Command line and environment → settings.  WAL-E's environment variables
 * are honoured so `envdir /etc/wal-e/env walfs /mnt/pg` works unchanged;
 * credentials come only from the environment, never from the command line
 * (where `ps` would show them). */
#ifndef WALFS_CLI_CONFIG_H
#define WALFS_CLI_CONFIG_H

#include <stdint.h>

#include "common/err.h"
#include "s3/s3_client.h"

typedef struct walfs_settings {
    char *prefix;           /* s3://bucket/path or file:///path */
    char *mountpoint;
    char *endpoint;         /* normalized http(s)://host[:port], or NULL for AWS */
    char *region;
    int path_style;         /* -1 = not chosen (virtual for AWS, path for custom endpoints) */
    char *cache_dir;
    uint64_t cache_max_bytes;
    long connect_timeout_ms;
    long deadline_ms;
    long low_speed_time_s;
    double attr_timeout;
    int prefetch_segments;
    uint64_t push_spool_bytes;
    uint64_t push_reorder_bytes;
    uint64_t backup_partition_bytes;
    uint32_t backup_partition_members;
    char *sse;
    char *storage_class;
    char *ca_file;
    int log_level;
    char *log_file;         /* NULL: stderr in the foreground, syslog (or CACHE_DIR/walfs.log) daemonized */
    long restore_outage_limit_ms; /* 0: a wal_005 read waits through an outage for as long as it lasts */
    long owner_uid, owner_gid; /* -o uid=,gid=; -1: the mounting user's */
    int show_help, show_version;
    int skip_startup_check;
} walfs_settings;

/* Fills s from the environment, then from argv (which wins).  On return
 * fuse_argv holds what is left for FUSE (-f, -d, -o ..., the mountpoint). */
struct fuse_args;
int walfs_settings_parse(walfs_settings *s, struct fuse_args *args, walfs_err *err);
/* Builds the S3 client settings (borrowing strings from s and the environment). */
int walfs_settings_s3(const walfs_settings *s, s3_config *cfg, walfs_err *err);
void walfs_settings_free(walfs_settings *s);
void walfs_print_usage(const char *prog);

#endif
