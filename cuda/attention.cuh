/* attention.cuh — causal grouped-query attention of the model on device
 * (attention.cu): cuDNN's fused flash attention (cudnn_att.cu) with BF16
 * activations where the build has cuDNN; else cuBLAS batched GEMMs with P
 * materialised in causal row blocks, or flash.cu where P would not fit. */
#ifndef AVERIS_CUDA_ATTENTION_CUH
#define AVERIS_CUDA_ATTENTION_CUH

#include "common.cuh"
#include "cudnn_att.cuh"

#include <cublas_v2.h>

/* The shape, the path and the scratch the layers share (N = B·T tokens). */
struct ca_attn {
    int B, T, H, KV, Dh;
    int flash;                   /* by flash.cu (else cuBLAS with P materialised) */
    int cudnn;                   /* by cuDNN (ccd; flash = 0) */
    ccd_ctx *ccd;                /* cuDNN's context (graphs per shape, workspace) */
    char path[160];              /* the path in words */
    int nsplit;                  /* the materialised path's causal row blocks */
    int ao_bf16;                 /* ao holds BF16 (else fp32) */
    const float *rope_cos, *rope_sin; /* [T × Dh/2] */
    cublasHandle_t cb;
    cudaStream_t s;
    float *S;                    /* [B·H·T·T] scores, then dP (materialised path) */
    __nv_bfloat16 *dS;           /* [B·H·T·T] (materialised path) */
    float *Dv;                   /* [B·H·T] rowsum(dO⊙O) (flash path) */
    float *o_dq_heads;           /* [B, H, T, Dh] fp32: O (forward), dQ (backward; BF16 by cuDNN) */
    float *dk_heads, *dv_heads;  /* [B, KV, T, Dh] fp32 (BF16 by cuDNN) */
    __nv_bfloat16 *do_heads;     /* [B, H, T, Dh] BF16 dO */
};

/* One layer's attention tensors. */
struct ca_layer {
    __nv_bfloat16 *qh, *kh, *vh; /* [B, H, T, Dh], [B, KV, T, Dh] ×2: q, k normed and rotated, v */
    __nv_bfloat16 *P;            /* [B·H·T·T] softmax (materialised path) */
    float *lse;                  /* [B·H·T] log Σ exp of each score row (flash and cuDNN paths) */
    void *ao;                    /* [N, H·Dh] token-major output, fp32 or BF16 (ao_bf16) */
};

/* The path for `want` into at->flash, cudnn, ccd, nsplit and path (AUTO:
 * cuDNN where the build has it, the GPU takes it and ao is BF16 (at->ao_bf16
 * set before); else P materialised unless P of `nlayers` layers would take
 * over a quarter of the GPU's memory, then flash.cu). at->B, T, H, KV, Dh
 * set before. cuDNN runs its deterministic backward (same bits each run). */
averis_status ca_choose(ca_attn *at, avc_attn want, int nlayers);
/* frees what ca_choose made (the cuDNN context) */
void ca_release(ca_attn *at);
/* ao = softmax_causal(Q·Kᵀ/√Dh)·V */
averis_status ca_forward(const ca_attn *at, const ca_layer *l);
/* dao [N, H·Dh] fp32 → dq [N, H·Dh], dk, dv [N, KV·Dh] fp32, token-major,
 * dq and dk with the rotation undone */
averis_status ca_backward(const ca_attn *at, const ca_layer *l, const float *dao, float *dq, float *dk, float *dv);

#endif
