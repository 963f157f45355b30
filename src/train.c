/* train.c — the training loop. A step: load batch → forward → loss →
 * backward (× accum) → grad norm and clip → AdamW step → log → validate →
 * analyze → checkpoint. The steps run on a backend (averis/backend.h: the
 * CPU or the GPU model) that this file reaches only through its table; the
 * checkpoints are averis/ckpt.h's.
 * LR: linear warmup to lr, then cosine down to lr·min_lr_frac at the end. */
#define _POSIX_C_SOURCE 200809L
#include "averis/train.h"
#include "averis/analysis.h"
#include "averis/dp.h"
#include "averis/gemm.h"
#include "averis/io.h"
#include "averis/status.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void train_opts_default(train_opts *o) {
    memset(o, 0, sizeof *o);
    o->config = "tiny";
    o->recipe = "bf16";
    o->data_dir = "data/default";
    o->out_dir = "out/run";
    o->steps = 1000;
    o->batch = 8;
    o->seq = 128;
    o->accum = 1;
    o->lr = 3e-3;
    o->min_lr_frac = 0.1;
    o->warmup = -1; /* → steps/20 */
    o->beta1 = 0.9;
    o->beta2 = 0.95;
    o->eps = 1e-8;
    o->weight_decay = 0.1;
    o->clip = 1.0;
    o->val_every = -1; /* → steps/10 */
    o->val_batches = 16;
    o->keep = 2;
    o->log_every = -1; /* → steps/20 */
    o->seed = 1;
    o->max_bad_steps = 5;
}

