/* test_cudnn_att.cu — cuDNN attention (cuda/cudnn_att.cu) against an fp64
 * causal GQA reference on the host, on a GPU.
 *
 *   cudnn_attention         O, lse, dQ, dK, dV for Dh 64 and 128, several
 *                           (B, T, H, KV) including T % 64 != 0, in the
 *                           model's layouts (Q, K, V, dO head-major; O
 *                           token-major) and all token-major; the inference
 *                           forward (no lse); the deterministic backward
 *                           repeated gives the same bits
 *   cudnn_attention_errors  bad shapes, head dims and misaligned pointers
 *                           come back as errors that name what was wrong
 *   cudnn_validate          every graph above and the bench's, validated on
 *                           the host for sm_90 (`validate` runs it before
 *                           the GPU is set up; frontend 1.32 still needs a GPU)
 *
 * Errors are relative L2: ‖got − ref‖₂ / ‖ref‖₂ over the tensor (flash.cu's
 * test metric); bounds O 1e-2, dQ dK dV 2e-2, lse 5e-3 absolute.
 *
 *   build/test_cudnn_att           the tests; ends "N passed, N failed"
 *   build/test_cudnn_att validate  the graphs checked on the host only
 *   build/test_cudnn_att bench     fwd, bwd, fwd+bwd ms at the Qwen3-0.6B
 *                                  shape (B 8, T 1024, H 16, KV 8, Dh 128),
 *                                  deterministic and not, next to flash.cu
 *
 * test_cudnn_attention, test_cudnn_attention_errors and test_cudnn_validate
 * can join test_cuda's list: compile this file with
 * -DAVERIS_CUDNN_TEST_NO_MAIN and link it in.
 */
#include "common.cuh"
#include "cudnn_att.cuh"
#include "flash.cuh"
#include "averis/half.h"
#include "../../dev/cuda/tool_util.cuh"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "../check.h"
#include "run_tests.cuh"
}

typedef __nv_bfloat16 nvbf16;

namespace {

/* A BF16 tensor [B, heads, T, Dh] on the host, head-major, as bits and as
 * the float values they hold */
struct host_bf16 {
    std::vector<uint16_t> bits;
    std::vector<float> val;
};

host_bf16 random_bf16(size_t n, float sc, trng *r) {
    host_bf16 h;
    h.bits.resize(n);
    h.val.resize(n);
    for (size_t i = 0; i < n; i++) {
        h.bits[i] = bf16_from_f32(sc * trng_normal(r));
        h.val[i] = bf16_to_f32(h.bits[i]);
    }
    return h;
}

/* the element (b, h, t, d) of a head-major [B, heads, T, Dh] tensor */
inline size_t hm(int b, int h, int t, int d, int heads, int T, int Dh) {
    return (((size_t)b * heads + h) * T + t) * Dh + d;
}

/* head-major host bits → a device buffer in layout lay (its ptr ignored) */
nvbf16 *upload(const std::vector<uint16_t> &src, ccd_tensor lay, int B, int heads, int T, int Dh) {
    std::vector<uint16_t> dst(src.size());
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < Dh; d++)
                    dst[b * lay.sb + h * lay.sh + t * lay.st + d] = src[hm(b, h, t, d, heads, T, Dh)];
    nvbf16 *p;
    DEV(cudaMalloc(&p, dst.size() * 2));
    DEV(cudaMemcpy(p, dst.data(), dst.size() * 2, cudaMemcpyHostToDevice));
    return p;
}
/* a device buffer in layout lay → head-major floats */
std::vector<float> download(const nvbf16 *p, ccd_tensor lay, int B, int heads, int T, int Dh) {
    size_t n = (size_t)B * heads * T * Dh;
    std::vector<uint16_t> raw(n);
    DEV(cudaMemcpy(raw.data(), p, n * 2, cudaMemcpyDeviceToHost));
    std::vector<float> out(n);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < Dh; d++)
                    out[hm(b, h, t, d, heads, T, Dh)] = bf16_to_f32(raw[b * lay.sb + h * lay.sh + t * lay.st + d]);
    return out;
}
nvbf16 *dev_nan(size_t n) { /* 0xFFFF is a BF16 NaN: an element never written shows */
    nvbf16 *p;
    DEV(cudaMalloc(&p, n * 2));
    DEV(cudaMemset(p, 0xFF, n * 2));
    return p;
}

