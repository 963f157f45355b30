/* qlinear.cu — cuBLASLt GEMMs and the device linear layer (see qlinear.cuh
 * for the math). The recipes and SR streams are those of src/qlinear.c, so
 * the quantized operands are the CPU's bits; only the GEMM accumulation
 * order and the split-BF16 rank-one columns differ. */
#include "qlinear.cuh"
#include "qlinear_kern.cuh"
#include "quant_fused.cuh"
#include "nvfp4_device.cuh"
#include "averis/model_spec.h"

#include <cstring>
#include <mutex>
#include <unordered_map>

/* ================================================================ cuBLASLt */
namespace {

struct lt_key {
    int ta_op, tb_op;
    int64_t M, N, K, lda, ldb, ldd;
    cudaDataType_t ta, tb, td;
    int bias, c_is_d;
    unsigned align[4];
    int size_class; /* planned by size class (cl_size_classes): see lt_make_plan */
    bool operator==(const lt_key &o) const { return !memcmp(this, &o, sizeof o); }
};

struct lt_plan {
    lt_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    int bias_in_epilogue; /* else the bias is added by a kernel */
};

/* Plans by key (a hash index over the array). The MoE experts' GEMMs
 * (cuda/moe.cu) have a new row count, and so a new key, almost every call:
 * when the cache is full the oldest plan is replaced (round robin). A key
 * gets the same algorithm whenever it is planned, so eviction changes no
 * result; the dense model's few dozen keys never fill it. */
enum { LT_MAX_PLANS = 1024 };
struct lt_state {
    cublasLtHandle_t h = nullptr;
    void *ws = nullptr;
    size_t ws_size = 32u << 20;
    float *consts = nullptr; /* {0, 1} */
    lt_plan plans[LT_MAX_PLANS];
    int nplans = 0, next_evict = 0;
    std::unordered_map<uint64_t, int> index; /* key hash → slot */
    /* size classes (cl_size_classes): the algorithm chosen for a class's
     * shape, by the class key's hash (the key kept to check for a collision) */
    struct cls {
        lt_key key;
        cublasLtMatmulAlgo_t algo;
        int ok, bias_in_epilogue;
    };
    std::unordered_map<uint64_t, cls> classes;
};
lt_state g_lt;
std::mutex g_lt_mu;
thread_local int t_size_classes = 0;

averis_status lt_init() {
    if (g_lt.h) return AVERIS_OK;
    CU_CUBLAS_TRY(cublasLtCreate(&g_lt.h));
    CU_ALLOC(cudaMalloc(&g_lt.ws, g_lt.ws_size), g_lt.ws_size);
    CU_TRY(cudaMalloc(&g_lt.consts, 2 * sizeof(float)));
    const float c[2] = {0.0f, 1.0f};
    CU_TRY(cudaMemcpy(g_lt.consts, c, sizeof c, cudaMemcpyHostToDevice));
    return AVERIS_OK;
}

unsigned align_of(const void *p) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    unsigned al = 256;
    while (al > 1 && a % al) al >>= 1;
    return al;
}

__global__ void k_add_bias(float *D, int64_t M, int64_t N, int64_t ldd, const float *bias) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < M * N) D[(i / N) * ldd + i % N] += bias[i % N];
}

