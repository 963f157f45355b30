/* test_train.c — the training loop: bit-exact resume, checkpoints that
 * survive bad runs, NaN handling. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "averis/train.h"
#include "check.h"
#include "test_util.h"

/* A tiny model and a Markov-chain corpus over 64 tokens in a fresh dir. */
static void make_fixture(char *dir) {
    if (test_mkdtemp(dir, 64, "train", 0)) return;
    test_write_text(dir, "model.json", TEST_TINY_MODEL_JSON);
    uint16_t tok[6000];
    test_markov_tokens(tok, 6000, 7);
    test_write_split(dir, "data", tok, 5000, 1000);
}

static void opts_for(train_opts *o, const char *dir, char *cfg, char *data, char *out, const char *sub) {
    train_opts_default(o);
    sprintf(cfg, "%s/model.json", dir);
    sprintf(data, "%s/data", dir);
    sprintf(out, "%s/%s", dir, sub);
    o->config = cfg;
    o->data_dir = data;
    o->out_dir = out;
    o->recipe = "averis-rht";
    o->steps = 8;
    o->batch = 2;
    o->seq = 32;
    o->accum = 2;
    o->warmup = 2;
    o->val_every = 4;
    o->val_batches = 2;
    o->analyze_every = 4;
    o->quiet = 1;
}

/* 8 steps straight = 4 steps, stop, resume, 4 more: the same losses, final
 * weights and analysis rows, bit for bit (averis-rht: SR, RHT, accumulation). */
void test_train_resume_bit_exact(void) {
    char dir[64], cfg[128], data[128], outa[128], outb[128], pa[256], pb[256];
    make_fixture(dir);
    train_opts o;
    train_result ra, rb1, rb2;
    opts_for(&o, dir, cfg, data, outa, "a");
    CHECK(!train_run(&o, &ra), "run a: %s", averis_last_error());
    opts_for(&o, dir, cfg, data, outb, "b");
    o.stop_after = 4;
    CHECK(!train_run(&o, &rb1) && rb1.steps_done == 4, "run b1: %s", averis_last_error());
    o.stop_after = 0;
    o.resume = 1;
    CHECK(!train_run(&o, &rb2) && rb2.steps_done == 8, "run b2: %s", averis_last_error());
    for (int i = 0; i < 8; i++) {
        float lb = i < 4 ? rb1.losses[i] : rb2.losses[i];
        CHECK(memcmp(&ra.losses[i], &lb, sizeof lb) == 0, "step %d: loss %.9g straight vs %.9g resumed", i + 1,
              ra.losses[i], lb);
    }
    CHECK(ra.losses[7] < ra.losses[0], "the loss falls (%.4f → %.4f)", ra.losses[0], ra.losses[7]);
    CHECK(ra.final_val_loss == rb2.final_val_loss, "val loss %.9g vs %.9g", ra.final_val_loss, rb2.final_val_loss);
    snprintf(pa, sizeof pa, "%s/ckpt_00000008/model.safetensors", outa);
    snprintf(pb, sizeof pb, "%s/ckpt_00000008/model.safetensors", outb);
    CHECK(test_same_file(pa, pb), "final weights differ");
    snprintf(pa, sizeof pa, "%s/ckpt_00000008/state.bin", outa);
    snprintf(pb, sizeof pb, "%s/ckpt_00000008/state.bin", outb);
    CHECK(test_same_file(pa, pb), "final optimizer state differs");
    /* the log of the resumed run has each step once */
    snprintf(pb, sizeof pb, "%s/log.csv", outb);
    FILE *f = fopen(pb, "r");
    int lines = 0;
    char line[512];
    while (f && fgets(line, sizeof line, f)) lines++;
    if (f) fclose(f);
    CHECK(lines == 9, "log.csv has %d lines, want header + 8", lines);
    /* the mean-bias rows (steps 0, 4, 8) do not perturb training and resume cleanly */
    snprintf(pa, sizeof pa, "%s/analysis.csv", outa);
    snprintf(pb, sizeof pb, "%s/analysis.csv", outb);
    CHECK(test_same_file(pa, pb), "analysis.csv differs between the straight and the resumed run");
    f = fopen(pa, "r");
    lines = 0;
    while (f && fgets(line, sizeof line, f)) lines++;
    if (f) fclose(f);
    CHECK(lines == 1 + 3 * 2 * 8, "analysis.csv has %d lines, want header + 3 steps × 2 layers × 8 kinds", lines);
    train_result_free(&ra);
    train_result_free(&rb1);
    train_result_free(&rb2);
    test_rm_tree(dir);
}

