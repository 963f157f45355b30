/* model.c — the Qwen3 decoder, forward and backward, in fp32.
 *
 * Shapes: B sequences × T positions, N = B·T tokens; C width, F FFN width,
 * H query heads and KV key/value heads of Dh, V vocabulary.
 *
 *   x      = E[tokens]                                        [N,C]
 *   block (×L):
 *     h1   = RMSNorm(x)·w_in                                  [N,C]
 *     q    = RoPE(RMSNorm_Dh(h1·Wqᵀ)·w_qn)                    [N,H,Dh]
 *     k    = RoPE(RMSNorm_Dh(h1·Wkᵀ)·w_kn)   v = h1·Wvᵀ        [N,KV,Dh]
 *     ao_h = softmax(q_h·k_gᵀ/√Dh + causal)·v_g,  g = h/(H/KV)
 *     x    = x + ao·Woᵀ
 *     h2   = RMSNorm(x)·w_post
 *     x    = x + (silu(h2·Wgᵀ) ⊙ h2·Wuᵀ)·Wdᵀ
 *   logits = (RMSNorm(x)·w_f)·W_headᵀ                          [N,V]
 *   loss   = mean_t −log softmax(logits_t)[target_t]
 *
 * Every ·Wᵀ of a block is qlin_forward under the run's recipe (the backward
 * is qlin_backward); the rest is fp32. RMSNorm(x) = x·(mean(x²)+ε)^-½, the
 * rotary pairs (i, i+Dh/2) rotate by pos·θ^(−2i/Dh), as in transformers.
 * Reductions run in a fixed order, so the bits do not depend on threads.
 */
#include "averis/model.h"
#include "averis/moe.h"
#include "averis/model_spec.h"
#include "averis/gemm.h"
#include "averis/io.h"
#include "averis/json.h"
#include "averis/safetensors.h"
#include "averis/status.h"
#include "model_math.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ configs */
#define NO_MOE 0, 0, 0, 0, 0, 0, 0.0, {0} /* a dense Qwen3 */
static const struct {
    const char *name;
    model_config c;
} k_presets[] = {
    /* ~1.3M parameters: trains in minutes on two cores */
    {"tiny", {4096, 128, 384, 4, 4, 2, 32, 1024, 1, 1000000.0, 1e-6, NO_MOE}},
    /* ~27M parameters: the larger CPU benchmark shape */
    {"small", {4096, 512, 1536, 8, 8, 4, 64, 2048, 1, 1000000.0, 1e-6, NO_MOE}},
    /* ~34M parameters (25M in the blocks, vocab 16384, tied head): the recipe
     * sweep's model (experiments/fidelity, docs/sweep.md) */
    {"qwen3-30m", {16384, 512, 1536, 8, 8, 4, 64, 2048, 1, 1000000.0, 1e-6, NO_MOE}},
    /* ~88M parameters (76M in the blocks): the GPU planning shape of TARGETS.md */
    {"qwen3-90m", {16384, 768, 2048, 12, 12, 4, 64, 2048, 1, 1000000.0, 1e-6, NO_MOE}},
    /* Qwen3-0.6B (the paper's dense model) */
    {"qwen3-0.6b", {151936, 1024, 3072, 28, 16, 8, 128, 40960, 1, 1000000.0, 1e-6, NO_MOE}},
    /* Qwen3-MoE (E experts of width I, top-k, normalised weights, aux loss on):
     * the tests' shape (8 experts, top-2) */
    {"moe-tiny", {4096, 128, 384, 4, 4, 2, 32, 1024, 1, 1000000.0, 1e-6, 8, 2, 64, 1, 1, 1, 0.001, {0}}},
    /* experiments: small's attention, 32 experts of 384, top-4 (small's 1536 active) */
    {"moe-small", {4096, 512, 1536, 8, 8, 4, 64, 2048, 1, 1000000.0, 1e-6, 32, 4, 384, 1, 1, 1, 0.001, {0}}},
    /* the paper's 7B-A1.5B shape (our choice of a Qwen3-MoE with 7.2B
     * parameters, 1.6B active: Qwen3-30B-A3B's design at 16 layers, 64 experts) */
    {"qwen3-moe-7b-a1.5b", {151936, 2048, 5632, 16, 16, 4, 128, 32768, 0, 1000000.0, 1e-6, 64, 8, 1024, 1, 1, 1, 0.001, {0}}},
};
#define NPRESETS (int)(sizeof k_presets / sizeof k_presets[0])

const char *model_preset_names(void) { return "tiny, small, qwen3-30m, qwen3-90m, qwen3-0.6b, moe-tiny, moe-small, qwen3-moe-7b-a1.5b"; }

averis_status model_config_validate(const model_config *c, const char *what) {
    const struct { const char *field; int v; int max; } f[] = {
        {"vocab_size", c->vocab_size, 1 << 24},
        {"hidden_size", c->hidden_size, 1 << 16},
        {"intermediate_size", c->intermediate_size, 1 << 18},
        {"num_hidden_layers", c->num_hidden_layers, 1024},
        {"num_attention_heads", c->num_attention_heads, 1024},
        {"num_key_value_heads", c->num_key_value_heads, 1024},
        {"head_dim", c->head_dim, 4096},
        {"max_position_embeddings", c->max_position_embeddings, 1 << 20},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < 1 || f[i].v > f[i].max)
            return averis_fail(AVERIS_EINVAL, "%s: %s = %d is out of range (1..%d)", what, f[i].field, f[i].v,
                               f[i].max);
    if (c->num_attention_heads % c->num_key_value_heads)
        return averis_fail(AVERIS_EINVAL, "%s: num_key_value_heads = %d does not divide num_attention_heads = %d",
                           what, c->num_key_value_heads, c->num_attention_heads);
    if (c->head_dim % 2)
        return averis_fail(AVERIS_EINVAL, "%s: head_dim = %d must be even (rotary pairs)", what, c->head_dim);
    if (!(c->rope_theta > 1.0) || !isfinite(c->rope_theta))
        return averis_fail(AVERIS_EINVAL, "%s: rope_theta = %g must be > 1", what, c->rope_theta);
    if (!(c->rms_norm_eps > 0.0) || c->rms_norm_eps > 1.0)
        return averis_fail(AVERIS_EINVAL, "%s: rms_norm_eps = %g must be in (0, 1]", what, c->rms_norm_eps);
    return c->num_experts ? moe_config_validate(c, what) : AVERIS_OK;
}

static averis_status get_int(const json *o, const char *what, const char *key, int *v, int *present) {
    const json *j = json_get(o, key);
    if (present) *present = j != NULL;
    if (!j) return AVERIS_OK;
    if (j->type != JSON_NUM || j->num != floor(j->num) || fabs(j->num) > 2e9)
        return averis_fail(AVERIS_EINVAL, "%s: field %s must be an integer", what, key);
    *v = (int)j->num;
    return AVERIS_OK;
}

