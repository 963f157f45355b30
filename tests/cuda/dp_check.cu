/* dp_check.cu — data parallel's GPU half on one GPU (the NCCL collectives
 * need a GPU per rank; scripts/device_nccl.sh runs them):
 *
 *   grad_hook_segments  the backward reports model_grad_segment's segments
 *                       in order, each final when reported (a snapshot taken
 *                       in the callback, on the model's stream, equals the
 *                       step's final gradient), and the hook changes no bit
 *   zero_window_on_gpu  ZeRO-1 emulated with 5 device models in one process:
 *                       each holds the moments of its window only (its
 *                       shard and the tail, through train_backend_cuda),
 *                       updates its shard and the tail, and the parameters
 *                       are "all-gathered" through the host: after 3 steps
 *                       the parameters and each window's moments are those
 *                       of one model with all the moments, bit for bit */
#include "averis/backend.h"
#include "averis/dp.h"
#include "../../dev/cuda/tool_util.cuh"

#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
#include "../check.h"
}

namespace {

struct hook_log {
    avc_model *net;
    size_t nparams;
    std::vector<size_t> lo, hi;
    std::vector<std::vector<float>> snap; /* the segment's gradient when reported */
};

averis_status record_segment(void *ctx, size_t lo, size_t hi) {
    hook_log *h = (hook_log *)ctx;
    float *g = nullptr;
    void *s = nullptr;
    averis_status st = avc_model_flat(h->net, nullptr, &g, nullptr, nullptr, &s);
    if (st) return st;
    h->lo.push_back(lo), h->hi.push_back(hi);
    h->snap.emplace_back(hi > lo ? hi - lo : 0);
    /* on the model's stream: what is queued so far, and no more */
    if (hi > lo && cudaMemcpyAsync(h->snap.back().data(), g + lo, (hi - lo) * sizeof(float), cudaMemcpyDeviceToHost,
                                   (cudaStream_t)s) != cudaSuccess)
        return averis_fail(AVERIS_EIO, "snapshot copy");
    if (cudaStreamSynchronize((cudaStream_t)s) != cudaSuccess) return averis_fail(AVERIS_EIO, "snapshot sync");
    return AVERIS_OK;
}

void grad_hook_segments(const char *config, const char *recipe) {
    model_config cfg;
    model m;
    if (model_config_load(config, &cfg) || model_create(&m, &cfg)) {
        CHECK(0, "%s: %s", config, averis_last_error());
        return;
    }
    model_init_weights(&m, 5);
    CHECK(qlin_recipe_parse(recipe, &m.recipe) == AVERIS_OK, "recipe %s", recipe);
    const int B = 2, T = 64, L = cfg.num_hidden_layers;
    std::vector<int> tok, tgt;
    tool_random_batch(cfg.vocab_size, (int64_t)B * T, tok, tgt);
    avc_model *net = nullptr;
    if (avc_model_create(&net, &m, B, T, nullptr)) {
        CHECK(0, "%s: avc_model_create: %s", config, averis_last_error());
        model_free(&m);
        return;
    }
    std::vector<float> plain(m.nparams), hooked(m.nparams);
    float loss = 0;
    hook_log h = {net, m.nparams, {}, {}, {}};
    CHECK(avc_model_zero_grad(net) == AVERIS_OK && avc_model_step(net, tok.data(), tgt.data(), 1, 1.0f, 7, &loss) == AVERIS_OK &&
              avc_model_grads(net, plain.data()) == AVERIS_OK, "%s: plain step: %s", config, averis_last_error());
    avc_model_set_grad_hook(net, record_segment, &h);
    CHECK(avc_model_step(net, tok.data(), tgt.data(), 0, 1.0f, 7, &loss) == AVERIS_OK && h.lo.empty(),
          "%s: a forward-only step reported %zu segments", config, h.lo.size());
    CHECK(avc_model_zero_grad(net) == AVERIS_OK && avc_model_step(net, tok.data(), tgt.data(), 1, 1.0f, 7, &loss) == AVERIS_OK &&
              avc_model_grads(net, hooked.data()) == AVERIS_OK, "%s: hooked step: %s", config, averis_last_error());
    avc_model_set_grad_hook(net, nullptr, nullptr);
    CHECK(!memcmp(plain.data(), hooked.data(), m.nparams * sizeof(float)), "%s %s: the hook changed the gradient", config,
          recipe);
    CHECK(h.lo.size() == (size_t)L + 2, "%s: %zu segments reported, want %d", config, h.lo.size(), L + 2);
    for (size_t k = 0; k < h.lo.size(); k++) {
        size_t lo, hi;
        CHECK(model_grad_segment(&m, (int)k, &lo, &hi) && lo == h.lo[k] && hi == h.hi[k],
              "%s: segment %zu reported as [%zu, %zu), model_grad_segment says [%zu, %zu)", config, k, h.lo[k], h.hi[k], lo,
              hi);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < h.snap[k].size(); i++)
            if (memcmp(&h.snap[k][i], &hooked[h.lo[k] + i], sizeof(float)) && !bad++) first = h.lo[k] + i;
        CHECK(bad == 0, "%s %s: segment %zu [%zu, %zu) was not final when reported: %zu elements changed after, the first "
                        "%zu (%.9g then %.9g)", config, recipe, k, h.lo[k], h.hi[k], bad, first,
              bad ? h.snap[k][first - h.lo[k]] : 0.0f, bad ? hooked[first] : 0.0f);
    }
    printf("  %-9s %-7s %zu segments, each final when reported; gradient unchanged by the hook\n", config, recipe,
           h.lo.size());
    avc_model_free(net);
    model_free(&m);
}

} // namespace

