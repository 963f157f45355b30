/* averis tokenize — a tokenizer's ids for a file, the bytes of ids, and the
 * Hugging Face files of a tokenizer (for tests, other tools, old runs). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "averis/io.h"
#include "averis/tokenizer.h"
#include "cli.h"

static void tokenize_usage(FILE *f) {
    fprintf(f,
            "usage: averis tokenize TOKENIZER [options] [FILE]\n"
            "\n"
            "TOKENIZER is a tokenizer.bpe, or a directory holding one (a prepared\n"
            "data directory or a checkpoint). Reads FILE (default: standard input)\n"
            "as raw bytes, any bytes, and prints its ids, one line, separated by\n"
            "spaces, exactly as `averis prepare` encodes a document's text.\n"
            "\n"
            "options:\n"
            "  --bos            put <|endoftext|> (256) first, as prepare does per document\n"
            "  --decode         FILE holds ids (whitespace-separated): write their bytes\n"
            "                   to standard output (<|endoftext|> as \\n<|endoftext|>\\n)\n"
            "  --hf DIR         write DIR/tokenizer.json, tokenizer_config.json and\n"
            "                   generation_config.json for this tokenizer (no FILE read)\n"
            "  --max-length N   with --hf: tokenizer_config's model_max_length\n"
            "  -h, --help       this text\n");
}

int cmd_tokenize(int argc, char **argv) {
    const char *tpath = NULL, *file = NULL, *hf = NULL;
    int bos = 0, decode = 0, maxlen = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { tokenize_usage(stdout); return 0; }
        else if (!strcmp(a, "--bos")) bos = 1;
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--hf")) { CLI_NEED_VAL("tokenize"); hf = val; }
        else if (!strcmp(a, "--max-length")) {
            CLI_NEED_VAL("tokenize");
            if (!cli_parse_int(a, val, 1, 1 << 30, &maxlen)) return 2;
        } else if (a[0] == '-' && a[1]) { fprintf(stderr, "averis tokenize: unknown option '%s' (try --help)\n", a); return 2; }
        else if (!tpath) tpath = a;
        else if (!file) file = a;
        else { fprintf(stderr, "averis tokenize: more than one FILE ('%s')\n", a); return 2; }
    }
    if (!tpath) { fprintf(stderr, "averis tokenize: no tokenizer given (try --help)\n"); return 2; }
    char path[4200];
    struct stat sb;
    if (!stat(tpath, &sb) && S_ISDIR(sb.st_mode)) snprintf(path, sizeof path, "%s/tokenizer.bpe", tpath);
    else snprintf(path, sizeof path, "%s", tpath);
    bpe_tokenizer tok;
    if (bpe_load(&tok, path)) { fprintf(stderr, "averis tokenize: %s\n", averis_last_error()); return 1; }
    int rc = 1;
    char *buf = NULL, *out = NULL;
    int *ids = NULL;
    size_t len = 0, n = 0, cap = 0;
    if (hf) {
        if (averis_mkdir_p(hf) || bpe_save_hf(&tok, hf, maxlen)) {
            fprintf(stderr, "averis tokenize: %s\n", averis_last_error());
            goto done;
        }
        rc = 0;
        goto done;
    }
    /* the input, whole */
    if (file && strcmp(file, "-")) {
        if (averis_read_file(file, &buf, &len)) { fprintf(stderr, "averis tokenize: %s\n", averis_last_error()); goto done; }
    } else {
        size_t bc = 0;
        for (;;) {
            if (len + 65536 > bc) {
                bc = 2 * bc + 65536;
                char *nb = realloc(buf, bc);
                if (!nb) { fprintf(stderr, "averis tokenize: out of memory\n"); goto done; }
                buf = nb;
            }
            size_t r = fread(buf + len, 1, 65536, stdin);
            len += r;
            if (r == 0) break;
        }
    }
    const char *what = file ? file : "standard input";
    if (decode) {
        const char *p = buf, *end = buf + len;
        long line = 1;
        while (p < end) {
            if (*p == '\n') line++;
            if (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') { p++; continue; }
            long v = 0;
            const char *q = p;
            while (q < end && *q >= '0' && *q <= '9' && v <= tok.vocab_size) v = v * 10 + (*q++ - '0');
            if (q == p || (q < end && !(*q == ' ' || *q == '\n' || *q == '\t' || *q == '\r')) || v >= tok.vocab_size) {
                fprintf(stderr, "averis tokenize: %s line %ld: '%.*s' is not an id below %d\n", what, line,
                        (int)strcspn(p, " \n\t\r") < 40 ? (int)strcspn(p, " \n\t\r") : 40, p, tok.vocab_size);
                goto done;
            }
            if (bpe_append(&ids, &n, &cap, (int)v)) { fprintf(stderr, "averis tokenize: out of memory\n"); goto done; }
            p = q;
        }
        size_t need = bpe_decode(&tok, ids, n, NULL, 0);
        if (!(out = malloc(need + 1))) { fprintf(stderr, "averis tokenize: out of memory\n"); goto done; }
        bpe_decode(&tok, ids, n, out, need + 1);
        if (fwrite(out, 1, need, stdout) != need || fflush(stdout)) { fprintf(stderr, "averis tokenize: write failed\n"); goto done; }
        rc = 0;
        goto done;
    }
    if ((bos && bpe_append(&ids, &n, &cap, BPE_EOT)) || bpe_encode(&tok, buf ? buf : "", len, &ids, &n, &cap)) {
        fprintf(stderr, "averis tokenize: %s\n", averis_last_error());
        goto done;
    }
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    putchar('\n');
    rc = fflush(stdout) ? 1 : 0;
done:
    free(buf);
    free(out);
    free(ids);
    bpe_free(&tok);
    return rc;
}
