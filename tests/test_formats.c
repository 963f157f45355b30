/* test_formats.c — codecs, scales, Philox, RHT, SR: exhaustive where the
 * domain is small, brute-force oracles elsewhere. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "averis/half.h"
#include "averis/nvfp4.h"
#include "averis/nvfp4_spec.h"
#include "check.h"

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Oracle: nearest finite E4M3 magnitude by brute force, ties to even code. */
static uint8_t e4m3_oracle(float x) {
    if (isnan(x)) return (uint8_t)((signbit(x) ? 0x80 : 0) | 0x7F);
    double a = fabs((double)x);
    int best = 0;
    double bestd = INFINITY;
    for (int c = 0; c <= 0x7E; c++) {
        double d = fabs((double)nvfp4_e4m3_decode((uint8_t)c) - a);
        if (d < bestd || (d == bestd && (c & 1) == 0)) { best = c; bestd = d; }
    }
    if (a > 448.0) best = 0x7E;
    return (uint8_t)((signbit(x) ? 0x80 : 0) | best);
}

static uint8_t e2m1_oracle(float x) {
    static const double mag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    if (isnan(x)) return 7;
    double a = fabs((double)x);
    int best = 0;
    double bestd = INFINITY;
    for (int i = 0; i < 8; i++) {
        double d = fabs(mag[i] - a);
        if (d < bestd || (d == bestd && (i & 1) == 0)) { best = i; bestd = d; }
    }
    return (uint8_t)((x < 0 ? 8 : 0) | best);
}

void test_e4m3_all_codes_roundtrip(void) {
    for (int c = 0; c < 256; c++) {
        float v = nvfp4_e4m3_decode((uint8_t)c);
        uint8_t back = nvfp4_e4m3_encode_ref(v);
        CHECK(back == c, "code 0x%02x decodes to %g, re-encodes to 0x%02x", c, (double)v, back);
    }
    CHECK(nvfp4_e4m3_decode(0x7E) == 448.0f, "max finite is 448");
    CHECK(nvfp4_e4m3_decode(0x01) == 0x1p-9f, "smallest subnormal 2^-9");
    CHECK(isnan(nvfp4_e4m3_decode(0x7F)) && isnan(nvfp4_e4m3_decode(0xFF)), "NaN codes");
}

void test_e4m3_rounding_binade_boundaries(void) {
    /* every midpoint between adjacent codes, and its float neighbours */
    for (int c = 0; c < 0x7E; c++) {
        float lo = nvfp4_e4m3_decode((uint8_t)c), hi = nvfp4_e4m3_decode((uint8_t)(c + 1));
        float mid = (lo + hi) * 0.5f; /* exact: both have ≤ 4 significant bits */
        uint8_t even = (c & 1) ? (uint8_t)(c + 1) : (uint8_t)c;
        CHECK(nvfp4_e4m3_encode_ref(mid) == even, "tie %g between 0x%02x and 0x%02x -> 0x%02x", (double)mid, c,
              c + 1, nvfp4_e4m3_encode_ref(mid));
        CHECK(nvfp4_e4m3_encode_ref(nextafterf(mid, 0)) == c, "below tie %g", (double)mid);
        CHECK(nvfp4_e4m3_encode_ref(nextafterf(mid, INFINITY)) == c + 1, "above tie %g", (double)mid);
        CHECK(nvfp4_e4m3_encode_ref(-mid) == (even | 0x80), "negative tie %g", (double)mid);
    }
    /* satfinite */
    const float big[] = {448.0f, 449.0f, 464.0f, 480.0f, 1e30f, INFINITY};
    for (int i = 0; i < 6; i++) {
        CHECK(nvfp4_e4m3_encode_ref(big[i]) == 0x7E, "%g saturates to 448", (double)big[i]);
        CHECK(nvfp4_e4m3_encode_ref(-big[i]) == 0xFE, "-%g saturates to -448", (double)big[i]);
    }
    CHECK(nvfp4_e4m3_encode_ref(0x1p-10f) == 0x00, "2^-10 ties to 0");
    CHECK(nvfp4_e4m3_encode_ref(nextafterf(0x1p-10f, 1)) == 0x01, "just above 2^-10 -> 2^-9");
    CHECK(nvfp4_e4m3_encode_ref(1e-30f) == 0 && nvfp4_e4m3_encode_ref(0x1p-149f) == 0, "underflow to 0");
    CHECK((nvfp4_e4m3_encode_ref(NAN) & 0x7F) == 0x7F, "NaN -> NaN code");
}

