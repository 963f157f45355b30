/* moe.c — the Qwen3-MoE block (averis/moe.h), forward and hand-written
 * backward, in fp32 around qlinear.
 *
 * Per MoE layer, N tokens, E experts, top-k, width I; R = N·k routed rows,
 * laid out expert-major (expert 0's tokens in token order, then expert 1's…):
 *   p    = softmax(h·W_rᵀ)                 [N,E]  fp32 (never quantized)
 *   sel, w                                 [N,k]  top-k ids, combine weights
 *   xs   = h[perm]                         [R,C]  each expert's input X_e
 *   g, u = X_e·W_g,eᵀ, X_e·W_u,eᵀ          [R,I]  qlinear, the layer's recipe
 *   a    = silu(g)⊙u                       [R,I]
 *   y    = a_e·W_d,eᵀ                      [R,C]  qlinear
 *   out[t] = Σ_j w[t,j]·y[slot[t,j]]
 * Backward, given dout:
 *   dy[slot[t,j]] = w[t,j]·dout[t],  dw[t,j] = dout[t]·y[slot[t,j]]
 *   the experts' qlinear backwards (each over its own rows) → dxs
 *   dh[t] = Σ_j dxs[slot[t,j]]
 *   dp_sel = dw (or (dw − Σ_i dw_i·w_i)/Σ p_sel when norm_topk_prob)
 *   dp[t,e] += loss_scale·coef·E·cnt_e/M² (the aux loss: ∂aux/∂p[t,e])
 *   dz = p⊙(dp − Σ_e p·dp);  dh += dz·W_r;  dW_r += dzᵀ·h
 * The top-k choice and the counts are constants of the backward (as in
 * transformers: topk and one_hot carry no gradient).
 */
#include "averis/moe.h"
#include "averis/gemm.h"
#include "averis/model_spec.h"
#include "averis/status.h"
#include "model_math.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float *p;            /* [N,E] router probabilities */
    int *sel;            /* [N,k] chosen experts, largest first */
    float *wts;          /* [N,k] combine weights */
    int *counts, *offs;  /* [E] rows per expert, [E+1] first row of each */
    int *perm, *slot;    /* [R] token of each row; [N·k] row of each (token, choice) */
    float *xs, *y;       /* [R,C] */
    float *g, *u, *a;    /* [R,I] */
} moe_layer;

struct moe_state {
    int64_t cap, N;      /* tokens the buffers hold, tokens of the last forward */
    moe_layer *layers;   /* [L] (dense layers unused) */
    void *mem;
    double *daux;        /* [E] ∂aux/∂p[t,e] of the last forward's aux loss */
    float *scr;          /* backward scratch */
    size_t scr_cap;
};

int model_layer_is_moe(const model_config *c, int l) {
    if (c->num_experts <= 0 || c->decoder_sparse_step <= 0 || l < 0) return 0;
    if (l < 1024 && (c->mlp_only_layers[l >> 6] >> (l & 63) & 1)) return 0;
    return (l + 1) % c->decoder_sparse_step == 0;
}

averis_status moe_config_validate(const model_config *c, const char *what) {
    const struct { const char *field; int v, lo, hi; } f[] = {
        {"num_experts", c->num_experts, 1, 4096},
        {"num_experts_per_tok", c->num_experts_per_tok, 1, c->num_experts},
        {"moe_intermediate_size", c->moe_intermediate_size, 1, 1 << 18},
        {"decoder_sparse_step", c->decoder_sparse_step, 1, 1024},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi)
            return averis_fail(AVERIS_EINVAL, "%s: %s = %d is out of range (%d..%d)", what, f[i].field, f[i].v, f[i].lo,
                               f[i].hi);
    if (!(c->router_aux_loss_coef >= 0.0) || !isfinite(c->router_aux_loss_coef))
        return averis_fail(AVERIS_EINVAL, "%s: router_aux_loss_coef = %g must be ≥ 0", what, c->router_aux_loss_coef);
    return AVERIS_OK;
}

int64_t moe_layer_nparams(const model_config *c) {
    int64_t C = c->hidden_size, E = c->num_experts, I = c->moe_intermediate_size;
    return E * C + E * 3 * I * C;
}

