/* grouped_gemm_check.cu — our grouped GEMM (cuda/grouped_gemm.cuh) against
 * an fp64 product on the host (registered in test_cuda.cu, group "moe_"):
 *   moe_grouped_gemm_vs_fp64   per transpose pair, one list of GEMMs of
 *       ragged shapes in one launch: M of 0, 1, 15, 17, 130, 257 rows; N and K
 *       not multiples of the 128×128×32 tile; K = 0; K not a multiple of 8
 *       where K is no operand's contiguous dimension (transposed A, plain
 *       B: the BF16 wgrad); leading dimensions above the extents; α from the
 *       device (and NULL = 1), β = 1 accumulating, bias rows. Then 150 small
 *       GEMMs (two launches: 128 + 22) and a refused list. Per element:
 *           |D − D_ref| ≤ 1e-5·max(K, 1)·|α|·max|a|·max|b| + 1e-6·(|β·D0| + |bias|)
 *       (D_ref in fp64 from the same BF16 values; the products are exact in
 *       fp32, so the error is the fp32 summation's), plus the relative L2
 *       error of each GEMM ≤ 1e-5; D's padding columns and the row after
 *       the last are left untouched (bit for bit); a second run gives the
 *       same bits.
 */
#include "grouped_gemm.cuh"
#include "../../dev/cuda/tool_util.cuh"
#include "averis/half.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
#include "../check.h"
}

