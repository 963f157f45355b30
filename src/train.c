/* train.c — the training loop and its checkpoints.
 *
 * A step: load batch → forward → loss → backward (× accum) → clip → AdamW
 * step → log → validate → checkpoint. AdamW (decoupled decay on matrices,
 * none on norms) with bias correction:
 *   m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
 *   θ ← θ − lr·( m/(1−β1ᵗ) / (√(v/(1−β2ᵗ)) + ε) + wd·θ )
 * LR: linear warmup to lr, then cosine down to lr·min_lr_frac at the end.
 *
 * Checkpoints: OUT/ckpt_NNNNNNNN/{model.safetensors, config.json,
 * train.json, state.bin, tokenizer.bpe} are written into a .tmp directory,
 * which is renamed into place; then OUT/latest names it (atomic rename). A
 * kill at any moment leaves the previous checkpoint and `latest` intact.
 */
#define _POSIX_C_SOURCE 200809L
#include "averis/train.h"
#include "averis/model_spec.h"
#include "averis/cuda.h"
#include "averis/analysis.h"
#include "averis/gemm.h"
#include "averis/io.h"
#include "averis/json.h"
#include "averis/status.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* ‖g‖₂ summed in fixed 64K chunks (the same bits for any thread count) */
static double grad_norm(const float *g, size_t n) {
    size_t nchunk = (n + TRAIN_GRADNORM_CHUNK - 1) / TRAIN_GRADNORM_CHUNK;
    double *part = calloc(nchunk, sizeof *part), total = 0.0;
    if (!part) return NAN;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunk; c++) {
        size_t e = (c + 1) * TRAIN_GRADNORM_CHUNK < n ? (c + 1) * TRAIN_GRADNORM_CHUNK : n;
        double s = 0.0;
        for (size_t i = c * TRAIN_GRADNORM_CHUNK; i < e; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    for (size_t c = 0; c < nchunk; c++) total += part[c];
    free(part);
    return sqrt(total);
}

static void adamw_step(model *m, float *mom, float *var, const train_opts *o, double lr, int64_t t, float gscale) {
    float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
    float c1 = (float)(1.0 - pow(o->beta1, (double)t)), c2 = (float)(1.0 - pow(o->beta2, (double)t));
    float lrf = (float)lr, wd = (float)o->weight_decay;
    for (int k = 0; k < m->ntensors; k++) {
        const model_tensor *mt = &m->tensors[k];
        float *p = m->params + mt->offset, *g = m->grads + mt->offset, *mm = mom + mt->offset, *vv = var + mt->offset;
        float decay = mt->decay ? wd : 0.0f;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < mt->numel; i++) adamw_element(&p[i], &mm[i], &vv[i], g[i], gscale, b1, b2, c1, c2, lrf, eps, decay);
    }
}

/* The mean loss over the first nbatches B×T batches, on the CPU model or
 * (gm) its GPU copy: forward only. */
static averis_status eval_loss_on(model *m, avc_model *gm, const data_loader *dl, int B, int T, int nbatches,
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
        if (!(st = loader_batch_at(dl, pos, B, T, in, tg)) &&
            !(st = gm ? avc_model_step(gm, in, tg, 0, 1.0f, 0, &l) : model_forward(m, in, tg, B, T, &l))) {
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
    return eval_loss_on(m, NULL, dl, B, T, nbatches, loss);
}

/* One micro-batch's forward and backward, on the CPU model or its GPU copy. */
static averis_status micro_step(model *m, avc_model *gm, const int *in, const int *tg, int B, int T, float scale,
                                uint64_t stream, float *loss) {
    if (gm) return avc_model_step(gm, in, tg, 1, scale, stream, loss);
    averis_status st = model_forward(m, in, tg, B, T, loss);
    return st ? st : model_backward(m, scale, stream);
}

/* ------------------------------------------------------------ state file */
typedef struct {
    FILE *f;
    uint64_t h;
    int ok;
} hfile;
static void hwrite(hfile *w, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) w->h = (w->h ^ b[i]) * 1099511628211ull;
    if (w->ok && fwrite(p, 1, n, w->f) != n) w->ok = 0;
}
static void hread(hfile *r, void *p, size_t n) {
    if (!r->ok || fread(p, 1, n, r->f) != n) { r->ok = 0; memset(p, 0, n); return; }
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) r->h = (r->h ^ b[i]) * 1099511628211ull;
}

