/* quant.cu — NVFP4 quantization kernels, checked bit for bit against the
 * CPU spec by tests/cuda/test_cuda.cu; the kernel lab (STYLE.md #9) with
 * the other numbered versions, their checks and benchmarks is
 * dev/cuda/quant_lab.cu.
 *
 * A thread owns one 16-element block of the quantized tensor: it loads the
 * 16 inputs (a row segment, or for the transposed wgrad copies 16 tokens of
 * one feature, coalesced across the warp), subtracts the Averis mean,
 * applies the RHT in registers, and either
 *   pass 1: reduces the block amax into the per-tensor amax (atomicMax on
 *           the bits of a non-negative float), or
 *   pass 2: computes the E4M3 scale, encodes 16 E2M1 codes (RN or Philox
 *           SR keyed as on the CPU) and writes codes, scale, and optionally
 *           the BF16 operand e2m1·e4m3 for the emulated GEMM.
 * Pass 1 is skipped when the amax is known: for the Averis split it follows
 * exactly from the column statistics (max_j max(max_j − μ_j, μ_j − min_j),
 * fp32 subtraction being monotonic), so the split costs no extra pass.
 * 16×16 tiles: the 16 threads of a tile are 16 consecutive lanes and share
 * the tile amax by shuffles.
 */
#include "quant_block.cuh"
#include "nvfp4_device.cuh"

#include <algorithm>
#include <cfloat>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

/* 16 consecutive elements of a row; `vec`: aligned, in bounds → 16-byte loads */
template <typename T>
__device__ __forceinline__ void load_row16(const T *row, int64_t c0, int64_t scols, int vec, float v[16]) {
    if (vec) {
        if (sizeof(T) == 4) {
            const float4 *p = reinterpret_cast<const float4 *>(reinterpret_cast<const float *>(row) + c0);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float4 f = __ldg(p + k);
                v[4 * k] = f.x; v[4 * k + 1] = f.y; v[4 * k + 2] = f.z; v[4 * k + 3] = f.w;
            }
        } else {
            const uint4 *p = reinterpret_cast<const uint4 *>(reinterpret_cast<const __nv_bfloat16 *>(row) + c0);
#pragma unroll
            for (int k = 0; k < 2; k++) {
                uint4 u = __ldg(p + k);
                uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    v[8 * k + 2 * i] = __uint_as_float(w[i] << 16);
                    v[8 * k + 2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
                }
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 16; i++) v[i] = c0 + i < scols ? cq_ld_elem(row + c0 + i) : 0.0f;
}

/* The quantizer input of thread `gid`'s block, and where it goes:
 * qrow (row of the quantized tensor), b (block in that row), valid. */
template <typename T>
__device__ __forceinline__ void block_input(const cq_params &p, int64_t gid, float v[16], int64_t &qrow, int64_t &b,
                                            bool &valid) {
    const T *src = static_cast<const T *>(p.src);
    valid = gid < p.nthreads;
    if (p.transpose) {
        /* quantized row j = source column j; block b = tokens 16b..16b+15;
         * here gid already names (j, b) (the caller loops over its CQ_TG blocks).
         * 32-bit division: 64-bit division takes several times the instructions */
        uint32_t g32 = (uint32_t)gid, sc32 = (uint32_t)p.scols;
        int64_t j = g32 % sc32;
        b = g32 / sc32;
        qrow = j;
        valid = b < p.nb;
        float mu = (p.mean && valid) ? p.mean[j] : 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int64_t t = 16 * b + i;
            /* padded tokens are 0 after the subtraction, as on the CPU */
            v[i] = (valid && t < p.srows) ? cq_ld_elem(src + t * p.ld + j) - (p.mean ? mu : 0.0f) : 0.0f;
        }
    } else {
        uint32_t g32 = (uint32_t)gid, nb32 = (uint32_t)p.nb;
        if (p.tile) {
            uint32_t tile = g32 >> 4;
            int lane16 = (int)(g32 & 15);
            b = tile % nb32;
            qrow = (int64_t)(tile / nb32) * 16 + lane16;
        } else {
            qrow = g32 / nb32;
            b = g32 % nb32;
        }
        valid = valid && qrow < p.srows;
        if (valid) {
            load_row16(src + qrow * p.ld, 16 * b, p.scols, p.vec, v);
            if (p.mean) {
#pragma unroll
                for (int i = 0; i < 16; i++)
                    if (16 * b + i < p.scols) v[i] = v[i] - p.mean[16 * b + i];
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++) v[i] = 0.0f;
        }
    }
    if (p.rht) nvfp4_spec_rht16(v);
}

__device__ __forceinline__ float block_amax(const cq_params &p, const float v[16]) {
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float a = fabsf(v[i]);
        m = a > m ? a : m; /* NaN ignored */
    }
    if (p.tile) {
#pragma unroll
        for (int o = 8; o >= 1; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    }
    return m;
}

/* pass 1: the per-tensor amax (the body shared by k_amax_seg) */
template <typename T> __device__ __forceinline__ void amax_body(const cq_params &p) {
    int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    float v[16];
    int64_t qrow, b;
    bool valid;
    float m = 0.0f;
    if (p.transpose) {
        int64_t j = (uint32_t)gid % (uint32_t)p.scols, b0 = (int64_t)((uint32_t)gid / (uint32_t)p.scols) * CQ_TG;
        for (int k = 0; k < CQ_TG; k++) {
            block_input<T>(p, (b0 + k) * p.scols + j, v, qrow, b, valid);
            if (gid < p.nthreads) m = fmaxf(m, block_amax(p, v));
        }
    } else {
        block_input<T>(p, gid, v, qrow, b, valid);
        m = block_amax(p, v);
    }
    cq_reduce_amax(m, p.amax);
}
template <typename T> __global__ void k_amax(cq_params p) { amax_body<T>(p); }

/* pass 2: scales, codes, BF16 operand, row sums */
template <typename T>
__device__ __forceinline__ double quant_block(const cq_params &p, int64_t gid, float s_enc, float s_dec);