namespace {

/* one GEMM of a test list: sizes and options */
struct gg_spec {
    int64_t M, N, K;
    float alpha; /* 0: NULL (1) */
    int beta1, bias;
    int64_t pad_a, pad_b, pad_d; /* added to the minimal leading dimensions (pad_d even) */
};

/* A device arena: 256-byte aligned slices */
struct arena {
    char *base = nullptr;
    size_t used = 0, cap = 0;
    void *take(size_t bytes) {
        size_t off = (used + 255) & ~(size_t)255;
        used = off + bytes;
        if (used > cap) return nullptr;
        return base + off;
    }
};

const float k_sentinel = -12345.5f; /* D's cells outside [M × N] keep it */

/* Runs the list in one gg_run (or several, past GG_MAX_GROUPS) and checks
 * every GEMM; returns the worst error relative to the bound. */
double check_list(int tA, int tB, const std::vector<gg_spec> &specs, const char *tag, trng *rg) {
    const int n = (int)specs.size();
    struct host_gemm {
        std::vector<uint16_t> a, b;
        std::vector<float> d0, bias;
        int64_t lda, ldb, ldd, rows_a, rows_b;
    };
    std::vector<host_gemm> h((size_t)n);
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        const gg_spec &s = specs[(size_t)i];
        host_gemm &q = h[(size_t)i];
        /* stored shapes: A [M×K] or [K×M], B [K×N] or [N×K] */
        q.rows_a = tA ? s.K : s.M, q.lda = (tA ? s.M : s.K) + s.pad_a;
        q.rows_b = tB ? s.N : s.K, q.ldb = (tB ? s.K : s.N) + s.pad_b;
        q.ldd = s.N + (s.N & 1) + s.pad_d;
        q.a.resize((size_t)(q.rows_a * q.lda)), q.b.resize((size_t)(q.rows_b * q.ldb));
        for (auto &v : q.a) v = bf16_from_f32(trng_normal(rg));
        for (auto &v : q.b) v = bf16_from_f32(trng_normal(rg) * 0.5f + 0.1f);
        q.d0.assign((size_t)((s.M + 1) * q.ldd), k_sentinel);
        if (s.beta1)
            for (int64_t r = 0; r < s.M; r++)
                for (int64_t c = 0; c < s.N; c++) q.d0[(size_t)(r * q.ldd + c)] = 3.0f * trng_normal(rg);
        if (s.bias) {
            q.bias.resize((size_t)s.N);
            for (auto &v : q.bias) v = trng_normal(rg);
        }
        bytes += q.a.size() * 2 + q.b.size() * 2 + q.d0.size() * 4 + q.bias.size() * 4 + 4 + 5 * 256;
    }
    arena ar;
    DEV(cudaMalloc(&ar.base, bytes));
    ar.cap = bytes;
    std::vector<gg_gemm> g((size_t)n);
    for (int i = 0; i < n; i++) {
        const gg_spec &s = specs[(size_t)i];
        host_gemm &q = h[(size_t)i];
        gg_gemm &x = g[(size_t)i];
        x.M = s.M, x.N = s.N, x.K = s.K, x.lda = q.lda, x.ldb = q.ldb, x.ldd = q.ldd;
        x.A = static_cast<__nv_bfloat16 *>(ar.take(q.a.size() * 2));
        x.B = static_cast<__nv_bfloat16 *>(ar.take(q.b.size() * 2));
        x.D = static_cast<float *>(ar.take(q.d0.size() * 4));
        DEV(cudaMemcpy(const_cast<__nv_bfloat16 *>(x.A), q.a.data(), q.a.size() * 2, cudaMemcpyHostToDevice));
        DEV(cudaMemcpy(const_cast<__nv_bfloat16 *>(x.B), q.b.data(), q.b.size() * 2, cudaMemcpyHostToDevice));
        DEV(cudaMemcpy(x.D, q.d0.data(), q.d0.size() * 4, cudaMemcpyHostToDevice));
        if (s.alpha != 0.0f) {
            float *al = static_cast<float *>(ar.take(4));
            DEV(cudaMemcpy(al, &s.alpha, 4, cudaMemcpyHostToDevice));
            x.alpha = al;
        }
        x.beta = s.beta1 ? 1.0f : 0.0f;
        if (s.bias) {
            float *b = static_cast<float *>(ar.take(q.bias.size() * 4));
            DEV(cudaMemcpy(b, q.bias.data(), q.bias.size() * 4, cudaMemcpyHostToDevice));
            x.bias = b;
        }
    }
    const char *why = gg_unsupported(tA, tB, g.data(), n);
    CHECK(!why, "%s: refused: %s", tag, why ? why : "");
    long long launches0 = gg_launches();
    CHECK(gg_run(tA, tB, g.data(), n, 0) == AVERIS_OK, "%s: gg_run: %s", tag, averis_last_error());
    DEV(cudaDeviceSynchronize());
    int nonempty = 0;
    for (const gg_spec &s : specs) nonempty += s.M > 0 && s.N > 0;
    long long want = (nonempty + GG_MAX_GROUPS - 1) / GG_MAX_GROUPS;
    CHECK(gg_launches() - launches0 == want, "%s: %lld launches for %d non-empty GEMMs (want %lld)", tag,
          gg_launches() - launches0, nonempty, want);
    double worst = 0.0;
    std::vector<std::vector<float>> got((size_t)n);
    for (int i = 0; i < n; i++) {
        const gg_spec &s = specs[(size_t)i];
        const host_gemm &q = h[(size_t)i];
        got[(size_t)i] = host_copy(g[(size_t)i].D, q.d0.size());
        const std::vector<float> &d = got[(size_t)i];
        double amax = 0, bmax = 0;
        for (uint16_t v : q.a) amax = fmax(amax, fabs(bf16_to_f32(v)));
        for (uint16_t v : q.b) bmax = fmax(bmax, fabs(bf16_to_f32(v)));
        const double al = s.alpha != 0.0f ? s.alpha : 1.0;
        const double scale = 1e-5 * (double)(s.K > 1 ? s.K : 1) * fabs(al) * amax * bmax;
        double num = 0, den = 0, ratio = 0;
        int64_t bad = -1, untouched_bad = -1;
        double bad_got = 0, bad_ref = 0;
        for (int64_t r = 0; r <= s.M; r++)
            for (int64_t c = 0; c < q.ldd; c++) {
                size_t at = (size_t)(r * q.ldd + c);
                if (r == s.M || c >= s.N) { /* outside D: untouched */
                    if (untouched_bad < 0 && memcmp(&d[at], &q.d0[at], 4)) untouched_bad = (int64_t)at;
                    continue;
                }
                double acc = 0;
                for (int64_t k = 0; k < s.K; k++) {
                    double a = bf16_to_f32(q.a[(size_t)(tA ? k * q.lda + r : r * q.lda + k)]);
                    double b = bf16_to_f32(q.b[(size_t)(tB ? c * q.ldb + k : k * q.ldb + c)]);
                    acc += a * b;
                }
                double extra = (s.beta1 ? (double)q.d0[at] : 0.0) + (s.bias ? (double)q.bias[(size_t)c] : 0.0);
                double ref = al * acc + extra;
                double err = fabs((double)d[at] - ref);
                double bound = scale + 1e-6 * (fabs(s.beta1 ? (double)q.d0[at] : 0.0) + (s.bias ? fabs((double)q.bias[(size_t)c]) : 0.0)) + 1e-30;
                ratio = fmax(ratio, err / bound);
                if (!(err <= bound) && bad < 0) bad = (int64_t)at, bad_got = d[at], bad_ref = ref;
                num += err * err, den += ref * ref;
            }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        CHECK(bad < 0, "%s: GEMM %d (M %lld N %lld K %lld) at row %lld col %lld: %.9g vs fp64 %.9g", tag, i,
              (long long)s.M, (long long)s.N, (long long)s.K, (long long)(bad < 0 ? 0 : bad / q.ldd),
              (long long)(bad < 0 ? 0 : bad % q.ldd), bad_got, bad_ref);
        CHECK(rel <= 1e-5, "%s: GEMM %d (M %lld N %lld K %lld): relative L2 error %.3g > 1e-5", tag, i, (long long)s.M,
              (long long)s.N, (long long)s.K, rel);
        CHECK(untouched_bad < 0, "%s: GEMM %d (M %lld N %lld K %lld) wrote outside D at element %lld", tag, i,
              (long long)s.M, (long long)s.N, (long long)s.K, (long long)untouched_bad);
        worst = fmax(worst, ratio);
    }
    /* a second run from the same D0: the same bits */
    for (int i = 0; i < n; i++)
        DEV(cudaMemcpy(g[(size_t)i].D, h[(size_t)i].d0.data(), h[(size_t)i].d0.size() * 4, cudaMemcpyHostToDevice));
    CHECK(gg_run(tA, tB, g.data(), n, 0) == AVERIS_OK, "%s: second gg_run: %s", tag, averis_last_error());
    DEV(cudaDeviceSynchronize());
    for (int i = 0; i < n; i++) {
        std::vector<float> again = host_copy(g[(size_t)i].D, h[(size_t)i].d0.size());
        int64_t at = tool_first_diff(again.data(), got[(size_t)i].data(), again.size() * 4, 1);
        CHECK(at < 0, "%s: GEMM %d: a second run differs at element %lld", tag, i, (long long)at);
    }
    cudaFree(ar.base);
    return worst;
}

