/* comm_cpu.c — averis/comm.h for N ranks that are threads of one process:
 * the tests' stand-in for NCCL. Each collective publishes every rank's
 * buffer in a shared table between barriers; a reduction sums element by
 * element in rank order (so the result is the same bits on every rank and
 * N = 1 is the identity). The barrier waits with a timeout and an abort
 * flag, so a rank that leaves makes the others fail, not hang. Also the
 * environment reading and the timeout shared with cuda/nccl.cu. */
#define _POSIX_C_SOURCE 200809L
#include "averis/comm.h"
#include "averis/half.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double comm_timeout_s(void) {
    const char *e = getenv("AVERIS_COMM_TIMEOUT");
    char *end;
    double t = e ? strtod(e, &end) : 0.0;
    return e && end != e && *end == 0 && t > 0 ? t : 600.0;
}

/* --------------------------------------------------------- environment */
static int env_int(const char *name, int *v, int *bad) {
    const char *e = getenv(name);
    if (!e || !*e) return 0;
    char *end;
    long x = strtol(e, &end, 10);
    if (*end || x < 0 || x > 1 << 20) { *bad = 1; averis_fail(AVERIS_EINVAL, "environment: %s='%s' is not a rank or size", name, e); return 0; }
    *v = (int)x;
    return 1;
}

averis_status comm_env_ranks(int *rank, int *world, int *local_rank, int *found) {
    static const char *const k_sets[][3] = {
        {"RANK", "WORLD_SIZE", "LOCAL_RANK"},
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
        {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
    };
    *rank = 0, *world = 1, *local_rank = 0, *found = 0;
    for (size_t s = 0; s < sizeof k_sets / sizeof k_sets[0]; s++) {
        int r = 0, w = 0, l = -1, bad = 0;
        int hr = env_int(k_sets[s][0], &r, &bad), hw = env_int(k_sets[s][1], &w, &bad);
        if (bad) return AVERIS_EINVAL;
        if (!hr && !hw) continue;
        if (!hr || !hw)
            return averis_fail(AVERIS_EINVAL, "environment: %s is set but %s is not", hr ? k_sets[s][0] : k_sets[s][1],
                               hr ? k_sets[s][1] : k_sets[s][0]);
        if (w < 1 || r >= w) return averis_fail(AVERIS_EINVAL, "environment: %s=%d is not below %s=%d", k_sets[s][0], r, k_sets[s][1], w);
        if (!env_int(k_sets[s][2], &l, &bad)) l = r; /* one host: the local rank is the rank */
        if (bad) return AVERIS_EINVAL;
        *rank = r, *world = w, *local_rank = l, *found = 1;
        return AVERIS_OK;
    }
    return AVERIS_OK;
}

/* ------------------------------------------------------------ the group */
typedef struct {
    int world, refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived, aborted;
    unsigned long gen;
    double timeout_s;
    void *ptr[64];      /* each rank's buffer of the collective in flight */
    size_t len[64];     /* its length */
    float *scratch;     /* [cap] the reduction's result */
    size_t cap;
} cpu_group;

typedef struct {
    cpu_group *g;
    int rank;
} cpu_rank;

/* All ranks meet here; fails when a peer aborted or the timeout passed. */
static averis_status group_barrier(cpu_group *g, int rank) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double t = (double)until.tv_sec + until.tv_nsec * 1e-9 + g->timeout_s;
    until.tv_sec = (time_t)t;
    until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    pthread_mutex_lock(&g->mu);
    unsigned long gen = g->gen;
    int timed_out = 0;
    if (!g->aborted && ++g->arrived == g->world) {
        g->arrived = 0;
        g->gen++;
        pthread_cond_broadcast(&g->cv);
    } else {
        while (!g->aborted && g->gen == gen && !timed_out)
            timed_out = pthread_cond_timedwait(&g->cv, &g->mu, &until) == ETIMEDOUT;
        if (timed_out && g->gen == gen) { g->aborted = 1; pthread_cond_broadcast(&g->cv); }
    }
    int ok = g->gen != gen && !g->aborted;
    pthread_mutex_unlock(&g->mu);
    if (ok) return AVERIS_OK;
    return averis_fail(AVERIS_EIO, "comm (cpu) rank %d of %d: %s", rank, g->world,
                       timed_out ? "a collective waited past the timeout (AVERIS_COMM_TIMEOUT): a peer rank died or hangs"
                                 : "a peer rank aborted");
}

static averis_status publish(cpu_rank *r, void *buf, size_t n, const char *what) {
    cpu_group *g = r->g;
    g->ptr[r->rank] = buf;
    g->len[r->rank] = n;
    averis_status st = group_barrier(g, r->rank);
    if (st) return st;
    for (int q = 0; q < g->world; q++)
        if (g->len[q] != n)
            return averis_fail(AVERIS_EINVAL, "comm (cpu) %s: rank %d passed %zu elements, rank %d %zu", what, r->rank, n, q,
                               g->len[q]);
    return AVERIS_OK;
}

static float round_bf16(float x) { return bf16_to_f32(bf16_from_f32(x)); }

