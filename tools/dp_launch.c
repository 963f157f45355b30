/* dp_launch.c — how `averis train` becomes N data-parallel ranks
 * (docs/multigpu.md):
 *
 *   --gpus N, no launcher env   forks N ranks on this host (rank r on GPU r),
 *                               passing RANK / WORLD_SIZE / LOCAL_RANK and
 *                               AVERIS_NCCL_ID_FILE; waits for them; when one
 *                               fails, the others get a grace period
 *                               (AVERIS_DP_GRACE s, default 30) to stop on
 *                               their own, then SIGKILL;
 *   RANK/WORLD_SIZE (torchrun), OMPI_COMM_WORLD_* (mpirun), PMI_*
 *                               this process is one rank: GPU LOCAL_RANK, the
 *                               NCCL id through AVERIS_NCCL_ID_FILE (default
 *                               OUT/.nccl_id, which every host must see);
 *   --device cpu --gpus N       N ranks as threads (train_run_threads).
 *
 * --batch stays per rank: the global batch is ranks × --batch (what the
 * checkpoint records, so a resume on M ranks passes --batch G/M). Every
 * launch sets NCCL_NVLS_ENABLE=0 unless the environment sets it. */
#define _DEFAULT_SOURCE
#include "dp_launch.h"
#include "averis/io.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int dp_launch_wanted(int gpus) {
    int r, w, l, found = 0;
    if (gpus > 0) return 1;
    return comm_env_ranks(&r, &w, &l, &found) != AVERIS_OK || (found && w > 1); /* a bad variable: said by dp_launch_train */
}

static int report(const train_opts *o, averis_status st, train_result *r, int rank) {
    if (st) fprintf(stderr, "averis train: %s\n", averis_last_error());
    else if (rank == 0)
        printf("final: steps %d, train loss %.4f, val loss %.4f, %.0f tokens/s, %d skipped\n", r->steps_done,
               r->steps_done ? r->losses[r->steps_done - 1] : 0.0f, r->final_val_loss, r->tokens_per_s, r->skipped);
    (void)o;
    train_result_free(r);
    return st ? 1 : 0;
}

