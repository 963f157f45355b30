/* analysis.c — mean-bias metrics (see averis/analysis.h for the math).
 * Sums run in fp64 in a fixed order; the iterative parts (power and
 * subspace iteration) start from fixed vectors, so results are repeatable. */
#include "averis/analysis.h"
#include "averis/gemm.h"
#include "averis/status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *k_qnames[ANALYSIS_NQ] = {"plain", "split", "rht", "split_rht"};
const char *analysis_quant_name(int k) { return k >= 0 && k < ANALYSIS_NQ ? k_qnames[k] : "?"; }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static int cmp_float_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* A fixed pseudo-random start vector (not aligned with μ by construction). */
static void start_vector(double *v, int64_t m, uint64_t seed) {
    uint64_t s = seed;
    for (int64_t j = 0; j < m; j++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        v[j] = (double)(s >> 11) * 0x1p-53 - 0.5;
    }
}

static double normalize(double *v, int64_t m) {
    double n = 0;
    for (int64_t j = 0; j < m; j++) n += v[j] * v[j];
    n = sqrt(n);
    if (n > 0)
        for (int64_t j = 0; j < m; j++) v[j] /= n;
    return n;
}

/* y [m] = G [m×m] · v (G symmetric, fp32), in fp64 */
static void symv(const float *G, const double *v, double *y, int64_t m) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; i++) {
        double s = 0;
        for (int64_t j = 0; j < m; j++) s += (double)G[i * m + j] * v[j];
        y[i] = s;
    }
}

/* Top-k eigenvalue sum of the PSD matrix G by subspace iteration (k ≤ m). */
static double top_k_trace(const float *G, int64_t m, int k, double *V, double *W) {
    for (int c = 0; c < k; c++) start_vector(V + (int64_t)c * m, m, 1234 + (uint64_t)c);
    double prev = -1, trace = 0;
    for (int it = 0; it < 300; it++) {
        for (int c = 0; c < k; c++) symv(G, V + (int64_t)c * m, W + (int64_t)c * m, m);
        trace = 0;
        for (int c = 0; c < k; c++) { /* Rayleigh quotients before re-orthonormalising */
            double q = 0;
            for (int64_t j = 0; j < m; j++) q += V[(int64_t)c * m + j] * W[(int64_t)c * m + j];
            trace += q;
        }
        for (int c = 0; c < k; c++) { /* modified Gram–Schmidt, twice for stability */
            double *w = W + (int64_t)c * m;
            for (int pass = 0; pass < 2; pass++)
                for (int d = 0; d < c; d++) {
                    const double *u = W + (int64_t)d * m;
                    double dot = 0;
                    for (int64_t j = 0; j < m; j++) dot += u[j] * w[j];
                    for (int64_t j = 0; j < m; j++) w[j] -= dot * u[j];
                }
            if (normalize(w, m) == 0) start_vector(w, m, 99 + (uint64_t)c);
        }
        memcpy(V, W, (size_t)k * (size_t)m * sizeof *V);
        if (it > 5 && fabs(trace - prev) <= 1e-10 * fabs(trace)) break;
        prev = trace;
    }
    return trace;
}

