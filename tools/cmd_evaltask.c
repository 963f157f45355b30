/* averis eval --task — zero-shot multiple choice by log-likelihood, scored
 * the way lm-evaluation-harness (`lm_eval --model hf`, output_type
 * multiple_choice) scores a task: for each choice, the summed log-likelihood
 * of its tokens after the context's; acc = the argmax is the label, acc_norm
 * = the argmax of loglik / characters of the choice, acc_bytes = of loglik /
 * its UTF-8 bytes; each with the standard error of the mean. The tokens are
 * lm-eval's (HFLM._encode_pair with the checkpoint's tokenizer.json, which
 * puts <|endoftext|> first): trailing whitespace of the context moves to the
 * choice, whole = [EOT] + enc(context + choice), ctx = [EOT] + enc(context),
 * the choice's tokens = whole[len(ctx):], scored after ctx; left-truncated to
 * --seq + 1 tokens. docs/huggingface.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "averis/ckpt.h"
#include "averis/cuda.h"
#include "averis/io.h"
#include "averis/json.h"
#include "averis/tokenizer.h"
#include "cli.h"
#include "cmd_evaltask.h"

typedef struct {
    int *tok;    /* [len]: ctx_enc + cont_enc, left-truncated; inputs tok[0..len-2], targets tok[1..] */
    int len, ncont;
    int item, choice;
    double loglik;
} mc_req;

typedef struct {
    int nchoices, label, line;
    int *nchars, *nbytes; /* per choice */
} mc_item;

/* Python's str.isspace() for one code point (what str.rstrip() strips). */
static int py_space(unsigned cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}
/* Length of s[0..n) without its trailing whitespace (UTF-8, as Python's rstrip). */
static size_t rstrip_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    while (n > 0) {
        size_t k = n - 1;
        while (k > 0 && n - k < 4 && (u[k] & 0xC0) == 0x80) k--; /* start of the last code point */
        unsigned cp = u[k];
        size_t L = n - k;
        if (L == 2 && (cp & 0xE0) == 0xC0) cp = ((cp & 0x1F) << 6) | (u[k + 1] & 0x3F);
        else if (L == 3 && (cp & 0xF0) == 0xE0) cp = ((cp & 0x0F) << 12) | ((u[k + 1] & 0x3F) << 6) | (u[k + 2] & 0x3F);
        else if (L != 1) break; /* 4-byte code points are never spaces; invalid bytes stop here */
        if (!py_space(cp)) break;
        n = k;
    }
    return n;
}
/* Characters (code points) of a UTF-8 string: Python's len(). */
static int utf8_chars(const char *s) {
    int n = 0;
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) n += (*u & 0xC0) != 0x80;
    return n;
}

static averis_status encode(const bpe_tokenizer *tok, const char *s, size_t n, int **ids, size_t *len) {
    size_t cap = 0;
    *ids = NULL;
    *len = 0;
    averis_status st = bpe_append(ids, len, &cap, BPE_EOT);
    if (!st) st = bpe_encode(tok, s, n, ids, len, &cap);
    return st;
}

/* One request for (context, choice), lm-eval's encoding (see the top). */
static averis_status make_request(const bpe_tokenizer *tok, const char *ctx, const char *cont, int maxlen, mc_req *r) {
    size_t cl = strlen(ctx), kl = strlen(cont), keep = rstrip_len(ctx, cl);
    char *whole = malloc(cl + kl + 1);
    int *w = NULL, *c = NULL;
    size_t nw = 0, nc = 0;
    averis_status st = whole ? AVERIS_OK : averis_fail(AVERIS_ENOMEM, "eval: out of memory");
    if (!st) {
        memcpy(whole, ctx, cl);
        memcpy(whole + cl, cont, kl + 1);
        st = encode(tok, whole, cl + kl, &w, &nw);
    }
    if (!st) st = encode(tok, ctx, keep, &c, &nc);
    if (!st) {
        size_t ncont = nw > nc ? nw - nc : 0, total = nc + ncont, start = 0;
        if (ncont == 0) st = averis_fail(AVERIS_EINVAL, "the choice has no tokens after the context's");
        else if (ncont > (size_t)maxlen) st = averis_fail(AVERIS_EINVAL, "the choice has %zu tokens, more than --seq %d", ncont, maxlen);
        else {
            if (total > (size_t)maxlen + 1) start = total - ((size_t)maxlen + 1);
            r->len = (int)(total - start);
            r->ncont = (int)ncont;
            if (!(r->tok = malloc((size_t)r->len * sizeof *r->tok))) st = averis_fail(AVERIS_ENOMEM, "eval: out of memory");
            for (size_t i = start; !st && i < total; i++) r->tok[i - start] = i < nc ? c[i] : w[i];
        }
    }
    free(whole);
    free(w);
    free(c);
    return st;
}

