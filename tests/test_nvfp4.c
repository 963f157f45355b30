/* test_nvfp4.c — the tensor quantizer: edge cases, layouts, the 16×16
 * transpose property, the mean split, and every fast path == the scalar spec. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "averis/half.h"
#include "averis/nvfp4.h"
#include "check.h"
#include "internal.h"

static float deq1(const nvfp4_tensor *t, const float *buf, int64_t r, int64_t c) { (void)t; return buf[r * t->cols + c]; }

static int quant_ref(const float *x, int64_t rows, int64_t cols, nvfp4_opts *o, nvfp4_tensor *t, nvfp4_stats *st) {
    if (nvfp4_tensor_alloc(t, rows, cols, o->block)) return 0;
    return nvfp4_quantize_ref(x, NVFP4_F32, rows, cols, cols, o, t, st) == AVERIS_OK;
}

void test_zero_block_and_tensor(void) {
    float x[2 * 32] = {0};
    for (int i = 16; i < 32; i++) x[i] = (float)(i - 20); /* row 0: block 0 zeros, block 1 data */
    nvfp4_opts o = nvfp4_opts_default();
    nvfp4_tensor t;
    CHECK(quant_ref(x, 2, 32, &o, &t, NULL), "quantize");
    CHECK(t.scales[0] == 0, "zero block has scale 0 (no lower clamp), got 0x%02x", t.scales[0]);
    for (int i = 0; i < 8; i++) CHECK(t.codes[i] == 0, "zero block codes are 0");
    CHECK(t.scales[2] == 0 && t.scales[3] == 0, "all-zero row");
    nvfp4_tensor_free(&t);
    float z[16 * 16] = {0};
    CHECK(quant_ref(z, 16, 16, &o, &t, NULL), "quantize zeros");
    CHECK(t.amax == 0.0f, "all-zero tensor amax 0");
    float out[256];
    nvfp4_dequantize(&t, 0, out);
    for (int i = 0; i < 256; i++) CHECK(out[i] == 0.0f, "zeros dequantize to 0");
    nvfp4_tensor_free(&t);
}

void test_exact_block_max_and_huge_element(void) {
    /* each block's max is exactly 6·scale: no saturation, max encodes as 6 */
    float x[64];
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 16; i++) x[16 * b + i] = (i == 3) ? 6.0f * (float)(1 << b) : 0.5f * (float)(1 << b) * (float)(i % 5);
    nvfp4_opts o = nvfp4_opts_default();
    nvfp4_tensor t;
    nvfp4_stats st;
    CHECK(quant_ref(x, 1, 64, &o, &t, &st), "quantize");
    float y[64];
    nvfp4_dequantize(&t, 0, y);
    CHECK(st.n_sat_blocks == 0, "no saturated block, got %lld", (long long)st.n_sat_blocks);
    for (int b = 0; b < 4; b++) {
        CHECK(((t.codes[8 * b + 1] >> 4) & 0xF) == 7, "block %d max encodes as code 7 (6.0)", b);
        /* S_dec = 1/S_enc is rounded, so x̂ = 6·s·S_dec is within an ulp or two */
        CHECK(fabsf(y[16 * b + 3] - x[16 * b + 3]) <= 0x1p-22f * x[16 * b + 3], "block max %a vs %a",
              (double)x[16 * b + 3], (double)y[16 * b + 3]);
    }
    nvfp4_tensor_free(&t);
    /* one huge element: its block keeps it; other blocks flush */
    float h[32];
    for (int i = 0; i < 32; i++) h[i] = 1.0f;
    h[5] = 1e30f;
    CHECK(quant_ref(h, 1, 32, &o, &t, &st), "quantize");
    nvfp4_dequantize(&t, 0, y);
    CHECK(fabsf(y[5] - 1e30f) <= 1e30f * 0.07f, "huge element kept: %g", (double)y[5]);
    CHECK(y[0] == 0.0f && y[16] == 0.0f, "its neighbours flush to 0");
    /* block 1's E4M3 scale underflows to 0: its codes saturate (enc = FLT_MAX)
     * but it dequantizes to 0, so it counts as flushed, not saturated */
    CHECK(t.scales[1] == 0, "block 1 scale underflows to 0");
    CHECK(st.n_flushed == 31, "31 flushed, got %lld", (long long)st.n_flushed);
    CHECK(st.n_sat_blocks == 0, "no saturated block, got %lld", (long long)st.n_sat_blocks);
    nvfp4_tensor_free(&t);
}

