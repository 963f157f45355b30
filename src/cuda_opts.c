/* cuda_opts.c — the GPU model's run options from their CLI-level names
 * (pure C, in every build, so a build without CUDA still checks them). */
#include <string.h>

#include "averis/cuda.h"
#include "averis/status.h"

averis_status avc_model_opts_parse(const char *act, const char *attn, const char *what_act, const char *what_attn,
                                   avc_model_opts *o) {
    o->act = AVC_ACT_AUTO;
    o->attn = AVC_ATTN_AUTO;
    o->moments = NULL; /* all the moments (a data-parallel rank sets its window after) */
    if (act && *act) {
        if (!strcmp(act, "bf16")) o->act = AVC_ACT_BF16;
        else if (!strcmp(act, "fp32")) o->act = AVC_ACT_FP32;
        else return averis_fail(AVERIS_EINVAL, "%s=%s: want bf16 or fp32", what_act, act);
    }
    if (attn && *attn) {
        if (!strcmp(attn, "naive")) o->attn = AVC_ATTN_MATERIALISED;
        else if (!strcmp(attn, "flash")) o->attn = AVC_ATTN_FLASH;
        else if (!strcmp(attn, "cudnn")) o->attn = AVC_ATTN_CUDNN;
        else return averis_fail(AVERIS_EINVAL, "%s=%s: want cudnn, flash or naive", what_attn, attn);
    }
    return AVERIS_OK;
}
