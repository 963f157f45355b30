/* ckpt.c — checkpoint directories, the optimizer state file and the run's
 * per-step CSVs across a resume (the layout: averis/ckpt.h). */
#define _POSIX_C_SOURCE 200809L
#include "averis/ckpt.h"
#include "averis/io.h"
#include "averis/json.h"
#include "averis/tokenizer.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sys/file.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(ckpt_state) == 208, "ckpt_state is state.bin's layout: no padding, 208 bytes");

/* ------------------------------------------------------------ checksums */
static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
#define AVH_P1 0x9E3779B97F4A7C15ull
#define AVH_P2 0xC2B2AE3D27D4EB4Full
typedef struct {
    uint64_t v[4], len;
} avh;
static void avh_init(avh *h) {
    for (int i = 0; i < 4; i++) h->v[i] = AVH_P1 * (uint64_t)(i + 1);
    h->len = 0;
}
/* n a multiple of 32 except for the last call */
static void avh_update(avh *h, const uint8_t *b, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t w;
            memcpy(&w, b + i + 8 * k, 8);
            h->v[k] = rotl64((h->v[k] ^ w) * AVH_P2, 31) * AVH_P1;
        }
    for (; i < n; i++) h->v[0] = (h->v[0] ^ b[i]) * 1099511628211ull;
    h->len += n;
}
static uint64_t avh_final(const avh *h) {
    uint64_t x = h->len * AVH_P1;
    for (int k = 0; k < 4; k++) x = rotl64(x ^ (h->v[k] * AVH_P2), 27) * AVH_P1 + 0x85EBCA77C2B2AE63ull;
    x ^= x >> 33, x *= AVH_P2, x ^= x >> 29;
    return x;
}
uint64_t ckpt_hash(const void *p, size_t n) {
    avh h;
    avh_init(&h);
    avh_update(&h, p, n);
    return avh_final(&h);
}
uint64_t ckpt_data_fingerprint(const uint16_t *train, size_t ntrain, const uint16_t *val, size_t nval) {
    return ckpt_hash(train, ntrain * sizeof *train) * AVH_P1 ^ ckpt_hash(val, nval * sizeof *val);
}

/* ------------------------------------------------------------ state file */
typedef struct {
    FILE *f;
    uint64_t h;
    int ok, err; /* err: errno of the first failed write */
} hfile;
static void hwrite(hfile *w, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) w->h = (w->h ^ b[i]) * 1099511628211ull;
    if (w->ok && fwrite(p, 1, n, w->f) != n) w->ok = 0, w->err = errno ? errno : EIO;
}
static void hread(hfile *r, void *p, size_t n) {
    if (!r->ok || fread(p, 1, n, r->f) != n) { r->ok = 0; memset(p, 0, n); return; }
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) r->h = (r->h ^ b[i]) * 1099511628211ull;
}

/* n floats of the file, hashed whole; only the elements of window w are
 * kept, into out [moment_window_numel(w)] (w NULL: all, into out [n]) */
static void hread_window(hfile *r, float *out, size_t n, const moment_window *w) {
    if (!w) { hread(r, out, n * sizeof(float)); return; }
    float buf[16384];
    for (size_t c0 = 0; c0 < n; c0 += sizeof buf / sizeof *buf) {
        size_t c1 = c0 + sizeof buf / sizeof *buf < n ? c0 + sizeof buf / sizeof *buf : n;
        hread(r, buf, (c1 - c0) * sizeof(float));
        for (int k = 0; k < 2; k++) { /* [a, b): this chunk ∩ range k */
            size_t a = w->lo[k] > c0 ? w->lo[k] : c0, b = w->hi[k] < c1 ? w->hi[k] : c1;
            if (a < b) memcpy(out + moment_window_at(w, a, b), buf + (a - c0), (b - a) * sizeof(float));
        }
    }
}

static const char k_state_magic[8] = {'A', 'V', 'S', 'T', 'A', 'T', 'E', '1'};

