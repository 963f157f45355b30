/* nvfp4.c — the NVFP4 tensor quantizer: scalar reference (the spec), the
 * dispatching fast path (SIMD kernels + OpenMP over row groups), dequantize,
 * and the Averis column statistics. */
#include "averis/half.h"
#include "averis/nvfp4.h"
#include "internal.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* --------------------------------------------------------- CPU / impl */
int nvfp4_cpu_has_avx2(void) {
#if defined(AVERIS_HAVE_X86)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

int nvfp4_cpu_has_avx512(void) {
#if defined(AVERIS_HAVE_X86)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}

nvfp4_impl nvfp4_impl_resolve(nvfp4_impl want) {
    const char *env = getenv("AVERIS_IMPL"); /* lets tests/benches pin a path */
    if (want == NVFP4_IMPL_AUTO && env) {
        if (!strcmp(env, "scalar")) want = NVFP4_IMPL_SCALAR;
        else if (!strcmp(env, "avx2")) want = NVFP4_IMPL_AVX2;
        else if (!strcmp(env, "avx512")) want = NVFP4_IMPL_AVX512;
    }
    if (want == NVFP4_IMPL_AVX512 && !nvfp4_cpu_has_avx512()) want = NVFP4_IMPL_AUTO;
    if (want == NVFP4_IMPL_AVX2 && !nvfp4_cpu_has_avx2()) want = NVFP4_IMPL_AUTO;
    if (want == NVFP4_IMPL_AUTO)
        want = nvfp4_cpu_has_avx512() ? NVFP4_IMPL_AVX512
             : nvfp4_cpu_has_avx2()   ? NVFP4_IMPL_AVX2
                                      : NVFP4_IMPL_SCALAR;
    return want;
}

const char *nvfp4_impl_name(nvfp4_impl impl) {
    switch (impl) {
    case NVFP4_IMPL_SCALAR: return "scalar";
    case NVFP4_IMPL_AVX2: return "avx2";
    case NVFP4_IMPL_AVX512: return "avx512";
    default: return "auto";
    }
}

typedef struct {
    nvfp4_quant_rows_simd_fn quant_rows;
    /* the amax of x − mean (RHT'd): NULL for the scalar path, which
     * prepares whole rows in a buffer (so it is never asked to fuse the RHT) */
    nvfp4_amax_res_fn amax_res;
    nvfp4_amax_fn amax;
    void (*rht_rows)(float *x, int64_t n16);
    void (*rht_inv_rows)(const float *y, float *g, int64_t n16);
    nvfp4_colacc_fn colacc;
    nvfp4_colacc_rows_fn colacc_rows; /* NULL: colacc row by row */
} kernels;

static void rht_rows_scalar(float *x, int64_t n16) {
    for (int64_t g = 0; g < n16; g++) nvfp4_rht16_ref(x + 16 * g, x + 16 * g);
}

static void rht_inv_rows_scalar(const float *y, float *g, int64_t n16) {
    for (int64_t i = 0; i < n16; i++) nvfp4_rht16_inv_ref(y + 16 * i, g + 16 * i);
}

static void quant_rows_scalar(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                              float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes, int64_t ldc,
                              uint8_t *scales, int64_t lds, nvfp4_qcount *cnt, int rht) {
    (void)rht; /* always 0 here: amax_res is NULL */
    nvfp4_quant_rows_scalar(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt);
}

static kernels kernels_for(nvfp4_impl impl) {
    kernels k = {quant_rows_scalar, NULL, nvfp4_amax_scalar, rht_rows_scalar, rht_inv_rows_scalar,
                 nvfp4_colacc_scalar, NULL};
#if defined(AVERIS_HAVE_X86)
    if (impl == NVFP4_IMPL_AVX2)
        k = (kernels){nvfp4_quant_rows_avx2, nvfp4_amax_res_avx2, nvfp4_amax_avx2, nvfp4_rht16_rows_avx2,
                      nvfp4_rht16_inv_rows_avx2, nvfp4_colacc_avx2, nvfp4_colacc_rows_avx2};
    if (impl == NVFP4_IMPL_AVX512)
        k = (kernels){nvfp4_quant_rows_avx512, nvfp4_amax_res_avx512, nvfp4_amax_avx512, nvfp4_rht16_rows_avx512,
                      nvfp4_rht16_inv_rows_avx512, nvfp4_colacc_avx512,
                      nvfp4_colacc_rows_avx2 /* registers, not width, bound it */};
#else
    (void)impl;
#endif
    return k;
}

void nvfp4_rht16_inv_rows(const float *y, float *g, int64_t n16, nvfp4_impl impl) {
    kernels_for(nvfp4_impl_resolve(impl)).rht_inv_rows(y, g, n16);
}

/* Below this many elements the work is done on one thread: a parallel
 * region costs more than it saves (the bits do not depend on it). */
#define NVFP4_PAR_MIN 32768

/* A thread's scratch buffer of n floats; on failure sets *failed (read by
 * every thread, which then skips its work) and returns NULL. */
static float *thread_buf(size_t n, int *failed) {
    float *p = malloc(n * sizeof(float));
    if (!p) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
        *failed = 1;
    }
    return p;
}

/* ------------------------------------------------------------ tensors */
nvfp4_opts nvfp4_opts_default(void) {
    nvfp4_opts o;
    memset(&o, 0, sizeof o);
    o.block = NVFP4_BLOCK_1X16;
    o.amax_hint = -1.0f;
    return o;
}

int64_t nvfp4_cols_padded(int64_t cols) { return (cols + 15) / 16 * 16; }

int64_t nvfp4_scale_count(int64_t rows, int64_t cols, nvfp4_block_kind block) {
    int64_t nb = nvfp4_cols_padded(cols) / 16;
    return (block == NVFP4_BLOCK_16X16 ? (rows + 15) / 16 : rows) * nb;
}

averis_status nvfp4_tensor_alloc(nvfp4_tensor *t, int64_t rows, int64_t cols, nvfp4_block_kind block) {
    memset(t, 0, sizeof *t);
    if (rows <= 0 || cols <= 0)
        return averis_fail(AVERIS_EINVAL, "nvfp4: empty tensor (%lld x %lld)", (long long)rows,
                           (long long)cols);
    if (block != NVFP4_BLOCK_1X16 && block != NVFP4_BLOCK_16X16)
        return averis_fail(AVERIS_EINVAL, "nvfp4: unknown block kind %d", (int)block);
    t->rows = rows;
    t->cols = cols;
    t->cols_padded = nvfp4_cols_padded(cols);
    t->block = block;
    t->codes = calloc((size_t)(rows * t->cols_padded / 2), 1);
    t->scales = calloc((size_t)nvfp4_scale_count(rows, cols, block), 1);
    if (!t->codes || !t->scales) {
        nvfp4_tensor_free(t);
        return averis_fail(AVERIS_ENOMEM, "nvfp4: out of memory for %lld x %lld tensor",
                           (long long)rows, (long long)cols);
    }
    return AVERIS_OK;
}

void nvfp4_tensor_free(nvfp4_tensor *t) {
    free(t->codes);
    free(t->scales);
    t->codes = t->scales = NULL;
}

/* ------------------------------------------------------ scalar kernels */
float nvfp4_amax_scalar(const float *x, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a; /* NaN compares false: ignored */
    }
    return m;
}

