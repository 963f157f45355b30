/* averis/backend.h — where the training steps run. The loop (src/train.c)
 * calls this table and knows no device: src/backend_cpu.c runs the CPU
 * model (model.c) in place; src/backend_cuda.c drives the GPU model of
 * averis/cuda.h (in a build without CUDA its create fails, saying so).
 *
 * A backend steps a host model and host AdamW moments bound to it. The CPU
 * backend works on them in place; a device backend keeps its own copy:
 * upload sends the host's over, download brings the device's back (for
 * the checkpoints and the analysis, which run on the host).
 *
 * The moments are those of a window (averis/moments.h): all of them in a
 * single process; a ZeRO-1 rank's shard and tail under data parallel
 * (averis/dp.h), which then gathers them for a checkpoint. */
#ifndef AVERIS_BACKEND_H
#define AVERIS_BACKEND_H

#include <stdio.h>

#include "averis/cuda.h"
#include "averis/model.h"
#include "averis/moments.h"

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

/* step's `backward`: 0 forward only; TRAIN_BACKWARD adds the gradients;
 * TRAIN_BACKWARD_LAST also says that this is the step's last micro-batch,
 * so its backward leaves the gradients final (data parallel starts
 * reducing them while it runs). Any non-zero value is a backward. */
enum { TRAIN_FORWARD = 0, TRAIN_BACKWARD = 1, TRAIN_BACKWARD_LAST = 2 };

/* A grad_hook's callback: the gradients of the flat range [lo, hi) are
 * final once the work queued so far on the backend's stream has run. */
typedef averis_status (*train_grad_ready_fn)(void *ctx, size_t lo, size_t hi);

typedef struct train_backend {
    const char *name; /* "cpu", "cuda" */
    /* Opens the device; called before the run writes anything, so a missing
     * device fails with its reason and leaves no trace. */
    averis_status (*create)(void **be, const train_backend_opts *o);
    void (*destroy)(void *be);
    /* Binds host model m and the moments mom/var [moment_window_numel(win)]
     * of window win (NULL: all m->nparams; mom NULL: forward only) for
     * micro-batches of B×T tokens. */
    averis_status (*bind)(void *be, model *m, float *mom, float *var, const moment_window *win, int B, int T);
    /* host → backend: parameters and moments (the window's) */
    averis_status (*upload)(void *be);
    /* backend → host: parameters, and the moments (the window's) when `moments` */
    averis_status (*download)(void *be, int moments);
    averis_status (*zero_grad)(void *be);
    /* Forward over tokens/targets [B·T] (host) → mean loss; with `backward`
     * (TRAIN_BACKWARD or _LAST) also grads += d(loss_scale·loss)/dθ, SR
     * keyed by sr_stream. */
    averis_status (*step)(void *be, const int *tokens, const int *targets, int backward, float loss_scale,
                          uint64_t sr_stream, float *loss);
    /* ‖grads‖₂ in fp64 partials of TRAIN_GRADNORM_CHUNK elements */
    averis_status (*grad_norm)(void *be, double *norm);
    /* AdamW over every tensor (adamw_element; no decay on norms): t is the
     * update count after this one, gscale the clip factor on the gradients.
     * Needs all the moments (a window: adamw_range). */
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
     * [nparams] parameters and gradients in the backend's memory (host or
     * device) and its stream (NULL on the CPU), after bind; */
    averis_status (*flat)(void *be, float **params, float **grads, void **stream);
    /* AdamW as adamw over the elements [lo, hi) of the flat vectors only,
     * [lo, hi) inside one range of the bound moment window; */
    averis_status (*adamw_range)(void *be, size_t lo, size_t hi, double lr, double beta1, double beta2, double eps,
                                 double weight_decay, int64_t t, float gscale);
    /* the parameters were written through flat (the all-gather): derived
     * copies (the GPU's BF16 / NVFP4 weight operands) are stale; */
    averis_status (*params_changed)(void *be);
    /* the next backward (only) calls fn(ctx, lo, hi) for each segment of the
     * flat gradient as it becomes final, in model_grad_segment's order
     * (data parallel's buckets; the CPU calls it after its backward). */
    averis_status (*grad_hook)(void *be, train_grad_ready_fn fn, void *ctx);
    /* For a backend that holds a window of the moments (data parallel; NULL:
     * all of them): the window it holds of a model of n parameters, which
     * the trainer allocates on the host and binds; */
    averis_status (*moment_window)(void *be, size_t n, moment_window *win);
    /* and for a checkpoint, after download(moments): the whole model's
     * moments mom/var [nparams] on the host of the writer (rank 0); the
     * other ranks pass NULL and take part. */
    averis_status (*gather_moments)(void *be, float *mom, float *var);
} train_backend;

extern const train_backend train_backend_cpu;  /* src/backend_cpu.c */
extern const train_backend train_backend_cuda; /* src/backend_cuda.c */

#ifdef __cplusplus
}
#endif
#endif
