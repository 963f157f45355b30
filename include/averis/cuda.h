/* averis/cuda.h — the CUDA fast path (cuda/), for NVIDIA GPUs from sm_90.
 *
 * Hopper has no FP4 tensor cores: every NVFP4 GEMM is emulated exactly
 * (../shared/NVFP4.md): the quantize kernels write each element's
 * e2m1·e4m3 value, exact in BF16, and a cuBLASLt BF16 GEMM with fp32
 * accumulation takes S_decA·S_decB as alpha.
 *
 * All pointers named *_dev are device memory; `stream` is a cudaStream_t
 * (NULL: the default stream). A build without the CUDA toolkit links
 * src/cuda_stub.c, whose functions return AVERIS_EUNSUPPORTED.
 */
#ifndef AVERIS_CUDA_H
#define AVERIS_CUDA_H

#include "averis/model.h"
#include "averis/moments.h"
#include "averis/nvfp4.h"
#include "averis/qlinear.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if this build has the CUDA path. */
int avc_compiled(void);
/* Selects GPU `device` and writes "NAME (sm_XY, N SMs, driver D)" to desc.
 * Fails with a message when there is no usable GPU. */
averis_status avc_init(int device, char *desc, size_t cap);

/* ------------------------------------------------- quantization on device */
/* Packed NVFP4 tensor in device memory, laid out as nvfp4_tensor. */
typedef struct {
    int64_t rows, cols, cols_padded;
    nvfp4_block_kind block;
    uint8_t *codes_dev, *scales_dev;
    float *amax_dev; /* [1] */
} avc_tensor;
averis_status avc_tensor_alloc(avc_tensor *t, int64_t rows, int64_t cols, nvfp4_block_kind block);
void avc_tensor_free(avc_tensor *t);
/* Copies codes, scales and amax into a host tensor of the same shape. */
averis_status avc_tensor_download(const avc_tensor *t, nvfp4_tensor *host);

typedef struct {
    nvfp4_block_kind block;
    int rht, sr;
    uint64_t seed, stream;
    const float *mean_dev; /* [cols] or NULL */
} avc_qopts;
/* The same bits as nvfp4_quantize on the same input and options. src_dev
 * [rows × cols] (row stride ld) of NVFP4_F32 or NVFP4_BF16. */
averis_status avc_quantize(const void *src_dev, nvfp4_dtype dtype, int64_t rows, int64_t cols, int64_t ld,
                           const avc_qopts *o, avc_tensor *out, void *stream);
/* The same bits as nvfp4_dequantize(t, 0, out): out_dev [rows × cols] fp32. */
averis_status avc_dequantize(const avc_tensor *t, float *out_dev, void *stream);
/* The same bits as nvfp4_colstats + nvfp4_residual_amax. */
averis_status avc_colstats(const float *x_dev, int64_t rows, int64_t cols, float *mean_dev, float *col_max_dev,
                           float *col_min_dev, float *res_amax_dev, void *stream);

/* ------------------------------------------- the linear layer on device */
/* qlin_forward / qlin_backward on device pointers (fp32 in and out), for
 * the five recipes and fp32; W blocks 16×16, μ in fp32 (mean=fp4 and
 * wblock=1x16 are CPU-only and refused here). Within a stated tolerance of
 * the CPU (GEMM accumulation order, BF16 attention-free operands); the
 * quantized operands are the CPU's bits. */
averis_status avc_qlin_forward(const qlin_recipe *r, const float *X_dev, const float *W_dev, int64_t l, int64_t m,
                               int64_t n, float *Y_dev);
averis_status avc_qlin_backward(const qlin_recipe *r, const float *X_dev, const float *W_dev, const float *D_dev,
                                int64_t l, int64_t m, int64_t n, float *dX_dev, float *dW_dev, uint64_t sr_stream);

/* -------------------------------------------------- the model on device */
typedef struct avc_model avc_model;
/* A device copy of m (its config, recipe, bf16_last and parameters) for
 * micro-batches of B×T tokens; fp32 master weights and AdamW moments, BF16
 * activations between kernels (fp32 with AVERIS_ACT=fp32) and an fp32
 * residual stream. */