void nvfp4_colacc_scalar(const float *x, int64_t w, double *part, float *mx, float *mn) {
    for (int64_t j = 0; j < w; j++) {
        float v = x[j];
        part[j] += (double)v;
        mx[j] = v > mx[j] ? v : mx[j]; /* NaN compares false: ignored */
        mn[j] = v < mn[j] ? v : mn[j];
    }
}

void nvfp4_quant_rows_scalar(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                             float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes,
                             int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt) {
    int64_t nb = cp / 16;
    float xr[16][16]; /* the quantizer input of one block column: x − mean */
    for (int64_t b = 0; b < nb; b++) {
        for (int r = 0; r < h; r++)
            for (int i = 0; i < 16; i++)
                xr[r][i] = mean ? x[r * ldx + 16 * b + i] - mean[16 * b + i] : x[r * ldx + 16 * b + i];
        int r0 = 0, r1 = h;
        while (r0 < h) {
            if (!tile) r1 = r0 + 1;
            float bamax = 0.0f;
            for (int r = r0; r < r1; r++) bamax = fmaxf(bamax, nvfp4_amax_scalar(xr[r], 16));
            uint8_t sc = nvfp4_block_scale_ref(bamax, s_enc);
            scales[(tile ? 0 : r0 * lds) + b] = sc;
            float enc = nvfp4_block_enc(sc, s_dec);
            int sat = 0;
            for (int r = r0; r < r1; r++) {
                const float *xb = xr[r];
                uint8_t *cb = codes + r * ldc + 8 * b;
                uint32_t u[16];
                if (sr && sr->enabled)
                    nvfp4_sr_u24_block(sr->seed, sr->stream, (uint64_t)((sr->row0 + r) * sr->cp + 16 * b), u);
                uint8_t q[16];
                for (int i = 0; i < 16; i++) {
                    float y = xb[i] * enc;
                    if (y > 6.0f || y < -6.0f) sat = 1;
                    q[i] = (sr && sr->enabled) ? nvfp4_e2m1_encode_sr_ref(y, u[i]) : nvfp4_e2m1_encode_ref(y);
                }
                for (int i = 0; i < 16; i += 2) {
                    cb[i / 2] = (uint8_t)(q[i] | (q[i + 1] << 4));
                    for (int k = 0; k < 2; k++) {
                        float v = xb[i + k];
                        if (v != 0.0f) cnt->nonzero++;
                        /* flushed: dequantizes to 0 (zero code, or a scale that underflowed) */
                        if (v != 0.0f && ((q[i + k] & 7) == 0 || sc == 0)) cnt->flushed++;
                        if (isnan(v)) cnt->nan++;
                        if (isinf(v)) cnt->inf++;
                    }
                }
            }
            cnt->sat_blocks += sat && sc != 0;
            r0 = r1;
        }
    }
}

