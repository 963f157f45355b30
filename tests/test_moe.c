/* test_moe.c — the Qwen3-MoE model against transformers' Qwen3MoeForCausalLM
 * (tests/gen_qwen3_moe_fixture.py), the aux loss, empty experts, every
 * recipe training a tiny MoE, configs, bit-exact resume. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "averis/moe.h"
#include "averis/safetensors.h"
#include "averis/train.h"
#include "check.h"
#include "test_util.h"

#define FIXDIR "tests/fixtures/qwen3_moe/"

/* The weights written with transformers' in-memory fused expert names
 * (gate_up_proj [E,2I,C], down_proj [E,C,I]) load to the same parameters. */
static void fused_roundtrip(const model *m) {
    const model_config *c = &m->cfg;
    int64_t E = c->num_experts, C = c->hidden_size, I = c->moe_intermediate_size;
    st_out *t = calloc((size_t)m->ntensors, sizeof *t);
    float *bufs[64] = {0};
    char names[64][96];
    int n = 0, nb = 0;
    for (int i = 0; i < m->ntensors; i++) {
        const model_tensor *mt = &m->tensors[i];
        if (strstr(mt->name, ".mlp.experts.")) continue;
        t[n++] = (st_out){.name = mt->name, .data = m->params + mt->offset, .ndim = mt->ndim,
                          .shape = {mt->shape[0], mt->shape[1]}};
    }
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (!model_layer_is_moe(c, l)) continue;
        const model_block *b = &m->w.blocks[l];
        float *gu = malloc((size_t)(E * 2 * I * C) * sizeof(float));
        for (int64_t e = 0; e < E; e++) {
            memcpy(gu + e * 2 * I * C, b->eg + e * I * C, (size_t)(I * C) * sizeof(float));
            memcpy(gu + e * 2 * I * C + I * C, b->eu + e * I * C, (size_t)(I * C) * sizeof(float));
        }
        bufs[nb++] = gu;
        snprintf(names[2 * l], 96, "model.layers.%d.mlp.experts.gate_up_proj", l);
        snprintf(names[2 * l + 1], 96, "model.layers.%d.mlp.experts.down_proj", l);
        t[n++] = (st_out){.name = names[2 * l], .data = gu, .ndim = 3, .shape = {E, 2 * I, C}};
        t[n++] = (st_out){.name = names[2 * l + 1], .data = b->ed, .ndim = 3, .shape = {E, C, I}};
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/averis_moe_fused_%d.safetensors", (int)getpid());
    model m2;
    CHECK(!st_write_f32(path, t, n, NULL) && !model_create(&m2, c), "%s", averis_last_error());
    CHECK(!model_load_weights(&m2, path), "fused checkpoint: %s", averis_last_error());
    CHECK(!memcmp(m2.params, m->params, m->nparams * sizeof(float)), "fused checkpoint loads other values");
    model_free(&m2);
    unlink(path);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(t);
}

/* Logits, cross-entropy, aux loss, total loss and every gradient (router and
 * experts included) within 2e-5 of transformers', in fp32. */
