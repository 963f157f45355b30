/* test_fault.c — regressions for the defects of issue 20 outside the
 * trainer: long tokens, tokenizer bounds and messages, the analysis Gram
 * bound and its JSON, configs with Hugging Face defaults and refused fields. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "averis/analysis.h"
#include "averis/model.h"
#include "averis/tokenizer.h"
#include "check.h"

/* Writes an averis-bpe file whose merge i is (a[i], b[i]) given by fn. */
static void write_bpe(const char *path, int nmerges, void (*fn)(int i, int *a, int *b)) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "averis-bpe 1\nvocab_size %d\nmerges %d\n", 257 + nmerges, nmerges);
    for (int i = 0; i < nmerges; i++) {
        int a, b;
        fn(i, &a, &b);
        fprintf(f, "%d %d\n", a, b);
    }
    fclose(f);
}
/* A fresh temporary file name in path (a "/tmp/..._XXXXXX" template); 0 on failure. */
static int temp_file(char *path) {
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp %s", path);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}
/* '=' doubled: id 257 is "==", 257+i is 2^(i+1) bytes of '=' */
static void doubling(int i, int *a, int *b) { *a = *b = i ? 257 + i - 1 : '='; }
static void same_pair(int i, int *a, int *b) { (void)i; *a = *b = ' '; }

/* A token longer than the caller's buffer: the decoder copies what fits
 * (snprintf's contract); it used to skip the copy and leave stack bytes. */
void test_bpe_long_token_decode(void) {
    char path[] = "/tmp/averis_fault_XXXXXX";
    if (!temp_file(path)) return;
    write_bpe(path, 11, doubling); /* id 267: 2048 bytes, as a BPE on "=====" lines learns */
    bpe_tokenizer tok;
    CHECK(!bpe_load(&tok, path), "%s", averis_last_error());
    char buf[1024];
    memset(buf, 'x', sizeof buf);
    int id = 267;
    size_t need = bpe_decode(&tok, &id, 1, buf, sizeof buf);
    size_t eq = strspn(buf, "=");
    CHECK(need == 2048 && eq == sizeof buf - 1 && buf[sizeof buf - 1] == 0,
          "decode of a 2048-byte token into 1024 bytes: need %zu (want 2048), %zu '=' then byte %d (want 1023, 0)", need,
          eq, buf[eq]);
    int two[2] = {'a', 267};
    need = bpe_decode(&tok, two, 2, buf, sizeof buf);
    CHECK(need == 2049 && buf[0] == 'a' && strspn(buf + 1, "=") == sizeof buf - 2, "prefix then a long token: %zu", need);
    bpe_free(&tok);
    unlink(path);
}

/* Doubling merges reach GBs in 40 lines; vocabularies beyond uint16 ids;
 * messages that name the file once (they were formatted from themselves). */
void test_bpe_load_bounds(void) {
    char path[] = "/tmp/averis_fault_XXXXXX";
    if (!temp_file(path)) return;
    bpe_tokenizer tok;
    write_bpe(path, 40, doubling);
    CHECK(bpe_load(&tok, path) != AVERIS_OK && strstr(averis_last_error(), "limit") &&
              strstr(averis_last_error(), path) && strstr(averis_last_error(), "merge 16"),
          "40 doubling merges: %s", averis_last_error());
    write_bpe(path, 65536 - 256, same_pair); /* vocab 65537 */
    CHECK(bpe_load(&tok, path) != AVERIS_OK && strstr(averis_last_error(), "vocab_size 65537 exceeds 65536"),
          "vocab 65537: %s", averis_last_error());
    write_bpe(path, 65536 - 257, same_pair); /* vocab 65536: the largest a shard holds */
    CHECK(!bpe_load(&tok, path) && tok.vocab_size == 65536, "vocab 65536: %s", averis_last_error());
    bpe_free(&tok);
    FILE *f = fopen(path, "w");
    if (f) fputs("averis-bpe 1\nvocab_size 258\nmerges 1\n300 32\n", f), fclose(f);
    const char *e = averis_last_error();
    CHECK(bpe_load(&tok, path) != AVERIS_OK && (e = averis_last_error()) && !strncmp(e, path, strlen(path)) &&
              strstr(e, "merge 0 (300 32) refers to an unknown id") && !strstr(e + strlen(path), path),
          "message names the file once: '%s'", e);
    if ((f = fopen(path, "w"))) fputs("averis-bpe 1\nvocab_size 99999999999999999999\nmerges 1\n", f), fclose(f);
    CHECK(bpe_load(&tok, path) != AVERIS_OK && strstr(averis_last_error(), "bad header"), "huge header: %s",
          averis_last_error());
    if ((f = fopen(path, "w"))) fputs("averis-bpe 1\nvocab_size 258\nmerges 1\n32 32\n7\n", f), fclose(f);
    CHECK(bpe_load(&tok, path) != AVERIS_OK && strstr(averis_last_error(), "trailing"), "trailing: %s",
          averis_last_error());
    unlink(path);
}

/* rows < cols: the Gram matrix is rows²; beyond the bound, an error before
 * any allocation (1 × 16384 took 1.2 GB). */
void test_analysis_gram_bound(void) {
    enum { l = 2, m = 16384 };
    float *X = malloc(sizeof(float) * l * m);
    if (!X) return;
    for (int j = 0; j < m; j++) X[j] = (float)((j % 7) - 3), X[m + j] = -X[j]; /* zero mean: all spike */
    analysis_metrics a;
    CHECK(!analysis_compute(X, l, m, &a), "%s", averis_last_error());
    CHECK(a.R == 0 && fabs(a.e_spike - 1.0) < 1e-6 && a.spike_k == 1, "2×16384 ±x: R %g e_spike %.9f k %d", a.R,
          a.e_spike, a.spike_k);
    CHECK(!analysis_compute(X, 1, m, &a) && a.rows == 1, "1×16384: %s", averis_last_error());
    /* refused before X is read: a bogus pointer is never touched */
    CHECK(analysis_compute(X, 9000, 9000, &a) != AVERIS_OK && strstr(averis_last_error(), "exceeds 8192"),
          "9000×9000: %s", averis_last_error());
    free(X);
    /* JSON has no nan/inf: null */
    memset(&a, 0, sizeof a);
    a.R = NAN;
    a.sigma1 = INFINITY;
    a.q_rel_mse[0] = -INFINITY;
    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    if (!f) return;
    analysis_json(f, &a);
    fclose(f);
    CHECK(strstr(buf, "\"R\": null") && strstr(buf, "\"sigma1\": null") && strstr(buf, "\"relmse_plain\": null") &&
              !strstr(buf, "nan") && !strstr(buf, "inf"),
          "json: %s", buf);
}

/* Missing fields are Hugging Face Qwen3Config's defaults; fields averis does
 * not implement are refused by name; NVFP4 widths are checked by field. */
void test_config_hf_defaults_and_refusals(void) {
    model_config c;
    const char *one = "{\"num_hidden_layers\": 2}";
    CHECK(!model_config_from_json(one, strlen(one), "d.json", &c), "%s", averis_last_error());
    CHECK(c.vocab_size == 151936 && c.hidden_size == 4096 && c.intermediate_size == 22016 && c.num_hidden_layers == 2 &&
              c.num_attention_heads == 32 && c.num_key_value_heads == 32 && c.head_dim == 128 &&
              c.max_position_embeddings == 32768 && !c.tie_word_embeddings && c.rope_theta == 10000.0 &&
              c.rms_norm_eps == 1e-6,
          "defaults: V %d C %d F %d H %d KV %d Dh %d P %d tie %d theta %g", c.vocab_size, c.hidden_size,
          c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.max_position_embeddings,
          c.tie_word_embeddings, c.rope_theta);
    /* head_dim absent is Qwen3Config's 128, not hidden_size / heads; num_key_value_heads null is the heads */
    const char *two = "{\"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": null}";
    CHECK(!model_config_from_json(two, strlen(two), "d.json", &c) && c.head_dim == 128 && c.num_key_value_heads == 4,
          "head_dim %d (want 128), num_key_value_heads %d (want 4): %s", c.head_dim, c.num_key_value_heads,
          averis_last_error());
    /* Qwen3-0.6B's config.json as published */
    const char *q06 =
        "{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
        "\"bos_token_id\": 151643, \"eos_token_id\": 151645, \"head_dim\": 128, \"hidden_act\": \"silu\","
        "\"hidden_size\": 1024, \"initializer_range\": 0.02, \"intermediate_size\": 3072,"
        "\"max_position_embeddings\": 40960, \"max_window_layers\": 28, \"model_type\": \"qwen3\","
        "\"num_attention_heads\": 16, \"num_hidden_layers\": 28, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-06,"
        "\"rope_scaling\": null, \"rope_theta\": 1000000, \"sliding_window\": null, \"tie_word_embeddings\": true,"
        "\"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.51.0\", \"use_cache\": true,"
        "\"use_sliding_window\": false, \"vocab_size\": 151936}";
    CHECK(!model_config_from_json(q06, strlen(q06), "q.json", &c) && c.hidden_size == 1024 && c.tie_word_embeddings &&
              !model_config_check_fp4(&c, "q.json"),
          "Qwen3-0.6B config: %s", averis_last_error());
    static const struct { const char *json, *want; } bad[] = {
        {"{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3\"}", "architectures = [\"Qwen3MoeForCausalLM\"]"},
        {"{\"hidden_size\": 64, \"num_experts\": 8, \"moe_intermediate_size\": 32}", "field num_experts"},
        {"{\"model_type\": \"qwen2_moe\"}", "model_type = \"qwen2_moe\""},
        {"{\"hidden_sise\": 64}", "unknown field hidden_sise"},
        {"{\"hidden_act\": \"gelu\"}", "hidden_act = \"gelu\""},
        {"{\"attention_bias\": true}", "attention_bias = true"},
        {"{\"use_sliding_window\": true}", "use_sliding_window = true"},
        {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}", "rope_scaling"},
        {"{\"rope_parameters\": {\"rope_type\": \"yarn\"}}", "rope_parameters"},
        {"{\"layer_types\": [\"sliding_attention\"]}", "layer_types"},
        {"{\"num_attention_heads\": 4}", "num_key_value_heads = 32 does not divide"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        averis_status st = model_config_from_json(bad[i].json, strlen(bad[i].json), "my.json", &c);
        CHECK(st != AVERIS_OK && strstr(averis_last_error(), bad[i].want) && strstr(averis_last_error(), "my.json"),
              "config %s: got '%s', want '%s'", bad[i].json, averis_last_error(), bad[i].want);
    }
    static const struct { const char *json, *want; } fp4[] = {
        {"{\"hidden_size\": 40, \"num_attention_heads\": 4, \"num_key_value_heads\": 2}", "hidden_size = 40"},
        {"{\"hidden_size\": 64, \"intermediate_size\": 100, \"num_attention_heads\": 4, \"num_key_value_heads\": 2}",
         "intermediate_size = 100"},
        {"{\"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": 1, \"head_dim\": 12}",
         "num_key_value_heads × head_dim = 12"},
    };
    for (size_t i = 0; i < sizeof fp4 / sizeof fp4[0]; i++) {
        averis_status st = model_config_from_json(fp4[i].json, strlen(fp4[i].json), "f.json", &c);
        CHECK(!st, "%s: %s", fp4[i].json, averis_last_error());
        CHECK(model_config_check_fp4(&c, "f.json") != AVERIS_OK && strstr(averis_last_error(), fp4[i].want) &&
                  strstr(averis_last_error(), "multiple of 16"),
              "fp4 %s: got '%s', want '%s'", fp4[i].json, averis_last_error(), fp4[i].want);
    }
}