/* ----------------------------------------------------- row preparation */
/* Row r of the source → fp32 [cp]: convert, subtract the mean, zero-pad,
 * RHT. This is the quantizer's input. */
static void load_row(const void *src, nvfp4_dtype dt, int64_t ld, int64_t r, int64_t cols,
                     int64_t cp, const nvfp4_opts *o, void (*rht_rows)(float *, int64_t),
                     float *dst) {
    switch (dt) {
    case NVFP4_F32: memcpy(dst, (const float *)src + r * ld, (size_t)cols * sizeof(float)); break;
    case NVFP4_BF16: {
        const uint16_t *s = (const uint16_t *)src + r * ld;
        for (int64_t c = 0; c < cols; c++) dst[c] = bf16_to_f32(s[c]);
        break;
    }
    case NVFP4_F16: {
        const uint16_t *s = (const uint16_t *)src + r * ld;
        for (int64_t c = 0; c < cols; c++) dst[c] = f16_to_f32(s[c]);
        break;
    }
    }
    if (o->mean)
        for (int64_t c = 0; c < cols; c++) dst[c] -= o->mean[c];
    for (int64_t c = cols; c < cp; c++) dst[c] = 0.0f;
    if (o->rht) rht_rows(dst, cp / 16);
}

static averis_status check_args(const void *src, nvfp4_dtype dtype, int64_t rows, int64_t cols,
                                int64_t ld, const nvfp4_opts *o, nvfp4_tensor *out) {
    if (!src || !o || !out) return averis_fail(AVERIS_EINVAL, "nvfp4_quantize: NULL argument");
    if (rows <= 0 || cols <= 0)
        return averis_fail(AVERIS_EINVAL, "nvfp4_quantize: empty tensor (%lld x %lld)",
                           (long long)rows, (long long)cols);
    if (ld < cols)
        return averis_fail(AVERIS_EINVAL, "nvfp4_quantize: row stride %lld < cols %lld",
                           (long long)ld, (long long)cols);
    if (dtype != NVFP4_F32 && dtype != NVFP4_BF16 && dtype != NVFP4_F16)
        return averis_fail(AVERIS_EINVAL, "nvfp4_quantize: unknown dtype %d", (int)dtype);
    if (out->rows != rows || out->cols != cols || out->block != o->block || !out->codes)
        return averis_fail(AVERIS_EINVAL,
                           "nvfp4_quantize: output tensor is %lld x %lld (block %d), input %lld x %lld (block %d)",
                           (long long)out->rows, (long long)out->cols, (int)out->block,
                           (long long)rows, (long long)cols, (int)o->block);
    return AVERIS_OK;
}

static void fill_stats(nvfp4_stats *st, const nvfp4_qcount *c, const nvfp4_tensor *t, int rht) {
    if (!st) return;
    st->n = t->rows * (rht ? t->cols_padded : t->cols);
    st->n_nonzero = c->nonzero;
    st->n_flushed = c->flushed;
    st->n_blocks = nvfp4_scale_count(t->rows, t->cols, t->block);
    st->n_sat_blocks = c->sat_blocks;
    st->n_nan = c->nan;
    st->n_inf = c->inf;
}

