/* test_cuda.cu — the CUDA path against the CPU spec, on a GPU.
 *
 *   e2m1       the bit-trick E2M1 encoders = the spec's, on all 2^32 fp32 values
 *   quantize   bit-identical codes, scales and amax to nvfp4_quantize_ref over
 *              the adversarial corpus (tests/test_patterns.c) × shapes ×
 *              {1×16, 16×16} × RHT × mean split × SR × {fp32, bf16}, and the
 *              transposed wgrad copies with their BF16 operands and row sums
 *              (the kernel lab's other versions: build/quant_lab check)
 *   colstats   bit-identical mean, max, min and residual amax
 *   dequantize bit-identical to nvfp4_dequantize
 *   qlinear    forward, dgrad and wgrad per recipe within a stated relative
 *              error of qlin_forward / qlin_backward
 *   fused_*    the fewer-pass paths (quant_fused.cuh) = the ones they
 *              replace, bit for bit (fused_check.cu)
 *   dp_*       the backward's gradient segments for the bucketed all-reduce,
 *              ZeRO-1's moment windows (dp_check.cu)
 *   moe_*      the MoE experts' segmented quantization (seg.cuh) = the
 *              per-expert calls' bits; our grouped GEMM (grouped_gemm.cuh)
 *              against fp64 (grouped_gemm_check.cu); the segmented linears
 *              (qlinear_group.cuh) = the per-expert ones (mode 2) or close
 *              (mode 3, our grouped GEMM; mode 1, cuBLAS's); the model in
 *              the four AVERIS_MOE_GROUPED modes; the MoE model against the CPU
 * Ends with "N passed, N failed"; exit status 1 on any failure.
 */
#include "quant.cuh"
#include "seg.cuh"
#include "qlinear_group.cuh"
#include "grouped_gemm.cuh"
#include "flash.cuh"
#include "cudnn_att.cuh"
#include "nvfp4_device.cuh"
#include "../../dev/cuda/tool_util.cuh"
#include "averis/half.h"
#include "averis/qlinear.h"
#include "averis/model_spec.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "../check.h"
#include "run_tests.cuh"
}
#include "quant_corpus.cuh"

int g_check_failed;

/* ------------------------------------------------------------ quantize */
/* The GPU's bit-trick codecs against the spec (averis/nvfp4_spec.h), on
 * every fp32 value: the E2M1 encoders (RNE, and SR with three uniforms
 * each), the branch-free RNE round trip to the value (the analysis's); and the magnitudes of the 8 indices and the E4M3 decode of the
 * 256 codes (NaN = NaN). */
__global__ void k_e2m1_exhaustive(unsigned long long *bad, uint32_t *first) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (1ull << 32);
         i += (uint64_t)gridDim.x * blockDim.x) {
        uint32_t bits = (uint32_t)i, u = (bits * 2654435761u) >> 8;
        float x = __uint_as_float(bits);
        bool ok = avd_e2m1_rn(x) == nvfp4_spec_e2m1_rn(x) && avd_e2m1_sr(x, u) == nvfp4_spec_e2m1_sr(x, u) &&
                  avd_e2m1_sr(x, 0) == nvfp4_spec_e2m1_sr(x, 0) &&
                  avd_e2m1_sr(x, 0xFFFFFFu) == nvfp4_spec_e2m1_sr(x, 0xFFFFFFu) &&
                  __float_as_uint(avd_e2m1_rn_value(x)) == __float_as_uint(nvfp4_spec_e2m1_decode(nvfp4_spec_e2m1_rn(x)));
        if (i < 8) ok = ok && __float_as_uint(avd_e2m1_mag(bits)) == __float_as_uint(nvfp4_spec_e2m1_mag(bits));
        if (i < 256) {
            float d = avd_e4m3_decode(bits), s = nvfp4_spec_e4m3_decode(bits);
            ok = ok && (__float_as_uint(d) == __float_as_uint(s) || (isnan(d) && isnan(s)));
        }
        if (!ok && atomicAdd(bad, 1ull) == 0) *first = bits;
    }
}

static void test_e2m1_exhaustive(void) {
    unsigned long long *bad;
    uint32_t *first;
    DEV(cudaMalloc(&bad, 8));
    DEV(cudaMalloc(&first, 4));
    DEV(cudaMemset(bad, 0, 8));
    k_e2m1_exhaustive<<<1056, 256>>>(bad, first);
    DEV(cudaDeviceSynchronize());
    unsigned long long nbad = 0;
    uint32_t f = 0;
    DEV(cudaMemcpy(&nbad, bad, 8, cudaMemcpyDeviceToHost));
    DEV(cudaMemcpy(&f, first, 4, cudaMemcpyDeviceToHost));
    CHECK(nbad == 0, "bit-trick codecs differ from the spec on %llu fp32 values (one: 0x%08x)", nbad, f);
    printf("  E2M1 encoders: all 2^32 fp32 values, %llu differ\n", nbad);
    cudaFree(bad);
    cudaFree(first);
}

static void test_quantize_bitexact(void) {
    int compared = qcorpus_run(0, [](const qcorpus_case &c) {
        const nvfp4_opts &o = c.o;
        const nvfp4_tensor &ref = *c.ref;
        int64_t rows = c.rows, cols = c.cols, n = rows * cols;
        int pat = c.pat, variant = c.variant;
        nvfp4_tensor got;
        nvfp4_tensor_alloc(&got, rows, cols, o.block);
        avc_tensor t;
        CHECK(avc_tensor_alloc(&t, rows, cols, o.block) == AVERIS_OK, "alloc: %s", averis_last_error());
        DEV(cudaMemset(t.codes_dev, 0xAB, (size_t)(rows * t.cols_padded / 2)));
        avc_qopts q = {o.block, o.rht, o.sr, o.seed, o.stream, o.mean ? c.dmean : NULL};
        CHECK(avc_quantize(c.dsrc, c.dt, rows, cols, cols, &q, &t, NULL) == AVERIS_OK, "quantize: %s",
              averis_last_error());
        CHECK(avc_tensor_download(&t, &got) == AVERIS_OK, "download: %s", averis_last_error());
        int64_t ncodes = rows * ref.cols_padded / 2, nsc = nvfp4_scale_count(rows, cols, o.block);
        int64_t bad = -1;
        for (int64_t i = 0; i < ncodes && bad < 0; i++)
            if (ref.codes[i] != got.codes[i]) bad = i;
        CHECK(bad < 0, "codes differ: %lldx%lld pattern %d variant %d at byte %lld: want %02x got %02x",
              (long long)rows, (long long)cols, pat, variant, (long long)bad, bad < 0 ? 0 : ref.codes[bad],
              bad < 0 ? 0 : got.codes[bad]);
        CHECK(!memcmp(ref.scales, got.scales, (size_t)nsc), "scales differ: %lldx%lld pattern %d variant %d",
              (long long)rows, (long long)cols, pat, variant);
        CHECK(!memcmp(&ref.amax, &got.amax, 4), "amax differs: pattern %d variant %d: %a vs %a", pat, variant,
              (double)ref.amax, (double)got.amax);
        /* dequantize */
        if (!o.rht) {
            std::vector<float> dref(n);
            nvfp4_dequantize(&ref, 0, dref.data());
            float *dd;
            DEV(cudaMalloc(&dd, n * sizeof(float)));
            CHECK(avc_dequantize(&t, dd, NULL) == AVERIS_OK, "dequantize");
            std::vector<float> dgot = host_copy(dd, n);
            CHECK(!memcmp(dref.data(), dgot.data(), n * sizeof(float)), "dequantize differs: pattern %d variant %d",
                  pat, variant);
            cudaFree(dd);
        }
        avc_tensor_free(&t);
        nvfp4_tensor_free(&got);
    });
    printf("  quantize: %d tensors compared bit for bit\n", compared);
    CHECK(compared == k_nshapes * TEST_NPATTERNS * 24, "ran every comparison (%d)", compared);
}

