/* The in-memory tree of base backup pushes, shared by push_session.c (the
 * requests) and push_emitter.c (the thread that does all store work).
 * Internal to push/: nothing outside includes it.
 *
 * A registry holds sessions (one per directory being pushed into
 * /basebackups_005); a session holds nodes (its files, directories and
 * links) in a hash table by path and in a list in creation order.  Knows
 * the spool and the backup writer's member type; nothing of FUSE, and no
 * store call is made under its lock.
 *
 * Locking.  Two mutexes, never one held while waiting for the other's
 * holder to do I/O:
 *   reg->lock   the namespace: sessions, nodes, states, counters.  Held only
 *               for in-memory work; never across the store, the spool or a
 *               wait (condition waits release it).
 *   spool_lock  the spool pool, which shares one compressor and is not
 *               thread-safe (spool_file.h): every spool call runs under it.
 *               reg->lock may be taken while holding it (to account what the
 *               call changed), never the other way round.
 * All store work (naming the backup, adding files, completing, removing a
 * failed push's uploads) runs on the emitter thread, so no FUSE request
 * ever waits for the network except a completing rename, which waits on its
 * session's condition variable. */
#ifndef WALFS_PUSH_PUSH_TREE_H
#define WALFS_PUSH_PUSH_TREE_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/err.h"
#include "common/worker.h"
#include "pg/pg_control.h"
#include "push/backup_writer.h"
#include "push/push_session.h"
#include "push/spool_file.h"
#include "store/store.h"

#define MANIFEST_TMP "backup_manifest.tmp"
#define MANIFEST "backup_manifest"
#define LABEL "backup_label"
#define CONTROL "global/pg_control"
#define SMALL_FILE_MAX (16 * 1024 * 1024)

typedef struct push_node {
    char *path;                 /* relative to the push root; "" is the root */
    backup_member_type type;
    uint32_t mode, uid, gid;
    int64_t mtime_sec;
    uint32_t mtime_nsec;
    char *link_target;
    spool_file *spool;          /* a file's bytes until it is emitted */
    uint64_t spooled;           /* its share of the session's spooled_bytes */
    uint64_t size;
    int open_count;             /* handles: an open file is never emitted */
    int busy;                   /* requests and the emitter inside the spool on it */
    int emitted;                /* in the backup (or deliberately left out) */
    int emitting;               /* the emitter thread is reading it right now */
    int detached;               /* out of the namespace; freed when idle */
    int gap_waited_out;         /* a write ahead of the end waited in vain (spool_lock) */
    unsigned children;          /* nodes whose parent this is */
    uint64_t seq;               /* creation order: files are emitted in it */
    struct push_node *parent;
    struct push_node *hash_next;
    struct push_node *prev, *next;          /* all nodes, in creation order */
} push_node;

typedef enum session_state {
    SESSION_RECEIVING,  /* no backup_label yet: files wait in the spool */
    SESSION_NAMED,      /* the backup has its name; settled files stream out */
    SESSION_COMPLETING, /* a rename asked for completion; the emitter stores the rest */
    SESSION_DONE,       /* the sentinel is stored */
    SESSION_FAILED,     /* an error is latched; the emitter removes the uploads */
} session_state;

typedef struct push_session {
    char *dir;                  /* name under basebackups_005 */
    session_state state;
    walfs_err error;            /* latched: returned by every later close/fsync/rename */
    int label_pending;          /* backup_label settled: the emitter names the backup */
    int completion_by_manifest; /* how the completing rename said "complete" */
    pthread_cond_t changed;     /* state left COMPLETING */
    push_node **table;          /* by path */
    size_t table_size, node_count;
    push_node *first, *last;    /* creation order */
    push_node *detached;        /* removed while busy or open */
    uint64_t next_seq;
    uint64_t spooled_bytes;
    uint64_t emit_before;       /* closed files created before this seq are final */
    /* Owned by the emitter thread alone (and the registry's teardown). */
    backup_writer *writer;
    int leased;                 /* a lease object names this process */
    char backup_name[64];
    char start_segment[25];
    uint64_t segment_size;
    int emitter_busy;           /* the emitter is working on this session */
    char pg_version[16];        /* PG_VERSION, kept when it goes by */
    unsigned char control[PG_CONTROL_HEAD_BYTES];
    int have_control;
    int refs;                   /* handles, waiting renames, pinned nodes, the emitter */
    struct {                    /* how the spool fared, logged at completion */
        uint64_t compressed_files, compressed_bytes, records_bytes, plain_files, plain_bytes;
        unsigned waited_writes, stashed_writes, unpacked_files;
    } spool_stats;
    int retired;                /* out of the registry's names; freed when unused */
    struct push_session *next;
} push_session;


