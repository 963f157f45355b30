/* cudnn_att.cu — causal GQA attention by cuDNN's fused flash attention
 * (cudnn_frontend::graph::Graph with sdpa / sdpa_backward), as llm.c's
 * llmc/cudnn_att.cpp and PyTorch run it on Hopper. The interface and the
 * layouts are in cudnn_att.cuh.
 *
 * A graph is built (validate → operation graph → heuristic plans → support
 * check → plan build: the slow part) once per key: the shape (B, T, H, KV,
 * Dh), training or inference, and every tensor's strides, then cached in the
 * context. The scale 1/√Dh is baked into the graph as a value. Pointers go
 * in at execute time through the variant pack, by uid.
 *
 * Causal mask: top-left diagonal, right bound 0 (key j ≤ query t), what
 * set_causal_mask does. Compiled only where the Makefile finds cuDNN and the
 * frontend headers; cudnn_att_stub.cu stands in elsewhere.
 */
#include "cudnn_att.cuh"

#include <cudnn.h>
#include <cudnn_frontend.h>

#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

namespace fe = cudnn_frontend;

extern "C" averis_status averis_fail(averis_status st, const char *fmt, ...);

namespace {

enum ccd_uid : int64_t { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV };

typedef std::shared_ptr<fe::graph::Graph> graph_ptr;
typedef std::shared_ptr<fe::graph::Tensor_attributes> tensor_ptr;

/* B, T, H, KV, Dh of one call, for the messages */
struct ccd_dims {
    int B, T, H, KV, Dh;
};

} // namespace

struct ccd_ctx {
    cudnnHandle_t h = nullptr;
    int device = 0;
    int deterministic = 0;
    void *ws = nullptr; /* device workspace, the largest graph's need */
    size_t ws_bytes = 0;
    std::map<std::vector<int64_t>, graph_ptr> fwd, bwd; /* key: ccd_key */
    char desc[160] = {0};
};

