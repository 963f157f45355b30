/* nccl.cu — averis/comm.h over NCCL: one process per GPU, buffers in device
 * memory, collectives on the model's stream; the bucket all-reduces on a
 * stream of their own, each behind an event of the model's stream (so they
 * overlap the rest of the backward), and the model's stream waits for them
 * all at allreduce_wait:
 *
 *   model stream  ─ layer L−1 bwd ─●─ layer L−2 bwd ─●─ … ─ embed bwd ─●──────────────wait→ norm, AdamW
 *   comm stream                    └→ all-reduce 1   └→ all-reduce 2    └→ last ─●──┘
 *
 * Nothing here may hang on a dead peer: the communicator is non-blocking
 * (ncclConfig_t.blocking = 0), and every collective is followed by a poll of
 * ncclCommGetAsyncError and cudaStreamQuery until the stream is done, an
 * error shows, or the timeout (AVERIS_COMM_TIMEOUT, default 600 s) passes;
 * then ncclCommAbort and an error naming the rank. The id of the
 * communicator goes from rank 0 to the others through a file (written
 * atomically; removed by rank 0 once all joined).
 *
 * Prefix: cc_ (the communicator).
 */
#define _POSIX_C_SOURCE 200809L
#include "common.cuh"
#include "averis/comm.h"

#include <nccl.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unistd.h>