uint64_t lt_hash(const lt_key &k) { /* FNV-1a over the key's bytes (zeroed padding) */
    const unsigned char *b = reinterpret_cast<const unsigned char *>(&k);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof k; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

void lt_destroy_plan(lt_plan *p) {
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    p->op = nullptr, p->a = p->b = p->c = nullptr;
}

/* the matmul descriptor and the layouts of key k */
averis_status lt_descs(const lt_key &k, lt_plan *p) {
    int64_t mm = k.N, nn = k.M; /* column-major view: D' [N×M] */
    cublasOperation_t opA = k.ta_op ? CUBLAS_OP_T : CUBLAS_OP_N, opB = k.tb_op ? CUBLAS_OP_T : CUBLAS_OP_N;
    CU_CUBLAS_TRY(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
    CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
    cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_DEVICE;
    CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm));
    /* A' (= row-major B): N×K if not transposed, K×N if; B' (= row-major A): K×M or M×K */
    CU_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->a, k.ta, opA == CUBLAS_OP_N ? mm : k.K, opA == CUBLAS_OP_N ? k.K : mm, k.ldb));
    CU_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->b, k.tb, opB == CUBLAS_OP_N ? k.K : nn, opB == CUBLAS_OP_N ? nn : k.K, k.lda));
    CU_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->c, k.td, mm, nn, k.ldd));
    return AVERIS_OK;
}

/* cuBLASLt's heuristic for p's layouts (the bias epilogue where it has one) */
averis_status lt_heuristic(const lt_key &k, lt_plan *p) {
    cublasLtMatmulPreference_t pref;
    CU_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
    CU_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g_lt.ws_size,
                                                       sizeof g_lt.ws_size));
    const cublasLtMatmulPreferenceAttributes_t al[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++) {
        uint32_t v = k.align[i];
        CU_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, al[i], &v, sizeof v));
    }
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    p->bias_in_epilogue = 0;
    if (k.bias) { /* the bias epilogue if cuBLASLt has one for these types, else a kernel */
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        if (cublasLtMatmulAlgoGetHeuristic(g_lt.h, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &found) ==
                CUBLAS_STATUS_SUCCESS && found > 0)
            p->bias_in_epilogue = 1;
        else {
            ep = CUBLASLT_EPILOGUE_DEFAULT;
            CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
            found = 0;
        }
    }
    if (!found) {
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_lt.h, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &found);
        if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
            cublasLtMatmulPreferenceDestroy(pref);
            return averis_fail(AVERIS_EUNSUPPORTED, "cublasLt: no algorithm for a %lldx%lldx%lld GEMM (types %d,%d→%d)",
                               (long long)k.M, (long long)k.N, (long long)k.K, (int)k.ta, (int)k.tb, (int)k.td);
        }
    }
    p->algo = res.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return AVERIS_OK;
}

/* a key's size class: the dimensions no leading dimension bounds (M unless
 * A is transposed, K when A is and B is not — the experts' token counts)
 * rounded up to a power of two */
lt_key lt_class_of(const lt_key &k) {
    lt_key c = k;
    int transA = k.tb_op, transB = k.ta_op; /* row-major view (the key holds the column-major swap) */
    auto up = [](int64_t v) { int64_t r = 16; while (r < v) r <<= 1; return r; };
    if (!transA) c.M = up(k.M);
    if (transA && !transB) c.K = up(k.K);
    return c;
}

/* The plan of key k. With k.size_class (the MoE experts' GEMMs, whose token
 * counts change every call), the algorithm is the heuristic's for the key's
 * size class (lt_class_of), planned once per class, where cuBLASLt accepts it
 * for k's shape (cublasLtMatmulAlgoCheck), else k's own: a key gets the same
 * algorithm whatever the order of the calls, so results replay; one heuristic
 * query per class instead of one per new token count. */
