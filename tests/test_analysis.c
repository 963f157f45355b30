/* test_analysis.c — the mean-bias metrics on matrices whose answers are
 * known in closed form. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "averis/analysis.h"
#include "averis/io.h"
#include "averis/json.h"
#include "check.h"

#define NEAR(a, b, tol) (fabs((double)(a) - (double)(b)) <= (tol))

/* X_t = μ + s_t·u with u ⟂ μ and s_t = ±a alternating (Σ s_t = 0):
 *   R = ‖μ‖/√(‖μ‖² + a²‖u‖²), e_mean = ‖μ‖²/(‖μ‖² + a²‖u‖²), e_spike = rest,
 *   v₁ = μ̂ if ‖μ‖ > a‖u‖ (cos 1), else û (cos 0). */
void test_analysis_closed_forms(void) {
    const int64_t l = 64, m = 32;
    float *X = malloc(sizeof(float) * (size_t)(l * m));
    double mu[32], u[32];
    for (int j = 0; j < m; j++) {
        mu[j] = (j % 2 ? 1.0 : 2.0) * (j < 16 ? 1 : -1);
        u[j] = (j % 2 ? 2.0 : -1.0); /* μ·u = Σ(±(−2 + 2)) = 0 */
    }
    double mu2 = 0, u2 = 0, dot = 0;
    for (int j = 0; j < m; j++) mu2 += mu[j] * mu[j], u2 += u[j] * u[j], dot += mu[j] * u[j];
    CHECK(dot == 0, "u ⟂ μ (%g)", dot);
    const double amps[2] = {0.5, 3.0};
    for (int c = 0; c < 2; c++) {
        double a = amps[c];
        for (int64_t t = 0; t < l; t++)
            for (int j = 0; j < m; j++) X[t * m + j] = (float)(mu[j] + (t % 2 ? a : -a) * u[j]);
        analysis_metrics r;
        CHECK(!analysis_compute(X, l, m, &r), "%s", averis_last_error());
        double tot = mu2 + a * a * u2;
        CHECK(NEAR(r.R, sqrt(mu2 / tot), 1e-6), "a=%g: R %.9f want %.9f", a, r.R, sqrt(mu2 / tot));
        CHECK(NEAR(r.e_mean, mu2 / tot, 1e-6) && NEAR(r.e_spike, a * a * u2 / tot, 1e-5) && NEAR(r.e_tail, 0, 1e-5),
              "a=%g: energy %.6f %.6f %.6f", a, r.e_mean, r.e_spike, r.e_tail);
        double want_cos = mu2 > a * a * u2 ? 1.0 : 0.0;
        CHECK(NEAR(r.cos_mu_v1, want_cos, 1e-6), "a=%g: cos %.9f want %g", a, r.cos_mu_v1, want_cos);
        CHECK(NEAR(r.sigma1, sqrt((double)l * (mu2 > a * a * u2 ? mu2 : a * a * u2)), 1e-4 * r.sigma1), "a=%g: σ1 %.6f", a,
              r.sigma1);
        CHECK(r.spike_k == 1 && r.top_count == 3, "k %d, top %lld", r.spike_k, (long long)r.top_count);
    }
    /* every row the mean: R = 1, cos = 1, all energy in the mean, ρ = 1,
     * and the split round trip is exact */
    for (int64_t t = 0; t < l; t++)
        for (int j = 0; j < m; j++) X[t * m + j] = (float)mu[j] * 0.37f;
    analysis_metrics r;
    CHECK(!analysis_compute(X, l, m, &r), "%s", averis_last_error());
    CHECK(NEAR(r.R, 1, 1e-7) && NEAR(r.cos_mu_v1, 1, 1e-7) && NEAR(r.e_mean, 1, 1e-7) && NEAR(r.e_tail + r.e_spike, 0, 1e-7),
          "constant rows: R %.9f cos %.9f e_mean %.9f", r.R, r.cos_mu_v1, r.e_mean);
    CHECK(NEAR(r.rho_median, 1, 1e-6) && r.rho_frac_half == 1.0, "ρ median %.6f frac %.3f", r.rho_median, r.rho_frac_half);
    CHECK(r.q_rel_mse[ANALYSIS_SPLIT] == 0 && r.q_flushed[ANALYSIS_SPLIT] == 0, "split exact: %g", r.q_rel_mse[ANALYSIS_SPLIT]);
    /* zero-mean: ±c rows → R = 0, all energy in one spike direction, ρ = 0 */
    for (int64_t t = 0; t < l; t++)
        for (int j = 0; j < m; j++) X[t * m + j] = (float)(t % 2 ? mu[j] : -mu[j]);
    CHECK(!analysis_compute(X, l, m, &r), "%s", averis_last_error());
    CHECK(r.R == 0 && r.cos_mu_v1 == 0 && NEAR(r.e_spike, 1, 1e-6) && r.rho_median == 0, "zero mean: R %g spike %g",
          r.R, r.e_spike);
    /* all zeros: finite, zero */
    memset(X, 0, sizeof(float) * (size_t)(l * m));
    CHECK(!analysis_compute(X, l, m, &r), "%s", averis_last_error());
    CHECK(r.R == 0 && r.e_mean == 0 && r.top_count == 0 && isfinite(r.cos_mu_v1), "zeros");
    free(X);
}