/* The transposed wgrad copy: (x − μ)ᵀ quantized along tokens, its BF16
 * operand and its row sums, against the CPU on the host-transposed input. */
static void test_transposed_copies(void) {
    trng r = {99};
    int compared = 0;
    for (int s = 0; s < k_nshapes; s++) {
        int64_t rows = k_shapes[s][0], cols = k_shapes[s][1], n = rows * cols;
        std::vector<float> x(n), mean(cols), mx(cols), mn(cols);
        for (int pat = 0; pat < TEST_NPATTERNS; pat++) {
            if (pat == 7) continue; /* NaN rows make the row sums NaN on both sides: compared elsewhere */
            test_fill_pattern(x.data(), n, cols, pat, &r);
            nvfp4_colstats_ref(x.data(), rows, cols, cols, mean.data(), mx.data(), mn.data());
            float *dx = dev_copy(x.data(), n), *dmean = dev_copy(mean.data(), cols);
            for (int variant = 0; variant < 8; variant++) {
                int rht = variant & 1, use_mean = (variant >> 1) & 1, sr = (variant >> 2) & 1;
                std::vector<float> xt((size_t)cols * rows);
                for (int64_t t = 0; t < rows; t++)
                    for (int64_t j = 0; j < cols; j++) xt[j * rows + t] = use_mean ? x[t * cols + j] - mean[j] : x[t * cols + j];
                nvfp4_opts o = nvfp4_opts_default();
                o.rht = rht, o.sr = sr, o.seed = 7, o.stream = 11;
                nvfp4_tensor ref;
                nvfp4_tensor_alloc(&ref, cols, rows, NVFP4_BLOCK_1X16);
                nvfp4_quantize_ref(xt.data(), NVFP4_F32, cols, rows, rows, &o, &ref, NULL);
                int64_t lp = ref.cols_padded, kp = lp + 16;
                std::vector<float> deq((size_t)cols * lp);
                nvfp4_tensor wide = ref;
                wide.cols = lp;
                nvfp4_dequantize(&wide, 0, deq.data());
                std::vector<float> sum_ref(cols);
                std::vector<double> sum_abs(cols);
                for (int64_t j = 0; j < cols; j++) {
                    double acc = 0.0, aa = 0.0;
                    for (int64_t b0 = 0; b0 < lp; b0 += 16) {
                        float tok[16];
                        if (rht) nvfp4_rht16_inv_ref(&deq[j * lp + b0], tok);
                        else memcpy(tok, &deq[j * lp + b0], sizeof tok);
                        for (int i = 0; i < 16; i++) acc += tok[i], aa += fabs(tok[i]);
                    }
                    sum_ref[j] = (float)acc;
                    sum_abs[j] = aa;
                }
                avc_tensor t;
                avc_tensor_alloc(&t, cols, rows, NVFP4_BLOCK_1X16);
                __nv_bfloat16 *bf;
                float *dsum;
                DEV(cudaMalloc(&bf, (size_t)cols * kp * 2));
                DEV(cudaMalloc(&dsum, cols * sizeof(float)));
                DEV(cudaMemset(bf, 0xFF, (size_t)cols * kp * 2));
                cq_job j = {};
                j.src = dx, j.srows = rows, j.scols = cols, j.ld = cols, j.transpose = 1;
                j.rht = rht, j.sr = sr, j.seed = 7, j.stream = 11;
                j.mean = use_mean ? dmean : NULL;
                j.amax = t.amax_dev, j.codes = t.codes_dev, j.scales = t.scales_dev;
                j.bf16_out = bf, j.ld_out = kp, j.rowsum = dsum;
                CHECK(cq_quantize(&j, 0) == AVERIS_OK, "transposed quantize: %s", averis_last_error());
                nvfp4_tensor got;
                nvfp4_tensor_alloc(&got, cols, rows, NVFP4_BLOCK_1X16);
                avc_tensor_download(&t, &got);
                CHECK(!memcmp(ref.codes, got.codes, (size_t)(cols * lp / 2)) &&
                          !memcmp(ref.scales, got.scales, (size_t)(cols * lp / 16)) && ref.amax == got.amax,
                      "transposed copy differs: %lldx%lld pattern %d variant %d", (long long)rows, (long long)cols, pat,
                      variant);
                /* the BF16 operand times S_dec is the CPU's dequantized value */
                std::vector<uint16_t> hb = host_copy(reinterpret_cast<uint16_t *>(bf), (size_t)cols * kp);
                float s_enc, s_dec;
                nvfp4_global_scales(ref.amax, &s_enc, &s_dec);
                int64_t bad = -1;
                for (int64_t jj = 0; jj < cols && bad < 0; jj++)
                    for (int64_t c = 0; c < lp && bad < 0; c++) {
                        float v = bf16_to_f32(hb[jj * kp + c]) * s_dec;
                        float w = deq[jj * lp + c];
                        if (memcmp(&v, &w, 4) && !(std::isnan(v) && std::isnan(w))) bad = jj * lp + c;
                    }
                CHECK(bad < 0, "BF16 operand × S_dec differs from the CPU dequantization at %lld (pattern %d variant %d)",
                      (long long)bad, pat, variant);
                std::vector<float> hs = host_copy(dsum, cols);
                /* the error of a sum is relative to its terms' magnitudes (these sums cancel) */
                double worst = 0.0;
                for (int64_t jj = 0; jj < cols; jj++) {
                    double d = fabs((double)hs[jj] - sum_ref[jj]), sc = sum_abs[jj] + 1e-38;
                    if (!(d / sc <= worst)) worst = d / sc;
                }
                CHECK(worst <= 1e-6, "row sums: error %.3g of Σ|x| (pattern %d variant %d)", worst, pat, variant);
                compared++;
                cudaFree(bf);
                cudaFree(dsum);
                avc_tensor_free(&t);
                nvfp4_tensor_free(&ref);
                nvfp4_tensor_free(&got);
            }
            cudaFree(dx);
            cudaFree(dmean);
        }
    }
    printf("  transposed copies: %d compared\n", compared);
}

/* the device statistics in out [mean | max | min | residual amax] against
 * nvfp4_colstats_ref of the fp32 values x */
static void check_colstats(const char *what, const float *out_dev, const float *x, int64_t rows, int64_t cols, int pat) {
    std::vector<float> mean(cols), mx(cols), mn(cols);
    nvfp4_colstats_ref(x, rows, cols, cols, mean.data(), mx.data(), mn.data());
    float ra = nvfp4_residual_amax(mean.data(), mx.data(), mn.data(), cols);
    std::vector<float> h = host_copy(out_dev, 3 * cols + 1);
    /* NaN means (pattern 7: inf − inf) are NaN on both sides; their payload bits differ by ISA */
    int64_t bad = -1;
    for (int64_t j = 0; j < cols && bad < 0; j++)
        if (memcmp(&h[j], &mean[j], 4) && !(std::isnan(h[j]) && std::isnan(mean[j]))) bad = j;
    CHECK(bad < 0, "%s means differ: %lldx%lld pattern %d column %lld: %a vs %a", what, (long long)rows,
          (long long)cols, pat, (long long)bad, bad < 0 ? 0.0 : (double)mean[bad], bad < 0 ? 0.0 : (double)h[bad]);
    CHECK(!memcmp(h.data() + cols, mx.data(), cols * 4) && !memcmp(h.data() + 2 * cols, mn.data(), cols * 4),
          "%s max/min differ: pattern %d", what, pat);
    CHECK(!memcmp(h.data() + 3 * cols, &ra, 4), "%s residual amax differs: pattern %d: %a vs %a", what, pat, (double)ra,
          (double)h[3 * cols]);
}

