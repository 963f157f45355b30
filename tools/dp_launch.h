/* dp_launch.h — `averis train --gpus N` and launcher-started ranks
 * (dp_launch.c; docs/multigpu.md). */
#ifndef AVERIS_DP_LAUNCH_H
#define AVERIS_DP_LAUNCH_H

#include "averis/train.h"

/* 1 if the run is data parallel: --gpus N (N ≥ 1) or a launcher's rank
 * variables with a world size above 1. */
int dp_launch_wanted(int gpus);
/* Runs o data parallel as dp_launch.c says (o->batch per rank; the
 * gradients in grad_wire, "fp32" or "bf16", all-reduced in buckets of
 * bucket_mb MiB, 0: one all-reduce); prints the final line on rank 0;
 * returns the process exit code. */
int dp_launch_train(train_opts *o, int gpus, const char *grad_wire, double bucket_mb);

#endif