/* Reads the JSONL task into items and requests; errors name FILE and line. */
static averis_status read_task(const char *path, const bpe_tokenizer *tok, int maxlen, int limit, mc_item **items_out,
                               int *nitems_out, mc_req **reqs_out, int *nreqs_out) {
    char *buf;
    size_t len;
    averis_status st = averis_read_file(path, &buf, &len);
    if (st) return st;
    mc_item *items = NULL;
    mc_req *reqs = NULL;
    int ni = 0, nr = 0, capi = 0, capr = 0, line = 0;
    char what[4300], pb[80];
    for (size_t pos = 0; !st && pos < len && (limit <= 0 || ni < limit);) {
        size_t e = pos;
        while (e < len && buf[e] != '\n') e++;
        line++;
        size_t s = pos;
        pos = e + 1;
        while (s < e && (buf[s] == ' ' || buf[s] == '\t' || buf[s] == '\r')) s++;
        if (s == e) continue; /* blank line */
        snprintf(what, sizeof what, "%s line %d", path, line);
        json j;
        if ((st = json_parse(buf + s, e - s, what, &j))) break;
        const json *ctx = json_get(&j, "context"), *ch = json_get(&j, "choices"), *lab = json_get(&j, "label");
        if (j.type != JSON_OBJ) st = averis_fail(AVERIS_EFORMAT, "%s: not a JSON object", what);
        else if (!ctx || ctx->type != JSON_STR) st = averis_fail(AVERIS_EFORMAT, "%s: \"context\" is missing or not a string", what);
        else if (!ctx->str[0]) st = averis_fail(AVERIS_EFORMAT, "%s: \"context\" is empty", what);
        else if (!ch || ch->type != JSON_ARR || ch->n < 1)
            st = averis_fail(AVERIS_EFORMAT, "%s: \"choices\" is missing or not a non-empty array", what);
        else if (!lab || lab->type != JSON_NUM || lab->num != floor(lab->num) || lab->num < 0 || lab->num >= ch->n)
            st = averis_fail(AVERIS_EFORMAT, "%s: \"label\" is missing or not an integer in 0..%d", what, ch ? ch->n - 1 : 0);
        for (int k = 0; !st && k < ch->n; k++)
            if (ch->items[k].type != JSON_STR || !ch->items[k].str[0])
                st = averis_fail(AVERIS_EFORMAT, "%s: choice %d is not a non-empty string", what, k);
        if (!st && ni == capi) {
            capi = capi ? 2 * capi : 256;
            mc_item *n2 = realloc(items, (size_t)capi * sizeof *n2);
            if (!n2) st = averis_fail(AVERIS_ENOMEM, "eval: out of memory");
            else items = n2;
        }
        if (!st) {
            mc_item *it = &items[ni];
            memset(it, 0, sizeof *it);
            it->nchoices = ch->n, it->label = (int)lab->num, it->line = line;
            it->nchars = malloc((size_t)ch->n * sizeof *it->nchars);
            it->nbytes = malloc((size_t)ch->n * sizeof *it->nbytes);
            ni++;
            if (!it->nchars || !it->nbytes) st = averis_fail(AVERIS_ENOMEM, "eval: out of memory");
            for (int k = 0; !st && k < ch->n; k++) {
                it->nchars[k] = utf8_chars(ch->items[k].str);
                it->nbytes[k] = (int)strlen(ch->items[k].str);
                if (nr == capr) {
                    capr = capr ? 2 * capr : 1024;
                    mc_req *n2 = realloc(reqs, (size_t)capr * sizeof *n2);
                    if (!n2) { st = averis_fail(AVERIS_ENOMEM, "eval: out of memory"); break; }
                    reqs = n2;
                }
                mc_req *r = &reqs[nr];
                memset(r, 0, sizeof *r);
                r->item = ni - 1, r->choice = k;
                if ((st = make_request(tok, ctx->str, ch->items[k].str, maxlen, r))) {
                    char why[512];
                    snprintf(why, sizeof why, "%s", averis_last_error());
                    st = averis_fail(st, "%s: choice %d ('%s'): %s", what, k, json_printable(ch->items[k].str, pb, sizeof pb), why);
                } else nr++;
            }
        }
        json_free(&j);
    }
    free(buf);
    if (!st && ni == 0) st = averis_fail(AVERIS_EFORMAT, "%s: no items (one JSON object a line: context, choices, label)", path);
    *items_out = items, *nitems_out = ni, *reqs_out = reqs, *nreqs_out = nr;
    return st;
}

