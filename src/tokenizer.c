/* tokenizer.c — byte-level BPE: chunking, training, encoding, decoding. */
#define _POSIX_C_SOURCE 200809L
#include "averis/tokenizer.h"
#include "averis/io.h"
#include "averis/status.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ u64 → i64 map */
typedef struct {
    uint64_t *key; /* key+1, 0 = empty */
    int64_t *val;
    size_t cap, n;
} u64map;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}
static int u64map_init(u64map *m, size_t cap) {
    m->cap = cap; m->n = 0;
    m->key = calloc(cap, sizeof *m->key);
    m->val = calloc(cap, sizeof *m->val);
    return m->key && m->val;
}
static void u64map_free(u64map *m) { free(m->key); free(m->val); memset(m, 0, sizeof *m); }
/* slot of key (inserted with val 0 if absent); NULL when out of memory */
static int64_t *u64map_slot(u64map *m, uint64_t key) {
    if (2 * (m->n + 1) > m->cap) {
        u64map big;
        if (!u64map_init(&big, m->cap * 2)) { u64map_free(&big); return NULL; }
        for (size_t i = 0; i < m->cap; i++)
            if (m->key[i]) *u64map_slot(&big, m->key[i] - 1) = m->val[i];
        u64map_free(m);
        *m = big;
    }
    size_t i = mix64(key) & (m->cap - 1);
    while (m->key[i] && m->key[i] != key + 1) i = (i + 1) & (m->cap - 1);
    if (!m->key[i]) { m->key[i] = key + 1; m->val[i] = 0; m->n++; }
    return &m->val[i];
}
static const int64_t *u64map_get(const u64map *m, uint64_t key) {
    size_t i = mix64(key) & (m->cap - 1);
    while (m->key[i]) {
        if (m->key[i] == key + 1) return &m->val[i];
        i = (i + 1) & (m->cap - 1);
    }
    return NULL;
}
#define PAIR(a, b) (((uint64_t)(uint32_t)(a) << 32) | (uint32_t)(b))

/* ------------------------------------------------------------ chunking */
static int is_letter(unsigned char c) { return (unsigned)((c | 32) - 'a') < 26u || c >= 0x80 || c == '\''; }
static int is_digit(unsigned char c) { return (unsigned)(c - '0') < 10u; }
static int is_space(unsigned char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }
static int cls(unsigned char c) { return is_letter(c) ? 1 : is_digit(c) ? 2 : is_space(c) ? 3 : 4; }

/* Length of the chunk starting at s[0] (len > 0). */
static size_t chunk_len(const unsigned char *s, size_t len) {
    size_t i = 0;
    if (s[0] == ' ' && len > 1 && !is_space(s[1])) i = 1; /* a leading space joins the next run */
    int k = cls(s[i]);
    size_t j = i + 1;
    while (j < len && cls(s[j]) == k) j++;
    /* leave the last space of a whitespace run to lead the next chunk */
    if (k == 3 && j < len && j - i > 1 && s[j - 1] == ' ') j--;
    return j;
}

/* ------------------------------------------------------------ training */
typedef struct {
    int32_t *sym;
    int len;
    int64_t freq;
} bpe_word;

typedef struct { int64_t count; uint64_t pair; } heap_ent;
typedef struct { heap_ent *e; size_t n, cap; } pair_heap;

