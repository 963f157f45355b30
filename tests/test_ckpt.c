/* test_ckpt.c — the trainer's checkpoints under faults (issue 20): state.bin
 * header fields range-checked even with a valid checksum, train.json
 * validated, --resume refusing a different run, the OUT lock and stale
 * temporaries, a full disk during a checkpoint, MANIFEST checksums with the
 * fallback named, the FP4 check at load, NaN-step injection. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "averis/io.h"
#include "averis/train.h"
#include "check.h"
#include "test_util.h"

/* A tiny model and a corpus over 64 tokens in a fresh dir (as test_train.c),
 * on tmpfs when there is one (the checkpoints' fsyncs cost nothing there). */
static void fixture(char *dir) {
    if (test_mkdtemp(dir, 64, "ckpt", 1)) return;
    test_write_text(dir, "model.json", TEST_TINY_MODEL_JSON);
    uint16_t tok[6000];
    test_markov_tokens(tok, 6000, 7);
    test_write_split(dir, "data", tok, 5000, 1000);
    /* a second corpus: the same but one token */
    tok[100] = (uint16_t)((tok[100] + 1) % 64);
    test_write_split(dir, "data2", tok, 5000, 1000);
    /* a third whose val split is shorter than one batch */
    test_write_split(dir, "small_val", tok, 5000, 20);
}

static char g_cfg[256], g_data[256], g_out[256];
static void opts(train_opts *o, const char *dir, const char *sub) {
    train_opts_default(o);
    snprintf(g_cfg, sizeof g_cfg, "%s/model.json", dir);
    snprintf(g_data, sizeof g_data, "%s/data", dir);
    snprintf(g_out, sizeof g_out, "%s/%s", dir, sub);
    o->config = g_cfg;
    o->data_dir = g_data;
    o->out_dir = g_out;
    o->recipe = "bf16";
    o->steps = 4;
    o->batch = 2;
    o->seq = 16;
    o->warmup = 1;
    o->val_every = 2;
    o->val_batches = 1;
    o->quiet = 1;
}

/* train_run's verdict: ok, or an error whose message holds each of want (NULL-ended) */
static int run_says(const train_opts *o, const char *const *want) {
    train_result r;
    averis_status st = train_run(o, &r);
    train_result_free(&r);
    if (!want) return st == AVERIS_OK;
    if (st == AVERIS_OK) return 0;
    for (int i = 0; want[i]; i++)
        if (!strstr(averis_last_error(), want[i])) return 0;
    return 1;
}
#define SAYS(...) ((const char *const[]){__VA_ARGS__, NULL})

static uint64_t fnv(const uint8_t *b, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}
/* rewrites state.bin's checksum after an edit (what a hostile user can do) */
static void state_reseal(uint8_t *b, size_t n) {
    uint64_t h = fnv(b, n - 8);
    memcpy(b + n - 8, &h, 8);
}
static int write_file(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(b, 1, n, f) == n;
    return !fclose(f) && ok;
}

/* Every state.bin header field is checked after the checksum matches: the
 * step = -5 and huge data_pos of issue 20 (a heap overflow and an
 * out-of-bounds read before) and the others, each named. */
