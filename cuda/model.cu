/* model.cu — the Qwen3 decoder of src/model.c on the GPU: the same math,
 * parameters, recipes and SR streams, with fp32 master weights, an fp32
 * residual stream and BF16 activations between the kernels (fp32 with
 * AVERIS_ACT=fp32: forward_backward<A> is one template for both); every
 * GEMM runs on BF16 operands with fp32 accumulation (exact NVFP4 emulation
 * for the quantized linears).
 *
 *   x      = E[tokens]                                      k_embed
 *   block (×L):
 *     h1   = RMSNorm(x)·w_in                                k_rmsnorm
 *     q,k,v = qlin(h1)                                      gq_forward (one X̄ for three)
 *     q,k  = RoPE(RMSNorm_Dh(·)·w) → BF16 [B,H,T,Dh]        k_headnorm_rope
 *     S    = Q·Kᵀ/√Dh per (b, kv group), P = softmax_causal  cuBLAS batched + k_softmax
 *     ao   = P·V → [N, H·Dh]                                cuBLAS batched + k_heads_to_tokens
 *     x    = x + qlin(ao)                                   residual in the GEMM's C
 *     h2   = RMSNorm(x)·w_post; x = x + qlin_d(silu(qlin_g(h2))⊙qlin_u(h2))
 *   loss   = CE((RMSNorm(x)·w_f)·Eᵀ)                        chunks of tokens: logits,
 *                                                           loss and dlogits together
 * Attention materialises P (BF16, B·H·T² per layer) by default, and runs
 * flash.cu where P would not fit (see setup).
 * Determinism: no float atomics; reductions run in fixed orders, so a run
 * replays bit for bit on the same GPU.
 */
#include "qlinear.cuh"
#include "averis/model_spec.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#define CB_TRY AVC_CUBLAS_TRY

namespace {

/* ================================================================ kernels */
__global__ void k_embed(const int *tok, const float *E, float *x, int64_t N, int64_t C) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint32_t i32 = (uint32_t)i, c32 = (uint32_t)C; /* 32-bit index math: sizes checked at setup */
    if (i < N * C) x[i] = E[(int64_t)tok[i32 / c32] * C + i32 % c32];
}

/* y = w·(x·rstd), rstd = (mean x² + ε)^-½: one warp per row; y fp32 or BF16 */
template <typename Y>
__global__ void k_rmsnorm(const float *x, const float *w, Y *y, float *rstd, int64_t rows, int64_t d, float eps) {
    int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const float *xr = x + r * d;
    float ss = 0.0f;
    for (int64_t i = lane; i < d; i += 32) ss += xr[i] * xr[i];
    ss = avc_warp_sum(ss);
    float rs = 1.0f / sqrtf(ss / (float)d + eps);
    if (lane == 0) rstd[r] = rs;
    for (int64_t i = lane; i < d; i += 32) avc_st(y + r * d + i, w[i] * (xr[i] * rs));
}

/* dx (= or +=) rstd·(dy·w − x̂·mean(dy·w·x̂)), x̂ = x·rstd: one warp per row.
 * x + mb: mb (or NULL) is the split recipes' fp32 mean term beside a BF16 x,
 * [nh·d] for rows (token, head) (see gq_forward) */
template <typename X>
__global__ void __launch_bounds__(256, 4) k_rmsnorm_bwd(float *dx, const float *dy, const X *x, const float *mb, int nh, const float *rstd,
                              const float *w, int64_t rows, int64_t d, int acc) {
    int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const X *xr = x + r * d;
    const float *dyr = dy + r * d, *mr = mb ? mb + ((uint32_t)r % (uint32_t)nh) * d : nullptr;
    auto xv = [&](int64_t i) { return avc_ld(xr + i) + (mr ? mr[i] : 0.0f); };
    float rs = rstd[r], dot = 0.0f;
    for (int64_t i = lane; i < d; i += 32) dot += dyr[i] * w[i] * (xv(i) * rs);
    dot = avc_warp_sum(dot);
    dot /= (float)d;
    for (int64_t i = lane; i < d; i += 32) {
        float v = rs * (dyr[i] * w[i] - (xv(i) * rs) * dot);
        dx[r * d + i] = acc ? dx[r * d + i] + v : v;
    }
}

/* part[c][i] = Σ_{rows of chunk c} dy·x·rstd (the norm weight's gradient) */
enum { NORM_CHUNK = 256 };
/* (launch bounds: without them ptxas fits 32 registers and loads one row at
 * a time; the grid is small, so loads in flight matter more than occupancy) */
template <typename X>
__global__ void __launch_bounds__(128, 4) k_normw_part(const float *dy, const X *x, const float *mb, int nh,
                                                       const float *rstd, int64_t rows, int64_t d, float *part) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y;
    if (i >= d) return;
    int64_t r0 = c * NORM_CHUNK, r1 = min(r0 + (int64_t)NORM_CHUNK, rows);
    float s = 0.0f;
#pragma unroll 16
    for (int64_t r = r0; r < r1; r++) {
        float xv = avc_ld(x + r * d + i) + (mb ? mb[((uint32_t)r % (uint32_t)nh) * d + i] : 0.0f);
        s += dy[r * d + i] * (xv * rstd[r]);
    }
    part[c * d + i] = s;
}
__global__ void k_normw_sum(const float *part, int64_t nchunk, int64_t d, float *dw) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= d) return;
    float s = 0.0f;
    for (int64_t c = 0; c < nchunk; c++) s += part[c * d + i];
    dw[i] += s;
}

/* Per (token n, head h): head RMSNorm with weight w [Dh], then the rotary
 * pairs (i, i+Dh/2) by position t = n mod T; writes fp32-exact BF16 to the
 * head-major out [B, nh, T, Dh] and rstd [N·nh]. One warp per (n, h). */
template <typename A>
__global__ void k_headnorm_rope(const A *raw, const float *mb, const float *w, const float *cs, const float *sn, int64_t N, int nh,
                                int Dh, int T, float eps, float *rstd, __nv_bfloat16 *out) {
    extern __shared__ float sm[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
    float *v = sm + warp * Dh;
    if (row >= N * nh) return;
    uint32_t n = (uint32_t)row / (uint32_t)nh;
    int h = (int)((uint32_t)row - n * (uint32_t)nh), b = (int)(n / (uint32_t)T), t = (int)(n - (uint32_t)b * T),
        half = Dh / 2;
    const A *x = raw + row * Dh;
    const float *m = mb ? mb + h * Dh : nullptr; /* the split recipes' fp32 mean term, or NULL */
    for (int i = lane; i < Dh; i += 32) v[i] = avc_ld(x + i) + (m ? m[i] : 0.0f);
    __syncwarp();
    float ss = 0.0f;
    for (int i = lane; i < Dh; i += 32) ss += v[i] * v[i];
    ss = avc_warp_sum(ss);
    float rs = 1.0f / sqrtf(ss / (float)Dh + eps);
    if (lane == 0) rstd[row] = rs;
    for (int i = lane; i < Dh; i += 32) v[i] = w[i] * (v[i] * rs);
    __syncwarp();
    __nv_bfloat16 *o = out + (((int64_t)b * nh + h) * T + t) * Dh;
    const float *c = cs + (int64_t)t * half, *s = sn + (int64_t)t * half;
    for (int i = lane; i < half; i += 32) {
        float a = v[i], bb = v[i + half];
        o[i] = __float2bfloat16_rn(a * c[i] - bb * s[i]);
        o[i + half] = __float2bfloat16_rn(bb * c[i] + a * s[i]);
    }
}

/* [N, nh, Dh] fp32 or BF16 (+ mb [nh·Dh], a mean term, or NULL) → [B, nh, T, Dh] BF16 */
template <typename X>
__global__ void k_tokens_to_heads(const X *x, const float *mb, __nv_bfloat16 *y, int64_t N, int nh, int Dh, int T) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * nh * Dh) return;
    uint32_t i32 = (uint32_t)i, q = i32 / (uint32_t)Dh, d = i32 - q * (uint32_t)Dh;
    uint32_t n = q / (uint32_t)nh, h = q - n * (uint32_t)nh, b = n / (uint32_t)T, t = n - b * (uint32_t)T;
    y[(((int64_t)b * nh + h) * T + t) * Dh + d] = __float2bfloat16_rn(avc_ld(x + i) + (mb ? mb[h * Dh + d] : 0.0f));
}

