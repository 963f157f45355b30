/* tool_util.cuh — for the device test and bench programs (not the library):
 * a CUDA call that fails ends the program with where and why. */
#ifndef AVERIS_CUDA_TOOL_UTIL_CUH
#define AVERIS_CUDA_TOOL_UTIL_CUH

#include <cstdio>
#include <cstdlib>

#define DEV(call)                                                                                          \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess) {                                                                            \
            fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);       \
            exit(2);                                                                                        \
        }                                                                                                   \
    } while (0)

#endif
