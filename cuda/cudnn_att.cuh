/* cudnn_att.cuh — causal grouped-query attention through cuDNN's fused flash
 * attention (the cuDNN frontend's SDPA graph), forward and backward, BF16.
 *
 *   forward   O = softmax_causal(Q·Kᵀ/√Dh)·V per (b, h), K and V of kv head
 *             h / (H/KV); lse = m + log l of each score row (natural log),
 *             the statistics the backward needs
 *   backward  dQ, dK, dV from Q, K, V, O, dO and lse (the dK, dV of a kv head
 *             summed over its H/KV query heads)
 *
 * Every tensor is BF16 of logical shape [B, heads, T, Dh] (heads = H for Q,
 * O, dO, dQ; KV for K, V, dK, dV) at any element strides of B, heads and T
 * (Dh contiguous): ccd_heads() describes the head-major [B, heads, T, Dh]
 * buffers, ccd_tokens() the token-major [B·T, heads·Dh] ones, so the model
 * passes its buffers as they are, with no transpose copy. lse is fp32
 * [B, H, T] contiguous (flash.cu's lse: either path's forward feeds the
 * other's backward). Strides and pointers must be multiples of 16 bytes.
 *
 * A ccd_ctx holds the cuDNN handle of the device current at ccd_create, the
 * graphs (built once per shape and layout: the first call of a shape costs
 * milliseconds to seconds, later ones nothing) and one workspace grown to
 * the largest graph's need. Not thread-safe: one context per thread and
 * device. The first call of a shape allocates: warm up before capturing a
 * CUDA graph.
 *
 * A build without cuDNN links cudnn_att_stub.cu: ccd_supported() is 0 and
 * ccd_create() fails with "built without cuDNN".
 */
#ifndef AVERIS_CUDA_CUDNN_ATT_CUH
#define AVERIS_CUDA_CUDNN_ATT_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cstdint>

#include "averis/nvfp4.h" /* averis_status */

/* A BF16 tensor [B, heads, T, Dh]: element (b, h, t, d) at
 * ptr + b·sb + h·sh + t·st + d. Inputs are only read. */
struct ccd_tensor {
    void *ptr;
    int64_t sb, sh, st;
};
/* head-major [B, heads, T, Dh] */
static inline ccd_tensor ccd_heads(const __nv_bfloat16 *p, int heads, int T, int Dh) {
    return ccd_tensor{(void *)p, (int64_t)heads * T * Dh, (int64_t)T * Dh, (int64_t)Dh};
}
/* token-major [B·T, heads·Dh] (token n = b·T + t) */
static inline ccd_tensor ccd_tokens(const __nv_bfloat16 *p, int heads, int T, int Dh) {
    return ccd_tensor{(void *)p, (int64_t)T * heads * Dh, (int64_t)Dh, (int64_t)heads * Dh};
}

struct ccd_ctx;

/* 1 if this build has cuDNN attention and it takes sequence length T and
 * head dim Dh (any T ≥ 1; Dh a multiple of 8 up to 128). */
int ccd_supported(int T, int Dh);

/* A context on the current device. deterministic = 1: the backward runs
 * cuDNN's deterministic algorithm (same inputs → same bits; on Hopper a
 * B·H·T²·2-byte dP workspace), and a cuDNN that has none fails the backward
 * with AVERIS_EUNSUPPORTED; 0: the fastest plan, which may sum dQ in a
 * varying order. Fails (AVERIS_EUNSUPPORTED) where cuDNN is missing, older
 * than 9, or the GPU is older than sm_80. */
averis_status ccd_create(ccd_ctx **out, int deterministic);
void ccd_destroy(ccd_ctx *c);
/* "cuDNN 9.19.0 (built with 9.19.0), frontend 1.32.0, deterministic backward" */
const char *ccd_describe(const ccd_ctx *c);

/* o = attention(q, k, v); lse [B·H·T] fp32 out for the backward, or NULL
 * (inference: no statistics are written). H % KV == 0. */
averis_status ccd_forward(ccd_ctx *c, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k, ccd_tensor v,
                          ccd_tensor o, float *lse, cudaStream_t s);
/* dq, dk, dv (BF16, overwritten) from the forward's q, k, v, o and lse and
 * the output gradient dO (BF16). */
averis_status ccd_backward(ccd_ctx *c, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k, ccd_tensor v,
                           ccd_tensor o, ccd_tensor dO, const float *lse, ccd_tensor dq, ccd_tensor dk, ccd_tensor dv,
                           cudaStream_t s);
/* Bytes of device workspace the context holds now (grown by the builds). */
size_t ccd_workspace_bytes(const ccd_ctx *c);
/* The three graphs of a call (forward for training and for inference,
 * backward) defined and validated on the host for a GPU of compute
 * capability sm (90: Hopper), with no handle or memory: the frontend's
 * checks of shapes, strides and attributes against this cuDNN's rules, not
 * the engines' support. NOTE: frontend 1.32's validate still calls
 * cudaGetDevice, so on a machine with no GPU it fails with that CUDA error.
 * Tensors' pointers are ignored. */
averis_status ccd_validate(int sm, int deterministic, int B, int T, int H, int KV, int Dh, ccd_tensor q, ccd_tensor k,
                           ccd_tensor v, ccd_tensor o, ccd_tensor dO, ccd_tensor dq, ccd_tensor dk, ccd_tensor dv);

#endif
