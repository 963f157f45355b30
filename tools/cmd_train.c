/* averis train — train a Qwen3-style model under a recipe. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "averis/cuda.h"
#include "averis/train.h"
#include "cli.h"
#include "dp_launch.h"

static void train_usage(FILE *f) {
    train_opts d;
    train_opts_default(&d);
    fprintf(f,
            "usage: averis train [options]\n"
            "\n"
            "Trains a Qwen3-style decoder on token shards; every linear layer of the\n"
            "blocks runs under the recipe. Writes OUT/log.csv (one row per step) and\n"
            "checkpoints OUT/ckpt_NNNNNNNN/ (HF-loadable model.safetensors and\n"
            "config.json, optimizer state, tokenizer); OUT/latest names the newest.\n"
            "\n"
            "options:\n"
            "  --config NAME|FILE  preset (%s) or a Qwen3 config.json (default %s)\n"
            "  --recipe SPEC       bf16|nvfp4|nvfp4-rht|averis|averis-rht|fp32[,seed=N,mean=fp32|fp4,\n"
            "                      sr=0|1,rht=0|1,wblock=16x16|1x16] (default %s)\n"
            "  --data DIR          DIR/*train*.bin and DIR/*val*.bin, llm.c shards (default %s)\n"
            "  --out DIR           output directory (default %s)\n"
            "  --steps N           optimizer steps (default %d)\n"
            "  --batch B           sequences per micro-batch (default %d)\n"
            "  --seq T             tokens per sequence (default %d)\n"
            "  --accum K           micro-batches per step (default %d)\n"
            "  --lr X              peak learning rate (default %g)\n"
            "  --min-lr-frac X     cosine floor as a share of --lr (default %g)\n"
            "  --warmup N          warmup steps (default steps/20)\n"
            "  --wd X              AdamW weight decay, matrices only (default %g)\n"
            "  --clip X            gradient-norm clip, 0 = off (default %g)\n"
            "  --val-every N       validation every N steps (default steps/10)\n"
            "  --val-batches N     validation batches (default %d)\n"
            "  --ckpt-every N      checkpoint every N steps (default: at the end only)\n"
            "  --keep N            checkpoints kept (default %d)\n"
            "  --log-every N       progress line every N steps (default steps/20)\n"
            "  --seed N            weight-init seed (default %llu)\n"
            "  --bf16-last N       keep the last N blocks in bf16 (default 0)\n"
            "  --max-bad N         stop after N non-finite steps in a row (default %d)\n"
            "  --resume            continue from OUT's latest checkpoint (an error when OUT holds\n"
            "                      none); --config, --data, --recipe, --batch, --seq, --accum,\n"
            "                      --seed and --bf16-last must be the checkpoint's\n"
            "  --stop-after N      stop after N steps with a checkpoint (resume later); SIGTERM\n"
            "                      or SIGINT stop after the current step the same way (a second: at once)\n"
            "  --analyze-every K   mean-bias rows (see 'averis analyze') of the first validation\n"
            "                      batch into OUT/analysis.csv at step 0 and every K steps\n"
            "  --device cpu|cuda   where the steps run (default cpu); cuda needs a build with the\n"
            "                      CUDA toolkit and an sm_90+ GPU; checkpoints are interchangeable\n"
            "  --gpu N             CUDA device index (default 0)\n"
            "  --gpu-act bf16|fp32 (cuda) activations between kernels (default $AVERIS_ACT, else\n"
            "                      bf16; fp32 under the fp32 recipe)\n"
            "  --gpu-attn cudnn|naive|flash\n"
            "                      (cuda) attention: cuDNN's fused flash attention (BF16\n"
            "                      activations), P materialised, or our flash.cu (default\n"
            "                      $AVERIS_ATTN, else cudnn where built and BF16, else naive\n"
            "                      unless P would take > 1/4 of the GPU, then flash)\n"
            "  --gpus N            data parallel over N GPUs of this host (one process each, NCCL,\n"
            "                      ZeRO-1; --batch per GPU); with --device cpu N ranks as threads.\n"
            "                      Under torchrun/mpirun leave it out: RANK/WORLD_SIZE/LOCAL_RANK or\n"
            "                      OMPI_COMM_WORLD_* make this process one rank (docs/multigpu.md)\n"
            "  --grad-dtype fp32|bf16\n"
            "                      (data parallel) the gradients' type in the all-reduce (default fp32)\n"
            "  --dp-buckets MB     (data parallel) all-reduce the gradients in buckets of about MB MiB\n"
            "                      as the backward finishes them, overlapped with it on the GPU\n"
            "                      (default %g; 0: one all-reduce after the backward)\n"
            "  --threads N         OpenMP threads (default: all)\n"
            "  --quiet             no progress lines\n"
            "  -h, --help          this text\n"
            "\n"
            "A run locks OUT (OUT/train.lock): a second run on the same OUT fails at start.\n"
            "Each checkpoint has a MANIFEST (sizes and checksums of its files), checked on\n"
            "--resume. AVERIS_INJECT_NAN_STEP=K makes step K's gradients NaN (fault\n"
            "injection: the step is skipped, as any non-finite step is).\n",
            model_preset_names(), d.config, d.recipe, d.data_dir, d.out_dir, d.steps, d.batch, d.seq, d.accum, d.lr,
            d.min_lr_frac, d.weight_decay, d.clip, d.val_batches, d.keep, (unsigned long long)d.seed, d.max_bad_steps,
            DP_BUCKET_MB_DEFAULT);
}

static volatile sig_atomic_t g_stop;
static void on_term(int sig) { /* a second signal stops at once */
    if (g_stop) { signal(sig, SIG_DFL); raise(sig); }
    g_stop = 1;
}