averis_status ckpt_state_write(const char *path, const ckpt_state *s, const float *mom, const float *var) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    errno = 0;
    hfile w = {af.f, 1469598103934665603ull, 1, 0};
    hwrite(&w, k_state_magic, 8);
    hwrite(&w, s, sizeof *s);
    hwrite(&w, mom, s->nparams * sizeof(float));
    hwrite(&w, var, s->nparams * sizeof(float));
    uint64_t h = w.h;
    hwrite(&w, &h, sizeof h);
    if (!w.ok) {
        averis_afile_abort(&af);
        return averis_fail(AVERIS_EIO, "%s: write failed: %s", path, strerror(w.err));
    }
    return averis_afile_commit(&af);
}

/* Every header field against itself and the run (the checksum is easy to
 * recompute: nothing in the header is trusted). */
static averis_status state_check(const char *path, const ckpt_state *s, const ckpt_limits *lim) {
#define BAD(...) return averis_fail(AVERIS_EFORMAT, __VA_ARGS__)
    size_t rl = strnlen(s->recipe, sizeof s->recipe);
    if (rl == 0 || rl == sizeof s->recipe) BAD("%s: field recipe is empty or not NUL-terminated", path);
    for (size_t i = 0; i < rl; i++)
        if ((unsigned char)s->recipe[i] < 0x20 || (unsigned char)s->recipe[i] > 0x7e)
            BAD("%s: field recipe holds byte 0x%02x at %zu", path, (unsigned char)s->recipe[i], i);
    if (s->steps < 1 || s->steps > 100000000) BAD("%s: field steps = %d is outside 1..100000000", path, s->steps);
    if (s->step < 0 || s->step > s->steps)
        BAD("%s: field step = %lld is outside 0..%d (the run's steps)", path, (long long)s->step, s->steps);
    if (s->batch < 1 || s->batch > 65536) BAD("%s: field batch = %d is outside 1..65536", path, s->batch);
    if (s->seq < 2 || s->seq > (1 << 20)) BAD("%s: field seq = %d is outside 2..%d", path, s->seq, 1 << 20);
    if (s->accum < 1 || s->accum > 65536) BAD("%s: field accum = %d is outside 1..65536", path, s->accum);
    if (s->skipped < 0 || s->skipped > s->step)
        BAD("%s: field skipped = %lld is outside 0..%lld (step)", path, (long long)s->skipped, (long long)s->step);
    if (s->adam_t != s->step - s->skipped)
        BAD("%s: field adam_t = %lld is not step − skipped = %lld", path, (long long)s->adam_t,
            (long long)(s->step - s->skipped));
    if (s->bad_run < 0 || s->bad_run > s->skipped)
        BAD("%s: field bad_run = %lld is outside 0..%lld (skipped)", path, (long long)s->bad_run, (long long)s->skipped);
    uint64_t bt = (uint64_t)s->batch * (uint64_t)s->seq;
    if (s->data_pos % bt || (lim->data_tokens && s->data_pos > lim->data_tokens))
        BAD("%s: field data_pos = %llu is not a multiple of batch × seq = %llu within the data's %llu tokens", path,
            (unsigned long long)s->data_pos, (unsigned long long)bt, (unsigned long long)lim->data_tokens);
    if (s->data_epoch > (uint64_t)s->step * (uint64_t)s->accum)
        BAD("%s: field data_epoch = %llu exceeds step × accum = %llu", path, (unsigned long long)s->data_epoch,
            (unsigned long long)((uint64_t)s->step * (uint64_t)s->accum));
    return AVERIS_OK;
#undef BAD
}