/* [B, nh, T, Dh] fp32 → [N, nh, Dh] fp32 or BF16, optionally rotating each
 * pair back (the RoPE backward: the same rotation with −sin) */
template <typename Y>
__global__ void k_heads_to_tokens(const float *x, Y *y, int64_t N, int nh, int Dh, int T, const float *cs,
                                  const float *sn) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = Dh / 2;
    int64_t per = cs ? half : Dh;
    if (i >= N * nh * per) return;
    uint32_t i32 = (uint32_t)i, q = i32 / (uint32_t)per, d = i32 - q * (uint32_t)per;
    uint32_t n = q / (uint32_t)nh, h = q - n * (uint32_t)nh, b = n / (uint32_t)T, t = n - b * (uint32_t)T;
    const float *src = x + (((int64_t)b * nh + h) * T + t) * Dh;
    Y *dst = y + ((int64_t)n * nh + h) * Dh;
    if (!cs) {
        avc_st(dst + d, src[d]);
        return;
    }
    float a = src[d], bb = src[d + half], c = cs[(int64_t)t * half + d], s = -sn[(int64_t)t * half + d];
    avc_st(dst + d, a * c - bb * s);
    avc_st(dst + d + half, bb * c + a * s);
}

/* P = softmax over j ≤ t of S (scaled already), BF16, zeros above the
 * diagonal up to the end of the row's causal block of tb rows (the GEMMs
 * read no further, see attention_fwd): one warp per row of T */
__global__ void k_softmax(const float *S, __nv_bfloat16 *P, int64_t rows, int T, int tb) {
    int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    int t = (int)((uint32_t)r % (uint32_t)T);
    const float *s = S + r * T;
    float mx = -INFINITY;
    for (int j = lane; j <= t; j += 32) mx = fmaxf(mx, s[j]);
    mx = avc_warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j <= t; j += 32) sum += expf(s[j] - mx);
    sum = avc_warp_sum(sum);
    float inv = 1.0f / sum;
    __nv_bfloat16 *p = P + r * T;
    int lim = (t / tb + 1) * tb;
    for (int j = lane; j < lim; j += 32) p[j] = __float2bfloat16_rn(j <= t ? expf(s[j] - mx) * inv : 0.0f);
}

/* dS = P⊙(dP − Σ_j P⊙dP)·scale, BF16; dP in fp32; written to the end of
 * the row's causal block of tb rows, as P */
template <int NK>
__global__ void __launch_bounds__(256, 2) k_softmax_bwd(const __nv_bfloat16 *P, const float *dP, __nv_bfloat16 *dS,
                                                        int64_t rows, int T, int tb, float scale) {
    int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    int t = (int)((uint32_t)r % (uint32_t)T);
    const __nv_bfloat16 *p = P + r * T;
    const float *dp = dP + r * T;
    /* the row's first 32·NK columns read once into registers, the rest (T >
     * 1024) from memory each pass: per lane the same operations in the same
     * order (j = lane, lane + 32, …) as two passes over memory */
    float pv[NK], dv[NK];
#pragma unroll
    for (int k = 0; k < NK; k++) {
        int j = lane + 32 * k;
        pv[k] = j <= t ? __bfloat162float(p[j]) : 0.0f;
        dv[k] = j <= t ? dp[j] : 0.0f;
    }
    float pdp = 0.0f;
#pragma unroll
    for (int k = 0; k < NK; k++)
        if (lane + 32 * k <= t) pdp += pv[k] * dv[k];
    for (int j = lane + 32 * NK; j <= t; j += 32) pdp += __bfloat162float(p[j]) * dp[j];
    pdp = avc_warp_sum(pdp);
    __nv_bfloat16 *ds = dS + r * T;
    int lim = (t / tb + 1) * tb;
#pragma unroll
    for (int k = 0; k < NK; k++) {
        int j = lane + 32 * k;
        if (j < lim) ds[j] = __float2bfloat16_rn(j <= t ? pv[k] * (dv[k] - pdp) * scale : 0.0f);
    }
    for (int j = lane + 32 * NK; j < lim; j += 32)
        ds[j] = __float2bfloat16_rn(j <= t ? __bfloat162float(p[j]) * (dp[j] - pdp) * scale : 0.0f);
}

/* k_softmax_bwd with NK = ⌈T/32⌉ rounded up to a power of two, at most 32 (longer rows: the tail loops) */
template <typename F> averis_status by_nk(int T, F f) {
    int nk = (T + 31) / 32;
    if (nk <= 4) return f(std::integral_constant<int, 4>());
    if (nk <= 8) return f(std::integral_constant<int, 8>());
    if (nk <= 16) return f(std::integral_constant<int, 16>());
    return f(std::integral_constant<int, 32>());
}

/* g, u [n/F × F] fp32 or BF16, each + its mean term [F] (mg, mu, or NULL) */
template <typename A>
__device__ __forceinline__ void gu_load(const A *g, const A *u, const float *mg, const float *mu, int64_t i, int64_t F,
                                        float &gv, float &uv) {
    gv = avc_ld(g + i), uv = avc_ld(u + i);
    if (mg) {
        uint32_t c = (uint32_t)i % (uint32_t)F;
        gv += mg[c], uv += mu[c];
    }
}

template <typename A>
__global__ void k_swiglu(const A *g, const A *u, const float *mg, const float *mu, A *a, int64_t n, int64_t F) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gv, uv;
        gu_load(g, u, mg, mu, i, F, gv, uv);
        avc_st(a + i, gv / (1.0f + expf(-gv)) * uv);
    }
}

template <typename A>
__global__ void k_swiglu_bwd(const float *da, const A *g, const A *u, const float *mg, const float *mu, float *dg,
                             float *du, int64_t n, int64_t F) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gv, uv;
        gu_load(g, u, mg, mu, i, F, gv, uv);
        float sg = 1.0f / (1.0f + expf(-gv));
        du[i] = da[i] * (gv * sg);
        dg[i] = da[i] * uv * (sg * (1.0f + gv * (1.0f - sg)));
    }
}

/* One row of logits per block: loss = log Σ e^(z−max) − (z_target − max),
 * max and Σ in one pass (online rescaling); with dl, a second pass writes
 * dl = (softmax − onehot)·dscale in BF16 */
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    s = (m == -INFINITY ? 0.0f : s * expf(m - mx)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mx));
    m = mx;
}

__global__ void k_xent(const float *logits, const int *targets, int64_t V, float *loss, __nv_bfloat16 *dl, float dscale) {
    __shared__ float red_m[32], red_s[32];
    int64_t r = blockIdx.x;
    const float *z = logits + r * V;
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = blockDim.x >> 5;
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t i = tid; i < V; i += blockDim.x) {
        float v = z[i];
        if (v > mx) {
            sum = (mx == -INFINITY ? 0.0f : sum * expf(mx - v)) + 1.0f;
            mx = v;
        } else
            sum += expf(v - mx);
    }
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, mx, o), s2 = __shfl_xor_sync(0xffffffffu, sum, o);
        lse_merge(mx, sum, m2, s2);
    }
    if (lane == 0) red_m[w] = mx, red_s[w] = sum;
    __syncthreads();
    mx = -INFINITY, sum = 0.0f;
    for (int k = 0; k < nw; k++) lse_merge(mx, sum, red_m[k], red_s[k]);
    int tg = targets[r];
    if (tid == 0) loss[r] = logf(sum) - (z[tg] - mx);
    if (!dl) return;
    float inv = 1.0f / sum;
    for (int64_t i = tid; i < V; i += blockDim.x) {
        float p = expf(z[i] - mx) * inv - (i == tg ? 1.0f : 0.0f);
        dl[r * V + i] = __float2bfloat16_rn(p * dscale);
    }
}

/* dE[tok] += Σ over the token's positions (in order) of dx: one block per
 * distinct token (pos sorted by token on the host) */
