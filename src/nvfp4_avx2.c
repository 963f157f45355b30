/* nvfp4_avx2.c — AVX2 kernels, bit-exact to the scalar spec. Compiled with
 * -mavx2; only called when the CPU has AVX2 (nvfp4_impl_resolve). */
#include "internal.h"

#if defined(AVERIS_HAVE_X86)
#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <string.h>

static inline __m256 abs8(__m256 x) {
    return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

float nvfp4_amax_avx2(const float *x, int64_t n) {
    __m256 m0 = _mm256_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    int64_t i = 0;
    /* max_ps(a, b) returns b when a is NaN: NaN inputs are ignored. */
    for (; i + 32 <= n; i += 32) {
        m0 = _mm256_max_ps(abs8(_mm256_loadu_ps(x + i)), m0);
        m1 = _mm256_max_ps(abs8(_mm256_loadu_ps(x + i + 8)), m1);
        m2 = _mm256_max_ps(abs8(_mm256_loadu_ps(x + i + 16)), m2);
        m3 = _mm256_max_ps(abs8(_mm256_loadu_ps(x + i + 24)), m3);
    }
    for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(abs8(_mm256_loadu_ps(x + i)), m0);
    float m = hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    for (; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a;
    }
    return m;
}

static inline __m256 abs_nonan8(__m256 x) {
    return _mm256_and_ps(abs8(x), _mm256_cmp_ps(x, x, _CMP_ORD_Q));
}

/* E4M3 RNE satfinite of 8 nonnegative values; codes as int32, decoded in *dec. */
static inline __m256i e4m3_encode8(__m256 v, __m256 *dec) {
    const __m256 min_normal = _mm256_set1_ps(0x1p-6f);
    v = _mm256_min_ps(v, _mm256_set1_ps(448.0f));
    __m256 sub = _mm256_cmp_ps(v, min_normal, _CMP_LT_OQ);
    __m256 vs = _mm256_sub_ps(_mm256_add_ps(v, _mm256_set1_ps(16384.0f)), _mm256_set1_ps(16384.0f));
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 20), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF), lsb));
    u = _mm256_and_si256(u, _mm256_set1_epi32((int)0xFFF00000u));
    __m256 r = _mm256_blendv_ps(_mm256_castsi256_ps(u), vs, sub);
    r = _mm256_min_ps(r, _mm256_set1_ps(448.0f));
    __m256i code_n = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(r), 20), _mm256_set1_epi32(960));
    __m256i code_s = _mm256_cvttps_epi32(_mm256_mul_ps(r, _mm256_set1_ps(512.0f)));
    __m256 rsub = _mm256_cmp_ps(r, min_normal, _CMP_LT_OQ);
    *dec = r;
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(code_n), _mm256_castsi256_ps(code_s), rsub));
}

