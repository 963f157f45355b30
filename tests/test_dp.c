/* test_dp.c — data parallel without GPUs: the shard / row-slice / SR-key
 * bookkeeping, the CPU communicator's collectives and failure handling, and
 * the trainer on N ranks (threads over the CPU group):
 *   - N = 1 through the data-parallel path = the plain trainer, bit for bit;
 *   - N ranks × batch b = one process × batch N·b (fp32 recipe) within a
 *     stated tolerance, and an N-rank quantized run replays bit for bit;
 *   - each rank holds only its ZeRO-1 window of the moments (its shard and
 *     the tail), as many bytes as it reports;
 *   - the gradient all-reduce in buckets (the backward's segments joined,
 *     dp_bucket_plan) gives the bits of one all-reduce;
 *   - rank 0's checkpoint holds the moments gathered from the windows: a
 *     2-rank (and a 3-rank) run stopped and resumed on as many ranks equals
 *     the straight run bit for bit, the 2-rank checkpoint resumes on 1 rank
 *     and on 3, and one process and 1 rank resume each other bit for bit;
 *   - a rank that fails makes the others fail, not hang. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "averis/half.h"
#include "averis/train.h"
#include "check.h"
#include "test_util.h"

/* The trainers' all-reduce buckets: 16 KiB gives the tiny model's 80 KiB of
 * gradients 3 buckets (test_dp_bucket_plan); test_dp_buckets compares with
 * one all-reduce. */
#define BUCKETS ((size_t)16 << 10)

/* ---------------------------------------------------------- bookkeeping */
void test_dp_bookkeeping(void) {
    static const size_t ns[] = {0, 1, 5, 7, 16, 1000003};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
        for (int w = 1; w <= 8; w++) {
            size_t n = ns[k], next = 0;
            for (int r = 0; r < w; r++) { /* the shards tile [0, w·S), in rank order, all of size S */
                dp_range s = dp_shard(n, w, r);
                CHECK(s.lo == next && s.hi - s.lo == n / (size_t)w, "n %zu world %d rank %d: shard [%zu, %zu), want from %zu size %zu",
                      n, w, r, s.lo, s.hi, next, n / (size_t)w);
                next = s.hi;
            }
            dp_range t = dp_tail(n, w);
            CHECK(t.lo == next && t.hi == n && t.hi - t.lo < (size_t)w, "n %zu world %d: tail [%zu, %zu)", n, w, t.lo, t.hi);
        }
    int row0 = -1, rows = -1;
    CHECK(!dp_rows(12, 3, 2, &row0, &rows) && row0 == 8 && rows == 4, "rows of rank 2 of 3 in 12: %d + %d", row0, rows);
    CHECK(!dp_rows(5, 1, 0, &row0, &rows) && row0 == 0 && rows == 5, "one rank: %d + %d", row0, rows);
    CHECK(dp_rows(10, 4, 0, &row0, &rows) && strstr(averis_last_error(), "10 rows") && strstr(averis_last_error(), "4 ranks"),
          "uneven batch: %s", averis_last_error());
    CHECK(dp_rows(8, 2, 2, &row0, &rows) != AVERIS_OK, "rank 2 of 2 accepted");
    /* SR keys: world 1 is the plain stream; distinct over (stream, rank) for a given world */
    for (uint64_t s = 0; s < 100; s++) CHECK(dp_sr_stream(s, 1, 0) == s, "world 1 changed stream %llu", (unsigned long long)s);
    for (int w = 2; w <= 8; w++) {
        unsigned char seen[64 * 8] = {0};
        for (uint64_t s = 0; s < 64; s++)
            for (int r = 0; r < w; r++) {
                uint64_t k = dp_sr_stream(s, w, r);
                CHECK(k < sizeof seen && !seen[k], "world %d: stream %llu rank %d collides (key %llu)", w,
                      (unsigned long long)s, r, (unsigned long long)k);
                if (k < sizeof seen) seen[k] = 1;
            }
    }
}

/* The backward's segments (model_grad_segment) tile the flat vector from
 * its end: the head, the layers L−1 … 0 (each starting at its
 * input_layernorm), the embedding; the bucket plan joins whole segments
 * from the end until a bucket holds bucket_bytes, the rest last. Tied and
 * untied heads, a MoE config. */
