/* averis/quant.h — quantize → dequantize of a 2-D tensor as `averis quant`
 * does it (plain, RHT, Averis mean split, SR), the error statistics, and the
 * packed file.
 *
 * Packed file layout (little endian):
 *
 *   off  size  field
 *     0     8  magic "AVNVFP4\0"
 *     8     4  uint32 version = 1
 *    12     4  uint32 flags: 1 = 16x16 tiles, 2 = RHT, 4 = mean split,
 *                            8 = mean quantized to NVFP4, 16 = SR
 *    16     8  int64 rows
 *    24     8  int64 cols
 *    32     4  float32 amax (per-tensor, of the quantizer input)
 *    36     4  uint32 0 (reserved)
 *    40     .  codes  [rows × cols_padded/2] (nvfp4_tensor layout)
 *     .     .  scales [nvfp4_scale_count] E4M3 bytes
 *     .     .  split only: float32 mean [cols], the term added back
 *              (fp32 μ, or its NVFP4 round trip with flag 8)
 */
#ifndef AVERIS_QUANT_H
#define AVERIS_QUANT_H

#include "averis/nvfp4.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AVERIS_PACKED_TILE 1u
#define AVERIS_PACKED_RHT 2u
#define AVERIS_PACKED_SPLIT 4u
#define AVERIS_PACKED_MEAN_FP4 8u
#define AVERIS_PACKED_SR 16u

typedef struct {
    nvfp4_block_kind block;
    int rht, split, mean_fp4, sr;
    uint64_t seed;
    int reference;      /* use the scalar spec instead of the fast path */
    nvfp4_impl impl;
    int nthreads;
} averis_qcfg;

typedef struct {
    double rel_mse;       /* Σ(x̂−x)² / Σx² over finite inputs */
    double max_abs_err;   /* over finite inputs */
    double flushed_frac;  /* n_flushed / n_nonzero of the quantizer input */
    float amax;           /* per-tensor amax of the quantizer input */
    int64_t n_nonfinite;
    nvfp4_stats q;
} averis_qresult;

/* x [rows × cols] fp32 → y (the dequantized round trip, same shape).
 * If packed_path is not NULL, also writes the packed file (atomically). */
averis_status averis_quant_roundtrip(const float *x, int64_t rows, int64_t cols, const averis_qcfg *cfg,
                                     float *y, averis_qresult *res, const char *packed_path);

/* A packed file read back: the tensor, its flags, and the mean [cols] when
 * flags has AVERIS_PACKED_SPLIT (else NULL). Sizes are checked against the
 * file before anything is allocated. */
typedef struct {
    uint32_t flags;
    nvfp4_tensor t;
    float *mean;
} averis_packed;
averis_status averis_packed_read(const char *path, averis_packed *p);
void averis_packed_free(averis_packed *p);

#ifdef __cplusplus
}
#endif
#endif