averis_status analysis_compute(const float *X, int64_t l, int64_t m, analysis_metrics *a) {
    memset(a, 0, sizeof *a);
    if (l < 1 || m < 1) return averis_fail(AVERIS_EINVAL, "analysis: empty matrix (%lld × %lld)", (long long)l, (long long)m);
    a->rows = l;
    a->cols = m;
    /* the spike energy needs the Gram matrix of X − 1μ; its nonzero
     * eigenvalues are those of the smaller of XcᵀXc [m×m] and XcXcᵀ [l×l] */
    int64_t g = l < m ? l : m;
    if (g > ANALYSIS_MAX_GRAM)
        return averis_fail(AVERIS_EINVAL,
                           "analysis: %lld × %lld: min(rows, cols) = %lld exceeds %d (the Gram matrix would take %.1f GB)",
                           (long long)l, (long long)m, (long long)g, ANALYSIS_MAX_GRAM, (double)g * (double)g * 4e-9);
    double *mu = calloc((size_t)m, sizeof *mu), *v = malloc((size_t)m * sizeof *v), *w = malloc((size_t)m * sizeof *w);
    double *xv = malloc((size_t)l * sizeof *xv);
    float *Xc = malloc((size_t)(l * m) * sizeof *Xc), *G = malloc((size_t)(g * g) * sizeof *G);
    float *mag = malloc((size_t)(l * m) * sizeof *mag), *y = malloc((size_t)(l * m) * sizeof *y);
    int k = (int)ceil(0.01 * (double)(l < m ? l : m));
    if (k < 1) k = 1;
    double *V = malloc((size_t)k * (size_t)g * sizeof *V), *W = malloc((size_t)k * (size_t)g * sizeof *W);
    averis_status st = AVERIS_OK;
    if (!mu || !v || !w || !xv || !Xc || !G || !mag || !y || !V || !W) {
        st = averis_fail(AVERIS_ENOMEM, "analysis: out of memory for %lld × %lld", (long long)l, (long long)m);
        goto out;
    }
    /* μ, ‖X‖_F², R */
    double total = 0;
    for (int64_t t = 0; t < l; t++)
        for (int64_t j = 0; j < m; j++) {
            double x = X[t * m + j];
            mu[j] += x;
            total += x * x;
        }
    double mu2 = 0;
    for (int64_t j = 0; j < m; j++) { mu[j] /= (double)l; mu2 += mu[j] * mu[j]; }
    a->mean_norm = sqrt(mu2);
    a->rms_token_norm = sqrt(total / (double)l);
    a->R = total > 0 ? a->mean_norm / a->rms_token_norm : 0.0;
    /* v₁ of X: power iteration v ← Xᵀ(X v) */
    start_vector(v, m, 42);
    normalize(v, m);
    double lam = 0;
    for (int it = 0; it < 500 && total > 0; it++) {
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < l; t++) {
            double s = 0;
            for (int64_t j = 0; j < m; j++) s += (double)X[t * m + j] * v[j];
            xv[t] = s;
        }
        for (int64_t j = 0; j < m; j++) w[j] = 0;
        for (int64_t t = 0; t < l; t++)
            for (int64_t j = 0; j < m; j++) w[j] += (double)X[t * m + j] * xv[t];
        double nl = normalize(w, m), diff = 0;
        for (int64_t j = 0; j < m; j++) diff += fabs(fabs(w[j]) - fabs(v[j]));
        memcpy(v, w, (size_t)m * sizeof *v);
        lam = nl;
        if (diff < 1e-12 * (double)m) break;
    }
    a->sigma1 = sqrt(lam);
    double dot = 0;
    for (int64_t j = 0; j < m; j++) dot += mu[j] * v[j];
    a->cos_mu_v1 = a->mean_norm > 0 ? fabs(dot) / a->mean_norm : 0.0;
    /* energy: mean l‖μ‖², spike = top-k eigenvalues of XcᵀXc, tail = rest */
    /* X − 1μ scaled by 1/max|·| so the fp32 Gram neither overflows nor underflows */
    double cmax = 0;
    for (int64_t t = 0; t < l; t++)
        for (int64_t j = 0; j < m; j++) {
            double d = fabs((double)X[t * m + j] - mu[j]);
            cmax = d > cmax ? d : cmax;
        }
    double inv = cmax > 0 ? 1.0 / cmax : 0.0;
    for (int64_t t = 0; t < l; t++)
        for (int64_t j = 0; j < m; j++) Xc[t * m + j] = (float)(((double)X[t * m + j] - mu[j]) * inv);
    if (l < m) averis_sgemm(0, 1, l, l, m, 1.0f, Xc, m, Xc, m, 0.0f, G, l);
    else averis_sgemm(1, 0, m, m, l, 1.0f, Xc, m, Xc, m, 0.0f, G, m);
    analysis_energy_split(total, (double)l * mu2, total > 0 && cmax > 0 ? top_k_trace(G, g, k, V, W) * cmax * cmax : 0.0,
                          k, a);
    /* ρ over the top 0.1% magnitudes */
    int64_t n = l * m, cnt = (int64_t)ceil(0.001 * (double)n);
    for (int64_t i = 0; i < n; i++) mag[i] = fabsf(X[i]);
    qsort(mag, (size_t)n, sizeof *mag, cmp_float_desc);
    float thr = mag[cnt - 1];
    double *rho = malloc((size_t)cnt * sizeof *rho);
    if (!rho) { st = averis_fail(AVERIS_ENOMEM, "analysis: out of memory"); goto out; }
    int64_t r = 0;
    if (thr > 0)
        for (int64_t i = 0; i < n && r < cnt; i++)
            if (fabsf(X[i]) >= thr) {
                double x = X[i], mj = mu[i % m];
                rho[r++] = mj * mj / (x * x);
            }
    a->top_count = r;
    if (r > 0) {
        qsort(rho, (size_t)r, sizeof *rho, cmp_double);
        a->rho_median = r % 2 ? rho[r / 2] : 0.5 * (rho[r / 2 - 1] + rho[r / 2]);
        int64_t half = 0;
        for (int64_t i = 0; i < r; i++) half += rho[i] > 0.5;
        a->rho_frac_half = (double)half / (double)r;
    }
    free(rho);
    /* NVFP4 round trips along features */
    for (int q = 0; q < ANALYSIS_NQ; q++) {
        averis_qcfg cfg = {0};
        cfg.block = NVFP4_BLOCK_1X16;
        cfg.split = q == ANALYSIS_SPLIT || q == ANALYSIS_SPLIT_RHT;
        cfg.rht = q == ANALYSIS_RHT || q == ANALYSIS_SPLIT_RHT;
        averis_qresult res;
        if ((st = averis_quant_roundtrip(X, l, m, &cfg, y, &res, NULL))) goto out;
        a->q_rel_mse[q] = res.rel_mse;
        a->q_flushed[q] = res.flushed_frac;
    }
