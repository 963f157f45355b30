/* qlinear.cuh — the emulated W4A4G4 linear layer on device (internal to
 * cuda/): cuBLASLt GEMMs on operands prepared by quant.cu.
 *
 *   forward  Y  = α_xw·X̄(_R)·W̄ᵀ + 1·b,      b  = μ̄_X·W̄ᵀ (bias epilogue)
 *   dgrad    dX = α_dw·D̄(_R)·W̄ + 1·b',       b' = μ̄_D·W̄  (bias epilogue)
 *   wgrad    dW += α·[D̄_Rᵀ | U]·[X̄_Rᵀ | V]ᵀ  (K extended by 16 columns)
 * where α = S_decA·S_decB rides on the GEMM's alpha (device pointer) and the
 * rank-one terms of the Averis wgrad, μ̄_D⊗(ΣX̄_R + l·μ̄_X) + (ΣD̄_R)⊗μ̄_X,
 * are folded into the GEMM as 6 extra K columns: each fp32 factor split
 * into BF16 hi + lo parts (hi·hi + hi·lo + lo·hi, relative error ~2^-16),
 * the D side divided by α. No l×n outer product is ever formed.
 */
#ifndef AVERIS_CUDA_QLINEAR_CUH
#define AVERIS_CUDA_QLINEAR_CUH

#include "quant.cuh"

#include <cublasLt.h>

/* D[M×N] = α·op(A)·op(B) + β·C + 1·biasᵀ, all row-major; α, β device
 * scalars; bias [N] fp32 (with an fp32 D) or NULL; C may equal D. */
averis_status cl_matmul(int transA, int transB, int64_t M, int64_t N, int64_t K, const float *alpha, const void *A,
                        cudaDataType_t ta, int64_t lda, const void *B, cudaDataType_t tb, int64_t ldb, const float *beta,
                        const void *C, void *D, cudaDataType_t td, int64_t ldd, const float *bias, cudaStream_t s);
/* cl_matmul's GEMMs on this thread planned by size class while on (the MoE
 * experts': a token count new almost every call; see lt_make_plan): returns
 * the previous setting. */
int cl_size_classes(int on);
struct cl_size_class_scope { /* on for a scope */
    int was;
    cl_size_class_scope() : was(cl_size_classes(1)) {}
    ~cl_size_class_scope() { cl_size_classes(was); }
    cl_size_class_scope(const cl_size_class_scope &) = delete;
    cl_size_class_scope &operator=(const cl_size_class_scope &) = delete;
};
/* device constants 0.0f and 1.0f (after cl_lt_ready or any GEMM) */
const float *cl_zero(void);
const float *cl_one(void);
averis_status cl_lt_ready(void);

/* A weight W [n×m] fp32, with its operand for the run's recipe. */
struct cl_weight {
    const float *w;
    int64_t n, m;
    __nv_bfloat16 *wq; /* BF16 operand [n×m]: e2m1·e4m3 (FP4) or bf16(W) */
    float *amax;       /* [1] FP4 only */
};
/* An activation X [l×m], fp32 or BF16, and its forward operand. */
struct cl_input {
    const void *x;
    int bf16;          /* x holds BF16 (then the BF16 recipe's operand is x itself) */
    int64_t l, m;
    __nv_bfloat16 *xq; /* [l×m] */
    float *amax;       /* [1] */
    int amax_valid;    /* amax holds the forward operand's amax (cl_prep_x ran) */
    int amax_known;    /* amax already holds max |x|, reduced by x's producer (producer_amax.cuh):
                          cl_prep_x skips its amax pass (recipes without the mean split) and clears it */
    float *mean;       /* [m] split only */
    float *res_amax;   /* [1] split only */
    /* the wgrad copy [m × kp], prepared on first use in the backward */
    __nv_bfloat16 *xt;
    float *xt_amax, *xt_sum; /* [1], [m] */
    int xt_ready;
};
/* Scratch for one backward of an [l×n] output gradient. */
struct cl_scratch {
    __nv_bfloat16 *dq, *dt; /* [l×n], [n×kp] */
    float *mean_d, *sum_d;  /* [n], [n] */
    float *scal;            /* [8]: res_amax_d, amax_dq, amax_dt, α fwd/dgrad/wgrad */
    float *bias;            /* [max(m, n)] */
    float *mean_part;       /* [CL_MEAN_SLICES × max(m, n)] partial sums of the dgrad mean term */
};
enum { CL_MEAN_SLICES = 16 };

int64_t cl_kp(const qlin_recipe *r, int64_t l); /* K of the wgrad GEMM */
averis_status cl_check(const qlin_recipe *r, int64_t l, int64_t m, int64_t n);
averis_status cl_prep_w(const qlin_recipe *r, cl_weight *w, cudaStream_t s);
averis_status cl_prep_x(const qlin_recipe *r, cl_input *x, cudaStream_t s);
/* Y = X·Wᵀ (+ residual, if given; Y may alias it), Y fp32 or (y_bf16, no
 * residual) BF16 rounded from the fp32 accumulator. The split recipes' mean
 * term 1·(μ̄_X·W̄ᵀ) rides on the bias epilogue into an fp32 Y; with a BF16 Y
 * it stays fp32 in mean_out [n] instead, for the consumer to add as it
 * loads (Y + 1·mean_out: only the residual product is rounded to BF16).
 * scr gives α and bias room. */
averis_status cl_forward(const qlin_recipe *r, const cl_input *x, const cl_weight *w, void *Y, int y_bf16,
                         const float *residual, float *mean_out, cl_scratch *scr, cudaStream_t s);
/* dX (= or +=, by dx_acc) and dW += from D [l×n]. */
averis_status cl_backward(const qlin_recipe *r, cl_input *x, const cl_weight *w, const float *D, float *dX, int dx_acc,
                          float *dW, uint64_t sr_stream, cl_scratch *scr, cudaStream_t s);

#endif
