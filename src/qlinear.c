/* qlinear.c — the recipes of ../shared/AVERIS.md for one linear layer.
 *
 * Y = X·Wᵀ with X [l×m] (tokens × in), W [n×m], D = ∂L/∂Y [l×n]. A bar is
 * an NVFP4 round trip (quantize, dequantize: exact emulation of FP4 GEMM
 * operands, fp32 accumulation). μ_X = (1/l)·1ᵀX [m], X_R = X − 1·μ_X, and
 * likewise μ_D [n], D_R.
 *
 *   nvfp4     Y  = X̄·W̄ᵀ              dX = D̄·W̄           dW += D̄ᵀ·X̄
 *   averis    Y  = X̄_R·W̄ᵀ + 1·(μ̄_X·W̄ᵀ)
 *             dX = D̄_R·W̄ + 1·(μ̄_D·W̄)
 *             dW += D̄_Rᵀ·X̄_R + μ̄_Dᵀ·(1ᵀX̄_R) + (D̄_Rᵀ1)·μ̄_X + l·μ̄_Dᵀ·μ̄_X
 *   *-rht     the wgrad copies (Xᵀ, Dᵀ, or their residuals) are transformed
 *             by the 16-point RHT along tokens before quantizing; the GEMM
 *             runs on the transformed operands (Hᵀ·H = I cancels inside it)
 *   bf16      operands rounded to BF16, fp32 accumulation
 *   fp32      plain fp32 (the model's reference check against transformers)
 *
 * Weights: 16×16 tiles, round to nearest; activations 1×16 RN; output
 * gradients 1×16 with SR. μ̄ is μ in fp32 (default) or its NVFP4 round trip.
 * The rank-one terms are vector products: 1ᵀX̄_R is a column sum; no l×m or
 * l×n outer product is formed.
 */
#include "averis/qlinear.h"
#include "averis/model_spec.h"
#include "averis/gemm.h"
#include "averis/half.h"
#include "averis/status.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- recipes */
static const char *k_names[QLIN_NRECIPES] = {"bf16", "nvfp4", "nvfp4-rht", "averis", "averis-rht", "fp32"};

const char *qlin_recipe_name(qlin_recipe_id id) {
    return (unsigned)id < QLIN_NRECIPES ? k_names[id] : "?";
}

static int parse_bool(const char *v, int *out) {
    if (!strcmp(v, "1") || !strcmp(v, "on") || !strcmp(v, "true")) { *out = 1; return 1; }
    if (!strcmp(v, "0") || !strcmp(v, "off") || !strcmp(v, "false")) { *out = 0; return 1; }
    return 0;
}

