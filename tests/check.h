/* check.h — a tiny test harness: a test is a function; it fails if any
 * CHECK in it fails; failures name what differed. */
#ifndef AVERIS_CHECK_H
#define AVERIS_CHECK_H
#include <stdio.h>

extern int g_check_failed; /* failures in the running test */

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            if (g_check_failed < 20) {                                     \
                fprintf(stderr, "  FAIL %s:%d: ", __FILE__, __LINE__);     \
                fprintf(stderr, __VA_ARGS__);                              \
                fputc('\n', stderr);                                       \
            }                                                              \
            g_check_failed++;                                              \
        }                                                                  \
    } while (0)

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

/* xorshift-based deterministic random numbers for test inputs. */
typedef struct { unsigned long long s; } trng;
static inline unsigned long long trng_u64(trng *r) {
    r->s ^= r->s << 13; r->s ^= r->s >> 7; r->s ^= r->s << 17;
    return r->s;
}
static inline float trng_uniform(trng *r) { return (float)(trng_u64(r) >> 40) * 0x1p-24f; }
float trng_normal(trng *r);
/* Fills x[n] with one of the adversarial patterns (0..TEST_NPATTERNS-1). */
#define TEST_NPATTERNS 9
void test_fill_pattern(float *x, long n, long cols, int pattern, trng *r);
#endif