averis_status lt_make_plan(const lt_key &k, lt_plan *p) {
    p->key = k;
    CU_OK(lt_descs(k, p));
    if (k.size_class) {
        lt_key kc = lt_class_of(k);
        uint64_t hc = lt_hash(kc);
        auto it = g_lt.classes.find(hc);
        if (it == g_lt.classes.end() || !(it->second.key == kc)) {
            lt_state::cls c;
            memset(&c, 0, sizeof c);
            c.key = kc;
            lt_plan t;
            memset(&t, 0, sizeof t);
            c.ok = lt_descs(kc, &t) == AVERIS_OK && lt_heuristic(kc, &t) == AVERIS_OK;
            c.algo = t.algo, c.bias_in_epilogue = t.bias_in_epilogue;
            lt_destroy_plan(&t);
            it = g_lt.classes.insert_or_assign(hc, c).first;
        }
        const lt_state::cls &c = it->second;
        if (c.ok) {
            cublasLtEpilogue_t ep = c.bias_in_epilogue ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
            CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
            cublasLtMatmulHeuristicResult_t chk;
            memset(&chk, 0, sizeof chk);
            if (cublasLtMatmulAlgoCheck(g_lt.h, p->op, p->a, p->b, p->c, p->c, &c.algo, &chk) == CUBLAS_STATUS_SUCCESS &&
                chk.workspaceSize <= g_lt.ws_size) {
                p->algo = c.algo, p->bias_in_epilogue = c.bias_in_epilogue;
                return AVERIS_OK;
            }
            ep = CUBLASLT_EPILOGUE_DEFAULT;
            CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        }
    }
    return lt_heuristic(k, p);
}

} // namespace

int cl_size_classes(int on) {
    int was = t_size_classes;
    t_size_classes = on;
    return was;
}

const float *cl_zero(void) { return g_lt.consts; }
const float *cl_one(void) { return g_lt.consts + 1; }

averis_status cl_matmul(int transA, int transB, int64_t M, int64_t N, int64_t K, const float *alpha, const void *A,
                        cudaDataType_t ta, int64_t lda, const void *B, cudaDataType_t tb, int64_t ldb, const float *beta,
                        const void *C, void *D, cudaDataType_t td, int64_t ldd, const float *bias, cudaStream_t s) {
    CU_PROF(ta == CUDA_R_32F ? "gemm fp32" : bias ? "gemm + bias epilogue" : "gemm", s);
    if (bias && td != CUDA_R_32F) /* cuBLASLt's BF16 D takes a BF16 bias only: ours stay fp32 */
        return averis_fail(AVERIS_EINVAL, "cl_matmul: a bias needs an fp32 D");
    lt_plan *p = nullptr;
    std::lock_guard<std::mutex> lock(g_lt_mu); /* to the end: a plan may be replaced by another thread's call */
    {
        CU_OK(lt_init());
        lt_key k;
        memset(&k, 0, sizeof k);
        /* column-major: A' = B (op transB), B' = A (op transA) */
        k.ta_op = transB, k.tb_op = transA;
        k.M = M, k.N = N, k.K = K, k.lda = lda, k.ldb = ldb, k.ldd = ldd;
        k.ta = tb, k.tb = ta, k.td = td;
        k.bias = bias != nullptr;
        k.c_is_d = C == D;
        k.align[0] = align_of(B), k.align[1] = align_of(A), k.align[2] = align_of(C), k.align[3] = align_of(D);
        k.size_class = t_size_classes;
        uint64_t h = lt_hash(k);
        auto it = g_lt.index.find(h);
        if (it != g_lt.index.end() && g_lt.plans[it->second].key == k) p = &g_lt.plans[it->second];
        if (!p) {
            int slot;
            if (g_lt.nplans < LT_MAX_PLANS) {
                slot = g_lt.nplans++;
            } else { /* full: replace the oldest */
                slot = g_lt.next_evict;
                g_lt.next_evict = (g_lt.next_evict + 1) % LT_MAX_PLANS;
                auto old = g_lt.index.find(lt_hash(g_lt.plans[slot].key));
                if (old != g_lt.index.end() && old->second == slot) g_lt.index.erase(old);
            }
            p = &g_lt.plans[slot];
            lt_destroy_plan(p);
            averis_status st = lt_make_plan(k, p);
            if (st) {
                memset(&p->key, 0xff, sizeof p->key); /* no key matches a failed slot */
                return st;
            }
            g_lt.index[h] = slot;
        }
    }
    if (p->bias_in_epilogue)
        CU_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    CU_CUBLAS_TRY(cublasLtMatmul(g_lt.h, p->op, alpha, B, p->a, A, p->b, beta, C, p->c, D, p->c, &p->algo, g_lt.ws,
                                 g_lt.ws_size, s));
    if (bias && !p->bias_in_epilogue) {
        k_add_bias<<<cu_blocks(M * N, 256), 256, 0, s>>>(static_cast<float *>(D), M, N, ldd, bias);
        CU_LAUNCHED();
    }
    return AVERIS_OK;
}

