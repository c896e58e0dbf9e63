#include "cli/config.h"

#include <errno.h>
#include <fuse.h>
#include <grp.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* String options land in these fields first so fuse_opt can fill them.
 * Only the --name=value form: fuse_opt would also match "--name=value"
 * against a "--name %s" template and keep the '='. */
typedef struct raw_options {
    char *endpoint, *region, *addressing, *cache_dir, *cache_size, *connect_timeout,
        *deadline, *low_speed_time, *attr_timeout, *prefetch, *spool_size, *push_memory, *part_bytes, *part_members, *sse, *storage_class, *ca_file, *log_level,
        *log_file, *outage_limit, *uid, *gid;
    int help, version, skip_check;
    int allow_other, default_permissions;
    char *positional[2];
    int n_positional;
} raw_options;

enum { KEY_ALLOW_OTHER = 1, KEY_DEFAULT_PERMISSIONS };

#define OPT(t, f) {t, offsetof(raw_options, f), 0}
static const struct fuse_opt option_spec[] = {
    OPT("--endpoint=%s", endpoint),
    OPT("--region=%s", region),
    OPT("--addressing=%s", addressing),
    OPT("--cache-dir=%s", cache_dir),
    OPT("--cache-size=%s", cache_size),
    OPT("--connect-timeout=%s", connect_timeout),
    OPT("--deadline=%s", deadline),
    OPT("--low-speed-time=%s", low_speed_time),
    OPT("--attr-timeout=%s", attr_timeout),
    OPT("--prefetch=%s", prefetch),
    OPT("--spool-size=%s", spool_size),
    OPT("--push-memory=%s", push_memory),
    OPT("--backup-partition-bytes=%s", part_bytes),
    OPT("--backup-partition-members=%s", part_members),
    OPT("--sse=%s", sse),
    OPT("--storage-class=%s", storage_class),
    OPT("--ca-file=%s", ca_file),
    OPT("--log-level=%s", log_level),
    OPT("--log-file=%s", log_file),
    OPT("--restore-outage-limit=%s", outage_limit),
    /* -o uid=,gid=: taken here, not by libfuse, which would stamp them on
     * the backup members too and hide their tar owners. */
    OPT("uid=%s", uid),
    OPT("gid=%s", gid),
    FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
    FUSE_OPT_KEY("default_permissions", KEY_DEFAULT_PERMISSIONS),
    {"--skip-startup-check", offsetof(raw_options, skip_check), 1},
    {"-h", offsetof(raw_options, help), 1},
    {"--help", offsetof(raw_options, help), 1},
    {"-V", offsetof(raw_options, version), 1},
    {"--version", offsetof(raw_options, version), 1},
    FUSE_OPT_END};

static int take_positional(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    raw_options *r = data;
    if (key == KEY_ALLOW_OTHER)
        r->allow_other = 1;
    if (key == KEY_DEFAULT_PERMISSIONS)
        r->default_permissions = 1;
    if (key != FUSE_OPT_KEY_NONOPT)
        return 1; /* keep for FUSE */
    if (r->n_positional >= 2) {
        fprintf(stderr, "walfs: unexpected argument '%s' (usage: walfs [options] [PREFIX] "
                        "MOUNTPOINT)\n", arg);
        return -1;
    }
    r->positional[r->n_positional++] = strdup(arg);
    return 0;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* A user or group given by number or by name; -1 when it is neither. */
static long parse_owner(const char *text, int group)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (end != text && *end == '\0')
        return v >= 0 && v < (long)UINT32_MAX ? v : -1;
    if (group) {
        struct group *g = getgrnam(text);
        return g ? (long)g->gr_gid : -1;
    }
    struct passwd *p = getpwnam(text);
    return p ? (long)p->pw_uid : -1;
}

static int parse_number(const char *text, const char *what, double *out, walfs_err *err)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || v < 0)
        return walfs_err_set(err, -EINVAL, "%s: '%s' is not a non-negative number", what, text);
    *out = v;
    return 0;
}

