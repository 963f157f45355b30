/* model.cu — the Qwen3 decoder of src/model.c on the GPU: the same math,
 * parameters, recipes and SR streams, with fp32 master weights, an fp32
 * residual stream and BF16 activations between the kernels (fp32 with
 * avc_model_opts.act = FP32: forward_backward<A> is one template for both);
 * every GEMM runs on BF16 operands with fp32 accumulation (exact NVFP4
 * emulation for the quantized linears). This file holds the model: its
 * memory plan, the forward and backward as calls to the kernel families,
 * and the C API.
 *
 *   x      = E[tokens]                                      ce_forward (embedding.cuh)
 *   block (×L):
 *     h1   = RMSNorm(x)·w_in                                cn_rmsnorm (norm.cuh)
 *     q,k,v = qlin(h1)                                      cl_forward (one X̄ for three)
 *     q,k  = RoPE(RMSNorm_Dh(·)·w) → BF16 [B,H,T,Dh]        cn_headnorm_rope
 *     ao   = softmax_causal(Q·Kᵀ/√Dh)·V → [N, H·Dh]         ca_forward (attention.cu)
 *     x    = x + qlin(ao)                                   residual in the GEMM's C
 *     h2   = RMSNorm(x)·w_post; x = x + qlin_d(silu(qlin_g(h2))⊙qlin_u(h2))   cs_swiglu
 *   loss   = CE((RMSNorm(x)·w_f)·Eᵀ)                        cx_lm_head: chunks of tokens,
 *                                                           loss and dlogits together
 * Qwen3-MoE layers (model_layer_is_moe) run the block of moe.cu in place of
 * the MLP (docs/moe.md; written without a GPU run as of 2026-12-06).
 * Determinism: no float atomics; reductions run in fixed orders, so a run
 * replays bit for bit on the same GPU.
 */
#include "qlinear.cuh"
#include "quant_fused.cuh"
#include "attention.cuh"
#include "norm.cuh"
#include "rope.cuh"
#include "swiglu.cuh"
#include "cross_entropy.cuh"
#include "embedding.cuh"
#include "adamw.cuh"
#include "moe.cuh"
#include "averis/model_spec.h"
#include "averis/moe.h"
#include "averis/analysis_cuda.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

/* One block's activations and statistics, kept for the backward (N = B·T tokens). */
struct cm_layer {
    float *x_in, *x_mid;                     /* [N × C] fp32: the residual stream in and after attention */
    float *rstd1, *rstd2, *rstd_q, *rstd_k;  /* [N], [N], [N·H], [N·KV] norm statistics */
    void *h1, *q_raw, *k_raw, *v, *h2;       /* [N × C|qd|kvd|kvd|C] activations: fp32 or BF16 (avc_model.act_bf16) */
    void *g, *u, *a;                         /* [N × F] the MLP's gate, up and silu(g)⊙u */
    /* BF16 activations under a split recipe: q_raw … u hold the residual
     * product, their fp32 mean terms live here (cl_forward's mean_out) */
    float *mb_q, *mb_k, *mb_v, *mb_g, *mb_u; /* [qd], [kvd], [kvd], [F], [F] */
    ca_layer att;                            /* qh, kh, vh, P or lse, ao */
    cl_input in_h1, in_ao, in_h2, in_a;      /* the linears' inputs and their operands */
};

/* A block's parameters (or their gradients) inside the flat [nparams] buffer. */
struct cm_block {
    float *in_norm, *wq, *wk, *wv, *wo, *q_norm, *k_norm, *post_norm, *wg, *wu, *wd;
    float *router, *eg, *eu, *ed; /* a Qwen3-MoE layer (wg, wu, wd NULL): moe.cu */
};

} // namespace

struct avc_model {
    model_config cfg;
    qlin_recipe recipe, bf16_recipe;
    int bf16_last;
    avc_model_opts opts = {};
    int act_bf16; /* activations between kernels in BF16 (else fp32); the residual stream stays fp32 */
    char desc[320];
    int B, T;
    int64_t N, C, F, V, qd, kvd; /* tokens, width, MLP width, vocabulary, H·Dh, KV·Dh */
    int H, KV, Dh;
    size_t nparams;
    std::vector<model_tensor> tensors;
    float *params = nullptr, *grads = nullptr; /* [nparams] each */
    float *mom = nullptr, *var = nullptr;       /* [mom_numel] each: the moments of window mwin */
    moment_window mwin;                         /* all, or a ZeRO-1 rank's shard and tail (avc_model_opts.moments) */
    size_t mom_numel = 0;
    std::vector<size_t> seg_lo, seg_hi; /* [L + 2] model_grad_segment's segments, in the backward's order */
    avc_grad_ready_fn ready = nullptr;  /* avc_model_set_grad_hook's */
    void *ready_ctx = nullptr;
    std::vector<cm_block> blk_w, blk_grad; /* per layer: the parameters, their gradients */
    float *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr, *g_embed = nullptr, *g_final_norm = nullptr,
          *g_lm_head = nullptr;
    std::vector<cl_weight> wops; /* weight operands, 7 per layer: q k v o g u d */
    __nv_bfloat16 *head_bf16 = nullptr; /* [V × C] */
    int weights_ready = 0;
    std::vector<cm_layer> layers;
    int moe = 0;   /* a Qwen3-MoE config: its sparse layers run through moe.cu */
    cm_moe moe_st; /* their buffers and routing */
    float *x_out = nullptr, *hf = nullptr, *rstd_f = nullptr, *tok_loss = nullptr; /* hf [N × C]: fp32 activations only */
    __nv_bfloat16 *hf_bf16 = nullptr;        /* [N × C] */
    ca_attn att = {};                        /* attention's shape, path and scratch */
    float *logits = nullptr;                 /* [chunk × V] */
    __nv_bfloat16 *dlogits = nullptr;        /* [chunk × V] */
    int64_t chunk = 0;                       /* tokens per LM-head chunk */
    __nv_bfloat16 *xq = nullptr, *xt = nullptr; /* the linears' X operands, shared by the layers */
    cl_scratch scr = {};
    /* gradients of the activations, [N × C|C|wmax|qd|qd|kvd|kvd|F|F|F] */
    float *dx = nullptr, *dh = nullptr, *dtmp = nullptr, *dao = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr,
          *da = nullptr, *dg = nullptr, *du = nullptr;
    float *normw_part = nullptr; /* the norm backward's partials */
    double *norm_part = nullptr; /* the grad norm's partials */
    int *tok = nullptr, *tgt = nullptr, *emb_idx = nullptr; /* [N], [N], [3N + 1]: uniq, start, pos */
    cudaStream_t s = nullptr;
    cublasHandle_t cb = nullptr;
    avc_tap_fn tap = nullptr; /* the analysis's hook (averis/analysis_cuda.h), or NULL */
    void *tap_ctx = nullptr;
    std::vector<void *> allocs;
    size_t alloc_bytes = 0; /* what allocs hold */