/* ===================================================== the linear layer */
namespace {

/* the bodies: qlinear_kern.cuh (shared with the MoE experts' qlinear_group.cu) */
__global__ void __launch_bounds__(256, 4) k_mean_fwd(const float *mu, const __nv_bfloat16 *wq, const float *w_amax,
                                                    int64_t n, int64_t m, float *bias) {
    mean_fwd_body(mu, wq, *w_amax, n, m, bias);
}

__global__ void __launch_bounds__(256, 4) k_mean_dgrad_part(const float *mu, const __nv_bfloat16 *wq, int64_t n, int64_t m,
                                                            float *part) {
    mean_dgrad_part_body(mu, wq, n, m, part);
}

__global__ void k_mean_dgrad_sum(const float *part, int64_t m, const float *w_amax, float *bias) {
    mean_dgrad_sum_body(part, m, *w_amax, bias);
}

__global__ void k_fill_x(__nv_bfloat16 *xt, int64_t kp, int64_t lp, int64_t m, int64_t l, const float *sum_x,
                         const float *mean_x) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < m) fill_x_row(xt, kp, lp, j, l, sum_x, mean_x);
}

__global__ void k_fill_d(__nv_bfloat16 *dt, int64_t kp, int64_t lp, int64_t n, const float *mean_d, const float *sum_d,
                         const float *alpha) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) fill_d_row(dt, kp, lp, i, mean_d, sum_d, *alpha);
}

enum { S_RES_D = 0, S_AMAX_DQ, S_AMAX_DT, S_ALPHA_F, S_ALPHA_DG, S_ALPHA_WG };

} // namespace

int64_t cl_kp(const qlin_recipe *r, int64_t l) {
    int64_t lp = (l + 15) / 16 * 16;
    return r->split_x ? lp + 16 : lp;
}

averis_status cl_check(const qlin_recipe *r, int64_t l, int64_t m, int64_t n) {
    if (l <= 0 || m <= 0 || n <= 0) return averis_fail(AVERIS_EINVAL, "cuda qlinear: empty shape");
    if (r->fp4 && (m % 16 || n % 16))
        return averis_fail(AVERIS_EINVAL, "cuda qlinear: recipe %s needs in and out to be multiples of 16 (got %lld, %lld)",
                           qlin_recipe_name(r->id), (long long)m, (long long)n);
    if (r->fp4 && (r->mean_fp4 || r->w_block != NVFP4_BLOCK_16X16))
        return averis_fail(AVERIS_EUNSUPPORTED, "cuda qlinear: mean=fp4 and wblock=1x16 run on the CPU only");
    if (r->split_x != r->split_d) return averis_fail(AVERIS_EUNSUPPORTED, "cuda qlinear: split X and D together");
    return AVERIS_OK;
}

averis_status cl_prep_w(const qlin_recipe *r, cl_weight *w, cudaStream_t s) {
    if (r->id == QLIN_FP32) return AVERIS_OK;
    if (!r->fp4) return cq_to_bf16(w->w, w->wq, w->n * w->m, s);
    cq_job j = {};
    j.src = w->w, j.srows = w->n, j.scols = w->m, j.ld = w->m;
    j.tile = 1;
    j.amax = w->amax;
    j.bf16_out = w->wq, j.ld_out = w->m;
    return cq_quantize(&j, s);
}

