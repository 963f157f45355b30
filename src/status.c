/* status.c — the thread's last error message. */
#include "averis/status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char g_err[256];

const char *averis_last_error(void) { return g_err; }

averis_status averis_fail(averis_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}