    template <typename T> averis_status alloc(T **p, int64_t n) {
        void *q = nullptr;
        size_t bytes = (size_t)std::max<int64_t>(n, 1) * sizeof(T);
        cudaError_t e = cudaMalloc(&q, bytes);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            size_t fr = 0, tot = 0;
            if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) fr = tot = 0;
            return averis_fail(AVERIS_ENOMEM,
                               "cuda: cannot allocate %.1f MiB (%s) after %.1f MiB for this model; the GPU has %.1f MiB "
                               "free of %.1f MiB; a smaller --batch, --seq or model fits",
                               (double)bytes / 1048576.0, cudaGetErrorString(e), (double)alloc_bytes / 1048576.0,
                               (double)fr / 1048576.0, (double)tot / 1048576.0);
        }
        alloc_bytes += bytes;
        allocs.push_back(q);
        *p = static_cast<T *>(q);
        return AVERIS_OK;
    }
    /* n activation elements (fp32 or BF16) */
    averis_status alloc_act(void **p, int64_t n) {
        char *q = nullptr;
        CU_OK(alloc(&q, n * (act_bf16 ? 2 : 4)));
        *p = q;
        return AVERIS_OK;
    }
    const qlin_recipe *rec(int l) const { return model_block_is_bf16(cfg.num_hidden_layers, bf16_last, l) ? &bf16_recipe : &recipe; }
};

namespace {

averis_status prep_weights(avc_model *net) {
    if (net->weights_ready) return AVERIS_OK;
    CU_PROF("weight operands", net->s);
    for (int l = 0; l < net->cfg.num_hidden_layers; l++) {
        int moe_l = net->moe && net->moe_st.layers[l].used; /* its MLP operands are the experts' */
        for (int k = 0; k < (moe_l ? 4 : 7); k++) CU_OK(cl_prep_w(net->rec(l), &net->wops[7 * l + k], net->s));
        if (moe_l) CU_OK(cm_moe_prep_weights(&net->moe_st, l, net->rec(l), net->s));
    }
    CU_OK(cq_to_bf16(net->lm_head, net->head_bf16, net->V * net->C, net->s));
    net->weights_ready = 1;
    return AVERIS_OK;
}

void bind_blocks(const model *m, float *base, std::vector<cm_block> &out) {
    out.resize((size_t)m->cfg.num_hidden_layers);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        const model_block &b = m->w.blocks[l];
        const float *h[15] = {b.in_norm, b.wq, b.wk, b.wv, b.wo, b.q_norm, b.k_norm, b.post_norm, b.wg, b.wu, b.wd,
                              b.router, b.eg, b.eu, b.ed};
        float **d[15] = {&out[l].in_norm, &out[l].wq, &out[l].wk, &out[l].wv, &out[l].wo, &out[l].q_norm,
                         &out[l].k_norm, &out[l].post_norm, &out[l].wg, &out[l].wu, &out[l].wd,
                         &out[l].router, &out[l].eg, &out[l].eu, &out[l].ed};
        for (int k = 0; k < 15; k++) *d[k] = h[k] ? base + (h[k] - m->params) : nullptr; /* NULL: absent in this layer */
    }
}

