/* grouped_gemm.cu — the grouped BF16 GEMM of grouped_gemm.cuh.
 *
 * One CTA (256 threads, 8 warps) computes a 128×128 tile of one GEMM's D:
 *
 *         N →  warp columns wn = 0..3, 32 wide
 *       ┌────┬────┬────┬────┐
 *   M   │ w0 │ w1 │ w2 │ w3 │  wm = 0: rows 0..63
 *   ↓   ├────┼────┼────┼────┤
 *       │ w4 │ w5 │ w6 │ w7 │  wm = 1: rows 64..127
 *       └────┴────┴────┴────┘
 *
 * Each warp holds its 64×32 in 4×4 mma.sync m16n8k16 accumulators (64 fp32
 * registers a thread). K advances 32 at a time through STAGES shared-memory
 * buffers filled by cp.async (16 bytes a copy, zero-filled past the edges),
 * loaded into fragments by ldmatrix: .trans where the operand's contiguous
 * dimension is M or N (a transposed A, a non-transposed B). Shared tiles keep
 * the operand's own layout, each row padded by 8 BF16 (16 bytes) so that the
 * 8 rows an ldmatrix reads fall in distinct banks:
 *   A: [128 m][32+8 k] (K contiguous) or [32 k][128+8 m] (transA)
 *   B: [128 n][32+8 k] (transB)       or [32 k][128+8 n]
 * The epilogue writes D = α·acc + β·D + bias straight from the registers
 * (two adjacent columns per thread as a float2).
 */
#include "grouped_gemm.cuh"

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace {

constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256, PAD = 8;
static_assert(BM == BN, "B's tiles have A's geometry (tile_elems)");

/* BF16 elements of one stage's A or B tile (T: its contiguous dimension is M or N) */
template <int T> __host__ __device__ constexpr int tile_elems() { return T ? BK * (BM + PAD) : BM * (BK + PAD); }
template <int TA, int TB> constexpr size_t smem_bytes() {
    return (size_t)STAGES * (tile_elems<TA>() + tile_elems<!TB>()) * sizeof(__nv_bfloat16);
}

/* a GEMM of the list as the kernel sees it (80 bytes; sizes checked < 2^31 on the host) */
struct gg_desc {
    const __nv_bfloat16 *A, *B;
    float *D;
    const float *alpha, *bias;
    int M, N, K, lda, ldb, ldd;
    int tile0;   /* its first tile in the grid */
    int tiles_m; /* ⌈M / BM⌉ */
    float beta;
};
template <int CAP> struct gg_list {
    int n;
    gg_desc d[CAP];
};

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool full) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int bytes = full ? 16 : 0; /* 0: the 16 bytes are zero-filled, nothing read */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* four 8×8 BF16 matrices; lane l gives the row address of matrix l/8, row l%8 */
template <int TRANS> __device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const __nv_bfloat16 *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}

/* c += a·b: a 16×16 (row), b 16×8 (col), c 16×8 fp32 */
__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* One operand tile of a stage: rows × cols of BF16 from global X (leading
 * dimension ld) starting at (r0, c0), rows < nr and columns < nc valid,
 * into shared S [ROWS][COLS + PAD]; COLS / 8 16-byte copies a row, spread
 * over the 256 threads. */
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *S, const __nv_bfloat16 *X, int ld, int r0, int c0, int nr, int nc) {
    constexpr int CPR = COLS / 8, CHUNKS = ROWS * CPR;
    static_assert(CHUNKS % THREADS == 0, "tile chunks per thread");
#pragma unroll
    for (int i = 0; i < CHUNKS / THREADS; i++) {
        int c = (int)threadIdx.x + i * THREADS;
        int r = c / CPR, col = (c % CPR) * 8;
        bool ok = r0 + r < nr && c0 + col < nc; /* nc % 8 == 0: a copy is all in or all out */
        const __nv_bfloat16 *src = ok ? X + (int64_t)(r0 + r) * ld + (c0 + col) : X;
        cp_async16(S + r * (COLS + PAD) + col, src, ok);
    }
}

/* the stage's A and B tiles at K offset k0 */
template <int TA, int TB>
__device__ __forceinline__ void load_stage(__nv_bfloat16 *As, __nv_bfloat16 *Bs, const gg_desc &d, int m0, int n0, int k0) {
    if (TA) load_tile<BK, BM>(As, d.A, d.lda, k0, m0, d.K, d.M);
    else load_tile<BM, BK>(As, d.A, d.lda, m0, k0, d.M, d.K);
    if (TB) load_tile<BN, BK>(Bs, d.B, d.ldb, n0, k0, d.N, d.K);
    else load_tile<BK, BN>(Bs, d.B, d.ldb, k0, n0, d.K, d.N);
}

