/* bench_cuda.cu — device benchmarks, ratios measured in the same run.
 *
 *   bench_cuda quant   the library's NVFP4 quantize kernels in GB/s of the
 *                      bytes they must move (input read once + packed codes
 *                      and scales written) vs a device-to-device copy (the
 *                      other numbered versions: build/quant_lab bench)
 *   bench_cuda fused   an output gradient D [16384 × 2048] to both of its
 *                      operands per recipe: the two cq_quantize calls vs
 *                      cq_quantize_dual (quant_fused.cuh), ms and vs copy
 *   bench_cuda step [--config C] [--batch B] [--seq T] [--steps K] [--recipes a,b] [--layers L] [--moe-modes 0,1,2,3]
 *                      (--layers: only the first L layers of the config, for
 *                      a model that does not fit whole, e.g. qwen3-moe-7b-a1.5b;
 *                      --moe-modes: each recipe in each AVERIS_MOE_GROUPED mode,
 *                      rows named recipe/gM, with the modes' time ratios; without
 *                      it the environment's AVERIS_MOE_GROUPED holds)
 *                      one training step (zero grad, forward, backward, norm,
 *                      AdamW) per recipe: ms, tokens/s, MFU, and the ratios
 *                      the paper reports (averis / nvfp4, ...) vs bf16
 *   bench_cuda grouped_gemm [--tokens 8192,16384]
 *                      the MoE experts' GEMMs of moe-small and
 *                      qwen3-moe-7b-a1.5b (tokens routed top-k to E experts
 *                      at random: ragged counts) per GEMM kind of a layer:
 *                      our grouped GEMM (grouped_gemm.cuh, one launch) vs one
 *                      cuBLASLt call per expert (cl_matmul planned by size
 *                      class, as AVERIS_MOE_GROUPED=2 runs them): ms, TFLOP/s,
 *                      the ratio, and their relative difference
 * AVERIS_FUSED_QUANT=0 turns the fewer-pass paths off (step: compare runs).
 * Times are medians of CUDA-event (quant, fused) or synchronised host-clock (step)
 * measurements after warm-up. AVERIS_CUDA_PROFILE=1 turns on the library's
 * profiler (cu_prof_enable): step then prints device time per category.
 */
#include "common.cuh"
#include "quant_fused.cuh"
#include "grouped_gemm.cuh"
#include "qlinear.cuh"
#include "seg.cuh"
#include "../../dev/cuda/tool_util.cuh"
#include "averis/moe.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

/* the library's kernels (the numbered versions: dev/cuda/quant_lab.cu) */
static averis_status library_quantize(const cq_job *j, int, cudaStream_t s) { return cq_quantize(j, s); }

static int bench_quant(void) {
    const int64_t rows = 16384, cols = 4096; /* 256 MiB fp32: far beyond L2 */
    qbench b;
    qbench_init(&b, rows, cols);
    const int library_version = 2; /* the name of the library's rows kernel in the lab */
    qbench_row_versions(&b, &library_version, 1, library_quantize);
    const qbench_row rowsv[] = {
        {"v2 16x16 fp32 (weights), two passes", 0, 1, 0, 0, 0, 0, 0, 0},
        {"v2 wgrad copy (transposed) + RHT + SR", 0, 0, 1, 0, 1, 1, 0, 0},
    };
    qbench_run(&b, rowsv, (int)(sizeof rowsv / sizeof rowsv[0]), library_quantize);
    printf("(two-pass kernels read the input twice: their bound is ~0.53x of copy for fp32 unless the tensor fits in L2)\n");
    /* the Averis column statistics alone (input read once) at this shape and at the 0.6B model's:
     * an activation [8192 x 1024] BF16, an MLP output gradient [8192 x 3072] fp32 */
    printf("\naveris column statistics alone, GB/s of the input read\n");
    const struct { const char *name; int64_t r, c; int bf16; } cs[] = {
        {"colstats fp32 16384x4096", rows, cols, 0},
        {"colstats bf16 8192x1024", 8192, 1024, 1},
        {"colstats fp32 8192x3072", 8192, 3072, 0},
    };
    void *ws = nullptr;
    DEV(cudaMalloc(&ws, cq_ws_bytes(rows, cols)));
    cq_set_workspace(ws, cq_ws_bytes(rows, cols)); /* as the model does: no allocation per call */
    for (const auto &c : cs) {
        double ms = median_ms([&] {
            cq_colstats(c.bf16 ? (const void *)b.xb : (const void *)b.x, c.bf16, c.r, c.c, c.c, b.mean, b.res, nullptr,
                        nullptr, 0);
        });
        double gbs = (double)c.r * c.c * (c.bf16 ? 2 : 4) / (ms * 1e6);
        printf("%-52s %9.3f %9.0f %9.2f\n", c.name, ms, gbs, gbs / b.copy_gbs);
    }
    cq_set_workspace(nullptr, 0);
    cudaFree(ws);
    return 0;
}