/* The model's shape, paths and memory plan. */
averis_status setup(avc_model *net, const model *m) {
    const model_config &c = m->cfg;
    net->cfg = c;
    net->recipe = m->recipe, net->bf16_recipe = m->bf16_recipe, net->bf16_last = m->bf16_last;
    net->N = (int64_t)net->B * net->T;
    net->C = c.hidden_size, net->F = c.intermediate_size, net->V = c.vocab_size;
    net->H = c.num_attention_heads, net->KV = c.num_key_value_heads, net->Dh = c.head_dim;
    net->qd = (int64_t)net->H * net->Dh, net->kvd = (int64_t)net->KV * net->Dh;
    if (net->Dh > 1024) return averis_fail(AVERIS_EUNSUPPORTED, "cuda: head_dim %d > 1024", net->Dh);
    if (net->T > c.max_position_embeddings)
        return averis_fail(AVERIS_EINVAL, "cuda: sequence length %d exceeds max_position_embeddings %d", net->T,
                           c.max_position_embeddings);
    int64_t N = net->N, C = net->C, F = net->F, V = net->V, qd = net->qd, kvd = net->kvd, T = net->T;
    int64_t BHT = (int64_t)net->B * net->H * T; /* rows of attention scores */
    /* the layout kernels index with 32-bit arithmetic */
    if (N * std::max({C, F, qd}) >= ((int64_t)1 << 31) || BHT * T >= ((int64_t)1 << 40))
        return averis_fail(AVERIS_EINVAL, "cuda: batch × seq = %lld tokens is too large for one micro-batch; use --accum",
                           (long long)N);
    for (const qlin_recipe *r : {&net->recipe, &net->bf16_recipe}) {
        CU_OK(cl_check(r, N, C, qd));
        CU_OK(cl_check(r, N, C, F));
        CU_OK(cl_check(r, N, qd, C));
        CU_OK(cl_check(r, N, C, kvd));
        if (c.num_experts) CU_OK(cm_moe_check(r, c, N));
    }
    ca_attn &at = net->att;
    at.B = net->B, at.T = net->T, at.H = net->H, at.KV = net->KV, at.Dh = net->Dh;
    /* Activations: BF16 by default (half the memory and traffic; the CPU
     * model keeps fp32, so the GPU then differs by one BF16 rounding of q, k,
     * v, g, u and attention's output); act = FP32 keeps them fp32 to follow
     * the CPU closely. The fp32 recipe takes fp32. */
    int fp32_recipe = net->recipe.id == QLIN_FP32 || (net->bf16_last > 0 && net->bf16_recipe.id == QLIN_FP32);
    if (net->opts.act == AVC_ACT_BF16 && fp32_recipe)
        return averis_fail(AVERIS_EINVAL, "BF16 activations: the fp32 recipe takes fp32 activations");
    net->act_bf16 = at.ao_bf16 = net->opts.act != AVC_ACT_AUTO ? net->opts.act == AVC_ACT_BF16 : !fp32_recipe;
    CU_OK(ca_choose(&at, net->opts.attn, c.num_hidden_layers));
    snprintf(net->desc, sizeof net->desc, "%s activations, attention %s", net->act_bf16 ? "BF16" : "fp32", at.path);
    net->nparams = m->nparams;
    net->tensors.assign(m->tensors, m->tensors + m->ntensors);
    const moment_window &mw = net->mwin = net->opts.moments ? *net->opts.moments : moment_window_all(net->nparams);
    net->opts.moments = nullptr; /* copied: the caller's may go */
    if (mw.lo[0] > mw.hi[0] || mw.hi[0] > mw.lo[1] || mw.lo[1] > mw.hi[1] || mw.hi[1] > net->nparams)
        return averis_fail(AVERIS_EINVAL, "cuda model: the moment window [%zu, %zu) + [%zu, %zu) is not inside %zu parameters",
                           mw.lo[0], mw.hi[0], mw.lo[1], mw.hi[1], net->nparams);
    net->mom_numel = moment_window_numel(&mw);
    if (!moment_window_is_all(&mw, net->nparams)) {
        size_t len = strlen(net->desc);
        snprintf(net->desc + len, sizeof net->desc - len, ", AdamW moments of %zu of %zu parameters (%.1f MiB)",
                 net->mom_numel, net->nparams, 8.0 * (double)net->mom_numel / 1048576.0);
    }
    for (int k = 0;; k++) {
        size_t lo, hi;
        if (!model_grad_segment(m, k, &lo, &hi)) break;
        net->seg_lo.push_back(lo), net->seg_hi.push_back(hi);
    }
    CU_TRY(cudaStreamCreateWithFlags(&net->s, cudaStreamNonBlocking));
    CU_CUBLAS_TRY(cublasCreate(&net->cb));
    CU_CUBLAS_TRY(cublasSetStream(net->cb, net->s));
    at.cb = net->cb, at.s = net->s;
    CU_OK(net->alloc(&net->params, (int64_t)net->nparams)); CU_OK(net->alloc(&net->grads, (int64_t)net->nparams));
    CU_OK(net->alloc(&net->mom, (int64_t)net->mom_numel)); CU_OK(net->alloc(&net->var, (int64_t)net->mom_numel));
    bind_blocks(m, net->params, net->blk_w);
    bind_blocks(m, net->grads, net->blk_grad);
    net->embed = net->params + (m->w.embed - m->params);
    net->final_norm = net->params + (m->w.final_norm - m->params);
    net->lm_head = net->params + (m->w.lm_head - m->params);
    net->g_embed = net->grads + (m->w.embed - m->params);
    net->g_final_norm = net->grads + (m->w.final_norm - m->params);
    net->g_lm_head = net->grads + (m->w.lm_head - m->params);
    /* weight operands */
    int Lc = c.num_hidden_layers;
    net->wops.resize((size_t)7 * Lc);
    for (int l = 0; l < Lc; l++) {
        cm_block &b = net->blk_w[l];
        float *ws[7] = {b.wq, b.wk, b.wv, b.wo, b.wg, b.wu, b.wd};
        int64_t dims[7][2] = {{qd, C}, {kvd, C}, {kvd, C}, {C, qd}, {F, C}, {F, C}, {C, F}};
        int moe_l = c.num_experts && model_layer_is_moe(&c, l);
        for (int k = 0; k < (moe_l ? 4 : 7); k++) { /* a MoE layer's MLP operands are moe.cu's */
            cl_weight &o = net->wops[7 * l + k];
            o.w = ws[k], o.n = dims[k][0], o.m = dims[k][1];
            CU_OK(net->alloc(&o.wq, o.n * o.m));
            CU_OK(net->alloc(&o.amax, 1));
        }
    }
    CU_OK(net->alloc(&net->head_bf16, V * C));
    /* activations */
    net->layers.resize((size_t)Lc);
    int64_t kp = std::max(cl_kp(&net->recipe, N), cl_kp(&net->bf16_recipe, N));
    int64_t wmax = std::max({C, qd, F});
    if (c.num_experts) wmax = std::max<int64_t>(wmax, c.moe_intermediate_size); /* the experts' inputs and gradients */
    CU_OK(net->alloc(&net->xq, N * wmax));
    CU_OK(net->alloc(&net->xt, wmax * kp));
    for (int l = 0; l < Lc; l++) {
        cm_layer &io = net->layers[l];
        CU_OK(net->alloc(&io.x_in, N * C)); CU_OK(net->alloc_act(&io.h1, N * C)); CU_OK(net->alloc(&io.rstd1, N));
        CU_OK(net->alloc_act(&io.q_raw, N * qd)); CU_OK(net->alloc_act(&io.k_raw, N * kvd));
        CU_OK(net->alloc_act(&io.v, N * kvd));
        CU_OK(net->alloc(&io.rstd_q, N * net->H)); CU_OK(net->alloc(&io.rstd_k, N * net->KV));
        CU_OK(net->alloc_act(&io.att.ao, N * qd)); CU_OK(net->alloc(&io.x_mid, N * C)); CU_OK(net->alloc_act(&io.h2, N * C));
        CU_OK(net->alloc(&io.rstd2, N));
        int64_t Fl = c.num_experts && model_layer_is_moe(&c, l) ? 0 : F; /* a MoE layer has no dense MLP */
        if (Fl) {
            CU_OK(net->alloc_act(&io.g, N * F)); CU_OK(net->alloc_act(&io.u, N * F));
            CU_OK(net->alloc_act(&io.a, N * F));
        }
        if (net->act_bf16) {
            CU_OK(net->alloc(&io.mb_q, qd)); CU_OK(net->alloc(&io.mb_k, kvd)); CU_OK(net->alloc(&io.mb_v, kvd));
            if (Fl) { CU_OK(net->alloc(&io.mb_g, F)); CU_OK(net->alloc(&io.mb_u, F)); }
        }
        CU_OK(net->alloc(&io.att.qh, N * qd)); CU_OK(net->alloc(&io.att.kh, N * kvd)); CU_OK(net->alloc(&io.att.vh, N * kvd));
        if (at.flash || at.cudnn) CU_OK(net->alloc(&io.att.lse, BHT));
        else CU_OK(net->alloc(&io.att.P, BHT * T));
        cl_input *ins[4] = {&io.in_h1, &io.in_ao, &io.in_h2, &io.in_a};
        const void *xs[4] = {io.h1, io.att.ao, io.h2, io.a};
        int64_t ms[4] = {C, qd, C, F};
        for (int k = 0; k < 4; k++) {
            cl_input &x = *ins[k];
            x.x = xs[k], x.bf16 = net->act_bf16, x.l = N, x.m = ms[k];
            x.xq = net->xq, x.xt = net->xt;
            CU_OK(net->alloc(&x.amax, 1)); CU_OK(net->alloc(&x.mean, ms[k])); CU_OK(net->alloc(&x.res_amax, 1));
            CU_OK(net->alloc(&x.xt_amax, 1)); CU_OK(net->alloc(&x.xt_sum, ms[k]));
        }
    }
    if (c.num_experts) { /* the MoE layers' buffers (moe.cu) */
        net->moe = 1;
        CU_OK(cm_moe_setup(&net->moe_st, c, N, [net](void **p, size_t bytes) { return net->alloc((char **)p, (int64_t)bytes); }));
        for (int l = 0; l < Lc; l++)
            if (net->moe_st.layers[l].used) {
                const cm_block &b = net->blk_w[l], &g = net->blk_grad[l];
                cm_moe_bind(&net->moe_st, l, b.router, b.eg, b.eu, b.ed, g.router, g.eg, g.eu, g.ed);
            }
        cm_moe_set_operands(&net->moe_st, net->xq, net->xt);
    }
    CU_OK(net->alloc(&net->x_out, N * C)); CU_OK(net->alloc(&net->rstd_f, N));
    if (!net->act_bf16) CU_OK(net->alloc(&net->hf, N * C));
    CU_OK(net->alloc(&net->tok_loss, N)); CU_OK(net->alloc(&net->hf_bf16, N * C));
    if (at.flash) {
        CU_OK(net->alloc(&at.Dv, BHT));
    } else if (!at.cudnn) {
        CU_OK(net->alloc(&at.S, BHT * T));
        CU_OK(net->alloc(&at.dS, BHT * T));
    }
    CU_OK(net->alloc(&at.o_dq_heads, N * std::max(qd, kvd))); CU_OK(net->alloc(&at.dk_heads, N * kvd));
    CU_OK(net->alloc(&at.dv_heads, N * kvd)); CU_OK(net->alloc(&at.do_heads, N * qd));
    net->chunk = std::min<int64_t>(N, std::max<int64_t>(16, ((int64_t)1 << 28) / V)); /* ≤ 1.5 GiB of logits */
    CU_OK(net->alloc(&net->logits, net->chunk * V)); CU_OK(net->alloc(&net->dlogits, net->chunk * V));
    CU_OK(net->alloc(&net->scr.dq, N * wmax)); CU_OK(net->alloc(&net->scr.dt, wmax * kp));
    CU_OK(net->alloc(&net->scr.mean_d, wmax)); CU_OK(net->alloc(&net->scr.sum_d, wmax));
    CU_OK(net->alloc(&net->scr.scal, 8)); CU_OK(net->alloc(&net->scr.bias, wmax));
    CU_OK(net->alloc(&net->scr.mean_part, CL_MEAN_SLICES * wmax));
    size_t ws_bytes = cq_ws_bytes(N, wmax);
    char *ws = nullptr;
    CU_OK(net->alloc(&ws, (int64_t)ws_bytes));
    cq_set_workspace(ws, ws_bytes); /* the colstats and row-sum scratch, without per-call allocations */
    CU_OK(net->alloc(&net->dx, N * C)); CU_OK(net->alloc(&net->dh, N * C)); CU_OK(net->alloc(&net->dtmp, N * wmax));
    CU_OK(net->alloc(&net->dao, N * qd)); CU_OK(net->alloc(&net->dq, N * qd)); CU_OK(net->alloc(&net->dk, N * kvd));
    CU_OK(net->alloc(&net->dv, N * kvd)); CU_OK(net->alloc(&net->da, N * F)); CU_OK(net->alloc(&net->dg, N * F));
    CU_OK(net->alloc(&net->du, N * F));
    /* norm-weight partials: for the model-width norms and the head-width ones */
    CU_OK(net->alloc(&net->normw_part, std::max(cn_part_len(N, C), cn_part_len(N * std::max(net->H, net->KV), net->Dh))));
    CU_OK(net->alloc(&net->norm_part, ((int64_t)net->nparams + TRAIN_GRADNORM_CHUNK - 1) / TRAIN_GRADNORM_CHUNK));
    CU_OK(net->alloc(&net->tok, N)); CU_OK(net->alloc(&net->tgt, N)); CU_OK(net->alloc(&net->emb_idx, 3 * N + 1));
    /* the CPU model's rotary tables [T × Dh/2] */
    int64_t half = net->Dh / 2;
    std::vector<float> cs((size_t)(T * half)), sn((size_t)(T * half));
    model_rope_tables(&c, (int)T, cs.data(), sn.data());
    float *rope_cos = nullptr, *rope_sin = nullptr;
    CU_OK(net->alloc(&rope_cos, T * half)); CU_OK(net->alloc(&rope_sin, T * half));
    at.rope_cos = rope_cos, at.rope_sin = rope_sin;
    CU_TRY(cudaMemcpy(rope_cos, cs.data(), cs.size() * 4, cudaMemcpyHostToDevice));
    CU_TRY(cudaMemcpy(rope_sin, sn.data(), sn.size() * 4, cudaMemcpyHostToDevice));
    CU_TRY(cudaMemset(net->grads, 0, net->nparams * 4));
    CU_TRY(cudaMemset(net->mom, 0, net->mom_numel * 4));
    CU_TRY(cudaMemset(net->var, 0, net->mom_numel * 4));
    return AVERIS_OK;
}

