/* test_analysis_gpu.cu — the GPU mean-bias analysis (cuda/analysis.cu)
 * against the CPU reference (analysis_compute) on the same tensors, on a GPU.
 *
 *   synthetic   shapes and structures: a strong mean, spike columns, cols
 *               not a multiple of 16 (RHT padding), BF16-rounded values
 *               (ties at the top-0.1% threshold), wide (rows < cols, the
 *               LM-head case), all zeros, a BF16 input on the device
 *   paths       the panel iteration (forced), the Cholesky's global-memory
 *               path (forced), spike blocks of 48 and 57 vectors (4000² and
 *               4900²: the CPU side takes a while)
 *   model taps  tensors of the CPU tiny model (random init and after a few
 *               AdamW steps) at every CPU tap kind
 *   model rows  the GPU model's rows (fp32 activations) beside the CPU
 *               model's for the same batch: same (layer, kind) rows, R close
 *
 * Tolerances (averis/analysis_cuda.h states them):
 *   R, ‖μ‖, rms          1e-5 relative (fp32 means vs fp64)
 *   σ₁                   1e-3 relative where the block converged (conv1 ≤ 1e-2),
 *                        else 3e-2
 *   cos(μ, v₁)           0.01 absolute where converged and σ₂/σ₁ ≤ 0.9
 *   e_mean               1e-5 absolute; e_spike, e_tail 0.01 absolute
 *   top_count            exact; ρ median 1e-5 relative, ρ share 1e-6
 *   NVFP4 rel_mse        1e-4 relative; flushed share 1e-7 absolute
 * Prints the largest deviation of each metric over all tensors.
 * Ends with "N passed, N failed"; exit status 1 on any failure.
 */
#include "common.cuh"
#include "../../dev/cuda/tool_util.cuh"
#include "averis/analysis.h"
#include "averis/analysis_cuda.h"
#include "averis/half.h"
#include "averis/model.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "../check.h"
#include "run_tests.cuh"
}

int g_check_failed;

namespace {

struct rng {
    uint64_t s;
    double u() {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        return (double)(s >> 11) * 0x1p-53;
    }
    double normal() {
        double a = u(), b = u();
        return sqrt(-2.0 * log(a + 1e-300)) * cos(6.283185307179586 * b);
    }
};

/* the largest deviation seen per metric, and the time per tensor */
struct worst {
    double R = 0, mean_norm = 0, rms = 0, sigma1 = 0, cos = 0, e_mean = 0, e_spike = 0, e_tail = 0, rho_med = 0,
           rho_half = 0, mse = 0, flushed = 0;
    double sigma1_loose = 0;
    int ncos = 0, ntensor = 0, nconv = 0;
    double ms = 0;
} g_worst;

double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }
void upd(double &w, double v) { w = v > w ? v : w; }

avc_analysis *g_ana;
cudaStream_t g_stream; /* the analysis's stream (a created one: the CUDA graphs need it) */
struct {
    int n = 0, same = 0; /* tensors computed with graphs and directly; bit-identical ones */
} g_graph;
struct {
    int n = 0;
    double sigma1 = 0, cos = 0, spike = 0; /* deferred vs at once: the iterative metrics' largest deviations */
} g_defer;

