/* averis eval / averis sample — validation loss and text from a checkpoint. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "averis/ckpt.h"
#include "averis/io.h"
#include "averis/tokenizer.h"
#include "averis/train.h" /* train_eval_loss: the validation loss as training logs it */
#include "cli.h"
#include "cmd_evaltask.h"

static void eval_usage(FILE *f) {
    fprintf(f,
            "usage: averis eval CKPT [options]\n"
            "\n"
            "Prints the mean validation loss of a checkpoint (a checkpoint directory,\n"
            "or a training --out directory: its latest checkpoint) on DIR/*val*.bin.\n"
            "The forward runs under the checkpoint's training recipe unless --recipe.\n"
            "\n"
            "options:\n"
            "  --data DIR       shards directory (default data/default)\n"
            "  --split NAME     val (default) or train\n"
            "  --batch B        sequences per batch (default 8)\n"
            "  --seq T          tokens per sequence (default: the training length)\n"
            "  --batches N      batches to average (default 16)\n"
            "  --recipe SPEC    evaluate under another recipe (e.g. fp32)\n"
            "  --dump PREFIX    also write the first batch's tokens and logits as\n"
            "                   PREFIX.tokens.npy [B,T] and PREFIX.logits.npy [B,T,V] (float32)\n"
            "  --threads N      OpenMP threads\n"
            "  -h, --help       this text\n"
            "\n"
            "With --task FILE.jsonl, scores zero-shot multiple choice instead, as\n"
            "lm-evaluation-harness does (docs/huggingface.md). One JSON object a line:\n"
            "  {\"context\": \"...\", \"choices\": [\"...\", ...], \"label\": K}\n"
            "Each choice's log-likelihood after the context (tokens: <|endoftext|>,\n"
            "context, choice); prints acc (argmax = label), acc_norm (argmax of\n"
            "loglik per character of the choice), acc_bytes (per UTF-8 byte), each\n"
            "± its standard error. Options for --task:\n"
            "  --device cpu|cuda  where the forward runs (default cpu; cuda batched on a GPU)\n"
            "  --gpu N            CUDA device index (default 0)\n"
            "  --batch B          requests per forward (default 16)\n"
            "  --seq T            left-truncate to T+1 tokens (default max_position_embeddings)\n"
            "  --limit N          the first N items only\n"
            "  --tokenizer FILE   tokenizer (default CKPT/tokenizer.bpe)\n"
            "  --scores FILE      per item: log-likelihoods, predictions, tokens (JSONL)\n"
            "  --json FILE        the result as one JSON object\n"
            "  --recipe SPEC      as above (e.g. fp32, to compare with a Hugging Face run)\n");
}


/* The first batch's tokens and logits as .npy (for checks against other
 * implementations, e.g. tests/gen_qwen3_fixture.py --check-ckpt). */
static averis_status dump_batch(model *m, const data_loader *dl, int B, int T, const char *prefix) {
    size_t N = (size_t)B * T;
    int *in = malloc(N * sizeof *in), *tg = malloc(N * sizeof *tg);
    float *tf = malloc(N * sizeof *tf);
    averis_status st = AVERIS_ENOMEM;
    char path[4200];
    if (in && tg && tf && !(st = loader_batch_at(dl, 0, B, T, in, tg)) && !(st = model_forward(m, in, NULL, B, T, NULL))) {
        for (size_t i = 0; i < N; i++) tf[i] = (float)in[i];
        int64_t ts[2] = {B, T}, ls[3] = {B, T, m->cfg.vocab_size};
        snprintf(path, sizeof path, "%s.tokens.npy", prefix);
        st = averis_npy_write_f32(path, tf, 2, ts);
        snprintf(path, sizeof path, "%s.logits.npy", prefix);
        if (!st) st = averis_npy_write_f32(path, m->probs, 3, ls);
    }
    free(in); free(tg); free(tf);
    return st;
}

