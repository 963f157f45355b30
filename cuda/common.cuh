/* common.cuh — what every CUDA source of averis shares: error checks that
 * return an averis_status with a message (library code never exits), the
 * warp reductions, the fp32/BF16 activation loads and stores, and the
 * profiler's scopes (profile.cu).
 *
 * Layering (STYLE.md #6): kernels (quant.cu, flash.cu, the model's kernel
 * families norm/rope/swiglu/cross_entropy/embedding/adamw.cuh) → GEMM +
 * linear layer (qlinear.cu) and attention (attention.cu) → model (model.cu)
 * → C API (include/averis/cuda.h).
 *
 * Prefixes: avc_ the public C API (include/averis/cuda.h) only; internal to
 * cuda/: cu_ common (this file, profile.cu), cq_ quantization (quant.cuh),
 * cl_ the linear layer and its cuBLASLt GEMM (qlinear.cuh), cf_ flash
 * attention (flash.cuh), ca_ attention (attention.cuh), cn_ norms
 * (norm.cuh), cr_ rotary layouts (rope.cuh), cs_ SwiGLU (swiglu.cuh), cx_
 * cross-entropy (cross_entropy.cuh), ce_ embedding (embedding.cuh), co_ the
 * optimizer (adamw.cuh), cm_ the model (model.cu); avd_ the device codecs
 * (nvfp4_device.cuh). Kernels are k_* in an anonymous namespace.
 */
#ifndef AVERIS_CUDA_COMMON_CUH
#define AVERIS_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cstdint>

#include "averis/cuda.h"
#include "averis/status.h"

#define CU_TRY(call)                                                                                       \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess)                                                                              \
            return averis_fail(AVERIS_EIO, "cuda: %s failed at %s:%d: %s", #call, __FILE__, __LINE__,       \
                               cudaGetErrorString(e_));                                                     \
    } while (0)
/* An allocation of `bytes`: on failure, an ENOMEM naming the size wanted and
 * the device's free and total memory (the sticky error is cleared). */
static inline averis_status cu_alloc_fail(cudaError_t e, double bytes, const char *what, const char *file, int line) {
    (void)cudaGetLastError();
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) fr = tot = 0;
    return averis_fail(AVERIS_ENOMEM, "cuda: cannot allocate %.1f MiB (%s at %s:%d: %s); the GPU has %.1f MiB free of %.1f MiB",
                       bytes / 1048576.0, what, file, line, cudaGetErrorString(e), (double)fr / 1048576.0,
                       (double)tot / 1048576.0);
}
#define CU_ALLOC(call, bytes)                                                                              \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess) return cu_alloc_fail(e_, (double)(bytes), #call, __FILE__, __LINE__);        \
    } while (0)
/* after a launch: a bad configuration shows up here */
#define CU_LAUNCHED() CU_TRY(cudaGetLastError())
#define CU_OK(expr)                                                                                        \
    do {                                                                                                    \
        averis_status s_ = (expr);                                                                          \
        if (s_) return s_;                                                                                  \
    } while (0)
/* a cuBLAS or cuBLASLt call's status as an averis_status with its message
 * (the file using it includes cublas_v2.h or cublasLt.h) */
#define CU_CUBLAS_TRY(call)                                                                                \
    do {                                                                                                    \
        cublasStatus_t e_ = (call);                                                                         \
        if (e_ != CUBLAS_STATUS_SUCCESS)                                                                    \
            return averis_fail(AVERIS_EIO, "cublas: %s failed at %s:%d: status %d", #call, __FILE__,        \
                               __LINE__, (int)e_);                                                          \
    } while (0)

static inline unsigned cu_blocks(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

/* Σ and max over a warp's 32 lanes by the xor butterfly: every lane gets
 * the result, in a fixed order (deterministic) */
__device__ __forceinline__ float cu_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float cu_warp_max(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Activations are fp32 or BF16 (the model's choice, avc_model_opts.act):
 * kernels load and store either through these, computing in fp32. */
__device__ __forceinline__ float cu_ld(const float *p) { return *p; }
__device__ __forceinline__ float cu_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void cu_st(float *p, float v) { *p = v; }
__device__ __forceinline__ void cu_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

/* ---------------------------------------------------------------- profile.cu
 * Device time per category of work, from event pairs around each scope
 * (only the outermost of nested scopes counts). Off unless the caller (the
 * benchmarks: bench_cuda with AVERIS_CUDA_PROFILE=1) turns it on; when off,
 * a scope costs a flag test. */
void cu_prof_enable(int on);
/* the profiler is on (its scopes record events) */
int cu_prof_active(void);
struct cu_prof_scope {
    cu_prof_scope(const char *label, cudaStream_t s);
    ~cu_prof_scope();
    const char *label;
    cudaStream_t s;
    cudaEvent_t a = nullptr;
};
void cu_prof_reset(void);
/* after a sync: device ms per step over `steps` steps, by category */
void cu_prof_report(int steps);
#define CU_PROF_CAT2(a, b) a##b
#define CU_PROF_CAT(a, b) CU_PROF_CAT2(a, b)
#define CU_PROF(label, stream) cu_prof_scope CU_PROF_CAT(cu_prof_, __LINE__)(label, stream)

#endif
