/* model_math.h — the model's private scalar helpers, shared by model.c and
 * moe.c. Not installed. */
#ifndef AVERIS_MODEL_MATH_H
#define AVERIS_MODEL_MATH_H

#include <stdint.h>
#include <stdlib.h>

/* e^x for x in [−87, 88] (clamped outside), relative error < 2e-7: x =
 * k·ln2 + r, |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial, 2^k by
 * exponent bits. Plain C, so loops over it vectorise (libm's expf does not). */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to nearest integer */
    float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666667e-2f + r * (8.3333333e-3f + r * 1.3888889e-3f)))));
    union { int32_t i; float f; } e = {.i = ((int32_t)k + 127) << 23};
    return p * e.f;
}

/* *buf holds at least `need` floats afterwards (regrown when *cap is
 * smaller; the contents are not kept): 0, or -1 with *buf NULL and *cap 0
 * when the allocation fails (the caller names what it was for). */
static inline int model_grow(float **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    free(*buf);
    *buf = malloc(need * sizeof(float));
    *cap = *buf ? need : 0;
    return *buf ? 0 : -1;
}

#endif