/* Hugging Face Qwen3Config's defaults (transformers configuration_qwen3.py,
 * checked against its source): what a config.json field that is absent
 * means. head_dim is a Qwen3Config field with default 128, so an absent
 * head_dim is 128 whatever hidden_size / num_attention_heads is (Qwen3Attention
 * reads config.head_dim); num_key_value_heads: null is num_attention_heads. */
static const model_config k_hf_defaults = {151936, 4096, 22016, 32, 32, 32, 128, 32768, 0, 10000.0, 1e-6, NO_MOE};
/* Qwen3MoeConfig's (configuration_qwen3_moe.py), for model_type qwen3_moe. */
static const model_config k_hf_moe_defaults = {151936, 2048, 6144, 24, 32, 4, 64, 32768, 0, 10000.0, 1e-6,
                                               128, 8, 768, 1, 0, 0, 0.001, {0}};

/* A JSON value in a few words, for errors. */
static void json_describe(const json *v, char *buf, size_t cap) {
    switch (v->type) {
    case JSON_STR: { char t[64]; snprintf(buf, cap, "\"%s\"", json_printable(v->str, t, sizeof t)); break; }
    case JSON_NUM: snprintf(buf, cap, "%g", v->num); break;
    case JSON_BOOL: snprintf(buf, cap, "%s", v->num ? "true" : "false"); break;
    case JSON_NULL: snprintf(buf, cap, "null"); break;
    case JSON_ARR:
        if (v->n >= 1 && v->items[0].type == JSON_STR) {
            char t[64];
            snprintf(buf, cap, "[\"%s\"%s]", json_printable(v->items[0].str, t, sizeof t), v->n > 1 ? ", ..." : "");
        }
        else snprintf(buf, cap, "an array");
        break;
    default: snprintf(buf, cap, "an object"); break;
    }
}
static int json_is_str(const json *v, const char *s) { return v->type == JSON_STR && !strcmp(v->str, s); }

/* A Qwen3-MoE config: model_type "qwen3_moe" or architectures
 * ["Qwen3MoeForCausalLM"] (the two must agree when both are given). */
static int config_is_moe(const json *root) {
    const json *mt = json_get(root, "model_type"), *ar = json_get(root, "architectures");
    return (mt && json_is_str(mt, "qwen3_moe")) ||
           (!mt && ar && ar->type == JSON_ARR && ar->n == 1 && json_is_str(&ar->items[0], "Qwen3MoeForCausalLM"));
}

/* Every field of a config.json is one averis reads, one that does not shape
 * the model (metadata), or one whose value must be the one averis implements;
 * anything else (a Qwen3-MoE field in a dense config, a typo) is refused by name. */
