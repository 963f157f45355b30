/* quant_fused.cu — cq_quantize_dual (quant_fused.cuh): the dgrad operand and
 * the wgrad copy of an output gradient D [l × n] fp32 from one read of D.
 *
 * The values, the SR counters and the arithmetic are those of quant.cu's
 * block_input / quant_block, element for element:
 *   rows  (dgrad): block (token t, b) = D[t][16b..16b+15] − μ (if a mean),
 *                  SR index t·cp_r + 16b of stream_r, scale [t][b]
 *   copy  (wgrad): block (feature j, b) = D[16b..16b+15][j] − μ_j for
 *                  tokens < l, 0 past l (no subtraction), then the RHT;
 *                  SR index j·cp_t + 16b of stream_t, scale [j][b]; its
 *                  row-sum partial over CQ_TG = 4 blocks, summed in order
 *                  from 0.0 in fp64, finished by quant.cu's k_rowsum
 * A thread block takes a tile of 64 tokens × 64 features (= CQ_TG blocks of
 * the copy, so one partial per feature per tile, as quant.cu's threads
 * have), loads it into shared memory with 16-byte loads, then quantizes it
 * along rows (256 threads: 64 rows × 4 blocks) and along columns (64
 * features × 4 blocks): each element of D is read from memory once.
 *
 * The amaxes: the rows' is the Averis residual amax when known (from the
 * column statistics), else max|D| (plain); the copy's without RHT holds the
 * same values (D − μ and D − 0 have the same magnitudes), so the same
 * amax; with RHT, max|RHT(D − μ)| over the 16-token groups. One pass
 * (k_amax_dual, a thread per feature and 64 tokens, as quant.cu's
 * transposed k_amax) computes the ones not known; the reduction is a max,
 * order-free, so the bits equal quant.cu's.
 */
#include "quant_fused.cuh"
#include "quant_block.cuh"
#include "nvfp4_device.cuh"

#include <atomic>
#include <cstdlib>

namespace {

enum { FQ_T = 16 * CQ_TG, FQ_F = 64, FQ_THREADS = 256 };
static_assert(FQ_T == 64 && FQ_THREADS == FQ_F * CQ_TG, "a tile: 64 rows × 4 blocks, 64 features × 4 blocks");

struct fq_params {
    const float *src;
    int64_t srows, scols, ld;
    int vec, sr_r, sr_t, rht;
    uint64_t seed_r, seed_t, stream_r, stream_t;
    const float *mean;             /* [scols] or NULL */
    const float *amax_r, *amax_t;  /* read by the quantize kernel */
    int64_t cp_r, nb_r;            /* rows: [srows × cp_r] */
    uint8_t *codes_r, *scales_r;
    __nv_bfloat16 *bf16_r;
    int64_t ld_r;
    int64_t cp_t, nb_t;            /* copy: [scols × cp_t] */
    uint8_t *codes_t, *scales_t;
    __nv_bfloat16 *bf16_t;
    int64_t ld_t;
    double *part;                  /* [ceil(nb_t / CQ_TG) × scols] or NULL */
};

/* quant.cu's quant_block after its input: scale, codes (RN, or SR from
 * element idx0 of `stream`), the writes (each may be NULL), and the block's
 * Σ of dequantized values after the inverse RHT when `rowsum` */
__device__ __forceinline__ double fq_block(const float v[16], float s_enc, float s_dec, int sr, int rht, uint64_t seed,
                                           uint64_t stream, uint64_t idx0, uint8_t *codes, uint8_t *scale,
                                           __nv_bfloat16 *bf16, bool rowsum) {
    float bamax = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float a = fabsf(v[i]);
        bamax = a > bamax ? a : bamax; /* NaN ignored */
    }
    uint32_t sc = avd_block_scale(bamax, s_enc);
    float enc = avd_block_enc(sc, s_dec);
    uint32_t u[16];
    if (sr) nvfp4_spec_sr_u24_block(seed, stream, idx0, u);
    uint32_t q[16];
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float y = v[i] * enc;
        q[i] = sr ? avd_e2m1_sr(y, u[i]) : avd_e2m1_rn(y);
    }
    if (codes) {
        uint32_t lo = 0, hi = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            lo |= q[i] << (4 * i);
            hi |= q[8 + i] << (4 * i);
        }
        *reinterpret_cast<uint2 *>(codes) = make_uint2(lo, hi);
    }
    if (scale) *scale = (uint8_t)sc;
    float sb = avd_e4m3_decode(sc);
    if (bf16) {
        uint32_t w[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t a = __float_as_uint(avd_e2m1_decode(q[2 * i]) * sb) >> 16; /* exact in BF16 */
            uint32_t c = __float_as_uint(avd_e2m1_decode(q[2 * i + 1]) * sb) >> 16;
            w[i] = a | (c << 16);
        }
        uint4 *o = reinterpret_cast<uint4 *>(bf16);
        o[0] = make_uint4(w[0], w[1], w[2], w[3]);
        o[1] = make_uint4(w[4], w[5], w[6], w[7]);
    }
    double acc = 0.0;
    if (rowsum) { /* quant.cu's quant_block: exact in fp32 up to the one ·S_dec */
        float t = 0.0f;
#pragma unroll
        for (int k = 0; k < 16; k++) t += (rht ? avd_rht_colsum(k) : 1.0f) * avd_e2m1_decode(q[k]);
        acc = (double)((t * sb) * s_dec);
    }
    return acc;
}