/* --------------------------------------------------- the scalar spec */
averis_status nvfp4_quantize_ref(const void *src, nvfp4_dtype dtype, int64_t rows, int64_t cols,
                                 int64_t ld, const nvfp4_opts *o, nvfp4_tensor *out,
                                 nvfp4_stats *stats) {
    averis_status st = check_args(src, dtype, rows, cols, ld, o, out);
    if (st) return st;
    int64_t cp = out->cols_padded, nb = cp / 16;
    float *xq = malloc((size_t)(rows * cp) * sizeof(float)); /* the quantizer input */
    if (!xq) return averis_fail(AVERIS_ENOMEM, "nvfp4_quantize_ref: out of memory");
    for (int64_t r = 0; r < rows; r++) load_row(src, dtype, ld, r, cols, cp, o, rht_rows_scalar, xq + r * cp);

    out->amax = nvfp4_amax_scalar(xq, rows * cp); /* amax_hint is an optimisation: ignored */
    float s_enc, s_dec;
    nvfp4_global_scales(out->amax, &s_enc, &s_dec);

    nvfp4_qcount cnt = {0};
    int tile = o->block == NVFP4_BLOCK_16X16;
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        int h = (int)(rows - r0 < 16 ? rows - r0 : 16);
        nvfp4_sr_ctx sr = {o->sr, o->seed, o->stream, r0, cp};
        nvfp4_quant_rows_scalar(xq + r0 * cp, NULL, h, cp, cp, tile, s_enc, s_dec, &sr,
                                out->codes + r0 * cp / 2, cp / 2,
                                out->scales + (tile ? (r0 / 16) * nb : r0 * nb), nb, &cnt);
    }
    free(xq);
    fill_stats(stats, &cnt, out, o->rht);
    return AVERIS_OK;
}

/* ------------------------------------------------------ the fast path */
/* Two passes inside one parallel region: the per-tensor amax of the
 * quantizer input (rows split across threads, max-reduced), then groups of
 * 16 rows quantized. Direct (fp32, whole blocks, a kernel that fuses the
 * RHT when asked): the kernels read the source rows, subtract the mean and
 * transform in registers; otherwise each row is prepared into a buffer. */
averis_status nvfp4_quantize(const void *src, nvfp4_dtype dtype, int64_t rows, int64_t cols,
                             int64_t ld, const nvfp4_opts *o, nvfp4_tensor *out,
                             nvfp4_stats *stats) {
    averis_status st = check_args(src, dtype, rows, cols, ld, o, out);
    if (st) return st;
    kernels k = kernels_for(nvfp4_impl_resolve(o->impl));
    int64_t cp = out->cols_padded, nb = cp / 16;
    int direct = dtype == NVFP4_F32 && cols % 16 == 0 && ((!o->rht && !o->mean) || k.amax_res);
    int64_t ngroups = (rows + 15) / 16;
    int tile = o->block == NVFP4_BLOCK_16X16;
    int nt = o->nthreads > 0 ? o->nthreads : 0;
    int failed = 0;
    float amax = o->amax_hint;
    int need_amax = !(amax >= 0.0f);
    if (need_amax) amax = 0.0f;
    nvfp4_qcount total = {0};
#ifdef _OPENMP
#pragma omp parallel num_threads(nt > 0 ? nt : omp_get_max_threads()) if (rows * cp >= NVFP4_PAR_MIN)
#else
    (void)nt;
#endif
    {
        float *tmp = direct ? NULL : thread_buf((size_t)(16 * cp), &failed);
        /* pass 1: the per-tensor amax of the quantizer input */
        if (need_amax) {
#ifdef _OPENMP
#pragma omp for schedule(static) reduction(max : amax)
#endif
            for (int64_t r = 0; r < rows; r++) {
                if (failed) continue;
                float m;
                if (direct) {
                    const float *xr = (const float *)src + r * ld;
                    m = k.amax_res ? k.amax_res(xr, o->mean, cols, o->rht) : k.amax(xr, cols);
                } else {
                    load_row(src, dtype, ld, r, cols, cp, o, k.rht_rows, tmp);
                    m = k.amax(tmp, cp);
                }
                if (m > amax) amax = m;
            }
        }
        float s_enc, s_dec;
        nvfp4_global_scales(amax, &s_enc, &s_dec);

        /* pass 2: quantize groups of 16 rows */
        nvfp4_qcount cnt = {0};
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t g = 0; g < ngroups; g++) {
            if (failed) continue;
            int64_t r0 = g * 16;
            int h = (int)(rows - r0 < 16 ? rows - r0 : 16);
            const float *xg;
            int64_t ldx;
            if (direct) {
                xg = (const float *)src + r0 * ld;
                ldx = ld;
            } else {
                for (int r = 0; r < h; r++) load_row(src, dtype, ld, r0 + r, cols, cp, o, k.rht_rows, tmp + r * cp);
                xg = tmp;
                ldx = cp;
            }
            nvfp4_sr_ctx sr = {o->sr, o->seed, o->stream, r0, cp};
            k.quant_rows(xg, direct ? o->mean : NULL, h, cp, ldx, tile, s_enc, s_dec, &sr, out->codes + r0 * cp / 2,
                         cp / 2, out->scales + (tile ? g * nb : r0 * nb), nb, &cnt, direct && o->rht);
        }
        free(tmp);
#ifdef _OPENMP
#pragma omp critical
#endif
        {
            total.nonzero += cnt.nonzero;
            total.flushed += cnt.flushed;
            total.sat_blocks += cnt.sat_blocks;
            total.nan += cnt.nan;
            total.inf += cnt.inf;
        }
    }
    if (failed) return averis_fail(AVERIS_ENOMEM, "nvfp4_quantize: out of memory");
    out->amax = amax;
    fill_stats(stats, &total, out, o->rht);
    return AVERIS_OK;
}

