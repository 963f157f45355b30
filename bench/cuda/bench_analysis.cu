/* bench_analysis.cu — what `train --device cuda --analyze-every K` costs: one
 * analysis step (forward + backward of the analysis batch with every tap's
 * metrics on the device, cuda/analysis.cu) against K training steps (zero
 * grad, forward, backward, grad norm, AdamW), on one model shape.
 *
 *   bench_analysis [--config C] [--batch B] [--seq T] [--recipe R] [--steps S] [--every K] [--csv FILE]
 *   bench_analysis --panel-parts LxM
 *
 * Default shape: the 88M model of issue 24 (width 768, 12 layers, 12/4
 * heads, FFN 2048, vocabulary 16384, tied embeddings), 16 × 1024 tokens,
 * recipe averis, K = 250. Prints ms per training step (median of S), ms per
 * analysis (median of 3 after one warm-up), the overhead
 * t_analysis / (K · t_step) (goal ≤ 2%) and the analysis's time by tensor
 * kind; --csv appends "config,recipe,B,T,step_ms,analysis_ms,every,overhead".
 * AVERIS_CUDA_PROFILE=1: then one more analysis step with the profiler on,
 * its device time by phase of cuda/analysis.cu (and the model's categories).
 * AVERIS_NCU_RANGE=1: then one more analysis step between cudaProfilerStart
 * and cudaProfilerStop, for `ncu --profile-from-start off`.
 * --panel-parts LxM: instead, the pieces of one panel iteration (the LM-head
 * gradient's path: GEMMs, Cholesky-QR's parts, the whole iteration) on a
 * random BF16 X of l × m, ms per call (avc_analysis_bench_panel).
 */
#include "common.cuh"
#include "../../dev/cuda/tool_util.cuh"
#include "averis/analysis_cuda.h"

#include <cuda_profiler_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

static const char k_88m[] =
    "{\"vocab_size\": 16384, \"hidden_size\": 768, \"intermediate_size\": 2048, \"num_hidden_layers\": 12,"
    " \"num_attention_heads\": 12, \"num_key_value_heads\": 4, \"head_dim\": 64, \"max_position_embeddings\": 4096,"
    " \"tie_word_embeddings\": true, \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-6}";

static double now_s(void) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* time per kind: the tap computes and times each tensor itself */
struct timed_ctx {
    avc_analysis *a;
    std::map<std::string, std::pair<double, int>> by_kind;
    std::map<std::string, int> iters; /* subspace iterations, summed */
    averis_status st = AVERIS_OK;
};
static void timed_tap(void *ctx, int layer, const char *kind, const void *x, int bf16, int64_t rows, int64_t cols) {
    (void)layer;
    timed_ctx *c = static_cast<timed_ctx *>(ctx);
    if (c->st) return;
    cudaDeviceSynchronize();
    double t0 = now_s();
    analysis_metrics am;
    avc_analysis_info info;
    c->st = avc_analysis_compute(c->a, x, bf16, rows, cols, &am, &info);
    c->iters[kind] += info.iters;
    auto &e = c->by_kind[kind];
    e.first += now_s() - t0;
    e.second++;
}

