/* seg.cuh — segmented (MoE) quantization: one launch sequence for every
 * expert's row segment of an [R × cols] tensor, where segment e owns rows
 * offs[e]..offs[e+1]. Each segment is quantized exactly as a cq_quantize /
 * cq_colstats / cq_alpha call on its rows alone would quantize it (its own
 * per-tensor amax, Averis mean, SR stream, 16-token padding of the wgrad
 * copies): the same bits, tested by test_cuda moe_seg_quant_bitexact.
 * Empty segments are skipped (nothing written for them).
 *
 * Layouts of the BF16 operands (so that each segment's operand starts
 * 256-byte aligned, as a per-expert call's shared buffer does: cuBLASLt's
 * plan key holds the pointers' alignment, and the same key gives the same
 * algorithm and so the same GEMM bits):
 *   rows (transpose = 0, pad): segment e's rows from row cq_seg_row0(o_e, e)
 *       of a [cq_seg_rows(R, E) × ld_out] buffer (no padding without pad)
 *   transposed: segment e's [cols × kp_e] block (kp_e = ⌈n_e/16⌉·16 + kp_extra)
 *       at element cols·cq_seg_col0(o_e, e) of a [cols × cq_seg_cols(R, E)] buffer
 * (cols a multiple of 16 for the alignment; the recipes need that anyway).
 */
#ifndef AVERIS_CUDA_SEG_CUH
#define AVERIS_CUDA_SEG_CUH

#include "quant.cuh"

__host__ __device__ inline int64_t cq_seg_row0(int64_t o, int e) { return (o + 8 * (int64_t)e + 7) & ~(int64_t)7; }
__host__ __device__ inline int64_t cq_seg_col0(int64_t o, int e) { return (o + 40 * (int64_t)e + 7) & ~(int64_t)7; }
inline int64_t cq_seg_rows(int64_t R, int nseg) { return R + 8 * (int64_t)nseg + 8; }
inline int64_t cq_seg_cols(int64_t R, int nseg) { return R + 40 * (int64_t)nseg + 8; }

/* The segments: offs (device and host copies, [nseg + 1]) or, with offs
 * NULL, nseg segments of rows_each rows (the experts' stacked weights). */
struct cq_seg {
    int nseg;
    const int *offs_d, *offs_h;
    int64_t rows_each;
    int pad; /* the rows layout's 256-byte aligned segment starts (cq_seg_row0) */
    void *ws; /* scratch for the partial sums (cq_seg_ws_bytes), or NULL: stream-ordered allocations */
    size_t ws_bytes;
};
/* the scratch the calls on R rows of at most `cols` columns in nseg segments need */
size_t cq_seg_ws_bytes(int64_t R, int nseg, int64_t cols);
inline int64_t cq_seg_off(const cq_seg &g, int e) { return g.offs_h ? g.offs_h[e] : e * g.rows_each; }
inline int64_t cq_seg_n(const cq_seg &g, int e) { return g.offs_h ? g.offs_h[e + 1] - g.offs_h[e] : g.rows_each; }

/* cq_job per segment e (srows = n_e, src from row o_e); per-segment arrays
 * are indexed by e: mean [nseg × scols], amax_in / amax [nseg], rowsum
 * [nseg × scols], streams [nseg] (device, the SR streams; NULL without SR) */
struct cq_seg_job {
    const void *src;
    int bf16_in;
    int64_t scols, ld;
    int transpose, tile, rht, sr;
    uint64_t seed;
    const uint64_t *streams;
    const float *mean;
    const float *amax_in;
    float *amax;
    __nv_bfloat16 *bf16_out; /* required: the layouts above */
    int64_t ld_out;          /* rows only */
    int64_t kp_extra;        /* transposed only: 0 or 16 (the split's rank-one columns, left unwritten) */
    float *rowsum;
};
averis_status cq_quantize_seg(const cq_seg_job *j, const cq_seg *g, cudaStream_t s);
/* cq_colstats per segment: mean [nseg × cols], res_amax [nseg] */
averis_status cq_colstats_seg(const void *x, int bf16_in, int64_t cols, int64_t ld, const cq_seg *g, float *mean,
                              float *res_amax, cudaStream_t s);
/* alpha[e] = S_dec(amax_a[e])·S_dec(amax_b[e]), e < nseg */
averis_status cq_alpha_seg(const float *amax_a, const float *amax_b, float *alpha, int nseg, cudaStream_t s);
/* y = bf16(x) per segment into the rows layout (pad): x [R × cols] */
averis_status cq_to_bf16_seg(const float *x, int64_t cols, const cq_seg *g, __nv_bfloat16 *y, cudaStream_t s);

#endif
