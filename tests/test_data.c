/* test_data.c — tokenizer, text extraction, shards. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef AVERIS_HAVE_ZLIB
#include <zlib.h>
#endif

#include "averis/data.h"
#include "averis/tokenizer.h"
#include "check.h"

static const char k_text[] =
    "It is a truth universally acknowledged, that a single man in possession\n"
    "of a good fortune, must be in want of a wife.\n\n"
    "However little known the feelings or views of such a man may be on his\n"
    "first entering a neighbourhood, this truth is so well fixed in the minds\n"
    "of the surrounding families, that he is considered as the rightful\n"
    "property of some one or other of their daughters. 1813, 2024; naïve café!\n";

/* Encode → decode gives the text back; save → load encodes the same. */
void test_bpe_roundtrip(void) {
    bpe_tokenizer tok, tok2;
    size_t len = strlen(k_text);
    CHECK(!bpe_train(k_text, len, 300, &tok, NULL), "%s", averis_last_error());
    CHECK(tok.vocab_size == 300 && tok.nmerges == 43, "vocab %d merges %d", tok.vocab_size, tok.nmerges);
    int *ids = NULL;
    size_t n = 0, cap = 0;
    CHECK(!bpe_encode(&tok, k_text, len, &ids, &n, &cap), "encode");
    CHECK(n < len * 3 / 4, "BPE compresses: %zu ids for %zu bytes", n, len);
    char *back = malloc(len + 1);
    size_t got = bpe_decode(&tok, ids, n, back, len + 1);
    CHECK(got == len && !memcmp(back, k_text, len), "decode(encode(text)) differs (%zu vs %zu bytes)", got, len);
    /* unseen text (bytes never merged) still round-trips */
    const char *odd = "zzq \x01\xff\tXYZ 99999 \n\n  end";
    int *ids2 = NULL;
    size_t n2 = 0, cap2 = 0;
    char buf[128];
    CHECK(!bpe_encode(&tok, odd, strlen(odd), &ids2, &n2, &cap2), "encode odd");
    CHECK(bpe_decode(&tok, ids2, n2, buf, sizeof buf) == strlen(odd) && !strcmp(buf, odd), "odd text round trip");
    char path[] = "/tmp/averis_bpe_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(!bpe_save(&tok, path) && !bpe_load(&tok2, path), "%s", averis_last_error());
    int *ids3 = NULL;
    size_t n3 = 0, cap3 = 0;
    CHECK(!bpe_encode(&tok2, k_text, len, &ids3, &n3, &cap3) && n3 == n && !memcmp(ids3, ids, n * sizeof *ids),
          "loaded tokenizer encodes differently");
    int eot = BPE_EOT;
    CHECK(bpe_decode(&tok, &eot, 1, buf, sizeof buf) == 15 && strstr(buf, "<|endoftext|>"), "EOT decodes");
    /* a truncated tokenizer file is an error naming the line */
    FILE *f = fopen(path, "w");
    fputs("averis-bpe 1\nvocab_size 300\nmerges 43\n32 116\n", f);
    fclose(f);
    bpe_tokenizer tok3;
    CHECK(bpe_load(&tok3, path) != AVERIS_OK && strstr(averis_last_error(), "line 2"), "truncated: %s", averis_last_error());
    CHECK(bpe_train(k_text, len, 100, &tok3, NULL) != AVERIS_OK, "vocab below 257 refused");
    unlink(path);
    free(ids); free(ids2); free(ids3); free(back);
    bpe_free(&tok);
    bpe_free(&tok2);
}

/* A pseudo-text of words from a small vocabulary with a skewed law, so
 * pairs tie and merges chain (the cases where visiting order could matter). */
static char *gen_text(size_t n, unsigned long long seed) {
    static const char *w[] = {"the", "theory", " of", "def", " self", "_init", "__", "x1", "x2", "()", ":\n",
                              "    ", "return", " 0", "42", "naïve", "==", "ab", "ba", "aab", "abab", "\n"};
    char *t = malloc(n + 1);
    trng r = {seed};
    size_t k = 0;
    while (k < n) {
        unsigned long long u = trng_u64(&r);
        const char *s = w[(u % 7) * (u % 3) % (sizeof w / sizeof *w)];
        for (; *s && k < n; s++) t[k++] = *s;
        if (u >> 60 == 0 && k < n) t[k++] = ' ';
    }
    t[k] = 0;
    return t;
}

/* bpe_train (posting lists) learns the merges of bpe_train_ref (every word
 * scanned per merge), bit for bit, on the English text and generated ones. */
