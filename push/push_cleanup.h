/* Leftovers of pushes that never completed because walfs itself died.
 *
 * While a push uploads, a lease object basebackups_005/<backup>/walfs_push.json
 * names the host and process doing it.  At mount, a backup directory without
 * a sentinel whose lease names this host and a process that is no longer a
 * running walfs (or whose lease is older than a week) is removed: its
 * partitions, extended_version.txt, unfinished multipart uploads and the
 * lease.  Directories without a lease are never touched: WAL-E itself may be
 * pushing them. */
#ifndef WALFS_PUSH_PUSH_CLEANUP_H
#define WALFS_PUSH_PUSH_CLEANUP_H

#include "common/err.h"
#include "store/store.h"

int push_lease_write(store *st, const char *backup_name, walfs_err *err);
void push_lease_remove(store *st, const char *backup_name);
/* Removes what an unfinished push left under basebackups_005/<backup>/
 * (unfinished uploads, partitions, extended_version.txt) and then, only
 * when all of that is gone, its lease: a lease stays as long as leftovers
 * may, so a later mount finds them.  0 when nothing is left. */
int push_remove_leftovers(store *st, const char *backup_name);
/* Best effort; logs what it removed and what it could not. */
void push_cleanup_stale(store *st);

#endif
