/* averis/nvfp4.h — NVFP4 quantization, bit-exact to ../shared/NVFP4.md.
 *
 * Layering: formats (codecs) → transforms (RHT, Philox SR, mean split) →
 * tensor quantizer (scalar reference + AVX2/AVX-512 fast paths, OpenMP).
 * Library functions return an averis_status and never exit.
 */
#ifndef AVERIS_NVFP4_H
#define AVERIS_NVFP4_H

#include <stddef.h>
#include <stdint.h>

#include "averis/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================ formats
 *
 * FP4 E2M1 code (one nibble):
 *
 *     bit 3   2   1   0
 *        [s | e   e | m]     idx = code & 7 ↔ {0, .5, 1, 1.5, 2, 3, 4, 6}
 *
 * FP8 E4M3 (e4m3fn), bias 7, max 448, NaN = 0x7F/0xFF, no inf:
 *
 *     bit 7   6 5 4 3   2 1 0
 *        [s | e e e e | m m m]   e=0: m·2^-9 (subnormal); else (1+m/8)·2^(e-7)
 *
 * The functions below are the public names of the spec, averis/nvfp4_spec.h
 * (one text for the CPU and the GPU). BF16 and FP16: averis/half.h.
 */
typedef struct { uint8_t bits; } nvfp4_e4m3;   /* one block scale */
/* 16 E2M1 codes of one block: byte j = element 2j (low nibble) | 2j+1 (high). */
typedef struct { uint8_t qs[8]; } nvfp4_block16;

/* E2M1: round to nearest, ties to even mantissa, saturate at ±6.
 * Sign = (x < 0): -0.0 → code 0, a negative value that rounds to 0 → code 8.
 * NaN → code 7 (+6, satfinite's "NaN → +MAX_NORM"); the tensor quantizer
 * counts NaN/Inf inputs in nvfp4_stats so callers can skip the step. */
uint8_t nvfp4_e2m1_encode_ref(float x);
float nvfp4_e2m1_decode(uint8_t code);
/* E2M1 stochastic rounding of x: rounds |x| up to the next E2M1 magnitude
 * iff u24 < 2^24·frac, frac the exact fractional position of |x| between
 * its two neighbours; u24 in [0, 2^24). |x| > 6 → 6, NaN → 7. */
uint8_t nvfp4_e2m1_encode_sr_ref(float x, uint32_t u24);

/* E4M3: round to nearest even, saturate to ±448, subnormals kept. NaN → 0x7F|sign. */
uint8_t nvfp4_e4m3_encode_ref(float x);
float nvfp4_e4m3_decode(uint8_t code);

/* Per-tensor ("global") scales from amax (NVFP4.md):
 * S_enc = fminf(448·6/amax, FLT_MAX), 1 if amax == 0 or S_enc == 0; S_dec = 1/S_enc. */
void nvfp4_global_scales(float amax, float *s_enc, float *s_dec);

/* One block's scale and encode factor (NVFP4.md "Quantizing one block"). */
uint8_t nvfp4_block_scale_ref(float bamax, float s_enc);
float nvfp4_block_enc(uint8_t scale_code, float s_dec);

/* ========================================================= transforms */

/* Philox-4x32-10: counter ctr[4], key key[2] → out[4]. */
void nvfp4_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
/* The 24-bit uniform used by SR for element `index` of stream `stream`:
 * out = philox(ctr = {index>>2 lo, index>>2 hi, stream lo, stream hi},
 *              key = {seed lo, seed hi})[index & 3] >> 8. */
uint32_t nvfp4_sr_u24(uint64_t seed, uint64_t stream, uint64_t index);

/* Random Hadamard transform of 16-groups: y = g·H, H = diag(s)·H16/4.
 * fp32, in this order: v_i = g_i·s_i; butterflies h = 1,2,4,8
 * (a, b) → (a+b, a−b); y = 0.25·v. Inverse: v = butterflies(y)·0.25; g_i = v_i·s_i. */
extern const float nvfp4_rht_signs[16];
void nvfp4_rht16_ref(const float *g, float *y);
void nvfp4_rht16_inv_ref(const float *y, float *g);

/* Mean-residual split (Averis) of X [rows × cols] over rows:
 * sum_j in fp64, rows in chunks of NVFP4_SPLIT_CHUNK summed in order, the
 * chunk partials added in order (so the bits do not depend on threads);
 * mean_j = (float)(sum_j / rows); col_max/col_min ignore NaN (may be NULL).
 * The residual x_ij − mean_j is one fp32 subtraction. */
#define NVFP4_SPLIT_CHUNK 256
averis_status nvfp4_colstats(const float *x, int64_t rows, int64_t cols, int64_t ld,
                             float *mean, float *col_max, float *col_min);
averis_status nvfp4_colstats_ref(const float *x, int64_t rows, int64_t cols, int64_t ld,
                                 float *mean, float *col_max, float *col_min);
/* amax of the residual from the column stats, exactly (fp32 subtraction is
 * monotonic): max_j max(fl(max_j − mean_j), fl(mean_j − min_j)), NaN ignored. */