/* BF16 activations under a split recipe keep the mean terms of q, k, v, g,
 * u apart (cl_forward's mean_out); otherwise they are in the activations
 * and these are NULL */
struct mean_terms {
    float *q, *k, *v, *g, *u;
};
mean_terms layer_means(const avc_model *net, const cm_layer &io, const qlin_recipe *r) {
    if (!(net->act_bf16 && r->split_x)) return {nullptr, nullptr, nullptr, nullptr, nullptr};
    return {io.mb_q, io.mb_k, io.mb_v, io.mb_g, io.mb_u};
}

/* the analysis's hook at a tensor (averis/analysis_cuda.h), on the model's stream */
#define CM_TAP(layer, kind, x, bf16, rows, cols)                                                            \
    do {                                                                                                    \
        if (net->tap) net->tap(net->tap_ctx, (layer), (kind), (x), (bf16), (rows), (cols));                \
    } while (0)

/* The producer amax (quant_fused.cuh's switch): a linear's input is
 * reduced to its amax by the kernel that writes it (norm, SwiGLU) into x's
 * amax, zeroed here, and cl_prep_x skips its amax pass. For the FP4 recipes
 * without the mean split only: the forward operand is then the tensor
 * itself (no RHT on it); the split's amax comes from its statistics. *amax:
 * where the producer reduces, or NULL. */
