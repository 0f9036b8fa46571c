/*
 * tests/conformance/serial_host.h - what the white-box tests of the shared
 * plugin code (test_plugin_common.c, test_gemm_kernels.c) need from a host:
 * a CHECKF that counts, and a serial host table that only allocates and
 * loops. Header-only: each test is one translation unit.
 */
#ifndef QPLUG_TEST_SERIAL_HOST_H
#define QPLUG_TEST_SERIAL_HOST_H

#include <stdio.h>
#include <stdlib.h>

#include "qplug/plugin.h"

static int failed, passed;

#define CHECKF(cond, ...)                                                      \
    do {                                                                       \
        if (cond) {                                                            \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

static qplug_status t_error(void *ctx, qplug_status s, const char *fmt, ...)
{
    (void)ctx;
    (void)fmt;
    return s;
}

static void *t_alloc(void *ctx, size_t n, qplug_device_kind d)
{
    (void)ctx;
    (void)d;
    return malloc(n ? n : 1);
}

static void t_free(void *ctx, void *p, qplug_device_kind d)
{
    (void)ctx;
    (void)d;
    free(p);
}

static void t_pfor(void *ctx, int64_t n, qplug_range_fn fn, void *arg)
{
    (void)ctx;
    /* Two uneven ranges, to exercise range boundaries. */
    fn(arg, 0, n / 3);
    fn(arg, n / 3, n);
}

static const qplug_host_api API = {.struct_size = sizeof(qplug_host_api),
                                   .error = t_error,
                                   .alloc = t_alloc,
                                   .free = t_free,
                                   .parallel_for = t_pfor};
static const qplug_host HOST = {&API, NULL};

#endif