static int cmp_req(const void *a, const void *b) { /* longest first, then file order */
    const mc_req *x = *(const mc_req *const *)a, *y = *(const mc_req *const *)b;
    if (x->len != y->len) return y->len - x->len;
    if (x->item != y->item) return x->item - y->item;
    return x->choice - y->choice;
}

static int pow2_at_least(int n) {
    int p = 1;
    while (p < n) p *= 2;
    return p;
}

/* The GPU model's length for a batch whose longest request has T inputs:
 * powers of two from 64 (the lengths the trainer runs, aligned for the
 * attention's GEMMs), at most Tmax rounded up to 64 (and max_pos), never
 * below T. Non-decreasing in T, so gpu_len(Tmax) bounds every batch's. */
static int gpu_len(int T, int Tmax, int max_pos) {
    int cap = (Tmax + 63) / 64 * 64, want = pow2_at_least(T < 64 ? 64 : T);
    if (cap > max_pos) cap = max_pos;
    if (want > cap) want = cap > Tmax ? cap : Tmax; /* ≥ T: the longest come first */
    return want;
}

/* The log-likelihood of every request, in batches of B (longest first).
 * On the GPU every batch has B rows of gpu_len() tokens; the batches come
 * longest first, so each length's model is created once (weights uploaded,
 * buffers and attention plans made for that shape) and serves every batch
 * of that length until a shorter one comes. The host buffers hold B ×
 * gpu_len(Tmax) tokens: the GPU length may exceed Tmax (a batch of 40-token
 * requests runs at 64), and avc_model_token_losses writes B × that length. */
static averis_status score(model *m, int gpu, int gpu_index, int B, mc_req *reqs, int nr) {
    mc_req **ord = malloc((size_t)nr * sizeof *ord);
    if (!ord) return averis_fail(AVERIS_ENOMEM, "eval: out of memory");
    for (int i = 0; i < nr; i++) ord[i] = &reqs[i];
    qsort(ord, (size_t)nr, sizeof *ord, cmp_req);
    int Tmax = ord[0]->len - 1 > 0 ? ord[0]->len - 1 : 1, maxpos = m->cfg.max_position_embeddings;
    int Tbuf = gpu ? gpu_len(Tmax, Tmax, maxpos) : Tmax;
    int *in = malloc((size_t)B * Tbuf * sizeof *in), *tg = malloc((size_t)B * Tbuf * sizeof *tg);
    float *tl = malloc((size_t)B * Tbuf * sizeof *tl);
    avc_model *g = NULL;
    int gT = 0, ncreated = 0;
    averis_status st = in && tg && tl ? AVERIS_OK : averis_fail(AVERIS_ENOMEM, "eval: out of memory");
    if (!st && gpu) {
        char desc[256];
        st = avc_init(gpu_index, desc, sizeof desc);
        if (!st) fprintf(stderr, "  on %s\n", desc);
    }
    for (int b0 = 0; !st && b0 < nr; b0 += B) {
        int nb = nr - b0 < B ? nr - b0 : B, T = ord[b0]->len - 1;
        if (T < 1) T = 1;
        if (gpu) {
            int want = gpu_len(T, Tmax, maxpos);
            if (want > Tbuf) { st = averis_fail(AVERIS_EINVAL, "eval: GPU length %d > buffer %d (internal)", want, Tbuf); break; }
            if (!g || want != gT) {
                avc_model_free(g);
                g = NULL;
                if ((st = avc_model_create(&g, m, B, want, NULL))) break;
                gT = want;
                ncreated++;
                fprintf(stderr, "  batches of %d × %d tokens (%s)\n", B, gT, avc_model_describe(g));
            }
            T = gT;
        }
        int rows = gpu ? B : nb;
        for (int r = 0; r < rows; r++)
            for (int t = 0; t < T; t++) {
                const mc_req *q = r < nb ? ord[b0 + r] : NULL;
                int ok = q && t + 1 < q->len;
                in[(size_t)r * T + t] = ok ? q->tok[t] : 0;
                tg[(size_t)r * T + t] = ok ? q->tok[t + 1] : 0;
            }
        float loss;
        if (gpu) {
            st = avc_model_step(g, in, tg, 0, 1.0f, 0, &loss);
            if (!st) st = avc_model_token_losses(g, tl);
        } else {
            st = model_forward(m, in, tg, rows, T, &loss);
            if (!st) memcpy(tl, m->tok_loss, (size_t)rows * T * sizeof *tl);
        }
        for (int r = 0; !st && r < nb; r++) {
            mc_req *q = ord[b0 + r];
            double ll = 0;
            for (int t = q->len - 1 - q->ncont; t < q->len - 1; t++) ll -= tl[(size_t)r * T + t];
            q->loglik = ll;
        }
        if (!st && (b0 / B) % 50 == 49) fprintf(stderr, "\r  %d/%d requests", b0 + nb, nr);
    }
    if (nr > 50 * B) fputc('\n', stderr);
    if (gpu && !st) fprintf(stderr, "  %d GPU model%s for %d batches\n", ncreated, ncreated == 1 ? "" : "s", (nr + B - 1) / B);
    avc_model_free(g);
    free(ord); free(in); free(tg); free(tl);
    return st;
}

