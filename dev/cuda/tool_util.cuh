/* tool_util.cuh — for the device test, bench and kernel-lab programs (not
 * the library): a CUDA or averis call that fails ends the program with
 * where and why; CUDA-event timing; the quantize-kernel benchmark that
 * bench/cuda/bench_cuda.cu (the library's kernels) and dev/cuda/quant_lab.cu
 * (the numbered versions) both print. */
#ifndef AVERIS_DEV_CUDA_TOOL_UTIL_CUH
#define AVERIS_DEV_CUDA_TOOL_UTIL_CUH

#include "quant.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define DEV(call)                                                                                          \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess) {                                                                            \
            fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);       \
            exit(2);                                                                                        \
        }                                                                                                   \
    } while (0)

#define TOOL_OK(call)                                                                                      \
    do {                                                                                                    \
        if ((call) != AVERIS_OK) {                                                                          \
            fprintf(stderr, "%s: %s\n", #call, averis_last_error());                                        \
            exit(2);                                                                                        \
        }                                                                                                   \
    } while (0)

/* a device copy of h [n] (16 bytes of slack), and a host copy of d [n] */
template <typename T> static T *dev_copy(const T *h, size_t n) {
    T *d;
    DEV(cudaMalloc(&d, n * sizeof(T) + 16));
    DEV(cudaMemcpy(d, h, n * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T> static std::vector<T> host_copy(const T *d, size_t n) {
    std::vector<T> h(n);
    DEV(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

/* selects GPU 0 and prints it; ends the program (status 2) without one */
/* where host buffers a and b first differ: the byte, or with is_float the
 * float element (NaN equal to NaN); -1 where they are the same */
static inline int64_t tool_first_diff(const void *a, const void *b, size_t bytes, int is_float) {
    const uint8_t *x = static_cast<const uint8_t *>(a), *y = static_cast<const uint8_t *>(b);
    if (!is_float) {
        for (size_t i = 0; i < bytes; i++)
            if (x[i] != y[i]) return (int64_t)i;
        return -1;
    }
    for (size_t i = 0; i + 4 <= bytes; i += 4) {
        float u, v;
        memcpy(&u, x + i, 4), memcpy(&v, y + i, 4);
        if (memcmp(&u, &v, 4) && !(std::isnan(u) && std::isnan(v))) return (int64_t)(i / 4);
    }
    return -1;
}

static inline void tool_device_init(const char *prog) {
    char desc[256];
    if (avc_init(0, desc, sizeof desc)) {
        fprintf(stderr, "%s: %s\n", prog, averis_last_error());
        exit(2);
    }
    printf("device: %s\n", desc);
}

/* the benches' batch: n token ids below vocab from a fixed LCG (seed 99), the
 * targets the next token (cyclically) */
static inline void tool_random_batch(int vocab, int64_t n, std::vector<int> &tok, std::vector<int> &tgt) {
    tok.resize((size_t)n);
    tgt.resize((size_t)n);
    uint64_t s = 99;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int)((s >> 33) % (uint64_t)vocab);
    }
    for (int64_t i = 0; i < n; i++) tgt[i] = tok[(i + 1) % n];
}

/* the median of `reps` CUDA-event timings of fn (ms), after 3 warm-up calls */
template <typename F> static double median_ms(F fn, int reps = 20) {
    cudaEvent_t a, b;
    DEV(cudaEventCreate(&a));
    DEV(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) fn();
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        DEV(cudaEventRecord(a));
        fn();
        DEV(cudaEventRecord(b));
        DEV(cudaEventSynchronize(b));
        float ms;
        DEV(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    DEV(cudaGetLastError());
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

static __global__ void k_bench_fill(float *x, int64_t n, int64_t cols, uint32_t seed) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    float u = (float)(h >> 8) * 0x1p-24f - 0.5f;
    x[i] = 2.0f * u + ((i % cols) % 7 == 0 ? 1.5f : 0.2f); /* a mean bias on some features */
}

/* The quantize benchmark: an input [rows × cols] (fp32 and its BF16 copy),
 * the outputs, and the device-to-device copy every row is measured against. */
struct qbench {
    int64_t rows, cols, n;
    float *x, *amax, *mean, *res;
    __nv_bfloat16 *xb;
    uint8_t *codes, *scales, *copy_dst;
    double copy_gbs;
};
/* One row: the input and options; `version` picks the kernel (quantize's argument). */
struct qbench_row {
    const char *name;
    int bf16, tile, rht, mean_split, sr, transpose, amax_known, version;
};
typedef averis_status (*qbench_quantize)(const cq_job *j, int version, cudaStream_t s);

/* allocates and fills b, prints the header and the copy row */
static inline void qbench_init(qbench *b, int64_t rows, int64_t cols) {
    int64_t n = rows * cols;
    b->rows = rows, b->cols = cols, b->n = n;
    DEV(cudaMalloc(&b->x, n * 4));
    DEV(cudaMalloc(&b->xb, n * 2));
    DEV(cudaMalloc(&b->codes, n / 2));
    DEV(cudaMalloc(&b->scales, n / 16));
    DEV(cudaMalloc(&b->copy_dst, n * 4));
    DEV(cudaMalloc(&b->amax, 4));
    DEV(cudaMalloc(&b->mean, cols * 4));
    DEV(cudaMalloc(&b->res, 4));
    k_bench_fill<<<cu_blocks(n, 256), 256>>>(b->x, n, cols, 12345);
    TOOL_OK(cq_to_bf16(b->x, b->xb, n, 0));
    DEV(cudaDeviceSynchronize());
    printf("quantize kernels, %lld x %lld, GB/s of input read once + codes + scales written\n", (long long)rows,
           (long long)cols);
    printf("%-44s %9s %9s %9s\n", "kernel", "ms", "GB/s", "vs copy");
    double copy_ms = median_ms([&] { cudaMemcpyAsync(b->copy_dst, b->x, n * 4, cudaMemcpyDeviceToDevice); });
    b->copy_gbs = 2.0 * n * 4 / (copy_ms * 1e6);
    printf("%-44s %9.3f %9.0f %9s\n", "device-to-device copy (read + write)", copy_ms, b->copy_gbs, "1.00");
}

/* times each row's quantize (with the column statistics first for mean_split rows) */
static inline void qbench_run(const qbench *b, const qbench_row *rowsv, int nrows, qbench_quantize quantize) {
    int64_t n = b->n;
    for (int k = 0; k < nrows; k++) {
        const qbench_row &r = rowsv[k];
        cq_job j = {};
        j.src = r.bf16 ? (const void *)b->xb : (const void *)b->x;
        j.bf16_in = r.bf16;
        j.srows = b->rows, j.scols = b->cols, j.ld = b->cols;
        j.tile = r.tile, j.rht = r.rht, j.sr = r.sr, j.seed = 1, j.stream = 2, j.transpose = r.transpose;
        j.amax = b->amax, j.codes = b->codes, j.scales = b->scales;
        if (r.amax_known) {
            TOOL_OK(quantize(&j, r.version, 0)); /* the amax once, outside the timing */
            j.amax_in = b->amax;
        }
        double ms = median_ms([&] {
            if (r.mean_split) {
                cq_colstats(b->x, 0, b->rows, b->cols, b->cols, b->mean, b->res, nullptr, nullptr, 0);
                j.mean = b->mean, j.amax_in = b->res;
            }
            quantize(&j, r.version, 0);
        });
        double bytes = (double)n * (r.bf16 ? 2 : 4) + n / 2 + n / 16;
        double gbs = bytes / (ms * 1e6);
        printf("%-44s %9.3f %9.0f %9.2f\n", r.name, ms, gbs, gbs / b->copy_gbs);
    }
}

/* The rows-1×16 inputs both benchmarks time: fp32 or BF16, the amax known
 * or two passes, SR, RHT, and the Averis split (column statistics first). */
static const qbench_row k_qbench_row_inputs[] = {
    {"1x16 fp32, amax known", 0, 0, 0, 0, 0, 0, 1, 0},
    {"1x16 bf16, amax known", 1, 0, 0, 0, 0, 0, 1, 0},
    {"1x16 fp32, two passes (amax + quantize)", 0, 0, 0, 0, 0, 0, 0, 0},
    {"1x16 bf16, two passes", 1, 0, 0, 0, 0, 0, 0, 0},
    {"1x16 fp32 + SR, two passes", 0, 0, 0, 0, 1, 0, 0, 0},
    {"1x16 fp32 + RHT, two passes", 0, 0, 1, 0, 0, 0, 0, 0},
    {"averis split: colstats + quantize", 0, 0, 0, 1, 0, 0, 0, 0},
};

/* each of those inputs with each kernel version of versions[nv], named "vN <input>" */
static inline void qbench_row_versions(const qbench *b, const int *versions, int nv, qbench_quantize quantize) {
    for (const qbench_row &in : k_qbench_row_inputs)
        for (int k = 0; k < nv; k++) {
            char name[64];
            snprintf(name, sizeof name, "v%d %s", versions[k], in.name);
            qbench_row r = in;
            r.name = name, r.version = versions[k];
            qbench_run(b, &r, 1, quantize);
        }
}

#endif