typedef struct {
    int64_t step, adam_t, bad_run, skipped;
    uint64_t data_pos, data_epoch, nparams, seed;
    char recipe[128];
    int32_t batch, seq, accum, steps;
} train_state;

static const char k_state_magic[8] = {'A', 'V', 'S', 'T', 'A', 'T', 'E', '1'};

static averis_status state_write(const char *path, const train_state *s, const float *mom, const float *var) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    hfile w = {af.f, 1469598103934665603ull, 1};
    hwrite(&w, k_state_magic, 8);
    hwrite(&w, s, sizeof *s);
    hwrite(&w, mom, s->nparams * sizeof(float));
    hwrite(&w, var, s->nparams * sizeof(float));
    uint64_t h = w.h;
    hwrite(&w, &h, sizeof h);
    if (!w.ok) { averis_afile_abort(&af); return averis_fail(AVERIS_EIO, "%s: write failed", path); }
    return averis_afile_commit(&af);
}

static averis_status state_read(const char *path, train_state *s, float *mom, float *var, size_t nparams) {
    FILE *f = fopen(path, "rb");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot open optimizer state", path);
    hfile r = {f, 1469598103934665603ull, 1};
    char magic[8];
    hread(&r, magic, 8);
    if (!r.ok || memcmp(magic, k_state_magic, 8)) {
        fclose(f);
        return averis_fail(AVERIS_EFORMAT, "%s: not an averis optimizer state (bad magic)", path);
    }
    hread(&r, s, sizeof *s);
    if (r.ok && s->nparams != nparams) {
        fclose(f);
        return averis_fail(AVERIS_EFORMAT, "%s: state holds %llu parameters, the model has %zu", path,
                           (unsigned long long)s->nparams, nparams);
    }
    hread(&r, mom, nparams * sizeof(float));
    hread(&r, var, nparams * sizeof(float));
    uint64_t want = r.h, got = 0;
    hread(&r, &got, sizeof got);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (!r.ok || extra || got != want)
        return averis_fail(AVERIS_EFORMAT, "%s: optimizer state is truncated or corrupt (checksum mismatch)", path);
    s->recipe[sizeof s->recipe - 1] = 0;
    return AVERIS_OK;
}

/* ------------------------------------------------------------ checkpoint dirs */
static void path_join(char *out, size_t cap, const char *a, const char *b) { snprintf(out, cap, "%s/%s", a, b); }

static void remove_dir_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4200];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            path_join(p, sizeof p, dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
}

static averis_status copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return averis_fail(AVERIS_EIO, "%s: cannot open", src);
    averis_afile af;
    averis_status st = averis_afile_open(&af, dst);
    if (st) { fclose(in); return st; }
    char buf[65536];
    size_t n;
    int ok = 1;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) ok &= fwrite(buf, 1, n, af.f) == n;
    ok &= !ferror(in);
    fclose(in);
    if (!ok) { averis_afile_abort(&af); return averis_fail(AVERIS_EIO, "%s: copy failed", dst); }
    return averis_afile_commit(&af);
}

/* The checkpoint that OUT/latest names, or "" if none. */
static averis_status read_latest(const char *out_dir, char *name, size_t cap) {
    char p[4200];
    path_join(p, sizeof p, out_dir, "latest");
    name[0] = 0;
    FILE *f = fopen(p, "r");
    if (!f) return AVERIS_OK;
    if (!fgets(name, (int)cap, f)) name[0] = 0;
    fclose(f);
    name[strcspn(name, "\r\n")] = 0;
    if (strncmp(name, "ckpt_", 5) || strchr(name, '/'))
        return averis_fail(AVERIS_EFORMAT, "%s: does not name a checkpoint ('%s')", p, name);
    return AVERIS_OK;
}

