/* test_model.c — the Qwen3 model against Hugging Face transformers (the
 * fixtures of tests/gen_qwen3_fixture.py), recipes, determinism, configs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "averis/model.h"
#include "averis/safetensors.h"
#include "check.h"
#include "test_util.h"

#define FIXDIR "tests/fixtures/qwen3/"

/* Logits, loss and every parameter gradient within 2e-5 of transformers'
 * (relative to each tensor's largest magnitude): fp32 both sides, only the
 * summation order differs. */
void test_model_matches_transformers(void) {
    const char *names[] = {"tied", "untied"};
    for (int k = 0; k < 2; k++) {
        char cpath[256], fpath[256];
        snprintf(cpath, sizeof cpath, FIXDIR "%s/config.json", names[k]);
        snprintf(fpath, sizeof fpath, FIXDIR "%s/fixture.safetensors", names[k]);
        model_config cfg;
        model m;
        st_file f;
        averis_status st = model_config_load(cpath, &cfg);
        CHECK(!st, "%s: %s", cpath, averis_last_error());
        if (st) continue;
        CHECK(cfg.tie_word_embeddings == (k == 0), "%s: tie_word_embeddings read as %d", names[k], cfg.tie_word_embeddings);
        CHECK(!model_create(&m, &cfg), "%s", averis_last_error());
        CHECK(!qlin_recipe_parse("fp32", &m.recipe), "fp32 recipe");
        st = model_load_weights(&m, fpath);
        CHECK(!st, "%s", averis_last_error());
        if (st || st_read(fpath, &f)) { model_free(&m); continue; }
        const st_tensor *ti = st_find(&f, "input_ids");
        int B = (int)ti->shape[0], T = (int)ti->shape[1], N = B * T, V = cfg.vocab_size;
        int *ids = malloc(sizeof(int) * (size_t)N), *tg = malloc(sizeof(int) * (size_t)N);
        float *ref = malloc(sizeof(float) * (size_t)N * V), loss_ref, loss = 0;
        int64_t lshape[3] = {B, T, V}, one = 1;
        CHECK(!st_get_int(&f, "input_ids", N, ids) && !st_get_int(&f, "targets", N, tg), "fixture ids");
        CHECK(!st_get_f32(&f, "logits", 3, lshape, ref) && !st_get_f32(&f, "loss", 1, &one, &loss_ref), "fixture logits");
        /* logits: a forward without targets leaves them in probs */
        CHECK(!model_forward(&m, ids, NULL, B, T, NULL), "%s", averis_last_error());
        int64_t at = 0;
        double e = test_max_rel(m.probs, ref, (int64_t)N * V, &at);
        CHECK(e < 2e-5, "%s: logits rel err %.3e at %lld (got %.7g want %.7g)", names[k], e, (long long)at,
              m.probs[at], ref[at]);
        printf("      %-6s logits max rel err %.2e", names[k], e);
        CHECK(!model_forward(&m, ids, tg, B, T, &loss), "%s", averis_last_error());
        CHECK(fabsf(loss - loss_ref) <= 2e-5f * loss_ref, "%s: loss %.7f want %.7f", names[k], loss, loss_ref);
        CHECK(!model_zero_grad(&m) && !model_backward(&m, 1.0f, 0), "%s", averis_last_error());
        const char *worst_name;
        double worst = test_grads_vs_fixture(&m, &f, names[k], 2e-5, &worst_name);
        printf(", loss %.6f (want %.6f), worst grad rel err %.2e (%s)\n", loss, loss_ref, worst, worst_name);
        free(ids); free(tg); free(ref);
        st_free(&f);
        model_free(&m);
    }
}

static void small_config(model_config *c) {
    memset(c, 0, sizeof *c);
    *c = (model_config){.vocab_size = 64, .hidden_size = 32, .intermediate_size = 48, .num_hidden_layers = 2,
                        .num_attention_heads = 4, .num_key_value_heads = 2, .head_dim = 16,
                        .max_position_embeddings = 64, .tie_word_embeddings = 1, .rope_theta = 1e6,
                        .rms_norm_eps = 1e-6};
}

/* Every recipe trains: its loss is finite, near fp32's, and a step along
 * −grad lowers it; bits are the same for 1 and 2 threads. */