int cmd_train(int argc, char **argv) {
    train_opts o;
    train_opts_default(&o);
    /* the GPU model's options: the flags, else the environment (read only for --device cuda) */
    const char *act = NULL, *attn = NULL, *act_from = "--gpu-act", *attn_from = "--gpu-attn";
    int gpus = 0; /* data parallel (dp_launch.c) */
    const char *grad_dtype = NULL;
    double dp_bucket_mb = DP_BUCKET_MB_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { train_usage(stdout); return 0; }
        else if (!strcmp(a, "--config")) { CLI_NEED_VAL("train"); o.config = val; }
        else if (!strcmp(a, "--recipe")) { CLI_NEED_VAL("train"); o.recipe = val; }
        else if (!strcmp(a, "--data")) { CLI_NEED_VAL("train"); o.data_dir = val; }
        else if (!strcmp(a, "--out")) { CLI_NEED_VAL("train"); o.out_dir = val; }
        else if (!strcmp(a, "--steps")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 100000000, &o.steps); }
        else if (!strcmp(a, "--batch")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 65536, &o.batch); }
        else if (!strcmp(a, "--seq")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 2, 1 << 20, &o.seq); }
        else if (!strcmp(a, "--accum")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 65536, &o.accum); }
        else if (!strcmp(a, "--lr")) { CLI_NEED_VAL("train"); ok = cli_parse_double(a, val, 1e-12, 10.0, &o.lr); }
        else if (!strcmp(a, "--min-lr-frac")) { CLI_NEED_VAL("train"); ok = cli_parse_double(a, val, 0.0, 1.0, &o.min_lr_frac); }
        else if (!strcmp(a, "--warmup")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 0, 100000000, &o.warmup); }
        else if (!strcmp(a, "--wd")) { CLI_NEED_VAL("train"); ok = cli_parse_double(a, val, 0.0, 10.0, &o.weight_decay); }
        else if (!strcmp(a, "--clip")) { CLI_NEED_VAL("train"); ok = cli_parse_double(a, val, 0.0, 1e9, &o.clip); }
        else if (!strcmp(a, "--val-every")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 0, 100000000, &o.val_every); }
        else if (!strcmp(a, "--val-batches")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 1000000, &o.val_batches); }
        else if (!strcmp(a, "--ckpt-every")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 0, 100000000, &o.ckpt_every); }
        else if (!strcmp(a, "--keep")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 1000, &o.keep); }
        else if (!strcmp(a, "--log-every")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 100000000, &o.log_every); }
        else if (!strcmp(a, "--seed")) { CLI_NEED_VAL("train"); ok = cli_parse_u64(a, val, &o.seed); }
        else if (!strcmp(a, "--bf16-last")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 0, 1024, &o.bf16_last); }
        else if (!strcmp(a, "--max-bad")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 1000000, &o.max_bad_steps); }
        else if (!strcmp(a, "--stop-after")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 0, 100000000, &o.stop_after); }
        else if (!strcmp(a, "--analyze-every")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 0, 100000000, &o.analyze_every); }
        else if (!strcmp(a, "--device")) {
            CLI_NEED_VAL("train");
            if (!strcmp(val, "cpu")) o.device = 0;
            else if (!strcmp(val, "cuda")) o.device = 1;
            else { fprintf(stderr, "averis train: --device must be cpu or cuda (got '%s')\n", val); return 2; }
        }
        else if (!strcmp(a, "--gpu")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 0, 1023, &o.gpu); }
        else if (!strcmp(a, "--gpu-act")) { CLI_NEED_VAL("train"); act = val; }
        else if (!strcmp(a, "--gpu-attn")) { CLI_NEED_VAL("train"); attn = val; }
        else if (!strcmp(a, "--gpus")) { CLI_NEED_VAL("train"); ok = cli_parse_int(a, val, 1, 1024, &gpus); }
        else if (!strcmp(a, "--grad-dtype")) { CLI_NEED_VAL("train"); grad_dtype = val; }
        else if (!strcmp(a, "--dp-buckets")) { CLI_NEED_VAL("train"); ok = cli_parse_double(a, val, 0.0, 1e6, &dp_bucket_mb); }
        else if (!strcmp(a, "--resume")) o.resume = 1;
        else if (!strcmp(a, "--quiet")) o.quiet = 1;
        else if (!strcmp(a, "--threads")) { CLI_NEED_VAL("train"); ok = cli_set_threads(a, val); }
        else { fprintf(stderr, "averis train: unknown option '%s' (try --help)\n", a); return 2; }
        if (!ok) return 2;
    }
    if (o.device && !act) act = getenv("AVERIS_ACT"), act_from = "AVERIS_ACT";
    if (o.device && !attn) attn = getenv("AVERIS_ATTN"), attn_from = "AVERIS_ATTN";
    if (avc_model_opts_parse(act, attn, act_from, attn_from, &o.gpu_opts)) {
        fprintf(stderr, "averis train: %s\n", averis_last_error());
        return 2;
    }
    /* SIGTERM/SIGINT: finish the step, write a checkpoint, stop (the sweep's time budget) */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    o.stop_flag = &g_stop;
    if (dp_launch_wanted(gpus)) return dp_launch_train(&o, gpus, grad_dtype, dp_bucket_mb);
    train_result r;
    averis_status st = train_run(&o, &r);
    if (st) fprintf(stderr, "averis train: %s\n", averis_last_error());
    else printf("final: steps %d, train loss %.4f, val loss %.4f, %.0f tokens/s, %d skipped\n", r.steps_done,
                r.steps_done ? r.losses[r.steps_done - 1] : 0.0f, r.final_val_loss, r.tokens_per_s, r.skipped);
    train_result_free(&r);
    return st ? 1 : 0;
}