averis_status ckpt_resolve(const char *path, char *dir, size_t cap) {
    char name[256], p[4200];
    struct stat sb;
    path_join(p, sizeof p, path, "model.safetensors");
    if (!stat(p, &sb)) { snprintf(dir, cap, "%s", path); return AVERIS_OK; }
    averis_status st = read_latest(path, name, sizeof name);
    if (st) return st;
    if (!name[0]) return averis_fail(AVERIS_EIO, "%s: no checkpoint here (neither model.safetensors nor latest)", path);
    snprintf(dir, cap, "%s/%s", path, name);
    return AVERIS_OK;
}

static averis_status write_train_json(const char *path, const train_opts *o, const char *recipe, int step) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    fprintf(af.f,
            "{\n  \"recipe\": \"%s\",\n  \"step\": %d,\n  \"steps\": %d,\n  \"batch\": %d,\n  \"seq\": %d,\n"
            "  \"accum\": %d,\n  \"lr\": %.9g,\n  \"min_lr_frac\": %.9g,\n  \"warmup\": %d,\n  \"weight_decay\": %.9g,\n"
            "  \"clip\": %.9g,\n  \"seed\": %llu,\n  \"bf16_last\": %d\n}\n",
            recipe, step, o->steps, o->batch, o->seq, o->accum, o->lr, o->min_lr_frac, o->warmup, o->weight_decay,
            o->clip, (unsigned long long)o->seed, o->bf16_last);
    return averis_afile_commit(&af);
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Removes all but the newest `keep` ckpt_* directories (never `latest`'s). */
static void prune(const char *out_dir, int keep, const char *latest) {
    DIR *d = opendir(out_dir);
    if (!d) return;
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096)
        if (!strncmp(e->d_name, "ckpt_", 5) && !strstr(e->d_name, ".tmp")) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, name_cmp);
    char p[4200];
    for (int i = 0; i < n; i++) {
        if (names[i] && i < n - keep && strcmp(names[i], latest)) {
            path_join(p, sizeof p, out_dir, names[i]);
            remove_dir_files(p);
        }
        free(names[i]);
    }
}

