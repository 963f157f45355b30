/* _core.c — the CPython extension averis._core: thin bindings of the C
 * library (include/averis/) for the Python package. The Python wrappers in
 * __init__.py and torch.py check shapes and dtypes and allocate the outputs;
 * this file only moves pointers and turns an averis_status into an
 * exception carrying averis_last_error().
 *
 * Array arguments are either objects with the buffer protocol (numpy arrays,
 * C-contiguous; the size is checked) or plain integers: addresses from
 * torch's Tensor.data_ptr(), host or device, whose size the caller checked.
 * The GIL is released around every computation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>

#include "averis/analysis.h"
#include "averis/half.h"
#include "averis/nvfp4.h"
#include "averis/qlinear.h"
#ifdef AVERIS_PY_CUDA
#include "averis/cuda.h"
#endif

/* ------------------------------------------------------------- errors */

/* Raises the Python exception for status s with the library's message. */
static PyObject *raise_status(averis_status s) {
    const char *msg = averis_last_error();
    if (!msg || !*msg) msg = "averis: error without a message";
    PyObject *type = s == AVERIS_ENOMEM        ? PyExc_MemoryError
                     : s == AVERIS_EIO         ? PyExc_OSError
                     : s == AVERIS_EUNSUPPORTED ? PyExc_NotImplementedError
                                               : PyExc_ValueError;
    PyErr_SetString(type, msg);
    return NULL;
}

/* None, or the exception of a failed call. */
static PyObject *none_or_raise(averis_status s) {
    if (s) return raise_status(s);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ pointers */

typedef struct {
    void *p;
    Py_buffer view;
    int has_view;
} ptr_arg;

static void ptr_release(ptr_arg *a) {
    if (a->has_view) PyBuffer_Release(&a->view);
    a->has_view = 0;
}

/* Reads an array argument: None (→ NULL, if optional), an int address, or
 * a C-contiguous buffer of at least nbytes (writable if asked). */
static int ptr_get(PyObject *o, Py_ssize_t nbytes, int writable, int optional, const char *what, ptr_arg *a) {
    memset(a, 0, sizeof *a);
    if (o == Py_None) {
        if (optional) return 1;
        PyErr_Format(PyExc_TypeError, "%s: an array is required, got None", what);
        return 0;
    }
    if (PyLong_Check(o)) {
        a->p = PyLong_AsVoidPtr(o);
        return !PyErr_Occurred();
    }
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, &a->view, flags) < 0) return 0;
    a->has_view = 1;
    a->p = a->view.buf;
    if (a->view.len < nbytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer holds %zd bytes, needs %zd", what, a->view.len, nbytes);
        ptr_release(a);
        return 0;
    }
    return 1;
}

/* One array argument of a call: object, bytes needed, writable, optional. */
typedef struct {
    PyObject *obj;
    Py_ssize_t nbytes;
    int writable, optional;
    const char *name;
} ptr_spec;

/* Acquires all n arguments into a[], or none (with the exception set). */
static int ptrs_get(const ptr_spec *spec, int n, ptr_arg *a) {
    for (int i = 0; i < n; i++)
        if (!ptr_get(spec[i].obj, spec[i].nbytes, spec[i].writable, spec[i].optional, spec[i].name, &a[i])) {
            while (i > 0) ptr_release(&a[--i]);
            return 0;
        }
    return 1;
}

static void ptrs_release(ptr_arg *a, int n) {
    while (n > 0) ptr_release(&a[--n]);
}

static int check_block(int block) {
    if (block != NVFP4_BLOCK_1X16 && block != NVFP4_BLOCK_16X16) {
        PyErr_Format(PyExc_ValueError, "block kind %d (want 0 = 1x16, 1 = 16x16)", block);
        return 0;
    }
    return 1;
}

static int check_shape(long long rows, long long cols) {
    if (rows <= 0 || cols <= 0) {
        PyErr_Format(PyExc_ValueError, "empty tensor (%lld x %lld)", rows, cols);
        return 0;
    }
    return 1;
}

static PyObject *stats_dict(const nvfp4_stats *q) {
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "n", (long long)q->n, "n_nonzero", (long long)q->n_nonzero,
                         "n_flushed", (long long)q->n_flushed, "n_blocks", (long long)q->n_blocks, "n_sat_blocks",
                         (long long)q->n_sat_blocks, "n_nan", (long long)q->n_nan, "n_inf", (long long)q->n_inf);
}