static void test_colstats_bitexact(void) {
    trng r = {555};
    const int64_t shapes[][2] = {{1, 3}, {255, 17}, {256, 64}, {1000, 100}, {4097, 48}};
    for (int s = 0; s < 5; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1], n = rows * cols;
        std::vector<float> x(n), xr(n);
        std::vector<uint16_t> xb(n);
        for (int pat = 0; pat < TEST_NPATTERNS; pat++) {
            test_fill_pattern(x.data(), n, cols, pat, &r);
            float *dx = dev_copy(x.data(), n), *out;
            DEV(cudaMalloc(&out, (3 * cols + 1) * sizeof(float)));
            CHECK(avc_colstats(dx, rows, cols, out, out + cols, out + 2 * cols, out + 3 * cols, NULL) == AVERIS_OK,
                  "colstats: %s", averis_last_error());
            check_colstats("fp32", out, x.data(), rows, cols, pat);
            /* BF16 input (the model's activations): the statistics of its fp32 values */
            for (int64_t i = 0; i < n; i++) xb[i] = bf16_from_f32(x[i]), xr[i] = bf16_to_f32(xb[i]);
            uint16_t *dxb = dev_copy(xb.data(), n);
            CHECK(cq_colstats(dxb, 1, rows, cols, cols, out, out + 3 * cols, out + cols, out + 2 * cols, 0) == AVERIS_OK,
                  "colstats bf16: %s", averis_last_error());
            check_colstats("bf16", out, xr.data(), rows, cols, pat);
            cudaFree(dxb);
            cudaFree(dx);
            cudaFree(out);
        }
    }
}