/* the BF16 recipe's X operand: x itself when it is BF16, else the copy in xq */
static const __nv_bfloat16 *x_bf16(const cl_input *x) {
    return x->bf16 ? static_cast<const __nv_bfloat16 *>(x->x) : x->xq;
}
static averis_status fp32_only(const qlin_recipe *r, const cl_input *x) {
    if (r->id == QLIN_FP32 && x->bf16)
        return averis_fail(AVERIS_EUNSUPPORTED, "cuda qlinear: the fp32 recipe takes fp32 activations");
    return AVERIS_OK;
}

averis_status cl_prep_x(const qlin_recipe *r, cl_input *x, cudaStream_t s) {
    const int known = x->amax_known;
    x->amax_known = 0; /* one producer, one use */
    x->xt_ready = 0;
    x->amax_valid = r->fp4;
    CU_OK(fp32_only(r, x));
    if (r->id == QLIN_FP32) return AVERIS_OK;
    if (!r->fp4) return x->bf16 ? AVERIS_OK : cq_to_bf16(static_cast<const float *>(x->x), x->xq, x->l * x->m, s);
    if (r->split_x) CU_OK(cq_colstats(x->x, x->bf16, x->l, x->m, x->m, x->mean, x->res_amax, nullptr, nullptr, s));
    cq_job j = {};
    j.src = x->x, j.bf16_in = x->bf16, j.srows = x->l, j.scols = x->m, j.ld = x->m;
    j.mean = r->split_x ? x->mean : nullptr;
    /* the split's residual amax from its statistics; else the producer's, if it reduced one into x->amax */
    j.amax_in = r->split_x ? x->res_amax : known ? x->amax : nullptr;
    j.amax = x->amax;
    j.bf16_out = x->xq, j.ld_out = x->m;
    return cq_quantize(&j, s);
}

averis_status cl_forward(const qlin_recipe *r, const cl_input *x, const cl_weight *w, void *Y, int y_bf16,
                         const float *residual, float *mean_out, cl_scratch *scr, cudaStream_t s) {
    int64_t l = x->l, m = x->m, n = w->n;
    CU_OK(fp32_only(r, x));
    if (residual && y_bf16) return averis_fail(AVERIS_EINVAL, "cuda qlinear: a residual sum is kept in fp32");
    if (r->split_x && y_bf16 && !mean_out)
        return averis_fail(AVERIS_EINVAL, "cuda qlinear: a BF16 output of a split recipe needs room for its mean term");
    CU_OK(lt_init()); /* before cl_one()/cl_zero(): the constants live in its state */
    const float *beta = residual ? cl_one() : cl_zero();
    const void *C = residual ? residual : Y;
    cudaDataType_t ty = y_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    if (r->id == QLIN_FP32)
        return cl_matmul(0, 1, l, n, m, cl_one(), x->x, CUDA_R_32F, m, w->w, CUDA_R_32F, m, beta, C, Y, ty, n, nullptr,
                         s);
    if (!r->fp4)
        return cl_matmul(0, 1, l, n, m, cl_one(), x_bf16(x), CUDA_R_16BF, m, w->wq, CUDA_R_16BF, m, beta, C, Y, ty, n,
                         nullptr, s);
    float *alpha = scr->scal + S_ALPHA_F;
    {
        CU_PROF("alpha", s);
        CU_OK(cq_alpha(x->amax, w->amax, alpha, s));
    }
    const float *bias = nullptr;
    if (r->split_x) {
        CU_PROF("averis mean gemv", s);
        float *b = y_bf16 ? mean_out : scr->bias;
        k_mean_fwd<<<cu_blocks(n * 32, 256), 256, 0, s>>>(x->mean, w->wq, w->amax, n, m, b);
        CU_LAUNCHED();
        bias = y_bf16 ? nullptr : b; /* a BF16 Y leaves it to the consumer */
    }
    return cl_matmul(0, 1, l, n, m, alpha, x->xq, CUDA_R_16BF, m, w->wq, CUDA_R_16BF, m, beta, C, Y, ty, n, bias, s);
}

