/* analysis.cu — the mean-bias metrics on the GPU (averis/analysis_cuda.h
 * says what each is and how close to the CPU reference it comes).
 *
 * One call, X [l × m] row-major on device (a BF16 X is widened to an fp32
 * scratch copy first):
 *   1. μ and the residual amax by cq_colstats; Σx² in fp64 partials.
 *   2. Subspace iteration on one panel V = [V₁ | V₂] (m × (p1 + p2)), one
 *      of two ways:
 *      Gram path (m ≤ AVERIS_ANALYSIS_GRAM, default 4096: every tap but the
 *      LM head's): Xc = X − 1μᵀ once, Cc = XcᵀXc (one TF32 SGEMM), C₁ = Cc +
 *      l·μμᵀ; an iteration is Z₁ = C₁V₁, Z₂ = Cc V₂ (m × m SGEMMs, X is
 *      not read again until Rayleigh–Ritz), two of them per Cholesky-QR
 *      (AVERIS_ANALYSIS_STEP=1: one).
 *      Panel path (wider):
 *        Y = X V                      SGEMM (Xᵀ of the col-major view)
 *        Y₂ −= 1·(μᵀV₂)               the centring of block 2 (GEMV + GER)
 *        Z = Xᵀ Y; Z₂ −= μ·(1ᵀY₂)     SGEMM, GEMV + GER
 *      Both: V = Z W, Cholesky-QR of both blocks at once: G = ZᵀZ (P × P)
 *      by one DGEMM on an fp64 copy, R_b and R_b⁻¹ of G's diagonal blocks by
 *      one launch of k_chol_inv (a thread block per block, R packed in shared
 *      memory up to ~230 vectors, warp-parallel R⁻¹), one SGEMM with the
 *      block-diagonal W = diag(R₁⁻¹, R₂⁻¹); the early-stop check reads both
 *      traces with one wait.
 *      Then Rayleigh–Ritz: B_b = (X V_b)ᵀ(X V_b) in fp64 (X V_b in full
 *      fp32), eigenvalues on the host (Householder + QL; block 1's top
 *      eigenvector u₁ by inverse iteration): σ₁², v₁ = V₁u₁ and the spike
 *      Σ top-k of block 2; the deferred taps' host work on several threads.
 *   3. ρ: the bits of |x| (a monotone key) by a 3-pass histogram select give
 *      the exact ⌈0.001 n⌉-th largest magnitude, each pass's bucket chosen by
 *      a one-block kernel (k_pick), the state on the device; the elements ≥
 *      it are ranked in index order (chunk counts, their scan in one block,
 *      a block scan per chunk) and the first ⌈0.001 n⌉ give ρ = μ_j²/x²,
 *      written in index order; median and share > 0.5 on the host.
 *   3. and 4. run on a second stream beside 2. (AVERIS_ANALYSIS_SIDE=0: one
 *      stream); on the Gram path each stage is a CUDA graph, captured once
 *      per shape and buffers (AVERIS_ANALYSIS_GRAPH=0: launched directly).
 *   4. NVFP4, the four recipe transforms at once: k_qamax4 (one read) the
 *      per-tensor amax of each quantizer input, k_qerr4 (one read) each
 *      block's quantization with the quantizer's device codecs (the CPU's
 *      bits), the dequantized block (inverse RHT where used), the sums of
 *      the error, the nonzero and the flushed inputs.
 * Deferred (the default for the Gram path, AVERIS_ANALYSIS_DEFER): at the
 * tap only 1., the Gram matrices, 3. and 4. run (into a slot of the tap's
 * own); avc_analysis_flush runs 2.'s iteration for every queued tap of one
 * shape as batched GEMMs, Rayleigh–Ritz as V_bᵀ(C_b V_b), and waits once.
 * 3. by default first takes a threshold from a sample and selects among the
 * few elements above it (the 3-pass path where the sample misled; the same
 * bits; AVERIS_ANALYSIS_SELECT=radix: the 3-pass path alone).
 * Partial sums are fp64 per thread block, reduced on the host in block
 * order: the results replay bit for bit. The host waits for the stream at
 * the early-stop checks (iterations 6, 9, 12, 15) and once at the end.
 */
#include "quant_block.cuh"
#include "nvfp4_device.cuh"
#include "averis/analysis_cuda.h"

#include <cublas_v2.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <optional>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

enum { ANA_THREADS = 256, ANA_NBLK = 512, ANA_CHUNK = ANA_THREADS * 16, ANA_SLOTS = 1 + 3 * ANALYSIS_NQ, ANA_RING_MAX = 8 };

typedef cub::BlockReduce<double, ANA_THREADS> ana_reduce;

/* fp32 copy of a BF16 tensor */
__global__ void k_widen(const __nv_bfloat16 *x, float *y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}

/* v rounded to BF16 in place, its BF16 copy in vb: the GEMMs and the
 * centring terms beside them then use the same (rounded) panel */
__global__ void k_round_bf16(float *v, __nv_bfloat16 *vb, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        __nv_bfloat16 b = __float2bfloat16_rn(v[i]);
        vb[i] = b;
        v[i] = __bfloat162float(b);
    }
}

/* Σx² per thread block → part[blockIdx] */
__global__ void k_sumsq(const float *x, int64_t n, double *part) {
    __shared__ typename ana_reduce::TempStorage tmp;
    double s = 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        double v = x[i];
        s += v * v;
    }
    s = ana_reduce(tmp).Sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* a fixed start panel in [−½, ½) (a hash of the index: not aligned with μ) */
__global__ void k_start(float *v, int64_t n, uint32_t seed) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ (uint32_t)(i >> 32) * 40503u ^ seed;
        h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
        v[i] = (float)(h >> 8) * 0x1p-24f - 0.5f;
    }
}

__global__ void k_to_f64(const float *x, double *y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = x[i];
}

/* out [n] = Σ_s part[s·n …] in chunk order (the split Gram's partial sums) */
__global__ void k_sum_parts(const double *part, int S, int64_t n, double *out) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        double t = 0;
        for (int s = 0; s < S; s++) t += part[(int64_t)s * n + i];
        out[i] = t;
    }
}

/* Cholesky-QR's factorisation, both blocks in one launch: thread block b
 * takes the diagonal block b of the P × P Gram G (col-major fp64, ld P;
 * block 0: p1 × p1 at 0, block 1: p2 × p2 at p1), G_b = RᵀR, and writes
 * its columns of the block-diagonal W = diag(R₁⁻¹, R₂⁻¹) (P × P fp32, every
 * entry of them, zeros outside the block) and tr(G_b) (summed in index
 * order). A pivot below 1e-11·max diag drops its direction (its row of R and
 * of W are zero, so V's column is zero). R is kept as the packed upper
 * triangle (column j: rows 0…j at j(j+1)/2), in shared memory where it fits
 * (up to ~230 vectors with the opt-in shared memory: the LM head's 172),
 * else in the global scratch S (2 × PMAX(PMAX+1)/2 doubles).
 *   Cholesky: right-looking, per pivot k one pass for row k of R and one for
 *   the trailing update (a warp per column), two barriers.
 *   R⁻¹: a warp per column j, R w = e_j by column-oriented back
 *   substitution: lane l keeps rows l, l+32, … of the right-hand side in
 *   registers (NR of them), each step one shuffle and a contiguous read of
 *   R's column i. */
enum { ANA_CHOL_THREADS = 1024 };
__device__ __forceinline__ int64_t pk(int i, int j) { return (int64_t)j * (j + 1) / 2 + i; }
template <int NR>
__global__ void __launch_bounds__(ANA_CHOL_THREADS) k_chol_inv(const double *Gf, int p1, int p2, int pb, float *Wg,
                                                               double *trace, double *gscr, int use_smem) {
    extern __shared__ double sm[];
    __shared__ double rowk[AVC_ANA_PMAX], rdiag[AVC_ANA_PMAX];
    __shared__ double dmax_s;
    /* pb > 0: batched, thread block b factors its own pb × pb G_b at Gf + b·pb² into W_b at Wg + b·pb² */
    const int b = blockIdx.x, P = pb > 0 ? pb : p1 + p2, o = pb > 0 || !b ? 0 : p1, p = pb > 0 ? pb : b ? p2 : p1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const double *G = pb > 0 ? Gf + (int64_t)b * pb * pb : Gf + o + (int64_t)o * P;
    if (pb > 0) Wg += (int64_t)b * pb * pb;
    double *S = use_smem ? sm : gscr + (int64_t)b * ((int64_t)AVC_ANA_PMAX * (AVC_ANA_PMAX + 1) / 2);
    for (int j = warp; j < p; j += nwarps)
        for (int i = lane; i <= j; i += 32) S[pk(i, j)] = G[i + (int64_t)j * P];
    __syncthreads();
    if (threadIdx.x == 0) {
        double m = 0, t = 0;
        for (int i = 0; i < p; i++) {
            double d = S[pk(i, i)];
            m = fmax(m, d);
            t += d;
        }
        dmax_s = m;
        trace[b] = t;
    }
    __syncthreads();
    const double tol = 1e-11 * dmax_s;
    for (int k = 0; k < p; k++) {
        /* row k of R: S(k, k) is read by every thread and not written here */
        double d = S[pk(k, k)];
        int keep = d > tol && d > 0;
        double r = keep ? sqrt(d) : 0.0;
        for (int j = k + 1 + threadIdx.x; j < p; j += blockDim.x) {
            double v = keep ? S[pk(k, j)] / r : 0.0;
            S[pk(k, j)] = v;
            rowk[j] = v;
        }
        if (threadIdx.x == 0) rdiag[k] = r;
        __syncthreads();
        /* the trailing update S(i, j) −= R(k, i) R(k, j), k < i ≤ j */
        for (int j = k + 1 + warp; j < p; j += nwarps) {
            double rj = rowk[j], *col = S + pk(0, j);
            for (int i = k + 1 + lane; i <= j; i += 32) col[i] -= rowk[i] * rj;
        }
        __syncthreads();
    }
    for (int k = threadIdx.x; k < p; k += blockDim.x) S[pk(k, k)] = rdiag[k];
    __syncthreads();
    /* W_b = R⁻¹, column j by warp j mod nwarps */
    for (int j = warp; j < p; j += nwarps) {
        double rhs[NR];
#pragma unroll
        for (int s = 0; s < NR; s++) rhs[s] = s * 32 + lane == j ? 1.0 : 0.0;
        float *wc = Wg + (int64_t)(o + j) * P;
        for (int i = j; i >= 0; i--) {
            const int sl = i >> 5;
            double v = 0;
#pragma unroll
            for (int s = 0; s < NR; s++)
                if (s == sl) v = rhs[s];
            v = __shfl_sync(0xffffffffu, v, i & 31);
            const double *col = S + pk(0, i);
            double rii = col[i], w = rii != 0 ? v / rii : 0.0;
            if (lane == 0) wc[o + i] = (float)w;
#pragma unroll
            for (int s = 0; s < NR; s++) {
                int row = s * 32 + lane;
                if (row < i) rhs[s] -= col[row] * w;
            }
        }
        for (int i = lane; i < P; i += 32)
            if (i < o || i > o + j) wc[i] = 0.0f;
    }
}

/* The radix select and the ρ ranking keep their state on the device
 * (sel: [0] the key prefix found so far, [1] the rank still needed below
 * it, [2] how many ρ were written): no host round trip between passes. */

/* The sampled select (issue 24's cost) gates the kernels of two paths on
 * gate[1] (k_cand_offsets's verdict): a kernel with a gate runs only where
 * (gate[1] ≠ 0) == want; no gate: always. */
__device__ __forceinline__ bool gated_off(const long long *gate, int want) { return gate && (gate[1] != 0) != (want != 0); }

/* histogram of the magnitude keys' bits [shift, shift + width) among the keys
 * whose bits above are sel[0] (every key in the first pass) */
__global__ void k_hist(const float *x, int64_t n, int shift, int width, const long long *sel, unsigned *hist,
                       const long long *gate = nullptr, int want = 0) {
    if (gated_off(gate, want)) return;
    __shared__ unsigned h[2048];
    int nb = 1 << width;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) h[i] = 0;
    __syncthreads();
    int top = shift + width;
    uint32_t prefix = top >= 31 ? 0u : (uint32_t)sel[0];
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t key = __float_as_uint(x[i]) & 0x7fffffffu;
        if (top >= 31 || (key >> top) == prefix) atomicAdd(&h[(key >> shift) & (uint32_t)(nb - 1)], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nb; i += blockDim.x)
        if (h[i]) atomicAdd(&hist[i], h[i]);
}

/* One thread block of ANA_PICK threads: the bucket holding the need-th
 * largest key, as the host loop did (from the top bucket down, the first
 * whose count reaches the rank still needed, else bucket 0), appended to
 * the prefix; the histogram is zeroed for the next pass. */
enum { ANA_PICK = 1024 };
__global__ void __launch_bounds__(ANA_PICK) k_pick(unsigned *hist, int width, int first, long long cnt, long long *sel,
                                                   const long long *gate = nullptr, int want = 0) {
    if (gated_off(gate, want)) return;
    typedef cub::BlockScan<long long, ANA_PICK> scan;
    __shared__ typename scan::TempStorage tmp;
    const int nb = 1 << width;
    long long need = first ? cnt : sel[1];
    uint32_t prefix = first ? 0u : (uint32_t)sel[0];
    __syncthreads(); /* every thread has read sel before one writes it */
    /* items in descending bucket order: thread t holds buckets nb−1−2t, nb−2−2t */
    long long h[2];
    int bk[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        int q = 2 * (int)threadIdx.x + e;
        bk[e] = nb - 1 - q;
        h[e] = bk[e] >= 0 ? (long long)hist[bk[e]] : 0;
    }
    long long ex[2];
    scan(tmp).ExclusiveSum(h, ex); /* ex: the keys in the buckets above */
#pragma unroll
    for (int e = 0; e < 2; e++) {
        int b = bk[e];
        if (b < 0) continue;
        int pick = b == 0 ? ex[e] < need : ex[e] < need && ex[e] + h[e] >= need;
        if (pick) {
            sel[0] = (long long)((prefix << width) | (uint32_t)b);
            sel[1] = need - ex[e];
        }
        hist[b] = 0;
    }
}

/* elements with |x| ≥ thr per chunk of ANA_CHUNK */
__global__ void k_count_ge(const float *x, int64_t n, const long long *sel, unsigned *cnt, const long long *gate = nullptr,
                           int want = 0) {
    if (gated_off(gate, want)) return;
    typedef cub::BlockReduce<unsigned, ANA_THREADS> red;
    __shared__ typename red::TempStorage tmp;
    const float thr = __uint_as_float((uint32_t)sel[0]);
    int64_t base = (int64_t)blockIdx.x * ANA_CHUNK;
    unsigned c = 0;
    for (int t = 0; t < 16; t++) {
        int64_t i = base + (int64_t)t * ANA_THREADS + threadIdx.x;
        c += i < n && fabsf(x[i]) >= thr;
    }
    c = red(tmp).Sum(c);
    if (threadIdx.x == 0) cnt[blockIdx.x] = c;
}

/* one thread block of ANA_PICK: off = the exclusive scan of the chunk
 * counts c [nch]; returns their sum */