/* -------------------------------------------------------------- qlinear */
/* ‖a − ref‖ / ‖ref‖ (NaN, e.g. an unwritten element, fails every bound) */
template <typename R> static double rel_err(const float *a, const R *ref, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_qlinear_vs_cpu(void) {
    const char *recipes[] = {"fp32", "bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    const int64_t shapes[][3] = {{100, 64, 48}, {256, 128, 96}, {1000, 256, 512}};
    trng rg = {2024};
    printf("  %-11s %-14s %10s %10s %10s\n", "recipe", "l×m×n", "Y", "dX", "dW");
    for (int si = 0; si < 3; si++) {
        int64_t l = shapes[si][0], m = shapes[si][1], n = shapes[si][2];
        std::vector<float> X(l * m), W(n * m), D(l * n);
        for (auto &v : X) v = trng_normal(&rg) + 0.7f; /* a mean bias, as in LLM activations */
        for (auto &v : W) v = 0.05f * trng_normal(&rg);
        for (auto &v : D) v = 1e-3f * trng_normal(&rg) + 2e-4f;
        float *dX_in = dev_copy(X.data(), X.size()), *dW_in = dev_copy(W.data(), W.size()),
              *dD = dev_copy(D.data(), D.size());
        float *dY, *ddX, *ddW;
        DEV(cudaMalloc(&dY, l * n * 4));
        DEV(cudaMalloc(&ddX, l * m * 4));
        DEV(cudaMalloc(&ddW, n * m * 4));
        for (const char *name : recipes) {
            qlin_recipe rc;
            qlin_recipe_parse(name, &rc);
            rc.seed = 42;
            std::vector<float> Y(l * n), dXc(l * m), dWc(n * m, 0.25f);
            qlin_ws ws = {};
            qlin_forward(&rc, X.data(), W.data(), l, m, n, Y.data(), &ws, NULL);
            qlin_backward(&rc, X.data(), W.data(), D.data(), l, m, n, dXc.data(), dWc.data(), 9, &ws, NULL);
            qlin_ws_free(&ws);
            DEV(cudaMemset(dY, 0xFF, l * n * 4)); /* NaN: an unwritten element fails */
            DEV(cudaMemset(ddX, 0xFF, l * m * 4));
            std::vector<float> w0(n * m, 0.25f); /* dW accumulates */
            DEV(cudaMemcpy(ddW, w0.data(), n * m * 4, cudaMemcpyHostToDevice));
            CHECK(avc_qlin_forward(&rc, dX_in, dW_in, l, m, n, dY) == AVERIS_OK, "%s forward: %s", name,
                  averis_last_error());
            CHECK(avc_qlin_backward(&rc, dX_in, dW_in, dD, l, m, n, ddX, ddW, 9) == AVERIS_OK, "%s backward: %s", name,
                  averis_last_error());
            std::vector<float> gy = host_copy(dY, l * n), gx = host_copy(ddX, l * m), gw = host_copy(ddW, n * m);
            for (auto &v : gw) v -= 0.25f;
            for (auto &v : dWc) v -= 0.25f;
            double ey = rel_err(gy.data(), Y.data(), l * n), ex = rel_err(gx.data(), dXc.data(), l * m),
                   ew = rel_err(gw.data(), dWc.data(), n * m);
            char shp[32];
            snprintf(shp, sizeof shp, "%lldx%lldx%lld", (long long)l, (long long)m, (long long)n);
            printf("  %-11s %-14s %10.2e %10.2e %10.2e\n", name, shp, ey, ex, ew);
            /* Operands are the CPU's bits; GEMM accumulation order and the
             * BF16 hi/lo rank-one columns differ: 1e-4 of the norm. */
            const double tol = 1e-4;
            CHECK(ey <= tol && ex <= tol && ew <= tol, "%s %s: relative errors Y %.3g dX %.3g dW %.3g exceed %.0e", name,
                  shp, ey, ex, ew, tol);
        }
        cudaFree(dX_in); cudaFree(dW_in); cudaFree(dD); cudaFree(dY); cudaFree(ddX); cudaFree(ddW);
    }
}

/* Flash attention (cuda/flash.cu) against causal GQA attention in fp64 on the
 * same BF16 inputs: O, dQ, dK, dV. P and dS pass through BF16 on the GPU,
 * so the bound is BF16-sized (2e-2 relative; measured values printed). */
static void test_flash_attention(void) {
    trng r = {31};
    const int cases[][5] = {{2, 4, 2, 128, 32}, {1, 4, 4, 64, 64}, {1, 16, 8, 192, 128}}; /* B H KV T Dh */
    for (const auto &cs : cases) {
        int B = cs[0], H = cs[1], KV = cs[2], T = cs[3], Dh = cs[4], grp = H / KV;
        size_t nq = (size_t)B * H * T * Dh, nk = (size_t)B * KV * T * Dh;
        std::vector<uint16_t> q(nq), k(nk), v(nk), dob(nq);
        std::vector<float> qf(nq), kf(nk), vf(nk), dof(nq);
        auto fill = [&](std::vector<uint16_t> &b, std::vector<float> &f, float sc) {
            for (size_t i = 0; i < b.size(); i++) {
                b[i] = bf16_from_f32(sc * trng_normal(&r));
                f[i] = bf16_to_f32(b[i]);
            }
        };
        fill(q, qf, 1.5f), fill(k, kf, 1.5f), fill(v, vf, 1.0f), fill(dob, dof, 1.0f);
        double scale = 1.0 / sqrt((double)Dh);
        /* reference, fp64: O token-major [B·T, H·Dh]; grads head-major */
        std::vector<double> O((size_t)B * T * H * Dh), dQ(nq, 0.0), dK(nk, 0.0), dV(nk, 0.0);
        std::vector<double> P(T), dP(T);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                int kvh = h / grp;
                const float *Q = &qf[((size_t)(b * H + h) * T) * Dh], *K = &kf[((size_t)(b * KV + kvh) * T) * Dh],
                            *V = &vf[((size_t)(b * KV + kvh) * T) * Dh], *dO = &dof[((size_t)(b * H + h) * T) * Dh];
                for (int t = 0; t < T; t++) {
                    double mx = -1e300, sum = 0.0;
                    for (int j = 0; j <= t; j++) {
                        double sdot = 0.0;
                        for (int d = 0; d < Dh; d++) sdot += (double)Q[t * Dh + d] * K[j * Dh + d];
                        P[j] = sdot * scale;
                        mx = P[j] > mx ? P[j] : mx;
                    }
                    for (int j = 0; j <= t; j++) sum += (P[j] = exp(P[j] - mx));
                    for (int j = 0; j <= t; j++) P[j] /= sum;
                    double *o = &O[(((size_t)b * T + t) * H + h) * Dh];
                    for (int d = 0; d < Dh; d++) {
                        double acc = 0.0;
                        for (int j = 0; j <= t; j++) acc += P[j] * V[j * Dh + d];
                        o[d] = acc;
                    }
                    double pdp = 0.0;
                    for (int j = 0; j <= t; j++) {
                        double acc = 0.0;
                        for (int d = 0; d < Dh; d++) acc += (double)dO[t * Dh + d] * V[j * Dh + d];
                        dP[j] = acc;
                        pdp += P[j] * acc;
                    }
                    for (int j = 0; j <= t; j++) {
                        double ds = P[j] * (dP[j] - pdp) * scale;
                        for (int d = 0; d < Dh; d++) {
                            dQ[((size_t)(b * H + h) * T + t) * Dh + d] += ds * K[j * Dh + d];
                            dK[((size_t)(b * KV + kvh) * T + j) * Dh + d] += ds * Q[t * Dh + d];
                            dV[((size_t)(b * KV + kvh) * T + j) * Dh + d] += P[j] * dO[t * Dh + d];
                        }
                    }
                }
            }
        /* device */
        uint16_t *dq_in = dev_copy(q.data(), nq), *dk_in = dev_copy(k.data(), nk), *dv_in = dev_copy(v.data(), nk),
                 *ddo = dev_copy(dob.data(), nq);
        std::vector<float> dof_tok((size_t)B * T * H * Dh); /* dO token-major fp32 for D = rowsum(dO⊙O) */
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++)
                    for (int d = 0; d < Dh; d++)
                        dof_tok[(((size_t)b * T + t) * H + h) * Dh + d] = dof[(((size_t)b * H + h) * T + t) * Dh + d];
        float *ddao = dev_copy(dof_tok.data(), dof_tok.size());
        float *dao_out, *dlse, *dDv, *gq, *gk, *gv;
        DEV(cudaMalloc(&dao_out, O.size() * 4));
        DEV(cudaMalloc(&dlse, (size_t)B * H * T * 4));
        DEV(cudaMalloc(&dDv, (size_t)B * H * T * 4));
        DEV(cudaMalloc(&gq, nq * 4));
        DEV(cudaMalloc(&gk, nk * 4));
        DEV(cudaMalloc(&gv, nk * 4));
        DEV(cudaMemset(dao_out, 0xFF, O.size() * 4));
        DEV(cudaMemset(gq, 0xFF, nq * 4));
        DEV(cudaMemset(gk, 0xFF, nk * 4));
        DEV(cudaMemset(gv, 0xFF, nk * 4));
        typedef const __nv_bfloat16 *cbp;
        CHECK(cf_forward((cbp)dq_in, (cbp)dk_in, (cbp)dv_in, dao_out, 0, dlse, B, T, H, KV, Dh, 0) == AVERIS_OK,
              "flash forward: %s", averis_last_error());
        CHECK(cf_backward((cbp)dq_in, (cbp)dk_in, (cbp)dv_in, (cbp)ddo, ddao, dao_out, 0, dlse, dDv, gq, gk, gv, B, T, H, KV,
                           Dh, 0) == AVERIS_OK,
              "flash backward: %s", averis_last_error());
        DEV(cudaDeviceSynchronize());
        double eo = rel_err(host_copy(dao_out, O.size()).data(), O.data(), (int64_t)O.size()),
               eq = rel_err(host_copy(gq, nq).data(), dQ.data(), (int64_t)nq),
               ek = rel_err(host_copy(gk, nk).data(), dK.data(), (int64_t)nk),
               ev = rel_err(host_copy(gv, nk).data(), dV.data(), (int64_t)nk);
        printf("  flash B%d H%d KV%d T%d Dh%d: O %.2e dQ %.2e dK %.2e dV %.2e\n", B, H, KV, T, Dh, eo, eq, ek, ev);
        CHECK(eo <= 2e-2 && eq <= 2e-2 && ek <= 2e-2 && ev <= 2e-2,
              "flash attention Dh %d: relative errors O %.3g dQ %.3g dK %.3g dV %.3g exceed 2e-2", Dh, eo, eq, ek, ev);
        cudaFree(dq_in); cudaFree(dk_in); cudaFree(dv_in); cudaFree(ddo); cudaFree(ddao);
        cudaFree(dao_out); cudaFree(dlse); cudaFree(dDv); cudaFree(gq); cudaFree(gk); cudaFree(gv);
    }
}

/* ------------------------------------------- MoE segments (seg.cuh, qlinear_group.cuh) */
/* experts' token counts: empty ones, counts not multiples of 16, one over a
 * column-statistics chunk (256 rows) and several row-sum groups (64) */
static const int k_seg_counts[] = {0, 5, 16, 37, 0, 100, 1, 33, 300};

static void *dfill(size_t bytes, int byte) {
    void *p;
    DEV(cudaMalloc(&p, bytes));
    DEV(cudaMemset(p, byte, bytes));
    return p;
}

/* the first differing byte of two device buffers, or -1 */
static int64_t dev_diff(const void *a, const void *b, size_t bytes) {
    std::vector<unsigned char> ha = host_copy(static_cast<const unsigned char *>(a), bytes),
                               hb = host_copy(static_cast<const unsigned char *>(b), bytes);
    return tool_first_diff(ha.data(), hb.data(), bytes, 0);
}

/* cq_quantize_seg, cq_colstats_seg, cq_alpha_seg and cq_to_bf16_seg against
 * the per-expert calls, byte for byte, over every quantizer configuration
 * the recipes use (rows / transposed wgrad copies × RHT × SR × Averis mean ×
 * fp32/BF16 input × known amax) and the 16×16 weight tiles */
