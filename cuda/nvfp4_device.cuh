/* nvfp4_device.cuh — the GPU's fast NVFP4 codecs beside the spec: the
 * E2M1 encoders and decoders from the fp32 bits, the hardware E4M3
 * conversion and a bit-built E4M3 decode, each tested in test_cuda against
 * the one spec, averis/nvfp4_spec.h, which the kernels call for everything
 * else (scales, Philox SR, the RHT).
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

#include "averis/nvfp4_spec.h"

#define AVD __device__ __forceinline__

/* E2M1 magnitude index, round to nearest even, from the fp32 bits (the
 * quantize kernels are instruction-bound): below 1 the grid is 0, ½, 1, so
 * rintf(2a) rounds to nearest even; from 1 on E2M1 is a float with one mantissa bit, so rounding the fp32
 * mantissa to its top bit (ties to even) and reading exponent and that bit
 * gives the index; 8 and beyond (a > 5 rounds up past 6, +inf, NaN) clamp
 * to 7. test_cuda checks it against the spec's ladder on every fp32 value. */
AVD uint32_t avd_e2m1_idx_rn(float a) {
    if (a < 1.0f) return (uint32_t)rintf(a + a);
    uint32_t b = __float_as_uint(a);
    b += 0x1FFFFFu + ((b >> 22) & 1u);
    uint32_t idx = 2u + 2u * ((b >> 23) - 127u) + ((b >> 22) & 1u);
    return idx < 7u ? idx : 7u;
}

AVD uint32_t avd_e2m1_rn(float x) { return (x < 0.0f ? 8u : 0u) | avd_e2m1_idx_rn(fabsf(x)); }

/* the magnitude from the index's bits: from 2 on, exponent idx/2 − 1 and
 * mantissa bit idx & 1 */
AVD float avd_e2m1_mag(uint32_t idx) {
    return idx < 2 ? (float)idx * 0.5f : __uint_as_float((((idx >> 1) + 126u) << 23) | ((idx & 1u) << 22));
}

AVD float avd_e2m1_decode(uint32_t code) {
    float m = avd_e2m1_mag(code & 7);
    return (code & 8) ? -m : m;
}

/* E2M1 round to nearest even and back to the value: avd_e2m1_decode(avd_e2m1_rn(x))
 * without branches (below 1 the grid is 0, ½, 1: rintf(2a)/2; from 1 on the fp32
 * mantissa rounded to its top bit, ties to even; from 6 on (+inf, NaN) 6;
 * the sign of x < 0, as avd_e2m1_rn). test_cuda checks it on every fp32 value. */
AVD float avd_e2m1_rn_value(float x) {
    const float a = fabsf(x);
    const float lo = rintf(a + a) * 0.5f;
    uint32_t b = __float_as_uint(a);
    b += 0x1FFFFFu + ((b >> 22) & 1u);
    const float hi = a < 6.0f ? __uint_as_float(b & 0xFFC00000u) : 6.0f; /* NaN too */
    const float q = a < 1.0f ? lo : hi;
    return x < 0.0f ? -q : q;
}

/* E2M1 stochastic rounding (nvfp4_spec_e2m1_sr) from the bits: from 1 on,
 * lo and mag(lo) are a's exponent and mantissa truncated to one bit, and
 * hi − lo = 2^(e−1), whose inverse makes the multiply the spec's exact
 * quotient; so the same bits (tested on device) */
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

/* E4M3 round to nearest even, satfinite: the hardware conversion
 * (cvt.rn.satfinite.e4m3x2.f32, sm_89+), which test_cuda checks against
 * the CPU over the adversarial corpus; the spec's software encoder below sm_89. */
AVD uint32_t avd_e4m3_encode(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    return (uint32_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
#else
    return nvfp4_spec_e4m3_rn(x);
#endif
}

/* nvfp4_spec_e4m3_decode, exact: subnormals m·2^-9, normals built from their bits */
AVD float avd_e4m3_decode(uint32_t code) {
    uint32_t e = (code >> 3) & 0xF, m = code & 7;
    float v;
    if (e == 0xF && m == 7) v = __int_as_float(0x7fc00000);
    else if (e == 0) v = (float)m * 0x1p-9f;
    else v = __uint_as_float(((e + 120u) << 23) | (m << 20));
    return (code & 0x80) ? -v : v;
}

/* One block's scale and encode factor (nvfp4_spec_block_scale/_enc) with
 * the fast E4M3 codecs above. */
AVD uint32_t avd_block_scale(float bamax, float s_enc) {
    return avd_e4m3_encode(nvfp4_spec_block_scale_f32(bamax, s_enc));
}
AVD float avd_block_enc(uint32_t scale_code, float s_dec) {
    return nvfp4_spec_enc_factor(avd_e4m3_decode(scale_code), s_dec);
}

/* Σ_i of the inverse RHT's output per unit input k: ¼·Σ_i s_i·H16[i][k],
 * H16[i][k] = (−1)^popcount(i & k). Folds to a constant in unrolled loops. */
AVD float avd_rht_colsum(int k) {
    int acc = 0;
#pragma unroll
    for (int i = 0; i < 16; i++) acc += (((NVFP4_RHT_SIGN_MASK >> i) & 1u) ? -1 : 1) * ((__popc(i & k) & 1) ? -1 : 1);
    return 0.25f * (float)acc;
}

#endif
