/* rope.cuh — the attention layouts on device: token-major [N, nh, Dh]
 * (N = B·T) ↔ head-major [B, nh, T, Dh], the way back undoing the rotary
 * embedding (the RoPE backward: the same rotation with −sin). The forward
 * rotation is fused with the head norm (norm.cuh). Included by model.cu and
 * attention.cu. */
#ifndef AVERIS_CUDA_ROPE_CUH
#define AVERIS_CUDA_ROPE_CUH

#include "common.cuh"

namespace {

/* [N, nh, Dh] fp32 or BF16 (+ mb [nh·Dh], a mean term, or NULL) → [B, nh, T, Dh] BF16 */
template <typename X>
__global__ void k_tokens_to_heads(const X *x, const float *mb, __nv_bfloat16 *y, int64_t N, int nh, int Dh, int T) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * nh * Dh) return;
    uint32_t i32 = (uint32_t)i, q = i32 / (uint32_t)Dh, d = i32 - q * (uint32_t)Dh;
    uint32_t n = q / (uint32_t)nh, h = q - n * (uint32_t)nh, b = n / (uint32_t)T, t = n - b * (uint32_t)T;
    y[(((int64_t)b * nh + h) * T + t) * Dh + d] = __float2bfloat16_rn(cu_ld(x + i) + (mb ? mb[h * Dh + d] : 0.0f));
}

/* [B, nh, T, Dh] fp32 or BF16 → [N, nh, Dh] fp32 or BF16, optionally
 * rotating each pair back (the RoPE backward: the same rotation with −sin) */
template <typename X, typename Y>
__global__ void k_heads_to_tokens(const X *x, Y *y, int64_t N, int nh, int Dh, int T, const float *cs,
                                  const float *sn) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int half = Dh / 2;
    int64_t per = cs ? half : Dh;
    if (i >= N * nh * per) return;
    uint32_t i32 = (uint32_t)i, q = i32 / (uint32_t)per, d = i32 - q * (uint32_t)per;
    uint32_t n = q / (uint32_t)nh, h = q - n * (uint32_t)nh, b = n / (uint32_t)T, t = n - b * (uint32_t)T;
    const X *src = x + (((int64_t)b * nh + h) * T + t) * Dh;
    Y *dst = y + ((int64_t)n * nh + h) * Dh;
    if (!cs) {
        cu_st(dst + d, cu_ld(src + d));
        return;
    }
    float a = cu_ld(src + d), bb = cu_ld(src + d + half), c = cs[(int64_t)t * half + d], s = -sn[(int64_t)t * half + d];
    cu_st(dst + d, a * c - bb * s);
    cu_st(dst + d + half, bb * c + a * s);
}

template <typename X>
averis_status cr_tokens_to_heads(const X *x, const float *mb, __nv_bfloat16 *y, int64_t N, int nh, int Dh, int T,
                                 cudaStream_t s) {
    k_tokens_to_heads<<<cu_blocks(N * nh * Dh, 256), 256, 0, s>>>(x, mb, y, N, nh, Dh, T);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* cs, sn [T × Dh/2] rotate back; NULL: the layout only */
template <typename X, typename Y>
averis_status cr_heads_to_tokens(const X *x, Y *y, int64_t N, int nh, int Dh, int T, const float *cs,
                                 const float *sn, cudaStream_t s) {
    int64_t per = cs ? Dh / 2 : Dh;
    k_heads_to_tokens<<<cu_blocks(N * nh * per, 256), 256, 0, s>>>(x, y, N, nh, Dh, T, cs, sn);
    CU_LAUNCHED();
    return AVERIS_OK;
}

} // namespace

#endif
