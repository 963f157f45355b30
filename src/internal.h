/* internal.h — the tensor quantizer's private declarations, shared by the
 * scalar reference (nvfp4.c) and the SIMD kernels. Not installed. */
#ifndef AVERIS_INTERNAL_H
#define AVERIS_INTERNAL_H

#include "averis/nvfp4.h"
#include "averis/nvfp4_spec.h"

/* Counters a kernel adds to (integers, so the sum is order-free). */
typedef struct {
    int64_t nonzero, flushed, sat_blocks, nan, inf;
} nvfp4_qcount;

typedef struct {
    int enabled;
    uint64_t seed, stream;
    int64_t row0; /* global index of the first row handed to the kernel */
    int64_t cp;   /* padded row length: SR element index = row·cp + col */
} nvfp4_sr_ctx;

/* Quantize h rows of fp32 values x − mean (row stride ldx, cp columns, cp a
 * multiple of 16; mean [cp] or NULL). tile=0: each row has its own 1×16
 * scales at scales + r·lds; tile=1: h ≤ 16 rows share one scale per 16 columns. */
typedef void (*nvfp4_quant_rows_fn)(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                                    float s_enc, float s_dec, const nvfp4_sr_ctx *sr,
                                    uint8_t *codes, int64_t ldc, uint8_t *scales, int64_t lds,
                                    nvfp4_qcount *cnt);
/* A SIMD quantize kernel: nvfp4_quant_rows_fn with the RHT of each 16-group
 * of x − mean fused in if rht. */
typedef void (*nvfp4_quant_rows_simd_fn)(const float *x, const float *mean, int h, int64_t cp, int64_t ldx,
                                         int tile, float s_enc, float s_dec, const nvfp4_sr_ctx *sr,
                                         uint8_t *codes, int64_t ldc, uint8_t *scales, int64_t lds,
                                         nvfp4_qcount *cnt, int rht);
/* max |x_i| over n values, NaN ignored. */
typedef float (*nvfp4_amax_fn)(const float *x, int64_t n);
/* max |x_i| of the quantizer input x − mean (mean [n] or NULL), RHT'd per
 * 16-group if rht; n a multiple of 16 when mean or rht. NaN ignored. */
typedef float (*nvfp4_amax_res_fn)(const float *x, const float *mean, int64_t n, int rht);

void nvfp4_quant_rows_scalar(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                             float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes,
                             int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt);
float nvfp4_amax_scalar(const float *x, int64_t n);
/* Adds row x[w] into the column accumulators (fp64 sum, NaN-ignoring max/min). */
typedef void (*nvfp4_colacc_fn)(const float *x, int64_t w, double *part, float *mx, float *mn);
void nvfp4_colacc_scalar(const float *x, int64_t w, double *part, float *mx, float *mn);
/* The colacc of nrows rows (stride ld) in row order, per column. */
typedef void (*nvfp4_colacc_rows_fn)(const float *x, int64_t ld, int64_t nrows, int64_t w, double *part, float *mx,
                                     float *mn);

/* One row of nb blocks → fp32 [16·nb]: x̂ = (e2m1(q)·e4m3[scale])·s_dec. */
typedef void (*nvfp4_dequant_row_fn)(const uint8_t *codes, const uint8_t *scales, const float *e4m3, int64_t nb,
                                     float s_dec, float *out);

#if defined(AVERIS_HAVE_X86)
void nvfp4_dequant_row_avx2(const uint8_t *codes, const uint8_t *scales, const float *e4m3, int64_t nb,
                            float s_dec, float *out);
void nvfp4_quant_rows_avx2(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                           float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes, int64_t ldc,
                           uint8_t *scales, int64_t lds, nvfp4_qcount *cnt, int rht);
float nvfp4_amax_avx2(const float *x, int64_t n);
void nvfp4_colacc_avx2(const float *x, int64_t w, double *part, float *mx, float *mn);
void nvfp4_colacc_rows_avx2(const float *x, int64_t ld, int64_t nrows, int64_t w, double *part, float *mx,
                            float *mn);
void nvfp4_rht16_rows_avx2(float *x, int64_t n16); /* in place, n16 groups */
void nvfp4_rht16_inv_rows_avx2(const float *y, float *g, int64_t n16);
float nvfp4_amax_res_avx2(const float *x, const float *mean, int64_t n, int rht);
void nvfp4_quant_rows_avx512(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                             float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes, int64_t ldc,
                             uint8_t *scales, int64_t lds, nvfp4_qcount *cnt, int rht);
float nvfp4_amax_avx512(const float *x, int64_t n);
void nvfp4_colacc_avx512(const float *x, int64_t w, double *part, float *mx, float *mn);
void nvfp4_rht16_rows_avx512(float *x, int64_t n16);
void nvfp4_rht16_inv_rows_avx512(const float *y, float *g, int64_t n16);
float nvfp4_amax_res_avx512(const float *x, const float *mean, int64_t n, int rht);
#endif

/* The 16 SR uniforms of the block starting at element index idx0 (a
 * multiple of 4), under the name the kernels use: the spec's. */
static inline void nvfp4_sr_u24_block(uint64_t seed, uint64_t stream, uint64_t idx0, uint32_t u[16]) {
    nvfp4_spec_sr_u24_block(seed, stream, idx0, u);
}

#endif