/* (launch bounds: 64 registers, 4 blocks an SM; at ptxas's own register
 * count the kernel, which is instruction- and latency-bound, runs slower:
 * docs/cuda.md, docs/benchmarks.md) */
template <typename T> __device__ __forceinline__ void quant_body(const cq_params &p) {
    int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    float s_enc, s_dec;
    nvfp4_spec_global_scales(*p.amax, &s_enc, &s_dec);
    if (!p.transpose) {
        quant_block<T>(p, gid, s_enc, s_dec);
        return;
    }
    if (gid >= p.nthreads) return;
    int64_t j = (uint32_t)gid % (uint32_t)p.scols, bt = (uint32_t)gid / (uint32_t)p.scols;
    double acc = 0.0;
    for (int k = 0; k < CQ_TG; k++) acc += quant_block<T>(p, (bt * CQ_TG + k) * p.scols + j, s_enc, s_dec);
    if (p.rowsum_part) p.rowsum_part[bt * p.scols + j] = acc;
}
template <typename T> __global__ void __launch_bounds__(256, 4) k_quant(cq_params p) { quant_body<T>(p); }

/* one 16-element block; returns Σ of its dequantized values (after the
 * inverse RHT) when row sums are asked for */
template <typename T>
__device__ __forceinline__ double quant_block(const cq_params &p, int64_t gid, float s_enc, float s_dec) {
    float v[16];
    int64_t qrow, b;
    bool valid;
    block_input<T>(p, gid, v, qrow, b, valid);
    float bamax = block_amax(p, v);
    if (!valid) return 0.0; /* after the tile shuffles */
    uint32_t sc = avd_block_scale(bamax, s_enc);
    float enc = avd_block_enc(sc, s_dec);
    uint32_t u[16];
    if (p.sr) nvfp4_spec_sr_u24_block(p.seed, p.stream, (uint64_t)(qrow * p.cp + 16 * b), u);
    uint32_t q[16];
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float y = v[i] * enc;
        q[i] = p.sr ? avd_e2m1_sr(y, u[i]) : avd_e2m1_rn(y);
    }
    if (p.codes) {
        uint32_t lo = 0, hi = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            lo |= q[i] << (4 * i);
            hi |= q[8 + i] << (4 * i);
        }
        *reinterpret_cast<uint2 *>(p.codes + qrow * (p.cp / 2) + 8 * b) = make_uint2(lo, hi);
    }
    if (p.scales) {
        if (!p.tile) p.scales[qrow * p.nb + b] = (uint8_t)sc;
        else if ((gid & 15) == 0) p.scales[(qrow / 16) * p.nb + b] = (uint8_t)sc;
    }
    float sb = avd_e4m3_decode(sc);
    if (p.bf16_out) {
        uint32_t w[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            /* e2m1·e4m3 has ≤ 6 significant bits: exact in BF16, the truncation is exact */
            uint32_t a = __float_as_uint(avd_e2m1_decode(q[2 * i]) * sb) >> 16;
            uint32_t c = __float_as_uint(avd_e2m1_decode(q[2 * i + 1]) * sb) >> 16;
            w[i] = a | (c << 16);
        }
        uint4 *o = reinterpret_cast<uint4 *>(p.bf16_out + qrow * p.ld_out + 16 * b);
        o[0] = make_uint4(w[0], w[1], w[2], w[3]);
        o[1] = make_uint4(w[4], w[5], w[6], w[7]);
    }
    double acc = 0.0;
    if (p.rowsum_part) {
        /* Σ over the block's tokens of the dequantized values (after the inverse
         * RHT): Σ_k w_k·e2m1_k·sb·S_dec with w_k = 1, or with the RHT the column
         * sums of the inverse transform, w_k = ¼·Σ_i s_i·H16[i][k] (multiples of
         * ¼ in [−4, 4]). Σ_k w_k·e2m1_k is exact in fp32 (multiples of ⅛ below
         * 400), so is its product with sb (≤ 16 significant bits): only the
         * final ·S_dec rounds, once per block; the blocks add up in fp64
         * (a mean-subtracted row sums to almost nothing). */
        float t = 0.0f;
#pragma unroll
        for (int k = 0; k < 16; k++) t += (p.rht ? avd_rht_colsum(k) : 1.0f) * avd_e2m1_decode(q[k]);
        acc = (double)((t * sb) * s_dec);
    }
    return acc;
}

/* out[j] = Σ_b part[b][j]: a (32, 8) block per 32 rows, 8 strided partial
 * sums then a fixed tree: deterministic, and 8 loads in flight per row */
__device__ __forceinline__ void rowsum_body(const double *part, int64_t nb, int64_t qrows, float *out) {
    __shared__ double red[8][33];
    int64_t j = (int64_t)blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (j < qrows)
        for (int64_t b = threadIdx.y; b < nb; b += 8) acc += part[b * qrows + j];
    red[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < qrows) {
        double t = ((red[0][threadIdx.x] + red[1][threadIdx.x]) + (red[2][threadIdx.x] + red[3][threadIdx.x])) +
                   ((red[4][threadIdx.x] + red[5][threadIdx.x]) + (red[6][threadIdx.x] + red[7][threadIdx.x]));
        out[j] = (float)t;
    }
}
__global__ void k_rowsum(const double *part, int64_t nb, int64_t qrows, float *out) { rowsum_body(part, nb, qrows, out); }

/* ------------------------------------------------------ column statistics */
/* part[c][j] = Σ of rows of chunk c (NVFP4_SPLIT_CHUNK, in order, fp64),
 * and the chunk's max and min (NaN ignored), column j of chunk c a thread
 * (the body shared by the per-expert kernel below) */