void test_dp_bucket_plan(void) {
    static const char *const untied = "{\"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 64, "
                                      "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                                      "\"head_dim\": 8, \"max_position_embeddings\": 64, \"tie_word_embeddings\": false}";
    const char *jsons[3] = {TEST_TINY_MODEL_JSON, untied, NULL};
    for (int c = 0; c < 3; c++) {
        model_config cfg;
        model m;
        CHECK(c < 2 ? !model_config_from_json(jsons[c], strlen(jsons[c]), "t.json", &cfg) : !model_config_load("moe-tiny", &cfg),
              "config %d: %s", c, averis_last_error());
        if (model_create(&m, &cfg)) { CHECK(0, "config %d: %s", c, averis_last_error()); continue; }
        int L = cfg.num_hidden_layers;
        size_t n = m.nparams, lo, hi, next = n;
        for (int k = 0; k < L + 2; k++) { /* segment k ends where k − 1 begins */
            CHECK(model_grad_segment(&m, k, &lo, &hi) && hi == next && lo < hi, "config %d segment %d: [%zu, %zu), want to %zu",
                  c, k, lo, hi, next);
            char want[96];
            snprintf(want, sizeof want, "model.layers.%d.input_layernorm.weight", L - k);
            const model_tensor *t = k >= 1 && k <= L ? model_find_tensor(&m, want) : NULL;
            CHECK(!(k >= 1 && k <= L) || (t && t->offset == lo), "config %d segment %d starts at %zu, not at %s", c, k, lo, want);
            next = lo;
        }
        CHECK(next == 0 && !model_grad_segment(&m, L + 2, &lo, &hi) && !model_grad_segment(&m, -1, &lo, &hi),
              "config %d: the segments end at %zu", c, next);
        CHECK(model_grad_segment(&m, 0, &lo, &hi) && hi - lo == (size_t)cfg.hidden_size * (cfg.tie_word_embeddings ? 1 : 1 + cfg.vocab_size),
              "config %d: head segment of %zu", c, hi - lo);
        static const size_t bytes[] = {0, 1, 16 << 10, 100 << 10, (size_t)1 << 40};
        for (size_t b = 0; b < sizeof bytes / sizeof *bytes; b++) {
            dp_range plan[64];
            int nb = dp_bucket_plan(&m, bytes[b], plan, 64);
            size_t top = n;
            for (int i = 0; i < nb; i++) { /* from the end, adjacent, whole segments, full but the last */
                int whole = plan[i].lo == 0;
                for (int k = 0; k < L + 2 && !whole; k++) whole = model_grad_segment(&m, k, &lo, &hi) && lo == plan[i].lo;
                CHECK(plan[i].hi == top && plan[i].lo < top && whole, "config %d, %zu bytes, bucket %d: [%zu, %zu)", c, bytes[b],
                      i, plan[i].lo, plan[i].hi);
                CHECK(i == nb - 1 || (plan[i].hi - plan[i].lo) * 4 >= bytes[b], "config %d, %zu bytes: bucket %d of %zu bytes",
                      c, bytes[b], i, (plan[i].hi - plan[i].lo) * 4);
                top = plan[i].lo;
            }
            CHECK(top == 0, "config %d, %zu bytes: the buckets stop at %zu", c, bytes[b], top);
            int want = bytes[b] == 0 || bytes[b] > 4 * n ? 1 : bytes[b] == 1 ? L + 2 : -1;
            CHECK(want < 0 || nb == want, "config %d, %zu bytes: %d buckets, want %d", c, bytes[b], nb, want);
        }
        if (c == 0) { /* the trainers' BUCKETS on the tiny model: head + layer 1 | layer 0 | embedding */
            dp_range plan[8];
            CHECK(dp_bucket_plan(&m, BUCKETS, plan, 8) == 3, "tiny: %d buckets of %zu bytes, want 3",
                  dp_bucket_plan(&m, BUCKETS, plan, 8), BUCKETS);
        }
        model_free(&m);
    }
}

