/* quant_block.cuh — the block quantizer's parameters and the device helpers
 * that quant.cu's kernels share with the kernel lab (dev/cuda/quant_lab.cu,
 * where the earlier and the alternative kernel versions live), and the two
 * halves of cq_quantize: the plan (shape checks, parameters) and the run
 * (amax pass, quantize pass, row sums) with quant.cu's kernels. */
#ifndef AVERIS_CUDA_QUANT_BLOCK_CUH
#define AVERIS_CUDA_QUANT_BLOCK_CUH

#include "quant.cuh"

/* cq_job as the kernels take it (by value): the shape of the quantized tensor, qrows × cp */
struct cq_params {
    const void *src;
    int64_t srows, scols, ld;
    int64_t cp, nb;        /* quantized row length (padded) and blocks per row */
    int64_t nthreads;      /* threads with work */
    int vec, tile, rht, sr, transpose;
    uint64_t seed, stream;
    const float *mean;
    float *amax;           /* pass 1: reduced into; pass 2: read */
    uint8_t *codes, *scales;
    __nv_bfloat16 *bf16_out;
    int64_t ld_out;
    double *rowsum_part;   /* [ceil(nb/CQ_TG) × qrows] per-thread sums (transpose) */
};

/* transposed copies: a thread quantizes CQ_TG consecutive 16-token blocks of one
 * feature (32 contiguous code bytes, one row-sum partial) */
enum { CQ_TG = 4 };

/* The parameters of job j (shape checks with a message); vec (16-byte row
 * loads) where the rows are aligned. */
averis_status cq_plan(const cq_job *j, cq_params *p);
/* Quantizes j with quant.cu's kernels (pass 1 unless the amax is known,
 * pass 2, row sums) on the parameters of cq_plan. */
averis_status cq_run(const cq_job *j, const cq_params *p, cudaStream_t s);
/* The workspace (cq_set_workspace) when bytes fit, else a stream-ordered
 * allocation; cq_ws_give returns it (quant_fused.cu's row-sum partials). */
averis_status cq_ws_take(void **p, size_t bytes, cudaStream_t s);
averis_status cq_ws_give(void *p, cudaStream_t s);
/* out[j] = Σ_b part[b·qrows + j] over b < nparts, as cq_run's row sums
 * finish (the same kernel, so the same fp64 order and bits) */
averis_status cq_rowsum_finish(const double *part, int64_t nparts, int64_t qrows, float *out, cudaStream_t s);

namespace {

template <typename T> __device__ __forceinline__ float cq_ld_elem(const T *p);
template <> __device__ __forceinline__ float cq_ld_elem<float>(const float *p) { return __ldg(p); }
template <> __device__ __forceinline__ float cq_ld_elem<__nv_bfloat16>(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

/* The block's max of m (≥ 0, NaN-free) into *amax: warp tree, then warp 0
 * over the warps' maxima; atomicMax on the bits of a non-negative float
 * (order-free, so deterministic). Every thread of the block must call it. */
__device__ __forceinline__ void cq_reduce_amax(float m, float *amax) {
    m = cu_warp_max(m);
    __shared__ float warp_max[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) warp_max[w] = m;
    __syncthreads();
    if (w == 0) {
        m = lane < (int)(blockDim.x >> 5) ? warp_max[lane] : 0.0f;
        m = cu_warp_max(m);
        if (lane == 0 && m > 0.0f) atomicMax(reinterpret_cast<unsigned int *>(amax), __float_as_uint(m));
    }
}

} // namespace

#endif
