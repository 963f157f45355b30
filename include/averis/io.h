/* averis/io.h — files: atomic writes and .npy arrays. */
#ifndef AVERIS_IO_H
#define AVERIS_IO_H

#include <stdint.h>
#include <stdio.h>
#include "averis/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Atomic file: writes go to "<path>.tmp.<pid>" in the same directory;
 * commit fsyncs, closes and renames over path (a reader sees the old file or
 * the whole new one, never a part); abort removes the temporary. */
typedef struct {
    FILE *f;
    char path[4096];
    char tmp[4200];
} averis_afile;
averis_status averis_afile_open(averis_afile *af, const char *path);
averis_status averis_afile_commit(averis_afile *af);
void averis_afile_abort(averis_afile *af);

/* Reads a whole file into *buf (malloc'd, NUL-terminated; *len bytes
 * without the NUL). Errors name the file. */
averis_status averis_read_file(const char *path, char **buf, size_t *len);

/* mkdir -p: creates path and its missing parents (0777 & umask). */
averis_status averis_mkdir_p(const char *path);

/* .npy arrays: version 1.0/2.0/3.0, C order, little endian. */
typedef enum { AVERIS_NPY_F32 = 0, AVERIS_NPY_U16 = 1, AVERIS_NPY_F16 = 2, AVERIS_NPY_U8 = 3 } averis_npy_dtype;
#define AVERIS_NPY_MAXDIM 8
typedef struct {
    averis_npy_dtype dtype; /* '<f4', '<u2' (bfloat16 bits by convention), '<f2', '|u1' */
    int ndim;
    int64_t shape[AVERIS_NPY_MAXDIM];
    int64_t count;          /* product of shape */
    void *data;
} averis_npy;

averis_status averis_npy_read(const char *path, averis_npy *out);
void averis_npy_free(averis_npy *a);
/* Writes '<f4' atomically. */
averis_status averis_npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape);

#ifdef __cplusplus
}
#endif
#endif
