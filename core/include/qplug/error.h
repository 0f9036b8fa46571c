/*
 * qplug/error.h - error reports and the log sink of the core.
 *
 * Core functions return a qplug_status and, when they fail, fill a
 * caller-provided qplug_err with a one-line message naming what and where
 * (file, tensor, key, line). `err` may always be NULL.
 */
#ifndef QPLUG_ERROR_H
#define QPLUG_ERROR_H

#include <stdarg.h>

#include "qplug/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QPLUG_ERR_MSG_MAX 512

typedef struct qplug_err {
    qplug_status status;
    char msg[QPLUG_ERR_MSG_MAX];
} qplug_err;

/* Formats the message into err (if not NULL) and returns `status`. */
qplug_status qplug_err_set(qplug_err *err, qplug_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
qplug_status qplug_err_setv(qplug_err *err, qplug_status status, const char *fmt, va_list ap);

/* The log sink: one process-wide function the host application may replace.
 * `msg` is one line without the trailing newline. */
typedef void (*qplug_log_sink)(void *user, qplug_log_level level, const char *msg);

/* Replaces the sink; NULL restores the default (stderr, "qplug: level: msg"). */
void qplug_log_set_sink(qplug_log_sink sink, void *user);
/* Messages below `level` are dropped (default QPLUG_LOG_INFO). */
void qplug_log_set_level(qplug_log_level level);
void qplug_log(qplug_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qplug_logv(qplug_log_level level, const char *fmt, va_list ap);

#ifdef __cplusplus
}
#endif
#endif