double rel_l2(const std::vector<float> &got, const std::vector<double> &ref) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < ref.size(); i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The spec, fp64, head-major: for each (b, h, t), P = softmax over j ≤ t of
 * Q_t·K_j/√Dh (K, V of kv head h / (H/KV)), O_t = Σ P_j V_j, lse = log Σ
 * exp(S); dP_j = dO_t·V_j, dS_j = P_j (dP_j − Σ P dP), dQ_t += dS_j K_j/√Dh,
 * dK_j += dS_j Q_t/√Dh, dV_j += P_j dO_t. */
void reference(int B, int T, int H, int KV, int Dh, const float *q, const float *k, const float *v, const float *dO,
               std::vector<double> &O, std::vector<double> &lse, std::vector<double> &dQ, std::vector<double> &dK,
               std::vector<double> &dV) {
    int grp = H / KV;
    double scale = 1.0 / sqrt((double)Dh);
    O.assign((size_t)B * H * T * Dh, 0.0), dQ.assign(O.size(), 0.0), lse.assign((size_t)B * H * T, 0.0);
    dK.assign((size_t)B * KV * T * Dh, 0.0), dV.assign(dK.size(), 0.0);
    std::vector<double> P(T), dP(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / grp;
            for (int t = 0; t < T; t++) {
                const float *Q = q + hm(b, h, t, 0, H, T, Dh), *dOt = dO + hm(b, h, t, 0, H, T, Dh);
                double mx = -1e300, sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    const float *Kj = k + hm(b, g, j, 0, KV, T, Dh);
                    double s = 0.0;
                    for (int d = 0; d < Dh; d++) s += (double)Q[d] * Kj[d];
                    P[j] = s * scale;
                    mx = P[j] > mx ? P[j] : mx;
                }
                for (int j = 0; j <= t; j++) sum += (P[j] = exp(P[j] - mx));
                lse[((size_t)b * H + h) * T + t] = mx + log(sum);
                for (int j = 0; j <= t; j++) P[j] /= sum;
                double *Ot = &O[hm(b, h, t, 0, H, T, Dh)];
                double pdp = 0.0;
                for (int j = 0; j <= t; j++) {
                    const float *Vj = v + hm(b, g, j, 0, KV, T, Dh);
                    double acc = 0.0;
                    for (int d = 0; d < Dh; d++) {
                        Ot[d] += P[j] * Vj[d];
                        acc += (double)dOt[d] * Vj[d];
                    }
                    dP[j] = acc;
                    pdp += P[j] * acc;
                }
                for (int j = 0; j <= t; j++) {
                    double ds = P[j] * (dP[j] - pdp) * scale;
                    const float *Kj = k + hm(b, g, j, 0, KV, T, Dh);
                    double *dQt = &dQ[hm(b, h, t, 0, H, T, Dh)], *dKj = &dK[hm(b, g, j, 0, KV, T, Dh)],
                           *dVj = &dV[hm(b, g, j, 0, KV, T, Dh)];
                    for (int d = 0; d < Dh; d++) {
                        dQt[d] += ds * Kj[d];
                        dKj[d] += ds * Q[d];
                        dVj[d] += P[j] * dOt[d];
                    }
                }
            }
        }
}

/* The layouts of one case: the model's today (Q, K, V, dO and the
 * gradients head-major, O token-major), or everything token-major */
enum { LAY_MODEL, LAY_TOKENS };

/* One case's inputs on the device and its fp64 reference */
struct att_case {
    int B, T, H, KV, Dh, lay;
    size_t nq, nk;
    ccd_tensor q, k, v, dO; /* device inputs */
    ccd_tensor Lq, Lk, Lo;  /* the layouts of Q (dO, dQ), K (V, dK, dV) and O */
    std::vector<double> O, lse, dQ, dK, dV;
};