averis_status qlin_recipe_parse(const char *spec, qlin_recipe *r) {
    char buf[256];
    if (!spec || strlen(spec) >= sizeof buf) return averis_fail(AVERIS_EINVAL, "recipe: missing or too long");
    strcpy(buf, spec);
    memset(r, 0, sizeof *r);
    char *save = NULL, *tok = strtok_r(buf, ",", &save);
    int id = -1;
    for (int i = 0; tok && i < QLIN_NRECIPES; i++)
        if (!strcmp(tok, k_names[i])) id = i;
    if (id < 0)
        return averis_fail(AVERIS_EINVAL, "recipe: unknown recipe '%s' (want bf16, nvfp4, nvfp4-rht, averis, averis-rht, fp32)",
                           tok ? tok : "");
    r->id = (qlin_recipe_id)id;
    r->fp4 = id != QLIN_BF16 && id != QLIN_FP32;
    r->split_x = r->split_d = id == QLIN_AVERIS || id == QLIN_AVERIS_RHT;
    r->rht = id == QLIN_NVFP4_RHT || id == QLIN_AVERIS_RHT;
    r->sr = r->fp4;
    r->w_block = NVFP4_BLOCK_16X16;
    while ((tok = strtok_r(NULL, ",", &save))) {
        char *eq = strchr(tok, '=');
        if (!eq) return averis_fail(AVERIS_EINVAL, "recipe '%s': option '%s' is not key=value", spec, tok);
        *eq = 0;
        const char *k = tok, *v = eq + 1;
        int ok = 1;
        if (!strcmp(k, "seed")) {
            char *end;
            r->seed = strtoull(v, &end, 10);
            ok = *v && !*end && *v != '-';
        } else if (!strcmp(k, "mean")) {
            ok = !strcmp(v, "fp32") || !strcmp(v, "fp4");
            r->mean_fp4 = !strcmp(v, "fp4");
        } else if (!strcmp(k, "sr")) ok = parse_bool(v, &r->sr);
        else if (!strcmp(k, "rht")) ok = parse_bool(v, &r->rht);
        else if (!strcmp(k, "wblock")) {
            ok = !strcmp(v, "16x16") || !strcmp(v, "1x16");
            r->w_block = !strcmp(v, "1x16") ? NVFP4_BLOCK_1X16 : NVFP4_BLOCK_16X16;
        } else return averis_fail(AVERIS_EINVAL, "recipe '%s': unknown option '%s'", spec, k);
        if (!ok) return averis_fail(AVERIS_EINVAL, "recipe '%s': bad value '%s' for '%s'", spec, v, k);
    }
    if (!r->fp4 && (r->rht || r->mean_fp4))
        return averis_fail(AVERIS_EINVAL, "recipe '%s': %s takes no FP4 options", spec, k_names[r->id]);
    return AVERIS_OK;
}

/* ----------------------------------------------------------- workspace */
void qlin_ws_free(qlin_ws *ws) {
    for (int i = 0; i < QLIN_WS_SLOTS; i++) {
        free(ws->buf[i]);
        ws->buf[i] = NULL;
        ws->cap[i] = 0;
    }
}

static float *ws_get(qlin_ws *ws, int slot, int64_t n) {
    if ((size_t)n > ws->cap[slot]) {
        free(ws->buf[slot]);
        ws->buf[slot] = malloc((size_t)n * sizeof(float));
        ws->cap[slot] = ws->buf[slot] ? (size_t)n : 0;
    }
    return ws->buf[slot];
}
enum { WS_A, WS_B, WS_C, WS_T, WS_MEAN, WS_MEANQ, WS_VEC, WS_T2, WS_MEANX, WS_MEANXQ };
_Static_assert(WS_MEANXQ < QLIN_WS_SLOTS, "qlin_ws has a slot per buffer");

/* ----------------------------------------------------------- operands */
static void record(qlin_opstat *st, const nvfp4_stats *q, float amax) {
    if (!st) return;
    st->q = *q;
    st->amax = amax;
}

/* x [rows×cols] (row stride ld) → its NVFP4 round trip in out [rows×cols_padded]
 * (still RHT-transformed if rht). mean [cols] is subtracted first, if given. */
static averis_status roundtrip(const float *x, int64_t rows, int64_t cols, int64_t ld, nvfp4_block_kind block,
                               const float *mean, float amax_hint, int rht, int sr, uint64_t seed, uint64_t stream,
                               float *out, qlin_opstat *st) {
    nvfp4_tensor t;
    averis_status s = nvfp4_tensor_alloc(&t, rows, cols, block);
    if (s) return s;
    nvfp4_opts o = nvfp4_opts_default();
    o.block = block;
    o.mean = mean;
    o.amax_hint = amax_hint;
    o.rht = rht;
    o.sr = sr;
    o.seed = seed;
    o.stream = stream;
    nvfp4_stats q;
    s = nvfp4_quantize(x, NVFP4_F32, rows, cols, ld, &o, &t, &q);
    if (!s) {
        /* dequantize the padded width: the wgrad GEMM runs over padded tokens */
        nvfp4_tensor wide = t;
        wide.cols = t.cols_padded;
        s = nvfp4_dequantize(&wide, 0, out);
        record(st, &q, t.amax);
    }
    nvfp4_tensor_free(&t);
    return s;
}

