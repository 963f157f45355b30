/* averis/gemm.h — fp32 GEMM: a real BLAS when the build found one, else our
 * own blocked OpenMP+SIMD kernel; a naive triple loop as the reference. */
#ifndef AVERIS_GEMM_H
#define AVERIS_GEMM_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { AVERIS_GEMM_AUTO = 0, AVERIS_GEMM_BLAS = 1, AVERIS_GEMM_OWN = 2 } averis_gemm_backend;

/* C[M×N] = alpha·op(A)·op(B) + beta·C, row-major; op(X) = Xᵀ if trans.
 * op(A) is M×K, op(B) is K×N. beta == 0 ignores C's contents. */
void averis_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
/* The reference: each C_ij = Σ_k in order, fp64 accumulation. */
void averis_sgemm_ref(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* Which backend averis_sgemm uses (AUTO = BLAS if built with one); the
 * AVERIS_GEMM=own|blas environment variable overrides AUTO. */
void averis_gemm_set_backend(averis_gemm_backend b);
averis_gemm_backend averis_gemm_get_backend(void);
int averis_gemm_have_blas(void);
const char *averis_gemm_backend_name(void);
/* The backend and, for OpenBLAS, the kernel family it chose for this CPU. */
const char *averis_gemm_backend_describe(void);

#ifdef __cplusplus
}
#endif
#endif