static averis_status ckpt_write(const train_opts *o, const model *m, const train_state *s, const float *mom,
                                const float *var) {
    char name[64], dir[4200], tmp[4300], p[4400];
    snprintf(name, sizeof name, "ckpt_%08lld", (long long)s->step);
    path_join(dir, sizeof dir, o->out_dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    remove_dir_files(tmp); /* a leftover of a killed run */
    if (mkdir(tmp, 0777)) return averis_fail(AVERIS_EIO, "%s: cannot create checkpoint directory", tmp);
    averis_status st;
    path_join(p, sizeof p, tmp, "model.safetensors");
    if ((st = model_save_weights(m, p))) goto fail;
    path_join(p, sizeof p, tmp, "config.json");
    if ((st = model_config_write_hf(&m->cfg, p))) goto fail;
    path_join(p, sizeof p, tmp, "train.json");
    if ((st = write_train_json(p, o, s->recipe, (int)s->step))) goto fail;
    path_join(p, sizeof p, tmp, "state.bin");
    if ((st = state_write(p, s, mom, var))) goto fail;
    char tsrc[4200];
    struct stat sb;
    path_join(tsrc, sizeof tsrc, o->data_dir, "tokenizer.bpe");
    path_join(p, sizeof p, tmp, "tokenizer.bpe");
    if (!stat(tsrc, &sb) && (st = copy_file(tsrc, p))) goto fail;
    fsync_dir(tmp);
    remove_dir_files(dir); /* a same-step leftover newer than `latest` */
    if (rename(tmp, dir)) { st = averis_fail(AVERIS_EIO, "%s: rename failed", dir); goto fail; }
    fsync_dir(o->out_dir);
    averis_afile af;
    path_join(p, sizeof p, o->out_dir, "latest");
    if ((st = averis_afile_open(&af, p))) return st;
    fprintf(af.f, "%s\n", name);
    if ((st = averis_afile_commit(&af))) return st;
    prune(o->out_dir, o->keep, name);
    return AVERIS_OK;
fail:
    remove_dir_files(tmp);
    return st;
}

averis_status ckpt_load_model(const char *dir, const char *recipe_override, model *m, int *seq_len) {
    char p[4200];
    model_config cfg;
    path_join(p, sizeof p, dir, "config.json");
    averis_status st = model_config_load(p, &cfg);
    if (st) return st;
    if ((st = model_create(m, &cfg))) return st;
    path_join(p, sizeof p, dir, "model.safetensors");
    if ((st = model_load_weights(m, p))) { model_free(m); return st; }
    char recipe[128] = "fp32";
    if (seq_len) *seq_len = 0;
    path_join(p, sizeof p, dir, "train.json");
    char *buf;
    size_t n;
    struct stat sb;
    if (!stat(p, &sb)) { /* optional: a plain HF checkpoint has none */
        if ((st = averis_read_file(p, &buf, &n))) { model_free(m); return st; }
        json j;
        st = json_parse(buf, n, p, &j);
        free(buf);
        if (st) { model_free(m); return st; }
        const json *r = json_get(&j, "recipe"), *t = json_get(&j, "seq"), *bl = json_get(&j, "bf16_last");
        if (r && r->type == JSON_STR) snprintf(recipe, sizeof recipe, "%s", r->str);
        if (t && t->type == JSON_NUM && seq_len) *seq_len = (int)t->num;
        if (bl && bl->type == JSON_NUM) m->bf16_last = (int)bl->num;
        json_free(&j);
    }
    if ((st = qlin_recipe_parse(recipe_override ? recipe_override : recipe, &m->recipe))) { model_free(m); return st; }
    return AVERIS_OK;
}

/* ------------------------------------------------------------ the log */
static const char k_log_header[] = "step,tokens,lr,loss,grad_norm,val_loss,tokens_per_s,skipped\n";

/* Keeps the header and the rows of steps ≤ last_step (a resumed run rewrites
 * what a killed run logged past its checkpoint). */
static averis_status log_truncate(const char *path, int last_step) {
    FILE *f = fopen(path, "r");
    if (!f) return AVERIS_OK;
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) { fclose(f); return st; }
    char line[1024];
    int first = 1;
    while (fgets(line, sizeof line, f)) {
        if (first || atoi(line) <= last_step) fputs(line, af.f);
        first = 0;
    }
    fclose(f);
    return averis_afile_commit(&af);
}

/* Opens a per-step CSV (log.csv, analysis.csv) for appending: a fresh run
 * starts it anew (*fresh: write the header); a resumed run keeps its rows
 * up to the checkpoint's step. */
static averis_status open_step_csv(const char *path, int resuming, int step, FILE **f, int *fresh) {
    struct stat sb;
    *fresh = !resuming || stat(path, &sb) != 0;
    averis_status st = *fresh ? AVERIS_OK : log_truncate(path, step);
    if (st) return st;
    if (!(*f = fopen(path, *fresh ? "w" : "a"))) return averis_fail(AVERIS_EIO, "%s: cannot open", path);
    return AVERIS_OK;
}

static void fmt_eta(char *buf, size_t cap, double s) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, cap, "?"); return; }
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%dh%02dm", t / 3600, t / 60 % 60);
    else snprintf(buf, cap, "%dm%02ds", t / 60, t % 60);
}

/* ------------------------------------------------------------ the loop */
/* Mean-bias rows of the fixed analysis batch (ids in, tg) at this step. */
static averis_status analyze_rows(model *m, const int *in, const int *tg, const train_opts *o, FILE *f, int step) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%d", step);
    return analysis_model_rows(m, in, tg, o->batch, o->seq, f, prefix, UINT64_MAX - (uint64_t)step, NULL);
}

