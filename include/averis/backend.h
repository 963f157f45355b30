/* averis/backend.h — where the training steps run. The loop (src/train.c)
 * calls this table and knows no device: src/backend_cpu.c runs the CPU
 * model (model.c) in place; src/backend_cuda.c drives the GPU model of
 * averis/cuda.h (in a build without CUDA its create fails, saying so).
 *
 * A backend steps a host model and host AdamW moments bound to it. The CPU
 * backend works on them in place; a device backend keeps its own copy:
 * upload sends the host's over, download brings the device's back (for
 * the checkpoints and the analysis, which run on the host). */
#ifndef AVERIS_BACKEND_H
#define AVERIS_BACKEND_H

#include <stdio.h>

#include "averis/cuda.h"
#include "averis/model.h"

#ifdef __cplusplus
extern "C" {
#endif

struct train_backend;
struct dp_opts;

typedef struct {
    int gpu;                 /* CUDA device index */
    avc_model_opts gpu_opts; /* CUDA: activations and attention path */
    /* data parallel (train_backend_dp of averis/dp.h only): the backend it
     * wraps and the ranks' communicator */
    const struct train_backend *inner;
    const struct dp_opts *dp;
} train_backend_opts;

typedef struct train_backend {
    const char *name; /* "cpu", "cuda" */
    /* Opens the device; called before the run writes anything, so a missing
     * device fails with its reason and leaves no trace. */
    averis_status (*create)(void **be, const train_backend_opts *o);
    void (*destroy)(void *be);
    /* Binds host model m and moments mom/var [m->nparams] (NULL: forward
     * only) for micro-batches of B×T tokens. */
    averis_status (*bind)(void *be, model *m, float *mom, float *var, int B, int T);
    /* host → backend: parameters and moments */
    averis_status (*upload)(void *be);
    /* backend → host: parameters, and the moments when `moments` */
    averis_status (*download)(void *be, int moments);
    averis_status (*zero_grad)(void *be);
    /* Forward over tokens/targets [B·T] (host) → mean loss; with `backward`
     * also grads += d(loss_scale·loss)/dθ, SR keyed by sr_stream. */
    averis_status (*step)(void *be, const int *tokens, const int *targets, int backward, float loss_scale,
                          uint64_t sr_stream, float *loss);
    /* ‖grads‖₂ in fp64 partials of TRAIN_GRADNORM_CHUNK elements */
    averis_status (*grad_norm)(void *be, double *norm);
    /* AdamW over every tensor (adamw_element; no decay on norms): t is the
     * update count after this one, gscale the clip factor on the gradients. */
    averis_status (*adamw)(void *be, double lr, double beta1, double beta2, double eps, double weight_decay, int64_t t,
                           float gscale);
    /* How it runs, one line after bind; NULL when there is nothing to say. */
    const char *(*describe)(void *be);
    /* The mean-bias rows (averis/analysis.h's CSV) of the batch
     * tokens/targets on the backend's own copy, without bringing the weights
     * back; overwrites the gradients. NULL: the loop analyses the host model. */
    averis_status (*analyze)(void *be, const int *tokens, const int *targets, FILE *csv, const char *prefix,
                             uint64_t sr_stream);
    /* For data parallel (src/dp.c; NULL where a backend has none): the flat
     * [nparams] parameters, gradients and moments in the backend's memory
     * (host or device) and its stream (NULL on the CPU), after bind; */
    averis_status (*flat)(void *be, float **params, float **grads, float **mom, float **var, void **stream);
    /* AdamW as adamw over the elements [lo, hi) of the flat vectors only; */
    averis_status (*adamw_range)(void *be, size_t lo, size_t hi, double lr, double beta1, double beta2, double eps,
                                 double weight_decay, int64_t t, float gscale);
    /* the parameters were written through flat (the all-gather): derived
     * copies (the GPU's BF16 / NVFP4 weight operands) are stale. */
    averis_status (*params_changed)(void *be);
} train_backend;

extern const train_backend train_backend_cpu;  /* src/backend_cpu.c */
extern const train_backend train_backend_cuda; /* src/backend_cuda.c */

#ifdef __cplusplus
}
#endif
#endif