template <typename T>
__device__ __forceinline__ void colstats_chunk(const T *x, int64_t rows, int64_t cols, int64_t ld, int64_t j, int64_t c,
                                               double *part, float *pmx, float *pmn) {
    int64_t r0 = c * NVFP4_SPLIT_CHUNK, r1 = r0 + NVFP4_SPLIT_CHUNK < rows ? r0 + NVFP4_SPLIT_CHUNK : rows;
    double s = 0.0;
    float mx = -INFINITY, mn = INFINITY;
    /* 64 loads in flight, then the in-order fp64 sum the spec fixes: few
     * threads (columns × chunks) must keep enough bytes in flight */
    enum { U = 64 };
    int64_t r = r0;
    for (; r + U <= r1; r += U) {
        float v[U];
#pragma unroll
        for (int k = 0; k < U; k++) v[k] = cq_ld_elem(x + (r + k) * ld + j);
#pragma unroll
        for (int k = 0; k < U; k++) {
            s += (double)v[k];
            mx = v[k] > mx ? v[k] : mx;
            mn = v[k] < mn ? v[k] : mn;
        }
    }
    for (; r < r1; r++) {
        float v = cq_ld_elem(x + r * ld + j);
        s += (double)v;
        mx = v > mx ? v : mx;
        mn = v < mn ? v : mn;
    }
    part[c * cols + j] = s;
    pmx[c * cols + j] = mx;
    pmn[c * cols + j] = mn;
}

template <typename T>
__global__ void k_colstats_part(const T *x, int64_t rows, int64_t cols, int64_t ld, double *part, float *pmx,
                                float *pmn, float *res_amax) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t c = blockIdx.y;
    if (res_amax && j == 0 && c == 0) *res_amax = 0.0f; /* for k_colstats_final's atomicMax, which runs after */
    if (j >= cols) return;
    colstats_chunk(x, rows, cols, ld, j, c, part, pmx, pmn);
}

/* column j's mean, max and min from its chunks' partials (in chunk order);
 * the residual's amax max(|max − μ|, |μ − min|) into *res_amax */
__device__ __forceinline__ float colstats_final_col(const double *part, const float *pmx, const float *pmn, int64_t nchunk,
                                                    int64_t rows, int64_t cols, int64_t j, float *res_amax, float &mx,
                                                    float &mn) {
    double total = 0.0;
    mx = -INFINITY, mn = INFINITY;
    for (int64_t c = 0; c < nchunk; c++) {
        total += part[c * cols + j];
        float a = pmx[c * cols + j], b = pmn[c * cols + j];
        mx = a > mx ? a : mx;
        mn = b < mn ? b : mn;
    }
    float mu = (float)(total / (double)rows);
    float a = fabsf(mx - mu), b = fabsf(mu - mn), m = 0.0f;
    if (a > m) m = a;
    if (b > m) m = b;
    if (m > 0.0f) atomicMax(reinterpret_cast<unsigned int *>(res_amax), __float_as_uint(m));
    return mu;
}

__global__ void k_colstats_final(const double *part, const float *pmx, const float *pmn, int64_t nchunk, int64_t rows,
                                 int64_t cols, float *mean, float *col_max, float *col_min, float *res_amax) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float mx, mn;
    mean[j] = colstats_final_col(part, pmx, pmn, nchunk, rows, cols, j, res_amax, mx, mn);
    if (col_max) col_max[j] = mx;
    if (col_min) col_min[j] = mn;
}

/* 8 elements a thread: two 16-byte loads, one 16-byte store (n % 8 == 0, aligned) */
__global__ void k_to_bf16_v8(const float *x, __nv_bfloat16 *y, int64_t n8) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float4 a = __ldg(reinterpret_cast<const float4 *>(x) + 2 * i), b = __ldg(reinterpret_cast<const float4 *>(x) + 2 * i + 1);
    __nv_bfloat162 p0 = __floats2bfloat162_rn(a.x, a.y), p1 = __floats2bfloat162_rn(a.z, a.w),
                    p2 = __floats2bfloat162_rn(b.x, b.y), p3 = __floats2bfloat162_rn(b.z, b.w);
    uint4 o;
    o.x = *reinterpret_cast<uint32_t *>(&p0), o.y = *reinterpret_cast<uint32_t *>(&p1);
    o.z = *reinterpret_cast<uint32_t *>(&p2), o.w = *reinterpret_cast<uint32_t *>(&p3);
    reinterpret_cast<uint4 *>(y)[i] = o;
}

__global__ void k_to_bf16(const float *x, __nv_bfloat16 *y, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void k_alpha(const float *amax_a, const float *amax_b, float *alpha) {
    float ea, da, eb, db;
    nvfp4_spec_global_scales(*amax_a, &ea, &da);
    nvfp4_spec_global_scales(*amax_b, &eb, &db);
    *alpha = da * db;
}

__global__ void k_dequant(const uint8_t *codes, const uint8_t *scales, const float *amax, int64_t rows, int64_t cols,
                          int64_t cp, int tile, float *out) {
    int64_t nb = cp / 16, gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= rows * nb) return;
    int64_t r = gid / nb, b = gid % nb;
    float s_enc, s_dec;
    nvfp4_spec_global_scales(*amax, &s_enc, &s_dec);
    float sb = avd_e4m3_decode(scales[(tile ? (r / 16) : r) * nb + b]);
    const uint8_t *c = codes + r * (cp / 2) + 8 * b;
    for (int i = 0; i < 16; i++) {
        int64_t col = 16 * b + i;
        uint32_t code = (c[i / 2] >> (4 * (i & 1))) & 15u;
        if (col < cols) out[r * cols + col] = (avd_e2m1_decode(code) * sb) * s_dec;
    }
}

} // namespace

