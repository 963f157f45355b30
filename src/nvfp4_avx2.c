/* nvfp4_avx2.c — AVX2 kernels, bit-exact to the scalar spec. Compiled with
 * -mavx2; only called when the CPU has AVX2 (nvfp4_impl_resolve). */
#include "internal.h"

#if defined(AVERIS_HAVE_X86)
#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
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

/* nvfp4_colacc_scalar over nrows rows (stride ld), 16 columns at a time
 * with their accumulators in registers across the rows: per column the
 * same fp64 additions in row order and the same max/min. */
void nvfp4_colacc_rows_avx2(const float *x, int64_t ld, int64_t nrows, int64_t w, double *part, float *mx,
                            float *mn) {
    int64_t j = 0;
    for (; j + 16 <= w; j += 16) {
        __m256d p[4];
        __m256 hi[2], lo[2];
        for (int k = 0; k < 4; k++) p[k] = _mm256_loadu_pd(part + j + 4 * k);
        for (int k = 0; k < 2; k++) {
            hi[k] = _mm256_loadu_ps(mx + j + 8 * k);
            lo[k] = _mm256_loadu_ps(mn + j + 8 * k);
        }
        for (int64_t r = 0; r < nrows; r++)
            for (int k = 0; k < 2; k++) {
                __m256 v = _mm256_loadu_ps(x + r * ld + j + 8 * k);
                p[2 * k] = _mm256_add_pd(p[2 * k], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
                p[2 * k + 1] = _mm256_add_pd(p[2 * k + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
                hi[k] = _mm256_max_ps(v, hi[k]);
                lo[k] = _mm256_min_ps(v, lo[k]);
            }
        for (int k = 0; k < 4; k++) _mm256_storeu_pd(part + j + 4 * k, p[k]);
        for (int k = 0; k < 2; k++) {
            _mm256_storeu_ps(mx + j + 8 * k, hi[k]);
            _mm256_storeu_ps(mn + j + 8 * k, lo[k]);
        }
    }
    if (j < w)
        for (int64_t r = 0; r < nrows; r++) nvfp4_colacc_avx2(x + r * ld + j, w - j, part + j, mx + j, mn + j);
}

/* ------------------------------------------------------------ E2M1 codes
 * |y| is clamped to 6 (NaN → 6: min_ps returns its second operand) and
 * scaled by a power of two so that one integer step is one E2M1 step:
 *   |y| < 2      s = 2|y|   magnitudes 0, .5, 1, 1.5, (2)  idx = s
 *   2 ≤ |y| < 4  s = |y|    magnitudes 2, 3, (4)           idx = s + 2
 *   |y| ≥ 4      s = |y|/2  magnitudes 4, 6                idx = s + 4
 * s is exact, so RN is cvtps (ties to even = the spec's ties, MXCSR at its
 * default) and SR's fractional position s − floor(s) is the reference's
 * frac = (|y| − lo)/(hi − lo) exactly. */
typedef struct {
    __m256 a;    /* |y| */
    __m256 s;    /* the scaled, clamped |y| */
    __m256i off; /* idx − s: 0, 2 or 4 */
} e2m1_scaled;

static inline e2m1_scaled e2m1_scale8(__m256 y) {
    e2m1_scaled r;
    r.a = abs8(y);
    __m256 ac = _mm256_min_ps(r.a, _mm256_set1_ps(6.0f));
    __m256 lt2 = _mm256_cmp_ps(ac, _mm256_set1_ps(2.0f), _CMP_LT_OQ);
    __m256 lt4 = _mm256_cmp_ps(ac, _mm256_set1_ps(4.0f), _CMP_LT_OQ);
    __m256 m = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f), lt4),
                                _mm256_set1_ps(2.0f), lt2);
    r.s = _mm256_mul_ps(ac, m);
    __m256i masks = _mm256_add_epi32(_mm256_castps_si256(lt2), _mm256_castps_si256(lt4)); /* 0, −1, −2 */
    r.off = _mm256_add_epi32(_mm256_set1_epi32(4), _mm256_slli_epi32(masks, 1));
    return r;
}

/* Magnitude index, round to nearest even (e2m1_idx_rn). */
static inline __m256i e2m1_idx_rn8(const e2m1_scaled *e) {
    return _mm256_add_epi32(_mm256_cvtps_epi32(e->s), e->off);
}

/* Magnitude index, stochastic (nvfp4_e2m1_encode_sr_ref): up iff u·2^-24 < frac. */
static inline __m256i e2m1_idx_sr8(const e2m1_scaled *e, __m256i u24) {
    __m256 f = _mm256_floor_ps(e->s);
    __m256 frac = _mm256_sub_ps(e->s, f);
    __m256 uf = _mm256_mul_ps(_mm256_cvtepi32_ps(u24), _mm256_set1_ps(0x1p-24f));
    __m256i up = _mm256_castps_si256(_mm256_cmp_ps(uf, frac, _CMP_LT_OQ));
    return _mm256_sub_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(f), e->off), up);
}