void test_e4m3_random_vs_oracle(void) {
    trng r = {0x1234567};
    for (int i = 0; i < 200000; i++) {
        float x = bitsf((uint32_t)trng_u64(&r));
        if (isnan(x)) continue;
        if (i & 1) x = ldexpf(trng_uniform(&r) + 0.5f, (int)(trng_u64(&r) % 24) - 14);
        uint8_t got = nvfp4_e4m3_encode_ref(x), want = e4m3_oracle(x);
        CHECK(got == want, "e4m3(%a) = 0x%02x, oracle 0x%02x", (double)x, got, want);
    }
}

void test_e2m1_codes_and_ties(void) {
    for (int c = 0; c < 16; c++) {
        float v = nvfp4_e2m1_decode((uint8_t)c);
        uint8_t back = nvfp4_e2m1_encode_ref(v);
        /* code 8 is -0.0, which encodes as code 0 by the contract */
        CHECK(back == (c == 8 ? 0 : c), "code %d -> %g -> %d", c, (double)v, back);
    }
    const float tie_in[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    const float tie_out[] = {0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f};
    for (int i = 0; i < 7; i++) {
        CHECK(nvfp4_e2m1_decode(nvfp4_e2m1_encode_ref(tie_in[i])) == tie_out[i], "tie %g -> %g", (double)tie_in[i],
              (double)tie_out[i]);
        CHECK(nvfp4_e2m1_decode(nvfp4_e2m1_encode_ref(-tie_in[i])) == -tie_out[i], "tie -%g", (double)tie_in[i]);
    }
    CHECK(nvfp4_e2m1_encode_ref(5.0001f) == 7 && nvfp4_e2m1_encode_ref(1e30f) == 7, ">5 -> 6");
    CHECK(nvfp4_e2m1_encode_ref(INFINITY) == 7 && nvfp4_e2m1_encode_ref(-INFINITY) == 15, "inf saturates");
    CHECK(nvfp4_e2m1_encode_ref(-0.0f) == 0, "-0.0 encodes as code 0");
    CHECK(nvfp4_e2m1_encode_ref(-0.1f) == 8, "negative value rounding to zero keeps its sign");
    CHECK(nvfp4_e2m1_encode_ref(NAN) == 7, "NaN -> code 7 (documented)");
    trng r = {99};
    for (int i = 0; i < 100000; i++) {
        float x = (trng_uniform(&r) - 0.5f) * 16.0f;
        CHECK(nvfp4_e2m1_encode_ref(x) == e2m1_oracle(x), "e2m1(%a)", (double)x);
    }
}

void test_bf16_rne(void) {
    CHECK(bf16_from_f32(1.0f) == 0x3F80, "1.0");
    CHECK(bf16_from_f32(bitsf(0x3F808000)) == 0x3F80, "tie to even (down)");
    CHECK(bf16_from_f32(bitsf(0x3F818000)) == 0x3F82, "tie to even (up)");
    CHECK(bf16_from_f32(bitsf(0x3F808001)) == 0x3F81, "above tie");
    CHECK(bf16_from_f32(bitsf(0x7F7FFFFF)) == 0x7F80, "FLT_MAX rounds to inf");
    CHECK((bf16_from_f32(NAN) & 0x7FC0) == 0x7FC0, "NaN stays quiet NaN");
    trng r = {7};
    for (int i = 0; i < 100000; i++) {
        float x = bitsf((uint32_t)trng_u64(&r));
        if (!isfinite(x)) continue;
        uint16_t b = bf16_from_f32(x);
        float y = bf16_to_f32(b);
        /* oracle: y is the nearer of the two bf16 neighbours, ties even */
        uint32_t lo = fbits(x) & 0xFFFF0000u;
        float a = bitsf(lo), c = bitsf(lo + 0x10000u);
        /* past the largest finite bf16 the upper neighbour is ±2^128 (→ inf) */
        double cd = isinf(c) ? copysign(0x1p128, (double)x) : (double)c;
        double da = fabs((double)x - a), dc = fabs((double)x - cd);
        float want = da < dc ? a : dc < da ? c : (((lo >> 16) & 1) ? c : a);
        CHECK(fbits(y) == fbits(want), "bf16(%a) = %a, want %a", (double)x, (double)y, (double)want);
    }
}

void test_f16_decode(void) {
    CHECK(f16_to_f32(0x3C00) == 1.0f, "1.0");
    CHECK(f16_to_f32(0x0001) == 0x1p-24f, "smallest subnormal");
    CHECK(f16_to_f32(0x7BFF) == 65504.0f, "max");
    CHECK(f16_to_f32(0xC000) == -2.0f, "-2");
    CHECK(isinf(f16_to_f32(0x7C00)) && f16_to_f32(0xFC00) < 0, "inf");
    CHECK(isnan(f16_to_f32(0x7E00)), "NaN");
    CHECK(signbit(f16_to_f32(0x8000)), "-0");
}

void test_global_scales(void) {
    float e, d;
    nvfp4_global_scales(0.0f, &e, &d);
    CHECK(e == 1.0f && d == 1.0f, "amax 0 -> S_enc 1");
    nvfp4_global_scales(INFINITY, &e, &d);
    CHECK(e == 1.0f, "amax inf -> S_enc 1");
    nvfp4_global_scales(1e-44f, &e, &d);
    CHECK(e == FLT_MAX, "tiny amax -> S_enc FLT_MAX, got %g", (double)e);
    nvfp4_global_scales(2688.0f, &e, &d);
    CHECK(e == 1.0f && d == 1.0f, "amax 2688 -> 1");
    /* the block whose amax is the tensor amax gets scale 448, elements reach 6 */
    nvfp4_global_scales(3.0f, &e, &d);
    uint8_t s = nvfp4_block_scale_ref(3.0f, e);
    CHECK(s == 0x7E, "max block scale is 448, got 0x%02x", s);
    CHECK(nvfp4_e2m1_encode_ref(3.0f * nvfp4_block_enc(s, d)) == 7, "max element encodes as 6");
}

void test_philox_known_answers(void) {
    /* Known-answer vectors of Philox-4x32-10 (Salmon et al., Random123). */
    const uint32_t ctr[3][4] = {{0, 0, 0, 0}, {~0u, ~0u, ~0u, ~0u}, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}};
    const uint32_t key[3][2] = {{0, 0}, {~0u, ~0u}, {0xa4093822, 0x299f31d0}};
    const uint32_t want[3][4] = {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
                                 {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
                                 {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
    for (int t = 0; t < 3; t++) {
        uint32_t out[4];
        nvfp4_philox4x32_10(ctr[t], key[t], out);
        for (int i = 0; i < 4; i++) CHECK(out[i] == want[t][i], "vector %d word %d: %08x != %08x", t, i, out[i], want[t][i]);
    }
}

/* The spec's sign mask is NVFP4.md's s (the public array is built from it),
 * and a block's 16 SR uniforms are the per-element ones, 64-bit counters included. */
void test_spec_signs_and_sr_block(void) {
    const float s_md[16] = {1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1};
    for (int i = 0; i < 16; i++) {
        CHECK(nvfp4_spec_rht_sign(i) == s_md[i], "spec sign %d: %g, NVFP4.md %g", i, (double)nvfp4_spec_rht_sign(i),
              (double)s_md[i]);
        CHECK(nvfp4_rht_signs[i] == s_md[i], "nvfp4_rht_signs[%d]: %g, NVFP4.md %g", i, (double)nvfp4_rht_signs[i],
              (double)s_md[i]);
    }
    trng r = {11};
    for (int t = 0; t < 200; t++) {
        uint64_t seed = trng_u64(&r), stream = trng_u64(&r), idx0 = (trng_u64(&r) >> (t % 64)) & ~(uint64_t)3;
        uint32_t u[16];
        nvfp4_spec_sr_u24_block(seed, stream, idx0, u);
        for (int j = 0; j < 16; j++) {
            uint32_t want = nvfp4_sr_u24(seed, stream, idx0 + (uint64_t)j);
            CHECK(u[j] == want && u[j] < (1u << 24), "block uniform %d at idx0 %llu: %u, element's %u", j,
                  (unsigned long long)idx0, u[j], want);
        }
    }
}

void test_rht_orthogonal(void) {
    double H[16][16];
    for (int i = 0; i < 16; i++) {
        float e[16] = {0}, y[16];
        e[i] = 1.0f;
        nvfp4_rht16_ref(e, y); /* row i of H */
        for (int j = 0; j < 16; j++) {
            H[i][j] = y[j];
            double want = nvfp4_rht_signs[i] * ((__builtin_popcount((unsigned)(i & j)) & 1) ? -1.0 : 1.0) / 4.0;
            CHECK(y[j] == want, "H[%d][%d] = %g, want %g", i, j, (double)y[j], want);
        }
    }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            double s = 0;
            for (int k = 0; k < 16; k++) s += H[i][k] * H[j][k];
            CHECK(fabs(s - (i == j)) < 1e-12, "H·Hᵀ[%d][%d] = %g", i, j, s);
        }
    trng r = {3};
    for (int t = 0; t < 1000; t++) {
        float g[16], y[16], back[16];
        for (int i = 0; i < 16; i++) g[i] = trng_normal(&r);
        nvfp4_rht16_ref(g, y);
        nvfp4_rht16_inv_ref(y, back);
        double n0 = 0, n1 = 0;
        for (int i = 0; i < 16; i++) {
            CHECK(fabsf(back[i] - g[i]) <= 4e-7f * (1 + fabsf(g[i])) * 4, "inverse(forward) at %d", i);
            n0 += (double)g[i] * g[i];
            n1 += (double)y[i] * y[i];
        }
        CHECK(fabs(n0 - n1) <= 1e-5 * n0, "norm preserved: %g vs %g", n0, n1);
    }
}

void test_sr_unbiased_codec(void) {
    /* E[decode(sr(x))] = x within 4 standard errors, for x across the range */
    const float xs[] = {0.1f, 0.3f, 0.6f, 1.1f, 1.3f, 1.9f, 2.7f, 3.3f, 4.5f, 5.9f, -0.2f, -2.2f, -5.5f};
    const int n = 20000;
    for (int k = 0; k < 13; k++) {
        double s = 0, s2 = 0;
        for (int i = 0; i < n; i++) {
            float q = nvfp4_e2m1_decode(nvfp4_e2m1_encode_sr_ref(xs[k], nvfp4_sr_u24(42, (uint64_t)k, (uint64_t)i)));
            s += q;
            s2 += (double)q * q;
        }
        double mean = s / n, var = s2 / n - mean * mean, se = sqrt(var / n);
        CHECK(fabs(mean - xs[k]) <= 4 * se + 1e-12, "SR mean of %g = %g (se %g)", (double)xs[k], mean, se);
        /* only the two neighbours ever appear: the spread is bounded */
        CHECK(var <= 1.0 + 1e-9, "SR variance of %g = %g", (double)xs[k], var);
    }
    for (int i = 0; i < 8; i++) { /* representable values never move */
        float v = nvfp4_e2m1_decode((uint8_t)i);
        for (uint32_t u = 0; u < (1u << 24); u += 99991)
            CHECK(nvfp4_e2m1_decode(nvfp4_e2m1_encode_sr_ref(v, u)) == v, "SR moved exact %g", (double)v);
    }
    CHECK(nvfp4_e2m1_encode_sr_ref(7.0f, 0) == 7 && nvfp4_e2m1_encode_sr_ref(NAN, 0) == 7, "SR saturates, NaN -> 7");
}
