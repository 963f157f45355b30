/* averis/qlinear.h — a linear layer Y = X·Wᵀ whose three GEMMs run on NVFP4
 * operands (W4A4G4) under the recipes of ../shared/AVERIS.md.
 *
 *   X [l × m] (tokens × in), W [n × m] (out × in, as in PyTorch), Y [l × n]
 *   forward  Y  = X·Wᵀ    reduction over m: X along m (1×16), W along m (16×16)
 *   dgrad    dX = D·W     reduction over n: D along n (1×16, SR), W along n
 *                         (16×16 tiles: the same quantized values as forward)
 *   wgrad    dW += Dᵀ·X   reduction over l: Dᵀ and Xᵀ along tokens (1×16), with
 *                         the RHT and the Averis split where the recipe says
 * The backward is the straight-through estimator: gradients use the
 * quantized operands. FP4 recipes need m and n to be multiples of 16 (the K
 * of the forward and dgrad GEMMs, as on hardware); l may be any count (the
 * wgrad copies are zero-padded along tokens).
 */
#ifndef AVERIS_QLINEAR_H
#define AVERIS_QLINEAR_H

#include "averis/nvfp4.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { QLIN_BF16 = 0, QLIN_NVFP4, QLIN_NVFP4_RHT, QLIN_AVERIS, QLIN_AVERIS_RHT, QLIN_FP32, QLIN_NRECIPES } qlin_recipe_id;

typedef struct {
    qlin_recipe_id id;
    int fp4;          /* 0: bf16 (BF16 operands, fp32 accumulation) or fp32 (plain) */
    int split_x;      /* Averis split of activations */
    int split_d;      /* Averis split of output gradients */
    int rht;          /* RHT on the wgrad copies (16-groups of tokens) */
    int sr;           /* stochastic rounding of output-gradient elements */
    int mean_fp4;     /* rank-one means in NVFP4 (paper) instead of fp32 (default) */
    nvfp4_block_kind w_block; /* 16×16 (default) or 1×16 */
    uint64_t seed;    /* SR seed */
} qlin_recipe;

/* "NAME[,key=value...]": NAME in bf16|nvfp4|nvfp4-rht|averis|averis-rht|fp32;
 * keys: seed=N, mean=fp32|fp4, sr=0|1, rht=0|1, wblock=16x16|1x16.
 * Errors name the offending token. */
averis_status qlin_recipe_parse(const char *spec, qlin_recipe *r);
const char *qlin_recipe_name(qlin_recipe_id id);

/* Quantization statistics of one operand copy. */
typedef struct {
    nvfp4_stats q;
    float amax;
} qlin_opstat;
typedef struct {
    qlin_opstat x_fwd, w, d_dgrad, x_wgrad, d_wgrad;
} qlin_stats;

/* Scratch buffers, grown on demand; zero-initialise, free with qlin_ws_free. */
#define QLIN_WS_SLOTS 10
typedef struct {
    float *buf[QLIN_WS_SLOTS];
    size_t cap[QLIN_WS_SLOTS];
} qlin_ws;
void qlin_ws_free(qlin_ws *ws);

/* Y [l×n] = X [l×m] · W [n×m]ᵀ under the recipe. stats may be NULL. */
averis_status qlin_forward(const qlin_recipe *r, const float *X, const float *W, int64_t l, int64_t m, int64_t n,
                           float *Y, qlin_ws *ws, qlin_stats *stats);
/* Given D = dL/dY [l×n]: dX [l×m] = (written), dW [n×m] += (accumulated).
 * dX or dW may be NULL to skip it. sr_stream keys the SR draws (e.g. step
 * and layer), so one (seed, sr_stream) replays bit-exactly. */
averis_status qlin_backward(const qlin_recipe *r, const float *X, const float *W, const float *D, int64_t l,
                            int64_t m, int64_t n, float *dX, float *dW, uint64_t sr_stream, qlin_ws *ws,
                            qlin_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