__global__ void k_embed_bwd(const float *dx, const int *uniq, const int *start, const int *pos, int64_t C, float *dE) {
    int u = blockIdx.x;
    int tok = uniq[u], p0 = start[u], p1 = start[u + 1];
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int k = p0; k < p1; k++) acc += dx[(int64_t)pos[k] * C + c];
        dE[(int64_t)tok * C + c] += acc;
    }
}

/* train.c's adamw_step, element for element (same fp32 operations) */
__global__ void k_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2, float eps, float lr,
                        float decay, float c1, float c2, float gscale) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    adamw_element(&p[i], &m[i], &v[i], g[i], gscale, b1, b2, c1, c2, lr, eps, decay);
}

/* Σ g² per 64K chunk in fp64 (block tree, fixed order) */
__global__ void k_sumsq(const float *g, int64_t n, double *part) {
    __shared__ double red[256];
    int64_t c0 = (int64_t)blockIdx.x * TRAIN_GRADNORM_CHUNK, c1 = min(c0 + TRAIN_GRADNORM_CHUNK, n);
    double s = 0.0;
    for (int64_t i = c0 + threadIdx.x; i < c1; i += blockDim.x) s += (double)g[i] * g[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k >= 1; k >>= 1) {
        if ((int)threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = red[0];
}

/* ========================================================= the model */
struct layer_io {
    float *x_in, *x_mid, *rstd1, *rstd_q, *rstd_k, *rstd2; /* fp32: the residual stream, norm statistics */
    void *h1, *q_raw, *k_raw, *v, *ao, *h2, *g, *u, *a;    /* activations: fp32 or BF16 (avc_model.act_bf16) */
    /* BF16 activations under a split recipe: q_raw … u hold the residual
     * product, their fp32 mean terms live here (gq_forward's mean_out) */
    float *mb_q, *mb_k, *mb_v, *mb_g, *mb_u;
    __nv_bfloat16 *qh, *kh, *vh, *P; /* P: the materialising path only */
    float *lse;                      /* [B·H·T] flash path: log Σ exp of each score row */
    gq_x in_h1, in_ao, in_h2, in_a;
};

struct blockw {
    float *in_norm, *wq, *wk, *wv, *wo, *q_norm, *k_norm, *post_norm, *wg, *wu, *wd;
};

} // namespace

struct avc_model {
    model_config cfg;
    qlin_recipe recipe, bf16_recipe;
    int bf16_last;
    int flash;    /* attention by cuda/flash.cu (else cuBLAS + materialised P) */
    int nsplit;   /* the materialised path's causal row blocks (attention_fwd) */
    avc_model_opts opts = {};
    int act_bf16; /* activations between kernels in BF16 (else fp32); the residual stream stays fp32 */
    char desc[128];
    int B, T;
    int64_t N, C, F, V, qd, kvd;
    int H, KV, Dh;
    size_t nparams;
    std::vector<model_tensor> tensors;
    float *params = nullptr, *grads = nullptr, *mom = nullptr, *var = nullptr;
    std::vector<blockw> w, g;
    float *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr, *g_embed = nullptr, *g_final_norm = nullptr,
          *g_lm_head = nullptr;
    std::vector<gq_w> wops; /* 7 per layer: q k v o g u d */
    __nv_bfloat16 *head_bf16 = nullptr;
    int weights_ready = 0;
    std::vector<layer_io> L;
    float *x_out = nullptr, *hf = nullptr, *rstd_f = nullptr, *tok_loss = nullptr; /* hf: fp32 activations only */
    __nv_bfloat16 *hf_bf16 = nullptr;
    float *rope_cos = nullptr, *rope_sin = nullptr;
    /* transient */
    float *Dv = nullptr;                  /* [B·H·T] flash backward: rowsum(dO⊙O) */
    float *S = nullptr;                   /* [B·H·T·T] scores / dP */
    __nv_bfloat16 *dS = nullptr;          /* [B·H·T·T] */
    float *oh = nullptr;                  /* [N·max(qd, kvd)] head-major fp32 (O, dQ) */
    float *oh2 = nullptr;                 /* [N·kvd] head-major fp32 (dK) */
    float *oh3 = nullptr;                 /* [N·kvd] head-major fp32 (dV) */
    __nv_bfloat16 *doh = nullptr;         /* [N·qd] head-major BF16 dO */
    float *logits = nullptr;              /* [chunk·V] */
    __nv_bfloat16 *dlogits = nullptr;     /* [chunk·V] */
    int64_t chunk = 0;
    __nv_bfloat16 *xq = nullptr, *xt = nullptr;
    gq_scratch scr = {};
    float *dx = nullptr, *dh = nullptr, *dtmp = nullptr, *dao = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr,
          *da = nullptr, *dg = nullptr, *du = nullptr, *normw_part = nullptr;
    double *norm_part = nullptr;
    int *tok = nullptr, *tgt = nullptr, *emb_idx = nullptr; /* emb_idx: uniq, start, pos */
    cudaStream_t s = nullptr;
    cublasHandle_t cb = nullptr;
    std::vector<void *> allocs;

    template <typename T> averis_status alloc(T **p, int64_t n) {
        void *q = nullptr;
        cudaError_t e = cudaMalloc(&q, (size_t)std::max<int64_t>(n, 1) * sizeof(T));
        if (e != cudaSuccess)
            return averis_fail(AVERIS_ENOMEM, "cuda: cannot allocate %.1f MiB (%s); a smaller --batch or --seq fits",
                               (double)n * sizeof(T) / 1048576.0, cudaGetErrorString(e));
        allocs.push_back(q);
        *p = static_cast<T *>(q);
        return AVERIS_OK;
    }
    /* n activation elements (fp32 or BF16) */
    averis_status alloc_act(void **p, int64_t n) {
        char *q = nullptr;
        AVC_OK(alloc(&q, n * (act_bf16 ? 2 : 4)));
        *p = q;
        return AVERIS_OK;
    }
    const qlin_recipe *rec(int l) const { return model_block_is_bf16(cfg.num_hidden_layers, bf16_last, l) ? &bf16_recipe : &recipe; }
};

namespace {

/* Row-major batched GEMM C_i = α·op(A_i)·op(B_i) + β·C_i through cuBLAS's
 * column-major interface (operands swapped). */
averis_status bgemm(avc_model *g, int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha, const void *A,
                    cudaDataType_t ta, int64_t lda, int64_t sA, const void *B, cudaDataType_t tb, int64_t ldb, int64_t sB,
                    float beta, void *C, cudaDataType_t tc, int64_t ldc, int64_t sC, int64_t batch) {
    CB_TRY(cublasGemmStridedBatchedEx(g->cb, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                      (int)N, (int)M, (int)K, &alpha, B, tb, (int)ldb, sB, A, ta, (int)lda, sA, &beta, C,
                                      tc, (int)ldc, sC, (int)batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return AVERIS_OK;
}

/* the norm backward of x (+ mb, a mean term for rows (token, head) of nh
 * heads, or NULL) */
template <typename X>
averis_status rmsnorm_bwd(avc_model *g, float *dx, float *dw, const float *dy, const X *x, const float *mb, int nh,
                          const float *rstd, const float *w, int64_t rows, int64_t d, int acc) {
    AVC_PROF("norms bwd", g->s);
    k_rmsnorm_bwd<<<avc_blocks(rows * 32, 256), 256, 0, g->s>>>(dx, dy, x, mb, nh, rstd, w, rows, d, acc);
    AVC_LAUNCHED();
    int64_t nchunk = (rows + NORM_CHUNK - 1) / NORM_CHUNK;
    k_normw_part<<<dim3(avc_blocks(d, 128), (unsigned)nchunk), 128, 0, g->s>>>(dy, x, mb, nh, rstd, rows, d,
                                                                            g->normw_part);
    AVC_LAUNCHED();
    k_normw_sum<<<avc_blocks(d, 128), 128, 0, g->s>>>(g->normw_part, nchunk, d, dw);
    AVC_LAUNCHED();
    return AVERIS_OK;
}

averis_status prep_weights(avc_model *g) {
    if (g->weights_ready) return AVERIS_OK;
    AVC_PROF("weight operands", g->s);
    for (int l = 0; l < g->cfg.num_hidden_layers; l++)
        for (int k = 0; k < 7; k++) AVC_OK(gq_prep_w(g->rec(l), &g->wops[7 * l + k], g->s));
    AVC_OK(avq_to_bf16(g->lm_head, g->head_bf16, g->V * g->C, g->s));
    g->weights_ready = 1;
    return AVERIS_OK;
}

/* Attention forward of layer l: S = Q·Kᵀ/√Dh, P = softmax, ao = P·V */
template <typename A> averis_status attention_fwd(avc_model *g, layer_io &a) {
    AVC_PROF("attention fwd", g->s);
    if (g->flash) return avf_forward(a.qh, a.kh, a.vh, a.ao, g->act_bf16, a.lse, g->B, g->T, g->H, g->KV, g->Dh, g->s);
    int64_t T = g->T, Dh = g->Dh, grp = g->H / g->KV, nb = (int64_t)g->B * g->KV, tb = T / g->nsplit;
    float scale = 1.0f / sqrtf((float)Dh);
    /* causal blocks: the tb query rows of block i see keys [0, (i+1)·tb) only, so each GEMM runs per (head
     * of the kv group, row block) and skips the key blocks right of the diagonal block: (ns+1)/(2·ns) of
     * the work and of S and P's traffic (5/8 at ns = 4). S and P rows of a (b, kv) batch: h·T + t. */
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < g->nsplit; i++) {
            int64_t r0 = h * T + i * tb;
            AVC_OK(bgemm(g, 0, 1, tb, (i + 1) * tb, Dh, scale, a.qh + r0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh, a.kh,
                         CUDA_R_16BF, Dh, T * Dh, 0.0f, g->S + r0 * T, CUDA_R_32F, T, grp * T * T, nb));
        }
    int64_t rows = (int64_t)g->B * g->H * T;
    k_softmax<<<avc_blocks(rows * 32, 256), 256, 0, g->s>>>(g->S, a.P, rows, (int)T, (int)tb);
    AVC_LAUNCHED();
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < g->nsplit; i++) {
            int64_t r0 = h * T + i * tb;
            AVC_OK(bgemm(g, 0, 0, tb, Dh, (i + 1) * tb, 1.0f, a.P + r0 * T, CUDA_R_16BF, T, grp * T * T, a.vh,
                         CUDA_R_16BF, Dh, T * Dh, 0.0f, g->oh + r0 * Dh, CUDA_R_32F, Dh, grp * T * Dh, nb));
        }
    k_heads_to_tokens<<<avc_blocks(g->N * g->qd, 256), 256, 0, g->s>>>(g->oh, static_cast<A *>(a.ao), g->N, g->H, g->Dh,
                                                                        g->T, nullptr, nullptr);
    AVC_LAUNCHED();
    return AVERIS_OK;
}

/* The materialising backward: dP = dO·Vᵀ, dV = Pᵀ·dO, dS, dQ = dS·K, dK = dSᵀ·Q
 * into the head-major g->oh, oh2, oh3, in the causal blocks of
 * attention_fwd: dP and dQ per (head, query block i) over keys [0, (i+1)·tb);
 * dV and dK per (key block k, head) over queries [k·tb, T), the heads of a
 * kv group summed by β = 1 in a fixed order */
averis_status attention_bwd_naive(avc_model *g, layer_io &a, int64_t T, int64_t Dh, int64_t grp, int64_t nb, float scale) {
    int64_t tb = T / g->nsplit, ns = g->nsplit;
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < ns; i++) {
            int64_t r0 = h * T + i * tb;
            AVC_OK(bgemm(g, 0, 1, tb, (i + 1) * tb, Dh, 1.0f, g->doh + r0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh, a.vh,
                         CUDA_R_16BF, Dh, T * Dh, 0.0f, g->S + r0 * T, CUDA_R_32F, T, grp * T * T, nb));
        }
    for (int64_t k = 0; k < ns; k++)
        for (int64_t h = 0; h < grp; h++) {
            int64_t q0 = h * T + k * tb; /* rows of P from query k·tb on, columns of key block k */
            AVC_OK(bgemm(g, 1, 0, tb, Dh, T - k * tb, 1.0f, a.P + q0 * T + k * tb, CUDA_R_16BF, T, grp * T * T,
                         g->doh + q0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh, h ? 1.0f : 0.0f, g->oh3 + k * tb * Dh,
                         CUDA_R_32F, Dh, T * Dh, nb));
        }
    int64_t rows = (int64_t)g->B * g->H * T;
    AVC_OK(by_nk((int)T, [&](auto nk) {
        k_softmax_bwd<decltype(nk)::value><<<avc_blocks(rows * 32, 256), 256, 0, g->s>>>(a.P, g->S, g->dS, rows, (int)T,
                                                                                          (int)tb, scale);
        AVC_LAUNCHED();
        return AVERIS_OK;
    }));
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < ns; i++) {
            int64_t r0 = h * T + i * tb;
            AVC_OK(bgemm(g, 0, 0, tb, Dh, (i + 1) * tb, 1.0f, g->dS + r0 * T, CUDA_R_16BF, T, grp * T * T, a.kh,
                         CUDA_R_16BF, Dh, T * Dh, 0.0f, g->oh + r0 * Dh, CUDA_R_32F, Dh, grp * T * Dh, nb));
        }
    for (int64_t k = 0; k < ns; k++)
        for (int64_t h = 0; h < grp; h++) {
            int64_t q0 = h * T + k * tb;
            AVC_OK(bgemm(g, 1, 0, tb, Dh, T - k * tb, 1.0f, g->dS + q0 * T + k * tb, CUDA_R_16BF, T, grp * T * T,
                         a.qh + q0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh, h ? 1.0f : 0.0f, g->oh2 + k * tb * Dh,
                         CUDA_R_32F, Dh, T * Dh, nb));
        }
    return AVERIS_OK;
}

