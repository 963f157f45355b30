/* averis analyze — mean-bias metrics of a tensor or of a model's activations
 * and gradients. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "averis/analysis.h"
#include "averis/analysis_cuda.h"
#include "averis/ckpt.h"
#include "averis/data.h"
#include "averis/io.h"
#include "cli.h"

static void analyze_usage(FILE *f) {
    fprintf(f,
            "usage: averis analyze --npy X.npy [--json OUT.json]\n"
            "       averis analyze CKPT [--data DIR] [--out ROWS.csv] [options]\n"
            "\n"
            "The mean-bias metrics of ../shared/AVERIS.md. With --npy: one 2-D float32\n"
            "tensor (rows = tokens, columns = features). With a checkpoint (a checkpoint\n"
            "directory, or a training --out directory: its latest): one forward and\n"
            "backward on the first validation batch, one row per (layer, kind) for the\n"
            "input of every quantized linear (attn_in, attn_out, ffn_in, ffn_down_in)\n"
            "and the output gradients (grad_attn_out, grad_ffn_gate, grad_ffn_up,\n"
            "grad_ffn_down); in Qwen3-MoE layers also, per expert with tokens,\n"
            "expertE_in, expertE_down_in, grad_expertE_gate, grad_expertE_up and\n"
            "grad_expertE_down (over the expert's own rows).\n"
            "\n"
            "metrics: R = ‖μ‖/rms token norm; cos(μ, v₁) with v₁ the top right-singular\n"
            "vector; energy shares of the mean, the spike (top 1%% singular directions\n"
            "of X − 1μ) and the tail; over the top 0.1%% |X_ij|, the median of\n"
            "ρ = μ_j²/X_ij² and the share with ρ > 0.5; NVFP4 (1×16 along features)\n"
            "relative MSE and flushed share for plain, split, RHT and split+RHT.\n"
            "\n"
            "options:\n"
            "  --npy FILE       analyze one tensor\n"
            "  --json FILE      (--npy) also write the metrics as JSON\n"
            "  --data DIR       shards directory (default data/default)\n"
            "  --out FILE       (checkpoint) CSV rows (default analysis.csv)\n"
            "  --batch B        sequences (default 8)\n"
            "  --seq T          tokens per sequence (default: the training length)\n"
            "  --recipe SPEC    run under another recipe than the checkpoint's\n"
            "  --threads N      OpenMP threads\n"
            "  --device D       (checkpoint) cpu (default) or cuda: the GPU model's taps, the\n"
            "                   metrics on the device (adds resid_attn, resid_ffn,\n"
            "                   grad_attn_q/k/v and grad_lm_head rows)\n"
            "  --gpu N          CUDA device index (default 0)\n"
            "  -h, --help       this text\n");
}

static void print_metrics(const analysis_metrics *a) {
    printf("shape            %lld x %lld\n", (long long)a->rows, (long long)a->cols);
    printf("R                %.4f   (|mu| %.4g, rms token norm %.4g)\n", a->R, a->mean_norm, a->rms_token_norm);
    printf("cos(mu, v1)      %.4f   (sigma1 %.4g)\n", a->cos_mu_v1, a->sigma1);
    printf("energy           mean %.4f  spike(k=%d) %.4f  tail %.4f\n", a->e_mean, a->spike_k, a->e_spike, a->e_tail);
    printf("top 0.1%% (%lld)   rho median %.4f, share rho>0.5 %.4f\n", (long long)a->top_count, a->rho_median,
           a->rho_frac_half);
    for (int q = 0; q < ANALYSIS_NQ; q++)
        printf("nvfp4 %-10s rel_mse %.4e  flushed %.4f\n", analysis_quant_name(q), a->q_rel_mse[q], a->q_flushed[q]);
}

/* the rows from the GPU model's taps (cuda/analysis.cu) */
static averis_status gpu_rows(model *m, int gpu, const int *in, const int *tg, int B, int T, FILE *csv) {
    char desc[256];
    avc_model *g = NULL;
    avc_analysis *a = NULL;
    averis_status st = avc_init(gpu, desc, sizeof desc);
    if (!st) st = avc_model_create(&g, m, B, T, NULL);
    if (!st) st = avc_analysis_create(&a, avc_model_stream(g));
    if (!st) {
        printf("on %s; %s\n", desc, avc_model_describe(g));
        st = avc_analysis_model_rows(g, a, in, tg, csv, "", 0, stdout);
    }
    avc_analysis_free(a);
    avc_model_free(g);
    return st;
}