/* --------------------------------------------------------- dequantize */
/* One row of nb blocks → fp32 [16·nb]: x̂ = (e2m1(q)·s_b)·S_dec, s_b the
 * decoded scale (e4m3 [256], the codec's values as a table). */
static void dequant_row_scalar(const uint8_t *codes, const uint8_t *scales, const float *e4m3, int64_t nb,
                               float s_dec, float *out) {
    for (int64_t b = 0; b < nb; b++) {
        float sb = e4m3[scales[b]];
        for (int i = 0; i < 8; i++) {
            uint8_t byte = codes[8 * b + i];
            out[16 * b + 2 * i] = (nvfp4_e2m1_decode(byte & 0xF) * sb) * s_dec;
            out[16 * b + 2 * i + 1] = (nvfp4_e2m1_decode(byte >> 4) * sb) * s_dec;
        }
    }
}

averis_status nvfp4_dequantize(const nvfp4_tensor *t, int inverse_rht, float *out) {
    if (!t || !t->codes || !out) return averis_fail(AVERIS_EINVAL, "nvfp4_dequantize: NULL argument");
    int64_t cp = t->cols_padded, nb = cp / 16;
    float s_enc, s_dec;
    nvfp4_global_scales(t->amax, &s_enc, &s_dec);
    float e4m3[256]; /* decode table: the same values as the codec */
    for (int c = 0; c < 256; c++) e4m3[c] = nvfp4_e4m3_decode((uint8_t)c);
    nvfp4_dequant_row_fn dequant_row = dequant_row_scalar;
    nvfp4_impl impl = nvfp4_impl_resolve(NVFP4_IMPL_AUTO);
    void (*rht_inv)(const float *, float *, int64_t) = kernels_for(impl).rht_inv_rows;
#if defined(AVERIS_HAVE_X86)
    if (impl == NVFP4_IMPL_AVX2 || impl == NVFP4_IMPL_AVX512) dequant_row = nvfp4_dequant_row_avx2;
#endif
    /* direct: rows land in out as they are (no crop, no inverse transform) */
    int direct = !inverse_rht && t->cols == cp;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel if (t->rows * cp >= NVFP4_PAR_MIN)
#endif
    {
        float *row = direct ? NULL : thread_buf((size_t)cp, &failed);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < t->rows; r++) {
            if (failed) continue;
            const uint8_t *sc = t->scales + (t->block == NVFP4_BLOCK_16X16 ? (r / 16) * nb : r * nb);
            float *dst = direct ? out + r * cp : row;
            dequant_row(t->codes + r * cp / 2, sc, e4m3, nb, s_dec, dst);
            if (direct) continue;
            if (inverse_rht) rht_inv(row, row, nb);
            memcpy(out + r * t->cols, row, (size_t)t->cols * sizeof(float));
        }
        free(row);
    }
    if (failed) return averis_fail(AVERIS_ENOMEM, "nvfp4_dequantize: out of memory");
    return AVERIS_OK;
}