/* X as the GPU sees it (fp32, or BF16 when bf16: the CPU then gets the same BF16 values) */
void compare(const char *name, std::vector<float> X, int64_t l, int64_t m, int bf16) {
    std::vector<uint16_t> xb;
    if (bf16) {
        xb.resize(X.size());
        for (size_t i = 0; i < X.size(); i++) {
            xb[i] = bf16_from_f32(X[i]);
            X[i] = bf16_to_f32(xb[i]);
        }
    }
    analysis_metrics c, g;
    if (analysis_compute(X.data(), l, m, &c)) {
        CHECK(0, "%s: CPU analysis failed: %s", name, averis_last_error());
        return;
    }
    void *d = nullptr;
    size_t bytes = X.size() * (bf16 ? 2 : 4);
    CHECK(cudaMalloc(&d, bytes) == cudaSuccess, "%s: cudaMalloc", name);
    if (!d) return;
    cudaMemcpy(d, bf16 ? (const void *)xb.data() : (const void *)X.data(), bytes, cudaMemcpyHostToDevice);
    avc_analysis_info info;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    /* once to warm up (allocations), once timed */
    averis_status st = avc_analysis_compute(g_ana, d, bf16, l, m, &g, &info);
    cudaEventRecord(e0, g_stream);
    if (!st) st = avc_analysis_compute(g_ana, d, bf16, l, m, &g, &info);
    cudaEventRecord(e1, g_stream);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    /* the path without deferral (AVERIS_ANALYSIS_DEFER=0) with CUDA graphs (gi) and
     * with its stages run directly (AVERIS_ANALYSIS_GRAPH=0, gd): bit for bit the same;
     * the deferred result (g, the default) has the same non-iterative metrics */
    analysis_metrics gd, gi;
    avc_analysis_info infod, infoi;
    /* the 3-pass radix select alone (AVERIS_ANALYSIS_SELECT=radix) against the sampled one: ρ bit for bit */
    analysis_metrics gr;
    if (!st) {
        setenv("AVERIS_ANALYSIS_SELECT", "radix", 1);
        st = avc_analysis_compute(g_ana, d, bf16, l, m, &gr, nullptr);
        unsetenv("AVERIS_ANALYSIS_SELECT");
        if (!st)
            CHECK(gr.top_count == g.top_count && gr.rho_median == g.rho_median && gr.rho_frac_half == g.rho_frac_half,
                  "%s: sampled vs radix select: top %lld/%lld, rho median %.17g/%.17g, share %.17g/%.17g", name,
                  (long long)g.top_count, (long long)gr.top_count, g.rho_median, gr.rho_median, g.rho_frac_half,
                  gr.rho_frac_half);
    }
    const char *defer_env = getenv("AVERIS_ANALYSIS_DEFER");
    std::string defer_saved = defer_env ? defer_env : "";
    setenv("AVERIS_ANALYSIS_DEFER", "0", 1);
    if (!st) st = avc_analysis_compute(g_ana, d, bf16, l, m, &gi, &infoi);
    if (!st) {
        setenv("AVERIS_ANALYSIS_GRAPH", "0", 1);
        st = avc_analysis_compute(g_ana, d, bf16, l, m, &gd, &infod);
        unsetenv("AVERIS_ANALYSIS_GRAPH");
    }
    if (defer_env) setenv("AVERIS_ANALYSIS_DEFER", defer_saved.c_str(), 1);
    else unsetenv("AVERIS_ANALYSIS_DEFER");
    cudaFree(d);
    CHECK(!st, "%s: GPU analysis failed: %s", name, averis_last_error());
    if (st) return;
    {
        CHECK(g.R == gi.R && g.mean_norm == gi.mean_norm && g.rms_token_norm == gi.rms_token_norm &&
                  g.e_mean == gi.e_mean && g.top_count == gi.top_count && g.rho_median == gi.rho_median &&
                  g.rho_frac_half == gi.rho_frac_half,
              "%s: deferred vs at once: the non-iterative metrics differ (R %.17g/%.17g)", name, g.R, gi.R);
        for (int q = 0; q < ANALYSIS_NQ; q++)
            CHECK(g.q_rel_mse[q] == gi.q_rel_mse[q] && g.q_flushed[q] == gi.q_flushed[q],
                  "%s: deferred vs at once: NVFP4 metric %d differs", name, q);
        upd(g_defer.sigma1, rel(g.sigma1, gi.sigma1));
        upd(g_defer.cos, fabs(g.cos_mu_v1 - gi.cos_mu_v1));
        upd(g_defer.spike, fabs(g.e_spike - gi.e_spike));
        g_defer.n++;
    }
    {
        analysis_metrics &g = gi; /* graph vs direct on the path without deferral */
        int same = memcmp(&g, &gd, sizeof g) == 0 && infoi.iters == infod.iters;
        g_graph.n++;
        g_graph.same += same;
        auto near = [](double x, double y) { return fabs(x - y) <= 1e-6 * fmax(fabs(y), 1e-30) + 1e-12; };
        CHECK(g.R == gd.R && g.mean_norm == gd.mean_norm && g.rms_token_norm == gd.rms_token_norm &&
                  g.e_mean == gd.e_mean && g.top_count == gd.top_count && g.rho_median == gd.rho_median &&
                  g.rho_frac_half == gd.rho_frac_half,
              "%s: graph vs direct: the non-iterative metrics differ", name);
        for (int q = 0; q < ANALYSIS_NQ; q++)
            CHECK(g.q_rel_mse[q] == gd.q_rel_mse[q] && g.q_flushed[q] == gd.q_flushed[q],
                  "%s: graph vs direct: NVFP4 metric %d differs", name, q);
        CHECK(near(g.sigma1, gd.sigma1) && near(g.cos_mu_v1, gd.cos_mu_v1) && near(g.e_spike, gd.e_spike) &&
                  near(g.e_tail, gd.e_tail),
              "%s: graph vs direct: sigma1 %.9g/%.9g cos %.9g/%.9g spike %.9g/%.9g", name, g.sigma1, gd.sigma1,
              g.cos_mu_v1, gd.cos_mu_v1, g.e_spike, gd.e_spike);
    }
    g_worst.ntensor++;
    g_worst.ms += ms;
    double gap = c.sigma1 > 0 ? info.sigma2 / g.sigma1 : 1.0;
    printf("  %-28s %6lld x %-6lld R %.4f/%.4f  s1 %.4g/%.4g  cos %.4f/%.4f (s2/s1 %.3f)  spike %.4f/%.4f  rho %.4f/%.4f"
           "  mse %.4g/%.4g  conv %.1e it %d  %.2f ms\n",
           name, (long long)l, (long long)m, g.R, c.R, g.sigma1, c.sigma1, g.cos_mu_v1, c.cos_mu_v1, gap, g.e_spike,
           c.e_spike, g.rho_median, c.rho_median, g.q_rel_mse[0], c.q_rel_mse[0], info.conv1, info.iters, ms);
    auto chk_rel = [&](const char *what, double gv, double cv, double tol, double abs_floor, double &w) {
        double d = fabs(gv - cv) <= abs_floor ? 0.0 : rel(gv, cv);
        upd(w, d);
        CHECK(d <= tol, "%s: %s GPU %.9g CPU %.9g (rel %.3g > %.3g)", name, what, gv, cv, d, tol);
    };
    auto chk_abs = [&](const char *what, double gv, double cv, double tol, double &w) {
        double d = fabs(gv - cv);
        upd(w, d);
        CHECK(d <= tol, "%s: %s GPU %.9g CPU %.9g (abs %.3g > %.3g)", name, what, gv, cv, d, tol);
    };
    CHECK(g.rows == c.rows && g.cols == c.cols && g.spike_k == c.spike_k, "%s: shape/k differ", name);
    chk_rel("R", g.R, c.R, 1e-5, 1e-9, g_worst.R);
    chk_rel("mean_norm", g.mean_norm, c.mean_norm, 1e-5, 1e-12 * c.rms_token_norm, g_worst.mean_norm);
    chk_rel("rms_token_norm", g.rms_token_norm, c.rms_token_norm, 1e-5, 0, g_worst.rms);
    int conv = info.conv1 <= 1e-2; /* σ₁² converges as conv1², v₁'s angle as conv1 */
    g_worst.nconv += conv;
    chk_rel("sigma1", g.sigma1, c.sigma1, conv ? 1e-3 : 3e-2, 0, conv ? g_worst.sigma1 : g_worst.sigma1_loose);
    if (conv && gap <= 0.9) {
        g_worst.ncos++;
        chk_abs("cos_mu_v1", g.cos_mu_v1, c.cos_mu_v1, 0.01, g_worst.cos);
    }
    chk_abs("e_mean", g.e_mean, c.e_mean, 1e-5, g_worst.e_mean);
    chk_abs("e_spike", g.e_spike, c.e_spike, 0.01, g_worst.e_spike);
    chk_abs("e_tail", g.e_tail, c.e_tail, 0.01, g_worst.e_tail);
    CHECK(g.top_count == c.top_count, "%s: top_count GPU %lld CPU %lld", name, (long long)g.top_count,
          (long long)c.top_count);
    chk_rel("rho_median", g.rho_median, c.rho_median, 1e-5, 1e-12, g_worst.rho_med);
    chk_abs("rho_frac_half", g.rho_frac_half, c.rho_frac_half, 1e-6, g_worst.rho_half);
    for (int q = 0; q < ANALYSIS_NQ; q++) {
        char what[64];
        snprintf(what, sizeof what, "relmse_%s", analysis_quant_name(q));
        chk_rel(what, g.q_rel_mse[q], c.q_rel_mse[q], 1e-4, 1e-12, g_worst.mse);
        snprintf(what, sizeof what, "flushed_%s", analysis_quant_name(q));
        chk_abs(what, g.q_flushed[q], c.q_flushed[q], 1e-7, g_worst.flushed);
    }
}

