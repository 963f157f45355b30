/* moe.cuh — the Qwen3-MoE block on the GPU (internal to cuda/; model.cu
 * calls it for the layers where model_layer_is_moe). The same math, row
 * order, SR streams and recipe handling as src/moe.c (docs/moe.md), so the
 * per-expert quantization (amax, NVFP4 block scales, the Averis split's
 * means over each expert's own rows) sees the CPU's matrices:
 *
 *   z = h·W_rᵀ           [N,E]  cuBLAS SGEMM, fp32 (never quantized)
 *   p = softmax(z); sel, w = top-k (ties: the lower expert), renormalised
 *                         one thread per token, the CPU's loops
 *   counts, offs, perm, slot: a counting sort by expert, tokens ascending
 *                         within each expert (an ordered block compaction
 *                         per expert: deterministic, no atomics); counts and
 *                         offsets go to the host once per layer (GEMM sizes)
 *   xs = h[perm]          [R,C]  fp32 (h rounded to BF16 first under BF16
 *                                activations, as the dense MLP's input is)
 *   per expert e with n_e > 0: g, u = cl_forward(X_e; W_g,e / W_u,e),
 *       a = silu(g)⊙u, y = cl_forward(a_e; W_d,e)      fp32 [n_e × I|C]
 *   x_next[t] = x_mid[t] + Σ_j w[t,j]·y[slot[t,j]]  (choices in order)
 * Backward: dy, dw (one warp per (token, choice), fixed shuffle reduction);
 * the experts' cl_backward on their rows with moe_sr_stream; dh[t] =
 * Σ_j dxs[slot[t,j]] (a gather, no scatter-add); the router's dz per token
 * (renormalisation Jacobian + the aux term) and two SGEMMs.
 * Expert activations stay fp32 on the GPU (no BF16 mean terms to carry).
 */
#ifndef AVERIS_CUDA_MOE_CUH
#define AVERIS_CUDA_MOE_CUH

#include "qlinear.cuh"
#include "qlinear_group.cuh"
#include "averis/analysis_cuda.h"

#include <cublas_v2.h>

#include <functional>
#include <vector>

/* One MoE layer's state, kept from the forward for the backward. */
struct cm_moe_layer {
    int used = 0;
    const float *router = nullptr, *eg = nullptr, *eu = nullptr, *ed = nullptr; /* weights (device) */
    float *g_router = nullptr, *g_eg = nullptr, *g_eu = nullptr, *g_ed = nullptr; /* their gradients */
    float *p = nullptr, *wts = nullptr;         /* [N·E], [N·k] */
    int *sel = nullptr, *perm = nullptr, *slot = nullptr, *counts_d = nullptr, *offs_d = nullptr; /* [N·k] [R] [N·k] [E] [E+1] */
    float *xs = nullptr, *y = nullptr;          /* [R·C] */
    float *g = nullptr, *u = nullptr, *a = nullptr; /* [R·I] */
    std::vector<int> counts, offs;              /* host copies: [E], [E+1] */
    std::vector<cl_input> in_x, in_a;           /* per expert: its rows of xs and of a */
    std::vector<cl_weight> wg, wu, wd;          /* per expert operands (views of swg, swu, swd) */
    cl_seg_input sx = {}, sa = {};                      /* modes 1-3: xs and a, all experts (stats per expert) */
    cl_seg_weight swg = {}, swu = {}, swd = {};              /* the E stacked weights and their operands */
};

/* AVERIS_MOE_GROUPED: 2 (default) the experts' quantization in one launch
 * sequence per linear (seg.cuh) with one cuBLASLt GEMM per expert (the bits
 * of 0), 3 the same with our grouped GEMM (grouped_gemm.cuh), 1 with
 * cuBLAS's grouped GEMMs (refused for BF16 operands with an fp32 output:
 * then it runs as 3); all through qlinear_group.cuh. 0: cl_prep_x /
 * cl_forward / cl_backward per expert. */
enum { CM_MOE_PER_EXPERT = 0 };
/* the mode when AVERIS_MOE_GROUPED is unset: our grouped GEMM where an expert's
 * hidden × intermediate is at most CM_MOE_OWN_GEMM_MAX_CI, else CM_MOE_DEFAULT_MODE */