static void test_moe_seg_quant_bitexact(void) {
    const int E = (int)(sizeof k_seg_counts / sizeof k_seg_counts[0]);
    std::vector<int> offs(E + 1, 0);
    for (int e = 0; e < E; e++) offs[e + 1] = offs[e] + k_seg_counts[e];
    const int64_t R = offs[E];
    int *offs_d = dev_copy(offs.data(), E + 1);
    std::vector<float> amax_in(E);
    std::vector<uint64_t> streams(E);
    for (int e = 0; e < E; e++) amax_in[e] = 3.0f + e, streams[e] = 1000 + 7 * (uint64_t)e;
    float *amax_in_d = dev_copy(amax_in.data(), E);
    uint64_t *streams_d = dev_copy(streams.data(), E);
    trng rg = {4242};
    int compared = 0;
    for (int64_t cols : {48, 40}) {
        std::vector<float> x(R * cols);
        std::vector<uint16_t> xb(R * cols);
        for (auto &v : x) v = 2.0f * trng_normal(&rg) + 0.7f;
        x[17 * cols + 3] = 40.0f; /* an outlier in one expert */
        for (size_t i = 0; i < x.size(); i++) xb[i] = bf16_from_f32(x[i]);
        float *dx = dev_copy(x.data(), x.size());
        uint16_t *dxb = dev_copy(xb.data(), xb.size());
        /* the Averis column statistics */
        float *mean_d = (float *)dfill(E * cols * 4, 0);
        for (int bf = 0; bf < 2; bf++) {
            const char *src = bf ? (const char *)dxb : (const char *)dx;
            size_t esz = bf ? 2 : 4;
            float *ms = (float *)dfill(E * cols * 4, 0xFF), *rs = (float *)dfill(E * 4, 0xFF);
            float *mr = (float *)dfill(E * cols * 4, 0xFF), *rr = (float *)dfill(E * 4, 0xFF);
            cq_seg g = {E, offs_d, offs.data(), 0, 0, nullptr, 0};
            CHECK(cq_colstats_seg(src, bf, cols, cols, &g, ms, rs, 0) == AVERIS_OK, "colstats_seg: %s", averis_last_error());
            for (int e = 0; e < E; e++)
                if (k_seg_counts[e])
                    CHECK(cq_colstats(src + offs[e] * cols * esz, bf, k_seg_counts[e], cols, cols, mr + e * cols, rr + e,
                                      nullptr, nullptr, 0) == AVERIS_OK, "colstats: %s", averis_last_error());
            std::vector<float> hms = host_copy(ms, E * cols), hmr = host_copy(mr, E * cols), hrs = host_copy(rs, E),
                               hrr = host_copy(rr, E);
            for (int e = 0; e < E; e++)
                if (k_seg_counts[e])
                    CHECK(!memcmp(&hms[e * cols], &hmr[e * cols], cols * 4) && !memcmp(&hrs[e], &hrr[e], 4),
                          "colstats_seg differs: cols %lld bf16 %d expert %d (res amax %a vs %a)", (long long)cols, bf, e,
                          (double)hrs[e], (double)hrr[e]);
            if (!bf) DEV(cudaMemcpy(mean_d, ms, E * cols * 4, cudaMemcpyDeviceToDevice));
            cudaFree(ms), cudaFree(rs), cudaFree(mr), cudaFree(rr);
            compared++;
        }
        const int64_t ld_out = (cols + 15) / 16 * 16;
        for (int v = 0; v < 64; v++) {
            int transpose = v & 1, rht = (v >> 1) & 1, sr = (v >> 2) & 1, use_mean = (v >> 3) & 1, bf = (v >> 4) & 1,
                given = (v >> 5) & 1;
            int64_t extra = transpose && use_mean ? 16 : 0;
            size_t nout = transpose ? (size_t)(cols * cq_seg_cols(R, E)) : (size_t)(cq_seg_rows(R, E) * ld_out);
            const char *src = bf ? (const char *)dxb : (const char *)dx;
            size_t esz = bf ? 2 : 4;
            __nv_bfloat16 *os = (__nv_bfloat16 *)dfill(nout * 2, 0xFF), *orf = (__nv_bfloat16 *)dfill(nout * 2, 0xFF);
            float *as = (float *)dfill(E * 4, 0xFF), *ar = (float *)dfill(E * 4, 0xFF);
            float *ss = (float *)dfill(E * cols * 4, 0xFF), *sr_ = (float *)dfill(E * cols * 4, 0xFF);
            cq_seg g = {E, offs_d, offs.data(), 0, 1, nullptr, 0};
            cq_seg_job j = {};
            j.src = src, j.bf16_in = bf, j.scols = cols, j.ld = cols, j.transpose = transpose;
            j.rht = rht, j.sr = sr, j.seed = 77, j.streams = streams_d;
            j.mean = use_mean ? mean_d : nullptr;
            j.amax_in = given ? amax_in_d : nullptr;
            j.amax = as, j.bf16_out = os, j.ld_out = ld_out, j.kp_extra = extra;
            j.rowsum = transpose ? ss : nullptr;
            CHECK(cq_quantize_seg(&j, &g, 0) == AVERIS_OK, "quantize_seg variant %d: %s", v, averis_last_error());
            for (int e = 0; e < E; e++) {
                int64_t o = offs[e], n = k_seg_counts[e];
                if (!n) continue;
                cq_job r = {};
                r.src = src + o * cols * esz, r.bf16_in = bf, r.srows = n, r.scols = cols, r.ld = cols;
                r.transpose = transpose, r.rht = rht, r.sr = sr, r.seed = 77, r.stream = streams[e];
                r.mean = use_mean ? mean_d + e * cols : nullptr;
                r.amax_in = given ? amax_in_d + e : nullptr;
                r.amax = ar + e;
                r.bf16_out = transpose ? orf + cols * cq_seg_col0(o, e) : orf + cq_seg_row0(o, e) * ld_out;
                r.ld_out = transpose ? (n + 15) / 16 * 16 + extra : ld_out;
                r.rowsum = transpose ? sr_ + e * cols : nullptr;
                CHECK(cq_quantize(&r, 0) == AVERIS_OK, "quantize expert %d: %s", e, averis_last_error());
            }
            int64_t bad = dev_diff(os, orf, nout * 2);
            CHECK(bad < 0, "quantize_seg BF16 operand differs: cols %lld variant %d (transpose %d rht %d sr %d mean %d bf16 %d "
                  "amax given %d) at byte %lld", (long long)cols, v, transpose, rht, sr, use_mean, bf, given, (long long)bad);
            std::vector<float> has = host_copy(as, E), har = host_copy(ar, E), hss = host_copy(ss, E * cols),
                               hsr = host_copy(sr_, E * cols);
            for (int e = 0; e < E; e++)
                if (k_seg_counts[e]) {
                    CHECK(!memcmp(&has[e], &har[e], 4), "quantize_seg amax differs: variant %d expert %d: %a vs %a", v, e,
                          (double)has[e], (double)har[e]);
                    CHECK(!transpose || !memcmp(&hss[e * cols], &hsr[e * cols], cols * 4),
                          "quantize_seg row sums differ: variant %d expert %d", v, e);
                }
            cudaFree(os), cudaFree(orf), cudaFree(as), cudaFree(ar), cudaFree(ss), cudaFree(sr_);
            compared++;
        }
        /* the BF16 recipe's operands */
        {
            size_t nout = (size_t)(cq_seg_rows(R, E) * cols);
            __nv_bfloat16 *os = (__nv_bfloat16 *)dfill(nout * 2, 0xFF), *orf = (__nv_bfloat16 *)dfill(nout * 2, 0xFF);
            cq_seg g = {E, offs_d, offs.data(), 0, 1, nullptr, 0};
            CHECK(cq_to_bf16_seg(dx, cols, &g, os, 0) == AVERIS_OK, "to_bf16_seg: %s", averis_last_error());
            for (int e = 0; e < E; e++)
                if (k_seg_counts[e])
                    CHECK(cq_to_bf16(dx + offs[e] * cols, orf + cq_seg_row0(offs[e], e) * cols, k_seg_counts[e] * cols, 0) ==
                          AVERIS_OK, "to_bf16");
            CHECK(dev_diff(os, orf, nout * 2) < 0, "to_bf16_seg differs (cols %lld)", (long long)cols);
            cudaFree(os), cudaFree(orf);
            compared++;
        }
        cudaFree(dx), cudaFree(dxb), cudaFree(mean_d);
    }
    /* the experts' weights: 16×16 tiles, E stacked [n × m] */
    {
        const int EW = 3;
        const int64_t n = 48, m = 64;
        std::vector<float> w(EW * n * m);
        for (auto &v : w) v = 0.05f * trng_normal(&rg);
        w[n * m + 5] = 3.0f; /* expert 1's amax */
        float *dw = dev_copy(w.data(), w.size());
        __nv_bfloat16 *qs = (__nv_bfloat16 *)dfill(w.size() * 2, 0xFF), *qr = (__nv_bfloat16 *)dfill(w.size() * 2, 0xFF);
        float *as = (float *)dfill(EW * 4, 0xFF), *ar = (float *)dfill(EW * 4, 0xFF);
        cq_seg g = {EW, nullptr, nullptr, n, 0, nullptr, 0};
        cq_seg_job j = {};
        j.src = dw, j.scols = m, j.ld = m, j.tile = 1, j.amax = as, j.bf16_out = qs, j.ld_out = m;
        CHECK(cq_quantize_seg(&j, &g, 0) == AVERIS_OK, "quantize_seg weights: %s", averis_last_error());
        for (int e = 0; e < EW; e++) {
            cq_job r = {};
            r.src = dw + e * n * m, r.srows = n, r.scols = m, r.ld = m, r.tile = 1;
            r.amax = ar + e, r.bf16_out = qr + e * n * m, r.ld_out = m;
            CHECK(cq_quantize(&r, 0) == AVERIS_OK, "quantize weight: %s", averis_last_error());
        }
        CHECK(dev_diff(qs, qr, w.size() * 2) < 0 && dev_diff(as, ar, EW * 4) < 0, "quantize_seg 16x16 weights differ");
        /* α per expert */
        float *al_s = (float *)dfill(EW * 4, 0xFF), *al_r = (float *)dfill(EW * 4, 0xFF);
        std::vector<float> amb = {0.0f, 1e-30f, 2.5f};
        float *damb = dev_copy(amb.data(), EW);
        CHECK(cq_alpha_seg(as, damb, al_s, EW, 0) == AVERIS_OK, "alpha_seg");
        for (int e = 0; e < EW; e++) CHECK(cq_alpha(as + e, damb + e, al_r + e, 0) == AVERIS_OK, "alpha");
        CHECK(dev_diff(al_s, al_r, EW * 4) < 0, "alpha_seg differs");
        cudaFree(dw), cudaFree(qs), cudaFree(qr), cudaFree(as), cudaFree(ar), cudaFree(al_s), cudaFree(al_r), cudaFree(damb);
        compared += 2;
    }
    cudaFree(offs_d), cudaFree(amax_in_d), cudaFree(streams_d);
    printf("  segmented quantization: %d configurations compared byte for byte with the per-expert calls\n", compared);
    CHECK(compared == 2 * (2 + 64 + 1) + 2, "ran every comparison (%d)", compared);
}

