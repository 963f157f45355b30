/* attention.cu — causal GQA attention of the model on device.
 *
 * With BF16 activations and a build with cuDNN, the whole of it is cuDNN's
 * fused flash attention (cudnn_att.cu: O written token-major into ao, dQ,
 * dK, dV in BF16, deterministic backward). Otherwise:
 *   S  = Q·Kᵀ/√Dh per (b, kv group)          cuBLAS batched, causal row blocks
 *   P  = softmax_causal(S), BF16              k_softmax
 *   ao = P·V → [N, H·Dh]                      cuBLAS batched + cr_heads_to_tokens
 * The materialised path stores P (BF16, B·H·T² per layer) for the backward;
 * flash.cu recomputes it instead, where P would not fit (ca_choose).
 * Determinism: no atomics; the heads of a kv group sum by β = 1 in a fixed
 * order. */
#include "attention.cuh"
#include "flash.cuh"
#include "rope.cuh"

#include <cmath>
#include <cstdio>
#include <type_traits>

namespace {

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
    mx = cu_warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j <= t; j += 32) sum += expf(s[j] - mx);
    sum = cu_warp_sum(sum);
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
    pdp = cu_warp_sum(pdp);
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

/* Row-major batched GEMM C_i = α·op(A_i)·op(B_i) + β·C_i through cuBLAS's
 * column-major interface (operands swapped). */
averis_status bgemm(const ca_attn *at, int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                    const void *A, cudaDataType_t ta, int64_t lda, int64_t sA, const void *B, cudaDataType_t tb,
                    int64_t ldb, int64_t sB, float beta, void *C, cudaDataType_t tc, int64_t ldc, int64_t sC,
                    int64_t batch) {
    CU_CUBLAS_TRY(cublasGemmStridedBatchedEx(at->cb, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                             (int)N, (int)M, (int)K, &alpha, B, tb, (int)ldb, sB, A, ta, (int)lda, sA,
                                             &beta, C, tc, (int)ldc, sC, (int)batch, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT));
    return AVERIS_OK;
}

/* Attention forward of a layer: S = Q·Kᵀ/√Dh, P = softmax, ao = P·V; A: ao's type */
template <typename A> averis_status forward(const ca_attn *at, const ca_layer *a) {
    CU_PROF("attention fwd", at->s);
    if (at->cudnn)
        return ccd_forward(at->ccd, at->B, at->T, at->H, at->KV, at->Dh, ccd_heads(a->qh, at->H, at->T, at->Dh),
                           ccd_heads(a->kh, at->KV, at->T, at->Dh), ccd_heads(a->vh, at->KV, at->T, at->Dh),
                           ccd_tokens(static_cast<__nv_bfloat16 *>(a->ao), at->H, at->T, at->Dh), a->lse, at->s);
    if (at->flash) return cf_forward(a->qh, a->kh, a->vh, a->ao, at->ao_bf16, a->lse, at->B, at->T, at->H, at->KV, at->Dh, at->s);
    int64_t T = at->T, Dh = at->Dh, grp = at->H / at->KV, nb = (int64_t)at->B * at->KV, tb = T / at->nsplit;
    float scale = 1.0f / sqrtf((float)Dh);
    /* causal blocks: the tb query rows of block i see keys [0, (i+1)·tb) only, so each GEMM runs per (head
     * of the kv group, row block) and skips the key blocks right of the diagonal block: (ns+1)/(2·ns) of
     * the work and of S and P's traffic (5/8 at ns = 4). S and P rows of a (b, kv) batch: h·T + t. */
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < at->nsplit; i++) {
            int64_t r0 = h * T + i * tb;
            CU_OK(bgemm(at, 0, 1, tb, (i + 1) * tb, Dh, scale, a->qh + r0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh, a->kh,
                        CUDA_R_16BF, Dh, T * Dh, 0.0f, at->S + r0 * T, CUDA_R_32F, T, grp * T * T, nb));
        }
    int64_t rows = (int64_t)at->B * at->H * T;
    k_softmax<<<cu_blocks(rows * 32, 256), 256, 0, at->s>>>(at->S, a->P, rows, (int)T, (int)tb);
    CU_LAUNCHED();
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < at->nsplit; i++) {
            int64_t r0 = h * T + i * tb;
            CU_OK(bgemm(at, 0, 0, tb, Dh, (i + 1) * tb, 1.0f, a->P + r0 * T, CUDA_R_16BF, T, grp * T * T, a->vh,
                        CUDA_R_16BF, Dh, T * Dh, 0.0f, at->o_dq_heads + r0 * Dh, CUDA_R_32F, Dh, grp * T * Dh, nb));
        }
    return cr_heads_to_tokens(at->o_dq_heads, static_cast<A *>(a->ao), (int64_t)at->B * at->T, at->H, at->Dh, at->T,
                              nullptr, nullptr, at->s);
}