void walfs_print_usage(const char *prog)
{
    printf("usage: %s [options] [PREFIX] MOUNTPOINT\n"
           "\n"
           "Mounts a WAL-E archive (s3://BUCKET/PATH, or file:///DIR for a local directory)\n"
           "at MOUNTPOINT.  PREFIX defaults to $WALE_S3_PREFIX, then $WALE_FILE_PREFIX.\n"
           "  archive_command = 'cp %%p MOUNTPOINT/wal_005/%%f'\n"
           "  restore_command = 'cp MOUNTPOINT/wal_005/%%f %%p'\n"
           "\n"
           "walfs options:\n"
           "  --endpoint=URL          S3 endpoint, http(s)://host[:port] or WAL-E's\n"
           "                          http+path://host:port  ($WALE_S3_ENDPOINT)\n"
           "  --region=NAME           S3 region ($AWS_REGION; default us-east-1)\n"
           "  --addressing=STYLE      path or virtual (default: virtual on AWS, path otherwise)\n"
           "  --cache-dir=DIR         local cache and write spool\n"
           "                          (default $XDG_CACHE_HOME/walfs or ~/.cache/walfs)\n"
           "  --cache-size=MIB        decompressed copies kept on disk (default 1024)\n"
           "  --connect-timeout=SEC   per connection attempt (default 5)\n"
           "  --deadline=SEC          total time for one file operation's requests,\n"
           "                          retries included (default 60); an archiving cp fails\n"
           "                          after it, a restoring read keeps waiting (see\n"
           "                          --restore-outage-limit)\n"
           "  --low-speed-time=SEC    abort a transfer stalled below 1 KiB/s this long (default 15)\n"
           "  --attr-timeout=SEC      kernel attribute cache for existing files (default 1)\n"
           "  --prefetch=N            WAL segments fetched ahead of a restoring reader\n"
           "                          into the cache (default 4; 0 disables)\n"
           "  --spool-size=MIB        local spool for files of a base backup push that wait\n"
           "                          for backup_label or completion (default 4096)\n"
           "  --push-memory=MIB       writes of a push the kernel delivered out of order,\n"
           "                          held until the gap fills (default 32; 0: such files\n"
           "                          are spooled uncompressed)\n"
           "  --backup-partition-bytes=N    member data per pushed tar partition\n"
           "                          (default WAL-E's 1610612736)\n"
           "  --backup-partition-members=N  members per pushed tar partition (default 6144)\n"
           "  --sse=AES256            server-side encryption header on uploads ($WALFS_S3_SSE)\n"
           "  --storage-class=CLASS   storage class of uploads ($WALE_S3_STORAGE_CLASS)\n"
           "  --ca-file=FILE          CA bundle for TLS (certificates are always verified)\n"
           "  --log-level=LEVEL       error, warn, info (default) or debug\n"
           "  --log-file=PATH         append the log to PATH (default: stderr with -f;\n"
           "                          daemonized, syslog, or CACHE_DIR/walfs.log when\n"
           "                          there is no /dev/log)\n"
           "  --restore-outage-limit=SEC  how long a read of wal_005 waits through an S3\n"
           "                          outage before failing with EIO (default 0: for as\n"
           "                          long as it lasts; EIO ends an archive recovery)\n"
           "  --skip-startup-check    mount even if the archive is unreachable or the\n"
           "                          credentials are rejected at start\n"
           "  -h, --help              this text;  -V, --version  the version\n"
           "\n"
           "Credentials: $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY, and $AWS_SESSION_TOKEN\n"
           "(or WAL-E's $AWS_SECURITY_TOKEN).\n"
           "\n"
           "FUSE options: -f (foreground), -d (debug), -s (single thread), -o OPT[,OPT...]\n"
           "  -o allow_other          let other users in; always implies\n"
           "                          default_permissions: the kernel checks every access\n"
           "                          against the modes and owners walfs shows (wal_005 is\n"
           "                          0700 with 0600 files, backup members keep their tar\n"
           "                          modes and owners; see README)\n"
           "  -o uid=USER,gid=GROUP   owner of /, wal_005, its files and basebackups_005\n"
           "                          (default: the mounting user and group)\n",
           prog);
}