/* A fresh run refuses a directory with a checkpoint; a corrupt state or
 * a bad shard is an error that leaves `latest` and its checkpoint intact. */
void test_train_checkpoint_safety(void) {
    char dir[64], cfg[128], data[128], out[128], p[256];
    make_fixture(dir);
    train_opts o;
    train_result r;
    opts_for(&o, dir, cfg, data, out, "run");
    o.steps = 4;
    o.recipe = "nvfp4";
    CHECK(!train_run(&o, &r), "%s", averis_last_error());
    train_result_free(&r);
    snprintf(p, sizeof p, "%s/ckpt_00000004/model.safetensors", out);
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    long good_size = ftell(f);
    fclose(f);
    CHECK(train_run(&o, &r) != AVERIS_OK && strstr(averis_last_error(), "--resume"), "fresh run over a checkpoint: %s",
          averis_last_error());
    train_result_free(&r);
    o.resume = 1;
    CHECK(train_run(&o, &r) != AVERIS_OK && strstr(averis_last_error(), "not before --steps"), "resume past the end: %s",
          averis_last_error());
    train_result_free(&r);
    o.steps = 6;
    o.recipe = "averis";
    CHECK(train_run(&o, &r) != AVERIS_OK && strstr(averis_last_error(), "recipe nvfp4"), "recipe change: %s",
          averis_last_error());
    train_result_free(&r);
    o.recipe = "nvfp4";
    snprintf(p, sizeof p, "%s/ckpt_00000004/state.bin", out);
    f = fopen(p, "r+b");
    fseek(f, 200, SEEK_SET);
    fputc(0x5A, f);
    fclose(f);
    CHECK(train_run(&o, &r) != AVERIS_OK && strstr(averis_last_error(), "corrupt"), "corrupt state: %s", averis_last_error());
    train_result_free(&r);
    snprintf(p, sizeof p, "%s/ckpt_00000004/model.safetensors", out);
    f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    CHECK(ftell(f) == good_size, "the checkpoint was rewritten");
    fclose(f);
    char dirbuf[512];
    CHECK(!ckpt_resolve(out, dirbuf, sizeof dirbuf) && strstr(dirbuf, "ckpt_00000004"), "latest: %s", dirbuf);
    /* weights with a wrong shape are refused by name */
    model m;
    snprintf(p, sizeof p, "%s/ckpt_00000004", out);
    CHECK(!ckpt_load_model(p, NULL, &m, NULL), "%s", averis_last_error());
    CHECK(m.recipe.id == QLIN_NVFP4, "recipe from train.json");
    model_free(&m);
    /* a bad-magic train shard */
    snprintf(p, sizeof p, "%s/data/t_train.bin", dir);
    f = fopen(p, "r+b");
    fputc(0, f);
    fclose(f);
    train_opts_default(&o);
    opts_for(&o, dir, cfg, data, out, "run2");
    CHECK(train_run(&o, &r) != AVERIS_OK && strstr(averis_last_error(), "bad shard header"), "bad shard: %s",
          averis_last_error());
    train_result_free(&r);
    test_rm_tree(dir);
}

/* An exploding run: non-finite steps are skipped, reported, and K in a row stop it. */
void test_train_nonfinite_stops(void) {
    char dir[64], cfg[128], data[128], out[128];
    make_fixture(dir);
    train_opts o;
    train_result r;
    opts_for(&o, dir, cfg, data, out, "run");
    o.recipe = "fp32";
    o.lr = 1e30;
    o.warmup = 0;
    o.clip = 0;
    o.steps = 20;
    o.max_bad_steps = 3;
    averis_status st = train_run(&o, &r);
    CHECK(st != AVERIS_OK && strstr(averis_last_error(), "3 non-finite steps in a row"), "got: %s", averis_last_error());
    train_result_free(&r);
    test_rm_tree(dir);
}

