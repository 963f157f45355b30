/* test_patterns.c — the adversarial input corpus, shared by the CPU suite,
 * the CUDA device test (tests/cuda/test_cuda.cu) and the kernel lab
 * (dev/cuda/quant_lab.cu). */
#include <math.h>

#include "check.h"

float trng_normal(trng *r) {
    float u1 = trng_uniform(r), u2 = trng_uniform(r);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* Adversarial inputs: 0 normal, 1 mean-biased, 2 zeros, 3 E2M1 ties at the
 * block scale, 4 subnormals, 5 huge dynamic range, 6 exact 6·scale maxima,
 * 7 NaN/±Inf sprinkled, 8 tiny amax (S_enc overflows). */
void test_fill_pattern(float *x, long n, long cols, int pattern, trng *r) {
    static const float ties[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f};
    for (long i = 0; i < n; i++) {
        float v = trng_normal(r);
        switch (pattern) {
        case 0: break;
        case 1: v = 0.05f * v + ((i % cols) % 7 == 0 ? 8.0f : 0.5f); break;
        case 2: v = (i % 5 == 0) ? v : 0.0f; break;
        case 3: v = ties[trng_u64(r) % 8] * ((trng_u64(r) & 1) ? -1.0f : 1.0f); break;
        case 4: v = v * 1e-39f; break;
        case 5: v = v * powf(10.0f, (float)((long)(trng_u64(r) % 60) - 30)); break;
        case 6: v = ((i % 16) == 0) ? 6.0f : (float)((long)(trng_u64(r) % 13) - 6) * 0.5f; break;
        case 7: {
            unsigned k = (unsigned)(trng_u64(r) % 64);
            v = k == 0 ? NAN : k == 1 ? INFINITY : k == 2 ? -INFINITY : v;
            break;
        }
        case 8: v = v * 1e-44f; break;
        }
        x[i] = v;
    }
}