static averis_status producer_amax(const qlin_recipe *r, cl_input *x, float **amax, cudaStream_t s) {
    *amax = nullptr;
    x->amax_known = 0;
    if (!r->fp4 || r->split_x || !cq_fused_quant()) return AVERIS_OK;
    CU_TRY(cudaMemsetAsync(x->amax, 0, sizeof(float), s));
    x->amax_known = 1;
    *amax = x->amax;
    return AVERIS_OK;
}

/* The grad hook (avc_model_set_grad_hook): segment k of model_grad_segment is
 * final once the kernels queued so far on the stream have run. */
averis_status grad_ready(avc_model *net, int k) {
    return net->ready ? net->ready(net->ready_ctx, net->seg_lo[(size_t)k], net->seg_hi[(size_t)k]) : AVERIS_OK;
}

/* A: the activations' type (float or BF16) */
template <typename A>
averis_status forward_backward(avc_model *net, const int *tokens, const int *targets, int backward, float loss_scale,
                               uint64_t sr_stream, float *loss) {
    const model_config &c = net->cfg;
    int64_t N = net->N, C = net->C, F = net->F, V = net->V;
    int H = net->H, KV = net->KV, Dh = net->Dh, T = net->T, Lc = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    cudaStream_t s = net->s;
    const float *rope_cos = net->att.rope_cos, *rope_sin = net->att.rope_sin;
    CU_OK(model_check_ids(&c, tokens, N, "token"));
    CU_OK(model_check_ids(&c, targets, N, "target"));
    CU_TRY(cudaMemcpyAsync(net->tok, tokens, N * sizeof(int), cudaMemcpyHostToDevice, s));
    CU_TRY(cudaMemcpyAsync(net->tgt, targets, N * sizeof(int), cudaMemcpyHostToDevice, s));
    CU_OK(prep_weights(net));

    /* ------------------------------------------------------------ forward */
    CU_OK(ce_forward(net->tok, net->embed, net->layers[0].x_in, N, C, s));
    for (int l = 0; l < Lc; l++) {
        cm_layer &io = net->layers[l];
        cm_block &w = net->blk_w[l];
        const qlin_recipe *r = net->rec(l);
        cl_weight *wo = &net->wops[7 * l];
        {
            CU_PROF("norms fwd + rope", s);
            float *amax_h1;
            CU_OK(producer_amax(r, &io.in_h1, &amax_h1, s));
            CU_OK(cn_rmsnorm(io.x_in, w.in_norm, static_cast<A *>(io.h1), io.rstd1, N, C, eps, s, amax_h1));
        }
        CM_TAP(l, "attn_in", io.h1, net->act_bf16, N, C);
        CU_OK(cl_prep_x(r, &io.in_h1, s));
        const mean_terms mt = layer_means(net, io, r);
        CU_OK(cl_forward(r, &io.in_h1, &wo[0], io.q_raw, net->act_bf16, nullptr, mt.q, &net->scr, s));
        CU_OK(cl_forward(r, &io.in_h1, &wo[1], io.k_raw, net->act_bf16, nullptr, mt.k, &net->scr, s));
        CU_OK(cl_forward(r, &io.in_h1, &wo[2], io.v, net->act_bf16, nullptr, mt.v, &net->scr, s));
        {
            CU_PROF("norms fwd + rope", s);
            CU_OK(cn_headnorm_rope(static_cast<const A *>(io.q_raw), mt.q, w.q_norm, rope_cos, rope_sin, N, H, Dh, T, eps,
                                   io.rstd_q, io.att.qh, s));
            CU_OK(cn_headnorm_rope(static_cast<const A *>(io.k_raw), mt.k, w.k_norm, rope_cos, rope_sin, N, KV, Dh, T, eps,
                                   io.rstd_k, io.att.kh, s));
            CU_OK(cr_tokens_to_heads(static_cast<const A *>(io.v), mt.v, io.att.vh, N, KV, Dh, T, s));
        }
        CU_OK(ca_forward(&net->att, &io.att));
        CM_TAP(l, "attn_out", io.att.ao, net->act_bf16, N, net->qd);
        CU_OK(cl_prep_x(r, &io.in_ao, s));
        CU_OK(cl_forward(r, &io.in_ao, &wo[3], io.x_mid, 0, io.x_in, nullptr, &net->scr, s)); /* x_mid = x_in + ao·Woᵀ */
        CM_TAP(l, "resid_attn", io.x_mid, 0, N, C);
        const int moe_layer = net->moe && net->moe_st.layers[l].used; /* (its linears' inputs: moe.cu's) */
        {
            CU_PROF("norms fwd + rope", s);
            float *amax_h2 = nullptr;
            if (!moe_layer) CU_OK(producer_amax(r, &io.in_h2, &amax_h2, s));
            CU_OK(cn_rmsnorm(io.x_mid, w.post_norm, static_cast<A *>(io.h2), io.rstd2, N, C, eps, s, amax_h2));
        }
        CM_TAP(l, "ffn_in", io.h2, net->act_bf16, N, C);
        if (moe_layer) { /* x_next = x_mid + the MoE block's output */
            float *x_next = l + 1 < Lc ? net->layers[l + 1].x_in : net->x_out;
            CU_OK(cm_moe_forward(&net->moe_st, l, r, io.h2, net->act_bf16, io.x_mid, x_next, &net->scr, net->cb, net->tap,
                                 net->tap_ctx, s));
            CM_TAP(l, "resid_ffn", x_next, 0, N, C);
            continue;
        }
        CU_OK(cl_prep_x(r, &io.in_h2, s));
        CU_OK(cl_forward(r, &io.in_h2, &wo[4], io.g, net->act_bf16, nullptr, mt.g, &net->scr, s));
        CU_OK(cl_forward(r, &io.in_h2, &wo[5], io.u, net->act_bf16, nullptr, mt.u, &net->scr, s));
        float *amax_a;
        CU_OK(producer_amax(r, &io.in_a, &amax_a, s));
        CU_OK(cs_swiglu(static_cast<const A *>(io.g), static_cast<const A *>(io.u), mt.g, mt.u, static_cast<A *>(io.a),
                        N * F, F, s, amax_a));
        CM_TAP(l, "ffn_down_in", io.a, net->act_bf16, N, F);
        CU_OK(cl_prep_x(r, &io.in_a, s));
        float *x_next = l + 1 < Lc ? net->layers[l + 1].x_in : net->x_out;
        CU_OK(cl_forward(r, &io.in_a, &wo[6], x_next, 0, io.x_mid, nullptr, &net->scr, s)); /* x_out = x_mid + a·Wdᵀ */
        CM_TAP(l, "resid_ffn", x_next, 0, N, C);
    }
    float aux = 0.0f; /* the MoE load-balancing loss (docs/moe.md) */
    if (net->moe) CU_OK(cm_moe_aux(&net->moe_st, s, &aux));
    if (net->act_bf16) {
        CU_OK(cn_rmsnorm(net->x_out, net->final_norm, net->hf_bf16, net->rstd_f, N, C, eps, s));
    } else {
        CU_OK(cn_rmsnorm(net->x_out, net->final_norm, net->hf, net->rstd_f, N, C, eps, s));
        CU_OK(cq_to_bf16(net->hf, net->hf_bf16, N * C, s));
    }
    /* LM head and cross-entropy per chunk of tokens; with the backward,
     * dlogits = (softmax − onehot)·scale/N feed dhf and dE at once */
    CU_OK(cx_lm_head(net->hf_bf16, net->head_bf16, net->tgt, N, C, V, net->chunk, net->logits, net->dlogits,
                     net->tok_loss, backward, loss_scale / (float)N, net->dh, net->g_lm_head, s));
    if (backward && net->chunk == N) CM_TAP(Lc, "grad_lm_head", net->dlogits, 1, N, V); /* one chunk: all of dlogits */
    std::vector<float> tok_loss((size_t)N);
    CU_TRY(cudaMemcpyAsync(tok_loss.data(), net->tok_loss, N * sizeof(float), cudaMemcpyDeviceToHost, s));
    if (!backward) {
        CU_TRY(cudaStreamSynchronize(s));
        double total = 0.0;
        for (float v : tok_loss) total += v;
        *loss = (float)(total / (double)N);
        if (net->moe && c.output_router_logits) *loss = *loss + (float)c.router_aux_loss_coef * aux; /* as model.c */
        return AVERIS_OK;
    }

    /* ----------------------------------------------------------- backward */
    float *part = net->normw_part;
    CU_OK(cn_rmsnorm_bwd(net->dx, net->g_final_norm, net->dh, net->x_out, nullptr, 1, net->rstd_f, net->final_norm, N, C,
                         0, part, s));
    CU_OK(grad_ready(net, 0)); /* the final norm's and an untied LM head's */
    for (int l = Lc - 1; l >= 0; l--) {
        cm_layer &io = net->layers[l];
        cm_block &w = net->blk_w[l], &gw = net->blk_grad[l];
        const qlin_recipe *r = net->rec(l);
        cl_weight *wo = &net->wops[7 * l];
        io.in_a.xt_ready = io.in_h2.xt_ready = io.in_ao.xt_ready = io.in_h1.xt_ready = 0;
        const mean_terms mt = layer_means(net, io, r);
        /* MLP */
        CM_TAP(l, "grad_ffn_down", net->dx, 0, N, C);
        if (net->moe && net->moe_st.layers[l].used) {
            CU_OK(cm_moe_backward(&net->moe_st, l, r, io.h2, net->act_bf16, net->dx, net->dh, loss_scale, sr_stream,
                                  &net->scr, net->cb, net->tap, net->tap_ctx, s));
        } else {
            CU_OK(cl_backward(r, &io.in_a, &wo[6], net->dx, net->da, 0, gw.wd, model_sr_stream(sr_stream, l, MODEL_LIN_DOWN), &net->scr, s));
            CU_OK(cs_swiglu_bwd(net->da, static_cast<const A *>(io.g), static_cast<const A *>(io.u), mt.g, mt.u, net->dg,
                                net->du, N * F, F, s));
            CM_TAP(l, "grad_ffn_gate", net->dg, 0, N, F);
            CM_TAP(l, "grad_ffn_up", net->du, 0, N, F);
            CU_OK(cl_backward(r, &io.in_h2, &wo[4], net->dg, net->dh, 0, gw.wg, model_sr_stream(sr_stream, l, MODEL_LIN_GATE), &net->scr, s));
            CU_OK(cl_backward(r, &io.in_h2, &wo[5], net->du, net->dh, 1, gw.wu, model_sr_stream(sr_stream, l, MODEL_LIN_UP), &net->scr, s));
        }
        CU_OK(cn_rmsnorm_bwd(net->dx, gw.post_norm, net->dh, io.x_mid, nullptr, 1, io.rstd2, w.post_norm, N, C, 1, part, s));
        /* attention */
        CM_TAP(l, "grad_attn_out", net->dx, 0, N, C);
        CU_OK(cl_backward(r, &io.in_ao, &wo[3], net->dx, net->dao, 0, gw.wo, model_sr_stream(sr_stream, l, MODEL_LIN_O), &net->scr, s));
        CU_OK(ca_backward(&net->att, &io.att, net->dao, net->dq, net->dk, net->dv));
        float *dq_raw = net->dtmp, *dk_raw = net->dao; /* dao is spent */
        CU_OK(cn_rmsnorm_bwd(dq_raw, gw.q_norm, net->dq, static_cast<const A *>(io.q_raw), mt.q, H, io.rstd_q, w.q_norm,
                             N * H, Dh, 0, part, s));
        CU_OK(cn_rmsnorm_bwd(dk_raw, gw.k_norm, net->dk, static_cast<const A *>(io.k_raw), mt.k, KV, io.rstd_k, w.k_norm,
                             N * KV, Dh, 0, part, s));
        CM_TAP(l, "grad_attn_q", dq_raw, 0, N, net->qd);
        CM_TAP(l, "grad_attn_k", dk_raw, 0, N, net->kvd);
        CM_TAP(l, "grad_attn_v", net->dv, 0, N, net->kvd);
        CU_OK(cl_backward(r, &io.in_h1, &wo[0], dq_raw, net->dh, 0, gw.wq, model_sr_stream(sr_stream, l, MODEL_LIN_Q), &net->scr, s));
        CU_OK(cl_backward(r, &io.in_h1, &wo[1], dk_raw, net->dh, 1, gw.wk, model_sr_stream(sr_stream, l, MODEL_LIN_K), &net->scr, s));
        CU_OK(cl_backward(r, &io.in_h1, &wo[2], net->dv, net->dh, 1, gw.wv, model_sr_stream(sr_stream, l, MODEL_LIN_V), &net->scr, s));
        CU_OK(cn_rmsnorm_bwd(net->dx, gw.in_norm, net->dh, io.x_in, nullptr, 1, io.rstd1, w.in_norm, N, C, 1, part, s));
        CU_OK(grad_ready(net, Lc - l)); /* layer l's */
    }
    std::vector<int> emb_idx; /* the host side of net->emb_idx: alive until the sync below */
    CU_OK(ce_backward(tokens, N, C, net->dx, emb_idx, net->emb_idx, net->g_embed, s));
    CU_OK(grad_ready(net, Lc + 1)); /* the embedding's (and a tied LM head's) */
    CU_TRY(cudaStreamSynchronize(s)); /* the host buffers above must outlive their copies */
    double total = 0.0;
    for (float v : tok_loss) total += v;
    *loss = (float)(total / (double)N);
    if (net->moe && c.output_router_logits) *loss = *loss + (float)c.router_aux_loss_coef * aux; /* as model.c */
    return AVERIS_OK;
}

} // namespace