out:
    free(mu); free(v); free(w); free(xv); free(Xc); free(G); free(mag); free(y); free(V); free(W);
    return st;
}

void analysis_csv_header(FILE *f, const char *prefix_cols) {
    fprintf(f, "%s%srows,cols,R,mean_norm,rms_token_norm,sigma1,cos_mu_v1,spike_k,e_mean,e_spike,e_tail,top_count,"
               "rho_median,rho_frac_half", prefix_cols ? prefix_cols : "", prefix_cols && *prefix_cols ? "," : "");
    for (int q = 0; q < ANALYSIS_NQ; q++) fprintf(f, ",relmse_%s", k_qnames[q]);
    for (int q = 0; q < ANALYSIS_NQ; q++) fprintf(f, ",flushed_%s", k_qnames[q]);
    fputc('\n', f);
}

void analysis_csv_row(FILE *f, const char *prefix, const analysis_metrics *a) {
    fprintf(f, "%s%s%lld,%lld,%.6g,%.6g,%.6g,%.6g,%.6g,%d,%.6g,%.6g,%.6g,%lld,%.6g,%.6g", prefix ? prefix : "",
            prefix && *prefix ? "," : "", (long long)a->rows, (long long)a->cols, a->R, a->mean_norm, a->rms_token_norm,
            a->sigma1, a->cos_mu_v1, a->spike_k, a->e_mean, a->e_spike, a->e_tail, (long long)a->top_count,
            a->rho_median, a->rho_frac_half);
    for (int q = 0; q < ANALYSIS_NQ; q++) fprintf(f, ",%.6g", a->q_rel_mse[q]);
    for (int q = 0; q < ANALYSIS_NQ; q++) fprintf(f, ",%.6g", a->q_flushed[q]);
    fputc('\n', f);
}

/* A JSON number, or null where JSON has none (NaN, ±Inf). */
static void json_num(FILE *f, const char *key, const char *suffix, double v) {
    if (isfinite(v)) fprintf(f, ", \"%s%s\": %.9g", key, suffix, v);
    else fprintf(f, ", \"%s%s\": null", key, suffix);
}

void analysis_json(FILE *f, const analysis_metrics *a) {
    const struct { const char *key; double v; } num[] = {
        {"R", a->R}, {"mean_norm", a->mean_norm}, {"rms_token_norm", a->rms_token_norm}, {"sigma1", a->sigma1},
        {"cos_mu_v1", a->cos_mu_v1}, {"spike_k", a->spike_k}, {"e_mean", a->e_mean}, {"e_spike", a->e_spike},
        {"e_tail", a->e_tail}, {"top_count", (double)a->top_count}, {"rho_median", a->rho_median},
        {"rho_frac_half", a->rho_frac_half}};
    fprintf(f, "{\"rows\": %lld, \"cols\": %lld", (long long)a->rows, (long long)a->cols);
    for (size_t i = 0; i < sizeof num / sizeof num[0]; i++) json_num(f, num[i].key, "", num[i].v);
    for (int q = 0; q < ANALYSIS_NQ; q++) {
        json_num(f, "relmse_", k_qnames[q], a->q_rel_mse[q]);
        json_num(f, "flushed_", k_qnames[q], a->q_flushed[q]);
    }
    fputc('}', f);
}

