/* norm.cuh — RMSNorm on device: the model-width norms (forward, backward),
 * the per-head norm of q and k fused with their RoPE (forward), and the
 * norm weight's gradient from fixed 256-row chunks (deterministic: no
 * atomics, partials summed in order). Included by model.cu. */
#ifndef AVERIS_CUDA_NORM_CUH
#define AVERIS_CUDA_NORM_CUH

#include "common.cuh"
#include "producer_amax.cuh"

namespace {

/* y = w·(x·rstd), rstd = (mean x² + ε)^-½: one warp per row; y fp32 or BF16;
 * amax (or NULL): max |y| as stored, reduced into (producer_amax.cuh) */
template <typename Y>
__global__ void k_rmsnorm(const float *x, const float *w, Y *y, float *rstd, int64_t rows, int64_t d, float eps,
                          float *amax) {
    int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    float m = 0.0f;
    if (r < rows) { /* (no early return: the whole block reduces the amax) */
        const float *xr = x + r * d;
        float ss = 0.0f;
        for (int64_t i = lane; i < d; i += 32) ss += xr[i] * xr[i];
        ss = cu_warp_sum(ss);
        float rs = 1.0f / sqrtf(ss / (float)d + eps);
        if (lane == 0) rstd[r] = rs;
        for (int64_t i = lane; i < d; i += 32) {
            float v = w[i] * (xr[i] * rs);
            cu_st(y + r * d + i, v);
            if (amax) m = pa_max(m, pa_stored(y, v));
        }
    }
    if (amax) cq_reduce_amax(m, amax); /* uniform: a kernel argument */
}

/* dx (= or +=) rstd·(dy·w − x̂·mean(dy·w·x̂)), x̂ = x·rstd: one warp per row.
 * x + mb: mb (or NULL) is the split recipes' fp32 mean term beside a BF16 x,
 * [nh·d] for rows (token, head) (see cl_forward) */
template <typename X>
__global__ void __launch_bounds__(256, 4) k_rmsnorm_bwd(float *dx, const float *dy, const X *x, const float *mb, int nh, const float *rstd,
                              const float *w, int64_t rows, int64_t d, int acc) {
    int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const X *xr = x + r * d;
    const float *dyr = dy + r * d, *mr = mb ? mb + ((uint32_t)r % (uint32_t)nh) * d : nullptr;
    auto xv = [&](int64_t i) { return cu_ld(xr + i) + (mr ? mr[i] : 0.0f); };
    float rs = rstd[r], dot = 0.0f;
    for (int64_t i = lane; i < d; i += 32) dot += dyr[i] * w[i] * (xv(i) * rs);
    dot = cu_warp_sum(dot);
    dot /= (float)d;
    for (int64_t i = lane; i < d; i += 32) {
        float v = rs * (dyr[i] * w[i] - (xv(i) * rs) * dot);
        dx[r * d + i] = acc ? dx[r * d + i] + v : v;
    }
}

/* part[c][i] = Σ_{rows of chunk c} dy·x·rstd (the norm weight's gradient) */
enum { CN_ROW_CHUNK = 256 };
/* (launch bounds: without them ptxas fits 32 registers and loads one row at
 * a time; the grid is small, so loads in flight matter more than occupancy) */
template <typename X>
__global__ void __launch_bounds__(128, 4) k_normw_part(const float *dy, const X *x, const float *mb, int nh,
                                                       const float *rstd, int64_t rows, int64_t d, float *part) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y;
    if (i >= d) return;
    int64_t r0 = c * CN_ROW_CHUNK, r1 = min(r0 + (int64_t)CN_ROW_CHUNK, rows);
    float s = 0.0f;
#pragma unroll 16
    for (int64_t r = r0; r < r1; r++) {
        float xv = cu_ld(x + r * d + i) + (mb ? mb[((uint32_t)r % (uint32_t)nh) * d + i] : 0.0f);
        s += dy[r * d + i] * (xv * rstd[r]);
    }
    part[c * d + i] = s;
}
__global__ void k_normw_sum(const float *part, int64_t nchunk, int64_t d, float *dw) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= d) return;
    float s = 0.0f;
    for (int64_t c = 0; c < nchunk; c++) s += part[c * d + i];
    dw[i] += s;
}

/* Per (token n, head h): head RMSNorm with weight w [Dh], then the rotary
 * pairs (i, i+Dh/2) by position t = n mod T; writes fp32-exact BF16 to the
 * head-major out [B, nh, T, Dh] and rstd [N·nh]. One warp per (n, h). */
