/* averis/data.h — training data: text from R data files, llm.c token shards,
 * and the batch loader.
 *
 * Shard (llm.c's .bin): int32 LE header[256] = {20240520, 1, ntok, 0...},
 * then ntok uint16 LE token ids. Documents start with <|endoftext|>.
 */
#ifndef AVERIS_DATA_H
#define AVERIS_DATA_H
#include <stddef.h>
#include <stdint.h>
#include "averis/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The character vectors of an R lazy-load database (Rdata.rdb: objects of
 * [u32 BE length][zlib stream of R's XDR serialization]). Each object
 * becomes one document, its strings joined by '\n'. Needs zlib. */
typedef struct {
    int n;
    char **text;
    size_t *len;
} text_docs;
averis_status rdata_read_texts(const char *path, text_docs *docs);
averis_status text_read_file(const char *path, text_docs *docs); /* appends one document */
void text_docs_free(text_docs *docs);
/* In place: drops a UTF-8 BOM, CRLF → LF, and a Project Gutenberg header
 * and footer ("*** START OF" … "*** END OF") when present. Returns the new length. */
size_t text_clean(char *s, size_t len);

#define SHARD_MAGIC 20240520
#define SHARD_HEADER_INTS 256
averis_status shard_write(const char *path, const uint16_t *tok, size_t n);
averis_status shard_read(const char *path, uint16_t **tok, size_t *n);

/* Batches of B×T inputs and the next-token targets, read in order from the
 * shards matching DIR/ *SPLIT*.bin (sorted), wrapping at the end. */
typedef struct {
    uint16_t *tok;
    size_t n;
    size_t pos;     /* next batch starts here (saved in checkpoints) */
    uint64_t epoch; /* completed passes */
    int nshards;
    int max_id;     /* largest token id present */
} data_loader;
averis_status loader_open(data_loader *dl, const char *dir, const char *split);
/* The batch whose first input is token pos (no state changes); fails if
 * it runs past the end. */
averis_status loader_batch_at(const data_loader *dl, size_t pos, int B, int T, int *inputs, int *targets);
/* Next batch; fails if the data holds fewer than B·T+1 tokens. */
averis_status loader_next(data_loader *dl, int B, int T, int *inputs, int *targets);
/* Every token id is below vocab_size, or an error naming the first that is not. */
averis_status loader_check_vocab(const data_loader *dl, int vocab_size, const char *what);
void loader_free(data_loader *dl);

#ifdef __cplusplus
}
#endif
#endif
