/* walfs: mount a WAL-E archive so PostgreSQL can archive and restore WAL
 * with plain `cp`. */
#include <errno.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/config.h"
#include "common/deadline.h"
#include "common/log.h"
#include "fuse/walfs_fs.h"
#include "store/store.h"
#include "wale/layout.h"

#ifndef WALFS_VERSION
#define WALFS_VERSION "dev"
#endif

static int stop_after_first(void *ctx, const store_entry *e) { return 1; }

/* How long the start-up check may wait for an answer.  At boot everything
 * ordered after the mount waits for it; an endpoint that is down costs this
 * much, once. */
#define STARTUP_PROBE_MS 3000

/* One listing request proves the bucket exists and the credentials work,
 * so a wrong secret (or a TLS certificate that fails verification) is
 * reported when the operator mounts, not at the first failed
 * archive_command.  Only an endpoint that does not answer in time is let
 * through, with one warning. */
static int check_archive(store *st)
{
    walfs_err err = {0};
    uint64_t outer = deadline_scope_begin(STARTUP_PROBE_MS);
    int rc = store_list(st, wale_wal_prefix(), stop_after_first, NULL, &err);
    deadline_scope_end(outer);
    if (rc >= 0)
        return 0;
    if (rc != -ETIMEDOUT) {
        fprintf(stderr, "walfs: cannot use the archive %s: %s\n", store_url(st), err.msg);
        return -1;
    }
    fprintf(stderr, "walfs: warning: archive %s did not answer within %d s (%s); mounting "
                    "anyway: archiving fails (PostgreSQL retries it) and restoring waits until "
                    "it answers\n", store_url(st), STARTUP_PROBE_MS / 1000, err.msg);
    return 0;
}

/* Where a daemon's log goes: --log-file, else syslog, else (no /dev/log:
 * containers, machines without a syslog daemon, where every syslog line
 * would be lost) a file in the cache directory. */
static int choose_log(const walfs_settings *settings, int foreground)
{
    const char *path = settings->log_file;
    char fallback[4096];
    if (!path && foreground)
        return 0;
    if (!path && walfs_log_syslog_available())
        return 0; /* syslog, opened once daemonized */
    if (!path) {
        snprintf(fallback, sizeof fallback, "%s/walfs.log", settings->cache_dir);
        path = fallback;
    }
    int rc = walfs_log_use_file(path);
    if (rc) {
        fprintf(stderr, "walfs: cannot open the log file %s: %s (choose another with "
                        "--log-file)\n", path, strerror(-rc));
        return -1;
    }
    if (!settings->log_file)
        fprintf(stderr, "walfs: no syslog here (/dev/log is missing); logging to %s "
                        "(choose with --log-file)\n", path);
    return 0;
}