/* Runs case a through context c (deterministic or not): forward with lse,
 * backward, the inference forward; checks against the reference; for the
 * deterministic context, the backward again must give the same bits.
 * Prints one PASS/FAIL line. */
void run_case(ccd_ctx *c, int det, const att_case &a) {
    int B = a.B, T = a.T, H = a.H, KV = a.KV, Dh = a.Dh, before = g_check_failed;
    char shape[48];
    snprintf(shape, sizeof shape, "B%d T%d H%d KV%d Dh%d %s", B, T, H, KV, Dh, det ? "det" : "fast");
    ccd_tensor o = a.Lo, o2 = a.Lo, dq = a.Lq, dk = a.Lk, dv = a.Lk;
    o.ptr = dev_nan(a.nq), o2.ptr = dev_nan(a.nq), dq.ptr = dev_nan(a.nq), dk.ptr = dev_nan(a.nk),
    dv.ptr = dev_nan(a.nk);
    float *lse;
    DEV(cudaMalloc(&lse, (size_t)B * H * T * 4));
    DEV(cudaMemset(lse, 0xFF, (size_t)B * H * T * 4)); /* NaN until written */
    averis_status st = ccd_forward(c, B, T, H, KV, Dh, a.q, a.k, a.v, o, lse, 0);
    CHECK(st == AVERIS_OK, "%s: ccd_forward: %s", shape, averis_last_error());
    if (st == AVERIS_OK) {
        st = ccd_backward(c, B, T, H, KV, Dh, a.q, a.k, a.v, o, a.dO, lse, dq, dk, dv, 0);
        CHECK(st == AVERIS_OK, "%s: ccd_backward: %s", shape, averis_last_error());
    }
    averis_status st_inf = ccd_forward(c, B, T, H, KV, Dh, a.q, a.k, a.v, o2, nullptr, 0);
    CHECK(st_inf == AVERIS_OK, "%s: ccd_forward (inference): %s", shape, averis_last_error());
    DEV(cudaDeviceSynchronize());
    if (st == AVERIS_OK) {
        std::vector<float> glse((size_t)B * H * T);
        DEV(cudaMemcpy(glse.data(), lse, glse.size() * 4, cudaMemcpyDeviceToHost));
        double lse_err = 0.0;
        size_t ilse = 0;
        for (size_t i = 0; i < glse.size(); i++) {
            double e = fabs((double)glse[i] - a.lse[i]);
            if (!(e <= lse_err)) lse_err = e, ilse = i; /* NaN counts as the worst */
        }
        double eo = rel_l2(download((nvbf16 *)o.ptr, a.Lo, B, H, T, Dh), a.O),
               eq = rel_l2(download((nvbf16 *)dq.ptr, a.Lq, B, H, T, Dh), a.dQ),
               ek = rel_l2(download((nvbf16 *)dk.ptr, a.Lk, B, KV, T, Dh), a.dK),
               ev = rel_l2(download((nvbf16 *)dv.ptr, a.Lk, B, KV, T, Dh), a.dV);
        CHECK(eo <= 1e-2, "%s: O rel L2 error %.3g > 1e-2", shape, eo);
        CHECK(lse_err <= 5e-3, "%s: lse[%zu] = %.6g, reference %.6g (|diff| %.3g > 5e-3)", shape, ilse,
              (double)glse[ilse], a.lse[ilse], lse_err);
        CHECK(eq <= 2e-2, "%s: dQ rel L2 error %.3g > 2e-2", shape, eq);
        CHECK(ek <= 2e-2, "%s: dK rel L2 error %.3g > 2e-2", shape, ek);
        CHECK(ev <= 2e-2, "%s: dV rel L2 error %.3g > 2e-2", shape, ev);
        double ei = -1.0;
        if (st_inf == AVERIS_OK) {
            ei = rel_l2(download((nvbf16 *)o2.ptr, a.Lo, B, H, T, Dh), a.O);
            CHECK(ei <= 1e-2, "%s: inference O rel L2 error %.3g > 1e-2", shape, ei);
        }
        const char *rep = "-";
        if (det) { /* the backward again, into fresh buffers: the same bits */
            ccd_tensor rq = dq, rk = dk, rv = dv;
            rq.ptr = dev_nan(a.nq), rk.ptr = dev_nan(a.nk), rv.ptr = dev_nan(a.nk);
            averis_status st2 = ccd_backward(c, B, T, H, KV, Dh, a.q, a.k, a.v, o, a.dO, lse, rq, rk, rv, 0);
            CHECK(st2 == AVERIS_OK, "%s: ccd_backward (repeat): %s", shape, averis_last_error());
            DEV(cudaDeviceSynchronize());
            const char *names[3] = {"dQ", "dK", "dV"};
            void *x1[3] = {dq.ptr, dk.ptr, dv.ptr}, *x2[3] = {rq.ptr, rk.ptr, rv.ptr};
            size_t n[3] = {a.nq, a.nk, a.nk}, total_diff = 0;
            for (int i = 0; i < 3 && st2 == AVERIS_OK; i++) {
                std::vector<uint16_t> x(n[i]), y(n[i]);
                DEV(cudaMemcpy(x.data(), x1[i], n[i] * 2, cudaMemcpyDeviceToHost));
                DEV(cudaMemcpy(y.data(), x2[i], n[i] * 2, cudaMemcpyDeviceToHost));
                size_t ndiff = 0, first = 0;
                for (size_t j = 0; j < n[i]; j++)
                    if (x[j] != y[j] && !ndiff++) first = j;
                CHECK(ndiff == 0,
                      "%s: deterministic backward repeated: %s differs in %zu of %zu elements "
                      "(first at %zu: 0x%04x then 0x%04x)",
                      shape, names[i], ndiff, n[i], first, x[first], y[first]);
                total_diff += ndiff;
            }
            rep = st2 == AVERIS_OK && total_diff == 0 ? "same" : "DIFFER";
            cudaFree(rq.ptr), cudaFree(rk.ptr), cudaFree(rv.ptr);
        }
        printf("  %-4s %-28s %-6s %9.2e %9.2e %9.2e %9.2e %9.2e %9.2e %6s\n",
               g_check_failed > before ? "FAIL" : "PASS", shape, a.lay == LAY_TOKENS ? "tokens" : "model", eo, lse_err,
               eq, ek, ev, ei, rep);
    } else {
        printf("  FAIL %-28s %s\n", shape, averis_last_error());
    }
    void *bufs[] = {o.ptr, o2.ptr, dq.ptr, dk.ptr, dv.ptr, lse};
    for (void *p : bufs) cudaFree(p);
}

} // namespace