/* 16 codes (elements 0..7 in c0, 8..15 in c1, int32) → 8 bytes, element 2j
 * in the low nibble of byte j. */
static inline void pack16w(__m256i w, uint8_t *dst);
static inline void pack16(__m256i c0, __m256i c1, uint8_t *dst) {
    pack16w(_mm256_packs_epi32(c0, c1), dst); /* i16 [c0 0-3 c1 0-3 | c0 4-7 c1 4-7] */
}

/* pack16 from the int16 codes w = packs_epi32(c0, c1). */
static inline void pack16w(__m256i w, uint8_t *dst) {
    __m256i p = _mm256_madd_epi16(w, _mm256_set1_epi32(0x00100001)); /* lo + 16·hi: bytes [0 1 4 5 | 2 3 6 7] */
    p = _mm256_packus_epi16(_mm256_packus_epi32(p, p), p);
    __m128i b = _mm_unpacklo_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    _mm_storel_epi64((__m128i *)dst, b);
}

/* lane i = max over the lanes of v[i]. */
static inline __m256 hmax8x8(const __m256 v[8]) {
    __m256 a[4], b[2];
    for (int k = 0; k < 4; k++)
        a[k] = _mm256_max_ps(_mm256_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm256_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 2; k++)
        b[k] = _mm256_max_ps(_mm256_shuffle_ps(a[2 * k], a[2 * k + 1], 0x44), _mm256_shuffle_ps(a[2 * k], a[2 * k + 1], 0xEE));
    return _mm256_max_ps(_mm256_permute2f128_ps(b[0], b[1], 0x20), _mm256_permute2f128_ps(b[0], b[1], 0x31));
}

/* hmax8x8 by the integer max of the bits: the float max for nonnegative
 * finite values, a NaN's bits above every finite's. */
static inline __m256 hmax8x8i(const __m256 v[8]) {
    __m256i a[4], b[2];
#define AV_CI(x) _mm256_castps_si256(x)
#define AV_CF(x) _mm256_castsi256_ps(x)
    for (int k = 0; k < 4; k++)
        a[k] = _mm256_max_epi32(AV_CI(_mm256_unpacklo_ps(v[2 * k], v[2 * k + 1])),
                                AV_CI(_mm256_unpackhi_ps(v[2 * k], v[2 * k + 1])));
    for (int k = 0; k < 2; k++)
        b[k] = _mm256_max_epi32(AV_CI(_mm256_shuffle_ps(AV_CF(a[2 * k]), AV_CF(a[2 * k + 1]), 0x44)),
                                AV_CI(_mm256_shuffle_ps(AV_CF(a[2 * k]), AV_CF(a[2 * k + 1]), 0xEE)));
    return AV_CF(_mm256_max_epi32(_mm256_permute2x128_si256(b[0], b[1], 0x20), _mm256_permute2x128_si256(b[0], b[1], 0x31)));
#undef AV_CI
#undef AV_CF
}

static inline int64_t hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return (int64_t)_mm_cvtsi128_si32(s);
}

/* ---------------------------------------------------------------- RHT */
/* The spec's RHT of one 16-group held in v[0..1] (nvfp4_rht16_ref): each
 * lane computes the same a+b or a−b as the scalar butterflies. */
/* The butterflies h = 1, 2, 4, 8 of nvfp4_spec_fwht16, unscaled. */
static inline void fwht16_regs(__m256 v[2]) {
    for (int k = 0; k < 2; k++) {
        __m256 p;
        p = _mm256_permute_ps(v[k], 0xB1); /* j ^ 1 */
        v[k] = _mm256_blend_ps(_mm256_add_ps(v[k], p), _mm256_sub_ps(p, v[k]), 0xAA);
        p = _mm256_permute_ps(v[k], 0x4E); /* j ^ 2 */
        v[k] = _mm256_blend_ps(_mm256_add_ps(v[k], p), _mm256_sub_ps(p, v[k]), 0xCC);
        p = _mm256_permute2f128_ps(v[k], v[k], 0x01); /* j ^ 4 */
        v[k] = _mm256_blend_ps(_mm256_add_ps(v[k], p), _mm256_sub_ps(p, v[k]), 0xF0);
    }
    __m256 a = _mm256_add_ps(v[0], v[1]), b = _mm256_sub_ps(v[0], v[1]); /* j ^ 8 */
    v[0] = a;
    v[1] = b;
}

