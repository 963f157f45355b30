/* backend_cuda.c — the training backend on a GPU: a thin adapter over the
 * GPU model of averis/cuda.h, which keeps fp32 master weights and moments
 * on the device. Compiled in every build: without CUDA, src/cuda_stub.c
 * makes create fail with "built without CUDA". */
#include "averis/analysis_cuda.h"
#include "averis/backend.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    avc_model_opts opts;
    avc_model *gm;
    model *m; /* the host copy: checkpoints and analysis read it */
    float *mom, *var; /* [moment_window_numel(&win)] the host's moments */
    moment_window win; /* the moments the device holds (a ZeRO-1 rank's shard and tail, or all) */
    train_grad_ready_fn ready; /* the next backward's grad_hook, or NULL */
    void *ready_ctx;
    avc_analysis *ana; /* made at the first analysis */
    char gpu_desc[256], line[512];
} cuda_backend;

static averis_status cuda_create(void **be, const train_backend_opts *o) {
    cuda_backend *c = calloc(1, sizeof *c);
    if (!c) return averis_fail(AVERIS_ENOMEM, "cuda backend: out of memory");
    averis_status st = avc_init(o->gpu, c->gpu_desc, sizeof c->gpu_desc);
    if (st) { free(c); return st; }
    c->opts = o->gpu_opts;
    *be = c;
    return AVERIS_OK;
}

static void cuda_destroy(void *be) {
    cuda_backend *c = be;
    if (c) avc_analysis_free(c->ana);
    if (c) avc_model_free(c->gm);
    free(c);
}

static averis_status cuda_bind(void *be, model *m, float *mom, float *var, const moment_window *win, int B, int T) {
    cuda_backend *c = be;
    c->m = m, c->mom = mom, c->var = var;
    c->win = win ? *win : moment_window_all(m->nparams);
    avc_analysis_free(c->ana);
    c->ana = NULL;
    avc_model_free(c->gm);
    c->gm = NULL;
    avc_model_opts o = c->opts;
    o.moments = &c->win; /* the device allocates the window's moments only */
    return avc_model_create(&c->gm, m, B, T, &o);
}

static averis_status cuda_upload(void *be) {
    cuda_backend *c = be;
    return avc_model_upload(c->gm, c->m->params, c->mom, c->var);
}

static averis_status cuda_download(void *be, int moments) {
    cuda_backend *c = be;
    return avc_model_download(c->gm, c->m->params, moments ? c->mom : NULL, moments ? c->var : NULL);
}

static averis_status cuda_zero_grad(void *be) { return avc_model_zero_grad(((cuda_backend *)be)->gm); }

/* a grad_hook is the next backward's only */
static averis_status cuda_step(void *be, const int *tokens, const int *targets, int backward, float loss_scale,
                               uint64_t sr_stream, float *loss) {
    cuda_backend *c = be;
    if (backward && c->ready) avc_model_set_grad_hook(c->gm, c->ready, c->ready_ctx);
    averis_status st = avc_model_step(c->gm, tokens, targets, backward, loss_scale, sr_stream, loss);
    if (backward && c->ready) avc_model_set_grad_hook(c->gm, NULL, NULL), c->ready = NULL;
    return st;
}

static averis_status cuda_grad_hook(void *be, train_grad_ready_fn fn, void *ctx) {
    cuda_backend *c = be;
    c->ready = fn, c->ready_ctx = ctx;
    return AVERIS_OK;
}

static averis_status cuda_grad_norm(void *be, double *norm) { return avc_model_grad_norm(((cuda_backend *)be)->gm, norm); }

static averis_status cuda_adamw(void *be, double lr, double beta1, double beta2, double eps, double weight_decay,
                                int64_t t, float gscale) {
    return avc_model_adamw(((cuda_backend *)be)->gm, lr, beta1, beta2, eps, weight_decay, t, gscale);
}

static averis_status cuda_flat(void *be, float **params, float **grads, void **stream) {
    cuda_backend *c = be;
    if (!c->gm) return averis_fail(AVERIS_EINVAL, "cuda backend: flat buffers before bind");
    return avc_model_flat(c->gm, params, grads, NULL, NULL, stream);
}

/* [lo, hi)'s moments are held from the window's index `at` on */
static averis_status cuda_adamw_range(void *be, size_t lo, size_t hi, double lr, double beta1, double beta2, double eps,
                                      double weight_decay, int64_t t, float gscale) {
    cuda_backend *c = be;
    float *p, *g, *m, *v;
    void *s;
    size_t at = moment_window_at(&c->win, lo, hi);
    if (at == SIZE_MAX)
        return averis_fail(AVERIS_EINVAL, "cuda backend: adamw over [%zu, %zu), whose moments are not all held ([%zu, %zu) "
                                          "and [%zu, %zu) are)", lo, hi, c->win.lo[0], c->win.hi[0], c->win.lo[1], c->win.hi[1]);
    if (!c->gm) return averis_fail(AVERIS_EINVAL, "cuda backend: adamw before bind");
    averis_status st = avc_model_flat(c->gm, &p, &g, &m, &v, &s);
    return st ? st : avc_adamw_range(c->m->tensors, c->m->ntensors, p, g, m + at, v + at, lo, hi, lr, beta1, beta2, eps,
                                     weight_decay, t, gscale, s);
}

static averis_status cuda_params_changed(void *be) {
    avc_model_params_changed(((cuda_backend *)be)->gm);
    return AVERIS_OK;
}

static const char *cuda_describe(void *be) {
    cuda_backend *c = be;
    snprintf(c->line, sizeof c->line, "on %s; %s", c->gpu_desc, c->gm ? avc_model_describe(c->gm) : "no model yet");
    return c->line;
}

/* on the device: the taps of the GPU model through cuda/analysis.cu */
static averis_status cuda_analyze(void *be, const int *tokens, const int *targets, FILE *csv, const char *prefix,
                                  uint64_t sr_stream) {
    cuda_backend *c = be;
    averis_status st;
    if (!c->ana && (st = avc_analysis_create(&c->ana, avc_model_stream(c->gm)))) return st;
    return avc_analysis_model_rows(c->gm, c->ana, tokens, targets, csv, prefix, sr_stream, NULL);
}

const train_backend train_backend_cuda = {
    .name = "cuda", .create = cuda_create, .destroy = cuda_destroy, .bind = cuda_bind, .upload = cuda_upload,
    .download = cuda_download, .zero_grad = cuda_zero_grad, .step = cuda_step, .grad_norm = cuda_grad_norm,
    .adamw = cuda_adamw, .describe = cuda_describe, .analyze = cuda_analyze, .flat = cuda_flat,
    .adamw_range = cuda_adamw_range, .params_changed = cuda_params_changed, .grad_hook = cuda_grad_hook,
};