/* --------------------------------------------------- CPU communicator */
typedef struct {
    comm *c;
    int fail; /* failures seen by this rank */
    averis_status st_last;
    double waited_s;
    int mode; /* 0: collectives; 1: abort at once; 2: wait on a peer that aborted or never comes */
} comm_job;

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define NEL 1001
static void *comm_rank(void *arg) {
    comm_job *j = arg;
    comm *c = j->c;
    int r = c->rank, w = c->world;
    if (j->mode == 1) { c->abort(c); return NULL; }
    if (j->mode == 2) {
        double t0 = mono_s(), v = 1;
        j->st_last = c->allreduce_host(c, &v, 1);
        j->waited_s = mono_s() - t0;
        return NULL;
    }
    float x[NEL], y[NEL], want;
    for (int i = 0; i < NEL; i++) x[i] = y[i] = 0.1f * (float)(i + 1) + 1.7f * (float)r + 1e-3f * (float)(i % 7);
    if (c->allreduce(c, x, NEL, COMM_F32)) { j->fail++; return NULL; }
    for (int i = 0; i < NEL; i++) { /* the rank-order sum, in fp32 */
        want = 0.1f * (float)(i + 1) + 1e-3f * (float)(i % 7);
        for (int q = 1; q < w; q++) want += 0.1f * (float)(i + 1) + 1.7f * (float)q + 1e-3f * (float)(i % 7);
        if (memcmp(&x[i], &want, 4)) { if (j->fail++ < 3) fprintf(stderr, "  rank %d: sum[%d] = %.9g, want %.9g\n", r, i, x[i], want); }
    }
    if (c->allreduce(c, y, NEL, COMM_BF16)) { j->fail++; return NULL; }
    for (int i = 0; i < NEL; i++) {
        float s = 0;
        for (int q = 0; q < w; q++) {
            float v = 0.1f * (float)(i + 1) + 1.7f * (float)q + 1e-3f * (float)(i % 7);
            s = bf16_to_f32(bf16_from_f32(s + bf16_to_f32(bf16_from_f32(v))));
        }
        if (memcmp(&y[i], &s, 4)) { if (j->fail++ < 3) fprintf(stderr, "  rank %d: bf16 sum[%d] = %.9g, want %.9g\n", r, i, y[i], s); }
    }
    /* all-gather: rank q's part is q + index */
    size_t per = 37;
    float *g = calloc(per * (size_t)w, sizeof *g);
    for (size_t i = 0; i < per; i++) g[(size_t)r * per + i] = (float)(1000 * r) + (float)i;
    if (c->allgather(c, g, per)) j->fail++;
    for (int q = 0; q < w; q++)
        for (size_t i = 0; i < per; i++)
            if (g[(size_t)q * per + i] != (float)(1000 * q) + (float)i) j->fail++;
    free(g);
    double hv[3] = {r, 1.0, 0.5 * r};
    if (c->allreduce_host(c, hv, 3)) j->fail++;
    if (hv[0] != w * (w - 1) / 2.0 || hv[1] != w || hv[2] != w * (w - 1) / 4.0) j->fail++;
    /* mismatched lengths are an error on every rank, not a wild read */
    float z[4] = {0};
    j->st_last = c->allreduce(c, z, r == 0 ? 3 : 4, COMM_F32);
    return NULL;
}

static void run_group(int w, const int *modes, comm_job *jobs) {
    comm *ranks[8];
    pthread_t th[8];
    CHECK(!comm_cpu_group(w, ranks), "%s", averis_last_error());
    for (int r = 0; r < w; r++) {
        jobs[r] = (comm_job){.c = ranks[r], .mode = modes ? modes[r] : 0};
        pthread_create(&th[r], NULL, comm_rank, &jobs[r]);
    }
    for (int r = 0; r < w; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < w; r++) ranks[r]->destroy(ranks[r]);
}

void test_comm_cpu_collectives(void) {
    comm_job jobs[8];
    for (int w = 1; w <= 4; w++) {
        run_group(w, NULL, jobs);
        for (int r = 0; r < w; r++) {
            CHECK(jobs[r].fail == 0, "world %d rank %d: %d collective results differ", w, r, jobs[r].fail);
            if (w > 1)
                CHECK(jobs[r].st_last != AVERIS_OK, "world %d rank %d: allreduce of 3 vs 4 elements accepted", w, r);
        }
    }
    /* a rank that aborts: the peer's collective fails at once, naming it */
    int modes_abort[2] = {2, 1};
    run_group(2, modes_abort, jobs);
    CHECK(jobs[0].st_last != AVERIS_OK && jobs[0].waited_s < 5.0, "peer abort: status %d after %.1f s", jobs[0].st_last,
          jobs[0].waited_s);
    /* a rank that never comes: the timeout ends the wait with a message */
    setenv("AVERIS_COMM_TIMEOUT", "0.3", 1);
    comm *ranks[2];
    CHECK(!comm_cpu_group(2, ranks), "%s", averis_last_error());
    unsetenv("AVERIS_COMM_TIMEOUT");
    comm_job lone = {.c = ranks[0], .mode = 2};
    comm_rank(&lone);
    CHECK(lone.st_last != AVERIS_OK && strstr(averis_last_error(), "timeout") && lone.waited_s < 3.0,
          "lonely rank: status %d after %.2f s: %s", lone.st_last, lone.waited_s, averis_last_error());
    ranks[0]->destroy(ranks[0]);
    ranks[1]->destroy(ranks[1]);
    /* the environment of launchers */
    int rank, world, local, found;
    unsetenv("RANK"); unsetenv("WORLD_SIZE"); unsetenv("LOCAL_RANK");
    unsetenv("OMPI_COMM_WORLD_RANK"); unsetenv("OMPI_COMM_WORLD_SIZE"); unsetenv("PMI_RANK"); unsetenv("PMI_SIZE");
    CHECK(!comm_env_ranks(&rank, &world, &local, &found) && !found && world == 1, "no launcher: found %d", found);
    setenv("OMPI_COMM_WORLD_RANK", "3", 1); setenv("OMPI_COMM_WORLD_SIZE", "8", 1); setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    CHECK(!comm_env_ranks(&rank, &world, &local, &found) && found && rank == 3 && world == 8 && local == 1,
          "mpirun: %d %d %d %d", found, rank, world, local);
    setenv("RANK", "9", 1); setenv("WORLD_SIZE", "8", 1); /* torchrun's names come first */
    CHECK(comm_env_ranks(&rank, &world, &local, &found) && strstr(averis_last_error(), "RANK=9"), "rank ≥ world: %s",
          averis_last_error());
    setenv("RANK", "x", 1);
    CHECK(comm_env_ranks(&rank, &world, &local, &found) && strstr(averis_last_error(), "RANK='x'"), "bad RANK: %s",
          averis_last_error());
    unsetenv("WORLD_SIZE");
    setenv("RANK", "1", 1);
    CHECK(comm_env_ranks(&rank, &world, &local, &found) && strstr(averis_last_error(), "WORLD_SIZE"), "RANK alone: %s",
          averis_last_error());
    unsetenv("RANK");
    unsetenv("OMPI_COMM_WORLD_RANK"); unsetenv("OMPI_COMM_WORLD_SIZE"); unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
}