int cmd_analyze(int argc, char **argv) {
    const char *npy = NULL, *json_out = NULL, *ck = NULL, *data = "data/default", *out = "analysis.csv", *recipe = NULL;
    int B = 8, T = 0, gpu = 0, on_gpu = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { analyze_usage(stdout); return 0; }
        else if (!strcmp(a, "--npy")) { CLI_NEED_VAL("analyze"); npy = val; }
        else if (!strcmp(a, "--json")) { CLI_NEED_VAL("analyze"); json_out = val; }
        else if (!strcmp(a, "--data")) { CLI_NEED_VAL("analyze"); data = val; }
        else if (!strcmp(a, "--out")) { CLI_NEED_VAL("analyze"); out = val; }
        else if (!strcmp(a, "--recipe")) { CLI_NEED_VAL("analyze"); recipe = val; }
        else if (!strcmp(a, "--batch")) { CLI_NEED_VAL("analyze"); ok = cli_parse_int(a, val, 1, 65536, &B); }
        else if (!strcmp(a, "--seq")) { CLI_NEED_VAL("analyze"); ok = cli_parse_int(a, val, 2, 1 << 20, &T); }
        else if (!strcmp(a, "--device")) {
            CLI_NEED_VAL("analyze");
            if (!strcmp(val, "cuda")) on_gpu = 1;
            else if (strcmp(val, "cpu")) { fprintf(stderr, "averis analyze: --device '%s': cpu or cuda\n", val); return 2; }
        }
        else if (!strcmp(a, "--gpu")) { CLI_NEED_VAL("analyze"); ok = cli_parse_int(a, val, 0, 1024, &gpu); }
        else if (!strcmp(a, "--threads")) { CLI_NEED_VAL("analyze"); ok = cli_set_threads(a, val); }
        else if (a[0] == '-') { fprintf(stderr, "averis analyze: unknown option '%s' (try --help)\n", a); return 2; }
        else ck = a;
        if (!ok) return 2;
    }
    if (!!npy == !!ck) {
        fprintf(stderr, "averis analyze: give either --npy FILE or a checkpoint (try --help)\n");
        return 2;
    }
    if (npy) {
        averis_npy x;
        if (averis_npy_read(npy, &x)) { fprintf(stderr, "averis analyze: %s\n", averis_last_error()); return 1; }
        if (x.dtype != AVERIS_NPY_F32 || x.ndim != 2) {
            fprintf(stderr, "averis analyze: %s: need a 2-D float32 array (tokens × features)\n", npy);
            averis_npy_free(&x);
            return 1;
        }
        analysis_metrics a;
        averis_status st = analysis_compute(x.data, x.shape[0], x.shape[1], &a);
        averis_npy_free(&x);
        if (st) { fprintf(stderr, "averis analyze: %s\n", averis_last_error()); return 1; }
        print_metrics(&a);
        if (json_out) {
            averis_afile af;
            if (averis_afile_open(&af, json_out)) { fprintf(stderr, "averis analyze: %s\n", averis_last_error()); return 1; }
            analysis_json(af.f, &a);
            fputc('\n', af.f);
            if (averis_afile_commit(&af)) { fprintf(stderr, "averis analyze: %s\n", averis_last_error()); return 1; }
        }
        return 0;
    }
    char dir[4200];
    model m;
    data_loader dl;
    int tseq = 0;
    if (ckpt_resolve(ck, dir, sizeof dir) || ckpt_load_model(dir, recipe, &m, &tseq)) {
        fprintf(stderr, "averis analyze: %s\n", averis_last_error());
        return 1;
    }
    if (!T) T = tseq ? tseq : 128;
    if (loader_open(&dl, data, "val")) {
        fprintf(stderr, "averis analyze: %s\n", averis_last_error());
        model_free(&m);
        return 1;
    }
    int *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    averis_afile af;
    averis_status st = !in || !tg ? AVERIS_ENOMEM : loader_batch_at(&dl, 0, B, T, in, tg);
    if (!st) st = averis_afile_open(&af, out);
    if (!st) {
        analysis_csv_header(af.f, "layer,kind");
        st = on_gpu ? gpu_rows(&m, gpu, in, tg, B, T, af.f) : analysis_model_rows(&m, in, tg, B, T, af.f, "", 0, stdout);
        if (st) averis_afile_abort(&af);
        else st = averis_afile_commit(&af);
    }
    if (st) fprintf(stderr, "averis analyze: %s\n", st == AVERIS_ENOMEM ? "out of memory" : averis_last_error());
    else
        printf("rows: %s (%s, recipe %s, %d×%d tokens)\n", out, dir, qlin_recipe_name(m.recipe.id), B, T);
    free(in);
    free(tg);
    loader_free(&dl);
    model_free(&m);
    return st ? 1 : 0;
}
