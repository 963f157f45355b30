/* qlinear_kern.cuh — the linear layer's small kernels' bodies (internal to
 * cuda/): qlinear.cu runs them on one weight, qlinear_group.cu on each
 * expert's segment (blockIdx.y or .z picks the expert there), with the same
 * arithmetic, so the two give the same bits. */
#ifndef AVERIS_CUDA_QLINEAR_KERN_CUH
#define AVERIS_CUDA_QLINEAR_KERN_CUH

#include "qlinear.cuh"
#include "averis/nvfp4_spec.h"

namespace {

/* bias[o] = S_dec(W)·Σ_i μ[i]·W̄[o][i]: one warp per output row (blockIdx.x),
 * 8 weights (16 bytes) per lane and load (m % 8 == 0: FP4 recipes have
 * m % 16 == 0) */
__device__ __forceinline__ void mean_fwd_body(const float *mu, const __nv_bfloat16 *wq, float w_amax, int64_t n, int64_t m,
                                              float *bias) {
    int64_t o = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (o >= n) return;
    float acc = 0.0f;
    const uint4 *wr = reinterpret_cast<const uint4 *>(wq + o * m);
#pragma unroll 4
    for (int64_t k = lane; k < m / 8; k += 32) {
        uint4 u = __ldg(wr + k);
        float4 a = __ldg(reinterpret_cast<const float4 *>(mu) + 2 * k), c = __ldg(reinterpret_cast<const float4 *>(mu) + 2 * k + 1);
        const float f[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            acc += f[2 * i] * __uint_as_float(w[i] << 16);
            acc += f[2 * i + 1] * __uint_as_float(w[i] & 0xFFFF0000u);
        }
    }
    acc = cu_warp_sum(acc);
    if (lane == 0) {
        float e, d;
        nvfp4_spec_global_scales(w_amax, &e, &d);
        bias[o] = acc * d;
    }
}

/* bias[i] = S_dec(W)·Σ_o μ_D[o]·W̄[o][i], in two steps for parallelism:
 * part[y][i] over rows slice y = blockIdx.y (CL_MEAN_SLICES of them), then the
 * sum over y. A (32, 8) block covers 256 columns, 8 per thread from one
 * 16-byte load. */
__device__ __forceinline__ void mean_dgrad_part_body(const float *mu, const __nv_bfloat16 *wq, int64_t n, int64_t m,
                                                     float *part) {
    __shared__ float red[8][256 + 8];
    int64_t c8 = (int64_t)blockIdx.x * 32 + threadIdx.x; /* 8-column group */
    int64_t per = (n + CL_MEAN_SLICES - 1) / CL_MEAN_SLICES, o0 = blockIdx.y * per, o1 = min(o0 + per, n);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (c8 * 8 < m)
#pragma unroll 4
        for (int64_t o = o0 + threadIdx.y; o < o1; o += 8) {
            uint4 u = __ldg(reinterpret_cast<const uint4 *>(wq + o * m) + c8);
            float mo = __ldg(mu + o);
            const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                acc[2 * i] += mo * __uint_as_float(w[i] << 16);
                acc[2 * i + 1] += mo * __uint_as_float(w[i] & 0xFFFF0000u);
            }
        }
#pragma unroll
    for (int i = 0; i < 8; i++) red[threadIdx.y][threadIdx.x * 8 + i] = acc[i];
    __syncthreads();
    int t = threadIdx.y * 32 + threadIdx.x; /* 256 threads, one column each */
    int64_t col = (int64_t)blockIdx.x * 256 + t;
    if (col < m) {
        float sum = 0.0f;
        for (int y = 0; y < 8; y++) sum += red[y][t];
        part[blockIdx.y * m + col] = sum;
    }
}

__device__ __forceinline__ void mean_dgrad_sum_body(const float *part, int64_t m, float w_amax, float *bias) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m) return;
    float s = 0.0f;
    for (int y = 0; y < CL_MEAN_SLICES; y++) s += part[y * m + i];
    float e, d;
    nvfp4_spec_global_scales(w_amax, &e, &d);
    bias[i] = s * d;
}

__device__ __forceinline__ void split_bf16(float v, __nv_bfloat16 &hi, __nv_bfloat16 &lo) {
    hi = __float2bfloat16_rn(v);
    lo = __float2bfloat16_rn(v - __bfloat162float(hi));
}

/* the 16 extra K columns lp..lp+15 of a wgrad operand's row: the six given
 * values, then zeros (kp, lp multiples of 16) */
__device__ __forceinline__ void fill_k16(__nv_bfloat16 *row_lp, __nv_bfloat16 a0, __nv_bfloat16 a1, __nv_bfloat16 a2,
                                         __nv_bfloat16 a3, __nv_bfloat16 a4, __nv_bfloat16 a5) {
    __nv_bfloat16 z = __float2bfloat16_rn(0.0f);
    __align__(16) __nv_bfloat16 c[16] = {a0, a1, a2, a3, a4, a5, z, z, z, z, z, z, z, z, z, z};
    uint4 *dst = reinterpret_cast<uint4 *>(row_lp);
    dst[0] = reinterpret_cast<const uint4 *>(c)[0];
    dst[1] = reinterpret_cast<const uint4 *>(c)[1];
}

/* The X side of the folded rank-one wgrad terms: columns lp..lp+15 of xt row j
 * hold [v1h, v1l, v1h, v2h, v2l, v2h, 0…], v1 = ΣX̄_R + l·μ̄_X, v2 = μ̄_X. */
__device__ __forceinline__ void fill_x_row(__nv_bfloat16 *xt, int64_t kp, int64_t lp, int64_t j, int64_t l,
                                           const float *sum_x, const float *mean_x) {
    float v1 = sum_x[j] + (float)l * mean_x[j], v2 = mean_x[j];
    __nv_bfloat16 h1, l1, h2, l2;
    split_bf16(v1, h1, l1);
    split_bf16(v2, h2, l2);
    fill_k16(xt + j * kp + lp, h1, l1, h1, h2, l2, h2);
}

/* The D side: [U1h, U1h, U1l, U2h, U2h, U2l, 0…], U1 = μ̄_D/α, U2 = ΣD̄_R/α */
__device__ __forceinline__ void fill_d_row(__nv_bfloat16 *dt, int64_t kp, int64_t lp, int64_t i, const float *mean_d,
                                           const float *sum_d, float a) {
    float u1 = a != 0.0f ? mean_d[i] / a : 0.0f, u2 = a != 0.0f ? sum_d[i] / a : 0.0f;
    __nv_bfloat16 h1, l1, h2, l2;
    split_bf16(u1, h1, l1);
    split_bf16(u2, h2, l2);
    fill_k16(dt + i * kp + lp, h1, h1, l1, h2, h2, l2);
}

} // namespace

#endif
