/* cli.h — the averis subcommands and small helpers they share. */
#ifndef AVERIS_CLI_H
#define AVERIS_CLI_H
#include <stdint.h>
#include <stdio.h>

int cmd_quant(int argc, char **argv);
int cmd_features(int argc, char **argv);
int cmd_prepare(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_analyze(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

/* Parses a whole non-negative integer; returns 0 and prints an error naming
 * the option on failure. */
int cli_parse_u64(const char *opt, const char *s, uint64_t *out);
/* An integer in [lo, hi] / a finite number in [lo, hi]; 0 and a message on failure. */
int cli_parse_int(const char *opt, const char *s, long lo, long hi, int *out);
int cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out);
/* --threads N: sets the OpenMP thread count; 0 and a message on a bad value. */
int cli_set_threads(const char *opt, const char *s);

/* In an argv loop with `a` = argv[i], `val` = argv[i+1] or NULL. */
#define CLI_NEED_VAL(cmd)                                                  \
    do {                                                                   \
        if (!val) {                                                        \
            fprintf(stderr, "averis %s: %s needs a value\n", cmd, a);      \
            return 2;                                                      \
        }                                                                  \
        i++;                                                               \
    } while (0)
#endif
