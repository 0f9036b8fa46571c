/* Minimal test harness shared by the unit tests: CHECK records a failure
 * with file and line and keeps going; test_done() prints the closing
 * "N passed, N failed" line and returns the exit code. */
#ifndef QPLUG_TESTUTIL_H
#define QPLUG_TESTUTIL_H

#include <stdio.h>

#include "qplug/plugin.h"

extern int qplug_test_passed;
extern int qplug_test_failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (cond) {                                                            \
            qplug_test_passed++;                                               \
        } else {                                                               \
            qplug_test_failed++;                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                      \
    } while (0)

#define CHECKF(cond, ...)                                                      \
    do {                                                                       \
        if (cond) {                                                            \
            qplug_test_passed++;                                               \
        } else {                                                               \
            qplug_test_failed++;                                               \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

/* Prints "N passed, N failed" and returns 0 when nothing failed. */
int test_done(void);

/* Writes `len` bytes to a fresh file under a per-test temporary directory
 * and returns its path (static buffer, valid until the next call). */
const char *test_write_file(const char *name, const void *data, size_t len);
/* A fresh empty temporary directory (created once per process). */
const char *test_tmpdir(void);

/* Plugin slots that refuse everything, for stub plugins whose score() is
 * what a test exercises (resolver and inventory tests). */
qplug_status test_stub_create(const qplug_host *h, const qplug_layer_desc *l);
qplug_status test_stub_process(const qplug_host *h, const qplug_layer_desc *l, void **state);
qplug_status test_stub_apply(const qplug_host *h, void *state, const qplug_apply_args *a);
void test_stub_destroy(const qplug_host *h, void *state);

#endif