/* ------------------------------------------------- Averis column stats */
static averis_status colstats_check(const float *x, int64_t rows, int64_t cols, int64_t ld,
                                    const float *mean) {
    if (!x || !mean) return averis_fail(AVERIS_EINVAL, "nvfp4_colstats: NULL argument");
    if (rows <= 0 || cols <= 0 || ld < cols)
        return averis_fail(AVERIS_EINVAL, "nvfp4_colstats: bad shape %lld x %lld (ld %lld)",
                           (long long)rows, (long long)cols, (long long)ld);
    return AVERIS_OK;
}

averis_status nvfp4_colstats_ref(const float *x, int64_t rows, int64_t cols, int64_t ld,
                                 float *mean, float *col_max, float *col_min) {
    averis_status st = colstats_check(x, rows, cols, ld, mean);
    if (st) return st;
    for (int64_t j = 0; j < cols; j++) {
        double total = 0.0;
        float mx = -INFINITY, mn = INFINITY;
        for (int64_t r0 = 0; r0 < rows; r0 += NVFP4_SPLIT_CHUNK) {
            double part = 0.0;
            int64_t r1 = r0 + NVFP4_SPLIT_CHUNK < rows ? r0 + NVFP4_SPLIT_CHUNK : rows;
            for (int64_t r = r0; r < r1; r++) {
                float v = x[r * ld + j];
                part += (double)v;
                if (v > mx) mx = v;
                if (v < mn) mn = v;
            }
            total += part;
        }
        mean[j] = (float)(total / (double)rows);
        if (col_max) col_max[j] = mx;
        if (col_min) col_min[j] = mn;
    }
    return AVERIS_OK;
}

/* Same arithmetic per column as the reference; each thread owns a range of
 * columns and streams its rows through the vectorised accumulator. */
averis_status nvfp4_colstats(const float *x, int64_t rows, int64_t cols, int64_t ld, float *mean,
                             float *col_max, float *col_min) {
    averis_status st = colstats_check(x, rows, cols, ld, mean);
    if (st) return st;
    kernels k = kernels_for(nvfp4_impl_resolve(NVFP4_IMPL_AUTO));
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        int64_t per = (cols + 16 * nt - 1) / (16 * nt) * 16; /* multiple of 16 columns */
        int64_t j0 = per * id, w = cols - j0 < per ? cols - j0 : per;
        if (w > 0) {
            double *total = malloc((size_t)w * sizeof(double)), *part = malloc((size_t)w * sizeof(double));
            float *mx = malloc((size_t)w * sizeof(float)), *mn = malloc((size_t)w * sizeof(float));
            if (!total || !part || !mx || !mn) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                failed = 1;
            } else {
                for (int64_t j = 0; j < w; j++) { total[j] = 0.0; mx[j] = -INFINITY; mn[j] = INFINITY; }
                for (int64_t r0 = 0; r0 < rows; r0 += NVFP4_SPLIT_CHUNK) {
                    int64_t r1 = r0 + NVFP4_SPLIT_CHUNK < rows ? r0 + NVFP4_SPLIT_CHUNK : rows;
                    memset(part, 0, (size_t)w * sizeof(double));
                    if (k.colacc_rows) {
                        k.colacc_rows(x + r0 * ld + j0, ld, r1 - r0, w, part, mx, mn);
                        for (int64_t j = 0; j < w; j++) total[j] += part[j];
                        continue;
                    }
                    /* column tiles keep the accumulators (16 KB) in L1 */
                    for (int64_t t0 = 0; t0 < w; t0 += 1024) {
                        int64_t tw = w - t0 < 1024 ? w - t0 : 1024;
                        for (int64_t r = r0; r < r1; r++)
                            k.colacc(x + r * ld + j0 + t0, tw, part + t0, mx + t0, mn + t0);
                    }
                    for (int64_t j = 0; j < w; j++) total[j] += part[j];
                }
                for (int64_t j = 0; j < w; j++) {
                    mean[j0 + j] = (float)(total[j] / (double)rows);
                    if (col_max) col_max[j0 + j] = mx[j];
                    if (col_min) col_min[j0 + j] = mn[j];
                }
            }
            free(total); free(part); free(mx); free(mn);
        }
    }
    if (failed) return averis_fail(AVERIS_ENOMEM, "nvfp4_colstats: out of memory");
    return AVERIS_OK;
}

float nvfp4_residual_amax(const float *mean, const float *col_max, const float *col_min, int64_t cols) {
    float m = 0.0f;
    for (int64_t j = 0; j < cols; j++) {
        float a = fabsf(col_max[j] - mean[j]), b = fabsf(mean[j] - col_min[j]);
        if (a > m) m = a;
        if (b > m) m = b;
    }
    return m;
}
