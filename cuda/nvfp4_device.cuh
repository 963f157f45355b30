/* nvfp4_device.cuh — the scalar codecs of src/formats.c as device functions,
 * written line for line after them so the GPU produces the same bits.
 *
 * The CUDA sources compile with --fmad=false and IEEE division and square
 * root (no fast math): a contracted multiply-add would round differently
 * from the C reference (which builds with -ffp-contract=off).
 */
#ifndef AVERIS_NVFP4_DEVICE_CUH
#define AVERIS_NVFP4_DEVICE_CUH

#include <cfloat>
#include <cstdint>
#include <cuda_fp8.h>

#define AVD __device__ __forceinline__

/* E2M1 magnitude index, round to nearest even (formats.c e2m1_idx_rn): the
 * line-for-line port, kept as the reference of the bit versions below. */
AVD uint32_t avd_e2m1_idx_rn_ladder(float a) {
    if (a <= 0.25f) return 0;
    if (a < 0.75f) return 1;
    if (a <= 1.25f) return 2;
    if (a < 1.75f) return 3;
    if (a <= 2.5f) return 4;
    if (a < 3.5f) return 5;
    if (a <= 5.0f) return 6;
    return 7; /* > 5, +inf, NaN */
}

/* The same index from the fp32 bits (the quantize kernels are instruction-
 * bound): below 1 the grid is 0, ½, 1, so rintf(2a) rounds to nearest even;
 * from 1 on E2M1 is a float with one mantissa bit, so rounding the fp32
 * mantissa to its top bit (ties to even) and reading exponent and that bit
 * gives the index; 8 and beyond (a > 5 rounds up past 6, +inf, NaN) clamp
 * to 7. test_cuda checks it against the ladder on every fp32 value. */
AVD uint32_t avd_e2m1_idx_rn(float a) {
    if (a < 1.0f) return (uint32_t)rintf(a + a);
    uint32_t b = __float_as_uint(a);
    b += 0x1FFFFFu + ((b >> 22) & 1u);
    uint32_t idx = 2u + 2u * ((b >> 23) - 127u) + ((b >> 22) & 1u);
    return idx < 7u ? idx : 7u;
}

AVD uint32_t avd_e2m1_rn(float x) { return (x < 0.0f ? 8u : 0u) | avd_e2m1_idx_rn(fabsf(x)); }

AVD float avd_e2m1_mag_ladder(uint32_t idx) {
    /* {0, .5, 1, 1.5, 2, 3, 4, 6} without a memory table */
    return idx < 4 ? (float)idx * 0.5f : idx == 4 ? 2.0f : idx == 5 ? 3.0f : idx == 6 ? 4.0f : 6.0f;
}

/* the magnitude from the index's bits: from 2 on, exponent idx/2 − 1 and
 * mantissa bit idx & 1 */
AVD float avd_e2m1_mag(uint32_t idx) {
    return idx < 2 ? (float)idx * 0.5f : __uint_as_float((((idx >> 1) + 126u) << 23) | ((idx & 1u) << 22));
}

AVD float avd_e2m1_decode(uint32_t code) {
    float m = avd_e2m1_mag(code & 7);
    return (code & 8) ? -m : m;
}

/* E2M1 stochastic rounding (formats.c nvfp4_e2m1_encode_sr_ref): the port */
AVD uint32_t avd_e2m1_sr_ladder(float x, uint32_t u24) {
    if (isnan(x)) return 7;
    uint32_t sign = (x < 0.0f) ? 8u : 0u;
    float a = fabsf(x);
    if (a >= 6.0f) return sign | 7u;
    /* lo = the largest magnitude index with mag ≤ a (a < 6 here) */
    uint32_t lo = (a >= 0.5f) + (a >= 1.0f) + (a >= 1.5f) + (a >= 2.0f) + (a >= 3.0f) + (a >= 4.0f);
    /* hi − lo is 0.5, 1 or 2: multiplying by its inverse is the exact quotient */
    float inv = lo < 4 ? 2.0f : lo < 6 ? 1.0f : 0.5f;
    float frac = (a - avd_e2m1_mag_ladder(lo)) * inv;
    uint32_t idx = ((float)u24 * 0x1p-24f < frac) ? lo + 1 : lo;
    return sign | idx;
}

/* the same from the bits: from 1 on, lo and mag(lo) are a's exponent and
 * mantissa truncated to one bit, and hi − lo = 2^(e−1); the same fp32
 * operations on the same operands, so the same bits (tested on device) */
AVD uint32_t avd_e2m1_sr(float x, uint32_t u24) {
    if (isnan(x)) return 7;
    uint32_t sign = (x < 0.0f) ? 8u : 0u;
    float a = fabsf(x);
    if (a >= 6.0f) return sign | 7u;
    uint32_t lo;
    float mag, inv;
    if (a < 1.0f) {
        lo = a >= 0.5f;
        mag = lo ? 0.5f : 0.0f;
        inv = 2.0f;
    } else {
        uint32_t b = __float_as_uint(a), e = (b >> 23) - 127u;
        lo = 2u + 2u * e + ((b >> 22) & 1u);
        mag = __uint_as_float(b & 0xFFC00000u);
        inv = __uint_as_float((128u - e) << 23);
    }
    float frac = (a - mag) * inv;
    uint32_t idx = ((float)u24 * 0x1p-24f < frac) ? lo + 1 : lo;
    return sign | idx;
}