/* x_tj = bias·μ_j + noise, spike columns scaled up */
std::vector<float> synth(int64_t l, int64_t m, double bias, int spikes, double spike_scale, uint64_t seed) {
    rng r{seed * 0x9E3779B97F4A7C15ull + 1};
    std::vector<double> mu((size_t)m);
    for (auto &v : mu) v = r.normal();
    std::vector<float> X((size_t)(l * m));
    for (int64_t t = 0; t < l; t++)
        for (int64_t j = 0; j < m; j++) {
            double v = bias * mu[(size_t)j] + r.normal();
            if (j < spikes) v *= spike_scale;
            X[(size_t)(t * m + j)] = (float)v;
        }
    return X;
}

/* an LM-head-like gradient: softmax − onehot rows, scaled 1/l */
std::vector<float> dlogits(int64_t l, int64_t m) {
    rng r{99};
    std::vector<float> X((size_t)(l * m));
    for (int64_t t = 0; t < l; t++) {
        double z = 0;
        std::vector<double> p((size_t)m);
        for (int64_t j = 0; j < m; j++) z += p[(size_t)j] = exp(2.0 * r.normal() - 0.002 * (double)j);
        int64_t tgt = (int64_t)(r.u() * (double)m) % m;
        for (int64_t j = 0; j < m; j++) X[(size_t)(t * m + j)] = (float)((p[(size_t)j] / z - (j == tgt)) / (double)l);
    }
    return X;
}