/* The backward: dP = dO·Vᵀ, dV = Pᵀ·dO, dS = softmax_bwd, dQ = dS·K, dK = dSᵀ·Q
 * (per kv group, its heads stacked: dV and dK sum over them in the GEMM);
 * dq, dk come out token-major with the rotation undone. */
template <typename A> averis_status attention_bwd(avc_model *g, layer_io &a) {
    AVC_PROF("attention bwd", g->s);
    int64_t T = g->T, Dh = g->Dh, grp = g->H / g->KV, nb = (int64_t)g->B * g->KV, N = g->N;
    float scale = 1.0f / sqrtf((float)Dh);
    k_tokens_to_heads<<<avc_blocks(N * g->qd, 256), 256, 0, g->s>>>(g->dao, nullptr, g->doh, N, g->H, g->Dh, g->T);
    AVC_LAUNCHED();
    if (g->flash)
        AVC_OK(avf_backward(a.qh, a.kh, a.vh, g->doh, g->dao, a.ao, g->act_bf16, a.lse, g->Dv, g->oh, g->oh2, g->oh3, g->B, g->T,
                            g->H, g->KV, g->Dh, g->s));
    else
        AVC_OK(attention_bwd_naive(g, a, T, Dh, grp, nb, scale));
    int half = g->Dh / 2;
    k_heads_to_tokens<<<avc_blocks(N * g->H * half, 256), 256, 0, g->s>>>(g->oh, g->dq, N, g->H, g->Dh, g->T,
                                                                           g->rope_cos, g->rope_sin);
    AVC_LAUNCHED();
    k_heads_to_tokens<<<avc_blocks(N * g->KV * half, 256), 256, 0, g->s>>>(g->oh2, g->dk, N, g->KV, g->Dh, g->T,
                                                                            g->rope_cos, g->rope_sin);
    AVC_LAUNCHED();
    k_heads_to_tokens<<<avc_blocks(N * g->kvd, 256), 256, 0, g->s>>>(g->oh3, g->dv, N, g->KV, g->Dh, g->T, nullptr,
                                                                      nullptr);
    AVC_LAUNCHED();
    return AVERIS_OK;
}

void bind_blocks(const model *m, float *base, std::vector<blockw> &out) {
    out.resize((size_t)m->cfg.num_hidden_layers);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        const model_block &b = m->w.blocks[l];
        const float *h[11] = {b.in_norm, b.wq, b.wk, b.wv, b.wo, b.q_norm, b.k_norm, b.post_norm, b.wg, b.wu, b.wd};
        float **d[11] = {&out[l].in_norm, &out[l].wq, &out[l].wk, &out[l].wv, &out[l].wo, &out[l].q_norm,
                         &out[l].k_norm, &out[l].post_norm, &out[l].wg, &out[l].wu, &out[l].wd};
        for (int k = 0; k < 11; k++) *d[k] = base + (h[k] - m->params);
    }
}

