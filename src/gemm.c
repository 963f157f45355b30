/* gemm.c — fp32 GEMM backends. The own kernel accumulates each C_ij over k
 * in order in fp32 (so its bits do not depend on the thread count),
 * parallel over blocks of rows, vectorised across columns. */
#include "averis/gemm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef AVERIS_HAVE_BLAS
#include <cblas.h>
#endif

static averis_gemm_backend g_backend = AVERIS_GEMM_AUTO;

void averis_gemm_set_backend(averis_gemm_backend b) { g_backend = b; }

int averis_gemm_have_blas(void) {
#ifdef AVERIS_HAVE_BLAS
    return 1;
#else
    return 0;
#endif
}

averis_gemm_backend averis_gemm_get_backend(void) {
    averis_gemm_backend b = g_backend;
    if (b == AVERIS_GEMM_AUTO) {
        const char *e = getenv("AVERIS_GEMM");
        if (e && !strcmp(e, "own")) b = AVERIS_GEMM_OWN;
        else if (e && !strcmp(e, "blas")) b = AVERIS_GEMM_BLAS;
    }
    if (b == AVERIS_GEMM_AUTO || (b == AVERIS_GEMM_BLAS && !averis_gemm_have_blas()))
        b = averis_gemm_have_blas() ? AVERIS_GEMM_BLAS : AVERIS_GEMM_OWN;
    return b;
}

const char *averis_gemm_backend_name(void) {
    return averis_gemm_get_backend() == AVERIS_GEMM_BLAS ? "openblas" : "own";
}

const char *averis_gemm_backend_describe(void) {
#ifdef AVERIS_HAVE_BLAS
    static char buf[128];
    if (averis_gemm_get_backend() == AVERIS_GEMM_BLAS) {
        snprintf(buf, sizeof buf, "openblas (%s kernels)", openblas_get_corename());
        return buf;
    }
#endif
    return averis_gemm_backend_name();
}

void averis_sgemm_ref(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++) {
                double a = transA ? A[k * lda + i] : A[i * lda + k];
                double b = transB ? B[j * ldb + k] : B[k * ldb + j];
                s += a * b;
            }
            float prev = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
            C[i * ldc + j] = (float)(alpha * s) + prev;
        }
}

/* C rows [i0, i1) += A_ik · B_k over all k, for a j-block; A is M×K and B
 * is K×N, both row-major. Vectorised across j with no reassociation. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void own_block(const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                      int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t K) {
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        for (int64_t i = i0; i < i1; i++) {
            float a = A[i * lda + k];
            float *c = C + i * ldc;
            for (int64_t j = j0; j < j1; j++) c[j] += a * b[j];
        }
    }
}

static void own_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    /* normalise to row-major A [M×K] and B [K×N] (copies only when transposed) */
    float *At = NULL, *Bt = NULL;
    if (transA) {
        At = malloc((size_t)(M * K) * sizeof(float));
        if (!At) { averis_sgemm_ref(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); return; }
        for (int64_t k = 0; k < K; k++)
            for (int64_t i = 0; i < M; i++) At[i * K + k] = A[k * lda + i];
        A = At;
        lda = K;
    }
    if (transB) {
        Bt = malloc((size_t)(K * N) * sizeof(float));
        if (!Bt) { free(At); averis_sgemm_ref(0, 1, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); return; }
        for (int64_t j = 0; j < N; j++)
            for (int64_t k = 0; k < K; k++) Bt[k * N + j] = B[j * ldb + k];
        B = Bt;
        ldb = N;
    }
    enum { IB = 8, JB = 512 };
    int64_t nib = (M + IB - 1) / IB;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t ib = 0; ib < nib; ib++) {
        int64_t i0 = ib * IB, i1 = i0 + IB < M ? i0 + IB : M;
        float acc[IB * JB];
        for (int64_t j0 = 0; j0 < N; j0 += JB) {
            int64_t j1 = j0 + JB < N ? j0 + JB : N, w = j1 - j0;
            memset(acc, 0, sizeof acc);
            own_block(A + i0 * lda, lda, B + j0, ldb, acc, JB, 0, i1 - i0, 0, w, K);
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = 0; j < w; j++) {
                    float *c = C + i * ldc + j0 + j;
                    float prev = beta == 0.0f ? 0.0f : beta * *c;
                    *c = alpha * acc[(i - i0) * JB + j] + prev;
                }
        }
    }
    free(At);
    free(Bt);
}

void averis_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
#ifdef AVERIS_HAVE_BLAS
    if (averis_gemm_get_backend() == AVERIS_GEMM_BLAS) {
        /* Single-threaded BLAS calls on fixed tiles of the larger of M and N,
         * spread over our OpenMP threads: no second thread pool spinning
         * against OpenMP, and tiles that do not depend on the thread count. */
        static int single;
        if (!__atomic_load_n(&single, __ATOMIC_ACQUIRE)) {
#pragma omp critical(averis_blas_init)
            {
                openblas_set_num_threads(1);
                __atomic_store_n(&single, 1, __ATOMIC_RELEASE);
            }
        }
        int split_m = M >= N;
        int64_t dim = split_m ? M : N, tile = dim <= 2048 ? 64 : 256, ntiles = (dim + tile - 1) / tile;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (ntiles > 1)
#endif
        for (int64_t t = 0; t < ntiles; t++) {
            int64_t a = t * tile, w = a + tile < dim ? tile : dim - a;
            const float *At = A, *Bt = B;
            float *Ct = C;
            if (split_m) {
                At = transA ? A + a : A + a * lda;
                Ct = C + a * ldc;
            } else {
                Bt = transB ? B + a * ldb : B + a;
                Ct = C + a;
            }
            cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                        (int)(split_m ? w : M), (int)(split_m ? N : w), (int)K, alpha, At, (int)lda, Bt, (int)ldb,
                        beta, Ct, (int)ldc);
        }
        return;
    }
#endif
    own_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
