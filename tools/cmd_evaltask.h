/* cmd_evaltask.h — `averis eval --task`: multiple choice by log-likelihood
 * (tools/cmd_evaltask.c), called from cmd_eval. */
#ifndef AVERIS_CMD_EVALTASK_H
#define AVERIS_CMD_EVALTASK_H

typedef struct {
    const char *ckpt, *task, *recipe, *tokenizer; /* tokenizer NULL: CKPT/tokenizer.bpe */
    const char *scores, *json;                    /* per-item JSONL, the result as JSON (NULL: none) */
    int gpu, gpu_index;                           /* --device cuda, --gpu N */
    int batch, seq, limit;                        /* seq 0: config.max_position_embeddings; limit 0: all */
} eval_task_opts;

/* Scores the task and prints acc, acc_norm, acc_bytes with standard errors;
 * returns the exit code (errors printed). */
int eval_task(const eval_task_opts *o);

#endif