template <typename A>
__global__ void k_headnorm_rope(const A *raw, const float *mb, const float *w, const float *cs, const float *sn, int64_t N, int nh,
                                int Dh, int T, float eps, float *rstd, __nv_bfloat16 *out) {
    extern __shared__ float sm[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
    float *v = sm + warp * Dh;
    if (row >= N * nh) return;
    uint32_t n = (uint32_t)row / (uint32_t)nh;
    int h = (int)((uint32_t)row - n * (uint32_t)nh), b = (int)(n / (uint32_t)T), t = (int)(n - (uint32_t)b * T),
        half = Dh / 2;
    const A *x = raw + row * Dh;
    const float *m = mb ? mb + h * Dh : nullptr; /* the split recipes' fp32 mean term, or NULL */
    for (int i = lane; i < Dh; i += 32) v[i] = cu_ld(x + i) + (m ? m[i] : 0.0f);
    __syncwarp();
    float ss = 0.0f;
    for (int i = lane; i < Dh; i += 32) ss += v[i] * v[i];
    ss = cu_warp_sum(ss);
    float rs = 1.0f / sqrtf(ss / (float)Dh + eps);
    if (lane == 0) rstd[row] = rs;
    for (int i = lane; i < Dh; i += 32) v[i] = w[i] * (v[i] * rs);
    __syncwarp();
    __nv_bfloat16 *o = out + (((int64_t)b * nh + h) * T + t) * Dh;
    const float *c = cs + (int64_t)t * half, *s = sn + (int64_t)t * half;
    for (int i = lane; i < half; i += 32) {
        float a = v[i], bb = v[i + half];
        o[i] = __float2bfloat16_rn(a * c[i] - bb * s[i]);
        o[i + half] = __float2bfloat16_rn(bb * c[i] + a * s[i]);
    }
}

/* y [rows × d] = RMSNorm(x [rows × d])·w [d], rstd [rows]; amax (or NULL):
 * a zeroed device scalar that gets max |y| (producer_amax.cuh) */
template <typename Y>
averis_status cn_rmsnorm(const float *x, const float *w, Y *y, float *rstd, int64_t rows, int64_t d, float eps,
                         cudaStream_t s, float *amax = nullptr) {
    k_rmsnorm<<<cu_blocks(rows * 32, 256), 256, 0, s>>>(x, w, y, rstd, rows, d, eps, amax);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* q or k [N, nh, Dh] (+ mb [nh·Dh]) → head-normed and rotated, BF16
 * [B, nh, T, Dh]; rstd [N·nh]; cs, sn [T × Dh/2] the rotary tables */
template <typename A>
averis_status cn_headnorm_rope(const A *raw, const float *mb, const float *w, const float *cs, const float *sn,
                               int64_t N, int nh, int Dh, int T, float eps, float *rstd, __nv_bfloat16 *out,
                               cudaStream_t s) {
    size_t smem = (size_t)8 * Dh * sizeof(float);
    k_headnorm_rope<<<cu_blocks(N * nh * 32, 256), 256, smem, s>>>(raw, mb, w, cs, sn, N, nh, Dh, T, eps, rstd, out);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* Elements of the norm-weight partials cn_rmsnorm_bwd needs for rows × d */
static inline int64_t cn_part_len(int64_t rows, int64_t d) { return (rows + CN_ROW_CHUNK - 1) / CN_ROW_CHUNK * d; }

/* The norm backward of x [rows × d] (+ mb, a mean term for rows (token,
 * head) of nh heads, or NULL): dx (= or +=, acc) and dw [d] +=, through
 * part [cn_part_len(rows, d)] */
template <typename X>
averis_status cn_rmsnorm_bwd(float *dx, float *dw, const float *dy, const X *x, const float *mb, int nh,
                             const float *rstd, const float *w, int64_t rows, int64_t d, int acc, float *part,
                             cudaStream_t s) {
    CU_PROF("norms bwd", s);
    k_rmsnorm_bwd<<<cu_blocks(rows * 32, 256), 256, 0, s>>>(dx, dy, x, mb, nh, rstd, w, rows, d, acc);
    CU_LAUNCHED();
    int64_t nchunk = (rows + CN_ROW_CHUNK - 1) / CN_ROW_CHUNK;
    k_normw_part<<<dim3(cu_blocks(d, 128), (unsigned)nchunk), 128, 0, s>>>(dy, x, mb, nh, rstd, rows, d, part);
    CU_LAUNCHED();
    k_normw_sum<<<cu_blocks(d, 128), 128, 0, s>>>(part, nchunk, d, dw);
    CU_LAUNCHED();
    return AVERIS_OK;
}

} // namespace

#endif