void test_cudnn_attention(void) {
    if (!ccd_supported(64, 64)) {
        printf("  skipped: built without cuDNN\n");
        return;
    }
    ccd_ctx *ctx[2] = {nullptr, nullptr}; /* [deterministic] */
    for (int det = 1; det >= 0; det--) {
        averis_status st = ccd_create(&ctx[det], det);
        CHECK(st == AVERIS_OK, "ccd_create(deterministic %d): %s", det, averis_last_error());
        if (st) return;
    }
    printf("  %s\n", ccd_describe(ctx[1]));
    /* B T H KV Dh layout: T 100, 77 and 17 are not multiples of 64 */
    const int cases[][6] = {
        {2, 128, 4, 2, 64, LAY_MODEL},  {1, 100, 4, 4, 64, LAY_TOKENS}, {2, 192, 16, 8, 128, LAY_MODEL},
        {1, 77, 8, 2, 128, LAY_TOKENS}, {3, 17, 2, 1, 64, LAY_MODEL},   {1, 256, 16, 8, 128, LAY_TOKENS},
    };
    trng r = {0x5eed};
    printf("  errors against fp64: relative L2 (lse: max abs); bounds O, O inf 1e-2, dQ dK dV 2e-2, lse 5e-3;\n"
           "  rep: the deterministic backward run twice, bits the same\n");
    printf("  %-33s %-6s %9s %9s %9s %9s %9s %9s %6s\n", "case (B T H KV Dh, backward)", "layout", "O", "lse", "dQ",
           "dK", "dV", "O inf", "rep");
    for (const auto &cs : cases) {
        att_case a;
        a.B = cs[0], a.T = cs[1], a.H = cs[2], a.KV = cs[3], a.Dh = cs[4], a.lay = cs[5];
        int B = a.B, T = a.T, H = a.H, KV = a.KV, Dh = a.Dh;
        a.nq = (size_t)B * H * T * Dh, a.nk = (size_t)B * KV * T * Dh;
        host_bf16 q = random_bf16(a.nq, 1.5f, &r), k = random_bf16(a.nk, 1.5f, &r), v = random_bf16(a.nk, 1.0f, &r),
                  dO = random_bf16(a.nq, 1.0f, &r);
        reference(B, T, H, KV, Dh, q.val.data(), k.val.data(), v.val.data(), dO.val.data(), a.O, a.lse, a.dQ, a.dK,
                  a.dV);
        bool tok = a.lay == LAY_TOKENS;
        a.Lq = tok ? ccd_tokens(nullptr, H, T, Dh) : ccd_heads(nullptr, H, T, Dh);
        a.Lk = tok ? ccd_tokens(nullptr, KV, T, Dh) : ccd_heads(nullptr, KV, T, Dh);
        a.Lo = ccd_tokens(nullptr, H, T, Dh); /* the model's ao is token-major */
        a.q = a.Lq, a.k = a.Lk, a.v = a.Lk, a.dO = a.Lq;
        a.q.ptr = upload(q.bits, a.Lq, B, H, T, Dh);
        a.k.ptr = upload(k.bits, a.Lk, B, KV, T, Dh);
        a.v.ptr = upload(v.bits, a.Lk, B, KV, T, Dh);
        a.dO.ptr = upload(dO.bits, a.Lq, B, H, T, Dh);
        for (int det = 1; det >= 0; det--) run_case(ctx[det], det, a);
        cudaFree(a.q.ptr), cudaFree(a.k.ptr), cudaFree(a.v.ptr), cudaFree(a.dO.ptr);
    }
    printf("  workspace: deterministic %.1f MiB, fast %.1f MiB\n", (double)ccd_workspace_bytes(ctx[1]) / (1 << 20),
           (double)ccd_workspace_bytes(ctx[0]) / (1 << 20));
    ccd_destroy(ctx[0]);
    ccd_destroy(ctx[1]);
}

