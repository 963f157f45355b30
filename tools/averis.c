/* averis — one binary, subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: averis <command> [options]\n"
            "\n"
            "commands:\n"
            "  quant      quantize a 2-D .npy tensor to NVFP4 and report the error\n"
            "  features   print the CPU features and the kernels chosen\n"
            "  prepare    build a tokenizer and token shards from text files\n"
            "  train      train a Qwen3-style model under a recipe (bf16, nvfp4, averis, ...)\n"
            "  eval       validation loss of a checkpoint, or its score on a task (--task)\n"
            "  sample     generate text from a checkpoint\n"
            "  tokenize   a tokenizer's ids for a file, bytes for ids, Hugging Face files\n"
            "  analyze    mean-bias metrics of a tensor or of a checkpoint's layers\n"
            "\n"
            "Run 'averis <command> --help' for a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "quant")) return cmd_quant(argc - 1, argv + 1);
    if (!strcmp(cmd, "features")) return cmd_features(argc - 1, argv + 1);
    if (!strcmp(cmd, "prepare")) return cmd_prepare(argc - 1, argv + 1);
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "sample")) return cmd_sample(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "analyze")) return cmd_analyze(argc - 1, argv + 1);
    fprintf(stderr, "averis: unknown command '%s' (try 'averis --help')\n", cmd);
    return 2;
}