int cmd_eval(int argc, char **argv) {
    const char *ck = NULL, *data = "data/default", *split = "val", *recipe = NULL, *dump = NULL, *task = NULL,
               *device = "cpu", *tokpath = NULL, *scores = NULL, *json_out = NULL;
    int B = 0, T = 0, nb = 16, gpu = 0, limit = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { eval_usage(stdout); return 0; }
        else if (!strcmp(a, "--data")) { CLI_NEED_VAL("eval"); data = val; }
        else if (!strcmp(a, "--split")) { CLI_NEED_VAL("eval"); split = val; }
        else if (!strcmp(a, "--recipe")) { CLI_NEED_VAL("eval"); recipe = val; }
        else if (!strcmp(a, "--dump")) { CLI_NEED_VAL("eval"); dump = val; }
        else if (!strcmp(a, "--task")) { CLI_NEED_VAL("eval"); task = val; }
        else if (!strcmp(a, "--device")) { CLI_NEED_VAL("eval"); device = val; }
        else if (!strcmp(a, "--tokenizer")) { CLI_NEED_VAL("eval"); tokpath = val; }
        else if (!strcmp(a, "--scores")) { CLI_NEED_VAL("eval"); scores = val; }
        else if (!strcmp(a, "--json")) { CLI_NEED_VAL("eval"); json_out = val; }
        else if (!strcmp(a, "--gpu")) { CLI_NEED_VAL("eval"); ok = cli_parse_int(a, val, 0, 1024, &gpu); }
        else if (!strcmp(a, "--limit")) { CLI_NEED_VAL("eval"); ok = cli_parse_int(a, val, 1, 1 << 30, &limit); }
        else if (!strcmp(a, "--batch")) { CLI_NEED_VAL("eval"); ok = cli_parse_int(a, val, 1, 65536, &B); }
        else if (!strcmp(a, "--seq")) { CLI_NEED_VAL("eval"); ok = cli_parse_int(a, val, 2, 1 << 20, &T); }
        else if (!strcmp(a, "--batches")) { CLI_NEED_VAL("eval"); ok = cli_parse_int(a, val, 1, 1000000, &nb); }
        else if (!strcmp(a, "--threads")) { CLI_NEED_VAL("eval"); ok = cli_set_threads(a, val); }
        else if (a[0] == '-') { fprintf(stderr, "averis eval: unknown option '%s' (try --help)\n", a); return 2; }
        else ck = a;
        if (!ok) return 2;
    }
    if (!ck) { fprintf(stderr, "averis eval: no checkpoint given (try --help)\n"); return 2; }
    if (strcmp(device, "cpu") && strcmp(device, "cuda")) {
        fprintf(stderr, "averis eval: --device '%s' is not cpu or cuda\n", device);
        return 2;
    }
    if (!task && (strcmp(device, "cpu") || tokpath || scores || json_out || limit)) {
        fprintf(stderr, "averis eval: --device, --tokenizer, --scores, --json and --limit go with --task\n");
        return 2;
    }
    if (task) {
        if (dump) { fprintf(stderr, "averis eval: --dump does not go with --task (see --scores)\n"); return 2; }
        eval_task_opts o = {.ckpt = ck, .task = task, .recipe = recipe, .tokenizer = tokpath, .scores = scores,
                            .json = json_out, .gpu = !strcmp(device, "cuda"), .gpu_index = gpu, .batch = B ? B : 16,
                            .seq = T, .limit = limit};
        return eval_task(&o);
    }
    if (!B) B = 8;
    char dir[4200];
    model m;
    data_loader dl;
    int tseq = 0;
    if (ckpt_resolve(ck, dir, sizeof dir) || ckpt_load_model(dir, recipe, &m, &tseq)) {
        fprintf(stderr, "averis eval: %s\n", averis_last_error());
        return 1;
    }
    if (!T) T = tseq ? tseq : 128;
    if (loader_open(&dl, data, split)) {
        fprintf(stderr, "averis eval: %s\n", averis_last_error());
        model_free(&m);
        return 1;
    }
    float loss = 0;
    averis_status st = train_eval_loss(&m, &dl, B, T, nb, &loss); /* ids outside the vocabulary are errors */
    if (!st && dump) st = dump_batch(&m, &dl, B, T, dump);
    if (st) fprintf(stderr, "averis eval: %s\n", averis_last_error());
    else printf("%s: %s loss %.4f (recipe %s, %d×%d tokens × %d batches)\n", dir, split, loss,
                qlin_recipe_name(m.recipe.id), B, T, nb);
    loader_free(&dl);
    model_free(&m);
    return st ? 1 : 0;
}

