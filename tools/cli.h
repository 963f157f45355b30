/* cli.h — the averis subcommands and small helpers they share. */
#ifndef AVERIS_CLI_H
#define AVERIS_CLI_H
#include <stdint.h>

int cmd_quant(int argc, char **argv);
int cmd_features(int argc, char **argv);

/* Parses a whole non-negative integer; returns 0 and prints an error naming
 * the option on failure. */
int cli_parse_u64(const char *opt, const char *s, uint64_t *out);
#endif
