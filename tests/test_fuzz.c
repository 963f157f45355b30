/* test_fuzz.c — a deterministic mutation fuzzer over every file loader.
 *
 * Each loader has a seed file maker (a valid file, written by the library's
 * own writer) and a load function. A case is the seed after a seeded stack
 * of mutations (bit flips, byte and field edits with boundary values, huge
 * declared sizes, number edits in text, NaN/Inf payloads, chunk deletes and
 * duplicates), or the seed truncated at a boundary (every byte of the first
 * 2 KiB, then a stride). Every case must load, or fail with one clear line
 * in averis_last_error(). A crash, a sanitizer report, a hang (SIGALRM) or,
 * under ASan, an allocation above FUZZ_MAX_ALLOC_MB (a size taken from a
 * header without checking it against the file) fails the suite.
 *
 *   AVERIS_FUZZ_CASES=N   random cases per loader (default 3000; the long mode
 *                         is e.g. 200000)
 *   AVERIS_FUZZ_SEED=S    mutation seed (default 1)
 *   AVERIS_FUZZ_ONLY=NAME one loader
 *
 * Files under tests/fixtures/fuzz/NAME/ are cases the fuzzer once found:
 * replayed every run as regressions.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "averis/ckpt.h"
#include "averis/data.h"
#include "averis/io.h"
#include "averis/model.h"
#include "averis/quant.h"
#include "averis/safetensors.h"
#include "averis/tokenizer.h"
#include "check.h"
#include "internal.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define FUZZ_MAX_ALLOC_MB 1024
#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_ASAN 1
#endif
#endif
#ifdef FUZZ_ASAN
/* ASan refuses (reports and aborts on) any allocation above this: a loader
 * that sizes a buffer from an unchecked header field fails the suite. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "max_allocation_size_mb=1024"; }
#endif

/* ------------------------------------------------------------ the loaders */
static char g_dir[256];      /* scratch directory of this run */
static model g_model;        /* the model safetensors cases load into */
static const model_config k_fuzz_cfg = {.vocab_size = 32, .hidden_size = 16, .intermediate_size = 32, .num_hidden_layers = 1, .num_attention_heads = 2, .num_key_value_heads = 1, .head_dim = 8, .max_position_embeddings = 64, .rope_theta = 10000.0, .rms_norm_eps = 1e-6};
#define FUZZ_VOCAB 300       /* tokenizer and shards */

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static averis_status seed_npy(const char *path) {
    float x[4 * 16];
    for (int i = 0; i < 64; i++) x[i] = (float)(i - 20) * 0.37f;
    int64_t shape[2] = {4, 16};
    return averis_npy_write_f32(path, x, 2, shape);
}
static averis_status load_npy(const char *path) {
    averis_npy a;
    averis_status st = averis_npy_read(path, &a);
    if (!st) averis_npy_free(&a);
    return st;
}

static averis_status seed_safetensors(const char *path) {
    model_init_weights(&g_model, 7);
    return model_save_weights(&g_model, path);
}
/* the raw reader, then the shapes against the config */
static averis_status load_safetensors(const char *path) {
    st_file f;
    averis_status st = st_read(path, &f);
    if (st) return st;
    st_free(&f);
    return model_load_weights(&g_model, path);
}

static const char k_config[] =
    "{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\", \"vocab_size\": 300,\n"
    " \"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,\n"
    " \"num_key_value_heads\": 1, \"head_dim\": 8, \"max_position_embeddings\": 64, \"tie_word_embeddings\": false,\n"
    " \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\", \"attention_bias\": false,\n"
    " \"rope_scaling\": null, \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0}}\n";
static averis_status seed_config(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot write", path);
    fputs(k_config, f);
    return fclose(f) ? averis_fail(AVERIS_EIO, "%s: write failed", path) : AVERIS_OK;
}
static const char k_config_moe[] =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", \"vocab_size\": 300,\n"
    " \"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 3, \"num_attention_heads\": 2,\n"
    " \"num_key_value_heads\": 1, \"head_dim\": 8, \"max_position_embeddings\": 64, \"num_experts\": 4,\n"
    " \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 16, \"norm_topk_prob\": true, \"decoder_sparse_step\": 1,\n"
    " \"mlp_only_layers\": [1], \"output_router_logits\": true, \"router_aux_loss_coef\": 0.001}\n";
