/* averis/status.h — the status every library function returns, and the
 * calling thread's last error message. Library code never exits: it
 * returns averis_fail(status, message) and the CLI prints the message. */
#ifndef AVERIS_STATUS_H
#define AVERIS_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    AVERIS_OK = 0,
    AVERIS_EINVAL = 1,   /* bad argument (shape, option) */
    AVERIS_ENOMEM = 2,   /* allocation failed */
    AVERIS_EIO = 3,      /* file I/O failed */
    AVERIS_EFORMAT = 4,  /* malformed file */
    AVERIS_EUNSUPPORTED = 5
} averis_status;

/* Last error message of the calling thread ("" if none). */
const char *averis_last_error(void);

/* Records the printf-formatted message as the thread's last error and
 * returns st, so a failure is one line: `return averis_fail(st, ...);`. */
averis_status averis_fail(averis_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif
