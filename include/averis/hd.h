/* averis/hd.h — AVERIS_HD marks a spec function that the CPU and the GPU
 * both compile from the same text: `static inline` under a C compiler,
 * `__host__ __device__` under nvcc. The spec headers (nvfp4_spec.h,
 * model_spec.h) are written once with it, so the bits are defined once.
 *
 * The C build uses -ffp-contract=off and the CUDA build --fmad=false with
 * IEEE division and square root, so the same text rounds the same way. */
#ifndef AVERIS_HD_H
#define AVERIS_HD_H

#if defined(__CUDACC__)
#define AVERIS_HD static __host__ __device__ __forceinline__
#else
#define AVERIS_HD static inline
#endif

/* Before a fixed-trip-count loop: unrolled on the device, so its local
 * arrays stay in registers; nothing for the host compiler, to which the
 * pragma is unknown (nvcc's host pass included). */
#if defined(__CUDA_ARCH__)
#define AVERIS_UNROLL _Pragma("unroll")
#else
#define AVERIS_UNROLL
#endif

#endif