static int heap_less(const heap_ent *a, const heap_ent *b) { /* a ranks below b */
    return a->count < b->count || (a->count == b->count && a->pair > b->pair);
}
static int heap_push(pair_heap *h, int64_t count, uint64_t pair) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? 2 * h->cap : 1024;
        heap_ent *ne = realloc(h->e, nc * sizeof *ne);
        if (!ne) return 0;
        h->e = ne; h->cap = nc;
    }
    size_t i = h->n++;
    h->e[i] = (heap_ent){count, pair};
    while (i && heap_less(&h->e[(i - 1) / 2], &h->e[i])) {
        heap_ent t = h->e[i]; h->e[i] = h->e[(i - 1) / 2]; h->e[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
    return 1;
}
static heap_ent heap_pop(pair_heap *h) {
    heap_ent top = h->e[0];
    h->e[0] = h->e[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, b = i;
        if (l < h->n && heap_less(&h->e[b], &h->e[l])) b = l;
        if (r < h->n && heap_less(&h->e[b], &h->e[r])) b = r;
        if (b == i) break;
        heap_ent t = h->e[i]; h->e[i] = h->e[b]; h->e[b] = t;
        i = b;
    }
    return top;
}

/* counts[pair] += sign·freq for every adjacent pair of w; pushes new counts */
static int word_pairs(u64map *counts, pair_heap *h, const bpe_word *w, int sign) {
    for (int i = 0; i + 1 < w->len; i++) {
        uint64_t p = PAIR(w->sym[i], w->sym[i + 1]);
        int64_t *c = u64map_slot(counts, p);
        if (!c) return 0;
        *c += sign * w->freq;
        if (sign > 0 && !heap_push(h, *c, p)) return 0;
    }
    return 1;
}

static averis_status build_tables(bpe_tokenizer *tok, const char *what);

/* posting lists: pair → the words that (may) hold it, appended in order;
 * stale and repeated entries are allowed (the merge re-checks each word) */
typedef struct { int32_t *w; int n, cap; } plist;
typedef struct {
    u64map idx; /* pair → 1 + index into l */
    plist *l;
    size_t n, cap;
} plists;
static int plists_add(plists *P, uint64_t pair, int32_t w) {
    int64_t *slot = u64map_slot(&P->idx, pair);
    if (!slot) return 0;
    if (!*slot) {
        if (P->n == P->cap) {
            size_t nc = P->cap ? 2 * P->cap : 4096;
            plist *nl = realloc(P->l, nc * sizeof *nl);
            if (!nl) return 0;
            P->l = nl; P->cap = nc;
        }
        P->l[P->n] = (plist){0};
        *slot = (int64_t)++P->n;
    }
    plist *l = &P->l[*slot - 1];
    if (l->n && l->w[l->n - 1] == w) return 1; /* the same word again */
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 4;
        int32_t *nw = realloc(l->w, (size_t)nc * sizeof *nw);
        if (!nw) return 0;
        l->w = nw; l->cap = nc;
    }
    l->w[l->n++] = w;
    return 1;
}
static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Merges (a,b) → id in word w: counts of its pairs out, merge, counts in. */
static int merge_word(u64map *counts, pair_heap *heap, bpe_word *w, int32_t a, int32_t b, int32_t id, plists *P,
                      int32_t wi) {
    word_pairs(counts, heap, w, -1);
    int o = 0;
    for (int i = 0; i < w->len; i++) {
        if (i + 1 < w->len && w->sym[i] == a && w->sym[i + 1] == b) { w->sym[o++] = id; i++; }
        else w->sym[o++] = w->sym[i];
    }
    w->len = o;
    if (!word_pairs(counts, heap, w, +1)) return 0;
    if (P) /* the new pairs (those with id) point to this word */
        for (int i = 0; i + 1 < w->len; i++)
            if ((w->sym[i] == id || w->sym[i + 1] == id) && !plists_add(P, PAIR(w->sym[i], w->sym[i + 1]), wi))
                return 0;
    return 1;
}

static int word_has(const bpe_word *w, int32_t a, int32_t b) {
    for (int i = 0; i + 1 < w->len; i++)
        if (w->sym[i] == a && w->sym[i + 1] == b) return 1;
    return 0;
}

/* The trainer. With use_index = 0 (the reference) each merge scans every
 * word; with 1 only the words of the pair's posting list, sorted so they are
 * visited in the same (index) order: the counts and heap see the same
 * sequence of updates, so the merges are the same, bit for bit. */
