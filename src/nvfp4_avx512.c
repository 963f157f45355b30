/* nvfp4_avx512.c — AVX-512 kernels, bit-exact to the scalar spec in
 * formats.c / nvfp4.c. Compiled with -mavx512f -mavx512bw -mavx512vl
 * -mavx512dq; only called when the CPU has them (nvfp4_impl_resolve). */
#include "internal.h"

#if defined(AVERIS_HAVE_X86)
#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <string.h>

float nvfp4_amax_avx512(const float *x, int64_t n) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    __m512 m0 = _mm512_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    int64_t i = 0;
    /* max_ps(a, b) returns b when a is NaN: NaN inputs are ignored. */
    for (; i + 64 <= n; i += 64) {
        m0 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i), absmask), m0);
        m1 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i + 16), absmask), m1);
        m2 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i + 32), absmask), m2);
        m3 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i + 48), absmask), m3);
    }
    for (; i + 16 <= n; i += 16) m0 = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(x + i), absmask), m0);
    m0 = _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3));
    float m = _mm512_reduce_max_ps(m0);
    for (; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a;
    }
    return m;
}

/* |x| with NaN lanes replaced by 0, so a block max ignores NaN. */
static inline __m512 abs_nonan(__m512 x) {
    __m512 a = _mm512_and_ps(x, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF)));
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), a);
}

/* E4M3 RNE satfinite of 16 nonnegative values (the block scales), returning
 * the codes as int32 lanes and the decoded scale in *dec. */
static inline __m512i e4m3_encode16(__m512 v, __m512 *dec) {
    v = _mm512_min_ps(v, _mm512_set1_ps(448.0f)); /* satfinite; inf → 448 */
    __mmask16 sub = _mm512_cmp_ps_mask(v, _mm512_set1_ps(0x1p-6f), _CMP_LT_OQ);
    /* subnormal range: RNE to a multiple of 2^-9 */
    __m512 vs = _mm512_sub_ps(_mm512_add_ps(v, _mm512_set1_ps(16384.0f)), _mm512_set1_ps(16384.0f));
    /* normal range: RNE to 3 mantissa bits */
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFFF), lsb));
    u = _mm512_and_si512(u, _mm512_set1_epi32((int)0xFFF00000u));
    __m512 vn = _mm512_castsi512_ps(u);
    __m512 r = _mm512_mask_mov_ps(vn, sub, vs);
    r = _mm512_min_ps(r, _mm512_set1_ps(448.0f));
    __m512i code_n = _mm512_sub_epi32(_mm512_srli_epi32(_mm512_castps_si512(r), 20), _mm512_set1_epi32(960));
    __m512i code_s = _mm512_cvttps_epi32(_mm512_mul_ps(r, _mm512_set1_ps(512.0f)));
    __mmask16 rsub = _mm512_cmp_ps_mask(r, _mm512_set1_ps(0x1p-6f), _CMP_LT_OQ);
    *dec = r;
    return _mm512_mask_mov_epi32(code_n, rsub, code_s);
}

/* E2M1 RN codes of y (16 lanes): idx = number of thresholds passed. */
static inline __m512i e2m1_encode16(__m512 y) {
    __m512 a = _mm512_and_ps(y, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF)));
    const __m512i one = _mm512_set1_epi32(1);
    __m512i idx = _mm512_setzero_si512();
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.25f), _CMP_GT_OQ), idx, one);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.75f), _CMP_GE_OQ), idx, one);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.25f), _CMP_GT_OQ), idx, one);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.75f), _CMP_GE_OQ), idx, one);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(2.5f), _CMP_GT_OQ), idx, one);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(3.5f), _CMP_GE_OQ), idx, one);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_set1_ps(5.0f), _CMP_GT_OQ), idx, one);
    idx = _mm512_mask_mov_epi32(idx, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), _mm512_set1_epi32(7));
    __mmask16 neg = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_or_epi32(idx, neg, idx, _mm512_set1_epi32(8));
}