/* ================================================================ launchers */
static void *g_ws = nullptr;
static size_t g_ws_bytes = 0;
void cq_set_workspace(void *ws, size_t bytes) { g_ws = ws, g_ws_bytes = bytes; }
size_t cq_ws_bytes(int64_t rows, int64_t cols) {
    size_t colstats = (size_t)((rows + NVFP4_SPLIT_CHUNK - 1) / NVFP4_SPLIT_CHUNK * cols) * (sizeof(double) + 2 * sizeof(float));
    size_t rowsum = (size_t)(((rows + 15) / 16 + CQ_TG - 1) / CQ_TG * cols) * sizeof(double);
    return colstats > rowsum ? colstats : rowsum;
}
/* scratch from the workspace when it fits, else a stream-ordered allocation */
static averis_status ws_take(void **p, size_t bytes, cudaStream_t s) {
    if (g_ws && bytes <= g_ws_bytes) {
        *p = g_ws;
        return AVERIS_OK;
    }
    CU_ALLOC(cudaMallocAsync(p, bytes, s), bytes);
    return AVERIS_OK;
}
static averis_status ws_give(void *p, cudaStream_t s) {
    if (p != g_ws) CU_TRY(cudaFreeAsync(p, s));
    return AVERIS_OK;
}

averis_status cq_plan(const cq_job *j, cq_params *pp) {
    if (j->srows <= 0 || j->scols <= 0 || j->ld < j->scols)
        return averis_fail(AVERIS_EINVAL, "cuda quantize: bad shape %lld x %lld (ld %lld)", (long long)j->srows,
                           (long long)j->scols, (long long)j->ld);
    if (j->transpose && j->tile) return averis_fail(AVERIS_EINVAL, "cuda quantize: 16x16 tiles along columns");
    cq_params p = {};
    p.src = j->src;
    p.srows = j->srows, p.scols = j->scols, p.ld = j->ld;
    int64_t qrows = j->transpose ? j->scols : j->srows, qcols = j->transpose ? j->srows : j->scols;
    p.cp = (qcols + 15) / 16 * 16;
    p.nb = p.cp / 16;
    p.tile = j->tile, p.rht = j->rht, p.sr = j->sr, p.transpose = j->transpose;
    p.seed = j->seed, p.stream = j->stream;
    p.mean = j->mean;
    p.amax = j->amax;
    p.codes = j->codes, p.scales = j->scales;
    p.bf16_out = j->bf16_out, p.ld_out = j->ld_out;
    if (p.bf16_out && (p.ld_out < p.cp || p.ld_out % 8 || reinterpret_cast<uintptr_t>(p.bf16_out) % 16))
        return averis_fail(AVERIS_EINVAL, "cuda quantize: BF16 output needs ld_out ≥ %lld, a multiple of 8, 16-byte aligned",
                           (long long)p.cp);
    p.nthreads = p.tile ? (qrows + 15) / 16 * 16 * p.nb
               : p.transpose ? qrows * ((p.nb + CQ_TG - 1) / CQ_TG)
                             : qrows * p.nb;
    size_t esz = j->bf16_in ? 2 : 4;
    p.vec = !j->transpose && j->scols % 16 == 0 && (j->ld * esz) % 16 == 0 &&
            reinterpret_cast<uintptr_t>(j->src) % 16 == 0;
    /* the thread indices use 32-bit division (the lab's 4-threads-a-block version too) */
    if (4 * p.nthreads + 1024 > (int64_t)UINT32_MAX)
        return averis_fail(AVERIS_EINVAL, "cuda quantize: %lld blocks of 16 is too many for one call", (long long)p.nthreads);
    *pp = p;
    return AVERIS_OK;
}

averis_status cq_run(const cq_job *j, const cq_params *plan, cudaStream_t s) {
    cq_params p = *plan;
    int64_t qrows = j->transpose ? j->scols : j->srows;
    const int threads = 256;
    unsigned grid = cu_blocks(p.nthreads, threads);
    if (j->amax_in) {
        if (j->amax_in != j->amax) CU_TRY(cudaMemcpyAsync(j->amax, j->amax_in, sizeof(float), cudaMemcpyDeviceToDevice, s));
    } else {
        CU_TRY(cudaMemsetAsync(j->amax, 0, sizeof(float), s));
        if (j->bf16_in) k_amax<__nv_bfloat16><<<grid, threads, 0, s>>>(p);
        else k_amax<float><<<grid, threads, 0, s>>>(p);
        CU_LAUNCHED();
    }
    double *part = nullptr;
    if (j->rowsum) {
        if (!j->transpose) return averis_fail(AVERIS_EINVAL, "cuda quantize: row sums are for the transposed copies");
        CU_OK(ws_take(reinterpret_cast<void **>(&part), (size_t)((p.nb + CQ_TG - 1) / CQ_TG * qrows) * sizeof(double), s));
        p.rowsum_part = part;
    }
    if (j->bf16_in) k_quant<__nv_bfloat16><<<grid, threads, 0, s>>>(p);
    else k_quant<float><<<grid, threads, 0, s>>>(p);
    CU_LAUNCHED();
    if (part) {
        k_rowsum<<<cu_blocks(qrows, 32), dim3(32, 8), 0, s>>>(part, (p.nb + CQ_TG - 1) / CQ_TG, qrows, j->rowsum);
        CU_LAUNCHED();
        CU_OK(ws_give(part, s));
    }
    return AVERIS_OK;
}

