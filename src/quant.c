/* quant.c — the `averis quant` round trip: optional mean split, RHT, SR;
 * error statistics; the packed file. */
#include "averis/quant.h"
#include "averis/io.h"
#include "averis/status.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static averis_status write_packed(const char *path, const nvfp4_tensor *t, uint32_t flags,
                                  const float *mean) {
    averis_afile af;
    averis_status st = averis_afile_open(&af, path);
    if (st) return st;
    unsigned char h[40] = {'A', 'V', 'N', 'V', 'F', 'P', '4', 0};
    uint32_t version = 1, zero = 0;
    memcpy(h + 8, &version, 4);
    memcpy(h + 12, &flags, 4);
    memcpy(h + 16, &t->rows, 8);
    memcpy(h + 24, &t->cols, 8);
    memcpy(h + 32, &t->amax, 4);
    memcpy(h + 36, &zero, 4);
    size_t ncodes = (size_t)(t->rows * t->cols_padded / 2);
    size_t nscales = (size_t)nvfp4_scale_count(t->rows, t->cols, t->block);
    int ok = fwrite(h, 1, 40, af.f) == 40 && fwrite(t->codes, 1, ncodes, af.f) == ncodes &&
             fwrite(t->scales, 1, nscales, af.f) == nscales;
    if (ok && mean) ok = fwrite(mean, sizeof(float), (size_t)t->cols, af.f) == (size_t)t->cols;
    if (!ok) {
        averis_afile_abort(&af);
        return averis_fail(AVERIS_EIO, "%s: write failed", path);
    }
    return averis_afile_commit(&af);
}

/* Every size the header declares is checked against the file's size before
 * anything is allocated: rows and cols are bounded by the bytes present. */
averis_status averis_packed_read(const char *path, averis_packed *p) {
    memset(p, 0, sizeof *p);
    FILE *f = fopen(path, "rb");
    if (!f) return averis_fail(AVERIS_EIO, "%s: cannot open: %s", path, strerror(errno));
    averis_status st = AVERIS_OK;
    unsigned char h[40];
    uint32_t version, reserved;
    int64_t size = fseek(f, 0, SEEK_END) ? -1 : (int64_t)ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET)) { st = averis_fail(AVERIS_EIO, "%s: cannot seek", path); goto done; }
    if (fread(h, 1, 40, f) != 40) { st = averis_fail(AVERIS_EFORMAT, "%s: truncated header (%lld bytes, want 40)", path, (long long)size); goto done; }
    if (memcmp(h, "AVNVFP4", 8)) { st = averis_fail(AVERIS_EFORMAT, "%s: not a packed NVFP4 file (bad magic)", path); goto done; }
    memcpy(&version, h + 8, 4);
    memcpy(&p->flags, h + 12, 4);
    memcpy(&p->t.rows, h + 16, 8);
    memcpy(&p->t.cols, h + 24, 8);
    memcpy(&p->t.amax, h + 32, 4);
    memcpy(&reserved, h + 36, 4);
    const uint32_t known = AVERIS_PACKED_TILE | AVERIS_PACKED_RHT | AVERIS_PACKED_SPLIT | AVERIS_PACKED_MEAN_FP4 | AVERIS_PACKED_SR;
    int64_t rows = p->t.rows, cols = p->t.cols, avail = size - 40;
    if (version != 1) st = averis_fail(AVERIS_EFORMAT, "%s: version %u (want 1)", path, version);
    else if (p->flags & ~known) st = averis_fail(AVERIS_EFORMAT, "%s: unknown flags 0x%x", path, p->flags);
    else if ((p->flags & AVERIS_PACKED_MEAN_FP4) && !(p->flags & AVERIS_PACKED_SPLIT))
        st = averis_fail(AVERIS_EFORMAT, "%s: flags 0x%x: mean-fp4 without the mean split", path, p->flags);
    else if (reserved) st = averis_fail(AVERIS_EFORMAT, "%s: reserved field is %u (want 0)", path, reserved);
    else if (!(p->t.amax >= 0)) st = averis_fail(AVERIS_EFORMAT, "%s: amax %g is not a magnitude", path, (double)p->t.amax);
    /* each element holds half a byte: rows and cols ≤ 2·avail bounds every product below */
    else if (rows < 1 || cols < 1 || rows > 2 * avail || cols > 2 * avail || rows > 2 * avail / nvfp4_cols_padded(cols))
        st = averis_fail(AVERIS_EFORMAT, "%s: rows %lld × cols %lld do not fit the file (%lld data bytes)", path,
                         (long long)rows, (long long)cols, (long long)avail);
    if (st) goto done;
    p->t.block = p->flags & AVERIS_PACKED_TILE ? NVFP4_BLOCK_16X16 : NVFP4_BLOCK_1X16;
    int64_t ncodes = rows * nvfp4_cols_padded(cols) / 2, nscales = nvfp4_scale_count(rows, cols, p->t.block);
    int64_t nmean = p->flags & AVERIS_PACKED_SPLIT ? cols : 0;
    if (ncodes + nscales + 4 * nmean != avail) {
        st = averis_fail(AVERIS_EFORMAT, "%s: %lld × %lld %s needs %lld data bytes, the file holds %lld", path,
                         (long long)rows, (long long)cols, nmean ? "with a mean" : "", (long long)(ncodes + nscales + 4 * nmean),
                         (long long)avail);
        goto done;
    }
    float amax = p->t.amax;
    if ((st = nvfp4_tensor_alloc(&p->t, rows, cols, p->t.block))) goto done;
    p->t.amax = amax;
    if (nmean && !(p->mean = malloc((size_t)nmean * sizeof(float)))) { st = averis_fail(AVERIS_ENOMEM, "%s: out of memory", path); goto done; }
    if (fread(p->t.codes, 1, (size_t)ncodes, f) != (size_t)ncodes || fread(p->t.scales, 1, (size_t)nscales, f) != (size_t)nscales ||
        (nmean && fread(p->mean, sizeof(float), (size_t)nmean, f) != (size_t)nmean))
        st = averis_fail(AVERIS_EIO, "%s: read error", path);
