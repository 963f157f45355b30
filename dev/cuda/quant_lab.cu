/* quant_lab.cu — the kernel lab of the NVFP4 row quantizer (STYLE.md #9):
 * each version of the rows-1×16 kernel, its bit-for-bit check against the
 * CPU spec and its benchmark, side by side.
 *
 *   v1  a thread per 16-element block, element loads (quant.cu's kernels
 *       with the 16-byte loads off)
 *   v2  a thread per block, 16-byte loads: the library's (cuda/quant.cu)
 *   v3  four threads per block, four elements each (k_rows4 below)
 * v2 stays the library's: v3 measured no faster (docs/cuda.md,
 * docs/benchmarks.md).
 *
 *   quant_lab check   every version = nvfp4_quantize_ref over the
 *                     adversarial corpus × shapes × RHT × mean split × SR ×
 *                     {fp32, bf16}: codes, scales and amax
 *   quant_lab bench   the versions in GB/s vs a device-to-device copy
 * Without an argument: both. Exit status 1 on a failed check.
 */
#include "quant_block.cuh"
#include "nvfp4_device.cuh"
#include "tool_util.cuh"

#include <cstring>
#include <vector>

extern "C" {
#include "../../tests/check.h"
}
#include "../../tests/cuda/quant_corpus.cuh"

int g_check_failed;

namespace {

/* v3 (rows, 1×16): four threads per 16-element block, four elements each, so
 * a warp's load reads 512 contiguous bytes; the block amax by two shuffles;
 * the RHT's butterflies of stride 4 and 8 cross threads by shuffles (the
 * same fp32 operations: the lower index gets a+b, the upper a−b); one
 * Philox call per thread is exactly the SR counter of its four elements.
 * MODE 0: the per-tensor amax; MODE 1: quantize. */
template <typename T, int MODE> __global__ void k_rows4(cq_params p) {
    int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int q = (int)(gid & 3);
    uint32_t blk32 = (uint32_t)(gid >> 2), nb32 = (uint32_t)p.nb;
    int64_t blk = gid >> 2, r = blk32 / nb32, b = blk32 % nb32, c0 = 16 * b + 4 * q;
    bool valid = blk < p.nthreads;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (valid) {
        const T *row = static_cast<const T *>(p.src) + r * p.ld;
        if (p.vec) {
            if (sizeof(T) == 4) {
                float4 f = __ldg(reinterpret_cast<const float4 *>(reinterpret_cast<const float *>(row) + c0));
                v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
            } else {
                uint2 u = __ldg(reinterpret_cast<const uint2 *>(reinterpret_cast<const __nv_bfloat16 *>(row) + c0));
                v[0] = __uint_as_float(u.x << 16), v[1] = __uint_as_float(u.x & 0xFFFF0000u);
                v[2] = __uint_as_float(u.y << 16), v[3] = __uint_as_float(u.y & 0xFFFF0000u);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 4; i++) v[i] = c0 + i < p.scols ? cq_ld_elem(row + c0 + i) : 0.0f;
        }
        if (p.mean) {
#pragma unroll
            for (int i = 0; i < 4; i++)
                if (c0 + i < p.scols) v[i] = v[i] - p.mean[c0 + i];
        }
    }
    if (p.rht) {
#pragma unroll
        for (int i = 0; i < 4; i++) v[i] = v[i] * nvfp4_spec_rht_sign(4 * q + i);
        float a0 = v[0], a1 = v[1], a2 = v[2], a3 = v[3];
        v[0] = a0 + a1, v[1] = a0 - a1, v[2] = a2 + a3, v[3] = a2 - a3; /* h = 1 */
        a0 = v[0], a1 = v[1], a2 = v[2], a3 = v[3];
        v[0] = a0 + a2, v[2] = a0 - a2, v[1] = a1 + a3, v[3] = a1 - a3; /* h = 2 */
#pragma unroll
        for (int h = 1; h <= 2; h <<= 1) { /* h = 4, 8: partner thread q ^ h */
            bool lower = (q & h) == 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float o = __shfl_xor_sync(0xffffffffu, v[i], h);
                v[i] = lower ? v[i] + o : o - v[i];
            }
        }
#pragma unroll
        for (int i = 0; i < 4; i++) v[i] = 0.25f * v[i];
    }
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float a = fabsf(v[i]);
        m = a > m ? a : m;
    }
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    if (MODE == 0) {
        cq_reduce_amax(m, p.amax); /* the quad's lanes hold the same value: the tree still holds */
        return;
    }
    if (!valid) return;
    float s_enc, s_dec;
    nvfp4_spec_global_scales(*p.amax, &s_enc, &s_dec);
    uint32_t sc = avd_block_scale(m, s_enc);
    float enc = avd_block_enc(sc, s_dec);
    uint32_t u[4] = {0, 0, 0, 0};
    if (p.sr) {
        nvfp4_spec_sr_u24_quad(p.seed, p.stream, (uint64_t)(r * p.cp + c0) >> 2, u);
    }
    uint32_t cq[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float y = v[i] * enc;
        cq[i] = p.sr ? avd_e2m1_sr(y, u[i]) : avd_e2m1_rn(y);
    }
    if (p.codes)
        *reinterpret_cast<uint16_t *>(p.codes + r * (p.cp / 2) + 8 * b + 2 * q) =
            (uint16_t)(cq[0] | (cq[1] << 4) | (cq[2] << 8) | (cq[3] << 12));
    if (p.scales && q == 0) p.scales[r * p.nb + b] = (uint8_t)sc;
    if (p.bf16_out) {
        float sb = avd_e4m3_decode(sc);
        uint32_t w0 = (__float_as_uint(avd_e2m1_decode(cq[0]) * sb) >> 16) | (__float_as_uint(avd_e2m1_decode(cq[1]) * sb) & 0xFFFF0000u);
        uint32_t w1 = (__float_as_uint(avd_e2m1_decode(cq[2]) * sb) >> 16) | (__float_as_uint(avd_e2m1_decode(cq[3]) * sb) & 0xFFFF0000u);
        *reinterpret_cast<uint2 *>(p.bf16_out + r * p.ld_out + c0) = make_uint2(w0, w1);
    }
}

} // namespace