__device__ long long chunk_scan(const unsigned *c, int64_t nch, int64_t *off) {
    typedef cub::BlockScan<long long, ANA_PICK> scan;
    __shared__ typename scan::TempStorage tmp;
    long long run = 0;
    for (int64_t base = 0; base < nch; base += ANA_PICK) {
        int64_t i = base + threadIdx.x;
        long long v = i < nch ? (long long)c[i] : 0, ex, tot;
        scan(tmp).ExclusiveSum(v, ex, tot);
        __syncthreads();
        if (i < nch) off[i] = run + ex;
        run += tot;
    }
    return run;
}

/* one thread block: off = the exclusive scan of the chunk counts; sel[2] =
 * how many ρ are written, min(Σ counts, cnt), 0 where the threshold is not
 * positive (all zeros: no ρ, as the CPU) */
__global__ void __launch_bounds__(ANA_PICK) k_offsets(const unsigned *c, int64_t nch, long long cnt, int64_t *off,
                                                      long long *sel, const long long *gate = nullptr, int want = 0) {
    if (gated_off(gate, want)) return;
    const long long run = chunk_scan(c, nch, off);
    if (threadIdx.x == 0) {
        float thr = __uint_as_float((uint32_t)sel[0]);
        sel[2] = thr > 0 ? (run < cnt ? run : cnt) : 0;
    }
}

/* ρ = μ_j²/x² of the elements ≥ thr whose index-order rank is below sel[2],
 * at their rank */
/* the elements of this thread block's chunk of x with |x| ≥ thr, in index
 * order: put(i, v, r) for each, r its rank among all of them (off: the
 * chunks' exclusive scan) */
template <typename Put>
__device__ __forceinline__ void for_each_ge_ranked(const float *x, int64_t n, float thr, const int64_t *off, Put put) {
    /* thread t holds the chunk's elements [16t, 16t + 16): index order is
     * thread order, so one block scan of the threads' counts ranks them all */
    typedef cub::BlockScan<int, ANA_THREADS> scan;
    __shared__ typename scan::TempStorage tmp;
    static_assert(ANA_CHUNK == ANA_THREADS * 16, "a chunk is 16 elements a thread");
    const int64_t i0 = (int64_t)blockIdx.x * ANA_CHUNK + (int64_t)threadIdx.x * 16;
    float v[16];
    if (i0 + 16 <= n && (reinterpret_cast<uintptr_t>(x) & 15) == 0) {
        const float4 *p = reinterpret_cast<const float4 *>(x + i0);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float4 f = __ldg(p + k);
            v[4 * k] = f.x, v[4 * k + 1] = f.y, v[4 * k + 2] = f.z, v[4 * k + 3] = f.w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < 16; k++) v[k] = i0 + k < n ? __ldg(x + i0 + k) : 0.0f;
    }
    int c = 0;
#pragma unroll
    for (int k = 0; k < 16; k++) c += i0 + k < n && fabsf(v[k]) >= thr;
    int rank;
    scan(tmp).ExclusiveSum(c, rank);
    if (c) {
        int64_t r = off[blockIdx.x] + rank;
#pragma unroll
        for (int k = 0; k < 16; k++)
            if (i0 + k < n && fabsf(v[k]) >= thr) put(i0 + k, v[k], r++);
    }
}

__global__ void k_rho(const float *x, const float *mean, int64_t n, int64_t m, const long long *sel, const int64_t *off,
                      double *rho, const long long *gate = nullptr, int want = 0, const long long *idx = nullptr) {
    if (gated_off(gate, want)) return;
    const int64_t cnt = sel[2];
    for_each_ge_ranked(x, n, __uint_as_float((uint32_t)sel[0]), off, [&](int64_t i, float v, int64_t r) {
        if (r < cnt) {
            double mj = mean[(idx ? idx[i] : i) % m], xv = v; /* idx: x holds candidates, their indices */
            rho[r] = mj * mj / (xv * xv);
        }
    });
}

/* The sampled select: a threshold t below the ⌈0.1 % n⌉-th largest magnitude
 * from a sample, the elements ≥ t (about twice as many) compacted in index
 * order, the exact select and ρ among them. Where the sample misled (fewer
 * than cnt or more than the buffer's cap elements ≥ t) the full 3-pass path
 * runs instead (the gates): the same results either way. */
enum { ANA_SAMPLE = 65536, ANA_CAND_MUL = 8, ANA_SAMPLE_ILP = 8 };

/* one block: ns = min(n, ANA_SAMPLE) magnitudes at quasi-random indices
 * (⌊frac(s·φ)·n⌋: no period that could follow the columns) in a histogram of
 * the key's bits 20…30; st[0] = the lower edge of the bucket where the
 * count from the top reaches 2·cnt·ns/n */
__global__ void __launch_bounds__(ANA_PICK) k_sample_thr(const float *x, int64_t n, long long cnt, long long *st) {
    typedef cub::BlockScan<long long, ANA_PICK> scan;
    __shared__ typename scan::TempStorage tmp;
    __shared__ unsigned h[2048];
    for (int i = threadIdx.x; i < 2048; i += blockDim.x) h[i] = 0;
    __syncthreads();
    const int64_t ns = n < ANA_SAMPLE ? n : ANA_SAMPLE;
    /* ANA_SAMPLE_ILP loads in flight per thread before their atomics (the
     * reads are scattered: one at a time, each waited a DRAM latency) */
    for (int64_t q0 = threadIdx.x; q0 < ns; q0 += (int64_t)ANA_SAMPLE_ILP * blockDim.x) {
        uint32_t key[ANA_SAMPLE_ILP];
#pragma unroll
        for (int u = 0; u < ANA_SAMPLE_ILP; u++) {
            const int64_t q = q0 + (int64_t)u * blockDim.x;
            double f = (double)q * 0.6180339887498949;
            int64_t i = (int64_t)((f - floor(f)) * (double)n);
            i = i < n ? i : n - 1;
            key[u] = q < ns ? __float_as_uint(__ldg(x + i)) & 0x7fffffffu : 0u;
        }
#pragma unroll
        for (int u = 0; u < ANA_SAMPLE_ILP; u++)
            if (q0 + (int64_t)u * blockDim.x < ns) atomicAdd(&h[key[u] >> 20], 1u);
    }
    __syncthreads();
    long long need = (long long)ceil(2.0 * (double)cnt * (double)ns / (double)n);
    need = need < 1 ? 1 : need;
    long long hv[2], ex[2];
    int bk[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        bk[e] = 2047 - (2 * (int)threadIdx.x + e);
        hv[e] = bk[e] >= 0 ? (long long)h[bk[e]] : 0;
    }
    scan(tmp).ExclusiveSum(hv, ex);
#pragma unroll
    for (int e = 0; e < 2; e++) {
        int b = bk[e];
        if (b < 0) continue;
        if (b == 0 ? ex[e] < need : ex[e] < need && ex[e] + hv[e] >= need) st[0] = (long long)((uint32_t)b << 20);
    }
}

/* one block: off = the scan of the chunk counts of elements ≥ t; st[2] = their
 * total, st[1] = 1 where cnt ≤ total ≤ cap (the candidates hold the top cnt) */
__global__ void __launch_bounds__(ANA_PICK) k_cand_offsets(const unsigned *c, int64_t nch, long long cnt, long long cap,
                                                           int64_t *off, long long *st) {
    const long long run = chunk_scan(c, nch, off);
    if (threadIdx.x == 0) {
        st[2] = run;
        st[1] = run >= cnt && run <= cap;
    }
}

/* the elements ≥ t (st[0]) and their indices, in index order, at off */
__global__ void k_compact(const float *x, int64_t n, const long long *st, const int64_t *off, float *cv, long long *ci) {
    if (!st[1]) return;
    for_each_ge_ranked(x, n, __uint_as_float((uint32_t)st[0]), off, [&](int64_t i, float v, int64_t r) {
        cv[r] = v;
        ci[r] = i;
    });
}

/* Xc = X − 1μᵀ (the Gram path's centred copy) */
__global__ void k_center(const float *x, const float *mean, float *xc, int64_t n, int64_t m) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        xc[i] = x[i] - mean[i % m];
}

/* Cc = C₁ − l·μμᵀ (m × m), the centred Gram from the uncentred one (the BF16 Gram) */
__global__ void k_gram_c(const float *c1, const float *mean, double l, float *cc, int64_t m) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < m * m; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i % m, c = i / m;
        cc[i] = (float)((double)c1[i] - l * (double)mean[r] * (double)mean[c]);
    }
}

/* C₁ = Cc + l·μμᵀ (m × m), the uncentred Gram from the centred one */
__global__ void k_gram1(const float *cc, const float *mean, double l, float *c1, int64_t m) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < m * m; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i % m, c = i / m;
        c1[i] = (float)((double)cc[i] + l * (double)mean[r] * (double)mean[c]);
    }
}

/* The NVFP4 round trip's error of one recipe transform: per 16-element block
 * the quantizer input (x − μ, RHT), q = the quantized e2m1·e4m3 (BF16),
 * x̂ = q·S_dec (inverse RHT) against x − μ. part slots: Σe², nonzero, flushed. */
/* the 16 inputs of block (r, c0) of X [l × m] (zeros past m); vec: m % 16 == 0 */
__device__ __forceinline__ void qerr_load(const float *x, int64_t r, int64_t c0, int64_t m, int vec, float o[16]) {
    if (vec) {
        const float4 *p = reinterpret_cast<const float4 *>(x + r * m + c0);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float4 f = __ldg(p + k);
            o[4 * k] = f.x, o[4 * k + 1] = f.y, o[4 * k + 2] = f.z, o[4 * k + 3] = f.w;
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 16; i++) o[i] = c0 + i < m ? __ldg(x + r * m + c0 + i) : 0.0f;
}

/* the quantizer input of transform qv (ANALYSIS_*) from the block's inputs o:
 * the mean subtracted (split), then the RHT, as cq_quantize builds it */
__device__ __forceinline__ void qerr_input(const float o[16], const float *mean, int64_t c0, int64_t m, int split,
                                           int rht, float v[16]) {
#pragma unroll
    for (int i = 0; i < 16; i++) v[i] = split && c0 + i < m ? o[i] - __ldg(mean + c0 + i) : o[i];
    if (rht) nvfp4_spec_rht16(v);
}

/* pass 1 of all four NVFP4 transforms in one read: amax[qv] (zeroed before)
 * the per-tensor amax of each quantizer input, as cq_quantize's k_amax */
__global__ void k_qamax4(const float *x, const float *mean, int64_t l, int64_t m, int vec, float *amax) {
    int64_t nb = (m + 15) / 16, nblocks = l * nb;
    float mx[ANALYSIS_NQ] = {0, 0, 0, 0};
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < nblocks; g += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = g / nb, c0 = (g % nb) * 16;
        float o[16], v[16];
        qerr_load(x, r, c0, m, vec, o);
#pragma unroll
        for (int qv = 0; qv < ANALYSIS_NQ; qv++) {
            qerr_input(o, mean, c0, m, qv == ANALYSIS_SPLIT || qv == ANALYSIS_SPLIT_RHT,
                       qv == ANALYSIS_RHT || qv == ANALYSIS_SPLIT_RHT, v);
#pragma unroll
            for (int i = 0; i < 16; i++) {
                float a = fabsf(v[i]);
                mx[qv] = a > mx[qv] ? a : mx[qv]; /* NaN ignored, as k_amax */
            }
        }
    }
#pragma unroll
    for (int qv = 0; qv < ANALYSIS_NQ; qv++) {
        cq_reduce_amax(mx[qv], amax + qv);
        __syncthreads(); /* cq_reduce_amax's shared scratch is reused */
    }
}

/* all four transforms' NVFP4 round trips in one read (1×16 along the
 * features, round to nearest, the quantizer's bits: the block scale, the
 * E2M1 codes, e2m1·e4m3·S_dec, the inverse RHT), each summing Σ(x̂ − x)², the
 * nonzero and the flushed inputs into its three partial-sum rows
 * part + (1 + 3·qv)·ANA_NBLK (fp64, a thread's blocks in grid-stride order;
 * a block's 16 squared errors are summed in fp32 first). VEC: m % 16 == 0. */
template <int VEC>
__global__ void k_qerr4(const float *x, const float *mean, int64_t l, int64_t m, const float *amax, double *part) {
    __shared__ typename ana_reduce::TempStorage tmp;
    int64_t nb = (m + 15) / 16, nblocks = l * nb;
    float s_enc[ANALYSIS_NQ], s_dec[ANALYSIS_NQ];
#pragma unroll
    for (int qv = 0; qv < ANALYSIS_NQ; qv++) nvfp4_spec_global_scales(amax[qv], &s_enc[qv], &s_dec[qv]);
    /* the counts as integers (exact, as their fp64 sums are: fewer registers) */
    double err[ANALYSIS_NQ] = {0, 0, 0, 0};
    int nz[ANALYSIS_NQ] = {0, 0, 0, 0}, fl[ANALYSIS_NQ] = {0, 0, 0, 0};
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < nblocks; g += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = g / nb, c0 = (g % nb) * 16;
        float o[16], xs[16];
        qerr_load(x, r, c0, m, VEC, o);
        /* the split's input x − μ (zeros past m, as qerr_input) */
#pragma unroll
        for (int i = 0; i < 16; i++) xs[i] = VEC || c0 + i < m ? o[i] - __ldg(mean + c0 + i) : o[i];
#pragma unroll
        for (int qv = 0; qv < ANALYSIS_NQ; qv++) {
            const int split = qv == ANALYSIS_SPLIT || qv == ANALYSIS_SPLIT_RHT, rht = qv == ANALYSIS_RHT || qv == ANALYSIS_SPLIT_RHT;
            const float *ref = split ? xs : o; /* the transform's input before the RHT */
            float v[16];
#pragma unroll
            for (int i = 0; i < 16; i++) v[i] = ref[i];
            if (rht) nvfp4_spec_rht16(v);
            float bamax = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i++) {
                float a = fabsf(v[i]);
                bamax = a > bamax ? a : bamax;
            }
            uint32_t sc = avd_block_scale(bamax, s_enc[qv]);
            float enc = avd_block_enc(sc, s_dec[qv]), sb = avd_e4m3_decode(sc);
#pragma unroll
            for (int i = 0; i < 16; i++) {
                float qval = avd_e2m1_rn_value(v[i] * enc) * sb; /* exact: the BF16 operand's value */
                nz[qv] += v[i] != 0.0f;
                fl[qv] += v[i] != 0.0f && qval == 0.0f;
                v[i] = qval * s_dec[qv]; /* x̂ (before the inverse RHT) */
            }
            if (rht) nvfp4_spec_rht16_inv(v);
            float be = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i++)
                if (VEC || c0 + i < m) {
                    float e = v[i] - ref[i];
                    be += e * e;
                }
            err[qv] += (double)be;
        }
    }
#pragma unroll
    for (int qv = 0; qv < ANALYSIS_NQ; qv++) {
        double *pe = part + (int64_t)(1 + 3 * qv) * ANA_NBLK;
        double t = ana_reduce(tmp).Sum(err[qv]);
        if (threadIdx.x == 0) pe[blockIdx.x] = t;
        __syncthreads();
        t = ana_reduce(tmp).Sum((double)nz[qv]);
        if (threadIdx.x == 0) pe[ANA_NBLK + blockIdx.x] = t;
        __syncthreads();
        t = ana_reduce(tmp).Sum((double)fl[qv]);
        if (threadIdx.x == 0) pe[2 * ANA_NBLK + blockIdx.x] = t;
        __syncthreads();
    }
}

} // namespace