averis_status setup(avc_model *g, const model *m) {
    const model_config &c = m->cfg;
    g->cfg = c;
    g->recipe = m->recipe;
    g->bf16_recipe = m->bf16_recipe;
    g->bf16_last = m->bf16_last;
    g->N = (int64_t)g->B * g->T;
    g->C = c.hidden_size, g->F = c.intermediate_size, g->V = c.vocab_size;
    g->H = c.num_attention_heads, g->KV = c.num_key_value_heads, g->Dh = c.head_dim;
    g->qd = (int64_t)g->H * g->Dh, g->kvd = (int64_t)g->KV * g->Dh;
    if (g->Dh > 1024) return averis_fail(AVERIS_EUNSUPPORTED, "cuda: head_dim %d > 1024", g->Dh);
    if (g->T > c.max_position_embeddings)
        return averis_fail(AVERIS_EINVAL, "cuda: sequence length %d exceeds max_position_embeddings %d", g->T,
                           c.max_position_embeddings);
    int64_t N = g->N, C = g->C, F = g->F, V = g->V, qd = g->qd, kvd = g->kvd, T = g->T;
    /* the layout kernels index with 32-bit arithmetic */
    if (N * std::max({C, F, qd}) >= ((int64_t)1 << 31) || (int64_t)g->B * g->H * T * T >= ((int64_t)1 << 40))
        return averis_fail(AVERIS_EINVAL, "cuda: batch × seq = %lld tokens is too large for one micro-batch; use --accum",
                           (long long)N);
    for (const qlin_recipe *r : {&g->recipe, &g->bf16_recipe}) {
        AVC_OK(gq_check(r, N, C, qd));
        AVC_OK(gq_check(r, N, C, F));
        AVC_OK(gq_check(r, N, qd, C));
        AVC_OK(gq_check(r, N, C, kvd));
    }
    /* Attention: cuBLAS with P materialised (faster here: 142 vs 491 ms per
     * 0.6B step, bench/results) unless P would take over a quarter of the GPU's
     * memory, then flash.cu; AVERIS_ATTN=flash|naive forces one. */
    {
        int sup = avf_supported(g->T, g->Dh);
        if (g->opts.attn == AVC_ATTN_FLASH && !sup)
            return averis_fail(AVERIS_EUNSUPPORTED, "flash attention needs seq %% 64 == 0 and head_dim 32, 64 or 128 (got %d, %d)",
                               g->T, g->Dh);
        double p_bytes = (double)g->B * g->H * g->T * (double)g->T * (2.0 * c.num_hidden_layers + 6.0);
        size_t free_b = 0, total_b = 0;
        AVC_TRY(cudaMemGetInfo(&free_b, &total_b));
        g->flash = g->opts.attn != AVC_ATTN_AUTO ? g->opts.attn == AVC_ATTN_FLASH : sup && p_bytes > 0.25 * (double)total_b;
        g->nsplit = g->T % 64 == 0 ? 4 : 1; /* blocks of T/4 rows: multiples of 16, so every GEMM operand stays aligned */
    }
    /* Activations: BF16 by default (half the memory and traffic; the CPU
     * model keeps fp32, so the GPU then differs by one BF16 rounding of q, k,
     * v, g, u and attention's output); AVERIS_ACT=fp32 keeps them fp32 to
     * follow the CPU closely. The fp32 recipe takes fp32. */
    {
        int fp32_recipe = g->recipe.id == QLIN_FP32 || (g->bf16_last > 0 && g->bf16_recipe.id == QLIN_FP32);
        if (g->opts.act == AVC_ACT_BF16 && fp32_recipe)
            return averis_fail(AVERIS_EINVAL, "BF16 activations: the fp32 recipe takes fp32 activations");
        g->act_bf16 = g->opts.act != AVC_ACT_AUTO ? g->opts.act == AVC_ACT_BF16 : !fp32_recipe;
        snprintf(g->desc, sizeof g->desc, "%s activations, attention %s", g->act_bf16 ? "BF16" : "fp32",
                 g->flash ? "by flash.cu" : "by cuBLAS with P materialised");
    }
    g->nparams = m->nparams;
    g->tensors.assign(m->tensors, m->tensors + m->ntensors);
    AVC_TRY(cudaStreamCreateWithFlags(&g->s, cudaStreamNonBlocking));
    CB_TRY(cublasCreate(&g->cb));
    CB_TRY(cublasSetStream(g->cb, g->s));
    AVC_OK(g->alloc(&g->params, (int64_t)g->nparams));
    AVC_OK(g->alloc(&g->grads, (int64_t)g->nparams));
    AVC_OK(g->alloc(&g->mom, (int64_t)g->nparams));
    AVC_OK(g->alloc(&g->var, (int64_t)g->nparams));
    bind_blocks(m, g->params, g->w);
    bind_blocks(m, g->grads, g->g);
    g->embed = g->params + (m->w.embed - m->params);
    g->final_norm = g->params + (m->w.final_norm - m->params);
    g->lm_head = g->params + (m->w.lm_head - m->params);
    g->g_embed = g->grads + (m->w.embed - m->params);
    g->g_final_norm = g->grads + (m->w.final_norm - m->params);
    g->g_lm_head = g->grads + (m->w.lm_head - m->params);
    /* weight operands */
    int Lc = c.num_hidden_layers;
    g->wops.resize((size_t)7 * Lc);
    for (int l = 0; l < Lc; l++) {
        blockw &b = g->w[l];
        float *ws[7] = {b.wq, b.wk, b.wv, b.wo, b.wg, b.wu, b.wd};
        int64_t dims[7][2] = {{qd, C}, {kvd, C}, {kvd, C}, {C, qd}, {F, C}, {F, C}, {C, F}};
        for (int k = 0; k < 7; k++) {
            gq_w &o = g->wops[7 * l + k];
            o.w = ws[k], o.n = dims[k][0], o.m = dims[k][1];
            AVC_OK(g->alloc(&o.wq, o.n * o.m));
            AVC_OK(g->alloc(&o.amax, 1));
        }
    }
    AVC_OK(g->alloc(&g->head_bf16, V * C));
    /* activations */
    g->L.resize((size_t)Lc);
    int64_t kp = std::max(gq_kp(&g->recipe, N), gq_kp(&g->bf16_recipe, N));
    int64_t wmax = std::max({C, qd, F});
    AVC_OK(g->alloc(&g->xq, N * wmax));
    AVC_OK(g->alloc(&g->xt, wmax * kp));
    for (int l = 0; l < Lc; l++) {
        layer_io &a = g->L[l];
        AVC_OK(g->alloc(&a.x_in, N * C)); AVC_OK(g->alloc_act(&a.h1, N * C)); AVC_OK(g->alloc(&a.rstd1, N));
        AVC_OK(g->alloc_act(&a.q_raw, N * qd)); AVC_OK(g->alloc_act(&a.k_raw, N * kvd));
        AVC_OK(g->alloc_act(&a.v, N * kvd));
        AVC_OK(g->alloc(&a.rstd_q, N * g->H)); AVC_OK(g->alloc(&a.rstd_k, N * g->KV));
        AVC_OK(g->alloc_act(&a.ao, N * qd)); AVC_OK(g->alloc(&a.x_mid, N * C)); AVC_OK(g->alloc_act(&a.h2, N * C));
        AVC_OK(g->alloc(&a.rstd2, N)); AVC_OK(g->alloc_act(&a.g, N * F)); AVC_OK(g->alloc_act(&a.u, N * F));
        AVC_OK(g->alloc_act(&a.a, N * F));
        if (g->act_bf16) {
            AVC_OK(g->alloc(&a.mb_q, qd)); AVC_OK(g->alloc(&a.mb_k, kvd)); AVC_OK(g->alloc(&a.mb_v, kvd));
            AVC_OK(g->alloc(&a.mb_g, F)); AVC_OK(g->alloc(&a.mb_u, F));
        }
        AVC_OK(g->alloc(&a.qh, N * qd)); AVC_OK(g->alloc(&a.kh, N * kvd)); AVC_OK(g->alloc(&a.vh, N * kvd));
        if (g->flash) AVC_OK(g->alloc(&a.lse, (int64_t)g->B * g->H * T));
        else AVC_OK(g->alloc(&a.P, (int64_t)g->B * g->H * T * T));
        gq_x *ins[4] = {&a.in_h1, &a.in_ao, &a.in_h2, &a.in_a};
        const void *xs[4] = {a.h1, a.ao, a.h2, a.a};
        int64_t ms[4] = {C, qd, C, F};
        for (int k = 0; k < 4; k++) {
            gq_x &x = *ins[k];
            x.x = xs[k], x.bf16 = g->act_bf16, x.l = N, x.m = ms[k];
            x.xq = g->xq, x.xt = g->xt;
            AVC_OK(g->alloc(&x.amax, 1)); AVC_OK(g->alloc(&x.mean, ms[k])); AVC_OK(g->alloc(&x.res_amax, 1));
            AVC_OK(g->alloc(&x.xt_amax, 1)); AVC_OK(g->alloc(&x.xt_sum, ms[k]));
        }
    }
    AVC_OK(g->alloc(&g->x_out, N * C)); AVC_OK(g->alloc(&g->rstd_f, N));
    if (!g->act_bf16) AVC_OK(g->alloc(&g->hf, N * C));
    AVC_OK(g->alloc(&g->tok_loss, N)); AVC_OK(g->alloc(&g->hf_bf16, N * C));
    if (g->flash) {
        AVC_OK(g->alloc(&g->Dv, (int64_t)g->B * g->H * T));
    } else {
        AVC_OK(g->alloc(&g->S, (int64_t)g->B * g->H * T * T));
        AVC_OK(g->alloc(&g->dS, (int64_t)g->B * g->H * T * T));
    }
    AVC_OK(g->alloc(&g->oh, N * std::max(qd, kvd))); AVC_OK(g->alloc(&g->oh2, N * kvd)); AVC_OK(g->alloc(&g->oh3, N * kvd));
    AVC_OK(g->alloc(&g->doh, N * qd));
    g->chunk = std::min<int64_t>(N, std::max<int64_t>(16, ((int64_t)1 << 28) / V)); /* ≤ 1.5 GiB of logits */
    AVC_OK(g->alloc(&g->logits, g->chunk * V)); AVC_OK(g->alloc(&g->dlogits, g->chunk * V));
    AVC_OK(g->alloc(&g->scr.dq, N * wmax)); AVC_OK(g->alloc(&g->scr.dt, wmax * kp));
    AVC_OK(g->alloc(&g->scr.mean_d, wmax)); AVC_OK(g->alloc(&g->scr.sum_d, wmax));
    AVC_OK(g->alloc(&g->scr.scal, 8)); AVC_OK(g->alloc(&g->scr.bias, wmax));
    AVC_OK(g->alloc(&g->scr.mean_part, GQ_MEAN_SLICES * wmax));
    {
        size_t wsb = avq_ws_bytes(N, wmax);
        char *ws = nullptr;
        AVC_OK(g->alloc(&ws, (int64_t)wsb));
        avq_set_workspace(ws, wsb); /* the colstats and row-sum scratch, without per-call allocations */
    }
    AVC_OK(g->alloc(&g->dx, N * C)); AVC_OK(g->alloc(&g->dh, N * C)); AVC_OK(g->alloc(&g->dtmp, N * wmax));
    AVC_OK(g->alloc(&g->dao, N * qd)); AVC_OK(g->alloc(&g->dq, N * qd)); AVC_OK(g->alloc(&g->dk, N * kvd));
    AVC_OK(g->alloc(&g->dv, N * kvd)); AVC_OK(g->alloc(&g->da, N * F)); AVC_OK(g->alloc(&g->dg, N * F));
    AVC_OK(g->alloc(&g->du, N * F));
    /* norm-weight partials: 256-row chunks of the model-width and head-width norms */
    int64_t np = std::max(((N + NORM_CHUNK - 1) / NORM_CHUNK) * C,
                          ((N * std::max(g->H, g->KV) + NORM_CHUNK - 1) / NORM_CHUNK) * (int64_t)g->Dh);
    AVC_OK(g->alloc(&g->normw_part, np));
    AVC_OK(g->alloc(&g->norm_part, ((int64_t)g->nparams + TRAIN_GRADNORM_CHUNK - 1) / TRAIN_GRADNORM_CHUNK));
    AVC_OK(g->alloc(&g->tok, N)); AVC_OK(g->alloc(&g->tgt, N)); AVC_OK(g->alloc(&g->emb_idx, 3 * N + 1));
    /* the CPU model's rotary tables */
    int64_t half = g->Dh / 2;
    std::vector<float> cs((size_t)(T * half)), sn((size_t)(T * half));
    model_rope_tables(&c, (int)T, cs.data(), sn.data());
    AVC_OK(g->alloc(&g->rope_cos, T * half)); AVC_OK(g->alloc(&g->rope_sin, T * half));
    AVC_TRY(cudaMemcpy(g->rope_cos, cs.data(), cs.size() * 4, cudaMemcpyHostToDevice));
    AVC_TRY(cudaMemcpy(g->rope_sin, sn.data(), sn.size() * 4, cudaMemcpyHostToDevice));
    AVC_TRY(cudaMemset(g->grads, 0, g->nparams * 4));
    AVC_TRY(cudaMemset(g->mom, 0, g->nparams * 4));
    AVC_TRY(cudaMemset(g->var, 0, g->nparams * 4));
    return AVERIS_OK;
}

