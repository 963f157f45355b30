/* qlinear_group.cu — the MoE experts' linears of one layer at once
 * (qlinear_group.cuh). The per-expert kernels' bodies (qlinear_kern.cuh,
 * which qlinear.cu's k_mean_fwd, k_mean_dgrad_part/_sum, k_fill_x/_d run)
 * run here on a segment each (blockIdx.y or .z): the same bits. */
#include "qlinear_group.cuh"
#include "qlinear_kern.cuh"
#include "grouped_gemm.cuh"
#include "nvfp4_device.cuh"
#include "averis/model_spec.h"

#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

__device__ __forceinline__ bool seg_of(const int *offs, int e, int64_t &o, int64_t &n) {
    o = offs[e];
    n = offs[e + 1] - o;
    return n > 0;
}

/* k_mean_fwd on expert blockIdx.y: bias [E × n] */
__global__ void __launch_bounds__(256, 4) k_mean_fwd_seg(const int *offs, const float *mu_all, const __nv_bfloat16 *wq_all,
                                                        const float *w_amax_all, int64_t n, int64_t m, float *bias_all) {
    int e = (int)blockIdx.y;
    int64_t so, sn;
    if (!seg_of(offs, e, so, sn)) return;
    const float *mu = mu_all + e * m;
    const __nv_bfloat16 *wq = wq_all + e * n * m;
    mean_fwd_body(mu, wq, w_amax_all[e], n, m, bias_all + e * n);
}

/* k_mean_dgrad_part on expert blockIdx.z: part [E × CL_MEAN_SLICES × m] */
__global__ void __launch_bounds__(256, 4) k_mean_dgrad_part_seg(const int *offs, const float *mu_all,
                                                               const __nv_bfloat16 *wq_all, int64_t n, int64_t m,
                                                               float *part_all) {
    int e = (int)blockIdx.z;
    int64_t so, sn;
    if (!seg_of(offs, e, so, sn)) return;
    const float *mu = mu_all + e * n;
    const __nv_bfloat16 *wq = wq_all + e * n * m;
    mean_dgrad_part_body(mu, wq, n, m, part_all + (int64_t)e * CL_MEAN_SLICES * m);
}

/* k_mean_dgrad_sum on expert blockIdx.y: bias [E × m] */
__global__ void k_mean_dgrad_sum_seg(const int *offs, const float *part_all, int64_t m, const float *w_amax_all,
                                     float *bias_all) {
    int e = (int)blockIdx.y;
    int64_t so, sn;
    if (!seg_of(offs, e, so, sn)) return;
    mean_dgrad_sum_body(part_all + (int64_t)e * CL_MEAN_SLICES * m, m, w_amax_all[e], bias_all + e * m);
}

/* k_fill_x on expert blockIdx.y: its wgrad copy's block [m × kp_e] in xt */
__global__ void k_fill_x_seg(const int *offs, __nv_bfloat16 *xt_all, int64_t m, const float *sum_all, const float *mean_all) {
    int e = (int)blockIdx.y;
    int64_t so, l;
    if (!seg_of(offs, e, so, l)) return;
    int64_t lp = (l + 15) / 16 * 16, kp = lp + 16;
    __nv_bfloat16 *xt = xt_all + m * cq_seg_col0(so, e);
    const float *sum_x = sum_all + e * m, *mean_x = mean_all + e * m;
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < m) fill_x_row(xt, kp, lp, j, l, sum_x, mean_x);
}

/* k_fill_d on expert blockIdx.y */
__global__ void k_fill_d_seg(const int *offs, __nv_bfloat16 *dt_all, int64_t n, const float *mean_all, const float *sum_all,
                             const float *alpha_all) {
    int e = (int)blockIdx.y;
    int64_t so, l;
    if (!seg_of(offs, e, so, l)) return;
    int64_t lp = (l + 15) / 16 * 16, kp = lp + 16;
    __nv_bfloat16 *dt = dt_all + n * cq_seg_col0(so, e);
    const float *mean_d = mean_all + e * n, *sum_d = sum_all + e * n;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) fill_d_row(dt, kp, lp, i, mean_d, sum_d, alpha_all[e]);
}

/* the grouped path's bias: D rows of expert blockIdx.y = (add ? D : 0) + bias_e */
__global__ void k_bias_rows_seg(const int *offs, float *D, int64_t N, const float *bias_all, int add) {
    int e = (int)blockIdx.y;
    int64_t o, n;
    if (!seg_of(offs, e, o, n)) return;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * N) return;
    float *d = D + o * N + i;
    float b = bias_all[e * N + i % N];
    *d = add ? *d + b : b;
}