static averis_status config_check_fields(const json *root, const char *what, int is_moe) {
    static const char *const shaping[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "num_key_value_heads", "head_dim",
                                          "max_position_embeddings", "tie_word_embeddings", "rope_theta",
                                          "rms_norm_eps", "rope_parameters"};
    static const char *const metadata[] = {"bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype",
                                           "transformers_version", "_name_or_path", "initializer_range", "use_cache",
                                           "sliding_window", "max_window_layers"};
    static const char *const moe[] = {"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                                      "decoder_sparse_step", "norm_topk_prob", "output_router_logits",
                                      "router_aux_loss_coef", "mlp_only_layers"};
    for (int i = 0; i < root->n; i++) {
        const char *k = root->keys[i];
        const json *v = &root->items[i];
        int known = 0;
        for (size_t j = 0; j < sizeof shaping / sizeof *shaping && !known; j++) known = !strcmp(k, shaping[j]);
        for (size_t j = 0; j < sizeof metadata / sizeof *metadata && !known; j++) known = !strcmp(k, metadata[j]);
        if (known) continue;
        for (size_t j = 0; j < sizeof moe / sizeof *moe && !known; j++) known = !strcmp(k, moe[j]);
        if (known && !is_moe)
            return averis_fail(AVERIS_EUNSUPPORTED,
                               "%s: field %s: a mixture-of-experts field in a dense config (set \"model_type\": "
                               "\"qwen3_moe\" for Qwen3-MoE)", what, k);
        if (known) continue;
        int ok;
        if (!strcmp(k, "architectures"))
            ok = v->type == JSON_ARR && v->n == 1 &&
                 json_is_str(&v->items[0], is_moe ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM");
        else if (!strcmp(k, "model_type")) ok = json_is_str(v, is_moe ? "qwen3_moe" : "qwen3");
        else if (!strcmp(k, "hidden_act")) ok = json_is_str(v, "silu");
        else if (!strcmp(k, "attention_bias") || !strcmp(k, "use_sliding_window")) ok = v->type == JSON_BOOL && !v->num;
        else if (!strcmp(k, "attention_dropout")) ok = v->type == JSON_NUM && v->num == 0;
        else if (!strcmp(k, "rope_scaling")) ok = v->type == JSON_NULL;
        else if (!strcmp(k, "layer_types")) {
            ok = v->type == JSON_ARR;
            for (int j = 0; ok && j < v->n; j++) ok = json_is_str(&v->items[j], "full_attention");
        } else {
            char t[64];
            return averis_fail(AVERIS_EUNSUPPORTED, "%s: unknown field %s (not a Qwen3Config field averis implements)",
                               what, json_printable(k, t, sizeof t));
        }
        if (!ok) {
            char d[128];
            json_describe(v, d, sizeof d);
            return averis_fail(AVERIS_EUNSUPPORTED, "%s: field %s = %s is not implemented (averis trains %s)",
                               what, k, d, is_moe ? "Qwen3MoeForCausalLM" : "dense Qwen3ForCausalLM");
        }
    }
    const json *rp = json_get(root, "rope_parameters"), *rt = json_get(rp, "rope_type");
    if (rp && (rp->type != JSON_OBJ || (rt && !json_is_str(rt, "default"))))
        return averis_fail(AVERIS_EUNSUPPORTED, "%s: field rope_parameters: only rope_type \"default\" is implemented", what);
    return AVERIS_OK;
}

/* Qwen3MoeConfig's fields (absent: its defaults, already in c). */
static averis_status config_moe_fields(const json *root, const char *what, model_config *c) {
    static const char *const keys[] = {"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                                       "decoder_sparse_step"};
    int *dst[] = {&c->num_experts, &c->num_experts_per_tok, &c->moe_intermediate_size, &c->decoder_sparse_step};
    averis_status st = AVERIS_OK;
    for (int i = 0; i < 4 && !st; i++) st = get_int(root, what, keys[i], dst[i], NULL);
    static const char *const bools[] = {"norm_topk_prob", "output_router_logits"};
    int *bdst[] = {&c->norm_topk_prob, &c->output_router_logits};
    const json *j;
    for (int i = 0; i < 2 && !st; i++)
        if ((j = json_get(root, bools[i]))) {
            if (j->type != JSON_BOOL) st = averis_fail(AVERIS_EINVAL, "%s: field %s must be true or false", what, bools[i]);
            else *bdst[i] = (int)j->num;
        }
    if (!st && (j = json_get(root, "router_aux_loss_coef"))) {
        if (j->type != JSON_NUM) st = averis_fail(AVERIS_EINVAL, "%s: field router_aux_loss_coef must be a number", what);
        else c->router_aux_loss_coef = j->num;
    }
    memset(c->mlp_only_layers, 0, sizeof c->mlp_only_layers);
    if (!st && (j = json_get(root, "mlp_only_layers")) && j->type != JSON_NULL) {
        if (j->type != JSON_ARR) return averis_fail(AVERIS_EINVAL, "%s: field mlp_only_layers must be a list of layer indices", what);
        for (int i = 0; i < j->n; i++) {
            const json *v = &j->items[i];
            if (v->type != JSON_NUM || v->num != floor(v->num) || v->num < 0 || v->num >= c->num_hidden_layers ||
                v->num >= 1024)
                return averis_fail(AVERIS_EINVAL, "%s: field mlp_only_layers: entry %d is not a layer index (0..%d)",
                                   what, i, c->num_hidden_layers - 1);
            int l = (int)v->num;
            c->mlp_only_layers[l >> 6] |= 1ull << (l & 63);
        }
    }
    return st;
}

averis_status model_config_from_json(const char *text, size_t len, const char *what, model_config *c) {
    json root;
    averis_status st = json_parse(text, len, what, &root);
    if (st) return st;
    if (root.type != JSON_OBJ) {
        json_free(&root);
        return averis_fail(AVERIS_EINVAL, "%s: expected a JSON object", what);
    }
    int is_moe = config_is_moe(&root);
    *c = is_moe ? k_hf_moe_defaults : k_hf_defaults;
    st = config_check_fields(&root, what, is_moe);
    static const char *const keys[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads", "head_dim",
                                       "max_position_embeddings"};
    int *dst[] = {&c->vocab_size, &c->hidden_size, &c->intermediate_size, &c->num_hidden_layers,
                  &c->num_attention_heads, &c->num_key_value_heads, &c->head_dim, &c->max_position_embeddings};
    int present[8] = {0};
    const json *kv = json_get(&root, "num_key_value_heads");
    int kv_null = kv && kv->type == JSON_NULL; /* Qwen3Config: None → num_attention_heads */
    for (int i = 0; i < 8 && !st; i++)
        if (!(i == 5 && kv_null)) st = get_int(&root, what, keys[i], dst[i], &present[i]);
    if (!st && kv_null) c->num_key_value_heads = c->num_attention_heads;
    /* Qwen3-MoE's attention falls back to hidden_size / num_attention_heads */
    if (!st && is_moe && !present[6] && c->num_attention_heads > 0) c->head_dim = c->hidden_size / c->num_attention_heads;
    const json *j;
    if (!st && (j = json_get(&root, "tie_word_embeddings"))) {
        if (j->type != JSON_BOOL) st = averis_fail(AVERIS_EINVAL, "%s: field tie_word_embeddings must be true or false", what);
        else c->tie_word_embeddings = (int)j->num;
    }
    const json *rp = json_get(&root, "rope_parameters"); /* transformers ≥ 5 nests it */
    if (!st && ((j = json_get(&root, "rope_theta")) || (j = json_get(rp, "rope_theta")))) {
        if (j->type != JSON_NUM) st = averis_fail(AVERIS_EINVAL, "%s: field rope_theta must be a number", what);
        else c->rope_theta = j->num;
    }
    if (!st && (j = json_get(&root, "rms_norm_eps"))) {
        if (j->type != JSON_NUM) st = averis_fail(AVERIS_EINVAL, "%s: field rms_norm_eps must be a number", what);
        else c->rms_norm_eps = j->num;
    }
    if (!st && is_moe) st = config_moe_fields(&root, what, c);
    json_free(&root);
    return st ? st : model_config_validate(c, what);
}

averis_status model_config_check_fp4(const model_config *c, const char *what) {
    const struct { const char *field; int64_t v; } f[] = {
        {"hidden_size", c->hidden_size},
        {"intermediate_size", c->intermediate_size},
        {"num_attention_heads × head_dim", (int64_t)c->num_attention_heads * c->head_dim},
        {"num_key_value_heads × head_dim", (int64_t)c->num_key_value_heads * c->head_dim},
        {"moe_intermediate_size", c->num_experts ? c->moe_intermediate_size : 0},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v % 16)
            return averis_fail(AVERIS_EINVAL, "%s: %s = %lld is not a multiple of 16 (NVFP4 blocks of 16; use a bf16 or fp32 recipe)",
                               what, f[i].field, (long long)f[i].v);
    return AVERIS_OK;
}

averis_status model_config_load(const char *name_or_path, model_config *c) {
    for (int i = 0; i < NPRESETS; i++)
        if (!strcmp(name_or_path, k_presets[i].name)) {
            *c = k_presets[i].c;
            return AVERIS_OK;
        }
    char *buf;
    size_t len;
    if (averis_read_file(name_or_path, &buf, &len))
        return averis_fail(AVERIS_EIO, "config '%s': not a preset (%s) and not a readable file", name_or_path,
                           model_preset_names());
    averis_status st = len > (16u << 20) ? averis_fail(AVERIS_EFORMAT, "%s: too large for a config", name_or_path)
                                         : model_config_from_json(buf, len, name_or_path, c);
    free(buf);
    return st;
}

averis_status model_config_write_hf(const model_config *c, const char *path) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    int moe = c->num_experts > 0;
    fprintf(af.f,
            "{\n"
            "  \"architectures\": [\"%s\"],\n"
            "  \"model_type\": \"%s\",\n"
            "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
            "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n"
            "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n  \"tie_word_embeddings\": %s,\n"
            "  \"rope_theta\": %.17g,\n  \"rope_scaling\": null,\n  \"rms_norm_eps\": %.17g,\n"
            "  \"hidden_act\": \"silu\",\n  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n"
            "  \"initializer_range\": 0.02,\n  \"use_cache\": true,\n  \"use_sliding_window\": false,\n"
            "  \"torch_dtype\": \"float32\"%s\n",
            moe ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM", moe ? "qwen3_moe" : "qwen3", c->vocab_size, c->hidden_size, c->intermediate_size, c->num_hidden_layers, c->num_attention_heads,
            c->num_key_value_heads, c->head_dim, c->max_position_embeddings,
            c->tie_word_embeddings ? "true" : "false", c->rope_theta, c->rms_norm_eps, moe ? "," : "");
    if (moe) {
        fprintf(af.f,
                "  \"num_experts\": %d,\n  \"num_experts_per_tok\": %d,\n  \"moe_intermediate_size\": %d,\n"
                "  \"decoder_sparse_step\": %d,\n  \"norm_topk_prob\": %s,\n  \"output_router_logits\": %s,\n"
                "  \"router_aux_loss_coef\": %.17g,\n  \"mlp_only_layers\": [",
                c->num_experts, c->num_experts_per_tok, c->moe_intermediate_size, c->decoder_sparse_step,
                c->norm_topk_prob ? "true" : "false", c->output_router_logits ? "true" : "false",
                c->router_aux_loss_coef);
        for (int l = 0, n = 0; l < c->num_hidden_layers && l < 1024; l++)
            if (c->mlp_only_layers[l >> 6] >> (l & 63) & 1) fprintf(af.f, "%s%d", n++ ? ", " : "", l);
        fprintf(af.f, "]\n");
    }
    fprintf(af.f, "}\n");
    return averis_afile_commit(&af);
}

int64_t model_config_nparams(const model_config *c) {
    int64_t C = c->hidden_size, F = c->intermediate_size, Dh = c->head_dim;
    int64_t qd = (int64_t)c->num_attention_heads * Dh, kvd = (int64_t)c->num_key_value_heads * Dh;
    int64_t block = C + qd * C + 2 * kvd * C + C * qd + 2 * Dh + C, ffn = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) ffn += model_layer_is_moe(c, l) ? moe_layer_nparams(c) : 3 * F * C;
    return (int64_t)c->vocab_size * C * (c->tie_word_embeddings ? 1 : 2) + c->num_hidden_layers * block + ffn + C;
}

