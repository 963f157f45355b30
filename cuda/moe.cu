/* moe.cu — the Qwen3-MoE block on the GPU (moe.cuh has the math; src/moe.c
 * is the reference it mirrors). Written without a GPU run: docs/moe.md says
 * what is verified and what is not. */
#include "moe.cuh"
#include "swiglu.cuh"
#include "averis/moe.h"
#include "averis/model_spec.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

/* model_math.h's exp_approx, on the device (the CPU model's softmax), with
 * the products and sums rounded as the C code rounds them (no contraction) */
__device__ __forceinline__ float exp_approx_d(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float k = __fadd_rn(__fadd_rn(__fmul_rn(x, 1.44269504f), 12582912.0f), -12582912.0f);
    float r = __fadd_rn(__fadd_rn(x, -__fmul_rn(k, 0.693145751953125f)), -__fmul_rn(k, 1.428606765330187e-06f));
    float p = __fadd_rn(1.0f, __fmul_rn(r, __fadd_rn(1.0f, __fmul_rn(r, __fadd_rn(0.5f, __fmul_rn(r, __fadd_rn(1.6666667e-1f,
              __fmul_rn(r, __fadd_rn(4.1666667e-2f, __fmul_rn(r, __fadd_rn(8.3333333e-3f, __fmul_rn(r, 1.3888889e-3f))))))))))));
    return __fmul_rn(p, __int_as_float(((int)k + 127) << 23));
}

/* p [N,E]: logits in, probabilities out; sel, wts [N,k] (src/moe.c's loops) */
__global__ void k_route(float *p_all, int *sel_all, float *wts_all, int64_t N, int E, int k, int norm_topk) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    float *p = p_all + t * E, mx = -INFINITY, sum = 0.0f;
    for (int e = 0; e < E; e++) mx = p[e] > mx ? p[e] : mx;
    for (int e = 0; e < E; e++) {
        p[e] = exp_approx_d(__fadd_rn(p[e], -mx));
        sum = __fadd_rn(sum, p[e]);
    }
    float inv = 1.0f / sum;
    for (int e = 0; e < E; e++) p[e] = __fmul_rn(p[e], inv);
    int *sel = sel_all + t * k;
    float *wt = wts_all + t * k, ws = 0.0f;
    for (int j = 0; j < k; j++) { /* the j-th largest: ties go to the lower expert */
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++) taken |= sel[i] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        sel[j] = best;
        wt[j] = p[best];
        ws = __fadd_rn(ws, p[best]);
    }
    if (norm_topk)
        for (int j = 0; j < k; j++) wt[j] = __fdiv_rn(wt[j], ws);
}

/* counts[e] = #{i : sel[i] == e}, one block per expert (integer sums: exact) */
__global__ void k_count(const int *sel, int64_t nk, int *counts) {
    __shared__ int part[32];
    int e = blockIdx.x, c = 0;
    for (int64_t i = threadIdx.x; i < nk; i += blockDim.x) c += sel[i] == e;
    for (int o = 16; o >= 1; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += part[w];
        counts[e] = s;
    }
}

__global__ void k_offsets(const int *counts, int *offs, int E) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        offs[0] = 0;
        for (int e = 0; e < E; e++) offs[e + 1] = offs[e] + counts[e];
    }
}

/* The stable placement: block e walks sel in index order (= token order, as
 * a token picks e at most once), ranks its hits by a ballot prefix and
 * writes perm[row] = token, slot[i] = row. 256 threads. */
__global__ void k_place(const int *sel, int64_t nk, int k, const int *offs, int *perm, int *slot) {
    __shared__ int wsum[8];
    __shared__ int base;
    int e = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) base = offs[e];
    __syncthreads();
    for (int64_t c0 = 0; c0 < nk; c0 += blockDim.x) {
        int64_t i = c0 + threadIdx.x;
        int hit = i < nk && sel[i] == e;
        unsigned b = __ballot_sync(0xffffffffu, hit);
        int rank = __popc(b & ((1u << lane) - 1u));
        if (lane == 0) wsum[warp] = __popc(b);
        __syncthreads();
        int before = 0;
        for (int w = 0; w < warp; w++) before += wsum[w];
        if (hit) {
            int row = base + before + rank;
            perm[row] = (int)(i / k);
            slot[i] = row;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int tot = 0;
            for (int w = 0; w < (int)(blockDim.x >> 5); w++) tot += wsum[w];
            base += tot;
        }
        __syncthreads();
    }
}

