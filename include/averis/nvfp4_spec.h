/* averis/nvfp4_spec.h — THE NVFP4 spec (../shared/NVFP4.md) as functions,
 * written once and compiled by both the CPU (src/formats.c wraps them as the
 * public nvfp4_* codecs) and the GPU (cuda/), through averis/hd.h:
 *
 *   E2M1      round-to-nearest threshold ladder, decode, stochastic rounding
 *   E4M3      encode (round to nearest even, satfinite), decode
 *   scales    per-tensor S_enc/S_dec, one block's E4M3 scale and encode factor
 *   Philox    Philox-4x32-10 and the SR uniforms of one element / one block
 *   RHT       the sign mask and the 16-point transform and its inverse
 *
 * Rules that keep one text valid on both sides: the C build uses
 * -ffp-contract=off and the CUDA build --fmad=false with IEEE division and
 * square root, so every fp32 operation rounds the same; loops have fixed
 * trip counts over 16-element local arrays (AVERIS_UNROLL keeps them in
 * registers on the GPU); no global tables (the device cannot read host
 * memory); math from <math.h> only. The GPU's faster bit-trick encoders
 * (cuda/nvfp4_device.cuh) are tested against these on every fp32 value.
 */
#ifndef AVERIS_NVFP4_SPEC_H
#define AVERIS_NVFP4_SPEC_H

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "averis/hd.h"

/* ---------------------------------------------------------------- E2M1 */
/* Magnitude index of a = |x| by round to nearest even: the thresholds are
 * the midpoints, inclusive where the lower neighbour has the even mantissa
 * (0, 1, 2, 4). */
AVERIS_HD uint32_t nvfp4_spec_e2m1_idx_rn(float a) {
    if (a <= 0.25f) return 0;
    if (a < 0.75f) return 1;
    if (a <= 1.25f) return 2;
    if (a < 1.75f) return 3;
    if (a <= 2.5f) return 4;
    if (a < 3.5f) return 5;
    if (a <= 5.0f) return 6;
    return 7; /* > 5, +inf, and NaN (every comparison above is false) */
}

/* Code = sign·8 + idx, sign = (x < 0): −0.0 → 0, NaN → 7. */
AVERIS_HD uint32_t nvfp4_spec_e2m1_rn(float x) { return (x < 0.0f ? 8u : 0u) | nvfp4_spec_e2m1_idx_rn(fabsf(x)); }

/* {0, .5, 1, 1.5, 2, 3, 4, 6}[idx], without a memory table */
AVERIS_HD float nvfp4_spec_e2m1_mag(uint32_t idx) {
    return idx < 4 ? (float)idx * 0.5f : idx == 4 ? 2.0f : idx == 5 ? 3.0f : idx == 6 ? 4.0f : 6.0f;
}

AVERIS_HD float nvfp4_spec_e2m1_decode(uint32_t code) {
    float m = nvfp4_spec_e2m1_mag(code & 7);
    return (code & 8) ? -m : m;
}

/* Stochastic rounding: |x| rounds up to the next magnitude iff
 * u24 < 2^24·frac, frac the exact fractional position of |x| between its
 * two neighbours; u24 in [0, 2^24). |x| ≥ 6 → 6, NaN → 7. */
AVERIS_HD uint32_t nvfp4_spec_e2m1_sr(float x, uint32_t u24) {
    if (isnan(x)) return 7;
    uint32_t sign = (x < 0.0f) ? 8u : 0u;
    float a = fabsf(x);
    if (a >= 6.0f) return sign | 7u;
    /* lo = the largest magnitude index with mag ≤ a (a < 6 here) */
    uint32_t lo = (uint32_t)(a >= 0.5f) + (uint32_t)(a >= 1.0f) + (uint32_t)(a >= 1.5f) + (uint32_t)(a >= 2.0f) +
                  (uint32_t)(a >= 3.0f) + (uint32_t)(a >= 4.0f);
    float mag_lo = nvfp4_spec_e2m1_mag(lo);
    /* a − mag_lo is exact (Sterbenz, or lo == 0) and the gap a power of two,
     * so frac is the exact fractional position */
    float frac = (a - mag_lo) / (nvfp4_spec_e2m1_mag(lo + 1) - mag_lo);
    uint32_t idx = ((float)u24 * 0x1p-24f < frac) ? lo + 1 : lo;
    return sign | idx;
}

/* ---------------------------------------------------------------- E4M3 */
/* Round to nearest even, satfinite (±448, inf included), subnormals kept,
 * NaN → 0x7F | sign. */
AVERIS_HD uint32_t nvfp4_spec_e4m3_rn(float x) {
    uint32_t sign = signbit(x) ? 0x80u : 0u;
    if (isnan(x)) return sign | 0x7Fu;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7Eu;
    int e;
    (void)frexpf(a, &e);             /* a = f·2^e, f in [0.5, 1) */
    int E = e - 1;                   /* floor(log2 a) */
    if (a == 0.0f || E < -6) E = -6; /* subnormal range: quantum 2^-9 */
    float quantum = ldexpf(1.0f, E - 3);
    float v = rintf(a / quantum) * quantum; /* exact scaling, RNE */
    if (v > 448.0f) v = 448.0f;
    if (v == 0.0f) return sign;
    (void)frexpf(v, &e);
    E = e - 1;
    if (E < -6) return sign | (uint32_t)(v * 512.0f); /* subnormal: m·2^-9 */
    int m = (int)(v / ldexpf(1.0f, E - 3)) - 8;      /* 8..15 → 0..7 */
    return sign | (uint32_t)(((E + 7) << 3) | m);
}