averis_status ckpt_state_read(const char *path, const ckpt_limits *lim, ckpt_state *s, float *mom, float *var) {
    size_t nparams = lim->nparams;
    FILE *f = fopen(path, "rb");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot open optimizer state: %s", path, strerror(errno));
    struct stat sb = {0};
    uint64_t want_size = 8 + sizeof *s + 2 * (uint64_t)nparams * sizeof(float) + 8;
    if (fstat(fileno(f), &sb) || (uint64_t)sb.st_size != want_size) {
        fclose(f);
        return averis_fail(AVERIS_EFORMAT, "%s: %lld bytes, an optimizer state of %zu parameters has %llu "
                                           "(truncated, or another model's)", path, (long long)sb.st_size, nparams,
                           (unsigned long long)want_size);
    }
    hfile r = {f, 1469598103934665603ull, 1, 0};
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
    const moment_window *w = lim->window;
    if (w && (w->lo[0] > w->hi[0] || w->hi[0] > w->lo[1] || w->lo[1] > w->hi[1] || w->hi[1] > nparams)) {
        fclose(f);
        return averis_fail(AVERIS_EINVAL, "%s: the moments [%zu, %zu) and [%zu, %zu) asked for are not ranges of %zu "
                                          "parameters", path, w->lo[0], w->hi[0], w->lo[1], w->hi[1], nparams);
    }
    hread_window(&r, mom, nparams, w);
    hread_window(&r, var, nparams, w);
    uint64_t want = r.h, got = 0;
    hread(&r, &got, sizeof got);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (!r.ok || extra || got != want)
        return averis_fail(AVERIS_EFORMAT, "%s: optimizer state is truncated or corrupt (checksum mismatch)", path);
    return state_check(path, s, lim);
}

/* ------------------------------------------------------------ checkpoint dirs */
static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
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
    int err = 0;
    errno = 0;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, af.f) != n) ok = 0, err = errno;
    if (ferror(in)) ok = 0, err = errno;
    fclose(in);
    if (!ok) { averis_afile_abort(&af); return averis_fail(AVERIS_EIO, "%s: copy failed: %s", dst, strerror(err ? err : EIO)); }
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
            "  \"clip\": %.9g,\n  \"seed\": %llu,\n  \"bf16_last\": %d,\n  \"train_tokens\": %llu,\n"
            "  \"val_tokens\": %llu,\n  \"data_hash\": \"%016llx\"\n}\n",
            recipe, step, r->steps, r->batch, r->seq, r->accum, r->lr, r->min_lr_frac, r->warmup, r->weight_decay,
            r->clip, (unsigned long long)r->seed, r->bf16_last, (unsigned long long)r->train_tokens,
            (unsigned long long)r->val_tokens, (unsigned long long)r->data_hash);
    return averis_afile_commit(&af);
}

/* train.json: the fields, their ranges; `need` fields must be present */
typedef struct {
    const char *key;
    int need;
    double lo, hi; /* numbers: lo ≤ x ≤ hi */
    int integer;
} tj_field;
static const tj_field k_tj[] = {
    {"recipe", 1, 0, 0, 0},          {"step", 1, 0, 1e8, 1},         {"steps", 1, 1, 1e8, 1},
    {"batch", 1, 1, 65536, 1},       {"seq", 1, 2, 1 << 20, 1},      {"accum", 1, 1, 65536, 1},
    {"lr", 0, 1e-12, 10, 0},         {"min_lr_frac", 0, 0, 1, 0},    {"warmup", 0, 0, 1e8, 1},
    {"weight_decay", 0, 0, 10, 0},   {"clip", 0, 0, 1e9, 0},         {"seed", 0, 0, 18446744073709551615.0, 1},
    {"bf16_last", 0, 0, 1024, 1},    {"train_tokens", 0, 0, 9.007199254740992e15, 1},
    {"val_tokens", 0, 0, 9.007199254740992e15, 1}, {"data_hash", 0, 0, 0, 0},
};