/* D [16384 × 2048] fp32 (the output gradient of a 2048-wide linear over
 * 16384 tokens) quantized both ways per recipe, as cl_backward does: the
 * two cq_quantize calls against cq_quantize_dual (each after the column
 * statistics for the split recipes, included in both times). The bytes
 * either must move: D read once (4 B/element) + the two BF16 operands
 * written (2 + 2): the same 8 B/element as a device-to-device copy of D,
 * so "vs copy" = copy ms / ms. */
static int bench_fused(void) {
    const int64_t l = 16384, n = 2048, lp = l, kp = lp + 16, ne = l * n;
    float *D, *mean, *scal;
    __nv_bfloat16 *dq, *dt;
    void *copy_dst;
    DEV(cudaMalloc(&D, ne * 4));
    DEV(cudaMalloc(&copy_dst, ne * 4));
    DEV(cudaMalloc(&dq, ne * 2));
    DEV(cudaMalloc(&dt, n * kp * 2));
    DEV(cudaMalloc(&mean, n * 4));
    DEV(cudaMalloc(&scal, 8 * 4));
    k_bench_fill<<<cu_blocks(ne, 256), 256>>>(D, ne, n, 777);
    DEV(cudaGetLastError());
    void *ws = nullptr;
    DEV(cudaMalloc(&ws, cq_ws_bytes(l, n)));
    cq_set_workspace(ws, cq_ws_bytes(l, n)); /* as the model does */
    double copy_ms = median_ms([&] { cudaMemcpyAsync(copy_dst, D, ne * 4, cudaMemcpyDeviceToDevice); });
    double copy_gbs = 2.0 * ne * 4 / (copy_ms * 1e6);
    printf("D %lld x %lld fp32 to its dgrad operand and wgrad copy (BF16), ms; GB/s of 8 B/element "
           "(D read once + 2 BF16 written)\n", (long long)l, (long long)n);
    printf("%-12s %10s %10s %8s %10s %10s %9s %9s\n", "recipe", "two calls", "fused", "speedup", "GB/s two", "GB/s fused",
           "two/copy", "fused/copy");
    printf("%-12s %10.3f %10s %8s %10.0f %10s %9.2f\n", "d2d copy", copy_ms, "", "", copy_gbs, "", 1.0);
    const char *recipes[] = {"nvfp4", "nvfp4-rht", "averis", "averis-rht"};
    for (const char *name : recipes) {
        qlin_recipe r;
        TOOL_OK(qlin_recipe_parse(name, &r));
        r.seed = 7;
        /* cl_backward's jobs (qlinear.cu: dgrad_job, wgrad_job), row sums on the split */
        cq_job jd = {}, jw = {};
        jd.src = D, jd.srows = l, jd.scols = n, jd.ld = n;
        jd.sr = r.sr, jd.seed = r.seed, jd.stream = 2;
        jd.mean = r.split_d ? mean : nullptr, jd.amax_in = r.split_d ? scal : nullptr;
        jd.amax = scal + 1, jd.bf16_out = dq, jd.ld_out = n;
        jw.src = D, jw.srows = l, jw.scols = n, jw.ld = n, jw.transpose = 1;
        jw.rht = r.rht, jw.sr = r.sr, jw.seed = r.seed, jw.stream = 3;
        jw.mean = jd.mean, jw.amax_in = !r.rht ? scal + 1 : nullptr;
        jw.amax = scal + 2, jw.bf16_out = dt, jw.ld_out = r.split_x ? kp : lp;
        float *rowsum = nullptr;
        if (r.split_x) {
            DEV(cudaMalloc(&rowsum, n * 4));
            jw.rowsum = rowsum;
        }
        if (!cq_dual_fusable(&jd, &jw)) {
            fprintf(stderr, "bench_cuda fused: %s's jobs are not fusable\n", name);
            return 1;
        }
        auto stats = [&] {
            if (r.split_d) cq_colstats(D, 0, l, n, n, mean, scal, nullptr, nullptr, 0);
        };
        double two = median_ms([&] {
            stats();
            cq_quantize(&jd, 0);
            cq_quantize(&jw, 0);
        });
        double fused = median_ms([&] {
            stats();
            cq_quantize_dual(&jd, &jw, 0);
        });
        /* the timings mean something only if both give the same operands */
        auto outputs = [&] {
            DEV(cudaDeviceSynchronize());
            std::vector<uint16_t> h = host_copy(reinterpret_cast<const uint16_t *>(dq), (size_t)ne),
                                  t = host_copy(reinterpret_cast<const uint16_t *>(dt), (size_t)(n * jw.ld_out));
            h.insert(h.end(), t.begin(), t.end());
            return h;
        };
        auto poison = [&] { /* what either leaves unwritten stays equal, the rest is rewritten */
            DEV(cudaMemset(dq, 0xFF, ne * 2));
            DEV(cudaMemset(dt, 0xFF, n * kp * 2));
        };
        poison();
        stats();
        TOOL_OK(cq_quantize(&jd, 0));
        TOOL_OK(cq_quantize(&jw, 0));
        std::vector<uint16_t> ref = outputs();
        poison();
        stats();
        TOOL_OK(cq_quantize_dual(&jd, &jw, 0));
        if (outputs() != ref) {
            fprintf(stderr, "bench_cuda fused: %s: the fused operands differ from the two calls'\n", name);
            return 1;
        }
        double g2 = 8.0 * ne / (two * 1e6), gf = 8.0 * ne / (fused * 1e6);
        printf("%-12s %10.3f %10.3f %7.2fx %10.0f %10.0f %9.2f %9.2f\n", name, two, fused, two / fused, g2, gf,
               g2 / copy_gbs, gf / copy_gbs);
        cudaFree(rowsum);
    }
    printf("(reads of D, two calls → fused: nvfp4 3 → 2, nvfp4-rht 4 → 2, averis 3 → 2, averis-rht 4 → 3, "
           "the column statistics counted)\n");
    cq_set_workspace(nullptr, 0);
    cudaFree(ws); cudaFree(D); cudaFree(copy_dst); cudaFree(dq); cudaFree(dt); cudaFree(mean); cudaFree(scal);
    return 0;
}