void train_result_free(train_result *r) {
    free(r->losses);
    memset(r, 0, sizeof *r);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double lr_at(const train_opts *o, int step) {
    if (step < o->warmup) return o->lr * (double)(step + 1) / (double)o->warmup;
    double span = (double)(o->steps - o->warmup), p = span > 0 ? (double)(step - o->warmup) / span : 1.0;
    double lo = o->lr * o->min_lr_frac;
    return lo + 0.5 * (o->lr - lo) * (1.0 + cos(3.14159265358979323846 * p));
}

/* The mean loss over the first nbatches B×T batches: forward only. */
static averis_status eval_loss(const train_backend *be, void *ctx, const data_loader *dl, int B, int T, int nbatches,
                               float *loss) {
    size_t N = (size_t)B * T;
    int *in = malloc(N * sizeof *in), *tg = malloc(N * sizeof *tg);
    if (!in || !tg) { free(in); free(tg); return averis_fail(AVERIS_ENOMEM, "eval: out of memory"); }
    double total = 0.0;
    int done = 0;
    averis_status st = AVERIS_OK;
    for (int b = 0; b < nbatches && !st; b++) {
        size_t pos = (size_t)b * N;
        if (b > 0 && pos + N + 1 > dl->n) break; /* the data ran out: average what was seen */
        float l = 0;
        if (!(st = loader_batch_at(dl, pos, B, T, in, tg)) && !(st = be->step(ctx, in, tg, 0, 1.0f, 0, &l))) {
            total += l;
            done++;
        }
    }
    free(in);
    free(tg);
    if (!st) *loss = (float)(total / (done ? done : 1));
    return st;
}

averis_status train_eval_loss(model *m, const data_loader *dl, int B, int T, int nbatches, float *loss) {
    const train_backend *be = &train_backend_cpu;
    void *ctx = NULL;
    averis_status st = be->create(&ctx, &(train_backend_opts){0});
    if (!st && !(st = be->bind(ctx, m, NULL, NULL, NULL, B, T))) st = eval_loss(be, ctx, dl, B, T, nbatches, loss);
    if (ctx) be->destroy(ctx);
    return st;
}

/* FNV-1a over bytes: the pairing hashes (init weights, data consumed) the
 * sweep compares between recipes of one seed. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}
#define FNV_BASIS 1469598103934665603ull

static const char k_log_header[] = "step,tokens,lr,loss,grad_norm,val_loss,tokens_per_s,skipped\n";

static void fmt_eta(char *buf, size_t cap, double s) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, cap, "?"); return; }
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%dh%02dm", t / 3600, t / 60 % 60);
    else snprintf(buf, cap, "%dm%02ds", t / 60, t % 60);
}

/* ------------------------------------------------------------ a run */
typedef struct {
    train_opts o;             /* with the defaults resolved */
    const train_backend *be;  /* where the steps run */
    void *bctx;
    model m;                  /* the host model: init, resume, analysis and checkpoints */
    data_loader train, val;
    moment_window win;        /* the AdamW moments this process holds: all, or a ZeRO-1 rank's shard and tail */
    float *mom, *var;         /* [moment_window_numel(&win)] the host's AdamW moments */
    int *in, *tg;             /* [B·T] one micro-batch */
    int *ana_in, *ana_tg;     /* [B·T] the fixed analysis batch */
    FILE *log, *ana;          /* OUT/log.csv, OUT/analysis.csv */
    ckpt_state s;
    ckpt_run ck;
    double tokens_per_step, t_steps; /* t_steps: seconds in the steps timed (not validation or checkpoints) */
    int steps_timed;
    double t_ana;             /* seconds in the analyses (--analyze-every), for the overhead line at the end */
    int n_ana;
    int lock_fd;              /* OUT/train.lock, held for the run (-1: none) */
    int inject_nan_step;      /* AVERIS_INJECT_NAN_STEP: this step's gradients are NaN (0: off) */
    int writer;               /* writes OUT (data parallel: rank 0 only) */
} trainer;

static void trainer_free(trainer *t) {
    if (t->bctx) t->be->destroy(t->bctx);
    if (t->lock_fd >= 0) close(t->lock_fd);
    if (t->log) fclose(t->log);
    if (t->ana) fclose(t->ana);
    free(t->ana_in); free(t->ana_tg);
    free(t->mom); free(t->var); free(t->in); free(t->tg);
    loader_free(&t->train);
    loader_free(&t->val);
    model_free(&t->m);
}

/* Mean-bias rows of the fixed analysis batch at this step, on the host model. */
static averis_status analyze_rows(trainer *t, int step) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%d", step);
    double t0 = now_s();
    averis_status st;
    if (t->be->analyze) /* on the backend's copy (the GPU's taps): no weights come back */
        st = t->be->analyze(t->bctx, t->ana_in, t->ana_tg, t->ana, prefix, UINT64_MAX - (uint64_t)step);
    else
        st = analysis_model_rows(&t->m, t->ana_in, t->ana_tg, t->o.batch, t->o.seq, t->ana, prefix,
                                 UINT64_MAX - (uint64_t)step, NULL);
    t->t_ana += now_s() - t0;
    t->n_ana++;
    return st;
}

static int be_analyzes(const trainer *t) { return t->be->analyze != NULL; }

/* Checks the options, opens the backend (before anything is written), the
 * model and the data. */
