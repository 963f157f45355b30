/* bench_quant.c — NVFP4 quantize throughput on a 4096×4096 fp32 tensor:
 * GB/s of input read for every kernel path × {1 thread, all threads}, with
 * memcpy of the same bytes measured in the same run and printed as a ratio.
 *
 *   build/bench_quant [--rows N] [--cols N] [--reps N]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench_util.h"
#include "averis/nvfp4.h"


typedef struct {
    const float *x;
    float *dst;
    int64_t rows, cols;
    int nthreads;
    nvfp4_impl impl;
    int variant; /* 0 1x16, 1 16x16, 2 1x16+split, 3 1x16+rht, 4 1x16+sr */
    nvfp4_tensor t;
    float *mean, *cmax, *cmin;
} job;

static void run_memcpy(job *j) {
    size_t n = (size_t)(j->rows * j->cols);
#ifdef _OPENMP
#pragma omp parallel num_threads(j->nthreads)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        size_t a = n * (size_t)id / (size_t)nt, b = n * (size_t)(id + 1) / (size_t)nt;
        memcpy(j->dst + a, j->x + a, (b - a) * sizeof(float));
    }
#else
    memcpy(j->dst, j->x, n * sizeof(float));
#endif
}

static void run_quant(job *j) {
    nvfp4_opts o = nvfp4_opts_default();
    o.impl = j->impl;
    o.nthreads = j->nthreads;
    o.block = j->variant == 1 ? NVFP4_BLOCK_16X16 : NVFP4_BLOCK_1X16;
    if (j->variant == 2) { /* the fused split: column stats pass, then quantize the residual */
        nvfp4_colstats(j->x, j->rows, j->cols, j->cols, j->mean, j->cmax, j->cmin);
        o.mean = j->mean;
        o.amax_hint = nvfp4_residual_amax(j->mean, j->cmax, j->cmin, j->cols);
    }
    o.rht = j->variant == 3;
    o.sr = j->variant == 4;
    o.seed = 1;
    if (nvfp4_quantize(j->x, NVFP4_F32, j->rows, j->cols, j->cols, &o, &j->t, NULL) != AVERIS_OK) {
        fprintf(stderr, "bench: %s\n", averis_last_error());
        exit(1);
    }
}

static double time_med(void (*fn)(job *), job *j, int reps) {
    double t[64];
    fn(j); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now_s();
        fn(j);
        t[r] = bench_now_s() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), bench_cmp_d);
    return t[reps / 2];
}

int main(int argc, char **argv) {
    int64_t rows = 4096, cols = 4096;
    int reps = 7;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--cols") && i + 1 < argc) cols = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else { fprintf(stderr, "usage: bench_quant [--rows N] [--cols N] [--reps N]\n"); return 2; }
    }
    if (reps < 1 || reps > 63 || rows < 16 || cols < 16) { fprintf(stderr, "bench_quant: bad sizes\n"); return 2; }
    int maxt = 1;
#ifdef _OPENMP
    maxt = omp_get_max_threads();
#endif
    job j = {0};
    size_t n = (size_t)(rows * cols);
    float *x = malloc(n * sizeof(float)), *dst = malloc(n * sizeof(float));
    j.mean = malloc((size_t)cols * sizeof(float));
    j.cmax = malloc((size_t)cols * sizeof(float));
    j.cmin = malloc((size_t)cols * sizeof(float));
    if (!x || !dst || !j.mean || !j.cmax || !j.cmin) { fprintf(stderr, "bench_quant: out of memory\n"); return 1; }
    unsigned long long s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) { /* activations-like: noise + a per-feature mean */
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        float u = (float)(s >> 40) * 0x1p-24f - 0.5f;
        x[i] = 2.0f * u + ((i % (size_t)cols) % 97 == 0 ? 4.0f : 0.1f);
    }
    memset(dst, 0, n * sizeof(float));
    j.x = x; j.dst = dst; j.rows = rows; j.cols = cols;
    if (nvfp4_tensor_alloc(&j.t, rows, cols, NVFP4_BLOCK_1X16) != AVERIS_OK) return 1;
    nvfp4_tensor t16;
    if (nvfp4_tensor_alloc(&t16, rows, cols, NVFP4_BLOCK_16X16) != AVERIS_OK) return 1;

    double mb = (double)n * sizeof(float) / 1e9;
    printf("NVFP4 quantize, %lld x %lld fp32 (%.0f MB), median of %d; GB/s of input read\n",
           (long long)rows, (long long)cols, mb * 1e3, reps);
    const int threads[2] = {1, maxt};
    double tmem[2];
    for (int ti = 0; ti < 2; ti++) {
        j.nthreads = threads[ti];
        tmem[ti] = time_med(run_memcpy, &j, reps);
        printf("memcpy          threads %-2d %8.2f GB/s\n", threads[ti], mb / tmem[ti]);
    }
    const char *vname[5] = {"1x16", "16x16", "1x16+split", "1x16+rht", "1x16+sr"};
    const nvfp4_impl impls[3] = {NVFP4_IMPL_SCALAR, NVFP4_IMPL_AVX2, NVFP4_IMPL_AVX512};
    double tplain[3][2] = {{0}};
    printf("\n%-12s %-7s %-7s %9s %10s %12s\n", "variant", "impl", "threads", "GB/s", "vs memcpy", "vs plain1x16");
    for (int v = 0; v < 5; v++)
        for (int k = 0; k < 3; k++) {
            if (impls[k] != NVFP4_IMPL_SCALAR && nvfp4_impl_resolve(impls[k]) != impls[k]) continue;
            for (int ti = 0; ti < 2; ti++) {
                if (ti == 1 && maxt == 1) continue;
                j.impl = impls[k];
                j.nthreads = threads[ti];
                j.variant = v;
                nvfp4_tensor keep = j.t;
                if (v == 1) j.t = t16;
                double tq = time_med(run_quant, &j, (v == 4 && k == 0) ? (reps < 3 ? reps : 3) : reps);
                if (v == 1) j.t = keep;
                if (v == 0) tplain[k][ti] = tq;
                printf("%-12s %-7s %-7d %9.2f %9.1f%% %11.2fx\n", vname[v], nvfp4_impl_name(impls[k]), threads[ti],
                       mb / tq, 100.0 * tmem[ti] / tq, tq / tplain[k][ti]);
                fflush(stdout);
            }
        }
    nvfp4_tensor_free(&j.t);
    nvfp4_tensor_free(&t16);
    free(x); free(dst); free(j.mean); free(j.cmax); free(j.cmin);
    return 0;
}