/* x [n] BF16 uniform in [-1, 1) from a hash of the index */
static __global__ void k_fill_bf16(__nv_bfloat16 *x, int64_t n, uint32_t seed) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    x[i] = __float2bfloat16_rn((float)(h >> 8) * 0x1p-23f - 1.0f);
}

/* The experts' GEMMs of one MoE layer, as qlinear_group.cu lays them out
 * (seg.cuh: rows from cq_seg_row0, wgrad copies at cq_seg_col0), for C
 * hidden, I expert width, E experts, top-k, `tokens` tokens. Per kind, ours
 * (one gg_run) against the per-expert cuBLASLt loop on the same operands. */
static int bench_gg_shape(const char *name, int64_t C, int64_t I, int E, int k, int64_t tokens) {
    /* routing: k distinct experts per token from a fixed LCG: counts near tokens·k/E, ragged */
    std::vector<int> counts((size_t)E, 0);
    uint64_t st = 4242;
    for (int64_t t = 0; t < tokens; t++) {
        std::vector<int> chosen;
        while ((int)chosen.size() < k) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            int e = (int)((st >> 33) % (uint64_t)E);
            if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
        }
        for (int e : chosen) counts[(size_t)e]++;
    }
    std::vector<int64_t> offs((size_t)E + 1, 0);
    for (int e = 0; e < E; e++) offs[(size_t)e + 1] = offs[(size_t)e] + counts[(size_t)e];
    const int64_t R = offs[(size_t)E], W = std::max(C, I);
    const int64_t rows = cq_seg_rows(R, E), cols = cq_seg_cols(R, E);
    __nv_bfloat16 *xa, *xb, *ta, *tb, *wt;
    float *D, *dW, *alpha;
    DEV(cudaMalloc(&xa, rows * W * 2)); /* rows layout: the first operand (X or the output gradient) */
    DEV(cudaMalloc(&xb, rows * W * 2)); /* rows layout: the BF16 wgrad's second operand */
    DEV(cudaMalloc(&ta, W * cols * 2)); /* wgrad copies [width × Σ kp_e] */
    DEV(cudaMalloc(&tb, W * cols * 2));
    DEV(cudaMalloc(&wt, (int64_t)E * C * I * 2));
    DEV(cudaMalloc(&D, R * W * 4));
    DEV(cudaMalloc(&dW, (int64_t)E * C * I * 4));
    DEV(cudaMalloc(&alpha, E * 4));
    k_fill_bf16<<<cu_blocks(rows * W, 256), 256>>>(xa, rows * W, 1);
    k_fill_bf16<<<cu_blocks(rows * W, 256), 256>>>(xb, rows * W, 2);
    k_fill_bf16<<<cu_blocks(W * cols, 256), 256>>>(ta, W * cols, 3);
    k_fill_bf16<<<cu_blocks(W * cols, 256), 256>>>(tb, W * cols, 4);
    k_fill_bf16<<<cu_blocks((int64_t)E * C * I, 256), 256>>>(wt, (int64_t)E * C * I, 5);
    std::vector<float> al((size_t)E);
    for (int e = 0; e < E; e++) al[(size_t)e] = 0.25f + 0.01f * e;
    DEV(cudaMemcpy(alpha, al.data(), E * 4, cudaMemcpyHostToDevice));
    DEV(cudaMemset(dW, 0, (int64_t)E * C * I * 4));
    DEV(cudaDeviceSynchronize());
    printf("\n%s: C %lld, I %lld, %d experts top-%d, %lld tokens (%lld routed rows; expert rows %d..%d)\n", name,
           (long long)C, (long long)I, E, k, (long long)tokens, (long long)R,
           *std::min_element(counts.begin(), counts.end()), *std::max_element(counts.begin(), counts.end()));
    printf("%-22s %5s %8s %9s %9s %9s %9s %8s %9s\n", "GEMM kind", "trans", "GFLOP", "ours ms", "TFLOP/s", "cuBLASLt",
           "TFLOP/s", "Lt/ours", "rel diff");
    /* kind: (trans, the GEMM per expert); n_out × m_in is the linear's weight shape */
    struct kind {
        const char *what;
        int tA, tB, wgrad; /* wgrad: M, N the weight's, K along tokens; else M = tokens */
        int64_t n, m;      /* forward/dgrad: D [l × n] = op(A) [l × m]·op(B); wgrad: dW [n × m] */
        int fp4;           /* wgrad: K = ⌈l/16⌉·16 + 16 on the wgrad copies, else K = l on the rows */
        int count;         /* how many of this kind a layer's step runs */
    };
    const kind kinds[] = {
        {"fwd gate/up", 0, 1, 0, I, C, 0, 2},       {"fwd down", 0, 1, 0, C, I, 0, 1},
        {"dgrad gate/up", 0, 0, 0, C, I, 0, 2},     {"dgrad down", 0, 0, 0, I, C, 0, 1},
        {"wgrad gate/up fp4", 0, 1, 1, I, C, 1, 2}, {"wgrad down fp4", 0, 1, 1, C, I, 1, 1},
        {"wgrad gate/up bf16", 1, 0, 1, I, C, 0, 2}, {"wgrad down bf16", 1, 0, 1, C, I, 0, 1},
    };
    double tot_ours[2] = {0, 0}, tot_lt[2] = {0, 0}; /* a layer's step: FP4 (fp4 wgrad) and BF16 (bf16 wgrad) */
    for (const kind &kd : kinds) {
        std::vector<gg_gemm> list;
        double flop = 0;
        for (int e = 0; e < E; e++) {
            int64_t l = counts[(size_t)e], o = offs[(size_t)e];
            if (!l) continue;
            gg_gemm g = {};
            g.alpha = alpha + e;
            if (!kd.wgrad) { /* D [l × n]: fwd A = X_e [l × m], B = W_e [n × m]ᵀ; dgrad A = D_e [l × m], B = W_e [m × n] */
                g.M = l, g.N = kd.n, g.K = kd.m;
                g.A = xa + cq_seg_row0(o, e) * kd.m, g.lda = kd.m;
                g.B = wt + (int64_t)e * C * I, g.ldb = kd.tB ? kd.m : kd.n;
                g.D = D + o * kd.n, g.ldd = kd.n;
            } else if (kd.fp4) { /* dW [n × m] += D̄ᵀ·X̄ on the wgrad copies, K = kp */
                int64_t kp = (l + 15) / 16 * 16 + 16, c0 = cq_seg_col0(o, e);
                g.M = kd.n, g.N = kd.m, g.K = kp;
                g.A = ta + kd.n * c0, g.lda = kp, g.B = tb + kd.m * c0, g.ldb = kp;
                g.D = dW + (int64_t)e * C * I, g.ldd = kd.m, g.beta = 1.0f;
            } else { /* dW [n × m] += Dᵀ [n × l]·X [l × m] on the rows, K = l */
                g.M = kd.n, g.N = kd.m, g.K = l;
                g.A = xa + cq_seg_row0(o, e) * kd.n, g.lda = kd.n, g.B = xb + cq_seg_row0(o, e) * kd.m, g.ldb = kd.m;
                g.D = dW + (int64_t)e * C * I, g.ldd = kd.m, g.beta = 1.0f;
            }
            flop += 2.0 * g.M * g.N * g.K;
            list.push_back(g);
        }
        if (const char *why = gg_unsupported(kd.tA, kd.tB, list.data(), (int)list.size())) {
            fprintf(stderr, "bench_cuda grouped_gemm: %s %s: %s\n", name, kd.what, why);
            return 1;
        }
        auto ours = [&] { TOOL_OK(gg_run(kd.tA, kd.tB, list.data(), (int)list.size(), 0)); };
        auto lt = [&] {
            cl_size_class_scope by_class; /* as moe.cu plans the experts' GEMMs */
            for (const gg_gemm &g : list)
                TOOL_OK(cl_matmul(kd.tA, kd.tB, g.M, g.N, g.K, g.alpha, g.A, CUDA_R_16BF, g.lda, g.B, CUDA_R_16BF, g.ldb,
                                  g.beta != 0.0f ? cl_one() : cl_zero(), g.D, g.D, CUDA_R_32F, g.ldd, nullptr, 0));
        };
        /* the same results first (from zeroed outputs), else the times mean nothing */
        float *out = kd.wgrad ? dW : D;
        size_t out_n = kd.wgrad ? (size_t)E * C * I : (size_t)(R * kd.n);
        DEV(cudaMemset(out, 0, out_n * 4));
        ours();
        std::vector<float> a = host_copy(out, out_n);
        DEV(cudaMemset(out, 0, out_n * 4));
        lt();
        std::vector<float> b = host_copy(out, out_n);
        double num = 0, den = 0;
        for (size_t i = 0; i < out_n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        double ms_o = median_ms(ours), ms_l = median_ms(lt);
        printf("%-22s    %d%d %8.2f %9.3f %9.1f %9.3f %9.1f %8.2f %9.1e%s\n", kd.what, kd.tA, kd.tB, flop / 1e9, ms_o,
               flop / ms_o / 1e9, ms_l, flop / ms_l / 1e9, ms_l / ms_o, rel, rel > 1e-5 ? "  DIFFERENT" : "");
        if (rel > 1e-5) return 1;
        for (int p = 0; p < 2; p++)
            if (!kd.wgrad || kd.fp4 == (p == 0)) tot_ours[p] += kd.count * ms_o, tot_lt[p] += kd.count * ms_l;
    }
    printf("a layer's expert GEMMs (gate, up, down: fwd + dgrad + wgrad), FP4 recipes: ours %.3f ms, cuBLASLt per "
           "expert %.3f ms, Lt/ours %.2f; BF16: ours %.3f ms, Lt %.3f ms, Lt/ours %.2f\n", tot_ours[0], tot_lt[0],
           tot_lt[0] / tot_ours[0], tot_ours[1], tot_lt[1], tot_lt[1] / tot_ours[1]);
    cudaFree(xa), cudaFree(xb), cudaFree(ta), cudaFree(tb), cudaFree(wt), cudaFree(D), cudaFree(dW), cudaFree(alpha);
    return 0;
}