static inline void rht16_regs(__m256 v[2]) {
    v[0] = _mm256_mul_ps(v[0], _mm256_loadu_ps(nvfp4_rht_signs));
    v[1] = _mm256_mul_ps(v[1], _mm256_loadu_ps(nvfp4_rht_signs + 8));
    fwht16_regs(v);
    v[0] = _mm256_mul_ps(_mm256_set1_ps(0.25f), v[0]);
    v[1] = _mm256_mul_ps(_mm256_set1_ps(0.25f), v[1]);
}

/* nvfp4_rht16_inv_ref of n16 groups, y → g (may alias): butterflies, then
 * (0.25·v)·s as the spec orders it. */
void nvfp4_rht16_inv_rows_avx2(const float *y, float *g, int64_t n16) {
    const __m256 q = _mm256_set1_ps(0.25f);
    const __m256 s0 = _mm256_loadu_ps(nvfp4_rht_signs), s1 = _mm256_loadu_ps(nvfp4_rht_signs + 8);
    for (int64_t i = 0; i < n16; i++) {
        __m256 v[2] = {_mm256_loadu_ps(y + 16 * i), _mm256_loadu_ps(y + 16 * i + 8)};
        fwht16_regs(v);
        _mm256_storeu_ps(g + 16 * i, _mm256_mul_ps(_mm256_mul_ps(q, v[0]), s0));
        _mm256_storeu_ps(g + 16 * i + 8, _mm256_mul_ps(_mm256_mul_ps(q, v[1]), s1));
    }
}

void nvfp4_rht16_rows_avx2(float *x, int64_t n16) {
    for (int64_t g = 0; g < n16; g++) {
        __m256 v[2] = {_mm256_loadu_ps(x + 16 * g), _mm256_loadu_ps(x + 16 * g + 8)};
        rht16_regs(v);
        _mm256_storeu_ps(x + 16 * g, v[0]);
        _mm256_storeu_ps(x + 16 * g + 8, v[1]);
    }
}

/* rht16_regs for the quantizer, one op fewer per level: the sign flips by
 * xor, and each level's upper lanes as a + (−b), which IEEE defines as
 * a − b, so every non-NaN value has the same bits (a NaN may come out
 * with another sign or payload; any NaN encodes to code 7 and is ignored
 * by the max, so the codes do not change). */
static inline void rht16_regs_q(__m256 v[2]) {
    const __m256 nz = _mm256_set1_ps(-0.0f), z = _mm256_setzero_ps();
    const __m256 up1 = _mm256_blend_ps(z, nz, 0xAA), up2 = _mm256_blend_ps(z, nz, 0xCC),
                 up4 = _mm256_blend_ps(z, nz, 0xF0);
    v[0] = _mm256_xor_ps(v[0], _mm256_and_ps(nz, _mm256_loadu_ps(nvfp4_rht_signs)));
    v[1] = _mm256_xor_ps(v[1], _mm256_and_ps(nz, _mm256_loadu_ps(nvfp4_rht_signs + 8)));
    for (int k = 0; k < 2; k++) {
        v[k] = _mm256_add_ps(_mm256_xor_ps(v[k], up1), _mm256_permute_ps(v[k], 0xB1));                 /* j ^ 1 */
        v[k] = _mm256_add_ps(_mm256_xor_ps(v[k], up2), _mm256_permute_ps(v[k], 0x4E));                 /* j ^ 2 */
        v[k] = _mm256_add_ps(_mm256_xor_ps(v[k], up4), _mm256_permute2f128_ps(v[k], v[k], 0x01));       /* j ^ 4 */
    }
    __m256 a = _mm256_add_ps(v[0], v[1]), b = _mm256_sub_ps(v[0], v[1]); /* j ^ 8 */
    v[0] = _mm256_mul_ps(_mm256_set1_ps(0.25f), a);
    v[1] = _mm256_mul_ps(_mm256_set1_ps(0.25f), b);
}

/* One 16-group of the quantizer input in registers: x − mean (mean may be
 * NULL), then the RHT if asked — load_row's arithmetic, element for element. */
static inline void load16(const float *x, const float *mean, int rht, __m256 v[2]) {
    v[0] = _mm256_loadu_ps(x);
    v[1] = _mm256_loadu_ps(x + 8);
    if (mean) {
        v[0] = _mm256_sub_ps(v[0], _mm256_loadu_ps(mean));
        v[1] = _mm256_sub_ps(v[1], _mm256_loadu_ps(mean + 8));
    }
    if (rht) rht16_regs_q(v);
}

float nvfp4_amax_res_avx2(const float *x, const float *mean, int64_t n, int rht) {
    if (!mean && !rht) return nvfp4_amax_avx2(x, n);
    __m256 m0 = _mm256_setzero_ps(), m1 = m0;
    for (int64_t g = 0; g < n; g += 16) {
        __m256 v[2];
        load16(x + g, mean ? mean + g : NULL, rht, v);
        m0 = _mm256_max_ps(abs8(v[0]), m0); /* NaN lanes keep m */
        m1 = _mm256_max_ps(abs8(v[1]), m1);
    }
    return hmax8(_mm256_max_ps(m0, m1));
}