static averis_status trainer_open(trainer *t, const train_opts *oin, train_result *res) {
    train_opts *o = &t->o;
    *o = *oin;
    if (o->steps < 1 || o->batch < 1 || o->seq < 2 || o->accum < 1 || !(o->lr > 0))
        return averis_fail(AVERIS_EINVAL, "train: steps, batch, accum must be ≥ 1, seq ≥ 2 and lr > 0");
    if (!o->backend && (o->device < 0 || o->device > 1))
        return averis_fail(AVERIS_EINVAL, "train: device %d is neither 0 (cpu) nor 1 (cuda)", o->device);
    if (o->warmup < 0) o->warmup = o->steps / 20;
    if (o->val_every < 0) o->val_every = o->steps / 10 > 0 ? o->steps / 10 : 1;
    if (o->log_every <= 0) o->log_every = o->steps / 20 > 0 ? o->steps / 20 : 1;
    if (o->keep < 1) o->keep = 1;
    static const train_backend *const k_by_device[2] = {&train_backend_cpu, &train_backend_cuda};
    t->be = o->backend ? o->backend : k_by_device[o->device];
    train_backend_opts bo = {.gpu = o->gpu, .gpu_opts = o->gpu_opts, .inner = t->be, .dp = o->dp};
    if (o->dp) t->be = &train_backend_dp; /* wraps the device's backend; rank 0 writes */
    t->writer = !o->dp || o->dp->comm->rank == 0;
    averis_status st = t->be->create(&t->bctx, &bo);
    if (st) return st;
    model_config cfg;
    if ((st = model_config_load(o->config, &cfg))) return st;
    if (o->seq > cfg.max_position_embeddings)
        return averis_fail(AVERIS_EINVAL, "train: --seq %d exceeds the config's max_position_embeddings %d", o->seq,
                           cfg.max_position_embeddings);
    qlin_recipe rec;
    if ((st = qlin_recipe_parse(o->recipe, &rec))) return st;
    /* an NVFP4 recipe needs widths in blocks of 16: said at load, naming the field */
    if (rec.fp4 && o->bf16_last < cfg.num_hidden_layers && (st = model_config_check_fp4(&cfg, o->config))) return st;
    if ((st = model_create(&t->m, &cfg))) return st;
    t->m.recipe = rec;
    t->m.bf16_last = o->bf16_last;
    if ((st = loader_open(&t->train, o->data_dir, "train")) || (st = loader_open(&t->val, o->data_dir, "val"))) return st;
    if (t->train.max_id >= cfg.vocab_size || t->val.max_id >= cfg.vocab_size)
        return averis_fail(AVERIS_EINVAL, "train: the data in %s holds token id %d but the config's vocab_size is %d",
                           o->data_dir, t->train.max_id > t->val.max_id ? t->train.max_id : t->val.max_id,
                           cfg.vocab_size);
    size_t N = (size_t)o->batch * o->seq;
    /* each split that is read must hold one batch: said now, not at the first validation */
    if (t->train.n < N + 1)
        return averis_fail(AVERIS_EINVAL, "train: the train split of %s holds %zu tokens; one batch of --batch %d × --seq %d "
                                          "needs B·T+1 = %zu", o->data_dir, t->train.n, o->batch, o->seq, N + 1);
    if ((o->val_every > 0 || o->analyze_every > 0) && t->val.n < N + 1)
        return averis_fail(AVERIS_EINVAL, "train: the val split of %s holds %zu tokens; one validation batch of --batch %d × "
                                          "--seq %d needs B·T+1 = %zu (or --val-every 0)", o->data_dir, t->val.n, o->batch,
                           o->seq, N + 1);
    const char *inj = getenv("AVERIS_INJECT_NAN_STEP");
    if (inj && *inj) {
        char *end;
        long k = strtol(inj, &end, 10);
        if (*end || k < 1 || k > o->steps)
            return averis_fail(AVERIS_EINVAL, "train: AVERIS_INJECT_NAN_STEP = '%s' is not a step in 1..%d", inj, o->steps);
        t->inject_nan_step = (int)k;
        fprintf(stderr, "train: AVERIS_INJECT_NAN_STEP: the gradients of step %ld will be NaN (fault injection)\n", k);
    }
    /* the moments the backend keeps (a ZeRO-1 rank: its window), no more on the host either */
    t->win = moment_window_all(t->m.nparams);
    if (t->be->moment_window && (st = t->be->moment_window(t->bctx, t->m.nparams, &t->win))) return st;
    if (!moment_window_is_all(&t->win, t->m.nparams) && !t->be->gather_moments)
        return averis_fail(AVERIS_EINVAL, "train: the %s backend holds a window of the moments but cannot gather them",
                           t->be->name);
    size_t held = moment_window_numel(&t->win);
    t->mom = calloc(held ? held : 1, sizeof *t->mom);
    t->var = calloc(held ? held : 1, sizeof *t->var);
    res->moment_bytes = 2 * held * sizeof *t->mom;
    t->in = malloc(N * sizeof *t->in);
    t->tg = malloc(N * sizeof *t->tg);
    res->losses = malloc((size_t)o->steps * sizeof *res->losses);
    if (!t->mom || !t->var || !t->in || !t->tg || !res->losses) return averis_fail(AVERIS_ENOMEM, "train: out of memory");
    for (int i = 0; i < o->steps; i++) res->losses[i] = NAN;
    t->tokens_per_step = (double)o->batch * o->seq * o->accum;
    t->ck = (ckpt_run){.out_dir = o->out_dir, .data_dir = o->data_dir, .keep = o->keep, .steps = o->steps,
                       .batch = o->batch, .seq = o->seq, .accum = o->accum, .warmup = o->warmup,
                       .bf16_last = o->bf16_last, .lr = o->lr, .min_lr_frac = o->min_lr_frac,
                       .weight_decay = o->weight_decay, .clip = o->clip, .seed = o->seed,
                       .train_tokens = t->train.n, .val_tokens = t->val.n,
                       .data_hash = ckpt_data_fingerprint(t->train.tok, t->train.n, t->val.tok, t->val.n)};
    return AVERIS_OK;
}