/* E2M1 RN codes of 8 lanes: idx = thresholds passed (compare masks are −1). */
static inline __m256i e2m1_encode8(__m256 y) {
    __m256 a = abs8(y);
    __m256i idx = _mm256_setzero_si256();
#define STEP(t, op) idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(t), op)))
    STEP(0.25f, _CMP_GT_OQ);
    STEP(0.75f, _CMP_GE_OQ);
    STEP(1.25f, _CMP_GT_OQ);
    STEP(1.75f, _CMP_GE_OQ);
    STEP(2.5f, _CMP_GT_OQ);
    STEP(3.5f, _CMP_GE_OQ);
    STEP(5.0f, _CMP_GT_OQ);
#undef STEP
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    idx = _mm256_or_si256(idx, _mm256_and_si256(nan, _mm256_set1_epi32(7)));
    __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
    return _mm256_or_si256(idx, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
}

/* 8 int32 codes → 4 bytes (element 2j in the low nibble of byte j). */
static inline uint32_t pack8(__m256i c) {
    __m256i p = _mm256_or_si256(c, _mm256_srli_epi64(c, 28)); /* byte 0 of each qword */
    const __m256i sel = _mm256_setr_epi8(0, 8, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128,
                                         -128, -128, -128, -128, 0, 8, -128, -128, -128, -128, -128, -128,
                                         -128, -128, -128, -128, -128, -128, -128, -128);
    p = _mm256_shuffle_epi8(p, sel);
    uint32_t lo = (uint32_t)_mm256_extract_epi32(p, 0) & 0xFFFFu;
    uint32_t hi = (uint32_t)_mm256_extract_epi32(p, 4) & 0xFFFFu;
    return lo | (hi << 16);
}

/* See nvfp4_colacc_avx512: the same per-column ops, 8 columns at a time. */
void nvfp4_colacc_avx2(const float *x, int64_t w, double *part, float *mx, float *mn) {
    int64_t j = 0;
    for (; j + 8 <= w; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        _mm256_storeu_pd(part + j, _mm256_add_pd(_mm256_loadu_pd(part + j), lo));
        _mm256_storeu_pd(part + j + 4, _mm256_add_pd(_mm256_loadu_pd(part + j + 4), hi));
        _mm256_storeu_ps(mx + j, _mm256_max_ps(v, _mm256_loadu_ps(mx + j)));
        _mm256_storeu_ps(mn + j, _mm256_min_ps(v, _mm256_loadu_ps(mn + j)));
    }
    if (j < w) nvfp4_colacc_scalar(x + j, w - j, part + j, mx + j, mn + j);
}

/* x − mean at column offset off (mean may be NULL). */
static inline __m256 load_res8(const float *x, const float *mean, int64_t off) {
    __m256 v = _mm256_loadu_ps(x);
    return mean ? _mm256_sub_ps(v, _mm256_loadu_ps(mean + off)) : v;
}

void nvfp4_quant_rows_avx2(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                           float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes,
                           int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt) {
    if (sr && sr->enabled) {
        nvfp4_quant_rows_scalar(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt);
        return;
    }
    const int64_t nb = cp / 16;
    const __m256 c_scale = _mm256_set1_ps(s_enc * (1.0f / 6.0f));
    const __m256 v_sdec = _mm256_set1_ps(s_dec);
    const int nrow_sets = tile ? 1 : h;
    int64_t nonzero = 0, flushed = 0, sat = 0, nnan = 0, ninf = 0;
    for (int rs = 0; rs < nrow_sets; rs++) {
        const int ra = tile ? 0 : rs, rb = tile ? h : rs + 1;
        for (int64_t b0 = 0; b0 < nb; b0 += 8) {
            const int nbk = (int)(nb - b0 < 8 ? nb - b0 : 8);
            float bamax[8] __attribute__((aligned(32)));
            for (int i = 0; i < 8; i++) {
                float m = 0.0f;
                if (i < nbk) {
                    __m256 acc = _mm256_setzero_ps();
                    for (int r = ra; r < rb; r++) {
                        const float *xb = x + r * ldx + 16 * (b0 + i);
                        acc = _mm256_max_ps(acc, abs_nonan8(load_res8(xb, mean, 16 * (b0 + i))));
                        acc = _mm256_max_ps(acc, abs_nonan8(load_res8(xb + 8, mean, 16 * (b0 + i) + 8)));
                    }
                    m = hmax8(acc);
                }
                bamax[i] = m;
            }
            __m256 dec;
            __m256i sc = e4m3_encode8(_mm256_mul_ps(_mm256_load_ps(bamax), c_scale), &dec);
            __m256 enc = _mm256_min_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(dec, v_sdec)),
                                       _mm256_set1_ps(FLT_MAX));
            int32_t sc32[8] __attribute__((aligned(32)));
            float encs[8] __attribute__((aligned(32)));
            _mm256_store_si256((__m256i *)sc32, sc);
            _mm256_store_ps(encs, enc);
            uint8_t *srow = scales + (tile ? 0 : rs * lds) + b0;
            for (int i = 0; i < nbk; i++) srow[i] = (uint8_t)sc32[i];
            for (int i = 0; i < nbk; i++) {
                const __m256 e = _mm256_set1_ps(encs[i]);
                const int zscale = sc32[i] == 0 ? 0xFF : 0; /* underflowed scale: all flush */
                int bsat = 0;
                for (int r = ra; r < rb; r++) {
                    const float *xb = x + r * ldx + 16 * (b0 + i);
                    uint32_t packed[2];
                    for (int half = 0; half < 2; half++) {
                        __m256 xv = load_res8(xb + 8 * half, mean, 16 * (b0 + i) + 8 * half);
                        __m256 y = _mm256_mul_ps(xv, e);
                        __m256i q = e2m1_encode8(y);
                        packed[half] = pack8(q);
                        int nz = _mm256_movemask_ps(_mm256_cmp_ps(xv, _mm256_setzero_ps(), _CMP_NEQ_UQ));
                        int z = _mm256_movemask_ps(_mm256_castsi256_ps(
                            _mm256_cmpeq_epi32(_mm256_and_si256(q, _mm256_set1_epi32(7)), _mm256_setzero_si256())));
                        nonzero += __builtin_popcount(nz);
                        flushed += __builtin_popcount(nz & (z | zscale));
                        nnan += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(xv, xv, _CMP_UNORD_Q)));
                        ninf += __builtin_popcount(_mm256_movemask_ps(
                            _mm256_cmp_ps(abs8(xv), _mm256_set1_ps(INFINITY), _CMP_EQ_OQ)));
                        bsat |= _mm256_movemask_ps(_mm256_cmp_ps(abs8(y), _mm256_set1_ps(6.0f), _CMP_GT_OQ)) != 0;
                    }
                    memcpy(codes + r * ldc + 8 * (b0 + i), packed, 8);
                }
                sat += bsat && sc32[i] != 0;
            }
        }
    }
    cnt->nonzero += nonzero;
    cnt->flushed += flushed;
    cnt->sat_blocks += sat;
    cnt->nan += nnan;
    cnt->inf += ninf;
}

