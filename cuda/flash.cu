/* flash.cu — causal grouped-query attention without materialising P
 * (FlashAttention-2's schedule on BF16 tensor cores through WMMA).
 *
 *   forward   per (64 queries, head): loop over key tiles ≤ the diagonal,
 *             S = Q·Kᵀ·scale, online softmax (running max m, sum l), O += P·V;
 *             O/l goes to ao [N, H·Dh] (token-major) and L = m + log l to lse.
 *   backward  two kernels, no atomics (deterministic):
 *             dK, dV per (64 keys, kv head): over the group's heads and the
 *               query tiles ≥ the diagonal, P = exp(S·scale − L),
 *               dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P⊙(dP − D), dK += dSᵀ·Q·scale;
 *             dQ per (64 queries, head): over the key tiles, dQ += dS·K·scale;
 *             D = rowsum(dO⊙O) from k_flash_dvec.
 * Q, K, V, dO are BF16 head-major [B, heads, T, Dh]; T % 64 == 0 and
 * Dh ∈ {32, 64, 128} (else the model uses the materialising path). A block is
 * 4 warps, a warp owns 16 rows of the tile; fp32 accumulators of a warp live
 * in shared memory (WMMA fragments are opaque, the softmax rescales rows).
 */
#include "flash.cuh"

#include <mma.h>

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

namespace {

enum { FT = 64 /* rows of a tile */, FW = 4 /* warps */ };
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_b_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;

/* rows × DH BF16 from global (row stride DH) into shared, 16 bytes a thread */
template <int DH> __device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *src, int rows) {
    const uint4 *s = reinterpret_cast<const uint4 *>(src);
    uint4 *d = reinterpret_cast<uint4 *>(dst);
    for (int i = threadIdx.x; i < rows * DH / 8; i += blockDim.x) d[i] = s[i];
}

/* C[16 × 64] (fp32, ld 64) = A[16 × DH] · Bᵀ, B [64 × DH] row-major (so Bᵀ is col-major) */
template <int DH> __device__ __forceinline__ void mm_abt(float *C, const bf16 *A, const bf16 *B) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        frag_c c;
        wmma::fill_fragment(c, 0.0f);
#pragma unroll
        for (int k = 0; k < DH / 16; k++) {
            frag_a_row a;
            frag_b_col b;
            wmma::load_matrix_sync(a, A + k * 16, DH);
            wmma::load_matrix_sync(b, B + j * 16 * DH + k * 16, DH);
            wmma::mma_sync(c, a, b, c);
        }
        wmma::store_matrix_sync(C + j * 16, c, 64, wmma::mem_row_major);
    }
}

/* Acc[16 × DH] (fp32 in shared, ld DH) += A[16 × 64] (row-major, ld lda) · B[64 × DH] */
template <int DH> __device__ __forceinline__ void mm_acc(float *Acc, const bf16 *A, int lda, const bf16 *B) {
#pragma unroll
    for (int j = 0; j < DH / 16; j++) {
        frag_c c;
        wmma::load_matrix_sync(c, Acc + j * 16, DH, wmma::mem_row_major);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            frag_b_row b;
            wmma::load_matrix_sync(b, B + k * 16 * DH + j * 16, DH);
            frag_a_row a;
            wmma::load_matrix_sync(a, A + k * 16, lda);
            wmma::mma_sync(c, a, b, c);
        }
        wmma::store_matrix_sync(Acc + j * 16, c, DH, wmma::mem_row_major);
    }
}