void test_moe_matches_transformers(void) {
    const char *names[] = {"moe", "moe_sparse"};
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
        CHECK(cfg.num_experts > 0 && (k == 0 ? !model_layer_is_moe(&cfg, 1) && model_layer_is_moe(&cfg, 2)
                                             : !model_layer_is_moe(&cfg, 0) && model_layer_is_moe(&cfg, 1)),
              "%s: MoE layers from mlp_only_layers / decoder_sparse_step", names[k]);
        CHECK(!model_create(&m, &cfg), "%s", averis_last_error());
        CHECK(!qlin_recipe_parse("fp32", &m.recipe), "fp32 recipe");
        st = model_load_weights(&m, fpath);
        CHECK(!st, "%s", averis_last_error());
        if (st || st_read(fpath, &f)) { model_free(&m); continue; }
        const st_tensor *ti = st_find(&f, "input_ids");
        int B = (int)ti->shape[0], T = (int)ti->shape[1], N = B * T, V = cfg.vocab_size;
        int *ids = malloc(sizeof(int) * (size_t)N), *tg = malloc(sizeof(int) * (size_t)N);
        float *ref = malloc(sizeof(float) * (size_t)N * V), ce_ref, aux_ref, loss_ref, loss = 0;
        int64_t lshape[3] = {B, T, V}, one = 1;
        CHECK(!st_get_int(&f, "input_ids", N, ids) && !st_get_int(&f, "targets", N, tg), "fixture ids");
        CHECK(!st_get_f32(&f, "logits", 3, lshape, ref) && !st_get_f32(&f, "loss", 1, &one, &loss_ref) &&
                  !st_get_f32(&f, "ce", 1, &one, &ce_ref) && !st_get_f32(&f, "aux", 1, &one, &aux_ref),
              "fixture logits and losses");
        CHECK(!model_forward(&m, ids, NULL, B, T, NULL), "%s", averis_last_error());
        int64_t at = 0;
        double e = test_max_rel(m.probs, ref, (int64_t)N * V, &at);
        CHECK(e < 2e-5, "%s: logits rel err %.3e at %lld (got %.7g want %.7g)", names[k], e, (long long)at,
              m.probs[at], ref[at]);
        printf("      %-10s logits max rel err %.2e", names[k], e);
        CHECK(!model_forward(&m, ids, tg, B, T, &loss), "%s", averis_last_error());
        CHECK(fabsf(m.ce_loss - ce_ref) <= 2e-5f * ce_ref, "%s: ce %.7f want %.7f", names[k], m.ce_loss, ce_ref);
        CHECK(fabsf(m.aux_loss - aux_ref) <= 2e-5f * aux_ref, "%s: aux %.7f want %.7f", names[k], m.aux_loss, aux_ref);
        CHECK(fabsf(loss - loss_ref) <= 2e-5f * loss_ref, "%s: loss %.7f want %.7f", names[k], loss, loss_ref);
        int empty = 0;
        for (int l = 0; l < cfg.num_hidden_layers; l++) {
            const int *sel, *cnt;
            const float *w;
            moe_routing(&m, l, &sel, &w, &cnt);
            for (int x = 0; cnt && x < cfg.num_experts; x++) empty += cnt[x] == 0;
        }
        CHECK(!model_zero_grad(&m) && !model_backward(&m, 1.0f, 0), "%s", averis_last_error());
        const char *worst_name;
        double worst = test_grads_vs_fixture(&m, &f, names[k], 2e-5, &worst_name);
        printf(", ce %.6f aux %.6f loss %.6f (want %.6f), %d empty experts, worst grad rel err %.2e (%s)\n",
               m.ce_loss, m.aux_loss, loss, loss_ref, empty, worst, worst_name);
        CHECK(empty > 0, "%s: the fixture has an expert without tokens", names[k]);
        if (k == 0) fused_roundtrip(&m);
        free(ids); free(tg); free(ref);
        st_free(&f);
        model_free(&m);
    }
}

static void tiny_moe(model_config *c) {
    CHECK(!model_config_load("moe-tiny", c), "%s", averis_last_error());
    c->vocab_size = 64;
    c->hidden_size = 32;
    c->num_hidden_layers = 2;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->head_dim = 16;
    c->max_position_embeddings = 64;
    c->num_experts = 4;
    c->num_experts_per_tok = 2;
    c->moe_intermediate_size = 32;
}

/* Every recipe: finite loss near fp32's, a step along −grad lowers it, the
 * same bits on 1 and 2 threads; an expert with no tokens stays finite and
 * gets no gradient. */
