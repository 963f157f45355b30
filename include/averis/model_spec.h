/* averis/model_spec.h — the decisions the CPU model (src/model.c,
 * src/qlinear.c, src/backend_cpu.c) and the GPU model (cuda/) must make
 * identically for a run to mean the same on either device: which linear
 * gets which stochastic-rounding stream, which blocks run the bf16 recipe,
 * the AdamW element update, and the chunk size of the gradient norm's
 * fp64 partials. Written once, compiled by both (averis/hd.h). */
#ifndef AVERIS_MODEL_SPEC_H
#define AVERIS_MODEL_SPEC_H

#include <math.h>
#include <stdint.h>

#include "averis/hd.h"

/* The seven quantized linears of a block, in the order of their SR stream
 * numbers (the low three bits of the stream). */
typedef enum {
    MODEL_LIN_Q = 0, MODEL_LIN_K = 1, MODEL_LIN_V = 2, MODEL_LIN_O = 3,
    MODEL_LIN_GATE = 4, MODEL_LIN_UP = 5, MODEL_LIN_DOWN = 6,
    MODEL_NLIN = 7
} model_linear;

/* One SR stream per (step·micro-batch stream, layer, linear):
 *
 *     bits 63 ........ 16 | 15 ..... 3 | 2 . 0
 *          step_stream    |   layer    | linear
 */
AVERIS_HD uint64_t model_sr_stream(uint64_t step_stream, int layer, model_linear lin) {
    return (step_stream << 16) | ((uint64_t)layer << 3) | (uint64_t)lin;
}

/* A linear's backward quantizes D twice: along n for dgrad (stream 2s) and
 * along tokens for wgrad (stream 2s + 1), so the two draws never share bits. */
AVERIS_HD uint64_t qlin_dgrad_stream(uint64_t s) { return 2 * s; }
AVERIS_HD uint64_t qlin_wgrad_stream(uint64_t s) { return 2 * s + 1; }

/* --bf16-last N: the last N blocks run the bf16 recipe. */
AVERIS_HD int model_block_is_bf16(int num_layers, int bf16_last, int layer) {
    return layer >= num_layers - bf16_last;
}

/* AdamW, one element, in fp32 in this order (c1, c2: the bias corrections
 * 1 − β^t, rounded to fp32 by the caller; decay: 0 for norms). */
AVERIS_HD void adamw_element(float *p, float *m, float *v, float g, float gscale, float b1, float b2, float c1, float c2,
                             float lr, float eps, float decay) {
    float gi = g * gscale;
    float mm = b1 * *m + (1.0f - b1) * gi;
    float vv = b2 * *v + (1.0f - b2) * gi * gi;
    *m = mm;
    *v = vv;
    float mh = mm / c1, vh = vv / c2;
    *p = *p - lr * (mh / (sqrtf(vh) + eps) + decay * *p);
}

/* Elements per fp64 partial of the global gradient norm. */
#define TRAIN_GRADNORM_CHUNK 65536

#endif