/* The experts' gate/up-like pair of linears sharing one input (as moe.cu's
 * gate and up): per-expert cl_* calls against cl_seg_* in `mode`; every
 * recipe. Mode 2 must give the same bits; mode 3 (our grouped GEMM) and
 * mode 1 (cuBLAS's grouped GEMMs, else as 3) the same operands with another
 * fp32 summation order (mode 1: the bias added before the GEMM): each
 * output within a few ulps of its terms' magnitude, so 1e-5 of the norm
 * (measured errors printed). Mode 3 must have run our kernel for the BF16
 * operands (every recipe but fp32, whose GEMMs stay per expert: the same
 * bits as mode 2). */
static void moe_group_linear(int mode) {
    const int counts[] = {37, 0, 16, 100, 5, 50};
    const int E = 6;
    const int64_t m = 64, n = 48, wmax = 64;
    std::vector<int> offs(E + 1, 0);
    for (int e = 0; e < E; e++) offs[e + 1] = offs[e] + counts[e];
    const int64_t R = offs[E];
    trng rg = {2027};
    std::vector<float> X(R * m), W1(E * n * m), W2(E * n * m), D1(R * n), D2(R * n);
    for (auto &v : X) v = trng_normal(&rg) + 0.7f;
    for (auto &v : W1) v = 0.05f * trng_normal(&rg);
    for (auto &v : W2) v = 0.05f * trng_normal(&rg);
    for (auto &v : D1) v = 1e-3f * trng_normal(&rg) + 2e-4f;
    for (auto &v : D2) v = 1e-3f * trng_normal(&rg) - 1e-4f;
    float *dX_in = dev_copy(X.data(), X.size()), *dW1 = dev_copy(W1.data(), W1.size()), *dW2 = dev_copy(W2.data(), W2.size()),
          *dD1 = dev_copy(D1.data(), D1.size()), *dD2 = dev_copy(D2.data(), D2.size());
    int *offs_d = dev_copy(offs.data(), E + 1);
    std::vector<uint64_t> st1(2 * E), st2(2 * E);
    for (int e = 0; e < E; e++) {
        uint64_t a = 5000 + 3 * (uint64_t)e, b = 9000 + 5 * (uint64_t)e;
        st1[e] = qlin_dgrad_stream(a), st1[E + e] = qlin_wgrad_stream(a);
        st2[e] = qlin_dgrad_stream(b), st2[E + e] = qlin_wgrad_stream(b);
    }
    uint64_t *st1_d = dev_copy(st1.data(), 2 * E), *st2_d = dev_copy(st2.data(), 2 * E);
    std::vector<void *> allocs;
    cl_alloc_fn alloc = [&](void **p, size_t b) -> averis_status {
        DEV(cudaMalloc(p, b ? b : 1));
        DEV(cudaMemset(*p, 0, b ? b : 1));
        allocs.push_back(*p);
        return AVERIS_OK;
    };
    auto take = [&](size_t bytes, int byte) {
        void *p = dfill(bytes, byte);
        allocs.push_back(p);
        return p;
    };
    const char *recipes[] = {"fp32", "bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    printf("  mode %d%s\n", mode, mode == CL_SEG_GROUPED ? (cl_seg_grouped_ok(CUDA_R_16BF) ? ": cuBLAS's grouped GEMMs (BF16 operands)"
                                                         : ": NOTE cuBLAS's grouped GEMMs unavailable for BF16, ran as mode 3") :
                                mode == CL_SEG_OWN_GROUPED ? ": our grouped GEMM" : "");
    for (const char *name : recipes) {
        qlin_recipe rc;
        qlin_recipe_parse(name, &rc);
        rc.seed = 42;
        float *Y1[2], *Y2[2], *dX[2], *gW1[2], *gW2[2];
        std::vector<float> quarter(E * n * m, 0.25f);
        for (int p = 0; p < 2; p++) {
            Y1[p] = (float *)take(R * n * 4, 0xFF), Y2[p] = (float *)take(R * n * 4, 0xFF);
            dX[p] = (float *)take(R * m * 4, 0xFF);
            gW1[p] = (float *)take(E * n * m * 4, 0), gW2[p] = (float *)take(E * n * m * 4, 0);
            DEV(cudaMemcpy(gW1[p], quarter.data(), quarter.size() * 4, cudaMemcpyHostToDevice));
            DEV(cudaMemcpy(gW2[p], quarter.data(), quarter.size() * 4, cudaMemcpyHostToDevice));
        }
        {   /* per expert (moe.cu's mode 0) */
            cl_size_class_scope by_class;
            int64_t kpmax = cl_kp(&rc, 100);
            cl_input x = {};
            x.m = m;
            x.xq = (__nv_bfloat16 *)take(R * m * 2, 0), x.xt = (__nv_bfloat16 *)take(m * kpmax * 2, 0);
            x.amax = (float *)take(4, 0), x.res_amax = (float *)take(4, 0), x.xt_amax = (float *)take(4, 0);
            x.mean = (float *)take(m * 4, 0), x.xt_sum = (float *)take(m * 4, 0);
            cl_scratch scr = {};
            scr.dq = (__nv_bfloat16 *)take(R * wmax * 2, 0), scr.dt = (__nv_bfloat16 *)take(wmax * kpmax * 2, 0);
            scr.mean_d = (float *)take(wmax * 4, 0), scr.sum_d = (float *)take(wmax * 4, 0);
            scr.scal = (float *)take(8 * 4, 0), scr.bias = (float *)take(wmax * 4, 0);
            scr.mean_part = (float *)take(CL_MEAN_SLICES * wmax * 4, 0);
            __nv_bfloat16 *wq1 = (__nv_bfloat16 *)take(E * n * m * 2, 0), *wq2 = (__nv_bfloat16 *)take(E * n * m * 2, 0);
            float *wa1 = (float *)take(E * 4, 0), *wa2 = (float *)take(E * 4, 0);
            for (int e = 0; e < E; e++) {
                cl_weight w1 = {dW1 + e * n * m, n, m, wq1 + e * n * m, wa1 + e}, w2 = {dW2 + e * n * m, n, m, wq2 + e * n * m, wa2 + e};
                CHECK(cl_prep_w(&rc, &w1, 0) == AVERIS_OK && cl_prep_w(&rc, &w2, 0) == AVERIS_OK, "%s prep_w: %s", name,
                      averis_last_error());
                int64_t o = offs[e], l = counts[e];
                if (!l) continue;
                x.x = dX_in + o * m, x.l = l;
                CHECK(cl_prep_x(&rc, &x, 0) == AVERIS_OK, "%s prep_x: %s", name, averis_last_error());
                CHECK(cl_forward(&rc, &x, &w1, Y1[0] + o * n, 0, nullptr, nullptr, &scr, 0) == AVERIS_OK &&
                          cl_forward(&rc, &x, &w2, Y2[0] + o * n, 0, nullptr, nullptr, &scr, 0) == AVERIS_OK,
                      "%s forward: %s", name, averis_last_error());
                x.xt_ready = 0;
                CHECK(cl_backward(&rc, &x, &w1, dD1 + o * n, dX[0] + o * m, 0, gW1[0] + e * n * m, 5000 + 3 * (uint64_t)e,
                                  &scr, 0) == AVERIS_OK &&
                          cl_backward(&rc, &x, &w2, dD2 + o * n, dX[0] + o * m, 1, gW2[0] + e * n * m,
                                      9000 + 5 * (uint64_t)e, &scr, 0) == AVERIS_OK,
                      "%s backward: %s", name, averis_last_error());
            }
        }
        long long launches0 = gg_launches();
        {   /* segmented */
            cl_size_class_scope by_class;
            cq_seg g = {E, offs_d, offs.data(), 0, 1, nullptr, 0};
            cl_seg_input sx = {};
            CHECK(cl_seg_input_setup(&sx, m, E, alloc) == AVERIS_OK, "seg input");
            sx.x = dX_in;
            sx.xq = (__nv_bfloat16 *)take(cq_seg_rows(R, E) * m * 2, 0);
            sx.xt = (__nv_bfloat16 *)take(m * cq_seg_cols(R, E) * 2, 0);
            cl_seg_scratch ss = {};
            CHECK(cl_seg_scratch_setup(&ss, R, E, wmax, alloc) == AVERIS_OK, "seg scratch");
            cl_seg_weight s1 = {dW1, n, m, E, (__nv_bfloat16 *)take(E * n * m * 2, 0), (float *)take(E * 4, 0)};
            cl_seg_weight s2 = {dW2, n, m, E, (__nv_bfloat16 *)take(E * n * m * 2, 0), (float *)take(E * 4, 0)};
            CHECK(cl_seg_prep_w(&rc, &s1, 0) == AVERIS_OK && cl_seg_prep_w(&rc, &s2, 0) == AVERIS_OK, "%s seg prep_w: %s",
                  name, averis_last_error());
            CHECK(cl_seg_prep_x(&rc, &sx, &g, 0) == AVERIS_OK, "%s seg prep_x: %s", name, averis_last_error());
            CHECK(cl_seg_forward(&rc, &sx, &s1, &g, Y1[1], mode, &ss, 0) == AVERIS_OK &&
                      cl_seg_forward(&rc, &sx, &s2, &g, Y2[1], mode, &ss, 0) == AVERIS_OK,
                  "%s seg forward: %s", name, averis_last_error());
            sx.xt_ready = 0;
            CHECK(cl_seg_backward(&rc, &sx, &s1, &g, dD1, dX[1], 0, gW1[1], st1_d, mode, &ss, 0) == AVERIS_OK &&
                      cl_seg_backward(&rc, &sx, &s2, &g, dD2, dX[1], 1, gW2[1], st2_d, mode, &ss, 0) == AVERIS_OK,
                  "%s seg backward: %s", name, averis_last_error());
        }
        DEV(cudaDeviceSynchronize());
        const long long own = gg_launches() - launches0;
        if (mode == CL_SEG_OWN_GROUPED) /* 2 forwards, 2 × (dgrad + wgrad): one launch each for BF16 operands */
            CHECK(rc.id == QLIN_FP32 ? own == 0 : own == 6, "%s: mode 3 ran our grouped GEMM %lld times (want %d)", name,
                  own, rc.id == QLIN_FP32 ? 0 : 6);
        const int same_bits = mode == CL_SEG_PER_EXPERT || (mode == CL_SEG_OWN_GROUPED && rc.id == QLIN_FP32);
        struct { const char *what; float *a, *b; int64_t n; } outs[] = {
            {"Y gate", Y1[1], Y1[0], R * n}, {"Y up", Y2[1], Y2[0], R * n}, {"dX", dX[1], dX[0], R * m},
            {"dW gate", gW1[1], gW1[0], E * n * m}, {"dW up", gW2[1], gW2[0], E * n * m}};
        double worst = 0.0;
        for (auto &o : outs) {
            std::vector<float> ha = host_copy(o.a, o.n), hb = host_copy(o.b, o.n);
            if (same_bits) {
                int64_t bad = -1;
                for (int64_t i = 0; i < o.n && bad < 0; i++)
                    if (memcmp(&ha[i], &hb[i], 4)) bad = i;
                CHECK(bad < 0, "%s %s: segmented differs from per expert at %lld: %a vs %a", name, o.what, (long long)bad,
                      bad < 0 ? 0.0 : (double)ha[bad], bad < 0 ? 0.0 : (double)hb[bad]);
            } else {
                if (o.n == E * n * m) /* dW: the 0.25 start removed (accumulated into) */
                    for (int64_t i = 0; i < o.n; i++) ha[i] -= 0.25f, hb[i] -= 0.25f;
                double err = rel_err(ha.data(), hb.data(), o.n);
                worst = err > worst || std::isnan(err) ? err : worst;
                CHECK(err <= 1e-5, "%s %s: grouped vs per expert relative error %.3g > 1e-5", name, o.what, err);
            }
            if (o.n == E * n * m) { /* expert 1 got no token: its gradient is untouched */
                std::vector<float> h = host_copy(o.a, o.n);
                int untouched = 1;
                for (int64_t i = n * m; i < 2 * n * m; i++) untouched &= h[i] == 0.25f;
                CHECK(untouched, "%s %s: the empty expert's gradient was written", name, o.what);
            }
        }
        if (same_bits) printf("  %-11s Y, dX, dW: the same bits\n", name);
        else printf("  %-11s worst relative error %.2e\n", name, worst);
        for (void *p : allocs) cudaFree(p);
        allocs.clear();
    }
    cudaFree(dX_in), cudaFree(dW1), cudaFree(dW2), cudaFree(dD1), cudaFree(dD2), cudaFree(offs_d), cudaFree(st1_d),
        cudaFree(st2_d);
}
static void test_moe_group_linear_bitexact(void) { moe_group_linear(CL_SEG_PER_EXPERT); }
static void test_moe_group_linear_grouped_gemm(void) { moe_group_linear(CL_SEG_GROUPED); }
static void test_moe_group_linear_own_gemm(void) { moe_group_linear(CL_SEG_OWN_GROUPED); }