/* ================================================================== C API */
extern "C" {

averis_status avc_model_create(avc_model **out, const model *m, int B, int T, const avc_model_opts *opts) {
    *out = nullptr;
    if (B < 1 || T < 1) return averis_fail(AVERIS_EINVAL, "cuda model: B = %d, T = %d", B, T);
    avc_model *net = new avc_model();
    net->B = B, net->T = T;
    if (opts) net->opts = *opts;
    averis_status st = setup(net, m);
    if (!st) st = avc_model_upload(net, m->params, nullptr, nullptr);
    if (st) {
        avc_model_free(net);
        return st;
    }
    *out = net;
    return AVERIS_OK;
}

void avc_model_free(avc_model *net) {
    if (!net) return;
    if (net->s) cudaStreamSynchronize(net->s);
    cq_set_workspace(nullptr, 0);
    for (void *p : net->allocs) cudaFree(p);
    ca_release(&net->att);
    if (net->cb) cublasDestroy(net->cb);
    if (net->s) cudaStreamDestroy(net->s);
    delete net;
}

averis_status avc_model_upload(avc_model *net, const float *params, const float *mom, const float *var) {
    size_t n = net->nparams * sizeof(float), nm = net->mom_numel * sizeof(float);
    CU_TRY(cudaMemcpyAsync(net->params, params, n, cudaMemcpyHostToDevice, net->s));
    if (mom) CU_TRY(cudaMemcpyAsync(net->mom, mom, nm, cudaMemcpyHostToDevice, net->s));
    if (var) CU_TRY(cudaMemcpyAsync(net->var, var, nm, cudaMemcpyHostToDevice, net->s));
    CU_TRY(cudaStreamSynchronize(net->s));
    net->weights_ready = 0;
    return AVERIS_OK;
}

averis_status avc_model_download(avc_model *net, float *params, float *mom, float *var) {
    size_t n = net->nparams * sizeof(float), nm = net->mom_numel * sizeof(float);
    if (params) CU_TRY(cudaMemcpyAsync(params, net->params, n, cudaMemcpyDeviceToHost, net->s));
    if (mom) CU_TRY(cudaMemcpyAsync(mom, net->mom, nm, cudaMemcpyDeviceToHost, net->s));
    if (var) CU_TRY(cudaMemcpyAsync(var, net->var, nm, cudaMemcpyDeviceToHost, net->s));
    CU_TRY(cudaStreamSynchronize(net->s));
    return AVERIS_OK;
}

averis_status avc_model_zero_grad(avc_model *net) {
    CU_TRY(cudaMemsetAsync(net->grads, 0, net->nparams * sizeof(float), net->s));
    return AVERIS_OK;
}

averis_status avc_model_grads(avc_model *net, float *grads) {
    CU_TRY(cudaMemcpyAsync(grads, net->grads, net->nparams * sizeof(float), cudaMemcpyDeviceToHost, net->s));
    CU_TRY(cudaStreamSynchronize(net->s));
    return AVERIS_OK;
}

averis_status avc_model_step(avc_model *net, const int *tokens, const int *targets, int backward, float loss_scale,
                             uint64_t sr_stream, float *loss) {
    averis_status st = net->act_bf16
                           ? forward_backward<__nv_bfloat16>(net, tokens, targets, backward, loss_scale, sr_stream, loss)
                           : forward_backward<float>(net, tokens, targets, backward, loss_scale, sr_stream, loss);
    if (st) cudaStreamSynchronize(net->s);
    return st;
}

const char *avc_model_describe(const avc_model *net) { return net->desc; }

void avc_model_set_tap(avc_model *net, avc_tap_fn fn, void *ctx) {
    net->tap = fn;
    net->tap_ctx = ctx;
}

void *avc_model_stream(avc_model *net) { return net->s; }

averis_status avc_model_token_losses(avc_model *net, float *losses) {
    CU_TRY(cudaMemcpyAsync(losses, net->tok_loss, (size_t)net->N * sizeof(float), cudaMemcpyDeviceToHost, net->s));
    CU_TRY(cudaStreamSynchronize(net->s));
    return AVERIS_OK;
}

averis_status avc_model_grad_norm(avc_model *net, double *norm) {
    return co_grad_norm(net->grads, (int64_t)net->nparams, net->norm_part, net->s, norm);
}

averis_status avc_model_adamw(avc_model *net, double lr, double beta1, double beta2, double eps, double weight_decay,
                              int64_t t, float gscale) {
    if (!moment_window_is_all(&net->mwin, net->nparams))
        return averis_fail(AVERIS_EINVAL, "cuda model: AdamW over all parameters, but the model holds the moments of %zu of "
                                          "%zu only (a ZeRO-1 window: avc_adamw_range)", net->mom_numel, net->nparams);
    CU_OK(co_adamw(net->tensors, net->params, net->grads, net->mom, net->var, lr, beta1, beta2, eps, weight_decay, t,
                   gscale, net->s));
    net->weights_ready = 0;
    return AVERIS_OK;
}

averis_status avc_model_flat(avc_model *net, float **params, float **grads, float **mom, float **var, void **stream) {
    if (params) *params = net->params;
    if (grads) *grads = net->grads;
    if (mom) *mom = net->mom;
    if (var) *var = net->var;
    if (stream) *stream = net->s;
    return AVERIS_OK;
}

void avc_model_params_changed(avc_model *net) { net->weights_ready = 0; }

void avc_model_set_grad_hook(avc_model *net, avc_grad_ready_fn fn, void *ctx) {
    net->ready = fn;
    net->ready_ctx = ctx;
}

} // extern "C"