template <int DH, typename OT> __global__ void __launch_bounds__(128)
k_flash_fwd(const bf16 *qh, const bf16 *kh, const bf16 *vh, OT *ao, float *lse, int T, int H, int KV, float scale) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smem), *sK = sQ + FT * DH, *sV = sK + FT * DH;
    float *sS = reinterpret_cast<float *>(sV + FT * DH);       /* [FW][16][64] */
    bf16 *sP = reinterpret_cast<bf16 *>(sS + FW * 16 * 64);    /* [FW][16][64] */
    float *sO = reinterpret_cast<float *>(sP + FW * 16 * 64);  /* [FW][16][DH] */
    int qt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / KV);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const bf16 *K = kh + (size_t)(b * KV + g) * T * DH, *V = vh + (size_t)(b * KV + g) * T * DH;
    load_tile<DH>(sQ, qh + ((size_t)bh * T + (size_t)qt * FT) * DH, FT);
    float *S = sS + warp * 16 * 64, *O = sO + warp * 16 * DH;
    bf16 *P = sP + warp * 16 * 64;
    for (int i = lane; i < 16 * DH; i += 32) O[i] = 0.0f;
    float m_i = -INFINITY, l_i = 0.0f;
    int qi = qt * FT + warp * 16 + r;
    for (int kt = 0; kt <= qt; kt++) {
        __syncthreads();
        load_tile<DH>(sK, K + (size_t)kt * FT * DH, FT);
        load_tile<DH>(sV, V + (size_t)kt * FT * DH, FT);
        __syncthreads();
        mm_abt<DH>(S, sQ + warp * 16 * DH, sK);
        __syncwarp();
        float mx = m_i;
        for (int c = half * 32; c < half * 32 + 32; c++)
            if (kt * FT + c <= qi) mx = fmaxf(mx, S[r * 64 + c] * scale);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        float alpha = m_i == -INFINITY ? 0.0f : expf(m_i - mx), sum = 0.0f;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            float p = kt * FT + c <= qi ? expf(S[r * 64 + c] * scale - mx) : 0.0f;
            P[r * 64 + c] = __float2bfloat16_rn(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l_i = l_i * alpha + sum;
        m_i = mx;
        for (int d = half * (DH / 2); d < (half + 1) * (DH / 2); d++) O[r * DH + d] *= alpha;
        __syncwarp();
        mm_acc<DH>(O, P, 64, sV);
        __syncwarp();
    }
    float inv = 1.0f / l_i;
    int t = qt * FT + warp * 16 + r;
    OT *dst = ao + (((size_t)b * T + t) * H + h) * DH;
    for (int d = half * (DH / 2); d < (half + 1) * (DH / 2); d++) cu_st(dst + d, O[r * DH + d] * inv);
    if (half == 0) lse[(size_t)bh * T + t] = m_i + logf(l_i);
}

/* D[bh][t] = Σ_d dO·O, from the token-major fp32 dao and ao: a warp per row */
template <typename OT>
__global__ void k_flash_dvec(const float *dao, const OT *ao, float *D, int64_t rows, int T, int H, int DH) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    uint32_t t = (uint32_t)(row % T), bh = (uint32_t)(row / T), b = bh / H, h = bh % H;
    size_t off = (((size_t)b * T + t) * H + h) * DH;
    float s = 0.0f;
    for (int d = lane; d < DH; d += 32) s += dao[off + d] * cu_ld(ao + off + d);
    s = cu_warp_sum(s);
    if (lane == 0) D[row] = s;
}

/* dK, dV of 64 keys of kv head g: over the group's heads and query tiles */
template <int DH> __global__ void __launch_bounds__(128)
k_flash_dkdv(const bf16 *qh, const bf16 *kh, const bf16 *vh, const bf16 *doh, const float *lse, const float *Dv,
             float *dk, float *dv, int T, int H, int KV, float scale) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smem), *sdO = sQ + FT * DH, *sK = sdO + FT * DH, *sV = sK + FT * DH;
    float *sS = reinterpret_cast<float *>(sV + FT * DH);        /* [FW][16][64] */
    bf16 *sP = reinterpret_cast<bf16 *>(sS + FW * 16 * 64);     /* [FW][16][64] */
    float *sdK = reinterpret_cast<float *>(sP + FW * 16 * 64);  /* [FW][16][DH] */
    float *sdV = sdK + FW * 16 * DH;                            /* [FW][16][DH] */
    float *sL = sdV + FW * 16 * DH, *sD = sL + FT;              /* [64] each */
    int kt = blockIdx.x, bg = blockIdx.y, b = bg / KV, g = bg % KV, grp = H / KV;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    load_tile<DH>(sK, kh + ((size_t)bg * T + (size_t)kt * FT) * DH, FT);
    load_tile<DH>(sV, vh + ((size_t)bg * T + (size_t)kt * FT) * DH, FT);
    float *S = sS + warp * 16 * 64, *dK = sdK + warp * 16 * DH, *dV = sdV + warp * 16 * DH;
    bf16 *P = sP + warp * 16 * 64;
    for (int i = lane; i < 16 * DH; i += 32) dK[i] = 0.0f, dV[i] = 0.0f;
    int kj = kt * FT + warp * 16 + r; /* this lane's key */
    float p[32];
    for (int hh = 0; hh < grp; hh++) {
        int h = g * grp + hh, bh = b * H + h;
        for (int qt = kt; qt < T / FT; qt++) {
            __syncthreads();
            load_tile<DH>(sQ, qh + ((size_t)bh * T + (size_t)qt * FT) * DH, FT);
            load_tile<DH>(sdO, doh + ((size_t)bh * T + (size_t)qt * FT) * DH, FT);
            for (int i = threadIdx.x; i < FT; i += blockDim.x) {
                sL[i] = lse[(size_t)bh * T + qt * FT + i];
                sD[i] = Dv[(size_t)bh * T + qt * FT + i];
            }
            __syncthreads();
            /* Sᵀ [16 keys × 64 queries] = K_w · Qᵀ */
            mm_abt<DH>(S, sK + warp * 16 * DH, sQ);
            __syncwarp();
#pragma unroll
            for (int c = 0; c < 32; c++) {
                int q = half * 32 + c, qi = qt * FT + q;
                p[c] = kj <= qi ? expf(S[r * 64 + q] * scale - sL[q]) : 0.0f;
                P[r * 64 + q] = __float2bfloat16_rn(p[c]);
            }
            __syncwarp();
            mm_acc<DH>(dV, P, 64, sdO); /* dV += Pᵀ·dO */
            __syncwarp();
            mm_abt<DH>(S, sV + warp * 16 * DH, sdO); /* dPᵀ = V_w · dOᵀ */
            __syncwarp();
#pragma unroll
            for (int c = 0; c < 32; c++) {
                int q = half * 32 + c;
                P[r * 64 + q] = __float2bfloat16_rn(p[c] * (S[r * 64 + q] - sD[q]));
            }
            __syncwarp();
            mm_acc<DH>(dK, P, 64, sQ); /* dK += dSᵀ·Q */
            __syncwarp();
        }
    }
    size_t base = ((size_t)bg * T + (size_t)kt * FT + warp * 16 + r) * DH;
    for (int d = half * (DH / 2); d < (half + 1) * (DH / 2); d++) {
        dk[base + d] = dK[r * DH + d] * scale;
        dv[base + d] = dV[r * DH + d];
    }
}

