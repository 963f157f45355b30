/* averis prepare — text files or R data files → BPE tokenizer + llm.c shards. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
            "--val-frac of every document is held out for validation, or with\n"
            "--val-docs whole documents are. Trains a byte-level BPE tokenizer on\n"
            "the training text (or a sample of it, or loads --tokenizer), encodes\n"
            "in threads (the output does not depend on their number) and writes,\n"
            "atomically:\n"
            "  DIR/tokenizer.bpe     the tokenizer\n"
            "  DIR/tokenizer.json, tokenizer_config.json, generation_config.json\n"
            "                        the same tokenizer for Hugging Face (AutoTokenizer)\n"
            "  DIR/train_000000.bin  training tokens (llm.c shard format)\n"
            "  DIR/val_000000.bin    validation tokens\n"
            "Progress and throughput (MB/s) go to stderr.\n"
            "\n"
            "options:\n"
            "  --out DIR          output directory (created if missing; required)\n"
            "  --files-from LIST  also read the FILEs named in LIST, one path a line ('-': stdin)\n"
            "  --vocab N          vocabulary size, 257..65536 (default 4096)\n"
            "  --val-frac F       held-out share of each document (default 0.05)\n"
            "  --val-docs F       hold out whole documents instead: those whose name (path,\n"
            "                     path#k for an R vector) hashes below F, 0 < F ≤ 0.5\n"
            "  --bpe-sample-mb M  train the BPE on about M MB of training documents, chosen\n"
            "                     by a hash of their names (default 0: all the training text)\n"
            "  --tokenizer FILE   use this tokenizer instead of training one\n"
            "  --threads N        encoding threads (default: the online CPUs)\n"
            "  -h, --help         this text\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double g_bpe_last;
static void bpe_progress(int done, int total) { /* a line a second, for logs */
    double t = now_s();
    if (done < total && t - g_bpe_last < 1.0) return;
    g_bpe_last = t;
    fprintf(stderr, "  bpe: %d/%d merges\n", done, total);
}

static double g_enc_t0, g_enc_last;
static size_t g_enc_base, g_enc_all; /* bytes of the splits before this one; of all */
static void enc_progress(size_t done, size_t total) {
    double t = now_s();
    (void)total;
    if (t - g_enc_last < 1.0) return;
    g_enc_last = t;
    fprintf(stderr, "  encode: %.1f/%.1f MB, %.1f MB/s\n", (double)(g_enc_base + done) / 1e6, (double)g_enc_all / 1e6,
            (double)(g_enc_base + done) / 1e6 / (t - g_enc_t0 > 1e-9 ? t - g_enc_t0 : 1e-9));
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* A uniform 64-bit hash of a document's name and a salt: the split and the sample. */
static uint64_t name_hash(const char *name, uint64_t salt) {
    uint64_t h = 1469598103934665603ull ^ salt;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 1099511628211ull;
    h ^= h >> 33; h *= 0xff51afd7ed558ccdull; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

typedef struct { uint64_t key; int doc; } keyed;
static int cmp_keyed(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key ? 1 : (x->doc > y->doc) - (x->doc < y->doc);
}

/* The FILE arguments and the lines of --files-from, as one list. */
typedef struct { char **v; int n, cap; } strlist;
static int strlist_push(strlist *l, const char *s) {
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 64;
        char **nv = realloc(l->v, (size_t)nc * sizeof *nv);
        if (!nv) return 0;
        l->v = nv; l->cap = nc;
    }
    return (l->v[l->n] = strdup(s)) ? (l->n++, 1) : 0;
}
static void strlist_free(strlist *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}
static int read_list(const char *path, strlist *l) {
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f) { fprintf(stderr, "averis prepare: --files-from %s: cannot open\n", path); return 0; }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int ok = 1;
    while (ok && (n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n > 0 && !strlist_push(l, line)) { fprintf(stderr, "averis prepare: out of memory\n"); ok = 0; }
    }
    free(line);
    if (f != stdin) fclose(f);
    return ok;
}