float nvfp4_residual_amax(const float *mean, const float *col_max, const float *col_min,
                          int64_t cols);

/* ===================================================== tensor quantizer */

typedef enum { NVFP4_BLOCK_1X16 = 0, NVFP4_BLOCK_16X16 = 1 } nvfp4_block_kind;
typedef enum { NVFP4_F32 = 0, NVFP4_BF16 = 1, NVFP4_F16 = 2 } nvfp4_dtype;
typedef enum {
    NVFP4_IMPL_AUTO = 0, NVFP4_IMPL_SCALAR = 1, NVFP4_IMPL_AVX2 = 2, NVFP4_IMPL_AVX512 = 3
} nvfp4_impl;
/* nvfp4_rht16_inv_ref of n16 consecutive groups, y → g (may be the same
 * buffer), on the SIMD level impl resolves to; bit-identical at every level. */
void nvfp4_rht16_inv_rows(const float *y, float *g, int64_t n16, nvfp4_impl impl);

/* Packed NVFP4 tensor of `rows × cols` values quantized along rows.
 *
 * cols_padded = 16·ceil(cols/16): a partial last block is zero-padded (pad
 * elements are 0 and get code 0; they never change a block's amax).
 *
 * codes  [rows × cols_padded/2] bytes, row-major; byte j of a row packs
 *        element 2j in the low nibble and 2j+1 in the high nibble:
 *
 *            byte j:  [ e(2j+1) : 4 | e(2j) : 4 ]
 *
 * scales 1×16:  [rows × nb] E4M3 bytes, nb = cols_padded/16, scale of
 *               block b of row r at r·nb + b;
 *        16×16: [ceil(rows/16) × nb], one per 16×16 tile (rows zero-padded
 *               the same way), tile (rt, b) at rt·nb + b.
 * amax   the per-tensor fp32 amax (of the transformed values, if RHT).
 * x̂ = (e2m1(q)·e4m3(s))·S_dec with S_dec from amax.
 */
typedef struct {
    int64_t rows, cols, cols_padded;
    nvfp4_block_kind block;
    uint8_t *codes;
    uint8_t *scales;
    float amax;
} nvfp4_tensor;

typedef struct {
    int64_t n;            /* elements quantized (unpadded) */
    int64_t n_nonzero;    /* nonzero quantizer inputs */
    int64_t n_flushed;    /* nonzero inputs that dequantize to 0: code magnitude 0,
                             or the block's E4M3 scale underflowed to 0 */
    int64_t n_blocks;     /* scale blocks (1×16 rows or 16×16 tiles) */
    int64_t n_sat_blocks; /* blocks (scale ≠ 0) with some |x·enc| > 6, clipped to ±6:
                             the E4M3 scale rounded down below bamax/6 */
    int64_t n_nan, n_inf; /* non-finite quantizer inputs */
} nvfp4_stats;

typedef struct {
    nvfp4_block_kind block;
    int rht;              /* transform 16-groups along the row before quantizing */
    const float *mean;    /* [cols] subtracted from every row first (Averis), or NULL */
    int sr;               /* stochastic rounding */
    uint64_t seed, stream;/* SR key; element index = r·cols + c */
    nvfp4_impl impl;      /* AUTO = best available */
    int nthreads;         /* 0 = OpenMP default */
    /* amax of the quantizer input, if the caller knows it (e.g. from
     * nvfp4_residual_amax); < 0 → computed by a first pass. */
    float amax_hint;
} nvfp4_opts;

nvfp4_opts nvfp4_opts_default(void);

int64_t nvfp4_cols_padded(int64_t cols);
int64_t nvfp4_scale_count(int64_t rows, int64_t cols, nvfp4_block_kind block);
averis_status nvfp4_tensor_alloc(nvfp4_tensor *t, int64_t rows, int64_t cols, nvfp4_block_kind block);
void nvfp4_tensor_free(nvfp4_tensor *t);

/* Quantize src [rows × cols], row stride ld (elements), of `dtype`. */
averis_status nvfp4_quantize(const void *src, nvfp4_dtype dtype, int64_t rows, int64_t cols,
                             int64_t ld, const nvfp4_opts *opts, nvfp4_tensor *out,
                             nvfp4_stats *stats);
/* The scalar specification: one thread, no SIMD, straightforward loops. */
averis_status nvfp4_quantize_ref(const void *src, nvfp4_dtype dtype, int64_t rows, int64_t cols,
                                 int64_t ld, const nvfp4_opts *opts, nvfp4_tensor *out,
                                 nvfp4_stats *stats);

/* Dequantize to fp32 [rows × cols] (ld = cols). If `inverse_rht`, each
 * 16-group of the padded row is transformed back before cropping. */
averis_status nvfp4_dequantize(const nvfp4_tensor *t, int inverse_rht, float *out);

/* Runtime CPU feature detection and the implementation AUTO resolves to. */
int nvfp4_cpu_has_avx2(void);
int nvfp4_cpu_has_avx512(void);
nvfp4_impl nvfp4_impl_resolve(nvfp4_impl want);
const char *nvfp4_impl_name(nvfp4_impl impl);

#ifdef __cplusplus
}
#endif
#endif
