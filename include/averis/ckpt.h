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
 *                    /MANIFEST           every file above: name, size, checksum
 *   OUT/latest                           "ckpt_NNNNNNNN\n"
 *   OUT/train.lock                       flock'd by the run writing OUT
 *
 *   state.bin (host byte order):
 *   +----------+--------------------+----------------+----------------+-----------+
 *   | AVSTATE1 | ckpt_state (208 B) | mom [n] f32    | var [n] f32    | FNV-1a 64 |
 *   +----------+--------------------+----------------+----------------+-----------+
 *   n = nparams; the FNV-1a hash covers every byte before it.
 *
 * MANIFEST (text): "averis-manifest 1 avh64\n", then one line per file,
 * "NAME SIZE HASH\n" (HASH: 16 hex digits of ckpt_hash over the bytes).
 *
 * A checkpoint is written into ckpt_NNNNNNNN.tmp, fsynced and renamed into
 * place; then OUT/latest is replaced atomically. A kill at any moment
 * leaves the previous checkpoint and `latest` intact. */
#ifndef AVERIS_CKPT_H
#define AVERIS_CKPT_H

#include <stdio.h>

#include "averis/model.h"
#include "averis/moments.h"

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
    uint64_t train_tokens, val_tokens, data_hash; /* the data's fingerprint (ckpt_data_fingerprint) */
} ckpt_run;

/* A checkpoint's train.json, every field checked (type and range); unknown
 * fields are refused by name. Fields absent from older checkpoints:
 * has_data = 0 when the data fingerprint is not there. */
typedef struct {
    char recipe[128];
    int step, steps, batch, seq, accum, warmup, bf16_last;
    double lr, min_lr_frac, weight_decay, clip;
    uint64_t seed; /* as JSON has it (a double: exact below 2^53; state.bin holds the exact one) */
    int has_data;
    uint64_t train_tokens, val_tokens, data_hash;
} ckpt_train_info;
averis_status ckpt_train_json_read(const char *path, ckpt_train_info *t);

/* What a state.bin is checked against: the run it belongs to. */
typedef struct {
    size_t nparams;       /* the model's parameters (must equal the state's) */
    uint64_t data_tokens; /* tokens of the train split: data_pos ≤ this (0: not checked) */
    /* the moments to keep (a ZeRO-1 rank's shard and tail, averis/moments.h);
     * NULL: all [nparams]. The checksum still covers the whole file. */
    const moment_window *window;
} ckpt_limits;

/* state.bin (the layout above), written atomically; a write error names the
 * file and the system's reason (e.g. "No space left on device"). */
averis_status ckpt_state_write(const char *path, const ckpt_state *s, const float *mom, const float *var);
/* Reads and checks state.bin: magic, size, checksum, then every header
 * field against itself and lim (0 ≤ step ≤ steps, adam_t + skipped = step,
 * bad_run ≤ skipped, batch/seq/accum in the CLI's ranges, data_pos a
 * multiple of batch·seq and ≤ the data, data_epoch ≤ step·accum, the recipe
 * a NUL-terminated printable string). mom/var [lim->nparams], or
 * [moment_window_numel(lim->window)] holding the window's moments only. */
averis_status ckpt_state_read(const char *path, const ckpt_limits *lim, ckpt_state *s, float *mom, float *var);

/* A fast 64-bit checksum (avh64: four multiply-xor lanes over 8-byte words,
 * then the tail), for the MANIFEST and the data fingerprint. Not
 * cryptographic: it detects corruption, not tampering. */
uint64_t ckpt_hash(const void *p, size_t n);
/* The data fingerprint: avh64 of the train tokens and the val tokens. */
uint64_t ckpt_data_fingerprint(const uint16_t *train, size_t ntrain, const uint16_t *val, size_t nval);

/* Checks a checkpoint directory against its MANIFEST (every file's size and
 * checksum); a directory without MANIFEST (older checkpoints) passes. The
 * error names the file. */
averis_status ckpt_verify(const char *dir);
/* For --resume: verifies OUT/name; on failure the error also names the
 * checkpoint to fall back to (the newest older one that verifies, and how),
 * or says that none is kept. */
averis_status ckpt_verify_latest(const char *out_dir, const char *name);

/* Locks OUT for this process (flock on OUT/train.lock, the pid written in
 * it): a second run on OUT fails at once naming the holder. Then removes
 * what killed writers left (*.tmp.* files, ckpt_*.tmp directories); *removed
 * counts them. Close *fd to unlock. */
averis_status ckpt_lock_out(const char *out_dir, int *fd, int *removed);

/* Writes OUT/ckpt_<s->step>/ (weights and config of m, train.json, state.bin
 * with mom/var [m->nparams]), points OUT/latest at it, prunes to r->keep. */
averis_status ckpt_write(const ckpt_run *r, const model *m, const ckpt_state *s, const float *mom, const float *var);

/* The checkpoint name OUT/latest holds ("ckpt_NNNNNNNN"), or "" if none. */
averis_status ckpt_latest(const char *out_dir, char *name, size_t cap);
/* The newest checkpoint under out_dir ("latest"), or a checkpoint
 * directory itself (used by eval, sample and analyze). */
averis_status ckpt_resolve(const char *path, char *dir, size_t cap);
/* Loads config.json + model.safetensors of a checkpoint dir (verified
 * against its MANIFEST when there is one); recipe and bf16_last from its
 * train.json when present (else fp32) unless recipe_override; an NVFP4
 * recipe checks the widths (multiples of 16, naming the field). */
averis_status ckpt_load_model(const char *dir, const char *recipe_override, model *m, int *seq_len);
/* Loads a checkpoint's weights into m (of the same config) and its
 * state.bin into s and mom/var: [m->nparams], or the moments of `window`
 * only (NULL: all); a truncated, corrupt or out of range state is an error
 * (data_tokens, window: see ckpt_limits). */
averis_status ckpt_load_state(const char *dir, model *m, uint64_t data_tokens, const moment_window *window, ckpt_state *s,
                              float *mom, float *var);

/* Opens a per-step CSV of the run (log.csv, analysis.csv) for appending: a
 * fresh run starts it anew (*fresh: write the header); a resumed run keeps
 * its header and rows up to `step`, the checkpoint's. */
averis_status ckpt_csv_open(const char *path, int resuming, int step, FILE **f, int *fresh);

#ifdef __cplusplus
}
#endif
#endif