/* Every graph the tests and the bench use, validated on the host for sm_90
 * (the frontend's shape, stride and attribute rules; frontend 1.32 still
 * calls cudaGetDevice, so this fails on a machine without a GPU) */
void test_cudnn_validate(void) {
    if (!ccd_supported(64, 64)) {
        printf("  skipped: built without cuDNN\n");
        return;
    }
    const int cases[][5] = {{2, 128, 4, 2, 64}, {1, 100, 4, 4, 64}, {2, 192, 16, 8, 128},
                            {1, 77, 8, 2, 128}, {3, 17, 2, 1, 64},  {8, 1024, 16, 8, 128}};
    int n = 0;
    for (const auto &cs : cases)
        for (int lay = LAY_MODEL; lay <= LAY_TOKENS; lay++)
            for (int det = 1; det >= 0; det--) {
                int B = cs[0], T = cs[1], H = cs[2], KV = cs[3], Dh = cs[4];
                bool tok = lay == LAY_TOKENS;
                ccd_tensor q = tok ? ccd_tokens(nullptr, H, T, Dh) : ccd_heads(nullptr, H, T, Dh);
                ccd_tensor k = tok ? ccd_tokens(nullptr, KV, T, Dh) : ccd_heads(nullptr, KV, T, Dh);
                ccd_tensor o = ccd_tokens(nullptr, H, T, Dh);
                averis_status st = ccd_validate(90, det, B, T, H, KV, Dh, q, k, k, o, q, q, k, k);
                CHECK(st == AVERIS_OK, "validate B%d T%d H%d KV%d Dh%d %s %s: %s", B, T, H, KV, Dh,
                      tok ? "tokens" : "model", det ? "det" : "fast", averis_last_error());
                n++;
            }
    ccd_tensor q = ccd_heads(nullptr, 4, 64, 64), k = ccd_heads(nullptr, 2, 64, 64), bad = q;
    bad.st = 68; /* 136 bytes: not a 16-byte multiple */
    averis_status st = ccd_validate(90, 1, 1, 64, 4, 2, 64, bad, k, k, q, q, q, k, k);
    CHECK(st == AVERIS_EINVAL && strstr(averis_last_error(), "q at"), "validate with q's T stride 68: status %d: %s",
          (int)st, averis_last_error());
    printf("  %d graph sets (forward, inference forward, backward) valid for sm_90; a bad stride refused\n", n);
}