averis_status ckpt_train_json_read(const char *path, ckpt_train_info *t) {
    memset(t, 0, sizeof *t);
    char *buf;
    size_t n;
    averis_status st = averis_read_file(path, &buf, &n);
    if (st) return st;
    json j;
    st = json_parse(buf, n, path, &j);
    free(buf);
    if (st) return st;
    char pk[64];
    if (j.type != JSON_OBJ) { json_free(&j); return averis_fail(AVERIS_EFORMAT, "%s: expected a JSON object", path); }
    for (int i = 0; i < j.n && !st; i++) {
        size_t f = 0;
        while (f < sizeof k_tj / sizeof *k_tj && strcmp(k_tj[f].key, j.keys[i])) f++;
        if (f == sizeof k_tj / sizeof *k_tj)
            st = averis_fail(AVERIS_EFORMAT, "%s: unknown field %s", path, json_printable(j.keys[i], pk, sizeof pk));
        for (int k = 0; k < i && !st; k++)
            if (!strcmp(j.keys[k], j.keys[i])) st = averis_fail(AVERIS_EFORMAT, "%s: field %s appears twice", path, j.keys[i]);
    }
    for (size_t f = 0; f < sizeof k_tj / sizeof *k_tj && !st; f++) {
        const tj_field *F = &k_tj[f];
        const json *v = json_get(&j, F->key);
        if (!v) {
            if (F->need) st = averis_fail(AVERIS_EFORMAT, "%s: field %s is missing", path, F->key);
            continue;
        }
        if (!strcmp(F->key, "recipe") || !strcmp(F->key, "data_hash")) {
            if (v->type != JSON_STR) { st = averis_fail(AVERIS_EFORMAT, "%s: field %s must be a string", path, F->key); break; }
            if (!strcmp(F->key, "recipe")) {
                qlin_recipe rec;
                if (strlen(v->str) >= sizeof t->recipe || qlin_recipe_parse(v->str, &rec))
                    st = averis_fail(AVERIS_EFORMAT, "%s: field recipe = \"%s\" is not a recipe", path,
                                     json_printable(v->str, pk, sizeof pk));
                else snprintf(t->recipe, sizeof t->recipe, "%s", v->str);
            } else {
                char *end;
                errno = 0;
                unsigned long long h = strtoull(v->str, &end, 16);
                if (strlen(v->str) != 16 || *end || errno)
                    st = averis_fail(AVERIS_EFORMAT, "%s: field data_hash = \"%s\" is not 16 hex digits", path,
                                     json_printable(v->str, pk, sizeof pk));
                t->data_hash = h;
                t->has_data = 1;
            }
            continue;
        }
        if (v->type != JSON_NUM || !isfinite(v->num) || v->num < F->lo || v->num > F->hi ||
            (F->integer && v->num != floor(v->num))) {
            char d[48];
            if (v->type == JSON_NUM) snprintf(d, sizeof d, "%.17g", v->num);
            else snprintf(d, sizeof d, "a %s", v->type == JSON_STR ? "string" : v->type == JSON_BOOL ? "boolean" : "non-number");
            st = averis_fail(AVERIS_EFORMAT, "%s: field %s = %s is not %s in %.17g..%.17g", path, F->key, d,
                             F->integer ? "an integer" : "a number", F->lo, F->hi);
            break;
        }
        double x = v->num;
        if (!strcmp(F->key, "step")) t->step = (int)x;
        else if (!strcmp(F->key, "steps")) t->steps = (int)x;
        else if (!strcmp(F->key, "batch")) t->batch = (int)x;
        else if (!strcmp(F->key, "seq")) t->seq = (int)x;
        else if (!strcmp(F->key, "accum")) t->accum = (int)x;
        else if (!strcmp(F->key, "lr")) t->lr = x;
        else if (!strcmp(F->key, "min_lr_frac")) t->min_lr_frac = x;
        else if (!strcmp(F->key, "warmup")) t->warmup = (int)x;
        else if (!strcmp(F->key, "weight_decay")) t->weight_decay = x;
        else if (!strcmp(F->key, "clip")) t->clip = x;
        else if (!strcmp(F->key, "seed")) t->seed = x >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)x;
        else if (!strcmp(F->key, "bf16_last")) t->bf16_last = (int)x;
        else if (!strcmp(F->key, "train_tokens")) t->train_tokens = (uint64_t)x;
        else if (!strcmp(F->key, "val_tokens")) t->val_tokens = (uint64_t)x;
    }
    if (!st && t->step > t->steps)
        st = averis_fail(AVERIS_EFORMAT, "%s: field step = %d exceeds steps = %d", path, t->step, t->steps);
    if (!st && t->has_data && (!json_get(&j, "train_tokens") || !json_get(&j, "val_tokens")))
        st = averis_fail(AVERIS_EFORMAT, "%s: field data_hash without train_tokens and val_tokens", path);
    json_free(&j);
    return st;
}

