/* averis/moe.h — the Qwen3-MoE feed-forward block, as transformers'
 * Qwen3MoeSparseMoeBlock (Qwen3MoeTopKRouter + Qwen3MoeExperts), and the
 * load-balancing loss of its load_balancing_loss_func. The hooks model.c
 * calls; the model itself is averis/model.h.
 *
 * For the normed block input h [N, C] of a MoE layer:
 *   z = h·W_rᵀ [N, E] (fp32, never quantized), p = softmax(z) in fp32,
 *   the k largest p of each token (ties: the lower expert), weights
 *   w = p_sel (or p_sel / Σ p_sel when norm_topk_prob);
 *   each expert e runs a SwiGLU MLP of width I on its own tokens X_e (in token
 *   order), its three linears through qlinear under the layer's recipe (so
 *   the Averis split's means are over X_e and over its output gradients);
 *   out[t] = Σ_j w_tj · y_{e_tj}[t], summed over the k choices in order.
 * An expert with no tokens in a batch does nothing (no GEMM, no statistics).
 *
 * Aux loss (over the M = L_moe·N rows of every MoE layer together):
 *   aux = E · Σ_e (cnt_e / M) · (Σ_rows p_e / M)
 * cnt_e the top-k selections of e; added to the loss as
 * router_aux_loss_coef · aux when output_router_logits (transformers' rule).
 */
#ifndef AVERIS_MOE_H
#define AVERIS_MOE_H

#include "averis/model.h"
#include "averis/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The layer is a Qwen3MoeSparseMoeBlock (else a dense Qwen3MoeMLP of
 * intermediate_size), by transformers' rule: not in mlp_only_layers, and
 * num_experts > 0 and (layer + 1) % decoder_sparse_step == 0. */
int model_layer_is_moe(const model_config *c, int layer);
/* MoE fields in range (E ≥ 1, 1 ≤ k ≤ E, I ≥ 1, step ≥ 1, coef ≥ 0). */
averis_status moe_config_validate(const model_config *c, const char *what);
/* Parameters: the router, E·(3·I·C) expert weights, per MoE layer. */
int64_t moe_layer_nparams(const model_config *c);
/* Active parameters per token of a MoE layer's feed-forward (router + k experts). */
int64_t moe_layer_active_nparams(const model_config *c);

/* The SR stream of expert e's linear lin (GATE, UP, DOWN) in layer l:
 * model_sr_stream's bits with e+1 in bits 48..61 (step_stream < 2^32). */
uint64_t moe_sr_stream(uint64_t step_stream, int layer, int expert, int lin);

/* Grows the per-layer buffers for N tokens (called by the model's forward). */
averis_status moe_ensure(model *m, int64_t N);
void moe_free(model *m);
/* out [N, C] = the block's output for h [N, C] (kept for the backward). */
averis_status moe_forward(model *m, int layer, const float *h, float *out);
/* After every layer's forward: the aux loss of the batch (0 without MoE layers). */
float moe_aux_loss(model *m);
/* Given dout [N, C] = ∂L/∂out (loss_scale included): dh [N, C] written, the
 * router's and experts' gradients accumulated; the aux loss's gradient
 * (loss_scale · coef) enters through the router when output_router_logits. */
averis_status moe_backward(model *m, int layer, const float *dout, float *dh, float loss_scale, uint64_t sr_stream);

/* Checkpoints: transformers ≥ 5 keeps a layer's experts fused in memory
 * (mlp.experts.gate_up_proj [E, 2I, C], gate rows first; mlp.experts.down_proj
 * [E, C, I]) and writes the per-expert names (mlp.experts.E.gate_proj.weight,
 * ...) with save_pretrained; averis writes those and reads either. Loads
 * the fused tensors of every MoE layer whose file has them, marking the layer
 * in fused [16] (bit l); moe_tensor_fused says whether a per-expert name is
 * covered that way. */
averis_status moe_load_fused(model *m, const st_file *f, uint64_t *fused);
int moe_tensor_fused(const model *m, const char *name, const uint64_t *fused);

/* Routing of the last forward for a layer: sel [N·k] expert ids, wts [N·k]
 * combine weights, counts [E] tokens per expert (pointers into the model;
 * NULL for a dense layer). */
void moe_routing(const model *m, int layer, const int **sel, const float **wts, const int **counts);

#ifdef __cplusplus
}
#endif
#endif