/* small shapes (also what memcheck runs) */
void test_small() {
    compare("gauss 512x64", synth(512, 64, 0.0, 0, 1, 1), 512, 64, 0);
    compare("mean 512x64", synth(512, 64, 2.0, 0, 1, 2), 512, 64, 0);
    compare("odd cols 1000x40", synth(1000, 40, 0.7, 2, 5.0, 4), 1000, 40, 0);
    compare("bf16 ties 512x128", synth(512, 128, 1.5, 3, 8.0, 5), 512, 128, 1);
    compare("wide 64x1024", synth(64, 1024, 0.5, 0, 1, 8), 64, 1024, 0);
    compare("zeros 64x32", std::vector<float>(64 * 32, 0.0f), 64, 32, 0);
    std::vector<float> one(16, 0.0f);
    one[5] = 3.0f;
    compare("single row 1x16", one, 1, 16, 0);
    /* the sampled select's fallback: 3 % of the magnitudes tie at the top (more
     * candidates than its buffer holds), and every magnitude the same */
    std::vector<float> ties = synth(1024, 256, 0.5, 0, 1, 13);
    for (size_t i = 0; i < ties.size(); i += 33) ties[i] = i % 2 ? 7.0f : -7.0f;
    compare("top ties 1024x256", ties, 1024, 256, 0);
    std::vector<float> pm(512 * 64);
    for (size_t i = 0; i < pm.size(); i++) pm[i] = (i * 2654435761u >> 7) % 2 ? 1.0f : -1.0f;
    compare("all +-1 512x64", pm, 512, 64, 0);
}

void test_synthetic() {
    compare("mean+spikes 2048x768", synth(2048, 768, 1.0, 4, 20.0, 3), 2048, 768, 0);
    compare("bf16 ties 1024x256", synth(1024, 256, 1.5, 3, 8.0, 5), 1024, 256, 1);
    compare("wide 256x4096", synth(256, 4096, 0.5, 0, 1, 6), 256, 4096, 0);
    compare("tall 8192x48", synth(8192, 48, 3.0, 1, 4.0, 7), 8192, 48, 0);
    compare("dlogits 1024x2048", dlogits(1024, 2048), 1024, 2048, 0);
}

/* the code paths the default shapes do not reach: the panel iteration
 * (AVERIS_ANALYSIS_GRAM=0; the default takes it above 4096 columns), the
 * Cholesky's global-memory R (AVERIS_ANALYSIS_CHOL_GLOBAL=1; the default
 * takes it above ~230 vectors), and spike blocks of 33…64 vectors (512
 * threads, two right-hand-side rows a lane) */