void test_ckpt_state_ranges(void) {
    char dir[64], p[512];
    fixture(dir);
    enum { N = 64 };
    float mom[N], var[N], m2[N], v2[N];
    for (int i = 0; i < N; i++) mom[i] = (float)i * 0.5f, var[i] = (float)i * 0.25f;
    ckpt_state s;
    memset(&s, 0, sizeof s);
    s.step = 3, s.adam_t = 2, s.skipped = 1, s.bad_run = 0, s.data_pos = 64, s.data_epoch = 1, s.nparams = N;
    s.seed = 9, s.batch = 2, s.seq = 16, s.accum = 1, s.steps = 10;
    strcpy(s.recipe, "averis");
    snprintf(p, sizeof p, "%s/state.bin", dir);
    CHECK(!ckpt_state_write(p, &s, mom, var), "%s", averis_last_error());
    ckpt_state r;
    ckpt_limits lim = {N, 1000, NULL};
    CHECK(!ckpt_state_read(p, &lim, &r, m2, v2) && !memcmp(&r, &s, sizeof s) && !memcmp(m2, mom, sizeof mom) &&
              !memcmp(v2, var, sizeof var), "round trip: %s", averis_last_error());
    uint8_t good[8 + sizeof s + 2 * N * 4 + 8], b[sizeof good];
    FILE *f = fopen(p, "rb");
    CHECK(f && fread(good, 1, sizeof good, f) == sizeof good, "read state.bin");
    if (f) fclose(f);
    lim.nparams = N + 1;
    CHECK(ckpt_state_read(p, &lim, &r, m2, v2) && strstr(averis_last_error(), "65 parameters"),
          "another model's state: %s", averis_last_error());
    lim.nparams = N;
    /* one field at a time, resealed */
    struct { const char *field; size_t off; int64_t v; int width; } cases[] = {
        {"field step", offsetof(ckpt_state, step), -5, 8},
        {"field step", offsetof(ckpt_state, step), 11, 8},
        {"field data_pos", offsetof(ckpt_state, data_pos), (int64_t)1 << 60, 8},
        {"field data_pos", offsetof(ckpt_state, data_pos), 1024 + 32, 8}, /* a multiple of B·T past the data */
        {"field data_pos", offsetof(ckpt_state, data_pos), 65, 8},        /* not a multiple of B·T */
        {"field adam_t", offsetof(ckpt_state, adam_t), 7, 8},
        {"field skipped", offsetof(ckpt_state, skipped), -1, 8},
        {"field bad_run", offsetof(ckpt_state, bad_run), 2, 8},
        {"field data_epoch", offsetof(ckpt_state, data_epoch), 4, 8},
        {"field batch", offsetof(ckpt_state, batch), 0, 4},
        {"field seq", offsetof(ckpt_state, seq), -16, 4},
        {"field accum", offsetof(ckpt_state, accum), 1 << 30, 4},
        {"field steps", offsetof(ckpt_state, steps), 0, 4},
        {"field recipe", offsetof(ckpt_state, recipe), 0, 1},
        {"field recipe", offsetof(ckpt_state, recipe) + 1, 0x07, 1},
    };
    lim.data_tokens = 1024;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        memcpy(b, good, sizeof b);
        for (int k = 0; k < cases[c].width; k++) b[8 + cases[c].off + k] = (uint8_t)((uint64_t)cases[c].v >> (8 * k));
        state_reseal(b, sizeof b);
        CHECK(write_file(p, b, sizeof b), "write");
        CHECK(ckpt_state_read(p, &lim, &r, m2, v2) && strstr(averis_last_error(), cases[c].field) &&
                  strstr(averis_last_error(), "state.bin"),
              "case %zu (%s = %lld): %s", c, cases[c].field, (long long)cases[c].v, averis_last_error());
    }
    /* the recipe with no NUL in its 128 bytes */
    memcpy(b, good, sizeof b);
    memset(b + 8 + offsetof(ckpt_state, recipe), 'a', 128);
    state_reseal(b, sizeof b);
    write_file(p, b, sizeof b);
    CHECK(ckpt_state_read(p, &lim, &r, m2, v2) && strstr(averis_last_error(), "not NUL-terminated"), "%s",
          averis_last_error());
    /* an edit without resealing: the checksum */
    memcpy(b, good, sizeof b);
    b[8 + offsetof(ckpt_state, step)] = 2;
    write_file(p, b, sizeof b);
    CHECK(ckpt_state_read(p, &lim, &r, m2, v2) && strstr(averis_last_error(), "checksum"), "%s", averis_last_error());
    /* the trainer: a checkpoint whose state.bin says step = -5 (resealed, MANIFEST removed as in older
     * checkpoints) and one with a huge data_pos are refused on --resume, not run */
    train_opts o;
    opts(&o, dir, "run");
    CHECK(run_says(&o, NULL), "%s", averis_last_error());
    char sp[512], mp[512];
    snprintf(sp, sizeof sp, "%s/ckpt_00000004/state.bin", g_out);
    snprintf(mp, sizeof mp, "%s/ckpt_00000004/MANIFEST", g_out);
    char *sb;
    size_t sn;
    CHECK(!averis_read_file(sp, &sb, &sn), "%s", averis_last_error());
    o.resume = 1;
    o.steps = 8;
    const struct { size_t off; int64_t v; const char *field; } tr[] = {
        {offsetof(ckpt_state, step), -5, "field step"},
        {offsetof(ckpt_state, data_pos), (int64_t)1 << 62, "field data_pos"}};
    for (int c = 0; c < 2 && sb; c++) {
        uint8_t *t = malloc(sn);
        memcpy(t, sb, sn);
        memcpy(t + 8 + tr[c].off, &tr[c].v, 8);
        state_reseal(t, sn);
        write_file(sp, t, sn);
        if (c == 0) CHECK(run_says(&o, SAYS("MANIFEST", "state.bin")), "with the MANIFEST: %s", averis_last_error());
        unlink(mp);
        CHECK(run_says(&o, SAYS(tr[c].field, "state.bin")), "case %d without MANIFEST: %s", c, averis_last_error());
        free(t);
    }
    free(sb);
    test_rm_tree(dir);
}