int walfs_settings_parse(walfs_settings *s, struct fuse_args *args, walfs_err *err)
{
    memset(s, 0, sizeof *s);
    s->owner_uid = s->owner_gid = -1;
    raw_options r = {0};
    if (fuse_opt_parse(args, &r, option_spec, take_positional) != 0)
        return walfs_err_set(err, -EINVAL, "invalid arguments (see --help)");
    int rc = 0;
    s->show_help = r.help;
    s->show_version = r.version;
    s->skip_startup_check = r.skip_check;
    if (s->show_help || s->show_version)
        goto out;

    if (r.n_positional == 2) {
        s->prefix = strdup(r.positional[0]);
        s->mountpoint = strdup(r.positional[1]);
    } else if (r.n_positional == 1) {
        const char *p = env("WALE_S3_PREFIX");
        const char *fp = env("WALE_FILE_PREFIX");
        if (p)
            s->prefix = strdup(p);
        else if (fp && fp[0] == '/') {
            if (asprintf(&s->prefix, "file://%s", fp) < 0)
                s->prefix = NULL;
        } else if (fp)
            s->prefix = strdup(fp);
        s->mountpoint = strdup(r.positional[0]);
        if (!s->prefix) {
            rc = walfs_err_set(err, -EINVAL, "no archive given: pass PREFIX (s3://BUCKET/PATH "
                               "or file:///DIR) or set WALE_S3_PREFIX");
            goto out;
        }
    } else {
        rc = walfs_err_set(err, -EINVAL, "no mountpoint given (usage: walfs [options] [PREFIX] "
                           "MOUNTPOINT)");
        goto out;
    }
    fuse_opt_add_arg(args, s->mountpoint);
    /* Without default_permissions the kernel lets every user of an
     * allow_other mount do anything walfs does not refuse itself: read
     * pg_authid, archive a forged segment, start a push. */
    if (r.allow_other && !r.default_permissions)
        fuse_opt_add_arg(args, "-odefault_permissions");
    if (r.uid && (s->owner_uid = parse_owner(r.uid, 0)) < 0) {
        rc = walfs_err_set(err, -EINVAL, "-o uid=%s: no such user (give a user name or number)",
                           r.uid);
        goto out;
    }
    if (r.gid && (s->owner_gid = parse_owner(r.gid, 1)) < 0) {
        rc = walfs_err_set(err, -EINVAL, "-o gid=%s: no such group (give a group name or "
                           "number)", r.gid);
        goto out;
    }

    s->path_style = -1;
    const char *endpoint = r.endpoint ? r.endpoint : env("WALFS_S3_ENDPOINT");
    if (!endpoint)
        endpoint = env("WALE_S3_ENDPOINT");
    if (endpoint) {
        if (strstr(endpoint, "+path://") || strstr(endpoint, "+virtualhost://") ||
            strstr(endpoint, "+subdomain://")) {
            rc = s3_parse_wale_endpoint(endpoint, &s->endpoint, &s->path_style, err);
            if (rc)
                goto out;
        } else {
            s->endpoint = strdup(endpoint);
        }
    }
    const char *addressing = r.addressing ? r.addressing : env("WALFS_S3_ADDRESSING");
    if (addressing) {
        if (strcmp(addressing, "path") == 0)
            s->path_style = 1;
        else if (strcmp(addressing, "virtual") == 0 || strcmp(addressing, "virtualhost") == 0)
            s->path_style = 0;
        else {
            rc = walfs_err_set(err, -EINVAL, "--addressing must be 'path' or 'virtual', not '%s'",
                               addressing);
            goto out;
        }
    }
    if (s->path_style < 0)
        s->path_style = s->endpoint ? 1 : 0;
    const char *region = r.region ? r.region : env("AWS_REGION");
    if (!region)
        region = env("AWS_DEFAULT_REGION");
    s->region = strdup(region ? region : "us-east-1");

    if (r.cache_dir)
        s->cache_dir = strdup(r.cache_dir);
    else if (env("WALFS_CACHE_DIR"))
        s->cache_dir = strdup(env("WALFS_CACHE_DIR"));
    else if (env("XDG_CACHE_HOME"))
        rc = asprintf(&s->cache_dir, "%s/walfs", env("XDG_CACHE_HOME")) < 0 ? -ENOMEM : 0;
    else if (env("HOME"))
        rc = asprintf(&s->cache_dir, "%s/.cache/walfs", env("HOME")) < 0 ? -ENOMEM : 0;
    else
        rc = walfs_err_set(err, -EINVAL, "no cache directory: pass --cache-dir");
    if (rc)
        goto out;

    double v = 0;
    s->cache_max_bytes = 1024ull << 20;
    if (r.cache_size) {
        if ((rc = parse_number(r.cache_size, "--cache-size", &v, err)))
            goto out;
        s->cache_max_bytes = (uint64_t)(v * 1024 * 1024);
    }
    s->connect_timeout_ms = 5000;
    if (r.connect_timeout) {
        if ((rc = parse_number(r.connect_timeout, "--connect-timeout", &v, err)))
            goto out;
        s->connect_timeout_ms = (long)(v * 1000);
    }
    s->deadline_ms = 60000;
    if (r.deadline) {
        if ((rc = parse_number(r.deadline, "--deadline", &v, err)))
            goto out;
        s->deadline_ms = (long)(v * 1000);
    }
    s->low_speed_time_s = 15;
    if (r.low_speed_time) {
        if ((rc = parse_number(r.low_speed_time, "--low-speed-time", &v, err)))
            goto out;
        s->low_speed_time_s = v < 1 ? 1 : (long)v;
    }
    s->prefetch_segments = 4;
    if (r.prefetch) {
        char *end;
        long n = strtol(r.prefetch, &end, 10);
        if (end == r.prefetch || *end != '\0' || n < 0 || n > 32) {
            rc = walfs_err_set(err, -EINVAL, "--prefetch must be a number of segments from 0 "
                               "to 32, not '%s'", r.prefetch);
            goto out;
        }
        s->prefetch_segments = (int)n;
    }
    s->push_spool_bytes = 4096ull << 20;
    if (r.spool_size) {
        if ((rc = parse_number(r.spool_size, "--spool-size", &v, err)))
            goto out;
        s->push_spool_bytes = (uint64_t)(v * 1024 * 1024);
    }
    s->push_reorder_bytes = 32ull << 20;
    if (r.push_memory) {
        if ((rc = parse_number(r.push_memory, "--push-memory", &v, err)))
            goto out;
        s->push_reorder_bytes = (uint64_t)(v * 1024 * 1024);
    }
    if (r.part_bytes) {
        if ((rc = parse_number(r.part_bytes, "--backup-partition-bytes", &v, err)))
            goto out;
        s->backup_partition_bytes = (uint64_t)v;
    }
    if (r.part_members) {
        if ((rc = parse_number(r.part_members, "--backup-partition-members", &v, err)))
            goto out;
        s->backup_partition_members = (uint32_t)v;
    }
    s->attr_timeout = 1.0;
    if (r.attr_timeout && (rc = parse_number(r.attr_timeout, "--attr-timeout", &s->attr_timeout, err)))
        goto out;

    const char *sse = r.sse ? r.sse : env("WALFS_S3_SSE");
    if (sse) {
        if (strcmp(sse, "AES256") != 0) {
            rc = walfs_err_set(err, -EINVAL, "--sse supports only AES256 (what WAL-E sends), not "
                               "'%s'", sse);
            goto out;
        }
        s->sse = strdup(sse);
    }
    const char *sc = r.storage_class ? r.storage_class : env("WALE_S3_STORAGE_CLASS");
    if (sc)
        s->storage_class = strdup(sc);
    if (r.ca_file)
        s->ca_file = strdup(r.ca_file);
    if (r.log_file)
        s->log_file = strdup(r.log_file);
    s->restore_outage_limit_ms = 0;
    if (r.outage_limit) {
        if ((rc = parse_number(r.outage_limit, "--restore-outage-limit", &v, err)))
            goto out;
        s->restore_outage_limit_ms = (long)(v * 1000);
    }
    s->log_level = WALFS_LOG_INFO;
    const char *lvl = r.log_level ? r.log_level : env("WALFS_LOG_LEVEL");
    if (lvl) {
        s->log_level = walfs_log_parse_level(lvl);
        if (s->log_level < 0) {
            rc = walfs_err_set(err, -EINVAL, "--log-level must be error, warn, info or debug");
            goto out;
        }
    }
out:
    free(r.endpoint); free(r.region); free(r.addressing); free(r.cache_dir); free(r.cache_size);
    free(r.connect_timeout); free(r.deadline); free(r.low_speed_time); free(r.attr_timeout); free(r.prefetch); free(r.spool_size); free(r.push_memory); free(r.part_bytes); free(r.part_members);
    free(r.sse); free(r.storage_class); free(r.ca_file); free(r.log_level);
    free(r.log_file); free(r.outage_limit); free(r.uid); free(r.gid);
    free(r.positional[0]); free(r.positional[1]);
    return rc;
}