static averis_status bpe_train_impl(const char *text, size_t len, int vocab_size, bpe_tokenizer *tok,
                                    void (*progress)(int done, int total), int use_index) {
    memset(tok, 0, sizeof *tok);
    if (vocab_size < BPE_EOT + 1 || vocab_size > 65536)
        return averis_fail(AVERIS_EINVAL, "bpe: vocab size %d out of range (257..65536)", vocab_size);
    const unsigned char *s = (const unsigned char *)text;
    /* 1. unique chunks and their counts: hash of bytes → word index */
    u64map index = {0}, counts = {0};
    bpe_word *words = NULL;
    size_t nwords = 0, capw = 0;
    pair_heap heap = {0};
    plists P = {0};
    averis_status st = AVERIS_OK;
    if (!u64map_init(&index, 1 << 16) || !u64map_init(&counts, 1 << 16)) goto oom;
    for (size_t i = 0; i < len;) {
        size_t L = chunk_len(s + i, len - i);
        uint64_t hsh = 1469598103934665603ull;
        for (size_t k = 0; k < L; k++) hsh = (hsh ^ s[i + k]) * 1099511628211ull;
        for (;; hsh++) { /* linear probing over hash values on a (rare) collision */
            int64_t *slot = u64map_slot(&index, hsh);
            if (!slot) goto oom;
            if (*slot == 0) {
                if (nwords == capw) {
                    capw = capw ? 2 * capw : 4096;
                    bpe_word *nw = realloc(words, capw * sizeof *nw);
                    if (!nw) goto oom;
                    words = nw;
                }
                bpe_word *w = &words[nwords];
                if (!(w->sym = malloc(L * sizeof *w->sym))) goto oom;
                for (size_t k = 0; k < L; k++) w->sym[k] = s[i + k];
                w->len = (int)L;
                w->freq = 1;
                *slot = (int64_t)++nwords;
                break;
            }
            bpe_word *w = &words[*slot - 1];
            int same = (size_t)w->len == L;
            for (size_t k = 0; same && k < L; k++) same = w->sym[k] == s[i + k];
            if (same) { w->freq++; break; }
        }
        i += L;
    }
    u64map_free(&index);
    if (nwords > INT32_MAX) {
        st = averis_fail(AVERIS_EINVAL, "bpe: %zu distinct chunks (limit %d)", nwords, INT32_MAX);
        goto done;
    }
    /* 2. pair counts (and posting lists), then merges: best pair = highest count, ties to the smaller pair */
    if (use_index && !u64map_init(&P.idx, 1 << 16)) goto oom;
    for (size_t w = 0; w < nwords; w++) {
        if (!word_pairs(&counts, &heap, &words[w], +1)) goto oom;
        for (int i = 0; use_index && i + 1 < words[w].len; i++)
            if (!plists_add(&P, PAIR(words[w].sym[i], words[w].sym[i + 1]), (int32_t)w)) goto oom;
    }
    int total = vocab_size - BPE_EOT - 1;
    if (!(tok->merges = malloc((size_t)(total > 0 ? total : 1) * sizeof *tok->merges))) goto oom;
    tok->vocab_size = vocab_size;
    while (tok->nmerges < total && heap.n) {
        heap_ent top = heap_pop(&heap);
        const int64_t *cur = u64map_get(&counts, top.pair);
        if (!cur || *cur != top.count || top.count <= 0) continue; /* stale entry */
        int32_t a = (int32_t)(top.pair >> 32), b = (int32_t)(uint32_t)top.pair, id = BPE_EOT + 1 + tok->nmerges;
        tok->merges[tok->nmerges][0] = a;
        tok->merges[tok->nmerges][1] = b;
        tok->nmerges++;
        if (!use_index) {
            for (size_t wi = 0; wi < nwords; wi++)
                if (word_has(&words[wi], a, b) && !merge_word(&counts, &heap, &words[wi], a, b, id, NULL, 0)) goto oom;
        } else {
            const int64_t *li = u64map_get(&P.idx, top.pair);
            if (!li) continue; /* cannot happen: a counted pair has a list */
            plist l = P.l[*li - 1]; /* detached: (a,b) never forms again once merged */
            P.l[*li - 1] = (plist){0};
            qsort(l.w, (size_t)l.n, sizeof *l.w, cmp_i32);
            for (int k = 0; k < l.n; k++) {
                if (k && l.w[k] == l.w[k - 1]) continue;
                bpe_word *w = &words[l.w[k]];
                if (word_has(w, a, b) && !merge_word(&counts, &heap, w, a, b, id, &P, l.w[k])) { free(l.w); goto oom; }
            }
            free(l.w);
        }
        if (progress && (tok->nmerges % 256 == 0 || tok->nmerges == total)) progress(tok->nmerges, total);
    }
    tok->vocab_size = BPE_EOT + 1 + tok->nmerges; /* fewer if the text ran out of pairs */
    st = build_tables(tok, "bpe");
    goto done;
oom:
    st = averis_fail(AVERIS_ENOMEM, "bpe: out of memory while training");
done:
    for (size_t w = 0; w < nwords; w++) free(words[w].sym);
    free(words);
    free(heap.e);
    for (size_t i = 0; i < P.n; i++) free(P.l[i].w);
    free(P.l);
    u64map_free(&P.idx);
    u64map_free(&index);
    u64map_free(&counts);
    if (st) bpe_free(tok);
    return st;
}

averis_status bpe_train(const char *text, size_t len, int vocab_size, bpe_tokenizer *tok,
                        void (*progress)(int done, int total)) {
    return bpe_train_impl(text, len, vocab_size, tok, progress, 1);
}

averis_status bpe_train_ref(const char *text, size_t len, int vocab_size, bpe_tokenizer *tok,
                            void (*progress)(int done, int total)) {
    return bpe_train_impl(text, len, vocab_size, tok, progress, 0);
}