int64_t moe_layer_active_nparams(const model_config *c) {
    int64_t C = c->hidden_size, E = c->num_experts, I = c->moe_intermediate_size;
    return E * C + (int64_t)c->num_experts_per_tok * 3 * I * C;
}

uint64_t moe_sr_stream(uint64_t step_stream, int layer, int expert, int lin) {
    return model_sr_stream(step_stream, layer, (model_linear)lin) | ((uint64_t)(expert + 1) & 0x3FFF) << 48;
}

/* ------------------------------------------------------------ buffers */
void moe_free(model *m) {
    if (!m->moe) return;
    free(m->moe->layers);
    free(m->moe->mem);
    free(m->moe->daux);
    free(m->moe->scr);
    free(m->moe);
    m->moe = NULL;
}

averis_status moe_ensure(model *m, int64_t N) {
    const model_config *c = &m->cfg;
    int L = c->num_hidden_layers, E = c->num_experts, k = c->num_experts_per_tok;
    int64_t C = c->hidden_size, I = c->moe_intermediate_size, R = N * k;
    if (!m->moe) {
        if (!(m->moe = calloc(1, sizeof *m->moe)) || !(m->moe->layers = calloc((size_t)L, sizeof(moe_layer))) ||
            !(m->moe->daux = calloc((size_t)E, sizeof(double)))) {
            moe_free(m);
            return averis_fail(AVERIS_ENOMEM, "moe: out of memory");
        }
    }
    struct moe_state *s = m->moe;
    s->N = N;
    if (N <= s->cap) return AVERIS_OK;
    /* floats, then ints, per MoE layer */
    size_t nf = (size_t)(N * E + N * k + 2 * R * C + 3 * R * I), ni = (size_t)(N * k + 2 * E + 1 + R + N * k);
    size_t per = nf * sizeof(float) + ni * sizeof(int), nl = 0;
    for (int l = 0; l < L; l++) nl += (size_t)model_layer_is_moe(c, l);
    free(s->mem);
    if (!(s->mem = malloc(per * nl))) {
        s->cap = 0;
        return averis_fail(AVERIS_ENOMEM, "moe: cannot allocate %zu MiB of expert activations for %lld tokens",
                           per * nl >> 20, (long long)N);
    }
    char *q = s->mem;
    for (int l = 0; l < L; l++) {
        if (!model_layer_is_moe(c, l)) continue;
        moe_layer *a = &s->layers[l];
        float *f = (float *)q;
#define TAKE(ptr, n) (ptr = f, f += (n))
        TAKE(a->p, N * E); TAKE(a->wts, N * k); TAKE(a->xs, R * C); TAKE(a->y, R * C);
        TAKE(a->g, R * I); TAKE(a->u, R * I); TAKE(a->a, R * I);
#undef TAKE
        int *i = (int *)f;
        a->sel = i; i += N * k;
        a->counts = i; i += E;
        a->offs = i; i += E + 1;
        a->perm = i; i += R;
        a->slot = i; i += N * k;
        q = (char *)i;
    }
    s->cap = N;
    return AVERIS_OK;
}

static const qlin_recipe *layer_recipe(const model *m, int l) {
    return model_block_is_bf16(m->cfg.num_hidden_layers, m->bf16_last, l) ? &m->bf16_recipe : &m->recipe;
}

static void tap(model *m, int l, const char *fmt, int e, const float *x, int64_t rows, int64_t cols) {
    if (!m->tap) return;
    char kind[48];
    snprintf(kind, sizeof kind, fmt, e);
    m->tap(m->tap_ctx, l, kind, x, rows, cols);
}

