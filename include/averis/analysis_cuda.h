/* averis/analysis_cuda.h — the mean-bias metrics of averis/analysis.h
 * computed on the GPU (cuda/analysis.cu), from device tensors the training
 * step already holds, and the GPU model's taps.
 *
 * Every field of analysis_metrics is filled; the CPU (src/analysis.c) stays
 * the reference. How each is computed, and how close to the CPU it is
 * (tests/cuda/test_analysis_gpu.cu checks these bounds):
 *
 *   μ, ‖μ‖, R           cq_colstats (the Averis column statistics) and a
 *                       fp64 Σx² pass; relative 1e-6 of the CPU
 *   σ₁, v₁, cos(μ, v₁)  subspace iteration on XᵀX: up to AVC_ANA_GRAM_MAX
 *                       columns on the Gram matrix (formed once, TF32),
 *                       wider applied implicitly as Xᵀ(X V) with two cuBLAS
 *                       SGEMMs (no cols×cols matrix), block of AVC_ANA_P1 vectors,
 *                       AVC_ANA_ITERS iterations (TF32 GEMMs), Cholesky-QR
 *                       in fp64, Rayleigh–Ritz at the end in fp32; where the
 *                       block has converged (conv1 ≤ 1e-2 below) σ₁ within
 *                       1e-3 relative and cos within 0.01 if σ₂/σ₁ ≤ 0.9
 *                       (with no gap v₁ is not defined, the CPU's power
 *                       iteration included); otherwise σ₁ within 3e-2
 *                       (a Ritz value approaches σ₁² from below)
 *   e_mean/spike/tail   l‖μ‖²; the top-k Ritz values of Xc = X − 1μ by the
 *                       same iteration on a second block of k + 8 vectors,
 *                       the centring applied implicitly (Xc V = XV − 1(μᵀV),
 *                       Xcᵀ Y = XᵀY − μ(1ᵀY)); within 0.01 of the CPU's
 *                       fractions (a Ritz sum converges from below)
 *   ρ over the top 0.1% a 3-pass radix select on the bits of |x| (exact
 *                       threshold), then the CPU's rule: elements with
 *                       |x| ≥ threshold in index order, the first ⌈0.1% n⌉
 *                       of them; median and share > 0.5 within 1e-5
 *   NVFP4 error/flushed the recipes' transforms (plain, split, RHT,
 *                       split+RHT) by cq_quantize, the same bits as the
 *                       CPU's quantizer, then one pass for Σ(x̂−x)², the
 *                       nonzero and flushed counts: flushed share exact,
 *                       rel_mse within 1e-4 relative
 *
 * The LM-head gradient (tokens × vocabulary, wider than AVC_ANA_GRAM_MAX) never needs a vocab×vocab
 * matrix: X V and Xᵀ Y touch X only through GEMMs with thin panels of
 * vocab × (k + 8) floats, k = ⌈1% of min(tokens, vocab)⌉.
 */
#ifndef AVERIS_ANALYSIS_CUDA_H
#define AVERIS_ANALYSIS_CUDA_H

#include <stdio.h>

#include "averis/analysis.h"
#include "averis/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    AVC_ANA_ITERS = 16, /* subspace iterations (products by XᵀX) at most (AVERIS_ANALYSIS_ITERS overrides);
                           fewer when both blocks' trace moved ≤ 5e-5 since the last check (AVERIS_ANALYSIS_TOL,
                           0: never); the Gram path orthonormalises after every second (AVERIS_ANALYSIS_STEP) */
    AVC_ANA_P1 = 16,    /* block for v₁ */
    AVC_ANA_OVER = 8,   /* oversampling of the spike block */
    AVC_ANA_PMAX = 512, /* largest block: spike k ≤ 504, min(rows, cols) ≤ 50400 */
    AVC_ANA_GRAM_MAX = 4096 /* the Gram path up to this many columns (AVERIS_ANALYSIS_GRAM overrides, 0: never) */
};

typedef struct avc_analysis avc_analysis;
/* Scratch, a cuBLAS handle, on `stream` (a cudaStream_t; NULL: default). */
averis_status avc_analysis_create(avc_analysis **a, void *stream);
void avc_analysis_free(avc_analysis *a);