/* A ZeRO-1 rank reads only its window of state.bin's moments (its shard and
 * the tail, averis/moments.h): the same values as the full read's, across
 * the reader's 16384-float chunks; the checksum still covers the moments
 * outside the window; a window past the parameters is refused. */
void test_ckpt_state_window(void) {
    char dir[64], p[512];
    if (test_mkdtemp(dir, sizeof dir, "ckptw", 1)) return;
    enum { N = 40001 };
    float *mom = malloc(N * sizeof *mom), *var = malloc(N * sizeof *var), *wm = malloc(N * sizeof *wm),
          *wv = malloc(N * sizeof *wv);
    for (int i = 0; i < N; i++) mom[i] = (float)i + 0.5f, var[i] = -(float)i;
    ckpt_state s, r;
    memset(&s, 0, sizeof s);
    s.step = 1, s.adam_t = 1, s.nparams = N, s.seed = 1, s.batch = 1, s.seq = 2, s.accum = 1, s.steps = 2;
    strcpy(s.recipe, "fp32");
    snprintf(p, sizeof p, "%s/state.bin", dir);
    CHECK(!ckpt_state_write(p, &s, mom, var), "%s", averis_last_error());
    /* 3 ranks of 40001: shards of 13333, the tail [39999, 40001); each
     * window crosses a chunk boundary (16384, 32768) somewhere */
    for (int rank = 0; rank < 3; rank++) {
        size_t S = N / 3;
        moment_window w = {{rank * S, N / 3 * 3}, {(rank + 1) * S, N}};
        ckpt_limits lim = {N, 0, &w};
        size_t k = moment_window_numel(&w);
        memset(wm, 0xff, k * sizeof *wm);
        CHECK(!ckpt_state_read(p, &lim, &r, wm, wv), "rank %d: %s", rank, averis_last_error());
        for (size_t i = 0, j = 0; i < N; i++) {
            if (!((i >= w.lo[0] && i < w.hi[0]) || (i >= w.lo[1] && i < w.hi[1]))) continue;
            if (wm[j] != mom[i] || wv[j] != var[i]) {
                CHECK(0, "rank %d: element %zu (held at %zu): %g %g, want %g %g", rank, i, j, wm[j], wv[j], mom[i], var[i]);
                break;
            }
            j++;
        }
    }
    /* a flipped byte of a moment outside rank 0's window still fails the checksum */
    char *b;
    size_t n;
    CHECK(!averis_read_file(p, &b, &n), "%s", averis_last_error());
    if (b) {
        b[8 + sizeof s + 4 * (N - 10)] ^= 1; /* mom[N − 10]: rank 2's shard */
        CHECK(write_file(p, b, n), "write");
        moment_window w0 = {{0, N / 3 * 3}, {N / 3, N}};
        ckpt_limits lim = {N, 0, &w0};
        CHECK(ckpt_state_read(p, &lim, &r, wm, wv) && strstr(averis_last_error(), "checksum"), "outside the window: %s",
              averis_last_error());
        free(b);
    }
    moment_window bad = {{0, N}, {N, N + 1}};
    ckpt_limits lim = {N, 0, &bad};
    CHECK(ckpt_state_read(p, &lim, &r, wm, wv) && strstr(averis_last_error(), "not ranges"), "a window past the end: %s",
          averis_last_error());
    free(mom), free(var), free(wm), free(wv);
    test_rm_tree(dir);
}