/* --resume: the checkpoint's config.json and train.json against this run's
 * --config, --bf16-last and --data (state.bin's fields come after). */
static averis_status resume_check(trainer *t, const char *dir) {
    const train_opts *o = &t->o;
    char p[4400];
    snprintf(p, sizeof p, "%s/config.json", dir);
    model_config ck;
    averis_status st = model_config_load(p, &ck);
    if (st) return st;
    const model_config *c = &t->m.cfg;
    const struct { const char *field; double run, ck; } cf[] = {
        {"vocab_size", c->vocab_size, ck.vocab_size}, {"hidden_size", c->hidden_size, ck.hidden_size},
        {"intermediate_size", c->intermediate_size, ck.intermediate_size},
        {"num_hidden_layers", c->num_hidden_layers, ck.num_hidden_layers},
        {"num_attention_heads", c->num_attention_heads, ck.num_attention_heads},
        {"num_key_value_heads", c->num_key_value_heads, ck.num_key_value_heads}, {"head_dim", c->head_dim, ck.head_dim},
        {"max_position_embeddings", c->max_position_embeddings, ck.max_position_embeddings},
        {"tie_word_embeddings", c->tie_word_embeddings, ck.tie_word_embeddings},
        {"rope_theta", c->rope_theta, ck.rope_theta}, {"rms_norm_eps", c->rms_norm_eps, ck.rms_norm_eps}};
    for (size_t i = 0; i < sizeof cf / sizeof *cf; i++)
        if (cf[i].run != cf[i].ck)
            return averis_fail(AVERIS_EINVAL, "train: --config %s has %s = %.9g, the checkpoint's %s has %.9g; resume with "
                                              "the same config", o->config, cf[i].field, cf[i].run, p, cf[i].ck);
    snprintf(p, sizeof p, "%s/train.json", dir);
    ckpt_train_info ti;
    if ((st = ckpt_train_json_read(p, &ti))) return st;
    if (ti.bf16_last != o->bf16_last)
        return averis_fail(AVERIS_EINVAL, "train: --bf16-last %d differs from the checkpoint's %d (%s); resume with the same",
                           o->bf16_last, ti.bf16_last, p);
    if (ti.has_data && (ti.train_tokens != t->ck.train_tokens || ti.val_tokens != t->ck.val_tokens ||
                        ti.data_hash != t->ck.data_hash))
        return averis_fail(AVERIS_EINVAL,
                           "train: --data %s (train %llu tokens, val %llu, fingerprint %016llx) differs from the "
                           "checkpoint's data (train %llu tokens, val %llu, fingerprint %016llx, %s); resume on the same data",
                           o->data_dir, (unsigned long long)t->ck.train_tokens, (unsigned long long)t->ck.val_tokens,
                           (unsigned long long)t->ck.data_hash, (unsigned long long)ti.train_tokens,
                           (unsigned long long)ti.val_tokens, (unsigned long long)ti.data_hash, p);
    return AVERIS_OK;
}

