/* fused_check.cu — the fewer-pass quantization paths (quant_fused.cuh)
 * against the paths they replace, bit for bit (registered in test_cuda.cu,
 * group "fused"):
 *   quant_d            cq_quantize_dual = cq_quantize(rows); cq_quantize(copy):
 *                      codes, scales, amaxes, BF16 operands, row sums, for
 *                      every recipe's (RHT, SR, mean split, known amax)
 *                      combination, shapes with l not a multiple of 16/64 and
 *                      n not a multiple of 64, the adversarial patterns,
 *                      aligned and unaligned D (ld > n, an odd offset), and
 *                      a pair it does not fuse (the fallback)
 *   qlinear_backward   avc_qlin_backward's dX and dW, fused vs
 *                      cq_set_fused_quant(0), per recipe
 *   producer_amax_*    the amax the RMSNorm / SwiGLU kernels reduce = the
 *                      quantizer's own amax pass over their (fp32 or BF16)
 *                      output, and the output itself unchanged
 *   model_step         3 training steps (AdamW between) of tiny (fp32 and BF16
 *                      activations) and moe-tiny (BF16): the same loss bits
 *                      and last gradient bits, switch on vs off
 */
#include "quant_fused.cuh"
#include "quant_block.cuh"
#include "norm.cuh"
#include "swiglu.cuh"
#include "../../dev/cuda/tool_util.cuh"
#include "averis/half.h"
#include "averis/qlinear.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "../check.h"
}
#include "model_steps.cuh"

/* one set of outputs of the two jobs (device), prefilled with the same junk */
struct dual_out {
    float *amax_r, *amax_t, *rowsum;
    uint8_t *codes_r, *scales_r, *codes_t, *scales_t;
    __nv_bfloat16 *bf16_r, *bf16_t;
    size_t n_codes_r, n_scales_r, n_codes_t, n_scales_t, n_bf16_r, n_bf16_t, n_rowsum;
};

static void dual_alloc(dual_out *o, int64_t l, int64_t n, int64_t kp) {
    int64_t lp = (l + 15) / 16 * 16;
    o->n_codes_r = (size_t)(l * n / 2), o->n_scales_r = (size_t)(l * n / 16);
    o->n_codes_t = (size_t)(n * lp / 2), o->n_scales_t = (size_t)(n * lp / 16);
    o->n_bf16_r = (size_t)(l * n), o->n_bf16_t = (size_t)(n * kp), o->n_rowsum = (size_t)n;
    DEV(cudaMalloc(&o->amax_r, 4)); DEV(cudaMalloc(&o->amax_t, 4)); DEV(cudaMalloc(&o->rowsum, o->n_rowsum * 4));
    DEV(cudaMalloc(&o->codes_r, o->n_codes_r)); DEV(cudaMalloc(&o->scales_r, o->n_scales_r));
    DEV(cudaMalloc(&o->codes_t, o->n_codes_t)); DEV(cudaMalloc(&o->scales_t, o->n_scales_t));
    DEV(cudaMalloc(&o->bf16_r, o->n_bf16_r * 2)); DEV(cudaMalloc(&o->bf16_t, o->n_bf16_t * 2));
    DEV(cudaMemset(o->amax_r, 0x5A, 4)); DEV(cudaMemset(o->amax_t, 0x5A, 4)); DEV(cudaMemset(o->rowsum, 0x5A, o->n_rowsum * 4));
    DEV(cudaMemset(o->codes_r, 0xAB, o->n_codes_r)); DEV(cudaMemset(o->scales_r, 0xAB, o->n_scales_r));
    DEV(cudaMemset(o->codes_t, 0xAB, o->n_codes_t)); DEV(cudaMemset(o->scales_t, 0xAB, o->n_scales_t));
    DEV(cudaMemset(o->bf16_r, 0xCD, o->n_bf16_r * 2)); DEV(cudaMemset(o->bf16_t, 0xCD, o->n_bf16_t * 2));
}

static void dual_free(dual_out *o) {
    cudaFree(o->amax_r); cudaFree(o->amax_t); cudaFree(o->rowsum);
    cudaFree(o->codes_r); cudaFree(o->scales_r); cudaFree(o->codes_t); cudaFree(o->scales_t);
    cudaFree(o->bf16_r); cudaFree(o->bf16_t);
}