void test_subnormal_and_tiny_amax(void) {
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = (float)(i - 16) * 0x1p-140f; /* denormals */
    nvfp4_opts o = nvfp4_opts_default();
    nvfp4_tensor t;
    nvfp4_stats st;
    CHECK(quant_ref(x, 1, 32, &o, &t, &st), "quantize");
    float s_enc, s_dec;
    nvfp4_global_scales(t.amax, &s_enc, &s_dec);
    CHECK(s_enc == FLT_MAX, "S_enc clamps to FLT_MAX for denormal amax");
    float y[32];
    nvfp4_dequantize(&t, 0, y);
    for (int i = 0; i < 32; i++) CHECK(isfinite(y[i]), "finite output at %d", i);
    /* S_enc clamped: every block scale underflows, the tensor flushes to 0 */
    CHECK(y[0] == 0.0f && st.n_flushed == 31, "denormal tensor flushes (%lld)", (long long)st.n_flushed);
    nvfp4_tensor_free(&t);
    /* amax 1e-35: S_enc = 2688/amax still finite, so the block max survives */
    for (int i = 0; i < 32; i++) x[i] = (float)(i - 16) * 1e-36f;
    x[0] = -1e-35f;
    CHECK(quant_ref(x, 1, 32, &o, &t, &st), "quantize");
    nvfp4_global_scales(t.amax, &s_enc, &s_dec);
    CHECK(s_enc < FLT_MAX, "S_enc finite");
    nvfp4_dequantize(&t, 0, y);
    CHECK(fabsf(y[0] - x[0]) <= 1e-6f * fabsf(x[0]), "tiny block max survives: %a vs %a", (double)y[0], (double)x[0]);
    nvfp4_tensor_free(&t);
}

void test_nonfinite_inputs(void) {
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = 1.0f;
    x[2] = NAN;
    x[20] = INFINITY;
    x[21] = -INFINITY;
    nvfp4_opts o = nvfp4_opts_default();
    nvfp4_tensor t;
    nvfp4_stats st;
    CHECK(quant_ref(x, 1, 32, &o, &t, &st), "quantize");
    CHECK(st.n_nan == 1 && st.n_inf == 2, "counts NaN %lld Inf %lld", (long long)st.n_nan, (long long)st.n_inf);
    CHECK(isinf(t.amax), "amax includes inf");
    CHECK((t.codes[1] & 0xF) == 7, "NaN element -> code 7");
    CHECK((t.codes[10] & 0xF) == 7 && (t.codes[10] >> 4) == 15, "+inf -> 7, -inf -> 15");
    nvfp4_tensor_free(&t);
    /* NaN is ignored by the block amax: the other 15 elements keep their scale */
    for (int i = 0; i < 32; i++) x[i] = 2.0f;
    x[0] = NAN;
    CHECK(quant_ref(x, 1, 32, &o, &t, &st), "quantize");
    CHECK(t.scales[0] == t.scales[1], "NaN does not change the block scale");
    nvfp4_tensor_free(&t);
}

void test_partial_block_is_zero_padded(void) {
    trng r = {11};
    const int rows = 5, cols = 37, cp = 48;
    float x[5 * 37], xp[5 * 48];
    memset(xp, 0, sizeof xp);
    for (int i = 0; i < rows * cols; i++) x[i] = trng_normal(&r);
    for (int i = 0; i < rows; i++) memcpy(xp + i * cp, x + i * cols, cols * sizeof(float));
    for (int tile = 0; tile < 2; tile++) {
        nvfp4_opts o = nvfp4_opts_default();
        o.block = tile ? NVFP4_BLOCK_16X16 : NVFP4_BLOCK_1X16;
        nvfp4_tensor a, b;
        CHECK(quant_ref(x, rows, cols, &o, &a, NULL) && quant_ref(xp, rows, cp, &o, &b, NULL), "quantize");
        CHECK(a.cols_padded == 48, "cols_padded 48");
        CHECK(!memcmp(a.codes, b.codes, (size_t)(rows * cp / 2)), "codes equal the explicitly zero-padded tensor");
        CHECK(!memcmp(a.scales, b.scales, (size_t)nvfp4_scale_count(rows, cols, o.block)), "scales equal");
        for (int rr = 0; rr < rows; rr++)
            for (int c = cols; c < cp; c++) CHECK(((a.codes[(rr * cp + c) / 2] >> (4 * (c & 1))) & 0xF) == 0, "pad code 0");
        float y[5 * 37];
        nvfp4_dequantize(&a, 0, y);
        CHECK(isfinite(deq1(&a, y, 4, 36)), "last element dequantizes");
        nvfp4_tensor_free(&a);
        nvfp4_tensor_free(&b);
    }
}

void test_nibble_and_scale_layout(void) {
    /* element 2j in the low nibble; scales row-major per block */
    float x[2 * 32];
    for (int i = 0; i < 64; i++) x[i] = 0.0f;
    x[0] = 6.0f;   /* row 0 block 0 elem 0 → code 7, low nibble of byte 0 */
    x[1] = -3.0f;  /* elem 1 → code 8|5 = 13, high nibble */
    x[32 + 17] = 6.0f; /* row 1 block 1 elem 1 → high nibble of row1 byte 8 */
    nvfp4_opts o = nvfp4_opts_default();
    nvfp4_tensor t;
    CHECK(quant_ref(x, 2, 32, &o, &t, NULL), "quantize");
    CHECK(t.codes[0] == (7 | (13 << 4)), "byte 0 = 0x%02x", t.codes[0]);
    CHECK(t.codes[16 + 8] == (7 << 4), "row 1 byte 8 = 0x%02x", t.codes[16 + 8]);
    CHECK(t.scales[0] == 0x7E && t.scales[1] == 0 && t.scales[2] == 0 && t.scales[3] == 0x7E, "scales row-major");
    nvfp4_tensor_free(&t);
}