typedef struct {
    FILE *f, *table;
    const char *prefix;
    averis_status st;
} csv_tap_ctx;

static void csv_tap(void *ctx, int layer, const char *kind, const float *x, int64_t rows, int64_t cols) {
    csv_tap_ctx *c = ctx;
    if (c->st) return;
    analysis_metrics a;
    if ((c->st = analysis_compute(x, rows, cols, &a))) return;
    char pre[512];
    snprintf(pre, sizeof pre, "%s%s%d,%s", c->prefix, *c->prefix ? "," : "", layer, kind);
    analysis_csv_row(c->f, pre, &a);
    if (c->table)
        fprintf(c->table, "%-5d %-14s %7.4f %7.4f %7.4f %9.4f %9.4f %10.3e %10.3e\n", layer, kind, a.R, a.cos_mu_v1,
                a.e_mean, a.q_flushed[ANALYSIS_PLAIN], a.q_flushed[ANALYSIS_SPLIT], a.q_rel_mse[ANALYSIS_PLAIN],
                a.q_rel_mse[ANALYSIS_SPLIT]);
}

averis_status analysis_model_rows(model *m, const int *inputs, const int *targets, int B, int T, FILE *csv,
                                  const char *prefix, uint64_t sr_stream, FILE *table) {
    csv_tap_ctx ctx = {csv, table, prefix ? prefix : "", AVERIS_OK};
    if (table)
        fprintf(table, "%-5s %-14s %7s %7s %7s %9s %9s %10s %10s\n", "layer", "kind", "R", "cos", "e_mean", "flush",
                "flush_sp", "mse", "mse_sp");
    m->tap = csv_tap;
    m->tap_ctx = &ctx;
    averis_status st = model_forward(m, inputs, targets, B, T, NULL);
    if (!st && !ctx.st) st = model_backward(m, 1.0f, sr_stream);
    m->tap = NULL;
    m->tap_ctx = NULL;
    fflush(csv);
    return st ? st : ctx.st;
}

void analysis_energy_split(double total, double e_mean, double e_spike, int k, analysis_metrics *a) {
    double e_c = total - e_mean; /* the centred energy */
    if (e_c < 0) e_c = 0;
    if (e_spike > e_c) e_spike = e_c;
    a->spike_k = k;
    if (total > 0) {
        a->e_mean = e_mean / total;
        a->e_spike = e_spike / total;
        a->e_tail = (e_c - e_spike) / total;
    }
}

/* ------------------------------------------- small symmetric eigenproblems */
static int cmp_double_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

averis_status analysis_sym_eigvals(double *A, int n, double *w) {
    if (n < 1) return AVERIS_OK;
    double *d = w, *e = malloc(sizeof(double) * (size_t)n);
    if (!e) return averis_fail(AVERIS_ENOMEM, "analysis: eigenvalues of a %d x %d matrix", n, n);
#define AA(i, j) A[(size_t)(i) * (size_t)n + (size_t)(j)]
    /* Householder reduction to tridiagonal form (d: diagonal, e: off-diagonal) */
    for (int i = n - 1; i > 0; i--) {
        int l = i - 1;
        double h = 0, scale = 0;
        if (l > 0) {
            for (int k = 0; k <= l; k++) scale += fabs(AA(i, k));
            if (scale == 0.0) e[i] = AA(i, l);
            else {
                for (int k = 0; k <= l; k++) {
                    AA(i, k) /= scale;
                    h += AA(i, k) * AA(i, k);
                }
                double f = AA(i, l), g = f >= 0.0 ? -sqrt(h) : sqrt(h);
                e[i] = scale * g;
                h -= f * g;
                AA(i, l) = f - g;
                f = 0.0;
                for (int j = 0; j <= l; j++) {
                    g = 0.0;
                    for (int k = 0; k <= j; k++) g += AA(j, k) * AA(i, k);
                    for (int k = j + 1; k <= l; k++) g += AA(k, j) * AA(i, k);
                    e[j] = g / h;
                    f += e[j] * AA(i, j);
                }
                double hh = f / (h + h);
                for (int j = 0; j <= l; j++) {
                    f = AA(i, j);
                    e[j] = g = e[j] - hh * f;
                    for (int k = 0; k <= j; k++) AA(j, k) -= (f * e[k] + g * AA(i, k));
                }
            }
        } else {
            e[i] = AA(i, l);
        }
        d[i] = h;
    }
    for (int i = 0; i < n; i++) d[i] = AA(i, i);
#undef AA
    for (int i = 1; i < n; i++) e[i - 1] = e[i];
    e[n - 1] = 0.0;
    /* implicit QL with shifts on the tridiagonal matrix */
    for (int l = 0; l < n; l++) {
        int iter = 0, m;
        do {
            for (m = l; m < n - 1; m++) {
                double dd = fabs(d[m]) + fabs(d[m + 1]);
                if (fabs(e[m]) <= 1e-15 * dd) break;
            }
            if (m != l) {
                if (iter++ == 60) break;
                double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
                double r = hypot(g, 1.0);
                g = d[m] - d[l] + e[l] / (g + copysign(r, g));
                double s = 1.0, c = 1.0, p = 0.0;
                int i;
                for (i = m - 1; i >= l; i--) {
                    double f = s * e[i], b = c * e[i];
                    e[i + 1] = (r = hypot(f, g));
                    if (r == 0.0) {
                        d[i + 1] -= p;
                        e[m] = 0.0;
                        break;
                    }
                    s = f / r;
                    c = g / r;
                    g = d[i + 1] - p;
                    r = (d[i] - g) * s + 2.0 * c * b;
                    d[i + 1] = g + (p = s * r);
                    g = c * r - b;
                }
                if (r == 0.0 && i >= l) continue;
                d[l] -= p;
                e[l] = g;
                e[m] = 0.0;
            }
        } while (m != l);
    }
    free(e);
    qsort(d, (size_t)n, sizeof *d, cmp_double_desc);
    return AVERIS_OK;
}