/* Wrong arguments fail before cuDNN is asked, with a message that names them */
void test_cudnn_attention_errors(void) {
    if (!ccd_supported(64, 64)) {
        ccd_ctx *c = nullptr;
        CHECK(ccd_create(&c, 1) == AVERIS_EUNSUPPORTED && strstr(averis_last_error(), "without cuDNN"),
              "the stub's ccd_create should say it was built without cuDNN, said: %s", averis_last_error());
        return;
    }
    ccd_ctx *c = nullptr;
    if (ccd_create(&c, 1)) {
        CHECK(0, "ccd_create: %s", averis_last_error());
        return;
    }
    int B = 1, T = 64, H = 4, KV = 2, Dh = 64;
    nvbf16 *buf;
    DEV(cudaMalloc(&buf, (size_t)B * H * T * Dh * 2 + 64));
    float *lse;
    DEV(cudaMalloc(&lse, (size_t)B * H * T * 4));
    ccd_tensor q = ccd_heads(buf, H, T, Dh), kv = ccd_heads(buf, KV, T, Dh), o = ccd_tokens(buf, H, T, Dh);
    ccd_tensor qm = q, os = o;
    qm.ptr = (char *)buf + 2; /* misaligned by one element */
    os.st = Dh * H + 4;       /* a token stride 8 bytes past a 16-byte multiple */
    /* each bad call's status, and its message read right after it */
    averis_status st = ccd_forward(c, B, T, 3, 2, Dh, q, kv, kv, o, lse, 0);
    CHECK(st == AVERIS_EINVAL && strstr(averis_last_error(), "KV"), "H 3 KV 2: status %d, message: %s", (int)st,
          averis_last_error());
    st = ccd_forward(c, B, T, H, KV, 60, q, kv, kv, o, lse, 0);
    CHECK(st == AVERIS_EUNSUPPORTED && strstr(averis_last_error(), "head dim 60"), "Dh 60: status %d, message: %s",
          (int)st, averis_last_error());
    st = ccd_forward(c, B, T, H, KV, Dh, qm, kv, kv, o, lse, 0);
    CHECK(st == AVERIS_EINVAL && strstr(averis_last_error(), "q at"), "misaligned q: status %d, message: %s", (int)st,
          averis_last_error());
    st = ccd_forward(c, B, T, H, KV, Dh, q, kv, kv, os, lse, 0);
    CHECK(st == AVERIS_EINVAL && strstr(averis_last_error(), "o at"), "odd o stride: status %d, message: %s", (int)st,
          averis_last_error());
    st = ccd_backward(c, B, T, H, KV, Dh, q, kv, kv, o, q, nullptr, q, kv, kv, 0);
    CHECK(st == AVERIS_EINVAL && strstr(averis_last_error(), "lse"), "backward without lse: status %d, message: %s",
          (int)st, averis_last_error());
    st = ccd_forward(nullptr, B, T, H, KV, Dh, q, kv, kv, o, lse, 0);
    CHECK(st == AVERIS_EINVAL && strstr(averis_last_error(), "no context"), "NULL context: status %d, message: %s",
          (int)st, averis_last_error());
    printf("  6 bad calls refused, each message names what was wrong\n");
    cudaFree(buf);
    cudaFree(lse);
    ccd_destroy(c);
}