/* the warp's 64×32 += over the stage's 32 K columns */
template <int TA, int TB>
__device__ __forceinline__ void mma_stage(const __nv_bfloat16 *As, const __nv_bfloat16 *Bs, int wm, int wn, int lane,
                                          float (&acc)[4][4][4]) {
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
        unsigned a[4][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; mi++) {
            int m = wm * 64 + mi * 16;
            /* the fragment's 8×8 quarters: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) */
            if (TA) ldsm_x4<1>(a[mi], As + (ks + (lane & 7) + (lane >> 4) * 8) * (BM + PAD) + m + ((lane >> 3) & 1) * 8);
            else ldsm_x4<0>(a[mi], As + (m + (lane & 15)) * (BK + PAD) + ks + (lane >> 4) * 8);
        }
#pragma unroll
        for (int nj = 0; nj < 2; nj++) {
            int n = wn * 32 + nj * 16;
            /* (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): two n8 fragments */
            unsigned r[4];
            if (TB) ldsm_x4<0>(r, Bs + (n + (lane & 7) + (lane >> 4) * 8) * (BK + PAD) + ks + ((lane >> 3) & 1) * 8);
            else ldsm_x4<1>(r, Bs + (ks + (lane & 7) + ((lane >> 3) & 1) * 8) * (BN + PAD) + n + (lane >> 4) * 8);
            b[2 * nj][0] = r[0], b[2 * nj][1] = r[1], b[2 * nj + 1][0] = r[2], b[2 * nj + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) mma_bf16(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
}

template <int TA, int TB, int CAP>
__global__ void __launch_bounds__(THREADS, 2) k_grouped_gemm(const __grid_constant__ gg_list<CAP> list) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *As0 = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *Bs0 = As0 + STAGES * tile_elems<TA>();
    /* the GEMM of this tile: the last whose first tile is ≤ blockIdx.x */
    const int t = (int)blockIdx.x;
    int lo = 0, hi = list.n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (list.d[mid].tile0 <= t) lo = mid;
        else hi = mid - 1;
    }
    const gg_desc &d = list.d[lo];
    const int tt = t - d.tile0, m0 = (tt % d.tiles_m) * BM, n0 = (tt / d.tiles_m) * BN;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5, wm = warp >> 2, wn = warp & 3;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) acc[i][j][k] = 0.0f;

    const int ktiles = (d.K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles) load_stage<TA, TB>(As0 + s * tile_elems<TA>(), Bs0 + s * tile_elems<!TB>(), d, m0, n0, s * BK);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<STAGES - 2>(); /* stage kt has landed (this thread's copies) ... */
        __syncthreads();             /* ... everyone's, and stage kt-1 is no longer read */
        int pf = kt + STAGES - 1;
        if (pf < ktiles)
            load_stage<TA, TB>(As0 + (pf % STAGES) * tile_elems<TA>(), Bs0 + (pf % STAGES) * tile_elems<!TB>(), d, m0, n0,
                               pf * BK);
        cp_async_commit();
        int st = kt % STAGES;
        mma_stage<TA, TB>(As0 + st * tile_elems<TA>(), Bs0 + st * tile_elems<!TB>(), wm, wn, lane, acc);
    }
    cp_async_wait<0>();

    /* D = α·acc + β·D + bias; the accumulator's c0,c1 at (row lane/4, cols 2·(lane%4) +0,1), c2,c3 eight rows down */
    const float alpha = d.alpha ? *d.alpha : 1.0f, beta = d.beta;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int row = m0 + wm * 64 + mi * 16 + (lane >> 2) + h * 8;
            if (row >= d.M) continue;
            float *drow = d.D + (int64_t)row * d.ldd;
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                int col = n0 + wn * 32 + ni * 8 + (lane & 3) * 2;
                if (col >= d.N) continue;
                float v0 = alpha * acc[mi][ni][2 * h], v1 = alpha * acc[mi][ni][2 * h + 1];
                if (col + 1 < d.N) {
                    float2 *p = reinterpret_cast<float2 *>(drow + col);
                    if (beta != 0.0f) {
                        float2 o = *p;
                        v0 = v0 + beta * o.x, v1 = v1 + beta * o.y;
                    }
                    if (d.bias) v0 = v0 + d.bias[col], v1 = v1 + d.bias[col + 1];
                    *p = make_float2(v0, v1);
                } else {
                    if (beta != 0.0f) v0 = v0 + beta * drow[col];
                    if (d.bias) v0 = v0 + d.bias[col];
                    drow[col] = v0;
                }
            }
        }
}

std::atomic<long long> g_launches{0};

/* the dynamic shared memory opt-in (> 48 KiB), once per kernel and device */
enum { GG_MAX_DEVICES = 64, GG_KERNELS = 8 };
std::mutex g_attr_mu;
bool g_attr_done[GG_MAX_DEVICES][GG_KERNELS];

