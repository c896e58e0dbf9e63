/* Bytes as lower-case hex: digests in object names, cache file names,
 * signatures and the checksums WAL-E's and walfs's JSON carry.
 *
 * Knows nothing of digests or of what the bytes mean; upper-case hex
 * (SigV4's percent-encodings, WAL file names) is not written here. */
#ifndef WALFS_COMMON_HEX_H
#define WALFS_COMMON_HEX_H

#include <stddef.h>

/* Writes 2 * n hex digits and a NUL to out (2 * n + 1 bytes). */
void hex_encode(const void *in, size_t n, char *out);

#endif
