/* grouped_gemm.cuh — our grouped GEMM (internal to cuda/; the MoE experts'
 * GEMMs in AVERIS_MOE_GROUPED=3, qlinear_group.cu): one launch computes,
 * for every GEMM i of a list of n,
 *
 *     D_i [M_i × N_i] = α_i·op(A_i)·op(B_i) + β_i·D_i + 1·bias_iᵀ
 *
 * row-major as cl_matmul (qlinear.cuh): op(A) [M×K] is A [M×K] (lda ≥ K)
 * or, with transA, A stored [K×M] (lda ≥ M); op(B) [K×N] is B [K×N]
 * (ldb ≥ N) or, with transB, B stored [N×K] (ldb ≥ K). A and B BF16, the
 * products summed in fp32 by the tensor cores (mma.sync m16n8k16), D fp32.
 * α_i is a device scalar (NULL: 1) read by the kernel, so nothing waits on
 * the host; bias_i [N_i] fp32 (NULL: none) is added after α·AB + β·D.
 *
 * Tiles: 128×128 of D per CTA (8 warps of 64×32), K in steps of 32 through
 * a 3-stage cp.async pipeline; the CTAs of all GEMMs form one grid (a prefix
 * sum of the GEMMs' tile counts, each CTA finds its GEMM by binary search).
 * The list travels as the kernel's parameters (no copy, no host buffer to
 * keep alive): up to GG_MAX_GROUPS GEMMs per launch, more in several.
 *
 * Loads are 16 bytes (8 BF16 along the operand's contiguous dimension):
 * that dimension (K of a non-transposed A or a transposed B; M of a
 * transposed A; N of a non-transposed B) and lda, ldb must be multiples of
 * 8, A and B 16-byte aligned; ldd even and D 8-byte aligned. M, N, K are
 * otherwise free (the tiles' edges are zero-filled and masked).
 * gg_unsupported says why a list does not qualify.
 */
#ifndef AVERIS_CUDA_GROUPED_GEMM_CUH
#define AVERIS_CUDA_GROUPED_GEMM_CUH

#include "common.cuh"

/* one GEMM of the list (row-major, as above) */
struct gg_gemm {
    int64_t M, N, K;
    const __nv_bfloat16 *A, *B;
    int64_t lda, ldb;
    float *D;
    int64_t ldd;
    const float *alpha; /* device scalar, or NULL for 1 */
    float beta;         /* 0: D is written, never read */
    const float *bias;  /* [N] device, or NULL */
};
enum { GG_MAX_GROUPS = 128 };

/* NULL if gg_run computes this list, else the reason it cannot */
const char *gg_unsupported(int transA, int transB, const gg_gemm *g, int n);
/* the list's GEMMs on stream s (one launch per GG_MAX_GROUPS of them); n = 0 is a no-op */
averis_status gg_run(int transA, int transB, const gg_gemm *g, int n, cudaStream_t s);
/* launches of the kernel in this process (the tests check that a path took it) */
long long gg_launches(void);

#endif