struct avc_analysis {
    cudaStream_t s = nullptr;
    cublasHandle_t cb = nullptr;
    struct buf {
        void *p = nullptr;
        size_t cap = 0;
    };
    buf xf, q, mean, scal, V, Y, Z, Zd, G, Gs, W, tr, ones, vec1, dpart, hist, sel, cnt, off, rho, xc, C, Z2, gp;
    buf vb, yb; /* the panel iteration on a BF16 tensor: V and Y rounded to BF16 */
    buf st, cand_v, cand_i, cnt_c, off_c; /* the sampled select */
    int64_t ones_n = 0; /* elements of `ones` set to 1 */
    int smem_optin = 0; /* the shared memory a block may opt in to (bytes) */
    void *cublas_ws = nullptr; /* the handle's own workspace: the same GEMM kernels in and out of a capture */
    /* pinned host staging for the results (one wait for them all) */
    void *host = nullptr;
    size_t host_cap = 0;
    /* a tap's CUDA graphs (the Gram path): its stages before, in and after the
     * iteration loop, by key (job_key); graph_off after a capture failed */
    struct graphs {
        std::vector<int64_t> key;
        cudaGraphExec_t pre = nullptr, it = nullptr, rr = nullptr, side = nullptr;
        void destroy() {
            for (cudaGraphExec_t e : {pre, it, rr, side})
                if (e) cudaGraphExecDestroy(e);
        }
    };
    std::vector<graphs> cache;
    int graph_off = 0;
    /* deferred taps (AVERIS_ANALYSIS_DEFER): a Gram-path tap's Gram matrices
     * and device results wait in a slot of their own; avc_analysis_flush runs
     * the subspace iterations of all waiting taps of one shape as batched
     * GEMMs, then hands each tap's metrics to the sink in submission order */
    struct pending {
        int64_t l, m, cnt;
        int k, p, deferred;
        size_t slot;
        void *tag;
        analysis_metrics met;
        avc_analysis_info info;
    };
    std::vector<pending> pend;
    std::vector<buf> slots;
    size_t pend_bytes = 0;
    avc_result_fn sink = nullptr;
    void *sink_ctx = nullptr;
    buf gV, gZ, gZ2, gZd, gYd, gG, gW, gtr, gptr; /* a flush's batched iteration */
    void *host2 = nullptr; /* pinned: the pointer arrays of a flush */
    size_t host2_cap = 0;
    /* phases 3 and 4 on a second stream beside the iteration (a created stream only) */
    cudaStream_t side = nullptr;
    cudaEvent_t fork = nullptr, join = nullptr;
    /* deferred BF16 taps widen into a ring of nring copies (xf, then xring[1…]) by
     * turns, so the second stream may still read a tap's copy while the model goes
     * on; with copy32 an fp32 tap is copied into it too, instead of holding the
     * model until the side work has read it. tjoin[b] marks the end of the side
     * work that read buffer b (tlive[b]: recorded and not yet waited for) */
    buf xring[ANA_RING_MAX];
    cudaEvent_t tjoin[ANA_RING_MAX] = {};
    int nring = 2, copy32 = 1, tnext = 0, tlive[ANA_RING_MAX] = {};
    buf &ring(int b) { return b == 0 ? xf : xring[b]; }
    ~avc_analysis() {
        for (graphs &g : cache) g.destroy();
        if (side) cudaStreamDestroy(side);
        if (fork) cudaEventDestroy(fork);
        if (join) cudaEventDestroy(join);
        for (cudaEvent_t e : tjoin)
            if (e) cudaEventDestroy(e);
        for (buf &b : xring)
            if (b.p) cudaFree(b.p);
        for (buf *b : {&xf, &q, &mean, &scal, &V, &Y, &Z, &Zd, &G, &Gs, &W, &tr, &ones, &vec1, &dpart, &hist, &sel, &cnt,
                       &off, &rho, &xc, &C, &Z2, &gp, &vb, &yb, &st, &cand_v, &cand_i, &cnt_c, &off_c, &gV, &gZ, &gZ2, &gZd, &gYd, &gG, &gW, &gtr, &gptr})
            if (b->p) cudaFree(b->p);
        for (buf &b : slots)
            if (b.p) cudaFree(b.p);
        if (host) cudaFreeHost(host);
        if (host2) cudaFreeHost(host2);
        if (cb) cublasDestroy(cb);
        if (cublas_ws) cudaFree(cublas_ws);
    }
    averis_status get_host(size_t bytes, void **out, int second = 0) {
        void *&h = second ? host2 : host;
        size_t &cap = second ? host2_cap : host_cap;
        if (bytes > cap) {
            if (h) {
                CU_TRY(cudaStreamSynchronize(s));
                CU_TRY(cudaFreeHost(h));
                h = nullptr, cap = 0;
            }
            CU_ALLOC(cudaMallocHost(&h, bytes), bytes);
            cap = bytes;
        }
        *out = h;
        return AVERIS_OK;
    }
    template <typename T> averis_status get(buf &b, int64_t n, T **out) {
        size_t bytes = (size_t)std::max<int64_t>(n, 1) * sizeof(T);
        if (bytes > b.cap) {
            if (b.p) { /* either stream may still read it */
                CU_TRY(cudaStreamSynchronize(s));
                if (side) CU_TRY(cudaStreamSynchronize(side));
                CU_TRY(cudaFree(b.p));
                b.p = nullptr, b.cap = 0;
                if (&b == &ones) ones_n = 0;
            }
            cudaError_t e = cudaMalloc(&b.p, bytes);
            if (e != cudaSuccess)
                return averis_fail(AVERIS_ENOMEM, "cuda analysis: cannot allocate %.1f MiB (%s)", bytes / 1048576.0,
                                   cudaGetErrorString(e));
            b.cap = bytes;
        }
        *out = static_cast<T *>(b.p);
        return AVERIS_OK;
    }
};