/* every output of a against b; what names the case */
static void dual_compare(const dual_out &a, const dual_out &b, const char *what) {
    struct { const char *name; const void *x, *y; size_t bytes; int is_float; } f[] = {
        {"rows amax", a.amax_r, b.amax_r, 4, 1},
        {"copy amax", a.amax_t, b.amax_t, 4, 1},
        {"row sums", a.rowsum, b.rowsum, a.n_rowsum * 4, 1},
        {"rows codes", a.codes_r, b.codes_r, a.n_codes_r, 0},
        {"rows scales", a.scales_r, b.scales_r, a.n_scales_r, 0},
        {"copy codes", a.codes_t, b.codes_t, a.n_codes_t, 0},
        {"copy scales", a.scales_t, b.scales_t, a.n_scales_t, 0},
        {"rows BF16", a.bf16_r, b.bf16_r, a.n_bf16_r * 2, 0},
        {"copy BF16", a.bf16_t, b.bf16_t, a.n_bf16_t * 2, 0},
    };
    for (const auto &e : f) {
        std::vector<uint8_t> hx = host_copy(static_cast<const uint8_t *>(e.x), e.bytes),
                             hy = host_copy(static_cast<const uint8_t *>(e.y), e.bytes);
        int64_t d = tool_first_diff(hx.data(), hy.data(), e.bytes, e.is_float);
        CHECK(d < 0, "%s: %s differ at %s %lld", what, e.name, e.is_float ? "element" : "byte", (long long)d);
    }
}

/* The jobs as cl_backward makes them (cl_kp: lp + 16 with the split), with
 * every optional output on; shared_amax: the copy takes the rows' amax
 * when no RHT (cl_backward's), else it computes its own. */
static void dual_jobs(const float *D, int64_t l, int64_t n, int64_t ld, int rht, int sr, const float *mean,
                      const float *res_amax, int shared_amax, const dual_out &o, cq_job *jr, cq_job *jt) {
    int64_t lp = (l + 15) / 16 * 16, kp = mean ? lp + 16 : lp;
    *jr = cq_job{}, *jt = cq_job{};
    jr->src = D, jr->srows = l, jr->scols = n, jr->ld = ld;
    jr->sr = sr, jr->seed = 77, jr->stream = 2 * 5;
    jr->mean = mean, jr->amax_in = mean ? res_amax : nullptr;
    jr->amax = o.amax_r, jr->codes = o.codes_r, jr->scales = o.scales_r, jr->bf16_out = o.bf16_r, jr->ld_out = n;
    jt->src = D, jt->srows = l, jt->scols = n, jt->ld = ld, jt->transpose = 1;
    jt->rht = rht, jt->sr = sr, jt->seed = 77, jt->stream = 2 * 5 + 1;
    jt->mean = mean, jt->amax_in = !rht && shared_amax ? o.amax_r : nullptr;
    jt->amax = o.amax_t, jt->codes = o.codes_t, jt->scales = o.scales_t, jt->bf16_out = o.bf16_t, jt->ld_out = kp;
    jt->rowsum = o.rowsum;
}