/* 16×16 tiles: quantizing W and Wᵀ gives the same values, transposed. */
void test_tile_transpose_shares_values(void) {
    trng r = {5};
    const int m = 40, n = 56;
    float *w = malloc(sizeof(float) * m * n), *wt = malloc(sizeof(float) * m * n);
    float *a = malloc(sizeof(float) * m * n), *b = malloc(sizeof(float) * m * n);
    for (int i = 0; i < m * n; i++) w[i] = trng_normal(&r) * (i % 9 == 0 ? 10.0f : 1.0f);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) wt[j * m + i] = w[i * n + j];
    nvfp4_opts o = nvfp4_opts_default();
    o.block = NVFP4_BLOCK_16X16;
    nvfp4_tensor tw, twt;
    CHECK(quant_ref(w, m, n, &o, &tw, NULL) && quant_ref(wt, n, m, &o, &twt, NULL), "quantize");
    nvfp4_dequantize(&tw, 0, a);
    nvfp4_dequantize(&twt, 0, b);
    int bad = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) bad += a[i * n + j] != b[j * m + i];
    CHECK(bad == 0, "%d elements differ between W and (Wᵀ)ᵀ", bad);
    nvfp4_tensor_free(&tw);
    nvfp4_tensor_free(&twt);
    free(w); free(wt); free(a); free(b);
}

void test_split_identity_and_colstats(void) {
    trng r = {21};
    const int64_t rows = 600, cols = 45; /* > 2 chunks of 256 rows */
    float *x = malloc(sizeof(float) * rows * cols);
    test_fill_pattern(x, rows * cols, cols, 1, &r);
    float mean[45], mx[45], mn[45], mean2[45], mx2[45], mn2[45];
    CHECK(nvfp4_colstats_ref(x, rows, cols, cols, mean, mx, mn) == AVERIS_OK, "colstats_ref");
    for (int nt = 1; nt <= 3; nt++) {
        CHECK(nvfp4_colstats(x, rows, cols, cols, mean2, mx2, mn2) == AVERIS_OK, "colstats");
        CHECK(!memcmp(mean, mean2, sizeof mean) && !memcmp(mx, mx2, sizeof mx) && !memcmp(mn, mn2, sizeof mn),
              "fast colstats bits == reference");
    }
    float direct = 0.0f;
    for (int64_t i = 0; i < rows * cols; i++) {
        float res = x[i] - mean[i % cols];
        /* mean + residual == input up to one fp32 rounding of the subtraction */
        double err = fabs(((double)res + mean[i % cols]) - x[i]);
        double exact = fabs((double)x[i] - mean[i % cols]);
        CHECK(err <= exact * 0x1p-24, "split identity at %lld: err %g", (long long)i, err);
        if (fabsf(res) > direct) direct = fabsf(res);
    }
    float fused = nvfp4_residual_amax(mean, mx, mn, cols);
    CHECK(fused == direct, "residual amax from column stats %a == direct %a", (double)fused, (double)direct);
    double m0 = 0;
    for (int64_t i = 0; i < rows; i++) m0 += x[i * cols];
    CHECK(fabs(m0 / rows - mean[0]) <= 1e-6 * fabs(m0 / rows), "mean of column 0");
    free(x);
}

static int tensors_equal(const nvfp4_tensor *a, const nvfp4_tensor *b) {
    return a->amax == b->amax && !memcmp(a->codes, b->codes, (size_t)(a->rows * a->cols_padded / 2)) &&
           !memcmp(a->scales, b->scales, (size_t)nvfp4_scale_count(a->rows, a->cols, a->block));
}

/* Option combination `variant` (bit 0 16×16, 1 RHT, 2 mean split, 3 SR) with the SR key (seed, stream). */
static nvfp4_opts variant_opts(int variant, const float *mean, uint64_t seed, uint64_t stream) {
    nvfp4_opts o = nvfp4_opts_default();
    o.block = (variant & 1) ? NVFP4_BLOCK_16X16 : NVFP4_BLOCK_1X16;
    o.rht = (variant >> 1) & 1;
    o.mean = ((variant >> 2) & 1) ? mean : NULL;
    o.sr = (variant >> 3) & 1;
    o.seed = seed;
    o.stream = stream;
    return o;
}

/* ref ← the scalar spec of src under o (stats in *sref); got allocated alike for a fast path. */
static void ref_and_output(const void *src, nvfp4_dtype dt, int64_t rows, int64_t cols, const nvfp4_opts *o,
                           nvfp4_tensor *ref, nvfp4_stats *sref, nvfp4_tensor *got) {
    nvfp4_tensor_alloc(ref, rows, cols, o->block);
    nvfp4_tensor_alloc(got, rows, cols, o->block);
    CHECK(nvfp4_quantize_ref(src, dt, rows, cols, cols, o, ref, sref) == AVERIS_OK, "ref");
}

/* Every fast path (scalar/AVX2/AVX-512 kernels × 1..3 threads) equals the
 * scalar spec, bit for bit, on every adversarial pattern and option. */