/* μ = column means of x [rows×cols] (and the residual's exact amax);
 * μ̄ = μ, or its NVFP4 round trip when the recipe says mean=fp4. */
static averis_status split_means(const qlin_recipe *r, const float *x, int64_t rows, int64_t cols, float *mean,
                                 float *mean_bar, float *res_amax, qlin_ws *ws) {
    float *mx = ws_get(ws, WS_T2, 2 * cols);
    if (!mx) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
    averis_status s = nvfp4_colstats(x, rows, cols, cols, mean, mx, mx + cols);
    if (s) return s;
    *res_amax = nvfp4_residual_amax(mean, mx, mx + cols, cols);
    if (!r->mean_fp4) {
        memcpy(mean_bar, mean, (size_t)cols * sizeof(float));
        return AVERIS_OK;
    }
    float *tmp = ws_get(ws, WS_T2, nvfp4_cols_padded(cols));
    if (!tmp) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
    s = roundtrip(mean, 1, cols, cols, NVFP4_BLOCK_1X16, NULL, -1.0f, 0, 0, 0, 0, tmp, NULL);
    if (!s) memcpy(mean_bar, tmp, (size_t)cols * sizeof(float));
    return s;
}

static void to_bf16(const float *x, int64_t n, float *out) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32(bf16_from_f32(x[i]));
}

static averis_status check_shape(const qlin_recipe *r, int64_t l, int64_t m, int64_t n) {
    if (l <= 0 || m <= 0 || n <= 0)
        return averis_fail(AVERIS_EINVAL, "qlinear: empty shape (tokens %lld, in %lld, out %lld)", (long long)l,
                           (long long)m, (long long)n);
    if (r->fp4 && (m % 16 || n % 16))
        return averis_fail(AVERIS_EINVAL,
                           "qlinear: recipe %s needs in and out to be multiples of 16 (got in %lld, out %lld)",
                           qlin_recipe_name(r->id), (long long)m, (long long)n);
    return AVERIS_OK;
}

/* out [rows×cols] += 1·(μ̄·B): v = μ̄·B once (B [k×cols], or [cols×k] if
 * transB), then added to every row; the outer product is never formed. */
static averis_status add_mean_term(const float *mu_bar, const float *B, int transB, int64_t k, int64_t rows,
                                   int64_t cols, float *out, qlin_ws *ws) {
    float *v = ws_get(ws, WS_VEC, cols);
    if (!v) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
    averis_sgemm(0, transB, 1, cols, k, 1.0f, mu_bar, k, B, transB ? k : cols, 0.0f, v, cols);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (rows * cols >= 65536)
#endif
    for (int64_t t = 0; t < rows; t++)
        for (int64_t j = 0; j < cols; j++) out[t * cols + j] += v[j];
    return AVERIS_OK;
}

/* ------------------------------------------------------------- forward */
averis_status qlin_forward(const qlin_recipe *r, const float *X, const float *W, int64_t l, int64_t m, int64_t n,
                           float *Y, qlin_ws *ws, qlin_stats *stats) {
    averis_status s = check_shape(r, l, m, n);
    if (s) return s;
    float *Xq = ws_get(ws, WS_A, l * m), *Wq = ws_get(ws, WS_B, n * m);
    if (!Xq || !Wq) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
    if (r->id == QLIN_FP32) {
        averis_sgemm(0, 1, l, n, m, 1.0f, X, m, W, m, 0.0f, Y, n);
        return AVERIS_OK;
    }
    if (!r->fp4) {
        to_bf16(X, l * m, Xq);
        to_bf16(W, n * m, Wq);
        averis_sgemm(0, 1, l, n, m, 1.0f, Xq, m, Wq, m, 0.0f, Y, n); /* Y = X·Wᵀ */
        return AVERIS_OK;
    }
    /* W̄ (16×16 tiles along m); X̄ or X̄_R (1×16 along m) */
    s = roundtrip(W, n, m, m, r->w_block, NULL, -1.0f, 0, 0, 0, 0, Wq, stats ? &stats->w : NULL);
    if (s) return s;
    float *mu = NULL, *mu_bar = NULL, amax = -1.0f;
    if (r->split_x) {
        mu = ws_get(ws, WS_MEAN, m);
        mu_bar = ws_get(ws, WS_MEANQ, m);
        if (!mu || !mu_bar) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
        if ((s = split_means(r, X, l, m, mu, mu_bar, &amax, ws))) return s;
    }
    s = roundtrip(X, l, m, m, NVFP4_BLOCK_1X16, mu, amax, 0, 0, 0, 0, Xq, stats ? &stats->x_fwd : NULL);
    if (s) return s;
    averis_sgemm(0, 1, l, n, m, 1.0f, Xq, m, Wq, m, 0.0f, Y, n); /* Y = X̄(_R)·W̄ᵀ */
    if (r->split_x) return add_mean_term(mu_bar, Wq, 1, m, l, n, Y, ws); /* + 1·(μ̄_X·W̄ᵀ) */
    return AVERIS_OK;
}