/* BF16 activations under a split recipe keep the mean terms of q, k, v, g,
 * u apart (gq_forward's mean_out); otherwise they are in the activations
 * and these are NULL */
struct mean_terms {
    float *q, *k, *v, *g, *u;
};
mean_terms layer_means(const avc_model *g, const layer_io &a, const qlin_recipe *r) {
    if (!(g->act_bf16 && r->split_x)) return {nullptr, nullptr, nullptr, nullptr, nullptr};
    return {a.mb_q, a.mb_k, a.mb_v, a.mb_g, a.mb_u};
}

/* A: the activations' type (float or BF16) */
template <typename A>
averis_status forward_backward(avc_model *g, const int *tokens, const int *targets, int backward, float loss_scale,
                               uint64_t sr_stream, float *loss) {
    const model_config &c = g->cfg;
    int64_t N = g->N, C = g->C, F = g->F, V = g->V, kvd = g->kvd;
    int H = g->H, KV = g->KV, Dh = g->Dh, T = g->T, Lc = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    cudaStream_t s = g->s;
    AVC_OK(model_check_ids(&c, tokens, N, "token"));
    AVC_OK(model_check_ids(&c, targets, N, "target"));
    AVC_TRY(cudaMemcpyAsync(g->tok, tokens, N * sizeof(int), cudaMemcpyHostToDevice, s));
    AVC_TRY(cudaMemcpyAsync(g->tgt, targets, N * sizeof(int), cudaMemcpyHostToDevice, s));
    AVC_OK(prep_weights(g));
    unsigned rowsN = avc_blocks(N * 32, 256);

    /* ------------------------------------------------------------ forward */
    k_embed<<<avc_blocks(N * C, 256), 256, 0, s>>>(g->tok, g->embed, g->L[0].x_in, N, C);
    AVC_LAUNCHED();
    for (int l = 0; l < Lc; l++) {
        layer_io &a = g->L[l];
        blockw &w = g->w[l];
        const qlin_recipe *r = g->rec(l);
        gq_w *wo = &g->wops[7 * l];
        {
            AVC_PROF("norms fwd + rope", s);
            k_rmsnorm<<<rowsN, 256, 0, s>>>(a.x_in, w.in_norm, static_cast<A *>(a.h1), a.rstd1, N, C, eps);
        }
        AVC_LAUNCHED();
        AVC_OK(gq_prep_x(r, &a.in_h1, s));
        const mean_terms mt = layer_means(g, a, r);
        AVC_OK(gq_forward(r, &a.in_h1, &wo[0], a.q_raw, g->act_bf16, nullptr, mt.q, &g->scr, s));
        AVC_OK(gq_forward(r, &a.in_h1, &wo[1], a.k_raw, g->act_bf16, nullptr, mt.k, &g->scr, s));
        AVC_OK(gq_forward(r, &a.in_h1, &wo[2], a.v, g->act_bf16, nullptr, mt.v, &g->scr, s));
        {
            AVC_PROF("norms fwd + rope", s);
            size_t smem = (size_t)8 * Dh * sizeof(float);
            k_headnorm_rope<<<avc_blocks(N * H * 32, 256), 256, smem, s>>>(static_cast<const A *>(a.q_raw), mt.q, w.q_norm, g->rope_cos, g->rope_sin, N,
                                                                           H, Dh, T, eps, a.rstd_q, a.qh);
            AVC_LAUNCHED();
            k_headnorm_rope<<<avc_blocks(N * KV * 32, 256), 256, smem, s>>>(static_cast<const A *>(a.k_raw), mt.k, w.k_norm, g->rope_cos, g->rope_sin,
                                                                            N, KV, Dh, T, eps, a.rstd_k, a.kh);
            AVC_LAUNCHED();
            k_tokens_to_heads<<<avc_blocks(N * kvd, 256), 256, 0, s>>>(static_cast<const A *>(a.v), mt.v, a.vh, N, KV, Dh, T);
            AVC_LAUNCHED();
        }
        AVC_OK(attention_fwd<A>(g, a));
        AVC_OK(gq_prep_x(r, &a.in_ao, s));
        AVC_OK(gq_forward(r, &a.in_ao, &wo[3], a.x_mid, 0, a.x_in, nullptr, &g->scr, s)); /* x_mid = x_in + ao·Woᵀ */
        {
            AVC_PROF("norms fwd + rope", s);
            k_rmsnorm<<<rowsN, 256, 0, s>>>(a.x_mid, w.post_norm, static_cast<A *>(a.h2), a.rstd2, N, C, eps);
        }
        AVC_LAUNCHED();
        AVC_OK(gq_prep_x(r, &a.in_h2, s));
        AVC_OK(gq_forward(r, &a.in_h2, &wo[4], a.g, g->act_bf16, nullptr, mt.g, &g->scr, s));
        AVC_OK(gq_forward(r, &a.in_h2, &wo[5], a.u, g->act_bf16, nullptr, mt.u, &g->scr, s));
        {
            AVC_PROF("elementwise", s);
            k_swiglu<<<avc_blocks(N * F, 256), 256, 0, s>>>(static_cast<const A *>(a.g), static_cast<const A *>(a.u), mt.g,
                                                            mt.u, static_cast<A *>(a.a), N * F, F);
        }
        AVC_LAUNCHED();
        AVC_OK(gq_prep_x(r, &a.in_a, s));
        float *xo = l + 1 < Lc ? g->L[l + 1].x_in : g->x_out;
        AVC_OK(gq_forward(r, &a.in_a, &wo[6], xo, 0, a.x_mid, nullptr, &g->scr, s)); /* x_out = x_mid + a·Wdᵀ */
    }
    if (g->act_bf16) {
        k_rmsnorm<<<rowsN, 256, 0, s>>>(g->x_out, g->final_norm, g->hf_bf16, g->rstd_f, N, C, eps);
        AVC_LAUNCHED();
    } else {
        k_rmsnorm<<<rowsN, 256, 0, s>>>(g->x_out, g->final_norm, g->hf, g->rstd_f, N, C, eps);
        AVC_LAUNCHED();
        AVC_OK(avq_to_bf16(g->hf, g->hf_bf16, N * C, s));
    }
    /* LM head and cross-entropy per chunk of tokens; with the backward,
     * dlogits = (softmax − onehot)·scale/N feed dhf and dE at once */
    float dscale = loss_scale / (float)N;
    for (int64_t r0 = 0; r0 < N; r0 += g->chunk) {
        AVC_PROF("lm head + xent", s);
        int64_t cn = std::min(g->chunk, N - r0);
        AVC_OK(lt_matmul(0, 1, cn, V, C, gq_one(), g->hf_bf16 + r0 * C, CUDA_R_16BF, C, g->head_bf16, CUDA_R_16BF, C,
                         gq_zero(), g->logits, g->logits, CUDA_R_32F, V, nullptr, s));
        k_xent<<<(unsigned)cn, 1024, 0, s>>>(g->logits, g->tgt + r0, V, g->tok_loss + r0, backward ? g->dlogits : nullptr,
                                             dscale);
        AVC_LAUNCHED();
        if (backward) {
            AVC_OK(lt_matmul(0, 0, cn, C, V, gq_one(), g->dlogits, CUDA_R_16BF, V, g->head_bf16, CUDA_R_16BF, C, gq_zero(),
                             g->dh + r0 * C, g->dh + r0 * C, CUDA_R_32F, C, nullptr, s));
            AVC_OK(lt_matmul(1, 0, V, C, cn, gq_one(), g->dlogits, CUDA_R_16BF, V, g->hf_bf16 + r0 * C, CUDA_R_16BF, C,
                             gq_one(), g->g_lm_head, g->g_lm_head, CUDA_R_32F, C, nullptr, s));
        }
    }
    std::vector<float> tl((size_t)N);
    AVC_TRY(cudaMemcpyAsync(tl.data(), g->tok_loss, N * sizeof(float), cudaMemcpyDeviceToHost, s));
    if (!backward) {
        AVC_TRY(cudaStreamSynchronize(s));
        double total = 0.0;
        for (float v : tl) total += v;
        *loss = (float)(total / (double)N);
        return AVERIS_OK;
    }

    /* ----------------------------------------------------------- backward */
    AVC_OK(rmsnorm_bwd(g, g->dx, g->g_final_norm, g->dh, g->x_out, nullptr, 1, g->rstd_f, g->final_norm, N, C, 0));
    for (int l = Lc - 1; l >= 0; l--) {
        layer_io &a = g->L[l];
        blockw &w = g->w[l], &gw = g->g[l];
        const qlin_recipe *r = g->rec(l);
        gq_w *wo = &g->wops[7 * l];
        a.in_a.xt_ready = a.in_h2.xt_ready = a.in_ao.xt_ready = a.in_h1.xt_ready = 0;
        const mean_terms mt = layer_means(g, a, r);
        /* MLP */
        AVC_OK(gq_backward(r, &a.in_a, &wo[6], g->dx, g->da, 0, gw.wd, model_sr_stream(sr_stream, l, MODEL_LIN_DOWN), &g->scr, s));
        {
            AVC_PROF("elementwise", s);
            k_swiglu_bwd<<<avc_blocks(N * F, 256), 256, 0, s>>>(g->da, static_cast<const A *>(a.g),
                                                                static_cast<const A *>(a.u), mt.g, mt.u, g->dg, g->du, N * F,
                                                                F);
        }
        AVC_LAUNCHED();
        AVC_OK(gq_backward(r, &a.in_h2, &wo[4], g->dg, g->dh, 0, gw.wg, model_sr_stream(sr_stream, l, MODEL_LIN_GATE), &g->scr, s));
        AVC_OK(gq_backward(r, &a.in_h2, &wo[5], g->du, g->dh, 1, gw.wu, model_sr_stream(sr_stream, l, MODEL_LIN_UP), &g->scr, s));
        AVC_OK(rmsnorm_bwd(g, g->dx, gw.post_norm, g->dh, a.x_mid, nullptr, 1, a.rstd2, w.post_norm, N, C, 1));
        /* attention */
        AVC_OK(gq_backward(r, &a.in_ao, &wo[3], g->dx, g->dao, 0, gw.wo, model_sr_stream(sr_stream, l, MODEL_LIN_O), &g->scr, s));
        AVC_OK(attention_bwd<A>(g, a));
        float *dq_raw = g->dtmp, *dk_raw = g->dao; /* dao is spent */
        AVC_OK(rmsnorm_bwd(g, dq_raw, gw.q_norm, g->dq, static_cast<const A *>(a.q_raw), mt.q, H, a.rstd_q, w.q_norm, N * H,
                           Dh, 0));
        AVC_OK(rmsnorm_bwd(g, dk_raw, gw.k_norm, g->dk, static_cast<const A *>(a.k_raw), mt.k, KV, a.rstd_k, w.k_norm,
                           N * KV, Dh, 0));
        AVC_OK(gq_backward(r, &a.in_h1, &wo[0], dq_raw, g->dh, 0, gw.wq, model_sr_stream(sr_stream, l, MODEL_LIN_Q), &g->scr, s));
        AVC_OK(gq_backward(r, &a.in_h1, &wo[1], dk_raw, g->dh, 1, gw.wk, model_sr_stream(sr_stream, l, MODEL_LIN_K), &g->scr, s));
        AVC_OK(gq_backward(r, &a.in_h1, &wo[2], g->dv, g->dh, 1, gw.wv, model_sr_stream(sr_stream, l, MODEL_LIN_V), &g->scr, s));
        AVC_OK(rmsnorm_bwd(g, g->dx, gw.in_norm, g->dh, a.x_in, nullptr, 1, a.rstd1, w.in_norm, N, C, 1));
    }
    /* embedding rows: positions grouped by token on the host, summed in order.
     * emb_idx = [uniq: N | start: N+1 | pos: N]; pos is the stable sort order */
    std::vector<int> idx((size_t)(3 * N + 1));
    int *uniq = idx.data(), *start = uniq + N, *pos = start + N + 1;
    for (int64_t n = 0; n < N; n++) pos[n] = (int)n;
    std::stable_sort(pos, pos + N, [&](int x, int y) { return tokens[x] < tokens[y]; });
    int nu = 0;
    for (int64_t k = 0; k < N; k++)
        if (k == 0 || tokens[pos[k]] != tokens[pos[k - 1]]) {
            uniq[nu] = tokens[pos[k]];
            start[nu++] = (int)k;
        }
    start[nu] = (int)N;
    AVC_TRY(cudaMemcpyAsync(g->emb_idx, idx.data(), idx.size() * sizeof(int), cudaMemcpyHostToDevice, s));
    AVC_PROF("embedding bwd", s);
    k_embed_bwd<<<(unsigned)nu, 256, 0, s>>>(g->dx, g->emb_idx, g->emb_idx + N, g->emb_idx + 2 * N + 1, C, g->g_embed);
    AVC_LAUNCHED();
    AVC_TRY(cudaStreamSynchronize(s)); /* the host buffers above must outlive their copies */
    double total = 0.0;
    for (float v : tl) total += v;
    *loss = (float)(total / (double)N);
    return AVERIS_OK;
}

} // namespace

