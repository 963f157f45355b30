/* safetensors.c — read and write the safetensors format. */
#define _POSIX_C_SOURCE 200809L
#include "averis/safetensors.h"
#include "averis/half.h"
#include "averis/io.h"
#include "averis/json.h"
#include "averis/status.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *name; st_dtype dt; int size; } k_dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"I32", ST_I32, 4}, {"I64", ST_I64, 8},
    {"F64", ST_OTHER, 8}, {"I16", ST_OTHER, 2}, {"I8", ST_OTHER, 1}, {"U8", ST_OTHER, 1}, {"BOOL", ST_OTHER, 1}};

void st_free(st_file *f) {
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

averis_status st_read(const char *path, st_file *f) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    char *raw;
    size_t len;
    averis_status rs = averis_read_file(path, &raw, &len);
    if (rs) return rs;
    f->buf = (uint8_t *)raw;
    long size = (long)len;
    if (size < 8) { st_free(f); return averis_fail(AVERIS_EFORMAT, "%s: truncated safetensors (%ld bytes)", path, size); }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->buf[i];
    if (hlen > (uint64_t)size - 8 || hlen > (100u << 20)) {
        st_free(f);
        return averis_fail(AVERIS_EFORMAT, "%s: header length %llu exceeds the file (%ld bytes): not a safetensors file or truncated",
                           path, (unsigned long long)hlen, size);
    }
    const uint8_t *data = f->buf + 8 + hlen;
    uint64_t dlen = (uint64_t)size - 8 - hlen;
    json root;
    averis_status st = json_parse((const char *)f->buf + 8, (size_t)hlen, path, &root);
    if (st) { st_free(f); return st; }
    if (root.type != JSON_OBJ) { st = averis_fail(AVERIS_EFORMAT, "%s: header is not a JSON object", path); goto out; }
    if (!(f->t = calloc((size_t)root.n + 1, sizeof *f->t))) { st = averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); goto out; }
    for (int i = 0; i < root.n; i++) {
        if (!strcmp(root.keys[i], "__metadata__")) continue;
        const json *e = &root.items[i], *dt = json_get(e, "dtype"), *sh = json_get(e, "shape"),
                   *off = json_get(e, "data_offsets");
        char nm[96];
        json_printable(root.keys[i], nm, sizeof nm);
        if (!dt || dt->type != JSON_STR || !sh || sh->type != JSON_ARR || sh->n > ST_MAXDIM || !off ||
            off->type != JSON_ARR || off->n != 2) {
            st = averis_fail(AVERIS_EFORMAT, "%s: tensor '%s': missing or bad dtype/shape/data_offsets", path, nm);
            goto out;
        }
        st_tensor *t = &f->t[f->n];
        int size_b = 0;
        t->dtype = ST_OTHER;
        for (size_t k = 0; k < sizeof k_dtypes / sizeof k_dtypes[0]; k++)
            if (!strcmp(dt->str, k_dtypes[k].name)) t->dtype = k_dtypes[k].dt, size_b = k_dtypes[k].size;
        if (!size_b) {
            char d[32];
            st = averis_fail(AVERIS_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", path, nm, json_printable(dt->str, d, sizeof d));
            goto out;
        }
        t->ndim = sh->n;
        t->numel = 1;
        for (int d = 0; d < sh->n; d++) {
            double v = sh->items[d].num;
            if (sh->items[d].type != JSON_NUM || v < 0 || v > 1e15) {
                st = averis_fail(AVERIS_EFORMAT, "%s: tensor '%s': bad shape", path, nm);
                goto out;
            }
            t->shape[d] = (int64_t)v;
            t->numel *= t->shape[d];
        }
        double b = off->items[0].num, e2 = off->items[1].num;
        if (off->items[0].type != JSON_NUM || off->items[1].type != JSON_NUM || b < 0 || e2 < b || e2 > (double)dlen ||
            (uint64_t)(e2 - b) != (uint64_t)t->numel * (uint64_t)size_b) {
            st = averis_fail(AVERIS_EFORMAT, "%s: tensor '%s': data_offsets [%.0f, %.0f] do not fit its shape or the file (%llu data bytes)",
                             path, nm, b, e2, (unsigned long long)dlen);
            goto out;
        }
        t->data = data + (uint64_t)b;
        if (!(t->name = strdup(root.keys[i]))) { st = averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); goto out; }
        f->n++;
    }