void test_fast_paths_equal_reference(void) {
    const int64_t shapes[][2] = {{1, 16}, {17, 48}, {33, 100}, {64, 256}, {5, 7}};
    const nvfp4_impl impls[] = {NVFP4_IMPL_SCALAR, NVFP4_IMPL_AVX2, NVFP4_IMPL_AVX512};
    trng r = {1234};
    int compared = 0;
    for (int s = 0; s < 5; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        float *x = malloc(sizeof(float) * rows * cols);
        uint16_t *xb = malloc(sizeof(uint16_t) * rows * cols);
        float *mean = malloc(sizeof(float) * cols), *mx = malloc(sizeof(float) * cols), *mn = malloc(sizeof(float) * cols);
        for (int pat = 0; pat < TEST_NPATTERNS; pat++) {
            test_fill_pattern(x, rows * cols, cols, pat, &r);
            for (int64_t i = 0; i < rows * cols; i++) xb[i] = bf16_from_f32(x[i]);
            nvfp4_colstats_ref(x, rows, cols, cols, mean, mx, mn);
            for (int variant = 0; variant < 16; variant++) {
                nvfp4_opts o = variant_opts(variant, mean, 77, (uint64_t)variant);
                nvfp4_dtype dt = (pat % 3 == 2 && !o.mean) ? NVFP4_BF16 : NVFP4_F32;
                const void *src = dt == NVFP4_BF16 ? (const void *)xb : (const void *)x;
                nvfp4_tensor ref, got;
                nvfp4_stats sref, sgot;
                ref_and_output(src, dt, rows, cols, &o, &ref, &sref, &got);
                for (int k = 0; k < 3; k++)
                    for (int nt = 1; nt <= 3; nt++) {
                        nvfp4_opts of = o;
                        of.impl = impls[k];
                        of.nthreads = nt;
                        if (o.mean && !o.rht && nt == 2) of.amax_hint = nvfp4_residual_amax(mean, mx, mn, cols);
                        memset(got.codes, 0xAB, (size_t)(rows * got.cols_padded / 2));
                        CHECK(nvfp4_quantize(src, dt, rows, cols, cols, &of, &got, &sgot) == AVERIS_OK, "fast");
                        CHECK(tensors_equal(&ref, &got),
                              "%s x%d differs from ref: shape %lldx%lld pattern %d variant %d (amax %a vs %a)",
                              nvfp4_impl_name(impls[k]), nt, (long long)rows, (long long)cols, pat, variant,
                              (double)ref.amax, (double)got.amax);
                        CHECK(!memcmp(&sref, &sgot, sizeof sref), "stats differ: %s x%d pattern %d variant %d (flushed %lld vs %lld, sat %lld vs %lld)",
                              nvfp4_impl_name(impls[k]), nt, pat, variant, (long long)sref.n_flushed,
                              (long long)sgot.n_flushed, (long long)sref.n_sat_blocks, (long long)sgot.n_sat_blocks);
                        compared++;
                    }
                nvfp4_tensor_free(&ref);
                nvfp4_tensor_free(&got);
            }
        }
        free(x); free(xb); free(mean); free(mx); free(mn);
    }
    CHECK(compared == 5 * TEST_NPATTERNS * 16 * 9, "ran all comparisons (%d)", compared);
}

void test_rht_roundtrip_reduces_to_identity_when_exact(void) {
    /* values on the E2M1 grid after RHT survive quantization exactly, so
     * dequantize + inverse RHT returns the input up to fp32 rounding */
    trng r = {8};
    float g[32], x[32], y[32];
    for (int i = 0; i < 32; i++) g[i] = (float)((int)(trng_u64(&r) % 13) - 6) * 0.5f;
    for (int i = 0; i < 32; i++) if (fabsf(g[i]) == 2.5f || fabsf(g[i]) == 3.5f || fabsf(g[i]) == 5.0f) g[i] = 4.0f;
    g[0] = 6.0f; g[16] = 6.0f;
    nvfp4_rht16_inv_ref(g, x);
    nvfp4_rht16_inv_ref(g + 16, x + 16);
    nvfp4_opts o = nvfp4_opts_default();
    o.rht = 1;
    nvfp4_tensor t;
    CHECK(quant_ref(x, 1, 32, &o, &t, NULL), "quantize");
    nvfp4_dequantize(&t, 1, y);
    for (int i = 0; i < 32; i++) CHECK(fabsf(y[i] - x[i]) <= 1e-5f * (1 + fabsf(x[i])), "rht round trip at %d: %g vs %g", i, (double)y[i], (double)x[i]);
    nvfp4_tensor_free(&t);
}

/* bitwise equal, except that any NaN matches any NaN (the payload and sign
 * of a NaN from Inf − Inf or NaN ± NaN depend on the operand order) */
static int same_bits_or_nan(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(isnan(a[i]) && isnan(b[i])) && memcmp(a + i, b + i, sizeof(float))) return 0;
    return 1;
}

