/* averis/safetensors.h — the safetensors file format (Hugging Face):
 *
 *   [u64 LE: n] [n bytes: JSON header, space-padded] [data bytes]
 *   header: {"NAME": {"dtype": "F32", "shape": [d0, d1], "data_offsets": [b, e]},
 *            ..., "__metadata__": {"key": "value"}}   offsets relative to data
 */
#ifndef AVERIS_SAFETENSORS_H
#define AVERIS_SAFETENSORS_H
#include <stdint.h>
#include "averis/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ST_F32 = 0, ST_F16, ST_BF16, ST_I32, ST_I64, ST_OTHER } st_dtype;
#define ST_MAXDIM 8

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAXDIM];
    int64_t numel;
    const uint8_t *data; /* into the file's data */
} st_tensor;

typedef struct {
    char path[1024];
    int n;
    st_tensor *t;
    uint8_t *buf; /* the whole file */
} st_file;

/* Reads and validates a file (header JSON, dtypes, offsets inside the data). */
averis_status st_read(const char *path, st_file *f);
void st_free(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
/* Copies tensor `name` into out as fp32 (F32/F16/BF16 sources); the shape
 * must be exactly shape[ndim]. Errors name the file, tensor and shapes. */
averis_status st_get_f32(const st_file *f, const char *name, int ndim, const int64_t *shape, float *out);
/* Integer tensor (I32/I64) into int out[count]; the element count must match. */
averis_status st_get_int(const st_file *f, const char *name, int64_t count, int *out);

/* One tensor to write: fp32 data of the given shape. */
typedef struct {
    const char *name;
    const float *data;
    int ndim;
    int64_t shape[ST_MAXDIM];
} st_out;
/* Writes an F32 safetensors file atomically; meta is pairs of strings
 * (key, value, ..., NULL) for __metadata__ or NULL. */
averis_status st_write_f32(const char *path, const st_out *t, int n, const char *const *meta);

#ifdef __cplusplus
}
#endif
#endif