template <typename A> __global__ void k_to_f32(const A *x, float *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = cu_ld(x + i);
}

/* xs[row] = h[perm[row]] */
__global__ void k_gather(const float *h, const int *perm, float *xs, int64_t R, int64_t C) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < R * C) {
        int64_t row = i / C, c = i - row * C;
        xs[i] = h[(int64_t)perm[row] * C + c];
    }
}

/* psum[e] = Σ_t p[t,e] in token order (double, as moe_aux_loss) */
__global__ void k_psum(const float *p, int64_t N, int E, double *psum) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    double s = 0.0;
    for (int64_t t = 0; t < N; t++) s += p[t * E + e];
    psum[e] = s;
}

/* x_next[t] = x_mid[t] + Σ_j w[t,j]·y[slot[t,j]] (CPU: o = 0; o += w·y; then + x_mid) */
__global__ void k_combine(const float *y, const float *wts, const int *slot, const float *x_mid, float *x_next,
                          int64_t N, int64_t C, int k) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * C) return;
    int64_t t = i / C, c = i - t * C;
    float o = 0.0f;
    for (int j = 0; j < k; j++) o = __fadd_rn(o, __fmul_rn(wts[t * k + j], y[(int64_t)slot[t * k + j] * C + c]));
    x_next[i] = __fadd_rn(o, x_mid[i]);
}

/* one warp per (token, choice): dy[slot] = w·dout[t], dw = dout[t]·y[slot] */
__global__ void k_combine_bwd(const float *dout, const float *y, const float *wts, const int *slot, float *dy,
                              float *dw, int64_t nk, int64_t C, int k) {
    int64_t pair = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (pair >= nk) return; /* whole warps leave together */
    int64_t t = pair / k, row = slot[pair];
    const float *d = dout + t * C, *yr = y + row * C;
    float wt = wts[pair], dot = 0.0f, *o = dy + row * C;
    for (int64_t c = lane; c < C; c += 32) {
        o[c] = wt * d[c];
        dot += d[c] * yr[c];
    }
    dot = cu_warp_sum(dot);
    if (lane == 0) dw[pair] = dot;
}

/* dh[t] = Σ_j dxs[slot[t,j]] (a gather in choice order: no atomics) */
__global__ void k_uncombine(const float *dxs, const int *slot, float *dh, int64_t N, int64_t C, int k) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * C) return;
    int64_t t = i / C, c = i - t * C;
    float o = 0.0f;
    for (int j = 0; j < k; j++) o += dxs[(int64_t)slot[t * k + j] * C + c];
    dh[i] = o;
}

/* dz [N,E] from dw [N,k] (src/moe.c's router backward, thread per token) */
__global__ void k_router_bwd(const float *p_all, const float *wts_all, const int *sel_all, const float *dw_all,
                             const float *daux, float aux_scale, float *dz, int64_t N, int E, int k, int norm_topk) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const float *p = p_all + t * E, *wt = wts_all + t * k, *dwt = dw_all + t * k;
    const int *sel = sel_all + t * k;
    float *d = dz + t * E;
    for (int e = 0; e < E; e++) d[e] = aux_scale * daux[e];
    if (norm_topk) {
        float S = 0.0f, dot = 0.0f;
        for (int j = 0; j < k; j++) S += p[sel[j]], dot += dwt[j] * wt[j];
        for (int j = 0; j < k; j++) d[sel[j]] += (dwt[j] - dot) / S;
    } else {
        for (int j = 0; j < k; j++) d[sel[j]] += dwt[j];
    }
    float pd = 0.0f;
    for (int e = 0; e < E; e++) pd += p[e] * d[e];
    for (int e = 0; e < E; e++) d[e] = p[e] * (d[e] - pd);
}