/* ------------------------------------------------------------ parameters */
static void add_tensor(model *m, const char *name, int ndim, int64_t d0, int64_t d1, size_t *off) {
    model_tensor *t = &m->tensors[m->ntensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->numel = (size_t)(d0 * t->shape[1]);
    t->offset = *off;
    t->decay = ndim == 2;
    *off += t->numel;
}

/* Points w at the tensors of buffer base, in the order add_tensor made them. */
static averis_status bind_weights(model *m, float *base, model_weights *w) {
    int L = m->cfg.num_hidden_layers, i = 0;
    if (!w->blocks && !(w->blocks = calloc((size_t)L, sizeof *w->blocks)))
        return averis_fail(AVERIS_ENOMEM, "model: out of memory");
    w->embed = base + m->tensors[i++].offset;
    for (int l = 0; l < L; l++) {
        model_block *b = &w->blocks[l];
        float **p[] = {&b->in_norm, &b->wq, &b->wk, &b->wv, &b->wo, &b->q_norm, &b->k_norm,
                       &b->post_norm, &b->wg, &b->wu, &b->wd};
        if (model_layer_is_moe(&m->cfg, l)) { /* router, then each family's E experts back to back */
            int E = m->cfg.num_experts;
            for (int k = 0; k < 8; k++) *p[k] = base + m->tensors[i++].offset;
            b->router = base + m->tensors[i++].offset;
            b->eg = base + m->tensors[i].offset;
            b->eu = base + m->tensors[i + E].offset;
            b->ed = base + m->tensors[i + 2 * E].offset;
            i += 3 * E;
            continue;
        }
        for (int k = 0; k < 11; k++) *p[k] = base + m->tensors[i++].offset;
    }
    w->final_norm = base + m->tensors[i++].offset;
    w->lm_head = m->cfg.tie_word_embeddings ? w->embed : base + m->tensors[i++].offset;
    return AVERIS_OK;
}

averis_status model_create(model *m, const model_config *cfg) {
    memset(m, 0, sizeof *m);
    averis_status st = model_config_validate(cfg, "config");
    if (st) return st;
    m->cfg = *cfg;
    int L = cfg->num_hidden_layers;
    int64_t C = cfg->hidden_size, F = cfg->intermediate_size, Dh = cfg->head_dim;
    int64_t qd = cfg->num_attention_heads * Dh, kvd = cfg->num_key_value_heads * Dh;
    int64_t E = cfg->num_experts, I = cfg->moe_intermediate_size;
    m->tensors = calloc((size_t)((11 + 3 * E) * L + 3), sizeof *m->tensors);
    if (!m->tensors) return averis_fail(AVERIS_ENOMEM, "model: out of memory");
    size_t off = 0;
    char nm[96];
    add_tensor(m, "model.embed_tokens.weight", 2, cfg->vocab_size, C, &off);
    for (int l = 0; l < L; l++) {
        const struct { const char *s; int nd; int64_t d0, d1; } t[11] = {
            {"input_layernorm", 1, C, 0},      {"self_attn.q_proj", 2, qd, C}, {"self_attn.k_proj", 2, kvd, C},
            {"self_attn.v_proj", 2, kvd, C},   {"self_attn.o_proj", 2, C, qd}, {"self_attn.q_norm", 1, Dh, 0},
            {"self_attn.k_norm", 1, Dh, 0},    {"post_attention_layernorm", 1, C, 0},
            {"mlp.gate_proj", 2, F, C},        {"mlp.up_proj", 2, F, C},       {"mlp.down_proj", 2, C, F}};
        int moe = model_layer_is_moe(cfg, l);
        for (int k = 0; k < (moe ? 8 : 11); k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, t[k].s);
            add_tensor(m, nm, t[k].nd, t[k].d0, t[k].d1, &off);
        }
        if (!moe) continue;
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate.weight", l);
        add_tensor(m, nm, 2, E, C, &off);
        static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3; k++)
            for (int e = 0; e < E; e++) {
                snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.%d.%s.weight", l, e, proj[k]);
                add_tensor(m, nm, 2, k < 2 ? I : C, k < 2 ? C : I, &off);
            }
    }
    add_tensor(m, "model.norm.weight", 1, C, 0, &off);
    if (!cfg->tie_word_embeddings) add_tensor(m, "lm_head.weight", 2, cfg->vocab_size, C, &off);
    m->nparams = off;
    if (!(m->params = calloc(off, sizeof(float)))) {
        model_free(m);
        return averis_fail(AVERIS_ENOMEM, "model: cannot allocate %zu parameters", off);
    }
    st = bind_weights(m, m->params, &m->w);
    if (st) { model_free(m); return st; }
    qlin_recipe_parse("bf16", &m->bf16_recipe);
    m->recipe = m->bf16_recipe;
    return AVERIS_OK;
}

void model_free(model *m) {
    free(m->tensors);
    free(m->params);
    free(m->grads);
    free(m->w.blocks);
    free(m->g.blocks);
    free(m->act_mem);
    free(m->acts);
    free(m->scratch);
    free(m->tokens);
    free(m->rope_cos);
    free(m->rope_sin);
    moe_free(m);
    qlin_ws_free(&m->ws);
    memset(m, 0, sizeof *m);
}

/* where layer l's parameters begin in the flat vector (l = L: the final norm's) */
static size_t layer_start(const model *m, int l) {
    const float *p = l < m->cfg.num_hidden_layers ? m->w.blocks[l].in_norm : m->w.final_norm;
    return (size_t)(p - m->params);
}