/* train.json: every field checked, unknown fields refused, by name */
void test_ckpt_train_json(void) {
    char dir[64], p[512];
    fixture(dir);
    train_opts o;
    opts(&o, dir, "run");
    o.bf16_last = 1;
    CHECK(run_says(&o, NULL), "%s", averis_last_error());
    snprintf(p, sizeof p, "%s/ckpt_00000004/train.json", g_out);
    ckpt_train_info ti;
    CHECK(!ckpt_train_json_read(p, &ti) && ti.step == 4 && ti.steps == 4 && ti.batch == 2 && ti.seq == 16 &&
              ti.accum == 1 && ti.bf16_last == 1 && ti.seed == 1 && !strcmp(ti.recipe, "bf16") && ti.has_data &&
              ti.train_tokens == 5000 && ti.val_tokens == 1000,
          "round trip: %s", averis_last_error());
    const char *good = "{\"recipe\": \"bf16\", \"step\": 4, \"steps\": 4, \"batch\": 2, \"seq\": 16, \"accum\": 1";
    const struct { const char *tail, *want; } cases[] = {
        {"}", NULL},
        {", \"lr\": -1}", "field lr"},
        {", \"lr\": \"big\"}", "field lr"},
        {", \"seed\": 1.5}", "field seed"},
        {", \"bf16_last\": 99999}", "field bf16_last"},
        {", \"warmup\": -3}", "field warmup"},
        {", \"min_lr_frac\": 2}", "field min_lr_frac"},
        {", \"clip\": 1e999}", "field clip"},
        {", \"data_hash\": \"xyz\", \"train_tokens\": 1, \"val_tokens\": 1}", "field data_hash"},
        {", \"data_hash\": \"0123456789abcdef\"}", "without train_tokens"},
        {", \"train_tokens\": -1}", "field train_tokens"},
        {", \"frobnicate\": 1}", "unknown field frobnicate"},
        {", \"step\": 5}", "appears twice"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char t[512];
        snprintf(t, sizeof t, "%s%s\n", good, cases[c].tail);
        write_file(p, t, strlen(t));
        averis_status st = ckpt_train_json_read(p, &ti);
        if (!cases[c].want) CHECK(!st, "case %zu: %s", c, averis_last_error());
        else CHECK(st && strstr(averis_last_error(), cases[c].want), "case %zu: want '%s', got '%s'", c, cases[c].want,
                   st ? averis_last_error() : "ok");
    }
    const char *whole[][2] = {
        {"{\"step\": 4, \"steps\": 4, \"batch\": 2, \"seq\": 16, \"accum\": 1}", "field recipe is missing"},
        {"{\"recipe\": \"fp5\", \"step\": 4, \"steps\": 4, \"batch\": 2, \"seq\": 16, \"accum\": 1}", "field recipe"},
        {"{\"recipe\": \"bf16\", \"step\": 9, \"steps\": 4, \"batch\": 2, \"seq\": 16, \"accum\": 1}", "exceeds steps"},
        {"{\"recipe\": \"bf16\", \"step\": 4, \"steps\": 4, \"batch\": 0, \"seq\": 16, \"accum\": 1}", "field batch"},
        {"[1, 2]", "JSON object"},
    };
    for (size_t c = 0; c < sizeof whole / sizeof *whole; c++) {
        write_file(p, whole[c][0], strlen(whole[c][0]));
        CHECK(ckpt_train_json_read(p, &ti) && strstr(averis_last_error(), whole[c][1]), "whole %zu: %s", c,
              averis_last_error());
    }
    /* a checkpoint whose train.json is bad does not load (eval/sample) */
    snprintf(p, sizeof p, "%s/ckpt_00000004/MANIFEST", g_out);
    unlink(p);
    snprintf(p, sizeof p, "%s/ckpt_00000004", g_out);
    model m;
    CHECK(ckpt_load_model(p, NULL, &m, NULL) && strstr(averis_last_error(), "train.json"), "%s", averis_last_error());
    test_rm_tree(dir);
}

/* --resume refuses a run that is not the checkpoint's, naming the flag and
 * both values; --resume on an empty OUT is an error; a val split too small
 * for one batch and an FP4-misaligned config are named at start. */
void test_ckpt_resume_mismatch(void) {
    char dir[64], p[512];
    fixture(dir);
    train_opts o;
    opts(&o, dir, "run");
    o.resume = 1;
    CHECK(run_says(&o, SAYS("--resume", "holds no checkpoint")), "resume on nothing: %s", averis_last_error());
    struct stat sb;
    snprintf(p, sizeof p, "%s/latest", g_out);
    CHECK(stat(p, &sb) != 0, "resume on nothing wrote a checkpoint");
    o.resume = 0;
    o.steps = 2;
    CHECK(run_says(&o, NULL), "%s", averis_last_error());
    o.resume = 1;
    o.steps = 4;
    o.bf16_last = 1;
    CHECK(run_says(&o, SAYS("--bf16-last 1", "checkpoint's 0")), "bf16_last: %s", averis_last_error());
    o.bf16_last = 0;
    o.seed = 5;
    CHECK(run_says(&o, SAYS("--seed 5", "checkpoint's 1")), "seed: %s", averis_last_error());
    o.seed = 1;
    char d2[512];
    snprintf(d2, sizeof d2, "%s/data2", dir);
    o.data_dir = d2;
    CHECK(run_says(&o, SAYS("--data", "data2", "fingerprint")), "data: %s", averis_last_error());
    o.data_dir = g_data;
    char c2[512];
    snprintf(c2, sizeof c2, "%s/model2.json", dir);
    FILE *f = fopen(c2, "w");
    fputs("{\"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2,\n"
          " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8,\n"
          " \"max_position_embeddings\": 64, \"tie_word_embeddings\": true, \"rope_theta\": 500000}\n", f);
    fclose(f);
    o.config = c2;
    CHECK(run_says(&o, SAYS("rope_theta = 500000", "has 1000000")) || run_says(&o, SAYS("rope_theta = 500000")),
          "config: %s", averis_last_error());
    o.config = "tiny";
    CHECK(run_says(&o, SAYS("--config tiny")), "config preset: %s", averis_last_error());
    o.config = g_cfg;
    o.batch = 1;
    CHECK(run_says(&o, SAYS("--batch 1", "checkpoint's 2")), "batch: %s", averis_last_error());
    o.batch = 2;
    CHECK(run_says(&o, NULL), "the same run resumes: %s", averis_last_error());
    /* the val split: named at start */
    opts(&o, dir, "smallval");
    snprintf(d2, sizeof d2, "%s/small_val", dir);
    o.data_dir = d2;
    CHECK(run_says(&o, SAYS("val split", "20 tokens", "33")), "small val: %s", averis_last_error());
    o.val_every = 0;
    CHECK(run_says(&o, NULL), "no validation, no need: %s", averis_last_error());
    /* FP4 widths: at load, naming the field (the trainer, and ckpt_load_model under an override) */
    snprintf(c2, sizeof c2, "%s/model24.json", dir);
    f = fopen(c2, "w");
    fputs("{\"vocab_size\": 64, \"hidden_size\": 24, \"intermediate_size\": 64, \"num_hidden_layers\": 2,\n"
          " \"num_attention_heads\": 3, \"num_key_value_heads\": 1, \"head_dim\": 8,\n"
          " \"max_position_embeddings\": 64, \"tie_word_embeddings\": true}\n", f);
    fclose(f);
    opts(&o, dir, "fp4");
    o.config = c2;
    o.recipe = "nvfp4";
    CHECK(run_says(&o, SAYS("hidden_size")), "fp4 widths: %s", averis_last_error());
    o.bf16_last = 2; /* every block in bf16: no FP4 linear */
    o.recipe = "bf16";
    CHECK(run_says(&o, NULL), "%s", averis_last_error());
    snprintf(p, sizeof p, "%s/ckpt_00000004", o.out_dir);
    model m;
    CHECK(ckpt_load_model(p, "nvfp4", &m, NULL) == AVERIS_OK, "bf16_last 2 keeps every block in bf16: %s",
          averis_last_error());
    if (!g_check_failed) model_free(&m);
    test_rm_tree(dir);
}

/* OUT is locked: a second run fails at start naming the holder; the stale
 * temporaries of a killed writer are removed at start. */
void test_ckpt_out_lock(void) {
    char dir[64], p[512];
    fixture(dir);
    train_opts o;
    opts(&o, dir, "run");
    mkdir(g_out, 0777);
    snprintf(p, sizeof p, "%s/train.lock", g_out);
    int fd = open(p, O_RDWR | O_CREAT, 0666);
    CHECK(fd >= 0 && !flock(fd, LOCK_EX | LOCK_NB) && write(fd, "4242\n", 5) == 5, "lock");
    CHECK(run_says(&o, SAYS("in use by another run", "pid 4242", "train.lock")), "second run: %s", averis_last_error());
    snprintf(p, sizeof p, "%s/latest", g_out);
    struct stat sb;
    CHECK(stat(p, &sb) != 0, "the refused run wrote a checkpoint");
    close(fd);
    /* leftovers of a killed run */
    const char *junk[] = {"latest.tmp.99999", "log.csv.tmp.12345", "ckpt_00000002.tmp/model.safetensors.tmp.7"};
    snprintf(p, sizeof p, "%s/ckpt_00000002.tmp", g_out);
    mkdir(p, 0777);
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", g_out, junk[i]);
        CHECK(write_file(p, "x", 1), "junk");
    }
    CHECK(run_says(&o, NULL), "%s", averis_last_error());
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", g_out, junk[i]);
        CHECK(stat(p, &sb) != 0, "%s was left", junk[i]);
    }
    snprintf(p, sizeof p, "%s/ckpt_00000002.tmp", g_out);
    CHECK(stat(p, &sb) != 0, "ckpt_00000002.tmp was left");
    test_rm_tree(dir);
}