static averis_status seed_config_moe(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot write", path);
    fputs(k_config_moe, f);
    return fclose(f) ? averis_fail(AVERIS_EIO, "%s: write failed", path) : AVERIS_OK;
}
/* a config that loads must be one the model can be built from */
static averis_status load_config(const char *path) {
    model_config c;
    averis_status st = model_config_load(path, &c);
    if (st) return st;
    model_config_check_fp4(&c, path);
    int64_t n = model_config_nparams(&c);
    if (n <= 0) return averis_fail(AVERIS_EINVAL, "%s: %lld parameters", path, (long long)n);
    if (n > (1 << 20)) return AVERIS_OK; /* valid, too large to build here */
    model m;
    if ((st = model_create(&m, &c))) return st;
    model_free(&m);
    return AVERIS_OK;
}

static const char k_text[] = "It is a truth universally acknowledged, that a single man in possession of a good "
                             "fortune, must be in want of a wife. 1813 ==== ---- naïve café!\n";
static averis_status seed_tokenizer(const char *path) {
    bpe_tokenizer tok;
    averis_status st = bpe_train(k_text, sizeof k_text - 1, FUZZ_VOCAB, &tok, NULL);
    if (!st) st = bpe_save(&tok, path);
    bpe_free(&tok);
    return st;
}
/* a tokenizer that loads encodes and decodes */
static averis_status load_tokenizer(const char *path) {
    bpe_tokenizer tok;
    averis_status st = bpe_load(&tok, path);
    if (st) return st;
    int *ids = NULL;
    size_t n = 0, cap = 0;
    char out[64];
    if (!(st = bpe_encode(&tok, k_text, sizeof k_text - 1, &ids, &n, &cap))) bpe_decode(&tok, ids, n, out, sizeof out);
    free(ids);
    bpe_free(&tok);
    return st;
}

static averis_status seed_shard(const char *path) {
    uint16_t t[200];
    for (int i = 0; i < 200; i++) t[i] = (uint16_t)((i * 37) % FUZZ_VOCAB);
    return shard_write(path, t, 200);
}
/* the loader over the shard's directory, then its ids against the vocabulary */
static averis_status load_shard(const char *path) {
    data_loader dl;
    averis_status st = loader_open(&dl, g_dir, "train");
    if (st) return st;
    st = loader_check_vocab(&dl, FUZZ_VOCAB, path);
    loader_free(&dl);
    return st;
}

static averis_status seed_packed(const char *path) {
    enum { R = 20, C = 40 };
    float x[R * C], y[R * C];
    for (int i = 0; i < R * C; i++) x[i] = sinf((float)i) * (1.0f + (float)(i % C) * 0.1f);
    averis_qcfg q = {0};
    q.block = NVFP4_BLOCK_16X16;
    q.split = q.mean_fp4 = 1;
    averis_qresult res;
    return averis_quant_roundtrip(x, R, C, &q, y, &res, path);
}
/* a packed file that loads dequantizes */
static averis_status load_packed(const char *path) {
    averis_packed p;
    averis_status st = averis_packed_read(path, &p);
    if (st) return st;
    float *y = malloc((size_t)(p.t.rows * p.t.cols) * sizeof *y);
    st = y ? nvfp4_dequantize(&p.t, (p.flags & AVERIS_PACKED_RHT) != 0, y) : AVERIS_ENOMEM;
    free(y);
    averis_packed_free(&p);
    return st;
}

