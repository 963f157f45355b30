/* averis/ckpt.h — the trainer's checkpoints: one directory per saved step
 * under the run's OUT, a pointer to the newest, the optimizer state.
 *
 *   OUT/ckpt_NNNNNNNN/model.safetensors  weights, Hugging Face names
 *                    /config.json        Qwen3Config (transformers reads it)
 *                    /train.json         recipe, step, hyperparameters
 *                    /state.bin          optimizer state, checksummed
 *                    /tokenizer.bpe      copied from the data directory
 *                    /tokenizer.json, tokenizer_config.json, generation_config.json
 *                                        the same tokenizer for Hugging Face (with
 *                                        tokenizer.bpe; docs/huggingface.md)
 *   OUT/latest                           "ckpt_NNNNNNNN\n"
 *
 *   state.bin (host byte order):
 *   +----------+--------------------+----------------+----------------+-----------+
 *   | AVSTATE1 | ckpt_state (208 B) | mom [n] f32    | var [n] f32    | FNV-1a 64 |
 *   +----------+--------------------+----------------+----------------+-----------+
 *   n = nparams; the FNV-1a hash covers every byte before it.
 *
 * A checkpoint is written into ckpt_NNNNNNNN.tmp, fsynced and renamed into
 * place; then OUT/latest is replaced atomically. A kill at any moment
 * leaves the previous checkpoint and `latest` intact. */
#ifndef AVERIS_CKPT_H
#define AVERIS_CKPT_H

#include <stdio.h>

#include "averis/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The trainer's counters, written raw into state.bin (its layout is the
 * file format: no padding, 208 bytes). */
typedef struct {
    int64_t step, adam_t, bad_run, skipped; /* steps done, AdamW updates, non-finite steps (in a row, in all) */
    uint64_t data_pos, data_epoch, nparams, seed; /* the train loader's place; the weight-init seed */
    char recipe[128];
    int32_t batch, seq, accum, steps;
} ckpt_state;

/* Where a run's checkpoints go and what train.json records of it. */
typedef struct {
    const char *out_dir;  /* OUT */
    const char *data_dir; /* DATA/tokenizer.bpe is copied in when present */
    int keep;             /* ckpt_* directories kept (never latest's) */
    int steps, batch, seq, accum, warmup, bf16_last;
    double lr, min_lr_frac, weight_decay, clip;
    uint64_t seed;
} ckpt_run;

/* Writes OUT/ckpt_<s->step>/ (weights and config of m, train.json, state.bin
 * with mom/var [m->nparams]), points OUT/latest at it, prunes to r->keep. */
averis_status ckpt_write(const ckpt_run *r, const model *m, const ckpt_state *s, const float *mom, const float *var);

/* The checkpoint name OUT/latest holds ("ckpt_NNNNNNNN"), or "" if none. */
averis_status ckpt_latest(const char *out_dir, char *name, size_t cap);
/* The newest checkpoint under out_dir ("latest"), or a checkpoint
 * directory itself (used by eval, sample and analyze). */
averis_status ckpt_resolve(const char *path, char *dir, size_t cap);
/* Loads config.json + model.safetensors of a checkpoint dir; recipe from
 * its train.json when present (else fp32) unless recipe_override. */
averis_status ckpt_load_model(const char *dir, const char *recipe_override, model *m, int *seq_len);
/* Loads a checkpoint's weights into m (of the same config) and its
 * state.bin into s and mom/var [m->nparams]; a truncated or corrupt state
 * is an error. */
averis_status ckpt_load_state(const char *dir, model *m, ckpt_state *s, float *mom, float *var);

/* Opens a per-step CSV of the run (log.csv, analysis.csv) for appending: a
 * fresh run starts it anew (*fresh: write the header); a resumed run keeps
 * its header and rows up to `step`, the checkpoint's. */
averis_status ckpt_csv_open(const char *path, int resuming, int step, FILE **f, int *fresh);

#ifdef __cplusplus
}
#endif
#endif