/* ------------------------------------------------------------ MANIFEST */
static const char k_manifest_head[] = "averis-manifest 1 avh64\n";

/* Size and avh64 of a file; errors name it with the system's reason. */
static averis_status file_hash(const char *path, uint64_t *size, uint64_t *hash) {
    FILE *f = fopen(path, "rb");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot open: %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    uint8_t *b = malloc(CHUNK);
    if (!b) { fclose(f); return averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); }
    avh h;
    avh_init(&h);
    size_t n;
    do {
        n = 0;
        while (n < CHUNK) { /* full chunks but the last: avh_update's tail rule */
            size_t k = fread(b + n, 1, CHUNK - n, f);
            if (!k) break;
            n += k;
        }
        avh_update(&h, b, n);
    } while (n == CHUNK);
    int err = ferror(f) ? (errno ? errno : EIO) : 0;
    free(b);
    fclose(f);
    if (err) return averis_fail(AVERIS_EIO, "%s: read failed: %s", path, strerror(err));
    *size = h.len;
    *hash = avh_final(&h);
    return AVERIS_OK;
}

/* MANIFEST of every file in dir (sorted by name) */
static averis_status manifest_write(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return averis_fail(AVERIS_EIO, "%s: cannot list: %s", dir, strerror(errno));
    char *names[64];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 64;)
        if (e->d_name[0] != '.' && strcmp(e->d_name, "MANIFEST") && !strstr(e->d_name, ".tmp.") &&
            (names[n] = strdup(e->d_name)))
            n++;
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, name_cmp);
    char p[4400];
    snprintf(p, sizeof p, "%s/MANIFEST", dir);
    averis_afile af;
    averis_status st = averis_afile_open(&af, p);
    if (!st) fputs(k_manifest_head, af.f);
    for (int i = 0; i < n; i++) {
        uint64_t size, hash;
        char fp[4400];
        snprintf(fp, sizeof fp, "%s/%s", dir, names[i]);
        if (!st && !(st = file_hash(fp, &size, &hash)))
            fprintf(af.f, "%s %llu %016llx\n", names[i], (unsigned long long)size, (unsigned long long)hash);
        free(names[i]);
    }
    if (st) { if (af.f) averis_afile_abort(&af); return st; }
    return averis_afile_commit(&af);
}