/* token byte strings and the pair → rank map, from the merges; `what`
 * names the source in errors. Merges can double a token's length each time,
 * so lengths are bounded (BPE_MAX_TOKEN_BYTES each, BPE_MAX_TOTAL_BYTES in
 * all) before anything is allocated for them. */
static averis_status build_tables(bpe_tokenizer *tok, const char *what) {
    int V = tok->vocab_size;
    tok->tok_bytes = calloc((size_t)V, sizeof *tok->tok_bytes);
    tok->tok_len = calloc((size_t)V, sizeof *tok->tok_len);
    u64map *rank = calloc(1, sizeof *rank);
    tok->rank_map = rank;
    if (!tok->tok_bytes || !tok->tok_len || !rank || !u64map_init(rank, 1024))
        return averis_fail(AVERIS_ENOMEM, "%s: out of memory", what);
    int64_t total = 0;
    for (int i = 0; i < V; i++) {
        const uint8_t *a = NULL, *b = NULL;
        int la = 0, lb = 0;
        static const uint8_t eot[] = "\n<|endoftext|>\n";
        if (i < 256) { static uint8_t bytes[256]; bytes[i] = (uint8_t)i; a = &bytes[i]; la = 1; }
        else if (i == BPE_EOT) { a = eot; la = (int)sizeof eot - 1; }
        else {
            int x = tok->merges[i - 257][0], y = tok->merges[i - 257][1];
            if (x < 0 || y < 0 || x >= i || y >= i || x == BPE_EOT || y == BPE_EOT)
                return averis_fail(AVERIS_EFORMAT, "%s: merge %d (%d %d) refers to an unknown id", what, i - 257, x, y);
            a = tok->tok_bytes[x]; la = tok->tok_len[x];
            b = tok->tok_bytes[y]; lb = tok->tok_len[y];
            if ((int64_t)la + lb > BPE_MAX_TOKEN_BYTES)
                return averis_fail(AVERIS_EFORMAT, "%s: merge %d (%d %d) makes token %d of %lld bytes (limit %d)", what,
                                   i - 257, x, y, i, (long long)la + lb, BPE_MAX_TOKEN_BYTES);
            int64_t *r = u64map_slot(rank, PAIR(x, y));
            if (!r) return averis_fail(AVERIS_ENOMEM, "%s: out of memory", what);
            *r = i - 257 + 1; /* rank + 1, so 0 means absent */
        }
        if ((total += la + lb) > BPE_MAX_TOTAL_BYTES)
            return averis_fail(AVERIS_EFORMAT, "%s: tokens 0..%d hold more than %d bytes in all (limit)", what, i,
                               BPE_MAX_TOTAL_BYTES);
        if (!(tok->tok_bytes[i] = malloc((size_t)(la + lb)))) return averis_fail(AVERIS_ENOMEM, "%s: out of memory", what);
        memcpy(tok->tok_bytes[i], a, (size_t)la);
        if (lb) memcpy(tok->tok_bytes[i] + la, b, (size_t)lb);
        tok->tok_len[i] = la + lb;
    }
    return AVERIS_OK;
}

void bpe_free(bpe_tokenizer *tok) {
    if (tok->tok_bytes)
        for (int i = 0; i < tok->vocab_size; i++) free(tok->tok_bytes[i]);
    free(tok->tok_bytes);
    free(tok->tok_len);
    free(tok->merges);
    if (tok->rank_map) { u64map_free(tok->rank_map); free(tok->rank_map); }
    memset(tok, 0, sizeof *tok);
}

/* ------------------------------------------------------------ files */
averis_status bpe_save(const bpe_tokenizer *tok, const char *path) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    fprintf(af.f, "averis-bpe 1\nvocab_size %d\nmerges %d\n", tok->vocab_size, tok->nmerges);
    for (int i = 0; i < tok->nmerges; i++) fprintf(af.f, "%d %d\n", tok->merges[i][0], tok->merges[i][1]);
    return averis_afile_commit(&af);
}

static void skip_space(const char **p) { *p += strspn(*p, " \n\t\r"); }
/* Next whitespace-separated integer of *p into *v (range lo..hi); 0 if none. */
static int next_int(const char **p, long lo, long hi, int *v) {
    char *end;
    skip_space(p);
    if (!(**p == '-' || (**p >= '0' && **p <= '9'))) return 0;
    errno = 0;
    long x = strtol(*p, &end, 10);
    if (errno || x < lo || x > hi) return 0;
    *p = end;
    *v = (int)x;
    return 1;
}
/* Skips the word w at *p (after whitespace); 0 if it is not there. */
static int next_word(const char **p, const char *w) {
    skip_space(p);
    size_t n = strlen(w);
    if (strncmp(*p, w, n)) return 0;
    *p += n;
    return 1;
}

