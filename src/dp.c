/* dp.c — data parallel with a ZeRO-1 optimizer: a training backend that
 * wraps the CPU or GPU backend and reduces over a communicator. The design
 * (row slices, shards, the tail, SR keys) is drawn in averis/dp.h. */
#include "averis/dp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

dp_range dp_shard(size_t n, int world, int rank) {
    size_t S = n / (size_t)world;
    return (dp_range){(size_t)rank * S, (size_t)(rank + 1) * S};
}

dp_range dp_tail(size_t n, int world) { return (dp_range){n / (size_t)world * (size_t)world, n}; }

averis_status dp_rows(int global_batch, int world, int rank, int *row0, int *rows) {
    if (world < 1 || rank < 0 || rank >= world)
        return averis_fail(AVERIS_EINVAL, "data parallel: rank %d of %d ranks", rank, world);
    if (global_batch < world || global_batch % world)
        return averis_fail(AVERIS_EINVAL, "data parallel: the global batch of %d rows does not split over %d ranks",
                           global_batch, world);
    *rows = global_batch / world;
    *row0 = rank * *rows;
    return AVERIS_OK;
}

uint64_t dp_sr_stream(uint64_t s, int world, int rank) { return s * (uint64_t)world + (uint64_t)rank; }

moment_window dp_moments(size_t n, int world, int rank) {
    dp_range s = dp_shard(n, world, rank), t = dp_tail(n, world);
    return (moment_window){{s.lo, t.lo}, {s.hi, t.hi}};
}

int dp_bucket_plan(const model *m, size_t bucket_bytes, dp_range *out, int cap) {
    int nb = 0;
    size_t hi = m->nparams, lo, seg_hi;
    for (int k = 0; bucket_bytes && model_grad_segment(m, k, &lo, &seg_hi); k++)
        if (hi > lo && (hi - lo) * sizeof(float) >= bucket_bytes) { /* [lo, hi): the segments since the last bucket */
            if (nb < cap) out[nb] = (dp_range){lo, hi};
            nb++;
            hi = lo;
        }
    if (hi > 0 || nb == 0) { /* the rest */
        if (nb < cap) out[nb] = (dp_range){0, hi};
        nb++;
    }
    return nb;
}

averis_status dp_agree(const dp_opts *o, double value, const char *what) {
    double v[2] = {value, value * value};
    comm *c = o->comm;
    averis_status st = c->allreduce_host(c, v, 2);
    if (st) return st;
    double mean = v[0] / c->world, var = v[1] / c->world - mean * mean;
    if (value == mean && !(var > 1e-9 * (1.0 + mean * mean))) return AVERIS_OK;
    return averis_fail(AVERIS_EINVAL,
                       "data parallel: the %d ranks disagree on %s (rank %d has %.17g, the mean is %.17g); every rank "
                       "must see the same --out and options",
                       c->world, what, c->rank, value, mean);
}

typedef struct {
    const train_backend *in;
    void *ictx;
    comm *c;
    comm_wire wire;
    int row0, rows, T;
    size_t n;
    dp_range shard, tail;
    moment_window win;     /* the moments this rank holds: shard and tail */
    float *mom, *var;      /* [moment_window_numel(&win)] the host's (bind's) */
    float *params, *grads; /* the inner backend's flat buffers */
    /* buckets: the plan, and the step in flight (grad_hook's callback) */
    size_t bucket_bytes;
    dp_range *plan;        /* [nplan] in the order they are sent */
    int nplan, sent;       /* sent: buckets started in this step's backward */
    size_t final_lo;       /* the gradients [final_lo, n) are final */
    int reduced;           /* this step's gradients are summed already (the buckets) */
    char line[768];
} dp_backend;

static averis_status dp_create(void **be, const train_backend_opts *o) {
    if (!o->inner || !o->dp || !o->dp->comm)
        return averis_fail(AVERIS_EINVAL, "data parallel: no inner backend or communicator");
    const train_backend *in = o->inner;
    if (!in->flat || !in->adamw_range || !in->params_changed)
        return averis_fail(AVERIS_EUNSUPPORTED, "data parallel: the %s backend cannot run data parallel", in->name);
    dp_backend *d = calloc(1, sizeof *d);
    if (!d) return averis_fail(AVERIS_ENOMEM, "data parallel: out of memory");
    d->in = in, d->c = o->dp->comm, d->wire = o->dp->wire, d->bucket_bytes = o->dp->bucket_bytes;
    averis_status st = in->create(&d->ictx, o);
    if (st) { free(d); return st; }
    *be = d;
    return AVERIS_OK;
}