/* A full disk (a file-size limit, SIGXFSZ ignored) during a checkpoint:
 * the write fails naming the file and the system's reason; the previous
 * checkpoint and `latest` stay, and the run resumes from them. */
void test_ckpt_full_disk(void) {
    char dir[64], p[512];
    fixture(dir);
    train_opts o;
    opts(&o, dir, "run");
    o.steps = 2;
    CHECK(run_says(&o, NULL), "%s", averis_last_error());
    /* limits: below model.safetensors (≈ 60 KB), then between it and state.bin (2× larger) */
    snprintf(p, sizeof p, "%s/ckpt_00000002/model.safetensors", g_out);
    struct stat sb;
    CHECK(!stat(p, &sb), "no checkpoint");
    const struct { rlim_t limit; const char *file; } lim[] = {{4096, "model.safetensors"},
                                                              {(rlim_t)sb.st_size + 4096, "state.bin"}};
    for (int c = 0; c < 2; c++) {
        /* the soft limit, in this process (no fork: OpenMP's pool does not survive one); SIGXFSZ ignored */
        struct rlimit old;
        getrlimit(RLIMIT_FSIZE, &old);
        struct rlimit rl = {lim[c].limit, old.rlim_max};
        void (*was)(int) = signal(SIGXFSZ, SIG_IGN);
        CHECK(!setrlimit(RLIMIT_FSIZE, &rl), "setrlimit: %s", strerror(errno));
        train_opts oc = o;
        oc.resume = 1;
        oc.steps = 4;
        train_result r;
        averis_status st = train_run(&oc, &r);
        setrlimit(RLIMIT_FSIZE, &old);
        signal(SIGXFSZ, was);
        train_result_free(&r);
        const char *msg = st ? averis_last_error() : "ok";
        CHECK(st && strstr(msg, lim[c].file) && strstr(msg, "File too large"), "limit %d: want %s and the reason, got '%s'",
              c, lim[c].file, msg);
        char name[64];
        CHECK(!ckpt_latest(g_out, name, sizeof name) && !strcmp(name, "ckpt_00000002"), "latest moved: %s", name);
        snprintf(p, sizeof p, "%s/ckpt_00000002", g_out);
        CHECK(!ckpt_verify(p), "the previous checkpoint: %s", averis_last_error());
        snprintf(p, sizeof p, "%s/ckpt_00000004.tmp", g_out);
        CHECK(stat(p, &sb) != 0, "the failed checkpoint's temporary was left");
    }
    o.resume = 1;
    o.steps = 4;
    CHECK(run_says(&o, NULL), "resume after the full disk: %s", averis_last_error());
    test_rm_tree(dir);
}

