/* io.c — atomic file writes and the .npy reader/writer. */
#define _POSIX_C_SOURCE 200809L
#include "averis/io.h"
#include "averis/json.h"
#include "averis/status.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* -------------------------------------------------------- atomic files */
averis_status averis_afile_open(averis_afile *af, const char *path) {
    memset(af, 0, sizeof *af);
    if (strlen(path) >= sizeof af->path) return averis_fail(AVERIS_EINVAL, "%s: path too long", path);
    strcpy(af->path, path);
    snprintf(af->tmp, sizeof af->tmp, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp, "wb");
    if (!af->f) return averis_fail(AVERIS_EIO, "%s: cannot write: %s", path, strerror(errno));
    return AVERIS_OK;
}

averis_status averis_afile_commit(averis_afile *af) {
    int bad = ferror(af->f) != 0;
    bad |= fflush(af->f) != 0;
    bad |= fsync(fileno(af->f)) != 0;
    int err = errno;
    bad |= fclose(af->f) != 0;
    af->f = NULL;
    if (bad) {
        unlink(af->tmp);
        return averis_fail(AVERIS_EIO, "%s: write failed: %s", af->path, strerror(err ? err : EIO));
    }
    if (rename(af->tmp, af->path) != 0) {
        err = errno;
        unlink(af->tmp);
        return averis_fail(AVERIS_EIO, "%s: cannot rename into place: %s", af->path, strerror(err));
    }
    return AVERIS_OK;
}

void averis_afile_abort(averis_afile *af) {
    if (af->f) fclose(af->f);
    af->f = NULL;
    if (af->tmp[0]) unlink(af->tmp);
}

/* --------------------------------------------------------------- .npy */
void averis_npy_free(averis_npy *a) {
    free(a->data);
    a->data = NULL;
}

