/* cross_entropy.cuh — the LM head and the loss on device, by chunks of
 * tokens: logits = hf·Eᵀ (cuBLASLt, BF16 operands, fp32 logits), loss per
 * token, and with the backward dlogits, dhf and dE at once, so the logits
 * of all N tokens never exist together. Included by model.cu. */
#ifndef AVERIS_CUDA_CROSS_ENTROPY_CUH
#define AVERIS_CUDA_CROSS_ENTROPY_CUH

#include "qlinear.cuh"

#include <algorithm>

namespace {

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

/* tok_loss [N] = CE(hf [N × C]·E [V × C]ᵀ, targets [N]) by chunks of `chunk`
 * tokens through logits [chunk × V] fp32; with backward, dlogits [chunk × V]
 * BF16 = (softmax − onehot)·dscale feed dhf [N × C] = dlogits·E and
 * dE [V × C] += dlogitsᵀ·hf */
averis_status cx_lm_head(const __nv_bfloat16 *hf, const __nv_bfloat16 *E, const int *targets, int64_t N, int64_t C,
                         int64_t V, int64_t chunk, float *logits, __nv_bfloat16 *dlogits, float *tok_loss, int backward,
                         float dscale, float *dhf, float *dE, cudaStream_t s) {
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        CU_PROF("lm head + xent", s);
        int64_t cn = std::min(chunk, N - r0);
        CU_OK(cl_matmul(0, 1, cn, V, C, cl_one(), hf + r0 * C, CUDA_R_16BF, C, E, CUDA_R_16BF, C, cl_zero(), logits,
                        logits, CUDA_R_32F, V, nullptr, s));
        k_xent<<<(unsigned)cn, 1024, 0, s>>>(logits, targets + r0, V, tok_loss + r0, backward ? dlogits : nullptr, dscale);
        CU_LAUNCHED();
        if (backward) {
            CU_OK(cl_matmul(0, 0, cn, C, V, cl_one(), dlogits, CUDA_R_16BF, V, E, CUDA_R_16BF, C, cl_zero(), dhf + r0 * C,
                            dhf + r0 * C, CUDA_R_32F, C, nullptr, s));
            CU_OK(cl_matmul(1, 0, V, C, cn, cl_one(), dlogits, CUDA_R_16BF, V, hf + r0 * C, CUDA_R_16BF, C, cl_one(), dE,
                            dE, CUDA_R_32F, C, nullptr, s));
        }
    }
    return AVERIS_OK;
}

} // namespace

#endif