void test_fused_quant_d(void) {
    trng r = {4242};
    /* l × n: l below, at and past 16/64 multiples; n multiples of 16, some not of 64 */
    const int64_t shapes[][2] = {{1, 16}, {15, 48}, {64, 64}, {100, 80}, {129, 208}, {1000, 272}, {4097, 48}};
    int compared = 0;
    for (const auto &sh : shapes) {
        int64_t l = sh[0], n = sh[1];
        for (int pat = 0; pat < TEST_NPATTERNS; pat++) {
            /* layout: aligned ld = n; and for the random pattern (0) also ld = n + 3 and D one float off
             * 16 bytes (both: the scalar loads); (the count bounded for device_check.sh's memcheck run) */
            for (int layout = 0; layout < (pat == 0 ? 3 : 1); layout++) {
                int64_t ld = layout == 1 ? n + 3 : n, off = layout == 2 ? 1 : 0;
                std::vector<float> x((size_t)(l * ld + off));
                std::vector<float> dense((size_t)(l * n));
                test_fill_pattern(dense.data(), (long)(l * n), (long)n, pat, &r);
                for (int64_t t = 0; t < l; t++)
                    for (int64_t j = 0; j < ld; j++) x[off + t * ld + j] = j < n ? dense[t * n + j] : 1e30f; /* gaps: poison */
                float *dbuf = dev_copy(x.data(), x.size()), *D = dbuf + off;
                float *mean, *res;
                DEV(cudaMalloc(&mean, n * 4));
                DEV(cudaMalloc(&res, 4));
                CHECK(cq_colstats(D, 0, l, n, ld, mean, res, nullptr, nullptr, 0) == AVERIS_OK, "colstats: %s",
                      averis_last_error());
                /* variant bits: rht, sr, mean split, shared amax */
                for (int variant = 0; variant < 16; variant++) {
                    int rht = variant & 1, sr = (variant >> 1) & 1, split = (variant >> 2) & 1, shared = (variant >> 3) & 1;
                    int64_t lp = (l + 15) / 16 * 16, kp = split ? lp + 16 : lp;
                    dual_out a, b;
                    dual_alloc(&a, l, n, kp);
                    dual_alloc(&b, l, n, kp);
                    cq_job ja, jta, jb, jtb;
                    dual_jobs(D, l, n, ld, rht, sr, split ? mean : nullptr, res, shared, a, &ja, &jta);
                    dual_jobs(D, l, n, ld, rht, sr, split ? mean : nullptr, res, shared, b, &jb, &jtb);
                    CHECK(cq_dual_fusable(&jb, &jtb), "the pair is fusable (%lldx%lld variant %d)", (long long)l,
                          (long long)n, variant);
                    CHECK(cq_quantize(&ja, 0) == AVERIS_OK && cq_quantize(&jta, 0) == AVERIS_OK, "two calls: %s",
                          averis_last_error());
                    CHECK(cq_quantize_dual(&jb, &jtb, 0) == AVERIS_OK, "dual: %s", averis_last_error());
                    DEV(cudaDeviceSynchronize());
                    char what[128];
                    snprintf(what, sizeof what, "%lldx%lld ld %lld%s pattern %d rht %d sr %d split %d shared %d",
                             (long long)l, (long long)n, (long long)ld, off ? " unaligned" : "", pat, rht, sr, split,
                             shared);
                    dual_compare(a, b, what);
                    dual_free(&a);
                    dual_free(&b);
                    compared++;
                }
                cudaFree(dbuf);
                cudaFree(mean);
                cudaFree(res);
            }
        }
    }
    printf("  fused D quantization: %d cases, every output compared\n", compared);
    CHECK(compared == 7 * (TEST_NPATTERNS + 2) * 16, "ran every case (%d)", compared);
    /* a pair it does not fuse (n % 16 != 0): the two calls, the same outputs */
    {
        const int64_t l = 33, n = 40, lp = 48;
        std::vector<float> x(l * n);
        for (auto &v : x) v = trng_normal(&r);
        float *D = dev_copy(x.data(), x.size());
        dual_out a, b;
        dual_alloc(&a, l, n, lp);
        dual_alloc(&b, l, n, lp);
        /* the rows of a 40-wide tensor pad to 48: room for the padded codes, scales and BF16 rows */
        cudaFree(a.codes_r), cudaFree(b.codes_r), cudaFree(a.scales_r), cudaFree(b.scales_r), cudaFree(a.bf16_r), cudaFree(b.bf16_r);
        a.n_codes_r = b.n_codes_r = (size_t)(l * 48 / 2), a.n_scales_r = b.n_scales_r = (size_t)(l * 3), a.n_bf16_r = b.n_bf16_r = (size_t)(l * 48);
        for (dual_out *o : {&a, &b}) {
            DEV(cudaMalloc(&o->codes_r, o->n_codes_r)); DEV(cudaMalloc(&o->scales_r, o->n_scales_r));
            DEV(cudaMalloc(&o->bf16_r, o->n_bf16_r * 2));
            DEV(cudaMemset(o->codes_r, 0xAB, o->n_codes_r)); DEV(cudaMemset(o->scales_r, 0xAB, o->n_scales_r));
            DEV(cudaMemset(o->bf16_r, 0xCD, o->n_bf16_r * 2));
        }
        cq_job ja, jta, jb, jtb;
        dual_jobs(D, l, n, n, 1, 1, nullptr, nullptr, 1, a, &ja, &jta);
        dual_jobs(D, l, n, n, 1, 1, nullptr, nullptr, 1, b, &jb, &jtb);
        ja.ld_out = jb.ld_out = 48;
        CHECK(!cq_dual_fusable(&jb, &jtb), "n = 40 is not fusable");
        CHECK(cq_quantize(&ja, 0) == AVERIS_OK && cq_quantize(&jta, 0) == AVERIS_OK, "two calls: %s", averis_last_error());
        CHECK(cq_quantize_dual(&jb, &jtb, 0) == AVERIS_OK, "dual (fallback): %s", averis_last_error());
        DEV(cudaDeviceSynchronize());
        dual_compare(a, b, "33x40 (the fallback)");
        dual_free(&a);
        dual_free(&b);
        cudaFree(D);
    }
}