int model_grad_segment(const model *m, int k, size_t *lo, size_t *hi) {
    int L = m->cfg.num_hidden_layers;
    if (k < 0 || k > L + 1) return 0;
    *lo = k == L + 1 ? 0 : layer_start(m, L - k);
    *hi = k == 0 ? m->nparams : layer_start(m, L + 1 - k);
    return 1;
}

const model_tensor *model_find_tensor(const model *m, const char *name) {
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void model_init_weights(model *m, uint64_t seed) {
    for (int i = 0; i < m->ntensors; i++) {
        const model_tensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        if (t->ndim == 1) {
            for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f;
            continue;
        }
        uint64_t s = seed * 0x100000001B3ull + (uint64_t)i; /* one stream per tensor */
        for (size_t k = 0; k < t->numel; k += 2) {           /* Box–Muller pairs */
            double u1 = ((double)(splitmix64(&s) >> 11) + 0.5) * 0x1p-53;
            double u2 = (double)(splitmix64(&s) >> 11) * 0x1p-53;
            double r = sqrt(-2.0 * log(u1)) * 0.02;
            p[k] = (float)(r * cos(6.283185307179586 * u2));
            if (k + 1 < t->numel) p[k + 1] = (float)(r * sin(6.283185307179586 * u2));
        }
    }
}

void model_rope_tables(const model_config *c, int T, float *cs, float *sn) {
    size_t half = (size_t)c->head_dim / 2;
    for (size_t i = 0; i < half; i++) {
        float inv = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim));
        for (int t = 0; t < T; t++) {
            float ang = (float)t * inv;
            cs[(size_t)t * half + i] = (float)cos((double)ang);
            sn[(size_t)t * half + i] = (float)sin((double)ang);
        }
    }
}

averis_status model_check_ids(const model_config *c, const int *ids, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return averis_fail(AVERIS_EINVAL, "%s %d at position %lld is outside the vocabulary (0..%d)", what, ids[i],
                               (long long)i, c->vocab_size - 1);
    return AVERIS_OK;
}

/* ------------------------------------------------------------ activations */
static averis_status ensure_acts(model *m, int B, int T) {
    const model_config *c = &m->cfg;
    averis_status st;
    if (T > c->max_position_embeddings)
        return averis_fail(AVERIS_EINVAL, "sequence length %d exceeds max_position_embeddings %d", T,
                           c->max_position_embeddings);
    size_t N = (size_t)B * T, C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t H = (size_t)c->num_attention_heads, KV = (size_t)c->num_key_value_heads, Dh = (size_t)c->head_dim;
    size_t per_block = N * (4 * C + 2 + 2 * H * Dh + 3 * KV * Dh + H + KV + H * Dh + 3 * F + 1) + (size_t)B * H * T * T;
    size_t need = (size_t)c->num_hidden_layers * per_block + N * (2 * C + 2) + N * (size_t)c->vocab_size;
    for (int l = 0; l < c->num_hidden_layers; l++) need -= model_layer_is_moe(c, l) ? 3 * N * F : 0; /* in moe.c */
    if (model_grow(&m->act_mem, &m->act_cap, need))
        return averis_fail(AVERIS_ENOMEM, "model: cannot allocate %zu MiB of activations for B=%d T=%d",
                           need * 4 >> 20, B, T);
    if (!m->acts && !(m->acts = calloc((size_t)c->num_hidden_layers, sizeof *m->acts)))
        return averis_fail(AVERIS_ENOMEM, "model: out of memory");
    float *p = m->act_mem;
#define TAKE(ptr, count) (ptr = p, p += (count))
    for (int l = 0; l < c->num_hidden_layers; l++) {
        model_block_acts *a = &m->acts[l];
        TAKE(a->x_in, N * C); TAKE(a->h1, N * C); TAKE(a->rstd1, N);
        TAKE(a->q_raw, N * H * Dh); TAKE(a->k_raw, N * KV * Dh); TAKE(a->v, N * KV * Dh);
        TAKE(a->rstd_q, N * H); TAKE(a->rstd_k, N * KV);
        TAKE(a->q, N * H * Dh); TAKE(a->k, N * KV * Dh);
        TAKE(a->att, (size_t)B * H * T * T); TAKE(a->ao, N * H * Dh);
        TAKE(a->x_mid, N * C); TAKE(a->h2, N * C); TAKE(a->rstd2, N);
        size_t nf = model_layer_is_moe(c, l) ? 0 : N * F;
        TAKE(a->g, nf); TAKE(a->u, nf); TAKE(a->a, nf);
    }
    TAKE(m->x_out, N * C); TAKE(m->hf, N * C); TAKE(m->rstd_f, N); TAKE(m->tok_loss, N); TAKE(m->probs, N * (size_t)c->vocab_size);
#undef TAKE
    if ((size_t)(2 * N) > m->tokens_cap) {
        free(m->tokens);
        if (!(m->tokens = malloc(2 * N * sizeof *m->tokens))) {
            m->tokens_cap = 0;
            return averis_fail(AVERIS_ENOMEM, "model: out of memory");
        }
        m->tokens_cap = 2 * N;
    }
    if (c->num_experts && (st = moe_ensure(m, (int64_t)N))) return st;
    m->B = B;
    m->T = T;
    if (m->rope_T < T) {
        size_t half = Dh / 2;
        float *cs = malloc((size_t)T * half * sizeof *cs), *sn = malloc((size_t)T * half * sizeof *sn);
        if (!cs || !sn) { free(cs); free(sn); return averis_fail(AVERIS_ENOMEM, "model: out of memory"); }
        model_rope_tables(c, T, cs, sn);
        free(m->rope_cos); free(m->rope_sin);
        m->rope_cos = cs; m->rope_sin = sn; m->rope_T = T;
    }
    return AVERIS_OK;
}

/* ------------------------------------------------------------ layers (fp32) */
/* y[n,d] = w[d]·(x[n,d]·rstd[n]), rstd = (mean_d x² + ε)^-½; rows of d. */
static void rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t rows, int64_t d, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float ss = 0.0f;
        for (int64_t i = 0; i < d; i++) ss += xr[i] * xr[i];
        float rs = 1.0f / sqrtf(ss / (float)d + eps);
        rstd[r] = rs;
        for (int64_t i = 0; i < d; i++) y[r * d + i] = w[i] * (xr[i] * rs);
    }
}

/* dx (+= if accumulate) and dw += for y = w·x̂, x̂ = x·rstd:
 * dx = rstd·(dy·w − x̂·mean(dy·w·x̂)), dw = Σ_rows dy·x̂. rows×d laid out
 * with rows at stride d; dw is summed per column in row order. */