/* The curse on a mean-biased matrix: small values share 1×16 blocks with a
 * large per-feature mean, so plain NVFP4 flushes them to zero; the split
 * keeps them. R and cos are high; k = 1% of 200 → 2 spike directions. */
void test_analysis_mean_biased(void) {
    const int64_t l = 256, m = 200;
    float *X = malloc(sizeof(float) * (size_t)(l * m));
    trng g = {11};
    for (int64_t t = 0; t < l; t++)
        for (int64_t j = 0; j < m; j++) X[t * m + j] = 0.05f * trng_normal(&g) + (j % 16 == 0 ? 8.0f : 0.0f);
    analysis_metrics r;
    CHECK(!analysis_compute(X, l, m, &r), "%s", averis_last_error());
    CHECK(r.R > 0.95 && r.cos_mu_v1 > 0.99, "R %.4f cos %.5f", r.R, r.cos_mu_v1);
    CHECK(r.q_rel_mse[ANALYSIS_SPLIT] * 10 < r.q_rel_mse[ANALYSIS_PLAIN], "split %.3e vs plain %.3e",
          r.q_rel_mse[ANALYSIS_SPLIT], r.q_rel_mse[ANALYSIS_PLAIN]);
    CHECK(r.q_flushed[ANALYSIS_PLAIN] > 0.5 && r.q_flushed[ANALYSIS_SPLIT] < 0.2, "flushed split %.4f plain %.4f",
          r.q_flushed[ANALYSIS_SPLIT], r.q_flushed[ANALYSIS_PLAIN]);
    CHECK(NEAR(r.e_mean + r.e_spike + r.e_tail, 1, 1e-9) && r.spike_k == 2, "energy sums to 1, k %d", r.spike_k);
    CHECK(r.rho_frac_half > 0.9, "the largest magnitudes are mostly the mean: %.3f", r.rho_frac_half);
    free(X);
}

/* Against numpy (fp64, exact SVD): tests/ref_analysis.py wrote the metrics
 * of the nvfp4 fixture tensors to tests/fixtures/analysis/expected.json.
 * Tolerances: 1e-6 absolute on shares and ratios, 1e-6 relative on σ₁ and
 * the ρ median; counts exact. */
void test_analysis_vs_numpy(void) {
    FILE *f = fopen("tests/fixtures/analysis/expected.json", "rb");
    CHECK(f != NULL, "expected.json missing");
    if (!f) return;
    char *buf = malloc(1 << 16);
    size_t n = fread(buf, 1, 1 << 16, f);
    fclose(f);
    json root;
    CHECK(!json_parse(buf, n, "expected.json", &root), "%s", averis_last_error());
    int seen = 0;
    for (int i = 0; i < root.n; i++) {
        if (root.keys[i][0] == '_') continue;
        const json *e = &root.items[i];
        char path[256];
        snprintf(path, sizeof path, "tests/fixtures/nvfp4/%s.in.npy", root.keys[i]);
        averis_npy x;
        CHECK(!averis_npy_read(path, &x), "%s", averis_last_error());
        analysis_metrics a;
        CHECK(!analysis_compute(x.data, x.shape[0], x.shape[1], &a), "%s", averis_last_error());
        averis_npy_free(&x);
        const struct { const char *k; double got, tol; int rel; } c[] = {
            {"R", a.R, 1e-6, 0}, {"cos_mu_v1", a.cos_mu_v1, 1e-6, 0}, {"e_mean", a.e_mean, 1e-6, 0},
            {"e_spike", a.e_spike, 1e-6, 0}, {"e_tail", a.e_tail, 1e-6, 0}, {"sigma1", a.sigma1, 1e-6, 1},
            {"rho_median", a.rho_median, 1e-6, 1}, {"rho_frac_half", a.rho_frac_half, 0, 0},
            {"spike_k", a.spike_k, 0, 0}, {"top_count", (double)a.top_count, 0, 0}};
        for (size_t k = 0; k < sizeof c / sizeof c[0]; k++) {
            const json *w = json_get(e, c[k].k);
            double want = w ? w->num : NAN, tol = c[k].rel ? c[k].tol * fabs(want) : c[k].tol;
            CHECK(w && fabs(c[k].got - want) <= tol, "%s: %s = %.9g, numpy %.9g", root.keys[i], c[k].k, c[k].got, want);
        }
        seen++;
    }
    CHECK(seen == 5, "%d tensors in expected.json", seen);
    json_free(&root);
    free(buf);
}