averis_status cq_ws_take(void **p, size_t bytes, cudaStream_t s) { return ws_take(p, bytes, s); }
averis_status cq_ws_give(void *p, cudaStream_t s) { return ws_give(p, s); }
averis_status cq_rowsum_finish(const double *part, int64_t nparts, int64_t qrows, float *out, cudaStream_t s) {
    k_rowsum<<<cu_blocks(qrows, 32), dim3(32, 8), 0, s>>>(part, nparts, qrows, out);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* Rows 1×16: v2 of the kernel lab (a thread per 16-element block, 16-byte
 * loads); v1 and v3 and their measurements: dev/cuda/quant_lab.cu. */
averis_status cq_quantize(const cq_job *j, cudaStream_t s) {
    CU_PROF(j->transpose ? (j->amax_in ? "quant wgrad copy" : "quant wgrad copy + amax")
             : j->tile    ? "quant weight 16x16 + amax"
             : j->amax_in ? "quant rows" : "quant rows + amax", s);
    cq_params p;
    CU_OK(cq_plan(j, &p));
    return cq_run(j, &p, s);
}

averis_status cq_colstats(const void *x, int bf16_in, int64_t rows, int64_t cols, int64_t ld, float *mean,
                           float *res_amax, float *col_max, float *col_min, cudaStream_t s) {
    CU_PROF("averis colstats", s);
    if (rows <= 0 || cols <= 0 || ld < cols)
        return averis_fail(AVERIS_EINVAL, "cuda colstats: bad shape %lld x %lld", (long long)rows, (long long)cols);
    int64_t nchunk = (rows + NVFP4_SPLIT_CHUNK - 1) / NVFP4_SPLIT_CHUNK;
    if (nchunk > 65535) return averis_fail(AVERIS_EINVAL, "cuda colstats: %lld rows is too many", (long long)rows);
    char *buf = nullptr;
    size_t n = (size_t)(nchunk * cols);
    CU_OK(ws_take(reinterpret_cast<void **>(&buf), n * (sizeof(double) + 2 * sizeof(float)), s));
    double *part = reinterpret_cast<double *>(buf);
    float *pmx = reinterpret_cast<float *>(part + n), *pmn = pmx + n;
    dim3 grid(cu_blocks(cols, 128), (unsigned)nchunk);
    if (bf16_in)
        k_colstats_part<<<grid, 128, 0, s>>>(static_cast<const __nv_bfloat16 *>(x), rows, cols, ld, part, pmx, pmn,
                                             res_amax);
    else
        k_colstats_part<<<grid, 128, 0, s>>>(static_cast<const float *>(x), rows, cols, ld, part, pmx, pmn, res_amax);
    CU_LAUNCHED();
    k_colstats_final<<<cu_blocks(cols, 128), 128, 0, s>>>(part, pmx, pmn, nchunk, rows, cols, mean, col_max, col_min,
                                                           res_amax);
    CU_LAUNCHED();
    CU_OK(ws_give(buf, s));
    return AVERIS_OK;
}

averis_status cq_to_bf16(const float *x, __nv_bfloat16 *y, int64_t n, cudaStream_t s) {
    CU_PROF("to bf16", s);
    if (n % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0)
        k_to_bf16_v8<<<cu_blocks(n / 8, 256), 256, 0, s>>>(x, y, n / 8);
    else
        k_to_bf16<<<cu_blocks(n, 256), 256, 0, s>>>(x, y, n);
    CU_LAUNCHED();
    return AVERIS_OK;
}

averis_status cq_alpha(const float *amax_a, const float *amax_b, float *alpha, cudaStream_t s) {
    k_alpha<<<1, 1, 0, s>>>(amax_a, amax_b, alpha);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* ================================================================== C API */
extern "C" {

int avc_compiled(void) { return 1; }

averis_status avc_init(int device, char *desc, size_t cap) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        return averis_fail(AVERIS_EUNSUPPORTED, "cuda: no usable GPU (%s)",
                           e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    if (device < 0 || device >= n)
        return averis_fail(AVERIS_EINVAL, "cuda: device %d does not exist (%d GPU%s)", device, n, n == 1 ? "" : "s");
    CU_TRY(cudaSetDevice(device));
    cudaDeviceProp pr;
    CU_TRY(cudaGetDeviceProperties(&pr, device));
    if (pr.major < 8)
        return averis_fail(AVERIS_EUNSUPPORTED, "cuda: %s is sm_%d%d; averis needs sm_80 or newer (BF16 tensor cores)",
                           pr.name, pr.major, pr.minor);
    int drv = 0;
    cudaDriverGetVersion(&drv);
    if (desc) snprintf(desc, cap, "%s (sm_%d%d, %d SMs, driver %d.%d)", pr.name, pr.major, pr.minor,
                       pr.multiProcessorCount, drv / 1000, (drv % 1000) / 10);
    return AVERIS_OK;
}

averis_status avc_tensor_alloc(avc_tensor *t, int64_t rows, int64_t cols, nvfp4_block_kind block) {
    memset(t, 0, sizeof *t);
    if (rows <= 0 || cols <= 0) return averis_fail(AVERIS_EINVAL, "cuda: empty tensor (%lld x %lld)", (long long)rows, (long long)cols);
    t->rows = rows, t->cols = cols, t->cols_padded = nvfp4_cols_padded(cols), t->block = block;
    CU_ALLOC(cudaMalloc(&t->codes_dev, (size_t)(rows * t->cols_padded / 2)), rows * t->cols_padded / 2);
    CU_ALLOC(cudaMalloc(&t->scales_dev, (size_t)nvfp4_scale_count(rows, cols, block)), nvfp4_scale_count(rows, cols, block));
    CU_TRY(cudaMalloc(&t->amax_dev, sizeof(float)));
    return AVERIS_OK;
}

void avc_tensor_free(avc_tensor *t) {
    cudaFree(t->codes_dev);
    cudaFree(t->scales_dev);
    cudaFree(t->amax_dev);
    memset(t, 0, sizeof *t);
}

averis_status avc_tensor_download(const avc_tensor *t, nvfp4_tensor *h) {
    if (h->rows != t->rows || h->cols != t->cols || h->block != t->block)
        return averis_fail(AVERIS_EINVAL, "cuda: download into a tensor of another shape");
    CU_TRY(cudaMemcpy(h->codes, t->codes_dev, (size_t)(t->rows * t->cols_padded / 2), cudaMemcpyDeviceToHost));
    CU_TRY(cudaMemcpy(h->scales, t->scales_dev, (size_t)nvfp4_scale_count(t->rows, t->cols, t->block),
                       cudaMemcpyDeviceToHost));
    CU_TRY(cudaMemcpy(&h->amax, t->amax_dev, sizeof(float), cudaMemcpyDeviceToHost));
    return AVERIS_OK;
}

averis_status avc_quantize(const void *src, nvfp4_dtype dtype, int64_t rows, int64_t cols, int64_t ld,
                           const avc_qopts *o, avc_tensor *out, void *stream) {
    if (dtype != NVFP4_F32 && dtype != NVFP4_BF16)
        return averis_fail(AVERIS_EINVAL, "cuda quantize: dtype must be fp32 or bf16");
    if (out->rows != rows || out->cols != cols || out->block != o->block)
        return averis_fail(AVERIS_EINVAL, "cuda quantize: output tensor shape differs from the input");
    cq_job j = {};
    j.src = src, j.bf16_in = dtype == NVFP4_BF16;
    j.srows = rows, j.scols = cols, j.ld = ld;
    j.tile = o->block == NVFP4_BLOCK_16X16;
    j.rht = o->rht, j.sr = o->sr, j.seed = o->seed, j.stream = o->stream;
    j.mean = o->mean_dev;
    j.amax = out->amax_dev;
    j.codes = out->codes_dev, j.scales = out->scales_dev;
    return cq_quantize(&j, (cudaStream_t)stream);
}

averis_status avc_dequantize(const avc_tensor *t, float *out, void *stream) {
    int64_t nb = t->cols_padded / 16;
    k_dequant<<<cu_blocks(t->rows * nb, 256), 256, 0, (cudaStream_t)stream>>>(
        t->codes_dev, t->scales_dev, t->amax_dev, t->rows, t->cols, t->cols_padded, t->block == NVFP4_BLOCK_16X16, out);
    CU_LAUNCHED();
    return AVERIS_OK;
}

averis_status avc_colstats(const float *x, int64_t rows, int64_t cols, float *mean, float *col_max, float *col_min,
                           float *res_amax, void *stream) {
    return cq_colstats(x, 0, rows, cols, cols, mean, res_amax, col_max, col_min, (cudaStream_t)stream);
}

} // extern "C"

/* ======================================================= segmented (seg.cuh)
 * The MoE experts' row segments in one launch sequence: blockIdx.y (or .z)
 * is the segment, whose cq_params are cq_plan's for its rows alone
 * (seg_params), and the kernels' bodies are k_amax's, k_quant's,
 * k_rowsum's and the column statistics' on them: the per-expert calls' bits. */
#include "seg.cuh"

namespace {

struct cq_seg_dev {
    const int *offs;          /* [nseg + 1], or NULL: rows_each rows a segment */
    int64_t rows_each;
    int pad;                  /* rows layout: cq_seg_row0 starts */
    const uint64_t *streams;  /* [nseg] or NULL */
    int64_t kp_extra;
    int64_t esz;              /* bytes of an input element */
    double *part;             /* row-sum partials: segment e's at (o_e/64 + e)·qrows */
};

__device__ __forceinline__ bool seg_range(const int *offs, int64_t rows_each, int e, int64_t &o, int64_t &n) {
    if (offs) {
        o = offs[e];
        n = offs[e + 1] - o;
    } else {
        o = e * rows_each;
        n = rows_each;
    }
    return n > 0;
}

/* cq_plan's parameters for segment e of the template t (false: empty) */
__device__ __forceinline__ bool seg_params(const cq_params &t, const cq_seg_dev &g, int e, cq_params &p) {
    int64_t o, n;
    if (!seg_range(g.offs, g.rows_each, e, o, n)) return false;
    p = t;
    p.src = static_cast<const char *>(t.src) + o * t.ld * g.esz;
    p.srows = n;
    int64_t qrows = t.transpose ? t.scols : n, qcols = t.transpose ? n : t.scols;
    p.cp = (qcols + 15) / 16 * 16;
    p.nb = p.cp / 16;
    if (g.streams) p.stream = g.streams[e];
    p.mean = t.mean ? t.mean + e * t.scols : nullptr;
    p.amax = t.amax + e;
    if (t.transpose) {
        p.bf16_out = t.bf16_out + t.scols * cq_seg_col0(o, e);
        p.ld_out = p.cp + g.kp_extra;
    } else {
        p.bf16_out = t.bf16_out + (g.pad ? cq_seg_row0(o, e) : o) * t.ld_out;
    }
    p.nthreads = p.tile ? (qrows + 15) / 16 * 16 * p.nb
               : p.transpose ? qrows * ((p.nb + CQ_TG - 1) / CQ_TG)
                             : qrows * p.nb;
    p.vec = !t.transpose && t.scols % 16 == 0 && (t.ld * g.esz) % 16 == 0 &&
            reinterpret_cast<uintptr_t>(p.src) % 16 == 0;
    p.rowsum_part = g.part ? g.part + (o / 64 + e) * qrows : nullptr;
    return true;
}

/* k_amax on segment blockIdx.y (a block past the segment's threads leaves whole) */
template <typename T> __global__ void k_amax_seg(cq_params t, cq_seg_dev g) {
    cq_params p;
    if (!seg_params(t, g, (int)blockIdx.y, p) || (int64_t)blockIdx.x * blockDim.x >= p.nthreads) return;
    amax_body<T>(p);
}

/* k_quant on segment blockIdx.y */
template <typename T> __global__ void __launch_bounds__(256, 4) k_quant_seg(cq_params t, cq_seg_dev g) {
    cq_params p;
    if (!seg_params(t, g, (int)blockIdx.y, p) || (int64_t)blockIdx.x * blockDim.x >= p.nthreads) return;
    quant_body<T>(p);
}

/* k_rowsum on segment blockIdx.y: out [nseg × qrows] */
__global__ void k_rowsum_seg(const double *part_all, const int *offs, int64_t rows_each, int64_t qrows, float *out_all) {
    int e = (int)blockIdx.y;
    int64_t o, n;
    if (!seg_range(offs, rows_each, e, o, n)) return;
    int64_t nb = ((n + 15) / 16 + CQ_TG - 1) / CQ_TG;
    rowsum_body(part_all + (o / 64 + e) * qrows, nb, qrows, out_all + e * qrows);
}

/* k_colstats_part on segment blockIdx.z (chunks from the segment's first row);
 * partials of segment e at (o_e/CHUNK + e)·cols */
template <typename T>
__global__ void k_colstats_part_seg(const T *x_all, const int *offs, int64_t cols, int64_t ld, double *part_all,
                                    float *pmx_all, float *pmn_all, float *res_amax_all) {
    int e = (int)blockIdx.z;
    int64_t o, rows;
    if (!seg_range(offs, 0, e, o, rows)) return;
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t c = blockIdx.y;
    if (c * NVFP4_SPLIT_CHUNK >= rows) return;
    const T *x = x_all + o * ld;
    int64_t base = (o / NVFP4_SPLIT_CHUNK + e) * cols;
    double *part = part_all + base;
    float *pmx = pmx_all + base, *pmn = pmn_all + base, *res_amax = res_amax_all + e;
    if (j == 0 && c == 0) *res_amax = 0.0f; /* for k_colstats_final_seg's atomicMax, which runs after */
    if (j >= cols) return;
    colstats_chunk(x, rows, cols, ld, j, c, part, pmx, pmn);
}

/* k_colstats_final on segment blockIdx.y */
__global__ void k_colstats_final_seg(const double *part_all, const float *pmx_all, const float *pmn_all, const int *offs,
                                     int64_t cols, float *mean_all, float *res_amax_all) {
    int e = (int)blockIdx.y;
    int64_t o, rows;
    if (!seg_range(offs, 0, e, o, rows)) return;
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    int64_t nchunk = (rows + NVFP4_SPLIT_CHUNK - 1) / NVFP4_SPLIT_CHUNK, base = (o / NVFP4_SPLIT_CHUNK + e) * cols;
    float mx, mn;
    mean_all[e * cols + j] = colstats_final_col(part_all + base, pmx_all + base, pmn_all + base, nchunk, rows, cols, j,
                                                res_amax_all + e, mx, mn);
}

__global__ void k_alpha_seg(const float *amax_a, const float *amax_b, float *alpha, int nseg) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= nseg) return;
    float ea, da, eb, db;
    nvfp4_spec_global_scales(amax_a[e], &ea, &da);
    nvfp4_spec_global_scales(amax_b[e], &eb, &db);
    alpha[e] = da * db;
}

/* y rows of segment blockIdx.y (rows layout with padded starts) = bf16(x rows) */
__global__ void k_to_bf16_seg(const float *x, const int *offs, int64_t rows_each, int pad, int64_t cols,
                              __nv_bfloat16 *y) {
    int e = (int)blockIdx.y;
    int64_t o, n;
    if (!seg_range(offs, rows_each, e, o, n)) return;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * cols) return;
    int64_t r0 = pad ? cq_seg_row0(o, e) : o;
    y[r0 * cols + i] = __float2bfloat16_rn(x[o * cols + i]);
}

} // namespace

