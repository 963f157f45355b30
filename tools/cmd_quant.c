/* averis quant — NVFP4 round trip of a 2-D .npy tensor, with statistics. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "averis/gemm.h"
#include "averis/io.h"
#include "averis/half.h"
#include "averis/nvfp4.h"
#include "averis/quant.h"
#include "cli.h"

static void quant_usage(FILE *f) {
    fprintf(f,
            "usage: averis quant IN.npy --out OUT.npy [options]\n"
            "\n"
            "Quantizes a 2-D C-order little-endian .npy (float32 '<f4', float16 '<f2',\n"
            "or bfloat16 bits as '<u2') to NVFP4 along the last dimension, writes the\n"
            "dequantized float32 result (same shape) to OUT.npy, and prints error\n"
            "statistics.\n"
            "\n"
            "options:\n"
            "  --out FILE        dequantized float32 .npy (required)\n"
            "  --block B         1x16 (default) or 16x16 scale blocks\n"
            "  --rht             random Hadamard transform of 16-groups along the last\n"
            "                    dim before quantizing; inverted after dequantizing\n"
            "  --split mean      Averis: subtract the per-column mean over rows, quantize\n"
            "                    the residual, add the mean back\n"
            "  --mean-fp4        with --split: quantize the mean to NVFP4 too\n"
            "  --sr              stochastic rounding of the elements (Philox-4x32-10)\n"
            "  --seed N          SR seed (default 0)\n"
            "  --packed FILE     also write the packed NVFP4 bytes (layout: README)\n"
            "  --ref             use the scalar reference quantizer (the spec)\n"
            "  --impl NAME       auto|scalar|avx2|avx512 kernels for the fast path\n"
            "  --threads N       OpenMP threads (default: all)\n"
            "  -h, --help        this text\n");
}

int cli_parse_u64(const char *opt, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') {
        fprintf(stderr, "averis: %s needs a non-negative integer, got '%s'\n", opt, s ? s : "");
        return 0;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) {
        fprintf(stderr, "averis: %s needs a non-negative integer, got '%s'\n", opt, s);
        return 0;
    }
    *out = v;
    return 1;
}

int cmd_quant(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *packed = NULL;
    averis_qcfg cfg = {0};
    cfg.block = NVFP4_BLOCK_1X16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VAL                                                                   \
    do {                                                                           \
        if (!val) {                                                                \
            fprintf(stderr, "averis quant: %s needs a value\n", a);                \
            return 2;                                                              \
        }                                                                          \
        i++;                                                                       \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { quant_usage(stdout); return 0; }
        else if (!strcmp(a, "--out")) { NEED_VAL; out = val; }
        else if (!strcmp(a, "--packed")) { NEED_VAL; packed = val; }
        else if (!strcmp(a, "--block")) {
            NEED_VAL;
            if (!strcmp(val, "1x16")) cfg.block = NVFP4_BLOCK_1X16;
            else if (!strcmp(val, "16x16")) cfg.block = NVFP4_BLOCK_16X16;
            else { fprintf(stderr, "averis quant: --block must be 1x16 or 16x16, got '%s'\n", val); return 2; }
        } else if (!strcmp(a, "--rht")) cfg.rht = 1;
        else if (!strcmp(a, "--split")) {
            NEED_VAL;
            if (strcmp(val, "mean")) { fprintf(stderr, "averis quant: --split takes 'mean', got '%s'\n", val); return 2; }
            cfg.split = 1;
        } else if (!strcmp(a, "--mean-fp4")) cfg.mean_fp4 = 1;
        else if (!strcmp(a, "--sr")) cfg.sr = 1;
        else if (!strcmp(a, "--seed")) { NEED_VAL; if (!cli_parse_u64("--seed", val, &cfg.seed)) return 2; }
        else if (!strcmp(a, "--ref")) cfg.reference = 1;
        else if (!strcmp(a, "--impl")) {
            NEED_VAL;
            if (!strcmp(val, "auto")) cfg.impl = NVFP4_IMPL_AUTO;
            else if (!strcmp(val, "scalar")) cfg.impl = NVFP4_IMPL_SCALAR;
            else if (!strcmp(val, "avx2")) cfg.impl = NVFP4_IMPL_AVX2;
            else if (!strcmp(val, "avx512")) cfg.impl = NVFP4_IMPL_AVX512;
            else { fprintf(stderr, "averis quant: --impl must be auto|scalar|avx2|avx512, got '%s'\n", val); return 2; }
        } else if (!strcmp(a, "--threads")) {
            uint64_t n;
            NEED_VAL;
            if (!cli_parse_u64("--threads", val, &n) || n == 0 || n > 4096) {
                fprintf(stderr, "averis quant: --threads must be 1..4096\n");
                return 2;
            }
            cfg.nthreads = (int)n;
        } else if (a[0] == '-') { fprintf(stderr, "averis quant: unknown option '%s' (try --help)\n", a); return 2; }
        else if (!in) in = a;
        else { fprintf(stderr, "averis quant: more than one input file ('%s', '%s')\n", in, a); return 2; }
#undef NEED_VAL
    }
    if (!in) { fprintf(stderr, "averis quant: no input .npy given (try --help)\n"); return 2; }
    if (!out) { fprintf(stderr, "averis quant: --out OUT.npy is required\n"); return 2; }
    if (cfg.mean_fp4 && !cfg.split) { fprintf(stderr, "averis quant: --mean-fp4 needs --split mean\n"); return 2; }

    averis_npy a;
    if (averis_npy_read(in, &a)) { fprintf(stderr, "averis quant: %s\n", averis_last_error()); return 1; }
    int rc = 1;
    float *x = NULL, *y = NULL;
    char packed_tmp[4200] = "";
    if (a.ndim != 2) { fprintf(stderr, "averis quant: %s: expected a 2-D array, got %d dimensions\n", in, a.ndim); goto done; }
    if (a.count == 0) { fprintf(stderr, "averis quant: %s: empty array (%lld x %lld)\n", in, (long long)a.shape[0], (long long)a.shape[1]); goto done; }
    if (a.dtype == AVERIS_NPY_U8) { fprintf(stderr, "averis quant: %s: dtype '|u1' not supported (want '<f4', '<f2' or '<u2')\n", in); goto done; }
    int64_t rows = a.shape[0], cols = a.shape[1];
    x = malloc((size_t)a.count * sizeof(float));
    y = malloc((size_t)a.count * sizeof(float));
    if (!x || !y) { fprintf(stderr, "averis quant: out of memory for %lld elements\n", (long long)a.count); goto done; }
    for (int64_t i = 0; i < a.count; i++) {
        if (a.dtype == AVERIS_NPY_F32) x[i] = ((const float *)a.data)[i];
        else if (a.dtype == AVERIS_NPY_U16) x[i] = bf16_to_f32(((const uint16_t *)a.data)[i]);
        else x[i] = f16_to_f32(((const uint16_t *)a.data)[i]);
    }
    averis_qresult res;
    memset(&res, 0, sizeof res);
    /* the packed file goes to a temporary renamed over --packed only once
     * --out is written too: a failing run leaves an existing one untouched */
    if (packed && snprintf(packed_tmp, sizeof packed_tmp, "%s.tmp.%ld.q", packed, (long)getpid()) >= (int)sizeof packed_tmp) {
        fprintf(stderr, "averis quant: %s: path too long\n", packed);
        goto done;
    }
    if (averis_quant_roundtrip(x, rows, cols, &cfg, y, &res, packed ? packed_tmp : NULL) ||
        averis_npy_write_f32(out, y, 2, a.shape)) {
        fprintf(stderr, "averis quant: %s\n", averis_last_error());
        goto done;
    }
    if (packed && rename(packed_tmp, packed) != 0) {
        fprintf(stderr, "averis quant: %s: cannot rename into place: %s\n", packed, strerror(errno));
        goto done;
    }
    printf("input        %s  %lld x %lld  %s\n", in, (long long)rows, (long long)cols,
           a.dtype == AVERIS_NPY_F32 ? "float32" : a.dtype == AVERIS_NPY_U16 ? "bfloat16" : "float16");
    printf("recipe       block %s%s%s%s%s  (%s)\n", cfg.block == NVFP4_BLOCK_16X16 ? "16x16" : "1x16",
           cfg.rht ? " +rht" : "", cfg.split ? " +split" : "", cfg.mean_fp4 ? " +mean-fp4" : "",
           cfg.sr ? " +sr" : "", cfg.reference ? "scalar reference" : nvfp4_impl_name(nvfp4_impl_resolve(cfg.impl)));
    printf("rel_mse      %.6e\n", res.rel_mse);
    printf("max_abs_err  %.6e\n", res.max_abs_err);
    printf("flushed      %.6f  (%lld of %lld nonzero quantizer inputs -> 0)\n", res.flushed_frac,
           (long long)res.q.n_flushed, (long long)res.q.n_nonzero);
    printf("amax         %.9g\n", (double)res.amax);
    printf("saturated    %lld of %lld blocks\n", (long long)res.q.n_sat_blocks, (long long)res.q.n_blocks);
    if (res.q.n_nan || res.q.n_inf)
        printf("nonfinite    %lld NaN, %lld Inf in the quantizer input (NaN -> code 7)\n",
               (long long)res.q.n_nan, (long long)res.q.n_inf);
    rc = 0;
done:
    if (rc && packed_tmp[0]) unlink(packed_tmp);
    averis_npy_free(&a);
    free(x);
    free(y);
    return rc;
}

int cmd_features(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("avx2     %s\n", nvfp4_cpu_has_avx2() ? "yes" : "no");
    printf("avx512   %s\n", nvfp4_cpu_has_avx512() ? "yes" : "no");
    printf("kernels  %s\n", nvfp4_impl_name(nvfp4_impl_resolve(NVFP4_IMPL_AUTO)));
#ifdef _OPENMP
    printf("openmp   yes (%d threads)\n", omp_get_max_threads());
#else
    printf("openmp   no\n");
#endif
    printf("gemm     %s\n", averis_gemm_backend_describe());
    return 0;
}
