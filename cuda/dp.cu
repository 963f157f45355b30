/* dp.cu — the GPU half of data parallel (src/dp.c): AdamW over a range of
 * the flat parameter vector, for a ZeRO-1 shard, whose moments are held
 * apart (mom/var [hi − lo]: the rank's window, averis/moments.h). The runs
 * of tensors that meet [lo, hi) are updated with adamw.cuh's kernel, each
 * with its decay: element for element the full update of avc_model_adamw. */
#include "adamw.cuh"

#include <algorithm>

extern "C" averis_status avc_adamw_range(const model_tensor *tensors, int ntensors, float *params, const float *grads,
                                         float *mom, float *var, size_t lo, size_t hi, double lr, double beta1,
                                         double beta2, double eps, double weight_decay, int64_t t, float gscale,
                                         void *stream) {
    cudaStream_t s = (cudaStream_t)stream;
    /* the same float conversions as co_adamw */
    float c1 = (float)(1.0 - pow(beta1, (double)t)), c2 = (float)(1.0 - pow(beta2, (double)t));
    CU_PROF("adamw (shard)", s);
    /* runs of adjacent tensors with the same decay (as co_adamw), cut to [lo, hi) */
    int k = 0;
    while (k < ntensors) {
        int e = k;
        while (e + 1 < ntensors && tensors[e + 1].decay == tensors[k].decay &&
               tensors[e + 1].offset == tensors[e].offset + tensors[e].numel)
            e++;
        size_t a = std::max(tensors[k].offset, lo), b = std::min(tensors[e].offset + tensors[e].numel, hi);
        float decay = tensors[k].decay ? (float)weight_decay : 0.0f;
        k = e + 1;
        if (a >= b) continue;
        int64_t n = (int64_t)(b - a);
        k_adamw<<<cu_blocks(n, 256), 256, 0, s>>>(params + a, grads + a, mom + (a - lo), var + (a - lo), n, (float)beta1,
                                                  (float)beta2, (float)eps, (float)lr, decay, c1, c2, gscale);
        CU_LAUNCHED();
    }
    return AVERIS_OK;
}
