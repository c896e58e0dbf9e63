#include "wal/background_compressor.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec/lzop.h"
#include "common/buf.h"
#include "common/hex.h"
#include "common/worker.h"

enum { READ_CHUNK = 1024 * 1024, OUT_FIRST = 4 * 1024 * 1024 };

struct background_compressor {
    int fd;
    pthread_mutex_t lock;
    worker_pool pool;       /* one thread; wake: bytes appended, finish or abandon */
    uint64_t appended;      /* bytes [0, appended) are in the spool */
    uint64_t consumed;      /* bytes handed to the encoder */
    int closing;            /* finish() called: drain and stop */
    int gave_up;
    lzop_encoder *enc;
    walfs_buf out;
    char *chunk;
    EVP_MD_CTX *digest;     /* SHA-256 of the output, for the upload's signature */
};

static int append_out(void *ctx, const void *data, size_t len)
{
    background_compressor *bc = ctx;
    /* Starts big: a 16 MiB segment compresses to MiBs, each doubling a copy. */
    if (!bc->out.cap && buf_reserve(&bc->out, OUT_FIRST) != 0)
        return -ENOMEM;
    if (buf_append(&bc->out, data, len) != 0)
        return -ENOMEM;
    if (bc->digest && EVP_DigestUpdate(bc->digest, data, len) != 1) {
        EVP_MD_CTX_free(bc->digest);
        bc->digest = NULL; /* the uploader hashes it itself then */
    }
    return 0;
}

static int compress_range(background_compressor *bc, uint64_t from, uint64_t to)
{
    while (from < to) {
        size_t want = to - from < READ_CHUNK ? (size_t)(to - from) : READ_CHUNK;
        ssize_t n = pread(bc->fd, bc->chunk, want, (off_t)from);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EIO;
        walfs_err err = {0};
        if (lzop_encoder_write(bc->enc, bc->chunk, (size_t)n, append_out, bc, &err) != 0)
            return -EIO;
        from += (uint64_t)n;
    }
    return 0;
}

static void *run(void *arg)
{
    background_compressor *bc = arg;
    pthread_mutex_lock(&bc->lock);
    for (;;) {
        /* Whole blocks while writing goes on; everything once closing. */
        while (!bc->gave_up && !worker_stopping(&bc->pool) && !bc->closing &&
               bc->appended - bc->consumed < LZOP_BLOCK_SIZE)
            worker_wait(&bc->pool);
        if (bc->gave_up || worker_stopping(&bc->pool))
            break;
        uint64_t from = bc->consumed, to = bc->appended;
        if (!bc->closing)
            to = from + (to - from) / LZOP_BLOCK_SIZE * LZOP_BLOCK_SIZE;
        int closing = bc->closing;
        pthread_mutex_unlock(&bc->lock);
        int rc = compress_range(bc, from, to);
        pthread_mutex_lock(&bc->lock);
        if (rc) {
            bc->gave_up = 1;
            break;
        }
        bc->consumed = to;
        if (closing && bc->consumed == bc->appended)
            break;
    }
    pthread_mutex_unlock(&bc->lock);
    return NULL;
}

background_compressor *background_compressor_start(int spool_fd, mode_t mode, time_t mtime)
{
    background_compressor *bc = calloc(1, sizeof *bc);
    if (!bc)
        return NULL;
    bc->fd = spool_fd;
    bc->enc = lzop_encoder_new((uint32_t)(mode & 07777) | S_IFREG, mtime);
    bc->chunk = malloc(READ_CHUNK);
    bc->digest = EVP_MD_CTX_new();
    if (bc->digest && EVP_DigestInit_ex(bc->digest, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(bc->digest);
        bc->digest = NULL;
    }
    pthread_mutex_init(&bc->lock, NULL);
    worker_init(&bc->pool, &bc->lock, "walfs-compress");
    if (!bc->enc || !bc->chunk || worker_start(&bc->pool, 1, run, bc) != 0) {
        EVP_MD_CTX_free(bc->digest);
        lzop_encoder_free(bc->enc);
        free(bc->chunk);
        worker_destroy(&bc->pool);
        pthread_mutex_destroy(&bc->lock);
        free(bc);
        return NULL;
    }
    return bc;
}

void background_compressor_wrote(background_compressor *bc, uint64_t offset, size_t len)
{
    if (!bc)
        return;
    pthread_mutex_lock(&bc->lock);
    if (offset == bc->appended && !bc->closing)
        bc->appended += len;
    else
        bc->gave_up = 1;
    worker_wake_one(&bc->pool);
    pthread_mutex_unlock(&bc->lock);
}

void background_compressor_abandon(background_compressor *bc)
{
    if (!bc)
        return;
    pthread_mutex_lock(&bc->lock);
    bc->gave_up = 1;
    worker_wake_one(&bc->pool);
    pthread_mutex_unlock(&bc->lock);
}

int background_compressor_finish(background_compressor *bc, uint64_t size, char **data,
                                 size_t *len, char sha256_hex[65])
{
    sha256_hex[0] = '\0';
    if (!bc)
        return 0;
    pthread_mutex_lock(&bc->lock);
    bc->closing = 1;
    worker_wake_one(&bc->pool);
    pthread_mutex_unlock(&bc->lock);
    worker_join(&bc->pool); /* it drains what was appended, then ends */
    pthread_mutex_lock(&bc->lock);
    int usable = !bc->gave_up && bc->consumed == size && bc->appended == size;
    pthread_mutex_unlock(&bc->lock);
    if (!usable)
        return 0;
    walfs_err err = {0};
    if (lzop_encoder_finish(bc->enc, append_out, bc, &err) != 0)
        return 0;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (bc->digest && EVP_DigestFinal_ex(bc->digest, md, &md_len) == 1 && md_len == 32)
        hex_encode(md, 32, sha256_hex);
    *data = buf_take(&bc->out, len);
    return 1;
}

void background_compressor_free(background_compressor *bc)
{
    if (!bc)
        return;
    worker_destroy(&bc->pool); /* after finish, nothing left to join */
    lzop_encoder_free(bc->enc);
    EVP_MD_CTX_free(bc->digest);
    pthread_mutex_destroy(&bc->lock);
    free(bc->chunk);
    buf_free(&bc->out);
    free(bc);
}