/* ------------------------------------------------ the backend seam */
/* A device on the CPU: the CPU backend over a model and moments of its own,
 * as a GPU holds them. upload poisons the host copy with NaN, so a loop
 * that reads the host without a download first (checkpoint, analysis)
 * writes different bits. Every call is counted. */
typedef struct {
    void *cpu; /* train_backend_cpu over dev */
    model dev;
    float *mom, *var; /* [nparams] the device's moments */
    model *host;
    float *host_mom, *host_var;
} mirror_backend;
static struct {
    int create, destroy, bind, upload, download, download_moments, zero_grad, train_steps, eval_steps, grad_norm, adamw;
} g_seam;

static averis_status mirror_create(void **be, const train_backend_opts *o) {
    g_seam.create++;
    mirror_backend *d = calloc(1, sizeof *d);
    *be = d;
    return d ? train_backend_cpu.create(&d->cpu, o) : AVERIS_ENOMEM;
}
static void mirror_destroy(void *be) {
    mirror_backend *d = be;
    g_seam.destroy++;
    if (d->cpu) train_backend_cpu.destroy(d->cpu);
    model_free(&d->dev);
    free(d->mom);
    free(d->var);
    free(d);
}
static averis_status mirror_bind(void *be, model *m, float *mom, float *var, const moment_window *win, int B, int T) {
    mirror_backend *d = be;
    g_seam.bind++;
    d->host = m, d->host_mom = mom, d->host_var = var;
    averis_status st = model_create(&d->dev, &m->cfg);
    if (st) return st;
    d->dev.recipe = m->recipe;
    d->dev.bf16_last = m->bf16_last;
    d->mom = calloc(m->nparams, sizeof *d->mom);
    d->var = calloc(m->nparams, sizeof *d->var);
    return d->mom && d->var ? train_backend_cpu.bind(d->cpu, &d->dev, d->mom, d->var, win, B, T) : AVERIS_ENOMEM;
}
static averis_status mirror_upload(void *be) {
    mirror_backend *d = be;
    size_t n = d->host->nparams;
    g_seam.upload++;
    memcpy(d->dev.params, d->host->params, n * sizeof(float));
    memcpy(d->mom, d->host_mom, n * sizeof(float));
    memcpy(d->var, d->host_var, n * sizeof(float));
    for (size_t i = 0; i < n; i++) d->host->params[i] = d->host_mom[i] = d->host_var[i] = NAN;
    return AVERIS_OK;
}
static averis_status mirror_download(void *be, int moments) {
    mirror_backend *d = be;
    size_t n = d->host->nparams;
    g_seam.download++;
    g_seam.download_moments += moments;
    memcpy(d->host->params, d->dev.params, n * sizeof(float));
    if (moments) {
        memcpy(d->host_mom, d->mom, n * sizeof(float));
        memcpy(d->host_var, d->var, n * sizeof(float));
    }
    return AVERIS_OK;
}
static averis_status mirror_zero_grad(void *be) {
    g_seam.zero_grad++;
    return train_backend_cpu.zero_grad(((mirror_backend *)be)->cpu);
}
static averis_status mirror_step(void *be, const int *tokens, const int *targets, int backward, float loss_scale,
                                 uint64_t sr_stream, float *loss) {
    ++*(backward ? &g_seam.train_steps : &g_seam.eval_steps);
    return train_backend_cpu.step(((mirror_backend *)be)->cpu, tokens, targets, backward, loss_scale, sr_stream, loss);
}
static averis_status mirror_grad_norm(void *be, double *norm) {
    g_seam.grad_norm++;
    return train_backend_cpu.grad_norm(((mirror_backend *)be)->cpu, norm);
}
static averis_status mirror_adamw(void *be, double lr, double b1, double b2, double eps, double wd, int64_t t, float gscale) {
    g_seam.adamw++;
    return train_backend_cpu.adamw(((mirror_backend *)be)->cpu, lr, b1, b2, eps, wd, t, gscale);
}
static const char *mirror_describe(void *be) { (void)be; return "a mirror on the CPU"; }
static const train_backend k_mirror = {
    .name = "mirror", .create = mirror_create, .destroy = mirror_destroy, .bind = mirror_bind, .upload = mirror_upload,
    .download = mirror_download, .zero_grad = mirror_zero_grad, .step = mirror_step, .grad_norm = mirror_grad_norm,
    .adamw = mirror_adamw, .describe = mirror_describe,
};

