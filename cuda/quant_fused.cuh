/* quant_fused.cuh — fewer passes over an output gradient D (issue 14):
 * the dgrad operand (rows, 1×16 along n) and the wgrad copy (transposed,
 * 1×16 along tokens, RHT, row sums) of one fp32 tensor from ONE read of D
 * (plus at most one amax read), bit for bit the two cq_quantize calls.
 *
 *   old: [colstats] · amax(D) · quant rows · [amax(RHT Dᵀ)] · quant Dᵀ
 *   new: [colstats] · one amax pass for both (skipped when every amax is
 *        known: averis) · one kernel that loads a 64-token × 64-feature tile
 *        of D into shared memory and quantizes it both ways
 *
 * Reads of D per recipe (old → new): nvfp4 3 → 2, nvfp4-rht 4 → 2,
 * averis 3 → 2, averis-rht 4 → 3 (the RHT'd residual's amax needs the mean
 * first, so it cannot ride on the column statistics pass). */
#ifndef AVERIS_CUDA_QUANT_FUSED_CUH
#define AVERIS_CUDA_QUANT_FUSED_CUH

#include "quant.cuh"

/* Exactly cq_quantize(rows); cq_quantize(t) — same codes, scales, amaxes,
 * BF16 operands, row sums, SR draws — where t->amax_in may name rows->amax
 * (the rows' amax as the first call leaves it). Fused when the two jobs
 * quantize the same fp32 tensor (same src, shape, ld and mean; rows:
 * transpose = tile = rht = 0; t: transpose = 1; scols % 16 == 0; distinct
 * amax outputs); otherwise it makes the two calls. */
averis_status cq_quantize_dual(const cq_job *rows, const cq_job *t, cudaStream_t s);
/* whether cq_quantize_dual can fuse the pair (tests, bench) */
int cq_dual_fusable(const cq_job *rows, const cq_job *t);

/* The switch for the fewer-pass paths: cl_backward's cq_quantize_dual and
 * the producer amax of the model's norms and SwiGLU. On by default;
 * AVERIS_FUSED_QUANT=0 in the environment turns it off (read once, at the
 * first query). cq_set_fused_quant returns the previous setting (tests and
 * benchmarks compare both paths). */
int cq_fused_quant(void);
int cq_set_fused_quant(int on);

#endif