namespace {

unsigned grid_for(int64_t n) { return (unsigned)std::min<int64_t>(std::max<int64_t>((n + ANA_THREADS - 1) / ANA_THREADS, 1), ANA_NBLK); }

int env_iters() {
    const char *e = getenv("AVERIS_ANALYSIS_ITERS");
    int v = e ? atoi(e) : 0;
    return v >= 1 && v <= 1000 ? v : AVC_ANA_ITERS;
}

double env_tol() {
    const char *e = getenv("AVERIS_ANALYSIS_TOL");
    if (!e || !*e) return 5e-5;
    double v = atof(e);
    return v >= 0 && v < 1 ? v : 5e-5;
}

/* columns up to which the Gram path runs (AVERIS_ANALYSIS_GRAM; 0: never) */
int64_t env_gram_max() {
    const char *e = getenv("AVERIS_ANALYSIS_GRAM");
    if (!e || !*e) return (int64_t)AVC_ANA_GRAM_MAX;
    long long v = atoll(e);
    return v >= 0 ? (int64_t)v : (int64_t)AVC_ANA_GRAM_MAX;
}

template <int NR>
averis_status launch_chol(avc_analysis *a, const double *G, int p1, int p2, float *W, double *tr, double *gs,
                          int threads, size_t smem, int nblocks = 2, int pb = 0) {
    if (smem > 32 * 1024) /* beside the 8 KiB static: past the 48 KiB of no opt-in */
        CU_TRY(cudaFuncSetAttribute(k_chol_inv<NR>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    k_chol_inv<NR><<<nblocks, threads, smem, a->s>>>(G, p1, p2, pb, W, tr, gs, smem > 0);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* cholqr's factorisation: W = diag(R₁⁻¹, R₂⁻¹) and the traces from the
 * P × P Gram G, one k_chol_inv launch */
averis_status chol_factor(avc_analysis *a, const double *G, int p1, int p2, float *W, double *tr, double *Gs) {
    const int pm = std::max(p1, p2);
    /* R in shared memory where the packed triangle fits beside the static 8 KiB */
    size_t smem = (size_t)pm * (pm + 1) / 2 * sizeof(double);
    const char *force = getenv("AVERIS_ANALYSIS_CHOL_GLOBAL"); /* tests: the global-memory path */
    if ((force && *force == '1') || smem + 2 * AVC_ANA_PMAX * sizeof(double) + 1024 > (size_t)a->smem_optin) smem = 0;
    int threads = pm <= 32 ? 256 : pm <= 64 ? 512 : 1024;
    if (pm <= 32) CU_OK(launch_chol<1>(a, G, p1, p2, W, tr, Gs, threads, smem));
    else if (pm <= 64) CU_OK(launch_chol<2>(a, G, p1, p2, W, tr, Gs, threads, smem));
    else if (pm <= 256) CU_OK(launch_chol<8>(a, G, p1, p2, W, tr, Gs, threads, smem));
    else CU_OK(launch_chol<(AVC_ANA_PMAX + 31) / 32>(a, G, p1, p2, W, tr, Gs, threads, smem));
    return AVERIS_OK;
}

/* Cholesky-QR of both blocks of the m × (p1 + p2) panel Z into V: Zd = Z in
 * fp64, G = ZdᵀZd (the P × P Gram, panel_gram; only its diagonal blocks are
 * used), one k_chol_inv launch (a thread block per block) for the
 * block-diagonal W = diag(R₁⁻¹, R₂⁻¹) and tr = tr(Z_bᵀZ_b) of both blocks on
 * the device, V = Z W (one SGEMM). */
/* G = ZdᵀZd (P × P, fp64) of the m × P panel Zd: one DGEMM, or with S > 1
 * (m a multiple of S) S batched DGEMMs over row chunks of m / S into Gp
 * [S × P²], summed in chunk order (a P × P output has few tiles for one) */
averis_status panel_gram(avc_analysis *a, const double *Zd, int64_t m, int P, double *G, double *Gp, int S) {
    const double one = 1.0, zero = 0.0;
    if (S > 1 && Gp && m % S == 0) {
        const int64_t c = m / S;
        CU_CUBLAS_TRY(cublasDgemmStridedBatched(a->cb, CUBLAS_OP_T, CUBLAS_OP_N, P, P, (int)c, &one, Zd, (int)m, c, Zd,
                                                (int)m, c, &zero, Gp, P, (long long)P * P, S));
        k_sum_parts<<<grid_for((int64_t)P * P), ANA_THREADS, 0, a->s>>>(Gp, S, (int64_t)P * P, G);
        CU_LAUNCHED();
    } else {
        CU_CUBLAS_TRY(cublasDgemm(a->cb, CUBLAS_OP_T, CUBLAS_OP_N, P, P, (int)m, &one, Zd, (int)m, Zd, (int)m, &zero, G, P));
    }
    return AVERIS_OK;
}

averis_status cholqr(avc_analysis *a, const float *Z, float *V, int64_t m, int p1, int p2, double *Zd, double *G,
                     double *Gs, float *W, double *tr, double *Gp = nullptr, int S = 0) {
    const float onef = 1.0f, zerof = 0.0f;
    const int P = p1 + p2;
    k_to_f64<<<grid_for(m * P), ANA_THREADS, 0, a->s>>>(Z, Zd, m * P);
    CU_LAUNCHED();
    CU_OK(panel_gram(a, Zd, m, P, G, Gp, S));
    CU_OK(chol_factor(a, G, p1, p2, W, tr, Gs));
    CU_CUBLAS_TRY(cublasSgemm(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, P, P, &onef, Z, (int)m, W, P, &zerof, V, (int)m));
    return AVERIS_OK;
}

/* Y = X V over the panel; block 2 (columns p1…) centred: Y₂ −= 1·(μᵀV₂) */
averis_status panel_xv(avc_analysis *a, const float *X, const float *mean, const float *ones, int64_t l, int64_t m,
                       int p1, int p2, const float *V, float *Y, float *tmp) {
    const float one = 1.0f, zero = 0.0f, neg = -1.0f;
    int P = p1 + p2;
    CU_CUBLAS_TRY(cublasSgemm(a->cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)l, P, (int)m, &one, X, (int)m, V, (int)m, &zero, Y, (int)l));
    CU_CUBLAS_TRY(cublasSgemv(a->cb, CUBLAS_OP_T, (int)m, p2, &one, V + (int64_t)p1 * m, (int)m, mean, 1, &zero, tmp, 1));
    CU_CUBLAS_TRY(cublasSger(a->cb, (int)l, p2, &neg, ones, 1, tmp, 1, Y + (int64_t)p1 * l, (int)l));
    return AVERIS_OK;
}

/* the magnitude that is the cnt-th largest, by a 3-pass radix select of the
 * keys, left in sel[0] on the device (no host round trip) */
averis_status select_threshold(cudaStream_t st, const float *X, int64_t n, int64_t cnt, unsigned *hist, long long *sel,
                               const long long *gate = nullptr, int want = 0) {
    static const int shift[3] = {20, 9, 0}, width[3] = {11, 11, 9};
    CU_TRY(cudaMemsetAsync(hist, 0, 2048 * sizeof(unsigned), st)); /* k_pick zeroes it after each pass */
    for (int pass = 0; pass < 3; pass++) {
        k_hist<<<grid_for(n), ANA_THREADS, 0, st>>>(X, n, shift[pass], width[pass], sel, hist, gate, want);
        CU_LAUNCHED();
        k_pick<<<1, ANA_PICK, 0, st>>>(hist, width[pass], pass == 0, (long long)cnt, sel, gate, want);
        CU_LAUNCHED();
    }
    return AVERIS_OK;
}

/* Cholesky-QR's Gram in AVERIS_ANALYSIS_GRAM_SPLIT row chunks (2…64) where the
 * panel has ≥ 256 rows a chunk; default 0: one DGEMM */
int env_gram_split(int64_t m) {
    const char *e = getenv("AVERIS_ANALYSIS_GRAM_SPLIT");
    const int S = e && *e ? atoi(e) : 0;
    return S >= 2 && S <= 64 && m % S == 0 && m / S >= 256 ? S : 0;
}

/* a deferred BF16 tap's Gram matrices on BF16 tensor cores from X (the
 * default; with the copies of fp32 taps 8 % off a bf16 analysis step of the 88M
 * shape, H100, 2026-12-07);
 * AVERIS_ANALYSIS_GRAM_BF16=0: TF32 on the centred fp32 copy */
int env_gram_bf16() {
    const char *e = getenv("AVERIS_ANALYSIS_GRAM_BF16");
    return !(e && *e == '0');
}

/* the panel iteration of a BF16 tensor on BF16 tensor cores (default);
 * AVERIS_ANALYSIS_PANEL_BF16=0: TF32 on its fp32 copy, as an fp32 tensor */
int env_panel_bf16() {
    const char *e = getenv("AVERIS_ANALYSIS_PANEL_BF16");
    return !(e && *e == '0');
}

/* the sampled select's candidate buffer: ANA_CAND_MUL·cnt elements */
int64_t cand_cap(int64_t cnt) { return ANA_CAND_MUL * cnt; }

/* the sampled select (AVERIS_ANALYSIS_SELECT=radix: the 3-pass one alone) */
int env_sampled_select() {
    const char *e = getenv("AVERIS_ANALYSIS_SELECT");
    return !(e && !strcmp(e, "radix"));
}

/* One tap's shape and device buffers: what a captured graph bakes in. */
struct ana_job {
    cudaStream_t side; /* phases 3 and 4 (the stream, or a second one beside it) */
    int64_t l, m, n, cnt, nch;
    int p1, p2, gram;
    int step2; /* Gram path: two products by C per orthonormalisation (Z2 between them) */
    int gsplit; /* Cholesky-QR's Gram G = ZdᵀZd as gsplit batched DGEMMs over row chunks, summed (Gp: their parts; 0: one DGEMM) */
    double *Gp;
    const float *X;
    /* the panel iteration on a BF16 input: X as it came (BF16), and the panels
     * V and Y rounded to BF16 beside their fp32 copies (null: TF32 on X) */
    const __nv_bfloat16 *Xb;
    __nv_bfloat16 *Vb, *Yb;
    /* a deferred BF16 tap's Gram on BF16 tensor cores from X as it came (exact
     * products, fp32 sums; the default), null: TF32 on Xc (AVERIS_ANALYSIS_GRAM_BF16=0) */
    const __nv_bfloat16 *Gb;
    float *mean, *scal, *V, *Y, *Z, *W, *ones, *vec1, *Xc, *C, *Z2;
    double *Zd, *G, *Gs, *tr, *dpart, *rho;
    long long *sel;
    unsigned *cnt_d, *hist;
    int64_t *off_d;
    /* the sampled select: its state, the candidates and their chunk counts (0 cap: the 3-pass select alone) */
    int64_t cap, nch_c;
    long long *st, *cand_i;
    float *cand_v;
    unsigned *cnt_c;
    int64_t *off_c;
};

/* the Gram path (m ≤ AVERIS_ANALYSIS_GRAM): Cc = XcᵀXc of the centred copy
 * (at j.C + m²) and C₁ = Cc + l·μμᵀ (at j.C), once (TF32, the rounding of X
 * the panel GEMMs would see each iteration, the centring exact before it);
 * then each iteration is Z₁ = C₁V₁, Z₂ = Cc V₂ on m × m, never reading X */
averis_status gram_form(avc_analysis *a, const ana_job &j) {
    cudaStream_t s = a->s;
    const int64_t m = j.m, l = j.l;
    const float onef = 1.0f, zerof = 0.0f;
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_TF32_TENSOR_OP_MATH));
    if (j.Gb) { /* C₁ = XᵀX from the BF16 values (exact products), Cc = C₁ − l·μμᵀ */
        CU_CUBLAS_TRY(cublasGemmEx(a->cb, CUBLAS_OP_N, CUBLAS_OP_T, (int)m, (int)m, (int)l, &onef, j.Gb, CUDA_R_16BF,
                                   (int)m, j.Gb, CUDA_R_16BF, (int)m, &zerof, j.C, CUDA_R_32F, (int)m, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
        k_gram_c<<<grid_for(m * m), ANA_THREADS, 0, s>>>(j.C, j.mean, (double)l, j.C + m * m, m);
        CU_LAUNCHED();
        return AVERIS_OK;
    }
    k_center<<<4 * ANA_NBLK, ANA_THREADS, 0, s>>>(j.X, j.mean, j.Xc, j.n, m);
    CU_LAUNCHED();
    CU_CUBLAS_TRY(cublasSgemm(a->cb, CUBLAS_OP_N, CUBLAS_OP_T, (int)m, (int)m, (int)l, &onef, j.Xc, (int)m, j.Xc,
                              (int)m, &zerof, j.C + m * m, (int)m));
    k_gram1<<<grid_for(m * m), ANA_THREADS, 0, s>>>(j.C + m * m, j.mean, (double)l, j.C, m);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* Σx² (1., after cq_colstats), the start panel and its Cholesky-QR, and on
 * the Gram path Cc = XcᵀXc and C₁ = Cc + l·μμᵀ (2.) */
averis_status stage_pre(avc_analysis *a, const ana_job &j) {
    cudaStream_t s = a->s;
    const int P = j.p1 + j.p2;
    const int64_t m = j.m;
    std::optional<cu_prof_scope> phase;
    phase.emplace("analysis 1: column stats, sum of squares", s);
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
    k_sumsq<<<ANA_NBLK, ANA_THREADS, 0, s>>>(j.X, j.n, j.dpart);
    CU_LAUNCHED();
    phase.reset();
    phase.emplace(j.gram ? "analysis 2: Gram matrix and subspace iteration" : "analysis 2: subspace iteration (panel)", s);
    k_start<<<grid_for(m * P), ANA_THREADS, 0, s>>>(j.V, m * P, 0x5eed1234u);
    CU_LAUNCHED();
    CU_OK(cholqr(a, j.V, j.Z, m, j.p1, j.p2, j.Zd, j.G, j.Gs, j.W, j.tr, j.Gp, j.gsplit));
    CU_TRY(cudaMemcpyAsync(j.V, j.Z, (size_t)(m * P) * sizeof(float), cudaMemcpyDeviceToDevice, s));
    /* the iterations only find the subspace: their GEMMs on X may use TF32
     * tensor cores (an angle error ~1e-3, i.e. ~1e-6 on the Ritz values);
     * the Rayleigh–Ritz step runs in full fp32 */
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_TF32_TENSOR_OP_MATH));
    if (j.gram) CU_OK(gram_form(a, j));
    return AVERIS_OK;
}

/* out [rows × P] (fp32) = op(Xb)·inb [inner × P] on BF16 tensor cores, fp32 sums; Xb
 * is the l × m tensor, row-major (ld m) */
averis_status bf16_gemm(avc_analysis *a, const __nv_bfloat16 *Xb, int64_t m, cublasOperation_t op, int64_t rows,
                        int64_t inner, int P, const __nv_bfloat16 *inb, float *out) {
    const float onef = 1.0f, zerof = 0.0f;
    CU_CUBLAS_TRY(cublasGemmEx(a->cb, op, CUBLAS_OP_N, (int)rows, P, (int)inner, &onef, Xb, CUDA_R_16BF, (int)m, inb,
                               CUDA_R_16BF, (int)inner, &zerof, out, CUDA_R_32F, (int)rows, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
    return AVERIS_OK;
}

/* a product of the BF16 panel iteration: out [rows × P] = op(X)·in with in
 * [inner × P] rounded to BF16 first (in place; its BF16 copy in inb), then
 * block 2 centred on the same rounded panel: out₂ −= u·(wᵀ in₂) (Y = X V:
 * w = μ, u = 1; Z = Xᵀ Y: w = 1, u = μ) */
averis_status bf16_product(avc_analysis *a, const ana_job &j, cublasOperation_t op, int64_t rows, int64_t inner,
                           float *in, __nv_bfloat16 *inb, float *out, const float *w, const float *u) {
    const float onef = 1.0f, zerof = 0.0f, neg = -1.0f;
    const int p1 = j.p1, p2 = j.p2, P = p1 + p2;
    k_round_bf16<<<grid_for(inner * P), ANA_THREADS, 0, a->s>>>(in, inb, inner * P);
    CU_LAUNCHED();
    CU_OK(bf16_gemm(a, j.Xb, j.m, op, rows, inner, P, inb, out));
    CU_CUBLAS_TRY(cublasSgemv(a->cb, CUBLAS_OP_T, (int)inner, p2, &onef, in + (int64_t)p1 * inner, (int)inner, w, 1,
                              &zerof, j.vec1, 1));
    CU_CUBLAS_TRY(cublasSger(a->cb, (int)rows, p2, &neg, u, 1, j.vec1, 1, out + (int64_t)p1 * rows, (int)rows));
    return AVERIS_OK;
}

/* one subspace iteration: block 1 on X (C₁), block 2 on Xc (Cc), then
 * Cholesky-QR of both blocks back into V; tr holds both blocks' traces */
averis_status stage_iter(avc_analysis *a, const ana_job &j) {
    const float onef = 1.0f, zerof = 0.0f, neg = -1.0f;
    const int p1 = j.p1, p2 = j.p2, P = p1 + p2;
    const int64_t m = j.m, l = j.l;
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_TF32_TENSOR_OP_MATH));
    if (j.gram) { /* Z = C V, or with step2 Z2 = C V first, then Z = C Z2 */
        const float *in = j.V;
        const int nprod = j.step2 ? 2 : 1;
        for (int k = 0; k < nprod; k++) {
            float *out = k + 1 < nprod ? j.Z2 : j.Z;
            CU_CUBLAS_TRY(cublasSgemm(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, p1, (int)m, &onef, j.C, (int)m, in, (int)m,
                                      &zerof, out, (int)m));
            CU_CUBLAS_TRY(cublasSgemm(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, p2, (int)m, &onef, j.C + m * m, (int)m,
                                      in + (int64_t)p1 * m, (int)m, &zerof, out + (int64_t)p1 * m, (int)m));
            in = out;
        }
    } else if (j.Xb) {
        /* a BF16 tensor (the LM head's gradient): the products on BF16 tensor cores
         * from X as it came, with V and Y rounded to BF16 (fp32 sums); the centring
         * terms use the same rounded panels, so each product is the exact centred
         * operator's on them. Only the subspace is found here: Rayleigh–Ritz (stage_rr)
         * reads X in full fp32 */
        CU_OK(bf16_product(a, j, CUBLAS_OP_T, l, m, j.V, j.Vb, j.Y, j.mean, j.ones)); /* Y = Xc V */
        CU_OK(bf16_product(a, j, CUBLAS_OP_N, m, l, j.Y, j.Yb, j.Z, j.ones, j.mean)); /* Z = Xcᵀ Y */
    } else {
        CU_OK(panel_xv(a, j.X, j.mean, j.ones, l, m, p1, p2, j.V, j.Y, j.vec1));
        CU_CUBLAS_TRY(cublasSgemm(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, P, (int)l, &onef, j.X, (int)m, j.Y, (int)l,
                                  &zerof, j.Z, (int)m));
        CU_CUBLAS_TRY(cublasSgemv(a->cb, CUBLAS_OP_T, (int)l, p2, &onef, j.Y + (int64_t)p1 * l, (int)l, j.ones, 1, &zerof,
                                  j.vec1, 1));
        CU_CUBLAS_TRY(cublasSger(a->cb, (int)m, p2, &neg, j.mean, 1, j.vec1, 1, j.Z + (int64_t)p1 * m, (int)m));
    }
    return cholqr(a, j.Z, j.V, m, p1, p2, j.Zd, j.G, j.Gs, j.W, j.tr, j.Gp, j.gsplit);
}

/* 2b. re-orthonormalise, Rayleigh–Ritz's B_b = (X V_b)ᵀ(X V_b) in fp64 */
averis_status stage_rr(avc_analysis *a, const ana_job &j) {
    cudaStream_t s = a->s;
    const double oned = 1.0, zerod = 0.0;
    const int p1 = j.p1, p2 = j.p2, P = p1 + p2;
    const int64_t m = j.m, l = j.l;
    std::optional<cu_prof_scope> phase;
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
    phase.emplace("analysis 2b: Rayleigh-Ritz", s);
    /* re-orthonormalise (Cholesky-QR twice), then Rayleigh–Ritz: B_b = (X V_b)ᵀ(X V_b) */
    CU_TRY(cudaMemcpyAsync(j.Z, j.V, (size_t)(m * P) * sizeof(float), cudaMemcpyDeviceToDevice, s));
    CU_OK(cholqr(a, j.Z, j.V, m, p1, p2, j.Zd, j.G, j.Gs, j.W, j.tr, j.Gp, j.gsplit));
    CU_OK(panel_xv(a, j.X, j.mean, j.ones, l, m, p1, p2, j.V, j.Y, j.vec1));
    k_to_f64<<<grid_for(l * P), ANA_THREADS, 0, s>>>(j.Y, j.Zd, l * P);
    CU_LAUNCHED();
    CU_CUBLAS_TRY(cublasDgemm(a->cb, CUBLAS_OP_T, CUBLAS_OP_N, p1, p1, (int)l, &oned, j.Zd, (int)l, j.Zd, (int)l, &zerod,
                              j.G, p1));
    CU_CUBLAS_TRY(cublasDgemm(a->cb, CUBLAS_OP_T, CUBLAS_OP_N, p2, p2, (int)l, &oned, j.Zd + (int64_t)p1 * l, (int)l,
                              j.Zd + (int64_t)p1 * l, (int)l, &zerod, j.G + (int64_t)AVC_ANA_PMAX * AVC_ANA_PMAX, p2));

    return AVERIS_OK;
}

/* the exact select over x [n] (X itself, or the sampled select's candidates
 * with their indices idx), then the counts per chunk of its nch, their scan
 * and ρ at its rank; the kernels run only where *gate says `want` (both
 * paths are launched, one returns at once; gate NULL: always) */
averis_status exact_rho(cudaStream_t s, const ana_job &j, const float *x, int64_t n, int64_t nch, unsigned *cnt,
                        int64_t *off, const long long *gate, int want, const long long *idx) {
    CU_OK(select_threshold(s, x, n, j.cnt, j.hist, j.sel, gate, want));
    k_count_ge<<<(unsigned)nch, ANA_THREADS, 0, s>>>(x, n, j.sel, cnt, gate, want);
    CU_LAUNCHED();
    k_offsets<<<1, ANA_PICK, 0, s>>>(cnt, nch, (long long)j.cnt, off, j.sel, gate, want);
    CU_LAUNCHED();
    k_rho<<<(unsigned)nch, ANA_THREADS, 0, s>>>(x, j.mean, n, j.m, j.sel, off, j.rho, gate, want, idx);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* 3. the top-0.1% threshold and ρ; 4. the NVFP4 round trips: on j.side,
 * beside the iteration (they read X and μ only) */
averis_status stage_side(avc_analysis *a, const ana_job &j) {
    (void)a;
    cudaStream_t s = j.side;
    const int64_t m = j.m, l = j.l;
    std::optional<cu_prof_scope> phase;
    phase.emplace("analysis 3: top-0.1% select and rho", s);
    /* 3. ρ over the top 0.1%, on the device: the threshold (sel[0]), the
     * chunk counts, their scan, ρ at its rank (sel[2] of them) */
    const long long *gate = nullptr;
    if (j.cap > 0) {
        /* the sampled select: a threshold from a sample, the candidates ≥ it, the exact
         * select and ρ among them; the 3-pass path below runs only where st[1] = 0 */
        gate = j.st;
        k_sample_thr<<<1, ANA_PICK, 0, s>>>(j.X, j.n, (long long)j.cnt, j.st);
        CU_LAUNCHED();
        k_count_ge<<<(unsigned)j.nch, ANA_THREADS, 0, s>>>(j.X, j.n, j.st, j.cnt_d);
        CU_LAUNCHED();
        k_cand_offsets<<<1, ANA_PICK, 0, s>>>(j.cnt_d, j.nch, (long long)j.cnt, (long long)j.cap, j.off_d, j.st);
        CU_LAUNCHED();
        CU_TRY(cudaMemsetAsync(j.cand_v, 0, (size_t)j.cap * sizeof(float), s)); /* zeros past the candidates */
        k_compact<<<(unsigned)j.nch, ANA_THREADS, 0, s>>>(j.X, j.n, j.st, j.off_d, j.cand_v, j.cand_i);
        CU_LAUNCHED();
        CU_OK(exact_rho(s, j, j.cand_v, j.cap, j.nch_c, j.cnt_c, j.off_c, gate, 1, j.cand_i));
    }
    CU_OK(exact_rho(s, j, j.X, j.n, j.nch, j.cnt_d, j.off_d, gate, 0, nullptr));

    phase.reset();
    phase.emplace("analysis 4: NVFP4 round trips and errors", s);
    /* 4. NVFP4 round trips along the features, all four transforms at once:
     * one read for their amaxes, one for the round trips and their errors */
    const int vec = m % 16 == 0;
    CU_TRY(cudaMemsetAsync(j.scal + 1, 0, ANALYSIS_NQ * sizeof(float), s));
    k_qamax4<<<grid_for(l * ((m + 15) / 16)), ANA_THREADS, 0, s>>>(j.X, j.mean, l, m, vec, j.scal + 1);
    CU_LAUNCHED();
    if (vec) k_qerr4<1><<<ANA_NBLK, ANA_THREADS, 0, s>>>(j.X, j.mean, l, m, j.scal + 1, j.dpart);
    else k_qerr4<0><<<ANA_NBLK, ANA_THREADS, 0, s>>>(j.X, j.mean, l, m, j.scal + 1, j.dpart);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* a stage captured into an executable graph */
averis_status capture(avc_analysis *a, const ana_job &j, averis_status (*stage)(avc_analysis *, const ana_job &),
                      cudaStream_t st_cap, cudaGraphExec_t *out) {
    *out = nullptr;
    CU_TRY(cudaStreamBeginCapture(st_cap, cudaStreamCaptureModeThreadLocal));
    averis_status st = stage(a, j);
    cudaGraph_t g = nullptr;
    cudaError_t e = cudaStreamEndCapture(st_cap, &g);
    if (!st && (e != cudaSuccess || !g))
        st = averis_fail(AVERIS_EIO, "cuda analysis: stream capture failed: %s", cudaGetErrorString(e));
    if (!st && (e = cudaGraphInstantiate(out, g, 0)) != cudaSuccess) {
        *out = nullptr;
        st = averis_fail(AVERIS_EIO, "cuda analysis: graph instantiation failed: %s", cudaGetErrorString(e));
    }
    if (g) cudaGraphDestroy(g);
    (void)cudaGetLastError();
    return st;
}

/* the graphs' key: the shape, every device pointer, the settings read while capturing */
std::vector<int64_t> job_key(const ana_job &j) {
    const char *cg = getenv("AVERIS_ANALYSIS_CHOL_GLOBAL");
    std::vector<int64_t> k = {j.l, j.m, j.p1, j.p2, j.gram, cg && *cg == '1', j.step2, j.cap, j.gsplit};
    for (const void *p : {(const void *)j.Z2, (const void *)j.X, (const void *)j.mean, (const void *)j.scal, (const void *)j.V,
                          (const void *)j.Y, (const void *)j.Z, (const void *)j.W, (const void *)j.ones,
                          (const void *)j.vec1, (const void *)j.Xc, (const void *)j.C, (const void *)j.Zd,
                          (const void *)j.G, (const void *)j.Gs, (const void *)j.Gp, (const void *)j.tr, (const void *)j.dpart,
                          (const void *)j.rho, (const void *)j.sel, (const void *)j.cnt_d, (const void *)j.hist,
                          (const void *)j.off_d, (const void *)j.st, (const void *)j.cand_i, (const void *)j.cand_v,
                          (const void *)j.cnt_c, (const void *)j.off_c})
        k.push_back((int64_t)reinterpret_cast<intptr_t>(p));
    return k;
}

/* the metrics from what the device computed, as analysis_compute writes
 * them: part the fp64 partial sums (ANA_SLOTS rows of ANA_NBLK), B₁ (p1 × p1)
 * and B₂ (p2 × p2) the Rayleigh–Ritz matrices, V1 [m × p1] (column-major)
 * block 1's panel, mu_h μ, rho_h the ρ of the top 0.1 %; used products */
averis_status finish_metrics(int64_t l, int64_t m, int k, int p1, int p2, int used, const double *part,
                             std::vector<double> &B1, std::vector<double> &B2, const float *V1, const float *mu_h,
                             std::vector<double> &rho_h, analysis_metrics *out, avc_analysis_info *info) {
    const int64_t g = std::min(l, m);
    auto slot = [&](int sl) {
        double t = 0;
        for (int b = 0; b < ANA_NBLK; b++) t += part[(size_t)sl * ANA_NBLK + b];
        return t;
    };

    /* the metrics, as analysis_compute writes them */
    double total = slot(0), mu2 = 0;
    for (int64_t j = 0; j < m; j++) mu2 += (double)mu_h[(size_t)j] * mu_h[(size_t)j];
    out->mean_norm = sqrt(mu2);
    out->rms_token_norm = sqrt(total / (double)l);
    out->R = total > 0 ? out->mean_norm / out->rms_token_norm : 0.0;
    /* eigenvalues, and block 1's top eigenvector u1 (v₁ = V1·u1), on the host (src/analysis.c: QL and inverse
     * iteration; cyclic Jacobi with vectors before, 0.6 ms at p = 29 against 0.05) */
    std::vector<double> w1((size_t)p1), u1((size_t)p1), w2((size_t)p2), A1(B1);
    CU_OK(analysis_sym_eigvals(A1.data(), p1, w1.data()));
    CU_OK(analysis_top_eigvec(B1.data(), p1, w1[0], u1.data()));
    CU_OK(analysis_sym_eigvals(B2.data(), p2, w2.data()));
    out->sigma1 = total > 0 ? sqrt(std::max(w1[0], 0.0)) : 0.0;
    if (info) {
        info->sigma2 = p1 > 1 ? sqrt(std::max(w1[1], 0.0)) : 0.0;
        info->iters = used, info->p1 = p1, info->p2 = p2;
        /* the block's convergence factor for θ₁, (θ_p1/θ₁)^iters (θ_p1 ≥ λ_{p1+1}: an upper bound) */
        info->conv1 = p1 < g && w1[0] > 0 ? pow(std::max(w1[(size_t)p1 - 1], 0.0) / w1[0], used) : 0.0;
    }
    double dot = 0, vn = 0;
    for (int64_t j = 0; j < m; j++) {
        double v = 0;
        for (int c = 0; c < p1; c++) v += (double)V1[(size_t)(c * m + j)] * u1[(size_t)c];
        dot += (double)mu_h[(size_t)j] * v;
        vn += v * v;
    }
    out->cos_mu_v1 = out->mean_norm > 0 && vn > 0 ? fabs(dot) / (out->mean_norm * sqrt(vn)) : 0.0;
    double e_spike = 0;
    for (int i = 0; i < k && i < p2; i++) e_spike += std::max(w2[(size_t)i], 0.0);
    analysis_energy_split(total, (double)l * mu2, e_spike, k, out);
    int64_t r = (int64_t)rho_h.size();
    out->top_count = r;
    if (r > 0) {
        int64_t half = 0;
        for (double v : rho_h) half += v > 0.5;
        out->rho_frac_half = (double)half / (double)r;
        std::nth_element(rho_h.begin(), rho_h.begin() + r / 2, rho_h.end());
        double hi = rho_h[(size_t)(r / 2)];
        if (r % 2) out->rho_median = hi;
        else out->rho_median = 0.5 * (*std::max_element(rho_h.begin(), rho_h.begin() + r / 2) + hi);
    }
    for (int qv = 0; qv < ANALYSIS_NQ; qv++) {
        double err = slot(1 + 3 * qv), nz = slot(2 + 3 * qv), fl = slot(3 + 3 * qv);
        out->q_rel_mse[qv] = total > 0 ? err / total : (err > 0 ? INFINITY : 0.0);
        out->q_flushed[qv] = nz > 0 ? fl / nz : 0.0;
    }
    return AVERIS_OK;
}

/* phases 3 and 4's stream: the second one where there is one (AVERIS_ANALYSIS_SIDE=0: none) */
cudaStream_t side_stream(const avc_analysis *a) {
    const char *e = getenv("AVERIS_ANALYSIS_SIDE");
    return a->side && !(e && *e == '0') ? a->side : a->s;
}

/* the scratch of phase 3 for job j (after j.cnt and j.nch are set): the
 * histogram, the chunk counts and offsets, and the sampled select's */
averis_status select_bufs(avc_analysis *a, ana_job &j) {
    CU_OK(a->get(a->hist, 2048, &j.hist));
    CU_OK(a->get(a->cnt, j.nch, &j.cnt_d));
    CU_OK(a->get(a->off, j.nch, &j.off_d));
    if (!env_sampled_select()) {
        j.cap = 0;
        return AVERIS_OK;
    }
    j.cap = cand_cap(j.cnt);
    j.nch_c = (j.cap + ANA_CHUNK - 1) / ANA_CHUNK;
    CU_OK(a->get(a->st, 4, &j.st));
    CU_OK(a->get(a->cand_v, j.cap, &j.cand_v));
    CU_OK(a->get(a->cand_i, j.cap, &j.cand_i));
    CU_OK(a->get(a->cnt_c, j.nch_c, &j.cnt_c));
    CU_OK(a->get(a->off_c, j.nch_c, &j.off_c));
    return AVERIS_OK;
}

/* ------------------------------------------------ deferred taps */
/* a deferred tap's slot: byte offsets of its device results */
struct slot_layout {
    size_t c, mean, scal, dpart, rho, sel, end;
};
slot_layout layout_for(int64_t m, int64_t cnt) {
    auto up = [](size_t b) { return (b + 255) / 256 * 256; };
    slot_layout L;
    L.c = 0;
    L.mean = up(L.c + (size_t)(2 * m * m) * sizeof(float));
    L.scal = up(L.mean + (size_t)m * sizeof(float));
    L.dpart = up(L.scal + 8 * sizeof(float));
    L.rho = up(L.dpart + (size_t)ANA_SLOTS * ANA_NBLK * sizeof(double));
    L.sel = up(L.rho + (size_t)std::max<int64_t>(cnt, 1) * sizeof(double));
    L.end = up(L.sel + 4 * sizeof(long long));
    return L;
}

/* the deferred taps' copies for the second stream: AVERIS_ANALYSIS_RING buffers
 * (2…ANA_RING_MAX, default 2; 4 gave no more: 179.8 ms, 180.0 with 2), and fp32 taps
 * copied too (the default: the model goes on while the side work reads the
 * copy; AVERIS_ANALYSIS_COPY32=0: the model waits for the side work on its own
 * tensor). With the BF16 Gram: 194.7 → 179.8 ms a bf16 analysis step of the 88M
 * shape (H100, 2026-12-07). */
void env_ring(int *nring, int *copy32) {
    const char *e = getenv("AVERIS_ANALYSIS_RING");
    const int r = e && *e ? atoi(e) : 2;
    *nring = std::min(std::max(r, 2), (int)ANA_RING_MAX);
    e = getenv("AVERIS_ANALYSIS_COPY32");
    *copy32 = !(e && *e == '0');
}

/* MiB the queued slots may take (AVERIS_ANALYSIS_DEFER; 0: no deferral) */
size_t env_defer_bytes() {
    const char *e = getenv("AVERIS_ANALYSIS_DEFER");
    long long v = e && *e ? atoll(e) : 4096;
    return v > 0 ? (size_t)v << 20 : 0;
}

/* the blocks of a tap: p1 for v₁, p2 = k + oversampling for the spike */
void blocks_for(int64_t l, int64_t m, int *k, int *p1, int *p2) {
    int64_t g = std::min(l, m);
    *k = std::max(1, (int)ceil(0.01 * (double)g));
    *p1 = (int)std::min<int64_t>(AVC_ANA_P1, g);
    *p2 = (int)std::min<int64_t>(*k + AVC_ANA_OVER, g);
}

/* at the tap: μ, Σx², the top-0.1 % select and ρ, the NVFP4 errors (into the
 * slot) and the two Gram matrices (into the slot); X is not read after */
averis_status tap_stage(avc_analysis *a, const void *x_dev, int bf16, int64_t l, int64_t m, int64_t cnt, char *slot,
                        const slot_layout &L) {
    cudaStream_t s = a->s;
    const int64_t n = l * m;
    const float *X = static_cast<const float *>(x_dev);
    ana_job jb = {};
    jb.side = side_stream(a);
    /* a BF16 X is widened into a copy of the analysis's own, the ring's buffers by
     * turns: the second stream's reads of it need not hold the model up; an fp32 X
     * is the model's tensor, so the model waits for them, unless copy32 copies it
     * into the ring too (AVERIS_ANALYSIS_COPY32) */
    const int tb = (bf16 || a->copy32) && jb.side != s ? (a->tnext = (a->tnext + 1) % a->nring) : -1;
    if (tb >= 0 && a->tlive[tb]) { /* the side work that read this buffer nring taps ago */
        CU_TRY(cudaStreamWaitEvent(s, a->tjoin[tb], 0));
        a->tlive[tb] = 0;
    }
    if (bf16 || tb >= 0) {
        float *xf = nullptr;
        CU_OK(a->get(a->ring(tb >= 0 ? tb : 0), n, &xf));
        if (bf16) {
            k_widen<<<4 * ANA_NBLK, ANA_THREADS, 0, s>>>(static_cast<const __nv_bfloat16 *>(x_dev), xf, n);
            CU_LAUNCHED();
        } else {
            CU_TRY(cudaMemcpyAsync(xf, x_dev, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, s));
        }
        X = xf;
    }
    jb.l = l, jb.m = m, jb.n = n, jb.gram = 1, jb.X = X;
    jb.cnt = cnt;
    jb.nch = (n + ANA_CHUNK - 1) / ANA_CHUNK;
    jb.C = reinterpret_cast<float *>(slot + L.c);
    jb.mean = reinterpret_cast<float *>(slot + L.mean);
    jb.scal = reinterpret_cast<float *>(slot + L.scal);
    jb.dpart = reinterpret_cast<double *>(slot + L.dpart);
    jb.rho = reinterpret_cast<double *>(slot + L.rho);
    jb.sel = reinterpret_cast<long long *>(slot + L.sel);
    CU_OK(select_bufs(a, jb));
    if (bf16 && env_gram_bf16()) jb.Gb = static_cast<const __nv_bfloat16 *>(x_dev);
    else CU_OK(a->get(a->xc, n, &jb.Xc));
    {
        std::optional<cu_prof_scope> phase;
        phase.emplace("analysis 1: column stats, sum of squares", s);
        CU_TRY(cudaMemsetAsync(jb.dpart, 0, (size_t)ANA_SLOTS * ANA_NBLK * sizeof(double), s));
        CU_OK(cq_colstats(X, 0, l, m, m, jb.mean, jb.scal, nullptr, nullptr, s));
        k_sumsq<<<ANA_NBLK, ANA_THREADS, 0, s>>>(X, n, jb.dpart);
        CU_LAUNCHED();
    }
    if (jb.side != s) {
        CU_TRY(cudaEventRecord(a->fork, s));
        CU_TRY(cudaStreamWaitEvent(jb.side, a->fork, 0));
    }
    CU_OK(stage_side(a, jb));
    {
        std::optional<cu_prof_scope> phase;
        phase.emplace("analysis 2: Gram matrices (at the tap)", s);
        CU_OK(gram_form(a, jb));
        CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
    }
    if (jb.side != s) {
        if (tb >= 0) { /* waited for before this buffer's next use, and at the flush */
            CU_TRY(cudaEventRecord(a->tjoin[tb], jb.side));
            a->tlive[tb] = 1;
        } else { /* X is the model's: the side stream's reads come first */
            CU_TRY(cudaEventRecord(a->join, jb.side));
            CU_TRY(cudaStreamWaitEvent(s, a->join, 0));
        }
    }
    return AVERIS_OK;
}

/* the stream waits for every tap's side work still outstanding */
averis_status join_taps(avc_analysis *a) {
    for (int b = 0; b < a->nring; b++)
        if (a->tlive[b]) {
            CU_TRY(cudaStreamWaitEvent(a->s, a->tjoin[b], 0));
            a->tlive[b] = 0;
        }
    return AVERIS_OK;
}

/* Cholesky-QR of nb panels m × p at once: Zin (stride m·p) into Vout */
averis_status cholqr_batched(avc_analysis *a, const float *Zin, float *Vout, int64_t m, int p, int nb, double *Zd,
                             double *G, float *W, double *tr) {
    const double one = 1.0, zero = 0.0;
    const float onef = 1.0f, zerof = 0.0f;
    const long long smp = (long long)m * p, spp = (long long)p * p;
    k_to_f64<<<grid_for(nb * smp), ANA_THREADS, 0, a->s>>>(Zin, Zd, nb * smp);
    CU_LAUNCHED();
    CU_CUBLAS_TRY(cublasDgemmStridedBatched(a->cb, CUBLAS_OP_T, CUBLAS_OP_N, p, p, (int)m, &one, Zd, (int)m, smp, Zd,
                                            (int)m, smp, &zero, G, p, spp, nb));
    size_t smem = (size_t)p * (p + 1) / 2 * sizeof(double); /* p ≤ 64: 16.3 KiB */
    if (p <= 32) CU_OK(launch_chol<1>(a, G, 0, 0, W, tr, nullptr, 256, smem, nb, p));
    else CU_OK(launch_chol<2>(a, G, 0, 0, W, tr, nullptr, 512, smem, nb, p));
    CU_CUBLAS_TRY(cublasSgemmStridedBatched(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, p, p, &onef, Zin, (int)m, smp, W, p,
                                            spp, &zerof, Vout, (int)m, smp, nb));
    return AVERIS_OK;
}

/* the subspace iteration of one group (nb = 2T panels of the same m × p:
 * block 1 of tap t on C₁ at panel 2t, block 2 on Cc at 2t + 1), then
 * Rayleigh–Ritz: B_b = V_bᵀ(C_b V_b) (fp32 GEMM, fp64 product) into G */
averis_status group_iter(avc_analysis *a, int64_t m, int p, int nb, int iters, const float *const *dC,
                         float *const *dV, float *const *dZ, float *const *dZ2, float *V, float *Z, double *Zd,
                         double *Yd, double *G, float *W, double *tr, uint32_t seed) {
    cudaStream_t s = a->s;
    const float onef = 1.0f, zerof = 0.0f;
    const double oned = 1.0, zerod = 0.0;
    const long long smp = (long long)m * p;
    k_start<<<grid_for(nb * smp), ANA_THREADS, 0, s>>>(V, nb * smp, seed);
    CU_LAUNCHED();
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
    CU_OK(cholqr_batched(a, V, Z, m, p, nb, Zd, G, W, tr));
    CU_TRY(cudaMemcpyAsync(V, Z, (size_t)(nb * smp) * sizeof(float), cudaMemcpyDeviceToDevice, s));
    for (int it = 0; it < iters; it += 2) {
        CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_TF32_TENSOR_OP_MATH));
        if (it + 1 < iters) { /* two products: Z2 = C V, Z = C Z2 */
            CU_CUBLAS_TRY(cublasSgemmBatched(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, p, (int)m, &onef, dC, (int)m,
                                             (const float *const *)dV, (int)m, &zerof, dZ2, (int)m, nb));
            CU_CUBLAS_TRY(cublasSgemmBatched(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, p, (int)m, &onef, dC, (int)m,
                                             (const float *const *)dZ2, (int)m, &zerof, dZ, (int)m, nb));
        } else {
            CU_CUBLAS_TRY(cublasSgemmBatched(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, p, (int)m, &onef, dC, (int)m,
                                             (const float *const *)dV, (int)m, &zerof, dZ, (int)m, nb));
        }
        CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
        CU_OK(cholqr_batched(a, Z, V, m, p, nb, Zd, G, W, tr));
    }
    std::optional<cu_prof_scope> phase;
    phase.emplace("analysis 2b: Rayleigh-Ritz (batched)", s);
    /* re-orthonormalise, then Y = C V in full fp32 and B = VᵀY in fp64 */
    CU_TRY(cudaMemcpyAsync(Z, V, (size_t)(nb * smp) * sizeof(float), cudaMemcpyDeviceToDevice, s));
    CU_OK(cholqr_batched(a, Z, V, m, p, nb, Zd, G, W, tr));
    CU_CUBLAS_TRY(cublasSgemmBatched(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, p, (int)m, &onef, dC, (int)m,
                                     (const float *const *)dV, (int)m, &zerof, dZ, (int)m, nb));
    k_to_f64<<<grid_for(nb * smp), ANA_THREADS, 0, s>>>(V, Zd, nb * smp);
    CU_LAUNCHED();
    k_to_f64<<<grid_for(nb * smp), ANA_THREADS, 0, s>>>(Z, Yd, nb * smp);
    CU_LAUNCHED();
    CU_CUBLAS_TRY(cublasDgemmStridedBatched(a->cb, CUBLAS_OP_T, CUBLAS_OP_N, p, p, (int)m, &oned, Zd, (int)m, smp, Yd,
                                            (int)m, smp, &zerod, G, p, (long long)p * p, nb));
    return AVERIS_OK;
}

/* every queued tap: the groups' iterations, one wait, the metrics in order */
averis_status flush_impl(avc_analysis *a) {
    cudaStream_t s = a->s;
    const int iters = env_iters();
    CU_OK(join_taps(a)); /* the slots' side results, and the ring free for others */
    /* groups by (m, p), in order of first appearance */
    struct group {
        int64_t m;
        int p;
        std::vector<size_t> taps;
        size_t o_b, o_v; /* host offsets (doubles) of B [2T × p²] and V₁ [T × m × p floats] */
    };
    std::vector<group> gs;
    for (size_t i = 0; i < a->pend.size(); i++) {
        const avc_analysis::pending &e = a->pend[i];
        if (!e.deferred) continue;
        group *g = nullptr;
        for (group &c : gs)
            if (c.m == e.m && c.p == e.p) g = &c;
        if (!g) {
            gs.push_back(group{e.m, e.p, {}, 0, 0});
            g = &gs.back();
        }
        g->taps.push_back(i);
    }
    if (gs.empty()) return AVERIS_OK;
    /* the host layout (doubles): per group B and V₁, per tap its slot from μ on */
    size_t o = 0, nptr = 0, scratch = 0;
    for (group &g : gs) {
        size_t T = g.taps.size();
        g.o_b = o, o += 2 * T * (size_t)g.p * g.p;
        g.o_v = o, o += (T * (size_t)g.m * g.p + 1) / 2;
        nptr += 8 * T;
        scratch = std::max(scratch, 2 * T * (size_t)g.m * g.p);
    }
    std::vector<size_t> o_tap(a->pend.size());
    for (size_t i = 0; i < a->pend.size(); i++) {
        const avc_analysis::pending &e = a->pend[i];
        if (!e.deferred) continue;
        o_tap[i] = o; /* the slot's bytes from μ to its end (μ, scal, part, ρ, sel), one copy */
        const slot_layout L = layout_for(e.m, e.cnt);
        o += (L.end - L.mean + sizeof(double) - 1) / sizeof(double);
    }
    double *hd = nullptr;
    CU_OK(a->get_host(o * sizeof(double), reinterpret_cast<void **>(&hd)));
    float *V = nullptr, *Z = nullptr, *Z2 = nullptr, *W = nullptr;
    double *Zd = nullptr, *Yd = nullptr, *G = nullptr, *tr = nullptr;
    size_t maxpp = 0;
    for (group &g : gs) maxpp = std::max(maxpp, 2 * g.taps.size() * (size_t)g.p * g.p);
    CU_OK(a->get(a->gV, (int64_t)scratch, &V));
    CU_OK(a->get(a->gZ, (int64_t)scratch, &Z));
    CU_OK(a->get(a->gZ2, (int64_t)scratch, &Z2));
    CU_OK(a->get(a->gZd, (int64_t)scratch, &Zd));
    CU_OK(a->get(a->gYd, (int64_t)scratch, &Yd));
    CU_OK(a->get(a->gG, (int64_t)maxpp, &G));
    CU_OK(a->get(a->gW, (int64_t)maxpp, &W));
    CU_OK(a->get(a->gtr, (int64_t)scratch / 2 + 2, &tr));
    /* the pointer arrays of every group (C, V, Z, Z2 per panel), one copy up */
    void **dptr = nullptr, **hptr = nullptr;
    CU_OK(a->get(a->gptr, (int64_t)nptr, &dptr));
    CU_OK(a->get_host(nptr * sizeof(void *), reinterpret_cast<void **>(&hptr), 1));
    {
        size_t q = 0;
        for (group &g : gs) {
            const size_t T = g.taps.size(), nb = 2 * T, smp = (size_t)g.m * g.p;
            for (size_t b = 0; b < nb; b++) {
                const avc_analysis::pending &e = a->pend[g.taps[b / 2]];
                char *slot = static_cast<char *>(a->slots[e.slot].p);
                hptr[q + b] = reinterpret_cast<float *>(slot) + (b % 2) * (size_t)(g.m * g.m);
                hptr[q + nb + b] = V + b * smp;
                hptr[q + 2 * nb + b] = Z + b * smp;
                hptr[q + 3 * nb + b] = Z2 + b * smp;
            }
            q += 4 * nb;
        }
        CU_TRY(cudaMemcpyAsync(dptr, hptr, nptr * sizeof(void *), cudaMemcpyHostToDevice, s));
    }
    {
        std::optional<cu_prof_scope> phase;
        phase.emplace("analysis 2: subspace iteration (batched)", s);
        size_t q = 0;
        for (group &g : gs) {
            const int T = (int)g.taps.size(), nb = 2 * T;
            CU_OK(group_iter(a, g.m, g.p, nb, iters, reinterpret_cast<const float *const *>(dptr + q),
                             reinterpret_cast<float *const *>(dptr + q + nb), reinterpret_cast<float *const *>(dptr + q + 2 * nb),
                             reinterpret_cast<float *const *>(dptr + q + 3 * nb), V, Z, Zd, Yd, G, W, tr, 0x5eed1234u));
            q += 4 * (size_t)nb;
            CU_TRY(cudaMemcpyAsync(hd + g.o_b, G, (size_t)nb * g.p * g.p * sizeof(double), cudaMemcpyDeviceToHost, s));
            const size_t row = (size_t)g.m * g.p * sizeof(float);
            CU_TRY(cudaMemcpy2DAsync(hd + g.o_v, row, V, 2 * row, row, (size_t)T, cudaMemcpyDeviceToHost, s));
        }
    }
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
    std::optional<cu_prof_scope> phase;
    phase.emplace("analysis 5: copies to the host, host eigensolvers", s);
    for (size_t i = 0; i < a->pend.size(); i++) {
        const avc_analysis::pending &e = a->pend[i];
        if (!e.deferred) continue;
        const slot_layout L = layout_for(e.m, e.cnt);
        const char *slot = static_cast<const char *>(a->slots[e.slot].p);
        CU_TRY(cudaMemcpyAsync(hd + o_tap[i], slot + L.mean, L.end - L.mean, cudaMemcpyDeviceToHost, s));
    }
    CU_TRY(cudaStreamSynchronize(s));
    /* the host's part (eigensolvers, the median of ρ: ~0.2–0.5 ms a tap, ~50 ms for the 88M model's
     * 156 taps on one core, H100 host, 2026-12-07) on several threads: the taps are independent */
    struct fin_item {
        avc_analysis::pending *e;
        const char *h; /* the tap's host copy of its slot from μ on (slot_layout offsets − L.mean) */
        const double *b; /* its two p × p Rayleigh–Ritz matrices */
        const float *V1;
        int p;
        int64_t top; /* its ρ count (checked here) */
    };
    std::vector<fin_item> items;
    for (group &g : gs)
        for (size_t t = 0; t < g.taps.size(); t++) {
            avc_analysis::pending &e = a->pend[g.taps[t]];
            const char *h = reinterpret_cast<const char *>(hd + o_tap[g.taps[t]]);
            const slot_layout L = layout_for(e.m, e.cnt);
            long long sel_h[4];
            memcpy(sel_h, h + (L.sel - L.mean), sizeof sel_h);
            if (sel_h[2] < 0 || sel_h[2] > e.cnt)
                return averis_fail(AVERIS_EIO, "cuda analysis: %lld top-0.1%% elements of %lld", sel_h[2], (long long)e.cnt);
            items.push_back({&e, h, hd + g.o_b + 2 * t * (size_t)g.p * g.p,
                             reinterpret_cast<const float *>(hd + g.o_v) + t * (size_t)g.m * g.p, g.p, sel_h[2]});
        }
    auto finish_one = [&](const fin_item &it) {
        avc_analysis::pending &e = *it.e;
        const int p = it.p;
        const slot_layout L = layout_for(e.m, e.cnt);
        const double *part = reinterpret_cast<const double *>(it.h + (L.dpart - L.mean));
        const double *rho = reinterpret_cast<const double *>(it.h + (L.rho - L.mean));
        const float *mu_h = reinterpret_cast<const float *>(it.h);
        std::vector<double> B[2];
        for (int b = 0; b < 2; b++) {
            const double *src = it.b + b * (size_t)p * p;
            B[b].resize((size_t)p * p);
            for (int c = 0; c < p; c++)
                for (int r = 0; r < p; r++) B[b][(size_t)c * p + r] = 0.5 * (src[(size_t)c * p + r] + src[(size_t)r * p + c]);
        }
        std::vector<double> rho_h(rho, rho + it.top);
        memset(&e.met, 0, sizeof e.met);
        memset(&e.info, 0, sizeof e.info);
        e.met.rows = e.l, e.met.cols = e.m;
        return finish_metrics(e.l, e.m, e.k, p, p, iters, part, B[0], B[1], it.V1, mu_h, rho_h, &e.met, &e.info);
    };
    const size_t nth = std::min<size_t>(items.size(), std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
    /* a thread's first failure and its message (the error text is per thread) */
    std::vector<averis_status> fail(nth, AVERIS_OK);
    std::vector<std::string> why(nth);
    auto work = [&](size_t i0) {
        for (size_t i = i0; i < items.size() && !fail[i0]; i += nth)
            if ((fail[i0] = finish_one(items[i]))) why[i0] = averis_last_error();
    };
    std::vector<std::thread> th;
    for (size_t k = 1; k < nth; k++) th.emplace_back(work, k);
    work(0);
    for (std::thread &t : th) t.join();
    for (size_t k = 0; k < nth; k++)
        if (fail[k]) return averis_fail(fail[k], "%s", why[k].c_str());
    return AVERIS_OK;
}

/* CUDA graphs for a tap (AVERIS_ANALYSIS_GRAPH=0: never) */
int env_graph() {
    const char *e = getenv("AVERIS_ANALYSIS_GRAPH");
    return !(e && *e == '0');
}

} // namespace

extern "C" {

averis_status avc_analysis_create(avc_analysis **out, void *stream) {
    *out = nullptr;
    avc_analysis *a = new avc_analysis();
    a->s = static_cast<cudaStream_t>(stream);
    if (cublasCreate(&a->cb) != CUBLAS_STATUS_SUCCESS || cublasSetStream(a->cb, a->s) != CUBLAS_STATUS_SUCCESS) {
        delete a;
        return averis_fail(AVERIS_EIO, "cuda analysis: cannot create a cuBLAS handle");
    }
    /* fp32 GEMMs stay fp32 (no TF32): the tolerances vs the CPU assume it */
    cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH);
    /* a workspace of the handle's own (after cublasSetStream, which resets it): cuBLAS then
     * picks the same kernels while a stream is captured as outside */
    const size_t ws_bytes = (size_t)32 << 20;
    if (cudaMalloc(&a->cublas_ws, ws_bytes) != cudaSuccess || cublasSetWorkspace(a->cb, a->cublas_ws, ws_bytes) != CUBLAS_STATUS_SUCCESS) {
        (void)cudaGetLastError();
        delete a;
        return averis_fail(AVERIS_ENOMEM, "cuda analysis: cannot set a 32 MiB cuBLAS workspace");
    }
    if (a->s && (cudaStreamCreateWithFlags(&a->side, cudaStreamNonBlocking) != cudaSuccess ||
                 cudaEventCreateWithFlags(&a->fork, cudaEventDisableTiming) != cudaSuccess ||
                 cudaEventCreateWithFlags(&a->join, cudaEventDisableTiming) != cudaSuccess)) {
        (void)cudaGetLastError();
        delete a;
        return averis_fail(AVERIS_EIO, "cuda analysis: cannot create its second stream");
    }
    env_ring(&a->nring, &a->copy32);
    for (int b = 0; a->side && b < a->nring; b++)
        if (cudaEventCreateWithFlags(&a->tjoin[b], cudaEventDisableTiming) != cudaSuccess) {
            (void)cudaGetLastError();
            delete a;
            return averis_fail(AVERIS_EIO, "cuda analysis: cannot create its events");
        }
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&a->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
        a->smem_optin = 48 * 1024;
    *out = a;
    return AVERIS_OK;
}

void avc_analysis_free(avc_analysis *a) {
    if (!a) return;
    cudaStreamSynchronize(a->s);
    if (a->side) cudaStreamSynchronize(a->side);
    delete a;
}

/* one tensor's metrics at once (the path before deferral; the panel path) */
static averis_status compute_now(avc_analysis *a, const void *x_dev, int bf16, int64_t l, int64_t m,
                                 analysis_metrics *out, avc_analysis_info *info) {
    memset(out, 0, sizeof *out);
    if (info) memset(info, 0, sizeof *info);
    if (l < 1 || m < 1)
        return averis_fail(AVERIS_EINVAL, "cuda analysis: empty matrix (%lld × %lld)", (long long)l, (long long)m);
    if (l > INT32_MAX || m > INT32_MAX)
        return averis_fail(AVERIS_EINVAL, "cuda analysis: %lld × %lld exceeds cuBLAS's int dimensions", (long long)l,
                           (long long)m);
    out->rows = l, out->cols = m;
    cudaStream_t s = a->s;
    int64_t n = l * m, g = std::min(l, m);
    int k, p1, p2;
    blocks_for(l, m, &k, &p1, &p2);
    const int P = p1 + p2;
    if (p2 > AVC_ANA_PMAX)
        return averis_fail(AVERIS_EINVAL, "cuda analysis: %lld × %lld needs a spike block of %d > %d vectors", (long long)l,
                           (long long)m, p2, AVC_ANA_PMAX);
    int iters = env_iters(), used = 0;
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH)); /* also after an error mid-iteration */
    const int gram = m <= env_gram_max();
    /* the Gram path's stages as CUDA graphs (their launches cost more host time than
     * the GPU's work on a 768-wide tap): off on the legacy default stream (no capture),
     * under the profiler (its phases time the stages) and with AVERIS_ANALYSIS_GRAPH=0 */
    const int use_graph = gram && s != nullptr && !a->graph_off && !cu_prof_active() && env_graph();
    /* the input as fp32; a graph reads it from the fixed scratch copy */
    const float *X = static_cast<const float *>(x_dev);
    if (bf16 || use_graph) {
        float *xf = nullptr;
        CU_OK(a->get(a->xf, n, &xf));
        if (bf16) {
            k_widen<<<4 * ANA_NBLK, ANA_THREADS, 0, s>>>(static_cast<const __nv_bfloat16 *>(x_dev), xf, n);
            CU_LAUNCHED();
        } else {
            CU_TRY(cudaMemcpyAsync(xf, x_dev, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, s));
        }
        X = xf;
    }
    ana_job jb = {};
    jb.side = side_stream(a);
    jb.l = l, jb.m = m, jb.n = n, jb.p1 = p1, jb.p2 = p2, jb.gram = gram, jb.X = X;
    jb.cnt = (int64_t)ceil(0.001 * (double)n);
    jb.nch = (n + ANA_CHUNK - 1) / ANA_CHUNK;
    CU_OK(a->get(a->mean, m, &jb.mean));
    CU_OK(a->get(a->scal, 8, &jb.scal));  /* [0] residual amax, [1..4] the quantizer inputs' amax */
    CU_OK(a->get(a->V, m * P, &jb.V));
    CU_OK(a->get(a->Y, l * P, &jb.Y));
    CU_OK(a->get(a->Z, std::max(m, l) * P, &jb.Z));
    CU_OK(a->get(a->Zd, std::max(m, l) * P, &jb.Zd));
    CU_OK(a->get(a->G, (int64_t)2 * AVC_ANA_PMAX * AVC_ANA_PMAX, &jb.G)); /* ≥ P², and B₂ at PMAX² */
    CU_OK(a->get(a->Gs, (int64_t)AVC_ANA_PMAX * (AVC_ANA_PMAX + 1), &jb.Gs));
    CU_OK(a->get(a->W, (int64_t)P * P, &jb.W));
    CU_OK(a->get(a->tr, 2, &jb.tr));
    CU_OK(a->get(a->sel, 4, &jb.sel));
    CU_OK(a->get(a->ones, std::max(l, m), &jb.ones));
    CU_OK(a->get(a->vec1, 2 * AVC_ANA_PMAX, &jb.vec1));
    CU_OK(a->get(a->dpart, (int64_t)ANA_SLOTS * ANA_NBLK, &jb.dpart));
    CU_OK(select_bufs(a, jb));
    CU_OK(a->get(a->rho, jb.cnt, &jb.rho));
    if ((jb.gsplit = env_gram_split(m))) CU_OK(a->get(a->gp, (int64_t)jb.gsplit * P * P, &jb.Gp));
    if (!gram && bf16 && env_panel_bf16()) {
        jb.Xb = static_cast<const __nv_bfloat16 *>(x_dev);
        CU_OK(a->get(a->vb, m * P, &jb.Vb));
        CU_OK(a->get(a->yb, l * P, &jb.Yb));
    }
    if (gram) {
        CU_OK(a->get(a->xc, n, &jb.Xc));
        CU_OK(a->get(a->C, 2 * m * m, &jb.C));
        /* two products by the Gram matrix per Cholesky-QR (half the orthonormalisations for the
         * same powers of C; the iteration count stays in products): 11 % off an analysis step of
         * the 88M shape, the device test's deviations within its bounds (H200, 2026-12-06);
         * AVERIS_ANALYSIS_STEP=1 orthonormalises after every product */
        const char *st2 = getenv("AVERIS_ANALYSIS_STEP");
        jb.step2 = !(st2 && *st2 == '1');
        if (jb.step2) CU_OK(a->get(a->Z2, m * P, &jb.Z2));
    }
    if (a->ones_n < std::max(l, m)) {
        std::vector<float> one_h((size_t)std::max(l, m), 1.0f);
        CU_TRY(cudaMemcpyAsync(jb.ones, one_h.data(), one_h.size() * sizeof(float), cudaMemcpyHostToDevice, s));
        CU_TRY(cudaStreamSynchronize(s)); /* one_h must outlive the copy */
        a->ones_n = std::max(l, m);
    }
    /* the host's copies, pinned: part, B₁, B₂, ρ, sel, the traces (doubles), then V₁, μ (floats) */
    const size_t o_part = 0, o_b1 = o_part + (size_t)ANA_SLOTS * ANA_NBLK, o_b2 = o_b1 + (size_t)p1 * p1,
                 o_rho = o_b2 + (size_t)p2 * p2, o_sel = o_rho + (size_t)jb.cnt, o_tr = o_sel + 4, o_v1 = o_tr + 2,
                 o_mu = o_v1 + ((size_t)(m * p1) + 1) / 2, o_end = o_mu + ((size_t)m + 1) / 2;
    double *hd = nullptr;
    CU_OK(a->get_host(o_end * sizeof(double), reinterpret_cast<void **>(&hd)));

