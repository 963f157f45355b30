/* backend_cpu.c — the training backend on the CPU: the host model (model.c)
 * steps in place, so upload and download have nothing to move.
 *
 * AdamW (decoupled decay on matrices, none on norms) with bias correction:
 *   m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
 *   θ ← θ − lr·( m/(1−β1ᵗ) / (√(v/(1−β2ᵗ)) + ε) + wd·θ )
 * element by element as adamw_element (averis/model_spec.h) has it. */
#include "averis/backend.h"
#include "averis/model_spec.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    model *m;
    float *mom, *var; /* [moment_window_numel(&win)] */
    moment_window win;
    int B, T;
    train_grad_ready_fn ready; /* the next backward's grad_hook, or NULL */
    void *ready_ctx;
} cpu_backend;

static averis_status cpu_create(void **be, const train_backend_opts *o) {
    (void)o;
    if (!(*be = calloc(1, sizeof(cpu_backend)))) return averis_fail(AVERIS_ENOMEM, "cpu backend: out of memory");
    return AVERIS_OK;
}

static void cpu_destroy(void *be) { free(be); }

static averis_status cpu_bind(void *be, model *m, float *mom, float *var, const moment_window *win, int B, int T) {
    cpu_backend *c = be;
    c->m = m, c->mom = mom, c->var = var, c->B = B, c->T = T;
    c->win = win ? *win : moment_window_all(m->nparams);
    return mom ? model_zero_grad(m) : AVERIS_OK; /* a training run allocates its gradients up front */
}

static averis_status cpu_upload(void *be) { (void)be; return AVERIS_OK; }
static averis_status cpu_download(void *be, int moments) { (void)be; (void)moments; return AVERIS_OK; }
static averis_status cpu_zero_grad(void *be) { return model_zero_grad(((cpu_backend *)be)->m); }

/* With a grad_hook, the segments are reported after the whole backward (in
 * the GPU's order): data parallel's buckets become a sequence of all-reduces */
static averis_status cpu_step(void *be, const int *tokens, const int *targets, int backward, float loss_scale,
                              uint64_t sr_stream, float *loss) {
    cpu_backend *c = be;
    train_grad_ready_fn ready = backward ? c->ready : NULL;
    if (backward) c->ready = NULL; /* the next backward's only */
    averis_status st = model_forward(c->m, tokens, targets, c->B, c->T, loss);
    if (st || !backward) return st;
    st = model_backward(c->m, loss_scale, sr_stream);
    size_t lo, hi;
    for (int k = 0; !st && ready && model_grad_segment(c->m, k, &lo, &hi); k++) st = ready(c->ready_ctx, lo, hi);
    return st;
}

static averis_status cpu_grad_hook(void *be, train_grad_ready_fn fn, void *ctx) {
    cpu_backend *c = be;
    c->ready = fn, c->ready_ctx = ctx;
    return AVERIS_OK;
}

/* ‖g‖₂ summed in fixed chunks (the same bits for any thread count) */
static averis_status cpu_grad_norm(void *be, double *norm) {
    const model *m = ((cpu_backend *)be)->m;
    const float *g = m->grads;
    size_t n = m->nparams, nchunk = (n + TRAIN_GRADNORM_CHUNK - 1) / TRAIN_GRADNORM_CHUNK;
    if (!g) return averis_fail(AVERIS_EINVAL, "grad norm: no gradients (no backward yet)");
    double *part = calloc(nchunk, sizeof *part), total = 0.0;
    if (!part) return averis_fail(AVERIS_ENOMEM, "grad norm: out of memory");
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunk; c++) {
        size_t e = (c + 1) * TRAIN_GRADNORM_CHUNK < n ? (c + 1) * TRAIN_GRADNORM_CHUNK : n;
        double s = 0.0;
        for (size_t i = c * TRAIN_GRADNORM_CHUNK; i < e; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    for (size_t c = 0; c < nchunk; c++) total += part[c];
    free(part);
    *norm = sqrt(total);
    return AVERIS_OK;
}

/* AdamW over the flat elements [lo, hi) (the tensors that meet it, each
 * with its own decay): the whole model, or a data-parallel shard, whose
 * moments are held from mom + at on (the window) */
static averis_status cpu_adamw_range(void *be, size_t lo, size_t hi, double lr, double beta1, double beta2, double eps,
                                     double weight_decay, int64_t t, float gscale) {
    cpu_backend *c = be;
    model *m = c->m;
    if (!c->mom || !c->var || !m->grads) return averis_fail(AVERIS_EINVAL, "cpu backend: adamw without moments or gradients");
    size_t at = moment_window_at(&c->win, lo, hi);
    if (at == SIZE_MAX)
        return averis_fail(AVERIS_EINVAL, "cpu backend: adamw over [%zu, %zu), whose moments are not all held ([%zu, %zu) "
                                          "and [%zu, %zu) are)", lo, hi, c->win.lo[0], c->win.hi[0], c->win.lo[1], c->win.hi[1]);
    float b1 = (float)beta1, b2 = (float)beta2, epsf = (float)eps;
    float c1 = (float)(1.0 - pow(beta1, (double)t)), c2 = (float)(1.0 - pow(beta2, (double)t));
    float lrf = (float)lr, wd = (float)weight_decay;
    for (int k = 0; k < m->ntensors; k++) {
        const model_tensor *mt = &m->tensors[k];
        size_t a = mt->offset > lo ? mt->offset : lo, e = mt->offset + mt->numel < hi ? mt->offset + mt->numel : hi;
        if (a >= e) continue;
        float *p = m->params, *g = m->grads, *mm = c->mom + at, *vv = c->var + at; /* [i − lo]: element i's */
        float decay = mt->decay ? wd : 0.0f;
#pragma omp parallel for schedule(static)
        for (size_t i = a; i < e; i++)
            adamw_element(&p[i], &mm[i - lo], &vv[i - lo], g[i], gscale, b1, b2, c1, c2, lrf, epsf, decay);
    }
    return AVERIS_OK;
}

static averis_status cpu_adamw(void *be, double lr, double beta1, double beta2, double eps, double weight_decay,
                               int64_t t, float gscale) {
    return cpu_adamw_range(be, 0, ((cpu_backend *)be)->m->nparams, lr, beta1, beta2, eps, weight_decay, t, gscale);
}

static averis_status cpu_flat(void *be, float **params, float **grads, void **stream) {
    cpu_backend *c = be;
    if (!c->m || !c->m->grads) return averis_fail(AVERIS_EINVAL, "cpu backend: flat buffers before a training bind");
    *params = c->m->params, *grads = c->m->grads, *stream = NULL;
    return AVERIS_OK;
}

static averis_status cpu_params_changed(void *be) { (void)be; return AVERIS_OK; }

static const char *cpu_describe(void *be) { (void)be; return NULL; }

const train_backend train_backend_cpu = {
    .name = "cpu", .create = cpu_create, .destroy = cpu_destroy, .bind = cpu_bind, .upload = cpu_upload,
    .download = cpu_download, .zero_grad = cpu_zero_grad, .step = cpu_step, .grad_norm = cpu_grad_norm,
    .adamw = cpu_adamw, .describe = cpu_describe, .flat = cpu_flat, .adamw_range = cpu_adamw_range,
    .params_changed = cpu_params_changed, .grad_hook = cpu_grad_hook,
};
