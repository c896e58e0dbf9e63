/* libFuzzer target: the walfs_index.json loader (backup_index_from_json in
 * backup/backup_index.c), which reads an index anyone who may PUT into the
 * bucket can write.
 *
 * The loader checks a sha256 over the bytes before it parses anything, and
 * a writer of the bucket can compute that sha256 as well as walfs can; so
 * each input is tried as it is and then sealed: "," "sha256":"<hex>" "}"
 * appended the way backup_index_to_json writes it (the input being the
 * document without its closing brace), which lets mutations reach every
 * field check.  An index that loads must serialize and load again to the
 * same bytes. */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup/backup_index.h"
#include "common/hex.h"
#include "tests/fuzz/index_check.h"

#define INPUT_MAX (1u << 20)
#define SHA_PREFIX ",\"sha256\":\""

static void try_load(const char *json, size_t len)
{
    walfs_err err = {0};
    backup_index *idx = NULL;
    if (backup_index_from_json(json, len, &idx, &err) != 0)
        return;
    index_check_round_trip(idx);
    backup_index_free(idx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > INPUT_MAX)
        return 0;
    try_load((const char *)data, size);

    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(ctx, data, size) != 1 ||
        EVP_DigestUpdate(ctx, "}", 1) != 1 || EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32)
        abort();
    EVP_MD_CTX_free(ctx);
    size_t len = size + sizeof SHA_PREFIX - 1 + 64 + 2;
    char *sealed = malloc(len);
    if (!sealed)
        abort();
    memcpy(sealed, data, size);
    memcpy(sealed + size, SHA_PREFIX, sizeof SHA_PREFIX - 1);
    hex_encode(md, 32, sealed + size + sizeof SHA_PREFIX - 1); /* its NUL: where "} goes */
    memcpy(sealed + len - 2, "\"}", 2);
    try_load(sealed, len);
    free(sealed);
    return 0;
}