/* ------------------------------------------------------------ the GEMMs */
/* per non-empty expert (row-major, as cl_matmul): D_e = α_e·op(A_e)·op(B_e) + β·D_e (+ 1·bias_e) */
struct seg_gemm {
    int transA = 0, transB = 0, beta1 = 0;
    cudaDataType_t tab = CUDA_R_16BF;
    std::vector<int64_t> M, N, K, lda, ldb, ldd;
    std::vector<const void *> A, B;
    std::vector<float *> D;
    std::vector<const float *> alpha_d, bias;
    std::vector<int> expert;
    void add(int e, int64_t m_, int64_t n_, int64_t k_, const float *al, const void *a, int64_t la, const void *b, int64_t lb,
             float *d, int64_t ld, const float *bi) {
        expert.push_back(e), M.push_back(m_), N.push_back(n_), K.push_back(k_), alpha_d.push_back(al), A.push_back(a);
        lda.push_back(la), B.push_back(b), ldb.push_back(lb), D.push_back(d), ldd.push_back(ld), bias.push_back(bi);
    }
};

/* the grouped call's state: a cuBLAS handle, host α/β and pinned (device-
 * readable) pointer arrays; per operand type: 0 untried, 1 works, -1 refused */
struct grp_state {
    cublasHandle_t h = nullptr;
    void **ptrs = nullptr;    /* [3 × cap] pinned, mapped: A, B, C arrays */
    float *alpha_h = nullptr; /* [cap] pinned: the experts' α from the device */
    float *ab = nullptr;      /* [2 × cap] pinned, mapped: a call's α and β arrays */
    int cap = 0;
    int ok_bf16 = 0, ok_f32 = 0;
};
/* per device (a cuBLAS handle belongs to the device it was created on: the
 * data-parallel trainer runs a thread per GPU); grp() is the current one's */
enum { GRP_MAX_DEVICES = 64 };
grp_state g_grp_dev[GRP_MAX_DEVICES];
std::mutex g_grp_mu;
grp_state &grp() {
    int d = 0;
    if (cudaGetDevice(&d) != cudaSuccess || d < 0 || d >= GRP_MAX_DEVICES) d = 0;
    return g_grp_dev[d];
}

averis_status grp_reserve(int n) {
    grp_state &g = grp();
    if (!g.h) CU_CUBLAS_TRY(cublasCreate(&g.h));
    if (n <= g.cap) return AVERIS_OK;
    if (g.ptrs) cudaFreeHost(g.ptrs);
    if (g.alpha_h) cudaFreeHost(g.alpha_h);
    if (g.ab) cudaFreeHost(g.ab);
    g.ptrs = nullptr, g.alpha_h = g.ab = nullptr, g.cap = 0;
    CU_TRY(cudaHostAlloc(reinterpret_cast<void **>(&g.ptrs), 3 * (size_t)n * sizeof(void *), cudaHostAllocMapped | cudaHostAllocPortable));
    CU_TRY(cudaHostAlloc(reinterpret_cast<void **>(&g.alpha_h), (size_t)n * sizeof(float), cudaHostAllocMapped | cudaHostAllocPortable));
    CU_TRY(cudaHostAlloc(reinterpret_cast<void **>(&g.ab), 2 * (size_t)n * sizeof(float), cudaHostAllocMapped | cudaHostAllocPortable));
    void *dp = nullptr;
    CU_TRY(cudaHostGetDevicePointer(&dp, g.ptrs, 0));
    if (dp != static_cast<void *>(g.ptrs))
        return averis_fail(AVERIS_EUNSUPPORTED, "grouped GEMM: pinned memory has another device address (no unified addressing)");
    g.cap = n;
    return AVERIS_OK;
}

/* One cublasGemmGroupedBatchedEx, a group of one GEMM per item, α and β per
 * item (host values); the pointer arrays in pinned mapped memory,
 * readable from the host and the device alike. The caller synchronised the
 * stream (the arrays of the previous call are free). Row-major items map to
 * cuBLAS's column-major as cl_matmul does: D' = op(B)'·op(A)'. */