/* A fresh start (initial weights) or a resume (OUT/latest's weights,
 * moments and counters), then the CSVs and the step-0 analysis. */
static averis_status trainer_start(trainer *t) {
    const train_opts *o = &t->o;
    ckpt_state *s = &t->s;
    char latest[256], dir[4200], p[4300];
    averis_status st = averis_mkdir_p(o->out_dir);
    int removed = 0;
    /* the writer (data parallel: rank 0) holds OUT's lock and cleans what a killed run left */
    if (st || (t->writer && (st = ckpt_lock_out(o->out_dir, &t->lock_fd, &removed)))) return st;
    if (removed && !o->quiet)
        fprintf(stderr, "train: removed %d temporary file(s) a killed run left in %s\n", removed, o->out_dir);
    if ((st = ckpt_latest(o->out_dir, latest, sizeof latest))) return st;
    if (o->resume && !latest[0])
        return averis_fail(AVERIS_EINVAL, "train: --resume, but %s holds no checkpoint (no %s/latest); drop --resume to "
                                          "start afresh", o->out_dir, o->out_dir);
    int resuming = o->resume, fresh;
    if (resuming) {
        snprintf(dir, sizeof dir, "%s/%s", o->out_dir, latest);
        if ((st = ckpt_verify_latest(o->out_dir, latest)) || (st = resume_check(t, dir))) return st;
        if ((st = ckpt_load_state(dir, &t->m, t->train.n, &t->win, s, t->mom, t->var))) return st; /* the window's */
        if (strcmp(s->recipe, o->recipe))
            return averis_fail(AVERIS_EINVAL, "train: --recipe %s differs from the checkpoint's recipe %s (%s); resume with the same",
                               o->recipe, s->recipe, dir);
        const struct { const char *flag; long long run, ck; } same[] = {
            {"--batch", o->batch, s->batch}, {"--seq", o->seq, s->seq}, {"--accum", o->accum, s->accum}};
        for (int i = 0; i < 3; i++)
            if (same[i].run != same[i].ck)
                return averis_fail(AVERIS_EINVAL, "train: %s %lld differs from the checkpoint's %lld (%s); resume with the same",
                                   same[i].flag, same[i].run, same[i].ck, dir);
        if (s->seed != o->seed)
            return averis_fail(AVERIS_EINVAL, "train: --seed %llu differs from the checkpoint's %llu (%s); resume with the same",
                               (unsigned long long)o->seed, (unsigned long long)s->seed, dir);
        if (s->step >= o->steps)
            return averis_fail(AVERIS_EINVAL, "train: %s is at step %lld, not before --steps %d", dir,
                               (long long)s->step, o->steps);
        t->train.pos = (size_t)s->data_pos;
        t->train.epoch = s->data_epoch;
        if (!o->quiet) fprintf(stderr, "resuming from %s (step %lld)\n", dir, (long long)s->step);
    } else {
        if (latest[0])
            return averis_fail(AVERIS_EINVAL,
                               "train: %s already holds a checkpoint (%s); pass --resume to continue it or choose another --out",
                               o->out_dir, latest);
        model_init_weights(&t->m, o->seed);
        if (!o->quiet) /* the same seed gives the same weights under every recipe: a sweep checks this line */
            fprintf(stderr, "train: init hash %016llx (seed %llu, %zu params)\n",
                    (unsigned long long)fnv1a(FNV_BASIS, t->m.params, t->m.nparams * sizeof *t->m.params),
                    (unsigned long long)o->seed, t->m.nparams);
        snprintf(s->recipe, sizeof s->recipe, "%s", o->recipe);
        s->batch = o->batch, s->seq = o->seq, s->accum = o->accum;
        s->nparams = t->m.nparams;
        s->seed = o->seed;
    }
    s->steps = o->steps;
    if (o->dp && (st = dp_agree(o->dp, (double)s->step, "the step to start from"))) return st;
    if (!t->writer) return AVERIS_OK;
    snprintf(p, sizeof p, "%s/log.csv", o->out_dir);
    if ((st = ckpt_csv_open(p, resuming, (int)s->step, &t->log, &fresh))) return st;
    if (fresh) fputs(k_log_header, t->log);
    if (o->analyze_every > 0) { /* the first validation batch, fixed for the whole run */
        snprintf(p, sizeof p, "%s/analysis.csv", o->out_dir);
        if ((st = ckpt_csv_open(p, resuming, (int)s->step, &t->ana, &fresh))) return st;
        if (fresh) analysis_csv_header(t->ana, "step,layer,kind");
        t->ana_in = malloc((size_t)o->batch * o->seq * sizeof *t->ana_in);
        t->ana_tg = malloc((size_t)o->batch * o->seq * sizeof *t->ana_tg);
        if (!t->ana_in || !t->ana_tg) return averis_fail(AVERIS_ENOMEM, "train: out of memory");
        if ((st = loader_batch_at(&t->val, 0, o->batch, o->seq, t->ana_in, t->ana_tg))) return st;
        if (s->step == 0 && !t->be->analyze && (st = analyze_rows(t, 0))) return st; /* else after the bind */
    }
    return AVERIS_OK;
}