done:
    fclose(f);
    if (st) averis_packed_free(p);
    return st;
}

void averis_packed_free(averis_packed *p) {
    nvfp4_tensor_free(&p->t);
    free(p->mean);
    memset(p, 0, sizeof *p);
}

typedef averis_status (*quant_fn)(const void *, nvfp4_dtype, int64_t, int64_t, int64_t,
                                  const nvfp4_opts *, nvfp4_tensor *, nvfp4_stats *);

averis_status averis_quant_roundtrip(const float *x, int64_t rows, int64_t cols, const averis_qcfg *cfg,
                                     float *y, averis_qresult *res, const char *packed_path) {
    if (rows <= 0 || cols <= 0)
        return averis_fail(AVERIS_EINVAL, "quant: empty tensor (%lld x %lld)", (long long)rows, (long long)cols);
    quant_fn quantize = cfg->reference ? nvfp4_quantize_ref : nvfp4_quantize;
    averis_status st = AVERIS_OK;
    nvfp4_tensor t = {0}, tm = {0};
    float *mean = NULL, *cmax = NULL, *cmin = NULL, *mean_back = NULL;
    nvfp4_opts o = nvfp4_opts_default();
    o.block = cfg->block;
    o.rht = cfg->rht;
    o.sr = cfg->sr;
    o.seed = cfg->seed;
    o.impl = cfg->impl;
    o.nthreads = cfg->nthreads;

    if (cfg->split) {
        mean = malloc((size_t)cols * sizeof(float));
        cmax = malloc((size_t)cols * sizeof(float));
        cmin = malloc((size_t)cols * sizeof(float));
        if (!mean || !cmax || !cmin) { st = averis_fail(AVERIS_ENOMEM, "quant: out of memory"); goto done; }
        st = (cfg->reference ? nvfp4_colstats_ref : nvfp4_colstats)(x, rows, cols, cols, mean, cmax, cmin);
        if (st) goto done;
        o.mean = mean;
        if (!cfg->rht && !cfg->reference) o.amax_hint = nvfp4_residual_amax(mean, cmax, cmin, cols);
        mean_back = mean;
        if (cfg->mean_fp4) { /* the rank-one term μ̄: μ as a 1×cols NVFP4 tensor */
            nvfp4_opts om = nvfp4_opts_default();
            om.impl = cfg->impl;
            if ((st = nvfp4_tensor_alloc(&tm, 1, cols, NVFP4_BLOCK_1X16))) goto done;
            if ((st = quantize(mean, NVFP4_F32, 1, cols, cols, &om, &tm, NULL))) goto done;
            if ((st = nvfp4_dequantize(&tm, 0, cmax))) goto done; /* cmax reused as μ̄ */
            mean_back = cmax;
        }
    }
    if ((st = nvfp4_tensor_alloc(&t, rows, cols, cfg->block))) goto done;
    if ((st = quantize(x, NVFP4_F32, rows, cols, cols, &o, &t, &res->q))) goto done;
    if ((st = nvfp4_dequantize(&t, cfg->rht, y))) goto done;
    if (mean_back)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) y[r * cols + c] += mean_back[c];

    double num = 0, den = 0, maxerr = 0;
    int64_t nonfinite = 0;
    for (int64_t i = 0; i < rows * cols; i++) {
        if (!isfinite(x[i])) { nonfinite++; continue; }
        double e = (double)y[i] - (double)x[i];
        num += e * e;
        den += (double)x[i] * x[i];
        if (fabs(e) > maxerr || isnan(e)) maxerr = fabs(e);
    }
    res->rel_mse = den > 0 ? num / den : (num > 0 ? INFINITY : 0.0);
    res->max_abs_err = maxerr;
    res->flushed_frac = res->q.n_nonzero ? (double)res->q.n_flushed / (double)res->q.n_nonzero : 0.0;
    res->amax = t.amax;
    res->n_nonfinite = nonfinite;

    if (packed_path) {
        uint32_t flags = (cfg->block == NVFP4_BLOCK_16X16 ? AVERIS_PACKED_TILE : 0) |
                         (cfg->rht ? AVERIS_PACKED_RHT : 0) | (cfg->split ? AVERIS_PACKED_SPLIT : 0) |
                         (cfg->split && cfg->mean_fp4 ? AVERIS_PACKED_MEAN_FP4 : 0) |
                         (cfg->sr ? AVERIS_PACKED_SR : 0);
        st = write_packed(packed_path, &t, flags, mean_back);
    }
done:
    nvfp4_tensor_free(&t);
    nvfp4_tensor_free(&tm);
    free(mean);
    free(cmax);
    free(cmin);
    return st;
}