void test_moe_recipes_and_empty_experts(void) {
    model_config cfg;
    tiny_moe(&cfg);
    const int B = 2, T = 24, N = B * T;
    int ids[48], tg[48];
    for (int i = 0; i < N; i++) ids[i] = (i * 7 + 3) % 64, tg[i] = (i * 5 + 1) % 64;
    model m;
    CHECK(!model_create(&m, &cfg), "%s", averis_last_error());
    model_init_weights(&m, 7);
    const model_tensor *rt = model_find_tensor(&m, "model.layers.0.mlp.gate.weight");
    const model_tensor *e3 = model_find_tensor(&m, "model.layers.0.mlp.experts.3.down_proj.weight");
    CHECK(rt && e3, "tensors by HF name");
    if (!rt || !e3) { model_free(&m); return; }
    float *p0 = malloc(m.nparams * sizeof(float)), *g1 = malloc(m.nparams * sizeof(float));
    memcpy(p0, m.params, m.nparams * sizeof(float));
    float ref = 0;
    const char *recipes[] = {"fp32", "bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    for (int r = 0; r < 6; r++) {
        float l1 = test_step_1_and_2_threads(&m, recipes[r], p0, g1, ids, tg, B, T);
        if (r == 0) ref = l1;
        int finite = 1;
        for (size_t i = 0; i < m.nparams; i++) finite &= isfinite(m.grads[i]) != 0;
        CHECK(finite && isfinite(l1) && fabsf(l1 - ref) < 0.05f * ref, "%s: loss %.5f vs fp32 %.5f, grads %s",
              recipes[r], l1, ref, finite ? "finite" : "NOT finite");
        for (size_t i = 0; i < m.nparams; i++) m.params[i] = p0[i] - 0.5f * m.grads[i];
        float l3 = 0;
        CHECK(!model_forward(&m, ids, tg, B, T, &l3), "%s", averis_last_error());
        CHECK(l3 < l1, "%s: a gradient step did not lower the loss (%.5f → %.5f)", recipes[r], l1, l3);
    }
    /* an empty expert: every token's embedding leans along feature 0, so the
     * normed inputs all have h[0] > 0, and expert 3's router row is −10·e_0 */
    memcpy(m.params, p0, m.nparams * sizeof(float));
    qlin_recipe_parse("averis", &m.recipe);
    float loss;
    for (int v = 0; v < cfg.vocab_size; v++) m.w.embed[(int64_t)v * cfg.hidden_size] = 3.0f;
    for (int64_t i = 0; i < cfg.hidden_size; i++) m.params[rt->offset + 3 * cfg.hidden_size + i] = i ? 0.0f : -10.0f;
    CHECK(!model_forward(&m, ids, tg, B, T, &loss) && !model_zero_grad(&m) && !model_backward(&m, 1.0f, 5), "%s",
          averis_last_error());
    const int *sel, *cnt;
    const float *w;
    moe_routing(&m, 0, &sel, &w, &cnt);
    int finite = isfinite(loss);
    for (size_t i = 0; i < m.nparams; i++) finite &= isfinite(m.grads[i]) != 0;
    float gmax = 0;
    for (size_t i = 0; i < e3->numel; i++) gmax = fmaxf(gmax, fabsf(m.grads[e3->offset + i]));
    CHECK(cnt && cnt[3] == 0, "expert 3 of layer 0 has %d tokens (want 0)", cnt ? cnt[3] : -1);
    CHECK(finite && gmax == 0.0f, "empty expert under averis: loss %g, grads %s, its down_proj grad max %g", loss,
          finite ? "finite" : "NOT finite", gmax);
    free(p0);
    free(g1);
    model_free(&m);
}

/* Configs: Qwen3-MoE JSON fields and defaults, refusals, presets, the
 * config.json round trip. */