void test_rht_inv_rows_simd_equal_reference(void) {
    /* nvfp4_rht16_inv_rows at every SIMD level this host has == the scalar
     * nvfp4_rht16_inv_ref bit for bit, out of place and in place, on normal,
     * huge, subnormal, signed-zero and non-finite inputs (rep 3) */
    const nvfp4_impl levels[] = {NVFP4_IMPL_SCALAR, NVFP4_IMPL_AVX2, NVFP4_IMPL_AVX512};
    enum { NG = 37 };
    float *y = malloc(16 * NG * sizeof(float)), *ref = malloc(16 * NG * sizeof(float));
    float *g = malloc(16 * NG * sizeof(float));
    trng r = {25};
    int compared = 0;
    for (int rep = 0; rep < 4; rep++) {
        for (int i = 0; i < 16 * NG; i++) {
            float v = trng_normal(&r);
            switch (trng_u64(&r) % 16) {
            case 0: v *= 1e38f; break;
            case 1: v *= 1e-40f; break;
            case 2: v = -0.0f; break;
            case 3: v = rep == 3 ? INFINITY : v; break;
            case 4: v = rep == 3 ? NAN : v; break;
            default: v *= (float)(1 << (trng_u64(&r) % 12));
            }
            y[i] = v;
        }
        for (int64_t gi = 0; gi < NG; gi++) nvfp4_rht16_inv_ref(y + 16 * gi, ref + 16 * gi);
        for (int k = 0; k < 3; k++) {
            if (nvfp4_impl_resolve(levels[k]) != levels[k]) continue; /* not on this host */
            for (int64_t n16 = 1; n16 <= NG; n16 += 6) {
                memset(g, 0xA5, 16 * NG * sizeof(float));
                nvfp4_rht16_inv_rows(y, g, n16, levels[k]);
                CHECK(same_bits_or_nan(g, ref, 16 * n16), "%s inverse RHT, %lld groups, rep %d",
                      nvfp4_impl_name(levels[k]), (long long)n16, rep);
                if (n16 < NG) {
                    uint32_t guard;
                    memcpy(&guard, g + 16 * n16, sizeof guard);
                    CHECK(guard == 0xA5A5A5A5u, "%s wrote past %lld groups", nvfp4_impl_name(levels[k]),
                          (long long)n16);
                }
                compared++;
            }
            memcpy(g, y, 16 * NG * sizeof(float));
            nvfp4_rht16_inv_rows(g, g, NG, levels[k]);
            CHECK(same_bits_or_nan(g, ref, 16 * NG), "%s inverse RHT in place, rep %d",
                  nvfp4_impl_name(levels[k]), rep);
        }
    }
    CHECK(compared >= 4 * 7, "ran the comparisons (%d)", compared);
    free(y); free(ref); free(g);
}

void test_sr_tensor_unbiased(void) {
    trng r = {31};
    const int rows = 16, cols = 64, draws = 400;
    float x[16 * 64], y[16 * 64];
    double sum[16 * 64] = {0}, sum2[16 * 64] = {0};
    for (int i = 0; i < rows * cols; i++) x[i] = trng_normal(&r);
    x[0] = 8.0f; /* fix the global scale so all blocks are well inside range */
    nvfp4_opts o = nvfp4_opts_default();
    o.sr = 1;
    for (int d = 0; d < draws; d++) {
        o.seed = 1000 + (uint64_t)d;
        nvfp4_tensor t;
        quant_ref(x, rows, cols, &o, &t, NULL);
        nvfp4_dequantize(&t, 0, y);
        nvfp4_tensor_free(&t);
        for (int i = 0; i < rows * cols; i++) { sum[i] += y[i]; sum2[i] += (double)y[i] * y[i]; }
    }
    int bad = 0, tested = 0;
    double z2 = 0;
    for (int i = 0; i < rows * cols; i++) {
        double m = sum[i] / draws, var = sum2[i] / draws - m * m;
        if (var <= 0) continue; /* exactly representable, or saturated block max */
        double z = (m - x[i]) / sqrt(var / draws);
        z2 += z * z;
        tested++;
        bad += fabs(z) > 4.5;
    }
    CHECK(tested > 900, "tested %d elements", tested);
    CHECK(bad <= 1, "%d of %d elements off by > 4.5 standard errors", bad, tested);
    CHECK(z2 / tested < 1.3, "mean squared z-score %g (≈1 if unbiased)", z2 / tested);
}

void test_bad_arguments(void) {
    nvfp4_tensor t;
    float x[16] = {0};
    CHECK(nvfp4_tensor_alloc(&t, 0, 16, NVFP4_BLOCK_1X16) == AVERIS_EINVAL, "empty rejected");
    CHECK(strstr(averis_last_error(), "empty") != NULL, "message names the problem: %s", averis_last_error());
    nvfp4_tensor_alloc(&t, 1, 16, NVFP4_BLOCK_1X16);
    nvfp4_opts o = nvfp4_opts_default();
    CHECK(nvfp4_quantize(x, NVFP4_F32, 1, 16, 8, &o, &t, NULL) == AVERIS_EINVAL, "ld < cols rejected");
    CHECK(nvfp4_quantize(x, NVFP4_F32, 2, 16, 16, &o, &t, NULL) == AVERIS_EINVAL, "shape mismatch rejected");
    nvfp4_tensor_free(&t);
}

/* The SIMD paths this host has (every level up to the best, each forced in
 * turn, so an AVX-512 host also tests the AVX2 fallback) on shapes large
 * enough for the 2-thread split (≥ NVFP4_PAR_MIN elements), odd row groups,
 * odd block counts, partial blocks and bf16 input: bits and stats == the
 * scalar spec for every option combination, with and without amax_hint. */