/* ------------------------------------------------------------ quantize */

/* The quantization of `averis quant` (src/quant.c, averis_quant_roundtrip),
 * keeping the packed tensor: x converted to fp32 as the CLI does; with the
 * split, μ from nvfp4_colstats is subtracted (the residual amax from the
 * column stats when there is no RHT) and μ̄ — μ, or its 1×16 NVFP4 round
 * trip with mean_fp4 — is written to mean_out, the term added back. */
#define QH_NOMEM ((averis_status)100) /* our own allocation failed: no library message */
static averis_status quantize_host(const void *src, int dtype, int64_t rows, int64_t cols, int block, int rht,
                                   int split, int mean_fp4, int sr, uint64_t seed, uint64_t stream, uint8_t *codes,
                                   uint8_t *scales, float *mean_out, float *amax, nvfp4_stats *stats) {
    averis_status st = AVERIS_OK;
    int64_t n = rows * cols;
    float *x = NULL, *mean = NULL, *cmax = NULL, *cmin = NULL;
    nvfp4_tensor tm = {0};
    if (dtype == NVFP4_F32) {
        x = (float *)src;
    } else {
        if (!(x = malloc((size_t)n * sizeof(float)))) return QH_NOMEM;
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) x[i] = dtype == NVFP4_BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
    }
    nvfp4_opts o = nvfp4_opts_default();
    o.block = (nvfp4_block_kind)block;
    o.rht = rht;
    o.sr = sr;
    o.seed = seed;
    o.stream = stream;
    if (split) {
        mean = malloc((size_t)cols * sizeof(float));
        cmax = malloc((size_t)cols * sizeof(float));
        cmin = malloc((size_t)cols * sizeof(float));
        if (!mean || !cmax || !cmin) { st = QH_NOMEM; goto done; }
        if ((st = nvfp4_colstats(x, rows, cols, cols, mean, cmax, cmin))) goto done;
        o.mean = mean;
        if (!rht) o.amax_hint = nvfp4_residual_amax(mean, cmax, cmin, cols);
        if (mean_fp4) {
            nvfp4_opts om = nvfp4_opts_default();
            if ((st = nvfp4_tensor_alloc(&tm, 1, cols, NVFP4_BLOCK_1X16))) goto done;
            if ((st = nvfp4_quantize(mean, NVFP4_F32, 1, cols, cols, &om, &tm, NULL))) goto done;
            if ((st = nvfp4_dequantize(&tm, 0, mean_out))) goto done;
        } else {
            memcpy(mean_out, mean, (size_t)cols * sizeof(float));
        }
    }
    nvfp4_tensor t = {.rows = rows, .cols = cols, .cols_padded = nvfp4_cols_padded(cols),
                      .block = (nvfp4_block_kind)block, .codes = codes, .scales = scales};
    if ((st = nvfp4_quantize(x, NVFP4_F32, rows, cols, cols, &o, &t, stats))) goto done;
    *amax = t.amax;
done:
    if (x != src) free(x);
    free(mean);
    free(cmax);
    free(cmin);
    nvfp4_tensor_free(&tm);
    return st;
}

static PyObject *py_quantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *co, *so, *mo;
    int dtype, block, rht, split, mean_fp4, sr;
    long long rows, cols;
    unsigned long long seed, stream;
    if (!PyArg_ParseTuple(args, "OiLLipppp" "KKOOO", &xo, &dtype, &rows, &cols, &block, &rht, &split, &mean_fp4, &sr,
                          &seed, &stream, &co, &so, &mo))
        return NULL;
    if (!check_block(block) || !check_shape(rows, cols)) return NULL;
    if (dtype != NVFP4_F32 && dtype != NVFP4_BF16 && dtype != NVFP4_F16)
        return PyErr_Format(PyExc_ValueError, "dtype code %d (want 0 = fp32, 1 = bf16, 2 = fp16)", dtype);
    Py_ssize_t esize = dtype == NVFP4_F32 ? 4 : 2;
    const ptr_spec arrays[4] = {
        {xo, (Py_ssize_t)(rows * cols) * esize, 0, 0, "x"},
        {co, (Py_ssize_t)(rows * nvfp4_cols_padded(cols) / 2), 1, 0, "codes"},
        {so, (Py_ssize_t)nvfp4_scale_count(rows, cols, (nvfp4_block_kind)block), 1, 0, "scales"},
        {mo, (Py_ssize_t)cols * 4, 1, !split, "mean"}};
    ptr_arg a[4];
    if (!ptrs_get(arrays, 4, a)) return NULL;
    float amax = 0.0f;
    nvfp4_stats q;
    memset(&q, 0, sizeof q);
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = quantize_host(a[0].p, dtype, rows, cols, block, rht, split, mean_fp4, sr, seed, stream, a[1].p, a[2].p,
                       a[3].p, &amax, &q);
    Py_END_ALLOW_THREADS
    ptrs_release(a, 4);
    if (st) return st == QH_NOMEM ? PyErr_NoMemory() : raise_status(st);
    PyObject *d = stats_dict(&q);
    return d ? Py_BuildValue("(dN)", (double)amax, d) : NULL;
}

