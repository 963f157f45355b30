/* averis/comm.h — the collectives that data-parallel training needs, behind
 * one table, so the data-parallel layer (averis/dp.h) is written once:
 *
 *   - a CPU group of N ranks in one process (threads; src/comm_cpu.c): the
 *     tests and the CPU trainer run N-rank training with it;
 *   - NCCL (cuda/nccl.cu; src/comm_nccl_stub.c in builds without it): one
 *     process per GPU, buffers in device memory.
 *
 * Every collective is blocking from the caller's view (but the bucket
 * all-reduces, allreduce_start … allreduce_wait) and fails with a message
 * (never hangs) when a peer rank is gone: the CPU group's waits and
 * NCCL's polling both stop after a timeout (AVERIS_COMM_TIMEOUT seconds,
 * default 600) or when a peer called abort. Every rank calls the same
 * collectives in the same order.
 *
 * The result of a reduction has the same bits on every rank. The CPU group
 * sums in rank order, element by element, so N = 1 is the identity and
 * a run replays bit for bit. */
#ifndef AVERIS_COMM_H
#define AVERIS_COMM_H

#include <stddef.h>

#include "averis/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The type the gradients travel in: fp32, or BF16 (each rank's values are
 * rounded to BF16, RNE, and the sum is rounded to BF16 again). */
typedef enum { COMM_F32 = 0, COMM_BF16 = 1 } comm_wire;

typedef struct comm comm;
struct comm {
    int rank, world;
    const char *kind; /* "cpu", "nccl" */
    /* buf [n] ← Σ over ranks of buf [n], in place; buf in the comm's memory
     * (host for cpu, device for nccl) */
    averis_status (*allreduce)(comm *c, float *buf, size_t n, comm_wire wire);
    /* buf [world·per_rank]: rank r's part buf[r·per_rank ..) goes to every rank */
    averis_status (*allgather)(comm *c, float *buf, size_t per_rank);
    /* Bucketed all-reduce, overlapped with the work on the stream: buf [n]
     * (comm memory) ← Σ over ranks, once the work queued so far on the
     * stream (set_stream) has run; NCCL runs it on a stream of its own (the
     * CPU group at once). Several may be in flight, on disjoint buffers;
     * allreduce_wait makes the stream wait for all of them and reports their
     * failures. A bucket's sum is that of allreduce element by element (the
     * CPU group: the same bits; NCCL: up to its order, which may depend on n). */
    averis_status (*allreduce_start)(comm *c, float *buf, size_t n, comm_wire wire);
    averis_status (*allreduce_wait)(comm *c);
    /* rank 0's host dst [world·n] ← every rank's host src [n], in rank order
     * (dst NULL on the other ranks); through the comm's memory in chunks (a
     * checkpoint's ZeRO-1 moments) */
    averis_status (*gather_host)(comm *c, const float *src, float *dst, size_t n);
    /* host doubles v [n] ← Σ over ranks, in place */
    averis_status (*allreduce_host)(comm *c, double *v, int n);
    /* the later collectives go on this stream (a cudaStream_t; cpu: ignored) */
    void (*set_stream)(comm *c, void *stream);
    /* tells the peers this rank is leaving on an error: their collectives
     * fail at once instead of waiting for the timeout */
    void (*abort)(comm *c);
    void (*destroy)(comm *c);
    void *impl;
};

/* The timeout of every collective, seconds: AVERIS_COMM_TIMEOUT, else 600 (rank 0
 * writing a large checkpoint keeps the others waiting that long). */
double comm_timeout_s(void);

/* ------------------------------------------------------------ CPU group */
/* world comms ranks[0..world-1] for world threads of one process; each
 * rank destroys its own (the group goes with the last). */
averis_status comm_cpu_group(int world, comm **ranks);

/* ---------------------------------------------------------------- NCCL */
/* 1 if this build has NCCL (the Makefile detects it). */
int comm_nccl_compiled(void);

typedef struct {
    int rank, world;
    int device;          /* CUDA device of this rank (usually the local rank) */
    const char *id_file; /* rank 0 writes ncclUniqueId here, the others read it */
} comm_nccl_opts;
/* Sets NCCL_NVLS_ENABLE=0 unless the environment sets it, exchanges the id
 * through o->id_file (atomic write by rank 0; the others wait for it, up to
 * the timeout; rank 0 removes it once every rank has joined) and joins. */
averis_status comm_nccl_create(comm **c, const comm_nccl_opts *o);

/* ---------------------------------------------------------- environment */
/* The rank of this process as a launcher set it: RANK / WORLD_SIZE /
 * LOCAL_RANK (torchrun and our own --gpus launcher), else
 * OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK (Open MPI's mpirun), else
 * PMI_RANK / PMI_SIZE (MPICH, Slurm's PMI; local rank MPI_LOCALRANKID).
 * *found = 0 (and rank 0 of 1) when none is set; an unreadable or
 * inconsistent value is an error naming the variable. */
averis_status comm_env_ranks(int *rank, int *world, int *local_rank, int *found);

#ifdef __cplusplus
}
#endif
#endif
