/* train_dp.c — train_run on N data-parallel ranks that are threads of this
 * process, over the CPU group of averis/comm.h: what the tests use to check
 * that N ranks × batch b train as one process with batch N·b. */
#define _POSIX_C_SOURCE 200809L
#include "averis/train.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    train_opts o;
    dp_opts dp;
    train_result res;
    averis_status st;
    int omp_threads;
    char err[256];
} rank_job;

static void *rank_main(void *arg) {
    rank_job *j = arg;
#ifdef _OPENMP
    omp_set_num_threads(j->omp_threads); /* a new thread starts from the default, not the caller's count */
#endif
    j->st = train_run(&j->o, &j->res);
    if (j->st) {
        snprintf(j->err, sizeof j->err, "%s", averis_last_error());
        j->dp.comm->abort(j->dp.comm); /* the peers stop at their next collective */
    }
    return NULL;
}

averis_status train_run_threads(const train_opts *o, int world, comm_wire wire, size_t bucket_bytes, train_result *res) {
    memset(res, 0, sizeof *res);
    if (world < 1 || world > 64) return averis_fail(AVERIS_EINVAL, "train: %d ranks (1 to 64)", world);
    comm *ranks[64];
    rank_job *jobs = calloc((size_t)world, sizeof *jobs);
    pthread_t th[64];
    int started[64] = {0};
    if (!jobs) return averis_fail(AVERIS_ENOMEM, "train: out of memory");
    averis_status st = comm_cpu_group(world, ranks);
    if (st) { free(jobs); return st; }
    int omp = 1;
#ifdef _OPENMP
    omp = omp_get_max_threads() / world;
    if (omp < 1) omp = 1;
#endif
    for (int r = 0; r < world; r++) {
        rank_job *j = &jobs[r];
        j->o = *o;
        j->dp = (dp_opts){.comm = ranks[r], .wire = wire, .bucket_bytes = bucket_bytes};
        j->o.dp = &j->dp;
        if (r) j->o.quiet = 1;
        j->omp_threads = omp;
        if (pthread_create(&th[r], NULL, rank_main, j)) {
            j->st = averis_fail(AVERIS_ENOMEM, "train: cannot start rank %d's thread", r);
            snprintf(j->err, sizeof j->err, "%s", averis_last_error());
            ranks[r]->abort(ranks[r]);
        } else started[r] = 1;
    }
    for (int r = 0; r < world; r++)
        if (started[r]) pthread_join(th[r], NULL);
    /* the first rank's own error (not a peer's "aborted") names the cause */
    int bad = -1;
    for (int r = 0; r < world && bad < 0; r++)
        if (jobs[r].st && !strstr(jobs[r].err, "aborted")) bad = r;
    for (int r = 0; r < world && bad < 0; r++)
        if (jobs[r].st) bad = r;
    if (bad >= 0) st = averis_fail(jobs[bad].st, "rank %d of %d: %s", bad, world, jobs[bad].err);
    for (int r = 0; r < world; r++) {
        if (r || st) train_result_free(&jobs[r].res);
        ranks[r]->destroy(ranks[r]);
    }
    if (!st) *res = jobs[0].res;
    free(jobs);
    return st;
}