/* One tile of 64 tokens × 64 features, both ways. (Launch bounds as
 * quant.cu's k_quant: 64 registers, 4 blocks an SM.) */
__global__ void __launch_bounds__(FQ_THREADS, 4) k_quant_dual(fq_params p) {
    __shared__ float tile[FQ_T][FQ_F + 1]; /* +1: the column reads hit 32 banks */
    __shared__ double bsum[CQ_TG][FQ_F];
    const int tid = threadIdx.x;
    const int64_t t0 = (int64_t)blockIdx.y * FQ_T, f0 = (int64_t)blockIdx.x * FQ_F;
    /* load; tokens past srows and features past scols are 0 */
    if (p.vec) {
        const int c4 = tid & 15; /* 16 float4 a row, 16 rows per step */
#pragma unroll
        for (int k = 0; k < FQ_T / 16; k++) {
            int r = (tid >> 4) + 16 * k;
            int64_t t = t0 + r, f = f0 + 4 * c4;
            float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (t < p.srows && f < p.scols) x = __ldg(reinterpret_cast<const float4 *>(p.src + t * p.ld + f));
            tile[r][4 * c4] = x.x, tile[r][4 * c4 + 1] = x.y, tile[r][4 * c4 + 2] = x.z, tile[r][4 * c4 + 3] = x.w;
        }
    } else {
        const int c = tid & 63;
#pragma unroll 4
        for (int k = 0; k < FQ_T / 4; k++) {
            int r = (tid >> 6) + 4 * k;
            int64_t t = t0 + r, f = f0 + c;
            tile[r][c] = (t < p.srows && f < p.scols) ? __ldg(p.src + t * p.ld + f) : 0.0f;
        }
    }
    __syncthreads();
    float s_enc, s_dec;
    /* rows (dgrad operand): thread = (row r, block kb of the tile's 4) */
    {
        nvfp4_spec_global_scales(*p.amax_r, &s_enc, &s_dec);
        const int r = tid & 63, kb = tid >> 6;
        const int64_t t = t0 + r, b = f0 / 16 + kb;
        if (t < p.srows && 16 * b < p.scols) {
            float v[16];
#pragma unroll
            for (int i = 0; i < 16; i++) v[i] = tile[r][16 * kb + i];
            if (p.mean) {
#pragma unroll
                for (int i = 0; i < 16; i++) v[i] = v[i] - p.mean[16 * b + i];
            }
            fq_block(v, s_enc, s_dec, p.sr_r, 0, p.seed_r, p.stream_r, (uint64_t)(t * p.cp_r + 16 * b),
                     p.codes_r ? p.codes_r + t * (p.cp_r / 2) + 8 * b : nullptr,
                     p.scales_r ? p.scales_r + t * p.nb_r + b : nullptr,
                     p.bf16_r ? p.bf16_r + t * p.ld_r + 16 * b : nullptr, false);
        }
    }
    /* the copy (wgrad operand): thread = (feature jl, token block kt) */
    {
        nvfp4_spec_global_scales(*p.amax_t, &s_enc, &s_dec);
        const int jl = tid & 63, kt = tid >> 6;
        const int64_t j = f0 + jl, b = t0 / 16 + kt;
        double sum = 0.0;
        if (j < p.scols && b < p.nb_t) {
            float mu = p.mean ? p.mean[j] : 0.0f;
            float v[16];
#pragma unroll
            for (int i = 0; i < 16; i++)
                v[i] = 16 * b + i < p.srows ? tile[16 * kt + i][jl] - (p.mean ? mu : 0.0f) : 0.0f;
            if (p.rht) nvfp4_spec_rht16(v);
            sum = fq_block(v, s_enc, s_dec, p.sr_t, p.rht, p.seed_t, p.stream_t, (uint64_t)(j * p.cp_t + 16 * b),
                           p.codes_t ? p.codes_t + j * (p.cp_t / 2) + 8 * b : nullptr,
                           p.scales_t ? p.scales_t + j * p.nb_t + b : nullptr,
                           p.bf16_t ? p.bf16_t + j * p.ld_t + 16 * b : nullptr, p.part != nullptr);
        }
        if (p.part) {
            bsum[kt][jl] = sum;
            __syncthreads();
            if (kt == 0 && j < p.scols) { /* quant.cu's k_quant: acc = 0.0, += block 0..3 (0.0 past nb) */
                double acc = 0.0;
#pragma unroll
                for (int k = 0; k < CQ_TG; k++) acc += bsum[k][jl];
                p.part[(int64_t)blockIdx.y * p.scols + j] = acc;
            }
        }
    }
}