    /* the graphs of this shape and these buffers, captured on first use */
    avc_analysis::graphs *gr = nullptr;
    if (use_graph) {
        std::vector<int64_t> key = job_key(jb);
        for (auto &c : a->cache)
            if (c.key == key) gr = &c;
        if (!gr) {
            avc_analysis::graphs c;
            c.key = key;
            averis_status st = capture(a, jb, stage_pre, s, &c.pre);
            if (!st) st = capture(a, jb, stage_iter, s, &c.it);
            if (!st) st = capture(a, jb, stage_rr, s, &c.rr);
            if (!st) st = capture(a, jb, stage_side, jb.side, &c.side);
            CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
            if (st) { /* run the stages directly from now on */
                fprintf(stderr, "averis: cuda analysis: CUDA graphs off (%s)\n", averis_last_error());
                c.destroy();
                a->graph_off = 1;
            } else {
                if (a->cache.size() >= 8) { /* shapes come back: keep the last few */
                    a->cache[0].destroy();
                    a->cache.erase(a->cache.begin());
                }
                a->cache.push_back(c);
                gr = &a->cache.back();
            }
        }
    }

    /* 1. μ (the Averis column statistics: its scratch may be the model's, so never in a graph) */
    {
        std::optional<cu_prof_scope> phase;
        phase.emplace("analysis 1: column stats, sum of squares", s);
        CU_TRY(cudaMemsetAsync(jb.dpart, 0, (size_t)ANA_SLOTS * ANA_NBLK * sizeof(double), s));
        CU_OK(cq_colstats(X, 0, l, m, m, jb.mean, jb.scal, nullptr, nullptr, s));
    }
    /* 3. and 4. beside 2.: they read X and μ (and write their own slots of dpart) */
    if (jb.side != s) {
        CU_TRY(cudaEventRecord(a->fork, s));
        CU_TRY(cudaStreamWaitEvent(jb.side, a->fork, 0));
    }
    if (gr) CU_TRY(cudaGraphLaunch(gr->side, jb.side));
    else CU_OK(stage_side(a, jb));
    if (jb.side != s) CU_TRY(cudaEventRecord(a->join, jb.side));
    if (gr) CU_TRY(cudaGraphLaunch(gr->pre, s));
    else CU_OK(stage_pre(a, jb));
    /* 2. subspace iteration. Early stop: at the checks below, both blocks' traces
     * tr(ZᵀZ) changed by ≤ tol relative since the last check (default 5e-5: above the
     * TF32 GEMMs' jitter of ~1e-5; the eigenvalue error left is then ≲ 2e-4 at a rate
     * of 0.9 an iteration); AVERIS_ANALYSIS_TOL overrides, 0 runs every iteration */
    {
        std::optional<cu_prof_scope> phase;
        phase.emplace(gram ? "analysis 2: Gram matrix and subspace iteration" : "analysis 2: subspace iteration (panel)", s);
        const double tol = env_tol();
        double prev1 = -1, prev2 = -1;
        int done = 0;
        const int per = jb.step2 ? 2 : 1; /* products by C per launch of the iteration */
        for (int it = 0; it < iters && !done; it += per) {
            if (gr) CU_TRY(cudaGraphLaunch(gr->it, s));
            else CU_OK(stage_iter(a, jb));
            /* the checks after products 6, 9, 12, 15 (one at a time), 6, 10, 14 (two) */
            const int k_done = it + per - 1;
            if (k_done >= 5 && (k_done - 5) % (per == 1 ? 3 : 4) == 0 && k_done + 1 < iters) {
                CU_TRY(cudaMemcpyAsync(hd + o_tr, jb.tr, 2 * sizeof(double), cudaMemcpyDeviceToHost, s));
                CU_TRY(cudaStreamSynchronize(s));
                const double t0 = hd[o_tr], t1 = hd[o_tr + 1];
                done = fabs(t0 - prev1) <= tol * t0 && fabs(t1 - prev2) <= tol * t1 && tol > 0;
                prev1 = t0, prev2 = t1;
            }
            used = it + per;
        }
    }
    if (gr) CU_TRY(cudaGraphLaunch(gr->rr, s));
    else CU_OK(stage_rr(a, jb));
    CU_CUBLAS_TRY(cublasSetMathMode(a->cb, CUBLAS_PEDANTIC_MATH));
    if (jb.side != s) CU_TRY(cudaStreamWaitEvent(s, a->join, 0));