void test_bpe_fast_train_equals_ref(void) {
    for (int c = 0; c < 4; c++) {
        char *t = c == 0 ? strdup(k_text) : gen_text(20000 * (size_t)c, 77 + (unsigned long long)c);
        size_t len = strlen(t);
        int vocab = c == 0 ? 400 : 300 + 400 * c;
        bpe_tokenizer a, r;
        CHECK(!bpe_train(t, len, vocab, &a, NULL) && !bpe_train_ref(t, len, vocab, &r, NULL), "%s", averis_last_error());
        CHECK(a.nmerges == r.nmerges, "case %d: %d merges, ref %d", c, a.nmerges, r.nmerges);
        int first = -1;
        for (int i = 0; i < a.nmerges && i < r.nmerges && first < 0; i++)
            if (a.merges[i][0] != r.merges[i][0] || a.merges[i][1] != r.merges[i][1]) first = i;
        CHECK(first < 0, "case %d: merge %d is (%d %d), ref (%d %d)", c, first, first < 0 ? 0 : a.merges[first][0],
              first < 0 ? 0 : a.merges[first][1], first < 0 ? 0 : r.merges[first][0], first < 0 ? 0 : r.merges[first][1]);
        CHECK(a.nmerges > 100, "case %d: only %d merges learned", c, a.nmerges);
        bpe_free(&a);
        bpe_free(&r);
        free(t);
    }
}

/* bpe_encode_texts gives, for 1, 2, 3 and 8 threads, exactly the ids of
 * encoding the texts one after another (EOT first), over texts of every size
 * (empty ones and ones of several MB-batches included). */
void test_bpe_encode_texts_threads(void) {
    bpe_tokenizer tok;
    char *big = gen_text(2600000, 5);
    CHECK(!bpe_train(big, 200000, 600, &tok, NULL), "%s", averis_last_error());
    enum { N = 40 };
    const char *text[N];
    size_t len[N];
    trng r = {9};
    size_t off = 0;
    for (int i = 0; i < N; i++) { /* slices of big: 0 bytes to 1.3 MB */
        size_t n = i % 9 == 4 ? 0 : i == 7 ? 1300000 : (size_t)(trng_u64(&r) % 30000);
        text[i] = big + off;
        len[i] = n;
        off += n;
    }
    int *ref = NULL;
    size_t nref = 0, cap = 0;
    for (int i = 0; i < N; i++) {
        CHECK(!bpe_append(&ref, &nref, &cap, BPE_EOT), "append");
        CHECK(!bpe_encode(&tok, text[i], len[i], &ref, &nref, &cap), "encode");
    }
    static const int threads[] = {1, 2, 3, 8};
    for (int k = 0; k < 4; k++) {
        int *ids = NULL;
        size_t n = 0;
        CHECK(!bpe_encode_texts(&tok, N, text, len, 1, threads[k], &ids, &n, NULL), "%s", averis_last_error());
        size_t first = n < nref ? n : nref;
        for (size_t i = 0; i < (n < nref ? n : nref); i++)
            if (ids[i] != ref[i]) { first = i; break; }
        CHECK(n == nref && first == n, "%d threads: %zu ids (ref %zu), first difference at %zu", threads[k], n, nref, first);
        free(ids);
    }
    int *ids = NULL;
    size_t n = 99;
    CHECK(!bpe_encode_texts(&tok, 0, text, len, 1, 4, &ids, &n, NULL) && n == 0, "no texts: %zu ids", n);
    free(ids);
    free(ref);
    free(big);
    bpe_free(&tok);
}

void test_text_clean(void) {
    char s[] = "\xEF\xBB\xBFheader\r\n*** START OF THE BOOK ***\r\nCall me Ishmael.\r\nSome years ago\r\n*** END OF THE BOOK ***\r\nlicense";
    size_t n = text_clean(s, strlen(s));
    CHECK(n == strlen("Call me Ishmael.\nSome years ago\n") && !strcmp(s, "Call me Ishmael.\nSome years ago\n"),
          "cleaned to '%s'", s);
    char t[] = "plain\r\ntext";
    CHECK(text_clean(t, strlen(t)) == 10 && !strcmp(t, "plain\ntext"), "CRLF only: '%s'", t);
}

static void be32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }

/* A hand-built R lazy-load file: two character vectors, zlib objects. */
void test_rdata_read(void) {
#ifdef AVERIS_HAVE_ZLIB
    const char *strs[2][3] = {{"First line.", "", "Third, UTF-8: \xc3\xa9"}, {"Moby", NULL, NULL}};
    int counts[2] = {3, 1};
    char path[] = "/tmp/averis_rdb_XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "wb");
    for (int o = 0; o < 2; o++) {
        uint8_t raw[512];
        size_t k = 0;
        raw[k++] = 'X'; raw[k++] = '\n';
        be32(raw + k, 3); k += 4;
        be32(raw + k, 0x040200); k += 4;
        be32(raw + k, 0x030500); k += 4;
        be32(raw + k, 5); k += 4; memcpy(raw + k, "UTF-8", 5); k += 5;
        be32(raw + k, 0x10 | (o ? 0x200 : 0)); k += 4; /* STRSXP, the second with attributes */
        be32(raw + k, (uint32_t)counts[o]); k += 4;
        for (int i = 0; i < counts[o]; i++) {
            size_t L = strlen(strs[o][i]);
            be32(raw + k, 0x00040009); k += 4;
            be32(raw + k, (uint32_t)L); k += 4;
            memcpy(raw + k, strs[o][i], L); k += L;
        }
        if (o) { be32(raw + k, 0x402); k += 4; be32(raw + k, 0xfe); k += 4; } /* trailing attributes */
        uint8_t z[1024];
        uLongf zl = sizeof z;
        compress(z, &zl, raw, k);
        uint8_t hdr[4];
        be32(hdr, (uint32_t)k);
        fwrite(hdr, 1, 4, f);
        fwrite(z, 1, zl, f);
    }
    fclose(f);
    text_docs d = {0};
    CHECK(!rdata_read_texts(path, &d), "%s", averis_last_error());
    CHECK(d.n == 2, "%d documents", d.n);
    if (d.n == 2) {
        CHECK(!strcmp(d.text[0], "First line.\n\nThird, UTF-8: \xc3\xa9\n"), "doc 0: '%s'", d.text[0]);
        CHECK(!strcmp(d.text[1], "Moby\n"), "doc 1: '%s'", d.text[1]);
    }
    text_docs_free(&d);
    /* truncated file: the zlib stream ends early */
    f = fopen(path, "r+b");
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fclose(f);
    CHECK(truncate(path, sz - 7) == 0, "truncate");
    CHECK(rdata_read_texts(path, &d) != AVERIS_OK && strstr(averis_last_error(), "corrupt or truncated"), "truncated: %s",
          averis_last_error());
    text_docs_free(&d);
    unlink(path);
#endif
}

void test_shards(void) {
    char dir[] = "/tmp/averis_shards_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    uint16_t tok[1000];
    for (int i = 0; i < 1000; i++) tok[i] = (uint16_t)(i * 37 % 5000);
    char p[256];
    snprintf(p, sizeof p, "%s/x_train_000.bin", dir);
    CHECK(!shard_write(p, tok, 1000), "%s", averis_last_error());
    uint16_t *back;
    size_t n;
    CHECK(!shard_read(p, &back, &n) && n == 1000 && !memcmp(back, tok, sizeof tok), "shard round trip");
    free(back);
    /* the file is llm.c's: 256 int32 header then uint16 tokens */
    FILE *f = fopen(p, "rb");
    int32_t h[3];
    CHECK(fread(h, 4, 3, f) == 3 && h[0] == 20240520 && h[1] == 1 && h[2] == 1000, "header %d %d %d", h[0], h[1], h[2]);
    fclose(f);
    data_loader dl;
    CHECK(!loader_open(&dl, dir, "train") && dl.n == 1000 && dl.max_id == 4995, "loader: %s", averis_last_error());
    int in[64], tg[64];
    for (int b = 0; b < 20; b++) CHECK(!loader_next(&dl, 2, 32, in, tg), "batch %d", b);
    CHECK(dl.epoch == 1 && in[0] == tok[dl.pos - 64] && tg[63] == tok[dl.pos], "wraps: epoch %llu", (unsigned long long)dl.epoch);
    CHECK(loader_next(&dl, 10, 100, in, tg) != AVERIS_OK && strstr(averis_last_error(), "fewer than one batch"), "too small");
    loader_free(&dl);
    /* truncated and bad-magic shards */
    CHECK(truncate(p, 1024 + 999) == 0, "truncate");
    CHECK(shard_read(p, &back, &n) != AVERIS_OK && strstr(averis_last_error(), "truncated"), "truncated: %s", averis_last_error());
    f = fopen(p, "r+b");
    int32_t bad = 12345;
    fwrite(&bad, 4, 1, f);
    fclose(f);
    CHECK(shard_read(p, &back, &n) != AVERIS_OK && strstr(averis_last_error(), "magic 12345"), "bad magic: %s", averis_last_error());
    CHECK(loader_open(&dl, dir, "val") != AVERIS_OK && strstr(averis_last_error(), "no val shards"), "no val: %s", averis_last_error());
    unlink(p);
    rmdir(dir);
}