void test_simd_levels_and_threads_equal_reference(void) {
    const int64_t shapes[][2] = {{130, 272}, {97, 400}, {70, 529}};
    const nvfp4_impl levels[] = {NVFP4_IMPL_SCALAR, NVFP4_IMPL_AVX2, NVFP4_IMPL_AVX512};
    trng r = {99};
    int compared = 0, nlevels = 0;
    for (int k = 0; k < 3; k++) nlevels += nvfp4_impl_resolve(levels[k]) == levels[k];
    for (int s = 0; s < 3; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1], n = rows * cols;
        float *x = malloc(sizeof(float) * n), *mean = malloc(sizeof(float) * cols);
        float *mx = malloc(sizeof(float) * cols), *mn = malloc(sizeof(float) * cols);
        uint16_t *xb = malloc(sizeof(uint16_t) * n);
        test_fill_pattern(x, n, cols, 1 + s, &r); /* per-column offsets and outliers */
        for (int64_t i = 0; i < n; i++) xb[i] = bf16_from_f32(x[i]);
        nvfp4_colstats_ref(x, rows, cols, cols, mean, mx, mn);
        for (int variant = 0; variant < 16; variant++) {
            nvfp4_opts o = variant_opts(variant, mean, 0x0123456789ABCDEFull, 0xFEDCBA9876543210ull + (uint64_t)variant);
            nvfp4_dtype dt = (s == 2 && !o.mean) ? NVFP4_BF16 : NVFP4_F32;
            nvfp4_tensor ref, got;
            nvfp4_stats sref, sgot;
            const void *src = dt == NVFP4_BF16 ? (const void *)xb : (const void *)x;
            ref_and_output(src, dt, rows, cols, &o, &ref, &sref, &got);
            for (int k = 0; k < 3; k++) {
                if (nvfp4_impl_resolve(levels[k]) != levels[k]) continue; /* not on this host */
                for (int nt = 1; nt <= 2; nt++)
                    for (int hint = 0; hint <= (o.mean && !o.rht); hint++) {
                        nvfp4_opts of = o;
                        of.impl = levels[k];
                        of.nthreads = nt;
                        if (hint) of.amax_hint = nvfp4_residual_amax(mean, mx, mn, cols);
                        memset(got.codes, 0xAB, (size_t)(rows * got.cols_padded / 2));
                        memset(got.scales, 0xCD, (size_t)nvfp4_scale_count(rows, cols, o.block));
                        CHECK(nvfp4_quantize(src, dt, rows, cols, cols, &of, &got, &sgot) == AVERIS_OK, "fast");
                        CHECK(tensors_equal(&ref, &got), "%s x%d%s differs from ref: %lldx%lld variant %d (amax %a vs %a)",
                              nvfp4_impl_name(levels[k]), nt, hint ? " (amax hint)" : "", (long long)rows,
                              (long long)cols, variant, (double)ref.amax, (double)got.amax);
                        CHECK(!memcmp(&sref, &sgot, sizeof sref),
                              "stats differ: %s x%d %lldx%lld variant %d (nonzero %lld/%lld flushed %lld/%lld sat %lld/%lld)",
                              nvfp4_impl_name(levels[k]), nt, (long long)rows, (long long)cols, variant,
                              (long long)sref.n_nonzero, (long long)sgot.n_nonzero, (long long)sref.n_flushed,
                              (long long)sgot.n_flushed, (long long)sref.n_sat_blocks, (long long)sgot.n_sat_blocks);
                        compared++;
                    }
            }
            nvfp4_tensor_free(&ref);
            nvfp4_tensor_free(&got);
        }
        free(x); free(xb); free(mean); free(mx); free(mn);
    }
    /* per shape: 16 variants × 2 threads, + the 4 mean-without-rht variants again with the hint */
    CHECK(compared == 3 * nlevels * (16 + 4) * 2, "ran all comparisons (%d, %d levels)", compared, nlevels);
    CHECK(nlevels >= 1, "no kernel path");
}

/* The SIMD kernels' two column paths side by side: columns of 8 blocks
 * with a NaN or an Inf (the careful path) next to finite ones (the fast
 * path, whose counts come from the block maxima), in one tensor wide
 * enough for partial columns (21 blocks = 8 + 8 + 5) and tall enough for
 * the 2-thread split; blocks whose scale underflows to 0 while their values
 * are not 0, all-zero blocks, subnormal and negative-zero inputs, E2M1 ties
 * and values just past them. Every option combination, every SIMD level of
 * this host, 1 and 2 threads: bits and stats == the scalar spec. */
