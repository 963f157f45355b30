/* quant.cuh — NVFP4 quantization on device (quant.cu), for the linear layer
 * and the model: one quantize call per operand, the Averis column
 * statistics, the BF16 copies and the GEMM alpha. */
#ifndef AVERIS_CUDA_QUANT_CUH
#define AVERIS_CUDA_QUANT_CUH

#include "common.cuh"

/* One NVFP4 quantization of a device tensor src [srows × scols] (row stride
 * ld) of float or bf16, along its rows (transpose = 0: the quantized tensor
 * is [srows × scols]) or along its columns (transpose = 1: [scols × srows],
 * the wgrad copies, quantized along tokens). */
struct cq_job {
    const void *src;
    int bf16_in;            /* src holds bf16 (else fp32) */
    int64_t srows, scols, ld;
    int transpose;
    int tile;               /* 16×16 tiles (transpose = 0 only) */
    int rht, sr;
    uint64_t seed, stream;
    const float *mean;      /* [scols] subtracted first, or NULL */
    const float *amax_in;   /* the quantizer input's amax, known (skips the first pass), or NULL */
    float *amax;            /* [1] out: the per-tensor amax (may equal amax_in) */
    uint8_t *codes;         /* packed E2M1 [qrows × cp/2], or NULL */
    uint8_t *scales;        /* E4M3 block scales, or NULL */
    __nv_bfloat16 *bf16_out;/* e2m1·e4m3 per element (exact in bf16, no S_dec) [qrows × ld_out], or NULL */
    int64_t ld_out;
    float *rowsum;          /* transpose only: [qrows] Σ of the dequantized values over tokens (after the
                               inverse RHT), or NULL */
};
averis_status cq_quantize(const cq_job *j, cudaStream_t s);
/* Optional device scratch for cq_quantize's row sums and cq_colstats's
 * partials (else they allocate per call, stream-ordered): set once by the
 * model; cq_ws_bytes says how much a rows×cols tensor needs. */
void cq_set_workspace(void *ws, size_t bytes);
size_t cq_ws_bytes(int64_t rows, int64_t cols);
/* Averis column statistics of x [rows × cols] of fp32 or (bf16_in) BF16,
 * exactly nvfp4_colstats of its fp32 values: mean [cols], and the
 * residual's amax [1]; col_max/col_min may be NULL. */
averis_status cq_colstats(const void *x, int bf16_in, int64_t rows, int64_t cols, int64_t ld, float *mean, float *res_amax,
                          float *col_max, float *col_min, cudaStream_t s);
/* y = bf16(x), n elements */
averis_status cq_to_bf16(const float *x, __nv_bfloat16 *y, int64_t n, cudaStream_t s);
/* out = a·b on device scalars: the GEMM alpha S_decA·S_decB from two amaxes */
averis_status cq_alpha(const float *amax_a, const float *amax_b, float *alpha, cudaStream_t s);

#endif