int walfs_settings_s3(const walfs_settings *s, s3_config *cfg, walfs_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->endpoint = s->endpoint;
    cfg->region = s->region;
    cfg->path_style = s->path_style;
    cfg->access_key = env("AWS_ACCESS_KEY_ID");
    cfg->secret_key = env("AWS_SECRET_ACCESS_KEY");
    cfg->session_token = env("AWS_SESSION_TOKEN");
    if (!cfg->session_token)
        cfg->session_token = env("AWS_SECURITY_TOKEN");
    cfg->sse = s->sse;
    cfg->storage_class = s->storage_class;
    cfg->ca_file = s->ca_file;
    cfg->connect_timeout_ms = s->connect_timeout_ms;
    cfg->low_speed_time_s = s->low_speed_time_s;
    cfg->low_speed_limit = 1024;
    cfg->deadline_ms = s->deadline_ms;
    if (strncmp(s->prefix, "s3://", 5) == 0 && (!cfg->access_key || !cfg->secret_key))
        return walfs_err_set(err, -EINVAL, "no S3 credentials: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (e.g. with envdir /etc/wal-e/env)");
    return 0;
}

void walfs_settings_free(walfs_settings *s)
{
    free(s->prefix); free(s->mountpoint); free(s->endpoint); free(s->region);
    free(s->cache_dir); free(s->sse); free(s->storage_class); free(s->ca_file);
    free(s->log_file);
    memset(s, 0, sizeof *s);
}