/* The materialising backward: dP = dO·Vᵀ, dV = Pᵀ·dO, dS, dQ = dS·K, dK = dSᵀ·Q
 * into the head-major o_dq_heads, dk_heads, dv_heads, in the causal blocks
 * of forward: dP and dQ per (head, query block i) over keys [0, (i+1)·tb);
 * dV and dK per (key block k, head) over queries [k·tb, T), the heads of a
 * kv group summed by β = 1 in a fixed order */
averis_status backward_materialised(const ca_attn *at, const ca_layer *a, int64_t T, int64_t Dh, int64_t grp,
                                    int64_t nb, float scale) {
    int64_t tb = T / at->nsplit, ns = at->nsplit;
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < ns; i++) {
            int64_t r0 = h * T + i * tb;
            CU_OK(bgemm(at, 0, 1, tb, (i + 1) * tb, Dh, 1.0f, at->do_heads + r0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh,
                        a->vh, CUDA_R_16BF, Dh, T * Dh, 0.0f, at->S + r0 * T, CUDA_R_32F, T, grp * T * T, nb));
        }
    for (int64_t k = 0; k < ns; k++)
        for (int64_t h = 0; h < grp; h++) {
            int64_t q0 = h * T + k * tb; /* rows of P from query k·tb on, columns of key block k */
            CU_OK(bgemm(at, 1, 0, tb, Dh, T - k * tb, 1.0f, a->P + q0 * T + k * tb, CUDA_R_16BF, T, grp * T * T,
                        at->do_heads + q0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh, h ? 1.0f : 0.0f,
                        at->dv_heads + k * tb * Dh, CUDA_R_32F, Dh, T * Dh, nb));
        }
    int64_t rows = (int64_t)at->B * at->H * T;
    CU_OK(by_nk((int)T, [&](auto nk) {
        k_softmax_bwd<decltype(nk)::value><<<cu_blocks(rows * 32, 256), 256, 0, at->s>>>(a->P, at->S, at->dS, rows,
                                                                                         (int)T, (int)tb, scale);
        CU_LAUNCHED();
        return AVERIS_OK;
    }));
    for (int64_t h = 0; h < grp; h++)
        for (int64_t i = 0; i < ns; i++) {
            int64_t r0 = h * T + i * tb;
            CU_OK(bgemm(at, 0, 0, tb, Dh, (i + 1) * tb, 1.0f, at->dS + r0 * T, CUDA_R_16BF, T, grp * T * T, a->kh,
                        CUDA_R_16BF, Dh, T * Dh, 0.0f, at->o_dq_heads + r0 * Dh, CUDA_R_32F, Dh, grp * T * Dh, nb));
        }
    for (int64_t k = 0; k < ns; k++)
        for (int64_t h = 0; h < grp; h++) {
            int64_t q0 = h * T + k * tb;
            CU_OK(bgemm(at, 1, 0, tb, Dh, T - k * tb, 1.0f, at->dS + q0 * T + k * tb, CUDA_R_16BF, T, grp * T * T,
                        a->qh + q0 * Dh, CUDA_R_16BF, Dh, grp * T * Dh, h ? 1.0f : 0.0f, at->dk_heads + k * tb * Dh,
                        CUDA_R_32F, Dh, T * Dh, nb));
        }
    return AVERIS_OK;
}

} // namespace

averis_status ca_choose(ca_attn *at, avc_attn want, int nlayers) {
    int B = at->B, H = at->H, T = at->T, Dh = at->Dh;
    int sup = cf_supported(T, Dh);
    if (want == AVC_ATTN_FLASH && !sup)
        return averis_fail(AVERIS_EUNSUPPORTED, "flash attention needs seq %% 64 == 0 and head_dim 32, 64 or 128 (got %d, %d)",
                           T, Dh);
    at->nsplit = T % 64 == 0 ? 4 : 1; /* blocks of T/4 rows: multiples of 16, so every GEMM operand stays aligned */
    at->cudnn = 0, at->ccd = nullptr;
    const char *why = "";
    if (want == AVC_ATTN_CUDNN || want == AVC_ATTN_AUTO) {
        averis_status st = AVERIS_OK;
        if (!at->ao_bf16) st = averis_fail(AVERIS_EUNSUPPORTED, "cuDNN attention takes BF16 activations (AVERIS_ACT=bf16)");
        else if (!ccd_supported(T, Dh))
            st = averis_fail(AVERIS_EUNSUPPORTED, "cuDNN attention: not in this build, or head_dim %d not a multiple of 8 up to 128", Dh);
        else st = ccd_create(&at->ccd, 1);
        if (st == AVERIS_OK) {
            at->cudnn = 1, at->flash = 0;
            snprintf(at->path, sizeof at->path, "by cuDNN (%s)", ccd_describe(at->ccd));
            return AVERIS_OK;
        }
        if (want == AVC_ATTN_CUDNN) return st;
        why = at->ao_bf16 ? " (no cuDNN attention)" : "";
    }
    /* P materialised is the faster of our own paths where it fits (docs/cuda.md, docs/benchmarks.md) */
    double p_bytes = (double)B * H * T * (double)T * (2.0 * nlayers + 6.0);
    size_t free_b = 0, total_b = 0;
    CU_TRY(cudaMemGetInfo(&free_b, &total_b));
    at->flash = want != AVC_ATTN_AUTO ? want == AVC_ATTN_FLASH : sup && p_bytes > 0.25 * (double)total_b;
    snprintf(at->path, sizeof at->path, "%s%s", at->flash ? "by flash.cu" : "by cuBLAS with P materialised", why);
    return AVERIS_OK;
}

