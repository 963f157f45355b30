/* qlinear_group.cuh — the MoE experts' linears of one layer at once (internal
 * to cuda/; moe.cu's AVERIS_MOE_GROUPED modes 1, 2 and 3): the E experts'
 * inputs are the row segments of one X [R × m] (segment e = rows
 * offs[e]..offs[e+1], seg.cuh), their weights E stacked [n × m] matrices.
 * Each expert's math is cl_forward / cl_backward's on its rows (qlinear.cuh),
 * with the quantization, statistics, α and Averis mean terms of all experts
 * in one launch sequence (seg.cuh) and the GEMMs either
 *   mode 2 (CL_SEG_PER_EXPERT): one cl_matmul per non-empty expert, on the same
 *       operands, pointers' alignment, α and bias as the per-expert path:
 *       the same bits (test_cuda moe_group_linear_bitexact), or
 *   mode 3 (CL_SEG_OWN_GROUPED): our grouped GEMM (grouped_gemm.cuh), one
 *       launch per GEMM kind for all experts, α read on the device, the bias
 *       rows in its epilogue: no host sync. BF16 operands only (the fp32
 *       recipe's GEMMs, and a list the kernel cannot take, run as mode 2).
 *       Close, not the same bits: the kernel sums in its own order, or
 *   mode 1 (CL_SEG_GROUPED): one cublasGemmGroupedBatchedEx per GEMM kind (a
 *       group per expert) with host α (one stream sync per call) and the bias
 *       added to the output rows before the GEMM (β = 1); where cuBLAS
 *       refuses the types (BF16 A/B with an fp32 C under cuBLAS 13: one
 *       stderr line) it runs as mode 3. Close, not the same bits: the GEMM's
 *       summation order and where the bias is added differ.
 */
#ifndef AVERIS_CUDA_QLINEAR_GROUP_CUH
#define AVERIS_CUDA_QLINEAR_GROUP_CUH

#include "qlinear.cuh"
#include "seg.cuh"

#include <functional>

enum { CL_SEG_PER_EXPERT = 2, CL_SEG_GROUPED = 1, CL_SEG_OWN_GROUPED = 3 };

/* X [R × m] fp32 and its per-expert operands and statistics */
struct cl_seg_input {
    const float *x;
    int64_t m;
    __nv_bfloat16 *xq;        /* [cq_seg_rows(R, E) × m] rows layout (pad) */
    __nv_bfloat16 *xt;        /* [m × cq_seg_cols(R, E)] wgrad copies */
    float *amax, *res_amax;   /* [E], [E] */
    float *mean;              /* [E × m] */
    float *xt_amax, *xt_sum;  /* [E], [E × m] */
    int amax_valid, xt_ready;
};
/* E weights [n × m], stacked, and their operands */
struct cl_seg_weight {
    const float *w;
    int64_t n, m;
    int E;
    __nv_bfloat16 *wq; /* [E × n × m] */
    float *amax;       /* [E] */
};
/* Scratch for one backward (wmax ≥ every n and m) */
enum { CL_SEG_NSCAL = 6 };
struct cl_seg_scratch {
    __nv_bfloat16 *dq, *dt; /* [cq_seg_rows(R, E) × wmax], [wmax × cq_seg_cols(R, E)] */
    float *mean_d, *sum_d;  /* [E × wmax] */
    float *bias;            /* [E × wmax] */
    float *mean_part;       /* [E × CL_MEAN_SLICES × wmax] */
    float *scal;            /* [CL_SEG_NSCAL × E]: res_d, amax_dq, amax_dt, α fwd/dgrad/wgrad */
};

typedef std::function<averis_status(void **, size_t)> cl_alloc_fn;
/* the statistics of an input of width m (operand buffers: the caller's) */
averis_status cl_seg_input_setup(cl_seg_input *x, int64_t m, int E, const cl_alloc_fn &alloc);
averis_status cl_seg_scratch_setup(cl_seg_scratch *scr, int64_t R, int E, int64_t wmax, const cl_alloc_fn &alloc);

/* the E weights' operands: cl_prep_w of each (16×16 tiles per weight) */
averis_status cl_seg_prep_w(const qlin_recipe *r, cl_seg_weight *w, cudaStream_t s);
/* cl_prep_x of each segment */
averis_status cl_seg_prep_x(const qlin_recipe *r, cl_seg_input *x, const cq_seg *g, cudaStream_t s);
/* Y [R × n] fp32 = each segment's X_e·W_eᵀ (cl_forward, fp32 Y, no residual) */
averis_status cl_seg_forward(const qlin_recipe *r, const cl_seg_input *x, const cl_seg_weight *w, const cq_seg *g,
                             float *Y, int mode, cl_seg_scratch *scr, cudaStream_t s);
/* dX [R × m] (= or +=) and dW_e += for each non-empty segment, from D [R × n];
 * streams_d: [2·E] device, the experts' dgrad SR streams then their wgrad
 * ones (qlin_dgrad_stream / qlin_wgrad_stream of each expert's stream) */
averis_status cl_seg_backward(const qlin_recipe *r, cl_seg_input *x, const cl_seg_weight *w, const cq_seg *g,
                              const float *D, float *dX, int dx_acc, float *dW, const uint64_t *streams_d, int mode,
                              cl_seg_scratch *scr, cudaStream_t s);
/* whether mode 1 runs cuBLAS's grouped GEMMs for this operand type (probed
 * once on first use: cuBLAS's answer and a check of its result); 0: mode 3 */
int cl_seg_grouped_ok(cudaDataType_t operands);

#endif