#ifndef AVERIS_CUDNN_TEST_NO_MAIN
int g_check_failed;

/* ms per call of fn, over iters calls after 3 warm-ups */
template <typename F> static double time_ms(F fn, int iters) {
    for (int i = 0; i < 3; i++) fn();
    cudaEvent_t a, b;
    DEV(cudaEventCreate(&a));
    DEV(cudaEventCreate(&b));
    DEV(cudaEventRecord(a));
    for (int i = 0; i < iters; i++) fn();
    DEV(cudaEventRecord(b));
    DEV(cudaEventSynchronize(b));
    float ms = 0.0f;
    DEV(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms / iters;
}

#define OR_DIE(expr)                                                                                        \
    do {                                                                                                    \
        if ((expr) != AVERIS_OK) {                                                                          \
            fprintf(stderr, "bench: %s failed: %s\n", #expr, averis_last_error());                         \
            exit(1);                                                                                        \
        }                                                                                                   \
    } while (0)

/* fwd, bwd, fwd+bwd at the Qwen3-0.6B attention shape, the model's layouts
 * (Q, K, V, dO head-major, O token-major): cuDNN deterministic, cuDNN
 * fastest, and flash.cu (fp32 gradients, its own layouts) in the same run */
static int bench(void) {
    const int B = 8, T = 1024, H = 16, KV = 8, Dh = 128, iters = 20;
    size_t nq = (size_t)B * H * T * Dh, nk = (size_t)B * KV * T * Dh;
    trng r = {7};
    host_bf16 hq = random_bf16(nq, 1.5f, &r), hk = random_bf16(nk, 1.5f, &r), hv = random_bf16(nk, 1.0f, &r),
              hdo = random_bf16(nq, 1.0f, &r);
    ccd_tensor q = ccd_heads(nullptr, H, T, Dh), k = ccd_heads(nullptr, KV, T, Dh), v = k, dO = q;
    ccd_tensor o = ccd_tokens(dev_nan(nq), H, T, Dh), dq = ccd_heads(dev_nan(nq), H, T, Dh);
    ccd_tensor dk = ccd_heads(dev_nan(nk), KV, T, Dh), dv = ccd_heads(dev_nan(nk), KV, T, Dh);
    q.ptr = upload(hq.bits, q, B, H, T, Dh), k.ptr = upload(hk.bits, k, B, KV, T, Dh);
    v.ptr = upload(hv.bits, v, B, KV, T, Dh), dO.ptr = upload(hdo.bits, dO, B, H, T, Dh);
    float *lse, *Dv, *dao, *gq, *gk, *gv;
    DEV(cudaMalloc(&lse, (size_t)B * H * T * 4));
    DEV(cudaMalloc(&Dv, (size_t)B * H * T * 4));
    DEV(cudaMalloc(&dao, nq * 4));
    DEV(cudaMemset(dao, 0, nq * 4));
    DEV(cudaMalloc(&gq, nq * 4));
    DEV(cudaMalloc(&gk, nk * 4));
    DEV(cudaMalloc(&gv, nk * 4));
    /* causal: half of the T² scores; forward 2 GEMMs, backward 5 (S again, dP, dV, dQ, dK) */
    double fwd_flop = 2.0 * 2.0 * B * H * (double)T * T * Dh / 2.0, bwd_flop = fwd_flop * 2.5;
    printf("bench: causal GQA attention B %d T %d H %d KV %d Dh %d, BF16, ms per call (%d calls)\n", B, T, H, KV, Dh,
           iters);
    printf("  %-26s %9s %9s %9s %9s %9s\n", "path", "fwd ms", "bwd ms", "fwd+bwd", "fwd TF/s", "bwd TF/s");
    double both[3] = {0};
    for (int det = 1; det >= 0; det--) {
        const char *name = det ? "cuDNN deterministic" : "cuDNN fastest";
        ccd_ctx *c = nullptr;
        if (ccd_create(&c, det) || ccd_forward(c, B, T, H, KV, Dh, q, k, v, o, lse, 0) ||
            ccd_backward(c, B, T, H, KV, Dh, q, k, v, o, dO, lse, dq, dk, dv, 0)) {
            printf("  %-26s unavailable: %s\n", name, averis_last_error());
            ccd_destroy(c);
            continue;
        }
        auto f = [&] { OR_DIE(ccd_forward(c, B, T, H, KV, Dh, q, k, v, o, lse, 0)); };
        auto b = [&] { OR_DIE(ccd_backward(c, B, T, H, KV, Dh, q, k, v, o, dO, lse, dq, dk, dv, 0)); };
        double tf = time_ms(f, iters), tb = time_ms(b, iters), tfb = time_ms([&] { f(), b(); }, iters);
        both[det] = tfb;
        printf("  %-26s %9.3f %9.3f %9.3f %9.1f %9.1f   workspace %.0f MiB\n",
               name, tf, tb, tfb, fwd_flop / tf * 1e-9, bwd_flop / tb * 1e-9,
               (double)ccd_workspace_bytes(c) / (1 << 20));
        ccd_destroy(c);
    }
    {
        const nvbf16 *cq = (const nvbf16 *)q.ptr, *ck = (const nvbf16 *)k.ptr, *cv = (const nvbf16 *)v.ptr,
                   *cdo = (const nvbf16 *)dO.ptr;
        auto f = [&] { OR_DIE(cf_forward(cq, ck, cv, o.ptr, 1, lse, B, T, H, KV, Dh, 0)); };
        auto b = [&] {
            OR_DIE(cf_backward(cq, ck, cv, cdo, dao, o.ptr, 1, lse, Dv, gq, gk, gv, B, T, H, KV, Dh, 0));
        };
        double tf = time_ms(f, iters), tb = time_ms(b, iters), tfb = time_ms([&] { f(), b(); }, iters);
        both[2] = tfb;
        printf("  %-26s %9.3f %9.3f %9.3f %9.1f %9.1f\n", "flash.cu (ours)", tf, tb, tfb, fwd_flop / tf * 1e-9,
               bwd_flop / tb * 1e-9);
    }
    if (both[1] > 0) printf("  fwd+bwd: flash.cu / cuDNN deterministic = %.2fx\n", both[2] / both[1]);
    if (both[0] > 0) printf("  fwd+bwd: flash.cu / cuDNN fastest = %.2fx\n", both[2] / both[0]);
    if (both[0] > 0 && both[1] > 0) printf("  fwd+bwd: cuDNN deterministic / fastest = %.2fx\n", both[1] / both[0]);
    void *bufs[] = {q.ptr, k.ptr, v.ptr, dO.ptr, o.ptr, dq.ptr, dk.ptr, dv.ptr, lse, Dv, dao, gq, gk, gv};
    for (void *p : bufs) cudaFree(p);
    return 0;
}

/* the graph checks alone (frontend 1.32 still calls cudaGetDevice in them) */
static int validate_only(void) {
    g_check_failed = 0;
    test_cudnn_validate();
    printf("%s  cudnn_validate\n", g_check_failed ? "FAIL" : "ok  ");
    printf("%d passed, %d failed\n", g_check_failed ? 0 : 1, g_check_failed ? 1 : 0);
    return g_check_failed ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "validate")) return validate_only();
    char desc[256];
    if (avc_init(0, desc, sizeof desc)) {
        fprintf(stderr, "test_cudnn_att: %s\n", averis_last_error());
        return 2;
    }
    printf("device: %s\n", desc);
    if (argc > 1 && !strcmp(argv[1], "bench")) return bench();
    const test_case tests[] = {{"cudnn_validate", test_cudnn_validate},
                               {"cudnn_attention", test_cudnn_attention},
                               {"cudnn_attention_errors", test_cudnn_attention_errors}};
    int passed = 0, failed = 0;
    run_device_tests(tests, sizeof tests / sizeof tests[0], argc > 1 ? argv[1] : nullptr, &passed, &failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
#endif