const float *h_fp32(cm_moe *mo, const void *h, int h_bf16, cudaStream_t s, averis_status *st) {
    *st = AVERIS_OK;
    if (!h_bf16) return static_cast<const float *>(h);
    int64_t n = mo->N * mo->C;
    k_to_f32<<<cu_blocks(n, 256), 256, 0, s>>>(static_cast<const __nv_bfloat16 *>(h), mo->h32, n);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) *st = averis_fail(AVERIS_EIO, "cuda moe: %s", cudaGetErrorString(e));
    return mo->h32;
}

void tap_expert(avc_tap_fn tap, void *ctx, int l, const char *fmt, int e, const float *x, int64_t rows, int64_t cols) {
    if (!tap) return;
    char kind[48];
    snprintf(kind, sizeof kind, fmt, e);
    tap(ctx, l, kind, x, 0, rows, cols);
}

} // namespace

averis_status cm_moe_check(const qlin_recipe *r, const model_config &c, int64_t N) {
    CU_OK(cl_check(r, N, c.hidden_size, c.moe_intermediate_size));
    CU_OK(cl_check(r, N, c.moe_intermediate_size, c.hidden_size));
    if (N * c.num_experts_per_tok * (int64_t)std::max(c.hidden_size, c.moe_intermediate_size) >= ((int64_t)1 << 40))
        return averis_fail(AVERIS_EINVAL, "cuda moe: %lld tokens × top-%d is too large for one micro-batch",
                           (long long)N, c.num_experts_per_tok);
    return AVERIS_OK;
}

averis_status cm_moe_mode(int *mode, int64_t C, int64_t I) {
    const char *v = getenv("AVERIS_MOE_GROUPED");
    /* unset: our grouped GEMM (3) for small experts, one cuBLASLt GEMM per expert (2)
     * for large ones (H200, 2026-12-06: ours 1.75-2.8x cuBLASLt's per-expert loop at
     * C 512 × I 384, 0.61-0.73x at C 2048 × I 1024; cuBLAS's own grouped GEMM (1)
     * refuses BF16 operands with an fp32 output) */
    *mode = C * I <= CM_MOE_OWN_GEMM_MAX_CI ? (int)CL_SEG_OWN_GROUPED : (int)CM_MOE_DEFAULT_MODE;
    if (!v || !*v) return AVERIS_OK;
    if (strcmp(v, "0") && strcmp(v, "1") && strcmp(v, "2") && strcmp(v, "3"))
        return averis_fail(AVERIS_EINVAL, "AVERIS_MOE_GROUPED=%s: 0 (per expert), 1 (cuBLAS's grouped GEMMs), 2 (batched "
                           "quantization, per-expert GEMMs) or 3 (batched quantization, our grouped GEMM)", v);
    *mode = atoi(v);
    return AVERIS_OK;
}

