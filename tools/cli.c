/* cli.c — option parsing helpers shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#ifdef _OPENMP
#include <omp.h>
#endif

int cli_parse_int(const char *opt, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || errno || *end || v < lo || v > hi) {
        fprintf(stderr, "averis: %s needs an integer in %ld..%ld, got '%s'\n", opt, lo, hi, s ? s : "");
        return 0;
    }
    *out = (int)v;
    return 1;
}

int cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || !*s || errno || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "averis: %s needs a number in [%g, %g], got '%s'\n", opt, lo, hi, s ? s : "");
        return 0;
    }
    *out = v;
    return 1;
}

int cli_set_threads(const char *opt, const char *s) {
    int nt;
    if (!cli_parse_int(opt, s, 1, 1024, &nt)) return 0;
#ifdef _OPENMP
    omp_set_num_threads(nt);
#endif
    return 1;
}