int64_t up8(int64_t x) { return (x + 7) / 8 * 8; }

} // namespace

void test_moe_grouped_gemm_vs_fp64(void) {
    trng rg = {9090};
    /* M, N, K before rounding the contiguous dimensions up to multiples of 8 */
    const int64_t shapes[][3] = {{0, 40, 64},  {1, 8, 8},      {15, 136, 40}, {17, 264, 72},  {130, 128, 1040},
                                 {64, 48, 0},  {257, 200, 136}, {33, 16, 520}, {128, 128, 32}, {200, 72, 17},
                                 {5, 1, 100},  {130, 384, 37}};
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    printf("  %-22s %6s %10s\n", "list", "GEMMs", "worst err/bound");
    for (int t = 0; t < 4; t++) {
        int tA = t >> 1, tB = t & 1;
        std::vector<gg_spec> specs;
        for (int i = 0; i < nshapes; i++) {
            gg_spec s = {};
            s.M = shapes[i][0], s.N = shapes[i][1], s.K = shapes[i][2];
            /* the contiguous dimensions: K of a plain A / transposed B, M of a transposed A, N of a plain B */
            if (!tA || tB) s.K = up8(s.K);
            if (tA) s.M = up8(s.M);
            if (!tB) s.N = up8(s.N);
            s.alpha = i % 3 == 0 ? 0.0f : 0.25f + 0.375f * (float)i;
            s.beta1 = i & 1;
            s.bias = i % 4 == 1 || i % 4 == 2;
            s.pad_a = 8 * (i % 2), s.pad_b = 8 * ((i / 2) % 2), s.pad_d = 2 * (i % 3);
            specs.push_back(s);
        }
        char tag[64];
        snprintf(tag, sizeof tag, "ragged, trans %d%d", tA, tB);
        double w = check_list(tA, tB, specs, tag, &rg);
        printf("  %-22s %6d %10.2e\n", tag, nshapes, w);
    }
    /* many small GEMMs: two launches (128 + the rest) */
    for (int t : {1, 2}) {
        int tA = t >> 1, tB = t & 1;
        std::vector<gg_spec> specs;
        for (int i = 0; i < 150; i++) {
            gg_spec s = {};
            s.M = (int64_t)(trng_u64(&rg) % 41), s.N = 8 * (1 + (int64_t)(trng_u64(&rg) % 5)),
            s.K = 8 * (1 + (int64_t)(trng_u64(&rg) % 6));
            if (tA) s.M = up8(s.M);
            s.alpha = i % 2 ? 0.5f : 0.0f, s.beta1 = i % 3 == 0, s.bias = i % 5 == 0;
            specs.push_back(s);
        }
        char tag[64];
        snprintf(tag, sizeof tag, "150 small, trans %d%d", tA, tB);
        double w = check_list(tA, tB, specs, tag, &rg);
        printf("  %-22s %6d %10.2e\n", tag, 150, w);
    }
    /* refused with a reason, nothing launched: K (contiguous in a plain A) not a multiple of 8; a misaligned A */
    {
        gg_gemm g = {};
        g.M = 16, g.N = 16, g.K = 12, g.lda = 16, g.ldb = 16, g.ldd = 16;
        g.A = reinterpret_cast<const __nv_bfloat16 *>(256), g.B = g.A, g.D = reinterpret_cast<float *>(256);
        long long l0 = gg_launches();
        const char *why = gg_unsupported(0, 0, &g, 1);
        CHECK(why && strstr(why, "multiple of 8"), "K 12 with a plain A: %s", why ? why : "accepted");
        CHECK(gg_run(0, 0, &g, 1, 0) == AVERIS_EINVAL && strstr(averis_last_error(), "multiple of 8"),
              "gg_run of a refused list: %s", averis_last_error());
        g.K = 16, g.A = reinterpret_cast<const __nv_bfloat16 *>(264);
        why = gg_unsupported(0, 0, &g, 1);
        CHECK(why && strstr(why, "aligned"), "a misaligned A: %s", why ? why : "accepted");
        CHECK(gg_launches() == l0, "a refused list launched");
    }
}
