/* cudnn_att_stub.cu — cudnn_att.cuh where the build found no cuDNN or no
 * cudnn-frontend headers (the Makefile's ✗ cuDNN attention): nothing is
 * supported and a context cannot be made, so the caller keeps flash.cu or
 * the materialised path. */
#include "cudnn_att.cuh"

extern "C" averis_status averis_fail(averis_status st, const char *fmt, ...);

static averis_status ccd_missing(void) {
    return averis_fail(AVERIS_EUNSUPPORTED,
                       "cudnn attention: built without cuDNN (the Makefile found no cudnn.h + libcudnn or no "
                       "cudnn-frontend headers: see `make features`)");
}

int ccd_supported(int, int) { return 0; }
averis_status ccd_create(ccd_ctx **out, int) {
    *out = nullptr;
    return ccd_missing();
}
void ccd_destroy(ccd_ctx *) {}
const char *ccd_describe(const ccd_ctx *) { return "built without cuDNN"; }
size_t ccd_workspace_bytes(const ccd_ctx *) { return 0; }
averis_status ccd_forward(ccd_ctx *, int, int, int, int, int, ccd_tensor, ccd_tensor, ccd_tensor, ccd_tensor, float *,
                          cudaStream_t) {
    return ccd_missing();
}
averis_status ccd_backward(ccd_ctx *, int, int, int, int, int, ccd_tensor, ccd_tensor, ccd_tensor, ccd_tensor,
                           ccd_tensor, const float *, ccd_tensor, ccd_tensor, ccd_tensor, cudaStream_t) {
    return ccd_missing();
}
averis_status ccd_validate(int, int, int, int, int, int, int, ccd_tensor, ccd_tensor, ccd_tensor, ccd_tensor, ccd_tensor,
                           ccd_tensor, ccd_tensor, ccd_tensor) {
    return ccd_missing();
}
