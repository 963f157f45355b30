/* test_nvfp4.c — the tensor quantizer: edge cases, layouts, the 16×16
 * transpose property, the mean split, and every fast path == the scalar spec. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "averis/half.h"
#include "averis/nvfp4.h"
#include "check.h"

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
                nvfp4_opts o = nvfp4_opts_default();
                o.block = (variant & 1) ? NVFP4_BLOCK_16X16 : NVFP4_BLOCK_1X16;
                o.rht = (variant >> 1) & 1;
                o.mean = ((variant >> 2) & 1) ? mean : NULL;
                o.sr = (variant >> 3) & 1;
                o.seed = 77;
                o.stream = (uint64_t)variant;
                nvfp4_dtype dt = (pat % 3 == 2 && !o.mean) ? NVFP4_BF16 : NVFP4_F32;
                const void *src = dt == NVFP4_BF16 ? (const void *)xb : (const void *)x;
                nvfp4_tensor ref, got;
                nvfp4_stats sref, sgot;
                nvfp4_tensor_alloc(&ref, rows, cols, o.block);
                nvfp4_tensor_alloc(&got, rows, cols, o.block);
                CHECK(nvfp4_quantize_ref(src, dt, rows, cols, cols, &o, &ref, &sref) == AVERIS_OK, "ref");
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