/* dequantize(codes, scales, rows, cols, block, amax, rht, mean|None, out):
 * nvfp4_dequantize (inverse RHT if rht), then out[r, c] += mean[c] in fp32,
 * as `averis quant` writes its OUT.npy. */
static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *so, *mo, *oo;
    long long rows, cols;
    int block, rht;
    float amax;
    if (!PyArg_ParseTuple(args, "OOLLifpOO", &co, &so, &rows, &cols, &block, &amax, &rht, &mo, &oo)) return NULL;
    if (!check_block(block) || !check_shape(rows, cols)) return NULL;
    const ptr_spec arrays[4] = {
        {co, (Py_ssize_t)(rows * nvfp4_cols_padded(cols) / 2), 0, 0, "codes"},
        {so, (Py_ssize_t)nvfp4_scale_count(rows, cols, (nvfp4_block_kind)block), 0, 0, "scales"},
        {mo, (Py_ssize_t)cols * 4, 0, 1, "mean"},
        {oo, (Py_ssize_t)(rows * cols) * 4, 1, 0, "out"}};
    ptr_arg a[4];
    if (!ptrs_get(arrays, 4, a)) return NULL;
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    nvfp4_tensor t = {.rows = rows, .cols = cols, .cols_padded = nvfp4_cols_padded(cols),
                      .block = (nvfp4_block_kind)block, .codes = a[0].p, .scales = a[1].p, .amax = amax};
    float *y = a[3].p;
    const float *mu = a[2].p;
    st = nvfp4_dequantize(&t, rht, y);
    if (!st && mu)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < cols; j++) y[r * cols + j] += mu[j];
    Py_END_ALLOW_THREADS
    ptrs_release(a, 4);
    return none_or_raise(st);
}

/* ------------------------------------------------------------- analyze */