/* ---------------------------------------------------------- Philox SR */
/* 32×32 → high and low 32 bits, 8 lanes (m broadcast). */
static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i pe = _mm256_mul_epu32(a, m);                        /* even lanes, 64-bit */
    __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m); /* odd lanes */
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
    *lo = _mm256_mullo_epi32(a, m);
}

typedef struct {
    __m256i k[10][2];  /* the round keys, broadcast */
    __m256i c3;        /* the stream's high word (counter word 3) */
    __m256i hi1, lo1;  /* round 0's product of counter word 2 (the stream's low word): the same in every lane */
} philox8_key;

static inline void philox8_init(philox8_key *pk, uint64_t seed, uint64_t stream) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        pk->k[r][0] = _mm256_set1_epi32((int)k0);
        pk->k[r][1] = _mm256_set1_epi32((int)k1);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    pk->c3 = _mm256_set1_epi32((int)(uint32_t)(stream >> 32));
    mulhilo8(_mm256_set1_epi32((int)(uint32_t)stream), _mm256_set1_epi32((int)0xCD9E8D57u), &pk->hi1, &pk->lo1);
}

/* The SR uniforms of the 64 elements 4·q0 … 4·q0+63 (q0 a multiple of 4):
 * Philox-4x32-10 of the counters q0 … q0+15, two chains of 8 lanes
 * interleaved, then 4×8 transposes into element order (u[0] = elements
 * 0..7). nvfp4_sr_u24, bit for bit. */
static inline void sr_u24_x64(const philox8_key *pk, uint64_t q0, __m256i u[8]) {
    const __m256i M0 = _mm256_set1_epi32((int)0xD2511F53u), M1 = _mm256_set1_epi32((int)0xCD9E8D57u);
    const __m256i bias = _mm256_set1_epi32(INT32_MIN);
    __m256i c0[2], c1[2], c2[2], c3[2];
    for (int h = 0; h < 2; h++) {
        uint64_t q = q0 + 8 * (uint64_t)h;
        __m256i base = _mm256_set1_epi32((int)(uint32_t)q);
        c0[h] = _mm256_add_epi32(base, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        /* carry into the high word where the low word wrapped (c0 < base, unsigned) */
        __m256i wrap = _mm256_cmpgt_epi32(_mm256_xor_si256(base, bias), _mm256_xor_si256(c0[h], bias));
        c1[h] = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(q >> 32)), wrap);
        /* round 0, its constant product precomputed */
        __m256i hi0, lo0;
        mulhilo8(c0[h], M0, &hi0, &lo0);
        c0[h] = _mm256_xor_si256(_mm256_xor_si256(pk->hi1, c1[h]), pk->k[0][0]);
        c1[h] = pk->lo1;
        c2[h] = _mm256_xor_si256(_mm256_xor_si256(hi0, pk->c3), pk->k[0][1]);
        c3[h] = lo0;
    }
#pragma GCC unroll 9
    for (int r = 1; r < 10; r++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i hi0, lo0, hi1, lo1;
            mulhilo8(c0[h], M0, &hi0, &lo0);
            mulhilo8(c2[h], M1, &hi1, &lo1);
            c0[h] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[h]), pk->k[r][0]);
            c1[h] = lo1;
            c2[h] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[h]), pk->k[r][1]);
            c3[h] = lo0;
        }
    for (int h = 0; h < 2; h++) {
        __m256i w0 = _mm256_srli_epi32(c0[h], 8), w1 = _mm256_srli_epi32(c1[h], 8);
        __m256i w2 = _mm256_srli_epi32(c2[h], 8), w3 = _mm256_srli_epi32(c3[h], 8);
        __m256i t0 = _mm256_unpacklo_epi32(w0, w1), t1 = _mm256_unpacklo_epi32(w2, w3);
        __m256i t2 = _mm256_unpackhi_epi32(w0, w1), t3 = _mm256_unpackhi_epi32(w2, w3);
        __m256i a0 = _mm256_unpacklo_epi64(t0, t1), a1 = _mm256_unpackhi_epi64(t0, t1); /* counters 0|4, 1|5 */
        __m256i a2 = _mm256_unpacklo_epi64(t2, t3), a3 = _mm256_unpackhi_epi64(t2, t3); /* 2|6, 3|7 */
        u[4 * h + 0] = _mm256_permute2x128_si256(a0, a1, 0x20);
        u[4 * h + 1] = _mm256_permute2x128_si256(a2, a3, 0x20);
        u[4 * h + 2] = _mm256_permute2x128_si256(a0, a1, 0x31);
        u[4 * h + 3] = _mm256_permute2x128_si256(a2, a3, 0x31);
    }
}

