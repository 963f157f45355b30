/* test_fixtures.c — the PyTorch reference (tests/gen_fixtures.py) vs our
 * quantizer, bit for bit: packed bytes and dequantized output, for the
 * scalar spec and every fast path. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "averis/io.h"
#include "averis/half.h"
#include "averis/nvfp4.h"
#include "averis/quant.h"
#include "check.h"

static const char *fixture_dir(void) {
    const char *d = getenv("AVERIS_FIXTURES");
    return d ? d : "tests/fixtures/nvfp4";
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static int parse_flags(char *s, averis_qcfg *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (char *tok = strtok(s, " \n"); tok; tok = strtok(NULL, " \n")) {
        if (!strcmp(tok, "--block")) cfg->block = strcmp(strtok(NULL, " \n"), "16x16") ? NVFP4_BLOCK_1X16 : NVFP4_BLOCK_16X16;
        else if (!strcmp(tok, "--rht")) cfg->rht = 1;
        else if (!strcmp(tok, "--split")) { strtok(NULL, " \n"); cfg->split = 1; }
        else if (!strcmp(tok, "--mean-fp4")) cfg->mean_fp4 = 1;
        else if (!strcmp(tok, "--sr")) cfg->sr = 1;
        else if (!strcmp(tok, "--seed")) cfg->seed = strtoull(strtok(NULL, " \n"), NULL, 10);
        else return 0;
    }
    return 1;
}

static float *load_f32(const char *path, int64_t *rows, int64_t *cols) {
    averis_npy a;
    if (averis_npy_read(path, &a) || a.ndim != 2) return NULL;
    float *x = malloc(sizeof(float) * (size_t)a.count);
    for (int64_t i = 0; i < a.count; i++)
        x[i] = a.dtype == AVERIS_NPY_F32 ? ((float *)a.data)[i]
             : a.dtype == AVERIS_NPY_U16 ? bf16_to_f32(((uint16_t *)a.data)[i])
                                         : f16_to_f32(((uint16_t *)a.data)[i]);
    *rows = a.shape[0];
    *cols = a.shape[1];
    averis_npy_free(&a);
    return x;
}

static int same_float(float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    return ua == ub || (isnan(a) && isnan(b));
}

void test_fixtures_pytorch_bit_exact(void) {
    char path[1024], line[512];
    snprintf(path, sizeof path, "%s/MANIFEST", fixture_dir());
    FILE *mf = fopen(path, "r");
    CHECK(mf != NULL, "cannot open %s", path);
    if (!mf) return;
    const nvfp4_impl impls[] = {NVFP4_IMPL_SCALAR, NVFP4_IMPL_AVX2, NVFP4_IMPL_AVX512};
    int nfix = 0;
    char tmp[64];
    snprintf(tmp, sizeof tmp, "/tmp/averis_fixture_%d.packed", (int)getpid());
    while (fgets(line, sizeof line, mf)) {
        if (line[0] == '#') continue;
        char cname[64], vname[64];
        int off = 0;
        if (sscanf(line, "%63s %63s %n", cname, vname, &off) < 2) continue;
        averis_qcfg cfg;
        CHECK(parse_flags(line + off, &cfg), "bad flags in MANIFEST line for %s %s", cname, vname);
        int64_t rows, cols, er, ec;
        snprintf(path, sizeof path, "%s/%s.in.npy", fixture_dir(), cname);
        float *x = load_f32(path, &rows, &cols);
        snprintf(path, sizeof path, "%s/%s.%s.deq.npy", fixture_dir(), cname, vname);
        float *want = load_f32(path, &er, &ec);
        snprintf(path, sizeof path, "%s/%s.%s.packed", fixture_dir(), cname, vname);
        size_t nwant = 0;
        unsigned char *pwant = slurp(path, &nwant);
        CHECK(x && want && pwant && er == rows && ec == cols, "fixture %s %s loads", cname, vname);
        if (x && want && pwant) {
            float *y = malloc(sizeof(float) * (size_t)(rows * cols));
            for (int k = -1; k < 3; k++) { /* -1: the scalar spec */
                cfg.reference = k < 0;
                cfg.impl = k < 0 ? NVFP4_IMPL_AUTO : impls[k];
                cfg.nthreads = k < 0 ? 1 : 2;
                averis_qresult res;
                memset(&res, 0, sizeof res);
                CHECK(averis_quant_roundtrip(x, rows, cols, &cfg, y, &res, tmp) == AVERIS_OK, "%s %s: %s", cname,
                      vname, averis_last_error());
                size_t ngot = 0;
                unsigned char *pgot = slurp(tmp, &ngot);
                CHECK(pgot && ngot == nwant && !memcmp(pgot, pwant, nwant),
                      "%s %s (%s): packed bytes differ from PyTorch (%zu vs %zu bytes)", cname, vname,
                      k < 0 ? "ref" : nvfp4_impl_name(impls[k]), ngot, nwant);
                if (pgot && ngot == nwant)
                    for (size_t i = 0; i < nwant; i++)
                        if (pgot[i] != pwant[i]) {
                            CHECK(0, "  first difference at byte %zu: got 0x%02x, want 0x%02x", i, pgot[i], pwant[i]);
                            break;
                        }
                free(pgot);
                int64_t bad = 0, first = -1;
                for (int64_t i = 0; i < rows * cols; i++)
                    if (!same_float(y[i], want[i])) { bad++; if (first < 0) first = i; }
                CHECK(bad == 0, "%s %s (%s): %lld dequantized values differ, first at %lld: %a vs %a", cname, vname,
                      k < 0 ? "ref" : nvfp4_impl_name(impls[k]), (long long)bad, (long long)first,
                      first >= 0 ? (double)y[first] : 0.0, first >= 0 ? (double)want[first] : 0.0);
            }
            free(y);
            nfix++;
        }
        free(x);
        free(want);
        free(pwant);
    }
    fclose(mf);
    unlink(tmp);
    CHECK(nfix >= 64, "compared %d fixtures (want >= 64)", nfix);
}
