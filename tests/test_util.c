/* test_util.c — see test_util.h. */
#define _GNU_SOURCE
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "averis/data.h"
#include "averis/qlinear.h"
#include "averis/status.h"
#include "check.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int test_mkdtemp(char *dir, size_t cap, const char *tag, int shm) {
    struct stat sb;
    const char *base = shm && !stat("/dev/shm", &sb) && S_ISDIR(sb.st_mode) && !access("/dev/shm", W_OK) ? "/dev/shm" : "/tmp";
    if ((size_t)snprintf(dir, cap, "%s/averis_%s_XXXXXX", base, tag) >= cap || !mkdtemp(dir)) {
        CHECK(0, "mkdtemp %s/averis_%s_XXXXXX", base, tag);
        return -1;
    }
    return 0;
}

void test_write_text(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    CHECK(f && fputs(text, f) >= 0, "write %s", p);
    if (f) CHECK(fclose(f) == 0, "close %s", p);
}

void test_markov_tokens(uint16_t *tok, int n, unsigned seed) {
    unsigned s = seed;
    tok[0] = 0;
    for (int i = 1; i < n; i++) {
        s = s * 1103515245u + 12345u;
        tok[i] = (uint16_t)((tok[i - 1] * 5 + 1 + ((s >> 16) % 3)) % 64);
    }
}

void test_write_split(const char *dir, const char *sub, const uint16_t *tok, int ntrain, int nval) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/%s/t_train.bin", dir, sub);
    CHECK(!shard_write(p, tok, (size_t)ntrain), "%s", averis_last_error());
    snprintf(p, sizeof p, "%s/%s/t_val.bin", dir, sub);
    CHECK(!shard_write(p, tok + ntrain, (size_t)nval), "%s", averis_last_error());
}

int test_same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

float test_step_1_and_2_threads(model *m, const char *recipe, const float *p0, float *g1, const int *ids,
                                const int *tg, int B, int T) {
    CHECK(!qlin_recipe_parse(recipe, &m->recipe), "%s", recipe);
    float l1 = 0, l2 = 0;
    int same = 1;
    for (int th = 1; th <= 2; th++) {
#ifdef _OPENMP
        omp_set_num_threads(th);
#endif
        memcpy(m->params, p0, m->nparams * sizeof(float));
        CHECK(!model_forward(m, ids, tg, B, T, th == 1 ? &l1 : &l2), "%s", averis_last_error());
        CHECK(!model_zero_grad(m) && !model_backward(m, 1.0f, 11), "%s", averis_last_error());
        if (th == 1) memcpy(g1, m->grads, m->nparams * sizeof(float));
        else same = !memcmp(g1, m->grads, m->nparams * sizeof(float));
    }
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    CHECK(l1 == l2 && same, "%s: 1 and 2 threads differ (loss %.9g vs %.9g, grads %s)", recipe, l1, l2,
          same ? "same" : "differ");
    return l1;
}

void test_rm_tree(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "rm -rf %s", dir);
}

double test_max_rel(const float *a, const float *b, int64_t n, int64_t *where) {
    double md = 0, mb = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || isnan(d)) { md = isnan(d) ? INFINITY : d; if (where) *where = i; }
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

double test_grads_vs_fixture(const model *m, const st_file *f, const char *what, double tol, const char **worst_name) {
    double worst = 0;
    *worst_name = "";
    for (int i = 0; i < m->ntensors; i++) {
        const model_tensor *mt = &m->tensors[i];
        char gname[128];
        snprintf(gname, sizeof gname, "grad.%s", mt->name);
        float *g = malloc(mt->numel * sizeof(float));
        CHECK(g, "out of memory");
        if (!g) return INFINITY;
        averis_status st = st_get_f32(f, gname, mt->ndim, mt->shape, g);
        CHECK(!st, "%s", averis_last_error());
        if (!st) {
            int64_t at = 0;
            double eg = test_max_rel(m->grads + mt->offset, g, (int64_t)mt->numel, &at);
            CHECK(eg < tol, "%s: %s rel err %.3e at %lld (got %.7g want %.7g)", what, gname, eg, (long long)at,
                  m->grads[mt->offset + at], g[at]);
            if (eg > worst) worst = eg, *worst_name = mt->name;
        }
        free(g);
    }
    return worst;
}