/* load batch → forward → loss → backward, per micro-batch: the step's mean
 * loss; the last micro-batch's backward leaves the gradients final */
static averis_status forward_backward(trainer *t, int step, double *loss) {
    const train_opts *o = &t->o;
    averis_status st = t->be->zero_grad(t->bctx);
    *loss = 0.0;
    for (int k = 0; k < o->accum && !st; k++) {
        float l = 0;
        uint64_t sr_stream = (uint64_t)step * (uint64_t)o->accum + (uint64_t)k;
        /* fault injection: a NaN loss scale makes every gradient NaN on the backend itself */
        float scale = step + 1 == t->inject_nan_step && k == 0 ? NAN : 1.0f / (float)o->accum;
        if (!(st = loader_next(&t->train, o->batch, o->seq, t->in, t->tg)) &&
            !(st = t->be->step(t->bctx, t->in, t->tg, k + 1 == o->accum ? TRAIN_BACKWARD_LAST : TRAIN_BACKWARD, scale,
                               sr_stream, &l)))
            *loss += l / o->accum;
    }
    return st;
}

/* AdamW on the gradients clipped to norm ≤ clip, or no update at all when
 * the loss or the gradient is not finite (max_bad_steps of those in a row
 * stop the run). */
static averis_status update(trainer *t, int step, double lr, double loss, double norm, int *bad) {
    const train_opts *o = &t->o;
    ckpt_state *s = &t->s;
    *bad = !isfinite(loss) || !isfinite(norm);
    if (!*bad) {
        s->bad_run = 0;
        float gscale = (o->clip > 0 && norm > o->clip) ? (float)(o->clip / norm) : 1.0f;
        return t->be->adamw(t->bctx, lr, o->beta1, o->beta2, o->eps, o->weight_decay, ++s->adam_t, gscale);
    }
    s->bad_run++;
    s->skipped++;
    fprintf(stderr, "step %d: non-finite %s, update skipped (%lld in a row)\n", step + 1,
            isfinite(loss) ? "gradient" : "loss", (long long)s->bad_run);
    if (s->bad_run >= o->max_bad_steps)
        return averis_fail(AVERIS_EINVAL, "train: %lld non-finite steps in a row at step %d; stopping (last checkpoint kept)",
                           (long long)s->bad_run, step + 1);
    return AVERIS_OK;
}