/* ------------------------------------------------------------- training */
/* test_train.c's fixture: a tiny model, a Markov-chain corpus over 64 tokens */
static void make_fixture(char *dir) {
    if (test_mkdtemp(dir, 64, "dp", 0)) return;
    test_write_text(dir, "model.json", TEST_TINY_MODEL_JSON);
    uint16_t tok[8000];
    test_markov_tokens(tok, 8000, 11);
    test_write_split(dir, "data", tok, 7000, 1000);
}

static char g_cfg[128], g_data[128], g_out[8][128];

static void opts_for(train_opts *o, const char *dir, int slot, const char *sub, const char *recipe) {
    train_opts_default(o);
    sprintf(g_cfg, "%s/model.json", dir);
    sprintf(g_data, "%s/data", dir);
    sprintf(g_out[slot], "%s/%s", dir, sub);
    o->config = g_cfg;
    o->data_dir = g_data;
    o->out_dir = g_out[slot];
    o->recipe = recipe;
    o->steps = 8;
    o->batch = 4; /* the global batch */
    o->seq = 32;
    o->accum = 2;
    o->warmup = 2;
    o->val_every = 4;
    o->val_batches = 2;
    o->lr = 1e-2;
    o->clip = 0.5; /* clips in the first steps: the global norm matters */
    o->quiet = 1;
}

static int same_ckpt(const char *outa, const char *outb, int step) {
    char pa[300], pb[300];
    snprintf(pa, sizeof pa, "%s/ckpt_%08d/model.safetensors", outa, step);
    snprintf(pb, sizeof pb, "%s/ckpt_%08d/model.safetensors", outb, step);
    int same = test_same_file(pa, pb);
    snprintf(pa, sizeof pa, "%s/ckpt_%08d/state.bin", outa, step);
    snprintf(pb, sizeof pb, "%s/ckpt_%08d/state.bin", outb, step);
    return same && test_same_file(pa, pb);
}

/* the grad_norm column of OUT/log.csv, steps 1..n */
static int read_norms(const char *out, double *norm, int n) {
    char p[300], line[512];
    snprintf(p, sizeof p, "%s/log.csv", out);
    FILE *f = fopen(p, "r");
    int got = 0;
    while (f && fgets(line, sizeof line, f)) {
        int step;
        double tokens, lr, loss, g;
        if (sscanf(line, "%d,%lf,%lf,%lf,%lf", &step, &tokens, &lr, &loss, &g) == 5 && step >= 1 && step <= n) {
            norm[step - 1] = g;
            got++;
        }
    }
    if (f) fclose(f);
    return got;
}

static int bits_equal(const float *a, const float *b, int n, int *first) {
    for (int i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a)) { *first = i; return 0; }
    return 1;
}

/* N = 1 through the data-parallel path is the plain trainer, bit for bit
 * (losses, weights, moments), under a recipe with SR and RHT. */
void test_dp_one_rank_bit_exact(void) {
    char dir[64];
    make_fixture(dir);
    train_opts o;
    train_result ra, rb;
    int at = -1;
    opts_for(&o, dir, 0, "plain", "averis-rht");
    CHECK(!train_run(&o, &ra), "plain: %s", averis_last_error());
    opts_for(&o, dir, 1, "dp1", "averis-rht");
    CHECK(!train_run_threads(&o, 1, COMM_F32, BUCKETS, &rb), "dp 1: %s", averis_last_error());
    CHECK(bits_equal(ra.losses, rb.losses, 8, &at), "step %d: loss %.9g plain vs %.9g dp", at + 1, ra.losses[at], rb.losses[at]);
    CHECK(ra.final_val_loss == rb.final_val_loss, "val loss %.9g vs %.9g", ra.final_val_loss, rb.final_val_loss);
    CHECK(same_ckpt(g_out[0], g_out[1], 8), "the final checkpoints differ");
    train_result_free(&ra);
    train_result_free(&rb);
    test_rm_tree(dir);
}

/* 2 and 4 ranks × batch b vs 1 × batch N·b under fp32: the same data,
 * the same math, only the order of the gradient sums differs. Measured on
 * this fixture: max relative loss difference ~1e-6 over 8 steps; the bound
 * is 1e-4. A quantized recipe (averis-rht) on 2 ranks replays bit for bit. */
void test_dp_ranks_match_one_process(void) {
    char dir[64];
    make_fixture(dir);
    train_opts o;
    train_result r1, rn;
    opts_for(&o, dir, 0, "one", "fp32");
    CHECK(!train_run(&o, &r1), "one process: %s", averis_last_error());
    for (int w = 2; w <= 4; w += 2) {
        char sub[16];
        snprintf(sub, sizeof sub, "n%d", w);
        opts_for(&o, dir, 1, sub, "fp32");
        CHECK(!train_run_threads(&o, w, COMM_F32, BUCKETS, &rn), "%d ranks: %s", w, averis_last_error());
        double worst = 0;
        for (int i = 0; i < 8; i++) {
            double d = fabs((double)rn.losses[i] - r1.losses[i]) / fabs((double)r1.losses[i]);
            if (!(d <= worst)) worst = d;
        }
        CHECK(worst < 1e-4, "%d ranks vs one process: max relative loss difference %.3g (bound 1e-4)", w, worst);
        /* the clip sees the global gradient norm (the Adam update hardly shows its scale) */
        double n1[8], nn[8];
        CHECK(read_norms(g_out[0], n1, 8) == 8 && read_norms(g_out[1], nn, 8) == 8, "log.csv of %s or %s", g_out[0], g_out[1]);
        for (int i = 0; i < 8; i++)
            CHECK(fabs(nn[i] - n1[i]) < 1e-4 * n1[i], "%d ranks, step %d: grad norm %.7g vs %.7g in one process", w, i + 1,
                  nn[i], n1[i]);
        CHECK(fabs(rn.final_val_loss - r1.final_val_loss) < 1e-4 * r1.final_val_loss, "val loss %.7g vs %.7g",
              rn.final_val_loss, r1.final_val_loss);
        if (getenv("AVERIS_TEST_VERBOSE"))
            fprintf(stderr, "  fp32, %d ranks vs 1: max rel loss diff %.3g, val %.9g vs %.9g\n", w, worst,
                    rn.final_val_loss, r1.final_val_loss);
        train_result_free(&rn);
    }
    /* bf16 on the wire: close, not equal */
    opts_for(&o, dir, 2, "n2bf16", "fp32");
    CHECK(!train_run_threads(&o, 2, COMM_BF16, BUCKETS, &rn), "bf16 wire: %s", averis_last_error());
    CHECK(fabs(rn.losses[7] - r1.losses[7]) < 2e-2 * r1.losses[7], "bf16 wire: final loss %.6g vs %.6g", rn.losses[7],
          r1.losses[7]);
    train_result_free(&rn);
    train_result_free(&r1);
    /* replay: a 2-rank quantized run twice */
    train_result ra, rb;
    int at = -1;
    opts_for(&o, dir, 3, "qa", "averis-rht");
    CHECK(!train_run_threads(&o, 2, COMM_F32, BUCKETS, &ra), "%s", averis_last_error());
    opts_for(&o, dir, 4, "qb", "averis-rht");
    CHECK(!train_run_threads(&o, 2, COMM_F32, BUCKETS, &rb), "%s", averis_last_error());
    CHECK(bits_equal(ra.losses, rb.losses, 8, &at), "replay, step %d: %.9g vs %.9g", at + 1, ra.losses[at], rb.losses[at]);
    CHECK(same_ckpt(g_out[3], g_out[4], 8), "replayed 2-rank checkpoints differ");
    CHECK(ra.losses[7] < ra.losses[0], "the loss falls (%.4f → %.4f)", ra.losses[0], ra.losses[7]);
    train_result_free(&ra);
    train_result_free(&rb);
    test_rm_tree(dir);
}

/* ZeRO-1's memory: each of N ranks (threads, each its own train_run) holds
 * the moments of its shard and the tail only, 2·4·(⌊n/N⌋ + n mod N) bytes
 * as its train_result reports them (the size the trainer allocates and
 * binds), against 2·4·n for one process; N = 3 has a tail. */
