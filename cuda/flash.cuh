/* flash.cuh — causal GQA attention without materialising P (flash.cu).
 * Q, K, V, dO BF16 head-major [B, heads, T, Dh]; ao token-major
 * [B·T, H·Dh], fp32 or (ao_bf16) BF16; dao fp32 token-major; lse, Dv
 * [B·H·T]; dq [B,H,T,Dh], dk, dv [B,KV,T,Dh] fp32. */
#ifndef AVERIS_CUDA_FLASH_CUH
#define AVERIS_CUDA_FLASH_CUH

#include "common.cuh"

/* 1 if flash.cu has kernels for seq T and head_dim Dh */
int cf_supported(int T, int Dh);
averis_status cf_forward(const __nv_bfloat16 *qh, const __nv_bfloat16 *kh, const __nv_bfloat16 *vh, void *ao,
                         int ao_bf16, float *lse, int B, int T, int H, int KV, int Dh, cudaStream_t s);
averis_status cf_backward(const __nv_bfloat16 *qh, const __nv_bfloat16 *kh, const __nv_bfloat16 *vh,
                          const __nv_bfloat16 *doh, const float *dao, const void *ao, int ao_bf16, const float *lse,
                          float *Dv, float *dq, float *dk, float *dv, int B, int T, int H, int KV, int Dh,
                          cudaStream_t s);

#endif