/* D's dgrad operand: along n, SR stream 2·sr_stream */
static cq_job dgrad_job(const qlin_recipe *r, const float *D, int64_t l, int64_t n, uint64_t sr_stream, cl_scratch *scr) {
    cq_job j = {};
    j.src = D, j.srows = l, j.scols = n, j.ld = n;
    j.sr = r->sr, j.seed = r->seed, j.stream = qlin_dgrad_stream(sr_stream);
    j.mean = r->split_d ? scr->mean_d : nullptr;
    j.amax_in = r->split_d ? scr->scal + S_RES_D : nullptr;
    j.amax = scr->scal + S_AMAX_DQ;
    j.bf16_out = scr->dq, j.ld_out = n;
    return j;
}

/* D's wgrad copy: along tokens, RHT, SR stream 2·sr_stream+1 */
static cq_job wgrad_job(const qlin_recipe *r, const float *D, int64_t l, int64_t n, uint64_t sr_stream, int has_dx,
                        cl_scratch *scr) {
    cq_job j = {};
    j.src = D, j.srows = l, j.scols = n, j.ld = n, j.transpose = 1;
    j.rht = r->rht, j.sr = r->sr, j.seed = r->seed, j.stream = qlin_wgrad_stream(sr_stream);
    j.mean = r->split_d ? scr->mean_d : nullptr;
    /* without the RHT the copy holds the dgrad operand's values: the same amax, no first pass */
    j.amax_in = !r->rht && has_dx ? scr->scal + S_AMAX_DQ : nullptr;
    j.amax = scr->scal + S_AMAX_DT;
    j.bf16_out = scr->dt, j.ld_out = cl_kp(r, l);
    j.rowsum = r->split_x ? scr->sum_d : nullptr;
    return j;
}