/* only: the names to check (NULL-terminated), or NULL for all */
static averis_status verify(const char *dir, const char *const *only) {
    char p[4400];
    snprintf(p, sizeof p, "%s/MANIFEST", dir);
    struct stat sb;
    if (stat(dir, &sb) || !S_ISDIR(sb.st_mode))
        return averis_fail(AVERIS_EIO, "%s: checkpoint directory missing", dir);
    if (stat(p, &sb)) return AVERIS_OK; /* written before MANIFESTs */
    char *buf;
    size_t n;
    averis_status st = averis_read_file(p, &buf, &n);
    if (st) return st;
    if (n < sizeof k_manifest_head - 1 || memcmp(buf, k_manifest_head, sizeof k_manifest_head - 1)) {
        free(buf);
        return averis_fail(AVERIS_EFORMAT, "%s: not an averis MANIFEST (bad first line)", p);
    }
    int lines = 0;
    for (char *line = buf + sizeof k_manifest_head - 1, *next; *line && !st; line = next) {
        next = strchr(line, '\n');
        if (!next) { st = averis_fail(AVERIS_EFORMAT, "%s: line %d is not terminated (truncated)", p, lines + 2); break; }
        *next++ = 0;
        char name[256];
        unsigned long long size, hash;
        int used = 0;
        if (sscanf(line, "%255s %llu %llx%n", name, &size, &hash, &used) != 3 || line[used] || strchr(name, '/') ||
            name[0] == '.') {
            char t[64];
            st = averis_fail(AVERIS_EFORMAT, "%s: line %d ('%s') is not NAME SIZE HASH", p, lines + 2,
                             json_printable(line, t, sizeof t));
            break;
        }
        lines++;
        int wanted = !only;
        for (int k = 0; only && only[k] && !wanted; k++) wanted = !strcmp(only[k], name);
        if (!wanted) continue;
        char fp[4400];
        uint64_t fsz, fh;
        snprintf(fp, sizeof fp, "%s/%s", dir, name);
        if ((st = file_hash(fp, &fsz, &fh))) break;
        if (fsz != size)
            st = averis_fail(AVERIS_EFORMAT, "%s: %llu bytes, MANIFEST says %llu (truncated or corrupt)", fp,
                             (unsigned long long)fsz, size);
        else if (fh != hash)
            st = averis_fail(AVERIS_EFORMAT, "%s: checksum %016llx, MANIFEST says %016llx (corrupt)", fp,
                             (unsigned long long)fh, hash);
    }
    if (!st && !lines) st = averis_fail(AVERIS_EFORMAT, "%s: lists no file", p);
    free(buf);
    return st;
}
averis_status ckpt_verify(const char *dir) { return verify(dir, NULL); }

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
    if (mkdir(tmp, 0777)) return averis_fail(AVERIS_EIO, "%s: cannot create checkpoint directory: %s", tmp, strerror(errno));
    averis_status st;
    path_join(p, sizeof p, tmp, "model.safetensors");
    if ((st = model_save_weights(m, p))) goto fail;
    path_join(p, sizeof p, tmp, "config.json");
    if ((st = model_config_write_hf(&m->cfg, p))) goto fail;
    path_join(p, sizeof p, tmp, "train.json");
    if ((st = write_train_json(p, r, s->recipe, (int)s->step))) goto fail;
    path_join(p, sizeof p, tmp, "state.bin");
    if ((st = ckpt_state_write(p, s, mom, var))) goto fail;
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
    if ((st = manifest_write(tmp))) goto fail;
    fsync_dir(tmp);
    remove_dir_files(dir); /* a same-step leftover newer than `latest` */
    if (rename(tmp, dir)) { st = averis_fail(AVERIS_EIO, "%s: rename failed: %s", dir, strerror(errno)); goto fail; }
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
    static const char *const read_here[] = {"config.json", "model.safetensors", "train.json", NULL};
    averis_status st = verify(dir, read_here);
    if (st) return st;
    path_join(p, sizeof p, dir, "config.json");
    if ((st = model_config_load(p, &cfg))) return st;
    char recipe[128] = "fp32";
    int bf16_last = 0;
    if (seq_len) *seq_len = 0;
    path_join(p, sizeof p, dir, "train.json");
    struct stat sb;
    if (!stat(p, &sb)) { /* optional: a plain HF checkpoint has none */
        ckpt_train_info ti;
        if ((st = ckpt_train_json_read(p, &ti))) return st;
        snprintf(recipe, sizeof recipe, "%s", ti.recipe);
        if (seq_len) *seq_len = ti.seq;
        bf16_last = ti.bf16_last;
    }
    qlin_recipe rec;
    if ((st = qlin_recipe_parse(recipe_override ? recipe_override : recipe, &rec))) return st;
    path_join(p, sizeof p, dir, "config.json");
    if (rec.fp4 && bf16_last < cfg.num_hidden_layers && (st = model_config_check_fp4(&cfg, p))) return st;
    if ((st = model_create(m, &cfg))) return st;
    m->recipe = rec;
    m->bf16_last = bf16_last;
    path_join(p, sizeof p, dir, "model.safetensors");
    if ((st = model_load_weights(m, p))) { model_free(m); return st; }
    return AVERIS_OK;
}