/* dX and dW of the standalone layer, fused vs the two calls, per recipe */
void test_fused_qlinear_backward(void) {
    const char *recipes[] = {"nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    const int64_t shapes[][3] = {{100, 64, 48}, {256, 128, 96}, {1000, 256, 80}};
    trng rg = {99};
    int prev = cq_fused_quant();
    for (const auto &sh : shapes) {
        int64_t l = sh[0], m = sh[1], n = sh[2];
        std::vector<float> X(l * m), W(n * m), D(l * n);
        for (auto &v : X) v = trng_normal(&rg) + 0.7f;
        for (auto &v : W) v = 0.05f * trng_normal(&rg);
        for (auto &v : D) v = 1e-3f * trng_normal(&rg) + 2e-4f;
        float *dX_in = dev_copy(X.data(), X.size()), *dW_in = dev_copy(W.data(), W.size()), *dD = dev_copy(D.data(), D.size());
        float *gx[2], *gw[2];
        for (int k = 0; k < 2; k++) {
            DEV(cudaMalloc(&gx[k], l * m * 4));
            DEV(cudaMalloc(&gw[k], n * m * 4));
        }
        for (const char *name : recipes) {
            qlin_recipe rc;
            qlin_recipe_parse(name, &rc);
            rc.seed = 42;
            for (int k = 0; k < 2; k++) { /* k = 0: the two calls; 1: fused */
                cq_set_fused_quant(k);
                DEV(cudaMemset(gx[k], 0xFF, l * m * 4));
                DEV(cudaMemset(gw[k], 0, n * m * 4));
                CHECK(avc_qlin_backward(&rc, dX_in, dW_in, dD, l, m, n, gx[k], gw[k], 9) == AVERIS_OK, "%s backward: %s",
                      name, averis_last_error());
            }
            std::vector<float> x0 = host_copy(gx[0], l * m), x1 = host_copy(gx[1], l * m), w0 = host_copy(gw[0], n * m),
                               w1 = host_copy(gw[1], n * m);
            int64_t dx = tool_first_diff(x0.data(), x1.data(), x0.size() * 4, 0),
                    dw = tool_first_diff(w0.data(), w1.data(), w0.size() * 4, 0);
            CHECK(dx < 0 && dw < 0, "%s %lldx%lldx%lld: fused differs: dX byte %lld, dW byte %lld", name, (long long)l,
                  (long long)m, (long long)n, (long long)dx, (long long)dw);
            double s = 0;
            for (float v : w1) s += fabs(v);
            CHECK(s > 0, "%s: dW is all zero (the comparison would be empty)", name);
        }
        cudaFree(dX_in); cudaFree(dW_in); cudaFree(dD);
        for (int k = 0; k < 2; k++) cudaFree(gx[k]), cudaFree(gw[k]);
    }
    cq_set_fused_quant(prev);
}

/* the quantizer's amax pass (cq_quantize rows, no amax_in) over y [rows × d] */
static float quantizer_amax(const void *y, int bf16, int64_t rows, int64_t d) {
    float *am;
    __nv_bfloat16 *bf;
    DEV(cudaMalloc(&am, 4));
    DEV(cudaMalloc(&bf, (size_t)rows * ((d + 15) / 16 * 16) * 2));
    cq_job j = {};
    j.src = y, j.bf16_in = bf16, j.srows = rows, j.scols = d, j.ld = d;
    j.amax = am, j.bf16_out = bf, j.ld_out = (d + 15) / 16 * 16;
    CHECK(cq_quantize(&j, 0) == AVERIS_OK, "quantize: %s", averis_last_error());
    float h;
    DEV(cudaMemcpy(&h, am, 4, cudaMemcpyDeviceToHost));
    cudaFree(am);
    cudaFree(bf);
    return h;
}

template <typename Y> static void producer_rmsnorm_case(int64_t rows, int64_t d, int with_nan, trng *r) {
    std::vector<float> x(rows * d), w(d);
    for (auto &v : x) v = 3.0f * trng_normal(r) + 0.5f;
    for (auto &v : w) v = 1.0f + 0.3f * trng_normal(r);
    if (with_nan) x[(rows / 2) * d + 1] = NAN; /* a NaN row: ignored by both amaxes */
    float *dx = dev_copy(x.data(), x.size()), *dw = dev_copy(w.data(), w.size()), *rstd, *am;
    Y *y0, *y1;
    DEV(cudaMalloc(&rstd, rows * 4));
    DEV(cudaMalloc(&am, 4));
    DEV(cudaMalloc(&y0, rows * d * sizeof(Y)));
    DEV(cudaMalloc(&y1, rows * d * sizeof(Y)));
    DEV(cudaMemset(am, 0, 4));
    CHECK(cn_rmsnorm(dx, dw, y0, rstd, rows, d, 1e-6f, 0) == AVERIS_OK, "rmsnorm");
    CHECK(cn_rmsnorm(dx, dw, y1, rstd, rows, d, 1e-6f, 0, am) == AVERIS_OK, "rmsnorm + amax");
    DEV(cudaDeviceSynchronize());
    float got;
    DEV(cudaMemcpy(&got, am, 4, cudaMemcpyDeviceToHost));
    float want = quantizer_amax(y1, sizeof(Y) == 2, rows, d);
    std::vector<Y> h0 = host_copy(y0, rows * d), h1 = host_copy(y1, rows * d);
    CHECK(!memcmp(h0.data(), h1.data(), h0.size() * sizeof(Y)), "rmsnorm %lldx%lld: the output changed with the amax",
          (long long)rows, (long long)d);
    /* (one row holding the NaN is all NaN: both amaxes 0) */
    CHECK(!memcmp(&got, &want, 4) && (want > 0.0f || (with_nan && rows == 1)), "rmsnorm %lldx%lld %s%s: producer amax %a, quantizer's %a", (long long)rows,
          (long long)d, sizeof(Y) == 2 ? "bf16" : "fp32", with_nan ? " NaN" : "", (double)got, (double)want);
    cudaFree(dx); cudaFree(dw); cudaFree(rstd); cudaFree(am); cudaFree(y0); cudaFree(y1);
}

void test_fused_producer_amax_rmsnorm(void) {
    trng r = {8};
    const int64_t shapes[][2] = {{1, 16}, {7, 100}, {257, 64}, {1000, 1024}};
    for (const auto &s : shapes)
        for (int nan = 0; nan < 2; nan++) {
            producer_rmsnorm_case<float>(s[0], s[1], nan, &r);
            producer_rmsnorm_case<__nv_bfloat16>(s[0], s[1], nan, &r);
        }
}

/* v in the activation type (BF16: rounded to nearest even) */
static void act_from(float v, float *o) { *o = v; }
static void act_from(float v, __nv_bfloat16 *o) {
    uint16_t b = bf16_from_f32(v);
    memcpy(static_cast<void *>(o), &b, 2);
}

template <typename A> static void producer_swiglu_case(int64_t rows, int64_t F, int with_mean, int with_nan, trng *r) {
    int64_t n = rows * F;
    std::vector<float> g(n), u(n), mg(F), mu(F);
    for (auto &v : g) v = 2.0f * trng_normal(r);
    for (auto &v : u) v = 2.0f * trng_normal(r);
    for (auto &v : mg) v = 0.3f * trng_normal(r);
    for (auto &v : mu) v = 0.3f * trng_normal(r);
    if (with_nan) u[n / 3] = NAN;
    /* the inputs in the activation type */
    std::vector<A> ga(n), ua(n);
    for (int64_t i = 0; i < n; i++) act_from(g[i], &ga[i]), act_from(u[i], &ua[i]);
    A *dg = dev_copy(ga.data(), n), *du = dev_copy(ua.data(), n), *a0, *a1;
    float *dmg = dev_copy(mg.data(), F), *dmu = dev_copy(mu.data(), F), *am;
    DEV(cudaMalloc(&a0, n * sizeof(A)));
    DEV(cudaMalloc(&a1, n * sizeof(A)));
    DEV(cudaMalloc(&am, 4));
    DEV(cudaMemset(am, 0, 4));
    const float *pmg = with_mean ? dmg : nullptr, *pmu = with_mean ? dmu : nullptr;
    CHECK(cs_swiglu(dg, du, pmg, pmu, a0, n, F, 0) == AVERIS_OK, "swiglu");
    CHECK(cs_swiglu(dg, du, pmg, pmu, a1, n, F, 0, am) == AVERIS_OK, "swiglu + amax");
    DEV(cudaDeviceSynchronize());
    float got;
    DEV(cudaMemcpy(&got, am, 4, cudaMemcpyDeviceToHost));
    float want = quantizer_amax(a1, sizeof(A) == 2, rows, F);
    std::vector<A> h0 = host_copy(a0, n), h1 = host_copy(a1, n);
    CHECK(!memcmp(h0.data(), h1.data(), n * sizeof(A)), "swiglu %lldx%lld: the output changed with the amax", (long long)rows,
          (long long)F);
    CHECK(!memcmp(&got, &want, 4) && want > 0.0f, "swiglu %lldx%lld %s mean %d nan %d: producer amax %a, quantizer's %a",
          (long long)rows, (long long)F, sizeof(A) == 2 ? "bf16" : "fp32", with_mean, with_nan, (double)got, (double)want);
    cudaFree(dg); cudaFree(du); cudaFree(a0); cudaFree(a1); cudaFree(dmg); cudaFree(dmu); cudaFree(am);
}

void test_fused_producer_amax_swiglu(void) {
    trng r = {9};
    const int64_t shapes[][2] = {{1, 16}, {3, 100}, {129, 48}, {1000, 704}};
    for (const auto &s : shapes)
        for (int v = 0; v < 4; v++) {
            producer_swiglu_case<float>(s[0], s[1], v & 1, v >> 1, &r);
            producer_swiglu_case<__nv_bfloat16>(s[0], s[1], v & 1, v >> 1, &r);
        }
}

void test_fused_model_step(void) {
    const char *recipes[] = {"nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    const char *configs[] = {"tiny", "moe-tiny"};
    const avc_act acts[] = {AVC_ACT_FP32, AVC_ACT_BF16};
    int prev = cq_fused_quant();
    for (const char *config : configs)
        for (avc_act act : acts)
            for (const char *recipe : recipes) {
                if (act == AVC_ACT_FP32 && !strcmp(config, "moe-tiny")) continue; /* (bounded for memcheck) */
                std::vector<float> l0, l1, g0, g1;
                cq_set_fused_quant(0);
                gpu_model_steps(config, recipe, act, 3, 0, l0, nullptr, g0); /* g: the last step's gradient */
                cq_set_fused_quant(1);
                gpu_model_steps(config, recipe, act, 3, 0, l1, nullptr, g1);
                const char *an = act == AVC_ACT_BF16 ? "bf16 act" : "fp32 act";
                printf("  %-8s %-8s %-11s losses", config, an, recipe);
                for (size_t k = 0; k < l1.size(); k++) printf(" %.6f/%.6f", l0[k], l1[k]);
                printf("\n");
                CHECK(l0.size() == l1.size() && !memcmp(l0.data(), l1.data(), l0.size() * 4), "%s %s %s: losses differ",
                      config, an, recipe);
                CHECK(g0.size() == g1.size() && !g0.empty() && !memcmp(g0.data(), g1.data(), g0.size() * 4),
                      "%s %s %s: the third step's gradients differ (byte %lld)", config, an, recipe,
                      g0.size() == g1.size() ? (long long)tool_first_diff(g0.data(), g1.data(), g0.size() * 4, 0) : -2LL);
                CHECK(std::isfinite(l1.back()), "%s %s %s: loss %g", config, an, recipe, l1.back());
            }
    cq_set_fused_quant(prev);
}