void test_paths() {
    setenv("AVERIS_ANALYSIS_GRAM", "0", 1);
    compare("panel mean+spikes 2048x768", synth(2048, 768, 1.0, 4, 20.0, 3), 2048, 768, 0);
    compare("panel odd cols 1000x40", synth(1000, 40, 0.7, 2, 5.0, 4), 1000, 40, 0);
    compare("panel wide 256x4096", synth(256, 4096, 0.5, 0, 1, 6), 256, 4096, 0);
    /* a BF16 tensor on the panel path (the LM head's gradient): its iteration on
     * BF16 tensor cores, Rayleigh–Ritz in fp32 */
    compare("panel bf16 ties 1024x256", synth(1024, 256, 1.5, 3, 8.0, 5), 1024, 256, 1);
    compare("panel bf16 mean+spikes 2048x768", synth(2048, 768, 1.0, 4, 20.0, 3), 2048, 768, 1);
    compare("panel bf16 dlogits 1024x2048", dlogits(1024, 2048), 1024, 2048, 1);
    unsetenv("AVERIS_ANALYSIS_GRAM");
    setenv("AVERIS_ANALYSIS_CHOL_GLOBAL", "1", 1); /* the path without deferral's */
    setenv("AVERIS_ANALYSIS_DEFER", "0", 1);
    compare("chol global mean 2048x768", synth(2048, 768, 1.0, 4, 20.0, 3), 2048, 768, 0);
    compare("chol global wide 256x4096", synth(256, 4096, 0.5, 0, 1, 6), 256, 4096, 0);
    unsetenv("AVERIS_ANALYSIS_DEFER");
    unsetenv("AVERIS_ANALYSIS_CHOL_GLOBAL");
    /* k = 40: p2 = 48 (the old shared-memory limit); k = 49: p2 = 57 */
    compare("p2 48 4000x4000", synth(4000, 4000, 0.8, 6, 6.0, 11), 4000, 4000, 0);
    setenv("AVERIS_ANALYSIS_GRAM", "8192", 1);
    compare("gram p2 57 4900x4900", synth(4900, 4900, 0.8, 6, 6.0, 12), 4900, 4900, 0);
    unsetenv("AVERIS_ANALYSIS_GRAM");
}

struct tap_store {
    std::vector<std::string> names;
    std::vector<std::vector<float>> x;
    std::vector<int64_t> rows, cols;
};

void collect(void *ctx, int layer, const char *kind, const float *x, int64_t rows, int64_t cols) {
    tap_store *s = static_cast<tap_store *>(ctx);
    if (layer != 0 && layer != 1) return;
    char nm[96];
    snprintf(nm, sizeof nm, "L%d %s", layer, kind);
    s->names.push_back(nm);
    s->x.emplace_back(x, x + rows * cols);
    s->rows.push_back(rows);
    s->cols.push_back(cols);
}

int init_tiny(model *m, const char *recipe, int B, int T, std::vector<int> &in, std::vector<int> &tg) {
    model_config cfg;
    if (model_config_load("tiny", &cfg) || model_create(m, &cfg) || qlin_recipe_parse(recipe, &m->recipe)) {
        CHECK(0, "tiny model: %s", averis_last_error());
        return 0;
    }
    model_init_weights(m, 7);
    in.resize((size_t)B * T), tg.resize((size_t)B * T);
    rng r{5};
    for (auto &v : in) v = (int)(r.u() * cfg.vocab_size) % cfg.vocab_size;
    for (size_t i = 0; i < tg.size(); i++) tg[i] = i + 1 < in.size() ? in[i + 1] : in[0];
    return 1;
}

void test_model_taps() {
    model m;
    std::vector<int> in, tg;
    int B = 4, T = 64;
    if (!init_tiny(&m, "averis", B, T, in, tg)) return;
    tap_store s;
    m.tap = collect;
    m.tap_ctx = &s;
    float loss;
    averis_status st = model_forward(&m, in.data(), tg.data(), B, T, &loss);
    if (!st) st = model_backward(&m, 1.0f, 0);
    m.tap = nullptr;
    CHECK(!st, "tiny forward/backward: %s", averis_last_error());
    for (size_t i = 0; i < s.x.size(); i++) compare(s.names[i].c_str(), s.x[i], s.rows[i], s.cols[i], 0);
    model_free(&m);
}