static PyObject *py_analyze(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OLL", &xo, &rows, &cols)) return NULL;
    if (!check_shape(rows, cols)) return NULL;
    ptr_arg x;
    if (!ptr_get(xo, (Py_ssize_t)(rows * cols) * 4, 0, 0, "x", &x)) return NULL;
    analysis_metrics a;
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = analysis_compute(x.p, rows, cols, &a);
    Py_END_ALLOW_THREADS
    ptr_release(&x);
    if (st) return raise_status(st);
    /* the keys of analysis_json (`averis analyze --npy`) */
    PyObject *d = Py_BuildValue("{s:L,s:L,s:d,s:d,s:d,s:d,s:d,s:i,s:d,s:d,s:d,s:L,s:d,s:d}", "rows", (long long)a.rows,
                                "cols", (long long)a.cols, "R", a.R, "mean_norm", a.mean_norm, "rms_token_norm",
                                a.rms_token_norm, "sigma1", a.sigma1, "cos_mu_v1", a.cos_mu_v1, "spike_k", a.spike_k,
                                "e_mean", a.e_mean, "e_spike", a.e_spike, "e_tail", a.e_tail, "top_count",
                                (long long)a.top_count, "rho_median", a.rho_median, "rho_frac_half", a.rho_frac_half);
    if (!d) return NULL;
    for (int q = 0; q < ANALYSIS_NQ; q++) {
        char key[64];
        PyObject *v = PyFloat_FromDouble(a.q_rel_mse[q]);
        snprintf(key, sizeof key, "relmse_%s", analysis_quant_name(q));
        if (!v || PyDict_SetItemString(d, key, v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
        v = PyFloat_FromDouble(a.q_flushed[q]);
        snprintf(key, sizeof key, "flushed_%s", analysis_quant_name(q));
        if (!v || PyDict_SetItemString(d, key, v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    return d;
}

/* ------------------------------------------------------------- qlinear */

static int parse_recipe(const char *spec, qlin_recipe *r) {
    averis_status st = qlin_recipe_parse(spec, r);
    if (st) raise_status(st);
    return !st;
}

/* recipe(spec) → dict: the parsed recipe (errors name the bad token). */
static PyObject *py_recipe(PyObject *self, PyObject *args) {
    (void)self;
    const char *spec;
    qlin_recipe r;
    if (!PyArg_ParseTuple(args, "s", &spec) || !parse_recipe(spec, &r)) return NULL;
    return Py_BuildValue("{s:s,s:O,s:O,s:O,s:O,s:O,s:O,s:s,s:K}", "name", qlin_recipe_name(r.id), "fp4",
                         r.fp4 ? Py_True : Py_False, "split_x", r.split_x ? Py_True : Py_False, "split_d",
                         r.split_d ? Py_True : Py_False, "rht", r.rht ? Py_True : Py_False, "sr",
                         r.sr ? Py_True : Py_False, "mean_fp4", r.mean_fp4 ? Py_True : Py_False, "wblock",
                         r.w_block == NVFP4_BLOCK_16X16 ? "16x16" : "1x16", "seed", (unsigned long long)r.seed);
}

static void ws_destroy(PyObject *cap) {
    qlin_ws *ws = PyCapsule_GetPointer(cap, "averis.qlin_ws");
    if (ws) {
        qlin_ws_free(ws);
        free(ws);
    }
}

/* ws_new() → a capsule owning one qlin_ws (scratch reused across calls). */
static PyObject *py_ws_new(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    qlin_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return PyErr_NoMemory();
    PyObject *cap = PyCapsule_New(ws, "averis.qlin_ws", ws_destroy);
    if (!cap) free(ws);
    return cap;
}

static qlin_ws *ws_get(PyObject *cap) { return PyCapsule_GetPointer(cap, "averis.qlin_ws"); }

/* qlin_forward(spec, X, W, l, m, n, Y, ws): Y [l×n] = X [l×m]·W [n×m]ᵀ. */
static PyObject *py_qlin_forward(PyObject *self, PyObject *args) {
    (void)self;
    const char *spec;
    PyObject *xo, *wo, *yo, *cap;
    long long l, m, n;
    qlin_recipe r;
    if (!PyArg_ParseTuple(args, "sOOLLLOO", &spec, &xo, &wo, &l, &m, &n, &yo, &cap)) return NULL;
    qlin_ws *ws = ws_get(cap);
    if (!ws || !parse_recipe(spec, &r) || !check_shape(l, m) || !check_shape(n, m)) return NULL;
    const ptr_spec arrays[3] = {{xo, (Py_ssize_t)(l * m) * 4, 0, 0, "X"},
                              {wo, (Py_ssize_t)(n * m) * 4, 0, 0, "W"},
                              {yo, (Py_ssize_t)(l * n) * 4, 1, 0, "Y"}};
    ptr_arg a[3];
    if (!ptrs_get(arrays, 3, a)) return NULL;
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qlin_forward(&r, a[0].p, a[1].p, l, m, n, a[2].p, ws, NULL);
    Py_END_ALLOW_THREADS
    ptrs_release(a, 3);
    return none_or_raise(st);
}

/* qlin_backward(spec, X, W, D, l, m, n, dX|None, dW|None, sr_stream, ws):
 * dX = D·W̄ (written), dW += D̄ᵀ·X̄ (accumulated). */
static PyObject *py_qlin_backward(PyObject *self, PyObject *args) {
    (void)self;
    const char *spec;
    PyObject *xo, *wo, *do_, *dxo, *dwo, *cap;
    long long l, m, n;
    unsigned long long sr_stream;
    qlin_recipe r;
    if (!PyArg_ParseTuple(args, "sOOOLLLOOKO", &spec, &xo, &wo, &do_, &l, &m, &n, &dxo, &dwo, &sr_stream, &cap))
        return NULL;
    qlin_ws *ws = ws_get(cap);
    if (!ws || !parse_recipe(spec, &r) || !check_shape(l, m) || !check_shape(n, m)) return NULL;
    const ptr_spec arrays[5] = {{xo, (Py_ssize_t)(l * m) * 4, 0, 0, "X"},
                              {wo, (Py_ssize_t)(n * m) * 4, 0, 0, "W"},
                              {do_, (Py_ssize_t)(l * n) * 4, 0, 0, "D"},
                              {dxo, (Py_ssize_t)(l * m) * 4, 1, 1, "dX"},
                              {dwo, (Py_ssize_t)(n * m) * 4, 1, 1, "dW"}};
    ptr_arg a[5];
    if (!ptrs_get(arrays, 5, a)) return NULL;
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qlin_backward(&r, a[0].p, a[1].p, a[2].p, l, m, n, a[3].p, a[4].p, sr_stream, ws, NULL);
    Py_END_ALLOW_THREADS
    ptrs_release(a, 5);
    return none_or_raise(st);
}

/* ---------------------------------------------------------------- CUDA */

static PyObject *py_cuda_compiled(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#ifdef AVERIS_PY_CUDA
    return PyBool_FromLong(avc_compiled());
#else
    Py_RETURN_FALSE;
#endif
}

#ifdef AVERIS_PY_CUDA
/* Device pointers come as ints (torch data_ptr()); sizes are the caller's. */
static void *dev(unsigned long long p) { return (void *)(uintptr_t)p; }

/* cuda_init(device) → "NAME (sm_XY, ...)" */
static PyObject *py_cuda_init(PyObject *self, PyObject *args) {
    (void)self;
    int device;
    char desc[256];
    if (!PyArg_ParseTuple(args, "i", &device)) return NULL;
    averis_status st = avc_init(device, desc, sizeof desc);
    if (st) return raise_status(st);
    return PyUnicode_FromString(desc);
}

/* cuda_quantize(x, dtype, rows, cols, block, rht, sr, seed, stream, mean|0,
 *               codes, scales, amax, cuda_stream): avc_quantize into
 * caller-allocated device buffers. */
static PyObject *py_cuda_quantize(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, mean, codes, scales, amax, cstream, seed, stream;
    long long rows, cols;
    int dtype, block, rht, sr;
    if (!PyArg_ParseTuple(args, "KiLLippKKKKKKK", &x, &dtype, &rows, &cols, &block, &rht, &sr, &seed, &stream, &mean,
                          &codes, &scales, &amax, &cstream))
        return NULL;
    if (!check_block(block) || !check_shape(rows, cols)) return NULL;
    avc_tensor t = {.rows = rows, .cols = cols, .cols_padded = nvfp4_cols_padded(cols),
                    .block = (nvfp4_block_kind)block, .codes_dev = dev(codes), .scales_dev = dev(scales),
                    .amax_dev = dev(amax)};
    avc_qopts o = {.block = (nvfp4_block_kind)block, .rht = rht, .sr = sr, .seed = seed, .stream = stream,
                   .mean_dev = dev(mean)};
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = avc_quantize(dev(x), (nvfp4_dtype)dtype, rows, cols, cols, &o, &t, dev(cstream));
    Py_END_ALLOW_THREADS
    return none_or_raise(st);
}

/* cuda_dequantize(codes, scales, amax, rows, cols, block, out, cuda_stream) */
static PyObject *py_cuda_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long codes, scales, amax, out, cstream;
    long long rows, cols;
    int block;
    if (!PyArg_ParseTuple(args, "KKKLLiKK", &codes, &scales, &amax, &rows, &cols, &block, &out, &cstream)) return NULL;
    if (!check_block(block) || !check_shape(rows, cols)) return NULL;
    avc_tensor t = {.rows = rows, .cols = cols, .cols_padded = nvfp4_cols_padded(cols),
                    .block = (nvfp4_block_kind)block, .codes_dev = dev(codes), .scales_dev = dev(scales),
                    .amax_dev = dev(amax)};
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = avc_dequantize(&t, dev(out), dev(cstream));
    Py_END_ALLOW_THREADS
    return none_or_raise(st);
}

/* cuda_colstats(x, rows, cols, mean, col_max, col_min, res_amax, cuda_stream) */
static PyObject *py_cuda_colstats(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, mean, cmax, cmin, ramax, cstream;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "KLLKKKKK", &x, &rows, &cols, &mean, &cmax, &cmin, &ramax, &cstream)) return NULL;
    if (!check_shape(rows, cols)) return NULL;
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = avc_colstats(dev(x), rows, cols, dev(mean), dev(cmax), dev(cmin), dev(ramax), dev(cstream));
    Py_END_ALLOW_THREADS
    return none_or_raise(st);
}

/* cuda_qlin_forward(spec, X, W, l, m, n, Y) — synchronises the device */
static PyObject *py_cuda_qlin_forward(PyObject *self, PyObject *args) {
    (void)self;
    const char *spec;
    unsigned long long x, w, y;
    long long l, m, n;
    qlin_recipe r;
    if (!PyArg_ParseTuple(args, "sKKLLLK", &spec, &x, &w, &l, &m, &n, &y) || !parse_recipe(spec, &r)) return NULL;
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = avc_qlin_forward(&r, dev(x), dev(w), l, m, n, dev(y));
    Py_END_ALLOW_THREADS
    return none_or_raise(st);
}

/* cuda_qlin_backward(spec, X, W, D, l, m, n, dX|0, dW|0, sr_stream) */
static PyObject *py_cuda_qlin_backward(PyObject *self, PyObject *args) {
    (void)self;
    const char *spec;
    unsigned long long x, w, d, dx, dw, sr_stream;
    long long l, m, n;
    qlin_recipe r;
    if (!PyArg_ParseTuple(args, "sKKKLLLKKK", &spec, &x, &w, &d, &l, &m, &n, &dx, &dw, &sr_stream) ||
        !parse_recipe(spec, &r))
        return NULL;
    averis_status st;
    Py_BEGIN_ALLOW_THREADS
    st = avc_qlin_backward(&r, dev(x), dev(w), dev(d), l, m, n, dev(dx), dev(dw), sr_stream);
    Py_END_ALLOW_THREADS
    return none_or_raise(st);
}
#endif

/* -------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"quantize", py_quantize, METH_VARARGS, "quantize(x, dtype, rows, cols, block, rht, split, mean_fp4, sr, seed, "
                                            "stream, codes, scales, mean) -> (amax, stats)"},
    {"dequantize", py_dequantize, METH_VARARGS, "dequantize(codes, scales, rows, cols, block, amax, rht, mean, out)"},
    {"analyze", py_analyze, METH_VARARGS, "analyze(x, rows, cols) -> dict of analysis_compute"},
    {"recipe", py_recipe, METH_VARARGS, "recipe(spec) -> dict (qlin_recipe_parse)"},
    {"ws_new", py_ws_new, METH_NOARGS, "ws_new() -> capsule owning a qlin_ws"},
    {"qlin_forward", py_qlin_forward, METH_VARARGS, "qlin_forward(spec, X, W, l, m, n, Y, ws)"},
    {"qlin_backward", py_qlin_backward, METH_VARARGS,
     "qlin_backward(spec, X, W, D, l, m, n, dX, dW, sr_stream, ws)"},
    {"cuda_compiled", py_cuda_compiled, METH_NOARGS, "cuda_compiled() -> bool: built with the CUDA path"},
#ifdef AVERIS_PY_CUDA
    {"cuda_init", py_cuda_init, METH_VARARGS, "cuda_init(device) -> description"},
    {"cuda_quantize", py_cuda_quantize, METH_VARARGS, "cuda_quantize(...) (avc_quantize on device pointers)"},
    {"cuda_dequantize", py_cuda_dequantize, METH_VARARGS, "cuda_dequantize(...) (avc_dequantize)"},
    {"cuda_colstats", py_cuda_colstats, METH_VARARGS, "cuda_colstats(...) (avc_colstats)"},
    {"cuda_qlin_forward", py_cuda_qlin_forward, METH_VARARGS, "cuda_qlin_forward(spec, X, W, l, m, n, Y)"},
    {"cuda_qlin_backward", py_cuda_qlin_backward, METH_VARARGS,
     "cuda_qlin_backward(spec, X, W, D, l, m, n, dX, dW, sr_stream)"},
#endif
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "averis._core",
                                    "Bindings of the averis C library (see the averis package).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void) { return PyModule_Create(&module); }
