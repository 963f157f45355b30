/* ckpt.c — checkpoint directories, the optimizer state file and the run's
 * per-step CSVs across a resume (the layout: averis/ckpt.h). */
#define _POSIX_C_SOURCE 200809L
#include "averis/ckpt.h"
#include "averis/io.h"
#include "averis/json.h"
#include "averis/tokenizer.h"
#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(ckpt_state) == 208, "ckpt_state is state.bin's layout: no padding, 208 bytes");

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

static const char k_state_magic[8] = {'A', 'V', 'S', 'T', 'A', 'T', 'E', '1'};

static averis_status state_write(const char *path, const ckpt_state *s, const float *mom, const float *var) {
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

static averis_status state_read(const char *path, ckpt_state *s, float *mom, float *var, size_t nparams) {
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
averis_status ckpt_latest(const char *out_dir, char *name, size_t cap) {
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
    averis_status st = ckpt_latest(path, name, sizeof name);
    if (st) return st;
    if (!name[0]) return averis_fail(AVERIS_EIO, "%s: no checkpoint here (neither model.safetensors nor latest)", path);
    snprintf(dir, cap, "%s/%s", path, name);
    return AVERIS_OK;
}

static averis_status write_train_json(const char *path, const ckpt_run *r, const char *recipe, int step) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    fprintf(af.f,
            "{\n  \"recipe\": \"%s\",\n  \"step\": %d,\n  \"steps\": %d,\n  \"batch\": %d,\n  \"seq\": %d,\n"
            "  \"accum\": %d,\n  \"lr\": %.9g,\n  \"min_lr_frac\": %.9g,\n  \"warmup\": %d,\n  \"weight_decay\": %.9g,\n"
            "  \"clip\": %.9g,\n  \"seed\": %llu,\n  \"bf16_last\": %d\n}\n",
            recipe, step, r->steps, r->batch, r->seq, r->accum, r->lr, r->min_lr_frac, r->warmup, r->weight_decay,
            r->clip, (unsigned long long)r->seed, r->bf16_last);
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

averis_status ckpt_write(const ckpt_run *r, const model *m, const ckpt_state *s, const float *mom, const float *var) {
    char name[64], dir[4200], tmp[4300], p[4400];
    snprintf(name, sizeof name, "ckpt_%08lld", (long long)s->step);
    path_join(dir, sizeof dir, r->out_dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    remove_dir_files(tmp); /* a leftover of a killed run */
    if (mkdir(tmp, 0777)) return averis_fail(AVERIS_EIO, "%s: cannot create checkpoint directory", tmp);
    averis_status st;
    path_join(p, sizeof p, tmp, "model.safetensors");
    if ((st = model_save_weights(m, p))) goto fail;
    path_join(p, sizeof p, tmp, "config.json");
    if ((st = model_config_write_hf(&m->cfg, p))) goto fail;
    path_join(p, sizeof p, tmp, "train.json");
    if ((st = write_train_json(p, r, s->recipe, (int)s->step))) goto fail;
    path_join(p, sizeof p, tmp, "state.bin");
    if ((st = state_write(p, s, mom, var))) goto fail;
    char tsrc[4200];
    struct stat sb;
    path_join(tsrc, sizeof tsrc, r->data_dir, "tokenizer.bpe");
    path_join(p, sizeof p, tmp, "tokenizer.bpe");
    if (!stat(tsrc, &sb)) {
        if ((st = copy_file(tsrc, p))) goto fail;
        /* tokenizer.json, tokenizer_config.json, generation_config.json: the
         * directory then loads whole with AutoTokenizer + AutoModelForCausalLM.
         * A tokenizer they cannot express costs those files, not the checkpoint. */
        bpe_tokenizer tok;
        if (bpe_load(&tok, p) || bpe_save_hf(&tok, tmp, m->cfg.max_position_embeddings))
            fprintf(stderr, "checkpoint: warning: no Hugging Face tokenizer files: %s\n", averis_last_error());
        bpe_free(&tok);
    }
    fsync_dir(tmp);
    remove_dir_files(dir); /* a same-step leftover newer than `latest` */
    if (rename(tmp, dir)) { st = averis_fail(AVERIS_EIO, "%s: rename failed", dir); goto fail; }
    fsync_dir(r->out_dir);
    averis_afile af;
    path_join(p, sizeof p, r->out_dir, "latest");
    if ((st = averis_afile_open(&af, p))) return st;
    fprintf(af.f, "%s\n", name);
    if ((st = averis_afile_commit(&af))) return st;
    prune(r->out_dir, r->keep, name);
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

averis_status ckpt_load_state(const char *dir, model *m, ckpt_state *s, float *mom, float *var) {
    char p[4200];
    path_join(p, sizeof p, dir, "model.safetensors");
    averis_status st = model_load_weights(m, p);
    if (st) return st;
    path_join(p, sizeof p, dir, "state.bin");
    return state_read(p, s, mom, var, m->nparams);
}

/* ------------------------------------------------------------ the run's CSVs */
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

averis_status ckpt_csv_open(const char *path, int resuming, int step, FILE **f, int *fresh) {
    struct stat sb;
    *fresh = !resuming || stat(path, &sb) != 0;
    averis_status st = *fresh ? AVERIS_OK : log_truncate(path, step);
    if (st) return st;
    if (!(*f = fopen(path, *fresh ? "w" : "a"))) return averis_fail(AVERIS_EIO, "%s: cannot open", path);
    return AVERIS_OK;
}