averis_status cm_moe_setup(cm_moe *mo, const model_config &c, int64_t N, const cm_alloc_fn &alloc) {
    CU_OK(cm_moe_mode(&mo->mode, c.hidden_size, c.moe_intermediate_size));
    mo->E = c.num_experts, mo->k = c.num_experts_per_tok, mo->L = c.num_hidden_layers;
    mo->norm_topk = c.norm_topk_prob, mo->aux_on = c.output_router_logits, mo->coef = c.router_aux_loss_coef;
    mo->N = N, mo->C = c.hidden_size, mo->I = c.moe_intermediate_size, mo->R = N * mo->k;
    int64_t E = mo->E, k = mo->k, C = mo->C, I = mo->I, R = mo->R;
    mo->layers.assign((size_t)mo->L, cm_moe_layer());
    mo->moe_index.assign((size_t)mo->L, -1);
    mo->nmoe = 0;
    auto take = [&](auto **p, int64_t n) -> averis_status {
        void *q = nullptr;
        CU_OK(alloc(&q, (size_t)std::max<int64_t>(n, 1) * sizeof(**p)));
        *p = static_cast<std::remove_reference_t<decltype(*p)>>(q);
        return AVERIS_OK;
    };
    for (int l = 0; l < mo->L; l++) {
        if (!model_layer_is_moe(&c, l)) continue;
        mo->moe_index[l] = mo->nmoe++;
        cm_moe_layer &a = mo->layers[l];
        a.used = 1;
        CU_OK(take(&a.p, N * E)); CU_OK(take(&a.wts, N * k)); CU_OK(take(&a.sel, N * k));
        CU_OK(take(&a.perm, R)); CU_OK(take(&a.slot, N * k)); CU_OK(take(&a.counts_d, E)); CU_OK(take(&a.offs_d, E + 1));
        CU_OK(take(&a.xs, R * C)); CU_OK(take(&a.y, R * C));
        CU_OK(take(&a.g, R * I)); CU_OK(take(&a.u, R * I)); CU_OK(take(&a.a, R * I));
        a.counts.assign((size_t)E, 0);
        a.offs.assign((size_t)E + 1, 0);
        a.in_x.assign((size_t)E, cl_input());
        a.in_a.assign((size_t)E, cl_input());
        a.wg.assign((size_t)E, cl_weight()), a.wu.assign((size_t)E, cl_weight()), a.wd.assign((size_t)E, cl_weight());
        /* the experts' weight operands, stacked (cl_seg_weight; the per-expert cl_weights view them) */
        cl_seg_weight *sw[3] = {&a.swg, &a.swu, &a.swd};
        const int64_t sdims[3][2] = {{I, C}, {I, C}, {C, I}};
        for (int q = 0; q < 3; q++) {
            sw[q]->n = sdims[q][0], sw[q]->m = sdims[q][1], sw[q]->E = (int)E;
            CU_OK(take(&sw[q]->wq, E * I * C));
            CU_OK(take(&sw[q]->amax, E));
        }
        if (mo->mode != CM_MOE_PER_EXPERT) {
            CU_OK(cl_seg_input_setup(&a.sx, C, (int)E, alloc));
            CU_OK(cl_seg_input_setup(&a.sa, I, (int)E, alloc));
        }
        /* per expert: its inputs' statistics (the split's mean, amax: the backward reuses them) */
        for (int e = 0; e < E; e++) {
            cl_input *ins[2] = {&a.in_x[e], &a.in_a[e]};
            int64_t ms[2] = {C, I};
            for (int q = 0; q < 2; q++) {
                cl_input &x = *ins[q];
                x.bf16 = 0, x.m = ms[q];
                CU_OK(take(&x.amax, 1)); CU_OK(take(&x.mean, ms[q])); CU_OK(take(&x.res_amax, 1));
                CU_OK(take(&x.xt_amax, 1)); CU_OK(take(&x.xt_sum, ms[q]));
            }
            cl_weight *ws[3] = {&a.wg[e], &a.wu[e], &a.wd[e]};
            int64_t dims[3][2] = {{I, C}, {I, C}, {C, I}};
            for (int q = 0; q < 3; q++) {
                cl_weight &o = *ws[q];
                o.n = dims[q][0], o.m = dims[q][1];
                o.wq = sw[q]->wq + e * o.n * o.m;
                o.amax = sw[q]->amax + e;
            }
        }
    }
    CU_OK(take(&mo->h32, N * C));
    CU_OK(take(&mo->dy, R * C)); CU_OK(take(&mo->dxs, R * C));
    CU_OK(take(&mo->da, R * I)); CU_OK(take(&mo->dg, R * I)); CU_OK(take(&mo->du, R * I));
    CU_OK(take(&mo->dw, N * k)); CU_OK(take(&mo->dz, N * E)); CU_OK(take(&mo->daux, E));
    CU_OK(take(&mo->psum, (int64_t)std::max(mo->nmoe, 1) * E));
    mo->psum_h.assign((size_t)std::max(mo->nmoe, 1) * E, 0.0);
    mo->daux_h.assign((size_t)E, 0.0f);
    if (mo->mode != CM_MOE_PER_EXPERT) {
        int64_t wmax = std::max(C, I);
        CU_OK(take(&mo->sxq, cq_seg_rows(R, (int)E) * wmax));
        CU_OK(take(&mo->sxt, wmax * cq_seg_cols(R, (int)E)));
        CU_OK(cl_seg_scratch_setup(&mo->sscr, R, (int)E, wmax, alloc));
        CU_OK(take(&mo->streams_d, 6 * E));
        mo->seg_ws_bytes = cq_seg_ws_bytes(R, (int)E, wmax);
        CU_OK(alloc(&mo->seg_ws, mo->seg_ws_bytes));
        mo->streams_h.assign((size_t)(6 * E * mo->L), 0); /* per layer: an async copy's source stays put */
        for (cm_moe_layer &a : mo->layers) {
            if (!a.used) continue;
            a.sx.xq = a.sa.xq = mo->sxq;
            a.sx.xt = a.sa.xt = mo->sxt;
        }
    }
    return AVERIS_OK;
}

