/* averis/tokenizer.h — byte-level BPE, trained in C.
 *
 * Ids 0..255 are the bytes, 256 is <|endoftext|> (between documents),
 * 257.. are merges in the order they were learned. Text is first cut into
 * chunks (a letter run, a digit run or a punctuation run, each taking one
 * leading space; whitespace runs alone); merges never cross a chunk.
 * File: "averis-bpe 1\nvocab_size V\nmerges M\n" then M lines "a b".
 */
#ifndef AVERIS_TOKENIZER_H
#define AVERIS_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>
#include "averis/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BPE_EOT 256
#define BPE_MAX_VOCAB 65536               /* shards hold uint16 ids */
#define BPE_MAX_TOKEN_BYTES (1 << 16)     /* one token's byte string */
#define BPE_MAX_TOTAL_BYTES (64 << 20)    /* all of them together */

typedef struct {
    int vocab_size;
    int nmerges;
    int32_t (*merges)[2];  /* [nmerges][2]: merge i makes id 257+i */
    uint8_t **tok_bytes;   /* [vocab_size] the bytes of each id */
    int *tok_len;
    void *rank_map;        /* pair → merge index */
} bpe_tokenizer;

/* Learns vocab_size − 257 merges from text; progress (may be NULL) is
 * called every 256 merges with (done, total). Ties go to the smaller pair. */
averis_status bpe_train(const char *text, size_t len, int vocab_size, bpe_tokenizer *tok,
                        void (*progress)(int done, int total));
/* The same merges, by the plain algorithm (every word scanned per merge):
 * the reference bpe_train (posting lists) is tested against. */
averis_status bpe_train_ref(const char *text, size_t len, int vocab_size, bpe_tokenizer *tok,
                            void (*progress)(int done, int total));
averis_status bpe_save(const bpe_tokenizer *tok, const char *path);
averis_status bpe_load(bpe_tokenizer *tok, const char *path);
void bpe_free(bpe_tokenizer *tok);
/* Appends one id to *ids (grown with realloc; *n, *cap updated). */
averis_status bpe_append(int **ids, size_t *n, size_t *cap, int id);
/* Appends the ids of text to *ids (grown with realloc; *n, *cap updated). */
averis_status bpe_encode(const bpe_tokenizer *tok, const char *text, size_t len, int **ids, size_t *n, size_t *cap);
/* The ids of n texts, in order, each led by <|endoftext|> when eot_first,
 * into *ids (malloc'd, *nids of them), encoded by nthreads threads (≤ 0:
 * the online CPUs). The output is the same for every thread count.
 * progress (may be NULL) is called, one call at a time, as texts are done. */
averis_status bpe_encode_texts(const bpe_tokenizer *tok, int n, const char *const *text, const size_t *len,
                               int eot_first, int nthreads, int **ids, size_t *nids,
                               void (*progress)(size_t bytes_done, size_t bytes_total));
/* Writes the bytes of ids into out (cap bytes, truncated to what fits and
 * NUL-terminated); returns the byte count needed (as snprintf does). <|endoftext|> decodes to "\n<|endoftext|>\n". */
size_t bpe_decode(const bpe_tokenizer *tok, const int *ids, size_t n, char *out, size_t cap);

/* Writes DIR/tokenizer.json (Hugging Face `tokenizers`: byte-level BPE with
 * these ids and merges and this chunking, so it encodes every text to the ids
 * bpe_encode gives; docs/huggingface.md), DIR/tokenizer_config.json and
 * DIR/generation_config.json (bos = eos = pad = <|endoftext|>, 256), so that
 * AutoTokenizer loads DIR. model_max_length <= 0: not written. Fails when two
 * ids have the same bytes (a tokenizers vocabulary maps strings to ids). */
averis_status bpe_save_hf(const bpe_tokenizer *tok, const char *dir, int model_max_length);
/* The later of the first two ids with equal bytes (*earlier: the other), or -1. */
int bpe_first_duplicate(const bpe_tokenizer *tok, int *earlier);
/* The chunking of bpe_encode as a regex over GPT-2's byte alphabet (UTF-8). */
const char *bpe_hf_chunk_regex(void);

#ifdef __cplusplus
}
#endif
#endif