averis_status ckpt_load_state(const char *dir, model *m, uint64_t data_tokens, const moment_window *window, ckpt_state *s,
                              float *mom, float *var) {
    char p[4200];
    path_join(p, sizeof p, dir, "model.safetensors");
    averis_status st = model_load_weights(m, p);
    if (st) return st;
    path_join(p, sizeof p, dir, "state.bin");
    return ckpt_state_read(p, &(ckpt_limits){m->nparams, data_tokens, window}, s, mom, var);
}

averis_status ckpt_verify_latest(const char *out_dir, const char *name) {
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/%s", out_dir, name);
    averis_status st = ckpt_verify(dir);
    if (!st) return AVERIS_OK;
    char why[1024];
    snprintf(why, sizeof why, "%s", averis_last_error());
    /* the newest older checkpoint that verifies */
    DIR *d = opendir(out_dir);
    char best[256] = "";
    int kept = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        if (strncmp(e->d_name, "ckpt_", 5) || strstr(e->d_name, ".tmp") || strcmp(e->d_name, name) >= 0) continue;
        kept++;
        if (strcmp(e->d_name, best) <= 0) continue;
        char c[4400];
        snprintf(c, sizeof c, "%s/%s", out_dir, e->d_name);
        if (!ckpt_verify(c)) snprintf(best, sizeof best, "%s", e->d_name);
    }
    if (d) closedir(d);
    if (best[0])
        return averis_fail(st, "%s; checkpoint %s is damaged: fall back to %s/%s (it verifies) with "
                               "'echo %s > %s/latest', then --resume", why, name, out_dir, best, best, out_dir);
    return averis_fail(st, "%s; checkpoint %s is damaged and %s holds no older checkpoint that verifies (%d older kept; "
                           "--keep N keeps N): restore the file from a copy, or start afresh with another --out",
                       why, name, out_dir, kept);
}

averis_status ckpt_lock_out(const char *out_dir, int *fd, int *removed) {
    char p[4400];
    *removed = 0;
    snprintf(p, sizeof p, "%s/train.lock", out_dir);
    *fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (*fd < 0) return averis_fail(AVERIS_EIO, "%s: cannot open: %s", p, strerror(errno));
    if (flock(*fd, LOCK_EX | LOCK_NB)) {
        int err = errno;
        char pid[32] = "";
        ssize_t n = pread(*fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\r\n")] = 0;
        close(*fd);
        *fd = -1;
        if (err == EWOULDBLOCK)
            return averis_fail(AVERIS_EINVAL, "%s is in use by another run (pid %s holds %s); wait for it to end or "
                                              "choose another --out", out_dir, pid[0] ? pid : "?", p);
        return averis_fail(AVERIS_EIO, "%s: cannot lock: %s", p, strerror(err));
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(*fd, 0) || pwrite(*fd, pid, (size_t)n, 0) != n) { /* only the message uses it */ }
    /* we hold OUT: whatever temporaries are here, a killed writer left */
    DIR *d = opendir(out_dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char q[4400];
        snprintf(q, sizeof q, "%s/%s", out_dir, e->d_name);
        size_t len = strlen(e->d_name);
        if (strstr(e->d_name, ".tmp.")) { if (!unlink(q)) ++*removed; }
        else if (!strncmp(e->d_name, "ckpt_", 5) && len > 4 && !strcmp(e->d_name + len - 4, ".tmp")) {
            remove_dir_files(q);
            ++*removed;
        }
    }
    if (d) closedir(d);
    return AVERIS_OK;
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