averis_status bpe_load(bpe_tokenizer *tok, const char *path) {
    memset(tok, 0, sizeof *tok);
    char *buf;
    size_t len;
    averis_status st = averis_read_file(path, &buf, &len);
    if (st) return st;
    int ver = 0, V = 0, M = -1;
    const char *p = buf;
    if (!next_word(&p, "averis-bpe") || !next_int(&p, 0, 1000, &ver) || ver != 1 || !next_word(&p, "vocab_size") ||
        !next_int(&p, 0, 1 << 30, &V) || !next_word(&p, "merges") || !next_int(&p, 0, 1 << 30, &M)) {
        free(buf);
        return averis_fail(AVERIS_EFORMAT, "%s: not an averis-bpe 1 tokenizer (bad header)", path);
    }
    if (V != BPE_EOT + 1 + M) st = averis_fail(AVERIS_EFORMAT, "%s: vocab_size %d is not 257 + merges %d", path, V, M);
    else if (V > BPE_MAX_VOCAB)
        st = averis_fail(AVERIS_EFORMAT, "%s: vocab_size %d exceeds %d (shards hold uint16 token ids)", path, V,
                         BPE_MAX_VOCAB);
    else if (!(tok->merges = malloc((size_t)(M ? M : 1) * sizeof *tok->merges)))
        st = averis_fail(AVERIS_ENOMEM, "%s: out of memory", path);
    tok->vocab_size = V;
    for (int i = 0; !st && i < M; i++) {
        if (!next_int(&p, -1, INT32_MAX, &tok->merges[i][0]) || !next_int(&p, -1, INT32_MAX, &tok->merges[i][1]))
            st = averis_fail(AVERIS_EFORMAT, "%s: merge line %d is missing or malformed (truncated file?)", path, i + 1);
        tok->nmerges = i + 1;
    }
    skip_space(&p);
    if (!st && *p)
        st = averis_fail(AVERIS_EFORMAT, "%s: trailing data after the %d merges", path, M);
    free(buf);
    if (!st) st = build_tables(tok, path);
    if (st) bpe_free(tok);
    return st;
}

/* ------------------------------------------------------------ encode/decode */
/* growable id array; 0 when out of memory (no message: workers call it too) */
static int ids_push(int **ids, size_t *n, size_t *cap, int id) {
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 4096;
        int *ni = realloc(*ids, nc * sizeof *ni);
        if (!ni) return 0;
        *ids = ni;
        *cap = nc;
    }
    (*ids)[(*n)++] = id;
    return 1;
}

averis_status bpe_append(int **ids, size_t *n, size_t *cap, int id) {
    return ids_push(ids, n, cap, id) ? AVERIS_OK : averis_fail(AVERIS_ENOMEM, "bpe: out of memory");
}

/* The ids of text appended to *ids; 0 when out of memory. */
static int encode_text(const bpe_tokenizer *tok, const unsigned char *s, size_t len, int **ids, size_t *n, size_t *cap) {
    const u64map *rank = tok->rank_map;
    int32_t sym[512];
    for (size_t i = 0; i < len;) {
        size_t L = chunk_len(s + i, len - i);
        if (L > 512) L = 512; /* very long runs are cut (merges rarely span them anyway) */
        int k = (int)L;
        for (int j = 0; j < k; j++) sym[j] = s[i + j];
        for (;;) { /* merge the lowest-ranked adjacent pair, everywhere, until none */
            int64_t best = 0;
            for (int j = 0; j + 1 < k; j++) {
                const int64_t *r = u64map_get(rank, PAIR(sym[j], sym[j + 1]));
                if (r && (!best || *r < best)) best = *r;
            }
            if (!best) break;
            int32_t a = tok->merges[best - 1][0], b = tok->merges[best - 1][1], id = (int32_t)(BPE_EOT + best);
            int o = 0;
            for (int j = 0; j < k; j++) {
                if (j + 1 < k && sym[j] == a && sym[j + 1] == b) { sym[o++] = id; j++; }
                else sym[o++] = sym[j];
            }
            k = o;
        }
        for (int j = 0; j < k; j++)
            if (!ids_push(ids, n, cap, sym[j])) return 0;
        i += L;
    }
    return 1;
}

averis_status bpe_encode(const bpe_tokenizer *tok, const char *text, size_t len, int **ids, size_t *n, size_t *cap) {
    return encode_text(tok, (const unsigned char *)text, len, ids, n, cap) ? AVERIS_OK
                                                                           : averis_fail(AVERIS_ENOMEM, "bpe: out of memory");
}

