/* formats.c — scalar codecs (the spec): E2M1, E4M3, BF16, FP16, the NVFP4
 * global/block scale arithmetic, Philox-4x32-10 and the 16-point RHT. */
#include "averis/nvfp4.h"
#include "internal.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

_Static_assert(sizeof(nvfp4_e4m3) == 1, "E4M3 scale is one byte");
_Static_assert(sizeof(nvfp4_bf16) == 2, "BF16 is two bytes");
_Static_assert(sizeof(nvfp4_block16) == 8, "16 E2M1 codes pack into 8 bytes");
_Static_assert(sizeof(float) == 4 && FLT_MANT_DIG == 24, "IEEE binary32 required");

/* ------------------------------------------------------------ errors */
static _Thread_local char g_err[256];

const char *averis_last_error(void) { return g_err; }

averis_status averis_fail(averis_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}

/* -------------------------------------------------------------- E2M1 */
static const float k_e2m1_mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

/* Magnitude index by round-to-nearest-even; thresholds are the midpoints,
 * inclusive where the lower neighbour has the even mantissa (0, 1, 2, 4). */
static inline uint8_t e2m1_idx_rn(float a) {
    if (a <= 0.25f) return 0;
    if (a < 0.75f) return 1;
    if (a <= 1.25f) return 2;
    if (a < 1.75f) return 3;
    if (a <= 2.5f) return 4;
    if (a < 3.5f) return 5;
    if (a <= 5.0f) return 6;
    return 7; /* > 5, +inf, and NaN (every comparison above is false) */
}

uint8_t nvfp4_e2m1_encode_ref(float x) {
    uint8_t sign = (x < 0.0f) ? 8 : 0;
    return (uint8_t)(sign | e2m1_idx_rn(fabsf(x)));
}

float nvfp4_e2m1_decode(uint8_t code) {
    float m = k_e2m1_mag[code & 7];
    return (code & 8) ? -m : m;
}

uint8_t nvfp4_e2m1_encode_sr_ref(float x, uint32_t u24) {
    if (isnan(x)) return 7;
    uint8_t sign = (x < 0.0f) ? 8 : 0;
    float a = fabsf(x);
    if (a >= 6.0f) return sign | 7;
    uint8_t lo = 0; /* largest magnitude index with mag <= a */
    while (lo < 7 && k_e2m1_mag[lo + 1] <= a) lo++;
    /* a − lo is exact (Sterbenz, or lo == 0) and hi − lo is a power of two,
     * so frac is the exact fractional position. */
    float frac = (a - k_e2m1_mag[lo]) / (k_e2m1_mag[lo + 1] - k_e2m1_mag[lo]);
    uint8_t idx = ((float)u24 * 0x1p-24f < frac) ? (uint8_t)(lo + 1) : lo;
    return sign | idx;
}

/* -------------------------------------------------------------- E4M3 */
uint8_t nvfp4_e4m3_encode_ref(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    if (isnan(x)) return sign | 0x7F;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7E; /* satfinite, incl. inf */
    int e;
    (void)frexpf(a, &e);       /* a = f·2^e, f in [0.5, 1) */
    int E = e - 1;             /* floor(log2 a) */
    if (a == 0.0f || E < -6) E = -6; /* subnormal range: quantum 2^-9 */
    float quantum = ldexpf(1.0f, E - 3);
    float v = rintf(a / quantum) * quantum; /* exact scaling, RNE */
    if (v > 448.0f) v = 448.0f;
    if (v == 0.0f) return sign;
    (void)frexpf(v, &e);
    E = e - 1;
    if (E < -6) return sign | (uint8_t)(v * 512.0f); /* subnormal: m·2^-9 */
    int m = (int)(v / ldexpf(1.0f, E - 3)) - 8;    /* 8..15 → 0..7 */
    return sign | (uint8_t)(((E + 7) << 3) | m);
}

float nvfp4_e4m3_decode(uint8_t code) {
    int e = (code >> 3) & 0xF, m = code & 7;
    float v;
    if (e == 0xF && m == 7) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);
    else v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return (code & 0x80) ? -v : v;
}

/* -------------------------------------------------------- BF16, FP16 */
uint16_t nvfp4_bf16_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float nvfp4_bf16_to_f32(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float nvfp4_f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
}

/* ---------------------------------------------------- NVFP4 scaling */
void nvfp4_global_scales(float amax, float *s_enc, float *s_dec) {
    float enc = fminf(448.0f * 6.0f / amax, FLT_MAX);
    if (amax == 0.0f || enc == 0.0f || isnan(enc)) enc = 1.0f;
    *s_enc = enc;
    *s_dec = 1.0f / enc;
}

uint8_t nvfp4_block_scale_ref(float bamax, float s_enc) {
    return nvfp4_e4m3_encode_ref(bamax * (s_enc * (1.0f / 6.0f)));
}

float nvfp4_block_enc(uint8_t scale_code, float s_dec) {
    float s_dec_b = nvfp4_e4m3_decode(scale_code);
    return fminf(1.0f / (s_dec_b * s_dec), FLT_MAX);
}

/* ------------------------------------------------------ Philox-4x32-10 */
void nvfp4_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

uint32_t nvfp4_sr_u24(uint64_t seed, uint64_t stream, uint64_t index) {
    uint64_t q = index >> 2;
    uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t out[4];
    nvfp4_philox4x32_10(ctr, key, out);
    return out[index & 3] >> 8;
}

/* ---------------------------------------------------------------- RHT */
const float nvfp4_rht_signs[16] = {1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1};

static void fwht16(float *v) {
    for (int h = 1; h < 16; h <<= 1)
        for (int i = 0; i < 16; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
}

void nvfp4_rht16_ref(const float *g, float *y) {
    float v[16];
    for (int i = 0; i < 16; i++) v[i] = g[i] * nvfp4_rht_signs[i];
    fwht16(v);
    for (int i = 0; i < 16; i++) y[i] = 0.25f * v[i];
}

void nvfp4_rht16_inv_ref(const float *y, float *g) {
    float v[16];
    for (int i = 0; i < 16; i++) v[i] = y[i];
    fwht16(v);
    for (int i = 0; i < 16; i++) g[i] = (0.25f * v[i]) * nvfp4_rht_signs[i];
}