size_t cq_seg_ws_bytes(int64_t R, int nseg, int64_t cols) {
    size_t colstats = (size_t)((R / NVFP4_SPLIT_CHUNK + nseg + 1) * cols) * (sizeof(double) + 2 * sizeof(float));
    size_t rowsum = (size_t)((R / 64 + nseg + 1) * cols) * sizeof(double);
    return colstats > rowsum ? colstats : rowsum;
}

static averis_status seg_ws_take(const cq_seg *g, void **p, size_t bytes, cudaStream_t s) {
    if (g->ws && bytes <= g->ws_bytes) {
        *p = g->ws;
        return AVERIS_OK;
    }
    CU_ALLOC(cudaMallocAsync(p, bytes, s), bytes);
    return AVERIS_OK;
}
static averis_status seg_ws_give(const cq_seg *g, void *p, cudaStream_t s) {
    if (p != g->ws) CU_TRY(cudaFreeAsync(p, s));
    return AVERIS_OK;
}

static averis_status seg_check(const cq_seg *g, int64_t *total, int64_t *maxn) {
    if (g->nseg <= 0 || g->nseg > 65535 || (!g->offs_d != !g->offs_h) || (!g->offs_d && g->rows_each <= 0))
        return averis_fail(AVERIS_EINVAL, "cuda quantize: bad segments (%d)", g->nseg);
    *maxn = 0;
    for (int e = 0; e < g->nseg; e++) {
        int64_t n = cq_seg_n(*g, e);
        if (n < 0) return averis_fail(AVERIS_EINVAL, "cuda quantize: segment %d has %lld rows", e, (long long)n);
        *maxn = n > *maxn ? n : *maxn;
    }
    *total = cq_seg_off(*g, g->nseg);
    return AVERIS_OK;
}

