/* common.cuh — what every CUDA source of averis shares: error checks that
 * return an averis_status with a message (library code never exits), and
 * the internal launchers of quant.cu used by qlinear.cu and model.cu.
 *
 * Layering (STYLE.md #6): kernels (quant.cu) → GEMM + linear layer
 * (qlinear.cu) → model and optimizer (model.cu) → C API (include/averis/cuda.h).
 */
#ifndef AVERIS_CUDA_COMMON_CUH
#define AVERIS_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cstdint>

#include "averis/cuda.h"
#include "averis/status.h"

#define AVC_TRY(call)                                                                                       \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess)                                                                              \
            return averis_fail(AVERIS_EIO, "cuda: %s failed at %s:%d: %s", #call, __FILE__, __LINE__,       \
                               cudaGetErrorString(e_));                                                     \
    } while (0)
/* after a launch: a bad configuration shows up here */
#define AVC_LAUNCHED() AVC_TRY(cudaGetLastError())
#define AVC_OK(expr)                                                                                        \
    do {                                                                                                    \
        averis_status s_ = (expr);                                                                          \
        if (s_) return s_;                                                                                  \
    } while (0)

static inline unsigned avc_blocks(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

/* Σ and max over a warp's 32 lanes by the xor butterfly: every lane gets
 * the result, in a fixed order (deterministic) */
__device__ __forceinline__ float avc_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float avc_warp_max(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Activations are fp32 or BF16 (the model's choice, AVERIS_ACT): kernels
 * load and store either through these, computing in fp32. */
__device__ __forceinline__ float avc_ld(const float *p) { return *p; }
__device__ __forceinline__ float avc_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void avc_st(float *p, float v) { *p = v; }
__device__ __forceinline__ void avc_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

/* ---------------------------------------------------------------- quant.cu
 * One NVFP4 quantization of a device tensor src [srows × scols] (row stride
 * ld) of float or bf16, along its rows (transpose = 0: the quantized tensor
 * is [srows × scols]) or along its columns (transpose = 1: [scols × srows],
 * the wgrad copies, quantized along tokens). */
struct avq_job {
    const void *src;
    int bf16_in;            /* src holds bf16 (else fp32) */
    int64_t srows, scols, ld;
    int transpose;
    int tile;               /* 16×16 tiles (transpose = 0 only) */
    int rht, sr;
    uint64_t seed, stream;
    const float *mean;      /* [scols] subtracted first, or NULL */
    const float *amax_in;   /* the quantizer input's amax, known (skips the first pass), or NULL */
    float *amax;            /* [1] out: the per-tensor amax (may equal amax_in) */
    uint8_t *codes;         /* packed E2M1 [qrows × cp/2], or NULL */
    uint8_t *scales;        /* E4M3 block scales, or NULL */
    __nv_bfloat16 *bf16_out;/* e2m1·e4m3 per element (exact in bf16, no S_dec) [qrows × ld_out], or NULL */
    int64_t ld_out;
    int version;            /* kernel lab (rows, 1×16): 0 = the default (v2); 1 = v1 element loads;
                               2 = v2, a thread per block, 16-byte loads; 3 = v3, four threads per block */
    float *rowsum;          /* transpose only: [qrows] Σ of the dequantized values over tokens (after the
                               inverse RHT), or NULL */
};
averis_status avq_quantize(const avq_job *j, cudaStream_t s);
/* Optional device scratch for avq_quantize's row sums and avq_colstats's
 * partials (else they allocate per call, stream-ordered): set once by the
 * model; avq_ws_bytes says how much a rows×cols tensor needs. */
void avq_set_workspace(void *ws, size_t bytes);
size_t avq_ws_bytes(int64_t rows, int64_t cols);
/* Averis column statistics of x [rows × cols] of fp32 or (bf16_in) BF16,
 * exactly nvfp4_colstats of its fp32 values: mean [cols], and the
 * residual's amax [1]; col_max/col_min may be NULL. */
averis_status avq_colstats(const void *x, int bf16_in, int64_t rows, int64_t cols, int64_t ld, float *mean, float *res_amax,
                           float *col_max, float *col_min, cudaStream_t s);
/* y = bf16(x), n elements */
averis_status avq_to_bf16(const float *x, __nv_bfloat16 *y, int64_t n, cudaStream_t s);
/* out = a·b on device scalars: the GEMM alpha S_decA·S_decB from two amaxes */
averis_status avq_alpha(const float *amax_a, const float *amax_b, float *alpha, cudaStream_t s);

/* AVERIS_CUDA_PROFILE=1: device time per category of work, from event pairs
 * around each scope (only the outermost of nested scopes counts). For the
 * benchmarks; when off, a scope costs a flag test. */
struct avc_prof_scope {
    avc_prof_scope(const char *label, cudaStream_t s);
    ~avc_prof_scope();
    const char *label;
    cudaStream_t s;
    cudaEvent_t a = nullptr;
};
void avc_prof_reset(void);
/* after a sync: device ms per step over `steps` steps, by category */
void avc_prof_report(int steps);
#define AVC_PROF_CAT2(a, b) a##b
#define AVC_PROF_CAT(a, b) AVC_PROF_CAT2(a, b)
#define AVC_PROF(label, stream) avc_prof_scope AVC_PROF_CAT(avc_prof_, __LINE__)(label, stream)

/* ---------------------------------------------------------------- flash.cu
 * Causal GQA attention without materialising P (see flash.cu). Q, K, V, dO
 * BF16 head-major [B, heads, T, Dh]; ao token-major [B·T, H·Dh], fp32 or
 * (ao_bf16) BF16; dao fp32 token-major; lse, Dv [B·H·T]; dq [B,H,T,Dh],
 * dk, dv [B,KV,T,Dh] fp32. */
int avf_supported(int T, int Dh);
averis_status avf_forward(const __nv_bfloat16 *qh, const __nv_bfloat16 *kh, const __nv_bfloat16 *vh, void *ao,
                          int ao_bf16, float *lse, int B, int T, int H, int KV, int Dh, cudaStream_t s);
averis_status avf_backward(const __nv_bfloat16 *qh, const __nv_bfloat16 *kh, const __nv_bfloat16 *vh,
                           const __nv_bfloat16 *doh, const float *dao, const void *ao, int ao_bf16, const float *lse,
                           float *Dv,
                           float *dq, float *dk, float *dv, int B, int T, int H, int KV, int Dh, cudaStream_t s);

#endif
