/* cuda_stub.c — the CUDA API of a build without the CUDA path: every call
 * says so (built with CUDA=0, or no nvcc found). */
#include "averis/analysis_cuda.h"
#include "averis/cuda.h"
#include "averis/status.h"

#define NO_CUDA averis_fail(AVERIS_EUNSUPPORTED, "this averis was built without CUDA (no nvcc found, or CUDA=0); rebuild with the CUDA toolkit for --device cuda")

int avc_compiled(void) { return 0; }
averis_status avc_init(int device, char *desc, size_t cap) { (void)device; if (desc && cap) desc[0] = 0; return NO_CUDA; }
averis_status avc_model_create(avc_model **g, const model *m, int B, int T, const avc_model_opts *o) { (void)m; (void)B; (void)T; (void)o; *g = NULL; return NO_CUDA; }
void avc_model_free(avc_model *g) { (void)g; }
const char *avc_model_describe(const avc_model *g) { (void)g; return "built without CUDA"; }
averis_status avc_model_upload(avc_model *g, const float *p, const float *m, const float *v) { (void)g; (void)p; (void)m; (void)v; return NO_CUDA; }
averis_status avc_model_download(avc_model *g, float *p, float *m, float *v) { (void)g; (void)p; (void)m; (void)v; return NO_CUDA; }
averis_status avc_model_zero_grad(avc_model *g) { (void)g; return NO_CUDA; }
averis_status avc_model_grads(avc_model *g, float *grads) { (void)g; (void)grads; return NO_CUDA; }
averis_status avc_model_step(avc_model *g, const int *tokens, const int *targets, int backward, float loss_scale,
                             uint64_t sr_stream, float *loss) {
    (void)g; (void)tokens; (void)targets; (void)backward; (void)loss_scale; (void)sr_stream; (void)loss;
    return NO_CUDA;
}
averis_status avc_model_token_losses(avc_model *g, float *losses) { (void)g; (void)losses; return NO_CUDA; }
averis_status avc_model_grad_norm(avc_model *g, double *norm) { (void)g; (void)norm; return NO_CUDA; }
averis_status avc_model_adamw(avc_model *g, double lr, double b1, double b2, double eps, double wd, int64_t t, float gscale) {
    (void)g; (void)lr; (void)b1; (void)b2; (void)eps; (void)wd; (void)t; (void)gscale;
    return NO_CUDA;
}

averis_status avc_analysis_create(avc_analysis **a, void *stream) { (void)stream; *a = NULL; return NO_CUDA; }
void avc_analysis_free(avc_analysis *a) { (void)a; }
averis_status avc_analysis_compute(avc_analysis *a, const void *x, int bf16, int64_t l, int64_t m, analysis_metrics *out,
                                   avc_analysis_info *info) {
    (void)a; (void)x; (void)bf16; (void)l; (void)m; (void)out; (void)info;
    return NO_CUDA;
}
void avc_model_set_tap(avc_model *g, avc_tap_fn fn, void *ctx) { (void)g; (void)fn; (void)ctx; }
void *avc_model_stream(avc_model *g) { (void)g; return NULL; }
averis_status avc_analysis_model_rows(avc_model *g, avc_analysis *a, const int *tokens, const int *targets, FILE *csv,
                                      const char *prefix, uint64_t sr_stream, FILE *table) {
    (void)g; (void)a; (void)tokens; (void)targets; (void)csv; (void)prefix; (void)sr_stream; (void)table;
    return NO_CUDA;
}
averis_status avc_model_flat(avc_model *g, float **p, float **gr, float **m, float **v, void **s) {
    (void)g; (void)p; (void)gr; (void)m; (void)v; (void)s;
    return NO_CUDA;
}
void avc_model_params_changed(avc_model *g) { (void)g; }
void avc_model_set_grad_hook(avc_model *g, avc_grad_ready_fn fn, void *ctx) { (void)g; (void)fn; (void)ctx; }
averis_status avc_adamw_range(const model_tensor *tensors, int ntensors, float *p, const float *g, float *m, float *v,
                              size_t lo, size_t hi, double lr, double b1, double b2, double eps, double wd, int64_t t,
                              float gscale, void *stream) {
    (void)tensors; (void)ntensors; (void)p; (void)g; (void)m; (void)v; (void)lo; (void)hi; (void)lr; (void)b1; (void)b2;
    (void)eps; (void)wd; (void)t; (void)gscale; (void)stream;
    return NO_CUDA;
}