averis_status cq_quantize_seg(const cq_seg_job *j, const cq_seg *g, cudaStream_t s) {
    CU_PROF(j->transpose ? "quant wgrad copy (segments)" : j->tile ? "quant weight 16x16 (segments)" : "quant rows (segments)", s);
    int64_t total = 0, maxn = 0;
    CU_OK(seg_check(g, &total, &maxn));
    if (j->scols <= 0 || j->ld < j->scols || !j->bf16_out || !j->amax || (j->transpose && j->tile) ||
        (j->sr && !j->streams) || (j->rowsum && !j->transpose))
        return averis_fail(AVERIS_EINVAL, "cuda quantize_seg: bad job (%lld columns)", (long long)j->scols);
    int64_t qrows_max = j->transpose ? j->scols : maxn, qcols_max = j->transpose ? maxn : j->scols;
    int64_t cp_max = (qcols_max + 15) / 16 * 16, nb_max = cp_max / 16;
    if (j->transpose ? (j->scols % 8 || (j->kp_extra % 16)) : (j->ld_out < (j->scols + 15) / 16 * 16 || j->ld_out % 8))
        return averis_fail(AVERIS_EINVAL, "cuda quantize_seg: BF16 output layout (cols %lld, ld_out %lld)",
                           (long long)j->scols, (long long)j->ld_out);
    if (reinterpret_cast<uintptr_t>(j->bf16_out) % 256)
        return averis_fail(AVERIS_EINVAL, "cuda quantize_seg: the BF16 output must be 256-byte aligned");
    if (maxn == 0) return AVERIS_OK;
    int64_t nthreads_max = j->tile ? (qrows_max + 15) / 16 * 16 * nb_max
                         : j->transpose ? qrows_max * ((nb_max + CQ_TG - 1) / CQ_TG)
                                        : qrows_max * nb_max;
    if (4 * nthreads_max + 1024 > (int64_t)UINT32_MAX)
        return averis_fail(AVERIS_EINVAL, "cuda quantize_seg: %lld blocks of 16 is too many", (long long)nthreads_max);
    cq_params t = {};
    t.src = j->src;
    t.scols = j->scols, t.ld = j->ld;
    t.tile = j->tile, t.rht = j->rht, t.sr = j->sr, t.transpose = j->transpose;
    t.seed = j->seed;
    t.mean = j->mean;
    t.amax = j->amax;
    t.bf16_out = j->bf16_out, t.ld_out = j->ld_out;
    cq_seg_dev d = {g->offs_d, g->rows_each, g->pad, j->sr ? j->streams : nullptr, j->kp_extra, j->bf16_in ? 2 : 4, nullptr};
    const int threads = 256;
    dim3 grid(cu_blocks(nthreads_max, threads), (unsigned)g->nseg);
    if (j->amax_in) {
        if (j->amax_in != j->amax)
            CU_TRY(cudaMemcpyAsync(j->amax, j->amax_in, (size_t)g->nseg * sizeof(float), cudaMemcpyDeviceToDevice, s));
    } else {
        CU_TRY(cudaMemsetAsync(j->amax, 0, (size_t)g->nseg * sizeof(float), s));
        if (j->bf16_in) k_amax_seg<__nv_bfloat16><<<grid, threads, 0, s>>>(t, d);
        else k_amax_seg<float><<<grid, threads, 0, s>>>(t, d);
        CU_LAUNCHED();
    }
    double *part = nullptr;
    if (j->rowsum) {
        CU_OK(seg_ws_take(g, reinterpret_cast<void **>(&part), (size_t)((total / 64 + g->nseg + 1) * j->scols) * sizeof(double), s));
        d.part = part;
    }
    if (j->bf16_in) k_quant_seg<__nv_bfloat16><<<grid, threads, 0, s>>>(t, d);
    else k_quant_seg<float><<<grid, threads, 0, s>>>(t, d);
    CU_LAUNCHED();
    if (part) {
        k_rowsum_seg<<<dim3(cu_blocks(j->scols, 32), (unsigned)g->nseg), dim3(32, 8), 0, s>>>(part, g->offs_d, g->rows_each,
                                                                                             j->scols, j->rowsum);
        CU_LAUNCHED();
        CU_OK(seg_ws_give(g, part, s));
    }
    return AVERIS_OK;
}