/* The banner, then the backend gets the host's weights and moments. */
static averis_status trainer_bind(trainer *t) {
    const train_opts *o = &t->o;
    if (!o->quiet && strstr(averis_gemm_backend_describe(), "Prescott") && nvfp4_cpu_has_avx512())
        fprintf(stderr, "train: warning: OpenBLAS chose its slowest (Prescott) kernels on this AVX-512 CPU; "
                        "export OPENBLAS_CORETYPE=COOPERLAKE for up to 3x faster GEMMs\n");
    if (!o->quiet)
        fprintf(stderr, "train: %s (%.2fM params), recipe %s, %d steps × %d×%d tokens × %d, lr %g, data %zu tokens\n",
                o->config, (double)t->m.nparams / 1e6, o->recipe, o->steps, o->batch, o->seq, o->accum, o->lr,
                t->train.n);
    averis_status st = t->be->bind(t->bctx, &t->m, t->mom, t->var, &t->win, o->batch, o->seq);
    if (st || (st = t->be->upload(t->bctx))) return st;
    const char *how = t->be->describe(t->bctx);
    if (!o->quiet && how) fprintf(stderr, "train: %s\n", how);
    return AVERIS_OK;
}

/* A row of OUT/log.csv, and a progress line every log_every steps. */
static void log_step(trainer *t, double lr, double loss, double norm, int bad, double dt, int do_val, float vloss) {
    const train_opts *o = &t->o;
    long long step = (long long)t->s.step;
    if (!t->log) return;
    fprintf(t->log, "%lld,%.0f,%.6g,%.6f,%.6g,", step, t->tokens_per_step * (double)step, lr, loss, norm);
    if (do_val) fprintf(t->log, "%.6f", vloss);
    fprintf(t->log, ",%.1f,%d\n", t->tokens_per_step / dt, bad);
    fflush(t->log);
    if (o->quiet || !(step % o->log_every == 0 || step == o->steps || do_val)) return;
    char eta[32];
    fmt_eta(eta, sizeof eta, t->t_steps / t->steps_timed * (double)(o->steps - step));
    fprintf(stderr, "step %6lld/%d | loss %.4f | lr %.2e | norm %6.3f | %6.0f tok/s | ETA %s", step, o->steps, loss, lr,
            norm, t->tokens_per_step * t->steps_timed / t->t_steps, eta);
    if (do_val) fprintf(stderr, " | val %.4f", vloss);
    fputc('\n', stderr);
}

/* A checkpoint of the host model (downloaded) and the moments: the
 * writer's own, or, for a window (ZeRO-1), all of them gathered to the
 * writer for the write (every rank takes part). */
static averis_status checkpoint(trainer *t) {
    size_t n = t->m.nparams;
    if (moment_window_is_all(&t->win, n)) return t->writer ? ckpt_write(&t->ck, &t->m, &t->s, t->mom, t->var) : AVERIS_OK;
    float *mom = NULL, *var = NULL;
    averis_status st = AVERIS_OK;
    if (t->writer && (!(mom = malloc(n * sizeof *mom)) || !(var = malloc(n * sizeof *var))))
        st = averis_fail(AVERIS_ENOMEM, "train: out of memory for the %zu moments of a checkpoint", n);
    if (!st) st = t->be->gather_moments(t->bctx, mom, var);
    if (!st && t->writer) st = ckpt_write(&t->ck, &t->m, &t->s, mom, var);
    free(mom);
    free(var);
    return st;
}