namespace {

struct cc_nccl {
    ncclComm_t nc = nullptr;
    cudaStream_t s = nullptr;    /* the model's (set_stream) */
    cudaStream_t cs = nullptr;   /* the bucket all-reduces' (made at the first) */
    cudaEvent_t ev_ready = nullptr, ev_done = nullptr;
    int inflight = 0;            /* bucket all-reduces queued since the last allreduce_wait */
    __nv_bfloat16 *bf = nullptr; /* [bf_cap] the BF16 wire buffer */
    size_t bf_cap = 0;
    size_t bf_used = 0;          /* its elements that the buckets in flight use */
    double *hv = nullptr; /* [64] host values on their way through NCCL */
    double timeout_s = 600.0;
};

double cc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cc_abort_nc(cc_nccl *n) {
    if (n->nc) ncclCommAbort(n->nc);
    n->nc = nullptr;
}

averis_status cc_fail(comm *c, const char *what, const char *why) {
    cc_nccl *n = (cc_nccl *)c->impl;
    cc_abort_nc(n);
    return averis_fail(AVERIS_EIO, "nccl rank %d of %d: %s: %s; the communicator is aborted", c->rank, c->world, what,
                       why);
}

/* A non-blocking communicator may answer ncclInProgress while it is still
 * queueing the operation: nothing else goes on the stream until it is in. */
averis_status cc_settle(comm *c, const char *what) {
    cc_nccl *n = (cc_nccl *)c->impl;
    double t0 = cc_now();
    for (;;) {
        ncclResult_t ar = ncclSuccess;
        if (ncclCommGetAsyncError(n->nc, &ar) != ncclSuccess) ar = ncclInternalError;
        if (ar == ncclSuccess) return AVERIS_OK;
        if (ar != ncclInProgress) return cc_fail(c, what, ncclGetErrorString(ar));
        if (cc_now() - t0 > n->timeout_s) return cc_fail(c, what, "not queued before the timeout (AVERIS_COMM_TIMEOUT)");
        usleep(50);
    }
}

#define CC_TRY(c, call)                                                                                     \
    do {                                                                                                     \
        cc_nccl *n_ = (cc_nccl *)(c)->impl;                                                                  \
        if (!n_->nc) return averis_fail(AVERIS_EIO, "nccl rank %d: the communicator was aborted", (c)->rank); \
        ncclResult_t r_ = (call);                                                                            \
        if (r_ != ncclSuccess && r_ != ncclInProgress) return cc_fail((c), #call, ncclGetErrorString(r_));   \
        if (r_ == ncclInProgress) CU_OK(cc_settle((c), #call));                                              \
    } while (0)

/* Waits for `stream` (the collective just queued and what came before),
 * watching NCCL's asynchronous errors and the clock. */
averis_status cc_wait_stream(comm *c, cudaStream_t stream, const char *what) {
    cc_nccl *n = (cc_nccl *)c->impl;
    double t0 = cc_now();
    for (long spin = 0;; spin++) {
        ncclResult_t ar = ncclSuccess;
        if (ncclCommGetAsyncError(n->nc, &ar) != ncclSuccess || (ar != ncclSuccess && ar != ncclInProgress)) {
            char why[512];
            snprintf(why, sizeof why, "%s (%s); a peer rank probably died", ncclGetErrorString(ar),
                     ncclGetLastError(n->nc));
            return cc_fail(c, what, why);
        }
        if (ar == ncclSuccess) {
            cudaError_t q = cudaStreamQuery(stream);
            if (q == cudaSuccess) return AVERIS_OK;
            if (q != cudaErrorNotReady) return cc_fail(c, what, cudaGetErrorString(q));
        }
        if (cc_now() - t0 > n->timeout_s) {
            char why[256];
            snprintf(why, sizeof why,
                     "did not finish within %.0f s (AVERIS_COMM_TIMEOUT): a peer rank died or hangs", n->timeout_s);
            return cc_fail(c, what, why);
        }
        if (spin > 2000) usleep(100); /* spin first: most waits are short */
    }
}

averis_status cc_wait(comm *c, const char *what) { return cc_wait_stream(c, ((cc_nccl *)c->impl)->s, what); }

__global__ void k_to_bf16(const float *x, __nv_bfloat16 *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}
__global__ void k_from_bf16(const __nv_bfloat16 *x, float *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __bfloat162float(x[i]);
}

averis_status cc_allreduce_wait(comm *c);

averis_status cc_allreduce(comm *c, float *buf, size_t n, comm_wire wire) {
    cc_nccl *q = (cc_nccl *)c->impl;
    if (q->inflight) CU_OK(cc_allreduce_wait(c)); /* the wire buffer may be the buckets' */
    if (wire == COMM_F32) {
        CC_TRY(c, ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, q->nc, q->s));
        return cc_wait(c, "all-reduce of the gradients (fp32)");
    }
    if (q->bf_cap < n) {
        if (q->bf) cudaFree(q->bf);
        q->bf = nullptr, q->bf_cap = 0;
        CU_TRY(cudaMalloc(&q->bf, n * sizeof(__nv_bfloat16)));
        q->bf_cap = n;
    }
    unsigned blocks = (unsigned)((n + 255) / 256);
    k_to_bf16<<<blocks, 256, 0, q->s>>>(buf, q->bf, n);
    CU_LAUNCHED();
    CC_TRY(c, ncclAllReduce(q->bf, q->bf, n, ncclBfloat16, ncclSum, q->nc, q->s));
    k_from_bf16<<<blocks, 256, 0, q->s>>>(q->bf, buf, n);
    CU_LAUNCHED();
    return cc_wait(c, "all-reduce of the gradients (bf16)");
}

/* A bucket: queued on cs behind an event of the model's stream. The BF16
 * wire gives each bucket in flight its own part of the wire buffer; when
 * it is too small (the first step), the buckets in flight finish and it
 * grows to what this step has asked so far. */
averis_status cc_allreduce_start(comm *c, float *buf, size_t n, comm_wire wire) {
    cc_nccl *q = (cc_nccl *)c->impl;
    if (!q->cs) {
        CU_TRY(cudaStreamCreateWithFlags(&q->cs, cudaStreamNonBlocking));
        CU_TRY(cudaEventCreateWithFlags(&q->ev_ready, cudaEventDisableTiming));
        CU_TRY(cudaEventCreateWithFlags(&q->ev_done, cudaEventDisableTiming));
    }
    __nv_bfloat16 *bf = nullptr;
    if (wire == COMM_BF16) {
        if (q->bf_used + n > q->bf_cap) {
            size_t want = q->bf_used + n;
            if (q->inflight) CU_OK(cc_wait_stream(c, q->cs, "bucketed all-reduce of the gradients"));
            if (q->bf) cudaFree(q->bf);
            q->bf = nullptr, q->bf_cap = q->bf_used = 0;
            CU_TRY(cudaMalloc(&q->bf, want * sizeof(__nv_bfloat16)));
            q->bf_cap = want;
        }
        bf = q->bf + q->bf_used;
        q->bf_used += n;
    }
    CU_TRY(cudaEventRecord(q->ev_ready, q->s));
    CU_TRY(cudaStreamWaitEvent(q->cs, q->ev_ready, 0));
    q->inflight++;
    if (wire == COMM_F32) {
        CC_TRY(c, ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, q->nc, q->cs));
        return AVERIS_OK;
    }
    unsigned blocks = (unsigned)((n + 255) / 256);
    k_to_bf16<<<blocks, 256, 0, q->cs>>>(buf, bf, n);
    CU_LAUNCHED();
    CC_TRY(c, ncclAllReduce(bf, bf, n, ncclBfloat16, ncclSum, q->nc, q->cs));
    k_from_bf16<<<blocks, 256, 0, q->cs>>>(bf, buf, n);
    CU_LAUNCHED();
    return AVERIS_OK;
}

/* The model's stream waits for the buckets; the host watches them finish
 * (a dead peer fails here at the timeout rather than hanging the norm) */
averis_status cc_allreduce_wait(comm *c) {
    cc_nccl *q = (cc_nccl *)c->impl;
    if (!q->inflight) return AVERIS_OK;
    q->inflight = 0, q->bf_used = 0;
    CU_TRY(cudaEventRecord(q->ev_done, q->cs));
    CU_TRY(cudaStreamWaitEvent(q->s, q->ev_done, 0));
    return cc_wait_stream(c, q->cs, "bucketed all-reduce of the gradients");
}

/* Chunks of k ≤ K floats per rank through a device buffer [world·K] and
 * the all-gather; rank 0 copies each rank's part out. K: 64 MiB in all,
 * at least 256 KiB a rank. */
averis_status cc_gather_host(comm *c, const float *src, float *dst, size_t n) {
    cc_nccl *q = (cc_nccl *)c->impl;
    int r = c->rank, w = c->world;
    if (r == 0 && !dst && n) return averis_fail(AVERIS_EINVAL, "nccl gather: no destination on rank 0");
    if (!n) return AVERIS_OK;
    if (w == 1) {
        memcpy(dst, src, n * sizeof *dst);
        return AVERIS_OK;
    }
    size_t K = std::min(n, std::max<size_t>((size_t)1 << 16, ((size_t)16 << 20) / (size_t)w));
    float *stage = nullptr;
    CU_TRY(cudaMalloc(&stage, (size_t)w * K * sizeof(float)));
    averis_status st = AVERIS_OK;
    for (size_t o = 0; o < n && !st; o += K) {
        size_t k = std::min(K, n - o);
        cudaError_t e = cudaMemcpyAsync(stage + (size_t)r * k, src + o, k * sizeof(float), cudaMemcpyHostToDevice, q->s);
        if (e != cudaSuccess) { st = averis_fail(AVERIS_EIO, "nccl gather: %s", cudaGetErrorString(e)); break; }
        if ((st = c->allgather(c, stage, k))) break;
        for (int p = 0; r == 0 && p < w && e == cudaSuccess; p++)
            e = cudaMemcpyAsync(dst + (size_t)p * n + o, stage + (size_t)p * k, k * sizeof(float), cudaMemcpyDeviceToHost, q->s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(q->s);
        if (e != cudaSuccess) st = averis_fail(AVERIS_EIO, "nccl gather: %s", cudaGetErrorString(e));
    }
    cudaFree(stage);
    return st;
}

averis_status cc_allgather(comm *c, float *buf, size_t per_rank) {
    cc_nccl *q = (cc_nccl *)c->impl;
    CC_TRY(c, ncclAllGather(buf + (size_t)c->rank * per_rank, buf, per_rank, ncclFloat, q->nc, q->s));
    return cc_wait(c, "all-gather");
}

averis_status cc_allreduce_host(comm *c, double *v, int n) {
    cc_nccl *q = (cc_nccl *)c->impl;
    if (n < 0 || n > 64) return averis_fail(AVERIS_EINVAL, "nccl: allreduce_host of %d values (at most 64)", n);
    CU_TRY(cudaMemcpyAsync(q->hv, v, (size_t)n * sizeof(double), cudaMemcpyHostToDevice, q->s));
    CC_TRY(c, ncclAllReduce(q->hv, q->hv, (size_t)n, ncclDouble, ncclSum, q->nc, q->s));
    CU_TRY(cudaMemcpyAsync(v, q->hv, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost, q->s));
    return cc_wait(c, "all-reduce of host values");
}

void cc_set_stream(comm *c, void *stream) { ((cc_nccl *)c->impl)->s = (cudaStream_t)stream; }

void cc_abort(comm *c) { cc_abort_nc((cc_nccl *)c->impl); }

void cc_destroy(comm *c) {
    if (!c) return;
    cc_nccl *n = (cc_nccl *)c->impl;
    if (n->nc) { /* finalize (flushes), bounded by the timeout, else abort */
        ncclResult_t ar = ncclInProgress;
        double t0 = cc_now();
        ncclCommFinalize(n->nc);
        while (ncclCommGetAsyncError(n->nc, &ar) == ncclSuccess && ar == ncclInProgress && cc_now() - t0 < n->timeout_s)
            usleep(100);
        if (ar == ncclSuccess) ncclCommDestroy(n->nc);
        else ncclCommAbort(n->nc);
    }
    if (n->bf) cudaFree(n->bf);
    if (n->hv) cudaFree(n->hv);
    if (n->ev_ready) cudaEventDestroy(n->ev_ready);
    if (n->ev_done) cudaEventDestroy(n->ev_done);
    if (n->cs) cudaStreamDestroy(n->cs);
    delete n;
    free(c);
}

/* rank 0: a fresh id into `path` (atomically); the others: wait for it */
averis_status cc_exchange_id(const comm_nccl_opts *o, ncclUniqueId *id, double timeout_s) {
    if (o->world == 1) { /* nobody to tell */
        ncclResult_t r = ncclGetUniqueId(id);
        return r == ncclSuccess ? AVERIS_OK : averis_fail(AVERIS_EIO, "nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
    }
    if (!o->id_file || !*o->id_file) return averis_fail(AVERIS_EINVAL, "nccl: no id file (AVERIS_NCCL_ID_FILE)");
    if (o->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(id);
        if (r != ncclSuccess) return averis_fail(AVERIS_EIO, "nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", o->id_file, (int)getpid());
        FILE *f = fopen(tmp, "wb");
        if (!f) return averis_fail(AVERIS_EIO, "nccl: cannot write the id file %s: %s", tmp, strerror(errno));
        int ok = fwrite(id, sizeof *id, 1, f) == 1;
        ok = (fflush(f) == 0) & ok;
        ok = (fsync(fileno(f)) == 0) & ok;
        ok = (fclose(f) == 0) & ok;
        if (!ok || rename(tmp, o->id_file)) {
            unlink(tmp);
            return averis_fail(AVERIS_EIO, "nccl: cannot write the id file %s: %s", o->id_file, strerror(errno));
        }
        return AVERIS_OK;
    }
    double t0 = cc_now();
    for (;;) {
        FILE *f = fopen(o->id_file, "rb");
        if (f) {
            size_t got = fread(id, 1, sizeof *id, f);
            fclose(f);
            if (got == sizeof *id) return AVERIS_OK;
        }
        if (cc_now() - t0 > timeout_s)
            return averis_fail(AVERIS_EIO,
                               "nccl rank %d: no id in %s after %.0f s (AVERIS_COMM_TIMEOUT): did rank 0 start, and do "
                               "both see the same file (AVERIS_NCCL_ID_FILE)?",
                               o->rank, o->id_file, timeout_s);
        usleep(20000);
    }
}

} // namespace

extern "C" {

int comm_nccl_compiled(void) { return 1; }

averis_status comm_nccl_create(comm **out, const comm_nccl_opts *o) {
    *out = nullptr;
    if (o->world < 1 || o->rank < 0 || o->rank >= o->world)
        return averis_fail(AVERIS_EINVAL, "nccl: rank %d of %d ranks", o->rank, o->world);
    setenv("NCCL_NVLS_ENABLE", "0", 0); /* NVLink SHARP off unless the user says otherwise (docs/multigpu.md) */
    CU_TRY(cudaSetDevice(o->device));
    double timeout_s = comm_timeout_s();
    ncclUniqueId id;
    CU_OK(cc_exchange_id(o, &id, timeout_s));
    comm *c = (comm *)calloc(1, sizeof *c);
    cc_nccl *n = new cc_nccl();
    if (!c) { delete n; return averis_fail(AVERIS_ENOMEM, "nccl: out of memory"); }
    n->timeout_s = timeout_s;
    *c = comm{o->rank, o->world, "nccl", cc_allreduce, cc_allgather, cc_allreduce_start, cc_allreduce_wait,
              cc_gather_host, cc_allreduce_host, cc_set_stream, cc_abort, cc_destroy, n};
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&n->nc, o->world, id, o->rank, &cfg);
    ncclResult_t ar = r;
    double t0 = cc_now();
    while (r == ncclSuccess || r == ncclInProgress) {
        if (ncclCommGetAsyncError(n->nc, &ar) != ncclSuccess || ar != ncclInProgress) break;
        if (cc_now() - t0 > timeout_s) { ar = ncclInProgress; break; }
        usleep(1000);
    }
    if ((r != ncclSuccess && r != ncclInProgress) || ar != ncclSuccess) {
        const char *why = ar == ncclInProgress ? "the other ranks did not join before the timeout (AVERIS_COMM_TIMEOUT)"
                                               : ncclGetErrorString(r != ncclSuccess && r != ncclInProgress ? r : ar);
        averis_status st = averis_fail(AVERIS_EIO, "nccl rank %d of %d: joining through %s failed: %s", o->rank,
                                       o->world, o->id_file, why);
        if (n->nc) ncclCommAbort(n->nc);
        n->nc = nullptr;
        cc_destroy(c);
        if (o->rank == 0 && o->world > 1) unlink(o->id_file); /* no later run may take this id */
        return st;
    }
    if (o->rank == 0 && o->world > 1) unlink(o->id_file); /* every rank has joined, so read it */
    cudaError_t e = cudaMalloc(&n->hv, 64 * sizeof(double));
    if (e != cudaSuccess) {
        cc_destroy(c);
        return averis_fail(AVERIS_ENOMEM, "nccl: cudaMalloc: %s", cudaGetErrorString(e));
    }
    *out = c;
    return AVERIS_OK;
}

} // extern "C"