/* E4M3 round to nearest even, satfinite (formats.c nvfp4_e4m3_encode_ref),
 * the line-for-line port; avd_e4m3_encode below is the hardware conversion
 * (cvt.rn.satfinite.e4m3x2.f32, sm_89+), which test_cuda checks against the
 * CPU over the adversarial corpus. */
AVD uint32_t avd_e4m3_encode_sw(float x) {
    uint32_t sign = signbit(x) ? 0x80u : 0u;
    if (isnan(x)) return sign | 0x7Fu;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7Eu;
    int e;
    (void)frexpf(a, &e);
    int E = e - 1;
    if (a == 0.0f || E < -6) E = -6;
    float quantum = ldexpf(1.0f, E - 3);
    float v = rintf(a / quantum) * quantum;
    if (v > 448.0f) v = 448.0f;
    if (v == 0.0f) return sign;
    (void)frexpf(v, &e);
    E = e - 1;
    if (E < -6) return sign | (uint32_t)(v * 512.0f);
    int m = (int)(v / ldexpf(1.0f, E - 3)) - 8;
    return sign | (uint32_t)(((E + 7) << 3) | m);
}

AVD uint32_t avd_e4m3_encode(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    return (uint32_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
#else
    return avd_e4m3_encode_sw(x);
#endif
}

/* exact: subnormals m·2^-9, normals built from their bits */
AVD float avd_e4m3_decode(uint32_t code) {
    uint32_t e = (code >> 3) & 0xF, m = code & 7;
    float v;
    if (e == 0xF && m == 7) v = __int_as_float(0x7fc00000);
    else if (e == 0) v = (float)m * 0x1p-9f;
    else v = __uint_as_float(((e + 120u) << 23) | (m << 20));
    return (code & 0x80) ? -v : v;
}

/* Per-tensor scales (formats.c nvfp4_global_scales). */
AVD void avd_global_scales(float amax, float *s_enc, float *s_dec) {
    float enc = fminf(448.0f * 6.0f / amax, FLT_MAX);
    if (amax == 0.0f || enc == 0.0f || isnan(enc)) enc = 1.0f;
    *s_enc = enc;
    *s_dec = 1.0f / enc;
}

AVD uint32_t avd_block_scale(float bamax, float s_enc) { return avd_e4m3_encode(bamax * (s_enc * (1.0f / 6.0f))); }

AVD float avd_block_enc(uint32_t scale_code, float s_dec) {
    float s_dec_b = avd_e4m3_decode(scale_code);
    return fminf(__frcp_rn(s_dec_b * s_dec), FLT_MAX); /* the IEEE reciprocal: 1.0f / x */
}

/* Philox-4x32-10 (formats.c nvfp4_philox4x32_10). */
AVD void avd_philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1, uint32_t out[4]) {
#pragma unroll
    for (int round = 0; round < 10; round++) {
        uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* The 16 SR uniforms of the block at element index idx0 (internal.h
 * nvfp4_sr_u24_block): one Philox call per 4 elements. */
AVD void avd_sr_u24_block(uint64_t seed, uint64_t stream, uint64_t idx0, uint32_t u[16]) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
        uint64_t q = (idx0 >> 2) + (uint64_t)k;
        uint32_t out[4];
        avd_philox((uint32_t)q, (uint32_t)(q >> 32), (uint32_t)stream, (uint32_t)(stream >> 32), (uint32_t)seed,
                   (uint32_t)(seed >> 32), out);
#pragma unroll
        for (int j = 0; j < 4; j++) u[4 * k + j] = out[j] >> 8;
    }
}

/* The 16-point RHT (formats.c nvfp4_rht16_ref / _inv_ref), in registers. */
AVD float avd_rht_sign(int i) {
    /* s = [1,1,1,-1,1,-1,-1,-1,-1,-1,-1,1,-1,1,-1,-1] as a bit mask of the −1s */
    return ((0xD7E8u >> i) & 1u) ? -1.0f : 1.0f;
}

/* one butterfly level: the pairs (j, j+H) are disjoint, so their order is free */
template <int H> AVD void avd_bfly(float v[16]) {
#pragma unroll
    for (int j = 0; j < 16; j++)
        if ((j & H) == 0) {
            float a = v[j], b = v[j + H];
            v[j] = a + b;
            v[j + H] = a - b;
        }
}

AVD void avd_fwht16(float v[16]) {
    avd_bfly<1>(v);
    avd_bfly<2>(v);
    avd_bfly<4>(v);
    avd_bfly<8>(v);
}

AVD void avd_rht16(float v[16]) {
#pragma unroll
    for (int i = 0; i < 16; i++) v[i] = v[i] * avd_rht_sign(i);
    avd_fwht16(v);
#pragma unroll
    for (int i = 0; i < 16; i++) v[i] = 0.25f * v[i];
}

/* Σ_i of the inverse RHT's output per unit input k: ¼·Σ_i s_i·H16[i][k],
 * H16[i][k] = (−1)^popcount(i & k). Folds to a constant in unrolled loops. */
AVD float avd_rht_colsum(int k) {
    int acc = 0;
#pragma unroll
    for (int i = 0; i < 16; i++) acc += (((0xD7E8u >> i) & 1u) ? -1 : 1) * ((__popc(i & k) & 1) ? -1 : 1);
    return 0.25f * (float)acc;
}

AVD void avd_rht16_inv(float v[16]) {
    avd_fwht16(v);
#pragma unroll
    for (int i = 0; i < 16; i++) v[i] = (0.25f * v[i]) * avd_rht_sign(i);
}

#endif