/* ----------------------------------------------------------- quantize */
/* Magnitude index, round to nearest even, by one addition: |y| (clamped to
 * 6) + M with M = 2^22, 2^23, 2^24 below 2, below 4, from 4 on has an ulp
 * of one E2M1 step (½, 1, 2), so the RNE sum's mantissa counts the steps:
 * idx = bits(|y| + M) − bits(M) + off, off = 0, 2, 4. The same thresholds
 * and ties as e2m1_idx_rn8. */
static inline __m256i e2m1_idx_rn8_magic(__m256 y) {
    __m256 ac = _mm256_min_ps(abs8(y), _mm256_set1_ps(6.0f));
    __m256 lt2 = _mm256_cmp_ps(ac, _mm256_set1_ps(2.0f), _CMP_LT_OQ);
    __m256 lt4 = _mm256_cmp_ps(ac, _mm256_set1_ps(4.0f), _CMP_LT_OQ);
    __m256 m = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_set1_ps(0x1p24f), _mm256_set1_ps(0x1p23f), lt4),
                                _mm256_set1_ps(0x1p22f), lt2);
    __m256 k = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(0x4B800000 - 4)),
                                                 _mm256_castsi256_ps(_mm256_set1_epi32(0x4B000000 - 2)), lt4),
                                _mm256_castsi256_ps(_mm256_set1_epi32(0x4A800000)), lt2);
    return _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(ac, m)), _mm256_castps_si256(k));
}

/* The int32 code of 8 elements v under encode factor e (u: their SR uniforms). */
static inline __attribute__((always_inline)) __m256i encode8(__m256 v, __m256 e, __m256i u, const int use_sr) {
    __m256 y = _mm256_mul_ps(v, e);
    __m256i idx;
    if (use_sr) {
        e2m1_scaled es = e2m1_scale8(y);
        idx = e2m1_idx_sr8(&es, u);
    } else {
        idx = e2m1_idx_rn8_magic(y);
    }
    __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
    return _mm256_or_si256(idx, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
}

static inline __attribute__((always_inline)) void encode16(const __m256 v[2], __m256 e, const __m256i *u,
                                                           const int use_sr, __m256i q[2]) {
    q[0] = encode8(v[0], e, use_sr ? u[0] : _mm256_setzero_si256(), use_sr);
    q[1] = encode8(v[1], e, use_sr ? u[1] : _mm256_setzero_si256(), use_sr);
}

/* block i of row r for column_careful: the RHT'd copy, or the input (minus the means) */
static inline void careful_load(const float *x, const float *mb, __m256 (*xr)[8][2], int r, int ra, int i, int64_t b0,
                                int64_t ldx, int rht, __m256 v[2]) {
    if (rht) {
        v[0] = xr[r - ra][i][0];
        v[1] = xr[r - ra][i][1];
    } else {
        load16(x + r * ldx + 16 * (b0 + i), mb ? mb + 16 * i : NULL, 0, v);
    }
}

/* One block column (blocks b0 … b0+nbk−1 of rows ra … rb−1) the careful
 * way, for a column with some Inf or NaN input: the NaN-ignoring float max,
 * and every count per element. xr: the inputs (RHT'd) if rht. */
static __attribute__((noinline)) void
column_careful(const float *x, const float *mb, int ra, int rb, int64_t b0, int nbk, int64_t ldx, int tile, int rs,
               __m256 c_scale, __m256 v_sdec, const philox8_key *pk, const nvfp4_sr_ctx *sr, uint8_t *codes,
               int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt, __m256 (*xr)[8][2], const int rht,
               const int use_sr) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = zero;
    for (int r = ra; r < rb; r++)
        for (int i = 0; i < nbk; i++) {
            __m256 v[2];
            careful_load(x, mb, xr, r, ra, i, b0, ldx, rht, v);
            acc[i] = _mm256_max_ps(abs8(v[0]), acc[i]); /* NaN ignored */
            acc[i] = _mm256_max_ps(abs8(v[1]), acc[i]);
        }
    __m256 dec;
    __m256i sc = e4m3_encode8(_mm256_mul_ps(hmax8x8(acc), c_scale), &dec);
    __m256 enc = _mm256_min_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(dec, v_sdec)), _mm256_set1_ps(FLT_MAX));
    __m256i zs = _mm256_cmpeq_epi32(sc, _mm256_setzero_si256());
    int32_t sc32[8], zs32[8];
    float encs[8];
    _mm256_storeu_si256((__m256i *)sc32, sc);
    _mm256_storeu_si256((__m256i *)zs32, zs);
    _mm256_storeu_ps(encs, enc);
    uint8_t *srow = scales + (tile ? 0 : rs * lds) + b0;
    for (int i = 0; i < nbk; i++) srow[i] = (uint8_t)sc32[i];
    __m256i n_nz = _mm256_setzero_si256(), n_fl = n_nz, n_nan = n_nz, n_inf = n_nz;
    unsigned satbits = 0;
    for (int r = ra; r < rb; r++) {
        __m256i u[16];
        if (use_sr)
            for (int i = 0; i < nbk; i += 4)
                sr_u24_x64(pk, (uint64_t)((sr->row0 + r) * sr->cp + 16 * (b0 + i)) >> 2, u + 2 * i);
        for (int i = 0; i < nbk; i++) {
            __m256 v[2];
            careful_load(x, mb, xr, r, ra, i, b0, ldx, rht, v);
            const __m256 e = _mm256_set1_ps(encs[i]);
            const __m256i zscale = _mm256_set1_epi32(zs32[i]);
            __m256i q[2];
            encode16(v, e, u + 2 * i, use_sr, q);
            __m256 over6 = zero;
            for (int half = 0; half < 2; half++) {
                __m256i idx = _mm256_and_si256(q[half], _mm256_set1_epi32(7));
                __m256i nz = _mm256_castps_si256(_mm256_cmp_ps(v[half], zero, _CMP_NEQ_UQ));
                __m256i z = _mm256_or_si256(_mm256_cmpeq_epi32(idx, _mm256_setzero_si256()), zscale);
                n_nz = _mm256_sub_epi32(n_nz, nz);
                n_fl = _mm256_sub_epi32(n_fl, _mm256_and_si256(nz, z));
                n_nan = _mm256_sub_epi32(n_nan, _mm256_castps_si256(_mm256_cmp_ps(v[half], v[half], _CMP_UNORD_Q)));
                n_inf = _mm256_sub_epi32(
                    n_inf, _mm256_castps_si256(_mm256_cmp_ps(abs8(v[half]), _mm256_set1_ps(INFINITY), _CMP_EQ_OQ)));
                over6 = _mm256_or_ps(over6, _mm256_cmp_ps(abs8(_mm256_mul_ps(v[half], e)), _mm256_set1_ps(6.0f),
                                                          _CMP_GT_OQ));
            }
            pack16(q[0], q[1], codes + r * ldc + 8 * (b0 + i));
            satbits |= (unsigned)!_mm256_testz_ps(over6, over6) << i;
        }
    }
    satbits &= ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(zs)); /* a zero scale is a flush, not a saturation */
    cnt->sat_blocks += __builtin_popcount(satbits & ((1u << nbk) - 1));
    cnt->nonzero += hsum8i(n_nz);
    cnt->flushed += hsum8i(n_fl);
    cnt->nan += hsum8i(n_nan);
    cnt->inf += hsum8i(n_inf);
}

