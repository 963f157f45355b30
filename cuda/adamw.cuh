/* adamw.cuh — the optimizer on device: the gradient's global norm (fp64
 * partials per TRAIN_GRADNORM_CHUNK, summed in order on the host:
 * deterministic) and AdamW, element for element train.c's adamw_step.
 * Included by model.cu. */
#ifndef AVERIS_CUDA_ADAMW_CUH
#define AVERIS_CUDA_ADAMW_CUH

#include "common.cuh"
#include "averis/model_spec.h"

#include <cmath>
#include <vector>

namespace {

/* train.c's adamw_step, element for element (same fp32 operations) */
__global__ void k_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2, float eps, float lr,
                        float decay, float c1, float c2, float gscale) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    adamw_element(&p[i], &m[i], &v[i], g[i], gscale, b1, b2, c1, c2, lr, eps, decay);
}

/* Σ g² per 64K chunk in fp64 (block tree, fixed order) */
__global__ void k_sumsq(const float *g, int64_t n, double *part) {
    __shared__ double red[256];
    int64_t c0 = (int64_t)blockIdx.x * TRAIN_GRADNORM_CHUNK, c1 = min(c0 + TRAIN_GRADNORM_CHUNK, n);
    double s = 0.0;
    for (int64_t i = c0 + threadIdx.x; i < c1; i += blockDim.x) s += (double)g[i] * g[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k >= 1; k >>= 1) {
        if ((int)threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = red[0];
}

/* ‖grads [n]‖₂ through part [⌈n / TRAIN_GRADNORM_CHUNK⌉] (device); syncs */
averis_status co_grad_norm(const float *grads, int64_t n, double *part, cudaStream_t s, double *norm) {
    CU_PROF("grad norm", s);
    int64_t nchunk = (n + TRAIN_GRADNORM_CHUNK - 1) / TRAIN_GRADNORM_CHUNK;
    k_sumsq<<<(unsigned)nchunk, 256, 0, s>>>(grads, n, part);
    CU_LAUNCHED();
    std::vector<double> host((size_t)nchunk);
    CU_TRY(cudaMemcpyAsync(host.data(), part, nchunk * sizeof(double), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaStreamSynchronize(s));
    double total = 0.0;
    for (double p : host) total += p;
    *norm = sqrt(total);
    return AVERIS_OK;
}

/* AdamW over the parameters [nparams] laid out as `tensors` (decay per
 * tensor); t is the step count after this update */
averis_status co_adamw(const std::vector<model_tensor> &tensors, float *params, const float *grads, float *mom,
                       float *var, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t t,
                       float gscale, cudaStream_t s) {
    /* the same float conversions as train.c's adamw_step */
    float c1 = (float)(1.0 - pow(beta1, (double)t)), c2 = (float)(1.0 - pow(beta2, (double)t));
    CU_PROF("adamw", s);
    /* one launch per run of tensors with the same decay */
    size_t k = 0;
    while (k < tensors.size()) {
        size_t e = k;
        while (e + 1 < tensors.size() && tensors[e + 1].decay == tensors[k].decay &&
               tensors[e + 1].offset == tensors[e].offset + tensors[e].numel)
            e++;
        int64_t off = (int64_t)tensors[k].offset, n = (int64_t)(tensors[e].offset + tensors[e].numel) - off;
        float decay = tensors[k].decay ? (float)weight_decay : 0.0f;
        k_adamw<<<cu_blocks(n, 256), 256, 0, s>>>(params + off, grads + off, mom + off, var + off, n, (float)beta1,
                                                  (float)beta2, (float)eps, (float)lr, decay, c1, c2, gscale);
        CU_LAUNCHED();
        k = e + 1;
    }
    return AVERIS_OK;
}

} // namespace

#endif
