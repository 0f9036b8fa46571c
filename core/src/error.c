/* Error reports and the process-wide log sink. */
#include "qplug/error.h"

#include <stdio.h>
#include <string.h>

qplug_status qplug_err_setv(qplug_err *err, qplug_status status, const char *fmt, va_list ap)
{
    if (err) {
        err->status = status;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        /* Messages are one line: fold any newline a caller let through. */
        for (char *p = err->msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    return status;
}

qplug_status qplug_err_set(qplug_err *err, qplug_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qplug_err_setv(err, status, fmt, ap);
    va_end(ap);
    return status;
}

/* The log sink is, with the plugin registry, the only mutable state of the
 * library; the host sets it once at start-up. */
static qplug_log_sink log_sink;
static void *log_user;
static qplug_log_level log_min = QPLUG_LOG_INFO;

void qplug_log_set_sink(qplug_log_sink sink, void *user)
{
    log_sink = sink;
    log_user = user;
}

void qplug_log_set_level(qplug_log_level level)
{
    log_min = level;
}

void qplug_logv(qplug_log_level level, const char *fmt, va_list ap)
{
    static const char *const names[] = {"debug", "info", "warning", "error"};
    if (level < log_min)
        return;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    if (log_sink) {
        log_sink(log_user, level, line);
        return;
    }
    fprintf(stderr, "qplug: %s: %s\n", names[level <= QPLUG_LOG_ERROR ? level : QPLUG_LOG_ERROR], line);
}

void qplug_log(qplug_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qplug_logv(level, fmt, ap);
    va_end(ap);
}