/* ------------------------------------------------------------ many texts, in threads */
/* Texts are grouped into batches of consecutive texts (≥ 1 MB each, or one
 * text); threads take the next batch under a lock and encode it into the
 * batch's own array; the arrays are joined in text order at the end, so the
 * output does not depend on the thread count or the schedule. */
typedef struct {
    int first, last;  /* texts [first, last) */
    int *ids;
    size_t n, cap;
} enc_batch;
typedef struct {
    const bpe_tokenizer *tok;
    const char *const *text;
    const size_t *len;
    int eot_first;
    enc_batch *b;
    int nb, next;
    size_t bytes_done, bytes_total;
    int oom;
    pthread_mutex_t mu;
    void (*progress)(size_t bytes_done, size_t bytes_total);
} enc_job;

static void *enc_worker(void *arg) {
    enc_job *J = arg;
    for (;;) {
        pthread_mutex_lock(&J->mu);
        int bi = J->oom ? J->nb : J->next++;
        pthread_mutex_unlock(&J->mu);
        if (bi >= J->nb) return NULL;
        enc_batch *b = &J->b[bi];
        size_t bytes = 0;
        int ok = 1;
        for (int t = b->first; t < b->last && ok; t++) {
            if (J->eot_first) ok = ids_push(&b->ids, &b->n, &b->cap, BPE_EOT);
            if (ok) ok = encode_text(J->tok, (const unsigned char *)J->text[t], J->len[t], &b->ids, &b->n, &b->cap);
            bytes += J->len[t];
        }
        pthread_mutex_lock(&J->mu);
        if (!ok) J->oom = 1;
        J->bytes_done += bytes;
        if (ok && J->progress) J->progress(J->bytes_done, J->bytes_total);
        pthread_mutex_unlock(&J->mu);
    }
}

averis_status bpe_encode_texts(const bpe_tokenizer *tok, int n, const char *const *text, const size_t *len,
                               int eot_first, int nthreads, int **ids, size_t *nids,
                               void (*progress)(size_t bytes_done, size_t bytes_total)) {
    *ids = NULL;
    *nids = 0;
    if (n < 0) return averis_fail(AVERIS_EINVAL, "bpe: %d texts", n);
    if (nthreads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = c > 0 ? (int)(c < 256 ? c : 256) : 1;
    }
    enc_job J = {.tok = tok, .text = text, .len = len, .eot_first = eot_first, .progress = progress};
    if (!(J.b = calloc((size_t)n + 1, sizeof *J.b))) return averis_fail(AVERIS_ENOMEM, "bpe: out of memory");
    for (int t = 0; t < n;) { /* batches of ≥ 1 MB, cut at text boundaries */
        enc_batch *b = &J.b[J.nb++];
        size_t bytes = 0;
        b->first = t;
        while (t < n && (bytes < (1u << 20) || t == b->first)) bytes += len[t++];
        b->last = t;
        J.bytes_total += bytes;
    }
    if (nthreads > J.nb) nthreads = J.nb > 0 ? J.nb : 1;
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    averis_status st = AVERIS_OK;
    if (!th || pthread_mutex_init(&J.mu, NULL)) {
        free(th); free(J.b);
        return averis_fail(AVERIS_ENOMEM, "bpe: out of memory (threads)");
    }
    int started = 0;
    for (int i = 1; i < nthreads; i++) /* this thread is worker 0 */
        if (!pthread_create(&th[i], NULL, enc_worker, &J)) started = i; else break;
    enc_worker(&J);
    for (int i = 1; i <= started; i++) pthread_join(th[i], NULL);
    pthread_mutex_destroy(&J.mu);
    free(th);
    size_t total = 0;
    for (int i = 0; i < J.nb; i++) total += J.b[i].n;
    if (J.oom || !(*ids = malloc((total ? total : 1) * sizeof **ids))) {
        st = averis_fail(AVERIS_ENOMEM, "bpe: out of memory while encoding");
    } else {
        for (int i = 0; i < J.nb; i++) {
            if (J.b[i].n) memcpy(*ids + *nids, J.b[i].ids, J.b[i].n * sizeof **ids);
            *nids += J.b[i].n;
        }
    }
    for (int i = 0; i < J.nb; i++) free(J.b[i].ids);
    free(J.b);
    return st;
}

size_t bpe_decode(const bpe_tokenizer *tok, const int *ids, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab_size) continue;
        int L = tok->tok_len[ids[i]];
        if (k + 1 < cap) /* what fits, as snprintf: never skip a copy and keep the write */
            memcpy(out + k, tok->tok_bytes[ids[i]], k + (size_t)L < cap ? (size_t)L : cap - 1 - k);
        k += (size_t)L;
    }
    if (cap) out[k < cap ? k : cap - 1] = 0;
    return k;
}

