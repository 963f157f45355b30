/* averis/json.h — a small JSON reader (RFC 8259; \u surrogate pairs become
 * one code point, a lone surrogate and \u0000 are errors) for config.json,
 * safetensors headers and task files. */
#ifndef AVERIS_JSON_H
#define AVERIS_JSON_H
#include <stddef.h>
#include "averis/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { JSON_NULL = 0, JSON_BOOL, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ } json_type;

typedef struct json {
    json_type type;
    double num;          /* JSON_NUM, JSON_BOOL (0/1) */
    char *str;           /* JSON_STR */
    int n;               /* items of JSON_ARR / JSON_OBJ */
    char **keys;         /* JSON_OBJ: n keys */
    struct json *items;  /* n values */
} json;

/* Parses text[len]; errors name `what` (a file name) and the byte offset. */
averis_status json_parse(const char *text, size_t len, const char *what, json *out);
void json_free(json *v);
/* The value of key in an object, or NULL. */
const json *json_get(const json *obj, const char *key);
/* s for an error message: bytes outside printable ASCII as \xNN, cut with
 * "..." to fit buf[cap] (cap ≥ 8). Returns buf. */
const char *json_printable(const char *s, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
