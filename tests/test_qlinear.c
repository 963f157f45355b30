/* test_qlinear.c — the quantized linear layer under all five recipes. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "averis/gemm.h"
#include "averis/half.h"
#include "averis/nvfp4.h"
#include "averis/qlinear.h"
#include "check.h"

static float *randn(int64_t n, trng *r, float scale) {
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = scale * trng_normal(r);
    return x;
}

/* ------------------------------------------------ the explicit formulas */
/* NVFP4 round trip by the scalar spec; out [rows × cols_padded]. */
static void q_ref(const float *x, int64_t rows, int64_t cols, nvfp4_block_kind b, int rht, int sr, uint64_t seed,
                  uint64_t stream, float *out) {
    nvfp4_tensor t;
    nvfp4_tensor_alloc(&t, rows, cols, b);
    nvfp4_opts o = nvfp4_opts_default();
    o.block = b;
    o.rht = rht;
    o.sr = sr;
    o.seed = seed;
    o.stream = stream;
    nvfp4_quantize_ref(x, NVFP4_F32, rows, cols, cols, &o, &t, NULL);
    t.cols = t.cols_padded;
    nvfp4_dequantize(&t, 0, out);
    nvfp4_tensor_free(&t);
}

/* C[M×N] = Σ_k A[i,k]·B[j,k] (both row-major, K columns) in fp64, and the
 * same with |·| for the error bound. */
static void gemm_nt(const float *A, const float *B, int64_t M, int64_t N, int64_t K, double *C, double *Cabs) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0, sa = 0;
            for (int64_t k = 0; k < K; k++) {
                s += (double)A[i * K + k] * B[j * K + k];
                sa += fabs((double)A[i * K + k] * B[j * K + k]);
            }
            C[i * N + j] = s;
            Cabs[i * N + j] = sa;
        }
}

static void transpose(const float *x, int64_t r, int64_t c, float *out) {
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) out[j * r + i] = x[i * c + j];
}

typedef struct {
    double *Y, *Yabs, *dX, *dXabs, *dW, *dWabs;
} ref_out;

static void means(const qlin_recipe *r, const float *x, int64_t rows, int64_t cols, float *mu, float *mu_bar) {
    nvfp4_colstats_ref(x, rows, cols, cols, mu, NULL, NULL);
    if (r->mean_fp4) {
        float tmp[4096];
        q_ref(mu, 1, cols, NVFP4_BLOCK_1X16, 0, 0, 0, 0, tmp);
        memcpy(mu_bar, tmp, (size_t)cols * sizeof(float));
    } else memcpy(mu_bar, mu, (size_t)cols * sizeof(float));
}