/* ------------------------------------------------------------ Hugging Face files
 * tokenizer.json for the `tokenizers` library, expressing exactly the
 * encoder above (docs/huggingface.md):
 *   pre_tokenizer = Sequence[ByteLevel(use_regex=false), Split(CHUNK), Split(.{1,512})]
 * ByteLevel first maps every byte to one character of GPT-2's byte alphabet,
 * so the two Splits see one character per byte: CHUNK is chunk_len() as a
 * regex over that alphabet, and the second cuts chunks into the 512-byte
 * pieces bpe_encode() cuts them into. The BPE model holds the same ids and
 * merges (rank = merge index); <|endoftext|> is id 256, a special token that
 * the post-processor puts first (as `prepare` starts every document). */
static uint32_t byte_char(int b) { /* GPT-2's bytes_to_unicode() */
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return (uint32_t)b;
    if (b <= 32) return 256u + (uint32_t)b;
    if (b <= 160) return (uint32_t)b + 162u; /* 127..160 → U+0121..U+0142 */
    return 0x143;                            /* 173 */
}
static void put_utf8(FILE *f, uint32_t c) {
    if (c < 0x80) fputc((int)c, f);
    else if (c < 0x800) { fputc(0xC0 | (int)(c >> 6), f); fputc(0x80 | (int)(c & 63), f); }
    else { fputc(0xE0 | (int)(c >> 12), f); fputc(0x80 | (int)((c >> 6) & 63), f); fputc(0x80 | (int)(c & 63), f); }
}
/* A token's bytes in the byte alphabet, JSON-escaped (no quotes). */
static void put_token(FILE *f, const uint8_t *s, int n) {
    for (int i = 0; i < n; i++) {
        uint32_t c = byte_char(s[i]);
        if (c == '"' || c == '\\') fputc('\\', f);
        put_utf8(f, c);
    }
}

/* chunk_len() over the byte alphabet (characters, UTF-8 in the file):
 *   letters  [A-Za-z'] and bytes 0x80-0xFF: ¡-¬ ®-ÿ Ģ-Ń
 *   digits   [0-9]
 *   spaces   \t \n \v \f \r → ĉ-č, ' ' → Ġ
 * A chunk is a run of one class with at most one leading space; a run of
 * spaces gives its last ' ' to the next chunk when more text follows
 * (lookahead Ġ then a non-space) and the run is longer than one. */
#define HF_L "A-Za-z'\xc2\xa1-\xc2\xac\xc2\xae-\xc3\xbf\xc4\xa2-\xc5\x83"
#define HF_D "0-9"
#define HF_S "\xc4\x89-\xc4\x8d\xc4\xa0"
#define HF_SP "\xc4\xa0"
static const char k_hf_chunk_regex[] = HF_SP "?[" HF_L "]+|" HF_SP "?[" HF_D "]+|" HF_SP "?[^" HF_L HF_D HF_S "]+|[" HF_S
                                       "]+(?=" HF_SP "[^" HF_S "])|[" HF_S "]+";

const char *bpe_hf_chunk_regex(void) { return k_hf_chunk_regex; }