struct push_registry {
    store *st;
    push_settings settings;
    char *spool_dir;
    uid_t uid;
    gid_t gid;
    pthread_mutex_t lock;       /* the namespace (see Locking above) */
    pthread_mutex_t spool_lock; /* every spool call */
    pthread_cond_t progress;    /* the emitter finished a job (spool space, naming) */
    pthread_cond_t appended;    /* a file grew: writes waiting for their turn may go (spool_lock) */
    int waiting_writes;         /* spool_lock */
    worker_pool emitter;        /* one thread; woken when it has something to do */
    worker_pool cleanup;        /* push_cleanup_stale, once per mount */
    _Atomic int cleanup_stop; /* unmounting: the clean-up's requests stop at once */
    push_session *sessions;
    push_session *retired;      /* replaced or removed, still in use or with uploads to remove */
    spool_file **doomed;        /* spools to free once reg->lock is released */
    size_t n_doomed, cap_doomed;
    size_t spool_count;         /* spools made and not yet freed */
    spool_pool *spools;
};

/* ---- Locks (see above) ---- */
void tree_lock(push_registry *reg);
void tree_unlock(push_registry *reg);
int tree_reserve_spool(push_registry *reg);

/* ---- Nodes (reg->lock held) ---- */
void tree_now_ts(int64_t *sec, uint32_t *nsec);
push_node *tree_find_node(const push_session *s, const char *path);
void tree_table_insert(push_session *s, push_node *n);
void tree_table_remove(push_session *s, push_node *n);
push_node *tree_parent_of(const push_session *s, const char *path);
int tree_parent_is_dir(const push_session *s, const char *path);
backup_writer_member tree_member_of(const push_node *n, const char *path);
push_node *tree_visible_node(const push_session *s, const char *path);
uint32_t tree_node_mode(mode_t mode);
push_node *tree_add_node(push_registry *reg, push_session *s, const char *path,
        backup_member_type type, uint32_t mode, const push_caller *who);
void tree_account(push_session *s, push_node *n);
void tree_drop_spool(push_registry *reg, push_session *s, push_node *n);
void tree_detach_node(push_registry *reg, push_session *s, push_node *n);
void tree_free_detached_if_idle(push_registry *reg, push_session *s, push_node *n);
void tree_mark_emitted(push_registry *reg, push_session *s, push_node *n);

/* ---- Sessions (reg->lock held) ---- */
push_session *tree_locate(push_registry *reg, const char *rel, const char **inner);
int tree_receiving(const push_session *s);
int tree_latched(const push_session *s);
void tree_fail(push_registry *reg, push_session *s, const walfs_err *err);
void tree_fail_receiving(push_registry *reg, push_session *s, const walfs_err *err);
int tree_has_uploads(const push_session *s);
void tree_session_free(push_registry *reg, push_session *s);
void tree_free_if_unused(push_registry *reg, push_session *s);
void tree_retire(push_registry *reg, push_session *s);
void tree_pin(push_session *s, push_node *n);
void tree_unpin(push_registry *reg, push_session *s, push_node *n);

/* ---- Spool sections (n pinned, spool_lock held, reg->lock not: taken inside) ---- */
int tree_read_spool(push_registry *reg, push_session *s, push_node *n, char *buf, size_t cap,
        uint64_t off, size_t *len, walfs_err *err);
int tree_spool_data_of(push_registry *reg, push_session *s, push_node *n, spool_data *data,
        walfs_err *err);

/* ---- the emitter (push_emitter.c) ---- */
/* The thread: names backups, adds settled files, completes and removes
 * failed pushes' uploads, one job at a time.  arg is the registry. */
void *push_emitter_main(void *arg);
/* The next file of s the emitter may add, in creation order (reg->lock held;
 * files WAL-E leaves out are marked emitted on the way). */
push_node *emitter_next_ready(push_registry *reg, push_session *s);

#endif
