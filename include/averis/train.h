/* averis/train.h — the training loop: AdamW, warmup + cosine LR, gradient
 * clipping and accumulation, validation, NaN/Inf skipping, atomic
 * checkpoints (averis/ckpt.h) and bit-exact resume, on a backend
 * (averis/backend.h: the CPU or the GPU model). */
#ifndef AVERIS_TRAIN_H
#define AVERIS_TRAIN_H

#include "averis/backend.h"
#include "averis/ckpt.h"
#include "averis/data.h"
#include "averis/dp.h"
#include "averis/model.h"
#include <signal.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *config;     /* preset or config JSON path ("tiny") */
    const char *recipe;     /* recipe spec ("bf16") */
    const char *data_dir;   /* DIR with *train*.bin and *val*.bin */
    const char *out_dir;    /* checkpoints, log.csv */
    int steps;              /* optimizer steps in all */
    int batch, seq;         /* B sequences of T tokens per micro-batch */
    int accum;              /* micro-batches per step */
    double lr, min_lr_frac; /* peak LR; cosine floor = lr·min_lr_frac */
    int warmup;             /* linear warmup steps */
    double beta1, beta2, eps, weight_decay, clip;
    int val_every, val_batches;
    int ckpt_every;         /* 0: only at the end */
    int keep;               /* checkpoints kept (older ones are removed) */
    int log_every;
    uint64_t seed;          /* weight init (the recipe's SR seed is its own) */
    int bf16_last;
    int max_bad_steps;      /* stop after this many non-finite steps in a row */
    int resume;             /* continue from out_dir's latest checkpoint */
    int stop_after;         /* stop (with a checkpoint) after this many steps, 0 = off */
    int analyze_every;      /* mean-bias rows into OUT/analysis.csv every K steps (and at step 0), 0 = off */
    const volatile sig_atomic_t *stop_flag; /* non-zero (set by a signal handler): checkpoint after this step and return */
    int quiet;
    int device;             /* 0: CPU, 1: CUDA (the fast path of cuda/; the same loop, data and checkpoints) */
    int gpu;                /* CUDA device index */
    avc_model_opts gpu_opts; /* CUDA: activations, attention path (zero: auto) */
    const train_backend *backend; /* where the steps run; NULL: by device */
    /* Data parallel (averis/dp.h): this process is rank dp->comm->rank of
     * the run, `batch` is the global batch (split over the ranks), only
     * rank 0 writes OUT. NULL: a single process. */
    const struct dp_opts *dp;
} train_opts;

void train_opts_default(train_opts *o);

typedef struct {
    int steps_done;
    int skipped;
    float *losses;          /* [steps] train loss per step (NaN where not run in this call) */
    float final_val_loss;
    double tokens_per_s;
    size_t moment_bytes;    /* the AdamW moments (m and v) this process held: 2·4·nparams, or a ZeRO-1 rank's window */
} train_result;

/* Runs (or resumes) training. Errors leave the last good checkpoint intact. */
averis_status train_run(const train_opts *o, train_result *res);
void train_result_free(train_result *r);

/* o's run on `world` data-parallel ranks that are threads of this process
 * (the CPU group of averis/comm.h; src/train_dp.c): the multi-GPU path
 * without GPUs, for the tests and `train --device cpu --gpus N`. o->batch is
 * the global batch; wire and bucket_bytes as dp_opts has them; res gets
 * rank 0's result. A failing rank aborts the group, so the others stop too. */
averis_status train_run_threads(const train_opts *o, int world, comm_wire wire, size_t bucket_bytes, train_result *res);

/* The mean loss over the first nbatches B×T batches of the loader's data
 * (the validation loss the trainer logs), on the CPU model m. */
averis_status train_eval_loss(model *m, const data_loader *dl, int B, int T, int nbatches, float *loss);

#ifdef __cplusplus
}
#endif
#endif