void cm_moe_bind(cm_moe *mo, int l, const float *router, const float *eg, const float *eu, const float *ed,
                 float *g_router, float *g_eg, float *g_eu, float *g_ed) {
    cm_moe_layer &a = mo->layers[l];
    a.router = router, a.eg = eg, a.eu = eu, a.ed = ed;
    a.g_router = g_router, a.g_eg = g_eg, a.g_eu = g_eu, a.g_ed = g_ed;
    a.swg.w = eg, a.swu.w = eu, a.swd.w = ed;
    int64_t IC = mo->I * mo->C;
    for (int e = 0; e < mo->E; e++) {
        a.wg[e].w = eg + e * IC;
        a.wu[e].w = eu + e * IC;
        a.wd[e].w = ed + e * IC;
    }
}

void cm_moe_set_operands(cm_moe *mo, __nv_bfloat16 *xq, __nv_bfloat16 *xt) {
    for (cm_moe_layer &a : mo->layers)
        for (size_t e = 0; e < a.in_x.size(); e++) {
            a.in_x[e].xq = a.in_a[e].xq = xq;
            a.in_x[e].xt = a.in_a[e].xt = xt;
        }
}

averis_status cm_moe_prep_weights(cm_moe *mo, int l, const qlin_recipe *r, cudaStream_t s) {
    cm_moe_layer &a = mo->layers[l];
    if (mo->mode != CM_MOE_PER_EXPERT) { /* the E weights of a linear in one launch sequence */
        CU_OK(cl_seg_prep_w(r, &a.swg, s));
        CU_OK(cl_seg_prep_w(r, &a.swu, s));
        return cl_seg_prep_w(r, &a.swd, s);
    }
    for (int e = 0; e < mo->E; e++) {
        CU_OK(cl_prep_w(r, &a.wg[e], s));
        CU_OK(cl_prep_w(r, &a.wu[e], s));
        CU_OK(cl_prep_w(r, &a.wd[e], s));
    }
    return AVERIS_OK;
}