static void dp_destroy(void *be) {
    dp_backend *d = be;
    if (!d) return;
    if (d->ictx) d->in->destroy(d->ictx);
    free(d->plan);
    free(d);
}

static averis_status dp_moment_window(void *be, size_t n, moment_window *win) {
    dp_backend *d = be;
    *win = dp_moments(n, d->c->world, d->c->rank);
    return AVERIS_OK;
}

/* win must be dp_moment_window's: the inner backend holds those moments only */
static averis_status dp_bind(void *be, model *m, float *mom, float *var, const moment_window *win, int B, int T) {
    dp_backend *d = be;
    d->n = m->nparams;
    d->shard = dp_shard(d->n, d->c->world, d->c->rank);
    d->tail = dp_tail(d->n, d->c->world);
    d->win = dp_moments(d->n, d->c->world, d->c->rank);
    d->mom = mom, d->var = var;
    if (mom && !(win && moment_window_equal(win, &d->win)) && !(!win && moment_window_is_all(&d->win, d->n)))
        return averis_fail(AVERIS_EINVAL, "data parallel: bound moments other than rank %d's window", d->c->rank);
    averis_status st = dp_rows(B, d->c->world, d->c->rank, &d->row0, &d->rows);
    if (st || (st = d->in->bind(d->ictx, m, mom, var, &d->win, d->rows, T))) return st;
    d->T = T;
    int cap = m->cfg.num_hidden_layers + 2;
    free(d->plan);
    if (!(d->plan = malloc((size_t)cap * sizeof *d->plan))) return averis_fail(AVERIS_ENOMEM, "data parallel: out of memory");
    d->nplan = dp_bucket_plan(m, d->bucket_bytes, d->plan, cap);
    if (!mom) return AVERIS_OK; /* forward only */
    void *stream = NULL;
    if ((st = d->in->flat(d->ictx, &d->params, &d->grads, &stream))) return st;
    d->c->set_stream(d->c, stream);
    return AVERIS_OK;
}

static averis_status dp_upload(void *be) { dp_backend *d = be; return d->in->upload(d->ictx); }

static averis_status dp_download(void *be, int moments) { dp_backend *d = be; return d->in->download(d->ictx, moments); }

/* The host's window [S | tail] of every rank → rank 0's mom/var [n]: the
 * shards in rank order, then rank 0's tail (every rank's is the same). */
static averis_status dp_gather_moments(void *be, float *mom, float *var) {
    dp_backend *d = be;
    size_t S = d->shard.hi - d->shard.lo, t = d->tail.hi - d->tail.lo, W = (size_t)d->c->world;
    if (!d->mom) return averis_fail(AVERIS_EINVAL, "data parallel: gather of the moments before a training bind");
    float *src[2] = {d->mom, d->var}, *dst[2] = {mom, var};
    for (int k = 0; k < 2; k++) {
        averis_status st = d->c->gather_host(d->c, src[k], dst[k], S);
        if (st) return st;
        if (dst[k] && t) memcpy(dst[k] + W * S, src[k] + S, t * sizeof(float));
    }
    return AVERIS_OK;
}

static averis_status dp_zero_grad(void *be) { dp_backend *d = be; return d->in->zero_grad(d->ictx); }

/* grad_hook's callback: [lo, hi) is final (the segments come from the end
 * of the vector, each just below the last); every bucket now wholly final
 * is started */
static averis_status dp_grad_ready(void *ctx, size_t lo, size_t hi) {
    dp_backend *d = ctx;
    if (hi != d->final_lo || lo > hi)
        return averis_fail(AVERIS_EINVAL, "data parallel: the backward finished [%zu, %zu) after [%zu, %zu)", lo, hi,
                           d->final_lo, d->n);
    d->final_lo = lo;
    for (; d->sent < d->nplan && d->plan[d->sent].lo >= lo; d->sent++) {
        dp_range b = d->plan[d->sent];
        averis_status st = d->c->allreduce_start(d->c, d->grads + b.lo, b.hi - b.lo, d->wire);
        if (st) return st;
    }
    return AVERIS_OK;
}

/* tokens/targets [G·T]: this rank's rows; the loss is the mean over all
 * ranks. The last micro-batch's backward all-reduces the gradients in the
 * plan's buckets as it goes (a backend without grad_hook, or no buckets:
 * one all-reduce in grad_norm). */