typedef enum { AVC_ACT_AUTO = 0, AVC_ACT_BF16 = 1, AVC_ACT_FP32 = 2 } avc_act;
typedef enum { AVC_ATTN_AUTO = 0, AVC_ATTN_MATERIALISED = 1, AVC_ATTN_FLASH = 2, AVC_ATTN_CUDNN = 3 } avc_attn;
/* How the GPU model runs. act: activations between kernels (AUTO: BF16,
 * fp32 under the fp32 recipe, which refuses BF16). attn: AUTO takes cuDNN's
 * fused flash attention with BF16 activations where the build has cuDNN and
 * the GPU takes it (sm_80 on), else materialises P unless it would take over
 * a quarter of the GPU's memory, then flash.cu. CUDNN needs BF16
 * activations. moments: the AdamW moments the model holds (a ZeRO-1 rank's
 * window, read at create; NULL: all). */
typedef struct { avc_act act; avc_attn attn; const moment_window *moments; } avc_model_opts;
/* Reads the CLI-level names ("bf16"/"fp32", "naive"/"flash"/"cudnn"; NULL or "" =
 * auto) into o; `what_act`/`what_attn` name their source in errors (e.g.
 * "AVERIS_ACT"). Pure C: works in builds without CUDA. */
averis_status avc_model_opts_parse(const char *act, const char *attn, const char *what_act, const char *what_attn,
                                   avc_model_opts *o);
/* opts NULL = all AUTO. */
averis_status avc_model_create(avc_model **g, const model *m, int B, int T, const avc_model_opts *opts);
void avc_model_free(avc_model *g);
/* how it runs, one line: activation type (AVERIS_ACT=bf16, the default, or
 * fp32) and attention path (AVERIS_ATTN=cudnn, naive or flash) */
const char *avc_model_describe(const avc_model *g);
/* params [nparams], mom/var [the moment window's elements] host ↔ device
 * (mom/var may be NULL) */
averis_status avc_model_upload(avc_model *g, const float *params, const float *mom, const float *var);
averis_status avc_model_download(avc_model *g, float *params, float *mom, float *var);
averis_status avc_model_zero_grad(avc_model *g);
/* grads [nparams] device → host (tests) */
averis_status avc_model_grads(avc_model *g, float *grads);
/* Forward over tokens/targets [B·T] (host) → mean loss; with `backward`
 * also grads += d(loss_scale·loss)/dθ (sr_stream keys SR as on the CPU). */
averis_status avc_model_step(avc_model *g, const int *tokens, const int *targets, int backward, float loss_scale,
                             uint64_t sr_stream, float *loss);
/* The per-token cross-entropy [B·T] of the last avc_model_step, device →
 * host (the task scorer's log-likelihoods; model.h's tok_loss on the CPU). */
averis_status avc_model_token_losses(avc_model *g, float *losses);
/* ‖grads‖₂ (deterministic) */
averis_status avc_model_grad_norm(avc_model *g, double *norm);
/* AdamW as train.c's adamw_step: t is the step count after this update.
 * Needs all the moments (a window: avc_adamw_range). */
averis_status avc_model_adamw(avc_model *g, double lr, double beta1, double beta2, double eps, double weight_decay,
                              int64_t t, float gscale);

/* -------------------------------------- data parallel (src/dp.c hooks) */
/* The model's flat device buffers params/grads [nparams], mom/var [the
 * moment window's elements] and its cudaStream_t, for the collectives; any
 * of the pointers may be NULL. */
averis_status avc_model_flat(avc_model *g, float **params, float **grads, float **mom, float **var, void **stream);
/* The parameters were written from outside (the all-gather): the weight
 * operands are rebuilt before the next forward. */
void avc_model_params_changed(avc_model *g);
/* Called by avc_model_step's backward as each segment [lo, hi) of the flat
 * gradient (model_grad_segment's, in its order) becomes final: the kernels
 * queued on the model's stream so far complete it. An error stops the step. */
typedef averis_status (*avc_grad_ready_fn)(void *ctx, size_t lo, size_t hi);
/* fn for the backwards from now on (NULL: none) */
void avc_model_set_grad_hook(avc_model *g, avc_grad_ready_fn fn, void *ctx);
/* AdamW (as avc_model_adamw) over the flat elements [lo, hi) of
 * params/grads (device, [nparams]) laid out as tensors [ntensors] (host;
 * the decay per tensor), with their moments at mom/var [hi − lo] (device:
 * element lo's first), on `stream`; cuda/dp.cu. */
averis_status avc_adamw_range(const model_tensor *tensors, int ntensors, float *params_dev, const float *grads_dev,
                              float *mom_dev, float *var_dev, size_t lo, size_t hi, double lr, double beta1,
                              double beta2, double eps, double weight_decay, int64_t t, float gscale, void *stream);

#ifdef __cplusplus
}
#endif
#endif
