/* formats.c — the public scalar codecs of averis/nvfp4.h (E2M1, E4M3, the
 * NVFP4 global/block scale arithmetic, Philox-4x32-10 and the 16-point
 * RHT): thin wrappers over the spec in averis/nvfp4_spec.h, which the GPU
 * compiles too. */
#include "averis/nvfp4.h"
#include "averis/nvfp4_spec.h"

#include <float.h>
#include <string.h>

_Static_assert(sizeof(nvfp4_e4m3) == 1, "E4M3 scale is one byte");
_Static_assert(sizeof(nvfp4_block16) == 8, "16 E2M1 codes pack into 8 bytes");
_Static_assert(sizeof(float) == 4 && FLT_MANT_DIG == 24, "IEEE binary32 required");

uint8_t nvfp4_e2m1_encode_ref(float x) { return (uint8_t)nvfp4_spec_e2m1_rn(x); }
float nvfp4_e2m1_decode(uint8_t code) { return nvfp4_spec_e2m1_decode(code); }
uint8_t nvfp4_e2m1_encode_sr_ref(float x, uint32_t u24) { return (uint8_t)nvfp4_spec_e2m1_sr(x, u24); }

uint8_t nvfp4_e4m3_encode_ref(float x) { return (uint8_t)nvfp4_spec_e4m3_rn(x); }
float nvfp4_e4m3_decode(uint8_t code) { return nvfp4_spec_e4m3_decode(code); }

void nvfp4_global_scales(float amax, float *s_enc, float *s_dec) { nvfp4_spec_global_scales(amax, s_enc, s_dec); }
uint8_t nvfp4_block_scale_ref(float bamax, float s_enc) { return (uint8_t)nvfp4_spec_block_scale(bamax, s_enc); }
float nvfp4_block_enc(uint8_t scale_code, float s_dec) { return nvfp4_spec_block_enc(scale_code, s_dec); }

void nvfp4_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    nvfp4_spec_philox4x32_10(ctr, key, out);
}
uint32_t nvfp4_sr_u24(uint64_t seed, uint64_t stream, uint64_t index) {
    return nvfp4_spec_sr_u24(seed, stream, index);
}

/* the SIMD kernels load the signs as a vector: the spec's mask, spelled out */
#define S(i) (((NVFP4_RHT_SIGN_MASK >> (i)) & 1u) ? -1.0f : 1.0f)
const float nvfp4_rht_signs[16] = {S(0), S(1), S(2),  S(3),  S(4),  S(5),  S(6),  S(7),
                                   S(8), S(9), S(10), S(11), S(12), S(13), S(14), S(15)};
#undef S

/* g and y may alias (the row transforms work in place) */
void nvfp4_rht16_ref(const float *g, float *y) {
    float v[16];
    memcpy(v, g, sizeof v);
    nvfp4_spec_rht16(v);
    memcpy(y, v, sizeof v);
}

void nvfp4_rht16_inv_ref(const float *y, float *g) {
    float v[16];
    memcpy(v, y, sizeof v);
    nvfp4_spec_rht16_inv(v);
    memcpy(g, v, sizeof v);
}