void test_moe_config(void) {
    model_config c;
    const char *j = "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", \"hidden_size\": 64,"
                    "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"num_hidden_layers\": 4,"
                    "\"num_experts\": 8, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 32,"
                    "\"norm_topk_prob\": true, \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3],"
                    "\"output_router_logits\": true, \"router_aux_loss_coef\": 0.01}";
    CHECK(!model_config_from_json(j, strlen(j), "m.json", &c), "%s", averis_last_error());
    CHECK(c.num_experts == 8 && c.num_experts_per_tok == 2 && c.moe_intermediate_size == 32 && c.norm_topk_prob &&
              c.output_router_logits && c.router_aux_loss_coef == 0.01 && c.decoder_sparse_step == 2 &&
              c.head_dim == 16 && c.intermediate_size == 6144,
          "MoE fields: E %d k %d I %d", c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size);
    CHECK(!model_layer_is_moe(&c, 0) && model_layer_is_moe(&c, 1) && !model_layer_is_moe(&c, 2) &&
              !model_layer_is_moe(&c, 3),
          "sparse step 2 with layer 3 dense");
    /* defaults: Qwen3MoeConfig's */
    const char *d = "{\"model_type\": \"qwen3_moe\", \"num_hidden_layers\": 1}";
    CHECK(!model_config_from_json(d, strlen(d), "d.json", &c) && c.num_experts == 128 && c.num_experts_per_tok == 8 &&
              c.moe_intermediate_size == 768 && !c.norm_topk_prob && !c.output_router_logits &&
              c.router_aux_loss_coef == 0.001 && c.hidden_size == 2048 && c.num_key_value_heads == 4,
          "Qwen3MoeConfig defaults: %s", averis_last_error());
    /* the published Qwen3-30B-A3B config.json */
    const char *q30 =
        "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
        "\"bos_token_id\": 151643, \"decoder_sparse_step\": 1, \"eos_token_id\": 151645, \"head_dim\": 128,"
        "\"hidden_act\": \"silu\", \"hidden_size\": 2048, \"initializer_range\": 0.02, \"intermediate_size\": 6144,"
        "\"max_position_embeddings\": 40960, \"max_window_layers\": 48, \"mlp_only_layers\": [],"
        "\"model_type\": \"qwen3_moe\", \"moe_intermediate_size\": 768, \"norm_topk_prob\": true,"
        "\"num_attention_heads\": 32, \"num_experts\": 128, \"num_experts_per_tok\": 8, \"num_hidden_layers\": 48,"
        "\"num_key_value_heads\": 4, \"output_router_logits\": false, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null,"
        "\"rope_theta\": 1000000.0, \"router_aux_loss_coef\": 0.001, \"sliding_window\": null,"
        "\"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.51.0\","
        "\"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": 151936}";
    CHECK(!model_config_from_json(q30, strlen(q30), "q30.json", &c), "Qwen3-30B-A3B: %s", averis_last_error());
    int64_t np = model_config_nparams(&c);
    CHECK(np > 30000000000LL && np < 31000000000LL, "Qwen3-30B-A3B has %lld parameters (want 30.5B)", (long long)np);
    static const struct { const char *json, *want; } bad[] = {
        {"{\"hidden_size\": 64, \"num_experts\": 8}", "field num_experts"},
        {"{\"model_type\": \"qwen3\", \"moe_intermediate_size\": 8}", "field moe_intermediate_size"},
        {"{\"model_type\": \"qwen3_moe\", \"architectures\": [\"Qwen3ForCausalLM\"]}", "architectures"},
        {"{\"model_type\": \"qwen3_moe\", \"num_experts\": 4, \"num_experts_per_tok\": 5}", "num_experts_per_tok = 5"},
        {"{\"model_type\": \"qwen3_moe\", \"num_experts\": -1}", "num_experts = -1"},
        {"{\"model_type\": \"qwen3_moe\", \"decoder_sparse_step\": 0}", "decoder_sparse_step = 0"},
        {"{\"model_type\": \"qwen3_moe\", \"router_aux_loss_coef\": -1}", "router_aux_loss_coef"},
        {"{\"model_type\": \"qwen3_moe\", \"norm_topk_prob\": 1}", "norm_topk_prob must be true or false"},
        {"{\"model_type\": \"qwen3_moe\", \"num_hidden_layers\": 2, \"mlp_only_layers\": [2]}", "mlp_only_layers"},
        {"{\"model_type\": \"qwen3_moe\", \"shared_expert_intermediate_size\": 64}", "unknown field shared_expert"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        averis_status st = model_config_from_json(bad[i].json, strlen(bad[i].json), "my.json", &c);
        CHECK(st != AVERIS_OK && strstr(averis_last_error(), bad[i].want) && strstr(averis_last_error(), "my.json"),
              "config %s: got '%s', want '%s'", bad[i].json, averis_last_error(), bad[i].want);
    }
    const char *f4 = "{\"model_type\": \"qwen3_moe\", \"num_experts\": 4, \"num_experts_per_tok\": 1,"
                     "\"moe_intermediate_size\": 40}";
    CHECK(!model_config_from_json(f4, strlen(f4), "f.json", &c) && model_config_check_fp4(&c, "f.json") &&
              strstr(averis_last_error(), "moe_intermediate_size = 40"),
          "fp4 width of the experts: %s", averis_last_error());
    /* num_experts 0: every layer dense, as in transformers */
    const char *z = "{\"model_type\": \"qwen3_moe\", \"num_experts\": 0, \"num_hidden_layers\": 2}";
    CHECK(!model_config_from_json(z, strlen(z), "z.json", &c) && !model_layer_is_moe(&c, 0) && !model_layer_is_moe(&c, 1),
          "num_experts 0: %s", averis_last_error());
    /* presets */
    CHECK(!model_config_load("moe-tiny", &c) && c.num_experts == 8 && model_layer_is_moe(&c, 0), "moe-tiny");
    CHECK(!model_config_load("moe-small", &c) && c.num_experts == 32 && !model_config_check_fp4(&c, "moe-small"),
          "moe-small");
    CHECK(!model_config_load("qwen3-moe-7b-a1.5b", &c) && !model_config_check_fp4(&c, "7b"), "7B-A1.5B preset");
    np = model_config_nparams(&c);
    int64_t active = np - (int64_t)c.num_hidden_layers * (moe_layer_nparams(&c) - moe_layer_active_nparams(&c));
    printf("      qwen3-moe-7b-a1.5b: %.2fB parameters, %.2fB active per token\n", np / 1e9, active / 1e9);
    CHECK(np > 6900000000LL && np < 7500000000LL && active > 1400000000LL && active < 1700000000LL,
          "7B-A1.5B: %lld parameters, %lld active", (long long)np, (long long)active);
    /* config.json round trip */
    char path[64];
    snprintf(path, sizeof path, "/tmp/averis_moe_cfg_%d.json", (int)getpid());
    CHECK(!model_config_from_json(j, strlen(j), "m.json", &c), "%s", averis_last_error());
    model_config back;
    CHECK(!model_config_write_hf(&c, path) && !model_config_load(path, &back), "%s", averis_last_error());
    CHECK(!memcmp(&c, &back, sizeof c), "config.json round trip changes the config");
    unlink(path);
}

