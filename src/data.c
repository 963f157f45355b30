/* data.c — text extraction (R data files), token shards, batch loader. */
#define _POSIX_C_SOURCE 200809L
#include "averis/data.h"
#include "averis/io.h"
#include "averis/status.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef AVERIS_HAVE_ZLIB
#include <zlib.h>
#endif

void text_docs_free(text_docs *d) {
    for (int i = 0; i < d->n; i++) free(d->text[i]);
    free(d->text);
    free(d->len);
    memset(d, 0, sizeof *d);
}

static averis_status docs_push(text_docs *d, char *text, size_t len) {
    char **nt = realloc(d->text, (size_t)(d->n + 1) * sizeof *nt);
    if (nt) d->text = nt;
    size_t *nl = realloc(d->len, (size_t)(d->n + 1) * sizeof *nl);
    if (nl) d->len = nl;
    if (!nt || !nl) { free(text); return averis_fail(AVERIS_ENOMEM, "text: out of memory"); }
    d->text[d->n] = text;
    d->len[d->n] = len;
    d->n++;
    return AVERIS_OK;
}

averis_status text_read_file(const char *path, text_docs *d) {
    char *b;
    size_t n;
    averis_status st = averis_read_file(path, &b, &n);
    if (st) return st;
    return docs_push(d, b, text_clean(b, n));
}

size_t text_clean(char *s, size_t len) {
    size_t o = 0, i = 0;
    if (len >= 3 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB && (unsigned char)s[2] == 0xBF) i = 3;
    for (; i < len; i++)
        if (!(s[i] == '\r' && i + 1 < len && s[i + 1] == '\n')) s[o++] = s[i];
    s[o] = 0;
    char *start = strstr(s, "*** START OF");
    if (start) {
        char *nl = strchr(start, '\n');
        char *end = nl ? strstr(nl, "*** END OF") : NULL;
        if (nl && end) {
            size_t n = (size_t)(end - (nl + 1));
            memmove(s, nl + 1, n);
            o = n;
            s[o] = 0;
        }
    }
    return o;
}

/* ------------------------------------------------------------ R data */
typedef struct {
    const uint8_t *p;
    size_t n, i;
} xdr;
static int xdr_int(xdr *x, int32_t *v) {
    if (x->i + 4 > x->n) return 0;
    const uint8_t *p = x->p + x->i;
    *v = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
    x->i += 4;
    return 1;
}

/* One serialized object: "X\n", version, R versions, [encoding], a STRSXP. */
static averis_status parse_strsxp(const char *path, int obj, const uint8_t *p, size_t n, text_docs *d) {
    xdr x = {p, n, 2};
    int32_t ver, w, mn, flags, count;
    if (n < 2 || p[0] != 'X' || p[1] != '\n' || !xdr_int(&x, &ver) || !xdr_int(&x, &w) || !xdr_int(&x, &mn))
        return averis_fail(AVERIS_EFORMAT, "%s: object %d is not an R XDR serialization", path, obj);
    if (ver == 3) {
        int32_t el;
        if (!xdr_int(&x, &el) || el < 0 || x.i + (size_t)el > n)
            return averis_fail(AVERIS_EFORMAT, "%s: object %d: bad encoding field", path, obj);
        x.i += (size_t)el;
    }
    if (!xdr_int(&x, &flags) || (flags & 0xFF) != 16 || !xdr_int(&x, &count) || count < 0)
        return averis_fail(AVERIS_EFORMAT, "%s: object %d is not a character vector", path, obj);
    size_t cap = n, len = 0;
    char *out = malloc(cap + 1);
    if (!out) return averis_fail(AVERIS_ENOMEM, "%s: out of memory", path);
    for (int32_t k = 0; k < count; k++) {
        int32_t cf, cl;
        if (!xdr_int(&x, &cf) || !xdr_int(&x, &cl) || (cl > 0 && x.i + (size_t)cl > n)) {
            free(out);
            return averis_fail(AVERIS_EFORMAT, "%s: object %d: string %d truncated", path, obj, k);
        }
        if (cl > 0) {
            memcpy(out + len, p + x.i, (size_t)cl); /* fits: the strings come from the n input bytes */
            len += (size_t)cl;
            x.i += (size_t)cl;
        }
        out[len++] = '\n';
    }
    out[len] = 0;
    return docs_push(d, out, text_clean(out, len));
}

