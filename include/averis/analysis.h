/* averis/analysis.h — the mean-bias metrics of ../shared/AVERIS.md for one
 * activation or gradient matrix X [l tokens × m features]:
 *
 *   μ      = (1/l)·1ᵀX                        column mean over tokens
 *   R      = ‖μ‖₂ / sqrt((1/l)·Σ_t ‖x_t‖²)     mean-energy ratio, 0..1
 *   v₁     top right-singular vector of X (power iteration on XᵀX)
 *   cos    |cos(μ, v₁)|
 *   energy ‖X‖_F² = l‖μ‖² (mean) + top-k σ² of X−1μ (spike, k = ⌈1% of
 *          min(l, m)⌉) + the rest (tail); reported as fractions
 *   ρ_ij   = μ_j²/X_ij² over the top 0.1% |X_ij|: median and share > 0.5
 *   NVFP4 round trip of X (1×16 along features): plain, split, RHT, both
 */
#ifndef AVERIS_ANALYSIS_H
#define AVERIS_ANALYSIS_H

#include <stdio.h>

#include "averis/model.h"
#include "averis/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { ANALYSIS_PLAIN = 0, ANALYSIS_SPLIT, ANALYSIS_RHT, ANALYSIS_SPLIT_RHT, ANALYSIS_NQ };

typedef struct {
    int64_t rows, cols;
    double mean_norm;       /* ‖μ‖₂ */
    double rms_token_norm;  /* sqrt((1/l)·Σ_t ‖x_t‖²) */
    double R;               /* mean_norm / rms_token_norm (0 for an all-zero X) */
    double sigma1;          /* top singular value of X */
    double cos_mu_v1;       /* |cos(μ, v₁)| */
    int spike_k;            /* singular directions in the spike */
    double e_mean, e_spike, e_tail; /* fractions of ‖X‖_F² */
    int64_t top_count;      /* elements in the top 0.1% by magnitude */
    double rho_median, rho_frac_half;
    double q_rel_mse[ANALYSIS_NQ];
    double q_flushed[ANALYSIS_NQ]; /* share of nonzero inputs flushed to zero */
} analysis_metrics;

const char *analysis_quant_name(int k); /* "plain", "split", "rht", "split_rht" */

/* min(rows, cols) above this is refused: the Gram matrix is min² floats. */
#define ANALYSIS_MAX_GRAM 8192
/* Computes every metric of X (finite values expected). */
averis_status analysis_compute(const float *X, int64_t l, int64_t m, analysis_metrics *out);

/* a's spike_k and energy fractions from ‖X‖_F² (total), the mean's l‖μ‖²
 * and the top-k energy of X − 1μ (capped at the centred energy total −
 * e_mean, itself at 0); the fractions stay as they are when total is 0.
 * Shared by analysis_compute and the GPU analysis. */
void analysis_energy_split(double total, double e_mean, double e_spike, int k, analysis_metrics *a);

/* Small symmetric eigenproblems (the GPU analysis's Rayleigh–Ritz
 * matrices, p ≤ ~200, solved on the host). analysis_sym_eigvals: the
 * eigenvalues w [n], descending, of the symmetric n × n A (overwritten) by
 * Householder tridiagonalisation and implicit QL. analysis_top_eigvec: the
 * unit eigenvector x [n] of the symmetric column-major A (not modified) for
 * its eigenvalue lam (the largest, from analysis_sym_eigvals), by inverse
 * iteration; a near-double eigenvalue leaves x in its eigenspace. */
averis_status analysis_sym_eigvals(double *A, int n, double *w);
averis_status analysis_top_eigvec(const double *A, int n, double lam, double *x);

/* CSV: the header (with prefix columns, e.g. "step,layer,kind") and a row. */
void analysis_csv_header(FILE *f, const char *prefix_cols);
void analysis_csv_row(FILE *f, const char *prefix, const analysis_metrics *a);
/* One JSON object (no trailing newline). */
void analysis_json(FILE *f, const analysis_metrics *a);

/* One forward + backward of the model on a batch with targets, writing a
 * CSV row "PREFIX,layer,kind,metrics..." for the input of every quantized
 * linear and the output gradient of every layer (the kinds of model.tap),
 * and, if table is not NULL, a compact line per tensor there as it goes.
 * The model's gradients are overwritten (zero them before the next step). */
averis_status analysis_model_rows(model *m, const int *inputs, const int *targets, int B, int T, FILE *csv,
                                  const char *prefix, uint64_t sr_stream, FILE *table);

#ifdef __cplusplus
}
#endif
#endif