/* one rank of a CPU group in a thread: its train_run's status, result (the
 * caller frees it) and wall time; a failing rank aborts the group */
typedef struct {
    train_opts o;
    dp_opts dp;
    train_result res;
    averis_status st;
    double took_s;
} rank_job;

static void *run_rank(void *arg) {
    rank_job *j = arg;
    double t0 = mono_s();
    j->st = train_run(&j->o, &j->res);
    if (j->st) j->dp.comm->abort(j->dp.comm);
    j->took_s = mono_s() - t0;
    return NULL;
}

void test_dp_moments_are_the_shard(void) {
    char dir[64];
    make_fixture(dir);
    model_config cfg;
    char cpath[128];
    snprintf(cpath, sizeof cpath, "%s/model.json", dir);
    CHECK(!model_config_load(cpath, &cfg), "%s", averis_last_error());
    size_t n = (size_t)model_config_nparams(&cfg);
    train_opts o;
    train_result r1;
    opts_for(&o, dir, 0, "one", "fp32");
    o.steps = 2, o.batch = 6, o.accum = 1;
    CHECK(!train_run(&o, &r1) && r1.moment_bytes == 8 * n, "one process: %zu bytes of moments, want 8·%zu: %s",
          r1.moment_bytes, n, averis_last_error());
    train_result_free(&r1);
    for (int w = 2; w <= 3; w++) {
        comm *ranks[3];
        rank_job jobs[3];
        pthread_t th[3];
        CHECK(!comm_cpu_group(w, ranks), "%s", averis_last_error());
        for (int r = 0; r < w; r++) {
            char sub[16];
            snprintf(sub, sizeof sub, "w%d", w);
            opts_for(&jobs[r].o, dir, 1, sub, "fp32");
            jobs[r].o.steps = 2, jobs[r].o.batch = 6, jobs[r].o.accum = 1, jobs[r].o.quiet = 1;
            jobs[r].dp = (dp_opts){.comm = ranks[r], .wire = COMM_F32, .bucket_bytes = BUCKETS};
            jobs[r].o.dp = &jobs[r].dp;
            pthread_create(&th[r], NULL, run_rank, &jobs[r]);
        }
        for (int r = 0; r < w; r++) pthread_join(th[r], NULL);
        size_t S = n / (size_t)w, tail = n - S * (size_t)w;
        for (int r = 0; r < w; r++) {
            CHECK(jobs[r].st == AVERIS_OK, "%d ranks, rank %d: %s", w, r, averis_last_error());
            CHECK(jobs[r].res.moment_bytes == 8 * (S + tail) && jobs[r].res.moment_bytes < 8 * n,
                  "%d ranks, rank %d: %zu bytes of moments, want 8·(%zu + %zu) = %zu (all: %zu)", w, r,
                  jobs[r].res.moment_bytes, S, tail, 8 * (S + tail), 8 * n);
            train_result_free(&jobs[r].res);
            ranks[r]->destroy(ranks[r]);
        }
        if (getenv("AVERIS_TEST_VERBOSE"))
            fprintf(stderr, "  %d ranks: moments of %zu + %zu of %zu parameters a rank\n", w, S, tail, n);
    }
    test_rm_tree(dir);
}

/* Buckets: the gradients all-reduced in the plan's 3 buckets of the tiny
 * model as the backward reports its segments (the CPU: a sequence of
 * all-reduces after it) give the same bits as one all-reduce, for fp32
 * and BF16 on the wire, 2 ranks, 2 micro-batches a step (so a bucket sent
 * on the first micro-batch, a sum counted twice, would show). */
void test_dp_buckets_match_one_allreduce(void) {
    char dir[64];
    make_fixture(dir);
    train_opts o;
    train_result ra, rb;
    int at = -1;
    for (int wire = 0; wire < 2; wire++) {
        comm_wire cw = wire ? COMM_BF16 : COMM_F32;
        opts_for(&o, dir, 0, wire ? "one_bf16" : "one", "fp32");
        CHECK(o.accum == 2, "accum %d", o.accum);
        CHECK(!train_run_threads(&o, 2, cw, 0, &ra), "one all-reduce: %s", averis_last_error());
        opts_for(&o, dir, 1, wire ? "buckets_bf16" : "buckets", "fp32");
        CHECK(!train_run_threads(&o, 2, cw, BUCKETS, &rb), "buckets: %s", averis_last_error());
        CHECK(bits_equal(ra.losses, rb.losses, 8, &at), "%s, step %d: loss %.9g in one all-reduce, %.9g in buckets",
              wire ? "bf16" : "fp32", at + 1, ra.losses[at], rb.losses[at]);
        CHECK(ra.final_val_loss == rb.final_val_loss, "%s: val loss %.9g vs %.9g", wire ? "bf16" : "fp32",
              ra.final_val_loss, rb.final_val_loss);
        CHECK(same_ckpt(g_out[0], g_out[1], 8), "%s: the checkpoints of one all-reduce and of buckets differ",
              wire ? "bf16" : "fp32");
        double na[8], nb[8];
        CHECK(read_norms(g_out[0], na, 8) == 8 && read_norms(g_out[1], nb, 8) == 8 && !memcmp(na, nb, sizeof na),
              "%s: the gradient norms differ", wire ? "bf16" : "fp32");
        train_result_free(&ra);
        train_result_free(&rb);
    }
    test_rm_tree(dir);
}