averis_status rdata_read_texts(const char *path, text_docs *d) {
#ifndef AVERIS_HAVE_ZLIB
    (void)d;
    return averis_fail(AVERIS_EUNSUPPORTED, "%s: reading R data needs zlib (install zlib1g-dev and rebuild)", path);
#else
    char *buf;
    size_t n;
    averis_status st = averis_read_file(path, &buf, &n);
    if (st) return st;
    const uint8_t *p = (const uint8_t *)buf;
    size_t i = 0;
    int obj = 0;
    while (!st && i + 4 <= n) {
        uint32_t ulen = (uint32_t)p[i] << 24 | (uint32_t)p[i + 1] << 16 | (uint32_t)p[i + 2] << 8 | p[i + 3];
        i += 4;
        uint8_t *out = malloc((size_t)ulen + 1);
        if (!out) { st = averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); break; }
        z_stream z;
        memset(&z, 0, sizeof z);
        if (inflateInit(&z) != Z_OK) { free(out); st = averis_fail(AVERIS_EFORMAT, "%s: zlib init failed", path); break; }
        z.next_in = (Bytef *)(p + i);
        z.avail_in = (uInt)(n - i);
        z.next_out = out;
        z.avail_out = ulen;
        int zr = inflate(&z, Z_FINISH);
        size_t used = z.total_in, got = z.total_out;
        inflateEnd(&z);
        if (zr != Z_STREAM_END || got != ulen) {
            free(out);
            st = averis_fail(AVERIS_EFORMAT, "%s: object %d: zlib stream corrupt or truncated", path, obj);
            break;
        }
        i += used;
        /* objects that are not character vectors (indexes, data frames) are skipped */
        if (got >= 2 && out[0] == 'X') {
            averis_status s2 = parse_strsxp(path, obj, out, got, d);
            if (s2 && s2 != AVERIS_EFORMAT) st = s2;
        }
        free(out);
        obj++;
    }
    free(buf);
    if (!st && obj == 0) st = averis_fail(AVERIS_EFORMAT, "%s: no R objects found", path);
    return st;
#endif
}

/* ------------------------------------------------------------ shards */
averis_status shard_write(const char *path, const uint16_t *tok, size_t n) {
    if (n > 0x7fffffff) return averis_fail(AVERIS_EINVAL, "%s: %zu tokens exceed one shard", path, n);
    int32_t h[SHARD_HEADER_INTS] = {SHARD_MAGIC, 1, (int32_t)n};
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    if (fwrite(h, sizeof h, 1, af.f) != 1 || fwrite(tok, 2, n, af.f) != n) {
        averis_afile_abort(&af);
        return averis_fail(AVERIS_EIO, "%s: write failed", path);
    }
    return averis_afile_commit(&af);
}

averis_status shard_read(const char *path, uint16_t **tok, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot open shard", path);
    int32_t h[SHARD_HEADER_INTS];
    if (fread(h, sizeof h, 1, f) != 1) {
        fclose(f);
        return averis_fail(AVERIS_EFORMAT, "%s: truncated shard header (want %zu bytes)", path, sizeof h);
    }
    if (h[0] != SHARD_MAGIC || h[1] != 1 || h[2] < 0) {
        fclose(f);
        return averis_fail(AVERIS_EFORMAT, "%s: bad shard header (magic %d, version %d; want %d, 1)", path, h[0], h[1],
                           SHARD_MAGIC);
    }
    size_t cnt = (size_t)h[2];
    long here = ftell(f), end = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    if (here < 0 || end < 0 || fseek(f, here, SEEK_SET) || (size_t)(end - here) != 2 * cnt) {
        fclose(f); /* checked before allocating: the count is the file's word */
        return averis_fail(AVERIS_EFORMAT, "%s: %s: header says %zu tokens (%zu bytes), the file holds %ld bytes after it",
                           path, end - here < (long)(2 * cnt) ? "truncated shard" : "trailing bytes in the shard", cnt,
                           2 * cnt, end - here);
    }
    uint16_t *t = malloc((cnt ? cnt : 1) * 2);
    if (!t) { fclose(f); return averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); }
    size_t got = fread(t, 2, cnt, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != cnt || extra) {
        free(t);
        return averis_fail(AVERIS_EFORMAT, "%s: shard %s: header says %zu tokens, file holds %s%zu", path,
                           got != cnt ? "truncated" : "has trailing bytes", cnt, got != cnt ? "" : "more than ", got);
    }
    *tok = t;
    *n = cnt;
    return AVERIS_OK;
}