averis_status cm_moe_forward(cm_moe *mo, int l, const qlin_recipe *r, const void *h_in, int h_bf16, const float *x_mid,
                             float *x_next, cl_scratch *scr, cublasHandle_t cb, avc_tap_fn tap, void *tap_ctx,
                             cudaStream_t s) {
    cm_moe_layer &a = mo->layers[l];
    int E = mo->E, k = mo->k;
    int64_t N = mo->N, C = mo->C, I = mo->I, R = mo->R, nk = N * k;
    averis_status st;
    const float *h = h_fp32(mo, h_in, h_bf16, s, &st);
    if (st) return st;
    {
        CU_PROF("moe router", s);
        /* z [N,E] = h·W_rᵀ: column-major zᵀ [E,N] = W_r(ᵀ as [C,E]) ᵀ · hᵀ [C,N] */
        const float one = 1.0f, zero = 0.0f;
        CU_CUBLAS_TRY(cublasSgemm(cb, CUBLAS_OP_T, CUBLAS_OP_N, E, (int)N, (int)C, &one, a.router, (int)C, h, (int)C, &zero,
                                  a.p, E));
        k_route<<<cu_blocks(N, 128), 128, 0, s>>>(a.p, a.sel, a.wts, N, E, k, mo->norm_topk);
        CU_LAUNCHED();
        k_psum<<<cu_blocks(E, 64), 64, 0, s>>>(a.p, N, E, mo->psum + (int64_t)mo->moe_index[l] * E);
        CU_LAUNCHED();
        k_count<<<E, 256, 0, s>>>(a.sel, nk, a.counts_d);
        CU_LAUNCHED();
        k_offsets<<<1, 1, 0, s>>>(a.counts_d, a.offs_d, E);
        CU_LAUNCHED();
        k_place<<<E, 256, 0, s>>>(a.sel, nk, k, a.offs_d, a.perm, a.slot);
        CU_LAUNCHED();
        CU_TRY(cudaMemcpyAsync(a.counts.data(), a.counts_d, E * sizeof(int), cudaMemcpyDeviceToHost, s));
        CU_TRY(cudaMemcpyAsync(a.offs.data(), a.offs_d, (E + 1) * sizeof(int), cudaMemcpyDeviceToHost, s));
        k_gather<<<cu_blocks(R * C, 256), 256, 0, s>>>(h, a.perm, a.xs, R, C);
        CU_LAUNCHED();
        CU_TRY(cudaStreamSynchronize(s)); /* the GEMM sizes */
    }
    cl_size_class_scope by_class; /* the experts' GEMMs planned by size class (qlinear.cu) */
    if (mo->mode != CM_MOE_PER_EXPERT) { /* every expert at once (qlinear_group.cuh) */
        cq_seg g = {E, a.offs_d, a.offs.data(), 0, 1, mo->seg_ws, mo->seg_ws_bytes};
        a.sx.x = a.xs, a.sa.x = a.a;
        CU_OK(cl_seg_prep_x(r, &a.sx, &g, s));
        CU_OK(cl_seg_forward(r, &a.sx, &a.swg, &g, a.g, mo->mode, &mo->sscr, s));
        CU_OK(cl_seg_forward(r, &a.sx, &a.swu, &g, a.u, mo->mode, &mo->sscr, s));
        CU_OK(cs_swiglu<float>(a.g, a.u, nullptr, nullptr, a.a, R * I, I, s)); /* elementwise: the per-expert calls' values */
        CU_OK(cl_seg_prep_x(r, &a.sa, &g, s));
        CU_OK(cl_seg_forward(r, &a.sa, &a.swd, &g, a.y, mo->mode, &mo->sscr, s));
        for (int e = 0; e < E; e++) /* xs and a are kept: the taps in the per-expert path's order */
            if (a.counts[e]) {
                int64_t o = a.offs[e], n = a.counts[e];
                tap_expert(tap, tap_ctx, l, "expert%d_in", e, a.xs + o * C, n, C);
                tap_expert(tap, tap_ctx, l, "expert%d_down_in", e, a.a + o * I, n, I);
            }
    }
    for (int e = 0; e < E && mo->mode == CM_MOE_PER_EXPERT; e++) {
        int64_t n = a.counts[e], o = a.offs[e];
        if (!n) continue; /* no tokens: no GEMM, no statistics */
        cl_input &x = a.in_x[e], &xa = a.in_a[e];
        x.x = a.xs + o * C, x.l = n;
        xa.x = a.a + o * I, xa.l = n;
        float *g = a.g + o * I, *u = a.u + o * I;
        tap_expert(tap, tap_ctx, l, "expert%d_in", e, a.xs + o * C, n, C);
        CU_OK(cl_prep_x(r, &x, s));
        CU_OK(cl_forward(r, &x, &a.wg[e], g, 0, nullptr, nullptr, scr, s));
        CU_OK(cl_forward(r, &x, &a.wu[e], u, 0, nullptr, nullptr, scr, s));
        CU_OK(cs_swiglu<float>(g, u, nullptr, nullptr, a.a + o * I, n * I, I, s));
        tap_expert(tap, tap_ctx, l, "expert%d_down_in", e, a.a + o * I, n, I);
        CU_OK(cl_prep_x(r, &xa, s));
        CU_OK(cl_forward(r, &xa, &a.wd[e], a.y + o * C, 0, nullptr, nullptr, scr, s));
    }
    {
        CU_PROF("moe combine", s);
        k_combine<<<cu_blocks(N * C, 256), 256, 0, s>>>(a.y, a.wts, a.slot, x_mid, x_next, N, C, k);
        CU_LAUNCHED();
    }
    return AVERIS_OK;
}