/* Training: a tiny MoE under the five recipes through the trainer (finite,
 * falling loss), and 6 steps straight = 3 + resume + 3, bit for bit, with
 * the analysis rows covering the experts. */
void test_moe_train_resume(void) {
    char dir[64];
    if (test_mkdtemp(dir, sizeof dir, "moe", 0)) return;
    test_write_text(dir, "model.json",
                    "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 32,"
                    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8,"
                    " \"max_position_embeddings\": 64, \"tie_word_embeddings\": true, \"num_experts\": 4,"
                    " \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 32, \"norm_topk_prob\": true,"
                    " \"output_router_logits\": true, \"router_aux_loss_coef\": 0.01}\n");
    uint16_t tok[6000];
    test_markov_tokens(tok, 6000, 7);
    test_write_split(dir, "data", tok, 5000, 1000);
    char data[256], cfg[256], out[300];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(cfg, sizeof cfg, "%s/model.json", dir);
    train_opts o;
    const char *recipes[] = {"bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    printf("     ");
    for (int r = 0; r < 5; r++) {
        train_opts_default(&o);
        snprintf(out, sizeof out, "%s/%s", dir, recipes[r]);
        o.config = cfg, o.data_dir = data, o.out_dir = out, o.recipe = recipes[r];
        o.steps = 12, o.batch = 2, o.seq = 32, o.warmup = 2, o.lr = 1e-2, o.val_every = 0, o.quiet = 1;
        train_result res;
        CHECK(!train_run(&o, &res), "%s: %s", recipes[r], averis_last_error());
        float a = (res.losses[0] + res.losses[1]) / 2, b = (res.losses[10] + res.losses[11]) / 2;
        CHECK(isfinite(a) && isfinite(b) && b < a - 0.2f && res.skipped == 0, "%s: loss %.4f → %.4f (%d skipped)",
              recipes[r], a, b, res.skipped);
        printf(" %s %.3f→%.3f", recipes[r], a, b);
        train_result_free(&res);
    }
    printf("\n");
    /* resume */
    train_result ra, rb1, rb2;
    char outa[300], outb[300], pa[400], pb[400];
    for (int run = 0; run < 3; run++) {
        train_opts_default(&o);
        snprintf(outa, sizeof outa, "%s/ra", dir);
        snprintf(outb, sizeof outb, "%s/rb", dir);
        o.config = cfg, o.data_dir = data, o.out_dir = run ? outb : outa, o.recipe = "averis-rht";
        o.steps = 6, o.batch = 2, o.seq = 32, o.accum = 2, o.warmup = 2, o.val_every = 3, o.val_batches = 2;
        o.analyze_every = 3, o.quiet = 1;
        o.stop_after = run == 1 ? 3 : 0;
        o.resume = run == 2;
        CHECK(!train_run(&o, run == 0 ? &ra : run == 1 ? &rb1 : &rb2), "resume run %d: %s", run, averis_last_error());
    }
    for (int i = 0; i < 6; i++) {
        float lb = i < 3 ? rb1.losses[i] : rb2.losses[i];
        CHECK(!memcmp(&ra.losses[i], &lb, sizeof lb), "step %d: loss %.9g straight vs %.9g resumed", i + 1,
              ra.losses[i], lb);
    }
    const char *files[] = {"ckpt_00000006/model.safetensors", "ckpt_00000006/state.bin", "analysis.csv"};
    for (int i = 0; i < 3; i++) {
        snprintf(pa, sizeof pa, "%s/%s", outa, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", outb, files[i]);
        CHECK(test_same_file(pa, pb), "%s differs between the straight and the resumed run", files[i]);
    }
    /* the analysis covers the experts' inputs and output gradients */
    snprintf(pa, sizeof pa, "%s/analysis.csv", outa);
    FILE *f = fopen(pa, "r");
    int in = 0, grad = 0;
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        in += strstr(line, ",expert") != NULL && strstr(line, "_in,") != NULL;
        grad += strstr(line, ",grad_expert") != NULL;
    }
    if (f) fclose(f);
    CHECK(in > 0 && grad > 0, "analysis.csv: %d expert input rows, %d expert gradient rows", in, grad);
    /* the checkpoint's config.json is a Qwen3-MoE one, its weights carry HF names */
    snprintf(pa, sizeof pa, "%s/ckpt_00000006/config.json", outa);
    model_config back;
    CHECK(!model_config_load(pa, &back) && back.num_experts == 4 && back.norm_topk_prob, "%s", averis_last_error());
    snprintf(pa, sizeof pa, "%s/ckpt_00000006/model.safetensors", outa);
    st_file sf;
    CHECK(!st_read(pa, &sf) && st_find(&sf, "model.layers.1.mlp.experts.3.down_proj.weight") &&
              st_find(&sf, "model.layers.0.mlp.gate.weight"),
          "checkpoint tensor names");
    st_free(&sf);
    train_result_free(&ra);
    train_result_free(&rb1);
    train_result_free(&rb2);
    test_rm_tree(dir);
}