static void put_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
        if (*u == '"' || *u == '\\') fprintf(f, "\\%c", *u);
        else if (*u < 0x20) fprintf(f, "\\u%04x", *u);
        else fputc(*u, f);
    }
    fputc('"', f);
}

typedef struct { double mean, stderr_; } stat2;
static stat2 mean_stderr(const double *x, int n) { /* lm-eval's mean and mean_stderr (sample stddev / √n) */
    stat2 s = {0, 0};
    for (int i = 0; i < n; i++) s.mean += x[i];
    s.mean /= n;
    double v = 0;
    for (int i = 0; i < n; i++) v += (x[i] - s.mean) * (x[i] - s.mean);
    s.stderr_ = n > 1 ? sqrt(v / (n - 1)) / sqrt((double)n) : 0.0;
    return s;
}

int eval_task(const eval_task_opts *o) {
    char dir[4200], tp[4300];
    model m;
    int tseq = 0, rc = 1;
    if (ckpt_resolve(o->ckpt, dir, sizeof dir) || ckpt_load_model(dir, o->recipe, &m, &tseq)) {
        fprintf(stderr, "averis eval: %s\n", averis_last_error());
        return 1;
    }
    snprintf(tp, sizeof tp, "%s/tokenizer.bpe", dir);
    bpe_tokenizer tok;
    if (bpe_load(&tok, o->tokenizer ? o->tokenizer : tp)) {
        fprintf(stderr, "averis eval: %s\n", averis_last_error());
        model_free(&m);
        return 1;
    }
    int maxlen = o->seq > 0 ? o->seq : m.cfg.max_position_embeddings; /* lm-eval: config.max_position_embeddings */
    mc_item *items = NULL;
    mc_req *reqs = NULL;
    int ni = 0, nr = 0;
    double *acc = NULL, *accn = NULL, *accb = NULL;
    FILE *sf = NULL;
    averis_status st = read_task(o->task, &tok, maxlen, o->limit, &items, &ni, &reqs, &nr);
    if (st) { fprintf(stderr, "averis eval: %s\n", averis_last_error()); goto done; }
    fprintf(stderr, "  %s: %d items, %d requests, recipe %s, %s\n", o->task, ni, nr, qlin_recipe_name(m.recipe.id),
            o->gpu ? "cuda" : "cpu");
    if ((st = score(&m, o->gpu, o->gpu_index, o->batch, reqs, nr))) {
        fprintf(stderr, "averis eval: %s\n", averis_last_error());
        goto done;
    }
    acc = malloc((size_t)ni * sizeof *acc), accn = malloc((size_t)ni * sizeof *accn), accb = malloc((size_t)ni * sizeof *accb);
    if (!acc || !accn || !accb) { fprintf(stderr, "averis eval: out of memory\n"); goto done; }
    if (o->scores && !(sf = fopen(o->scores, "w"))) {
        fprintf(stderr, "averis eval: %s: cannot open for writing\n", o->scores);
        goto done;
    }
    for (int i = 0, r = 0; i < ni; i++) { /* requests are in item, choice order */
        const mc_item *it = &items[i];
        int best = 0, bestn = 0, bestb = 0;
        for (int k = 0; k < it->nchoices; k++) { /* numpy's argmax: the first maximum */
            double ll = reqs[r + k].loglik;
            if (ll > reqs[r + best].loglik) best = k;
            if (ll / it->nchars[k] > reqs[r + bestn].loglik / it->nchars[bestn]) bestn = k;
            if (ll / it->nbytes[k] > reqs[r + bestb].loglik / it->nbytes[bestb]) bestb = k;
        }
        acc[i] = best == it->label, accn[i] = bestn == it->label, accb[i] = bestb == it->label;
        if (sf) {
            fprintf(sf, "{\"item\": %d, \"line\": %d, \"label\": %d, \"pred\": %d, \"pred_norm\": %d, \"loglik\": [", i,
                    it->line, it->label, best, bestn);
            for (int k = 0; k < it->nchoices; k++) fprintf(sf, k ? ", %.17g" : "%.17g", reqs[r + k].loglik);
            fprintf(sf, "], \"tokens\": [");
            for (int k = 0; k < it->nchoices; k++) {
                fprintf(sf, k ? ", [" : "[");
                for (int t = 0; t < reqs[r + k].len; t++) fprintf(sf, t ? ", %d" : "%d", reqs[r + k].tok[t]);
                fprintf(sf, "]");
            }
            fprintf(sf, "], \"ncont\": [");
            for (int k = 0; k < it->nchoices; k++) fprintf(sf, k ? ", %d" : "%d", reqs[r + k].ncont);
            fprintf(sf, "]}\n");
        }
        r += it->nchoices;
    }
    if (sf && fclose(sf)) { sf = NULL; fprintf(stderr, "averis eval: %s: write failed\n", o->scores); goto done; }
    sf = NULL;
    stat2 a = mean_stderr(acc, ni), an = mean_stderr(accn, ni), ab = mean_stderr(accb, ni);
    printf("%s: %s acc %.4f ± %.4f  acc_norm %.4f ± %.4f  acc_bytes %.4f ± %.4f  (%d items, recipe %s, %s)\n", dir,
           o->task, a.mean, a.stderr_, an.mean, an.stderr_, ab.mean, ab.stderr_, ni, qlin_recipe_name(m.recipe.id),
           o->gpu ? "cuda" : "cpu");
    if (o->json) {
        averis_afile af;
        if ((st = averis_afile_open(&af, o->json))) { fprintf(stderr, "averis eval: %s\n", averis_last_error()); goto done; }
        fputs("{\"task\": ", af.f);
        put_json_str(af.f, o->task);
        fputs(", \"checkpoint\": ", af.f);
        put_json_str(af.f, dir);
        fprintf(af.f,
                ", \"recipe\": \"%s\", \"device\": \"%s\", \"items\": %d,\n"
                " \"acc\": %.6f, \"acc_stderr\": %.6f, \"acc_norm\": %.6f, \"acc_norm_stderr\": %.6f,\n"
                " \"acc_bytes\": %.6f, \"acc_bytes_stderr\": %.6f}\n",
                qlin_recipe_name(m.recipe.id), o->gpu ? "cuda" : "cpu", ni, a.mean, a.stderr_, an.mean, an.stderr_, ab.mean,
                ab.stderr_);
        if ((st = averis_afile_commit(&af))) { fprintf(stderr, "averis eval: %s\n", averis_last_error()); goto done; }
    }
    rc = 0;
done:
    if (sf) fclose(sf);
    for (int i = 0; i < ni; i++) { free(items[i].nchars); free(items[i].nbytes); }
    for (int i = 0; i < nr; i++) free(reqs[i].tok);
    free(items); free(reqs); free(acc); free(accn); free(accb);
    bpe_free(&tok);
    model_free(&m);
    return rc;
}