void test_grad_hook_segments(void) {
    grad_hook_segments("tiny", "bf16");
    grad_hook_segments("tiny", "averis");
    grad_hook_segments("moe-tiny", "bf16");
}

/* One full model vs W = 5 windowed ones (tiny: n mod 5 = 3, a tail)
 * through the CUDA backend table. */
void test_zero_window_on_gpu(void) {
    const int W = 5, K = 3, B = 2, T = 64;
    model_config cfg;
    if (model_config_load("tiny", &cfg)) { CHECK(0, "%s", averis_last_error()); return; }
    const train_backend *be = &train_backend_cuda;
    train_backend_opts bo = {};
    model mf, mr[W];
    void *cf = nullptr, *cr[W] = {};
    std::vector<int> tok, tgt;
    tool_random_batch(cfg.vocab_size, (int64_t)B * T, tok, tgt);
    CHECK(model_create(&mf, &cfg) == AVERIS_OK, "model_create");
    model_init_weights(&mf, 5);
    qlin_recipe_parse("bf16", &mf.recipe);
    const size_t n = mf.nparams;
    std::vector<float> momf(n), varf(n);
    moment_window win[W];
    std::vector<float> momr[W], varr[W];
    CHECK(be->create(&cf, &bo) == AVERIS_OK && be->bind(cf, &mf, momf.data(), varf.data(), nullptr, B, T) == AVERIS_OK &&
              be->upload(cf) == AVERIS_OK, "full model: %s", averis_last_error());
    for (int r = 0; r < W; r++) {
        model_create(&mr[r], &cfg);
        memcpy(mr[r].params, mf.params, n * sizeof(float));
        mr[r].recipe = mf.recipe;
        win[r] = dp_moments(n, W, r);
        momr[r].assign(moment_window_numel(&win[r]), 0.0f), varr[r].assign(moment_window_numel(&win[r]), 0.0f);
        CHECK(be->create(&cr[r], &bo) == AVERIS_OK &&
                  be->bind(cr[r], &mr[r], momr[r].data(), varr[r].data(), &win[r], B, T) == AVERIS_OK && be->upload(cr[r]) == AVERIS_OK,
              "rank %d: %s", r, averis_last_error());
        const char *d = be->describe(cr[r]);
        char want[96];
        snprintf(want, sizeof want, "AdamW moments of %zu of %zu parameters", moment_window_numel(&win[r]), n);
        CHECK(d && strstr(d, want), "rank %d: the describe line '%s' lacks '%s'", r, d ? d : "", want);
        CHECK(be->adamw(cr[r], 1e-3, 0.9, 0.95, 1e-8, 0.1, 1, 1.0f) != AVERIS_OK, "rank %d: AdamW over all with a window", r);
    }
    std::vector<float> gathered(n);
    for (int k = 0; k < K && !g_check_failed; k++) {
        float loss = 0;
        double norm = 0, normr = 0;
        CHECK(be->zero_grad(cf) == AVERIS_OK && be->step(cf, tok.data(), tgt.data(), 1, 1.0f, (uint64_t)k, &loss) == AVERIS_OK &&
                  be->grad_norm(cf, &norm) == AVERIS_OK, "full step %d: %s", k, averis_last_error());
        float gscale = norm > 1.0 ? (float)(1.0 / norm) : 1.0f;
        CHECK(be->adamw(cf, 1e-3, 0.9, 0.95, 1e-8, 0.1, k + 1, gscale) == AVERIS_OK, "full adamw: %s", averis_last_error());
        for (int r = 0; r < W; r++) {
            dp_range s = dp_shard(n, W, r), t = dp_tail(n, W);
            CHECK(be->zero_grad(cr[r]) == AVERIS_OK &&
                      be->step(cr[r], tok.data(), tgt.data(), 1, 1.0f, (uint64_t)k, &loss) == AVERIS_OK &&
                      be->grad_norm(cr[r], &normr) == AVERIS_OK && normr == norm,
                  "rank %d step %d: norm %.17g vs %.17g: %s", r, k, normr, norm, averis_last_error());
            CHECK(be->adamw_range(cr[r], s.lo, s.hi, 1e-3, 0.9, 0.95, 1e-8, 0.1, k + 1, gscale) == AVERIS_OK &&
                      be->adamw_range(cr[r], t.lo, t.hi, 1e-3, 0.9, 0.95, 1e-8, 0.1, k + 1, gscale) == AVERIS_OK,
                  "rank %d adamw_range: %s", r, averis_last_error());
            CHECK(be->adamw_range(cr[r], 0, n, 1e-3, 0.9, 0.95, 1e-8, 0.1, k + 1, gscale) != AVERIS_OK,
                  "rank %d: AdamW outside its window accepted", r);
            CHECK(be->download(cr[r], 1) == AVERIS_OK, "download");
            memcpy(gathered.data() + s.lo, mr[r].params + s.lo, (s.hi - s.lo) * sizeof(float));
            if (r == 0) memcpy(gathered.data() + t.lo, mr[r].params + t.lo, (t.hi - t.lo) * sizeof(float));
        }
        for (int r = 0; r < W; r++) { /* the all-gather, through the host */
            memcpy(mr[r].params, gathered.data(), n * sizeof(float));
            CHECK(be->upload(cr[r]) == AVERIS_OK, "upload");
        }
    }
    CHECK(be->download(cf, 1) == AVERIS_OK, "download");
    size_t at = 0;
    while (at < n && !memcmp(&mf.params[at], &gathered[at], sizeof(float))) at++;
    CHECK(at == n, "after %d steps: parameter %zu = %.9g in one model, %.9g gathered from %d windows", K, at,
          at < n ? mf.params[at] : 0.0f, at < n ? gathered[at] : 0.0f, W);
    for (int r = 0; r < W; r++)
        for (int j = 0; j < 2; j++)
            for (size_t i = win[r].lo[j]; i < win[r].hi[j]; i++) {
                size_t w = moment_window_at(&win[r], i, i + 1);
                if (memcmp(&momr[r][w], &momf[i], 4) || memcmp(&varr[r][w], &varf[i], 4)) {
                    CHECK(0, "rank %d: moments of %zu: %.9g %.9g, one model %.9g %.9g", r, i, momr[r][w], varr[r][w], momf[i],
                          varf[i]);
                    i = win[r].hi[j];
                    j = 2;
                }
            }
    printf("  tiny, bf16, %d steps: %d windows of %zu moments (the tail %zu) = one model of %zu, bit for bit\n", K, W,
           moment_window_numel(&win[0]), win[0].hi[1] - win[0].lo[1], n);
    be->destroy(cf);
    model_free(&mf);
    for (int r = 0; r < W; r++) {
        if (cr[r]) be->destroy(cr[r]);
        model_free(&mr[r]);
    }
}