/* The recipe as AVERIS.md writes it, with the scalar quantizer and fp64 GEMMs. */
static void reference(const qlin_recipe *r, const float *X, const float *W, const float *D, int64_t l, int64_t m,
                      int64_t n, uint64_t stream, ref_out *o) {
    int64_t lp = nvfp4_cols_padded(l);
    float *Xq = calloc((size_t)(l * m), 4), *Wq = calloc((size_t)(n * m), 4), *Dq = calloc((size_t)(l * n), 4);
    float *Wt = calloc((size_t)(n * m), 4), *Xr = calloc((size_t)(l * m), 4), *Dr = calloc((size_t)(l * n), 4);
    float *XtR = calloc((size_t)(m * l), 4), *DtR = calloc((size_t)(n * l), 4);
    float *XtQ = calloc((size_t)(m * lp), 4), *DtQ = calloc((size_t)(n * lp), 4);
    float mu_x[512] = {0}, mu_xb[512] = {0}, mu_d[512] = {0}, mu_db[512] = {0};
    if (!r->fp4) {
        for (int64_t i = 0; i < l * m; i++) Xq[i] = bf16_to_f32(bf16_from_f32(X[i]));
        for (int64_t i = 0; i < n * m; i++) Wq[i] = bf16_to_f32(bf16_from_f32(W[i]));
        for (int64_t i = 0; i < l * n; i++) Dq[i] = bf16_to_f32(bf16_from_f32(D[i]));
        memcpy(Xr, X, (size_t)(l * m) * 4); /* unused */
        transpose(Wq, n, m, Wt);
        float *Xt = calloc((size_t)(m * l), 4), *Dt = calloc((size_t)(n * l), 4);
        transpose(Xq, l, m, Xt);
        transpose(Dq, l, n, Dt);
        gemm_nt(Xq, Wq, l, n, m, o->Y, o->Yabs);
        gemm_nt(Dq, Wt, l, m, n, o->dX, o->dXabs);
        gemm_nt(Dt, Xt, n, m, l, o->dW, o->dWabs);
        free(Xt);
        free(Dt);
    } else {
        if (r->split_x) means(r, X, l, m, mu_x, mu_xb);
        if (r->split_d) means(r, D, l, n, mu_d, mu_db);
        for (int64_t t = 0; t < l; t++) {
            for (int64_t j = 0; j < m; j++) Xr[t * m + j] = X[t * m + j] - mu_x[j];
            for (int64_t j = 0; j < n; j++) Dr[t * n + j] = D[t * n + j] - mu_d[j];
        }
        /* forward: Y = X̄_R·W̄ᵀ + 1·(μ̄_X·W̄ᵀ) */
        q_ref(W, n, m, r->w_block, 0, 0, 0, 0, Wq);
        q_ref(Xr, l, m, NVFP4_BLOCK_1X16, 0, 0, 0, 0, Xq);
        gemm_nt(Xq, Wq, l, n, m, o->Y, o->Yabs);
        for (int64_t t = 0; t < l; t++)
            for (int64_t j = 0; j < n; j++)
                for (int64_t k = 0; k < m; k++) {
                    o->Y[t * n + j] += (double)mu_xb[k] * Wq[j * m + k];
                    o->Yabs[t * n + j] += fabs((double)mu_xb[k] * Wq[j * m + k]);
                }
        /* dgrad: dX = D̄_R·W̄ + 1·(μ̄_D·W̄), W quantized along n */
        float *WtT = calloc((size_t)(n * m), 4), *Wtq = calloc((size_t)(n * m), 4);
        transpose(W, n, m, WtT);
        q_ref(WtT, m, n, r->w_block, 0, 0, 0, 0, Wtq); /* Wᵀ [m×n] along n */
        q_ref(Dr, l, n, NVFP4_BLOCK_1X16, 0, r->sr, r->seed, 2 * stream, Dq);
        gemm_nt(Dq, Wtq, l, m, n, o->dX, o->dXabs);
        for (int64_t t = 0; t < l; t++)
            for (int64_t j = 0; j < m; j++)
                for (int64_t k = 0; k < n; k++) {
                    o->dX[t * m + j] += (double)mu_db[k] * Wtq[j * n + k];
                    o->dXabs[t * m + j] += fabs((double)mu_db[k] * Wtq[j * n + k]);
                }
        /* wgrad: dW = D̄_Rᵀ·X̄_R + μ̄_Dᵀ(1ᵀX̄_R) + (D̄_Rᵀ1)μ̄_X + l·μ̄_Dᵀμ̄_X */
        transpose(Xr, l, m, XtR);
        transpose(Dr, l, n, DtR);
        q_ref(XtR, m, l, NVFP4_BLOCK_1X16, r->rht, 0, 0, 0, XtQ);
        q_ref(DtR, n, l, NVFP4_BLOCK_1X16, r->rht, r->sr, r->seed, 2 * stream + 1, DtQ);
        gemm_nt(DtQ, XtQ, n, m, lp, o->dW, o->dWabs);
        double sX[512] = {0}, sD[512] = {0};
        for (int64_t j = 0; j < m; j++)
            for (int64_t g = 0; g < lp; g += 16) {
                float tok[16];
                if (r->rht) nvfp4_rht16_inv_ref(XtQ + j * lp + g, tok);
                else memcpy(tok, XtQ + j * lp + g, sizeof tok);
                for (int i = 0; i < 16; i++) sX[j] += tok[i];
            }
        for (int64_t i = 0; i < n; i++)
            for (int64_t g = 0; g < lp; g += 16) {
                float tok[16];
                if (r->rht) nvfp4_rht16_inv_ref(DtQ + i * lp + g, tok);
                else memcpy(tok, DtQ + i * lp + g, sizeof tok);
                for (int k = 0; k < 16; k++) sD[i] += tok[k];
            }
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++) {
                double t = (double)mu_db[i] * sX[j] + sD[i] * (double)mu_xb[j] + (double)l * mu_db[i] * mu_xb[j];
                o->dW[i * m + j] += t;
                o->dWabs[i * m + j] += fabs((double)mu_db[i] * sX[j]) + fabs(sD[i] * (double)mu_xb[j]) +
                                       fabs((double)l * mu_db[i] * mu_xb[j]);
            }
        free(WtT);
        free(Wtq);
    }
    free(Xq); free(Wq); free(Dq); free(Wt); free(Xr); free(Dr); free(XtR); free(DtR); free(XtQ); free(DtQ);
}