static averis_status dp_step(void *be, const int *tokens, const int *targets, int backward, float loss_scale,
                             uint64_t sr_stream, float *loss) {
    dp_backend *d = be;
    int w = d->c->world;
    size_t off = (size_t)d->row0 * (size_t)d->T;
    float l = 0.0f;
    int buckets = backward == TRAIN_BACKWARD_LAST && d->bucket_bytes && d->in->grad_hook && d->grads;
    averis_status st = AVERIS_OK;
    d->reduced = 0;
    if (buckets) {
        d->sent = 0, d->final_lo = d->n;
        st = d->in->grad_hook(d->ictx, dp_grad_ready, d);
    }
    if (!st) st = d->in->step(d->ictx, tokens + off, targets + off, backward, loss_scale / (float)w,
                              dp_sr_stream(sr_stream, w, d->c->rank), &l);
    if (!st && buckets && (d->final_lo || d->sent != d->nplan))
        st = averis_fail(AVERIS_EINVAL, "data parallel: the backward finished the gradients down to %zu of %zu and "
                                        "started %d of %d buckets", d->final_lo, d->n, d->sent, d->nplan);
    if (!st && buckets && !(st = d->c->allreduce_wait(d->c))) d->reduced = 1;
    double sum = l;
    if (st || (st = d->c->allreduce_host(d->c, &sum, 1))) return st;
    *loss = w == 1 ? l : (float)(sum / w);
    return AVERIS_OK;
}

/* Σ over the ranks of the (already 1/world-scaled) gradients (unless the
 * buckets did it), then the norm of that global gradient: the same on
 * every rank */
static averis_status dp_grad_norm(void *be, double *norm) {
    dp_backend *d = be;
    if (!d->grads) return averis_fail(AVERIS_EINVAL, "data parallel: grad norm before a training bind");
    averis_status st = d->reduced ? AVERIS_OK : d->c->allreduce(d->c, d->grads, d->n, d->wire);
    d->reduced = 0;
    return st ? st : d->in->grad_norm(d->ictx, norm);
}

static averis_status dp_adamw(void *be, double lr, double beta1, double beta2, double eps, double weight_decay,
                              int64_t t, float gscale) {
    dp_backend *d = be;
    averis_status st = AVERIS_OK;
    if (d->shard.hi > d->shard.lo)
        st = d->in->adamw_range(d->ictx, d->shard.lo, d->shard.hi, lr, beta1, beta2, eps, weight_decay, t, gscale);
    if (!st && d->tail.hi > d->tail.lo)
        st = d->in->adamw_range(d->ictx, d->tail.lo, d->tail.hi, lr, beta1, beta2, eps, weight_decay, t, gscale);
    size_t S = d->shard.hi - d->shard.lo;
    if (!st && S && d->c->world > 1) st = d->c->allgather(d->c, d->params, S);
    return st ? st : d->in->params_changed(d->ictx);
}

static const char *dp_describe(void *be) {
    dp_backend *d = be;
    const char *in = d->in->describe(d->ictx);
    size_t held = moment_window_numel(&d->win);
    char how[160];
    if (d->bucket_bytes && d->in->grad_hook)
        snprintf(how, sizeof how, "in %d bucket%s of >= %.3g MiB as the backward finishes them", d->nplan,
                 d->nplan == 1 ? "" : "s", (double)d->bucket_bytes / 1048576.0);
    else
        snprintf(how, sizeof how, "in one all-reduce after the backward");
    snprintf(d->line, sizeof d->line,
             "%s%sdata parallel (%s): rank %d of %d, rows %d..%d of each batch, ZeRO-1 shard of %zu of %zu parameters, "
             "AdamW moments of %zu parameters on this rank (%zu bytes; %zu bytes = %.1f MiB saved), gradients in %s %s",
             in ? in : "", in ? "; " : "", d->c->kind, d->c->rank, d->c->world, d->row0, d->row0 + d->rows - 1,
             d->shard.hi - d->shard.lo, d->n, held, 2 * sizeof(float) * held, 2 * sizeof(float) * (d->n - held),
             2.0 * sizeof(float) * (double)(d->n - held) / 1048576.0, d->wire == COMM_BF16 ? "bf16" : "fp32", how);
    return d->line;
}

const train_backend train_backend_dp = {
    .name = "dp", .create = dp_create, .destroy = dp_destroy, .bind = dp_bind, .upload = dp_upload,
    .download = dp_download, .zero_grad = dp_zero_grad, .step = dp_step, .grad_norm = dp_grad_norm,
    .adamw = dp_adamw, .describe = dp_describe, .moment_window = dp_moment_window, .gather_moments = dp_gather_moments,
};