void test_simd_careful_and_fast_columns(void) {
    enum { ROWS = 100, COLS = 21 * 16 };
    const nvfp4_impl levels[] = {NVFP4_IMPL_AVX2, NVFP4_IMPL_AVX512};
    static float x[ROWS * COLS];
    float mean[COLS], mx[COLS], mn[COLS];
    const float ties[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f};
    trng r = {2025};
    for (int i = 0; i < ROWS * COLS; i++) x[i] = 2.0f * trng_normal(&r);
    for (int row = 0; row < ROWS; row++) {
        float *xr = x + row * COLS;
        xr[0] = 6.0f * 40.0f; /* one large element: the tensor amax sets the ties below on the grid */
        for (int i = 1; i < 16; i++) xr[i] = ties[(row + i) % 8] * 40.0f * ((i & 1) ? -1.0f : 1.0f);
        for (int i = 16; i < 32; i++) xr[i] = nextafterf(ties[(row + i) % 8], 0.0f) * 40.0f; /* just below the ties */
        for (int i = 32; i < 48; i++) xr[i] = 1e-12f * (float)(i - 40);                     /* scale underflows */
        for (int i = 48; i < 64; i++) xr[i] = 0.0f;                                         /* all-zero block */
        for (int i = 64; i < 80; i++) xr[i] = (i & 1) ? -0.0f : 1e-40f * (float)(i - 70);   /* subnormals */
        if (row % 7 == 3) xr[8 * 16 + row % 16] = NAN;                  /* the second column, careful */
        if (row % 11 == 5) xr[17 * 16 + row % 16] = -INFINITY;          /* the third column (partial), careful */
        if (row == 40) for (int i = 16 * 16; i < 17 * 16; i++) xr[i] = 0.0f; /* a zero block in a careful column */
    }
    nvfp4_colstats_ref(x, ROWS, COLS, COLS, mean, mx, mn);
    int compared = 0;
    for (int variant = 0; variant < 16; variant++) {
        nvfp4_opts o = variant_opts(variant, mean, 0xC0FFEEull, 0x123456789ull + (uint64_t)variant);
        nvfp4_tensor ref, got;
        nvfp4_stats sref, sgot;
        ref_and_output(x, NVFP4_F32, ROWS, COLS, &o, &ref, &sref, &got);
        /* with the mean split, the NaN/Inf columns' means are NaN/−Inf: every residual there is NaN */
        CHECK(sref.n_nan > 0 && (o.mean || (sref.n_inf > 0 && sref.n_flushed > 0)),
              "variant %d: the edge cases are present (nan %lld inf %lld flushed %lld)", variant, (long long)sref.n_nan,
              (long long)sref.n_inf, (long long)sref.n_flushed);
        for (int k = 0; k < 2; k++) {
            if (nvfp4_impl_resolve(levels[k]) != levels[k]) continue;
            for (int nt = 1; nt <= 2; nt++) {
                nvfp4_opts of = o;
                of.impl = levels[k];
                of.nthreads = nt;
                memset(got.codes, 0xAB, (size_t)(ROWS * got.cols_padded / 2));
                memset(got.scales, 0xCD, (size_t)nvfp4_scale_count(ROWS, COLS, o.block));
                CHECK(nvfp4_quantize(x, NVFP4_F32, ROWS, COLS, COLS, &of, &got, &sgot) == AVERIS_OK, "fast");
                CHECK(tensors_equal(&ref, &got), "%s x%d variant %d differs from ref", nvfp4_impl_name(levels[k]), nt,
                      variant);
                CHECK(!memcmp(&sref, &sgot, sizeof sref),
                      "stats differ: %s x%d variant %d (nonzero %lld/%lld flushed %lld/%lld sat %lld/%lld nan %lld/%lld)",
                      nvfp4_impl_name(levels[k]), nt, variant, (long long)sref.n_nonzero, (long long)sgot.n_nonzero,
                      (long long)sref.n_flushed, (long long)sgot.n_flushed, (long long)sref.n_sat_blocks,
                      (long long)sgot.n_sat_blocks, (long long)sref.n_nan, (long long)sgot.n_nan);
                compared++;
            }
        }
        nvfp4_tensor_free(&ref);
        nvfp4_tensor_free(&got);
    }
    CHECK(compared >= 32 || !nvfp4_cpu_has_avx2(), "ran the comparisons (%d)", compared);
}

/* The SIMD quantize kernels with SR against the scalar kernel where the
 * Philox counter's low word wraps inside a vector (row0·cp/4 = 2^32 − 4 with
 * cp = 48: counters 2^32−4 … 2^32+3 in one 8-lane batch), with a 64-bit seed
 * and stream, 1×16 and 16×16, saturating and flushing blocks. */
