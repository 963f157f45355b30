/* test_util.h — the training tests' shared fixture pieces (test_train,
 * test_ckpt, test_dp, test_moe): a temporary directory, a tiny model
 * config, a Markov-chain corpus over 64 tokens, and the cleanup. */
#ifndef AVERIS_TEST_UTIL_H
#define AVERIS_TEST_UTIL_H
#include <stddef.h>
#include <stdint.h>

#include "averis/model.h"
#include "averis/safetensors.h"

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
/* 1 if files a and b both open and hold the same bytes */
int test_same_file(const char *a, const char *b);
/* m under `recipe` from the parameters p0: forward + backward (SR stream 11)
 * on 1 thread, then on 2 (OpenMP left at 2); CHECKs that the loss and every
 * gradient are the same bits; returns the loss, the gradients stay in
 * m->grads. g1: scratch of m->nparams floats. */
float test_step_1_and_2_threads(model *m, const char *recipe, const float *p0, float *g1, const int *ids,
                                const int *tg, int B, int T);
/* max |a − b| / max |b| over n (max |a − b| when b is all zero); a NaN
 * difference counts as infinite; *where (if given) = its index */
double test_max_rel(const float *a, const float *b, int64_t n, int64_t *where);
/* every gradient of m (after model_backward) against the fixture's
 * "grad.<tensor name>" tensors: a failed CHECK naming `what` and the tensor
 * for each beyond tol; returns the largest relative error, its tensor in
 * *worst_name */
double test_grads_vs_fixture(const model *m, const st_file *f, const char *what, double tol, const char **worst_name);
/* rm -rf dir */
void test_rm_tree(const char *dir);
#endif
