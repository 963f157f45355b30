/* averis/model.h — the Qwen3 decoder: configuration, parameters with Hugging
 * Face names, fp32 forward and hand-written backward. Every linear layer of
 * the blocks runs through qlinear under the run's recipe; embeddings, norms,
 * the attention core and the LM head stay fp32. */
#ifndef AVERIS_MODEL_H
#define AVERIS_MODEL_H

#include "averis/qlinear.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fields and names of Hugging Face's Qwen3Config that shape the model. */
typedef struct {
    int vocab_size;              /* V */
    int hidden_size;             /* C */
    int intermediate_size;       /* F */
    int num_hidden_layers;       /* L */
    int num_attention_heads;     /* H */
    int num_key_value_heads;     /* KV (H % KV == 0) */
    int head_dim;                /* Dh */
    int max_position_embeddings; /* longest sequence */
    int tie_word_embeddings;     /* LM head = embedding matrix */
    double rope_theta;
    double rms_norm_eps;
    /* Qwen3-MoE (Hugging Face Qwen3MoeConfig, model_type qwen3_moe); see
     * averis/moe.h. num_experts = 0: the dense Qwen3 (every field below unused). */
    int num_experts;             /* E */
    int num_experts_per_tok;     /* k, the top-k of the router */
    int moe_intermediate_size;   /* I, each expert's SwiGLU width */
    int decoder_sparse_step;     /* layer l is MoE if (l+1) % step == 0 ... */
    int norm_topk_prob;          /* renormalise the k routing weights to sum 1 */
    int output_router_logits;    /* add router_aux_loss_coef · aux to the loss (as transformers) */
    double router_aux_loss_coef;
    uint64_t mlp_only_layers[16];/* ... and bit l is clear (layers < 1024) */
} model_config;

/* Presets: "tiny" (the CPU default), "small", "qwen3-30m" and "qwen3-90m" (the GPU
 * recipe sweep, docs/sweep.md), "qwen3-0.6b" (the paper's dense shape);
 * Qwen3-MoE: "moe-tiny" (tests), "moe-small" (experiments),
 * "qwen3-moe-7b-a1.5b" (the paper's MoE shape). */
const char *model_preset_names(void);
/* A preset name, or the path of a JSON file with Qwen3Config fields (missing
 * fields take Hugging Face Qwen3Config's defaults, head_dim's 128 included;
 * num_key_value_heads null is num_attention_heads). Fields averis does not implement
 * (Qwen3-MoE, sliding windows, rope scaling, unknown names) are refused.
 * Errors name the file and field. */
averis_status model_config_load(const char *name_or_path, model_config *c);
averis_status model_config_from_json(const char *text, size_t len, const char *what, model_config *c);
averis_status model_config_validate(const model_config *c, const char *what);
/* The NVFP4 recipes quantize blocks of 16 along every linear's input and
 * output: an error naming the first width that is not a multiple of 16. */
averis_status model_config_check_fp4(const model_config *c, const char *what);
/* A config.json that transformers' Qwen3ForCausalLM.from_pretrained reads. */
averis_status model_config_write_hf(const model_config *c, const char *path);
int64_t model_config_nparams(const model_config *c);
/* The rotary tables for positions 0..T-1: cos/sin [T × Dh/2] of pos·θ^(−2i/Dh),
 * the inverse frequency in fp32 as transformers has it (the CPU and GPU
 * models share them). */
void model_rope_tables(const model_config *c, int T, float *cos_out, float *sin_out);
/* Every id of ids [n] is in 0..vocab_size-1, or an error naming the first
 * that is not; `what` names them ("token", "target"). */
averis_status model_check_ids(const model_config *c, const int *ids, int64_t n, const char *what);

/* One parameter tensor inside the flat parameter buffer. */
typedef struct {
    char name[96];     /* Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight */
    int ndim;
    int64_t shape[2];
    size_t offset, numel;
    int decay;         /* AdamW weight decay applies (matrices, not norms) */
} model_tensor;

/* Pointers of one block into the parameter (or gradient) buffer. */
typedef struct {
    float *in_norm;   /* [C]        input_layernorm */
    float *wq;        /* [H·Dh, C]  self_attn.q_proj */
    float *wk;        /* [KV·Dh, C] self_attn.k_proj */
    float *wv;        /* [KV·Dh, C] self_attn.v_proj */
    float *wo;        /* [C, H·Dh]  self_attn.o_proj */
    float *q_norm;    /* [Dh]       self_attn.q_norm */
    float *k_norm;    /* [Dh]       self_attn.k_norm */
    float *post_norm; /* [C]        post_attention_layernorm */
    float *wg;        /* [F, C]     mlp.gate_proj */
    float *wu;        /* [F, C]     mlp.up_proj */
    float *wd;        /* [C, F]     mlp.down_proj */
    /* a Qwen3-MoE layer (wg, wu, wd NULL): */
    float *router;    /* [E, C]     mlp.gate */
    float *eg, *eu;   /* [E, I, C]  mlp.experts.e.gate_proj, .up_proj (expert e at e·I·C) */
    float *ed;        /* [E, C, I]  mlp.experts.e.down_proj */
} model_block;

