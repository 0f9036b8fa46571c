/* Internal: the persistent CPU thread pool behind qplug_runtime's
 * parallel_for. Not part of the public API. */
#ifndef QPLUG_THREADPOOL_H
#define QPLUG_THREADPOOL_H

#include <stdint.h>

#include "qplug/error.h"

typedef struct qplug__pool qplug__pool;

/* Starts threads - 1 workers (the caller of _run is the last thread). */
qplug_status qplug__pool_create(int threads, qplug__pool **out, qplug_err *err);
/* Stops and joins the workers. NULL is allowed. */
void qplug__pool_destroy(qplug__pool *pool);
int qplug__pool_threads(const qplug__pool *pool);
/* Runs fn over [0, n) in about four chunks per thread, the calling thread
 * included, and returns when every chunk is done. A call made while the
 * pool is busy (from inside fn, or from a second thread) runs inline. */
void qplug__pool_run(qplug__pool *pool, int64_t n, qplug_range_fn fn, void *arg);

#endif