int main(int argc, char *argv[])
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    walfs_settings settings;
    walfs_err err = {0};
    int exit_code = 1;
    store *st = NULL;
    walfs_fs *fs = NULL;
    struct fuse *fuse = NULL;

    /* A fixed threshold.  glibc otherwise raises it to the size of the
     * largest block freed (the 16 MiB parts of a push), after which such
     * blocks come from the per-thread arenas of the FUSE threads, which keep
     * them: the daemon grew by ~20 MiB with every push.  256 KiB measured
     * best for pushes (an 8 MiB threshold made them ~20% slower; WAL
     * archiving was within noise either way). */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);

    if (walfs_settings_parse(&settings, &args, &err) != 0) {
        fprintf(stderr, "walfs: %s\n", err.msg);
        goto out;
    }
    if (settings.show_help) {
        walfs_print_usage(argv[0]);
        printf("\n");
        fuse_lib_help(&args);
        exit_code = 0;
        goto out;
    }
    if (settings.show_version) {
        printf("walfs %s (FUSE %s)\n", WALFS_VERSION, fuse_pkgversion());
        exit_code = 0;
        goto out;
    }
    walfs_log_set_level(settings.log_level);

    struct fuse_cmdline_opts fuse_opts;
    if (fuse_parse_cmdline(&args, &fuse_opts) != 0)
        goto out;
    if (!fuse_opts.mountpoint) {
        fprintf(stderr, "walfs: no mountpoint given\n");
        goto out;
    }

    s3_config s3cfg;
    if (walfs_settings_s3(&settings, &s3cfg, &err) != 0 ||
        store_open(settings.prefix, &s3cfg, &st, &err) != 0) {
        fprintf(stderr, "walfs: %s\n", err.msg);
        goto out_opts;
    }
    if (!settings.skip_startup_check && check_archive(st) != 0)
        goto out_opts;

    walfs_fs_config fscfg = {
        .st = st,
        .cache_dir = settings.cache_dir,
        .cache_max_bytes = settings.cache_max_bytes,
        .attr_timeout = settings.attr_timeout,
        .prefetch_segments = settings.prefetch_segments,
        .deadline_ms = settings.deadline_ms,
        .restore_outage_limit_ms = settings.restore_outage_limit_ms,
        .owner_uid = settings.owner_uid,
        .owner_gid = settings.owner_gid,
        .push_spool_bytes = settings.push_spool_bytes,
        .push_reorder_bytes = settings.push_reorder_bytes,
        .push_limits = {.max_partition_bytes = settings.backup_partition_bytes,
                        .max_partition_members = settings.backup_partition_members},
    };
    fs = walfs_fs_new(&fscfg, &err);
    if (!fs) {
        fprintf(stderr, "walfs: %s\n", err.msg);
        goto out_opts;
    }
    if (choose_log(&settings, fuse_opts.foreground) != 0)
        goto out_opts;
    fuse = fuse_new(&args, walfs_fs_operations(), sizeof(struct fuse_operations), fs);
    if (!fuse)
        goto out_opts;
    if (fuse_mount(fuse, fuse_opts.mountpoint) != 0) {
        fprintf(stderr, "walfs: could not mount at %s (does it exist and is it empty? a user "
                        "other than root needs /dev/fuse readable and writable)\n",
                fuse_opts.mountpoint);
        goto out_fuse;
    }
    if (fuse_daemonize(fuse_opts.foreground) != 0)
        goto out_unmount;
    if (!fuse_opts.foreground && !settings.log_file && walfs_log_syslog_available())
        walfs_log_use_syslog(1);
    /* Only now: a fork keeps the calling thread alone, and every thread
     * started before fuse_daemonize would silently be gone. */
    if (walfs_fs_start(fs, &err) != 0) {
        log_error("%s", err.msg);
        goto out_unmount;
    }
    if (fuse_set_signal_handlers(fuse_get_session(fuse)) != 0)
        goto out_unmount;
    log_info("walfs %s serving %s at %s", WALFS_VERSION, store_url(st), fuse_opts.mountpoint);
    int loop_rc;
    if (fuse_opts.singlethread) {
        loop_rc = fuse_loop(fuse);
    } else {
        struct fuse_loop_config *loop_cfg = fuse_loop_cfg_create();
        fuse_loop_cfg_set_clone_fd(loop_cfg, fuse_opts.clone_fd);
        if (fuse_opts.max_threads > 0 && fuse_opts.max_threads <= 100000) /* unset is -1 */
            fuse_loop_cfg_set_max_threads(loop_cfg, fuse_opts.max_threads);
        if (fuse_opts.max_idle_threads <= 100000)
            fuse_loop_cfg_set_idle_threads(loop_cfg, fuse_opts.max_idle_threads);
        loop_rc = fuse_loop_mt(fuse, loop_cfg);
        fuse_loop_cfg_destroy(loop_cfg);
    }
    exit_code = loop_rc == 0 ? 0 : 1;
    fuse_remove_signal_handlers(fuse_get_session(fuse));
    log_info("walfs unmounted from %s", fuse_opts.mountpoint);
out_unmount:
    fuse_unmount(fuse);
out_fuse:
    fuse_destroy(fuse);
out_opts:
    free(fuse_opts.mountpoint);
out:
    walfs_fs_free(fs);
    store_close(st);
    walfs_settings_free(&settings);
    fuse_opt_free_args(&args);
    walfs_log_close();
    return exit_code;
}