void ca_release(ca_attn *at) {
    ccd_destroy(at->ccd);
    at->ccd = nullptr;
}

averis_status ca_forward(const ca_attn *at, const ca_layer *l) {
    return at->ao_bf16 ? forward<__nv_bfloat16>(at, l) : forward<float>(at, l);
}

/* The backward: dP = dO·Vᵀ, dV = Pᵀ·dO, dS = softmax_bwd, dQ = dS·K, dK = dSᵀ·Q
 * (per kv group, its heads stacked: dV and dK sum over them in the GEMM);
 * dq, dk come out token-major with the rotation undone. */
averis_status ca_backward(const ca_attn *at, const ca_layer *a, const float *dao, float *dq, float *dk, float *dv) {
    CU_PROF("attention bwd", at->s);
    int64_t T = at->T, Dh = at->Dh, grp = at->H / at->KV, nb = (int64_t)at->B * at->KV, N = (int64_t)at->B * at->T;
    float scale = 1.0f / sqrtf((float)Dh);
    CU_OK(cr_tokens_to_heads(dao, nullptr, at->do_heads, N, at->H, at->Dh, at->T, at->s));
    if (at->cudnn) { /* dQ, dK, dV in BF16, in the fp32 buffers' memory */
        int H = at->H, KV = at->KV, Tt = at->T, D = at->Dh;
        auto *gq = reinterpret_cast<__nv_bfloat16 *>(at->o_dq_heads), *gk = reinterpret_cast<__nv_bfloat16 *>(at->dk_heads),
             *gv = reinterpret_cast<__nv_bfloat16 *>(at->dv_heads);
        CU_OK(ccd_backward(at->ccd, at->B, Tt, H, KV, D, ccd_heads(a->qh, H, Tt, D), ccd_heads(a->kh, KV, Tt, D),
                           ccd_heads(a->vh, KV, Tt, D), ccd_tokens(static_cast<__nv_bfloat16 *>(a->ao), H, Tt, D),
                           ccd_heads(at->do_heads, H, Tt, D), a->lse, ccd_heads(gq, H, Tt, D), ccd_heads(gk, KV, Tt, D),
                           ccd_heads(gv, KV, Tt, D), at->s));
        CU_OK(cr_heads_to_tokens(gq, dq, N, H, D, Tt, at->rope_cos, at->rope_sin, at->s));
        CU_OK(cr_heads_to_tokens(gk, dk, N, KV, D, Tt, at->rope_cos, at->rope_sin, at->s));
        return cr_heads_to_tokens(gv, dv, N, KV, D, Tt, nullptr, nullptr, at->s);
    }
    if (at->flash)
        CU_OK(cf_backward(a->qh, a->kh, a->vh, at->do_heads, dao, a->ao, at->ao_bf16, a->lse, at->Dv, at->o_dq_heads,
                          at->dk_heads, at->dv_heads, at->B, at->T, at->H, at->KV, at->Dh, at->s));
    else
        CU_OK(backward_materialised(at, a, T, Dh, grp, nb, scale));
    CU_OK(cr_heads_to_tokens(at->o_dq_heads, dq, N, at->H, at->Dh, at->T, at->rope_cos, at->rope_sin, at->s));
    CU_OK(cr_heads_to_tokens(at->dk_heads, dk, N, at->KV, at->Dh, at->T, at->rope_cos, at->rope_sin, at->s));
    return cr_heads_to_tokens(at->dv_heads, dv, N, at->KV, at->Dh, at->T, nullptr, nullptr,
                              at->s);
}