/* N ranks: a straight 8-step run (slot 0) and one stopped after 4 steps and
 * resumed (slot 1) give the same losses bit for bit and the same final
 * checkpoint; the straight run's and the stopped run's results stay in ra, rb1 */
static void stop_resume_matches(const char *dir, int world, const char *tag, train_result *ra, train_result *rb1) {
    train_opts o;
    train_result rb2;
    char sub[64];
    int at = -1;
    snprintf(sub, sizeof sub, "straight%s", tag);
    opts_for(&o, dir, 0, sub, "fp32");
    o.batch = 6;
    CHECK(!train_run_threads(&o, world, COMM_F32, BUCKETS, ra), "straight on %d: %s", world, averis_last_error());
    snprintf(sub, sizeof sub, "stopped%s", tag);
    opts_for(&o, dir, 1, sub, "fp32");
    o.batch = 6;
    o.stop_after = 4;
    CHECK(!train_run_threads(&o, world, COMM_F32, BUCKETS, rb1) && rb1->steps_done == 4, "stop on %d: %s", world,
          averis_last_error());
    o.stop_after = 0;
    o.resume = 1;
    CHECK(!train_run_threads(&o, world, COMM_F32, BUCKETS, &rb2) && rb2.steps_done == 8, "resume on %d: %s", world,
          averis_last_error());
    float lb[8];
    for (int i = 0; i < 8; i++) lb[i] = i < 4 ? rb1->losses[i] : rb2.losses[i];
    CHECK(bits_equal(ra->losses, lb, 8, &at), "%d ranks, step %d: %.9g straight vs %.9g resumed", world, at + 1,
          ra->losses[at], lb[at]);
    CHECK(same_ckpt(g_out[0], g_out[1], 8), "resumed %d-rank run ends elsewhere than the straight one", world);
    train_result_free(&rb2);
}

/* Rank 0's checkpoint carries the moments gathered from the ranks' windows,
 * and a resume reads each rank's window of it: 2 ranks, and 3 (with a
 * tail), stopped at 4 and resumed on as many = straight, bit for bit (a
 * shard's moments lost or misplaced would show); the 2-rank checkpoint
 * resumes on 1 rank (the plain trainer) and on 3, within the fp32
 * tolerance of the test above; a 1-rank checkpoint resumes in the plain
 * trainer and a plain one on 1 rank, bit for bit. */