    std::optional<cu_prof_scope> phase;
    phase.emplace("analysis 5: copies to the host, host eigensolvers", s);
    /* everything the host needs, after one wait for the stream */
    CU_TRY(cudaMemcpyAsync(hd + o_part, jb.dpart, (size_t)ANA_SLOTS * ANA_NBLK * sizeof(double), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(hd + o_b1, jb.G, (size_t)p1 * p1 * sizeof(double), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(hd + o_b2, jb.G + (int64_t)AVC_ANA_PMAX * AVC_ANA_PMAX, (size_t)p2 * p2 * sizeof(double),
                           cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(hd + o_rho, jb.rho, (size_t)jb.cnt * sizeof(double), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(hd + o_sel, jb.sel, 4 * sizeof(long long), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(hd + o_v1, jb.V, (size_t)(m * p1) * sizeof(float), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(hd + o_mu, jb.mean, (size_t)m * sizeof(float), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaStreamSynchronize(s));
    const double *part = hd + o_part;
    const float *V1 = reinterpret_cast<const float *>(hd + o_v1), *mu_h = reinterpret_cast<const float *>(hd + o_mu);
    long long sel_h[4];
    memcpy(sel_h, hd + o_sel, sizeof sel_h);
    const int64_t cnt = jb.cnt;
    if (sel_h[2] < 0 || sel_h[2] > cnt)
        return averis_fail(AVERIS_EIO, "cuda analysis: %lld top-0.1%% elements of %lld", sel_h[2], (long long)cnt);
    std::vector<double> B1(hd + o_b1, hd + o_b1 + (size_t)p1 * p1), B2(hd + o_b2, hd + o_b2 + (size_t)p2 * p2),
        rho_h(hd + o_rho, hd + o_rho + (size_t)sel_h[2]);
    return finish_metrics(l, m, k, p1, p2, used, part, B1, B2, V1, mu_h, rho_h, out, info);
}

void avc_analysis_set_sink(avc_analysis *a, avc_result_fn fn, void *ctx) {
    a->sink = fn;
    a->sink_ctx = ctx;
}

averis_status avc_analysis_submit(avc_analysis *a, const void *x_dev, int bf16, int64_t l, int64_t m, void *tag) {
    if (l < 1 || m < 1)
        return averis_fail(AVERIS_EINVAL, "cuda analysis: empty matrix (%lld × %lld)", (long long)l, (long long)m);
    if (l > INT32_MAX || m > INT32_MAX)
        return averis_fail(AVERIS_EINVAL, "cuda analysis: %lld × %lld exceeds cuBLAS's int dimensions", (long long)l,
                           (long long)m);
    avc_analysis::pending e = {};
    e.l = l, e.m = m, e.tag = tag;
    e.cnt = (int64_t)ceil(0.001 * (double)(l * m));
    int p1, p2;
    blocks_for(l, m, &e.k, &p1, &p2);
    e.p = std::max(p1, p2);
    const size_t budget = env_defer_bytes();
    const slot_layout L = layout_for(m, e.cnt);
    e.deferred = budget > 0 && m <= env_gram_max() && e.p <= 64 && L.end <= budget;
    if (!e.deferred) {
        CU_OK(join_taps(a)); /* compute_now widens into xf, which a queued tap's side work may still read */
        averis_status st = compute_now(a, x_dev, bf16, l, m, &e.met, &e.info);
        if (st) return st;
        a->pend.push_back(e);
        return AVERIS_OK;
    }
    if (a->pend_bytes + L.end > budget) CU_OK(avc_analysis_flush(a));
    e.slot = a->pend.size();
    if (a->slots.size() <= e.slot) a->slots.resize(e.slot + 1);
    char *slot = nullptr;
    CU_OK(a->get(a->slots[e.slot], (int64_t)L.end, &slot));
    CU_OK(tap_stage(a, x_dev, bf16, l, m, e.cnt, slot, L));
    a->pend_bytes += L.end;
    a->pend.push_back(e);
    return AVERIS_OK;
}

averis_status avc_analysis_flush(avc_analysis *a) {
    averis_status st = flush_impl(a);
    if (!st && a->sink)
        for (avc_analysis::pending &e : a->pend) a->sink(a->sink_ctx, e.tag, &e.met, &e.info);
    a->pend.clear();
    a->pend_bytes = 0;
    return st;
}

namespace {
struct one_result {
    analysis_metrics *out;
    avc_analysis_info *info;
};
void one_sink(void *ctx, void *, const analysis_metrics *m, const avc_analysis_info *info) {
    one_result *r = static_cast<one_result *>(ctx);
    *r->out = *m;
    if (r->info) *r->info = *info;
}
} // namespace

averis_status avc_analysis_compute(avc_analysis *a, const void *x_dev, int bf16, int64_t l, int64_t m,
                                   analysis_metrics *out, avc_analysis_info *info) {
    memset(out, 0, sizeof *out);
    if (info) memset(info, 0, sizeof *info);
    CU_OK(avc_analysis_flush(a)); /* what was queued before goes to its sink */
    if (!env_defer_bytes()) return compute_now(a, x_dev, bf16, l, m, out, info);
    avc_result_fn fn = a->sink;
    void *ctx = a->sink_ctx;
    one_result r = {out, info};
    avc_analysis_set_sink(a, one_sink, &r);
    averis_status st = avc_analysis_submit(a, x_dev, bf16, l, m, nullptr);
    if (!st) st = avc_analysis_flush(a);
    else (void)avc_analysis_flush(a);
    avc_analysis_set_sink(a, fn, ctx);
    return st;
}

} // extern "C"

/* ------------------------------------------------ the GPU model's rows */
namespace {

struct rows_ctx {
    avc_analysis *a;
    FILE *csv, *table;
    const char *prefix;
    averis_status st;
    std::vector<std::pair<int, std::string>> taps; /* a tag is an index here */
};

/* a tap's metrics, in tap order (the flush's sink) */
void rows_sink(void *ctx, void *tag, const analysis_metrics *am, const avc_analysis_info *) {
    rows_ctx *c = static_cast<rows_ctx *>(ctx);
    const auto &t = c->taps[(size_t)reinterpret_cast<intptr_t>(tag)];
    char pre[512];
    snprintf(pre, sizeof pre, "%s%s%d,%s", c->prefix, *c->prefix ? "," : "", t.first, t.second.c_str());
    analysis_csv_row(c->csv, pre, am);
    if (c->table)
        fprintf(c->table, "%-5d %-14s %7.4f %7.4f %7.4f %9.4f %9.4f %10.3e %10.3e\n", t.first, t.second.c_str(), am->R,
                am->cos_mu_v1, am->e_mean, am->q_flushed[ANALYSIS_PLAIN], am->q_flushed[ANALYSIS_SPLIT],
                am->q_rel_mse[ANALYSIS_PLAIN], am->q_rel_mse[ANALYSIS_SPLIT]);
}

void rows_tap(void *ctx, int layer, const char *kind, const void *x, int bf16, int64_t rows, int64_t cols) {
    rows_ctx *c = static_cast<rows_ctx *>(ctx);
    if (c->st) return;
    c->taps.emplace_back(layer, kind);
    c->st = avc_analysis_submit(c->a, x, bf16, rows, cols, reinterpret_cast<void *>((intptr_t)(c->taps.size() - 1)));
}

} // namespace

extern "C" averis_status avc_analysis_model_rows(avc_model *g, avc_analysis *a, const int *tokens, const int *targets,
                                                 FILE *csv, const char *prefix, uint64_t sr_stream, FILE *table) {
    rows_ctx ctx = {a, csv, table, prefix ? prefix : "", AVERIS_OK, {}};
    if (table)
        fprintf(table, "%-5s %-14s %7s %7s %7s %9s %9s %10s %10s\n", "layer", "kind", "R", "cos", "e_mean", "flush",
                "flush_sp", "mse", "mse_sp");
    if (a->s != static_cast<cudaStream_t>(avc_model_stream(g)))
        return averis_fail(AVERIS_EINVAL, "cuda analysis: the analysis and the model run on different streams");
    CU_OK(avc_analysis_flush(a)); /* nothing of another caller's in this step's rows */
    avc_analysis_set_sink(a, rows_sink, &ctx);
    avc_model_set_tap(g, rows_tap, &ctx);
    float loss = 0;
    averis_status st = avc_model_step(g, tokens, targets, 1, 1.0f, sr_stream, &loss);
    avc_model_set_tap(g, nullptr, nullptr);
    averis_status fs = avc_analysis_flush(a); /* the queued taps' rows, in tap order */
    if (!ctx.st) ctx.st = fs;
    avc_analysis_set_sink(a, nullptr, nullptr);
    fflush(csv);
    return st ? st : ctx.st;
}

/* ------------------------------------------------------------ benchmarks */
namespace {

/* ms per call of f over reps calls on a->s, after one warm-up call (the
 * tools' median_ms, dev/cuda/tool_util.cuh, is not the library's to use) */
template <class F> averis_status time_calls(avc_analysis *a, int reps, F f, double *ms) {
    struct events {
        cudaEvent_t e[2] = {nullptr, nullptr};
        ~events() {
            for (cudaEvent_t x : e)
                if (x) cudaEventDestroy(x);
        }
    } ev;
    CU_TRY(cudaEventCreate(&ev.e[0]));
    CU_TRY(cudaEventCreate(&ev.e[1]));
    CU_OK(f());
    CU_TRY(cudaEventRecord(ev.e[0], a->s));
    for (int r = 0; r < reps; r++) CU_OK(f());
    CU_TRY(cudaEventRecord(ev.e[1], a->s));
    CU_TRY(cudaEventSynchronize(ev.e[1]));
    float t = 0;
    CU_TRY(cudaEventElapsedTime(&t, ev.e[0], ev.e[1]));
    *ms = t / reps;
    return AVERIS_OK;
}

} // namespace

extern "C" averis_status avc_analysis_bench_panel(avc_analysis *a, int64_t l, int64_t m, int reps, FILE *out) {
    int k, p1, p2;
    blocks_for(l, m, &k, &p1, &p2);
    const int P = p1 + p2, S = 16;
    if (reps < 1 || l < 1 || m < 1 || m % S)
        return averis_fail(AVERIS_EINVAL, "analysis panel bench: l %lld, m %lld (a multiple of %d), reps %d", (long long)l,
                           (long long)m, S, reps);
    cudaStream_t s = a->s;
    struct device_mem { /* freed on every return */
        std::vector<void *> p;
        ~device_mem() {
            for (void *q : p) cudaFree(q);
        }
    } mem;
    auto get = [&](auto **p, size_t n) -> averis_status {
        const size_t bytes = std::max<size_t>(n, 1) * sizeof(**p);
        CU_ALLOC(cudaMalloc((void **)p, bytes), bytes);
        mem.p.push_back((void *)*p);
        return AVERIS_OK;
    };
    const int64_t lm = l * m, wide = std::max(l, m);
    const size_t pmax2 = (size_t)AVC_ANA_PMAX * AVC_ANA_PMAX;
    ana_job j = {};
    j.l = l, j.m = m, j.n = lm, j.p1 = p1, j.p2 = p2;
    float *X = nullptr;
    __nv_bfloat16 *Xb = nullptr;
    double *part = nullptr, *Gk = nullptr;
    CU_OK(get(&X, (size_t)lm));
    CU_OK(get(&Xb, (size_t)lm));
    CU_OK(get(&j.V, (size_t)(m * P)));
    CU_OK(get(&j.Vb, (size_t)(m * P)));
    CU_OK(get(&j.Y, (size_t)(l * P)));
    CU_OK(get(&j.Yb, (size_t)(l * P)));
    CU_OK(get(&j.Z, (size_t)(m * P)));
    CU_OK(get(&j.Zd, (size_t)(wide * P)));
    CU_OK(get(&j.G, 2 * pmax2));
    CU_OK(get(&j.Gs, 2 * pmax2));
    CU_OK(get(&j.W, pmax2));
    CU_OK(get(&j.tr, 2));
    CU_OK(get(&j.mean, (size_t)m));
    CU_OK(get(&j.ones, (size_t)wide));
    CU_OK(get(&j.vec1, (size_t)AVC_ANA_PMAX));
    CU_OK(get(&part, (size_t)S * P * P));
    CU_OK(get(&Gk, (size_t)P * P));
    /* X: uniform in [−½, ½) rounded to BF16 (X its fp32 copy), μ small, V a start panel */
    k_start<<<grid_for(lm), ANA_THREADS, 0, s>>>(X, lm, 0x1234567u);
    k_round_bf16<<<grid_for(lm), ANA_THREADS, 0, s>>>(X, Xb, lm);
    k_start<<<grid_for(m), ANA_THREADS, 0, s>>>(j.mean, m, 0x89abcdu);
    k_start<<<grid_for(m * P), ANA_THREADS, 0, s>>>(j.V, m * P, 0x5eed1234u);
    CU_LAUNCHED();
    std::vector<float> one_h((size_t)wide, 1.0f);
    CU_TRY(cudaMemcpyAsync(j.ones, one_h.data(), one_h.size() * sizeof(float), cudaMemcpyHostToDevice, s));
    CU_OK(cholqr(a, j.V, j.Z, m, p1, p2, j.Zd, j.G, j.Gs, j.W, j.tr));
    CU_TRY(cudaMemcpyAsync(j.V, j.Z, (size_t)(m * P) * sizeof(float), cudaMemcpyDeviceToDevice, s));
    j.Xb = Xb;
    CU_OK(stage_iter(a, j)); /* a panel a few products in */
    CU_OK(stage_iter(a, j));
    const float onef = 1.0f, zerof = 0.0f;
    double ms[13] = {0};
    int q = 0;
    auto T = [&](auto f) -> averis_status { return time_calls(a, reps, f, &ms[q++]); };
    CU_OK(T([&]() -> averis_status {
        k_round_bf16<<<grid_for(m * P), ANA_THREADS, 0, s>>>(j.V, j.Vb, m * P);
        CU_LAUNCHED();
        return AVERIS_OK;
    }));
    CU_OK(T([&]() -> averis_status { return bf16_gemm(a, Xb, m, CUBLAS_OP_T, l, m, P, j.Vb, j.Y); }));
    CU_OK(T([&]() -> averis_status { return bf16_gemm(a, Xb, m, CUBLAS_OP_N, m, l, P, j.Yb, j.Z); }));
    CU_OK(T([&]() -> averis_status { return bf16_product(a, j, CUBLAS_OP_T, l, m, j.V, j.Vb, j.Y, j.mean, j.ones); }));
    CU_OK(T([&]() -> averis_status {
        k_to_f64<<<grid_for(m * P), ANA_THREADS, 0, s>>>(j.Z, j.Zd, m * P);
        CU_LAUNCHED();
        return AVERIS_OK;
    }));
    CU_OK(T([&]() -> averis_status { return panel_gram(a, j.Zd, m, P, j.G, nullptr, 0); }));
    CU_OK(T([&]() -> averis_status { return panel_gram(a, j.Zd, m, P, Gk, part, S); }));
    /* the split Gram against the one DGEMM, on the same Zd (before
     * anything below writes G or Zd again) */
    std::vector<double> g1((size_t)P * P), g2((size_t)P * P);
    CU_TRY(cudaMemcpyAsync(g1.data(), j.G, g1.size() * sizeof(double), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(g2.data(), Gk, g2.size() * sizeof(double), cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaStreamSynchronize(s));
    double gmax = 0, gdiff = 0;
    for (size_t i = 0; i < g1.size(); i++) gmax = std::max(gmax, fabs(g1[i]));
    for (size_t i = 0; i < g1.size(); i++) gdiff = std::max(gdiff, fabs(g1[i] - g2[i]) / (gmax > 0 ? gmax : 1.0));
    CU_OK(T([&]() -> averis_status { return chol_factor(a, j.G, p1, p2, j.W, j.tr, j.Gs); }));
    CU_OK(T([&]() -> averis_status {
        CU_CUBLAS_TRY(cublasSgemm(a->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)m, P, P, &onef, j.Z, (int)m, j.W, P, &zerof, j.V,
                                  (int)m));
        return AVERIS_OK;
    }));
    CU_OK(T([&]() -> averis_status { return cholqr(a, j.Z, j.V, m, p1, p2, j.Zd, j.G, j.Gs, j.W, j.tr); }));
    CU_OK(T([&]() -> averis_status { return cholqr(a, j.Z, j.V, m, p1, p2, j.Zd, j.G, j.Gs, j.W, j.tr, part, S); }));
    CU_OK(T([&]() -> averis_status { return stage_iter(a, j); }));
    j.Xb = nullptr, j.X = X; /* TF32 on the fp32 copy */
    CU_OK(T([&]() -> averis_status { return stage_iter(a, j); }));
    const double gflop = 2.0 * (double)l * (double)m * P * 1e-9; /* GFLOP of one panel GEMM: TFLOP/s = gflop / ms */
    fprintf(out, "the panel iteration's pieces at l x m = %lld x %lld (BF16 X), p1 %d, p2 %d (P %d); ms per call, mean of %d\n",
            (long long)l, (long long)m, p1, p2, P, reps);
    static const char *names[13] = {"round V to BF16 (m x P)",
                                    "Y = X V, GemmEx BF16 (op T)",
                                    "Z = X^T Y, GemmEx BF16 (op N)",
                                    "bf16_product: round + GemmEx + centring",
                                    "cholqr: Z to fp64",
                                    "cholqr: G = Zd^T Zd, one DGEMM",
                                    "  the same split in 16 chunks + sum",
                                    "cholqr: Cholesky + R^-1 (k_chol_inv)",
                                    "cholqr: V = Z W, SGEMM",
                                    "cholqr, whole",
                                    "cholqr, whole, Gram split in 16",
                                    "one iteration (stage_iter), BF16",
                                    "one iteration, TF32 on the fp32 copy"};
    for (int i = 0; i < 13; i++) {
        fprintf(out, "  %-42s %8.3f ms", names[i], ms[i]);
        if (i == 1 || i == 2) fprintf(out, "   %6.0f TFLOP/s", gflop / ms[i]);
        if (i == 6) fprintf(out, "   (max |diff| %.1e of max |G|)", gdiff);
        fprintf(out, "\n");
    }
    fprintf(out, "  (%d iterations + the start's and Rayleigh-Ritz's Cholesky-QR: about %.1f ms of cholqr a tap)\n",
            AVC_ANA_ITERS, (AVC_ANA_ITERS + 2) * ms[9]);
    return AVERIS_OK;
}
