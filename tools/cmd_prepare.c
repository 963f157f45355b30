/* averis prepare — text files or R data files → BPE tokenizer + llm.c shards. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "averis/data.h"
#include "averis/io.h"
#include "averis/tokenizer.h"
#include "cli.h"

static void prepare_usage(FILE *f) {
    fprintf(f,
            "usage: averis prepare --out DIR [options] FILE...\n"
            "\n"
            "Builds a training set from text: each FILE is a document (plain UTF-8\n"
            "text), or an R data file (*.rdb, e.g. Rdata.rdb of r-cran-janeaustenr)\n"
            "whose character vectors become one document each. A UTF-8 BOM, CRLF\n"
            "line ends and Project Gutenberg header/footer are removed. The last\n"
            "--val-frac of every document is held out for validation. Trains a\n"
            "byte-level BPE tokenizer on the training text (or loads --tokenizer)\n"
            "and writes, atomically:\n"
            "  DIR/tokenizer.bpe     the tokenizer\n"
            "  DIR/tokenizer.json, tokenizer_config.json, generation_config.json\n"
            "                        the same tokenizer for Hugging Face (AutoTokenizer)\n"
            "  DIR/train_000000.bin  training tokens (llm.c shard format)\n"
            "  DIR/val_000000.bin    validation tokens\n"
            "\n"
            "options:\n"
            "  --out DIR          output directory (created if missing; required)\n"
            "  --vocab N          vocabulary size, 257..65536 (default 4096)\n"
            "  --val-frac F       held-out share of each document (default 0.05)\n"
            "  --tokenizer FILE   use this tokenizer instead of training one\n"
            "  -h, --help         this text\n");
}

static void progress(int done, int total) {
    fprintf(stderr, "\r  bpe: %d/%d merges", done, total);
    if (done == total) fputc('\n', stderr);
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int cmd_prepare(int argc, char **argv) {
    const char *out = NULL, *tokpath = NULL;
    int vocab = 4096;
    double val_frac = 0.05;
    const char **files = calloc((size_t)argc, sizeof *files);
    int nfiles = 0;
    if (!files) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { prepare_usage(stdout); free(files); return 0; }
        else if (!strcmp(a, "--out")) { CLI_NEED_VAL("prepare"); out = val; }
        else if (!strcmp(a, "--tokenizer")) { CLI_NEED_VAL("prepare"); tokpath = val; }
        else if (!strcmp(a, "--vocab")) { CLI_NEED_VAL("prepare"); if (!cli_parse_int("--vocab", val, 257, 65536, &vocab)) return 2; }
        else if (!strcmp(a, "--val-frac")) { CLI_NEED_VAL("prepare"); if (!cli_parse_double("--val-frac", val, 0.0, 0.5, &val_frac)) return 2; }
        else if (a[0] == '-' && a[1]) { fprintf(stderr, "averis prepare: unknown option '%s' (try --help)\n", a); return 2; }
        else files[nfiles++] = a;
    }
    if (!out || !nfiles) {
        fprintf(stderr, "averis prepare: %s (try --help)\n", !out ? "--out DIR is required" : "no input files");
        free(files);
        return 2;
    }
    if (averis_mkdir_p(out)) {
        fprintf(stderr, "averis prepare: %s\n", averis_last_error());
        free(files);
        return 1;
    }
    int rc = 1;
    text_docs docs = {0};
    bpe_tokenizer tok = {0};
    int *tr = NULL, *va = NULL;
    size_t ntr = 0, nva = 0, ctr = 0, cva = 0, total_bytes = 0;
    char *joined = NULL;
    uint16_t *u16 = NULL;
    for (int f = 0; f < nfiles; f++) {
        int before = docs.n;
        averis_status st = ends_with(files[f], ".rdb") ? rdata_read_texts(files[f], &docs) : text_read_file(files[f], &docs);
        if (st) { fprintf(stderr, "averis prepare: %s\n", averis_last_error()); goto done; }
        size_t bytes = 0;
        for (int d = before; d < docs.n; d++) bytes += docs.len[d];
        total_bytes += bytes;
        fprintf(stderr, "  %s: %d document%s, %zu bytes\n", files[f], docs.n - before, docs.n - before == 1 ? "" : "s", bytes);
    }
    if (total_bytes == 0) {
        fprintf(stderr, "averis prepare: no text in the input files (%d documents, 0 bytes)\n", docs.n);
        goto done;
    }
    /* train part of each document: up to the first newline after (1 − val_frac) of it */
    size_t *cut = calloc((size_t)docs.n + 1, sizeof *cut), joined_len = 0;
    if (!cut) goto done;
    for (int d = 0; d < docs.n; d++) {
        size_t c = docs.len[d] - (size_t)((double)docs.len[d] * val_frac);
        while (c < docs.len[d] && docs.text[d][c] != '\n') c++;
        cut[d] = c;
        joined_len += c + 1;
    }
    char tpath[4200];
    if (tokpath) {
        if (bpe_load(&tok, tokpath)) { fprintf(stderr, "averis prepare: %s\n", averis_last_error()); free(cut); goto done; }
    } else {
        if (!(joined = malloc(joined_len + 1))) { free(cut); goto done; }
        size_t k = 0;
        for (int d = 0; d < docs.n; d++) {
            memcpy(joined + k, docs.text[d], cut[d]);
            k += cut[d];
            joined[k++] = '\n';
        }
        fprintf(stderr, "  training a %d-token BPE on %zu bytes\n", vocab, k);
        if (bpe_train(joined, k, vocab, &tok, progress)) {
            fprintf(stderr, "averis prepare: %s\n", averis_last_error());
            free(cut);
            goto done;
        }
    }
    snprintf(tpath, sizeof tpath, "%s/tokenizer.bpe", out);
    if (bpe_save(&tok, tpath)) { fprintf(stderr, "averis prepare: %s\n", averis_last_error()); free(cut); goto done; }
    if (bpe_save_hf(&tok, out, 0)) /* a tokenizer that tokenizer.json cannot express still trains */
        fprintf(stderr, "averis prepare: warning: no Hugging Face tokenizer files: %s\n", averis_last_error());
    for (int d = 0; d < docs.n; d++) { /* every document starts with <|endoftext|>, as in llm.c */
        averis_status st = bpe_append(&tr, &ntr, &ctr, BPE_EOT);
        if (!st) st = bpe_encode(&tok, docs.text[d], cut[d], &tr, &ntr, &ctr);
        if (!st) st = bpe_append(&va, &nva, &cva, BPE_EOT);
        if (!st) st = bpe_encode(&tok, docs.text[d] + cut[d], docs.len[d] - cut[d], &va, &nva, &cva);
        if (st) {
            fprintf(stderr, "averis prepare: %s\n", averis_last_error());
            free(cut);
            goto done;
        }
    }
    free(cut);
    size_t nmax = ntr > nva ? ntr : nva;
    if (!(u16 = malloc((nmax ? nmax : 1) * 2))) goto done;
    const struct { const char *name; int *ids; size_t n; } sp[2] = {{"train", tr, ntr}, {"val", va, nva}};
    for (int s2 = 0; s2 < 2; s2++) {
        for (size_t i = 0; i < sp[s2].n; i++) {
            if (sp[s2].ids[i] < 0 || sp[s2].ids[i] > 65535) { /* bpe_load refuses such vocabularies: a backstop */
                fprintf(stderr, "averis prepare: token id %d does not fit a uint16 shard\n", sp[s2].ids[i]);
                goto done;
            }
            u16[i] = (uint16_t)sp[s2].ids[i];
        }
        char path[4200];
        snprintf(path, sizeof path, "%s/%s_000000.bin", out, sp[s2].name);
        if (shard_write(path, u16, sp[s2].n)) { fprintf(stderr, "averis prepare: %s\n", averis_last_error()); goto done; }
    }
    printf("prepared %s: %d documents, %zu bytes of text, vocab %d, %zu train + %zu val tokens (%.2f bytes/token)\n",
           out, docs.n, total_bytes, tok.vocab_size, ntr, nva, (double)total_bytes / (double)(ntr + nva));
    rc = 0;
done:
    text_docs_free(&docs);
    bpe_free(&tok);
    free(tr); free(va); free(joined); free(u16); free(files);
    return rc;
}