void test_dp_checkpoint_resume_any_world(void) {
    char dir[64];
    make_fixture(dir);
    train_opts o;
    train_result ra, rb1, rb2, rc;
    int at = -1;
    stop_resume_matches(dir, 2, "", &ra, &rb1);
    /* the step-4 checkpoint of 2 ranks, on 1 rank (plain trainer) and on 3 */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s/one' && cp -r '%s' '%s/three'", g_out[1], dir, g_out[1], dir);
    CHECK(system(cmd) == 0, "cp");
    /* remove the step-8 checkpoint from the copies: latest → step 4 */
    snprintf(cmd, sizeof cmd, "cd '%s' && for d in one three; do rm -rf $d/ckpt_00000008 && printf ckpt_00000004 > $d/latest; done", dir);
    CHECK(system(cmd) == 0, "rewind");
    opts_for(&o, dir, 2, "one", "fp32");
    o.batch = 6;
    o.resume = 1;
    CHECK(!train_run(&o, &rc) && rc.steps_done == 8, "2-rank checkpoint on 1: %s", averis_last_error());
    for (int i = 4; i < 8; i++)
        CHECK(fabs(rc.losses[i] - ra.losses[i]) < 1e-4 * ra.losses[i], "on 1 rank, step %d: %.7g vs %.7g", i + 1,
              rc.losses[i], ra.losses[i]);
    train_result_free(&rc);
    opts_for(&o, dir, 3, "three", "fp32");
    o.batch = 6;
    o.resume = 1;
    CHECK(!train_run_threads(&o, 3, COMM_F32, BUCKETS, &rc) && rc.steps_done == 8, "on 3 ranks: %s", averis_last_error());
    for (int i = 4; i < 8; i++)
        CHECK(fabs(rc.losses[i] - ra.losses[i]) < 1e-4 * ra.losses[i], "on 3 ranks, step %d: %.7g vs %.7g", i + 1,
              rc.losses[i], ra.losses[i]);
    train_result_free(&rc);
    train_result_free(&ra);
    train_result_free(&rb1);
    /* 3 ranks (n mod 3 = 2: a tail): stopped and resumed = straight */
    stop_resume_matches(dir, 3, "3", &ra, &rb1);
    train_result_free(&ra);
    train_result_free(&rb1);
    /* one process ↔ 1 rank: a plain run stopped at 4 and resumed on 1 rank, and
     * a 1-rank run stopped at 4 and resumed plain, both = the plain straight run */
    opts_for(&o, dir, 0, "plain", "fp32");
    o.batch = 6;
    CHECK(!train_run(&o, &ra), "plain: %s", averis_last_error());
    for (int k = 0; k < 2; k++) {
        opts_for(&o, dir, 1, k ? "dp_then_plain" : "plain_then_dp", "fp32");
        o.batch = 6;
        o.stop_after = 4;
        CHECK(!(k ? train_run_threads(&o, 1, COMM_F32, BUCKETS, &rb1) : train_run(&o, &rb1)) && rb1.steps_done == 4,
              "stop (%d): %s", k, averis_last_error());
        o.stop_after = 0;
        o.resume = 1;
        CHECK(!(k ? train_run(&o, &rb2) : train_run_threads(&o, 1, COMM_F32, BUCKETS, &rb2)) && rb2.steps_done == 8,
              "resume (%d): %s", k, averis_last_error());
        float lb[8];
        for (int i = 0; i < 8; i++) lb[i] = i < 4 ? rb1.losses[i] : rb2.losses[i];
        CHECK(bits_equal(ra.losses, lb, 8, &at), "%s, step %d: %.9g straight vs %.9g", k ? "1 rank then plain" :
              "plain then 1 rank", at + 1, ra.losses[at], lb[at]);
        CHECK(same_ckpt(g_out[0], g_out[1], 8), "%s ends elsewhere than the plain run", k ? "1 rank then plain" :
              "plain then 1 rank");
        train_result_free(&rb1);
        train_result_free(&rb2);
    }
    train_result_free(&ra);
    /* a global batch the ranks cannot split is refused by name */
    opts_for(&o, dir, 4, "odd", "fp32");
    o.batch = 5;
    CHECK(train_run_threads(&o, 2, COMM_F32, BUCKETS, &rc) != AVERIS_OK && strstr(averis_last_error(), "5 rows"), "odd batch: %s",
          averis_last_error());
    test_rm_tree(dir);
}

/* A rank that fails (here: its data directory is missing) aborts the group;
 * the other rank's train_run fails at its next collective instead of
 * waiting forever. */
void test_dp_rank_failure_stops_the_others(void) {
    char dir[64];
    make_fixture(dir);
    comm *ranks[2];
    rank_job jobs[2];
    pthread_t th[2];
    CHECK(!comm_cpu_group(2, ranks), "%s", averis_last_error());
    for (int r = 0; r < 2; r++) {
        opts_for(&jobs[r].o, dir, 5 + r, r ? "r1" : "r0", "fp32");
        jobs[r].dp = (dp_opts){.comm = ranks[r], .wire = COMM_F32};
        jobs[r].o.dp = &jobs[r].dp;
    }
    jobs[1].o.data_dir = "/nonexistent/averis-data";
    for (int r = 0; r < 2; r++) pthread_create(&th[r], NULL, run_rank, &jobs[r]);
    for (int r = 0; r < 2; r++) pthread_join(th[r], NULL);
    CHECK(jobs[1].st != AVERIS_OK, "rank 1 with no data succeeded");
    CHECK(jobs[0].st != AVERIS_OK && jobs[0].took_s < 10.0, "rank 0: status %d after %.1f s", jobs[0].st, jobs[0].took_s);
    for (int r = 0; r < 2; r++) {
        train_result_free(&jobs[r].res);
        ranks[r]->destroy(ranks[r]);
    }
    /* through train_run_threads the message names the rank and the cause */
    train_opts o;
    train_result res;
    opts_for(&o, dir, 7, "r", "fp32");
    o.data_dir = "/nonexistent/averis-data";
    CHECK(train_run_threads(&o, 2, COMM_F32, BUCKETS, &res) != AVERIS_OK && strstr(averis_last_error(), "rank 0 of 2") &&
              strstr(averis_last_error(), "averis-data"),
          "message: %s", averis_last_error());
    test_rm_tree(dir);
}