/* state.bin: 40 parameters of a run of 10 steps, at step 6, on 4096 tokens */
enum { FUZZ_STATE_N = 40 };
static averis_status seed_state(const char *path) {
    float mom[FUZZ_STATE_N], var[FUZZ_STATE_N];
    for (int i = 0; i < FUZZ_STATE_N; i++) mom[i] = (float)(i - 7) * 0.01f, var[i] = (float)i * 1e-4f;
    ckpt_state s;
    memset(&s, 0, sizeof s);
    s.step = 6, s.adam_t = 5, s.skipped = 1, s.data_pos = 96, s.data_epoch = 1, s.nparams = FUZZ_STATE_N, s.seed = 3;
    s.batch = 2, s.seq = 16, s.accum = 2, s.steps = 10;
    strcpy(s.recipe, "averis-rht");
    return ckpt_state_write(path, &s, mom, var);
}
/* the file as it is, then resealed (its FNV-1a recomputed, as a hostile user
 * can): the header's range checks must hold without the checksum's help */
static averis_status load_state(const char *path) {
    float mom[FUZZ_STATE_N], var[FUZZ_STATE_N];
    ckpt_state s;
    ckpt_limits lim = {FUZZ_STATE_N, 4096, NULL};
    averis_status st = ckpt_state_read(path, &lim, &s, mom, var);
    char *b;
    size_t n;
    if (averis_read_file(path, &b, &n)) return st;
    if (n >= 8) {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i + 8 < n; i++) h = (h ^ (uint8_t)b[i]) * 1099511628211ull;
        memcpy(b + n - 8, &h, 8);
        char p2[600];
        snprintf(p2, sizeof p2, "%s.sealed", path);
        FILE *f = fopen(p2, "wb");
        int ok = f && fwrite(b, 1, n, f) == n;
        if (f) fclose(f);
        if (ok) {
            averis_status st2 = ckpt_state_read(p2, &lim, &s, mom, var);
            if (!st2 && (s.step < 0 || s.step > s.steps || s.data_pos > 4096 || s.adam_t + s.skipped != s.step))
                st2 = averis_fail(AVERIS_EINVAL, "%s: a resealed state passed with out-of-range fields\n(a bug)", p2);
            if (st2) st = st2;
            unlink(p2);
        }
    }
    free(b);
    return st;
}

static const char k_train_json[] =
    "{\n  \"recipe\": \"averis,seed=3,mean=fp4\",\n  \"step\": 6,\n  \"steps\": 10,\n  \"batch\": 2,\n  \"seq\": 16,\n"
    "  \"accum\": 2,\n  \"lr\": 0.003,\n  \"min_lr_frac\": 0.1,\n  \"warmup\": 1,\n  \"weight_decay\": 0.1,\n"
    "  \"clip\": 1,\n  \"seed\": 7,\n  \"bf16_last\": 0,\n  \"train_tokens\": 5000,\n  \"val_tokens\": 1000,\n"
    "  \"data_hash\": \"0123456789abcdef\"\n}\n";
static averis_status seed_train_json(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot write", path);
    fputs(k_train_json, f);
    return fclose(f) ? averis_fail(AVERIS_EIO, "%s: write failed", path) : AVERIS_OK;
}
/* a train.json that loads has its fields in range */
static averis_status load_train_json(const char *path) {
    ckpt_train_info t;
    averis_status st = ckpt_train_json_read(path, &t);
    if (st) return st;
    qlin_recipe r;
    if (t.step < 0 || t.step > t.steps || t.batch < 1 || t.seq < 2 || t.accum < 1 || t.bf16_last < 0 ||
        qlin_recipe_parse(t.recipe, &r))
        return averis_fail(AVERIS_EINVAL, "%s: loaded with out-of-range fields\n(a bug)", path);
    return AVERIS_OK;
}

typedef struct {
    const char *name;
    const char *file;                           /* the name the loader reads */
    int text;                                   /* text (or a text header): number edits apply */
    averis_status (*seed)(const char *path);    /* writes a valid file */
    averis_status (*load)(const char *path);    /* loads and frees: the verdict */
    const char *todo;                           /* not plugged in yet: what it needs */
} fuzz_loader;