/* One block column's scales: the max pass (the transformed inputs kept in
 * xr when rht), the scale bytes stored, saturated blocks counted. The
 * integer max of the |v| bits is the float max for finite values, and a
 * NaN or Inf anywhere in the column shows as a max above FLT_MAX's bits:
 * such a column is marked careful (column_careful redoes it). */
typedef struct {
    __m256 enc;  /* per block: the encode factor */
    __m256i zs;  /* per block: −1 where the scale underflowed to 0 (every element flushes), else 0 */
    int careful;
} colscale;

static inline __attribute__((always_inline)) colscale
column_prep(const float *x, const float *mb, int ra, int rb, int64_t b0, int nbk, int64_t ldx, int tile, int rs,
            __m256 c_scale, __m256 v_sdec, uint8_t *scales, int64_t lds, __m256 (*xr)[8][2], int64_t *sat,
            const int rht) {
    colscale cs;
    __m256i acc[8]; /* fully unrolled loops over i keep these in registers */
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
    for (int r = ra; r < rb; r++)
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            if (i >= nbk) break;
            __m256 v[2];
            load16(x + r * ldx + 16 * (b0 + i), mb ? mb + 16 * i : NULL, rht, v);
            if (rht) {
                xr[r - ra][i][0] = v[0];
                xr[r - ra][i][1] = v[1];
            }
            acc[i] = _mm256_max_epi32(_mm256_castps_si256(abs8(v[0])), acc[i]);
            acc[i] = _mm256_max_epi32(_mm256_castps_si256(abs8(v[1])), acc[i]);
        }
    __m256 accf[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) accf[i] = _mm256_castsi256_ps(acc[i]);
    const __m256i amax_bits = _mm256_castps_si256(hmax8x8i(accf));
    const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(nbk), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i nonfinite = _mm256_cmpgt_epi32(amax_bits, _mm256_set1_epi32(0x7F7FFFFF));
    cs.careful = !_mm256_testz_si256(nonfinite, valid);
    const __m256 bamax = _mm256_castsi256_ps(amax_bits);
    __m256 dec;
    __m256i sc = e4m3_encode8(_mm256_mul_ps(bamax, c_scale), &dec);
    cs.enc = _mm256_min_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(dec, v_sdec)), _mm256_set1_ps(FLT_MAX));
    __m256i zs = _mm256_cmpeq_epi32(sc, _mm256_setzero_si256());
    cs.zs = zs;
    if (cs.careful) return cs;
    __m256i over6 = _mm256_castps_si256(_mm256_cmp_ps(_mm256_mul_ps(bamax, cs.enc), _mm256_set1_ps(6.0f), _CMP_GT_OQ));
    *sat += __builtin_popcount(
        (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(zs, _mm256_and_si256(over6, valid)))));
    uint8_t *srow = scales + (tile ? 0 : rs * lds) + b0;
    if (nbk == 8) {
        __m128i s8 = _mm_packus_epi16(_mm_packus_epi32(_mm256_castsi256_si128(sc), _mm256_extracti128_si256(sc, 1)),
                                      _mm_setzero_si128());
        _mm_storel_epi64((__m128i *)srow, s8);
    } else {
        int32_t sc32[8];
        _mm256_storeu_si256((__m256i *)sc32, sc);
        for (int i = 0; i < nbk; i++) srow[i] = (uint8_t)sc32[i];
    }
    return cs;
}