/* dQ of 64 queries of head h: over the key tiles ≤ the diagonal */
template <int DH> __global__ void __launch_bounds__(128)
k_flash_dq(const bf16 *qh, const bf16 *kh, const bf16 *vh, const bf16 *doh, const float *lse, const float *Dv, float *dq,
           int T, int H, int KV, float scale) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smem), *sdO = sQ + FT * DH, *sK = sdO + FT * DH, *sV = sK + FT * DH;
    float *sS = reinterpret_cast<float *>(sV + FT * DH);
    bf16 *sP = reinterpret_cast<bf16 *>(sS + FW * 16 * 64);
    float *sdQ = reinterpret_cast<float *>(sP + FW * 16 * 64);
    int qt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / KV);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    load_tile<DH>(sQ, qh + ((size_t)bh * T + (size_t)qt * FT) * DH, FT);
    load_tile<DH>(sdO, doh + ((size_t)bh * T + (size_t)qt * FT) * DH, FT);
    const bf16 *K = kh + (size_t)(b * KV + g) * T * DH, *V = vh + (size_t)(b * KV + g) * T * DH;
    float *S = sS + warp * 16 * 64, *dQ = sdQ + warp * 16 * DH;
    bf16 *P = sP + warp * 16 * 64;
    for (int i = lane; i < 16 * DH; i += 32) dQ[i] = 0.0f;
    int qi = qt * FT + warp * 16 + r;
    float L = lse[(size_t)bh * T + qi], Dq = Dv[(size_t)bh * T + qi];
    float p[32];
    for (int kt = 0; kt <= qt; kt++) {
        __syncthreads();
        load_tile<DH>(sK, K + (size_t)kt * FT * DH, FT);
        load_tile<DH>(sV, V + (size_t)kt * FT * DH, FT);
        __syncthreads();
        mm_abt<DH>(S, sQ + warp * 16 * DH, sK); /* S = Q_w·Kᵀ */
        __syncwarp();
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int kk = half * 32 + c;
            p[c] = kt * FT + kk <= qi ? expf(S[r * 64 + kk] * scale - L) : 0.0f;
        }
        __syncwarp();
        mm_abt<DH>(S, sdO + warp * 16 * DH, sV); /* dP = dO_w·Vᵀ */
        __syncwarp();
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int kk = half * 32 + c;
            P[r * 64 + kk] = __float2bfloat16_rn(p[c] * (S[r * 64 + kk] - Dq));
        }
        __syncwarp();
        mm_acc<DH>(dQ, P, 64, sK); /* dQ += dS·K */
        __syncwarp();
    }
    size_t base = ((size_t)bh * T + (size_t)qi) * DH;
    for (int d = half * (DH / 2); d < (half + 1) * (DH / 2); d++) dq[base + d] = dQ[r * DH + d] * scale;
}

template <int DH> size_t smem_fwd() { return (size_t)3 * FT * DH * 2 + FW * 16 * 64 * (4 + 2) + FW * 16 * DH * 4; }
template <int DH> size_t smem_dkdv() { return (size_t)4 * FT * DH * 2 + FW * 16 * 64 * (4 + 2) + 2 * FW * 16 * DH * 4 + 2 * FT * 4; }
template <int DH> size_t smem_dq() { return (size_t)4 * FT * DH * 2 + FW * 16 * 64 * (4 + 2) + FW * 16 * DH * 4; }