averis_status cm_moe_aux(cm_moe *mo, cudaStream_t s, float *aux) {
    *aux = 0.0f;
    if (!mo->nmoe) return AVERIS_OK;
    int E = mo->E;
    CU_TRY(cudaMemcpyAsync(mo->psum_h.data(), mo->psum, (size_t)mo->nmoe * E * sizeof(double), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaStreamSynchronize(s));
    /* moe_aux_loss's sums: counts and Σ p over every MoE layer's rows */
    std::vector<double> cnt((size_t)E, 0.0), psum((size_t)E, 0.0);
    int64_t rows = 0;
    for (int l = 0; l < mo->L; l++) {
        if (mo->moe_index[l] < 0) continue;
        const cm_moe_layer &a = mo->layers[l];
        for (int e = 0; e < E; e++) {
            cnt[e] += a.counts[e];
            psum[e] += mo->psum_h[(size_t)mo->moe_index[l] * E + e];
        }
        rows += mo->N;
    }
    double M = (double)rows, acc = 0.0;
    for (int e = 0; e < E; e++) {
        acc += (cnt[e] / M) * (psum[e] / M);
        mo->daux_h[e] = (float)(rows ? (double)E * cnt[e] / (M * M) : 0.0);
    }
    mo->aux = rows ? (float)(acc * E) : 0.0f;
    *aux = mo->aux;
    CU_TRY(cudaMemcpyAsync(mo->daux, mo->daux_h.data(), E * sizeof(float), cudaMemcpyHostToDevice, s));
    CU_TRY(cudaStreamSynchronize(s)); /* daux_h is rewritten by the next forward */
    return AVERIS_OK;
}

averis_status cm_moe_backward(cm_moe *mo, int l, const qlin_recipe *r, const void *h_in, int h_bf16, const float *dout,
                              float *dh, float loss_scale, uint64_t sr_stream, cl_scratch *scr, cublasHandle_t cb,
                              avc_tap_fn tap, void *tap_ctx, cudaStream_t s) {
    cm_moe_layer &a = mo->layers[l];
    int E = mo->E, k = mo->k;
    int64_t N = mo->N, C = mo->C, I = mo->I, nk = N * k;
    {
        CU_PROF("moe combine", s);
        k_combine_bwd<<<cu_blocks(nk * 32, 256), 256, 0, s>>>(dout, a.y, a.wts, a.slot, mo->dy, mo->dw, nk, C, k);
        CU_LAUNCHED();
    }
    cl_size_class_scope by_class;
    if (mo->mode != CM_MOE_PER_EXPERT) { /* every expert at once (qlinear_group.cuh) */
        int64_t R = mo->R;
        cq_seg g = {E, a.offs_d, a.offs.data(), 0, 1, mo->seg_ws, mo->seg_ws_bytes};
        /* each expert's SR streams (moe_sr_stream, as the per-expert path): (down, gate, up) × (dgrad, wgrad) × E */
        const int lins[3] = {MODEL_LIN_DOWN, MODEL_LIN_GATE, MODEL_LIN_UP};
        uint64_t *hs = mo->streams_h.data() + (size_t)6 * E * l;
        for (int q = 0; q < 3; q++)
            for (int e = 0; e < E; e++) {
                uint64_t st = moe_sr_stream(sr_stream, l, e, lins[q]);
                hs[(size_t)(2 * q) * E + e] = qlin_dgrad_stream(st);
                hs[(size_t)(2 * q + 1) * E + e] = qlin_wgrad_stream(st);
            }
        CU_TRY(cudaMemcpyAsync(mo->streams_d, hs, 6 * E * sizeof(uint64_t), cudaMemcpyHostToDevice, s));
        a.sx.x = a.xs, a.sa.x = a.a;
        a.sx.xt_ready = a.sa.xt_ready = 0; /* the operand buffers are shared by the layers: prepare again */
        CU_OK(cl_seg_backward(r, &a.sa, &a.swd, &g, mo->dy, mo->da, 0, a.g_ed, mo->streams_d, mo->mode, &mo->sscr, s));
        CU_OK(cs_swiglu_bwd<float>(mo->da, a.g, a.u, nullptr, nullptr, mo->dg, mo->du, R * I, I, s));
        for (int e = 0; e < E; e++) /* dy, dg, du are kept: the taps in the per-expert path's order */
            if (a.counts[e]) {
                int64_t o = a.offs[e], n = a.counts[e];
                tap_expert(tap, tap_ctx, l, "grad_expert%d_down", e, mo->dy + o * C, n, C);
                tap_expert(tap, tap_ctx, l, "grad_expert%d_gate", e, mo->dg + o * I, n, I);
                tap_expert(tap, tap_ctx, l, "grad_expert%d_up", e, mo->du + o * I, n, I);
            }
        CU_OK(cl_seg_backward(r, &a.sx, &a.swg, &g, mo->dg, mo->dxs, 0, a.g_eg, mo->streams_d + 2 * E, mo->mode, &mo->sscr, s));
        CU_OK(cl_seg_backward(r, &a.sx, &a.swu, &g, mo->du, mo->dxs, 1, a.g_eu, mo->streams_d + 4 * E, mo->mode, &mo->sscr, s));
    }
    for (int e = 0; e < E && mo->mode == CM_MOE_PER_EXPERT; e++) {
        int64_t n = a.counts[e], o = a.offs[e];
        if (!n) continue;
        cl_input &x = a.in_x[e], &xa = a.in_a[e];
        x.x = a.xs + o * C, x.l = n, x.xt_ready = 0;
        xa.x = a.a + o * I, xa.l = n, xa.xt_ready = 0; /* xq/xt are shared: prepare again */
        float *dae = mo->da + o * I, *dge = mo->dg + o * I, *due = mo->du + o * I;
        tap_expert(tap, tap_ctx, l, "grad_expert%d_down", e, mo->dy + o * C, n, C);
        CU_OK(cl_backward(r, &xa, &a.wd[e], mo->dy + o * C, dae, 0, a.g_ed + e * C * I,
                          moe_sr_stream(sr_stream, l, e, MODEL_LIN_DOWN), scr, s));
        CU_OK(cs_swiglu_bwd<float>(dae, a.g + o * I, a.u + o * I, nullptr, nullptr, dge, due, n * I, I, s));
        tap_expert(tap, tap_ctx, l, "grad_expert%d_gate", e, dge, n, I);
        tap_expert(tap, tap_ctx, l, "grad_expert%d_up", e, due, n, I);
        CU_OK(cl_backward(r, &x, &a.wg[e], dge, mo->dxs + o * C, 0, a.g_eg + e * I * C,
                          moe_sr_stream(sr_stream, l, e, MODEL_LIN_GATE), scr, s));
        CU_OK(cl_backward(r, &x, &a.wu[e], due, mo->dxs + o * C, 1, a.g_eu + e * I * C,
                          moe_sr_stream(sr_stream, l, e, MODEL_LIN_UP), scr, s));
    }
    averis_status st;
    const float *h = h_fp32(mo, h_in, h_bf16, s, &st);
    if (st) return st;
    {
        CU_PROF("moe router", s);
        k_uncombine<<<cu_blocks(N * C, 256), 256, 0, s>>>(mo->dxs, a.slot, dh, N, C, k);
        CU_LAUNCHED();
        float aux_scale = mo->aux_on ? loss_scale * (float)mo->coef : 0.0f;
        k_router_bwd<<<cu_blocks(N, 128), 128, 0, s>>>(a.p, a.wts, a.sel, mo->dw, mo->daux, aux_scale, mo->dz, N, E, k,
                                                       mo->norm_topk);
        CU_LAUNCHED();
        const float one = 1.0f;
        /* dh [N,C] += dz [N,E]·W_r [E,C]: column-major dhᵀ = W_rᵀ·dzᵀ */
        CU_CUBLAS_TRY(cublasSgemm(cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)C, (int)N, E, &one, a.router, (int)C, mo->dz, E, &one,
                                  dh, (int)C));
        /* dW_r [E,C] += dzᵀ·h: column-major dW_rᵀ [C,E] = hᵀ [C,N]·dz [N,E] */
        CU_CUBLAS_TRY(cublasSgemm(cb, CUBLAS_OP_N, CUBLAS_OP_T, (int)C, E, (int)N, &one, h, (int)C, mo->dz, E, &one,
                                  a.g_router, (int)C));
    }
    return AVERIS_OK;
}