/* grouped_gemm_check.cu: our grouped GEMM against fp64 */
void test_moe_grouped_gemm_vs_fp64(void);

/* model_check.cu: moe-tiny trained a few steps in AVERIS_MOE_GROUPED 0, 2, 1, 3 */
void test_moe_grouped_modes(void);

/* model_check.cu: one step of the tiny model per recipe vs the CPU */
void test_model_vs_cpu_T(int T, const avc_model_opts *opts);
template <int T, avc_act ACT, avc_attn ATTN> static void test_model_vs_cpu(void) {
    const avc_model_opts o = {ACT, ATTN, nullptr};
    test_model_vs_cpu_T(T, &o);
}

/* the Qwen3-MoE model (cuda/moe.cu) the same way, moe-tiny */
void test_moe_vs_cpu_T(int T, const avc_model_opts *opts);
template <int T, avc_act ACT> static void test_moe_vs_cpu(void) {
    const avc_model_opts o = {ACT, AVC_ATTN_AUTO, nullptr};
    test_moe_vs_cpu_T(T, &o);
}

/* cuDNN explicitly (AVC_ATTN_CUDNN), where the build has it */
template <int T> static void test_model_vs_cpu_cudnn(void) {
    if (!ccd_supported(T, 64)) {
        printf("  skipped: built without cuDNN attention\n");
        return;
    }
    const avc_model_opts o = {AVC_ACT_BF16, AVC_ATTN_CUDNN, nullptr};
    test_model_vs_cpu_T(T, &o);
}