namespace {

#define CCD_CUDA(call)                                                                                          \
    do {                                                                                                        \
        cudaError_t e_ = (call);                                                                                \
        if (e_ != cudaSuccess)                                                                                  \
            return averis_fail(AVERIS_EIO, "cudnn attention: %s failed: %s", #call, cudaGetErrorString(e_));    \
    } while (0)
#define CCD_DNN(call)                                                                                           \
    do {                                                                                                        \
        cudnnStatus_t e_ = (call);                                                                              \
        if (e_ != CUDNN_STATUS_SUCCESS)                                                                         \
            return averis_fail(AVERIS_EIO, "cudnn attention: %s failed: %s", #call, cudnnGetErrorString(e_));   \
    } while (0)

/* A frontend step that failed: which graph, which shape, which step, why.
 * GRAPH_NOT_SUPPORTED (no engine for this shape, layout or GPU) is
 * AVERIS_EUNSUPPORTED so the caller can fall back to flash.cu. */
averis_status fe_fail(const fe::error_object &e, const char *graph, ccd_dims d, const char *step) {
    fe::error_object copy = e;
    averis_status st = copy.get_code() == fe::error_code_t::GRAPH_NOT_SUPPORTED ? AVERIS_EUNSUPPORTED : AVERIS_EIO;
    return averis_fail(st, "cudnn attention: %s graph (B %d T %d H %d KV %d Dh %d): %s failed: %s", graph, d.B, d.T,
                       d.H, d.KV, d.Dh, step, copy.get_message().c_str());
}
#define CCD_FE(expr, graph, dims, step)                                                                         \
    do {                                                                                                        \
        fe::error_object e_ = (expr);                                                                           \
        if (!e_.is_good()) return fe_fail(e_, graph, dims, step);                                               \
    } while (0)

/* The shape checks both directions share; a tensor's strides and pointer
 * must be 16-byte multiples (the fused kernels load 16 bytes at a time and
 * cuDNN does not check the pointers). */
averis_status check_args(const char *what, ccd_dims d) {
    if (d.B < 1 || d.T < 1 || d.H < 1 || d.KV < 1 || d.H % d.KV != 0)
        return averis_fail(AVERIS_EINVAL, "cudnn attention %s: bad shape B %d T %d H %d KV %d (H %% KV must be 0)",
                           what, d.B, d.T, d.H, d.KV);
    if (!ccd_supported(d.T, d.Dh))
        return averis_fail(AVERIS_EUNSUPPORTED, "cudnn attention %s: head dim %d unsupported (a multiple of 8, ≤ 128)",
                           what, d.Dh);
    return AVERIS_OK;
}
averis_status check_tensor(const char *what, const char *name, const ccd_tensor &t) {
    if (!t.ptr) return averis_fail(AVERIS_EINVAL, "cudnn attention %s: %s is NULL", what, name);
    if ((uintptr_t)t.ptr % 16 != 0 || t.sb % 8 != 0 || t.sh % 8 != 0 || t.st % 8 != 0)
        return averis_fail(AVERIS_EINVAL,
                           "cudnn attention %s: %s at %p with strides (%lld, %lld, %lld) elements: pointer and strides "
                           "must be multiples of 16 bytes",
                           what, name, t.ptr, (long long)t.sb, (long long)t.sh, (long long)t.st);
    return AVERIS_OK;
}

/* The handle belongs to the device of ccd_create */
averis_status check_device(const ccd_ctx *c) {
    int dev = -1;
    CCD_CUDA(cudaGetDevice(&dev));
    if (dev != c->device)
        return averis_fail(AVERIS_EINVAL, "cudnn attention: context of device %d used on device %d", c->device, dev);
    return AVERIS_OK;
}

/* A graph input or output [B, heads, T, Dh] with t's strides */
fe::graph::Tensor_attributes tensor_desc(const char *name, int64_t uid, int B, int heads, int T, int Dh,
                                         const ccd_tensor &t) {
    return fe::graph::Tensor_attributes()
        .set_name(name)
        .set_uid(uid)
        .set_dim({B, heads, T, Dh})
        .set_stride({t.sb, t.sh, t.st, 1})
        .set_data_type(fe::DataType_t::BFLOAT16);
}
fe::graph::Tensor_attributes stats_desc(int B, int H, int T) {
    return fe::graph::Tensor_attributes()
        .set_name("lse")
        .set_uid(UID_STATS)
        .set_dim({B, H, T, 1})
        .set_stride({(int64_t)H * T, T, 1, 1})
        .set_data_type(fe::DataType_t::FLOAT);
}

void key_add(std::vector<int64_t> &key, const ccd_tensor &t) {
    key.push_back(t.sb);
    key.push_back(t.sh);
    key.push_back(t.st);
}

graph_ptr new_graph(void) {
    graph_ptr g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return g;
}

/* The slow part, once per key, then the workspace grown to the graph's need */
averis_status build(ccd_ctx *c, const graph_ptr &g, const char *name, ccd_dims d) {
    CCD_FE(g->validate(), name, d, "validate");
    CCD_FE(g->build_operation_graph(c->h), name, d, "build_operation_graph");
    CCD_FE(g->create_execution_plans({fe::HeurMode_t::A}), name, d, "create_execution_plans");
    CCD_FE(g->check_support(c->h), name, d, "check_support");
    CCD_FE(g->build_plans(c->h), name, d, "build_plans");
    int64_t need = 0;
    CCD_FE(g->get_workspace_size(need), name, d, "get_workspace_size");
    if ((size_t)need > c->ws_bytes) {
        if (c->ws) CCD_CUDA(cudaFree(c->ws)); /* synchronises: no earlier call still reads it */
        c->ws = nullptr;
        c->ws_bytes = 0;
        CCD_CUDA(cudaMalloc(&c->ws, (size_t)need));
        c->ws_bytes = (size_t)need;
    }
    return AVERIS_OK;
}

/* The forward graph's definition: O (and, training, the statistics) */
averis_status define_forward(ccd_dims d, const ccd_tensor &q, const ccd_tensor &k, const ccd_tensor &v,
                             const ccd_tensor &o, bool training, graph_ptr *out) {
    graph_ptr g = new_graph();
    tensor_ptr Q = g->tensor(tensor_desc("Q", UID_Q, d.B, d.H, d.T, d.Dh, q));
    tensor_ptr K = g->tensor(tensor_desc("K", UID_K, d.B, d.KV, d.T, d.Dh, k));
    tensor_ptr V = g->tensor(tensor_desc("V", UID_V, d.B, d.KV, d.T, d.Dh, v));
    fe::graph::SDPA_attributes opt = fe::graph::SDPA_attributes()
                                         .set_name("ccd_sdpa")
                                         .set_generate_stats(training)
                                         .set_attn_scale(1.0f / sqrtf((float)d.Dh))
                                         .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                                         .set_diagonal_band_right_bound(0);
    auto [O, stats] = g->sdpa(Q, K, V, opt);
    O->set_output(true).set_uid(UID_O).set_dim({d.B, d.H, d.T, d.Dh}).set_stride({o.sb, o.sh, o.st, 1});
    if (training) {
        if (!stats) return averis_fail(AVERIS_EIO, "cudnn attention: sdpa returned no statistics for training");
        stats->set_output(true)
            .set_uid(UID_STATS)
            .set_dim({d.B, d.H, d.T, 1})
            .set_stride({(int64_t)d.H * d.T, d.T, 1, 1})
            .set_data_type(fe::DataType_t::FLOAT);
    }
    *out = g;
    return AVERIS_OK;
}

/* The backward graph's definition: dQ, dK, dV (BF16) from Q, K, V, O, dO, lse */
averis_status define_backward(ccd_dims d, int deterministic, const ccd_tensor &q, const ccd_tensor &k,
                              const ccd_tensor &v, const ccd_tensor &o, const ccd_tensor &dO, const ccd_tensor &dq,
                              const ccd_tensor &dk, const ccd_tensor &dv, graph_ptr *out) {
    graph_ptr g = new_graph();
    tensor_ptr Q = g->tensor(tensor_desc("Q", UID_Q, d.B, d.H, d.T, d.Dh, q));
    tensor_ptr K = g->tensor(tensor_desc("K", UID_K, d.B, d.KV, d.T, d.Dh, k));
    tensor_ptr V = g->tensor(tensor_desc("V", UID_V, d.B, d.KV, d.T, d.Dh, v));
    tensor_ptr O = g->tensor(tensor_desc("O", UID_O, d.B, d.H, d.T, d.Dh, o));
    tensor_ptr DO = g->tensor(tensor_desc("dO", UID_DO, d.B, d.H, d.T, d.Dh, dO));
    tensor_ptr S = g->tensor(stats_desc(d.B, d.H, d.T));
    fe::graph::SDPA_backward_attributes opt = fe::graph::SDPA_backward_attributes()
                                                  .set_name("ccd_sdpa_backward")
                                                  .set_attn_scale(1.0f / sqrtf((float)d.Dh))
                                                  .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                                                  .set_diagonal_band_right_bound(0)
                                                  .set_deterministic_algorithm(deterministic != 0);
    auto [DQ, DK, DV] = g->sdpa_backward(Q, K, V, O, DO, S, opt);
    DQ->set_output(true).set_uid(UID_DQ).set_dim({d.B, d.H, d.T, d.Dh}).set_stride({dq.sb, dq.sh, dq.st, 1});
    DK->set_output(true).set_uid(UID_DK).set_dim({d.B, d.KV, d.T, d.Dh}).set_stride({dk.sb, dk.sh, dk.st, 1});
    DV->set_output(true).set_uid(UID_DV).set_dim({d.B, d.KV, d.T, d.Dh}).set_stride({dv.sb, dv.sh, dv.st, 1});
    DQ->set_data_type(fe::DataType_t::BFLOAT16);
    DK->set_data_type(fe::DataType_t::BFLOAT16);
    DV->set_data_type(fe::DataType_t::BFLOAT16);
    *out = g;
    return AVERIS_OK;
}

/* The cached forward graph of this key, built on first use */
averis_status forward_graph(ccd_ctx *c, ccd_dims d, const ccd_tensor &q, const ccd_tensor &k, const ccd_tensor &v,
                            const ccd_tensor &o, bool training, graph_ptr *out) {
    std::vector<int64_t> key = {d.B, d.T, d.H, d.KV, d.Dh, training};
    key_add(key, q), key_add(key, k), key_add(key, v), key_add(key, o);
    auto it = c->fwd.find(key);
    if (it != c->fwd.end()) {
        *out = it->second;
        return AVERIS_OK;
    }
    graph_ptr g;
    averis_status st = define_forward(d, q, k, v, o, training, &g);
    if (!st) st = build(c, g, training ? "forward" : "inference forward", d);
    if (st) return st;
    c->fwd.emplace(key, g);
    *out = g;
    return AVERIS_OK;
}

/* The cached backward graph of this key, built on first use */
averis_status backward_graph(ccd_ctx *c, ccd_dims d, const ccd_tensor &q, const ccd_tensor &k, const ccd_tensor &v,
                             const ccd_tensor &o, const ccd_tensor &dO, const ccd_tensor &dq, const ccd_tensor &dk,
                             const ccd_tensor &dv, graph_ptr *out) {
    std::vector<int64_t> key = {d.B, d.T, d.H, d.KV, d.Dh};
    key_add(key, q), key_add(key, k), key_add(key, v), key_add(key, o), key_add(key, dO);
    key_add(key, dq), key_add(key, dk), key_add(key, dv);
    auto it = c->bwd.find(key);
    if (it != c->bwd.end()) {
        *out = it->second;
        return AVERIS_OK;
    }
    graph_ptr g;
    averis_status st = define_backward(d, c->deterministic, q, k, v, o, dO, dq, dk, dv, &g);
    if (!st) st = build(c, g, c->deterministic ? "deterministic backward" : "backward", d);
    if (st) return st;
    c->bwd.emplace(key, g);
    *out = g;
    return AVERIS_OK;
}

} // namespace

int ccd_supported(int T, int Dh) { return T >= 1 && Dh >= 8 && Dh <= 128 && Dh % 8 == 0; }

averis_status ccd_create(ccd_ctx **out, int deterministic) {
    *out = nullptr;
    size_t ver = cudnnGetVersion();
    if (ver < 90000)
        return averis_fail(AVERIS_EUNSUPPORTED, "cudnn attention: cuDNN %zu.%zu.%zu found, 9.0 or newer needed",
                           ver / 10000, ver / 100 % 100, ver % 100);
    int dev = 0, major = 0, minor = 0;
    CCD_CUDA(cudaGetDevice(&dev));
    CCD_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CCD_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    if (major < 8)
        return averis_fail(AVERIS_EUNSUPPORTED, "cudnn attention: sm_%d%d has no fused BF16 flash attention (sm_80+)",
                           major, minor);
    ccd_ctx *c = new (std::nothrow) ccd_ctx;
    if (!c) return averis_fail(AVERIS_ENOMEM, "cudnn attention: out of memory for the context");
    cudnnStatus_t e = cudnnCreate(&c->h);
    if (e != CUDNN_STATUS_SUCCESS) {
        delete c;
        return averis_fail(AVERIS_EIO, "cudnn attention: cudnnCreate failed: %s", cudnnGetErrorString(e));
    }
    c->device = dev;
    c->deterministic = deterministic != 0;
    snprintf(c->desc, sizeof c->desc, "cuDNN %zu.%zu.%zu (built with %d.%d.%d), frontend %d.%d.%d, %s backward",
             ver / 10000, ver / 100 % 100, ver % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL,
             CUDNN_FRONTEND_MAJOR_VERSION, CUDNN_FRONTEND_MINOR_VERSION, CUDNN_FRONTEND_PATCH_VERSION,
             c->deterministic ? "deterministic" : "non-deterministic");
    *out = c;
    return AVERIS_OK;
}

void ccd_destroy(ccd_ctx *c) {
    if (!c) return;
    c->fwd.clear();
    c->bwd.clear();
    if (c->ws) cudaFree(c->ws);
    if (c->h) cudnnDestroy(c->h);
    delete c;
}

const char *ccd_describe(const ccd_ctx *c) { return c ? c->desc : "cudnn attention: no context"; }

size_t ccd_workspace_bytes(const ccd_ctx *c) { return c ? c->ws_bytes : 0; }

namespace {

averis_status forward_impl(ccd_ctx *c, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k, ccd_tensor v,
                           ccd_tensor o, float *lse, cudaStream_t s) {
    if (!c) return averis_fail(AVERIS_EINVAL, "cudnn attention forward: no context (ccd_create)");
    ccd_dims d = {B, T, H, KV, Dh};
    averis_status st;
    if ((st = check_args("forward", d)) || (st = check_tensor("forward", "q", q)) ||
        (st = check_tensor("forward", "k", k)) || (st = check_tensor("forward", "v", v)) ||
        (st = check_tensor("forward", "o", o)))
        return st;
    if ((uintptr_t)lse % 16 != 0)
        return averis_fail(AVERIS_EINVAL, "cudnn attention forward: lse at %p is not 16-byte aligned", (void *)lse);
    if ((st = check_device(c))) return st;
    CCD_DNN(cudnnSetStream(c->h, s));
    graph_ptr g;
    if ((st = forward_graph(c, d, q, k, v, o, lse != nullptr, &g))) return st;
    std::unordered_map<int64_t, void *> pack = {{UID_Q, q.ptr}, {UID_K, k.ptr}, {UID_V, v.ptr}, {UID_O, o.ptr}};
    if (lse) pack[UID_STATS] = lse;
    CCD_FE(g->execute(c->h, pack, c->ws), "forward", d, "execute");
    CCD_CUDA(cudaGetLastError());
    return AVERIS_OK;
}

averis_status backward_impl(ccd_ctx *c, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k,
                            ccd_tensor v, ccd_tensor o, ccd_tensor dO, const float *lse, ccd_tensor dq, ccd_tensor dk,
                            ccd_tensor dv, cudaStream_t s) {
    if (!c) return averis_fail(AVERIS_EINVAL, "cudnn attention backward: no context (ccd_create)");
    ccd_dims d = {B, T, H, KV, Dh};
    averis_status st;
    const char *w = "backward";
    if ((st = check_args(w, d)) || (st = check_tensor(w, "q", q)) || (st = check_tensor(w, "k", k)) ||
        (st = check_tensor(w, "v", v)) || (st = check_tensor(w, "o", o)) || (st = check_tensor(w, "dO", dO)) ||
        (st = check_tensor(w, "dq", dq)) || (st = check_tensor(w, "dk", dk)) || (st = check_tensor(w, "dv", dv)))
        return st;
    if (!lse || (uintptr_t)lse % 16 != 0)
        return averis_fail(AVERIS_EINVAL, "cudnn attention backward: lse at %p is NULL or not 16-byte aligned",
                           (const void *)lse);
    if ((st = check_device(c))) return st;
    CCD_DNN(cudnnSetStream(c->h, s));
    graph_ptr g;
    if ((st = backward_graph(c, d, q, k, v, o, dO, dq, dk, dv, &g))) return st;
    std::unordered_map<int64_t, void *> pack = {{UID_Q, q.ptr},   {UID_K, k.ptr},   {UID_V, v.ptr},
                                                {UID_O, o.ptr},   {UID_DO, dO.ptr}, {UID_STATS, (void *)lse},
                                                {UID_DQ, dq.ptr}, {UID_DK, dk.ptr}, {UID_DV, dv.ptr}};
    CCD_FE(g->execute(c->h, pack, c->ws), "backward", d, "execute");
    CCD_CUDA(cudaGetLastError());
    return AVERIS_OK;
}

} // namespace

/* The frontend reports through error objects, but the standard library under
 * it can still throw (bad_alloc): nothing crosses into the C callers. */
averis_status ccd_forward(ccd_ctx *c, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k, ccd_tensor v,
                          ccd_tensor o, float *lse, cudaStream_t s) {
    try {
        return forward_impl(c, B, T, H, KV, Dh, q, k, v, o, lse, s);
    } catch (const std::exception &e) {
        return averis_fail(AVERIS_EIO, "cudnn attention forward: exception: %s", e.what());
    } catch (...) {
        return averis_fail(AVERIS_EIO, "cudnn attention forward: unknown exception");
    }
}

averis_status ccd_backward(ccd_ctx *c, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k, ccd_tensor v,
                           ccd_tensor o, ccd_tensor dO, const float *lse, ccd_tensor dq, ccd_tensor dk, ccd_tensor dv,
                           cudaStream_t s) {
    try {
        return backward_impl(c, B, T, H, KV, Dh, q, k, v, o, dO, lse, dq, dk, dv, s);
    } catch (const std::exception &e) {
        return averis_fail(AVERIS_EIO, "cudnn attention backward: exception: %s", e.what());
    } catch (...) {
        return averis_fail(AVERIS_EIO, "cudnn attention backward: unknown exception");
    }
}

averis_status ccd_validate(int sm, int deterministic, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k,
                           ccd_tensor v, ccd_tensor o, ccd_tensor dO, ccd_tensor dq, ccd_tensor dk, ccd_tensor dv) {
    try {
        ccd_dims d = {B, T, H, KV, Dh};
        averis_status st = check_args("validate", d);
        if (st) return st;
        const ccd_tensor *ts[8] = {&q, &k, &v, &o, &dO, &dq, &dk, &dv};
        const char *names[8] = {"q", "k", "v", "o", "dO", "dq", "dk", "dv"};
        for (int i = 0; i < 8; i++) {
            ccd_tensor t = *ts[i];
            t.ptr = (void *)(uintptr_t)256; /* the strides are checked; there is no memory */
            if ((st = check_tensor("validate", names[i], t))) return st;
        }
        for (int training = 1; training >= 0; training--) {
            graph_ptr g;
            if ((st = define_forward(d, q, k, v, o, training != 0, &g))) return st;
            g->set_sm_version(sm);
            CCD_FE(g->validate(), training ? "forward" : "inference forward", d, "validate");
        }
        graph_ptr g;
        if ((st = define_backward(d, deterministic, q, k, v, o, dO, dq, dk, dv, &g))) return st;
        g->set_sm_version(sm);
        CCD_FE(g->validate(), deterministic ? "deterministic backward" : "backward", d, "validate");
        return AVERIS_OK;
    } catch (const std::exception &e) {
        return averis_fail(AVERIS_EIO, "cudnn attention validate: exception: %s", e.what());
    } catch (...) {
        return averis_fail(AVERIS_EIO, "cudnn attention validate: unknown exception");
    }
}
