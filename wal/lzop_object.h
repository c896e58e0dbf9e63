/* Reading an lzop object from the store as its decompressed bytes, every
 * checksum verified as it streams.  The sink may see some bytes before a
 * later block turns out corrupt: callers that must not expose unverified
 * data (the WAL cache) keep what they get private until this returns 0. */
#ifndef WALFS_WAL_LZOP_OBJECT_H
#define WALFS_WAL_LZOP_OBJECT_H

#include "codec/lzop.h"
#include "common/err.h"
#include "store/store.h"

int lzop_object_read(store *st, const char *key, lzop_sink_fn sink, void *ctx, walfs_err *err);

#endif
