/* swiglu.cuh — the MLP's gate on device: a = silu(g)⊙u and its backward,
 * g, u fp32 or BF16, each + its fp32 mean term (split recipes) or not.
 * Included by model.cu. */
#ifndef AVERIS_CUDA_SWIGLU_CUH
#define AVERIS_CUDA_SWIGLU_CUH

#include "common.cuh"
#include "producer_amax.cuh"

namespace {

/* g, u [n/F × F] fp32 or BF16, each + its mean term [F] (mg, mu, or NULL) */
template <typename A>
__device__ __forceinline__ void gu_load(const A *g, const A *u, const float *mg, const float *mu, int64_t i, int64_t F,
                                        float &gv, float &uv) {
    gv = cu_ld(g + i), uv = cu_ld(u + i);
    if (mg) {
        uint32_t c = (uint32_t)i % (uint32_t)F;
        gv += mg[c], uv += mu[c];
    }
}

/* amax (or NULL): max |a| as stored, reduced into (producer_amax.cuh) */
template <typename A>
__global__ void k_swiglu(const A *g, const A *u, const float *mg, const float *mu, A *a, int64_t n, int64_t F,
                         float *amax) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    float m = 0.0f;
    if (i < n) {
        float gv, uv;
        gu_load(g, u, mg, mu, i, F, gv, uv);
        float v = gv / (1.0f + expf(-gv)) * uv;
        cu_st(a + i, v);
        if (amax) m = pa_max(m, pa_stored(a, v));
    }
    if (amax) cq_reduce_amax(m, amax); /* uniform: a kernel argument */
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

/* a [n] = silu(g)⊙u over n = rows·F elements; amax (or NULL): a zeroed
 * device scalar that gets max |a| (producer_amax.cuh) */
template <typename A>
averis_status cs_swiglu(const A *g, const A *u, const float *mg, const float *mu, A *a, int64_t n, int64_t F,
                        cudaStream_t s, float *amax = nullptr) {
    CU_PROF("elementwise", s);
    k_swiglu<<<cu_blocks(n, 256), 256, 0, s>>>(g, u, mg, mu, a, n, F, amax);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* dg, du [n] from da [n] */
template <typename A>
averis_status cs_swiglu_bwd(const float *da, const A *g, const A *u, const float *mg, const float *mu, float *dg,
                            float *du, int64_t n, int64_t F, cudaStream_t s) {
    CU_PROF("elementwise", s);
    k_swiglu_bwd<<<cu_blocks(n, 256), 256, 0, s>>>(da, g, u, mg, mu, dg, du, n, F);
    CU_LAUNCHED();
    return AVERIS_OK;
}

} // namespace

#endif