averis_status cl_backward(const qlin_recipe *r, cl_input *x, const cl_weight *w, const float *D, float *dX, int dx_acc,
                          float *dW, uint64_t sr_stream, cl_scratch *scr, cudaStream_t s) {
    int64_t l = x->l, m = x->m, n = w->n;
    CU_OK(fp32_only(r, x));
    CU_OK(lt_init());
    const float *beta_dx = dx_acc ? cl_one() : cl_zero();
    if (r->id == QLIN_FP32) {
        if (dX) CU_OK(cl_matmul(0, 0, l, m, n, cl_one(), D, CUDA_R_32F, n, w->w, CUDA_R_32F, m, beta_dx, dX, dX, CUDA_R_32F, m, nullptr, s));
        if (dW) CU_OK(cl_matmul(1, 0, n, m, l, cl_one(), D, CUDA_R_32F, n, x->x, CUDA_R_32F, m, cl_one(), dW, dW, CUDA_R_32F, m, nullptr, s));
        return AVERIS_OK;
    }
    if (!r->fp4) {
        CU_OK(cq_to_bf16(D, scr->dq, l * n, s));
        if (dX) CU_OK(cl_matmul(0, 0, l, m, n, cl_one(), scr->dq, CUDA_R_16BF, n, w->wq, CUDA_R_16BF, m, beta_dx, dX, dX, CUDA_R_32F, m, nullptr, s));
        if (dW) {
            if (!x->xt_ready && !x->bf16) CU_OK(cq_to_bf16(static_cast<const float *>(x->x), x->xq, l * m, s));
            x->xt_ready = 1; /* xq holds bf16(X) again */
            CU_OK(cl_matmul(1, 0, n, m, l, cl_one(), scr->dq, CUDA_R_16BF, n, x_bf16(x), CUDA_R_16BF, m, cl_one(), dW, dW, CUDA_R_32F, m, nullptr, s));
        }
        return AVERIS_OK;
    }
    float *res_d = scr->scal + S_RES_D;
    if (r->split_d) CU_OK(cq_colstats(D, 0, l, n, n, scr->mean_d, res_d, nullptr, nullptr, s));
    /* both of D's operands from one read of D (quant_fused.cu), the same bits */
    const int fused = dX && dW && cq_fused_quant();
    if (fused) {
        cq_job jd = dgrad_job(r, D, l, n, sr_stream, scr), jw = wgrad_job(r, D, l, n, sr_stream, dX != nullptr, scr);
        CU_OK(cq_quantize_dual(&jd, &jw, s));
    }
    if (dX) {
        /* dX = D̄(_R)·W̄ (+ 1·(μ̄_D·W̄)) */
        cq_job j = dgrad_job(r, D, l, n, sr_stream, scr);
        if (!fused) CU_OK(cq_quantize(&j, s));
        float *alpha = scr->scal + S_ALPHA_DG;
        CU_OK(cq_alpha(j.amax, w->amax, alpha, s));
        const float *bias = nullptr;
        if (r->split_d) {
            CU_PROF("averis mean gemv", s);
            k_mean_dgrad_part<<<dim3(cu_blocks(m, 256), CL_MEAN_SLICES), dim3(32, 8), 0, s>>>(scr->mean_d, w->wq, n, m,
                                                                                             scr->mean_part);
            CU_LAUNCHED();
            k_mean_dgrad_sum<<<cu_blocks(m, 256), 256, 0, s>>>(scr->mean_part, m, w->amax, scr->bias);
            CU_LAUNCHED();
            bias = scr->bias;
        }
        CU_OK(cl_matmul(0, 0, l, m, n, alpha, scr->dq, CUDA_R_16BF, n, w->wq, CUDA_R_16BF, m, beta_dx, dX, dX, CUDA_R_32F,
                         m, bias, s));
    }
    if (dW) {
        int64_t lp = (l + 15) / 16 * 16, kp = cl_kp(r, l);
        cq_job j = wgrad_job(r, D, l, n, sr_stream, dX != nullptr, scr);
        if (!fused) CU_OK(cq_quantize(&j, s));
        if (!x->xt_ready) {
            cq_job jx = {};
            jx.src = x->x, jx.bf16_in = x->bf16, jx.srows = l, jx.scols = m, jx.ld = m, jx.transpose = 1;
            jx.rht = r->rht;
            jx.mean = r->split_x ? x->mean : nullptr;
            jx.amax_in = !r->rht && x->amax_valid ? x->amax : nullptr; /* the forward operand's values */
            jx.amax = x->xt_amax;
            jx.bf16_out = x->xt, jx.ld_out = kp;
            jx.rowsum = r->split_d ? x->xt_sum : nullptr;
            CU_OK(cq_quantize(&jx, s));
            if (r->split_x) {
                CU_PROF("averis fill", s);
                k_fill_x<<<cu_blocks(m, 128), 128, 0, s>>>(x->xt, kp, lp, m, l, x->xt_sum, x->mean);
                CU_LAUNCHED();
            }
            x->xt_ready = 1;
        }
        float *alpha = scr->scal + S_ALPHA_WG;
        CU_OK(cq_alpha(j.amax, x->xt_amax, alpha, s));
        if (r->split_x) {
            CU_PROF("averis fill", s);
            k_fill_d<<<cu_blocks(n, 128), 128, 0, s>>>(scr->dt, kp, lp, n, scr->mean_d, scr->sum_d, alpha);
            CU_LAUNCHED();
        }
        CU_OK(cl_matmul(0, 1, n, m, kp, alpha, scr->dt, CUDA_R_16BF, kp, x->xt, CUDA_R_16BF, kp, cl_one(), dW, dW,
                         CUDA_R_32F, m, nullptr, s));
    }
    return AVERIS_OK;
}

/* ================================================================== C API */
namespace {
struct dev_arena {
    char *base = nullptr;
    size_t used = 0;
    template <typename T> T *take(int64_t n) {
        T *p = reinterpret_cast<T *>(base + used);
        used += ((size_t)n * sizeof(T) + 255) / 256 * 256;
        return p;
    }
};
} // namespace