static void put_json_str(FILE *f, const char *s) { /* ASCII or UTF-8 without controls */
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static averis_status write_tokenizer_json(const bpe_tokenizer *tok, const char *path) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    FILE *f = af.f;
    static const char eot_tok[] = "{\"id\":256,\"content\":\"<|endoftext|>\",\"single_word\":false,\"lstrip\":false,"
                                  "\"rstrip\":false,\"normalized\":false,\"special\":true}";
    static const char eot_special[] = "{\"SpecialToken\":{\"id\":\"<|endoftext|>\",\"type_id\":0}}";
    fprintf(f, "{\n\"version\":\"1.0\",\n\"truncation\":null,\n\"padding\":null,\n\"added_tokens\":[%s],\n", eot_tok);
    fprintf(f, "\"normalizer\":null,\n\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[\n"
               " {\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},\n"
               " {\"type\":\"Split\",\"pattern\":{\"Regex\":");
    put_json_str(f, k_hf_chunk_regex);
    fprintf(f, "},\"behavior\":\"Isolated\",\"invert\":false},\n"
               " {\"type\":\"Split\",\"pattern\":{\"Regex\":\"[\\\\s\\\\S]{1,512}\"},\"behavior\":\"Isolated\",\"invert\":false}]},\n");
    fprintf(f, "\"post_processor\":{\"type\":\"TemplateProcessing\",\n"
               " \"single\":[%s,{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\n"
               " \"pair\":[%s,{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},%s,{\"Sequence\":{\"id\":\"B\",\"type_id\":0}}],\n"
               " \"special_tokens\":{\"<|endoftext|>\":{\"id\":\"<|endoftext|>\",\"ids\":[256],\"tokens\":[\"<|endoftext|>\"]}}},\n",
            eot_special, eot_special, eot_special);
    fprintf(f, "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},\n");
    fprintf(f, "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
               "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,\n\"vocab\":{");
    for (int i = 0; i < tok->vocab_size; i++) {
        fputs(i ? ",\n\"" : "\n\"", f);
        if (i == BPE_EOT) fputs("<|endoftext|>", f);
        else put_token(f, tok->tok_bytes[i], tok->tok_len[i]);
        fprintf(f, "\":%d", i);
    }
    fputs("},\n\"merges\":[", f);
    for (int i = 0; i < tok->nmerges; i++) {
        int a = tok->merges[i][0], b = tok->merges[i][1];
        fputs(i ? ",\n[\"" : "\n[\"", f);
        put_token(f, tok->tok_bytes[a], tok->tok_len[a]);
        fputs("\",\"", f);
        put_token(f, tok->tok_bytes[b], tok->tok_len[b]);
        fputs("\"]", f);
    }
    fputs("]}\n}\n", f);
    if (ferror(f)) { averis_afile_abort(&af); return averis_fail(AVERIS_EIO, "%s: write failed", path); }
    return averis_afile_commit(&af);
}

/* Two ids with the same bytes cannot both be in a tokenizers vocabulary
 * (a map from string to id); returns the first such pair's later id, or -1. */
int bpe_first_duplicate(const bpe_tokenizer *tok, int *earlier) {
    u64map seen = {0};
    int dup = -1;
    if (!u64map_init(&seen, 1024)) return -1;
    for (int i = 0; i < tok->vocab_size && dup < 0; i++) {
        uint64_t h = 1469598103934665603ull;
        for (int k = 0; k < tok->tok_len[i]; k++) h = (h ^ tok->tok_bytes[i][k]) * 1099511628211ull;
        for (;; h++) {
            int64_t *slot = u64map_slot(&seen, h);
            if (!slot) { u64map_free(&seen); return -1; }
            if (!*slot) { *slot = i + 1; break; }
            int j = (int)*slot - 1;
            if (tok->tok_len[j] == tok->tok_len[i] && !memcmp(tok->tok_bytes[j], tok->tok_bytes[i], (size_t)tok->tok_len[i])) {
                dup = i;
                if (earlier) *earlier = j;
                break;
            }
        }
    }
    u64map_free(&seen);
    return dup;
}

averis_status bpe_save_hf(const bpe_tokenizer *tok, const char *dir, int model_max_length) {
    char p[4200];
    int j = -1, d = bpe_first_duplicate(tok, &j);
    if (d >= 0)
        return averis_fail(AVERIS_EFORMAT,
                           "bpe: ids %d and %d have the same bytes; a Hugging Face tokenizer.json cannot hold both", j, d);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    averis_status st = write_tokenizer_json(tok, p);
    if (st) return st;
    averis_afile af;
    char mml[64] = ""; /* omitted when unknown: transformers then sets no limit */
    if (model_max_length > 0) snprintf(mml, sizeof mml, "  \"model_max_length\": %d,\n", model_max_length);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    if ((st = averis_afile_open(&af, p))) return st;
    /* split_special_tokens: the text "<|endoftext|>" is bytes, as bpe_encode reads it */
    fprintf(af.f,
            "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"bos_token\": \"<|endoftext|>\",\n"
            "  \"eos_token\": \"<|endoftext|>\",\n  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": null,\n"
            "  \"add_bos_token\": true,\n  \"add_eos_token\": false,\n  \"clean_up_tokenization_spaces\": false,\n"
            "  \"split_special_tokens\": true,\n%s  \"added_tokens_decoder\": {\n"
            "    \"256\": {\"content\": \"<|endoftext|>\", \"lstrip\": false, \"normalized\": false, \"rstrip\": false,"
            " \"single_word\": false, \"special\": true}\n  }\n}\n",
            mml);
    if ((st = averis_afile_commit(&af))) return st;
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    if ((st = averis_afile_open(&af, p))) return st;
    fprintf(af.f, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"pad_token_id\": %d\n}\n", BPE_EOT, BPE_EOT,
            BPE_EOT);
    return averis_afile_commit(&af);
}