/* dp_check.cu: data parallel's GPU half on one GPU (docs/multigpu.md) */
void test_grad_hook_segments(void);
void test_zero_window_on_gpu(void);

/* fused_check.cu: the fewer-pass quantization paths (quant_fused.cuh) vs the paths they replace, bit for bit */
void test_fused_quant_d(void);
void test_fused_qlinear_backward(void);
void test_fused_producer_amax_rmsnorm(void);
void test_fused_producer_amax_swiglu(void);
void test_fused_model_step(void);

static const test_case k_tests[] = {
    {"e2m1_exhaustive", test_e2m1_exhaustive},
    {"quantize_bitexact", test_quantize_bitexact},
    {"transposed_copies", test_transposed_copies},
    {"colstats_bitexact", test_colstats_bitexact},
    {"qlinear_vs_cpu", test_qlinear_vs_cpu},
    {"flash_attention", test_flash_attention},
    /* the model with fp32 activations (the CPU's), with BF16 (the default:
     * attention by cuDNN where built), with BF16 and P materialised, at seq
     * 48 (the materialised attention unsplit: seq % 64 != 0; cuDNN at a seq
     * not a multiple of 64), and with attention through flash.cu */
    {"model_vs_cpu_fp32act", test_model_vs_cpu<64, AVC_ACT_FP32, AVC_ATTN_AUTO>},
    {"model_vs_cpu_bf16act", test_model_vs_cpu<64, AVC_ACT_BF16, AVC_ATTN_AUTO>},
    {"model_vs_cpu_naive", test_model_vs_cpu<64, AVC_ACT_BF16, AVC_ATTN_MATERIALISED>},
    {"model_vs_cpu_seq48", test_model_vs_cpu<48, AVC_ACT_BF16, AVC_ATTN_MATERIALISED>},
    {"model_vs_cpu_cudnn_seq48", test_model_vs_cpu_cudnn<48>},
    {"model_vs_cpu_flash", test_model_vs_cpu<64, AVC_ACT_BF16, AVC_ATTN_FLASH>},
    /* Qwen3-MoE (issue 15): fp32 and BF16 activations */
    {"moe_vs_cpu_fp32act", test_moe_vs_cpu<64, AVC_ACT_FP32>},
    {"moe_vs_cpu_bf16act", test_moe_vs_cpu<64, AVC_ACT_BF16>},
    /* issue 14: one read of D for both of its operands, the producers' amax */
    {"fused_quant_d", test_fused_quant_d},
    {"fused_qlinear_backward", test_fused_qlinear_backward},
    {"fused_producer_amax_rmsnorm", test_fused_producer_amax_rmsnorm},
    {"fused_producer_amax_swiglu", test_fused_producer_amax_swiglu},
    {"fused_model_step", test_fused_model_step},
    /* the experts batched (AVERIS_MOE_GROUPED, docs/moe.md) */
    {"moe_seg_quant_bitexact", test_moe_seg_quant_bitexact},
    {"moe_group_linear_bitexact", test_moe_group_linear_bitexact},
    {"moe_group_linear_grouped_gemm", test_moe_group_linear_grouped_gemm},
    {"moe_grouped_gemm_vs_fp64", test_moe_grouped_gemm_vs_fp64},
    {"moe_group_linear_own_gemm", test_moe_group_linear_own_gemm},
    {"moe_grouped_vs_per_expert", test_moe_grouped_modes},
    /* issue 16: the backward's gradient segments (bucketed all-reduce), ZeRO-1's moment windows */
    {"dp_grad_hook_segments", test_grad_hook_segments},
    {"dp_zero_window", test_zero_window_on_gpu},
};

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--list")) { /* the tests' names, a line each (scripts/device_check.sh) */
        for (const test_case &t : k_tests) printf("%s\n", t.name);
        return 0;
    }
    tool_device_init("test_cuda");
    int passed = 0, failed = 0;
    run_device_tests(k_tests, sizeof k_tests / sizeof k_tests[0], argc > 1 ? argv[1] : nullptr, &passed, &failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