int main(int argc, char **argv) {
    const char *config = nullptr, *recipe = "averis", *csv = nullptr;
    long long panel_l = 0, panel_m = 0;
    int B = 16, T = 1024, steps = 10, every = 250;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: bench_analysis [--config C] [--batch B] [--seq T] [--recipe R] [--steps S] [--every K] [--csv FILE]\n"
                   "       bench_analysis --panel-parts LxM   (the panel iteration's pieces on a random BF16 L x M)\n"
                   "  default: the 88M shape (768 wide, 12 layers, 12/4 heads, FFN 2048, vocab 16384), 16x1024, averis, K=250\n");
            return 0;
        }
        if (i + 1 >= argc) { fprintf(stderr, "bench_analysis: %s needs a value\n", argv[i]); return 2; }
        const char *a = argv[i], *v = argv[++i];
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--batch")) B = atoi(v);
        else if (!strcmp(a, "--seq")) T = atoi(v);
        else if (!strcmp(a, "--recipe")) recipe = v;
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--every")) every = atoi(v);
        else if (!strcmp(a, "--csv")) csv = v;
        else if (!strcmp(a, "--panel-parts")) {
            if (sscanf(v, "%lldx%lld", &panel_l, &panel_m) != 2 || panel_l < 1 || panel_m < 1) {
                fprintf(stderr, "bench_analysis: --panel-parts wants LxM (e.g. 16384x16384), not '%s'\n", v);
                return 2;
            }
        }
        else { fprintf(stderr, "bench_analysis: unknown option %s\n", a); return 2; }
    }
    if (B < 1 || T < 2 || steps < 1 || every < 1) { fprintf(stderr, "bench_analysis: bad sizes\n"); return 2; }
    tool_device_init("bench_analysis");
    if (panel_l > 0) {
        avc_analysis *pa;
        TOOL_OK(avc_analysis_create(&pa, nullptr));
        TOOL_OK(avc_analysis_bench_panel(pa, panel_l, panel_m, 20, stdout));
        avc_analysis_free(pa);
        return 0;
    }
    model_config cfg;
    if (config) TOOL_OK(model_config_load(config, &cfg));
    else TOOL_OK(model_config_from_json(k_88m, sizeof k_88m - 1, "the 88M shape", &cfg));
    model m;
    TOOL_OK(model_create(&m, &cfg));
    TOOL_OK(qlin_recipe_parse(recipe, &m.recipe));
    model_init_weights(&m, 1);
    int64_t N = (int64_t)B * T;
    std::vector<int> tok, tgt;
    tool_random_batch(cfg.vocab_size, N, tok, tgt);
    avc_model *net;
    avc_model_opts opts;
    TOOL_OK(avc_model_opts_parse(getenv("AVERIS_ACT"), getenv("AVERIS_ATTN"), "AVERIS_ACT", "AVERIS_ATTN", &opts));
    TOOL_OK(avc_model_create(&net, &m, B, T, &opts));
    printf("analysis overhead: %s (%.1fM params), %d x %d tokens, recipe %s (%s)\n", config ? config : "88M",
           (double)m.nparams / 1e6, B, T, recipe, avc_model_describe(net));
    /* training steps */
    std::vector<double> ts;
    float loss = 0;
    for (int k = 0; k < steps + 2; k++) {
        double t0 = now_s(), norm;
        TOOL_OK(avc_model_zero_grad(net));
        TOOL_OK(avc_model_step(net, tok.data(), tgt.data(), 1, 1.0f, (uint64_t)k, &loss));
        TOOL_OK(avc_model_grad_norm(net, &norm));
        TOOL_OK(avc_model_adamw(net, 1e-4, 0.9, 0.95, 1e-8, 0.1, k + 1, norm > 1.0 ? (float)(1.0 / norm) : 1.0f));
        DEV(cudaDeviceSynchronize());
        if (k >= 2) ts.push_back(now_s() - t0);
    }
    std::sort(ts.begin(), ts.end());
    double t_step = ts[ts.size() / 2];
    /* analysis steps: the trainer's path (rows to a file) */
    avc_analysis *a;
    TOOL_OK(avc_analysis_create(&a, avc_model_stream(net)));
    FILE *sink = fopen("/dev/null", "w");
    if (!sink) { fprintf(stderr, "bench_analysis: cannot open /dev/null\n"); return 1; }
    std::vector<double> ta;
    for (int k = 0; k < 4; k++) {
        double t0 = now_s();
        TOOL_OK(avc_analysis_model_rows(net, a, tok.data(), tgt.data(), sink, "0", UINT64_MAX - (uint64_t)k, nullptr));
        DEV(cudaDeviceSynchronize());
        double dt = now_s() - t0;
        if (k == 0) printf("first analysis (allocations): %.1f ms\n", dt * 1e3);
        else ta.push_back(dt);
    }
    std::sort(ta.begin(), ta.end());
    double t_ana = ta[ta.size() / 2];
    double over = t_ana / (every * t_step);
    printf("training step %.2f ms (median of %d); analysis step %.1f ms (median of 3) = %.2f training steps\n",
           t_step * 1e3, steps, t_ana * 1e3, t_ana / t_step);
    printf("overhead at --analyze-every %d: %.2f%% of the training time between analyses (goal <= 2%%): %s\n", every,
           100 * over, over <= 0.02 ? "met" : "NOT met");
    /* by kind (each tensor timed alone, synchronised) */
    timed_ctx tc;
    tc.a = a;
    avc_model_set_tap(net, timed_tap, &tc);
    TOOL_OK(avc_model_step(net, tok.data(), tgt.data(), 1, 1.0f, 12345, &loss));
    avc_model_set_tap(net, nullptr, nullptr);
    TOOL_OK(tc.st);
    printf("%-16s %6s %10s %10s %7s\n", "kind", "count", "ms each", "ms total", "iters");
    double tot = 0;
    for (auto &e : tc.by_kind) {
        printf("%-16s %6d %10.3f %10.2f %7.1f\n", e.first.c_str(), e.second.second, 1e3 * e.second.first / e.second.second,
               1e3 * e.second.first, (double)tc.iters[e.first] / e.second.second);
        tot += e.second.first;
    }
    printf("%-16s %6s %10s %10.2f\n", "all taps", "", "", 1e3 * tot);
    if (getenv("AVERIS_CUDA_PROFILE") && atoi(getenv("AVERIS_CUDA_PROFILE")) > 0) {
        /* one more analysis step with the profiler on: device time by phase of the analysis
         * (cuda/analysis.cu) and by the model's own categories */
        cu_prof_enable(1);
        cu_prof_reset();
        TOOL_OK(avc_analysis_model_rows(net, a, tok.data(), tgt.data(), sink, "0", UINT64_MAX - 99, nullptr));
        DEV(cudaDeviceSynchronize());
        printf("one analysis step by phase (AVERIS_CUDA_PROFILE=1):\n");
        cu_prof_report(1);
        cu_prof_enable(0);
    }
    if (getenv("AVERIS_NCU_RANGE") && atoi(getenv("AVERIS_NCU_RANGE")) > 0) {
        /* one more analysis step between cudaProfilerStart and Stop: what
         * `ncu --profile-from-start off` profiles (device_analysis.sh, DEVICE_ANALYSIS_NCU=1) */
        DEV(cudaProfilerStart());
        TOOL_OK(avc_analysis_model_rows(net, a, tok.data(), tgt.data(), sink, "0", UINT64_MAX - 98, nullptr));
        DEV(cudaDeviceSynchronize());
        DEV(cudaProfilerStop());
    }
    if (csv) {
        FILE *f = fopen(csv, "a");
        if (f) {
            fprintf(f, "%s,%s,%d,%d,%.3f,%.3f,%d,%.5f\n", config ? config : "88M", recipe, B, T, t_step * 1e3,
                    t_ana * 1e3, every, over);
            fclose(f);
        }
    }
    fclose(sink);
    avc_analysis_free(a);
    avc_model_free(net);
    model_free(&m);
    return 0;
}