/* |got − ref| ≤ (K + 8)·2^-23·Σ|terms|: fp32 accumulation of K products
 * (first-order bound K·u, u = 2^-24) plus the rank-one terms' roundings. */
static int64_t count_bad(const float *got, const double *ref, const double *refabs, int64_t n, int64_t K,
                         double *worst) {
    int64_t bad = 0;
    *worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double tol = (double)(K + 8) * 0x1p-23 * refabs[i] + 1e-30;
        double e = fabs((double)got[i] - ref[i]);
        if (e / tol > *worst) *worst = e / tol;
        if (!(e <= tol)) bad++;
    }
    return bad;
}

static void check_recipe_vs_formula(const char *spec, int64_t l, int64_t m, int64_t n, int gemm_backend) {
    qlin_recipe r;
    CHECK(qlin_recipe_parse(spec, &r) == AVERIS_OK, "parse %s: %s", spec, averis_last_error());
    averis_gemm_set_backend((averis_gemm_backend)gemm_backend);
    trng g = {(unsigned long long)(l * 131 + m * 7 + n + 1)};
    float *X = randn(l * m, &g, 1.0f), *W = randn(n * m, &g, 0.1f), *D = randn(l * n, &g, 0.01f);
    for (int64_t i = 0; i < l * m; i++) X[i] += (i % m) % 5 == 0 ? 3.0f : 0.2f; /* some mean bias */
    for (int64_t i = 0; i < l * n; i++) D[i] += (i % n) % 3 == 0 ? 0.02f : 0.0f;
    float *Y = malloc((size_t)(l * n) * 4), *dX = malloc((size_t)(l * m) * 4), *dW = malloc((size_t)(n * m) * 4);
    for (int64_t i = 0; i < n * m; i++) dW[i] = 0.0f;
    qlin_ws ws = {0};
    CHECK(qlin_forward(&r, X, W, l, m, n, Y, &ws, NULL) == AVERIS_OK, "%s forward: %s", spec, averis_last_error());
    CHECK(qlin_backward(&r, X, W, D, l, m, n, dX, dW, 5, &ws, NULL) == AVERIS_OK, "%s backward: %s", spec,
          averis_last_error());
    ref_out o;
    o.Y = calloc((size_t)(l * n), 8); o.Yabs = calloc((size_t)(l * n), 8);
    o.dX = calloc((size_t)(l * m), 8); o.dXabs = calloc((size_t)(l * m), 8);
    o.dW = calloc((size_t)(n * m), 8); o.dWabs = calloc((size_t)(n * m), 8);
    reference(&r, X, W, D, l, m, n, 5, &o);
    double w1, w2, w3;
    int64_t b1 = count_bad(Y, o.Y, o.Yabs, l * n, m, &w1);
    int64_t b2 = count_bad(dX, o.dX, o.dXabs, l * m, n, &w2);
    int64_t b3 = count_bad(dW, o.dW, o.dWabs, n * m, nvfp4_cols_padded(l), &w3);
    CHECK(b1 == 0 && b2 == 0 && b3 == 0,
          "%s (%lldx%lldx%lld, gemm %s): outside the fp32 bound: Y %lld, dX %lld, dW %lld (worst err/tol %.2f %.2f %.2f)",
          spec, (long long)l, (long long)m, (long long)n, averis_gemm_backend_name(), (long long)b1, (long long)b2,
          (long long)b3, w1, w2, w3);
    averis_gemm_set_backend(AVERIS_GEMM_AUTO);
    qlin_ws_free(&ws);
    free(X); free(W); free(D); free(Y); free(dX); free(dW);
    free(o.Y); free(o.Yabs); free(o.dX); free(o.dXabs); free(o.dW); free(o.dWabs);
}