/* Value of 'key' in the header dict (points just past "'key':" and spaces). */
static const char *dict_value(const char *hdr, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

averis_status averis_npy_read(const char *path, averis_npy *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot open: %s", path, strerror(errno));
    averis_status st = AVERIS_OK;
    char *hdr = NULL;
    unsigned char pre[12];
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        st = averis_fail(AVERIS_EFORMAT, "%s: not a .npy file (bad magic)", path);
        goto done;
    }
    uint32_t hlen;
    int major = pre[6];
    if (major == 1) {
        if (fread(pre + 8, 1, 2, f) != 2) { st = averis_fail(AVERIS_EFORMAT, "%s: truncated header", path); goto done; }
        hlen = (uint32_t)pre[8] | ((uint32_t)pre[9] << 8);
    } else if (major == 2 || major == 3) {
        if (fread(pre + 8, 1, 4, f) != 4) { st = averis_fail(AVERIS_EFORMAT, "%s: truncated header", path); goto done; }
        hlen = (uint32_t)pre[8] | ((uint32_t)pre[9] << 8) | ((uint32_t)pre[10] << 16) | ((uint32_t)pre[11] << 24);
    } else {
        st = averis_fail(AVERIS_EFORMAT, "%s: unsupported .npy version %d", path, major);
        goto done;
    }
    if (hlen > (1u << 20)) { st = averis_fail(AVERIS_EFORMAT, "%s: header length %u too large", path, hlen); goto done; }
    hdr = malloc(hlen + 1);
    if (!hdr) { st = averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); goto done; }
    if (fread(hdr, 1, hlen, f) != hlen) { st = averis_fail(AVERIS_EFORMAT, "%s: truncated header", path); goto done; }
    hdr[hlen] = 0;

    const char *d = dict_value(hdr, "descr");
    if (!d || (*d != '\'' && *d != '"')) { st = averis_fail(AVERIS_EFORMAT, "%s: header has no 'descr'", path); goto done; }
    char descr[32] = {0};
    {
        const char *e = strchr(d + 1, *d);
        if (!e || e - d - 1 >= (long)sizeof descr) { st = averis_fail(AVERIS_EFORMAT, "%s: bad 'descr'", path); goto done; }
        memcpy(descr, d + 1, (size_t)(e - d - 1));
    }
    size_t esize;
    if (!strcmp(descr, "<f4")) { out->dtype = AVERIS_NPY_F32; esize = 4; }
    else if (!strcmp(descr, "<u2")) { out->dtype = AVERIS_NPY_U16; esize = 2; }
    else if (!strcmp(descr, "<f2")) { out->dtype = AVERIS_NPY_F16; esize = 2; }
    else if (!strcmp(descr, "|u1")) { out->dtype = AVERIS_NPY_U8; esize = 1; }
    else {
        char d[48];
        st = averis_fail(AVERIS_EUNSUPPORTED,
                         "%s: dtype '%s' not supported (want '<f4', '<f2', or '<u2' holding bfloat16 bits)",
                         path, json_printable(descr, d, sizeof d));
        goto done;
    }
    const char *fo = dict_value(hdr, "fortran_order");
    if (!fo) { st = averis_fail(AVERIS_EFORMAT, "%s: header has no 'fortran_order'", path); goto done; }
    if (!strncmp(fo, "True", 4)) { st = averis_fail(AVERIS_EUNSUPPORTED, "%s: Fortran order not supported (save with C order)", path); goto done; }
    if (strncmp(fo, "False", 5)) { st = averis_fail(AVERIS_EFORMAT, "%s: bad 'fortran_order'", path); goto done; }
    const char *sh = dict_value(hdr, "shape");
    if (!sh || *sh != '(') { st = averis_fail(AVERIS_EFORMAT, "%s: header has no 'shape'", path); goto done; }
    sh++;
    out->count = 1;
    for (;;) {
        while (*sh == ' ' || *sh == ',') sh++;
        if (*sh == ')') break;
        char *end;
        errno = 0;
        long long v = strtoll(sh, &end, 10);
        if (end == sh || errno || v < 0) { st = averis_fail(AVERIS_EFORMAT, "%s: bad 'shape'", path); goto done; }
        if (out->ndim == AVERIS_NPY_MAXDIM) { st = averis_fail(AVERIS_EUNSUPPORTED, "%s: more than %d dimensions", path, AVERIS_NPY_MAXDIM); goto done; }
        out->shape[out->ndim++] = v;
        if (v > 0 && out->count > INT64_MAX / 8 / v) { st = averis_fail(AVERIS_EFORMAT, "%s: shape too large", path); goto done; }
        out->count *= v;
        sh = end;
    }
    size_t nbytes = (size_t)out->count * esize;
    long here = ftell(f), end = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    if (here < 0 || end < 0 || fseek(f, here, SEEK_SET)) { st = averis_fail(AVERIS_EIO, "%s: cannot seek", path); goto done; }
    if (nbytes > (size_t)(end - here)) { /* checked before allocating: the shape is the file's word */
        st = averis_fail(AVERIS_EFORMAT, "%s: truncated data: the shape needs %zu bytes, the file holds %ld", path, nbytes,
                         end - here);
        goto done;
    }
    out->data = malloc(nbytes ? nbytes : 1);
    if (!out->data) { st = averis_fail(AVERIS_ENOMEM, "%s: out of memory for %zu bytes", path, nbytes); goto done; }
    size_t got = fread(out->data, 1, nbytes, f);
    if (got != nbytes) {
        st = averis_fail(AVERIS_EFORMAT, "%s: truncated data: %zu of %zu bytes", path, got, nbytes);
        goto done;
    }
    if (fgetc(f) != EOF) { st = averis_fail(AVERIS_EFORMAT, "%s: trailing bytes after the data", path); goto done; }
done:
    free(hdr);
    fclose(f);
    if (st) averis_npy_free(out);
    return st;
}

averis_status averis_npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape) {
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld%s", (long long)shape[i], ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
        count *= shape[i];
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    int total = 10 + n + 1;               /* magic+ver+len, dict, '\n' */
    int pad = (64 - total % 64) % 64;     /* header padded to 64 bytes */
    uint16_t hlen = (uint16_t)(n + pad + 1);
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xFF), (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, 10, af.f);
    fwrite(dict, 1, (size_t)n, af.f);
    for (int i = 0; i < pad; i++) fputc(' ', af.f);
    fputc('\n', af.f);
    if (fwrite(data, sizeof(float), (size_t)count, af.f) != (size_t)count) {
        averis_afile_abort(&af);
        return averis_fail(AVERIS_EIO, "%s: write failed", path);
    }
    return averis_afile_commit(&af);
}

averis_status averis_mkdir_p(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return averis_fail(AVERIS_EINVAL, "mkdir: bad path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        struct stat sb;
        if (mkdir(buf, 0777) && (stat(buf, &sb) || !S_ISDIR(sb.st_mode))) {
            buf[i] = c;
            return averis_fail(AVERIS_EIO, "cannot create directory %s", path);
        }
        buf[i] = c;
    }
    return AVERIS_OK;
}

averis_status averis_read_file(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot open", path);
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (!b) { fclose(f); return averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); }
        n += fread(b + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *nb = realloc(b, cap *= 2);
        if (!nb) free(b);
        b = nb;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(b); return averis_fail(AVERIS_EIO, "%s: read error", path); }
    b[n] = 0;
    *buf = b;
    *len = n;
    return AVERIS_OK;
}
