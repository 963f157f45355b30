/* averis/dp.h — data-parallel training with a ZeRO-1 optimizer, as a
 * backend (averis/backend.h) that wraps the CPU or GPU backend and talks to
 * the other ranks through a communicator (averis/comm.h):
 *
 *   global batch of G = world·b rows, read by every rank from the same data
 *   position (the data order is the one of a single process with batch G):
 *
 *       rows  [0, b)  [b, 2b)  ...  [(w-1)·b, G)
 *       rank    0       1             w-1
 *
 *   step      each rank: forward + backward on its b rows, gradient scaled
 *             by 1/world; the losses averaged over the ranks (host). On
 *             the step's last micro-batch the gradients are all-reduced
 *             (Σ, fp32 or BF16 on the wire) in buckets as the backward
 *             finishes them (dp_bucket_plan; the GPU overlaps them with the
 *             rest of the backward, the CPU runs them after it);
 *   grad_norm the backend's own norm (after one all-reduce of the whole
 *             gradient when there were no buckets): every rank holds the
 *             same gradient, so the clip uses the global norm, the same
 *             bits on every rank;
 *   adamw     ZeRO-1: rank r updates only its shard of the flat parameter
 *             vector, whose moments are all it holds (with the tail's: its
 *             window, averis/moments.h), then the parameters are
 *             all-gathered:
 *
 *       flat [n]:  | rank 0: S | rank 1: S | ... | rank w-1: S | tail |
 *                  S = ⌊n / world⌋; the tail (< world elements) is updated by
 *                  every rank alike (all hold the same gradient and moments)
 *
 *   gather_moments  for a checkpoint: rank 0 gathers every shard's moments
 *             (through the host, in chunks), so it writes the usual
 *             checkpoint (resumable on any world size and on the CPU); on a
 *             resume each rank reads its window of the checkpoint.
 *
 * SR streams: rank r of w draws the stream s·w + r for the step stream s
 * (dp_sr_stream): distinct across ranks and steps, and the plain stream for
 * w = 1. They are keyed by rank, not by global row: the NVFP4 tensor scales
 * and the Averis means are taken over each rank's own b·T tokens, so
 * quantized recipes depend on w anyway; the bf16/fp32 recipes match a single
 * process with batch G up to the order of the gradient sums.
 *
 * Memory: each rank holds 2·4·(S + tail) bytes of moments instead of 2·4·n
 * (the describe line says how many it saved); rank 0 holds all of them on
 * the host while it writes a checkpoint. */
#ifndef AVERIS_DP_H
#define AVERIS_DP_H

#include "averis/backend.h"
#include "averis/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dp_opts {
    comm *comm;          /* this rank's communicator */
    comm_wire wire;      /* the gradients' type on the wire (default fp32) */
    size_t bucket_bytes; /* all-reduce buckets of about this size, as the backward finishes
                          * them; 0: one all-reduce after the backward (--dp-buckets MB) */
} dp_opts;

/* --dp-buckets' default, MiB (PyTorch DDP's bucket_cap_mb) */
#define DP_BUCKET_MB_DEFAULT 25.0

/* ------------------------------------------------------- bookkeeping */
typedef struct {
    size_t lo, hi; /* [lo, hi) */
} dp_range;

/* rank's ZeRO-1 shard of a flat vector of n elements */
dp_range dp_shard(size_t n, int world, int rank);
/* the elements every rank updates: [world·⌊n/world⌋, n) */
dp_range dp_tail(size_t n, int world);
/* rank's rows of a global batch of `global_batch` rows: [*row0, *row0 + *rows);
 * fails, naming the numbers, unless world divides it */
averis_status dp_rows(int global_batch, int world, int rank, int *row0, int *rows);
/* rank's SR step stream for the step stream s (s itself when world is 1) */
uint64_t dp_sr_stream(uint64_t s, int world, int rank);
/* rank's moment window: its shard and the tail (all of them when world is 1) */
moment_window dp_moments(size_t n, int world, int rank);
/* The buckets of the gradient all-reduce, in the order they are sent: the
 * segments of model_grad_segment (the order the backward finishes them)
 * joined from the end of the flat vector until a bucket holds at least
 * bucket_bytes; what is left (the embedding's at least) is the last:
 *
 *   flat:    | embed | layer 0 | layer 1 | ... | layer L−1 | head |
 *   buckets:  └ last ┘└─ … ──┘  └───── 1 ─────┘└──────── 0 ────────┘
 *
 * bucket_bytes 0: one bucket [0, n). Writes up to cap of them to out (cap
 * ≥ L + 2 holds any plan) and returns their count. */
int dp_bucket_plan(const model *m, size_t bucket_bytes, dp_range *out, int cap);

/* Fails on every rank, naming `what` and this rank's value, unless all
 * ranks passed the same value (e.g. the step a resume starts from: each
 * rank reads OUT, so every host must see the same checkpoints). */
averis_status dp_agree(const dp_opts *o, double value, const char *what);

/* create needs o->inner (a backend with flat, adamw_range and
 * params_changed) and o->dp; bind's B is the global batch. */
extern const train_backend train_backend_dp;

#ifdef __cplusplus
}
#endif
#endif
