/* bench_quant.c — NVFP4 quantize throughput on a 4096×4096 fp32 tensor:
 * GB/s of input read for every variant × kernel path × {1 thread, all
 * threads}, with memcpy of the same bytes timed in the same repetitions
 * (every case once per repetition, interleaved, so the drift of a shared
 * host hits them alike) and printed as a ratio.
 *
 * The kernel paths are those of this host up to AVERIS_IMPL (avx2 on an
 * AVX-512 host measures what an AVX2-only host runs); --scalar adds the
 * scalar reference (slow). --cpu-time times in process CPU seconds instead
 * of wall seconds (bench_cpu_s), for a host loaded by other work.
 *
 *   build/bench_quant [--rows N] [--cols N] [--reps N] [--scalar] [--cpu-time]
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

static double (*now)(void) = bench_now_s;

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof(double), bench_cmp_d);
    return t[n / 2];
}

enum { NVARIANT = 5, MAXCASE = 1 + NVARIANT * 3 };

int main(int argc, char **argv) {
    int64_t rows = 4096, cols = 4096;
    int reps = 7, with_scalar = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--cols") && i + 1 < argc) cols = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--scalar")) with_scalar = 1;
        else if (!strcmp(argv[i], "--cpu-time")) now = bench_cpu_s;
        else { fprintf(stderr, "usage: bench_quant [--rows N] [--cols N] [--reps N] [--scalar] [--cpu-time]\n"); return 2; }
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
    nvfp4_tensor t1, t16;
    if (nvfp4_tensor_alloc(&t1, rows, cols, NVFP4_BLOCK_1X16) != AVERIS_OK) return 1;
    if (nvfp4_tensor_alloc(&t16, rows, cols, NVFP4_BLOCK_16X16) != AVERIS_OK) return 1;

    /* the kernel paths: this host's, capped by AVERIS_IMPL */
    nvfp4_impl best = nvfp4_impl_resolve(NVFP4_IMPL_AUTO), impls[3];
    int nimpl = 0;
    if (with_scalar || best == NVFP4_IMPL_SCALAR) impls[nimpl++] = NVFP4_IMPL_SCALAR;
    if (best >= NVFP4_IMPL_AVX2) impls[nimpl++] = NVFP4_IMPL_AVX2;
    if (best >= NVFP4_IMPL_AVX512) impls[nimpl++] = NVFP4_IMPL_AVX512;
    char cpu[128];
    const char *env = getenv("AVERIS_IMPL");
    double mb = (double)n * sizeof(float) / 1e9;
    printf("NVFP4 quantize, %lld x %lld fp32 (%.0f MB), median of %d interleaved repetitions; GB/s of input read per %s\n",
           (long long)rows, (long long)cols, mb * 1e3, reps, now == bench_cpu_s ? "CPU second (all threads)" : "second");
    double load[1] = {-1.0};
    bench_loadavg(load);
    printf("host: %s, %d threads, load average %.2f; CPU has avx2 %s, avx512 %s; kernels up to %s%s%s%s\n",
           bench_cpu_model(cpu, sizeof cpu), maxt, load[0], nvfp4_cpu_has_avx2() ? "yes" : "no",
           nvfp4_cpu_has_avx512() ? "yes" : "no", nvfp4_impl_name(best), env ? " (AVERIS_IMPL=" : "", env ? env : "",
           env ? ")" : "");
    const char *vname[NVARIANT] = {"1x16", "16x16", "1x16+split", "1x16+rht", "1x16+sr"};
    const int threads[2] = {1, maxt};
    printf("\n%-12s %-7s %-7s %9s %10s %12s\n", "variant", "impl", "threads", "GB/s", "vs memcpy", "vs plain1x16");
    for (int ti = 0; ti < (maxt > 1 ? 2 : 1); ti++) {
        j.nthreads = threads[ti];
        /* case 0 memcpy, then (variant, impl) */
        static double t[MAXCASE][64];
        int ncase = 1 + NVARIANT * nimpl;
        for (int r = 0; r <= reps; r++) /* r = 0: warm-up */
            for (int c = 0; c < ncase; c++) {
                int v = (c - 1) / nimpl, k = (c - 1) % nimpl;
                if (c > 0 && impls[k] == NVFP4_IMPL_SCALAR && r > 1) continue; /* the reference: one timing */
                double t0 = now();
                if (c == 0) run_memcpy(&j);
                else {
                    j.impl = impls[k];
                    j.variant = v;
                    j.t = v == 1 ? t16 : t1;
                    run_quant(&j);
                }
                if (r) t[c][r - 1] = now() - t0;
            }
        double tmem = median(t[0], reps);
        printf("%-12s %-7s %-7d %9.2f\n", "memcpy", "-", threads[ti], mb / tmem);
        double tplain[3] = {0};
        for (int c = 1; c < ncase; c++) {
            int v = (c - 1) / nimpl, k = (c - 1) % nimpl;
            double tq = impls[k] == NVFP4_IMPL_SCALAR ? t[c][0] : median(t[c], reps);
            if (v == 0) tplain[k] = tq;
            printf("%-12s %-7s %-7d %9.2f %9.1f%% %11.2fx\n", vname[v], nvfp4_impl_name(impls[k]), threads[ti], mb / tq,
                   100.0 * tmem / tq, tq / tplain[k]);
        }
        fflush(stdout);
    }
    nvfp4_tensor_free(&t1);
    nvfp4_tensor_free(&t16);
    free(x); free(dst); free(j.mean); free(j.cmax); free(j.cmin);
    return 0;
}