/* ================================================================== C API */
extern "C" {

averis_status avc_model_create(avc_model **out, const model *m, int B, int T, const avc_model_opts *opts) {
    *out = nullptr;
    if (B < 1 || T < 1) return averis_fail(AVERIS_EINVAL, "cuda model: B = %d, T = %d", B, T);
    avc_model *g = new avc_model();
    g->B = B, g->T = T;
    if (opts) g->opts = *opts;
    averis_status st = setup(g, m);
    if (!st) st = avc_model_upload(g, m->params, nullptr, nullptr);
    if (st) {
        avc_model_free(g);
        return st;
    }
    *out = g;
    return AVERIS_OK;
}

void avc_model_free(avc_model *g) {
    if (!g) return;
    if (g->s) cudaStreamSynchronize(g->s);
    avq_set_workspace(nullptr, 0);
    for (void *p : g->allocs) cudaFree(p);
    if (g->cb) cublasDestroy(g->cb);
    if (g->s) cudaStreamDestroy(g->s);
    delete g;
}

averis_status avc_model_upload(avc_model *g, const float *params, const float *mom, const float *var) {
    size_t n = g->nparams * sizeof(float);
    AVC_TRY(cudaMemcpyAsync(g->params, params, n, cudaMemcpyHostToDevice, g->s));
    if (mom) AVC_TRY(cudaMemcpyAsync(g->mom, mom, n, cudaMemcpyHostToDevice, g->s));
    if (var) AVC_TRY(cudaMemcpyAsync(g->var, var, n, cudaMemcpyHostToDevice, g->s));
    AVC_TRY(cudaStreamSynchronize(g->s));
    g->weights_ready = 0;
    return AVERIS_OK;
}

averis_status avc_model_download(avc_model *g, float *params, float *mom, float *var) {
    size_t n = g->nparams * sizeof(float);
    if (params) AVC_TRY(cudaMemcpyAsync(params, g->params, n, cudaMemcpyDeviceToHost, g->s));
    if (mom) AVC_TRY(cudaMemcpyAsync(mom, g->mom, n, cudaMemcpyDeviceToHost, g->s));
    if (var) AVC_TRY(cudaMemcpyAsync(var, g->var, n, cudaMemcpyDeviceToHost, g->s));
    AVC_TRY(cudaStreamSynchronize(g->s));
    return AVERIS_OK;
}

averis_status avc_model_zero_grad(avc_model *g) {
    AVC_TRY(cudaMemsetAsync(g->grads, 0, g->nparams * sizeof(float), g->s));
    return AVERIS_OK;
}

averis_status avc_model_grads(avc_model *g, float *grads) {
    AVC_TRY(cudaMemcpyAsync(grads, g->grads, g->nparams * sizeof(float), cudaMemcpyDeviceToHost, g->s));
    AVC_TRY(cudaStreamSynchronize(g->s));
    return AVERIS_OK;
}

averis_status avc_model_step(avc_model *g, const int *tokens, const int *targets, int backward, float loss_scale,
                             uint64_t sr_stream, float *loss) {
    averis_status st = g->act_bf16
                           ? forward_backward<__nv_bfloat16>(g, tokens, targets, backward, loss_scale, sr_stream, loss)
                           : forward_backward<float>(g, tokens, targets, backward, loss_scale, sr_stream, loss);
    if (st) cudaStreamSynchronize(g->s);
    return st;
}

const char *avc_model_describe(const avc_model *g) { return g->desc; }

averis_status avc_model_grad_norm(avc_model *g, double *norm) {
    AVC_PROF("grad norm", g->s);
    int64_t nchunk = ((int64_t)g->nparams + TRAIN_GRADNORM_CHUNK - 1) / TRAIN_GRADNORM_CHUNK;
    k_sumsq<<<(unsigned)nchunk, 256, 0, g->s>>>(g->grads, (int64_t)g->nparams, g->norm_part);
    AVC_LAUNCHED();
    std::vector<double> part((size_t)nchunk);
    AVC_TRY(cudaMemcpyAsync(part.data(), g->norm_part, nchunk * sizeof(double), cudaMemcpyDeviceToHost, g->s));
    AVC_TRY(cudaStreamSynchronize(g->s));
    double total = 0.0;
    for (double p : part) total += p;
    *norm = sqrt(total);
    return AVERIS_OK;
}

averis_status avc_model_adamw(avc_model *g, double lr, double beta1, double beta2, double eps, double weight_decay,
                              int64_t t, float gscale) {
    /* the same float conversions as train.c's adamw_step */
    float c1 = (float)(1.0 - pow(beta1, (double)t)), c2 = (float)(1.0 - pow(beta2, (double)t));
    AVC_PROF("adamw", g->s);
    /* one launch per run of tensors with the same decay */
    size_t k = 0;
    while (k < g->tensors.size()) {
        size_t e = k;
        while (e + 1 < g->tensors.size() && g->tensors[e + 1].decay == g->tensors[k].decay &&
               g->tensors[e + 1].offset == g->tensors[e].offset + g->tensors[e].numel)
            e++;
        int64_t off = (int64_t)g->tensors[k].offset, n = (int64_t)(g->tensors[e].offset + g->tensors[e].numel) - off;
        float decay = g->tensors[k].decay ? (float)weight_decay : 0.0f;
        k_adamw<<<avc_blocks(n, 256), 256, 0, g->s>>>(g->params + off, g->grads + off, g->mom + off, g->var + off, n,
                                                      (float)beta1, (float)beta2, (float)eps, (float)lr, decay, c1, c2,
                                                      gscale);
        AVC_LAUNCHED();
        k = e + 1;
    }
    g->weights_ready = 0;
    return AVERIS_OK;
}

} // extern "C"