/* ------------------------------------------------------------ backward */
/* out [cols×rows] = (x − 1·mu)ᵀ for x [rows×cols] (mu [cols] or NULL), in
 * 32×32 tiles so both sides stay in cache; inside a tile 8×8 blocks go
 * through a small buffer, so that both the loads and the stores run along
 * rows (the compiler vectorises both). The same x − mu per element as a
 * plain loop. */
static void transpose_sub(const float *x, const float *mu, int64_t rows, int64_t cols, float *out) {
    enum { TB = 32, SB = 8 };
    int64_t ntj = (cols + TB - 1) / TB;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t tj = 0; tj < ntj; tj++) {
        int64_t j0 = tj * TB, j1 = j0 + TB < cols ? j0 + TB : cols;
        float buf[SB][SB];
        for (int64_t i0 = 0; i0 < rows; i0 += TB) {
            int64_t i1 = i0 + TB < rows ? i0 + TB : rows;
            for (int64_t jb = j0; jb < j1; jb += SB)
                for (int64_t ib = i0; ib < i1; ib += SB) {
                    if (jb + SB <= j1 && ib + SB <= i1) { /* a full 8×8 block */
                        for (int a = 0; a < SB; a++) {
                            const float *xr = x + (ib + a) * cols + jb;
                            if (mu)
                                for (int b = 0; b < SB; b++) buf[b][a] = xr[b] - mu[jb + b];
                            else
                                for (int b = 0; b < SB; b++) buf[b][a] = xr[b];
                        }
                        for (int b = 0; b < SB; b++)
                            for (int a = 0; a < SB; a++) out[(jb + b) * rows + ib + a] = buf[b][a];
                    } else { /* an edge block */
                        int64_t je = jb + SB < j1 ? jb + SB : j1, ie = ib + SB < i1 ? ib + SB : i1;
                        for (int64_t j = jb; j < je; j++) {
                            float m = mu ? mu[j] : 0.0f;
                            for (int64_t i = ib; i < ie; i++) out[j * rows + i] = mu ? x[i * cols + j] - m : x[i * cols + j];
                        }
                    }
                }
        }
    }
}

/* The wgrad copy of x [l×c]: (x − 1·μ)ᵀ [c×l] quantized along tokens (RHT,
 * SR as the recipe says) → out [c×lp]; colsum [c] gets Σ_t of the quantized
 * residual in the token domain (inverse RHT first), if asked. */
#define WG_COLS 8    /* columns summed side by side in wgrad_copy */
#define WG_CHUNK 256 /* tokens per inverse-RHT chunk (a multiple of 16) */

