/* model_steps.cuh — the device tests' training loop (fused_check.cu,
 * model_check.cu): K steps of a preset on the GPU model (zero grad, step,
 * gradient norm, AdamW with clipping at 1), from model_init_weights(5),
 * recipe seed 3, on tool_random_batch's B × T tokens. Include after
 * ../check.h (CHECK) and the model headers. */
#ifndef AVERIS_TESTS_CUDA_MODEL_STEPS_CUH
#define AVERIS_TESTS_CUDA_MODEL_STEPS_CUH

#include "../../dev/cuda/tool_util.cuh"

#include <vector>

/* losses [K]; first (may be NULL) and last: the first and the last step's
 * gradients (AdamW reads them, never writes); SR stream sr0 + k at step k.
 * All empty when the GPU model cannot be built (a failed CHECK). */
static void gpu_model_steps(const char *config, const char *recipe, avc_act act, int K, uint64_t sr0,
                            std::vector<float> &losses, std::vector<float> *first, std::vector<float> &last) {
    losses.clear(), last.clear();
    if (first) first->clear();
    model_config cfg;
    if (model_config_load(config, &cfg) != AVERIS_OK) {
        CHECK(0, "preset %s: %s", config, averis_last_error());
        return;
    }
    const int B = 2, T = 64;
    std::vector<int> tok, tgt;
    tool_random_batch(cfg.vocab_size, (int64_t)B * T, tok, tgt);
    model m;
    if (model_create(&m, &cfg) != AVERIS_OK) {
        CHECK(0, "%s: model_create: %s", config, averis_last_error());
        return;
    }
    model_init_weights(&m, 5);
    CHECK(qlin_recipe_parse(recipe, &m.recipe) == AVERIS_OK, "recipe %s", recipe);
    m.recipe.seed = 3;
    avc_model *net = nullptr;
    const avc_model_opts o = {act, AVC_ATTN_AUTO, nullptr};
    averis_status st = avc_model_create(&net, &m, B, T, &o);
    CHECK(st == AVERIS_OK, "%s %s: avc_model_create: %s", config, recipe, averis_last_error());
    if (st == AVERIS_OK) {
        losses.assign((size_t)K, 0.0f);
        for (int k = 0; k < K; k++) {
            double norm = 0;
            CHECK(avc_model_zero_grad(net) == AVERIS_OK, "zero_grad");
            CHECK(avc_model_step(net, tok.data(), tgt.data(), 1, 1.0f, sr0 + (uint64_t)k, &losses[(size_t)k]) == AVERIS_OK,
                  "%s %s step %d: %s", config, recipe, k, averis_last_error());
            std::vector<float> *g = k + 1 == K ? &last : k == 0 ? first : nullptr;
            if (g) {
                g->resize(m.nparams);
                CHECK(avc_model_grads(net, g->data()) == AVERIS_OK, "grads");
            }
            if (k == 0 && k + 1 == K && first) *first = last;
            CHECK(avc_model_grad_norm(net, &norm) == AVERIS_OK, "grad norm");
            CHECK(avc_model_adamw(net, 1e-3, 0.9, 0.95, 1e-8, 0.1, k + 1, norm > 1.0 ? (float)(1.0 / norm) : 1.0f) == AVERIS_OK,
                  "adamw");
        }
    }
    avc_model_free(net);
    model_free(&m);
}

#endif