cublasStatus_t grp_call(const seg_gemm &q, const float *alpha, const float *beta, cudaStream_t s) {
    grp_state &g = grp();
    int ng = (int)q.M.size();
    /* α and β in pinned mapped memory too: host pointer mode reads them on the host, but where they are read is
     * then no matter */
    float *alpha_h = g.ab, *beta_h = g.ab + g.cap;
    for (int i = 0; i < ng; i++) alpha_h[i] = alpha[i], beta_h[i] = beta[i];
    std::vector<cublasOperation_t> ta((size_t)ng, q.transB ? CUBLAS_OP_T : CUBLAS_OP_N),
        tb((size_t)ng, q.transA ? CUBLAS_OP_T : CUBLAS_OP_N);
    std::vector<int> mm(ng), nn(ng), kk(ng), la(ng), lb(ng), lc(ng), gs(ng, 1);
    const void **pa = const_cast<const void **>(g.ptrs), **pb = pa + ng;
    void **pc = g.ptrs + 2 * ng;
    for (int i = 0; i < ng; i++) {
        mm[i] = (int)q.N[i], nn[i] = (int)q.M[i], kk[i] = (int)q.K[i];
        pa[i] = q.B[i], la[i] = (int)q.ldb[i];
        pb[i] = q.A[i], lb[i] = (int)q.lda[i];
        pc[i] = q.D[i], lc[i] = (int)q.ldd[i];
    }
    cublasStatus_t st = cublasSetStream(g.h, s);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return cublasGemmGroupedBatchedEx(g.h, ta.data(), tb.data(), mm.data(), nn.data(), kk.data(), alpha_h, pa, q.tab,
                                      la.data(), pb, q.tab, lb.data(), beta_h, pc, CUDA_R_32F, lc.data(), ng, gs.data(),
                                      CUBLAS_COMPUTE_32F);
}

/* The probe: two groups of small integer matrices (exact in BF16 and fp32),
 * their results against the host's; 1 if cuBLAS ran them right. */