/* This process as one NCCL rank. */
static int run_rank(train_opts *o, int rank, int world, int local_rank, comm_wire wire, size_t bucket_bytes) {
    char id_file[4200];
    const char *e = getenv("AVERIS_NCCL_ID_FILE");
    averis_status st = AVERIS_OK;
    if (e && *e) snprintf(id_file, sizeof id_file, "%s", e);
    else {
        snprintf(id_file, sizeof id_file, "%s/.nccl_id", o->out_dir);
        if (world > 1) st = averis_mkdir_p(o->out_dir); /* one rank alone needs no id file: a missing GPU leaves no trace */
    }
    comm *c = NULL;
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    if (!st) st = comm_nccl_create(&c, &(comm_nccl_opts){.rank = rank, .world = world, .device = o->gpu + local_rank,
                                                           .id_file = id_file});
    if (st) {
        fprintf(stderr, "averis train: rank %d of %d: %s\n", rank, world, averis_last_error());
        return 1;
    }
    dp_opts dp = {.comm = c, .wire = wire, .bucket_bytes = bucket_bytes};
    o->dp = &dp;
    o->gpu += local_rank;
    o->batch *= world;
    if (rank) o->quiet = 1;
    train_result r;
    st = train_run(o, &r);
    if (st) {
        fprintf(stderr, "averis train: rank %d of %d: %s\n", rank, world, averis_last_error());
        c->abort(c);
        train_result_free(&r);
        c->destroy(c);
        return 1;
    }
    c->destroy(c);
    return report(o, st, &r, rank);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The parent of --gpus N: forks the ranks and waits for them. */
static int fork_ranks(train_opts *o, int n, comm_wire wire, size_t bucket_bytes) {
    char id_file[4200];
    if (averis_mkdir_p(o->out_dir)) { fprintf(stderr, "averis train: %s\n", averis_last_error()); return 1; }
    const char *e = getenv("AVERIS_NCCL_ID_FILE");
    if (e && *e) snprintf(id_file, sizeof id_file, "%s", e);
    else snprintf(id_file, sizeof id_file, "%s/.nccl_id.%d", o->out_dir, (int)getpid());
    unlink(id_file); /* a stale id would send the ranks to a dead run */
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pids[1024];
    for (int r = 0; r < n; r++) {
        pid_t p = fork();
        if (p < 0) {
            fprintf(stderr, "averis train: cannot fork rank %d: %s\n", r, strerror(errno));
            for (int q = 0; q < r; q++) kill(pids[q], SIGKILL);
            while (wait(NULL) > 0) {}
            return 1;
        }
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* no orphan ranks if the launcher dies */
            char v[32];
            snprintf(v, sizeof v, "%d", r); setenv("RANK", v, 1); setenv("LOCAL_RANK", v, 1);
            snprintf(v, sizeof v, "%d", n); setenv("WORLD_SIZE", v, 1);
            setenv("AVERIS_NCCL_ID_FILE", id_file, 1);
            exit(run_rank(o, r, n, r, wire, bucket_bytes));
        }
        pids[r] = p;
    }
    /* wait; on the first failure give the others AVERIS_DP_GRACE seconds */
    const char *g = getenv("AVERIS_DP_GRACE");
    double grace = g ? atof(g) : 30.0, deadline = 0;
    int left = n, rc = 0;
    while (left > 0) {
        int status;
        pid_t p = waitpid(-1, &status, deadline > 0 ? WNOHANG : 0);
        if (p < 0 && errno == EINTR) continue;
        if (p < 0) break;
        if (p == 0) {
            if (now_s() > deadline) {
                fprintf(stderr, "averis train: %d rank(s) still running %.0f s after a failure; killing them\n", left,
                        grace);
                for (int r = 0; r < n; r++)
                    if (pids[r] > 0) kill(pids[r], SIGKILL);
                deadline = now_s() + 1e9;
            }
            usleep(100000);
            continue;
        }
        int r = 0;
        while (r < n && pids[r] != p) r++;
        if (r < n) pids[r] = -1;
        left--;
        int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok) {
            if (WIFSIGNALED(status)) fprintf(stderr, "averis train: rank %d (pid %d) died of signal %d\n", r, (int)p, WTERMSIG(status));
            else fprintf(stderr, "averis train: rank %d (pid %d) exited with status %d\n", r, (int)p, WEXITSTATUS(status));
            if (!rc && left > 0) deadline = now_s() + grace;
            rc = 1;
        }
    }
    unlink(id_file);
    return rc;
}

int dp_launch_train(train_opts *o, int gpus, const char *grad_wire, double bucket_mb) {
    comm_wire wire = COMM_F32;
    size_t bucket_bytes = (size_t)(bucket_mb * 1048576.0 + 0.5);
    if (grad_wire && !strcmp(grad_wire, "bf16")) wire = COMM_BF16;
    else if (grad_wire && strcmp(grad_wire, "fp32")) {
        fprintf(stderr, "averis train: --grad-dtype must be fp32 or bf16 (got '%s')\n", grad_wire);
        return 2;
    }
    int rank, world, local, found;
    if (comm_env_ranks(&rank, &world, &local, &found)) {
        fprintf(stderr, "averis train: %s\n", averis_last_error());
        return 2;
    }
    if (gpus > 1024) { fprintf(stderr, "averis train: --gpus %d (at most 1024)\n", gpus); return 2; }
    if (o->device == 0) { /* the CPU: ranks as threads */
        if (found && world > 1) {
            fprintf(stderr, "averis train: data parallel across processes needs --device cuda (NCCL); on the CPU "
                            "--gpus N runs N ranks as threads of one process\n");
            return 2;
        }
        o->batch *= gpus;
        train_result r;
        averis_status st = train_run_threads(o, gpus, wire, bucket_bytes, &r);
        return report(o, st, &r, 0);
    }
    if (found && world > 1) {
        if (gpus > 0) {
            fprintf(stderr, "averis train: --gpus forks its own ranks; under torchrun/mpirun (%s set) leave it out\n",
                    getenv("RANK") ? "RANK" : "the launcher's rank variables");
            return 2;
        }
        return run_rank(o, rank, world, local, wire, bucket_bytes);
    }
    if (!comm_nccl_compiled()) {
        fprintf(stderr, "averis train: --gpus: this averis was built without NCCL (see `make features`)\n");
        return 1;
    }
    if (gpus == 1) return run_rank(o, 0, 1, 0, wire, bucket_bytes); /* the data-parallel path on one GPU */
    return fork_ranks(o, gpus, wire, bucket_bytes);
}
