/* json.c — recursive-descent JSON reader into a small tree. */
#include "averis/json.h"
#include "averis/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t i, n;
    const char *what;
    int depth;
} jp;

static averis_status jerr(jp *p, const char *msg) {
    return averis_fail(AVERIS_EFORMAT, "%s: bad JSON at byte %zu: %s", p->what, p->i, msg);
}

static void skip_ws(jp *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static averis_status parse_value(jp *p, json *v);

/* Four hex digits at p->i into *cp; 0 if they are not there. */
static int hex4(jp *p, unsigned *cp) {
    if (p->i + 4 > p->n) return 0;
    *cp = 0;
    for (int k = 0; k < 4; k++) {
        char h = p->s[p->i++];
        *cp <<= 4;
        if (h >= '0' && h <= '9') *cp |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f') *cp |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') *cp |= (unsigned)(h - 'A' + 10);
        else return 0;
    }
    return 1;
}

static averis_status parse_string(jp *p, char **out) {
    p->i++; /* opening quote */
    size_t cap = 16, len = 0;
    char *b = malloc(cap);
    if (!b) return averis_fail(AVERIS_ENOMEM, "json: out of memory");
    for (;;) {
        if (p->i >= p->n) { free(b); return jerr(p, "unterminated string"); }
        unsigned char c = (unsigned char)p->s[p->i++];
        if (c == '"') break;
        if (c < 0x20) { free(b); return jerr(p, "control character in string"); }
        unsigned cp = c;
        int nbytes = 1;
        if (c == '\\') {
            if (p->i >= p->n) { free(b); return jerr(p, "unterminated escape"); }
            char e = p->s[p->i++];
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                if (!hex4(p, &cp)) { free(b); return jerr(p, "short or bad \\u escape"); }
                if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair: one code point beyond the BMP */
                    unsigned lo = 0;
                    if (p->i + 2 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' || (p->i += 2, !hex4(p, &lo)) ||
                        lo < 0xDC00 || lo > 0xDFFF) {
                        free(b);
                        return jerr(p, "lone surrogate \\u escape");
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp < 0xE000) { free(b); return jerr(p, "lone surrogate \\u escape"); }
                else if (cp == 0) { free(b); return jerr(p, "\\u0000 in a string (not supported)"); }
                nbytes = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
                break;
            }
            default: free(b); return jerr(p, "unknown escape");
            }
        }
        if (len + 4 >= cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) { free(b); return averis_fail(AVERIS_ENOMEM, "json: out of memory"); }
            b = nb;
        }
        if (nbytes == 1) b[len++] = (char)cp;
        else if (nbytes == 2) { b[len++] = (char)(0xC0 | (cp >> 6)); b[len++] = (char)(0x80 | (cp & 0x3F)); }
        else if (nbytes == 4) {
            b[len++] = (char)(0xF0 | (cp >> 18));
            b[len++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            b[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            b[len++] = (char)(0x80 | (cp & 0x3F));
        } else {
            b[len++] = (char)(0xE0 | (cp >> 12));
            b[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            b[len++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    b[len] = 0;
    *out = b;
    return AVERIS_OK;
}

static averis_status push(json *v, json *item, char *key) {
    if ((v->n & (v->n - 1)) == 0) { /* grow at powers of two */
        int cap = v->n ? 2 * v->n : 1;
        json *ni = realloc(v->items, (size_t)cap * sizeof *ni);
        if (!ni) return averis_fail(AVERIS_ENOMEM, "json: out of memory");
        v->items = ni;
        if (v->type == JSON_OBJ) {
            char **nk = realloc(v->keys, (size_t)cap * sizeof *nk);
            if (!nk) return averis_fail(AVERIS_ENOMEM, "json: out of memory");
            v->keys = nk;
        }
    }
    v->items[v->n] = *item;
    if (v->type == JSON_OBJ) v->keys[v->n] = key;
    v->n++;
    return AVERIS_OK;
}

static averis_status parse_container(jp *p, json *v, int obj) {
    v->type = obj ? JSON_OBJ : JSON_ARR;
    if (++p->depth > 64) return jerr(p, "nested too deeply");
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) { p->i++; p->depth--; return AVERIS_OK; }
    for (;;) {
        char *key = NULL;
        skip_ws(p);
        if (obj) {
            if (p->i >= p->n || p->s[p->i] != '"') return jerr(p, "expected a key string");
            averis_status st = parse_string(p, &key);
            if (st) return st;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') { free(key); return jerr(p, "expected ':'"); }
            p->i++;
        }
        json item;
        averis_status st = parse_value(p, &item);
        if (!st) st = push(v, &item, key);
        if (st) { free(key); json_free(&item); return st; }
        skip_ws(p);
        if (p->i >= p->n) return jerr(p, "unterminated container");
        char c = p->s[p->i++];
        if (c == ',') continue;
        if (c == (obj ? '}' : ']')) break;
        p->i--;
        return jerr(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    p->depth--;
    return AVERIS_OK;
}

static averis_status parse_value(jp *p, json *v) {
    memset(v, 0, sizeof *v);
    skip_ws(p);
    if (p->i >= p->n) return jerr(p, "unexpected end");
    char c = p->s[p->i];
    if (c == '{' || c == '[') return parse_container(p, v, c == '{');
    if (c == '"') { v->type = JSON_STR; return parse_string(p, &v->str); }
    static const struct { const char *w; json_type t; double n; } lit[] = {
        {"true", JSON_BOOL, 1}, {"false", JSON_BOOL, 0}, {"null", JSON_NULL, 0}};
    for (int k = 0; k < 3; k++) {
        size_t L = strlen(lit[k].w);
        if (p->i + L <= p->n && !memcmp(p->s + p->i, lit[k].w, L)) {
            v->type = lit[k].t; v->num = lit[k].n; p->i += L;
            return AVERIS_OK;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char buf[64];
        size_t L = 0;
        while (p->i + L < p->n && L < sizeof buf - 1 && strchr("+-.eE0123456789", p->s[p->i + L])) {
            buf[L] = p->s[p->i + L];
            L++;
        }
        buf[L] = 0;
        char *end;
        v->num = strtod(buf, &end);
        if (end != buf + L) return jerr(p, "bad number");
        v->type = JSON_NUM;
        p->i += L;
        return AVERIS_OK;
    }
    return jerr(p, "unexpected character");
}

averis_status json_parse(const char *text, size_t len, const char *what, json *out) {
    jp p = {text, 0, len, what ? what : "json", 0};
    averis_status st = parse_value(&p, out);
    if (st) { json_free(out); return st; }
    skip_ws(&p);
    if (p.i != p.n) { json_free(out); return jerr(&p, "trailing characters"); }
    return AVERIS_OK;
}

void json_free(json *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) {
        json_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    memset(v, 0, sizeof *v);
}

const json *json_get(const json *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

const char *json_printable(const char *s, char *buf, size_t cap) {
    size_t k = 0;
    for (; *s && k + 5 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x7f) buf[k++] = (char)c;
        else k += (size_t)snprintf(buf + k, cap - k, "\\x%02x", c);
    }
    if (*s && k + 3 < cap) buf[k++] = '.', buf[k++] = '.', buf[k++] = '.';
    buf[cap ? (k < cap ? k : cap - 1) : 0] = 0;
    return buf;
}