template <int TA, int TB, int CAP> averis_status launch(const gg_list<CAP> &list, int tiles, cudaStream_t s) {
    const size_t smem = smem_bytes<TA, TB>();
    {
        int dev = 0;
        CU_TRY(cudaGetDevice(&dev));
        const int kid = TA * 4 + TB * 2 + (CAP == GG_MAX_GROUPS);
        std::lock_guard<std::mutex> lock(g_attr_mu);
        if (dev < 0 || dev >= GG_MAX_DEVICES) return averis_fail(AVERIS_EINVAL, "grouped gemm: device %d", dev);
        if (!g_attr_done[dev][kid]) {
            CU_TRY(cudaFuncSetAttribute(k_grouped_gemm<TA, TB, CAP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            g_attr_done[dev][kid] = true;
        }
    }
    k_grouped_gemm<TA, TB, CAP><<<(unsigned)tiles, THREADS, smem, s>>>(list);
    CU_LAUNCHED();
    g_launches++;
    return AVERIS_OK;
}

/* up to CAP GEMMs of g (all non-empty) in one launch */
template <int CAP> averis_status run_list(int transA, int transB, const gg_gemm *g, int n, cudaStream_t s) {
    gg_list<CAP> list;
    memset(&list, 0, sizeof list);
    int64_t tiles = 0;
    for (int i = 0; i < n; i++) {
        gg_desc &d = list.d[list.n++];
        d.A = g[i].A, d.B = g[i].B, d.D = g[i].D, d.alpha = g[i].alpha, d.bias = g[i].bias;
        d.M = (int)g[i].M, d.N = (int)g[i].N, d.K = (int)g[i].K;
        d.lda = (int)g[i].lda, d.ldb = (int)g[i].ldb, d.ldd = (int)g[i].ldd;
        d.beta = g[i].beta;
        d.tiles_m = (int)((g[i].M + BM - 1) / BM);
        d.tile0 = (int)tiles;
        tiles += (int64_t)d.tiles_m * ((g[i].N + BN - 1) / BN);
    }
    if (tiles >= INT32_MAX) return averis_fail(AVERIS_EINVAL, "grouped gemm: %lld tiles in one launch", (long long)tiles);
    if (transA && transB) return launch<1, 1, CAP>(list, (int)tiles, s);
    if (transA) return launch<1, 0, CAP>(list, (int)tiles, s);
    if (transB) return launch<0, 1, CAP>(list, (int)tiles, s);
    return launch<0, 0, CAP>(list, (int)tiles, s);
}

bool aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

} // namespace

static_assert(sizeof(gg_desc) == 80, "the descriptor's size (kernel parameter space)");
static_assert(sizeof(gg_list<GG_MAX_GROUPS>) <= 32764 - 8, "the list fits the kernel parameters (CUDA ≥ 12.1, sm_70+)");

const char *gg_unsupported(int transA, int transB, const gg_gemm *g, int n) {
    static thread_local char why[160];
    for (int i = 0; i < n; i++) {
        const gg_gemm &q = g[i];
        const int64_t cont_a = transA ? q.M : q.K, cont_b = transB ? q.K : q.N; /* the contiguous dimensions */
        const int64_t min_lda = transA ? q.M : q.K, min_ldb = transB ? q.K : q.N;
        const char *w = nullptr;
        if (q.M < 0 || q.N < 0 || q.K < 0 || q.M >= INT32_MAX || q.N >= INT32_MAX || q.K >= INT32_MAX)
            w = "a size outside [0, 2^31)";
        else if (q.lda >= INT32_MAX || q.ldb >= INT32_MAX || q.ldd >= INT32_MAX) w = "a leading dimension ≥ 2^31";
        else if (cont_a % 8 || cont_b % 8) w = "an operand's contiguous dimension is not a multiple of 8";
        else if (q.lda % 8 || q.ldb % 8 || q.lda < min_lda || q.ldb < min_ldb) w = "lda or ldb not a multiple of 8 or too small";
        else if (q.ldd % 2 || q.ldd < q.N) w = "ldd odd or below N";
        else if (!aligned(q.A, 16) || !aligned(q.B, 16) || !aligned(q.D, 8)) w = "A or B not 16-byte aligned, or D not 8-byte";
        else if (q.M && q.N && (!q.A || !q.B || !q.D)) w = "a NULL operand";
        if (w) {
            snprintf(why, sizeof why, "GEMM %d of %d (M %lld, N %lld, K %lld, trans %d%d): %s", i, n, (long long)q.M,
                     (long long)q.N, (long long)q.K, transA, transB, w);
            return why;
        }
    }
    return nullptr;
}

averis_status gg_run(int transA, int transB, const gg_gemm *g, int n, cudaStream_t s) {
    if (const char *w = gg_unsupported(transA, transB, g, n)) return averis_fail(AVERIS_EINVAL, "grouped gemm: %s", w);
    /* the non-empty GEMMs, in launches of at most GG_MAX_GROUPS */
    gg_gemm batch[GG_MAX_GROUPS];
    int nb = 0;
    for (int i = 0; i <= n; i++) {
        if (i < n && g[i].M > 0 && g[i].N > 0) batch[nb++] = g[i];
        if (nb == GG_MAX_GROUPS || (i == n && nb > 0)) {
            CU_OK(nb <= 32 ? run_list<32>(transA, transB, batch, nb, s) : run_list<GG_MAX_GROUPS>(transA, transB, batch, nb, s));
            nb = 0;
        }
    }
    return AVERIS_OK;
}

long long gg_launches(void) { return g_launches.load(); }