static int bench_grouped_gemm(int argc, char **argv) {
    const char *tokens_csv = "8192,16384";
    for (int i = 0; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokens")) tokens_csv = argv[i + 1];
        else { fprintf(stderr, "bench_cuda grouped_gemm: unknown option %s\n", argv[i]); return 2; }
    }
    TOOL_OK(cl_lt_ready()); /* cl_one() / cl_zero() */
    printf("the MoE experts' GEMMs: our grouped GEMM (one launch per kind) vs one cuBLASLt GEMM per expert; BF16 "
           "operands, fp32 output, α per expert from the device; medians of 20 CUDA-event timings\n");
    struct { const char *config; } presets[] = {{"moe-small"}, {"qwen3-moe-7b-a1.5b"}};
    for (const auto &p : presets) {
        model_config cfg;
        TOOL_OK(model_config_load(p.config, &cfg));
        const char *c = tokens_csv;
        while (*c) {
            long long t = strtoll(c, nullptr, 10);
            if (t <= 0) { fprintf(stderr, "bench_cuda grouped_gemm: --tokens %s\n", tokens_csv); return 2; }
            if (int rc = bench_gg_shape(p.config, cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                                        cfg.num_experts_per_tok, t))
                return rc;
            c = strchr(c, ',');
            if (!c) break;
            c++;
        }
    }
    return 0;
}