static averis_status refuse_create(void **be, const train_backend_opts *o) {
    (void)o;
    *be = NULL;
    return AVERIS_EUNSUPPORTED;
}

/* The loop reaches the device only through the backend table: a backend
 * that keeps its own copy (uploaded once, downloaded for the analysis and
 * the checkpoints) gives the CPU run's losses, weights, optimizer state and
 * analysis rows bit for bit, with one call per phase; a backend that cannot
 * open fails the run before anything is written. */
void test_train_backend_seam(void) {
    char dir[64], cfg[128], data[128], outa[128], outb[128], pa[256], pb[256];
    make_fixture(dir);
    train_opts o;
    train_result ra, rb;
    opts_for(&o, dir, cfg, data, outa, "cpu");
    CHECK(!train_run(&o, &ra), "cpu run: %s", averis_last_error());
    opts_for(&o, dir, cfg, data, outb, "mirror");
    o.backend = &k_mirror;
    memset(&g_seam, 0, sizeof g_seam);
    CHECK(!train_run(&o, &rb) && rb.steps_done == 8, "mirror run: %s", averis_last_error());
    for (int i = 0; i < 8; i++)
        CHECK(memcmp(&ra.losses[i], &rb.losses[i], sizeof(float)) == 0, "step %d: loss %.9g on the cpu, %.9g mirrored",
              i + 1, ra.losses[i], rb.losses[i]);
    CHECK(ra.final_val_loss == rb.final_val_loss, "val loss %.9g vs %.9g", ra.final_val_loss, rb.final_val_loss);
    const char *files[] = {"ckpt_00000008/model.safetensors", "ckpt_00000008/state.bin", "ckpt_00000008/train.json",
                           "analysis.csv"};
    for (int i = 0; i < 4; i++) {
        snprintf(pa, sizeof pa, "%s/%s", outa, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", outb, files[i]);
        CHECK(test_same_file(pa, pb), "%s differs between the cpu and the mirrored run", files[i]);
    }
    /* 8 steps × 2 micro-batches; validation at steps 4 and 8 × 2 batches;
     * downloads at 4 (analysis) and 8 (analysis and the checkpoint) */
    CHECK(g_seam.create == 1 && g_seam.bind == 1 && g_seam.upload == 1 && g_seam.destroy == 1,
          "create %d, bind %d, upload %d, destroy %d: want 1 each", g_seam.create, g_seam.bind, g_seam.upload,
          g_seam.destroy);
    CHECK(g_seam.zero_grad == 8 && g_seam.train_steps == 16 && g_seam.grad_norm == 8 && g_seam.adamw == 8,
          "zero_grad %d (want 8), train steps %d (16), grad_norm %d (8), adamw %d (8)", g_seam.zero_grad,
          g_seam.train_steps, g_seam.grad_norm, g_seam.adamw);
    CHECK(g_seam.eval_steps == 4 && g_seam.download == 2 && g_seam.download_moments == 1,
          "eval steps %d (want 4), downloads %d (2), with moments %d (1)", g_seam.eval_steps, g_seam.download,
          g_seam.download_moments);
    train_result_free(&ra);
    train_result_free(&rb);
    /* no device: an error before anything is written */
    static const train_backend refusing = {.name = "refusing", .create = refuse_create};
    opts_for(&o, dir, cfg, data, outb, "refused");
    o.backend = &refusing;
    struct stat sb;
    CHECK(train_run(&o, &rb) == AVERIS_EUNSUPPORTED && stat(outb, &sb) != 0,
          "a backend that cannot open: the run went on or created %s", outb);
    train_result_free(&rb);
    test_rm_tree(dir);
}