/* nvfp4_quant_rows_fn, the RHT fused in if rht. Blocks in columns of 8:
 * per column a max pass and scales (column_prep), then an encode pass. The
 * next column's prep runs before this column's encode pass, so that its
 * latency (horizontal max, E4M3, divide) overlaps the encoding.
 *
 * The finite path's counts need no per-element NaN/Inf/saturation test:
 * nonzero = n − #(v == 0), flushed = #(idx == 0 or zero scale) − #(v == 0)
 * (v == 0 gives code 0), and a block saturates iff fl(amax·enc) > 6 (the
 * product is monotone in |v|, so it is the block's largest |y|). */
static inline __attribute__((always_inline)) void
quant_rows(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile, float s_enc, float s_dec,
           const nvfp4_sr_ctx *sr, uint8_t *codes, int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt,
           const int rht, const int use_sr) {
    const int64_t nb = cp / 16;
    philox8_key pk;
    philox8_init(&pk, use_sr ? sr->seed : 0, use_sr ? sr->stream : 0);
    const __m256 c_scale = _mm256_set1_ps(s_enc * (1.0f / 6.0f));
    const __m256 v_sdec = _mm256_set1_ps(s_dec);
    const int nrow_sets = tile ? 1 : h;
    __m256 xr[2][16][8][2]; /* with rht: the transformed block columns, this one and the next */
    int64_t sat = 0;
    for (int rs = 0; rs < nrow_sets; rs++) {
        const int ra = tile ? 0 : rs, rb = tile ? h : rs + 1;
        __m256i n_zin = _mm256_setzero_si256(), n_z = n_zin; /* −#(v == 0), −#(idx == 0 or zero scale) */
        int64_t n_in = 0;
        colscale next = column_prep(x, mean, ra, rb, 0, (int)(nb < 8 ? nb : 8), ldx, tile, rs, c_scale, v_sdec, scales,
                                    lds, xr[0], &sat, rht);
        for (int64_t b0 = 0; b0 < nb; b0 += 8) {
            const int nbk = (int)(nb - b0 < 8 ? nb - b0 : 8);
            const float *mb = mean ? mean + 16 * b0 : NULL;
            __m256 (*xc)[8][2] = xr[(b0 >> 3) & 1];
            const colscale cs = next;
            if (b0 + 8 < nb)
                next = column_prep(x, mean ? mean + 16 * (b0 + 8) : NULL, ra, rb, b0 + 8,
                                   (int)(nb - b0 - 8 < 8 ? nb - b0 - 8 : 8), ldx, tile, rs, c_scale, v_sdec, scales,
                                   lds, xr[((b0 >> 3) + 1) & 1], &sat, rht);
            if (cs.careful) {
                column_careful(x, mb, ra, rb, b0, nbk, ldx, tile, rs, c_scale, v_sdec, &pk, sr, codes, ldc, scales, lds,
                               cnt, xc, rht, use_sr);
                continue;
            }
            n_in += (int64_t)(rb - ra) * nbk * 16;
            __m256i n_zin16 = _mm256_setzero_si256(), n_z16 = n_zin16; /* ≥ −128 per lane: one column */
            for (int r = ra; r < rb; r++) {
                __m256i u[16]; /* SR uniforms of the row's 8 blocks */
                if (use_sr)
                    for (int i = 0; i < nbk; i += 4)
                        sr_u24_x64(&pk, (uint64_t)((sr->row0 + r) * sr->cp + 16 * (b0 + i)) >> 2, u + 2 * i);
                for (int i = 0; i < nbk; i++) {
                    __m256 v[2];
                    if (rht) {
                        v[0] = xc[r - ra][i][0];
                        v[1] = xc[r - ra][i][1];
                    } else {
                        load16(x + r * ldx + 16 * (b0 + i), mb ? mb + 16 * i : NULL, 0, v);
                    }
                    const __m256i bi = _mm256_set1_epi32(i);
                    const __m256 e = _mm256_permutevar8x32_ps(cs.enc, bi);
                    const __m256i zscale = _mm256_permutevar8x32_epi32(cs.zs, bi); /* 0 or −1 */
                    const __m256i q0 = encode8(v[0], e, use_sr ? u[2 * i] : _mm256_setzero_si256(), use_sr);
                    const __m256i q1 = encode8(v[1], e, use_sr ? u[2 * i + 1] : _mm256_setzero_si256(), use_sr);
                    /* the counts on the 16 codes as int16, in pack16's lane order */
                    const __m256i w = _mm256_packs_epi32(q0, q1);
                    const __m256 z0 = _mm256_cmp_ps(v[0], _mm256_setzero_ps(), _CMP_EQ_OQ);
                    const __m256 z1 = _mm256_cmp_ps(v[1], _mm256_setzero_ps(), _CMP_EQ_OQ);
                    n_zin16 = _mm256_add_epi16(n_zin16, _mm256_packs_epi32(_mm256_castps_si256(z0), _mm256_castps_si256(z1)));
                    /* code 0 or 8: magnitude 0; a zero scale: every element flushes */
                    const __m256i f = _mm256_cmpeq_epi16(_mm256_andnot_si256(_mm256_set1_epi16(8), w), _mm256_setzero_si256());
                    n_z16 = _mm256_add_epi16(n_z16, _mm256_or_si256(f, zscale));
                    pack16w(w, codes + r * ldc + 8 * (b0 + i));
                }
            }
            n_zin = _mm256_add_epi32(n_zin, _mm256_madd_epi16(n_zin16, _mm256_set1_epi16(1)));
            n_z = _mm256_add_epi32(n_z, _mm256_madd_epi16(n_z16, _mm256_set1_epi16(1)));
        }
        int64_t zin = -hsum8i(n_zin);
        cnt->nonzero += n_in - zin;
        cnt->flushed += -hsum8i(n_z) - zin;
    }
    cnt->sat_blocks += sat;
}