int cmd_prepare(int argc, char **argv) {
    const char *out = NULL, *tokpath = NULL;
    int vocab = 4096, threads = 0;
    double val_frac = 0.05, val_docs = 0.0, sample_mb = 0.0;
    strlist files = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { prepare_usage(stdout); strlist_free(&files); return 0; }
        else if (!strcmp(a, "--out")) { CLI_NEED_VAL("prepare"); out = val; }
        else if (!strcmp(a, "--tokenizer")) { CLI_NEED_VAL("prepare"); tokpath = val; }
        else if (!strcmp(a, "--files-from")) { CLI_NEED_VAL("prepare"); ok = read_list(val, &files); }
        else if (!strcmp(a, "--vocab")) { CLI_NEED_VAL("prepare"); ok = cli_parse_int("--vocab", val, 257, 65536, &vocab); }
        else if (!strcmp(a, "--val-frac")) { CLI_NEED_VAL("prepare"); ok = cli_parse_double("--val-frac", val, 0.0, 0.5, &val_frac); }
        else if (!strcmp(a, "--val-docs")) { CLI_NEED_VAL("prepare"); ok = cli_parse_double("--val-docs", val, 1e-9, 0.5, &val_docs); }
        else if (!strcmp(a, "--bpe-sample-mb")) { CLI_NEED_VAL("prepare"); ok = cli_parse_double("--bpe-sample-mb", val, 0.0, 1e6, &sample_mb); }
        else if (!strcmp(a, "--threads")) { CLI_NEED_VAL("prepare"); ok = cli_parse_int("--threads", val, 1, 1024, &threads); }
        else if (a[0] == '-' && a[1]) { fprintf(stderr, "averis prepare: unknown option '%s' (try --help)\n", a); ok = 0; }
        else ok = strlist_push(&files, a);
        if (!ok) { strlist_free(&files); return 2; }
    }
    if (!out || !files.n) {
        fprintf(stderr, "averis prepare: %s (try --help)\n", !out ? "--out DIR is required" : "no input files");
        strlist_free(&files);
        return 2;
    }
    if (averis_mkdir_p(out)) {
        fprintf(stderr, "averis prepare: %s\n", averis_last_error());
        strlist_free(&files);
        return 1;
    }
    int rc = 1;
    text_docs docs = {0};
    bpe_tokenizer tok = {0};
    int *tr = NULL, *va = NULL;
    size_t ntr = 0, nva = 0, total_bytes = 0;
    char *joined = NULL, **names = NULL;
    uint16_t *u16 = NULL;
    const char **ptext = NULL;
    size_t *plen = NULL, *cut = NULL;
    int *is_val = NULL;
    keyed *order = NULL;
    double t0 = now_s(), t_read, t_bpe, t_enc;
    int nnames = 0, quiet_files = files.n > 20; /* a line per file only for a few */
    for (int f = 0; f < files.n; f++) {
        int before = docs.n;
        averis_status st = ends_with(files.v[f], ".rdb") ? rdata_read_texts(files.v[f], &docs) : text_read_file(files.v[f], &docs);
        if (st) { fprintf(stderr, "averis prepare: %s\n", averis_last_error()); goto done; }
        char **nn = realloc(names, (size_t)docs.n * sizeof *nn + 1);
        if (!nn) goto oom;
        names = nn;
        size_t bytes = 0;
        for (int d = before; d < docs.n; d++) {
            bytes += docs.len[d];
            size_t L = strlen(files.v[f]) + 16;
            if (!(names[d] = malloc(L))) goto oom;
            nnames = d + 1;
            if (docs.n - before == 1 && !ends_with(files.v[f], ".rdb")) snprintf(names[d], L, "%s", files.v[f]);
            else snprintf(names[d], L, "%s#%d", files.v[f], d - before);
        }
        total_bytes += bytes;
        if (!quiet_files)
            fprintf(stderr, "  %s: %d document%s, %zu bytes\n", files.v[f], docs.n - before, docs.n - before == 1 ? "" : "s", bytes);
        else if ((f + 1) % 2000 == 0 || f + 1 == files.n)
            fprintf(stderr, "  read: %d/%d files, %.1f MB\n", f + 1, files.n, (double)total_bytes / 1e6);
    }
    t_read = now_s() - t0;
    if (total_bytes == 0) {
        fprintf(stderr, "averis prepare: no text in the input files (%d documents, 0 bytes)\n", docs.n);
        goto done;
    }
    /* the split: with --val-docs whole documents by name hash; else the train
     * part of each document runs up to the first newline after (1 − val_frac) of it */
    cut = calloc((size_t)docs.n + 1, sizeof *cut);
    is_val = calloc((size_t)docs.n + 1, sizeof *is_val);
    if (!cut || !is_val) goto oom;
    int nval_docs = 0;
    for (int d = 0; d < docs.n; d++) {
        if (val_docs > 0) {
            is_val[d] = (double)(name_hash(names[d], 0x5eed) >> 11) * 0x1p-53 < val_docs;
            nval_docs += is_val[d];
            cut[d] = is_val[d] ? 0 : docs.len[d];
            continue;
        }
        size_t c = docs.len[d] - (size_t)((double)docs.len[d] * val_frac);
        while (c < docs.len[d] && docs.text[d][c] != '\n') c++;
        cut[d] = c;
    }
    if (val_docs > 0)
        fprintf(stderr, "  split: %d of %d documents held out for validation (--val-docs %g)\n", nval_docs, docs.n, val_docs);
    char tpath[4200];
    double tb = now_s();
    if (tokpath) {
        if (bpe_load(&tok, tokpath)) { fprintf(stderr, "averis prepare: %s\n", averis_last_error()); goto done; }
    } else {
        /* the BPE's text: every training part, or (--bpe-sample-mb) whole
         * training documents in the order of a hash of their names until M MB */
        if (!(order = malloc(((size_t)docs.n + 1) * sizeof *order))) goto oom;
        int norder = 0;
        for (int d = 0; d < docs.n; d++)
            if (cut[d]) order[norder++] = (keyed){sample_mb > 0 ? name_hash(names[d], 0xb9e) : (uint64_t)d, d};
        if (sample_mb > 0) qsort(order, (size_t)norder, sizeof *order, cmp_keyed);
        size_t limit = sample_mb > 0 ? (size_t)(sample_mb * 1e6) : (size_t)-1, joined_len = 0;
        int take = 0;
        while (take < norder && joined_len < limit) joined_len += cut[order[take++].doc] + 1;
        if (!(joined = malloc(joined_len + 1))) goto oom;
        size_t k = 0;
        for (int i = 0; i < take; i++) {
            int d = order[i].doc;
            memcpy(joined + k, docs.text[d], cut[d]);
            k += cut[d];
            joined[k++] = '\n';
        }
        fprintf(stderr, "  training a %d-token BPE on %zu bytes (%d documents%s)\n", vocab, k, take,
                sample_mb > 0 ? ", a sample" : "");
        if (bpe_train(joined, k, vocab, &tok, bpe_progress)) {
            fprintf(stderr, "averis prepare: %s\n", averis_last_error());
            goto done;
        }
        free(joined);
        joined = NULL;
    }
    t_bpe = now_s() - tb;
    snprintf(tpath, sizeof tpath, "%s/tokenizer.bpe", out);
    if (bpe_save(&tok, tpath)) { fprintf(stderr, "averis prepare: %s\n", averis_last_error()); goto done; }
    if (bpe_save_hf(&tok, out, 0)) /* a tokenizer that tokenizer.json cannot express still trains */
        fprintf(stderr, "averis prepare: warning: no Hugging Face tokenizer files: %s\n", averis_last_error());
    /* encode: every piece starts with <|endoftext|>, as in llm.c */
    ptext = malloc(((size_t)docs.n + 1) * sizeof *ptext);
    plen = malloc(((size_t)docs.n + 1) * sizeof *plen);
    if (!ptext || !plen) goto oom;
    double te = now_s();
    g_enc_t0 = te;
    g_enc_last = te;
    g_enc_all = total_bytes;
    for (int s2 = 0; s2 < 2; s2++) {
        int np = 0;
        for (int d = 0; d < docs.n; d++) {
            if (val_docs > 0 && is_val[d] != s2) continue;
            ptext[np] = docs.text[d] + (s2 ? cut[d] : 0);
            plen[np++] = s2 ? docs.len[d] - cut[d] : cut[d];
        }
        g_enc_base = 0;
        for (int d = 0; s2 && d < docs.n; d++) g_enc_base += cut[d];
        if (bpe_encode_texts(&tok, np, ptext, plen, 1, threads, s2 ? &va : &tr, s2 ? &nva : &ntr, enc_progress)) {
            fprintf(stderr, "averis prepare: %s\n", averis_last_error());
            goto done;
        }
    }
    t_enc = now_s() - te;
    fprintf(stderr, "  encode: %.1f MB in %.2f s, %.1f MB/s\n", (double)total_bytes / 1e6, t_enc,
            (double)total_bytes / 1e6 / (t_enc > 1e-9 ? t_enc : 1e-9));
    size_t nmax = ntr > nva ? ntr : nva;
    if (!(u16 = malloc((nmax ? nmax : 1) * 2))) goto oom;
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
    double t_all = now_s() - t0;
    printf("prepared %s: %d documents, %zu bytes of text, vocab %d, %zu train + %zu val tokens (%.2f bytes/token)\n",
           out, docs.n, total_bytes, tok.vocab_size, ntr, nva, (double)total_bytes / (double)(ntr + nva));
    fprintf(stderr, "  time: read %.2f s, bpe %.2f s%s, encode %.2f s (%.1f MB/s), all %.2f s (%.1f MB/s)\n", t_read,
            t_bpe, tokpath ? " (loaded)" : "", t_enc, (double)total_bytes / 1e6 / (t_enc > 1e-9 ? t_enc : 1e-9), t_all,
            (double)total_bytes / 1e6 / t_all);
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "averis prepare: out of memory\n");
done:
    if (names)
        for (int d = 0; d < nnames; d++) free(names[d]);
    free(names);
    text_docs_free(&docs);
    bpe_free(&tok);
    free(tr); free(va); free(joined); free(u16); free(ptext); free(plen); free(cut); free(is_val); free(order);
    strlist_free(&files);
    return rc;
}