/* ------------------------------------------------------------ forward */
averis_status moe_forward(model *m, int l, const float *h, float *out) {
    const model_config *c = &m->cfg;
    moe_layer *a = &m->moe->layers[l];
    const model_block *w = &m->w.blocks[l];
    const qlin_recipe *r = layer_recipe(m, l);
    int E = c->num_experts, k = c->num_experts_per_tok;
    int64_t N = m->moe->N, C = c->hidden_size, I = c->moe_intermediate_size;
    averis_status st;

    /* router: logits, softmax over experts, top-k, the weights (fp32) */
    averis_sgemm(0, 1, N, E, C, 1.0f, h, C, w->router, C, 0.0f, a->p, E);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++) {
        float *p = a->p + t * E, mx = -INFINITY, sum = 0.0f;
        for (int e = 0; e < E; e++) mx = p[e] > mx ? p[e] : mx;
        for (int e = 0; e < E; e++) sum += (p[e] = exp_approx(p[e] - mx));
        float inv = 1.0f / sum;
        for (int e = 0; e < E; e++) p[e] *= inv;
        int *sel = a->sel + t * k;
        float *wt = a->wts + t * k, ws = 0.0f;
        for (int j = 0; j < k; j++) { /* the j-th largest: ties go to the lower expert */
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= sel[i] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            sel[j] = best;
            wt[j] = p[best];
            ws += p[best];
        }
        if (c->norm_topk_prob)
            for (int j = 0; j < k; j++) wt[j] /= ws;
    }
    /* rows by expert, tokens in order within each */
    memset(a->counts, 0, (size_t)E * sizeof(int));
    for (int64_t i = 0; i < N * k; i++) a->counts[a->sel[i]]++;
    a->offs[0] = 0;
    for (int e = 0; e < E; e++) a->offs[e + 1] = a->offs[e] + a->counts[e];
    for (int e = 0; e < E; e++) a->counts[e] = 0; /* counted again as fill cursors */
    for (int64_t t = 0; t < N; t++)
        for (int j = 0; j < k; j++) {
            int e = a->sel[t * k + j], row = a->offs[e] + a->counts[e]++;
            a->perm[row] = (int)t;
            a->slot[t * k + j] = row;
        }
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < N * k; row++)
        memcpy(a->xs + row * C, h + (int64_t)a->perm[row] * C, (size_t)C * sizeof(float));

    /* the experts, each on its own rows; an expert without tokens is skipped */
    for (int e = 0; e < E; e++) {
        int64_t n = a->counts[e], o = a->offs[e];
        if (!n) continue;
        const float *X = a->xs + o * C;
        float *g = a->g + o * I, *u = a->u + o * I, *ac = a->a + o * I;
        tap(m, l, "expert%d_in", e, X, n, C);
        if ((st = qlin_forward(r, X, w->eg + (int64_t)e * I * C, n, C, I, g, &m->ws, NULL)) ||
            (st = qlin_forward(r, X, w->eu + (int64_t)e * I * C, n, C, I, u, &m->ws, NULL)))
            return st;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n * I; i++) {
            float gv = g[i];
            ac[i] = gv / (1.0f + exp_approx(-gv)) * u[i];
        }
        tap(m, l, "expert%d_down_in", e, ac, n, I);
        if ((st = qlin_forward(r, ac, w->ed + (int64_t)e * C * I, n, I, C, a->y + o * C, &m->ws, NULL))) return st;
    }
    /* combine: out[t] = Σ_j w[t,j]·y[slot[t,j]], choices in order */
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++) {
        float *o = out + t * C;
        for (int64_t i = 0; i < C; i++) o[i] = 0.0f;
        for (int j = 0; j < k; j++) {
            float wt = a->wts[t * k + j];
            const float *y = a->y + (int64_t)a->slot[t * k + j] * C;
            for (int64_t i = 0; i < C; i++) o[i] += wt * y[i];
        }
    }
    return AVERIS_OK;
}

float moe_aux_loss(model *m) {
    const model_config *c = &m->cfg;
    if (!m->moe || !c->num_experts) return 0.0f;
    int E = c->num_experts;
    int64_t N = m->moe->N, rows = 0;
    double *cnt = calloc((size_t)E * 2, sizeof(double));
    if (!cnt) return NAN;
    double *psum = cnt + E;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (!model_layer_is_moe(c, l)) continue;
        const moe_layer *a = &m->moe->layers[l];
        for (int e = 0; e < E; e++) cnt[e] += a->counts[e];
        for (int64_t t = 0; t < N; t++)
            for (int e = 0; e < E; e++) psum[e] += a->p[t * E + e];
        rows += N;
    }
    double M = (double)rows, aux = 0.0;
    for (int e = 0; e < E; e++) {
        aux += (cnt[e] / M) * (psum[e] / M);
        m->moe->daux[e] = rows ? (double)E * cnt[e] / (M * M) : 0.0;
    }
    free(cnt);
    return rows ? (float)(aux * E) : 0.0f;
}