/* the GPU model's rows against the CPU model's (fp32 activations, bf16 recipe) */
struct rows_t {
    std::vector<std::string> key;
    std::vector<double> R;
};
rows_t read_rows(FILE *f) {
    rows_t r;
    rewind(f);
    char line[4096];
    if (!fgets(line, sizeof line, f)) return r;
    while (fgets(line, sizeof line, f)) {
        char kind[64];
        int layer;
        long long rows, cols;
        double R;
        if (sscanf(line, "%d,%63[^,],%lld,%lld,%lf", &layer, kind, &rows, &cols, &R) == 5) {
            r.key.push_back(std::to_string(layer) + "," + kind);
            r.R.push_back(R);
        }
    }
    return r;
}

void test_model_rows() {
    model m;
    std::vector<int> in, tg;
    int B = 4, T = 64;
    if (!init_tiny(&m, "bf16", B, T, in, tg)) return;
    FILE *fc = tmpfile(), *fg = tmpfile();
    analysis_csv_header(fc, "layer,kind");
    analysis_csv_header(fg, "layer,kind");
    averis_status st = analysis_model_rows(&m, in.data(), tg.data(), B, T, fc, "", 0, nullptr);
    CHECK(!st, "CPU rows: %s", averis_last_error());
    avc_model *g = nullptr;
    avc_model_opts o = {AVC_ACT_FP32, AVC_ATTN_AUTO, nullptr};
    avc_analysis *a = nullptr;
    if (!st) st = avc_model_create(&g, &m, B, T, &o);
    if (!st) st = avc_analysis_create(&a, avc_model_stream(g));
    if (!st) st = avc_analysis_model_rows(g, a, in.data(), tg.data(), fg, "", 0, nullptr);
    CHECK(!st, "GPU rows: %s", averis_last_error());
    /* the same rows without deferral: the same tensors in the same order, R bit for bit */
    FILE *fi = tmpfile();
    analysis_csv_header(fi, "layer,kind");
    if (!st) {
        setenv("AVERIS_ANALYSIS_DEFER", "0", 1);
        st = avc_analysis_model_rows(g, a, in.data(), tg.data(), fi, "", 0, nullptr);
        unsetenv("AVERIS_ANALYSIS_DEFER");
        CHECK(!st, "GPU rows without deferral: %s", averis_last_error());
    }
    rows_t rc = read_rows(fc), rg = read_rows(fg), ri = read_rows(fi);
    CHECK(ri.key == rg.key, "GPU rows: deferred %zu rows, at once %zu, or in another order", rg.key.size(), ri.key.size());
    if (ri.key == rg.key)
        for (size_t i = 0; i < rg.key.size(); i++)
            CHECK(ri.R[i] == rg.R[i], "row %s: R deferred %.17g, at once %.17g", rg.key[i].c_str(), rg.R[i], ri.R[i]);
    fclose(fi);
    int L = m.cfg.num_hidden_layers;
    /* the CPU's 8 kinds + resid_attn, resid_ffn, grad_attn_q/k/v per layer, + grad_lm_head */
    CHECK((int)rc.key.size() == 8 * L, "CPU rows %zu, expected %d", rc.key.size(), 8 * L);
    CHECK((int)rg.key.size() == 13 * L + 1, "GPU rows %zu, expected %d", rg.key.size(), 13 * L + 1);
    int matched = 0;
    double wr = 0;
    for (size_t i = 0; i < rc.key.size(); i++)
        for (size_t j = 0; j < rg.key.size(); j++)
            if (rc.key[i] == rg.key[j]) {
                matched++;
                double d = fabs(rg.R[j] - rc.R[i]);
                wr = d > wr ? d : wr;
                CHECK(d <= 1e-3 + 1e-2 * rc.R[i], "row %s: R GPU %.6g CPU %.6g", rc.key[i].c_str(), rg.R[j], rc.R[i]);
            }
    CHECK(matched == (int)rc.key.size(), "GPU rows hold %d of the CPU's %zu (layer, kind)", matched, rc.key.size());
    printf("  model rows: %zu CPU, %zu GPU, %d matched, max |dR| %.3g\n", rc.key.size(), rg.key.size(), matched, wr);
    /* BF16 activations: the deferred taps' copies alternate (the second stream may lag
     * behind the model); their rows against the path without deferral, R bit for bit */
    avc_model *gb = nullptr;
    avc_model_opts ob = {AVC_ACT_BF16, AVC_ATTN_AUTO, nullptr};
    FILE *fb = tmpfile(), *fbi = tmpfile();
    analysis_csv_header(fb, "layer,kind");
    analysis_csv_header(fbi, "layer,kind");
    averis_status sb = avc_model_create(&gb, &m, B, T, &ob);
    avc_analysis *ab = nullptr;
    if (!sb) sb = avc_analysis_create(&ab, avc_model_stream(gb));
    for (int rep = 0; rep < 2 && !sb; rep++) /* twice: the second time every buffer exists */
        sb = avc_analysis_model_rows(gb, ab, in.data(), tg.data(), fb, "", 0, nullptr);
    if (!sb) {
        setenv("AVERIS_ANALYSIS_DEFER", "0", 1);
        sb = avc_analysis_model_rows(gb, ab, in.data(), tg.data(), fbi, "", 0, nullptr);
        unsetenv("AVERIS_ANALYSIS_DEFER");
    }
    CHECK(!sb, "GPU rows, BF16 activations: %s", averis_last_error());
    rows_t rb = read_rows(fb), rbi = read_rows(fbi);
    CHECK(rb.key.size() == 2 * rbi.key.size() && !rbi.key.empty(), "BF16 rows: %zu deferred (two steps), %zu at once",
          rb.key.size(), rbi.key.size());
    int bsame = 0;
    for (size_t i = 0; i < rbi.key.size() && rb.key.size() == 2 * rbi.key.size(); i++) {
        const size_t i2 = i + rbi.key.size(); /* the second step's row */
        CHECK(rb.key[i2] == rbi.key[i] && rb.R[i2] == rbi.R[i] && rb.R[i] == rbi.R[i],
              "BF16 row %s: R deferred %.17g/%.17g, at once %.17g", rbi.key[i].c_str(), rb.R[i], rb.R[i2], rbi.R[i]);
        bsame += rb.R[i2] == rbi.R[i];
    }
    printf("  BF16 activations: %d of %zu rows' R the same deferred and at once\n", bsame, rbi.key.size());
    fclose(fb), fclose(fbi);
    avc_analysis_free(ab);
    avc_model_free(gb);
    avc_analysis_free(a);
    avc_model_free(g);
    fclose(fc), fclose(fg);
    model_free(&m);
}