static averis_status wgrad_copy(const qlin_recipe *r, const float *x, const float *mu, int64_t l, int64_t c, int sr,
                                uint64_t stream, float *out, float *colsum, qlin_ws *ws, qlin_opstat *st) {
    int64_t lp = nvfp4_cols_padded(l);
    float *xt = ws_get(ws, WS_T, c * l);
    if (!xt) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
    transpose_sub(x, mu, l, c, xt);
    averis_status s = roundtrip(xt, c, l, l, NVFP4_BLOCK_1X16, NULL, -1.0f, r->rht, sr, r->seed, stream, out, st);
    if (s || !colsum) return s;
    /* Per column the fp64 sum runs over the tokens in order, as
     * nvfp4_rht16_inv_ref then Σ would; WG_COLS columns at a time give the
     * core independent add chains, and threads split the columns. */
    nvfp4_impl impl = nvfp4_impl_resolve(NVFP4_IMPL_AUTO);
    const int rht = r->rht;
#pragma omp parallel for schedule(static) if (c * lp >= 65536)
    for (int64_t j0 = 0; j0 < c; j0 += WG_COLS) {
        int nj = c - j0 < WG_COLS ? (int)(c - j0) : WG_COLS;
        double acc[WG_COLS] = {0};
        float tok[WG_COLS][WG_CHUNK];
        for (int64_t g0 = 0; g0 < lp; g0 += WG_CHUNK) {
            int64_t n = lp - g0 < WG_CHUNK ? lp - g0 : WG_CHUNK;
            for (int k = 0; k < WG_COLS; k++) {
                if (k >= nj) memset(tok[k], 0, sizeof tok[k]);
                else if (rht) nvfp4_rht16_inv_rows(out + (j0 + k) * lp + g0, tok[k], n / 16, impl);
                else memcpy(tok[k], out + (j0 + k) * lp + g0, (size_t)n * sizeof(float));
            }
            for (int64_t i = 0; i < n; i++)
                for (int k = 0; k < WG_COLS; k++) acc[k] += tok[k][i];
        }
        for (int k = 0; k < nj; k++) colsum[j0 + k] = (float)acc[k];
    }
    return AVERIS_OK;
}

