/* test_util.h — the training tests' shared fixture pieces (test_train,
 * test_ckpt, test_dp, test_moe): a temporary directory, a tiny model
 * config, a Markov-chain corpus over 64 tokens, and the cleanup. */
#ifndef AVERIS_TEST_UTIL_H
#define AVERIS_TEST_UTIL_H
#include <stddef.h>
#include <stdint.h>

/* A dense Qwen3 of 2 layers, width 32, vocabulary 64. */
#define TEST_TINY_MODEL_JSON                                                                        \
    "{\"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2,\n" \
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8,\n"                     \
    " \"max_position_embeddings\": 64, \"tie_word_embeddings\": true}\n"

/* mkdtemp of /tmp/averis_<tag>_XXXXXX into dir[cap] (shm: /dev/shm where it
 * is a writable directory, so checkpoints' fsyncs cost nothing); 0 on
 * success, else a failed CHECK and -1. */
int test_mkdtemp(char *dir, size_t cap, const char *tag, int shm);
/* dir/name holding text (a failed CHECK if it cannot be written) */
void test_write_text(const char *dir, const char *name, const char *text);
/* tok[0..n): token i+1 = (5·token i + 1 + a draw of 0..2) mod 64, tok[0] = 0 */
void test_markov_tokens(uint16_t *tok, int n, unsigned seed);
/* dir/sub/t_train.bin = tok[0..ntrain), dir/sub/t_val.bin = the next nval */
void test_write_split(const char *dir, const char *sub, const uint16_t *tok, int ntrain, int nval);
/* rm -rf dir */
void test_rm_tree(const char *dir);
#endif