void nvfp4_rht16_rows_avx2(float *x, int64_t n16) {
    const __m256 s0 = _mm256_loadu_ps(nvfp4_rht_signs), s1 = _mm256_loadu_ps(nvfp4_rht_signs + 8);
    const __m256 quarter = _mm256_set1_ps(0.25f);
    for (int64_t g = 0; g < n16; g++) {
        __m256 v[2] = {_mm256_mul_ps(_mm256_loadu_ps(x + 16 * g), s0),
                       _mm256_mul_ps(_mm256_loadu_ps(x + 16 * g + 8), s1)};
        for (int k = 0; k < 2; k++) {
            __m256 p;
            p = _mm256_permute_ps(v[k], 0xB1);
            v[k] = _mm256_blend_ps(_mm256_add_ps(v[k], p), _mm256_sub_ps(p, v[k]), 0xAA);
            p = _mm256_permute_ps(v[k], 0x4E);
            v[k] = _mm256_blend_ps(_mm256_add_ps(v[k], p), _mm256_sub_ps(p, v[k]), 0xCC);
            p = _mm256_permute2f128_ps(v[k], v[k], 0x01);
            v[k] = _mm256_blend_ps(_mm256_add_ps(v[k], p), _mm256_sub_ps(p, v[k]), 0xF0);
        }
        __m256 a = _mm256_add_ps(v[0], v[1]), b = _mm256_sub_ps(v[0], v[1]);
        _mm256_storeu_ps(x + 16 * g, _mm256_mul_ps(quarter, a));
        _mm256_storeu_ps(x + 16 * g + 8, _mm256_mul_ps(quarter, b));
    }
}
#else
typedef int nvfp4_avx2_unused;
#endif
