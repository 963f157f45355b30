/* quant_corpus.cuh — the quantize corpus of the device checks (test_cuda's
 * quantize test, the kernel lab's version check): shapes × the adversarial
 * patterns (tests/test_patterns.c) × option variants, each with its CPU
 * reference (nvfp4_quantize_ref) and its input on device. The includer
 * includes tests/check.h and dev/cuda/tool_util.cuh first. */
#ifndef AVERIS_TESTS_CUDA_QUANT_CORPUS_CUH
#define AVERIS_TESTS_CUDA_QUANT_CORPUS_CUH

#include "averis/half.h"
#include <vector>

static const int64_t k_shapes[][2] = {{1, 16}, {17, 48}, {33, 100}, {64, 256}, {5, 7}, {300, 1024}};
static const int k_nshapes = 6;

/* One case: variant bits 0 16×16 blocks, 1 RHT, 2 mean split, 3 SR, 4 BF16
 * input (not with the mean split). */
struct qcorpus_case {
    int64_t rows, cols;
    int pat, variant;
    nvfp4_opts o;
    nvfp4_dtype dt;
    const void *dsrc;        /* the input [rows × cols] on device, fp32 or BF16 */
    const float *dmean;      /* [cols] the column means on device */
    const nvfp4_tensor *ref; /* the CPU's quantization */
};

/* fn(case) over the corpus (with only_1x16, the 1×16 variants only: 12 a
 * pattern, else 24); returns the number of cases */
template <typename F> static int qcorpus_run(int only_1x16, F fn) {
    trng r = {4321};
    int cases = 0;
    for (int s = 0; s < k_nshapes; s++) {
        int64_t rows = k_shapes[s][0], cols = k_shapes[s][1], n = rows * cols;
        std::vector<float> x(n), mean(cols), mx(cols), mn(cols);
        std::vector<uint16_t> xb(n);
        for (int pat = 0; pat < TEST_NPATTERNS; pat++) {
            test_fill_pattern(x.data(), n, cols, pat, &r);
            for (int64_t i = 0; i < n; i++) xb[i] = bf16_from_f32(x[i]);
            nvfp4_colstats_ref(x.data(), rows, cols, cols, mean.data(), mx.data(), mn.data());
            float *dx = dev_copy(x.data(), n), *dmean = dev_copy(mean.data(), cols);
            uint16_t *dxb = dev_copy(xb.data(), n);
            for (int variant = 0; variant < 32; variant += only_1x16 ? 2 : 1) {
                nvfp4_opts o = nvfp4_opts_default();
                o.block = (variant & 1) ? NVFP4_BLOCK_16X16 : NVFP4_BLOCK_1X16;
                o.rht = (variant >> 1) & 1;
                o.mean = ((variant >> 2) & 1) ? mean.data() : NULL;
                o.sr = (variant >> 3) & 1;
                o.seed = 0x1234567890ull + (uint64_t)pat;
                o.stream = (uint64_t)variant << 40 | 5;
                nvfp4_dtype dt = ((variant >> 4) & 1) && !o.mean ? NVFP4_BF16 : NVFP4_F32;
                if (((variant >> 4) & 1) && o.mean) continue;
                const void *hsrc = dt == NVFP4_BF16 ? (const void *)xb.data() : (const void *)x.data();
                nvfp4_tensor ref;
                nvfp4_tensor_alloc(&ref, rows, cols, o.block);
                CHECK(nvfp4_quantize_ref(hsrc, dt, rows, cols, cols, &o, &ref, NULL) == AVERIS_OK, "ref");
                const qcorpus_case c = {rows, cols, pat, variant, o, dt,
                                        dt == NVFP4_BF16 ? (const void *)dxb : (const void *)dx, dmean, &ref};
                fn(c);
                cases++;
                nvfp4_tensor_free(&ref);
            }
            cudaFree(dx);
            cudaFree(dmean);
            cudaFree(dxb);
        }
    }
    return cases;
}

#endif