static void rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *rstd, const float *w,
                        int64_t rows, int64_t d, int accumulate) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d, *dyr = dy + r * d;
        float rs = rstd[r], dot = 0.0f;
        for (int64_t i = 0; i < d; i++) dot += dyr[i] * w[i] * (xr[i] * rs);
        dot /= (float)d;
        for (int64_t i = 0; i < d; i++) {
            float v = rs * (dyr[i] * w[i] - (xr[i] * rs) * dot);
            dx[r * d + i] = accumulate ? dx[r * d + i] + v : v;
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < d; i++) {
        float s = 0.0f;
        for (int64_t r = 0; r < rows; r++) s += dy[r * d + i] * (x[r * d + i] * rstd[r]);
        dw[i] += s;
    }
}

/* Rotates the (i, i+Dh/2) pairs of every head of x [N, nh, Dh] in place by
 * the position t mod T; sign −1 applies the inverse (the backward). */
static void rope_apply(float *x, int64_t N, int nh, int Dh, int T, const float *cs, const float *sn, float sign) {
    int half = Dh / 2;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *c = cs + (n % T) * half, *s = sn + (n % T) * half;
        for (int h = 0; h < nh; h++) {
            float *v = x + (n * nh + h) * Dh;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half], si = sign * s[i];
                v[i] = a * c[i] - b * si;
                v[i + half] = b * c[i] + a * si;
            }
        }
    }
}

/* z[i] ← e^(z[i] − mx) for n values; returns their sum, added in order. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static float exp_shift_sum(float *z, int64_t n, float mx) {
    for (int64_t i = 0; i < n; i++) z[i] = exp_approx(z[i] - mx);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += z[i];
    return sum;
}

/* Causal grouped-query attention, per (sequence b, head h) with g = h/(H/KV):
 *   S = Q_bh·K_bgᵀ/√Dh (T×T, GEMM),  P = softmax over j ≤ t (causal),
 *   O_bh = P·V_bg (GEMM). Keeps P in att [B,H,T,T] (zeros above the diagonal).
 * Q, K, V are token-major [N, heads, Dh]: a head's T×Dh slice has row
 * stride heads·Dh. GEMMs called inside the parallel loop run serially. */
static void attention_fwd(float *ao, float *att, const float *q, const float *k, const float *v, int B, int T, int H,
                          int KV, int Dh) {
    float scale = 1.0f / sqrtf((float)Dh);
    int grp = H / KV;
    int64_t ldq = (int64_t)H * Dh, ldk = (int64_t)KV * Dh;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / grp;
            const float *Q = q + (int64_t)b * T * ldq + (int64_t)h * Dh, *K = k + (int64_t)b * T * ldk + (int64_t)g * Dh,
                        *Vv = v + (int64_t)b * T * ldk + (int64_t)g * Dh;
            float *P = att + ((int64_t)b * H + h) * T * T;
            averis_sgemm(0, 1, T, T, Dh, scale, Q, ldq, K, ldk, 0.0f, P, T);
            for (int t = 0; t < T; t++) {
                float *p = P + (int64_t)t * T, mx = -INFINITY, sum = 0.0f;
                for (int j = 0; j <= t; j++) mx = p[j] > mx ? p[j] : mx;
                sum = exp_shift_sum(p, t + 1, mx);
                float inv = 1.0f / sum;
                for (int j = 0; j <= t; j++) p[j] *= inv;
                for (int j = t + 1; j < T; j++) p[j] = 0.0f;
            }
            averis_sgemm(0, 0, T, Dh, T, 1.0f, P, T, Vv, ldk, 0.0f, ao + (int64_t)b * T * ldq + (int64_t)h * Dh, ldq);
        }
}

/* The backward of attention_fwd, per (b, h):
 *   dP = dO·Vᵀ,  dV += Pᵀ·dO,  dS = P⊙(dP − rowsum(P⊙dP))/√Dh,
 *   dQ = dS·K,   dK += dSᵀ·Q.
 * One task per (sequence, kv head) owns its dK and dV rows (and a T×T
 * slice of dP_all [B,KV,T,T]): no races. */
static void attention_bwd(float *dq, float *dk, float *dv, const float *dao, const float *att, const float *q,
                          const float *k, const float *v, int B, int T, int H, int KV, int Dh, float *dP_all) {
    float scale = 1.0f / sqrtf((float)Dh);
    int grp = H / KV;
    int64_t ldq = (int64_t)H * Dh, ldk = (int64_t)KV * Dh;
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int g = 0; g < KV; g++) {
                float *dP = dP_all + ((int64_t)b * KV + g) * T * T; /* one T×T scratch per task */
                const float *K = k + (int64_t)b * T * ldk + (int64_t)g * Dh, *Vv = v + (int64_t)b * T * ldk + (int64_t)g * Dh;
                float *dK = dk + (int64_t)b * T * ldk + (int64_t)g * Dh, *dV = dv + (int64_t)b * T * ldk + (int64_t)g * Dh;
                for (int t = 0; t < T; t++)
                    for (int d = 0; d < Dh; d++) dK[(int64_t)t * ldk + d] = dV[(int64_t)t * ldk + d] = 0.0f;
                for (int h = g * grp; h < (g + 1) * grp; h++) {
                    const float *P = att + ((int64_t)b * H + h) * T * T;
                    const float *dO = dao + (int64_t)b * T * ldq + (int64_t)h * Dh, *Q = q + (int64_t)b * T * ldq + (int64_t)h * Dh;
                    float *dQ = dq + (int64_t)b * T * ldq + (int64_t)h * Dh;
                    averis_sgemm(0, 1, T, T, Dh, 1.0f, dO, ldq, Vv, ldk, 0.0f, dP, T);
                    averis_sgemm(1, 0, T, Dh, T, 1.0f, P, T, dO, ldq, 1.0f, dV, ldk);
                    for (int t = 0; t < T; t++) {
                        const float *p = P + (int64_t)t * T;
                        float *ds = dP + (int64_t)t * T, pdp = 0.0f;
                        for (int j = 0; j <= t; j++) pdp += p[j] * ds[j];
                        for (int j = 0; j <= t; j++) ds[j] = p[j] * (ds[j] - pdp) * scale;
                        for (int j = t + 1; j < T; j++) ds[j] = 0.0f;
                    }
                    averis_sgemm(0, 0, T, Dh, T, 1.0f, dP, T, K, ldk, 0.0f, dQ, ldq);
                    averis_sgemm(1, 0, T, Dh, T, 1.0f, dP, T, Q, ldq, 1.0f, dK, ldk);
                }
            }
}

static const qlin_recipe *block_recipe(const model *m, int l) {
    return model_block_is_bf16(m->cfg.num_hidden_layers, m->bf16_last, l) ? &m->bf16_recipe : &m->recipe;
}