template <int DH, typename OT>
averis_status fwd_dh(const bf16 *qh, const bf16 *kh, const bf16 *vh, OT *ao, float *lse, int B, int T, int H, int KV,
                     float scale, cudaStream_t s) {
    static bool attr = false;
    if (!attr) {
        CU_TRY(cudaFuncSetAttribute(k_flash_fwd<DH, OT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_fwd<DH>()));
        attr = true;
    }
    k_flash_fwd<DH, OT><<<dim3(T / FT, B * H), 128, smem_fwd<DH>(), s>>>(qh, kh, vh, ao, lse, T, H, KV, scale);
    CU_LAUNCHED();
    return AVERIS_OK;
}

template <int DH>
averis_status bwd_dh(const bf16 *qh, const bf16 *kh, const bf16 *vh, const bf16 *doh, const float *lse, const float *Dv,
                     float *dq, float *dk, float *dv, int B, int T, int H, int KV, float scale, cudaStream_t s) {
    static bool attr = false;
    if (!attr) {
        CU_TRY(cudaFuncSetAttribute(k_flash_dkdv<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_dkdv<DH>()));
        CU_TRY(cudaFuncSetAttribute(k_flash_dq<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_dq<DH>()));
        attr = true;
    }
    k_flash_dkdv<DH><<<dim3(T / FT, B * KV), 128, smem_dkdv<DH>(), s>>>(qh, kh, vh, doh, lse, Dv, dk, dv, T, H, KV, scale);
    CU_LAUNCHED();
    k_flash_dq<DH><<<dim3(T / FT, B * H), 128, smem_dq<DH>(), s>>>(qh, kh, vh, doh, lse, Dv, dq, T, H, KV, scale);
    CU_LAUNCHED();
    return AVERIS_OK;
}

} // namespace

int cf_supported(int T, int Dh) { return T % FT == 0 && (Dh == 32 || Dh == 64 || Dh == 128); }

template <typename OT>
averis_status fwd_any(const bf16 *qh, const bf16 *kh, const bf16 *vh, OT *ao, float *lse, int B, int T, int H, int KV,
                      int Dh, cudaStream_t s) {
    float scale = 1.0f / sqrtf((float)Dh);
    switch (Dh) {
    case 32: return fwd_dh<32>(qh, kh, vh, ao, lse, B, T, H, KV, scale, s);
    case 64: return fwd_dh<64>(qh, kh, vh, ao, lse, B, T, H, KV, scale, s);
    case 128: return fwd_dh<128>(qh, kh, vh, ao, lse, B, T, H, KV, scale, s);
    }
    return averis_fail(AVERIS_EUNSUPPORTED, "flash attention: head_dim %d", Dh);
}

averis_status cf_forward(const bf16 *qh, const bf16 *kh, const bf16 *vh, void *ao, int ao_bf16, float *lse, int B,
                          int T, int H, int KV, int Dh, cudaStream_t s) {
    if (ao_bf16) return fwd_any(qh, kh, vh, static_cast<bf16 *>(ao), lse, B, T, H, KV, Dh, s);
    return fwd_any(qh, kh, vh, static_cast<float *>(ao), lse, B, T, H, KV, Dh, s);
}

averis_status cf_backward(const bf16 *qh, const bf16 *kh, const bf16 *vh, const bf16 *doh, const float *dao,
                           const void *ao, int ao_bf16, const float *lse, float *Dv, float *dq, float *dk, float *dv,
                           int B, int T, int H, int KV, int Dh, cudaStream_t s) {
    int64_t rows = (int64_t)B * H * T;
    if (ao_bf16)
        k_flash_dvec<<<cu_blocks(rows * 32, 256), 256, 0, s>>>(dao, static_cast<const bf16 *>(ao), Dv, rows, T, H, Dh);
    else
        k_flash_dvec<<<cu_blocks(rows * 32, 256), 256, 0, s>>>(dao, static_cast<const float *>(ao), Dv, rows, T, H, Dh);
    CU_LAUNCHED();
    float scale = 1.0f / sqrtf((float)Dh);
    switch (Dh) {
    case 32: return bwd_dh<32>(qh, kh, vh, doh, lse, Dv, dq, dk, dv, B, T, H, KV, scale, s);
    case 64: return bwd_dh<64>(qh, kh, vh, doh, lse, Dv, dq, dk, dv, B, T, H, KV, scale, s);
    case 128: return bwd_dh<128>(qh, kh, vh, doh, lse, Dv, dq, dk, dv, B, T, H, KV, scale, s);
    }
    return averis_fail(AVERIS_EUNSUPPORTED, "flash attention: head_dim %d", Dh);
}