const test_case k_tests[] = {
    {"small", test_small},
    {"synthetic", test_synthetic},
    {"paths", test_paths},
    {"model_taps", test_model_taps},
    {"model_rows", test_model_rows},
};

} // namespace

int main(int argc, char **argv) {
    tool_device_init("test_analysis_gpu");
    if (cudaStreamCreate(&g_stream) != cudaSuccess || avc_analysis_create(&g_ana, g_stream)) {
        fprintf(stderr, "test_analysis_gpu: %s\n", averis_last_error());
        return 1;
    }
    int passed = 0, failed = 0;
    run_device_tests(k_tests, sizeof k_tests / sizeof k_tests[0], argc > 1 ? argv[1] : nullptr, &passed, &failed);
    const worst &w = g_worst;
    printf("largest deviations over %d tensors (%d converged, conv1 <= 1e-2; cos on %d of them with s2/s1 <= 0.9): "
           "R %.2g rel, |mu| %.2g rel, rms %.2g rel, sigma1 %.2g rel (unconverged %.2g), cos %.2g, e_mean %.2g, e_spike %.2g, e_tail %.2g, rho median %.2g rel, rho share %.2g, "
           "relmse %.2g rel, flushed %.2g; GPU %.3f ms per tensor\n",
           w.ntensor, w.nconv, w.ncos, w.R, w.mean_norm, w.rms, w.sigma1, w.sigma1_loose, w.cos, w.e_mean, w.e_spike, w.e_tail, w.rho_med,
           w.rho_half, w.mse, w.flushed, w.ntensor ? w.ms / w.ntensor : 0.0);
    printf("graphs vs direct stages: %d of %d tensors bit-identical\n", g_graph.same, g_graph.n);
    printf("deferred (batched) vs at once, %d tensors: sigma1 %.2g rel, cos %.2g, e_spike %.2g (the other metrics bit for bit)\n",
           g_defer.n, g_defer.sigma1, g_defer.cos, g_defer.spike);
    avc_analysis_free(g_ana);
    cudaStreamDestroy(g_stream);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