static const fuzz_loader k_loaders[] = {
    {"npy", "x.npy", 1, seed_npy, load_npy, NULL},
    {"safetensors", "model.safetensors", 0, seed_safetensors, load_safetensors, NULL},
    {"config", "config.json", 1, seed_config, load_config, NULL},
    {"config (MoE)", "config.json", 1, seed_config_moe, load_config, NULL},
    {"tokenizer", "tokenizer.bpe", 1, seed_tokenizer, load_tokenizer, NULL},
    {"shard", "train_000000.bin", 0, seed_shard, load_shard, NULL},
    {"packed", "x.packed", 0, seed_packed, load_packed, NULL},
    {"state.bin", "state.bin", 0, seed_state, load_state, NULL},
    {"train.json", "train.json", 1, seed_train_json, load_train_json, NULL},
};

/* ------------------------------------------------------------ mutations */
static const int64_t k_edge[] = {0, 1, -1, 2, 15, 16, 17, 255, 256, 65535, 65536, 65537, 0x7fffffff,
                                 (int64_t)0x80000000ll, (int64_t)0xffffffffll, (int64_t)1 << 32, (int64_t)1 << 40,
                                 (int64_t)1 << 62, INT64_MAX, INT64_MIN};
static const char *const k_numbers[] = {"0", "-1", "-0", "1", "16", "17", "65537", "2147483647", "2147483648",
                                        "4294967297", "99999999999999999999", "1e308", "-1e308", "1e-400", "1.5",
                                        "3e9", "-2147483649", "NaN", "Infinity", "1e999"};
static const char *const k_tokens[] = {"{", "}", "[", "]", ",", ":", "\"", "\\", "null", "true", "[[[[[[[[", "\"\"",
                                       "\n", " ", "-", "e", "\"a\":", "\\u00", "\xff", "\"__metadata__\":{}"};

/* A stack of 1..3 mutations of buf[len] (room for cap bytes); returns the new length. */
static size_t mutate(trng *r, uint8_t *buf, size_t len, size_t cap, int text) {
    int nmut = 1 + (int)(trng_u64(r) % 3);
    for (int k = 0; k < nmut; k++) {
        size_t pos = len ? (size_t)(trng_u64(r) % len) : 0;
        switch (trng_u64(r) % 9) {
        case 0: /* bit flips */
            for (int f = 1 + (int)(trng_u64(r) % 4); f > 0 && len; f--) buf[trng_u64(r) % len] ^= (uint8_t)(1u << (trng_u64(r) % 8));
            break;
        case 1: { /* a header field set to a boundary value (little endian, 1/2/4/8 bytes, aligned) */
            size_t w = (size_t)1 << (trng_u64(r) % 4), hdr = len < 64 ? len : 64;
            size_t at = (trng_u64(r) % 2 ? pos : (hdr ? (size_t)(trng_u64(r) % hdr) : 0)) & ~(w - 1);
            int64_t v = trng_u64(r) % 4 == 0 ? (int64_t)len + (int64_t)(trng_u64(r) % 3) - 1
                                              : k_edge[trng_u64(r) % (sizeof k_edge / sizeof *k_edge)];
            for (size_t b = 0; b < w && at + b < len; b++) buf[at + b] = (uint8_t)((uint64_t)v >> (8 * b));
            break;
        }
        case 2: { /* NaN/Inf/huge payload words */
            static const uint32_t bits[] = {0x7fc00000u, 0xffc00000u, 0x7f800000u, 0xff800000u, 0x7f7fffffu, 0x00000001u};
            for (int n = 1 + (int)(trng_u64(r) % 8); n > 0 && len >= 4; n--) {
                size_t at = (len / 4 + (size_t)(trng_u64(r) % (len - len / 4))) & ~(size_t)3;
                uint32_t b = bits[trng_u64(r) % 6];
                if (at + 4 <= len) memcpy(buf + at, &b, 4);
            }
            break;
        }
        case 3: { /* text: a number replaced by a boundary or huge one */
            if (!text) { if (len) buf[pos] = (uint8_t)trng_u64(r); break; }
            size_t s = pos;
            while (s < len && !(buf[s] >= '0' && buf[s] <= '9')) s++;
            if (s == len) break;
            size_t e = s;
            while (e < len && ((buf[e] >= '0' && buf[e] <= '9') || buf[e] == '.' || buf[e] == 'e' || buf[e] == '-')) e++;
            const char *nw = k_numbers[trng_u64(r) % (sizeof k_numbers / sizeof *k_numbers)];
            size_t nl = strlen(nw);
            if (len - (e - s) + nl > cap) break;
            memmove(buf + s + nl, buf + e, len - e);
            memcpy(buf + s, nw, nl);
            len = len - (e - s) + nl;
            break;
        }
        case 4: { /* a token inserted (text) or a byte set to a boundary value */
            if (!text) { static const uint8_t b[] = {0, 0xff, 0x7f, 0x80, 1}; if (len) buf[pos] = b[trng_u64(r) % 5]; break; }
            const char *t = k_tokens[trng_u64(r) % (sizeof k_tokens / sizeof *k_tokens)];
            size_t tl = strlen(t);
            if (len + tl > cap) break;
            memmove(buf + pos + tl, buf + pos, len - pos);
            memcpy(buf + pos, t, tl);
            len += tl;
            break;
        }
        case 5: { /* a chunk deleted */
            size_t n = 1 + (size_t)(trng_u64(r) % 64);
            if (pos + n > len) n = len - pos;
            memmove(buf + pos, buf + pos + n, len - pos - n);
            len -= n;
            break;
        }
        case 6: { /* a chunk duplicated */
            size_t n = 1 + (size_t)(trng_u64(r) % 64);
            if (pos + n > len) n = len - pos;
            if (len + n > cap) break;
            memmove(buf + pos + n, buf + pos, len - pos);
            len += n;
            break;
        }
        case 7: /* truncated at a random length */
            len = pos;
            break;
        default: /* random bytes */
            for (int n = 1 + (int)(trng_u64(r) % 8); n > 0 && len; n--) buf[trng_u64(r) % len] = (uint8_t)trng_u64(r);
        }
    }
    return len;
}

