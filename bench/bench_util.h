/* bench_util.h — the timing helpers the benchmarks share. */
#ifndef AVERIS_BENCH_UTIL_H
#define AVERIS_BENCH_UTIL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Process CPU seconds (all threads): on a host shared with other work,
 * where wall time measures the others too. Run with OMP_WAIT_POLICY=passive
 * so that waiting threads do not spin. */
static inline double bench_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort comparator for doubles (medians of repeated timings). */
static inline int bench_cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The CPU's model name (/proc/cpuinfo), for the header of a result. */
static inline const char *bench_cpu_model(char *buf, size_t n) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(buf, n, "unknown CPU");
    if (!f) return buf;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(buf, n, "%s", strchr(line, ':') + 2);
            buf[strcspn(buf, "\n")] = 0;
            break;
        }
    fclose(f);
    return buf;
}

/* The 1-minute load average (/proc/loadavg), −1 if unknown: a shared host's
 * numbers mean little when it is well above the thread count. */
static inline void bench_loadavg(double *load1) {
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return;
    if (fscanf(f, "%lf", load1) != 1) *load1 = -1.0;
    fclose(f);
}
#endif