void test_qlinear_recipes_equal_formula(void) {
    const char *specs[] = {"bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht", "averis,mean=fp4",
                           "averis-rht,mean=fp4,seed=9", "nvfp4,wblock=1x16", "nvfp4,sr=0"};
    for (int s = 0; s < 9; s++)
        for (int be = 1; be <= 2; be++) {
            if (be == AVERIS_GEMM_BLAS && !averis_gemm_have_blas()) continue;
            check_recipe_vs_formula(specs[s], 37, 48, 32, be); /* tokens not a multiple of 16 */
            check_recipe_vs_formula(specs[s], 64, 16, 16, be);
            check_recipe_vs_formula(specs[s], 1, 32, 16, be); /* one token */
            check_recipe_vs_formula(specs[s], 70, 80, 48, be); /* transposes over several 32-tiles, edge blocks */
        }
}

/* bf16 backward = central differences of the forward. X, W, G are on a
 * coarse grid so X ± h stays exactly representable in BF16 and the loss
 * Σ G⊙Y is bilinear: the difference quotient is exact up to fp32 sums. */
void test_qlinear_bf16_finite_differences(void) {
    const int64_t l = 5, m = 16, n = 8;
    trng g = {17};
    float X[5 * 16], W[8 * 16], G[5 * 8], Y[5 * 8], dX[5 * 16], dW[8 * 16] = {0};
    for (int i = 0; i < l * m; i++) X[i] = (float)((int)(trng_u64(&g) % 33) - 16) / 16.0f;
    for (int i = 0; i < n * m; i++) W[i] = (float)((int)(trng_u64(&g) % 33) - 16) / 32.0f;
    for (int i = 0; i < l * n; i++) G[i] = (float)((int)(trng_u64(&g) % 9) - 4) / 8.0f;
    qlin_recipe r;
    qlin_recipe_parse("bf16", &r);
    qlin_ws ws = {0};
    qlin_backward(&r, X, W, G, l, m, n, dX, dW, 0, &ws, NULL);
    const float h = 1.0f / 16.0f;
    for (int which = 0; which < 2; which++) {
        float *P = which ? W : X;
        int64_t np = which ? n * m : l * m;
        for (int64_t i = 0; i < np; i++) {
            float keep = P[i];
            double f[2];
            for (int s = 0; s < 2; s++) {
                P[i] = keep + (s ? -h : h);
                qlin_forward(&r, X, W, l, m, n, Y, &ws, NULL);
                f[s] = 0;
                for (int k = 0; k < l * n; k++) f[s] += (double)G[k] * Y[k];
            }
            P[i] = keep;
            double fd = (f[0] - f[1]) / (2 * h), an = which ? dW[i] : dX[i];
            CHECK(fabs(fd - an) <= 1e-5 * (1 + fabs(fd)), "%s[%lld]: finite difference %g, backward %g",
                  which ? "dW" : "dX", (long long)i, fd, an);
        }
    }
    qlin_ws_free(&ws);
}

/* SR: the mean of dW over many seeds approaches the dW of unquantized D.
 * Every block of D holds one element at the tensor amax, so every scale is
 * exactly 448 and SR is unbiased (no clipping). */
