/* embedding.cuh — the token embedding on device: x = E[tokens], and its
 * gradient dE[tok] += Σ of dx over the token's positions, grouped on the
 * host so each row sums in a fixed order (no atomics). Included by
 * model.cu. */
#ifndef AVERIS_CUDA_EMBEDDING_CUH
#define AVERIS_CUDA_EMBEDDING_CUH

#include "common.cuh"

#include <algorithm>
#include <vector>

namespace {

__global__ void k_embed(const int *tok, const float *E, float *x, int64_t N, int64_t C) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint32_t i32 = (uint32_t)i, c32 = (uint32_t)C; /* 32-bit index math: sizes checked at setup */
    if (i < N * C) x[i] = E[(int64_t)tok[i32 / c32] * C + i32 % c32];
}

/* dE[tok] += Σ over the token's positions (in order) of dx: one block per
 * distinct token (pos sorted by token on the host) */
__global__ void k_embed_bwd(const float *dx, const int *uniq, const int *start, const int *pos, int64_t C, float *dE) {
    int u = blockIdx.x;
    int tok = uniq[u], p0 = start[u], p1 = start[u + 1];
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int k = p0; k < p1; k++) acc += dx[(int64_t)pos[k] * C + c];
        dE[(int64_t)tok * C + c] += acc;
    }
}

/* x [N × C] = E[tok [N]] (tok on device) */
averis_status ce_forward(const int *tok, const float *E, float *x, int64_t N, int64_t C, cudaStream_t s) {
    k_embed<<<cu_blocks(N * C, 256), 256, 0, s>>>(tok, E, x, N, C);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* dE [V × C] += the rows of dx [N × C] by token, tokens [N] on the host;
 * idx (host) and idx_dev [3N + 1] hold [uniq: N | start: N+1 | pos: N], pos
 * the stable sort order; the caller keeps idx alive until the stream syncs */
averis_status ce_backward(const int *tokens, int64_t N, int64_t C, const float *dx, std::vector<int> &idx, int *idx_dev,
                          float *dE, cudaStream_t s) {
    idx.assign((size_t)(3 * N + 1), 0);
    int *uniq = idx.data(), *start = uniq + N, *pos = start + N + 1;
    for (int64_t n = 0; n < N; n++) pos[n] = (int)n;
    std::stable_sort(pos, pos + N, [&](int x, int y) { return tokens[x] < tokens[y]; });
    int nu = 0;
    for (int64_t k = 0; k < N; k++)
        if (k == 0 || tokens[pos[k]] != tokens[pos[k - 1]]) {
            uniq[nu] = tokens[pos[k]];
            start[nu++] = (int)k;
        }
    start[nu] = (int)N;
    CU_TRY(cudaMemcpyAsync(idx_dev, idx.data(), idx.size() * sizeof(int), cudaMemcpyHostToDevice, s));
    CU_PROF("embedding bwd", s);
    k_embed_bwd<<<(unsigned)nu, 256, 0, s>>>(dx, idx_dev, idx_dev + N, idx_dev + 2 * N + 1, C, dE);
    CU_LAUNCHED();
    return AVERIS_OK;
}

} // namespace

#endif