averis_status qlin_backward(const qlin_recipe *r, const float *X, const float *W, const float *D, int64_t l,
                            int64_t m, int64_t n, float *dX, float *dW, uint64_t sr_stream, qlin_ws *ws,
                            qlin_stats *stats) {
    averis_status s = check_shape(r, l, m, n);
    if (s) return s;
    if (r->id == QLIN_FP32) {
        if (dX) averis_sgemm(0, 0, l, m, n, 1.0f, D, n, W, m, 0.0f, dX, m);
        if (dW) averis_sgemm(1, 0, n, m, l, 1.0f, D, n, X, m, 1.0f, dW, m);
        return AVERIS_OK;
    }
    if (!r->fp4) {
        float *Db = ws_get(ws, WS_A, l * n), *Wb = ws_get(ws, WS_B, n * m), *Xb = ws_get(ws, WS_C, l * m);
        if (!Db || !Wb || !Xb) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
        to_bf16(D, l * n, Db);
        if (dX) {
            to_bf16(W, n * m, Wb);
            averis_sgemm(0, 0, l, m, n, 1.0f, Db, n, Wb, m, 0.0f, dX, m); /* dX = D·W */
        }
        if (dW) {
            to_bf16(X, l * m, Xb);
            averis_sgemm(1, 0, n, m, l, 1.0f, Db, n, Xb, m, 1.0f, dW, m); /* dW += Dᵀ·X */
        }
        return AVERIS_OK;
    }
    float *mu_d = NULL, *mu_d_bar = NULL, amax_d = -1.0f;
    if (r->split_d) {
        mu_d = ws_get(ws, WS_MEAN, n);
        mu_d_bar = ws_get(ws, WS_MEANQ, n);
        if (!mu_d || !mu_d_bar) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
        if ((s = split_means(r, D, l, n, mu_d, mu_d_bar, &amax_d, ws))) return s;
    }
    if (dX) {
        /* dX = D̄(_R)·W̄ (+ 1·(μ̄_D·W̄)); D along n with SR; W̄ along n */
        float *Dq = ws_get(ws, WS_A, l * n), *Wq = ws_get(ws, WS_B, n * m);
        if (!Dq || !Wq) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
        s = roundtrip(D, l, n, n, NVFP4_BLOCK_1X16, mu_d, amax_d, 0, r->sr, r->seed, qlin_dgrad_stream(sr_stream), Dq,
                      stats ? &stats->d_dgrad : NULL);
        if (s) return s;
        if (r->w_block == NVFP4_BLOCK_16X16) {
            /* 16×16 tiles: W quantized along n has the values of W̄ (forward) */
            s = roundtrip(W, n, m, m, NVFP4_BLOCK_16X16, NULL, -1.0f, 0, 0, 0, 0, Wq, stats ? &stats->w : NULL);
            if (s) return s;
            averis_sgemm(0, 0, l, m, n, 1.0f, Dq, n, Wq, m, 0.0f, dX, m);
        } else {
            float *Wt = ws_get(ws, WS_T, m * n);
            if (!Wt) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
            transpose_sub(W, NULL, n, m, Wt); /* Wᵀ [m×n], quantized along n */
            s = roundtrip(Wt, m, n, n, NVFP4_BLOCK_1X16, NULL, -1.0f, 0, 0, 0, 0, Wq, stats ? &stats->w : NULL);
            if (s) return s;
            averis_sgemm(0, 1, l, m, n, 1.0f, Dq, n, Wq, n, 0.0f, dX, m);
        }
        if (r->split_d && (s = add_mean_term(mu_d_bar, Wq, r->w_block != NVFP4_BLOCK_16X16, n, l, m, dX, ws)))
            return s;
    }
    if (dW) {
        /* dW += D̄_Rᵀ·X̄_R over padded tokens, then the rank-one terms */
        int64_t lp = nvfp4_cols_padded(l);
        float *Dt = ws_get(ws, WS_A, n * lp), *Xt = ws_get(ws, WS_C, m * lp);
        float *sums = ws_get(ws, WS_VEC, n + m);
        float *mu_x = NULL, *mu_x_bar = NULL;
        if (!Dt || !Xt || !sums) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
        float *sD = sums, *sX = sums + n;
        s = wgrad_copy(r, D, mu_d, l, n, r->sr, qlin_wgrad_stream(sr_stream), Dt, r->split_x ? sD : NULL, ws,
                       stats ? &stats->d_wgrad : NULL);
        if (s) return s;
        if (r->split_x) {
            mu_x = ws_get(ws, WS_MEANX, m);
            mu_x_bar = ws_get(ws, WS_MEANXQ, m);
            if (!mu_x || !mu_x_bar) return averis_fail(AVERIS_ENOMEM, "qlinear: out of memory");
            float unused;
            if ((s = split_means(r, X, l, m, mu_x, mu_x_bar, &unused, ws))) return s;
        }
        s = wgrad_copy(r, X, mu_x, l, m, 0, 0, Xt, r->split_d ? sX : NULL, ws, stats ? &stats->x_wgrad : NULL);
        if (s) return s;
        averis_sgemm(0, 1, n, m, lp, 1.0f, Dt, lp, Xt, lp, 1.0f, dW, m);
        if (r->split_x || r->split_d) {
            /* dW_ij += μ̄_D[i]·(Σ_t X̄_R[t,j] + l·μ̄_X[j]) + (Σ_t D̄_R[t,i])·μ̄_X[j] */
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
            for (int64_t i = 0; i < n; i++) {
                float md = r->split_d ? mu_d_bar[i] : 0.0f, sd = r->split_x ? sD[i] : 0.0f;
                for (int64_t j = 0; j < m; j++) {
                    float mx = r->split_x ? mu_x_bar[j] : 0.0f, sx = r->split_d ? sX[j] : 0.0f;
                    dW[i * m + j] += md * (sx + (float)l * mx) + sd * mx;
                }
            }
        }
    }
    return AVERIS_OK;
}