out:
    json_free(&root);
    if (st) st_free(f);
    return st;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++) k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

averis_status st_get_f32(const st_file *f, const char *name, int ndim, const int64_t *shape, float *out) {
    const st_tensor *t = st_find(f, name);
    if (!t) return averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' is missing", f->path, name);
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char a[128], b[128];
        shape_str(a, sizeof a, t->ndim, t->shape);
        shape_str(b, sizeof b, ndim, shape);
        return averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' has shape %s, expected %s", f->path, name, a, b);
    }
    for (int64_t i = 0; i < t->numel; i++) {
        const uint8_t *p = t->data + i * (t->dtype == ST_F32 ? 4 : 2);
        switch (t->dtype) {
        case ST_F32: memcpy(&out[i], p, 4); break;
        case ST_BF16: out[i] = bf16_to_f32((uint16_t)(p[0] | p[1] << 8)); break;
        case ST_F16: out[i] = f16_to_f32((uint16_t)(p[0] | p[1] << 8)); break;
        default: return averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' is not a float tensor", f->path, name);
        }
    }
    return AVERIS_OK;
}

averis_status st_get_int(const st_file *f, const char *name, int64_t count, int *out) {
    const st_tensor *t = st_find(f, name);
    if (!t) return averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' is missing", f->path, name);
    if (t->numel != count)
        return averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' has %lld elements, expected %lld", f->path, name,
                           (long long)t->numel, (long long)count);
    for (int64_t i = 0; i < count; i++) {
        int64_t v;
        if (t->dtype == ST_I32) { int32_t x; memcpy(&x, t->data + 4 * i, 4); v = x; }
        else if (t->dtype == ST_I64) memcpy(&v, t->data + 8 * i, 8);
        else return averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' is not an integer tensor", f->path, name);
        if (v < -2147483647 || v > 2147483647) return averis_fail(AVERIS_EFORMAT, "%s: tensor '%s' value out of range", f->path, name);
        out[i] = (int)v;
    }
    return AVERIS_OK;
}

averis_status st_write_f32(const char *path, const st_out *t, int n, const char *const *meta) {
    size_t cap = 256 + (size_t)n * 256, len = 0;
    char *h = malloc(cap);
    if (!h) return averis_fail(AVERIS_ENOMEM, "%s: out of memory", path);
#define EMIT(...) len += (size_t)snprintf(h + len, cap > len ? cap - len : 0, __VA_ARGS__)
    EMIT("{");
    if (meta) {
        EMIT("\"__metadata__\":{");
        for (int i = 0; meta[i] && meta[i + 1]; i += 2) EMIT("%s\"%s\":\"%s\"", i ? "," : "", meta[i], meta[i + 1]);
        EMIT("}");
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        EMIT("%s\"%s\":{\"dtype\":\"F32\",\"shape\":[", (i || meta) ? "," : "", t[i].name);
        for (int d = 0; d < t[i].ndim; d++) { EMIT(d ? ",%lld" : "%lld", (long long)t[i].shape[d]); numel *= t[i].shape[d]; }
        EMIT("],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + 4 * (uint64_t)numel));
        off += 4 * (uint64_t)numel;
    }
    EMIT("}");
#undef EMIT
    if (len >= cap) { free(h); return averis_fail(AVERIS_EINVAL, "%s: safetensors header too long", path); }
    while (len % 8) h[len++] = ' '; /* cap has room: 256 bytes of slack per tensor */
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) { free(h); return st; }
    uint8_t hl[8];
    for (int i = 0; i < 8; i++) hl[i] = (uint8_t)((uint64_t)len >> (8 * i));
    errno = 0;
    int ok = fwrite(hl, 1, 8, af.f) == 8 && fwrite(h, 1, len, af.f) == len;
    for (int i = 0; ok && i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= t[i].shape[d];
        ok = fwrite(t[i].data, 4, (size_t)numel, af.f) == (size_t)numel; /* little-endian hosts only */
    }
    int err = errno ? errno : EIO;
    free(h);
    if (!ok) { averis_afile_abort(&af); return averis_fail(AVERIS_EIO, "%s: write failed: %s", path, strerror(err)); }
    return averis_afile_commit(&af);
}