static void sample_usage(FILE *f) {
    fprintf(f,
            "usage: averis sample CKPT [options]\n"
            "\n"
            "Generates text from a checkpoint (directory, or a training --out\n"
            "directory: its latest), decoding with the tokenizer saved beside it.\n"
            "\n"
            "options:\n"
            "  --prompt TEXT      text to continue (default: start of a document)\n"
            "  --tokens N         tokens to generate (default 200)\n"
            "  --temperature X    softmax temperature, 0 = greedy (default 0.8)\n"
            "  --top-k K          sample from the K most likely tokens (default 40)\n"
            "  --seed N           sampling seed (default 1)\n"
            "  --tokenizer FILE   tokenizer (default CKPT/tokenizer.bpe)\n"
            "  --recipe SPEC      forward under another recipe\n"
            "  --ids FILE         also write the ids, <|endoftext|> and the prompt's first,\n"
            "                     then the generated ones, one line (for comparisons)\n"
            "  --threads N        OpenMP threads\n"
            "  -h, --help         this text\n");
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A token drawn from the top-k of softmax(logits/temperature). */
static int pick(const float *logits, int V, double temp, int topk, uint64_t *rng) {
    int best = 0;
    for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    if (temp <= 0) return best;
    if (topk < 1 || topk > V) topk = V;
    int *idx = malloc((size_t)topk * sizeof *idx);
    if (!idx) return best;
    int n = 0;
    for (int i = 0; i < V; i++) { /* insertion into a descending top-k list */
        if (n == topk && logits[i] <= logits[idx[n - 1]]) continue;
        int j = n < topk ? n++ : n - 1;
        while (j > 0 && logits[idx[j - 1]] < logits[i]) { idx[j] = idx[j - 1]; j--; }
        idx[j] = i;
    }
    double sum = 0, *w = malloc((size_t)n * sizeof *w);
    if (!w) { free(idx); return best; }
    for (int j = 0; j < n; j++) sum += (w[j] = exp((logits[idx[j]] - logits[idx[0]]) / temp));
    double u = (double)(rng_next(rng) >> 11) * 0x1p-53 * sum;
    int out = idx[n - 1];
    for (int j = 0; j < n; j++) {
        if ((u -= w[j]) < 0) { out = idx[j]; break; }
    }
    free(idx);
    free(w);
    return out;
}

int cmd_sample(int argc, char **argv) {
    const char *ck = NULL, *prompt = NULL, *tokpath = NULL, *recipe = NULL, *ids_out = NULL;
    int ntok = 200, topk = 40;
    double temp = 0.8;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { sample_usage(stdout); return 0; }
        else if (!strcmp(a, "--prompt")) { CLI_NEED_VAL("sample"); prompt = val; }
        else if (!strcmp(a, "--tokenizer")) { CLI_NEED_VAL("sample"); tokpath = val; }
        else if (!strcmp(a, "--recipe")) { CLI_NEED_VAL("sample"); recipe = val; }
        else if (!strcmp(a, "--ids")) { CLI_NEED_VAL("sample"); ids_out = val; }
        else if (!strcmp(a, "--tokens")) { CLI_NEED_VAL("sample"); ok = cli_parse_int(a, val, 1, 1000000, &ntok); }
        else if (!strcmp(a, "--top-k")) { CLI_NEED_VAL("sample"); ok = cli_parse_int(a, val, 0, 1 << 24, &topk); }
        else if (!strcmp(a, "--temperature")) { CLI_NEED_VAL("sample"); ok = cli_parse_double(a, val, 0.0, 100.0, &temp); }
        else if (!strcmp(a, "--seed")) { CLI_NEED_VAL("sample"); ok = cli_parse_u64(a, val, &seed); }
        else if (!strcmp(a, "--threads")) { CLI_NEED_VAL("sample"); ok = cli_set_threads(a, val); }
        else if (a[0] == '-') { fprintf(stderr, "averis sample: unknown option '%s' (try --help)\n", a); return 2; }
        else ck = a;
        if (!ok) return 2;
    }
    if (!ck) { fprintf(stderr, "averis sample: no checkpoint given (try --help)\n"); return 2; }
    char dir[4200], tp[4300];
    model m;
    int tseq = 0;
    if (ckpt_resolve(ck, dir, sizeof dir) || ckpt_load_model(dir, recipe, &m, &tseq)) {
        fprintf(stderr, "averis sample: %s\n", averis_last_error());
        return 1;
    }
    snprintf(tp, sizeof tp, "%s/tokenizer.bpe", dir);
    bpe_tokenizer tok;
    if (bpe_load(&tok, tokpath ? tokpath : tp)) {
        fprintf(stderr, "averis sample: %s\n", averis_last_error());
        model_free(&m);
        return 1;
    }
    int window = tseq ? tseq : 128, cap = ntok + 1, n = 0;
    size_t pn = 0, pcap = 0;
    int *ids = NULL;
    if (prompt && bpe_encode(&tok, prompt, strlen(prompt), &ids, &pn, &pcap)) goto fail;
    int *seq = malloc(((size_t)pn + (size_t)cap) * sizeof *seq);
    if (!seq) goto fail;
    seq[n++] = BPE_EOT;
    for (size_t i = 0; i < pn; i++) seq[n++] = ids[i];
    if (prompt) fputs(prompt, stdout);
    uint64_t rng = seed;
    for (int k = 0; k < ntok; k++) {
        int start = n > window ? n - window : 0, L = n - start;
        if (model_forward(&m, seq + start, NULL, 1, L, NULL)) { free(seq); goto fail; }
        int next = pick(m.probs + (size_t)(L - 1) * m.cfg.vocab_size, m.cfg.vocab_size, temp, topk, &rng);
        seq[n++] = next;
        if (next < tok.vocab_size) { /* the token's bytes, however long (tokens of 2 KB occur) */
            fwrite(tok.tok_bytes[next], 1, (size_t)tok.tok_len[next], stdout);
            fflush(stdout);
        }
    }
    fputc('\n', stdout);
    if (ids_out) {
        averis_afile af;
        if (averis_afile_open(&af, ids_out)) { free(seq); goto fail; }
        for (int i = 0; i < n; i++) fprintf(af.f, i ? " %d" : "%d", seq[i]);
        fputc('\n', af.f);
        if (averis_afile_commit(&af)) { free(seq); goto fail; }
    }
    free(seq);
    free(ids);
    bpe_free(&tok);
    model_free(&m);
    return 0;
fail:
    fprintf(stderr, "averis sample: %s\n", averis_last_error());
    free(ids);
    bpe_free(&tok);
    model_free(&m);
    return 1;
}
