/* averis/half.h — the 16-bit float codecs the loaders and the BF16 recipe
 * use (not NVFP4): BF16 ↔ fp32 and IEEE binary16 → fp32, written once for
 * the CPU and the GPU (averis/hd.h).
 *
 * BF16: the top 16 bits of an fp32:
 *
 *     bit 15  14 ....... 7   6 ..... 0
 *        [s | e (8 bits)  | m (7 bits)]
 */
#ifndef AVERIS_HALF_H
#define AVERIS_HALF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "averis/hd.h"

typedef struct { uint16_t bits; } bf16;
#ifdef __cplusplus
static_assert(sizeof(bf16) == 2, "BF16 is two bytes");
#else
_Static_assert(sizeof(bf16) == 2, "BF16 is two bytes");
#endif

/* BF16: round to nearest even; NaN stays a quiet NaN with its sign. */
AVERIS_HD uint16_t bf16_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

AVERIS_HD float bf16_to_f32(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE binary16 → fp32 (exact, subnormals, inf, NaN). */
AVERIS_HD float f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
}

#endif
