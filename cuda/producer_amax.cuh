/* producer_amax.cuh — the amax of a kernel's output, reduced in the kernel
 * that writes it (norm.cuh, swiglu.cuh): the forward quantize of that
 * tensor then skips its first pass (cq_job.amax_in, cl_input.amax_known;
 * the switch: cq_fused_quant, quant_fused.cuh). The magnitude is the
 * STORED value's (a BF16 output's after its rounding), as the quantizer's
 * amax pass reads it back; NaN ignored; reduced as quant.cu's pass 1
 * (cq_reduce_amax: atomicMax on the bits of a non-negative float into a
 * zeroed device scalar, order-free, so the same bits). */
#ifndef AVERIS_CUDA_PRODUCER_AMAX_CUH
#define AVERIS_CUDA_PRODUCER_AMAX_CUH

#include "quant_block.cuh"

namespace {

/* v as a store of type T keeps it: fp32 itself, BF16 rounded to nearest even (cu_st) */
__device__ __forceinline__ float pa_stored(const float *, float v) { return v; }
__device__ __forceinline__ float pa_stored(const __nv_bfloat16 *, float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

/* m = max(m, |v|), NaN ignored (quant.cu's block_amax) */
__device__ __forceinline__ float pa_max(float m, float v) {
    float a = fabsf(v);
    return a > m ? a : m;
}

} // namespace

#endif