void test_simd_sr_counter_carry(void) {
#if defined(AVERIS_HAVE_X86)
    enum { H = 16, CP = 48 };
    trng r = {7};
    float x[H * CP];
    for (int i = 0; i < H * CP; i++) x[i] = 3.0f * trng_normal(&r);
    x[5] = 1e-30f; x[17] = 40.0f; x[40] = NAN; x[41] = INFINITY;
    for (int i = 32; i < 48; i++) x[2 * CP + i] = 1e-12f * (float)(i - 40); /* a block whose scale underflows */
    float s_enc, s_dec;
    nvfp4_global_scales(30.0f, &s_enc, &s_dec); /* 40 saturates its block */
    nvfp4_sr_ctx sr = {1, 0xA5A5A5A5DEADBEEFull, 0x0000000100000003ull, 357913941, CP};
    CHECK((uint64_t)sr.row0 * CP / 4 == 0xFFFFFFFCull, "row0 puts the low-word wrap inside the first batch");
    const nvfp4_quant_rows_simd_fn fns[2] = {nvfp4_quant_rows_avx2, nvfp4_quant_rows_avx512};
    const int have[2] = {nvfp4_cpu_has_avx2(), nvfp4_cpu_has_avx512()};
    const char *names[2] = {"avx2", "avx512"};
    for (int tile = 0; tile < 2; tile++) {
        uint8_t cref[H * CP / 2], sref[H * CP / 16], cgot[H * CP / 2], sgot[H * CP / 16];
        nvfp4_qcount nref = {0};
        nvfp4_quant_rows_scalar(x, NULL, H, CP, CP, tile, s_enc, s_dec, &sr, cref, CP / 2, sref, CP / 16, &nref);
        for (int k = 0; k < 2; k++) {
            if (!have[k]) continue;
            nvfp4_qcount ngot = {0};
            memset(cgot, 0xAB, sizeof cgot);
            memset(sgot, 0xCD, sizeof sgot);
            fns[k](x, NULL, H, CP, CP, tile, s_enc, s_dec, &sr, cgot, CP / 2, sgot, CP / 16, &ngot, 0);
            int bad = -1;
            for (int i = 0; i < H * CP / 2 && bad < 0; i++)
                if (cref[i] != cgot[i]) bad = i;
            CHECK(bad < 0, "%s tile %d: code byte %d is 0x%02x, scalar 0x%02x", names[k], tile, bad,
                  bad < 0 ? 0 : cgot[bad], bad < 0 ? 0 : cref[bad]);
            CHECK(!memcmp(sref, sgot, (size_t)(tile ? CP / 16 : H * CP / 16)), "%s tile %d: scales differ", names[k], tile);
            CHECK(!memcmp(&nref, &ngot, sizeof nref), "%s tile %d: counts differ (flushed %lld/%lld, sat %lld/%lld)",
                  names[k], tile, (long long)nref.flushed, (long long)ngot.flushed, (long long)nref.sat_blocks,
                  (long long)ngot.sat_blocks);
        }
        CHECK(nref.sat_blocks >= 1 && nref.flushed >= 1 && nref.nan == 1 && nref.inf == 1,
              "the edge cases are present (sat %lld, flushed %lld)", (long long)nref.sat_blocks, (long long)nref.flushed);
    }
#endif
}

/* Dequantize (the SIMD row kernel where the host has one) == the formula
 * x̂ = (e2m1(q)·e4m3(s))·S_dec on every code byte and every scale byte,
 * 1×16 and 16×16, cropped partial blocks, and the inverse RHT. */
void test_dequantize_every_code_and_scale(void) {
    const int64_t rows = 40, cols = 4000; /* 250 blocks: every scale byte on row 0 */
    for (int tile = 0; tile < 2; tile++)
        for (int inv = 0; inv < 2; inv++) {
            int64_t c = inv ? cols - 7 : cols;
            nvfp4_tensor t;
            CHECK(nvfp4_tensor_alloc(&t, rows, c, tile ? NVFP4_BLOCK_16X16 : NVFP4_BLOCK_1X16) == AVERIS_OK, "alloc");
            int64_t cp = t.cols_padded, nb = cp / 16, ns = nvfp4_scale_count(rows, c, t.block);
            for (int64_t i = 0; i < rows * cp / 2; i++) t.codes[i] = (uint8_t)(i * 37 + i / 97);
            for (int64_t i = 0; i < ns; i++) t.scales[i] = (uint8_t)(i + 3 * (i / 256));
            t.amax = 1234.5f;
            float *y = malloc(sizeof(float) * rows * c), row[4000];
            CHECK(nvfp4_dequantize(&t, inv, y) == AVERIS_OK, "dequantize");
            float s_enc, s_dec;
            nvfp4_global_scales(t.amax, &s_enc, &s_dec);
            int bad = 0;
            for (int64_t rr = 0; rr < rows; rr++) {
                for (int64_t j = 0; j < cp; j++) {
                    uint8_t q = (t.codes[(rr * cp + j) / 2] >> (4 * (j & 1))) & 0xF;
                    uint8_t sc = t.scales[(tile ? rr / 16 : rr) * nb + j / 16];
                    row[j] = (nvfp4_e2m1_decode(q) * nvfp4_e4m3_decode(sc)) * s_dec;
                }
                if (inv)
                    for (int64_t g = 0; g < nb; g++) nvfp4_rht16_inv_ref(row + 16 * g, row + 16 * g);
                for (int64_t j = 0; j < c; j++) {
                    uint32_t a, b;
                    memcpy(&a, &row[j], 4);
                    memcpy(&b, &y[rr * c + j], 4);
                    /* a NaN's sign after the inverse RHT depends on operand order */
                    if (a != b && !(isnan(row[j]) && isnan(y[rr * c + j])) && bad++ < 3)
                        CHECK(0, "tile %d inv %d: (%lld, %lld) = %a, formula %a", tile, inv, (long long)rr,
                              (long long)j, (double)y[rr * c + j], (double)row[j]);
                }
            }
            CHECK(bad == 0, "tile %d inv %d: %d values differ", tile, inv, bad);
            free(y);
            nvfp4_tensor_free(&t);
        }
}