averis_status train_run(const train_opts *oin, train_result *res) {
    train_opts o = *oin;
    memset(res, 0, sizeof *res);
    if (o.steps < 1 || o.batch < 1 || o.seq < 2 || o.accum < 1 || !(o.lr > 0))
        return averis_fail(AVERIS_EINVAL, "train: steps, batch, accum must be ≥ 1, seq ≥ 2 and lr > 0");
    if (o.warmup < 0) o.warmup = o.steps / 20;
    if (o.val_every < 0) o.val_every = o.steps / 10 > 0 ? o.steps / 10 : 1;
    if (o.log_every <= 0) o.log_every = o.steps / 20 > 0 ? o.steps / 20 : 1;
    if (o.keep < 1) o.keep = 1;

    model m;
    model_config cfg;
    data_loader train = {0}, val = {0};
    float *mom = NULL, *var = NULL;
    int *in = NULL, *tg = NULL;
    FILE *log = NULL, *ana = NULL;
    int *ana_in = NULL, *ana_tg = NULL;
    avc_model *gm = NULL; /* the GPU copy (--device cuda): steps run there, the host holds checkpoints */
    train_state s;
    memset(&s, 0, sizeof s);
    char gpu_desc[256] = "";
    averis_status st = o.device ? avc_init(o.gpu, gpu_desc, sizeof gpu_desc) : AVERIS_OK; /* before any file is written */
    if (st) return st;
    if ((st = model_config_load(o.config, &cfg))) return st;
    if (o.seq > cfg.max_position_embeddings)
        return averis_fail(AVERIS_EINVAL, "train: --seq %d exceeds the config's max_position_embeddings %d", o.seq,
                           cfg.max_position_embeddings);
    if ((st = model_create(&m, &cfg))) return st;
    if ((st = qlin_recipe_parse(o.recipe, &m.recipe))) goto out;
    m.bf16_last = o.bf16_last;
    if ((st = loader_open(&train, o.data_dir, "train")) || (st = loader_open(&val, o.data_dir, "val"))) goto out;
    if (train.max_id >= cfg.vocab_size || val.max_id >= cfg.vocab_size) {
        st = averis_fail(AVERIS_EINVAL, "train: the data in %s holds token id %d but the config's vocab_size is %d",
                         o.data_dir, train.max_id > val.max_id ? train.max_id : val.max_id, cfg.vocab_size);
        goto out;
    }
    mom = calloc(m.nparams, sizeof *mom);
    var = calloc(m.nparams, sizeof *var);
    in = malloc((size_t)o.batch * o.seq * sizeof *in);
    tg = malloc((size_t)o.batch * o.seq * sizeof *tg);
    res->losses = malloc((size_t)o.steps * sizeof *res->losses);
    if (!mom || !var || !in || !tg || !res->losses) { st = averis_fail(AVERIS_ENOMEM, "train: out of memory"); goto out; }
    for (int i = 0; i < o.steps; i++) res->losses[i] = NAN;
    if ((st = model_zero_grad(&m))) goto out;

    /* fresh start or resume */
    if ((st = averis_mkdir_p(o.out_dir))) goto out;
    char latest[256], p[4200];
    if ((st = read_latest(o.out_dir, latest, sizeof latest))) goto out;
    path_join(p, sizeof p, o.out_dir, "log.csv");
    if (o.resume && latest[0]) {
        char dir[4200], sp[4300];
        path_join(dir, sizeof dir, o.out_dir, latest);
        path_join(sp, sizeof sp, dir, "model.safetensors");
        if ((st = model_load_weights(&m, sp))) goto out;
        path_join(sp, sizeof sp, dir, "state.bin");
        if ((st = state_read(sp, &s, mom, var, m.nparams))) goto out;
        if (strcmp(s.recipe, o.recipe) || s.batch != o.batch || s.seq != o.seq || s.accum != o.accum) {
            st = averis_fail(AVERIS_EINVAL,
                             "train: %s was trained with recipe %s, batch %d, seq %d, accum %d; resume with the same",
                             dir, s.recipe, s.batch, s.seq, s.accum);
            goto out;
        }
        if (s.step >= o.steps) {
            st = averis_fail(AVERIS_EINVAL, "train: %s is at step %lld, not before --steps %d", dir, (long long)s.step, o.steps);
            goto out;
        }
        train.pos = (size_t)s.data_pos;
        train.epoch = s.data_epoch;
        if (!o.quiet) fprintf(stderr, "resuming from %s (step %lld)\n", dir, (long long)s.step);
    } else {
        if (latest[0]) {
            st = averis_fail(AVERIS_EINVAL, "train: %s already holds a checkpoint (%s); pass --resume to continue it or choose another --out",
                             o.out_dir, latest);
            goto out;
        }
        model_init_weights(&m, o.seed);
        snprintf(s.recipe, sizeof s.recipe, "%s", o.recipe);
        s.batch = o.batch, s.seq = o.seq, s.accum = o.accum, s.steps = o.steps;
        s.nparams = m.nparams;
        s.seed = o.seed;
    }
    s.steps = o.steps;
    int resuming = o.resume && latest[0], fresh;
    if ((st = open_step_csv(p, resuming, (int)s.step, &log, &fresh))) goto out;
    if (fresh) fputs(k_log_header, log);
    if (o.analyze_every > 0) { /* the first validation batch, fixed for the whole run */
        char ap[4200];
        path_join(ap, sizeof ap, o.out_dir, "analysis.csv");
        if ((st = open_step_csv(ap, resuming, (int)s.step, &ana, &fresh))) goto out;
        if (fresh) analysis_csv_header(ana, "step,layer,kind");
        ana_in = malloc((size_t)o.batch * o.seq * sizeof *ana_in);
        ana_tg = malloc((size_t)o.batch * o.seq * sizeof *ana_tg);
        if (!ana_in || !ana_tg) { st = averis_fail(AVERIS_ENOMEM, "train: out of memory"); goto out; }
        if ((st = loader_batch_at(&val, 0, o.batch, o.seq, ana_in, ana_tg))) goto out;
        if (s.step == 0 && (st = analyze_rows(&m, ana_in, ana_tg, &o, ana, 0))) goto out;
    }
    if (!o.quiet && strstr(averis_gemm_backend_describe(), "Prescott") && nvfp4_cpu_has_avx512())
        fprintf(stderr, "train: warning: OpenBLAS chose its slowest (Prescott) kernels on this AVX-512 CPU; "
                        "export OPENBLAS_CORETYPE=COOPERLAKE for up to 3x faster GEMMs\n");
    if (!o.quiet)
        fprintf(stderr, "train: %s (%.2fM params), recipe %s, %d steps × %d×%d tokens × %d, lr %g, data %zu tokens\n",
                o.config, (double)m.nparams / 1e6, o.recipe, o.steps, o.batch, o.seq, o.accum, o.lr, train.n);

    const int B = o.batch, T = o.seq;
    const double tokens_per_step = (double)B * T * o.accum;
    if (o.device) {
        avc_model_opts gopts;
        if ((st = avc_model_opts_parse(getenv("AVERIS_ACT"), getenv("AVERIS_ATTN"), "AVERIS_ACT", "AVERIS_ATTN", &gopts)) ||
            (st = avc_model_create(&gm, &m, B, T, &gopts)) || (st = avc_model_upload(gm, m.params, mom, var))) goto out;
        if (!o.quiet) fprintf(stderr, "train: on %s; %s\n", gpu_desc, avc_model_describe(gm));
    }
    double t_start = now_s(), t_steps = 0.0;
    int steps_timed = 0;
    for (int step = (int)s.step; step < o.steps; step++) {
        double t0 = now_s();
        double lr = lr_at(&o, step);
        /* load batch → forward → loss → backward, per micro-batch */
        if ((st = gm ? avc_model_zero_grad(gm) : model_zero_grad(&m))) goto out;
        double loss = 0.0;
        for (int k = 0; k < o.accum; k++) {
            float l = 0;
            if ((st = loader_next(&train, B, T, in, tg)) ||
                (st = micro_step(&m, gm, in, tg, B, T, 1.0f / (float)o.accum, (uint64_t)step * (uint64_t)o.accum + (uint64_t)k, &l)))
                goto out;
            loss += l / o.accum;
        }
        /* clip */
        double norm = 0.0;
        if (gm) {
            if ((st = avc_model_grad_norm(gm, &norm))) goto out;
        } else
            norm = grad_norm(m.grads, m.nparams);
        int bad = !isfinite(loss) || !isfinite(norm);
        /* step (or skip) */
        if (bad) {
            s.bad_run++;
            s.skipped++;
            fprintf(stderr, "step %d: non-finite %s, update skipped (%lld in a row)\n", step + 1,
                    isfinite(loss) ? "gradient" : "loss", (long long)s.bad_run);
            if (s.bad_run >= o.max_bad_steps) {
                st = averis_fail(AVERIS_EINVAL, "train: %lld non-finite steps in a row at step %d; stopping (last checkpoint kept)",
                                 (long long)s.bad_run, step + 1);
                goto out;
            }
        } else {
            s.bad_run = 0;
            float gscale = (o.clip > 0 && norm > o.clip) ? (float)(o.clip / norm) : 1.0f;
            if (gm) {
                if ((st = avc_model_adamw(gm, lr, o.beta1, o.beta2, o.eps, o.weight_decay, ++s.adam_t, gscale))) goto out;
            } else
                adamw_step(&m, mom, var, &o, lr, ++s.adam_t, gscale);
        }
        s.step = step + 1;
        s.data_pos = train.pos;
        s.data_epoch = train.epoch;
        res->losses[step] = (float)loss;
        double dt = now_s() - t0;
        t_steps += dt;
        steps_timed++;
        /* log, validate */
        int do_val = o.val_every > 0 && (s.step % o.val_every == 0 || s.step == o.steps);
        float vloss = NAN;
        if (do_val && (st = eval_loss_on(&m, gm, &val, B, T, o.val_batches, &vloss))) goto out;
        double tps = tokens_per_step / dt;
        fprintf(log, "%lld,%.0f,%.6g,%.6f,%.6g,", (long long)s.step, tokens_per_step * (double)s.step, lr, loss, norm);
        if (do_val) fprintf(log, "%.6f", vloss);
        fprintf(log, ",%.1f,%d\n", tps, bad);
        fflush(log);
        if (!o.quiet && (s.step % o.log_every == 0 || s.step == o.steps || do_val)) {
            char eta[32];
            fmt_eta(eta, sizeof eta, t_steps / steps_timed * (o.steps - s.step));
            fprintf(stderr, "step %6lld/%d | loss %.4f | lr %.2e | norm %6.3f | %6.0f tok/s | ETA %s", (long long)s.step,
                    o.steps, loss, lr, norm, tokens_per_step * steps_timed / t_steps, eta);
            if (do_val) fprintf(stderr, " | val %.4f", vloss);
            fputc('\n', stderr);
        }
        if (do_val) res->final_val_loss = vloss;
        int stop = o.stop_after > 0 && s.step >= o.stop_after;
        int do_ana = ana && s.step % o.analyze_every == 0;
        int do_ckpt = (o.ckpt_every > 0 && s.step % o.ckpt_every == 0) || s.step == o.steps || stop;
        /* the GPU run's weights and moments come to the host for analysis and checkpoints */
        if (gm && (do_ana || do_ckpt) && (st = avc_model_download(gm, m.params, do_ckpt ? mom : NULL, do_ckpt ? var : NULL)))
            goto out;
        if (do_ana && (st = analyze_rows(&m, ana_in, ana_tg, &o, ana, (int)s.step))) goto out;
        /* checkpoint */
        if (do_ckpt && (st = ckpt_write(&o, &m, &s, mom, var))) goto out;
        res->steps_done = (int)s.step;
        if (stop) break;
    }
    res->skipped = (int)s.skipped;
    res->tokens_per_s = steps_timed ? tokens_per_step * steps_timed / t_steps : 0.0;
    if (!o.quiet)
        fprintf(stderr, "done: %d steps in %.1f s, %.0f tokens/s, final val loss %.4f\n", res->steps_done,
                now_s() - t_start, res->tokens_per_s, res->final_val_loss);
out:
    avc_model_free(gm);
    if (log) fclose(log);
    if (ana) fclose(ana);
    free(ana_in); free(ana_tg);
    free(mom); free(var); free(in); free(tg);
    loader_free(&train);
    loader_free(&val);
    model_free(&m);
    return st;
}