/* One copy of the kernel per (rht, SR), so neither is tested inside the loops. */
void nvfp4_quant_rows_avx2(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                           float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes, int64_t ldc,
                           uint8_t *scales, int64_t lds, nvfp4_qcount *cnt, int rht) {
    const int use_sr = sr && sr->enabled;
    if (rht && use_sr) quant_rows(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt, 1, 1);
    else if (rht) quant_rows(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt, 1, 0);
    else if (use_sr) quant_rows(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt, 0, 1);
    else quant_rows(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt, 0, 0);
}

/* --------------------------------------------------------- dequantize */
/* dequant_row_scalar 8 lanes at a time: the nibbles unpacked into element
 * order, the magnitude looked up, the sign or-ed in (code 8 → −0.0, as the
 * codec), then the same two fp32 products. */
void nvfp4_dequant_row_avx2(const uint8_t *codes, const uint8_t *scales, const float *e4m3, int64_t nb,
                            float s_dec, float *out) {
    const __m256 mags = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const __m256 sd = _mm256_set1_ps(s_dec);
    const __m128i nib = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        __m128i c = _mm_loadl_epi64((const __m128i *)(codes + 8 * b));
        __m128i e = _mm_unpacklo_epi8(_mm_and_si128(c, nib), _mm_and_si128(_mm_srli_epi16(c, 4), nib));
        __m256 sb = _mm256_set1_ps(e4m3[scales[b]]);
        for (int half = 0; half < 2; half++) {
            __m256i q = _mm256_cvtepu8_epi32(half ? _mm_srli_si128(e, 8) : e);
            __m256 v = _mm256_permutevar8x32_ps(mags, q); /* uses q & 7 */
            __m256i sign = _mm256_slli_epi32(_mm256_srli_epi32(q, 3), 31);
            v = _mm256_or_ps(v, _mm256_castsi256_ps(sign));
            _mm256_storeu_ps(out + 16 * b + 8 * half, _mm256_mul_ps(_mm256_mul_ps(v, sb), sd));
        }
    }
}
#else
typedef int nvfp4_avx2_unused;
#endif