int grp_probe(cudaDataType_t tab) {
    const int M0 = 16, N0 = 16, K0 = 32, M1 = 8, N1 = 32, K1 = 16;
    size_t esz = tab == CUDA_R_16BF ? 2 : 4;
    std::vector<float> a0(M0 * K0), b0(K0 * N0), a1(K1 * M1), b1(N1 * K1), c1(M1 * N1);
    for (size_t i = 0; i < a0.size(); i++) a0[i] = (float)((int)(i % 5) - 2);
    for (size_t i = 0; i < b0.size(); i++) b0[i] = (float)((int)(i % 3) - 1);
    for (size_t i = 0; i < a1.size(); i++) a1[i] = (float)((int)(i % 7) - 3);
    for (size_t i = 0; i < b1.size(); i++) b1[i] = (float)((int)(i % 4) - 2);
    for (size_t i = 0; i < c1.size(); i++) c1[i] = (float)(i % 9);
    auto pack = [&](const std::vector<float> &v) {
        std::vector<unsigned char> o(v.size() * esz);
        for (size_t i = 0; i < v.size(); i++) {
            if (esz == 4) memcpy(&o[4 * i], &v[i], 4);
            else {
                __nv_bfloat16 b = __float2bfloat16_rn(v[i]);
                memcpy(&o[2 * i], &b, 2);
            }
        }
        return o;
    };
    /* group 0: D0 [M0×N0] = 2·A0 [M0×K0]·B0 [K0×N0]; group 1: D1 [M1×N1] = 0.5·A1ᵀ·B1ᵀ + D1 (A1 [K1×M1], B1 [N1×K1]):
     * different shapes, α and β per group */
    char *buf = nullptr;
    const size_t slot = 4096; /* bytes: ≥ 1024 floats, each matrix ≤ 512 elements */
    size_t off_a0 = 0, off_b0 = slot, off_a1 = 2 * slot, off_b1 = 3 * slot, off_d0 = 4 * slot, off_d1 = 5 * slot;
    if (cudaMalloc(&buf, 6 * slot) != cudaSuccess) return (void)cudaGetLastError(), 0;
    std::vector<unsigned char> pa0 = pack(a0), pb0 = pack(b0);
    cudaMemcpy(buf + off_a0, pa0.data(), pa0.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(buf + off_b0, pb0.data(), pb0.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(buf + off_d1, c1.data(), c1.size() * 4, cudaMemcpyHostToDevice);
    int ok = 0;
    seg_gemm q0;
    q0.tab = tab;
    /* one call has one op pair (transA = transB = 0): group 1's operands are stored transposed */
    std::vector<float> a1t(M1 * K1), b1t(K1 * N1);
    for (int i = 0; i < M1; i++)
        for (int k = 0; k < K1; k++) a1t[i * K1 + k] = a1[k * M1 + i];
    for (int k = 0; k < K1; k++)
        for (int j = 0; j < N1; j++) b1t[k * N1 + j] = b1[j * K1 + k];
    std::vector<unsigned char> pa1t = pack(a1t), pb1t = pack(b1t);
    cudaMemcpy(buf + off_a1, pa1t.data(), pa1t.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(buf + off_b1, pb1t.data(), pb1t.size(), cudaMemcpyHostToDevice);
    q0.add(0, M0, N0, K0, nullptr, buf + off_a0, K0, buf + off_b0, N0, reinterpret_cast<float *>(buf + off_d0), N0, nullptr);
    q0.add(1, M1, N1, K1, nullptr, buf + off_a1, K1, buf + off_b1, N1, reinterpret_cast<float *>(buf + off_d1), N1, nullptr);
    const float al[2] = {2.0f, 0.5f}, be[2] = {0.0f, 1.0f};
    if (cudaDeviceSynchronize() == cudaSuccess && grp_reserve(2) == AVERIS_OK) {
        cublasStatus_t st = grp_call(q0, al, be, 0);
        cudaError_t ce = cudaDeviceSynchronize();
        if (st == CUBLAS_STATUS_SUCCESS && ce == cudaSuccess) {
            std::vector<float> d0(M0 * N0), d1(M1 * N1);
            cudaMemcpy(d0.data(), buf + off_d0, d0.size() * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(d1.data(), buf + off_d1, d1.size() * 4, cudaMemcpyDeviceToHost);
            ok = 1;
            for (int i = 0; i < M0; i++)
                for (int j = 0; j < N0; j++) {
                    float acc = 0.0f;
                    for (int k = 0; k < K0; k++) acc += a0[i * K0 + k] * b0[k * N0 + j];
                    ok &= d0[i * N0 + j] == 2.0f * acc;
                }
            for (int i = 0; i < M1; i++)
                for (int j = 0; j < N1; j++) {
                    float acc = 0.0f;
                    for (int k = 0; k < K1; k++) acc += a1t[i * K1 + k] * b1t[k * N1 + j];
                    ok &= d1[i * N1 + j] == 0.5f * acc + c1[i * N1 + j];
                }
            if (!ok) fprintf(stderr, "averis: cublasGemmGroupedBatchedEx (%s) gave wrong results in its check\n",
                             tab == CUDA_R_16BF ? "BF16 A/B, fp32 C" : "fp32");
        } else {
            fprintf(stderr, "averis: cublasGemmGroupedBatchedEx (%s) refused: status %d, %s\n",
                    tab == CUDA_R_16BF ? "BF16 A/B, fp32 C" : "fp32", (int)st, cudaGetErrorString(ce));
        }
    }
    (void)cudaGetLastError();
    cudaFree(buf);
    return ok;
}

/* q as our grouped GEMM's list (grouped_gemm.cuh): the same operands, α
 * pointers and bias rows; empty if the kernel cannot take it (fp32
 * operands, or gg_unsupported: one stderr line the first time), and then
 * the caller runs the per-expert GEMMs */
std::atomic<int> g_own_refused{0};
std::vector<gg_gemm> own_list(const seg_gemm &q) {
    std::vector<gg_gemm> v;
    if (q.tab != CUDA_R_16BF) return v; /* the fp32 recipe */
    v.resize(q.M.size());
    for (size_t i = 0; i < q.M.size(); i++) {
        gg_gemm &g = v[i];
        g.M = q.M[i], g.N = q.N[i], g.K = q.K[i];
        g.A = static_cast<const __nv_bfloat16 *>(q.A[i]), g.lda = q.lda[i];
        g.B = static_cast<const __nv_bfloat16 *>(q.B[i]), g.ldb = q.ldb[i];
        g.D = q.D[i], g.ldd = q.ldd[i];
        g.alpha = q.alpha_d[i], g.beta = q.beta1 ? 1.0f : 0.0f, g.bias = q.bias[i];
    }
    if (const char *why = gg_unsupported(q.transA, q.transB, v.data(), (int)v.size())) {
        if (!g_own_refused.exchange(1))
            fprintf(stderr, "averis: AVERIS_MOE_GROUPED=3: our grouped GEMM cannot take %s; such lists run one cuBLASLt "
                            "GEMM per expert\n", why);
        v.clear();
    }
    return v;
}

/* the GEMMs of q: cuBLAS's grouped call (mode 1, where it takes the types;
 * else as mode 3), ours (mode 3, where it takes the list) or one cl_matmul
 * per expert. alpha_all [E] device (NULL: α = 1); bias_all [E × N] rows of
 * D_all [R × N] (cuBLAS's grouped call: added to the rows first, then β = 1). */
averis_status run_gemms(const seg_gemm &q, int mode, const float *alpha_all, int E, const int *offs_d, float *D_all,
                        int64_t N_all, int64_t maxn, const float *bias_all, cudaStream_t s) {
    if (q.M.empty()) return AVERIS_OK;
    if (mode == CL_SEG_GROUPED && !cl_seg_grouped_ok(q.tab)) mode = CL_SEG_OWN_GROUPED;
    if (mode == CL_SEG_OWN_GROUPED) {
        std::vector<gg_gemm> v = own_list(q);
        if (!v.empty()) {
            CU_PROF("gemm grouped", s);
            return gg_run(q.transA, q.transB, v.data(), (int)v.size(), s);
        }
    }
    if (mode == CL_SEG_GROUPED) {
        CU_PROF("gemm grouped", s);
        std::lock_guard<std::mutex> lock(g_grp_mu);
        CU_OK(grp_reserve(std::max((int)q.M.size(), E)));
        grp_state &g = grp();
        if (bias_all) {
            k_bias_rows_seg<<<dim3(cu_blocks(maxn * N_all, 256), (unsigned)E), 256, 0, s>>>(offs_d, D_all, N_all, bias_all,
                                                                                            q.beta1);
            CU_LAUNCHED();
        }
        if (alpha_all) CU_TRY(cudaMemcpyAsync(g.alpha_h, alpha_all, (size_t)E * sizeof(float), cudaMemcpyDeviceToHost, s));
        CU_TRY(cudaStreamSynchronize(s)); /* α on the host; the previous call's pointer arrays are free */
        std::vector<float> al(q.M.size()), be(q.M.size(), (q.beta1 || bias_all) ? 1.0f : 0.0f);
        for (size_t i = 0; i < q.M.size(); i++) al[i] = alpha_all ? g.alpha_h[q.expert[i]] : 1.0f;
        cublasStatus_t st = grp_call(q, al.data(), be.data(), s);
        if (st != CUBLAS_STATUS_SUCCESS)
            return averis_fail(AVERIS_EIO, "cublasGemmGroupedBatchedEx: status %d (%zu groups)", (int)st, q.M.size());
        CU_LAUNCHED();
        return AVERIS_OK;
    }
    const float *beta = q.beta1 ? cl_one() : cl_zero();
    for (size_t i = 0; i < q.M.size(); i++)
        CU_OK(cl_matmul(q.transA, q.transB, q.M[i], q.N[i], q.K[i], alpha_all ? q.alpha_d[i] : cl_one(), q.A[i], q.tab,
                        q.lda[i], q.B[i], q.tab, q.ldb[i], beta, q.D[i], q.D[i], CUDA_R_32F, q.ldd[i], q.bias[i], s));
    return AVERIS_OK;
}

cq_seg padded(const cq_seg *g) {
    cq_seg p = *g;
    p.pad = 1;
    return p;
}

int64_t seg_maxn(const cq_seg &g) {
    int64_t mx = 0;
    for (int e = 0; e < g.nseg; e++) mx = std::max(mx, cq_seg_n(g, e));
    return mx;
}

} // namespace

int cl_seg_grouped_ok(cudaDataType_t operands) {
    std::lock_guard<std::mutex> lock(g_grp_mu);
    grp_state &g = grp();
    int &ok = operands == CUDA_R_16BF ? g.ok_bf16 : g.ok_f32;
    if (!ok) {
        ok = grp_probe(operands) ? 1 : -1;
        if (ok < 0)
            fprintf(stderr, "averis: AVERIS_MOE_GROUPED=1: no cuBLAS grouped GEMM for %s operands; %s\n",
                    operands == CUDA_R_16BF ? "BF16" : "fp32",
                    operands == CUDA_R_16BF ? "the experts' GEMMs run in our grouped GEMM (as AVERIS_MOE_GROUPED=3)"
                                            : "the experts run one cuBLASLt GEMM each (as AVERIS_MOE_GROUPED=2)");
    }
    return ok > 0;
}

averis_status cl_seg_input_setup(cl_seg_input *x, int64_t m, int E, const cl_alloc_fn &alloc) {
    x->m = m;
    float **f[5] = {&x->amax, &x->res_amax, &x->mean, &x->xt_amax, &x->xt_sum};
    const int64_t n[5] = {E, E, (int64_t)E * m, E, (int64_t)E * m};
    for (int i = 0; i < 5; i++) CU_OK(alloc(reinterpret_cast<void **>(f[i]), (size_t)n[i] * sizeof(float)));
    x->amax_valid = x->xt_ready = 0;
    return AVERIS_OK;
}

averis_status cl_seg_scratch_setup(cl_seg_scratch *scr, int64_t R, int E, int64_t wmax, const cl_alloc_fn &alloc) {
    CU_OK(alloc(reinterpret_cast<void **>(&scr->dq), (size_t)(cq_seg_rows(R, E) * wmax) * 2));
    CU_OK(alloc(reinterpret_cast<void **>(&scr->dt), (size_t)(wmax * cq_seg_cols(R, E)) * 2));
    CU_OK(alloc(reinterpret_cast<void **>(&scr->mean_d), (size_t)E * wmax * 4));
    CU_OK(alloc(reinterpret_cast<void **>(&scr->sum_d), (size_t)E * wmax * 4));
    CU_OK(alloc(reinterpret_cast<void **>(&scr->bias), (size_t)E * wmax * 4));
    CU_OK(alloc(reinterpret_cast<void **>(&scr->mean_part), (size_t)E * CL_MEAN_SLICES * wmax * 4));
    CU_OK(alloc(reinterpret_cast<void **>(&scr->scal), (size_t)CL_SEG_NSCAL * E * 4));
    return AVERIS_OK;
}

averis_status cl_seg_prep_w(const qlin_recipe *r, cl_seg_weight *w, cudaStream_t s) {
    if (r->id == QLIN_FP32) return AVERIS_OK;
    if (!r->fp4) return cq_to_bf16(w->w, w->wq, (int64_t)w->E * w->n * w->m, s);
    cq_seg g = {w->E, nullptr, nullptr, w->n, 0, nullptr, 0};
    cq_seg_job j = {};
    j.src = w->w, j.scols = w->m, j.ld = w->m;
    j.tile = 1;
    j.amax = w->amax;
    j.bf16_out = w->wq, j.ld_out = w->m;
    return cq_quantize_seg(&j, &g, s);
}

averis_status cl_seg_prep_x(const qlin_recipe *r, cl_seg_input *x, const cq_seg *g0, cudaStream_t s) {
    x->xt_ready = 0;
    x->amax_valid = r->fp4;
    if (r->id == QLIN_FP32) return AVERIS_OK;
    cq_seg g = padded(g0);
    if (!r->fp4) return cq_to_bf16_seg(x->x, x->m, &g, x->xq, s);
    if (r->split_x) CU_OK(cq_colstats_seg(x->x, 0, x->m, x->m, &g, x->mean, x->res_amax, s));
    cq_seg_job j = {};
    j.src = x->x, j.scols = x->m, j.ld = x->m;
    j.mean = r->split_x ? x->mean : nullptr;
    j.amax_in = r->split_x ? x->res_amax : nullptr;
    j.amax = x->amax;
    j.bf16_out = x->xq, j.ld_out = x->m;
    return cq_quantize_seg(&j, &g, s);
}

averis_status cl_seg_forward(const qlin_recipe *r, const cl_seg_input *x, const cl_seg_weight *w, const cq_seg *g0,
                             float *Y, int mode, cl_seg_scratch *scr, cudaStream_t s) {
    cq_seg g = padded(g0);
    int E = g.nseg;
    int64_t m = x->m, n = w->n, maxn = seg_maxn(g);
    if (m != w->m || E != w->E || !g.offs_d) return averis_fail(AVERIS_EINVAL, "cuda seg forward: shapes differ");
    CU_OK(cl_lt_ready()); /* cl_one()/cl_zero() */
    seg_gemm q;
    q.transA = 0, q.transB = 1;
    const float *alpha = nullptr, *bias = nullptr;
    if (r->id == QLIN_FP32) {
        q.tab = CUDA_R_32F;
        for (int e = 0; e < E; e++)
            if (int64_t l = cq_seg_n(g, e))
                q.add(e, l, n, m, nullptr, x->x + cq_seg_off(g, e) * m, m, w->w + e * n * m, m, Y + cq_seg_off(g, e) * n, n,
                      nullptr);
        return run_gemms(q, mode, nullptr, E, g.offs_d, Y, n, maxn, nullptr, s);
    }
    q.tab = CUDA_R_16BF;
    if (r->fp4) {
        float *a = scr->scal + 3 * E;
        {
            CU_PROF("alpha", s);
            CU_OK(cq_alpha_seg(x->amax, w->amax, a, E, s));
        }
        alpha = a;
        if (r->split_x) {
            CU_PROF("averis mean gemv", s);
            k_mean_fwd_seg<<<dim3(cu_blocks(n * 32, 256), (unsigned)E), 256, 0, s>>>(g.offs_d, x->mean, w->wq, w->amax, n, m,
                                                                                    scr->bias);
            CU_LAUNCHED();
            bias = scr->bias;
        }
    }
    for (int e = 0; e < E; e++)
        if (int64_t l = cq_seg_n(g, e)) {
            int64_t o = cq_seg_off(g, e);
            q.add(e, l, n, m, alpha ? alpha + e : nullptr, x->xq + cq_seg_row0(o, e) * m, m, w->wq + e * n * m, m, Y + o * n,
                  n, bias ? bias + e * n : nullptr);
        }
    return run_gemms(q, mode, alpha, E, g.offs_d, Y, n, maxn, bias, s);
}

averis_status cl_seg_backward(const qlin_recipe *r, cl_seg_input *x, const cl_seg_weight *w, const cq_seg *g0,
                              const float *D, float *dX, int dx_acc, float *dW, const uint64_t *streams_d, int mode,
                              cl_seg_scratch *scr, cudaStream_t s) {
    cq_seg g = padded(g0);
    int E = g.nseg;
    int64_t m = x->m, n = w->n, maxn = seg_maxn(g);
    if (m != w->m || E != w->E || !g.offs_d) return averis_fail(AVERIS_EINVAL, "cuda seg backward: shapes differ");
    CU_OK(cl_lt_ready()); /* cl_one()/cl_zero() */
    seg_gemm qd, qw; /* dgrad: dX_e = D_e·W_e; wgrad: dW_e += D_eᵀ·X_e */
    qd.transA = 0, qd.transB = 0, qd.beta1 = dx_acc;
    qw.beta1 = 1;
    if (r->id == QLIN_FP32) {
        qd.tab = qw.tab = CUDA_R_32F;
        qw.transA = 1, qw.transB = 0;
        for (int e = 0; e < E; e++)
            if (int64_t l = cq_seg_n(g, e)) {
                int64_t o = cq_seg_off(g, e);
                qd.add(e, l, m, n, nullptr, D + o * n, n, w->w + e * n * m, m, dX + o * m, m, nullptr);
                qw.add(e, n, m, l, nullptr, D + o * n, n, x->x + o * m, m, dW + e * n * m, m, nullptr);
            }
        if (dX) CU_OK(run_gemms(qd, mode, nullptr, E, g.offs_d, dX, m, maxn, nullptr, s));
        if (dW) CU_OK(run_gemms(qw, mode, nullptr, E, g.offs_d, nullptr, m, maxn, nullptr, s));
        return AVERIS_OK;
    }
    qd.tab = qw.tab = CUDA_R_16BF;
    if (!r->fp4) {
        CU_OK(cq_to_bf16_seg(D, n, &g, scr->dq, s));
        qw.transA = 1, qw.transB = 0;
        if (dW && !x->xt_ready) CU_OK(cq_to_bf16_seg(x->x, m, &g, x->xq, s));
        if (dW) x->xt_ready = 1; /* xq holds bf16(X) again */
        for (int e = 0; e < E; e++)
            if (int64_t l = cq_seg_n(g, e)) {
                int64_t o = cq_seg_off(g, e), r0 = cq_seg_row0(o, e);
                qd.add(e, l, m, n, nullptr, scr->dq + r0 * n, n, w->wq + e * n * m, m, dX + o * m, m, nullptr);
                qw.add(e, n, m, l, nullptr, scr->dq + r0 * n, n, x->xq + r0 * m, m, dW + e * n * m, m, nullptr);
            }
        if (dX) CU_OK(run_gemms(qd, mode, nullptr, E, g.offs_d, dX, m, maxn, nullptr, s));
        if (dW) CU_OK(run_gemms(qw, mode, nullptr, E, g.offs_d, nullptr, m, maxn, nullptr, s));
        return AVERIS_OK;
    }
    float *res_d = scr->scal, *amax_dq = scr->scal + E, *amax_dt = scr->scal + 2 * E, *alpha_dg = scr->scal + 4 * E,
          *alpha_wg = scr->scal + 5 * E;
    if (r->split_d) CU_OK(cq_colstats_seg(D, 0, n, n, &g, scr->mean_d, res_d, s));
    if (dX) {
        cq_seg_job j = {};
        j.src = D, j.scols = n, j.ld = n;
        j.sr = r->sr, j.seed = r->seed, j.streams = streams_d;
        j.mean = r->split_d ? scr->mean_d : nullptr;
        j.amax_in = r->split_d ? res_d : nullptr;
        j.amax = amax_dq;
        j.bf16_out = scr->dq, j.ld_out = n;
        CU_OK(cq_quantize_seg(&j, &g, s));
        CU_OK(cq_alpha_seg(amax_dq, w->amax, alpha_dg, E, s));
        const float *bias = nullptr;
        if (r->split_d) {
            CU_PROF("averis mean gemv", s);
            k_mean_dgrad_part_seg<<<dim3(cu_blocks(m, 256), CL_MEAN_SLICES, (unsigned)E), dim3(32, 8), 0, s>>>(
                g.offs_d, scr->mean_d, w->wq, n, m, scr->mean_part);
            CU_LAUNCHED();
            k_mean_dgrad_sum_seg<<<dim3(cu_blocks(m, 256), (unsigned)E), 256, 0, s>>>(g.offs_d, scr->mean_part, m, w->amax,
                                                                                     scr->bias);
            CU_LAUNCHED();
            bias = scr->bias;
        }
        for (int e = 0; e < E; e++)
            if (int64_t l = cq_seg_n(g, e)) {
                int64_t o = cq_seg_off(g, e);
                qd.add(e, l, m, n, alpha_dg + e, scr->dq + cq_seg_row0(o, e) * n, n, w->wq + e * n * m, m, dX + o * m, m,
                       bias ? bias + e * m : nullptr);
            }
        CU_OK(run_gemms(qd, mode, alpha_dg, E, g.offs_d, dX, m, maxn, bias, s));
    }
    if (dW) {
        /* the wgrad copies: along tokens, RHT, SR stream 2·stream+1 for D */
        cq_seg_job j = {};
        j.src = D, j.scols = n, j.ld = n, j.transpose = 1;
        j.rht = r->rht, j.sr = r->sr, j.seed = r->seed, j.streams = streams_d + E;
        j.mean = r->split_d ? scr->mean_d : nullptr;
        j.amax_in = !r->rht && dX ? amax_dq : nullptr;
        j.amax = amax_dt;
        j.bf16_out = scr->dt, j.kp_extra = r->split_x ? 16 : 0;
        j.rowsum = r->split_x ? scr->sum_d : nullptr;
        CU_OK(cq_quantize_seg(&j, &g, s));
        if (!x->xt_ready) {
            cq_seg_job jx = {};
            jx.src = x->x, jx.scols = m, jx.ld = m, jx.transpose = 1;
            jx.rht = r->rht;
            jx.mean = r->split_x ? x->mean : nullptr;
            jx.amax_in = !r->rht && x->amax_valid ? x->amax : nullptr;
            jx.amax = x->xt_amax;
            jx.bf16_out = x->xt, jx.kp_extra = r->split_x ? 16 : 0;
            jx.rowsum = r->split_d ? x->xt_sum : nullptr;
            CU_OK(cq_quantize_seg(&jx, &g, s));
            if (r->split_x) {
                CU_PROF("averis fill", s);
                k_fill_x_seg<<<dim3(cu_blocks(m, 128), (unsigned)E), 128, 0, s>>>(g.offs_d, x->xt, m, x->xt_sum, x->mean);
                CU_LAUNCHED();
            }
            x->xt_ready = 1;
        }
        CU_OK(cq_alpha_seg(amax_dt, x->xt_amax, alpha_wg, E, s));
        if (r->split_x) {
            CU_PROF("averis fill", s);
            k_fill_d_seg<<<dim3(cu_blocks(n, 128), (unsigned)E), 128, 0, s>>>(g.offs_d, scr->dt, n, scr->mean_d, scr->sum_d,
                                                                             alpha_wg);
            CU_LAUNCHED();
        }
        qw.transA = 0, qw.transB = 1;
        for (int e = 0; e < E; e++)
            if (int64_t l = cq_seg_n(g, e)) {
                int64_t c0 = cq_seg_col0(cq_seg_off(g, e), e), kp = cl_kp(r, l);
                qw.add(e, n, m, kp, alpha_wg + e, scr->dt + n * c0, kp, x->xt + m * c0, kp, dW + e * n * m, m, nullptr);
            }
        CU_OK(run_gemms(qw, mode, alpha_wg, E, g.offs_d, nullptr, m, maxn, nullptr, s));
    }
    return AVERIS_OK;
}