enum { CM_MOE_DEFAULT_MODE = CL_SEG_PER_EXPERT };
static const int64_t CM_MOE_OWN_GEMM_MAX_CI = (int64_t)1 << 20;
struct cm_moe {
    int E = 0, k = 0, L = 0, nmoe = 0, norm_topk = 0, aux_on = 0;
    int mode = CM_MOE_DEFAULT_MODE;
    double coef = 0.0;
    int64_t N = 0, C = 0, I = 0, R = 0;
    std::vector<cm_moe_layer> layers; /* [L], used where the layer is MoE */
    std::vector<int> moe_index;       /* [L] the layer's index among the MoE layers, or -1 */
    float *h32 = nullptr;             /* [N·C] the block input in fp32 */
    float *dy = nullptr, *dxs = nullptr;            /* [R·C] */
    float *da = nullptr, *dg = nullptr, *du = nullptr; /* [R·I] */
    float *dw = nullptr, *dz = nullptr, *daux = nullptr; /* [N·k], [N·E], [E] */
    double *psum = nullptr;           /* [nmoe·E] Σ_t p[t,e] per MoE layer */
    std::vector<double> psum_h;
    std::vector<float> daux_h;
    float aux = 0.0f;                 /* the last forward's aux loss */
    /* modes 1-3 */
    __nv_bfloat16 *sxq = nullptr, *sxt = nullptr; /* the experts' operands, shared by the layers (seg.cuh layouts) */
    cl_seg_scratch sscr = {};
    void *seg_ws = nullptr;           /* the segmented statistics' partial sums (cq_seg_ws_bytes) */
    size_t seg_ws_bytes = 0;
    uint64_t *streams_d = nullptr;    /* [6·E] the SR streams of a layer's backward: (down, gate, up) × (dgrad, wgrad) × E */
    std::vector<uint64_t> streams_h;  /* [L × 6·E] their host copies */
};

/* allocation of bytes on the device, owned by the model */
typedef std::function<averis_status(void **, size_t)> cm_alloc_fn;

/* I·C and C·I shapes accepted by recipe r for up to N rows */
averis_status cm_moe_check(const qlin_recipe *r, const model_config &c, int64_t N);
/* the mode from AVERIS_MOE_GROUPED (unset: by the experts' shape, C × I) */
averis_status cm_moe_mode(int *mode, int64_t C, int64_t I);
/* buffers for N tokens; weights/grads: the model's layer pointers (router,
 * eg, eu, ed) bound per MoE layer with cm_moe_bind */
averis_status cm_moe_setup(cm_moe *mo, const model_config &c, int64_t N, const cm_alloc_fn &alloc);
void cm_moe_bind(cm_moe *mo, int layer, const float *router, const float *eg, const float *eu, const float *ed,
                 float *g_router, float *g_eg, float *g_eu, float *g_ed);
/* the 3·E expert weight operands of a layer under recipe r */
averis_status cm_moe_prep_weights(cm_moe *mo, int layer, const qlin_recipe *r, cudaStream_t s);
/* xq, xt: the model's shared operand buffers ([N × max width], [max width × kp]) */
void cm_moe_set_operands(cm_moe *mo, __nv_bfloat16 *xq, __nv_bfloat16 *xt);
/* x_next = x_mid + block(h); h [N × C] fp32 or BF16 */
averis_status cm_moe_forward(cm_moe *mo, int layer, const qlin_recipe *r, const void *h, int h_bf16, const float *x_mid,
                             float *x_next, cl_scratch *scr, cublasHandle_t cb, avc_tap_fn tap, void *tap_ctx,
                             cudaStream_t s);
/* after every layer's forward: the aux loss (synchronises), its ∂/∂p on the device */
averis_status cm_moe_aux(cm_moe *mo, cudaStream_t s, float *aux);
/* dh = ∂L/∂h from dout [N × C]; the router's and experts' gradients accumulated */
averis_status cm_moe_backward(cm_moe *mo, int layer, const qlin_recipe *r, const void *h, int h_bf16, const float *dout,
                              float *dh, float loss_scale, uint64_t sr_stream, cl_scratch *scr, cublasHandle_t cb,
                              avc_tap_fn tap, void *tap_ctx, cudaStream_t s);

#endif
