/* comm_nccl_stub.c — averis/comm.h's NCCL half in a build without NCCL (no
 * CUDA path, or nccl.h / libnccl not found): it says so. */
#include "averis/comm.h"

int comm_nccl_compiled(void) { return 0; }

averis_status comm_nccl_create(comm **c, const comm_nccl_opts *o) {
    (void)o;
    *c = 0;
    return averis_fail(AVERIS_EUNSUPPORTED, "this averis was built without NCCL (needs the CUDA path and nccl.h + "
                                            "libnccl: set NCCL_HOME=, see docs/multigpu.md); --gpus is unavailable");
}