/* MANIFEST: a corrupt, truncated or missing file of the latest checkpoint
 * is found on --resume; the error names the file and the checkpoint to fall
 * back to (or that none is kept). */
void test_ckpt_manifest(void) {
    char dir[64], p[512];
    fixture(dir);
    train_opts o;
    opts(&o, dir, "run");
    o.ckpt_every = 1;
    o.keep = 3;
    CHECK(run_says(&o, NULL), "%s", averis_last_error());
    snprintf(p, sizeof p, "%s/ckpt_00000004", g_out);
    CHECK(!ckpt_verify(p), "fresh checkpoint: %s", averis_last_error());
    o.resume = 1;
    o.steps = 6;
    const char *files[] = {"model.safetensors", "config.json", "train.json", "state.bin", "MANIFEST"};
    for (int i = 0; i < 5; i++) {
        char fp[600], *b;
        size_t n;
        snprintf(fp, sizeof fp, "%s/ckpt_00000004/%s", g_out, files[i]);
        CHECK(!averis_read_file(fp, &b, &n), "%s", averis_last_error());
        char *c = malloc(n);
        memcpy(c, b, n);
        c[n / 2] ^= 0x10; /* one bit */
        write_file(fp, c, n);
        CHECK(run_says(&o, SAYS(files[i], "ckpt_00000004", "fall back to", "ckpt_00000003")),
              "%s flipped: %s", files[i], averis_last_error());
        write_file(fp, b, n - 1); /* truncated */
        CHECK(run_says(&o, SAYS(files[i], "ckpt_00000003")), "%s truncated: %s", files[i], averis_last_error());
        unlink(fp);
        if (i < 4) CHECK(run_says(&o, SAYS(files[i], "ckpt_00000003")), "%s missing: %s", files[i], averis_last_error());
        write_file(fp, b, n);
        free(b);
        free(c);
    }
    /* every older checkpoint damaged too: none to fall back to */
    for (int k = 2; k <= 4; k++) {
        snprintf(p, sizeof p, "%s/ckpt_%08d/config.json", g_out, k);
        write_file(p, "{}", 2);
    }
    CHECK(run_says(&o, SAYS("no older checkpoint that verifies")), "%s", averis_last_error());
    test_rm_tree(dir);
}