static double now_s(void) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static int bench_step(int argc, char **argv) {
    const char *config = "qwen3-0.6b", *recipes = "bf16,nvfp4,nvfp4-rht,averis,averis-rht";
    const char *moe_modes = nullptr;
    int B = 8, T = 1024, steps = 5, layers = 0;
    for (int i = 0; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--recipes")) recipes = argv[i + 1];
        else if (!strcmp(argv[i], "--layers")) layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--moe-modes")) moe_modes = argv[i + 1];
        else { fprintf(stderr, "bench_cuda step: unknown option %s\n", argv[i]); return 2; }
    }
    model_config cfg;
    TOOL_OK(model_config_load(config, &cfg));
    if (layers < 0 || layers > cfg.num_hidden_layers) {
        fprintf(stderr, "bench_cuda step: --layers %d: the config has %d\n", layers, cfg.num_hidden_layers);
        return 2;
    }
    if (layers) cfg.num_hidden_layers = layers;
    model m;
    TOOL_OK(model_create(&m, &cfg));
    model_init_weights(&m, 1);
    int64_t N = (int64_t)B * T;
    std::vector<int> tok, tgt;
    tool_random_batch(cfg.vocab_size, N, tok, tgt);
    /* flops per token: 6·params (matmuls fwd+bwd, the tied head once; a MoE
     * layer's active ones: router + k experts) + attention QKᵀ and PV over all T² */
    double active = (double)model_config_nparams(&cfg);
    for (int l = 0; l < cfg.num_hidden_layers; l++)
        if (model_layer_is_moe(&cfg, l)) active -= (double)(moe_layer_nparams(&cfg) - moe_layer_active_nparams(&cfg));
    double flops_tok = 6.0 * active +
                       12.0 * cfg.num_hidden_layers * (double)cfg.num_attention_heads * cfg.head_dim * T;
    printf("training step, %s (%d layers, %.3gB parameters, %.3gB active), %d x %d tokens, %d timed steps after 2 "
           "warm-up\n", config, cfg.num_hidden_layers, (double)model_config_nparams(&cfg) / 1e9, active / 1e9, B, T, steps);
    printf("fewer-pass quantization (AVERIS_FUSED_QUANT): %s\n", cq_fused_quant() ? "on" : "off");
    printf("%-12s %10s %12s %8s %10s\n", "recipe", "ms/step", "tokens/s", "MFU", "loss");
    std::vector<std::pair<std::string, double>> res;
    auto split = [](const char *csv) {
        std::vector<std::string> out;
        std::string list = csv;
        size_t p0 = 0;
        while (p0 <= list.size()) {
            size_t p1 = list.find(',', p0);
            if (p1 == std::string::npos) p1 = list.size();
            if (p1 > p0) out.push_back(list.substr(p0, p1 - p0));
            p0 = p1 + 1;
        }
        return out;
    };
    std::vector<std::string> modes = moe_modes ? split(moe_modes) : std::vector<std::string>{""};
    if (moe_modes && !cfg.num_experts) fprintf(stderr, "bench_cuda step: --moe-modes on a dense config: no effect\n");
    for (const std::string &recipe : split(recipes))
    for (const std::string &mode : modes) {
        std::string name = recipe + (mode.empty() ? "" : "/g" + mode);
        if (!mode.empty()) setenv("AVERIS_MOE_GROUPED", mode.c_str(), 1); /* read by avc_model_create (cuda/moe.cu) */
        TOOL_OK(qlin_recipe_parse(recipe.c_str(), &m.recipe));
        m.recipe.seed = 7;
        avc_model *net;
        avc_model_opts opts;
        TOOL_OK(avc_model_opts_parse(getenv("AVERIS_ACT"), getenv("AVERIS_ATTN"), "AVERIS_ACT", "AVERIS_ATTN", &opts));
        TOOL_OK(avc_model_create(&net, &m, B, T, &opts));
        if (res.empty()) printf("(%s)\n", avc_model_describe(net));
        std::vector<double> t;
        float loss = 0;
        for (int k = 0; k < steps + 2; k++) {
            if (k == 2) cu_prof_reset();
            double t0 = now_s();
            double norm;
            TOOL_OK(avc_model_zero_grad(net));
            TOOL_OK(avc_model_step(net, tok.data(), tgt.data(), 1, 1.0f, (uint64_t)k, &loss));
            TOOL_OK(avc_model_grad_norm(net, &norm));
            TOOL_OK(avc_model_adamw(net, 1e-4, 0.9, 0.95, 1e-8, 0.1, k + 1, norm > 1.0 ? (float)(1.0 / norm) : 1.0f));
            DEV(cudaDeviceSynchronize());
            if (k >= 2) t.push_back(now_s() - t0);
        }
        std::sort(t.begin(), t.end());
        double sec = t[t.size() / 2];
        double mfu = flops_tok * N / sec / 989e12;
        printf("%-12s %10.1f %12.0f %7.1f%% %10.4f\n", name.c_str(), sec * 1e3, N / sec, 100 * mfu, loss);
        cu_prof_report(steps); /* AVERIS_CUDA_PROFILE=1: where the step's device time goes */
        fflush(stdout);
        res.push_back({name, sec});
        avc_model_free(net);
    }
    auto get = [&](const char *nm) {
        for (auto &r : res)
            if (r.first == nm) return r.second;
        return 0.0;
    };
    const char *pairs[][2] = {{"averis", "nvfp4"}, {"nvfp4-rht", "nvfp4"}, {"averis-rht", "nvfp4"}, {"nvfp4", "bf16"}};
    for (const std::string &mode : modes) {
        std::string sfx = mode.empty() ? "" : "/g" + mode;
        printf("ratios (same run)%s: ", mode.empty() ? "" : (", AVERIS_MOE_GROUPED=" + mode).c_str());
        for (auto &pr : pairs) {
            std::string a = pr[0] + sfx, b = pr[1] + sfx;
            if (get(a.c_str()) > 0 && get(b.c_str()) > 0) printf("%s/%s %.3f  ", pr[0], pr[1], get(a.c_str()) / get(b.c_str()));
        }
        printf("\n");
    }
    if (modes.size() > 1) { /* each mode's time over the first mode's, per recipe */
        printf("time ratios between AVERIS_MOE_GROUPED modes (same run): ");
        for (const std::string &recipe : split(recipes))
            for (size_t i = 1; i < modes.size(); i++) {
                std::string a = recipe + "/g" + modes[i], b = recipe + "/g" + modes[0];
                if (get(a.c_str()) > 0 && get(b.c_str()) > 0)
                    printf("%s g%s/g%s %.3f  ", recipe.c_str(), modes[i].c_str(), modes[0].c_str(), get(a.c_str()) / get(b.c_str()));
            }
        printf("\n");
    }
    printf("(MFU against 989 TFLOP/s, the H100 SXM dense BF16 peak; flops/token = 6·params + 12·L·H·Dh·T)\n");
    model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    tool_device_init("bench_cuda");
    const char *prof = getenv("AVERIS_CUDA_PROFILE");
    cu_prof_enable(prof && atoi(prof) > 0); /* where the step's device time goes, by category */
    if (argc > 1 && !strcmp(argv[1], "quant")) return bench_quant();
    if (argc > 1 && !strcmp(argv[1], "step")) return bench_step(argc - 2, argv + 2);
    if (argc > 1 && !strcmp(argv[1], "fused")) return bench_fused();
    if (argc > 1 && !strcmp(argv[1], "grouped_gemm")) return bench_grouped_gemm(argc - 2, argv + 2);
    fprintf(stderr, "usage: bench_cuda quant | fused | grouped_gemm [--tokens 8192,16384] | step [--config C] [--batch B] "
                    "[--seq T] [--steps K] [--recipes a,b] [--layers L] [--moe-modes 0,1,2,3]\n");
    return 2;
}