averis_status cq_colstats_seg(const void *x, int bf16_in, int64_t cols, int64_t ld, const cq_seg *g, float *mean,
                              float *res_amax, cudaStream_t s) {
    CU_PROF("averis colstats (segments)", s);
    int64_t total = 0, maxn = 0;
    CU_OK(seg_check(g, &total, &maxn));
    if (!g->offs_d || cols <= 0 || ld < cols)
        return averis_fail(AVERIS_EINVAL, "cuda colstats_seg: bad shape (%lld columns, offsets %s)", (long long)cols,
                           g->offs_d ? "given" : "missing");
    if (maxn == 0) return AVERIS_OK;
    int64_t nchunk_max = (maxn + NVFP4_SPLIT_CHUNK - 1) / NVFP4_SPLIT_CHUNK;
    if (nchunk_max > 65535) return averis_fail(AVERIS_EINVAL, "cuda colstats_seg: %lld rows is too many", (long long)maxn);
    size_t n = (size_t)((total / NVFP4_SPLIT_CHUNK + g->nseg + 1) * cols);
    char *buf = nullptr;
    CU_OK(seg_ws_take(g, reinterpret_cast<void **>(&buf), n * (sizeof(double) + 2 * sizeof(float)), s));
    double *part = reinterpret_cast<double *>(buf);
    float *pmx = reinterpret_cast<float *>(part + n), *pmn = pmx + n;
    dim3 grid(cu_blocks(cols, 128), (unsigned)nchunk_max, (unsigned)g->nseg);
    if (bf16_in)
        k_colstats_part_seg<<<grid, 128, 0, s>>>(static_cast<const __nv_bfloat16 *>(x), g->offs_d, cols, ld, part, pmx, pmn,
                                                 res_amax);
    else
        k_colstats_part_seg<<<grid, 128, 0, s>>>(static_cast<const float *>(x), g->offs_d, cols, ld, part, pmx, pmn, res_amax);
    CU_LAUNCHED();
    k_colstats_final_seg<<<dim3(cu_blocks(cols, 128), (unsigned)g->nseg), 128, 0, s>>>(part, pmx, pmn, g->offs_d, cols, mean,
                                                                                      res_amax);
    CU_LAUNCHED();
    CU_OK(seg_ws_give(g, buf, s));
    return AVERIS_OK;
}

averis_status cq_alpha_seg(const float *amax_a, const float *amax_b, float *alpha, int nseg, cudaStream_t s) {
    if (nseg <= 0) return AVERIS_OK;
    k_alpha_seg<<<cu_blocks(nseg, 128), 128, 0, s>>>(amax_a, amax_b, alpha, nseg);
    CU_LAUNCHED();
    return AVERIS_OK;
}

averis_status cq_to_bf16_seg(const float *x, int64_t cols, const cq_seg *g, __nv_bfloat16 *y, cudaStream_t s) {
    CU_PROF("to bf16", s);
    int64_t total = 0, maxn = 0;
    CU_OK(seg_check(g, &total, &maxn));
    if (maxn == 0) return AVERIS_OK;
    k_to_bf16_seg<<<dim3(cu_blocks(maxn * cols, 256), (unsigned)g->nseg), 256, 0, s>>>(x, g->offs_d, g->rows_each, g->pad,
                                                                                       cols, y);
    CU_LAUNCHED();
    return AVERIS_OK;
}