/* ------------------------------------------------------------ forward */
averis_status model_forward(model *m, const int *tokens, const int *targets, int B, int T, float *loss) {
    const model_config *c = &m->cfg;
    if (B < 1 || T < 1) return averis_fail(AVERIS_EINVAL, "model_forward: B = %d, T = %d", B, T);
    averis_status st = ensure_acts(m, B, T);
    if (st) return st;
    int64_t N = (int64_t)B * T, C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    int H = c->num_attention_heads, KV = c->num_key_value_heads, Dh = c->head_dim;
    int64_t qd = (int64_t)H * Dh, kvd = (int64_t)KV * Dh;
    float eps = (float)c->rms_norm_eps;
    if ((st = model_check_ids(c, tokens, N, "token"))) return st;

    float *x = m->acts[0].x_in;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) memcpy(x + n * C, m->w.embed + (int64_t)tokens[n] * C, (size_t)C * sizeof *x);

    for (int l = 0; l < c->num_hidden_layers; l++) {
        model_block_acts *a = &m->acts[l];
        const model_block *w = &m->w.blocks[l];
        const qlin_recipe *r = block_recipe(m, l);
        rmsnorm_fwd(a->h1, a->rstd1, a->x_in, w->in_norm, N, C, eps);
        if (m->tap) m->tap(m->tap_ctx, l, "attn_in", a->h1, N, C);
        if ((st = qlin_forward(r, a->h1, w->wq, N, C, qd, a->q_raw, &m->ws, NULL)) ||
            (st = qlin_forward(r, a->h1, w->wk, N, C, kvd, a->k_raw, &m->ws, NULL)) ||
            (st = qlin_forward(r, a->h1, w->wv, N, C, kvd, a->v, &m->ws, NULL)))
            return st;
        rmsnorm_fwd(a->q, a->rstd_q, a->q_raw, w->q_norm, N * H, Dh, eps);
        rmsnorm_fwd(a->k, a->rstd_k, a->k_raw, w->k_norm, N * KV, Dh, eps);
        rope_apply(a->q, N, H, Dh, T, m->rope_cos, m->rope_sin, 1.0f);
        rope_apply(a->k, N, KV, Dh, T, m->rope_cos, m->rope_sin, 1.0f);
        attention_fwd(a->ao, a->att, a->q, a->k, a->v, B, T, H, KV, Dh);
        if (m->tap) m->tap(m->tap_ctx, l, "attn_out", a->ao, N, qd);
        if ((st = qlin_forward(r, a->ao, w->wo, N, qd, C, a->x_mid, &m->ws, NULL))) return st;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < N * C; i++) a->x_mid[i] += a->x_in[i];
        rmsnorm_fwd(a->h2, a->rstd2, a->x_mid, w->post_norm, N, C, eps);
        if (m->tap) m->tap(m->tap_ctx, l, "ffn_in", a->h2, N, C);
        float *xo = l + 1 < c->num_hidden_layers ? m->acts[l + 1].x_in : m->x_out;
        if (w->router) { /* a Qwen3-MoE layer */
            if ((st = moe_forward(m, l, a->h2, xo))) return st;
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < N * C; i++) xo[i] += a->x_mid[i];
            continue;
        }
        if ((st = qlin_forward(r, a->h2, w->wg, N, C, F, a->g, &m->ws, NULL)) ||
            (st = qlin_forward(r, a->h2, w->wu, N, C, F, a->u, &m->ws, NULL)))
            return st;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < N * F; i++) {
            float gv = a->g[i];
            a->a[i] = gv / (1.0f + exp_approx(-gv)) * a->u[i];
        }
        if (m->tap) m->tap(m->tap_ctx, l, "ffn_down_in", a->a, N, F);
        if ((st = qlin_forward(r, a->a, w->wd, N, F, C, xo, &m->ws, NULL))) return st;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < N * C; i++) xo[i] += a->x_mid[i];
    }
    rmsnorm_fwd(m->hf, m->rstd_f, m->x_out, m->w.final_norm, N, C, eps);
    averis_sgemm(0, 1, N, V, C, 1.0f, m->hf, C, m->w.lm_head, C, 0.0f, m->probs, V);
    m->targets = NULL;
    if (!targets) return AVERIS_OK;

    if ((st = model_check_ids(c, targets, N, "target"))) return st;
    /* softmax in place; −log p_target = log Σ exp(z − max) − (z_target − max) */
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *z = m->probs + n * V;
        float mx = -INFINITY;
        for (int64_t i = 0; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        float zt = z[targets[n]] - mx, sum = exp_shift_sum(z, V, mx);
        m->tok_loss[n] = logf(sum) - zt;
        float inv = 1.0f / sum;
        for (int64_t i = 0; i < V; i++) z[i] *= inv;
    }
    double total = 0.0;
    for (int64_t n = 0; n < N; n++) total += m->tok_loss[n];
    memcpy(m->tokens, tokens, (size_t)N * sizeof *tokens);
    memcpy(m->tokens + N, targets, (size_t)N * sizeof *targets);
    m->targets = m->tokens + N;
    m->ce_loss = (float)(total / (double)N);
    m->aux_loss = moe_aux_loss(m);
    m->loss = c->num_experts && c->output_router_logits
                  ? m->ce_loss + (float)c->router_aux_loss_coef * m->aux_loss : m->ce_loss;
    if (loss) *loss = m->loss;
    return AVERIS_OK;
}

/* ------------------------------------------------------------ backward */
averis_status model_zero_grad(model *m) {
    if (!m->grads) {
        if (!(m->grads = calloc(m->nparams, sizeof(float))))
            return averis_fail(AVERIS_ENOMEM, "model: cannot allocate gradients");
        return bind_weights(m, m->grads, &m->g);
    }
    memset(m->grads, 0, m->nparams * sizeof(float));
    return AVERIS_OK;
}