static averis_status cpu_allreduce(comm *c, float *buf, size_t n, comm_wire wire) {
    cpu_rank *r = c->impl;
    cpu_group *g = r->g;
    if (c->world == 1 && wire == COMM_F32) return AVERIS_OK;
    if (r->rank == 0 && g->cap < n) { /* grown before the barrier the others pass after */
        float *s = realloc(g->scratch, n * sizeof *s);
        if (s) g->scratch = s, g->cap = n;
    }
    averis_status st = publish(r, buf, n, "allreduce");
    if (st) return st;
    if (g->cap < n) return averis_fail(AVERIS_ENOMEM, "comm (cpu): out of memory for %zu floats", n);
    /* rank q sums its slice of the elements, in rank order */
    size_t lo = n * (size_t)r->rank / (size_t)g->world, hi = n * (size_t)(r->rank + 1) / (size_t)g->world;
    for (size_t i = lo; i < hi; i++) {
        float s = 0.0f;
        for (int q = 0; q < g->world; q++) {
            float x = ((const float *)g->ptr[q])[i];
            s = wire == COMM_BF16 ? round_bf16(s + round_bf16(x)) : (q ? s + x : x);
        }
        g->scratch[i] = s;
    }
    if ((st = group_barrier(g, r->rank))) return st;
    memcpy(buf, g->scratch, n * sizeof *buf);
    return group_barrier(g, r->rank); /* the scratch is read before the next collective */
}

static averis_status cpu_allgather(comm *c, float *buf, size_t per_rank) {
    cpu_rank *r = c->impl;
    cpu_group *g = r->g;
    if (c->world == 1) return AVERIS_OK;
    averis_status st = publish(r, buf, per_rank, "allgather");
    if (st) return st;
    for (int q = 0; q < g->world; q++) /* each rank reads only the others' own parts, which nobody writes */
        if (q != r->rank) memcpy(buf + (size_t)q * per_rank, (const float *)g->ptr[q] + (size_t)q * per_rank, per_rank * sizeof *buf);
    return group_barrier(g, r->rank);
}

/* the CPU group's buckets are plain all-reduces, one after the other */
static averis_status cpu_allreduce_start(comm *c, float *buf, size_t n, comm_wire wire) { return cpu_allreduce(c, buf, n, wire); }
static averis_status cpu_allreduce_wait(comm *c) { (void)c; return AVERIS_OK; }

static averis_status cpu_gather_host(comm *c, const float *src, float *dst, size_t n) {
    cpu_rank *r = c->impl;
    cpu_group *g = r->g;
    if (r->rank == 0 && !dst && n) return averis_fail(AVERIS_EINVAL, "comm (cpu) gather: no destination on rank 0");
    if (c->world == 1) {
        if (n) memcpy(dst, src, n * sizeof *dst);
        return AVERIS_OK;
    }
    averis_status st = publish(r, (void *)src, n, "gather"); /* only read */
    if (st) return st;
    for (int q = 0; r->rank == 0 && n && q < g->world; q++)
        memcpy(dst + (size_t)q * n, g->ptr[q], n * sizeof *dst);
    return group_barrier(g, r->rank); /* the sources are read before their ranks go on */
}

static averis_status cpu_allreduce_host(comm *c, double *v, int n) {
    cpu_rank *r = c->impl;
    cpu_group *g = r->g;
    if (c->world == 1) return AVERIS_OK;
    if (n > 64) return averis_fail(AVERIS_EINVAL, "comm (cpu): allreduce_host of %d values (at most 64)", n);
    averis_status st = publish(r, v, (size_t)n, "allreduce_host");
    if (st) return st;
    double s[64];
    for (int i = 0; i < n; i++) {
        s[i] = ((const double *)g->ptr[0])[i];
        for (int q = 1; q < g->world; q++) s[i] += ((const double *)g->ptr[q])[i];
    }
    if ((st = group_barrier(g, r->rank))) return st;
    memcpy(v, s, (size_t)n * sizeof *v);
    return AVERIS_OK;
}

static void cpu_set_stream(comm *c, void *stream) { (void)c; (void)stream; }

static void cpu_abort(comm *c) {
    cpu_group *g = ((cpu_rank *)c->impl)->g;
    pthread_mutex_lock(&g->mu);
    g->aborted = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void cpu_destroy(comm *c) {
    if (!c) return;
    cpu_group *g = ((cpu_rank *)c->impl)->g;
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        free(g->scratch);
        free(g);
    }
    free(c->impl);
    free(c);
}

averis_status comm_cpu_group(int world, comm **ranks) {
    if (world < 1 || world > 64) return averis_fail(AVERIS_EINVAL, "comm (cpu): %d ranks (1 to 64)", world);
    cpu_group *g = calloc(1, sizeof *g);
    if (!g) return averis_fail(AVERIS_ENOMEM, "comm (cpu): out of memory");
    g->world = world;
    g->timeout_s = comm_timeout_s();
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    for (int r = 0; r < world; r++) {
        comm *c = calloc(1, sizeof *c);
        cpu_rank *cr = calloc(1, sizeof *cr);
        if (!c || !cr) {
            free(c); free(cr);
            if (r == 0) { pthread_mutex_destroy(&g->mu); pthread_cond_destroy(&g->cv); free(g); }
            for (int q = 0; q < r; q++) cpu_destroy(ranks[q]); /* the last frees the group */
            return averis_fail(AVERIS_ENOMEM, "comm (cpu): out of memory");
        }
        cr->g = g, cr->rank = r;
        *c = (comm){.rank = r, .world = world, .kind = "cpu", .allreduce = cpu_allreduce, .allgather = cpu_allgather,
                    .allreduce_start = cpu_allreduce_start, .allreduce_wait = cpu_allreduce_wait,
                    .gather_host = cpu_gather_host, .allreduce_host = cpu_allreduce_host, .set_stream = cpu_set_stream,
                    .abort = cpu_abort, .destroy = cpu_destroy, .impl = cr};
        g->refs++;
        ranks[r] = c;
    }
    return AVERIS_OK;
}