/* Diagnostics of one computation (the test reads them). */
typedef struct {
    double sigma2;        /* second Ritz value of X (σ₂ estimate) */
    double conv1;         /* (θ_p1/θ₁)^iters: bounds v₁'s angle factor (σ₁²'s is its square) */
    int iters, p1, p2;    /* iterations and block sizes used */
} avc_analysis_info;

/* The metrics of X [l × m] (row-major, contiguous) of fp32 or (bf16 = 1)
 * BF16 in device memory, as analysis_compute does on the host; info may be
 * NULL. Synchronises the stream. The Gram path goes through the deferred
 * path below (submit, then flush) unless AVERIS_ANALYSIS_DEFER=0; tensors
 * queued before are flushed to the sink first. */
averis_status avc_analysis_compute(avc_analysis *a, const void *x_dev, int bf16, int64_t l, int64_t m,
                                   analysis_metrics *out, avc_analysis_info *info);

/* Deferred analysis: avc_analysis_submit queues X for its metrics and
 * returns once the work that reads X is on the stream (X may then change);
 * a Gram-path tensor (cols ≤ AVC_ANA_GRAM_MAX, BF16 or fp32) keeps its two
 * cols × cols Gram matrices and its device results in a slot of its own,
 * and avc_analysis_flush runs the subspace iterations of every queued tensor
 * of one shape together (batched GEMMs, AVC_ANA_ITERS products, no early
 * stop; Rayleigh–Ritz as V_bᵀ(C_b V_b) in fp32/fp64 on the Gram matrix),
 * synchronises once and calls the sink with each tensor's metrics in
 * submission order. Other tensors are computed at once (as
 * avc_analysis_compute) and reach the sink in their turn. The queued slots
 * take at most AVERIS_ANALYSIS_DEFER MiB (default 4096; a submit that would
 * pass it flushes first; 0: every tensor at once, the pre-deferral path). */
typedef void (*avc_result_fn)(void *ctx, void *tag, const analysis_metrics *m, const avc_analysis_info *info);
void avc_analysis_set_sink(avc_analysis *a, avc_result_fn fn, void *ctx);
averis_status avc_analysis_submit(avc_analysis *a, const void *x_dev, int bf16, int64_t l, int64_t m, void *tag);
averis_status avc_analysis_flush(avc_analysis *a);

/* Benchmarks (bench_analysis --panel-parts): the panel iteration's pieces on
 * a random BF16 X [l × m] (m a multiple of 16) with the blocks a tap of that
 * shape gets, ms per call over reps calls each, written to out. */
averis_status avc_analysis_bench_panel(avc_analysis *a, int64_t l, int64_t m, int reps, FILE *out);

/* ------------------------------------------------ taps of the GPU model */
/* Called at each analysed tensor during avc_model_step: layer, kind (as the
 * CPU model's taps, plus resid_attn / resid_ffn: the fp32 residual stream
 * after attention / after the FFN, grad_attn_q/k/v: the q, k, v linears'
 * output gradients, and at layer = num_hidden_layers grad_lm_head: the
 * logits' gradient, when the batch fits one LM-head chunk), x_dev
 * [rows × cols] on the model's stream, fp32 or BF16. */
typedef void (*avc_tap_fn)(void *ctx, int layer, const char *kind, const void *x_dev, int bf16, int64_t rows,
                           int64_t cols);
void avc_model_set_tap(avc_model *g, avc_tap_fn fn, void *ctx);
/* the model's cudaStream_t */
void *avc_model_stream(avc_model *g);

/* analysis_model_rows on the GPU model: one forward + backward of the
 * batch tokens/targets [B·T] (host), a CSV row "PREFIX,layer,kind,metrics"
 * per tap, a compact line per tap into table when not NULL. The model's
 * gradients are overwritten (the next step zeroes them). */
averis_status avc_analysis_model_rows(avc_model *g, avc_analysis *a, const int *tokens, const int *targets, FILE *csv,
                                      const char *prefix, uint64_t sr_stream, FILE *table);

#ifdef __cplusplus
}
#endif
#endif
