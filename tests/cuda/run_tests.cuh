/* run_tests.cuh — the device test programs' loop (test_cuda,
 * test_analysis_gpu, test_cudnn_att): runs each test of tests[0..n) whose
 * name contains `filter` or one of its comma-separated parts (all when NULL), synchronises the device after it
 * (a CUDA error fails the test), prints "ok"/"FAIL", its name and its wall time, and counts
 * into *passed / *failed. Uses ../check.h's CHECK counter. */
#ifndef AVERIS_TESTS_CUDA_RUN_TESTS_CUH
#define AVERIS_TESTS_CUDA_RUN_TESTS_CUH
#include "../check.h"

#include <cuda_runtime.h>
#include <ctime>
#include <cstdio>
#include <cstring>

/* whether name contains one of filter's comma-separated parts */
static inline bool name_matches(const char *name, const char *filter) {
    for (const char *p = filter; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        for (const char *q = name; len && strlen(q) >= len; q++)
            if (!strncmp(q, p, len)) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

static inline void run_device_tests(const test_case *tests, size_t n, const char *filter, int *passed, int *failed) {
    for (size_t i = 0; i < n; i++) {
        const test_case &t = tests[i];
        if (filter && !name_matches(t.name, filter)) continue;
        g_check_failed = 0;
        timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        t.fn();
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) {
            fprintf(stderr, "  CUDA error after %s: %s\n", t.name, cudaGetErrorString(e));
            g_check_failed++;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        printf("%s  %s  (%.1f s)\n", g_check_failed ? "FAIL" : "ok  ", t.name, sec);
        (g_check_failed ? *failed : *passed)++;
    }
}
#endif