void moe_routing(const model *m, int l, const int **sel, const float **wts, const int **counts) {
    int ok = m->moe && model_layer_is_moe(&m->cfg, l);
    *sel = ok ? m->moe->layers[l].sel : NULL;
    *wts = ok ? m->moe->layers[l].wts : NULL;
    *counts = ok ? m->moe->layers[l].counts : NULL;
}

/* ------------------------------------------------------------ backward */
averis_status moe_backward(model *m, int l, const float *dout, float *dh, float loss_scale, uint64_t sr_stream) {
    const model_config *c = &m->cfg;
    struct moe_state *s = m->moe;
    moe_layer *a = &s->layers[l];
    const model_block *w = &m->w.blocks[l];
    model_block *gw = &m->g.blocks[l];
    const qlin_recipe *r = layer_recipe(m, l);
    const float *h = m->acts[l].h2;
    int E = c->num_experts, k = c->num_experts_per_tok;
    int64_t N = s->N, C = c->hidden_size, I = c->moe_intermediate_size, R = N * k;
    size_t need = (size_t)(3 * R * C + 3 * R * I + N * k + N * E);
    if (model_grow(&s->scr, &s->scr_cap, need))
        return averis_fail(AVERIS_ENOMEM, "moe: cannot allocate %zu MiB for the backward", need * 4 >> 20);
    float *q = s->scr;
    float *dy = q;   q += R * C;
    float *dxs = q;  q += R * C;
    float *dtmp = q; q += R * C;
    float *da = q;   q += R * I;
    float *dg = q;   q += R * I;
    float *du = q;   q += R * I;
    float *dw = q;   q += N * k;
    float *dz = q;
    averis_status st;

    /* through the combine */
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++)
        for (int j = 0; j < k; j++) {
            int64_t row = a->slot[t * k + j];
            const float *d = dout + t * C, *y = a->y + row * C;
            float wt = a->wts[t * k + j], dot = 0.0f, *o = dy + row * C;
            for (int64_t i = 0; i < C; i++) {
                o[i] = wt * d[i];
                dot += d[i] * y[i];
            }
            dw[t * k + j] = dot;
        }
    /* the experts */
    for (int e = 0; e < E; e++) {
        int64_t n = a->counts[e], o = a->offs[e];
        if (!n) continue;
        const float *X = a->xs + o * C, *ac = a->a + o * I, *g = a->g + o * I, *u = a->u + o * I;
        float *dae = da + o * I, *dge = dg + o * I, *due = du + o * I;
        tap(m, l, "grad_expert%d_down", e, dy + o * C, n, C);
        if ((st = qlin_backward(r, ac, w->ed + (int64_t)e * C * I, dy + o * C, n, I, C, dae,
                                gw->ed + (int64_t)e * C * I, moe_sr_stream(sr_stream, l, e, MODEL_LIN_DOWN), &m->ws,
                                NULL)))
            return st;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n * I; i++) {
            float gv = g[i], sg = 1.0f / (1.0f + exp_approx(-gv));
            due[i] = dae[i] * (gv * sg);
            dge[i] = dae[i] * u[i] * (sg * (1.0f + gv * (1.0f - sg)));
        }
        tap(m, l, "grad_expert%d_gate", e, dge, n, I);
        tap(m, l, "grad_expert%d_up", e, due, n, I);
        if ((st = qlin_backward(r, X, w->eg + (int64_t)e * I * C, dge, n, C, I, dxs + o * C,
                                gw->eg + (int64_t)e * I * C, moe_sr_stream(sr_stream, l, e, MODEL_LIN_GATE), &m->ws,
                                NULL)) ||
            (st = qlin_backward(r, X, w->eu + (int64_t)e * I * C, due, n, C, I, dtmp + o * C,
                                gw->eu + (int64_t)e * I * C, moe_sr_stream(sr_stream, l, e, MODEL_LIN_UP), &m->ws,
                                NULL)))
            return st;
    }
    /* back to tokens: dh[t] = Σ_j (dxs + dtmp)[slot[t,j]] */
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++) {
        float *o = dh + t * C;
        for (int64_t i = 0; i < C; i++) o[i] = 0.0f;
        for (int j = 0; j < k; j++) {
            int64_t row = a->slot[t * k + j];
            const float *x1 = dxs + row * C, *x2 = dtmp + row * C;
            for (int64_t i = 0; i < C; i++) o[i] += x1[i] + x2[i];
        }
    }
    /* the router: weights → probabilities (+ the aux loss) → logits */
    float aux_scale = c->output_router_logits ? loss_scale * (float)c->router_aux_loss_coef : 0.0f;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++) {
        const float *p = a->p + t * E, *wt = a->wts + t * k, *dwt = dw + t * k;
        const int *sel = a->sel + t * k;
        float *d = dz + t * E;
        for (int e = 0; e < E; e++) d[e] = aux_scale * (float)s->daux[e];
        if (c->norm_topk_prob) { /* w_j = p_j / S: ∂/∂p_j = (dw_j − Σ_i dw_i·w_i) / S */
            float S = 0.0f, dot = 0.0f;
            for (int j = 0; j < k; j++) S += p[sel[j]], dot += dwt[j] * wt[j];
            for (int j = 0; j < k; j++) d[sel[j]] += (dwt[j] - dot) / S;
        } else
            for (int j = 0; j < k; j++) d[sel[j]] += dwt[j];
        float pd = 0.0f;
        for (int e = 0; e < E; e++) pd += p[e] * d[e];
        for (int e = 0; e < E; e++) d[e] = p[e] * (d[e] - pd);
    }
    averis_sgemm(0, 0, N, C, E, 1.0f, dz, E, w->router, C, 1.0f, dh, C);
    averis_sgemm(1, 0, E, C, N, 1.0f, dz, E, h, C, 1.0f, gw->router, C);
    return AVERIS_OK;
}