averis_status loader_open(data_loader *dl, const char *dir, const char *split) {
    memset(dl, 0, sizeof *dl);
    char pat[4200];
    snprintf(pat, sizeof pat, "%s/*%s*.bin", dir, split);
    glob_t g;
    int gr = glob(pat, 0, NULL, &g);
    if (gr != 0) {
        if (gr == GLOB_NOMATCH) globfree(&g);
        return averis_fail(AVERIS_EIO, "data: no %s shards match %s (run 'make data' or 'averis prepare')", split, pat);
    }
    averis_status st = AVERIS_OK;
    for (size_t i = 0; i < g.gl_pathc && !st; i++) {
        uint16_t *t;
        size_t n;
        if ((st = shard_read(g.gl_pathv[i], &t, &n))) break;
        uint16_t *nt = realloc(dl->tok, (dl->n + n + 1) * 2);
        if (!nt) { free(t); st = averis_fail(AVERIS_ENOMEM, "data: out of memory"); break; }
        dl->tok = nt;
        memcpy(dl->tok + dl->n, t, n * 2);
        dl->n += n;
        dl->nshards++;
        free(t);
    }
    globfree(&g);
    if (st) { loader_free(dl); return st; }
    for (size_t i = 0; i < dl->n; i++)
        if (dl->tok[i] > dl->max_id) dl->max_id = dl->tok[i];
    return AVERIS_OK;
}

averis_status loader_batch_at(const data_loader *dl, size_t pos, int B, int T, int *inputs, int *targets) {
    size_t need = (size_t)B * (size_t)T + 1;
    if (dl->n < need)
        return averis_fail(AVERIS_EINVAL, "data: %zu tokens, fewer than one batch of B×T+1 = %zu", dl->n, need);
    if (pos + need > dl->n)
        return averis_fail(AVERIS_EINVAL, "data: a batch at token %zu runs past the end (%zu tokens)", pos, dl->n);
    for (size_t i = 0; i + 1 < need; i++) {
        inputs[i] = dl->tok[pos + i];
        targets[i] = dl->tok[pos + i + 1];
    }
    return AVERIS_OK;
}

averis_status loader_next(data_loader *dl, int B, int T, int *inputs, int *targets) {
    size_t step = (size_t)B * (size_t)T;
    if (dl->n > step && dl->pos + step + 1 > dl->n) { dl->pos = 0; dl->epoch++; }
    averis_status st = loader_batch_at(dl, dl->pos, B, T, inputs, targets);
    if (!st) dl->pos += step;
    return st;
}

averis_status loader_check_vocab(const data_loader *dl, int vocab_size, const char *what) {
    if (dl->max_id < vocab_size) return AVERIS_OK;
    for (size_t i = 0; i < dl->n; i++)
        if (dl->tok[i] >= vocab_size)
            return averis_fail(AVERIS_EINVAL, "%s: token id %d at position %zu is outside the vocabulary (0..%d)", what,
                               dl->tok[i], i, vocab_size - 1);
    return AVERIS_OK;
}

void loader_free(data_loader *dl) {
    free(dl->tok);
    memset(dl, 0, sizeof *dl);
}