averis_status analysis_top_eigvec(const double *A, int n, double lam, double *x) {
    if (n < 1) return AVERIS_OK;
    double *M = malloc(sizeof(double) * (size_t)n * (size_t)n); /* row-major A − lam·I */
    int *piv = malloc(sizeof(int) * (size_t)n);
    if (!M || !piv) {
        free(M), free(piv);
        return averis_fail(AVERIS_ENOMEM, "analysis: eigenvector of a %d x %d matrix", n, n);
    }
    double scale = 0;
    for (size_t i = 0; i < (size_t)n * (size_t)n; i++) scale = fmax(scale, fabs(A[i]));
    const double tiny = (scale > 0 ? scale : 1.0) * 2.220446049250313e-16; /* DBL_EPSILON·max|A| */
#define MM(r, c) M[(size_t)(r) * (size_t)n + (size_t)(c)]
    for (int c = 0; c < n; c++)
        for (int r = 0; r < n; r++) MM(r, c) = A[(size_t)c * (size_t)n + (size_t)r] - (r == c ? lam : 0.0);
    for (int k = 0; k < n; k++) { /* Gaussian elimination, partial pivoting */
        int b = k;
        for (int r = k + 1; r < n; r++)
            if (fabs(MM(r, k)) > fabs(MM(b, k))) b = r;
        piv[k] = b;
        if (b != k)
            for (int c = 0; c < n; c++) {
                double t = MM(k, c);
                MM(k, c) = MM(b, c), MM(b, c) = t;
            }
        if (fabs(MM(k, k)) < tiny) MM(k, k) = tiny; /* lam exact: a zero pivot */
        for (int r = k + 1; r < n; r++) {
            double f = MM(r, k) / MM(k, k);
            MM(r, k) = f;
            for (int c = k + 1; c < n; c++) MM(r, c) -= f * MM(k, c);
        }
    }
    for (int i = 0; i < n; i++) x[i] = 1.0 + 0.01 * i; /* a component along every direction */
    for (int it = 0; it < 3; it++) {
        for (int k = 0; k < n; k++) {
            double t = x[k];
            x[k] = x[piv[k]], x[piv[k]] = t;
        }
        for (int r = 0; r < n; r++)
            for (int c = 0; c < r; c++) x[r] -= MM(r, c) * x[c];
        for (int r = n - 1; r >= 0; r--) {
            for (int c = r + 1; c < n; c++) x[r] -= MM(r, c) * x[c];
            x[r] /= MM(r, r);
        }
        double nn = 0;
        for (int i = 0; i < n; i++) nn += x[i] * x[i];
        nn = sqrt(nn);
        if (!(nn > 0) || !isfinite(nn)) break; /* NaN input */
        for (int i = 0; i < n; i++) x[i] /= nn;
    }
#undef MM
    free(M), free(piv);
    return AVERIS_OK;
}