/* AVERIS_INJECT_NAN_STEP=k: step k's gradients are NaN on the backend; the
 * step is skipped (weights unchanged, counted), the run goes on. */
void test_ckpt_inject_nan(void) {
    char dir[64], a[512], b[512];
    fixture(dir);
    train_opts o;
    opts(&o, dir, "run");
    o.steps = 5;
    o.ckpt_every = 1;
    o.keep = 10;
    setenv("AVERIS_INJECT_NAN_STEP", "3", 1);
    train_result r;
    averis_status st = train_run(&o, &r);
    unsetenv("AVERIS_INJECT_NAN_STEP");
    CHECK(!st && r.skipped == 1 && r.steps_done == 5, "run: %s, %d skipped", st ? averis_last_error() : "ok", r.skipped);
    for (int i = 0; !st && i < 5; i++) CHECK(isfinite(r.losses[i]), "loss %d = %g", i + 1, r.losses[i]);
    CHECK(!st && isfinite(r.final_val_loss), "val loss %g", r.final_val_loss);
    train_result_free(&r);
    snprintf(a, sizeof a, "%s/ckpt_00000002/model.safetensors", g_out);
    snprintf(b, sizeof b, "%s/ckpt_00000003/model.safetensors", g_out);
    char *x, *y;
    size_t nx, ny;
    CHECK(!averis_read_file(a, &x, &nx) && !averis_read_file(b, &y, &ny) && nx == ny && !memcmp(x, y, nx),
          "the skipped step changed the weights");
    free(x);
    snprintf(a, sizeof a, "%s/ckpt_00000004/model.safetensors", g_out);
    CHECK(!averis_read_file(a, &x, &nx) && (nx != ny || memcmp(x, y, nx)), "step 4 did not update");
    free(x);
    free(y);
    setenv("AVERIS_INJECT_NAN_STEP", "9", 1);
    opts(&o, dir, "bad");
    CHECK(run_says(&o, SAYS("AVERIS_INJECT_NAN_STEP")), "out of range: %s", averis_last_error());
    unsetenv("AVERIS_INJECT_NAN_STEP");
    test_rm_tree(dir);
}