typedef struct {
    float *embed;     /* [V, C] */
    float *final_norm;/* [C]    */
    float *lm_head;   /* [V, C] (== embed when tied) */
    model_block *blocks; /* [L] */
} model_weights;

/* Saved activations of one block for the backward. */
typedef struct {
    float *x_in, *h1, *rstd1;         /* [N,C], [N,C], [N] */
    float *q_raw, *k_raw, *v;         /* [N,H·Dh], [N,KV·Dh], [N,KV·Dh] */
    float *rstd_q, *rstd_k;           /* [N,H], [N,KV] */
    float *q, *k;                     /* after head norm and rotary */
    float *att;                       /* [B,H,T,T] softmax probabilities */
    float *ao;                        /* [N,H·Dh] attention output */
    float *x_mid, *h2, *rstd2;        /* [N,C], [N,C], [N] */
    float *g, *u, *a;                 /* [N,F] gate, up, silu(gate)·up */
} model_block_acts;

typedef struct {
    model_config cfg;
    int ntensors;
    model_tensor *tensors;
    size_t nparams;
    float *params, *grads;            /* [nparams] each (grads allocated on first backward) */
    model_weights w, g;               /* views of params and grads */

    /* run settings */
    qlin_recipe recipe;
    int bf16_last;                    /* keep the last N blocks in the bf16 recipe */
    qlin_recipe bf16_recipe;          /* what those blocks run under */

    /* activations for the current B×T (grown on demand) */
    int B, T;
    float *act_mem;
    size_t act_cap;
    model_block_acts *acts;
    float *x_out, *hf, *rstd_f, *probs; /* [N,C], [N,C], [N], [N,V] (logits, then probs) */
    float *tok_loss;                  /* [N] per-token cross-entropy */
    int *tokens;                      /* [2N]: inputs, then targets, of the last forward */
    size_t tokens_cap;
    const int *targets;               /* into tokens; NULL after a forward without targets or a backward */
    float *scratch;                   /* backward buffers */
    size_t scratch_cap;
    float *rope_cos, *rope_sin;       /* [T, Dh/2] */
    int rope_T;
    qlin_ws ws;
    float loss;                       /* mean cross-entropy of the last forward (+ the MoE aux term) */
    float ce_loss, aux_loss;          /* its parts: cross-entropy, load-balancing aux (0 for dense) */
    struct moe_state *moe;            /* MoE activations and routing (src/moe.c); NULL for dense */
    /* Optional observer of every quantized linear's input (forward) and
     * output gradient (backward), e.g. for the mean-bias analysis. kinds:
     * attn_in, attn_out, ffn_in, ffn_down_in; grad_attn_out, grad_ffn_gate,
     * grad_ffn_up, grad_ffn_down; in MoE layers, per expert with tokens:
     * expertE_in, expertE_down_in, grad_expertE_gate, grad_expertE_up,
     * grad_expertE_down (ffn_in and grad_ffn_down are the block's). */
    void (*tap)(void *ctx, int layer, const char *kind, const float *x, int64_t rows, int64_t cols);
    void *tap_ctx;
} model;

/* Allocates parameters for cfg (zeroed). */
averis_status model_create(model *m, const model_config *cfg);
void model_free(model *m);
/* Hugging Face's init: linears and embedding N(0, 0.02), norms 1. */
void model_init_weights(model *m, uint64_t seed);
const model_tensor *model_find_tensor(const model *m, const char *name);
/* The backward finishes the flat gradient from its end, in L + 2 segments
 * (the CPU and GPU models alike):
 *
 *   flat:  | embed | layer 0 | ... | layer L−1 | final norm, untied lm_head |
 *   k:       L+1      L              1           0
 *
 * Segment k is [*lo, *hi); an LM head tied to the embedding is the
 * embedding's segment. Returns 0 (and nothing) for k outside 0..L+1. */
int model_grad_segment(const model *m, int k, size_t *lo, size_t *hi);

/* Forward over tokens [B·T] (each row a sequence from position 0). With
 * targets [B·T] it returns the mean cross-entropy in *loss and keeps what the
 * backward needs; without, it leaves the logits in m->probs. */
averis_status model_forward(model *m, const int *tokens, const int *targets, int B, int T, float *loss);
/* Backward of the last forward with targets: grads += d(loss_scale·loss)/dθ.
 * sr_stream keys the recipe's stochastic rounding (step, micro-batch). */
averis_status model_backward(model *m, float loss_scale, uint64_t sr_stream);
averis_status model_zero_grad(model *m);

/* Weights as safetensors with Hugging Face names (what from_pretrained
 * reads); loading checks every tensor's presence and shape. */
averis_status model_save_weights(const model *m, const char *path);
averis_status model_load_weights(model *m, const char *path);

#ifdef __cplusplus
}
#endif
#endif