/* j with kernel version 1, 2 or 3 (0: the library's, v2); v3 covers rows
 * 1×16 only, the other jobs run v2 */
static averis_status lab_quantize(const cq_job *j, int version, cudaStream_t s) {
    if (version == 0 || version == 2) return cq_quantize(j, s);
    cq_params p;
    CU_OK(cq_plan(j, &p));
    if (version == 1) {
        p.vec = 0;
        return cq_run(j, &p, s);
    }
    if (version != 3) return averis_fail(AVERIS_EINVAL, "quant_lab: no kernel v%d", version);
    if (p.transpose || p.tile) return cq_quantize(j, s);
    const int threads = 256;
    unsigned grid4 = cu_blocks(4 * p.nthreads, threads);
    if (j->rowsum) return averis_fail(AVERIS_EINVAL, "cuda quantize: row sums are for the transposed copies");
    if (j->amax_in) {
        if (j->amax_in != j->amax) CU_TRY(cudaMemcpyAsync(j->amax, j->amax_in, sizeof(float), cudaMemcpyDeviceToDevice, s));
    } else {
        CU_TRY(cudaMemsetAsync(j->amax, 0, sizeof(float), s));
        if (j->bf16_in) k_rows4<__nv_bfloat16, 0><<<grid4, threads, 0, s>>>(p);
        else k_rows4<float, 0><<<grid4, threads, 0, s>>>(p);
        CU_LAUNCHED();
    }
    if (j->bf16_in) k_rows4<__nv_bfloat16, 1><<<grid4, threads, 0, s>>>(p);
    else k_rows4<float, 1><<<grid4, threads, 0, s>>>(p);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* Every version against nvfp4_quantize_ref, rows 1×16, on test_cuda's
 * quantize corpus: codes, scales and amax. */
static void check_versions(void) {
    int compared = 0;
    int cases = qcorpus_run(1, [&](const qcorpus_case &c) {
        const nvfp4_tensor &ref = *c.ref;
        nvfp4_tensor got;
        nvfp4_tensor_alloc(&got, c.rows, c.cols, NVFP4_BLOCK_1X16);
        avc_tensor t;
        CHECK(avc_tensor_alloc(&t, c.rows, c.cols, NVFP4_BLOCK_1X16) == AVERIS_OK, "alloc: %s", averis_last_error());
        int64_t ncodes = c.rows * ref.cols_padded / 2, nsc = nvfp4_scale_count(c.rows, c.cols, NVFP4_BLOCK_1X16);
        for (int ver = 1; ver <= 3; ver++) {
            cq_job j = {};
            j.src = c.dsrc, j.bf16_in = c.dt == NVFP4_BF16;
            j.srows = c.rows, j.scols = c.cols, j.ld = c.cols;
            j.rht = c.o.rht, j.sr = c.o.sr, j.seed = c.o.seed, j.stream = c.o.stream;
            j.mean = c.o.mean ? c.dmean : NULL;
            j.amax = t.amax_dev, j.codes = t.codes_dev, j.scales = t.scales_dev;
            DEV(cudaMemset(t.codes_dev, 0xAB, (size_t)ncodes));
            CHECK(lab_quantize(&j, ver, 0) == AVERIS_OK, "v%d: %s", ver, averis_last_error());
            CHECK(avc_tensor_download(&t, &got) == AVERIS_OK, "download: %s", averis_last_error());
            int64_t bad = -1;
            for (int64_t i = 0; i < ncodes && bad < 0; i++)
                if (ref.codes[i] != got.codes[i]) bad = i;
            CHECK(bad < 0 && !memcmp(ref.scales, got.scales, (size_t)nsc) && !memcmp(&ref.amax, &got.amax, 4),
                  "kernel v%d differs: %lldx%lld pattern %d variant %d (first code byte %lld; amax %a vs %a)", ver,
                  (long long)c.rows, (long long)c.cols, c.pat, c.variant, (long long)bad, (double)ref.amax,
                  (double)got.amax);
            compared++;
        }
        avc_tensor_free(&t);
        nvfp4_tensor_free(&got);
    });
    printf("  kernel versions v1, v2, v3: %d tensors compared bit for bit\n", compared);
    CHECK(cases == k_nshapes * TEST_NPATTERNS * 12 && compared == 3 * cases, "ran every comparison (%d)", compared);
}

/* each version on each input of the rows benchmark */
static void bench_versions(void) {
    qbench b;
    qbench_init(&b, 16384, 4096); /* 256 MiB fp32: far beyond L2 */
    const int versions[] = {1, 2, 3};
    qbench_row_versions(&b, versions, 3, lab_quantize);
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "all";
    if (strcmp(what, "all") && strcmp(what, "check") && strcmp(what, "bench")) {
        fprintf(stderr, "usage: quant_lab [check | bench]\n");
        return 2;
    }
    tool_device_init("quant_lab");
    int failed = 0;
    if (strcmp(what, "bench")) {
        g_check_failed = 0;
        check_versions();
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) {
            fprintf(stderr, "  CUDA error: %s\n", cudaGetErrorString(e));
            g_check_failed++;
        }
        failed = g_check_failed != 0;
        printf("%s  quantize_versions\n%d passed, %d failed\n", failed ? "FAIL" : "ok  ", !failed, failed);
    }
    if (strcmp(what, "check")) bench_versions();
    return failed;
}