/* The standalone layer (tests): device scratch per call, synchronous. */
static averis_status layer_buffers(const qlin_recipe *r, int64_t l, int64_t m, int64_t n, cl_input *x, cl_weight *w,
                                   cl_scratch *scr, char **mem) {
    int64_t kp = cl_kp(r, l);
    size_t need = 0;
    for (int pass = 0; pass < 2; pass++) {
        dev_arena a;
        a.base = *mem;
        w->wq = a.take<__nv_bfloat16>(n * m);
        w->amax = a.take<float>(1);
        x->xq = a.take<__nv_bfloat16>(l * m);
        x->amax = a.take<float>(1);
        x->mean = a.take<float>(m);
        x->res_amax = a.take<float>(1);
        x->xt = a.take<__nv_bfloat16>(m * kp);
        x->xt_amax = a.take<float>(1);
        x->xt_sum = a.take<float>(m);
        scr->dq = a.take<__nv_bfloat16>(l * n);
        scr->dt = a.take<__nv_bfloat16>(n * kp);
        scr->mean_d = a.take<float>(n);
        scr->sum_d = a.take<float>(n);
        scr->scal = a.take<float>(8);
        scr->bias = a.take<float>(m > n ? m : n);
        scr->mean_part = a.take<float>(CL_MEAN_SLICES * (m > n ? m : n));
        need = a.used;
        if (pass == 0) CU_ALLOC(cudaMalloc(mem, need), need);
    }
    return AVERIS_OK;
}

/* The standalone layer: device scratch for the call, run, synchronise, free. */
template <typename F>
static averis_status standalone(const qlin_recipe *r, const float *X, const float *W, int64_t l, int64_t m, int64_t n,
                                const char *what, F body) {
    CU_OK(cl_check(r, l, m, n));
    cl_input x = {};
    cl_weight w = {};
    cl_scratch scr = {};
    char *mem = nullptr;
    averis_status st = layer_buffers(r, l, m, n, &x, &w, &scr, &mem);
    x.x = X, x.l = l, x.m = m;
    w.w = W, w.n = n, w.m = m;
    if (!st) st = cl_prep_w(r, &w, 0);
    if (!st) st = body(x, w, scr);
    cudaError_t e = cudaDeviceSynchronize();
    cudaFree(mem);
    if (!st && e != cudaSuccess) st = averis_fail(AVERIS_EIO, "cuda qlinear %s: %s", what, cudaGetErrorString(e));
    return st;
}

extern "C" averis_status avc_qlin_forward(const qlin_recipe *r, const float *X, const float *W, int64_t l, int64_t m,
                                          int64_t n, float *Y) {
    return standalone(r, X, W, l, m, n, "forward", [&](cl_input &x, cl_weight &w, cl_scratch &scr) {
        averis_status st = cl_prep_x(r, &x, 0);
        return st ? st : cl_forward(r, &x, &w, Y, 0, nullptr, nullptr, &scr, 0);
    });
}

extern "C" averis_status avc_qlin_backward(const qlin_recipe *r, const float *X, const float *W, const float *D,
                                           int64_t l, int64_t m, int64_t n, float *dX, float *dW, uint64_t sr_stream) {
    return standalone(r, X, W, l, m, n, "backward", [&](cl_input &x, cl_weight &w, cl_scratch &scr) {
        averis_status st = r->split_x ? cq_colstats(X, 0, l, m, m, x.mean, x.res_amax, nullptr, nullptr, 0) : AVERIS_OK;
        return st ? st : cl_backward(r, &x, &w, D, dX, 0, dW, sr_stream, &scr, 0);
    });
}

/* cuBLASLt's state (and so cl_one()/cl_zero()) ready, for callers outside
 * this file (qlinear_group.cu) */
averis_status cl_lt_ready(void) {
    std::lock_guard<std::mutex> lock(g_lt_mu);
    return lt_init();
}