/* ------------------------------------------------------------ fused checkpoints */
averis_status moe_load_fused(model *m, const st_file *f, uint64_t *fused) {
    const model_config *c = &m->cfg;
    int64_t E = c->num_experts, C = c->hidden_size, I = c->moe_intermediate_size;
    char gu[96], dn[96];
    averis_status st = AVERIS_OK;
    for (int l = 0; l < c->num_hidden_layers && l < 1024 && !st; l++) {
        if (!model_layer_is_moe(c, l)) continue;
        snprintf(gu, sizeof gu, "model.layers.%d.mlp.experts.gate_up_proj", l);
        snprintf(dn, sizeof dn, "model.layers.%d.mlp.experts.down_proj", l);
        if (!st_find(f, gu)) continue;
        const model_block *b = &m->w.blocks[l];
        int64_t sgu[3] = {E, 2 * I, C}, sdn[3] = {E, C, I};
        float *tmp = malloc((size_t)(E * 2 * I * C) * sizeof(float));
        if (!tmp) return averis_fail(AVERIS_ENOMEM, "%s: out of memory", f->path);
        if (!(st = st_get_f32(f, gu, 3, sgu, tmp)) && !(st = st_get_f32(f, dn, 3, sdn, b->ed)))
            for (int64_t e = 0; e < E; e++) { /* [gate; up] of each expert */
                memcpy(b->eg + e * I * C, tmp + e * 2 * I * C, (size_t)(I * C) * sizeof(float));
                memcpy(b->eu + e * I * C, tmp + e * 2 * I * C + I * C, (size_t)(I * C) * sizeof(float));
            }
        free(tmp);
        fused[l >> 6] |= 1ull << (l & 63);
    }
    return st;
}

int moe_tensor_fused(const model *m, const char *name, const uint64_t *fused) {
    int l;
    char rest[96];
    if (!m->cfg.num_experts || sscanf(name, "model.layers.%d.mlp.experts.%95s", &l, rest) != 2) return 0;
    return l >= 0 && l < 1024 && (fused[l >> 6] >> (l & 63) & 1);
}