/* The amaxes not known: plain max|D − μ| (the rows' values) and/or the RHT'd
 * copy's; a thread per (feature, CQ_TG blocks of 16 tokens). */
__global__ void k_amax_dual(fq_params p, int64_t nthreads, float *amax_plain, float *amax_rht) {
    int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    float mp = 0.0f, mr = 0.0f;
    if (gid < nthreads) {
        int64_t j = (uint32_t)gid % (uint32_t)p.scols, bt = (uint32_t)gid / (uint32_t)p.scols;
        float mu = p.mean ? p.mean[j] : 0.0f;
        for (int k = 0; k < CQ_TG; k++) {
            int64_t b = bt * CQ_TG + k;
            if (b >= p.nb_t) break;
            float v[16];
#pragma unroll
            for (int i = 0; i < 16; i++) {
                int64_t t = 16 * b + i;
                v[i] = t < p.srows ? __ldg(p.src + t * p.ld + j) - (p.mean ? mu : 0.0f) : 0.0f;
            }
            if (amax_plain) {
#pragma unroll
                for (int i = 0; i < 16; i++) {
                    float a = fabsf(v[i]);
                    mp = a > mp ? a : mp;
                }
            }
            if (amax_rht) {
                nvfp4_spec_rht16(v);
#pragma unroll
                for (int i = 0; i < 16; i++) {
                    float a = fabsf(v[i]);
                    mr = a > mr ? a : mr;
                }
            }
        }
    }
    /* (the branches are uniform: kernel arguments) */
    if (amax_plain) cq_reduce_amax(mp, amax_plain);
    if (amax_plain && amax_rht) __syncthreads(); /* cq_reduce_amax's shared array, reused */
    if (amax_rht) cq_reduce_amax(mr, amax_rht);
}

std::atomic<int> g_fused{-1};

} // namespace

int cq_fused_quant(void) {
    int v = g_fused.load();
    if (v >= 0) return v;
    const char *e = getenv("AVERIS_FUSED_QUANT");
    int on = (e && *e) ? atoi(e) != 0 : 1;
    int expect = -1;
    g_fused.compare_exchange_strong(expect, on); /* a cq_set_fused_quant before the first query wins */
    return g_fused.load();
}

int cq_set_fused_quant(int on) {
    int prev = cq_fused_quant();
    g_fused.store(on ? 1 : 0);
    return prev;
}

int cq_dual_fusable(const cq_job *r, const cq_job *t) {
    return r && t && !r->bf16_in && !t->bf16_in && r->src == t->src && r->srows == t->srows && r->scols == t->scols &&
           r->ld == t->ld && r->mean == t->mean && !r->transpose && !r->tile && !r->rht && !r->rowsum && t->transpose &&
           !t->tile && r->scols % 16 == 0 && r->srows > 0 && (r->srows + FQ_T - 1) / FQ_T <= 65535 &&
           r->amax && t->amax && r->amax != t->amax && r->amax_in != t->amax;
}