/* The host eigensolvers the GPU analysis uses (analysis_sym_eigvals,
 * analysis_top_eigvec) on A = Q·diag(λ)·Qᵀ with Q a random orthogonal
 * matrix and λ known: the eigenvalues to 1e-12·λ₁, the top eigenvector to
 * |⟨x, q₁⟩| ≥ 1 − 1e-12; then a rank-one A, a zero A, and λ₂ = λ₁(1 − 1e-9)
 * (x in the top pair's span: ‖Ax − λ₁x‖ ≤ 1e-6·λ₁). */
static void random_orthogonal(double *Q, int n, uint64_t *s) {
    for (int i = 0; i < n * n; i++) {
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        Q[i] = (double)(*s >> 11) / 9007199254740992.0 - 0.5;
    }
    for (int c = 0; c < n; c++) { /* Gram–Schmidt on the columns, twice */
        for (int pass = 0; pass < 2; pass++)
            for (int p = 0; p < c; p++) {
                double d = 0;
                for (int r = 0; r < n; r++) d += Q[p * n + r] * Q[c * n + r];
                for (int r = 0; r < n; r++) Q[c * n + r] -= d * Q[p * n + r];
            }
        double nn = 0;
        for (int r = 0; r < n; r++) nn += Q[c * n + r] * Q[c * n + r];
        for (int r = 0; r < n; r++) Q[c * n + r] /= sqrt(nn);
    }
}

void test_analysis_small_eigen(void) {
    uint64_t s = 42;
    const int sizes[] = {1, 2, 5, 16, 29, 64, 172};
    double *Q = malloc(sizeof(double) * 172 * 172), *A = malloc(sizeof(double) * 172 * 172),
           *A2 = malloc(sizeof(double) * 172 * 172), lam[172], w[172], x[172];
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int kind = 0; kind < 4; kind++) {
            const int n = sizes[si];
            random_orthogonal(Q, n, &s);
            for (int i = 0; i < n; i++)
                lam[i] = kind == 1 ? (i == 0 ? 3.0 : 0.0)          /* rank one */
                         : kind == 2 ? 0.0                          /* zero */
                         : kind == 3 && i == 1 ? 100.0 * (1 - 1e-9) /* a near-double top */
                                      : 100.0 * pow(0.8, i);        /* a decaying spectrum */
            for (int c = 0; c < n; c++)
                for (int r = 0; r < n; r++) {
                    double v = 0;
                    for (int k = 0; k < n; k++) v += Q[k * n + r] * lam[k] * Q[k * n + c];
                    A[c * n + r] = v;
                }
            for (int c = 0; c < n; c++)
                for (int r = 0; r < c; r++) A[c * n + r] = A[r * n + c] = 0.5 * (A[c * n + r] + A[r * n + c]);
            memcpy(A2, A, sizeof(double) * (size_t)(n * n));
            CHECK(!analysis_sym_eigvals(A2, n, w), "%s", averis_last_error());
            double worst = 0;
            for (int i = 0; i < n; i++) worst = fmax(worst, fabs(w[i] - lam[i]));
            const double scale = fmax(lam[0], 1.0);
            CHECK(worst <= 1e-12 * scale, "n %d kind %d: eigenvalues off by %.3g", n, kind, worst);
            CHECK(!analysis_top_eigvec(A, n, w[0], x), "%s", averis_last_error());
            double dot = 0, xn = 0, res = 0;
            for (int r = 0; r < n; r++) dot += x[r] * Q[r], xn += x[r] * x[r];
            for (int r = 0; r < n; r++) {
                double ax = 0;
                for (int c = 0; c < n; c++) ax += A[c * n + r] * x[c];
                res += (ax - w[0] * x[r]) * (ax - w[0] * x[r]);
            }
            CHECK(fabs(xn - 1) <= 1e-12, "n %d kind %d: |x|² = %.17g", n, kind, xn);
            if (kind == 0 || kind == 1)
                CHECK(fabs(dot) >= 1 - 1e-12, "n %d kind %d: |<x, q1>| = %.17g", n, kind, fabs(dot));
            if (kind == 3 && n > 1) CHECK(sqrt(res) <= 1e-6 * lam[0], "n %d near-double: residual %.3g", n, sqrt(res));
        }
    free(Q), free(A), free(A2);
}