/* ------------------------------------------------------------ the harness */
static volatile sig_atomic_t g_case_no;
static const char *volatile g_case_loader;
static void on_alarm(int sig) {
    (void)sig;
    char msg[160];
    int n = snprintf(msg, sizeof msg, "  FAIL fuzz %s: case %d hung (over 10 s); the input is in %s\n",
                     g_case_loader ? g_case_loader : "?", (int)g_case_no, g_dir);
    if (write(2, msg, (size_t)n) < 0) _exit(3);
    _exit(3);
}

static int write_bytes(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(b, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

typedef struct { long cases, loaded, refused, bad; } fuzz_count;

/* One case: the bytes at the loader's path, loaded; a failure must say why in one line. */
static void run_case(const fuzz_loader *L, const char *path, const uint8_t *b, size_t n, const char *what, long no,
                     fuzz_count *cnt) {
    if (!write_bytes(path, b, n)) { CHECK(0, "fuzz %s: cannot write %s", L->name, path); return; }
    g_case_no = (sig_atomic_t)no;
    averis_fail(AVERIS_OK, "%s", "");
    alarm(10);
    averis_status st = L->load(path);
    alarm(0);
    cnt->cases++;
    if (!st) { cnt->loaded++; return; }
    cnt->refused++;
    const char *e = averis_last_error();
    if (!e[0] || strchr(e, '\n')) {
        cnt->bad++;
        char keep[512];
        snprintf(keep, sizeof keep, "%s/fail_%s_%ld", g_dir, L->name, no);
        write_bytes(keep, b, n);
        CHECK(0, "fuzz %s %s %ld: status %d with message '%s' (input kept: %s)", L->name, what, no, (int)st, e, keep);
    }
}

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

void test_fuzz_loaders(void) {
    struct stat sb; /* tmpfs when there is one: thousands of small files, no disk */
    snprintf(g_dir, sizeof g_dir, "%s/averis_fuzz_XXXXXX", !stat("/dev/shm", &sb) && S_ISDIR(sb.st_mode) ? "/dev/shm" : "/tmp");
    if (!mkdtemp(g_dir)) { CHECK(0, "mkdtemp"); return; }
    signal(SIGALRM, on_alarm);
    long ncases = env_long("AVERIS_FUZZ_CASES", 3000);
    uint64_t seed = (uint64_t)env_long("AVERIS_FUZZ_SEED", 1);
    const char *only = getenv("AVERIS_FUZZ_ONLY");
    CHECK(!model_create(&g_model, &k_fuzz_cfg), "%s", averis_last_error());
#ifdef _OPENMP
    int threads = omp_get_max_threads();
    omp_set_num_threads(1); /* tiny inputs: a thread team costs more than it gives */
#endif
    int kept = 0;
    for (size_t li = 0; li < sizeof k_loaders / sizeof *k_loaders; li++) {
        const fuzz_loader *L = &k_loaders[li];
        if (only && strcmp(only, L->name)) continue;
        if (L->todo) { printf("      fuzz %-12s TODO: needs %s\n", L->name, L->todo); continue; }
        g_case_loader = L->name;
        char path[512], *seedbuf = NULL;
        size_t slen = 0;
        path_in(path, sizeof path, L->file);
        averis_status st = L->seed(path);
        if (!st) st = averis_read_file(path, &seedbuf, &slen);
        CHECK(!st, "fuzz %s: seed: %s", L->name, averis_last_error());
        if (st) continue;
        CHECK(!L->load(path), "fuzz %s: the seed does not load: %s", L->name, averis_last_error());
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        fuzz_count cnt = {0};
        size_t cap = 2 * slen + 256;
        uint8_t *buf = malloc(cap);
        if (!buf) { free(seedbuf); CHECK(0, "out of memory"); continue; }
        /* truncation at every boundary: every length in the first 2 KiB (the headers), then 256 more */
        size_t step = slen > 2048 ? (slen - 2048) / 256 + 1 : 1;
        for (size_t n = 0; n < slen; n += n < 2048 ? 1 : step) run_case(L, path, (const uint8_t *)seedbuf, n, "truncated", (long)n, &cnt);
        /* seeded mutation stacks */
        trng r = {0x9E3779B97F4A7C15ull ^ (seed * 0x100000001B3ull) ^ (uint64_t)li};
        for (long c = 0; c < ncases; c++) {
            memcpy(buf, seedbuf, slen);
            size_t n = mutate(&r, buf, slen, cap, L->text);
            run_case(L, path, buf, n, "mutation", c, &cnt);
        }
        /* the regressions: cases found earlier */
        char rdir[512];
        snprintf(rdir, sizeof rdir, "tests/fixtures/fuzz/%s", L->name);
        DIR *d = opendir(rdir);
        long nreg = 0;
        for (struct dirent *e; d && (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            char rp[1024], *rb;
            size_t rn;
            snprintf(rp, sizeof rp, "%s/%s", rdir, e->d_name);
            if (averis_read_file(rp, &rb, &rn)) continue;
            run_case(L, path, (const uint8_t *)rb, rn, e->d_name, nreg++, &cnt);
            free(rb);
        }
        if (d) closedir(d);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("      fuzz %-12s %6ld cases (%ld regressions): %ld loaded, %ld refused with one line, %ld bad; %.1f s\n",
               L->name, cnt.cases, nreg, cnt.loaded, cnt.refused, cnt.bad,
               (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        kept += cnt.bad > 0;
        free(buf);
        free(seedbuf);
    }
    fflush(stdout);
    model_free(&g_model);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    if (!kept) { /* the failing inputs stay for a look; otherwise clean up */
        DIR *d = opendir(g_dir);
        for (struct dirent *e; d && (e = readdir(d));) {
            char p[600];
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
            unlink(p);
        }
        if (d) closedir(d);
        rmdir(g_dir);
    }
}