void test_qlinear_sr_unbiased_dw(void) {
    const int64_t l = 32, m = 16, n = 16, draws = 300;
    trng g = {23};
    float X[32 * 16], W[16 * 16], D[32 * 16], dW[16 * 16];
    for (int i = 0; i < l * m; i++) X[i] = trng_normal(&g);
    for (int i = 0; i < n * m; i++) W[i] = 0.1f * trng_normal(&g);
    for (int i = 0; i < l * n; i++) D[i] = fmaxf(-3.9f, fminf(3.9f, 0.5f * trng_normal(&g)));
    for (int64_t i = 0; i < n; i++) /* each wgrad block (16 tokens of column i) holds the amax 4 */
        for (int64_t t0 = 0; t0 < l; t0 += 16) D[(t0 + (i % 16)) * n + i] = 4.0f;
    qlin_recipe r;
    qlin_recipe_parse("nvfp4", &r);
    /* the expectation: D exact, X̄ (RN, deterministic) along tokens */
    float Dt[16 * 32], Xt[16 * 32], Xq[16 * 32];
    transpose(D, l, n, Dt);
    transpose(X, l, m, Xt);
    q_ref(Xt, m, l, NVFP4_BLOCK_1X16, 0, 0, 0, 0, Xq);
    double want[256], wabs[256];
    gemm_nt(Dt, Xq, n, m, l, want, wabs);
    double sum[256] = {0}, sum2[256] = {0};
    qlin_ws ws = {0};
    for (int d = 0; d < draws; d++) {
        r.seed = 1000 + (uint64_t)d;
        memset(dW, 0, sizeof dW);
        qlin_backward(&r, X, W, D, l, m, n, NULL, dW, 3, &ws, NULL);
        for (int i = 0; i < n * m; i++) { sum[i] += dW[i]; sum2[i] += (double)dW[i] * dW[i]; }
    }
    double z2 = 0, zmax = 0;
    for (int i = 0; i < n * m; i++) {
        double mean = sum[i] / draws, var = sum2[i] / draws - mean * mean;
        double z = (mean - want[i]) / sqrt(var / draws + 1e-30);
        z2 += z * z;
        if (fabs(z) > zmax) zmax = fabs(z);
    }
    CHECK(zmax < 5.0, "max |z| of mean dW vs unquantized-D dW: %.2f (>= 5 standard errors)", zmax);
    CHECK(z2 / (n * m) < 1.5, "mean z² %.2f (≈ 1 if unbiased)", z2 / (n * m));
    qlin_ws_free(&ws);
}