/* 16 int32 codes → 8 bytes, element 2j in the low nibble of byte j. */
static inline void pack16(__m512i c, uint8_t *dst) {
    __m512i p = _mm512_or_si512(c, _mm512_srli_epi64(c, 28));
    _mm_storel_epi64((__m128i *)dst, _mm512_cvtepi64_epi8(p));
}

/* The reference's per-column ops: fp64 add; max/min as `v > m ? v : m`,
 * which is exactly MAXPS(v, m) / MINPS(v, m), NaN included. */
void nvfp4_colacc_avx512(const float *x, int64_t w, double *part, float *mx, float *mn) {
    int64_t j = 0;
    for (; j + 16 <= w; j += 16) {
        __m512 v = _mm512_loadu_ps(x + j);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        _mm512_storeu_pd(part + j, _mm512_add_pd(_mm512_loadu_pd(part + j), lo));
        _mm512_storeu_pd(part + j + 8, _mm512_add_pd(_mm512_loadu_pd(part + j + 8), hi));
        _mm512_storeu_ps(mx + j, _mm512_max_ps(v, _mm512_loadu_ps(mx + j)));
        _mm512_storeu_ps(mn + j, _mm512_min_ps(v, _mm512_loadu_ps(mn + j)));
    }
    if (j < w) nvfp4_colacc_scalar(x + j, w - j, part + j, mx + j, mn + j);
}


/* The spec's RHT of one 16-group in a register (nvfp4_rht16_ref): the
 * butterflies as lane permutes; each lane computes the same a+b or a−b as
 * the scalar loop. */