averis_status cq_quantize_dual(const cq_job *jr, const cq_job *jt, cudaStream_t s) {
    if (!cq_dual_fusable(jr, jt)) {
        CU_OK(cq_quantize(jr, s));
        return cq_quantize(jt, s);
    }
    CU_PROF(jt->rht && !jt->amax_in ? "quant D fused (dgrad + wgrad) + amax RHT"
            : jr->amax_in           ? "quant D fused (dgrad + wgrad)"
                                    : "quant D fused (dgrad + wgrad) + amax", s);
    cq_params pr, pt; /* the shape checks and paddings of the two calls */
    CU_OK(cq_plan(jr, &pr));
    CU_OK(cq_plan(jt, &pt));
    fq_params p = {};
    p.src = static_cast<const float *>(jr->src);
    p.srows = jr->srows, p.scols = jr->scols, p.ld = jr->ld;
    p.vec = jr->ld % 4 == 0 && reinterpret_cast<uintptr_t>(jr->src) % 16 == 0;
    p.sr_r = jr->sr, p.sr_t = jt->sr, p.rht = jt->rht;
    p.seed_r = jr->seed, p.seed_t = jt->seed, p.stream_r = jr->stream, p.stream_t = jt->stream;
    p.mean = jr->mean;
    p.cp_r = pr.cp, p.nb_r = pr.nb;
    p.codes_r = jr->codes, p.scales_r = jr->scales, p.bf16_r = jr->bf16_out, p.ld_r = jr->ld_out;
    p.cp_t = pt.cp, p.nb_t = pt.nb;
    p.codes_t = jt->codes, p.scales_t = jt->scales, p.bf16_t = jt->bf16_out, p.ld_t = jt->ld_out;
    /* the amaxes, in the order of the two calls: the rows' (known, or the
     * plain pass), then the copy's (known — possibly the rows' —, the plain
     * one without RHT, or the RHT'd pass) */
    if (jr->amax_in && jr->amax_in != jr->amax)
        CU_TRY(cudaMemcpyAsync(jr->amax, jr->amax_in, sizeof(float), cudaMemcpyDeviceToDevice, s));
    float *plain = jr->amax_in ? nullptr : jr->amax, *rht = nullptr;
    if (!jt->amax_in) {
        if (jt->rht) rht = jt->amax;
        else if (!plain) plain = jt->amax;
    }
    if (plain || rht) {
        if (plain) CU_TRY(cudaMemsetAsync(plain, 0, sizeof(float), s));
        if (rht) CU_TRY(cudaMemsetAsync(rht, 0, sizeof(float), s));
        k_amax_dual<<<cu_blocks(pt.nthreads, 256), 256, 0, s>>>(p, pt.nthreads, plain, rht);
        CU_LAUNCHED();
    }
    if (jt->amax_in) {
        if (jt->amax_in != jt->amax)
            CU_TRY(cudaMemcpyAsync(jt->amax, jt->amax_in, sizeof(float), cudaMemcpyDeviceToDevice, s));
    } else if (!jt->rht && plain != jt->amax) { /* the same values as the rows: their amax */
        CU_TRY(cudaMemcpyAsync(jt->amax, jr->amax, sizeof(float), cudaMemcpyDeviceToDevice, s));
    }
    p.amax_r = jr->amax, p.amax_t = jt->amax;
    int64_t ntile_t = (jr->srows + FQ_T - 1) / FQ_T; /* = ceil(nb_t / CQ_TG): one row-sum partial per tile */
    double *part = nullptr;
    if (jt->rowsum) {
        CU_OK(cq_ws_take(reinterpret_cast<void **>(&part), (size_t)(ntile_t * jt->scols) * sizeof(double), s));
        p.part = part;
    }
    k_quant_dual<<<dim3(cu_blocks(jr->scols, FQ_F), (unsigned)ntile_t), FQ_THREADS, 0, s>>>(p);
    CU_LAUNCHED();
    if (part) {
        CU_OK(cq_rowsum_finish(part, ntile_t, jt->scols, jt->rowsum, s));
        CU_OK(cq_ws_give(part, s));
    }
    return AVERIS_OK;
}