static void add_into(float *y, const float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

averis_status model_backward(model *m, float loss_scale, uint64_t sr_stream) {
    const model_config *c = &m->cfg;
    if (!m->targets) return averis_fail(AVERIS_EINVAL, "model_backward: the last forward had no targets");
    averis_status st;
    if (!m->grads && (st = model_zero_grad(m))) return st;
    int B = m->B, T = m->T, H = c->num_attention_heads, KV = c->num_key_value_heads, Dh = c->head_dim;
    int64_t N = (int64_t)B * T, C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    int64_t qd = (int64_t)H * Dh, kvd = (int64_t)KV * Dh, wide = qd > C ? qd : C;
    size_t need = (size_t)N * (size_t)(2 * C + wide + 2 * qd + 2 * kvd + 3 * F) + (size_t)B * KV * T * T;
    if (model_grow(&m->scratch, &m->scratch_cap, need))
        return averis_fail(AVERIS_ENOMEM, "model: cannot allocate %zu MiB for the backward", need * 4 >> 20);
    float *p = m->scratch;
    float *dx = p;          p += N * C;    /* ∂L/∂(residual stream) */
    float *dh = p;          p += N * C;    /* ∂L/∂(normed block input) */
    float *dtmp = p;        p += N * wide;
    float *dao = p;         p += N * qd;
    float *dq = p;          p += N * qd;
    float *dk = p;          p += N * kvd;
    float *dv = p;          p += N * kvd;
    float *da = p;          p += N * F;
    float *dg = p;          p += N * F;
    float *du = p;          p += N * F;
    float *dP = p;                         /* [B,KV,T,T] attention scratch */

    /* ∂loss/∂logits = (softmax − onehot)·scale/N: the one-hot is subtracted in
     * place of the probabilities, the scale rides on the two GEMMs' alpha */
    float dscale = loss_scale / (float)N;
    for (int64_t n = 0; n < N; n++) m->probs[n * V + m->targets[n]] -= 1.0f;
    m->targets = NULL; /* the probabilities are gone: one backward per forward */
    averis_sgemm(1, 0, V, C, N, dscale, m->probs, V, m->hf, C, 1.0f, m->g.lm_head, C);
    averis_sgemm(0, 0, N, C, V, dscale, m->probs, V, m->w.lm_head, C, 0.0f, dh, C);
    rmsnorm_bwd(dx, m->g.final_norm, dh, m->x_out, m->rstd_f, m->w.final_norm, N, C, 0);

    for (int l = c->num_hidden_layers - 1; l >= 0; l--) {
        model_block_acts *a = &m->acts[l];
        const model_block *w = &m->w.blocks[l];
        model_block *gw = &m->g.blocks[l];
        const qlin_recipe *r = block_recipe(m, l);

        /* MLP: x_out = x_mid + (silu(g)⊙u)·Wdᵀ (or the MoE block's output) */
        if (m->tap) m->tap(m->tap_ctx, l, "grad_ffn_down", dx, N, C);
        if (w->router) {
            if ((st = moe_backward(m, l, dx, dh, loss_scale, sr_stream))) return st;
        } else {
            if ((st = qlin_backward(r, a->a, w->wd, dx, N, F, C, da, gw->wd, model_sr_stream(sr_stream, l, MODEL_LIN_DOWN), &m->ws, NULL))) return st;
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < N * F; i++) {
                float gv = a->g[i], sg = 1.0f / (1.0f + exp_approx(-gv));
                du[i] = da[i] * (gv * sg);
                dg[i] = da[i] * a->u[i] * (sg * (1.0f + gv * (1.0f - sg)));
            }
            if (m->tap) {
                m->tap(m->tap_ctx, l, "grad_ffn_gate", dg, N, F);
                m->tap(m->tap_ctx, l, "grad_ffn_up", du, N, F);
            }
            if ((st = qlin_backward(r, a->h2, w->wg, dg, N, C, F, dh, gw->wg, model_sr_stream(sr_stream, l, MODEL_LIN_GATE), &m->ws, NULL)) ||
                (st = qlin_backward(r, a->h2, w->wu, du, N, C, F, dtmp, gw->wu, model_sr_stream(sr_stream, l, MODEL_LIN_UP), &m->ws, NULL)))
                return st;
            add_into(dh, dtmp, N * C);
        }
        rmsnorm_bwd(dx, gw->post_norm, dh, a->x_mid, a->rstd2, w->post_norm, N, C, 1);

        /* attention: x_mid = x_in + ao·Woᵀ */
        if (m->tap) m->tap(m->tap_ctx, l, "grad_attn_out", dx, N, C);
        if ((st = qlin_backward(r, a->ao, w->wo, dx, N, qd, C, dao, gw->wo, model_sr_stream(sr_stream, l, MODEL_LIN_O), &m->ws, NULL))) return st;
        attention_bwd(dq, dk, dv, dao, a->att, a->q, a->k, a->v, B, T, H, KV, Dh, dP);
        rope_apply(dq, N, H, Dh, T, m->rope_cos, m->rope_sin, -1.0f);
        rope_apply(dk, N, KV, Dh, T, m->rope_cos, m->rope_sin, -1.0f);
        float *dq_raw = dtmp, *dk_raw = dao; /* dao is spent */
        rmsnorm_bwd(dq_raw, gw->q_norm, dq, a->q_raw, a->rstd_q, w->q_norm, N * H, Dh, 0);
        rmsnorm_bwd(dk_raw, gw->k_norm, dk, a->k_raw, a->rstd_k, w->k_norm, N * KV, Dh, 0);
        if ((st = qlin_backward(r, a->h1, w->wq, dq_raw, N, C, qd, dh, gw->wq, model_sr_stream(sr_stream, l, MODEL_LIN_Q), &m->ws, NULL)) ||
            (st = qlin_backward(r, a->h1, w->wk, dk_raw, N, C, kvd, dtmp, gw->wk, model_sr_stream(sr_stream, l, MODEL_LIN_K), &m->ws, NULL)))
            return st;
        add_into(dh, dtmp, N * C);
        if ((st = qlin_backward(r, a->h1, w->wv, dv, N, C, kvd, dtmp, gw->wv, model_sr_stream(sr_stream, l, MODEL_LIN_V), &m->ws, NULL))) return st;
        add_into(dh, dtmp, N * C);
        rmsnorm_bwd(dx, gw->in_norm, dh, a->x_in, a->rstd1, w->in_norm, N, C, 1);
    }
    /* embedding rows, in token order (repeated tokens add up deterministically) */
    for (int64_t n = 0; n < N; n++) {
        float *ge = m->g.embed + (int64_t)m->tokens[n] * C;
        const float *d = dx + n * C;
        for (int64_t i = 0; i < C; i++) ge[i] += d[i];
    }
    return AVERIS_OK;
}

/* ------------------------------------------------------------ weights I/O */
averis_status model_save_weights(const model *m, const char *path) {
    st_out *t = calloc((size_t)m->ntensors, sizeof *t);
    if (!t) return averis_fail(AVERIS_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < m->ntensors; i++) {
        const model_tensor *mt = &m->tensors[i];
        t[i].name = mt->name;
        t[i].data = m->params + mt->offset;
        t[i].ndim = mt->ndim;
        t[i].shape[0] = mt->shape[0];
        t[i].shape[1] = mt->shape[1];
    }
    static const char *const meta[] = {"format", "pt", "producer", "averis", NULL};
    averis_status st = st_write_f32(path, t, m->ntensors, meta);
    free(t);
    return st;
}

averis_status model_load_weights(model *m, const char *path) {
    st_file f;
    averis_status st = st_read(path, &f);
    if (st) return st;
    uint64_t fused[16] = {0}; /* MoE layers whose experts the file holds fused */
    if (m->cfg.num_experts) st = moe_load_fused(m, &f, fused);
    for (int i = 0; i < m->ntensors && !st; i++) {
        const model_tensor *mt = &m->tensors[i];
        if (!moe_tensor_fused(m, mt->name, fused))
            st = st_get_f32(&f, mt->name, mt->ndim, mt->shape, m->params + mt->offset);
        for (size_t k = 0; !st && k < mt->numel; k++) /* a trained model never holds one: the file is corrupt */
            if (!isfinite(m->params[mt->offset + k]))
                st = averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' holds %g at index %zu", path, mt->name,
                                 (double)m->params[mt->offset + k], k);
    }
    st_free(&f);
    return st;
}