static inline __m512 fwht16_reg(__m512 v) {
    __m512 p;
    p = _mm512_permute_ps(v, 0xB1); /* j ^ 1 */
    v = _mm512_mask_blend_ps(0xAAAA, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
    p = _mm512_permute_ps(v, 0x4E); /* j ^ 2 */
    v = _mm512_mask_blend_ps(0xCCCC, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
    p = _mm512_shuffle_f32x4(v, v, 0xB1); /* j ^ 4 */
    v = _mm512_mask_blend_ps(0xF0F0, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
    p = _mm512_shuffle_f32x4(v, v, 0x4E); /* j ^ 8 */
    v = _mm512_mask_blend_ps(0xFF00, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
    return v;
}

static inline __m512 rht16_reg(__m512 v) {
    v = _mm512_mul_ps(v, _mm512_loadu_ps(nvfp4_rht_signs));
    return _mm512_mul_ps(_mm512_set1_ps(0.25f), fwht16_reg(v));
}

/* nvfp4_rht16_inv_ref of n16 groups, y → g (may alias): butterflies, then
 * (0.25·v)·s as the spec orders it. */
void nvfp4_rht16_inv_rows_avx512(const float *y, float *g, int64_t n16) {
    const __m512 q = _mm512_set1_ps(0.25f), s = _mm512_loadu_ps(nvfp4_rht_signs);
    for (int64_t i = 0; i < n16; i++)
        _mm512_storeu_ps(g + 16 * i, _mm512_mul_ps(_mm512_mul_ps(q, fwht16_reg(_mm512_loadu_ps(y + 16 * i))), s));
}

void nvfp4_rht16_rows_avx512(float *x, int64_t n16) {
    for (int64_t g = 0; g < n16; g++) _mm512_storeu_ps(x + 16 * g, rht16_reg(_mm512_loadu_ps(x + 16 * g)));
}

/* One 16-group of the quantizer input: x − mean at column offset off (mean
 * may be NULL), then the RHT if asked — load_row's arithmetic. */
static inline __m512 load_res(const float *x, const float *mean, int64_t off, int rht) {
    __m512 v = _mm512_loadu_ps(x);
    if (mean) v = _mm512_sub_ps(v, _mm512_loadu_ps(mean + off));
    return rht ? rht16_reg(v) : v;
}

float nvfp4_amax_res_avx512(const float *x, const float *mean, int64_t n, int rht) {
    if (!mean && !rht) return nvfp4_amax_avx512(x, n);
    __m512 m = _mm512_setzero_ps();
    for (int64_t g = 0; g < n; g += 16) m = _mm512_max_ps(abs_nonan(load_res(x + g, mean, g, rht)), m);
    return _mm512_reduce_max_ps(m);
}

/* 32×32 → high and low 32 bits, 16 lanes. */
static inline void mulhilo16(__m512i a, __m512i m, __m512i *hi, __m512i *lo) {
    __m512i pe = _mm512_mul_epu32(a, m);                          /* even lanes, 64-bit */
    __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);   /* odd lanes */
    *lo = _mm512_mullo_epi32(a, m);
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
}

/* SR uniforms for n (multiple of 4) consecutive elements from index idx0
 * (a multiple of 4): 16 Philox-4x32-10 instances per step, bit-exact to
 * nvfp4_sr_u24. */
static void sr_u24_row(uint64_t seed, uint64_t stream, uint64_t idx0, int64_t n, uint32_t *u) {
    const __m512i M0 = _mm512_set1_epi32((int)0xD2511F53u), M1 = _mm512_set1_epi32((int)0xCD9E8D57u);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t e = 0; e < n; e += 64) {
        uint64_t q0 = (idx0 + (uint64_t)e) >> 2;
        __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)q0), lane);
        /* carry into the high word where the low word wrapped */
        __mmask16 wrap = _mm512_cmplt_epu32_mask(c0, _mm512_set1_epi32((int)(uint32_t)q0));
        __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32((int)(uint32_t)(q0 >> 32)), wrap,
                                           _mm512_set1_epi32((int)(uint32_t)(q0 >> 32)), _mm512_set1_epi32(1));
        __m512i c2 = _mm512_set1_epi32((int)(uint32_t)stream), c3 = _mm512_set1_epi32((int)(uint32_t)(stream >> 32));
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            __m512i hi0, lo0, hi1, lo1;
            mulhilo16(c0, M0, &hi0, &lo0);
            mulhilo16(c2, M1, &hi1, &lo1);
            c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
            c1 = lo1;
            c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
            c3 = lo0;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        /* 4×16 transpose into element order: within 128-bit lanes, then the lanes */
        c0 = _mm512_srli_epi32(c0, 8);
        c1 = _mm512_srli_epi32(c1, 8);
        c2 = _mm512_srli_epi32(c2, 8);
        c3 = _mm512_srli_epi32(c3, 8);
        __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpacklo_epi32(c2, c3);
        __m512i t2 = _mm512_unpackhi_epi32(c0, c1), t3 = _mm512_unpackhi_epi32(c2, c3);
        __m512i a0 = _mm512_unpacklo_epi64(t0, t1), a1 = _mm512_unpackhi_epi64(t0, t1); /* counters 0,4,8,12; 1,5,9,13 */
        __m512i a2 = _mm512_unpacklo_epi64(t2, t3), a3 = _mm512_unpackhi_epi64(t2, t3); /* 2,6,10,14; 3,7,11,15 */
        __m512i b0 = _mm512_shuffle_i32x4(a0, a1, 0x44), b1 = _mm512_shuffle_i32x4(a2, a3, 0x44);
        __m512i b2 = _mm512_shuffle_i32x4(a0, a1, 0xEE), b3 = _mm512_shuffle_i32x4(a2, a3, 0xEE);
        uint32_t out[64];
        _mm512_storeu_si512(out, _mm512_shuffle_i32x4(b0, b1, 0x88));
        _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(b0, b1, 0xDD));
        _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(b2, b3, 0x88));
        _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(b2, b3, 0xDD));
        int64_t take = n - e < 64 ? n - e : 64;
        memcpy(u + e, out, (size_t)take * sizeof(uint32_t));
    }
}

