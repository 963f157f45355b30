/* bench_qlinear.c — fwd+bwd of a Qwen3-0.6B MLP-shaped linear layer
 * (tokens 2048, in 1024, out 3072) under every recipe, in one run: time,
 * ratio to nvfp4, and the share of the step that is not the three GEMMs
 * (quantization, transposes, rank-one terms), measured as step time minus
 * the same three GEMMs timed alone. The header names the host, the load and
 * the quantize kernels (AVERIS_IMPL=avx2 measures an AVX2-only host's path).
 *
 * --cpu-time times in process CPU seconds (bench_cpu_s).
 *
 *   build/bench_qlinear [--tokens N] [--in N] [--out N] [--reps N] [--cpu-time]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench_util.h"
#include "averis/gemm.h"
#include "averis/nvfp4.h"
#include "averis/qlinear.h"


static double (*now)(void) = bench_now_s;

int main(int argc, char **argv) {
    int64_t l = 2048, m = 1024, n = 3072;
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens") && i + 1 < argc) l = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--in") && i + 1 < argc) m = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) n = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cpu-time")) now = bench_cpu_s;
        else { fprintf(stderr, "usage: bench_qlinear [--tokens N] [--in N] [--out N] [--reps N] [--cpu-time]\n"); return 2; }
    }
    if (reps < 1 || reps > 31 || l < 1 || m < 16 || n < 16) { fprintf(stderr, "bench_qlinear: bad sizes\n"); return 2; }
    float *X = malloc((size_t)(l * m) * 4), *W = malloc((size_t)(n * m) * 4), *D = malloc((size_t)(l * n) * 4);
    float *Y = malloc((size_t)(l * n) * 4), *dX = malloc((size_t)(l * m) * 4), *dW = malloc((size_t)(n * m) * 4);
    if (!X || !W || !D || !Y || !dX || !dW) { fprintf(stderr, "bench_qlinear: out of memory\n"); return 1; }
    unsigned long long s = 1;
#define RND() (s ^= s << 13, s ^= s >> 7, s ^= s << 17, (float)(s >> 40) * 0x1p-24f - 0.5f)
    for (int64_t i = 0; i < l * m; i++) X[i] = RND() + ((i % m) % 64 == 0 ? 4.0f : 0.1f);
    for (int64_t i = 0; i < n * m; i++) W[i] = 0.05f * RND();
    for (int64_t i = 0; i < l * n; i++) D[i] = 1e-3f * RND();
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    char cpu[128];
    double load = -1.0;
    bench_loadavg(&load);
    printf("qlinear fwd+bwd, tokens %lld, in %lld, out %lld, %d threads, gemm %s, median of %d\n", (long long)l,
           (long long)m, (long long)n, nt, averis_gemm_backend_name(), reps);
    printf("host: %s, load average %.2f; quantize kernels %s; times in %s\n", bench_cpu_model(cpu, sizeof cpu), load,
           nvfp4_impl_name(nvfp4_impl_resolve(NVFP4_IMPL_AUTO)), now == bench_cpu_s ? "CPU seconds (all threads)" : "wall seconds");
    double t[32];
    /* the three GEMMs alone, on the same shapes */
    for (int r = 0; r <= reps; r++) {
        double t0 = now();
        averis_sgemm(0, 1, l, n, m, 1.0f, X, m, W, m, 0.0f, Y, n);
        averis_sgemm(0, 0, l, m, n, 1.0f, D, n, W, m, 0.0f, dX, m);
        averis_sgemm(1, 0, n, m, l, 1.0f, D, n, X, m, 1.0f, dW, m);
        if (r) t[r - 1] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), bench_cmp_d);
    double tgemm = t[reps / 2];
    double gflop = 3.0 * 2.0 * (double)l * (double)m * (double)n * 1e-9;
    printf("3 GEMMs alone   %8.1f ms  (%.1f GFLOP/s)\n\n", tgemm * 1e3, gflop / tgemm);
    /* recipes interleaved within each repetition, so drift of this shared
     * machine hits them alike and the ratios stay meaningful */
    double trec[QLIN_NRECIPES], tr[QLIN_NRECIPES][32];
    qlin_ws ws = {0};
    qlin_recipe rc[QLIN_NRECIPES];
    for (int id = 0; id < QLIN_NRECIPES; id++) qlin_recipe_parse(qlin_recipe_name((qlin_recipe_id)id), &rc[id]);
    printf("%-11s %10s %10s %10s %14s\n", "recipe", "ms", "vs nvfp4", "vs bf16", "non-GEMM share");
    for (int r = 0; r <= reps; r++)
        for (int id = 0; id < QLIN_NRECIPES; id++) {
            double t0 = now();
            if (qlin_forward(&rc[id], X, W, l, m, n, Y, &ws, NULL) ||
                qlin_backward(&rc[id], X, W, D, l, m, n, dX, dW, (uint64_t)r, &ws, NULL)) {
                fprintf(stderr, "bench_qlinear: %s\n", averis_last_error());
                return 1;
            }
            if (r) tr[id][r - 1] = now() - t0;
        }
    for (int id = 0; id < QLIN_NRECIPES; id++) {
        qsort(tr[id], (size_t)reps, sizeof(double), bench_cmp_d);
        trec[id] = tr[id][reps / 2];
    }
    for (int id = 0; id < QLIN_NRECIPES; id++)
        printf("%-11s %10.1f %9.3fx %9.3fx %13.1f%%\n", qlin_recipe_name((qlin_recipe_id)id), trec[id] * 1e3,
               trec[id] / trec[QLIN_NVFP4], trec[id] / trec[QLIN_BF16], 100.0 * (trec[id] - tgemm) / trec[id]);
    qlin_ws_free(&ws);
    free(X); free(W); free(D); free(Y); free(dX); free(dW);
    return 0;
}
