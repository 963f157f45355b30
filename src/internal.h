/* internal.h — library-private declarations shared by the scalar reference
 * and the SIMD kernels. Not installed. */
#ifndef AVERIS_INTERNAL_H
#define AVERIS_INTERNAL_H

#include "averis/nvfp4.h"

averis_status averis_fail(averis_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

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

/* Quantize h rows of preprocessed fp32 values x (row stride ldx, cp columns,
 * cp a multiple of 16). tile=0: each row has its own 1×16 scales at
 * scales + r·lds; tile=1: h ≤ 16 rows share one scale per 16 columns. */
typedef void (*nvfp4_quant_rows_fn)(const float *x, int h, int64_t cp, int64_t ldx, int tile,
                                    float s_enc, float s_dec, const nvfp4_sr_ctx *sr,
                                    uint8_t *codes, int64_t ldc, uint8_t *scales, int64_t lds,
                                    nvfp4_qcount *cnt);
/* max |x_i| over n values, NaN ignored. */
typedef float (*nvfp4_amax_fn)(const float *x, int64_t n);

void nvfp4_quant_rows_scalar(const float *x, int h, int64_t cp, int64_t ldx, int tile,
                             float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes,
                             int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt);
float nvfp4_amax_scalar(const float *x, int64_t n);

#if defined(AVERIS_HAVE_X86)
void nvfp4_quant_rows_avx2(const float *x, int h, int64_t cp, int64_t ldx, int tile,
                           float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes,
                           int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt);
float nvfp4_amax_avx2(const float *x, int64_t n);
void nvfp4_rht16_rows_avx2(float *x, int64_t n16); /* in place, n16 groups */
void nvfp4_quant_rows_avx512(const float *x, int h, int64_t cp, int64_t ldx, int tile,
                             float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes,
                             int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt);
float nvfp4_amax_avx512(const float *x, int64_t n);
void nvfp4_rht16_rows_avx512(float *x, int64_t n16);
#endif

/* Quantize one 16-element block with a known encode factor (scalar spec). */
static inline uint8_t nvfp4_code_one(float x, float enc, const nvfp4_sr_ctx *sr, int64_t row,
                                     int64_t col, int *sat) {
    float y = x * enc;
    if (y > 6.0f || y < -6.0f) *sat = 1;
    if (sr && sr->enabled)
        return nvfp4_e2m1_encode_sr_ref(y, nvfp4_sr_u24(sr->seed, sr->stream,
                                                        (uint64_t)(row * sr->cp + col)));
    return nvfp4_e2m1_encode_ref(y);
}

#endif