averis_status train_run(const train_opts *oin, train_result *res) {
    trainer t;
    memset(&t, 0, sizeof t);
    t.lock_fd = -1;
    memset(res, 0, sizeof *res);
    const train_opts *o = &t.o;
    const train_backend *be;
    averis_status st;
    if ((st = trainer_open(&t, oin, res)) || (st = trainer_start(&t)) || (st = trainer_bind(&t))) goto out;
    if (t.ana && t.s.step == 0 && be_analyzes(&t) && (st = analyze_rows(&t, 0))) goto out;
    be = t.be;
    double t_start = now_s();
    for (int step = (int)t.s.step; step < o->steps; step++) {
        double t0 = now_s(), lr = lr_at(o, step), loss, norm;
        int bad;
        /* load batch → forward → loss → backward, × accum */
        if ((st = forward_backward(&t, step, &loss))) goto out;
        /* clip → AdamW step (none on a non-finite loss or gradient) */
        if ((st = be->grad_norm(t.bctx, &norm)) || (st = update(&t, step, lr, loss, norm, &bad))) goto out;
        t.s.step = step + 1;
        t.s.data_pos = t.train.pos;
        t.s.data_epoch = t.train.epoch;
        res->losses[step] = (float)loss;
        double dt = now_s() - t0;
        t.t_steps += dt;
        t.steps_timed++;
        /* validate, log */
        int do_val = o->val_every > 0 && (t.s.step % o->val_every == 0 || t.s.step == o->steps);
        float vloss = NAN;
        if (do_val && (st = eval_loss(be, t.bctx, &t.val, o->batch, o->seq, o->val_batches, &vloss))) goto out;
        log_step(&t, lr, loss, norm, bad, dt, do_val, vloss);
        if (do_val) res->final_val_loss = vloss;
        /* analyze, checkpoint: on the host, so the weights (and for a checkpoint the moments) come back first */
        int stop = (o->stop_after > 0 && t.s.step >= o->stop_after) || (o->stop_flag && *o->stop_flag);
        if (stop && t.s.step < o->steps && !o->quiet)
            fprintf(stderr, "train: stopping at step %lld with a checkpoint (--resume continues)\n", (long long)t.s.step);
        int do_ana = t.ana && t.s.step % o->analyze_every == 0;
        int do_ckpt = (o->ckpt_every > 0 && t.s.step % o->ckpt_every == 0) || t.s.step == o->steps || stop;
        if (((do_ana && !be->analyze) || do_ckpt) && (st = be->download(t.bctx, do_ckpt))) goto out;
        if (do_ana && (st = analyze_rows(&t, (int)t.s.step))) goto out;
        if (do_ckpt && (st = checkpoint(&t))) goto out;
        res->steps_done = (int)t.s.step;
        if (stop) break;
    }
    res->skipped = (int)t.s.skipped;
    res->tokens_per_s = t.steps_timed ? t.tokens_per_step * t.steps_timed / t.t_steps : 0.0;
    if (!o->quiet) { /* the tokens read from the run's start (a fresh run starts at 0), in order: equal between
                      * the recipes of a sweep, whatever the calls a run was resumed in */
        uint64_t h = FNV_BASIS;
        for (uint64_t e = 0; e < t.train.epoch; e++) h = fnv1a(h, t.train.tok, t.train.n * sizeof *t.train.tok);
        h = fnv1a(h, t.train.tok, t.train.pos * sizeof *t.train.tok);
        fprintf(stderr, "train: data hash %016llx (the tokens up to position %zu of epoch %llu)\n",
                (unsigned long long)h, t.train.pos, (unsigned long long)t.train.epoch);
    }
    if (!o->quiet && t.n_ana > 0 && t.steps_timed > 0)
        fprintf(stderr, "analysis: %d analyses in %.2f s (%.3f s each; %.2f%% of the %.1f s of timed steps)\n",
                t.n_ana, t.t_ana, t.t_ana / t.n_ana, 100.0 * t.t_ana / t.t_steps, t.t_steps);
    if (!o->quiet)
        fprintf(stderr, "done: %d steps in %.1f s, %.0f tokens/s, final val loss %.4f\n", res->steps_done,
                now_s() - t_start, res->tokens_per_s, res->final_val_loss);
out:
    trainer_free(&t);
    return st;
}