/* E2M1 stochastic rounding of 16 lanes (nvfp4_e2m1_encode_sr_ref). */
static inline __m512i e2m1_encode16_sr(__m512 y, __m512i u24) {
    const __m512 mags = _mm512_setr_ps(0, 0.5f, 1, 1.5f, 2, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6);
    __m512 a = _mm512_and_ps(y, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF)));
    const __m512i one = _mm512_set1_epi32(1);
    __m512i lo = _mm512_setzero_si512();
    lo = _mm512_mask_add_epi32(lo, _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.5f), _CMP_GE_OQ), lo, one);
    lo = _mm512_mask_add_epi32(lo, _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f), _CMP_GE_OQ), lo, one);
    lo = _mm512_mask_add_epi32(lo, _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.5f), _CMP_GE_OQ), lo, one);
    lo = _mm512_mask_add_epi32(lo, _mm512_cmp_ps_mask(a, _mm512_set1_ps(2.0f), _CMP_GE_OQ), lo, one);
    lo = _mm512_mask_add_epi32(lo, _mm512_cmp_ps_mask(a, _mm512_set1_ps(3.0f), _CMP_GE_OQ), lo, one);
    lo = _mm512_mask_add_epi32(lo, _mm512_cmp_ps_mask(a, _mm512_set1_ps(4.0f), _CMP_GE_OQ), lo, one);
    lo = _mm512_min_epi32(lo, _mm512_set1_epi32(6));
    __m512 vlo = _mm512_permutexvar_ps(lo, mags), vhi = _mm512_permutexvar_ps(_mm512_add_epi32(lo, one), mags);
    __m512 frac = _mm512_div_ps(_mm512_sub_ps(a, vlo), _mm512_sub_ps(vhi, vlo));
    __m512 uf = _mm512_mul_ps(_mm512_cvtepi32_ps(u24), _mm512_set1_ps(0x1p-24f));
    __m512i idx = _mm512_mask_add_epi32(lo, _mm512_cmp_ps_mask(uf, frac, _CMP_LT_OQ), lo, one);
    __mmask16 sat = _mm512_cmp_ps_mask(a, _mm512_set1_ps(6.0f), _CMP_GE_OQ) | _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
    idx = _mm512_mask_mov_epi32(idx, sat, _mm512_set1_epi32(7));
    __mmask16 neg = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_or_epi32(idx, neg, idx, _mm512_set1_epi32(8));
}

/* nvfp4_quant_rows_fn, the RHT fused in if rht: each 16-group of x − mean is
 * transformed in its register, in the max pass and again in the encode pass. */