void test_model_recipes_and_threads(void) {
    model_config cfg;
    small_config(&cfg);
    const int B = 2, T = 24, N = B * T;
    int ids[48], tg[48];
    for (int i = 0; i < N; i++) ids[i] = (i * 7 + 3) % 64, tg[i] = (i * 5 + 1) % 64;
    model m;
    CHECK(!model_create(&m, &cfg), "%s", averis_last_error());
    model_init_weights(&m, 7);
    float *p0 = malloc(m.nparams * sizeof(float)), *g1 = malloc(m.nparams * sizeof(float));
    memcpy(p0, m.params, m.nparams * sizeof(float));
    float ref = 0;
    const char *recipes[] = {"fp32", "bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    for (int r = 0; r < 6; r++) {
        float l1 = test_step_1_and_2_threads(&m, recipes[r], p0, g1, ids, tg, B, T);
        if (r == 0) ref = l1;
        CHECK(isfinite(l1) && fabsf(l1 - ref) < 0.05f * ref, "%s: loss %.5f vs fp32 %.5f", recipes[r], l1, ref);
        for (size_t i = 0; i < m.nparams; i++) m.params[i] = p0[i] - 0.5f * m.grads[i];
        float l3 = 0;
        CHECK(!model_forward(&m, ids, tg, B, T, &l3), "%s", averis_last_error());
        CHECK(l3 < l1, "%s: a gradient step did not lower the loss (%.5f → %.5f)", recipes[r], l1, l3);
    }
    /* bf16_last = L: every block in bf16, the same bits as the bf16 recipe */
    float lb = 0, lk = 0;
    memcpy(m.params, p0, m.nparams * sizeof(float));
    qlin_recipe_parse("bf16", &m.recipe);
    model_forward(&m, ids, tg, B, T, &lb);
    qlin_recipe_parse("nvfp4", &m.recipe);
    m.bf16_last = cfg.num_hidden_layers;
    model_forward(&m, ids, tg, B, T, &lk);
    CHECK(lb == lk, "bf16_last=L: %.9g vs bf16 %.9g", lk, lb);
    free(p0);
    free(g1);
    model_free(&m);
}

/* Impossible configs and bad inputs are errors that name the field. */
void test_model_config_errors(void) {
    model_config c;
    static const struct { const char *json, *want; } cases[] = {
        {"{\"hidden_size\": 100, \"num_attention_heads\": 3}", "num_key_value_heads = 32 does not divide num_attention_heads = 3"},
        {"{\"num_attention_heads\": 4, \"num_key_value_heads\": 3}", "num_key_value_heads = 3"},
        {"{\"head_dim\": 7}", "head_dim = 7"},
        {"{\"vocab_size\": 0}", "vocab_size = 0"},
        {"{\"vocab_size\": 1.5}", "vocab_size must be an integer"},
        {"{\"tie_word_embeddings\": 1}", "tie_word_embeddings"},
        {"{\"hidden_size\": 64,}", "bad JSON"},
        {"[1, 2]", "expected a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        averis_status st = model_config_from_json(cases[i].json, strlen(cases[i].json), "my.json", &c);
        CHECK(st != AVERIS_OK && strstr(averis_last_error(), cases[i].want) && strstr(averis_last_error(), "my.json"),
              "config %s: got '%s', want '%s'", cases[i].json, averis_last_error(), cases[i].want);
    }
    CHECK(model_config_load("no-such-preset", &c) != AVERIS_OK && strstr(averis_last_error(), "no-such-preset"),
          "unknown preset: %s", averis_last_error());
    CHECK(!model_config_load("tiny", &c) && c.hidden_size == 128, "tiny preset");
    CHECK(!model_config_load("qwen3-0.6b", &c) && c.num_hidden_layers == 28 && c.vocab_size == 151936,
          "qwen3-0.6b preset");
    CHECK(model_config_nparams(&c) > 590000000 && model_config_nparams(&c) < 610000000, "qwen3-0.6b has %lld parameters",
          (long long)model_config_nparams(&c));
    /* weights with a wrong shape */
    model_config small;
    small_config(&small);
    model m;
    model_create(&m, &small);
    averis_status st = model_load_weights(&m, FIXDIR "tied/fixture.safetensors");
    CHECK(st != AVERIS_OK && strstr(averis_last_error(), "has shape"), "wrong shapes: %s", averis_last_error());
    int bad[4] = {0, 1, 64, 2};
    CHECK(model_forward(&m, bad, NULL, 1, 4, NULL) != AVERIS_OK && strstr(averis_last_error(), "token 64"),
          "token out of range: %s", averis_last_error());
    CHECK(model_backward(&m, 1.0f, 0) != AVERIS_OK, "backward without a forward with targets");
    model_free(&m);
}