/* e=0: m·2^-9; else (1+m/8)·2^(e−7); 0x7F/0xFF: NaN. */
AVERIS_HD float nvfp4_spec_e4m3_decode(uint32_t code) {
    int e = (int)((code >> 3) & 0xF), m = (int)(code & 7);
    float v;
    if (e == 0xF && m == 7) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);
    else v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return (code & 0x80) ? -v : v;
}

/* -------------------------------------------------------------- scales */
/* S_enc = fminf(448·6/amax, FLT_MAX), 1 if amax == 0 or S_enc == 0 (or NaN);
 * S_dec = 1/S_enc. */
AVERIS_HD void nvfp4_spec_global_scales(float amax, float *s_enc, float *s_dec) {
    float enc = fminf(448.0f * 6.0f / amax, FLT_MAX);
    if (amax == 0.0f || enc == 0.0f || isnan(enc)) enc = 1.0f;
    *s_enc = enc;
    *s_dec = 1.0f / enc;
}

/* A block's scale before its E4M3 rounding, in this grouping. */
AVERIS_HD float nvfp4_spec_block_scale_f32(float bamax, float s_enc) { return bamax * (s_enc * (1.0f / 6.0f)); }

AVERIS_HD uint32_t nvfp4_spec_block_scale(float bamax, float s_enc) {
    return nvfp4_spec_e4m3_rn(nvfp4_spec_block_scale_f32(bamax, s_enc));
}

/* The encode factor from the decoded block scale s_dec_b: a zero scale
 * gives 1/0 = inf → FLT_MAX. */
AVERIS_HD float nvfp4_spec_enc_factor(float s_dec_b, float s_dec) { return fminf(1.0f / (s_dec_b * s_dec), FLT_MAX); }

AVERIS_HD float nvfp4_spec_block_enc(uint32_t scale_code, float s_dec) {
    return nvfp4_spec_enc_factor(nvfp4_spec_e4m3_decode(scale_code), s_dec);
}

/* -------------------------------------------------------------- Philox */
/* The high 32 bits of the 64-bit product a·b (the device's mul.hi: the
 * compiler keeps a 64-bit product in 64-bit registers otherwise). */
AVERIS_HD uint32_t nvfp4_spec_mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return (uint32_t)(((uint64_t)a * b) >> 32);
#endif
}

/* Philox-4x32-10: counter ctr[4], key key[2] → out[4]. */
AVERIS_HD void nvfp4_spec_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    AVERIS_UNROLL
    for (int round = 0; round < 10; round++) {
        uint32_t hi0 = nvfp4_spec_mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = nvfp4_spec_mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* The SR uniforms of elements 4q..4q+3 of `stream` under `seed`:
 * philox(ctr = {q lo, q hi, stream lo, stream hi}, key = {seed lo, seed hi})
 * [j] >> 8, for element 4q + j. */
AVERIS_HD void nvfp4_spec_sr_u24_quad(uint64_t seed, uint64_t stream, uint64_t q, uint32_t u[4]) {
    uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    nvfp4_spec_philox4x32_10(ctr, key, u);
    AVERIS_UNROLL
    for (int j = 0; j < 4; j++) u[j] >>= 8;
}

/* The 24-bit uniform of element `index`. */
AVERIS_HD uint32_t nvfp4_spec_sr_u24(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t u[4];
    nvfp4_spec_sr_u24_quad(seed, stream, index >> 2, u);
    return u[index & 3];
}

/* The 16 uniforms of the block starting at element idx0 (a multiple of 4):
 * one Philox call per 4 elements. */
AVERIS_HD void nvfp4_spec_sr_u24_block(uint64_t seed, uint64_t stream, uint64_t idx0, uint32_t u[16]) {
    AVERIS_UNROLL
    for (int k = 0; k < 4; k++) nvfp4_spec_sr_u24_quad(seed, stream, (idx0 >> 2) + (uint64_t)k, u + 4 * k);
}

/* ----------------------------------------------------------------- RHT */
/* y = g·H, H = diag(s)·H16/4, s = [1,1,1,-1,1,-1,-1,-1,-1,-1,-1,1,-1,1,-1,-1]:
 * bit i of the mask set ⇔ s_i = −1. In fp32, in this order:
 * v_i = g_i·s_i; butterflies h = 1, 2, 4, 8: (a, b) → (a+b, a−b); y = 0.25·v.
 * Inverse: v = butterflies(y); g_i = (0.25·v_i)·s_i. */
#define NVFP4_RHT_SIGN_MASK 0xD7E8u

AVERIS_HD float nvfp4_spec_rht_sign(int i) { return ((NVFP4_RHT_SIGN_MASK >> i) & 1u) ? -1.0f : 1.0f; }

/* the Sylvester-Hadamard butterflies, unscaled; within a level the pairs
 * (j, j+h) are disjoint, so their order is free */
AVERIS_HD void nvfp4_spec_fwht16(float v[16]) {
    AVERIS_UNROLL
    for (int level = 0; level < 4; level++) {
        int h = 1 << level;
        AVERIS_UNROLL
        for (int j = 0; j < 16; j++)
            if ((j & h) == 0) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
    }
}

/* in place: v = g on entry, y on return */
AVERIS_HD void nvfp4_spec_rht16(float v[16]) {
    AVERIS_UNROLL
    for (int i = 0; i < 16; i++) v[i] = v[i] * nvfp4_spec_rht_sign(i);
    nvfp4_spec_fwht16(v);
    AVERIS_UNROLL
    for (int i = 0; i < 16; i++) v[i] = 0.25f * v[i];
}

/* in place: v = y on entry, g on return */
AVERIS_HD void nvfp4_spec_rht16_inv(float v[16]) {
    nvfp4_spec_fwht16(v);
    AVERIS_UNROLL
    for (int i = 0; i < 16; i++) v[i] = (0.25f * v[i]) * nvfp4_spec_rht_sign(i);
}

#endif