static inline __attribute__((always_inline)) void
quant_rows(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile, float s_enc, float s_dec,
           const nvfp4_sr_ctx *sr, uint8_t *codes, int64_t ldc, uint8_t *scales, int64_t lds, nvfp4_qcount *cnt,
           const int rht, int use_sr) {
    const int64_t nb = cp / 16;
    uint32_t u[16][256]; /* SR uniforms of the block column being encoded, per row */
    const __m512 c_scale = _mm512_set1_ps(s_enc * (1.0f / 6.0f));
    const __m512 v_sdec = _mm512_set1_ps(s_dec);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    const int nrow_sets = tile ? 1 : h; /* sets of rows sharing scales */
    int64_t nonzero = 0, flushed = 0, sat = 0, nnan = 0, ninf = 0;
    for (int rs = 0; rs < nrow_sets; rs++) {
        const int ra = tile ? 0 : rs, rb = tile ? h : rs + 1;
        for (int64_t b0 = 0; b0 < nb; b0 += 16) {
            const int nbk = (int)(nb - b0 < 16 ? nb - b0 : 16);
            float bamax[16] __attribute__((aligned(64)));
            for (int i = 0; i < 16; i++) {
                float m = 0.0f;
                if (i < nbk) {
                    __m512 acc = _mm512_setzero_ps();
                    for (int r = ra; r < rb; r++)
                        acc = _mm512_max_ps(acc, abs_nonan(load_res(x + r * ldx + 16 * (b0 + i), mean, 16 * (b0 + i), rht)));
                    m = _mm512_reduce_max_ps(acc);
                }
                bamax[i] = m;
            }
            __m512 dec;
            __m512i sc = e4m3_encode16(_mm512_mul_ps(_mm512_load_ps(bamax), c_scale), &dec);
            __m512 enc = _mm512_min_ps(_mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_mul_ps(dec, v_sdec)),
                                       _mm512_set1_ps(FLT_MAX));
            uint8_t sc8[16];
            _mm_storeu_si128((__m128i *)sc8, _mm512_cvtepi32_epi8(sc));
            memcpy(scales + (tile ? 0 : rs * lds) + b0, sc8, (size_t)nbk);
            float encs[16] __attribute__((aligned(64)));
            _mm512_store_ps(encs, enc);
            if (use_sr)
                for (int r = ra; r < rb; r++)
                    sr_u24_row(sr->seed, sr->stream, (uint64_t)((sr->row0 + r) * sr->cp + 16 * b0), 16 * nbk, u[r - ra]);
            for (int i = 0; i < nbk; i++) {
                const __m512 e = _mm512_set1_ps(encs[i]);
                const __mmask16 zscale = sc8[i] == 0 ? 0xFFFF : 0; /* underflowed scale: all flush */
                int bsat = 0;
                for (int r = ra; r < rb; r++) {
                    __m512 xv = load_res(x + r * ldx + 16 * (b0 + i), mean, 16 * (b0 + i), rht);
                    __m512 y = _mm512_mul_ps(xv, e);
                    __m512i q = use_sr ? e2m1_encode16_sr(y, _mm512_loadu_si512(u[r - ra] + 16 * i))
                                       : e2m1_encode16(y);
                    pack16(q, codes + r * ldc + 8 * (b0 + i));
                    __mmask16 nz = _mm512_cmp_ps_mask(xv, _mm512_setzero_ps(), _CMP_NEQ_UQ);
                    __mmask16 z = _mm512_cmpeq_epi32_mask(_mm512_and_si512(q, _mm512_set1_epi32(7)),
                                                          _mm512_setzero_si512());
                    nonzero += __builtin_popcount(nz);
                    flushed += __builtin_popcount(nz & (z | zscale));
                    nnan += __builtin_popcount(_mm512_cmp_ps_mask(xv, xv, _CMP_UNORD_Q));
                    __m512 ax = _mm512_and_ps(xv, absmask);
                    ninf += __builtin_popcount(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ));
                    bsat |= _mm512_cmp_ps_mask(_mm512_and_ps(y, absmask), _mm512_set1_ps(6.0f), _CMP_GT_OQ) != 0;
                }
                sat += bsat && sc8[i] != 0;
            }
        }
    }
    cnt->nonzero += nonzero;
    cnt->flushed += flushed;
    cnt->sat_blocks += sat;
    cnt->nan += nnan;
    cnt->inf += ninf;
}

/* One copy of the kernel with the RHT and one without (SR is tested per row). */
void nvfp4_quant_rows_avx512(const float *x, const float *mean, int h, int64_t cp, int64_t ldx, int tile,
                             float s_enc, float s_dec, const nvfp4_sr_ctx *sr, uint8_t *codes, int64_t ldc,
                             uint8_t *scales, int64_t lds, nvfp4_qcount *cnt, int rht) {
    int use_sr = sr && sr->enabled;
    if (rht) quant_rows(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt, 1, use_sr);
    else quant_rows(x, mean, h, cp, ldx, tile, s_enc, s_dec, sr, codes, ldc, scales, lds, cnt, 0, use_sr);
}

#else
typedef int nvfp4_avx512_unused;
#endif