static double rel_err(const float *got, const double *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/* X = 1·μ + small noise with a few large |μ_j|: the split cuts the forward
 * error ≥ 4×; the same for dX with a mean-biased D. Prints every recipe. */
void test_qlinear_mean_bias_errors(void) {
    const int64_t l = 256, m = 128, n = 64;
    trng g = {99};
    float *X = randn(l * m, &g, 0.1f), *W = randn(n * m, &g, 0.1f), *D = randn(l * n, &g, 0.001f);
    /* W on the NVFP4 grid (E2M1 values / 16, each 16×16 tile holding ±6/16):
     * W̄ = W up to fp32 rounding, so the errors below are those of X̄ and D̄ */
    for (int64_t i = 0; i < n * m; i++) W[i] = nvfp4_e2m1_decode((uint8_t)(trng_u64(&g) % 16)) / 16.0f;
    for (int64_t i = 0; i < n; i += 16)
        for (int64_t j = 0; j < m; j += 16) W[i * m + j] = 6.0f / 16.0f;
    for (int64_t j = 0; j < m; j++) {
        float mu = (j % 16 == 3) ? 20.0f : 0.5f * trng_normal(&g);
        for (int64_t t = 0; t < l; t++) X[t * m + j] += mu;
    }
    for (int64_t j = 0; j < n; j++) {
        float mu = (j % 16 == 5) ? 0.2f : 0.005f * trng_normal(&g);
        for (int64_t t = 0; t < l; t++) D[t * n + j] += mu;
    }
    double *Yx = calloc((size_t)(l * n), 8), *dXx = calloc((size_t)(l * m), 8), *dWx = calloc((size_t)(n * m), 8);
    double *tmp = calloc((size_t)(n * m * 4 + l * m + l * n), 8);
    gemm_nt(X, W, l, n, m, Yx, tmp);
    float *Wt = malloc((size_t)(n * m) * 4), *Xt = malloc((size_t)(l * m) * 4), *Dt = malloc((size_t)(l * n) * 4);
    transpose(W, n, m, Wt);
    transpose(X, l, m, Xt);
    transpose(D, l, n, Dt);
    gemm_nt(D, Wt, l, m, n, dXx, tmp);
    gemm_nt(Dt, Xt, n, m, l, dWx, tmp);
    float *Y = malloc((size_t)(l * n) * 4), *dX = malloc((size_t)(l * m) * 4), *dW = malloc((size_t)(n * m) * 4);
    double ey[QLIN_NRECIPES], edx[QLIN_NRECIPES], edw[QLIN_NRECIPES];
    qlin_ws ws = {0};
    printf("      recipe       fwd rel err   dgrad rel err  wgrad rel err   (mean-biased X and D)\n");
    for (int id = 0; id < QLIN_NRECIPES; id++) {
        qlin_recipe r;
        qlin_recipe_parse(qlin_recipe_name((qlin_recipe_id)id), &r);
        memset(dW, 0, (size_t)(n * m) * 4);
        qlin_forward(&r, X, W, l, m, n, Y, &ws, NULL);
        qlin_backward(&r, X, W, D, l, m, n, dX, dW, 1, &ws, NULL);
        ey[id] = rel_err(Y, Yx, l * n);
        edx[id] = rel_err(dX, dXx, l * m);
        edw[id] = rel_err(dW, dWx, n * m);
        printf("      %-11s %13.3e %15.3e %14.3e\n", qlin_recipe_name((qlin_recipe_id)id), ey[id], edx[id], edw[id]);
    }
    CHECK(ey[QLIN_AVERIS] * 4 <= ey[QLIN_NVFP4], "forward: averis %.3e not 4x below nvfp4 %.3e", ey[QLIN_AVERIS],
          ey[QLIN_NVFP4]);
    CHECK(edx[QLIN_AVERIS] * 4 <= edx[QLIN_NVFP4], "dgrad: averis %.3e not 4x below nvfp4 %.3e", edx[QLIN_AVERIS],
          edx[QLIN_NVFP4]);
    CHECK(ey[QLIN_NVFP4_RHT] == ey[QLIN_NVFP4], "RHT acts only on wgrad: forward equal (%.3e vs %.3e)",
          ey[QLIN_NVFP4_RHT], ey[QLIN_NVFP4]);
    CHECK(ey[QLIN_BF16] < 1e-2 && ey[QLIN_BF16] < ey[QLIN_AVERIS], "bf16 is the most accurate (%.3e)", ey[QLIN_BF16]);
    qlin_ws_free(&ws);
    free(X); free(W); free(D); free(Yx); free(dXx); free(dWx); free(tmp); free(Wt); free(Xt); free(Dt);
    free(Y); free(dX); free(dW);
}

/* The same bits for 1, 2 and 3 threads and across runs with one seed. */
void test_qlinear_deterministic_threads(void) {
#ifdef _OPENMP
    const int64_t l = 70, m = 64, n = 48;
    trng g = {5};
    float *X = randn(l * m, &g, 1.0f), *W = randn(n * m, &g, 0.1f), *D = randn(l * n, &g, 0.01f);
    int saved = omp_get_max_threads();
    for (int be = 1; be <= 2; be++) {
        if (be == AVERIS_GEMM_BLAS && !averis_gemm_have_blas()) continue;
        averis_gemm_set_backend((averis_gemm_backend)be);
        for (int id = 0; id < QLIN_NRECIPES; id++) {
            qlin_recipe r;
            qlin_recipe_parse(qlin_recipe_name((qlin_recipe_id)id), &r);
            float *out[4];
            for (int k = 0; k < 4; k++) {
                int nt = k < 3 ? k + 1 : 2; /* 1, 2, 3 threads, then a repeat */
                omp_set_num_threads(nt);
                out[k] = calloc((size_t)(l * n + l * m + n * m), 4);
                qlin_ws ws = {0};
                qlin_forward(&r, X, W, l, m, n, out[k], &ws, NULL);
                qlin_backward(&r, X, W, D, l, m, n, out[k] + l * n, out[k] + l * n + l * m, 11, &ws, NULL);
                qlin_ws_free(&ws);
            }
            for (int k = 1; k < 4; k++)
                CHECK(!memcmp(out[0], out[k], (size_t)(l * n + l * m + n * m) * 4),
                      "%s (gemm %s): run %d differs from the 1-thread run", qlin_recipe_name((qlin_recipe_id)id),
                      averis_gemm_backend_name(), k);
            for (int k = 0; k < 4; k++) free(out[k]);
        }
    }
    omp_set_num_threads(saved);
    averis_gemm_set_backend(AVERIS_GEMM_AUTO);
    free(X); free(W); free(D);
#else
    CHECK(1, "no OpenMP: single-threaded by construction");
#endif
}

void test_qlinear_simd_levels_identical(void) {
    /* every recipe's forward and backward (the wgrad column sums with the
     * inverse RHT included) bit-identical on every SIMD level the host has */
    const char *levels[] = {"scalar", "avx2", "avx512"};
    const nvfp4_impl ids[] = {NVFP4_IMPL_SCALAR, NVFP4_IMPL_AVX2, NVFP4_IMPL_AVX512};
    const int64_t l = 70, m = 64, n = 48, total = l * n + l * m + n * m;
    trng g = {6};
    float *X = randn(l * m, &g, 1.0f), *W = randn(n * m, &g, 0.1f), *D = randn(l * n, &g, 0.01f);
    const char *saved = getenv("AVERIS_IMPL");
    char *keep = saved ? strdup(saved) : NULL;
    int compared = 0;
    for (int id = 0; id < QLIN_NRECIPES; id++) {
        qlin_recipe r;
        qlin_recipe_parse(qlin_recipe_name((qlin_recipe_id)id), &r);
        float *out[3] = {0};
        for (int k = 0; k < 3; k++) {
            if (nvfp4_impl_resolve(ids[k]) != ids[k]) continue; /* not on this host */
            setenv("AVERIS_IMPL", levels[k], 1);
            out[k] = calloc((size_t)total, 4);
            qlin_ws ws = {0};
            qlin_forward(&r, X, W, l, m, n, out[k], &ws, NULL);
            qlin_backward(&r, X, W, D, l, m, n, out[k] + l * n, out[k] + l * n + l * m, 11, &ws, NULL);
            qlin_ws_free(&ws);
            if (k) {
                CHECK(!memcmp(out[0], out[k], (size_t)total * 4), "%s: %s differs from scalar",
                      qlin_recipe_name((qlin_recipe_id)id), levels[k]);
                compared++;
            }
        }
        for (int k = 0; k < 3; k++) free(out[k]);
    }
    if (keep) setenv("AVERIS_IMPL", keep, 1);
    else unsetenv("AVERIS_IMPL");
    free(keep);
    CHECK(compared >= QLIN_NRECIPES || !nvfp4_cpu_has_avx2(), "compared %d", compared);
    free(X); free(W); free(D);
}

void test_qlinear_shapes_and_errors(void) {
    qlin_recipe r;
    CHECK(qlin_recipe_parse("nvfp5", &r) == AVERIS_EINVAL && strstr(averis_last_error(), "nvfp5"),
          "unknown recipe named: %s", averis_last_error());
    CHECK(qlin_recipe_parse("averis,mean=fp8", &r) == AVERIS_EINVAL && strstr(averis_last_error(), "fp8"),
          "bad value named: %s", averis_last_error());
    CHECK(qlin_recipe_parse("averis,colour=red", &r) == AVERIS_EINVAL && strstr(averis_last_error(), "colour"),
          "unknown option named: %s", averis_last_error());
    CHECK(qlin_recipe_parse("averis-rht,seed=42,mean=fp4", &r) == AVERIS_OK && r.seed == 42 && r.mean_fp4 &&
              r.rht && r.split_x && r.split_d && r.sr,
          "averis-rht with overrides");
    float X[20 * 4] = {0}, W[16 * 20] = {0}, Y[4 * 16];
    qlin_ws ws = {0};
    qlin_recipe_parse("nvfp4", &r);
    CHECK(qlin_forward(&r, X, W, 4, 20, 16, Y, &ws, NULL) == AVERIS_EINVAL && strstr(averis_last_error(), "in 20"),
          "in = 20 rejected for FP4 with a message: %s", averis_last_error());
    CHECK(qlin_forward(&r, X, W, 0, 16, 16, Y, &ws, NULL) == AVERIS_EINVAL, "no tokens rejected");
    qlin_recipe_parse("bf16", &r);
    CHECK(qlin_forward(&r, X, W, 4, 20, 16, Y, &ws, NULL) == AVERIS_OK, "bf16 takes in = 20");
    qlin_ws_free(&ws);
}
